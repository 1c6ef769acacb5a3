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
//! A file starts with a one-slot header: `"LVQI" ‖ crc32 u32 ‖ version u8 ‖
//! 0 ×3 ‖ queue_id u32 ‖ file_no u64 ‖ synced u64`. `synced` counts the
//! slots that were on disk (fsynced) when the header was written: it is
//! written right after each sync, without a sync of its own (the next
//! batch's carries it; a clean stop syncs it, [`QueueIndexes::seal`]). A
//! kill -9 keeps it (the page cache survives), so every confirmed slot is
//! checked; a power cut may lose it, and then only the last batch's slots
//! go unchecked, as a crash may have torn them. Slots below it must read
//! back intact; above it a crash may leave zeros (writes not done, or the
//! zeros written ahead), but a slot that fails its checksum is damage
//! anywhere (a disk writes a 512-byte sector whole or not at all). Seqs a
//! queue did not write to its index (messages kept in memory only) get a
//! skip slot, so that below the synced mark a zero slot is always damage. Slot: `state u8 ‖ flags u8 ‖ arrived_hi u16 ‖
//! crc32 u32 ‖ segment u32 ‖ len u32 ‖ offset u64 ‖ arrived_lo u16 ‖
//! expires_at u48` (all big-endian); the CRC covers the seq, the state and
//! every other byte, so a message acknowledged by damage is told apart from
//! one acknowledged. `expires_at` is ms since the epoch (0: never; 48 bits
//! last until the year 10889, and a TTL is at most ten years). `arrived_hi
//! ‖ arrived_lo` is when the message entered the queue, in whole seconds
//! since the epoch (rounded down; 0: unknown), so a paged-out or recovered
//! head reports its real age. Slots written before arrivals were kept have
//! zeros there (the spare u16, and the top of an expiry that never needed
//! it), so they read back as "unknown" with no change of format.
//!
//! Each queue's directory holds `files`: which index files exist (header,
//! count, file numbers, crc32), rewritten (write, fsync, rename) before a
//! file is added to or deleted from the set, so a deleted index file is
//! noticed. It is created when the queue is declared, so a queue whose
//! directory is gone is noticed too.

use super::journal::Recorder;
use super::segments::{sync_dir, Location};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub(crate) const SLOTS: u64 = 16 * 1024;
const SLOT: usize = 32;
const READY: u8 = 1;
const ACKED: u8 = 2;
/// A seq the queue never wrote here.
const SKIP: u8 = 3;
const MAGIC: &[u8; 4] = b"LVQI";
const MANIFEST_MAGIC: &[u8; 4] = b"LVQF";
const VERSION: u8 = 1;
/// The list of a queue's index files, in its directory.
const MANIFEST: &str = "files";
/// Zero slots written past the end of an index file when a write extends it.
const ZERO_AHEAD_SLOTS: u64 = 1024;
/// Slots read at a time by [`QueueIndexes::read`], at least and at most.
const READ_CHUNK_MIN: usize = 64;
const READ_CHUNK_MAX: usize = 4096;
/// Acknowledged seqs at most this far apart share one read and write.
const ACK_RUN_GAP: u64 = 16;
/// Open index files kept beyond the ones written in the current batch.
const MAX_OPEN: usize = 256;

/// A message in a queue's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub(crate) seq: u64,
    pub(crate) at: Location,
    pub(crate) flags: u8,
    /// ms since the epoch; 0: never. At most [`EXPIRES_MAX`] on disk.
    pub(crate) expires_at: u64,
    /// When the message entered the queue: seconds since the epoch; 0: unknown.
    pub(crate) arrived_s: u32,
}

/// The largest `expires_at` a slot holds: the 16 bits above carry half of
/// the arrival.
const EXPIRES_MAX: u64 = (1 << 48) - 1;

/// A message's arrival (ms since the epoch, 0: unknown) as a slot keeps it:
/// whole seconds, rounded down (0 past the year 2106).
pub(crate) fn arrival_seconds(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(0)
}

/// A slot's arrival back in ms since the epoch (0: unknown).
pub(crate) fn arrival_ms(seconds: u32) -> u64 {
    u64::from(seconds) * 1000
}

#[derive(Default)]
struct FileState {
    /// Ready slots.
    live: u64,
    /// Its last slot was written: no more messages will land in it.
    full: bool,
    /// Slots in the file: written ones, then zeros written ahead.
    len: u64,
    /// Slots up to the last one written.
    written: u64,
    /// Slots fsynced.
    synced: u64,
    /// `synced` as the header says.
    sealed: u64,
    /// The header was written since the file was last synced.
    header_unsynced: bool,
}

/// Damage found in a queue's index: a file that should be there and is
/// not, a bad header, or slots below the synced mark that do not read back.
#[derive(Debug)]
pub(crate) struct IndexDamage {
    pub(crate) queue_id: u32,
    pub(crate) path: PathBuf,
    pub(crate) problem: String,
    /// Messages that may be lost: unreadable slots (a slot acknowledged
    /// before the damage is counted too, it cannot be told apart).
    pub(crate) lost: u64,
}

/// What [`QueueIndexes::open`] found besides the messages.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) damage: Vec<IndexDamage>,
}

/// Bytes of one slot or header and where they go.
type SlotWrite = (u64, [u8; SLOT]);

/// Writes recovery decided on, made once the start goes ahead (a refused
/// start leaves the files as they were).
#[derive(Default)]
struct RecoveryWrites {
    /// Slots (and headers) to write: (file, [(offset, bytes)]).
    acks: Vec<(PathBuf, Vec<SlotWrite>)>,
    /// (queue directory, files to list, files to delete).
    drained: Vec<(PathBuf, Vec<u64>, Vec<u64>)>,
    /// Damaged files to rename to `*.damaged` before they are unlisted.
    aside: Vec<PathBuf>,
}

pub(crate) struct QueueIndexes {
    dir: PathBuf,
    recovery: RecoveryWrites,
    files: HashMap<(u32, u64), FileState>,
    open: HashMap<(u32, u64), File>,
    /// Written since the last sync.
    dirty: Vec<(u32, u64)>,
    files_out: Recorder,
}

impl QueueIndexes {
    /// Reads every queue's index under `dir`. `visit` sees each ready slot
    /// and returns whether to keep it (false: acknowledge it now, e.g. a
    /// paged-out transient message or a queue that no longer exists).
    pub(crate) fn open(
        dir: &Path,
        mut visit: impl FnMut(u32, Slot) -> bool,
    ) -> std::io::Result<(QueueIndexes, Scan)> {
        std::fs::create_dir_all(dir)?;
        let mut ix = QueueIndexes {
            dir: dir.to_owned(),
            recovery: RecoveryWrites::default(),
            files: HashMap::new(),
            open: HashMap::new(),
            dirty: Vec::new(),
            files_out: Recorder::default(),
        };
        let mut scan = Scan::default();
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
            let mut relist = false;
            let listed = match read_manifest(&qdir.join(MANIFEST)) {
                Ok(listed) => listed,
                Err(problem) => {
                    relist = true;
                    scan.damage.push(IndexDamage {
                        queue_id,
                        path: qdir.join(MANIFEST),
                        problem,
                        lost: 0,
                    });
                    files.clone()
                }
            };
            for &file_no in listed.iter().filter(|n| !files.contains(n)) {
                relist = true;
                scan.damage.push(IndexDamage {
                    queue_id,
                    path: ix.path(queue_id, file_no),
                    problem: format!(
                        "the index file is missing (listed in {})",
                        qdir.join(MANIFEST).display()
                    ),
                    lost: SLOTS,
                });
            }
            let present = files.clone();
            let mut drained = Vec::new();
            for file_no in files {
                let path = ix.path(queue_id, file_no);
                let raw = std::fs::read(&path)?;
                let in_manifest = listed.contains(&file_no);
                let header = (raw.len() >= SLOT)
                    .then(|| decode_header(&raw[..SLOT], queue_id, file_no))
                    .flatten();
                let Some(synced) = header else {
                    // Created by a batch a crash interrupted, before the
                    // manifest listed it: nothing in it was confirmed.
                    if !in_manifest && raw.iter().all(|&b| b == 0) {
                        drained.push(file_no);
                        continue;
                    }
                    scan.damage.push(IndexDamage {
                        queue_id,
                        path: path.clone(),
                        problem: "the index file's header is missing or damaged".into(),
                        lost: (raw.len() / SLOT) as u64,
                    });
                    // If the start goes ahead: kept aside, unlisted.
                    ix.recovery.aside.push(path.clone());
                    drained.push(file_no);
                    continue;
                };
                let slots = &raw[SLOT..raw.len() - raw.len() % SLOT];
                let len = (slots.len() / SLOT) as u64;
                let mut state = FileState {
                    len,
                    full: len >= SLOTS && slots[(SLOTS as usize - 1) * SLOT] != 0,
                    synced,
                    sealed: synced,
                    ..FileState::default()
                };
                let mut unreadable = 0u64;
                let mut writes = Vec::new();
                if synced > len {
                    unreadable += synced - len;
                    // If the start goes ahead, the file is taken as it is.
                    state.synced = len;
                    state.sealed = len;
                    writes.push((0, encode_header(queue_id, file_no, len)));
                }
                let mut acks = Vec::new();
                for (i, slot) in slots.chunks_exact(SLOT).enumerate() {
                    let i = i as u64;
                    let seq = file_no * SLOTS + i;
                    let s = match slot[0] {
                        READY | ACKED | SKIP => decode(seq, slot),
                        _ => None,
                    };
                    let Some(s) = s else {
                        // Past the synced mark a crash may leave zeros (a
                        // sector not written yet), never a slot that fails
                        // its checksum: disks write a sector whole or not.
                        if i < synced || slot.iter().any(|&b| b != 0) {
                            unreadable += 1;
                            // If the start goes ahead: acknowledged, lost.
                            writes.push(((i + 1) * SLOT as u64, tombstone(seq)));
                            state.written = i + 1;
                        }
                        continue;
                    };
                    state.written = i + 1;
                    if slot[0] != READY {
                        continue;
                    }
                    if visit(queue_id, s) {
                        state.live += 1;
                    } else {
                        acks.push(i);
                    }
                }
                if unreadable > 0 {
                    scan.damage.push(IndexDamage {
                        queue_id,
                        path: path.clone(),
                        problem: format!(
                            "{unreadable} index slots do not read back (zeroed, cut short or \
                             damaged; {synced} slots were synced)"
                        ),
                        lost: unreadable,
                    });
                }
                for i in acks {
                    let at = (i as usize + 1) * SLOT;
                    let mut slot: [u8; SLOT] = raw[at..at + SLOT].try_into().expect("slot");
                    set_acked(file_no * SLOTS + i, &mut slot);
                    writes.push((at as u64, slot));
                }
                if !writes.is_empty() {
                    ix.recovery.acks.push((path.clone(), writes));
                }
                if state.full && state.live == 0 {
                    drained.push(file_no);
                } else {
                    ix.files.insert((queue_id, file_no), state);
                }
            }
            relist |= present.iter().any(|n| !listed.contains(n));
            if relist || !drained.is_empty() {
                let keep: Vec<u64> = present
                    .iter()
                    .copied()
                    .filter(|n| !drained.contains(n))
                    .collect::<std::collections::BTreeSet<u64>>()
                    .into_iter()
                    .collect();
                ix.recovery.drained.push((qdir.clone(), keep, drained));
            }
        }
        Ok((ix, scan))
    }

    /// From now on, records every write for followers.
    pub(crate) fn record_to(&mut self, files: Recorder) {
        self.files_out = files;
    }

    /// Makes the changes recovery decided on: acknowledges the slots
    /// `visit` declined, deletes drained files.
    pub(crate) fn finish_recovery(&mut self) -> std::io::Result<()> {
        let writes = std::mem::take(&mut self.recovery);
        for path in writes.aside {
            let mut to = path.clone().into_os_string();
            to.push(".damaged");
            self.files_out.rename(&path, Path::new(&to))?;
        }
        for (path, slots) in writes.acks {
            let f = OpenOptions::new().write(true).open(&path)?;
            for (at, slot) in slots {
                self.files_out.write_at(&f, &path, &slot, at)?;
            }
            f.sync_data()?;
        }
        for (qdir, keep, drained) in writes.drained {
            write_manifest(&qdir, &keep, &self.files_out)?;
            for file_no in drained {
                let path = qdir.join(format!("{file_no:08}.idx"));
                if let Err(e) = self.files_out.remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn path(&self, queue_id: u32, file_no: u64) -> PathBuf {
        index_path(&self.dir, queue_id, file_no)
    }

    fn file(&mut self, queue_id: u32, file_no: u64, create: bool) -> std::io::Result<&File> {
        if !self.open.contains_key(&(queue_id, file_no)) {
            if self.open.len() >= MAX_OPEN {
                let dirty = &self.dirty;
                self.open.retain(|k, _| dirty.contains(k));
            }
            let path = self.path(queue_id, file_no);
            let existed = path.exists();
            let qdir = path.parent().expect("queue directory").to_owned();
            if create && !existed && !qdir.exists() {
                std::fs::create_dir_all(&qdir)?;
                sync_dir(&qdir)?;
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(&path)?;
            if create && !existed {
                // Header first, then listed: a crash in between leaves a
                // file with nothing synced that nobody lists.
                self.files_out.created(&path);
                self.files_out
                    .write_at(&f, &path, &encode_header(queue_id, file_no, 0), 0)?;
                f.sync_data()?;
                sync_dir(&path)?;
                let mut listed: Vec<u64> = self
                    .files
                    .keys()
                    .filter(|(q, _)| *q == queue_id)
                    .map(|(_, n)| *n)
                    .chain([file_no])
                    .collect();
                listed.sort_unstable();
                listed.dedup();
                write_manifest(&qdir, &listed, &self.files_out)?;
            }
            self.open.insert((queue_id, file_no), f);
        }
        Ok(&self.open[&(queue_id, file_no)])
    }

    /// Writes consecutive slots of one queue (seqs ascending).
    pub(crate) fn put(&mut self, queue_id: u32, slots: &[Slot]) -> std::io::Result<()> {
        let mut i = 0;
        while i < slots.len() {
            // A run of consecutive seqs within one file: one write.
            let file_no = slots[i].seq / SLOTS;
            let j = run_end(i, slots.len(), |k| slots[k].seq, 1);
            let first = slots[i].seq % SLOTS;
            let end = slots[j - 1].seq % SLOTS + 1;
            let (len, written) = self
                .files
                .get(&(queue_id, file_no))
                .map_or((0, 0), |s| (s.len, s.written));
            // Like segments (see `Segments::zero_ahead`), a write that extends
            // the file also writes zeros ahead, so the next batches' syncs
            // are overwrites; zero slots read as empty.
            let zeros_to = if end > len {
                (end + ZERO_AHEAD_SLOTS).min(SLOTS)
            } else {
                end
            };
            // Seqs never written here (messages kept in memory, or put and
            // acknowledged in one batch) are filled with skip slots: below
            // the synced mark only damage leaves zeros.
            let start = written.min(first);
            let mut buf = Vec::with_capacity((zeros_to - start) as usize * SLOT);
            for k in start..first {
                buf.extend_from_slice(&skip(file_no * SLOTS + k));
            }
            for s in &slots[i..j] {
                buf.extend_from_slice(&encode(s));
            }
            buf.resize((zeros_to - start) as usize * SLOT, 0);
            self.file(queue_id, file_no, true)?;
            let dir = &self.dir;
            self.files_out.write_at_with(
                &self.open[&(queue_id, file_no)],
                &buf,
                (start + 1) * SLOT as u64,
                || index_path(dir, queue_id, file_no),
            )?;
            let state = self.files.entry((queue_id, file_no)).or_default();
            state.live += (j - i) as u64;
            state.len = state.len.max(zeros_to);
            state.written = state.written.max(end);
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
    pub(crate) fn ack(
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
            self.file(queue_id, file_no, false)?;
            let f = &self.open[&(queue_id, file_no)];
            let n = read_full_at(f, &mut buf, (first + 1) * SLOT as u64)?;
            let mut changed = 0;
            for &seq in run {
                let at = (seq % SLOTS - first) as usize * SLOT;
                if at + SLOT > n || buf[at] != READY {
                    continue;
                }
                let slot: &mut [u8; SLOT] = (&mut buf[at..at + SLOT]).try_into().expect("slot");
                let Some(s) = decode(seq, slot) else {
                    // Damaged since it was read: left for recovery to report.
                    tracing::error!(queue_id, seq, "a queue index slot fails its checksum");
                    continue;
                };
                ready_to_acked(slot);
                changed += 1;
                acked.push(s.at);
            }
            if changed == 0 {
                continue;
            }
            // Slots between the acknowledged ones are written back unchanged.
            let dir = &self.dir;
            self.files_out
                .write_at_with(f, &buf[..n], (first + 1) * SLOT as u64, || {
                    index_path(dir, queue_id, file_no)
                })?;
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
    pub(crate) fn read(
        &mut self,
        queue_id: u32,
        from: u64,
        max: usize,
    ) -> std::io::Result<Vec<Slot>> {
        let mut out = Vec::new();
        let mut file_nos: Vec<u64> = self
            .files
            .keys()
            .filter(|(q, n)| *q == queue_id && (n + 1) * SLOTS > from)
            .map(|(_, n)| *n)
            .collect();
        file_nos.sort_unstable();
        let mut raw = Vec::new();
        for file_no in file_nos {
            // Ready slots all lie below the last one written.
            let written = self
                .files
                .get(&(queue_id, file_no))
                .map_or(0, |s| s.written);
            let end = file_no * SLOTS + written;
            let mut first = from.max(file_no * SLOTS);
            // In chunks about as large as what is asked for: a load wants a
            // few hundred slots, not the rest of a 512 KiB file.
            while first < end {
                let want = (max - out.len()).clamp(READ_CHUNK_MIN, READ_CHUNK_MAX);
                let slots = (end - first).min(want as u64);
                raw.clear();
                raw.resize(slots as usize * SLOT, 0);
                let offset = (first % SLOTS + 1) * SLOT as u64;
                let f = self.file(queue_id, file_no, false)?;
                let n = read_full_at(f, &mut raw, offset)?;
                for (i, slot) in raw[..n - n % SLOT].chunks_exact(SLOT).enumerate() {
                    if slot[0] != READY {
                        continue;
                    }
                    let seq = first + i as u64;
                    let Some(s) = decode(seq, slot) else {
                        tracing::error!(queue_id, seq, "a queue index slot fails its checksum");
                        continue;
                    };
                    out.push(s);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
                if n < raw.len() {
                    break; // the file ends early
                }
                first += slots;
            }
        }
        Ok(out)
    }

    /// Every ready slot of a queue from `from` on (purge, deletion).
    pub(crate) fn ready_from(&mut self, queue_id: u32, from: u64) -> std::io::Result<Vec<Slot>> {
        self.read(queue_id, from, usize::MAX)
    }

    /// Queues with index files.
    pub(crate) fn queue_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.files.keys().map(|(q, _)| *q).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Forgets a deleted queue's files.
    pub(crate) fn drop_queue(&mut self, queue_id: u32) {
        self.files.retain(|(q, _), _| *q != queue_id);
        self.open.retain(|(q, _), _| *q != queue_id);
        self.dirty.retain(|(q, _)| *q != queue_id);
        let dir = self.dir.join(format!("{queue_id:08}"));
        if let Err(e) = self.files_out.remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %dir.display(), error = %e, "cannot delete a queue index");
            }
        }
    }

    /// Makes this batch's writes durable, records that in the headers, then
    /// deletes files that are full and fully acknowledged.
    pub(crate) fn sync(&mut self) -> std::io::Result<()> {
        for key in std::mem::take(&mut self.dirty) {
            let Some(f) = self.open.get(&key) else {
                continue;
            };
            f.sync_data()?;
            let Some(state) = self.files.get_mut(&key) else {
                continue;
            };
            state.synced = state.written;
            if state.sealed < state.synced {
                let dir = &self.dir;
                self.files_out.write_at_with(
                    f,
                    &encode_header(key.0, key.1, state.synced),
                    0,
                    || index_path(dir, key.0, key.1),
                )?;
                state.sealed = state.synced;
                state.header_unsynced = true;
            }
            if state.full && state.live == 0 {
                self.files.remove(&key);
                self.open.remove(&key);
                let mut listed: Vec<u64> = self
                    .files
                    .keys()
                    .filter(|(q, _)| *q == key.0)
                    .map(|(_, n)| *n)
                    .collect();
                listed.sort_unstable();
                let path = self.path(key.0, key.1);
                let qdir = path.parent().expect("queue directory");
                write_manifest(qdir, &listed, &self.files_out)?;
                if let Err(e) = self.files_out.remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete a drained index file");
                }
            }
        }
        Ok(())
    }

    /// Makes the headers durable (a clean stop): the next start checks
    /// every slot on disk.
    pub(crate) fn seal(&mut self) -> std::io::Result<()> {
        let unsynced: Vec<(u32, u64)> = self
            .files
            .iter()
            .filter(|(_, s)| s.header_unsynced)
            .map(|(k, _)| *k)
            .collect();
        for key in unsynced {
            if let Some(f) = self.open.get(&key) {
                f.sync_data()?;
            }
            if let Some(state) = self.files.get_mut(&key) {
                state.header_unsynced = false;
            }
        }
        Ok(())
    }
}

/// Creates a new queue's index directory with an empty file list, before
/// its record is stored: a queue whose directory is gone is then noticed.
pub(crate) fn create_queue(dir: &Path, queue_id: u32, files: &Recorder) -> std::io::Result<()> {
    let qdir = queue_dir(dir, queue_id);
    if qdir.join(MANIFEST).exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&qdir)?;
    sync_dir(&qdir)?;
    write_manifest(&qdir, &[], files)
}

/// The file that lists a queue's index files.
#[cfg(test)]
pub(crate) fn manifest_path(dir: &Path, queue_id: u32) -> PathBuf {
    queue_dir(dir, queue_id).join(MANIFEST)
}

fn index_path(dir: &Path, queue_id: u32, file_no: u64) -> PathBuf {
    queue_dir(dir, queue_id).join(format!("{file_no:08}.idx"))
}

fn queue_dir(dir: &Path, queue_id: u32) -> PathBuf {
    dir.join(format!("{queue_id:08}"))
}

fn write_manifest(qdir: &Path, files: &[u64], out: &Recorder) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(16 + files.len() * 8);
    buf.extend_from_slice(MANIFEST_MAGIC);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&[VERSION, 0, 0, 0]);
    buf.extend_from_slice(&(files.len() as u32).to_be_bytes());
    for n in files {
        buf.extend_from_slice(&n.to_be_bytes());
    }
    let crc = manifest_crc(&buf);
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    let tmp = qdir.join(format!("{MANIFEST}.tmp"));
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)?;
    out.created(&tmp);
    out.write_at(&f, &tmp, &buf, 0)?;
    f.sync_data()?;
    out.rename(&tmp, &qdir.join(MANIFEST))?;
    sync_dir(&qdir.join(MANIFEST))
}

fn manifest_crc(buf: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[..4]);
    h.update(&buf[8..]);
    h.finalize()
}

/// The index files a queue's manifest lists, or what is wrong with it.
fn read_manifest(path: &Path) -> Result<Vec<u64>, String> {
    let buf = match std::fs::read(path) {
        Ok(buf) => buf,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("the queue's list of index files is missing".into())
        }
        Err(e) => return Err(format!("cannot read the queue's list of index files: {e}")),
    };
    let bad = || "the queue's list of index files is damaged".to_string();
    if buf.len() < 16 || &buf[..4] != MANIFEST_MAGIC {
        return Err(bad());
    }
    if buf[8] != VERSION {
        return Err(format!("unknown index list version {}", buf[8]));
    }
    let crc = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    let count = u32::from_be_bytes(buf[12..16].try_into().expect("4 bytes")) as usize;
    if crc != manifest_crc(&buf) || buf.len() != 16 + count * 8 {
        return Err(bad());
    }
    Ok(buf[16..]
        .chunks_exact(8)
        .map(|n| u64::from_be_bytes(n.try_into().expect("8 bytes")))
        .collect())
}

fn encode_header(queue_id: u32, file_no: u64, synced: u64) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..4].copy_from_slice(MAGIC);
    b[8] = VERSION;
    b[12..16].copy_from_slice(&queue_id.to_be_bytes());
    b[16..24].copy_from_slice(&file_no.to_be_bytes());
    b[24..32].copy_from_slice(&synced.to_be_bytes());
    let crc = header_crc(&b);
    b[4..8].copy_from_slice(&crc.to_be_bytes());
    b
}

fn header_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..4]);
    h.update(&b[8..SLOT]);
    h.finalize()
}

/// The synced mark of a valid header for this queue and file.
fn decode_header(b: &[u8], queue_id: u32, file_no: u64) -> Option<u64> {
    let field = |r: std::ops::Range<usize>| b[r].iter().fold(0u64, |n, &x| n << 8 | u64::from(x));
    let valid = &b[..4] == MAGIC
        && b[8] == VERSION
        && field(4..8) as u32 == header_crc(b)
        && field(12..16) as u32 == queue_id
        && field(16..24) == file_no;
    let synced = field(24..32);
    (valid && synced <= SLOTS).then_some(synced)
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
    b[2..4].copy_from_slice(&((s.arrived_s >> 16) as u16).to_be_bytes());
    b[8..12].copy_from_slice(&s.at.segment.to_be_bytes());
    b[12..16].copy_from_slice(&s.at.len.to_be_bytes());
    b[16..24].copy_from_slice(&s.at.offset.to_be_bytes());
    let tail = u64::from(s.arrived_s & 0xffff) << 48 | s.expires_at.min(EXPIRES_MAX);
    b[24..32].copy_from_slice(&tail.to_be_bytes());
    let crc = crc(s.seq, &b);
    b[4..8].copy_from_slice(&crc.to_be_bytes());
    b
}

fn skip(seq: u64) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[0] = SKIP;
    let crc = crc(seq, &slot);
    slot[4..8].copy_from_slice(&crc.to_be_bytes());
    slot
}

/// An acknowledged slot standing for one that was lost to damage.
fn tombstone(seq: u64) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    set_acked(seq, &mut slot);
    slot
}

/// Marks a ready slot acknowledged, its checksum with it.
fn set_acked(seq: u64, slot: &mut [u8; SLOT]) {
    slot[0] = ACKED;
    let crc = crc(seq, slot);
    slot[4..8].copy_from_slice(&crc.to_be_bytes());
}

/// Marks a slot that decoded as ready acknowledged. A CRC is affine in its
/// input: the state byte going from READY to ACKED changes the checksum by
/// a constant, so an acknowledgement costs no second pass over the slot.
fn ready_to_acked(slot: &mut [u8; SLOT]) {
    debug_assert_eq!(slot[0], READY);
    slot[0] = ACKED;
    let crc = u32::from_be_bytes([slot[4], slot[5], slot[6], slot[7]]) ^ READY_TO_ACKED_CRC;
    slot[4..8].copy_from_slice(&crc.to_be_bytes());
}

/// What READY → ACKED does to a slot's checksum (see `ready_to_acked`):
/// crc(d) ^ crc(0…0) over the 36 checksummed bytes, d holding
/// READY ^ ACKED at the state byte.
const READY_TO_ACKED_CRC: u32 = 0x02de_0727;

/// Covers the seq (a slot copied elsewhere does not check) and every byte
/// but the checksum, the state byte included: `seq u64 ‖ slot[0..4] ‖
/// slot[8..]`, hashed in one pass (a slot is checked or sealed for every
/// message written, acknowledged or read back).
fn crc(seq: u64, slot: &[u8]) -> u32 {
    let mut b = [0u8; 8 + SLOT - 4];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&slot[0..4]);
    b[12..].copy_from_slice(&slot[8..SLOT]);
    let mut h = hasher();
    h.update(&b);
    h.finalize()
}

/// A fresh CRC hasher, without looking up the CPU's features each time.
fn hasher() -> crc32fast::Hasher {
    static NEW: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    NEW.get_or_init(crc32fast::Hasher::new).clone()
}

fn decode(seq: u64, b: &[u8]) -> Option<Slot> {
    if u32::from_be_bytes(b[4..8].try_into().ok()?) != crc(seq, b) {
        return None;
    }
    let arrived_hi = u16::from_be_bytes(b[2..4].try_into().ok()?);
    let tail = u64::from_be_bytes(b[24..32].try_into().ok()?);
    Some(Slot {
        seq,
        flags: b[1],
        at: Location {
            segment: u32::from_be_bytes(b[8..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..16].try_into().ok()?),
            offset: u64::from_be_bytes(b[16..24].try_into().ok()?),
        },
        expires_at: tail & EXPIRES_MAX,
        arrived_s: u32::from(arrived_hi) << 16 | (tail >> 48) as u32,
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
            arrived_s: 1_800_000_000 + seq as u32,
        }
    }

    /// A ready slot as it was written before arrivals were kept: zeros in
    /// bytes 2..4 and in the top of `expires_at`.
    fn encode_without_arrival(s: &Slot) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0] = READY;
        b[1] = s.flags;
        b[8..12].copy_from_slice(&s.at.segment.to_be_bytes());
        b[12..16].copy_from_slice(&s.at.len.to_be_bytes());
        b[16..24].copy_from_slice(&s.at.offset.to_be_bytes());
        b[24..32].copy_from_slice(&s.expires_at.to_be_bytes());
        let crc = crc(s.seq, &b);
        b[4..8].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn arrival_and_expiry_share_the_slot_and_round_trip() {
        for arrived_s in [0, 1, 0xffff, 0x1_0000, 1_800_000_000, u32::MAX] {
            for expires_at in [0, 1, 1_800_000_000_123, EXPIRES_MAX] {
                let mut s = slot(9);
                s.arrived_s = arrived_s;
                s.expires_at = expires_at;
                let b = encode(&s);
                assert_eq!(decode(9, &b), Some(s), "{arrived_s} {expires_at}");
                let mut acked = b;
                ready_to_acked(&mut acked);
                assert!(decode(9, &acked).is_some());
            }
        }
        // An expiry past 48 bits (none is: a TTL is at most ten years) is
        // kept as the farthest one, never spilling into the arrival.
        let mut s = slot(9);
        s.expires_at = u64::MAX;
        let back = decode(9, &encode(&s)).unwrap();
        assert_eq!(
            (back.expires_at, back.arrived_s),
            (EXPIRES_MAX, s.arrived_s)
        );
        assert_eq!(arrival_seconds(1_800_000_000_999), 1_800_000_000);
        assert_eq!(arrival_ms(arrival_seconds(0)), 0, "unknown stays unknown");
    }

    /// Index files written before arrivals were kept load as they did,
    /// each message's arrival unknown.
    #[test]
    fn slots_written_before_arrivals_were_kept_still_load() {
        let dir = fresh("old-slots");
        create_queue(&dir, 1, &Recorder::default()).unwrap();
        let (mut ix, _) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        ix.put(1, &(0..4).map(slot).collect::<Vec<_>>()).unwrap();
        ix.sync().unwrap();
        ix.seal().unwrap();
        drop(ix);
        let f = OpenOptions::new().write(true).open(ix_path(&dir)).unwrap();
        for seq in 0..4 {
            let old = encode_without_arrival(&slot(seq));
            f.write_all_at(&old, (seq + 1) * SLOT as u64).unwrap();
        }
        drop(f);
        let mut seen = Vec::new();
        let (mut ix, scan) = QueueIndexes::open(&dir, |_, s| {
            seen.push(s);
            true
        })
        .unwrap();
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        let want: Vec<Slot> = (0..4)
            .map(|seq| Slot {
                arrived_s: 0,
                ..slot(seq)
            })
            .collect();
        assert_eq!(seen, want);
        assert_eq!(ix.read(1, 0, 10).unwrap(), want);
        assert_eq!(ack_one(&mut ix, 1, 2), Some(slot(2).at));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn acknowledging_in_place_matches_a_full_checksum() {
        for seq in [0, 1, 77, SLOTS - 1, SLOTS, 1 << 40] {
            for flags in [0, 1, 0xff] {
                let mut s = slot(seq);
                s.flags = flags;
                s.at.segment = seq as u32 ^ 0xdead_beef;
                let mut fast = encode(&s);
                let mut full = fast;
                ready_to_acked(&mut fast);
                set_acked(seq, &mut full);
                assert_eq!(fast, full, "seq {seq} flags {flags}");
                assert!(decode(seq, &fast).is_some());
            }
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
        let (mut ix, scan) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        assert!(scan.damage.is_empty());
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
        let (mut ix, scan) = QueueIndexes::open(&dir, |q, s| {
            seen.push((q, s.seq));
            s.seq != SLOTS // drop one at recovery
        })
        .unwrap();
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        ix.finish_recovery().unwrap();
        assert_eq!(seen.len(), 10);
        assert_eq!(ix.read(7, 0, usize::MAX).unwrap().len(), 9);

        // A damaged slot is reported, not returned.
        let f = OpenOptions::new().write(true).open(ix.path(7, 1)).unwrap();
        f.write_all_at(&[0xff; 4], 6 * SLOT as u64 + 12).unwrap(); // slot 5's CRC'd bytes
        drop(ix);
        let (_, scan) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].lost, 1);
        assert!(scan.damage[0].path.ends_with("00000007/00000001.idx"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn fresh(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("leveret-qindex-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn reopen(dir: &Path) -> (QueueIndexes, Scan, usize) {
        let mut n = 0;
        let (ix, scan) = QueueIndexes::open(dir, |_, _| {
            n += 1;
            true
        })
        .unwrap();
        (ix, scan, n)
    }

    /// Writes 100 slots in one batch, synced, and 50 in a second one a
    /// crash interrupts before its sync.
    fn two_batches(dir: &Path) -> PathBuf {
        create_queue(dir, 1, &Recorder::default()).unwrap();
        let (mut ix, _) = QueueIndexes::open(dir, |_, _| true).unwrap();
        ix.put(1, &(0..100).map(slot).collect::<Vec<_>>()).unwrap();
        ix.sync().unwrap();
        ix.put(1, &(100..150).map(slot).collect::<Vec<_>>())
            .unwrap();
        ix.path(1, 0)
    }

    fn zero_slots(path: &Path, from: u64, n: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&vec![0; n as usize * SLOT], (from + 1) * SLOT as u64)
            .unwrap();
    }

    #[test]
    fn zeros_past_the_synced_mark_are_a_torn_tail_and_below_it_damage() {
        let dir = fresh("torn");
        let path = two_batches(&dir);
        // Part of the unsynced batch never reached the disk.
        zero_slots(&path, 120, 30);
        let (_, scan, n) = reopen(&dir);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        assert_eq!(n, 120);
        // Zeros in the synced batch's slots: damage, counted.
        zero_slots(&path, 40, 10);
        let (_, scan, _) = reopen(&dir);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].lost, 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_synced_slot_is_checked_at_once() {
        let dir = fresh("seal");
        let path = two_batches(&dir);
        let (mut ix, _) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        ix.put(1, &[slot(150)]).unwrap();
        ix.sync().unwrap();
        ix.seal().unwrap();
        drop(ix);
        zero_slots(&path, 150, 1);
        let (_, scan, _) = reopen(&dir);
        assert_eq!(scan.damage.len(), 1, "the last synced slot is checked");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn seqs_never_written_are_not_damage() {
        let dir = fresh("gaps");
        create_queue(&dir, 1, &Recorder::default()).unwrap();
        let (mut ix, _) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        ix.put(1, &(5..10).map(slot).collect::<Vec<_>>()).unwrap();
        ix.put(1, &(50..60).map(slot).collect::<Vec<_>>()).unwrap();
        ix.sync().unwrap();
        ix.put(1, &(900..901).map(slot).collect::<Vec<_>>())
            .unwrap();
        ix.sync().unwrap();
        drop(ix);
        let (_, scan, n) = reopen(&dir);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        assert_eq!(n, 16);
        zero_slots(&ix_path(&dir), 20, 1);
        let (_, scan, _) = reopen(&dir);
        assert_eq!(scan.damage.len(), 1, "a skip slot zeroed is damage too");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn ix_path(dir: &Path) -> PathBuf {
        dir.join("00000001").join("00000000.idx")
    }

    #[test]
    fn an_acknowledgement_by_damage_is_told_from_a_real_one() {
        let dir = fresh("acked");
        let path = two_batches(&dir);
        let (mut ix, _) = QueueIndexes::open(&dir, |_, _| true).unwrap();
        assert_eq!(ack_one(&mut ix, 1, 3), Some(slot(3).at));
        ix.sync().unwrap();
        drop(ix);
        let (_, scan, n) = reopen(&dir);
        assert!(scan.damage.is_empty(), "{:?}", scan.damage);
        assert_eq!(n, 149);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[ACKED], 8 * SLOT as u64).unwrap(); // slot 7
        let (_, scan, _) = reopen(&dir);
        assert_eq!(scan.damage.len(), 1, "slot 7 acked by damage");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_deleted_index_file_or_list_is_damage() {
        let dir = fresh("deleted");
        let path = two_batches(&dir);
        std::fs::rename(&path, dir.join("aside")).unwrap();
        let (_, scan, _) = reopen(&dir);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].path, path);
        std::fs::rename(dir.join("aside"), &path).unwrap();
        std::fs::remove_file(manifest_path(&dir, 1)).unwrap();
        let (_, scan, _) = reopen(&dir);
        assert_eq!(scan.damage.len(), 1);
        assert_eq!(scan.damage[0].path, manifest_path(&dir, 1));
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
                    seq.wrapping_add(salt) & EXPIRES_MAX
                },
                arrived_s: (seq ^ salt.rotate_left(17)) as u32,
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
                let (ix, scan) = QueueIndexes::open(&dir, |_, _| true).unwrap();
                prop_assert!(scan.damage.is_empty());
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
                            let (mut index, scan) = QueueIndexes::open(&dir, |q, s| {
                                seen.push((q, s));
                                m == 0 || s.seq % m != r
                            })
                            .unwrap();
                            prop_assert!(scan.damage.is_empty(), "{:?}", scan.damage);
                            index.finish_recovery().unwrap();
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
