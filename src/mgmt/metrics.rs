//! `/metrics` in Prometheus text format.
//!
//! Metric names are RabbitMQ's Prometheus plugin names (`rabbitmq_…`, with
//! per-queue `vhost` and `queue` labels as its per-object endpoint), so
//! existing dashboards and alerts work; Leveret-only metrics start with
//! `leveret_`. Like RabbitMQ's plugin, the endpoint needs no credentials.

use super::api::node_name;
use super::live::{disk_free, open_fds, resident_memory};
use crate::broker::Broker;
use axum::extract::State;
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

pub(super) async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    let disk_used = {
        let path = broker.store.path().to_owned();
        tokio::task::spawn_blocking(move || dir_bytes(&path))
            .await
            .unwrap_or(0)
    };
    let body = render(&broker, disk_used);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// What `/metrics` reports of one queue, read once per scrape.
struct QueueRow {
    queue: Arc<crate::broker::queue::Queue>,
    counts: crate::broker::queue::QueueCounts,
    /// published, delivered, redelivered, acked.
    totals: [u64; 4],
    utilisation: f64,
}

fn render(broker: &Broker, disk_used: u64) -> String {
    let mut out = Out(String::with_capacity(4096));
    let node = node_name();
    out.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    out.value(
        "rabbitmq_identity_info",
        &[("rabbitmq_node", &node), ("rabbitmq_cluster", &node)],
        1,
    );
    out.family("rabbitmq_build_info", "untyped", "Leveret build info");
    out.value(
        "rabbitmq_build_info",
        &[
            ("product", "Leveret"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );

    let connections = broker.connections.len();
    let channels: usize = broker
        .connections
        .iter()
        .map(|c| c.channels.lock().len())
        .sum();
    out.single(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        connections,
    );
    out.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels,
    );

    // One look at each queue (its lock taken once), then every family.
    let queues: Vec<QueueRow> = broker
        .vhosts()
        .iter()
        .flat_map(|v| v.queues())
        .map(|q| QueueRow {
            counts: q.counts(),
            totals: q.stats.counts(),
            utilisation: q.stats.last().utilisation,
            queue: q,
        })
        .collect();
    let consumers: usize = queues.iter().map(|q| q.counts.consumers).sum();
    out.single("rabbitmq_queues", "gauge", "Queues available", queues.len());
    out.single(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers,
    );

    out.single(
        "rabbitmq_process_resident_memory_bytes",
        "gauge",
        "Memory used in bytes",
        resident_memory(),
    );
    out.single(
        "rabbitmq_resident_memory_limit_bytes",
        "gauge",
        "Memory high watermark in bytes",
        broker.config.limits.memory_high_watermark,
    );
    out.single(
        "leveret_queued_message_memory_bytes",
        "gauge",
        "Bytes held in memory for clients: ready messages, transactions, bodies arriving",
        broker.memory.used(),
    );
    out.single(
        "rabbitmq_disk_space_available_bytes",
        "gauge",
        "Disk space available in bytes",
        disk_free(broker),
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
        "rabbitmq_alarms_memory_used_watermark",
        "gauge",
        "is 1 if VM memory watermark alarm is in effect",
        u8::from(broker.memory.is_blocked()),
    );
    out.single(
        "rabbitmq_alarms_free_disk_space_watermark",
        "gauge",
        "is 1 if free disk space watermark alarm is in effect",
        u8::from(broker.store.disk_alarm().is_blocked()),
    );
    out.single(
        "rabbitmq_disk_space_available_limit_bytes",
        "gauge",
        "Free disk space low watermark in bytes",
        broker.store.disk_alarm().limit(),
    );
    out.single(
        "leveret_store_write_failed",
        "gauge",
        "is 1 while the store has stopped writing messages after a failed write or fsync",
        u8::from(broker.store.disk_alarm().is_failed()),
    );

    type Get = fn(&QueueRow) -> String;
    let per_queue: [(&str, &str, &str, Get); 10] = [
        (
            "rabbitmq_queue_messages_ready",
            "gauge",
            "Messages ready to be delivered to consumers",
            |q| q.counts.ready.to_string(),
        ),
        (
            "rabbitmq_queue_messages_unacked",
            "gauge",
            "Messages delivered to consumers but not yet acknowledged",
            |q| q.counts.unacked.to_string(),
        ),
        (
            "rabbitmq_queue_messages",
            "gauge",
            "Sum of ready and unacknowledged messages",
            |q| (q.counts.ready + q.counts.unacked).to_string(),
        ),
        (
            "rabbitmq_queue_consumers",
            "gauge",
            "Consumers on a queue",
            |q| q.counts.consumers.to_string(),
        ),
        (
            "rabbitmq_queue_consumer_utilisation",
            "gauge",
            "Fraction of the time the queue could immediately deliver to consumers",
            |q| {
                if q.counts.consumers == 0 {
                    "0".into()
                } else {
                    q.utilisation.to_string()
                }
            },
        ),
        (
            "rabbitmq_queue_messages_ram_bytes",
            "gauge",
            "Size of ready messages held in memory",
            |q| q.counts.memory.to_string(),
        ),
        (
            "rabbitmq_queue_messages_published_total",
            "counter",
            "Messages published into a queue",
            |q| q.totals[0].to_string(),
        ),
        (
            "leveret_queue_messages_delivered_total",
            "counter",
            "Messages delivered from a queue to consumers or basic.get",
            |q| q.totals[1].to_string(),
        ),
        (
            "leveret_queue_messages_redelivered_total",
            "counter",
            "Messages redelivered from a queue",
            |q| q.totals[2].to_string(),
        ),
        (
            "leveret_queue_messages_acked_total",
            "counter",
            "Messages acknowledged by consumers",
            |q| q.totals[3].to_string(),
        ),
    ];
    for (name, kind, help, get) in per_queue {
        out.family(name, kind, help);
        for q in &queues {
            let labels = [
                ("vhost", q.queue.vhost.as_str()),
                ("queue", q.queue.name.as_str()),
            ];
            out.value(name, &labels, get(q));
        }
    }
    store_damage(&mut out, broker);
    out.0
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
