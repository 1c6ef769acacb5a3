//! Super streams, as RabbitMQ 3.13 makes them (`rabbit_stream_manager`):
//! a durable direct exchange named after the super stream (argument
//! `x-super-stream = true`) and N partition streams bound to it, each with
//! its binding key and `x-stream-partition-order`. A publisher routes a
//! message to one partition (hashing its routing key, or by binding key),
//! so every message of one key lands in one partition, in order.
//!
//! Made and removed through the one path of every declare and bind
//! (`ops::topology`), so permissions, limits and durability are those of
//! the parts; a failure part way removes what was made.

use super::exchange::Destination;
use super::ops::topology::{self, Bind, BindTo};
use super::ops::Gate;
use super::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use crate::error::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};

/// Partitions one super stream may have: each is a stream with its files.
pub(crate) const MAX_PARTITIONS: usize = 1024;
/// The binding argument giving a partition's place.
const ORDER: &str = "x-stream-partition-order";

/// The partitions of a new super stream: (stream name, binding key).
pub(crate) fn by_count(name: &str, partitions: usize) -> Vec<(String, String)> {
    (0..partitions)
        .map(|i| (format!("{name}-{i}"), i.to_string()))
        .collect()
}

/// The partitions of a new super stream with these binding keys.
pub(crate) fn by_binding_keys(name: &str, keys: &[String]) -> Vec<(String, String)> {
    keys.iter()
        .map(|k| (format!("{name}-{k}"), k.clone()))
        .collect()
}

/// Makes super stream `name` with `partitions`, each a stream declared
/// with `arguments` (retention) besides its type.
pub(crate) fn create(
    gate: &mut impl Gate,
    vhost: &VHost,
    name: &str,
    partitions: &[(String, String)],
    arguments: &FieldTable,
) -> Result<(), AmqpError> {
    if name.is_empty() || partitions.is_empty() {
        return Err(AmqpError::precondition_failed(
            "a super stream needs a name and at least one partition",
        ));
    }
    if partitions.len() > MAX_PARTITIONS {
        return Err(AmqpError::precondition_failed(format_args!(
            "The partition number must not exceed {MAX_PARTITIONS}"
        )));
    }
    if vhost.exchange(name).is_ok() {
        return Err(AmqpError::precondition_failed(format_args!(
            "super stream {name} already exists"
        )));
    }
    let mut exchange_args = FieldTable::default();
    exchange_args.insert("x-super-stream".into(), AMQPValue::Boolean(true));
    topology::declare_exchange(
        gate,
        vhost,
        &ExchangeDeclare {
            name,
            kind: "direct",
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: &exchange_args,
        },
    )?;
    let mut stream_args = arguments.clone();
    stream_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let mut made: Vec<&str> = Vec::new();
    let result = (|| {
        for (order, (stream, key)) in partitions.iter().enumerate() {
            let (_, created) = topology::declare_queue(
                gate,
                vhost,
                &QueueDeclare {
                    name: stream,
                    passive: false,
                    durable: true,
                    exclusive: false,
                    auto_delete: false,
                    arguments: &stream_args,
                    connection: 0,
                },
            )?;
            if created {
                made.push(stream);
            }
            let mut binding_args = FieldTable::default();
            binding_args.insert(ORDER.into(), AMQPValue::LongLongInt(order as i64));
            topology::bind(
                gate,
                vhost,
                &Bind {
                    source: name,
                    to: BindTo::Queue(stream),
                    routing_key: key,
                    arguments: &binding_args,
                },
                None,
                true,
            )?;
        }
        Ok(())
    })();
    if result.is_err() {
        for stream in made {
            let _ = topology::delete_queue(gate, vhost, stream, false, false, None);
        }
        let _ = topology::delete_exchange(gate, vhost, name, false);
    }
    result
}

/// The partition streams of super stream `name`, in partition order.
pub(crate) fn partitions(vhost: &VHost, name: &str) -> Result<Vec<String>, AmqpError> {
    let exchange = vhost.exchange(name)?;
    let mut parts: Vec<(i64, String)> = exchange
        .bindings()
        .into_iter()
        .filter_map(|b| match b.destination {
            Destination::Queue(q) if q.stream().is_some() => {
                let order = match b.arguments.inner().get(ORDER) {
                    Some(v) => super::queue_args::integer(v).unwrap_or(i64::MAX),
                    None => i64::MAX,
                };
                Some((order, q.name.clone()))
            }
            _ => None,
        })
        .collect();
    parts.sort();
    parts.dedup_by(|a, b| a.1 == b.1);
    Ok(parts.into_iter().map(|(_, n)| n).collect())
}

/// The partitions a message with `routing_key` goes to, by binding key
/// (the stream protocol's Route command).
pub(crate) fn route(
    vhost: &VHost,
    name: &str,
    routing_key: &str,
) -> Result<Vec<String>, AmqpError> {
    let exchange = vhost.exchange(name)?;
    Ok(exchange
        .bindings()
        .into_iter()
        .filter(|b| b.routing_key == routing_key)
        .filter_map(|b| match b.destination {
            Destination::Queue(q) if q.stream().is_some() => Some(q.name.clone()),
            _ => None,
        })
        .collect())
}

/// Removes super stream `name`: its exchange and its partition streams.
pub(crate) fn delete(gate: &mut impl Gate, vhost: &VHost, name: &str) -> Result<(), AmqpError> {
    let streams = partitions(vhost, name)?;
    topology::delete_exchange(gate, vhost, name, false)?;
    for stream in streams {
        topology::delete_queue(gate, vhost, &stream, false, false, None)?;
    }
    Ok(())
}
