//! A queue: ready messages, consumers, and round-robin delivery.
//!
//! Its state sits behind one short synchronous lock taken directly by the
//! connection tasks that publish, consume and acknowledge; nothing awaits or
//! does I/O while holding it.

use super::consumer::Consumer;
use super::memory::MemoryGauge;
use super::message::Message;
use crate::error::AmqpError;
use crate::store::memory::MemoryStore;
use crate::store::{QueueStore, QueuedMessage};
use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::sync::Arc;

pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    memory: Arc<MemoryGauge>,
    state: Mutex<QueueState>,
}

struct QueueState {
    ready: Box<dyn QueueStore>,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Index of the consumer to try first: round-robin.
    next_consumer: usize,
    unacked: usize,
    /// Set once the queue has had a consumer: auto-delete applies from then on.
    had_consumer: bool,
    deleted: bool,
}

/// Counts reported by queue.declare-ok and the management API.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub ready: usize,
    pub unacked: usize,
    pub consumers: usize,
}

impl Queue {
    pub fn new(
        name: String,
        vhost: String,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        memory: Arc<MemoryGauge>,
    ) -> Queue {
        Queue {
            memory,
            name,
            vhost,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            state: Mutex::new(QueueState {
                ready: Box::new(MemoryStore::default()),
                next_seq: 0,
                consumers: Vec::new(),
                next_consumer: 0,
                unacked: 0,
                had_consumer: false,
                deleted: false,
            }),
        }
    }

    pub fn counts(&self) -> QueueCounts {
        let st = self.state.lock();
        QueueCounts {
            ready: st.ready.len(),
            unacked: st.unacked,
            consumers: st.consumers.len(),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// 405 unless `connection` may use this queue.
    pub fn check_owner(&self, connection: u64) -> Result<(), AmqpError> {
        match self.exclusive_owner {
            Some(owner) if owner != connection => Err(self.locked_error()),
            _ => Ok(()),
        }
    }

    pub fn locked_error(&self) -> AmqpError {
        AmqpError::resource_locked(format_args!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            self.name, self.vhost
        ))
    }

    /// Adds a message to the tail and hands it to a consumer if one can take it.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let before = st.ready.bytes();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push(QueuedMessage {
            seq,
            message,
            redelivered: false,
        });
        self.dispatch_locked(&mut st);
        self.account(before, &st);
    }

    /// Reports the change in ready bytes since `before` to the memory gauge.
    fn account(&self, before: usize, st: &QueueState) {
        self.memory.add(st.ready.bytes() as i64 - before as i64);
    }

    /// Delivers ready messages to consumers with capacity, round-robin.
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        self.dispatch_locked(&mut st);
        self.account(before, &st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        let n = st.consumers.len();
        if n == 0 {
            return;
        }
        'messages: while let Some(mut msg) = st.ready.pop() {
            for _ in 0..n {
                let consumer = &st.consumers[st.next_consumer % n];
                st.next_consumer = (st.next_consumer + 1) % n;
                match consumer.channel.try_deliver(consumer, self, msg) {
                    Ok(()) => {
                        if !consumer.no_ack {
                            st.unacked += 1;
                        }
                        continue 'messages;
                    }
                    Err(back) => msg = back,
                }
            }
            st.ready.unpop(msg);
            break;
        }
    }

    /// basic.get: takes the head message and says how many remain.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, usize)> {
        let mut st = self.state.lock();
        let msg = st.ready.pop()?;
        self.memory.add(-(msg.message.size() as i64));
        if !no_ack {
            st.unacked += 1;
        }
        Some((msg, st.ready.len()))
    }

    /// Acknowledged (or rejected without requeue) deliveries leave the queue.
    pub fn settle(&self, count: usize) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(count);
    }

    /// Puts unacknowledged messages back at their original positions,
    /// flagged redelivered, and delivers again.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        for mut msg in messages {
            st.unacked = st.unacked.saturating_sub(1);
            if st.deleted {
                continue;
            }
            msg.redelivered = true;
            st.ready.requeue(msg);
        }
        self.dispatch_locked(&mut st);
        self.account(before, &st);
    }

    /// Adds a consumer unless exclusivity forbids it; `on_added` runs (to
    /// send consume-ok) before the first delivery to it.
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        on_added: impl FnOnce(),
    ) -> Result<(), AmqpError> {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive) {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        if consumer.exclusive && !st.consumers.is_empty() {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        on_added();
        st.consumers.push(consumer);
        st.had_consumer = true;
        let before = st.ready.bytes();
        self.dispatch_locked(&mut st);
        self.account(before, &st);
        Ok(())
    }

    /// Removes a consumer; returns true when an auto-delete queue just lost
    /// its last consumer and must be deleted.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut st = self.state.lock();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    pub fn purge(&self) -> usize {
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        let count = st.ready.purge();
        self.account(before, &st);
        count
    }

    /// Checks queue.delete's if-unused / if-empty conditions.
    pub fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<(), AmqpError> {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format_args!(
                "queue '{}' in vhost '{}' in use",
                self.name, self.vhost
            )));
        }
        if if_empty && !st.ready.is_empty() {
            return Err(AmqpError::precondition_failed(format_args!(
                "queue '{}' in vhost '{}' not empty",
                self.name, self.vhost
            )));
        }
        Ok(())
    }

    /// Marks the queue deleted, drops its messages and returns its consumers
    /// (to be cancelled) and the number of ready messages it held.
    pub fn mark_deleted(&self) -> (Vec<Arc<Consumer>>, usize) {
        let mut st = self.state.lock();
        st.deleted = true;
        let before = st.ready.bytes();
        let count = st.ready.purge();
        self.account(before, &st);
        (std::mem::take(&mut st.consumers), count)
    }
}
