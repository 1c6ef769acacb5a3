//! The `leveret-streams` thread: appends to stream logs and makes them
//! durable in batches. Everything waiting when it wakes is appended, then
//! each stream touched is written and fsynced once (group commit, as the
//! persister does for queues), and only then is each publisher told its
//! entries are on disk, and each stream that they can be read.
//!
//! The log is locked only to append (memory) and to take or mark the
//! pending bytes; the write and the fsync happen outside the lock, so
//! consumers keep reading meanwhile. A write that fails fails its stream
//! for good (`StreamFailed`): what it holds on disk is not known any more,
//! and nothing is confirmed that might not be there.

use super::journal::Recorder;
use super::stream_log::{Pending, StreamLog};
use super::Backlog;
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often retention by age is applied to streams nobody appends to.
const RETENTION_EVERY: Duration = Duration::from_secs(5);

/// How many appends one batch takes at most before it syncs.
const MAX_BATCH: usize = 4096;

/// An entry to append.
pub(crate) struct NewEntry {
    /// Milliseconds since the Unix epoch.
    pub(crate) timestamp: i64,
    pub(crate) filter: Option<String>,
    pub(crate) payload: Vec<u8>,
}

/// Told when an append is on disk: the offset of its first entry, or why
/// it is not.
pub(crate) type Appended = Box<dyn FnOnce(Result<u64, StreamFailed>) + Send>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {0} failed to write: {1}")]
pub(crate) struct StreamFailed(pub(crate) String, pub(crate) String);

/// What a stream keeps: whole segments are dropped, oldest first, while
/// the log is over `max_bytes` or a segment's newest entry is older than
/// `max_age_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Retention {
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age_ms: Option<u64>,
}

/// A stream's log, shared by the writer (appends) and its readers.
pub(crate) struct Stream {
    pub(crate) name: String,
    pub(crate) log: RwLock<StreamLog>,
    pub(crate) retention: Mutex<Retention>,
    failed: AtomicBool,
    /// Set once the stream is deleted: its files are gone or going.
    deleted: AtomicBool,
    /// Called on the writer thread once new entries are readable, with the
    /// offset after them.
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
}

impl Stream {
    pub(crate) fn new(
        name: String,
        log: StreamLog,
        retention: Retention,
        on_durable: Box<dyn Fn(u64) + Send + Sync>,
    ) -> Arc<Stream> {
        Arc::new(Stream {
            name,
            log: RwLock::new(log),
            retention: Mutex::new(retention),
            failed: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            on_durable,
        })
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn failure(&self, why: impl std::fmt::Display) -> StreamFailed {
        StreamFailed(self.name.clone(), why.to_string())
    }
}

struct Append {
    stream: Arc<Stream>,
    entries: Vec<NewEntry>,
    done: Appended,
}

/// A file job done on the writer thread, so no tokio worker does file I/O.
pub(crate) type FileJob = Box<dyn FnOnce() + Send>;

enum Job {
    Append(Append),
    Register(Weak<Stream>),
    /// Remove a deleted stream's files.
    Delete(Arc<Stream>),
    Other(FileJob),
}

/// Hands appends to the `leveret-streams` thread.
#[derive(Clone)]
pub(crate) struct StreamWriter {
    tx: Sender<Job>,
    /// The store's backlog: appends not yet taken into a batch count in
    /// it, so publishers are held back (not read) while the writer is
    /// behind, as they are for the persister.
    backlog: Arc<Backlog>,
    /// Writes the streams' files (and records them for followers).
    files: Recorder,
}

impl StreamWriter {
    pub(crate) fn start(backlog: Arc<Backlog>, files: Recorder) -> std::io::Result<StreamWriter> {
        let (tx, rx) = channel();
        let taken = backlog.clone();
        std::thread::Builder::new()
            .name("leveret-streams".into())
            .spawn({
                let files = files.clone();
                move || run(rx, &taken, &files)
            })?;
        Ok(StreamWriter { tx, backlog, files })
    }

    /// Appends `entries` to `stream`; `done` is called (on the writer
    /// thread) once they are on disk, or failed.
    pub(crate) fn append(&self, stream: Arc<Stream>, entries: Vec<NewEntry>, done: Appended) {
        self.backlog.add(payload_bytes(&entries));
        if let Err(e) = self.tx.send(Job::Append(Append {
            stream,
            entries,
            done,
        })) {
            if let Job::Append(a) = e.0 {
                (a.done)(Err(a.stream.failure("the stream writer has stopped")));
            }
        }
    }

    pub(crate) fn files(&self) -> &Recorder {
        &self.files
    }

    /// Keeps `stream`'s retention applied while nothing is appended to it.
    pub(crate) fn register(&self, stream: &Arc<Stream>) {
        let _ = self.tx.send(Job::Register(Arc::downgrade(stream)));
    }

    /// Removes the files of a deleted stream, after the appends already
    /// handed over (which fail: the stream is gone).
    pub(crate) fn delete(&self, stream: Arc<Stream>) {
        stream.deleted.store(true, Ordering::Release);
        let _ = self.tx.send(Job::Delete(stream));
    }

    /// Runs `job` on the writer thread, in order with the appends.
    pub(crate) fn run_file_job(&self, job: FileJob) {
        let _ = self.tx.send(Job::Other(job));
    }
}

fn payload_bytes(entries: &[NewEntry]) -> usize {
    entries.iter().map(|e| e.payload.len()).sum()
}

// The writer's own thread: waiting for work blocks no tokio worker.
#[allow(clippy::disallowed_methods)]
fn run(rx: Receiver<Job>, backlog: &Backlog, files: &Recorder) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut streams: Vec<Weak<Stream>> = Vec::new();
    let job = |job: Job, batch: &mut Vec<Append>, streams: &mut Vec<Weak<Stream>>| match job {
        Job::Append(a) => {
            backlog.sub(payload_bytes(&a.entries));
            batch.push(a)
        }
        Job::Register(s) => streams.push(s),
        Job::Delete(s) => {
            write_batch(batch, files);
            let (dir, files) = {
                let log = s.log.read();
                (log.dir().to_owned(), log.files().clone())
            };
            if let Err(e) = files.remove_dir_all(&dir) {
                tracing::error!(stream = %s.name, dir = %dir.display(), error = %e, "could not remove a deleted stream's files");
            }
        }
        Job::Other(f) => {
            write_batch(batch, files);
            f();
        }
    };
    loop {
        match rx.recv_timeout(RETENTION_EVERY) {
            Ok(first) => job(first, &mut batch, &mut streams),
            Err(RecvTimeoutError::Timeout) => {
                streams.retain(|s| s.upgrade().is_some_and(|s| apply_retention(&s)));
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => job(more, &mut batch, &mut streams),
                Err(_) => break,
            }
        }
        write_batch(&mut batch, files);
    }
}

/// Drops what `stream` no longer keeps; false once it is deleted.
fn apply_retention(stream: &Stream) -> bool {
    if stream.deleted.load(Ordering::Acquire) {
        return false;
    }
    let r = *stream.retention.lock();
    if r.max_bytes.is_none() && r.max_age_ms.is_none() {
        return true;
    }
    if stream.log.read().segment_count() < 2 {
        return true;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if let Err(e) = stream
        .log
        .write()
        .apply_retention(r.max_bytes, r.max_age_ms, now)
    {
        tracing::error!(stream = %stream.name, error = %e, "could not drop a stream's old segments");
    }
    true
}

/// Appends a batch, syncs each stream it touched once, then (in a
/// cluster, once the followers hold it too) makes it readable and reports.
fn write_batch(batch: &mut Vec<Append>, files: &Recorder) {
    if batch.is_empty() {
        return;
    }
    let mut results: Vec<Result<u64, StreamFailed>> = Vec::with_capacity(batch.len());
    let mut touched: Vec<Arc<Stream>> = Vec::new();
    for a in batch.iter() {
        results.push(append(a));
        if !touched.iter().any(|s| Arc::ptr_eq(s, &a.stream)) {
            touched.push(a.stream.clone());
        }
    }
    let mut written = Vec::with_capacity(touched.len());
    for stream in &touched {
        match write(stream) {
            Ok(Some(pending)) => written.push((stream.clone(), pending)),
            Ok(None) => {}
            Err(e) => {
                stream.failed.store(true, Ordering::Release);
                tracing::error!(stream = %stream.name, error = %e, "a stream write failed: the stream takes no more messages");
            }
        }
    }
    let reports: Vec<(Appended, Result<u64, StreamFailed>)> = batch
        .drain(..)
        .zip(results)
        .map(|(a, result)| {
            let result = match result {
                Ok(_) if a.stream.has_failed() => {
                    Err(a.stream.failure("its write or fsync failed"))
                }
                other => other,
            };
            (a.done, result)
        })
        .collect();
    files.after_replicated(move || {
        for (stream, pending) in written {
            stream.log.write().synced(&pending);
            (stream.on_durable)(pending.end_offset());
        }
        for (done, result) in reports {
            done(result);
        }
    });
    for stream in &touched {
        apply_retention(stream);
    }
}

fn append(a: &Append) -> Result<u64, StreamFailed> {
    if a.stream.deleted.load(Ordering::Acquire) {
        return Err(a.stream.failure("the stream was deleted"));
    }
    if a.stream.has_failed() {
        return Err(a.stream.failure("an earlier write failed"));
    }
    let mut log = a.stream.log.write();
    let first = log.next_offset();
    for e in &a.entries {
        if let Err(err) = log.append(e.timestamp, e.filter.as_deref(), &e.payload) {
            a.stream.failed.store(true, Ordering::Release);
            return Err(a.stream.failure(err));
        }
    }
    Ok(first)
}

/// Writes and fsyncs what the stream's log holds, outside its lock.
fn write(stream: &Stream) -> std::io::Result<Option<Pending>> {
    let Some(mut pending): Option<Pending> = stream.log.write().take_pending() else {
        return Ok(None);
    };
    pending.write()?;
    pending.written();
    Ok(Some(pending))
}

// The tests wait on plain threads, not tokio workers.
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;
    use std::time::Duration;

    fn dir(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "leveret-stream-writer-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ))
    }

    fn entry(n: u64) -> NewEntry {
        NewEntry {
            timestamp: n as i64,
            filter: None,
            payload: n.to_be_bytes().to_vec(),
        }
    }

    #[test]
    fn appends_from_many_threads_are_durable_and_readable_when_confirmed() {
        let path = dir("many");
        let (log, _) = StreamLog::open(&path, 4096).unwrap();
        let durable = Arc::new(AtomicU64::new(0));
        let seen = durable.clone();
        let stream = Stream::new(
            "s".into(),
            log,
            Retention::default(),
            Box::new(move |next| {
                seen.fetch_max(next, Ordering::Relaxed);
            }),
        );
        // A small limit, so the appends pass it: what they add, the writer
        // takes back, or publishers would be held back for good.
        let backlog = Arc::new(Backlog::new(64));
        let writer = StreamWriter::start(backlog.clone(), Recorder::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (writer, stream, tx) = (writer.clone(), stream.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let tx = tx.clone();
                        let check = stream.clone();
                        let entries = vec![entry(t * 1000 + i), entry(t * 1000 + i)];
                        writer.append(
                            stream.clone(),
                            entries,
                            Box::new(move |r| {
                                // Confirmed means readable.
                                let first = r.unwrap();
                                let log = check.log.read();
                                let read = log.read(first, 2, usize::MAX, None).unwrap();
                                tx.send(read.entries.len()).unwrap();
                            }),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let confirmed: Vec<usize> = (0..400)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        assert!(confirmed.iter().all(|&n| n == 2));
        assert_eq!(durable.load(Ordering::Relaxed), 800);
        assert_eq!(backlog.bytes.load(Ordering::Relaxed), 0);
        assert!(!backlog.is_over());
        let log = stream.log.read();
        assert_eq!(log.next_offset(), 800);
        assert!(log.segment_count() > 1);
        drop(log);
        // Each append's two entries are next to each other.
        let all = stream
            .log
            .read()
            .read(0, usize::MAX, usize::MAX, None)
            .unwrap();
        for pair in all.entries.chunks(2) {
            assert_eq!(pair[0].payload, pair[1].payload);
        }
        let _ = std::fs::remove_dir_all(&path);
    }

    #[test]
    fn a_failed_write_fails_the_stream_and_confirms_nothing_after() {
        let path = dir("failed");
        let (log, _) = StreamLog::open(&path, 1 << 20).unwrap();
        let stream = Stream::new("s".into(), log, Retention::default(), Box::new(|_| {}));
        stream.failed.store(true, Ordering::Release);
        let writer =
            StreamWriter::start(Arc::new(Backlog::new(usize::MAX)), Recorder::default()).unwrap();
        let (tx, rx) = mpsc::channel();
        writer.append(
            stream.clone(),
            vec![entry(1)],
            Box::new(move |r| tx.send(r).unwrap()),
        );
        let r = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(r.is_err(), "{r:?}");
        assert_eq!(stream.log.read().next_offset(), 0);
        let _ = std::fs::remove_dir_all(&path);
    }
}
