//! Splits the incoming byte stream into frames.
//!
//! amq-protocol's parser neither enforces frame_max nor says which method
//! failed, so frames are delimited here and only method payloads go to it.

use super::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD};
use crate::error::AmqpError;
use bytes::{Buf, Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Method,
    Header,
    Body,
    Heartbeat,
}

#[derive(Debug)]
pub struct Frame {
    pub kind: FrameType,
    pub channel: u16,
    pub payload: Bytes,
}

/// The largest frame before connection.tune-ok has set frame_max: the
/// smallest frame_max AMQP allows, as RabbitMQ enforces it.
pub const FRAME_MIN_SIZE: u32 = 4096;

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when
/// more bytes are needed. A frame over `frame_max` is refused from its 7-byte
/// header alone, before it is buffered. Like RabbitMQ, a payload may reach
/// frame_max itself: clients that forget the 8 octets of framing are common.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > frame_max as usize {
        return Err(AmqpError::frame_error(format_args!(
            "type {}, all octets = <<>>: {{frame_too_large,{size},{}}}",
            buf[0],
            (frame_max as usize).saturating_sub(FRAME_OVERHEAD)
        )));
    }
    let kind = match buf[0] {
        FRAME_METHOD => FrameType::Method,
        FRAME_HEADER => FrameType::Header,
        FRAME_BODY => FrameType::Body,
        FRAME_HEARTBEAT => FrameType::Heartbeat,
        other => {
            return Err(AmqpError::frame_error(format_args!(
                "unknown frame type {other}"
            )))
        }
    };
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let total = size + FRAME_OVERHEAD;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if buf[total - 1] != FRAME_END {
        return Err(AmqpError::frame_error(format_args!(
            "bad frame end marker {:#04x}",
            buf[total - 1]
        )));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    if kind == FrameType::Heartbeat && !payload.is_empty() {
        return Err(AmqpError::frame_error(format_args!(
            "type {FRAME_HEARTBEAT}, {}: unknown_frame",
            octets(&payload)
        )));
    }
    Ok(Some(Frame {
        kind,
        channel,
        payload,
    }))
}

/// The start of a frame's payload as RabbitMQ quotes it in errors:
/// `all octets = <<1,2>>`, or `first 16 octets = <<"text">>` when printable.
pub fn octets(payload: &[u8]) -> String {
    let (which, shown) = match payload.len() {
        0..=16 => ("all", payload),
        _ => ("first 16", &payload[..16]),
    };
    let printable = !shown.is_empty() && shown.iter().all(|b| (32..127).contains(b));
    let inner = if printable {
        let mut text = String::from("\"");
        for &b in shown {
            if b == b'"' || b == b'\\' {
                text.push('\\');
            }
            text.push(b as char);
        }
        text.push('"');
        text
    } else {
        let numbers: Vec<String> = shown.iter().map(u8::to_string).collect();
        numbers.join(",")
    };
    format!("{which} octets = <<{inner}>>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame_bytes(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&channel.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        v.extend_from_slice(payload);
        v.push(FRAME_END);
        v
    }

    #[test]
    fn rejects_oversized_frame_from_header_alone() {
        let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0x10, 0, 0][..]);
        let err = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(err.code as u16, 501);
    }

    #[test]
    fn tolerates_payloads_up_to_frame_max() {
        let mut buf = BytesMut::from(&frame_bytes(3, 1, &[0; 4096])[..]);
        assert_eq!(
            decode_frame(&mut buf, 4096).unwrap().unwrap().payload.len(),
            4096
        );
        let mut buf = BytesMut::from(&frame_bytes(3, 1, &[0; 4097])[..]);
        let err = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(
            err.text,
            "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"
        );
    }

    #[test]
    fn heartbeat_with_payload_is_a_frame_error() {
        let mut buf = BytesMut::from(&frame_bytes(8, 0, b"abc")[..]);
        let err = decode_frame(&mut buf, 4096).unwrap_err();
        assert_eq!(
            err.text,
            "FRAME_ERROR - type 8, all octets = <<\"abc\">>: unknown_frame"
        );
        assert!(buf.is_empty(), "the bad frame is consumed");
        assert_eq!(octets(&[0]), "all octets = <<0>>");
        assert_eq!(
            octets(&[b'x'; 20]),
            "first 16 octets = <<\"xxxxxxxxxxxxxxxx\">>"
        );
    }

    #[test]
    fn rejects_bad_frame_end() {
        let mut bytes = frame_bytes(3, 1, b"abc");
        *bytes.last_mut().unwrap() = 0;
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_frame(&mut buf, 4096).unwrap_err().code as u16, 501);
    }

    proptest! {
        /// However the stream is chunked, the same frames come out.
        #[test]
        fn chunking_does_not_matter(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8), cut in 1usize..64) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                stream.extend(frame_bytes(3, i as u16, p));
            }
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(f) = decode_frame(&mut buf, 4096).unwrap() {
                    out.push(f);
                }
            }
            prop_assert_eq!(out.len(), payloads.len());
            for (i, (f, p)) in out.iter().zip(&payloads).enumerate() {
                prop_assert_eq!(f.channel, i as u16);
                prop_assert_eq!(&f.payload[..], &p[..]);
            }
        }
    }
}
