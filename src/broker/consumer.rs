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
pub trait ConsumerChannel: Send + Sync {
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
}

/// Confirm or transaction mode, once selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Plain = 0,
    Confirm = 1,
    Transactional = 2,
}

/// A channel as the management API shows it.
pub struct ChannelInfo {
    pub mode: Mode,
    pub prefetch_count: u16,
    pub global_prefetch_count: u16,
    pub unacked: usize,
    pub consumers: Vec<Arc<Consumer>>,
}

pub struct Consumer {
    pub tag: String,
    pub channel: Arc<dyn ConsumerChannel>,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false at consume time); 0 = none.
    pub prefetch: u16,
    pub arguments: FieldTable,
    /// `x-priority`: higher-priority consumers are offered messages first.
    pub priority: i64,
    /// Deliveries not yet acknowledged; changed only under the channel's lock.
    pub unacked: AtomicU32,
    /// How fast it settles messages, for flow control.
    pub pace: Pace,
}
