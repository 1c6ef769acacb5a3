//! The age of a queue's head: how long the next message to deliver has
//! waited in the queue (`head_message_age_ms` in the queue API,
//! `leveret_queue_head_message_age_seconds` in `/metrics`, a column of
//! `leveret ctl list queues`), for "a message has waited more than five
//! minutes" alerts. The time is the subject here, so these tests let
//! messages wait a fixed second or so.
//!
//! Leveret's own fields: against another broker these tests do nothing.

use crate::common;

use common::amqp::{
    confirm_channel, declare_queue, durable, persistent, publish_and_confirm, table,
};
use common::http::Api;
use common::process::{BrokerProcess, TempDir};
use common::{unique, TestBroker};
use lapin::{options::*, types::AMQPValue, types::FieldTable, BasicProperties, Channel};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a message is left waiting before its age is looked at.
const WAIT: Duration = Duration::from_millis(1200);
const WAIT_MS: u64 = 1200;
/// An age this small is a message that just arrived.
const FRESH_MS: u64 = 1000;

/// The queue as the API shows it.
async fn queue(api: &Api, name: &str) -> Value {
    let reply = api.get(&format!("/api/queues/%2F/{name}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.json
}

/// `head_message_age_ms`, asserting it is a number.
async fn age(api: &Api, name: &str) -> u64 {
    let q = queue(api, name).await;
    q["head_message_age_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no head age: {q}"))
}

async fn publish(ch: &Channel, q: &str, body: &[u8], props: BasicProperties) {
    publish_and_confirm(ch, "", q, body, props).await;
}

/// basic.get with auto-ack: the head leaves the queue.
async fn take(ch: &Channel, q: &str) -> Vec<u8> {
    ch.basic_get(q.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message")
        .delivery
        .data
}

/// An in-process broker with its API, unless the tests run elsewhere.
async fn broker_with(config: leveret::Config) -> Option<(TestBroker, Api)> {
    if common::against_other_broker() {
        return None;
    }
    let broker = TestBroker::start_with(config).await;
    let api = Api::of(&broker).expect("an API");
    Some((broker, api))
}

#[tokio::test]
async fn the_head_age_grows_while_it_waits_and_resets_when_the_head_is_consumed() {
    let Some((broker, api)) = broker_with(leveret::Config::default()).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("headage-grows");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let empty = queue(&api, &q).await;
    assert!(empty["head_message_age_ms"].is_null(), "empty: {empty}");

    publish(&ch, &q, b"first", BasicProperties::default()).await;
    assert!(age(&api, &q).await < FRESH_MS);
    tokio::time::sleep(WAIT).await;
    publish(&ch, &q, b"second", BasicProperties::default()).await;
    let waited = age(&api, &q).await;
    assert!(
        (WAIT_MS..WAIT_MS + 5_000).contains(&waited),
        "the first waited {waited} ms"
    );

    assert_eq!(take(&ch, &q).await, b"first");
    let next = age(&api, &q).await;
    assert!(next < FRESH_MS, "the new head just arrived: {next} ms");
    assert_eq!(take(&ch, &q).await, b"second");
    let empty = queue(&api, &q).await;
    assert!(empty["head_message_age_ms"].is_null(), "empty: {empty}");
}

/// Back in the queue, a message keeps the age it had: it arrived when it
/// was published, not when it was returned.
#[tokio::test]
async fn a_requeued_message_keeps_its_age() {
    let Some((broker, api)) = broker_with(leveret::Config::default()).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("headage-requeue");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&ch, &q, b"again", BasicProperties::default()).await;
    tokio::time::sleep(WAIT).await;
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    let out = queue(&api, &q).await;
    assert!(out["head_message_age_ms"].is_null(), "nothing ready: {out}");
    got.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    common::eventually("the message back", Duration::from_secs(5), || async {
        queue(&api, &q).await["messages_ready"] == 1
    })
    .await;
    let kept = age(&api, &q).await;
    assert!(kept >= WAIT_MS, "requeued, it shows {kept} ms");
}

/// A priority queue's head is its highest priority's oldest message.
#[tokio::test]
async fn a_priority_queue_shows_the_age_of_the_message_it_delivers_next() {
    let Some((broker, api)) = broker_with(leveret::Config::default()).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("headage-priority");
    let args = table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]);
    declare_queue(&ch, &q, durable(), args).await;
    publish(&ch, &q, b"low", persistent()).await;
    tokio::time::sleep(WAIT).await;
    publish(&ch, &q, b"high", persistent().with_priority(5)).await;
    let high = age(&api, &q).await;
    assert!(high < FRESH_MS, "the high one is next: {high} ms");
    assert_eq!(take(&ch, &q).await, b"high");
    let low = age(&api, &q).await;
    assert!(low >= WAIT_MS, "then the low one: {low} ms");
}

/// As RabbitMQ: a priority queue's `head_message_timestamp` is that of the
/// message it delivers next, its highest priority's first (Leveret showed
/// none for priority queues).
#[tokio::test]
async fn a_priority_queues_head_timestamp_is_its_highest_prioritys() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("headage-priority-ts");
    let args = table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]);
    declare_queue(&ch, &q, QueueDeclareOptions::default(), args).await;
    let at = |ts: u64, priority: u8| {
        BasicProperties::default()
            .with_timestamp(ts)
            .with_priority(priority)
    };
    publish(&ch, &q, b"low", at(1_700_000_000, 0)).await;
    publish(&ch, &q, b"high", at(1_700_000_100, 5)).await;
    // RabbitMQ's statistics lag a few seconds.
    let head_timestamp = |want: u64| {
        let (api, q) = (api.clone(), q.clone());
        async move {
            common::eventually(
                "head_message_timestamp",
                Duration::from_secs(15),
                || async { queue(&api, &q).await["head_message_timestamp"] == want },
            )
            .await
        }
    };
    head_timestamp(1_700_000_100).await;
    assert_eq!(take(&ch, &q).await, b"high");
    head_timestamp(1_700_000_000).await;
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// `/metrics`: one gauge per queue (NaN when empty), and the longest.
#[tokio::test]
async fn metrics_show_each_queues_head_age_and_the_longest() {
    let Some((broker, api)) = broker_with(leveret::Config::default()).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (waiting, empty) = (unique("headage-metrics"), unique("headage-metrics-empty"));
    for q in [&waiting, &empty] {
        declare_queue(
            &ch,
            q,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    }
    publish(&ch, &waiting, b"waiting", BasicProperties::default()).await;
    tokio::time::sleep(WAIT).await;
    let text = api.get("/metrics").await.text;
    let value = |line_start: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
            .trim()
            .to_string()
    };
    let gauge = |q: &str| {
        value(&format!(
            "leveret_queue_head_message_age_seconds{{vhost=\"/\",queue=\"{q}\"}} "
        ))
    };
    let seconds: f64 = gauge(&waiting).parse().unwrap();
    assert!(
        (WAIT_MS as f64 / 1000.0..60.0).contains(&seconds),
        "{seconds} s"
    );
    assert_eq!(gauge(&empty), "NaN");
    assert!(text.contains("# TYPE leveret_queue_head_message_age_seconds gauge"));
    let longest: f64 = value("leveret_queue_head_message_age_max_seconds ")
        .parse()
        .unwrap();
    assert!(longest >= seconds, "{longest} < {seconds}");
}

/// `leveret ctl list queues` has the age as a column.
#[tokio::test]
async fn ctl_lists_the_head_age() {
    let Some((broker, api)) = broker_with(leveret::Config::default()).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("headage-ctl");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish(&ch, &q, b"waiting", BasicProperties::default()).await;
    tokio::time::sleep(WAIT).await;
    let url = format!("http://{}", api.addr);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(["ctl", "--url", &url, "list", "queues"])
            .output()
            .expect("run leveret ctl")
    })
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let heading: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let column = heading
        .iter()
        .position(|c| *c == "head_message_age_ms")
        .unwrap_or_else(|| panic!("no head age column:\n{table}"));
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&q))
        .unwrap_or_else(|| panic!("{q} not listed:\n{table}"))
        .split_whitespace()
        .collect();
    let shown: u64 = row[column].parse().unwrap();
    assert!(shown >= WAIT_MS, "{shown} ms in:\n{table}");
}

// ------------------------------------------------------------ paged out

/// About 14 messages of 1 KiB stay in memory; the rest are on disk.
const WINDOW: usize = 16 * 1024;
const BODY: [u8; 1024] = [7; 1024];
const BACKLOG: usize = 200;

fn paging_config() -> leveret::Config {
    let mut config = leveret::Config::default();
    config.storage.queue_memory_window = WINDOW;
    config
}

/// A head read back from disk shows when it arrived, not when it was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_out_head_keeps_its_age() {
    let Some((broker, api)) = broker_with(paging_config()).await else {
        return;
    };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("headage-paged");
    declare_queue(&ch, &q, durable(), FieldTable::default()).await;
    for _ in 0..BACKLOG {
        publish(&ch, &q, &BODY, persistent()).await;
    }
    let paged = queue(&api, &q).await["messages_paged_out"]
        .as_u64()
        .unwrap();
    assert!(paged > 100, "{paged} paged out");
    tokio::time::sleep(WAIT).await;
    // Far past the window: the head now is a message read back just now.
    for _ in 0..BACKLOG / 2 {
        take(&ch, &q).await;
    }
    let head = queue(&api, &q).await;
    assert_eq!(head["messages_ready"], BACKLOG / 2, "{head}");
    let waited = head["head_message_age_ms"].as_u64().expect("an age");
    assert!(
        (WAIT_MS..WAIT_MS + 10_000).contains(&waited),
        "read back from disk, it shows {waited} ms"
    );
}

/// A data directory and a config file with the small window.
struct PagingDir {
    data: TempDir,
    config: PathBuf,
}

impl PagingDir {
    fn new(name: &str) -> PagingDir {
        let data = TempDir::new(name);
        let config = data.path().with_extension("toml");
        std::fs::write(
            &config,
            format!("[storage]\nqueue_memory_window = {WINDOW}\n"),
        )
        .expect("write config file");
        PagingDir { data, config }
    }

    fn start(&self) -> BrokerProcess {
        BrokerProcess::start_with_config(self.data.path(), &self.config)
    }
}

impl Drop for PagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

fn api_of(broker: &BrokerProcess) -> Api {
    Api {
        addr: broker.mgmt_addr(),
        user: "guest".into(),
        password: "guest".into(),
    }
}

/// A durable queue filled and left waiting, then stopped.
async fn fill_and_stop(dir: &PagingDir, q: &str) {
    let mut broker = dir.start();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_queue(&ch, q, durable(), FieldTable::default()).await;
    for _ in 0..BACKLOG {
        publish(&ch, q, &BODY, persistent()).await;
    }
    drop(conn);
    tokio::time::sleep(WAIT).await;
    broker.sigterm_and_wait();
}

/// After a restart the head's age is known before anything is read back
/// (the index keeps arrivals), and stays right as the backlog is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_queues_head_age_survives_a_restart() {
    if common::against_other_broker() {
        return;
    }
    let dir = PagingDir::new("headage-restart");
    let q = "headage-restart";
    fill_and_stop(&dir, q).await;

    let broker = dir.start();
    let api = api_of(&broker);
    let recovered = queue(&api, q).await;
    assert_eq!(recovered["messages_ready"], BACKLOG, "{recovered}");
    assert_eq!(
        recovered["messages_ready_ram"], 0,
        "not read back yet: {recovered}"
    );
    let waited = recovered["head_message_age_ms"].as_u64().expect("an age");
    assert!(waited >= WAIT_MS, "after a restart it shows {waited} ms");

    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    for _ in 0..BACKLOG / 2 {
        take(&ch, q).await;
    }
    let head = queue(&api, q).await;
    let later = head["head_message_age_ms"].as_u64().expect("an age");
    // Published before the wait, read back from disk just now.
    assert!(later >= WAIT_MS, "read back after a restart: {later} ms");
}

/// Index files written before arrivals were kept load as before; their
/// messages' age is unknown (null), never made up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_indexed_without_an_arrival_load_with_an_unknown_age() {
    if common::against_other_broker() {
        return;
    }
    let dir = PagingDir::new("headage-old-index");
    let q = "headage-old-index";
    fill_and_stop(&dir, q).await;
    let rewritten = forget_arrivals(&dir.data.path().join("queues"));
    assert_eq!(rewritten, BACKLOG);

    let broker = dir.start();
    let api = api_of(&broker);
    let recovered = queue(&api, q).await;
    assert_eq!(recovered["messages_ready"], BACKLOG, "{recovered}");
    assert!(recovered["head_message_age_ms"].is_null(), "{recovered}");
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    for _ in 0..BACKLOG / 2 {
        assert_eq!(take(&ch, q).await, BODY);
    }
    let head = queue(&api, q).await;
    assert!(head["head_message_age_ms"].is_null(), "{head}");
    for _ in 0..BACKLOG / 2 {
        take(&ch, q).await;
    }
    publish(&ch, q, b"new", persistent()).await;
    assert!(age(&api, q).await < FRESH_MS);
}

/// Rewrites every ready slot of the queue indexes under `dir` as a broker
/// that kept no arrivals wrote it (see `store/queue_index.rs`): zeros in
/// bytes 2..4 and 24..26, the checksum over `seq ‖ slot[0..4] ‖ slot[8..]`
/// made again. Returns how many slots it rewrote.
fn forget_arrivals(dir: &Path) -> usize {
    const SLOT: usize = 32;
    const SLOTS_PER_FILE: u64 = 16 * 1024;
    const READY: u8 = 1;
    let mut rewritten = 0;
    for queue_dir in std::fs::read_dir(dir).unwrap().flatten() {
        for file in std::fs::read_dir(queue_dir.path()).unwrap().flatten() {
            let path = file.path();
            if path.extension().and_then(|e| e.to_str()) != Some("idx") {
                continue;
            }
            let file_no: u64 = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            for (i, slot) in bytes.chunks_exact_mut(SLOT).enumerate().skip(1) {
                if slot[0] != READY {
                    continue;
                }
                assert_ne!(&slot[2..4], [0, 0], "this broker wrote an arrival");
                slot[2..4].fill(0);
                slot[24..26].fill(0);
                let seq = file_no * SLOTS_PER_FILE + i as u64 - 1;
                let mut h = crc32fast::Hasher::new();
                h.update(&seq.to_be_bytes());
                h.update(&slot[0..4]);
                h.update(&slot[8..]);
                slot[4..8].copy_from_slice(&h.finalize().to_be_bytes());
                rewritten += 1;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
    rewritten
}
