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

use super::fail_stop::{FailStop, Unwritten};
use super::journal::{Recorder, Tree};
use super::queue_index::{self, QueueIndexes, Slot};
use super::record;
use super::segments::{Location, Segments};
use super::QueueEvents;
use super::{ConfirmSink, DiskRef, QueuedMessage};
use crate::hash::HashMap as FastMap;
use crate::message::Message;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
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
/// After a failed write, how long the store waits before it tries again
/// (once there is room): doubled after each failure in a row, up to
/// `MAX_RETRY`, so a disk that keeps failing logs an error and nacks a
/// batch at most that often.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(64);
/// Free bytes needed to try writing again, whatever the disk_free_limit
/// (with 0, the disk would be "not low" while completely full).
const ROOM_TO_RESUME: u64 = 1 << 20;
/// How often a stopped store looks whether it may resume, when idle.
const RECHECK_WHILE_FAILED: Duration = Duration::from_millis(250);
/// How long lost messages are remembered for their confirms (which follow
/// their entries within a batch or two).
const FORGET_LOST: Duration = Duration::from_secs(10);

pub(crate) enum Op {
    /// A message body, referenced by `refs` queue entries that follow.
    Body {
        msg_id: u64,
        message: Arc<Message>,
        refs: u32,
    },
    /// A message now sits in a queue (`expires_at` 0: never; `arrived_s`
    /// seconds since the epoch, 0: unknown).
    Entry {
        queue_id: u32,
        seq: u64,
        disk: DiskRef,
        expires_at: u64,
        arrived_s: u32,
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
    /// Publisher confirm `seq` on `channel`, for message `msg_id`, waits
    /// for this batch to be on disk. Sent after the message's entries.
    Confirm {
        channel: Arc<dyn ConfirmSink>,
        seq: u64,
        msg_id: u64,
    },
    /// Read paged-out messages back for a queue.
    Load(LoadRequest),
    /// Answered once everything sent before it is on disk: true when none
    /// of these messages lost an entry (a transaction's, for tx.commit).
    Sync {
        msg_ids: Vec<u64>,
        done: tokio::sync::oneshot::Sender<bool>,
    },
    /// Finish the queued work, flush, and end the thread.
    Stop,
}

pub(crate) struct LoadRequest {
    pub(crate) queue: Weak<dyn QueueEvents>,
    pub(crate) queue_id: u32,
    pub(crate) from: u64,
    /// Entries from this seq on are not read.
    pub(crate) until: u64,
    pub(crate) max_bytes: usize,
    pub(crate) generation: u64,
}

/// Messages read back from disk for a queue.
pub(crate) struct Loaded {
    pub(crate) generation: u64,
    pub(crate) messages: Vec<QueuedMessage>,
    /// Entries consumed, including unreadable ones that were skipped.
    pub(crate) consumed: usize,
    /// The seq after the last entry consumed.
    pub(crate) next_from: u64,
    /// When the first message left on disk after these arrived (ms since
    /// the epoch; 0: unknown, or none left).
    pub(crate) next_arrived_ms: u64,
}

/// A body whose queue entries are not all written (or cancelled) yet.
struct InFlight {
    /// Until written to a segment.
    message: Option<Arc<Message>>,
    at: Option<Location>,
    /// References not yet written as entries nor cancelled.
    unresolved: u32,
    body_len: u64,
    /// Entries already written by an earlier batch while others were
    /// still to come: if one of those is not written, these are taken
    /// back, so a message whose confirm is a nack is in no queue.
    written: Vec<(u32, u64)>,
}

pub(crate) struct Persister {
    db: sled::Db,
    /// Delivered marks (see `record::delivered_key`).
    marks: Tree,
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
    fail_stop: Arc<FailStop>,
    /// Set while writes are stopped after a failure, at the last failure.
    failed_at: Option<Instant>,
    /// Failures with no successful write between them.
    failures_in_a_row: u32,
    /// A delivered mark could not be written (logged once).
    marks_failing: bool,
    /// Messages with an entry that was not written, whose confirms must
    /// be nacks. A message's confirm comes in its entries' batch or a
    /// later one, so this outlives batches (and is forgotten a while after
    /// the last loss).
    lost: std::collections::HashSet<u64>,
    lost_at: Option<Instant>,
    /// Confirms wait for the followers through it (cluster mode).
    files: Recorder,
    /// The journal's commit point of the batch being written.
    commit_at: Option<u64>,
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

/// A new queue entry: (msg_id, flags, expires_at, arrived_s).
type PendingEntry = (u64, u8, u64, u32);

/// One batch's operations, folded so that undone work cancels out.
#[derive(Default)]
struct Batch {
    /// New entries: (queue, seq) → (msg_id, flags, expires_at, arrived_s).
    puts: FastMap<(u32, u64), PendingEntry>,
    /// `puts` in order, once the index is being written.
    sorted_puts: Vec<((u32, u64), PendingEntry)>,
    /// `sorted_puts[..resolved]` took their body reference; of these,
    /// `sorted_puts[..referenced]` are in the index and count on their
    /// segments.
    resolved: usize,
    referenced: usize,
    /// Entries that did not reach the disk, to leave their queues.
    unwritten: Vec<Unwritten>,
    /// Entries written for a message that has more to come: (msg_id,
    /// queue, seq), recorded in `InFlight::written` once the batch is on disk.
    partial: Vec<(u64, u32, u64)>,
    /// Entries earlier batches wrote for messages this batch lost:
    /// (queue, seq, body bytes, msg_id), to be taken back.
    take_back: Vec<Unwritten>,
    /// Existing entries to delete.
    removes: Vec<(u32, u64)>,
    /// Queue ranges to delete, applied before `removes` and `puts`.
    remove_from: Vec<(u32, u64)>,
    marks: FastMap<u32, Option<u64>>,
    /// (channel, confirm seq, msg_id).
    confirms: Vec<(Arc<dyn ConfirmSink>, u64, u64)>,
    loads: Vec<LoadRequest>,
    syncs: Vec<(Vec<u64>, tokio::sync::oneshot::Sender<bool>)>,
    stop: bool,
}

impl Persister {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: sled::Db,
        marks: Tree,
        index: QueueIndexes,
        segments: Segments,
        delivered: HashMap<u32, u64>,
        backlog: Arc<super::Backlog>,
        entries: u64,
        marker: std::path::PathBuf,
        fail_stop: Arc<FailStop>,
        files: Recorder,
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
            fail_stop,
            failed_at: None,
            failures_in_a_row: 0,
            marks_failing: false,
            lost: std::collections::HashSet::new(),
            lost_at: None,
            files,
            commit_at: None,
        }
    }

    // The persister's own thread: waiting for work blocks no tokio worker.
    #[allow(clippy::disallowed_methods)]
    pub(crate) fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(1024);
        loop {
            // While writes are stopped, wake up to resume them even if
            // nothing comes (publishers are blocked meanwhile).
            let retry = self.failed_at.map(|_| RECHECK_WHILE_FAILED);
            let marks = self
                .marks_unflushed
                .map(|since| MARK_FLUSH_INTERVAL.saturating_sub(since.elapsed()));
            let op = match marks.into_iter().chain(retry).min() {
                Some(wait) => match rx.recv_timeout(wait) {
                    Ok(op) => op,
                    Err(RecvTimeoutError::Timeout) => {
                        self.maybe_resume();
                        if self
                            .marks_unflushed
                            .is_some_and(|since| since.elapsed() >= MARK_FLUSH_INTERVAL)
                        {
                            self.flush_marks();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => {
                        self.flush_marks();
                        return;
                    }
                },
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

        self.maybe_resume();
        if self.failed_at.is_some() {
            // Stopped: no new message is written; acknowledgements are.
            self.refuse_puts(&mut b);
        }
        let mut appended = Vec::new();
        let written = self.write_bodies(&mut appended);
        let indexing = Instant::now();
        self.stats.segment_write += indexing - folded;
        let mut released = Vec::new();
        let indexed = match written {
            Ok(()) => self.write_index(&mut b, &mut released),
            Err(e) => Err(e),
        };
        if let Err(e) = &indexed {
            self.fail(e, &mut b, &appended, &mut released);
        }
        if indexed.is_ok() && self.failed_at.is_none() && !appended.is_empty() {
            self.failures_in_a_row = 0;
        }
        self.take_back_lost(&mut b, &mut released);
        for &(_, _, _, msg_id) in &b.unwritten {
            self.lost.insert(msg_id);
            self.lost_at = Some(Instant::now());
        }
        self.fail_stop.forget(std::mem::take(&mut b.unwritten));
        let indexed = indexed.ok();
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
        if self.fail_stop.alarm.is_blocked() {
            self.give_back_current_segment();
        }
        let confirming = Instant::now();
        self.stats.flush += confirming - flushing;
        // A message is durable once its index slots are (and, in a
        // cluster, the in-sync followers' copies): each confirm is an ack
        // unless one of its message's entries was not written.
        let runs = confirm_runs(std::mem::take(&mut b.confirms), &self.lost);
        let syncs: Vec<_> = std::mem::take(&mut b.syncs)
            .into_iter()
            .map(|(msg_ids, done)| (msg_ids.iter().all(|id| !self.lost.contains(id)), done))
            .collect();
        // The followers need this batch's bodies and slots, recorded before
        // the commit point; not the headers and marks written after it.
        let commit_at = self.commit_at.take();
        if !runs.is_empty() || !syncs.is_empty() {
            self.files.after_replicated_at(commit_at, move || {
                for (channel, seq, ok) in runs {
                    channel.confirm_persisted(seq, ok);
                }
                for (ok, done) in syncs {
                    let _ = done.send(ok);
                }
            });
        }
        if self
            .lost_at
            .is_some_and(|at| self.failed_at.is_none() && at.elapsed() >= FORGET_LOST)
        {
            self.lost.clear();
            self.lost_at = None;
        }
        self.stats.confirm += confirming.elapsed();
        self.stats.batches += 1;
        debug!(
            micros = started.elapsed().as_micros() as u64,
            "store batch committed"
        );
        b.stop
    }

    // Runs on the persister thread, which exists to wait for the disk.
    #[allow(clippy::disallowed_methods)]
    fn flush_marks(&mut self) {
        if self.marks_unflushed.take().is_some() {
            if let Err(e) = self.db.flush() {
                self.marks_failed(&e);
            }
        }
    }

    /// Delivered marks only decide the redelivered flag after a crash:
    /// failing to write them is logged once, and the broker goes on.
    fn marks_failed(&mut self, e: &sled::Error) {
        if !self.marks_failing {
            self.marks_failing = true;
            error!(error = %e, "cannot write delivered marks to disk; messages delivered before a crash may come back without the redelivered flag");
        }
    }

    /// A write or fsync failed: stop writing messages (see `fail_stop`).
    /// The batch's entries leave their queues, and any of its index slots
    /// already written are acknowledged again, so a restart does not
    /// bring back a message whose confirm was nacked.
    fn fail(
        &mut self,
        e: &std::io::Error,
        b: &mut Batch,
        appended: &[u64],
        released: &mut Vec<u32>,
    ) {
        if self.failed_at.is_none() {
            error!(error = %e, failures_in_a_row = self.failures_in_a_row + 1, "cannot write messages to disk: publishers are blocked and the confirms of unwritten messages nacked until there is room again");
            self.fail_stop.alarm.set_failed(Some(e.to_string()));
            self.failures_in_a_row += 1;
        }
        self.failed_at = Some(Instant::now());
        self.segments.discard_unwritten();
        // Index slots this batch wrote: acknowledged again, in place (best
        // effort: the disk may refuse this too). Those already counted on
        // their segments give that back.
        let puts = std::mem::take(&mut b.sorted_puts);
        let (referenced, unreferenced) = puts.split_at(b.referenced.min(puts.len()));
        let mut acked = Vec::new();
        self.ack_puts(referenced, &mut acked);
        for at in acked.drain(..) {
            self.removed(at, released);
        }
        self.ack_puts(unreferenced, &mut acked);
        let _ = self.index.sync();
        for &((queue_id, seq), (msg_id, ..)) in puts.iter() {
            let body_len = self.in_flight.get(&msg_id).map_or(0, |f| f.body_len);
            self.lose(msg_id, b);
            b.unwritten.push((queue_id, seq, body_len, msg_id));
        }
        self.refuse_puts(b);
        // Bodies of this batch that some later entry still refers to: that
        // entry will find no body and leave its queue.
        for msg_id in appended {
            self.in_flight.remove(msg_id);
        }
    }

    /// While the disk alarm is on, consumers draining the queues must give
    /// the space back even if the segment being appended to is not full.
    fn give_back_current_segment(&mut self) {
        let current = self.segments.current();
        if self
            .in_flight
            .values()
            .any(|f| f.at.is_some_and(|at| at.segment == current))
        {
            return;
        }
        if let Err(e) = self.segments.give_back_current() {
            debug!(error = %e, "cannot empty the current segment");
        }
    }

    fn ack_puts(&mut self, puts: &[((u32, u64), PendingEntry)], acked: &mut Vec<Location>) {
        let mut seqs = Vec::new();
        for run in puts.chunk_by(|a, b| a.0 .0 == b.0 .0) {
            seqs.clear();
            seqs.extend(run.iter().map(|((_, seq), _)| *seq));
            let _ = self.index.ack(run[0].0 .0, &seqs, acked);
        }
    }

    /// While stopped, new entries are not written: they leave their queues.
    fn refuse_puts(&mut self, b: &mut Batch) {
        for ((queue_id, seq), (msg_id, ..)) in std::mem::take(&mut b.puts) {
            let body_len = self.in_flight.get(&msg_id).map_or(0, |f| f.body_len);
            self.lose(msg_id, b);
            b.unwritten.push((queue_id, seq, body_len, msg_id));
        }
        // Bodies whose entries were all refused are gone from `in_flight`;
        // the rest wait for their entries, which will be refused too.
    }

    /// Writes resume once a while has passed since the last failure and
    /// free space is back above the limit (and at least `ROOM_TO_RESUME`).
    fn maybe_resume(&mut self) {
        let Some(at) = self.failed_at else {
            return;
        };
        let wait = RETRY_AFTER_FAILURE
            .saturating_mul(1 << (self.failures_in_a_row.saturating_sub(1)).min(5))
            .min(MAX_RETRY);
        if at.elapsed() < wait {
            return;
        }
        let alarm = &self.fail_stop.alarm;
        let free = alarm.check();
        if alarm.is_low() || free.is_some_and(|f| f < ROOM_TO_RESUME) {
            return;
        }
        self.failed_at = None;
        self.fail_stop.alarm.set_failed(None);
        info!("writing messages to disk again: free space is above the limit");
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
                        body_len: message.body.len() as u64,
                        message: Some(message),
                        at: None,
                        unresolved: refs,
                        written: Vec::new(),
                    },
                );
            }
            Op::Entry {
                queue_id,
                seq,
                disk,
                expires_at,
                arrived_s,
            } => {
                b.puts.insert(
                    (queue_id, seq),
                    (disk.msg_id, disk.flags, expires_at, arrived_s),
                );
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
                    .map(|(k, (msg_id, ..))| (*k, *msg_id))
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
            Op::Confirm {
                channel,
                seq,
                msg_id,
            } => b.confirms.push((channel, seq, msg_id)),
            Op::Load(load) => b.loads.push(load),
            Op::Sync { msg_ids, done } => b.syncs.push((msg_ids, done)),
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

    /// Appends every body still needed to the segment and fsyncs it;
    /// `appended` gets their ids. While stopped, nothing is written.
    fn write_bodies(&mut self, appended: &mut Vec<u64>) -> std::io::Result<()> {
        if self.failed_at.is_some() {
            return Ok(());
        }
        for (msg_id, f) in self.in_flight.iter_mut() {
            let Some(message) = f.message.take() else {
                continue;
            };
            appended.push(*msg_id);
            f.at = Some(self.segments.append(&message)?);
        }
        self.stats.bodies += appended.len() as u64;
        self.segments.sync()
    }

    /// Applies the batch to the queue indexes (synced) and delivered marks
    /// (not flushed); returns whether a mark changed. Segments that lost a
    /// reference are pushed to `released`.
    fn write_index(&mut self, b: &mut Batch, released: &mut Vec<u32>) -> std::io::Result<bool> {
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
            b.sorted_puts.extend(b.puts.drain());
            b.sorted_puts.sort_unstable_by_key(|(k, _)| *k);
            let puts = &b.sorted_puts;
            let mut run: Vec<Slot> = Vec::new();
            let mut i = 0;
            while i < puts.len() {
                let queue_id = puts[i].0 .0;
                run.clear();
                while i < puts.len() && puts[i].0 .0 == queue_id {
                    let ((_, seq), (msg_id, flags, expires_at, arrived_s)) = puts[i];
                    i += 1;
                    let Some((at, more_to_come)) = self.resolve(msg_id) else {
                        // Its body was lost to an earlier failed write.
                        b.unwritten.push((queue_id, seq, 0, msg_id));
                        continue;
                    };
                    if more_to_come {
                        b.partial.push((msg_id, queue_id, seq));
                    }
                    run.push(Slot {
                        seq,
                        at,
                        flags,
                        expires_at,
                        arrived_s,
                    });
                }
                b.resolved = i;
                self.index.put(queue_id, &run)?;
                for slot in &run {
                    self.segments.reference(slot.at.segment);
                }
                b.referenced = i;
                self.entries += run.len() as u64;
                writes += run.len() as u64;
            }
            // Bodies and slots are written: followers may write and fsync
            // them while this node fsyncs the index.
            self.commit_at = self.files.commit_point();
            self.index.sync()
        })();
        for queue_id in dropped_queues {
            self.index.drop_queue(queue_id);
        }
        self.stats.index_writes += writes;
        result?;
        b.sorted_puts.clear();
        for (msg_id, queue_id, seq) in b.partial.drain(..) {
            if let Some(f) = self.in_flight.get_mut(&msg_id) {
                f.written.push((queue_id, seq));
            }
        }
        let mut marked = false;
        for (queue_id, mark) in std::mem::take(&mut b.marks) {
            let key = record::delivered_key(queue_id);
            let r = match mark {
                Some(seq) => self.marks.insert(key, &seq.to_be_bytes()[..]).map(drop),
                None => self.marks.remove(key).map(drop),
            };
            if let Err(e) = r {
                self.marks_failed(&e);
            }
            marked = true;
        }
        Ok(marked)
    }

    /// The location of a body for one of its entries, settling that
    /// reference, and whether other entries of it are still to come.
    fn resolve(&mut self, msg_id: u64) -> Option<(Location, bool)> {
        let f = self.in_flight.get_mut(&msg_id)?;
        let at = f.at?;
        f.unresolved = f.unresolved.saturating_sub(1);
        if f.unresolved == 0 {
            self.in_flight.remove(&msg_id);
            return Some((at, false));
        }
        Some((at, true))
    }

    /// A message lost an entry, so its confirm will be a nack: it is
    /// forgotten (entries of it still to come find no body), and the
    /// entries earlier batches wrote for it are to be taken back.
    fn lose(&mut self, msg_id: u64, b: &mut Batch) {
        if let Some(f) = self.in_flight.remove(&msg_id) {
            for (queue_id, seq) in f.written {
                b.take_back.push((queue_id, seq, f.body_len, msg_id));
            }
        }
    }

    /// Acknowledges the entries of lost messages that earlier batches
    /// wrote, and has them leave their queues, so a message whose confirm
    /// is a nack is delivered from no queue. Acknowledging twice is
    /// harmless (a slot that is not ready is left alone).
    fn take_back_lost(&mut self, b: &mut Batch, released: &mut Vec<u32>) {
        if b.take_back.is_empty() {
            return;
        }
        let mut acked = Vec::new();
        for (queue_id, seq, body_len, msg_id) in std::mem::take(&mut b.take_back) {
            if let Err(e) = self.index.ack(queue_id, &[seq], &mut acked) {
                error!(error = %e, queue_id, seq, "cannot take back an entry of a message whose confirm is a nack");
            }
            for at in acked.drain(..) {
                self.removed(at, released);
            }
            b.unwritten.push((queue_id, seq, body_len, msg_id));
        }
        if let Err(e) = self.index.sync() {
            error!(error = %e, "cannot take back the entries of messages whose confirms are nacks");
        }
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
            next_arrived_ms: 0,
        };
        let mut bytes = 0usize;
        let mut full = false;
        'chunks: loop {
            let slots = match self.index.read(req.queue_id, loaded.next_from, 256) {
                Ok(slots) => slots,
                Err(e) => {
                    error!(error = %e, queue = %queue.name(), "cannot read a queue index");
                    break;
                }
            };
            if slots.is_empty() {
                break;
            }
            for slot in slots {
                if slot.seq >= req.until {
                    break 'chunks;
                }
                loaded.consumed += 1;
                loaded.next_from = slot.seq + 1;
                let message = match self.segments.read(slot.at) {
                    Ok(m) => m,
                    Err(e) => {
                        error!(queue = %queue.name(), seq = slot.seq, error = %e, "stored message unreadable; skipping it");
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
                    expires_at: NonZeroU64::new(slot.expires_at),
                    returned: 0,
                    arrived_ms: queue_index::arrival_ms(slot.arrived_s),
                });
                if bytes >= req.max_bytes {
                    full = true;
                    break 'chunks;
                }
            }
        }
        if full {
            // The queue's head, should its consumers take all of these
            // before the next read arrives: one slot more, no body.
            if let Ok(next) = self.index.read(req.queue_id, loaded.next_from, 1) {
                if let Some(slot) = next.first().filter(|s| s.seq < req.until) {
                    loaded.next_arrived_ms = queue_index::arrival_ms(slot.arrived_s);
                }
            }
        }
        queue.on_loaded(loaded);
    }
}

/// Tells each channel which of its confirms are acks and which nacks (a
/// message one of whose entries was not written), one call per run of
/// equal outcomes: a channel's confirms come in ascending order.
/// Each channel's confirms as runs of equal outcomes: (channel, up to seq, ack).
fn confirm_runs(
    confirms: Vec<(Arc<dyn ConfirmSink>, u64, u64)>,
    lost: &std::collections::HashSet<u64>,
) -> Vec<(Arc<dyn ConfirmSink>, u64, bool)> {
    // Per channel: the run being collected (last seq, outcome); `done`
    // holds finished runs in the order they must be sent.
    let mut runs: Vec<(Arc<dyn ConfirmSink>, u64, bool)> = Vec::new();
    let mut done = Vec::new();
    for (channel, seq, msg_id) in confirms {
        let ok = lost.is_empty() || !lost.contains(&msg_id);
        match runs
            .iter_mut()
            .find(|r| std::ptr::addr_eq(Arc::as_ptr(&r.0), Arc::as_ptr(&channel)))
        {
            Some(run) if run.2 == ok => run.1 = seq,
            Some(run) => {
                let earlier = (run.0.clone(), run.1, run.2);
                run.1 = seq;
                run.2 = ok;
                done.push(earlier);
            }
            None => runs.push((channel, seq, ok)),
        }
    }
    done.extend(runs);
    done
}

#[cfg(test)]
mod tests {
    use super::super::journal::SledTree;
    use super::*;
    use bytes::Bytes;

    fn persister(name: &str) -> (Persister, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("leveret-persister-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let marks = Tree::new(
            db.open_tree("marks").unwrap(),
            SledTree::Marks,
            Recorder::default(),
        );
        let index_dir = dir.join("queues");
        let (index, _) = QueueIndexes::open(&index_dir, |_, _| true).unwrap();
        for queue_id in [1, 2] {
            super::super::queue_index::create_queue(&index_dir, queue_id, &Recorder::default())
                .unwrap();
        }
        let segments = Segments::open(
            &dir.join("msgs"),
            1 << 20,
            HashMap::new(),
            Recorder::default(),
        )
        .unwrap();
        let config = crate::config::StorageConfig::default();
        let p = Persister::new(
            db,
            marks,
            index,
            segments,
            HashMap::new(),
            Arc::new(super::super::Backlog::new(1 << 30)),
            0,
            dir.join("marker"),
            Arc::new(FailStop::for_dir(&dir, &config)),
            Recorder::default(),
        );
        (p, dir)
    }

    fn entry(queue_id: u32, msg_id: u64) -> Op {
        entry_at(queue_id, 0, msg_id)
    }

    fn entry_at(queue_id: u32, seq: u64, msg_id: u64) -> Op {
        Op::Entry {
            queue_id,
            seq,
            disk: DiskRef { msg_id, flags: 0 },
            expires_at: 0,
            arrived_s: 0,
        }
    }

    /// A persistent message body for `refs` queue entries.
    fn body(p: &Persister, msg_id: u64, refs: u32) -> Op {
        let message = Arc::new(Message::new(
            String::new(),
            "q".into(),
            Bytes::new(),
            Bytes::from(format!("body {msg_id}")),
            true,
        ));
        p.backlog.add(message.size());
        Op::Body {
            msg_id,
            message,
            refs,
        }
    }

    fn seqs(p: &mut Persister, queue_id: u32) -> Vec<u64> {
        let slots = p.index.read(queue_id, 0, 100).unwrap();
        slots.iter().map(|s| s.seq).collect()
    }

    /// Work undone within a batch cancels out: a message published and
    /// acknowledged in the same batch is never written, body or entry.
    #[test]
    fn a_batch_folds_away_what_it_undoes() {
        let (mut p, dir) = persister("fold");
        let mut ops = vec![
            body(&p, 1, 1),
            entry_at(1, 0, 1),
            body(&p, 2, 1),
            entry_at(1, 1, 2),
            Op::Remove {
                queue_id: 1,
                seq: 0,
                msg_id: 1,
            },
        ];
        p.commit(&mut ops);
        assert_eq!(seqs(&mut p, 1), [1], "only the message still queued");
        assert_eq!(p.stats.bodies, 1, "the acknowledged body was never written");
        assert!(p.in_flight.is_empty());
        // A purge cancels the entries queued before it in its batch and
        // acknowledges those already written.
        let mut ops = vec![
            body(&p, 3, 1),
            entry_at(1, 2, 3),
            Op::RemoveFrom {
                queue_id: 1,
                from: 0,
            },
            body(&p, 4, 1),
            entry_at(2, 0, 4),
        ];
        p.commit(&mut ops);
        assert!(seqs(&mut p, 1).is_empty(), "purged, written or not");
        assert_eq!(seqs(&mut p, 2), [0], "another queue is untouched");
        assert_eq!(p.stats.bodies, 2, "only the other queue's body was written");
        assert!(p.in_flight.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A message routed to several queues is written once and referenced
    /// by each entry, also when its entries arrive in different batches.
    #[test]
    fn a_body_is_written_once_for_all_its_entries() {
        let (mut p, dir) = persister("shared-body");
        p.commit(&mut vec![body(&p, 9, 2), entry(1, 9)]);
        assert_eq!(p.in_flight.len(), 1, "one entry still to come");
        p.commit(&mut vec![entry(2, 9)]);
        assert!(p.in_flight.is_empty());
        assert_eq!(p.stats.bodies, 1);
        let (a, b) = (
            p.index.read(1, 0, 1).unwrap(),
            p.index.read(2, 0, 1).unwrap(),
        );
        assert_eq!(a[0].at, b[0].at, "both entries point at the one body");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A message routed to two durable queues whose entries land in two
    /// batches, the first written and the second not: its confirm is a
    /// nack, so the first queue's entry is taken back too.
    #[test]
    fn a_message_that_loses_one_entry_loses_them_all() {
        let (mut p, dir) = persister("straddle");
        let message = Arc::new(Message::new(
            String::new(),
            "q".into(),
            Bytes::new(),
            Bytes::from_static(b"body"),
            true,
        ));
        p.backlog.add(message.size());
        let body = Op::Body {
            msg_id: 7,
            message,
            refs: 2,
        };
        p.commit(&mut vec![body, entry(1, 7)]);
        assert_eq!(
            p.index.read(1, 0, 10).unwrap().len(),
            1,
            "first entry written"
        );
        // The disk fails before the second entry's batch.
        p.failed_at = Some(Instant::now());
        p.commit(&mut vec![entry(2, 7)]);
        assert!(p.lost.contains(&7), "the message's confirm is a nack");
        assert!(p.index.read(2, 0, 10).unwrap().is_empty());
        assert!(
            p.index.read(1, 0, 10).unwrap().is_empty(),
            "the written entry of a nacked message was taken back"
        );
        assert!(p.in_flight.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
