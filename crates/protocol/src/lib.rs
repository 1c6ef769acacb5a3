//! The AMQP 0-9-1 wire format: frame splitting, method (de)serialisation via
//! amq-protocol, hand-written encoders for the per-message frames, and a
//! zero-copy view of content-header properties, and AMQP's reply codes and
//! errors (`error`).

#![warn(unreachable_pub)]

pub mod encode;
pub mod error;
pub mod field_table;
pub mod frame;
pub mod method;
pub mod properties;

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Frame type, channel and size: the bytes before a frame's payload.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Header plus the frame-end octet: what a frame adds around its payload.
pub const FRAME_OVERHEAD: usize = 8;
pub const CLASS_BASIC: u16 = 60;
