//! What operators and client libraries moving from RabbitMQ meet (issue 17):
//! the three AMQP deviations client test suites found (part 8),
//! RabbitMQ's own rabbitmqadmin driving the management API (part 4), and
//! the broker's log (part 6, Leveret only: its binary as a child process).
//!
//! Every AMQP and API test here passes against RabbitMQ 3.10 too
//! (`LEVERET_TEST_URI=amqp://guest:guest@127.0.0.1:5672/%2f`, and
//! `LEVERET_TEST_MGMT=127.0.0.1:15672` for the API). AMQP frames are
//! written by hand (tests/common/raw.rs) so that what crosses on the wire,
//! and in which order, is exactly what the test says.

use crate::common;

use amq_protocol::protocol::exchange;
use common::http::Api;
use common::process::{BrokerProcess, TempDir};
use common::raw::*;
use common::{against_other_broker, unique, TestBroker};
use serde_json::Value;
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

// ------------------------------------------------------- rabbitmqadmin

/// Debian's rabbitmqadmin (package rabbitmq-server; .ci/run installs it).
const RABBITMQADMIN: &str = "/usr/bin/rabbitmqadmin";

/// rabbitmqadmin pointed at one broker's management API as guest.
struct Admin {
    api: Api,
}

/// What one rabbitmqadmin run printed.
struct Run {
    ok: bool,
    out: String,
}

impl Admin {
    async fn run(&self, args: &[&str]) -> Run {
        let mut command = std::process::Command::new(RABBITMQADMIN);
        command
            .args(["-H", &self.api.addr.ip().to_string()])
            .args(["-P", &self.api.addr.port().to_string()])
            .args(["-u", &self.api.user, "-p", &self.api.password])
            .args(args);
        // Blocking: off the runtime the in-process broker runs on.
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("run rabbitmqadmin");
        Run {
            ok: output.status.success(),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        }
    }

    /// Runs a command that must succeed; returns what it printed.
    async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(run.ok, "rabbitmqadmin {args:?} failed:\n{}", run.out);
        run.out
    }

    /// Runs a command that must fail; returns what it printed.
    async fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(!run.ok, "rabbitmqadmin {args:?} succeeded:\n{}", run.out);
        run.out
    }

    /// `list …` (or `get …`) in raw JSON.
    async fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["-f", "raw_json"];
        all.extend_from_slice(args);
        let out = self.ok(&all).await;
        match serde_json::from_str(out.trim()) {
            Ok(Value::Array(items)) => items,
            _ => panic!("rabbitmqadmin {args:?} printed no JSON list:\n{out}"),
        }
    }

    /// The `list` of `what` whose field `key` is `value`.
    async fn find(&self, what: &str, key: &str, value: &str) -> Vec<Value> {
        self.json(&["list", what])
            .await
            .into_iter()
            .filter(|item| item[key] == value)
            .collect()
    }
}

/// Every everyday rabbitmqadmin command, as an operator types it, against
/// the broker's management API: what RabbitMQ's API reads (string numbers,
/// fields it does not use such as `exchange`, `vhost` and `queue_type`),
/// Leveret must read too.
#[tokio::test]
async fn rabbitmqadmin_everyday_commands() {
    if !std::path::Path::new(RABBITMQADMIN).exists() {
        eprintln!("skipped: {RABBITMQADMIN} is not installed (Debian package rabbitmq-server)");
        return;
    }
    within(async {
        let broker = TestBroker::start().await;
        let Some(api) = Api::of(&broker) else {
            eprintln!("skipped: no management API (set LEVERET_TEST_MGMT)");
            return;
        };
        let admin = Admin { api };
        let vhost = unique("op-admin-vhost");
        let user = unique("op-admin-user");
        let x = unique("op-admin-x");
        let q = unique("op-admin-q");

        // Listing.
        for what in [
            "queues",
            "exchanges",
            "bindings",
            "users",
            "vhosts",
            "connections",
            "channels",
            "consumers",
            "permissions",
            "nodes",
        ] {
            admin.ok(&["list", what]).await;
        }
        admin.ok(&["show", "overview"]).await;
        assert_eq!(admin.find("exchanges", "name", "amq.topic").await.len(), 1);

        // Vhosts, users, permissions (rabbitmqadmin sends `vhost` in each body).
        admin
            .ok(&["declare", "vhost", &format!("name={vhost}")])
            .await;
        assert_eq!(admin.find("vhosts", "name", &vhost).await.len(), 1);
        admin
            .ok(&[
                "declare",
                "user",
                &format!("name={user}"),
                "password=secret",
                "tags=monitoring",
            ])
            .await;
        let found = admin.find("users", "name", &user).await;
        assert_eq!(found.len(), 1, "{found:?}");
        let tags = &found[0]["tags"];
        assert!(
            tags == "monitoring" || tags == &serde_json::json!(["monitoring"]),
            "{found:?}"
        );
        admin
            .ok(&[
                "declare",
                "permission",
                &format!("vhost={vhost}"),
                &format!("user={user}"),
                "configure=^cfg",
                "write=.*",
                "read=^r",
            ])
            .await;
        let found = admin.find("permissions", "user", &user).await;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0]["vhost"], vhost.as_str());
        assert_eq!(found[0]["configure"], "^cfg");
        assert_eq!(found[0]["read"], "^r");

        // Exchanges, queues (queue_type as rabbitmqadmin sends it), bindings.
        admin
            .ok(&[
                "declare",
                "exchange",
                &format!("name={x}"),
                "type=topic",
                "durable=false",
            ])
            .await;
        let found = admin.find("exchanges", "name", &x).await;
        assert_eq!(found[0]["type"], "topic");
        assert_eq!(found[0]["durable"], false);
        admin
            .ok(&["declare", "queue", &format!("name={q}"), "durable=false"])
            .await;
        let classic = format!("{q}-classic");
        admin
            .ok(&[
                "declare",
                "queue",
                &format!("name={classic}"),
                "queue_type=classic",
                "durable=false",
            ])
            .await;
        let quorum = format!("{q}-quorum");
        admin
            .ok(&[
                "declare",
                "queue",
                &format!("name={quorum}"),
                "queue_type=quorum",
            ])
            .await;
        assert_eq!(
            admin.find("queues", "name", &classic).await[0]["type"],
            "classic"
        );
        assert_eq!(
            admin.find("queues", "name", &quorum).await[0]["type"],
            "quorum"
        );
        // A quorum queue must be durable: the same refusal as queue.declare's.
        let out = admin
            .fails(&[
                "declare",
                "queue",
                &format!("name={q}-transient-quorum"),
                "queue_type=quorum",
                "durable=false",
            ])
            .await;
        assert!(out.contains("invalid property 'non-durable'"), "{out}");
        let stream = format!("{q}-stream");
        let args = [
            "declare",
            "queue",
            &format!("name={stream}"),
            "queue_type=stream",
        ];
        admin.ok(&args).await;
        admin
            .ok(&["delete", "queue", &format!("name={stream}")])
            .await;
        admin
            .ok(&[
                "declare",
                "binding",
                &format!("source={x}"),
                &format!("destination={q}"),
                "routing_key=a.*",
            ])
            .await;
        let bound = admin.find("bindings", "source", &x).await;
        assert_eq!(bound.len(), 1, "{bound:?}");
        assert_eq!(bound[0]["destination"], q.as_str());
        assert_eq!(bound[0]["routing_key"], "a.*");

        // Publish (rabbitmqadmin sends `exchange` and `vhost` in the body)
        // and get (`count` as a string).
        let out = admin
            .ok(&[
                "publish",
                &format!("exchange={x}"),
                "routing_key=a.b",
                "payload=through the topic",
            ])
            .await;
        assert!(out.contains("Message published"), "{out}");
        assert!(!out.contains("NOT routed"), "{out}");
        let out = admin
            .ok(&["publish", &format!("routing_key={q}"), "payload=direct"])
            .await;
        assert!(!out.contains("NOT routed"), "{out}");
        let out = admin
            .ok(&[
                "publish",
                &format!("routing_key={q}-nowhere"),
                "payload=lost",
            ])
            .await;
        assert!(out.contains("Message published but NOT routed"), "{out}");

        let got = admin.json(&["get", &format!("queue={q}")]).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["payload"], "through the topic");
        assert_eq!(got[0]["exchange"], x.as_str());
        assert_eq!(got[0]["message_count"], 1);
        let got = admin
            .json(&[
                "get",
                &format!("queue={q}"),
                "ackmode=ack_requeue_false",
                "count=5",
            ])
            .await;
        let payloads: Vec<&Value> = got.iter().map(|m| &m["payload"]).collect();
        assert_eq!(payloads, ["through the topic", "direct"], "{got:?}");
        assert_eq!(got[0]["redelivered"], true);
        assert!(admin.json(&["get", &format!("queue={q}")]).await.is_empty());

        // Purge.
        admin
            .ok(&["publish", &format!("routing_key={q}"), "payload=purged"])
            .await;
        admin.ok(&["purge", "queue", &format!("name={q}")]).await;
        assert!(admin.json(&["get", &format!("queue={q}")]).await.is_empty());

        // Export, delete, import: the queue and its binding come back.
        let file = std::env::temp_dir().join(unique("op-admin-defs.json"));
        let file_arg = file.to_str().unwrap();
        admin.ok(&["export", file_arg]).await;
        let defs: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let names = |key: &str| -> Vec<String> {
            defs[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["name"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert!(names("queues").contains(&q), "{defs}");
        assert!(names("exchanges").contains(&x), "{defs}");
        assert!(names("users").contains(&user), "{defs}");
        assert!(names("vhosts").contains(&vhost), "{defs}");
        // Transient queues and exchanges are not exported: make a durable
        // pair to see import bring them back.
        let dq = format!("{q}-durable");
        let dx = format!("{x}-durable");
        admin.ok(&["declare", "queue", &format!("name={dq}")]).await;
        admin
            .ok(&["declare", "exchange", &format!("name={dx}"), "type=fanout"])
            .await;
        admin
            .ok(&[
                "declare",
                "binding",
                &format!("source={dx}"),
                &format!("destination={dq}"),
            ])
            .await;
        admin.ok(&["export", file_arg]).await;
        admin.ok(&["delete", "queue", &format!("name={dq}")]).await;
        admin
            .ok(&["delete", "exchange", &format!("name={dx}")])
            .await;
        assert!(admin.find("queues", "name", &dq).await.is_empty());
        let out = admin.ok(&["import", file_arg]).await;
        assert!(out.contains("Uploaded definitions"), "{out}");
        assert_eq!(admin.find("queues", "name", &dq).await.len(), 1);
        assert_eq!(admin.find("bindings", "source", &dx).await.len(), 1);
        let _ = std::fs::remove_file(&file);

        // Close a connection by name.
        let conn_name = unique("op-admin-conn");
        let conn = lapin::Connection::connect(
            &broker.uri,
            lapin::ConnectionProperties::default().with_connection_name(conn_name.clone().into()),
        )
        .await
        .expect("connect");
        let _channel = conn.create_channel().await.expect("channel.open");
        // RabbitMQ lists connections from its statistics, a moment late.
        let mut listed = Vec::new();
        for _ in 0..100 {
            listed = admin
                .json(&["list", "connections"])
                .await
                .into_iter()
                .filter(|c| c["client_properties"]["connection_name"] == conn_name.as_str())
                .collect();
            if !listed.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(listed.len(), 1, "connection {conn_name} never listed");
        let name = listed[0]["name"].as_str().unwrap().to_string();
        admin
            .ok(&["close", "connection", &format!("name={name}")])
            .await;
        for _ in 0..100 {
            if !conn.status().connected() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!conn.status().connected(), "the connection is still open");

        // Deleting, each undone in the listing.
        admin
            .ok(&[
                "delete",
                "binding",
                &format!("source={x}"),
                "destination_type=queue",
                &format!("destination={q}"),
                "properties_key=a.*",
            ])
            .await;
        assert!(admin.find("bindings", "source", &x).await.is_empty());
        for (what, name) in [
            ("exchange", &x),
            ("exchange", &dx),
            ("queue", &q),
            ("queue", &classic),
            ("queue", &quorum),
            ("queue", &dq),
        ] {
            admin.ok(&["delete", what, &format!("name={name}")]).await;
        }
        assert!(admin.find("queues", "name", &q).await.is_empty());
        admin
            .ok(&[
                "delete",
                "permission",
                &format!("vhost={vhost}"),
                &format!("user={user}"),
            ])
            .await;
        assert!(admin.find("permissions", "user", &user).await.is_empty());
        admin.ok(&["delete", "user", &format!("name={user}")]).await;
        assert!(admin.find("users", "name", &user).await.is_empty());
        admin
            .ok(&["delete", "vhost", &format!("name={vhost}")])
            .await;
        assert!(admin.find("vhosts", "name", &vhost).await.is_empty());

        // Vhost limits (issue 17 part 2), also as runtime parameters.
        admin
            .ok(&[
                "declare",
                "vhost_limit",
                "vhost=/",
                "name=max-queues",
                "value=100000",
            ])
            .await;
        let limits = admin.find("parameters", "component", "vhost-limits").await;
        assert!(
            limits
                .iter()
                .any(|p| p["vhost"] == "/" && p["value"]["max-queues"] == 100000),
            "{limits:?}"
        );
        admin.ok(&["list", "vhost_limits"]).await;
        admin
            .ok(&["delete", "vhost_limit", "vhost=/", "name=max-queues"])
            .await;

        // Policies and operator policies (issue 17 part 1).
        let policy = unique("op-admin-policy");
        admin.ok(&["list", "policies"]).await;
        admin.ok(&["list", "operator_policies"]).await;
        admin
            .ok(&[
                "declare",
                "policy",
                &format!("name={policy}"),
                "pattern=^op-admin-nothing$",
                r#"definition={"max-length":1}"#,
            ])
            .await;
        admin
            .ok(&["delete", "policy", &format!("name={policy}")])
            .await;

        // A parameter of a component neither broker has (RabbitMQ without
        // its federation plugin): the same refusal.
        let out = admin
            .fails(&[
                "declare",
                "parameter",
                "component=federation-upstream",
                "name=op-admin-upstream",
                r#"value={"uri":"amqp://upstream"}"#,
            ])
            .await;
        assert!(
            out.contains("component federation-upstream not found"),
            "{out}"
        );
        broker.stop().await;
    })
    .await;
}

/// The API reads bodies as RabbitMQ's does: fields it does not use are
/// ignored, `count` and `truncate` may be strings, a bad number is
/// RabbitMQ's 400 `["not_integer", …]`, unknown message properties are
/// ignored.
#[tokio::test]
async fn api_reads_request_bodies_as_rabbitmq() {
    within(async {
        let broker = TestBroker::start().await;
        let Some(api) = Api::of(&broker) else {
            eprintln!("skipped: no management API (set LEVERET_TEST_MGMT)");
            return;
        };
        let q = unique("op-api-q");
        let x = unique("op-api-x");
        let vhost = unique("op-api-vhost");
        let user = unique("op-api-user");
        let extra = serde_json::json!({"no-such-field": 1, "vhost": "/"});
        let with_extra = |mut body: Value| {
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        let r = api
            .put(
                &format!("/api/queues/%2f/{q}"),
                with_extra(serde_json::json!({"durable": false, "queue_type": "classic"})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = api
            .put(
                &format!("/api/exchanges/%2f/{x}"),
                with_extra(serde_json::json!({"type": "fanout", "durable": false})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = api
            .post(
                &format!("/api/bindings/%2f/e/{x}/q/{q}"),
                with_extra(serde_json::json!({"routing_key": ""})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = api
            .put(
                &format!("/api/vhosts/{vhost}"),
                with_extra(serde_json::json!({})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = api
            .put(
                &format!("/api/users/{user}"),
                with_extra(serde_json::json!({"password": "p", "tags": ""})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let r = api
            .put(
                &format!("/api/permissions/{vhost}/{user}"),
                with_extra(serde_json::json!({"configure": "", "write": "", "read": ""})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        for body in ["0123456789", "abcdefghij"] {
            let r = api
                .post(
                    &format!("/api/exchanges/%2f/{x}/publish"),
                    with_extra(serde_json::json!({
                        "exchange": x,
                        "routing_key": "",
                        "payload": body,
                        "payload_encoding": "string",
                        "properties": {"no-such-property": "x", "delivery_mode": 2},
                    })),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.json["routed"], true);
        }

        let get = |count: Value, truncate: Value| {
            with_extra(serde_json::json!({
                "count": count,
                "ackmode": "ack_requeue_true",
                "encoding": "auto",
                "truncate": truncate,
            }))
        };
        let path = format!("/api/queues/%2f/{q}/get");
        let r = api.post(&path, get("2".into(), "4".into())).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let payloads: Vec<&Value> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|m| &m["payload"])
            .collect();
        assert_eq!(payloads, ["0123", "abcd"], "{}", r.text);
        let r = api.post(&path, get(1.into(), 100.into())).await;
        assert_eq!(r.json.as_array().map(Vec::len), Some(1), "{}", r.text);
        let r = api.post(&path, get("two".into(), Value::Null)).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.json["reason"], serde_json::json!(["not_integer", "two"]));
        let r = api.post(&path, get(1.into(), "abc".into())).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.json["reason"], serde_json::json!(["not_integer", "abc"]));

        for path in [
            format!("/api/queues/%2f/{q}"),
            format!("/api/exchanges/%2f/{x}"),
            format!("/api/users/{user}"),
            format!("/api/vhosts/{vhost}"),
        ] {
            let r = api.delete(&path).await;
            assert_eq!(r.status, 204, "{path}: {}", r.text);
        }
        broker.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------- logs

/// Waits up to ten seconds for a log line containing every one of `parts`.
fn log_line(broker: &BrokerProcess, parts: &[&str]) -> String {
    broker
        .wait_for_log(Duration::from_secs(10), |l| {
            parts.iter().all(|p| l.contains(p))
        })
        .unwrap_or_else(|| panic!("no log line with {parts:?}; log:\n{}", broker.stderr()))
}

/// Connections are logged opened and closed with RabbitMQ's name for them
/// (peer -> local, then the client-provided name), their user and vhost;
/// channel errors at warning with all of that and RabbitMQ's description;
/// a refused login with its reason.
#[tokio::test]
async fn log_names_connections_channel_errors_and_refused_logins() {
    if against_other_broker() {
        return;
    }
    within(async {
        let data = TempDir::new("operator-log");
        let broker = BrokerProcess::start(data.path());
        let conn_name = unique("op-log-conn");
        let conn = lapin::Connection::connect(
            &broker.uri(),
            lapin::ConnectionProperties::default().with_connection_name(conn_name.clone().into()),
        )
        .await
        .expect("connect");
        let opened = log_line(&broker, &["connection opened", &conn_name]);
        assert!(opened.contains(" INFO "), "{opened}");
        assert!(opened.contains(&format!("- {conn_name}\"")), "{opened}");
        assert!(opened.contains("user=\"guest\" vhost=\"/\""), "{opened}");
        let at = opened.find("connection=\"").unwrap() + 12;
        let logged_name = opened[at..].split('"').next().unwrap().to_string();
        assert!(
            logged_name.starts_with("127.0.0.1:") && logged_name.contains(&format!(" -> {} - ", broker.addr())),
            "{opened}"
        );

        let channel = conn.create_channel().await.expect("channel.open");
        let missing = unique("op-log-missing");
        let declared = channel
            .queue_declare(
                missing.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        assert!(declared.is_err());
        let error = log_line(&broker, &["channel error", &missing]);
        assert!(error.contains(" WARN "), "{error}");
        assert!(error.contains(&format!("connection={logged_name:?}")), "{error}");
        assert!(error.contains("user=\"guest\" vhost=\"/\" channel=1"), "{error}");
        assert!(
            error.contains(&format!(
                "operation queue.declare caused a channel exception not_found: no queue '{missing}' in vhost '/'"
            )),
            "{error}"
        );

        // A name with a newline cannot forge a log line.
        let forged = format!("{missing}\nWARN forged");
        let channel = conn.create_channel().await.expect("channel.open");
        let declared = channel
            .queue_declare(
                forged.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await;
        assert!(declared.is_err());
        log_line(&broker, &[&format!("{missing}\\nWARN forged")]);
        assert!(
            !broker.log_lines().iter().any(|l| l.starts_with("WARN forged")),
            "{}",
            broker.stderr()
        );

        conn.close(200, "bye".into()).await.expect("connection.close");
        let closed = log_line(&broker, &["connection closed", &conn_name]);
        assert!(closed.contains(&format!("connection={logged_name:?}")), "{closed}");
        assert!(closed.contains("user=\"guest\" vhost=\"/\""), "{closed}");

        let addr = broker.addr().parse().unwrap();
        // A client that goes without connection.close: a warning, as in
        // RabbitMQ's log.
        let (raw, _) = Raw::open(addr).await;
        let local = raw.stream.local_addr().unwrap().to_string();
        drop(raw);
        let dropped = log_line(&broker, &["connection closed", &format!("{local} ->")]);
        assert!(dropped.contains(" WARN "), "{dropped}");
        assert!(
            dropped.contains("reason=\"client unexpectedly closed TCP connection\""),
            "{dropped}"
        );

        for (user, password, why) in [
            ("guest", "not-the-password", "wrong password"),
            ("op-log-nobody", "x", "no such user"),
        ] {
            let (mut raw, _) = Raw::start(addr).await;
            raw.start_ok("PLAIN", plain(user, password)).await;
            let close = raw.expect_connection_close().await;
            assert_eq!(close.reply_code, 403);
            assert!(close.reply_text.as_str().contains("see the broker logfile"));
            let refused = log_line(&broker, &["login refused", user]);
            assert!(refused.contains(" WARN "), "{refused}");
            assert!(
                refused.contains(&format!(
                    "PLAIN login refused: user '{user}' - invalid credentials ({why})"
                )),
                "{refused}"
            );
        }
        drop(broker);
    })
    .await;
}

/// The leveret binary with `args` in `dir`, without RUST_LOG (so the
/// configured level decides), its stderr collected; what
/// tests/common/process.rs does not offer.
struct Bare {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Bare {
    fn launch(dir: &std::path::Path, args: &[&str]) -> Bare {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start leveret");
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Bare { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits up to ten seconds for a line containing `part`.
    async fn wait_for(&self, part: &str) -> String {
        for _ in 0..500 {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(part)) {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no log line with {part:?}; log:\n{}", self.log());
    }

    /// Waits up to ten seconds for the process to exit.
    async fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        for _ in 0..500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free a moment ago, for a broker whose log will not say which
/// port it took.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw connection to a `Bare` broker on `addr`, once it listens.
async fn raw_when_listening(broker: &Bare, addr: std::net::SocketAddr) -> Raw {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Raw::start(addr).await.0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the broker never listened on {addr}; log:\n{}",
        broker.log()
    );
}

/// `log_level = "warning"`, RabbitMQ's spelling, logs warnings (a refused
/// login) and nothing below them.
#[tokio::test]
async fn log_level_warning_as_rabbitmq_spells_it() {
    if against_other_broker() {
        return;
    }
    within(async {
        let dir = TempDir::new("operator-log-warning");
        std::fs::write(
            dir.path().join("broker.toml"),
            "[server]\nlog_level = \"warning\"\n",
        )
        .unwrap();
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let broker = Bare::launch(
            dir.path(),
            &[
                "serve",
                "--config",
                "broker.toml",
                "--listen",
                &listen,
                "--stream-listen",
                "127.0.0.1:0",
                "--mgmt-listen",
                "127.0.0.1:0",
                "--data-dir",
                "data",
            ],
        );
        let mut raw = raw_when_listening(&broker, listen.parse().unwrap()).await;
        raw.start_ok("PLAIN", plain("guest", "wrong")).await;
        assert_eq!(raw.expect_connection_close().await.reply_code, 403);
        let refused = broker.wait_for("login refused").await;
        assert!(refused.contains(" WARN "), "{refused}");
        let log = broker.log();
        assert!(
            !log.contains(" INFO "),
            "info lines at level warning:\n{log}"
        );
    })
    .await;
}

/// `log_file`: the log goes to a file rotated daily, here as JSON lines;
/// old rotated files beyond `log_max_files` are removed at start, other
/// files in the directory are left alone.
#[tokio::test]
async fn log_file_rotated_daily_as_json_lines() {
    if against_other_broker() {
        return;
    }
    within(async {
        let dir = TempDir::new("operator-log-file");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        for old in [
            "leveret.log.2020-01-01",
            "leveret.log.2020-01-02",
            "notes.txt",
        ] {
            std::fs::write(logs.join(old), "old\n").unwrap();
        }
        std::fs::write(
            dir.path().join("broker.toml"),
            "[server]\nlog_file = \"logs/leveret.log\"\nlog_format = \"json\"\nlog_max_files = 2\n",
        )
        .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let broker = Bare::launch(
            dir.path(),
            &[
                "--config",
                "broker.toml",
                "--listen",
                &listen,
                "--stream-listen",
                "127.0.0.1:0",
                "--mgmt-listen",
                "127.0.0.1:0",
                "--data-dir",
                "data",
            ],
        );
        let mut raw = raw_when_listening(&broker, listen.parse().unwrap()).await;
        raw.start_ok("PLAIN", plain("guest", "wrong")).await;
        assert_eq!(raw.expect_connection_close().await.reply_code, 403);

        let today = format!("leveret.log.{}", utc_date_now());
        let mut refused = None;
        for _ in 0..250 {
            let text = std::fs::read_to_string(logs.join(&today)).unwrap_or_default();
            refused = text
                .lines()
                .find(|l| l.contains("login refused"))
                .map(str::to_string);
            if refused.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let line = refused.unwrap_or_else(|| {
            panic!(
                "no login refused line in logs/{today}; stderr:\n{}",
                broker.log()
            )
        });
        let json: Value = serde_json::from_str(&line).expect("a JSON log line");
        assert_eq!(json["level"], "WARN", "{line}");
        assert!(
            json["fields"]["message"].as_str().is_some_and(
                |m| m.contains("PLAIN login refused: user 'guest' - invalid credentials")
            ),
            "{line}"
        );
        let mut files: Vec<String> = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(
            files.contains(&today) && files.contains(&"notes.txt".to_string()),
            "{files:?}"
        );
        assert!(
            !broker.log().contains(" INFO "),
            "the log went to stderr too"
        );
    })
    .await;
}

/// Today's date in UTC, `YYYY-MM-DD` (the daily log file's suffix).
fn utc_date_now() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// An unknown log level stops the start with a clear error, instead of a
/// broker that silently logs nothing.
#[tokio::test]
async fn unknown_log_level_stops_the_start() {
    if against_other_broker() {
        return;
    }
    within(async {
        let dir = TempDir::new("operator-log-unknown");
        std::fs::write(
            dir.path().join("broker.toml"),
            "[server]\nlog_level = \"verbose\"\n",
        )
        .unwrap();
        let mut broker = Bare::launch(
            dir.path(),
            &[
                "serve",
                "--config",
                "broker.toml",
                "--listen",
                "127.0.0.1:0",
                "--stream-listen",
                "127.0.0.1:0",
                "--mgmt-listen",
                "127.0.0.1:0",
                "--data-dir",
                "data",
            ],
        );
        let status = broker.wait_exit().await;
        let log = broker.log();
        assert!(
            status.is_some_and(|s| !s.success()),
            "leveret did not fail to start ({status:?}); log:\n{log}"
        );
        assert!(
            log.contains("server.log_level: unknown level 'verbose'"),
            "{log}"
        );
    })
    .await;
}

// ------------------------------------------------------------ start-up

/// `leveret --listen …` is `leveret serve --listen …`, and the data
/// directory, given relative, is logged as the absolute path it is.
#[tokio::test]
async fn top_level_flags_serve_and_the_data_directory_is_logged_absolute() {
    if against_other_broker() {
        return;
    }
    within(async {
        let dir = TempDir::new("operator-top-level");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let broker = Bare::launch(
            dir.path(),
            &[
                "--listen",
                &listen,
                "--stream-listen",
                "127.0.0.1:0",
                "--mgmt-listen",
                "127.0.0.1:0",
                "--data-dir",
                "data",
            ],
        );
        let ready = broker.wait_for("accepting AMQP").await;
        assert!(ready.contains(&format!("addr={listen}")), "{ready}");
        let absolute = dir.path().join("data");
        let line = broker.wait_for("data directory").await;
        assert!(
            line.contains(&format!("data_dir={}", absolute.display())),
            "{line}"
        );
        assert!(absolute.is_dir(), "the data directory was not made there");
        let (mut raw, _) = Raw::open(listen.parse().unwrap()).await;
        raw.close_connection().await;
    })
    .await;
}
