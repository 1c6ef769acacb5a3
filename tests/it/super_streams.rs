//! Super streams over RabbitMQ's stream protocol (issue 18 part 5): the
//! commands Route, Partitions, CreateSuperStream and DeleteSuperStream
//! with RabbitMQ's response codes (a raw client), and RabbitMQ's Python
//! client (rstream, tests/python/super_stream_client.py) creating,
//! publishing to and consuming super streams, consumer groups included.

use crate::common;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PEER_PROPERTIES: u16 = 17;
const SASL_HANDSHAKE: u16 = 18;
const SASL_AUTHENTICATE: u16 = 19;
const TUNE: u16 = 20;
const OPEN: u16 = 21;
const HEARTBEAT: u16 = 23;
const ROUTE: u16 = 24;
const PARTITIONS: u16 = 25;
const SUBSCRIBE: u16 = 7;
const METADATA_UPDATE: u16 = 16;
const CONSUMER_UPDATE: u16 = 26;
const CREATE_SUPER_STREAM: u16 = 29;
const DELETE_SUPER_STREAM: u16 = 30;
const RESPONSE: u16 = 0x8000;

const OK: u16 = 1;
const STREAM_DOES_NOT_EXIST: u16 = 2;
const STREAM_ALREADY_EXISTS: u16 = 5;
const ACCESS_REFUSED: u16 = 16;
const PRECONDITION_FAILED: u16 = 17;

/// A minimal stream protocol client: requests and their responses.
struct Raw {
    socket: TcpStream,
    corr: u32,
}

fn string(v: &mut Vec<u8>, s: &str) {
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

fn strings(v: &mut Vec<u8>, list: &[&str]) {
    v.extend_from_slice(&(list.len() as u32).to_be_bytes());
    for s in list {
        string(v, s);
    }
}

impl Raw {
    async fn open(broker: &common::TestBroker, user: &str, password: &str) -> Raw {
        let addr = broker.stream_addr.expect("a stream port");
        let mut c = Raw {
            socket: TcpStream::connect(addr).await.unwrap(),
            corr: 0,
        };
        let mut props = 1u32.to_be_bytes().to_vec();
        string(&mut props, "connection_name");
        string(&mut props, "super-streams-test");
        assert_eq!(c.request(PEER_PROPERTIES, &props).await.0, OK);
        assert_eq!(c.request(SASL_HANDSHAKE, &[]).await.0, OK);
        let mut auth = Vec::new();
        string(&mut auth, "PLAIN");
        let response = format!("\0{user}\0{password}");
        auth.extend_from_slice(&(response.len() as u32).to_be_bytes());
        auth.extend_from_slice(response.as_bytes());
        assert_eq!(c.request(SASL_AUTHENTICATE, &auth).await.0, OK);
        let (key, _) = c.next().await;
        assert_eq!(key, TUNE);
        let mut tune = (TUNE | RESPONSE).to_be_bytes().to_vec();
        tune.extend_from_slice(&1u16.to_be_bytes());
        tune.extend_from_slice(&(1u32 << 20).to_be_bytes());
        tune.extend_from_slice(&0u32.to_be_bytes());
        c.send(&tune).await;
        let mut vhost = Vec::new();
        string(&mut vhost, "/");
        assert_eq!(c.request(OPEN, &vhost).await.0, OK);
        c
    }

    async fn send(&mut self, frame: &[u8]) {
        let mut v = (frame.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        self.socket.write_all(&v).await.unwrap();
    }

    /// The next frame but heartbeats: its key and what follows the version.
    async fn next(&mut self) -> (u16, Vec<u8>) {
        loop {
            let mut size = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(10), self.socket.read_exact(&mut size))
                .await
                .expect("a frame within 10 s")
                .unwrap();
            let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
            self.socket.read_exact(&mut frame).await.unwrap();
            let key = u16::from_be_bytes([frame[0], frame[1]]);
            if key != HEARTBEAT {
                return (key, frame[4..].to_vec());
            }
        }
    }

    /// Sends request `key` with `fields` after the correlation id; the
    /// response's code and what follows it.
    async fn request(&mut self, key: u16, fields: &[u8]) -> (u16, Vec<u8>) {
        self.corr += 1;
        let mut f = key.to_be_bytes().to_vec();
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&self.corr.to_be_bytes());
        f.extend_from_slice(fields);
        self.send(&f).await;
        let (got, body) = self.next().await;
        assert_eq!(got, key | RESPONSE, "response key");
        assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), self.corr);
        (u16::from_be_bytes([body[4], body[5]]), body[6..].to_vec())
    }

    /// A response's list of strings.
    fn list(body: &[u8]) -> Vec<String> {
        let count = u32::from_be_bytes(body[..4].try_into().unwrap());
        let mut at = 4;
        (0..count)
            .map(|_| {
                let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
                let s = String::from_utf8(body[at + 2..at + 2 + len].to_vec()).unwrap();
                at += 2 + len;
                s
            })
            .collect()
    }

    async fn partitions(&mut self, name: &str) -> (u16, Vec<String>) {
        let mut f = Vec::new();
        string(&mut f, name);
        let (code, body) = self.request(PARTITIONS, &f).await;
        (code, Raw::list(&body))
    }

    async fn route(&mut self, name: &str, key: &str) -> (u16, Vec<String>) {
        let mut f = Vec::new();
        string(&mut f, key);
        string(&mut f, name);
        let (code, body) = self.request(ROUTE, &f).await;
        (code, Raw::list(&body))
    }

    async fn create(&mut self, name: &str, partitions: &[&str], keys: &[&str]) -> u16 {
        let mut f = Vec::new();
        string(&mut f, name);
        strings(&mut f, partitions);
        strings(&mut f, keys);
        f.extend_from_slice(&1u32.to_be_bytes());
        string(&mut f, "max-age");
        string(&mut f, "1h");
        self.request(CREATE_SUPER_STREAM, &f).await.0
    }

    /// Subscribes `id` to `stream` from first with these properties.
    async fn subscribe(&mut self, id: u8, stream: &str, properties: &[(&str, &str)]) -> u16 {
        let mut f = vec![id];
        string(&mut f, stream);
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(&10u16.to_be_bytes());
        f.extend_from_slice(&(properties.len() as u32).to_be_bytes());
        for (k, v) in properties {
            string(&mut f, k);
            string(&mut f, v);
        }
        self.request(SUBSCRIBE, &f).await.0
    }

    async fn delete(&mut self, name: &str) -> u16 {
        let mut f = Vec::new();
        string(&mut f, name);
        self.request(DELETE_SUPER_STREAM, &f).await.0
    }
}

/// Runs tests/python/super_stream_client.py to its end; its last JSON line.
async fn rstream(broker: &common::TestBroker, args: &[&str]) -> serde_json::Value {
    crate::stream_protocol::run_script(broker, "super_stream_client.py", args).await
}

fn names(v: &serde_json::Value) -> Vec<String> {
    crate::stream_protocol::strings(v)
}

fn partition_names(name: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{name}-{i}")).collect()
}

/// CreateSuperStream, Partitions, Route and DeleteSuperStream as rstream
/// calls them, on super streams made over the protocol and over the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_are_created_listed_routed_and_deleted_by_rstream() {
    let broker = common::TestBroker::start().await;
    if broker.stream_addr.is_none() {
        return;
    }
    let name = common::unique("ss-orders");
    rstream(&broker, &["create", &name, "3"]).await;
    let listed = rstream(&broker, &["partitions", &name]).await;
    assert_eq!(names(&listed["partitions"]), partition_names(&name, 3));
    let routed = rstream(&broker, &["route", &name, "2"]).await;
    assert_eq!(names(&routed["streams"]), vec![format!("{name}-2")]);
    let routed = rstream(&broker, &["route", &name, "no-such-key"]).await;
    assert!(names(&routed["streams"]).is_empty());
    if let Some(api) = common::http::Api::of(&broker) {
        let x = api.get(&format!("/api/exchanges/%2F/{name}")).await.json;
        assert_eq!(x["arguments"]["x-super-stream"], true, "{x}");
        // One made over the API is served the same.
        let made = common::unique("ss-api");
        let r = api
            .put(
                &format!("/api/stream/super-streams/%2F/{made}"),
                serde_json::json!({"partitions": 3}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let listed = rstream(&broker, &["partitions", &made]).await;
        assert_eq!(names(&listed["partitions"]), partition_names(&made, 3));
        rstream(&broker, &["delete", &made]).await;
        assert_eq!(
            api.get(&format!("/api/queues/%2F/{made}-0")).await.status,
            404
        );
    }
    rstream(&broker, &["delete", &name]).await;
    let listed = rstream(&broker, &["partitions", &name]).await;
    assert!(names(&listed["partitions"]).is_empty());
}

/// RabbitMQ's response codes for each failure of the four commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_stream_commands_answer_with_rabbitmq_codes() {
    let broker = common::TestBroker::start().await;
    if broker.stream_addr.is_none() {
        return;
    }
    let mut c = Raw::open(&broker, "guest", "guest").await;
    let name = common::unique("ss-codes");
    let parts = partition_names(&name, 2);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    assert_eq!(c.partitions(&name).await, (STREAM_DOES_NOT_EXIST, vec![]));
    assert_eq!(c.route(&name, "0").await, (STREAM_DOES_NOT_EXIST, vec![]));
    assert_eq!(c.delete(&name).await, STREAM_DOES_NOT_EXIST);
    // As many binding keys as partitions, distinct partitions, a name.
    assert_eq!(c.create(&name, &parts, &["0"]).await, PRECONDITION_FAILED);
    assert_eq!(
        c.create(&name, &[parts[0], parts[0]], &["0", "1"]).await,
        PRECONDITION_FAILED
    );
    assert_eq!(c.create("", &parts, &["0", "1"]).await, PRECONDITION_FAILED);
    assert_eq!(c.create(&name, &parts, &["a", "b"]).await, OK);
    assert_eq!(
        c.partitions(&name).await,
        (OK, vec![parts[0].into(), parts[1].into()])
    );
    assert_eq!(c.route(&name, "b").await, (OK, vec![parts[1].to_string()]));
    assert_eq!(c.route(&name, "c").await, (OK, vec![]));
    // The exchange exists: already exists, as does a partition.
    assert_eq!(
        c.create(&name, &parts, &["a", "b"]).await,
        STREAM_ALREADY_EXISTS
    );
    let other = common::unique("ss-codes-other");
    assert_eq!(
        c.create(&other, &[parts[0]], &["a"]).await,
        STREAM_ALREADY_EXISTS
    );
    assert_eq!(c.partitions(&other).await.0, STREAM_DOES_NOT_EXIST);
    // A user who may not configure: refused, nothing made or removed.
    if let Some(api) = common::http::Api::of(&broker) {
        let user = common::unique("ss-reader");
        let r = api
            .put(
                &format!("/api/users/{user}"),
                serde_json::json!({"password": "pw", "tags": ""}),
            )
            .await;
        assert!(r.status == 201 || r.status == 204, "{r:?}");
        let r = api
            .put(
                &format!("/api/permissions/%2F/{user}"),
                serde_json::json!({"configure": "^$", "write": "^$", "read": ".*"}),
            )
            .await;
        assert!(r.status == 201 || r.status == 204, "{r:?}");
        let mut limited = Raw::open(&broker, &user, "pw").await;
        let refused = common::unique("ss-refused");
        assert_eq!(
            limited
                .create(&refused, &[&format!("{refused}-0")], &["0"])
                .await,
            ACCESS_REFUSED
        );
        assert_eq!(c.partitions(&refused).await.0, STREAM_DOES_NOT_EXIST);
        assert_eq!(limited.delete(&name).await, ACCESS_REFUSED);
        // Route needs write permission; partitions read or write.
        assert_eq!(limited.route(&name, "a").await, (ACCESS_REFUSED, vec![]));
        assert_eq!(limited.partitions(&name).await.0, OK);
    }
    // A single active consumer needs a name; with one, it is told it is
    // active (a server request: correlation id, subscription, active).
    assert_eq!(
        c.subscribe(0, parts[0], &[("single-active-consumer", "true")])
            .await,
        PRECONDITION_FAILED
    );
    let long = "g".repeat(256);
    assert_eq!(
        c.subscribe(
            0,
            parts[0],
            &[("single-active-consumer", "true"), ("name", &long)]
        )
        .await,
        PRECONDITION_FAILED
    );
    let group = [
        ("single-active-consumer", "true"),
        ("name", "g"),
        ("super-stream", name.as_str()),
    ];
    assert_eq!(c.subscribe(1, parts[0], &group).await, OK);
    let (key, update) = c.next().await;
    assert_eq!((key, &update[4..]), (CONSUMER_UPDATE, &[1u8, 1][..]));
    assert_eq!(c.delete(&name).await, OK);
    // The subscription's stream is gone: the client is told.
    assert_eq!(c.next().await.0, METADATA_UPDATE);
    assert_eq!(c.partitions(&name).await.0, STREAM_DOES_NOT_EXIST);
    assert_eq!(c.delete(&name).await, STREAM_DOES_NOT_EXIST);
}

/// A super-stream producer's messages with many keys: all land, each key
/// in exactly one partition and in the order published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_stream_producer_keeps_each_key_in_one_partition_in_order() {
    let broker = common::TestBroker::start().await;
    if broker.stream_addr.is_none() {
        return;
    }
    let name = common::unique("ss-keys");
    rstream(&broker, &["create", &name, "3"]).await;
    let (keys, per_key) = (40usize, 10usize);
    let published = rstream(
        &broker,
        &["publish", &name, &keys.to_string(), &per_key.to_string()],
    )
    .await;
    assert_eq!(published["confirmed"], keys * per_key);
    let mut seen: std::collections::HashMap<String, (String, Vec<usize>)> = Default::default();
    let mut total = 0;
    let mut used = 0;
    for p in partition_names(&name, 3) {
        let read = rstream(&broker, &["read", &p]).await;
        let bodies = names(&read["bodies"]);
        used += usize::from(!bodies.is_empty());
        for b in bodies {
            total += 1;
            let (key, seq) = b.split_once(':').unwrap();
            let entry = seen
                .entry(key.to_string())
                .or_insert_with(|| (p.clone(), Vec::new()));
            assert_eq!(entry.0, p, "key {key} in two partitions");
            entry.1.push(seq.parse().unwrap());
        }
    }
    assert_eq!(total, keys * per_key);
    assert_eq!(seen.len(), keys);
    assert!(used >= 2, "keys spread over the partitions");
    for (key, (_, seqs)) in &seen {
        assert_eq!(seqs, &(0..per_key).collect::<Vec<_>>(), "order of {key}");
    }
    rstream(&broker, &["delete", &name]).await;
}

/// A consumer group member (tests/python/super_stream_client.py member)
/// running in the background; its JSON lines as they come.
struct Member {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Member {
    fn start(broker: &common::TestBroker, name: &str, group: &str) -> Member {
        use std::io::BufRead;
        let addr = broker.stream_addr.expect("a stream port");
        let mut child = std::process::Command::new(crate::cross_client::python())
            .current_dir(crate::cross_client::repo_root())
            .arg("tests/python/super_stream_client.py")
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .args(["member", name, group, "120"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python runs");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        // Its own thread: a blocking read, off the test's runtime.
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Member { child, lines }
    }

    /// Ends it at once: its connection dies with it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The partitions it is active on now, by its last update of each.
    fn active(&self) -> std::collections::BTreeSet<String> {
        let mut active = std::collections::BTreeSet::new();
        for l in self.lines.lock().unwrap().iter() {
            if let (Some(a), Some(s)) = (l["active"].as_bool(), l["stream"].as_str()) {
                if a {
                    active.insert(s.to_string());
                } else {
                    active.remove(s);
                }
            }
        }
        active
    }

    /// Its messages: (partition, offset, body), in the order received.
    fn messages(&self) -> Vec<(String, u64, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| {
                Some((
                    l["stream"].as_str()?.to_string(),
                    l["offset"].as_u64()?,
                    l["body"].as_str()?.to_string(),
                ))
            })
            .collect()
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A consumer group of two members over a super stream of three
/// partitions: each partition has exactly one active member and both have
/// some; when one member's connection dies, its partitions move to the
/// other, which resumes after the offset the group stored, so every
/// message is read and each key's messages stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_shares_partitions_and_survives_a_member_dying() {
    let broker = common::TestBroker::start().await;
    if broker.stream_addr.is_none() {
        return;
    }
    let name = common::unique("ss-group");
    let parts = partition_names(&name, 3);
    let all: std::collections::BTreeSet<String> = parts.iter().cloned().collect();
    rstream(&broker, &["create", &name, "3"]).await;
    let mut a = Member::start(&broker, &name, "billing");
    until("the first member active on every partition", || {
        a.active() == all
    })
    .await;
    let b = Member::start(&broker, &name, "billing");
    // Partition 1 (1 % 2) moves to the second member, 0 and 2 stay.
    until("partition 1 moved to the second member", || {
        b.active().len() == 1
    })
    .await;
    assert_eq!(
        b.active(),
        [parts[1].clone()].into_iter().collect(),
        "{:?}",
        b.lines.lock().unwrap()
    );
    assert_eq!(
        a.active(),
        [parts[0].clone(), parts[2].clone()].into_iter().collect()
    );
    let (keys, per_key) = (20usize, 15usize);
    rstream(
        &broker,
        &[
            "publish",
            &name,
            &keys.to_string(),
            &per_key.to_string(),
            "0",
        ],
    )
    .await;
    until("the first batch read", || {
        a.messages().len() + b.messages().len() >= keys * per_key
    })
    .await;
    // Each member read only its own partitions.
    assert!(a.messages().iter().all(|(p, _, _)| p != &parts[1]));
    assert!(b.messages().iter().all(|(p, _, _)| p == &parts[1]));
    assert!(!a.messages().is_empty() && !b.messages().is_empty());
    // The first member dies: its partitions move to the second.
    let before_kill = a.messages();
    a.kill();
    until("the survivor active on every partition", || {
        b.active() == all
    })
    .await;
    rstream(
        &broker,
        &[
            "publish",
            &name,
            &keys.to_string(),
            &per_key.to_string(),
            &per_key.to_string(),
        ],
    )
    .await;
    let read_by_b = |b: &Member| {
        let mut offsets = std::collections::HashSet::new();
        for (p, o, _) in before_kill.iter().chain(b.messages().iter()) {
            offsets.insert((p.clone(), *o));
        }
        offsets.len()
    };
    until("every message read", || read_by_b(&b) >= 2 * keys * per_key).await;
    // Per partition: what the dead member read, then what the survivor
    // read (a few again, after the stored offset): no gap, and each key's
    // messages in order.
    for p in &parts {
        let mut next = 0u64;
        let mut last_seq: std::collections::HashMap<String, usize> = Default::default();
        for (_, offset, body) in before_kill
            .iter()
            .chain(b.messages().iter())
            .filter(|(q, _, _)| q == p)
        {
            assert!(
                *offset <= next,
                "{p}: offset {offset} skipped to from {next}"
            );
            if *offset < next {
                continue; // read again after the handover
            }
            next = offset + 1;
            let (key, seq) = body.split_once(':').unwrap();
            let seq: usize = seq.parse().unwrap();
            if let Some(prev) = last_seq.insert(key.to_string(), seq) {
                assert!(seq > prev, "{p}: {key} {seq} after {prev}");
            }
        }
    }
    // The group's stored offsets (its name is the reference) give its lag
    // per partition in the queue API: none once everything is read.
    if let Some(api) = common::http::Api::of(&broker) {
        for p in &parts {
            let path = format!("/api/queues/%2F/{p}");
            let mut lag = None;
            for _ in 0..50 {
                let q = api.get(&path).await.json;
                lag = q["stream"]["stored_offsets"]["billing"]["lag"].as_u64();
                if lag == Some(0) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(lag, Some(0), "{p}: the group's lag");
        }
    }
    drop(b);
    rstream(&broker, &["delete", &name]).await;
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}
