//! What the management API and `/metrics` show of stream queues: where
//! the log stands (first and last offset, segments, bytes on disk), each
//! consumer's offset and lag behind the tail (AMQP consumers and stream
//! protocol subscriptions alike), and the offsets stored for named readers
//! with their lag.

use super::api::{body, created_or_updated, json_table, no_content, ApiError, ApiResult, User};
use super::objects::ApiGate;
use crate::broker::queue::Queue;
use crate::broker::stream_clients::SubscriptionStats;
use crate::broker::super_stream;
use crate::broker::Broker;
use crate::hash::HashMap;
use amq_protocol::types::FieldTable;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// One reader's place: its consumer tag, next offset and lag; for a
/// stream protocol subscription, its connection's name.
pub(super) struct ReaderRow {
    pub(super) tag: String,
    pub(super) next: u64,
    pub(super) lag: u64,
    pub(super) connection: Option<String>,
}

/// The stream protocol's subscriptions, with their connections, gathered
/// once for a request or a scrape and indexed by their queue (an `Arc`'s
/// address), so listing many queues stays linear.
#[derive(Default)]
pub(super) struct Subscriptions(HashMap<usize, Vec<(Holder, Arc<SubscriptionStats>)>>);

/// The connection a subscription is on.
struct Holder {
    name: String,
    user: String,
    peer: std::net::SocketAddr,
}

impl Subscriptions {
    pub(super) fn gather(broker: &Broker) -> Subscriptions {
        let mut all: HashMap<usize, Vec<_>> = HashMap::default();
        for c in broker.connections.iter() {
            if let Some(client) = &c.stream {
                for s in client.subscriptions() {
                    let holder = Holder {
                        name: c.name.clone(),
                        user: c.user.clone(),
                        peer: c.peer,
                    };
                    let queue = Arc::as_ptr(&s.queue) as usize;
                    all.entry(queue).or_default().push((holder, s));
                }
            }
        }
        for subs in all.values_mut() {
            subs.sort_by(|a, b| (&a.0.name, a.1.id).cmp(&(&b.0.name, b.1.id)));
        }
        Subscriptions(all)
    }

    /// `q`'s subscriptions (each holds its `Arc`, so the address is its).
    fn of(&self, q: &Queue) -> &[(Holder, Arc<SubscriptionStats>)] {
        let queue = q as *const Queue as usize;
        self.0.get(&queue).map_or(&[], Vec::as_slice)
    }
}

/// A stream's state for the API and metrics.
pub(super) struct StreamRow {
    pub(super) first: u64,
    /// One past the newest readable offset.
    pub(super) end: u64,
    pub(super) segments: usize,
    pub(super) bytes: u64,
    pub(super) readers: Vec<ReaderRow>,
    /// (name, stored offset, lag).
    pub(super) stored: Vec<(String, u64, u64)>,
    /// In force: the arguments resolved against the policy.
    pub(super) retention: crate::store::stream_writer::Retention,
}

pub(super) fn row(q: &Queue, subscriptions: &Subscriptions) -> Option<StreamRow> {
    let s = q.stream()?;
    let extent = s.extent();
    let end = s.readable_end();
    let amqp = s.readers().into_iter().map(|r| {
        let next = r.next.load(std::sync::atomic::Ordering::Relaxed);
        ReaderRow {
            tag: r.consumer.tag.clone(),
            next,
            lag: end.saturating_sub(next),
            connection: None,
        }
    });
    let stream_protocol = subscriptions.of(q).iter().map(|(holder, s)| {
        let next = s.next();
        ReaderRow {
            tag: s.consumer_tag(),
            next,
            lag: end.saturating_sub(next),
            connection: Some(holder.name.clone()),
        }
    });
    let readers = amqp.chain(stream_protocol).collect();
    let stored = s
        .stored_offsets()
        .into_iter()
        .map(|(name, offset)| {
            let lag = end.saturating_sub(offset + 1);
            (name, offset, lag)
        })
        .collect();
    Some(StreamRow {
        first: extent.first,
        end,
        segments: extent.segments,
        bytes: extent.bytes,
        readers,
        stored,
        retention: s.retention(),
    })
}

/// Adds a stream's fields to its queue's JSON: RabbitMQ's `segments`,
/// `first_offset` and `committed_offset`, and a `stream` object with the
/// readers and stored offsets; each stream consumer's entry in
/// `consumer_details` gets its `offset` and `lag`, and stream protocol
/// subscriptions count among the consumers, as RabbitMQ lists them.
pub(super) fn queue_fields(q: &Queue, subscriptions: &Subscriptions, queue: &mut Value) {
    let Some(row) = row(q, subscriptions) else {
        return;
    };
    let last = row.end.checked_sub(1).filter(|l| *l >= row.first);
    if let Some(details) = queue["consumer_details"].as_array_mut() {
        for d in details.iter_mut() {
            let tag = d["consumer_tag"].as_str().unwrap_or_default();
            let amqp = row.readers.iter().filter(|r| r.connection.is_none());
            if let Some(r) = amqp.into_iter().find(|r| r.tag == tag) {
                d["offset"] = json!(r.next);
                d["lag"] = json!(r.lag);
            }
        }
        for (holder, s) in subscriptions.of(q) {
            details.push(subscription_as_consumer(q, holder, s));
        }
    }
    let added = subscriptions.of(q).len() as u64;
    if let Some(n) = queue["consumers"].as_u64() {
        queue["consumers"] = json!(n + added);
    }
    let stored: Map<String, Value> = row
        .stored
        .iter()
        .map(|(name, offset, lag)| (name.clone(), json!({"offset": offset, "lag": lag})))
        .collect();
    queue["segments"] = json!(row.segments);
    queue["first_offset"] = json!(row.first);
    queue["committed_offset"] = json!(last);
    queue["stream"] = json!({
        "first_offset": row.first,
        "last_offset": last,
        "segments": row.segments,
        "bytes": row.bytes,
        "readers": row.readers.iter().map(|r| match &r.connection {
            None => json!({
                "consumer_tag": r.tag, "offset": r.next, "lag": r.lag,
                "protocol": "AMQP 0-9-1",
            }),
            Some(connection) => json!({
                "consumer_tag": r.tag, "offset": r.next, "lag": r.lag,
                "protocol": "stream", "connection": connection,
            }),
        }).collect::<Vec<_>>(),
        "stored_offsets": stored,
        "retention": {
            "max_length_bytes": row.retention.max_bytes,
            "max_age_ms": row.retention.max_age_ms,
        },
    });
}

/// A stream protocol subscription among a queue's `consumer_details`, as
/// RabbitMQ shows it: its tag, no channel, no acks.
fn subscription_as_consumer(q: &Queue, holder: &Holder, s: &SubscriptionStats) -> Value {
    let properties: Map<String, Value> = s
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let (active, status) = match (s.in_group, s.is_active()) {
        (false, _) => (true, "up"),
        (true, true) => (true, "single_active"),
        (true, false) => (false, "waiting"),
    };
    json!({
        "consumer_tag": s.consumer_tag(),
        "queue": {"name": q.name, "vhost": q.vhost},
        "channel_details": {
            "name": "",
            "number": 0,
            "connection_name": holder.name,
            "peer_host": holder.peer.ip().to_string(),
            "peer_port": holder.peer.port(),
            "user": holder.user,
            "node": super::api::node_name(),
        },
        "ack_required": false,
        "prefetch_count": 0,
        "exclusive": false,
        "active": active,
        "activity_status": status,
        "arguments": properties,
        "offset": s.next(),
        "lag": q.stream().map_or(0, |l| l.readable_end()).saturating_sub(s.next()),
    })
}

// ---------------------------------------------------------------- super streams

/// `PUT /api/stream/super-streams/{vhost}/{name}`, as RabbitMQ 3.13's
/// stream management plugin: `partitions` (a count) or `binding-keys`
/// (comma-separated), and the partitions' `arguments`.
#[derive(serde::Deserialize)]
pub(super) struct SuperStreamBody {
    #[serde(default)]
    partitions: Option<Value>,
    #[serde(default, rename = "binding-keys")]
    binding_keys: Option<Value>,
    #[serde(default)]
    arguments: Value,
}

pub(super) async fn put_super_stream(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    let v = user.vhost_for_change(&broker, &vhost)?;
    let b: SuperStreamBody = body(&raw)?;
    let partitions = match (&b.partitions, &b.binding_keys) {
        (Some(p), _) => {
            let n = p
                .as_u64()
                .or_else(|| p.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| ApiError::bad_request("The partitions must be a number"))?;
            if n < 1 {
                return Err(ApiError::bad_request(
                    "The partition number must be greater than 0",
                ));
            }
            if n > super_stream::MAX_PARTITIONS as u64 {
                return Err(ApiError::bad_request(format!(
                    "The partition number must not exceed {}",
                    super_stream::MAX_PARTITIONS
                )));
            }
            super_stream::by_count(&name, n as usize)
        }
        (None, Some(keys)) => {
            let keys: Vec<String> = keys
                .as_str()
                .ok_or_else(|| ApiError::bad_request("The binding keys must be a string"))?
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() || keys.len() > super_stream::MAX_PARTITIONS {
                return Err(ApiError::bad_request(format!(
                    "There must be between 1 and {} binding keys",
                    super_stream::MAX_PARTITIONS
                )));
            }
            super_stream::by_binding_keys(&name, &keys)
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "One of partitions or binding-keys must be set",
            ))
        }
    };
    let arguments = if b.arguments.is_null() {
        FieldTable::default()
    } else {
        json_table(&b.arguments)?
    };
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    super_stream::create(&mut gate, &v, &name, &partitions, &arguments)?;
    Ok(created_or_updated(true))
}

/// `GET /api/stream/super-streams/{vhost}/{name}` (Leveret's): the
/// partitions in order.
pub(super) async fn super_stream(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let v = user.vhost_for_change(&broker, &vhost)?;
    let partitions = super_stream::partitions(&v, &name).map_err(|_| ApiError::not_found())?;
    Ok(axum::Json(json!({"name": name, "vhost": vhost, "partitions": partitions})).into_response())
}

/// `DELETE /api/stream/super-streams/{vhost}/{name}` (Leveret's; RabbitMQ
/// deletes them with `rabbitmq-streams delete_super_stream`).
pub(super) async fn delete_super_stream(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let v = user.vhost_for_change(&broker, &vhost)?;
    if super_stream::partitions(&v, &name).is_err() {
        return Err(ApiError::not_found());
    }
    let mut gate = ApiGate::new(&broker, &user, &vhost);
    super_stream::delete(&mut gate, &v, &name)?;
    Ok(no_content())
}
