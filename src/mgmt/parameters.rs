//! Runtime parameters (`/api/parameters…`), as rabbitmqadmin's `list`,
//! `declare` and `delete parameter` and the web UI use them. Leveret has
//! two components: `vhost-limits` (a vhost's limits, named `limits`, the
//! same data as `/api/vhost-limits`) and `shovel` (dynamic shovels,
//! `shovels.rs`); any other is refused with RabbitMQ's own answer for a
//! component whose plugin is not enabled.

use super::api::{created_or_updated, list, no_content, ApiError, ApiResult, User};
use super::limits::{export_parameters, value_of};
use crate::broker::limits::{Limits, Subject};
use crate::broker::Broker;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

const VHOST_LIMITS: &str = "vhost-limits";
use crate::broker::parameters::SHOVEL;

/// The parameters `user` may see, of one component and vhost if given.
fn visible(
    broker: &Broker,
    user: &User,
    component: Option<&str>,
    vhost: Option<&str>,
) -> Vec<Value> {
    let mut all = Vec::new();
    if component.is_none_or(|c| c == VHOST_LIMITS) {
        all.extend(export_parameters(broker, vhost));
    }
    if component.is_none_or(|c| c == SHOVEL) {
        all.extend(super::shovels::parameters(broker, vhost));
    }
    all.into_iter()
        .filter(|p| p["vhost"].as_str().is_some_and(|v| user.may_see(broker, v)))
        .collect()
}

pub(super) async fn all(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    list(visible(&broker, &user, None, None), &query)
}

pub(super) async fn of_component(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(component): Path<String>,
    Query(query): Q,
) -> ApiResult {
    list(visible(&broker, &user, Some(&component), None), &query)
}

pub(super) async fn in_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((component, vhost)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    list(
        visible(&broker, &user, Some(&component), Some(&vhost)),
        &query,
    )
}

pub(super) async fn one(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    if component == SHOVEL {
        require_policymaker(&broker, &user, &vhost)?;
    }
    let found = visible(&broker, &user, Some(&component), Some(&vhost))
        .into_iter()
        .find(|p| p["name"] == name.as_str());
    match found {
        Some(p) => Ok(Json(p).into_response()),
        None => Err(ApiError::not_found()),
    }
}

/// RabbitMQ's `is_authorized_policies`: an administrator, or a
/// policymaker with permissions in the vhost.
fn require_policymaker(broker: &Broker, user: &User, vhost: &str) -> Result<(), ApiError> {
    let policymaker = user.tags.iter().any(|t| t == "policymaker");
    if user.is_admin() || policymaker && broker.access.permission(vhost, &user.name).is_some() {
        Ok(())
    } else {
        Err(ApiError::not_authorised(
            "User not authorised to access object",
        ))
    }
}

/// Checks a change to `component`'s parameter `name`: a shovel by a
/// policymaker; a vhost's `limits` by an administrator, as for
/// `/api/vhost-limits`.
fn changeable(
    broker: &Broker,
    user: &User,
    component: &str,
    vhost: &str,
    name: &str,
) -> Result<(), ApiError> {
    if component == SHOVEL {
        require_policymaker(broker, user, vhost)?;
        if broker.access.vhost(vhost).is_none() {
            return Err(ApiError::missing("vhost_not_found"));
        }
        return Ok(());
    }
    if component != VHOST_LIMITS {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\ncomponent {component} not found\n"
        )));
    }
    user.require_admin()?;
    if broker.access.vhost(vhost).is_none() {
        return Err(ApiError::missing("vhost_not_found"));
    }
    if name != "limits" {
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\nvhost limits are a parameter named 'limits', not '{name}'\n"
        )));
    }
    Ok(())
}

pub(super) async fn put(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((component, vhost, name)): Path<(String, String, String)>,
    raw: Bytes,
) -> ApiResult {
    changeable(&broker, &user, &component, &vhost, &name)?;
    let value = value_of(&raw)?;
    if component == SHOVEL {
        let created = super::shovels::put(&broker, Some(&user), &vhost, &name, value)?;
        return Ok(created_or_updated(created));
    }
    let limits = match &value {
        Value::Array(a) if a.is_empty() => Limits::default(),
        other => Limits::from_json(Subject::Vhost, other)
            .map_err(|e| ApiError::bad_request(format!("Validation failed\n\n{e}\n")))?,
    };
    let created = broker.access.vhost_limits(&vhost).is_empty();
    broker.set_vhost_limits(&vhost, limits);
    Ok(created_or_updated(created))
}

pub(super) async fn delete(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    if component != VHOST_LIMITS && component != SHOVEL {
        return Err(ApiError::not_found());
    }
    changeable(&broker, &user, &component, &vhost, &name)?;
    if component == SHOVEL {
        if !broker.parameters.delete(SHOVEL, &vhost, &name) {
            return Err(ApiError::not_found());
        }
        return Ok(no_content());
    }
    broker.set_vhost_limits(&vhost, Limits::default());
    Ok(no_content())
}
