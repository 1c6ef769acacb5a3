//! A published message, shared by every queue it reaches.

use bytes::Bytes;

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
}

impl Message {
    /// Bytes this message accounts for against the memory watermark.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len()
    }
}
