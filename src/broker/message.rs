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
    /// The stored copy once the message was written for durable queues:
    /// `id << 1 | shared` (0: not stored). Set once, while routing, before
    /// any queue holds the message.
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

    /// The stored body's id and whether several queues reference it.
    pub fn stored(&self) -> Option<(u64, bool)> {
        let v = self.stored.load(Ordering::Acquire);
        (v != 0).then_some((v >> 1, v & 1 == 1))
    }

    pub fn set_stored(&self, id: u64, shared: bool) {
        self.stored
            .store(id << 1 | u64::from(shared), Ordering::Release);
    }
}
