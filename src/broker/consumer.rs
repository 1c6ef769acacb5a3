//! A consumer: the link between a queue and the channel it delivers to.

use super::flow::Pace;
use super::queue::Queue;
use crate::channel::shared::ChannelShared;
use amq_protocol::types::FieldTable;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

pub struct Consumer {
    pub tag: String,
    pub channel: Arc<ChannelShared>,
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
