//! basic.publish: the checks a message passes before it is routed, and its
//! routing into queues (direct reply-to, CC/BCC, alternate exchanges).

use super::Gate;
use crate::broker::access::{Access, Resource};
use crate::broker::exchange::{ExchangeKind, RoutingInfo};
use crate::broker::queue::Queue;
use crate::broker::vhost::{Routing, VHost};
use crate::broker::Broker;
use crate::error::AmqpError;
use crate::message::{erlang_layout, parse_expiration, Message};
use crate::protocol::properties::PropertiesView;
use bytes::Bytes;
use std::sync::Arc;

pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A message as its publisher sent it, before any check.
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) properties: Bytes,
    pub(crate) view: PropertiesView,
    pub(crate) body: Bytes,
}

/// RabbitMQ's `max_message_size`, checked on the declared body size.
pub(crate) fn check_size(broker: &Broker, body_size: u64) -> Result<(), AmqpError> {
    let max = broker.config.limits.max_message_size;
    if body_size > max {
        return Err(AmqpError::precondition_failed(format_args!(
            "message size {body_size} is larger than configured max size {max}"
        )));
    }
    Ok(())
}

/// The checks of RabbitMQ's channel, in its order: write permission on
/// the exchange, the exchange exists and is not internal, the routing key
/// passes the topic permissions of a topic exchange, `user_id` is the
/// publisher's, a direct reply-to address names the publisher's own
/// reply consumer (`reply_to`, the channel's address), the expiration is
/// valid. Returns the message to route, with its properties' view.
pub(crate) fn accept(
    gate: &mut impl Gate,
    vhost: &VHost,
    out: Outgoing,
    reply_to: Option<&str>,
) -> Result<(Arc<Message>, PropertiesView), AmqpError> {
    let Outgoing {
        exchange,
        routing_key,
        mut properties,
        mut view,
        body,
    } = out;
    gate.check(Access::Write, Resource::Exchange, &exchange)?;
    let x = vhost.exchange(&exchange)?;
    if x.internal {
        return Err(AmqpError::access_refused(format_args!(
            "cannot publish to internal exchange '{}' in vhost '{}'",
            x.name, vhost.name
        )));
    }
    if x.kind == ExchangeKind::Topic {
        gate.check_topic(Access::Write, &x.name, &routing_key)?;
    }
    if let Some(user_id) = PropertiesView::str(&properties, &view.user_id) {
        if user_id != gate.user().as_bytes() && gate.checks_user_id() {
            return Err(AmqpError::precondition_failed(format_args!(
                "user_id property set to '{}' but authenticated user was '{}'",
                String::from_utf8_lossy(user_id),
                gate.user()
            )));
        }
    }
    if PropertiesView::str(&properties, &view.reply_to) == Some(DIRECT_REPLY_TO.as_bytes()) {
        let Some(address) = reply_to else {
            return Err(AmqpError::precondition_failed(
                "fast reply consumer does not exist",
            ));
        };
        properties = view.with_reply_to(&properties, address);
        view = PropertiesView::scan(&properties).expect("rewritten properties are well formed");
    }
    let expiration = match PropertiesView::str(&properties, &view.expiration) {
        Some(raw) => Some(parse_expiration(raw).map_err(|detail| {
            // The detail starts after "invalid expiration '<raw>': ".
            let column = 23 + raw.len();
            AmqpError::precondition_failed(format_args!(
                "invalid expiration '{}': {}",
                String::from_utf8_lossy(raw),
                erlang_layout(&detail, column)
            ))
        })?),
        None => None,
    };
    let persistent = view.is_persistent();
    let message = Message::new(exchange, routing_key, properties, body, persistent)
        .with_expiration(expiration);
    Ok((Arc::new(message), view))
}

/// What routing did with a message.
pub(crate) struct Routed {
    /// It reached a queue or a direct reply-to consumer.
    pub(crate) routed: bool,
    /// How many (RabbitMQ's `messages_routed`).
    pub(crate) queues: usize,
    /// It went to the store for durable queues: its confirm waits for disk.
    pub(crate) stored: bool,
    /// A queue refused it (overflow reject-publish): its confirm is a nack.
    pub(crate) refused: bool,
    /// It went to streams: its confirm waits for their appends.
    pub(crate) appends: Option<Arc<crate::broker::stream::Appends>>,
    /// The message as delivered (without its BCC header), for a return.
    pub(crate) message: Arc<Message>,
    /// A queue it reached asks its publishers to wait (flow control).
    pub(crate) flow: Option<Arc<Queue>>,
}

/// Routes an accepted message and enqueues it: a direct reply-to address
/// goes to its consumer; otherwise the exchange's bindings (and alternate
/// exchanges), plus the routing keys of its CC and BCC headers, whose BCC
/// header is removed before delivery. `routing` is scratch space a
/// publisher reuses for every message.
pub(crate) fn route(
    broker: &Broker,
    vhost: &VHost,
    mut message: Arc<Message>,
    view: &PropertiesView,
    routing: &mut Routing,
) -> Routed {
    let unstored = |message, routed| Routed {
        routed,
        queues: usize::from(routed),
        stored: false,
        refused: false,
        appends: None,
        message,
        flow: None,
    };
    if message.exchange.is_empty() && message.routing_key.starts_with(DIRECT_REPLY_TO) {
        let delivered = match broker.reply_to.get(&message.routing_key) {
            Some(target) => {
                target
                    .channel
                    .deliver_direct(&target.consumer_tag, &message);
                true
            }
            None => false,
        };
        return unstored(message, delivered);
    }
    let Ok(exchange) = vhost.exchange(&message.exchange) else {
        return unstored(message, false);
    };
    let headers = || view.headers(&message.properties);
    let info = RoutingInfo {
        routing_key: &message.routing_key,
        headers: &headers,
    };
    vhost.route(&exchange, &info, routing);
    if let Some((keys, without_bcc)) = sender_selected(&message, view) {
        for key in &keys {
            let info = RoutingInfo {
                routing_key: key,
                headers: &headers,
            };
            vhost.route(&exchange, &info, routing);
        }
        if let Some(m) = without_bcc {
            message = Arc::new(m);
        }
    }
    let queues = &routing.queues;
    exchange.stats.published(queues.len());
    let (stored, refused, appends) = vhost.enqueue(queues, &message);
    let routed = Routed {
        routed: !queues.is_empty(),
        queues: queues.len(),
        stored,
        refused,
        appends,
        flow: queues.iter().find(|q| q.asks_publishers_to_wait()).cloned(),
        message,
    };
    routing.clear();
    routed
}

/// The extra routing keys of a message's CC and BCC headers, and a copy
/// without BCC when it had one; None for the usual message without either.
fn sender_selected(
    message: &Message,
    view: &PropertiesView,
) -> Option<(Vec<String>, Option<Message>)> {
    let range = view.headers.clone()?;
    let raw = &message.properties[range];
    // Header names are short strings: a length byte, then the name.
    let has = |name: &[u8]| raw.windows(name.len()).any(|w| w == name);
    let (cc, bcc) = (has(b"\x02CC"), has(b"\x03BCC"));
    if !cc && !bcc {
        return None;
    }
    let headers = view.headers(&message.properties)?;
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        if let Some(amq_protocol::types::AMQPValue::FieldArray(a)) = headers.inner().get(name) {
            for v in a.as_slice() {
                if let amq_protocol::types::AMQPValue::LongString(k) = v {
                    keys.push(String::from_utf8_lossy(k.as_bytes()).into_owned());
                }
            }
        }
    }
    let without_bcc = if headers.contains_key("BCC") {
        crate::broker::dead_letter::without_header(message, "BCC")
    } else {
        None
    };
    Some((keys, without_bcc))
}

/// Resolves once no resource alarm (memory, disk) blocks publishers.
pub(crate) async fn alarms_cleared(broker: Arc<Broker>) {
    let mut memory = broker.memory.subscribe();
    let mut disk = broker.store.disk_alarm().subscribe();
    while broker.alarm_reason().is_some() {
        tokio::select! {
            r = memory.changed() => if r.is_err() { return },
            r = disk.changed() => if r.is_err() { return },
        }
    }
}

/// Resolves once `queue` no longer asks its publishers to wait.
pub(crate) async fn flow_released(queue: Arc<Queue>) {
    loop {
        let released = queue.flow_released().notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if !queue.recheck_flow() {
            return;
        }
        tokio::select! {
            _ = released => {}
            _ = tokio::time::sleep(crate::broker::flow::RECHECK) => {}
        }
    }
}

/// How long a publisher outside a channel (the management API) waits for
/// an alarm to clear, for flow control and for its confirm: RabbitMQ's
/// management `publish_timeout`.
pub(crate) const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a publish outside a channel did not succeed.
pub(crate) enum Failed {
    /// A check refused it, with the error a channel would have closed with.
    Refused(AmqpError),
    /// Its confirm was a nack: a queue refused it or the disk did.
    Rejected,
    /// An alarm, flow control or the disk took longer than `PUBLISH_TIMEOUT`.
    TimedOut,
}

/// One message published outside a channel, as a channel in confirm mode
/// would: blocked while a resource alarm is on, held back by flow control
/// and a store that is behind, and answered once its confirm is known
/// (on disk when persistent and routed to durable queues). Returns whether
/// it was routed.
pub(crate) async fn publish_confirmed(
    broker: &Arc<Broker>,
    vhost: &VHost,
    gate: &mut impl Gate,
    outgoing: Outgoing,
) -> Result<bool, Failed> {
    use tokio::time::timeout;
    check_size(broker, outgoing.body.len() as u64).map_err(Failed::Refused)?;
    if broker.alarm_reason().is_some()
        && timeout(PUBLISH_TIMEOUT, alarms_cleared(broker.clone()))
            .await
            .is_err()
    {
        return Err(Failed::TimedOut);
    }
    let (message, view) = accept(gate, vhost, outgoing, None).map_err(Failed::Refused)?;
    let routed = route(broker, vhost, message, &view, &mut Routing::default());
    if routed.refused {
        return Err(Failed::Rejected);
    }
    if let Some(queue) = routed.flow {
        if timeout(PUBLISH_TIMEOUT, flow_released(queue))
            .await
            .is_err()
        {
            return Err(Failed::TimedOut);
        }
    }
    if let Some(appends) = &routed.appends {
        match timeout(PUBLISH_TIMEOUT, appends.finished()).await {
            Ok(true) => {}
            Ok(false) => return Err(Failed::Rejected),
            Err(_) => return Err(Failed::TimedOut),
        }
    }
    if routed.stored {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = Arc::new(OneConfirm(parking_lot::Mutex::new(Some(tx))));
        broker.store.confirm_when_written(sink, 1, &routed.message);
        match timeout(PUBLISH_TIMEOUT, rx).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(Failed::Rejected),
            // The store stopped (shutdown) or took too long.
            Ok(Err(_)) | Err(_) => return Err(Failed::TimedOut),
        }
    }
    if broker.store.backlog.is_over()
        && timeout(PUBLISH_TIMEOUT, broker.store.backlog.wait_drained())
            .await
            .is_err()
    {
        return Err(Failed::TimedOut);
    }
    Ok(routed.routed)
}

/// The confirm of the one message of a publish outside a channel.
struct OneConfirm(parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<bool>>>);

impl crate::store::ConfirmSink for OneConfirm {
    fn confirm_persisted(&self, _seq: u64, ok: bool) {
        if let Some(tx) = self.0.lock().take() {
            let _ = tx.send(ok);
        }
    }
}
