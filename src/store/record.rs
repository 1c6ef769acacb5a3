//! Record encodings for what sled holds, and for message bodies.
//!
//! Bodies live in segment files (`segments.rs`), queue indexes in slot
//! files (`queue_index.rs`). sled holds two small trees:
//! - `meta`: the format marker, exchanges, queues and bindings;
//! - `marks`: `d ‖ queue_id u32 BE` → one past the highest seq delivered
//!   from that queue. A queue delivers in seq order (requeued messages go
//!   back to their place), so every message below the mark was delivered
//!   before: one small write per queue and batch instead of one per
//!   delivery.

use crate::message::Message;
use crate::protocol::method::Reader;
use amq_protocol::types::FieldTable;
use bytes::Bytes;

/// Written once into a new store; a store with another marker is refused.
pub(crate) const FORMAT: &[u8] = b"leveret-store-4";
pub(crate) const FORMAT_KEY: &[u8] = b"format";
/// Topology changes taken so far (see `recovery::check_topology_version`).
pub(crate) const TOPOLOGY_VERSION_KEY: &[u8] = b"topology-version";

const DELIVERED_MARK: u8 = b'd';

/// Entry flag: a transient message paged out of memory; dropped at start-up.
pub(crate) const TRANSIENT: u8 = 4;

pub(crate) fn delivered_key(queue_id: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = DELIVERED_MARK;
    k[1..].copy_from_slice(&queue_id.to_be_bytes());
    k
}

/// (queue_id, first seq not yet delivered) from a delivered-mark record.
pub(crate) fn parse_delivered(key: &[u8], value: &[u8]) -> Option<(u32, u64)> {
    if key.len() != 5 || key[0] != DELIVERED_MARK || value.len() != 8 {
        return None;
    }
    Some((
        u32::from_be_bytes(key[1..].try_into().ok()?),
        u64::from_be_bytes(value.try_into().ok()?),
    ))
}

#[cfg(test)]
pub(crate) fn encode_message(m: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 2 + m.exchange.len() + m.routing_key.len() + 4 + m.properties.len() + m.body.len(),
    );
    encode_message_into(m, &mut out);
    out
}

pub(crate) fn encode_message_into(m: &Message, out: &mut Vec<u8>) {
    out.push(u8::from(m.persistent));
    put_short(out, m.exchange.as_bytes());
    put_short(out, m.routing_key.as_bytes());
    put_long(out, &m.properties);
    out.extend_from_slice(&m.body);
}

pub(crate) fn decode_message(raw: &[u8]) -> Option<Message> {
    let mut r = Reader::new(raw);
    let persistent = r.u8()? != 0;
    let exchange = r.short_str()?;
    let routing_key = r.short_str()?;
    let properties = Bytes::copy_from_slice(long(&mut r)?);
    let body = Bytes::copy_from_slice(r.take(r.remaining())?);
    Some(Message::new(
        exchange,
        routing_key,
        properties,
        body,
        persistent,
    ))
}

/// A durable exchange as stored in `meta`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExchangeRecord {
    pub(crate) vhost: String,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: FieldTable,
}

/// A durable queue as stored in `meta`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueRecord {
    pub(crate) vhost: String,
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
}

/// A binding between durable objects as stored in `meta`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BindingRecord {
    pub(crate) vhost: String,
    pub(crate) source: String,
    /// True when the destination is an exchange.
    pub(crate) to_exchange: bool,
    pub(crate) destination: String,
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
}

const EXCHANGE_PREFIX: u8 = b'x';
const QUEUE_PREFIX: u8 = b'q';
const BINDING_PREFIX: u8 = b'b';

fn named_key(prefix: u8, vhost: &str, name: &str) -> Vec<u8> {
    let mut k = vec![prefix];
    put_short(&mut k, vhost.as_bytes());
    put_short(&mut k, name.as_bytes());
    k
}

impl ExchangeRecord {
    pub(crate) fn key(&self) -> Vec<u8> {
        Self::key_for(&self.vhost, &self.name)
    }

    pub(crate) fn key_for(vhost: &str, name: &str) -> Vec<u8> {
        named_key(EXCHANGE_PREFIX, vhost, name)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_short(&mut out, self.vhost.as_bytes());
        put_short(&mut out, self.name.as_bytes());
        put_short(&mut out, self.kind.as_bytes());
        out.push(u8::from(self.auto_delete) | u8::from(self.internal) << 1);
        put_table(&mut out, &self.arguments);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        let vhost = r.short_str()?;
        let name = r.short_str()?;
        let kind = r.short_str()?;
        let flags = r.u8()?;
        let arguments = table(&mut r)?;
        Some(ExchangeRecord {
            vhost,
            name,
            kind,
            auto_delete: flags & 1 != 0,
            internal: flags & 2 != 0,
            arguments,
        })
    }
}

impl QueueRecord {
    pub(crate) fn key(&self) -> Vec<u8> {
        Self::key_for(&self.vhost, &self.name)
    }

    pub(crate) fn key_for(vhost: &str, name: &str) -> Vec<u8> {
        named_key(QUEUE_PREFIX, vhost, name)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_short(&mut out, self.vhost.as_bytes());
        put_short(&mut out, self.name.as_bytes());
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(u8::from(self.auto_delete));
        put_table(&mut out, &self.arguments);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        let vhost = r.short_str()?;
        let name = r.short_str()?;
        let id = r.u32()?;
        let auto_delete = r.u8()? != 0;
        let arguments = table(&mut r)?;
        Some(QueueRecord {
            vhost,
            name,
            id,
            auto_delete,
            arguments,
        })
    }
}

impl BindingRecord {
    /// Unique per (source, destination, routing key, arguments), as bindings are.
    pub(crate) fn key(&self) -> Vec<u8> {
        let mut k = vec![BINDING_PREFIX];
        k.extend_from_slice(&self.encode());
        k
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_short(&mut out, self.vhost.as_bytes());
        put_short(&mut out, self.source.as_bytes());
        out.push(u8::from(self.to_exchange));
        put_short(&mut out, self.destination.as_bytes());
        put_short(&mut out, self.routing_key.as_bytes());
        put_table(&mut out, &self.arguments);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Option<Self> {
        let mut r = Reader::new(raw);
        let vhost = r.short_str()?;
        let source = r.short_str()?;
        let to_exchange = r.u8()? != 0;
        let destination = r.short_str()?;
        let routing_key = r.short_str()?;
        let arguments = table(&mut r)?;
        Some(BindingRecord {
            vhost,
            source,
            to_exchange,
            destination,
            routing_key,
            arguments,
        })
    }
}

/// What a `meta` key holds, from its first byte.
pub(crate) enum MetaKind {
    /// The format marker or the topology version.
    Format,
    Exchange,
    Queue,
    Binding,
    Unknown,
}

pub(crate) fn meta_kind(key: &[u8]) -> MetaKind {
    if key == FORMAT_KEY || key == TOPOLOGY_VERSION_KEY {
        return MetaKind::Format;
    }
    match key.first() {
        Some(&EXCHANGE_PREFIX) => MetaKind::Exchange,
        Some(&QUEUE_PREFIX) => MetaKind::Queue,
        Some(&BINDING_PREFIX) => MetaKind::Binding,
        _ => MetaKind::Unknown,
    }
}

fn put_short(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn put_long(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

fn long<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let n = r.u32()? as usize;
    r.take(n)
}

fn put_table(out: &mut Vec<u8>, t: &FieldTable) {
    let encoded = cookie_factory::gen_simple(
        amq_protocol::types::generation::gen_field_table(t),
        Vec::new(),
    )
    .expect("encoding into a Vec cannot fail");
    out.extend_from_slice(&encoded);
}

fn table(r: &mut Reader<'_>) -> Option<FieldTable> {
    let rest = r.take(r.remaining())?;
    let (left, t) = amq_protocol::types::parsing::parse_field_table(rest).ok()?;
    // Give back what the table did not use.
    *r = Reader::new(left);
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    #[test]
    fn records_round_trip() {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(10));
        args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString("ae".into()),
        );
        let x = ExchangeRecord {
            vhost: "/".into(),
            name: "orders".into(),
            kind: "topic".into(),
            auto_delete: false,
            internal: true,
            arguments: args.clone(),
        };
        assert_eq!(ExchangeRecord::decode(&x.encode()), Some(x));
        let q = QueueRecord {
            vhost: "v".into(),
            name: "q".into(),
            id: 7,
            auto_delete: true,
            arguments: args.clone(),
        };
        assert_eq!(QueueRecord::decode(&q.encode()), Some(q));
        let b = BindingRecord {
            vhost: "/".into(),
            source: "s".into(),
            to_exchange: true,
            destination: "d".into(),
            routing_key: "a.#".into(),
            arguments: args,
        };
        assert_eq!(BindingRecord::decode(&b.encode()), Some(b));
    }

    #[test]
    fn message_round_trips() {
        let m = Message::new(
            "ex".into(),
            "rk".into(),
            Bytes::from_static(&[0x10, 0, 2]),
            Bytes::from_static(b"hello"),
            true,
        );
        let back = decode_message(&encode_message(&m)).unwrap();
        assert_eq!(
            (back.exchange, back.routing_key, back.properties, back.body),
            (m.exchange, m.routing_key, m.properties, m.body)
        );
        assert!(back.persistent);
    }
}
