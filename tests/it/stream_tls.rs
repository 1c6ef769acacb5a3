//! RabbitMQ's stream protocol over TLS (`stream.tls_listen`, RabbitMQ's
//! `stream.listeners.ssl`): rstream over TLS, SASL EXTERNAL with a client
//! certificate, the port TLS clients are told, hostile clients on the TLS
//! port, certificate rotation, and the listener in the management API.
//!
//! Certificates come from `tls.rs`'s test CA. RabbitMQ on 127.0.0.1 has no
//! stream TLS listener, so these run against Leveret only; the codes and
//! the EXTERNAL refusals follow rabbit_stream_reader and
//! rabbit_auth_mechanism_ssl.

use crate::common;
use crate::tls::{served_serial, tls_connect, Pair, Pki};

use leveret::config::{Addresses, Config};
use leveret::Listeners;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const METADATA: u16 = 15;
const PEER_PROPERTIES: u16 = 17;
const SASL_HANDSHAKE: u16 = 18;
const SASL_AUTHENTICATE: u16 = 19;
const TUNE: u16 = 20;
const OPEN: u16 = 21;
const HEARTBEAT: u16 = 23;
const RESPONSE: u16 = 0x8000;

const OK: u16 = 1;
const SASL_MECHANISM_NOT_SUPPORTED: u16 = 7;
const AUTHENTICATION_FAILURE: u16 = 8;

// ------------------------------------------------------------ the broker

struct Broker {
    stream: SocketAddr,
    stream_tls: SocketAddr,
    mgmt: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    data_dir: PathBuf,
}

/// Plain AMQP, HTTP and stream protocol on 127.0.0.1, and the stream
/// protocol over TLS with `server`'s certificate; no AMQPS, so the stream
/// listener alone makes the broker load the certificates.
fn config(server: &Pair) -> Config {
    let mut config = Config::default();
    config.server.listen = Addresses::one("127.0.0.1:0");
    config.server.mgmt_listen = Addresses::one("127.0.0.1:0");
    config.stream.listen = Addresses::one("127.0.0.1:0");
    config.stream.tls_listen = Addresses::one("127.0.0.1:0");
    config.tls.cert = server.cert.clone();
    config.tls.key = server.key.clone();
    config
}

/// [`config`] asking clients for certificates signed by `pki`'s CA.
fn verifying(pki: &Pki, server: &Pair) -> Config {
    let mut config = config(server);
    config.tls.ca = pki.ca();
    config.tls.verify_peer = true;
    config
}

impl Broker {
    async fn start(mut config: Config) -> Broker {
        let data_dir = std::env::temp_dir().join(common::unique("leveret-stream-tls"));
        config.server.data_dir = data_dir.clone();
        config.validate().unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = |ls: &[tokio::net::TcpListener]| ls[0].local_addr().unwrap();
        let (stream, stream_tls) = (addr(&listeners.stream), addr(&listeners.stream_tls));
        let mgmt = addr(&listeners.mgmt);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let core = leveret::Broker::open(config).unwrap();
        let task = tokio::spawn(leveret::serve_on(listeners, core, async {
            let _ = rx.await;
        }));
        Broker {
            stream,
            stream_tls,
            mgmt,
            shutdown: Some(tx),
            task: Some(task),
            data_dir,
        }
    }

    fn api(&self) -> common::http::Api {
        common::http::Api {
            addr: self.mgmt,
            user: "guest".into(),
            password: "guest".into(),
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

// ------------------------------------------------------------ a raw client

/// A stream protocol client over any byte stream (TCP or TLS).
struct Raw<S> {
    io: S,
    corr: u32,
}

fn string(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// A string at `at` and the position after it.
fn string_at(b: &[u8], at: usize) -> (String, usize) {
    let len = u16_at(b, at) as usize;
    let s = String::from_utf8(b[at + 2..at + 2 + len].to_vec()).unwrap();
    (s, at + 2 + len)
}

/// A response's properties map (after correlation id and code).
fn properties(body: &[u8]) -> Vec<(String, String)> {
    let mut at = 10;
    (0..u32_at(body, 6))
        .map(|_| {
            let (k, next) = string_at(body, at);
            let (v, next) = string_at(body, next);
            at = next;
            (k, v)
        })
        .collect()
}

/// In one order: RabbitMQ lists mechanisms in its registry's order.
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn property(props: &[(String, String)], key: &str) -> Option<String> {
    props.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(io: S) -> Raw<S> {
        Raw { io, corr: 0 }
    }

    async fn send(&mut self, key: u16, fields: &[u8]) {
        let mut frame = ((fields.len() + 4) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&key.to_be_bytes());
        frame.extend_from_slice(&1u16.to_be_bytes());
        frame.extend_from_slice(fields);
        self.io.write_all(&frame).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next frame's key and what follows its version, heartbeats
    /// skipped; `None` when the connection ended.
    async fn next(&mut self) -> Option<(u16, Vec<u8>)> {
        loop {
            let mut size = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), self.io.read_exact(&mut size))
                .await
                .expect("a frame within 10 s")
                .ok()?;
            let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
            self.io.read_exact(&mut frame).await.ok()?;
            let key = u16_at(&frame, 0);
            if key != HEARTBEAT {
                return Some((key, frame[4..].to_vec()));
            }
        }
    }

    /// A request with the next correlation id; its response's body.
    async fn request(&mut self, key: u16, fields: &[u8]) -> Vec<u8> {
        self.corr += 1;
        let mut all = self.corr.to_be_bytes().to_vec();
        all.extend_from_slice(fields);
        self.send(key, &all).await;
        let (got, body) = self.next().await.expect("a response, not the end");
        assert_eq!(got, key | RESPONSE);
        body
    }

    /// Peer properties and the SASL handshake: the mechanisms offered.
    async fn mechanisms(&mut self) -> Vec<String> {
        let props = self.request(PEER_PROPERTIES, &0u32.to_be_bytes()).await;
        assert_eq!(u16_at(&props, 4), OK);
        let body = self.request(SASL_HANDSHAKE, &[]).await;
        assert_eq!(u16_at(&body, 4), OK);
        let mut at = 10;
        (0..u32_at(&body, 6))
            .map(|_| {
                let (m, next) = string_at(&body, at);
                at = next;
                m
            })
            .collect()
    }

    /// SASL authenticate's code; on OK, the tune exchange too.
    async fn authenticate(&mut self, mechanism: &str, data: &[u8]) -> u16 {
        let mut fields = Vec::new();
        string(&mut fields, mechanism);
        fields.extend_from_slice(&(data.len() as u32).to_be_bytes());
        fields.extend_from_slice(data);
        let code = u16_at(&self.request(SASL_AUTHENTICATE, &fields).await, 4);
        if code == OK {
            let (key, _) = self.next().await.expect("tune");
            assert_eq!(key, TUNE);
            let mut tune = (1u32 << 20).to_be_bytes().to_vec();
            tune.extend_from_slice(&0u32.to_be_bytes());
            self.send(TUNE, &tune).await;
        }
        code
    }

    /// Open "/": the code and the advertised host and port.
    async fn open(&mut self) -> (u16, Vec<(String, String)>) {
        let mut fields = Vec::new();
        string(&mut fields, "/");
        let body = self.request(OPEN, &fields).await;
        let code = u16_at(&body, 4);
        (
            code,
            if code == OK {
                properties(&body)
            } else {
                vec![]
            },
        )
    }

    /// Logged in as guest with PLAIN and opened.
    async fn opened(io: S) -> (Raw<S>, Vec<(String, String)>) {
        let mut c = Raw::new(io);
        c.mechanisms().await;
        assert_eq!(c.authenticate("PLAIN", b"\0guest\0guest").await, OK);
        let (code, props) = c.open().await;
        assert_eq!(code, OK);
        (c, props)
    }

    /// Metadata for `stream`: its code and the (host, port) of each broker.
    async fn metadata(&mut self, stream: &str) -> (u16, Vec<(String, u32)>) {
        let mut fields = 1u32.to_be_bytes().to_vec();
        string(&mut fields, stream);
        let body = self.request(METADATA, &fields).await;
        let mut at = 8;
        let brokers = (0..u32_at(&body, 4))
            .map(|_| {
                let (host, next) = string_at(&body, at + 2);
                at = next + 4;
                (host, u32_at(&body, next))
            })
            .collect();
        // Streams: count, then name and code.
        let (_, after_name) = string_at(&body, at + 4);
        (u16_at(&body, after_name), brokers)
    }

    /// Whether the broker ends the connection within `limit`.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

// ------------------------------------------------------------ rstream

/// Runs tests/python/stream_tls_client.py (rstream over TLS, trusting
/// `pki`'s CA) against `port` to its end: its JSON line.
async fn rstream(pki: &Pki, port: u16, client: &[&str], args: &[&str]) -> serde_json::Value {
    let mut cmd = std::process::Command::new(crate::cross_client::python());
    cmd.current_dir(crate::cross_client::repo_root())
        .arg("tests/python/stream_tls_client.py")
        .args(["127.0.0.1", &port.to_string()])
        .arg(pki.ca())
        .args(client)
        .args(args);
    let out = crate::cross_client::run(cmd).await;
    assert!(
        out.success(),
        "{}",
        out.report(&format!(
            "stream_tls_client.py {client:?} {args:?} (rstream; scripts/install-test-deps installs it)"
        ))
    );
    serde_json::from_str(out.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

// ------------------------------------------------------------ tests

/// rstream over TLS publishes with confirms and reads back. Plain clients
/// are told another port (`advertised_port`, as behind a NAT): rstream
/// connects to a stream's leader where the metadata says, so it works only
/// if TLS clients are told the TLS port.
#[tokio::test]
async fn rstream_over_tls_publishes_with_confirms_and_consumes() {
    let pki = Pki::new("stream-rstream");
    let mut config = config(&pki.issue("localhost", 1, None));
    config.stream.advertised_port = 15552;
    let broker = Broker::start(config).await;
    let port = broker.stream_tls.port();
    let stream = common::unique("tls-stream");
    let published = rstream(&pki, port, &[], &["publish", &stream, "20", "m"]).await;
    assert_eq!(published["confirmed"], 20);
    let read = rstream(&pki, port, &[], &["consume", &stream, "20"]).await;
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(strings(&read["bodies"]), expected);
    rstream(&pki, port, &[], &["delete", &stream]).await;
    broker.stop().await;
}

/// Open and metadata tell a TLS client the TLS listener (or
/// `advertised_tls_host`/`advertised_tls_port`), a plain one the plain.
#[tokio::test]
async fn tls_clients_are_told_the_tls_port() {
    let pki = Pki::new("stream-advertised");
    let server = pki.issue("localhost", 1, None);
    let mut first = config(&server);
    first.stream.advertised_port = 15552;
    let broker = Broker::start(first).await;
    let stream = common::unique("advertised");
    let tls = tls_connect(broker.stream_tls, &pki.ca(), None)
        .await
        .unwrap();
    let (mut tls, props) = Raw::opened(tls).await;
    let tls_port = broker.stream_tls.port().to_string();
    assert_eq!(property(&props, "advertised_port"), Some(tls_port.clone()));
    assert_eq!(
        property(&props, "advertised_host").as_deref(),
        Some("127.0.0.1")
    );
    let mut create = Vec::new();
    string(&mut create, &stream);
    create.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(u16_at(&tls.request(13, &create).await, 4), OK);
    let (code, brokers) = tls.metadata(&stream).await;
    assert_eq!(code, OK);
    assert_eq!(
        brokers,
        [("127.0.0.1".to_string(), broker.stream_tls.port() as u32)]
    );
    // A plain client is told the configured plain port.
    let plain = TcpStream::connect(broker.stream).await.unwrap();
    let (mut plain, props) = Raw::opened(plain).await;
    assert_eq!(
        property(&props, "advertised_port").as_deref(),
        Some("15552")
    );
    let (_, brokers) = plain.metadata(&stream).await;
    assert_eq!(brokers, [("127.0.0.1".to_string(), 15552)]);
    broker.stop().await;

    // Configured TLS host and port win for TLS clients only.
    let mut second = config(&server);
    second.stream.advertised_host = "plain.example".into();
    second.stream.advertised_tls_host = "tls.example".into();
    second.stream.advertised_tls_port = 25551;
    let broker = Broker::start(second).await;
    let tls = tls_connect(broker.stream_tls, &pki.ca(), None)
        .await
        .unwrap();
    let (_tls, props) = Raw::opened(tls).await;
    assert_eq!(
        property(&props, "advertised_host").as_deref(),
        Some("tls.example")
    );
    assert_eq!(
        property(&props, "advertised_port").as_deref(),
        Some("25551")
    );
    let plain = TcpStream::connect(broker.stream).await.unwrap();
    let (_plain, props) = Raw::opened(plain).await;
    assert_eq!(
        property(&props, "advertised_host").as_deref(),
        Some("plain.example")
    );
    assert_eq!(
        property(&props, "advertised_port"),
        Some(broker.stream.port().to_string())
    );
    broker.stop().await;
}

/// A verified client certificate logs in with EXTERNAL as the user its
/// common name names, over the raw protocol and with rstream; EXTERNAL is
/// offered on every TLS connection and refused with its reason when there
/// is no certificate or no such user; plain connections do not offer it.
#[tokio::test]
async fn external_logs_in_with_a_verified_client_certificate() {
    let pki = Pki::new("stream-external");
    let server = pki.issue("localhost", 1, None);
    let guest = pki.issue("guest", 2, None);
    let nobody = pki.issue("nobody-at-all", 3, None);
    let broker = Broker::start(verifying(&pki, &server)).await;

    let io = tls_connect(broker.stream_tls, &pki.ca(), Some(&guest))
        .await
        .unwrap();
    let mut c = Raw::new(io);
    assert_eq!(
        sorted(c.mechanisms().await),
        ["AMQPLAIN", "EXTERNAL", "PLAIN"]
    );
    // The response is not looked at.
    assert_eq!(c.authenticate("EXTERNAL", b"").await, OK);
    assert_eq!(c.open().await.0, OK);
    // The API lists it as a TLS stream connection logged in with EXTERNAL.
    let listed = broker.api().get("/api/stream/connections").await;
    let listed = listed.json.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["ssl"], true, "{:?}", listed[0]);
    assert_eq!(listed[0]["auth_mechanism"], "EXTERNAL");
    assert_eq!(listed[0]["user"], "guest");

    let port = broker.stream_tls.port();
    let stream = common::unique("external");
    let cert = [
        "--cert",
        guest.cert.to_str().unwrap(),
        "--key",
        guest.key.to_str().unwrap(),
        "--external",
    ];
    let published = rstream(&pki, port, &cert, &["publish", &stream, "5", "x"]).await;
    assert_eq!(published["confirmed"], 5);
    let read = rstream(&pki, port, &cert, &["consume", &stream, "5"]).await;
    assert_eq!(strings(&read["bodies"]), ["x0", "x1", "x2", "x3", "x4"]);

    // Refusals come after RabbitMQ's silent-close delay: run them together.
    let refused = |client: Option<Pair>| {
        let (addr, ca) = (broker.stream_tls, pki.ca());
        async move {
            let io = tls_connect(addr, &ca, client.as_ref()).await.unwrap();
            let mut c = Raw::new(io);
            assert!(c.mechanisms().await.contains(&"EXTERNAL".to_string()));
            let code = c.authenticate("EXTERNAL", b"").await;
            (code, c.closed_within(Duration::from_secs(5)).await)
        }
    };
    let plain = async {
        let mut c = Raw::new(TcpStream::connect(broker.stream).await.unwrap());
        // RabbitMQ 3.10 on 5552 answers ["AMQPLAIN", "PLAIN"].
        assert_eq!(sorted(c.mechanisms().await), ["AMQPLAIN", "PLAIN"]);
        let code = c.authenticate("EXTERNAL", b"").await;
        (code, c.closed_within(Duration::from_secs(5)).await)
    };
    let (no_such_user, no_cert, plain) = tokio::join!(refused(Some(nobody)), refused(None), plain);
    assert_eq!(no_such_user, (AUTHENTICATION_FAILURE, true));
    assert_eq!(no_cert, (AUTHENTICATION_FAILURE, true));
    assert_eq!(plain, (SASL_MECHANISM_NOT_SUPPORTED, true));
    broker.stop().await;
}

/// Plain TCP on the TLS port, a stalled handshake and a silent client cost
/// the broker nothing lasting: each ends within the handshake timeout
/// while TLS and plain clients are served meanwhile.
#[tokio::test]
async fn a_plain_client_on_the_tls_port_is_refused_without_harming_others() {
    let pki = Pki::new("stream-hostile");
    let mut config = config(&pki.issue("localhost", 1, None));
    config.limits.handshake_timeout_ms = 1000;
    let broker = Broker::start(config).await;
    let addr = broker.stream_tls;
    let io = tls_connect(addr, &pki.ca(), None).await.unwrap();
    let (mut bystander, _) = Raw::opened(io).await;

    // A stream client speaking plain TCP to the TLS port.
    let mut plain = Raw::new(TcpStream::connect(addr).await.unwrap());
    plain.corr = 1;
    plain.send(PEER_PROPERTIES, &[0, 0, 0, 1, 0, 0, 0, 0]).await;
    // Half a ClientHello record, then nothing; and nothing at all.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();

    let began = Instant::now();
    let io = tls_connect(addr, &pki.ca(), None).await.unwrap();
    let (mut fresh, _) = Raw::opened(io).await;
    let (_plain_client, _) = Raw::opened(TcpStream::connect(broker.stream).await.unwrap()).await;
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );

    // The plain client gets at most a TLS alert, no stream frame, and is
    // closed at once.
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), plain.io.read(&mut buf))
        .await
        .expect("the plain client is answered or closed promptly")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "a TLS alert or nothing: {:?}",
        &buf[..n]
    );
    assert!(plain.closed_within(Duration::from_secs(2)).await);
    for stream in [&mut stalled, &mut silent] {
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a stalled TLS handshake was not timed out");
    }
    assert!(began.elapsed() >= Duration::from_millis(900));

    // Everyone else is untouched.
    for c in [&mut bystander, &mut fresh] {
        let (code, _) = c.metadata("no-such-stream").await;
        assert_eq!(code, 2);
    }
    broker.stop().await;
}

/// A reload serves new stream TLS connections the new certificate; open
/// ones keep their session.
#[tokio::test]
async fn rotated_certificates_are_served_to_new_stream_connections() {
    let pki = Pki::new("stream-rotate");
    let first = pki.issue("localhost", 1, None);
    let second = pki.issue("localhost", 2, None);
    let live = Pair {
        cert: pki.dir.join("live.pem"),
        key: pki.dir.join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let broker = Broker::start(config(&live)).await;
    let addr = broker.stream_tls;
    assert_eq!(served_serial(addr, &pki.ca()).await, 1);
    let io = tls_connect(addr, &pki.ca(), None).await.unwrap();
    let (mut open, _) = Raw::opened(io).await;

    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    let reply = broker
        .api()
        .post("/api/tls/reload", serde_json::json!({}))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    assert_eq!(served_serial(addr, &pki.ca()).await, 2);
    let io = tls_connect(addr, &pki.ca(), None).await.unwrap();
    let (mut new, _) = Raw::opened(io).await;
    for c in [&mut open, &mut new] {
        assert_eq!(c.metadata("no-such-stream").await.0, 2);
    }
    broker.stop().await;
}

/// The management API lists the listener as RabbitMQ names it, and the
/// certificate check covers it.
#[tokio::test]
async fn the_tls_listener_shows_as_stream_ssl() {
    let pki = Pki::new("stream-listed");
    let now_year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952) as i32;
    // Expires on 1 January of the year after next: 1 to 2 years away.
    let server = pki.issue("localhost", 1, Some((now_year - 1, now_year + 2)));
    let broker = Broker::start(config(&server)).await;
    let api = broker.api();
    let overview = api.get("/api/overview").await;
    assert_eq!(overview.status, 200, "{}", overview.text);
    let listed: Vec<&str> = overview.json["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["protocol"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"stream/ssl"), "{listed:?}");
    assert!(listed.contains(&"stream"), "{listed:?}");
    let reply = api
        .get("/api/health/checks/certificate-expiration/3/years")
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    let expired = &reply.json["expired"][0];
    assert_eq!(expired["protocol"], "stream/ssl", "{}", reply.text);
    assert_eq!(expired["port"], broker.stream_tls.port());
    broker.stop().await;
}

/// Subscribes to `stream` from the first offset with credit for every
/// chunk, and reads its `total` records in small sips, so the broker's
/// writes keep finding the socket full: the records read, or how far it
/// got before 20 s of silence.
async fn read_slowly(addr: SocketAddr, ca: PathBuf, stream: String, total: u32) -> u32 {
    const SUBSCRIBE: u16 = 7;
    const DELIVER: u16 = 8;
    let io = tls_connect(addr, &ca, None).await.unwrap();
    // Heartbeats off (the tune [`Raw::opened`] answers).
    let (mut c, _) = Raw::opened(io).await;
    let mut subscribe = vec![1u8];
    string(&mut subscribe, &stream);
    subscribe.extend_from_slice(&1u16.to_be_bytes()); // first
    subscribe.extend_from_slice(&1000u16.to_be_bytes()); // credit
    subscribe.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(u16_at(&c.request(SUBSCRIBE, &subscribe).await, 4), OK);
    let mut pending: Vec<u8> = Vec::new();
    let mut records = 0u32;
    let mut sip = vec![0u8; 16 * 1024];
    while records < total {
        let read = tokio::time::timeout(Duration::from_secs(20), c.io.read(&mut sip)).await;
        let Ok(Ok(n @ 1..)) = read else {
            return records;
        };
        pending.extend_from_slice(&sip[..n]);
        while pending.len() >= 4 {
            let size = u32_at(&pending, 0) as usize;
            if pending.len() < 4 + size {
                break;
            }
            let frame: Vec<u8> = pending.drain(..4 + size).skip(4).collect();
            if u16_at(&frame, 0) == DELIVER {
                // Key, version, subscription id, then the chunk: magic and
                // version, type, entries (u16), records (u32).
                records += u32_at(&frame, 5 + 4);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    records
}

/// Consumers that read slowly, so the socket is full whenever the broker
/// writes, still get the whole stream: records the TLS session holds after
/// a write are flushed, not left for a next write that may never come
/// (heartbeats off). Four readers: one alone stalled in about 40% of runs
/// without the flush.
#[tokio::test]
async fn slow_readers_over_tls_get_the_whole_stream() {
    let pki = Pki::new("stream-slow");
    let mut config = config(&pki.issue("localhost", 1, None));
    // A small send buffer: the socket is full at most writes.
    config.server.tcp_send_buffer = 4096;
    let broker = Broker::start(config).await;
    let port = broker.stream_tls.port();
    let stream = common::unique("slow");
    let prefix = "p".repeat(2000);
    let published = rstream(&pki, port, &[], &["publish", &stream, "1000", &prefix]).await;
    assert_eq!(published["confirmed"], 1000);
    let read = || read_slowly(broker.stream_tls, pki.ca(), stream.clone(), 1000);
    let got = tokio::join!(read(), read(), read(), read());
    assert_eq!(got, (1000, 1000, 1000, 1000));
    broker.stop().await;
}

/// `leveret serve --stream-tls-listen` with only the stream protocol on
/// TLS: the certificates load for it alone, and SIGHUP reloads them.
#[test]
fn the_flag_serves_stream_tls_and_sighup_reloads_it() {
    use common::process::BrokerProcess;
    let pki = Pki::new("stream-flag");
    let first = pki.issue("localhost", 1, None);
    let second = pki.issue("localhost", 2, None);
    let live = Pair {
        cert: pki.dir.join("live.pem"),
        key: pki.dir.join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let data = pki.dir.join("data");
    let broker = BrokerProcess::spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--stream-listen",
        "127.0.0.1:0",
        "--mgmt-listen",
        "",
        "--stream-tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        live.cert.to_str().unwrap(),
        "--tls-key",
        live.key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let line = broker
        .wait_for_log(Duration::from_secs(10), |l| {
            l.contains("stream protocol (TLS) listening")
        })
        .unwrap_or_else(|| panic!("no stream TLS listener: {}", broker.stderr()));
    let at = line.find("addr=").unwrap() + 5;
    let addr: SocketAddr = line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(served_serial(addr, &pki.ca())), 1);
    rt.block_on(async {
        let io = tls_connect(addr, &pki.ca(), None).await.unwrap();
        Raw::opened(io).await;
    });

    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(broker
        .wait_for_log(Duration::from_secs(5), |l| l
            .contains("TLS certificates reloaded"))
        .is_some());
    assert_eq!(rt.block_on(served_serial(addr, &pki.ca())), 2);
}
