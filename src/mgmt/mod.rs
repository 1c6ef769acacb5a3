//! The management HTTP API, RabbitMQ-compatible paths and JSON (issue 5).
//!
//! Served on `server.mgmt_listen` (and over HTTPS on `tls.mgmt_listen`)
//! beside AMQP. Every `/api` request carries
//! HTTP basic auth against the broker's users; as RabbitMQ, only users
//! tagged `administrator`, `management` or `monitoring` get in, users in
//! `auth.loopback_users` only from a loopback address, and only
//! administrators change users, vhosts and permissions. `/metrics`
//! (Prometheus) needs no credentials, as RabbitMQ's Prometheus plugin, nor
//! does the web UI at `/` and `/ui/` (`ui.rs`), which then calls the API.

mod api;
mod certificates;
mod channel_rates;
mod cluster;
mod definitions;
mod durable;
mod health;
mod history;
mod limits;
mod listener;
mod live;
mod metrics;
mod objects;
mod parameters;
mod policies;
mod shovels;
mod stream_clients;
mod streams;
mod topic_permissions;
mod ui;
mod users;

use crate::broker::Broker;
use api::User;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use base64::Engine;
pub(crate) use cluster::serve_follower;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Tags that may use the management API (RabbitMQ's management plugin).
const MANAGEMENT_TAGS: &[&str] = &["administrator", "management", "monitoring", "policymaker"];

/// Serves the API on `listeners` (each marked true to serve HTTPS with
/// `tls`) until `shutdown` completes.
pub(crate) async fn serve(
    listeners: Vec<(TcpListener, bool)>,
    broker: Arc<Broker>,
    shovels: Arc<crate::shovel::Shovels>,
    tls: Option<Arc<crate::tls::Tls>>,
    active: Vec<(&'static str, SocketAddr)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    live::mark_started();
    let limits = broker.config.mgmt.clone();
    let totals = history::Totals::default();
    let channel_rates = channel_rates::ChannelRates::default();
    let sampler = tokio::spawn(sample_rates(
        Arc::downgrade(&broker),
        totals.clone(),
        channel_rates.clone(),
    ));
    let api = Router::new()
        .route("/api/overview", get(live::overview))
        .route("/api/whoami", get(users::whoami))
        .route("/api/nodes", get(live::nodes))
        .route("/api/nodes/{node}", get(live::node).delete(cluster::forget))
        .route("/api/connections", get(live::connections))
        .route(
            "/api/connections/{name}",
            get(live::connection).delete(live::close_connection),
        )
        .route(
            "/api/connections/{name}/channels",
            get(live::connection_channels),
        )
        .route("/api/channels", get(live::channels))
        .route("/api/channels/{name}", get(live::channel))
        .route("/api/consumers", get(live::consumers))
        .route("/api/consumers/{vhost}", get(live::consumers_in))
        .route("/api/exchanges", get(objects::exchanges))
        .route("/api/exchanges/{vhost}", get(objects::exchanges_in))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(objects::exchange)
                .put(objects::put_exchange)
                .delete(objects::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(objects::publish),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(objects::exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(objects::exchange_bindings_destination),
        )
        .route("/api/queues", get(objects::queues))
        .route("/api/queues/{vhost}", get(objects::queues_in))
        // An empty queue name: RabbitMQ answers a PUT there with 405.
        .route("/api/queues/{vhost}/", get(objects::queues_in))
        .route(
            "/api/queues/{vhost}/{name}",
            get(objects::queue)
                .put(objects::put_queue)
                .delete(objects::delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(objects::queue_bindings),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(objects::purge_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/get",
            post(objects::get_messages),
        )
        .route("/api/bindings", get(objects::bindings))
        .route("/api/bindings/{vhost}", get(objects::bindings_in))
        .route(
            "/api/bindings/{vhost}/e/{source}/q/{destination}",
            get(objects::bindings_between_queue).post(objects::post_queue_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/q/{destination}/{props}",
            get(objects::queue_binding).delete(objects::delete_queue_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/e/{destination}",
            get(objects::bindings_between_exchange).post(objects::post_exchange_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/e/{destination}/{props}",
            get(objects::exchange_binding).delete(objects::delete_exchange_binding),
        )
        .route("/api/vhosts", get(users::vhosts))
        .route(
            "/api/vhosts/{name}",
            get(users::vhost)
                .put(users::put_vhost)
                .delete(users::delete_vhost),
        )
        .route(
            "/api/vhosts/{name}/permissions",
            get(users::vhost_permissions),
        )
        .route("/api/vhosts/{name}/connections", get(live::connections_in))
        .route("/api/vhosts/{name}/channels", get(live::channels_in))
        .route("/api/users", get(users::users))
        .route(
            "/api/users/without-permissions",
            get(users::users_without_permissions),
        )
        .route("/api/users/bulk-delete", post(users::bulk_delete_users))
        .route(
            "/api/users/{name}",
            get(users::user)
                .put(users::put_user)
                .delete(users::delete_user),
        )
        .route(
            "/api/users/{name}/permissions",
            get(users::user_permissions),
        )
        .route("/api/permissions", get(users::permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(users::permission)
                .put(users::put_permission)
                .delete(users::delete_permission),
        )
        .route("/api/policies", get(policies::policies))
        .route("/api/policies/{vhost}", get(policies::policies_in))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policies::policy)
                .put(policies::put_policy)
                .delete(policies::delete_policy),
        )
        .route(
            "/api/stream/super-streams/{vhost}/{name}",
            get(streams::super_stream)
                .put(streams::put_super_stream)
                .delete(streams::delete_super_stream),
        )
        .route("/api/stream/connections", get(stream_clients::connections))
        .route(
            "/api/stream/connections/{vhost}",
            get(stream_clients::connections_in),
        )
        .route(
            "/api/stream/connections/{vhost}/{name}",
            get(stream_clients::connection).delete(stream_clients::close_connection),
        )
        .route(
            "/api/stream/connections/{vhost}/{name}/publishers",
            get(stream_clients::connection_publishers),
        )
        .route(
            "/api/stream/connections/{vhost}/{name}/consumers",
            get(stream_clients::connection_consumers),
        )
        .route("/api/stream/publishers", get(stream_clients::publishers))
        .route(
            "/api/stream/publishers/{vhost}",
            get(stream_clients::publishers_in),
        )
        .route(
            "/api/stream/publishers/{vhost}/{stream}",
            get(stream_clients::stream_publishers),
        )
        .route("/api/stream/consumers", get(stream_clients::consumers))
        .route(
            "/api/stream/consumers/{vhost}",
            get(stream_clients::consumers_in),
        )
        .route("/api/operator-policies", get(policies::operator_policies))
        .route(
            "/api/operator-policies/{vhost}",
            get(policies::operator_policies_in),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(policies::operator_policy)
                .put(policies::put_operator_policy)
                .delete(policies::delete_operator_policy),
        )
        .route("/api/topic-permissions", get(topic_permissions::all))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(topic_permissions::of_user_in_vhost)
                .put(topic_permissions::put)
                .delete(topic_permissions::delete),
        )
        .route(
            "/api/topic-permissions/{vhost}/{user}/{exchange}",
            delete(topic_permissions::delete_one),
        )
        .route(
            "/api/users/{name}/topic-permissions",
            get(topic_permissions::of_user),
        )
        .route(
            "/api/vhosts/{name}/topic-permissions",
            get(topic_permissions::of_vhost),
        )
        .route("/api/parameters", get(parameters::all))
        .route("/api/parameters/{component}", get(parameters::of_component))
        .route(
            "/api/parameters/{component}/{vhost}",
            get(parameters::in_vhost),
        )
        .route(
            "/api/parameters/{component}/{vhost}/{name}",
            get(parameters::one)
                .put(parameters::put)
                .delete(parameters::delete),
        )
        .route("/api/shovels", get(shovels::all))
        .route("/api/shovels/{vhost}", get(shovels::in_vhost))
        .route("/api/shovels/vhost/{vhost}/{name}", delete(shovels::delete))
        .route(
            "/api/shovels/vhost/{vhost}/{name}/restart",
            delete(shovels::restart),
        )
        .route("/api/vhost-limits", get(limits::all_vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(limits::vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            put(limits::put_vhost_limit).delete(limits::delete_vhost_limit),
        )
        .route("/api/user-limits", get(limits::all_user_limits))
        .route("/api/user-limits/{user}", get(limits::user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            put(limits::put_user_limit).delete(limits::delete_user_limit),
        )
        .route(
            "/api/definitions",
            get(definitions::export_all).post(definitions::import_all),
        )
        .route(
            "/api/definitions/{vhost}",
            get(definitions::export_vhost).post(definitions::import_vhost),
        )
        .route("/api/health/checks/alarms", get(live::alarms))
        .route("/api/health/checks/local-alarms", get(live::alarms))
        .route("/api/health/checks/store", get(live::store_damage))
        .route(
            "/api/health/checks/node-is-quorum-critical",
            get(cluster::quorum_critical),
        )
        .route(
            "/api/health/checks/virtual-hosts",
            get(health::virtual_hosts),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(health::port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(health::protocol_listener),
        )
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(health::certificate_expiration),
        )
        .route("/api/aliveness-test/{vhost}", get(live::aliveness))
        .route("/api/tls/reload", post(certificates::reload))
        .route_layer(middleware::from_fn_with_state(
            broker.clone(),
            durable::reply_when_durable,
        ))
        .route_layer(middleware::from_fn_with_state(broker.clone(), require_user));
    let app = Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/metrics/per-object", get(metrics::per_object))
        .route("/metrics/detailed", get(metrics::detailed))
        .route("/", get(ui::shell))
        .route("/ui/{file}", get(ui::asset))
        .merge(api)
        .fallback(|| async { api::ApiError::not_found() })
        .layer(match limits.max_body_size {
            0 => DefaultBodyLimit::disable(),
            n => DefaultBodyLimit::max(n),
        })
        .layer(axum::Extension(tls.clone()))
        .layer(axum::Extension(health::ActiveListeners(Arc::new(active))))
        .layer(axum::Extension(totals))
        .layer(axum::Extension(channel_rates))
        .layer(axum::Extension(shovels))
        .with_state(broker);
    listener::serve(listeners, tls, app, &limits, shutdown).await;
    sampler.abort();
}

/// Samples every queue's counters for rates, consumer utilisation and
/// history, every `server.collect_statistics_interval_ms` (RabbitMQ: 5 s),
/// and their sums for the overview's history; and every channel's.
async fn sample_rates(
    broker: std::sync::Weak<Broker>,
    totals: history::Totals,
    channel_rates: channel_rates::ChannelRates,
) {
    let every = match broker.upgrade() {
        Some(b) => b.config.server.collect_statistics_interval_ms.max(10),
        None => return,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(every));
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let confirmed = live::confirmed_by_vhost(&broker);
        let mut all = [0u64; 8];
        let mut by_vhost = Vec::new();
        for vhost in broker.vhosts() {
            for e in vhost.exchanges() {
                e.stats.sample();
            }
            let mut sum = [0u64; 8];
            for q in vhost.queues() {
                let c = q.counts();
                q.stats.sample(c.ready, c.unacked);
                let counts = q.stats.counts();
                let values = [
                    (c.ready + c.unacked) as u64,
                    c.ready as u64,
                    c.unacked as u64,
                ];
                for (s, v) in sum.iter_mut().zip(values.into_iter().chain(counts)) {
                    *s += v;
                }
            }
            sum[history::CONFIRM] = confirmed.get(&vhost.name).map_or(0, |c| c.confirmed);
            for (a, v) in all.iter_mut().zip(sum) {
                *a += v;
            }
            by_vhost.push((vhost.name.clone(), sum));
        }
        // Deleted vhosts' confirms too: the broker's count never goes back.
        all[history::CONFIRM] = confirmed.values().map(|c| c.confirmed).sum();
        let now = crate::broker::timers::now_ms();
        totals.lock().record(now, all, by_vhost);
        channel_rates.sample(&broker, now);
    }
}

/// Every route: RabbitMQ's 401 unless the request authenticates as a user
/// allowed in; the user is handed on to the handler.
async fn require_user(
    State(broker): State<Arc<Broker>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Always there: the listener hands every request its peer address.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    match authenticate(&broker, request.headers(), peer) {
        Ok(user) => {
            request.extensions_mut().insert(user);
            next.run(request).await
        }
        Err(Refusal::NoCredentials) => login_failed(false),
        Err(Refusal::LoginFailed) => login_failed(true),
        Err(Refusal::NotManagement) => {
            api::ApiError::not_authorised("Not management user").into_response()
        }
        Err(Refusal::LoopbackOnly(user)) => {
            tracing::warn!(%user, peer = ?peer, "HTTP access denied: user can only log in via localhost");
            api::ApiError::not_authorised("User can only log in via localhost").into_response()
        }
    }
}

enum Refusal {
    NoCredentials,
    LoginFailed,
    NotManagement,
    LoopbackOnly(String),
}

/// The authenticated user, if it may use the API; otherwise RabbitMQ's
/// 401 (in rabbit_mgmt_util's order): `Login failed` for bad credentials,
/// `User can only log in via localhost` for a `loopback_users` user from
/// elsewhere (an unknown peer counts as elsewhere), `Not management user`
/// for a user without a management tag.
fn authenticate(
    broker: &Broker,
    headers: &HeaderMap,
    peer: Option<std::net::IpAddr>,
) -> Result<User, Refusal> {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .ok_or(Refusal::NoCredentials)?;
    let (name, password) = credentials.split_once(':').ok_or(Refusal::LoginFailed)?;
    let record = broker
        .authenticate(name, password)
        .ok_or(Refusal::LoginFailed)?;
    if broker.is_loopback_only(name) && !peer.is_some_and(crate::connection::auth::is_loopback) {
        return Err(Refusal::LoopbackOnly(name.to_string()));
    }
    if !record
        .tags
        .iter()
        .any(|t| MANAGEMENT_TAGS.contains(&t.as_str()))
    {
        return Err(Refusal::NotManagement);
    }
    Ok(User {
        name: name.to_string(),
        tags: record.tags.clone(),
    })
}

/// RabbitMQ's 401 for missing (empty body) or wrong credentials.
fn login_failed(with_body: bool) -> Response {
    let challenge = [(
        header::WWW_AUTHENTICATE,
        "Basic realm=\"RabbitMQ Management\"",
    )];
    if !with_body {
        return (StatusCode::UNAUTHORIZED, challenge).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        challenge,
        Json(json!({"error": "not_authorized", "reason": "Login failed"})),
    )
        .into_response()
}
