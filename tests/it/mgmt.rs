//! The management HTTP API over real HTTP against the in-process broker:
//! status codes, JSON shapes and basic auth, as RabbitMQ's management plugin.

use crate::common;

use common::http::{raw_request, Api};
use common::{unique, TestBroker};
use lapin::{options::*, types::FieldTable, BasicProperties};
use serde_json::Value;
use std::time::Duration;

/// GET as guest: the status code and the JSON body.
async fn get(api: &Api, path: &str) -> (u16, Value) {
    let reply = api.get(path).await;
    (reply.status, reply.json)
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let anonymous = raw_request(api.addr, "GET", "/api/overview", None, None).await;
    assert_eq!(anonymous.status, 401);
    for (user, password) in [("guest", "wrong"), ("nobody", "guest")] {
        let reply = api.as_user(user, password).get("/api/overview").await;
        assert_eq!(reply.status, 401, "{user}:{password}");
        assert_eq!(reply.json["error"], "not_authorized");
    }
}

#[tokio::test]
async fn whoami_names_the_user_and_its_tags() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (status, body) = get(&api, "/api/whoami").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "guest");
    assert_eq!(body["tags"], serde_json::json!(["administrator"]));
}

#[tokio::test]
async fn overview_counts_queues_and_messages() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("overview");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..2 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let (status, body) = get(&api, "/api/overview").await;
    assert_eq!(status, 200);
    if common::against_other_broker() {
        return; // RabbitMQ's statistics lag by up to 5 s
    }
    assert_eq!(body["product_name"], "Leveret");
    assert_eq!(body["object_totals"]["queues"], 1);
    assert_eq!(body["object_totals"]["connections"], 1);
    assert_eq!(body["queue_totals"]["messages_ready"], 2);
    assert_eq!(body["queue_totals"]["messages"], 2);
}

#[tokio::test]
async fn vhosts_are_listed() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (status, body) = get(&api, "/api/vhosts").await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["name"], "/");
}

#[tokio::test]
async fn alarm_check_is_ok_without_alarms() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (status, body) = get(&api, "/api/health/checks/alarms").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn aliveness_test_round_trips_a_message_in_the_vhost() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (status, body) = get(&api, "/api/aliveness-test/%2F").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = get(&api, "/api/aliveness-test/no-such-vhost").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn queues_are_listed_and_shown_with_counts_and_arguments() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("shown");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(10));
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        q.as_str().into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let path = format!("/api/queues/%2F/{q}");
    common::eventually(
        "the API to count the message",
        Duration::from_secs(5),
        || async { get(&api, &path).await.1["messages"] == 1 },
    )
    .await;

    let (status, body) = get(&api, &path).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], q.as_str());
    assert_eq!(body["vhost"], "/");
    assert_eq!(body["durable"], true);
    assert_eq!(body["type"], "classic");
    assert_eq!(body["arguments"]["x-max-length"], 10);
    assert_eq!(body["messages_ready"], 1);
    assert_eq!(body["messages"], 1);
    assert_eq!(body["consumers"], 0);

    let (status, list) = get(&api, "/api/queues").await;
    assert_eq!(status, 200);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == q.as_str()));
    let (status, _) = get(&api, "/api/queues/%2F/no-such-queue").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn exchanges_are_listed_and_shown() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (status, body) = get(&api, "/api/exchanges/%2F/amq.topic").await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "topic");
    assert_eq!(body["durable"], true);
    let (status, list) = get(&api, "/api/exchanges/%2F").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in [
        "",
        "amq.direct",
        "amq.fanout",
        "amq.headers",
        "amq.match",
        "amq.topic",
    ] {
        assert!(names.contains(&name), "{name:?} in {names:?}");
    }
    let (status, _) = get(&api, "/api/exchanges/no-such-vhost").await;
    assert_eq!(status, 404);
}

/// A sample's value in Prometheus text, by metric name and label text.
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_need_no_credentials_and_count_per_queue() {
    let broker = TestBroker::start().await;
    if common::against_other_broker() {
        return; // RabbitMQ serves these on another port, with a plugin
    }
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("metrics");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.unwrap();

    let reply = raw_request(api.addr, "GET", "/metrics", None, None).await;
    assert_eq!(reply.status, 200);
    let text = reply.text;
    let labels = format!("vhost=\"/\",queue=\"{q}\"");
    assert_eq!(
        metric(&text, "rabbitmq_queue_messages_ready", &labels),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "rabbitmq_queue_messages_unacked", &labels),
        Some(0.0)
    );
    assert_eq!(metric(&text, "rabbitmq_queue_messages", &labels), Some(2.0));
    assert_eq!(
        metric(&text, "rabbitmq_queue_consumers", &labels),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "rabbitmq_queue_messages_published_total", &labels),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "leveret_queue_messages_delivered_total", &labels),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "leveret_queue_messages_acked_total", &labels),
        Some(1.0)
    );
    assert_eq!(metric(&text, "rabbitmq_connections", ""), Some(1.0));
    assert_eq!(metric(&text, "rabbitmq_channels", ""), Some(1.0));
    assert_eq!(
        metric(&text, "rabbitmq_alarms_memory_used_watermark", ""),
        Some(0.0)
    );
    assert!(metric(&text, "rabbitmq_process_resident_memory_bytes", "").unwrap() > 0.0);
    assert!(metric(&text, "rabbitmq_disk_space_available_bytes", "").unwrap() > 0.0);
    assert!(text.contains("# TYPE rabbitmq_queue_messages_published_total counter"));
}
