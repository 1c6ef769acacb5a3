//! TLS (issue 16): AMQPS with lapin, pika and amqplib, client certificates
//! and SASL EXTERNAL, HTTPS for the management API, certificate rotation,
//! bad certificate files at start-up, stalled handshakes, and listeners on
//! several addresses (IPv4, IPv6, dual-stack).
//!
//! Certificates are made here with rcgen: a CA, server certificates for
//! `localhost`/`127.0.0.1`/`::1` and client certificates, in a temporary
//! directory. RabbitMQ on 127.0.0.1:5672 has no TLS listener, so these run
//! against Leveret only; the refusal texts follow rabbitmq_auth_mechanism_ssl
//! and rabbit_reader. (`stream_tls` uses the certificates and clients here.)

use crate::common;

use common::process::BrokerProcess;
use leveret::config::{Addresses, Config};
use leveret::Listeners;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

// ------------------------------------------------------------ certificates

/// A test CA and the files it issues, in a directory removed on drop.
pub(crate) struct Pki {
    pub(crate) dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as files.
#[derive(Clone)]
pub(crate) struct Pair {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Pki {
    pub(crate) fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(common::unique(&format!("leveret-tls-{name}")));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Leveret test CA {name}"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `cn` (also the file names), valid for the
    /// loopback names, with `serial`; `validity` overrides the default
    /// (valid from yesterday for a year).
    pub(crate) fn issue(&self, cn: &str, serial: u64, validity: Option<(i32, i32)>) -> Pair {
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{cn}-{serial}.pem")),
            key: self.dir.join(format!("{cn}-{serial}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------ the broker

/// An in-process broker with the listeners `config` names, each on its
/// own ephemeral port.
struct TlsBroker {
    amqp: Vec<SocketAddr>,
    amqps: Vec<SocketAddr>,
    mgmt: Vec<SocketAddr>,
    mgmts: Vec<SocketAddr>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    data_dir: PathBuf,
}

fn addrs(listeners: &[tokio::net::TcpListener]) -> Vec<SocketAddr> {
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

/// A configuration serving AMQPS on 127.0.0.1 with `server`, plain AMQP
/// and HTTP on 127.0.0.1 too.
fn tls_config(server: &Pair) -> Config {
    let mut config = Config::default();
    config.server.listen = Addresses::one("127.0.0.1:0");
    config.server.mgmt_listen = Addresses::one("127.0.0.1:0");
    config.tls.listen = Addresses::one("127.0.0.1:0");
    config.stream.listen = Addresses::one("127.0.0.1:0");
    config.tls.cert = server.cert.clone();
    config.tls.key = server.key.clone();
    config
}

impl TlsBroker {
    async fn start(mut config: Config) -> TlsBroker {
        let data_dir = std::env::temp_dir().join(common::unique("leveret-tls-data"));
        config.server.data_dir = data_dir.clone();
        config.validate().unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let (amqp, amqps) = (addrs(&listeners.amqp), addrs(&listeners.amqps));
        let (mgmt, mgmts) = (addrs(&listeners.mgmt), addrs(&listeners.mgmts));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let core = leveret::Broker::open(config).unwrap();
        let task = tokio::spawn(leveret::serve_on(listeners, core, async {
            let _ = rx.await;
        }));
        TlsBroker {
            amqp,
            amqps,
            mgmt,
            mgmts,
            shutdown: Some(tx),
            task: Some(task),
            data_dir,
        }
    }

    fn amqps_port(&self) -> u16 {
        self.amqps[0].port()
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

// ------------------------------------------------------------ clients

fn lapin_tls(ca: &Path, client: Option<&Pair>) -> lapin::tcp::OwnedTLSConfig {
    lapin::tcp::OwnedTLSConfig {
        identity: client.map(|c| lapin::tcp::OwnedIdentity::PKCS8 {
            pem: std::fs::read(&c.cert).unwrap(),
            key: std::fs::read(&c.key).unwrap(),
        }),
        cert_chain: Some(std::fs::read_to_string(ca).unwrap()),
    }
}

async fn lapin_connect(
    uri: &str,
    ca: &Path,
    client: Option<&Pair>,
) -> Result<lapin::Connection, lapin::Error> {
    let connect = lapin::Connection::connect_with_config(
        uri,
        lapin::ConnectionProperties::default(),
        lapin_tls(ca, client),
        lapin::runtime::default_runtime().unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .expect("lapin connect did not finish in 10 s")
}

/// A round trip on `conn`: an exclusive queue, a publish and a get.
async fn round_trip(conn: &lapin::Connection, body: &[u8]) {
    use lapin::options::*;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        q.name().as_str().into(),
        BasicPublishOptions::default(),
        body,
        Default::default(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(m) = ch
            .basic_get(q.name().as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            assert_eq!(m.delivery.data, body);
            break;
        }
        assert!(Instant::now() < deadline, "message did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ch.close(200, "bye".into()).await.unwrap();
}

/// A TLS connection made with rustls, trusting `ca`, with `client`'s
/// certificate if given.
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Pair>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(leveret::tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&c.cert)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_file(&c.key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let socket = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, socket)
        .await
}

/// The serial number of the certificate the server at `addr` presents.
pub(crate) async fn served_serial(addr: SocketAddr, ca: &Path) -> u64 {
    let stream = tls_connect(addr, ca, None).await.unwrap();
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let serial = parsed.raw_serial();
    serial.iter().fold(0u64, |n, &b| (n << 8) | b as u64)
}

/// Sends the AMQP protocol header and reads what the broker answers
/// (connection.start) within 5 s; an error when the TLS layer fails.
async fn amqp_start<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
) -> std::io::Result<Vec<u8>> {
    stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
    stream.flush().await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("no answer in 5 s"))??;
    buf.truncate(n);
    Ok(buf)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ------------------------------------------------------------ AMQPS

#[tokio::test]
async fn lapin_over_amqps_publishes_and_gets() {
    let pki = Pki::new("lapin");
    let server = pki.issue("localhost", 1, None);
    let broker = TlsBroker::start(tls_config(&server)).await;
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", broker.amqps_port());
    let conn = lapin_connect(&uri, &pki.ca(), None).await.unwrap();
    round_trip(&conn, b"over tls").await;
    // The management API says which connections use TLS.
    let api = common::http::Api {
        addr: broker.mgmt[0],
        user: "guest".into(),
        password: "guest".into(),
    };
    let listed = api.get("/api/connections").await.json;
    assert_eq!(listed[0]["ssl"], true, "{listed}");
    assert_eq!(listed[0]["auth_mechanism"], "PLAIN", "{listed}");
    // What the session negotiated, in RabbitMQ's (Erlang ssl's) words.
    assert_eq!(listed[0]["ssl_protocol"], "tlsv1.3", "{listed}");
    assert_eq!(listed[0]["ssl_key_exchange"], "any", "{listed}");
    assert_eq!(listed[0]["ssl_hash"], "aead", "{listed}");
    let cipher = listed[0]["ssl_cipher"].as_str().unwrap_or_default();
    assert!(
        ["aes_256_gcm", "aes_128_gcm", "chacha20_poly1305"].contains(&cipher),
        "{listed}"
    );
    assert_eq!(
        listed[0]["peer_cert_subject"],
        serde_json::Value::Null,
        "{listed}"
    );
    conn.close(200, "bye".into()).await.unwrap();
    // The plain listener still serves beside it.
    let plain = format!("amqp://guest:guest@{}/%2f", broker.amqp[0]);
    let conn = lapin::Connection::connect(&plain, Default::default())
        .await
        .unwrap();
    round_trip(&conn, b"plain").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_at_the_handshake() {
    let pki = Pki::new("right");
    let other = Pki::new("wrong");
    let broker = TlsBroker::start(tls_config(&pki.issue("localhost", 1, None))).await;
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", broker.amqps_port());
    let err = lapin_connect(&uri, &other.ca(), None)
        .await
        .map(drop)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("UnknownIssuer") || text.contains("certificate"),
        "{text}"
    );
    let err = tls_connect(broker.amqps[0], &other.ca(), None)
        .await
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    broker.stop().await;
}

#[tokio::test]
async fn plain_amqp_can_be_turned_off() {
    let pki = Pki::new("tlsonly");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.server.listen = Addresses::default();
    let broker = TlsBroker::start(config).await;
    assert!(broker.amqp.is_empty());
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", broker.amqps_port());
    let conn = lapin_connect(&uri, &pki.ca(), None).await.unwrap();
    round_trip(&conn, b"tls only").await;
    broker.stop().await;
}

/// A client certificate is required: one without is refused in the TLS
/// handshake (TLS 1.3: the alert arrives as the client first reads), one
/// with a certificate of the CA gets in.
#[tokio::test]
async fn fail_if_no_peer_cert_refuses_a_client_without_a_certificate() {
    let pki = Pki::new("mtls");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.tls.ca = pki.ca();
    config.tls.verify_peer = true;
    config.tls.fail_if_no_peer_cert = true;
    let broker = TlsBroker::start(config).await;
    let addr = broker.amqps[0];

    let refused = match tls_connect(addr, &pki.ca(), None).await {
        Err(e) => e,
        Ok(mut stream) => amqp_start(&mut stream).await.map(drop).unwrap_err(),
    };
    assert!(
        refused.to_string().contains("CertificateRequired"),
        "{refused}"
    );
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", broker.amqps_port());
    assert!(lapin_connect(&uri, &pki.ca(), None).await.is_err());

    // A certificate from another CA is refused too.
    let strangers = Pki::new("stranger");
    let stranger = strangers.issue("guest", 7, None);
    let refused = match tls_connect(addr, &pki.ca(), Some(&stranger)).await {
        Err(e) => e,
        Ok(mut stream) => amqp_start(&mut stream).await.map(drop).unwrap_err(),
    };
    assert!(refused.to_string().contains("UnknownCA"), "{refused}");

    let client = pki.issue("someone", 2, None);
    let conn = lapin_connect(&uri, &pki.ca(), Some(&client)).await.unwrap();
    round_trip(&conn, b"mutual").await;
    broker.stop().await;
}

// ------------------------------------------------------------ EXTERNAL

#[tokio::test]
async fn external_logs_in_as_the_certificates_common_name() {
    let pki = Pki::new("external");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.tls.ca = pki.ca();
    config.tls.verify_peer = true;
    let broker = TlsBroker::start(config).await;
    let uri = format!(
        "amqps://localhost:{}/%2f?auth_mechanism=external",
        broker.amqps_port()
    );

    // EXTERNAL is offered over TLS only.
    let mut tls = tls_connect(broker.amqps[0], &pki.ca(), None).await.unwrap();
    let start = amqp_start(&mut tls).await.unwrap();
    assert!(contains(&start, b"PLAIN AMQPLAIN EXTERNAL"));
    let mut plain = TcpStream::connect(broker.amqp[0]).await.unwrap();
    let start = amqp_start(&mut plain).await.unwrap();
    assert!(contains(&start, b"PLAIN AMQPLAIN") && !contains(&start, b"EXTERNAL"));

    // CN=guest: the user exists, no password asked.
    let guest = pki.issue("guest", 2, None);
    let conn = lapin_connect(&uri, &pki.ca(), Some(&guest)).await.unwrap();
    round_trip(&conn, b"external").await;
    let api = common::http::Api {
        addr: broker.mgmt[0],
        user: "guest".into(),
        password: "guest".into(),
    };
    let listed = api.get("/api/connections").await.json;
    assert_eq!(listed[0]["auth_mechanism"], "EXTERNAL", "{listed}");
    assert_eq!(listed[0]["user"], "guest", "{listed}");
    // The client's certificate, as RabbitMQ shows it.
    assert_eq!(listed[0]["peer_cert_subject"], "CN=guest", "{listed}");
    assert_eq!(
        listed[0]["peer_cert_issuer"], "CN=Leveret test CA external",
        "{listed}"
    );
    let validity = listed[0]["peer_cert_validity"].as_str().unwrap_or_default();
    let shape =
        regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ - \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
            .unwrap();
    assert!(shape.is_match(validity), "{listed}");
    conn.close(200, "bye".into()).await.unwrap();

    // A name that is no user, and no certificate at all: RabbitMQ's refusal.
    let refusal = "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.";
    let nobody = pki.issue("nobody", 3, None);
    let err = lapin_connect(&uri, &pki.ca(), Some(&nobody))
        .await
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains(refusal), "{err}");
    let err = lapin_connect(&uri, &pki.ca(), None)
        .await
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains(refusal), "{err}");
    broker.stop().await;
}

#[tokio::test]
async fn external_can_take_the_name_from_a_subject_alternative_name() {
    let pki = Pki::new("san");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.tls.ca = pki.ca();
    config.tls.verify_peer = true;
    config.tls.ssl_cert_login_from = leveret::config::CertLoginFrom::SubjectAlternativeName;
    config.tls.ssl_cert_login_san_type = leveret::config::SanType::Dns;
    // The client certificate's DNS names are localhost, then nothing
    // else: index 0 is "localhost", which is no user.
    let broker = TlsBroker::start(config).await;
    let uri = format!(
        "amqps://localhost:{}/%2f?auth_mechanism=external",
        broker.amqps_port()
    );
    let guest_cn = pki.issue("guest", 2, None);
    let err = lapin_connect(&uri, &pki.ca(), Some(&guest_cn))
        .await
        .map(drop)
        .unwrap_err();
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    broker.stop().await;
}

// ------------------------------------------------------------ start-up

#[tokio::test]
async fn bad_certificate_files_stop_the_start_naming_the_file() {
    let pki = Pki::new("badfiles");
    let good = pki.issue("localhost", 1, None);
    let other = pki.issue("other", 2, None);
    let expired = pki.issue("expired", 3, Some((2000, 2001)));
    let not_pem = pki.dir.join("not-pem.pem");
    std::fs::write(&not_pem, "this is no certificate\n").unwrap();
    let missing = pki.dir.join("missing.pem");
    let cases: [(&Path, &Path, &[&str]); 4] = [
        (&missing, &good.key, &["missing.pem", "cannot read"]),
        (&not_pem, &good.key, &["not-pem.pem", "no PEM certificate"]),
        (
            &good.cert,
            &other.key,
            &["other-2.key", "does not match", "localhost-1.pem"],
        ),
        (
            &expired.cert,
            &expired.key,
            &["expired-3.pem", "expired on"],
        ),
    ];
    for (cert, key, words) in cases {
        let mut config = tls_config(&good);
        config.tls.cert = cert.to_owned();
        config.tls.key = key.to_owned();
        let err = Listeners::bind(&config).await.map(drop).unwrap_err();
        let text = err.to_string();
        for w in words {
            assert!(text.contains(w), "{text} lacks {w}");
        }
    }
    let mut config = tls_config(&good);
    config.tls.key = not_pem.clone();
    let text = Listeners::bind(&config)
        .await
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("not-pem.pem") && text.contains("no PEM private key"),
        "{text}"
    );

    // What an operator sees: the binary exits, naming the file.
    let data = pki.dir.join("data");
    let mut broker = BrokerProcess::launch(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--stream-listen",
        "127.0.0.1:0",
        "--mgmt-listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        expired.cert.to_str().unwrap(),
        "--tls-key",
        expired.key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let status = broker.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(!status.success());
    let stderr = broker.stderr();
    assert!(
        stderr.contains("expired-3.pem") && stderr.contains("expired on"),
        "{stderr}"
    );
}

// ------------------------------------------------------------ hostile clients

/// A client that opens TCP and stalls in the TLS handshake holds a
/// handshake place only until the handshake timeout, and no other client
/// waits for it meanwhile.
#[tokio::test]
async fn a_client_stalling_in_the_tls_handshake_is_timed_out_alone() {
    let pki = Pki::new("stall");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.limits.handshake_timeout_ms = 1000;
    let broker = TlsBroker::start(config).await;
    let addr = broker.amqps[0];

    // Half a ClientHello record, then nothing.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Garbage instead of TLS: closed at once, nobody else hurt.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();

    let began = Instant::now();
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", broker.amqps_port());
    let conn = lapin_connect(&uri, &pki.ca(), None).await.unwrap();
    round_trip(&conn, b"not held up").await;
    assert!(
        began.elapsed() < Duration::from_millis(900),
        "{:?}",
        began.elapsed()
    );

    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), garbage.read(&mut buf))
        .await
        .expect("garbage closed promptly")
        .unwrap_or(0);
    // rustls may answer with an alert before closing; nothing AMQP.
    assert!(!contains(&buf[..n], b"AMQP"));
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
        assert!(closed.is_ok(), "a stalled handshake was not timed out");
    }
    assert!(began.elapsed() >= Duration::from_millis(900));
    round_trip(&conn, b"still fine").await;
    broker.stop().await;
}

// ------------------------------------------------------------ rotation

#[tokio::test]
async fn reload_serves_new_connections_the_new_certificate() {
    let pki = Pki::new("rotate");
    let first = pki.issue("localhost", 1, None);
    let second = pki.issue("localhost", 2, None);
    let live = Pair {
        cert: pki.dir.join("live.pem"),
        key: pki.dir.join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let broker = TlsBroker::start(tls_config(&live)).await;
    let addr = broker.amqps[0];
    assert_eq!(served_serial(addr, &pki.ca()).await, 1);
    let uri = format!("amqps://guest:guest@localhost:{}/%2f", broker.amqps_port());
    let open = lapin_connect(&uri, &pki.ca(), None).await.unwrap();

    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    let api = common::http::Api {
        addr: broker.mgmt[0],
        user: "guest".into(),
        password: "guest".into(),
    };
    assert_eq!(
        api.post("/api/tls/reload", serde_json::json!({}))
            .await
            .status,
        204
    );
    assert_eq!(served_serial(addr, &pki.ca()).await, 2);
    round_trip(&open, b"the open connection keeps its session").await;

    // A bad file is refused, naming it, and the certificate in use stays.
    std::fs::write(&live.cert, "garbage").unwrap();
    // Administrators only.
    let created = api
        .put(
            "/api/users/watcher",
            serde_json::json!({"password": "pw", "tags": "management"}),
        )
        .await;
    assert!(
        created.status == 201 || created.status == 204,
        "{}",
        created.text
    );
    let refused = api
        .as_user("watcher", "pw")
        .post("/api/tls/reload", serde_json::json!({}))
        .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(refused.json["reason"], "Not administrator user");
    let reply = api.post("/api/tls/reload", serde_json::json!({})).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json["reason"].as_str().unwrap().contains("live.pem"),
        "{}",
        reply.text
    );
    assert_eq!(served_serial(addr, &pki.ca()).await, 2);
    broker.stop().await;
}

#[test]
fn sighup_reloads_the_certificate() {
    let pki = Pki::new("sighup");
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
        "",
        "--stream-listen",
        "127.0.0.1:0",
        "--mgmt-listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        live.cert.to_str().unwrap(),
        "--tls-key",
        live.key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    // TLS only: the one "accepting" line is the AMQPS listener's.
    let addr: SocketAddr = broker.addr().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(served_serial(addr, &pki.ca())), 1);

    std::fs::write(&live.cert, "garbage").unwrap();
    hup(broker.pid());
    assert!(broker
        .wait_for_log(Duration::from_secs(5), |l| l.contains("TLS reload refused")
            && l.contains("live.pem"))
        .is_some());
    assert_eq!(rt.block_on(served_serial(addr, &pki.ca())), 1);

    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    hup(broker.pid());
    assert!(broker
        .wait_for_log(Duration::from_secs(5), |l| l
            .contains("TLS certificates reloaded"))
        .is_some());
    assert_eq!(rt.block_on(served_serial(addr, &pki.ca())), 2);
}

fn hup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

// ------------------------------------------------------------ HTTPS

/// One HTTP/1.1 GET as guest over `stream`; the status and body.
async fn get_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
) -> std::io::Result<(u16, String)> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("no response in 5 s"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    Ok((status, text))
}

#[tokio::test]
async fn management_api_over_https_with_its_own_certificate() {
    let pki = Pki::new("https");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    let mgmt = pki.issue("localhost", 5, None);
    config.tls.mgmt_listen = Addresses::one("127.0.0.1:0");
    config.tls.mgmt_cert = mgmt.cert.clone();
    config.tls.mgmt_key = mgmt.key.clone();
    config.mgmt.request_timeout_ms = 1000;
    // Client certificates are for AMQPS: HTTPS asks for none.
    config.tls.ca = pki.ca();
    config.tls.verify_peer = true;
    config.tls.fail_if_no_peer_cert = true;
    let broker = TlsBroker::start(config).await;
    let https = broker.mgmts[0];

    // A client stalling in the handshake does not hold up a request.
    let mut stalled = TcpStream::connect(https).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let began = Instant::now();
    let stream = tls_connect(https, &pki.ca(), None).await.unwrap();
    let (status, body) = get_over(stream, "/api/overview").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"amqp/ssl\"") && body.contains("\"https\""),
        "{body}"
    );
    assert!(began.elapsed() < Duration::from_millis(900));
    assert_eq!(served_serial(https, &pki.ca()).await, 5);
    assert_eq!(served_serial(broker.amqps[0], &pki.ca()).await, 1);

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let plain = TcpStream::connect(https).await.unwrap();
    assert!(get_over(plain, "/api/overview").await.is_err());
    // The stalled handshake is closed within the request timeout.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(n) = stalled.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the stalled HTTPS handshake was not timed out"
    );
    // The plain management listener still answers beside it.
    let plain = TcpStream::connect(broker.mgmt[0]).await.unwrap();
    assert_eq!(get_over(plain, "/api/whoami").await.unwrap().0, 200);
    broker.stop().await;
}

// ------------------------------------------------------------ listeners

#[tokio::test]
async fn every_listen_address_serves_ipv4_and_ipv6() {
    let pki = Pki::new("addrs");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.server.listen = Addresses(vec!["127.0.0.1:0".into(), "[::1]:0".into()]);
    config.tls.listen = Addresses(vec!["127.0.0.1:0".into(), "[::1]:0".into()]);
    let broker = TlsBroker::start(config).await;
    assert_eq!(broker.amqp.len(), 2);
    assert!(broker.amqp[1].is_ipv6() && broker.amqps[1].is_ipv6());
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", broker.amqp[0]),
        Default::default(),
    )
    .await
    .unwrap();
    round_trip(&conn, b"plain").await;
    // (lapin's URI parser takes no IPv6 literal: raw frames there.)
    for addr in &broker.amqp {
        let mut plain = TcpStream::connect(addr).await.unwrap();
        assert!(contains(
            &amqp_start(&mut plain).await.unwrap(),
            b"PLAIN AMQPLAIN"
        ));
    }
    for addr in &broker.amqps {
        let mut tls = tls_connect(*addr, &pki.ca(), None).await.unwrap();
        assert!(contains(&amqp_start(&mut tls).await.unwrap(), b"EXTERNAL"));
    }
    broker.stop().await;
}

/// On a dual-stack `[::]` listener an IPv4 client arrives as
/// `::ffff:127.0.0.1`: loopback, so guest may log in.
#[tokio::test]
async fn guest_over_ipv4_on_a_dual_stack_listener_is_local() {
    let pki = Pki::new("dual");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.server.listen = Addresses::one("[::]:0");
    let broker = TlsBroker::start(config).await;
    let port = broker.amqp[0].port();
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let conn = lapin::Connection::connect(&uri, Default::default())
        .await
        .unwrap();
    round_trip(&conn, b"mapped loopback").await;
    broker.stop().await;
}

#[test]
fn a_listen_address_that_cannot_bind_stops_the_start_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(common::unique("leveret-tls-clash"));
    let dir_arg = dir.to_str().unwrap();
    let runs: [(&[&str], &str); 3] = [
        (
            &["--listen", "127.0.0.1:0", "--mgmt-listen", &addr],
            "cannot listen for the management API on",
        ),
        (
            &["--listen", &addr, "--mgmt-listen", "127.0.0.1:0"],
            "cannot listen for AMQP on",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:0",
                "--stream-listen",
                "127.0.0.1:0",
                "--mgmt-listen",
                "",
                "--tls-listen",
                &addr,
            ],
            "tls.cert and tls.key must be set",
        ),
    ];
    for (flags, expected) in runs {
        let mut args = vec!["serve", "--data-dir", dir_arg];
        args.extend_from_slice(flags);
        let mut broker = BrokerProcess::launch(&args);
        let status = broker.wait_exit(Duration::from_secs(10)).expect("exits");
        assert!(!status.success(), "{flags:?}");
        let stderr = broker.stderr();
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        if !expected.starts_with("tls") {
            assert!(
                stderr.contains(&format!("on {addr}")),
                "{flags:?}: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------------ pika, amqplib

/// Runs a client script (bounded by `timeout`), returning whether it
/// succeeded and what it printed.
async fn run_client(program: String, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .arg("30")
            .arg(&program)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}; run scripts/install-test-deps"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

fn script(path: &str) -> String {
    format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A broker asking for (not requiring) client certificates, and a client
/// certificate for guest.
async fn external_broker(pki: &Pki) -> (TlsBroker, Pair) {
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.tls.ca = pki.ca();
    config.tls.verify_peer = true;
    (TlsBroker::start(config).await, pki.issue("guest", 2, None))
}

#[tokio::test]
async fn pika_over_amqps_with_a_password_and_with_external() {
    let pki = Pki::new("pika");
    let (broker, guest) = external_broker(&pki).await;
    let python = crate::cross_client::python();
    let base = vec![
        script("python/tls_client.py"),
        "localhost".to_string(),
        broker.amqps_port().to_string(),
        pki.ca().display().to_string(),
    ];
    let (ok, out) = run_client(python.clone(), base.clone()).await;
    assert!(ok && out.contains("ok"), "{out}");
    let mut external = base.clone();
    external.extend([
        "--cert".into(),
        guest.cert.display().to_string(),
        "--key".into(),
        guest.key.display().to_string(),
        "--external".into(),
    ]);
    let (ok, out) = run_client(python.clone(), external).await;
    assert!(ok && out.contains("ok"), "{out}");
    // EXTERNAL without a certificate: refused at login.
    let mut no_cert = base;
    no_cert.push("--external".into());
    let (ok, out) = run_client(python, no_cert).await;
    assert!(!ok && out.contains("refused"), "{out}");
    broker.stop().await;
}

#[tokio::test]
async fn amqplib_over_amqps_with_a_password_and_with_external() {
    let pki = Pki::new("amqplib");
    let (broker, guest) = external_broker(&pki).await;
    let node = std::env::var("LEVERET_NODE").unwrap_or_else(|_| "node".into());
    let base = vec![
        script("node/tls_client.js"),
        broker.amqps_port().to_string(),
        pki.ca().display().to_string(),
    ];
    let (ok, out) = run_client(node.clone(), base.clone()).await;
    assert!(ok && out.contains("ok"), "{out}");
    let mut external = base;
    external.extend([
        guest.cert.display().to_string(),
        guest.key.display().to_string(),
        "external".into(),
    ]);
    let (ok, out) = run_client(node, external).await;
    assert!(ok && out.contains("ok"), "{out}");
    broker.stop().await;
}

// ------------------------------------------------------------ limits

/// Over TLS as over TCP, before tune-ok a frame over 4,096 octets closes
/// the connection without a reply (RabbitMQ's pre-login limit).
#[tokio::test]
async fn the_pre_login_frame_limit_applies_over_tls() {
    let pki = Pki::new("prelogin");
    let broker = TlsBroker::start(tls_config(&pki.issue("localhost", 1, None))).await;
    let mut tls = tls_connect(broker.amqps[0], &pki.ca(), None).await.unwrap();
    amqp_start(&mut tls).await.unwrap();
    // A method frame on channel 0 claiming 1 MiB.
    let mut frame = vec![1u8, 0, 0];
    frame.extend_from_slice(&(1u32 << 20).to_be_bytes());
    frame.extend_from_slice(&[0u8; 4096]);
    tls.write_all(&frame).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf))
        .await
        .expect("closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    broker.stop().await;
}

/// A client stalling in the TLS handshake holds a place under
/// max_handshakes until the handshake timeout, as a plain one does.
#[tokio::test]
async fn a_stalled_tls_handshake_counts_against_max_handshakes() {
    let pki = Pki::new("maxhs");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.limits.max_handshakes = 1;
    config.limits.handshake_timeout_ms = 1000;
    let broker = TlsBroker::start(config).await;
    let _stalled = TcpStream::connect(broker.amqps[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    let uri = format!("amqp://guest:guest@{}/%2f", broker.amqp[0]);
    let conn = lapin::Connection::connect(&uri, Default::default())
        .await
        .unwrap();
    let waited = began.elapsed();
    assert!(waited >= Duration::from_millis(700), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    round_trip(&conn, b"after the stall").await;
    broker.stop().await;
}

/// Reads one whole frame (type and payload) from `stream`.
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u8, Vec<u8>) {
    let mut head = [0u8; 7];
    stream.read_exact(&mut head).await.unwrap();
    let size = u32::from_be_bytes(head[3..7].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; size + 1];
    stream.read_exact(&mut payload).await.unwrap();
    payload.pop();
    (head[0], payload)
}

/// A TLS client whose publishes the broker stops reading (a memory alarm)
/// and which then goes away is noticed at once, as a plain one is: the
/// broker looks at the socket under the TLS stream. Without heartbeats it
/// would otherwise hold its connection until the alarm ends.
#[tokio::test]
async fn a_paused_tls_client_that_goes_away_is_released() {
    use amq_protocol::protocol::{channel, connection, AMQPClass};
    use common::raw::{frame, header_frame, method_frame, plain, publish_method};
    let pki = Pki::new("paused");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.limits.memory_high_watermark = 8 * 1024;
    let broker = TlsBroker::start(config).await;
    let plain_uri = format!("amqp://guest:guest@{}/%2f", broker.amqp[0]);
    let admin = lapin::Connection::connect(&plain_uri, Default::default())
        .await
        .unwrap();
    let admin_ch = admin.create_channel().await.unwrap();
    let queue = common::unique("paused");
    admin_ch
        .queue_declare(
            queue.as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();

    let mut tls = tls_connect(broker.amqps[0], &pki.ca(), None).await.unwrap();
    amqp_start(&mut tls).await.unwrap();
    let send = |class: AMQPClass, channel: u16| method_frame(channel, &class);
    let start_ok = AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties: Default::default(),
        mechanism: "PLAIN".into(),
        response: String::from_utf8(plain("guest", "guest")).unwrap().into(),
        locale: "en_US".into(),
    }));
    tls.write_all(&send(start_ok, 0)).await.unwrap();
    read_frame(&mut tls).await; // tune
    let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max: 8,
        frame_max: 131072,
        heartbeat: 0,
    }));
    let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
        virtual_host: "/".into(),
    }));
    let mut bytes = send(tune_ok, 0);
    bytes.extend(send(open, 0));
    tls.write_all(&bytes).await.unwrap();
    read_frame(&mut tls).await; // open-ok
    let channel_open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    tls.write_all(&send(channel_open, 1)).await.unwrap();
    read_frame(&mut tls).await; // channel open-ok

    let body = vec![7u8; 16 * 1024];
    let mut bytes = Vec::new();
    for _ in 0..4 {
        bytes.extend(method_frame(1, &publish_method("", &queue)));
        bytes.extend(header_frame(1, body.len() as u64));
        bytes.extend(frame(3, 1, &body));
    }
    tls.write_all(&bytes).await.unwrap();
    tls.flush().await.unwrap();
    let api = common::http::Api {
        addr: broker.mgmt[0],
        user: "guest".into(),
        password: "guest".into(),
    };
    // The TLS connections listed, by state.
    let tls_states = || async {
        let listed = api.get("/api/connections").await.json;
        let states: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ssl"] == true)
            .map(|c| c["state"].as_str().unwrap_or("").to_string())
            .collect();
        states
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_states().await != ["blocked"] {
        assert!(
            Instant::now() < deadline,
            "the TLS publisher was not blocked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tls);
    let deadline = Instant::now() + Duration::from_secs(3);
    while !tls_states().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the paused TLS connection outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.stop().await;
}

/// `0.0.0.0:P` and `[::]:P` together, as RabbitMQ's docs list them: the
/// IPv6 wildcard takes IPv6 only, or it would clash with the IPv4 one.
#[tokio::test]
async fn ipv4_and_ipv6_wildcards_on_one_port_both_bind() {
    let pki = Pki::new("wildcards");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.server.listen = Addresses(vec![format!("0.0.0.0:{port}"), format!("[::]:{port}")]);
    let broker = TlsBroker::start(config).await;
    assert_eq!(broker.amqp.len(), 2);
    for addr in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let mut plain = TcpStream::connect(addr.as_str()).await.unwrap();
        assert!(
            contains(&amqp_start(&mut plain).await.unwrap(), b"PLAIN"),
            "{addr}"
        );
    }
    broker.stop().await;
}

/// A client stalling in the TLS handshake (AMQPS or HTTPS) does not hold
/// up a shutdown (which would otherwise wait out its 5 s grace for it).
#[tokio::test]
async fn shutdown_does_not_wait_for_a_stalled_tls_handshake() {
    let pki = Pki::new("stopstall");
    let mut config = tls_config(&pki.issue("localhost", 1, None));
    config.tls.mgmt_listen = Addresses::one("127.0.0.1:0");
    let broker = TlsBroker::start(config).await;
    let _stalled = TcpStream::connect(broker.amqps[0]).await.unwrap();
    let _stalled_https = TcpStream::connect(broker.mgmts[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    broker.stop().await;
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
}

// ------------------------------------------------------------ ctl and perf

/// Runs the `leveret` binary with `args`: exit success, stdout, stderr.
async fn leveret(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(args)
            .env_remove("LEVERET_URL")
            .output()
            .expect("run leveret")
    })
    .await
    .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn ctl_over_https_trusts_its_cacert_and_reloads_the_certificates() {
    let pki = Pki::new("ctl");
    let first = pki.issue("localhost", 1, None);
    let second = pki.issue("localhost", 2, None);
    let live = Pair {
        cert: pki.dir.join("live.pem"),
        key: pki.dir.join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let mut config = tls_config(&live);
    config.tls.mgmt_listen = Addresses::one("127.0.0.1:0");
    let broker = TlsBroker::start(config).await;
    let url = format!("https://localhost:{}", broker.mgmts[0].port());
    let ca = pki.ca().display().to_string();

    let (ok, out, err) = leveret(strings(&["ctl", "--url", &url, "--cacert", &ca, "status"])).await;
    assert!(ok, "ctl status over https with --cacert: {out}{err}");
    assert!(out.contains("Leveret") || out.contains("version"), "{out}");

    // Without the CA the server is not trusted, and ctl says where to look.
    let (ok, _, err) = leveret(strings(&["ctl", "--url", &url, "status"])).await;
    assert!(!ok);
    assert!(
        err.contains("invalid peer certificate") && err.contains("--cacert"),
        "{err}"
    );
    // --insecure skips the check.
    let (ok, out, err) = leveret(strings(&["ctl", "--url", &url, "--insecure", "status"])).await;
    assert!(ok, "{out}{err}");

    // reload_certificates: the new pair is served to new connections.
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    let reload = strings(&["ctl", "--url", &url, "--cacert", &ca, "reload_certificates"]);
    let (ok, out, err) = leveret(reload.clone()).await;
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), "certificates reloaded");
    assert_eq!(served_serial(broker.amqps[0], &pki.ca()).await, 2);

    // A bad file is refused, named, and the old pair stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    let (ok, _, err) = leveret(reload).await;
    assert!(!ok);
    assert!(err.contains("400") && err.contains("live.pem"), "{err}");
    assert_eq!(served_serial(broker.amqps[0], &pki.ca()).await, 2);
    broker.stop().await;
}

#[tokio::test]
async fn perf_runs_over_amqps() {
    let pki = Pki::new("perf");
    let broker = TlsBroker::start(tls_config(&pki.issue("localhost", 1, None))).await;
    let uri = format!(
        "amqps://guest:guest@localhost:{}/%2f?cacertfile={}",
        broker.amqps_port(),
        pki.ca().display()
    );
    let run = |uri: String| {
        leveret(strings(&[
            "perf",
            "--uri",
            &uri,
            "--json",
            "--pmessages",
            "2000",
            "--cmessages",
            "2000",
            "--size",
            "512",
        ]))
    };
    let (ok, out, err) = run(uri).await;
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON report");
    assert_eq!(report["sent"], 2000, "{report}");
    assert_eq!(report["received"], 2000, "{report}");

    // Another CA's file: the broker is not trusted and nothing is sent.
    let other = Pki::new("perf-other");
    let uri = format!(
        "amqps://guest:guest@localhost:{}/%2f?cacertfile={}",
        broker.amqps_port(),
        other.ca().display()
    );
    let (ok, out, err) = run(uri).await;
    assert!(!ok, "perf trusted a broker its CA did not sign: {out}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    broker.stop().await;
}
