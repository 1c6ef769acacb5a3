//! A stream connection's outgoing bytes and the task that writes them:
//! frames are encoded straight into one buffer (by the connection's task,
//! and by the stream writer's thread for confirms), and the writer task
//! sends everything pending with one `write_all`. A delivered chunk's data
//! is queued as a range of its segment file instead, which the writer sends
//! from the file (`sendfile` on a plain socket): its bytes never pass
//! through the broker. The connection stops reading its client while more
//! than [`READ_LIMIT`] bytes wait, so a client that does not read cannot
//! make the broker buffer without bound.

use super::frame;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
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

/// Bytes of a file to send after the buffer's first `before` bytes.
pub(crate) struct FileRange {
    before: usize,
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
    pub(crate) len: usize,
}

/// What waits to be written: bytes, and file ranges between them.
#[derive(Default)]
struct Queued {
    buf: BytesMut,
    files: VecDeque<FileRange>,
    file_bytes: usize,
}

impl Queued {
    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.files.is_empty()
    }
}

pub(crate) struct Outbox {
    queued: Mutex<Queued>,
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
            queued: Mutex::new(Queued {
                buf: BytesMut::with_capacity(16 * 1024),
                ..Queued::default()
            }),
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
        let mut q = self.queued.lock();
        let was_empty = q.is_empty();
        encode(&mut q.buf);
        drop(q);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Encodes bytes, then queues a file range to go after them.
    pub(crate) fn push_file(
        &self,
        encode: impl FnOnce(&mut BytesMut),
        file: Arc<File>,
        offset: u64,
        len: usize,
    ) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut q = self.queued.lock();
        let was_empty = q.is_empty();
        encode(&mut q.buf);
        let before = q.buf.len();
        q.files.push_back(FileRange {
            before,
            file,
            offset,
            len,
        });
        q.file_bytes += len;
        drop(q);
        if was_empty {
            self.notify.notify_one();
        }
    }

    pub(crate) fn pending(&self) -> usize {
        let q = self.queued.lock();
        q.buf.len() + q.file_bytes + self.writing.load(Ordering::Relaxed)
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
    pub(crate) async fn run_writer<W: Sink>(self: Arc<Self>, mut socket: W) {
        let mut spare = BytesMut::with_capacity(16 * 1024);
        let mut files = VecDeque::new();
        let mut scratch = Vec::new();
        let mut last_write = Instant::now();
        loop {
            let interval = *self.heartbeat.lock();
            let idle_until = last_write + interval.unwrap_or(NO_HEARTBEAT);
            let woken = tokio::select! {
                biased;
                () = self.notify.notified() => true,
                () = tokio::time::sleep_until(idle_until) => false,
            };
            let (mut data, file_bytes) = {
                let mut q = self.queued.lock();
                if !woken && q.is_empty() && interval.is_some() {
                    frame::heartbeat(&mut q.buf);
                }
                std::mem::swap(&mut files, &mut q.files);
                let file_bytes = std::mem::take(&mut q.file_bytes);
                (
                    std::mem::replace(&mut q.buf, std::mem::take(&mut spare)),
                    file_bytes,
                )
            };
            if !data.is_empty() || !files.is_empty() {
                self.writing
                    .store(data.len() + file_bytes, Ordering::Relaxed);
                let result = write_out(&mut socket, &data, &mut files, &mut scratch).await;
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
                if scratch.capacity() > READ_LIMIT {
                    scratch = Vec::new();
                }
            } else if !woken {
                last_write = Instant::now();
            }
            spare = data;
            if self.closed.load(Ordering::Acquire) && self.queued.lock().is_empty() {
                break;
            }
        }
        let _ = socket.shutdown().await;
    }
}

/// Writes `data` with `files` sent at their places in it.
async fn write_out<W: Sink>(
    socket: &mut W,
    data: &[u8],
    files: &mut VecDeque<FileRange>,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut at = 0;
    while let Some(range) = files.pop_front() {
        socket.write_all(&data[at..range.before]).await?;
        at = range.before;
        socket.send_file(&range, scratch).await?;
    }
    socket.write_all(&data[at..]).await?;
    // Over TLS the flush sends records the session still holds.
    socket.flush().await
}

/// Bytes read from a file at a time where it cannot be sent from the file.
const COPY_PIECE: usize = 256 << 10;

/// Where a connection's output goes: a socket that can send a file range.
pub(crate) trait Sink: AsyncWrite + Unpin + Send + 'static {
    /// Sends `range`; by default read into `scratch` and written (a TLS
    /// session must encrypt what it sends). The file's pages were read
    /// ahead on a blocking thread ([`crate::store::stream_log`]'s
    /// `chunks`), so this read finds them in memory.
    fn send_file(
        &mut self,
        range: &FileRange,
        scratch: &mut Vec<u8>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        async move {
            let mut done = 0;
            while done < range.len {
                let n = (range.len - done).min(COPY_PIECE);
                scratch.resize(n, 0);
                range
                    .file
                    .read_exact_at(scratch, range.offset + done as u64)?;
                self.write_all(scratch).await?;
                done += n;
            }
            Ok(())
        }
    }
}

/// TLS: read and written, encrypted by the session.
impl Sink for tokio::io::WriteHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {}

impl Sink for tokio::net::tcp::OwnedWriteHalf {
    /// `sendfile`: the kernel moves the pages to the socket.
    async fn send_file(&mut self, range: &FileRange, _: &mut Vec<u8>) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // What was written before must go first.
        self.flush().await?;
        let socket: &tokio::net::TcpStream = self.as_ref();
        let mut offset = range.offset as libc::off_t;
        let end = offset + range.len as libc::off_t;
        while offset < end {
            socket.writable().await?;
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                let left = (end - offset) as usize;
                // SAFETY: both descriptors are open for the call (the
                // socket borrowed, the file held by `range`), and `offset`
                // is a valid off_t the kernel advances.
                let n = unsafe {
                    libc::sendfile(
                        socket.as_raw_fd(),
                        range.file.as_raw_fd(),
                        &mut offset,
                        left,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match sent {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "a stream segment is shorter than a chunk it holds",
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
