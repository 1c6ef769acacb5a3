//! A durable queue's messages: a bounded window in memory, the rest on disk.
//!
//! Ready messages are, in seq order, `head` (in memory) followed by
//! `on_disk` messages that exist only on disk, all with seq >= `disk_from`.
//! Once a queue starts paging out, every new message goes to disk until the
//! disk part is read back, which keeps the two parts in order. Reads happen
//! on the persister thread ahead of consumers: when the head falls below
//! half the window, the next chunk is requested.

use super::fail_stop::Unwritten;
use super::persister::{LoadRequest, Loaded, Op};
use super::QueueEvents;
use super::{DiskRef, Persistent, QueueStore, QueuedMessage, Receipt, Store, MESSAGE_OVERHEAD};
use crate::message::Message;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};

pub(crate) struct DurableStore {
    store: Arc<Store>,
    queue: Weak<dyn QueueEvents>,
    queue_id: u32,
    head: VecDeque<QueuedMessage>,
    /// Body and property bytes in `head`.
    head_bytes: usize,
    /// Body bytes of every ready message, in memory or on disk.
    body_bytes: u64,
    /// Persistent ones among them, beside `body_bytes`.
    persistent: Persistent,
    /// Messages below this seq were recovered at start-up: never pushed,
    /// so not yet in `body_bytes`.
    recovered_end: u64,
    /// `head_bytes` plus the per-message overhead: what the window limits.
    head_cost: usize,
    window: usize,
    disk_from: u64,
    on_disk: usize,
    /// When the first message on disk (at `disk_from`) arrived, ms since
    /// the epoch (0: unknown): the queue's head age while none is in memory.
    disk_arrived_ms: u64,
    loading: bool,
    /// Bumped by purge and delete so reads already under way are ignored.
    generation: u64,
    deleted: bool,
}

impl DurableStore {
    /// A queue recovered with `on_disk` messages from `first_seq` on (the
    /// first arrived at `first_arrived_ms`), up to `next_seq`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        store: Arc<Store>,
        queue: Weak<dyn QueueEvents>,
        queue_id: u32,
        on_disk: usize,
        first_seq: u64,
        first_arrived_ms: u64,
        next_seq: u64,
        unbounded: bool,
    ) -> DurableStore {
        // A queue with a length limit keeps what it holds in memory, so its
        // oldest message can always be dropped at once.
        let window = if unbounded {
            usize::MAX / 2
        } else {
            store.queue_window.max(1)
        };
        DurableStore {
            store,
            queue,
            queue_id,
            head: VecDeque::new(),
            head_bytes: 0,
            body_bytes: 0,
            // Recovered messages are all persistent; their bytes are
            // counted as they are read back (see `loaded`).
            persistent: Persistent {
                messages: on_disk,
                bytes: 0,
            },
            recovered_end: next_seq,
            head_cost: 0,
            window,
            disk_from: first_seq,
            on_disk,
            disk_arrived_ms: first_arrived_ms,
            loading: false,
            generation: 0,
            deleted: false,
        }
    }

    /// Asks for the next chunk from disk when the head runs low.
    fn request_load(&mut self) {
        let low = self.head.is_empty() || self.head_cost < self.window / 2;
        if self.on_disk == 0 || self.loading || !low {
            return;
        }
        self.loading = true;
        self.store.send(Op::Load(LoadRequest {
            queue: self.queue.clone(),
            queue_id: self.queue_id,
            from: self.disk_from,
            until: u64::MAX,
            max_bytes: self.window.saturating_sub(self.head_cost),
            generation: self.generation,
        }));
    }

    fn take(&mut self, msg: &QueuedMessage) {
        self.head_bytes -= msg.message.size();
        self.head_cost -= msg.message.size() + MESSAGE_OVERHEAD;
    }

    fn add(&mut self, msg: &QueuedMessage) {
        self.head_bytes += msg.message.size();
        self.head_cost += msg.message.size() + MESSAGE_OVERHEAD;
    }

    /// Empty in memory and on disk; reads under way are ignored.
    fn forget_all(&mut self) {
        self.head_bytes = 0;
        self.body_bytes = 0;
        self.persistent = Persistent::default();
        self.head_cost = 0;
        self.on_disk = 0;
        self.disk_arrived_ms = 0;
        self.loading = false;
        self.generation += 1;
    }

    fn remove(&self, seq: u64, disk: DiskRef) {
        self.store.remove_entry(self.queue_id, seq, disk);
    }
}

impl QueueStore for DurableStore {
    fn keep_in_memory(&mut self) {
        self.window = usize::MAX / 2;
        self.request_load();
    }

    fn push(&mut self, mut msg: QueuedMessage) {
        self.body_bytes += msg.message.body.len() as u64;
        self.persistent.add(&msg.message);
        if msg.disk.is_none() && msg.message.persistent {
            if let Some(msg_id) = msg.message.stored() {
                msg.disk = Some(DiskRef { msg_id, flags: 0 });
            }
        }
        let cost = msg.message.size() + MESSAGE_OVERHEAD;
        let page_out = self.on_disk > 0 || self.head_cost + cost > self.window;
        if page_out && msg.disk.is_none() {
            msg.disk = Some(self.store.store_transient(&msg.message));
        }
        if let Some(disk) = msg.disk {
            self.store.write_entry(self.queue_id, &msg, disk);
        }
        if page_out {
            if self.on_disk == 0 {
                self.disk_from = msg.seq;
                self.disk_arrived_ms = msg.arrived_ms;
            }
            self.on_disk += 1;
            self.request_load();
            return;
        }
        self.add(&msg);
        self.head.push_back(msg);
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.body_bytes += msg.message.body.len() as u64;
        self.persistent.add(&msg.message);
        self.add(&msg);
        // Requeues usually land at the head: search from there.
        let at = self.head.partition_point(|m| m.seq < msg.seq);
        self.head.insert(at, msg);
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let msg = self.head.pop_front();
        if let Some(m) = &msg {
            self.take(m);
            self.body_bytes = self.body_bytes.saturating_sub(m.message.body.len() as u64);
            self.persistent.sub(&m.message);
        }
        self.request_load();
        msg
    }

    fn unpop(&mut self, msg: QueuedMessage) {
        self.body_bytes += msg.message.body.len() as u64;
        self.persistent.add(&msg.message);
        self.add(&msg);
        self.head.push_front(msg);
    }

    fn len(&self) -> usize {
        self.head.len() + self.on_disk
    }

    fn bytes(&self) -> usize {
        self.head_bytes
    }

    fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    fn in_memory(&self) -> usize {
        self.head.len()
    }

    fn persistent(&self) -> Persistent {
        self.persistent
    }

    fn head(&self) -> Option<&QueuedMessage> {
        self.head.front()
    }

    fn head_arrived(&self) -> Option<u64> {
        match self.head.front() {
            Some(m) => m.arrived(),
            None if self.on_disk > 0 => Some(self.disk_arrived_ms).filter(|&ms| ms != 0),
            None => None,
        }
    }

    fn purge(&mut self) -> usize {
        let count = self.len();
        for msg in std::mem::take(&mut self.head) {
            if let Some(disk) = msg.disk {
                self.remove(msg.seq, disk);
            }
        }
        if self.on_disk > 0 {
            self.store.send(Op::RemoveFrom {
                queue_id: self.queue_id,
                from: self.disk_from,
            });
        }
        self.forget_all();
        count
    }

    fn delivered(&mut self, receipt: Receipt, no_ack: bool) {
        let Some(disk) = receipt.disk else {
            return;
        };
        if no_ack {
            self.remove(receipt.seq, disk);
        } else if !receipt.redelivered {
            self.store.send(Op::Delivered {
                queue_id: self.queue_id,
                seq: receipt.seq,
            });
        }
    }

    fn acked(&mut self, receipt: Receipt) {
        if let (Some(disk), false) = (receipt.disk, self.deleted) {
            self.remove(receipt.seq, disk);
        }
    }

    fn refused(&mut self, message: &Message) {
        self.store.release_refused(message);
    }

    fn delete(&mut self) {
        // The store drops every entry of the queue; forget them here.
        self.head.clear();
        self.forget_all();
        self.deleted = true;
    }

    fn loaded(&mut self, loaded: Loaded) {
        if loaded.generation != self.generation {
            return;
        }
        self.loading = false;
        if loaded.consumed == 0 && self.on_disk > 0 {
            tracing::error!(
                queue_id = self.queue_id,
                missing = self.on_disk,
                "paged-out messages not found on disk"
            );
            self.on_disk = 0;
            return;
        }
        self.on_disk = self.on_disk.saturating_sub(loaded.consumed);
        self.disk_from = loaded.next_from;
        self.disk_arrived_ms = loaded.next_arrived_ms;
        for msg in loaded.messages {
            if msg.seq < self.recovered_end {
                let body = msg.message.body.len() as u64;
                self.body_bytes += body;
                self.persistent.bytes += body;
            }
            self.add(&msg);
            self.head.push_back(msg);
        }
        self.request_load();
    }

    fn awaiting_disk(&self) -> bool {
        self.head.is_empty() && self.on_disk > 0
    }

    fn refuses_persistent(&self) -> bool {
        self.store.disk_alarm().is_failed()
    }

    fn forget_unwritten(&mut self, unwritten: &[Unwritten]) -> usize {
        let mut gone = 0;
        for &(_, seq, body_len, _) in unwritten {
            if let Ok(i) = self.head.binary_search_by_key(&seq, |m| m.seq) {
                if let Some(msg) = self.head.remove(i) {
                    self.take(&msg);
                    self.body_bytes = self
                        .body_bytes
                        .saturating_sub(msg.message.body.len() as u64);
                    self.persistent.sub(&msg.message);
                    gone += 1;
                }
            } else if self.on_disk > 0 && seq >= self.disk_from {
                // Paged out: never on disk, so never read back.
                self.on_disk -= 1;
                if seq == self.disk_from {
                    // The next one's arrival is known once it is read.
                    self.disk_arrived_ms = 0;
                }
                self.body_bytes = self.body_bytes.saturating_sub(body_len);
                // Only persistent writes fail-stop the store.
                self.persistent.messages = self.persistent.messages.saturating_sub(1);
                self.persistent.bytes = self.persistent.bytes.saturating_sub(body_len);
                gone += 1;
            }
        }
        gone
    }
}
