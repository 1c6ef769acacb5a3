//! Frame encoders writing straight into an outbox buffer.
//!
//! Deliver, get-ok, return, content header and body frames are written by
//! hand: they are sent once per message and must not allocate. Other
//! methods go through amq-protocol's generator.

use super::{
    CLASS_BASIC, FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_OVERHEAD,
};
use amq_protocol::protocol::{gen_class, AMQPClass};
use bytes::{BufMut, BytesMut};

/// Writes a method frame for any method, through amq-protocol.
pub fn method(buf: &mut BytesMut, channel: u16, class: &AMQPClass) {
    let payload = cookie_factory::gen_simple(gen_class(class), Vec::with_capacity(64))
        .expect("encoding into a Vec cannot fail");
    buf.reserve(payload.len() + FRAME_OVERHEAD);
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    buf.put_u32(payload.len() as u32);
    buf.extend_from_slice(&payload);
    buf.put_u8(FRAME_END);
}

pub fn heartbeat(buf: &mut BytesMut) {
    buf.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Starts a method frame and returns the offset of its size field.
fn begin_method(buf: &mut BytesMut, channel: u16, class_id: u16, method_id: u16) -> usize {
    buf.put_u8(FRAME_METHOD);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    buf.put_u16(class_id);
    buf.put_u16(method_id);
    size_at
}

fn end_frame(buf: &mut BytesMut, size_at: usize) {
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

fn short_str(buf: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    buf.put_u8(s.len() as u8);
    buf.extend_from_slice(s);
}

pub fn basic_deliver(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_method(buf, channel, CLASS_BASIC, 60);
    short_str(buf, consumer_tag.as_bytes());
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    short_str(buf, exchange.as_bytes());
    short_str(buf, routing_key.as_bytes());
    end_frame(buf, at);
}

pub fn basic_get_ok(
    buf: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    message_count: u32,
) {
    let at = begin_method(buf, channel, CLASS_BASIC, 71);
    buf.put_u64(delivery_tag);
    buf.put_u8(redelivered as u8);
    short_str(buf, exchange.as_bytes());
    short_str(buf, routing_key.as_bytes());
    buf.put_u32(message_count);
    end_frame(buf, at);
}

pub fn basic_return(
    buf: &mut BytesMut,
    channel: u16,
    reply_code: u16,
    reply_text: &str,
    exchange: &str,
    routing_key: &str,
) {
    let at = begin_method(buf, channel, CLASS_BASIC, 50);
    buf.put_u16(reply_code);
    short_str(buf, reply_text.as_bytes());
    short_str(buf, exchange.as_bytes());
    short_str(buf, routing_key.as_bytes());
    end_frame(buf, at);
}

/// A client's basic.publish (mandatory and immediate off).
pub fn basic_publish(buf: &mut BytesMut, channel: u16, exchange: &str, routing_key: &str) {
    let at = begin_method(buf, channel, CLASS_BASIC, 40);
    buf.put_u16(0);
    short_str(buf, exchange.as_bytes());
    short_str(buf, routing_key.as_bytes());
    buf.put_u8(0);
    end_frame(buf, at);
}

pub fn basic_ack(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    let at = begin_method(buf, channel, CLASS_BASIC, 80);
    buf.put_u64(delivery_tag);
    buf.put_u8(multiple as u8);
    end_frame(buf, at);
}

pub fn basic_nack(buf: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    let at = begin_method(buf, channel, CLASS_BASIC, 120);
    buf.put_u64(delivery_tag);
    buf.put_u8(multiple as u8);
    end_frame(buf, at);
}

/// Writes the content header and body frames of a message, splitting the
/// body so that no frame exceeds `frame_max`.
pub fn content(buf: &mut BytesMut, channel: u16, properties: &[u8], body: &[u8], frame_max: u32) {
    let max_chunk = frame_max as usize - FRAME_OVERHEAD;
    let frames = body.len().div_ceil(max_chunk);
    buf.reserve(FRAME_OVERHEAD + 12 + properties.len() + body.len() + frames * FRAME_OVERHEAD);
    buf.put_u8(FRAME_HEADER);
    buf.put_u16(channel);
    buf.put_u32((12 + properties.len()) as u32);
    buf.put_u16(CLASS_BASIC);
    buf.put_u16(0);
    buf.put_u64(body.len() as u64);
    buf.extend_from_slice(properties);
    buf.put_u8(FRAME_END);
    for chunk in body.chunks(max_chunk) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(chunk.len() as u32);
        buf.extend_from_slice(chunk);
        buf.put_u8(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode_frame, FrameType};
    use amq_protocol::protocol::basic;

    #[test]
    fn hand_written_deliver_matches_amq_protocol() {
        let mut ours = BytesMut::new();
        basic_deliver(&mut ours, 3, "ctag", 42, true, "ex", "rk");
        let mut theirs = BytesMut::new();
        method(
            &mut theirs,
            3,
            &AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "ctag".into(),
                delivery_tag: 42,
                redelivered: true,
                exchange: "ex".into(),
                routing_key: "rk".into(),
            })),
        );
        assert_eq!(ours, theirs);
    }

    #[test]
    fn hand_written_get_ok_matches_amq_protocol() {
        let mut ours = BytesMut::new();
        basic_get_ok(&mut ours, 1, 7, false, "", "q", 9);
        let mut theirs = BytesMut::new();
        method(
            &mut theirs,
            1,
            &AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                delivery_tag: 7,
                redelivered: false,
                exchange: "".into(),
                routing_key: "q".into(),
                message_count: 9,
            })),
        );
        assert_eq!(ours, theirs);
    }

    #[test]
    fn body_is_split_by_frame_max() {
        let mut buf = BytesMut::new();
        let body = vec![7u8; 10_000];
        content(&mut buf, 1, &[0, 0], &body, 4096);
        let mut frames = Vec::new();
        while let Some(f) = decode_frame(&mut buf, 4096).unwrap() {
            frames.push(f);
        }
        assert_eq!(frames[0].kind, FrameType::Header);
        let total: usize = frames[1..].iter().map(|f| f.payload.len()).sum();
        assert_eq!(total, 10_000);
        assert_eq!(frames.len(), 1 + 3);
    }
}
