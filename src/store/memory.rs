//! The in-memory queue store.

use super::{QueueStore, QueuedMessage};
use std::collections::VecDeque;

/// Slots (about 50 bytes each) an empty queue keeps at most.
const SHRINK_WHEN_EMPTY: usize = 65_536;

#[derive(Default)]
pub(crate) struct MemoryStore {
    messages: VecDeque<QueuedMessage>,
    bytes: usize,
    body_bytes: u64,
}

impl QueueStore for MemoryStore {
    fn push(&mut self, msg: QueuedMessage) {
        self.bytes += msg.message.size();
        self.body_bytes += msg.message.body.len() as u64;
        self.messages.push_back(msg);
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.bytes += msg.message.size();
        self.body_bytes += msg.message.body.len() as u64;
        // Requeues usually land at the head: search from there.
        let at = self.messages.partition_point(|m| m.seq < msg.seq);
        self.messages.insert(at, msg);
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let msg = self.messages.pop_front()?;
        self.bytes -= msg.message.size();
        self.body_bytes -= msg.message.body.len() as u64;
        if self.messages.is_empty() && self.messages.capacity() >= SHRINK_WHEN_EMPTY {
            // A drained backlog gives its index back (a queue that only
            // ever holds a little keeps its buffer).
            self.messages = VecDeque::new();
        }
        Some(msg)
    }

    fn unpop(&mut self, msg: QueuedMessage) {
        self.bytes += msg.message.size();
        self.body_bytes += msg.message.body.len() as u64;
        self.messages.push_front(msg);
    }

    fn len(&self) -> usize {
        self.messages.len()
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    fn head(&self) -> Option<&QueuedMessage> {
        self.messages.front()
    }

    fn purge(&mut self) -> usize {
        let n = self.messages.len();
        self.messages = VecDeque::new();
        self.bytes = 0;
        self.body_bytes = 0;
        n
    }

    fn delete(&mut self) {
        self.purge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn msg(seq: u64) -> QueuedMessage {
        QueuedMessage::new(
            seq,
            Arc::new(Message::new(
                String::new(),
                String::new(),
                Bytes::new(),
                Bytes::from(vec![0u8; seq as usize % 7]),
                false,
            )),
        )
    }

    proptest! {
        /// Popping some messages and requeueing them in any order restores
        /// FIFO order and the byte count.
        #[test]
        fn requeue_restores_order(n in 1u64..50, take in 0usize..50, shuffle in any::<u64>()) {
            let mut s = MemoryStore::default();
            for seq in 0..n { s.push(msg(seq)); }
            let bytes = s.bytes();
            let mut taken: Vec<_> = (0..take.min(n as usize)).filter_map(|_| s.pop()).collect();
            let len = taken.len().max(1);
            taken.rotate_left(shuffle as usize % len);
            for m in taken { s.requeue(m); }
            prop_assert_eq!(s.len(), n as usize);
            prop_assert_eq!(s.bytes(), bytes);
            let order: Vec<u64> = std::iter::from_fn(|| s.pop()).map(|m| m.seq).collect();
            prop_assert_eq!(order, (0..n).collect::<Vec<_>>());
        }
    }
}
