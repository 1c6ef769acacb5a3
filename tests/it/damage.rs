//! Damaged store files (issue 14, finding 3): 1,000 persistent messages are
//! confirmed into a durable queue, the broker is stopped (kill -9 or
//! SIGTERM), one file is damaged, and the broker restarted on it. Whatever
//! the damage, the user never loses messages silently: by default the start
//! is refused with an error naming the damaged file, and with
//! `storage.on_damage = "report"` the broker starts and says which queue
//! lost how many messages (log, `/api/health/checks/store`, metrics).

use crate::common;

use common::amqp::{self, connect_uri, persistent, timed_for, within_for};
use common::process::{BrokerProcess, TempDir};
use lapin::{options::*, types::FieldTable};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
const MESSAGES: usize = 1000;
const QUEUE: &str = "q";
/// Bytes per queue index slot.
const SLOT: u64 = 32;

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill9,
    Sigterm,
}

/// A store holding one durable queue with [`MESSAGES`] confirmed persistent
/// messages, left by a broker stopped as `stop` says.
async fn stored(name: &str, stop: Stop) -> TempDir {
    let data = TempDir::new(name);
    let mut broker = BrokerProcess::start(data.path());
    {
        let conn = connect_uri(&broker.uri()).await;
        let ch = amqp::timed_confirm_channel(&conn, WAIT).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        timed_for(
            WAIT,
            "queue.declare",
            ch.queue_declare(QUEUE.into(), durable, FieldTable::default()),
        )
        .await
        .expect("declare");
        let mut confirms = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            let body = format!("message-{i:04}-{}", "x".repeat(100));
            let confirm = ch
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    persistent(),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            let c = timed_for(WAIT, "confirm", confirm).await.expect("confirm");
            assert!(c.is_ack(), "every message confirmed");
        }
        assert_eq!(amqp::count(&conn, QUEUE, WAIT).await, MESSAGES as u32);
    }
    match stop {
        Stop::Kill9 => broker.kill9(),
        Stop::Sigterm => broker.sigterm_and_wait(),
    }
    data
}

/// What a restart on a damaged store did.
enum Outcome {
    /// The broker exited before accepting connections.
    Refused { stderr: String },
    /// The broker accepts connections; the queue holds `messages` (None: gone).
    Started {
        broker: BrokerProcess,
        messages: Option<u32>,
    },
}

async fn restart(data: &Path, config: Option<&Path>) -> Outcome {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--stream-listen",
        "127.0.0.1:0",
        "--mgmt-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    if let Some(config) = config {
        args.push("--config");
        args.push(config.to_str().unwrap());
    }
    let mut broker = BrokerProcess::launch(&args);
    let ready = broker.wait_for_log(FAIL_TIMEOUT, |l| l.contains("accepting AMQP"));
    let Some(line) = ready else {
        let status = broker.wait_exit(FAIL_TIMEOUT);
        let stderr = broker.stderr();
        assert!(
            status.is_some_and(|s| !s.success()),
            "neither started nor failed ({status:?}); stderr:\n{stderr}"
        );
        return Outcome::Refused { stderr };
    };
    let at = line.find("addr=").unwrap() + 5;
    let addr = line[at..].split_whitespace().next().unwrap();
    let conn = connect_uri(&format!("amqp://guest:guest@{addr}/%2f")).await;
    let messages = amqp::queue_count(&conn, QUEUE, WAIT).await.ok();
    Outcome::Started { broker, messages }
}

/// The start must be refused, cleanly, with an error naming `file`.
async fn assert_refused_naming(data: &Path, file: &Path, damage: &str) {
    match restart(data, None).await {
        Outcome::Refused { stderr } => {
            assert!(
                !stderr.contains("panicked"),
                "{damage}: a clean error, not a panic; stderr:\n{stderr}"
            );
            assert!(
                stderr.contains(file.to_str().unwrap()),
                "{damage}: the error should name {}; stderr:\n{stderr}",
                file.display()
            );
        }
        Outcome::Started { broker, messages } => panic!(
            "{damage}: the broker started with {messages:?} of {MESSAGES} messages in {QUEUE} \
             instead of refusing; stderr:\n{}",
            broker.stderr()
        ),
    }
}

/// The single index file of the queue.
fn index_file(data: &Path) -> PathBuf {
    let mut found = Vec::new();
    for q in std::fs::read_dir(data.join("queues")).unwrap() {
        for f in std::fs::read_dir(q.unwrap().path()).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "idx") {
                found.push(path);
            }
        }
    }
    assert_eq!(found.len(), 1, "one index file: {found:?}");
    found.pop().unwrap()
}

/// Bytes of `path` up to its last non-zero byte (the zeros written ahead
/// of the slots are not part of it).
fn written_len(path: &Path) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

fn segment_files(data: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data.join("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 0)
        .collect();
    found.sort();
    found
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut to half of its written bytes.
    Truncate,
    /// 100 slots' worth of zeros in the middle of the written bytes.
    Zero,
    Delete,
    /// One byte inverted in the middle of the written bytes.
    FlipByte,
    /// The state byte of the 11th slot set to "acknowledged".
    SlotAcked,
}

fn damage(path: &Path, damage: Damage) {
    let written = written_len(path);
    let f = std::fs::OpenOptions::new().write(true).open(path);
    use std::os::unix::fs::FileExt;
    match damage {
        Damage::Truncate => f.unwrap().set_len(written / 2).unwrap(),
        Damage::Zero => f
            .unwrap()
            .write_all_at(&vec![0u8; 100 * SLOT as usize], written / 2)
            .unwrap(),
        Damage::Delete => std::fs::remove_file(path).unwrap(),
        Damage::FlipByte => {
            let mut b = [0u8];
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .unwrap();
            f.read_exact_at(&mut b, written / 2).unwrap();
            f.write_all_at(&[!b[0]], written / 2).unwrap();
        }
        // Slot 10 of the old layout, slot 9 behind a one-slot header: the
        // state byte either way.
        Damage::SlotAcked => f.unwrap().write_all_at(&[2], 10 * SLOT).unwrap(),
    }
}

async fn damaged_index_is_refused(name: &str, stop: Stop, kind: Damage) {
    within_for(TEST_TIMEOUT, async {
        let data = stored(name, stop).await;
        let file = index_file(data.path());
        damage(&file, kind);
        assert_refused_naming(
            data.path(),
            &file,
            &format!("index {kind:?} after {stop:?}"),
        )
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_truncated_after_kill_9_is_refused_naming_the_file() {
    damaged_index_is_refused("damage-ix-trunc-k9", Stop::Kill9, Damage::Truncate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_zeroed_after_kill_9_is_refused_naming_the_file() {
    damaged_index_is_refused("damage-ix-zero-k9", Stop::Kill9, Damage::Zero).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_deleted_after_kill_9_is_refused_naming_the_file() {
    damaged_index_is_refused("damage-ix-del-k9", Stop::Kill9, Damage::Delete).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_slot_set_to_acked_after_kill_9_is_refused_naming_the_file() {
    damaged_index_is_refused("damage-ix-acked-k9", Stop::Kill9, Damage::SlotAcked).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_byte_flipped_after_kill_9_is_refused_naming_the_file() {
    damaged_index_is_refused("damage-ix-flip-k9", Stop::Kill9, Damage::FlipByte).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_damage_after_a_clean_stop_is_refused_naming_the_file() {
    for kind in [
        Damage::Truncate,
        Damage::Zero,
        Damage::Delete,
        Damage::SlotAcked,
        Damage::FlipByte,
    ] {
        damaged_index_is_refused(&format!("damage-ix-{kind:?}-term"), Stop::Sigterm, kind).await
    }
}

async fn damaged_segment_is_refused(name: &str, stop: Stop, kind: Damage) {
    within_for(TEST_TIMEOUT, async {
        let data = stored(name, stop).await;
        let files = segment_files(data.path());
        assert_eq!(files.len(), 1, "one segment: {files:?}");
        damage(&files[0], kind);
        assert_refused_naming(
            data.path(),
            &files[0],
            &format!("segment {kind:?} after {stop:?}"),
        )
        .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_damage_after_kill_9_is_refused_naming_the_file() {
    for kind in [
        Damage::FlipByte,
        Damage::Zero,
        Damage::Truncate,
        Damage::Delete,
    ] {
        damaged_segment_is_refused(&format!("damage-seg-{kind:?}-k9"), Stop::Kill9, kind).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_damage_after_a_clean_stop_is_refused_naming_the_file() {
    for kind in [
        Damage::FlipByte,
        Damage::Zero,
        Damage::Truncate,
        Damage::Delete,
    ] {
        damaged_segment_is_refused(&format!("damage-seg-{kind:?}-term"), Stop::Sigterm, kind).await
    }
}

/// Copies a directory tree (regular files only).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// One byte flipped in sled's log file at each of `samples` places: every
/// start either is refused naming the file, or finds the queue with all its
/// messages. Never: the queue gone, or fewer messages.
async fn sled_byte_flips(name: &str, stop: Stop, samples: u64) {
    within_for(Duration::from_secs(300), async {
        let pristine = stored(name, stop).await;
        let db = pristine.path().join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        let mut refused = 0;
        for k in 0..samples {
            let data = TempDir::new(&format!("{name}-{k}"));
            let _ = std::fs::remove_dir_all(data.path());
            copy_dir(pristine.path(), data.path());
            let db = data.path().join("db");
            let at = len * k / samples + k % 7;
            {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&db)
                    .unwrap();
                let mut b = [0u8];
                f.read_exact_at(&mut b, at).unwrap();
                f.write_all_at(&[!b[0]], at).unwrap();
            }
            match restart(data.path(), None).await {
                Outcome::Refused { stderr } => {
                    refused += 1;
                    assert!(
                        !stderr.contains("panicked") && stderr.contains(db.to_str().unwrap()),
                        "byte {at} of {len} flipped: the error should name {}; stderr:\n{stderr}",
                        db.display()
                    );
                }
                Outcome::Started { broker, messages } => assert_eq!(
                    messages,
                    Some(MESSAGES as u32),
                    "byte {at} of {len} flipped in {}: the broker started with {messages:?} \
                     messages in {QUEUE}; stderr:\n{}",
                    db.display(),
                    broker.stderr()
                ),
            }
        }
        eprintln!("{name}: {refused} of {samples} byte flips refused, the rest harmless");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_byte_flip_after_kill_9_never_drops_the_queue() {
    sled_byte_flips("damage-sled-k9", Stop::Kill9, 24).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_byte_flip_after_a_clean_stop_never_drops_the_queue() {
    sled_byte_flips("damage-sled-term", Stop::Sigterm, 24).await
}

// ---------------------------------------------------------------- storage.on_damage = "report"

async fn get(addr: std::net::SocketAddr, path: &str) -> common::http::Reply {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode("guest:guest");
    common::http::raw_request(addr, "GET", path, Some(&token), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_damage_report_the_broker_starts_and_says_which_queue_lost_how_many() {
    within_for(TEST_TIMEOUT, async {
        let data = stored("damage-report", Stop::Kill9).await;
        let file = index_file(data.path());
        // Slots 500..600 (behind the one-slot header) zeroed.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            f.write_all_at(&vec![0u8; 100 * SLOT as usize], 501 * SLOT)
                .unwrap();
        }
        let config = data.path().join("report.toml");
        std::fs::write(&config, "[storage]\non_damage = \"report\"\n").unwrap();

        let Outcome::Started { broker, messages } = restart(data.path(), Some(&config)).await
        else {
            panic!("with on_damage = \"report\" the broker starts");
        };
        assert_eq!(
            messages,
            Some(MESSAGES as u32 - 100),
            "the 100 zeroed are gone"
        );
        let line = broker
            .wait_for_log(WAIT, |l| l.contains("store damage"))
            .unwrap_or_else(|| panic!("a log line reports the damage:\n{}", broker.stderr()));
        assert!(
            line.contains("ERROR")
                && line.contains("queue=q")
                && line.contains("lost=100")
                && line.contains(file.to_str().unwrap()),
            "{line}"
        );
        let mgmt = broker.mgmt_addr();
        let health = get(mgmt, "/api/health/checks/store").await;
        assert_eq!(health.status, 503, "{}", health.text);
        let d = &health.json["damage"][0];
        assert_eq!(d["queue"], "q", "{}", health.text);
        assert_eq!(d["vhost"], "/", "{}", health.text);
        assert_eq!(d["lost_messages"], 100, "{}", health.text);
        assert_eq!(d["file"], file.to_str().unwrap(), "{}", health.text);
        let metrics = get(mgmt, "/metrics").await.text;
        let sample = format!(
            "leveret_store_lost_messages{{vhost=\"/\",queue=\"q\",file=\"{}\"}} 100",
            file.display()
        );
        assert!(metrics.contains(&sample), "{sample} in:\n{metrics}");

        // The loss was taken: the next start is clean, and the rest is there.
        let mut broker = broker;
        broker.sigterm_and_wait();
        drop(broker);
        let Outcome::Started { broker, messages } = restart(data.path(), None).await else {
            panic!("the store was repaired by the reported start");
        };
        assert_eq!(messages, Some(MESSAGES as u32 - 100));
        let health = get(broker.mgmt_addr(), "/api/health/checks/store").await;
        assert_eq!(health.status, 200, "{}", health.text);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_damage_report_a_damaged_body_is_dropped_and_reported() {
    within_for(TEST_TIMEOUT, async {
        let data = stored("damage-report-seg", Stop::Sigterm).await;
        let segment = segment_files(data.path()).remove(0);
        damage(&segment, Damage::FlipByte);
        let config = data.path().join("report.toml");
        std::fs::write(&config, "[storage]\non_damage = \"report\"\n").unwrap();
        let Outcome::Started { broker, messages } = restart(data.path(), Some(&config)).await
        else {
            panic!("with on_damage = \"report\" the broker starts");
        };
        assert_eq!(messages, Some(MESSAGES as u32 - 1), "one body flipped");
        let health = get(broker.mgmt_addr(), "/api/health/checks/store").await;
        assert_eq!(health.status, 503, "{}", health.text);
        assert_eq!(
            health.json["damage"][0]["lost_messages"], 1,
            "{}",
            health.text
        );
        assert_eq!(
            health.json["damage"][0]["file"],
            segment.to_str().unwrap(),
            "{}",
            health.text
        );
    })
    .await
}

// ---------------------------------------------------------------- the whole matrix

/// Every regular file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            } else {
                out.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// Damage that fits any file, however small: a byte flipped, the written
/// half cut off or zeroed (up to 100 slots' worth), the file deleted.
fn damage_any(path: &Path, kind: Damage) -> bool {
    use std::os::unix::fs::FileExt;
    let len = std::fs::metadata(path).unwrap().len();
    let written = written_len(path);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    match kind {
        Damage::Delete => std::fs::remove_file(path).unwrap(),
        _ if written == 0 => return false,
        Damage::Truncate => f.set_len(written / 2).unwrap(),
        Damage::Zero => {
            let n = (written - written / 2).min(100 * SLOT);
            f.write_all_at(&vec![0; n as usize], written / 2).unwrap();
        }
        Damage::FlipByte => {
            let mut b = [0u8];
            f.read_exact_at(&mut b, written / 2).unwrap();
            f.write_all_at(&[!b[0]], written / 2).unwrap();
        }
        Damage::SlotAcked => unreachable!(),
    }
    let _ = len;
    true
}

/// Each kind of damage to each file the store leaves, after each kind of
/// stop: the start is refused naming the damaged file, or every message is
/// there. Prints the matrix RELIABILITY.md shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_matrix_never_loses_a_message_silently() {
    within_for(Duration::from_secs(600), async {
        let mut rows = Vec::new();
        for stop in [Stop::Kill9, Stop::Sigterm] {
            let pristine = stored(&format!("damage-matrix-{stop:?}"), stop).await;
            for file in files_under(pristine.path()) {
                for kind in [
                    Damage::FlipByte,
                    Damage::Truncate,
                    Damage::Zero,
                    Damage::Delete,
                ] {
                    let data = TempDir::new(&format!("damage-matrix-case-{stop:?}"));
                    let _ = std::fs::remove_dir_all(data.path());
                    copy_dir(pristine.path(), data.path());
                    let path = data.path().join(&file);
                    if !damage_any(&path, kind) {
                        continue;
                    }
                    let what = format!("{stop:?} | {} | {kind:?}", file.display());
                    let outcome = match restart(data.path(), None).await {
                        Outcome::Refused { stderr } => {
                            assert!(
                                !stderr.contains("panicked")
                                    && stderr.contains(path.to_str().unwrap()),
                                "{what}: refused without naming {}:\n{stderr}",
                                path.display()
                            );
                            let line = stderr
                                .lines()
                                .rfind(|l| l.contains("ERROR leveret:"))
                                .unwrap_or_default()
                                .to_string();
                            let detail = line
                                .split_once(" is damaged (")
                                .map(|(_, d)| d.rsplit_once("); refusing").map_or(d, |x| x.0))
                                .unwrap_or(&line)
                                .replace(data.path().to_str().unwrap(), "DATA");
                            format!("refused: {detail}")
                        }
                        Outcome::Started { broker, messages } => {
                            assert_eq!(
                                messages,
                                Some(MESSAGES as u32),
                                "{what}: started with {messages:?} messages:\n{}",
                                broker.stderr()
                            );
                            "starts, all 1,000 messages there".to_string()
                        }
                    };
                    rows.push(format!("| {what} | {outcome} |"));
                }
            }
        }
        eprintln!("MATRIX\n{}", rows.join("\n"));
    })
    .await
}

/// A users/vhosts record in sled that does not decode stops the start: it
/// used to be skipped, and a vhost skipped had its queues dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_vhost_record_stops_the_start_instead_of_dropping_its_queues() {
    within_for(TEST_TIMEOUT, async {
        let data = stored("damage-access", Stop::Sigterm).await;
        {
            let config = leveret::config::StorageConfig::default();
            let (store, recovered) = leveret::Store::open(data.path(), &config).unwrap();
            let (key, _) = recovered
                .access
                .iter()
                .find(|(_, v)| String::from_utf8_lossy(v).contains("Default virtual host"))
                .expect("the default vhost's record");
            store.put_access(key, Some(b"{not json"));
            store.close();
        }
        assert_refused_naming(
            data.path(),
            &data.path().join("db"),
            "unreadable vhost record",
        )
        .await;
    })
    .await
}

/// A stream's segment damaged anywhere but a torn tail refuses the start,
/// naming the file; a torn last write (never confirmed) is cut off and the
/// confirmed entries before it are all there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_stream_segment_is_refused_naming_the_file() {
    within_for(TEST_TIMEOUT, async {
        let data = TempDir::new("damage-stream");
        let mut broker = BrokerProcess::start(data.path());
        {
            let conn = connect_uri(&broker.uri()).await;
            let ch = amqp::timed_confirm_channel(&conn, WAIT).await;
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                lapin::types::AMQPValue::LongString("stream".into()),
            );
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare("events".into(), durable, args)
                .await
                .expect("declare");
            for i in 0..100 {
                let body = format!("event-{i:03}");
                amqp::publish_and_confirm(&ch, "", "events", body.as_bytes(), persistent()).await;
            }
        }
        broker.kill9();
        drop(broker);
        let dir = data.path().join("streams");
        let stream_dir = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let segment = std::fs::read_dir(&stream_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("a segment");

        // A torn tail: garbage after the last entry, as a write cut short.
        let original = std::fs::read(&segment).unwrap();
        let end = original.iter().rposition(|b| *b != 0).unwrap() + 1;
        let mut torn = original.clone();
        torn.truncate(end);
        torn.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3, 4, 5]);
        std::fs::write(&segment, &torn).unwrap();
        match restart(data.path(), None).await {
            Outcome::Started { broker, .. } => {
                let line = broker
                    .wait_for_log(WAIT, |l| l.contains("accepting AMQP"))
                    .unwrap();
                let at = line.find("addr=").unwrap() + 5;
                let addr = line[at..].split_whitespace().next().unwrap();
                let conn = connect_uri(&format!("amqp://guest:guest@{addr}/%2f")).await;
                let ch = conn.create_channel().await.unwrap();
                ch.basic_qos(200, BasicQosOptions::default()).await.unwrap();
                let mut first = FieldTable::default();
                first.insert(
                    "x-stream-offset".into(),
                    lapin::types::AMQPValue::LongString("first".into()),
                );
                let mut c = ch
                    .basic_consume(
                        "events".into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        first,
                    )
                    .await
                    .unwrap();
                let got = amqp::next_n(&mut c, 100).await;
                assert_eq!(amqp::text(&got[99]), "event-099");
            }
            Outcome::Refused { stderr } => panic!("a torn tail refused the start:\n{stderr}"),
        }

        // A flipped byte in the middle: refused, naming the segment.
        let mut flipped = original;
        flipped[end / 2] ^= 0x40;
        std::fs::write(&segment, &flipped).unwrap();
        assert_refused_naming(data.path(), &segment, "stream byte flip").await;
    })
    .await
}
