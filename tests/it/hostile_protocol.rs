//! A hostile client at the AMQP codec and connection layer (issue 14,
//! findings 1, 4 and 11): nesting deep enough to overflow a stack, frames
//! over the pre-login limit, poison message headers, and replies that must
//! match RabbitMQ 3.10's. Frames are written by hand (tests/common/raw.rs);
//! nested tables are built as bytes, since encoding or parsing them with
//! amq-protocol would recurse in the test itself.
//!
//! Every test passes against RabbitMQ too (`LEVERET_TEST_URI`), except where
//! Leveret bounds nesting (RabbitMQ has no bound): there the test checks that
//! RabbitMQ accepts what Leveret refuses with a clear error.

use crate::common;

use common::http::Api;
use common::raw::*;
use common::{against_other_broker, unique, TestBroker};
use std::time::Duration;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Leveret's bound on nested field tables and arrays (src/protocol/field_table.rs).
const MAX_DEPTH: usize = 100;

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out (broker did not answer?)");
}

// ---------------------------------------------------------------- bytes

fn short_str(s: &[u8]) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s);
    v
}

fn long_str(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// A field table from raw (key, type-and-value) entries.
fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in entries {
        body.extend(short_str(k));
        body.extend_from_slice(v);
    }
    long_str(&body)
}

/// A table `{"k": {"k": ... {}}}` of `depth` tables in all, built in linear
/// time (each inner level is 7 octets: key, type 'F', length).
fn nested_table(depth: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(7 * depth);
    for level in 1..=depth {
        t.extend_from_slice(&((7 * (depth - level)) as u32).to_be_bytes());
        if level < depth {
            t.extend_from_slice(&[1, b'k', b'F']);
        }
    }
    t
}

fn method_bytes(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

/// connection.start-ok (PLAIN guest/guest) with the given client properties.
fn start_ok_payload(client_properties: &[u8]) -> Vec<u8> {
    let mut args = client_properties.to_vec();
    args.extend(short_str(b"PLAIN"));
    args.extend(long_str(&plain("guest", "guest")));
    args.extend(short_str(b"en_US"));
    method_bytes(10, 11, &args)
}

/// queue.declare (not exclusive, auto-delete off) with raw arguments.
fn queue_declare_payload(name: &str, arguments: &[u8]) -> Vec<u8> {
    let mut args = vec![0, 0];
    args.extend(short_str(name.as_bytes()));
    args.push(0);
    args.extend_from_slice(arguments);
    method_bytes(50, 10, &args)
}

/// A basic content header: class, weight, body size, then raw properties.
fn content_header(class_id: u16, weight: u16, body_size: u64, properties: &[u8]) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&weight.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(properties);
    p
}

/// Basic properties carrying only a headers table (raw).
fn headers_property(headers: &[u8]) -> Vec<u8> {
    let mut p = (1u16 << 13).to_be_bytes().to_vec();
    p.extend_from_slice(headers);
    p
}

/// basic.publish to `exchange`/`routing_key`, its header and one body frame.
fn publish_frames(channel: u16, exchange: &str, routing_key: &str, properties: &[u8]) -> Vec<u8> {
    let mut bytes = method_frame(channel, &publish_method(exchange, routing_key));
    bytes.extend(frame(
        FRAME_HEADER,
        channel,
        &content_header(60, 0, 4, properties),
    ));
    bytes.extend(frame(FRAME_BODY, channel, b"body"));
    bytes
}

// ---------------------------------------------------------------- helpers

/// Connection.close with this code, text and method, answered with close-ok.
async fn expect_close(raw: &mut Raw, code: u16, text: &str, ids: (u16, u16)) {
    let close = raw.read_connection_close().await;
    assert_eq!(
        (
            close.reply_code,
            close.reply_text.as_str(),
            close.class_id,
            close.method_id
        ),
        (code, text, ids.0, ids.1)
    );
}

/// The socket closes without a connection.close (RabbitMQ before tune-ok).
async fn expect_silent_close(raw: &mut Raw) {
    match raw.read_frame().await {
        None => {}
        other => panic!("expected the socket to close without a reply, got {other:?}"),
    }
}

/// A fresh connection still declares, publishes and gets a message.
async fn assert_broker_healthy(broker: &TestBroker) {
    let (mut raw, tune) = Raw::open(broker.addr).await;
    raw.open_channel(1).await;
    let q = raw.declare_exclusive_queue(1).await;
    raw.publish(1, "", &q, b"alive", tune.frame_max as usize)
        .await;
    assert_eq!(raw.basic_get(1, &q).await.as_deref(), Some(&b"alive"[..]));
    raw.close_connection().await;
}

async fn declare(raw: &mut Raw, channel: u16, payload: &[u8]) -> (u16, AMQPClass) {
    raw.send(&frame(FRAME_METHOD, channel, payload)).await;
    raw.next_method().await
}

async fn delete_queue(raw: &mut Raw, channel: u16, name: &str) {
    raw.send_method(
        channel,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    )
    .await;
    match raw.next_method().await {
        (ch, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))) if ch == channel => {}
        other => panic!("expected queue.delete-ok, got {other:?}"),
    }
}

// ---------------------------------------------------------------- finding 1: nesting

/// The crash: client properties nested 1,250 tables deep (a 9 KB
/// start-ok) aborted the process. Now the frame is over the pre-login limit
/// and the connection closes without a reply, as RabbitMQ's does.
#[tokio::test]
async fn deeply_nested_client_properties_before_login_do_not_crash() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::start(broker.addr).await;
        let payload = start_ok_payload(&nested_table(1_250));
        assert!(payload.len() > 8_000);
        // The broker may close the socket before the write completes.
        let _ = raw.try_send(&frame(FRAME_METHOD, 0, &payload)).await;
        expect_silent_close(&mut raw).await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// Within 4,096 octets arrays nest about 800 deep: RabbitMQ accepts that;
/// Leveret refuses more than 100 levels and closes the socket, as RabbitMQ
/// does for any frame it cannot take before tune-ok.
#[tokio::test]
async fn nesting_within_the_pre_login_frame_limit_is_bounded() {
    within(async {
        let broker = TestBroker::start().await;
        // {"k": [[[...]]]}: 'A' and a length per level.
        let levels = 780;
        let mut value = Vec::new();
        for level in 0..levels {
            value.push(b'A');
            value.extend_from_slice(&((5 * (levels - 1 - level)) as u32).to_be_bytes());
        }
        let properties = table(&[(b"k", value)]);
        let payload = start_ok_payload(&properties);
        assert!(payload.len() <= 4096, "{}", payload.len());
        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.send(&frame(FRAME_METHOD, 0, &payload)).await;
        if against_other_broker() {
            raw.expect_tune().await;
        } else {
            expect_silent_close(&mut raw).await;
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// Before tune-ok RabbitMQ takes payloads up to 4,096 octets (frame_max's
/// minimum, with its 8-octet fudge) and closes the socket on anything
/// larger; Leveret took 128 KiB from anyone.
#[tokio::test]
async fn frames_over_4096_octets_before_tune_ok_are_refused() {
    within(async {
        let broker = TestBroker::start().await;
        for size in [4096usize, 4097] {
            let base = start_ok_payload(&table(&[(b"p", vec![b'S', 0, 0, 0, 0])]));
            let pad = vec![b'x'; size - base.len()];
            let mut padding = vec![b'S'];
            padding.extend(long_str(&pad));
            let payload = start_ok_payload(&table(&[(b"p", padding)]));
            assert_eq!(payload.len(), size);
            let (mut raw, _) = Raw::start(broker.addr).await;
            let _ = raw.try_send(&frame(FRAME_METHOD, 0, &payload)).await;
            if size == 4096 {
                raw.expect_tune().await;
            } else {
                expect_silent_close(&mut raw).await;
            }
        }
        // The limit ends at tune-ok: later frames may be as large as agreed.
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let big = vec![b'S'];
        let mut value = big.clone();
        value.extend(long_str(&vec![b'y'; 20_000]));
        let q = unique("big-args");
        let reply = declare(
            &mut raw,
            1,
            &queue_declare_payload(&q, &table(&[(b"big", value)])),
        )
        .await;
        assert!(
            matches!(
                reply,
                (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
            ),
            "{reply:?}"
        );
        delete_queue(&mut raw, 1, &q).await;
        raw.close_connection().await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// After login, queue.declare arguments nested 2,000 deep aborted Leveret.
/// RabbitMQ accepts them; Leveret closes the connection with a frame error
/// that names its bound.
#[tokio::test]
async fn deeply_nested_method_arguments_are_refused() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let q = unique("deep-args");
        let reply = declare(
            &mut raw,
            1,
            &queue_declare_payload(&q, &nested_table(2_000)),
        )
        .await;
        if against_other_broker() {
            assert!(
                matches!(
                    reply,
                    (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
                ),
                "{reply:?}"
            );
            delete_queue(&mut raw, 1, &q).await;
            raw.close_connection().await;
        } else {
            match reply {
                (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                    assert_eq!(
                        (
                            close.reply_code,
                            close.reply_text.as_str(),
                            close.class_id,
                            close.method_id
                        ),
                        (
                            501,
                            "FRAME_ERROR - field tables nested more than 100 levels deep",
                            50,
                            10
                        )
                    );
                }
                other => panic!("expected connection.close, got {other:?}"),
            }
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// Message headers nested 2,000 deep, published to a headers exchange,
/// aborted Leveret when matched (and when dead-lettered). They are refused
/// at publish now and never reach a queue; RabbitMQ routes them.
#[tokio::test]
async fn deeply_nested_message_headers_never_reach_a_queue() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let q = raw.declare_exclusive_queue(1).await;
        raw.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: q.as_str().into(),
                exchange: "amq.headers".into(),
                routing_key: "".into(),
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        match raw.next_method().await {
            (1, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))) => {}
            other => panic!("expected queue.bind-ok, got {other:?}"),
        }
        let (mut publisher, _) = Raw::open(broker.addr).await;
        publisher.open_channel(1).await;
        let headers = table(&[(b"deep", {
            let mut v = vec![b'F'];
            v.extend(nested_table(2_000));
            v
        })]);
        publisher
            .send(&publish_frames(
                1,
                "amq.headers",
                "",
                &headers_property(&headers),
            ))
            .await;
        if against_other_broker() {
            publisher.close_connection().await;
            // RabbitMQ routed it (an empty binding matches any message).
            let got = raw.basic_get_eventually(1, &q).await;
            assert!(got.is_some(), "routed to {q}");
        } else {
            expect_close(
                &mut publisher,
                501,
                "FRAME_ERROR - field tables nested more than 100 levels deep",
                (60, 40),
            )
            .await;
            assert_eq!(raw.basic_get(1, &q).await, None);
        }
        raw.close_connection().await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// Nesting at the bound works everywhere a table goes: queue arguments,
/// binding arguments, headers-exchange matching, dead-lettering (x-death
/// rewritten), delivery, and the management API's JSON.
#[tokio::test]
async fn nesting_at_the_bound_works_end_to_end() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, tune) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        // One table inside the outermost one: 100 levels in all.
        let mut deep_value = vec![b'F'];
        deep_value.extend(nested_table(MAX_DEPTH - 1));

        let dlq = unique("bound-dlq");
        let reply = declare(&mut raw, 1, &queue_declare_payload(&dlq, &table(&[]))).await;
        assert!(
            matches!(reply.1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
            "{reply:?}"
        );
        let q = unique("bound");
        let mut dlx_key = vec![b'S'];
        dlx_key.extend(long_str(dlq.as_bytes()));
        let mut dlx = vec![b'S'];
        dlx.extend(long_str(b""));
        let arguments = table(&[
            (b"x-dead-letter-exchange", dlx),
            (b"x-dead-letter-routing-key", dlx_key),
            (b"deep", deep_value.clone()),
        ]);
        let reply = declare(&mut raw, 1, &queue_declare_payload(&q, &arguments)).await;
        assert!(
            matches!(reply.1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
            "{reply:?}"
        );

        // queue.bind to amq.headers, matching on the deep value.
        let mut bind_args = vec![0, 0];
        bind_args.extend(short_str(q.as_bytes()));
        bind_args.extend(short_str(b"amq.headers"));
        bind_args.extend(short_str(b""));
        bind_args.push(0);
        bind_args.extend(table(&[(b"deep", deep_value.clone())]));
        raw.send(&frame(FRAME_METHOD, 1, &method_bytes(50, 20, &bind_args)))
            .await;
        match raw.next_method().await {
            (1, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))) => {}
            other => panic!("expected queue.bind-ok, got {other:?}"),
        }

        let headers = table(&[(b"deep", deep_value)]);
        raw.send(&publish_frames(
            1,
            "amq.headers",
            "",
            &headers_property(&headers),
        ))
        .await;
        // basic.get without no-ack, then reject: the message is dead-lettered.
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: q.as_str().into(),
                no_ack: false,
            })),
        )
        .await;
        let tag = match raw.next_method().await {
            (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => ok.delivery_tag,
            other => panic!("expected basic.get-ok (the deep headers matched), got {other:?}"),
        };
        match raw.read_frame().await {
            Some(Frame::Header(1, 4, payload)) => {
                assert!(payload.windows(4).any(|w| w == b"deep"));
            }
            other => panic!("expected the content header, got {other:?}"),
        }
        assert!(matches!(raw.read_frame().await, Some(Frame::Body(1, _))));
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: tag,
                requeue: false,
            })),
        )
        .await;
        let dead = raw.basic_get_eventually(1, &dlq).await;
        assert_eq!(dead.as_deref(), Some(&b"body"[..]), "dead-lettered copy");

        if let Some(api) = Api::of(&broker) {
            let reply = api.get(&format!("/api/queues/%2F/{q}")).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert!(
                reply.json["arguments"]["deep"].is_object(),
                "{}",
                reply.text
            );
            let reply = api.get("/api/connections").await;
            assert_eq!(reply.status, 200, "{}", reply.text);
        }
        delete_queue(&mut raw, 1, &q).await;
        delete_queue(&mut raw, 1, &dlq).await;
        raw.close_connection().await;
        let _ = tune;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

// ---------------------------------------------------------------- finding 4: poison messages

/// Headers a client cannot decode (an unknown field type, a type RabbitMQ
/// does not have, a table cut short) close the publishing connection with
/// RabbitMQ's bare 541, and the message never reaches the queue.
#[tokio::test]
async fn poison_headers_are_refused_at_publish() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut owner, _) = Raw::open(broker.addr).await;
        owner.open_channel(1).await;
        let q = unique("poison");
        let reply = declare(&mut owner, 1, &queue_declare_payload(&q, &table(&[]))).await;
        assert!(
            matches!(reply.1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
            "{reply:?}"
        );
        let poisons: [(&str, Vec<u8>); 3] = [
            ("unknown type 'Z'", table(&[(b"k", vec![b'Z'])])),
            (
                "type 'U' (not RabbitMQ's)",
                table(&[(b"k", vec![b'U', 0, 1])]),
            ),
            ("value cut short", table(&[(b"k", vec![b'I', 0])])),
        ];
        for (case, headers) in poisons {
            let (mut publisher, _) = Raw::open(broker.addr).await;
            publisher.open_channel(1).await;
            publisher
                .send(&publish_frames(1, "", &q, &headers_property(&headers)))
                .await;
            let close = publisher.read_connection_close().await;
            assert_eq!(
                (
                    close.reply_code,
                    close.reply_text.as_str(),
                    close.class_id,
                    close.method_id
                ),
                (541, "INTERNAL_ERROR", 0, 0),
                "{case}"
            );
            assert_eq!(
                owner.basic_get(1, &q).await,
                None,
                "{case}: reached the queue"
            );
        }
        delete_queue(&mut owner, 1, &q).await;
        owner.close_connection().await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

// ---------------------------------------------------------------- finding 11: replies

/// A content header of another class: 505, as RabbitMQ (Leveret sent 501).
#[tokio::test]
async fn content_header_of_the_wrong_class_is_unexpected_frame() {
    within(async {
        let broker = TestBroker::start().await;
        for (class_id, weight, text) in [
            (
                61,
                0,
                "UNEXPECTED_FRAME - expected content header for class 60, got one for class 61 instead",
            ),
            (
                60,
                1,
                "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead",
            ),
        ] {
            let (mut raw, _) = Raw::open(broker.addr).await;
            raw.open_channel(1).await;
            let mut bytes = method_frame(1, &publish_method("", "nowhere"));
            bytes.extend(frame(
                FRAME_HEADER,
                1,
                &content_header(class_id, weight, 1, &[0, 0]),
            ));
            raw.send(&bytes).await;
            expect_close(&mut raw, 505, text, (60, 40)).await;
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// A heartbeat frame must be empty: one with a payload is RabbitMQ's 501
/// "unknown_frame" on any channel; an empty one on a channel is 505.
#[tokio::test]
async fn heartbeat_with_a_payload_is_a_frame_error() {
    within(async {
        let broker = TestBroker::start().await;
        let cases: [(u16, &[u8], u16, &str); 4] = [
            (
                0,
                &[0],
                501,
                "FRAME_ERROR - type 8, all octets = <<0>>: unknown_frame",
            ),
            (
                0,
                b"abc",
                501,
                "FRAME_ERROR - type 8, all octets = <<\"abc\">>: unknown_frame",
            ),
            (
                1,
                &[0],
                501,
                "FRAME_ERROR - type 8, all octets = <<0>>: unknown_frame",
            ),
            (1, &[], 505, "UNEXPECTED_FRAME - type 8, all octets = <<>>"),
        ];
        for (channel, payload, code, text) in cases {
            let (mut raw, _) = Raw::open(broker.addr).await;
            raw.open_channel(1).await;
            raw.send(&frame(FRAME_HEARTBEAT, channel, payload)).await;
            expect_close(&mut raw, code, text, (0, 0)).await;
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// tune-ok values RabbitMQ refuses (channel_max or frame_max 0 meaning "no
/// limit", or above the server's): it closes the socket without a reply.
#[tokio::test]
async fn tune_ok_outside_the_servers_limits_is_refused() {
    within(async {
        let broker = TestBroker::start().await;
        for (channel_max, frame_max) in [(0u16, None), (3000, None), (2047, Some(0u32)), (2047, Some(4095)), (2047, Some(1 << 20))] {
            let (mut raw, _) = Raw::start(broker.addr).await;
            raw.start_ok("PLAIN", plain("guest", "guest")).await;
            let tune = raw.expect_tune().await;
            let tune_ok = AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max,
                frame_max: frame_max.unwrap_or(tune.frame_max),
                heartbeat: 0,
            }));
            let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            }));
            let mut bytes = method_frame(0, &tune_ok);
            bytes.extend(method_frame(0, &open));
            // The broker may close the socket before the write completes.
            let _ = raw.try_send(&bytes).await;
            match raw.read_frame().await {
                None => {}
                other => panic!(
                    "tune-ok channel_max {channel_max} frame_max {frame_max:?}: expected the socket to close, got {other:?}"
                ),
            }
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// RabbitMQ takes payloads up to frame_max itself (8 octets of "fudge" for
/// clients that forget the framing) and refuses the next octet, naming
/// sizes the Erlang way.
#[tokio::test]
async fn frames_up_to_frame_max_octets_of_payload_are_tolerated() {
    within(async {
        let broker = TestBroker::start().await;
        for size in [4088usize, 4089, 4096, 4097] {
            let (mut raw, _) = Raw::open_with(broker.addr, None, Some(4096), 0).await;
            raw.open_channel(1).await;
            let q = unique("fudge");
            let base = queue_declare_payload(&q, &table(&[(b"p", vec![b'S', 0, 0, 0, 0])]));
            let mut padding = vec![b'S'];
            padding.extend(long_str(&vec![b'x'; size - base.len()]));
            let payload = queue_declare_payload(&q, &table(&[(b"p", padding)]));
            assert_eq!(payload.len(), size);
            raw.send(&frame(FRAME_METHOD, 1, &payload)).await;
            if size <= 4096 {
                match raw.next_method().await {
                    (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
                    other => panic!("payload of {size} octets: expected declare-ok, got {other:?}"),
                }
                delete_queue(&mut raw, 1, &q).await;
                raw.close_connection().await;
            } else {
                expect_close(
                    &mut raw,
                    501,
                    "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,4097,4088}",
                    (0, 0),
                )
                .await;
            }
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// Field-table keys are octets to RabbitMQ: keys that are not UTF-8 are
/// accepted in method arguments (Leveret answered 501) and in message
/// headers, where the other keys still route through a headers exchange.
#[tokio::test]
async fn field_table_keys_need_not_be_utf8() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let int = vec![b'I', 0, 0, 0, 1];
        let q = unique("latin1");
        let arguments = table(&[(b"\xff\xfe", int.clone()), (b"caf\xe9", int.clone())]);
        let reply = declare(&mut raw, 1, &queue_declare_payload(&q, &arguments)).await;
        assert!(
            matches!(
                reply,
                (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_)))
            ),
            "{reply:?}"
        );

        let mut bind_args = FieldTable::default();
        bind_args.insert("a".into(), AMQPValue::LongInt(1));
        raw.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: q.as_str().into(),
                exchange: "amq.headers".into(),
                routing_key: "".into(),
                nowait: false,
                arguments: bind_args,
            })),
        )
        .await;
        match raw.next_method().await {
            (1, AMQPClass::Queue(queue::AMQPMethod::BindOk(_))) => {}
            other => panic!("expected queue.bind-ok, got {other:?}"),
        }
        let headers = table(&[(b"\xff", int.clone()), (b"a", int)]);
        raw.send(&publish_frames(
            1,
            "amq.headers",
            "",
            &headers_property(&headers),
        ))
        .await;
        let got = raw.basic_get_eventually(1, &q).await;
        assert_eq!(got.as_deref(), Some(&b"body"[..]));
        delete_queue(&mut raw, 1, &q).await;
        raw.close_connection().await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

/// A message whose header keys and content-type are not UTF-8 is
/// dead-lettered like any other (Leveret dropped it silently: it could not
/// parse its properties to add x-death).
#[tokio::test]
async fn messages_with_non_utf8_keys_are_dead_lettered() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let dlq = unique("latin1-dlq");
        let reply = declare(&mut raw, 1, &queue_declare_payload(&dlq, &table(&[]))).await;
        assert!(
            matches!(reply.1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
            "{reply:?}"
        );
        let q = unique("latin1-dl");
        let mut dlx_key = vec![b'S'];
        dlx_key.extend(long_str(dlq.as_bytes()));
        let mut dlx = vec![b'S'];
        dlx.extend(long_str(b""));
        let arguments = table(&[
            (b"x-dead-letter-exchange", dlx),
            (b"x-dead-letter-routing-key", dlx_key),
        ]);
        let reply = declare(&mut raw, 1, &queue_declare_payload(&q, &arguments)).await;
        assert!(
            matches!(reply.1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))),
            "{reply:?}"
        );

        // content-type "caf\xe9", headers {"\xff": 1}
        let mut properties = (1u16 << 15 | 1 << 13).to_be_bytes().to_vec();
        properties.extend(short_str(b"caf\xe9"));
        properties.extend(table(&[(b"\xff", vec![b'I', 0, 0, 0, 1])]));
        raw.send(&publish_frames(1, "", &q, &properties)).await;
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: q.as_str().into(),
                no_ack: false,
            })),
        )
        .await;
        let tag = match raw.next_method().await {
            (1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))) => ok.delivery_tag,
            other => panic!("expected basic.get-ok, got {other:?}"),
        };
        assert!(matches!(
            raw.read_frame().await,
            Some(Frame::Header(1, 4, _))
        ));
        assert!(matches!(raw.read_frame().await, Some(Frame::Body(1, _))));
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                delivery_tag: tag,
                requeue: false,
            })),
        )
        .await;
        let dead = raw.basic_get_eventually(1, &dlq).await;
        assert_eq!(dead.as_deref(), Some(&b"body"[..]), "dead-lettered copy");
        delete_queue(&mut raw, 1, &q).await;
        delete_queue(&mut raw, 1, &dlq).await;
        raw.close_connection().await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}
