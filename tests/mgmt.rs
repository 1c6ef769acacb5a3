//! The management HTTP API over real HTTP against the in-process broker:
//! status codes, JSON shapes and basic auth, as RabbitMQ's management plugin.

mod common;

use common::{unique, TestBroker};
use lapin::{options::*, types::FieldTable, BasicProperties};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET; returns the status code and the JSON body.
async fn get(addr: SocketAddr, path: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
    use base64::Engine;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let authorization = auth
        .map(|(u, p)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            format!("Authorization: Basic {token}\r\n")
        })
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{authorization}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

fn mgmt(broker: &TestBroker) -> Option<SocketAddr> {
    broker.mgmt_addr
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
    for auth in [None, Some(("guest", "wrong")), Some(("nobody", "guest"))] {
        let (status, body) = get(addr, "/api/overview", auth).await;
        assert_eq!(status, 401, "{auth:?}");
        assert_eq!(body["error"], "not_authorized");
    }
}

#[tokio::test]
async fn whoami_names_the_user_and_its_tags() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
    let (status, body) = get(addr, "/api/whoami", GUEST).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], "guest");
    assert_eq!(body["tags"], serde_json::json!(["administrator"]));
}

#[tokio::test]
async fn overview_counts_queues_and_messages() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
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
    let (status, body) = get(addr, "/api/overview", GUEST).await;
    assert_eq!(status, 200);
    assert_eq!(body["product_name"], "Leveret");
    assert_eq!(body["object_totals"]["queues"], 1);
    assert_eq!(body["object_totals"]["connections"], 1);
    assert_eq!(body["queue_totals"]["messages_ready"], 2);
    assert_eq!(body["queue_totals"]["messages"], 2);
}

#[tokio::test]
async fn vhosts_are_listed() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
    let (status, body) = get(addr, "/api/vhosts", GUEST).await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["name"], "/");
}

#[tokio::test]
async fn alarm_check_is_ok_without_alarms() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
    let (status, body) = get(addr, "/api/health/checks/alarms", GUEST).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn aliveness_test_round_trips_a_message_in_the_vhost() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
    let (status, body) = get(addr, "/api/aliveness-test/%2F", GUEST).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, _) = get(addr, "/api/aliveness-test/no-such-vhost", GUEST).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn queues_are_listed_and_shown_with_counts_and_arguments() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
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
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (status, body) = get(addr, &format!("/api/queues/%2F/{q}"), GUEST).await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], q.as_str());
    assert_eq!(body["vhost"], "/");
    assert_eq!(body["durable"], true);
    assert_eq!(body["type"], "classic");
    assert_eq!(body["arguments"]["x-max-length"], 10);
    assert_eq!(body["messages_ready"], 1);
    assert_eq!(body["messages"], 1);
    assert_eq!(body["consumers"], 0);

    let (status, list) = get(addr, "/api/queues", GUEST).await;
    assert_eq!(status, 200);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == q.as_str()));
    let (status, _) = get(addr, "/api/queues/%2F/no-such-queue", GUEST).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn exchanges_are_listed_and_shown() {
    let broker = TestBroker::start().await;
    let Some(addr) = mgmt(&broker) else { return };
    let (status, body) = get(addr, "/api/exchanges/%2F/amq.topic", GUEST).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "topic");
    assert_eq!(body["durable"], true);
    let (status, list) = get(addr, "/api/exchanges/%2F", GUEST).await;
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
    let (status, _) = get(addr, "/api/exchanges/no-such-vhost", GUEST).await;
    assert_eq!(status, 404);
}
