//! Declaring, deleting, binding and purging, with the permission rules of
//! RabbitMQ's channel, for AMQP channels, the management API and
//! definitions import alike. Callers keep only what is theirs: reply
//! frames and HTTP shapes, and which connection (if any) asks.

use super::Gate;
use crate::broker::access::{Access, Resource};
use crate::broker::exchange::headers::HeadersMatcher;
use crate::broker::exchange::{Binding, Destination, ExchangeKind};
use crate::broker::queue::Queue;
use crate::broker::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use crate::error::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};
use std::sync::Arc;

fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

/// exchange.declare: configure on the exchange; declaring a new one with
/// an alternate exchange also needs read on it and write on the alternate
/// (RabbitMQ's rule). Returns whether it was created.
pub(crate) fn declare_exchange(
    gate: &mut impl Gate,
    vhost: &VHost,
    d: &ExchangeDeclare<'_>,
) -> Result<bool, AmqpError> {
    let existed = vhost.exchange(d.name).is_ok();
    if !d.passive && !d.name.is_empty() && ExchangeKind::parse(d.kind).is_some() {
        gate.check(Access::Configure, Resource::Exchange, d.name)?;
        if let (Some(AMQPValue::LongString(ae)), false) =
            (d.arguments.inner().get("alternate-exchange"), existed)
        {
            gate.check(Access::Read, Resource::Exchange, d.name)?;
            gate.check(Access::Write, Resource::Exchange, &ae.to_string())?;
        }
    }
    vhost.declare_exchange(d)?;
    Ok(!existed)
}

/// exchange.delete: configure on the exchange (the default and `amq.*`
/// exchanges are refused by the vhost whatever the permissions).
pub(crate) fn delete_exchange(
    gate: &mut impl Gate,
    vhost: &VHost,
    name: &str,
    if_unused: bool,
) -> Result<(), AmqpError> {
    if !name.is_empty() && !name.starts_with("amq.") {
        gate.check(Access::Configure, Resource::Exchange, name)?;
    }
    vhost.delete_exchange(name, if_unused)
}

/// queue.declare: configure on the queue; a new one is refused once the
/// vhost's `max-queues` is reached; declaring a new one with a
/// dead-letter exchange also needs read on it and write on that exchange
/// (RabbitMQ's rule). Returns the queue and whether it was created.
pub(crate) fn declare_queue(
    gate: &mut impl Gate,
    vhost: &VHost,
    d: &QueueDeclare<'_>,
) -> Result<(Arc<Queue>, bool), AmqpError> {
    if !d.passive {
        gate.check(Access::Configure, Resource::Queue, d.name)?;
        let new = vhost.queue(d.name).is_err();
        if new {
            vhost.check_queue_limit(d.name)?;
        }
        if let (Some(AMQPValue::LongString(dlx)), true) =
            (d.arguments.inner().get("x-dead-letter-exchange"), new)
        {
            gate.check(Access::Read, Resource::Queue, d.name)?;
            gate.check(Access::Write, Resource::Exchange, &dlx.to_string())?;
        }
    }
    vhost.declare_queue(d)
}

/// queue.delete: configure on the queue; a queue that does not exist is
/// deleted already (0 messages). `owner` is the asking connection, which
/// an exclusive queue must belong to (None: not a connection). Returns the
/// queue deleted, if any, and how many messages it held.
pub(crate) fn delete_queue(
    gate: &mut impl Gate,
    vhost: &VHost,
    name: &str,
    if_unused: bool,
    if_empty: bool,
    owner: Option<u64>,
) -> Result<Option<(Arc<Queue>, usize)>, AmqpError> {
    gate.check(Access::Configure, Resource::Queue, name)?;
    let Ok(queue) = vhost.queue(name) else {
        return Ok(None);
    };
    if let Some(connection) = owner {
        queue.check_owner(connection)?;
    }
    queue.check_delete(if_unused, if_empty)?;
    let count = vhost.delete_queue(&queue);
    Ok(Some((queue, count)))
}

/// queue.purge: read on the queue. Returns how many messages went.
pub(crate) fn purge_queue(
    gate: &mut impl Gate,
    vhost: &VHost,
    name: &str,
    owner: Option<u64>,
) -> Result<usize, AmqpError> {
    gate.check(Access::Read, Resource::Queue, name)?;
    let queue = vhost.queue(name)?;
    if let Some(connection) = owner {
        queue.check_owner(connection)?;
    }
    Ok(queue.purge())
}

/// Where a binding goes.
#[derive(Clone, Copy)]
pub(crate) enum BindTo<'a> {
    Queue(&'a str),
    Exchange(&'a str),
}

/// A binding, as queue.bind and exchange.bind name it.
pub(crate) struct Bind<'a> {
    pub(crate) source: &'a str,
    pub(crate) to: BindTo<'a>,
    pub(crate) routing_key: &'a str,
    pub(crate) arguments: &'a FieldTable,
}

/// queue.bind / exchange.bind (`add`) and their unbinds, in RabbitMQ's
/// order: write on the destination, neither end the default exchange, read
/// on the source and, for a topic exchange, its topic permission on the
/// binding key, then both ends looked up (a missing source reported
/// first). A bind needs both ends, a headers binding's arguments that make
/// sense and an exclusive destination queue belonging to `owner`. An
/// unbind whose source, destination or binding is gone has nothing to do
/// and succeeds (RabbitMQ 3.10's `rabbit_binding:remove`); exclusivity is
/// checked only when there is a binding to remove.
pub(crate) fn bind(
    gate: &mut impl Gate,
    vhost: &VHost,
    b: &Bind<'_>,
    owner: Option<u64>,
    add: bool,
) -> Result<(), AmqpError> {
    let Bind {
        source,
        to,
        routing_key,
        arguments,
    } = *b;
    let (kind, name) = match to {
        BindTo::Queue(name) => (Resource::Queue, name),
        BindTo::Exchange(name) => (Resource::Exchange, name),
    };
    gate.check(Access::Write, kind, name)?;
    if source.is_empty() || (kind == Resource::Exchange && name.is_empty()) {
        return Err(default_exchange_refused());
    }
    gate.check(Access::Read, Resource::Exchange, source)?;
    if let Ok(x) = vhost.exchange(source) {
        if x.kind == ExchangeKind::Topic {
            gate.check_topic(Access::Read, source, routing_key)?;
        }
    }
    let ends = vhost.exchange(source).and_then(|source| {
        let destination = match to {
            BindTo::Queue(name) => Destination::Queue(vhost.queue(name)?),
            BindTo::Exchange(name) => {
                vhost.exchange(name)?;
                Destination::Exchange(name.to_string())
            }
        };
        Ok((source, destination))
    });
    let (source, destination) = match ends {
        Ok(ends) => ends,
        Err(_) if !add => return Ok(()),
        Err(missing) => return Err(missing),
    };
    let check_owner = |destination: &Destination| match (destination, owner) {
        (Destination::Queue(queue), Some(connection)) => queue.check_owner(connection),
        _ => Ok(()),
    };
    if add {
        if source.kind == ExchangeKind::Headers {
            HeadersMatcher::new(arguments).map_err(AmqpError::precondition_failed)?;
        }
        check_owner(&destination)?;
        vhost.bind(
            &source,
            Binding {
                destination,
                routing_key: routing_key.to_string(),
                arguments: arguments.clone(),
            },
        );
    } else if source.has_binding(&destination, routing_key, arguments) {
        check_owner(&destination)?;
        vhost.unbind(&source, &destination, routing_key, arguments);
    }
    Ok(())
}
