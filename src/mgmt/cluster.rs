//! The management API's cluster facts: `/api/nodes` lists every member,
//! `/metrics` has the cluster gauges, and RabbitMQ's
//! `/api/health/checks/node-is-quorum-critical`. A follower (which has no
//! store, hence no users) serves only these, plus `/api/overview`'s cluster
//! facts, without credentials (they hold no secrets, as `/metrics`), and
//! answers every other path with 503 naming the leader.

use super::api::ApiError;
use crate::cluster::{self, Cluster, ClusterError, Member, View};
use crate::config::MgmtConfig;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use std::fmt::Write;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// RabbitMQ's node name form for a cluster member.
pub(super) fn node_name_of(member: &str) -> String {
    format!("leveret@{member}")
}

/// The cluster fields of one member's node object.
fn cluster_fields(c: &Cluster, view: &View, m: &Member) -> Value {
    let me = m.node_name == c.me().node_name;
    // The leader knows each follower's lag; a follower, its copy.
    let replica = c.replicas().into_iter().find(|r| r.node == m.node_name);
    let copy = if me { c.copy() } else { None };
    let role = match view.leader_name() {
        Some(l) if l == m.node_name => "leader",
        _ if me => c.role().borrow().name(),
        _ if !view.running(&m.node_name) => "stopped",
        _ => "follower",
    };
    json!({
        "cluster_node_name": m.node_name,
        "role": role,
        "in_sync": view.in_sync(&m.node_name),
        "advertised_uri": m.advertised_uri,
        "replication_address": m.replication,
        "management_address": m.management,
        "version": m.version,
        "started_at": m.started_at,
        "lease_remaining_ms": if me { json!(c.lease_remaining().as_millis() as u64) } else { Value::Null },
        // How far behind the leader: known to the leader (null elsewhere).
        "replication_lag_bytes": replica.as_ref().map(|r| r.lag_bytes),
        "replication_lag_ms": replica.as_ref().map(|r| r.lag_ms),
        "replication_acked": replica.as_ref().map(|r| r.acked),
        "replication_bytes_sent": replica.as_ref().map(|r| r.bytes_sent),
        "replica_position": copy.as_ref().map(|s| s.position),
        "replica_complete": copy.as_ref().map(|s| s.copied),
    })
}

/// `/api/nodes` in cluster mode: `own` (this node's full node object)
/// and every other member, running or not (`"running": false`, as
/// RabbitMQ lists a stopped disc node, until it is forgotten), with what
/// is known of it, each with its cluster fields. `None` outside cluster
/// mode.
pub(super) fn nodes(own: Value) -> Option<Vec<Value>> {
    let c = cluster::current()?;
    let view = c.view();
    let mut members = view.members.clone();
    for m in view.known.iter().chain([c.me()]) {
        if !members.iter().any(|r| r.node_name == m.node_name) {
            members.push(m.clone());
        }
    }
    members.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    Some(
        members
            .iter()
            .map(|m| {
                let mut node = if m.node_name == c.me().node_name {
                    own.clone()
                } else {
                    let running = view.running(&m.node_name);
                    json!({"type": "disc", "running": running, "partitions": []})
                };
                node["name"] = json!(node_name_of(&m.node_name));
                if let (Value::Object(node), Value::Object(extra)) =
                    (&mut node, cluster_fields(c, &view, m))
                {
                    node.extend(extra);
                }
                node
            })
            .collect(),
    )
}

/// RabbitMQ's `node-is-quorum-critical`: 503 when stopping this node would
/// leave fewer in-sync nodes (the leader and the ISR) than a confirm needs
/// (`min_insync` followers and the leader). Every queue is replicated
/// together, so `queues` is empty.
pub(super) async fn quorum_critical() -> Response {
    let Some(c) = cluster::current() else {
        return Json(json!({"status": "ok", "reason": "single node cluster"})).into_response();
    };
    let view = c.view();
    let me = &c.me().node_name;
    let in_sync: Vec<&Member> = view
        .members
        .iter()
        .filter(|m| view.in_sync(&m.node_name))
        .collect();
    let needed = c.config().min_insync as usize + 1;
    let left = in_sync.iter().filter(|m| m.node_name != *me).count();
    if view.in_sync(me) && left < needed {
        let reason =
            "There are quorum queues that would lose their quorum if the target node is shut down";
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": reason, "queues": []})),
        )
            .into_response();
    }
    Json(json!({"status": "ok"})).into_response()
}

/// `DELETE /api/nodes/{node}`: forgets a node stopped for good (as
/// `rabbitmqctl forget_cluster_node`); administrators only, on the leader.
pub(super) async fn forget(
    Extension(user): Extension<super::api::User>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    user.require_admin()?;
    let Some(c) = cluster::current() else {
        return Err(ApiError::bad_request(
            "this node is not in cluster mode: there is no node to forget",
        ));
    };
    let name = node.strip_prefix("leveret@").unwrap_or(&node);
    match c.forget(name).await {
        Ok(()) => Ok(super::api::no_content()),
        Err(ClusterError::UnknownNode(_)) => Err(ApiError::not_found()),
        Err(e @ (ClusterError::Running(_) | ClusterError::Itself(_))) => {
            Err(ApiError::bad_request(e.to_string()))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            e.to_string(),
        )),
    }
}

/// The cluster gauges for `/metrics` ("" outside cluster mode).
pub(super) fn metrics() -> String {
    let Some(c) = cluster::current() else {
        return String::new();
    };
    let view = c.view();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: usize| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "leveret_cluster_leader",
        "1 if this node leads the cluster and its lease is valid",
        c.serves() as usize,
    );
    gauge(
        "leveret_cluster_members",
        "Nodes registered in the cluster",
        view.members.len(),
    );
    gauge(
        "leveret_cluster_isr_size",
        "Followers in the in-sync replica set",
        view.isr.as_ref().map_or(0, |i| i.followers.len()),
    );
    gauge(
        "leveret_cluster_lease_valid",
        "1 while this node's etcd lease is held",
        c.lease_valid() as usize,
    );
    follower_gauges(&mut out, &c.replicas());
    out
}

/// The leader's view of each follower, one series per node.
fn follower_gauges(out: &mut String, replicas: &[crate::replication::leader::Replica]) {
    type Value = fn(&crate::replication::leader::Replica) -> f64;
    let families: [(&str, &str, Value); 4] = [
        (
            "leveret_cluster_follower_in_sync",
            "1 while the follower is in sync (confirms wait for it)",
            |r| f64::from(u8::from(r.in_sync)),
        ),
        (
            "leveret_cluster_follower_lag_bytes",
            "Bytes of changes the follower has not acknowledged",
            |r| r.lag_bytes as f64,
        ),
        (
            "leveret_cluster_follower_lag_seconds",
            "How long the follower has been behind the leader's journal (+Inf: never caught up)",
            |r| match r.lag_ms {
                u64::MAX => f64::INFINITY,
                ms => ms as f64 / 1000.0,
            },
        ),
        (
            "leveret_cluster_follower_acked_bytes",
            "Journal position the follower acknowledged as durable",
            |r| r.acked as f64,
        ),
    ];
    if replicas.is_empty() {
        return;
    }
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in replicas {
            // Prometheus spells infinity +Inf; Rust would print "inf".
            let v = match value(r) {
                v if v.is_infinite() => "+Inf".to_string(),
                v => v.to_string(),
            };
            let _ = writeln!(out, "{name}{{node=\"{}\"}} {v}", node_name_of(&r.node));
        }
    }
}

/// The management API of a node that does not lead (see the module doc).
pub(crate) async fn serve_follower(
    listeners: Vec<(TcpListener, bool)>,
    tls: Option<Arc<crate::tls::Tls>>,
    cluster: Arc<Cluster>,
    limits: MgmtConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/api/nodes", get(follower_nodes))
        .route("/api/overview", get(follower_overview))
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(quorum_critical),
        )
        .route("/metrics", get(follower_metrics))
        .fallback(not_leader)
        .layer(Extension(cluster));
    super::listener::serve(listeners, tls, app, &limits, shutdown).await;
}

fn own_node(c: &Cluster) -> Value {
    json!({
        "name": node_name_of(&c.me().node_name),
        "type": "disc",
        "running": true,
        "partitions": [],
        "uptime": super::live::uptime_ms(),
        "os_pid": std::process::id().to_string(),
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "applications": [{"name": "leveret", "description": "Leveret", "version": env!("CARGO_PKG_VERSION")}],
    })
}

async fn follower_nodes(Extension(c): Extension<Arc<Cluster>>) -> Response {
    Json(nodes(own_node(&c)).unwrap_or_default()).into_response()
}

async fn follower_overview(Extension(c): Extension<Arc<Cluster>>) -> Response {
    let view = c.view();
    Json(json!({
        "node": node_name_of(&c.me().node_name),
        "cluster_name": c.config().name,
        "product_name": "Leveret",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster": cluster_overview(&c, &view),
    }))
    .into_response()
}

/// The cluster part of `/api/overview`.
pub(super) fn cluster_overview(c: &Cluster, view: &View) -> Value {
    json!({
        "role": c.role().borrow().name(),
        "leader": view.leader_name().map(node_name_of),
        "term": view.leader.as_ref().map(|(_, t)| t),
        "isr": view.isr.as_ref().map(|i| i.followers.iter().map(|f| node_name_of(f)).collect::<Vec<_>>()),
        "min_insync": c.config().min_insync,
        "members": view.members.len(),
        "etcd_reachable": view.etcd_reachable,
    })
}

async fn follower_metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics(),
    )
        .into_response()
}

async fn not_leader(Extension(c): Extension<Arc<Cluster>>) -> Response {
    let view = c.view();
    let reason = match &view.leader {
        Some((l, _)) => format!(
            "{} is not the cluster's leader; the leader is {} (management API at {})",
            node_name_of(&c.me().node_name),
            node_name_of(&l.node_name),
            l.management
        ),
        None => format!(
            "{} is not the cluster's leader, and there is none at the moment",
            node_name_of(&c.me().node_name)
        ),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "not_leader", "reason": reason})),
    )
        .into_response()
}
