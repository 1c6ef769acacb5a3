//! A priority queue's messages (`x-max-priority`): one FIFO lane per
//! priority, the highest non-empty lane first.
//!
//! Everything is held in memory (a priority queue is not paged out); for a
//! durable queue, persistent messages are also written to its index, as in
//! [`super::durable::DurableStore`], and read back in full after a restart.
//! Delivery is not in seq order here, so no delivered mark is kept: after a
//! restart, messages delivered before come back without `redelivered`.

use super::persister::{LoadRequest, Loaded, Op};
use super::{DiskRef, QueueStore, QueuedMessage, Receipt, Store};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::protocol::properties::PropertiesView;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};

/// Where a durable priority queue's persistent messages are written.
pub struct PriorityDisk {
    pub store: Arc<Store>,
    pub queue: Weak<Queue>,
    pub queue_id: u32,
    /// Recovered messages not read back yet.
    pub on_disk: usize,
}

pub struct PriorityStore {
    lanes: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: usize,
    body_bytes: u64,
    disk: Option<PriorityDisk>,
    loading: bool,
    deleted: bool,
}

impl PriorityStore {
    pub fn new(max_priority: u8, disk: Option<PriorityDisk>) -> PriorityStore {
        PriorityStore {
            lanes: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            body_bytes: 0,
            disk,
            loading: false,
            deleted: false,
        }
    }

    fn lane(&self, msg: &QueuedMessage) -> usize {
        let priority = PropertiesView::scan(&msg.message.properties)
            .ok()
            .and_then(|v| v.priority)
            .unwrap_or(0);
        usize::from(priority).min(self.lanes.len() - 1)
    }

    fn add(&mut self, msg: &QueuedMessage) {
        self.len += 1;
        self.bytes += msg.message.size();
        self.body_bytes += msg.message.body.len() as u64;
    }

    fn take(&mut self, msg: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= msg.message.size();
        self.body_bytes -= msg.message.body.len() as u64;
    }

    fn remove(&self, seq: u64, disk: DiskRef) {
        if let Some(d) = &self.disk {
            d.store.send(Op::Remove {
                queue_id: d.queue_id,
                seq,
                msg_id: disk.msg_id,
            });
        }
    }

    /// Reads every recovered message back (once, on first use).
    fn load_recovered(&mut self) {
        let Some(d) = &self.disk else {
            return;
        };
        if d.on_disk == 0 || self.loading {
            return;
        }
        self.loading = true;
        d.store.send(Op::Load(LoadRequest {
            queue: d.queue.clone(),
            queue_id: d.queue_id,
            from: 0,
            max_bytes: usize::MAX,
            generation: 0,
        }));
    }
}

impl QueueStore for PriorityStore {
    fn push(&mut self, mut msg: QueuedMessage) {
        if let (Some(d), true) = (&self.disk, msg.message.persistent) {
            if let Some(msg_id) = msg.message.stored() {
                let disk = DiskRef { msg_id, flags: 0 };
                msg.disk = Some(disk);
                d.store.send(Op::Entry {
                    queue_id: d.queue_id,
                    seq: msg.seq,
                    disk,
                    expires_at: msg.expires_at.unwrap_or(0),
                });
            }
        }
        self.add(&msg);
        let lane = self.lane(&msg);
        self.lanes[lane].push_back(msg);
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.add(&msg);
        let lane = self.lane(&msg);
        let at = self.lanes[lane].partition_point(|m| m.seq < msg.seq);
        self.lanes[lane].insert(at, msg);
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let msg = self.lanes.iter_mut().rev().find_map(|l| l.pop_front());
        match &msg {
            Some(m) => self.take(m),
            None => self.load_recovered(),
        }
        msg
    }

    fn unpop(&mut self, msg: QueuedMessage) {
        self.add(&msg);
        let lane = self.lane(&msg);
        self.lanes[lane].push_front(msg);
    }

    fn len(&self) -> usize {
        self.len + self.disk.as_ref().map_or(0, |d| d.on_disk)
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    fn purge(&mut self) -> usize {
        let count = self.len();
        let stored: Vec<(u64, DiskRef)> = self
            .lanes
            .iter_mut()
            .flat_map(|lane| lane.drain(..))
            .filter_map(|m| m.disk.map(|d| (m.seq, d)))
            .collect();
        for (seq, disk) in stored {
            self.remove(seq, disk);
        }
        if let Some(d) = &mut self.disk {
            if d.on_disk > 0 && !self.loading {
                // Nothing was read back yet: every entry is a ready message.
                d.store.send(Op::RemoveFrom {
                    queue_id: d.queue_id,
                    from: 0,
                });
                d.on_disk = 0;
            }
        }
        self.len = 0;
        self.bytes = 0;
        self.body_bytes = 0;
        count
    }

    fn delivered(&mut self, receipt: Receipt, no_ack: bool) {
        if let (Some(disk), true) = (receipt.disk, no_ack) {
            self.remove(receipt.seq, disk);
        }
    }

    fn acked(&mut self, receipt: Receipt) {
        if let (Some(disk), false) = (receipt.disk, self.deleted) {
            self.remove(receipt.seq, disk);
        }
    }

    fn refused(&mut self, message: &Message) {
        if let (Some(d), Some(msg_id), true) = (&self.disk, message.stored(), message.persistent) {
            d.store.send(Op::Release { msg_id });
        }
    }

    fn delete(&mut self) {
        self.purge_memory();
        if let Some(d) = &mut self.disk {
            d.on_disk = 0;
        }
        self.deleted = true;
    }

    fn loaded(&mut self, loaded: Loaded) {
        self.loading = false;
        if let Some(d) = &mut self.disk {
            d.on_disk = d.on_disk.saturating_sub(loaded.consumed);
            if loaded.consumed == 0 {
                d.on_disk = 0;
            }
        }
        if self.deleted {
            return;
        }
        for msg in loaded.messages {
            self.requeue(msg);
        }
    }

    fn awaiting_disk(&self) -> bool {
        self.len == 0 && self.disk.as_ref().is_some_and(|d| d.on_disk > 0)
    }
}

impl PriorityStore {
    fn purge_memory(&mut self) {
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.len = 0;
        self.bytes = 0;
        self.body_bytes = 0;
    }
}
