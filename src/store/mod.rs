//! Where a queue keeps its ready messages.
//!
//! A queue talks to its messages only through [`QueueStore`], so a
//! disk-backed store (sled, with a bounded in-memory window) can replace the
//! in-memory one without touching routing or delivery.

pub mod memory;

use crate::broker::message::Message;
use std::sync::Arc;

/// A message waiting in a queue. `seq` orders the queue: requeued messages
/// go back to their original position.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

/// The ready messages of one queue, in `seq` order.
pub trait QueueStore: Send {
    /// Appends a newly published message (its `seq` is the highest yet).
    fn push(&mut self, msg: QueuedMessage);
    /// Puts back a message that was delivered and not acknowledged.
    fn requeue(&mut self, msg: QueuedMessage);
    fn pop(&mut self) -> Option<QueuedMessage>;
    /// Returns a message taken by `pop` that could not be delivered.
    fn unpop(&mut self, msg: QueuedMessage);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Body and property bytes of the ready messages.
    fn bytes(&self) -> usize;
    /// Drops every ready message, returning how many there were.
    fn purge(&mut self) -> usize;
}
