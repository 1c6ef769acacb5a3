//! RabbitMQ's queue features, as RabbitMQ 3.10 implements them for AMQP 0-9-1 clients:
//! message TTL (`x-message-ttl`, per-message `expiration`), queue expiry (`x-expires`),
//! length limits (`x-max-length`, `x-max-length-bytes`, `x-overflow`), dead-lettering and
//! the `x-death` header, argument validation, priority queues (`x-max-priority`), single
//! active consumer, consumer priorities, queue types, and the quorum-queue delivery limit.
//!
//! Every test here passes against RabbitMQ 3.10 (`LEVERET_TEST_URI=...`), except the one
//! Leveret-specific test (streams), which is skipped there.

use crate::common;

use common::amqp::{
    amqp_error, assert_closed, assert_quiet, bind_queue, confirm_channel as channel, consume,
    consume_exactly, consume_with, declare_unique, durable, exclusive, next, next_n,
    open_confirmed as open, publish_and_confirm, ready_count, table, text, texts, wait_ready,
    within_for, WAIT,
};
use common::unique;
use lapin::{
    message::Delivery,
    options::*,
    types::{AMQPValue, FieldArray, FieldTable, ShortString},
    BasicProperties, Channel, Confirmation, Connection, ExchangeKind,
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::{sleep, timeout, Instant};

/// Upper bound for a whole test, so that a broker that never answers fails the test.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Runs a test body under [`TEST_TIMEOUT`].
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

fn long(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

fn string(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// Declares a fresh exclusive queue (gone with the connection) with `args`.
async fn declare(ch: &Channel, prefix: &str, args: FieldTable) -> String {
    declare_unique(ch, prefix, exclusive(), args).await
}

/// Declares a durable quorum queue with `args` (plus `x-queue-type`); delete it after use.
async fn declare_quorum(ch: &Channel, prefix: &str, mut args: FieldTable) -> String {
    let name = unique(prefix);
    args.insert("x-queue-type".into(), string("quorum"));
    ch.queue_declare(name.as_str().into(), durable(), args)
        .await
        .expect("queue.declare (quorum)");
    name
}

async fn delete_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel.open");
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

async fn declare_exchange(ch: &Channel, prefix: &str, kind: ExchangeKind) -> String {
    let name = unique(prefix);
    ch.exchange_declare(
        name.as_str().into(),
        kind,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    name
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_queue(ch, queue, exchange, key, FieldTable::default()).await
}

/// A fanout dead-letter exchange with an exclusive queue bound to it: (exchange, queue).
async fn dead_letter_target(ch: &Channel) -> (String, String) {
    let dlx = declare_exchange(ch, "dlx", ExchangeKind::Fanout).await;
    let dlq = declare(ch, "dlq", FieldTable::default()).await;
    bind(ch, &dlq, &dlx, "").await;
    (dlx, dlq)
}

/// Publishes and returns the publisher confirm (the channel must be in confirm mode).
async fn publish_to(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &str,
    props: BasicProperties,
) -> Confirmation {
    publish_and_confirm(ch, exchange, routing_key, body.as_bytes(), props).await
}

/// Publishes through the default exchange and asserts the broker acked it.
async fn publish_props(ch: &Channel, queue: &str, body: &str, props: BasicProperties) {
    let c = publish_to(ch, "", queue, body, props).await;
    assert!(
        c.is_ack(),
        "publish of {body:?} to {queue} not acked: {c:?}"
    );
}

async fn publish(ch: &Channel, queue: &str, body: &str) {
    publish_props(ch, queue, body, BasicProperties::default()).await
}

fn expiring(ms: &str) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.into())
}

/// Like [`consume_exactly`], returning the bodies.
async fn drain_texts(ch: &Channel, queue: &str, n: usize) -> Vec<String> {
    texts(&consume_exactly(ch, queue, n).await)
}

fn lookup<'a>(t: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    t.inner().get(&ShortString::from(key))
}

fn header<'a>(d: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref().and_then(|h| lookup(h, key))
}

fn as_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
        other => panic!("expected a longstr, got {other:?}"),
    }
}

/// A header that must be a longstr.
fn header_text(d: &Delivery, key: &str) -> String {
    as_text(header(d, key).unwrap_or_else(|| panic!("no {key} header")))
}

/// The `x-death` header: an array of tables.
fn x_death(d: &Delivery) -> Vec<FieldTable> {
    match header(d, "x-death").expect("no x-death header") {
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What one `x-death` entry should say.
struct Death<'a> {
    count: i64,
    reason: &'a str,
    queue: &'a str,
    exchange: &'a str,
    routing_keys: &'a [&'a str],
    original_expiration: Option<&'a str>,
}

/// Checks every field of an `x-death` entry, with the AMQP types RabbitMQ uses:
/// count is a long (`l`), time a timestamp (`T`, seconds), routing-keys an array of
/// longstr, the rest longstr; no other fields.
fn assert_death(entry: &FieldTable, want: Death) {
    let mut keys: Vec<&str> = entry.inner().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    let mut expected = vec![
        "count",
        "exchange",
        "queue",
        "reason",
        "routing-keys",
        "time",
    ];
    if want.original_expiration.is_some() {
        expected.push("original-expiration");
        expected.sort_unstable();
    }
    assert_eq!(keys, expected, "x-death entry fields: {entry:?}");
    assert_eq!(
        lookup(entry, "count"),
        Some(&AMQPValue::LongLongInt(want.count)),
        "count in {entry:?}"
    );
    assert_eq!(as_text(lookup(entry, "reason").unwrap()), want.reason);
    assert_eq!(as_text(lookup(entry, "queue").unwrap()), want.queue);
    assert_eq!(as_text(lookup(entry, "exchange").unwrap()), want.exchange);
    match lookup(entry, "routing-keys").unwrap() {
        AMQPValue::FieldArray(a) => {
            let keys: Vec<String> = a.as_slice().iter().map(as_text).collect();
            assert_eq!(keys, want.routing_keys, "routing-keys in {entry:?}");
        }
        other => panic!("routing-keys is not an array: {other:?}"),
    }
    match lookup(entry, "time").unwrap() {
        AMQPValue::Timestamp(t) => {
            let now = now_secs();
            assert!(
                t.abs_diff(now) <= 60,
                "time {t} is not close to now ({now})"
            );
        }
        other => panic!("time is not a timestamp: {other:?}"),
    }
    if let Some(exp) = want.original_expiration {
        assert_eq!(as_text(lookup(entry, "original-expiration").unwrap()), exp);
    }
}

/// Checks the `x-first-death-*` headers.
fn assert_first_death(d: &Delivery, reason: &str, queue: &str, exchange: &str) {
    assert_eq!(header_text(d, "x-first-death-reason"), reason);
    assert_eq!(header_text(d, "x-first-death-queue"), queue);
    assert_eq!(header_text(d, "x-first-death-exchange"), exchange);
}

/// Declares a queue named `name` with `options` and `args` on a fresh channel of
/// `conn`, expecting a 406 whose text is `expected(name)`.
async fn assert_declare_refused(
    conn: &Connection,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
    expected: &str,
) {
    let ch = conn.create_channel().await.expect("channel.open");
    let res = ch.queue_declare(name.into(), options, args).await;
    assert_closed(res, 406, expected);
}

/// Expects `x-<arg>` = `value` to be refused on queue.declare with RabbitMQ's
/// "invalid arg" text ending in `detail`.
async fn assert_invalid_arg(conn: &Connection, arg: &str, value: AMQPValue, detail: &str) {
    let q = unique("invalid");
    assert_declare_refused(
        conn,
        &q,
        exclusive(),
        table(&[(arg, value)]),
        &format!(
            "PRECONDITION_FAILED - invalid arg '{arg}' for queue '{q}' in vhost '/': {detail}"
        ),
    )
    .await;
}

fn not_found(queue: &str) -> String {
    format!("NOT_FOUND - no queue '{queue}' in vhost '/'")
}

/// Passive declare of `queue` on a fresh channel: Ok(message count) or the close reason.
async fn probe_queue(conn: &Connection, queue: &str) -> Result<u32, (u16, String)> {
    let ch = conn.create_channel().await.expect("channel.open");
    let res = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match res {
        Ok(q) => {
            let _ = ch.close(200, "OK".into()).await;
            Ok(q.message_count())
        }
        Err(e) => Err(amqp_error(&e).unwrap_or_else(|| panic!("unexpected error {e}"))),
    }
}

// ---------------------------------------------------------------------------
// message TTL
// ---------------------------------------------------------------------------

#[tokio::test]
async fn queue_message_ttl_drops_unconsumed_messages_after_the_ttl() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "ttl", table(&[("x-message-ttl", int(300))])).await;
        for body in ["a", "b", "c"] {
            publish(&ch, &q, body).await;
        }
        assert_eq!(ready_count(&ch, &q).await, 3);
        // No consumer: the count drops once the TTL has passed...
        wait_ready(&ch, &q, 0).await;
        // ...and the expired messages are never delivered.
        let mut consumer = consume(&ch, &q, "", false).await;
        assert_quiet(&mut consumer).await;
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert!(got.is_none(), "expired message delivered by basic.get");
    })
    .await
}

#[tokio::test]
async fn queue_message_ttl_counts_from_each_message_enqueue() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "ttl", table(&[("x-message-ttl", int(600))])).await;
        publish(&ch, &q, "early").await;
        // The subject: the two messages enqueued 350 ms apart.
        sleep(Duration::from_millis(350)).await;
        publish(&ch, &q, "late").await;
        // "early" expires ~250 ms before "late".
        wait_ready(&ch, &q, 1).await;
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the later message should still be there");
        assert_eq!(text(&got.delivery), "late");
    })
    .await
}

#[tokio::test]
async fn per_message_expiration_expires_the_message() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "exp", FieldTable::default()).await;
        publish_props(&ch, &q, "short", expiring("100")).await;
        publish(&ch, &q, "keep").await;
        wait_ready(&ch, &q, 1).await;
        let got = consume_exactly(&ch, &q, 1).await;
        assert_eq!(texts(&got), ["keep"]);
        // The surviving message arrives without an expiration it never had.
        assert_eq!(got[0].properties.expiration(), &None);
    })
    .await
}

#[tokio::test]
async fn unexpired_message_keeps_its_expiration_property() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "exp", FieldTable::default()).await;
        publish_props(&ch, &q, "m", expiring("60000")).await;
        let got = consume_exactly(&ch, &q, 1).await;
        assert_eq!(
            got[0].properties.expiration(),
            &Some(ShortString::from("60000"))
        );
    })
    .await
}

#[tokio::test]
async fn expired_message_behind_a_live_one_is_never_delivered() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "exp", FieldTable::default()).await;
        publish_props(&ch, &q, "long", expiring("10000")).await;
        publish_props(&ch, &q, "short", expiring("100")).await;
        publish(&ch, &q, "forever").await;
        // The subject: past "short"'s 100 ms TTL while "long" is ahead of it.
        sleep(Duration::from_millis(300)).await;
        assert_eq!(drain_texts(&ch, &q, 2).await, ["long", "forever"]);
    })
    .await
}

#[tokio::test]
async fn lower_of_queue_ttl_and_message_expiration_wins() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        // Queue TTL long, message expiration short: the message expires early.
        let q1 = declare(&ch, "ttl", table(&[("x-message-ttl", int(10_000))])).await;
        publish_props(&ch, &q1, "m", expiring("100")).await;
        // Queue TTL short, message expiration long: the queue TTL applies.
        let q2 = declare(&ch, "ttl", table(&[("x-message-ttl", int(100))])).await;
        publish_props(&ch, &q2, "m", expiring("10000")).await;
        let start = Instant::now();
        wait_ready(&ch, &q1, 0).await;
        wait_ready(&ch, &q2, 0).await;
        assert!(start.elapsed() < Duration::from_secs(2));
    })
    .await
}

#[tokio::test]
async fn ttl_zero_delivers_to_a_ready_consumer_and_dead_letters_otherwise() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare(
            &ch,
            "ttl0",
            table(&[
                ("x-message-ttl", int(0)),
                ("x-dead-letter-exchange", string(&dlx)),
            ]),
        )
        .await;
        // Nobody is consuming: expired immediately, dead-lettered.
        publish(&ch, &q, "nobody").await;
        let dead = consume_exactly(&ch, &dlq, 1).await;
        assert_eq!(text(&dead[0]), "nobody");
        assert_death(
            &x_death(&dead[0])[0],
            Death {
                count: 1,
                reason: "expired",
                queue: &q,
                exchange: "",
                routing_keys: &[&q],
                original_expiration: None,
            },
        );
        // A consumer is ready: delivered.
        let cch = conn.create_channel().await.unwrap();
        let mut consumer = consume(&cch, &q, "", false).await;
        publish(&ch, &q, "ready").await;
        let d = next(&mut consumer).await;
        assert_eq!(text(&d), "ready");
        d.ack(BasicAckOptions::default()).await.unwrap();
        let mut dead = consume(&ch, &dlq, "", true).await;
        assert_quiet(&mut dead).await;
    })
    .await
}

#[tokio::test]
async fn per_message_expiration_zero_without_consumer_is_dead_lettered() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare(
            &ch,
            "exp0",
            table(&[("x-dead-letter-exchange", string(&dlx))]),
        )
        .await;
        publish_props(&ch, &q, "gone", expiring("0")).await;
        let dead = consume_exactly(&ch, &dlq, 1).await;
        assert_eq!(text(&dead[0]), "gone");
        assert_eq!(dead[0].properties.expiration(), &None);
        assert_death(
            &x_death(&dead[0])[0],
            Death {
                count: 1,
                reason: "expired",
                queue: &q,
                exchange: "",
                routing_keys: &[&q],
                original_expiration: Some("0"),
            },
        );
        assert_eq!(ready_count(&ch, &q).await, 0);
    })
    .await
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_with_reason_expired() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare(
            &ch,
            "ttl",
            table(&[
                ("x-message-ttl", int(200)),
                ("x-dead-letter-exchange", string(&dlx)),
            ]),
        )
        .await;
        let props = expiring("100")
            .with_headers(table(&[("app", string("kept"))]))
            .with_content_type("text/plain".into())
            .with_message_id("id-1".into());
        publish_props(&ch, &q, "per-message", props).await;
        publish(&ch, &q, "queue-ttl").await;

        let dead = consume_exactly(&ch, &dlq, 2).await;
        assert_eq!(texts(&dead), ["per-message", "queue-ttl"]);
        for d in &dead {
            // Republished to the DLX with the original routing key.
            assert_eq!(d.exchange.as_str(), dlx);
            assert_eq!(d.routing_key.as_str(), q);
            assert!(!d.redelivered);
            assert_eq!(d.properties.expiration(), &None);
            assert_first_death(d, "expired", &q, "");
            assert_eq!(x_death(d).len(), 1);
        }
        // The per-message expiration is moved into the x-death entry; other properties
        // and headers are kept.
        assert_death(
            &x_death(&dead[0])[0],
            Death {
                count: 1,
                reason: "expired",
                queue: &q,
                exchange: "",
                routing_keys: &[&q],
                original_expiration: Some("100"),
            },
        );
        assert_eq!(header_text(&dead[0], "app"), "kept");
        assert_eq!(
            dead[0].properties.content_type(),
            &Some(ShortString::from("text/plain"))
        );
        assert_eq!(
            dead[0].properties.message_id(),
            &Some(ShortString::from("id-1"))
        );
        // Expired by the queue TTL: no original-expiration.
        assert_death(
            &x_death(&dead[1])[0],
            Death {
                count: 1,
                reason: "expired",
                queue: &q,
                exchange: "",
                routing_keys: &[&q],
                original_expiration: None,
            },
        );
        assert_eq!(ready_count(&ch, &q).await, 0);
    })
    .await
}

#[tokio::test]
async fn invalid_per_message_expiration_closes_the_channel_406() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        let q = unique("nowhere");
        for (expiration, detail) in [
            ("abc", "no_integer"),
            ("", "no_integer"),
            (" 100", "no_integer"),
            ("-1", "{value_negative,-1}"),
            ("1.5", "{leftover_string,\".5\"}"),
        ] {
            let ch = channel(&conn).await;
            let confirm = ch
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    b"x",
                    expiring(expiration),
                )
                .await
                .expect("basic.publish");
            let res = timeout(WAIT, confirm)
                .await
                .expect("timed out waiting for the confirm or the close");
            assert_closed(
                res,
                406,
                &format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {detail}"),
            );
            assert!(conn.status().connected(), "connection should survive");
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// queue expiry
// ---------------------------------------------------------------------------

/// Polls (less often than the queue's `x-expires`, since a passive declare counts as
/// use) until passive declare of `queue` fails with RabbitMQ's 404.
async fn wait_until_expired(conn: &Connection, queue: &str, poll: Duration) {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe_queue(conn, queue).await {
            Err(reason) => {
                assert_eq!(reason, (404, not_found(queue)));
                return;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "queue {queue} never expired");
                sleep(poll).await;
            }
        }
    }
}

#[tokio::test]
async fn unused_queue_is_deleted_after_x_expires() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = unique("expires");
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            table(&[("x-expires", int(200))]),
        )
        .await
        .unwrap();
        publish(&ch, &q, "messages do not keep it alive").await;
        assert!(probe_queue(&conn, &q).await.is_ok());
        wait_until_expired(&conn, &q, Duration::from_millis(400)).await;
    })
    .await
}

#[tokio::test]
async fn redeclaring_a_queue_resets_its_x_expires_timer() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = unique("expires");
        let args = table(&[("x-expires", int(400))]);
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            args.clone(),
        )
        .await
        .unwrap();
        // The subject: 900 ms of redeclares 150 ms apart, each renewing 400 ms.
        for _ in 0..6 {
            sleep(Duration::from_millis(150)).await;
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                args.clone(),
            )
            .await
            .expect("queue expired although it was redeclared");
        }
        wait_until_expired(&conn, &q, Duration::from_millis(600)).await;
    })
    .await
}

#[tokio::test]
async fn queue_with_a_consumer_does_not_expire() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = unique("expires");
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            table(&[("x-expires", int(200))]),
        )
        .await
        .unwrap();
        let consumer = consume(&ch, &q, "", false).await;
        // The subject: three times x-expires with the consumer there.
        sleep(Duration::from_millis(600)).await;
        let ok = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue with a consumer expired");
        assert_eq!(ok.consumer_count(), 1);
        // Once the consumer is gone the queue is unused and expires.
        ch.basic_cancel(
            consumer.tag().as_str().into(),
            BasicCancelOptions::default(),
        )
        .await
        .unwrap();
        wait_until_expired(&conn, &q, Duration::from_millis(400)).await;
    })
    .await
}

// ---------------------------------------------------------------------------
// length limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn max_length_drops_the_oldest_messages() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "maxlen", table(&[("x-max-length", int(2))])).await;
        for i in 0..5 {
            // drop-head: every publish is confirmed.
            publish(&ch, &q, &format!("m{i}")).await;
        }
        assert_eq!(ready_count(&ch, &q).await, 2);
        assert_eq!(drain_texts(&ch, &q, 2).await, ["m3", "m4"]);
    })
    .await
}

#[tokio::test]
async fn max_length_drop_head_dead_letters_with_reason_maxlen() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare(
            &ch,
            "maxlen",
            table(&[
                ("x-max-length", int(2)),
                ("x-overflow", string("drop-head")),
                ("x-dead-letter-exchange", string(&dlx)),
            ]),
        )
        .await;
        for i in 0..5 {
            publish(&ch, &q, &format!("m{i}")).await;
        }
        let dead = consume_exactly(&ch, &dlq, 3).await;
        assert_eq!(texts(&dead), ["m0", "m1", "m2"]);
        for d in &dead {
            assert_death(
                &x_death(d)[0],
                Death {
                    count: 1,
                    reason: "maxlen",
                    queue: &q,
                    exchange: "",
                    routing_keys: &[&q],
                    original_expiration: None,
                },
            );
            assert_first_death(d, "maxlen", &q, "");
        }
        assert_eq!(drain_texts(&ch, &q, 2).await, ["m3", "m4"]);
    })
    .await
}

#[tokio::test]
async fn max_length_bytes_counts_body_bytes_only() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "maxbytes", table(&[("x-max-length-bytes", int(10))])).await;
        // Headers and properties do not count against the limit.
        let props =
            || BasicProperties::default().with_headers(table(&[("pad", string(&"x".repeat(200)))]));
        publish_props(&ch, &q, "aaaa", props()).await;
        publish_props(&ch, &q, "bbbb", props()).await;
        assert_eq!(ready_count(&ch, &q).await, 2);
        // 12 bytes > 10: the oldest goes.
        publish_props(&ch, &q, "cccc", props()).await;
        assert_eq!(ready_count(&ch, &q).await, 2);
        assert_eq!(drain_texts(&ch, &q, 2).await, ["bbbb", "cccc"]);
        // A body of exactly the limit fits.
        publish(&ch, &q, "0123456789").await;
        assert_eq!(ready_count(&ch, &q).await, 1);
        // A body larger than the limit is confirmed but dropped at once, along with
        // everything before it.
        publish(&ch, &q, "0123456789A").await;
        assert_eq!(ready_count(&ch, &q).await, 0);
    })
    .await
}

#[tokio::test]
async fn reject_publish_nacks_and_does_not_enqueue_or_dead_letter() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare(
            &ch,
            "rejpub",
            table(&[
                ("x-max-length", int(2)),
                ("x-overflow", string("reject-publish")),
                ("x-dead-letter-exchange", string(&dlx)),
            ]),
        )
        .await;
        let mut confirms = Vec::new();
        for i in 0..4 {
            let c = publish_to(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await;
            confirms.push(c.is_ack());
        }
        assert_eq!(confirms, [true, true, false, false]);
        assert_eq!(ready_count(&ch, &q).await, 2);
        let mut dead = consume(&ch, &dlq, "", true).await;
        assert_quiet(&mut dead).await;
        // Once there is room again, publishes are accepted.
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(text(&got.delivery), "m0");
        publish(&ch, &q, "m4").await;
        assert_eq!(drain_texts(&ch, &q, 2).await, ["m1", "m4"]);
    })
    .await
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters_with_reason_maxlen() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare(
            &ch,
            "rejpubdlx",
            table(&[
                ("x-max-length", int(2)),
                ("x-overflow", string("reject-publish-dlx")),
                ("x-dead-letter-exchange", string(&dlx)),
            ]),
        )
        .await;
        let mut confirms = Vec::new();
        for i in 0..4 {
            let c = publish_to(&ch, "", &q, &format!("m{i}"), BasicProperties::default()).await;
            confirms.push(c.is_ack());
        }
        assert_eq!(confirms, [true, true, false, false]);
        // The rejected messages are dead-lettered (RabbitMQ 3.10, classic queue)...
        let dead = consume_exactly(&ch, &dlq, 2).await;
        assert_eq!(texts(&dead), ["m2", "m3"]);
        for d in &dead {
            assert_death(
                &x_death(d)[0],
                Death {
                    count: 1,
                    reason: "maxlen",
                    queue: &q,
                    exchange: "",
                    routing_keys: &[&q],
                    original_expiration: None,
                },
            );
        }
        // ...and the queue keeps the oldest.
        assert_eq!(drain_texts(&ch, &q, 2).await, ["m0", "m1"]);
    })
    .await
}

// ---------------------------------------------------------------------------
// dead-lettering
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reject_and_nack_without_requeue_dead_letter_with_the_dead_letter_routing_key() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let dlx = declare_exchange(&ch, "dlx", ExchangeKind::Direct).await;
        let dlq = declare(&ch, "dlq", FieldTable::default()).await;
        bind(&ch, &dlq, &dlx, "dead").await;
        let q = declare(
            &ch,
            "work",
            table(&[
                ("x-dead-letter-exchange", string(&dlx)),
                ("x-dead-letter-routing-key", string("dead")),
            ]),
        )
        .await;
        for body in ["rejected", "nacked", "requeued"] {
            publish(&ch, &q, body).await;
        }
        let mut consumer = consume(&ch, &q, "", false).await;
        let ds = next_n(&mut consumer, 3).await;
        ds[0]
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        ds[1]
            .nack(BasicNackOptions {
                requeue: false,
                multiple: false,
            })
            .await
            .unwrap();
        // requeue=true is not dead-lettering: the message comes back.
        ds[2]
            .reject(BasicRejectOptions { requeue: true })
            .await
            .unwrap();
        let again = next(&mut consumer).await;
        assert_eq!(text(&again), "requeued");
        assert!(again.redelivered);
        again.ack(BasicAckOptions::default()).await.unwrap();

        let dead = consume_exactly(&ch, &dlq, 2).await;
        assert_eq!(texts(&dead), ["rejected", "nacked"]);
        for d in &dead {
            assert_eq!(d.exchange.as_str(), dlx);
            assert_eq!(d.routing_key.as_str(), "dead");
            assert!(!d.redelivered);
            // x-death records the routing key the message had, not the new one.
            assert_death(
                &x_death(d)[0],
                Death {
                    count: 1,
                    reason: "rejected",
                    queue: &q,
                    exchange: "",
                    routing_keys: &[&q],
                    original_expiration: None,
                },
            );
            assert_first_death(d, "rejected", &q, "");
        }
    })
    .await
}

#[tokio::test]
async fn dead_lettering_without_a_routing_key_keeps_the_original_one() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let src = declare_exchange(&ch, "src", ExchangeKind::Direct).await;
        let dlx = declare_exchange(&ch, "dlx", ExchangeKind::Direct).await;
        let q = declare(
            &ch,
            "work",
            table(&[("x-dead-letter-exchange", string(&dlx))]),
        )
        .await;
        bind(&ch, &q, &src, "orders.new").await;
        let dlq = declare(&ch, "dlq", FieldTable::default()).await;
        bind(&ch, &dlq, &dlx, "orders.new").await;

        let c = publish_to(&ch, &src, "orders.new", "o1", BasicProperties::default()).await;
        assert!(c.is_ack());
        let mut consumer = consume(&ch, &q, "", false).await;
        let d = next(&mut consumer).await;
        d.nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .unwrap();

        let dead = consume_exactly(&ch, &dlq, 1).await;
        let d = &dead[0];
        assert_eq!(text(d), "o1");
        assert_eq!(d.exchange.as_str(), dlx);
        assert_eq!(d.routing_key.as_str(), "orders.new");
        assert_death(
            &x_death(d)[0],
            Death {
                count: 1,
                reason: "rejected",
                queue: &q,
                exchange: &src,
                routing_keys: &["orders.new"],
                original_expiration: None,
            },
        );
        assert_first_death(d, "rejected", &q, &src);
    })
    .await
}

#[tokio::test]
async fn dead_lettering_records_cc_routing_keys() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let src = declare_exchange(&ch, "src", ExchangeKind::Direct).await;
        let dlx = declare_exchange(&ch, "dlx", ExchangeKind::Direct).await;
        // Without a dead-letter routing key: the CC header stays and the message is
        // dead-lettered with all of its routing keys.
        let keep = declare(
            &ch,
            "work",
            table(&[("x-dead-letter-exchange", string(&dlx))]),
        )
        .await;
        // With one: the CC header is removed.
        let redirect = declare(
            &ch,
            "work",
            table(&[
                ("x-dead-letter-exchange", string(&dlx)),
                ("x-dead-letter-routing-key", string("redirected")),
            ]),
        )
        .await;
        bind(&ch, &keep, &src, "k1").await;
        bind(&ch, &redirect, &src, "k2").await;
        let dlq_cc = declare(&ch, "dlq", FieldTable::default()).await;
        bind(&ch, &dlq_cc, &dlx, "k2").await;
        let dlq_redirected = declare(&ch, "dlq", FieldTable::default()).await;
        bind(&ch, &dlq_redirected, &dlx, "redirected").await;

        let cc = AMQPValue::FieldArray(FieldArray::from(vec![string("k2")]));
        let props = BasicProperties::default().with_headers(table(&[("CC", cc.clone())]));
        assert!(publish_to(&ch, &src, "k1", "m", props).await.is_ack());

        for q in [&keep, &redirect] {
            let got = ch
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
                .expect("message routed by key or CC");
            got.delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .unwrap();
        }
        // From `keep` (original keys k1 + CC k2): routed to the DLX by k1 and k2.
        let from_keep = consume_exactly(&ch, &dlq_cc, 1).await;
        assert_eq!(header(&from_keep[0], "CC"), Some(&cc));
        assert_death(
            &x_death(&from_keep[0])[0],
            Death {
                count: 1,
                reason: "rejected",
                queue: &keep,
                exchange: &src,
                routing_keys: &["k1", "k2"],
                original_expiration: None,
            },
        );
        // From `redirect`: routed by "redirected" only, CC gone, keys still recorded.
        let from_redirect = consume_exactly(&ch, &dlq_redirected, 1).await;
        assert_eq!(header(&from_redirect[0], "CC"), None);
        assert_death(
            &x_death(&from_redirect[0])[0],
            Death {
                count: 1,
                reason: "rejected",
                queue: &redirect,
                exchange: &src,
                routing_keys: &["k1", "k2"],
                original_expiration: None,
            },
        );
    })
    .await
}

#[tokio::test]
async fn repeated_dead_lettering_through_one_queue_increments_count_in_place() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        // Dead-letters back into itself through the default exchange.
        let q = declare(
            &ch,
            "loop",
            table(&[("x-dead-letter-exchange", string(""))]),
        )
        .await;
        publish(&ch, &q, "again").await;
        let mut consumer = consume(&ch, &q, "", false).await;
        let first = next(&mut consumer).await;
        assert_eq!(header(&first, "x-death"), None);
        first
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        for count in 1..=3 {
            let d = next(&mut consumer).await;
            assert_eq!(text(&d), "again");
            assert!(!d.redelivered);
            let deaths = x_death(&d);
            assert_eq!(deaths.len(), 1, "one entry per (queue, reason)");
            assert_death(
                &deaths[0],
                Death {
                    count,
                    reason: "rejected",
                    queue: &q,
                    exchange: "",
                    routing_keys: &[&q],
                    original_expiration: None,
                },
            );
            assert_first_death(&d, "rejected", &q, "");
            d.nack(BasicNackOptions {
                requeue: false,
                multiple: false,
            })
            .await
            .unwrap();
        }
        let last = next(&mut consumer).await;
        assert_eq!(
            lookup(&x_death(&last)[0], "count"),
            Some(&AMQPValue::LongLongInt(4))
        );
        last.ack(BasicAckOptions::default()).await.unwrap();
    })
    .await
}

#[tokio::test]
async fn x_death_entries_are_most_recent_first() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        // Ping-pong between two queues by rejection.
        let p = unique("ping");
        let q = unique("pong");
        for (name, other) in [(&p, &q), (&q, &p)] {
            ch.queue_declare(
                name.as_str().into(),
                exclusive(),
                table(&[
                    ("x-dead-letter-exchange", string("")),
                    ("x-dead-letter-routing-key", string(other)),
                ]),
            )
            .await
            .unwrap();
        }
        publish(&ch, &p, "ball").await;
        let mut at_p = consume(&ch, &p, "", false).await;
        let mut at_q = consume(&ch, &q, "", false).await;
        let reject = |d: Delivery| async move {
            d.reject(BasicRejectOptions { requeue: false })
                .await
                .unwrap()
        };
        let d = next(&mut at_p).await;
        reject(d).await;

        // (queue, count) of each entry, in order.
        let summary = |d: &Delivery| -> Vec<(String, i64)> {
            x_death(d)
                .iter()
                .map(|e| {
                    let count = match lookup(e, "count") {
                        Some(AMQPValue::LongLongInt(n)) => *n,
                        other => panic!("bad count {other:?}"),
                    };
                    (as_text(lookup(e, "queue").unwrap()), count)
                })
                .collect()
        };
        let d = next(&mut at_q).await;
        assert_eq!(summary(&d), [(p.clone(), 1)]);
        reject(d).await;
        let d = next(&mut at_p).await;
        assert_eq!(summary(&d), [(q.clone(), 1), (p.clone(), 1)]);
        reject(d).await;
        // p's entry is updated and moved to the front.
        let d = next(&mut at_q).await;
        assert_eq!(summary(&d), [(p.clone(), 2), (q.clone(), 1)]);
        assert_first_death(&d, "rejected", &p, "");
        reject(d).await;
        let d = next(&mut at_p).await;
        assert_eq!(summary(&d), [(q.clone(), 2), (p.clone(), 2)]);
        d.ack(BasicAckOptions::default()).await.unwrap();
    })
    .await
}

#[tokio::test]
async fn retry_topology_counts_each_cycle() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let work_x = declare_exchange(&ch, "work-x", ExchangeKind::Direct).await;
        let wait_x = declare_exchange(&ch, "wait-x", ExchangeKind::Direct).await;
        let work = declare(
            &ch,
            "work",
            table(&[("x-dead-letter-exchange", string(&wait_x))]),
        )
        .await;
        let wait = declare(
            &ch,
            "wait",
            table(&[
                ("x-dead-letter-exchange", string(&work_x)),
                ("x-message-ttl", int(100)),
            ]),
        )
        .await;
        bind(&ch, &work, &work_x, "job").await;
        bind(&ch, &wait, &wait_x, "job").await;

        assert!(
            publish_to(&ch, &work_x, "job", "task", BasicProperties::default())
                .await
                .is_ack()
        );
        let mut consumer = consume(&ch, &work, "", false).await;
        let first = next(&mut consumer).await;
        assert_eq!(header(&first, "x-death"), None);
        first
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        for cycle in 1..=3 {
            let d = next(&mut consumer).await;
            assert_eq!(text(&d), "task");
            assert_eq!(d.exchange.as_str(), work_x);
            assert_eq!(d.routing_key.as_str(), "job");
            let deaths = x_death(&d);
            assert_eq!(deaths.len(), 2, "{deaths:?}");
            // Most recent first: it expired from the wait queue after being rejected
            // from the work queue.
            assert_death(
                &deaths[0],
                Death {
                    count: cycle,
                    reason: "expired",
                    queue: &wait,
                    exchange: &wait_x,
                    routing_keys: &["job"],
                    original_expiration: None,
                },
            );
            assert_death(
                &deaths[1],
                Death {
                    count: cycle,
                    reason: "rejected",
                    queue: &work,
                    exchange: &work_x,
                    routing_keys: &["job"],
                    original_expiration: None,
                },
            );
            assert_first_death(&d, "rejected", &work, &work_x);
            if cycle < 3 {
                d.reject(BasicRejectOptions { requeue: false })
                    .await
                    .unwrap();
            } else {
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
        }
        assert_quiet(&mut consumer).await;
    })
    .await
}

#[tokio::test]
async fn dead_letter_cycle_without_rejection_drops_the_message() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        // a --expired--> b --expired--> a: RabbitMQ drops the message instead of
        // dead-lettering it back into a.
        let a = unique("cycle-a");
        let b = unique("cycle-b");
        for (name, other, ttl) in [(&a, &b, 100), (&b, &a, 300)] {
            ch.queue_declare(
                name.as_str().into(),
                exclusive(),
                table(&[
                    ("x-dead-letter-exchange", string("")),
                    ("x-dead-letter-routing-key", string(other)),
                    ("x-message-ttl", int(ttl)),
                ]),
            )
            .await
            .unwrap();
        }
        publish(&ch, &a, "round").await;
        wait_ready(&ch, &b, 1).await;
        assert_eq!(ready_count(&ch, &a).await, 0);
        wait_ready(&ch, &b, 0).await;
        let mut at_a = consume(&ch, &a, "", true).await;
        let mut at_b = consume(&ch, &b, "", true).await;
        assert_quiet(&mut at_a).await;
        assert_quiet(&mut at_b).await;
    })
    .await
}

#[tokio::test]
async fn queue_dead_lettering_expired_messages_to_itself_drops_them() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(
            &ch,
            "selfloop",
            table(&[
                ("x-dead-letter-exchange", string("")),
                ("x-message-ttl", int(100)),
            ]),
        )
        .await;
        publish(&ch, &q, "once").await;
        wait_ready(&ch, &q, 0).await;
        let mut consumer = consume(&ch, &q, "", true).await;
        assert_quiet(&mut consumer).await;
    })
    .await
}

// ---------------------------------------------------------------------------
// argument validation
// ---------------------------------------------------------------------------

#[tokio::test]
async fn x_message_ttl_must_be_a_non_negative_integer() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        assert_invalid_arg(&conn, "x-message-ttl", int(-1), "{value_negative,-1}").await;
        assert_invalid_arg(&conn, "x-message-ttl", long(-1), "{value_negative,-1}").await;
        assert_invalid_arg(
            &conn,
            "x-message-ttl",
            string("100"),
            "\"expected integer, got longstr\"",
        )
        .await;
        assert_invalid_arg(
            &conn,
            "x-message-ttl",
            AMQPValue::Double(1.5),
            "\"expected integer, got double\"",
        )
        .await;
        // At most ten years.
        assert_invalid_arg(
            &conn,
            "x-message-ttl",
            long(315_360_000_001),
            "{value_too_large,315360000001}",
        )
        .await;
        // The refused queue was not created.
        let q = unique("invalid");
        assert_declare_refused(
            &conn,
            &q,
            exclusive(),
            table(&[("x-message-ttl", int(-5))]),
            &format!(
                "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue '{q}' in vhost '/': {{value_negative,-5}}"
            ),
        )
        .await;
        assert_eq!(probe_queue(&conn, &q).await, Err((404, not_found(&q))));
    })
    .await
}

#[tokio::test]
async fn x_expires_must_be_a_positive_integer() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        assert_invalid_arg(&conn, "x-expires", int(0), "{value_zero,0}").await;
        assert_invalid_arg(&conn, "x-expires", int(-5), "{value_negative,-5}").await;
        assert_invalid_arg(
            &conn,
            "x-expires",
            string("5"),
            "\"expected integer, got longstr\"",
        )
        .await;
        assert_invalid_arg(
            &conn,
            "x-expires",
            long(315_360_000_001),
            "{value_too_large,315360000001}",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn length_limits_must_be_non_negative_integers() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        assert_invalid_arg(&conn, "x-max-length", int(-1), "{value_negative,-1}").await;
        assert_invalid_arg(&conn, "x-max-length-bytes", int(-1), "{value_negative,-1}").await;
        assert_invalid_arg(
            &conn,
            "x-max-length",
            string("10"),
            "\"expected integer, got longstr\"",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn x_overflow_must_be_a_known_mode() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        assert_invalid_arg(&conn, "x-overflow", string("bogus"), "invalid_overflow").await;
        assert_invalid_arg(&conn, "x-overflow", int(1), "{unacceptable_type,signedint}").await;
    })
    .await
}

#[tokio::test]
async fn x_max_priority_must_be_between_0_and_255() {
    within(async {
        let (_broker, conn, ch) = open().await;
        assert_invalid_arg(
            &conn,
            "x-max-priority",
            int(256),
            "{max_value_exceeded,256}",
        )
        .await;
        assert_invalid_arg(&conn, "x-max-priority", int(-1), "{value_negative,-1}").await;
        for ok in [0, 255] {
            declare(&ch, "prio", table(&[("x-max-priority", int(ok))])).await;
        }
    })
    .await
}

#[tokio::test]
async fn x_queue_type_must_be_a_known_type() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        assert_invalid_arg(
            &conn,
            "x-queue-type",
            string("bogus"),
            "\"unsupported queue type 'bogus'\"",
        )
        .await;
        assert_invalid_arg(
            &conn,
            "x-queue-type",
            int(1),
            "{unacceptable_type,signedint}",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn dead_letter_and_single_active_consumer_arguments_are_validated() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        let q = unique("invalid");
        assert_declare_refused(
            &conn,
            &q,
            exclusive(),
            table(&[("x-dead-letter-exchange", int(5))]),
            &format!(
                "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"
            ),
        )
        .await;
        assert_invalid_arg(
            &conn,
            "x-dead-letter-routing-key",
            string("rk"),
            "routing_key_but_no_dlx_defined",
        )
        .await;
        assert_invalid_arg(
            &conn,
            "x-single-active-consumer",
            string("true"),
            "{unacceptable_type,longstr}",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn arguments_not_supported_by_the_queue_type_are_refused() {
    within(async {
        let (_broker, conn, _ch) = open().await;
        let q = unique("classic");
        if common::against_other_broker() {
            assert_declare_refused(
                &conn,
                &q,
                exclusive(),
                table(&[("x-delivery-limit", int(2))]),
                &format!(
                    "PRECONDITION_FAILED - invalid arg 'x-delivery-limit' for queue '{q}' in vhost '/' of queue type rabbit_classic_queue"
                ),
            )
            .await;
        } else {
            // Leveret offers the delivery limit on every queue type (issue 4).
            let ch = conn.create_channel().await.unwrap();
            ch.queue_declare(
                q.as_str().into(),
                exclusive(),
                table(&[("x-delivery-limit", int(2))]),
            )
            .await
            .expect("x-delivery-limit on a classic queue");
        }
        let q = unique("quorum");
        assert_declare_refused(
            &conn,
            &q,
            durable(),
            table(&[
                ("x-queue-type", string("quorum")),
                ("x-max-priority", int(5)),
            ]),
            &format!(
                "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"
            ),
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn integer_arguments_accept_every_integer_type() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        for v in [
            AMQPValue::ShortShortInt(100),
            AMQPValue::ShortShortUInt(100),
            AMQPValue::ShortInt(100),
            AMQPValue::ShortUInt(100),
            AMQPValue::LongInt(100),
            AMQPValue::LongUInt(100),
            AMQPValue::LongLongInt(100),
        ] {
            let q = declare(
                &ch,
                "ints",
                table(&[
                    ("x-message-ttl", v.clone()),
                    ("x-max-length", v.clone()),
                    ("x-max-length-bytes", v.clone()),
                    ("x-max-priority", v.clone()),
                ]),
            )
            .await;
            publish(&ch, &q, "m").await;
            wait_ready(&ch, &q, 0).await;
        }
    })
    .await
}

#[tokio::test]
async fn consumer_x_priority_must_be_an_integer() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = declare(&ch, "cprio", FieldTable::default()).await;
        let cch = conn.create_channel().await.unwrap();
        let res = cch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                table(&[("x-priority", string("high"))]),
            )
            .await;
        assert_closed(
            res,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost '/': \"expected integer, got longstr\""
            ),
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// priority queues
// ---------------------------------------------------------------------------

#[tokio::test]
async fn priority_queue_delivers_higher_priorities_first_fifo_within_one() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(&ch, "prio", table(&[("x-max-priority", int(10))])).await;
        // (body, priority): no priority counts as 0, above the maximum as the maximum.
        let msgs: [(&str, Option<u8>); 8] = [
            ("p1", Some(1)),
            ("none-a", None),
            ("p10-a", Some(10)),
            ("p5-a", Some(5)),
            ("p200", Some(200)),
            ("p5-b", Some(5)),
            ("p0", Some(0)),
            ("p10-b", Some(10)),
        ];
        for (body, prio) in msgs {
            let mut props = BasicProperties::default();
            if let Some(p) = prio {
                props = props.with_priority(p);
            }
            publish_props(&ch, &q, body, props).await;
        }
        wait_ready(&ch, &q, 8).await;
        let got = consume_exactly(&ch, &q, 8).await;
        assert_eq!(
            texts(&got),
            ["p10-a", "p200", "p10-b", "p5-a", "p5-b", "p1", "none-a", "p0"]
        );
        // The priority property itself is delivered unchanged.
        assert_eq!(got[1].properties.priority(), &Some(200));
        assert_eq!(got[6].properties.priority(), &None);
    })
    .await
}

// ---------------------------------------------------------------------------
// single active consumer
// ---------------------------------------------------------------------------

#[tokio::test]
async fn single_active_consumer_only_the_first_consumer_receives_until_it_cancels() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = declare(
            &ch,
            "sac",
            table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
        )
        .await;
        let ch1 = conn.create_channel().await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        let mut first = consume_with(&ch1, &q, "first", false, FieldTable::default()).await;
        let mut second = consume_with(&ch2, &q, "second", false, FieldTable::default()).await;
        // Both are registered consumers.
        let ok = ch
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(ok.consumer_count(), 2);

        for i in 0..4 {
            publish(&ch, &q, &format!("m{i}")).await;
        }
        let got = next_n(&mut first, 4).await;
        assert_eq!(texts(&got), ["m0", "m1", "m2", "m3"]);
        for d in got {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        assert_quiet(&mut second).await;

        // The active consumer goes away: the other one takes over. (The queue is empty
        // at this point on purpose: RabbitMQ 3.10 does not hand messages already waiting
        // to the new active consumer on basic.cancel, and its classic queue process
        // crashes on the next publish in that state. A closed channel does hand them
        // over; see the next test.)
        ch1.basic_cancel("first".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        for i in 4..7 {
            publish(&ch, &q, &format!("m{i}")).await;
        }
        let got = next_n(&mut second, 3).await;
        assert_eq!(texts(&got), ["m4", "m5", "m6"]);
        for d in got {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        assert_quiet(&mut first).await;
        assert_eq!(ready_count(&ch, &q).await, 0);
    })
    .await
}

#[tokio::test]
async fn single_active_consumer_next_consumer_gets_everything_left_when_the_active_one_closes() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = declare(
            &ch,
            "sac",
            table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
        )
        .await;
        let ch1 = conn.create_channel().await.unwrap();
        ch1.basic_qos(2, BasicQosOptions::default()).await.unwrap();
        let ch2 = conn.create_channel().await.unwrap();
        let mut first = consume_with(&ch1, &q, "first", false, FieldTable::default()).await;
        let mut second = consume_with(&ch2, &q, "second", false, FieldTable::default()).await;
        for i in 0..5 {
            publish(&ch, &q, &format!("m{i}")).await;
        }
        // The active consumer holds two unacked; the rest waits in the queue.
        assert_eq!(texts(&next_n(&mut first, 2).await), ["m0", "m1"]);
        assert_quiet(&mut second).await;
        assert_eq!(ready_count(&ch, &q).await, 3);

        ch1.close(200, "bye".into()).await.unwrap();
        let got = next_n(&mut second, 5).await;
        assert_eq!(texts(&got), ["m0", "m1", "m2", "m3", "m4"]);
        let redelivered: Vec<bool> = got.iter().map(|d| d.redelivered).collect();
        assert_eq!(redelivered, [true, true, false, false, false]);
        assert_quiet(&mut second).await;
    })
    .await
}

// ---------------------------------------------------------------------------
// consumer priorities
// ---------------------------------------------------------------------------

#[tokio::test]
async fn higher_priority_consumer_gets_messages_while_it_has_capacity() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = declare(&ch, "cprio", FieldTable::default()).await;
        let lo_ch = conn.create_channel().await.unwrap();
        let hi_ch = conn.create_channel().await.unwrap();
        hi_ch
            .basic_qos(3, BasicQosOptions::default())
            .await
            .unwrap();
        // The low-priority consumer subscribes first and has no prefetch limit.
        let mut lo = consume_with(&lo_ch, &q, "lo", false, FieldTable::default()).await;
        let mut hi = consume_with(&hi_ch, &q, "hi", false, table(&[("x-priority", int(10))])).await;

        for i in 0..6 {
            publish(&ch, &q, &format!("m{i}")).await;
        }
        let hi_got = next_n(&mut hi, 3).await;
        assert_eq!(texts(&hi_got), ["m0", "m1", "m2"]);
        // Only once the high-priority consumer is full does the other one get any.
        assert_eq!(texts(&next_n(&mut lo, 3).await), ["m3", "m4", "m5"]);
        assert_quiet(&mut hi).await;

        // Capacity again: new messages go to the high-priority consumer.
        for d in hi_got {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
        for i in 6..9 {
            publish(&ch, &q, &format!("m{i}")).await;
        }
        assert_eq!(texts(&next_n(&mut hi, 3).await), ["m6", "m7", "m8"]);
        assert_quiet(&mut lo).await;
    })
    .await
}

// ---------------------------------------------------------------------------
// queue types
// ---------------------------------------------------------------------------

#[tokio::test]
async fn classic_queue_type_is_accepted_and_equivalent_to_no_type() {
    within(async {
        let (_broker, _conn, ch) = open().await;
        let q = declare(
            &ch,
            "classic",
            table(&[("x-queue-type", string("classic"))]),
        )
        .await;
        publish(&ch, &q, "m").await;
        assert_eq!(drain_texts(&ch, &q, 1).await, ["m"]);
        // Redeclaring without the argument, or adding it to a plain queue, is fine.
        ch.queue_declare(q.as_str().into(), exclusive(), FieldTable::default())
            .await
            .expect("redeclare without x-queue-type");
        let plain = declare(&ch, "plain", FieldTable::default()).await;
        ch.queue_declare(
            plain.as_str().into(),
            exclusive(),
            table(&[("x-queue-type", string("classic"))]),
        )
        .await
        .expect("redeclare with x-queue-type classic");
    })
    .await
}

#[tokio::test]
async fn quorum_queue_must_be_durable_and_not_exclusive_or_auto_delete() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let quorum = || table(&[("x-queue-type", string("quorum"))]);
        let q = unique("quorum");
        assert_declare_refused(
            &conn,
            &q,
            QueueDeclareOptions::default(),
            quorum(),
            &format!("PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}' in vhost '/'"),
        )
        .await;
        let q = unique("quorum");
        assert_declare_refused(
            &conn,
            &q,
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            quorum(),
            &format!(
                "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"
            ),
        )
        .await;
        let q = unique("quorum");
        assert_declare_refused(
            &conn,
            &q,
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            quorum(),
            &format!("PRECONDITION_FAILED - invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
        )
        .await;

        // Durable: accepted, and usable.
        let q = declare_quorum(&ch, "quorum", FieldTable::default()).await;
        publish(&ch, &q, "m").await;
        wait_ready(&ch, &q, 1).await;
        // Its type is part of its identity.
        assert_declare_refused(
            &conn,
            &q,
            durable(),
            FieldTable::default(),
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': received none but current is the value 'quorum' of type 'longstr'"
            ),
        )
        .await;
        assert_declare_refused(
            &conn,
            &q,
            durable(),
            table(&[("x-queue-type", string("classic"))]),
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': received 'classic' but current is 'quorum'"
            ),
        )
        .await;
        delete_queue(&conn, &q).await;
    })
    .await
}

// ---------------------------------------------------------------------------
// quorum queue delivery limit
// ---------------------------------------------------------------------------

fn delivery_count(d: &Delivery) -> Option<i64> {
    header(d, "x-delivery-count").map(|v| match v {
        AMQPValue::LongLongInt(n) => *n,
        other => panic!("x-delivery-count is not a long: {other:?}"),
    })
}

#[tokio::test]
async fn quorum_delivery_limit_dead_letters_after_the_limit() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let (dlx, dlq) = dead_letter_target(&ch).await;
        let q = declare_quorum(
            &ch,
            "limit",
            table(&[
                ("x-delivery-limit", int(2)),
                ("x-dead-letter-exchange", string(&dlx)),
            ]),
        )
        .await;
        publish(&ch, &q, "poison").await;
        let cch = conn.create_channel().await.unwrap();
        let mut consumer = consume(&cch, &q, "", false).await;
        // Delivered once plus two redeliveries, each returned with nack requeue=true.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = next(&mut consumer).await;
            assert_eq!(text(&d), "poison");
            seen.push((d.redelivered, delivery_count(&d)));
            d.nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
        }
        assert_eq!(seen, [(false, None), (true, Some(1)), (true, Some(2))]);
        assert_quiet(&mut consumer).await;

        let dead = consume_exactly(&ch, &dlq, 1).await;
        let d = &dead[0];
        assert_eq!(text(d), "poison");
        assert_eq!(delivery_count(d), None);
        assert_death(
            &x_death(d)[0],
            Death {
                count: 1,
                reason: "delivery_limit",
                queue: &q,
                exchange: "",
                routing_keys: &[&q],
                original_expiration: None,
            },
        );
        assert_first_death(d, "delivery_limit", &q, "");
        assert_eq!(ready_count(&ch, &q).await, 0);
        delete_queue(&conn, &q).await;
    })
    .await
}

#[tokio::test]
async fn quorum_delivery_limit_without_dead_letter_exchange_drops() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = declare_quorum(&ch, "limit", table(&[("x-delivery-limit", int(1))])).await;
        publish(&ch, &q, "poison").await;
        publish(&ch, &q, "fine").await;
        let cch = conn.create_channel().await.unwrap();
        cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
        let mut consumer = consume(&cch, &q, "", false).await;
        let mut seen = Vec::new();
        loop {
            let d = next(&mut consumer).await;
            seen.push((text(&d), delivery_count(&d)));
            if text(&d) == "fine" {
                d.ack(BasicAckOptions::default()).await.unwrap();
                break;
            }
            d.nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
        }
        assert_eq!(
            seen,
            [
                ("poison".to_string(), None),
                ("poison".to_string(), Some(1)),
                ("fine".to_string(), None),
            ]
        );
        assert_quiet(&mut consumer).await;
        assert_eq!(ready_count(&ch, &q).await, 0);
        delete_queue(&conn, &q).await;
    })
    .await
}

#[tokio::test]
async fn quorum_redeliveries_carry_x_delivery_count_without_a_limit() {
    within(async {
        let (_broker, conn, ch) = open().await;
        let q = declare_quorum(&ch, "redeliver", FieldTable::default()).await;
        publish(&ch, &q, "m").await;
        let cch = conn.create_channel().await.unwrap();
        let mut consumer = consume(&cch, &q, "", false).await;
        let mut counts = Vec::new();
        for i in 0..5 {
            let d = next(&mut consumer).await;
            counts.push(delivery_count(&d));
            if i < 4 {
                d.reject(BasicRejectOptions { requeue: true })
                    .await
                    .unwrap();
            } else {
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
        }
        assert_eq!(counts, [None, Some(1), Some(2), Some(3), Some(4)]);
        delete_queue(&conn, &q).await;
    })
    .await
}
