//! exchange.* and queue.* methods.

use super::basic::random_name;
use super::{Channel, ChannelShared, ConnCtx};
use crate::broker::ops::topology::{self, Bind, BindTo};
use crate::broker::vhost::{ExchangeDeclare, QueueDeclare};
use crate::error::AmqpError;
use amq_protocol::protocol::{exchange, queue, AMQPClass};

impl Channel {
    pub(super) fn handle_exchange_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let (mut gate, vhost) = ctx.gate();
                topology::declare_exchange(
                    &mut gate,
                    vhost,
                    &ExchangeDeclare {
                        name: d.exchange.as_str(),
                        kind: d.kind.as_str(),
                        passive: d.passive,
                        durable: d.durable,
                        auto_delete: d.auto_delete,
                        internal: d.internal,
                        arguments: &d.arguments,
                    },
                )?;
                if !d.nowait {
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        ))),
                    );
                }
            }
            exchange::AMQPMethod::Delete(d) => {
                let (mut gate, vhost) = ctx.gate();
                topology::delete_exchange(&mut gate, vhost, d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                            exchange::DeleteOk {},
                        ))),
                    );
                }
            }
            exchange::AMQPMethod::Bind(b) => {
                let (mut gate, vhost) = ctx.gate();
                topology::bind(
                    &mut gate,
                    vhost,
                    &Bind {
                        source: b.source.as_str(),
                        to: BindTo::Exchange(b.destination.as_str()),
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    None,
                    true,
                )?;
                if !b.nowait {
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(
                            exchange::BindOk {},
                        ))),
                    );
                }
            }
            exchange::AMQPMethod::Unbind(b) => {
                let (mut gate, vhost) = ctx.gate();
                topology::bind(
                    &mut gate,
                    vhost,
                    &Bind {
                        source: b.source.as_str(),
                        to: BindTo::Exchange(b.destination.as_str()),
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    None,
                    false,
                )?;
                if !b.nowait {
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                            exchange::UnbindOk {},
                        ))),
                    );
                }
            }
            other => {
                return Err(AmqpError::command_invalid(format_args!(
                    "method 40.{} not valid from a client",
                    AMQPClass::Exchange(other).get_amqp_method_id()
                )))
            }
        }
        Ok(())
    }

    pub(super) fn handle_queue_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: queue::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match m {
            queue::AMQPMethod::Declare(d) => {
                let name = if d.queue.as_str().is_empty() && !d.passive {
                    random_name("amq.gen-")
                } else {
                    self.queue_name(d.queue.as_str())?.to_string()
                };
                let connection = ctx.id;
                let (mut gate, vhost) = ctx.gate();
                let (queue, created) = topology::declare_queue(
                    &mut gate,
                    vhost,
                    &QueueDeclare {
                        name: &name,
                        passive: d.passive,
                        durable: d.durable,
                        exclusive: d.exclusive,
                        auto_delete: d.auto_delete,
                        arguments: &d.arguments,
                        connection,
                    },
                )?;
                if created && d.exclusive {
                    ctx.exclusive_queues.push(queue.clone());
                }
                self.last_queue = Some(name.clone());
                if !d.nowait {
                    let counts = queue.counts();
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(
                            queue::DeclareOk {
                                queue: name.as_str().into(),
                                message_count: counts.ready as u32,
                                consumer_count: counts.consumers as u32,
                            },
                        ))),
                    );
                }
            }
            queue::AMQPMethod::Bind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                let owner = Some(ctx.id);
                let (mut gate, vhost) = ctx.gate();
                topology::bind(
                    &mut gate,
                    vhost,
                    &Bind {
                        source: b.exchange.as_str(),
                        to: BindTo::Queue(name),
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    owner,
                    true,
                )?;
                if !b.nowait {
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                            queue::BindOk {},
                        ))),
                    );
                }
            }
            queue::AMQPMethod::Unbind(b) => {
                let name = self.queue_name(b.queue.as_str())?;
                let owner = Some(ctx.id);
                let (mut gate, vhost) = ctx.gate();
                topology::bind(
                    &mut gate,
                    vhost,
                    &Bind {
                        source: b.exchange.as_str(),
                        to: BindTo::Queue(name),
                        routing_key: b.routing_key.as_str(),
                        arguments: &b.arguments,
                    },
                    owner,
                    false,
                )?;
                ctx.reply_when_durable(
                    &self.shared,
                    Some(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                        queue::UnbindOk {},
                    ))),
                );
            }
            queue::AMQPMethod::Purge(p) => {
                let name = self.queue_name(p.queue.as_str())?;
                let owner = Some(ctx.id);
                let (mut gate, vhost) = ctx.gate();
                let count = topology::purge_queue(&mut gate, vhost, name, owner)?;
                if !p.nowait {
                    self.shared
                        .send(AMQPClass::Queue(queue::AMQPMethod::PurgeOk(
                            queue::PurgeOk {
                                message_count: count as u32,
                            },
                        )));
                }
            }
            queue::AMQPMethod::Delete(d) => {
                let name = self.queue_name(d.queue.as_str())?;
                let owner = Some(ctx.id);
                let (mut gate, vhost) = ctx.gate();
                // This channel's own consumers hear of the deletion after
                // delete-ok (RabbitMQ's order).
                self.shared.hold_cancels();
                let deleted =
                    topology::delete_queue(&mut gate, vhost, name, d.if_unused, d.if_empty, owner);
                let deleted = deleted.inspect_err(|_| self.shared.release_cancels())?;
                let count = match deleted {
                    Some((queue, count)) => {
                        ctx.exclusive_queues
                            .retain(|q| !std::sync::Arc::ptr_eq(q, &queue));
                        count
                    }
                    None => 0,
                };
                if d.nowait {
                    self.shared.release_cancels();
                } else {
                    ctx.reply_when_durable_then(
                        &self.shared,
                        Some(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                            queue::DeleteOk {
                                message_count: count as u32,
                            },
                        ))),
                        ChannelShared::release_cancels,
                    );
                }
            }
            other => {
                return Err(AmqpError::command_invalid(format_args!(
                    "method 50.{} not valid from a client",
                    AMQPClass::Queue(other).get_amqp_method_id()
                )))
            }
        }
        Ok(())
    }
}
