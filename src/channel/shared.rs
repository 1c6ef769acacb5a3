//! The part of a channel that queues on other connections touch: delivery
//! tags, unacknowledged messages, prefetch limits and consumers.

use super::confirms::{Confirm, Confirms};
use crate::broker::consumer::Consumer;
use crate::broker::counters::MessageCounts;
use crate::broker::flow;
use crate::broker::queue::Queue;
use crate::connection::outbox::Outbox;
use crate::error::AmqpError;
use crate::hash::HashMap;
use crate::message::Message;
use crate::protocol::encode;
use crate::store::QueuedMessage;
use amq_protocol::protocol::{basic, AMQPClass};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) struct ChannelShared {
    pub(crate) id: u16,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) frame_max: u32,
    /// The client understands broker-initiated basic.cancel.
    pub(crate) cancel_notify: bool,
    state: Mutex<DeliveryState>,
    confirms: Mutex<Confirms>,
    /// [`Mode`], for the management API.
    mode: AtomicU8,
    /// The counts the channel's task keeps (`Channel::counts`), as of its
    /// last batch of frames: received, received_confirm, routed,
    /// unroutable_dropped, unroutable_returned, get_empty.
    published: [AtomicU64; 6],
}

pub(crate) use crate::broker::consumer::{ChannelInfo, Mode};

/// What becomes of settled deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    /// Rejected or nacked without requeue: dead-lettered if the queue says so.
    Reject,
}

impl Settle {
    pub(crate) fn nack(requeue: bool) -> Settle {
        if requeue {
            Settle::Requeue
        } else {
            Settle::Reject
        }
    }
}

/// A delivery awaiting ack, nack or reject.
pub(crate) struct Unacked {
    pub(crate) delivery_tag: u64,
    pub(crate) queue: Arc<Queue>,
    pub(crate) message: QueuedMessage,
    pub(crate) consumer: Option<Arc<Consumer>>,
    /// For the delivery acknowledgement timeout.
    pub(crate) delivered_at: Instant,
}

/// Deliveries being settled, with the buffers settling needs; a channel
/// keeps one between acknowledgements so that an ack allocates nothing once
/// they have grown.
#[derive(Default)]
pub(crate) struct Settling {
    taken: Vec<Unacked>,
    queues: Vec<Arc<Queue>>,
    batch: Vec<QueuedMessage>,
}

impl Settling {
    /// A stream queue among the deliveries taken, if any.
    pub(crate) fn stream_queue(&self) -> Option<Arc<Queue>> {
        self.taken
            .iter()
            .find(|u| u.queue.stream().is_some())
            .map(|u| u.queue.clone())
    }
}

struct DeliveryState {
    next_delivery_tag: u64,
    /// In delivery-tag order.
    unacked: VecDeque<Unacked>,
    /// basic.qos global=false: the limit given to consumers created later.
    consumer_prefetch: u16,
    /// basic.qos global=true: the limit across all the channel's consumers.
    channel_prefetch: u16,
    /// Unacked deliveries to consumers (basic.get ones do not count).
    consumer_unacked: u32,
    closed: bool,
    consumers: HashMap<String, Arc<Consumer>>,
    /// basic.cancel notifications kept back until the method that caused
    /// them has its reply out (see `hold_cancels`).
    held_cancels: Option<Vec<Arc<Consumer>>>,
    /// Deliveries and acknowledgements (the other fields stay 0).
    counts: MessageCounts,
    /// Its counts joined the broker's retired totals (channel closed).
    retired: bool,
}

impl ChannelShared {
    pub(crate) fn new(
        id: u16,
        outbox: Arc<Outbox>,
        frame_max: u32,
        cancel_notify: bool,
    ) -> ChannelShared {
        ChannelShared {
            id,
            outbox,
            frame_max,
            cancel_notify,
            state: Mutex::new(DeliveryState {
                next_delivery_tag: 1,
                unacked: VecDeque::new(),
                consumer_prefetch: 0,
                channel_prefetch: 0,
                consumer_unacked: 0,
                closed: false,
                consumers: HashMap::default(),
                held_cancels: None,
                counts: MessageCounts::default(),
                retired: false,
            }),
            confirms: Mutex::new(Confirms::default()),
            mode: AtomicU8::new(Mode::Plain as u8),
            published: Default::default(),
        }
    }

    /// The task's counts, once per batch of frames: a single writer, so a
    /// store each, and nothing per message.
    pub(crate) fn publish_counts(&self, c: &MessageCounts) {
        let values = [
            c.received,
            c.received_confirm,
            c.routed,
            c.unroutable_dropped,
            c.unroutable_returned,
            c.get_empty,
        ];
        for (slot, v) in self.published.iter().zip(values) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// The channel's message counts; None once retired.
    pub(crate) fn counts(&self) -> Option<MessageCounts> {
        let mut counts = {
            let st = self.state.lock();
            if st.retired {
                return None;
            }
            st.counts
        };
        self.add_unlocked_counts(&mut counts);
        Some(counts)
    }

    /// The final counts of a closing channel, once (see `Counters`).
    pub(crate) fn retire(&self) -> Option<MessageCounts> {
        let mut counts = {
            let mut st = self.state.lock();
            if std::mem::replace(&mut st.retired, true) {
                return None;
            }
            st.counts
        };
        self.add_unlocked_counts(&mut counts);
        Some(counts)
    }

    fn add_unlocked_counts(&self, counts: &mut MessageCounts) {
        let [received, received_confirm, routed, dropped, returned, get_empty] =
            self.published.each_ref().map(|a| a.load(Ordering::Relaxed));
        counts.received = received;
        counts.received_confirm = received_confirm;
        counts.routed = routed;
        counts.unroutable_dropped = dropped;
        counts.unroutable_returned = returned;
        counts.get_empty = get_empty;
        counts.confirmed = self.confirms.lock().confirmed();
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    pub(crate) fn info(&self) -> ChannelInfo {
        // Not under the state lock: the confirms' lock is never taken
        // inside it.
        let unconfirmed = self.confirms.lock().unconfirmed();
        let st = self.state.lock();
        let mut consumers: Vec<_> = st.consumers.values().cloned().collect();
        consumers.sort_by(|a, b| a.tag.cmp(&b.tag));
        ChannelInfo {
            mode: match self.mode.load(Ordering::Relaxed) {
                1 => Mode::Confirm,
                2 => Mode::Transactional,
                _ => Mode::Plain,
            },
            prefetch_count: st.consumer_prefetch,
            global_prefetch_count: st.channel_prefetch,
            unacked: st.unacked.len(),
            unconfirmed,
            consumers,
        }
    }

    /// Sends a method frame on this channel.
    pub(crate) fn send(&self, class: AMQPClass) {
        self.outbox.push(|buf| encode::method(buf, self.id, &class));
    }

    /// Called by a queue, under its lock: delivers `msg` to `consumer` if the
    /// channel has room, or hands it back.
    pub(crate) fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(msg);
        }
        if !consumer.no_ack {
            if consumer.prefetch > 0
                && consumer.unacked.load(Ordering::Relaxed) >= consumer.prefetch as u32
            {
                return Err(msg);
            }
            if st.channel_prefetch > 0 && st.consumer_unacked >= st.channel_prefetch as u32 {
                return Err(msg);
            }
        }
        if self.outbox.is_full() {
            self.outbox.wait_for_space(queue);
            return Err(msg);
        }
        let tag = st.next_delivery_tag;
        st.next_delivery_tag += 1;
        let m = &msg.message;
        self.outbox.push(|buf| {
            encode::basic_deliver(
                buf,
                self.id,
                &consumer.tag,
                tag,
                msg.redelivered,
                &m.exchange,
                &m.routing_key,
            );
            encode::content(buf, self.id, &m.properties, &m.body, self.frame_max);
        });
        st.counts.redelivered += u64::from(msg.redelivered);
        if consumer.no_ack {
            st.counts.consume_auto_ack += 1;
            consumer.pace.record(1);
        } else {
            st.counts.consume_manual_ack += 1;
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            st.consumer_unacked += 1;
            st.unacked.push_back(Unacked {
                delivery_tag: tag,
                queue: queue.clone(),
                message: msg,
                consumer: Some(consumer.clone()),
                delivered_at: Instant::now(),
            });
        }
        Ok(())
    }

    /// Sends basic.get-ok for a message taken from `queue`.
    pub(crate) fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
        remaining: usize,
        no_ack: bool,
    ) {
        let mut st = self.state.lock();
        let tag = st.next_delivery_tag;
        st.next_delivery_tag += 1;
        let m = &msg.message;
        self.outbox.push(|buf| {
            encode::basic_get_ok(
                buf,
                self.id,
                tag,
                msg.redelivered,
                &m.exchange,
                &m.routing_key,
                remaining as u32,
            );
            encode::content(buf, self.id, &m.properties, &m.body, self.frame_max);
        });
        st.counts.redelivered += u64::from(msg.redelivered);
        if no_ack {
            st.counts.get_auto_ack += 1;
        } else {
            st.counts.get_manual_ack += 1;
            st.unacked.push_back(Unacked {
                delivery_tag: tag,
                queue: queue.clone(),
                message: msg,
                consumer: None,
                delivered_at: Instant::now(),
            });
        }
    }

    /// Direct reply-to: delivers without a queue, as an auto-ack delivery.
    pub(crate) fn deliver_direct(&self, consumer_tag: &str, message: &Message) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        let tag = st.next_delivery_tag;
        st.next_delivery_tag += 1;
        self.outbox.push(|buf| {
            encode::basic_deliver(
                buf,
                self.id,
                consumer_tag,
                tag,
                false,
                &message.exchange,
                &message.routing_key,
            );
            encode::content(
                buf,
                self.id,
                &message.properties,
                &message.body,
                self.frame_max,
            );
        });
    }

    /// Removes the deliveries an ack/nack/reject names. `delivery_tag` 0 with
    /// `multiple` means all of them.
    pub(crate) fn take_unacked(
        &self,
        delivery_tag: u64,
        multiple: bool,
        into: &mut Settling,
    ) -> Result<(), AmqpError> {
        let mut st = self.state.lock();
        let from = into.taken.len();
        if multiple {
            let upto = if delivery_tag == 0 {
                u64::MAX
            } else {
                delivery_tag
            };
            if delivery_tag != 0 && !st.unacked.iter().any(|u| u.delivery_tag == delivery_tag) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "unknown delivery tag {delivery_tag}"
                )));
            }
            let n = st.unacked.partition_point(|u| u.delivery_tag <= upto);
            into.taken.extend(st.unacked.drain(..n));
        } else {
            let Ok(i) = st
                .unacked
                .binary_search_by_key(&delivery_tag, |u| u.delivery_tag)
            else {
                return Err(AmqpError::precondition_failed(format_args!(
                    "unknown delivery tag {delivery_tag}"
                )));
            };
            into.taken
                .push(st.unacked.remove(i).expect("index found by search"));
        }
        let taken = &into.taken[from..];
        if let Some(c) = taken.last().and_then(|u| u.consumer.as_ref()) {
            c.pace.record(taken.len() as u64);
        }
        Self::release_credit(&mut st, taken);
        Ok(())
    }

    /// Every outstanding delivery (channel close, basic.recover).
    pub(crate) fn take_all_unacked(&self) -> Settling {
        let mut st = self.state.lock();
        let taken: Vec<Unacked> = st.unacked.drain(..).collect();
        Self::release_credit(&mut st, &taken);
        Settling {
            taken,
            ..Default::default()
        }
    }

    /// Whether `consumer` keeps up: it settles a message every `busy` or
    /// faster, and nothing it was given has waited `flow::STUCK` (for an
    /// acknowledgement, or, without acks, for its socket to take it).
    pub(crate) fn keeps_up(&self, consumer: &Consumer, busy: Duration) -> bool {
        if consumer.pace.per_message().is_none_or(|t| t > busy) {
            return false;
        }
        if consumer.no_ack {
            return self.outbox.write_stall() <= flow::STUCK;
        }
        let oldest = self.state.lock().unacked.front().map(|u| u.delivered_at);
        oldest.is_none_or(|at| at.elapsed() <= flow::STUCK)
    }

    fn release_credit(st: &mut DeliveryState, taken: &[Unacked]) {
        for u in taken {
            if let Some(c) = &u.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
                st.consumer_unacked -= 1;
            }
        }
    }

    /// Settles deliveries with their queues (acknowledging, requeueing or
    /// rejecting them), then lets the queues this channel consumes from use
    /// the freed credit.
    pub(crate) fn settle(&self, settling: &mut Settling, how: Settle) {
        let Settling {
            taken,
            queues,
            batch,
        } = settling;
        let settled = taken.len() as u64;
        let mut current: Option<Arc<Queue>> = None;
        let flush = |queue: &Arc<Queue>, batch: &mut Vec<QueuedMessage>| match how {
            Settle::Ack => queue.settle(batch.drain(..).map(|m| m.receipt())),
            Settle::Requeue => queue.requeue(batch.drain(..)),
            Settle::Reject => queue.reject(batch.drain(..)),
        };
        for u in taken.drain(..) {
            if let (Settle::Ack, Some(stream), Some(c)) = (how, u.queue.stream(), &u.consumer) {
                stream.acked(c, u.message.seq);
            }
            if current.as_ref().is_some_and(|q| !Arc::ptr_eq(q, &u.queue)) {
                let q = current.take().expect("checked");
                flush(&q, batch);
                queues.push(q);
            }
            current = Some(u.queue);
            batch.push(u.message);
        }
        if let Some(q) = current {
            flush(&q, batch);
            queues.push(q);
        }
        {
            let mut st = self.state.lock();
            if how == Settle::Ack {
                st.counts.acknowledged += settled;
            }
            for c in st.consumers.values() {
                queues.push(c.queue.clone());
            }
        }
        queues.sort_by_key(|q| Arc::as_ptr(q) as usize);
        queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for q in queues.drain(..) {
            q.dispatch();
        }
    }

    /// Numbers a publish on a confirm channel: `on_disk` when its confirm
    /// must wait for the persister, `refused` when it is to be nacked.
    pub(crate) fn confirm_next(&self, on_disk: bool, streams: bool, refused: bool) -> u64 {
        self.confirms.lock().next(on_disk, streams, refused)
    }

    /// Sends the ack owed for everything settled so far.
    pub(crate) fn flush_confirms(&self) {
        let mut c = self.confirms.lock();
        self.send_confirms(&mut c);
    }

    fn send_confirms(&self, c: &mut Confirms) {
        // A cluster leader past its lease deadline confirms nothing (it
        // may already have been replaced): the confirms stay owed, and the
        // connection is closed as the node steps down.
        if !crate::cluster::may_serve() {
            return;
        }
        let id = self.id;
        c.settle(|confirm| match confirm {
            Confirm::AckUpTo(upto) => self
                .outbox
                .push(|buf| encode::basic_ack(buf, id, upto, true)),
            Confirm::Nack(seq) => self
                .outbox
                .push(|buf| encode::basic_nack(buf, id, seq, false)),
        });
    }

    /// The acknowledgement timeout (ms) a delivery has run past, if any:
    /// the queue's x-consumer-timeout, else `default_ms` (0: none).
    pub(crate) fn overdue_ack(&self, default_ms: u64) -> Option<u64> {
        let st = self.state.lock();
        st.unacked.iter().find_map(|u| {
            let timeout = u.queue.consumer_timeout().unwrap_or(default_ms);
            (timeout > 0 && u.delivered_at.elapsed() > Duration::from_millis(timeout))
                .then_some(timeout)
        })
    }

    pub(crate) fn set_prefetch(&self, prefetch: u16, global: bool) {
        let mut st = self.state.lock();
        if global {
            st.channel_prefetch = prefetch;
        } else {
            // RabbitMQ quirk kept for compatibility: a per-consumer qos after
            // a per-channel one lifts the per-channel limit.
            st.consumer_prefetch = prefetch;
            st.channel_prefetch = 0;
        }
    }

    pub(crate) fn consumer_prefetch(&self) -> u16 {
        self.state.lock().consumer_prefetch
    }

    /// Whether an ack for `delivery_tag` would be valid (checked before a
    /// transaction buffers it).
    pub(crate) fn has_unacked(&self, delivery_tag: u64, multiple: bool) -> bool {
        let st = self.state.lock();
        (multiple && delivery_tag == 0) || st.unacked.iter().any(|u| u.delivery_tag == delivery_tag)
    }

    pub(crate) fn has_consumer(&self, tag: &str) -> bool {
        self.state.lock().consumers.contains_key(tag)
    }

    pub(crate) fn add_consumer(&self, consumer: Arc<Consumer>) {
        self.state
            .lock()
            .consumers
            .insert(consumer.tag.clone(), consumer);
    }

    pub(crate) fn remove_consumer(&self, tag: &str) -> Option<Arc<Consumer>> {
        self.state.lock().consumers.remove(tag)
    }

    /// The queue deleted itself: forget the consumer and tell the client.
    pub(crate) fn cancel_by_broker(&self, consumer: &Arc<Consumer>) {
        let mut st = self.state.lock();
        let removed = st.consumers.remove(&consumer.tag).is_some();
        if !removed || !self.cancel_notify {
            return;
        }
        if let Some(held) = &mut st.held_cancels {
            held.push(consumer.clone());
            return;
        }
        drop(st);
        self.send_cancel(consumer);
    }

    fn send_cancel(&self, consumer: &Consumer) {
        self.send(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: consumer.tag.as_str().into(),
            nowait: true,
        })));
    }

    /// Keeps the basic.cancel of consumers a queue cancels back until
    /// `release_cancels`: queue.delete on the channel that consumes from
    /// the queue answers delete-ok first, as RabbitMQ (whose channel
    /// hears of the cancel only after its reply).
    pub(crate) fn hold_cancels(&self) {
        self.state.lock().held_cancels.get_or_insert_with(Vec::new);
    }

    /// Sends the basic.cancel notifications held since `hold_cancels`.
    pub(crate) fn release_cancels(&self) {
        let held = self.state.lock().held_cancels.take();
        for consumer in held.into_iter().flatten() {
            self.send_cancel(&consumer);
        }
    }

    /// Marks the channel closed and returns its consumers and deliveries,
    /// which the caller cancels and requeues.
    pub(crate) fn close(&self) -> (Vec<Arc<Consumer>>, Settling) {
        let consumers = {
            let mut st = self.state.lock();
            st.closed = true;
            st.consumers.drain().map(|(_, c)| c).collect()
        };
        (consumers, self.take_all_unacked())
    }
}

impl crate::store::ConfirmSink for ChannelShared {
    /// The persister wrote (or failed to write) everything up to `seq`.
    fn confirm_persisted(&self, seq: u64, ok: bool) {
        let mut c = self.confirms.lock();
        c.persisted(seq, ok);
        self.send_confirms(&mut c);
    }
}

impl ChannelShared {
    /// The streams publish `seq` went to have it on disk (`ok`), or not.
    pub(crate) fn confirm_appended(&self, seq: u64, ok: bool) {
        let mut c = self.confirms.lock();
        c.appended(seq, ok);
        self.send_confirms(&mut c);
    }
}

impl crate::broker::consumer::ConsumerChannel for ChannelShared {
    fn id(&self) -> u16 {
        self.id
    }

    fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        ChannelShared::try_deliver(self, consumer, queue, msg)
    }

    fn keeps_up(&self, consumer: &Consumer, busy: Duration) -> bool {
        ChannelShared::keeps_up(self, consumer, busy)
    }

    fn cancel_by_broker(&self, consumer: &Arc<Consumer>) {
        ChannelShared::cancel_by_broker(self, consumer)
    }

    fn deliver_direct(&self, consumer_tag: &str, message: &Message) {
        ChannelShared::deliver_direct(self, consumer_tag, message)
    }

    fn info(&self) -> ChannelInfo {
        ChannelShared::info(self)
    }

    fn oldest_unacked(&self, consumer: &Consumer) -> Option<Duration> {
        // In delivery order: the first of the consumer's is its oldest.
        let st = self.state.lock();
        st.unacked
            .iter()
            .find(|u| {
                u.consumer
                    .as_deref()
                    .is_some_and(|c| std::ptr::eq(c, consumer))
            })
            .map(|u| u.delivered_at.elapsed())
    }

    fn counts(&self) -> Option<MessageCounts> {
        ChannelShared::counts(self)
    }
}
