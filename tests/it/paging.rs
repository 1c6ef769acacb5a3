//! Durable queues that page their backlog out to disk: with a small
//! `storage.queue_memory_window` only a few messages of a durable queue stay in
//! memory and the rest are read back from disk ahead of consumers. None of that
//! may be visible to clients: counts, order, the redelivered flag, purge,
//! delete, fanout, confirms and restarts behave exactly as with everything in
//! memory.

use crate::common;

use common::amqp::{
    self, assert_same_sequence, connect_uri, declare_queue, persistent, timed_confirm_channel,
    timed_for, transient, within_for,
};
use common::process::{BrokerProcess, TempDir};
use common::TestBroker;
use futures_lite::StreamExt;
use lapin::{
    message::{BasicGetMessage, Delivery},
    options::*,
    types::FieldTable,
    BasicProperties, Channel, Connection, Consumer, ExchangeKind,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The window used throughout: about 14 messages of 1 KiB (each costs its
/// bytes plus 128), so a few hundred messages are mostly on disk.
const WINDOW: usize = 16 * 1024;
/// Body size of the test messages.
const BODY: usize = 1024;
/// Deadline for any single wait on the broker (RPC, confirm, delivery).
const WAIT: Duration = Duration::from_secs(10);
/// How long a consumer is watched to conclude nothing more is coming.
const QUIET: Duration = Duration::from_millis(200);
/// Deadline for a whole test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for a test that restarts a broker process.
const RESTART_TEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

/// Awaits `fut` for at most [`WAIT`].
async fn timed<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    timed_for(WAIT, what, fut).await
}

/// A config whose durable queues keep only [`WINDOW`] bytes in memory.
fn paging_config() -> leveret::Config {
    let mut config = leveret::Config::default();
    config.storage.queue_memory_window = WINDOW;
    config
}

/// An in-process broker with the small window.
async fn paging_broker() -> TestBroker {
    TestBroker::start_with(paging_config()).await
}

async fn channel(conn: &Connection) -> Channel {
    timed("channel.open", conn.create_channel()).await.unwrap()
}

/// A channel in confirm mode.
async fn confirm_channel(conn: &Connection) -> Channel {
    timed_confirm_channel(conn, WAIT).await
}

async fn declare(ch: &Channel, name: &str, durable: bool) {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    declare_queue(ch, name, options, FieldTable::default()).await
}

async fn declare_durable(ch: &Channel, name: &str) {
    declare(ch, name, true).await
}

/// Ready-message count from a passive queue.declare on a fresh channel.
async fn count(conn: &Connection, name: &str) -> u32 {
    amqp::count(conn, name, WAIT).await
}

/// A message to publish: its label (which the body starts with) and properties.
#[derive(Clone)]
struct Msg {
    label: String,
    props: BasicProperties,
    size: usize,
}

impl Msg {
    fn body(&self) -> Vec<u8> {
        let mut body = self.label.clone().into_bytes();
        body.push(b'|');
        body.resize(self.size.max(body.len()), b'.');
        body
    }
}

/// `n` 1 KiB messages labelled `{prefix}{i}`, with properties chosen by `props(i)`.
fn messages(prefix: &str, n: usize, props: impl Fn(usize) -> BasicProperties) -> Vec<Msg> {
    (0..n)
        .map(|i| Msg {
            label: format!("{prefix}{i:05}"),
            props: props(i),
            size: BODY,
        })
        .collect()
}

fn labels(messages: &[Msg]) -> Vec<String> {
    messages.iter().map(|m| m.label.clone()).collect()
}

/// The label a body starts with (everything before the first `|`).
fn label(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == b'|').unwrap_or(data.len());
    String::from_utf8(data[..end].to_vec()).expect("UTF-8 label")
}

/// Publishes every message on confirm-mode channel `ch` (pipelined), then
/// waits for all the confirms and asserts each is an ack with nothing returned.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    messages: &[Msg],
    mandatory: bool,
) {
    let mut confirms = Vec::with_capacity(messages.len());
    for m in messages {
        let confirm = timed(
            "basic.publish",
            ch.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                &m.body(),
                m.props.clone(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("publish {}: {e}", m.label));
        confirms.push((&m.label, confirm));
    }
    let (mut acks, mut nacks, mut returned) = (0usize, Vec::new(), Vec::new());
    for (label, confirm) in confirms {
        let confirmation = timed("publisher confirm", confirm)
            .await
            .unwrap_or_else(|e| panic!("confirm of {label}: {e}"));
        if confirmation.is_ack() {
            acks += 1;
        } else {
            nacks.push(label.clone());
        }
        if confirmation.take_message().is_some() {
            returned.push(label.clone());
        }
    }
    assert!(nacks.is_empty(), "publishes nacked: {nacks:?}");
    assert!(
        returned.is_empty(),
        "routed messages returned: {returned:?}"
    );
    assert_eq!(acks, messages.len(), "one ack per publish");
}

/// Asserts no delivery in `deliveries` has the redelivered flag, naming the first that has.
fn assert_none_redelivered(what: &str, deliveries: &[Delivery]) {
    let flagged: Vec<(usize, String)> = deliveries
        .iter()
        .enumerate()
        .filter(|(_, d)| d.redelivered)
        .map(|(i, d)| (i, label(&d.data)))
        .collect();
    assert!(
        flagged.is_empty(),
        "{what}: {} of {} deliveries flagged redelivered although never delivered before; first: {:?}",
        flagged.len(),
        deliveries.len(),
        &flagged[..flagged.len().min(5)]
    );
}

fn delivery_labels(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| label(&d.data)).collect()
}

async fn consume(ch: &Channel, queue: &str, tag: &str, prefetch: u16) -> Consumer {
    timed(
        "basic.qos",
        ch.basic_qos(prefetch, BasicQosOptions::default()),
    )
    .await
    .unwrap();
    timed(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.consume on {queue}: {e}"))
}

/// The next delivery, within [`WAIT`].
async fn next(consumer: &mut Consumer, i: usize, n: usize) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for delivery {i} of {n}"))
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// Receives exactly `n` deliveries without acknowledging them.
async fn next_n(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    amqp::next_n_within(consumer, n, WAIT).await
}

/// Receives exactly `n` deliveries, acking each as it arrives.
async fn next_n_acked(ch: &Channel, consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let d = next(consumer, i, n).await;
        timed(
            "basic.ack",
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default()),
        )
        .await
        .unwrap();
        out.push(d);
    }
    out
}

/// Asserts `consumer` receives nothing more within [`QUIET`].
async fn assert_quiet(consumer: &mut Consumer, what: &str) {
    if let Ok(Some(Ok(d))) = tokio::time::timeout(QUIET, consumer.next()).await {
        panic!(
            "{what}: unexpected extra delivery {:?} (redelivered={})",
            label(&d.data),
            d.redelivered
        );
    }
}

/// Consumes `n` messages of `queue` on a channel of its own (manual ack,
/// `prefetch`), acks them, checks nothing more arrives, and closes the channel.
async fn consume_all(conn: &Connection, queue: &str, n: usize, prefetch: u16) -> Vec<Delivery> {
    let ch = channel(conn).await;
    let mut consumer = consume(&ch, queue, "drain", prefetch).await;
    let got = next_n_acked(&ch, &mut consumer, n).await;
    assert_quiet(&mut consumer, queue).await;
    timed("channel.close", ch.close(200, "bye".into()))
        .await
        .unwrap();
    got
}

/// basic.get until get-empty.
async fn get_all(ch: &Channel, queue: &str, no_ack: bool) -> Vec<BasicGetMessage> {
    amqp::get_all_messages(ch, queue, no_ack, WAIT).await
}

fn get_labels(got: &[BasicGetMessage]) -> Vec<String> {
    got.iter().map(|m| label(&m.delivery.data)).collect()
}

/// Publishes `messages` to a fresh durable queue on a paging broker and
/// checks that a consumer gets all of them in publish order, exactly once,
/// none flagged redelivered.
async fn round_trip_in_order(queue: &str, messages: Vec<Msg>, durable: bool) {
    let broker = paging_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, queue, durable).await;
    publish_confirmed(&ch, "", queue, &messages, false).await;
    assert_eq!(
        count(&conn, queue).await as usize,
        messages.len(),
        "passive declare counts paged-out messages too"
    );
    let got = consume_all(&conn, queue, messages.len(), 50).await;
    assert_same_sequence("consumed", &delivery_labels(&got), &labels(&messages));
    assert_none_redelivered("consumed", &got);
    assert_eq!(count(&conn, queue).await, 0, "queue empty after acking all");
}

// ---------------------------------------------------------------- 1-3, 11: order

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_backlog_is_counted_and_consumed_in_publish_order() {
    within(round_trip_in_order(
        "paging-persistent",
        messages("p", 2000, |_| persistent()),
        true,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_backlog_in_durable_queue_is_consumed_in_publish_order() {
    within(round_trip_in_order(
        "paging-transient",
        messages("t", 1000, |_| transient()),
        true,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_persistent_and_transient_backlog_keeps_publish_order() {
    // Runs of different lengths, so paging boundaries fall on both kinds.
    within(round_trip_in_order(
        "paging-mixed",
        messages("m", 1000, |i| {
            if i % 3 == 0 || i % 7 == 0 {
                transient()
            } else {
                persistent()
            }
        }),
        true,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_durable_queue_with_small_window_delivers_everything_in_order() {
    within(round_trip_in_order(
        "paging-non-durable",
        messages("n", 500, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        }),
        false,
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_larger_than_the_window_are_delivered_in_order() {
    // Every fifth message alone exceeds the window.
    let msgs: Vec<Msg> = (0..200)
        .map(|i| Msg {
            label: format!("big{i:05}"),
            props: if i % 2 == 0 {
                persistent()
            } else {
                transient()
            },
            size: if i % 5 == 0 { 4 * WINDOW } else { BODY },
        })
        .collect();
    within(round_trip_in_order("paging-big", msgs, true)).await
}

/// A window smaller than one message keeps nothing in memory; every message
/// must still be read back and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn window_smaller_than_one_message_still_delivers_everything() {
    within(async {
        let mut config = leveret::Config::default();
        config.storage.queue_memory_window = 100;
        let broker = TestBroker::start_with(config).await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-tiny-window";
        declare_durable(&ch, q).await;
        let msgs = messages("w", 200, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        });
        publish_confirmed(&ch, "", q, &msgs, false).await;
        assert_eq!(count(&conn, q).await, 200);
        let got = consume_all(&conn, q, 200, 10).await;
        assert_same_sequence("consumed", &delivery_labels(&got), &labels(&msgs));
    })
    .await
}

/// `queue_memory_window = 0` ("keep nothing in memory") must either be
/// rejected by configuration validation or work: messages are still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_window_is_rejected_or_still_delivers() {
    within(async {
        let mut config = leveret::Config::default();
        config.storage.queue_memory_window = 0;
        if config.validate().is_err() {
            return;
        }
        let broker = TestBroker::start_with(config).await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-zero-window";
        declare_durable(&ch, q).await;
        let msgs = messages("z", 20, |_| persistent());
        publish_confirmed(&ch, "", q, &msgs, false).await;
        assert_eq!(count(&conn, q).await, 20);
        let first = timed(
            "basic.get",
            ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap();
        assert!(
            first.is_some(),
            "basic.get on a queue holding 20 messages answered get-empty \
             (queue_memory_window = 0 accepted by validation, but paged-out messages are never read back)"
        );
        let mut got = vec![label(&first.unwrap().delivery.data)];
        got.extend(get_labels(&get_all(&ch, q, true).await));
        assert_same_sequence("basic.get", &got, &labels(&msgs));
    })
    .await
}

// ---------------------------------------------------------------- 4: basic.get

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_get_drains_paged_queue_in_order_with_decreasing_counts() {
    within(async {
        let broker = paging_broker().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-get";
        declare_durable(&ch, q).await;
        let msgs = messages("g", 1000, |i| {
            if i % 4 == 3 {
                transient()
            } else {
                persistent()
            }
        });
        publish_confirmed(&ch, "", q, &msgs, false).await;

        let get_ch = channel(&conn).await;
        let mut got = Vec::new();
        for i in 0..msgs.len() {
            let m = timed(
                "basic.get",
                get_ch.basic_get(q.into(), BasicGetOptions { no_ack: false }),
            )
            .await
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "get-empty after {i} of {} messages (expected {:?})",
                    msgs.len(),
                    msgs[i].label
                )
            });
            let remaining = (msgs.len() - i - 1) as u32;
            assert_eq!(
                m.message_count,
                remaining,
                "get-ok message_count for {:?}",
                label(&m.delivery.data)
            );
            assert!(!m.delivery.redelivered, "{:?}", label(&m.delivery.data));
            timed(
                "basic.ack",
                get_ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
            )
            .await
            .unwrap();
            got.push(label(&m.delivery.data));
        }
        assert_same_sequence("basic.get", &got, &labels(&msgs));
        let last = timed(
            "basic.get",
            get_ch.basic_get(q.into(), BasicGetOptions { no_ack: false }),
        )
        .await
        .unwrap();
        assert!(
            last.is_none(),
            "get-empty at the end, got {:?}",
            last.map(|m| label(&m.delivery.data))
        );
        assert_eq!(count(&conn, q).await, 0);
    })
    .await
}

// ---------------------------------------------------------------- 5: concurrent

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_attached_while_publishing_gets_everything_in_order() {
    within(async {
        let broker = paging_broker().await;
        let q = "paging-live";
        let msgs = messages("l", 1000, |i| {
            if i % 5 == 4 {
                transient()
            } else {
                persistent()
            }
        });
        let consumer_conn = broker.connect().await;
        let cch = channel(&consumer_conn).await;
        declare_durable(&cch, q).await;
        let mut consumer = consume(&cch, q, "slow", 10).await;

        let publisher_conn = broker.connect().await;
        let pch = confirm_channel(&publisher_conn).await;
        let to_publish = msgs.clone();
        let publisher = tokio::spawn(async move {
            // In chunks, so confirms flow while the consumer is working.
            for chunk in to_publish.chunks(250) {
                publish_confirmed(&pch, "", q, chunk, false).await;
            }
            publisher_conn
        });

        let mut got = Vec::with_capacity(msgs.len());
        for i in 0..msgs.len() {
            let d = next(&mut consumer, i, msgs.len()).await;
            if i % 25 == 0 {
                // Slower than the publisher.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            timed(
                "basic.ack",
                cch.basic_ack(d.delivery_tag, BasicAckOptions::default()),
            )
            .await
            .unwrap();
            got.push(d);
        }
        let publisher_conn = timed("publisher", publisher).await.expect("publisher task");
        assert_quiet(&mut consumer, "after all messages").await;
        assert_same_sequence("consumed", &delivery_labels(&got), &labels(&msgs));
        assert_none_redelivered("consumed", &got);
        assert_eq!(count(&publisher_conn, q).await, 0);
    })
    .await
}

/// A no-ack consumer with no prefetch limit takes messages as fast as the
/// socket allows, so deliveries outrun reads from disk and the channel's
/// outbox fills: everything still arrives once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_ack_consumer_drains_paged_queue_in_order() {
    within(async {
        let broker = paging_broker().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-no-ack";
        declare_durable(&ch, q).await;
        let msgs = messages("a", 1500, |i| {
            if i % 3 == 1 {
                transient()
            } else {
                persistent()
            }
        });
        publish_confirmed(&ch, "", q, &msgs, false).await;
        let cch = channel(&conn).await;
        let mut consumer = timed(
            "basic.consume",
            cch.basic_consume(
                q.into(),
                "no-ack".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        let got = next_n(&mut consumer, msgs.len()).await;
        assert_quiet(&mut consumer, "after all messages").await;
        assert_same_sequence("consumed", &delivery_labels(&got), &labels(&msgs));
        assert_none_redelivered("consumed", &got);
        assert_eq!(count(&conn, q).await, 0);
    })
    .await
}

// ---------------------------------------------------------------- 6: requeue

/// Consumes the first 100 of a paged queue, gives them back with `give_back`,
/// and checks they come first (redelivered, in order), then the rest.
async fn requeue_while_paged(queue: &str, close_channel: bool) {
    let broker = paging_broker().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_durable(&ch, queue).await;
    let msgs = messages("r", 1000, |i| {
        if i % 3 == 2 {
            transient()
        } else {
            persistent()
        }
    });
    publish_confirmed(&ch, "", queue, &msgs, false).await;

    let first_ch = channel(&conn).await;
    let mut first = consume(&first_ch, queue, "first", 100).await;
    let taken = next_n(&mut first, 100).await;
    assert_same_sequence("first 100", &delivery_labels(&taken), &labels(&msgs[..100]));
    assert_none_redelivered("first 100", &taken);
    assert_quiet(&mut first, "prefetch 100 holds back the rest").await;
    assert_eq!(count(&conn, queue).await, 900, "ready while 100 unacked");
    if close_channel {
        timed("channel.close", first_ch.close(200, "bye".into()))
            .await
            .unwrap();
    } else {
        timed(
            "basic.cancel",
            first_ch.basic_cancel("first".into(), BasicCancelOptions::default()),
        )
        .await
        .unwrap();
        timed(
            "basic.nack",
            first_ch.basic_nack(
                taken.last().unwrap().delivery_tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        count(&conn, queue).await,
        1000,
        "all back after the requeue"
    );

    let got = consume_all(&conn, queue, 1000, 50).await;
    assert_same_sequence("after requeue", &delivery_labels(&got), &labels(&msgs));
    let flags: Vec<bool> = got.iter().map(|d| d.redelivered).collect();
    let wrong: Vec<usize> = flags
        .iter()
        .enumerate()
        .filter(|&(i, &r)| r != (i < 100))
        .map(|(i, _)| i)
        .collect();
    assert!(
        wrong.is_empty(),
        "redelivered must be set on exactly the first 100; wrong at indices {:?}",
        &wrong[..wrong.len().min(10)]
    );
    assert_eq!(count(&conn, queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nack_requeue_while_paged_redelivers_first_in_order_then_the_rest() {
    within(requeue_while_paged("paging-requeue-nack", false)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn channel_close_while_paged_requeues_in_order_then_the_rest() {
    within(requeue_while_paged("paging-requeue-close", true)).await
}

// ---------------------------------------------------------------- 7: purge

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purge_of_paged_queue_counts_everything_and_leaves_nothing_behind() {
    within(async {
        let broker = paging_broker().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-purge";
        declare_durable(&ch, q).await;
        let old = messages("old", 1000, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        });
        publish_confirmed(&ch, "", q, &old, false).await;
        // Take some with basic.get so reads from disk are under way at the purge.
        let head = get_all_n(&ch, q, 20).await;
        assert_same_sequence("before purge", &head, &labels(&old[..20]));
        let purged = timed(
            "queue.purge",
            ch.queue_purge(q.into(), QueuePurgeOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!(
            purged, 980,
            "purge-ok counts in-memory and paged-out messages"
        );
        assert_eq!(count(&conn, q).await, 0, "empty after purge");
        let none = timed(
            "basic.get",
            ch.basic_get(q.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap();
        assert!(
            none.is_none(),
            "purged message came back: {:?}",
            none.map(|m| label(&m.delivery.data))
        );
        // Let any read of old messages already under way land.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(&conn, q).await, 0, "still empty after reads land");

        let new = messages("new", 500, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        });
        publish_confirmed(&ch, "", q, &new, false).await;
        assert_eq!(count(&conn, q).await, 500);
        let got = consume_all(&conn, q, 500, 50).await;
        assert_same_sequence("after purge", &delivery_labels(&got), &labels(&new));
        assert_none_redelivered("after purge", &got);
    })
    .await
}

/// basic.get (no-ack) exactly `n` messages.
async fn get_all_n(ch: &Channel, queue: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let m = timed(
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("get-empty at {i} of {n}"));
        out.push(label(&m.delivery.data));
    }
    out
}

// ---------------------------------------------------------------- 8: delete

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_of_paged_queue_counts_everything_and_redeclare_starts_empty() {
    within(async {
        let broker = paging_broker().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-delete";
        declare_durable(&ch, q).await;
        let old = messages("old", 1000, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        });
        publish_confirmed(&ch, "", q, &old, false).await;
        let head = get_all_n(&ch, q, 20).await;
        assert_same_sequence("before delete", &head, &labels(&old[..20]));
        let deleted = timed(
            "queue.delete",
            ch.queue_delete(q.into(), QueueDeleteOptions::default()),
        )
        .await
        .unwrap();
        assert_eq!(
            deleted, 980,
            "delete-ok counts in-memory and paged-out messages"
        );

        declare_durable(&ch, q).await;
        assert_eq!(count(&conn, q).await, 0, "redeclared queue starts empty");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(&conn, q).await, 0, "still empty after reads land");

        let new = messages("new", 500, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        });
        publish_confirmed(&ch, "", q, &new, false).await;
        assert_eq!(count(&conn, q).await, 500);
        let got = consume_all(&conn, q, 500, 50).await;
        assert_same_sequence("after redeclare", &delivery_labels(&got), &labels(&new));
        assert_none_redelivered("after redeclare", &got);
    })
    .await
}

// ---------------------------------------------------------------- 9: fanout

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fanout_to_three_paged_queues_delivers_all_in_order_independently() {
    within(async {
        let broker = paging_broker().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let x = "paging-fanout";
        timed(
            "exchange.declare",
            ch.exchange_declare(
                x.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        let queues = ["paging-fan-a", "paging-fan-b", "paging-fan-c"];
        for q in queues {
            declare_durable(&ch, q).await;
            timed(
                "queue.bind",
                ch.queue_bind(
                    q.into(),
                    x.into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
            .unwrap();
        }
        let msgs = messages("f", 1500, |_| persistent());
        publish_confirmed(&ch, x, "", &msgs, false).await;
        for q in queues {
            assert_eq!(count(&conn, q).await, 1500, "{q}");
        }

        // Drain a completely, then b, then c: acks on one must not touch the others.
        let got = consume_all(&conn, queues[0], 1500, 50).await;
        assert_same_sequence(queues[0], &delivery_labels(&got), &labels(&msgs));
        assert_none_redelivered(queues[0], &got);
        assert_eq!(count(&conn, queues[0]).await, 0);
        assert_eq!(
            count(&conn, queues[1]).await,
            1500,
            "{} untouched",
            queues[1]
        );
        assert_eq!(
            count(&conn, queues[2]).await,
            1500,
            "{} untouched",
            queues[2]
        );
        // Give the persister time to drop a's entries (and the shared bodies' references):
        // nothing a client sees tells when, and the others must be intact after it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for q in &queues[1..] {
            let got = consume_all(&conn, q, 1500, 50).await;
            assert_same_sequence(q, &delivery_labels(&got), &labels(&msgs));
            assert_none_redelivered(q, &got);
            assert_eq!(count(&conn, q).await, 0);
        }
    })
    .await
}

// ---------------------------------------------------------------- 10: confirms

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mandatory_confirmed_publishes_to_paged_queue_are_all_acked_none_returned() {
    within(async {
        let broker = paging_broker().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-confirms";
        declare_durable(&ch, q).await;
        let msgs = messages("c", 1000, |i| {
            if i % 4 == 0 {
                transient()
            } else {
                persistent()
            }
        });
        // publish_confirmed asserts one ack per publish, no nacks, no returns.
        publish_confirmed(&ch, "", q, &msgs, true).await;
        timed("wait_for_confirms", ch.wait_for_confirms())
            .await
            .expect("wait_for_confirms");
        assert_eq!(count(&conn, q).await, 1000);
        let got = get_all(&ch, q, true).await;
        assert_same_sequence("basic.get", &get_labels(&got), &labels(&msgs));
    })
    .await
}

// ---------------------------------------------------------------- memory watermark

/// Paged-out messages live on disk, not in memory: a backlog several times
/// the memory watermark in a durable queue must not block its publisher, and
/// draining it must leave the memory gauge where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paged_backlog_does_not_trip_the_memory_watermark() {
    within(async {
        let mut config = paging_config();
        config.limits.memory_high_watermark = 256 * 1024;
        let broker = TestBroker::start_with(config).await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let q = "paging-watermark";
        declare_durable(&ch, q).await;
        // About 1 MiB, four times the watermark.
        let msgs = messages("w", 1000, |i| {
            if i % 2 == 0 {
                persistent()
            } else {
                transient()
            }
        });
        publish_confirmed(&ch, "", q, &msgs, false).await;
        assert_eq!(count(&conn, q).await, 1000);
        let got = consume_all(&conn, q, 1000, 50).await;
        assert_same_sequence("consumed", &delivery_labels(&got), &labels(&msgs));

        // With the backlog drained, 200 KiB in a non-durable queue (kept in
        // memory) stays below the watermark: the publisher is not blocked.
        let mem_q = "paging-watermark-memory";
        declare(&ch, mem_q, false).await;
        let small = messages("s", 200, |_| transient());
        publish_confirmed(&ch, "", mem_q, &small, false).await;
        assert_eq!(count(&conn, mem_q).await, 200);
    })
    .await
}

// ---------------------------------------------------------------- 12: restarts

/// A data directory plus a config file with the small window.
struct PagingDir {
    data: TempDir,
    config: PathBuf,
}

impl PagingDir {
    fn new(name: &str) -> PagingDir {
        let data = TempDir::new(name);
        // The config file sits next to (not inside) the sled directory.
        let config = data.path().with_extension("toml");
        std::fs::write(
            &config,
            format!("[storage]\nqueue_memory_window = {WINDOW}\n"),
        )
        .expect("write config file");
        PagingDir { data, config }
    }

    fn data(&self) -> &Path {
        self.data.path()
    }

    fn start(&self) -> BrokerProcess {
        BrokerProcess::start_with_config(self.data(), &self.config)
    }
}

impl Drop for PagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paged_persistent_messages_survive_sigterm_in_order_and_paged_transient_ones_do_not() {
    within_for(RESTART_TEST_TIMEOUT, async {
        let dir = PagingDir::new("paging-restart-sigterm");
        let mut broker = dir.start();
        let q = "paging-restart";
        // 1500 persistent, 500 transient, interleaved.
        let msgs = messages("x", 2000, |i| {
            if i % 4 == 3 {
                transient()
            } else {
                persistent()
            }
        });
        let kept: Vec<Msg> = msgs
            .iter()
            .filter(|m| m.props.delivery_mode() == &Some(2))
            .cloned()
            .collect();
        assert_eq!(kept.len(), 1500);
        {
            let conn = connect_uri(&broker.uri()).await;
            let ch = confirm_channel(&conn).await;
            declare_durable(&ch, q).await;
            publish_confirmed(&ch, "", q, &msgs, false).await;
            assert_eq!(count(&conn, q).await, 2000);
            let _ = conn.close(200, "bye".into()).await;
        }
        broker.sigterm_and_wait();
        drop(broker);

        let broker = dir.start();
        let conn = connect_uri(&broker.uri()).await;
        assert_eq!(
            count(&conn, q).await,
            1500,
            "exactly the persistent messages are left after SIGTERM and restart"
        );
        let got = consume_all(&conn, q, 1500, 50).await;
        assert_same_sequence("after restart", &delivery_labels(&got), &labels(&kept));
        assert_none_redelivered("after restart", &got);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paged_persistent_messages_survive_kill_9_in_order() {
    within_for(RESTART_TEST_TIMEOUT, async {
        let dir = PagingDir::new("paging-restart-kill9");
        let mut broker = dir.start();
        let q = "paging-restart";
        let msgs = messages("k", 1500, |_| persistent());
        {
            let conn = connect_uri(&broker.uri()).await;
            let ch = confirm_channel(&conn).await;
            declare_durable(&ch, q).await;
            publish_confirmed(&ch, "", q, &msgs, false).await;
            assert_eq!(count(&conn, q).await, 1500);
        }
        broker.kill9();
        drop(broker);

        let broker = dir.start();
        let conn = connect_uri(&broker.uri()).await;
        assert_eq!(count(&conn, q).await, 1500, "after kill -9 and restart");
        let ch = channel(&conn).await;
        let got = get_all(&ch, q, true).await;
        assert_same_sequence("after restart", &get_labels(&got), &labels(&msgs));
        let flagged = got.iter().filter(|m| m.delivery.redelivered).count();
        assert_eq!(flagged, 0, "never-delivered messages flagged redelivered");
    })
    .await
}

/// A queue drained before a restart and refilled after it: the new messages
/// were never delivered, so none may carry the redelivered flag, whether it
/// is read back from disk while the broker runs or after another restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_published_after_restart_to_a_drained_queue_are_not_flagged_redelivered() {
    within_for(RESTART_TEST_TIMEOUT, async {
        let dir = PagingDir::new("paging-restart-refill");
        let mut broker = dir.start();
        let q = "paging-refill";
        let before = messages("a", 500, |_| persistent());
        {
            let conn = connect_uri(&broker.uri()).await;
            let ch = confirm_channel(&conn).await;
            declare_durable(&ch, q).await;
            publish_confirmed(&ch, "", q, &before, false).await;
            let got = consume_all(&conn, q, 500, 50).await;
            assert_same_sequence("before restart", &delivery_labels(&got), &labels(&before));
            assert_eq!(count(&conn, q).await, 0);
            let _ = conn.close(200, "bye".into()).await;
        }
        broker.sigterm_and_wait();
        drop(broker);

        let mut broker = dir.start();
        let after = messages("b", 500, |_| persistent());
        {
            let conn = connect_uri(&broker.uri()).await;
            let ch = confirm_channel(&conn).await;
            assert_eq!(count(&conn, q).await, 0, "drained before the restart");
            publish_confirmed(&ch, "", q, &after, false).await;
            // Peek at them (consume without acking, then close the channel).
            let peek_ch = channel(&conn).await;
            let mut consumer = consume(&peek_ch, q, "peek", 0).await;
            let got = next_n(&mut consumer, 500).await;
            assert_same_sequence("after restart", &delivery_labels(&got), &labels(&after));
            assert_none_redelivered("first delivery after the restart", &got);
            // Give them back: now they really were delivered once.
            let _ = timed("channel.close", peek_ch.close(200, "bye".into())).await;
            assert_eq!(count(&conn, q).await, 500);
            let _ = conn.close(200, "bye".into()).await;
        }
        broker.sigterm_and_wait();
        drop(broker);

        let broker = dir.start();
        let conn = connect_uri(&broker.uri()).await;
        assert_eq!(count(&conn, q).await, 500, "after the second restart");
        let got = consume_all(&conn, q, 500, 50).await;
        assert_same_sequence(
            "after second restart",
            &delivery_labels(&got),
            &labels(&after),
        );
        assert!(
            got.iter().all(|d| d.redelivered),
            "delivered (and requeued) before the stop: redelivered after it"
        );
    })
    .await
}

/// Deliveries from a paged queue still unacked at a clean stop come back
/// first and flagged redelivered; the paged-out rest follows, not flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unacked_deliveries_of_a_paged_queue_come_back_redelivered_after_sigterm() {
    within_for(RESTART_TEST_TIMEOUT, async {
        let dir = PagingDir::new("paging-restart-unacked");
        let mut broker = dir.start();
        let q = "paging-unacked";
        let msgs = messages("u", 600, |_| persistent());
        let conn = connect_uri(&broker.uri()).await;
        let ch = confirm_channel(&conn).await;
        declare_durable(&ch, q).await;
        publish_confirmed(&ch, "", q, &msgs, false).await;
        let cch = channel(&conn).await;
        let mut consumer = consume(&cch, q, "holder", 100).await;
        let held = next_n(&mut consumer, 100).await;
        assert_same_sequence("held", &delivery_labels(&held), &labels(&msgs[..100]));
        assert_quiet(&mut consumer, "prefetch 100").await;

        // Stop with the 100 deliveries unacked.
        broker.sigterm_and_wait();
        drop((consumer, cch, ch, conn, broker));

        let broker = dir.start();
        let conn = connect_uri(&broker.uri()).await;
        assert_eq!(count(&conn, q).await, 600);
        let got = consume_all(&conn, q, 600, 50).await;
        assert_same_sequence("after restart", &delivery_labels(&got), &labels(&msgs));
        let wrong: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|&(i, d)| d.redelivered != (i < 100))
            .map(|(i, _)| i)
            .collect();
        assert!(
            wrong.is_empty(),
            "redelivered must be set on exactly the 100 unacked at the stop; wrong at indices {:?}",
            &wrong[..wrong.len().min(10)]
        );
    })
    .await
}

/// Purge and delete of paged queues reach the disk: after a restart neither
/// the purged nor the deleted backlog comes back, only what was published
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purged_and_deleted_paged_backlogs_stay_gone_after_sigterm() {
    within_for(RESTART_TEST_TIMEOUT, async {
        let dir = PagingDir::new("paging-restart-purge-delete");
        let mut broker = dir.start();
        let (purged_q, deleted_q) = ("paging-purged", "paging-deleted");
        let new_p = messages("np", 300, |_| persistent());
        let new_d = messages("nd", 300, |_| persistent());
        {
            let conn = connect_uri(&broker.uri()).await;
            let ch = confirm_channel(&conn).await;
            for q in [purged_q, deleted_q] {
                declare_durable(&ch, q).await;
                publish_confirmed(&ch, "", q, &messages("old", 600, |_| persistent()), false).await;
                // Start reads from disk, so some are under way at the purge/delete.
                get_all_n(&ch, q, 10).await;
            }
            let purged = timed(
                "queue.purge",
                ch.queue_purge(purged_q.into(), QueuePurgeOptions::default()),
            )
            .await
            .unwrap();
            assert_eq!(purged, 590);
            let deleted = timed(
                "queue.delete",
                ch.queue_delete(deleted_q.into(), QueueDeleteOptions::default()),
            )
            .await
            .unwrap();
            assert_eq!(deleted, 590);
            declare_durable(&ch, deleted_q).await;
            publish_confirmed(&ch, "", purged_q, &new_p, false).await;
            publish_confirmed(&ch, "", deleted_q, &new_d, false).await;
            assert_eq!(count(&conn, purged_q).await, 300);
            assert_eq!(count(&conn, deleted_q).await, 300);
            let _ = conn.close(200, "bye".into()).await;
        }
        broker.sigterm_and_wait();
        drop(broker);

        let broker = dir.start();
        let conn = connect_uri(&broker.uri()).await;
        for (q, want) in [(purged_q, &new_p), (deleted_q, &new_d)] {
            assert_eq!(count(&conn, q).await, 300, "{q} after restart");
            let got = consume_all(&conn, q, 300, 50).await;
            assert_same_sequence(q, &delivery_labels(&got), &labels(want));
            assert_none_redelivered(q, &got);
        }
    })
    .await
}
