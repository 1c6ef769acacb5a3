//! Resource bounds against a hostile client (issue 14, findings 5, 7, 9):
//! topic routing stays cheap whatever the binding keys, time-valued
//! arguments are bounded as RabbitMQ bounds them, and the connection limit
//! counts a connection from accept.
//!
//! Tests that could wedge a broker without the fix run it as a child
//! process, so a failure is a timeout and a killed child, not a hung test.

use crate::common;

use common::amqp::{amqp_error, confirm_channel, timed_for};
use common::process::{BrokerProcess, TempDir};
use common::raw::Raw;
use common::{against_other_broker, unique, TestBroker};
use lapin::{
    options::*, types::AMQPValue, types::FieldTable, BasicProperties, Connection,
    ConnectionProperties, ExchangeKind,
};
use std::time::Duration;

/// Generous: a broker that is merely slow passes; one that went
/// exponential (or quadratic at scale) does not.
const GENEROUS: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(10);

/// Where a test connects: a child broker process (kept alive by the
/// value), or the broker `LEVERET_TEST_URI` names.
struct Target {
    uri: String,
    _broker: Option<(BrokerProcess, TempDir)>,
}

impl Target {
    fn start(name: &str) -> Target {
        if let Ok(uri) = std::env::var("LEVERET_TEST_URI") {
            return Target { uri, _broker: None };
        }
        let dir = TempDir::new(name);
        let broker = BrokerProcess::start(dir.path());
        Target {
            uri: broker.uri(),
            _broker: Some((broker, dir)),
        }
    }

    async fn connect(&self) -> Connection {
        timed_for(
            STEP,
            "connection",
            Connection::connect(&self.uri, ConnectionProperties::default()),
        )
        .await
        .expect("connect")
    }
}

// ------------------------------------------------------------ topic routing

/// `n` copies of `word` joined by dots.
fn words(word: &str, n: usize) -> String {
    vec![word; n].join(".")
}

async fn get_count(ch: &lapin::Channel, queue: &str) -> usize {
    let mut n = 0;
    while let Some(_m) = timed_for(
        STEP,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    {
        n += 1;
    }
    n
}

/// Binding keys full of `#` against routing keys of the most words a
/// routing key can have: the old backtracking matcher tried every way of
/// sharing the words among the `#`s (exponential) while holding the
/// exchange's bindings lock. Each publish is confirmed, and each message
/// reaches exactly the queues the topic rules say.
///
/// Leveret only: RabbitMQ 3.10's own trie matcher backtracks too, and did
/// not confirm the first of these publishes within the minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_keys_full_of_hashes_route_at_once() {
    if against_other_broker() {
        return;
    }
    let target = Target::start("topic-hashes");
    let conn = target.connect().await;
    let ch = confirm_channel(&conn).await;
    let ex = unique("hostile-topic");
    ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    // Each queue with its binding key; 255 bytes at most, as AMQP allows.
    let hashes_then_z = words("#", 24) + ".z";
    let hash_a_pairs_then_b = words("#.a", 60) + ".b";
    let bindings = [
        ("any-a", "a.#".to_string()),
        ("hashes-z", hashes_then_z),
        ("pairs-b", hash_a_pairs_then_b),
        ("all", words("#", 127)),
    ];
    let mut queues = Vec::new();
    for (name, key) in &bindings {
        let q = unique(name);
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.queue_bind(
            q.as_str().into(),
            ex.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
        queues.push(q);
    }
    // 128 words (255 bytes): no `z` or `b` at the end for the hard ones.
    let keys = [
        words("a", 128),
        words("a", 127) + ".z",
        words("a", 127) + ".b",
        words("a", 127) + ".c",
    ];
    for key in &keys {
        let confirm = ch
            .basic_publish(
                ex.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish");
        timed_for(GENEROUS, "the publish to be confirmed", confirm)
            .await
            .expect("confirm");
    }
    let mut counts = Vec::new();
    for q in &queues {
        counts.push(get_count(&ch, q).await);
    }
    assert_eq!(counts, vec![4, 1, 1, 4], "messages per queue {queues:?}");
    let _ = conn.close(200, "bye".into()).await;
}

/// Many bindings on one topic exchange: each bind used to rebuild the
/// whole index (N binds, O(N²)). Binding them all, routing through them
/// and deleting their queue each finish well inside a generous deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topic_bindings_bind_route_and_go() {
    const BINDINGS: usize = 20_000;
    let target = Target::start("topic-many");
    let conn = target.connect().await;
    let ch = confirm_channel(&conn).await;
    let ex = unique("hostile-topic-many");
    ch.exchange_declare(
        ex.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    let q = unique("many");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    timed_for(GENEROUS, "every binding to be made", async {
        for i in 0..BINDINGS {
            ch.queue_bind(
                q.as_str().into(),
                ex.as_str().into(),
                format!("k.{i}.*.#").as_str().into(),
                QueueBindOptions { nowait: true },
                FieldTable::default(),
            )
            .await
            .expect("queue.bind");
        }
        // A bind with a reply: every nowait one before it is done.
        ch.queue_bind(
            q.as_str().into(),
            ex.as_str().into(),
            "last".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    })
    .await;
    for key in ["k.7.x", "k.19999.x.y.z", "last", "k.20000.x", "k"] {
        let confirm = ch
            .basic_publish(
                ex.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                b"m",
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish");
        timed_for(GENEROUS, "the publish to be confirmed", confirm)
            .await
            .expect("confirm");
    }
    assert_eq!(get_count(&ch, &q).await, 3);
    timed_for(
        GENEROUS,
        "the queue and its bindings to go",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    let _ = conn.close(200, "bye".into()).await;
}

// ------------------------------------------------------ time-valued arguments

/// RabbitMQ's ceiling for every TTL: ten years in milliseconds.
const TEN_YEARS_MS: u64 = 315_360_000_000;

/// Publishes to `queue` with `expiration` on a fresh confirm channel; the
/// close (code, text) if the broker refused it.
async fn publish_expiring(
    conn: &Connection,
    queue: &str,
    expiration: &str,
) -> Option<(u16, String)> {
    let ch = confirm_channel(conn).await;
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_expiration(expiration.into()),
        )
        .await
        .expect("basic.publish");
    match timed_for(STEP, "the confirm or the close", confirm).await {
        Ok(_) => None,
        Err(e) => Some(amqp_error(&e).expect("a channel close")),
    }
}

/// An `expiration` over ten years is refused with 406, as RabbitMQ does,
/// whatever its size (the largest u64 used to expire the message at once);
/// ten years exactly is kept.
#[tokio::test]
async fn expiration_over_ten_years_is_refused() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let setup = conn.create_channel().await.expect("channel");
    let q = unique("ten-years");
    setup
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    // RabbitMQ prints the reason with Erlang's ~p, which puts a value that
    // would run past column 78 on a line of its own (texts as RabbitMQ
    // 3.10 sent them).
    let under = |column: usize| format!(",\n{}", " ".repeat(column));
    let huge = "9".repeat(40);
    let cases = [
        ("315360000001", "{value_too_large,315360000001}".to_string()),
        (
            "00315360000001",
            "{value_too_large,315360000001}".to_string(),
        ),
        (
            "999999999999999999",
            "{value_too_large,999999999999999999}".to_string(),
        ),
        (
            "9999999999999999999",
            format!("{{value_too_large{}9999999999999999999}}", under(43)),
        ),
        (
            "18446744073709551615",
            format!("{{value_too_large{}18446744073709551615}}", under(44)),
        ),
        (
            "-0999999999999999999",
            format!("{{value_negative{}-999999999999999999}}", under(44)),
        ),
        (
            huge.as_str(),
            format!("{{value_too_large{}{huge}}}", under(64)),
        ),
    ];
    for (expiration, reason) in cases {
        assert_eq!(
            publish_expiring(&conn, &q, expiration).await,
            Some((
                406,
                format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}")
            )),
            "expiration {expiration}"
        );
        assert!(conn.status().connected(), "the connection stays open");
    }
    assert_eq!(
        publish_expiring(&conn, &q, &TEN_YEARS_MS.to_string()).await,
        None
    );
    let got = timed_for(
        STEP,
        "basic.get",
        setup.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get");
    assert!(got.is_some(), "a ten-year message stays in its queue");
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
}

/// The queue arguments that are times: over ten years refused with
/// RabbitMQ's text, ten years accepted. (x-consumer-timeout, which
/// RabbitMQ checks only for being a non-negative integer, likewise.)
#[tokio::test]
async fn queue_time_arguments_are_bounded_like_rabbitmq() {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    for (arg, value, refusal) in [
        (
            "x-message-ttl",
            TEN_YEARS_MS + 1,
            Some("{value_too_large,315360000001}"),
        ),
        (
            "x-expires",
            TEN_YEARS_MS + 1,
            Some("{value_too_large,315360000001}"),
        ),
        (
            "x-message-ttl",
            u64::MAX >> 1,
            Some("{value_too_large,9223372036854775807}"),
        ),
        ("x-message-ttl", TEN_YEARS_MS, None),
        ("x-expires", TEN_YEARS_MS, None),
    ] {
        let ch = conn.create_channel().await.expect("channel");
        let q = unique("time-arg");
        let mut args = FieldTable::default();
        args.insert(arg.into(), AMQPValue::LongLongInt(value as i64));
        let result = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                args,
            )
            .await;
        match refusal {
            Some(detail) => assert_eq!(
                amqp_error(&result.expect_err("refused")),
                Some((
                    406,
                    format!(
                        "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {detail}"
                    )
                ))
            ),
            None => {
                result.unwrap_or_else(|e| panic!("{arg} = {value} refused: {e}"));
            }
        }
    }
    let _ = conn.close(200, "bye".into()).await;
    broker.stop().await;
}

// --------------------------------------------------------- connection limit

/// A broker child process run with `limits` (lines of its `[limits]`).
fn broker_with_limits(name: &str, limits: &str) -> (BrokerProcess, TempDir) {
    let dir = TempDir::new(name);
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, format!("[limits]\n{limits}\n")).expect("write config");
    let data = dir.path().join("data");
    (BrokerProcess::start_with_config(&data, &config), dir)
}

fn socket_addr(broker: &BrokerProcess) -> std::net::SocketAddr {
    broker.addr().parse().expect("a socket address")
}

/// Under `deadline`, below the raw client's own 5 s read timeout.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(4);

/// `n` clients at once each try the whole handshake within
/// [`HANDSHAKE_DEADLINE`]; the connections of those that got through.
async fn concurrent_handshakes(addr: std::net::SocketAddr, n: usize) -> Vec<Raw> {
    let mut tries = tokio::task::JoinSet::new();
    for _ in 0..n {
        tries.spawn(async move {
            tokio::time::timeout(HANDSHAKE_DEADLINE, Raw::open(addr))
                .await
                .ok()
                .map(|(raw, _)| raw)
        });
    }
    let mut open = Vec::new();
    while let Some(done) = tries.join_next().await {
        if let Some(raw) = done.expect("a handshake task") {
            open.push(raw);
        }
    }
    open
}

/// 100 clients handshake at once against `max_connections = 10`: exactly
/// 10 get in, counted from accept (the old count, of finished handshakes
/// only, let all 100 through). The rest wait, as under RabbitMQ, until a
/// connection ends; then newcomers get in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_connections_from_accept() {
    if against_other_broker() {
        return;
    }
    let (broker, _dir) = broker_with_limits("conn-limit", "max_connections = 10");
    let addr = socket_addr(&broker);
    let first = concurrent_handshakes(addr, 100).await;
    assert_eq!(
        first.len(),
        10,
        "connections opened at once under a limit of 10"
    );
    drop(first);
    let again = concurrent_handshakes(addr, 20).await;
    assert_eq!(again.len(), 10, "after those closed, 10 more and no more");
}

/// Clients that connect and never log in hold a place only while their
/// handshake lasts: with `max_handshakes = 5`, five silent sockets keep a
/// real client waiting, the handshake timeout (counted from accept) closes
/// them, and the client gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_hold_a_handshake_place_until_their_timeout() {
    if against_other_broker() {
        return;
    }
    let (broker, _dir) = broker_with_limits(
        "handshake-limit",
        "max_handshakes = 5\nhandshake_timeout_ms = 2000",
    );
    let addr = socket_addr(&broker);
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(Raw::connect(addr).await);
    }
    let waited = std::time::Instant::now();
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), Raw::open(addr))
            .await
            .is_err(),
        "a sixth client got in while five handshakes were pending"
    );
    let (mut raw, _) = timed_for(
        STEP,
        "the handshake after the silent ones timed out",
        Raw::open(addr),
    )
    .await;
    assert!(
        waited.elapsed() >= Duration::from_millis(1500),
        "got in after {:?}",
        waited.elapsed()
    );
    for mut s in silent {
        assert!(s.read_frame().await.is_none(), "a silent client was closed");
    }
    raw.close_connection().await;
}

// ------------------------------------------- memory held by a handshake

/// Resident memory of process `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// Bytes received on connections to local `port` that their process has
/// not read yet (the rx_queue of /proc/net/tcp and tcp6).
fn unread_bytes(port: u16) -> u64 {
    let local_port = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let (local, queues) = (fields.get(1)?, fields.get(4)?);
                    let rx = queues.split_once(':')?.1;
                    local
                        .ends_with(&local_port)
                        .then(|| u64::from_str_radix(rx, 16).unwrap_or(0))
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// 1,000 clients each send the protocol header, 60 KiB of heartbeat frames
/// (allowed before tune-ok, and skipped) and the start of a method frame,
/// then wait. Each holds only the broker's pre-tune-ok read buffer: 4 KiB
/// (it was 64 KiB, 64 MiB resident for the 1,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_in_progress_hold_a_small_read_buffer() {
    use tokio::io::AsyncWriteExt;
    if against_other_broker() {
        return;
    }
    const CLIENTS: usize = 1000;
    let (broker, _dir) = broker_with_limits(
        "handshake-buffers",
        "max_handshakes = 1000\nhandshake_timeout_ms = 120000",
    );
    let addr = socket_addr(&broker);
    // One whole connection first: what every connection shares is made.
    let (mut raw, _) = timed_for(STEP, "a handshake", Raw::open(addr)).await;
    raw.close_connection().await;
    let before = rss(broker.pid());
    let mut stuffing = b"AMQP\x00\x00\x09\x01".to_vec();
    while stuffing.len() < 60 * 1024 {
        stuffing.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    }
    // A method frame of 100 bytes on channel 0, 2 of them sent.
    stuffing.extend_from_slice(&[1, 0, 0, 0, 0, 0, 100, 0, 10]);
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client.write_all(&stuffing).await.expect("send");
        clients.push(client);
    }
    let deadline = std::time::Instant::now() + GENEROUS;
    while unread_bytes(addr.port()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker has not read what the clients sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = rss(broker.pid()).saturating_sub(before);
    eprintln!("RSS grew {} KiB for {CLIENTS} handshakes", grown / 1024);
    assert!(
        grown < 32 << 20,
        "{CLIENTS} handshakes in progress grew the broker by {} MiB",
        grown >> 20
    );
    drop(clients);
}
