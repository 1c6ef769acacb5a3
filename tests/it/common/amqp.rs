//! lapin helpers shared by the AMQP test suites: deadlines, close-code
//! extraction, confirm-mode channels, declares, publishes, gets and
//! consumers, passive-declare counts and message properties.
#![allow(dead_code)]

use super::{unique, wait_for, TestBroker};
use futures_lite::StreamExt;
use lapin::{
    message::{BasicGetMessage, Delivery},
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        ConfirmSelectOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation, Connection, Consumer, ErrorKind, Event,
};
use std::future::Future;
use std::time::Duration;

/// Upper bound for a reply, a delivery or a confirm that should come promptly.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a consumer is watched to conclude that nothing more is coming.
pub const QUIET: Duration = Duration::from_millis(300);

/// Runs a whole test body under `limit`, so a broker that never answers makes
/// the test fail instead of hanging the suite.
pub async fn within_for<F: Future<Output = ()>>(limit: Duration, test: F) {
    tokio::time::timeout(limit, test)
        .await
        .expect("test timed out (broker did not answer?)");
}

/// Awaits `fut` for at most `limit`, naming `what` if it times out.
pub async fn timed_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// AMQP reply code carried by a channel/connection close, if `e` is one.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// AMQP reply text carried by a channel/connection close, if `e` is one.
pub fn reply_text(e: &lapin::Error) -> Option<String> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.get_message().to_string()),
        _ => None,
    }
}

/// The (reply code, reply text) of the channel.close / connection.close carried by `err`.
pub fn amqp_error(err: &lapin::Error) -> Option<(u16, String)> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

/// Asserts that `res` failed with a close carrying `code` and `text`.
pub fn assert_closed<T: std::fmt::Debug>(res: lapin::Result<T>, code: u16, text: &str) {
    let err = res.expect_err("expected the broker to close the channel");
    assert_eq!(reply_code(&err), Some(code), "unexpected error: {err}");
    assert_eq!(
        reply_text(&err).as_deref(),
        Some(text),
        "unexpected error: {err}"
    );
}

/// Persistent (delivery_mode 2) properties.
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Transient (delivery_mode 1) properties.
pub fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

/// A channel in confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel.open");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

/// Starts a broker, connects and opens a channel in confirm mode.
pub async fn open_confirmed() -> (TestBroker, Connection, Channel) {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    (broker, conn, ch)
}

/// A channel in confirm mode, each step waited on for at most `wait`.
pub async fn timed_confirm_channel(conn: &Connection, wait: Duration) -> Channel {
    let ch = timed_for(wait, "channel.open", conn.create_channel())
        .await
        .unwrap();
    timed_for(
        wait,
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    ch
}

/// Passive queue.declare on a fresh channel, each step waited on for at most
/// `wait`: the ready-message count, or the error the broker closed the channel
/// with.
pub async fn queue_count(conn: &Connection, name: &str, wait: Duration) -> lapin::Result<u32> {
    let ch = timed_for(wait, "channel.open", conn.create_channel()).await?;
    let q = timed_for(
        wait,
        "passive queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let _ = timed_for(wait, "channel.close", ch.close(200, "bye".into())).await;
    Ok(q.message_count())
}

/// The ready-message count of a queue that must exist (see [`queue_count`]).
pub async fn count(conn: &Connection, name: &str, wait: Duration) -> u32 {
    queue_count(conn, name, wait)
        .await
        .unwrap_or_else(|e| panic!("queue {name} should exist: {e}"))
}

/// Asserts two body sequences are equal, reporting the first difference rather
/// than dumping thousands of bodies.
pub fn assert_same_sequence(what: &str, got: &[String], want: &[String]) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: first difference at index {i}: got {:?}, want {:?} (got {} messages, want {}; got around there: {:?})",
            got[i],
            want[i],
            got.len(),
            want.len(),
            &got[i.saturating_sub(2)..(i + 3).min(got.len())]
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: got {} messages, want {} (the common prefix matches; first extra/missing: {:?})",
        got.len(),
        want.len(),
        got.get(want.len()).or(want.get(got.len()))
    );
}

/// A connection to `uri`, or the broker's refusal, within 10 s.
pub async fn try_connect_uri(uri: &str) -> lapin::Result<Connection> {
    timed_for(
        Duration::from_secs(10),
        "the connection",
        Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
}

/// A connection to `uri`, within 10 s.
pub async fn connect_uri(uri: &str) -> Connection {
    try_connect_uri(uri).await.expect("connect to the broker")
}

/// Connects to `broker` and opens a channel.
pub async fn open_channel(broker: &TestBroker) -> (Connection, Channel) {
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.expect("channel.open");
    (conn, ch)
}

/// A field table of `entries`.
pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// queue.declare options for an exclusive queue (gone with its connection).
pub fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// queue.declare options for a durable queue.
pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares the queue `name`; panics naming it if the broker refuses.
pub async fn declare_queue(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) {
    timed_for(
        WAIT,
        "queue.declare",
        ch.queue_declare(name.into(), options, args),
    )
    .await
    .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
}

/// Declares a queue with a fresh name starting with `prefix`; returns the name.
pub async fn declare_unique(
    ch: &Channel,
    prefix: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> String {
    let name = unique(prefix);
    ch.queue_declare(name.as_str().into(), options, args)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e}"));
    name
}

/// Binds `queue` to `exchange` with `key` and `args`; panics naming them if refused.
pub async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    timed_for(
        WAIT,
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            lapin::options::QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e}"));
}

/// Ready (not unacked) messages of `queue`, by a passive queue.declare on `ch`.
pub async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Polls until `queue` reports exactly `n` ready messages (RabbitMQ may answer a
/// passive queue.declare before the queue has handled publishes made just before).
pub async fn wait_ready(ch: &Channel, queue: &str, n: u32) {
    wait_for(
        &format!("{n} ready messages in {queue}"),
        WAIT,
        || async move {
            match ready_count(ch, queue).await {
                got if got == n => Ok(()),
                got => Err(got),
            }
        },
    )
    .await
}

/// Publishes `body` with `props` without waiting for a confirm.
pub async fn publish_props(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        exchange.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic.publish");
}

/// Publishes on a confirm-mode channel and waits for the confirm (ack or nack).
pub async fn publish_and_confirm(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("basic.publish");
    timed_for(WAIT, "a publisher confirm", confirm)
        .await
        .expect("publisher confirm failed")
}

/// basic.consume with `args`.
pub async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    no_ack: bool,
    args: FieldTable,
) -> Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("basic.consume")
}

/// basic.consume (an empty `tag` lets the broker name the consumer).
pub async fn consume(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> Consumer {
    consume_with(ch, queue, tag, no_ack, FieldTable::default()).await
}

/// The next delivery, within [`WAIT`].
pub async fn next(consumer: &mut Consumer) -> Delivery {
    timed_for(WAIT, "a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery error")
}

/// The next `n` deliveries, each within [`WAIT`].
pub async fn next_n(consumer: &mut Consumer, n: usize) -> Vec<Delivery> {
    next_n_within(consumer, n, WAIT).await
}

/// The next `n` deliveries, each within `wait` (longer for a queue read back
/// from disk or a broker just restarted).
pub async fn next_n_within(consumer: &mut Consumer, n: usize, wait: Duration) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let delivery = tokio::time::timeout(wait, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for delivery {i} of {n}"))
            .expect("consumer stream ended")
            .expect("delivery error");
        out.push(delivery);
    }
    out
}

/// Asserts that no delivery arrives for [`QUIET`].
pub async fn assert_quiet(consumer: &mut Consumer) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, consumer.next()).await {
        let what = item.map(|d| text(&d));
        panic!("expected no delivery, got {what:?}");
    }
}

/// Consumes (no-ack) exactly `n` messages from `queue` (waiting for requeues to
/// land), checks that nothing more follows, cancels, and returns them.
pub async fn consume_exactly(ch: &Channel, queue: &str, n: usize) -> Vec<Delivery> {
    let mut consumer = consume(ch, queue, "", true).await;
    let out = next_n(&mut consumer, n).await;
    assert_quiet(&mut consumer).await;
    ch.basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .expect("basic.cancel");
    out
}

/// Takes every ready message of `queue` with no-ack basic.get; the bodies in order.
pub async fn get_all_bodies(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = timed_for(
        WAIT,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    {
        bodies.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    bodies
}

/// Takes every ready message of `queue` with basic.get, each get within `wait`.
pub async fn get_all_messages(
    ch: &Channel,
    queue: &str,
    no_ack: bool,
    wait: Duration,
) -> Vec<BasicGetMessage> {
    let mut out = Vec::new();
    while let Some(m) = timed_for(
        wait,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .unwrap_or_else(|e| panic!("basic.get on {queue}: {e}"))
    {
        out.push(m);
    }
    out
}

/// A delivery's body as text.
pub fn text(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).unwrap()
}

/// The deliveries' bodies as text.
pub fn texts(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(text).collect()
}

/// Watches a connection for closes sent by the broker. Create it before the method that
/// provokes the close: asynchronous methods (publish, ack, ...) have no reply to fail, the
/// broker just closes the channel or connection.
pub struct Closes(std::pin::Pin<Box<dyn futures_lite::Stream<Item = Event> + Send>>);

impl Closes {
    pub fn watch(conn: &Connection) -> Self {
        Closes(Box::pin(conn.events_listener()))
    }

    /// (reply code, reply text) of the next channel.close / connection.close.
    pub async fn next(&mut self) -> (u16, String) {
        let events = &mut self.0;
        timed_for(WAIT, "the broker to close", async {
            while let Some(event) = events.next().await {
                if let Event::Error(err) = event {
                    if let Some(reason) = amqp_error(&err) {
                        return reason;
                    }
                }
            }
            panic!("connection event stream ended");
        })
        .await
    }

    /// The reason the broker closed `ch`; the connection must survive.
    pub async fn channel(&mut self, conn: &Connection, ch: &Channel) -> (u16, String) {
        let reason = self.next().await;
        assert!(!ch.status().connected(), "channel still open");
        assert!(conn.status().connected(), "connection should survive");
        reason
    }

    /// The reason the broker closed the whole connection.
    pub async fn connection(&mut self, conn: &Connection) -> (u16, String) {
        let reason = self.next().await;
        assert!(!conn.status().connected(), "connection still open");
        reason
    }
}
