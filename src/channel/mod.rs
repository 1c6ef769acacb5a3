//! A channel as its connection's reader task sees it: the state machine for
//! content frames, confirms, transactions, and the method handlers.

pub(crate) mod basic;
pub(crate) mod confirms;
pub(crate) mod publish;
pub(crate) mod shared;
pub(crate) mod topology;

use crate::broker::access::{Access, Resource};
use crate::broker::queue::Queue;
use crate::broker::topic_permissions::VhostTopicPermissions;
use crate::broker::vhost::{Routing, VHost};
use crate::broker::Broker;
use crate::connection::outbox::Outbox;
use crate::error::AmqpError;
use crate::protocol::method::Method;
use amq_protocol::protocol::{channel, confirm, tx, AMQPClass};
use publish::{PendingContent, Transaction};
use shared::{ChannelShared, Settle, Settling};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a method whose reply must wait (for a flush, for messages read back
/// from disk) does once the wait is over: sends the reply, or fails the
/// channel. It runs on the connection's task, like the handler did.
pub(crate) type Resume =
    Box<dyn FnOnce(&mut Channel, &mut ConnCtx) -> Result<(), AmqpError> + Send>;

/// A channel method waiting for its reply. The connection reads no further
/// frame until `until` completes and its [`Resume`] ran, so replies stay in
/// order; a worker thread never blocks meanwhile.
pub(crate) struct Waiting {
    pub(crate) channel: u16,
    pub(crate) until: Pin<Box<dyn Future<Output = Resume> + Send>>,
}

/// What channel handlers need from their connection.
pub(crate) struct ConnCtx {
    pub(crate) id: u64,
    pub(crate) broker: Arc<Broker>,
    pub(crate) vhost: Arc<VHost>,
    pub(crate) user: String,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) frame_max: u32,
    pub(crate) cancel_notify: bool,
    /// The client understands connection.blocked / unblocked.
    pub(crate) blocked_notify: bool,
    /// Set once the connection publishes: only publishers are blocked by
    /// the memory alarm, so consumers can keep draining.
    pub(crate) has_published: bool,
    /// A queue this connection published to asked publishers to wait:
    /// the connection stops reading until it no longer does.
    pub(crate) flow: Option<Arc<Queue>>,
    /// A method's reply waits: the connection awaits it before reading on.
    pub(crate) waiting: Option<Waiting>,
    /// Topology writes queued before the current exchange/queue method
    /// (see `Store::meta_queued`): its reply waits for those after it.
    pub(crate) meta_mark: u64,
    /// Class and method id of the method being handled (not kept up to
    /// date for publish and acknowledgements).
    pub(crate) method: (u16, u16),
    /// Exclusive queues this connection declared, deleted when it closes.
    pub(crate) exclusive_queues: Vec<Arc<Queue>>,
    /// Recent successful permission checks, so a publisher is not matched
    /// against a regex per message.
    pub(crate) allowed: AllowedCache,
}

/// The last few permission checks that passed (RabbitMQ keeps 12 per
/// channel) and the user's topic permissions in the vhost, valid while no
/// user or permission changed.
#[derive(Default)]
pub(crate) struct AllowedCache {
    generation: u64,
    entries: Vec<(Access, Resource, String)>,
    /// None when the user has no topic permission in the vhost: a
    /// publish to a topic exchange then checks nothing more.
    topics: Option<Arc<VhostTopicPermissions>>,
}

const ALLOWED_CACHE_SIZE: usize = 12;

/// A connection's permission checks, borrowed apart from its vhost so an
/// operation can be handed both without cloning the vhost's `Arc` (shared
/// by every connection: a refcount bounced between cores per message).
pub(crate) struct ConnGate<'a> {
    broker: &'a Broker,
    user: &'a str,
    vhost: &'a str,
    allowed: &'a mut AllowedCache,
}

impl crate::broker::ops::Gate for ConnGate<'_> {
    fn user(&self) -> &str {
        self.user
    }

    /// RabbitMQ's permission check for `access` to a named resource in the
    /// connection's vhost, through the cache of recent checks that passed.
    fn check(&mut self, access: Access, resource: Resource, name: &str) -> Result<(), AmqpError> {
        self.refresh();
        let cache = &mut *self.allowed;
        if cache
            .entries
            .iter()
            .any(|(a, r, n)| *a == access && *r == resource && n == name)
        {
            return Ok(());
        }
        self.broker
            .access
            .check(self.user, self.vhost, access, resource, name)?;
        if cache.entries.len() == ALLOWED_CACHE_SIZE {
            cache.entries.remove(0);
        }
        cache.entries.push((access, resource, name.to_string()));
        Ok(())
    }

    fn check_topic(
        &mut self,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        self.refresh();
        match &self.allowed.topics {
            None => Ok(()),
            Some(topics) => topics.check(self.user, self.vhost, access, exchange, routing_key),
        }
    }
}

impl ConnGate<'_> {
    /// Empties the cache and looks the topic permissions up again when
    /// users or permissions changed since it was filled.
    fn refresh(&mut self) {
        let generation = self.broker.access.generation();
        let cache = &mut *self.allowed;
        if cache.generation != generation {
            cache.generation = generation;
            cache.entries.clear();
            cache.topics = self
                .broker
                .access
                .topic_permissions_of(self.vhost, self.user);
        }
    }
}

impl ConnCtx {
    /// The reply of a method on `channel` waits for `until`; then `Resume`
    /// runs. One wait at a time: a handler sets at most one.
    pub(crate) fn wait(
        &mut self,
        channel: u16,
        until: impl Future<Output = Resume> + Send + 'static,
    ) {
        debug_assert!(self.waiting.is_none());
        self.waiting = Some(Waiting {
            channel,
            until: Box::pin(until),
        });
    }

    /// Sends `reply` on `channel` once the topology writes queued since
    /// `meta_mark` are durable, or fails the method with 541 if one of
    /// them could not be written. Sent at once when there were none.
    /// Without a reply (nowait) the connection still waits, so a client
    /// cannot queue writes faster than the disk takes them.
    pub(crate) fn reply_when_durable(&mut self, channel: &ChannelShared, reply: Option<AMQPClass>) {
        self.reply_when_durable_then(channel, reply, |_| {});
    }

    /// `reply_when_durable`, then `after` on the channel once the reply
    /// is out (or would have been, with nowait).
    pub(crate) fn reply_when_durable_then(
        &mut self,
        channel: &ChannelShared,
        reply: Option<AMQPClass>,
        after: fn(&ChannelShared),
    ) {
        let Some(durable) = self.broker.store.meta_durable_since(self.meta_mark) else {
            if let Some(reply) = reply {
                channel.send(reply);
            }
            after(channel);
            return;
        };
        let (class_id, method_id) = self.method;
        self.wait(channel.id, async move {
            let written = durable.await;
            Box::new(move |channel: &mut Channel, _: &mut ConnCtx| {
                written.map_err(|e| {
                    AmqpError::internal_error(format_args!("cannot write to the store: {e}"))
                        .on_method(class_id, method_id)
                })?;
                if let Some(reply) = reply {
                    channel.shared.send(reply);
                }
                after(&channel.shared);
                Ok(())
            }) as Resume
        });
    }

    /// The connection's permission checks and its vhost, for an operation
    /// of `broker::ops`.
    pub(crate) fn gate(&mut self) -> (ConnGate<'_>, &VHost) {
        let gate = ConnGate {
            broker: &self.broker,
            user: &self.user,
            vhost: &self.vhost.name,
            allowed: &mut self.allowed,
        };
        (gate, &self.vhost)
    }

    /// RabbitMQ's permission check for `access` to a named resource in this
    /// connection's vhost: 403 ACCESS_REFUSED naming it when refused.
    pub(crate) fn check(
        &mut self,
        access: Access,
        resource: Resource,
        name: &str,
    ) -> Result<(), AmqpError> {
        use crate::broker::ops::Gate;
        self.gate().0.check(access, resource, name)
    }
}

pub(crate) struct Channel {
    pub(crate) shared: Arc<ChannelShared>,
    /// The broker sent channel.close and waits for close-ok; everything else
    /// on the channel is discarded meanwhile.
    pub(crate) closing: bool,
    content: Option<PendingContent>,
    /// confirm.select was received: every publish gets a sequence number.
    confirm: bool,
    tx: Option<Transaction>,
    /// The queue last declared on this channel (an empty queue name means it).
    last_queue: Option<String>,
    /// This channel's direct reply-to address while it consumes from
    /// `amq.rabbitmq.reply-to`.
    reply_to: Option<String>,
    reply_to_consumer_tag: Option<String>,
    /// Reused for every message published on the channel.
    routing: Routing,
    /// Reused for every acknowledgement.
    settling: Settling,
    /// What this task counts (publishes, routing, empty gets), handed to
    /// `shared` once per batch of frames when it changed.
    counts: crate::broker::counters::MessageCounts,
    counts_changed: bool,
}

/// A handler's outcome besides errors: whether the channel is gone.
pub(crate) enum Outcome {
    Continue,
    /// The client closed the channel (close-ok already sent).
    Closed,
}

impl Channel {
    pub(crate) fn new(shared: Arc<ChannelShared>) -> Channel {
        Channel {
            shared,
            closing: false,
            content: None,
            routing: Routing::default(),
            settling: Settling::default(),
            counts: Default::default(),
            counts_changed: false,
            confirm: false,
            tx: None,
            last_queue: None,
            reply_to: None,
            reply_to_consumer_tag: None,
        }
    }

    pub(crate) fn id(&self) -> u16 {
        self.shared.id
    }

    /// Handles a method frame; errors carry the failing class and method.
    pub(crate) fn handle_method(
        &mut self,
        ctx: &mut ConnCtx,
        method: Method,
    ) -> Result<Outcome, AmqpError> {
        if let Some(content) = &self.content {
            return Err(content.unexpected_frame().on_method(60, 40));
        }
        match method {
            Method::Publish(p) => self
                .handle_basic_publish(ctx, p)
                .map_err(|e| e.on_method(60, 40)),
            Method::Ack {
                delivery_tag,
                multiple,
            } => self
                .handle_basic_ack(delivery_tag, multiple)
                .map_err(|e| e.on_method(60, 80)),
            Method::Nack {
                delivery_tag,
                multiple,
                requeue,
            } => self
                .handle_basic_nack(delivery_tag, multiple, requeue)
                .map_err(|e| e.on_method(60, 120)),
            Method::Reject {
                delivery_tag,
                requeue,
            } => self
                .handle_basic_nack(delivery_tag, false, requeue)
                .map_err(|e| e.on_method(60, 90)),
            Method::Other(class) => {
                let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
                ctx.method = (class_id, method_id);
                return self
                    .handle_class(ctx, *class)
                    .map_err(|e| e.on_method(class_id, method_id));
            }
        }
        .map(|()| Outcome::Continue)
    }

    fn handle_class(&mut self, ctx: &mut ConnCtx, class: AMQPClass) -> Result<Outcome, AmqpError> {
        match class {
            AMQPClass::Channel(m) => return self.handle_channel_method(ctx, m),
            AMQPClass::Exchange(m) => {
                ctx.meta_mark = ctx.broker.store.meta_queued();
                self.handle_exchange_method(ctx, m)?;
                self.wait_for_topology_writes(ctx);
            }
            AMQPClass::Queue(m) => {
                ctx.meta_mark = ctx.broker.store.meta_queued();
                self.handle_queue_method(ctx, m)?;
                self.wait_for_topology_writes(ctx);
            }
            AMQPClass::Basic(m) => self.handle_basic_method(ctx, m)?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                self.handle_confirm_select(s.nowait)?
            }
            AMQPClass::Tx(m) => self.handle_tx_method(ctx, m)?,
            AMQPClass::Access(_) => {
                self.shared.send(AMQPClass::Access(
                    amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        amq_protocol::protocol::access::RequestOk {},
                    ),
                ));
            }
            other => {
                return Err(AmqpError::command_invalid(format_args!(
                    "method {}.{} not valid from a client",
                    other.get_amqp_class_id(),
                    other.get_amqp_method_id()
                )))
            }
        }
        Ok(Outcome::Continue)
    }

    fn handle_channel_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: channel::AMQPMethod,
    ) -> Result<Outcome, AmqpError> {
        match m {
            channel::AMQPMethod::Open(_) => {
                Err(AmqpError::channel_error("second 'channel.open' seen"))
            }
            // As RabbitMQ: pausing deliveries is not offered (consumers use
            // prefetch instead), so active=false is a connection error.
            channel::AMQPMethod::Flow(f) if !f.active => {
                Err(AmqpError::not_implemented("active=false").on_method(20, 20))
            }
            channel::AMQPMethod::Flow(_) => {
                self.shared
                    .send(AMQPClass::Channel(channel::AMQPMethod::FlowOk(
                        channel::FlowOk { active: true },
                    )));
                Ok(Outcome::Continue)
            }
            channel::AMQPMethod::Close(_) => {
                self.release(ctx);
                self.shared
                    .send(AMQPClass::Channel(channel::AMQPMethod::CloseOk(
                        channel::CloseOk {},
                    )));
                Ok(Outcome::Closed)
            }
            channel::AMQPMethod::CloseOk(_) => Ok(Outcome::Closed),
            other => Err(AmqpError::command_invalid(format_args!(
                "method 20.{} not valid from a client",
                AMQPClass::Channel(other).get_amqp_method_id()
            ))),
        }
    }

    fn handle_confirm_select(&mut self, nowait: bool) -> Result<(), AmqpError> {
        if self.tx.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from tx to confirm mode",
            ));
        }
        if !self.confirm {
            self.confirm = true;
            self.shared.set_mode(shared::Mode::Confirm);
        }
        if !nowait {
            self.shared
                .send(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                    confirm::SelectOk {},
                )));
        }
        Ok(())
    }

    fn handle_tx_method(&mut self, ctx: &mut ConnCtx, m: tx::AMQPMethod) -> Result<(), AmqpError> {
        match m {
            tx::AMQPMethod::Select(_) => {
                if self.confirm {
                    return Err(AmqpError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                self.tx.get_or_insert_with(Transaction::default);
                self.shared.set_mode(shared::Mode::Transactional);
                self.shared
                    .send(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(txn) = self.tx.as_mut() else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                let work = std::mem::take(txn);
                self.commit(ctx, work)?;
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(txn) = self.tx.as_mut() else {
                    return Err(AmqpError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                *txn = Transaction::default();
                self.shared
                    .send(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})));
            }
            other => {
                return Err(AmqpError::command_invalid(format_args!(
                    "method 90.{} not valid from a client",
                    AMQPClass::Tx(other).get_amqp_method_id()
                )))
            }
        }
        Ok(())
    }

    /// Releases everything the channel holds: consumers are cancelled (and
    /// auto-delete queues they leave empty deleted), unacknowledged messages
    /// go back to their queues.
    pub(crate) fn release(&mut self, ctx: &ConnCtx) {
        self.content = None;
        self.tx = None;
        if let Some(name) = self.reply_to.take() {
            ctx.broker.reply_to.remove(&name);
        }
        let (consumers, mut unacked) = self.shared.close();
        for consumer in consumers {
            if consumer.queue.remove_consumer(&consumer) {
                ctx.vhost.delete_queue(&consumer.queue);
            }
        }
        self.shared.settle(&mut unacked, Settle::Requeue);
        self.shared.publish_counts(&self.counts);
        ctx.broker
            .counters
            .channel_closed(&ctx.vhost.name, || self.shared.retire());
    }

    /// A nowait method (no reply to hold back) that wrote topology still
    /// waits for the write before the connection reads on.
    fn wait_for_topology_writes(&mut self, ctx: &mut ConnCtx) {
        if ctx.waiting.is_none() {
            ctx.reply_when_durable(&self.shared, None);
        }
    }

    /// Resolves an empty queue name to the channel's last declared queue.
    fn queue_name<'a>(&'a self, name: &'a str) -> Result<&'a str, AmqpError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.last_queue
            .as_deref()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }
}
