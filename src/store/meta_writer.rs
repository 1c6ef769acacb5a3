//! The metadata writer: one thread that applies topology and access-control
//! changes to sled and makes them durable, so no tokio worker (and no lock
//! of the broker's maps) ever waits for an fsync.
//!
//! Group commit, as the persister: it blocks for the first change, takes
//! every change queued behind it, applies them in order, then flushes sled
//! once and writes the topology version file once for the whole batch.
//! Callers do not wait for their change; a method whose reply promises
//! durability (declare-ok, an HTTP 201) notes `queued()` before it changes
//! anything and awaits `durable_since` after.

use super::journal::{Recorder, Tree};
use super::recovery;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use tokio::sync::watch;
use tracing::error;

/// Most changes in one batch.
const MAX_BATCH: usize = 4096;
/// Failed changes remembered for `durable_since` (older ones count as
/// failed for a mark before them: a disk that fails this often is broken).
const FAILURES_KEPT: usize = 64;

/// A change to the topology (`meta`) or access-control (`access`) tree.
pub(crate) type Change = Box<dyn FnOnce(&Trees) -> Result<(), String> + Send>;

/// What a change may write.
pub(crate) struct Trees {
    pub(crate) path: PathBuf,
    pub(crate) meta: Tree,
    pub(crate) access: Tree,
    /// Writes files beside sled (a new queue's index directory).
    pub(crate) files: Recorder,
}

enum Job {
    Change(u64, Change),
    Stop,
}

/// How far the writer got: every change up to `done` is durable or failed.
#[derive(Default)]
struct Progress {
    done: u64,
    /// Failed changes (seqs from, to inclusive, why), oldest first.
    failed: VecDeque<(u64, u64, String)>,
    /// Failures before this seq were forgotten.
    forgotten_before: u64,
}

pub(crate) struct MetaWriter {
    /// The sender, and the last seq handed out: taken together so the
    /// writer sees changes in seq order.
    queue: parking_lot::Mutex<Sender<Job>>,
    queued: AtomicU64,
    progress: watch::Sender<Progress>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl MetaWriter {
    /// Starts the writer thread; `version` is the last topology version
    /// written (see `recovery::check_topology_version`).
    pub(crate) fn start(db: sled::Db, trees: Trees, version: u64) -> std::io::Result<MetaWriter> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (progress, _) = watch::channel(Progress::default());
        let updates = progress.clone();
        let thread = std::thread::Builder::new()
            .name("leveret-metadata".into())
            .spawn(move || run(db, trees, version, rx, updates))?;
        Ok(MetaWriter {
            queue: parking_lot::Mutex::new(tx),
            queued: AtomicU64::new(0),
            progress,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Queues a change; it is applied and flushed on the writer thread.
    pub(crate) fn write(&self, change: Change) {
        let queue = self.queue.lock();
        let seq = self.queued.load(Ordering::Relaxed) + 1;
        self.queued.store(seq, Ordering::Release);
        // After shutdown the writer is gone and nothing more is written.
        let _ = queue.send(Job::Change(seq, change));
    }

    /// Changes queued so far: a mark for `durable_since`.
    pub(crate) fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    /// When changes were queued since `mark` (by anyone): a future that
    /// completes once they are durable, with the error of one that failed.
    pub(crate) fn durable_since(
        &self,
        mark: u64,
    ) -> Option<impl std::future::Future<Output = Result<(), String>> + Send + 'static> {
        let upto = self.queued();
        if upto <= mark {
            return None;
        }
        let mut progress = self.progress.subscribe();
        Some(async move {
            let p = progress
                .wait_for(|p| p.done >= upto)
                .await
                .map_err(|_| "the store is closed".to_string())?;
            if mark < p.forgotten_before {
                return Err("earlier writes to the store failed".into());
            }
            match p
                .failed
                .iter()
                .find(|(from, to, _)| *to > mark && *from <= upto)
            {
                Some((_, _, why)) => Err(why.clone()),
                None => Ok(()),
            }
        })
    }

    /// Writes what is queued, then ends the thread.
    pub(crate) fn close(&self) {
        let _ = self.queue.lock().send(Job::Stop);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

// The writer's own thread: blocking on its queue and on sled's flush is
// what it is for.
#[allow(clippy::disallowed_methods)]
fn run(
    db: sled::Db,
    trees: Trees,
    mut version: u64,
    rx: Receiver<Job>,
    progress: watch::Sender<Progress>,
) {
    let mut batch = Vec::new();
    loop {
        let mut stop = false;
        match rx.recv() {
            Ok(Job::Change(seq, change)) => batch.push((seq, change)),
            Ok(Job::Stop) | Err(_) => stop = true,
        }
        while !stop && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Job::Change(seq, change)) => batch.push((seq, change)),
                Ok(Job::Stop) => stop = true,
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let first = batch[0].0;
        let mut last = first;
        let mut failed = Vec::new();
        for (seq, change) in batch.drain(..) {
            last = seq;
            if let Err(e) = change(&trees) {
                failed.push((seq, seq, e));
            }
        }
        match flush(&db, &trees, version + 1) {
            Ok(()) => version += 1,
            // Nothing of the batch is known to be durable.
            Err(e) => failed = vec![(first, last, e)],
        }
        for (_, _, e) in &failed {
            error!(error = %e, path = %trees.path.display(), "cannot write topology, users or permissions to the store");
        }
        // Durable here; in a cluster, once the followers hold it too.
        let progress = progress.clone();
        trees.files.after_replicated(move || {
            progress.send_modify(|p| {
                p.done = last;
                p.failed.extend(failed);
                while p.failed.len() > FAILURES_KEPT {
                    if let Some((_, to, _)) = p.failed.pop_front() {
                        p.forgotten_before = to + 1;
                    }
                }
            })
        });
        if stop {
            return;
        }
    }
}

/// Flushes sled with topology version `next`, then writes the version
/// outside sled: a sled log that later reads back without the changes is
/// caught at start-up.
#[allow(clippy::disallowed_methods)]
fn flush(db: &sled::Db, trees: &Trees, next: u64) -> Result<(), String> {
    trees
        .meta
        .insert(recovery::TOPOLOGY_VERSION_KEY, &next.to_be_bytes()[..])
        .and_then(|_| db.flush())
        .map_err(|e| e.to_string())?;
    let path = trees.path.join(recovery::TOPOLOGY_VERSION);
    (|| -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        trees
            .files
            .write_at(&f, &path, &recovery::encode_topology_version(next), 0)?;
        f.sync_data()?;
        if next == 1 {
            super::segments::sync_dir(&path)?;
        }
        Ok(())
    })()
    .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::super::journal::SledTree;
    use super::*;

    fn writer(name: &str) -> (MetaWriter, PathBuf) {
        let dir = std::env::temp_dir().join(format!("leveret-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = sled::open(&dir).unwrap();
        let files = Recorder::default();
        let trees = Trees {
            path: dir.clone(),
            meta: Tree::new(db.open_tree("meta").unwrap(), SledTree::Meta, files.clone()),
            access: Tree::new(
                db.open_tree("access").unwrap(),
                SledTree::Access,
                files.clone(),
            ),
            files,
        };
        (MetaWriter::start(db, trees, 0).unwrap(), dir)
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_failed_change_fails_the_marks_before_it_and_only_those() {
        let (w, dir) = writer("fail");
        let start = w.queued();
        assert!(w.durable_since(start).is_none(), "nothing queued");
        w.write(Box::new(|t| {
            t.meta
                .insert(b"q1", b"1")
                .map(drop)
                .map_err(|e| e.to_string())
        }));
        let after_ok = w.queued();
        assert_eq!(block_on(w.durable_since(start).unwrap()), Ok(()));
        w.write(Box::new(|_| Err("no room".into())));
        let after_fail = w.queued();
        w.write(Box::new(|t| {
            t.meta
                .insert(b"q2", b"2")
                .map(drop)
                .map_err(|e| e.to_string())
        }));
        assert_eq!(
            block_on(w.durable_since(after_ok).unwrap()),
            Err("no room".to_string())
        );
        assert_eq!(block_on(w.durable_since(after_fail).unwrap()), Ok(()));
        w.close();
        let db = sled::open(&dir).unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert!(meta.get(b"q2").unwrap().is_some(), "written and flushed");
        let version = std::fs::read(dir.join(recovery::TOPOLOGY_VERSION)).unwrap();
        assert!(!version.is_empty(), "the version file is written");
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
