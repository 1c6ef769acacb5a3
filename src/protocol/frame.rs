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

/// Takes one complete frame off the front of `buf`, or returns `Ok(None)` when
/// more bytes are needed. A frame over `frame_max` is refused from its 7-byte
/// header alone, before it is buffered.
pub fn decode_frame(buf: &mut BytesMut, frame_max: u32) -> Result<Option<Frame>, AmqpError> {
    if buf.len() < 7 {
        return Ok(None);
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
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size + FRAME_OVERHEAD > frame_max as usize {
        return Err(AmqpError::frame_error(format_args!(
            "frame size {} exceeds negotiated frame_max {frame_max}",
            size + FRAME_OVERHEAD
        )));
    }
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
    Ok(Some(Frame {
        kind,
        channel,
        payload,
    }))
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
