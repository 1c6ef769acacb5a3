//! The management HTTP API, RabbitMQ-compatible paths and JSON (issue 5).
//!
//! Served on `server.mgmt_listen` beside AMQP. Every request carries HTTP
//! basic auth against the broker's users; as RabbitMQ, only users tagged
//! `administrator`, `management` or `monitoring` get in.

use crate::broker::Broker;
use crate::store::QueuedMessage;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Tags that may use the management API (RabbitMQ's management plugin).
const MANAGEMENT_TAGS: &[&str] = &["administrator", "management", "monitoring"];

/// Serves the API until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/vhosts", get(vhosts))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(queues_in))
        .route("/api/queues/{vhost}/{name}", get(queue))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(exchanges_in))
        .route("/api/exchanges/{vhost}/{name}", get(exchange))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/aliveness-test/{vhost}", get(aliveness))
        .route_layer(middleware::from_fn_with_state(broker.clone(), require_user))
        .with_state(broker);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "management API stopped");
    }
}

/// The user a request authenticated as.
#[derive(Clone)]
struct User {
    name: String,
    tags: Vec<String>,
}

/// Every route: RabbitMQ's 401 unless the request authenticates as a user
/// allowed in; the user is handed on to the handler.
async fn require_user(
    State(broker): State<Arc<Broker>>,
    mut request: Request,
    next: Next,
) -> Response {
    match authenticate(&broker, request.headers()) {
        Some((name, tags)) => {
            request.extensions_mut().insert(User { name, tags });
            next.run(request).await
        }
        None => unauthorized(),
    }
}

/// The authenticated user and its tags, if it may use the API.
fn authenticate(broker: &Broker, headers: &HeaderMap) -> Option<(String, Vec<String>)> {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok())?;
    let (user, password) = credentials.split_once(':')?;
    let tags = broker.authenticate(user, password)?.tags.clone();
    tags.iter()
        .any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
        .then(|| (user.to_string(), tags))
}

/// RabbitMQ's 401.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"RabbitMQ Management\"",
        )],
        Json(json!({"error": "not_authorized", "reason": "Not_Authorized"})),
    )
        .into_response()
}

async fn overview(State(broker): State<Arc<Broker>>) -> Response {
    let (mut queues, mut exchanges, mut consumers) = (0usize, 0usize, 0usize);
    let (mut ready, mut unacked) = (0usize, 0usize);
    for vhost in broker.vhosts() {
        exchanges += vhost.exchanges().len();
        for q in vhost.queues() {
            let c = q.counts();
            queues += 1;
            consumers += c.consumers;
            ready += c.ready;
            unacked += c.unacked;
        }
    }
    Json(json!({
        "product_name": "Leveret",
        "product_version": env!("CARGO_PKG_VERSION"),
        "management_version": env!("CARGO_PKG_VERSION"),
        "node": node_name(),
        "object_totals": {
            "connections": broker.connections.len(),
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
    }))
    .into_response()
}

async fn whoami(Extension(user): Extension<User>) -> Response {
    Json(json!({"name": user.name, "tags": user.tags})).into_response()
}

async fn vhosts(State(broker): State<Arc<Broker>>) -> Response {
    let mut list: Vec<Value> = broker
        .vhosts()
        .iter()
        .map(|v| {
            let (mut ready, mut unacked) = (0, 0);
            for q in v.queues() {
                let c = q.counts();
                ready += c.ready;
                unacked += c.unacked;
            }
            json!({
                "name": v.name,
                "messages": ready + unacked,
                "messages_ready": ready,
                "messages_unacknowledged": unacked,
            })
        })
        .collect();
    list.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(Value::Array(list)).into_response()
}

/// RabbitMQ's /api/health/checks/alarms: 200 without alarms, 503 with.
async fn alarms(State(broker): State<Arc<Broker>>) -> Response {
    if broker.memory.is_blocked() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "failed",
                "reason": "resource alarm(s) in effect",
                "alarms": [{"node": node_name(), "resource": "memory"}],
            })),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

/// RabbitMQ's aliveness test: declare `aliveness-test`, publish a message
/// to it and get it back.
async fn aliveness(State(broker): State<Arc<Broker>>, Path(vhost): Path<String>) -> Response {
    let Some(v) = broker.vhost(&vhost) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "Object Not Found", "reason": "Not Found"})),
        )
            .into_response();
    };
    let args = amq_protocol::types::FieldTable::default();
    let declared = v.declare_queue(&crate::broker::vhost::QueueDeclare {
        name: "aliveness-test",
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: &args,
        connection: 0,
    });
    let alive = declared.is_ok_and(|(queue, _)| {
        queue.publish(Arc::new(crate::broker::message::Message::new(
            String::new(),
            "aliveness-test".into(),
            bytes::Bytes::from_static(&[0, 0]),
            bytes::Bytes::from_static(b"test_message"),
            false,
        )));
        matches!(queue.get(true), Some((QueuedMessage { message, .. }, _)) if &message.body[..] == b"test_message")
    });
    if alive {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "aliveness test failed"})),
        )
            .into_response()
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "Object Not Found", "reason": "Not Found"})),
    )
        .into_response()
}

fn queue_json(q: &crate::broker::queue::Queue) -> Value {
    let c = q.counts();
    let kind = match q.args.queue_type {
        crate::broker::queue_args::QueueType::Classic => "classic",
        crate::broker::queue_args::QueueType::Quorum => "quorum",
    };
    json!({
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
        "messages_ready": c.ready,
        "messages_unacknowledged": c.unacked,
        "consumers": c.consumers,
    })
}

fn exchange_json(vhost: &str, e: &crate::broker::exchange::Exchange) -> Value {
    json!({
        "name": e.name,
        "vhost": vhost,
        "type": e.kind.as_str(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": table_json(&e.arguments),
    })
}

/// A field table as the management API shows it.
fn table_json(t: &amq_protocol::types::FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.to_string(), field_json(v)))
            .collect(),
    )
}

fn field_json(v: &amq_protocol::types::AMQPValue) -> Value {
    use amq_protocol::types::AMQPValue as V;
    match v {
        V::Boolean(b) => json!(b),
        V::ShortShortInt(n) => json!(n),
        V::ShortShortUInt(n) => json!(n),
        V::ShortInt(n) => json!(n),
        V::ShortUInt(n) => json!(n),
        V::LongInt(n) => json!(n),
        V::LongUInt(n) => json!(n),
        V::LongLongInt(n) => json!(n),
        V::Float(f) => json!(f),
        V::Double(f) => json!(f),
        V::Timestamp(t) => json!(t),
        V::ShortString(s) => json!(s.as_str()),
        V::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        V::FieldArray(a) => Value::Array(a.as_slice().iter().map(field_json).collect()),
        V::FieldTable(t) => table_json(t),
        V::ByteArray(b) => json!(b.as_slice()),
        V::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(i32::from(d.scale))),
        V::Void => Value::Null,
    }
}

/// Sorted by vhost then name, as RabbitMQ lists them.
fn sorted(mut list: Vec<Value>) -> Response {
    list.sort_by(|a, b| {
        (a["vhost"].as_str(), a["name"].as_str()).cmp(&(b["vhost"].as_str(), b["name"].as_str()))
    });
    Json(Value::Array(list)).into_response()
}

async fn queues(State(broker): State<Arc<Broker>>) -> Response {
    let list = broker
        .vhosts()
        .iter()
        .flat_map(|v| v.queues())
        .map(|q| queue_json(&q))
        .collect();
    sorted(list)
}

async fn queues_in(State(broker): State<Arc<Broker>>, Path(vhost): Path<String>) -> Response {
    let Some(v) = broker.vhost(&vhost) else {
        return not_found();
    };
    sorted(v.queues().iter().map(|q| queue_json(q)).collect())
}

async fn queue(
    State(broker): State<Arc<Broker>>,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    match broker.vhost(&vhost).and_then(|v| v.queue(&name).ok()) {
        Some(q) => Json(queue_json(&q)).into_response(),
        None => not_found(),
    }
}

async fn exchanges(State(broker): State<Arc<Broker>>) -> Response {
    let list = broker
        .vhosts()
        .iter()
        .flat_map(|v| {
            v.exchanges()
                .iter()
                .map(|e| exchange_json(&v.name, e))
                .collect::<Vec<_>>()
        })
        .collect();
    sorted(list)
}

async fn exchanges_in(State(broker): State<Arc<Broker>>, Path(vhost): Path<String>) -> Response {
    let Some(v) = broker.vhost(&vhost) else {
        return not_found();
    };
    sorted(
        v.exchanges()
            .iter()
            .map(|e| exchange_json(&v.name, e))
            .collect(),
    )
}

async fn exchange(
    State(broker): State<Arc<Broker>>,
    Path((vhost, name)): Path<(String, String)>,
) -> Response {
    match broker.vhost(&vhost).and_then(|v| v.exchange(&name).ok()) {
        Some(e) => Json(exchange_json(&vhost, &e)).into_response(),
        None => not_found(),
    }
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("leveret@{host}")
}
