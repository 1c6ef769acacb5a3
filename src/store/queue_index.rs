//! Each durable queue's index on disk: which messages it holds, in order,
//! and where their bodies are.
//!
//! Kept outside sled because sled's resident memory grows with the number
//! of keys it has written (about 27 bytes per queued message, measured),
//! and a backlog must cost disk, not memory. Like RabbitMQ's classic queue
//! index, a queue's index is a series of files of fixed-size slots, one
//! slot per seq: `queues/QQQQQQQQ/FFFFFFFF.idx` holds seqs
//! `F * SLOTS .. (F + 1) * SLOTS`. Publishing writes a slot, acknowledging
//! overwrites its state byte; a file whose slots are all written and all
//! acknowledged is deleted. Memory is a few counters per file.
//!
//! Slot: `state u8 ‖ flags u8 ‖ 0 u16 ‖ crc32 u32 ‖ segment u32 ‖ len u32 ‖
//! offset u64 ‖ expires_at u64` (ms since the epoch, 0: never); the CRC
//! covers flags..expires_at, so a torn or damaged slot is told apart from a
//! message.

use super::segments::{sync_dir, Location};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SLOTS: u64 = 16 * 1024;
const SLOT: usize = 32;
const READY: u8 = 1;
const ACKED: u8 = 2;
/// Zero slots written past the end of an index file when a write extends it.
const ZERO_AHEAD_SLOTS: u64 = 1024;
/// Acknowledged seqs at most this far apart share one read and write.
const ACK_RUN_GAP: u64 = 16;
/// Open index files kept beyond the ones written in the current batch.
const MAX_OPEN: usize = 256;

/// A message in a queue's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    pub at: Location,
    pub flags: u8,
    /// ms since the epoch; 0: never.
    pub expires_at: u64,
}

#[derive(Default)]
struct FileState {
    /// Ready slots.
    live: u64,
    /// Its last slot was written: no more messages will land in it.
    full: bool,
    /// Slots in the file: written ones, then zeros written ahead.
    len: u64,
}

/// A slot that failed its checksum.
#[derive(Debug)]
pub struct BadSlot {
    pub path: PathBuf,
    pub seq: u64,
}

pub struct QueueIndexes {
    dir: PathBuf,
    files: HashMap<(u32, u64), FileState>,
    open: HashMap<(u32, u64), File>,
    /// Written since the last sync.
    dirty: Vec<(u32, u64)>,
}

impl QueueIndexes {
    /// Reads every queue's index under `dir`. `visit` sees each ready slot
    /// and returns whether to keep it (false: acknowledge it now, e.g. a
    /// paged-out transient message or a queue that no longer exists).
    pub fn open(
        dir: &Path,
        mut visit: impl FnMut(u32, Slot) -> bool,
    ) -> std::io::Result<(QueueIndexes, Vec<BadSlot>)> {
        std::fs::create_dir_all(dir)?;
        let mut ix = QueueIndexes {
            dir: dir.to_owned(),
            files: HashMap::new(),
            open: HashMap::new(),
            dirty: Vec::new(),
        };
        let mut bad = Vec::new();
        let mut queues: Vec<(u32, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let Some(q) = number(&path, "") {
                queues.push((q as u32, path));
            }
        }
        queues.sort();
        for (queue_id, qdir) in queues {
            let mut files: Vec<u64> = Vec::new();
            for entry in std::fs::read_dir(&qdir)? {
                if let Some(n) = number(&entry?.path(), ".idx") {
                    files.push(n);
                }
            }
            files.sort_unstable();
            for file_no in files {
                let path = ix.path(queue_id, file_no);
                let raw = std::fs::read(&path)?;
                let mut state = FileState {
                    live: 0,
                    len: (raw.len() / SLOT) as u64,
                    full: raw.len() as u64 >= SLOTS * SLOT as u64
                        && raw[(SLOTS as usize - 1) * SLOT] != 0,
                };
                let mut acks = Vec::new();
                for (i, slot) in raw.chunks_exact(SLOT).enumerate() {
                    if slot[0] != READY {
                        continue;
                    }
                    let seq = file_no * SLOTS + i as u64;
                    let Some(s) = decode(seq, slot) else {
                        bad.push(BadSlot {
                            path: path.clone(),
                            seq,
                        });
                        continue;
                    };
                    if visit(queue_id, s) {
                        state.live += 1;
                    } else {
                        acks.push(i as u64);
                    }
                }
                if !acks.is_empty() {
                    let f = OpenOptions::new().write(true).open(&path)?;
                    for i in acks {
                        f.write_all_at(&[ACKED], i * SLOT as u64)?;
                    }
                    f.sync_data()?;
                }
                if state.full && state.live == 0 {
                    std::fs::remove_file(&path)?;
                } else {
                    ix.files.insert((queue_id, file_no), state);
                }
            }
        }
        Ok((ix, bad))
    }

    fn path(&self, queue_id: u32, file_no: u64) -> PathBuf {
        self.dir
            .join(format!("{queue_id:08}"))
            .join(format!("{file_no:08}.idx"))
    }

    fn file(&mut self, queue_id: u32, file_no: u64, create: bool) -> std::io::Result<&File> {
        if !self.open.contains_key(&(queue_id, file_no)) {
            if self.open.len() >= MAX_OPEN {
                let dirty = &self.dirty;
                self.open.retain(|k, _| dirty.contains(k));
            }
            let path = self.path(queue_id, file_no);
            let existed = path.exists();
            if create && !existed {
                let qdir = path.parent().expect("queue directory");
                if !qdir.exists() {
                    std::fs::create_dir_all(qdir)?;
                    sync_dir(qdir)?;
                }
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(&path)?;
            if create && !existed {
                sync_dir(&path)?;
            }
            self.open.insert((queue_id, file_no), f);
        }
        Ok(&self.open[&(queue_id, file_no)])
    }

    /// Writes consecutive slots of one queue (seqs ascending).
    pub fn put(&mut self, queue_id: u32, slots: &[Slot]) -> std::io::Result<()> {
        let mut i = 0;
        while i < slots.len() {
            // A run of consecutive seqs within one file: one write.
            let file_no = slots[i].seq / SLOTS;
            let j = run_end(i, slots.len(), |k| slots[k].seq, 1);
            let first = slots[i].seq % SLOTS;
            let end = slots[j - 1].seq % SLOTS + 1;
            let len = self.files.get(&(queue_id, file_no)).map_or(0, |s| s.len);
            // Like segments (see `Segments::zero_ahead`), a write that extends
            // the file also writes zeros ahead, so the next batches' syncs
            // are overwrites; zero slots read as empty.
            let zeros_to = if end > len {
                (end + ZERO_AHEAD_SLOTS).min(SLOTS)
            } else {
                end
            };
            let mut buf = Vec::with_capacity((zeros_to - first) as usize * SLOT);
            for s in &slots[i..j] {
                buf.extend_from_slice(&encode(s));
            }
            buf.resize((zeros_to - first) as usize * SLOT, 0);
            self.file(queue_id, file_no, true)?
                .write_all_at(&buf, first * SLOT as u64)?;
            let state = self.files.entry((queue_id, file_no)).or_default();
            state.live += (j - i) as u64;
            state.len = state.len.max(zeros_to);
            if end == SLOTS {
                state.full = true;
            }
            if !self.dirty.contains(&(queue_id, file_no)) {
                self.dirty.push((queue_id, file_no));
            }
            i = j;
        }
        Ok(())
    }

    /// Acknowledges the messages at `seqs` (ascending), pushing where the
    /// bodies were to `acked`; seqs not in the index are skipped. Nearby
    /// slots are acknowledged together: one read and one write per run, as
    /// a consumer's acks mostly come in order.
    pub fn ack(
        &mut self,
        queue_id: u32,
        seqs: &[u64],
        acked: &mut Vec<Location>,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut i = 0;
        while i < seqs.len() {
            let file_no = seqs[i] / SLOTS;
            let j = run_end(i, seqs.len(), |k| seqs[k], ACK_RUN_GAP);
            let run = &seqs[i..j];
            i = j;
            if !self.files.contains_key(&(queue_id, file_no)) {
                continue;
            }
            let first = run[0] % SLOTS;
            let end = run[run.len() - 1] % SLOTS + 1;
            buf.clear();
            buf.resize((end - first) as usize * SLOT, 0);
            let f = self.file(queue_id, file_no, false)?;
            let n = read_full_at(f, &mut buf, first * SLOT as u64)?;
            let mut changed = 0;
            for &seq in run {
                let at = (seq % SLOTS - first) as usize * SLOT;
                if at + SLOT > n || buf[at] != READY {
                    continue;
                }
                buf[at] = ACKED;
                changed += 1;
                if let Some(s) = decode(seq, &buf[at..at + SLOT]) {
                    acked.push(s.at);
                }
            }
            if changed == 0 {
                continue;
            }
            // Slots between the acknowledged ones are written back unchanged.
            f.write_all_at(&buf[..n], first * SLOT as u64)?;
            if let Some(state) = self.files.get_mut(&(queue_id, file_no)) {
                state.live = state.live.saturating_sub(changed);
            }
            if !self.dirty.contains(&(queue_id, file_no)) {
                self.dirty.push((queue_id, file_no));
            }
        }
        Ok(())
    }

    /// Ready slots of a queue from `from` on, in order, up to `max`.
    pub fn read(&mut self, queue_id: u32, from: u64, max: usize) -> std::io::Result<Vec<Slot>> {
        let mut out = Vec::new();
        let mut file_nos: Vec<u64> = self
            .files
            .keys()
            .filter(|(q, n)| *q == queue_id && (n + 1) * SLOTS > from)
            .map(|(_, n)| *n)
            .collect();
        file_nos.sort_unstable();
        for file_no in file_nos {
            let first = from.max(file_no * SLOTS);
            let offset = (first % SLOTS) * SLOT as u64;
            let mut raw = vec![0u8; ((file_no + 1) * SLOTS - first) as usize * SLOT];
            let f = self.file(queue_id, file_no, false)?;
            let n = read_full_at(f, &mut raw, offset)?;
            for (i, slot) in raw[..n - n % SLOT].chunks_exact(SLOT).enumerate() {
                if slot[0] != READY {
                    continue;
                }
                if let Some(s) = decode(first + i as u64, slot) {
                    out.push(s);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every ready slot of a queue from `from` on (purge, deletion).
    pub fn ready_from(&mut self, queue_id: u32, from: u64) -> std::io::Result<Vec<Slot>> {
        self.read(queue_id, from, usize::MAX)
    }

    /// Queues with index files.
    pub fn queue_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.files.keys().map(|(q, _)| *q).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Forgets a deleted queue's files.
    pub fn drop_queue(&mut self, queue_id: u32) {
        self.files.retain(|(q, _), _| *q != queue_id);
        self.open.retain(|(q, _), _| *q != queue_id);
        self.dirty.retain(|(q, _)| *q != queue_id);
        let dir = self.dir.join(format!("{queue_id:08}"));
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "cannot delete a queue index");
            }
        }
    }

    /// Makes this batch's writes durable, then deletes files that are full
    /// and fully acknowledged.
    pub fn sync(&mut self) -> std::io::Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            if let Some(f) = self.open.get(&key) {
                f.sync_data()?;
            }
            if self.files.get(&key).is_some_and(|s| s.full && s.live == 0) {
                self.files.remove(&key);
                self.open.remove(&key);
                let path = self.path(key.0, key.1);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a drained index file");
                }
            }
        }
        Ok(())
    }
}

/// The end of the run starting at `start` among `len` ascending seqs
/// (`seq(k)` is the k-th): seqs in the same file as the first, each 1 to
/// `max_gap` after the one before.
fn run_end(start: usize, len: usize, seq: impl Fn(usize) -> u64, max_gap: u64) -> usize {
    let file_no = seq(start) / SLOTS;
    let mut end = start + 1;
    while end < len
        && seq(end) / SLOTS == file_no
        && (1..=max_gap).contains(&seq(end).wrapping_sub(seq(end - 1)))
    {
        end += 1;
    }
    end
}

fn encode(s: &Slot) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[0] = READY;
    b[1] = s.flags;
    b[8..12].copy_from_slice(&s.at.segment.to_be_bytes());
    b[12..16].copy_from_slice(&s.at.len.to_be_bytes());
    b[16..24].copy_from_slice(&s.at.offset.to_be_bytes());
    b[24..32].copy_from_slice(&s.expires_at.to_be_bytes());
    let crc = crc(&b);
    b[4..8].copy_from_slice(&crc.to_be_bytes());
    b
}

fn crc(slot: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&slot[1..4]);
    h.update(&slot[8..SLOT]);
    h.finalize()
}

fn decode(seq: u64, b: &[u8]) -> Option<Slot> {
    if u32::from_be_bytes(b[4..8].try_into().ok()?) != crc(b) {
        return None;
    }
    Some(Slot {
        seq,
        flags: b[1],
        at: Location {
            segment: u32::from_be_bytes(b[8..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..16].try_into().ok()?),
            offset: u64::from_be_bytes(b[16..24].try_into().ok()?),
        },
        expires_at: u64::from_be_bytes(b[24..32].try_into().ok()?),
    })
}

fn read_full_at(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn number(path: &Path, suffix: &str) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(suffix)?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(seq: u64) -> Slot {
        Slot {
            seq,
            at: Location {
                segment: 1,
                offset: seq * 100,
                len: 100,
            },
            flags: 0,
            expires_at: seq * 7,
        }
    }

    fn ack_one(ix: &mut QueueIndexes, queue_id: u32, seq: u64) -> Option<Location> {
        let mut acked = Vec::new();
        ix.ack(queue_id, &[seq], &mut acked).unwrap();
        assert!(acked.len() <= 1);
        acked.pop()
    }

    #[test]
    fn slots_survive_reopen_and_drained_files_go() {
        let dir = std::env::temp_dir().join(format!("leveret-qindex-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut ix, bad) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        assert!(bad.is_empty());
        let n = SLOTS + 10;
        let slots: Vec<Slot> = (0..n).map(slot).collect();
        ix.put(7, &slots).unwrap();
        ix.sync().unwrap();
        let seqs: Vec<u64> = (0..SLOTS).collect();
        let mut acked = Vec::new();
        ix.ack(7, &seqs, &mut acked).unwrap();
        assert_eq!(acked, seqs.iter().map(|&s| slot(s).at).collect::<Vec<_>>());
        assert_eq!(ack_one(&mut ix, 7, 3), None, "acked twice");
        ix.sync().unwrap();
        assert!(!ix.path(7, 0).exists(), "full, drained file deleted");
        assert_eq!(
            ix.read(7, 0, 5).unwrap(),
            (SLOTS..SLOTS + 5).map(slot).collect::<Vec<_>>()
        );
        drop(ix);

        let mut seen = Vec::new();
        let (mut ix, bad) = QueueIndexes::open(&dir, |q, s| {
            seen.push((q, s.seq));
            s.seq != SLOTS // drop one at recovery
        })
        .unwrap();
        assert!(bad.is_empty());
        assert_eq!(seen.len(), 10);
        assert_eq!(ix.read(7, 0, usize::MAX).unwrap().len(), 9);

        // A damaged slot is reported, not returned.
        let f = OpenOptions::new().write(true).open(ix.path(7, 1)).unwrap();
        f.write_all_at(&[0xff; 4], 5 * SLOT as u64 + 12).unwrap(); // inside the CRC'd bytes
        drop(ix);
        let (_, bad) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].seq, SLOTS + 5);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    mod model {
        use super::super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use std::collections::BTreeMap;
        use std::sync::atomic::{AtomicUsize, Ordering};

        const QUEUE: u32 = 3;

        #[derive(Debug, Clone)]
        enum Action {
            /// The next `n` seqs, in one `put`.
            Put(u64),
            /// One ready seq.
            Ack(Index),
            /// Up to `n` ready seqs in a row, from a random one.
            AckRun(Index, usize),
            /// The `n` oldest ready seqs, as a consumer acking in order.
            AckHead(usize),
            Sync,
            Reopen,
            /// Reopen, dropping at recovery the seqs that are `r` mod `m`.
            ReopenDropping(u64, u64),
        }

        fn action() -> impl Strategy<Value = Action> {
            prop_oneof![
                4 => prop_oneof![1u64..50, 1u64..4_000, Just(SLOTS)].prop_map(Action::Put),
                4 => any::<Index>().prop_map(Action::Ack),
                4 => (any::<Index>(), prop_oneof![1usize..100, 1usize..20_000]).prop_map(|(i, n)| Action::AckRun(i, n)),
                3 => prop_oneof![1usize..100, 1usize..40_000].prop_map(Action::AckHead),
                1 => Just(Action::Sync),
                2 => Just(Action::Reopen),
                1 => (2u64..7).prop_flat_map(|m| (0..m, Just(m))).prop_map(|(r, m)| Action::ReopenDropping(r, m)),
            ]
        }

        fn slot(seq: u64, salt: u64) -> Slot {
            Slot {
                seq,
                at: Location {
                    segment: (seq ^ salt) as u32,
                    offset: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt,
                    len: (seq % 1000) as u32 + 1,
                },
                flags: (seq % 3) as u8,
                expires_at: if seq.is_multiple_of(4) {
                    0
                } else {
                    seq.wrapping_add(salt)
                },
            }
        }

        fn fresh_dir() -> PathBuf {
            static CASE: AtomicUsize = AtomicUsize::new(0);
            let n = CASE.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("leveret-qindex-model-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            dir
        }

        /// Removes the directory however the case ends.
        struct Cleanup(PathBuf);

        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }

        /// Acknowledges `seqs` in one call, as the persister does a batch's.
        fn ack_together(
            index: &mut QueueIndexes,
            ready: &mut BTreeMap<u64, Slot>,
            seqs: &[u64],
        ) -> Result<(), TestCaseError> {
            let expected: Vec<Location> = seqs
                .iter()
                .map(|seq| ready.remove(seq).unwrap().at)
                .collect();
            let mut acked = Vec::new();
            index.ack(QUEUE, seqs, &mut acked).unwrap();
            prop_assert_eq!(acked, expected);
            Ok(())
        }

        /// After a sync or a reopen: the ready slots are exactly the model's,
        /// and a file is on disk iff it is not both full and fully
        /// acknowledged.
        fn check_disk(
            ix: &mut QueueIndexes,
            ready: &BTreeMap<u64, Slot>,
            first: u64,
            next: u64,
        ) -> Result<(), TestCaseError> {
            let got = ix.read(QUEUE, 0, usize::MAX).unwrap();
            prop_assert_eq!(got.len(), ready.len());
            prop_assert!(
                got.iter().eq(ready.values()),
                "ready slots differ from the model"
            );
            let last_file = if next == first {
                first / SLOTS
            } else {
                (next - 1) / SLOTS
            };
            for file_no in first / SLOTS..=last_file {
                let written = next > first.max(file_no * SLOTS) && first < (file_no + 1) * SLOTS;
                let full = next >= (file_no + 1) * SLOTS;
                let live = ready
                    .range(file_no * SLOTS..(file_no + 1) * SLOTS)
                    .next()
                    .is_some();
                let exists = ix.path(QUEUE, file_no).exists();
                if full && !live {
                    prop_assert!(
                        !exists,
                        "file {} is full and drained but still there",
                        file_no
                    );
                } else if written {
                    prop_assert!(
                        exists,
                        "file {} (full: {}, ready slots: {}) is gone",
                        file_no,
                        full,
                        live
                    );
                }
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 20, max_shrink_iters: 10_000, ..ProptestConfig::default() })]

            /// Puts, acks and reopens in any order: what comes back after a
            /// reopen is exactly what the model holds, and drained full
            /// files are gone.
            #[test]
            fn reopen_reads_back_the_model(
                first in prop_oneof![Just(0u64), 0..2 * SLOTS],
                salt in any::<u64>(),
                actions in prop::collection::vec(action(), 1..40),
            ) {
                let dir = fresh_dir();
                let _cleanup = Cleanup(dir.clone());
                let (ix, bad) = QueueIndexes::open(&dir, |_, _| true).unwrap();
                prop_assert!(bad.is_empty());
                let mut ix = Some(ix);
                let mut ready: BTreeMap<u64, Slot> = BTreeMap::new();
                let mut next = first;
                let mut total = 0u64;
                for action in actions.into_iter().chain([Action::Reopen]) {
                    let index = ix.as_mut().unwrap();
                    match action {
                        Action::Put(n) => {
                            let n = n.min(40_000u64.saturating_sub(total));
                            if n == 0 {
                                continue;
                            }
                            let slots: Vec<Slot> = (next..next + n).map(|seq| slot(seq, salt)).collect();
                            index.put(QUEUE, &slots).unwrap();
                            ready.extend(slots.iter().map(|s| (s.seq, *s)));
                            next += n;
                            total += n;
                        }
                        Action::Ack(i) => {
                            if ready.is_empty() {
                                continue;
                            }
                            let seq = *ready.keys().nth(i.index(ready.len())).unwrap();
                            let s = ready.remove(&seq).unwrap();
                            prop_assert_eq!(super::ack_one(index, QUEUE, seq), Some(s.at));
                            prop_assert_eq!(super::ack_one(index, QUEUE, seq), None, "acked twice");
                        }
                        Action::AckRun(i, n) => {
                            if ready.is_empty() {
                                continue;
                            }
                            let from = *ready.keys().nth(i.index(ready.len())).unwrap();
                            let seqs: Vec<u64> = ready.range(from..).take(n).map(|(k, _)| *k).collect();
                            ack_together(index, &mut ready, &seqs)?;
                        }
                        Action::AckHead(n) => {
                            let seqs: Vec<u64> = ready.keys().take(n).copied().collect();
                            ack_together(index, &mut ready, &seqs)?;
                        }
                        Action::Sync => {
                            index.sync().unwrap();
                            check_disk(index, &ready, first, next)?;
                        }
                        Action::Reopen | Action::ReopenDropping(..) => {
                            let (r, m) = match action {
                                Action::ReopenDropping(r, m) => (r, m),
                                _ => (0, 0),
                            };
                            drop(ix.take());
                            let mut seen = Vec::new();
                            let (mut index, bad) = QueueIndexes::open(&dir, |q, s| {
                                seen.push((q, s));
                                m == 0 || s.seq % m != r
                            })
                            .unwrap();
                            prop_assert!(bad.is_empty());
                            prop_assert!(seen.iter().all(|(q, _)| *q == QUEUE));
                            let seen: Vec<Slot> = seen.into_iter().map(|(_, s)| s).collect();
                            prop_assert!(seen.iter().eq(ready.values()), "recovery visited other slots");
                            if m != 0 {
                                ready.retain(|seq, _| seq % m != r);
                            }
                            check_disk(&mut index, &ready, first, next)?;
                            ix = Some(index);
                        }
                    }
                    // Every ack above removed from the model too.
                    let index = ix.as_mut().unwrap();
                    let from = ready.keys().next().copied().unwrap_or(next);
                    let head = index.read(QUEUE, from, 3).unwrap();
                    prop_assert!(head.iter().eq(ready.values().take(3)));
                }
            }
        }
    }
}
