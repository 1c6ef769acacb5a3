//! The smallest AMQP 0-9-1 client the load generator needs, on Leveret's
//! own codec: handshake, control methods through amq-protocol, and the
//! per-message frames (publish, deliver, ack) written and read by hand so
//! the generator costs little CPU per message.

use crate::tls::{self, Tls};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use leveret_protocol::encode;
use leveret_protocol::frame::{decode_frame, Frame, FrameType};
use leveret_protocol::method::{method_ids, Reader};
use leveret_protocol::PROTOCOL_HEADER;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Where and as whom to connect, from an `amqp://user:pass@host:port/vhost`
/// or `amqps://…?cacertfile=…` URI.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub addr: String,
    /// `amqps://`: how to wrap the TCP connection.
    pub tls: Option<Tls>,
    pub user: String,
    pub password: String,
    pub vhost: String,
    /// SO_SNDBUF of every connection (0: the system's autotuning).
    pub send_buffer: u32,
}

impl Target {
    pub(crate) fn parse(uri: &str) -> Result<Target, String> {
        let (secure, rest) = match (uri.strip_prefix("amqp://"), uri.strip_prefix("amqps://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("'{uri}' is not an amqp:// or amqps:// URI")),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (decode(u), decode(p)),
                None => (decode(a), String::new()),
            },
            None => ("guest".into(), "guest".into()),
        };
        let (hostport, vhost) = match rest.split_once('/') {
            Some((h, v)) if !v.is_empty() => (h, decode(v)),
            Some((h, _)) => (h, "/".into()),
            None => (rest, "/".into()),
        };
        let default_port = if secure { 5671 } else { 5672 };
        let host = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => h,
            _ => hostport,
        };
        let addr = if host.len() < hostport.len() {
            hostport.to_string()
        } else {
            format!("{hostport}:{default_port}")
        };
        let tls = if secure {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(Tls::new(host, &tls_options(query)?)?)
        } else {
            None
        };
        Ok(Target {
            addr,
            tls,
            user,
            password,
            vhost,
            send_buffer: 0,
        })
    }
}

/// The TLS options of a URI query (RabbitMQ's URI specification); other
/// keys (heartbeat, channel_max…) are left to the defaults.
fn tls_options(query: &str) -> Result<tls::Options, String> {
    let mut options = tls::Options::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value);
        match key {
            "cacertfile" => options.cacertfile = Some(value),
            "certfile" => options.certfile = Some(value),
            "keyfile" => options.keyfile = Some(value),
            "server_name_indication" => options.server_name = Some(value),
            "verify" => match value.as_str() {
                "verify_none" => options.verify_none = true,
                "verify_peer" => options.verify_none = false,
                other => {
                    return Err(format!(
                        "verify={other}: expected verify_peer or verify_none"
                    ))
                }
            },
            _ => {}
        }
    }
    Ok(options)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A method frame's arguments, past class and method ids.
pub(crate) fn arguments(f: &Frame) -> Reader<'_> {
    Reader::new(&f.payload[4.min(f.payload.len())..])
}

/// The read half: frames off the socket.
pub(crate) struct FrameIn {
    read: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
}

impl FrameIn {
    pub(crate) async fn next(&mut self) -> io::Result<Frame> {
        loop {
            match decode_frame(&mut self.buf, u32::MAX) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(e.text)),
            }
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Whether a whole frame is already buffered.
    pub(crate) fn has_frame(&self) -> bool {
        self.buf.len() >= 7 && {
            let size = u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]]);
            self.buf.len() >= size as usize + 8
        }
    }

    /// The next method frame with the given ids; a channel or connection
    /// close is an error carrying its reply text.
    pub(crate) async fn expect(&mut self, class_id: u16, method_id: u16) -> io::Result<Frame> {
        loop {
            let f = self.next().await?;
            if f.kind != FrameType::Method {
                continue;
            }
            match method_ids(&f.payload) {
                (c, m) if (c, m) == (class_id, method_id) => return Ok(f),
                (10, 50) | (20, 40) => {
                    let mut r = arguments(&f);
                    let code = r.u16().unwrap_or(0);
                    let text = r.short_str().unwrap_or_default();
                    return Err(io::Error::other(format!(
                        "closed by the broker: {code} {text}"
                    )));
                }
                _ => {}
            }
        }
    }
}

/// The write half, with a buffer that batches frames into few writes.
pub(crate) struct FrameOut {
    write: Box<dyn AsyncWrite + Send + Unpin>,
    pub buf: BytesMut,
}

impl FrameOut {
    pub(crate) fn method(&mut self, channel: u16, class: AMQPClass) {
        encode::method(&mut self.buf, channel, &class);
    }

    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.write.write_all(&self.buf).await?;
            // Over TLS, records can stay in the session until a flush.
            self.write.flush().await?;
            self.buf.clear();
        }
        Ok(())
    }
}

async fn connect(target: &Target) -> io::Result<TcpStream> {
    if target.send_buffer == 0 {
        return TcpStream::connect(&target.addr).await;
    }
    let mut last = io::Error::other(format!("{} resolves to no address", target.addr));
    for addr in tokio::net::lookup_host(&target.addr).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_send_buffer_size(target.send_buffer)?;
        match socket.connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects, opens the connection and channel 1.
pub(crate) async fn open(target: &Target, name: &str) -> io::Result<(FrameIn, FrameOut)> {
    let socket = connect(target).await?;
    socket.set_nodelay(true)?;
    let (read, write): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match &target.tls {
        None => {
            let (read, write) = socket.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), socket)
                .await?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
    };
    let mut rx = FrameIn {
        read,
        buf: BytesMut::with_capacity(256 * 1024),
    };
    let mut tx = FrameOut {
        write,
        buf: BytesMut::with_capacity(256 * 1024),
    };
    tx.buf.extend_from_slice(PROTOCOL_HEADER);
    tx.flush().await?;
    rx.expect(10, 10).await?;
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("leveret perf")),
    );
    props.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from(name)),
    );
    let response = format!("\0{}\0{}", target.user, target.password);
    tx.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: response.as_str().into(),
            locale: "en_US".into(),
        })),
    );
    tx.flush().await?;
    let tune = rx.expect(10, 30).await?;
    let mut r = arguments(&tune);
    let channel_max = r.u16().unwrap_or(0);
    let frame_max = r.u32().unwrap_or(131072);
    tx.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        })),
    );
    tx.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: target.vhost.as_str().into(),
        })),
    );
    tx.method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    tx.flush().await?;
    rx.expect(10, 41).await?;
    rx.expect(20, 11).await?;
    Ok((rx, tx))
}

/// Closes the connection politely and waits for close-ok.
pub(crate) async fn close(rx: &mut FrameIn, tx: &mut FrameOut) -> io::Result<()> {
    tx.method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    tx.flush().await?;
    rx.expect(10, 51).await.map(drop)
}

pub(crate) async fn declare_queue(
    rx: &mut FrameIn,
    tx: &mut FrameOut,
    name: &str,
    durable: bool,
    exclusive: bool,
    arguments: FieldTable,
) -> io::Result<String> {
    tx.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable,
            exclusive,
            auto_delete: false,
            nowait: false,
            arguments,
        })),
    );
    tx.flush().await?;
    let ok = rx.expect(50, 11).await?;
    Ok(self::arguments(&ok).short_str().unwrap_or_default())
}

pub(crate) async fn delete_queue(
    rx: &mut FrameIn,
    tx: &mut FrameOut,
    name: &str,
) -> io::Result<()> {
    tx.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    );
    tx.flush().await?;
    rx.expect(50, 41).await.map(drop)
}

pub(crate) async fn declare_exchange(
    rx: &mut FrameIn,
    tx: &mut FrameOut,
    name: &str,
    kind: &str,
    durable: bool,
) -> io::Result<()> {
    tx.method(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            passive: false,
            durable,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    tx.flush().await?;
    rx.expect(40, 11).await.map(drop)
}

pub(crate) async fn bind(
    rx: &mut FrameIn,
    tx: &mut FrameOut,
    queue_name: &str,
    exchange_name: &str,
    routing_key: &str,
) -> io::Result<()> {
    tx.method(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: queue_name.into(),
            exchange: exchange_name.into(),
            routing_key: routing_key.into(),
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    tx.flush().await?;
    rx.expect(50, 21).await.map(drop)
}

pub(crate) async fn confirm_select(rx: &mut FrameIn, tx: &mut FrameOut) -> io::Result<()> {
    tx.method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    tx.flush().await?;
    rx.expect(85, 11).await.map(drop)
}

/// basic.qos (per consumer) and basic.consume.
pub(crate) async fn consume(
    rx: &mut FrameIn,
    tx: &mut FrameOut,
    queue_name: &str,
    prefetch: u16,
    no_ack: bool,
    arguments: FieldTable,
) -> io::Result<()> {
    if !no_ack {
        tx.method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: prefetch,
                global: false,
            })),
        );
        tx.flush().await?;
        rx.expect(60, 11).await?;
    }
    tx.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue_name.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments,
        })),
    );
    tx.flush().await?;
    rx.expect(60, 21).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let t = Target::parse("amqp://u:p%40ss@example:5673/%2f").unwrap();
        assert_eq!(
            (
                t.addr.as_str(),
                t.user.as_str(),
                t.password.as_str(),
                t.vhost.as_str()
            ),
            ("example:5673", "u", "p@ss", "/")
        );
        let t = Target::parse("amqp://localhost").unwrap();
        assert_eq!((t.addr.as_str(), t.vhost.as_str()), ("localhost:5672", "/"));
        let t = Target::parse("amqp://a:b@h:1/shop").unwrap();
        assert_eq!(t.vhost, "shop");
        assert!(Target::parse("http://x").is_err());
        let t = Target::parse("amqps://h?verify=verify_none").unwrap();
        assert_eq!(t.addr, "h:5671");
        assert!(t.tls.is_some());
        let t = Target::parse("amqps://[::1]:5999/v?verify=verify_none&heartbeat=5").unwrap();
        assert_eq!((t.addr.as_str(), t.vhost.as_str()), ("[::1]:5999", "v"));
        let err = Target::parse("amqps://h?cacertfile=/nonexistent.pem").unwrap_err();
        assert!(err.contains("/nonexistent.pem"), "{err}");
        assert!(Target::parse("amqps://h?verify=maybe").is_err());
    }
}
