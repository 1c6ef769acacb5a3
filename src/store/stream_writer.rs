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

// Stream queues (issue 18) are built on this; until they use it, only its
// tests do.
#![allow(dead_code)]

use super::stream_log::{Pending, StreamLog};
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

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

/// A stream's log, shared by the writer (appends) and its readers.
pub(crate) struct Stream {
    pub(crate) name: String,
    pub(crate) log: RwLock<StreamLog>,
    failed: AtomicBool,
    /// Called on the writer thread once new entries are readable, with the
    /// offset after them.
    on_durable: Box<dyn Fn(u64) + Send + Sync>,
}

impl Stream {
    pub(crate) fn new(
        name: String,
        log: StreamLog,
        on_durable: Box<dyn Fn(u64) + Send + Sync>,
    ) -> Arc<Stream> {
        Arc::new(Stream {
            name,
            log: RwLock::new(log),
            failed: AtomicBool::new(false),
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

/// Hands appends to the `leveret-streams` thread.
#[derive(Clone)]
pub(crate) struct StreamWriter {
    tx: Sender<Append>,
}

impl StreamWriter {
    pub(crate) fn start() -> std::io::Result<StreamWriter> {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("leveret-streams".into())
            .spawn(move || run(rx))?;
        Ok(StreamWriter { tx })
    }

    /// Appends `entries` to `stream`; `done` is called (on the writer
    /// thread) once they are on disk, or failed.
    pub(crate) fn append(&self, stream: Arc<Stream>, entries: Vec<NewEntry>, done: Appended) {
        if let Err(e) = self.tx.send(Append {
            stream,
            entries,
            done,
        }) {
            let a = e.0;
            (a.done)(Err(a.stream.failure("the stream writer has stopped")));
        }
    }
}

// The writer's own thread: waiting for work blocks no tokio worker.
#[allow(clippy::disallowed_methods)]
fn run(rx: Receiver<Append>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        write_batch(&mut batch);
    }
}

/// Appends a batch, syncs each stream it touched once, then reports.
fn write_batch(batch: &mut Vec<Append>) {
    let mut results: Vec<Result<u64, StreamFailed>> = Vec::with_capacity(batch.len());
    let mut touched: Vec<Arc<Stream>> = Vec::new();
    for a in batch.iter() {
        results.push(append(a));
        if !touched.iter().any(|s| Arc::ptr_eq(s, &a.stream)) {
            touched.push(a.stream.clone());
        }
    }
    for stream in &touched {
        if let Err(e) = sync(stream) {
            stream.failed.store(true, Ordering::Release);
            tracing::error!(stream = %stream.name, error = %e, "a stream write failed: the stream takes no more messages");
        }
    }
    for (a, result) in batch.drain(..).zip(results) {
        let result = match result {
            Ok(_) if a.stream.has_failed() => Err(a.stream.failure("its write or fsync failed")),
            other => other,
        };
        (a.done)(result);
    }
}

fn append(a: &Append) -> Result<u64, StreamFailed> {
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

/// Writes and fsyncs what the stream's log holds, outside its lock, then
/// makes it readable and says so.
fn sync(stream: &Stream) -> std::io::Result<()> {
    let Some(pending): Option<Pending> = stream.log.write().take_pending() else {
        return Ok(());
    };
    pending.write()?;
    stream.log.write().synced(&pending);
    (stream.on_durable)(pending.end_offset());
    Ok(())
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
            Box::new(move |next| {
                seen.fetch_max(next, Ordering::Relaxed);
            }),
        );
        let writer = StreamWriter::start().unwrap();
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
        let stream = Stream::new("s".into(), log, Box::new(|_| {}));
        stream.failed.store(true, Ordering::Release);
        let writer = StreamWriter::start().unwrap();
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
