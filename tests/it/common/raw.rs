//! A minimal AMQP 0-9-1 client over a bare TCP socket, for byte-level tests.
#![allow(dead_code)]

pub use amq_protocol::protocol::{
    basic, channel, connection, gen_class, parse_class, queue, AMQPClass,
};
pub use amq_protocol::types::{AMQPValue, FieldTable};
use std::net::SocketAddr;
use std::time::Duration;
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// One frame as received from the broker.
#[derive(Debug)]
pub enum Frame {
    Method(u16, AMQPClass),
    /// channel, body size, raw payload
    Header(u16, u64, Vec<u8>),
    Body(u16, Vec<u8>),
    Heartbeat(u16),
    Unknown(u8, u16, Vec<u8>),
}

/// A frame with the given type, channel and payload.
pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.push(kind);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

pub fn method_payload(class: &AMQPClass) -> Vec<u8> {
    cookie_factory::gen_simple(gen_class(class), Vec::new()).expect("encode method")
}

pub fn method_frame(channel: u16, class: &AMQPClass) -> Vec<u8> {
    frame(FRAME_METHOD, channel, &method_payload(class))
}

/// A basic-class content header with no properties.
pub fn header_frame(channel: u16, body_size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&60u16.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    frame(FRAME_HEADER, channel, &p)
}

pub fn publish_method(exchange: &str, routing_key: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        mandatory: false,
        immediate: false,
    }))
}

/// SASL PLAIN response.
pub fn plain(user: &str, pass: &str) -> Vec<u8> {
    format!("\0{user}\0{pass}").into_bytes()
}

/// AMQPLAIN response: a field table without its length prefix.
pub fn amqplain(user: &str, pass: &str) -> Vec<u8> {
    let mut t = FieldTable::default();
    t.insert("LOGIN".into(), AMQPValue::LongString(user.into()));
    t.insert("PASSWORD".into(), AMQPValue::LongString(pass.into()));
    let buf = cookie_factory::gen_simple(
        amq_protocol::types::generation::gen_field_table(&t),
        Vec::new(),
    )
    .unwrap();
    buf[4..].to_vec()
}

fn client_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "authentication_failure_close",
        "consumer_cancel_notify",
        "basic.nack",
        "publisher_confirms",
        "connection.blocked",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString("leveret-raw-test-client".into()),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

pub struct Raw {
    pub stream: TcpStream,
    pub frame_max: u32,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("timed out connecting")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            frame_max: 131072,
        }
    }

    /// Connects, sends the 0-9-1 protocol header and reads connection.start.
    pub async fn start(addr: SocketAddr) -> (Raw, connection::Start) {
        let mut raw = Raw::connect(addr).await;
        raw.send(PROTOCOL_HEADER).await;
        match raw.next_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => (raw, s),
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    pub async fn start_ok(&mut self, mechanism: &str, response: Vec<u8>) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(),
                mechanism: mechanism.into(),
                response: response.into(),
                locale: "en_US".into(),
            })),
        )
        .await;
    }

    pub async fn expect_tune(&mut self) -> connection::Tune {
        match self.next_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    pub async fn tune_ok(&mut self, channel_max: u16, frame_max: u32, heartbeat: u16) {
        self.frame_max = frame_max;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            })),
        )
        .await;
    }

    pub async fn open_vhost(&mut self, vhost: &str) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
    }

    pub async fn expect_open_ok(&mut self) {
        match self.next_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Full handshake as guest on vhost "/", accepting the broker's limits, no heartbeats.
    pub async fn open(addr: SocketAddr) -> (Raw, connection::Tune) {
        Self::open_with(addr, None, None, 0).await
    }

    /// Full handshake as guest on vhost "/"; `None` accepts the broker's proposal.
    pub async fn open_with(
        addr: SocketAddr,
        channel_max: Option<u16>,
        frame_max: Option<u32>,
        heartbeat: u16,
    ) -> (Raw, connection::Tune) {
        let (mut raw, _) = Raw::start(addr).await;
        raw.start_ok("PLAIN", plain("guest", "guest")).await;
        let tune = raw.expect_tune().await;
        raw.tune_ok(
            channel_max.unwrap_or(tune.channel_max),
            frame_max.unwrap_or(tune.frame_max),
            heartbeat,
        )
        .await;
        raw.open_vhost("/").await;
        raw.expect_open_ok().await;
        (raw, tune)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write to broker failed");
    }

    /// Writes bytes; fails if the broker has already closed the socket.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| std::io::Error::other("write timed out"))?
    }

    pub async fn send_method(&mut self, channel: u16, class: AMQPClass) {
        self.send(&method_frame(channel, &class)).await;
    }

    /// basic.publish + header + body frames sized for `frame_max`.
    pub async fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        frame_max: usize,
    ) {
        let mut bytes = method_frame(channel, &publish_method(exchange, routing_key));
        bytes.extend(header_frame(channel, body.len() as u64));
        for chunk in body.chunks(frame_max - 8) {
            bytes.extend(frame(FRAME_BODY, channel, chunk));
        }
        self.send(&bytes).await;
    }

    pub async fn open_channel(&mut self, channel: u16) {
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        match self.next_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if ch == channel => {}
            other => panic!("expected channel.open-ok on {channel}, got {other:?}"),
        }
    }

    pub async fn close_channel(&mut self, channel: u16) {
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        match self.next_method().await {
            (ch, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) if ch == channel => {}
            other => panic!("expected channel.close-ok on {channel}, got {other:?}"),
        }
    }

    /// Declares a server-named exclusive queue and returns its name.
    pub async fn declare_exclusive_queue(&mut self, channel: u16) -> String {
        self.send_method(
            channel,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "".into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        match self.next_method().await {
            (ch, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) if ch == channel => {
                ok.queue.to_string()
            }
            other => panic!("expected queue.declare-ok on {channel}, got {other:?}"),
        }
    }

    /// basic.get with no-ack: the message body, or `None` on get-empty.
    pub async fn basic_get(&mut self, channel: u16, queue: &str) -> Option<Vec<u8>> {
        self.send_method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.into(),
                no_ack: true,
            })),
        )
        .await;
        match self.next_method().await {
            (ch, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))) if ch == channel => {}
            (ch, AMQPClass::Basic(basic::AMQPMethod::GetEmpty(_))) if ch == channel => return None,
            other => panic!("expected basic.get-ok or get-empty on {channel}, got {other:?}"),
        }
        let size = match self.read_frame().await {
            Some(Frame::Header(ch, size, _)) if ch == channel => size as usize,
            other => panic!("expected a content header on {channel}, got {other:?}"),
        };
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            match self.read_frame().await {
                Some(Frame::Body(ch, chunk)) if ch == channel => {
                    assert!(
                        chunk.len() + 8 <= self.frame_max as usize,
                        "body frame of {} octets exceeds frame_max {}",
                        chunk.len() + 8,
                        self.frame_max
                    );
                    body.extend_from_slice(&chunk)
                }
                other => panic!("expected a content body frame on {channel}, got {other:?}"),
            }
        }
        Some(body)
    }

    /// [`basic_get`](Self::basic_get) until a message is there (routing and
    /// dead-lettering reach a RabbitMQ queue asynchronously), for at most
    /// [`IO_TIMEOUT`]; `None` if none came.
    pub async fn basic_get_eventually(&mut self, channel: u16, queue: &str) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
        loop {
            let got = self.basic_get(channel, queue).await;
            if got.is_some() || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(super::POLL).await;
        }
    }

    /// Client-initiated connection.close, expecting close-ok.
    pub async fn close_connection(&mut self) {
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        loop {
            match self.read_frame().await {
                Some(Frame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                )) => break,
                // Frames already in flight on channels are discarded.
                Some(Frame::Method(ch, _))
                | Some(Frame::Header(ch, ..))
                | Some(Frame::Body(ch, _))
                    if ch != 0 => {}
                Some(Frame::Heartbeat(_)) => {}
                other => panic!("expected connection.close-ok, got {other:?}"),
            }
        }
        // The client closes the socket once it has close-ok (RabbitMQ waits for it).
    }

    /// The next frame, or `None` once the broker has closed the socket (EOF or
    /// reset). Panics if nothing arrives within `IO_TIMEOUT`.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(IO_TIMEOUT, self.read_frame_untimed())
            .await
            .expect("timed out waiting for a frame from the broker")
    }

    async fn read_frame_untimed(&mut self) -> Option<Frame> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).await.ok()?;
        let kind = head[0];
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.stream.read_exact(&mut payload).await.ok()?;
        assert_eq!(
            payload.pop(),
            Some(FRAME_END),
            "broker sent a frame without a frame-end octet"
        );
        Some(match kind {
            FRAME_METHOD => match parse_class(payload.as_slice()) {
                Ok((_, class)) => Frame::Method(channel, class),
                Err(e) => panic!("undecodable method frame from broker {payload:?}: {e:?}"),
            },
            FRAME_HEADER => {
                let size = u64::from_be_bytes(payload[4..12].try_into().unwrap());
                Frame::Header(channel, size, payload)
            }
            FRAME_BODY => Frame::Body(channel, payload),
            FRAME_HEARTBEAT => Frame::Heartbeat(channel),
            _ => Frame::Unknown(kind, channel, payload),
        })
    }

    /// The next method frame, skipping heartbeats. Panics on EOF or other frames.
    pub async fn next_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.read_frame().await {
                Some(Frame::Heartbeat(_)) => continue,
                Some(Frame::Method(ch, m)) => return (ch, m),
                Some(other) => panic!("expected a method frame, got {other:?}"),
                None => panic!("the broker closed the connection while a method was expected"),
            }
        }
    }

    /// Expects connection.close from the broker (skipping heartbeats), answers
    /// close-ok and expects the broker to close the socket.
    pub async fn expect_connection_close(&mut self) -> connection::Close {
        let close = self.read_connection_close().await;
        self.expect_eof().await;
        close
    }

    /// Either connection.close (answered with close-ok, then EOF expected) or
    /// the socket closed without one. Panics on anything else.
    pub async fn expect_connection_end(&mut self) -> Option<connection::Close> {
        loop {
            match self.read_frame().await {
                Some(Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                    self.send_close_ok().await;
                    self.expect_eof().await;
                    return Some(c);
                }
                Some(Frame::Heartbeat(_)) => continue,
                None => return None,
                other => panic!("expected the connection to end, got {other:?}"),
            }
        }
    }

    /// Expects connection.close from the broker (skipping heartbeats) and answers
    /// close-ok, without waiting for the socket to close.
    pub async fn read_connection_close(&mut self) -> connection::Close {
        let close = loop {
            match self.read_frame().await {
                Some(Frame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) => {
                    break c
                }
                Some(Frame::Heartbeat(_)) => continue,
                other => panic!("expected connection.close, got {other:?}"),
            }
        };
        self.send_close_ok().await;
        close
    }

    /// connection.close-ok; the broker may already have closed the socket.
    async fn send_close_ok(&mut self) {
        let _ = self
            .try_send(&method_frame(
                0,
                &AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ))
            .await;
    }

    /// Expects channel.close on `channel` (skipping heartbeats) and answers close-ok.
    pub async fn expect_channel_close(&mut self, channel: u16) -> channel::Close {
        let close = loop {
            match self.read_frame().await {
                Some(Frame::Method(ch, AMQPClass::Channel(channel::AMQPMethod::Close(c))))
                    if ch == channel =>
                {
                    break c
                }
                Some(Frame::Heartbeat(_)) => continue,
                other => panic!("expected channel.close on {channel}, got {other:?}"),
            }
        };
        self.send_method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        )
        .await;
        close
    }

    /// Expects the broker to close the socket (heartbeats are skipped).
    pub async fn expect_eof(&mut self) {
        loop {
            match self.read_frame().await {
                None => return,
                Some(Frame::Heartbeat(_)) => continue,
                Some(other) => panic!("expected the socket to be closed, got {other:?}"),
            }
        }
    }
}
