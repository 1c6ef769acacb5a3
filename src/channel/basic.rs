//! basic.qos, consume, cancel, get, ack, nack, reject and recover.

use super::publish::{Settlement, DIRECT_REPLY_TO};
use super::shared::Settle;
use super::{Channel, ConnCtx};
use crate::broker::access::{Access, Resource};
use crate::broker::consumer::Consumer;
use crate::broker::queue::{Got, Queue, GET_DISK_WAIT};
use crate::broker::stream_consume::{self, ReadSpec};
use crate::broker::timers::now_ms;
use crate::broker::ReplyTo;
use crate::error::AmqpError;
use amq_protocol::protocol::{basic, AMQPClass};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Instant;

/// A random name suffix as RabbitMQ makes them (`amq.ctag-…`, `amq.gen-…`).
pub(crate) fn random_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

impl Channel {
    pub(super) fn handle_basic_method(
        &mut self,
        ctx: &mut ConnCtx,
        m: basic::AMQPMethod,
    ) -> Result<(), AmqpError> {
        match m {
            basic::AMQPMethod::Qos(q) => {
                if q.global {
                    tracing::warn!(
                        channel = self.id(),
                        "basic.qos global=true is deprecated in RabbitMQ 4; accepted: the prefetch is shared by the channel's consumers"
                    );
                }
                self.shared.set_prefetch(q.prefetch_count, q.global);
                self.shared
                    .send(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})));
            }
            basic::AMQPMethod::Consume(c) => self.handle_basic_consume(ctx, c)?,
            basic::AMQPMethod::Cancel(c) => self.handle_basic_cancel(ctx, c),
            basic::AMQPMethod::Get(g) => self.handle_basic_get(ctx, g)?,
            basic::AMQPMethod::Recover(r) => {
                if !r.requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                // recover-ok first: the redeliveries follow it, as in RabbitMQ.
                self.shared
                    .send(AMQPClass::Basic(basic::AMQPMethod::RecoverOk(
                        basic::RecoverOk {},
                    )));
                self.handle_basic_recover();
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                if !r.requeue {
                    return Err(AmqpError::not_implemented("requeue=false"));
                }
                self.handle_basic_recover();
            }
            other => {
                return Err(AmqpError::command_invalid(format_args!(
                    "method 60.{} not valid from a client",
                    AMQPClass::Basic(other).get_amqp_method_id()
                )))
            }
        }
        Ok(())
    }

    fn handle_basic_consume(
        &mut self,
        ctx: &mut ConnCtx,
        c: basic::Consume,
    ) -> Result<(), AmqpError> {
        let tag = if c.consumer_tag.as_str().is_empty() {
            random_name("amq.ctag-")
        } else {
            c.consumer_tag.to_string()
        };
        if self.shared.has_consumer(&tag)
            || self.reply_to_consumer_tag.as_deref() == Some(tag.as_str())
        {
            return Err(AmqpError::not_allowed(format_args!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        if c.queue.as_str() == DIRECT_REPLY_TO {
            return self.consume_direct_reply_to(ctx, c, tag);
        }
        let name = self.queue_name(c.queue.as_str())?;
        ctx.check(Access::Read, Resource::Queue, name)?;
        let queue = ctx.vhost.queue(name)?;
        queue.check_owner(ctx.id)?;
        let priority = consumer_priority(&c.arguments, &queue)?;
        let stream_start = match queue.stream() {
            Some(_) => {
                let vhost = &ctx.vhost.name;
                stream_consume::check_consumer(
                    self.shared.consumer_prefetch(),
                    c.no_ack,
                    name,
                    vhost,
                )?;
                Some(ReadSpec::parse(
                    &c.arguments,
                    &tag,
                    name,
                    vhost,
                    now_ms() as i64,
                )?)
            }
            None => None,
        };
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            channel: self.shared.clone(),
            queue: queue.clone(),
            no_ack: c.no_ack,
            exclusive: c.exclusive,
            prefetch: self.shared.consumer_prefetch(),
            arguments: c.arguments,
            priority,
            unacked: AtomicU32::new(0),
            pace: Default::default(),
            tracks_offset: stream_start.as_ref().is_some_and(|r| r.track),
        });
        // Registered with the channel first, so deliveries made as the queue
        // adds the consumer find it; consume-ok goes out once the queue has
        // accepted the consumer and before any delivery.
        self.shared.add_consumer(consumer.clone());
        let shared = self.shared.clone();
        let accepted = queue.add_consumer(consumer, stream_start, || {
            if !c.nowait {
                shared.send(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                    basic::ConsumeOk {
                        consumer_tag: tag.as_str().into(),
                    },
                )));
            }
        });
        if let Err(e) = accepted {
            self.shared.remove_consumer(&tag);
            return Err(e);
        }
        Ok(())
    }

    fn consume_direct_reply_to(
        &mut self,
        ctx: &mut ConnCtx,
        c: basic::Consume,
        tag: String,
    ) -> Result<(), AmqpError> {
        if !c.no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        if self.reply_to.is_some() {
            return Err(AmqpError::precondition_failed("reply consumer already set"));
        }
        let address = random_name(&format!("{DIRECT_REPLY_TO}."));
        ctx.broker.reply_to.insert(
            address.clone(),
            ReplyTo {
                channel: self.shared.clone(),
                consumer_tag: tag.clone(),
            },
        );
        self.reply_to = Some(address);
        self.reply_to_consumer_tag = Some(tag.clone());
        if !c.nowait {
            self.shared
                .send(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                    basic::ConsumeOk {
                        consumer_tag: tag.as_str().into(),
                    },
                )));
        }
        Ok(())
    }

    fn handle_basic_cancel(&mut self, ctx: &mut ConnCtx, c: basic::Cancel) {
        let tag = c.consumer_tag.as_str();
        if self.reply_to_consumer_tag.as_deref() == Some(tag) {
            if let Some(address) = self.reply_to.take() {
                ctx.broker.reply_to.remove(&address);
            }
            self.reply_to_consumer_tag = None;
        } else if let Some(consumer) = self.shared.remove_consumer(tag) {
            if consumer.queue.remove_consumer(&consumer) {
                ctx.vhost.delete_queue(&consumer.queue);
            }
        }
        if !c.nowait {
            self.shared
                .send(AMQPClass::Basic(basic::AMQPMethod::CancelOk(
                    basic::CancelOk {
                        consumer_tag: c.consumer_tag,
                    },
                )));
        }
    }

    fn handle_basic_get(&mut self, ctx: &mut ConnCtx, g: basic::Get) -> Result<(), AmqpError> {
        let name = self.queue_name(g.queue.as_str())?;
        ctx.check(Access::Read, Resource::Queue, name)?;
        let queue = ctx.vhost.queue(name)?;
        queue.check_owner(ctx.id)?;
        if queue.stream().is_some() {
            return Err(stream_consume::get_refused(name, &ctx.vhost.name));
        }
        self.get_from(ctx, queue, g.no_ack, Instant::now() + GET_DISK_WAIT);
        Ok(())
    }

    /// Answers basic.get; while the head is being read back from disk the
    /// reply waits for it (until `deadline`, then get-empty), so a get
    /// never misses messages on disk.
    fn get_from(&mut self, ctx: &mut ConnCtx, queue: Arc<Queue>, no_ack: bool, deadline: Instant) {
        match queue.try_get(no_ack) {
            Got::Message(msg, remaining) => self.shared.deliver_get(&queue, msg, remaining, no_ack),
            Got::Loading if Instant::now() < deadline => ctx.wait(self.id(), async move {
                {
                    let loaded = queue.disk_loaded();
                    tokio::pin!(loaded);
                    loaded.as_mut().enable();
                    if queue.awaiting_disk() {
                        let _ = tokio::time::timeout_at(deadline.into(), loaded).await;
                    }
                }
                Box::new(move |channel: &mut Channel, ctx: &mut ConnCtx| {
                    channel.get_from(ctx, queue, no_ack, deadline);
                    Ok(())
                }) as super::Resume
            }),
            Got::Empty | Got::Loading => {
                self.counts.get_empty += 1;
                self.counts_changed = true;
                self.shared
                    .send(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
                        basic::GetEmpty {},
                    )))
            }
        }
    }

    pub(super) fn handle_basic_ack(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<(), AmqpError> {
        if let Some(txn) = self.tx.as_mut() {
            if !self.shared.has_unacked(delivery_tag, multiple) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "unknown delivery tag {delivery_tag}"
                )));
            }
            txn.settlements.push(Settlement::Ack {
                delivery_tag,
                multiple,
            });
            return Ok(());
        }
        self.shared
            .take_unacked(delivery_tag, multiple, &mut self.settling)?;
        self.shared.settle(&mut self.settling, Settle::Ack);
        Ok(())
    }

    pub(super) fn handle_basic_nack(
        &mut self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), AmqpError> {
        if let Some(txn) = self.tx.as_mut() {
            if !self.shared.has_unacked(delivery_tag, multiple) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "unknown delivery tag {delivery_tag}"
                )));
            }
            txn.settlements.push(Settlement::Nack {
                delivery_tag,
                multiple,
                requeue,
            });
            return Ok(());
        }
        self.shared
            .take_unacked(delivery_tag, multiple, &mut self.settling)?;
        if let Some(stream) = self.settling.stream_queue() {
            // RabbitMQ 3.10 closes the connection; the credit comes back.
            self.shared.settle(&mut self.settling, Settle::Requeue);
            return Err(stream_consume::nack_refused(&stream.name, &stream.vhost));
        }
        self.shared
            .settle(&mut self.settling, Settle::nack(requeue));
        Ok(())
    }

    /// basic.recover requeue=true: every unacknowledged delivery goes back
    /// to its queue.
    fn handle_basic_recover(&mut self) {
        let mut taken = self.shared.take_all_unacked();
        self.shared.settle(&mut taken, Settle::Requeue);
    }
}

/// The consumer argument `x-priority` (default 0), checked as RabbitMQ does.
fn consumer_priority(
    arguments: &amq_protocol::types::FieldTable,
    queue: &crate::broker::queue::Queue,
) -> Result<i64, AmqpError> {
    match arguments.inner().get("x-priority") {
        None => Ok(0),
        Some(v) => crate::broker::queue_args::integer(v).ok_or_else(|| {
            AmqpError::precondition_failed(format_args!(
                "invalid arg 'x-priority' for queue '{}' in vhost '{}': \"expected integer, got {}\"",
                queue.name,
                queue.vhost,
                crate::broker::queue_args::type_name(v)
            ))
        }),
    }
}
