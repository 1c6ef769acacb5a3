//! The AMQP 1.0 type system (part 1.6 of the spec): a decoder for bytes a
//! client sent, and an encoder making RabbitMQ's encoding choices.
//!
//! Every input is hostile: lengths are checked against what remains before
//! anything is taken, a compound's count must be no larger than its size
//! (every element takes at least one octet), and nesting deeper than
//! [`MAX_DEPTH`] is refused, so the recursion is bounded and decoding is
//! linear in the input.

use super::Amqp10Error;

/// How many compounds (lists, maps, arrays, described values) may enclose one
/// another: one more than AMQP 0-9-1 allows field tables, for the described
/// section around the map that becomes the headers table. So every message
/// converts into headers a client can read, and every 0-9-1 message the
/// broker accepted reads back.
pub(crate) const MAX_DEPTH: usize = leveret_protocol::field_table::MAX_DEPTH + 1;

/// A decoded value, borrowing strings and binaries from the input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value<'a> {
    Null,
    Bool(bool),
    /// A boolean RabbitMQ writes in its two-octet form (0x56), as it writes
    /// AMQP 0-9-1 header values; decoding gives `Bool`.
    Boolean(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// decimal32, decimal64, decimal128 and char: kept as their code and
    /// octets; nothing converts them.
    Opaque(u8, &'a [u8]),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
    Binary(&'a [u8]),
    /// UTF-8 as the client sent it, not validated (RabbitMQ does not either).
    String(&'a [u8]),
    Symbol(&'a [u8]),
    List(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Array(Vec<Value<'a>>),
    Described(Box<(Value<'a>, Value<'a>)>),
}

impl<'a> Value<'a> {
    /// The octets of a string, symbol or binary.
    pub(crate) fn bytes(&self) -> Option<&'a [u8]> {
        match *self {
            Value::String(b) | Value::Symbol(b) | Value::Binary(b) => Some(b),
            _ => None,
        }
    }
}

/// Reads values from a slice, front to back.
pub(crate) struct Decoder<'a> {
    buf: &'a [u8],
    /// False while skipping: values are checked, nothing is built.
    keep: bool,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Decoder<'a> {
        Decoder { buf, keep: true }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What remains to be read.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Amqp10Error> {
        if n > self.buf.len() {
            return Err(Amqp10Error::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array_of<const N: usize>(&mut self) -> Result<[u8; N], Amqp10Error> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Amqp10Error> {
        Ok(self.array_of::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Amqp10Error> {
        Ok(u32::from_be_bytes(self.array_of()?))
    }

    /// A size (one or four octets) followed by that many octets.
    fn sized(&mut self, wide: bool) -> Result<&'a [u8], Amqp10Error> {
        let n = if wide {
            self.u32()? as usize
        } else {
            self.u8()? as usize
        };
        self.take(n)
    }

    /// One value, constructor included.
    pub(crate) fn value(&mut self) -> Result<Value<'a>, Amqp10Error> {
        self.value_at(0)
    }

    /// The start of a message section: its descriptor. The section's value
    /// follows, for [`Decoder::section_value`] or [`Decoder::skip_section`].
    pub(crate) fn section(&mut self) -> Result<Value<'a>, Amqp10Error> {
        if self.u8()? != 0 {
            return Err(Amqp10Error::Malformed("not a described value"));
        }
        self.descriptor(1)
    }

    pub(crate) fn section_value(&mut self) -> Result<Value<'a>, Amqp10Error> {
        self.value_at(1)
    }

    /// Checks a section's value without building it (a body need not be:
    /// a value's tree takes many times its octets) and returns its octets.
    pub(crate) fn skip_section(&mut self) -> Result<&'a [u8], Amqp10Error> {
        let before = self.buf;
        self.keep = false;
        let skipped = self.value_at(1);
        self.keep = true;
        skipped?;
        Ok(&before[..before.len() - self.buf.len()])
    }

    fn value_at(&mut self, depth: usize) -> Result<Value<'a>, Amqp10Error> {
        let code = self.u8()?;
        if code == 0 {
            let depth = deeper(depth)?;
            let descriptor = self.descriptor(depth)?;
            let value = self.value_at(depth)?;
            if !self.keep {
                return Ok(Value::Null);
            }
            return Ok(Value::Described(Box::new((descriptor, value))));
        }
        self.body(code, depth)
    }

    /// A descriptor: a ulong or a symbol, as the spec has them. (A compound
    /// one, copied onto every element of an array, would cost its size
    /// times the array's length.)
    fn descriptor(&mut self, depth: usize) -> Result<Value<'a>, Amqp10Error> {
        match self.value_at(depth)? {
            v @ (Value::Ulong(_) | Value::Symbol(_)) => Ok(v),
            _ => Err(Amqp10Error::Malformed("descriptor")),
        }
    }

    /// The value after its constructor `code`.
    ///
    /// Only compounds recurse, each through a function of its own: the
    /// scalars' large match stays off the recursion, so a level costs little
    /// stack even unoptimised.
    fn body(&mut self, code: u8, depth: usize) -> Result<Value<'a>, Amqp10Error> {
        match code {
            0xc0 | 0xd0 => self.list(code == 0xd0, depth),
            0xc1 | 0xd1 => self.map(code == 0xd1, depth),
            0xe0 | 0xf0 => self.array(code == 0xf0, depth),
            _ => self.scalar(code),
        }
    }

    fn scalar(&mut self, code: u8) -> Result<Value<'a>, Amqp10Error> {
        Ok(match code {
            0x40 => Value::Null,
            0x41 => Value::Bool(true),
            0x42 => Value::Bool(false),
            0x56 => match self.u8()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(Amqp10Error::Malformed("boolean")),
            },
            0x43 => Value::Uint(0),
            0x44 => Value::Ulong(0),
            0x50 => Value::Ubyte(self.u8()?),
            0x51 => Value::Byte(self.u8()? as i8),
            0x52 => Value::Uint(self.u8()?.into()),
            0x53 => Value::Ulong(self.u8()?.into()),
            0x54 => Value::Int(self.u8()? as i8 as i32),
            0x55 => Value::Long(self.u8()? as i8 as i64),
            0x60 => Value::Ushort(u16::from_be_bytes(self.array_of()?)),
            0x61 => Value::Short(i16::from_be_bytes(self.array_of()?)),
            0x70 => Value::Uint(self.u32()?),
            0x71 => Value::Int(i32::from_be_bytes(self.array_of()?)),
            0x72 => Value::Float(f32::from_be_bytes(self.array_of()?)),
            0x80 => Value::Ulong(u64::from_be_bytes(self.array_of()?)),
            0x81 => Value::Long(i64::from_be_bytes(self.array_of()?)),
            0x82 => Value::Double(f64::from_be_bytes(self.array_of()?)),
            0x83 => Value::Timestamp(i64::from_be_bytes(self.array_of()?)),
            0x98 => Value::Uuid(self.array_of()?),
            0x73 | 0x74 => Value::Opaque(code, self.take(4)?),
            0x84 => Value::Opaque(code, self.take(8)?),
            0x94 => Value::Opaque(code, self.take(16)?),
            0xa0 | 0xb0 => Value::Binary(self.sized(code == 0xb0)?),
            0xa1 | 0xb1 => Value::String(self.sized(code == 0xb1)?),
            0xa3 | 0xb3 => Value::Symbol(self.sized(code == 0xb3)?),
            0x45 => Value::List(Vec::new()),
            other => return Err(Amqp10Error::UnknownType(other)),
        })
    }

    fn list(&mut self, wide: bool, depth: usize) -> Result<Value<'a>, Amqp10Error> {
        let (count, mut items) = self.compound(wide, depth)?;
        // Bounded by the input: every element takes an octet.
        let mut values = Vec::with_capacity(if self.keep { count } else { 0 });
        for _ in 0..count {
            let value = items.value_at(depth + 1)?;
            if self.keep {
                values.push(value);
            }
        }
        items.finish(Value::List(values))
    }

    fn map(&mut self, wide: bool, depth: usize) -> Result<Value<'a>, Amqp10Error> {
        let (count, mut items) = self.compound(wide, depth)?;
        if count % 2 != 0 {
            return Err(Amqp10Error::Malformed("odd map count"));
        }
        let mut pairs = Vec::with_capacity(if self.keep { count / 2 } else { 0 });
        for _ in 0..count / 2 {
            let pair = (items.value_at(depth + 1)?, items.value_at(depth + 1)?);
            if self.keep {
                pairs.push(pair);
            }
        }
        items.finish(Value::Map(pairs))
    }

    fn array(&mut self, wide: bool, depth: usize) -> Result<Value<'a>, Amqp10Error> {
        let (count, mut items) = self.compound(wide, depth)?;
        let depth = depth + 1;
        let mut ctor = items.u8()?;
        let mut descriptor = None;
        if ctor == 0 {
            descriptor = Some(items.descriptor(depth)?);
            ctor = items.u8()?;
        }
        let mut values = Vec::with_capacity(if self.keep { count } else { 0 });
        for _ in 0..count {
            // As RabbitMQ reads them: an element of a constant type (null,
            // true, 0...) takes one octet, so every element costs input.
            if (0x40..=0x45).contains(&ctor) {
                items.u8()?;
            }
            let value = items.body(ctor, depth)?;
            if !self.keep {
                continue;
            }
            values.push(match &descriptor {
                Some(d) => Value::Described(Box::new((d.clone(), value))),
                None => value,
            });
        }
        items.finish(Value::Array(values))
    }

    /// `value`, the compound these items held, if they were all of it.
    fn finish(&self, value: Value<'a>) -> Result<Value<'a>, Amqp10Error> {
        if !self.is_empty() {
            return Err(Amqp10Error::Malformed("compound size"));
        }
        Ok(value)
    }

    /// The count and contents of a list, map or array, checked before any
    /// element is read.
    fn compound(&mut self, wide: bool, depth: usize) -> Result<(usize, Decoder<'a>), Amqp10Error> {
        deeper(depth)?;
        let mut items = Decoder {
            buf: self.sized(wide)?,
            keep: self.keep,
        };
        let count = if wide {
            items.u32()? as usize
        } else {
            items.u8()? as usize
        };
        if count > items.buf.len() {
            return Err(Amqp10Error::Malformed("count larger than size"));
        }
        Ok((count, items))
    }
}

fn deeper(depth: usize) -> Result<usize, Amqp10Error> {
    if depth + 1 > MAX_DEPTH {
        return Err(Amqp10Error::TooDeep);
    }
    Ok(depth + 1)
}

/// Appends the encoding of `value` as RabbitMQ's `amqp10_binary_generator`
/// writes it: the smallest form of uint, ulong, int and long, the one-octet
/// size of strings and binaries under 255 octets, symbols always with a
/// one-octet size, and the short form of lists and maps when the count is
/// under 255 and the size under 256.
pub(crate) fn encode(out: &mut Vec<u8>, value: &Value) {
    match *value {
        Value::Null => out.push(0x40),
        Value::Bool(true) => out.push(0x41),
        Value::Bool(false) => out.push(0x42),
        Value::Boolean(v) => out.extend_from_slice(&[0x56, v as u8]),
        Value::Ubyte(v) => out.extend_from_slice(&[0x50, v]),
        Value::Ushort(v) => {
            out.push(0x60);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Uint(0) => out.push(0x43),
        Value::Uint(v) if v < 256 => out.extend_from_slice(&[0x52, v as u8]),
        Value::Uint(v) => {
            out.push(0x70);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Ulong(0) => out.push(0x44),
        Value::Ulong(v) if v < 256 => out.extend_from_slice(&[0x53, v as u8]),
        Value::Ulong(v) => {
            out.push(0x80);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Byte(v) => out.extend_from_slice(&[0x51, v as u8]),
        Value::Short(v) => {
            out.push(0x61);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Int(v) if (-128..128).contains(&v) => out.extend_from_slice(&[0x54, v as u8]),
        Value::Int(v) => {
            out.push(0x71);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Long(v) if (-128..128).contains(&v) => out.extend_from_slice(&[0x55, v as u8]),
        Value::Long(v) => {
            out.push(0x81);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Float(v) => {
            out.push(0x72);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Double(v) => {
            out.push(0x82);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Opaque(code, bytes) => {
            out.push(code);
            out.extend_from_slice(bytes);
        }
        Value::Timestamp(v) => {
            out.push(0x83);
            out.extend_from_slice(&v.to_be_bytes());
        }
        Value::Uuid(v) => {
            out.push(0x98);
            out.extend_from_slice(&v);
        }
        Value::Binary(b) => variable(out, 0xa0, b),
        Value::String(b) => variable(out, 0xa1, b),
        Value::Symbol(b) => {
            // RabbitMQ writes sym8 whatever the length; symbols here are
            // AMQP 0-9-1 short strings, under 256 octets.
            out.extend_from_slice(&[0xa3, b.len().min(255) as u8]);
            out.extend_from_slice(&b[..b.len().min(255)]);
        }
        Value::List(ref items) if items.is_empty() => out.push(0x45),
        Value::List(ref items) => compound(out, 0xc0, items.len(), |out| {
            items.iter().for_each(|v| encode(out, v))
        }),
        Value::Map(ref pairs) => compound(out, 0xc1, pairs.len() * 2, |out| {
            for (k, v) in pairs {
                encode(out, k);
                encode(out, v);
            }
        }),
        // Arrays are only decoded (from a client), never produced; write
        // them as the list they convert to.
        Value::Array(ref items) => encode(out, &Value::List(items.clone())),
        Value::Described(ref pair) => {
            out.push(0);
            encode(out, &pair.0);
            encode(out, &pair.1);
        }
    }
}

/// A string or binary: code `short` (0xa0, 0xa1) under 255 octets, else
/// the four-octet form (`short + 0x10`).
fn variable(out: &mut Vec<u8>, short: u8, bytes: &[u8]) {
    if bytes.len() < 255 {
        out.extend_from_slice(&[short, bytes.len() as u8]);
    } else {
        out.push(short + 0x10);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(bytes);
}

/// A list (0xc0) or map (0xc1) of `count` elements written by `items`: the
/// large form is written first, then moved into the short one if it fits.
fn compound(out: &mut Vec<u8>, short: u8, count: usize, items: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 9]);
    items(out);
    let size = out.len() - start - 9;
    if count < 255 && size + 1 < 256 {
        out[start..start + 3].copy_from_slice(&[short, size as u8 + 1, count as u8]);
        out.copy_within(start + 9.., start + 3);
        out.truncate(out.len() - 6);
    } else {
        out[start] = short + 0x10;
        out[start + 1..start + 5].copy_from_slice(&(size as u32 + 4).to_be_bytes());
        out[start + 5..start + 9].copy_from_slice(&(count as u32).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(bytes: &[u8]) -> Result<Value<'_>, Amqp10Error> {
        let mut d = Decoder::new(bytes);
        let v = d.value()?;
        assert!(d.is_empty(), "left over: {:?}", d.rest());
        Ok(v)
    }

    fn encoded(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, v);
        out
    }

    #[test]
    fn every_type_round_trips() {
        let long = vec![b'a'; 300];
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Ubyte(200),
            Value::Ushort(65_000),
            Value::Uint(0),
            Value::Uint(255),
            Value::Uint(256),
            Value::Uint(u32::MAX),
            Value::Ulong(0),
            Value::Ulong(7),
            Value::Ulong(u64::MAX),
            Value::Byte(-5),
            Value::Short(-300),
            Value::Int(-128),
            Value::Int(127),
            Value::Int(-129),
            Value::Int(i32::MIN),
            Value::Long(-1),
            Value::Long(i64::MAX),
            Value::Float(1.5),
            Value::Double(-2.25),
            Value::Timestamp(1_700_000_000_123),
            Value::Uuid([7; 16]),
            Value::Opaque(0x73, &[0, 0, 0, 0x41]),
            Value::Opaque(0x94, &[1; 16]),
            Value::Binary(b""),
            Value::Binary(&long[..254]),
            Value::Binary(&long[..255]),
            Value::String(b"caf\xc3\xa9"),
            Value::String(&long),
            Value::Symbol(b"x-opt"),
            Value::List(vec![]),
            Value::List(vec![Value::Null, Value::String(b"s")]),
            Value::List(vec![Value::Ubyte(1); 255]),
            Value::Map(vec![(Value::Symbol(b"k"), Value::Binary(&long))]),
            Value::Map(vec![(Value::Symbol(b"k"), Value::Map(vec![]))]),
            Value::Described(Box::new((Value::Ulong(0x75), Value::Binary(b"x")))),
        ];
        for v in values {
            assert_eq!(decode(&encoded(&v)), Ok(v.clone()), "{v:?}");
        }
    }

    #[test]
    fn encodes_as_rabbitmq_does() {
        assert_eq!(encoded(&Value::Uint(0)), [0x43]);
        assert_eq!(encoded(&Value::Uint(5)), [0x52, 5]);
        assert_eq!(encoded(&Value::Long(-1)), [0x55, 0xff]);
        assert_eq!(
            encoded(&Value::String(&[b'a'; 255]))[..5],
            [0xb1, 0, 0, 0, 255]
        );
        let list = encoded(&Value::List(vec![Value::Bool(false), Value::Null]));
        assert_eq!(list, [0xc0, 3, 2, 0x42, 0x40]);
        // 254 elements of 1 octet: size 255 with the count, still short.
        let list = encoded(&Value::List(vec![Value::Null; 254]));
        assert_eq!(list[..3], [0xc0, 255, 254]);
        let list = encoded(&Value::List(vec![Value::Null; 255]));
        assert_eq!(list[..9], [0xd0, 0, 0, 1, 3, 0, 0, 0, 255]);
    }

    #[test]
    fn reads_every_width_of_the_same_value() {
        for bytes in [&[0x43][..], &[0x52, 0], &[0x70, 0, 0, 0, 0]] {
            assert_eq!(decode(bytes), Ok(Value::Uint(0)));
        }
        assert_eq!(decode(&[0x56, 1]), Ok(Value::Bool(true)));
        assert_eq!(
            decode(&[0xd1, 0, 0, 0, 8, 0, 0, 0, 2, 0xa3, 1, b'k', 0x41]),
            Ok(Value::Map(vec![(Value::Symbol(b"k"), Value::Bool(true))]))
        );
        // An array of two sym8: constructor once, then the elements.
        assert_eq!(
            decode(&[0xe0, 6, 2, 0xa3, 1, b'a', 1, b'b']),
            Ok(Value::Array(vec![Value::Symbol(b"a"), Value::Symbol(b"b")]))
        );
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        assert_eq!(decode(&[0x56, 2]), Err(Amqp10Error::Malformed("boolean")));
        assert_eq!(decode(&[0x99]), Err(Amqp10Error::UnknownType(0x99)));
        // A list whose count exceeds its size, and one whose size exceeds its count.
        assert!(decode(&[0xc0, 1, 200]).is_err());
        assert!(decode(&[0xc0, 3, 1, 0x40, 0x40]).is_err());
        // A map with an odd count.
        assert!(decode(&[0xc1, 2, 1, 0x40]).is_err());
        // Four gigabytes announced, nothing there.
        assert_eq!(
            decode(&[0xb0, 0xff, 0xff, 0xff, 0xff]),
            Err(Amqp10Error::Truncated)
        );
        assert_eq!(
            decode(&[0xd0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(Amqp10Error::Truncated)
        );
        // An array of 255 nulls in three octets.
        assert!(decode(&[0xe0, 2, 255, 0x40]).is_err());
    }

    /// Any value the encoder writes (bar the forms it never produces).
    fn any_value() -> impl Strategy<Value = Value<'static>> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u8>().prop_map(Value::Ubyte),
            any::<u16>().prop_map(Value::Ushort),
            any::<u32>().prop_map(Value::Uint),
            any::<u64>().prop_map(Value::Ulong),
            any::<i8>().prop_map(Value::Byte),
            any::<i16>().prop_map(Value::Short),
            any::<i32>().prop_map(Value::Int),
            any::<i64>().prop_map(Value::Long),
            (-1e30f32..1e30).prop_map(Value::Float),
            (-1e300f64..1e300).prop_map(Value::Double),
            any::<i64>().prop_map(Value::Timestamp),
            any::<[u8; 16]>().prop_map(Value::Uuid),
            prop::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| Value::Binary(Box::leak(b.into_boxed_slice()))),
            "\\PC{0,80}".prop_map(|s| Value::String(Box::leak(s.into_bytes().into_boxed_slice()))),
            "[a-z:-]{0,40}"
                .prop_map(|s| Value::Symbol(Box::leak(s.into_bytes().into_boxed_slice()))),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                prop::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
                (any::<u64>(), inner)
                    .prop_map(|(d, v)| Value::Described(Box::new((Value::Ulong(d), v)))),
            ]
        })
    }

    proptest! {
        #[test]
        fn anything_encoded_decodes_to_itself(v in any_value()) {
            let bytes = encoded(&v);
            prop_assert_eq!(decode(&bytes), Ok(v));
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let v = Value::Map(vec![
            (
                Value::Symbol(b"k"),
                Value::List(vec![Value::Long(1 << 40), Value::Uuid([1; 16])]),
            ),
            (
                Value::String(b"s"),
                Value::Described(Box::new((Value::Ulong(1), Value::Null))),
            ),
        ]);
        let bytes = encoded(&v);
        for cut in 0..bytes.len() {
            assert!(Decoder::new(&bytes[..cut]).value().is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        // Lists nested ever deeper, each a list8 around the next.
        let nested = |depth: usize| {
            let mut v = Value::List(vec![Value::Null]);
            for _ in 1..depth {
                v = Value::List(vec![v]);
            }
            encoded(&v)
        };
        assert!(decode(&nested(MAX_DEPTH)).is_ok());
        assert_eq!(decode(&nested(MAX_DEPTH + 1)), Err(Amqp10Error::TooDeep));
        // Described values nest too: a million descriptors is refused, not a
        // stack overflow.
        let deep = vec![0u8; 1_000_000];
        assert_eq!(Decoder::new(&deep).value(), Err(Amqp10Error::TooDeep));
        // A descriptor must be a ulong or a symbol.
        assert_eq!(
            decode(&[0, 0x45, 0x40]),
            Err(Amqp10Error::Malformed("descriptor"))
        );
        assert!(decode(&[0, 0x53, 0x75, 0xa0, 0]).is_ok());
        assert!(decode(&[0, 0xa3, 1, b'd', 0x40]).is_ok());
        let mut lists = Vec::new();
        for _ in 0..200_000 {
            lists.extend_from_slice(&[0xd0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1]);
        }
        assert!(Decoder::new(&lists).value().is_err());
    }
}
