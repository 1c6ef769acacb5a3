//! RabbitMQ's `rabbitmq_stream_management` endpoints: stream protocol
//! connections (`/api/stream/connections…`), their publishers and
//! consumers (`/api/stream/publishers…`, `/api/stream/consumers…`), with
//! RabbitMQ's field names.
//!
//! Stream connections live in `Broker::connections` beside AMQP's (marked
//! by their `stream` part), so `/api/connections` lists them too and one
//! close path serves both. Visibility as RabbitMQ's: administrators and
//! monitoring users see every connection, publisher and consumer,
//! management users those of their own connections.

use super::api::{list, node_name, ApiError, ApiResult, User};
use super::live::{close_by_id, connection_json, connections_for, may_look_at, sorted_by_name};
use crate::broker::stream_clients::{PublisherStats, StreamClient, SubscriptionStats};
use crate::broker::{Broker, ConnectionHandle};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

fn is_stream(json: &Value) -> bool {
    json["protocol"] == "stream"
}

/// `GET /api/stream/connections`.
pub(super) async fn connections(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = connections_for(&broker, &user)
        .into_iter()
        .map(|c| c.json)
        .filter(is_stream)
        .collect();
    list(sorted_by_name(items), &query)
}

/// `GET /api/stream/connections/{vhost}`: 404 for a vhost that does not
/// exist.
pub(super) async fn connections_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    let items = connections_for(&broker, &user)
        .into_iter()
        .map(|c| c.json)
        .filter(|c| is_stream(c) && c["vhost"] == vhost.as_str())
        .collect();
    list(sorted_by_name(items), &query)
}

/// The stream connection `name` in `vhost`, if `user` may see it: its
/// id, its JSON and its client.
fn find(
    broker: &Broker,
    user: &User,
    vhost: &str,
    name: &str,
) -> Result<(u64, Value, Arc<StreamClient>), ApiError> {
    let (id, json, client, owner) = broker
        .connections
        .iter()
        .find(|c| c.name == name && c.vhost == vhost)
        .and_then(|c| {
            let client = c.stream.clone()?;
            Some((*c.key(), connection_json(&c).json, client, c.user.clone()))
        })
        .ok_or_else(ApiError::not_found)?;
    may_look_at(user, &owner)?;
    Ok((id, json, client))
}

/// `GET /api/stream/connections/{vhost}/{name}`.
pub(super) async fn connection(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    Ok(Json(find(&broker, &user, &vhost, &name)?.1).into_response())
}

/// `DELETE /api/stream/connections/{vhost}/{name}`: closes it as
/// `DELETE /api/connections/{name}` does.
pub(super) async fn close_connection(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let (id, _, _) = find(&broker, &user, &vhost, &name)?;
    close_by_id(&broker, &user, id, &headers)
}

/// `GET /api/stream/connections/{vhost}/{name}/publishers`.
pub(super) async fn connection_publishers(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    find(&broker, &user, &vhost, &name)?;
    let items = publishers_of(&broker, &user, |c| c.name == name && c.vhost == vhost);
    list(items, &query)
}

/// `GET /api/stream/connections/{vhost}/{name}/consumers`.
pub(super) async fn connection_consumers(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    find(&broker, &user, &vhost, &name)?;
    let items = consumers_of(&broker, &user, |c| c.name == name && c.vhost == vhost);
    list(items, &query)
}

/// `GET /api/stream/publishers`.
pub(super) async fn publishers(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    list(publishers_of(&broker, &user, |_| true), &query)
}

/// `GET /api/stream/publishers/{vhost}`: 404 for a vhost that does not
/// exist.
pub(super) async fn publishers_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    if broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    list(publishers_of(&broker, &user, |c| c.vhost == vhost), &query)
}

/// `GET /api/stream/publishers/{vhost}/{stream}`: 404 for a queue that
/// does not exist.
pub(super) async fn stream_publishers(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, stream)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let queue = broker
        .vhost(&vhost)
        .and_then(|v| v.queue(&stream).ok())
        .ok_or_else(ApiError::not_found)?;
    let items = publishers_of(&broker, &user, |c| c.vhost == vhost)
        .into_iter()
        .filter(|p| p["queue"]["name"] == queue.name.as_str())
        .collect();
    list(items, &query)
}

/// `GET /api/stream/consumers`.
pub(super) async fn consumers(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    list(consumers_of(&broker, &user, |_| true), &query)
}

/// `GET /api/stream/consumers/{vhost}`: 404 for a vhost that does not
/// exist.
pub(super) async fn consumers_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    if broker.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    list(consumers_of(&broker, &user, |c| c.vhost == vhost), &query)
}

/// RabbitMQ's `connection_details` of a publisher or consumer.
fn connection_details(c: &ConnectionHandle) -> Value {
    json!({
        "name": c.name,
        "user": c.user,
        "node": node_name(),
        "peer_port": c.peer.port(),
        "peer_host": c.peer.ip().to_string(),
    })
}

/// The stream connections `user` may see that `pick` takes, each with its
/// client; sorted by name.
fn clients(
    broker: &Broker,
    user: &User,
    pick: impl Fn(&ConnectionHandle) -> bool,
) -> Vec<(Value, Arc<StreamClient>)> {
    let mut out: Vec<_> = broker
        .connections
        .iter()
        .filter(|c| (user.sees_everything() || c.user == user.name) && pick(c))
        .filter_map(|c| Some((connection_details(&c), c.stream.clone()?)))
        .collect();
    out.sort_by(|a, b| a.0["name"].as_str().cmp(&b.0["name"].as_str()));
    out
}

fn publishers_of(
    broker: &Broker,
    user: &User,
    pick: impl Fn(&ConnectionHandle) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (details, client) in clients(broker, user, pick) {
        for p in client.publishers() {
            out.push(publisher_json(&details, &p));
        }
    }
    out
}

fn consumers_of(
    broker: &Broker,
    user: &User,
    pick: impl Fn(&ConnectionHandle) -> bool,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (details, client) in clients(broker, user, pick) {
        for s in client.subscriptions() {
            out.push(consumer_json(&details, &s));
        }
    }
    out
}

fn publisher_json(details: &Value, p: &PublisherStats) -> Value {
    let (published, confirmed, errored) = p.counts();
    json!({
        "connection_details": details,
        "queue": {"name": p.queue.name, "vhost": p.queue.vhost},
        "publisher_id": p.id,
        "reference": p.reference,
        "published": published,
        "confirmed": confirmed,
        "errored": errored,
    })
}

/// RabbitMQ's consumer: `offset` the last offset it was sent (before any,
/// where it starts), `offset_lag` the entries readable after what it was
/// sent; `active` and `activity_status` as RabbitMQ 3.11+ reports them.
fn consumer_json(details: &Value, s: &SubscriptionStats) -> Value {
    let end = s.queue.stream().map_or(0, |log| log.readable_end());
    let properties: Map<String, Value> = s
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let active = s.is_active();
    let status = match (s.in_group, active) {
        (false, _) => "up",
        (true, true) => "single_active",
        (true, false) => "waiting",
    };
    json!({
        "connection_details": details,
        "queue": {"name": s.queue.name, "vhost": s.queue.vhost},
        "subscription_id": s.id,
        "credits": s.credits(),
        "consumed": s.consumed(),
        "offset": s.offset(),
        "offset_lag": end.saturating_sub(s.next()),
        "properties": properties,
        "active": active,
        "activity_status": status,
    })
}
