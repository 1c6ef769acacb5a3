//! What is running now: overview, node, connections, channels, consumers,
//! health checks.

use super::api::{list, no_content, node_name, table_json, ApiError, ApiResult, User};
use super::channel_rates::ChannelRates;
use crate::broker::consumer::Consumer;
use crate::broker::consumer::{ConsumerChannel, Mode};
use crate::broker::{Broker, ConnectionHandle};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

type Q = Query<HashMap<String, String>>;

/// When this process started, for uptime.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub(super) fn mark_started() {
    STARTED.get_or_init(Instant::now);
}

pub(super) fn uptime_ms() -> u64 {
    STARTED.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Resident memory of this process in bytes (Linux), 0 when unknown.
pub(super) fn resident_memory() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The process's open-files limit, 0 when unknown.
pub(super) fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

/// Open file descriptors of this process (Linux), 0 when unknown.
pub(super) fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Free bytes on the data directory's file system, 0 when unknown.
pub(super) fn disk_free(broker: &Broker) -> u64 {
    let path = broker.store.path();
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs only writes into the zeroed struct we own, and the
    // path is a valid NUL-terminated string for the duration of the call.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) == 0 {
            s.f_bavail as u64 * s.f_frsize as u64
        } else {
            0
        }
    }
}

pub(super) async fn overview(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Extension(totals): Extension<super::history::Totals>,
    Extension(super::health::ActiveListeners(active)): Extension<super::health::ActiveListeners>,
    Query(query): Q,
) -> ApiResult {
    let (mut queues, mut exchanges, mut consumers) = (0usize, 0usize, 0usize);
    let (mut ready, mut unacked) = (0usize, 0usize);
    let mut counts = [0u64; 4];
    let mut rates = [0f64; 4];
    let mut length_rates = [0f64; 3];
    for vhost in broker.vhosts() {
        if !user.may_see(&broker, &vhost.name) {
            continue;
        }
        exchanges += vhost.exchanges().len();
        for q in vhost.queues() {
            let c = q.counts();
            queues += 1;
            consumers += c.consumers;
            ready += c.ready;
            unacked += c.unacked;
            let sample = q.stats.last();
            for (i, n) in q.stats.counts().iter().enumerate() {
                counts[i] += n;
                rates[i] += sample.rates[i];
            }
            for (sum, rate) in length_rates.iter_mut().zip(sample.gauge_rates) {
                *sum += rate;
            }
        }
    }
    // Stream protocol subscriptions count among the consumers, as RabbitMQ
    // counts them.
    for c in broker.connections.iter() {
        if let Some(client) = c
            .stream
            .as_ref()
            .filter(|_| user.may_see(&broker, &c.vhost))
        {
            consumers += client.subscriptions().len();
        }
    }
    let visible = connections_for(&broker, &user);
    let channels: usize = visible.iter().map(|c| c.channels).sum();
    let connections = visible.len();
    let exchange_types: Vec<Value> = ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| json!({"name": t, "enabled": true}))
        .collect();
    // Confirmed publishes: the broker's for those who see every vhost,
    // the sum of their vhosts' for the others (as RabbitMQ's overview).
    let everything = user.sees_everything();
    let seen: Vec<String> = if everything {
        Vec::new()
    } else {
        broker
            .vhosts()
            .iter()
            .filter(|v| user.may_see(&broker, &v.name))
            .map(|v| v.name.clone())
            .collect()
    };
    let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
    let seen_set: std::collections::HashSet<&str> = seen.iter().copied().collect();
    let confirmed_now = confirmed_by_vhost(&broker);
    let confirmed: u64 = confirmed_now
        .iter()
        .filter(|(v, _)| everything || seen_set.contains(v.as_str()))
        .map(|(_, c)| c.confirmed)
        .sum();
    let confirm_rate = {
        let h = totals.lock();
        if everything {
            h.all.confirm_rate
        } else {
            seen.iter()
                .filter_map(|v| h.by_vhost.get(*v))
                .map(|s| s.confirm_rate)
                .sum()
        }
    };
    let mut overview = json!({
        "product_name": "Leveret",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": "3.10.8",
        "management_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "basic",
        "node": node_name(),
        "cluster_name": node_name(),
        "exchange_types": exchange_types,
        "object_totals": {
            "connections": connections,
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_details": {"rate": length_rates[0]},
            "messages_ready": ready,
            "messages_ready_details": {"rate": length_rates[1]},
            "messages_unacknowledged": unacked,
            "messages_unacknowledged_details": {"rate": length_rates[2]},
        },
        "message_stats": {
            "publish": counts[0], "publish_details": {"rate": rates[0]},
            "confirm": confirmed, "confirm_details": {"rate": confirm_rate},
            "deliver_get": counts[1], "deliver_get_details": {"rate": rates[1]},
            "redeliver": counts[2], "redeliver_details": {"rate": rates[2]},
            "ack": counts[3], "ack_details": {"rate": rates[3]},
        },
    });
    // The node's listeners only to administrators and monitoring users,
    // as RabbitMQ.
    if everything {
        overview["listeners"] = json!(listeners(&active));
    }
    if let Some(c) = crate::cluster::current() {
        overview["cluster_name"] = json!(c.config().name);
        overview["cluster"] = super::cluster::cluster_overview(c, &c.view());
    }
    // History: the broker's to those who see every vhost, the sum of their
    // vhosts' to the others (RabbitMQ's vhost stats).
    let ask = super::history::Ask::from(&query);
    if ask.lengths.is_some() || ask.msg_rates.is_some() {
        let now = crate::broker::timers::now_ms();
        let h = totals.lock();
        // Each timestamp summed over the user's vhosts once, not once per
        // series: a user may see many vhosts.
        let summed = std::cell::RefCell::new(HashMap::new());
        let at = |t| {
            if everything {
                h.all.history.at(t)
            } else {
                *summed
                    .borrow_mut()
                    .entry(t)
                    .or_insert_with(|| h.summed_at(&seen, t))
            }
        };
        let lengths = ["messages", "messages_ready", "messages_unacknowledged"];
        for (i, name) in lengths.into_iter().enumerate() {
            overview["queue_totals"][format!("{name}_details")] =
                super::history::details(length_rates[i], ask.lengths, at, i, now);
        }
        let stats = ["publish", "deliver_get", "redeliver", "ack", "confirm"];
        let stat_rates = [rates[0], rates[1], rates[2], rates[3], confirm_rate];
        for (i, name) in stats.into_iter().enumerate() {
            overview["message_stats"][format!("{name}_details")] =
                super::history::details(stat_rates[i], ask.msg_rates, at, 3 + i, now);
        }
    }
    Ok(Json(overview).into_response())
}

/// Each bound listener (a configured port 0 shows the port it got), with
/// RabbitMQ's protocol names, sorted as RabbitMQ's: by protocol, then port.
fn listeners(active: &[(&'static str, std::net::SocketAddr)]) -> Vec<Value> {
    let mut sorted = active.to_vec();
    sorted.sort_by_key(|(protocol, addr)| (*protocol, addr.port()));
    sorted
        .into_iter()
        .map(|(protocol, addr)| {
            json!({
                "node": node_name(),
                "protocol": protocol,
                "ip_address": addr.ip().to_string(),
                "port": addr.port(),
            })
        })
        .collect()
}

/// Publishes confirmed to AMQP publishers so far, per vhost: closed
/// channels' and open ones'.
pub(super) fn confirmed_by_vhost(broker: &Broker) -> crate::broker::counters::VhostCounts {
    broker.counters.totals_by_vhost(|by_vhost| {
        for c in broker.connections.iter() {
            let registry = c.channels.lock();
            for ch in registry.values() {
                let Some(counts) = ch.counts() else { continue };
                match by_vhost.get_mut(&c.vhost) {
                    Some(v) => v.add(&counts),
                    None => {
                        by_vhost.insert(c.vhost.clone(), counts);
                    }
                }
            }
        }
    })
}

/// A path as text, made absolute against the working directory.
fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_owned())
        .to_string_lossy()
        .into_owned()
}

fn node_json(broker: &Broker) -> Value {
    let memory = resident_memory();
    let server = &broker.config.server;
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "partitions": [],
        "uptime": uptime_ms(),
        "mem_used": memory,
        "mem_limit": broker.config.limits.memory_high_watermark,
        "mem_alarm": broker.memory.is_blocked(),
        "disk_free": disk_free(broker),
        "disk_free_alarm": broker.store.disk_alarm().is_blocked(),
        "fd_used": open_fds(),
        "fd_total": fd_limit(),
        "proc_used": 0,
        "proc_total": 0,
        "sockets_used": broker.connections.len(),
        "sockets_total": fd_limit(),
        "disk_free_limit": broker.store.disk_alarm().limit(),
        // Leveret's own: why the store stopped writing (a failed write).
        "disk_write_error": broker.store.disk_alarm().failure(),
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        // Where things are, as RabbitMQ names them.
        "db_dir": absolute(&server.data_dir),
        "config_files": broker.config.config_file.iter().map(|f| absolute(f)).collect::<Vec<_>>(),
        "log_files": [if server.log_file.as_os_str().is_empty() {
            "<stderr>".to_string()
        } else {
            absolute(&server.log_file)
        }],
        "os_pid": std::process::id().to_string(),
        "applications": [{"name": "leveret", "description": "Leveret", "version": env!("CARGO_PKG_VERSION")}],
    })
}

pub(super) async fn nodes(State(broker): State<Arc<Broker>>) -> ApiResult {
    let own = node_json(&broker);
    let all = super::cluster::nodes(own.clone()).unwrap_or_else(|| vec![own]);
    Ok(Json(all).into_response())
}

pub(super) async fn node(State(broker): State<Arc<Broker>>, Path(name): Path<String>) -> ApiResult {
    let own = node_json(&broker);
    let all = super::cluster::nodes(own.clone()).unwrap_or_else(|| vec![own]);
    let found = all.into_iter().find(|n| n["name"] == name.as_str());
    Ok(Json(found.ok_or_else(ApiError::not_found)?).into_response())
}

// ---------------------------------------------------------------- connections

/// A snapshot of one connection for listing.
pub(super) struct ConnectionView {
    pub(super) json: Value,
    channels: usize,
}

pub(super) fn connection_json(h: &ConnectionHandle) -> ConnectionView {
    let channels = h.channels.lock().len();
    let peer_cert = h.tls.as_ref().and_then(|t| t.peer_cert.as_ref());
    let json = json!({
        "name": h.name,
        "node": node_name(),
        "vhost": h.vhost,
        "user": h.user,
        "user_who_performed_action": h.user,
        "state": h.publishing.describe(),
        "type": "network",
        "protocol": if h.stream.is_some() { "stream" } else { "AMQP 0-9-1" },
        "auth_mechanism": h.auth_mechanism,
        "user_provided_name": match h.client_properties.inner().get("connection_name") {
            Some(amq_protocol::types::AMQPValue::LongString(s)) => json!(s.to_string()),
            _ => Value::Null,
        },
        "ssl": h.tls.is_some(),
        "ssl_protocol": h.tls.as_ref().map(|t| &t.protocol),
        "ssl_key_exchange": h.tls.as_ref().map(|t| &t.key_exchange),
        "ssl_cipher": h.tls.as_ref().map(|t| &t.cipher),
        "ssl_hash": h.tls.as_ref().map(|t| &t.hash),
        "peer_cert_subject": peer_cert.map(|c| &c.subject),
        "peer_cert_issuer": peer_cert.map(|c| &c.issuer),
        "peer_cert_validity": peer_cert.map(|c| &c.validity),
        "peer_host": h.peer.ip().to_string(),
        "peer_port": h.peer.port(),
        "host": h.local.rsplit_once(':').map_or("", |(host, _)| host),
        "port": h.local.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()),
        "channels": channels,
        "channel_max": h.channel_max,
        "frame_max": h.frame_max,
        "timeout": h.heartbeat,
        "connected_at": h.connected_at,
        "client_properties": table_json(&h.client_properties),
    });
    ConnectionView { json, channels }
}

/// Administrators and monitoring users see every connection; management
/// users their own.
pub(super) fn connections_for(broker: &Broker, user: &User) -> Vec<ConnectionView> {
    broker
        .connections
        .iter()
        .filter(|c| user.sees_everything() || c.user == user.name)
        .map(|c| connection_json(&c))
        .collect()
}

pub(super) fn sorted_by_name(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    items
}

pub(super) async fn connections(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    let items = connections_for(&broker, &user)
        .into_iter()
        .map(|c| c.json)
        .collect();
    list(sorted_by_name(items), &query)
}

pub(super) async fn connections_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    let items = connections_for(&broker, &user)
        .into_iter()
        .map(|c| c.json)
        .filter(|c| c["vhost"] == vhost.as_str())
        .collect();
    list(sorted_by_name(items), &query)
}

fn find_connection(broker: &Broker, user: &User, name: &str) -> Result<(u64, Value), ApiError> {
    let (id, json, owner) = broker
        .connections
        .iter()
        .find(|c| c.name == name)
        .map(|c| (*c.key(), connection_json(&c).json, c.user.clone()))
        .ok_or_else(ApiError::not_found)?;
    may_look_at(user, &owner)?;
    Ok((id, json))
}

/// RabbitMQ's `is_authorized_user` for reading a connection (or what is
/// on it) owned by `owner`: administrators and monitoring users, and its
/// own user.
pub(super) fn may_look_at(user: &User, owner: &str) -> Result<(), ApiError> {
    if user.sees_everything() || user.name == owner {
        Ok(())
    } else {
        Err(not_authorised_for_object())
    }
}

fn not_authorised_for_object() -> ApiError {
    ApiError::not_authorised("User not authorised to access object")
}

pub(super) async fn connection(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult {
    Ok(Json(find_connection(&broker, &user, &name)?.1).into_response())
}

/// Closes a connection (AMQP with 320 CONNECTION_FORCED); the reason is
/// the `X-Reason` header, as RabbitMQ's.
pub(super) async fn close_connection(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (id, _) = find_connection(&broker, &user, &name)?;
    close_by_id(&broker, &user, id, &headers)
}

/// Asks connection `id` to close, if the user may (RabbitMQ's
/// `is_authorized_user` for a DELETE): an administrator, or the
/// connection's own user.
pub(super) fn close_by_id(broker: &Broker, user: &User, id: u64, headers: &HeaderMap) -> ApiResult {
    if !user.is_admin()
        && broker
            .connections
            .get(&id)
            .is_some_and(|c| c.user != user.name)
    {
        return Err(not_authorised_for_object());
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    if let Some(c) = broker.connections.get(&id) {
        let _ = c.close.send(Some(reason));
    }
    Ok(no_content())
}

// ---------------------------------------------------------------- channels

fn channel_json(
    conn: &ConnectionHandle,
    conn_id: u64,
    ch: &dyn ConsumerChannel,
    rates: &ChannelRates,
) -> Value {
    let info = ch.info();
    let mut channel = json!({
        "name": format!("{} ({})", conn.name, ch.id()),
        "number": ch.id(),
        "node": node_name(),
        "vhost": conn.vhost,
        "user": conn.user,
        "user_who_performed_action": conn.user,
        "state": "running",
        "connection_details": {"name": conn.name, "peer_host": conn.peer.ip().to_string(), "peer_port": conn.peer.port()},
        "consumer_count": info.consumers.len(),
        "prefetch_count": info.prefetch_count,
        "global_prefetch_count": info.global_prefetch_count,
        "messages_unacknowledged": info.unacked,
        "messages_unconfirmed": info.unconfirmed,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "confirm": info.mode == Mode::Confirm,
        "transactional": info.mode == Mode::Transactional,
    });
    if let Some(c) = ch.counts() {
        channel["message_stats"] = rates.message_stats(conn_id, ch.id(), &c);
    }
    channel
}

fn channels_of(
    broker: &Broker,
    user: &User,
    only: Option<&str>,
    rates: &ChannelRates,
) -> Vec<Value> {
    let mut out = Vec::new();
    for c in broker.connections.iter() {
        if !(user.sees_everything() || c.user == user.name) || only.is_some_and(|n| n != c.name) {
            continue;
        }
        for ch in c.channels.lock().values() {
            out.push(channel_json(&c, *c.key(), ch.as_ref(), rates));
        }
    }
    sorted_by_name(out)
}

pub(super) async fn channels(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Extension(rates): Extension<ChannelRates>,
    Query(query): Q,
) -> ApiResult {
    list(channels_of(&broker, &user, None, &rates), &query)
}

pub(super) async fn channels_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Extension(rates): Extension<ChannelRates>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    let items = channels_of(&broker, &user, None, &rates)
        .into_iter()
        .filter(|c| c["vhost"] == vhost.as_str())
        .collect();
    list(items, &query)
}

pub(super) async fn connection_channels(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Extension(rates): Extension<ChannelRates>,
    Path(name): Path<String>,
    Query(query): Q,
) -> ApiResult {
    find_connection(&broker, &user, &name)?;
    list(channels_of(&broker, &user, Some(&name), &rates), &query)
}

/// One channel, with its consumers (`consumer_details`), as RabbitMQ's
/// GET /api/channels/{name}.
pub(super) async fn channel(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Extension(rates): Extension<ChannelRates>,
    Path(name): Path<String>,
) -> ApiResult {
    for c in broker.connections.iter() {
        if !(user.sees_everything() || c.user == user.name) {
            continue;
        }
        for ch in c.channels.lock().values() {
            if format!("{} ({})", c.name, ch.id()) != name {
                continue;
            }
            let mut channel = channel_json(&c, *c.key(), ch.as_ref(), &rates);
            let consumers: Vec<Value> = ch
                .info()
                .consumers
                .iter()
                .map(|consumer| consumer_json(&c, ch.as_ref(), consumer))
                .collect();
            channel["consumer_details"] = Value::Array(consumers);
            return Ok(Json(channel).into_response());
        }
    }
    Err(ApiError::not_found())
}

// ---------------------------------------------------------------- consumers

fn consumer_json(conn: &ConnectionHandle, ch: &dyn ConsumerChannel, c: &Consumer) -> Value {
    json!({
        "consumer_tag": c.tag,
        "queue": {"name": c.queue.name, "vhost": c.queue.vhost},
        "channel_details": {
            "name": format!("{} ({})", conn.name, ch.id()),
            "number": ch.id(),
            "connection_name": conn.name,
            "peer_host": conn.peer.ip().to_string(),
            "peer_port": conn.peer.port(),
            "user": conn.user,
            "node": node_name(),
        },
        "ack_required": !c.no_ack,
        "prefetch_count": c.prefetch,
        "exclusive": c.exclusive,
        "active": true,
        "activity_status": "up",
        "arguments": table_json(&c.arguments),
    })
}

fn consumers_of(broker: &Broker, user: &User, vhost: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    for conn in broker.connections.iter() {
        if vhost.is_some_and(|v| v != conn.vhost) || !user.may_see(broker, &conn.vhost) {
            continue;
        }
        for ch in conn.channels.lock().values() {
            for c in ch.info().consumers {
                out.push(consumer_json(&conn, ch.as_ref(), &c));
            }
        }
    }
    out.sort_by(|a, b| {
        (a["queue"]["name"].as_str(), a["consumer_tag"].as_str())
            .cmp(&(b["queue"]["name"].as_str(), b["consumer_tag"].as_str()))
    });
    out
}

pub(super) async fn consumers(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Query(query): Q,
) -> ApiResult {
    list(consumers_of(&broker, &user, None), &query)
}

pub(super) async fn consumers_in(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
    Query(query): Q,
) -> ApiResult {
    user.vhost(&broker, &vhost)?;
    list(consumers_of(&broker, &user, Some(&vhost)), &query)
}

// ---------------------------------------------------------------- health

/// RabbitMQ's /api/health/checks/alarms: 200 without alarms, 503 with.
/// A disk alarm raised by a failed write also says why (`error`).
pub(super) async fn alarms(State(broker): State<Arc<Broker>>) -> ApiResult {
    let mut alarms = Vec::new();
    if broker.memory.is_blocked() {
        alarms.push(json!({"node": node_name(), "resource": "memory"}));
    }
    let disk = broker.store.disk_alarm();
    if disk.is_blocked() {
        let mut alarm = json!({"node": node_name(), "resource": "disk"});
        if let Some(error) = disk.failure() {
            alarm["error"] = json!(format!("cannot write messages to disk: {error}"));
        }
        alarms.push(alarm);
    }
    if alarms.is_empty() {
        return Ok(Json(json!({"status": "ok"})).into_response());
    }
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": "resource alarm(s) in effect",
            "alarms": alarms,
        })),
    )
        .into_response())
}

/// Damage the store was started with (`storage.on_damage = "report"`):
/// 503 naming each queue, file and how many messages it lost; 200 without.
pub(super) async fn store_damage(State(broker): State<Arc<Broker>>) -> ApiResult {
    let damage = &broker.store.damage;
    if damage.is_empty() {
        return Ok(Json(json!({"status": "ok"})).into_response());
    }
    let items: Vec<_> = damage
        .iter()
        .map(|d| {
            json!({
                "vhost": d.vhost,
                "queue": d.queue,
                "file": d.path.display().to_string(),
                "problem": d.problem,
                "lost_messages": d.lost,
            })
        })
        .collect();
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "status": "failed",
            "reason": "the store was damaged at start-up and messages were lost",
            "damage": items,
        })),
    )
        .into_response())
}

/// RabbitMQ's aliveness test: declare `aliveness-test`, publish a message
/// to it and get it back.
pub(super) async fn aliveness(
    State(broker): State<Arc<Broker>>,
    Extension(user): Extension<User>,
    Path(vhost): Path<String>,
) -> ApiResult {
    let v = user.vhost(&broker, &vhost)?;
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
    let alive = match declared {
        Ok((queue, _)) => {
            queue.publish(Arc::new(crate::message::Message::new(
                String::new(),
                "aliveness-test".into(),
                bytes::Bytes::from_static(&[0, 0]),
                bytes::Bytes::from_static(b"test_message"),
                false,
            )));
            matches!(queue.get(true).await, Some((m, _)) if &m.message.body[..] == b"test_message")
        }
        Err(_) => false,
    };
    if alive {
        Ok(Json(json!({"status": "ok"})).into_response())
    } else {
        Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "failed", "reason": "aliveness test failed"})),
        )
            .into_response())
    }
}
