//! exchange.* and queue.* methods.

use super::basic::random_name;
use super::{Channel, ConnCtx};
use crate::broker::access::{Access, Resource};
use crate::broker::exchange::headers::HeadersMatcher;
use crate::broker::exchange::{Binding, Destination, ExchangeKind};
use crate::broker::vhost::{ExchangeDeclare, QueueDeclare};
use crate::error::AmqpError;
use amq_protocol::protocol::{exchange, queue, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable};

fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

/// RabbitMQ's checks for a (un)bind, in its order: write on the
/// destination, neither end the default exchange, read on the source.
fn check_bind(
    ctx: &mut ConnCtx,
    kind: Resource,
    destination: &str,
    source: &str,
) -> Result<(), AmqpError> {
    ctx.check(Access::Write, kind, destination)?;
    if source.is_empty() || (kind == Resource::Exchange && destination.is_empty()) {
        return Err(default_exchange_refused());
    }
    ctx.check(Access::Read, Resource::Exchange, source)
}

impl Channel {
    pub(super) fn handle_exchange_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: exchange::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str();
                if !d.passive && !name.is_empty() && ExchangeKind::parse(d.kind.as_str()).is_some()
                {
                    ctx.check(Access::Configure, Resource::Exchange, name)?;
                    if let (Some(AMQPValue::LongString(ae)), Err(_)) = (
                        d.arguments.inner().get("alternate-exchange"),
                        ctx.vhost.exchange(name),
                    ) {
                        ctx.check(Access::Read, Resource::Exchange, name)?;
                        ctx.check(Access::Write, Resource::Exchange, &ae.to_string())?;
                    }
                }
                ctx.vhost.declare_exchange(&ExchangeDeclare {
                    name: d.exchange.as_str(),
                    kind: d.kind.as_str(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: &d.arguments,
                })?;
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
                let name = d.exchange.as_str();
                if !name.is_empty() && !name.starts_with("amq.") {
                    ctx.check(Access::Configure, Resource::Exchange, name)?;
                }
                ctx.vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
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
                check_bind(
                    ctx,
                    Resource::Exchange,
                    b.destination.as_str(),
                    b.source.as_str(),
                )?;
                self.bind(
                    ctx,
                    b.source.as_str(),
                    Destination::Exchange(b.destination.to_string()),
                    b.routing_key.as_str(),
                    &b.arguments,
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
                check_bind(
                    ctx,
                    Resource::Exchange,
                    b.destination.as_str(),
                    b.source.as_str(),
                )?;
                self.bind(
                    ctx,
                    b.source.as_str(),
                    Destination::Exchange(b.destination.to_string()),
                    b.routing_key.as_str(),
                    &b.arguments,
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

    /// exchange.bind/unbind and queue.bind/unbind.
    fn bind(
        &mut self,
        ctx: &mut ConnCtx,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        add: bool,
    ) -> Result<(), AmqpError> {
        if let Destination::Exchange(name) = &destination {
            if name.is_empty() {
                return Err(default_exchange_refused());
            }
            ctx.vhost.exchange(name)?;
        }
        if source.is_empty() {
            return Err(default_exchange_refused());
        }
        let source = ctx.vhost.exchange(source)?;
        if add {
            if source.kind == ExchangeKind::Headers {
                HeadersMatcher::new(arguments).map_err(AmqpError::precondition_failed)?;
            }
            ctx.vhost.bind(
                &source,
                Binding {
                    destination,
                    routing_key: routing_key.to_string(),
                    arguments: arguments.clone(),
                },
            );
        } else {
            ctx.vhost
                .unbind(&source, &destination, routing_key, arguments);
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
                if !d.passive {
                    ctx.check(Access::Configure, Resource::Queue, &name)?;
                    if let (Some(AMQPValue::LongString(dlx)), Err(_)) = (
                        d.arguments.inner().get("x-dead-letter-exchange"),
                        ctx.vhost.queue(&name),
                    ) {
                        ctx.check(Access::Read, Resource::Queue, &name)?;
                        ctx.check(Access::Write, Resource::Exchange, &dlx.to_string())?;
                    }
                }
                let (queue, created) = ctx.vhost.declare_queue(&QueueDeclare {
                    name: &name,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: &d.arguments,
                    connection: ctx.id,
                })?;
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
                check_bind(ctx, Resource::Queue, name, b.exchange.as_str())?;
                let queue = ctx.vhost.queue(name)?;
                queue.check_owner(ctx.id)?;
                self.bind(
                    ctx,
                    b.exchange.as_str(),
                    Destination::Queue(queue),
                    b.routing_key.as_str(),
                    &b.arguments,
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
                check_bind(ctx, Resource::Queue, name, b.exchange.as_str())?;
                let queue = ctx.vhost.queue(name)?;
                queue.check_owner(ctx.id)?;
                self.bind(
                    ctx,
                    b.exchange.as_str(),
                    Destination::Queue(queue),
                    b.routing_key.as_str(),
                    &b.arguments,
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
                ctx.check(Access::Read, Resource::Queue, name)?;
                let queue = ctx.vhost.queue(name)?;
                queue.check_owner(ctx.id)?;
                let count = queue.purge();
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
                ctx.check(Access::Configure, Resource::Queue, name)?;
                let count = match ctx.vhost.queue(name) {
                    Ok(queue) => {
                        queue.check_owner(ctx.id)?;
                        queue.check_delete(d.if_unused, d.if_empty)?;
                        ctx.exclusive_queues
                            .retain(|q| !std::sync::Arc::ptr_eq(q, &queue));
                        ctx.vhost.delete_queue(&queue)
                    }
                    Err(_) => 0,
                };
                if !d.nowait {
                    ctx.reply_when_durable(
                        &self.shared,
                        Some(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                            queue::DeleteOk {
                                message_count: count as u32,
                            },
                        ))),
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
