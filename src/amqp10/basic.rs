//! AMQP 0-9-1 basic properties as values: read from and written to the raw
//! content-header bytes (property flags onwards), header tables included,
//! with RabbitMQ's field types.
//!
//! The broker otherwise passes these bytes through untouched
//! (`protocol::properties`); converting to and from AMQP 1.0 needs every
//! property and every header value.

use leveret_protocol::field_table::MAX_DEPTH;
use std::borrow::Cow;

/// A field table: keys in their order, duplicates kept.
pub(crate) type Table<'a> = Vec<(Cow<'a, [u8]>, Field<'a>)>;

/// A field-table value, as RabbitMQ types them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field<'a> {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    /// 'S', a long string.
    Str(Cow<'a, [u8]>),
    /// 'x', a byte array.
    Bytes(&'a [u8]),
    /// Seconds since the epoch.
    Timestamp(u64),
    Void,
    Array(Vec<Field<'a>>),
    Table(Table<'a>),
}

type ShortStr<'a> = Option<Cow<'a, [u8]>>;

/// Every basic property; `None` is absent.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Basic<'a> {
    pub(crate) content_type: ShortStr<'a>,
    pub(crate) content_encoding: ShortStr<'a>,
    pub(crate) headers: Option<Table<'a>>,
    pub(crate) delivery_mode: Option<u8>,
    pub(crate) priority: Option<u8>,
    pub(crate) correlation_id: ShortStr<'a>,
    pub(crate) reply_to: ShortStr<'a>,
    pub(crate) expiration: ShortStr<'a>,
    pub(crate) message_id: ShortStr<'a>,
    pub(crate) timestamp: Option<u64>,
    pub(crate) kind: ShortStr<'a>,
    pub(crate) user_id: ShortStr<'a>,
    pub(crate) app_id: ShortStr<'a>,
    pub(crate) cluster_id: ShortStr<'a>,
}

/// The properties cannot be read (cut short, an unknown field type, or
/// tables nested too deep).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed;

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn short(&mut self) -> Result<Cow<'a, [u8]>, Malformed> {
        let n = self.u8()? as usize;
        Ok(Cow::Borrowed(self.take(n)?))
    }

    fn long(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A table (its length first); `depth` tables and arrays enclose it.
    fn table(&mut self, depth: usize) -> Result<Table<'a>, Malformed> {
        if depth >= MAX_DEPTH {
            return Err(Malformed);
        }
        let mut inner = Reader { buf: self.long()? };
        let mut table = Vec::new();
        while !inner.buf.is_empty() {
            let key = inner.short()?;
            table.push((key, inner.field(depth + 1)?));
        }
        Ok(table)
    }

    fn field(&mut self, depth: usize) -> Result<Field<'a>, Malformed> {
        Ok(match self.u8()? {
            b't' => Field::Bool(self.u8()? != 0),
            b'b' => Field::I8(self.u8()? as i8),
            b'B' => Field::U8(self.u8()?),
            b's' => Field::I16(i16::from_be_bytes(self.array()?)),
            b'u' => Field::U16(u16::from_be_bytes(self.array()?)),
            b'I' => Field::I32(i32::from_be_bytes(self.array()?)),
            b'i' => Field::U32(self.u32()?),
            b'l' => Field::I64(i64::from_be_bytes(self.array()?)),
            b'f' => Field::F32(f32::from_be_bytes(self.array()?)),
            b'd' => Field::F64(f64::from_be_bytes(self.array()?)),
            b'D' => Field::Decimal(self.u8()?, self.u32()?),
            b'S' => Field::Str(Cow::Borrowed(self.long()?)),
            b'x' => Field::Bytes(self.long()?),
            b'T' => Field::Timestamp(u64::from_be_bytes(self.array()?)),
            b'V' => Field::Void,
            b'F' => Field::Table(self.table(depth)?),
            b'A' => {
                if depth >= MAX_DEPTH {
                    return Err(Malformed);
                }
                let mut inner = Reader { buf: self.long()? };
                let mut items = Vec::new();
                while !inner.buf.is_empty() {
                    items.push(inner.field(depth + 1)?);
                }
                Field::Array(items)
            }
            _ => return Err(Malformed),
        })
    }
}

impl<'a> Basic<'a> {
    /// Reads raw properties, flags onwards.
    pub(crate) fn parse(raw: &'a [u8]) -> Result<Basic<'a>, Malformed> {
        let mut r = Reader { buf: raw };
        let flags = u16::from_be_bytes(r.array()?);
        let mut more = flags & 1 != 0;
        while more {
            more = u16::from_be_bytes(r.array()?) & 1 != 0;
        }
        let mut b = Basic::default();
        let has = |bit: u16| flags & (1 << bit) != 0;
        if has(15) {
            b.content_type = Some(r.short()?);
        }
        if has(14) {
            b.content_encoding = Some(r.short()?);
        }
        if has(13) {
            b.headers = Some(r.table(0)?);
        }
        if has(12) {
            b.delivery_mode = Some(r.u8()?);
        }
        if has(11) {
            b.priority = Some(r.u8()?);
        }
        if has(10) {
            b.correlation_id = Some(r.short()?);
        }
        if has(9) {
            b.reply_to = Some(r.short()?);
        }
        if has(8) {
            b.expiration = Some(r.short()?);
        }
        if has(7) {
            b.message_id = Some(r.short()?);
        }
        if has(6) {
            b.timestamp = Some(u64::from_be_bytes(r.array()?));
        }
        if has(5) {
            b.kind = Some(r.short()?);
        }
        if has(4) {
            b.user_id = Some(r.short()?);
        }
        if has(3) {
            b.app_id = Some(r.short()?);
        }
        if has(2) {
            b.cluster_id = Some(r.short()?);
        }
        Ok(b)
    }

    /// The raw properties: flags, then each property present.
    pub(crate) fn write(&self) -> Vec<u8> {
        let mut w = Writer {
            out: vec![0, 0],
            flags: 0,
        };
        w.short(15, &self.content_type);
        w.short(14, &self.content_encoding);
        if let Some(headers) = &self.headers {
            w.flags |= 1 << 13;
            write_table(&mut w.out, headers);
        }
        w.octet(12, self.delivery_mode);
        w.octet(11, self.priority);
        w.short(10, &self.correlation_id);
        w.short(9, &self.reply_to);
        w.short(8, &self.expiration);
        w.short(7, &self.message_id);
        if let Some(ts) = self.timestamp {
            w.flags |= 1 << 6;
            w.out.extend_from_slice(&ts.to_be_bytes());
        }
        w.short(5, &self.kind);
        w.short(4, &self.user_id);
        w.short(3, &self.app_id);
        w.short(2, &self.cluster_id);
        let mut out = w.out;
        out[..2].copy_from_slice(&w.flags.to_be_bytes());
        out
    }
}

struct Writer {
    out: Vec<u8>,
    flags: u16,
}

impl Writer {
    fn short(&mut self, bit: u16, s: &ShortStr) {
        if let Some(s) = s {
            self.flags |= 1 << bit;
            write_short(&mut self.out, s);
        }
    }

    fn octet(&mut self, bit: u16, v: Option<u8>) {
        if let Some(v) = v {
            self.flags |= 1 << bit;
            self.out.push(v);
        }
    }
}

fn write_short(out: &mut Vec<u8>, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn write_long(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Writes `f(out)` preceded by its length.
fn with_length(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    f(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn write_table(out: &mut Vec<u8>, table: &Table) {
    with_length(out, |out| {
        for (key, value) in table {
            write_short(out, key);
            write_field(out, value);
        }
    });
}

fn write_field(out: &mut Vec<u8>, field: &Field) {
    match field {
        Field::Bool(v) => out.extend_from_slice(&[b't', *v as u8]),
        Field::I8(v) => out.extend_from_slice(&[b'b', *v as u8]),
        Field::U8(v) => out.extend_from_slice(&[b'B', *v]),
        Field::I16(v) => {
            out.push(b's');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::U16(v) => {
            out.push(b'u');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::I32(v) => {
            out.push(b'I');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::U32(v) => {
            out.push(b'i');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::I64(v) => {
            out.push(b'l');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::F32(v) => {
            out.push(b'f');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::F64(v) => {
            out.push(b'd');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::Decimal(scale, v) => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::Str(s) => {
            out.push(b'S');
            write_long(out, s);
        }
        Field::Bytes(s) => {
            out.push(b'x');
            write_long(out, s);
        }
        Field::Timestamp(v) => {
            out.push(b'T');
            out.extend_from_slice(&v.to_be_bytes());
        }
        Field::Void => out.push(b'V'),
        Field::Array(items) => {
            out.push(b'A');
            with_length(out, |out| items.iter().for_each(|f| write_field(out, f)));
        }
        Field::Table(table) => {
            out.push(b'F');
            write_table(out, table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leveret_protocol::properties::PropertiesView;

    fn every_field() -> Table<'static> {
        let inner: Table = vec![(Cow::Borrowed(b"k"), Field::Str(Cow::Borrowed(b"v")))];
        [
            Field::Bool(true),
            Field::I8(-1),
            Field::U8(255),
            Field::I16(-2),
            Field::U16(65535),
            Field::I32(-3),
            Field::U32(u32::MAX),
            Field::I64(i64::MIN),
            Field::F32(1.5),
            Field::F64(-0.25),
            Field::Decimal(2, 12345),
            Field::Str(Cow::Borrowed(b"long string")),
            Field::Bytes(b"\x00\xff"),
            Field::Timestamp(1_700_000_000),
            Field::Void,
            Field::Array(vec![Field::I32(1), Field::Table(inner.clone())]),
            Field::Table(inner),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, f)| (Cow::Owned(format!("h{i}").into_bytes()), f))
        .collect()
    }

    #[test]
    fn every_property_round_trips() {
        let s = |v: &'static [u8]| Some(Cow::Borrowed(v));
        let all = Basic {
            content_type: s(b"text/plain"),
            content_encoding: s(b"gzip"),
            headers: Some(every_field()),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: s(b"c"),
            reply_to: s(b"r"),
            expiration: s(b"1000"),
            message_id: s(b"m"),
            timestamp: Some(1_700_000_000),
            kind: s(b"t"),
            user_id: s(b"guest"),
            app_id: s(b"a"),
            cluster_id: s(b"cl"),
        };
        let raw = all.write();
        // What the broker's own view accepts from a publisher.
        assert!(PropertiesView::scan(&raw).is_ok());
        assert_eq!(Basic::parse(&raw), Ok(all));
        for cut in 0..raw.len() {
            assert!(Basic::parse(&raw[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(Basic::default().write(), [0, 0]);
        assert_eq!(Basic::parse(&[0, 0]), Ok(Basic::default()));
    }

    #[test]
    fn reads_what_amq_protocol_writes() {
        use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
        let props = AMQPProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(1)
            .with_timestamp(42)
            .with_app_id("app".into());
        let raw = cookie_factory::gen_simple(gen_properties(&props), Vec::new()).unwrap();
        let b = Basic::parse(&raw).unwrap();
        assert_eq!(b.content_type.as_deref(), Some(&b"application/json"[..]));
        assert_eq!(b.delivery_mode, Some(1));
        assert_eq!(b.timestamp, Some(42));
        assert_eq!(b.app_id.as_deref(), Some(&b"app"[..]));
        assert_eq!(b.write(), raw);
    }

    #[test]
    fn deep_tables_are_refused_without_recursing_past_the_limit() {
        // headers = {"k": {"k": ... }} nested far deeper than allowed.
        let depth = 100_000;
        let mut table = Vec::new();
        for level in 1..=depth {
            table.extend_from_slice(&((7 * (depth - level)) as u32).to_be_bytes());
            if level < depth {
                table.extend_from_slice(&[1, b'k', b'F']);
            }
        }
        let mut raw = vec![0x20, 0];
        raw.extend_from_slice(&table);
        assert_eq!(Basic::parse(&raw), Err(Malformed));
    }
}
