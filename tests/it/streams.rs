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

/// Server-side offset tracking (LavinMQ's; RabbitMQ has none over AMQP
/// 0-9-1): a named consumer resumes after what it acknowledged, across a
/// reconnect and a kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_consumer_resumes_after_its_acknowledged_offset_across_kill_9() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 6, async {
        let data = TempDir::new("stream-tracking");
        let mut broker = BrokerProcess::start(data.path());
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_stream(&ch, "orders", &[]).await;
        publish_all(&ch, "orders", &bodies("o", 10)).await;
        let tracking = table(&[
            ("x-stream-offset", AMQPValue::LongString("first".into())),
            (
                "x-stream-automatic-offset-tracking",
                AMQPValue::Boolean(true),
            ),
        ]);
        let named = |ch: Channel, args: FieldTable| async move {
            ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
            let c = consume_with(&ch, "orders", "analytics", false, args).await;
            (ch, c)
        };
        let reader = broker.connect().await;
        let (rch, mut consumer) =
            named(reader.create_channel().await.unwrap(), tracking.clone()).await;
        let got = next_n(&mut consumer, 10).await;
        // Acknowledges up to o-3 (out of order, as a client may).
        for i in [1, 0, 3, 2] {
            got[i].ack(BasicAckOptions::default()).await.unwrap();
        }
        rch.basic_cancel("analytics".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        drop(reader);

        // A reconnect resumes after o-3, despite asking for `first`.
        let reader = broker.connect().await;
        let (_rch, mut consumer) =
            named(reader.create_channel().await.unwrap(), tracking.clone()).await;
        let got = next_n(&mut consumer, 6).await;
        assert_eq!(texts(&got), bodies("o", 10)[4..]);
        ack_all(&got[..2]).await;
        // The API shows the stored offset (o-5 is offset 5) with its lag
        // behind the tail...
        let api = common::http::Api {
            addr: broker.mgmt_addr(),
            user: "guest".into(),
            password: "guest".into(),
        };
        common::eventually("the stored offset", WAIT, || async {
            let q = api.get("/api/queues/%2F/orders").await.json;
            q["stream"]["stored_offsets"]["analytics"] == serde_json::json!({"offset": 5, "lag": 4})
        })
        .await;
        // ...and the writer thread writes it to the stream's offsets file
        // a moment later (an ack never waits for it: a kill -9 before then
        // resumes the reader a little earlier, never later).
        let mut saved = b"\x09analytics".to_vec();
        saved.extend_from_slice(&5u64.to_be_bytes());
        let streams = data.path().join("streams");
        common::eventually("the offsets file", WAIT, || {
            let (streams, saved) = (streams.clone(), saved.clone());
            async move {
                let Some(Ok(dir)) = std::fs::read_dir(&streams).ok().and_then(|mut d| d.next())
                else {
                    return false;
                };
                std::fs::read(dir.path().join("offsets"))
                    .is_ok_and(|f| f.windows(saved.len()).any(|w| w == saved))
            }
        })
        .await;

        // So does a restart after kill -9, with `x-stream-offset = null`.
        broker.kill9();
        drop(broker);
        let broker = BrokerProcess::start(data.path());
        let reader = broker.connect().await;
        let null = table(&[("x-stream-offset", AMQPValue::Void)]);
        let (_rch, mut consumer) =
            named(reader.create_channel().await.unwrap(), null.clone()).await;
        let got = next_n(&mut consumer, 4).await;
        assert_eq!(texts(&got), bodies("o", 10)[6..]);
        // A consumer with another name starts at first.
        let ch = reader.create_channel().await.unwrap();
        ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
        let mut other = consume_with(&ch, "orders", "inventory", false, null).await;
        assert_eq!(texts(&next_n(&mut other, 10).await), bodies("o", 10));
    })
    .await
}

/// Where a stream stands and how far behind each reader is, in the API
/// and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_metrics_show_offsets_segments_and_lag() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let api = common::http::Api::of(&broker).unwrap();
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-lag");
        declare_stream(&ch, &s, &[]).await;
        publish_all(&ch, &s, &bodies("m", 10)).await;
        // A consumer with a prefetch of 3 that acknowledges nothing.
        let (_c, mut consumer) = stream_consumer(&conn, &s, 3, first()).await;
        let got = next_n(&mut consumer, 3).await;
        assert_eq!(got.len(), 3);
        let path = format!("/api/queues/%2F/{s}");
        common::eventually("the reader's lag", WAIT, || async {
            let q = api.get(&path).await.json;
            q["consumer_details"][0]["lag"] == 7 && q["consumer_details"][0]["offset"] == 3
        })
        .await;
        let q = api.get(&path).await.json;
        assert_eq!(q["type"], "stream");
        assert_eq!(q["messages"], 10);
        assert_eq!(q["first_offset"], 0);
        assert_eq!(q["committed_offset"], 9);
        assert_eq!(q["segments"], 1);
        assert!(q["stream"]["bytes"].as_u64().unwrap() > 10 * 4);
        let metrics = api.get("/metrics").await.text;
        let lag = format!(
            "leveret_stream_consumer_lag{{vhost=\"/\",queue=\"{s}\",consumer=\"{}\"}} 7",
            consumer.tag()
        );
        assert!(metrics.contains(&lag), "{lag} in\n{metrics}");
        assert!(metrics.contains(&format!(
            "leveret_stream_end_offset{{vhost=\"/\",queue=\"{s}\"}} 10"
        )));
    })
    .await
}

/// Retention drops whole segments, oldest first, and gives the disk back;
/// a reader from `first` starts at the oldest entry kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_bytes_drops_whole_segments() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let api = common::http::Api::of(&broker).unwrap();
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-retention");
        declare_stream(
            &ch,
            &s,
            &[
                (
                    "x-stream-max-segment-size-bytes",
                    AMQPValue::LongLongInt(2_000),
                ),
                ("x-max-length-bytes", AMQPValue::LongLongInt(6_000)),
            ],
        )
        .await;
        let body = "x".repeat(200);
        let sent: Vec<String> = (0..100).map(|i| format!("{i:03}{body}")).collect();
        publish_all(&ch, &s, &sent).await;
        let path = format!("/api/queues/%2F/{s}");
        let q = api.get(&path).await.json;
        let bytes = q["stream"]["bytes"].as_u64().unwrap();
        assert!(bytes <= 6_000 + 2_500, "{q}");
        let kept = q["first_offset"].as_u64().unwrap();
        assert!(kept > 50, "{q}");
        assert!(q["segments"].as_u64().unwrap() <= 4, "{q}");
        let (_c, mut consumer) = stream_consumer(&conn, &s, 200, first()).await;
        let d = next(&mut consumer).await;
        assert_eq!(offset_of(&d), kept as i64);
        assert_eq!(text(&d), sent[kept as usize]);
        delete(&conn, &s).await;
    })
    .await
}

/// A policy sets a stream's retention (and wins over its arguments, as in
/// RabbitMQ); a bad max-age gets RabbitMQ's complaint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_sets_stream_retention() {
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let Some(api) = common::http::Api::of(&broker) else {
            return;
        };
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-policy");
        let policy = format!("/api/policies/%2F/{s}");
        // RabbitMQ 3.10's API never answers this one (3.11+ refuses it
        // with the same words).
        if !common::against_other_broker() {
            let bad = api
                .put(
                    &policy,
                    serde_json::json!({"pattern": format!("^{s}$"), "apply-to": "queues",
                        "definition": {"max-age": "bogus"}}),
                )
                .await;
            assert_eq!(bad.status, 400, "{bad:?}");
            assert!(
                bad.text.contains("is not a valid max age"),
                "{}",
                bad.text
            );
        }
        declare_stream(
            &ch,
            &s,
            &[("x-max-length-bytes", AMQPValue::LongLongInt(1_000_000))],
        )
        .await;
        let set = api
            .put(
                &policy,
                serde_json::json!({"pattern": format!("^{s}$"), "apply-to": "queues",
                    "definition": {"max-length-bytes": 6000, "stream-max-segment-size-bytes": 2000, "max-age": "1h"}}),
            )
            .await;
        assert!(set.status == 201 || set.status == 204, "{set:?}");
        let path = format!("/api/queues/%2F/{s}");
        common::eventually("the policy on the stream", WAIT, || async {
            api.get(&path).await.json["policy"] == serde_json::json!(s)
        })
        .await;
        if !common::against_other_broker() {
            let q = api.get(&path).await.json;
            assert_eq!(
                q["stream"]["retention"],
                serde_json::json!({"max_length_bytes": 6000, "max_age_ms": 3_600_000})
            );
            let body = "x".repeat(200);
            let sent: Vec<String> = (0..100).map(|i| format!("{i:03}{body}")).collect();
            publish_all(&ch, &s, &sent).await;
            let q = api.get(&path).await.json;
            assert!(q["first_offset"].as_u64().unwrap() > 50, "{q}");
        }
        assert_eq!(api.delete(&policy).await.status, 204);
        delete(&conn, &s).await;
    })
    .await
}

/// `x-single-active-consumer` on a stream (Leveret's extension; RabbitMQ
/// 3.10 refuses it): one consumer of a group at a time; when it goes, the
/// next takes over after the offset the group stored, so nothing it
/// acknowledged is read twice and nothing is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_stream_consumer_hands_over_at_the_stored_offset() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        let s = unique("stream-sac");
        declare_stream(
            &ch,
            &s,
            &[("x-single-active-consumer", AMQPValue::Boolean(true))],
        )
        .await;
        publish_all(&ch, &s, &bodies("m", 10)).await;
        let group = table(&[
            ("x-stream-offset", AMQPValue::LongString("first".into())),
            (
                "x-stream-automatic-offset-tracking",
                AMQPValue::Boolean(true),
            ),
        ]);
        let member = |conn: Connection| {
            let (s, group) = (s.clone(), group.clone());
            async move {
                let ch = conn.create_channel().await.unwrap();
                ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
                let c = consume_with(&ch, &s, "billing", false, group).await;
                (conn, ch, c)
            }
        };
        let (a_conn, _a_ch, mut a) = member(broker.connect().await).await;
        let (_b_conn, _b_ch, mut b) = member(broker.connect().await).await;
        let got = next_n(&mut a, 10).await;
        assert_eq!(texts(&got), bodies("m", 10));
        assert_quiet(&mut b).await;
        ack_all(&got[..6]).await;
        let api = common::http::Api::of(&broker).unwrap();
        let path = format!("/api/queues/%2F/{s}");
        common::eventually("the group's stored offset", WAIT, || async {
            api.get(&path).await.json["stream"]["stored_offsets"]["billing"]["offset"] == 5
        })
        .await;
        a_conn.close(200, "member a stops".into()).await.unwrap();
        let handed = next_n(&mut b, 4).await;
        assert_eq!(texts(&handed), bodies("m", 10)[6..]);
        delete(&conn, &s).await;
    })
    .await
}

/// A super stream (RabbitMQ 3.13's shape): a direct exchange and N
/// partition streams bound with their keys and partition order, made and
/// removed through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_stream_is_made_routed_and_removed_through_the_api() {
    if common::against_other_broker() {
        return;
    }
    within_for(WAIT * 3, async {
        let broker = TestBroker::start().await;
        let api = common::http::Api::of(&broker).unwrap();
        let name = unique("orders");
        let path = format!("/api/stream/super-streams/%2F/{name}");
        let r = api
            .put(
                &path,
                serde_json::json!({"partitions": 3, "arguments": {"x-max-age": "7D"}}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let listed = api.get(&path).await.json;
        let partitions: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
        assert_eq!(listed["partitions"], serde_json::json!(partitions));
        let x = api.get(&format!("/api/exchanges/%2F/{name}")).await.json;
        assert_eq!(x["type"], "direct");
        assert_eq!(x["arguments"]["x-super-stream"], true);
        for (i, p) in partitions.iter().enumerate() {
            let q = api.get(&format!("/api/queues/%2F/{p}")).await.json;
            assert_eq!(q["type"], "stream");
            assert_eq!(q["arguments"]["x-max-age"], "7D");
            let b = api
                .get(&format!("/api/bindings/%2F/e/{name}/q/{p}"))
                .await
                .json;
            assert_eq!(b[0]["routing_key"], i.to_string(), "{b}");
            assert_eq!(b[0]["arguments"]["x-stream-partition-order"], i);
        }
        // Publishing with a partition's key lands in that partition.
        let conn = broker.connect().await;
        let ch = confirm_channel(&conn).await;
        publish_and_confirm(&ch, &name, "1", b"order-7", persistent()).await;
        let (_c, mut one) = stream_consumer(&conn, &partitions[1], 10, first()).await;
        assert_eq!(text(&next(&mut one).await), "order-7");
        // Bad requests get RabbitMQ's words; an existing one is refused.
        for (body, reason) in [
            (
                serde_json::json!({"partitions": 0}),
                "The partition number must be greater than 0",
            ),
            (
                serde_json::json!({"partitions": "x"}),
                "The partitions must be a number",
            ),
        ] {
            let r = api.put(&format!("{path}-bad"), body).await;
            assert_eq!(r.status, 400, "{r:?}");
            assert_eq!(r.json["reason"], reason);
        }
        assert_eq!(
            api.put(&path, serde_json::json!({"partitions": 2}))
                .await
                .status,
            400
        );
        let keyed = format!("{name}-keyed");
        let r = api
            .put(
                &format!("/api/stream/super-streams/%2F/{keyed}"),
                serde_json::json!({"binding-keys": "eu, us"}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(
            api.get(&format!("/api/stream/super-streams/%2F/{keyed}"))
                .await
                .json["partitions"],
            serde_json::json!([format!("{keyed}-eu"), format!("{keyed}-us")])
        );
        for n in [&name, &keyed] {
            let r = api
                .delete(&format!("/api/stream/super-streams/%2F/{n}"))
                .await;
            assert_eq!(r.status, 204, "{r:?}");
        }
        assert_eq!(
            api.get(&format!("/api/queues/%2F/{}", partitions[0]))
                .await
                .status,
            404
        );
        assert_eq!(
            api.get(&format!("/api/exchanges/%2F/{name}")).await.status,
            404
        );
    })
    .await
}
