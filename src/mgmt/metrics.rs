//! `/metrics`, `/metrics/per-object` and `/metrics/detailed` in
//! Prometheus text format, as RabbitMQ's rabbitmq_prometheus plugin.
//!
//! Names, types, HELP texts and labels are the plugin's (RabbitMQ 3.10),
//! so its Grafana dashboards and existing alerts work; Leveret-only
//! metrics start with `leveret_`. `/metrics` aggregates channel and
//! connection metrics as the plugin does, but keeps the per-queue
//! families labelled `vhost` and `queue` (as the plugin's
//! `return_per_object_metrics`), which Leveret always served there.
//! `/metrics/per-object` labels every object; `/metrics/detailed` serves
//! the families (RabbitMQ's groups) named by `family`, for the vhosts
//! named by `vhost` (all when none), prefixed `rabbitmq_detailed_`.
//! Like RabbitMQ's plugin, the endpoints need no credentials.

use super::api::node_name;
use super::live::{disk_free, fd_limit, open_fds, resident_memory, uptime_ms};
use crate::broker::counters::{read, MessageCounts};
use crate::broker::Broker;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.value(name, &[], v);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Which endpoint: what is aggregated and which families appear.
enum Mode {
    Aggregated,
    PerObject,
    /// The requested groups, and vhosts (empty: every vhost).
    Detailed {
        families: Vec<String>,
        vhosts: Vec<String>,
    },
}

impl Mode {
    fn wants(&self, group: &str) -> bool {
        match self {
            Mode::Detailed { families, .. } => families.iter().any(|f| f == group),
            _ => true,
        }
    }

    fn in_vhost(&self, vhost: &str) -> bool {
        match self {
            Mode::Detailed { vhosts, .. } => vhosts.is_empty() || vhosts.iter().any(|v| v == vhost),
            _ => true,
        }
    }

    fn prefix(&self) -> &'static str {
        match self {
            Mode::Detailed { .. } => "rabbitmq_detailed_",
            _ => "rabbitmq_",
        }
    }
}

pub(super) async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    scrape(broker, Mode::Aggregated).await
}

pub(super) async fn per_object(State(broker): State<Arc<Broker>>) -> Response {
    scrape(broker, Mode::PerObject).await
}

/// `?family=queue_coarse_metrics&family=…&vhost=/&vhost=…`.
pub(super) async fn detailed(
    State(broker): State<Arc<Broker>>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let pick = |key: &str| -> Vec<String> {
        query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mode = Mode::Detailed {
        families: pick("family"),
        vhosts: pick("vhost"),
    };
    scrape(broker, mode).await
}

async fn scrape(broker: Arc<Broker>, mode: Mode) -> Response {
    let disk_used = match mode {
        Mode::Detailed { .. } => 0,
        _ => {
            let path = broker.store.path().to_owned();
            tokio::task::spawn_blocking(move || dir_bytes(&path))
                .await
                .unwrap_or(0)
        }
    };
    let body = render(&broker, &mode, disk_used) + &super::cluster::metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// What the metrics report of one queue, read once per scrape.
struct QueueRow {
    queue: Arc<crate::broker::queue::Queue>,
    counts: crate::broker::queue::QueueCounts,
    /// published, delivered, redelivered, acked.
    totals: [u64; 4],
    utilisation: f64,
    head_timestamp: Option<u64>,
    /// How long the next message to deliver has waited (ms), when known.
    head_age_ms: Option<u64>,
}

/// One open channel.
struct ChannelRow {
    vhost: String,
    name: String,
    counts: MessageCounts,
    info: crate::broker::consumer::ChannelInfo,
}

/// One open connection.
struct ConnectionRow {
    vhost: String,
    name: String,
    channels: usize,
}

/// Everything read for a scrape, each object looked at once.
struct Snapshot {
    queues: Vec<QueueRow>,
    channels: Vec<ChannelRow>,
    connections: Vec<ConnectionRow>,
    totals: MessageCounts,
}

fn snapshot(broker: &Broker) -> Snapshot {
    let mut channels = Vec::new();
    let mut connections = Vec::new();
    let totals = broker.counters.totals(|open| {
        for c in broker.connections.iter() {
            let registry = c.channels.lock();
            connections.push(ConnectionRow {
                vhost: c.vhost.clone(),
                name: c.name.clone(),
                channels: registry.len(),
            });
            for ch in registry.values() {
                let Some(counts) = ch.counts() else { continue };
                open.add(&counts);
                channels.push(ChannelRow {
                    vhost: c.vhost.clone(),
                    name: format!("{} ({})", c.name, ch.id()),
                    counts,
                    info: ch.info(),
                });
            }
        }
    });
    let now = crate::broker::timers::now_ms();
    let queues = broker
        .vhosts()
        .iter()
        .flat_map(|v| v.queues())
        .map(|q| {
            let head = q.head();
            QueueRow {
                counts: q.counts(),
                totals: q.stats.counts(),
                utilisation: q.stats.last().utilisation,
                head_timestamp: head
                    .message
                    .as_ref()
                    .and_then(|m| super::objects::timestamp(&m.properties)),
                head_age_ms: head.age_ms(now),
                queue: q,
            }
        })
        .collect();
    Snapshot {
        queues,
        channels,
        connections,
        totals,
    }
}

type QueueValue = fn(&QueueRow) -> String;
type ChannelValue = fn(&ChannelRow) -> u64;
/// A family: name suffix, type, help, and its value for one object.
type Family<V> = (&'static str, &'static str, &'static str, V);

/// `queue_coarse_metrics`, then `queue_consumer_count`, then
/// `queue_metrics`, then `channel_queue_exchange_metrics`
/// (name suffix, type, help, value).
const QUEUE_COARSE: &[(&str, &str, &str, QueueValue)] = &[
    (
        "queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        |q| q.counts.ready.to_string(),
    ),
    (
        "queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        |q| q.counts.unacked.to_string(),
    ),
    (
        "queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        |q| (q.counts.ready + q.counts.unacked).to_string(),
    ),
];

const QUEUE_CONSUMERS: (&str, &str, &str, QueueValue) =
    ("queue_consumers", "gauge", "Consumers on a queue", |q| {
        q.counts.consumers.to_string()
    });

const QUEUE_METRICS: &[(&str, &str, &str, QueueValue)] = &[
    (
        "queue_consumer_capacity",
        "gauge",
        "Consumer capacity",
        utilisation,
    ),
    (
        "queue_consumer_utilisation",
        "gauge",
        "Same as consumer capacity",
        utilisation,
    ),
    (
        "queue_messages_ram",
        "gauge",
        "Ready and unacknowledged messages stored in memory",
        |q| (q.counts.ready_in_memory + q.counts.unacked).to_string(),
    ),
    (
        "queue_messages_ram_bytes",
        "gauge",
        "Size of ready and unacknowledged messages stored in memory",
        |q| {
            ((q.counts.memory as u64).min(q.counts.ready_bytes) + q.counts.unacked_bytes)
                .to_string()
        },
    ),
    (
        "queue_messages_ready_ram",
        "gauge",
        "Ready messages stored in memory",
        |q| q.counts.ready_in_memory.to_string(),
    ),
    (
        "queue_messages_unacked_ram",
        "gauge",
        "Unacknowledged messages stored in memory",
        |q| q.counts.unacked.to_string(),
    ),
    (
        "queue_messages_persistent",
        "gauge",
        "Persistent messages",
        |q| q.counts.persistent.messages.to_string(),
    ),
    (
        "queue_messages_persistent_bytes",
        "gauge",
        "Size in bytes of persistent messages",
        |q| q.counts.persistent.bytes.to_string(),
    ),
    (
        "queue_messages_bytes",
        "gauge",
        "Size in bytes of ready and unacknowledged messages",
        |q| (q.counts.ready_bytes + q.counts.unacked_bytes).to_string(),
    ),
    (
        "queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of ready messages",
        |q| q.counts.ready_bytes.to_string(),
    ),
    (
        "queue_messages_unacked_bytes",
        "gauge",
        "Size in bytes of all unacknowledged messages",
        |q| q.counts.unacked_bytes.to_string(),
    ),
    (
        "queue_messages_paged_out",
        "gauge",
        "Messages paged out to disk",
        |q| (q.counts.ready - q.counts.ready_in_memory).to_string(),
    ),
    (
        "queue_head_message_timestamp",
        "gauge",
        "Timestamp of the first message in the queue, if any",
        |q| {
            q.head_timestamp
                .map_or("NaN".to_string(), |t| t.to_string())
        },
    ),
];

const QUEUE_PUBLISHED: (&str, &str, &str, QueueValue) = (
    "queue_messages_published_total",
    "counter",
    "Total number of messages published to queues",
    |q| q.totals[0].to_string(),
);

fn utilisation(q: &QueueRow) -> String {
    if q.counts.consumers == 0 {
        "0".into()
    } else {
        q.utilisation.to_string()
    }
}

/// `channel_metrics`, `channel_exchange_metrics`, `channel_queue_metrics`.
const CHANNEL_GROUPS: &[(&str, &[Family<ChannelValue>])] = &[
    (
        "channel_metrics",
        &[
            (
                "channel_consumers",
                "gauge",
                "Consumers on a channel",
                |c| c.info.consumers.len() as u64,
            ),
            (
                "channel_messages_unacked",
                "gauge",
                "Delivered but not yet acknowledged messages",
                |c| c.info.unacked as u64,
            ),
            (
                "consumer_prefetch",
                "gauge",
                "Limit of unacknowledged messages for each consumer",
                |c| u64::from(c.info.prefetch_count),
            ),
            (
                "channel_prefetch",
                "gauge",
                "Total limit of unacknowledged messages for all consumers on a channel",
                |c| u64::from(c.info.global_prefetch_count),
            ),
        ],
    ),
    (
        "channel_exchange_metrics",
        &[
            (
                "channel_messages_published_total",
                "counter",
                "Total number of messages published into an exchange on a channel",
                |c| c.counts.received,
            ),
            (
                "channel_messages_confirmed_total",
                "counter",
                "Total number of messages published into an exchange and confirmed on the channel",
                |c| c.counts.confirmed,
            ),
            (
                "channel_messages_unroutable_returned_total",
                "counter",
                "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
                |c| c.counts.unroutable_returned,
            ),
            (
                "channel_messages_unroutable_dropped_total",
                "counter",
                "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
                |c| c.counts.unroutable_dropped,
            ),
        ],
    ),
    (
        "channel_queue_metrics",
        &[
            (
                "channel_get_ack_total",
                "counter",
                "Total number of messages fetched with basic.get in manual acknowledgement mode",
                |c| c.counts.get_manual_ack,
            ),
            (
                "channel_get_total",
                "counter",
                "Total number of messages fetched with basic.get in automatic acknowledgement mode",
                |c| c.counts.get_auto_ack,
            ),
            (
                "channel_messages_delivered_ack_total",
                "counter",
                "Total number of messages delivered to consumers in manual acknowledgement mode",
                |c| c.counts.consume_manual_ack,
            ),
            (
                "channel_messages_delivered_total",
                "counter",
                "Total number of messages delivered to consumers in automatic acknowledgement mode",
                |c| c.counts.consume_auto_ack,
            ),
            (
                "channel_messages_redelivered_total",
                "counter",
                "Total number of messages redelivered to consumers",
                |c| c.counts.redelivered,
            ),
            (
                "channel_messages_acked_total",
                "counter",
                "Total number of messages acknowledged by consumers",
                |c| c.counts.acknowledged,
            ),
            (
                "channel_get_empty_total",
                "counter",
                "Total number of times basic.get operations fetched no message",
                |c| c.counts.get_empty,
            ),
        ],
    ),
];

const AMQP: (&str, &str) = ("protocol", "amqp091");
const CLASSIC: (&str, &str) = ("queue_type", "rabbit_classic_queue");

fn render(broker: &Broker, mode: &Mode, disk_used: u64) -> String {
    let mut out = Out(String::with_capacity(8192));
    let snap = snapshot(broker);
    let p = mode.prefix();
    let detailed = matches!(mode, Mode::Detailed { .. });
    let per_object = !matches!(mode, Mode::Aggregated);

    if mode.wants("connection_churn_metrics") {
        let c = &broker.counters;
        for (name, help, v) in [
            (
                "connections_opened_total",
                "Total number of connections opened",
                &c.connections_opened,
            ),
            (
                "connections_closed_total",
                "Total number of connections closed or terminated",
                &c.connections_closed,
            ),
            (
                "channels_opened_total",
                "Total number of channels opened",
                &c.channels_opened,
            ),
            (
                "channels_closed_total",
                "Total number of channels closed",
                &c.channels_closed,
            ),
            (
                "queues_declared_total",
                "Total number of queues declared",
                &c.queues_declared,
            ),
            (
                "queues_created_total",
                "Total number of queues created",
                &c.queues_created,
            ),
            (
                "queues_deleted_total",
                "Total number of queues deleted",
                &c.queues_deleted,
            ),
        ] {
            out.single(&format!("{p}{name}"), "counter", help, read(v));
        }
    }
    if mode.wants("node_coarse_metrics") {
        for (name, help, v) in [
            ("process_open_fds", "Open file descriptors", open_fds()),
            (
                "process_open_tcp_sockets",
                "Open TCP sockets",
                broker.connections.len() as u64,
            ),
            (
                "process_resident_memory_bytes",
                "Memory used in bytes",
                resident_memory(),
            ),
            (
                "disk_space_available_bytes",
                "Disk space available in bytes",
                disk_free(broker),
            ),
        ] {
            out.single(&format!("{p}{name}"), "gauge", help, v);
        }
    }
    if mode.wants("node_metrics") {
        for (name, help, v) in [
            ("process_max_fds", "Open file descriptors limit", fd_limit()),
            (
                "process_max_tcp_sockets",
                "Open TCP sockets limit",
                match broker.config.limits.max_connections {
                    0 => fd_limit(),
                    n => n as u64,
                },
            ),
            (
                "resident_memory_limit_bytes",
                "Memory high watermark in bytes",
                broker.config.limits.memory_high_watermark,
            ),
            (
                "disk_space_available_limit_bytes",
                "Free disk space low watermark in bytes",
                broker.store.disk_alarm().limit(),
            ),
        ] {
            out.single(&format!("{p}{name}"), "gauge", help, v);
        }
        out.single(
            &format!("{p}erlang_uptime_seconds"),
            "gauge",
            "Node uptime",
            uptime_ms() as f64 / 1000.0,
        );
    }
    if !detailed {
        out.single(
            "rabbitmq_alarms_file_descriptor_limit",
            "untyped",
            "is 1 if file descriptor limit alarm is in effect",
            0,
        );
        out.single(
            "rabbitmq_alarms_free_disk_space_watermark",
            "untyped",
            "is 1 if free disk space watermark alarm is in effect",
            u8::from(broker.store.disk_alarm().is_blocked()),
        );
        out.single(
            "rabbitmq_alarms_memory_used_watermark",
            "untyped",
            "is 1 if VM memory watermark alarm is in effect",
            u8::from(broker.memory.is_blocked()),
        );
    }

    let queues: Vec<&QueueRow> = snap
        .queues
        .iter()
        .filter(|q| mode.in_vhost(&q.queue.vhost))
        .collect();
    let queue_family = |out: &mut Out, (name, kind, help, get): (&str, &str, &str, QueueValue)| {
        let name = format!("{p}{name}");
        out.family(&name, kind, help);
        for q in &queues {
            let labels = [
                ("vhost", q.queue.vhost.as_str()),
                ("queue", q.queue.name.as_str()),
            ];
            out.value(&name, &labels, get(q));
        }
    };
    if mode.wants("queue_coarse_metrics") {
        for f in QUEUE_COARSE {
            queue_family(&mut out, *f);
        }
    }
    if mode.wants("queue_consumer_count") || !detailed {
        queue_family(&mut out, QUEUE_CONSUMERS);
    }
    if mode.wants("queue_metrics") {
        if detailed {
            queue_family(&mut out, QUEUE_CONSUMERS);
        }
        for f in QUEUE_METRICS {
            queue_family(&mut out, *f);
        }
    }
    if mode.wants("channel_queue_exchange_metrics") {
        queue_family(&mut out, QUEUE_PUBLISHED);
    }

    let channels: Vec<&ChannelRow> = snap
        .channels
        .iter()
        .filter(|c| mode.in_vhost(&c.vhost))
        .collect();
    for (group, families) in CHANNEL_GROUPS {
        if !mode.wants(group) {
            continue;
        }
        for (name, kind, help, get) in *families {
            let name = format!("{p}{name}");
            out.family(&name, kind, help);
            if per_object {
                for c in &channels {
                    let labels = [("vhost", c.vhost.as_str()), ("channel", c.name.as_str())];
                    out.value(&name, &labels, get(c));
                }
            } else {
                out.value(&name, &[], channels.iter().map(|c| get(c)).sum::<u64>());
            }
        }
    }
    if mode.wants("connection_metrics") {
        let name = format!("{p}connection_channels");
        out.family(&name, "gauge", "Channels on a connection");
        let connections = snap.connections.iter().filter(|c| mode.in_vhost(&c.vhost));
        if per_object {
            for c in connections {
                let labels = [("vhost", c.vhost.as_str()), ("connection", c.name.as_str())];
                out.value(&name, &labels, c.channels);
            }
        } else {
            out.value(&name, &[], connections.map(|c| c.channels).sum::<usize>());
        }
    }

    if !detailed {
        let consumers: usize = snap.queues.iter().map(|q| q.counts.consumers).sum();
        out.single(
            "rabbitmq_connections",
            "gauge",
            "Connections currently open",
            snap.connections.len(),
        );
        out.single(
            "rabbitmq_channels",
            "gauge",
            "Channels currently open",
            snap.channels.len(),
        );
        out.single(
            "rabbitmq_consumers",
            "gauge",
            "Consumers currently connected",
            consumers,
        );
        out.single(
            "rabbitmq_queues",
            "gauge",
            "Queues available",
            snap.queues.len(),
        );
        global_counters(&mut out, &snap, consumers);
        leveret_metrics(&mut out, broker, &snap, disk_used);
    }
    identity(&mut out);
    out.0
}

/// RabbitMQ's node identity, which the dashboards join every query on.
fn identity(out: &mut Out) {
    let node = node_name();
    out.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    out.value(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", "3.10.8"),
            ("prometheus_plugin_version", "3.10.8"),
            ("product", "Leveret"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    out.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    let cluster_id = format!("leveret-{node}");
    out.value(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", &node),
            ("rabbitmq_cluster", &node),
            ("rabbitmq_cluster_permanent_id", &cluster_id),
        ],
        1,
    );
}

/// `rabbitmq_global_*`: RabbitMQ's rabbit_global_counters.
fn global_counters(out: &mut Out, snap: &Snapshot, consumers: usize) {
    let t = &snap.totals;
    let publishers = snap
        .channels
        .iter()
        .filter(|c| c.counts.received > 0)
        .count();
    out.family(
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    );
    out.value("rabbitmq_global_consumers", &[AMQP], consumers);
    let per_queue_type: [(&str, &str, u64); 8] = [
        ("acknowledged_total", "Total number of messages acknowledged by consumers", t.acknowledged),
        ("delivered_consume_auto_ack_total", "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment", t.consume_auto_ack),
        ("delivered_consume_manual_ack_total", "Total number of messages delivered to consumers using basic.consume with manual acknowledgment", t.consume_manual_ack),
        ("delivered_get_auto_ack_total", "Total number of messages delivered to consumers using basic.get with automatic acknowledgment", t.get_auto_ack),
        ("delivered_get_manual_ack_total", "Total number of messages delivered to consumers using basic.get with manual acknowledgment", t.get_manual_ack),
        ("delivered_total", "Total number of messages delivered to consumers", t.delivered()),
        ("get_empty_total", "Total number of times basic.get operations fetched no message", t.get_empty),
        ("redelivered_total", "Total number of messages redelivered to consumers", t.redelivered),
    ];
    let per_protocol: [(&str, &str, u64); 6] = [
        ("confirmed_total", "Total number of messages confirmed to publishers", t.confirmed),
        ("received_confirm_total", "Total number of messages received from publishers expecting confirmations", t.received_confirm),
        ("received_total", "Total number of messages received from publishers", t.received),
        ("routed_total", "Total number of messages routed to queues or streams", t.routed),
        ("unroutable_dropped_total", "Total number of messages published as non-mandatory into an exchange and dropped as unroutable", t.unroutable_dropped),
        ("unroutable_returned_total", "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable", t.unroutable_returned),
    ];
    for (suffix, help, v) in per_queue_type {
        let name = format!("rabbitmq_global_messages_{suffix}");
        out.family(&name, "counter", help);
        out.value(&name, &[AMQP, CLASSIC], v);
    }
    for (suffix, help, v) in per_protocol {
        let name = format!("rabbitmq_global_messages_{suffix}");
        out.family(&name, "counter", help);
        out.value(&name, &[AMQP], v);
    }
    out.family(
        "rabbitmq_global_publishers",
        "gauge",
        "Current number of publishers",
    );
    out.value("rabbitmq_global_publishers", &[AMQP], publishers);
}

/// Leveret's own: memory held for clients, the store, and per-queue
/// counters RabbitMQ keeps only in its management API.
fn leveret_metrics(out: &mut Out, broker: &Broker, snap: &Snapshot, disk_used: u64) {
    out.single(
        "leveret_queued_message_memory_bytes",
        "gauge",
        "Bytes held in memory for clients: ready messages, transactions, bodies arriving",
        broker.memory.used(),
    );
    out.single(
        "leveret_store_disk_bytes",
        "gauge",
        "Bytes used by the data directory",
        disk_used,
    );
    out.single(
        "leveret_process_open_fds",
        "gauge",
        "Open file descriptors",
        open_fds(),
    );
    out.single(
        "leveret_store_write_failed",
        "gauge",
        "is 1 while the store has stopped writing messages after a failed write or fsync",
        u8::from(broker.store.disk_alarm().is_failed()),
    );
    let per_queue: [(&str, &str, usize); 3] = [
        (
            "leveret_queue_messages_delivered_total",
            "Messages delivered from a queue to consumers or basic.get",
            1,
        ),
        (
            "leveret_queue_messages_redelivered_total",
            "Messages redelivered from a queue",
            2,
        ),
        (
            "leveret_queue_messages_acked_total",
            "Messages acknowledged by consumers",
            3,
        ),
    ];
    for (name, help, i) in per_queue {
        out.family(name, "counter", help);
        for q in &snap.queues {
            let labels = [
                ("vhost", q.queue.vhost.as_str()),
                ("queue", q.queue.name.as_str()),
            ];
            out.value(name, &labels, q.totals[i]);
        }
    }
    head_ages(out, snap);
    stream_metrics(out, snap, &super::streams::Subscriptions::gather(broker));
    store_damage(out, broker);
}

/// How long each queue's next message has waited, beside RabbitMQ's
/// `queue_head_message_timestamp` (which is the publisher's clock, when it
/// set one), and the longest of them: "a message waits > 5 min" alerts.
/// NaN where nothing is known (an empty queue, or a head written before
/// arrivals were kept), as RabbitMQ's timestamp.
fn head_ages(out: &mut Out, snap: &Snapshot) {
    let seconds =
        |ms: Option<u64>| ms.map_or("NaN".to_string(), |ms| (ms as f64 / 1000.0).to_string());
    let name = "leveret_queue_head_message_age_seconds";
    out.family(
        name,
        "gauge",
        "How long the next message to deliver has waited in the queue",
    );
    let ordinary = || snap.queues.iter().filter(|q| q.queue.stream().is_none());
    for q in ordinary() {
        let labels = [
            ("vhost", q.queue.vhost.as_str()),
            ("queue", q.queue.name.as_str()),
        ];
        out.value(name, &labels, seconds(q.head_age_ms));
    }
    out.single(
        "leveret_queue_head_message_age_max_seconds",
        "gauge",
        "The longest any queue's next message to deliver has waited",
        seconds(ordinary().filter_map(|q| q.head_age_ms).max()),
    );
}

/// Where each stream stands and how far behind its readers are.
fn stream_metrics(out: &mut Out, snap: &Snapshot, subscriptions: &super::streams::Subscriptions) {
    let rows: Vec<_> = snap
        .queues
        .iter()
        .filter_map(|q| Some((q, super::streams::row(&q.queue, subscriptions)?)))
        .collect();
    type Value = fn(&super::streams::StreamRow) -> u64;
    let per_stream: [(&str, &str, Value); 4] = [
        (
            "leveret_stream_first_offset",
            "The oldest offset a stream keeps",
            |r| r.first,
        ),
        (
            "leveret_stream_end_offset",
            "One past the newest readable offset of a stream",
            |r| r.end,
        ),
        (
            "leveret_stream_segments",
            "Segment files of a stream",
            |r| r.segments as u64,
        ),
        (
            "leveret_stream_disk_bytes",
            "Bytes of a stream's segments on disk",
            |r| r.bytes,
        ),
    ];
    for (name, help, value) in per_stream {
        out.family(name, "gauge", help);
        for (q, row) in &rows {
            let labels = [
                ("vhost", q.queue.vhost.as_str()),
                ("queue", q.queue.name.as_str()),
            ];
            out.value(name, &labels, value(row));
        }
    }
    let name = "leveret_stream_consumer_lag";
    out.family(
        name,
        "gauge",
        "Entries a stream consumer has not been sent yet",
    );
    for (q, row) in &rows {
        for r in &row.readers {
            let labels = [
                ("vhost", q.queue.vhost.as_str()),
                ("queue", q.queue.name.as_str()),
                ("consumer", r.tag.as_str()),
            ];
            match &r.connection {
                None => out.value(name, &labels, r.lag),
                // Stream protocol subscriptions' tags repeat across
                // connections: the connection tells them apart.
                Some(c) => {
                    let [v, q, t] = labels;
                    out.value(name, &[v, q, t, ("connection", c.as_str())], r.lag)
                }
            }
        }
    }
    let name = "leveret_stream_stored_offset_lag";
    out.family(
        name,
        "gauge",
        "Entries after the offset stored for a named reader of a stream",
    );
    for (q, row) in &rows {
        for (reader, _, lag) in &row.stored {
            let labels = [
                ("vhost", q.queue.vhost.as_str()),
                ("queue", q.queue.name.as_str()),
                ("reader", reader.as_str()),
            ];
            out.value(name, &labels, lag);
        }
    }
}

/// Messages lost to store damage at start-up (`storage.on_damage = "report"`).
fn store_damage(out: &mut Out, broker: &Broker) {
    out.family(
        "leveret_store_lost_messages",
        "gauge",
        "Messages a queue lost to a damaged store file found at start-up (at most)",
    );
    for d in &broker.store.damage {
        let file = d.path.display().to_string();
        let labels = [
            ("vhost", d.vhost.as_str()),
            ("queue", d.queue.as_str()),
            ("file", file.as_str()),
        ];
        // NaN: the queue's messages are lost and nothing says how many.
        let lost = d.lost.map_or("NaN".to_string(), |n| n.to_string());
        out.value("leveret_store_lost_messages", &labels, lost);
    }
}
