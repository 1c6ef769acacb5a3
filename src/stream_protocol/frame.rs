//! The stream protocol's wire format (RabbitMQ's `rabbit_stream_core`):
//! frames are `size u32 ‖ key u16 ‖ version u16 ‖ body`, big-endian, where
//! the key's top bit tells a response (1) from a request or command (0).
//!
//! Decoding treats every byte as hostile: a frame is looked at only once its
//! whole size is buffered and that size is within the connection's
//! `frame_max`; fields are read from the frame's bytes with bounds checks
//! (no panic, no recursion); lists are collected as they are read, never
//! pre-allocated from a count the peer sent, so a frame never costs more
//! memory than its own size. Anything that does not parse is
//! [`Command::Unknown`], as RabbitMQ's `{unknown, _}`.

use bytes::{BufMut, BytesMut};

/// Command keys (`rabbit_stream.hrl`).
pub(crate) mod key {
    pub(crate) const DECLARE_PUBLISHER: u16 = 1;
    pub(crate) const PUBLISH: u16 = 2;
    pub(crate) const PUBLISH_CONFIRM: u16 = 3;
    pub(crate) const PUBLISH_ERROR: u16 = 4;
    pub(crate) const QUERY_PUBLISHER_SEQUENCE: u16 = 5;
    pub(crate) const DELETE_PUBLISHER: u16 = 6;
    pub(crate) const SUBSCRIBE: u16 = 7;
    pub(crate) const DELIVER: u16 = 8;
    pub(crate) const CREDIT: u16 = 9;
    pub(crate) const STORE_OFFSET: u16 = 10;
    pub(crate) const QUERY_OFFSET: u16 = 11;
    pub(crate) const UNSUBSCRIBE: u16 = 12;
    pub(crate) const CREATE: u16 = 13;
    pub(crate) const DELETE: u16 = 14;
    pub(crate) const METADATA: u16 = 15;
    pub(crate) const METADATA_UPDATE: u16 = 16;
    pub(crate) const PEER_PROPERTIES: u16 = 17;
    pub(crate) const SASL_HANDSHAKE: u16 = 18;
    pub(crate) const SASL_AUTHENTICATE: u16 = 19;
    pub(crate) const TUNE: u16 = 20;
    pub(crate) const OPEN: u16 = 21;
    pub(crate) const CLOSE: u16 = 22;
    pub(crate) const HEARTBEAT: u16 = 23;
    pub(crate) const ROUTE: u16 = 24;
    pub(crate) const PARTITIONS: u16 = 25;
    pub(crate) const CONSUMER_UPDATE: u16 = 26;
    pub(crate) const EXCHANGE_COMMAND_VERSIONS: u16 = 27;
    pub(crate) const STREAM_STATS: u16 = 28;
    pub(crate) const CREATE_SUPER_STREAM: u16 = 29;
    pub(crate) const DELETE_SUPER_STREAM: u16 = 30;
    pub(crate) const RESOLVE_OFFSET_SPEC: u16 = 31;
    /// The top bit of a response's key.
    pub(crate) const RESPONSE: u16 = 0x8000;
}

/// Response codes (`rabbit_stream.hrl`).
pub(crate) mod code {
    pub(crate) const OK: u16 = 0x01;
    pub(crate) const STREAM_DOES_NOT_EXIST: u16 = 0x02;
    pub(crate) const SUBSCRIPTION_ID_ALREADY_EXISTS: u16 = 0x03;
    pub(crate) const SUBSCRIPTION_ID_DOES_NOT_EXIST: u16 = 0x04;
    pub(crate) const STREAM_ALREADY_EXISTS: u16 = 0x05;
    pub(crate) const STREAM_NOT_AVAILABLE: u16 = 0x06;
    pub(crate) const SASL_MECHANISM_NOT_SUPPORTED: u16 = 0x07;
    pub(crate) const AUTHENTICATION_FAILURE: u16 = 0x08;
    pub(crate) const SASL_ERROR: u16 = 0x09;
    pub(crate) const SASL_AUTHENTICATION_FAILURE_LOOPBACK: u16 = 0x0b;
    pub(crate) const VHOST_ACCESS_FAILURE: u16 = 0x0c;
    pub(crate) const UNKNOWN_FRAME: u16 = 0x0d;
    pub(crate) const FRAME_TOO_LARGE: u16 = 0x0e;
    pub(crate) const INTERNAL_ERROR: u16 = 0x0f;
    pub(crate) const ACCESS_REFUSED: u16 = 0x10;
    pub(crate) const PRECONDITION_FAILED: u16 = 0x11;
    pub(crate) const PUBLISHER_DOES_NOT_EXIST: u16 = 0x12;
    pub(crate) const NO_OFFSET: u16 = 0x13;
}

/// Bytes of the size prefix.
pub(crate) const SIZE_PREFIX: usize = 4;

/// Where a subscription starts (`OffsetSpecification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OffsetSpec {
    First,
    Last,
    Next,
    Offset(u64),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

/// One `key value` pair of a string map (properties, arguments).
pub(crate) type Pair<'a> = (&'a str, &'a str);

/// A frame the client sent, decoded. Borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    DeclarePublisher {
        corr: u32,
        publisher_id: u8,
        reference: &'a str,
        stream: &'a str,
    },
    Publish {
        /// 1, or 2 when each message carries a filter value.
        version: u16,
        publisher_id: u8,
        /// `PublishedMessages`, read with [`Messages`].
        messages: &'a [u8],
    },
    QueryPublisherSequence {
        corr: u32,
        reference: &'a str,
        stream: &'a str,
    },
    DeletePublisher {
        corr: u32,
        publisher_id: u8,
    },
    Subscribe {
        corr: u32,
        subscription_id: u8,
        stream: &'a str,
        offset: OffsetSpec,
        credit: u16,
        properties: Vec<Pair<'a>>,
    },
    Credit {
        subscription_id: u8,
        credit: u16,
    },
    StoreOffset {
        reference: &'a str,
        stream: &'a str,
        offset: u64,
    },
    QueryOffset {
        corr: u32,
        reference: &'a str,
        stream: &'a str,
    },
    Unsubscribe {
        corr: u32,
        subscription_id: u8,
    },
    Create {
        corr: u32,
        stream: &'a str,
        arguments: Vec<Pair<'a>>,
    },
    Delete {
        corr: u32,
        stream: &'a str,
    },
    Metadata {
        corr: u32,
        streams: Vec<&'a str>,
    },
    PeerProperties {
        corr: u32,
        properties: Vec<Pair<'a>>,
    },
    SaslHandshake {
        corr: u32,
    },
    SaslAuthenticate {
        corr: u32,
        mechanism: &'a str,
        data: &'a [u8],
    },
    /// The client's answer to the server's tune (sent as a response or,
    /// by some clients, as a request: RabbitMQ takes both).
    Tune {
        frame_max: u32,
        heartbeat: u32,
    },
    Open {
        corr: u32,
        vhost: &'a str,
    },
    Close {
        corr: u32,
        code: u16,
        reason: &'a str,
    },
    /// The client's answer to a close the server sent.
    CloseResponse {
        corr: u32,
        code: u16,
    },
    Heartbeat,
    Route {
        corr: u32,
        routing_key: &'a str,
        super_stream: &'a str,
    },
    Partitions {
        corr: u32,
        super_stream: &'a str,
    },
    /// The client's answer to a consumer update (single active consumer):
    /// where the newly active consumer starts (`None`: where it asked at
    /// subscribe).
    ConsumerUpdateResponse {
        corr: u32,
        offset: Option<OffsetSpec>,
    },
    ExchangeCommandVersions {
        corr: u32,
        /// `(key, min version, max version)` of each command the client knows.
        versions: Vec<(u16, u16, u16)>,
    },
    StreamStats {
        corr: u32,
        stream: &'a str,
    },
    CreateSuperStream {
        corr: u32,
        name: &'a str,
        partitions: Vec<&'a str>,
        binding_keys: Vec<&'a str>,
        arguments: Vec<Pair<'a>>,
    },
    DeleteSuperStream {
        corr: u32,
        name: &'a str,
    },
    ResolveOffsetSpec {
        corr: u32,
        stream: &'a str,
        offset: OffsetSpec,
    },
    /// Anything else: an unknown key or version, or a body that does not
    /// parse (RabbitMQ's `{unknown, _}`).
    Unknown,
}

/// What splitting the read buffer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// A whole frame (without its size prefix) of this many bytes, after
    /// the prefix.
    Frame(usize),
    /// More bytes are needed.
    Incomplete,
    /// The size prefix declares more than `frame_max` allows.
    TooLarge(u32),
}

/// Looks at the start of `buf` for a frame of at most `frame_max` bytes.
pub(crate) fn split(buf: &[u8], frame_max: u32) -> Split {
    let Some(prefix) = buf.get(..SIZE_PREFIX) else {
        return Split::Incomplete;
    };
    let size = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if size > frame_max {
        return Split::TooLarge(size);
    }
    if buf.len() - SIZE_PREFIX < size as usize {
        return Split::Incomplete;
    }
    Split::Frame(size as usize)
}

/// Reads fields from a frame's bytes; every read fails cleanly past the end.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        self.bytes(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    }

    /// `string`: u16 length and UTF-8 bytes.
    fn string(&mut self) -> Option<&'a str> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// `bytes`: i32 length (-1: null, read as empty) and the bytes.
    fn data(&mut self) -> Option<&'a [u8]> {
        match self.u32()? {
            u32::MAX => Some(&[]),
            len => self.bytes(len as usize),
        }
    }

    /// A string map: u32 count, then pairs while the count and the bytes
    /// last (the count bounds nothing: each pair takes at least 4 bytes).
    fn map(&mut self) -> Option<Vec<Pair<'a>>> {
        let count = self.u32()?;
        let mut pairs = Vec::new();
        for _ in 0..count {
            pairs.push((self.string()?, self.string()?));
        }
        Some(pairs)
    }

    /// A list of strings: u32 count, then strings while the count and the
    /// bytes last (each takes at least 2 bytes, so the frame bounds it).
    fn strings(&mut self) -> Option<Vec<&'a str>> {
        let count = self.u32()?;
        let mut list = Vec::new();
        for _ in 0..count {
            list.push(self.string()?);
        }
        Some(list)
    }

    /// Properties that may be absent altogether (subscribe's, RabbitMQ's
    /// `parse_properties`).
    fn optional_map(&mut self) -> Option<Vec<Pair<'a>>> {
        if self.rest.is_empty() {
            return Some(Vec::new());
        }
        self.map()
    }

    fn offset_spec(&mut self) -> Option<OffsetSpec> {
        Some(match self.u16()? {
            1 => OffsetSpec::First,
            2 => OffsetSpec::Last,
            3 => OffsetSpec::Next,
            4 => OffsetSpec::Offset(self.u64()?),
            5 => OffsetSpec::Timestamp(self.u64()? as i64),
            _ => return None,
        })
    }

    /// The frame ends here.
    fn end(&self) -> Option<()> {
        self.rest.is_empty().then_some(())
    }
}

/// Decodes one frame (without its size prefix).
pub(crate) fn decode(frame: &[u8]) -> Command<'_> {
    parse(frame).unwrap_or(Command::Unknown)
}

fn parse(frame: &[u8]) -> Option<Command<'_>> {
    let mut f = Fields { rest: frame };
    let key = f.u16()?;
    let version = f.u16()?;
    if key & key::RESPONSE != 0 {
        return parse_response(key & !key::RESPONSE, version, f);
    }
    if key == key::PUBLISH {
        if version != 1 && version != 2 {
            return None;
        }
        let publisher_id = f.u8()?;
        let _count = f.u32()?;
        return Some(Command::Publish {
            version,
            publisher_id,
            messages: f.rest,
        });
    }
    if version != 1 {
        return None;
    }
    // Commands without a correlation id.
    match key {
        key::CREDIT => {
            let c = Command::Credit {
                subscription_id: f.u8()?,
                credit: f.u16()?,
            };
            return f.end().map(|()| c);
        }
        key::STORE_OFFSET => {
            let c = Command::StoreOffset {
                reference: f.string()?,
                stream: f.string()?,
                offset: f.u64()?,
            };
            return f.end().map(|()| c);
        }
        key::HEARTBEAT => return f.end().map(|()| Command::Heartbeat),
        key::TUNE => {
            let c = Command::Tune {
                frame_max: f.u32()?,
                heartbeat: f.u32()?,
            };
            return f.end().map(|()| c);
        }
        _ => {}
    }
    let corr = f.u32()?;
    let command = match key {
        key::DECLARE_PUBLISHER => Command::DeclarePublisher {
            corr,
            publisher_id: f.u8()?,
            reference: f.string()?,
            stream: f.string()?,
        },
        key::QUERY_PUBLISHER_SEQUENCE => Command::QueryPublisherSequence {
            corr,
            reference: f.string()?,
            stream: f.string()?,
        },
        key::DELETE_PUBLISHER => Command::DeletePublisher {
            corr,
            publisher_id: f.u8()?,
        },
        key::SUBSCRIBE => Command::Subscribe {
            corr,
            subscription_id: f.u8()?,
            stream: f.string()?,
            offset: f.offset_spec()?,
            credit: f.u16()?,
            properties: f.optional_map()?,
        },
        key::QUERY_OFFSET => Command::QueryOffset {
            corr,
            reference: f.string()?,
            stream: f.string()?,
        },
        key::UNSUBSCRIBE => Command::Unsubscribe {
            corr,
            subscription_id: f.u8()?,
        },
        key::CREATE => Command::Create {
            corr,
            stream: f.string()?,
            arguments: f.map()?,
        },
        key::DELETE => Command::Delete {
            corr,
            stream: f.string()?,
        },
        key::METADATA => {
            let count = f.u32()?;
            let mut streams = Vec::new();
            for _ in 0..count {
                streams.push(f.string()?);
            }
            Command::Metadata { corr, streams }
        }
        key::PEER_PROPERTIES => Command::PeerProperties {
            corr,
            properties: f.map()?,
        },
        key::SASL_HANDSHAKE => Command::SaslHandshake { corr },
        key::SASL_AUTHENTICATE => Command::SaslAuthenticate {
            corr,
            mechanism: f.string()?,
            data: f.data()?,
        },
        key::OPEN => Command::Open {
            corr,
            vhost: f.string()?,
        },
        key::CLOSE => Command::Close {
            corr,
            code: f.u16()?,
            reason: f.string()?,
        },
        key::ROUTE => Command::Route {
            corr,
            routing_key: f.string()?,
            super_stream: f.string()?,
        },
        key::PARTITIONS => Command::Partitions {
            corr,
            super_stream: f.string()?,
        },
        key::EXCHANGE_COMMAND_VERSIONS => {
            let count = f.u32()?;
            let mut versions = Vec::new();
            for _ in 0..count {
                versions.push((f.u16()?, f.u16()?, f.u16()?));
            }
            Command::ExchangeCommandVersions { corr, versions }
        }
        key::STREAM_STATS => Command::StreamStats {
            corr,
            stream: f.string()?,
        },
        key::CREATE_SUPER_STREAM => Command::CreateSuperStream {
            corr,
            name: f.string()?,
            partitions: f.strings()?,
            binding_keys: f.strings()?,
            arguments: f.map()?,
        },
        key::DELETE_SUPER_STREAM => Command::DeleteSuperStream {
            corr,
            name: f.string()?,
        },
        key::RESOLVE_OFFSET_SPEC => {
            let c = Command::ResolveOffsetSpec {
                corr,
                stream: f.string()?,
                offset: f.offset_spec()?,
            };
            f.optional_map()?;
            c
        }
        _ => return None,
    };
    f.end().map(|()| command)
}

fn parse_response(key: u16, version: u16, mut f: Fields<'_>) -> Option<Command<'_>> {
    if version != 1 {
        return None;
    }
    let command = match key {
        key::TUNE => Command::Tune {
            frame_max: f.u32()?,
            heartbeat: f.u32()?,
        },
        key::CLOSE => Command::CloseResponse {
            corr: f.u32()?,
            code: f.u16()?,
        },
        key::CONSUMER_UPDATE => {
            let corr = f.u32()?;
            let _code = f.u16()?;
            // The offset specification, 0 (none) included; RabbitMQ's
            // `offset_spec` ignores what follows a type without a value
            // (rstream sends a zero offset with each).
            let offset = match f.u16()? {
                0 => None,
                1 => Some(OffsetSpec::First),
                2 => Some(OffsetSpec::Last),
                3 => Some(OffsetSpec::Next),
                4 => Some(OffsetSpec::Offset(f.u64()?)),
                5 => Some(OffsetSpec::Timestamp(f.u64()? as i64)),
                _ => return None,
            };
            if !matches!(
                offset,
                Some(OffsetSpec::Offset(_) | OffsetSpec::Timestamp(_))
            ) {
                f.rest = &[];
            }
            Command::ConsumerUpdateResponse { corr, offset }
        }
        _ => return None,
    };
    f.end().map(|()| command)
}

/// One message of a publish frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Published<'a> {
    pub(crate) publishing_id: u64,
    pub(crate) filter: Option<&'a [u8]>,
    pub(crate) message: &'a [u8],
}

/// Why a publish frame's messages stop before their end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadMessage {
    /// A sub-entry batch (compressed or not), which Leveret does not
    /// store: its publishing id and the ids of the messages after it.
    SubBatch(u64),
    /// The bytes do not parse.
    Malformed,
}

/// The messages of a publish frame, one at a time, borrowed.
pub(crate) struct Messages<'a> {
    f: Fields<'a>,
    version: u16,
}

impl<'a> Messages<'a> {
    pub(crate) fn new(version: u16, messages: &'a [u8]) -> Messages<'a> {
        Messages {
            f: Fields { rest: messages },
            version,
        }
    }

    fn next_message(&mut self) -> Result<Published<'a>, BadMessage> {
        let publishing_id = self.f.u64().ok_or(BadMessage::Malformed)?;
        let filter = if self.version == 2 {
            match self.f.u16().ok_or(BadMessage::Malformed)? {
                u16::MAX => None,
                len => Some(self.f.bytes(len as usize).ok_or(BadMessage::Malformed)?),
            }
        } else {
            None
        };
        let size = self.f.u32().ok_or(BadMessage::Malformed)?;
        if size & 0x8000_0000 != 0 {
            return Err(BadMessage::SubBatch(publishing_id));
        }
        let message = self.f.bytes(size as usize).ok_or(BadMessage::Malformed)?;
        Ok(Published {
            publishing_id,
            filter,
            message,
        })
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Published<'a>, BadMessage>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.f.rest.is_empty() {
            return None;
        }
        let item = self.next_message();
        if item.is_err() {
            // Nothing after a bad message is read.
            self.f.rest = &[];
        }
        Some(item)
    }
}

/// Writes one frame into an output buffer: the size is patched in when the
/// frame is done.
pub(crate) struct Out<'b> {
    buf: &'b mut BytesMut,
    start: usize,
}

impl<'b> Out<'b> {
    pub(crate) fn begin(buf: &'b mut BytesMut, key: u16, version: u16) -> Out<'b> {
        let start = buf.len();
        buf.put_u32(0);
        buf.put_u16(key);
        buf.put_u16(version);
        Out { buf, start }
    }

    /// A response: the key with its top bit, version 1, the correlation id.
    pub(crate) fn response(buf: &'b mut BytesMut, key: u16, corr: u32) -> Out<'b> {
        let mut out = Out::begin(buf, key | key::RESPONSE, 1);
        out.u32(corr);
        out
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.put_u8(v);
        self
    }

    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.put_u16(v);
        self
    }

    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.put_u32(v);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.put_u64(v);
        self
    }

    pub(crate) fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.put_i64(v);
        self
    }

    /// A `string`; longer than a u16 can say is cut (only the broker's
    /// own texts are written).
    pub(crate) fn string(&mut self, s: &str) -> &mut Self {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        self.buf.put_u16(b.len() as u16);
        self.buf.put_slice(b);
        self
    }

    pub(crate) fn map<'k>(&mut self, pairs: impl ExactSizeIterator<Item = Pair<'k>>) -> &mut Self {
        self.buf.put_u32(pairs.len() as u32);
        for (k, v) in pairs {
            self.string(k);
            self.string(v);
        }
        self
    }

    #[cfg(test)]
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.put_slice(bytes);
        self
    }

    /// The buffer the frame is being written to, for bodies written in place.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        self.buf
    }
}

impl Drop for Out<'_> {
    fn drop(&mut self) {
        let size = (self.buf.len() - self.start - SIZE_PREFIX) as u32;
        self.buf[self.start..self.start + SIZE_PREFIX].copy_from_slice(&size.to_be_bytes());
    }
}

/// A response carrying only a code.
pub(crate) fn response_code(buf: &mut BytesMut, key: u16, corr: u32, code: u16) {
    Out::response(buf, key, corr).u16(code);
}

/// The server's close request (RabbitMQ sends correlation id 1).
pub(crate) fn close(buf: &mut BytesMut, code: u16, reason: &str) {
    Out::begin(buf, key::CLOSE, 1)
        .u32(1)
        .u16(code)
        .string(reason);
}

pub(crate) fn heartbeat(buf: &mut BytesMut) {
    Out::begin(buf, key::HEARTBEAT, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(build: impl FnOnce(&mut Out<'_>)) -> Vec<u8> {
        let mut buf = BytesMut::new();
        {
            let mut out = Out::begin(&mut buf, 0, 1);
            build(&mut out);
        }
        // Drop the size and the placeholder key/version: callers give them.
        buf[4 + 4..].to_vec()
    }

    fn request(key: u16, version: u16, body: &[u8]) -> Vec<u8> {
        let mut v = key.to_be_bytes().to_vec();
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn super_stream_commands_and_consumer_update_answers_decode() {
        let body = frame(|o| {
            o.u32(7).string("orders");
            o.u32(2).string("orders-0").string("orders-1");
            o.u32(2).string("0").string("1");
            o.map([("max-age", "1h")].into_iter());
        });
        assert_eq!(
            decode(&request(key::CREATE_SUPER_STREAM, 1, &body)),
            Command::CreateSuperStream {
                corr: 7,
                name: "orders",
                partitions: vec!["orders-0", "orders-1"],
                binding_keys: vec!["0", "1"],
                arguments: vec![("max-age", "1h")],
            }
        );
        let body = frame(|o| {
            o.u32(8).string("k").string("orders");
        });
        assert_eq!(
            decode(&request(key::ROUTE, 1, &body)),
            Command::Route {
                corr: 8,
                routing_key: "k",
                super_stream: "orders"
            }
        );
        // A list count past the frame's end is malformed, not a big vector.
        let body = frame(|o| {
            o.u32(9).string("orders").u32(u32::MAX);
        });
        assert_eq!(
            decode(&request(key::CREATE_SUPER_STREAM, 1, &body)),
            Command::Unknown
        );
        // rstream sends a zero offset after first/last/next; RabbitMQ
        // ignores it.
        let answer = |spec: u16, value: Option<u64>| {
            let body = frame(|o| {
                o.u32(3).u16(code::OK).u16(spec);
                if let Some(v) = value {
                    o.u64(v);
                }
            });
            match decode(&request(key::CONSUMER_UPDATE | key::RESPONSE, 1, &body)) {
                Command::ConsumerUpdateResponse { corr: 3, offset } => Some(offset),
                _ => None,
            }
        };
        assert_eq!(answer(3, Some(0)), Some(Some(OffsetSpec::Next)));
        assert_eq!(answer(0, None), Some(None));
        assert_eq!(answer(4, Some(42)), Some(Some(OffsetSpec::Offset(42))));
        assert_eq!(answer(4, None), None);
        assert_eq!(answer(9, Some(0)), None);
    }

    #[test]
    fn split_needs_the_whole_frame_and_refuses_large_ones() {
        assert_eq!(split(&[0, 0], 100), Split::Incomplete);
        assert_eq!(split(&[0, 0, 0, 4, 1, 2, 3], 100), Split::Incomplete);
        assert_eq!(split(&[0, 0, 0, 4, 1, 2, 3, 4, 9], 100), Split::Frame(4));
        assert_eq!(split(&[0, 0, 1, 0], 100), Split::TooLarge(256));
        assert_eq!(
            split(&[0xff, 0xff, 0xff, 0xff], u32::MAX - 1),
            Split::TooLarge(u32::MAX)
        );
    }

    #[test]
    fn handshake_commands() {
        let body = frame(|o| {
            o.u32(7)
                .map([("product", "x"), ("version", "1")].into_iter());
        });
        assert_eq!(
            decode(&request(key::PEER_PROPERTIES, 1, &body)),
            Command::PeerProperties {
                corr: 7,
                properties: vec![("product", "x"), ("version", "1")]
            }
        );
        let body = frame(|o| {
            o.u32(2).string("PLAIN").u32(11).raw(b"\0guest\0pass");
        });
        assert_eq!(
            decode(&request(key::SASL_AUTHENTICATE, 1, &body)),
            Command::SaslAuthenticate {
                corr: 2,
                mechanism: "PLAIN",
                data: b"\0guest\0pass"
            }
        );
        // Tune as a response (the Java client) and as a request.
        let body = frame(|o| {
            o.u32(1 << 20).u32(60);
        });
        let tune = Command::Tune {
            frame_max: 1 << 20,
            heartbeat: 60,
        };
        assert_eq!(decode(&request(key::TUNE | key::RESPONSE, 1, &body)), tune);
        assert_eq!(decode(&request(key::TUNE, 1, &body)), tune);
        let body = frame(|o| {
            o.u32(3).string("/");
        });
        assert_eq!(
            decode(&request(key::OPEN, 1, &body)),
            Command::Open {
                corr: 3,
                vhost: "/"
            }
        );
        assert_eq!(decode(&request(key::HEARTBEAT, 1, &[])), Command::Heartbeat);
    }

    #[test]
    fn subscribe_with_and_without_properties() {
        let body = frame(|o| {
            o.u32(9).u8(4).string("s").u16(4).u64(42).u16(10);
        });
        assert_eq!(
            decode(&request(key::SUBSCRIBE, 1, &body)),
            Command::Subscribe {
                corr: 9,
                subscription_id: 4,
                stream: "s",
                offset: OffsetSpec::Offset(42),
                credit: 10,
                properties: vec![]
            }
        );
        let body = frame(|o| {
            o.u32(9)
                .u8(4)
                .string("s")
                .u16(5)
                .i64(-3)
                .u16(1)
                .map([("name", "c")].into_iter());
        });
        assert_eq!(
            decode(&request(key::SUBSCRIBE, 1, &body)),
            Command::Subscribe {
                corr: 9,
                subscription_id: 4,
                stream: "s",
                offset: OffsetSpec::Timestamp(-3),
                credit: 1,
                properties: vec![("name", "c")]
            }
        );
    }

    #[test]
    fn publish_messages_v1_and_v2() {
        let body = frame(|o| {
            o.u8(3).u32(2);
            o.u64(10).u32(2).raw(b"ab");
            o.u64(11).u32(0);
        });
        let publish = request(key::PUBLISH, 1, &body);
        let Command::Publish {
            version,
            publisher_id,
            messages,
        } = decode(&publish)
        else {
            panic!("not a publish");
        };
        assert_eq!((version, publisher_id), (1, 3));
        let all: Vec<_> = Messages::new(version, messages).collect();
        assert_eq!(
            all,
            vec![
                Ok(Published {
                    publishing_id: 10,
                    filter: None,
                    message: b"ab"
                }),
                Ok(Published {
                    publishing_id: 11,
                    filter: None,
                    message: b""
                })
            ]
        );
        let body = frame(|o| {
            o.u64(1).u16(u16::MAX).u32(1).raw(b"x");
            o.u64(2).string("eu").u32(1).raw(b"y");
            o.u64(3).u16(0).u32(0x8000_0000);
        });
        let all: Vec<_> = Messages::new(2, &body).collect();
        assert_eq!(all[0].as_ref().unwrap().filter, None);
        assert_eq!(all[1].as_ref().unwrap().filter, Some(&b"eu"[..]));
        assert_eq!(all[2], Err(BadMessage::SubBatch(3)));
        assert_eq!(all.len(), 3);
        // Truncated: one error, then nothing.
        let all: Vec<_> = Messages::new(1, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1]).collect();
        assert_eq!(all, vec![Err(BadMessage::Malformed)]);
    }

    #[test]
    fn truncated_or_trailing_bytes_are_unknown() {
        let body = frame(|o| {
            o.u32(3).string("/");
        });
        let open = request(key::OPEN, 1, &body);
        for cut in 0..open.len() {
            assert_eq!(decode(&open[..cut]), Command::Unknown, "cut at {cut}");
        }
        let mut longer = open.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Command::Unknown);
        // Another version, an unknown key, a string that is not UTF-8.
        assert_eq!(decode(&request(key::OPEN, 2, &body)), Command::Unknown);
        assert_eq!(decode(&request(999, 1, &body)), Command::Unknown);
        let bad = frame(|o| {
            o.u32(3).u16(2).raw(&[0xff, 0xfe]);
        });
        assert_eq!(decode(&request(key::OPEN, 1, &bad)), Command::Unknown);
    }

    #[test]
    fn a_huge_count_allocates_nothing_ahead() {
        // Four billion pairs announced, none there: refused, not reserved.
        let body = frame(|o| {
            o.u32(1).u32(u32::MAX);
        });
        assert_eq!(
            decode(&request(key::PEER_PROPERTIES, 1, &body)),
            Command::Unknown
        );
        let body = frame(|o| {
            o.u32(1).u32(u32::MAX);
        });
        assert_eq!(decode(&request(key::METADATA, 1, &body)), Command::Unknown);
    }

    #[test]
    fn encoded_responses() {
        let mut buf = BytesMut::new();
        response_code(&mut buf, key::OPEN, 5, code::VHOST_ACCESS_FAILURE);
        assert_eq!(&buf[..], &[0, 0, 0, 10, 0x80, 21, 0, 1, 0, 0, 0, 5, 0, 12]);
        buf.clear();
        heartbeat(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 4, 0, 23, 0, 1]);
        buf.clear();
        close(&mut buf, code::UNKNOWN_FRAME, "unknown frame");
        assert_eq!(split(&buf, 100), Split::Frame(buf.len() - 4));
        assert_eq!(
            &buf[4..14],
            &[0, 22, 0, 1, 0, 0, 0, 1, 0, 13],
            "close request, correlation id 1, code 13"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = split(&bytes, 1024);
            if let Command::Publish { version, messages, .. } = decode(&bytes) {
                for m in Messages::new(version, messages) {
                    let _ = m;
                }
            }
        }

        #[test]
        fn random_bodies_of_every_key_never_panic(
            k in 0u16..40,
            response in any::<bool>(),
            version in 0u16..3,
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let k = if response { k | key::RESPONSE } else { k };
            let _ = decode(&request(k, version, &body));
        }
    }
}
