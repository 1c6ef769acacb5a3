//! A consumer: the link between a queue and the channel it delivers to,
//! and what the broker needs of that channel (`ConsumerChannel`, which the
//! AMQP channel implements), so the broker does not depend on channels.

use super::flow::Pace;
use super::queue::Queue;
use crate::message::Message;
use crate::store::QueuedMessage;
use amq_protocol::types::FieldTable;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

/// The channel a consumer (or a direct reply-to address) delivers through.
pub(crate) trait ConsumerChannel: Send + Sync {
    /// The channel's number on its connection.
    fn id(&self) -> u16;
    /// Hands `msg` to `consumer` unless its prefetch or the channel is
    /// full (or the channel closed): then the message comes back.
    fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        msg: QueuedMessage,
    ) -> Result<(), QueuedMessage>;
    /// Whether the consumer settles fast enough that its queue need not
    /// ask publishers to wait (flow control).
    fn keeps_up(&self, consumer: &Consumer, busy: Duration) -> bool;
    /// The queue went away: the consumer is told (basic.cancel) if it
    /// asked to be.
    fn cancel_by_broker(&self, consumer: &Arc<Consumer>);
    /// A message for the channel's direct reply-to consumer.
    fn deliver_direct(&self, consumer_tag: &str, message: &Message);
    /// The channel as the management API shows it.
    fn info(&self) -> ChannelInfo;
    /// How long the oldest delivery to `consumer` still unacknowledged has
    /// waited, if it has one.
    fn oldest_unacked(&self, _consumer: &Consumer) -> Option<Duration> {
        None
    }
    /// Its message counts for `/metrics`; None once they joined the
    /// broker's retired totals.
    fn counts(&self) -> Option<super::counters::MessageCounts> {
        None
    }
}

/// Confirm or transaction mode, once selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    Plain = 0,
    Confirm = 1,
    Transactional = 2,
}

/// A channel as the management API shows it.
pub(crate) struct ChannelInfo {
    pub(crate) mode: Mode,
    pub(crate) prefetch_count: u16,
    pub(crate) global_prefetch_count: u16,
    pub(crate) unacked: usize,
    /// Publishes not yet acked or nacked to a confirm-mode publisher.
    pub(crate) unconfirmed: u64,
    pub(crate) consumers: Vec<Arc<Consumer>>,
}

pub(crate) struct Consumer {
    pub(crate) tag: String,
    pub(crate) channel: Arc<dyn ConsumerChannel>,
    pub(crate) queue: Arc<Queue>,
    pub(crate) no_ack: bool,
    pub(crate) exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false at consume time); 0 = none.
    pub(crate) prefetch: u16,
    pub(crate) arguments: FieldTable,
    /// `x-priority`: higher-priority consumers are offered messages first.
    pub(crate) priority: i64,
    /// Deliveries not yet acknowledged; changed only under the channel's lock.
    pub(crate) unacked: AtomicU32,
    /// How fast it settles messages, for flow control.
    pub(crate) pace: Pace,
    /// A stream consumer whose acknowledged offset the stream stores
    /// under its tag (`stream_consume::ReadSpec::track`).
    pub(crate) tracks_offset: bool,
}
