//! Definitions export and import in RabbitMQ's format, so a topology (and
//! its users and permissions) moves between RabbitMQ and Leveret.
//!
//! An import never drops anything silently: what Leveret cannot apply
//! (`unsupported`) fails the import with the whole list before anything is
//! applied, unless the caller asks with `?skip_unsupported=true`; then the
//! rest is applied and the answer lists what was left out, with whatever
//! the import itself skipped (bindings whose ends are missing, objects that
//! exist with other properties, kept as they are as RabbitMQ does).
//! Policies are exported and imported by `policies`, limits and topic
//! permissions by `limits` and `topic_permissions`.

mod unsupported;

use super::api::{
    json_table, lenient_bool, no_content, short_string, table_json, tags, ApiError, ApiResult, User,
};
use super::objects::{bind, declare_exchange, declare_queue, NewBinding};
use super::users::{permission_json, set_permission, user_json, user_record, UserBody};
use super::{limits, topic_permissions};
use crate::broker::access::{PermissionRecord, VhostRecord};
use crate::broker::exchange::Destination;
use crate::broker::ops::Unchecked;
use crate::broker::vhost::VHost;
use crate::broker::Broker;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use unsupported::Omission;

/// The RabbitMQ version whose definitions format is written.
const RABBIT_VERSION: &str = "3.10.8";

/// The vhosts an export covers (all, or one), by name.
fn selected(broker: &Broker, only: Option<&str>) -> Vec<Arc<VHost>> {
    let mut vhosts: Vec<_> = broker
        .vhosts()
        .into_iter()
        .filter(|v| only.is_none_or(|n| n == v.name))
        .collect();
    vhosts.sort_by(|a, b| a.name.cmp(&b.name));
    vhosts
}

/// An exported object; a per-vhost export leaves out `vhost`.
fn placed(mut o: Value, only: Option<&str>) -> Value {
    if only.is_some() {
        o.as_object_mut().expect("an object").remove("vhost");
    }
    o
}

fn queues_json(broker: &Broker, only: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in selected(broker, only) {
        let mut queues = v.queues();
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        for q in queues.iter().filter(|q| q.exclusive_owner.is_none()) {
            let o = json!({
                "name": q.name,
                "vhost": v.name,
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "arguments": table_json(&q.arguments),
            });
            out.push(placed(o, only));
        }
    }
    out
}

/// Exchanges a client declared: not the default one nor `amq.*`.
fn exchanges_json(broker: &Broker, only: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in selected(broker, only) {
        let mut exchanges = v.exchanges();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for e in exchanges
            .iter()
            .filter(|e| !e.name.is_empty() && !e.name.starts_with("amq."))
        {
            let o = json!({
                "name": e.name,
                "vhost": v.name,
                "type": e.kind.as_str(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": table_json(&e.arguments),
            });
            out.push(placed(o, only));
        }
    }
    out
}

/// Bindings but the default exchange's, and none to exclusive queues.
fn bindings_json(broker: &Broker, only: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for v in selected(broker, only) {
        let mut exchanges = v.exchanges();
        exchanges.sort_by(|a, b| a.name.cmp(&b.name));
        for e in exchanges.iter().filter(|e| !e.name.is_empty()) {
            for b in e.bindings() {
                let (destination, kind) = match &b.destination {
                    Destination::Queue(q) if q.exclusive_owner.is_some() => continue,
                    Destination::Queue(q) => (q.name.clone(), "queue"),
                    Destination::Exchange(x) => (x.clone(), "exchange"),
                };
                let o = json!({
                    "source": e.name,
                    "vhost": v.name,
                    "destination": destination,
                    "destination_type": kind,
                    "routing_key": b.routing_key,
                    "arguments": table_json(&b.arguments),
                });
                out.push(placed(o, only));
            }
        }
    }
    out
}

/// Runtime parameters: vhost limits, then shovels.
fn parameters(broker: &Broker, only: Option<&str>) -> Vec<Value> {
    let mut all = limits::export_parameters(broker, only);
    all.extend(super::shovels::parameters(broker, only));
    all
}

pub(super) async fn export_all(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
) -> ApiResult {
    user.require_admin()?;
    let vhosts: Vec<Value> = broker
        .access
        .vhost_records()
        .iter()
        // RabbitMQ 3.10 exports only the name.
        .map(|r| json!({"name": r.name}))
        .collect();
    let users: Vec<Value> = broker
        .access
        .users()
        .iter()
        .map(|u| user_json(&broker, u))
        .collect();
    Ok(Json(json!({
        "rabbit_version": RABBIT_VERSION,
        "rabbitmq_version": RABBIT_VERSION,
        "product_name": "Leveret",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": broker.access.permissions().iter().map(permission_json).collect::<Vec<_>>(),
        "topic_permissions": topic_permissions::export(&broker, None),
        "parameters": parameters(&broker, None),
        "global_parameters": [],
        "policies": super::policies::export(&broker, None),
        "queues": queues_json(&broker, None),
        "exchanges": exchanges_json(&broker, None),
        "bindings": bindings_json(&broker, None),
    }))
    .into_response())
}

pub(super) async fn export_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    user.require_admin()?;
    broker
        .vhost(&vhost)
        .ok_or_else(|| ApiError::bad_request("vhost_not_found"))?;
    Ok(Json(json!({
        "rabbit_version": RABBIT_VERSION,
        "parameters": parameters(&broker, Some(&vhost)),
        "policies": super::policies::export(&broker, Some(&vhost)),
        "queues": queues_json(&broker, Some(&vhost)),
        "exchanges": exchanges_json(&broker, Some(&vhost)),
        "bindings": bindings_json(&broker, Some(&vhost)),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct Definitions {
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    vhosts: Vec<VhostDef>,
    #[serde(default)]
    permissions: Vec<PermissionRecord>,
    #[serde(default)]
    policies: Vec<Value>,
    #[serde(default)]
    parameters: Vec<Value>,
    #[serde(default)]
    global_parameters: Vec<Value>,
    #[serde(default)]
    topic_permissions: Vec<Value>,
    #[serde(default)]
    queues: Vec<QueueDef>,
    #[serde(default)]
    exchanges: Vec<ExchangeDef>,
    #[serde(default)]
    bindings: Vec<BindingDef>,
    /// Everything else: the exporting broker's version, or sections
    /// Leveret does not know.
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(flatten)]
    rest: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
struct VhostDef {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "tags")]
    tags: Vec<String>,
    #[serde(default)]
    metadata: Option<VhostMetadata>,
    #[serde(default)]
    default_queue_type: Option<String>,
}

#[derive(Deserialize)]
struct VhostMetadata {
    #[serde(default)]
    description: String,
    #[serde(default, deserialize_with = "tags")]
    tags: Vec<String>,
    #[serde(default)]
    default_queue_type: Option<String>,
}

#[derive(Deserialize)]
struct QueueDef {
    name: String,
    #[serde(default)]
    vhost: Option<String>,
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    auto_delete: bool,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct ExchangeDef {
    name: String,
    #[serde(default)]
    vhost: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "yes", deserialize_with = "lenient_bool")]
    durable: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    auto_delete: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    internal: bool,
    #[serde(default)]
    arguments: Value,
}

#[derive(Deserialize)]
struct BindingDef {
    source: String,
    #[serde(default)]
    vhost: Option<String>,
    destination: String,
    destination_type: String,
    #[serde(default)]
    routing_key: String,
    #[serde(default)]
    arguments: Value,
}

fn yes() -> bool {
    true
}

/// Applies definitions in dependency order: users, vhosts, permissions,
/// exchanges, queues, bindings. `only` is the vhost of a per-vhost import.
/// Returns what it skipped.
fn import(broker: &Broker, d: Definitions, only: Option<&str>) -> Result<Vec<Omission>, ApiError> {
    let mut skipped = Vec::new();
    let queues = d
        .queues
        .iter()
        .map(|q| (q.vhost.as_deref(), q.name.as_str()));
    limits::check_queue_limits(broker, queues, only)?;
    let in_vhost = |v: &Option<String>| -> Result<String, ApiError> {
        match (only, v) {
            (Some(only), _) => Ok(only.to_string()),
            (None, Some(v)) => Ok(v.clone()),
            (None, None) => Err(ApiError::bad_request("an object without a vhost")),
        }
    };
    if only.is_none() {
        for u in d.users {
            let user_limits = u.rest.get("limits").cloned();
            let b: UserBody = serde_json::from_value(Value::Object(u.rest))
                .map_err(|e| ApiError::bad_request(format!("user '{}': {e}", u.name)))?;
            broker.access.put_user(user_record(&u.name, b)?);
            limits::import_user(broker, &u.name, user_limits.as_ref())?;
        }
        for v in d.vhosts {
            let (description, tags) = match v.metadata {
                Some(m) if v.description.is_empty() && v.tags.is_empty() => (m.description, m.tags),
                _ => (v.description, v.tags),
            };
            broker.create_vhost(VhostRecord {
                name: v.name,
                description,
                tags,
            });
        }
        for p in d.permissions {
            set_permission(broker, p)?;
        }
        topic_permissions::import(broker, &d.topic_permissions)?;
    }
    super::policies::import(broker, &d.policies, only)?;
    limits::import_parameters(broker, &d.parameters, only)?;
    super::shovels::import(broker, &d.parameters, only)?;
    let vhost_of = |name: &str| {
        broker
            .vhost(name)
            .ok_or_else(|| ApiError::bad_request(json!(["no_such_vhost", name])))
    };
    // An object that exists with other properties is kept as it is, as
    // RabbitMQ's import does; anything else wrong fails the import.
    let keep_existing =
        |r: Result<bool, ApiError>, what: String, skipped: &mut Vec<Omission>| match r {
            Err(e)
                if e.reason
                    .as_str()
                    .is_some_and(|r| r.starts_with("inequivalent arg")) =>
            {
                let why = format!(
                    "it exists with other properties, kept as it is: {}",
                    e.reason.as_str().unwrap_or_default()
                );
                skipped.push(Omission::new(what, why));
                Ok(())
            }
            Err(mut e) => {
                if let Some(reason) = e.reason.as_str() {
                    e.reason = json!(format!("precondition_failed: {reason}"));
                }
                Err(e)
            }
            Ok(_) => Ok(()),
        };
    for e in d.exchanges {
        let v = vhost_of(&in_vhost(&e.vhost)?)?;
        let args = json_table(&e.arguments)?;
        keep_existing(
            declare_exchange(
                &mut Unchecked,
                &v,
                &e.name,
                &e.kind,
                e.durable,
                e.auto_delete,
                e.internal,
                &args,
            ),
            format!("exchange '{}' in vhost '{}'", e.name, v.name),
            &mut skipped,
        )?;
    }
    for q in d.queues {
        let v = vhost_of(&in_vhost(&q.vhost)?)?;
        let args = json_table(&q.arguments)?;
        keep_existing(
            declare_queue(&mut Unchecked, &v, &q.name, q.durable, q.auto_delete, &args),
            format!("queue '{}' in vhost '{}'", q.name, v.name),
            &mut skipped,
        )?;
    }
    for b in d.bindings {
        let v = vhost_of(&in_vhost(&b.vhost)?)?;
        let to_queue = match b.destination_type.as_str() {
            "queue" => true,
            "exchange" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown destination_type '{other}'"
                )))
            }
        };
        let made = bind(
            &mut Unchecked,
            &v,
            NewBinding {
                source: &b.source,
                to_queue,
                destination: &b.destination,
                routing_key: &b.routing_key,
                arguments: json_table(&b.arguments)?,
            },
        );
        match made {
            // As RabbitMQ's import: a binding whose end is missing is skipped.
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {
                let why = e.reason.as_str().unwrap_or("an end is missing").to_string();
                skipped.push(Omission::new(unsupported::binding_name(&b), why));
            }
            other => {
                other?;
            }
        }
    }
    Ok(skipped)
}

#[derive(Deserialize)]
pub(super) struct ImportQuery {
    #[serde(default, deserialize_with = "lenient_bool")]
    skip_unsupported: bool,
}

/// Parses, sets aside what cannot be applied (failing unless asked to skip
/// it), checks and applies; answers 204, or 200 with what was left out.
fn import_checked(broker: &Broker, raw: &[u8], only: Option<&str>, q: &ImportQuery) -> ApiResult {
    let mut d = parse(raw)?;
    let unsupported::LeftOut {
        unsupported,
        ignored,
    } = unsupported::take(&mut d, only);
    if !unsupported.is_empty() && !q.skip_unsupported {
        let list: Vec<String> = unsupported
            .iter()
            .map(|o| format!("{}: {}", o.what, o.why))
            .collect();
        let reason = format!(
            "nothing was imported: Leveret cannot apply {} of the definitions ({}); import with ?skip_unsupported=true to apply the rest",
            unsupported.len(),
            list.join("; ")
        );
        return Ok((
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad_request", "reason": reason, "unsupported": unsupported})),
        )
            .into_response());
    }
    let mut left_out = unsupported;
    left_out.extend(ignored);
    check(&d)?;
    left_out.extend(import(broker, d, only)?);
    if left_out.is_empty() {
        return Ok(no_content());
    }
    for o in &left_out {
        tracing::warn!(what = %o.what, why = %o.why, "definitions import: left out");
    }
    Ok(Json(json!({"skipped": left_out})).into_response())
}

pub(super) async fn import_all(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(q): Query<ImportQuery>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    import_checked(&broker, &raw, None, &q)
}

pub(super) async fn import_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(q): Query<ImportQuery>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    broker
        .vhost(&vhost)
        .ok_or_else(|| ApiError::missing("vhost_not_found"))?;
    import_checked(&broker, &raw, Some(&vhost), &q)
}

fn parse(raw: &[u8]) -> Result<Definitions, ApiError> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(v @ Value::Object(_)) => {
            serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        _ => Err(ApiError::bad_request("failed_to_parse_json")),
    }
}

/// What can be checked before anything is applied, so a bad file changes
/// nothing: binding destination types, and names, routing keys and
/// argument keys that AMQP could not carry.
fn check(d: &Definitions) -> Result<(), ApiError> {
    for v in &d.vhosts {
        short_string("vhost", &v.name)?;
    }
    for q in &d.queues {
        short_string("queue", &q.name)?;
        json_table(&q.arguments)?;
    }
    for e in &d.exchanges {
        short_string("exchange", &e.name)?;
        json_table(&e.arguments)?;
    }
    for b in &d.bindings {
        short_string("routing_key", &b.routing_key)?;
        json_table(&b.arguments)?;
    }
    for b in &d.bindings {
        if b.destination_type != "queue" && b.destination_type != "exchange" {
            return Err(ApiError::bad_request(format!(
                "unknown destination_type '{}'",
                b.destination_type
            )));
        }
    }
    Ok(())
}
