//! Monitoring as an operator moving from RabbitMQ 3.10 uses it: the
//! Prometheus families of rabbitmq_prometheus (those RabbitMQ's Grafana
//! dashboards query, `/metrics/per-object`, `/metrics/detailed`), the
//! queue fields and rate samples of the management API, and the health
//! checks of vhosts, listeners and certificates.
//!
//! The API-shape tests also run against RabbitMQ (`LEVERET_TEST_URI` and
//! `LEVERET_TEST_MGMT`); the Prometheus ones need Leveret's management
//! listener (RabbitMQ serves them on 15692, a plugin of its own).

use crate::common;

use common::amqp::confirm_channel;
use common::http::{raw_request, Api};
use common::{unique, TestBroker};
use lapin::{options::*, types::FieldTable, BasicProperties, ExchangeKind};
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// Every sample of a Prometheus text body: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(api: &Api, path: &str) -> HashMap<String, f64> {
    let reply = raw_request(api.addr, "GET", path, None, None).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text);
    samples(&reply.text)
}

const AMQP: &str = "{protocol=\"amqp091\"}";
const CLASSIC: &str = "{protocol=\"amqp091\",queue_type=\"rabbit_classic_queue\"}";

/// What each global counter should have moved by since `before`.
async fn assert_moved(api: &Api, before: &HashMap<String, f64>, expected: &[(&str, &str, f64)]) {
    let mut last = String::new();
    let moved = |now: &HashMap<String, f64>, last: &mut String| {
        let mut ok = true;
        last.clear();
        for (name, labels, by) in expected {
            let key = format!("{name}{labels}");
            let delta = now.get(&key).copied().unwrap_or(f64::NAN)
                - before.get(&key).copied().unwrap_or(0.0);
            if delta != *by {
                ok = false;
                last.push_str(&format!("{key}: moved by {delta}, expected {by}\n"));
            }
        }
        ok
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = scrape(api, "/metrics").await;
        if moved(&now, &mut last) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("global counters:\n{last}");
        }
        tokio::time::sleep(common::POLL).await;
    }
}

#[tokio::test]
async fn global_counters_move_by_exactly_what_clients_did() {
    if common::against_other_broker() {
        return; // RabbitMQ serves /metrics on 15692 (its Prometheus plugin)
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let before = scrape(&api, "/metrics").await;

    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (q1, q2) = (unique("mon-a"), unique("mon-b"));
    for q in [&q1, &q2] {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // A redeclare counts as declared, not created.
    ch.queue_declare(
        q1.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let fanout = unique("mon-fanout");
    ch.exchange_declare(
        fanout.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in [&q1, &q2] {
        ch.queue_bind(
            q.as_str().into(),
            fanout.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let publish = |exchange: String, key: String, mandatory: bool| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                b"m",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };
    // 5 to q1, 1 through the fanout (2 queues), 2 dropped, 1 returned.
    for _ in 0..5 {
        publish(String::new(), q1.clone(), false).await;
    }
    publish(fanout.clone(), String::new(), false).await;
    publish(String::new(), unique("nowhere"), false).await;
    publish(String::new(), unique("nowhere"), false).await;
    publish(String::new(), unique("nowhere"), true).await;

    // q1 holds 6: 3 consumed with acks, 1 got without ack, 1 got and
    // acked, 1 got, nacked with requeue and got again (redelivered).
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(3, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = common::amqp::consume(&consumer_ch, &q1, "c", false).await;
    let deliveries = common::amqp::next_n(&mut consumer, 3).await;
    consumer_ch
        .basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    for d in deliveries {
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let get = |no_ack: bool| {
        let (ch, q) = (ch.clone(), q1.clone());
        async move {
            ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack })
                .await
                .unwrap()
        }
    };
    get(true).await.expect("a message");
    get(false)
        .await
        .expect("a message")
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    get(false)
        .await
        .expect("a message")
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let again = get(false).await.expect("the requeued message");
    assert!(again.delivery.redelivered);
    again.ack(BasicAckOptions::default()).await.unwrap();
    assert!(get(false).await.is_none());
    ch.queue_delete(q2.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    assert_moved(
        &api,
        &before,
        &[
            ("rabbitmq_global_messages_received_total", AMQP, 9.0),
            ("rabbitmq_global_messages_received_confirm_total", AMQP, 9.0),
            ("rabbitmq_global_messages_routed_total", AMQP, 7.0),
            (
                "rabbitmq_global_messages_unroutable_dropped_total",
                AMQP,
                2.0,
            ),
            (
                "rabbitmq_global_messages_unroutable_returned_total",
                AMQP,
                1.0,
            ),
            ("rabbitmq_global_messages_confirmed_total", AMQP, 9.0),
            (
                "rabbitmq_global_messages_delivered_consume_manual_ack_total",
                CLASSIC,
                3.0,
            ),
            (
                "rabbitmq_global_messages_delivered_consume_auto_ack_total",
                CLASSIC,
                0.0,
            ),
            (
                "rabbitmq_global_messages_delivered_get_auto_ack_total",
                CLASSIC,
                1.0,
            ),
            (
                "rabbitmq_global_messages_delivered_get_manual_ack_total",
                CLASSIC,
                3.0,
            ),
            ("rabbitmq_global_messages_delivered_total", CLASSIC, 7.0),
            ("rabbitmq_global_messages_redelivered_total", CLASSIC, 1.0),
            ("rabbitmq_global_messages_acknowledged_total", CLASSIC, 5.0),
            ("rabbitmq_global_messages_get_empty_total", CLASSIC, 1.0),
            ("rabbitmq_global_publishers", AMQP, 1.0),
            ("rabbitmq_connections_opened_total", "", 1.0),
            ("rabbitmq_channels_opened_total", "", 2.0),
            ("rabbitmq_queues_declared_total", "", 3.0),
            ("rabbitmq_queues_created_total", "", 2.0),
            ("rabbitmq_queues_deleted_total", "", 1.0),
        ],
    )
    .await;

    // Closing the channels and the connection keeps every total.
    consumer_ch.close(200, "bye".into()).await.unwrap();
    conn.close(200, "bye".into()).await.unwrap();
    assert_moved(
        &api,
        &before,
        &[
            ("rabbitmq_global_messages_received_total", AMQP, 9.0),
            ("rabbitmq_global_messages_delivered_total", CLASSIC, 7.0),
            ("rabbitmq_global_messages_acknowledged_total", CLASSIC, 5.0),
            ("rabbitmq_global_messages_confirmed_total", AMQP, 9.0),
            ("rabbitmq_global_publishers", AMQP, 0.0),
            ("rabbitmq_channels_closed_total", "", 2.0),
            ("rabbitmq_connections_closed_total", "", 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn auto_ack_consumers_count_as_such() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let before = scrape(&api, "/metrics").await;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("mon-auto");
    common::amqp::declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for _ in 0..4 {
        common::amqp::publish_and_confirm(&ch, "", &q, b"x", BasicProperties::default()).await;
    }
    let mut consumer = common::amqp::consume(&ch, &q, "auto", true).await;
    common::amqp::next_n(&mut consumer, 4).await;
    assert_moved(
        &api,
        &before,
        &[
            (
                "rabbitmq_global_messages_delivered_consume_auto_ack_total",
                CLASSIC,
                4.0,
            ),
            ("rabbitmq_global_messages_delivered_total", CLASSIC, 4.0),
            ("rabbitmq_global_messages_acknowledged_total", CLASSIC, 0.0),
            ("rabbitmq_global_consumers", AMQP, 1.0),
        ],
    )
    .await;
}

/// The metric names a Grafana expression queries: identifiers outside
/// label matchers and `by(…)`/`on(…)`/`group_left(…)` lists.
fn queried_metrics(expr: &str) -> Vec<String> {
    let lists = regex::Regex::new(r"\b(by|on|group_left|group_right|without)\s*\([^)]*\)").unwrap();
    // label_values(metric, label): the label is no metric.
    let label_values = regex::Regex::new(r",\s*[a-z_]+\s*\)").unwrap();
    let expr = label_values.replace_all(expr, ")");
    let matchers = regex::Regex::new(r"\{[^}]*\}").unwrap();
    let ranges = regex::Regex::new(r"\[[^\]]*\]").unwrap();
    let expr = lists.replace_all(&expr, "");
    let expr = matchers.replace_all(&expr, "");
    let expr = ranges.replace_all(&expr, "");
    let names = regex::Regex::new(r"\b(rabbitmq|erlang)_[a-z_]+\b").unwrap();
    names
        .find_iter(&expr)
        .map(|m| m.as_str().to_string())
        .collect()
}

fn expressions(v: &serde_json::Value, into: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => into.push(s.clone()),
                    _ => expressions(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| expressions(i, into)),
        _ => {}
    }
}

#[tokio::test]
async fn every_family_the_rabbitmq_overview_dashboard_queries_exists() {
    if common::against_other_broker() {
        return;
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/grafana/RabbitMQ-Overview-3.10.8.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let mut wanted: Vec<String> = exprs.iter().flat_map(|e| queried_metrics(e)).collect();
    wanted.sort();
    wanted.dedup();
    assert!(wanted.len() > 30, "{wanted:?}");

    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    // Some families only have samples with a channel or a queue.
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    common::amqp::declare_queue(
        &ch,
        &unique("mon-dash"),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let text = raw_request(api.addr, "GET", "/metrics", None, None)
        .await
        .text;
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not in:\n{text}"
    );
    // The dashboards join every query on these labels.
    let identity = text
        .lines()
        .find(|l| l.starts_with("rabbitmq_identity_info{"))
        .unwrap();
    assert!(
        identity.contains("rabbitmq_node=\"") && identity.contains("rabbitmq_cluster=\""),
        "{identity}"
    );
    let build = text
        .lines()
        .find(|l| l.starts_with("rabbitmq_build_info{"))
        .unwrap();
    assert!(build.contains("rabbitmq_version=\""), "{build}");
}

#[tokio::test]
async fn families_have_rabbitmqs_types_and_help() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let text = raw_request(api.addr, "GET", "/metrics", None, None)
        .await
        .text;
    for line in [
        "# TYPE rabbitmq_global_messages_received_total counter",
        "# HELP rabbitmq_global_messages_received_total Total number of messages received from publishers",
        "# TYPE rabbitmq_global_publishers gauge",
        "# TYPE rabbitmq_connections_opened_total counter",
        "# HELP rabbitmq_queues_deleted_total Total number of queues deleted",
        "# TYPE rabbitmq_alarms_free_disk_space_watermark untyped",
        "# HELP rabbitmq_alarms_free_disk_space_watermark is 1 if free disk space watermark alarm is in effect",
        "# HELP rabbitmq_identity_info RabbitMQ node & cluster identity info",
        "# TYPE rabbitmq_process_max_fds gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    // Each family is declared once.
    let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = types.len();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), n, "a family declared twice");
}

#[tokio::test]
async fn the_disk_alarm_gauge_follows_the_disk_alarm() {
    if common::against_other_broker() {
        return;
    }
    let gauge = |text: &str| {
        samples(text)
            .get("rabbitmq_alarms_free_disk_space_watermark")
            .copied()
    };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let text = raw_request(api.addr, "GET", "/metrics", None, None)
        .await
        .text;
    assert_eq!(gauge(&text), Some(0.0));
    broker.stop().await;

    let mut config = leveret::Config::default();
    // More than any disk has free: the alarm is on from the start.
    config.storage.disk_free_limit = leveret::config::DiskFreeLimit::Absolute(1 << 60);
    let broker = TestBroker::start_with(config).await;
    let api = Api::of(&broker).unwrap();
    let text = raw_request(api.addr, "GET", "/metrics", None, None)
        .await
        .text;
    assert_eq!(gauge(&text), Some(1.0));
    let limit = samples(&text)["rabbitmq_disk_space_available_limit_bytes"];
    assert_eq!(limit, (1u64 << 60) as f64);
}

#[tokio::test]
async fn per_object_metrics_label_queues_channels_and_connections() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("mon-per-object");
    common::amqp::declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for _ in 0..3 {
        common::amqp::publish_and_confirm(&ch, "", &q, b"abc", BasicProperties::default()).await;
    }
    let text = raw_request(api.addr, "GET", "/metrics/per-object", None, None)
        .await
        .text;
    let s = samples(&text);
    let labels = format!("{{vhost=\"/\",queue=\"{q}\"}}");
    assert_eq!(
        s[&format!("rabbitmq_queue_messages_ready{labels}")],
        3.0,
        "{text}"
    );
    assert_eq!(
        s[&format!("rabbitmq_queue_messages_published_total{labels}")],
        3.0
    );
    let published: Vec<f64> = s
        .iter()
        .filter(|(k, _)| {
            k.starts_with("rabbitmq_channel_messages_published_total{vhost=\"/\",channel=\"")
        })
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(published, vec![3.0], "{text}");
    assert!(
        s.keys()
            .any(|k| k.starts_with("rabbitmq_connection_channels{vhost=\"/\",connection=\"")),
        "{text}"
    );
    // /metrics sums channels and connections.
    let text = raw_request(api.addr, "GET", "/metrics", None, None)
        .await
        .text;
    assert_eq!(
        samples(&text)["rabbitmq_channel_messages_published_total"],
        3.0,
        "{text}"
    );
}

#[tokio::test]
async fn detailed_metrics_serve_the_families_and_vhosts_asked_for() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    api.put("/api/vhosts/mon-other", serde_json::json!({}))
        .await;
    let q = unique("mon-detailed");
    let other = unique("mon-detailed-other");
    assert_eq!(
        api.put(&format!("/api/queues/%2F/{q}"), serde_json::json!({}))
            .await
            .status,
        201
    );
    api.put(
        "/api/permissions/mon-other/guest",
        serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    assert_eq!(
        api.put(
            &format!("/api/queues/mon-other/{other}"),
            serde_json::json!({})
        )
        .await
        .status,
        201
    );
    let text = raw_request(
        api.addr,
        "GET",
        "/metrics/detailed?family=queue_coarse_metrics&vhost=/",
        None,
        None,
    )
    .await
    .text;
    let s = samples(&text);
    assert_eq!(
        s.get(&format!(
            "rabbitmq_detailed_queue_messages_ready{{vhost=\"/\",queue=\"{q}\"}}"
        )),
        Some(&0.0),
        "{text}"
    );
    assert!(!text.contains(&other), "{text}");
    assert!(
        !text.contains("rabbitmq_detailed_queue_consumers"),
        "not asked for: {text}"
    );
    assert!(!text.contains("rabbitmq_global_"), "{text}");
    assert!(text.contains("rabbitmq_identity_info{"), "{text}");

    let text = raw_request(
        api.addr,
        "GET",
        "/metrics/detailed?family=queue_consumer_count&family=connection_churn_metrics",
        None,
        None,
    )
    .await
    .text;
    assert!(
        text.contains(&format!(
            "rabbitmq_detailed_queue_consumers{{vhost=\"mon-other\",queue=\"{other}\"}} 0"
        )),
        "{text}"
    );
    assert!(
        text.contains("# TYPE rabbitmq_detailed_queues_created_total counter"),
        "{text}"
    );
    assert!(
        !text.contains("rabbitmq_detailed_queue_messages_ready"),
        "{text}"
    );

    // An unknown family: only the node's identity, as RabbitMQ.
    let text = raw_request(
        api.addr,
        "GET",
        "/metrics/detailed?family=nonsense",
        None,
        None,
    )
    .await
    .text;
    assert!(!text.contains("rabbitmq_detailed_"), "{text}");
    assert!(text.contains("rabbitmq_build_info{"), "{text}");
}

// ------------------------------------------------------------ health checks

#[tokio::test]
async fn virtual_hosts_check_passes_while_every_vhost_runs() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let reply = api.get("/api/health/checks/virtual-hosts").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn port_listener_check_names_the_ports_listened_on() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let port = broker.addr.port();
    let reply = api
        .get(&format!("/api/health/checks/port-listener/{port}"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.json,
        serde_json::json!({"status": "ok", "port": port})
    );

    // Nobody listens on port 1.
    let reply = api.get("/api/health/checks/port-listener/1").await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json["status"], "failed");
    assert_eq!(reply.json["reason"], "No active listener");
    assert_eq!(reply.json["missing"], 1);
    let ports = reply.json["ports"].as_array().unwrap();
    assert!(ports.contains(&serde_json::json!(port)), "{}", reply.text);
    assert!(
        ports.contains(&serde_json::json!(api.addr.port())),
        "{}",
        reply.text
    );

    let reply = api.get("/api/health/checks/port-listener/abc").await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(
        reply.json,
        serde_json::json!({"error": "bad_request", "reason": "Invalid port"})
    );
}

#[tokio::test]
async fn protocol_listener_check_reads_rabbitmqs_names_and_aliases() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    for (asked, protocol) in [
        ("amqp", "amqp"),
        ("AMQP091", "amqp"),
        ("amqp0-9-1", "amqp"),
        ("http", "http"),
        ("management", "http"),
    ] {
        let reply = api
            .get(&format!("/api/health/checks/protocol-listener/{asked}"))
            .await;
        assert_eq!(reply.status, 200, "{asked}: {}", reply.text);
        assert_eq!(
            reply.json,
            serde_json::json!({"status": "ok", "protocol": protocol})
        );
    }
    let reply = api.get("/api/health/checks/protocol-listener/mqtt").await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json["status"], "failed");
    assert_eq!(reply.json["reason"], "No active listener");
    assert_eq!(reply.json["missing"], "mqtt");
    let protocols = reply.json["protocols"].as_array().unwrap();
    assert!(
        protocols.contains(&serde_json::json!("amqp")),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn certificate_expiration_check_reads_rabbitmqs_units() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    for unit in ["days", "weeks", "months", "years", "DAYS"] {
        let reply = api
            .get(&format!(
                "/api/health/checks/certificate-expiration/1/{unit}"
            ))
            .await;
        assert_eq!(reply.status, 200, "{unit}: {}", reply.text);
        assert_eq!(reply.json, serde_json::json!({"status": "ok"}));
    }
    let reply = api
        .get("/api/health/checks/certificate-expiration/x/weeks")
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["reason"], "Invalid expiration value.");
    let reply = api
        .get("/api/health/checks/certificate-expiration/1/fortnights")
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json["reason"],
        "Time unit not recognised. Supported units: days, weeks, months, years."
    );
}

/// A broker with an AMQPS listener whose certificate expires at the start
/// of `expires` (a year), made here with rcgen.
struct TlsBroker {
    dir: std::path::PathBuf,
    mgmt: std::net::SocketAddr,
    amqps: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsBroker {
    async fn start(expires: i32) -> TlsBroker {
        use rcgen::{CertificateParams, KeyPair};
        let dir = std::env::temp_dir().join(unique("leveret-mon-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(expires, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let mut config = leveret::Config::default();
        config.server.data_dir = dir.join("data");
        config.server.listen = leveret::config::Addresses::one("127.0.0.1:0");
        config.server.mgmt_listen = leveret::config::Addresses::one("127.0.0.1:0");
        config.tls.listen = leveret::config::Addresses::one("127.0.0.1:0");
        config.stream.listen = leveret::config::Addresses::one("127.0.0.1:0");
        config.tls.cert = dir.join("cert.pem");
        config.tls.key = dir.join("key.pem");
        config.validate().unwrap();
        let listeners = leveret::Listeners::bind(&config).await.unwrap();
        let mgmt = listeners.mgmt[0].local_addr().unwrap();
        let amqps = listeners.amqps[0].local_addr().unwrap();
        let core = leveret::Broker::open(config).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(leveret::serve_on(listeners, core, async {
            let _ = rx.await;
        }));
        TlsBroker {
            dir,
            mgmt,
            amqps,
            shutdown: Some(tx),
            task,
        }
    }

    fn api(&self) -> Api {
        Api {
            addr: self.mgmt,
            user: "guest".into(),
            password: "guest".into(),
        }
    }

    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn certificate_expiration_check_fails_for_a_certificate_expiring_within_the_window() {
    if common::against_other_broker() {
        return; // needs a certificate made here
    }
    let now_year = 1970
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 31_556_952) as i32;
    // Expires on 1 January of the year after next: 1 to 2 years away.
    let broker = TlsBroker::start(now_year + 2).await;
    let api = broker.api();
    let reply = api
        .get("/api/health/checks/certificate-expiration/1/weeks")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, serde_json::json!({"status": "ok"}));

    let reply = api
        .get("/api/health/checks/certificate-expiration/3/years")
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json["status"], "failed");
    assert_eq!(reply.json["reason"], "Certificates expiring");
    let expired = &reply.json["expired"][0];
    assert_eq!(expired["protocol"], "amqp/ssl", "{}", reply.text);
    assert_eq!(expired["port"], broker.amqps.port());
    assert_eq!(expired["interface"], "127.0.0.1");
    assert_eq!(
        expired["certfile_expires_on"],
        serde_json::json!([format!("{}-01-01 0:00:00", now_year + 2)])
    );
    assert!(expired["certfile"].as_str().unwrap().ends_with("cert.pem"));
    // The TLS listener answers the protocol check too.
    let reply = api.get("/api/health/checks/protocol-listener/amqps").await;
    assert_eq!(
        reply.json,
        serde_json::json!({"status": "ok", "protocol": "amqp/ssl"})
    );
    broker.stop().await;
}

// ------------------------------------------------------------ queue fields

/// The queue as the API shows it once it reports `messages`,
/// `messages_unacknowledged` and `message_bytes` (RabbitMQ's statistics
/// lag up to 5 s, and not all at once).
async fn queue_when(
    api: &Api,
    name: &str,
    messages: u64,
    unacked: u64,
    bytes: u64,
) -> serde_json::Value {
    common::wait_for("the queue's counts", Duration::from_secs(15), || async {
        let reply = api.get(&format!("/api/queues/%2F/{name}")).await;
        let q = reply.json;
        if q["messages"] == messages
            && q["messages_unacknowledged"] == unacked
            && q["message_bytes"] == bytes
        {
            Ok(q)
        } else {
            Err(q)
        }
    })
    .await
}

#[tokio::test]
async fn queue_objects_show_message_bytes_persistence_and_the_head_timestamp() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("mon-fields");
    common::amqp::declare_queue(&ch, &q, common::amqp::durable(), FieldTable::default()).await;
    let persistent = |ts: u64| {
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_timestamp(ts)
    };
    common::amqp::publish_and_confirm(&ch, "", &q, b"hello", persistent(1_700_000_000)).await;
    common::amqp::publish_and_confirm(&ch, "", &q, b"worlds!", persistent(1_700_000_100)).await;
    common::amqp::publish_and_confirm(&ch, "", &q, b"abc", BasicProperties::default()).await;

    let v = queue_when(&api, &q, 3, 0, 15).await;
    assert_eq!(v["message_bytes"], 15, "{v}");
    assert_eq!(v["message_bytes_ready"], 15, "{v}");
    assert_eq!(v["message_bytes_unacknowledged"], 0, "{v}");
    assert_eq!(v["message_bytes_ram"], 15, "{v}");
    assert_eq!(v["message_bytes_persistent"], 12, "{v}");
    assert_eq!(v["messages_persistent"], 2, "{v}");
    assert_eq!(v["messages_ram"], 3, "{v}");
    assert_eq!(v["head_message_timestamp"], 1_700_000_000u64, "{v}");
    assert_eq!(v["consumer_utilisation"], 0, "{v}");

    // The head taken unacknowledged: its bytes move, it stays persistent.
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    let v = queue_when(&api, &q, 3, 1, 15).await;
    assert_eq!(v["message_bytes"], 15, "{v}");
    assert_eq!(v["message_bytes_ready"], 10, "{v}");
    assert_eq!(v["message_bytes_unacknowledged"], 5, "{v}");
    assert_eq!(v["messages_persistent"], 2, "{v}");

    got.ack(BasicAckOptions::default()).await.unwrap();
    let v = queue_when(&api, &q, 2, 0, 10).await;
    assert_eq!(v["message_bytes"], 10, "{v}");
    assert_eq!(v["messages_persistent"], 1, "{v}");
    assert_eq!(v["message_bytes_persistent"], 7, "{v}");
    assert_eq!(v["head_message_timestamp"], 1_700_000_100u64, "{v}");

    // Left alone, the queue is idle since some moment, in RabbitMQ's format.
    let idle = common::wait_for("idle_since", Duration::from_secs(15), || async {
        let v = api.get(&format!("/api/queues/%2F/{q}")).await.json;
        v["idle_since"].as_str().map(str::to_string).ok_or(v)
    })
    .await;
    let format = regex::Regex::new(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$").unwrap();
    assert!(format.is_match(&idle), "{idle}");
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_transient_queue_counts_no_persistent_messages_and_an_empty_one_no_timestamp() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("mon-transient");
    common::amqp::declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let v = queue_when(&api, &q, 0, 0, 0).await;
    assert_eq!(v["head_message_timestamp"], serde_json::Value::Null, "{v}");
    common::amqp::publish_and_confirm(
        &ch,
        "",
        &q,
        b"hello",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    let v = queue_when(&api, &q, 1, 0, 5).await;
    assert_eq!(v["messages_persistent"], 0, "{v}");
    assert_eq!(v["message_bytes_persistent"], 0, "{v}");
    assert_eq!(v["message_bytes"], 5, "{v}");
    // No timestamp property: none shown.
    assert_eq!(v["head_message_timestamp"], serde_json::Value::Null, "{v}");
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

// ------------------------------------------------------------ rate history

/// Samples of `details`: (sample, timestamp), newest first.
fn series(details: &serde_json::Value) -> Vec<(u64, u64)> {
    details["samples"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["sample"].as_u64().unwrap(),
                        s["timestamp"].as_u64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `count` samples `incr_ms` apart, newest first (RabbitMQ sometimes
/// gives one fewer, its newest interval not yet closed).
fn assert_spaced(what: &str, samples: &[(u64, u64)], count: usize, incr_ms: u64) {
    assert!(
        (count - 1..=count).contains(&samples.len()),
        "{what}: {count} samples wanted: {samples:?}"
    );
    for pair in samples.windows(2) {
        assert_eq!(pair[0].1 - pair[1].1, incr_ms, "{what}: {samples:?}");
    }
    assert_eq!(
        samples[0].1 % incr_ms,
        0,
        "{what}: on incr boundaries: {samples:?}"
    );
}

#[tokio::test]
async fn queues_and_the_overview_give_rate_samples_for_the_age_and_increment_asked() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    // RabbitMQ samples every 5 s, the test broker every 0.1 s.
    let (age, incr) = if common::against_other_broker() {
        (10, 5)
    } else {
        (2, 1)
    };
    let count = (age / incr + 1) as usize;
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let q = unique("mon-history");
    common::amqp::declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for _ in 0..3 {
        common::amqp::publish_and_confirm(&ch, "", &q, b"x", BasicProperties::default()).await;
    }
    let path = format!(
        "/api/queues/%2F/{q}?lengths_age={age}&lengths_incr={incr}&msg_rates_age={age}&msg_rates_incr={incr}"
    );
    // Until the history reaches back `age` with the messages in it.
    let v = common::wait_for("a full history", Duration::from_secs(40), || async {
        let v = api.get(&path).await.json;
        let (lengths, publish) = (
            series(&v["messages_details"]),
            series(&v["message_stats"]["publish_details"]),
        );
        let full = |n: usize| n + 1 >= count;
        if full(lengths.len()) && full(publish.len()) && lengths.iter().all(|s| s.0 == 3) {
            Ok(v)
        } else {
            Err((lengths, publish))
        }
    })
    .await;
    let incr_ms = incr * 1000;
    assert_spaced("messages", &series(&v["messages_details"]), count, incr_ms);
    assert_spaced(
        "messages_ready",
        &series(&v["messages_ready_details"]),
        count,
        incr_ms,
    );
    assert_spaced(
        "publish",
        &series(&v["message_stats"]["publish_details"]),
        count,
        incr_ms,
    );
    assert_eq!(
        series(&v["message_stats"]["publish_details"])[0].0,
        3,
        "{v}"
    );
    assert_eq!(series(&v["messages_unacknowledged_details"])[0].0, 0, "{v}");
    let d = &v["messages_details"];
    assert_eq!(d["avg"], 3.0, "{d}");
    assert_eq!(d["avg_rate"], 0.0, "{d}");
    assert!(d["rate"].is_number(), "{d}");

    // Without the parameters: rates only.
    let v = api.get(&format!("/api/queues/%2F/{q}")).await.json;
    assert!(v["messages_details"].get("samples").is_none(), "{v}");
    assert!(v["messages_details"]["rate"].is_number(), "{v}");

    // The listing and the overview take them too.
    let listing = api
        .get(&format!(
            "/api/queues/%2F?lengths_age={age}&lengths_incr={incr}"
        ))
        .await
        .json;
    let listed = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == q.as_str())
        .unwrap();
    assert_spaced(
        "listed",
        &series(&listed["messages_details"]),
        count,
        incr * 1000,
    );
    let overview = api
        .get(&format!("/api/overview?lengths_age={age}&lengths_incr={incr}&msg_rates_age={age}&msg_rates_incr={incr}"))
        .await
        .json;
    let totals = series(&overview["queue_totals"]["messages_details"]);
    assert!(
        !totals.is_empty() && totals[0].1.is_multiple_of(incr_ms),
        "{overview}"
    );
    assert!(
        !series(&overview["message_stats"]["publish_details"]).is_empty(),
        "{overview}"
    );
    if !common::against_other_broker() {
        assert_eq!(totals[0].0, 3, "{overview}");
    }
    // Without the parameters the overview's lengths have rates, as RabbitMQ's.
    let overview = api.get("/api/overview").await.json;
    for length in ["messages", "messages_ready", "messages_unacknowledged"] {
        let details = &overview["queue_totals"][format!("{length}_details")];
        assert!(details["rate"].is_number(), "{overview}");
        assert!(details.get("samples").is_none(), "{overview}");
    }
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// A fresh queue given `n` confirmed messages on a confirm channel, then
/// two basic.gets: one without ack, one acknowledged.
async fn queue_after_two_gets(
    conn: &lapin::Connection,
    prefix: &str,
    n: usize,
) -> (lapin::Channel, String) {
    let ch = confirm_channel(conn).await;
    let q = unique(prefix);
    common::amqp::declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    for _ in 0..n {
        common::amqp::publish_and_confirm(&ch, "", &q, b"x", BasicProperties::default()).await;
    }
    for no_ack in [true, false] {
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack })
            .await
            .unwrap()
            .expect("a message");
        if !no_ack {
            got.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    (ch, q)
}

#[tokio::test]
async fn channels_show_rabbitmqs_message_stats() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let (ch, q) = queue_after_two_gets(&conn, "mon-channel", 3).await;
    // The channel's number in the connection's name: "… (1)".
    let expected = serde_json::json!({
        "publish": 3, "confirm": 3, "get_no_ack": 1, "get": 1, "deliver_get": 2, "ack": 1,
        "redeliver": 0, "drop_unroutable": 0, "return_unroutable": 0,
    });
    let stats = common::wait_for(
        "the channel's message_stats",
        Duration::from_secs(15),
        || async {
            let channels = api.get("/api/channels").await.json;
            let mine = channels
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["message_stats"]["publish"] == 3 && c["message_stats"]["ack"] == 1)
                .map(|c| c["message_stats"].clone());
            mine.ok_or(channels)
        },
    )
    .await;
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&stats[k], v, "{k}: {stats}");
    }
    // The queue goes (RabbitMQ is shared); the channel stayed open till here.
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// A queue's `message_stats` split `deliver_get` as RabbitMQ's do: by
/// consumer or basic.get, with or without acks, and empty gets.
#[tokio::test]
async fn queue_message_stats_split_deliveries_by_kind() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let (ch, q) = queue_after_two_gets(&conn, "mon-kinds", 4).await;
    // One consumer with acks, one without, one message each; their
    // channels stay open (RabbitMQ drops a closed channel's unsent stats).
    let mut open = Vec::new();
    for no_ack in [false, true] {
        let consumer_ch = conn.create_channel().await.unwrap();
        consumer_ch
            .basic_qos(1, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = consumer_ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(
            Duration::from_secs(5),
            futures_lite::StreamExt::next(&mut consumer),
        )
        .await
        .expect("a delivery")
        .expect("a delivery")
        .unwrap();
        // Cancelled before the ack: prefetch 1 lets no second one in.
        consumer_ch
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
            .unwrap();
        if !no_ack {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        open.push(consumer_ch);
    }
    let empty = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(empty.is_none(), "the queue is empty");
    // RabbitMQ 3.10 shows a queue's get_empty as 0 whatever happens;
    // Leveret counts them.
    let empty = if common::against_other_broker() { 0 } else { 1 };
    let expected = serde_json::json!({
        "deliver": 1, "deliver_no_ack": 1, "get": 1, "get_no_ack": 1, "get_empty": empty,
        "deliver_get": 4, "publish": 4, "ack": 2, "redeliver": 0,
    });
    let path = format!("/api/queues/%2F/{q}");
    let stats = common::wait_for(
        "the queue's message_stats",
        Duration::from_secs(15),
        || async {
            let stats = api.get(&path).await.json["message_stats"].clone();
            if stats["get_empty"] == empty && stats["deliver_get"] == 4 && stats["ack"] == 2 {
                Ok(stats)
            } else {
                Err(stats)
            }
        },
    )
    .await;
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&stats[k], v, "{k}: {stats}");
    }
    drop(open);
    api.delete(&path).await;
}

/// After a restart a durable queue's backlog counts as persistent at once,
/// and its bytes as it is read back; a durable priority queue counts its
/// persistent messages too. (Before: 0 persistent, and bytes floored at 0.)
#[tokio::test]
async fn persistent_counts_hold_across_a_restart_and_for_priority_queues() {
    if common::against_other_broker() {
        return;
    }
    let data = common::process::TempDir::new("mon-restart");
    let mut broker = common::process::BrokerProcess::start(data.path());
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut priority_args = FieldTable::default();
    priority_args.insert("x-max-priority".into(), 5u8.into());
    common::amqp::declare_queue(&ch, "mon-backlog", durable, FieldTable::default()).await;
    common::amqp::declare_queue(&ch, "mon-priority", durable, priority_args).await;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for q in ["mon-backlog", "mon-priority"] {
        for _ in 0..3 {
            common::amqp::publish_and_confirm(&ch, "", q, &[7; 100], persistent.clone()).await;
        }
        common::amqp::publish_and_confirm(&ch, "", q, &[7; 100], BasicProperties::default()).await;
    }
    let api = Api {
        addr: broker.mgmt_addr(),
        user: "guest".into(),
        password: "guest".into(),
    };
    let priority = api.get("/api/queues/%2F/mon-priority").await.json;
    assert_eq!(priority["messages_persistent"], 3, "{priority}");
    assert_eq!(priority["message_bytes_persistent"], 300, "{priority}");
    assert_eq!(priority["message_bytes_ready"], 400, "{priority}");
    drop(conn);

    broker.sigterm_and_wait();
    let broker = common::process::BrokerProcess::start(data.path());
    let api = Api {
        addr: broker.mgmt_addr(),
        ..api
    };
    let q = api.get("/api/queues/%2F/mon-backlog").await.json;
    assert_eq!(q["messages"], 3, "only persistent messages survive: {q}");
    assert_eq!(q["messages_persistent"], 3, "{q}");
    // One get reads the backlog back: the rest's bytes count again.
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get("mon-backlog".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    let q = api.get("/api/queues/%2F/mon-backlog").await.json;
    assert_eq!(q["messages_persistent"], 2, "{q}");
    assert_eq!(q["message_bytes_ready"], 200, "{q}");
    assert_eq!(q["message_bytes_persistent"], 200, "{q}");
}

/// An exchange's `message_stats` as RabbitMQ's: `publish_in` counts what
/// was published to it, `publish_out` the queue deliveries it made
/// (through an exchange-to-exchange binding too); an exchange only passed
/// through, or never used, shows none, and one that routed nothing no
/// `publish_out`.
#[tokio::test]
async fn exchanges_show_publish_in_and_publish_out() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = confirm_channel(&conn).await;
    let (x, inner, none) = (unique("mon-x"), unique("mon-x-inner"), unique("mon-x-none"));
    for name in [&x, &inner, &none] {
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    ch.exchange_bind(
        inner.as_str().into(),
        x.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut queues = Vec::new();
    for (i, source) in [&x, &x, &inner].into_iter().enumerate() {
        let q = unique(&format!("mon-x-q{i}"));
        common::amqp::declare_queue(
            &ch,
            &q,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        ch.queue_bind(
            q.as_str().into(),
            source.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        queues.push(q);
    }
    for _ in 0..3 {
        common::amqp::publish_and_confirm(&ch, &x, "", b"x", BasicProperties::default()).await;
    }
    for _ in 0..2 {
        common::amqp::publish_and_confirm(&ch, &none, "", b"x", BasicProperties::default()).await;
    }
    let stats_of = |name: &str| {
        let (api, path) = (api.clone(), format!("/api/exchanges/%2F/{name}"));
        async move { api.get(&path).await.json["message_stats"].clone() }
    };
    // RabbitMQ reports each count when its stats timer fires: wait for all.
    let (routed, unrouted) = common::wait_for(
        "the exchanges' message_stats",
        Duration::from_secs(15),
        || async {
            let (s, n) = (stats_of(&x).await, stats_of(&none).await);
            if s["publish_out"] == 9 && s["publish_in"] == 3 && n["publish_in"] == 2 {
                Ok((s, n))
            } else {
                Err((s, n))
            }
        },
    )
    .await;
    assert!(routed["publish_in_details"]["rate"].is_number(), "{routed}");
    assert!(unrouted.get("publish_out").is_none(), "{unrouted}");
    assert!(stats_of(&inner).await.is_null());
    for q in &queues {
        api.delete(&format!("/api/queues/%2F/{q}")).await;
    }
    for name in [&x, &inner, &none] {
        api.delete(&format!("/api/exchanges/%2F/{name}")).await;
    }
}

/// A consumer stuck on its work shows in the age of its oldest
/// unacknowledged delivery, per consumer and per queue (Leveret's fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_unacked_delivery_shows_its_age() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = common::http::Api::of(&broker).unwrap();
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = common::unique("stuck");
    ch.queue_declare(q.as_str().into(), Default::default(), Default::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        Default::default(),
        b"work",
        Default::default(),
    )
    .await
    .unwrap();
    let path = format!("/api/queues/%2F/{q}");
    assert!(api.get(&path).await.json["oldest_unacked_ms"].is_null());
    let mut consumer = common::amqp::consume(&ch, &q, "worker", false).await;
    let d = common::amqp::next(&mut consumer).await;
    // The age is the subject: it must grow while the delivery waits.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let json = api.get(&path).await.json;
    let age = json["oldest_unacked_ms"].as_u64().unwrap();
    assert!(age >= 300, "{json}");
    assert_eq!(json["consumer_details"][0]["oldest_unacked_ms"], age);
    d.ack(Default::default()).await.unwrap();
    common::eventually("the age gone with the ack", common::amqp::WAIT, || async {
        api.get(&path).await.json["oldest_unacked_ms"].is_null()
    })
    .await;
}
