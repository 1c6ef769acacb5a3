//! The `basic` class as RabbitMQ implements it: publish/consume round trips,
//! returns, consumer tags, exclusivity, get, ack/nack/reject, requeue order,
//! recover, prefetch (per consumer and per channel) and direct reply-to.
//!
//! Every test here passes against RabbitMQ 3.10 (`LEVERET_TEST_URI=...`).

use crate::common;

use common::amqp::{
    amqp_error, assert_quiet, consume, consume_exactly, declare_unique, next, next_n, open_channel,
    publish_props, ready_count, text, texts, wait_ready, Closes, QUIET, WAIT,
};
use common::{unique, wait_for, TestBroker};
use futures_lite::StreamExt;
use lapin::{
    message::BasicGetMessage,
    options::*,
    types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString},
    BasicProperties, Channel, Consumer,
};
use tokio::time::timeout;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Declares a fresh queue. Exclusive queues vanish with their connection; the others are
/// deleted by the tests that use them.
async fn declare(ch: &Channel, exclusive: bool) -> String {
    let options = QueueDeclareOptions {
        exclusive,
        ..Default::default()
    };
    declare_unique(ch, "basic", options, FieldTable::default()).await
}

/// Publishes `body` through the default exchange, without waiting for a confirm.
async fn publish(ch: &Channel, routing_key: &str, body: &str) {
    publish_props(
        ch,
        "",
        routing_key,
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
}

/// Publishes "m0".."m{n-1}".
async fn fill_no_wait(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, queue, &format!("m{i}")).await;
    }
}

/// Publishes "m0".."m{n-1}" and waits until the queue holds them all.
async fn fill(ch: &Channel, queue: &str, n: usize) {
    fill_no_wait(ch, queue, n).await;
    wait_ready(ch, queue, n as u32).await;
}

/// Counts deliveries until none arrives for a short while.
async fn count_until_quiet(consumer: &mut Consumer) -> usize {
    let mut n = 0;
    while let Ok(item) = timeout(QUIET, consumer.next()).await {
        item.expect("consumer stream ended")
            .expect("delivery error");
        n += 1;
    }
    n
}

async fn get(ch: &Channel, queue: &str) -> Option<BasicGetMessage> {
    timeout(
        WAIT,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get timed out")
    .expect("basic.get")
}

/// basic.get, retried until a message is there (requeues and publishes reach a RabbitMQ
/// queue asynchronously).
async fn get_eventually(ch: &Channel, queue: &str) -> BasicGetMessage {
    wait_for(&format!("a message in {queue}"), WAIT, || async move {
        get(ch, queue).await.ok_or("empty")
    })
    .await
}

fn bodies(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

async fn delete_queue(ch: &Channel, queue: &str) {
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

// ---------------------------------------------------------------------------
// publish / consume
// ---------------------------------------------------------------------------

#[tokio::test]
async fn round_trip_preserves_body_and_every_property() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;

    let mut nested = FieldTable::default();
    nested.insert("inner-str".into(), AMQPValue::LongString("deep".into()));
    let mut deeper = FieldTable::default();
    deeper.insert("n".into(), AMQPValue::LongLongInt(-7));
    nested.insert("inner-table".into(), AMQPValue::FieldTable(deeper));

    let array = FieldArray::from(vec![
        AMQPValue::LongInt(1),
        AMQPValue::LongString("two".into()),
        AMQPValue::Boolean(false),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
        AMQPValue::FieldTable(nested.clone()),
    ]);

    let mut headers = FieldTable::default();
    headers.insert("str".into(), AMQPValue::LongString("hello".into()));
    headers.insert(
        "bin-str".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 1, 255, 0])),
    );
    headers.insert("table".into(), AMQPValue::FieldTable(nested));
    headers.insert("array".into(), AMQPValue::FieldArray(array));
    headers.insert("ts".into(), AMQPValue::Timestamp(1_700_000_000));
    headers.insert(
        "dec".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    headers.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 254, 255])),
    );
    headers.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    headers.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    headers.insert("i16".into(), AMQPValue::ShortInt(-16_000));
    headers.insert("u16".into(), AMQPValue::ShortUInt(60_000));
    headers.insert("i32".into(), AMQPValue::LongInt(-2_000_000_000));
    headers.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    headers.insert("i64".into(), AMQPValue::LongLongInt(i64::MIN));
    headers.insert("f32".into(), AMQPValue::Float(1.5));
    headers.insert("f64".into(), AMQPValue::Double(-2.25e100));
    headers.insert("true".into(), AMQPValue::Boolean(true));
    headers.insert("false".into(), AMQPValue::Boolean(false));
    headers.insert("void".into(), AMQPValue::Void);

    let props = BasicProperties::default()
        .with_content_type("application/x-test".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("some-reply-queue".into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_600_000_000)
        .with_type("test.type".into())
        .with_user_id("guest".into())
        .with_app_id("leveret-tests".into());
    let body: Vec<u8> = (0..=255u8).collect();

    let mut consumer = consume(&ch, &q, "", false).await;
    publish_props(&ch, "", &q, &body, props.clone()).await;
    let d = next(&mut consumer).await;

    assert_eq!(d.data, body);
    assert_eq!(d.properties, props);
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), q);
    assert!(!d.redelivered);
    assert_eq!(d.delivery_tag, 1);
}

#[tokio::test]
async fn publish_with_no_properties_arrives_with_no_properties() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let mut consumer = consume(&ch, &q, "", true).await;
    publish(&ch, &q, "plain").await;
    let d = next(&mut consumer).await;
    assert_eq!(text(&d), "plain");
    assert_eq!(d.properties, BasicProperties::default());
}

#[tokio::test]
async fn body_larger_than_frame_max_is_intact() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    assert!(conn.configuration().frame_max() < 1 << 20);
    let q = declare(&ch, true).await;
    let body: Vec<u8> = (0..(1usize << 20) + 7).map(|i| (i % 251) as u8).collect();

    let mut consumer = consume(&ch, &q, "", true).await;
    publish_props(&ch, "", &q, &body, BasicProperties::default()).await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data.len(), body.len());
    assert!(d.data == body, "large body corrupted");

    // basic.get carries multi-frame bodies too.
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish_props(&ch, "", &q, &body, BasicProperties::default()).await;
    let got = get_eventually(&ch, &q).await;
    assert!(
        got.delivery.data == body,
        "large body corrupted via basic.get"
    );
}

#[tokio::test]
async fn empty_body_is_delivered_empty() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let props = BasicProperties::default().with_message_id("empty".into());
    let mut consumer = consume(&ch, &q, "", true).await;
    publish_props(&ch, "", &q, b"", props.clone()).await;
    let d = next(&mut consumer).await;
    assert!(d.data.is_empty());
    assert_eq!(d.properties, props);

    publish_props(&ch, "", &q, b"", props.clone()).await;
    let d = next(&mut consumer).await;
    assert!(d.data.is_empty());
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_with_312_no_route() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let missing = unique("no-such-queue");
    let props = BasicProperties::default().with_message_id("ret-1".into());
    ch.basic_publish(
        "".into(),
        missing.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"lost",
        props.clone(),
    )
    .await
    .unwrap();
    // basic.return precedes the reply to any later synchronous method on the channel.
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    let returned = ch.wait_for_confirms().await.unwrap();
    assert_eq!(returned.len(), 1);
    let r = &returned[0];
    assert_eq!(r.reply_code, 312);
    assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(r.delivery.exchange.as_str(), "");
    assert_eq!(r.delivery.routing_key.as_str(), missing);
    assert_eq!(r.delivery.data, b"lost");
    assert_eq!(r.delivery.properties, props);

    // Not mandatory: silently dropped, no return.
    publish(&ch, &missing, "dropped").await;
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
}

#[tokio::test]
async fn immediate_publish_closes_connection_540_not_implemented() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let mut closes = Closes::watch(&conn);
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions {
            immediate: true,
            ..Default::default()
        },
        b"now",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    // A connection-level error: the whole connection is gone.
    assert_eq!(
        closes.connection(&conn).await,
        (540, "NOT_IMPLEMENTED - immediate=true".into())
    );
    assert!(conn.create_channel().await.is_err());
}

// ---------------------------------------------------------------------------
// consumers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deliveries_round_robin_across_two_consumers() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let ch_a = conn.create_channel().await.unwrap();
    let ch_b = conn.create_channel().await.unwrap();
    let mut a = consume(&ch_a, &q, "a", true).await;
    let mut b = consume(&ch_b, &q, "b", true).await;
    fill_no_wait(&ch, &q, 10).await;

    let got_a = texts(&next_n(&mut a, 5).await);
    let got_b = texts(&next_n(&mut b, 5).await);
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;
    let evens: Vec<String> = (0..10).step_by(2).map(|i| format!("m{i}")).collect();
    let odds: Vec<String> = (1..10).step_by(2).map(|i| format!("m{i}")).collect();
    assert!(
        (got_a == evens && got_b == odds) || (got_a == odds && got_b == evens),
        "not round-robin: a={got_a:?} b={got_b:?}"
    );
}

#[tokio::test]
async fn messages_are_delivered_in_fifo_order_with_increasing_tags() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 50).await;
    let mut consumer = consume(&ch, &q, "", false).await;
    let ds = next_n(&mut consumer, 50).await;
    assert_eq!(texts(&ds), bodies(0..50));
    let tags: Vec<u64> = ds.iter().map(|d| d.delivery_tag).collect();
    assert_eq!(tags, (1..=50).collect::<Vec<u64>>());
}

#[tokio::test]
async fn empty_consumer_tag_is_replaced_by_server_generated_ctag() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let c1 = consume(&ch, &q, "", false).await;
    let c2 = consume(&ch, &q, "", false).await;
    let (t1, t2) = (c1.tag().to_string(), c2.tag().to_string());
    assert!(t1.starts_with("amq.ctag-"), "{t1}");
    assert!(t2.starts_with("amq.ctag-"), "{t2}");
    assert!(t1.len() > "amq.ctag-".len());
    assert_ne!(t1, t2);

    // A client-chosen tag is echoed back unchanged.
    let c3 = consume(&ch, &q, "my-tag", false).await;
    assert_eq!(c3.tag().as_str(), "my-tag");
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_is_530_not_allowed_connection_error() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let _c = consume(&ch, &q, "dup", false).await;
    let err = timeout(
        WAIT,
        ch.basic_consume(
            q.as_str().into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("timed out")
    .expect_err("second consumer with the same tag must fail");
    assert_eq!(
        amqp_error(&err),
        Some((
            530,
            "NOT_ALLOWED - attempt to reuse consumer tag 'dup'".into()
        ))
    );
    assert!(err.is_amqp_hard_error(), "must be a connection error");
    assert!(conn.create_channel().await.is_err());
}

#[tokio::test]
async fn same_consumer_tag_on_different_channels_is_fine() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let ch2 = conn.create_channel().await.unwrap();
    let _a = consume(&ch, &q, "shared-tag", false).await;
    let _b = consume(&ch2, &q, "shared-tag", false).await;
}

#[tokio::test]
async fn exclusive_consumer_locks_out_other_consumers_403() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let _excl = ch
        .basic_consume(
            q.as_str().into(),
            "excl".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    let ch2 = conn.create_channel().await.unwrap();
    let err = ch2
        .basic_consume(
            q.as_str().into(),
            "second".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("queue is in exclusive use");
    assert_eq!(
        amqp_error(&err),
        Some((
            403,
            format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
        ))
    );
    assert!(err.is_amqp_soft_error(), "channel error only");
    // The connection and the exclusive consumer's channel survive.
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test]
async fn exclusive_consume_on_queue_with_consumers_is_403() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let _plain = consume(&ch, &q, "plain", false).await;
    let ch2 = conn.create_channel().await.unwrap();
    let err = ch2
        .basic_consume(
            q.as_str().into(),
            "excl".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("queue already has consumers");
    assert_eq!(
        amqp_error(&err),
        Some((
            403,
            format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
        ))
    );
}

#[tokio::test]
async fn basic_cancel_stops_deliveries() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let mut consumer = consume(&ch, &q, "to-cancel", true).await;
    publish(&ch, &q, "before").await;
    assert_eq!(text(&next(&mut consumer).await), "before");

    ch.basic_cancel("to-cancel".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    // The stream ends after the cancel.
    let end = timeout(WAIT, consumer.next())
        .await
        .expect("stream must end");
    assert!(end.is_none(), "{end:?}");

    publish(&ch, &q, "after").await;
    wait_ready(&ch, &q, 1).await;
    let m = get(&ch, &q).await.expect("message left for basic.get");
    assert_eq!(text(&m.delivery), "after");
}

#[tokio::test]
async fn cancel_of_unknown_consumer_tag_is_ok() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.basic_cancel("never-existed".into(), BasicCancelOptions::default())
        .await
        .expect("RabbitMQ replies cancel-ok for unknown tags");
    ch.basic_qos(0, BasicQosOptions::default()).await.unwrap();
}

#[tokio::test]
async fn no_ack_consumer_gets_everything_regardless_of_prefetch() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 20).await;
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&ch, &q, "", true).await;
    let ds = next_n(&mut consumer, 20).await;
    assert_eq!(texts(&ds), bodies(0..20));
    assert_eq!(ready_count(&ch, &q).await, 0);
    // Nothing was left unacked: closing the channel requeues nothing.
    ch.close(200, "bye".into()).await.unwrap();
}

// ---------------------------------------------------------------------------
// basic.get
// ---------------------------------------------------------------------------

#[tokio::test]
async fn basic_get_reports_remaining_count_and_get_empty() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    assert!(get(&ch, &q).await.is_none(), "get-empty on an empty queue");

    fill(&ch, &q, 3).await;
    for (i, remaining) in [2u32, 1, 0].into_iter().enumerate() {
        let m = get(&ch, &q).await.expect("get-ok");
        assert_eq!(text(&m.delivery), format!("m{i}"));
        assert_eq!(m.message_count, remaining);
        assert_eq!(m.delivery.delivery_tag, i as u64 + 1);
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.routing_key.as_str(), q);
    }
    assert!(get(&ch, &q).await.is_none());

    // no_ack get removes the message for good.
    publish(&ch, &q, "auto").await;
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("get-ok");
    assert_eq!(text(&m.delivery), "auto");
}

// ---------------------------------------------------------------------------
// acknowledgements
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ack_single_removes_only_that_message() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 2).await;
    let c = conn.create_channel().await.unwrap();
    let mut consumer = consume(&c, &q, "", false).await;
    let ds = next_n(&mut consumer, 2).await;
    c.basic_ack(ds[1].delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    c.close(200, "bye".into()).await.unwrap();

    // Only the unacked m0 comes back.
    let left = consume_exactly(&ch, &q, 1).await;
    assert_eq!(texts(&left), vec!["m0"]);
    assert!(left[0].redelivered);
}

#[tokio::test]
async fn ack_multiple_acks_everything_up_to_the_tag() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 5).await;
    let c = conn.create_channel().await.unwrap();
    let mut consumer = consume(&c, &q, "", false).await;
    let ds = next_n(&mut consumer, 5).await;
    c.basic_ack(ds[2].delivery_tag, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    c.close(200, "bye".into()).await.unwrap();

    assert_eq!(texts(&consume_exactly(&ch, &q, 2).await), vec!["m3", "m4"]);
}

#[tokio::test]
async fn ack_multiple_with_tag_zero_acks_all_outstanding() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 4).await;
    let c = conn.create_channel().await.unwrap();
    let mut consumer = consume(&c, &q, "", false).await;
    next_n(&mut consumer, 4).await;
    c.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    c.close(200, "bye".into()).await.unwrap();
    consume_exactly(&ch, &q, 0).await;
}

#[tokio::test]
async fn nack_multiple_requeue_redelivers_in_order_with_redelivered_flag() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 3).await;
    let mut consumer = consume(&ch, &q, "", false).await;
    let first = next_n(&mut consumer, 3).await;
    assert!(first.iter().all(|d| !d.redelivered));

    ch.basic_nack(
        first[2].delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    let again = next_n(&mut consumer, 3).await;
    assert_eq!(texts(&again), bodies(0..3));
    assert!(again.iter().all(|d| d.redelivered));
    // Redeliveries get fresh delivery tags on the channel.
    let tags: Vec<u64> = again.iter().map(|d| d.delivery_tag).collect();
    assert_eq!(tags, vec![4, 5, 6]);
}

#[tokio::test]
async fn nack_without_requeue_drops() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 2).await;
    let _m0 = get(&ch, &q).await.unwrap();
    let m1 = get(&ch, &q).await.unwrap();
    // multiple=true covers m0 too.
    ch.basic_nack(
        m1.delivery.delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    )
    .await
    .unwrap();
    ch.close(200, "bye".into()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    consume_exactly(&ch, &q, 0).await; // both were dropped
}

#[tokio::test]
async fn reject_without_requeue_drops_and_with_requeue_redelivers() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 2).await;

    let m0 = get(&ch, &q).await.unwrap();
    ch.basic_reject(
        m0.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();

    let m1 = get(&ch, &q).await.unwrap();
    assert_eq!(text(&m1.delivery), "m1");
    ch.basic_reject(
        m1.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();

    let again = get_eventually(&ch, &q).await;
    assert_eq!(text(&again.delivery), "m1");
    assert!(again.delivery.redelivered);
    assert_eq!(again.message_count, 0, "m0 was dropped");
}

#[tokio::test]
async fn unacked_messages_are_requeued_in_order_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 5).await;
    let c = conn.create_channel().await.unwrap();
    c.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&c, &q, "", false).await;
    let ds = next_n(&mut consumer, 5).await;
    // A message published meanwhile waits behind the full prefetch window.
    publish(&ch, &q, "late").await;
    wait_ready(&ch, &q, 1).await;
    // Ack one in the middle; the rest go back in their original order, ahead of "late".
    c.basic_ack(ds[2].delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    c.close(200, "bye".into()).await.unwrap();

    let ds = consume_exactly(&ch, &q, 5).await;
    assert_eq!(texts(&ds), vec!["m0", "m1", "m3", "m4", "late"]);
    assert!(ds[..4].iter().all(|d| d.redelivered));
}

#[tokio::test]
async fn unacked_messages_are_requeued_in_order_when_the_connection_closes() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, false).await;
    fill(&ch, &q, 5).await;
    let (conn2, c) = open_channel(&broker).await;
    c.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut consumer = consume(&c, &q, "", false).await;
    let ds = next_n(&mut consumer, 5).await;
    assert!(ds.iter().all(|d| !d.redelivered));
    publish(&ch, &q, "late").await;
    wait_ready(&ch, &q, 1).await;
    conn2.close(200, "bye".into()).await.unwrap();

    let ds = consume_exactly(&ch, &q, 6).await;
    assert_eq!(texts(&ds), vec!["m0", "m1", "m2", "m3", "m4", "late"]);
    assert!(ds[..5].iter().all(|d| d.redelivered));
    assert!(!ds[5].redelivered);
    delete_queue(&ch, &q).await;
}

#[tokio::test]
async fn basic_recover_requeue_redelivers_unacked_with_redelivered_flag() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 3).await;
    let mut consumer = consume(&ch, &q, "", false).await;
    let first = next_n(&mut consumer, 3).await;
    ch.basic_ack(first[0].delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();

    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let again = next_n(&mut consumer, 2).await;
    assert_eq!(texts(&again), vec!["m1", "m2"]);
    assert!(again.iter().all(|d| d.redelivered));
    assert!(again.iter().all(|d| d.delivery_tag > 3));
    assert_quiet(&mut consumer).await;
}

#[tokio::test]
async fn basic_recover_without_requeue_is_540_not_implemented() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let err = ch
        .basic_recover(BasicRecoverOptions { requeue: false })
        .await
        .expect_err("RabbitMQ does not implement requeue=false");
    assert_eq!(
        amqp_error(&err),
        Some((540, "NOT_IMPLEMENTED - requeue=false".into()))
    );
    assert!(err.is_amqp_hard_error(), "connection error");
    assert!(conn.create_channel().await.is_err());
}

#[tokio::test]
async fn ack_of_unknown_delivery_tag_closes_channel_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let mut closes = Closes::watch(&conn);
    ch.basic_ack(42, BasicAckOptions::default()).await.unwrap();
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (406, "PRECONDITION_FAILED - unknown delivery tag 42".into())
    );
    // Only the channel is closed.
    let ch2 = conn.create_channel().await.expect("connection survives");
    ch2.basic_qos(0, BasicQosOptions::default()).await.unwrap();
}

#[tokio::test]
async fn double_ack_closes_channel_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 1).await;
    let m = get(&ch, &q).await.unwrap();
    let tag = m.delivery.delivery_tag;
    let mut closes = Closes::watch(&conn);
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (
            406,
            format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
        )
    );
}

#[tokio::test]
async fn reject_and_nack_of_unknown_delivery_tag_close_channel_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let mut closes = Closes::watch(&conn);
    ch.basic_reject(7, BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (406, "PRECONDITION_FAILED - unknown delivery tag 7".into())
    );
    let ch = conn.create_channel().await.unwrap();
    ch.basic_nack(9, BasicNackOptions::default()).await.unwrap();
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (406, "PRECONDITION_FAILED - unknown delivery tag 9".into())
    );
}

#[tokio::test]
async fn ack_of_a_no_ack_delivery_is_unknown_tag_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let mut consumer = consume(&ch, &q, "", true).await;
    publish(&ch, &q, "x").await;
    let d = next(&mut consumer).await;
    let mut closes = Closes::watch(&conn);
    ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    let (code, text) = closes.channel(&conn, &ch).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - unknown delivery tag {}",
            d.delivery_tag
        )
    );
}

// ---------------------------------------------------------------------------
// prefetch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn qos_prefetch_limits_unacked_deliveries_per_consumer() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    fill(&ch, &q, 10).await;
    ch.basic_qos(3, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut consumer = consume(&ch, &q, "", false).await;

    let ds = next_n(&mut consumer, 3).await;
    assert_eq!(texts(&ds), bodies(0..3));
    assert_quiet(&mut consumer).await;
    assert_eq!(ready_count(&ch, &q).await, 7);

    // Each ack frees exactly one slot.
    ch.basic_ack(ds[0].delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    assert_eq!(text(&next(&mut consumer).await), "m3");
    assert_quiet(&mut consumer).await;

    // Acking everything outstanding lets three more through.
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let ds = next_n(&mut consumer, 3).await;
    assert_eq!(texts(&ds), bodies(4..7));
    assert_quiet(&mut consumer).await;
}

#[tokio::test]
async fn qos_non_global_applies_to_each_consumer_separately() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    assert_eq!(prefetch_split(&ch).await, (2, 2));
}

#[tokio::test]
async fn qos_global_limit_is_shared_by_all_consumers_on_the_channel() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let q1 = declare(&ch, true).await;
    let q2 = declare(&ch, true).await;
    fill(&ch, &q1, 5).await;
    fill(&ch, &q2, 5).await;
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = consume(&ch, &q1, "", false).await;
    let d1 = next_n(&mut c1, 3).await;
    assert_quiet(&mut c1).await;
    let mut c2 = consume(&ch, &q2, "", false).await;
    assert_quiet(&mut c2).await;

    // Freeing one slot on the channel lets exactly one more message through, to either consumer.
    ch.basic_ack(d1[0].delivery_tag, BasicAckOptions::default())
        .await
        .unwrap();
    tokio::select! {
        d = next(&mut c1) => assert_eq!(text(&d), "m3"),
        d = next(&mut c2) => assert_eq!(text(&d), "m0"),
    }
    assert_quiet(&mut c1).await;
    assert_quiet(&mut c2).await;
    assert_eq!(ready_count(&ch, &q1).await + ready_count(&ch, &q2).await, 6);
}

/// Two consumers on one channel, on two queues of 5 messages each; returns how many
/// unacked deliveries each consumer ends up holding.
async fn prefetch_split(ch: &Channel) -> (usize, usize) {
    let q1 = declare(ch, true).await;
    let q2 = declare(ch, true).await;
    fill(ch, &q1, 5).await;
    fill(ch, &q2, 5).await;
    let mut c1 = consume(ch, &q1, "", false).await;
    let mut c2 = consume(ch, &q2, "", false).await;
    let n1 = count_until_quiet(&mut c1).await;
    let n2 = count_until_quiet(&mut c2).await;
    assert_quiet(&mut c1).await;
    (n1, n2)
}

#[tokio::test]
async fn qos_per_consumer_then_global_both_apply() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let (n1, n2) = prefetch_split(&ch).await;
    assert!(n1 <= 2 && n2 <= 2, "per-consumer limit: {n1} {n2}");
    assert_eq!(n1 + n2, 3, "channel-wide limit");
}

#[tokio::test]
async fn qos_per_consumer_after_global_lifts_the_global_limit() {
    // RabbitMQ quirk: basic.qos(global=false) clears any channel-wide (global) prefetch.
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    assert_eq!(prefetch_split(&ch).await, (2, 2));
}

// ---------------------------------------------------------------------------
// direct reply-to
// ---------------------------------------------------------------------------

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[tokio::test]
async fn direct_reply_to_round_trip() {
    let broker = TestBroker::start().await;
    let (conn, client) = open_channel(&broker).await;
    let server = conn.create_channel().await.unwrap();
    let requests_q = declare(&server, true).await;
    let mut requests = consume(&server, &requests_q, "", true).await;

    let mut replies = consume(&client, REPLY_TO, "", true).await;
    publish_props(
        &client,
        "",
        &requests_q,
        b"ping",
        BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("c-1".into()),
    )
    .await;

    let req = next(&mut requests).await;
    assert_eq!(text(&req), "ping");
    let reply_to = req
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > REPLY_TO.len() + 1,
        "reply_to was not rewritten: {reply_to}"
    );
    assert_eq!(
        req.properties.correlation_id().as_ref().unwrap().as_str(),
        "c-1"
    );

    // The server replies through the default exchange to the rewritten name, from another
    // channel (and without declaring anything).
    publish_props(
        &server,
        "",
        &reply_to,
        b"pong",
        BasicProperties::default().with_correlation_id("c-1".into()),
    )
    .await;
    let rep = next(&mut replies).await;
    assert_eq!(text(&rep), "pong");
    assert_eq!(
        rep.properties.correlation_id().as_ref().unwrap().as_str(),
        "c-1"
    );
    assert_eq!(rep.exchange.as_str(), "");
    assert_eq!(rep.routing_key.as_str(), reply_to);
}

#[tokio::test]
async fn direct_reply_to_consumer_must_be_no_ack() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let err = ch
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("reply-to consumer with acks");
    assert_eq!(
        amqp_error(&err),
        Some((
            406,
            "PRECONDITION_FAILED - reply consumer cannot acknowledge".into()
        ))
    );
}

#[tokio::test]
async fn direct_reply_to_publish_without_reply_consumer_is_406() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, true).await;
    let mut closes = Closes::watch(&conn);
    publish_props(
        &ch,
        "",
        &q,
        b"req",
        BasicProperties::default().with_reply_to(REPLY_TO.into()),
    )
    .await;
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (
            406,
            "PRECONDITION_FAILED - fast reply consumer does not exist".into()
        )
    );
}

#[tokio::test]
async fn publish_to_missing_exchange_closes_channel_404() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let ex = unique("no-such-exchange");
    let mut closes = Closes::watch(&conn);
    ch.basic_publish(
        ex.as_str().into(),
        "rk".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (404, format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"))
    );
}

// ---------------------------------------------------------------------------
// channel.flow and message size
// ---------------------------------------------------------------------------

#[tokio::test]
async fn channel_flow_active_true_is_confirmed() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let active = ch
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .expect("channel.flow-ok");
    assert!(active);
}

#[tokio::test]
async fn message_larger_than_max_message_size_closes_channel_406() {
    if common::against_other_broker() {
        return; // RabbitMQ's limit (128 MiB by default) is not set from here.
    }
    let mut config = leveret::Config::default();
    config.limits.max_message_size = 1000;
    let broker = TestBroker::start_with(config).await;
    let (conn, ch) = open_channel(&broker).await;
    let q = declare(&ch, false).await;

    publish_props(&ch, "", &q, &[7u8; 1000], BasicProperties::default()).await;
    let mut closes = Closes::watch(&conn);
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        &[7u8; 1001],
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        closes.channel(&conn, &ch).await,
        (
            406,
            "PRECONDITION_FAILED - message size 1001 is larger than configured max size 1000"
                .into()
        )
    );

    // Only the oversized message was refused; the one at the limit was queued.
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(ready_count(&ch, &q).await, 1);
    delete_queue(&ch, &q).await;
}

#[tokio::test]
async fn channel_flow_active_false_is_540_not_implemented_as_rabbitmq() {
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    let err = ch
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .expect_err("RabbitMQ refuses to pause deliveries");
    assert_eq!(
        amqp_error(&err),
        Some((540, "NOT_IMPLEMENTED - active=false".into()))
    );
    assert!(!conn.status().connected());
}

#[tokio::test]
async fn cc_and_bcc_headers_add_routing_keys_and_bcc_is_not_delivered() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = open_channel(&broker).await;
    let (main, cc, bcc) = (
        declare(&ch, true).await,
        declare(&ch, true).await,
        declare(&ch, true).await,
    );
    let keys =
        |k: &str| AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(k.into())]));
    let mut headers = FieldTable::default();
    headers.insert("CC".into(), keys(&cc));
    headers.insert("BCC".into(), keys(&bcc));
    publish_props(
        &ch,
        "",
        &main,
        b"sent",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in [&main, &cc, &bcc] {
        let got = get_eventually(&ch, q).await;
        assert_eq!(&got.delivery.data[..], b"sent", "queue {q}");
        let h = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(h.inner().contains_key("CC"), "CC is delivered (queue {q})");
        assert!(
            !h.inner().contains_key("BCC"),
            "BCC is not delivered (queue {q})"
        );
    }
}

// ---------------------------------------------------------------------------
// delivery acknowledgement timeout (RabbitMQ's consumer_timeout)
// ---------------------------------------------------------------------------

/// Consumes one message and never acks it; the broker must close the channel
/// with RabbitMQ's 406 and requeue the message.
async fn assert_ack_timeout(broker: &TestBroker, queue_args: FieldTable, timeout_ms: u64) {
    let (conn, ch) = open_channel(broker).await;
    let q = unique("ack-timeout");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        queue_args,
    )
    .await
    .unwrap();
    publish(&ch, &q, "stuck").await;
    let cch = conn.create_channel().await.unwrap();
    let mut consumer = consume(&cch, &q, "", false).await;
    let first = next(&mut consumer).await;
    assert!(!first.redelivered);
    let mut closes = Closes::watch(&conn);
    let (code, text) = closes.channel(&conn, &cch).await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more",
            cch.id()
        )
    );
    let again = get_eventually(&ch, &q).await;
    assert_eq!(&again.delivery.data[..], b"stuck");
    assert!(again.delivery.redelivered, "requeued, flagged redelivered");
    delete_queue(&ch, &q).await;
}

#[tokio::test]
async fn delivery_unacked_past_consumer_timeout_closes_the_channel_406_and_requeues() {
    if common::against_other_broker() {
        return; // RabbitMQ's consumer_timeout is set in its config file.
    }
    let mut config = leveret::Config::default();
    config.limits.consumer_timeout_ms = 700;
    let broker = TestBroker::start_with(config).await;
    assert_ack_timeout(&broker, FieldTable::default(), 700).await;
}

#[tokio::test]
async fn x_consumer_timeout_queue_argument_overrides_the_default() {
    if common::against_other_broker() {
        return; // x-consumer-timeout arrived in RabbitMQ 3.12; this one is 3.10.
    }
    let broker = TestBroker::start().await;
    let mut args = FieldTable::default();
    args.insert("x-consumer-timeout".into(), AMQPValue::LongInt(600));
    assert_ack_timeout(&broker, args, 600).await;
}
