//! Queue behaviour, pinned against RabbitMQ: declare/declare-ok, passive declare,
//! equivalence checks, bind/unbind, purge, delete (and its if-empty / if-unused
//! guards), exclusive and auto-delete lifetimes, and consumer cancel notification.

use crate::common;

use common::amqp::{
    assert_closed, confirm_channel as channel, consume, get_all_bodies, open_confirmed as setup,
    reply_code, reply_text, within_for,
};
use common::{unique, wait_for, TestBroker};
use futures_lite::StreamExt;
use lapin::{
    options::*,
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Connection, Queue,
};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// Runs a whole test body under [`TEST_TIMEOUT`].
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

fn opts(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    }
}

async fn declare_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
) -> lapin::Result<Queue> {
    ch.queue_declare(name.into(), options, FieldTable::default())
        .await
}

/// Declares a fresh queue (non-durable, non-exclusive, non-auto-delete) and returns its name.
async fn declare(ch: &Channel) -> String {
    let name = unique("q");
    declare_with(ch, &name, QueueDeclareOptions::default())
        .await
        .unwrap();
    name
}

/// A passive queue.declare: the queue's counts, or 404.
pub(crate) async fn passive(ch: &Channel, name: &str) -> lapin::Result<Queue> {
    declare_with(
        ch,
        name,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
    )
    .await
}

async fn delete(ch: &Channel, name: &str) {
    ch.queue_delete(name.into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// Publishes and waits for the publisher confirm.
async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &str) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    tokio::time::timeout(TIMEOUT, confirm)
        .await
        .expect("timed out waiting for publisher confirm")
        .unwrap();
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 0..n {
        publish(ch, "", queue, &i.to_string()).await;
    }
}

fn not_found(queue: &str) -> String {
    format!("NOT_FOUND - no queue '{queue}' in vhost '/'")
}

/// Polls (each attempt on a fresh channel, since a 404 closes it) until passive
/// declare of `queue` fails with 404, panicking after `TIMEOUT`. Used where the broker
/// removes the queue asynchronously (e.g. after its owning connection closed).
async fn wait_until_gone(conn: &Connection, queue: &str) {
    let err = wait_for(
        &format!("queue {queue} to be gone"),
        TIMEOUT,
        || async move {
            let ch = conn.create_channel().await.unwrap();
            match passive(&ch, queue).await {
                Err(e) => Ok(e),
                Ok(_) => {
                    let _ = ch.close(200, "OK".into()).await;
                    Err("it still exists")
                }
            }
        },
    )
    .await;
    assert_eq!(reply_code(&err), Some(404), "unexpected error: {err}");
    assert_eq!(reply_text(&err), Some(not_found(queue)));
}

// ---------------------------------------------------------------- declare

#[tokio::test]
async fn server_named_queue_gets_amq_gen_prefix() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare_with(&ch, "", opts(false, true, false))
            .await
            .unwrap();
        let name = q.name().as_str();
        assert!(name.starts_with("amq.gen-"), "got {name}");
        assert!(name.len() > "amq.gen-".len());
        assert_eq!(q.message_count(), 0);
        assert_eq!(q.consumer_count(), 0);
        // Usable via the default exchange under that name.
        publish(&ch, "", name, "hi").await;
        assert_eq!(get_all_bodies(&ch, name).await, ["hi"]);
        // Each server-named queue is distinct.
        let q2 = declare_with(&ch, "", opts(false, true, false))
            .await
            .unwrap();
        assert_ne!(q.name(), q2.name());
    })
    .await
}

#[tokio::test]
async fn declaring_amq_prefixed_queue_is_403() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let name = unique("amq.custom");
        assert_closed(
            declare_with(&ch, &name, QueueDeclareOptions::default()).await,
            403,
            &format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"),
        );
    })
    .await
}

#[tokio::test]
async fn declare_ok_reports_message_and_consumer_counts() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let q = declare(&ch).await;
        publish_n(&ch, &q, 3).await;

        // Redeclare (active and passive) reports the ready messages.
        let ok = declare_with(&ch, &q, QueueDeclareOptions::default())
            .await
            .unwrap();
        assert_eq!((ok.message_count(), ok.consumer_count()), (3, 0));
        let ok = passive(&ch, &q).await.unwrap();
        assert_eq!((ok.message_count(), ok.consumer_count()), (3, 0));

        // A consumer with prefetch 1 holds one unacked message: it no longer counts.
        let cch = conn.create_channel().await.unwrap();
        cch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
        let mut consumer = consume(&cch, &q, "c1", false).await;
        let first = tokio::time::timeout(TIMEOUT, consumer.next())
            .await
            .expect("timed out waiting for delivery")
            .unwrap()
            .unwrap();
        assert_eq!(first.data, b"0");

        let ok = passive(&ch, &q).await.unwrap();
        assert_eq!((ok.message_count(), ok.consumer_count()), (2, 1));

        let _consumer2 = consume(&cch, &q, "c2", false).await;
        let ok = passive(&ch, &q).await.unwrap();
        assert_eq!(ok.consumer_count(), 2);
        delete(&ch, &q).await;
    })
    .await
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = unique("missing");
        assert_closed(passive(&ch, &q).await, 404, &not_found(&q));
    })
    .await
}

#[tokio::test]
async fn redeclare_with_same_properties_is_ok() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = unique("q");
        declare_with(&ch, &q, opts(false, false, true))
            .await
            .unwrap();
        declare_with(&ch, &q, opts(false, false, true))
            .await
            .unwrap();
        // Passive declare ignores the flags it is given.
        declare_with(
            &ch,
            &q,
            QueueDeclareOptions {
                passive: true,
                durable: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        delete(&ch, &q).await;
    })
    .await
}

/// Declares `q` with `first`, redeclares it with `second` and returns the result,
/// then deletes the queue from a fresh channel.
async fn redeclare(
    first: QueueDeclareOptions,
    second: QueueDeclareOptions,
) -> (String, lapin::Result<Queue>) {
    let (_broker, conn, ch) = setup().await;
    let q = unique("q");
    declare_with(&ch, &q, first).await.unwrap();
    let res = declare_with(&ch, &q, second).await;
    let ch = channel(&conn).await;
    delete(&ch, &q).await;
    (q, res)
}

#[tokio::test]
async fn redeclare_with_different_durable_is_406() {
    within(async {
        let (q, res) = redeclare(opts(false, false, false), opts(true, false, false)).await;
        assert_closed(
            res,
            406,
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': \
                 received 'true' but current is 'false'"
            ),
        );
    })
    .await
}

#[tokio::test]
async fn redeclare_with_different_auto_delete_is_406() {
    within(async {
        let (q, res) = redeclare(opts(false, false, false), opts(false, false, true)).await;
        assert_closed(
            res,
            406,
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue '{q}' in vhost '/': \
                 received 'true' but current is 'false'"
            ),
        );
    })
    .await
}

#[tokio::test]
async fn redeclare_with_different_exclusive_is_405() {
    within(async {
        let (q, res) = redeclare(opts(false, false, false), opts(false, true, false)).await;
        assert_closed(
            res,
            405,
            &format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. \
                 It could be originally declared on another connection or the exclusive property \
                 value does not match that of the original declaration."
            ),
        );
    })
    .await
}

// ---------------------------------------------------------------- bind / unbind

#[tokio::test]
async fn bind_to_missing_exchange_is_404() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = unique("q");
        declare_with(&ch, &q, opts(false, true, false))
            .await
            .unwrap();
        let ex = unique("missing-ex");
        let res = ch
            .queue_bind(
                q.as_str().into(),
                ex.as_str().into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(
            res,
            404,
            &format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"),
        );
    })
    .await
}

#[tokio::test]
async fn bind_missing_queue_is_404() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = unique("missing");
        let res = ch
            .queue_bind(
                q.as_str().into(),
                "amq.direct".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(res, 404, &not_found(&q));
    })
    .await
}

#[tokio::test]
async fn unbind_removes_routing() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare(&ch).await;
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, "amq.direct", &q, "bound").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["bound"]);

        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, "amq.direct", &q, "unbound").await;
        assert!(get_all_bodies(&ch, &q).await.is_empty());

        // Unbinding a binding that does not exist is not an error.
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        delete(&ch, &q).await;
    })
    .await
}

// ---------------------------------------------------------------- purge / delete

#[tokio::test]
async fn purge_returns_message_count() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare(&ch).await;
        publish_n(&ch, &q, 4).await;
        let purged = ch
            .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        assert_eq!(purged, 4);
        assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 0);
        let purged = ch
            .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        assert_eq!(purged, 0);
        delete(&ch, &q).await;
    })
    .await
}

#[tokio::test]
async fn purge_missing_queue_is_404() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = unique("missing");
        let res = ch
            .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await;
        assert_closed(res, 404, &not_found(&q));
    })
    .await
}

#[tokio::test]
async fn delete_returns_message_count() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare(&ch).await;
        publish_n(&ch, &q, 3).await;
        let count = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        assert_eq!(count, 3);
        assert_closed(passive(&ch, &q).await, 404, &not_found(&q));
    })
    .await
}

#[tokio::test]
async fn delete_missing_queue_is_ok_with_zero_count() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let count = ch
            .queue_delete(
                unique("never-declared").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(count, 0);
    })
    .await
}

#[tokio::test]
async fn delete_if_empty_with_messages_is_406() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let q = declare(&ch).await;
        publish_n(&ch, &q, 1).await;
        let res = ch
            .queue_delete(
                q.as_str().into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..Default::default()
                },
            )
            .await;
        assert_closed(
            res,
            406,
            &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"),
        );
        let ch = channel(&conn).await;
        assert_eq!(passive(&ch, &q).await.unwrap().message_count(), 1);
        delete(&ch, &q).await;
    })
    .await
}

#[tokio::test]
async fn delete_if_empty_on_empty_queue_succeeds() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare(&ch).await;
        let count = ch
            .queue_delete(
                q.as_str().into(),
                QueueDeleteOptions {
                    if_empty: true,
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(count, 0);
        assert_closed(passive(&ch, &q).await, 404, &not_found(&q));
    })
    .await
}

#[tokio::test]
async fn delete_if_unused_with_consumer_is_406() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let q = declare(&ch).await;
        let cch = conn.create_channel().await.unwrap();
        let _consumer = consume(&cch, &q, "c", false).await;
        let res = ch
            .queue_delete(
                q.as_str().into(),
                QueueDeleteOptions {
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await;
        assert_closed(
            res,
            406,
            &format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"),
        );
        let ch = channel(&conn).await;
        assert_eq!(passive(&ch, &q).await.unwrap().consumer_count(), 1);
        delete(&ch, &q).await;
    })
    .await
}

// ---------------------------------------------------------------- exclusive / auto-delete

#[tokio::test]
async fn exclusive_queue_from_another_connection_is_405() {
    within(async {
        let broker = TestBroker::start().await;
        let owner = broker.connect().await;
        let och = channel(&owner).await;
        let q = unique("excl");
        declare_with(&och, &q, opts(false, true, false))
            .await
            .unwrap();

        let other = broker.connect().await;
        let locked = format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. \
             It could be originally declared on another connection or the exclusive property \
             value does not match that of the original declaration."
        );

        // Declare (active or passive), consume, bind, purge and delete are all refused.
        let ch = channel(&other).await;
        assert_closed(
            declare_with(&ch, &q, opts(false, true, false)).await,
            405,
            &locked,
        );
        let ch = channel(&other).await;
        assert_closed(passive(&ch, &q).await, 405, &locked);
        let ch = channel(&other).await;
        let res = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(res, 405, &locked);
        let ch = channel(&other).await;
        let res = ch
            .queue_bind(
                q.as_str().into(),
                "amq.direct".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(res, 405, &locked);
        let ch = channel(&other).await;
        let res = ch
            .queue_purge(q.as_str().into(), QueuePurgeOptions::default())
            .await;
        assert_closed(res, 405, &locked);
        let ch = channel(&other).await;
        let res = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
        assert_closed(res, 405, &locked);

        // Publishing via the default exchange from another connection is allowed.
        let ch = channel(&other).await;
        publish(&ch, "", &q, "from-other").await;
        assert_eq!(get_all_bodies(&och, &q).await, ["from-other"]);
    })
    .await
}

#[tokio::test]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    within(async {
        let broker = TestBroker::start().await;
        let owner = broker.connect().await;
        let och = channel(&owner).await;
        let q = unique("excl");
        declare_with(&och, &q, opts(false, true, false))
            .await
            .unwrap();
        // Channel close alone does not delete it.
        och.close(200, "OK".into()).await.unwrap();
        let och = channel(&owner).await;
        passive(&och, &q).await.unwrap();

        owner.close(200, "OK".into()).await.unwrap();
        let observer = broker.connect().await;
        wait_until_gone(&observer, &q).await;
    })
    .await
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_last_consumer_cancels() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let q = unique("autodel");
        declare_with(&ch, &q, opts(false, false, true))
            .await
            .unwrap();
        // Without ever having had a consumer it stays.
        passive(&ch, &q).await.unwrap();

        let cch = conn.create_channel().await.unwrap();
        let _c1 = consume(&cch, &q, "c1", false).await;
        let _c2 = consume(&cch, &q, "c2", false).await;
        cch.basic_cancel("c1".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        // One consumer left: still there.
        assert_eq!(passive(&ch, &q).await.unwrap().consumer_count(), 1);

        cch.basic_cancel("c2".into(), BasicCancelOptions::default())
            .await
            .unwrap();
        wait_until_gone(&conn, &q).await;
    })
    .await
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_consumer_channel_closes() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let q = unique("autodel");
        declare_with(&ch, &q, opts(false, false, true))
            .await
            .unwrap();
        let cch = conn.create_channel().await.unwrap();
        let _c = consume(&cch, &q, "c", false).await;
        cch.close(200, "OK".into()).await.unwrap();
        wait_until_gone(&conn, &q).await;
    })
    .await
}

// ---------------------------------------------------------------- consumer cancel notification

#[tokio::test]
async fn deleting_queue_cancels_its_consumers() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let q = declare(&ch).await;
        let cch = conn.create_channel().await.unwrap();
        let mut consumer = consume(&cch, &q, "doomed", false).await;

        publish(&ch, "", &q, "before").await;
        let d = tokio::time::timeout(TIMEOUT, consumer.next())
            .await
            .expect("timed out waiting for delivery")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, b"before");

        delete(&ch, &q).await;

        // The broker sends basic.cancel; lapin ends the consumer stream.
        let next = tokio::time::timeout(TIMEOUT, consumer.next())
            .await
            .expect("consumer was not cancelled by the broker");
        assert!(next.is_none(), "expected end of stream, got {next:?}");

        // The consumer's channel stays open.
        let q2 = declare(&cch).await;
        delete(&cch, &q2).await;
    })
    .await
}

#[tokio::test]
async fn x_queue_mode_lazy_is_accepted_and_the_queue_works() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let name = unique("lazy");
        let mut args = FieldTable::default();
        args.insert("x-queue-mode".into(), AMQPValue::LongString("lazy".into()));
        ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), args)
            .await
            .expect("x-queue-mode is accepted, as RabbitMQ 3.x");
        publish_n(&ch, &name, 3).await;
        assert_eq!(get_all_bodies(&ch, &name).await, ["0", "1", "2"]);
        delete(&ch, &name).await;
    })
    .await;
}
