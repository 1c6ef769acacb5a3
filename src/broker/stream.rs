//! A stream queue (`x-queue-type = stream`): an append-only log that
//! reading does not consume, each consumer at its own offset.
//!
//! Publishing appends to the log through the `leveret-streams` thread
//! (`store::stream_writer`), which fsyncs in batches and only then makes
//! entries readable and settles the publishers' confirms (`Appends`).
//! Each consumer has a reader task: while its consumer has credit (its
//! prefetch less its unacknowledged deliveries) and the log has entries
//! past its offset, it reads a batch on a blocking thread (no file read on
//! a tokio worker) and hands the entries to the consumer's channel as
//! deliveries carrying their `x-stream-offset` header. Acks only give
//! credit back; the channel then wakes the readers (`Queue::dispatch`), as
//! new entries do.

use super::consumer::Consumer;
use super::queue::Queue;
use super::stream_args::StreamArgs;
use super::stream_consume::{ReadSpec, StartAt};
use crate::message::Message;
use crate::store::stream_log::{Entry, Filter, StreamLog, StreamLogError};
use crate::store::stream_offsets;
use crate::store::stream_writer::{NewEntry, Retention, Stream, StreamWriter};
use crate::store::QueuedMessage;
use crate::stream_entry::{self, Payload};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Entries one read takes at most, whatever the consumer's credit.
const READ_ENTRIES: usize = 1024;
/// Payload bytes one read takes at most (about).
const READ_BYTES: usize = 1 << 20;
/// The header every delivery from a stream carries.
const OFFSET_HEADER: &[u8] = b"x-stream-offset";
/// The header a publisher sets to give a message its filter value.
const FILTER_VALUE_HEADER: &str = "x-stream-filter-value";

/// A message's appends to the streams it was routed to, for its confirm:
/// settled once every one is on disk (ok) or one failed.
pub(crate) struct Appends(Mutex<AppendsState>);

struct AppendsState {
    /// Appends not finished, plus one while the message is being routed.
    remaining: u32,
    ok: bool,
    then: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl Appends {
    pub(crate) fn new() -> Arc<Appends> {
        Arc::new(Appends(Mutex::new(AppendsState {
            remaining: 1,
            ok: true,
            then: None,
        })))
    }

    fn add(&self) {
        self.0.lock().remaining += 1;
    }

    fn done(&self, ok: bool) {
        let then = {
            let mut st = self.0.lock();
            st.remaining -= 1;
            st.ok &= ok;
            if st.remaining > 0 {
                return;
            }
            st.then.take().map(|f| (f, st.ok))
        };
        if let Some((f, ok)) = then {
            f(ok);
        }
    }

    /// Routing is over: no more appends join.
    pub(crate) fn routed(&self) {
        self.done(true);
    }

    /// Runs `f` with the outcome once every append finished (at once if
    /// they have).
    pub(crate) fn then(&self, f: impl FnOnce(bool) + Send + 'static) {
        let mut st = self.0.lock();
        if st.remaining == 0 {
            let ok = st.ok;
            drop(st);
            f(ok);
        } else {
            st.then = Some(Box::new(f));
        }
    }

    /// Completes with the outcome once every append finished.
    pub(crate) async fn finished(&self) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.then(move |ok| {
            let _ = tx.send(ok);
        });
        rx.await.unwrap_or(false)
    }
}

/// What the log's readers share with the writer thread.
struct Tail {
    /// One past the newest entry readers may see (it is on disk).
    end: AtomicU64,
    readers: Mutex<Vec<Arc<Reader>>>,
    /// Others waiting for new entries (stream protocol connections).
    watchers: Mutex<Vec<std::sync::Weak<Notify>>>,
}

impl Tail {
    fn wake_all(&self) {
        for r in self.readers.lock().iter() {
            r.wake.notify_one();
        }
        self.watchers
            .lock()
            .retain(|w| w.upgrade().map(|n| n.notify_one()).is_some());
    }
}

/// One consumer's place in the stream.
pub(crate) struct Reader {
    pub(crate) consumer: Arc<Consumer>,
    /// The next offset to deliver.
    pub(crate) next: AtomicU64,
    filter: Option<Filter>,
    wake: Notify,
    stopped: AtomicBool,
}

/// Values stored per name (`store::stream_offsets`): readers' offsets or
/// publishers' sequences, and whether a save is under way on the writer
/// thread.
struct Tracked {
    file: &'static str,
    values: HashMap<String, u64>,
    saving: bool,
    changed: bool,
}

impl Tracked {
    fn new(file: &'static str, values: HashMap<String, u64>) -> Arc<Mutex<Tracked>> {
        Arc::new(Mutex::new(Tracked {
            file,
            values,
            saving: false,
            changed: false,
        }))
    }
}

/// Names whose offsets one stream stores at most: each costs memory and
/// file space, and a client chooses them.
pub(crate) const MAX_TRACKED: usize = 10_000;

pub(crate) struct StreamQueue {
    /// The queue's id in the store; its log lives in `streams/<id>`.
    pub(crate) id: u32,
    log: Arc<Stream>,
    writer: StreamWriter,
    tail: Arc<Tail>,
    dir: PathBuf,
    tracked: Arc<Mutex<Tracked>>,
    publishers: Arc<Mutex<Tracked>>,
    /// Signalled when entries become readable, and when the stream is
    /// deleted (the stream protocol's subscriptions wait on it).
    changed: Arc<Notify>,
    deleted: AtomicBool,
    /// `x-single-active-consumer` (a Leveret extension for streams): only
    /// the oldest reader receives; the next takes over when it goes.
    single_active: bool,
}

/// A stream's log directory under the data directory.
pub(crate) fn log_dir(data_dir: &Path, id: u32) -> std::path::PathBuf {
    data_dir.join("streams").join(format!("{id:08X}"))
}

#[allow(dead_code)]
impl StreamQueue {
    /// Opens (or creates) the log of stream `id`, checking it.
    pub(crate) fn open(
        name: &str,
        id: u32,
        args: StreamArgs,
        data_dir: &Path,
        writer: StreamWriter,
    ) -> Result<StreamQueue, StreamLogError> {
        let dir = log_dir(data_dir, id);
        let (mut log, opened) = StreamLog::open(&dir, args.max_segment_bytes)?;
        log.record_to(writer.files().clone());
        let offsets = stream_offsets::load(&dir, stream_offsets::OFFSETS)?;
        let publishers = stream_offsets::load(&dir, stream_offsets::PUBLISHERS)?;
        let changed = Arc::new(Notify::new());
        if opened.torn_bytes > 0 {
            tracing::warn!(
                stream = name,
                bytes = opened.torn_bytes,
                "cut an unfinished (never confirmed) write off the stream's end"
            );
        }
        let tail = Arc::new(Tail {
            end: AtomicU64::new(log.next_offset()),
            readers: Mutex::new(Vec::new()),
            watchers: Mutex::new(Vec::new()),
        });
        let durable = tail.clone();
        let waiters = changed.clone();
        let retention = Retention {
            max_bytes: args.max_length_bytes,
            max_age_ms: args.max_age_ms,
        };
        let log = Stream::new(
            name.to_string(),
            log,
            retention,
            Box::new(move |end| {
                durable.end.fetch_max(end, Ordering::Release);
                durable.wake_all();
                waiters.notify_waiters();
            }),
        );
        writer.register(&log);
        Ok(StreamQueue {
            id,
            log,
            writer,
            tail,
            dir,
            tracked: Tracked::new(stream_offsets::OFFSETS, offsets),
            publishers: Tracked::new(stream_offsets::PUBLISHERS, publishers),
            changed,
            deleted: AtomicBool::new(false),
            single_active: args.single_active_consumer,
        })
    }

    /// Acts on the effective retention and segment size (the arguments
    /// resolved against the policy): old segments go at the writer's next
    /// pass, new segments take the new size.
    pub(crate) fn apply(&self, effective: &StreamArgs) {
        *self.log.retention.lock() = Retention {
            max_bytes: effective.max_length_bytes,
            max_age_ms: effective.max_age_ms,
        };
        self.log
            .log
            .write()
            .set_max_segment_bytes(effective.max_segment_bytes);
    }

    /// The retention in force.
    pub(crate) fn retention(&self) -> Retention {
        *self.log.retention.lock()
    }

    /// Appends a message published over AMQP 0-9-1; `appends` learns when
    /// it is on disk.
    pub(crate) fn publish(&self, message: &Message, appends: &Arc<Appends>) {
        let entry = NewEntry {
            timestamp: now_ms(),
            filter: filter_value(message),
            payload: stream_entry::encode_amqp091(message),
        };
        appends.add();
        let appends = appends.clone();
        self.writer.append(
            self.log.clone(),
            vec![entry],
            Box::new(move |r| appends.done(r.is_ok())),
        );
    }

    /// Appends entries as they are (the stream protocol's publishes);
    /// `done` gets the first one's offset once they are on disk.
    pub(crate) fn append(
        &self,
        entries: Vec<NewEntry>,
        done: crate::store::stream_writer::Appended,
    ) {
        self.writer.append(self.log.clone(), entries, done);
    }

    /// One past the newest readable offset.
    pub(crate) fn readable_end(&self) -> u64 {
        self.tail.end.load(Ordering::Acquire)
    }

    /// The first offset kept, the offset the next entry gets, the number
    /// of segments and their bytes.
    pub(crate) fn extent(&self) -> LogExtent {
        let log = self.log.log.read();
        LogExtent {
            first: log.first_offset(),
            next: log.next_offset(),
            segments: log.segment_count(),
            bytes: log.bytes(),
        }
    }

    /// Resolves where a reader starts; a time needs the files, so it is
    /// looked up on a blocking thread.
    pub(crate) async fn resolve(&self, start: StartAt) -> std::io::Result<u64> {
        if let StartAt::Time(_) = start {
            let log = self.log.clone();
            return tokio::task::spawn_blocking(move || start.resolve(&log.log.read()))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        }
        start.resolve(&self.log.log.read())
    }

    /// Reads entries from `from` on a blocking thread.
    pub(crate) async fn read(
        &self,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
        filter: Option<Filter>,
    ) -> std::io::Result<crate::store::stream_log::Read> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || {
            log.log
                .read()
                .read(from, max_entries, max_bytes, filter.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Synced chunks from the one holding `from` on, their pages read
    /// ahead, on a blocking thread: for sending as they lie on disk.
    pub(crate) async fn chunks(
        &self,
        from: u64,
        max_bytes: usize,
    ) -> std::io::Result<Vec<crate::store::stream_log::ChunkRef>> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.log.read().chunks(from, max_bytes))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Starts delivering to `consumer` as `read` says: after its stored
    /// offset when it tracks one and has one.
    pub(crate) fn add_reader(&self, queue: Arc<Queue>, consumer: Arc<Consumer>, read: ReadSpec) {
        let start = self.start_of(&consumer.tag, &read);
        let filter = read.filter;
        // Resolved now for every start but a time, so `next` means what
        // is appended after consume-ok; a single active consumer's when it
        // becomes active (after the one before it, from the offset that
        // one stored when they share a tag).
        let at = match start {
            StartAt::Time(_) => None,
            _ if self.single_active => None,
            start => start.resolve(&self.log.log.read()).ok(),
        };
        let reader = Arc::new(Reader {
            consumer,
            next: AtomicU64::new(at.unwrap_or(0)),
            filter,
            wake: Notify::new(),
            stopped: AtomicBool::new(false),
        });
        self.tail.readers.lock().push(reader.clone());
        tokio::spawn(async move {
            if at.is_none() {
                let Some(stream) = queue.stream() else { return };
                while !stream.is_active(&reader) {
                    if reader.stopped.load(Ordering::Acquire) {
                        return;
                    }
                    reader.wake.notified().await;
                }
                let start = if stream.single_active {
                    stream.start_of(
                        &reader.consumer.tag,
                        &read_again(start, reader.consumer.tracks_offset),
                    )
                } else {
                    start
                };
                match stream.resolve(start).await {
                    Ok(offset) => reader.next.store(offset, Ordering::Relaxed),
                    Err(e) => return read_failed(&queue, &reader, e),
                }
            }
            deliver_loop(queue, reader).await;
        });
    }

    /// Where a reader starts: after its stored offset when it tracks one
    /// and has one, else where it asked.
    fn start_of(&self, tag: &str, read: &ReadSpec) -> StartAt {
        match read.track.then(|| self.query_offset(tag)).flatten() {
            Some(offset) => StartAt::Offset(offset + 1),
            None => read.start,
        }
    }

    /// Whether `reader` may receive: always, but with single active
    /// consumer only the oldest reader.
    fn is_active(&self, reader: &Arc<Reader>) -> bool {
        !self.single_active
            || self
                .tail
                .readers
                .lock()
                .first()
                .is_some_and(|r| Arc::ptr_eq(r, reader))
    }

    /// Stops delivering to `consumer`.
    pub(crate) fn remove_reader(&self, consumer: &Arc<Consumer>) {
        self.tail.readers.lock().retain(|r| {
            if Arc::ptr_eq(&r.consumer, consumer) {
                r.stopped.store(true, Ordering::Release);
                r.wake.notify_one();
                return false;
            }
            true
        });
        if self.single_active {
            // The next in line may be active now.
            self.tail.wake_all();
        }
    }

    /// `consumer` acknowledged the delivery of `offset`: a tracking
    /// consumer's stored offset moves forward to it.
    pub(crate) fn acked(&self, consumer: &Consumer, offset: u64) {
        if consumer.tracks_offset {
            self.store_offset_at_least(&consumer.tag, offset);
        }
    }

    /// Whether an offset can be stored for `name`: it has one, or there is
    /// room for another name.
    pub(crate) fn can_track(&self, name: &str) -> bool {
        let t = self.tracked.lock();
        t.values.contains_key(name) || t.values.len() < MAX_TRACKED
    }

    /// The offset stored for `name`, if any.
    pub(crate) fn query_offset(&self, name: &str) -> Option<u64> {
        self.tracked.lock().values.get(name).copied()
    }

    /// Stores `offset` for `name` (the stream protocol's StoreOffset, which
    /// may also move back). False when the stream already stores
    /// [`MAX_TRACKED`] other names.
    pub(crate) fn store_offset(&self, name: &str, offset: u64) -> bool {
        self.store(&self.tracked, name, |_| offset)
    }

    fn store_offset_at_least(&self, name: &str, offset: u64) -> bool {
        self.store(&self.tracked, name, |old| {
            old.map_or(offset, |o| o.max(offset))
        })
    }

    /// The last publishing id stored for publisher `name` (the stream
    /// protocol's QueryPublisherSequence), if any.
    pub(crate) fn publisher_sequence(&self, name: &str) -> Option<u64> {
        self.publishers.lock().values.get(name).copied()
    }

    /// Records that publisher `name`'s messages up to publishing id `seq`
    /// are on disk (call it once their append is confirmed). Written after
    /// the log, so after a crash a publisher may be deduplicated against an
    /// older id: a resend is stored again (at-least-once), never dropped.
    pub(crate) fn set_publisher_sequence(&self, name: &str, seq: u64) -> bool {
        self.store(&self.publishers, name, |old| {
            old.map_or(seq, |o| o.max(seq))
        })
    }

    fn store(
        &self,
        which: &Arc<Mutex<Tracked>>,
        name: &str,
        new: impl FnOnce(Option<u64>) -> u64,
    ) -> bool {
        let mut t = which.lock();
        let old = t.values.get(name).copied();
        if old.is_none() && t.values.len() >= MAX_TRACKED {
            return false;
        }
        let value = new(old);
        if old == Some(value) {
            return true;
        }
        t.values.insert(name.to_string(), value);
        t.changed = true;
        if !t.saving {
            t.saving = true;
            let (tracked, dir, name) = (which.clone(), self.dir.clone(), self.log.name.clone());
            let files = self.writer.files().clone();
            self.writer.run_file_job(Box::new(move || {
                save_tracked(&tracked, &dir, &name, &files)
            }));
        }
        true
    }

    /// The stored offsets, for the management API.
    pub(crate) fn stored_offsets(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = self
            .tracked
            .lock()
            .values
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort();
        all
    }

    /// Completes once an entry at or past `offset` is readable, or the
    /// stream is deleted (check [`is_deleted`](Self::is_deleted)).
    pub(crate) async fn wait_readable(&self, offset: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.readable_end() > offset || self.is_deleted() {
                return;
            }
            changed.await;
        }
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The readers, for the management API.
    pub(crate) fn readers(&self) -> Vec<Arc<Reader>> {
        self.tail.readers.lock().clone()
    }

    /// `watcher` is notified when entries become readable and when the
    /// stream is deleted (held weakly: dropping it is unwatching).
    pub(crate) fn watch(&self, watcher: &Arc<Notify>) {
        let mut w = self.tail.watchers.lock();
        if !w
            .iter()
            .any(|x| std::ptr::eq(x.as_ptr(), Arc::as_ptr(watcher)))
        {
            w.push(Arc::downgrade(watcher));
        }
    }

    /// Credit came back or a channel has room again: readers look again.
    pub(crate) fn wake_readers(&self) {
        self.tail.wake_all();
    }

    /// The stream was deleted: readers stop, the files go.
    pub(crate) fn delete(&self) {
        self.deleted.store(true, Ordering::Release);
        self.changed.notify_waiters();
        for r in self.tail.readers.lock().drain(..) {
            r.stopped.store(true, Ordering::Release);
            r.wake.notify_one();
        }
        for w in self.tail.watchers.lock().drain(..) {
            if let Some(n) = w.upgrade() {
                n.notify_one();
            }
        }
        self.writer.delete(self.log.clone());
    }
}

/// Writes stored values until no change is left unsaved (on the writer
/// thread, so acks and confirms never wait for a file).
fn save_tracked(
    tracked: &Mutex<Tracked>,
    dir: &Path,
    stream: &str,
    files: &crate::store::journal::Recorder,
) {
    loop {
        let (file, snapshot): (&str, Vec<(String, u64)>) = {
            let mut t = tracked.lock();
            if !t.changed {
                t.saving = false;
                return;
            }
            t.changed = false;
            let values = t.values.iter().map(|(k, v)| (k.clone(), *v)).collect();
            (t.file, values)
        };
        if let Err(e) = stream_offsets::save(dir, file, &snapshot, files) {
            // Unless the stream was deleted meanwhile, a reader will
            // resume earlier than it should: said, never silent.
            if dir.exists() {
                tracing::error!(stream, error = %e, "could not store a stream's consumer offsets");
            }
            tracked.lock().saving = false;
            return;
        }
    }
}

/// Where a stream's log stands.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogExtent {
    pub(crate) first: u64,
    pub(crate) next: u64,
    pub(crate) segments: usize,
    pub(crate) bytes: u64,
}

/// A reader's start as a `ReadSpec` again, to look up its stored offset
/// at activation.
fn read_again(start: StartAt, track: bool) -> ReadSpec {
    ReadSpec {
        start,
        filter: None,
        track,
    }
}

/// Delivers to one consumer for as long as it is subscribed.
async fn deliver_loop(queue: Arc<Queue>, reader: Arc<Reader>) {
    let Some(stream) = queue.stream() else { return };
    let consumer = &reader.consumer;
    loop {
        if reader.stopped.load(Ordering::Acquire) {
            return;
        }
        let next = reader.next.load(Ordering::Relaxed);
        let credit =
            u32::from(consumer.prefetch).saturating_sub(consumer.unacked.load(Ordering::Relaxed));
        if credit == 0 || next >= stream.readable_end() {
            reader.wake.notified().await;
            continue;
        }
        let max = (credit as usize).min(READ_ENTRIES);
        let read = match stream
            .read(next, max, READ_BYTES, reader.filter.clone())
            .await
        {
            Ok(read) => read,
            Err(e) => return read_failed(&queue, &reader, e),
        };
        let mut stopped_at = None;
        for entry in read.entries {
            let offset = entry.offset;
            let msg = match delivery(entry, &queue.name) {
                Ok(msg) => msg,
                Err(why) => {
                    return read_failed(&queue, &reader, std::io::Error::other(why));
                }
            };
            if consumer.channel.try_deliver(consumer, &queue, msg).is_err() {
                stopped_at = Some(offset);
                break;
            }
            queue.stats.delivered(false, false);
        }
        match stopped_at {
            // No room (credit, the channel's prefetch, its outbox): wait
            // for an ack or the outbox to drain.
            Some(offset) => {
                reader.next.store(offset, Ordering::Relaxed);
                reader.wake.notified().await;
            }
            None => reader.next.store(read.next, Ordering::Relaxed),
        }
    }
}

/// The log could not be read: the consumer is cancelled (it is told, if it
/// asked to be), and the reason logged, never skipped silently.
fn read_failed(queue: &Arc<Queue>, reader: &Arc<Reader>, e: std::io::Error) {
    tracing::error!(queue = %queue.name, vhost = %queue.vhost, consumer = %reader.consumer.tag, error = %e, "a stream could not be read; its consumer is cancelled");
    if let Some(stream) = queue.stream() {
        stream.remove_reader(&reader.consumer);
    }
    queue.remove_consumer(&reader.consumer);
    reader.consumer.channel.cancel_by_broker(&reader.consumer);
}

/// The delivery of one entry to an AMQP 0-9-1 consumer.
fn delivery(entry: Entry, stream: &str) -> Result<QueuedMessage, String> {
    let offset = entry.offset;
    let message =
        match stream_entry::decode(Bytes::from(entry.payload)).map_err(|e| e.to_string())? {
            Payload::Amqp091 {
                exchange,
                routing_key,
                properties,
                body,
            } => Message::new(
                exchange,
                routing_key,
                with_offset_header(&properties, offset),
                body,
                true,
            ),
            // Published over the stream protocol: converted as RabbitMQ
            // converts (amqp10), the offset header added as to any other.
            Payload::Amqp10(bytes) => {
                let m = crate::amqp10::to_amqp091(&bytes, stream).map_err(|e| e.to_string())?;
                Message::new(
                    m.exchange,
                    m.routing_key,
                    with_offset_header(&m.properties, offset),
                    m.body,
                    true,
                )
            }
        };
    Ok(QueuedMessage::new(offset, Arc::new(message)))
}

/// `properties` (a content header's, flags onwards) with the
/// `x-stream-offset` header added: appended to the headers table as bytes
/// when it has none yet, the usual case; rebuilt when it has.
fn with_offset_header(properties: &[u8], offset: u64) -> Bytes {
    const HEADERS: u16 = 1 << 13;
    let fast = || -> Option<Vec<u8>> {
        let flags = u16::from_be_bytes(properties.get(0..2)?.try_into().ok()?);
        let mut at = 2;
        // content-type and content-encoding: short strings before headers.
        for bit in [15, 14] {
            if flags & (1 << bit) != 0 {
                at += 1 + *properties.get(at)? as usize;
            }
        }
        let mut field = Vec::with_capacity(1 + OFFSET_HEADER.len() + 9);
        field.push(OFFSET_HEADER.len() as u8);
        field.extend_from_slice(OFFSET_HEADER);
        field.push(b'l');
        field.extend_from_slice(&(offset as i64).to_be_bytes());
        let mut out = Vec::with_capacity(properties.len() + field.len() + 4);
        if flags & HEADERS != 0 {
            let len = u32::from_be_bytes(properties.get(at..at + 4)?.try_into().ok()?) as usize;
            let table = properties.get(at + 4..at + 4 + len)?;
            let mut name = vec![OFFSET_HEADER.len() as u8];
            name.extend_from_slice(OFFSET_HEADER);
            if table.windows(name.len()).any(|w| w == name) {
                return None;
            }
            out.extend_from_slice(&properties[..at]);
            out.extend_from_slice(&((len + field.len()) as u32).to_be_bytes());
            out.extend_from_slice(table);
            out.extend_from_slice(&field);
            out.extend_from_slice(&properties[at + 4 + len..]);
        } else {
            out.extend_from_slice(&(flags | HEADERS).to_be_bytes());
            out.extend_from_slice(properties.get(2..at)?);
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(&field);
            out.extend_from_slice(&properties[at..]);
        }
        Some(out)
    };
    if let Some(out) = fast() {
        return Bytes::from(out);
    }
    super::dead_letter::with_header(
        properties,
        "x-stream-offset",
        amq_protocol::types::AMQPValue::LongLongInt(offset as i64),
    )
    .unwrap_or_else(|| Bytes::copy_from_slice(properties))
}

/// The `x-stream-filter-value` header of a message, if it has one.
fn filter_value(message: &Message) -> Option<String> {
    let raw = &message.properties;
    let mut name = vec![FILTER_VALUE_HEADER.len() as u8];
    name.extend_from_slice(FILTER_VALUE_HEADER.as_bytes());
    if !raw.windows(name.len()).any(|w| w == name) {
        return None;
    }
    let props = crate::protocol::properties::PropertiesView::parse(raw)?;
    match props.headers().as_ref()?.inner().get(FILTER_VALUE_HEADER)? {
        amq_protocol::types::AMQPValue::LongString(s) => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        amq_protocol::types::AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn now_ms() -> i64 {
    super::timers::now_ms() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn encoded(props: &AMQPProperties) -> Vec<u8> {
        cookie_factory::gen_simple(gen_properties(props), Vec::new()).unwrap()
    }

    fn offset_of(raw: &[u8]) -> (AMQPProperties, Option<AMQPValue>) {
        let props = crate::protocol::properties::PropertiesView::parse(raw).unwrap();
        let v = props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-offset").cloned());
        (props, v)
    }

    #[test]
    fn offset_header_is_added_to_every_shape_of_properties() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::LongString("b".into()));
        let mut again = FieldTable::default();
        again.insert("x-stream-offset".into(), AMQPValue::LongLongInt(3));
        let cases = [
            AMQPProperties::default(),
            AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_delivery_mode(2),
            AMQPProperties::default()
                .with_content_type("a".into())
                .with_content_encoding("gzip".into())
                .with_headers(table)
                .with_message_id("m".into()),
            AMQPProperties::default().with_headers(again),
        ];
        for props in cases {
            let raw = with_offset_header(&encoded(&props), 42);
            let (got, offset) = offset_of(&raw);
            assert_eq!(offset, Some(AMQPValue::LongLongInt(42)), "{props:?}");
            assert_eq!(got.content_type(), props.content_type());
            assert_eq!(got.delivery_mode(), props.delivery_mode());
            assert_eq!(got.message_id(), props.message_id());
            let mut want = props.headers().clone().unwrap_or_default();
            want.insert("x-stream-offset".into(), AMQPValue::LongLongInt(42));
            assert_eq!(got.headers().as_ref(), Some(&want));
        }
    }
}
