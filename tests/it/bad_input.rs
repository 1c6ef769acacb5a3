//! Bad input, pinned against RabbitMQ 3.10: oversized frames, broken frame-end
//! octets, unknown frame types, garbage bytes, unknown and malformed methods,
//! content frames out of sequence, channel misuse, channel_max and unknown delivery
//! tags. Every case checks the exact reply RabbitMQ sends (code, and text where it
//! is deterministic) and then that a separate connection to the same broker still
//! works.
//!
//! Frames are written by hand over a bare TCP socket (see `raw` below).

use crate::common;

use common::{unique, TestBroker};
use lapin::{options::*, types::FieldTable as LapinTable, BasicProperties, Connection};
use std::time::Duration;

use common::raw::*;

const TIMEOUT: Duration = Duration::from_secs(5);
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// Runs a whole test body under a deadline, so a broker that never answers makes
/// the test fail instead of hanging the suite.
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out (broker did not answer?)");
}

async fn lapin_connect(uri: &str) -> lapin::Result<Connection> {
    tokio::time::timeout(
        TIMEOUT,
        Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("timed out connecting")
}

/// A brand-new connection to the broker can still declare a queue, publish to it
/// (with a publisher confirm) and get the message back.
async fn assert_broker_healthy(broker: &TestBroker) {
    let conn = lapin_connect(&broker.uri)
        .await
        .expect("a fresh connection should still be accepted");
    let ch = tokio::time::timeout(TIMEOUT, conn.create_channel())
        .await
        .expect("timed out opening a channel")
        .expect("channel.open");
    tokio::time::timeout(TIMEOUT, ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("timed out on confirm.select")
        .unwrap();
    let q = tokio::time::timeout(
        TIMEOUT,
        ch.queue_declare(
            unique("healthy").as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            LapinTable::default(),
        ),
    )
    .await
    .expect("timed out on queue.declare")
    .expect("queue.declare");
    let confirm = ch
        .basic_publish(
            "".into(),
            q.name().as_str().into(),
            BasicPublishOptions::default(),
            b"still alive",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, confirm)
        .await
        .expect("timed out waiting for the publisher confirm")
        .unwrap();
    let got = tokio::time::timeout(
        TIMEOUT,
        ch.basic_get(q.name().as_str().into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("timed out on basic.get")
    .unwrap()
    .expect("the published message should be in the queue");
    assert_eq!(got.delivery.data, b"still alive");
    let _ = tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into())).await;
}

/// A method payload with arbitrary class/method ids and argument bytes.
fn method_bytes(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class_id.to_be_bytes().to_vec();
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

fn queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn channel_open() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

/// A raw connection (broker's default limits, no heartbeats) with channel 1 open.
async fn open_with_channel(broker: &TestBroker) -> Raw {
    let (mut raw, _) = Raw::open(broker.addr).await;
    raw.open_channel(1).await;
    raw
}

/// Expected connection.close: the reply code, the reply text (exact, or just its
/// start where RabbitMQ's text embeds Erlang terms such as
/// "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"), and the
/// class and method ids.
#[derive(Clone, Copy)]
enum Text<'a> {
    Exact(&'a str),
    Prefix(&'a str),
}

/// Collects every mismatch of a test before failing, so that one run reports all
/// the differences from RabbitMQ.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn close(
        &mut self,
        case: &str,
        close: &connection::Close,
        code: u16,
        text: Text,
        ids: (u16, u16),
    ) {
        let got_text = close.reply_text.as_str();
        let text_ok = match text {
            Text::Exact(t) => got_text == t,
            Text::Prefix(p) => got_text.starts_with(p),
        };
        if close.reply_code != code || !text_ok || (close.class_id, close.method_id) != ids {
            let want = match text {
                Text::Exact(t) => format!("{t:?}"),
                Text::Prefix(p) => format!("{p:?}..."),
            };
            self.0.push(format!(
                "{case}:\n    expected {code} {want} (class {}, method {})\n    got      {} {got_text:?} (class {}, method {})",
                ids.0, ids.1, close.reply_code, close.class_id, close.method_id
            ));
        }
    }

    fn fail(&mut self, case: &str, what: String) {
        self.0.push(format!("{case}:\n    {what}"));
    }

    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} difference(s) from RabbitMQ:\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

/// Opens a raw connection with channel 1, sends `bytes`, and checks the
/// connection.close that follows (answering close-ok, then expecting the socket to
/// be closed).
async fn check_connection_error(
    checks: &mut Checks,
    broker: &TestBroker,
    case: &str,
    bytes: &[u8],
    code: u16,
    text: Text<'_>,
    ids: (u16, u16),
) {
    let mut raw = open_with_channel(broker).await;
    raw.send(bytes).await;
    let close = raw.expect_connection_close().await;
    checks.close(case, &close, code, text, ids);
}

// ---------------------------------------------------------------- framing errors

#[tokio::test]
async fn frame_larger_than_frame_max_is_frame_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();

        // frame_max 4096: frames of exactly 4096 octets (4088 payload) are fine...
        let (mut raw, _) = Raw::open_with(broker.addr, None, Some(4096), 0).await;
        raw.open_channel(1).await;
        let q = raw.declare_exclusive_queue(1).await;
        let body = vec![7u8; 3 * 4088];
        raw.publish(1, "", &q, &body, 4096).await;
        assert_eq!(raw.basic_get(1, &q).await, Some(body));

        // ...but a larger frame is a connection error. RabbitMQ tolerates payloads
        // up to frame_max itself (its "frame size fudge" for clients that forget the
        // 8 octets of framing), so the first payload it rejects is frame_max + 1:
        // 501 "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"
        let mut bytes = method_frame(1, &publish_method("", &q));
        bytes.extend(header_frame(1, 4097));
        bytes.extend(frame(FRAME_BODY, 1, &[1u8; 4097]));
        raw.send(&bytes).await;
        // After an oversized frame the byte stream cannot be resynchronised, and
        // RabbitMQ may go on reading the octets after it as another (huge) frame
        // instead of seeing close-ok, so whether and when it closes the socket is
        // not checked.
        let close = raw.read_connection_close().await;
        checks.close(
            "body frame of 4097 octets, frame_max 4096",
            &close,
            501,
            Text::Prefix("FRAME_ERROR"),
            (0, 0),
        );
        drop(raw);

        // The default frame_max (131072) applies to method frames too:
        // 501 "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,140004,131064}"
        let mut raw = open_with_channel(&broker).await;
        raw.send(&frame(
            FRAME_METHOD,
            1,
            &method_bytes(50, 10, &vec![0u8; 140_000]),
        ))
        .await;
        let close = raw.read_connection_close().await;
        checks.close(
            "method frame of 140004 octets, frame_max 131072",
            &close,
            501,
            Text::Prefix("FRAME_ERROR"),
            (0, 0),
        );
        drop(raw);

        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn bad_frame_end_octet_is_frame_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        for bad_end in [0x00u8, 0xCF] {
            // 501 "FRAME_ERROR - type 1, all octets = <<0,20,0,10,0>>: {invalid_frame_end_marker,0}"
            let mut bytes = method_frame(2, &channel_open());
            *bytes.last_mut().unwrap() = bad_end;
            check_connection_error(
                &mut checks,
                &broker,
                &format!("channel.open with frame-end {bad_end:#04x}"),
                &bytes,
                501,
                Text::Prefix("FRAME_ERROR"),
                (0, 0),
            )
            .await;
        }
        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn unknown_frame_type_is_frame_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        // 501 "FRAME_ERROR - type 9, all octets = <<\"abc\">>: unknown_frame"
        // (type 4, 0-8's out-of-band frame, is unknown in 0-9-1 as well)
        for (kind, channel) in [(9u8, 0u16), (9, 1), (4, 1), (0x41, 1)] {
            check_connection_error(
                &mut checks,
                &broker,
                &format!("frame type {kind} on channel {channel}"),
                &frame(kind, channel, b"abc"),
                501,
                Text::Prefix("FRAME_ERROR"),
                (0, 0),
            )
            .await;
        }
        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn garbage_after_handshake_is_frame_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        let cases: [(&str, &[u8]); 2] = [
            // Reads as frame type 'G' (71) with a ~540 MB size:
            // 501 "FRAME_ERROR - type 71, all octets = <<>>: {frame_too_large,539959368,131064}"
            (
                "an HTTP request",
                b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            ),
            // Reads as a 2-octet method frame with a wrong end octet:
            // 501 "FRAME_ERROR - type 1, all octets = <<\"xy\">>: {invalid_frame_end_marker,0}"
            (
                "binary garbage",
                b"\x01\x00\x01\x00\x00\x00\x02xy\x00\x00\xff\xff",
            ),
        ];
        for (case, garbage) in cases {
            let mut raw = open_with_channel(&broker).await;
            raw.send(garbage).await;
            // The stream cannot be resynchronised after garbage: RabbitMQ may take the
            // octets that follow (close-ok included) as the start of another frame and
            // keep the socket open for a while, so only the close itself is checked.
            let close = raw.read_connection_close().await;
            checks.close(case, &close, 501, Text::Prefix("FRAME_ERROR"), (0, 0));
        }
        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

// ---------------------------------------------------------------- method errors

#[tokio::test]
async fn unknown_class_or_method_closes_connection() {
    within(async {
        let broker = TestBroker::start().await;
        // RabbitMQ 3.10 sends no reply here: its reader exits with
        // {unknown_method_id,{99,99}} and the socket is closed without
        // connection.close. A broker may instead send connection.close first; the
        // only codes that fit are 540 NOT_IMPLEMENTED and 503 COMMAND_INVALID.
        for (channel, class_id, method_id) in [(1u16, 99u16, 99u16), (0, 10, 99), (1, 60, 999)] {
            let mut raw = open_with_channel(&broker).await;
            raw.send(&frame(
                FRAME_METHOD,
                channel,
                &method_bytes(class_id, method_id, b""),
            ))
            .await;
            if let Some(close) = raw.expect_connection_end().await {
                assert!(
                    matches!(close.reply_code, 503 | 540),
                    "{class_id}.{method_id}: expected the socket to be closed, or \
                     connection.close 540/503; got {close:?}"
                );
            }
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

#[tokio::test]
async fn malformed_method_arguments_are_frame_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        let declare = method_payload(&queue_declare(""));
        let cases: [(&str, Vec<u8>); 3] = [
            // 501 "FRAME_ERROR - cannot decode <<0,0,10,97,98,99>>" (class 50, method 10):
            // the queue name claims 10 octets but only 3 follow.
            (
                "truncated queue.declare",
                method_bytes(50, 10, b"\x00\x00\x0aabc"),
            ),
            // 501 "FRAME_ERROR - cannot decode <<>>"
            ("queue.declare without arguments", method_bytes(50, 10, b"")),
            // 501 "FRAME_ERROR - cannot decode <<0,0,0,4,0,0,0,0,106,117,110,107>>"
            (
                "queue.declare with trailing octets",
                [&declare[..], b"junk"].concat(),
            ),
        ];
        for (case, payload) in cases {
            check_connection_error(
                &mut checks,
                &broker,
                case,
                &frame(FRAME_METHOD, 1, &payload),
                501,
                Text::Prefix("FRAME_ERROR - cannot decode"),
                (50, 10),
            )
            .await;
        }
        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

// ---------------------------------------------------------------- content sequencing

#[tokio::test]
async fn content_without_publish_is_unexpected_frame() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        let text =
            Text::Exact("UNEXPECTED_FRAME - expected method frame, got non method frame instead");
        let cases: [(&str, Vec<u8>); 3] = [
            ("body frame without publish", frame(FRAME_BODY, 1, b"hello")),
            ("content header without publish", header_frame(1, 5)),
            (
                "header and body without publish",
                [header_frame(1, 5), frame(FRAME_BODY, 1, b"hello")].concat(),
            ),
        ];
        for (case, bytes) in cases {
            check_connection_error(&mut checks, &broker, case, &bytes, 505, text, (0, 0)).await;
        }
        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn method_where_content_expected_is_unexpected_frame() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        let publish = method_frame(1, &publish_method("", "nowhere"));

        // basic.publish followed by another method instead of the content header:
        // the ids are those of the publish whose content is incomplete.
        check_connection_error(
            &mut checks,
            &broker,
            "method instead of content header",
            &[publish.clone(), method_frame(1, &queue_declare(""))].concat(),
            505,
            Text::Exact(
                "UNEXPECTED_FRAME - expected content header for class 60, \
                 got non content header frame instead",
            ),
            (60, 40),
        )
        .await;

        // publish + header announcing 5 octets, then a method instead of the body.
        check_connection_error(
            &mut checks,
            &broker,
            "method instead of content body",
            &[publish.clone(), header_frame(1, 5), publish.clone()].concat(),
            505,
            Text::Exact(
                "UNEXPECTED_FRAME - expected content body, got non content body frame instead",
            ),
            (60, 40),
        )
        .await;

        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

// ---------------------------------------------------------------- channel misuse

#[tokio::test]
async fn frame_on_unopened_channel_is_channel_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();

        // A method on a channel that was never opened.
        check_connection_error(
            &mut checks,
            &broker,
            "queue.declare on never-opened channel 5",
            &method_frame(5, &queue_declare("")),
            504,
            Text::Exact("CHANNEL_ERROR - expected 'channel.open'"),
            (50, 10),
        )
        .await;

        // A channel that was opened and closed again counts as never opened.
        let mut raw = open_with_channel(&broker).await;
        raw.close_channel(1).await;
        raw.send_method(1, queue_declare("")).await;
        let close = raw.expect_connection_close().await;
        checks.close(
            "queue.declare on closed channel 1",
            &close,
            504,
            Text::Exact("CHANNEL_ERROR - expected 'channel.open'"),
            (50, 10),
        );

        // A content frame there is an unexpected frame instead.
        check_connection_error(
            &mut checks,
            &broker,
            "body frame on never-opened channel 5",
            &frame(FRAME_BODY, 5, b"x"),
            505,
            Text::Exact("UNEXPECTED_FRAME - expected method frame, got non method frame instead"),
            (0, 0),
        )
        .await;

        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn channel_open_on_open_channel_is_channel_error() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();
        check_connection_error(
            &mut checks,
            &broker,
            "second channel.open on channel 1",
            &method_frame(1, &channel_open()),
            504,
            Text::Exact("CHANNEL_ERROR - second 'channel.open' seen"),
            (20, 10),
        )
        .await;
        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn channel_max_limits_open_channels() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();

        // RabbitMQ enforces channel_max as a limit on the number of open channels:
        // with channel_max 10 and 10 channels open, an 11th channel.open gets
        // 530 "NOT_ALLOWED - number of channels opened (10) has reached the
        // negotiated channel_max (10)" (class 0, method 0).
        let (mut raw, _) = Raw::open_with(broker.addr, Some(10), None, 0).await;
        for channel in 1..=10 {
            raw.open_channel(channel).await;
        }
        raw.send_method(11, channel_open()).await;
        let close = raw.expect_connection_close().await;
        checks.close(
            "11th channel with channel_max 10",
            &close,
            530,
            Text::Exact(
                "NOT_ALLOWED - number of channels opened (10) has reached \
                 the negotiated channel_max (10)",
            ),
            (0, 0),
        );

        // RabbitMQ 3.10 does not check the channel *number* against channel_max:
        // with channel_max 10, channel 11 opens and works, and so does channel
        // 65535 with the default channel_max of 2047.
        for (channel_max, channel) in [(Some(10), 11u16), (None, 65535)] {
            let case = format!("channel.open on channel {channel}, channel_max {channel_max:?}");
            let (mut raw, tune) = Raw::open_with(broker.addr, channel_max, None, 0).await;
            assert_eq!(tune.channel_max, 2047);
            raw.send_method(channel, channel_open()).await;
            match raw.next_method().await {
                (ch, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if ch == channel => {
                    raw.declare_exclusive_queue(channel).await;
                    raw.close_connection().await;
                }
                (0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
                    checks.fail(
                        &case,
                        format!(
                            "expected channel.open-ok (RabbitMQ accepts it), got connection.close {} {:?} (class {}, method {})",
                            close.reply_code,
                            close.reply_text.as_str(),
                            close.class_id,
                            close.method_id
                        ),
                    );
                }
                other => panic!("{case}: expected channel.open-ok, got {other:?}"),
            }
        }

        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

#[tokio::test]
async fn channel_zero_misuse_is_rejected() {
    within(async {
        let broker = TestBroker::start().await;
        let mut checks = Checks::default();

        // A non-connection method (or connection.open again) on channel 0 of an open
        // connection: 504 "CHANNEL_ERROR - unexpected method in connection state
        // running", with the ids of the offending method.
        let cases: [(&str, AMQPClass, (u16, u16)); 3] = [
            ("queue.declare on channel 0", queue_declare(""), (50, 10)),
            ("channel.open on channel 0", channel_open(), (20, 10)),
            (
                "connection.open on an open connection",
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
                (10, 40),
            ),
        ];
        for (case, method, ids) in cases {
            check_connection_error(
                &mut checks,
                &broker,
                case,
                &method_frame(0, &method),
                504,
                Text::Exact("CHANNEL_ERROR - unexpected method in connection state running"),
                ids,
            )
            .await;
        }

        // Content on channel 0: 505 "UNEXPECTED_FRAME - type 3, all octets = <<\"x\">>"
        check_connection_error(
            &mut checks,
            &broker,
            "body frame on channel 0",
            &frame(FRAME_BODY, 0, b"x"),
            505,
            Text::Prefix("UNEXPECTED_FRAME"),
            (0, 0),
        )
        .await;

        // A heartbeat on a non-zero channel: 505 "UNEXPECTED_FRAME - type 8, all octets = <<>>"
        check_connection_error(
            &mut checks,
            &broker,
            "heartbeat frame on channel 1",
            &frame(FRAME_HEARTBEAT, 1, b""),
            505,
            Text::Prefix("UNEXPECTED_FRAME"),
            (0, 0),
        )
        .await;

        assert_broker_healthy(&broker).await;
        checks.finish();
    })
    .await;
}

// ---------------------------------------------------------------- channel-level errors

#[tokio::test]
async fn ack_of_unknown_delivery_tag_closes_channel() {
    within(async {
        let broker = TestBroker::start().await;
        let mut raw = open_with_channel(&broker).await;
        raw.open_channel(2).await;
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        )
        .await;
        // A channel error, not a connection error:
        // channel.close 406 "PRECONDITION_FAILED - unknown delivery tag 1" (basic.ack = 60.80)
        let close = raw.expect_channel_close(1).await;
        assert_eq!(
            (
                close.reply_code,
                close.reply_text.as_str(),
                close.class_id,
                close.method_id
            ),
            (406, "PRECONDITION_FAILED - unknown delivery tag 1", 60, 80)
        );

        // The connection and its other channel carry on; channel 1 can be reopened.
        let q = raw.declare_exclusive_queue(2).await;
        raw.open_channel(1).await;
        raw.publish(1, "", &q, b"after the error", 131072).await;
        let got = raw.basic_get_eventually(2, &q).await;
        assert_eq!(got.as_deref(), Some(&b"after the error"[..]));
        raw.close_connection().await;

        assert_broker_healthy(&broker).await;
    })
    .await;
}
