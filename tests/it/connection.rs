//! Connection-level behaviour, pinned against RabbitMQ 3.10: server properties and
//! capabilities, protocol header negotiation, authentication (PLAIN and AMQPLAIN),
//! vhost access, tuning (channel_max / frame_max / heartbeat), heartbeats, the
//! connection and channel close handshakes, isolation between connections, and
//! broker shutdown.
//!
//! Most tests drive the broker with a small raw-socket client (see `raw` below) so
//! that reply codes, reply texts and framing are observed exactly as sent.

use crate::common;

use common::{unique, TestBroker};
use futures_lite::StreamExt;
use lapin::{options::*, types::FieldTable as LapinTable, BasicProperties, Connection};
use std::time::Duration;

use common::raw::*;

const TIMEOUT: Duration = Duration::from_secs(5);
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a whole test body under a deadline, so a broker that never answers makes
/// the test fail instead of hanging the suite.
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out (broker did not answer?)");
}

fn under_leveret() -> bool {
    std::env::var("LEVERET_TEST_URI").is_err()
}

/// AMQP reply code carried by a channel/connection close, if `e` is one.
fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// AMQP reply text carried by a channel/connection close, if `e` is one.
fn reply_text(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_message().to_string()),
        _ => None,
    }
}

async fn lapin_connect(uri: &str) -> lapin::Result<Connection> {
    tokio::time::timeout(
        TIMEOUT,
        Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("timed out connecting")
}

/// Declares a server-named exclusive queue, publishes `body` to it through the
/// default exchange (with a publisher confirm), and gets it back with basic.get.
async fn round_trip(conn: &Connection, body: &[u8]) {
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
            "".into(),
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
            body,
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
    assert_eq!(got.delivery.data, body);
    let _ = tokio::time::timeout(TIMEOUT, ch.close(200, "bye".into())).await;
}

/// A brand-new connection to the broker can still declare, publish and get.
async fn assert_broker_healthy(broker: &TestBroker) {
    let conn = lapin_connect(&broker.uri)
        .await
        .expect("a fresh connection should still be accepted");
    round_trip(&conn, b"still alive").await;
    let _ = tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into())).await;
}

// ---------------------------------------------------------------- server properties

#[tokio::test]
async fn connection_start_advertises_server_properties_and_capabilities() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, start) = Raw::start(broker.addr).await;
        assert_eq!((start.version_major, start.version_minor), (0, 9));

        let props = start.server_properties.inner();
        for key in ["product", "version", "platform", "copyright", "information"] {
            match props.get(key) {
                Some(AMQPValue::LongString(s)) => {
                    assert!(!s.as_bytes().is_empty(), "server property {key} is empty")
                }
                other => panic!("server property {key} should be a long string, got {other:?}"),
            }
        }
        if under_leveret() {
            assert_eq!(
                props.get("product"),
                Some(&AMQPValue::LongString("Leveret".into()))
            );
        }
        let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
            panic!("server properties have no capabilities table: {props:?}");
        };
        for cap in [
            "publisher_confirms",
            "exchange_exchange_bindings",
            "basic.nack",
            "consumer_cancel_notify",
            "connection.blocked",
            "per_consumer_qos",
            "authentication_failure_close",
            "direct_reply_to",
            "consumer_priorities",
        ] {
            assert_eq!(
                caps.inner().get(cap),
                Some(&AMQPValue::Boolean(true)),
                "capability {cap} should be advertised as true"
            );
        }

        // RabbitMQ: mechanisms "PLAIN AMQPLAIN" (order not significant), locales "en_US".
        let mechanisms = String::from_utf8(start.mechanisms.as_bytes().to_vec()).unwrap();
        let mut mechanisms: Vec<&str> = mechanisms.split(' ').collect();
        mechanisms.sort_unstable();
        assert!(
            mechanisms.contains(&"PLAIN") && mechanisms.contains(&"AMQPLAIN"),
            "mechanisms: {mechanisms:?}"
        );
        assert_eq!(start.locales.as_bytes(), b"en_US");

        // The handshake still completes normally afterwards.
        raw.start_ok("PLAIN", plain("guest", "guest")).await;
        let tune = raw.expect_tune().await;
        raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
        raw.open_vhost("/").await;
        raw.expect_open_ok().await;
        raw.close_connection().await;
    })
    .await;
}

// ---------------------------------------------------------------- protocol header

#[tokio::test]
async fn unsupported_protocol_header_gets_supported_header_then_eof() {
    within(async {
        let broker = TestBroker::start().await;
        for header in [
            &b"AMQP\x00\x00\x09\x00"[..], // AMQP 0-9-0 as 0-9-1 style header
            &b"AMQP\x00\x00\x0a\x00"[..], // some future version
            &b"HTTP/1.1"[..],             // not AMQP at all
        ] {
            let mut raw = Raw::connect(broker.addr).await;
            raw.send(header).await;
            let mut reply = [0u8; 8];
            tokio::time::timeout(TIMEOUT, raw.stream.read_exact(&mut reply))
                .await
                .unwrap_or_else(|_| panic!("no reply to header {header:?}"))
                .unwrap_or_else(|e| panic!("no reply to header {header:?}: {e}"));
            assert_eq!(
                &reply, b"AMQP\x00\x00\x09\x01",
                "reply to header {header:?}"
            );
            raw.expect_eof().await;
        }
        assert_broker_healthy(&broker).await;
    })
    .await;
}

// ---------------------------------------------------------------- authentication

#[tokio::test]
async fn wrong_password_gets_access_refused() {
    within(async {
        let broker = TestBroker::start().await;

        // The client advertises authentication_failure_close, so RabbitMQ explains
        // the refusal with connection.close instead of just dropping the socket:
        // 403 "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN.
        // For details see the broker logfile."
        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.start_ok("PLAIN", plain("guest", "not-the-password"))
            .await;
        let close = raw.expect_connection_close().await;
        assert_eq!(
            (close.reply_code, close.reply_text.as_str()),
            (
                403,
                "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
                 For details see the broker logfile."
            )
        );

        // Same with AMQPLAIN, and with an unknown user.
        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.start_ok("AMQPLAIN", amqplain("guest", "not-the-password"))
            .await;
        let close = raw.expect_connection_close().await;
        assert_eq!(
            (close.reply_code, close.reply_text.as_str()),
            (
                403,
                "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. \
                 For details see the broker logfile."
            )
        );

        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.start_ok("PLAIN", plain(&unique("nobody"), "guest"))
            .await;
        let close = raw.expect_connection_close().await;
        assert_eq!(close.reply_code, 403, "{close:?}");
        assert!(
            close.reply_text.as_str().starts_with("ACCESS_REFUSED - "),
            "{close:?}"
        );

        // lapin reports the same refusal.
        let uri = broker.uri.replacen("guest:guest@", "guest:wrong@", 1);
        let err = lapin_connect(&uri)
            .await
            .expect_err("login with a wrong password should fail");
        assert_eq!(reply_code(&err), Some(403), "{err}");

        assert_broker_healthy(&broker).await;
    })
    .await;
}

#[tokio::test]
async fn amqplain_login_works() {
    within(async {
        let broker = TestBroker::start().await;

        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.start_ok("AMQPLAIN", amqplain("guest", "guest")).await;
        let tune = raw.expect_tune().await;
        raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
        raw.open_vhost("/").await;
        raw.expect_open_ok().await;
        raw.open_channel(1).await;
        raw.close_connection().await;

        let sep = if broker.uri.contains('?') { '&' } else { '?' };
        let conn = lapin_connect(&format!("{}{sep}auth_mechanism=amqplain", broker.uri))
            .await
            .expect("AMQPLAIN login");
        round_trip(&conn, b"amqplain").await;
        let _ = tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into())).await;
    })
    .await;
}

#[tokio::test]
async fn unknown_vhost_gets_not_allowed() {
    within(async {
        let broker = TestBroker::start().await;
        let vhost = unique("no-such-vhost");
        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.start_ok("PLAIN", plain("guest", "guest")).await;
        let tune = raw.expect_tune().await;
        raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
        raw.open_vhost(&vhost).await;
        // RabbitMQ: 530 "NOT_ALLOWED - vhost <name> not found", on connection.open.
        let close = raw.expect_connection_close().await;
        assert_eq!(
            (
                close.reply_code,
                close.reply_text.as_str(),
                close.class_id,
                close.method_id
            ),
            (
                530,
                &*format!("NOT_ALLOWED - vhost {vhost} not found"),
                10,
                40
            )
        );

        let err = lapin_connect(&broker.uri_for_vhost(&vhost))
            .await
            .expect_err("opening an unknown vhost should fail");
        assert_eq!(reply_code(&err), Some(530), "{err}");
        assert_eq!(
            reply_text(&err),
            Some(format!("NOT_ALLOWED - vhost {vhost} not found"))
        );

        assert_broker_healthy(&broker).await;
    })
    .await;
}

// ---------------------------------------------------------------- tuning

#[tokio::test]
async fn default_tune_values() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::start(broker.addr).await;
        raw.start_ok("PLAIN", plain("guest", "guest")).await;
        let tune = raw.expect_tune().await;
        assert_eq!(
            (tune.channel_max, tune.frame_max, tune.heartbeat),
            (2047, 131072, 60)
        );
        raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
        raw.open_vhost("/").await;
        raw.expect_open_ok().await;
        raw.close_connection().await;

        // lapin negotiates down to the server's values.
        let conn = lapin_connect(&broker.uri).await.unwrap();
        assert_eq!(conn.configuration().channel_max(), 2047);
        assert_eq!(conn.configuration().frame_max(), 131072);
        assert_eq!(conn.configuration().heartbeat(), 60);
        let _ = tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into())).await;
    })
    .await;
}

#[tokio::test]
async fn small_client_frame_max_splits_content() {
    within(async {
        let broker = TestBroker::start().await;
        let body: Vec<u8> = (0..10 * 1024).map(|i| (i % 251) as u8).collect();

        // Raw client: frame_max 4096 is accepted; a 10 KiB message published in
        // three body frames comes back to a consumer in body frames that each fit
        // in 4096 octets (7-octet header + payload + frame-end).
        let (mut raw, _) = Raw::open_with(broker.addr, None, Some(4096), 0).await;
        raw.open_channel(1).await;
        let queue = unique("frame-max");
        raw.send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: queue.as_str().into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        match raw.next_method().await {
            (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
        raw.publish(1, "", &queue, &body, 4096).await;
        raw.send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.as_str().into(),
                consumer_tag: "c1".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        match raw.next_method().await {
            (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {}
            other => panic!("expected basic.consume-ok, got {other:?}"),
        }
        match raw.next_method().await {
            (1, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => {}
            other => panic!("expected basic.deliver, got {other:?}"),
        }
        match raw.read_frame().await {
            Some(Frame::Header(1, size, _)) => assert_eq!(size, body.len() as u64),
            other => panic!("expected a content header, got {other:?}"),
        }
        let mut received = Vec::new();
        let mut frames = 0;
        while received.len() < body.len() {
            match raw.read_frame().await {
                Some(Frame::Body(1, chunk)) => {
                    assert!(
                        chunk.len() + 8 <= 4096,
                        "body frame of {} octets exceeds frame_max 4096",
                        chunk.len() + 8
                    );
                    received.extend_from_slice(&chunk);
                    frames += 1;
                }
                other => panic!("expected a content body frame, got {other:?}"),
            }
        }
        assert_eq!(received, body);
        assert!(frames >= 3, "10 KiB in {frames} frames with frame_max 4096");
        raw.close_connection().await;

        // lapin with frame_max=4096 in the URI.
        let sep = if broker.uri.contains('?') { '&' } else { '?' };
        let conn = lapin_connect(&format!("{}{sep}frame_max=4096", broker.uri))
            .await
            .expect("connect with frame_max=4096");
        assert_eq!(conn.configuration().frame_max(), 4096);
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                LapinTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = ch
            .basic_consume(
                q.name().as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                LapinTable::default(),
            )
            .await
            .unwrap();
        ch.basic_publish(
            "".into(),
            q.name().as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
        let delivery = tokio::time::timeout(TIMEOUT, consumer.next())
            .await
            .expect("timed out waiting for the 10 KiB delivery")
            .expect("consumer stream ended")
            .expect("delivery");
        assert_eq!(delivery.data, body);
        let _ = tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into())).await;
    })
    .await;
}

// ---------------------------------------------------------------- heartbeats

#[tokio::test]
async fn heartbeats_are_sent_and_silent_client_is_dropped() {
    within(async {
        let broker = TestBroker::start().await;
        // The server proposes 60 s; the client asks for 1 s, which the server accepts.
        let (mut raw, tune) = Raw::open_with(broker.addr, None, None, 1).await;
        assert_eq!(tune.heartbeat, 60);
        let opened = tokio::time::Instant::now();

        // Stay silent: the server must send heartbeats (channel 0, empty payload),
        // then drop us after about two missed intervals.
        let mut heartbeats = 0;
        let closed_after = tokio::time::timeout(Duration::from_secs(6), async {
            loop {
                match raw.read_frame().await {
                    Some(Frame::Heartbeat(0)) => heartbeats += 1,
                    None => return opened.elapsed(),
                    Some(other) => panic!("expected only heartbeats, got {other:?}"),
                }
            }
        })
        .await
        .expect("a client that sends nothing should be disconnected within ~5 s");
        eprintln!("{heartbeats} heartbeat(s); silent client dropped after {closed_after:?}");
        assert!(heartbeats >= 1, "no heartbeat frame received");
        assert!(
            closed_after >= Duration::from_millis(1500),
            "silent client dropped after {closed_after:?}, before two heartbeat intervals"
        );
        assert!(
            closed_after <= Duration::from_secs(5),
            "silent client dropped after {closed_after:?}"
        );

        // A client that does send heartbeats stays connected past that point.
        let (mut raw, _) = Raw::open_with(broker.addr, None, None, 1).await;
        let opened = tokio::time::Instant::now();
        while opened.elapsed() < Duration::from_millis(4500) {
            raw.send(&[8, 0, 0, 0, 0, 0, 0, FRAME_END]).await;
            match tokio::time::timeout(Duration::from_millis(400), raw.read_frame()).await {
                Err(_) | Ok(Some(Frame::Heartbeat(0))) => {}
                Ok(other) => panic!("expected heartbeats only, got {other:?}"),
            }
        }
        raw.open_channel(1).await;
        raw.close_connection().await;
    })
    .await;
}

// ---------------------------------------------------------------- close handshakes

#[tokio::test]
async fn client_connection_close_gets_close_ok() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        raw.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "Goodbye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        match raw.next_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
            other => panic!("expected connection.close-ok, got {other:?}"),
        }
        // Nothing else is sent after close-ok, and RabbitMQ leaves closing the socket
        // to the client (close-ok "tells the recipient that it is safe to ... close
        // the socket"). Clients rely on that: see lapin below.
        match tokio::time::timeout(Duration::from_millis(500), raw.read_frame()).await {
            Err(_) => {}
            Ok(None) => panic!(
                "the broker closed the socket right after sending close-ok; \
                 RabbitMQ waits for the client to close it"
            ),
            Ok(Some(frame)) => panic!("unexpected frame after close-ok: {frame:?}"),
        }
        drop(raw);

        // lapin's close also completes, and leaves the connection cleanly closed.
        // (RabbitMQ leaves closing the socket to the client once close-ok is sent;
        // a broker that drops the socket right away makes lapin record
        // IOError(ConnectionAborted) and end up "errored" instead of "closed".)
        let conn = lapin_connect(&broker.uri).await.unwrap();
        tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into()))
            .await
            .expect("timed out closing")
            .expect("connection.close");
        assert!(
            conn.status().closed(),
            "lapin status after close: closing={} errored={} connected={}",
            conn.status().closing(),
            conn.status().errored(),
            conn.status().connected()
        );
    })
    .await;
}

#[tokio::test]
async fn channel_close_gets_close_ok_and_number_can_be_reused() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        for round in 0..3 {
            raw.open_channel(1).await;
            raw.open_channel(2).await;
            raw.send_method(
                1,
                AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            )
            .await;
            match raw.next_method().await {
                (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
                other => panic!("round {round}: expected channel.close-ok on 1, got {other:?}"),
            }
            // Channel 2 is untouched and usable.
            raw.declare_exclusive_queue(2).await;
            raw.close_channel(2).await;
        }
        // The reopened channel 1 is usable.
        raw.open_channel(1).await;
        raw.declare_exclusive_queue(1).await;
        raw.close_connection().await;
    })
    .await;
}

#[tokio::test]
async fn connection_error_does_not_affect_other_connections() {
    within(async {
        let broker = TestBroker::start().await;
        let conn = lapin_connect(&broker.uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                unique("survivor").as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                LapinTable::default(),
            )
            .await
            .unwrap();

        // Another connection commits a hard error (channel.open twice:
        // 504 "CHANNEL_ERROR - second 'channel.open' seen").
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        raw.send_method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        let close = raw.expect_connection_close().await;
        assert_eq!(close.reply_code, 504, "{close:?}");

        // The first connection, its channel and its exclusive queue are unaffected.
        assert!(conn.status().connected());
        ch.basic_publish(
            "".into(),
            q.name().as_str().into(),
            BasicPublishOptions::default(),
            b"after",
            BasicProperties::default(),
        )
        .await
        .unwrap();
        let (ch, queue) = (&ch, q.name().as_str());
        let got = common::wait_for(
            "the message published after the error",
            TIMEOUT,
            || async move {
                tokio::time::timeout(
                    TIMEOUT,
                    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
                )
                .await
                .expect("timed out on basic.get")
                .unwrap()
                .ok_or("queue empty")
            },
        )
        .await;
        assert_eq!(got.delivery.data, b"after");
        round_trip(&conn, b"second channel").await;
        let _ = tokio::time::timeout(TIMEOUT, conn.close(200, "bye".into())).await;
        assert_broker_healthy(&broker).await;
    })
    .await;
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn broker_shutdown_closes_connections_with_320() {
    if !under_leveret() {
        // Stopping the shared RabbitMQ node is not something a test should do.
        return;
    }
    within(async {
        let broker = TestBroker::start().await;
        let conn = lapin_connect(&broker.uri).await.unwrap();
        let _ch = conn.create_channel().await.unwrap();
        let mut events = conn.events_listener();
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;

        let stop = tokio::spawn(broker.stop());

        // RabbitMQ sends 320 "CONNECTION_FORCED - broker forced connection closure
        // with reason 'shutdown'" to every client when the node stops.
        let close = raw.expect_connection_close().await;
        assert_eq!(
            (close.reply_code, close.reply_text.as_str()),
            (
                320,
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
            )
        );

        let err = tokio::time::timeout(TIMEOUT, async {
            while let Some(event) = events.next().await {
                if let lapin::Event::Error(err) = event {
                    return err;
                }
            }
            panic!("lapin's event stream ended without an error");
        })
        .await
        .expect("lapin did not report the forced close");
        assert_eq!(reply_code(&err), Some(320), "{err}");
        assert!(!conn.status().connected());

        tokio::time::timeout(TIMEOUT, stop)
            .await
            .expect("broker did not stop")
            .unwrap();
    })
    .await;
}
