//! The management HTTP API's object endpoints, pinned against RabbitMQ 3.10.8:
//! declaring and deleting queues and exchanges, publishing and getting
//! messages over HTTP, purging, bindings (with their `properties_key`s),
//! connections, channels and consumers (and closing a connection), nodes,
//! list pagination and columns, and the error bodies a tool sees.
//!
//! RabbitMQ's statistics (message counts, consumers, the connection and
//! channel lists) lag by up to ~5 s, so every read of them polls for up to
//! 8 s; Leveret answers at once, so the polling costs it nothing.
//!
//! Run against RabbitMQ with
//! `LEVERET_TEST_URI=amqp://guest:guest@127.0.0.1:5672/%2f LEVERET_TEST_MGMT=127.0.0.1:15672`.

use crate::common;

use base64::Engine;
use common::amqp::declare_queue;
use common::http::{Api, Reply};
use common::{unique, TestBroker};
use futures_lite::StreamExt;
use lapin::{options::*, types::FieldTable, BasicProperties, Channel, Connection};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long RabbitMQ may take to show a change in its statistics.
const STATS_LAG: Duration = Duration::from_secs(8);
const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------ helpers

/// Percent-encodes one path segment (everything but RFC 3986 unreserved).
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// GETs `path` until `pred` holds on the JSON body (status 200), for up to
/// [`STATS_LAG`]; returns that body, or panics with the last one.
async fn poll(api: &Api, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STATS_LAG;
    loop {
        let reply = api.get(path).await;
        if reply.status == 200 && pred(&reply.json) {
            return reply.json;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: GET {path} never matched; last {}: {}",
                reply.status, reply.text
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The item of a JSON list whose `key` is `value`.
fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

/// The `name`s of a JSON list, in order.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {list}"))
        .iter()
        .map(|x| x["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_error(reply: &Reply, status: u16, error: &str, reason: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(
        reply.json,
        json!({"error": error, "reason": reason}),
        "{}",
        reply.text
    );
}

/// RabbitMQ's 404 for an object (or vhost) in a GET/DELETE path.
fn assert_not_found(reply: &Reply) {
    assert_error(reply, 404, "Object Not Found", "Not Found");
}

/// One request with extra headers; returns the status, the response headers
/// (names lower-cased) and the body.
async fn send(
    api: &Api,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", api.user, api.password));
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {token}\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "PUT" || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read up to the end of the body by Content-Length: RabbitMQ keeps the
    // connection open after a 500 despite "Connection: close".
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            if length.is_some_and(|n| raw.len() >= end + 4 + n) {
                break;
            }
        }
        let mut buf = [0u8; 8192];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if header(&headers, "transfer-encoding") == Some("chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, headers, body)
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

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    declare_queue(ch, name, QueueDeclareOptions::default(), args).await
}

/// Publishes `bodies` to `queue` through the default exchange, confirmed.
async fn publish(conn: &Connection, queue: &str, bodies: &[&str]) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for body in bodies {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = ch.close(200, "bye".into()).await;
}

/// Publishes a string payload through the HTTP API.
async fn api_publish(api: &Api, vhost: &str, exchange: &str, key: &str, payload: &str) -> Reply {
    api.post(
        &format!("/api/exchanges/{}/{}/publish", enc(vhost), enc(exchange)),
        json!({"properties": {}, "routing_key": key, "payload": payload,
               "payload_encoding": "string"}),
    )
    .await
}

/// A management user (password "pw") who may configure and read
/// everything in `/` but write nothing.
async fn user_who_cannot_write(api: &Api, prefix: &str) -> String {
    let user = unique(prefix);
    let made = api
        .put(
            &format!("/api/users/{user}"),
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
    assert!(made.status == 201 || made.status == 204, "{}", made.text);
    let granted = api
        .put(
            &format!("/api/permissions/%2F/{user}"),
            json!({"configure": ".*", "write": "", "read": ".*"}),
        )
        .await;
    assert!(
        granted.status == 201 || granted.status == 204,
        "{}",
        granted.text
    );
    user
}

/// POST .../get with `count`, `ackmode` and encoding "auto".
async fn api_get(api: &Api, queue: &str, count: u32, ackmode: &str) -> Reply {
    api.post(
        &format!("/api/queues/%2F/{}/get", enc(queue)),
        json!({"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50000}),
    )
    .await
}

fn payloads(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply
        .json
        .as_array()
        .unwrap_or_else(|| panic!("a list: {}", reply.text))
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_string())
        .collect()
}

/// The ready count of a queue over AMQP (passive declare), at once.
async fn ready(conn: &Connection, queue: &str) -> u32 {
    common::amqp::count(conn, queue, WAIT).await
}

/// Waits until the ready count over AMQP is `n` (a requeue reaches a
/// RabbitMQ queue asynchronously).
async fn wait_ready(conn: &Connection, queue: &str, n: u32) {
    common::wait_for(&format!("{n} ready in {queue}"), WAIT, || async move {
        match ready(conn, queue).await {
            got if got == n => Ok(()),
            got => Err(got),
        }
    })
    .await
}

// ------------------------------------------------------------------ queues

#[tokio::test]
async fn put_queue_is_201_then_204_and_inequivalent_properties_are_400() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let q = unique("api-put-q");
    let path = format!("/api/queues/%2F/{q}");
    let body = json!({"durable": true, "auto_delete": false, "arguments": {"x-max-length": 10}});

    let created = api.put(&path, body.clone()).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.text, "");
    let again = api.put(&path, body).await;
    assert_eq!(again.status, 204, "{}", again.text);
    assert_eq!(again.text, "");

    let other_arg = api
        .put(
            &path,
            json!({"durable": true, "auto_delete": false, "arguments": {"x-max-length": 11}}),
        )
        .await;
    assert_error(
        &other_arg,
        400,
        "bad_request",
        &format!(
            "inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': received '11' but current is '10'"
        ),
    );
    let other_durable = api
        .put(
            &path,
            json!({"durable": false, "auto_delete": false, "arguments": {"x-max-length": 10}}),
        )
        .await;
    assert_error(
        &other_durable,
        400,
        "bad_request",
        &format!(
            "inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'false' but current is 'true'"
        ),
    );

    // The failed PUTs left the queue as it was.
    let shown = api.get(&path).await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json["name"], q.as_str());
    assert_eq!(shown.json["vhost"], "/");
    assert_eq!(shown.json["durable"], true);
    assert_eq!(shown.json["auto_delete"], false);
    assert_eq!(shown.json["exclusive"], false);
    assert_eq!(shown.json["type"], "classic");
    assert_eq!(shown.json["arguments"], json!({"x-max-length": 10}));

    assert_eq!(api.delete(&path).await.status, 204);
}

#[tokio::test]
async fn put_queue_defaults_to_non_durable_and_amq_names_are_refused() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let q = unique("api-defaults-q");
    let path = format!("/api/queues/%2F/{q}");
    assert_eq!(api.put(&path, json!({})).await.status, 201);
    let shown = api.get(&path).await;
    assert_eq!(shown.json["durable"], false, "{}", shown.text);
    assert_eq!(shown.json["auto_delete"], false);
    assert_eq!(shown.json["arguments"], json!({}));
    assert_eq!(api.delete(&path).await.status, 204);

    // The amq. prefix is reserved: RabbitMQ answers 401 (not 403).
    let reserved = api
        .put(&format!("/api/queues/%2F/amq.{q}"), json!({}))
        .await;
    assert_error(&reserved, 401, "not_authorised", "Access refused.");
}

#[tokio::test]
async fn put_queue_with_an_invalid_argument_is_400() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let q = unique("api-bad-arg");
    let reply = api
        .put(
            &format!("/api/queues/%2F/{q}"),
            json!({"durable": true, "auto_delete": false, "arguments": {"x-max-length": "abc"}}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!(
            "invalid arg 'x-max-length' for queue '{q}' in vhost '/': \"expected integer, got longstr\""
        ),
    );
    assert_not_found(&api.get(&format!("/api/queues/%2F/{q}")).await);
}

#[tokio::test]
async fn malformed_json_and_unknown_vhosts() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let q = unique("api-bad-json");
    let reply = api
        .request(
            "PUT",
            &format!("/api/queues/%2F/{q}"),
            Some("{\"durable\":true".into()),
        )
        .await;
    assert_error(&reply, 400, "bad_request", "not_json");

    // An unknown vhost: 404 "Object Not Found" on GET and DELETE, but PUT
    // says which object is missing.
    assert_not_found(&api.get("/api/queues/no-such-vhost").await);
    assert_not_found(&api.get("/api/queues/no-such-vhost/q").await);
    assert_not_found(&api.get("/api/exchanges/no-such-vhost/x").await);
    assert_not_found(&api.get("/api/bindings/no-such-vhost").await);
    assert_not_found(&api.delete("/api/queues/no-such-vhost/q").await);
    let put = api
        .put("/api/queues/no-such-vhost/q", json!({"durable": true}))
        .await;
    assert_error(&put, 404, "not_found", "vhost_not_found");
    let put = api
        .put("/api/exchanges/no-such-vhost/x", json!({"type": "direct"}))
        .await;
    assert_error(&put, 404, "not_found", "vhost_not_found");
}

#[tokio::test]
async fn queue_names_are_percent_decoded_and_limited_to_255_bytes() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    // Spaces, slashes and UTF-8 are percent-encoded in the path.
    let odd = format!("{} a/b é", unique("api-odd"));
    let path = format!("/api/queues/%2F/{}", enc(&odd));
    assert_eq!(api.put(&path, json!({})).await.status, 201);
    assert_eq!(api.get(&path).await.json["name"], odd.as_str());
    assert_eq!(ready(&conn, &odd).await, 0, "the same queue over AMQP");
    assert_eq!(api.delete(&path).await.status, 204);

    let longest = format!("{}-", unique("api-long"));
    let longest = format!("{longest}{}", "x".repeat(255 - longest.len()));
    let path = format!("/api/queues/%2F/{longest}");
    assert_eq!(api.put(&path, json!({})).await.status, 201);
    assert_eq!(api.delete(&path).await.status, 204);
    let reply = api
        .put(&format!("/api/queues/%2F/{longest}y"), json!({}))
        .await;
    // The reason ends with a newline.
    assert_error(
        &reply,
        400,
        "bad_request",
        "queue should be less than 255 bytes, actually was 256\n",
    );
    // No name at all is no resource.
    assert_eq!(api.put("/api/queues/%2F/", json!({})).await.status, 405);
}

#[tokio::test]
async fn delete_queue_is_204_and_404_and_honours_if_empty_and_if_unused() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();

    let q = unique("api-del-q");
    let path = format!("/api/queues/%2F/{q}");
    declare(&ch, &q, FieldTable::default()).await;
    publish(&conn, &q, &["m"]).await;
    let reply = api.delete(&format!("{path}?if-empty=true")).await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!("queue '{q}' in vhost '/' not empty"),
    );
    assert_eq!(ready(&conn, &q).await, 1, "the queue and its message stay");

    let busy = unique("api-del-busy");
    declare(&ch, &busy, FieldTable::default()).await;
    let _consumer = ch
        .basic_consume(
            busy.as_str().into(),
            "api-del-busy".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reply = api
        .delete(&format!("/api/queues/%2F/{busy}?if-unused=true"))
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!("queue '{busy}' in vhost '/' in use"),
    );

    // Without the conditions both go; an empty, unused queue goes with them.
    let idle = unique("api-del-idle");
    declare(&ch, &idle, FieldTable::default()).await;
    let reply = api
        .delete(&format!(
            "/api/queues/%2F/{idle}?if-empty=true&if-unused=true"
        ))
        .await;
    assert_eq!((reply.status, reply.text.as_str()), (204, ""));
    let reply = api.delete(&path).await;
    assert_eq!((reply.status, reply.text.as_str()), (204, ""));
    assert_eq!(
        api.delete(&format!("/api/queues/%2F/{busy}")).await.status,
        204
    );
    assert_not_found(&api.delete(&path).await);
    assert_not_found(&api.get(&path).await);
    let err = common::amqp::queue_count(&conn, &q, WAIT)
        .await
        .expect_err("the queue is gone");
    assert_eq!(common::amqp::reply_code(&err), Some(404));
}

// ------------------------------------------------------------------ exchanges

#[tokio::test]
async fn put_exchange_of_each_type_and_its_fields() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let base = unique("api-x");
    for kind in ["direct", "fanout", "topic", "headers"] {
        let path = format!("/api/exchanges/%2F/{base}-{kind}");
        let body = json!({"type": kind, "durable": true, "auto_delete": false,
                          "internal": false, "arguments": {}});
        let created = api.put(&path, body.clone()).await;
        assert_eq!((created.status, created.text.as_str()), (201, ""), "{kind}");
        assert_eq!(api.put(&path, body).await.status, 204, "{kind}");
        let shown = api.get(&path).await;
        assert_eq!(shown.status, 200);
        let x = &shown.json;
        assert_eq!(x["name"], format!("{base}-{kind}"));
        assert_eq!(x["vhost"], "/");
        assert_eq!(x["type"], kind);
        assert_eq!(x["durable"], true);
        assert_eq!(x["auto_delete"], false);
        assert_eq!(x["internal"], false);
        assert_eq!(x["arguments"], json!({}));
        let listed = api.get("/api/exchanges/%2F").await;
        let item = find(&listed.json, "name", &format!("{base}-{kind}")).expect("listed");
        assert_eq!(item["type"], kind);
    }

    // Internal, with arguments, and the type defaulting to direct.
    let special = format!("/api/exchanges/%2F/{base}-special");
    let reply = api
        .put(
            &special,
            json!({"type": "topic", "durable": false, "auto_delete": true, "internal": true,
                   "arguments": {"alternate-exchange": "ae"}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let x = api.get(&special).await.json;
    assert_eq!(
        (&x["durable"], &x["auto_delete"], &x["internal"]),
        (&json!(false), &json!(true), &json!(true))
    );
    assert_eq!(x["arguments"], json!({"alternate-exchange": "ae"}));
    let untyped = format!("/api/exchanges/%2F/{base}-untyped");
    assert_eq!(
        api.put(&untyped, json!({"durable": true})).await.status,
        201
    );
    assert_eq!(api.get(&untyped).await.json["type"], "direct");

    // Inequivalent redeclarations and an unknown type are 400s.
    let direct = format!("/api/exchanges/%2F/{base}-direct");
    let reply = api
        .put(&direct, json!({"type": "fanout", "durable": true}))
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!(
            "inequivalent arg 'type' for exchange '{base}-direct' in vhost '/': received 'fanout' but current is 'direct'"
        ),
    );
    let reply = api
        .put(&direct, json!({"type": "direct", "durable": false}))
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!(
            "inequivalent arg 'durable' for exchange '{base}-direct' in vhost '/': received 'false' but current is 'true'"
        ),
    );
    let reply = api
        .put(
            &format!("/api/exchanges/%2F/{base}-bad"),
            json!({"type": "nonsense", "durable": true}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "unknown exchange type 'nonsense'",
    );
    assert_not_found(&api.get(&format!("/api/exchanges/%2F/{base}-bad")).await);

    for suffix in ["direct", "fanout", "topic", "headers", "special", "untyped"] {
        let reply = api
            .delete(&format!("/api/exchanges/%2F/{base}-{suffix}"))
            .await;
        assert_eq!((reply.status, reply.text.as_str()), (204, ""), "{suffix}");
    }
    assert_not_found(&api.delete(&direct).await);
    assert_not_found(&api.get(&direct).await);
}

#[tokio::test]
async fn default_and_amq_exchanges_cannot_be_changed() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    // The default exchange is shown under the name amq.default.
    let shown = api.get("/api/exchanges/%2F/amq.default").await;
    assert_eq!(shown.status, 200);
    assert_eq!(shown.json["name"], "");
    assert_eq!(shown.json["type"], "direct");
    assert_eq!(shown.json["durable"], true);

    // RabbitMQ answers 401 not_authorised (not 403) for all of these.
    for path in [
        "/api/exchanges/%2F/amq.direct",
        "/api/exchanges/%2F/amq.default",
    ] {
        assert_error(
            &api.delete(path).await,
            401,
            "not_authorised",
            "Access refused.",
        );
    }
    let reply = api
        .put(
            &format!("/api/exchanges/%2F/amq.{}", unique("x")),
            json!({"type": "direct"}),
        )
        .await;
    assert_error(&reply, 401, "not_authorised", "Access refused.");
    assert_eq!(api.get("/api/exchanges/%2F/amq.direct").await.status, 200);
}

#[tokio::test]
async fn delete_exchange_if_unused_counts_only_bindings_from_it() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let src = unique("api-unused-src");
    let dst = unique("api-unused-dst");
    for x in [&src, &dst] {
        let reply = api
            .put(
                &format!("/api/exchanges/%2F/{x}"),
                json!({"type": "direct"}),
            )
            .await;
        assert_eq!(reply.status, 201);
    }
    let bound = api
        .post(
            &format!("/api/bindings/%2F/e/{src}/e/{dst}"),
            json!({"routing_key": "k", "arguments": {}}),
        )
        .await;
    assert_eq!(bound.status, 201, "{}", bound.text);
    let reply = api
        .delete(&format!("/api/exchanges/%2F/{src}?if-unused=true"))
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!("exchange '{src}' in vhost '/' in use"),
    );
    // Being a destination does not make an exchange "used"; deleting it
    // removes the binding.
    let reply = api
        .delete(&format!("/api/exchanges/%2F/{dst}?if-unused=true"))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
    let left = api
        .get(&format!("/api/exchanges/%2F/{src}/bindings/source"))
        .await;
    assert_eq!(left.json, json!([]));
    let reply = api
        .delete(&format!("/api/exchanges/%2F/{src}?if-unused=true"))
        .await;
    assert_eq!(reply.status, 204, "{}", reply.text);
}

// ------------------------------------------------------------------ publish / get / purge

#[tokio::test]
async fn publish_over_http_reports_routed_and_decodes_payloads() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("api-pub-q");
    let x = unique("api-pub-x");
    declare(&ch, &q, FieldTable::default()).await;
    assert_eq!(
        api.put(
            &format!("/api/exchanges/%2F/{x}"),
            json!({"type": "direct"})
        )
        .await
        .status,
        201
    );
    let bound = api
        .post(
            &format!("/api/bindings/%2F/e/{x}/q/{q}"),
            json!({"routing_key": "k", "arguments": {}}),
        )
        .await;
    assert_eq!(bound.status, 201);

    let reply = api_publish(&api, "/", &x, "k", "hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, json!({"routed": true}));
    let reply = api_publish(&api, "/", &x, "other", "lost").await;
    assert_eq!(reply.json, json!({"routed": false}));
    // The default exchange is addressed as amq.default.
    let reply = api_publish(&api, "/", "amq.default", &q, "direct").await;
    assert_eq!(reply.json, json!({"routed": true}));
    let reply = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {"content_type": "application/octet-stream",
                                  "delivery_mode": 2, "headers": {"h": "v"}},
                   "routing_key": q, "payload": "AAEC/w==", "payload_encoding": "base64"}),
        )
        .await;
    assert_eq!(reply.json, json!({"routed": true}), "{}", reply.text);

    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "api-pub".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = tokio::time::timeout(WAIT, consumer.next())
            .await
            .expect("delivery")
            .unwrap()
            .unwrap();
        got.push(d);
    }
    assert_eq!(got[0].data, b"hi");
    assert_eq!(got[0].exchange.as_str(), x);
    assert_eq!(got[0].routing_key.as_str(), "k");
    assert_eq!(got[1].data, b"direct");
    assert_eq!(got[1].exchange.as_str(), "");
    assert_eq!(got[2].data, [0u8, 1, 2, 255]);
    let props = &got[2].properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/octet-stream")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert!(props.headers().is_some());

    // Errors: a missing exchange is a 400 carrying the AMQP error, not a 404.
    let reply = api_publish(&api, "/", "no-such-exchange", "k", "x").await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "404 NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'",
    );
    let reply = api
        .post(
            &format!("/api/exchanges/%2F/{x}/publish"),
            json!({"properties": {}, "routing_key": "k", "payload": "x",
                   "payload_encoding": "nope"}),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json,
        json!({"error": "bad_request", "reason": ["unsupported_encoding", "nope"]})
    );
    let reply = api
        .post(
            &format!("/api/exchanges/%2F/{x}/publish"),
            json!({"properties": {}, "routing_key": "k", "payload": "!!!",
                   "payload_encoding": "base64"}),
        )
        .await;
    assert_eq!(
        reply.json,
        json!({"error": "bad_request", "reason": ["not_base64", "!!!"]})
    );
    let reply = api
        .post(
            &format!("/api/exchanges/%2F/{x}/publish"),
            json!({"properties": {}, "routing_key": "k", "payload": "x"}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "[{key_missing,payload_encoding}]",
    );

    api.delete(&format!("/api/exchanges/%2F/{x}")).await;
    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

#[tokio::test]
async fn get_over_http_returns_messages_and_honours_the_ackmode() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("api-get-q");
    declare(&ch, &q, FieldTable::default()).await;
    let reply = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {"content_type": "text/plain", "delivery_mode": 2,
                                  "priority": 3, "message_id": "m1", "correlation_id": "c1",
                                  "reply_to": "r", "expiration": "60000", "type": "t",
                                  "app_id": "a", "timestamp": 1700000000,
                                  "headers": {"n": 1, "s": "v", "b": true}},
                   "routing_key": q, "payload": "hello", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(reply.json, json!({"routed": true}));
    let reply = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {}, "routing_key": q, "payload": "AAEC/w==",
                   "payload_encoding": "base64"}),
        )
        .await;
    assert_eq!(reply.json, json!({"routed": true}));
    wait_ready(&conn, &q, 2).await;

    // ack_requeue_true: both come back in order, and stay in the queue.
    let reply = api_get(&api, &q, 5, "ack_requeue_true").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let msgs = reply.json.as_array().expect("a list");
    assert_eq!(msgs.len(), 2, "{}", reply.text);
    let first = &msgs[0];
    let mut keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "exchange",
            "message_count",
            "payload",
            "payload_bytes",
            "payload_encoding",
            "properties",
            "redelivered",
            "routing_key"
        ]
    );
    assert_eq!(first["payload"], "hello");
    assert_eq!(first["payload_encoding"], "string");
    assert_eq!(first["payload_bytes"], 5);
    assert_eq!(first["redelivered"], false);
    assert_eq!(first["exchange"], "");
    assert_eq!(first["routing_key"], q.as_str());
    assert_eq!(first["message_count"], 1, "messages left after this one");
    assert_eq!(
        first["properties"],
        json!({"content_type": "text/plain", "delivery_mode": 2, "priority": 3,
               "message_id": "m1", "correlation_id": "c1", "reply_to": "r",
               "expiration": "60000", "type": "t", "app_id": "a",
               "timestamp": 1700000000, "headers": {"n": 1, "s": "v", "b": true}})
    );
    let second = &msgs[1];
    // Not UTF-8, so "auto" encodes it as base64.
    assert_eq!(second["payload"], "AAEC/w==");
    assert_eq!(second["payload_encoding"], "base64");
    assert_eq!(second["payload_bytes"], 4);
    assert_eq!(second["message_count"], 0);
    // No properties at all: RabbitMQ writes an empty *list*, not an object.
    assert_eq!(second["properties"], json!([]));
    wait_ready(&conn, &q, 2).await;

    // They come back redelivered; "truncate" cuts the payload, not payload_bytes;
    // encoding "base64" forces base64.
    let reply = api
        .post(
            &format!("/api/queues/%2F/{q}/get"),
            json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "base64",
                   "truncate": 3}),
        )
        .await;
    let m = &reply.json[0];
    assert_eq!(m["redelivered"], true, "{}", reply.text);
    assert_eq!(m["payload"], "aGVs", "base64 of \"hel\"");
    assert_eq!(m["payload_encoding"], "base64");
    assert_eq!(m["payload_bytes"], 5);
    wait_ready(&conn, &q, 2).await;

    // reject_requeue_true keeps the message too.
    assert_eq!(
        payloads(&api_get(&api, &q, 1, "reject_requeue_true").await),
        ["hello"]
    );
    wait_ready(&conn, &q, 2).await;
    // ack_requeue_false removes what it returns; reject_requeue_false too.
    assert_eq!(
        payloads(&api_get(&api, &q, 1, "ack_requeue_false").await),
        ["hello"]
    );
    wait_ready(&conn, &q, 1).await;
    assert_eq!(
        payloads(&api_get(&api, &q, 1, "reject_requeue_false").await),
        ["AAEC/w=="]
    );
    wait_ready(&conn, &q, 0).await;
    let empty = api_get(&api, &q, 3, "ack_requeue_false").await;
    assert_eq!((empty.status, &empty.json), (200, &json!([])));

    // Errors.
    publish(&conn, &q, &["kept"]).await;
    let (status, _, text) = send(
        &api,
        "POST",
        &format!("/api/queues/%2F/{q}/get"),
        &[],
        Some(r#"{"count":1,"ackmode":"bogus","encoding":"auto"}"#),
    )
    .await;
    // RabbitMQ crashes on an unknown ackmode: 500 with an empty body (and it
    // keeps the HTTP connection open). A 400 is the sane answer; either way
    // nothing is taken.
    assert!(status == 500 || status == 400, "{status} {text}");
    let reply = api
        .post(
            &format!("/api/queues/%2F/{q}/get"),
            json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "bogus"}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "Unsupported encoding. Please use auto or base64.",
    );
    let reply = api
        .post(
            &format!("/api/queues/%2F/{q}/get"),
            json!({"count": 1, "encoding": "auto"}),
        )
        .await;
    assert_error(&reply, 400, "bad_request", "[{key_missing,ackmode}]");
    wait_ready(&conn, &q, 1).await;
    let reply = api_get(&api, "no-such-queue", 1, "ack_requeue_true").await;
    assert_error(
        &reply,
        404,
        "not_found",
        "NOT_FOUND - no queue 'no-such-queue' in vhost '/'",
    );

    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

#[tokio::test]
async fn delete_queue_contents_purges() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("api-purge");
    declare(&ch, &q, FieldTable::default()).await;
    publish(&conn, &q, &["a", "b", "c"]).await;
    let reply = api.delete(&format!("/api/queues/%2F/{q}/contents")).await;
    assert_eq!((reply.status, reply.text.as_str()), (204, ""));
    assert_eq!(ready(&conn, &q).await, 0);
    poll(&api, &format!("/api/queues/%2F/{q}"), "purged", |q| {
        q["messages"] == 0
    })
    .await;
    assert_not_found(&api.delete("/api/queues/%2F/no-such-queue/contents").await);
    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

// ------------------------------------------------------------------ bindings

#[tokio::test]
async fn bindings_are_created_listed_shown_and_deleted_by_properties_key() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let x = unique("api-bind-x");
    let x2 = unique("api-bind-x2");
    let q = unique("api-bind-q");
    assert_eq!(
        api.put(
            &format!("/api/exchanges/%2F/{x}"),
            json!({"type": "direct"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.put(
            &format!("/api/exchanges/%2F/{x2}"),
            json!({"type": "fanout"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.put(&format!("/api/queues/%2F/{q}"), json!({}))
            .await
            .status,
        201
    );

    // POST: 201, an empty body and a Location relative to the request:
    // "{destination}/{properties_key}", the key percent-encoded once more.
    let to_q = format!("/api/bindings/%2F/e/{x}/q/{q}");
    let mut locations = Vec::new();
    for body in [
        json!({"routing_key": "k", "arguments": {}}),
        json!({"routing_key": "", "arguments": {}}),
        json!({"routing_key": "k", "arguments": {"x-match": "any", "a": 1}}),
        json!({"routing_key": "a/b c", "arguments": {}}),
    ] {
        let (status, headers, text) = send(&api, "POST", &to_q, &[], Some(&body.to_string())).await;
        assert_eq!((status, text.as_str()), (201, ""), "{body}");
        locations.push(header(&headers, "location").expect("Location").to_string());
    }
    assert_eq!(locations[0], format!("{q}/k"));
    assert_eq!(locations[1], format!("{q}/~"));
    let hashed = locations[2]
        .strip_prefix(&format!("{q}/k~"))
        .unwrap_or_else(|| panic!("{}", locations[2]))
        .to_string();
    assert!(
        !hashed.is_empty()
            && hashed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "the arguments hash is base64url without padding: {hashed}"
    );
    assert_eq!(locations[3], format!("{q}/a%252Fb%2Bc"));
    // Binding the same thing twice is fine (and changes nothing).
    let again = api
        .post(&to_q, json!({"routing_key": "k", "arguments": {}}))
        .await;
    assert_eq!(again.status, 201);

    let list = api.get(&to_q).await;
    assert_eq!(list.status, 200);
    let mut keys: Vec<&str> = list
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["properties_key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    let args_key = format!("k~{hashed}");
    let mut want = vec!["~", "a%2Fb+c", "k", args_key.as_str()];
    want.sort_unstable();
    assert_eq!(keys, want, "{}", list.text);
    let with_args = find(&list.json, "properties_key", &args_key).unwrap();
    assert_eq!(
        with_args,
        &json!({"source": x, "vhost": "/", "destination": q, "destination_type": "queue",
                "routing_key": "k", "arguments": {"x-match": "any", "a": 1},
                "properties_key": args_key})
    );

    // One binding by its properties_key (percent-encoded as a path segment).
    let one = api.get(&format!("{to_q}/k")).await;
    assert_eq!(one.status, 200);
    assert_eq!(
        one.json,
        json!({"source": x, "vhost": "/", "destination": q, "destination_type": "queue",
               "routing_key": "k", "arguments": {}, "properties_key": "k"})
    );
    assert_eq!(api.get(&format!("{to_q}/~")).await.json["routing_key"], "");
    assert_eq!(
        api.get(&format!("{to_q}/{}", enc(&args_key))).await.json["arguments"],
        json!({"x-match": "any", "a": 1})
    );
    assert_eq!(
        api.get(&format!("{to_q}/{}", enc("a%2Fb+c"))).await.json["routing_key"],
        "a/b c"
    );
    assert_not_found(&api.get(&format!("{to_q}/no-such-key")).await);

    // Exchange to exchange.
    let to_x = format!("/api/bindings/%2F/e/{x}/e/{x2}");
    let (status, headers, _) = send(
        &api,
        "POST",
        &to_x,
        &[],
        Some(r#"{"routing_key":"e2e","arguments":{}}"#),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("{x2}/e2e").as_str())
    );
    let e2e = json!({"source": x, "vhost": "/", "destination": x2,
                     "destination_type": "exchange", "routing_key": "e2e",
                     "arguments": {}, "properties_key": "e2e"});
    assert_eq!(api.get(&to_x).await.json, json!([e2e.clone()]));
    assert_eq!(api.get(&format!("{to_x}/e2e")).await.json, e2e);

    // The views: by vhost, all, by queue (with the default exchange's
    // implicit binding first), by exchange as source and as destination.
    let in_vhost = api.get("/api/bindings/%2F").await;
    assert_eq!(in_vhost.status, 200);
    let mine = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|b| b["source"] == x.as_str())
            .count()
    };
    assert_eq!(mine(&in_vhost.json), 5);
    assert_eq!(mine(&api.get("/api/bindings").await.json), 5);
    let of_queue = api.get(&format!("/api/queues/%2F/{q}/bindings")).await;
    assert_eq!(of_queue.status, 200);
    let of_queue = of_queue.json.as_array().unwrap().clone();
    assert_eq!(of_queue.len(), 5, "{of_queue:?}");
    assert_eq!(
        of_queue[0],
        json!({"source": "", "vhost": "/", "destination": q, "destination_type": "queue",
               "routing_key": q, "arguments": {}, "properties_key": q})
    );
    let source = api
        .get(&format!("/api/exchanges/%2F/{x}/bindings/source"))
        .await
        .json;
    assert_eq!(source.as_array().unwrap().len(), 5);
    assert!(source.as_array().unwrap().contains(&e2e));
    let destination = api
        .get(&format!("/api/exchanges/%2F/{x2}/bindings/destination"))
        .await
        .json;
    assert_eq!(destination, json!([e2e]));
    assert_eq!(
        api.get(&format!("/api/exchanges/%2F/{x}/bindings/destination"))
            .await
            .json,
        json!([])
    );

    // DELETE by properties_key: 204, then 404.
    for key in ["k", "~", args_key.as_str(), "a%2Fb+c"] {
        let reply = api.delete(&format!("{to_q}/{}", enc(key))).await;
        assert_eq!((reply.status, reply.text.as_str()), (204, ""), "{key}");
    }
    assert_not_found(&api.delete(&format!("{to_q}/k")).await);
    assert_eq!(api.get(&to_q).await.json, json!([]));
    assert_eq!(api.delete(&format!("{to_x}/e2e")).await.status, 204);
    assert_eq!(api.get(&to_x).await.json, json!([]));

    api.delete(&format!("/api/exchanges/%2F/{x}")).await;
    api.delete(&format!("/api/exchanges/%2F/{x2}")).await;
    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

#[tokio::test]
async fn binding_errors() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let x = unique("api-binderr-x");
    let q = unique("api-binderr-q");
    assert_eq!(
        api.put(
            &format!("/api/exchanges/%2F/{x}"),
            json!({"type": "direct"})
        )
        .await
        .status,
        201
    );
    assert_eq!(
        api.put(&format!("/api/queues/%2F/{q}"), json!({}))
            .await
            .status,
        201
    );
    let reply = api
        .post(
            &format!("/api/bindings/%2F/e/no-such-x/q/{q}"),
            json!({"routing_key": "k"}),
        )
        .await;
    assert_error(
        &reply,
        404,
        "not_found",
        "no exchange 'no-such-x' in vhost '/'",
    );
    let reply = api
        .post(
            &format!("/api/bindings/%2F/e/{x}/q/no-such-q"),
            json!({"routing_key": "k"}),
        )
        .await;
    assert_error(
        &reply,
        404,
        "not_found",
        "no queue 'no-such-q' in vhost '/'",
    );
    let reply = api
        .post(
            &format!("/api/bindings/%2F/e/{x}/e/no-such-x"),
            json!({"routing_key": "k"}),
        )
        .await;
    assert_error(
        &reply,
        404,
        "not_found",
        "no exchange 'no-such-x' in vhost '/'",
    );
    // The default exchange's bindings cannot be made or removed.
    let reply = api
        .post(
            &format!("/api/bindings/%2F/e/amq.default/q/{q}"),
            json!({"routing_key": "zz"}),
        )
        .await;
    assert_error(&reply, 401, "not_authorised", "Access refused.");
    let reply = api
        .delete(&format!("/api/bindings/%2F/e/amq.default/q/{q}/{q}"))
        .await;
    assert_error(&reply, 401, "not_authorised", "Access refused.");
    // A body without routing_key binds with the empty key.
    let (status, headers, _) = send(
        &api,
        "POST",
        &format!("/api/bindings/%2F/e/{x}/q/{q}"),
        &[],
        Some("{}"),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        header(&headers, "location"),
        Some(format!("{q}/~").as_str())
    );

    api.delete(&format!("/api/exchanges/%2F/{x}")).await;
    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

// ------------------------------------------------------------------ connections, channels, consumers

/// Connects with `name` as the client-provided connection name.
async fn connect_named(broker: &TestBroker, name: &str) -> Connection {
    Connection::connect(
        &broker.uri,
        lapin::ConnectionProperties::default().with_connection_name(name.into()),
    )
    .await
    .expect("connect")
}

/// The connection object whose client-provided name is `name`, once listed.
async fn listed_connection(api: &Api, name: &str) -> Value {
    let list = poll(api, "/api/connections", "connection listed", |l| {
        l.as_array().is_some_and(|l| {
            l.iter()
                .any(|c| c["client_properties"]["connection_name"] == name)
        })
    })
    .await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_properties"]["connection_name"] == name)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn connections_channels_and_consumers_are_listed() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let label = unique("api-conn");
    let conn = connect_named(&broker, &label).await;
    let ch = conn.create_channel().await.unwrap();
    let confirm = conn.create_channel().await.unwrap();
    confirm
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("api-conn-q");
    declare(&ch, &q, FieldTable::default()).await;
    ch.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    let tag = unique("api-ctag");
    let _consumer = ch
        .basic_consume(
            q.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Two deliveries left unacknowledged.
    publish(&conn, &q, &["1", "2"]).await;

    let c = listed_connection(&api, &label).await;
    let name = c["name"].as_str().expect("name").to_string();
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    assert_eq!(c["state"], "running");
    assert_eq!(c["type"], "network");
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert_eq!(c["user_provided_name"], label.as_str());
    assert_eq!(c["peer_host"], "127.0.0.1");
    assert!(c["peer_port"].is_u64(), "{c}");
    assert!(c["port"].is_u64(), "{c}");
    assert!(c["connected_at"].is_u64(), "{c}");
    assert!(c["frame_max"].is_u64() && c["channel_max"].is_u64(), "{c}");
    assert!(c["client_properties"]["capabilities"].is_object(), "{c}");
    // "{peer_host}:{peer_port} -> {host}:{port}"
    assert_eq!(
        name,
        format!(
            "{}:{} -> {}:{}",
            c["peer_host"].as_str().unwrap(),
            c["peer_port"],
            c["host"].as_str().unwrap(),
            c["port"]
        )
    );
    // The channel count comes with the stats.
    let c = poll(
        &api,
        &format!("/api/connections/{}", enc(&name)),
        "channels",
        |c| c["channels"] == 2,
    )
    .await;
    assert_eq!(c["name"], name.as_str());
    assert_eq!(c["client_properties"]["connection_name"], label.as_str());

    // The connection's channels: "{connection name} ({number})".
    let channels = poll(
        &api,
        &format!("/api/connections/{}/channels", enc(&name)),
        "channels with their stats",
        |l| {
            l.as_array().is_some_and(|l| {
                l.len() >= 2
                    && l.iter()
                        .any(|c| c["consumer_count"] == 1 && c["messages_unacknowledged"] == 2)
            })
        },
    )
    .await;
    let consuming = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer_count"] == 1)
        .unwrap();
    assert_eq!(consuming["number"], ch.id());
    assert_eq!(consuming["name"], format!("{name} ({})", ch.id()));
    assert_eq!(consuming["prefetch_count"], 7);
    assert_eq!(consuming["global_prefetch_count"], 0);
    assert_eq!(consuming["confirm"], false);
    assert_eq!(consuming["transactional"], false);
    assert_eq!(consuming["user"], "guest");
    assert_eq!(consuming["vhost"], "/");
    assert_eq!(consuming["state"], "running");
    assert_eq!(
        consuming["connection_details"],
        json!({"name": name, "peer_host": c["peer_host"], "peer_port": c["peer_port"]})
    );
    let confirming = find(&channels, "name", &format!("{name} ({})", confirm.id()))
        .expect("the confirm channel");
    assert_eq!(confirming["confirm"], true);
    assert_eq!(confirming["consumer_count"], 0);

    // All channels, and one by name.
    let all = api.get("/api/channels").await;
    assert_eq!(all.status, 200);
    assert!(find(&all.json, "name", &format!("{name} ({})", ch.id())).is_some());
    let one = api
        .get(&format!(
            "/api/channels/{}",
            enc(&format!("{name} ({})", ch.id()))
        ))
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["consumer_count"], 1);
    assert_not_found(&api.get("/api/channels/no-such-channel").await);

    // Consumers, all and per vhost.
    for path in ["/api/consumers", "/api/consumers/%2F"] {
        let list = poll(&api, path, "consumer listed", |l| {
            find(l, "consumer_tag", &tag).is_some()
        })
        .await;
        let consumer = find(&list, "consumer_tag", &tag).unwrap();
        assert_eq!(consumer["queue"], json!({"name": q, "vhost": "/"}));
        assert_eq!(consumer["ack_required"], true);
        assert_eq!(consumer["exclusive"], false);
        assert_eq!(consumer["prefetch_count"], 7);
        assert_eq!(consumer["arguments"], json!({}));
        assert_eq!(consumer["active"], true);
        let details = &consumer["channel_details"];
        assert_eq!(details["name"], format!("{name} ({})", ch.id()));
        assert_eq!(details["number"], ch.id());
        assert_eq!(details["connection_name"], name.as_str());
        assert_eq!(details["peer_host"], c["peer_host"]);
        assert_eq!(details["peer_port"], c["peer_port"]);
        assert_eq!(details["user"], "guest");
    }
    assert_not_found(&api.get("/api/consumers/no-such-vhost").await);

    // The queue shows its consumer too.
    let queue = poll(
        &api,
        &format!("/api/queues/%2F/{q}"),
        "queue consumers",
        |q| q["consumers"] == 1 && q["messages_unacknowledged"] == 2,
    )
    .await;
    assert_eq!(queue["consumer_details"][0]["consumer_tag"], tag.as_str());
    assert_eq!(queue["messages_ready"], 0);
    assert_eq!(queue["messages"], 2);

    assert_not_found(&api.get("/api/connections/no-such-connection").await);
    let _ = conn.close(200, "bye".into()).await;
    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

/// Closes the connection through the API with `reason` (as X-Reason) and
/// returns what the client saw.
async fn force_close(api: &Api, broker: &TestBroker, reason: Option<&str>) -> lapin::Error {
    let label = unique("api-kill");
    let conn = connect_named(broker, &label).await;
    let _ch = conn.create_channel().await.unwrap();
    let mut events = conn.events_listener();
    let name = listed_connection(api, &label).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let headers: Vec<(&str, &str)> = reason.map(|r| ("X-Reason", r)).into_iter().collect();
    let (status, _, body) = send(
        api,
        "DELETE",
        &format!("/api/connections/{}", enc(&name)),
        &headers,
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (204, ""));
    let err = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(err) = event {
                return err;
            }
        }
        panic!("lapin's event stream ended without an error");
    })
    .await
    .expect("the client saw no close");
    assert!(!conn.status().connected());
    // Gone from the API (after the stats catch up), and a second DELETE is a 404.
    poll(api, "/api/connections", "connection gone", |l| {
        l.as_array()
            .is_some_and(|l| l.iter().all(|c| c["name"] != name.as_str()))
    })
    .await;
    assert_not_found(
        &api.delete(&format!("/api/connections/{}", enc(&name)))
            .await,
    );
    err
}

#[tokio::test]
async fn delete_connection_closes_it_with_320_and_the_x_reason() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let err = force_close(&api, &broker, Some("maintenance window")).await;
    assert_eq!(
        common::amqp::amqp_error(&err),
        Some((320, "CONNECTION_FORCED - maintenance window".into())),
        "{err}"
    );
}

#[tokio::test]
async fn delete_connection_without_a_reason_says_closed_via_management_plugin() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let err = force_close(&api, &broker, None).await;
    assert_eq!(
        common::amqp::amqp_error(&err),
        Some((
            320,
            "CONNECTION_FORCED - Closed via management plugin".into()
        )),
        "{err}"
    );
}

// ------------------------------------------------------------------ nodes

#[tokio::test]
async fn nodes_are_listed_with_their_resource_use() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let list = api.get("/api/nodes").await;
    assert_eq!(list.status, 200);
    let nodes = list.json.as_array().expect("a list");
    assert_eq!(nodes.len(), 1, "{}", list.text);
    let node = &nodes[0];
    let name = node["name"].as_str().expect("name");
    assert!(name.contains('@'), "{name}: an Erlang-style node name");
    assert_eq!(node["running"], true);
    assert_eq!(node["type"], "disc");
    assert_eq!(node["partitions"], json!([]));
    for field in [
        "mem_used",
        "mem_limit",
        "fd_used",
        "fd_total",
        "sockets_used",
        "sockets_total",
        "proc_used",
        "proc_total",
        "disk_free",
        "disk_free_limit",
        "uptime",
        "processors",
    ] {
        assert!(node[field].is_u64(), "{field}: {}", node[field]);
    }
    assert_eq!(node["mem_alarm"], false);
    assert_eq!(node["disk_free_alarm"], false);
    let one = api.get(&format!("/api/nodes/{}", enc(name))).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["name"], name);
    assert_eq!(one.json["running"], true);
}

// ------------------------------------------------------------------ pagination and columns

#[tokio::test]
async fn lists_paginate_filter_by_name_and_select_columns() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let prefix = unique("api-page");
    for i in 1..=3 {
        let reply = api
            .put(&format!("/api/queues/%2F/{prefix}-{i}"), json!({}))
            .await;
        assert_eq!(reply.status, 201);
    }
    let page1 = api
        .get(&format!(
            "/api/queues/%2F?page=1&page_size=2&name={prefix}&columns=name,durable"
        ))
        .await;
    assert_eq!(page1.status, 200, "{}", page1.text);
    let total = page1.json["total_count"].as_u64().expect("total_count");
    assert!(total >= 3);
    assert_eq!(
        page1.json,
        json!({"filtered_count": 3, "item_count": 2, "page": 1, "page_count": 2,
               "page_size": 2, "total_count": total,
               "items": [{"name": format!("{prefix}-1"), "durable": false},
                         {"name": format!("{prefix}-2"), "durable": false}]})
    );
    let page2 = api
        .get(&format!(
            "/api/queues/%2F?page=2&page_size=2&name={prefix}&columns=name"
        ))
        .await;
    assert_eq!(
        page2.json["items"],
        json!([{"name": format!("{prefix}-3")}])
    );
    assert_eq!(page2.json["item_count"], 1);
    assert_eq!(page2.json["page"], 2);

    // The name filter is a case-insensitive substring, or a regex with use_regex.
    let upper = api
        .get(&format!(
            "/api/queues/%2F?page=1&name={}&columns=name",
            enc(&format!("{}-2", prefix.to_uppercase()))
        ))
        .await;
    assert_eq!(
        upper.json["items"],
        json!([{"name": format!("{prefix}-2")}])
    );
    assert_eq!(upper.json["page_size"], 100, "the default page size");
    let regex = api
        .get(&format!(
            "/api/queues/%2F?page=1&page_size=10&name={}&use_regex=true&columns=name",
            enc(&format!("^{prefix}-[23]$"))
        ))
        .await;
    assert_eq!(
        names(&regex.json["items"]),
        [format!("{prefix}-2"), format!("{prefix}-3")]
    );
    // sort / sort_reverse.
    let reversed = api
        .get(&format!(
            "/api/queues/%2F?page=1&page_size=10&name={prefix}&columns=name&sort=name&sort_reverse=true"
        ))
        .await;
    assert_eq!(
        names(&reversed.json["items"]),
        [
            format!("{prefix}-3"),
            format!("{prefix}-2"),
            format!("{prefix}-1")
        ]
    );
    // Nothing matches: page 1 is an empty page, page 2 is out of range.
    let none = api
        .get("/api/queues/%2F?page=1&page_size=5&name=no-such-queue-zzz")
        .await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json["items"], json!([]));
    assert_eq!(none.json["filtered_count"], 0);
    assert_eq!(none.json["page_count"], 0);

    // columns without paging: a plain list with only those keys.
    let plain = api.get("/api/queues/%2F?columns=name,durable").await;
    assert_eq!(plain.status, 200);
    let mine = plain
        .json
        .as_array()
        .expect("a plain list")
        .iter()
        .find(|q| q["name"] == format!("{prefix}-1"))
        .expect("listed");
    assert_eq!(
        mine,
        &json!({"name": format!("{prefix}-1"), "durable": false})
    );

    // Exchanges paginate the same way.
    let xs = api
        .get("/api/exchanges/%2F?page=1&page_size=1&name=amq.topic&columns=name,type")
        .await;
    assert_eq!(
        xs.json["items"],
        json!([{"name": "amq.topic", "type": "topic"}])
    );

    for i in 1..=3 {
        api.delete(&format!("/api/queues/%2F/{prefix}-{i}")).await;
    }
}

#[tokio::test]
async fn bad_pagination_parameters_are_400() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let q = unique("api-badpage");
    assert_eq!(
        api.put(&format!("/api/queues/%2F/{q}"), json!({}))
            .await
            .status,
        201
    );
    let reply = api.get("/api/queues/%2F?page=0&page_size=2").await;
    assert_error(
        &reply,
        400,
        "invalid_pagination_parameters",
        "Invalid pagination parameters: page number 0, page size 2",
    );
    let reply = api.get("/api/queues/%2F?page=1&page_size=501").await;
    assert_error(
        &reply,
        400,
        "invalid_pagination_parameters",
        "Invalid pagination parameters: page number 1, page size 501",
    );
    let reply = api.get("/api/queues/%2F?page=abc").await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "Pagination parameters are invalid",
    );
    let reply = api
        .get(&format!("/api/queues/%2F?page=3&page_size=1&name={q}"))
        .await;
    assert_error(
        &reply,
        400,
        "page_out_of_range",
        "Page out of range, page: 3 page size: 1, len: 1",
    );
    api.delete(&format!("/api/queues/%2F/{q}")).await;
}

// ------------------------------------------------------------------ statistics

#[tokio::test]
async fn queue_statistics_after_traffic() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("api-stats");
    declare(&ch, &q, FieldTable::default()).await;
    publish(&conn, &q, &["1", "2", "3"]).await;

    // get + ack; get + reject(requeue); get (the redelivery) + ack; and one
    // get left unacknowledged.
    let get = || async {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(m) = ch
                .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
            {
                return m;
            }
            assert!(Instant::now() < deadline, "no message");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let m = get().await;
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let m = get().await;
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let m = get().await;
    assert!(m.delivery.redelivered);
    m.delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let _held = get().await;

    let path = format!("/api/queues/%2F/{q}");
    let queue = poll(&api, &path, "queue statistics", |q| {
        let s = &q["message_stats"];
        q["messages"] == 1
            && q["messages_unacknowledged"] == 1
            && s["publish"] == 3
            && s["ack"] == 2
            && s["redeliver"] == 1
            && s["get"] == 4
            && s["deliver_get"] == 4
    })
    .await;
    assert_eq!(queue["messages_ready"], 0);
    assert_eq!(queue["consumers"], 0);
    assert_eq!(queue["state"], "running");
    assert!(queue["memory"].is_u64(), "{}", queue["memory"]);
    let stats = &queue["message_stats"];
    for counter in ["publish", "deliver_get", "ack", "redeliver", "get"] {
        assert!(
            stats[format!("{counter}_details")]["rate"].is_number(),
            "{counter}_details.rate in {stats}"
        );
    }
    for gauge in ["messages", "messages_ready", "messages_unacknowledged"] {
        assert!(
            queue[format!("{gauge}_details")]["rate"].is_number(),
            "{gauge}_details.rate"
        );
    }
    let _ = conn.close(200, "bye".into()).await;
    poll(&api, &path, "requeued on close", |q| {
        q["messages_ready"] == 1 && q["messages_unacknowledged"] == 0
    })
    .await;
    api.delete(&path).await;
}

/// HTTP publish goes through the same checks as basic.publish (RabbitMQ's
/// goes through a channel): each refusal is a 400 carrying the AMQP error
/// the channel would have closed with, and CC/BCC route as over AMQP.
#[tokio::test]
async fn http_publish_applies_the_rules_of_basic_publish() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let (q, cc, bcc) = (unique("pub-q"), unique("pub-cc"), unique("pub-bcc"));
    for name in [&q, &cc, &bcc] {
        declare(&ch, name, FieldTable::default()).await;
    }
    let post = |properties: Value, exchange: &str| {
        let path = format!("/api/exchanges/%2F/{}/publish", enc(exchange));
        let body = json!({"properties": properties, "routing_key": q, "payload": "p",
                          "payload_encoding": "string"});
        let api = &api;
        async move { api.post(&path, body).await }
    };

    let reply = post(json!({"user_id": "bob"}), "amq.default").await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "406 PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
    );
    let reply = post(json!({"reply_to": "amq.rabbitmq.reply-to"}), "amq.default").await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "406 PRECONDITION_FAILED - fast reply consumer does not exist",
    );
    let reply = post(json!({"expiration": "abc"}), "amq.default").await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "406 PRECONDITION_FAILED - invalid expiration 'abc': no_integer",
    );
    let internal = unique("pub-internal");
    let made = api
        .put(
            &format!("/api/exchanges/%2F/{internal}"),
            json!({"type": "fanout", "internal": true}),
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let reply = post(json!({}), &internal).await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!(
            "403 ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
        ),
    );

    // A user without write permission is refused as a channel refuses it.
    let user = user_who_cannot_write(&api, "pub-user").await;
    let reply = api_publish(&api.as_user(&user, "pw"), "/", "amq.default", &q, "x").await;
    assert_error(
        &reply,
        400,
        "bad_request",
        &format!(
            "403 ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user '{user}'"
        ),
    );

    // CC and BCC add routing keys; BCC is removed before delivery.
    let reply = post(
        json!({"headers": {"CC": [cc], "BCC": [bcc]}, "delivery_mode": 2}),
        "amq.default",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json, json!({"routed": true}));
    for name in [&q, &cc, &bcc] {
        let got = ch
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name} got the message"));
        let headers = got
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(headers.inner().contains_key("CC"), "{name}: CC is kept");
        assert!(
            !headers.inner().contains_key("BCC"),
            "{name}: BCC is removed"
        );
    }
    // Only what was published, nothing was left behind by the refusals.
    for name in [&q, &cc, &bcc] {
        let left = ch
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        assert!(left.is_none(), "{name} holds nothing more");
    }
    api.delete(&format!("/api/users/{user}")).await;
    api.delete(&format!("/api/exchanges/%2F/{internal}")).await;
    for name in [&q, &cc, &bcc] {
        api.delete(&format!("/api/queues/%2F/{}", enc(name))).await;
    }
}

/// A message over max_message_size is refused over HTTP as over AMQP.
#[tokio::test]
async fn http_publish_over_the_size_limit_is_refused() {
    if common::against_other_broker() {
        return; // RabbitMQ's limit is 128 MiB; the test sets a small one.
    }
    let mut config = leveret::config::Config::default();
    config.limits.max_message_size = 16;
    let broker = TestBroker::start_with(config).await;
    let Some(api) = Api::of(&broker) else { return };
    let reply = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {}, "routing_key": "q", "payload": "x".repeat(17),
                   "payload_encoding": "string"}),
        )
        .await;
    assert_error(
        &reply,
        400,
        "bad_request",
        "406 PRECONDITION_FAILED - message size 17 is larger than configured max size 16",
    );
    // A persistent message for a durable queue is answered once on disk.
    let made = api
        .put("/api/queues/%2F/http-durable", json!({"durable": true}))
        .await;
    assert_eq!(made.status, 201, "{}", made.text);
    let reply = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {"delivery_mode": 2}, "routing_key": "http-durable",
                   "payload": "kept", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(reply.json, json!({"routed": true}), "{}", reply.text);
    let reply = api_get(&api, "http-durable", 1, "ack_requeue_false").await;
    assert_eq!(payloads(&reply), ["kept"]);
}

/// A queue's publish rate shows in the API while messages come in; the
/// tests sample every 100 ms (`collect_statistics_interval_ms`), RabbitMQ
/// every 5 s.
#[tokio::test]
async fn queue_rates_show_while_messages_come_in() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("rates-q");
    declare(&ch, &q, FieldTable::default()).await;
    let publishing = {
        let ch = conn.create_channel().await.unwrap();
        let q = q.clone();
        tokio::spawn(async move {
            loop {
                let sent = ch
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        BasicPublishOptions::default(),
                        b"tick",
                        BasicProperties::default(),
                    )
                    .await;
                if sent.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let path = format!("/api/queues/%2F/{}", enc(&q));
    let queue = poll(&api, &path, "a publish rate above 0", |v| {
        v["message_stats"]["publish_details"]["rate"]
            .as_f64()
            .is_some_and(|r| r > 0.0)
    })
    .await;
    assert!(queue["messages"].as_u64().unwrap_or(0) > 0, "{queue}");
    publishing.abort();
    api.delete(&path).await;
}

/// Declaring over HTTP applies queue.declare's and exchange.declare's
/// extra rules: a dead-letter exchange (or an alternate exchange) needs
/// write on it, as RabbitMQ's API (through a channel) does.
#[tokio::test]
async fn http_declare_needs_write_on_the_dead_letter_and_alternate_exchanges() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let user = user_who_cannot_write(&api, "dlx-user").await;
    let as_user = api.as_user(&user, "pw");
    let (q, plain, x) = (unique("dlx-q"), unique("plain-q"), unique("ae-x"));

    let reply = as_user
        .put(
            &format!("/api/queues/%2F/{q}"),
            json!({"durable": false, "arguments": {"x-dead-letter-exchange": "amq.fanout"}}),
        )
        .await;
    assert_error(&reply, 401, "not_authorised", "Access refused.");
    let reply = as_user
        .put(
            &format!("/api/exchanges/%2F/{x}"),
            json!({"type": "fanout", "arguments": {"alternate-exchange": "amq.fanout"}}),
        )
        .await;
    assert_error(&reply, 401, "not_authorised", "Access refused.");
    // Without them, configure is enough.
    let reply = as_user
        .put(
            &format!("/api/queues/%2F/{plain}"),
            json!({"durable": false}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(api.get(&format!("/api/queues/%2F/{q}")).await.status, 404);
    assert_eq!(
        api.get(&format!("/api/exchanges/%2F/{x}")).await.status,
        404
    );
    api.delete(&format!("/api/queues/%2F/{plain}")).await;
    api.delete(&format!("/api/users/{user}")).await;
}
