//! A leader broker serving AMQP with a follower copying its store over
//! TLS (`cluster.replication_tls`; the cluster tests replicate over plain
//! TCP); the follower's directory, opened as a broker, holds every
//! confirmed message and durable object.

use super::follower::{follow_until, FollowerState};
use super::leader::{serve, Replicas};
use super::link::Security;
use crate::store::journal::Journal;
use crate::Broker;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "leveret-replication-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &std::path::Path) -> crate::Config {
    let mut config = crate::Config::default();
    config.server.data_dir = dir.to_owned();
    config
}

/// TLS from a test CA and a certificate for 127.0.0.1, in `dir`.
fn tls(dir: &std::path::Path) -> Security {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let mut settings = crate::Config::default().tls;
    (settings.ca, settings.cert, settings.key) = (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    );
    std::fs::write(&settings.ca, ca.pem()).unwrap();
    std::fs::write(&settings.cert, cert.pem()).unwrap();
    std::fs::write(&settings.key, key.serialize_pem()).unwrap();
    Security::new(true, &settings).unwrap()
}

struct Follower {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    state: Arc<parking_lot::Mutex<FollowerState>>,
}

fn start_follower(leader: String, security: Security, dir: PathBuf) -> Follower {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let state = Arc::new(parking_lot::Mutex::new(FollowerState::default()));
    let task = tokio::spawn(follow_until(
        leader,
        security,
        Arc::from(&b"secret"[..]),
        "b".into(),
        dir,
        state.clone(),
        stopped,
    ));
    Follower { stop, task, state }
}

impl Follower {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn publish(channel: &lapin::Channel, queue: &str, n: usize, tag: &str) {
    let mut confirms = Vec::new();
    for i in 0..n {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    format!("{tag}-{i}").as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_every_confirmed_message_and_object() {
    let (leader_dir, follower_dir) = (temp("leader"), temp("follower"));
    let journal = Journal::new(&leader_dir, 64 << 20);
    let broker = Broker::open_replicated(config(&leader_dir), Some(journal.clone())).unwrap();
    let replicas = Replicas::new(journal, 1, Box::new(|_| Box::pin(async { true })));
    let repl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let repl_addr = repl.local_addr().unwrap().to_string();
    let tls_dir = temp("tls");
    let security = tls(&tls_dir);
    let server = tokio::spawn(serve(
        repl,
        security.clone(),
        replicas.clone(),
        Arc::from(&b"secret"[..]),
        broker.store.trees.clone(),
    ));
    let amqp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("amqp://guest:guest@{}/%2f", amqp.local_addr().unwrap());
    let (shutdown, shut) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(crate::serve(amqp, None, broker, async {
        let _ = shut.await;
    }));

    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();

    // With no follower in sync, a durable declare and a confirm wait.
    let declare = ch.queue_declare(
        "orders".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    );
    let waited = tokio::time::timeout(Duration::from_millis(500), declare).await;
    assert!(
        waited.is_err(),
        "declare-ok came before any follower held it"
    );

    let follower = start_follower(repl_addr.clone(), security.clone(), follower_dir.clone());
    // Now it arrives (the declare future was dropped; declare again).
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        ch.queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare-ok once the follower holds the queue")
    .unwrap();
    publish(&ch, "orders", 500, "a").await;
    // Take and ack 100: they must not come back on the follower.
    for _ in 0..100 {
        let got = ch
            .basic_get("orders".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .expect("a message");
        got.ack(BasicAckOptions::default()).await.unwrap();
    }
    // Delivered and never acknowledged: it comes back redelivered.
    let unacked = ch
        .basic_get("orders".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(unacked.delivery.data, b"a-100");
    // A stream, written by the stream writer.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("stream".into()),
    );
    ch.queue_declare(
        "events".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    publish(&ch, "events", 50, "e").await;
    // Ensure the acks reached the store before the copy is checked.
    ch.queue_declare(
        "sync-point".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    for _ in 0..100 {
        if replicas.in_sync() == vec!["b".to_string()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        replicas.in_sync(),
        vec!["b".to_string()],
        "recorded in sync"
    );
    let listed = replicas.list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].in_sync && listed[0].acked > 0 && listed[0].bytes_sent > 0);

    // The follower stops; meanwhile more is published (min_insync 1, so
    // it waits) ... then the follower comes back and catches up with
    // only what differs.
    let first_copy = follower.state.lock().copy_bytes;
    follower.stop().await;
    let pending = {
        let ch = ch.clone();
        tokio::spawn(async move { publish(&ch, "orders", 200, "b").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "confirmed without a follower");
    let follower = start_follower(repl_addr, security.clone(), follower_dir.clone());
    tokio::time::timeout(Duration::from_secs(20), pending)
        .await
        .expect("confirmed once the follower is back")
        .unwrap();
    let second_copy = follower.state.lock().copy_bytes;
    let store_bytes: u64 = super::files(&leader_dir)
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        second_copy * 4 < store_bytes,
        "the second copy sent only what differed: {second_copy} of {store_bytes} bytes (first copy {first_copy})"
    );
    follower.stop().await;
    conn.close(200, "bye".into()).await.unwrap();
    let _ = shutdown.send(());
    serving.await.unwrap();
    server.abort();

    // The follower's copy, opened as a broker after the leader is gone.
    let promoted = Broker::open(config(&follower_dir)).unwrap();
    let amqp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("amqp://guest:guest@{}/%2f", amqp.local_addr().unwrap());
    let (shutdown, shut) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(crate::serve(amqp, None, promoted, async {
        let _ = shut.await;
    }));
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 600, "400 left of a, all 200 of b");
    let first = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.delivery.data, b"a-100");
    assert!(first.delivery.redelivered, "delivered before the failover");
    let second = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.delivery.data, b"a-101");
    assert!(!second.delivery.redelivered, "never delivered");
    // The stream, read from its start.
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let mut consumer = ch
        .basic_consume(
            "events".into(),
            "replay".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    use futures_lite::StreamExt;
    for i in 0..50 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("the stream's entries")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, format!("e-{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    conn.close(200, "bye".into()).await.unwrap();
    let _ = shutdown.send(());
    serving.await.unwrap();
    let _ = std::fs::remove_dir_all(&leader_dir);
    let _ = std::fs::remove_dir_all(&tls_dir);
    let _ = std::fs::remove_dir_all(&follower_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_proving_nothing_are_bounded_and_a_follower_still_gets_in_once_they_leave() {
    use super::leader::MAX_HANDSHAKING;
    use tokio::io::AsyncReadExt;
    let dir = temp("strangers");
    let journal = Journal::new(&dir, 1 << 20);
    let replicas = Replicas::new(journal, 1, Box::new(|_| Box::pin(async { true })));
    let repl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = repl.local_addr().unwrap();
    let secret: Arc<[u8]> = Arc::from(&b"secret"[..]);
    let server = tokio::spawn(serve(repl, Security::Plain, replicas, secret, Vec::new()));
    // Each is challenged, and then says nothing.
    let mut strangers = Vec::new();
    for _ in 0..MAX_HANDSHAKING {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut challenge = [0u8; 8];
        s.read_exact(&mut challenge).await.unwrap();
        strangers.push(s);
    }
    // One more is closed at once, unchallenged.
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed without a challenge: {read:?}, {got:?}"
    );
    // Once they leave, a peer is challenged again.
    drop(strangers);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut challenge = [0u8; 8];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut challenge)).await
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never challenged again"
        );
    }
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_trusts_another_ca_does_not_connect() {
    let (a, b) = (temp("tls-a"), temp("tls-b"));
    let (leader_side, follower_side) = (tls(&a), tls(&b));
    let repl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = repl.local_addr().unwrap().to_string();
    let accepting = tokio::spawn(async move {
        let (stream, _) = repl.accept().await.unwrap();
        leader_side.accept(stream).await.map(|_| ())
    });
    let connected = follower_side.connect(&addr).await;
    let e = connected
        .err()
        .expect("the leader's certificate is not trusted");
    assert!(e.to_string().contains("certificate"), "{e}");
    assert!(accepting.await.unwrap().is_err());
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// An idle follower stays in the in-sync set (the leader's empty marks
/// keep it caught up), so an idle cluster can still fail over to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_follower_stays_in_sync() {
    let (leader_dir, follower_dir) = (temp("idle-leader"), temp("idle-follower"));
    std::fs::create_dir_all(&leader_dir).unwrap();
    let journal = Journal::new(&leader_dir, 1 << 20);
    let replicas = Replicas::new(journal, 1, Box::new(|_| Box::pin(async { true })));
    let repl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let repl_addr = repl.local_addr().unwrap().to_string();
    let server = tokio::spawn(serve(
        repl,
        Security::Plain,
        replicas.clone(),
        Arc::from(&b"secret"[..]),
        Vec::new(),
    ));
    let follower = start_follower(repl_addr, Security::Plain, follower_dir.clone());
    for _ in 0..200 {
        if replicas.in_sync() == vec!["b".to_string()] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(replicas.in_sync(), vec!["b".to_string()], "joined");
    // Nothing is written for longer than a follower may lag.
    tokio::time::sleep(super::leader::LAG_MAX + Duration::from_secs(2)).await;
    replicas.tick();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        replicas.in_sync(),
        vec!["b".to_string()],
        "still in sync after {:?} idle",
        super::leader::LAG_MAX
    );
    follower.stop().await;
    server.abort();
    let _ = std::fs::remove_dir_all(&leader_dir);
    let _ = std::fs::remove_dir_all(&follower_dir);
}
