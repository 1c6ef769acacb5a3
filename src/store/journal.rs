//! The store's changes to its data directory, in the order they were made,
//! for replicas (issue 20, docs/CLUSTERING.md).
//!
//! Every write the store makes to a file it owns goes through a
//! [`Recorder`]: it writes locally, then (in cluster mode) appends the same
//! change to the [`Journal`], a ring of changes bounded in bytes that each
//! follower's sender reads from its own position. Changes are idempotent
//! (a write at an offset, a length, a removal, a sled key's value), so a
//! follower that copies a file while the leader is changing it and then
//! applies every change recorded since before the copy ends with the
//! leader's bytes.
//!
//! Whatever promises durability (a publisher confirm, tx.commit-ok, a
//! declare-ok for a durable object, a stream confirm) asks
//! [`Journal::after_replicated`] to run once the in-sync followers hold the
//! changes made so far. Without a journal (single node) a recorder does
//! nothing but the local write.

use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::error;

/// One change to the data directory. Paths are relative to it, `/`-separated.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Change {
    /// Bytes at an offset of a file (created, with its directories, if missing).
    Write {
        path: Arc<str>,
        at: u64,
        bytes: Bytes,
    },
    /// A file's length (a file created empty has length 0).
    SetLen { path: Arc<str>, len: u64 },
    /// A file, or a directory and everything in it, is gone.
    Remove { path: Arc<str> },
    /// A file took another's name (replacing it).
    Rename { from: Arc<str>, to: Arc<str> },
    /// A sled tree's key now holds `value` (`None`: removed).
    Sled {
        tree: SledTree,
        key: Bytes,
        value: Option<Bytes>,
    },
}

/// The sled trees the store keeps (see `recovery::open`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SledTree {
    Meta = 0,
    Access = 1,
    Marks = 2,
}

impl SledTree {
    pub(crate) const ALL: [SledTree; 3] = [SledTree::Meta, SledTree::Access, SledTree::Marks];

    pub(crate) fn name(self) -> &'static str {
        match self {
            SledTree::Meta => "meta",
            SledTree::Access => "access",
            SledTree::Marks => "marks",
        }
    }

    pub(crate) fn from_u8(n: u8) -> Option<SledTree> {
        SledTree::ALL.get(n as usize).copied()
    }
}

impl Change {
    /// Roughly what it holds in memory, for the journal's budget.
    fn cost(&self) -> usize {
        64 + match self {
            Change::Write { bytes, .. } => bytes.len(),
            Change::Sled { key, value, .. } => key.len() + value.as_ref().map_or(0, Bytes::len),
            _ => 0,
        }
    }
}

/// Changes read past the ring's start: the reader must copy the files again.
#[derive(Debug, PartialEq)]
pub(crate) struct Lagged;

type Release = Box<dyn FnOnce() + Send>;

/// Followers' senders are woken for this many bytes of changes recorded
/// with no promise waiting on them (else at commit points, see
/// [`Journal::commit_point`]).
const WAKE_BYTES: u64 = 1 << 20;

pub(crate) struct Journal {
    root: PathBuf,
    /// Most bytes of changes kept for followers that have not read them.
    budget: usize,
    ring: parking_lot::Mutex<Ring>,
    appended: tokio::sync::Notify,
    gate: parking_lot::Mutex<Gate>,
    /// Followers reading; with none, nothing is kept.
    readers: std::sync::atomic::AtomicUsize,
}

/// A follower's place among the journal's readers (see [`Journal::reader`]).
pub(crate) struct Reader(Arc<Journal>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0
            .readers
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct Ring {
    /// The position of `changes[0]`; positions count changes from the start.
    first: u64,
    changes: VecDeque<Change>,
    bytes: usize,
    /// The last commit point: a promise waits (or is about to) for the
    /// followers to hold every change before it.
    due: u64,
    /// `total` when the senders were last woken.
    woken_at: u64,
    /// Bytes of every change recorded (for followers' lag), and of those
    /// before each kept one.
    total: u64,
    before: VecDeque<u64>,
}

/// Durability promises waiting for the followers.
struct Gate {
    /// Every change before this position is on the in-sync followers' disks
    /// (`u64::MAX` until replication says otherwise when nothing need wait).
    replicated: u64,
    held: VecDeque<(u64, Release)>,
}

impl Journal {
    /// A journal of changes under `root`, keeping at most `budget` bytes for
    /// followers; promises wait for the followers until `replicated_to` says
    /// they hold the changes.
    pub(crate) fn new(root: &Path, budget: usize) -> Arc<Journal> {
        Arc::new(Journal {
            root: root.to_owned(),
            budget,
            ring: parking_lot::Mutex::new(Ring {
                first: 0,
                changes: VecDeque::new(),
                bytes: 0,
                due: 0,
                woken_at: 0,
                total: 0,
                before: VecDeque::new(),
            }),
            appended: tokio::sync::Notify::new(),
            gate: parking_lot::Mutex::new(Gate {
                replicated: 0,
                held: VecDeque::new(),
            }),
            readers: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The position after the last change recorded.
    pub(crate) fn end(&self) -> u64 {
        let ring = self.ring.lock();
        ring.first + ring.changes.len() as u64
    }

    /// Registers a reader: changes recorded from now on are kept (within
    /// the budget) until it drops this.
    pub(crate) fn reader(self: &Arc<Self>) -> Reader {
        self.readers
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Reader(self.clone())
    }

    fn record(&self, change: Change) {
        let mut ring = self.ring.lock();
        let cost = change.cost();
        if self.readers.load(std::sync::atomic::Ordering::Acquire) == 0 {
            // Nobody to read it: a follower joining later copies files.
            ring.first += ring.changes.len() as u64 + 1;
            ring.changes.clear();
            ring.before.clear();
            ring.bytes = 0;
            ring.total += cost as u64;
            return;
        }
        ring.bytes += cost;
        let total = ring.total;
        ring.before.push_back(total);
        ring.total += cost as u64;
        ring.changes.push_back(change);
        // A follower that far behind copies the files again instead.
        while ring.bytes > self.budget && ring.changes.len() > 1 {
            if let Some(old) = ring.changes.pop_front() {
                ring.before.pop_front();
                ring.bytes -= old.cost();
                ring.first += 1;
            }
        }
        // Senders are not woken for each change: a store batch records
        // several (bodies, index slots, headers, marks), and each send
        // ends with a mark the followers fsync. They are woken at commit
        // points, or when this much has piled up.
        if ring.total - ring.woken_at >= WAKE_BYTES {
            ring.woken_at = ring.total;
            drop(ring);
            self.appended.notify_waiters();
        }
    }

    /// Marks the changes recorded so far as ones a promise will wait for
    /// (the caller fsyncs them next, then asks [`Self::after_replicated_at`]
    /// with the position returned), and wakes the followers' senders: the
    /// followers write and fsync them while the leader does.
    pub(crate) fn commit_point(&self) -> u64 {
        let mut ring = self.ring.lock();
        let end = ring.first + ring.changes.len() as u64;
        if end > ring.due {
            ring.due = end;
            ring.woken_at = ring.total;
            drop(ring);
            self.appended.notify_waiters();
        }
        end
    }

    /// The last commit point.
    pub(crate) fn due(&self) -> u64 {
        self.ring.lock().due
    }

    /// Changes from position `from` on, at most about `max_bytes` of them
    /// (at least one when there is one).
    pub(crate) fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<Change>, Lagged> {
        let ring = self.ring.lock();
        if from < ring.first {
            return Err(Lagged);
        }
        let skip = (from - ring.first) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for change in ring.changes.range(skip.min(ring.changes.len())..) {
            if !out.is_empty() && bytes + change.cost() > max_bytes {
                break;
            }
            bytes += change.cost();
            out.push(change.clone());
        }
        Ok(out)
    }

    /// Bytes of the changes recorded from `position` on (all kept ones if
    /// it is older than the ring).
    pub(crate) fn bytes_after(&self, position: u64) -> u64 {
        let ring = self.ring.lock();
        let end = ring.first + ring.changes.len() as u64;
        if position >= end {
            return 0;
        }
        let i = position.saturating_sub(ring.first) as usize;
        ring.before.get(i).map_or(0, |b| ring.total - b)
    }

    /// Completes when a sender at `from` has something to send that
    /// cannot wait: a commit point past it, or `WAKE_BYTES` of changes
    /// (at once if there is).
    pub(crate) async fn wait_due(&self, from: u64) {
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let ring = self.ring.lock();
                let end = ring.first + ring.changes.len() as u64;
                let piled = match from.checked_sub(ring.first) {
                    Some(i) => ring
                        .before
                        .get(i as usize)
                        .is_some_and(|b| ring.total - b >= WAKE_BYTES),
                    None => true, // fell behind the ring: the sender finds out
                };
                if ring.due > from || (end > from && piled) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Runs `release` once every change recorded so far is replicated.
    pub(crate) fn after_replicated(&self, release: Release) {
        let end = self.commit_point();
        self.after_replicated_at(end, release);
    }

    /// Runs `release` once every change before `position` (a commit
    /// point's) is replicated.
    pub(crate) fn after_replicated_at(&self, position: u64, release: Release) {
        let mut gate = self.gate.lock();
        if gate.held.is_empty() && gate.replicated >= position {
            drop(gate);
            release();
            return;
        }
        // In position order (a store batch's commit point may precede a
        // metadata write's promise made meanwhile).
        let at = gate
            .held
            .iter()
            .rposition(|(p, _)| *p <= position)
            .map_or(0, |i| i + 1);
        gate.held.insert(at, (position, release));
    }

    /// The in-sync followers hold every change before `position`
    /// (`u64::MAX`: nothing needs to wait for them).
    pub(crate) fn replicated_to(&self, position: u64) {
        let mut ready = Vec::new();
        {
            let mut gate = self.gate.lock();
            gate.replicated = position;
            while gate.held.front().is_some_and(|(at, _)| *at <= position) {
                if let Some((_, release)) = gate.held.pop_front() {
                    ready.push(release);
                }
            }
        }
        for release in ready {
            release();
        }
    }

    fn relative(&self, path: &Path) -> Option<Arc<str>> {
        let rel = path.strip_prefix(&self.root).ok()?;
        let mut out = String::new();
        for part in rel.components() {
            let std::path::Component::Normal(part) = part else {
                return None;
            };
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(part.to_str()?);
        }
        (!out.is_empty()).then(|| out.into())
    }
}

/// Writes the store's files, recording each change for followers when the
/// store is replicated.
#[derive(Clone, Default)]
pub(crate) struct Recorder(Option<Arc<Journal>>);

impl Recorder {
    pub(crate) fn new(journal: Option<Arc<Journal>>) -> Recorder {
        Recorder(journal)
    }

    fn record(&self, path: &Path, change: impl FnOnce(Arc<str>) -> Change) {
        if let Some(journal) = &self.0 {
            match journal.relative(path) {
                Some(rel) => journal.record(change(rel)),
                // Every store path is under the data directory; one that is
                // not would leave the followers without it: say so loudly.
                None => {
                    error!(path = %path.display(), "a store file outside the data directory is not replicated")
                }
            }
        }
    }

    pub(crate) fn write_at(
        &self,
        file: &File,
        path: &Path,
        bytes: &[u8],
        at: u64,
    ) -> std::io::Result<()> {
        self.write_at_with(file, bytes, at, || path.to_owned())
    }

    /// As `write_at`, naming the file only when it is recorded (the hot
    /// paths write every batch: no path is built for a single node).
    pub(crate) fn write_at_with(
        &self,
        file: &File,
        bytes: &[u8],
        at: u64,
        path: impl FnOnce() -> PathBuf,
    ) -> std::io::Result<()> {
        file.write_all_at(bytes, at)?;
        if self.0.is_some() {
            self.record(&path(), |path| Change::Write {
                path,
                at,
                bytes: Bytes::copy_from_slice(bytes),
            });
        }
        Ok(())
    }

    pub(crate) fn set_len(&self, file: &File, path: &Path, len: u64) -> std::io::Result<()> {
        file.set_len(len)?;
        self.record(path, |path| Change::SetLen { path, len });
        Ok(())
    }

    /// Records that `path` was created, or truncated, empty (by the caller).
    pub(crate) fn created(&self, path: &Path) {
        self.record(path, |path| Change::SetLen { path, len: 0 });
    }

    pub(crate) fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)?;
        self.record(path, |path| Change::Remove { path });
        Ok(())
    }

    pub(crate) fn remove_dir_all(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir_all(path)?;
        self.record(path, |path| Change::Remove { path });
        Ok(())
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        if let Some(journal) = &self.0 {
            match (journal.relative(from), journal.relative(to)) {
                (Some(from), Some(to)) => journal.record(Change::Rename { from, to }),
                _ => {
                    error!(path = %to.display(), "a store file outside the data directory is not replicated")
                }
            }
        }
        Ok(())
    }

    /// Records a sled change made by the caller.
    pub(crate) fn sled(&self, tree: SledTree, key: &[u8], value: Option<&[u8]>) {
        if let Some(journal) = &self.0 {
            journal.record(Change::Sled {
                tree,
                key: Bytes::copy_from_slice(key),
                value: value.map(Bytes::copy_from_slice),
            });
        }
    }

    /// Runs `release` now, or once the followers hold what was recorded.
    pub(crate) fn after_replicated(&self, release: impl FnOnce() + Send + 'static) {
        match &self.0 {
            Some(journal) => journal.after_replicated(Box::new(release)),
            None => release(),
        }
    }

    /// A commit point (see [`Journal::commit_point`]): the position to
    /// pass to `after_replicated_at` once the caller's fsync is done.
    pub(crate) fn commit_point(&self) -> Option<u64> {
        self.0.as_ref().map(|j| j.commit_point())
    }

    /// Runs `release` now, or once the followers hold every change before
    /// `position` (from `commit_point`; `None`: everything recorded so far).
    pub(crate) fn after_replicated_at(
        &self,
        position: Option<u64>,
        release: impl FnOnce() + Send + 'static,
    ) {
        match (&self.0, position) {
            (Some(journal), Some(p)) => journal.after_replicated_at(p, Box::new(release)),
            (Some(journal), None) => journal.after_replicated(Box::new(release)),
            (None, _) => release(),
        }
    }
}

/// A sled tree whose changes are recorded.
#[derive(Clone)]
pub(crate) struct Tree {
    tree: sled::Tree,
    which: SledTree,
    recorder: Recorder,
}

impl Tree {
    pub(crate) fn new(tree: sled::Tree, which: SledTree, recorder: Recorder) -> Tree {
        Tree {
            tree,
            which,
            recorder,
        }
    }

    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> sled::Result<Option<sled::IVec>> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let old = self.tree.insert(key, value)?;
        self.recorder.sled(self.which, key, Some(value));
        Ok(old)
    }

    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<sled::IVec>> {
        let key = key.as_ref();
        let old = self.tree.remove(key)?;
        if old.is_some() {
            self.recorder.sled(self.which, key, None);
        }
        Ok(old)
    }

    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> sled::Iter {
        self.tree.scan_prefix(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_changes_in_order_until_the_budget_drops_them() {
        let journal = Journal::new(Path::new("/data"), 1000);
        let rec = Recorder::new(Some(journal.clone()));
        rec.sled(SledTree::Meta, b"unread", None);
        assert_eq!(journal.read(0, usize::MAX), Err(Lagged), "kept for nobody");
        let reader = journal.reader();
        let journal = {
            // Positions keep counting: the reader starts at the end.
            assert_eq!(journal.end(), 1);
            let j = Journal::new(Path::new("/data"), 1000);
            drop(reader);
            j
        };
        let _reader = journal.reader();
        let rec = Recorder::new(Some(journal.clone()));
        for i in 0..5u8 {
            rec.sled(SledTree::Meta, &[i], Some(&[0; 100]));
        }
        let got = journal.read(0, usize::MAX).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(journal.read(3, usize::MAX).unwrap().len(), 2);
        assert_eq!(journal.read(0, 1).unwrap().len(), 1, "at least one");
        for i in 0..20u8 {
            rec.sled(SledTree::Meta, &[i], Some(&[0; 100]));
        }
        assert_eq!(journal.read(0, usize::MAX), Err(Lagged));
        assert_eq!(journal.end(), 25);
        assert!(journal.read(24, usize::MAX).unwrap().len() == 1);
    }

    #[test]
    fn paths_are_relative_to_the_data_directory() {
        let journal = Journal::new(Path::new("/data"), 1000);
        assert_eq!(
            journal
                .relative(Path::new("/data/queues/1/2.idx"))
                .as_deref(),
            Some("queues/1/2.idx")
        );
        assert_eq!(journal.relative(Path::new("/elsewhere/x")), None);
        assert_eq!(journal.relative(Path::new("/data")), None);
    }

    #[test]
    fn promises_wait_for_replication_in_order() {
        let journal = Journal::new(Path::new("/data"), 1 << 20);
        let rec = Recorder::new(Some(journal.clone()));
        let done = Arc::new(parking_lot::Mutex::new(Vec::new()));
        rec.sled(SledTree::Meta, b"a", None);
        let d = done.clone();
        rec.after_replicated(move || d.lock().push(1));
        rec.sled(SledTree::Meta, b"b", None);
        let d = done.clone();
        rec.after_replicated(move || d.lock().push(2));
        assert!(done.lock().is_empty());
        journal.replicated_to(1);
        assert_eq!(*done.lock(), vec![1]);
        journal.replicated_to(2);
        assert_eq!(*done.lock(), vec![1, 2]);
        let d = done.clone();
        rec.after_replicated(move || d.lock().push(3));
        assert_eq!(*done.lock(), vec![1, 2, 3], "nothing new to wait for");
        let single = Recorder::default();
        let d = done.clone();
        single.after_replicated(move || d.lock().push(4));
        assert_eq!(done.lock().len(), 4);
    }

    #[test]
    fn a_commit_point_bounds_what_its_promise_waits_for() {
        let journal = Journal::new(Path::new("/data"), 1 << 20);
        let _reader = journal.reader();
        let rec = Recorder::new(Some(journal.clone()));
        let done = Arc::new(parking_lot::Mutex::new(Vec::new()));
        rec.sled(SledTree::Meta, b"body", None);
        assert_eq!(journal.due(), 0, "a change alone is not a commit point");
        let at = rec.commit_point();
        assert_eq!((at, journal.due()), (Some(1), 1));
        rec.sled(SledTree::Meta, b"header", None);
        let d = done.clone();
        rec.after_replicated_at(at, move || d.lock().push(1));
        // Another writer's promise made meanwhile covers both changes.
        let d = done.clone();
        rec.after_replicated(move || d.lock().push(2));
        assert_eq!(journal.due(), 2);
        journal.replicated_to(1);
        assert_eq!(*done.lock(), vec![1], "the header is not waited for");
        journal.replicated_to(2);
        assert_eq!(*done.lock(), vec![1, 2]);
    }

    #[tokio::test]
    async fn senders_wake_at_commit_points_or_for_a_pile_of_changes() {
        let journal = Journal::new(Path::new("/data"), 8 << 20);
        let _reader = journal.reader();
        let rec = Recorder::new(Some(journal.clone()));
        let quick = std::time::Duration::from_millis(50);
        rec.sled(SledTree::Meta, b"k", Some(b"v"));
        assert!(
            tokio::time::timeout(quick, journal.wait_due(0))
                .await
                .is_err(),
            "one small change waits"
        );
        rec.commit_point();
        assert!(tokio::time::timeout(quick, journal.wait_due(0))
            .await
            .is_ok());
        assert!(tokio::time::timeout(quick, journal.wait_due(1))
            .await
            .is_err());
        rec.sled(SledTree::Meta, b"big", Some(&vec![0; WAKE_BYTES as usize]));
        assert!(tokio::time::timeout(quick, journal.wait_due(1))
            .await
            .is_ok());
    }
}
