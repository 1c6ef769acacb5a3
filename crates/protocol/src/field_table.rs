//! Checks client field tables in one iterative pass, before anything
//! recursive sees them.
//!
//! amq-protocol's parser recurses once per nested table or array, and so do
//! Drop, Clone, equality, encoding and JSON conversion of the values it
//! builds: a client nesting tables a thousand levels deep would overflow a
//! worker's stack and abort the broker. Every table that arrives from a
//! client (method arguments, client properties, AMQPLAIN responses, message
//! headers) is walked here first with an explicit, fixed-size stack, so depth
//! costs no native stack and is bounded by [`MAX_DEPTH`].

use std::ops::Range;

/// How many field tables and arrays may enclose one another, the outermost
/// table counted. Real clients use 2 (client properties) to 3 (x-death);
/// the debug build's parser needs about 10 KiB of stack per level, so 100
/// levels stay well inside a 2 MiB thread stack.
pub const MAX_DEPTH: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// A length runs past its container, or a value is cut short.
    Malformed,
    /// A field type octet RabbitMQ does not know.
    UnknownType(u8),
    /// Tables and arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Walks the field table at the start of `buf` (its 4-byte length included)
/// and returns how many octets it takes. Accepts exactly the field types
/// RabbitMQ's parser accepts. Neither allocates nor recurses.
pub fn check(buf: &[u8]) -> Result<usize, TableError> {
    walk(buf, |_| {})
}

/// As [`check`], calling `on_key` with the range of every table key.
pub fn walk(buf: &[u8], mut on_key: impl FnMut(Range<usize>)) -> Result<usize, TableError> {
    // The end offset of each open container; `tables` has bit i set when
    // container i is a table (entries have keys) rather than an array.
    let mut ends = [0usize; MAX_DEPTH];
    let mut tables: u128 = 1;
    let mut depth = 1;
    ends[0] = 4 + read_u32(buf, 0, buf.len())?;
    if ends[0] > buf.len() {
        return Err(TableError::Malformed);
    }
    let mut pos = 4;
    loop {
        let end = ends[depth - 1];
        if pos == end {
            depth -= 1;
            if depth == 0 {
                return Ok(pos);
            }
            continue;
        }
        if tables & (1 << (depth - 1)) != 0 {
            let n = *buf.get(pos).ok_or(TableError::Malformed)? as usize;
            let key = pos + 1..pos + 1 + n;
            if key.end >= end {
                // A key must be followed by at least its value's type octet.
                return Err(TableError::Malformed);
            }
            on_key(key.clone());
            pos = key.end;
        }
        let kind = buf[pos];
        pos += 1;
        let size = match kind {
            b'F' | b'A' => {
                let len = read_u32(buf, pos, end)?;
                if depth == MAX_DEPTH {
                    return Err(TableError::TooDeep);
                }
                pos += 4;
                if len > end - pos {
                    return Err(TableError::Malformed);
                }
                ends[depth] = pos + len;
                if kind == b'F' {
                    tables |= 1 << depth;
                } else {
                    tables &= !(1 << depth);
                }
                depth += 1;
                continue;
            }
            b'S' | b'x' => 4 + read_u32(buf, pos, end)?,
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'V' => 0,
            other => return Err(TableError::UnknownType(other)),
        };
        if size > end - pos {
            return Err(TableError::Malformed);
        }
        pos += size;
    }
}

/// A big-endian u32 at `pos`, which must end by `end`.
fn read_u32(buf: &[u8], pos: usize, end: usize) -> Result<usize, TableError> {
    if end < pos + 4 {
        return Err(TableError::Malformed);
    }
    let b = &buf[pos..pos + 4];
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

/// Where the field table starts in the arguments of a method that has one
/// (after class and method ids), or `None` for methods without a table or
/// arguments too short to reach it.
pub fn method_table_offset(class_id: u16, method_id: u16, args: &[u8]) -> Option<usize> {
    enum Skip {
        Octets(usize),
        ShortStr,
    }
    use Skip::*;
    let before: &[Skip] = match (class_id, method_id) {
        // connection.start, connection.start-ok
        (10, 10) => &[Octets(2)],
        (10, 11) => &[],
        // exchange.declare; exchange.bind, exchange.unbind, queue.bind
        (40, 10) => &[Octets(2), ShortStr, ShortStr, Octets(1)],
        (40, 30) | (40, 40) | (50, 20) => &[Octets(2), ShortStr, ShortStr, ShortStr, Octets(1)],
        // queue.declare, queue.unbind, basic.consume
        (50, 10) => &[Octets(2), ShortStr, Octets(1)],
        (50, 50) => &[Octets(2), ShortStr, ShortStr, ShortStr],
        (60, 20) => &[Octets(2), ShortStr, ShortStr, Octets(1)],
        _ => return None,
    };
    let mut pos = 0;
    for skip in before {
        pos += match skip {
            Octets(n) => *n,
            ShortStr => 1 + *args.get(pos)? as usize,
        };
    }
    (pos <= args.len()).then_some(pos)
}

/// Replaces every octet of `bytes` that is not part of valid UTF-8 with `?`,
/// keeping its length (so that the lengths around it stay true).
pub fn make_utf8(bytes: &mut [u8]) {
    let mut i = 0;
    while i < bytes.len() {
        match std::str::from_utf8(&bytes[i..]) {
            Ok(_) => return,
            Err(e) => {
                i += e.valid_up_to();
                let bad = e.error_len().unwrap_or(bytes.len() - i);
                bytes[i..i + bad].fill(b'?');
                i += bad;
            }
        }
    }
}

/// The keys of the table at the start of `buf` that are not UTF-8, which
/// amq-protocol cannot parse and RabbitMQ accepts. Empty (no allocation) in
/// the usual case; the table must already have passed [`check`].
pub fn non_utf8_keys(buf: &[u8]) -> Vec<Range<usize>> {
    let mut bad = Vec::new();
    let _ = walk(buf, |key| {
        if std::str::from_utf8(&buf[key.clone()]).is_err() {
            bad.push(key);
        }
    });
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

    fn encode(t: &FieldTable) -> Vec<u8> {
        cookie_factory::gen_simple(
            amq_protocol::types::generation::gen_field_table(t),
            Vec::new(),
        )
        .unwrap()
    }

    /// A table `{"k": {"k": ... {}}}` with `depth` tables in all.
    fn nested(depth: usize) -> Vec<u8> {
        let mut t = Vec::with_capacity(7 * depth);
        for level in 1..=depth {
            // Each inner level takes 7 octets: key "k", type 'F', length.
            t.extend_from_slice(&((7 * (depth - level)) as u32).to_be_bytes());
            if level < depth {
                t.extend_from_slice(&[1, b'k', b'F']);
            }
        }
        t
    }

    #[test]
    fn accepts_every_type_amq_protocol_writes() {
        let mut inner = FieldTable::default();
        inner.insert(
            ShortString::from("s"),
            AMQPValue::LongString(LongString::from("v")),
        );
        let mut array = FieldArray::default();
        array.push(AMQPValue::FieldTable(inner.clone()));
        array.push(AMQPValue::LongLongInt(-1));
        array.push(AMQPValue::Void);
        let mut t = FieldTable::default();
        for (k, v) in [
            ("bool", AMQPValue::Boolean(true)),
            ("i8", AMQPValue::ShortShortInt(-1)),
            ("u8", AMQPValue::ShortShortUInt(1)),
            ("i16", AMQPValue::ShortInt(-1)),
            ("u16", AMQPValue::ShortUInt(1)),
            ("i32", AMQPValue::LongInt(-1)),
            ("u32", AMQPValue::LongUInt(1)),
            ("i64", AMQPValue::LongLongInt(-1)),
            ("f32", AMQPValue::Float(1.5)),
            ("f64", AMQPValue::Double(1.5)),
            ("ts", AMQPValue::Timestamp(7)),
            ("bytes", AMQPValue::ByteArray(vec![1u8, 2, 3].into())),
            ("void", AMQPValue::Void),
            ("table", AMQPValue::FieldTable(inner)),
            ("array", AMQPValue::FieldArray(array)),
        ] {
            t.insert(ShortString::from(k), v);
        }
        let bytes = encode(&t);
        assert_eq!(check(&bytes), Ok(bytes.len()));
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"rest");
        assert_eq!(check(&longer), Ok(bytes.len()));
        for cut in 0..bytes.len() {
            assert!(check(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(nested(MAX_DEPTH).len()));
        assert_eq!(check(&nested(MAX_DEPTH + 1)), Err(TableError::TooDeep));
        // Far deeper than any stack could recurse: refused, not overflowed.
        assert_eq!(check(&nested(200_000)), Err(TableError::TooDeep));
    }

    #[test]
    fn unknown_types_and_bad_lengths_are_refused() {
        // {"k": 'Z'}, and 'U' which amq-protocol reads but RabbitMQ does not.
        assert_eq!(
            check(&[0, 0, 0, 3, 1, b'k', b'Z']),
            Err(TableError::UnknownType(b'Z'))
        );
        assert_eq!(
            check(&[0, 0, 0, 5, 1, b'k', b'U', 0, 1]),
            Err(TableError::UnknownType(b'U'))
        );
        // A nested table whose length runs past its parent.
        assert_eq!(
            check(&[0, 0, 0, 7, 1, b'k', b'F', 0, 0, 0, 9]),
            Err(TableError::Malformed)
        );
        // A key without a value.
        assert_eq!(check(&[0, 0, 0, 2, 1, b'k']), Err(TableError::Malformed));
    }

    #[test]
    fn finds_and_repairs_keys_that_are_not_utf8() {
        let mut t = vec![0, 0, 0, 8, 2, 0xff, b'k', b'I', 0, 0, 0, 1];
        let bad = non_utf8_keys(&t);
        assert_eq!(bad, vec![5..7]);
        make_utf8(&mut t[bad[0].clone()]);
        let (_, table) = amq_protocol::types::parsing::parse_field_table(&t[..]).unwrap();
        assert_eq!(table.inner().get("?k"), Some(&AMQPValue::LongInt(1)));
        assert!(non_utf8_keys(&encode(&table)).is_empty());
    }

    #[test]
    fn finds_the_table_of_each_method() {
        // queue.declare: ticket, queue "q", bits, then the table.
        let args = [0, 0, 1, b'q', 0, 0, 0, 0, 0];
        assert_eq!(method_table_offset(50, 10, &args), Some(5));
        assert_eq!(method_table_offset(50, 10, &args[..2]), None);
        assert_eq!(method_table_offset(60, 40, &args), None);
    }
}
