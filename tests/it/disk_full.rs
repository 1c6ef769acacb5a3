//! A full disk (issue 14, finding 8): the free disk space alarm blocks
//! publishers before the disk is full; a failed write stops the store
//! (confirms nacked, nacked messages never delivered, queue counts true,
//! publishers blocked, the error logged once); the broker starts on a full
//! disk and consumers drain.
//!
//! The tests that need a small file system mount a tmpfs, which takes root.
//! Not root: they say so on stderr and pass without running. Root but the
//! mount fails: they fail.

use crate::common;

use common::amqp::{count, declare_queue, durable, persistent};
use common::http::Api;
use common::process::{BrokerProcess, TempDir};
use common::{unique, TestBroker};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Connection;
use lapin::PublisherConfirm;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- the alarm

#[tokio::test]
async fn publishers_are_blocked_while_free_space_is_below_disk_free_limit() {
    if std::env::var("LEVERET_TEST_URI").is_ok() {
        return; // needs a disk_free_limit only our own broker can be given
    }
    let mut config = leveret::Config::default();
    // More than any disk has free.
    config.storage.disk_free_limit = leveret::config::DiskFreeLimit::Absolute(1 << 60);
    let broker = TestBroker::start_with(config).await;
    let api = Api::of(&broker).expect("management API");

    let health = api.get("/api/health/checks/alarms").await;
    assert_eq!(health.status, 503, "{}", health.text);
    assert_eq!(health.json["status"], "failed");
    assert_eq!(health.json["reason"], "resource alarm(s) in effect");
    assert_eq!(
        health.json["alarms"][0]["resource"], "disk",
        "{}",
        health.text
    );
    let nodes = api.get("/api/nodes").await;
    assert_eq!(nodes.json[0]["disk_free_alarm"], true, "{}", nodes.text);
    assert_eq!(nodes.json[0]["disk_free_limit"], 1u64 << 60);
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "rabbitmq_alarms_free_disk_space_watermark 1"),
        "{metrics}"
    );

    let publisher = broker.connect().await;
    let ch = publisher.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = unique("disk-alarm");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // lapin holds back publishes once told it is blocked: publish from a task.
    let publishing = tokio::spawn({
        let (ch, queue) = (ch.clone(), queue.clone());
        async move {
            for _ in 0..10 {
                let _ = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        b"x",
                        persistent(),
                    )
                    .await;
            }
        }
    });
    wait_until("connection.blocked", WAIT, || publisher.status().blocked()).await;
    let c = broker.connect().await;
    assert!(
        count(&c, &queue, WAIT).await < 10,
        "a blocked publisher is not read"
    );
    publishing.abort();
}

// ---------------------------------------------------------------- a real small disk

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` (saying why) when not root, who alone may mount; as root a
    /// failed mount fails the test.
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIPPED: mounting a {size} tmpfs needs root; this full-disk test did not run"
            );
            return None;
        }
        let dir = std::env::temp_dir().join(unique("leveret-tmpfs"));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "running as root, but cannot mount a tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Tmpfs { dir })
    }

    fn free(&self) -> u64 {
        leveret::free_bytes(&self.dir).expect("statvfs")
    }

    /// Writes a file beside the data directory until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        for chunk in [1 << 20, 4096] {
            let bytes = vec![1u8; chunk];
            while f.write_all(&bytes).is_ok() {}
        }
        let _ = f.sync_all();
        assert!(self.free() < 8192, "disk full: {} bytes free", self.free());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn config_file(dir: &TempDir, toml: &str) -> PathBuf {
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn body(id: u64, size: usize) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.resize(size.max(8), b'.');
    b
}

fn id_of(body: &[u8]) -> u64 {
    u64::from_be_bytes(body[..8].try_into().unwrap())
}

async fn declare(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, queue, durable(), FieldTable::default()).await
}

/// What the broker said about the messages published.
#[derive(Default, Debug)]
struct Confirms {
    acked: BTreeSet<u64>,
    nacked: BTreeSet<u64>,
    /// Published but never confirmed either way (held back by lapin).
    unknown: BTreeSet<u64>,
}

/// Publishes persistent messages with confirms, ids from `first`, as fast
/// as the broker takes them, until the connection is blocked or `max` are
/// out; then collects the confirms. Returns whether it was blocked.
async fn publish_until_blocked(
    conn: &Connection,
    queue: &str,
    first: u64,
    max: u64,
    size: usize,
    confirms: &mut Confirms,
) -> bool {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let pending: Arc<Mutex<Vec<(u64, PublisherConfirm)>>> = Arc::default();
    // The publish under way when the task is aborted may have reached the
    // broker already: its fate is unknown, not "never published".
    let attempted = Arc::new(std::sync::atomic::AtomicU64::new(first));
    // The channel outlives the task: dropping it would close it before
    // the last confirms came.
    let publishing = tokio::spawn({
        let (ch, pending, queue) = (ch.clone(), pending.clone(), queue.to_string());
        let attempted = attempted.clone();
        async move {
            for id in first..first + max {
                attempted.store(id + 1, std::sync::atomic::Ordering::SeqCst);
                let Ok(confirm) = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body(id, size),
                        persistent(),
                    )
                    .await
                else {
                    return;
                };
                pending.lock().unwrap().push((id, confirm));
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    while !conn.status().blocked() && !publishing.is_finished() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let blocked = conn.status().blocked();
    // Let confirms of what was sent before the block come back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publishing.abort();
    let pending = std::mem::take(&mut *pending.lock().unwrap());
    let awaited = pending.last().map_or(first, |(id, _)| id + 1);
    confirms
        .unknown
        .extend(awaited..attempted.load(std::sync::atomic::Ordering::SeqCst));
    let deadline = Instant::now() + Duration::from_secs(10);
    for (id, confirm) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, confirm).await {
            Ok(Ok(c)) if c.is_ack() => confirms.acked.insert(id),
            Ok(Ok(_)) => confirms.nacked.insert(id),
            _ => confirms.unknown.insert(id),
        };
    }
    drop(ch);
    blocked
}

/// Consumes (acknowledging) until `expected` came or nothing comes for a
/// while; returns the ids delivered.
async fn drain(conn: &Connection, queue: &str, expected: u32) -> Vec<u64> {
    let ch = conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let idle = Duration::from_secs(3);
    while let Ok(Some(d)) = tokio::time::timeout(idle, consumer.next()).await {
        let d = d.expect("delivery");
        got.push(id_of(&d.data));
        d.ack(BasicAckOptions::default()).await.expect("basic.ack");
        if got.len() as u32 >= expected + 1000 {
            break;
        }
    }
    got
}

/// A broker on a tmpfs with a queue holding `before` confirmed messages;
/// then the disk is filled and the publisher goes on at full speed.
/// Returns the broker (still running), what was confirmed, and the queue.
async fn fill_while_publishing(
    fs: &Tmpfs,
    conf: &Path,
    before: u64,
) -> (BrokerProcess, Confirms, String) {
    let data = fs.dir.join("data");
    let broker = BrokerProcess::start_with_config(&data, conf);
    // The reserve that lets a restart on a full disk open the store.
    let reserve = data.join("disk-reserve");
    wait_until("the disk reserve is written", WAIT, || reserve.exists()).await;

    let conn = broker.connect().await;
    let queue = unique("full");
    declare(&conn, &queue).await;
    let mut confirms = Confirms::default();
    publish_until_blocked(&conn, &queue, 0, before, 4096, &mut confirms).await;
    assert_eq!(
        confirms.acked.len() as u64,
        before,
        "room on the disk: all confirmed ({} nacked, {} unknown); log:\n{}",
        confirms.nacked.len(),
        confirms.unknown.len(),
        broker.stderr()
    );

    fs.fill();
    let blocked = publish_until_blocked(&conn, &queue, before, 100_000, 4096, &mut confirms).await;
    assert!(
        blocked,
        "connection.blocked after a failed write; log:\n{}",
        broker.stderr()
    );
    assert!(
        !confirms.nacked.is_empty(),
        "a write failed on the full disk: its confirms are nacked ({} acked, {} unknown)",
        confirms.acked.len(),
        confirms.unknown.len()
    );
    (broker, confirms, queue)
}

/// What was delivered against what was confirmed, and the broker's log.
/// Publishes lapin held back while the connection was blocked (`unknown`)
/// may come in once the alarm clears, after `reported` was read.
fn check_drained(delivered: &[u64], reported: u32, confirms: &Confirms, log: &str) {
    let set: BTreeSet<u64> = delivered.iter().copied().collect();
    assert_eq!(set.len(), delivered.len(), "no message delivered twice");
    let late = set.difference(&confirms.acked).count();
    assert!(
        delivered.len() as u32 >= reported && delivered.len() as u32 - reported <= late as u32,
        "every message the queue reports can be delivered: reported {reported}, delivered {} ({late} not confirmed)",
        delivered.len()
    );
    let unexpected: Vec<_> = set
        .difference(&confirms.acked)
        .filter(|id| !confirms.unknown.contains(id) && !confirms.nacked.contains(id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "delivered but never published: {unexpected:?}"
    );
    let nacked_delivered: Vec<_> = set.intersection(&confirms.nacked).collect();
    assert!(
        nacked_delivered.is_empty(),
        "{} nacked messages delivered: {:?}",
        nacked_delivered.len(),
        &nacked_delivered[..nacked_delivered.len().min(10)]
    );
    let lost: Vec<_> = confirms.acked.difference(&set).collect();
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?}");
    // One line per failure, a few more from sled when it cannot flush at
    // shutdown: not one per message (62,000 in 45 s before).
    let failures = log
        .lines()
        .filter(|l| l.contains("cannot write messages to disk"))
        .count();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(
        failures <= 2 && errors.len() <= 20,
        "the failure is logged once, not per message ({failures} failures, {} ERROR lines):\n{}",
        errors.len(),
        errors[..errors.len().min(30)].join("\n")
    );
}

#[tokio::test]
async fn a_failed_write_nacks_and_consumers_drain_exactly_the_queue_on_the_full_disk() {
    let Some(fs) = Tmpfs::mount("32m") else {
        return;
    };
    let tmp = TempDir::new("disk-full-drain");
    // 0: no free-space alarm, so the disk really fills and a write fails.
    let conf = config_file(&tmp, "[storage]\ndisk_free_limit = 0\n");
    let (mut broker, confirms, queue) = fill_while_publishing(&fs, &conf, 500).await;

    let conn = broker.connect().await;
    let reported = count(&conn, &queue, WAIT).await;
    let delivered = drain(&conn, &queue, reported).await;
    assert_eq!(
        count(&conn, &queue, WAIT).await,
        0,
        "acks work on the full disk"
    );
    broker.sigterm_and_wait();
    check_drained(&delivered, reported, &confirms, &broker.stderr());
}

#[tokio::test]
async fn the_broker_restarts_on_the_full_disk_and_consumers_drain() {
    let Some(fs) = Tmpfs::mount("32m") else {
        return;
    };
    let tmp = TempDir::new("disk-full-restart");
    let conf = config_file(&tmp, "[storage]\ndisk_free_limit = 0\n");
    let (mut broker, confirms, queue) = fill_while_publishing(&fs, &conf, 500).await;
    let reported = count(&broker.connect().await, &queue, WAIT).await;
    let mut log = broker.stderr();
    broker.sigterm_and_wait();
    assert!(fs.free() < 1 << 20, "still full: {} bytes free", fs.free());

    let broker = BrokerProcess::start_with_config(&fs.dir.join("data"), &conf);
    let conn = broker.connect().await;
    assert_eq!(
        count(&conn, &queue, WAIT).await,
        reported,
        "the restart keeps every message the queue reported"
    );
    let delivered = drain(&conn, &queue, reported).await;
    log.push_str(&broker.stderr());
    check_drained(&delivered, reported, &confirms, &log);
}

#[tokio::test]
async fn publishers_are_blocked_before_the_disk_is_full_and_resume_once_drained() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let tmp = TempDir::new("disk-alarm-tmpfs");
    // RabbitMQ's default limit on a 64 MiB disk; small segments, so that
    // acknowledged messages give their space back.
    let conf = config_file(
        &tmp,
        "[storage]\ndisk_free_limit = 50000000\nsegment_size = 1048576\n",
    );
    let broker = BrokerProcess::start_with_config(&fs.dir.join("data"), &conf);
    let conn = broker.connect().await;
    let queue = unique("alarm");
    declare(&conn, &queue).await;
    let mut confirms = Confirms::default();
    let blocked = publish_until_blocked(&conn, &queue, 0, 2000, 64 << 10, &mut confirms).await;
    assert!(blocked, "blocked before 2000 x 64 KiB fill a 64 MiB disk");
    assert!(confirms.nacked.is_empty(), "no write failed: {confirms:?}");
    assert!(
        fs.free() > 8 << 20,
        "blocked well before the disk is full: {} bytes free",
        fs.free()
    );

    let other = broker.connect().await;
    let reported = count(&other, &queue, WAIT).await;
    // Acknowledged segments are deleted: the space comes back, the alarm
    // clears, and what lapin held back comes in too.
    let delivered = drain(&other, &queue, reported).await;
    check_drained(&delivered, reported, &confirms, &broker.stderr());
    wait_until("connection.unblocked once space is back", WAIT, || {
        !conn.status().blocked()
    })
    .await;
}

/// A transaction whose persistent messages could not be written fails as
/// in RabbitMQ (complete_tx with tx = failed): tx.commit closes the channel
/// with 406 "partial tx completion", not commit-ok, and the messages are
/// never delivered. Before, commit-ok promised messages that were lost.
#[tokio::test]
async fn a_transaction_whose_messages_could_not_be_written_fails_its_commit() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let tmp = TempDir::new("disk-full-tx");
    // 0: no free-space alarm, so the commits fill the disk until a write fails.
    let conf = config_file(&tmp, "[storage]\ndisk_free_limit = 0\n");
    let data = fs.dir.join("data");
    let broker = BrokerProcess::start_with_config(&data, &conf);
    let reserve = data.join("disk-reserve");
    wait_until("the disk reserve is written", WAIT, || reserve.exists()).await;
    let conn = broker.connect().await;
    let queue = unique("full-tx");
    declare(&conn, &queue).await;
    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let mut committed = 0u32;
    let failure = loop {
        assert!(
            committed < 1000,
            "16 MiB hold fewer than 1000 commits of 64 KiB"
        );
        // A publish waits while the connection is blocked: after a failed
        // write it is, so the commit that covered that write must have
        // failed already.
        let commit = tokio::time::timeout(WAIT, async {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body(committed.into(), 64 * 1024),
                persistent(),
            )
            .await?;
            ch.tx_commit().await
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "publish and tx.commit answered within {WAIT:?} (after {committed} commits); log:\n{}",
                broker.stderr()
            )
        });
        match commit {
            Ok(()) => committed += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(
        common::amqp::amqp_error(&failure),
        Some((
            406,
            "PRECONDITION_FAILED - partial tx completion".to_string()
        )),
        "after {committed} commits: {failure}"
    );
    let other = broker.connect().await;
    assert_eq!(
        count(&other, &queue, WAIT).await,
        committed,
        "the failed transaction's message is not in the queue"
    );
    let delivered = drain(&other, &queue, committed).await;
    let expected: Vec<u64> = (0..committed.into()).collect();
    assert_eq!(
        delivered, expected,
        "exactly the committed messages are delivered"
    );
}

/// A topology change the store cannot write is an error the client sees
/// (541 INTERNAL_ERROR over AMQP, 500 over HTTP), not
/// declare-ok with a line in the log: the queue would be gone after a
/// restart.
#[tokio::test]
async fn a_declaration_that_cannot_be_written_is_an_error_the_client_sees() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let tmp = TempDir::new("disk-full-declare");
    let conf = config_file(&tmp, "[storage]\ndisk_free_limit = 0\n");
    let data = fs.dir.join("data");
    let broker = BrokerProcess::start_with_config(&data, &conf);
    let reserve = data.join("disk-reserve");
    wait_until("the disk reserve is written", WAIT, || reserve.exists()).await;
    let conn = broker.connect().await;
    declare(&conn, &unique("before-full")).await;
    fs.fill();

    let ch = conn.create_channel().await.unwrap();
    let mut declared = 0;
    let failure = loop {
        assert!(
            declared < 200,
            "200 durable queues declared on a full disk; log:\n{}",
            broker.stderr()
        );
        // A big argument, so sled's log needs new room.
        let mut args = FieldTable::default();
        args.insert(
            "x-filler".into(),
            lapin::types::AMQPValue::LongString("x".repeat(64 * 1024).into()),
        );
        let declare = ch.queue_declare(
            unique("on-full").as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        );
        match tokio::time::timeout(WAIT, declare)
            .await
            .expect("an answer")
        {
            Ok(_) => declared += 1,
            Err(e) => break e,
        }
    };
    let (code, text) = common::amqp::amqp_error(&failure).expect("a close");
    assert_eq!(code, 541, "{text}");
    assert!(
        text.starts_with("INTERNAL_ERROR - cannot write to the store"),
        "{text}"
    );

    // The same over HTTP.
    let api = Api {
        addr: broker.mgmt_addr(),
        user: "guest".into(),
        password: "guest".into(),
    };
    let filler = "x".repeat(64 * 1024);
    let put = api
        .put(
            "/api/queues/%2f/http-on-full",
            serde_json::json!({"durable": true, "arguments": {"x-filler": filler}}),
        )
        .await;
    assert_eq!(put.status, 500, "{}", put.text);
    assert_eq!(put.json["error"], "internal_server_error", "{}", put.text);
}
