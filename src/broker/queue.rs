//! A queue: ready messages, consumers, and round-robin delivery.
//!
//! Its state sits behind one short synchronous lock taken directly by the
//! connection tasks that publish, consume and acknowledge; nothing awaits or
//! does I/O while holding it.

use super::consumer::Consumer;
use super::dead_letter::{with_delivery_count, DeadLetter, DeadLetters, Reason};
use super::flow::FlowLimits;
use super::memory::MemoryGauge;
use super::policy::{effective_queue_args, effective_stream_args, Applied};
use super::queue_args::{Overflow, QueueArgs, QueueType};
use super::queue_stats::QueueStats;
use super::stream::StreamQueue;
use super::stream_consume::{ReadSpec, StartAt};
use super::timers::{coarse_now_ms, now_ms, Timers};
use crate::error::AmqpError;
use crate::message::Message;
use crate::store::durable::DurableStore;
use crate::store::fail_stop::Unwritten;
use crate::store::memory::MemoryStore;
use crate::store::persister::Loaded;
use crate::store::priority::{PriorityDisk, PriorityStore};
use crate::store::{QueueEvents, QueueStore, QueuedMessage, Receipt, Store, MESSAGE_OVERHEAD};
use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// `Queue::consumer_timeout` when there is none.
const NO_TIMEOUT: u64 = u64::MAX;

/// How long basic.get waits for paged-out messages to be read back.
pub(crate) const GET_DISK_WAIT: Duration = Duration::from_secs(5);

/// What basic.get found.
pub(crate) enum Got {
    /// The message taken, and how many remain ready.
    Message(QueuedMessage, usize),
    Empty,
    /// Ready messages are on disk being read back: ask again once
    /// `Queue::disk_loaded` completes.
    Loading,
}

/// What every queue of the broker shares.
#[derive(Clone)]
pub(crate) struct QueueServices {
    pub(crate) memory: Arc<MemoryGauge>,
    /// Queues declared, created and deleted.
    pub(crate) counters: Arc<super::counters::Counters>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) timers: Timers,
    pub(crate) flow: FlowLimits,
    /// Appends to stream logs on its own thread.
    pub(crate) streams: crate::store::stream_writer::StreamWriter,
}

/// Where a durable queue's messages live on disk, and what is there already.
pub(crate) struct OnDisk {
    pub(crate) store: Arc<Store>,
    pub(crate) queue_id: u32,
    pub(crate) messages: usize,
    pub(crate) first_seq: u64,
    /// When the message at `first_seq` arrived (ms since the epoch; 0: unknown).
    pub(crate) first_arrived_ms: u64,
    pub(crate) next_seq: u64,
}

pub(crate) struct Queue {
    pub(crate) name: String,
    pub(crate) vhost: String,
    pub(crate) durable: bool,
    /// The connection that owns an exclusive queue.
    pub(crate) exclusive_owner: Option<u64>,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
    /// The arguments as declared, parsed from `arguments`: what no policy
    /// changes (type, priorities, single active consumer) is read here;
    /// what policies may change, from the effective ones in the state.
    pub(crate) args: QueueArgs,
    /// The effective x-consumer-timeout (ms), `NO_TIMEOUT` for none: read
    /// by channels without the queue's lock.
    consumer_timeout: AtomicU64,
    /// The queue's id in the store, when its messages are kept on disk.
    pub(crate) store_id: Option<u32>,
    /// A stream queue's log and readers; its state then holds only the
    /// consumers.
    stream: Option<StreamQueue>,
    memory: Arc<MemoryGauge>,
    dead_letters: DeadLetters,
    timers: Timers,
    flow: FlowLimits,
    /// Set while publishers to this queue must wait (see `broker::flow`).
    flow_on: AtomicBool,
    flow_released: tokio::sync::Notify,
    /// This queue, for timer wake-ups.
    me: Weak<Queue>,
    state: Mutex<QueueState>,
    /// Signalled when messages come back from disk (basic.get waits on it).
    disk_loaded: tokio::sync::Notify,
    pub(crate) stats: QueueStats,
}

struct QueueState {
    /// The declared arguments resolved against the policies that apply
    /// (`policy::effective_queue_args`), recomputed when those change.
    effective: QueueArgs,
    applied: Applied,
    ready: Box<dyn QueueStore>,
    next_seq: u64,
    /// Sorted by x-priority (highest first), arrival order among equals.
    consumers: Vec<Arc<Consumer>>,
    /// Rotation counter: which consumer of a priority group goes first.
    next_consumer: usize,
    unacked: usize,
    /// Body bytes of the unacknowledged messages, and the persistent
    /// ones among them (durable queues only, as RabbitMQ counts them).
    unacked_bytes: u64,
    unacked_persistent: crate::store::Persistent,
    /// Set once the queue has had a consumer: auto-delete applies from then on.
    had_consumer: bool,
    /// Some message may carry an expiry: the head is checked.
    expiring: bool,
    /// The earliest expiry wake-up already scheduled.
    timer_at: Option<u64>,
    /// Last declare, basic.get or consumer change (x-expires counts from it).
    last_used: u64,
    /// An x-expires wake-up is scheduled.
    expiry_check: bool,
    deleted: bool,
    /// The backlog's lowest point (bytes) since consumers last were absent
    /// or busy: flow control counts growth from here.
    flow_low: u64,
}

/// A queue's next message to deliver, as the management API shows it.
pub(crate) struct QueueHead {
    /// The message, when it is in memory.
    pub(crate) message: Option<Arc<Message>>,
    /// When it entered this queue (ms since the epoch), when known: also
    /// for a head still on disk (paged out, or not read back since a
    /// restart).
    pub(crate) arrived_ms: Option<u64>,
}

impl QueueHead {
    /// How long the head has waited (ms), at `now` (ms since the epoch).
    pub(crate) fn age_ms(&self, now: u64) -> Option<u64> {
        self.arrived_ms.map(|at| now.saturating_sub(at))
    }
}

/// Counts reported by queue.declare-ok and the management API.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QueueCounts {
    pub(crate) ready: usize,
    pub(crate) unacked: usize,
    pub(crate) consumers: usize,
    /// Bytes of ready messages held in memory.
    pub(crate) memory: usize,
    /// Ready messages held in memory.
    pub(crate) ready_in_memory: usize,
    /// Body bytes of the ready and of the unacknowledged messages.
    pub(crate) ready_bytes: u64,
    pub(crate) unacked_bytes: u64,
    /// Persistent messages, ready and unacknowledged (durable queues).
    pub(crate) persistent: crate::store::Persistent,
}

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        vhost: String,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
        applied: Applied,
        services: QueueServices,
        disk: Option<OnDisk>,
        stream: Option<StreamQueue>,
    ) -> Arc<Queue> {
        let effective = effective_queue_args(&args, &arguments, &applied);
        if let (Some(stream), Some(declared)) = (&stream, &args.stream) {
            stream.apply(&effective_stream_args(declared, &applied));
        }
        let queue = Arc::new_cyclic(|me: &Weak<Queue>| {
            let weak: Weak<dyn QueueEvents> = me.clone();
            let store_id = disk.as_ref().map(|d| d.queue_id);
            let (ready, next_seq): (Box<dyn QueueStore>, u64) = match (disk, args.max_priority) {
                (disk, Some(max)) => {
                    let next_seq = disk.as_ref().map_or(0, |d| d.next_seq);
                    if let Some(d) = &disk {
                        d.store.fail_stop.register(d.queue_id, weak.clone());
                    }
                    let disk = disk.map(|d| PriorityDisk {
                        store: d.store,
                        queue: weak.clone(),
                        queue_id: d.queue_id,
                        on_disk: d.messages,
                        recovered_end: d.next_seq,
                    });
                    (Box::new(PriorityStore::new(max, disk)), next_seq)
                }
                (Some(d), None) => {
                    d.store.fail_stop.register(d.queue_id, weak.clone());
                    (
                        Box::new(DurableStore::new(
                            d.store,
                            weak.clone(),
                            d.queue_id,
                            d.messages,
                            d.first_seq,
                            d.first_arrived_ms,
                            d.next_seq,
                            effective.max_length.is_some() || effective.max_length_bytes.is_some(),
                        )),
                        d.next_seq,
                    )
                }
                (None, None) => (Box::new(MemoryStore::default()), 0),
            };
            Queue {
                memory: services.memory,
                dead_letters: services.dead_letters,
                timers: services.timers,
                flow: services.flow,
                flow_on: AtomicBool::new(false),
                consumer_timeout: AtomicU64::new(effective.consumer_timeout.unwrap_or(NO_TIMEOUT)),
                flow_released: tokio::sync::Notify::new(),
                me: me.clone(),
                name,
                vhost,
                durable,
                exclusive_owner,
                auto_delete,
                arguments,
                args,
                store_id,
                stream,
                disk_loaded: tokio::sync::Notify::new(),
                stats: QueueStats::new(),
                state: Mutex::new(QueueState {
                    effective,
                    applied,
                    ready,
                    next_seq,
                    consumers: Vec::new(),
                    next_consumer: 0,
                    unacked: 0,
                    unacked_bytes: 0,
                    unacked_persistent: Default::default(),
                    had_consumer: false,
                    expiring: false,
                    timer_at: None,
                    last_used: now_ms(),
                    expiry_check: false,
                    deleted: false,
                    flow_low: 0,
                }),
            }
        });
        // A recovered queue reads its messages back when first consumed
        // from, so a restart with many backlogged queues stays small;
        // except with a TTL, whose expired messages must go without waiting
        // for a consumer (asking for the head starts the read).
        {
            let mut st = queue.state.lock();
            if st.effective.message_ttl.is_some() {
                if let Some(head) = st.ready.pop() {
                    st.ready.unpop(head);
                }
            }
        }
        queue.touch();
        queue
    }

    /// The effective x-consumer-timeout (ms).
    pub(crate) fn consumer_timeout(&self) -> Option<u64> {
        match self.consumer_timeout.load(Ordering::Relaxed) {
            NO_TIMEOUT => None,
            ms => Some(ms),
        }
    }

    /// The policy and operator policy that apply.
    pub(crate) fn policies(&self) -> Applied {
        self.state.lock().applied.clone()
    }

    /// The policies that apply changed: the effective arguments are worked
    /// out again and act at once, as RabbitMQ's `policy_changed`. A lower
    /// length limit drops (dead-letters, reason maxlen) the oldest messages
    /// under drop-head; a new x-expires counts from now; a new
    /// dead-letter exchange takes the next dead letter. A message TTL
    /// applies to messages that arrive from now on: RabbitMQ fixes a
    /// message's expiry when it arrives.
    pub(crate) fn set_policies(self: &Arc<Self>, applied: Applied) {
        let mut st = self.state.lock();
        if st.applied.is_same_as(&applied) {
            return;
        }
        if let (Some(stream), Some(declared)) = (&self.stream, &self.args.stream) {
            stream.apply(&effective_stream_args(declared, &applied));
        }
        let effective = effective_queue_args(&self.args, &self.arguments, &applied);
        let expires_changed = effective.expires != st.effective.expires;
        self.consumer_timeout.store(
            effective.consumer_timeout.unwrap_or(NO_TIMEOUT),
            Ordering::Relaxed,
        );
        st.effective = effective;
        st.applied = applied;
        let before = st.ready.bytes();
        if st.effective.max_length.is_some() || st.effective.max_length_bytes.is_some() {
            st.ready.keep_in_memory();
        }
        if st.effective.overflow == Overflow::DropHead {
            self.drop_over_limit(&mut st);
        }
        if expires_changed {
            if let Some(expires) = st.effective.expires {
                if st.consumers.is_empty() && !st.deleted {
                    st.last_used = now_ms();
                    st.expiry_check = true;
                    self.timers.wake_at(st.last_used + expires, self.me.clone());
                }
            }
        }
        self.account(before, &mut st);
    }

    /// Marks the queue used now (declare, basic.get, consumers) for x-expires.
    pub(crate) fn touch(&self) {
        let mut st = self.state.lock();
        self.touch_locked(&mut st);
    }

    fn touch_locked(&self, st: &mut QueueState) {
        st.last_used = now_ms();
        if let Some(expires) = st.effective.expires {
            if !st.expiry_check && st.consumers.is_empty() {
                st.expiry_check = true;
                self.timers.wake_at(st.last_used + expires, self.me.clone());
            }
        }
    }

    /// x-expires has run out: no consumers and unused for the period.
    pub(crate) fn is_unused_for_expiry(&self) -> bool {
        let st = self.state.lock();
        st.effective.expires.is_some_and(|expires| {
            st.consumers.is_empty() && !st.deleted && now_ms() >= st.last_used + expires
        })
    }

    /// An x-expires wake-up: delete the queue or look again later.
    fn check_unused(&self, st: &mut QueueState) {
        let Some(expires) = st.effective.expires else {
            st.expiry_check = false;
            return;
        };
        if !st.expiry_check || !st.consumers.is_empty() {
            st.expiry_check = false;
            return;
        }
        let due = st.last_used + expires;
        if now_ms() >= due {
            st.expiry_check = false;
            self.dead_letters
                .delete_unused(self.vhost.clone(), self.me.clone());
        } else {
            self.timers.wake_at(due, self.me.clone());
        }
    }

    /// The stream's log and readers, when this is a stream queue.
    pub(crate) fn stream(&self) -> Option<&StreamQueue> {
        self.stream.as_ref()
    }

    pub(crate) fn counts(&self) -> QueueCounts {
        if let Some(s) = &self.stream {
            let extent = s.extent();
            return QueueCounts {
                ready: (extent.next - extent.first) as usize,
                consumers: self.state.lock().consumers.len(),
                ready_bytes: extent.bytes,
                ..QueueCounts::default()
            };
        }
        let st = self.state.lock();
        let mut persistent = st.ready.persistent();
        persistent.messages += st.unacked_persistent.messages;
        persistent.bytes += st.unacked_persistent.bytes;
        QueueCounts {
            ready: st.ready.len(),
            unacked: st.unacked,
            consumers: st.consumers.len(),
            memory: st.ready.bytes(),
            ready_in_memory: st.ready.in_memory(),
            ready_bytes: st.ready.body_bytes(),
            unacked_bytes: st.unacked_bytes,
            persistent,
        }
    }

    /// The next message to deliver: the message when it is in memory, and
    /// when it arrived in this queue when that is known.
    pub(crate) fn head(&self) -> QueueHead {
        let st = self.state.lock();
        QueueHead {
            message: st.ready.head().map(|m| m.message.clone()),
            arrived_ms: st.ready.head_arrived(),
        }
    }

    /// The queue's consumers, highest priority first.
    pub(crate) fn consumers(&self) -> Vec<Arc<Consumer>> {
        self.state.lock().consumers.clone()
    }

    /// 405 unless `connection` may use this queue.
    pub(crate) fn check_owner(&self, connection: u64) -> Result<(), AmqpError> {
        match self.exclusive_owner {
            Some(owner) if owner != connection => Err(self.locked_error()),
            _ => Ok(()),
        }
    }

    pub(crate) fn locked_error(&self) -> AmqpError {
        AmqpError::resource_locked(format_args!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
            self.name, self.vhost
        ))
    }

    /// Adds a message to the tail and hands it to a consumer if one can
    /// take it. Returns false when the queue refused it (x-overflow
    /// reject-publish): the publisher gets a nack.
    pub(crate) fn publish(self: &Arc<Self>, message: Arc<Message>) -> bool {
        let mut st = self.state.lock();
        if st.deleted {
            st.ready.refused(&message);
            return true;
        }
        // The store stopped writing (a write failed): nack, do not enqueue
        // a message that would then be lost.
        if message.persistent && st.ready.refuses_persistent() {
            st.ready.refused(&message);
            return false;
        }
        if st.effective.overflow != Overflow::DropHead && Self::is_full(&st, &message) {
            st.ready.refused(&message);
            if st.effective.overflow == Overflow::RejectPublishDlx {
                self.dead_letter(&st, &message, Reason::Maxlen);
            }
            return false;
        }
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let before = st.ready.bytes();
        let seq = st.next_seq;
        st.next_seq += 1;
        let ttl = match (st.effective.message_ttl, message.expiration_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // One clock read per enqueue: the coarse clock stamps the arrival
        // (a few ms are nothing to an age); an expiry needs the precise
        // one, and the arrival then shares it.
        let now = if ttl.is_some() {
            now_ms()
        } else {
            coarse_now_ms()
        };
        let mut msg = QueuedMessage::new(seq, message);
        msg.arrived_ms = now;
        match ttl {
            // TTL 0: delivered now to a ready consumer, or expired at once.
            Some(0) => {
                if !st.ready.is_empty() || st.consumers.is_empty() {
                    st.ready.refused(&msg.message);
                    self.dead_letter(&st, &msg.message, Reason::Expired);
                } else {
                    st.ready.push(msg);
                    self.dispatch_locked(&mut st);
                    if let Some(left) = st.ready.pop() {
                        st.ready.acked(left.receipt());
                        self.dead_letter(&st, &left.message, Reason::Expired);
                    }
                }
            }
            Some(ttl) => {
                st.expiring = true;
                msg.expires_at = NonZeroU64::new(now + ttl);
                st.ready.push(msg);
                self.dispatch_locked(&mut st);
            }
            None => {
                st.ready.push(msg);
                self.dispatch_locked(&mut st);
            }
        }
        self.drop_over_limit(&mut st);
        self.account(before, &mut st);
        true
    }

    /// Whether `message` would take the queue over its length limits.
    fn is_full(st: &QueueState, message: &Message) -> bool {
        st.effective
            .max_length
            .is_some_and(|max| st.ready.len() as u64 >= max)
            || st
                .effective
                .max_length_bytes
                .is_some_and(|max| st.ready.body_bytes() + message.body.len() as u64 > max)
    }

    /// x-overflow drop-head: the oldest messages go (dead-lettered with
    /// reason maxlen) until the queue is within its limits.
    fn drop_over_limit(&self, st: &mut QueueState) {
        let over = |st: &QueueState| {
            st.effective
                .max_length
                .is_some_and(|max| st.ready.len() as u64 > max)
                || st
                    .effective
                    .max_length_bytes
                    .is_some_and(|max| st.ready.body_bytes() > max)
        };
        while over(st) {
            let Some(head) = st.ready.pop() else {
                break;
            };
            st.ready.acked(head.receipt());
            self.dead_letter(st, &head.message, Reason::Maxlen);
        }
    }

    /// Drops expired messages from the head (dead-lettering them).
    fn expire_locked(&self, st: &mut QueueState) {
        if !st.expiring {
            return;
        }
        let now = now_ms();
        while let Some(msg) = st.ready.pop() {
            if !msg.is_expired(now) {
                st.ready.unpop(msg);
                break;
            }
            self.expire(st, msg);
        }
    }

    fn expire(&self, st: &mut QueueState, msg: QueuedMessage) {
        st.ready.acked(msg.receipt());
        self.dead_letter(st, &msg.message, Reason::Expired);
    }

    /// Arranges a wake-up for when the head message expires.
    fn schedule_expiry(&self, st: &mut QueueState) {
        if !st.expiring {
            return;
        }
        let Some(head) = st.ready.pop() else {
            return;
        };
        let at = head.expires_at.map(NonZeroU64::get);
        st.ready.unpop(head);
        if let Some(at) = at {
            if st.timer_at.is_none_or(|t| at < t) {
                st.timer_at = Some(at);
                self.timers.wake_at(at, self.me.clone());
            }
        }
    }

    /// A wake-up scheduled for `at` is due.
    pub(crate) fn on_timer(&self, at: u64) {
        let mut st = self.state.lock();
        if st.timer_at == Some(at) {
            st.timer_at = None;
        }
        let before = st.ready.bytes();
        self.expire_locked(&mut st);
        self.schedule_expiry(&mut st);
        self.account(before, &mut st);
        self.check_unused(&mut st);
    }

    /// Reports the change in ready bytes since `before` to the memory gauge
    /// and moves flow control along.
    fn account(&self, before: usize, st: &mut QueueState) {
        self.memory.add(st.ready.bytes() as i64 - before as i64);
        self.track_flow(st);
    }

    /// Whether publishers to this queue must wait (see `broker::flow`).
    pub(crate) fn asks_publishers_to_wait(&self) -> bool {
        self.flow_on.load(Ordering::Relaxed)
    }

    /// Signalled when the queue stops asking publishers to wait.
    pub(crate) fn flow_released(&self) -> &tokio::sync::Notify {
        &self.flow_released
    }

    /// For a paused publisher: re-evaluates the consumers (they may have
    /// turned busy or stuck) and says whether to go on waiting.
    pub(crate) fn recheck_flow(&self) -> bool {
        if !self.asks_publishers_to_wait() {
            return false;
        }
        let mut st = self.state.lock();
        if !self.consumers_keep_up(&st) {
            st.flow_low = Self::backlog(&st);
        }
        self.track_flow(&mut st);
        self.asks_publishers_to_wait()
    }

    /// Bytes of the whole ready backlog, on disk or not, as flow control
    /// counts them.
    fn backlog(st: &QueueState) -> u64 {
        st.ready.body_bytes() + (st.ready.len() * MESSAGE_OVERHEAD) as u64
    }

    fn track_flow(&self, st: &mut QueueState) {
        if self.flow.window == 0 {
            return;
        }
        let backlog = Self::backlog(st);
        if st.consumers.is_empty() || st.deleted || backlog < st.flow_low {
            st.flow_low = backlog;
        }
        let growth = backlog - st.flow_low;
        if self.flow_on.load(Ordering::Relaxed) {
            if growth <= self.flow.window / 2 {
                self.flow_on.store(false, Ordering::Relaxed);
                self.flow_released.notify_waiters();
            }
        } else if growth > self.flow.window {
            if self.consumers_keep_up(st) {
                self.flow_on.store(true, Ordering::Relaxed);
            } else {
                // Busy consumers: the queue absorbs what came so far.
                st.flow_low = backlog;
            }
        }
    }

    fn consumers_keep_up(&self, st: &QueueState) -> bool {
        !st.consumers.is_empty()
            && st
                .consumers
                .iter()
                .all(|c| c.channel.keeps_up(c, self.flow.busy_consumer))
    }

    /// Delivers ready messages to consumers with capacity, round-robin.
    pub(crate) fn dispatch(self: &Arc<Self>) {
        if let Some(s) = &self.stream {
            return s.wake_readers();
        }
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        self.dispatch_locked(&mut st);
        self.account(before, &mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        self.expire_locked(st);
        let n = st.consumers.len();
        if n > 0 {
            self.deliver_locked(st, n);
        }
        self.schedule_expiry(st);
    }

    /// Offers ready messages to consumers: higher x-priority first,
    /// round-robin among equals; with x-single-active-consumer only the
    /// first consumer receives.
    fn deliver_locked(self: &Arc<Self>, st: &mut QueueState, n: usize) {
        let n = if self.args.single_active_consumer {
            1
        } else {
            n
        };
        let now = if st.expiring { now_ms() } else { 0 };
        'messages: while let Some(mut msg) = st.ready.pop() {
            if msg.is_expired(now) {
                self.expire(st, msg);
                continue;
            }
            // Consumers are kept sorted by priority: try each group in turn.
            let mut group = 0;
            while group < n {
                let priority = st.consumers[group].priority;
                let size = st.consumers[group..n]
                    .iter()
                    .take_while(|c| c.priority == priority)
                    .count();
                for k in 0..size {
                    let turn = (st.next_consumer + k) % size;
                    let consumer = st.consumers[group + turn].clone();
                    let receipt = msg.receipt();
                    let redelivered = msg.redelivered;
                    match consumer.channel.try_deliver(&consumer, self, msg) {
                        Ok(()) => {
                            self.stats.delivered(redelivered, consumer.no_ack);
                            st.next_consumer = st.next_consumer.wrapping_add(k + 1);
                            if !consumer.no_ack {
                                self.unacked_add(st, &receipt);
                            }
                            st.ready.delivered(receipt, consumer.no_ack);
                            continue 'messages;
                        }
                        Err(back) => msg = back,
                    }
                }
                group += size;
            }
            st.ready.unpop(msg);
            self.stats.consumers_blocked();
            break;
        }
    }

    /// basic.get: takes the head message and says how many remain, or
    /// says that the head is being read back from disk.
    pub(crate) fn try_get(&self, no_ack: bool) -> Got {
        let mut st = self.state.lock();
        self.touch_locked(&mut st);
        let before = st.ready.bytes();
        self.expire_locked(&mut st);
        let now = if st.expiring { now_ms() } else { 0 };
        let msg = loop {
            if let Some(msg) = st.ready.pop() {
                if msg.is_expired(now) {
                    self.expire(&mut st, msg);
                    continue;
                }
                break msg;
            }
            return if st.ready.awaiting_disk() {
                Got::Loading
            } else {
                self.stats.got_empty();
                Got::Empty
            };
        };
        if !no_ack {
            self.unacked_add(&mut st, &msg.receipt());
        }
        self.stats.got(msg.redelivered, no_ack);
        st.ready.delivered(msg.receipt(), no_ack);
        self.schedule_expiry(&mut st);
        self.account(before, &mut st);
        Got::Message(msg, st.ready.len())
    }

    /// True while ready messages are being read back from disk.
    pub(crate) fn awaiting_disk(&self) -> bool {
        self.state.lock().ready.awaiting_disk()
    }

    /// Completes at the next read back from disk (or deletion); `enable`
    /// it before `try_get`.
    pub(crate) fn disk_loaded(&self) -> tokio::sync::futures::Notified<'_> {
        self.disk_loaded.notified()
    }

    /// basic.get that waits (without blocking a thread, up to
    /// `GET_DISK_WAIT`) while the head is being read back from disk, so a
    /// get never misses messages on disk.
    pub(crate) async fn get(&self, no_ack: bool) -> Option<(QueuedMessage, usize)> {
        let deadline = Instant::now() + GET_DISK_WAIT;
        loop {
            let loaded = self.disk_loaded();
            tokio::pin!(loaded);
            loaded.as_mut().enable();
            match self.try_get(no_ack) {
                Got::Message(msg, left) => return Some((msg, left)),
                Got::Empty => return None,
                Got::Loading => {}
            }
            if tokio::time::timeout_at(deadline.into(), loaded)
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Acknowledged (or rejected without requeue) deliveries leave the queue.
    pub(crate) fn settle(&self, receipts: impl IntoIterator<Item = Receipt>) {
        if self.stream.is_some() {
            // A stream keeps its messages: an ack only gives credit back.
            let n = receipts.into_iter().count() as u64;
            self.stats.acked.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let mut st = self.state.lock();
        for receipt in receipts {
            self.unacked_sub(&mut st, &receipt);
            st.ready.acked(receipt);
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rejected (or nacked) without requeue: the messages leave the queue
    /// for its dead-letter exchange, if it has one.
    pub(crate) fn reject(&self, messages: impl IntoIterator<Item = QueuedMessage>) {
        if self.stream.is_some() {
            // Nothing leaves a stream, and it dead-letters nothing.
            return;
        }
        let mut st = self.state.lock();
        for msg in messages {
            self.unacked_sub(&mut st, &msg.receipt());
            st.ready.acked(msg.receipt());
            self.dead_letter(&st, &msg.message, Reason::Rejected);
        }
    }

    fn unacked_add(&self, st: &mut QueueState, r: &Receipt) {
        st.unacked += 1;
        st.unacked_bytes += r.body_len as u64;
        if r.persistent && self.durable {
            st.unacked_persistent.messages += 1;
            st.unacked_persistent.bytes += r.body_len as u64;
        }
    }

    fn unacked_sub(&self, st: &mut QueueState, r: &Receipt) {
        st.unacked = st.unacked.saturating_sub(1);
        st.unacked_bytes = st.unacked_bytes.saturating_sub(r.body_len as u64);
        if r.persistent && self.durable {
            let p = &mut st.unacked_persistent;
            p.messages = p.messages.saturating_sub(1);
            p.bytes = p.bytes.saturating_sub(r.body_len as u64);
        }
    }

    /// Quorum queues, and queues with a delivery limit, count returns and
    /// mark redeliveries with `x-delivery-count`.
    fn counts_deliveries(&self, st: &QueueState) -> bool {
        st.effective.delivery_limit.is_some() || self.args.queue_type == QueueType::Quorum
    }

    /// Hands a message the queue lets go of to its dead-letter exchange.
    fn dead_letter(&self, st: &QueueState, message: &Arc<Message>, reason: Reason) {
        if let Some(exchange) = &st.effective.dead_letter_exchange {
            self.dead_letters.send(DeadLetter {
                vhost: self.vhost.clone(),
                queue: self.name.clone(),
                exchange: exchange.clone(),
                routing_key: st.effective.dead_letter_routing_key.clone(),
                message: message.clone(),
                reason,
            });
        }
    }

    /// Messages whose writes failed leave the queue (see `store::fail_stop`).
    pub(crate) fn forget_unwritten(&self, unwritten: &[crate::store::fail_stop::Unwritten]) {
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        st.ready.forget_unwritten(unwritten);
        self.account(before, &mut st);
    }

    /// Messages read back from disk join the head and go to consumers.
    pub(crate) fn on_loaded(self: &Arc<Self>, loaded: Loaded) {
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        // Messages recovered from disk may carry an expiry.
        st.expiring |= loaded.messages.iter().any(|m| m.expires_at.is_some());
        st.ready.loaded(loaded);
        if st.effective.overflow == Overflow::DropHead {
            // A limit a policy lowered while these were on disk.
            self.drop_over_limit(&mut st);
        }
        self.dispatch_locked(&mut st);
        self.account(before, &mut st);
        self.disk_loaded.notify_waiters();
    }

    /// Puts unacknowledged messages back at their original positions,
    /// flagged redelivered, and delivers again.
    pub(crate) fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        if self.stream.is_some() {
            // As RabbitMQ: a requeue on a stream only gives credit back.
            return;
        }
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        for mut msg in messages {
            self.unacked_sub(&mut st, &msg.receipt());
            if st.deleted {
                continue;
            }
            msg.redelivered = true;
            if self.counts_deliveries(&st) {
                msg.returned += 1;
                let n = u64::from(msg.returned);
                if st.effective.delivery_limit.is_some_and(|limit| n > limit) {
                    st.ready.acked(msg.receipt());
                    let original = with_delivery_count(&msg.message, None)
                        .map_or_else(|| msg.message.clone(), Arc::new);
                    self.dead_letter(&st, &original, Reason::DeliveryLimit);
                    continue;
                }
                if let Some(marked) = with_delivery_count(&msg.message, Some(n)) {
                    msg.message = Arc::new(marked);
                }
            }
            st.ready.requeue(msg);
        }
        self.dispatch_locked(&mut st);
        self.account(before, &mut st);
    }

    /// Adds a consumer unless exclusivity forbids it; `on_added` runs (to
    /// send consume-ok) before the first delivery to it.
    pub(crate) fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        read: Option<ReadSpec>,
        on_added: impl FnOnce(),
    ) -> Result<(), AmqpError> {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive) {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        if consumer.exclusive && !st.consumers.is_empty() {
            return Err(AmqpError::access_refused(format_args!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        if let (Some(stream), Some(read)) = (&self.stream, &read) {
            if read.track && !stream.can_track(&consumer.tag) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "stream '{}' in vhost '{}' already stores the offsets of {} consumers",
                    self.name,
                    self.vhost,
                    super::stream::MAX_TRACKED
                )));
            }
        }
        on_added();
        if let Some(stream) = &self.stream {
            let read = read.unwrap_or(ReadSpec {
                start: StartAt::Next,
                filter: None,
                track: false,
            });
            st.consumers.push(consumer.clone());
            st.had_consumer = true;
            drop(st);
            stream.add_reader(self.clone(), consumer, read);
            return Ok(());
        }
        // Sorted by priority, arrival order among equals (the first is the
        // single active consumer where that applies).
        let at = if self.args.single_active_consumer {
            st.consumers.len()
        } else {
            st.consumers
                .iter()
                .position(|c| c.priority < consumer.priority)
                .unwrap_or(st.consumers.len())
        };
        st.consumers.insert(at, consumer);
        st.had_consumer = true;
        st.last_used = now_ms();
        let before = st.ready.bytes();
        self.dispatch_locked(&mut st);
        self.account(before, &mut st);
        Ok(())
    }

    /// Removes a consumer; returns true when an auto-delete queue just lost
    /// its last consumer and must be deleted.
    pub(crate) fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        if let Some(s) = &self.stream {
            s.remove_reader(consumer);
        }
        let mut st = self.state.lock();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        if st.consumers.is_empty() {
            self.touch_locked(&mut st);
        }
        self.track_flow(&mut st);
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    pub(crate) fn purge(&self) -> usize {
        let mut st = self.state.lock();
        let before = st.ready.bytes();
        let count = st.ready.purge();
        self.account(before, &mut st);
        count
    }

    /// Checks queue.delete's if-unused / if-empty conditions.
    pub(crate) fn check_delete(&self, if_unused: bool, if_empty: bool) -> Result<(), AmqpError> {
        let st = self.state.lock();
        if if_unused && !st.consumers.is_empty() {
            return Err(AmqpError::precondition_failed(format_args!(
                "queue '{}' in vhost '{}' in use",
                self.name, self.vhost
            )));
        }
        if if_empty && !st.ready.is_empty() {
            return Err(AmqpError::precondition_failed(format_args!(
                "queue '{}' in vhost '{}' not empty",
                self.name, self.vhost
            )));
        }
        Ok(())
    }

    /// Marks the queue deleted, drops its messages and returns its consumers
    /// (to be cancelled) and the number of ready messages it held.
    pub(crate) fn mark_deleted(&self) -> (Vec<Arc<Consumer>>, usize) {
        let mut st = self.state.lock();
        st.deleted = true;
        let before = st.ready.bytes();
        let count = st.ready.len();
        st.ready.delete();
        self.account(before, &mut st);
        self.disk_loaded.notify_waiters();
        if let Some(s) = &self.stream {
            s.delete();
        }
        (std::mem::take(&mut st.consumers), count)
    }
}

impl QueueEvents for Queue {
    fn name(&self) -> &str {
        &self.name
    }

    fn on_loaded(self: Arc<Self>, loaded: Loaded) {
        Queue::on_loaded(&self, loaded);
    }

    fn forget_unwritten(&self, unwritten: &[Unwritten]) {
        Queue::forget_unwritten(self, unwritten);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::consumer::{ChannelInfo, ConsumerChannel, Mode};
    use bytes::Bytes;

    /// A channel that takes up to `room` deliveries, recording them.
    struct FakeChannel {
        room: usize,
        got: Mutex<Vec<(String, Bytes)>>,
        cancelled: Mutex<Vec<String>>,
    }

    impl FakeChannel {
        fn new(room: usize) -> Arc<FakeChannel> {
            Arc::new(FakeChannel {
                room,
                got: Mutex::new(Vec::new()),
                cancelled: Mutex::new(Vec::new()),
            })
        }

        fn bodies(&self, tag: &str) -> Vec<Bytes> {
            let got = self.got.lock();
            got.iter()
                .filter(|(t, _)| t == tag)
                .map(|(_, b)| b.clone())
                .collect()
        }
    }

    impl ConsumerChannel for FakeChannel {
        fn id(&self) -> u16 {
            1
        }
        fn try_deliver(
            &self,
            consumer: &Arc<Consumer>,
            _queue: &Arc<Queue>,
            msg: QueuedMessage,
        ) -> Result<(), QueuedMessage> {
            let mut got = self.got.lock();
            if got.iter().filter(|(t, _)| *t == consumer.tag).count() >= self.room {
                return Err(msg);
            }
            got.push((consumer.tag.clone(), msg.message.body.clone()));
            Ok(())
        }
        fn keeps_up(&self, _consumer: &Consumer, _busy: Duration) -> bool {
            true
        }
        fn cancel_by_broker(&self, consumer: &Arc<Consumer>) {
            self.cancelled.lock().push(consumer.tag.clone());
        }
        fn deliver_direct(&self, _consumer_tag: &str, _message: &Message) {}
        fn info(&self) -> ChannelInfo {
            ChannelInfo {
                mode: Mode::Plain,
                prefetch_count: 0,
                global_prefetch_count: 0,
                unacked: 0,
                unconfirmed: 0,
                consumers: Vec::new(),
            }
        }
    }

    fn queue() -> Arc<Queue> {
        let (dead_letters, _) = crate::broker::dead_letter::DeadLetters::channel();
        let services = QueueServices {
            streams: crate::store::stream_writer::StreamWriter::start(
                Arc::new(crate::store::Backlog::new(usize::MAX)),
                crate::store::journal::Recorder::default(),
            )
            .unwrap(),
            memory: Arc::new(MemoryGauge::new(u64::MAX)),
            counters: Default::default(),
            dead_letters,
            timers: Timers::start(),
            flow: FlowLimits {
                window: 0,
                busy_consumer: Duration::from_millis(1),
            },
        };
        Queue::new(
            "q".into(),
            "/".into(),
            false,
            None,
            false,
            FieldTable::default(),
            QueueArgs::default(),
            Applied::default(),
            services,
            None,
            None,
        )
    }

    fn consumer(
        tag: &str,
        channel: &Arc<FakeChannel>,
        queue: &Arc<Queue>,
        priority: i64,
    ) -> Arc<Consumer> {
        Arc::new(Consumer {
            tag: tag.into(),
            channel: channel.clone(),
            queue: queue.clone(),
            no_ack: false,
            exclusive: false,
            prefetch: 0,
            arguments: FieldTable::default(),
            priority,
            unacked: Default::default(),
            pace: Default::default(),
            tracks_offset: false,
        })
    }

    fn publish(queue: &Arc<Queue>, body: &'static str) {
        let message = Message::new(
            String::new(),
            "q".into(),
            Bytes::new(),
            Bytes::from_static(body.as_bytes()),
            false,
        );
        assert!(queue.publish(Arc::new(message)));
    }

    /// Messages go to consumers in order, round-robin among equals, to a
    /// higher-priority consumer first while it has room, and wait in the
    /// queue while no consumer has room.
    #[test]
    fn a_queue_hands_messages_to_consumers_with_room_in_order() {
        let q = queue();
        let a = FakeChannel::new(2);
        let b = FakeChannel::new(10);
        q.add_consumer(consumer("a", &a, &q, 0), None, || {})
            .unwrap();
        for body in ["1", "2", "3"] {
            publish(&q, body);
        }
        assert_eq!(a.bodies("a"), ["1", "2"]);
        assert_eq!(q.counts().ready, 1, "the third waits: no consumer has room");
        q.add_consumer(consumer("b", &b, &q, 0), None, || {})
            .unwrap();
        assert_eq!(b.bodies("b"), ["3"], "a new consumer gets what waited");
        let high = FakeChannel::new(1);
        q.add_consumer(consumer("high", &high, &q, 5), None, || {})
            .unwrap();
        for body in ["4", "5", "6"] {
            publish(&q, body);
        }
        assert_eq!(high.bodies("high"), ["4"], "the higher priority first");
        assert_eq!(b.bodies("b"), ["3", "5", "6"], "then whoever has room");
        assert_eq!(q.counts().ready, 0);
    }
}
