//! The persister: one thread that owns every message write.
//!
//! Group commit: it blocks for the first operation, takes everything queued
//! behind it, appends the new bodies to the current segment and fsyncs it,
//! writes the queue index slots pointing at them and fsyncs those, and
//! then releases the publisher confirms the batch covered. There is no
//! timer: under load the next batch has grown while the previous flush ran;
//! when idle a confirm waits for exactly one flush.
//!
//! Within a batch, work undone before it reaches disk cancels out: a message
//! published and acknowledged in the same batch is never written.

use super::queue_index::{QueueIndexes, Slot};
use super::record;
use super::segments::{Location, Segments};
use super::{DiskRef, QueuedMessage};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::channel::shared::ChannelShared;
use crate::hash::HashMap as FastMap;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, error, info};

/// Most operations taken into one batch, so a flood cannot grow a batch
/// (and the memory it pins) without bound.
const MAX_BATCH_OPS: usize = 16 * 1024;
/// Delivered marks only decide the redelivered flag after a crash, so
/// sled is flushed for them at most this often instead of after every
/// batch: that flush was a third of the broker's CPU per persistent
/// message, and a third more throughput with confirms (scenario c).
const MARK_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

pub enum Op {
    /// A message body, referenced by `refs` queue entries that follow.
    Body {
        msg_id: u64,
        message: Arc<Message>,
        refs: u32,
    },
    /// A message now sits in a queue (`expires_at` 0: never).
    Entry {
        queue_id: u32,
        seq: u64,
        disk: DiskRef,
        expires_at: u64,
    },
    /// The message at `seq` was delivered: after a restart it, and every
    /// earlier one, comes back redelivered.
    Delivered { queue_id: u32, seq: u64 },
    /// A message left a queue (acknowledged, dropped, purged).
    Remove {
        queue_id: u32,
        seq: u64,
        msg_id: u64,
    },
    /// A body reference that never became an entry (its queue was deleted meanwhile).
    Release { msg_id: u64 },
    /// Every entry of a queue from `from` on (purge of paged-out messages;
    /// queue deletion with `from` 0).
    RemoveFrom { queue_id: u32, from: u64 },
    /// Publisher confirm `seq` on `channel` waits for this batch to be on disk.
    Confirm {
        channel: Arc<ChannelShared>,
        seq: u64,
    },
    /// Read paged-out messages back for a queue.
    Load(LoadRequest),
    /// Answered once everything sent before it is on disk.
    Sync(Sender<()>),
    /// Finish the queued work, flush, and end the thread.
    Stop,
}

pub struct LoadRequest {
    pub queue: Weak<Queue>,
    pub queue_id: u32,
    pub from: u64,
    pub max_bytes: usize,
    pub generation: u64,
}

/// Messages read back from disk for a queue.
pub struct Loaded {
    pub generation: u64,
    pub messages: Vec<QueuedMessage>,
    /// Entries consumed, including unreadable ones that were skipped.
    pub consumed: usize,
    /// The seq after the last entry consumed.
    pub next_from: u64,
}

/// A body whose queue entries are not all written (or cancelled) yet.
struct InFlight {
    /// Until written to a segment.
    message: Option<Arc<Message>>,
    at: Option<Location>,
    /// References not yet written as entries nor cancelled.
    unresolved: u32,
}

pub struct Persister {
    db: sled::Db,
    /// Delivered marks (see `record::delivered_key`).
    marks: sled::Tree,
    index: QueueIndexes,
    segments: Segments,
    in_flight: FastMap<u64, InFlight>,
    /// Per queue, the seq below which every message was delivered (see
    /// `record::delivered_key`).
    delivered: HashMap<u32, u64>,
    backlog: Arc<super::Backlog>,
    /// Queue entries on disk, written to the clean-shutdown marker so the
    /// next start can tell a damaged store from a complete one.
    entries: u64,
    marker: std::path::PathBuf,
    /// When the oldest delivered mark not yet flushed was written.
    marks_unflushed: Option<Instant>,
    stats: Stats,
}

/// Where the persister's time goes, logged when it stops.
#[derive(Default)]
struct Stats {
    batches: u64,
    ops: u64,
    bodies: u64,
    index_writes: u64,
    fold: Duration,
    segment_write: Duration,
    index: Duration,
    load: Duration,
    flush: Duration,
    confirm: Duration,
}

impl Stats {
    fn log(&self) {
        let ms = |d: Duration| d.as_millis() as u64;
        info!(
            batches = self.batches,
            ops = self.ops,
            bodies_written = self.bodies,
            index_writes = self.index_writes,
            fold_ms = ms(self.fold),
            segment_write_ms = ms(self.segment_write),
            index_ms = ms(self.index),
            load_ms = ms(self.load),
            index_flush_ms = ms(self.flush),
            confirm_ms = ms(self.confirm),
            "persister totals"
        );
    }
}

/// A new queue entry: (msg_id, flags, expires_at).
type PendingEntry = (u64, u8, u64);

/// One batch's operations, folded so that undone work cancels out.
#[derive(Default)]
struct Batch {
    /// New entries: (queue, seq) → (msg_id, flags, expires_at).
    puts: FastMap<(u32, u64), PendingEntry>,
    /// Existing entries to delete.
    removes: Vec<(u32, u64)>,
    /// Queue ranges to delete, applied before `removes` and `puts`.
    remove_from: Vec<(u32, u64)>,
    marks: FastMap<u32, Option<u64>>,
    confirms: Vec<(Arc<ChannelShared>, u64)>,
    loads: Vec<LoadRequest>,
    syncs: Vec<Sender<()>>,
    stop: bool,
}

impl Persister {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: sled::Db,
        marks: sled::Tree,
        index: QueueIndexes,
        segments: Segments,
        delivered: HashMap<u32, u64>,
        backlog: Arc<super::Backlog>,
        entries: u64,
        marker: std::path::PathBuf,
    ) -> Persister {
        Persister {
            db,
            marks,
            index,
            segments,
            in_flight: FastMap::default(),
            delivered,
            backlog,
            entries,
            marker,
            marks_unflushed: None,
            stats: Stats::default(),
        }
    }

    pub fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(1024);
        loop {
            let op = match self.marks_unflushed {
                Some(since) => {
                    match rx.recv_timeout(MARK_FLUSH_INTERVAL.saturating_sub(since.elapsed())) {
                        Ok(op) => op,
                        Err(RecvTimeoutError::Timeout) => {
                            self.flush_marks();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            self.flush_marks();
                            return;
                        }
                    }
                }
                None => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => return,
                },
            };
            ops.push(op);
            while ops.len() < MAX_BATCH_OPS {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if self.commit(&mut ops) {
                self.seal();
                self.write_marker();
                self.stats.log();
                return;
            }
        }
    }

    /// Makes the index headers durable before a clean stop's marker.
    fn seal(&mut self) {
        if let Err(e) = self.index.seal() {
            error!(error = %e, "cannot write a queue index header");
        }
    }

    /// Applies one batch; returns true when asked to stop.
    fn commit(&mut self, ops: &mut Vec<Op>) -> bool {
        let started = Instant::now();
        self.stats.ops += ops.len() as u64;
        let mut b = Batch::default();
        for op in ops.drain(..) {
            self.fold(&mut b, op);
        }
        let folded = Instant::now();
        self.stats.fold += folded - started;

        let ok = self.write_bodies();
        let indexing = Instant::now();
        self.stats.segment_write += indexing - folded;
        let mut released = Vec::new();
        let indexed = if ok {
            self.write_index(&mut b, &mut released)
        } else {
            None
        };
        // A message is durable once its index slot is too.
        let ok = indexed.is_some();
        let loading = Instant::now();
        self.stats.index += loading - indexing;
        // Reads see what was just written; serve them before the flush so
        // consumers do not wait on the disk.
        for load in std::mem::take(&mut b.loads) {
            self.load(load);
        }
        let flushing = Instant::now();
        self.stats.load += flushing - loading;
        if indexed == Some(true) && self.marks_unflushed.is_none() {
            self.marks_unflushed = Some(Instant::now());
        }
        if b.stop
            || self
                .marks_unflushed
                .is_some_and(|since| since.elapsed() >= MARK_FLUSH_INTERVAL)
        {
            self.flush_marks();
        }
        // Only now that the index no longer points at them may segments go.
        for segment in released {
            self.segments.release(segment);
        }
        self.segments.collect();
        let confirming = Instant::now();
        self.stats.flush += confirming - flushing;
        confirm(std::mem::take(&mut b.confirms), ok);
        for done in b.syncs {
            let _ = done.send(());
        }
        self.stats.confirm += confirming.elapsed();
        self.stats.batches += 1;
        debug!(
            micros = started.elapsed().as_micros() as u64,
            "store batch committed"
        );
        b.stop
    }

    fn flush_marks(&mut self) {
        if self.marks_unflushed.take().is_some() {
            if let Err(e) = self.db.flush() {
                error!(error = %e, "cannot flush delivered marks to disk");
            }
        }
    }

    fn fold(&mut self, b: &mut Batch, op: Op) {
        match op {
            Op::Body {
                msg_id,
                message,
                refs,
            } => {
                self.backlog.sub(message.size());
                self.in_flight.insert(
                    msg_id,
                    InFlight {
                        message: Some(message),
                        at: None,
                        unresolved: refs,
                    },
                );
            }
            Op::Entry {
                queue_id,
                seq,
                disk,
                expires_at,
            } => {
                b.puts
                    .insert((queue_id, seq), (disk.msg_id, disk.flags, expires_at));
            }
            Op::Delivered { queue_id, seq } => {
                let mark = self.delivered.entry(queue_id).or_default();
                if seq + 1 > *mark {
                    *mark = seq + 1;
                    b.marks.insert(queue_id, Some(seq + 1));
                }
            }
            Op::Remove {
                queue_id,
                seq,
                msg_id,
            } => {
                if b.puts.remove(&(queue_id, seq)).is_some() {
                    self.unref(msg_id);
                } else {
                    b.removes.push((queue_id, seq));
                }
            }
            Op::Release { msg_id } => self.unref(msg_id),
            Op::RemoveFrom { queue_id, from } => {
                let cancelled: Vec<((u32, u64), u64)> = b
                    .puts
                    .iter()
                    .filter(|((q, s), _)| *q == queue_id && *s >= from)
                    .map(|(k, (msg_id, _, _))| (*k, *msg_id))
                    .collect();
                for (key, msg_id) in cancelled {
                    b.puts.remove(&key);
                    self.unref(msg_id);
                }
                if from == 0 && self.delivered.remove(&queue_id).is_some() {
                    b.marks.insert(queue_id, None);
                }
                b.remove_from.push((queue_id, from));
            }
            Op::Confirm { channel, seq } => b.confirms.push((channel, seq)),
            Op::Load(load) => b.loads.push(load),
            Op::Sync(done) => b.syncs.push(done),
            Op::Stop => b.stop = true,
        }
    }

    /// A reference to an in-flight body went away without becoming an entry.
    fn unref(&mut self, msg_id: u64) {
        if let Some(f) = self.in_flight.get_mut(&msg_id) {
            f.unresolved = f.unresolved.saturating_sub(1);
            if f.unresolved == 0 {
                self.in_flight.remove(&msg_id);
            }
        }
    }

    /// Appends every body still needed to the segment and fsyncs it.
    fn write_bodies(&mut self) -> bool {
        let mut appended = 0;
        for f in self.in_flight.values_mut() {
            let Some(message) = f.message.take() else {
                continue;
            };
            match self.segments.append(&message) {
                Ok(at) => f.at = Some(at),
                Err(e) => {
                    error!(error = %e, "cannot write a message segment");
                    return false;
                }
            }
            appended += 1;
        }
        self.stats.bodies += appended;
        if let Err(e) = self.segments.sync() {
            error!(error = %e, "cannot write a message segment to disk");
            return false;
        }
        true
    }

    /// Applies the batch to the queue indexes (synced) and delivered marks
    /// (not flushed); returns None when the index could not be written,
    /// else whether a mark changed. Segments that lost a reference are
    /// pushed to `released`.
    fn write_index(&mut self, b: &mut Batch, released: &mut Vec<u32>) -> Option<bool> {
        let mut writes = 0u64;
        let mut dropped_queues = Vec::new();
        let result = (|| -> std::io::Result<()> {
            let mut acked = Vec::new();
            let mut seqs = Vec::new();
            for (queue_id, from) in std::mem::take(&mut b.remove_from) {
                seqs.clear();
                seqs.extend(self.index.ready_from(queue_id, from)?.iter().map(|s| s.seq));
                writes += seqs.len() as u64;
                self.index.ack(queue_id, &seqs, &mut acked)?;
                if from == 0 {
                    dropped_queues.push(queue_id);
                }
            }
            let mut removes = std::mem::take(&mut b.removes);
            removes.sort_unstable();
            writes += removes.len() as u64;
            for run in removes.chunk_by(|a, b| a.0 == b.0) {
                seqs.clear();
                seqs.extend(run.iter().map(|(_, seq)| *seq));
                self.index.ack(run[0].0, &seqs, &mut acked)?;
            }
            for at in acked {
                self.removed(at, released);
            }
            let mut puts: Vec<((u32, u64), PendingEntry)> = b.puts.drain().collect();
            puts.sort_unstable_by_key(|(k, _)| *k);
            let mut run: Vec<Slot> = Vec::new();
            let mut i = 0;
            while i < puts.len() {
                let queue_id = puts[i].0 .0;
                run.clear();
                while i < puts.len() && puts[i].0 .0 == queue_id {
                    let ((_, seq), (msg_id, flags, expires_at)) = puts[i];
                    i += 1;
                    let Some(at) = self.resolve(msg_id) else {
                        error!(
                            queue_id,
                            seq, msg_id, "queue entry for an unwritten message; dropped"
                        );
                        continue;
                    };
                    run.push(Slot {
                        seq,
                        at,
                        flags,
                        expires_at,
                    });
                }
                self.index.put(queue_id, &run)?;
                for slot in &run {
                    self.segments.reference(slot.at.segment);
                }
                self.entries += run.len() as u64;
                writes += run.len() as u64;
            }
            self.index.sync()
        })();
        for queue_id in dropped_queues {
            self.index.drop_queue(queue_id);
        }
        self.stats.index_writes += writes;
        if let Err(e) = result {
            error!(error = %e, "cannot write a queue index");
            return None;
        }
        let mut marked = false;
        for (queue_id, mark) in std::mem::take(&mut b.marks) {
            let key = record::delivered_key(queue_id);
            let r = match mark {
                Some(seq) => self.marks.insert(key, &seq.to_be_bytes()[..]).map(drop),
                None => self.marks.remove(key).map(drop),
            };
            if let Err(e) = r {
                error!(error = %e, "cannot write a delivered mark");
            }
            marked = true;
        }
        Some(marked)
    }

    /// The location of a body for one of its entries, settling that reference.
    fn resolve(&mut self, msg_id: u64) -> Option<Location> {
        let f = self.in_flight.get_mut(&msg_id)?;
        let at = f.at?;
        f.unresolved = f.unresolved.saturating_sub(1);
        if f.unresolved == 0 {
            self.in_flight.remove(&msg_id);
        }
        Some(at)
    }

    fn removed(&mut self, at: Location, released: &mut Vec<u32>) {
        released.push(at.segment);
        self.entries = self.entries.saturating_sub(1);
    }

    /// Records, after the last flush of a clean stop, how many entries the
    /// store holds; recovery compares it with what it reads.
    fn write_marker(&self) {
        let result = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&self.marker)?;
            writeln!(f, "entries {}", self.entries)?;
            f.sync_all()
        })();
        if let Err(e) = result {
            error!(error = %e, path = %self.marker.display(), "cannot write the clean-shutdown marker");
        }
    }

    fn load(&mut self, req: LoadRequest) {
        let Some(queue) = req.queue.upgrade() else {
            return;
        };
        let delivered = self.delivered.get(&req.queue_id).copied();
        let mut loaded = Loaded {
            generation: req.generation,
            messages: Vec::new(),
            consumed: 0,
            next_from: req.from,
        };
        let mut bytes = 0usize;
        'chunks: loop {
            let slots = match self.index.read(req.queue_id, loaded.next_from, 256) {
                Ok(slots) => slots,
                Err(e) => {
                    error!(error = %e, queue = %queue.name, "cannot read a queue index");
                    break;
                }
            };
            if slots.is_empty() {
                break;
            }
            for slot in slots {
                loaded.consumed += 1;
                loaded.next_from = slot.seq + 1;
                let message = match self.segments.read(slot.at) {
                    Ok(m) => m,
                    Err(e) => {
                        error!(queue = %queue.name, seq = slot.seq, error = %e, "stored message unreadable; skipping it");
                        continue;
                    }
                };
                bytes += message.size() + super::MESSAGE_OVERHEAD;
                loaded.messages.push(QueuedMessage {
                    seq: slot.seq,
                    message: Arc::new(message),
                    redelivered: delivered.is_some_and(|mark| slot.seq < mark),
                    disk: Some(DiskRef {
                        msg_id: 0,
                        flags: slot.flags,
                    }),
                    expires_at: (slot.expires_at != 0).then_some(slot.expires_at),
                    returned: 0,
                });
                if bytes >= req.max_bytes {
                    break 'chunks;
                }
            }
        }
        queue.on_loaded(loaded);
    }
}

/// Tells each channel the highest confirm the batch covered.
fn confirm(mut confirms: Vec<(Arc<ChannelShared>, u64)>, ok: bool) {
    // Keep the last (highest) seq per channel; seqs arrive in order per channel.
    confirms.reverse();
    let mut seen: Vec<*const ChannelShared> = Vec::new();
    for (channel, seq) in confirms {
        let ptr = Arc::as_ptr(&channel);
        if seen.contains(&ptr) {
            continue;
        }
        seen.push(ptr);
        channel.confirm_persisted(seq, ok);
    }
}
