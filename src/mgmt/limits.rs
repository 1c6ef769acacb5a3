//! Vhost and user limits in the API (`/api/vhost-limits…`,
//! `/api/user-limits…`) and in definitions, with RabbitMQ's shapes and
//! validation texts. Reading needs a management user; setting and clearing
//! an administrator, as RabbitMQ.

use super::api::{list, no_content, object, ApiError, ApiResult, User};
use crate::broker::limits::{self, Limits, Subject};
use crate::broker::Broker;
use axum::extract::{Path, Query, State};
use axum::Extension;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

fn vhost_entry(vhost: &str, l: &Limits) -> Value {
    json!({"vhost": vhost, "value": l.to_json()})
}

fn user_entry(user: &str, l: &Limits) -> Value {
    json!({"user": user, "value": l.to_json()})
}

/// The `value` of a PUT body: `[{key_missing,value}]` without one.
pub(super) fn value_of(raw: &[u8]) -> Result<Value, ApiError> {
    object(raw)?
        .remove("value")
        .ok_or_else(|| ApiError::key_missing(&["value"]))
}

pub(super) async fn all_vhost_limits(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = broker
        .access
        .all_vhost_limits()
        .iter()
        .filter(|(vhost, _)| user.may_see(&broker, vhost))
        .map(|(vhost, l)| vhost_entry(vhost, l))
        .collect();
    list(items, &query)
}

pub(super) async fn vhost_limits(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    let l = broker.access.vhost_limits(&vhost);
    let items = if l.is_empty() {
        Vec::new()
    } else {
        vec![vhost_entry(&vhost, &l)]
    };
    list(items, &query)
}

pub(super) async fn put_vhost_limit(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    if broker.access.vhost(&vhost).is_none() {
        return Err(ApiError::missing("vhost_not_found"));
    }
    let value = value_of(&raw)?;
    let value = limits::validate(Subject::Vhost, &name, &value)
        .map_err(|e| ApiError::bad_request(format!("Validation failed\n\n{e}\n")))?;
    let updated = broker.access.vhost_limits(&vhost).with(&name, value);
    broker.set_vhost_limits(&vhost, updated);
    Ok(no_content())
}

pub(super) async fn delete_vhost_limit(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.require_admin()?;
    if broker.access.vhost(&vhost).is_none() {
        return Err(ApiError::missing("vhost_not_found"));
    }
    let updated = broker.access.vhost_limits(&vhost).without(&name);
    broker.set_vhost_limits(&vhost, updated);
    Ok(no_content())
}

pub(super) async fn all_user_limits(
    State(broker): State<Arc<Broker>>,
    Extension(_): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = broker
        .access
        .all_user_limits()
        .iter()
        .map(|(user, l)| user_entry(user, l))
        .collect();
    list(items, &query)
}

pub(super) async fn user_limits(
    State(broker): State<Arc<Broker>>,
    Extension(_): Extension<User>,
    Path(name): Path<String>,
    Query(query): Q,
) -> ApiResult {
    broker.access.user(&name).ok_or_else(ApiError::not_found)?;
    let l = broker.access.user_limits(&name);
    let items = if l.is_empty() {
        Vec::new()
    } else {
        vec![user_entry(&name, &l)]
    };
    list(items, &query)
}

pub(super) async fn put_user_limit(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((name, limit)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    let value = value_of(&raw)?;
    if broker.access.user(&name).is_none() {
        return Err(ApiError::bad_request(json!(["no_such_user", name])));
    }
    let value = limits::validate(Subject::User, &limit, &value).map_err(ApiError::bad_request)?;
    let updated = broker.access.user_limits(&name).with(&limit, value);
    broker.access.set_user_limits(&name, updated);
    Ok(no_content())
}

pub(super) async fn delete_user_limit(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((name, limit)): Path<(String, String)>,
) -> ApiResult {
    user.require_admin()?;
    if broker.access.user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let updated = broker.access.user_limits(&name).without(&limit);
    broker.access.set_user_limits(&name, updated);
    Ok(no_content())
}

// ---------------------------------------------------------------- definitions

/// A user's `limits` as a definitions export and `GET /api/users` show
/// them (`{}` without any).
pub(super) fn user_limits_json(broker: &Broker, user: &str) -> Value {
    broker.access.user_limits(user).to_json()
}

/// The `vhost-limits` entries of a definitions export's `parameters`
/// (every vhost, or one), as RabbitMQ exports them: component
/// `vhost-limits`, name `limits`, with the vhost even in a per-vhost export.
pub(super) fn export_parameters(broker: &Broker, only: Option<&str>) -> Vec<Value> {
    broker
        .access
        .all_vhost_limits()
        .iter()
        .filter(|(vhost, _)| only.is_none_or(|o| o == vhost))
        .map(|(vhost, l)| {
            json!({
                "value": l.to_json(),
                "vhost": vhost,
                "component": "vhost-limits",
                "name": "limits",
            })
        })
        .collect()
}

/// Whether a definitions `parameters` entry is vhost limits (applied by
/// `import_parameters`, not skipped).
pub(super) fn is_vhost_limits(parameter: &Value) -> bool {
    parameter.get("component").and_then(Value::as_str) == Some("vhost-limits")
}

/// Reads limits as definitions hold them: an object, or the empty list
/// RabbitMQ exports for limits that were all cleared.
fn limits_of(subject: Subject, value: &Value) -> Result<Limits, String> {
    match value {
        Value::Array(a) if a.is_empty() => Ok(Limits::default()),
        other => Limits::from_json(subject, other),
    }
}

/// Applies the `vhost-limits` entries of a definitions import's
/// `parameters`; `only` is the vhost of a per-vhost import, which they go
/// to. The error names the entry that is bad.
pub(super) fn import_parameters(
    broker: &Broker,
    parameters: &[Value],
    only: Option<&str>,
) -> Result<(), ApiError> {
    for p in parameters.iter().filter(|p| is_vhost_limits(p)) {
        let bad = |e: String| ApiError::bad_request(format!("vhost limits {p}: {e}"));
        let vhost = only
            .or_else(|| p.get("vhost").and_then(Value::as_str))
            .ok_or_else(|| bad("no vhost".into()))?;
        if broker.access.vhost(vhost).is_none() {
            return Err(ApiError::bad_request(json!(["no_such_vhost", vhost])));
        }
        let value = p.get("value").unwrap_or(&Value::Null);
        broker.set_vhost_limits(vhost, limits_of(Subject::Vhost, value).map_err(bad)?);
    }
    Ok(())
}

/// Applies a user's `limits` from a definitions import; without any, the
/// user keeps the limits it has (RabbitMQ's `put_user`).
pub(super) fn import_user(
    broker: &Broker,
    user: &str,
    value: Option<&Value>,
) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Ok(());
    };
    let l = limits_of(Subject::User, value)
        .map_err(|e| ApiError::bad_request(format!("limits of user '{user}': {e}")))?;
    broker.access.set_user_limits(user, l);
    Ok(())
}

/// RabbitMQ's check before a definitions import: refused as a whole when
/// the queues it would add to a vhost exceed its `max-queues`. `queues`
/// are (vhost, name); `only` is the vhost of a per-vhost import.
pub(super) fn check_queue_limits<'a>(
    broker: &Broker,
    queues: impl Iterator<Item = (Option<&'a str>, &'a str)>,
    only: Option<&'a str>,
) -> Result<(), ApiError> {
    let mut added: Vec<(&str, std::collections::HashSet<&str>)> = Vec::new();
    for (vhost, name) in queues {
        let Some(vhost) = only.or(vhost) else {
            continue;
        };
        let Some(v) = broker.vhost(vhost) else {
            continue;
        };
        if v.queue(name).is_ok() {
            continue;
        }
        match added.iter_mut().find(|(n, _)| *n == vhost) {
            Some((_, names)) => {
                names.insert(name);
            }
            None => added.push((vhost, std::collections::HashSet::from([name]))),
        }
    }
    for (vhost, names) in added {
        let Some(limit) = broker.access.vhost_limit(vhost, limits::MAX_QUEUES) else {
            continue;
        };
        let count = broker.vhost(vhost).map_or(0, |v| v.queue_count());
        if count + names.len() > limit as usize {
            return Err(ApiError::bad_request(format!(
                "Adding {} queue(s) to virtual host \"{vhost}\" would exceed the limit of {limit} queue(s).\n\nThis virtual host currently has {count} queue(s) defined.\n\nImport aborted!",
                names.len()
            )));
        }
    }
    Ok(())
}
