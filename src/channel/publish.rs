//! basic.publish: assembling content frames into a message, routing it,
//! returns, publisher confirms and transactions.

use super::shared::Settle;
use super::{Channel, ConnCtx};
use crate::broker::memory::Held;
use crate::broker::ops::{self, publish::Outgoing};
use crate::broker::stream::Appends;
use crate::error::{AmqpError, ReplyCode};
use crate::message::Message;
use crate::protocol::encode;
use crate::protocol::field_table::{self, TableError};
use crate::protocol::method::{Publish, Reader};
use crate::protocol::properties::{MalformedProperties, PropertiesView};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

pub(crate) use crate::broker::ops::publish::DIRECT_REPLY_TO;

/// The most of a body's declared size reserved before it arrives; a larger
/// body grows as its frames come.
const BODY_RESERVE: u64 = 1024 * 1024;

/// A publish whose content frames are still arriving.
pub(crate) struct PendingContent {
    publish: Publish,
    /// Set once the content header arrived.
    header: Option<ContentHeader>,
    body: BytesMut,
    /// The body received so far, counted in the memory gauge while it
    /// spans frames (a body in one frame is never partial between reads).
    held: Option<Held>,
}

struct ContentHeader {
    body_size: u64,
    properties: Bytes,
    view: PropertiesView,
}

impl PendingContent {
    pub(crate) fn unexpected_frame(&self) -> AmqpError {
        if self.header.is_none() {
            AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
        } else {
            AmqpError::unexpected_frame("expected content body, got non content body frame instead")
        }
    }
}

/// Properties that cannot be decoded close the connection before the
/// message reaches a queue: RabbitMQ's channel crashes decoding them, which
/// its clients see as a bare 541. Nesting too deep for Leveret (RabbitMQ has
/// no bound) is a frame error that says so.
fn malformed_properties(err: MalformedProperties) -> AmqpError {
    match err.0 {
        TableError::TooDeep => AmqpError::frame_error(format_args!(
            "field tables nested more than {} levels deep",
            field_table::MAX_DEPTH
        ))
        .on_method(60, 40),
        TableError::Malformed | TableError::UnknownType(_) => AmqpError {
            code: ReplyCode::InternalError,
            text: ReplyCode::InternalError.name().to_string(),
            class_id: 0,
            method_id: 0,
        },
    }
}

/// Work buffered by tx.select until tx.commit.
#[derive(Default)]
pub(crate) struct Transaction {
    /// Each message with its `mandatory` flag.
    pub(crate) publishes: Vec<(bool, Arc<Message>, PropertiesView)>,
    pub(crate) settlements: Vec<Settlement>,
    /// The publishes' bytes, counted in the memory gauge until the
    /// transaction ends or its channel goes.
    pub(crate) held: Option<Held>,
}

pub(crate) enum Settlement {
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

impl Channel {
    pub(super) fn handle_basic_publish(
        &mut self,
        ctx: &mut ConnCtx,
        publish: Publish,
    ) -> Result<(), AmqpError> {
        if publish.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        ctx.has_published = true;
        self.content = Some(PendingContent {
            publish,
            header: None,
            body: BytesMut::new(),
            held: None,
        });
        Ok(())
    }

    /// A content header frame on this channel.
    pub(crate) fn handle_content_header(
        &mut self,
        ctx: &mut ConnCtx,
        payload: &[u8],
    ) -> Result<(), AmqpError> {
        let Some(content) = self.content.as_mut().filter(|c| c.header.is_none()) else {
            return Err(self.unexpected_content());
        };
        let mut r = Reader::new(payload);
        let (class_id, weight, body_size) = match (r.u16(), r.u16(), r.u64()) {
            (Some(c), Some(w), Some(s)) => (c, w, s),
            _ => return Err(AmqpError::frame_error("content header too short").on_method(60, 40)),
        };
        if weight != 0 {
            return Err(AmqpError::unexpected_frame(
                "expected content header for class 60, got non content header frame instead",
            )
            .on_method(60, 40));
        }
        if class_id != crate::protocol::CLASS_BASIC {
            return Err(AmqpError::unexpected_frame(format_args!(
                "expected content header for class 60, got one for class {class_id} instead"
            ))
            .on_method(60, 40));
        }
        if let Err(e) = ops::publish::check_size(&ctx.broker, body_size) {
            self.content = None;
            return Err(e.on_method(60, 40));
        }
        let properties = Bytes::copy_from_slice(&payload[12..]);
        let view = PropertiesView::scan(&properties).map_err(malformed_properties)?;
        // The declared size is the client's word: reserving all of it
        // ahead would let headers alone (128 MiB on each of 2047 channels)
        // exhaust the address space, and a failed allocation aborts.
        content.body = BytesMut::with_capacity(body_size.min(BODY_RESERVE) as usize);
        content.header = Some(ContentHeader {
            body_size,
            properties,
            view,
        });
        if body_size == 0 {
            return self.finish_publish(ctx);
        }
        Ok(())
    }

    /// A content body frame on this channel.
    pub(crate) fn handle_content_body(
        &mut self,
        ctx: &mut ConnCtx,
        payload: &[u8],
    ) -> Result<(), AmqpError> {
        let Some(content) = self.content.as_mut().filter(|c| c.header.is_some()) else {
            return Err(self.unexpected_content());
        };
        let expected = content.header.as_ref().map_or(0, |h| h.body_size);
        if content.body.len() as u64 + payload.len() as u64 > expected {
            return Err(AmqpError::frame_error(format_args!(
                "content body exceeds the declared body size {expected}"
            )));
        }
        content.body.extend_from_slice(payload);
        if content.body.len() as u64 == expected {
            return self.finish_publish(ctx);
        }
        content
            .held
            .get_or_insert_with(|| Held::new(&ctx.broker.memory))
            .add(payload.len());
        Ok(())
    }

    fn unexpected_content(&self) -> AmqpError {
        match &self.content {
            Some(c) => c.unexpected_frame().on_method(60, 40),
            None => {
                AmqpError::unexpected_frame("expected method frame, got non method frame instead")
            }
        }
    }

    fn finish_publish(&mut self, ctx: &mut ConnCtx) -> Result<(), AmqpError> {
        let content = self.content.take().expect("content in progress");
        self.counts.received += 1;
        self.counts_changed = true;
        let header = content.header.expect("header received");
        let result = self.publish_message(
            ctx,
            content.publish,
            header.properties,
            header.view,
            content.body.freeze(),
        );
        result.map_err(|e| e.on_method(60, 40))
    }

    fn publish_message(
        &mut self,
        ctx: &mut ConnCtx,
        publish: Publish,
        properties: Bytes,
        view: PropertiesView,
        body: Bytes,
    ) -> Result<(), AmqpError> {
        let outgoing = Outgoing {
            exchange: publish.exchange,
            routing_key: publish.routing_key,
            properties,
            view,
            body,
        };
        let (mut gate, vhost) = ctx.gate();
        let (message, view) =
            ops::publish::accept(&mut gate, vhost, outgoing, self.reply_to.as_deref())?;
        if self.confirm || self.tx.is_some() {
            self.counts.received_confirm += 1;
        }
        if let Some(txn) = self.tx.as_mut() {
            txn.held
                .get_or_insert_with(|| Held::new(&ctx.broker.memory))
                .add(message.size());
            txn.publishes.push((publish.mandatory, message, view));
            return Ok(());
        }
        self.route_message(ctx, publish.mandatory, message, &view);
        Ok(())
    }

    /// Routes a complete message, sends basic.return when mandatory and
    /// unroutable, and records the confirm (which waits for the disk when
    /// the message was stored). Returns its stored id when it went to disk,
    /// and whether a queue refused it.
    pub(super) fn route_message(
        &mut self,
        ctx: &mut ConnCtx,
        mandatory: bool,
        message: Arc<Message>,
        view: &PropertiesView,
    ) -> (Option<u64>, bool, Option<Arc<Appends>>) {
        let routed = ops::publish::route(&ctx.broker, &ctx.vhost, message, view, &mut self.routing);
        if ctx.flow.is_none() {
            ctx.flow = routed.flow;
        }
        let message = routed.message;
        self.counts.routed += routed.queues as u64;
        if !routed.routed {
            if mandatory {
                self.counts.unroutable_returned += 1;
            } else {
                self.counts.unroutable_dropped += 1;
            }
        }
        if !routed.routed && mandatory {
            let id = self.id();
            let frame_max = ctx.frame_max;
            ctx.outbox.push(|buf| {
                encode::basic_return(
                    buf,
                    id,
                    312,
                    "NO_ROUTE",
                    &message.exchange,
                    &message.routing_key,
                );
                encode::content(buf, id, &message.properties, &message.body, frame_max);
            });
        }
        let (stored, refused) = (routed.stored, routed.refused);
        if self.confirm {
            let seq = self
                .shared
                .confirm_next(stored, routed.appends.is_some(), refused);
            if !refused {
                if stored {
                    ctx.broker
                        .store
                        .confirm_when_written(self.shared.clone(), seq, &message);
                }
                if let Some(appends) = &routed.appends {
                    let sink = self.shared.clone();
                    appends.then(move |ok| sink.confirm_appended(seq, ok));
                }
            }
        }
        (
            stored.then(|| message.stored()).flatten(),
            refused,
            routed.appends,
        )
    }

    /// Sends the acks owed to the publisher, one `multiple` ack for all,
    /// and hands the counts to `/metrics`. Called once per batch of frames
    /// read, so acks coalesce under load.
    pub(crate) fn flush_confirms(&mut self) {
        if self.confirm {
            self.shared.flush_confirms();
        }
        if std::mem::take(&mut self.counts_changed) {
            self.shared.publish_counts(&self.counts);
        }
    }

    /// Applies a committed transaction: publishes, then settlements, in
    /// order. commit-ok follows once its persistent messages are on disk;
    /// if one was refused or not written the transaction failed, and as
    /// in RabbitMQ the channel closes with 406 "partial tx completion".
    pub(super) fn commit(&mut self, ctx: &mut ConnCtx, txn: Transaction) -> Result<(), AmqpError> {
        let mut stored = Vec::new();
        let mut appended = Vec::new();
        let mut failed = false;
        for (mandatory, message, view) in txn.publishes {
            let (msg_id, refused, appends) = self.route_message(ctx, mandatory, message, &view);
            failed |= refused;
            stored.extend(msg_id);
            appended.extend(appends);
        }
        for s in txn.settlements {
            match s {
                Settlement::Ack {
                    delivery_tag,
                    multiple,
                } => {
                    self.shared
                        .take_unacked(delivery_tag, multiple, &mut self.settling)?;
                    self.shared.settle(&mut self.settling, Settle::Ack);
                }
                Settlement::Nack {
                    delivery_tag,
                    multiple,
                    requeue,
                } => {
                    self.shared
                        .take_unacked(delivery_tag, multiple, &mut self.settling)?;
                    self.shared
                        .settle(&mut self.settling, Settle::nack(requeue));
                }
            }
        }
        let commit_ok = |failed: bool| -> Result<(), AmqpError> {
            if failed {
                return Err(
                    AmqpError::precondition_failed("partial tx completion").on_method(90, 20)
                );
            }
            Ok(())
        };
        if stored.is_empty() && appended.is_empty() {
            commit_ok(failed)?;
            self.send_commit_ok();
            return Ok(());
        }
        let written = ctx.broker.store.written(stored);
        ctx.wait(self.id(), async move {
            let mut failed = failed || !written.await;
            for a in appended {
                failed |= !a.finished().await;
            }
            Box::new(move |channel: &mut Channel, _: &mut ConnCtx| {
                commit_ok(failed)?;
                channel.send_commit_ok();
                Ok(())
            }) as super::Resume
        });
        Ok(())
    }

    fn send_commit_ok(&self) {
        use amq_protocol::protocol::{tx, AMQPClass};
        self.shared
            .send(AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
    }
}
