//! A stream connection's outgoing bytes and the task that writes them:
//! frames are encoded straight into one buffer (by the connection's task,
//! and by the stream writer's thread for confirms), and the writer task
//! sends everything pending with one `write_all`. The connection stops
//! reading its client while more than [`READ_LIMIT`] bytes wait, so a
//! client that does not read cannot make the broker buffer without bound.

use super::frame;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Unwritten bytes above which the connection reads nothing more from its
/// client and delivers nothing more until the writer catches up.
pub(crate) const READ_LIMIT: usize = 4 << 20;

/// How long the writer sleeps when there are no heartbeats to send.
const NO_HEARTBEAT: Duration = Duration::from_secs(3600);

pub(crate) struct Outbox {
    buf: Mutex<BytesMut>,
    notify: Notify,
    /// Bytes taken by the writer and not yet written.
    writing: AtomicUsize,
    closed: AtomicBool,
    /// Signalled after each write.
    wrote: Notify,
    /// Send a heartbeat after this long without writing (None: never).
    heartbeat: Mutex<Option<Duration>>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            buf: Mutex::new(BytesMut::with_capacity(16 * 1024)),
            notify: Notify::new(),
            writing: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            wrote: Notify::new(),
            heartbeat: Mutex::new(None),
        }
    }
}

impl Outbox {
    /// Encodes frames into the outbox and wakes the writer.
    pub(crate) fn push(&self, encode: impl FnOnce(&mut BytesMut)) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut buf = self.buf.lock();
        let was_empty = buf.is_empty();
        encode(&mut buf);
        drop(buf);
        if was_empty {
            self.notify.notify_one();
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.buf.lock().len() + self.writing.load(Ordering::Relaxed)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Completes once at most `limit` bytes wait (or the socket is gone).
    pub(crate) async fn drained_below(&self, limit: usize) {
        loop {
            let wrote = self.wrote.notified();
            tokio::pin!(wrote);
            wrote.as_mut().enable();
            if self.pending() <= limit || self.is_closed() {
                return;
            }
            wrote.await;
        }
    }

    pub(crate) fn set_heartbeat(&self, every: Option<Duration>) {
        *self.heartbeat.lock() = every;
        self.notify.notify_one();
    }

    /// Writes what is pending, then stops (the connection is ending).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Writes pending frames until the outbox is closed and drained or the
    /// socket fails; sends a heartbeat after the heartbeat interval
    /// without a write.
    pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(self: Arc<Self>, mut socket: W) {
        let mut spare = BytesMut::with_capacity(16 * 1024);
        let mut last_write = Instant::now();
        loop {
            let interval = *self.heartbeat.lock();
            let idle_until = last_write + interval.unwrap_or(NO_HEARTBEAT);
            let woken = tokio::select! {
                biased;
                () = self.notify.notified() => true,
                () = tokio::time::sleep_until(idle_until) => false,
            };
            let mut data = {
                let mut buf = self.buf.lock();
                if !woken && buf.is_empty() && interval.is_some() {
                    frame::heartbeat(&mut buf);
                }
                std::mem::replace(&mut *buf, std::mem::take(&mut spare))
            };
            if !data.is_empty() {
                self.writing.store(data.len(), Ordering::Relaxed);
                // Over TLS the flush sends records the session still holds.
                let result = match socket.write_all(&data).await {
                    Ok(()) => socket.flush().await,
                    Err(e) => Err(e),
                };
                last_write = Instant::now();
                self.writing.store(0, Ordering::Relaxed);
                self.wrote.notify_waiters();
                if result.is_err() {
                    self.closed.store(true, Ordering::Release);
                    self.wrote.notify_waiters();
                    break;
                }
                data.clear();
                // Keep a large buffer only while it is needed.
                if data.capacity() > READ_LIMIT {
                    data = BytesMut::with_capacity(16 * 1024);
                }
            } else if !woken {
                last_write = Instant::now();
            }
            spare = data;
            if self.closed.load(Ordering::Acquire) && self.buf.lock().is_empty() {
                break;
            }
        }
        let _ = socket.shutdown().await;
    }
}
