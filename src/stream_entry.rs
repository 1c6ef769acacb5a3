//! What a stream entry's payload holds: a message as the protocol that
//! published it carried it, so each protocol's own readers get it back
//! without conversion, and only the other protocol's readers convert.
//!
//! The first byte says which: [`AMQP_091`] is followed by
//! `exchange length u8 ‖ exchange ‖ routing key length u8 ‖ routing key ‖
//! properties length u32 ‖ properties (the content header's, flags
//! onwards) ‖ body`; [`AMQP_10`] by an AMQP 1.0 message exactly as a stream
//! client published it.

// The AMQP 1.0 side waits for the stream protocol (issue 18).
#![allow(dead_code)]

use crate::message::Message;
use bytes::Bytes;

/// An AMQP 0-9-1 message.
pub(crate) const AMQP_091: u8 = 0;
/// An AMQP 1.0 message (RabbitMQ's stream protocol).
pub(crate) const AMQP_10: u8 = 1;

/// A payload read back, its parts borrowed from one shared buffer.
pub(crate) enum Payload {
    Amqp091 {
        exchange: String,
        routing_key: String,
        properties: Bytes,
        body: Bytes,
    },
    Amqp10(Bytes),
}

/// A payload that is not one this module wrote: the entry's checksum held,
/// so this is a bug or a file from elsewhere, never skipped silently.
#[derive(Debug)]
pub(crate) struct BadPayload(pub(crate) &'static str);

impl std::fmt::Display for BadPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed stream entry: {}", self.0)
    }
}

/// The payload for an AMQP 0-9-1 message.
pub(crate) fn encode_amqp091(m: &Message) -> Vec<u8> {
    // Exchange names and routing keys are short strings (at most 255 bytes).
    let (exchange, key) = (m.exchange.as_bytes(), m.routing_key.as_bytes());
    let mut out =
        Vec::with_capacity(7 + exchange.len() + key.len() + m.properties.len() + m.body.len());
    out.push(AMQP_091);
    out.push(exchange.len() as u8);
    out.extend_from_slice(exchange);
    out.push(key.len() as u8);
    out.extend_from_slice(key);
    out.extend_from_slice(&(m.properties.len() as u32).to_be_bytes());
    out.extend_from_slice(&m.properties);
    out.extend_from_slice(&m.body);
    out
}

/// The payload for an AMQP 1.0 message.
pub(crate) fn encode_amqp10(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.len());
    out.push(AMQP_10);
    out.extend_from_slice(message);
    out
}

/// Reads a payload; the parts share `raw`'s buffer.
pub(crate) fn decode(raw: Bytes) -> Result<Payload, BadPayload> {
    let Some((&tag, _)) = raw.split_first() else {
        return Err(BadPayload("empty"));
    };
    match tag {
        AMQP_10 => Ok(Payload::Amqp10(raw.slice(1..))),
        AMQP_091 => {
            let mut at = 1;
            let short = |at: &mut usize| -> Result<String, BadPayload> {
                let len = *raw.get(*at).ok_or(BadPayload("truncated name"))? as usize;
                let s = raw
                    .get(*at + 1..*at + 1 + len)
                    .ok_or(BadPayload("truncated name"))?;
                *at += 1 + len;
                Ok(String::from_utf8_lossy(s).into_owned())
            };
            let exchange = short(&mut at)?;
            let routing_key = short(&mut at)?;
            let len = raw
                .get(at..at + 4)
                .ok_or(BadPayload("truncated properties"))?;
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            at += 4;
            if raw.len() - at < len {
                return Err(BadPayload("truncated properties"));
            }
            Ok(Payload::Amqp091 {
                exchange,
                routing_key,
                properties: raw.slice(at..at + len),
                body: raw.slice(at + len..),
            })
        }
        _ => Err(BadPayload("unknown format")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp091_round_trip() {
        let m = Message::new(
            "orders".into(),
            "order.placed".into(),
            Bytes::from_static(&[0x80, 0, 3, b'a', b'/', b'b']),
            Bytes::from_static(b"{\"id\":1}"),
            true,
        );
        let Payload::Amqp091 {
            exchange,
            routing_key,
            properties,
            body,
        } = decode(Bytes::from(encode_amqp091(&m))).unwrap()
        else {
            panic!("not 0-9-1")
        };
        assert_eq!(exchange, "orders");
        assert_eq!(routing_key, "order.placed");
        assert_eq!(properties, m.properties);
        assert_eq!(body, m.body);
    }

    #[test]
    fn truncated_payloads_are_errors() {
        let m = Message::new(
            "x".into(),
            "k".into(),
            Bytes::from_static(&[0, 0]),
            Bytes::new(),
            false,
        );
        let full = encode_amqp091(&m);
        for cut in 0..full.len() {
            assert!(
                decode(Bytes::copy_from_slice(&full[..cut])).is_err(),
                "{cut}"
            );
        }
        assert!(decode(Bytes::from_static(&[7])).is_err());
        let Payload::Amqp10(b) = decode(Bytes::from(encode_amqp10(b"\x00Su"))).unwrap() else {
            panic!()
        };
        assert_eq!(&b[..], b"\x00Su");
    }
}
