//! What operators and client libraries moving from RabbitMQ meet (issue 17):
//! the three AMQP deviations client test suites found (part 8).
//!
//! Every test here passes against RabbitMQ 3.10 too
//! (`LEVERET_TEST_URI=amqp://guest:guest@127.0.0.1:5672/%2f`). Frames are
//! written by hand (tests/common/raw.rs) so that what crosses on the wire,
//! and in which order, is exactly what the test says.

mod common;

use amq_protocol::protocol::exchange;
use common::raw::*;
use common::{unique, TestBroker};
use std::time::Duration;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test timed out (broker did not answer?)");
}

// ------------------------------------------------------------ frames

fn queue_declare(name: &str, durable: bool, exclusive: bool) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable,
        exclusive,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn passive_queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn exchange_declare(name: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
        exchange: name.into(),
        kind: "direct".into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn exchange_delete(name: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
        exchange: name.into(),
        if_unused: false,
        nowait: false,
    }))
}

fn queue_delete(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
        queue: name.into(),
        if_unused: false,
        if_empty: false,
        nowait: false,
    }))
}

fn queue_bind(queue: &str, exchange: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn queue_unbind(queue: &str, exchange: &str, key: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
        queue: queue.into(),
        exchange: exchange.into(),
        routing_key: key.into(),
        arguments: FieldTable::default(),
    }))
}

fn exchange_bind(destination: &str, source: &str, key: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
        destination: destination.into(),
        source: source.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn exchange_unbind(destination: &str, source: &str, key: &str) -> AMQPClass {
    AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
        destination: destination.into(),
        source: source.into(),
        routing_key: key.into(),
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn consume(queue: &str, tag: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: queue.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

fn channel_close(code: u16, text: &str) -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: code,
        reply_text: text.into(),
        class_id: 0,
        method_id: 0,
    }))
}

fn channel_close_ok() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}))
}

/// Sends `method` on `ch` and returns the broker's next method, which must
/// be on `ch` (a channel.close is reported, not answered).
async fn call(raw: &mut Raw, ch: u16, method: AMQPClass) -> AMQPClass {
    raw.send_method(ch, method).await;
    let (got_ch, reply) = raw.next_method().await;
    assert_eq!(got_ch, ch, "reply on another channel: {reply:?}");
    reply
}

/// A method whose reply is simply "-ok": panics on anything else.
async fn ok(raw: &mut Raw, ch: u16, method: AMQPClass) {
    let what = format!("{method:?}");
    if let AMQPClass::Channel(channel::AMQPMethod::Close(c)) = call(raw, ch, method).await {
        panic!(
            "{what} closed the channel: {} {}",
            c.reply_code, c.reply_text
        );
    }
}

// ------------------------------------------- (a) unbind what is gone

/// RabbitMQ 3.10 (rabbit_binding:remove with absent_errs_only): unbinding
/// when the source exchange, the destination, or both no longer exist is
/// unbind-ok, and so is unbinding a binding that is not there. Binding to
/// something missing stays a 404 naming the source exchange first.
#[tokio::test]
async fn unbind_from_or_to_what_no_longer_exists_is_ok() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let x = unique("op-unbind-x");
        let x2 = unique("op-unbind-x2");
        let q = unique("op-unbind-q");
        ok(&mut raw, 1, exchange_declare(&x)).await;
        ok(&mut raw, 1, exchange_declare(&x2)).await;
        ok(&mut raw, 1, queue_declare(&q, false, false)).await;
        ok(&mut raw, 1, queue_bind(&q, &x, "k")).await;
        ok(&mut raw, 1, exchange_bind(&x2, &x, "k")).await;

        // The queue went: unbinding it from its exchange is still ok.
        ok(&mut raw, 1, queue_delete(&q)).await;
        match call(&mut raw, 1, queue_unbind(&q, &x, "k")).await {
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("queue.unbind naming a deleted queue: {other:?}"),
        }
        // The destination exchange went.
        ok(&mut raw, 1, exchange_delete(&x2)).await;
        match call(&mut raw, 1, exchange_unbind(&x2, &x, "k")).await {
            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("exchange.unbind naming a deleted destination: {other:?}"),
        }
        // The source exchange went, the queue exists.
        ok(&mut raw, 1, queue_declare(&q, false, false)).await;
        ok(&mut raw, 1, exchange_declare(&x2)).await;
        ok(&mut raw, 1, exchange_delete(&x)).await;
        match call(&mut raw, 1, queue_unbind(&q, &x, "k")).await {
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("queue.unbind naming a deleted exchange: {other:?}"),
        }
        match call(&mut raw, 1, exchange_unbind(&x2, &x, "k")).await {
            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("exchange.unbind naming a deleted source: {other:?}"),
        }
        // Both ends gone.
        let nowhere = unique("op-unbind-none");
        match call(&mut raw, 1, queue_unbind(&nowhere, &nowhere, "k")).await {
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("queue.unbind naming nothing that exists: {other:?}"),
        }
        match call(&mut raw, 1, exchange_unbind(&nowhere, &nowhere, "k")).await {
            AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("exchange.unbind naming nothing that exists: {other:?}"),
        }
        // Both ends exist, no such binding.
        ok(&mut raw, 1, exchange_declare(&x)).await;
        match call(&mut raw, 1, queue_unbind(&q, &x, "no-such-key")).await {
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("queue.unbind of a binding that is not there: {other:?}"),
        }

        // Binding is not unbinding: a missing end is 404, the source first.
        match call(&mut raw, 1, queue_bind(&nowhere, &nowhere, "k")).await {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                assert_eq!(c.reply_code, 404);
                assert_eq!(
                    c.reply_text.as_str(),
                    format!("NOT_FOUND - no exchange '{nowhere}' in vhost '/'")
                );
            }
            other => panic!("queue.bind naming nothing that exists: {other:?}"),
        }
        raw.send_method(1, channel_close_ok()).await;

        raw.open_channel(1).await;
        ok(&mut raw, 1, exchange_delete(&x)).await;
        ok(&mut raw, 1, exchange_delete(&x2)).await;
        ok(&mut raw, 1, queue_delete(&q)).await;
        raw.close_connection().await;
        drop(raw);
        broker.stop().await;
    })
    .await;
}

/// The exclusivity of another connection's queue matters only when there
/// is a binding to remove (RabbitMQ runs its check on an existing binding).
#[tokio::test]
async fn unbind_of_another_connections_exclusive_queue() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut owner, _) = Raw::open(broker.addr).await;
        owner.open_channel(1).await;
        let q = owner.declare_exclusive_queue(1).await;
        ok(&mut owner, 1, queue_bind(&q, "amq.direct", "bound")).await;

        let (mut other, _) = Raw::open(broker.addr).await;
        other.open_channel(1).await;
        match call(&mut other, 1, queue_unbind(&q, "amq.direct", "not-bound")).await {
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(_)) => {}
            other => panic!("unbinding nothing from another's exclusive queue: {other:?}"),
        }
        match call(&mut other, 1, queue_unbind(&q, "amq.direct", "bound")).await {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                assert_eq!(c.reply_code, 405);
                assert_eq!(
                    c.reply_text.as_str(),
                    format!(
                        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
                    )
                );
            }
            other => panic!("unbinding another's exclusive queue: {other:?}"),
        }
        other.send_method(1, channel_close_ok()).await;
        other.close_connection().await;
        owner.close_connection().await;
        drop((other, owner));
        broker.stop().await;
    })
    .await;
}

// ------------------------------------ (b) channel.close crossing close

/// The broker closes a channel (404) while the client's own channel.close
/// is on its way: the broker answers that close with close-ok, keeps the
/// channel closing until the client's close-ok to its own close, accepts
/// it, and the connection goes on (the channel number can be reused).
#[tokio::test]
async fn channel_close_crossing_the_brokers_close() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        raw.open_channel(2).await;
        let missing = unique("op-cross-missing");
        // One write: the broker reads the client's close after it has
        // sent its own, exactly as when the two cross on the wire.
        let mut bytes = method_frame(1, &passive_queue_declare(&missing));
        bytes.extend(method_frame(1, &channel_close(200, "client closing")));
        raw.send(&bytes).await;

        match raw.next_method().await {
            (1, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, 404);
                assert_eq!(
                    c.reply_text.as_str(),
                    format!("NOT_FOUND - no queue '{missing}' in vhost '/'")
                );
            }
            other => panic!("expected the broker's channel.close, got {other:?}"),
        }
        match raw.next_method().await {
            (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
            other => panic!("expected close-ok to the client's close, got {other:?}"),
        }
        // The client answers the broker's close, as the protocol says.
        raw.send_method(1, channel_close_ok()).await;

        // The connection is still open and both channels work.
        let q = raw.declare_exclusive_queue(2).await;
        raw.open_channel(1).await;
        assert_eq!(raw.basic_get(1, &q).await, None);
        raw.close_channel(1).await;
        raw.close_connection().await;
        drop(raw);
        broker.stop().await;
    })
    .await;
}

/// The same crossing, with more of the client's methods behind its close:
/// a second channel.close is answered again, other methods are dropped,
/// and nothing reaches the connection until the close-ok.
#[tokio::test]
async fn closing_channel_answers_every_close_and_drops_the_rest() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        let missing = unique("op-cross-missing");
        let mut bytes = method_frame(1, &passive_queue_declare(&missing));
        bytes.extend(method_frame(1, &queue_declare("", false, true)));
        bytes.extend(method_frame(1, &channel_close(200, "first")));
        bytes.extend(method_frame(1, &channel_close(200, "second")));
        raw.send(&bytes).await;
        match raw.next_method().await {
            (1, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => assert_eq!(c.reply_code, 404),
            other => panic!("expected the broker's channel.close, got {other:?}"),
        }
        for n in ["first", "second"] {
            match raw.next_method().await {
                (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {}
                other => panic!("expected close-ok to the {n} close, got {other:?}"),
            }
        }
        raw.send_method(1, channel_close_ok()).await;
        raw.open_channel(1).await;
        raw.close_channel(1).await;
        raw.close_connection().await;
        drop(raw);
        broker.stop().await;
    })
    .await;
}

// --------------------------------- (c) queue.delete with own consumer

/// Deletes `q` on the channel that consumes from it: delete-ok comes first,
/// then basic.cancel for the consumer (RabbitMQ's order).
async fn delete_ok_then_cancel(raw: &mut Raw, q: &str) {
    let tag = unique("op-del-ctag");
    match call(raw, 1, consume(q, &tag)).await {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => panic!("expected consume-ok, got {other:?}"),
    }
    raw.send_method(1, queue_delete(q)).await;
    match raw.next_method().await {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(d))) => assert_eq!(d.message_count, 0),
        other => panic!("expected queue.delete-ok first, got {other:?}"),
    }
    match raw.next_method().await {
        (1, AMQPClass::Basic(basic::AMQPMethod::Cancel(c))) => {
            assert_eq!(c.consumer_tag.as_str(), tag)
        }
        other => panic!("expected basic.cancel after delete-ok, got {other:?}"),
    }
}

#[tokio::test]
async fn queue_delete_ok_comes_before_the_consumers_cancel() {
    within(async {
        let broker = TestBroker::start().await;
        let (mut raw, _) = Raw::open(broker.addr).await;
        raw.open_channel(1).await;
        // A transient queue: delete-ok is sent at once.
        let q = raw.declare_exclusive_queue(1).await;
        delete_ok_then_cancel(&mut raw, &q).await;
        // A durable queue: delete-ok waits until the deletion is on disk.
        let q = unique("op-del-durable");
        ok(&mut raw, 1, queue_declare(&q, true, false)).await;
        delete_ok_then_cancel(&mut raw, &q).await;
        // The channel goes on.
        let q = raw.declare_exclusive_queue(1).await;
        assert_eq!(raw.basic_get(1, &q).await, None);
        raw.close_connection().await;
        drop(raw);
        broker.stop().await;
    })
    .await;
}
