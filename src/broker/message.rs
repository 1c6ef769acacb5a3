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
    /// The `expiration` property, parsed (ms).
    pub expiration_ms: Option<u64>,
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
            expiration_ms: None,
            stored: AtomicU64::new(0),
        }
    }

    pub fn with_expiration(mut self, ms: Option<u64>) -> Message {
        self.expiration_ms = ms;
        self
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

/// Parses the `expiration` property as RabbitMQ does; the error is the
/// detail of its 406 reply text.
pub fn parse_expiration(raw: &[u8]) -> Result<u64, String> {
    let text = String::from_utf8_lossy(raw);
    let (sign, digits_from) = match text.as_bytes().first() {
        Some(b'-') => (-1i128, 1),
        Some(b'+') => (1, 1),
        _ => (1, 0),
    };
    let rest = &text[digits_from..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("no_integer".into());
    }
    let n: i128 = rest[..digits]
        .parse::<i128>()
        .map_err(|_| "no_integer".to_string())?
        * sign;
    if digits < rest.len() {
        return Err(format!("{{leftover_string,\"{}\"}}", &rest[digits..]));
    }
    if n < 0 {
        return Err(format!("{{value_negative,{n}}}"));
    }
    Ok(n.min(u64::MAX as i128) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_expiration;

    #[test]
    fn expiration_parses_like_rabbitmq() {
        assert_eq!(parse_expiration(b"100"), Ok(100));
        assert_eq!(parse_expiration(b"0"), Ok(0));
        assert_eq!(parse_expiration(b"abc"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b""), Err("no_integer".into()));
        assert_eq!(parse_expiration(b" 100"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b"-1"), Err("{value_negative,-1}".into()));
        assert_eq!(
            parse_expiration(b"1.5"),
            Err("{leftover_string,\".5\"}".into())
        );
    }
}
