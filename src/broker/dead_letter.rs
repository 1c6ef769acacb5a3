//! Dead-lettering: messages a queue lets go of (rejected, expired, over its
//! length limit, over the delivery limit) republished to its dead-letter
//! exchange with RabbitMQ's `x-death` history.
//!
//! Queues hand dead letters to one thread through a channel, so no queue
//! lock is held while another queue is published to (the lock order allows
//! only one queue lock at a time).

use super::queue::Queue;
use super::vhost::Routing;
use super::Broker;
use crate::broker::exchange::RoutingInfo;
use crate::message::Message;
use crate::protocol::properties::PropertiesView;
use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use bytes::Bytes;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Rejected,
    Expired,
    Maxlen,
    DeliveryLimit,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

pub(crate) struct DeadLetter {
    pub(crate) vhost: String,
    pub(crate) queue: String,
    pub(crate) exchange: String,
    pub(crate) routing_key: Option<String>,
    pub(crate) message: Arc<Message>,
    pub(crate) reason: Reason,
}

/// Work a queue hands off because it needs its vhost.
pub(crate) enum Chore {
    DeadLetter(DeadLetter),
    /// x-expires ran out: delete the queue (if it is still unused).
    DeleteUnused {
        vhost: String,
        queue: Weak<Queue>,
    },
}

/// Where queues drop their dead letters (and unused queues, which also
/// need the vhost to go).
#[derive(Clone)]
pub(crate) struct DeadLetters {
    tx: Sender<Chore>,
}

impl DeadLetters {
    pub(crate) fn send(&self, letter: DeadLetter) {
        let _ = self.tx.send(Chore::DeadLetter(letter));
    }

    pub(crate) fn delete_unused(&self, vhost: String, queue: Weak<Queue>) {
        let _ = self.tx.send(Chore::DeleteUnused { vhost, queue });
    }

    /// The sink and the receiving end, which [`run`] drains once the broker exists.
    pub(crate) fn channel() -> (DeadLetters, Receiver<Chore>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (DeadLetters { tx }, rx)
    }
}

/// Republishes dead letters (and deletes expired queues) until the broker is gone.
// Its own thread: waiting on its queue blocks no tokio worker.
#[allow(clippy::disallowed_methods)]
pub(crate) fn run(broker: Weak<Broker>, rx: Receiver<Chore>) {
    while let Ok(chore) = rx.recv() {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        match chore {
            Chore::DeadLetter(letter) => republish(&broker, letter),
            Chore::DeleteUnused { vhost, queue } => {
                if let (Some(vhost), Some(queue)) = (broker.vhost(&vhost), queue.upgrade()) {
                    if queue.is_unused_for_expiry() {
                        vhost.delete_queue(&queue);
                    }
                }
            }
        }
    }
}

fn republish(broker: &Broker, letter: DeadLetter) {
    let Some(vhost) = broker.vhost(&letter.vhost) else {
        return;
    };
    // RabbitMQ drops dead letters whose exchange does not exist.
    let Ok(exchange) = vhost.exchange(&letter.exchange) else {
        return;
    };
    let original = &letter.message;
    let Some(props) = PropertiesView::parse(&original.properties) else {
        return;
    };
    let mut headers = props.headers().clone().unwrap_or_default();
    let mut routing_keys = vec![original.routing_key.clone()];
    for cc in ["CC", "BCC"] {
        if let Some(AMQPValue::FieldArray(keys)) = headers.inner().get(cc) {
            routing_keys.extend(keys.as_slice().iter().filter_map(|k| match k {
                AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
                _ => None,
            }));
        }
    }
    let expiration = props.expiration().clone();
    record_death(
        &mut headers,
        &letter,
        &routing_keys,
        expiration.as_ref().map(|e| e.as_str()),
    );
    let targets: Vec<String> = match &letter.routing_key {
        Some(key) => {
            headers = without(&headers, "CC");
            vec![key.clone()]
        }
        None => routing_keys,
    };
    headers = without(&headers, "BCC");
    // The copy does not expire again on its own clock.
    let props = without_expiration(&props).with_headers(headers.clone());
    let Ok(raw) = cookie_factory::gen_simple(gen_properties(&props), Vec::new()) else {
        return;
    };
    let raw = Bytes::from(raw);
    let persistent = PropertiesView::scan(&raw).is_ok_and(|v| v.is_persistent());

    let mut routing = Routing::default();
    for key in &targets {
        let headers_fn = || Some(headers.clone());
        let info = RoutingInfo {
            routing_key: key,
            headers: &headers_fn,
        };
        vhost.route(&exchange, &info, &mut routing);
    }
    let mut queues = routing.queues;
    if letter.reason != Reason::Rejected {
        queues.retain(|q| !is_cycle(&q.name, &headers));
    }
    if queues.is_empty() {
        return;
    }
    let message = Arc::new(Message::new(
        letter.exchange.clone(),
        targets[0].clone(),
        raw,
        original.body.clone(),
        persistent,
    ));
    vhost.enqueue(&queues, &message);
}

/// Adds (or counts again) this death in `x-death`, most recent first, and
/// sets the `x-first-death-*` headers once.
fn record_death(
    headers: &mut FieldTable,
    letter: &DeadLetter,
    routing_keys: &[String],
    expiration: Option<&str>,
) {
    let reason = letter.reason.as_str();
    let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let same = |d: &AMQPValue| match d {
        AMQPValue::FieldTable(t) => {
            str_field(t, "queue") == Some(letter.queue.as_str())
                && str_field(t, "reason") == Some(reason)
        }
        _ => false,
    };
    let entry = match deaths.iter().position(same) {
        Some(i) => {
            let AMQPValue::FieldTable(mut t) = deaths.remove(i) else {
                unreachable!("matched a table")
            };
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                _ => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long_string(reason));
            t.insert("queue".into(), long_string(&letter.queue));
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert("exchange".into(), long_string(&letter.message.exchange));
            let keys: Vec<AMQPValue> = routing_keys.iter().map(|k| long_string(k)).collect();
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(keys)),
            );
            if let Some(e) = expiration {
                t.insert("original-expiration".into(), long_string(e));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    for (key, value) in [
        ("x-first-death-reason", reason),
        ("x-first-death-queue", letter.queue.as_str()),
        ("x-first-death-exchange", letter.message.exchange.as_str()),
    ] {
        if !headers.contains_key(key) {
            headers.insert(ShortString::from(key), long_string(value));
        }
    }
}

/// RabbitMQ's cycle rule: republishing to `queue` closes a loop when the
/// message already died there and no death since (that one included) was
/// a rejection. Such a fully automatic loop would spin forever.
fn is_cycle(queue: &str, headers: &FieldTable) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return false;
    };
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            return false;
        };
        if str_field(t, "reason") == Some("rejected") {
            return false;
        }
        if str_field(t, "queue") == Some(queue) {
            return true;
        }
    }
    false
}

/// The properties minus `expiration` (the fields are private).
fn without_expiration(p: &AMQPProperties) -> AMQPProperties {
    let mut out = AMQPProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

/// `table` minus `key` (FieldTable has no remove).
fn without(table: &FieldTable, key: &str) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table.inner() {
        if k.as_str() != key {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn str_field<'a>(t: &'a FieldTable, key: &str) -> Option<&'a str> {
    match t.inner().get(key) {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
        _ => None,
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A copy of `message` with its `x-delivery-count` header set to `count`
/// (or removed), as quorum queues mark redeliveries.
pub(crate) fn with_delivery_count(message: &Message, count: Option<u64>) -> Option<Message> {
    rewrite_headers(message, |headers| {
        let mut headers = without(headers, "x-delivery-count");
        if let Some(n) = count {
            headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(n as i64));
        }
        headers
    })
}

/// A copy of `message` without the header `name`.
pub(crate) fn without_header(message: &Message, name: &str) -> Option<Message> {
    rewrite_headers(message, |headers| without(headers, name))
}

/// Raw properties with header `name` set to `value` (None when they do
/// not parse; the publish path checked them, so only a bug gets there).
pub(crate) fn with_header(properties: &[u8], name: &str, value: AMQPValue) -> Option<Bytes> {
    let props = PropertiesView::parse(properties)?;
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    let props = props.with_headers(headers);
    let raw = cookie_factory::gen_simple(gen_properties(&props), Vec::new()).ok()?;
    Some(Bytes::from(raw))
}

fn rewrite_headers(
    message: &Message,
    change: impl FnOnce(&FieldTable) -> FieldTable,
) -> Option<Message> {
    let props = PropertiesView::parse(&message.properties)?;
    let headers = change(&props.headers().clone().unwrap_or_default());
    let props = props.with_headers(headers);
    let raw = cookie_factory::gen_simple(gen_properties(&props), Vec::new()).ok()?;
    let copy = Message::new(
        message.exchange.clone(),
        message.routing_key.clone(),
        Bytes::from(raw),
        message.body.clone(),
        message.persistent,
    )
    .with_expiration(message.expiration_ms);
    if let Some(id) = message.stored() {
        copy.set_stored(id);
    }
    Some(copy)
}
