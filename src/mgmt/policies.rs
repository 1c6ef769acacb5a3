//! `/api/policies` and `/api/operator-policies`, as RabbitMQ's management
//! plugin serves them, and policies in definitions export and import.
//!
//! Who may do what, as RabbitMQ: any management user lists the policies
//! and operator policies of the vhosts it may see; reading one policy,
//! setting and clearing take the `policymaker` tag (with permissions in
//! the vhost) or `administrator`; reading one operator policy, setting and
//! clearing, `administrator`.

use super::api::{
    created_or_updated, list, no_content, object, require_keys, ApiError, ApiResult, User,
};
use crate::broker::policy::{Policy, PolicyKind};
use crate::broker::vhost::VHost;
use crate::broker::Broker;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

fn policy_json(p: &Policy) -> Value {
    json!({
        "vhost": p.record.vhost,
        "name": p.record.name,
        "pattern": p.record.pattern,
        "apply-to": p.record.apply_to,
        "definition": p.record.definition,
        "priority": p.record.priority,
    })
}

/// Lowest priority first, as RabbitMQ lists them.
fn sorted(mut items: Vec<Arc<Policy>>) -> Vec<Value> {
    items.sort_by(|a, b| {
        let key = |p: &Policy| p.record.priority.as_f64().unwrap_or(0.0);
        key(a)
            .total_cmp(&key(b))
            .then_with(|| (&a.record.vhost, &a.record.name).cmp(&(&b.record.vhost, &b.record.name)))
    });
    items.iter().map(|p| policy_json(p)).collect()
}

fn is_policymaker(user: &User) -> bool {
    user.tags
        .iter()
        .any(|t| t == "administrator" || t == "policymaker")
}

/// RabbitMQ's `is_authorized_policies` (or `is_authorized_admin` for
/// operator policies) for one vhost.
fn authorise(broker: &Broker, user: &User, kind: PolicyKind, vhost: &str) -> Result<(), ApiError> {
    match kind {
        PolicyKind::Operator => user.require_admin(),
        PolicyKind::Policy => {
            let allowed = user.is_admin()
                || is_policymaker(user) && broker.access.permission(vhost, &user.name).is_some();
            if allowed {
                Ok(())
            } else {
                Err(ApiError::not_authorised(
                    "User not authorised to access object",
                ))
            }
        }
    }
}

/// A list in one vhost or all, of either kind: any management user, of
/// the vhosts it may use (RabbitMQ's `is_authorized_vhost` for both).
fn list_policies(
    broker: &Broker,
    user: &User,
    kind: PolicyKind,
    vhost: Option<&str>,
    query: &HashMap<String, String>,
) -> ApiResult {
    let vhosts: Vec<Arc<VHost>> = match vhost {
        Some(name) => vec![user.vhost(broker, name)?],
        None => broker
            .vhosts()
            .into_iter()
            .filter(|v| user.may_see(broker, &v.name))
            .collect(),
    };
    let items = vhosts.iter().flat_map(|v| v.policies(kind)).collect();
    list(sorted(items), query)
}

fn one(broker: &Broker, user: &User, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult {
    authorise(broker, user, kind, vhost)?;
    let p = broker
        .vhost(vhost)
        .and_then(|v| v.policy(kind, name))
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(policy_json(&p)).into_response())
}

/// RabbitMQ's 400 for a policy that does not validate. The policies
/// endpoint escapes `<` and `>` in it (rabbit_mgmt_wm_policy), the
/// operator policies one does not.
fn validation_failed(kind: PolicyKind, errors: &[String]) -> ApiError {
    let mut reason = format!("Validation failed\n\n{}\n", errors.join("\n"));
    if kind == PolicyKind::Policy {
        reason = reason.replace('<', "&lt;").replace('>', "&gt;");
    }
    ApiError::bad_request(reason)
}

/// Checks a policy given as a JSON object (an API body or an item of
/// definitions); the name and vhost come from the caller.
fn parse(
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    body: &Map<String, Value>,
) -> Result<Policy, ApiError> {
    require_keys(body, &["pattern", "definition"])?;
    Policy::parse(
        kind,
        vhost,
        name,
        &body["pattern"],
        &body["definition"],
        body.get("priority").filter(|v| !v.is_null()),
        body.get("apply-to").filter(|v| !v.is_null()),
    )
    .map_err(|errors| validation_failed(kind, &errors))
}

fn put(
    broker: &Broker,
    user: &User,
    kind: PolicyKind,
    vhost: &str,
    name: &str,
    raw: &[u8],
) -> ApiResult {
    authorise(broker, user, kind, vhost)?;
    let v = broker
        .vhost(vhost)
        .ok_or_else(|| ApiError::missing("vhost_not_found"))?;
    let body = object(raw)?;
    let policy = parse(kind, vhost, name, &body)?;
    Ok(created_or_updated(v.put_policy(kind, policy)))
}

fn delete(broker: &Broker, user: &User, kind: PolicyKind, vhost: &str, name: &str) -> ApiResult {
    authorise(broker, user, kind, vhost)?;
    let v = broker.vhost(vhost).ok_or_else(ApiError::not_found)?;
    if !v.delete_policy(kind, name) {
        return Err(ApiError::not_found());
    }
    Ok(no_content())
}

pub(super) async fn policies(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    list_policies(&broker, &user, PolicyKind::Policy, None, &query)
}

pub(super) async fn policies_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    list_policies(&broker, &user, PolicyKind::Policy, Some(&vhost), &query)
}

pub(super) async fn policy(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    one(&broker, &user, PolicyKind::Policy, &vhost, &name)
}

pub(super) async fn put_policy(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    put(&broker, &user, PolicyKind::Policy, &vhost, &name, &raw)
}

pub(super) async fn delete_policy(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    delete(&broker, &user, PolicyKind::Policy, &vhost, &name)
}

pub(super) async fn operator_policies(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    list_policies(&broker, &user, PolicyKind::Operator, None, &query)
}

pub(super) async fn operator_policies_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    list_policies(&broker, &user, PolicyKind::Operator, Some(&vhost), &query)
}

pub(super) async fn operator_policy(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    one(&broker, &user, PolicyKind::Operator, &vhost, &name)
}

pub(super) async fn put_operator_policy(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    put(&broker, &user, PolicyKind::Operator, &vhost, &name, &raw)
}

pub(super) async fn delete_operator_policy(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    delete(&broker, &user, PolicyKind::Operator, &vhost, &name)
}

// ---------------------------------------------------------------- objects

/// What a queue object of the API says about policies (RabbitMQ: `null`
/// for none, and the merged definition, `{}` for none).
pub(super) fn queue_fields(q: &crate::broker::queue::Queue, out: &mut Value) {
    let applied = q.policies();
    out["policy"] = json!(applied.policy.as_ref().map(|p| p.name()));
    out["operator_policy"] = json!(applied.operator.as_ref().map(|p| p.name()));
    out["effective_policy_definition"] = Value::Object(applied.effective_definition());
}

/// An exchange object names its policy only when one applies.
pub(super) fn exchange_fields(e: &crate::broker::exchange::Exchange, out: &mut Value) {
    if let Some(p) = e.policy() {
        out["policy"] = json!(p.name());
    }
}

// ---------------------------------------------------------------- definitions

/// The `policies` of a definitions export, as RabbitMQ 3.10 writes them
/// (with their vhost even in a per-vhost export). Operator policies are
/// not exported, as RabbitMQ.
pub(super) fn export(broker: &Broker, vhost: Option<&str>) -> Vec<Value> {
    let items = broker
        .vhosts()
        .into_iter()
        .filter(|v| vhost.is_none_or(|only| v.name == only))
        .flat_map(|v| v.policies(PolicyKind::Policy))
        .collect();
    sorted(items)
}

/// Applies the `policies` of an import, each in its vhost (`only` for a
/// per-vhost import). All are checked before any is set, so a bad one
/// changes nothing; the error is RabbitMQ's text followed by
/// ` (vhost/name)`, as its import words it.
pub(super) fn import(
    broker: &Broker,
    policies: &[Value],
    only: Option<&str>,
) -> Result<(), ApiError> {
    let mut checked = Vec::new();
    for item in policies {
        let Value::Object(body) = item else {
            return Err(ApiError::bad_request("a policy that is not a JSON object"));
        };
        let vhost = match (only, body.get("vhost").and_then(Value::as_str)) {
            (Some(only), _) => only,
            (None, Some(v)) => v,
            (None, None) => return Err(ApiError::bad_request("a policy without a vhost")),
        };
        let Some(name) = body.get("name").and_then(Value::as_str) else {
            return Err(ApiError::bad_request(format!(
                "policy in virtual host '{vhost}' has undefined name"
            )));
        };
        let v = broker
            .vhost(vhost)
            .ok_or_else(|| ApiError::bad_request(json!(["no_such_vhost", vhost])))?;
        let policy = parse(PolicyKind::Policy, vhost, name, body).map_err(|mut e| {
            if let Some(reason) = e.reason.as_str() {
                let reason = format!("{reason} ({vhost}/{name})");
                // A per-vhost import shows it as the Erlang binary it is.
                e.reason = json!(match only {
                    None => reason,
                    Some(_) => format!(
                        "<<\"{}\">>",
                        reason
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n")
                    ),
                });
            }
            e
        })?;
        checked.push((v, policy));
    }
    for (v, policy) in checked {
        v.put_policy(PolicyKind::Policy, policy);
    }
    Ok(())
}
