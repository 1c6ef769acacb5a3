//! Decoding method frames. The per-message methods (publish, ack, nack,
//! reject) are read by hand without allocating beyond the two names of a
//! publish; everything else goes through amq-protocol.

use super::field_table::{self, TableError};
use crate::error::AmqpError;
use amq_protocol::protocol::AMQPClass;
use std::borrow::Cow;

#[derive(Debug)]
pub enum Method {
    Publish(Publish),
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        delivery_tag: u64,
        requeue: bool,
    },
    Other(Box<AMQPClass>),
}

#[derive(Debug, Clone)]
pub struct Publish {
    pub exchange: String,
    pub routing_key: String,
    pub mandatory: bool,
    pub immediate: bool,
}

/// Class and method ids of a method payload, for error replies even when the
/// arguments do not parse.
pub fn method_ids(payload: &[u8]) -> (u16, u16) {
    if payload.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    )
}

pub fn decode_method(payload: &[u8]) -> Result<Method, AmqpError> {
    let (class_id, method_id) = method_ids(payload);
    if payload.len() < 4 {
        return Err(AmqpError::frame_error("method frame too short"));
    }
    let args = &payload[4..];
    let syntax = || {
        AmqpError::frame_error(format_args!(
            "cannot decode arguments of method {class_id}.{method_id}"
        ))
        .on_method(class_id, method_id)
    };
    match (class_id, method_id) {
        (60, 40) => {
            let mut r = Reader::new(args);
            r.u16().ok_or_else(syntax)?;
            let exchange = r.short_str().ok_or_else(syntax)?;
            let routing_key = r.short_str().ok_or_else(syntax)?;
            let bits = r.u8().ok_or_else(syntax)?;
            if !r.is_empty() {
                return Err(syntax());
            }
            Ok(Method::Publish(Publish {
                exchange,
                routing_key,
                mandatory: bits & 1 != 0,
                immediate: bits & 2 != 0,
            }))
        }
        (60, 80) | (60, 90) | (60, 120) => {
            let mut r = Reader::new(args);
            let delivery_tag = r.u64().ok_or_else(syntax)?;
            let bits = r.u8().ok_or_else(syntax)?;
            if !r.is_empty() {
                return Err(syntax());
            }
            Ok(match method_id {
                80 => Method::Ack {
                    delivery_tag,
                    multiple: bits & 1 != 0,
                },
                90 => Method::Reject {
                    delivery_tag,
                    requeue: bits & 1 != 0,
                },
                _ => Method::Nack {
                    delivery_tag,
                    multiple: bits & 1 != 0,
                    requeue: bits & 2 != 0,
                },
            })
        }
        _ => match amq_protocol::protocol::parse_class(&*checked_tables(payload)?) {
            Ok((&[], class)) => Ok(Method::Other(Box::new(class))),
            Ok(_) => Err(syntax()),
            Err(_) if !is_known_method(class_id, method_id) => Err(AmqpError::command_invalid(
                format_args!("unknown method {class_id}.{method_id}"),
            )
            .on_method(class_id, method_id)),
            Err(_) => Err(syntax()),
        },
    }
}

/// The payload with its field table (if the method has one) checked before
/// amq-protocol's recursive parser sees it, and keys that are not UTF-8
/// (which RabbitMQ accepts and amq-protocol cannot read) made so, each bad
/// octet replaced by `?`.
fn checked_tables(payload: &[u8]) -> Result<Cow<'_, [u8]>, AmqpError> {
    let (class_id, method_id) = method_ids(payload);
    let args = &payload[4..];
    let Some(offset) = field_table::method_table_offset(class_id, method_id, args) else {
        return Ok(Cow::Borrowed(payload));
    };
    let table = &args[offset..];
    match field_table::check(table) {
        Ok(_) => {}
        Err(TableError::TooDeep) => {
            return Err(AmqpError::frame_error(format_args!(
                "field tables nested more than {} levels deep",
                field_table::MAX_DEPTH
            ))
            .on_method(class_id, method_id))
        }
        Err(_) => {
            return Err(AmqpError::frame_error(format_args!(
                "cannot decode arguments of method {class_id}.{method_id}"
            ))
            .on_method(class_id, method_id))
        }
    }
    let bad_keys = field_table::non_utf8_keys(table);
    if bad_keys.is_empty() {
        return Ok(Cow::Borrowed(payload));
    }
    let mut fixed = payload.to_vec();
    let start = 4 + offset;
    for key in bad_keys {
        field_table::make_utf8(&mut fixed[start + key.start..start + key.end]);
    }
    Ok(Cow::Owned(fixed))
}

fn is_known_method(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

/// A bounds-checked big-endian reader over a method's arguments.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    pub fn short_bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    pub fn short_str(&mut self) -> Option<String> {
        self.short_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_publish_by_hand() {
        let mut p = vec![0, 60, 0, 40, 0, 0, 2, b'e', b'x', 1, b'k', 3];
        let Method::Publish(publish) = decode_method(&p).unwrap() else {
            panic!("not a publish")
        };
        assert_eq!(publish.exchange, "ex");
        assert_eq!(publish.routing_key, "k");
        assert!(publish.mandatory && publish.immediate);
        p.truncate(8);
        assert_eq!(decode_method(&p).unwrap_err().code as u16, 501);
    }

    #[test]
    fn unknown_method_is_command_invalid() {
        let err = decode_method(&[0, 60, 0, 99]).unwrap_err();
        assert_eq!(err.code as u16, 503);
        assert_eq!((err.class_id, err.method_id), (60, 99));
    }
}
