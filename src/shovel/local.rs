//! A shovel's ends on this broker (a URI without a host): the source is a
//! consumer on the queue like any channel's, delivering into an [`Inbox`]
//! the worker drains; the destination publishes through `ops::publish`,
//! the path every publisher takes. Queues the shovel names are declared
//! durable when missing, as RabbitMQ's shovel declares them.

use crate::broker::consumer::{ChannelInfo, Consumer, ConsumerChannel, Mode};
use crate::broker::ops::topology::{self, Bind, BindTo};
use crate::broker::ops::Gate;
use crate::broker::queue::Queue;
use crate::broker::vhost::{QueueDeclare, VHost};
use crate::error::AmqpError;
use crate::message::Message;
use crate::store::QueuedMessage;
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The shovel acts on the broker's own authority, as RabbitMQ's shovel
/// user: no permission checks, and messages keep the `user_id` their
/// publisher set.
pub(super) struct ShovelGate;

impl Gate for ShovelGate {
    fn user(&self) -> &str {
        ""
    }

    fn check(
        &mut self,
        _: crate::broker::access::Access,
        _: crate::broker::access::Resource,
        _: &str,
    ) -> Result<(), AmqpError> {
        Ok(())
    }

    fn check_topic(
        &mut self,
        _: crate::broker::access::Access,
        _: &str,
        _: &str,
    ) -> Result<(), AmqpError> {
        Ok(())
    }

    fn checks_user_id(&self) -> bool {
        false
    }
}

/// Where the source queue delivers: at most `limit` messages held (in the
/// inbox or waiting for their confirm), so a shovel's memory is bounded by
/// its prefetch.
pub(super) struct Inbox {
    state: Mutex<InboxState>,
    wake: Notify,
    limit: usize,
    no_ack: bool,
}

#[derive(Default)]
struct InboxState {
    ready: VecDeque<QueuedMessage>,
    /// Delivered and not yet settled or requeued.
    held: usize,
    closed: bool,
    /// The queue went away.
    cancelled: bool,
}

impl Inbox {
    pub(super) fn new(limit: usize, no_ack: bool) -> Arc<Inbox> {
        Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            wake: Notify::new(),
            limit: limit.max(1),
            no_ack,
        })
    }

    /// Takes what was delivered; `cancelled` when the queue is gone.
    pub(super) fn take(&self, into: &mut Vec<QueuedMessage>) -> bool {
        let mut st = self.state.lock();
        into.extend(st.ready.drain(..));
        st.cancelled
    }

    /// Completes when something was delivered (or the queue went away).
    pub(super) async fn wait(&self) {
        self.wake.notified().await
    }

    /// `n` held messages were settled or requeued: room for more.
    pub(super) fn released(&self, n: usize) {
        let mut st = self.state.lock();
        st.held = st.held.saturating_sub(n);
    }

    /// Refuses further deliveries and hands back what was not taken.
    pub(super) fn close(&self) -> Vec<QueuedMessage> {
        let mut st = self.state.lock();
        st.closed = true;
        st.ready.drain(..).collect()
    }
}

impl ConsumerChannel for Inbox {
    fn id(&self) -> u16 {
        1
    }

    fn try_deliver(
        &self,
        _consumer: &Arc<Consumer>,
        _queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage> {
        let mut st = self.state.lock();
        if st.closed || st.held >= self.limit {
            return Err(msg);
        }
        st.held += 1;
        st.ready.push_back(msg);
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// A shovel moving a backlog is never a reason to hold publishers back.
    fn keeps_up(&self, _: &Consumer, _: Duration) -> bool {
        false
    }

    fn cancel_by_broker(&self, _: &Arc<Consumer>) {
        self.state.lock().cancelled = true;
        self.wake.notify_one();
    }

    fn deliver_direct(&self, _: &str, _: &Message) {}

    fn info(&self) -> ChannelInfo {
        ChannelInfo {
            mode: Mode::Plain,
            prefetch_count: self.limit.min(u16::MAX as usize) as u16,
            global_prefetch_count: 0,
            unacked: if self.no_ack {
                0
            } else {
                self.state.lock().held
            },
            unconfirmed: 0,
            consumers: Vec::new(),
        }
    }
}

/// A consumer for the shovel on `queue`, with `arguments` as
/// basic.consume's.
pub(super) fn consumer(
    tag: String,
    inbox: &Arc<Inbox>,
    queue: &Arc<Queue>,
    arguments: FieldTable,
) -> Arc<Consumer> {
    Arc::new(Consumer {
        tag,
        channel: inbox.clone(),
        queue: queue.clone(),
        no_ack: inbox.no_ack,
        exclusive: false,
        prefetch: inbox.limit.min(u16::MAX as usize) as u16,
        arguments,
        priority: 0,
        unacked: AtomicU32::new(0),
        pace: Default::default(),
        tracks_offset: false,
    })
}

/// RabbitMQ's `ensure_queue`: the queue if it exists, else declared
/// durable with `args`.
pub(super) fn ensure_queue(
    vhost: &VHost,
    name: &str,
    args: &Value,
    owner: u64,
) -> Result<Arc<Queue>, AmqpError> {
    if let Ok(q) = vhost.queue(name) {
        return Ok(q);
    }
    let arguments = table(args);
    topology::declare_queue(
        &mut ShovelGate,
        vhost,
        &QueueDeclare {
            name,
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: &arguments,
            connection: owner,
        },
    )
    .map(|(q, _)| q)
}

/// An exchange source: an exclusive queue of the shovel's, bound to it.
pub(super) fn bound_queue(
    vhost: &VHost,
    exchange: &str,
    key: &str,
    owner: u64,
) -> Result<Arc<Queue>, AmqpError> {
    let name = format!("amq.gen-shovel-{owner}");
    let arguments = FieldTable::default();
    let (queue, _) = topology::declare_queue(
        &mut ShovelGate,
        vhost,
        &QueueDeclare {
            name: &name,
            passive: false,
            durable: false,
            exclusive: true,
            auto_delete: false,
            arguments: &arguments,
            connection: owner,
        },
    )?;
    let bound = topology::bind(
        &mut ShovelGate,
        vhost,
        &Bind {
            source: exchange,
            to: BindTo::Queue(&name),
            routing_key: key,
            arguments: &arguments,
        },
        Some(owner),
        true,
    );
    if let Err(e) = bound {
        vhost.delete_queue(&queue);
        return Err(e);
    }
    Ok(queue)
}

/// Arguments as a definition gives them (`src-queue-args`,
/// `src-consumer-args`): strings, numbers and booleans.
pub(super) fn table(v: &Value) -> FieldTable {
    let mut t = FieldTable::default();
    if let Value::Object(m) = v {
        for (k, v) in m {
            let value = match v {
                Value::String(s) => AMQPValue::LongString(s.as_str().into()),
                Value::Bool(b) => AMQPValue::Boolean(*b),
                Value::Number(n) if n.is_i64() => AMQPValue::LongLongInt(n.as_i64().unwrap_or(0)),
                Value::Number(n) => AMQPValue::Double(n.as_f64().unwrap_or(0.0)),
                _ => continue,
            };
            t.insert(k.as_str().into(), value);
        }
    }
    t
}
