//! Queues, exchanges and bindings: list, show, declare, delete, purge,
//! publish and get, with the permissions the AMQP methods would need.

use super::api::{
    body, by_vhost_and_name, created_or_updated, json_table, lenient_bool, list, list_lazily,
    no_content, node_name, parse_int, short_string, table_json, ApiError, ApiResult, User,
};
use super::history;
use super::streams::Subscriptions;
use crate::broker::access::{Access, Resource};
use crate::broker::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::broker::ops::publish::{self, Failed, Outgoing};
use crate::broker::ops::topology::{self, Bind, BindTo};
use crate::broker::ops::Gate;
use crate::broker::queue::Queue;
use crate::broker::queue_args::QueueType;
use crate::broker::vhost::{ExchangeDeclare, QueueDeclare, VHost};
use crate::broker::Broker;
use crate::error::{AmqpError, ReplyCode};
use crate::protocol::properties::PropertiesView;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::types::{FieldTable, ShortString};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

fn check(
    broker: &Broker,
    user: &User,
    vhost: &str,
    access: Access,
    resource: Resource,
    name: &str,
) -> Result<(), ApiError> {
    broker
        .access
        .check(&user.name, vhost, access, resource, name)
        .map_err(ApiError::from_amqp)
}

// ---------------------------------------------------------------- queues

fn type_name(q: &Queue) -> &'static str {
    match q.args.queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
        QueueType::Stream => "stream",
    }
}

pub(super) fn queue_json(
    q: &Queue,
    ask: history::Ask,
    subscriptions: &super::streams::Subscriptions,
) -> Value {
    let c = q.counts();
    let kind = type_name(q);
    let [publish, deliver_get, redeliver, ack] = q.stats.counts();
    let kinds = q.stats.delivery_kinds();
    let sample = q.stats.last();
    let rate = |i: usize| json!({"rate": sample.rates[i]});
    // RabbitMQ 3.10 says 0 without consumers.
    let utilisation = if c.consumers > 0 {
        json!(sample.utilisation)
    } else {
        json!(0)
    };
    // Each consumer's oldest delivery still waiting for its ack (ms): the
    // age of a stuck consumer's work, where a depth says nothing.
    let consumers: Vec<_> = q
        .consumers()
        .into_iter()
        .map(|c| {
            let oldest = c.channel.oldest_unacked(&c).map(|d| d.as_millis() as u64);
            (c, oldest)
        })
        .collect();
    let mut queue = json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.exclusive_owner.is_some(),
        "arguments": table_json(&q.arguments),
        "type": kind,
        "state": "running",
        "node": node_name(),
        "messages": c.ready + c.unacked,
        "messages_details": {"rate": sample.gauge_rates[0]},
        "messages_ready": c.ready,
        "messages_ready_details": {"rate": sample.gauge_rates[1]},
        "messages_unacknowledged": c.unacked,
        "messages_unacknowledged_details": {"rate": sample.gauge_rates[2]},
        "consumers": c.consumers,
        "consumer_utilisation": utilisation,
        "consumer_capacity": utilisation,
        "memory": c.memory,
        "consumer_details": consumers.iter().map(|(c, oldest)| json!({
            "consumer_tag": c.tag,
            "queue": {"name": q.name, "vhost": q.vhost},
            "channel_details": {"number": c.channel.id()},
            "ack_required": !c.no_ack,
            "prefetch_count": c.prefetch,
            "exclusive": c.exclusive,
            "arguments": table_json(&c.arguments),
            "oldest_unacked_ms": oldest,
        })).collect::<Vec<_>>(),
        "oldest_unacked_ms": consumers.iter().filter_map(|(_, o)| *o).max(),
        "message_stats": {
            "deliver": kinds[0], "deliver_no_ack": kinds[1],
            "get": kinds[2], "get_no_ack": kinds[3], "get_empty": kinds[4],
            "publish": publish, "publish_details": rate(0),
            "deliver_get": deliver_get, "deliver_get_details": rate(1),
            "redeliver": redeliver, "redeliver_details": rate(2),
            "ack": ack, "ack_details": rate(3),
            "get_details": {"rate": sample.got_rate},
        },
    });
    if ask.lengths.is_some() || ask.msg_rates.is_some() {
        let now = crate::broker::timers::now_ms();
        q.stats.with_history(|h| {
            let lengths = ["messages", "messages_ready", "messages_unacknowledged"];
            for (i, name) in lengths.into_iter().enumerate() {
                let key = format!("{name}_details");
                queue[&key] =
                    history::details(sample.gauge_rates[i], ask.lengths, |t| h.at(t), i, now);
            }
            let stats = &mut queue["message_stats"];
            let rates = ["publish", "deliver_get", "redeliver", "ack"];
            for (i, name) in rates.into_iter().enumerate() {
                let key = format!("{name}_details");
                stats[&key] =
                    history::details(sample.rates[i], ask.msg_rates, |t| h.at(t), 3 + i, now);
            }
            stats["get_details"] =
                history::details(sample.got_rate, ask.msg_rates, |t| h.at(t), 7, now);
        });
    }
    // As RabbitMQ: there only while nothing happens to the queue.
    if let Some(ms) = sample.idle_since_ms {
        queue["idle_since"] = json!(super::health::iso_time(ms));
    }
    // Beside the above: one json! of everything passes the macro's
    // recursion limit.
    let head = q.head();
    let sizes = json!({
        "message_bytes": c.ready_bytes + c.unacked_bytes,
        "message_bytes_ready": c.ready_bytes,
        "message_bytes_unacknowledged": c.unacked_bytes,
        // Ready bodies in memory (all of them unless paged out) and the
        // unacknowledged ones, which channels hold.
        "message_bytes_ram": (c.memory as u64).min(c.ready_bytes) + c.unacked_bytes,
        "message_bytes_paged_out": c.ready_bytes.saturating_sub(c.memory as u64),
        "message_bytes_persistent": c.persistent.bytes,
        "messages_persistent": c.persistent.messages,
        "messages_ram": c.ready_in_memory + c.unacked,
        "messages_ready_ram": c.ready_in_memory,
        "messages_unacknowledged_ram": c.unacked,
        "messages_paged_out": c.ready - c.ready_in_memory,
        "head_message_timestamp": head.message.as_ref().and_then(|m| timestamp(&m.properties)),
        // How long the next message to deliver has waited in this queue
        // (paged out or not); null when empty or not known.
        "head_message_age_ms": head.age_ms(crate::broker::timers::now_ms()),
    });
    if let (Some(queue), Value::Object(sizes)) = (queue.as_object_mut(), sizes) {
        queue.extend(sizes);
    }
    super::policies::queue_fields(q, &mut queue);
    super::streams::queue_fields(q, subscriptions, &mut queue);
    queue
}

fn visible_vhosts(broker: &Broker, user: &User) -> Vec<Arc<VHost>> {
    broker
        .vhosts()
        .into_iter()
        .filter(|v| user.may_see(broker, &v.name))
        .collect()
}

pub(super) async fn queues(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let queues = visible_vhosts(&broker, &user)
        .iter()
        .flat_map(|v| v.queues())
        .collect();
    list_queues(&broker, queues, &query)
}

/// Queues in the API's order (vhost, then name), their JSON built only
/// for what the page shows when the order needs only names. Leveret's
/// own `type` parameter (`classic`, `quorum`, `stream`) keeps queues of
/// that type, before paging: the UI's streams list.
fn list_queues(
    broker: &Broker,
    mut queues: Vec<Arc<Queue>>,
    query: &HashMap<String, String>,
) -> ApiResult {
    if let Some(wanted) = query.get("type").filter(|t| !t.is_empty()) {
        queues.retain(|q| type_name(q) == wanted);
    }
    queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    let subscriptions = Subscriptions::gather(broker);
    let ask = history::Ask::from(query);
    list_lazily(
        queues,
        |q| Some(q.name.as_str()),
        |q| queue_json(&q, ask, &subscriptions),
        query,
    )
}

pub(super) async fn queues_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    let v = user.vhost(&broker, &vhost)?;
    list_queues(&broker, v.queues(), &query)
}

fn find_queue(
    broker: &Broker,
    user: &User,
    vhost: &str,
    name: &str,
) -> Result<(Arc<VHost>, Arc<Queue>), ApiError> {
    let v = user.vhost(broker, vhost)?;
    let q = v.queue(name).map_err(|_| ApiError::not_found())?;
    Ok((v, q))
}

pub(super) async fn queue(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let (_, q) = find_queue(&broker, &user, &vhost, &name)?;
    let subscriptions = Subscriptions::gather(&broker);
    Ok(Json(queue_json(&q, history::Ask::from(&query), &subscriptions)).into_response())
}

#[derive(Deserialize)]
struct QueueBody {
    #[serde(default, deserialize_with = "lenient_bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    auto_delete: bool,
    #[serde(default)]
    arguments: Value,
}

/// Declares a queue as queue.declare would, with its permission rules,
/// for an API or definitions caller; true when it was created.
pub(super) fn declare_queue(
    gate: &mut impl Gate,
    v: &VHost,
    name: &str,
    durable: bool,
    auto_delete: bool,
    arguments: &FieldTable,
) -> Result<bool, ApiError> {
    short_string("queue", name)?;
    let (_, created) = topology::declare_queue(
        gate,
        v,
        &QueueDeclare {
            name,
            passive: false,
            durable,
            exclusive: false,
            auto_delete,
            arguments,
            connection: 0,
        },
    )?;
    Ok(created)
}

pub(super) async fn put_queue(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let v = user.vhost_for_change(&broker, &vhost)?;
    let b: QueueBody = body(&raw)?;
    let arguments = json_table(&b.arguments)?;
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    let created = declare_queue(&mut gate, &v, &name, b.durable, b.auto_delete, &arguments)?;
    Ok(created_or_updated(created))
}

pub(super) async fn delete_queue(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let (v, _) = find_queue(&broker, &user, &vhost, &name)?;
    let flag = |k: &str| query.get(k).is_some_and(|x| x == "true");
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    topology::delete_queue(
        &mut gate,
        &v,
        &name,
        flag("if-unused"),
        flag("if-empty"),
        None,
    )?;
    Ok(no_content())
}

pub(super) async fn purge_queue(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, _) = find_queue(&broker, &user, &vhost, &name)?;
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    topology::purge_queue(&mut gate, &v, &name, None)?;
    Ok(no_content())
}

#[derive(Deserialize)]
struct GetBody {
    /// An integer or a string of one (`parse_int`); 1 when absent.
    #[serde(default)]
    count: Option<Value>,
    ackmode: String,
    #[serde(default = "auto")]
    encoding: String,
    #[serde(default)]
    truncate: Option<Value>,
}

fn auto() -> String {
    "auto".into()
}

/// RabbitMQ's "get messages": takes up to `count` messages, then acks,
/// requeues or rejects them as `ackmode` says.
pub(super) async fn get_messages(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let v = user.vhost(&broker, &vhost)?;
    let q = v.queue(&name).map_err(|e| ApiError::missing(e.text))?;
    let b: GetBody = body(&raw)?;
    // Negative numbers count as zero (RabbitMQ would drain the queue or
    // fail).
    let count = b.count.as_ref().map_or(Ok(1), parse_int)?.max(0) as usize;
    let truncate = b
        .truncate
        .as_ref()
        .map(|t| parse_int(t).map(|n| n.max(0) as usize))
        .transpose()?;
    let (requeue, reject) = match b.ackmode.as_str() {
        "ack_requeue_true" => (true, false),
        "ack_requeue_false" => (false, false),
        "reject_requeue_true" => (true, true),
        "reject_requeue_false" => (false, true),
        other => return Err(ApiError::bad_request(format!("Unknown ackmode: {other}"))),
    };
    if b.encoding != "auto" && b.encoding != "base64" {
        return Err(ApiError::bad_request(
            "Unsupported encoding. Please use auto or base64.",
        ));
    }
    check(&broker, &user, &vhost, Access::Read, Resource::Queue, &name)?;
    // basic.get may wait for messages being read back from disk.
    let mut taken = Vec::new();
    while taken.len() < count {
        match q.get(false).await {
            Some(got) => taken.push(got),
            None => break,
        }
    }
    let messages: Vec<_> = taken.iter().map(|(m, _)| m.clone()).collect();
    match (requeue, reject) {
        (true, _) => q.requeue(messages),
        (false, false) => q.settle(messages.iter().map(|m| m.receipt())),
        (false, true) => q.reject(messages),
    }
    let out: Vec<Value> = taken
        .iter()
        .map(|(m, left)| {
            let msg = &m.message;
            let (payload, encoding) = payload_json(&msg.body, &b.encoding, truncate);
            json!({
                "payload_bytes": msg.body.len(),
                "redelivered": m.redelivered,
                "exchange": msg.exchange,
                "routing_key": msg.routing_key,
                "message_count": left,
                "properties": properties_json(&msg.properties),
                "payload": payload,
                "payload_encoding": encoding,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)).into_response())
}

fn payload_json(body: &[u8], encoding: &str, truncate: Option<usize>) -> (String, &'static str) {
    let body = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
    match std::str::from_utf8(body) {
        Ok(s) if encoding == "auto" => (s.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    }
}

/// The `timestamp` property, if set.
pub(super) fn timestamp(raw: &[u8]) -> Option<u64> {
    let (_, p) = parse_properties(raw).ok()?;
    p.timestamp().as_ref().copied()
}

/// Message properties as RabbitMQ's API shows them: only those set.
fn properties_json(raw: &[u8]) -> Value {
    let Ok((_, p)) = parse_properties(raw) else {
        return json!([]);
    };
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.into(), v);
        }
    };
    put(
        "content_type",
        p.content_type().as_ref().map(|s| json!(s.as_str())),
    );
    put(
        "content_encoding",
        p.content_encoding().as_ref().map(|s| json!(s.as_str())),
    );
    put("headers", p.headers().as_ref().map(table_json));
    put("delivery_mode", p.delivery_mode().map(|n| json!(n)));
    put("priority", p.priority().map(|n| json!(n)));
    put(
        "correlation_id",
        p.correlation_id().as_ref().map(|s| json!(s.as_str())),
    );
    put("reply_to", p.reply_to().as_ref().map(|s| json!(s.as_str())));
    put(
        "expiration",
        p.expiration().as_ref().map(|s| json!(s.as_str())),
    );
    put(
        "message_id",
        p.message_id().as_ref().map(|s| json!(s.as_str())),
    );
    put("timestamp", p.timestamp().map(|n| json!(n)));
    put("type", p.kind().as_ref().map(|s| json!(s.as_str())));
    put("user_id", p.user_id().as_ref().map(|s| json!(s.as_str())));
    put("app_id", p.app_id().as_ref().map(|s| json!(s.as_str())));
    put(
        "cluster_id",
        p.cluster_id().as_ref().map(|s| json!(s.as_str())),
    );
    if out.is_empty() {
        // RabbitMQ shows no properties as an empty list.
        return json!([]);
    }
    Value::Object(out)
}

/// JSON properties (as the API shows them) back into AMQP properties;
/// names that are not properties are ignored, as RabbitMQ does.
fn json_properties(v: &Value) -> Result<AMQPProperties, ApiError> {
    let Some(map) = v.as_object() else {
        return Ok(AMQPProperties::default());
    };
    let mut p = AMQPProperties::default();
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) if k == "expiration" || k == "message_id" || k == "correlation_id" => {
                Ok(Some(other.to_string()))
            }
            Some(_) => Err(ApiError::bad_request(format!(
                "property {k} must be a string"
            ))),
        }
    };
    let number = |k: &str| -> Result<Option<u64>, ApiError> {
        match map.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| ApiError::bad_request(format!("property {k} must be a number"))),
        }
    };
    let short = |k: &str| -> Result<Option<ShortString>, ApiError> {
        text(k)?.map(|s| short_string(k, &s)).transpose()
    };
    if let Some(s) = short("content_type")? {
        p = p.with_content_type(s);
    }
    if let Some(s) = short("content_encoding")? {
        p = p.with_content_encoding(s);
    }
    if let Some(h) = map.get("headers") {
        p = p.with_headers(json_table(h)?);
    }
    if let Some(n) = number("delivery_mode")? {
        p = p.with_delivery_mode(n as u8);
    }
    if let Some(n) = number("priority")? {
        p = p.with_priority(n as u8);
    }
    if let Some(s) = short("correlation_id")? {
        p = p.with_correlation_id(s);
    }
    if let Some(s) = short("reply_to")? {
        p = p.with_reply_to(s);
    }
    if let Some(s) = short("expiration")? {
        p = p.with_expiration(s);
    }
    if let Some(s) = short("message_id")? {
        p = p.with_message_id(s);
    }
    if let Some(n) = number("timestamp")? {
        p = p.with_timestamp(n);
    }
    if let Some(s) = short("type")? {
        p = p.with_type(s);
    }
    if let Some(s) = short("user_id")? {
        p = p.with_user_id(s);
    }
    if let Some(s) = short("app_id")? {
        p = p.with_app_id(s);
    }
    if let Some(s) = short("cluster_id")? {
        p = p.with_cluster_id(s);
    }
    Ok(p)
}

// ---------------------------------------------------------------- exchanges

pub(super) fn exchange_json(vhost: &str, e: &Exchange) -> Value {
    let mut out = json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table_json(&e.arguments),
        "user_who_performed_action": "",
    });
    // As RabbitMQ: no message_stats until something was published to it,
    // and no publish_out until something was routed on.
    let [publish_in, publish_out] = e.stats.counts();
    let [rate_in, rate_out] = e.stats.rates();
    if publish_in > 0 {
        out["message_stats"] = json!({
            "publish_in": publish_in, "publish_in_details": {"rate": rate_in},
        });
        if publish_out > 0 {
            out["message_stats"]["publish_out"] = json!(publish_out);
            out["message_stats"]["publish_out_details"] = json!({"rate": rate_out});
        }
    }
    super::policies::exchange_fields(e, &mut out);
    out
}

pub(super) async fn exchanges(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = visible_vhosts(&broker, &user)
        .iter()
        .flat_map(|v| {
            v.exchanges()
                .iter()
                .map(|e| exchange_json(&v.name, e))
                .collect::<Vec<_>>()
        })
        .collect();
    list(by_vhost_and_name(items), &query)
}

pub(super) async fn exchanges_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    let v = user.vhost(&broker, &vhost)?;
    let items = v
        .exchanges()
        .iter()
        .map(|e| exchange_json(&v.name, e))
        .collect();
    list(by_vhost_and_name(items), &query)
}

/// `amq.default` is the API's name for the nameless default exchange.
fn unalias(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

fn find_exchange(
    broker: &Broker,
    user: &User,
    vhost: &str,
    name: &str,
) -> Result<(Arc<VHost>, Arc<Exchange>), ApiError> {
    let v = user.vhost(broker, vhost)?;
    let e = v
        .exchange(unalias(name))
        .map_err(|_| ApiError::not_found())?;
    Ok((v, e))
}

pub(super) async fn exchange(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let (v, e) = find_exchange(&broker, &user, &vhost, &name)?;
    Ok(Json(exchange_json(&v.name, &e)).into_response())
}

#[derive(Deserialize)]
struct ExchangeBody {
    #[serde(rename = "type", default = "direct")]
    kind: String,
    #[serde(default, deserialize_with = "lenient_bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    auto_delete: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

/// Declares an exchange as exchange.declare would, with its permission
/// rules; true when created.
#[allow(clippy::too_many_arguments)]
pub(super) fn declare_exchange(
    gate: &mut impl Gate,
    v: &VHost,
    name: &str,
    kind: &str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: &FieldTable,
) -> Result<bool, ApiError> {
    short_string("exchange", name)?;
    if ExchangeKind::parse(kind).is_none() {
        return Err(ApiError::bad_request(format!(
            "unknown exchange type '{kind}'"
        )));
    }
    let created = topology::declare_exchange(
        gate,
        v,
        &ExchangeDeclare {
            name,
            kind,
            passive: false,
            durable,
            auto_delete,
            internal,
            arguments,
        },
    )?;
    Ok(created)
}

pub(super) async fn put_exchange(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let v = user.vhost_for_change(&broker, &vhost)?;
    let b: ExchangeBody = body(&raw)?;
    let arguments = json_table(&b.arguments)?;
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    let created = declare_exchange(
        &mut gate,
        &v,
        &name,
        &b.kind,
        b.durable,
        b.auto_delete,
        b.internal,
        &arguments,
    )?;
    Ok(created_or_updated(created))
}

pub(super) async fn delete_exchange(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let (v, _) = find_exchange(&broker, &user, &vhost, &name)?;
    let if_unused = query.get("if-unused").is_some_and(|x| x == "true");
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    topology::delete_exchange(&mut gate, &v, &name, if_unused)?;
    Ok(no_content())
}

#[derive(Deserialize)]
struct PublishBody {
    #[serde(default)]
    properties: Value,
    routing_key: String,
    payload: String,
    payload_encoding: String,
}

fn direct() -> String {
    "direct".into()
}

/// Publishes one message, as basic.publish would; answers whether it was
/// routed to a queue.
pub(super) async fn publish(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let v = user.vhost(&broker, &vhost)?;
    // RabbitMQ answers this one with 400 and the AMQP code in the reason.
    let e = v
        .exchange(unalias(&name))
        .map_err(|e| ApiError::bad_request(format!("404 {}", e.text)))?;
    let b: PublishBody = body(&raw)?;
    short_string("routing_key", &b.routing_key)?;
    let payload = match b.payload_encoding.as_str() {
        "string" => Bytes::from(b.payload.into_bytes()),
        "base64" => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b.payload.as_bytes())
                .map_err(|_| ApiError::bad_request(json!(["not_base64", b.payload])))?,
        ),
        other => {
            return Err(ApiError::bad_request(json!([
                "unsupported_encoding",
                other
            ])))
        }
    };
    let props = json_properties(&b.properties)?;
    let raw_props = cookie_factory::gen_simple(gen_properties(&props), Vec::new())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let properties = Bytes::from(raw_props);
    let view = PropertiesView::scan(&properties)
        .map_err(|_| ApiError::bad_request("invalid message properties"))?;
    let outgoing = Outgoing {
        exchange: e.name.clone(),
        routing_key: b.routing_key,
        properties,
        view,
        body: payload,
    };
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    match publish::publish_confirmed(&broker, &v, &mut gate, outgoing).await {
        Ok(routed) => Ok(Json(json!({ "routed": routed })).into_response()),
        // As RabbitMQ, whose HTTP publish goes through a channel: the
        // error that closed it, with its code, in a 400.
        Err(Failed::Refused(e)) => Err(ApiError::bad_request(format!(
            "{} {}",
            e.code as u16, e.text
        ))),
        Err(Failed::Rejected) => Err(ApiError::bad_request(
            "rejected Unable to publish message. Check queue limits.",
        )),
        Err(Failed::TimedOut) => Err(ApiError::bad_request(
            "confirm_timeout Timed out waiting for a publisher confirm. The message may still have been enqueued. Check the health of the queues bound to this exchange.",
        )),
    }
}

/// Permission checks of a management API user in one vhost.
pub(super) struct ApiGate<'a> {
    broker: &'a Broker,
    user: &'a str,
    vhost: &'a str,
}

impl<'a> ApiGate<'a> {
    pub(super) fn new(broker: &'a Broker, user: &'a User, vhost: &'a str) -> ApiGate<'a> {
        ApiGate {
            broker,
            user: &user.name,
            vhost,
        }
    }
}

impl Gate for ApiGate<'_> {
    fn user(&self) -> &str {
        self.user
    }

    fn check(&mut self, access: Access, resource: Resource, name: &str) -> Result<(), AmqpError> {
        self.broker
            .access
            .check(self.user, self.vhost, access, resource, name)
    }

    fn check_topic(
        &mut self,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        match self
            .broker
            .access
            .topic_permissions_of(self.vhost, self.user)
        {
            None => Ok(()),
            Some(t) => t.check(self.user, self.vhost, access, exchange, routing_key),
        }
    }
}

// ---------------------------------------------------------------- bindings

/// RabbitMQ's `properties_key`: the routing key URL-quoted ("~" when
/// empty), then `~` and a hash of the arguments when there are any.
pub(super) fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    let mut key = if routing_key.is_empty() {
        "~".to_string()
    } else {
        quote_binding(routing_key)
    };
    if !arguments.inner().is_empty() {
        let encoded = cookie_factory::gen_simple(
            amq_protocol::types::generation::gen_field_table(arguments),
            Vec::new(),
        )
        .unwrap_or_default();
        let hash = crc32fast::hash(&encoded).to_be_bytes();
        if routing_key.is_empty() {
            key.clear();
        }
        key.push('~');
        key.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash));
    }
    key
}

/// Whether `props`, a properties key from a request path (decoded once),
/// names binding `b`. As RabbitMQ, its routing-key part is unquoted once
/// more, so both the key as listed (`a.%2A`) and as typed (`a.*`, which
/// rabbitmqadmin sends) work.
fn names_binding(props: &str, b: &Binding) -> bool {
    let listed = properties_key(&b.routing_key, &b.arguments);
    let listed_args = listed.split_once('~').map_or("", |(_, args)| args);
    let (key, args) = props.split_once('~').unwrap_or((props, ""));
    args == listed_args && unquote(key) == b.routing_key
}

/// RabbitMQ's `unquote`: `+` is a space, `%XX` an octet; anything else,
/// a malformed escape included, stays as it is.
fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Form encoding for a binding's routing key: as [`quote`], and `~` (the
/// separator in a properties key) as `%7E`.
fn quote_binding(s: &str) -> String {
    quote(s).replace('~', "%7E")
}

/// Form encoding as RabbitMQ's `quote_plus`: space is `+`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn binding_json(vhost: &str, source: &str, b: &Binding) -> Value {
    let (destination, kind) = match &b.destination {
        Destination::Queue(q) => (q.name.as_str(), "queue"),
        Destination::Exchange(e) => (e.as_str(), "exchange"),
    };
    json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": kind,
        "routing_key": b.routing_key,
        "arguments": table_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// The default exchange's implicit binding of a queue, as RabbitMQ lists it.
fn default_binding_json(vhost: &str, queue: &str) -> Value {
    json!({
        "source": "",
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": queue,
        "arguments": {},
        "properties_key": quote_binding(queue),
    })
}

/// Every binding of a vhost: the default exchange's first, then by source.
pub(super) fn vhost_bindings(v: &VHost) -> Vec<Value> {
    let mut queues = v.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<Value> = queues
        .iter()
        .map(|q| default_binding_json(&v.name, &q.name))
        .collect();
    let mut exchanges = v.exchanges();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    for e in exchanges.iter().filter(|e| !e.name.is_empty()) {
        for b in e.bindings() {
            out.push(binding_json(&v.name, &e.name, &b));
        }
    }
    out
}

pub(super) async fn bindings(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = visible_vhosts(&broker, &user)
        .iter()
        .flat_map(|v| vhost_bindings(v))
        .collect();
    list(items, &query)
}

pub(super) async fn bindings_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    let v = user.vhost(&broker, &vhost)?;
    list(vhost_bindings(&v), &query)
}

pub(super) async fn queue_bindings(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let (v, _) = find_queue(&broker, &user, &vhost, &name)?;
    let items = vhost_bindings(&v)
        .into_iter()
        .filter(|b| b["destination_type"] == "queue" && b["destination"] == name.as_str())
        .collect();
    list(items, &query)
}

pub(super) async fn exchange_bindings_source(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let (v, e) = find_exchange(&broker, &user, &vhost, &name)?;
    let items = if e.name.is_empty() {
        vhost_bindings(&v)
            .into_iter()
            .filter(|b| b["source"] == "")
            .collect()
    } else {
        e.bindings()
            .iter()
            .map(|b| binding_json(&v.name, &e.name, b))
            .collect()
    };
    list(items, &query)
}

pub(super) async fn exchange_bindings_destination(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let (v, e) = find_exchange(&broker, &user, &vhost, &name)?;
    let items = vhost_bindings(&v)
        .into_iter()
        .filter(|b| b["destination_type"] == "exchange" && b["destination"] == e.name.as_str())
        .collect();
    list(items, &query)
}

/// `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
#[derive(Deserialize)]
pub(super) struct BindingPath {
    vhost: String,
    source: String,
    destination: String,
}

#[derive(Deserialize)]
pub(super) struct BindingPropsPath {
    vhost: String,
    source: String,
    destination: String,
    props: String,
}

/// A missing end of a binding being made: 404 with AMQP's detail.
fn missing_end(e: AmqpError) -> ApiError {
    ApiError::missing(super::api::detail(&e))
}

/// The queue or exchange a binding goes to; `missing` says how an absent
/// one is reported (404 "Object Not Found" in a path, AMQP's detail when
/// binding).
fn destination(
    v: &VHost,
    to_queue: bool,
    name: &str,
    missing: fn(AmqpError) -> ApiError,
) -> Result<Destination, ApiError> {
    if to_queue {
        Ok(Destination::Queue(v.queue(name).map_err(missing)?))
    } else {
        v.exchange(name).map_err(missing)?;
        Ok(Destination::Exchange(name.to_string()))
    }
}

fn not_found(_: AmqpError) -> ApiError {
    ApiError::not_found()
}

fn between(
    broker: &Broker,
    user: &User,
    p: &BindingPath,
    to_queue: bool,
) -> Result<Vec<Value>, ApiError> {
    let (v, e) = find_exchange(broker, user, &p.vhost, &p.source)?;
    let dest = destination(&v, to_queue, &p.destination, not_found)?;
    if e.name.is_empty() {
        return Ok(match &dest {
            Destination::Queue(q) => vec![default_binding_json(&v.name, &q.name)],
            Destination::Exchange(_) => Vec::new(),
        });
    }
    Ok(e.bindings()
        .iter()
        .filter(|b| b.destination.same(&dest))
        .map(|b| binding_json(&v.name, &e.name, b))
        .collect())
}

pub(super) async fn bindings_between_queue(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPath>,
) -> ApiResult {
    Ok(Json(Value::Array(between(&broker, &user, &p, true)?)).into_response())
}

pub(super) async fn bindings_between_exchange(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPath>,
) -> ApiResult {
    Ok(Json(Value::Array(between(&broker, &user, &p, false)?)).into_response())
}

#[derive(Deserialize)]
struct BindBody {
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Value,
}

/// A binding to make.
pub(super) struct NewBinding<'a> {
    pub(crate) source: &'a str,
    pub(crate) to_queue: bool,
    pub(crate) destination: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) arguments: FieldTable,
}

/// Binds as queue.bind / exchange.bind would, with their permission
/// rules; returns the binding's properties key.
pub(super) fn bind(gate: &mut impl Gate, v: &VHost, n: NewBinding<'_>) -> Result<String, ApiError> {
    let NewBinding {
        source,
        to_queue,
        destination,
        routing_key,
        arguments,
    } = n;
    short_string("routing_key", routing_key)?;
    let source = unalias(source);
    let to = if to_queue {
        BindTo::Queue(destination)
    } else {
        BindTo::Exchange(unalias(destination))
    };
    let b = Bind {
        source,
        to,
        routing_key,
        arguments: &arguments,
    };
    topology::bind(gate, v, &b, None, true).map_err(binding_error)?;
    Ok(properties_key(routing_key, &arguments))
}

/// A binding refused: 404 with AMQP's detail for a missing end, 400 with
/// the AMQP error for bad arguments, 401 for permissions.
fn binding_error(e: AmqpError) -> ApiError {
    match e.code {
        ReplyCode::NotFound => missing_end(e),
        ReplyCode::PreconditionFailed => {
            ApiError::bad_request(format!("{} {}", e.code as u16, e.text))
        }
        _ => ApiError::from_amqp(e),
    }
}

async fn post_binding(
    broker: Arc<Broker>,
    user: User,
    p: BindingPath,
    to_queue: bool,
    raw: Bytes,
) -> ApiResult {
    let v = user.vhost_for_change(&broker, &p.vhost)?;
    let b: BindBody = body(&raw)?;
    let arguments = json_table(&b.arguments)?;
    let mut gate = ApiGate::new(&broker, &user, &p.vhost);
    let key = bind(
        &mut gate,
        &v,
        NewBinding {
            source: &p.source,
            to_queue,
            destination: &p.destination,
            routing_key: &b.routing_key,
            arguments,
        },
    )?;
    // Relative to the request, as RabbitMQ: `destination/properties_key`.
    let location = format!("{}/{}", quote(&p.destination), quote(&key));
    Ok((StatusCode::CREATED, [(header::LOCATION, location)]).into_response())
}

pub(super) async fn post_queue_binding(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPath>,
    raw: Bytes,
) -> ApiResult {
    post_binding(broker, user, p, true, raw).await
}

pub(super) async fn post_exchange_binding(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPath>,
    raw: Bytes,
) -> ApiResult {
    post_binding(broker, user, p, false, raw).await
}

fn one_binding(
    broker: &Broker,
    user: &User,
    p: BindingPropsPath,
    to_queue: bool,
) -> Result<(Arc<VHost>, Arc<Exchange>, Binding), ApiError> {
    let (v, e) = find_exchange(broker, user, &p.vhost, &p.source)?;
    let dest = destination(&v, to_queue, &p.destination, not_found)?;
    let found = e
        .bindings()
        .into_iter()
        .find(|b| b.destination.same(&dest) && names_binding(&p.props, b))
        .ok_or_else(ApiError::not_found)?;
    Ok((v, e, found))
}

pub(super) async fn queue_binding(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPropsPath>,
) -> ApiResult {
    let (v, e, b) = one_binding(&broker, &user, p, true)?;
    Ok(Json(binding_json(&v.name, &e.name, &b)).into_response())
}

pub(super) async fn exchange_binding(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPropsPath>,
) -> ApiResult {
    let (v, e, b) = one_binding(&broker, &user, p, false)?;
    Ok(Json(binding_json(&v.name, &e.name, &b)).into_response())
}

async fn unbind(broker: Arc<Broker>, user: User, p: BindingPropsPath, to_queue: bool) -> ApiResult {
    if find_exchange(&broker, &user, &p.vhost, &p.source)?
        .1
        .name
        .is_empty()
    {
        return Err(ApiError::not_authorised("Access refused."));
    }
    let vhost = p.vhost.clone();
    let (v, e, b) = one_binding(&broker, &user, p, to_queue)?;
    let to = match &b.destination {
        Destination::Queue(q) => BindTo::Queue(&q.name),
        Destination::Exchange(x) => BindTo::Exchange(x),
    };
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    let unbind = Bind {
        source: &e.name,
        to,
        routing_key: &b.routing_key,
        arguments: &b.arguments,
    };
    topology::bind(&mut gate, &v, &unbind, None, false).map_err(binding_error)?;
    Ok(no_content())
}

pub(super) async fn delete_queue_binding(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPropsPath>,
) -> ApiResult {
    unbind(broker, user, p, true).await
}

pub(super) async fn delete_exchange_binding(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(p): Path<BindingPropsPath>,
) -> ApiResult {
    unbind(broker, user, p, false).await
}

#[cfg(test)]
mod tests {
    use super::unquote;

    #[test]
    fn unquote_as_rabbitmq() {
        assert_eq!(unquote("a.%2A"), "a.*");
        assert_eq!(unquote("a.*"), "a.*");
        assert_eq!(unquote("x+y%7Ez"), "x y~z");
        assert_eq!(unquote("100%"), "100%");
        assert_eq!(unquote("%zz%4"), "%zz%4");
        assert_eq!(unquote("%C3%A9"), "é");
    }
}
