//! Stream queues over AMQP 0-9-1, as a user sees them: a log that reading
//! does not consume, each consumer at its own offset. The tests of shared
//! behaviour also run against RabbitMQ (`LEVERET_TEST_URI`); each deletes
//! the streams it made.

use crate::common;

use common::amqp::*;
use common::process::{BrokerProcess, TempDir};
use common::{unique, TestBroker};
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(&[("x-queue-type", AMQPValue::LongString("stream".into()))]);
    for (k, v) in extra {
        t.insert(ShortString::from(k.to_string()), v.clone());
    }
    t
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    ch.queue_declare(name.into(), durable(), stream_args(extra))
        .await
        .expect("declare stream");
}

async fn publish_all(ch: &Channel, stream: &str, bodies: &[String]) {
    for b in bodies {
        publish_and_confirm(ch, "", stream, b.as_bytes(), persistent()).await;
    }
}

fn offset_arg(v: AMQPValue) -> FieldTable {
    table(&[("x-stream-offset", v)])
}

fn first() -> FieldTable {
    offset_arg(AMQPValue::LongString("first".into()))
}

/// The `x-stream-offset` header of a delivery.
fn offset_of(d: &Delivery) -> i64 {
    let headers = d.properties.headers().as_ref().expect("headers");
    match headers.inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset is {other:?}"),
    }
}

async fn stream_consumer(
    conn: &Connection,
    stream: &str,
    prefetch: u16,
    args: FieldTable,
) -> (Channel, lapin::Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let c = consume_with(&ch, stream, "", false, args).await;
    (ch, c)
}

async fn ack_all(ds: &[Delivery]) {
    for d in ds {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

async fn delete(conn: &Connection, name: &str) {
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_reads_everything_from_first_with_offsets() {
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-first");
        declare_stream(&ch, &s, &[]).await;
        let sent = bodies("m", 20);
        publish_all(&ch, &s, &sent).await;
        let (_c1, mut one) = stream_consumer(&conn, &s, 100, first()).await;
        let (_c2, mut two) = stream_consumer(&conn, &s, 100, first()).await;
        for consumer in [&mut one, &mut two] {
            let got = next_n(consumer, 20).await;
            assert_eq!(texts(&got), sent);
            let offsets: Vec<i64> = got.iter().map(offset_of).collect();
            assert_eq!(offsets, (0..20).collect::<Vec<i64>>());
            assert!(got.iter().all(|d| !d.redelivered));
            ack_all(&got).await;
        }
        // Reading consumed nothing: a third reader sees it all again.
        let (_c3, mut three) = stream_consumer(&conn, &s, 100, first()).await;
        assert_eq!(texts(&next_n(&mut three, 20).await), sent);
        delete(&conn, &s).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_next_last_numeric_and_interval_choose_the_start() {
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-offsets");
        declare_stream(&ch, &s, &[]).await;
        publish_all(&ch, &s, &bodies("old", 5)).await;

        let (_a, mut numeric) =
            stream_consumer(&conn, &s, 10, offset_arg(AMQPValue::LongLongInt(3))).await;
        let got = next_n(&mut numeric, 2).await;
        assert_eq!(texts(&got), ["old-3", "old-4"]);

        let (_b, mut interval) = stream_consumer(
            &conn,
            &s,
            10,
            offset_arg(AMQPValue::LongString("1h".into())),
        )
        .await;
        assert_eq!(texts(&next_n(&mut interval, 5).await), bodies("old", 5));

        let (_c, mut last) = stream_consumer(
            &conn,
            &s,
            10,
            offset_arg(AMQPValue::LongString("last".into())),
        )
        .await;
        assert_eq!(texts(&next_n(&mut last, 1).await), ["old-4"]);

        // No offset means next: only what comes after consume-ok.
        let (_d, mut next) = stream_consumer(&conn, &s, 10, FieldTable::default()).await;
        assert_quiet(&mut next).await;
        publish_all(&ch, &s, &["new-0".to_string()]).await;
        let d = next_n(&mut next, 1).await;
        assert_eq!(texts(&d), ["new-0"]);
        assert_eq!(offset_of(&d[0]), 5);
        delete(&conn, &s).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_give_credit_back_and_a_nack_closes_the_connection() {
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-credit");
        declare_stream(&ch, &s, &[]).await;
        publish_all(&ch, &s, &bodies("m", 6)).await;
        let reader = broker.connect().await;
        let (_c, mut consumer) = stream_consumer(&reader, &s, 2, first()).await;
        let got = next_n(&mut consumer, 2).await;
        assert_eq!(texts(&got), ["m-0", "m-1"]);
        // The prefetch is used up until something is acknowledged.
        assert_quiet(&mut consumer).await;
        got[0].ack(BasicAckOptions::default()).await.unwrap();
        let more = next_n(&mut consumer, 1).await;
        assert_eq!(texts(&more), ["m-2"]);
        assert!(!more[0].redelivered);
        // Nothing is requeued in a stream: RabbitMQ 3.10 closes the
        // connection with 540.
        let mut closes = Closes::watch(&reader);
        let _ = got[1]
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
        assert_eq!(
            closes.connection(&reader).await,
            (
                540,
                format!("NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues queue '{s}' in vhost '/'")
            )
        );
        delete(&conn, &s).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_stream_cannot_do_is_refused_in_rabbitmq_words() {
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let s = unique("stream-refusals");
        declare_stream(&ch, &s, &[]).await;

        // Non-durable.
        let other = unique("stream-transient");
        let e = ch
            .queue_declare(
                other.as_str().into(),
                QueueDeclareOptions::default(),
                stream_args(&[]),
            )
            .await
            .unwrap_err();
        assert_eq!(
            amqp_error(&e),
            Some((
                406,
                format!("PRECONDITION_FAILED - invalid property 'non-durable' for queue '{other}' in vhost '/'")
            ))
        );

        // A consumer without a prefetch.
        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .basic_consume(
                s.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            amqp_error(&e),
            Some((
                406,
                format!("PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{s}' in vhost '/''")
            ))
        );

        // basic.get closes the connection (540 is a connection error).
        let c2 = broker.connect().await;
        let ch = c2.create_channel().await.unwrap();
        let e = ch
            .basic_get(s.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            amqp_error(&e),
            Some((
                540,
                format!("NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{s}' in vhost '/'")
            ))
        );
        delete(&conn, &s).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_properties_survive_with_the_offset_added() {
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-props");
        declare_stream(&ch, &s, &[]).await;
        let mut headers = FieldTable::default();
        headers.insert("order".into(), AMQPValue::LongString("42".into()));
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("id-1".into())
            .with_headers(headers);
        publish_and_confirm(&ch, "", &s, b"{}", props).await;
        let (_c, mut consumer) = stream_consumer(&conn, &s, 10, first()).await;
        let d = next(&mut consumer).await;
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.as_str()),
            Some("id-1")
        );
        let h = d.properties.headers().as_ref().unwrap();
        assert_eq!(
            h.inner().get("order"),
            Some(&AMQPValue::LongString(LongString::from("42")))
        );
        assert_eq!(offset_of(&d), 0);
        assert_eq!(d.routing_key.as_str(), s);
        delete(&conn, &s).await;
    })
    .await
}

/// RabbitMQ 3.13's filtering; 3.10 ignores the arguments, so Leveret only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_consumer_gets_only_matching_values() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-filter");
        declare_stream(&ch, &s, &[]).await;
        for (i, region) in ["eu", "us", "eu", "", "apac", "eu"].iter().enumerate() {
            let mut headers = FieldTable::default();
            if !region.is_empty() {
                headers.insert(
                    "x-stream-filter-value".into(),
                    AMQPValue::LongString((*region).into()),
                );
            }
            let props = BasicProperties::default().with_headers(headers);
            publish_and_confirm(&ch, "", &s, format!("{i}-{region}").as_bytes(), props).await;
        }
        let mut args = first();
        args.insert("x-stream-filter".into(), AMQPValue::LongString("eu".into()));
        let (_a, mut eu) = stream_consumer(&conn, &s, 10, args.clone()).await;
        assert_eq!(texts(&next_n(&mut eu, 3).await), ["0-eu", "2-eu", "5-eu"]);
        assert_quiet(&mut eu).await;
        args.insert("x-stream-match-unfiltered".into(), AMQPValue::Boolean(true));
        let (_b, mut with_plain) = stream_consumer(&conn, &s, 10, args).await;
        assert_eq!(
            texts(&next_n(&mut with_plain, 4).await),
            ["0-eu", "2-eu", "3-", "5-eu"]
        );
        delete(&conn, &s).await;
    })
    .await
}

/// Confirmed means on disk: a kill -9 loses nothing confirmed, and the
/// offsets carry on after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_stream_messages_survive_kill_9() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 6, async {
        let data = TempDir::new("stream-kill9");
        let mut broker = BrokerProcess::start(data.path());
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_stream(&ch, "events", &[]).await;
        let sent = bodies("e", 200);
        // Confirms in flight together, so they share fsyncs.
        let mut confirms = Vec::new();
        for b in &sent {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    "events".into(),
                    BasicPublishOptions::default(),
                    b.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
            );
        }
        for c in confirms {
            assert!(c.await.unwrap().is_ack());
        }
        broker.kill9();
        drop(broker);
        let broker = BrokerProcess::start(data.path());
        let conn = broker.connect().await;
        let (_c, mut consumer) = stream_consumer(&conn, "events", 500, first()).await;
        let got = next_n(&mut consumer, 200).await;
        assert_eq!(texts(&got), sent);
        let ch = confirm_channel(&conn).await;
        publish_all(&ch, "events", &["after".to_string()]).await;
        let d = next(&mut consumer).await;
        assert_eq!(offset_of(&d), 200);
    })
    .await
}
