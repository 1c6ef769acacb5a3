//! AMQP 1.0 messages (what RabbitMQ's stream protocol carries) converted to
//! and from AMQP 0-9-1 messages, so that a stream reads the same over both.
//!
//! The mapping is RabbitMQ 3.13's, the newest documented one ("Inter-Protocol
//! Property Conversions", which covers 3.13 and later; `mc_amqpl.erl` and
//! `mc_amqp.erl`). RabbitMQ 3.10–3.12 (`rabbit_msg_record.erl`) mapped
//! differently and left it undocumented. In short:
//!
//! - AMQP 1.0 → 0-9-1 ([`to_amqp091`]): header durable → delivery-mode,
//!   priority, ttl → expiration; properties → content-type, content-encoding,
//!   message-id and correlation-id (uuid as `urn:uuid:…`, ulong as decimal,
//!   binary or longer than 255 octets as the header `x-message-id` /
//!   `x-correlation-id`), user-id, reply-to, creation-time → timestamp
//!   (seconds), group-id → app-id; application-properties → headers; `x-`
//!   message annotations → headers (`x-cc` as `CC`; `x-exchange`,
//!   `x-routing-key` and `x-basic-*` are the exchange, routing key and basic
//!   properties instead). One data section is the body as is; anything else
//!   (several data sections, amqp-value, amqp-sequence, no body section) is
//!   the encoded sections with type `amqp-1.0`. Headers come sorted by key, as
//!   RabbitMQ delivers them from a stream (it merges in `x-stream-offset`).
//! - 0-9-1 → AMQP 1.0 ([`from_amqp091`]): the reverse, as RabbitMQ writes a
//!   0-9-1 publish into a stream: header, message annotations (`x-basic-type`,
//!   `x-` headers, `CC`, then `x-exchange` and `x-routing-key`), properties,
//!   application properties (the other headers, but not tables or arrays),
//!   one data section.
//!
//! Where RabbitMQ would fail on a value (its conversion has no clause for a
//! uuid, decimal or described header value; a priority that is not a ubyte;
//! message-id of another type) the value is left out instead. Where it
//! re-encodes an amqp-value or amqp-sequence body with its own generator,
//! the client's encoding of the value is kept (the same octets for the
//! usual, smallest encodings). It also turns `x-opt-deaths` back into
//! `x-death`, and reads the legacy `x-amqp-1.0-*` headers of its old AMQP 1.0
//! plugin as sections; here the first is left out and the others are
//! ordinary `x-` headers.

mod basic;
mod codec;

use basic::{Basic, Field, Table};
use codec::{Decoder, Value};
use std::borrow::Cow;

/// A message as an AMQP 0-9-1 consumer receives it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Amqp091 {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    /// Raw basic properties, flags onwards (as `message::Message::properties`).
    pub(crate) properties: bytes::Bytes,
    pub(crate) body: bytes::Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Amqp10Error {
    #[error("AMQP 1.0 value cut short")]
    Truncated,
    #[error("unknown AMQP 1.0 type code 0x{0:02x}")]
    UnknownType(u8),
    #[error("malformed AMQP 1.0 message: {0}")]
    Malformed(&'static str),
    #[error("AMQP 1.0 values nested too deep")]
    TooDeep,
}

const HEADER: u64 = 0x70;
const DELIVERY_ANNOTATIONS: u64 = 0x71;
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const PROPERTIES: u64 = 0x73;
const APPLICATION_PROPERTIES: u64 = 0x74;
const DATA: u64 = 0x75;
const AMQP_SEQUENCE: u64 = 0x76;
const AMQP_VALUE: u64 = 0x77;
const FOOTER: u64 = 0x78;

/// The symbolic descriptors of the sections, from 0x70 on.
const SECTION_NAMES: [&[u8]; 9] = [
    b"amqp:header:list",
    b"amqp:delivery-annotations:map",
    b"amqp:message-annotations:map",
    b"amqp:properties:list",
    b"amqp:application-properties:map",
    b"amqp:data:binary",
    b"amqp:amqp-sequence:list",
    b"amqp:amqp-value:*",
    b"amqp:footer:map",
];

/// What 0-9-1 consumers see as the type of a body that is not one data section.
const AMQP10_TYPE: &[u8] = b"amqp-1.0";

/// A message's sections; a later section of a kind replaces an earlier one.
#[derive(Default)]
struct Sections<'a> {
    header: Vec<Value<'a>>,
    has_header: bool,
    annotations: Vec<(Value<'a>, Value<'a>)>,
    properties: Vec<Value<'a>>,
    application: Vec<(Value<'a>, Value<'a>)>,
    /// Body sections in order: their code and their value's octets.
    body: Vec<(u64, &'a [u8])>,
}

impl<'a> Sections<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Sections<'a>, Amqp10Error> {
        let mut d = Decoder::new(bytes);
        let mut s = Sections::default();
        while !d.is_empty() {
            let code = match d.section()? {
                Value::Ulong(code) => code,
                Value::Symbol(name) => match SECTION_NAMES.iter().position(|n| *n == name) {
                    Some(i) => HEADER + i as u64,
                    None => return Err(Amqp10Error::Malformed("unknown section")),
                },
                _ => return Err(Amqp10Error::Malformed("unknown section")),
            };
            if !matches!(
                code,
                HEADER | PROPERTIES | MESSAGE_ANNOTATIONS | APPLICATION_PROPERTIES
            ) {
                // Bodies, delivery annotations and footers are checked, not
                // built: a 0-9-1 consumer gets their octets or nothing.
                let raw = d.skip_section()?;
                let expected: &[u8] = match code {
                    DATA => &[0xa0, 0xb0],
                    AMQP_SEQUENCE => &[0x45, 0xc0, 0xd0],
                    DELIVERY_ANNOTATIONS | FOOTER => &[0xc1, 0xd1],
                    AMQP_VALUE => &raw[..1],
                    _ => return Err(Amqp10Error::Malformed("unknown section")),
                };
                if !expected.contains(&raw[0]) {
                    return Err(Amqp10Error::Malformed("section of the wrong type"));
                }
                if matches!(code, DATA | AMQP_SEQUENCE | AMQP_VALUE) {
                    s.body.push((code, raw));
                }
                continue;
            }
            match (code, d.section_value()?) {
                (HEADER, Value::List(fields)) => {
                    s.header = fields;
                    s.has_header = true;
                }
                (PROPERTIES, Value::List(fields)) => s.properties = fields,
                (MESSAGE_ANNOTATIONS, Value::Map(pairs)) => s.annotations = pairs,
                (APPLICATION_PROPERTIES, Value::Map(pairs)) => s.application = pairs,
                _ => return Err(Amqp10Error::Malformed("section of the wrong type")),
            }
        }
        Ok(s)
    }

    /// Field `i` of the header, absent when null.
    fn header(&self, i: usize) -> Option<&Value<'a>> {
        self.header.get(i).filter(|v| **v != Value::Null)
    }

    fn property(&self, i: usize) -> Option<&Value<'a>> {
        self.properties.get(i).filter(|v| **v != Value::Null)
    }

    /// The message annotation `key` (a symbol).
    fn annotation(&self, key: &[u8]) -> Option<&Value<'a>> {
        self.annotations
            .iter()
            .find(|(k, _)| k.bytes() == Some(key))
            .map(|(_, v)| v)
    }
}

/// What an AMQP 0-9-1 consumer of stream `stream` receives for `bytes`, an
/// AMQP 1.0 message a stream client published.
pub(crate) fn to_amqp091<'a>(bytes: &'a [u8], stream: &'a str) -> Result<Amqp091, Amqp10Error> {
    let s = Sections::decode(bytes)?;
    let mut b = Basic::default();

    // Exchange and routing key: the last x-exchange and x-routing-key
    // strings, else the first x-cc; else those of the default exchange.
    let mut exchange: &[u8] = b"";
    let mut routing_key = None;
    let mut cc = None;
    for (k, v) in &s.annotations {
        match (k, v) {
            (Value::Symbol(b"x-exchange"), Value::String(x)) => exchange = x,
            (Value::Symbol(b"x-routing-key"), Value::String(rk)) => routing_key = Some(*rk),
            (Value::Symbol(b"x-cc"), Value::List(keys)) if cc.is_none() => {
                cc = keys.first().and_then(Value::bytes)
            }
            _ => {}
        }
    }
    let routing_key = routing_key.or(cc).unwrap_or(stream.as_bytes());

    let ubyte = |v: Option<&Value>| integer(v?).and_then(|n| u8::try_from(n).ok());
    b.delivery_mode = match s.header(0) {
        Some(Value::Bool(true)) => Some(2),
        Some(Value::Bool(false)) => Some(1),
        _ => ubyte(s.annotation(b"x-basic-delivery-mode")),
    };
    b.priority = match s.header(1) {
        Some(p) => ubyte(Some(p)),
        None => ubyte(s.annotation(b"x-basic-priority")),
    };
    b.expiration = match s.header(2).and_then(integer) {
        Some(ttl) => Some(Cow::Owned(ttl.to_string().into_bytes())),
        None => string(s.annotation(b"x-basic-expiration"))
            .and_then(|e| crate::message::parse_expiration(&e).ok())
            .map(|ttl| Cow::Owned(ttl.to_string().into_bytes())),
    };

    let mut headers: Table = Vec::new();
    for (k, v) in &s.annotations {
        let Value::Symbol(key) = k else { continue };
        let header = match (*key, v) {
            (b"x-cc", _) => to_091(v).map(|f| (Cow::Borrowed(&b"CC"[..]), f)),
            (b"x-opt-rabbitmq-received-time", Value::Timestamp(ms)) => {
                Some((Cow::Borrowed(&b"timestamp_in_ms"[..]), Field::I64(*ms)))
            }
            (b"x-opt-deaths", _) => None,
            (key, v) if key.starts_with(b"x-") && key.len() <= 255 && !is_internal(key) => {
                to_091(v).map(|f| (Cow::Borrowed(key), f))
            }
            _ => None,
        };
        headers.extend(header);
    }
    let mut ids = Vec::new();
    b.correlation_id = id(s.property(5), b"x-correlation-id", &mut ids);
    b.message_id = id(s.property(0), b"x-message-id", &mut ids);
    headers.extend(ids);
    for (k, v) in &s.application {
        if let (Value::String(key), Some(f)) = (k, to_091(v)) {
            if key.len() <= 255 {
                headers.push((Cow::Borrowed(key), f));
            }
        }
    }
    // Sorted by key, the first of equal keys kept.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    headers.dedup_by(|later, earlier| later.0 == earlier.0);
    b.headers = (!headers.is_empty()).then_some(headers);

    b.user_id = string(s.property(1)).filter(|u| is_utf8_without_nul(u));
    b.reply_to = utf8(s.property(4));
    b.app_id = utf8(s.property(10));
    b.content_type = string(s.property(6));
    b.content_encoding = string(s.property(7));
    if let Some(Value::Timestamp(ms)) = s.property(9) {
        b.timestamp = Some((ms / 1000) as u64);
    }

    let body = match s.body.as_slice() {
        [(DATA, raw)] => {
            b.kind = string(s.annotation(b"x-basic-type"));
            bytes::Bytes::copy_from_slice(data(raw))
        }
        sections => {
            b.kind = Some(Cow::Borrowed(AMQP10_TYPE));
            let mut body = Vec::new();
            for &(code, raw) in sections {
                body.extend_from_slice(&[0, 0x53, code as u8]);
                match code {
                    DATA => codec::encode(&mut body, &Value::Binary(data(raw))),
                    _ => body.extend_from_slice(raw),
                }
            }
            body.into()
        }
    };
    Ok(Amqp091 {
        exchange: String::from_utf8_lossy(exchange).into_owned(),
        routing_key: String::from_utf8_lossy(routing_key).into_owned(),
        properties: b.write().into(),
        body,
    })
}

/// The content of a data section's value, already checked to be a binary.
fn data(raw: &[u8]) -> &[u8] {
    match Decoder::new(raw).value() {
        Ok(Value::Binary(b)) => b,
        _ => &[],
    }
}

/// A string, symbol or binary that fits a short string.
fn string<'a>(v: Option<&Value<'a>>) -> Option<Cow<'a, [u8]>> {
    v.and_then(Value::bytes)
        .filter(|b| b.len() <= 255)
        .map(Cow::Borrowed)
}

/// A string (not a symbol or binary) that fits a short string.
fn utf8<'a>(v: Option<&Value<'a>>) -> Option<Cow<'a, [u8]>> {
    match v {
        Some(Value::String(s)) if s.len() <= 255 => Some(Cow::Borrowed(*s)),
        _ => None,
    }
}

/// The message-id or correlation-id property as 0-9-1 has it: a uuid as
/// its URN, a ulong in decimal, a short string as is; a binary or a longer
/// string goes into the header `key` instead.
fn id<'a>(
    v: Option<&Value<'a>>,
    key: &'static [u8],
    headers: &mut Table<'a>,
) -> Option<Cow<'a, [u8]>> {
    match *v? {
        Value::Uuid(u) => Some(Cow::Owned(urn(&u).into_bytes())),
        Value::Ulong(n) => Some(Cow::Owned(n.to_string().into_bytes())),
        Value::String(s) if s.len() <= 255 => Some(Cow::Borrowed(s)),
        Value::String(s) => {
            headers.push((Cow::Borrowed(key), Field::Str(Cow::Borrowed(s))));
            None
        }
        Value::Binary(s) => {
            headers.push((Cow::Borrowed(key), Field::Bytes(s)));
            None
        }
        _ => None,
    }
}

/// Annotations RabbitMQ itself puts on messages, which are not headers.
fn is_internal(key: &[u8]) -> bool {
    key.starts_with(b"x-basic-") || matches!(key, b"x-routing-key" | b"x-exchange" | b"x-death")
}

fn integer(v: &Value) -> Option<i128> {
    Some(match *v {
        Value::Ubyte(n) => n.into(),
        Value::Ushort(n) => n.into(),
        Value::Uint(n) => n.into(),
        Value::Ulong(n) => n.into(),
        Value::Byte(n) => n.into(),
        Value::Short(n) => n.into(),
        Value::Int(n) => n.into(),
        Value::Long(n) => n.into(),
        _ => return None,
    })
}

fn is_utf8_without_nul(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok() && !b.contains(&0)
}

/// An AMQP 1.0 value as a 0-9-1 header value (RabbitMQ's `to_091`); `None`
/// for what has no 0-9-1 form.
fn to_091<'a>(v: &Value<'a>) -> Option<Field<'a>> {
    Some(match *v {
        Value::Null => Field::Void,
        Value::Bool(b) | Value::Boolean(b) => Field::Bool(b),
        Value::Ubyte(n) => Field::U8(n),
        Value::Ushort(n) => Field::U16(n),
        Value::Uint(n) => Field::U32(n),
        // RabbitMQ's "risk of overflow": the same 64 bits, signed.
        Value::Ulong(n) => Field::I64(n as i64),
        Value::Byte(n) => Field::I8(n),
        Value::Short(n) => Field::I16(n),
        Value::Int(n) => Field::I32(n),
        Value::Long(n) => Field::I64(n),
        Value::Float(f) => Field::F32(f),
        Value::Double(f) => Field::F64(f),
        Value::Timestamp(ms) => Field::Timestamp((ms / 1000) as u64),
        Value::String(s) | Value::Symbol(s) | Value::Binary(s) => Field::Str(Cow::Borrowed(s)),
        Value::List(ref items) | Value::Array(ref items) => {
            Field::Array(items.iter().filter_map(to_091).collect())
        }
        Value::Map(ref pairs) => Field::Table(
            pairs
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.bytes().filter(|k| k.len() <= 255)?;
                    Some((Cow::Borrowed(key), to_091(v)?))
                })
                .collect(),
        ),
        Value::Uuid(_) | Value::Opaque(..) | Value::Described(_) => return None,
    })
}

/// A 0-9-1 header value as AMQP 1.0 (RabbitMQ's `from_091`); `None` for a
/// decimal, which has no conversion.
fn from_091<'a>(f: &'a Field<'_>) -> Option<Value<'a>> {
    Some(match *f {
        Field::Str(ref s) if s.len() <= 4096 && is_utf8_without_nul(s) => Value::String(s),
        Field::Str(ref s) => Value::Binary(s),
        Field::Bytes(s) => Value::Binary(s),
        Field::Bool(b) => Value::Boolean(b),
        Field::I8(n) => Value::Byte(n),
        Field::U8(n) => Value::Ubyte(n),
        Field::I16(n) => Value::Short(n),
        Field::U16(n) => Value::Ushort(n),
        Field::I32(n) => Value::Int(n),
        Field::U32(n) => Value::Uint(n),
        Field::I64(n) => Value::Long(n),
        Field::F32(n) => Value::Float(n),
        Field::F64(n) => Value::Double(n),
        Field::Timestamp(s) => Value::Timestamp((s as i64).wrapping_mul(1000)),
        Field::Void => Value::Null,
        Field::Decimal(..) => return None,
        Field::Array(ref items) => Value::List(items.iter().filter_map(from_091).collect()),
        Field::Table(ref table) => Value::Map(
            table
                .iter()
                .filter_map(|(k, v)| Some((Value::Symbol(k), from_091(v)?)))
                .collect(),
        ),
    })
}

/// The AMQP 1.0 message a stream client receives for a message published
/// over AMQP 0-9-1 to `exchange` with `routing_key` (`properties` raw, flags
/// onwards). Properties that do not parse (never the case for what the
/// broker accepted) are left out.
pub(crate) fn from_amqp091(
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let b = Basic::parse(properties).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + properties.len() + 64);
    let section = |out: &mut Vec<u8>, code: u64, value: &Value| {
        out.extend_from_slice(&[0, 0x53, code as u8]);
        codec::encode(out, value);
    };

    let ttl = b
        .expiration
        .as_deref()
        .and_then(|e| crate::message::parse_expiration(e).ok())
        // RabbitMQ writes the ttl as a uint, keeping the low 32 bits.
        .map_or(Value::Null, |ms| Value::Uint(ms as u32));
    let header = Value::List(vec![
        Value::Bool(b.delivery_mode == Some(2)),
        b.priority.map_or(Value::Null, Value::Ubyte),
        ttl,
        Value::Null,
        Value::Null,
    ]);
    section(&mut out, HEADER, &header);

    let headers = b.headers.as_deref().unwrap_or_default();
    let mut annotations = Vec::new();
    if let Some(kind) = &b.kind {
        annotations.push((Value::Symbol(b"x-basic-type"), Value::String(kind.as_ref())));
    }
    for (key, value) in headers {
        let key = match (key.as_ref(), value) {
            (k, _) if k.starts_with(b"x-") => k,
            (b"CC", Field::Array(_)) => b"x-cc",
            _ => continue,
        };
        annotations.extend(from_091(value).map(|v| (Value::Symbol(key), v)));
    }
    for (key, value) in [
        (&b"x-exchange"[..], exchange),
        (b"x-routing-key", routing_key),
    ] {
        let pair = (Value::Symbol(key), Value::String(value.as_bytes()));
        match annotations.iter_mut().find(|(k, _)| *k == pair.0) {
            Some(existing) => *existing = pair,
            None => annotations.push(pair),
        }
    }
    section(&mut out, MESSAGE_ANNOTATIONS, &Value::Map(annotations));

    fn string<'b>(s: &'b Option<Cow<[u8]>>) -> Value<'b> {
        s.as_deref().map_or(Value::Null, Value::String)
    }
    fn symbol<'b>(s: &'b Option<Cow<[u8]>>) -> Value<'b> {
        s.as_deref().map_or(Value::Null, Value::Symbol)
    }
    fn id<'b>(s: &'b Option<Cow<[u8]>>) -> Value<'b> {
        match s.as_deref() {
            Some(s) => parse_urn(s).map_or(Value::String(s), Value::Uuid),
            None => Value::Null,
        }
    }
    let properties = vec![
        id(&b.message_id),
        b.user_id.as_deref().map_or(Value::Null, Value::Binary),
        Value::Null,
        Value::Null,
        string(&b.reply_to),
        id(&b.correlation_id),
        symbol(&b.content_type),
        symbol(&b.content_encoding),
        Value::Null,
        b.timestamp.map_or(Value::Null, |s| {
            Value::Timestamp((s as i64).wrapping_mul(1000))
        }),
        string(&b.app_id),
        Value::Null,
        Value::Null,
    ];
    if properties.iter().any(|p| *p != Value::Null) {
        section(&mut out, PROPERTIES, &Value::List(properties));
    }

    let application: Vec<_> = headers
        .iter()
        .filter(|(k, v)| !k.starts_with(b"x-") && !matches!(v, Field::Array(_) | Field::Table(_)))
        .filter_map(|(k, v)| Some((Value::String(k), from_091(v)?)))
        .collect();
    if !application.is_empty() {
        section(&mut out, APPLICATION_PROPERTIES, &Value::Map(application));
    }

    if b.kind.as_deref() == Some(AMQP10_TYPE) && is_body_sections(body) {
        out.extend_from_slice(body);
    } else {
        section(&mut out, DATA, &Value::Binary(body));
    }
    out
}

/// Does `body` hold AMQP 1.0 body sections (what a 0-9-1 consumer received
/// with type `amqp-1.0` and may publish on)?
fn is_body_sections(body: &[u8]) -> bool {
    matches!(
        Sections::decode(body),
        Ok(s) if !s.body.is_empty()
            && !s.has_header
            && s.annotations.is_empty()
            && s.properties.is_empty()
            && s.application.is_empty()
    )
}

/// `urn:uuid:` and a uuid in its 8-4-4-4-12 hex form (either case).
fn parse_urn(s: &[u8]) -> Option<[u8; 16]> {
    let hex = s.strip_prefix(b"urn:uuid:")?;
    if hex.len() != 36 || [8, 13, 18, 23].iter().any(|&i| hex[i] != b'-') {
        return None;
    }
    let mut digits = hex.iter().filter(|&&c| c != b'-');
    let mut uuid = [0u8; 16];
    for byte in &mut uuid {
        let hi = (*digits.next()? as char).to_digit(16)?;
        let lo = (*digits.next()? as char).to_digit(16)?;
        *byte = (hi * 16 + lo) as u8;
    }
    digits.next().is_none().then_some(uuid)
}

fn urn(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::basic::{Basic, Field, Table};
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn c(s: &'static [u8]) -> Option<Cow<'static, [u8]>> {
        Some(Cow::Borrowed(s))
    }

    fn headers(raw: &[u8]) -> Table<'_> {
        Basic::parse(raw).unwrap().headers.unwrap_or_default()
    }

    /// `rstream.AMQPMessage(body=b"hello")`, as rstream 1.1.1 encodes it.
    const RSTREAM_SIMPLE: &str = "005375a00568656c6c6f";

    /// rstream 1.1.1: `AMQPMessage(body=b"hello", properties=Properties(
    /// message_id="id-1", user_id=b"guest", reply_to="rq", correlation_id=7,
    /// content_type="text/plain", content_encoding="gzip",
    /// creation_time=1700000000123, group_id="app"), header=Header(durable=True,
    /// priority=5, ttl=60000), application_properties={"s": "str", "i": 42,
    /// "b": True, "f": 1.5, "n": None, "bin": b"\x00\x01"},
    /// message_annotations={"x-opt-k": "v", "x-routing-key": "rk"})`.
    const RSTREAM_FULL: &str = "005370c00c0556015005700000ea604040005372c12004a307782d6f70742d6ba1\
        0176a30d782d726f7574696e672d6b6579a102726b005373c0390da10469642d31a005677565737440\
        40a10272715307a30a746578742f706c61696ea304677a697040830000018bcfe5687ba10361707040\
        40005374c12c0ca10173a103737472a10169542aa101625601a10166823ff8000000000000a1016e40\
        a10362696ea0020001005375a00568656c6c6f";

    #[test]
    fn a_simple_rstream_message_is_its_body() {
        let m = to_amqp091(&hex(RSTREAM_SIMPLE), "orders").unwrap();
        assert_eq!(m.exchange, "");
        assert_eq!(
            m.routing_key, "orders",
            "the stream's name, as the default exchange"
        );
        assert_eq!(&m.properties[..], [0, 0]);
        assert_eq!(&m.body[..], b"hello");
    }

    #[test]
    fn every_section_of_an_rstream_message_maps_as_rabbitmq_maps_it() {
        let m = to_amqp091(&hex(RSTREAM_FULL), "orders").unwrap();
        assert_eq!((m.exchange.as_str(), m.routing_key.as_str()), ("", "rk"));
        assert_eq!(&m.body[..], b"hello");
        let s = |k: &'static [u8], f| (Cow::Borrowed(k), f);
        let expected = Basic {
            content_type: c(b"text/plain"),
            content_encoding: c(b"gzip"),
            headers: Some(vec![
                s(b"b", Field::Bool(true)),
                s(b"bin", Field::Str(Cow::Borrowed(b"\x00\x01"))),
                s(b"f", Field::F64(1.5)),
                s(b"i", Field::I32(42)),
                s(b"n", Field::Void),
                s(b"s", Field::Str(Cow::Borrowed(b"str"))),
                s(b"x-opt-k", Field::Str(Cow::Borrowed(b"v"))),
            ]),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: c(b"7"),
            reply_to: c(b"rq"),
            expiration: c(b"60000"),
            message_id: c(b"id-1"),
            timestamp: Some(1_700_000_000),
            user_id: c(b"guest"),
            app_id: c(b"app"),
            ..Basic::default()
        };
        assert_eq!(Basic::parse(&m.properties).unwrap(), expected);
    }

    #[test]
    fn other_bodies_are_kept_encoded_with_type_amqp_1_0() {
        // rstream's AMQPMessage(value="a value"): an amqp-value section.
        let value = hex("005377a107612076616c7565");
        let m = to_amqp091(&value, "s").unwrap();
        assert_eq!(m.body, value);
        let b = Basic::parse(&m.properties).unwrap();
        assert_eq!(b.kind.as_deref(), Some(AMQP10_TYPE));
        // Two data sections, the second in the four-octet form, with a
        // symbolic descriptor: re-encoded as RabbitMQ encodes them.
        let mut two = hex("005375a0026869");
        two.extend_from_slice(&[0, 0xa3, 16]);
        two.extend_from_slice(b"amqp:data:binary");
        two.extend_from_slice(&[0xb0, 0, 0, 0, 1, b'!']);
        let m = to_amqp091(&two, "s").unwrap();
        assert_eq!(m.body, hex("005375a0026869005375a00121"));
        // Nothing at all: an empty body, still typed.
        let m = to_amqp091(&[], "s").unwrap();
        assert!(m.body.is_empty());
        assert_eq!(
            Basic::parse(&m.properties).unwrap().kind.as_deref(),
            Some(AMQP10_TYPE)
        );
    }

    #[test]
    fn ids_convert_by_type() {
        let props = |id: Vec<u8>| {
            let mut m = vec![0, 0x53, 0x73, 0xc0, 0, 6];
            m.extend_from_slice(&id);
            m.extend_from_slice(&[0x40; 4]);
            m.extend_from_slice(&id);
            m[4] = (m.len() - 5) as u8;
            m.extend_from_slice(&hex("005375a000"));
            to_amqp091(&m, "s").unwrap().properties
        };
        let raw = props(hex("98550e8400e29b41d4a716446655440000"));
        let b = Basic::parse(&raw).unwrap();
        assert_eq!(
            b.message_id.as_deref(),
            Some(&b"urn:uuid:550e8400-e29b-41d4-a716-446655440000"[..])
        );
        assert_eq!(b.correlation_id, b.message_id);
        let raw = props(vec![0x80, 0, 0, 0, 0, 0, 0, 1, 0]);
        let b = Basic::parse(&raw).unwrap();
        assert_eq!(b.message_id.as_deref(), Some(&b"256"[..]));
        let raw = props(vec![0xa0, 2, 0, 1]);
        let b = Basic::parse(&raw).unwrap();
        assert_eq!((b.message_id, b.correlation_id), (None, None));
        assert_eq!(
            b.headers.unwrap(),
            vec![
                (
                    Cow::Borrowed(&b"x-correlation-id"[..]),
                    Field::Bytes(b"\x00\x01")
                ),
                (
                    Cow::Borrowed(&b"x-message-id"[..]),
                    Field::Bytes(b"\x00\x01")
                ),
            ]
        );
    }

    #[test]
    fn exchange_and_routing_key_come_from_the_annotations() {
        let mut out = from_amqp091("amq.direct", "key", &[0, 0], b"x");
        let m = to_amqp091(&out, "s").unwrap();
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str()),
            ("amq.direct", "key")
        );
        // Without x-routing-key, the first x-cc key routes.
        out = hex("005372c11102a304782d6363c00803a1016140a10162005375a000");
        let m = to_amqp091(&out, "s").unwrap();
        assert_eq!(m.routing_key, "a");
        let h = headers(&m.properties);
        assert_eq!(h[0].0.as_ref(), b"CC");
        assert_eq!(
            h[0].1,
            Field::Array(vec![
                Field::Str(Cow::Borrowed(b"a")),
                Field::Void,
                Field::Str(Cow::Borrowed(b"b"))
            ])
        );
    }

    /// What RabbitMQ 3.13 writes into a stream for a 0-9-1 publish to
    /// exchange "ex", routing key "rk", content-type text/plain, persistent,
    /// headers {h: "v", x-k: 1 (signed int)}, body "hi"; rstream 1.1.1's
    /// `amqp_decoder` reads these octets back as that message.
    const FROM_091: &str = "005370c0060541404040400053\
        72c12b06a303782d6b5401a30a782d65786368616e6765a1026578a30d782d726f7574696e672d6b6579\
        a102726b005373c0190d404040404040a30a746578742f706c61696e404040404040005374c10702a101\
        68a10176005375a0026869";

    #[test]
    fn a_091_message_becomes_what_rabbitmq_writes_into_a_stream() {
        let b = Basic {
            content_type: c(b"text/plain"),
            delivery_mode: Some(2),
            headers: Some(vec![
                (Cow::Borrowed(b"h"), Field::Str(Cow::Borrowed(b"v"))),
                (Cow::Borrowed(b"x-k"), Field::I32(1)),
            ]),
            ..Basic::default()
        };
        let out = from_amqp091("ex", "rk", &b.write(), b"hi");
        assert_eq!(out, hex(FROM_091));
    }

    #[test]
    fn stream_entries_read_over_the_other_protocol() {
        use crate::stream_entry::{self, Payload};
        // What a stream client published, as the stream log keeps it.
        let entry = stream_entry::encode_amqp10(&hex(RSTREAM_FULL));
        let Ok(Payload::Amqp10(message)) = stream_entry::decode(entry.into()) else {
            panic!("not an AMQP 1.0 entry");
        };
        let m = to_amqp091(&message, "orders").unwrap();
        assert_eq!((m.routing_key.as_str(), &m.body[..]), ("rk", &b"hello"[..]));
        // What an AMQP 0-9-1 publisher published, as the stream queue keeps it.
        let props = Basic {
            content_type: c(b"text/plain"),
            delivery_mode: Some(2),
            headers: Some(vec![
                (Cow::Borrowed(b"h"), Field::Str(Cow::Borrowed(b"v"))),
                (Cow::Borrowed(b"x-k"), Field::I32(1)),
            ]),
            ..Basic::default()
        };
        let published = crate::message::Message::new(
            "ex".into(),
            "rk".into(),
            props.write().into(),
            bytes::Bytes::from_static(b"hi"),
            true,
        );
        let entry = stream_entry::encode_amqp091(&published);
        let Ok(Payload::Amqp091 {
            exchange,
            routing_key,
            properties,
            body,
        }) = stream_entry::decode(entry.into())
        else {
            panic!("not an AMQP 0-9-1 entry");
        };
        assert_eq!(
            from_amqp091(&exchange, &routing_key, &properties, &body),
            hex(FROM_091)
        );
    }

    /// A 0-9-1 message with every property and every header type.
    fn every_091() -> Basic<'static> {
        let k = |k: &'static [u8]| Cow::Borrowed(k);
        let table: Table = vec![(k(b"n"), Field::I64(1)), (k(b"s"), Field::Str(k(b"t")))];
        Basic {
            content_type: c(b"application/json"),
            content_encoding: c(b"gzip"),
            headers: Some(vec![
                (k(b"bool"), Field::Bool(false)),
                (k(b"bytes"), Field::Str(k(b"\xff\x00"))),
                (k(b"f32"), Field::F32(0.5)),
                (k(b"f64"), Field::F64(-1e300)),
                (k(b"i16"), Field::I16(-300)),
                (k(b"i32"), Field::I32(i32::MIN)),
                (k(b"i64"), Field::I64(i64::MAX)),
                (k(b"i8"), Field::I8(-8)),
                (k(b"str"), Field::Str(k("é".as_bytes()))),
                (k(b"ts"), Field::Timestamp(1_700_000_000)),
                (k(b"u16"), Field::U16(65535)),
                (k(b"u32"), Field::U32(u32::MAX)),
                (k(b"u8"), Field::U8(200)),
                (k(b"void"), Field::Void),
                (
                    k(b"x-array"),
                    Field::Array(vec![Field::I32(1), Field::Table(table.clone())]),
                ),
                (k(b"x-table"), Field::Table(table)),
            ]),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: c(b"urn:uuid:550E8400-E29B-41D4-A716-446655440000"),
            reply_to: c(b"amq.rabbitmq.reply-to"),
            expiration: c(b"60000"),
            message_id: c(b"msg-1"),
            timestamp: Some(1_700_000_000),
            kind: c(b"order.created"),
            user_id: c(b"guest"),
            app_id: c(b"shop"),
            cluster_id: None,
        }
    }

    /// `every_091` as RabbitMQ would write it into a stream; rstream 1.1.1's
    /// `amqp_decoder` reads every property and value of it back.
    #[test]
    fn a_stream_client_reads_every_091_property() {
        let out = from_amqp091("ex", "rk", &every_091().write(), b"body");
        let s = Sections::decode(&out).unwrap();
        assert_eq!(
            s.header,
            [
                Value::Bool(true),
                Value::Ubyte(7),
                Value::Uint(60000),
                Value::Null,
                Value::Null
            ]
        );
        assert_eq!(s.property(9), Some(&Value::Timestamp(1_700_000_000_000)));
        assert_eq!(
            s.property(5),
            Some(&Value::Uuid(
                hex("550e8400e29b41d4a716446655440000").try_into().unwrap()
            ))
        );
        assert_eq!(
            s.annotation(b"x-basic-type"),
            Some(&Value::String(b"order.created"))
        );
        let keys: Vec<_> = s
            .annotations
            .iter()
            .filter_map(|(k, _)| k.bytes())
            .collect();
        assert_eq!(
            keys,
            [
                &b"x-basic-type"[..],
                b"x-array",
                b"x-table",
                b"x-exchange",
                b"x-routing-key"
            ]
        );
        assert_eq!(s.application.len(), 14, "all but the array and the table");
        assert_eq!(
            s.application
                .iter()
                .find(|(k, _)| k.bytes() == Some(b"bool")),
            Some(&(Value::String(b"bool"), Value::Bool(false)))
        );
        assert!(out.ends_with(&hex("005375a004626f6479")));
    }

    #[test]
    fn a_091_message_reads_back_over_091() {
        let sent = every_091();
        let bytes = from_amqp091("ex", "rk", &sent.write(), b"body");
        let m = to_amqp091(&bytes, "s").unwrap();
        assert_eq!(
            (m.exchange.as_str(), m.routing_key.as_str(), &m.body[..]),
            ("ex", "rk", &b"body"[..])
        );
        let mut expected = sent.clone();
        // The uuid comes back in RabbitMQ's lower case.
        expected.correlation_id = c(b"urn:uuid:550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(Basic::parse(&m.properties).unwrap(), expected);
    }

    #[test]
    fn headers_as_deep_as_091_allows_read_back() {
        // The headers table and 99 tables inside it: the most a publisher may send.
        let mut field = Field::I8(1);
        for _ in 1..leveret_protocol::field_table::MAX_DEPTH {
            field = Field::Table(vec![(Cow::Borrowed(&b"x-n"[..]), field)]);
        }
        let sent = Basic {
            headers: Some(vec![(Cow::Borrowed(&b"x-n"[..]), field)]),
            ..Basic::default()
        };
        let raw = sent.write();
        assert!(leveret_protocol::properties::PropertiesView::scan(&raw).is_ok());
        // Each level of the recursion costs little stack: a fifth of a
        // worker's 2 MiB is plenty, unoptimised.
        let headers = std::thread::Builder::new()
            .stack_size(384 * 1024)
            .spawn(move || {
                let m = to_amqp091(&from_amqp091("", "q", &raw, b""), "s").unwrap();
                Basic::parse(&m.properties)
                    .unwrap()
                    .headers
                    .map(|h| format!("{h:?}"))
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(headers, sent.headers.map(|h| format!("{h:?}")));
    }

    #[test]
    fn older_rabbitmq_annotations_give_the_basic_properties() {
        // No header section; RabbitMQ 3.12 and before kept these as
        // annotations. An x- annotation wins over an application property
        // of the same name.
        let mut ma = Vec::new();
        for (k, v) in [
            (&b"x-basic-delivery-mode"[..], Value::Ubyte(2)),
            (b"x-basic-priority", Value::Ubyte(3)),
            (b"x-basic-expiration", Value::String(b"+0100")),
            (b"x-basic-type", Value::String(b"t")),
            (b"x-a", Value::Long(1)),
        ] {
            ma.push((Value::Symbol(k), v));
        }
        let mut bytes = vec![0, 0x53, 0x72];
        codec::encode(&mut bytes, &Value::Map(ma));
        bytes.extend_from_slice(&[0, 0x53, 0x74]);
        codec::encode(
            &mut bytes,
            &Value::Map(vec![(Value::String(b"x-a"), Value::Long(2))]),
        );
        bytes.extend_from_slice(&hex("005375a000"));
        let m = to_amqp091(&bytes, "s").unwrap();
        let b = Basic::parse(&m.properties).unwrap();
        assert_eq!((b.delivery_mode, b.priority), (Some(2), Some(3)));
        assert_eq!(b.expiration.as_deref(), Some(&b"100"[..]));
        assert_eq!(b.kind.as_deref(), Some(&b"t"[..]));
        assert_eq!(
            b.headers.unwrap(),
            vec![(Cow::Borrowed(&b"x-a"[..]), Field::I64(1))]
        );
    }

    #[test]
    fn what_091_cannot_carry_is_left_out() {
        let k = |k: &'static [u8]| Cow::Borrowed(k);
        let sent = Basic {
            cluster_id: c(b"cl"),
            headers: Some(vec![
                (k(b"array"), Field::Array(vec![Field::I32(1)])),
                (k(b"dec"), Field::Decimal(2, 5)),
                (k(b"x-dec"), Field::Decimal(2, 5)),
                (k(b"bin"), Field::Bytes(b"ab")),
                (k(b"CC"), Field::Array(vec![Field::Str(k(b"q"))])),
            ]),
            ..Basic::default()
        };
        let m = to_amqp091(&from_amqp091("", "q", &sent.write(), b""), "s").unwrap();
        let got = Basic::parse(&m.properties).unwrap();
        assert_eq!(got.cluster_id, None);
        assert_eq!(
            got.headers.unwrap(),
            vec![
                (k(b"CC"), Field::Array(vec![Field::Str(k(b"q"))])),
                (k(b"bin"), Field::Str(k(b"ab"))),
            ]
        );
    }

    #[test]
    fn a_stream_message_reads_back_over_the_stream_protocol() {
        // Stream client → 0-9-1 consumer → 0-9-1 publisher → stream client:
        // every application property type 0-9-1 carries keeps its value.
        let first = hex(RSTREAM_FULL);
        let m = to_amqp091(&first, "s").unwrap();
        let again = from_amqp091(&m.exchange, &m.routing_key, &m.properties, &m.body);
        let (a, b) = (
            Sections::decode(&first).unwrap(),
            Sections::decode(&again).unwrap(),
        );
        assert_eq!(a.header[..3], b.header[..3]);
        assert_eq!(b.body, a.body);
        fn ap<'a>(s: &Sections<'a>) -> Vec<(Vec<u8>, Option<Field<'a>>)> {
            let mut v: Vec<_> = s
                .application
                .iter()
                .map(|(k, v)| (k.bytes().unwrap().to_vec(), to_091(v)))
                .collect();
            v.sort_by(|x, y| x.0.cmp(&y.0));
            v
        }
        assert_eq!(ap(&a), ap(&b));
        for i in [0, 1, 4, 6, 7, 9, 10] {
            let bytes = |s: &Sections| s.property(i).map(|v| v.bytes().map(<[u8]>::to_vec));
            if i != 9 {
                assert_eq!(bytes(&a), bytes(&b), "property {i}");
            }
        }
        // creation-time went through 0-9-1's seconds.
        assert_eq!(a.property(9), Some(&Value::Timestamp(1_700_000_000_123)));
        assert_eq!(b.property(9), Some(&Value::Timestamp(1_700_000_000_000)));
        assert_eq!(b.annotation(b"x-opt-k"), Some(&Value::String(b"v")));
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let full = hex(RSTREAM_FULL);
        // Where each section ends: the message cut there is still a message.
        let mut ends = vec![0];
        let mut d = Decoder::new(&full);
        while !d.is_empty() {
            d.section().unwrap();
            d.skip_section().unwrap();
            ends.push(full.len() - d.rest().len());
        }
        for cut in 0..full.len() {
            let result = to_amqp091(&full[..cut], "s");
            assert_eq!(
                result.is_ok(),
                ends.contains(&cut),
                "cut at {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn hostile_messages_are_refused() {
        // A section that is not described, an unknown descriptor, a header
        // that is not a list, a billion-entry map in a few octets.
        for bad in [
            &hex("a00568656c6c6f")[..],
            &hex("005399a000"),
            &hex("005370a000"),
            &hex("005374d100000004ffffffff"),
            &hex("005370d0ffffffff00000005"),
            // Bodies are only checked, not built, but checked all the same:
            // an unknown type, a sequence that is not a list, a footer that
            // is not a map, a list cut short inside an amqp-value.
            &hex("005377c003019940"),
            &hex("005376a000"),
            &hex("005378c00101"),
            &hex("005377c0050240"),
        ] {
            assert!(to_amqp091(bad, "s").is_err(), "{bad:02x?}");
        }
        // An amqp-value of lists nested a hundred thousand deep, each the
        // only element of the one around it.
        let levels = 100_000u32;
        let mut deep = hex("005377");
        for level in 0..levels {
            deep.push(0xd0);
            deep.extend_from_slice(&(5 + 9 * (levels - level - 1)).to_be_bytes());
            deep.extend_from_slice(&1u32.to_be_bytes());
        }
        deep.push(0x45);
        assert_eq!(to_amqp091(&deep, "s"), Err(Amqp10Error::TooDeep));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = to_amqp091(&bytes, "s");
            let _ = from_amqp091("e", "k", &bytes, &bytes);
        }

        /// Damage to a real message: errors or converts, never panics.
        #[test]
        fn damaged_messages_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            for base in [hex(RSTREAM_FULL), hex(FROM_091)] {
                let mut bytes = base.clone();
                for (at, b) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *b;
                }
                if let Ok(m) = to_amqp091(&bytes, "s") {
                    // What converts is a valid 0-9-1 message.
                    prop_assert!(leveret_protocol::properties::PropertiesView::scan(&m.properties).is_ok());
                    let _ = from_amqp091(&m.exchange, &m.routing_key, &m.properties, &m.body);
                }
            }
        }
    }
}
