//! The broker's running totals for `/metrics`: RabbitMQ's
//! `rabbit_global_counters` (messages received, routed, delivered,
//! acknowledged…) and `rabbit_core_metrics` totals (connections, channels
//! and queues opened, closed, declared, deleted).
//!
//! Nothing here is touched per message. Message counts live with each
//! channel (`MessageCounts`, bumped under the channel's own lock, which
//! delivery and acknowledgement take anyway, or by the channel's task and
//! published once per batch of frames); a scrape sums the open channels,
//! and a closing channel adds its counts to `retired`. Both happen under
//! `retired`'s lock, so a channel is counted exactly once and no total
//! ever goes back. Object counts are relaxed atomics bumped once per
//! open, close, declare or delete.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// One channel's message counts (or the sum over channels).
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MessageCounts {
    /// basic.publish received (also the ones then refused).
    pub(crate) received: u64,
    /// … on a confirm or transactional channel.
    pub(crate) received_confirm: u64,
    /// Queues reached, summed over messages.
    pub(crate) routed: u64,
    pub(crate) unroutable_dropped: u64,
    pub(crate) unroutable_returned: u64,
    /// Publishes acknowledged to their publisher (confirm mode).
    pub(crate) confirmed: u64,
    pub(crate) consume_manual_ack: u64,
    pub(crate) consume_auto_ack: u64,
    pub(crate) get_manual_ack: u64,
    pub(crate) get_auto_ack: u64,
    pub(crate) get_empty: u64,
    pub(crate) redelivered: u64,
    pub(crate) acknowledged: u64,
}

impl MessageCounts {
    /// Deliveries to consumers and basic.get, with or without acks.
    pub(crate) fn delivered(&self) -> u64 {
        self.consume_manual_ack + self.consume_auto_ack + self.get_manual_ack + self.get_auto_ack
    }

    pub(crate) fn add(&mut self, o: &MessageCounts) {
        self.received += o.received;
        self.received_confirm += o.received_confirm;
        self.routed += o.routed;
        self.unroutable_dropped += o.unroutable_dropped;
        self.unroutable_returned += o.unroutable_returned;
        self.confirmed += o.confirmed;
        self.consume_manual_ack += o.consume_manual_ack;
        self.consume_auto_ack += o.consume_auto_ack;
        self.get_manual_ack += o.get_manual_ack;
        self.get_auto_ack += o.get_auto_ack;
        self.get_empty += o.get_empty;
        self.redelivered += o.redelivered;
        self.acknowledged += o.acknowledged;
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) channels_opened: AtomicU64,
    pub(crate) channels_closed: AtomicU64,
    pub(crate) queues_declared: AtomicU64,
    pub(crate) queues_created: AtomicU64,
    pub(crate) queues_deleted: AtomicU64,
    /// Closed channels' counts. Lock order: before the connections map,
    /// a connection's channel registry and a channel's state.
    retired: Mutex<Retired>,
}

/// Closed channels' counts, in all and per vhost (the management API's
/// overview sums a user's vhosts, as RabbitMQ's vhost stats).
#[derive(Default)]
struct Retired {
    all: MessageCounts,
    by_vhost: HashMap<String, MessageCounts>,
}

/// Message counts per vhost name.
pub(crate) type VhostCounts = HashMap<String, MessageCounts>;

/// Bumps an object counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// A channel closes: `retire` marks it so scrapes skip it from now on
    /// and returns its final counts, which join the retired ones.
    pub(crate) fn channel_closed(
        &self,
        vhost: &str,
        retire: impl FnOnce() -> Option<MessageCounts>,
    ) {
        let mut retired = self.retired.lock();
        if let Some(counts) = retire() {
            retired.all.add(&counts);
            match retired.by_vhost.get_mut(vhost) {
                Some(v) => v.add(&counts),
                None => {
                    retired.by_vhost.insert(vhost.to_string(), counts);
                }
            }
            bump(&self.channels_closed);
        }
    }

    /// The totals: the retired counts plus what `open` adds of the open
    /// channels (those not retired yet).
    pub(crate) fn totals(&self, open: impl FnOnce(&mut MessageCounts)) -> MessageCounts {
        let retired = self.retired.lock();
        let mut total = retired.all;
        open(&mut total);
        total
    }

    /// The same per vhost: `open` adds the open channels' counts to their
    /// vhost's.
    pub(crate) fn totals_by_vhost(&self, open: impl FnOnce(&mut VhostCounts)) -> VhostCounts {
        let retired = self.retired.lock();
        let mut by_vhost = retired.by_vhost.clone();
        open(&mut by_vhost);
        by_vhost
    }
}
