//! What a stream protocol connection shows the management API, `ctl` and
//! `/metrics` (RabbitMQ's `rabbitmq_stream_management`): its publishers
//! and subscriptions with their counters.
//!
//! A connection's [`StreamClient`] hangs on its `ConnectionHandle` in
//! `Broker::connections` (one registry for every protocol). The
//! connection's task owns each publisher's and subscription's stats (an
//! `Arc`) and the client keeps only weak references, so a publisher or
//! subscription that goes, by any path, is gone from the API without a
//! call. The hot path bumps relaxed atomics only.

use super::queue::Queue;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// A stream connection's publishers and subscriptions.
#[derive(Default)]
pub(crate) struct StreamClient {
    publishers: Mutex<Vec<Weak<PublisherStats>>>,
    subscriptions: Mutex<Vec<Weak<SubscriptionStats>>>,
}

impl StreamClient {
    pub(crate) fn add_publisher(&self, p: &Arc<PublisherStats>) {
        add(&self.publishers, p);
    }

    pub(crate) fn add_subscription(&self, s: &Arc<SubscriptionStats>) {
        add(&self.subscriptions, s);
    }

    /// Its publishers, by id.
    pub(crate) fn publishers(&self) -> Vec<Arc<PublisherStats>> {
        let mut all = live(&self.publishers);
        all.sort_by_key(|p| p.id);
        all
    }

    /// Its subscriptions, by id.
    pub(crate) fn subscriptions(&self) -> Vec<Arc<SubscriptionStats>> {
        let mut all = live(&self.subscriptions);
        all.sort_by_key(|s| s.id);
        all
    }
}

/// Adds `item`, dropping the entries of those gone (at most 256 of each
/// are live: ids are a byte).
fn add<T>(list: &Mutex<Vec<Weak<T>>>, item: &Arc<T>) {
    let mut l = list.lock();
    l.retain(|w| w.strong_count() > 0);
    l.push(Arc::downgrade(item));
}

fn live<T>(list: &Mutex<Vec<Weak<T>>>) -> Vec<Arc<T>> {
    list.lock().iter().filter_map(Weak::upgrade).collect()
}

/// One publisher: RabbitMQ's `published`, `confirmed` and `errored`.
pub(crate) struct PublisherStats {
    pub(crate) id: u8,
    /// Empty when it has none (RabbitMQ's `reference`).
    pub(crate) reference: String,
    pub(crate) queue: Arc<Queue>,
    published: AtomicU64,
    confirmed: AtomicU64,
    errored: AtomicU64,
}

impl PublisherStats {
    pub(crate) fn new(id: u8, reference: &str, queue: Arc<Queue>) -> PublisherStats {
        PublisherStats {
            id,
            reference: reference.to_string(),
            queue,
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            errored: AtomicU64::new(0),
        }
    }

    pub(crate) fn published(&self, n: usize) {
        if n > 0 {
            self.published.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn confirmed(&self, n: usize) {
        if n > 0 {
            self.confirmed.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn errored(&self, n: usize) {
        if n > 0 {
            self.errored.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// (published, confirmed, errored).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.published.load(Ordering::Relaxed),
            self.confirmed.load(Ordering::Relaxed),
            self.errored.load(Ordering::Relaxed),
        )
    }
}

/// One subscription: where it is and what it was sent.
pub(crate) struct SubscriptionStats {
    pub(crate) id: u8,
    pub(crate) queue: Arc<Queue>,
    /// As the client gave them at subscribe.
    pub(crate) properties: Vec<(String, String)>,
    /// In a consumer group (single active consumer).
    pub(crate) in_group: bool,
    /// The next offset it will be sent.
    next: AtomicU64,
    /// The last offset sent; before any, where it starts. (RabbitMQ's
    /// consumer `offset` is the first offset of the last chunk it sent,
    /// its chunks being fixed when written; Leveret cuts chunks as it
    /// delivers, so its last offset says where it is.)
    offset: AtomicU64,
    consumed: AtomicU64,
    credits: AtomicU64,
    active: AtomicBool,
}

impl SubscriptionStats {
    pub(crate) fn new(
        id: u8,
        queue: Arc<Queue>,
        properties: Vec<(String, String)>,
        in_group: bool,
        next: u64,
        credits: u32,
    ) -> SubscriptionStats {
        SubscriptionStats {
            id,
            queue,
            properties,
            in_group,
            next: AtomicU64::new(next),
            offset: AtomicU64::new(next),
            consumed: AtomicU64::new(0),
            credits: AtomicU64::new(credits as u64),
            active: AtomicBool::new(!in_group),
        }
    }

    /// Chunks were sent: `entries` entries, the last at `last`; it goes on
    /// at `next` with `credits` left.
    pub(crate) fn sent(&self, entries: u64, last: u64, next: u64, credits: u32) {
        self.consumed.fetch_add(entries, Ordering::Relaxed);
        self.offset.store(last, Ordering::Relaxed);
        self.moved(next, credits);
    }

    /// Where it goes on and its credit, without a delivery.
    pub(crate) fn moved(&self, next: u64, credits: u32) {
        self.next.store(next, Ordering::Relaxed);
        self.credits.store(credits as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_credits(&self, credits: u32) {
        self.credits.store(credits as u64, Ordering::Relaxed);
    }

    pub(crate) fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    pub(crate) fn next(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    pub(crate) fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    pub(crate) fn credits(&self) -> u64 {
        self.credits.load(Ordering::Relaxed)
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The tag RabbitMQ gives it among the queue's consumers.
    pub(crate) fn consumer_tag(&self) -> String {
        format!("stream.subid-{}", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_dropped_leaves_the_list_and_the_list_stays_bounded() {
        let list: Mutex<Vec<Weak<u8>>> = Mutex::default();
        let kept = Arc::new(1u8);
        add(&list, &kept);
        for i in 0..1000u32 {
            // Each goes as soon as it is added: the next add prunes it.
            add(&list, &Arc::new(i as u8));
        }
        assert!(list.lock().len() <= 2);
        let live = live(&list);
        assert_eq!(live.len(), 1);
        assert!(Arc::ptr_eq(&live[0], &kept));
    }
}
