//! The persister: one thread that owns every write to the `messages` tree.
//!
//! Group commit: it blocks for the first operation, takes everything queued
//! behind it, applies one atomic sled batch, flushes once, and then releases
//! the publisher confirms the batch covered. There is no timer: under load
//! the next batch has grown while the previous flush ran; when idle a
//! confirm waits for exactly one flush.
//!
//! Within a batch, writes that are undone before they reach disk cancel out:
//! a message published and acknowledged in the same batch is never written.

use super::record;
use super::{DiskRef, QueuedMessage};
use crate::broker::message::Message;
use crate::broker::queue::Queue;
use crate::channel::shared::ChannelShared;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, error, info};

/// Most operations taken into one batch, so a flood cannot grow a batch
/// (and the memory it pins) without bound.
const MAX_BATCH_OPS: usize = 16 * 1024;

pub enum Op {
    /// A message body, referenced by `refs` queue entries that follow.
    Body {
        msg_id: u64,
        message: Arc<Message>,
        refs: u32,
    },
    /// A message now sits in a queue.
    Entry {
        queue_id: u32,
        seq: u64,
        disk: DiskRef,
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
    /// Every entry of a queue from `from` on (purge of paged-out messages, queue deletion).
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

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Entry(u32, u64),
    Body(u64),
    Delivered(u32),
}

enum Value {
    Entry(u64, u8),
    Body(Arc<Message>),
    Delivered(u64),
}

enum Pending {
    /// `fresh`: the key is new in this batch, so deleting it means never writing it.
    Put {
        value: Value,
        fresh: bool,
    },
    Delete,
}

pub struct Persister {
    messages: sled::Tree,
    db: sled::Db,
    /// Remaining references of bodies shared by several queue entries;
    /// bodies referenced once are not tracked.
    shared_refs: HashMap<u64, u32>,
    /// Per queue, the seq below which every message was delivered (see
    /// `record::delivered_key`).
    delivered: HashMap<u32, u64>,
    backlog: Arc<super::Backlog>,
    /// Queue entries on disk, written to the clean-shutdown marker so the
    /// next start can tell a damaged store from a complete one.
    entries: u64,
    marker: std::path::PathBuf,
    stats: Stats,
}

/// Where the persister's time goes, logged when it stops.
#[derive(Default)]
struct Stats {
    batches: u64,
    ops: u64,
    writes: u64,
    flushes: u64,
    /// Folding operations into the pending map (cancellations included).
    sort: Duration,
    /// Building the sled batch: keys and message records.
    encode: Duration,
    /// sled's apply_batch: its index and log buffers.
    apply: Duration,
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
            writes = self.writes,
            flushes = self.flushes,
            sort_ms = ms(self.sort),
            encode_ms = ms(self.encode),
            apply_ms = ms(self.apply),
            load_ms = ms(self.load),
            flush_ms = ms(self.flush),
            confirm_ms = ms(self.confirm),
            "persister totals"
        );
    }
}

impl Persister {
    pub fn new(
        db: sled::Db,
        messages: sled::Tree,
        shared_refs: HashMap<u64, u32>,
        delivered: HashMap<u32, u64>,
        backlog: Arc<super::Backlog>,
        entries: u64,
        marker: std::path::PathBuf,
    ) -> Persister {
        Persister {
            messages,
            db,
            shared_refs,
            delivered,
            backlog,
            entries,
            marker,
            stats: Stats::default(),
        }
    }

    pub fn run(mut self, rx: Receiver<Op>) {
        let mut ops = Vec::with_capacity(1024);
        loop {
            match rx.recv() {
                Ok(op) => ops.push(op),
                Err(_) => return,
            }
            while ops.len() < MAX_BATCH_OPS {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if self.commit(&mut ops) {
                self.write_marker();
                self.stats.log();
                return;
            }
        }
    }

    /// Applies one batch; returns true when asked to stop.
    fn commit(&mut self, ops: &mut Vec<Op>) -> bool {
        let started = Instant::now();
        let count = ops.len();
        let mut pending: HashMap<Key, Pending> = HashMap::with_capacity(ops.len());
        let mut confirms: Vec<(Arc<ChannelShared>, u64)> = Vec::new();
        let mut loads = Vec::new();
        let mut syncs = Vec::new();
        let mut stop = false;
        for op in ops.drain(..) {
            match op {
                Op::Body {
                    msg_id,
                    message,
                    refs,
                } => {
                    self.backlog.sub(message.size());
                    if refs > 1 {
                        self.shared_refs.insert(msg_id, refs);
                    }
                    pending.insert(
                        Key::Body(msg_id),
                        Pending::Put {
                            value: Value::Body(message),
                            fresh: true,
                        },
                    );
                }
                Op::Entry {
                    queue_id,
                    seq,
                    disk,
                } => {
                    pending.insert(
                        Key::Entry(queue_id, seq),
                        Pending::Put {
                            value: Value::Entry(disk.msg_id, disk.flags),
                            fresh: true,
                        },
                    );
                }
                Op::Delivered { queue_id, seq } => {
                    let mark = self.delivered.entry(queue_id).or_default();
                    if seq + 1 > *mark {
                        *mark = seq + 1;
                        pending.insert(
                            Key::Delivered(queue_id),
                            Pending::Put {
                                value: Value::Delivered(seq + 1),
                                fresh: false,
                            },
                        );
                    }
                }
                Op::Remove {
                    queue_id,
                    seq,
                    msg_id,
                } => {
                    delete(&mut pending, Key::Entry(queue_id, seq));
                    self.release(&mut pending, msg_id);
                }
                Op::Release { msg_id } => self.release(&mut pending, msg_id),
                Op::RemoveFrom { queue_id, from } => self.remove_from(&mut pending, queue_id, from),
                Op::Confirm { channel, seq } => confirms.push((channel, seq)),
                Op::Load(load) => loads.push(load),
                Op::Sync(done) => syncs.push(done),
                Op::Stop => stop = true,
            }
        }
        let writes = pending.len();
        let mut ok = true;
        let sorted = Instant::now();
        self.stats.sort += sorted - started;
        if writes > 0 {
            let mut batch = sled::Batch::default();
            let mut entries = self.entries as i64;
            for (key, p) in pending {
                match (&key, &p) {
                    (Key::Entry(..), Pending::Put { fresh: true, .. }) => entries += 1,
                    (Key::Entry(..), Pending::Delete) => entries -= 1,
                    _ => {}
                }
                let key: Vec<u8> = match key {
                    Key::Entry(q, s) => record::entry_key(q, s).to_vec(),
                    Key::Body(id) => record::body_key(id).to_vec(),
                    Key::Delivered(q) => record::delivered_key(q).to_vec(),
                };
                match p {
                    Pending::Put {
                        value: Value::Entry(id, flags),
                        ..
                    } => batch.insert(key, &record::entry_value(id, flags)[..]),
                    Pending::Put {
                        value: Value::Body(m),
                        ..
                    } => batch.insert(key, record::encode_message(&m)),
                    Pending::Put {
                        value: Value::Delivered(seq),
                        ..
                    } => batch.insert(key, &seq.to_be_bytes()[..]),
                    Pending::Delete => batch.remove(key),
                }
            }
            let encoded = Instant::now();
            self.stats.encode += encoded - sorted;
            if let Err(e) = self.messages.apply_batch(batch) {
                error!(error = %e, "cannot write messages to the store");
                ok = false;
            } else {
                self.entries = entries.max(0) as u64;
            }
            self.stats.apply += encoded.elapsed();
        }
        // Reads see the batch just applied; serve them before the flush so
        // consumers do not wait on the disk.
        let loading = Instant::now();
        for load in loads {
            self.load(load);
        }
        let flushing = Instant::now();
        self.stats.load += flushing - loading;
        if ok && (writes > 0 || !syncs.is_empty()) {
            if let Err(e) = self.db.flush() {
                error!(error = %e, "cannot flush the store to disk");
                ok = false;
            }
            self.stats.flushes += 1;
        }
        let confirming = Instant::now();
        self.stats.flush += confirming - flushing;
        confirm(confirms, ok);
        self.stats.confirm += confirming.elapsed();
        self.stats.batches += 1;
        self.stats.ops += count as u64;
        self.stats.writes += writes as u64;
        for done in syncs {
            let _ = done.send(());
        }
        debug!(
            ops = count,
            writes,
            micros = started.elapsed().as_micros() as u64,
            "store batch committed"
        );
        stop
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

    /// Drops one reference to a body, deleting it with the last.
    fn release(&mut self, pending: &mut HashMap<Key, Pending>, msg_id: u64) {
        if let Some(refs) = self.shared_refs.get_mut(&msg_id) {
            *refs -= 1;
            if *refs > 0 {
                return;
            }
            self.shared_refs.remove(&msg_id);
        }
        delete(pending, Key::Body(msg_id));
    }

    fn remove_from(&mut self, pending: &mut HashMap<Key, Pending>, queue_id: u32, from: u64) {
        if from == 0 && self.delivered.remove(&queue_id).is_some() {
            // The queue is gone.
            pending.insert(Key::Delivered(queue_id), Pending::Delete);
        }
        let in_batch: Vec<(Key, Option<u64>)> = pending
            .iter()
            .filter_map(|(k, p)| match (k, p) {
                (Key::Entry(q, s), p) if *q == queue_id && *s >= from => Some((
                    *k,
                    match p {
                        Pending::Put {
                            value: Value::Entry(id, _),
                            ..
                        } => Some(*id),
                        _ => None,
                    },
                )),
                _ => None,
            })
            .collect();
        for (key, msg_id) in in_batch {
            if let Some(id) = msg_id {
                delete(pending, key);
                self.release(pending, id);
            }
        }
        let (start, end) = record::entry_range(queue_id, from);
        for item in self.messages.range(start..end) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    error!(error = %e, queue_id, "cannot read queue entries to remove them");
                    return;
                }
            };
            let (Some((q, s)), Some((msg_id, _))) =
                (record::parse_entry_key(&k), record::parse_entry_value(&v))
            else {
                continue;
            };
            let key = Key::Entry(q, s);
            if pending.contains_key(&key) {
                continue; // handled above
            }
            pending.insert(key, Pending::Delete);
            self.release(pending, msg_id);
        }
    }

    fn load(&self, req: LoadRequest) {
        let Some(queue) = req.queue.upgrade() else {
            return;
        };
        let delivered = self.delivered.get(&req.queue_id).copied();
        let (start, end) = record::entry_range(req.queue_id, req.from);
        let mut loaded = Loaded {
            generation: req.generation,
            messages: Vec::new(),
            consumed: 0,
            next_from: req.from,
        };
        let mut bytes = 0usize;
        for item in self.messages.range(start..end) {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    error!(error = %e, queue = %queue.name, "cannot read paged-out messages");
                    break;
                }
            };
            let (Some((_, seq)), Some((msg_id, flags))) =
                (record::parse_entry_key(&k), record::parse_entry_value(&v))
            else {
                continue;
            };
            loaded.consumed += 1;
            loaded.next_from = seq + 1;
            let body = self.messages.get(record::body_key(msg_id));
            let Some(message) = body
                .ok()
                .flatten()
                .and_then(|raw| record::decode_message(&raw))
            else {
                error!(queue = %queue.name, seq, msg_id, "stored message is missing or unreadable; skipping it");
                continue;
            };
            message.set_stored(msg_id, flags & record::SHARED != 0);
            bytes += message.size() + super::MESSAGE_OVERHEAD;
            loaded.messages.push(QueuedMessage {
                seq,
                message: Arc::new(message),
                redelivered: delivered.is_some_and(|mark| seq < mark),
                disk: Some(DiskRef { msg_id, flags }),
            });
            if bytes >= req.max_bytes {
                break;
            }
        }
        queue.on_loaded(loaded);
    }
}

fn delete(pending: &mut HashMap<Key, Pending>, key: Key) {
    match pending.get(&key) {
        Some(Pending::Put { fresh: true, .. }) => {
            pending.remove(&key);
        }
        Some(Pending::Delete) => {}
        _ => {
            pending.insert(key, Pending::Delete);
        }
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
