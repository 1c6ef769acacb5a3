//! A connection's outgoing bytes and the task that writes them.
//!
//! Anyone (the connection's own reader, queues delivering from other
//! connections' tasks) encodes frames straight into the outbox buffer; the
//! writer task takes everything pending and writes it with one `write_all`.

use super::NO_HEARTBEAT;
use crate::broker::flow;
use crate::broker::queue::Queue;
use crate::protocol::encode;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Above this many unwritten bytes queues stop delivering to the connection
/// until the writer catches up, so a slow reader cannot make the broker
/// buffer without bound.
pub(crate) const OUTBOX_HIGH_WATERMARK: usize = 1024 * 1024;

/// Above this many unwritten bytes the connection's own frames stop being
/// read until the writer catches up: replies nobody else limits (returns,
/// get-oks, confirms) cannot pile up for a client that never reads. Above
/// the deliveries' mark, so a consumer on the same connection does not
/// pause its publishing by itself.
pub(crate) const OUTBOX_READ_LIMIT: usize = 4 * OUTBOX_HIGH_WATERMARK;

pub(crate) struct Outbox {
    buf: Mutex<BytesMut>,
    notify: Notify,
    /// Bytes taken by the writer and not yet written.
    writing: AtomicUsize,
    /// When the write in progress started (`flow::monotonic_us`; 0: none).
    write_started: AtomicU64,
    closed: AtomicBool,
    /// Queues that skipped this connection because it was full.
    waiting: Mutex<Vec<Weak<Queue>>>,
    /// Signalled after each write, for a reader waiting for it to drain.
    wrote: Notify,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            buf: Mutex::new(BytesMut::with_capacity(64 * 1024)),
            notify: Notify::new(),
            writing: AtomicUsize::new(0),
            write_started: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            waiting: Mutex::new(Vec::new()),
            wrote: Notify::new(),
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

    pub(crate) fn is_full(&self) -> bool {
        self.pending() > OUTBOX_HIGH_WATERMARK
    }

    fn pending(&self) -> usize {
        self.buf.lock().len() + self.writing.load(Ordering::Relaxed)
    }

    /// Whether the connection's reader must wait for the writer.
    pub(crate) fn is_over_read_limit(&self) -> bool {
        self.pending() > OUTBOX_READ_LIMIT && !self.is_closed()
    }

    /// Completes once the outbox is back under its read limit (or closed).
    pub(crate) async fn drained_below_read_limit(&self) {
        loop {
            let wrote = self.wrote.notified();
            tokio::pin!(wrote);
            wrote.as_mut().enable();
            if !self.is_over_read_limit() {
                return;
            }
            wrote.await;
        }
    }

    /// How long the write in progress has been waiting for the socket.
    pub(crate) fn write_stall(&self) -> Duration {
        match self.write_started.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            started => Duration::from_micros(flow::monotonic_us().saturating_sub(started)),
        }
    }

    /// Remembers a queue to wake once the writer has drained.
    pub(crate) fn wait_for_space(&self, queue: &Arc<Queue>) {
        let mut waiting = self.waiting.lock();
        if !waiting.iter().any(|w| w.as_ptr() == Arc::as_ptr(queue)) {
            waiting.push(Arc::downgrade(queue));
        }
    }

    /// Stops accepting frames (the socket is going away).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Writes pending frames until the outbox is closed and drained or the
    /// socket fails. Sends a heartbeat when nothing was written for
    /// `heartbeat` (None: never).
    pub(crate) async fn run_writer<W: AsyncWriteExt + Unpin>(
        self: Arc<Self>,
        mut socket: W,
        heartbeat: Arc<Mutex<Option<Duration>>>,
    ) {
        let mut spare = BytesMut::with_capacity(64 * 1024);
        // The heartbeat timer is not moved at every write (a timer
        // registered and dropped per write): when it fires it looks at
        // when the last write was.
        let mut last_write = Instant::now();
        let mut period = None;
        let idle = tokio::time::sleep(NO_HEARTBEAT);
        tokio::pin!(idle);
        loop {
            let interval = *heartbeat.lock();
            if interval != period {
                period = interval;
                idle.as_mut()
                    .reset(last_write + interval.unwrap_or(NO_HEARTBEAT));
            }
            let woken = tokio::select! {
                biased;
                () = self.notify.notified() => true,
                () = &mut idle => match interval {
                    Some(d) if last_write.elapsed() >= d => false,
                    _ => {
                        idle.as_mut().reset(last_write + interval.unwrap_or(NO_HEARTBEAT));
                        continue;
                    }
                },
            };
            let mut data = {
                let mut buf = self.buf.lock();
                if !woken && buf.is_empty() {
                    encode::heartbeat(&mut buf);
                }
                std::mem::replace(&mut *buf, std::mem::take(&mut spare))
            };
            if !data.is_empty() {
                self.writing.store(data.len(), Ordering::Relaxed);
                self.write_started
                    .store(flow::monotonic_us(), Ordering::Relaxed);
                // flush: over TLS, write_all can return with records still
                // in the session (the socket was full); without it they wait
                // for the next write. A no-op on plain TCP.
                let result = match socket.write_all(&data).await {
                    Ok(()) => socket.flush().await,
                    Err(e) => Err(e),
                };
                last_write = Instant::now();
                self.write_started.store(0, Ordering::Relaxed);
                self.writing.store(0, Ordering::Relaxed);
                self.wrote.notify_waiters();
                if result.is_err() {
                    self.closed.store(true, Ordering::Release);
                    break;
                }
                data.clear();
            }
            spare = data;
            let waiting = std::mem::take(&mut *self.waiting.lock());
            for queue in waiting.iter().filter_map(Weak::upgrade) {
                queue.dispatch();
            }
            if self.closed.load(Ordering::Acquire) && self.buf.lock().is_empty() {
                break;
            }
        }
        let _ = socket.shutdown().await;
    }
}
