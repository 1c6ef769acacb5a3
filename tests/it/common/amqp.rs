//! lapin helpers shared by the AMQP test suites: deadlines, close-code
//! extraction, confirm-mode channels, passive-declare counts and message
//! properties.
#![allow(dead_code)]

use super::TestBroker;
use lapin::{
    options::{ConfirmSelectOptions, QueueDeclareOptions},
    types::FieldTable,
    BasicProperties, Channel, Connection, ErrorKind,
};
use std::future::Future;
use std::time::Duration;

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
