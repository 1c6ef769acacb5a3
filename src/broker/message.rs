//! A published message, shared by every queue it reaches.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};

/// Everything a message carries, immutable once published. Queues hold it
/// behind an `Arc`, so a fanout to ten queues shares one body.
#[derive(Debug)]
pub struct Message {
    pub exchange: String,
    pub routing_key: String,
    /// Raw basic properties from the publisher's content header (flags
    /// onwards), re-sent byte for byte on delivery.
    pub properties: Bytes,
    pub body: Bytes,
    pub persistent: bool,
    /// The id under which the message was handed to the persister for
    /// durable queues (0: not stored). Set once, while routing, before any
    /// queue holds the message.
    stored: AtomicU64,
}

impl Message {
    pub fn new(
        exchange: String,
        routing_key: String,
        properties: Bytes,
        body: Bytes,
        persistent: bool,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            stored: AtomicU64::new(0),
        }
    }

    /// Bytes this message accounts for against the memory watermark.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len()
    }

    pub fn stored(&self) -> Option<u64> {
        let id = self.stored.load(Ordering::Acquire);
        (id != 0).then_some(id)
    }

    pub fn set_stored(&self, id: u64) {
        self.stored.store(id, Ordering::Release);
    }
}
