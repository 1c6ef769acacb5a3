//! Users, vhosts and permissions. Changing them needs the administrator
//! tag, as in RabbitMQ.

use super::api::{
    body, created_or_updated, from_object, list, no_content, object, require_keys, short_string,
    tags, ApiError, ApiResult, User,
};
use crate::broker::access::{
    hash_password, is_known_algorithm, Permission, PermissionRecord, UserRecord, VhostRecord,
    SHA256,
};
use crate::broker::Broker;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type Q = Query<HashMap<String, String>>;

pub(super) async fn whoami(Extension(user): Extension<User>) -> ApiResult {
    Ok(Json(json!({"name": user.name, "tags": user.tags})).into_response())
}

// ---------------------------------------------------------------- users

pub(super) fn user_json(broker: &Broker, u: &UserRecord) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
        "limits": super::limits::user_limits_json(broker, &u.name),
    })
}

pub(super) async fn users(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    let items = broker
        .access
        .users()
        .iter()
        .map(|u| user_json(&broker, u))
        .collect();
    list(items, &query)
}

pub(super) async fn users_without_permissions(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
) -> ApiResult {
    user.require_admin()?;
    let with: Vec<String> = broker
        .access
        .permissions()
        .into_iter()
        .map(|p| p.user)
        .collect();
    let items: Vec<Value> = broker
        .access
        .users()
        .iter()
        .filter(|u| !with.contains(&u.name))
        .map(|u| user_json(&broker, u))
        .collect();
    Ok(Json(Value::Array(items)).into_response())
}

pub(super) async fn user(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    user.require_admin()?;
    let u = broker.access.user(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&broker, &u)).into_response())
}

#[derive(Deserialize)]
pub(super) struct UserBody {
    #[serde(default)]
    pub(crate) password: Option<String>,
    #[serde(default)]
    pub(crate) password_hash: Option<String>,
    #[serde(default)]
    pub(crate) hashing_algorithm: Option<String>,
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
}

/// The record a PUT or an import describes: a clear password is hashed; a
/// hash is taken as it is (empty: no password logs in).
pub(super) fn user_record(name: &str, b: UserBody) -> Result<UserRecord, ApiError> {
    let (password_hash, hashing_algorithm) = match (b.password, b.password_hash) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "both_password_and_password_hash_are_provided",
            ))
        }
        (Some(p), None) => (
            hash_password(&p, SHA256).expect("SHA-256 is supported"),
            SHA256.to_string(),
        ),
        (None, Some(h)) => {
            let algorithm = b.hashing_algorithm.unwrap_or_else(|| SHA256.into());
            if !is_known_algorithm(&algorithm) {
                return Err(ApiError::bad_request(json!([
                    "unsupported_hashing_algorithm",
                    algorithm
                ])));
            }
            if base64::engine::general_purpose::STANDARD
                .decode(h.as_bytes())
                .is_err()
            {
                return Err(ApiError::bad_request(json!(["not_base64", h])));
            }
            (h, algorithm)
        }
        // As RabbitMQ: a user without a password exists but cannot log in.
        (None, None) => (String::new(), SHA256.to_string()),
    };
    Ok(UserRecord {
        name: name.to_string(),
        password_hash,
        hashing_algorithm,
        tags: b.tags,
    })
}

pub(super) async fn put_user(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    let fields = object(&raw)?;
    if !fields.contains_key("tags") {
        return Err(ApiError::bad_request("tags_not_present"));
    }
    let record = user_record(&name, from_object(fields)?)?;
    Ok(created_or_updated(broker.access.put_user(record)))
}

pub(super) async fn delete_user(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    user.require_admin()?;
    if !broker.delete_user(&name) {
        return Err(ApiError::not_found());
    }
    Ok(no_content())
}

#[derive(Deserialize)]
struct BulkDelete {
    users: Vec<String>,
}

pub(super) async fn bulk_delete_users(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    let b: BulkDelete = body(&raw)?;
    for name in b.users {
        broker.delete_user(&name);
    }
    Ok(no_content())
}

// ---------------------------------------------------------------- vhosts

fn vhost_json(broker: &Broker, r: &VhostRecord) -> Value {
    let (mut ready, mut unacked) = (0, 0);
    if let Some(v) = broker.vhost(&r.name) {
        for q in v.queues() {
            let c = q.counts();
            ready += c.ready;
            unacked += c.unacked;
        }
    }
    json!({
        "name": r.name,
        "description": r.description,
        "tags": r.tags,
        "metadata": {"description": r.description, "tags": r.tags},
        "tracing": false,
        "cluster_state": {super::api::node_name(): "running"},
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
    })
}

pub(super) async fn vhosts(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = broker
        .access
        .vhost_records()
        .iter()
        .filter(|r| user.may_see(&broker, &r.name))
        .map(|r| vhost_json(&broker, r))
        .collect();
    list(items, &query)
}

pub(super) async fn vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    user.vhost(&broker, &name)?;
    let r = broker.access.vhost(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(vhost_json(&broker, &r)).into_response())
}

#[derive(Deserialize)]
pub(super) struct VhostBody {
    #[serde(default)]
    pub(crate) description: String,
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
}

pub(super) async fn put_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    let b: VhostBody = body(&raw)?;
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost names must not be empty"));
    }
    // Stored queues and exchanges carry their vhost as a short string.
    short_string("vhost", &name)?;
    let created = broker.create_vhost(VhostRecord {
        name: name.clone(),
        description: b.description,
        tags: b.tags,
    });
    if created {
        // As RabbitMQ: whoever creates a vhost gets full permissions in it.
        broker
            .access
            .put_permission(Permission::full(&user.name, &name));
    }
    Ok(created_or_updated(created))
}

pub(super) async fn delete_vhost(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    user.require_admin()?;
    if !broker.delete_vhost(&name) {
        return Err(ApiError::not_found());
    }
    Ok(no_content())
}

// ---------------------------------------------------------------- permissions

fn permissions_where(broker: &Broker, keep: impl Fn(&PermissionRecord) -> bool) -> Vec<Value> {
    broker
        .access
        .permissions()
        .iter()
        .filter(|p| keep(p))
        .map(permission_json)
        .collect()
}

pub(super) fn permission_json(p: &PermissionRecord) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

pub(super) async fn permissions(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    let items = broker
        .access
        .permissions()
        .iter()
        .map(permission_json)
        .collect();
    list(items, &query)
}

pub(super) async fn vhost_permissions(
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
    list(permissions_where(&broker, |p| p.vhost == vhost), &query)
}

pub(super) async fn user_permissions(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.require_admin()?;
    broker.access.user(&name).ok_or_else(ApiError::not_found)?;
    list(permissions_where(&broker, |p| p.user == name), &query)
}

pub(super) async fn permission(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.require_admin()?;
    let p = broker
        .access
        .permission(&vhost, &name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(permission_json(&p.record)).into_response())
}

#[derive(Deserialize)]
struct PermissionBody {
    configure: String,
    write: String,
    read: String,
}

/// Sets permissions after checking that the user and vhost exist and the
/// expressions compile; true when new.
pub(super) fn set_permission(broker: &Broker, record: PermissionRecord) -> Result<bool, ApiError> {
    if broker.access.vhost(&record.vhost).is_none() || broker.access.user(&record.user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let p = Permission::compile(record).map_err(ApiError::bad_request)?;
    Ok(broker.access.put_permission(p))
}

pub(super) async fn put_permission(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
    raw: Bytes,
) -> ApiResult {
    user.require_admin()?;
    let fields = object(&raw)?;
    require_keys(&fields, &["configure", "write", "read"])?;
    let b: PermissionBody = from_object(fields)?;
    let record = PermissionRecord {
        user: name,
        vhost,
        configure: b.configure,
        write: b.write,
        read: b.read,
    };
    Ok(created_or_updated(set_permission(&broker, record)?))
}

pub(super) async fn delete_permission(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    user.require_admin()?;
    if !broker.access.delete_permission(&vhost, &name) {
        return Err(ApiError::not_found());
    }
    Ok(no_content())
}
