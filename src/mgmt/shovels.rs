//! Dynamic shovels in the management API, as RabbitMQ's
//! `rabbitmq_shovel_management` serves them: `/api/shovels` (statuses),
//! deleting and restarting one, and the `shovel` component of
//! `/api/parameters` and of definitions export and import.

use super::api::{list, no_content, ApiError, ApiResult, User};
use crate::broker::parameters::{ParameterRecord, SHOVEL};
use crate::broker::Broker;
use crate::shovel::{self, Shovels, State, VhostAccess};
use axum::extract::{Path, Query, State as AxumState};
use axum::Extension;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

/// RabbitMQ's `is_authorized_monitor`.
fn require_monitor(user: &User) -> Result<(), ApiError> {
    if user.sees_everything() {
        Ok(())
    } else {
        Err(ApiError::not_authorised("Not monitor user"))
    }
}

fn status_json(vhost: &str, name: &str, s: &shovel::Status) -> Value {
    let mut o = Map::new();
    o.insert("node".into(), json!(super::api::node_name()));
    o.insert(
        "timestamp".into(),
        json!(super::health::date_time(s.since as i64)),
    );
    o.insert("name".into(), json!(name));
    o.insert("vhost".into(), json!(vhost));
    o.insert("type".into(), json!("dynamic"));
    match &s.state {
        State::Starting => {
            o.insert("state".into(), json!("starting"));
        }
        State::Running(fields) => {
            o.insert("state".into(), json!("running"));
            for (k, v) in fields {
                o.insert((*k).into(), json!(v));
            }
        }
        State::Terminated(reason) => {
            o.insert("state".into(), json!("terminated"));
            o.insert("reason".into(), json!(reason));
        }
    }
    Value::Object(o)
}

fn statuses(broker: &Broker, shovels: &Shovels, user: &User, vhost: Option<&str>) -> Vec<Value> {
    shovels
        .statuses()
        .into_iter()
        .filter(|(v, _, _)| vhost.is_none_or(|only| only == v) && user.may_see(broker, v))
        .map(|(v, n, s)| status_json(&v, &n, &s))
        .collect()
}

pub(super) async fn all(
    AxumState(broker): AxumState<Arc<Broker>>,
    Extension(shovels): Extension<Arc<Shovels>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    require_monitor(&user)?;
    list(statuses(&broker, &shovels, &user, None), &query)
}

pub(super) async fn in_vhost(
    AxumState(broker): AxumState<Arc<Broker>>,
    Extension(shovels): Extension<Arc<Shovels>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    require_monitor(&user)?;
    broker.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    list(statuses(&broker, &shovels, &user, Some(&vhost)), &query)
}

/// The shovel of a DELETE, when it exists and the user may see it.
fn known(
    broker: &Broker,
    shovels: &Shovels,
    user: &User,
    vhost: &str,
    name: &str,
) -> Result<(), ApiError> {
    require_monitor(user)?;
    let found = shovels
        .statuses()
        .iter()
        .any(|(v, n, _)| v == vhost && n == name);
    if found && user.may_see(broker, vhost) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

pub(super) async fn delete(
    AxumState(broker): AxumState<Arc<Broker>>,
    Extension(shovels): Extension<Arc<Shovels>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    known(&broker, &shovels, &user, &vhost, &name)?;
    broker.parameters.delete(SHOVEL, &vhost, &name);
    Ok(no_content())
}

pub(super) async fn restart(
    AxumState(broker): AxumState<Arc<Broker>>,
    Extension(shovels): Extension<Arc<Shovels>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    known(&broker, &shovels, &user, &vhost, &name)?;
    if !shovels.restart(&vhost, &name) {
        return Err(ApiError::not_found());
    }
    Ok(no_content())
}

// ---------------------------------------------------------------- parameters

pub(super) fn parameter_json(p: &ParameterRecord) -> Value {
    json!({
        "value": p.value,
        "vhost": p.vhost,
        "component": p.component,
        "name": p.name,
    })
}

/// The shovel parameters of one vhost or all, as the API lists them.
pub(super) fn parameters(broker: &Broker, vhost: Option<&str>) -> Vec<Value> {
    broker
        .parameters
        .list(SHOVEL, vhost)
        .iter()
        .map(|p| parameter_json(p))
        .collect()
}

/// A local URI's vhost must be one the user may connect to.
struct UserAccess<'a> {
    broker: &'a Broker,
    user: &'a str,
}

impl VhostAccess for UserAccess<'_> {
    fn may_use(&self, vhost: &str) -> Result<(), String> {
        let ok = self.broker.access.vhost(vhost).is_some()
            && self.broker.access.permission(vhost, self.user).is_some();
        if ok {
            Ok(())
        } else {
            Err(format!(
                "user \"{}\" may not connect to vhost \"{vhost}\"",
                self.user
            ))
        }
    }
}

/// RabbitMQ's 400 for a definition that does not validate, `<` and `>`
/// escaped as its parameters endpoint escapes them.
fn validation_failed(errors: &[String]) -> ApiError {
    let reason = format!("Validation failed\n\n{}\n", errors.join("\n"));
    ApiError::bad_request(reason.replace('<', "&lt;").replace('>', "&gt;"))
}

/// Checks and sets a shovel; true when it is new. `user` is None for a
/// definitions import (no vhost access check, as RabbitMQ's).
pub(super) fn put(
    broker: &Broker,
    user: Option<&User>,
    vhost: &str,
    name: &str,
    value: Value,
) -> Result<bool, ApiError> {
    let errors = match user {
        Some(u) => shovel::validate(
            name,
            &value,
            &UserAccess {
                broker,
                user: &u.name,
            },
        ),
        None => shovel::validate(name, &value, &shovel::AnyVhost),
    };
    if !errors.is_empty() {
        return Err(validation_failed(&errors));
    }
    // An empty list is RabbitMQ's empty proplist: kept as an object.
    let value = match value {
        Value::Array(a) if a.is_empty() => json!({}),
        other => other,
    };
    Ok(broker.parameters.put(ParameterRecord {
        component: SHOVEL.into(),
        vhost: vhost.into(),
        name: name.into(),
        value,
    }))
}

/// Applies the shovels of a definitions import (`only`: a per-vhost
/// import's vhost). All are checked before any is set.
pub(super) fn import(
    broker: &Broker,
    parameters: &[Value],
    only: Option<&str>,
) -> Result<(), ApiError> {
    let mut checked = Vec::new();
    for p in parameters
        .iter()
        .filter(|p| p.get("component").and_then(Value::as_str) == Some(SHOVEL))
    {
        let vhost = only
            .or_else(|| p.get("vhost").and_then(Value::as_str))
            .ok_or_else(|| ApiError::bad_request("a shovel without a vhost"))?;
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("a shovel without a name"))?;
        if broker.access.vhost(vhost).is_none() {
            return Err(ApiError::bad_request(json!(["no_such_vhost", vhost])));
        }
        let value = p.get("value").cloned().unwrap_or(Value::Null);
        let errors = shovel::validate(name, &value, &shovel::AnyVhost);
        if !errors.is_empty() {
            return Err(validation_failed(&errors));
        }
        checked.push((vhost.to_string(), name.to_string(), value));
    }
    for (vhost, name, value) in checked {
        put(broker, None, &vhost, &name, value)?;
    }
    Ok(())
}
