//! Publisher confirms (confirm.select) and transactions (tx.*) as RabbitMQ implements
//! them: acks for every publish, basic.return before the ack of an unroutable mandatory
//! publish, publishes and acks held back until tx.commit, discarded by tx.rollback, and
//! the errors for mixing the two modes.
//!
//! Every test here passes against RabbitMQ 3.10 (`LEVERET_TEST_URI=...`).

use crate::common;

use common::amqp::{
    amqp_error, declare_unique, exclusive, get_all_bodies, open_channel, ready_count, wait_ready,
    Closes, WAIT,
};
use common::{unique, TestBroker};
use lapin::{options::*, types::FieldTable, BasicProperties, Channel, Confirmation, Connection};
use std::time::Duration;
use tokio::time::timeout;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Declares a fresh exclusive queue (it goes away with the connection).
async fn declare(ch: &Channel) -> String {
    declare_unique(ch, "ctx", exclusive(), FieldTable::default()).await
}

/// Asserts the queue stays empty for a little while (held-back publishes must not leak).
/// The sleeps are the subject: nothing may show up during them.
async fn assert_stays_empty(ch: &Channel, queue: &str) {
    for _ in 0..5 {
        assert_eq!(ready_count(ch, queue).await, 0, "{queue} should be empty");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

async fn publish_to(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &str,
) -> lapin::PublisherConfirm {
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions {
            mandatory,
            ..Default::default()
        },
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("basic.publish")
}

async fn publish(ch: &Channel, queue: &str, body: &str) -> lapin::PublisherConfirm {
    publish_to(ch, "", queue, false, body).await
}

async fn confirmation(confirm: lapin::PublisherConfirm) -> Confirmation {
    timeout(WAIT, confirm)
        .await
        .expect("timed out waiting for a publisher confirm")
        .expect("publisher confirm failed")
}

/// Runs a synchronous method that the broker must refuse with a channel error; returns
/// the (reply code, reply text) and checks that only the channel was closed.
async fn channel_error<T: std::fmt::Debug>(
    conn: &Connection,
    ch: &Channel,
    method: impl std::future::Future<Output = lapin::Result<T>>,
) -> (u16, String) {
    let err = timeout(WAIT, method)
        .await
        .expect("timed out")
        .expect_err("the broker should refuse this");
    assert!(
        err.is_amqp_soft_error(),
        "expected a channel error: {err:?}"
    );
    assert!(!ch.status().connected(), "channel still open");
    assert!(conn.status().connected(), "connection should survive");
    amqp_error(&err).unwrap()
}

// ---------------------------------------------------------------------------
// publisher confirms
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_after_confirm_select_is_acked() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let c = confirmation(publish(&ch, &q, "hello").await).await;
    assert_eq!(c, Confirmation::Ack(None));
    // A confirm means the queue has the message.
    assert_eq!(ready_count(&ch, &q).await, 1);
}

#[tokio::test]
async fn without_confirm_select_nothing_is_confirmed() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch).await;
    let c = confirmation(publish(&ch, &q, "hello").await).await;
    assert_eq!(c, Confirmation::NotRequested);
}

#[tokio::test]
async fn confirm_select_twice_is_fine() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(confirmation(publish(&ch, &q, "x").await).await.is_ack());
}

#[tokio::test]
async fn many_publishes_are_all_confirmed() {
    const N: usize = 500;
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(N);
    for i in 0..N {
        confirms.push(publish(&ch, &q, &format!("m{i}")).await);
    }
    for c in confirms {
        assert_eq!(confirmation(c).await, Confirmation::Ack(None));
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    assert_eq!(ready_count(&ch, &q).await as usize, N);
}

#[tokio::test]
async fn wait_for_confirms_covers_dropped_confirms() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..50 {
        drop(publish(&ch, &q, &format!("m{i}")).await);
    }
    let returned = timeout(WAIT, ch.wait_for_confirms())
        .await
        .expect("timed out")
        .unwrap();
    assert!(returned.is_empty());
    assert_eq!(ready_count(&ch, &q).await, 50);
}

#[tokio::test]
async fn unroutable_mandatory_publish_is_returned_before_its_ack() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let missing = unique("no-such-queue");
    let c = confirmation(publish_to(&ch, "", &missing, true, "lost").await).await;
    // lapin attaches a basic.return to the confirmation only if it arrived before the ack.
    assert!(c.is_ack(), "unroutable messages are acked, not nacked");
    let returned = c.take_message().expect("basic.return before basic.ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.routing_key.as_str(), missing);
    assert_eq!(returned.delivery.data, b"lost");
}

#[tokio::test]
async fn unroutable_non_mandatory_publish_is_simply_acked() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let missing = unique("no-such-queue");
    let c = confirmation(publish_to(&ch, "", &missing, false, "dropped").await).await;
    assert_eq!(c, Confirmation::Ack(None));
}

#[tokio::test]
async fn publish_to_missing_exchange_under_confirms_closes_channel_404() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ex = unique("no-such-exchange");
    let mut closes = Closes::watch(&conn);
    let confirm = publish_to(&ch, &ex, "rk", false, "x").await;
    let expected = (404, format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"));
    assert_eq!(closes.channel(&conn, &ch).await, expected);
    // The pending confirm fails with the channel's close reason (no ack, no nack).
    let err = timeout(WAIT, confirm)
        .await
        .expect("timed out")
        .expect_err("confirm must fail");
    assert_eq!(amqp_error(&err), Some(expected));
}

// ---------------------------------------------------------------------------
// transactions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tx_publishes_are_invisible_until_commit() {
    let broker = TestBroker::start().await;
    let (conn, observer) = open_channel(&broker).await;
    let q = declare(&observer).await;
    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    for i in 0..3 {
        publish(&ch, &q, &format!("m{i}")).await;
    }
    assert_stays_empty(&observer, &q).await;
    ch.tx_commit().await.unwrap();
    wait_ready(&observer, &q, 3).await;

    // The channel stays transactional after a commit.
    publish(&ch, &q, "m3").await;
    assert_stays_empty_beyond(&observer, &q, 3).await;
    ch.tx_commit().await.unwrap();
    wait_ready(&observer, &q, 4).await;
    assert_eq!(
        get_all_bodies(&observer, &q).await,
        ["m0", "m1", "m2", "m3"]
    );
}

/// Like [`assert_stays_empty`], for a queue that already holds `n` messages.
async fn assert_stays_empty_beyond(ch: &Channel, queue: &str, n: u32) {
    for _ in 0..5 {
        assert_eq!(ready_count(ch, queue).await, n);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test]
async fn tx_rollback_discards_publishes() {
    let broker = TestBroker::start().await;
    let (conn, observer) = open_channel(&broker).await;
    let q = declare(&observer).await;
    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    publish(&ch, &q, "rolled-back-1").await;
    publish(&ch, &q, "rolled-back-2").await;
    ch.tx_rollback().await.unwrap();
    publish(&ch, &q, "kept").await;
    ch.tx_commit().await.unwrap();
    wait_ready(&observer, &q, 1).await;
    assert_eq!(get_all_bodies(&observer, &q).await, ["kept"]);
}

#[tokio::test]
async fn tx_uncommitted_publishes_are_discarded_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let (conn, observer) = open_channel(&broker).await;
    let q = declare(&observer).await;
    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    publish(&ch, &q, "never").await;
    ch.close(200, "bye".into()).await.unwrap();
    assert_stays_empty(&observer, &q).await;
}

#[tokio::test]
async fn tx_acks_take_effect_only_at_commit() {
    let broker = TestBroker::start().await;
    let (conn, observer) = open_channel(&broker).await;
    let q = declare(&observer).await;
    for i in 0..3 {
        publish(&observer, &q, &format!("m{i}")).await;
    }
    wait_ready(&observer, &q, 3).await;

    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..3 {
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .expect("get-ok");
        tags.push(m.delivery.delivery_tag);
    }
    // m0: acked and committed. m1: acked, then rolled back (stays unacked).
    // m2: acked, never committed.
    ch.basic_ack(tags[0], BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_commit().await.unwrap();
    ch.basic_ack(tags[1], BasicAckOptions::default())
        .await
        .unwrap();
    ch.tx_rollback().await.unwrap();
    ch.basic_ack(tags[2], BasicAckOptions::default())
        .await
        .unwrap();
    ch.close(200, "bye".into()).await.unwrap();

    // Closing the channel requeues everything whose ack was not committed.
    wait_ready(&observer, &q, 2).await;
    assert_eq!(get_all_bodies(&observer, &q).await, ["m1", "m2"]);
}

#[tokio::test]
async fn tx_commit_without_tx_select_is_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    assert_eq!(
        channel_error(&conn, &ch, ch.tx_commit()).await,
        (
            406,
            "PRECONDITION_FAILED - channel is not transactional".into()
        )
    );
}

#[tokio::test]
async fn tx_rollback_without_tx_select_is_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    assert_eq!(
        channel_error(&conn, &ch, ch.tx_rollback()).await,
        (
            406,
            "PRECONDITION_FAILED - channel is not transactional".into()
        )
    );
}

#[tokio::test]
async fn tx_select_twice_is_fine() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.tx_select().await.unwrap();
    ch.tx_select().await.unwrap();
    ch.tx_commit().await.unwrap();
}

#[tokio::test]
async fn confirm_select_on_a_tx_channel_is_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    ch.tx_select().await.unwrap();
    assert_eq!(
        channel_error(
            &conn,
            &ch,
            ch.confirm_select(ConfirmSelectOptions::default())
        )
        .await,
        (
            406,
            "PRECONDITION_FAILED - cannot switch from tx to confirm mode".into()
        )
    );
}

#[tokio::test]
async fn tx_select_on_a_confirm_channel_is_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        channel_error(&conn, &ch, ch.tx_select()).await,
        (
            406,
            "PRECONDITION_FAILED - cannot switch from confirm to tx mode".into()
        )
    );
}

/// A transaction one of whose messages a queue refused (x-overflow
/// reject-publish) failed: RabbitMQ's channel marks it failed when the
/// queue rejects, and tx.commit closes the channel with 406 "partial tx
/// completion". The message the queue took stays.
#[tokio::test]
async fn tx_commit_after_a_queue_refused_a_message_is_406_partial_tx_completion() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = unique("ctx-full");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue.declare");
    ch.tx_select().await.unwrap();
    publish(&ch, &q, "m1").await;
    publish(&ch, &q, "m2").await;
    assert_eq!(
        channel_error(&conn, &ch, ch.tx_commit()).await,
        (406, "PRECONDITION_FAILED - partial tx completion".into())
    );
    let observer = conn.create_channel().await.unwrap();
    assert_eq!(get_all_bodies(&observer, &q).await, ["m1"]);
    observer
        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
