//! Where queues keep their messages, and the durable store behind them.
//!
//! A queue talks to its messages only through [`QueueStore`]: non-durable
//! queues use [`memory::MemoryStore`], durable ones [`durable::DurableStore`],
//! which keeps a bounded window in memory and the rest on disk. Everything
//! on disk goes through [`Store`]: topology records are written (and
//! flushed) to sled directly; message bodies (segment files), queue index
//! slots (slot files) and delivered marks (sled) are written by the
//! persister thread.

mod data_dir;
pub(crate) mod disk_alarm;
pub(crate) mod durable;
pub(crate) mod fail_stop;
pub(crate) mod journal;
pub(crate) mod memory;
pub(crate) mod meta_writer;
pub(crate) mod persister;
pub(crate) mod priority;
pub(crate) mod queue_index;
pub(crate) mod record;
mod recovery;
pub(crate) mod segments;
pub(crate) mod stream_log;
pub(crate) mod stream_offsets;
pub(crate) mod stream_writer;

use crate::message::Message;
use persister::{Loaded, Op};
use record::{BindingRecord, ExchangeRecord, QueueRecord};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::Notify;

pub use recovery::Recovered;
pub(crate) use recovery::{RecoveredQueue, SLED_LOG};

/// Memory a queued message costs beyond its bytes (struct, `Arc`, deque
/// slot), counted against a queue's in-memory window.
pub(crate) const MESSAGE_OVERHEAD: usize = 128;

/// What the store tells a queue it keeps messages for (the broker's
/// `Queue` implements it), so the store does not depend on the broker.
pub(crate) trait QueueEvents: Send + Sync {
    /// The queue's name, for log lines.
    fn name(&self) -> &str;
    /// Messages read back from disk, as a `LoadRequest` asked.
    fn on_loaded(self: Arc<Self>, loaded: persister::Loaded);
    /// Messages that did not reach the disk leave the queue.
    fn forget_unwritten(&self, unwritten: &[fail_stop::Unwritten]);
}

/// Where publisher confirms go once their messages are on disk (a
/// channel, or an HTTP publish waiting for its one message).
pub(crate) trait ConfirmSink: Send + Sync {
    /// Every confirm up to `seq` still pending: its message is on disk
    /// (`ok`), or one of its entries was not written (a nack).
    fn confirm_persisted(&self, seq: u64, ok: bool);
}

/// Where a message sits on disk for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiskRef {
    pub(crate) msg_id: u64,
    /// [`record::TRANSIENT`].
    pub(crate) flags: u8,
}

/// A message waiting in a queue. `seq` orders the queue: requeued messages
/// go back to their original position.
#[derive(Debug, Clone)]
pub(crate) struct QueuedMessage {
    pub(crate) seq: u64,
    pub(crate) message: Arc<Message>,
    pub(crate) redelivered: bool,
    /// Set when this queue's entry for the message is on disk.
    pub(crate) disk: Option<DiskRef>,
    /// When the message expires (ms since the Unix epoch), from the queue's
    /// x-message-ttl or the message's expiration. (Non-zero: the niche keeps
    /// this struct at 64 bytes; 0 means "never" on disk anyway.)
    pub(crate) expires_at: Option<NonZeroU64>,
    /// Times it was delivered and came back (x-delivery-limit). Kept in
    /// memory only: a restart starts counting again.
    pub(crate) returned: u32,
    /// When the message entered this queue (ms since the Unix epoch; 0:
    /// unknown, as for messages written before arrivals were kept). Kept
    /// across requeues; on disk in whole seconds (see `queue_index`).
    pub(crate) arrived_ms: u64,
}

// One slot of every queue's deque per ready message: keep it small.
const _: () = assert!(std::mem::size_of::<QueuedMessage>() <= 64);

/// What a queue remembers of a delivered message to settle it later.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Receipt {
    pub(crate) seq: u64,
    pub(crate) disk: Option<DiskRef>,
    pub(crate) redelivered: bool,
    /// Body bytes, and whether the message is persistent, for the
    /// queue's counts of unacknowledged messages.
    pub(crate) body_len: usize,
    pub(crate) persistent: bool,
}

impl QueuedMessage {
    pub(crate) fn new(seq: u64, message: Arc<Message>) -> QueuedMessage {
        QueuedMessage {
            seq,
            message,
            redelivered: false,
            disk: None,
            expires_at: None,
            returned: 0,
            arrived_ms: 0,
        }
    }

    pub(crate) fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| at.get() <= now)
    }

    /// When it entered this queue (ms since the epoch), if known.
    pub(crate) fn arrived(&self) -> Option<u64> {
        (self.arrived_ms != 0).then_some(self.arrived_ms)
    }

    pub(crate) fn receipt(&self) -> Receipt {
        Receipt {
            seq: self.seq,
            disk: self.disk,
            redelivered: self.redelivered,
            body_len: self.message.body.len(),
            persistent: self.message.persistent,
        }
    }
}

/// Persistent messages among a store's ready ones (kept by stores of
/// durable queues: elsewhere RabbitMQ counts none), beside `body_bytes`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Persistent {
    pub(crate) messages: usize,
    pub(crate) bytes: u64,
}

impl Persistent {
    pub(crate) fn add(&mut self, m: &Message) {
        if m.persistent {
            self.messages += 1;
            self.bytes += m.body.len() as u64;
        }
    }

    pub(crate) fn sub(&mut self, m: &Message) {
        if m.persistent {
            self.messages = self.messages.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(m.body.len() as u64);
        }
    }
}

/// The ready messages of one queue, in `seq` order.
pub(crate) trait QueueStore: Send {
    /// Appends a newly published message (its `seq` is the highest yet).
    fn push(&mut self, msg: QueuedMessage);
    /// Puts back a message that was delivered and not acknowledged.
    fn requeue(&mut self, msg: QueuedMessage);
    fn pop(&mut self) -> Option<QueuedMessage>;
    /// Returns a message taken by `pop` that could not be delivered.
    fn unpop(&mut self, msg: QueuedMessage);
    /// Ready messages, in memory or not.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Body and property bytes of the ready messages held in memory.
    fn bytes(&self) -> usize;
    /// Body bytes of all ready messages (x-max-length-bytes counts these).
    fn body_bytes(&self) -> u64;
    /// Drops every ready message, returning how many there were.
    fn purge(&mut self) -> usize;
    /// Ready messages held in memory.
    fn in_memory(&self) -> usize {
        self.len()
    }
    /// Persistent ready messages (durable queues only).
    fn persistent(&self) -> Persistent {
        Persistent::default()
    }
    /// The next message to deliver, when it is in memory.
    fn head(&self) -> Option<&QueuedMessage> {
        None
    }
    /// When the next message to deliver entered the queue (ms since the
    /// epoch), in memory or not; None when empty or not known.
    fn head_arrived(&self) -> Option<u64> {
        self.head().and_then(QueuedMessage::arrived)
    }
    /// A popped message went to a consumer; with `no_ack` it is gone.
    fn delivered(&mut self, _receipt: Receipt, _no_ack: bool) {}
    /// A delivered message was acknowledged (or rejected without requeue).
    fn acked(&mut self, _receipt: Receipt) {}
    /// A message could not be added (the queue is gone).
    fn refused(&mut self, _message: &Message) {}
    /// The queue is deleted: forget everything, on disk too.
    fn delete(&mut self) {}
    /// Messages read back from disk.
    fn loaded(&mut self, _loaded: Loaded) {}
    /// From now on keep every message in memory (a length limit was set
    /// by a policy: the oldest must be droppable at once).
    fn keep_in_memory(&mut self) {}
    /// True while ready messages exist only on disk and are being read back.
    fn awaiting_disk(&self) -> bool {
        false
    }
    /// Persistent messages are refused (the store stopped writing after a
    /// failure: see `fail_stop`).
    fn refuses_persistent(&self) -> bool {
        false
    }
    /// Drops ready messages whose entries did not reach the disk (one
    /// queue's, seqs ascending); returns how many.
    fn forget_unwritten(&mut self, _unwritten: &[fail_stop::Unwritten]) -> usize {
        0
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the store in {path} is damaged ({detail}); refusing to start so nothing is lost. Restore it from a backup or move it aside")]
    Damaged { path: PathBuf, detail: String },
    #[error("the store in {path} was written by an incompatible version (format {found:?}, expected {expected:?}); refusing to start")]
    Incompatible {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

/// Damage found at start-up: which queue lost how many messages, in which
/// file, and why. Refused by default; kept and reported (log, health check,
/// metrics) when `storage.on_damage = "report"` lets the broker start.
#[derive(Debug, Clone)]
pub(crate) struct Damage {
    pub(crate) vhost: String,
    pub(crate) queue: String,
    pub(crate) path: PathBuf,
    pub(crate) problem: String,
    /// Messages lost, at most (a slot acknowledged before it was damaged
    /// cannot be told apart from a ready one); None: no way to tell.
    pub(crate) lost: Option<u64>,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (queue '{}' in vhost '{}'",
            self.path.display(),
            self.problem,
            self.queue,
            self.vhost
        )?;
        match self.lost {
            Some(0) => {}
            Some(n) => write!(f, ", up to {n} messages lost")?,
            None => write!(f, ", its messages lost")?,
        }
        write!(f, ")")
    }
}

/// Bytes of message bodies handed to the persister, or to the stream writer,
/// and not yet taken into a batch. Publishers stop being read above the
/// limit, so a disk slower than the network cannot make the broker buffer
/// without bound.
pub(crate) struct Backlog {
    bytes: AtomicUsize,
    limit: usize,
    over: AtomicBool,
    drained: Notify,
}

impl Backlog {
    pub(crate) fn new(limit: usize) -> Backlog {
        Backlog {
            bytes: AtomicUsize::new(0),
            limit,
            over: AtomicBool::new(false),
            drained: Notify::new(),
        }
    }

    pub(crate) fn add(&self, n: usize) {
        let now = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if now > self.limit {
            self.over.store(true, Ordering::Release);
        }
    }

    pub(crate) fn sub(&self, n: usize) {
        let now = self.bytes.fetch_sub(n, Ordering::Relaxed) - n;
        if now <= self.limit / 2 && self.over.swap(false, Ordering::AcqRel) {
            self.drained.notify_waiters();
        }
    }

    pub(crate) fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Waits until the persister has caught up below half the limit.
    pub(crate) async fn wait_drained(&self) {
        loop {
            let notified = self.drained.notified();
            if !self.is_over() {
                return;
            }
            notified.await;
        }
    }
}

/// The durable store: topology in sled, messages through the persister thread.
pub struct Store {
    path: PathBuf,
    persister: Sender<Op>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    next_msg_id: AtomicU64,
    next_queue_id: AtomicU32,
    pub(crate) backlog: Arc<Backlog>,
    /// Bytes of a durable queue's ready messages kept in memory.
    pub(crate) queue_window: usize,
    /// The disk alarm, and what a failed write does.
    pub(crate) fail_stop: Arc<fail_stop::FailStop>,
    /// Writes topology and access changes (and flushes them) on its own thread.
    pub(crate) meta_writer: meta_writer::MetaWriter,
    /// What start-up found damaged and started anyway with.
    pub(crate) damage: Vec<Damage>,
    /// Writes the store's files (and records them for followers).
    pub(crate) files: journal::Recorder,
    /// The sled trees, for a follower's full copy.
    pub(crate) trees: Vec<(journal::SledTree, sled::Tree)>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and reads back what it holds.
    pub fn open(
        dir: &Path,
        config: &crate::config::StorageConfig,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        Store::open_replicated(dir, config, None)
    }

    /// As `open`, recording every change in `journal` for followers.
    pub(crate) fn open_replicated(
        dir: &Path,
        config: &crate::config::StorageConfig,
        journal: Option<Arc<journal::Journal>>,
    ) -> Result<(Arc<Store>, Recovered), StoreError> {
        data_dir::prepare(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        disk_alarm::release_reserve_if_short(dir);
        let (store, recovered) = recovery::open(dir, config, journal::Recorder::new(journal))?;
        let alarm = &store.fail_stop.alarm;
        alarm.check();
        disk_alarm::DiskAlarm::start_monitor(Arc::downgrade(alarm));
        Ok((store, recovered))
    }

    /// The disk alarm: free space below the limit, or a failed write.
    #[inline]
    pub(crate) fn disk_alarm(&self) -> &disk_alarm::DiskAlarm {
        &self.fail_stop.alarm
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, op: Op) {
        // After shutdown the persister is gone and nothing more is written.
        let _ = self.persister.send(op);
    }

    /// Writes a message body referenced by `refs` durable queues; sets the
    /// message's stored id so each queue writes its entry.
    pub(crate) fn store_message(&self, message: &Arc<Message>, refs: u32) {
        let msg_id = self.next_msg_id.fetch_add(1, Ordering::Relaxed);
        message.set_stored(msg_id);
        self.backlog.add(message.size());
        self.send(Op::Body {
            msg_id,
            message: message.clone(),
            refs,
        });
    }

    /// Writes a private copy of a transient message being paged out.
    fn store_transient(&self, message: &Arc<Message>) -> DiskRef {
        let msg_id = self.next_msg_id.fetch_add(1, Ordering::Relaxed);
        self.backlog.add(message.size());
        self.send(Op::Body {
            msg_id,
            message: message.clone(),
            refs: 1,
        });
        DiskRef {
            msg_id,
            flags: record::TRANSIENT,
        }
    }

    /// Records that `msg` sits in queue `queue_id`, its body at `disk`.
    fn write_entry(&self, queue_id: u32, msg: &QueuedMessage, disk: DiskRef) {
        self.send(Op::Entry {
            queue_id,
            seq: msg.seq,
            disk,
            expires_at: msg.expires_at.map_or(0, NonZeroU64::get),
            arrived_s: queue_index::arrival_seconds(msg.arrived_ms),
        });
    }

    /// The message at `seq` left queue `queue_id`.
    fn remove_entry(&self, queue_id: u32, seq: u64, disk: DiskRef) {
        self.send(Op::Remove {
            queue_id,
            seq,
            msg_id: disk.msg_id,
        });
    }

    /// A durable queue refused a message stored for it: its reference goes.
    fn release_refused(&self, message: &Message) {
        if let (Some(msg_id), true) = (message.stored(), message.persistent) {
            self.send(Op::Release { msg_id });
        }
    }

    /// Publisher confirm `seq` on `channel` is sent once the writes queued
    /// so far are on disk: an ack, or a nack if `message` was not written.
    pub(crate) fn confirm_when_written(
        &self,
        channel: Arc<dyn ConfirmSink>,
        seq: u64,
        message: &Message,
    ) {
        self.send(Op::Confirm {
            channel,
            seq,
            msg_id: message.stored().unwrap_or(0),
        });
    }

    /// Completes once everything queued so far is on disk (transaction
    /// commits): true when each message of `msg_ids` was written, false
    /// when one was not (fail-stop) or the store is gone.
    pub(crate) fn written(&self, msg_ids: Vec<u64>) -> impl std::future::Future<Output = bool> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.send(Op::Sync { msg_ids, done });
        async move { answer.await.unwrap_or(false) }
    }

    /// Topology and access writes queued so far (a mark for
    /// `meta_durable_since`).
    pub(crate) fn meta_queued(&self) -> u64 {
        self.meta_writer.queued()
    }

    /// When topology or access writes were queued since `mark`: completes
    /// once they are durable, with an error if one could not be written.
    pub(crate) fn meta_durable_since(
        &self,
        mark: u64,
    ) -> Option<impl std::future::Future<Output = Result<(), String>> + Send + 'static> {
        self.meta_writer.durable_since(mark)
    }

    pub(crate) fn next_queue_id(&self) -> u32 {
        self.next_queue_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn put_exchange(&self, r: &ExchangeRecord) {
        let (key, value) = (r.key(), r.encode());
        self.write_meta(move |meta| meta.insert(key, value).map(drop));
    }

    pub(crate) fn delete_exchange(&self, vhost: &str, name: &str) {
        let key = ExchangeRecord::key_for(vhost, name);
        let (vhost, name) = (vhost.to_string(), name.to_string());
        self.write_meta(move |meta| {
            meta.remove(key)?;
            remove_bindings(meta, |b| {
                b.vhost == vhost && (b.source == name || (b.to_exchange && b.destination == name))
            })
        });
    }

    pub(crate) fn put_queue(&self, r: &QueueRecord) {
        let (id, key, value) = (r.id, r.key(), r.encode());
        self.meta_writer.write(Box::new(move |trees| {
            // Its index directory first: a stored queue without one is damage.
            let queues = trees.path.join(recovery::QUEUE_DIR);
            queue_index::create_queue(&queues, id, &trees.files)
                .map_err(|e| format!("cannot create a queue index in {}: {e}", queues.display()))?;
            trees
                .meta
                .insert(key, value)
                .map(drop)
                .map_err(|e| e.to_string())
        }));
    }

    /// Forgets a queue: its record, its bindings, and every message entry.
    pub(crate) fn delete_queue(&self, vhost: &str, name: &str, queue_id: u32) {
        self.send(Op::RemoveFrom { queue_id, from: 0 });
        let key = QueueRecord::key_for(vhost, name);
        let (vhost, name) = (vhost.to_string(), name.to_string());
        self.write_meta(move |meta| {
            meta.remove(key)?;
            remove_bindings(meta, |b| {
                b.vhost == vhost && !b.to_exchange && b.destination == name
            })
        });
    }

    pub(crate) fn put_binding(&self, r: &BindingRecord) {
        let (key, value) = (r.key(), r.encode());
        self.write_meta(move |meta| meta.insert(key, value).map(drop));
    }

    pub(crate) fn delete_binding(&self, r: &BindingRecord) {
        let key = r.key();
        self.write_meta(move |meta| meta.remove(key).map(drop));
    }

    /// Writes (or with `None` removes) one access-control record. Like
    /// topology changes it is written and flushed on the metadata writer's
    /// thread; whoever promises it durable awaits `meta_durable_since`.
    pub fn put_access(&self, key: &[u8], value: Option<&[u8]>) {
        let (key, value) = (key.to_vec(), value.map(<[u8]>::to_vec));
        self.meta_writer.write(Box::new(move |trees| {
            match value {
                Some(v) => trees.access.insert(key, v).map(drop),
                None => trees.access.remove(key).map(drop),
            }
            .map_err(|e| e.to_string())
        }));
    }

    /// Queues a topology change; declare-ok / bind-ok wait for its flush
    /// (see `meta_writer`), as RabbitMQ's wait for its own.
    fn write_meta(&self, change: impl FnOnce(&journal::Tree) -> sled::Result<()> + Send + 'static) {
        self.meta_writer.write(Box::new(move |trees| {
            change(&trees.meta).map_err(|e| e.to_string())
        }));
    }

    /// Finishes queued writes, flushes, and stops the persister.
    pub fn close(&self) {
        self.meta_writer.close();
        self.send(Op::Stop);
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

fn remove_bindings(
    meta: &journal::Tree,
    matches: impl Fn(&BindingRecord) -> bool,
) -> sled::Result<()> {
    for item in meta.scan_prefix(b"b") {
        let (key, value) = item?;
        if BindingRecord::decode(&value).is_some_and(|b| matches(&b)) {
            meta.remove(key)?;
        }
    }
    Ok(())
}
