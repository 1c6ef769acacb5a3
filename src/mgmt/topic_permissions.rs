//! Topic permissions in the API (`/api/topic-permissions…`,
//! `/api/users/{user}/topic-permissions`,
//! `/api/vhosts/{vhost}/topic-permissions`) and in definitions, with
//! RabbitMQ's shapes. Administrators only, as RabbitMQ.

use super::api::{
    created_or_updated, from_object, list, no_content, object, require_keys, ApiError, ApiResult,
    User,
};
use crate::broker::topic_permissions::{TopicPermission, TopicPermissionRecord};
use crate::broker::Broker;
use axum::extract::{Path, Query, State};
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

fn to_json(p: &TopicPermissionRecord) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "exchange": p.exchange,
        "write": p.write,
        "read": p.read,
    })
}

fn where_(broker: &Broker, keep: impl Fn(&TopicPermissionRecord) -> bool) -> Vec<Value> {
    broker
        .access
        .topic_permissions()
        .iter()
        .filter(|p| keep(p))
        .map(to_json)
        .collect()
}

pub(super) async fn all(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    list(where_(&broker, |_| true), &query)
}

pub(super) async fn of_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    broker
        .access
        .vhost(&vhost)
        .ok_or_else(ApiError::not_found)?;
    list(where_(&broker, |p| p.vhost == vhost), &query)
}

pub(super) async fn of_user(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    broker.access.user(&name).ok_or_else(ApiError::not_found)?;
    list(where_(&broker, |p| p.user == name), &query)
}

/// GET /api/topic-permissions/{vhost}/{user}: a list, 404 when empty.
pub(super) async fn of_user_in_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    let items = where_(&broker, |p| p.vhost == vhost && p.user == name);
    if items.is_empty() {
        return Err(ApiError::not_found());
    }
    list(items, &query)
}

#[derive(Deserialize)]
struct Body {
    exchange: String,
    write: String,
    read: String,
}

/// Sets a topic permission after checking that the user and vhost exist
/// and the expressions compile; true when it is new.
pub(super) fn set(broker: &Broker, record: TopicPermissionRecord) -> Result<bool, ApiError> {
    if broker.access.vhost(&record.vhost).is_none() || broker.access.user(&record.user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let created = broker
        .access
        .topic_permissions_of(&record.vhost, &record.user)
        .is_none_or(|t| t.get(&record.exchange).is_none());
    let p = TopicPermission::compile(record).map_err(ApiError::bad_request)?;
    broker.access.put_topic_permission(p);
    Ok(created)
}

pub(super) async fn put(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    let fields = object(&raw)?;
    require_keys(&fields, &["exchange", "write", "read"])?;
    let b: Body = from_object(fields)?;
    let record = TopicPermissionRecord {
        user: name,
        vhost,
        exchange: b.exchange,
        write: b.write,
        read: b.read,
    };
    Ok(created_or_updated(set(&broker, record)?))
}

/// DELETE /api/topic-permissions/{vhost}/{user}: all of the user's topic
/// permissions in the vhost; 404 when there are none.
pub(super) async fn delete(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.require_admin()?;
    if !broker.access.delete_topic_permissions(&vhost, &name, None) {
        return Err(ApiError::not_found());
    }
    Ok(no_content())
}

/// DELETE /api/topic-permissions/{vhost}/{user}/{exchange}: the one for
/// that exchange; 404 when the user has none in the vhost.
pub(super) async fn delete_one(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name, exchange)): Path<(String, String, String)>,
) -> ApiResult {
    user.require_admin()?;
    if broker.access.topic_permissions_of(&vhost, &name).is_none() {
        return Err(ApiError::not_found());
    }
    broker
        .access
        .delete_topic_permissions(&vhost, &name, Some(&exchange));
    Ok(no_content())
}

// ---------------------------------------------------------------- definitions

/// `topic_permissions` of a definitions export (every vhost, or one).
pub(super) fn export(broker: &Broker, vhost: Option<&str>) -> Vec<Value> {
    where_(broker, |p| vhost.is_none_or(|v| v == p.vhost))
}

/// Applies the `topic_permissions` of a definitions import, after its
/// users and vhosts. The error names the entry that is bad.
pub(super) fn import(broker: &Broker, entries: &[Value]) -> Result<(), ApiError> {
    for entry in entries {
        let field = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(user), Some(vhost), Some(exchange), Some(write), Some(read)) = (
            field("user"),
            field("vhost"),
            field("exchange"),
            field("write"),
            field("read"),
        ) else {
            return Err(ApiError::bad_request(format!(
                "topic permission {entry}: a field is missing or not a string"
            )));
        };
        let record = TopicPermissionRecord {
            user,
            vhost,
            exchange,
            write,
            read,
        };
        set(broker, record)?;
    }
    Ok(())
}
