//! Durability across broker restarts, pinned to RabbitMQ's rules: the real
//! `leveret` binary runs as a child process on a per-test data directory, is
//! stopped with SIGKILL (`kill -9`) or SIGTERM, restarted on the same directory,
//! and the tests check what survived. Persistent messages confirmed to durable
//! queues, durable exchanges / queues / bindings (with their arguments), acks and
//! the redelivered flag survive; transient messages, non-durable and exclusive
//! entities do not. A corrupt or unusable data directory makes start-up fail
//! cleanly, and a restart logs what it recovered.

use crate::common;

use common::amqp::{
    self, assert_same_sequence, bind_queue, persistent, reply_code, timed_confirm_channel,
    timed_for, within_for,
};
use common::process::{BrokerProcess, TempDir};
use lapin::{
    message::BasicGetMessage,
    options::*,
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Deadline for any single wait on the broker (RPC, confirm, delivery).
const WAIT: Duration = Duration::from_secs(5);
/// Deadline for a whole test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker on a bad data directory gets to give up.
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// Runs a whole test body under [`TEST_TIMEOUT`].
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

/// Awaits `fut` for at most [`WAIT`].
async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timed_for(WAIT, what, fut).await
}

/// How the broker is stopped before a restart.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// SIGKILL: no chance to flush anything.
    Kill9,
    /// SIGTERM: clean shutdown, exit code 0.
    Sigterm,
}

/// Stops `broker` as `stop` says and starts a new one on the same data directory.
fn restart(broker: BrokerProcess, data: &Path, stop: Stop) -> BrokerProcess {
    restart_with(broker, data, stop, None)
}

/// Stops the broker and starts it again on `data`, with `config` if given.
fn restart_with(
    mut broker: BrokerProcess,
    data: &Path,
    stop: Stop,
    config: Option<&Path>,
) -> BrokerProcess {
    match stop {
        Stop::Kill9 => broker.kill9(),
        Stop::Sigterm => broker.sigterm_and_wait(),
    }
    drop(broker);
    match config {
        Some(config) => BrokerProcess::start_with_config(data, config),
        None => BrokerProcess::start(data),
    }
}

/// A channel in confirm mode.
async fn confirm_channel(conn: &Connection) -> Channel {
    timed_confirm_channel(conn, WAIT).await
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_queue(ch: &Channel, name: &str, options: QueueDeclareOptions, args: FieldTable) {
    timed(
        "queue.declare",
        ch.queue_declare(name.into(), options, args),
    )
    .await
    .unwrap_or_else(|e| panic!("declare queue {name}: {e}"));
}

async fn declare_durable_queue(ch: &Channel, name: &str) {
    declare_queue(ch, name, durable(), FieldTable::default()).await;
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    durable: bool,
    args: FieldTable,
) {
    timed(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable,
                ..Default::default()
            },
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

/// Passive queue.declare on a fresh channel: the ready-message count, or the
/// error the broker closed the channel with.
async fn queue_count(conn: &Connection, name: &str) -> lapin::Result<u32> {
    amqp::queue_count(conn, name, WAIT).await
}

/// The ready-message count of a queue that must exist.
async fn count(conn: &Connection, name: &str) -> u32 {
    amqp::count(conn, name, WAIT).await
}

/// Asserts that passive declare of queue `name` fails with 404 NOT_FOUND.
async fn assert_queue_gone(conn: &Connection, name: &str) {
    match queue_count(conn, name).await {
        Ok(n) => panic!("queue {name} should be gone after restart, but exists with {n} messages"),
        Err(e) => assert_eq!(reply_code(&e), Some(404), "queue {name}: {e}"),
    }
}

/// Passive exchange.declare on a fresh channel.
async fn exchange_exists(conn: &Connection, name: &str) -> lapin::Result<()> {
    let ch = timed("channel.open", conn.create_channel()).await?;
    timed(
        "passive exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = timed("channel.close", ch.close(200, "bye".into())).await;
    Ok(())
}

/// Asserts that passive declare of exchange `name` fails with 404 NOT_FOUND.
async fn assert_exchange_gone(conn: &Connection, name: &str) {
    match exchange_exists(conn, name).await {
        Ok(()) => panic!("exchange {name} should be gone after restart, but exists"),
        Err(e) => assert_eq!(reply_code(&e), Some(404), "exchange {name}: {e}"),
    }
}

/// Publishes every `(body, properties)` on confirm-mode channel `ch`, then waits
/// for all the confirms and asserts each is an ack.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    messages: &[(String, BasicProperties)],
) {
    let mut confirms = Vec::with_capacity(messages.len());
    for (body, props) in messages {
        let confirm = timed(
            "basic.publish",
            ch.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("publish {body}: {e}"));
        confirms.push((body, confirm));
    }
    for (body, confirm) in confirms {
        let confirmation = timed("publisher confirm", confirm)
            .await
            .unwrap_or_else(|e| panic!("confirm of {body}: {e}"));
        assert!(
            confirmation.is_ack(),
            "{body} was not acked: {confirmation:?}"
        );
    }
}

/// `n` persistent messages with bodies `{prefix}{i}`, i = 0..n.
fn persistent_messages(prefix: &str, n: usize) -> Vec<(String, BasicProperties)> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), persistent()))
        .collect()
}

fn bodies(messages: &[(String, BasicProperties)]) -> Vec<String> {
    messages.iter().map(|(b, _)| b.clone()).collect()
}

fn text(data: &[u8]) -> String {
    String::from_utf8(data.to_vec()).expect("UTF-8 body")
}

/// basic.get (no-ack) until get-empty: every ready message of `queue`, in order.
async fn get_all(ch: &Channel, queue: &str) -> Vec<BasicGetMessage> {
    amqp::get_all_messages(ch, queue, true, WAIT).await
}

async fn get_bodies(ch: &Channel, queue: &str) -> Vec<String> {
    get_all(ch, queue)
        .await
        .iter()
        .map(|m| text(&m.delivery.data))
        .collect()
}

/// Receives exactly `n` deliveries from `consumer`, each within [`WAIT`].
async fn next_n(consumer: &mut lapin::Consumer, n: usize) -> Vec<lapin::message::Delivery> {
    amqp::next_n_within(consumer, n, WAIT).await
}

/// Reads the `n` ready messages of `queue` without removing them: consumes with
/// manual ack on a channel of its own, then closes that channel so all of them
/// are requeued in order.
async fn peek(conn: &Connection, queue: &str, n: usize) -> Vec<String> {
    let ch = timed("channel.open", conn.create_channel()).await.unwrap();
    let mut consumer = timed(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "peek".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let got = next_n(&mut consumer, n).await;
    timed("channel.close", ch.close(200, "bye".into()))
        .await
        .unwrap();
    got.iter().map(|d| text(&d.data)).collect()
}

/// Consumes the first `n` messages of `queue` with manual acks (prefetch `n`, so
/// no others are delivered), acks each, and closes the channel so the acks are
/// processed before this returns.
async fn consume_and_ack(conn: &Connection, queue: &str, n: usize) -> Vec<String> {
    let ch = timed("channel.open", conn.create_channel()).await.unwrap();
    timed(
        "basic.qos",
        ch.basic_qos(n as u16, BasicQosOptions::default()),
    )
    .await
    .unwrap();
    let mut consumer = timed(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "acker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let got = next_n(&mut consumer, n).await;
    for d in &got {
        timed(
            "basic.ack",
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default()),
        )
        .await
        .unwrap();
    }
    timed("channel.close", ch.close(200, "bye".into()))
        .await
        .unwrap();
    got.iter().map(|d| text(&d.data)).collect()
}

/// Persistent properties with every kind of field set, so a restart that loses or
/// re-encodes any of them shows up.
fn rich_properties(i: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("seq".into(), AMQPValue::LongLongInt(i as i64));
    headers.insert(
        "origin".into(),
        AMQPValue::LongString("durability-test".into()),
    );
    headers.insert("even".into(), AMQPValue::Boolean(i.is_multiple_of(2)));
    persistent()
        .with_content_type("text/plain".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_priority((i % 10) as u8)
        .with_correlation_id(format!("corr-{i}").into())
        .with_reply_to("replies".into())
        .with_expiration("3600000".into())
        .with_message_id(format!("msg-{i:04}").into())
        .with_timestamp(1_700_000_000 + i as u64)
        .with_type("order".into())
        .with_user_id("guest".into())
        .with_app_id("leveret-tests".into())
}

// ---------------------------------------------------------------- 1, 2: persistent messages

/// 1000 confirmed persistent messages with distinct bodies and full properties
/// come back after `stop`: same count, same order, properties unchanged.
async fn confirmed_persistent_messages_survive(name: &str, stop: Stop) {
    let data = TempDir::new(name);
    let broker = BrokerProcess::start(data.path());
    let q = "durable-orders";
    let messages: Vec<(String, BasicProperties)> = (0..1000)
        .map(|i| (format!("order-{i:04}"), rich_properties(i)))
        .collect();
    {
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_durable_queue(&ch, q).await;
        publish_confirmed(&ch, "", q, &messages).await;
        assert_eq!(count(&conn, q).await, 1000, "all enqueued before the stop");
    }

    let broker = restart(broker, data.path(), stop);
    let conn = broker.connect().await;
    assert_eq!(
        count(&conn, q).await,
        1000,
        "message count after {stop:?} and restart"
    );
    let ch = confirm_channel(&conn).await;
    let got = get_all(&ch, q).await;
    let got_bodies: Vec<String> = got.iter().map(|m| text(&m.delivery.data)).collect();
    assert_same_sequence("bodies after restart", &got_bodies, &bodies(&messages));
    for (m, (body, props)) in got.iter().zip(&messages) {
        assert_eq!(
            m.delivery.properties, *props,
            "properties of {body} changed across the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_kill_9_in_order_with_properties() {
    within(confirmed_persistent_messages_survive(
        "durability-persistent-kill9",
        Stop::Kill9,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_persistent_messages_survive_sigterm_in_order_with_properties() {
    within(confirmed_persistent_messages_survive(
        "durability-persistent-sigterm",
        Stop::Sigterm,
    ))
    .await
}

// ---------------------------------------------------------------- 3: what does not survive

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_in_durable_queues_are_dropped_on_restart_persistent_kept_in_order() {
    within(async {
        let data = TempDir::new("durability-transient-messages");
        let broker = BrokerProcess::start(data.path());
        let mixed = "mixed";
        let transient_only = "transient-only";
        // Every third message persistent; the others delivery_mode 1 or unset.
        let messages: Vec<(String, BasicProperties)> = (0..30)
            .map(|i| match i % 3 {
                0 => (format!("persistent-{i}"), persistent()),
                1 => (
                    format!("transient-mode1-{i}"),
                    BasicProperties::default().with_delivery_mode(1),
                ),
                _ => (format!("transient-unset-{i}"), BasicProperties::default()),
            })
            .collect();
        let transient: Vec<(String, BasicProperties)> = (0..5)
            .map(|i| {
                (
                    format!("t{i}"),
                    BasicProperties::default().with_delivery_mode(1),
                )
            })
            .collect();
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_durable_queue(&ch, mixed).await;
            declare_durable_queue(&ch, transient_only).await;
            publish_confirmed(&ch, "", mixed, &messages).await;
            publish_confirmed(&ch, "", transient_only, &transient).await;
            assert_eq!(count(&conn, mixed).await, 30);
            assert_eq!(count(&conn, transient_only).await, 5);
        }

        // A clean stop must not turn transient messages into persistent ones.
        let broker = restart(broker, data.path(), Stop::Sigterm);
        let conn = broker.connect().await;
        assert_eq!(
            count(&conn, transient_only).await,
            0,
            "the durable queue survives, its transient messages do not"
        );
        assert_eq!(count(&conn, mixed).await, 10, "only the persistent ones");
        let ch = confirm_channel(&conn).await;
        let want: Vec<String> = (0..30)
            .step_by(3)
            .map(|i| format!("persistent-{i}"))
            .collect();
        assert_same_sequence("mixed queue", &get_bodies(&ch, mixed).await, &want);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_durable_and_exclusive_queues_and_non_durable_exchanges_are_gone_after_kill_9() {
    within(async {
        let data = TempDir::new("durability-non-durable");
        let broker = BrokerProcess::start(data.path());
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_queue(
                &ch,
                "transient-q",
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
            declare_queue(
                &ch,
                "exclusive-q",
                QueueDeclareOptions {
                    durable: true,
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
            declare_exchange(
                &ch,
                "transient-ex",
                ExchangeKind::Fanout,
                false,
                FieldTable::default(),
            )
            .await;
            declare_durable_queue(&ch, "durable-q").await;
            declare_exchange(
                &ch,
                "durable-ex",
                ExchangeKind::Fanout,
                true,
                FieldTable::default(),
            )
            .await;
            bind_queue(&ch, "durable-q", "transient-ex", "", FieldTable::default()).await;
            bind_queue(&ch, "durable-q", "durable-ex", "", FieldTable::default()).await;
            publish_confirmed(
                &ch,
                "",
                "transient-q",
                &persistent_messages("in-transient-q-", 3),
            )
            .await;
            publish_confirmed(
                &ch,
                "",
                "exclusive-q",
                &persistent_messages("in-exclusive-q-", 3),
            )
            .await;
            // The exclusive queue's owner is still connected when the broker dies.
            let broker = restart(broker, data.path(), Stop::Kill9);

            let conn = broker.connect().await;
            assert_queue_gone(&conn, "transient-q").await;
            assert_queue_gone(&conn, "exclusive-q").await;
            assert_exchange_gone(&conn, "transient-ex").await;
            // The durable ones are still there, so the 404s above are not because
            // nothing at all was recovered.
            assert_eq!(count(&conn, "durable-q").await, 0);
            exchange_exists(&conn, "durable-ex")
                .await
                .expect("durable exchange survives");
        }
    })
    .await
}

// ---------------------------------------------------------------- 4: topology

fn string_table(entries: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

const AE: &str = "ae";
const EX_DIRECT: &str = "ex-direct";
const EX_FANOUT: &str = "ex-fanout";
const EX_TOPIC: &str = "ex-topic";
const EX_HEADERS: &str = "ex-headers";
const Q_AE: &str = "q-ae";
const Q_DIRECT: &str = "q-direct";
const Q_FANOUT: &str = "q-fanout";
const Q_TOPIC: &str = "q-topic";
const Q_HEADERS_ALL: &str = "q-headers-all";
const Q_HEADERS_ANY: &str = "q-headers-any";
const Q_ARGS: &str = "q-args";
const Q_DELETED: &str = "q-deleted";
const EX_DELETED: &str = "ex-deleted";

fn ae_args() -> FieldTable {
    string_table(&[("alternate-exchange", AE)])
}

fn queue_args(max_length: i32) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-length".into(), AMQPValue::LongInt(max_length));
    t.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
    t
}

/// Declares the durable topology `assert_routing` checks.
async fn declare_topology(ch: &Channel) {
    declare_exchange(ch, AE, ExchangeKind::Fanout, true, FieldTable::default()).await;
    declare_exchange(ch, EX_DIRECT, ExchangeKind::Direct, true, ae_args()).await;
    declare_exchange(
        ch,
        EX_FANOUT,
        ExchangeKind::Fanout,
        true,
        FieldTable::default(),
    )
    .await;
    declare_exchange(ch, EX_TOPIC, ExchangeKind::Topic, true, ae_args()).await;
    declare_exchange(
        ch,
        EX_HEADERS,
        ExchangeKind::Headers,
        true,
        FieldTable::default(),
    )
    .await;
    for q in [
        Q_AE,
        Q_DIRECT,
        Q_FANOUT,
        Q_TOPIC,
        Q_HEADERS_ALL,
        Q_HEADERS_ANY,
        Q_DELETED,
    ] {
        declare_durable_queue(ch, q).await;
    }
    declare_queue(ch, Q_ARGS, durable(), queue_args(3)).await;
    declare_exchange(
        ch,
        EX_DELETED,
        ExchangeKind::Direct,
        true,
        FieldTable::default(),
    )
    .await;

    let none = FieldTable::default;
    bind_queue(ch, Q_AE, AE, "", none()).await;
    bind_queue(ch, Q_DIRECT, EX_DIRECT, "k1", none()).await;
    bind_queue(ch, Q_DIRECT, EX_DIRECT, "gone", none()).await;
    bind_queue(ch, Q_FANOUT, EX_FANOUT, "", none()).await;
    bind_queue(ch, Q_TOPIC, EX_TOPIC, "orders.*.eu", none()).await;
    bind_queue(
        ch,
        Q_HEADERS_ALL,
        EX_HEADERS,
        "",
        string_table(&[("x-match", "all"), ("a", "1"), ("b", "2")]),
    )
    .await;
    bind_queue(
        ch,
        Q_HEADERS_ANY,
        EX_HEADERS,
        "",
        string_table(&[("x-match", "any"), ("a", "1"), ("b", "2")]),
    )
    .await;
    bind_queue(ch, Q_DELETED, EX_DIRECT, "k1", none()).await;
    timed(
        "exchange.bind",
        ch.exchange_bind(
            EX_FANOUT.into(),
            EX_DIRECT.into(),
            "to-fanout".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();

    // Removed before the kill: must stay removed.
    timed(
        "queue.unbind",
        ch.queue_unbind(
            Q_DIRECT.into(),
            EX_DIRECT.into(),
            "gone".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    timed(
        "queue.delete",
        ch.queue_delete(Q_DELETED.into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    timed(
        "exchange.delete",
        ch.exchange_delete(EX_DELETED.into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap();
}

/// Publishes probe messages through the topology and checks where each lands.
/// Probes are transient, so those sent before the kill cannot reappear after it.
async fn assert_routing(conn: &Connection, when: &str) {
    let ch = confirm_channel(conn).await;
    let transient = BasicProperties::default;
    let probe = |body: &str| vec![(body.to_string(), transient())];
    let with_headers = |body: &str, h: &[(&str, &str)]| {
        vec![(body.to_string(), transient().with_headers(string_table(h)))]
    };
    publish_confirmed(&ch, EX_DIRECT, "k1", &probe("d-k1")).await;
    publish_confirmed(&ch, EX_DIRECT, "gone", &probe("d-gone")).await;
    publish_confirmed(&ch, EX_DIRECT, "nomatch", &probe("d-nomatch")).await;
    publish_confirmed(&ch, EX_DIRECT, "to-fanout", &probe("d-e2e")).await;
    publish_confirmed(&ch, EX_FANOUT, "any-key", &probe("f-direct")).await;
    publish_confirmed(&ch, EX_TOPIC, "orders.new.eu", &probe("t-eu")).await;
    publish_confirmed(&ch, EX_TOPIC, "orders.new.us", &probe("t-us")).await;
    publish_confirmed(
        &ch,
        EX_HEADERS,
        "",
        &with_headers("h-ab", &[("a", "1"), ("b", "2")]),
    )
    .await;
    publish_confirmed(&ch, EX_HEADERS, "", &with_headers("h-a", &[("a", "1")])).await;
    publish_confirmed(
        &ch,
        EX_HEADERS,
        "",
        &with_headers("h-b3", &[("a", "1"), ("b", "3")]),
    )
    .await;

    let expect: [(&str, &[&str]); 6] = [
        (Q_DIRECT, &["d-k1"]),
        // Unroutable ones (including via the removed binding) go to the AE.
        (Q_AE, &["d-gone", "d-nomatch", "t-us"]),
        (Q_FANOUT, &["d-e2e", "f-direct"]),
        (Q_TOPIC, &["t-eu"]),
        (Q_HEADERS_ALL, &["h-ab"]),
        (Q_HEADERS_ANY, &["h-ab", "h-a", "h-b3"]),
    ];
    for (queue, want) in expect {
        assert_eq!(
            get_bodies(&ch, queue).await,
            want,
            "{when}: messages routed to {queue}"
        );
    }
}

/// queue.declare (durable) of `Q_ARGS` with `args` on a fresh channel.
async fn redeclare_args_queue(conn: &Connection, args: FieldTable) -> lapin::Result<()> {
    let ch = timed("channel.open", conn.create_channel()).await?;
    timed(
        "queue.declare",
        ch.queue_declare(Q_ARGS.into(), durable(), args),
    )
    .await?;
    Ok(())
}

/// exchange.declare (durable) on a fresh channel.
async fn redeclare_exchange(
    conn: &Connection,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> lapin::Result<()> {
    let ch = timed("channel.open", conn.create_channel()).await?;
    timed(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_exchanges_queues_bindings_and_arguments_survive_kill_9_and_route_as_before() {
    within(async {
        let data = TempDir::new("durability-topology");
        let broker = BrokerProcess::start(data.path());
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_topology(&ch).await;
            assert_routing(&conn, "before the kill").await;
        }

        let broker = restart(broker, data.path(), Stop::Kill9);
        let conn = broker.connect().await;
        for ex in [AE, EX_DIRECT, EX_FANOUT, EX_TOPIC, EX_HEADERS] {
            exchange_exists(&conn, ex)
                .await
                .unwrap_or_else(|e| panic!("durable exchange {ex} after restart: {e}"));
        }
        for q in [
            Q_AE,
            Q_DIRECT,
            Q_FANOUT,
            Q_TOPIC,
            Q_HEADERS_ALL,
            Q_HEADERS_ANY,
            Q_ARGS,
        ] {
            assert_eq!(
                count(&conn, q).await,
                0,
                "durable queue {q} after restart (probes were transient)"
            );
        }
        assert_queue_gone(&conn, Q_DELETED).await;
        assert_exchange_gone(&conn, EX_DELETED).await;

        assert_routing(&conn, "after the restart").await;

        // Arguments were recovered: equal ones are accepted, different ones are not.
        redeclare_args_queue(&conn, queue_args(3))
            .await
            .expect("redeclare with the same arguments");
        let err = redeclare_args_queue(&conn, queue_args(4))
            .await
            .expect_err("a different x-max-length must be refused");
        assert_eq!(reply_code(&err), Some(406), "{err}");
        redeclare_exchange(&conn, EX_DIRECT, ExchangeKind::Direct, ae_args())
            .await
            .expect("redeclare exchange with the same type and arguments");
        let err = redeclare_exchange(
            &conn,
            EX_DIRECT,
            ExchangeKind::Direct,
            FieldTable::default(),
        )
        .await
        .expect_err("dropping alternate-exchange must be refused");
        assert_eq!(reply_code(&err), Some(406), "{err}");
        let err = redeclare_exchange(&conn, EX_TOPIC, ExchangeKind::Fanout, ae_args())
            .await
            .expect_err("a different exchange type must be refused");
        assert_eq!(reply_code(&err), Some(406), "{err}");
    })
    .await
}

// ---------------------------------------------------------------- 5: acks

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_stay_acked_after_sigterm_restart() {
    within(async {
        let data = TempDir::new("durability-acks-sigterm");
        let broker = BrokerProcess::start(data.path());
        let q = "acked";
        let messages = persistent_messages("m", 100);
        let all = bodies(&messages);
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_durable_queue(&ch, q).await;
            publish_confirmed(&ch, "", q, &messages).await;
            let acked = consume_and_ack(&conn, q, 40).await;
            assert_same_sequence("consumed", &acked, &all[..40]);
            assert_eq!(count(&conn, q).await, 60, "acks processed before the stop");
        }

        let broker = restart(broker, data.path(), Stop::Sigterm);
        let conn = broker.connect().await;
        assert_eq!(count(&conn, q).await, 60, "after SIGTERM and restart");
        let ch = confirm_channel(&conn).await;
        assert_same_sequence("left after restart", &get_bodies(&ch, q).await, &all[40..]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unacked_message_survives_kill_9_in_order_after_acks() {
    within(async {
        let data = TempDir::new("durability-acks-kill9");
        let broker = BrokerProcess::start(data.path());
        let q = "acked";
        let messages = persistent_messages("m", 100);
        let all = bodies(&messages);
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_durable_queue(&ch, q).await;
            publish_confirmed(&ch, "", q, &messages).await;
            let acked = consume_and_ack(&conn, q, 40).await;
            assert_same_sequence("consumed", &acked, &all[..40]);
            assert_eq!(count(&conn, q).await, 60, "acks processed before the kill");
        }

        let broker = restart(broker, data.path(), Stop::Kill9);
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let left = get_bodies(&ch, q).await;
        // At-least-once: some acked messages may come back after a kill -9, but
        // every unacked one must, in publish order, and nothing else.
        let index: HashMap<&str, usize> = all
            .iter()
            .enumerate()
            .map(|(i, b)| (b.as_str(), i))
            .collect();
        let positions: Vec<usize> = left
            .iter()
            .map(|b| {
                *index
                    .get(b.as_str())
                    .unwrap_or_else(|| panic!("{b:?} was never published"))
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "publish order (without duplicates) preserved: {left:?}"
        );
        let missing: Vec<&String> = all[40..].iter().filter(|b| !left.contains(b)).collect();
        assert!(
            missing.is_empty(),
            "unacked messages lost by kill -9: {missing:?} (left: {} messages)",
            left.len()
        );
    })
    .await
}

// ---------------------------------------------------------------- 6: redelivered flag

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_come_back_redelivered_after_sigterm_restart() {
    unacked_deliveries_come_back_redelivered("sigterm", BrokerProcess::sigterm_and_wait).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_come_back_redelivered_after_kill_9() {
    unacked_deliveries_come_back_redelivered("kill9", BrokerProcess::kill9).await
}

async fn unacked_deliveries_come_back_redelivered(name: &str, stop: fn(&mut BrokerProcess)) {
    within(async {
        let data = TempDir::new(&format!("durability-redelivered-{name}"));
        let mut broker = BrokerProcess::start(data.path());
        let q = "redelivery";
        let messages = persistent_messages("m", 10);
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_durable_queue(&ch, q).await;
        publish_confirmed(&ch, "", q, &messages).await;

        let consumer_ch = timed("channel.open", conn.create_channel()).await.unwrap();
        timed(
            "basic.qos",
            consumer_ch.basic_qos(5, BasicQosOptions::default()),
        )
        .await
        .unwrap();
        let mut consumer = timed(
            "basic.consume",
            consumer_ch.basic_consume(
                q.into(),
                "no-acks".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        let delivered = next_n(&mut consumer, 5).await;
        let delivered: Vec<String> = delivered.iter().map(|d| text(&d.data)).collect();
        assert_same_sequence("delivered", &delivered, &bodies(&messages)[..5]);
        // The delivered marks are flushed every 100 ms and nothing a client
        // sees tells when: three flushes' time before kill -9 (the subject).
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Stop with the 5 deliveries still unacked.
        stop(&mut broker);
        drop((consumer, consumer_ch, ch, conn));
        let broker = BrokerProcess::start(data.path());
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let got = get_all(&ch, q).await;
        let got_bodies: Vec<String> = got.iter().map(|m| text(&m.delivery.data)).collect();
        assert_same_sequence("after restart", &got_bodies, &bodies(&messages));
        let flags: Vec<bool> = got.iter().map(|m| m.delivery.redelivered).collect();
        assert_eq!(
            flags,
            [true, true, true, true, true, false, false, false, false, false],
            "redelivered: set on the 5 delivered before the stop, clear on the rest"
        );
    })
    .await
}

// ---------------------------------------------------------------- 7: kill under load

/// What one flat-out publisher saw before the broker died.
struct PublisherRun {
    /// Messages `p{n}-{i}` for i in 0..published were attempted (handed to the
    /// client library, whether or not that succeeded).
    published: usize,
    /// Indices whose confirm was an ack.
    confirmed: Vec<usize>,
}

/// Publishes persistent `p{n}-{i}` to `queue` as fast as the confirm window
/// allows until the connection breaks (or `give_up` is set), recording acks.
async fn publish_flat_out(
    uri: String,
    n: usize,
    queue: &str,
    give_up: Arc<AtomicBool>,
) -> PublisherRun {
    const WINDOW: usize = 256;
    let mut run = PublisherRun {
        published: 0,
        confirmed: Vec::new(),
    };
    let conn = timed(
        "connection",
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    .expect("publisher connects");
    let ch = confirm_channel(&conn).await;
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let mut broken = false;
    while !broken && !give_up.load(Ordering::Relaxed) {
        let i = run.published;
        run.published += 1;
        let body = format!("p{n}-{i}");
        match tokio::time::timeout(
            WAIT,
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            ),
        )
        .await
        {
            Ok(Ok(confirm)) => in_flight.push_back((i, confirm)),
            _ => broken = true,
        }
        while !broken && in_flight.len() >= WINDOW {
            let (i, confirm) = in_flight.pop_front().unwrap();
            match tokio::time::timeout(WAIT, confirm).await {
                Ok(Ok(c)) if c.is_ack() => run.confirmed.push(i),
                Ok(Ok(_)) => {}
                _ => broken = true,
            }
        }
    }
    // Acks that arrived before the connection broke still count; the rest never
    // will, so do not wait for them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (i, confirm) in in_flight {
        if let Some(Ok(c)) = futures_lite::future::poll_once(confirm).await {
            if c.is_ack() {
                run.confirmed.push(i);
            }
        }
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_kill_9_during_flat_out_publishing() {
    within(kill_9_during_flat_out_publishing(
        "durability-under-load",
        None,
    ))
    .await
}

/// The same with tiny segment files and queue window, so the kill lands
/// while segments roll over and messages are paged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_kill_9_while_segments_roll_over() {
    within(kill_9_during_flat_out_publishing(
        "durability-under-load-small-segments",
        Some("[storage]\nsegment_size = 65536\nqueue_memory_window = 16384\n"),
    ))
    .await
}

async fn kill_9_during_flat_out_publishing(name: &str, config: Option<&str>) {
    const PUBLISHERS: usize = 3;
    let data = TempDir::new(name);
    let config_file = config.map(|text| {
        let path = data.path().join("broker.toml");
        std::fs::write(&path, text).unwrap();
        path
    });
    let store = data.path().join("store");
    let broker = match &config_file {
        Some(file) => BrokerProcess::start_with_config(&store, file),
        None => BrokerProcess::start(&store),
    };
    let q = "under-load";
    {
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_durable_queue(&ch, q).await;
    }
    let give_up = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|n| tokio::spawn(publish_flat_out(broker.uri(), n, q, give_up.clone())))
        .collect();
    // The subject: two seconds of publishing flat out before the kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        tasks.iter().all(|t| !t.is_finished()),
        "publishers still running when the broker is killed"
    );
    let broker = restart_with(broker, &store, Stop::Kill9, config_file.as_deref());
    // Publishers whose connection did not notice the kill stop anyway.
    give_up.store(true, Ordering::Relaxed);
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("publisher finishes after the kill")
                .expect("publisher task"),
        );
    }
    for (n, run) in runs.iter().enumerate() {
        assert!(
            !run.confirmed.is_empty(),
            "publisher {n} got no confirms in 2 s ({} published)",
            run.published
        );
    }

    let conn = broker.connect().await;
    let n_left = count(&conn, q).await as usize;
    let ch = timed("channel.open", conn.create_channel()).await.unwrap();
    timed("basic.qos", ch.basic_qos(1000, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = timed(
        "basic.consume",
        ch.basic_consume(
            q.into(),
            "drain".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let left = next_n(&mut consumer, n_left).await;

    let mut present: Vec<Vec<usize>> = vec![Vec::new(); PUBLISHERS];
    for d in &left {
        let body = text(&d.data);
        let (n, i) = body
            .strip_prefix('p')
            .and_then(|s| s.split_once('-'))
            .and_then(|(n, i)| Some((n.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("unexpected body {body:?}"));
        assert!(
            n < PUBLISHERS && i < runs[n].published,
            "{body:?} was never published"
        );
        present[n].push(i);
    }
    for (n, run) in runs.iter().enumerate() {
        let seen = &present[n];
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "publisher {n}: order not preserved among the recovered messages"
        );
        let seen: std::collections::HashSet<usize> = seen.iter().copied().collect();
        let lost: Vec<usize> = run
            .confirmed
            .iter()
            .copied()
            .filter(|i| !seen.contains(i))
            .collect();
        assert!(
            lost.is_empty(),
            "publisher {n}: {} of {} confirmed messages lost by kill -9 (first: p{n}-{}); \
             {} recovered of {} published",
            lost.len(),
            run.confirmed.len(),
            lost[0],
            present[n].len(),
            run.published
        );
    }
}

// ---------------------------------------------------------------- 8: fanout to durable queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_copies_in_three_durable_queues_survive_kill_9_and_acks_are_per_queue() {
    within(async {
        let data = TempDir::new("durability-fanout");
        let broker = BrokerProcess::start(data.path());
        let ex = "fan";
        let queues = ["fan-a", "fan-b", "fan-c"];
        let messages = persistent_messages("f", 200);
        let all = bodies(&messages);
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_exchange(&ch, ex, ExchangeKind::Fanout, true, FieldTable::default()).await;
            for q in queues {
                declare_durable_queue(&ch, q).await;
                bind_queue(&ch, q, ex, "", FieldTable::default()).await;
            }
            publish_confirmed(&ch, ex, "", &messages).await;
        }

        let broker = restart(broker, data.path(), Stop::Kill9);
        {
            let conn = broker.connect().await;
            for q in queues {
                assert_eq!(count(&conn, q).await, 200, "{q} after kill -9");
                assert_same_sequence(q, &peek(&conn, q, 200).await, &all);
            }
            assert_same_sequence("acked", &consume_and_ack(&conn, queues[0], 200).await, &all);
            assert_eq!(count(&conn, queues[0]).await, 0);
            for q in &queues[1..] {
                assert_eq!(
                    count(&conn, q).await,
                    200,
                    "{q} untouched by acks on another queue"
                );
            }
        }

        let broker = restart(broker, data.path(), Stop::Sigterm);
        let conn = broker.connect().await;
        assert_eq!(count(&conn, queues[0]).await, 0, "acked copies stay acked");
        for q in &queues[1..] {
            assert_eq!(count(&conn, q).await, 200, "{q} after the second restart");
            assert_same_sequence(q, &peek(&conn, q, 200).await, &all);
        }
    })
    .await
}

// ---------------------------------------------------------------- 9: bad stores

/// Every regular file under `dir`, recursively.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                todo.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

/// Starts a broker on `data`, stores some durable state, stops it cleanly, and
/// returns the files it left.
async fn write_a_store(data: &Path) -> Vec<PathBuf> {
    let mut broker = BrokerProcess::start(data);
    {
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_exchange(&ch, "ex", ExchangeKind::Direct, true, FieldTable::default()).await;
        declare_durable_queue(&ch, "q").await;
        bind_queue(&ch, "q", "ex", "k", FieldTable::default()).await;
        let messages: Vec<(String, BasicProperties)> = (0..200)
            .map(|i| {
                (
                    format!("stored-{i:04}-{}", "x".repeat(200)),
                    rich_properties(i),
                )
            })
            .collect();
        publish_confirmed(&ch, "ex", "k", &messages).await;
    }
    broker.sigterm_and_wait();
    let files = regular_files(data);
    assert!(
        !files.is_empty(),
        "the broker left no files under {} after storing durable state",
        data.display()
    );
    files
}

/// Starts the broker on an unusable `data` dir and asserts it exits non-zero,
/// promptly, without panicking, naming the directory.
fn assert_start_fails_naming(data: &Path, why: &str) {
    let mut broker = BrokerProcess::launch_on(data);
    let status = match broker.wait_exit(FAIL_TIMEOUT) {
        Some(status) => status,
        None => panic!(
            "{why}: the broker is still running {FAIL_TIMEOUT:?} after start; stderr:\n{}",
            broker.stderr()
        ),
    };
    let stderr = broker.stderr();
    assert!(
        !status.success(),
        "{why}: exit status should be non-zero, got {status}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "{why}: a clean error, not a panic; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(data.to_str().unwrap()),
        "{why}: stderr should name {}; stderr:\n{stderr}",
        data.display()
    );
}

/// Deterministic garbage (xorshift), so a failure is reproducible.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_with_garbage_in_every_file_fails_startup_cleanly() {
    within(async {
        let data = TempDir::new("durability-garbage");
        let files = write_a_store(data.path()).await;
        for (n, file) in files.iter().enumerate() {
            let mut bytes = std::fs::read(file).unwrap();
            if bytes.is_empty() {
                continue;
            }
            // Overwrite the middle half (at least one byte).
            let start = bytes.len() / 4;
            let len = (bytes.len() / 2).max(1);
            bytes[start..start + len].copy_from_slice(&garbage(len, n as u64 + 0x9e37_79b9));
            std::fs::write(file, bytes).unwrap();
        }
        assert_start_fails_naming(data.path(), "garbage in the store");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_with_every_file_truncated_to_half_fails_startup_cleanly() {
    within(async {
        let data = TempDir::new("durability-truncated");
        let files = write_a_store(data.path()).await;
        for file in &files {
            let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }
        assert_start_fails_naming(data.path(), "truncated store");
    })
    .await
}

/// The sled log file alone, damaged after a clean stop: sled itself may
/// read it as a shorter log, so only Leveret's own clean-stop record can tell.
fn db_file(files: &[PathBuf]) -> &PathBuf {
    files
        .iter()
        .find(|f| f.file_name().is_some_and(|n| n == "db"))
        .expect("sled keeps its log in a file named db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_log_with_garbage_after_a_clean_stop_fails_startup_instead_of_losing_messages() {
    within(async {
        let data = TempDir::new("durability-db-garbage");
        let files = write_a_store(data.path()).await;
        let db = db_file(&files);
        let mut bytes = std::fs::read(db).unwrap();
        let start = bytes.len() / 4;
        let len = bytes.len() / 2;
        bytes[start..start + len].copy_from_slice(&garbage(len, 7));
        std::fs::write(db, bytes).unwrap();
        assert_start_fails_naming(data.path(), "garbage in the sled log");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_log_truncated_after_a_clean_stop_fails_startup_instead_of_losing_messages() {
    within(async {
        let data = TempDir::new("durability-db-truncated");
        let files = write_a_store(data.path()).await;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(db_file(&files))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
        assert_start_fails_naming(data.path(), "truncated sled log");
    })
    .await
}

#[test]
fn data_dir_that_is_a_regular_file_fails_startup_naming_the_path() {
    let dir = TempDir::new("durability-data-dir-is-file");
    let path = dir.path().join("not-a-directory");
    std::fs::write(&path, b"just a file\n").unwrap();
    assert_start_fails_naming(&path, "data dir is a regular file");
}

// ---------------------------------------------------------------- 10: start-up log

/// The number after `key=` in a tracing log line.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_logs_recovered_queue_and_message_counts() {
    within(async {
        let data = TempDir::new("durability-recovery-log");
        let broker = BrokerProcess::start(data.path());
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_durable_queue(&ch, "log-a").await;
            declare_durable_queue(&ch, "log-b").await;
            publish_confirmed(&ch, "", "log-a", &persistent_messages("a", 5)).await;
            publish_confirmed(&ch, "", "log-b", &persistent_messages("b", 7)).await;
        }

        let broker = restart(broker, data.path(), Stop::Sigterm);
        let line = broker
            .wait_for_log(WAIT, |l| {
                l.contains("recovered") && l.contains("queues=") && l.contains("messages=")
            })
            .unwrap_or_else(|| {
                panic!(
                    "no \"recovered\" line with queues= and messages=; stderr:\n{}",
                    broker.stderr()
                )
            });
        assert_eq!(field(&line, "queues"), Some(2), "{line}");
        assert_eq!(field(&line, "messages"), Some(12), "{line}");
        // And the log is not lying.
        let conn = broker.connect().await;
        assert_eq!(count(&conn, "log-a").await, 5);
        assert_eq!(count(&conn, "log-b").await, 7);
    })
    .await
}

// ---------------------------------------------------------------- 11: expiry across a restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_keeps_counting_across_a_restart() {
    within(async {
        let data = TempDir::new("durability-expiry");
        let broker = BrokerProcess::start(data.path());
        let q = "expiring";
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_durable_queue(&ch, q).await;
            let soon = persistent().with_expiration("1500".into());
            let later = persistent().with_expiration("600000".into());
            publish_confirmed(
                &ch,
                "",
                q,
                &[("soon".to_string(), soon), ("later".to_string(), later)],
            )
            .await;
        }
        let broker = restart(broker, data.path(), Stop::Sigterm);
        let conn = broker.connect().await;
        // Expiry is absolute: the message published with 1.5 s to live goes
        // 1.5 s after it was published, restart or not.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let ch = timed("channel.open", conn.create_channel()).await.unwrap();
        let got = get_bodies(&ch, q).await;
        assert_eq!(got, ["later"], "the expired message is never delivered");
    })
    .await
}

// ---------------------------------------------------------------- 12: priority queues

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_priority_queue_keeps_its_messages_and_their_order_across_a_restart() {
    within(async {
        let data = TempDir::new("durability-priority");
        let broker = BrokerProcess::start(data.path());
        let q = "prio";
        let mut args = FieldTable::default();
        args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
        {
            let conn = broker.connect().await;
            let ch = confirm_channel(&conn).await;
            declare_queue(&ch, q, durable(), args).await;
            let messages: Vec<(String, BasicProperties)> = [(1, "a"), (5, "b"), (3, "c"), (5, "d")]
                .into_iter()
                .map(|(p, body)| (body.to_string(), persistent().with_priority(p)))
                .collect();
            publish_confirmed(&ch, "", q, &messages).await;
        }
        let broker = restart(broker, data.path(), Stop::Kill9);
        let conn = broker.connect().await;
        assert_eq!(count(&conn, q).await, 4);
        let ch = timed("channel.open", conn.create_channel()).await.unwrap();
        assert_eq!(get_bodies(&ch, q).await, ["b", "d", "c", "a"]);
    })
    .await
}
