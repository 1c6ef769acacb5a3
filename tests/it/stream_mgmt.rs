//! Stream protocol clients in the management API, `/metrics` and `leveret
//! ctl`, as RabbitMQ's `rabbitmq_stream_management` shows them: connections
//! in `/api/connections` and `/api/stream/connections`, closed by DELETE or
//! when their user or vhost goes, publishers' counts, consumers' offsets
//! and lag.
//!
//! With `LEVERET_TEST_URI`, `LEVERET_TEST_MGMT=127.0.0.1:15672` and
//! `LEVERET_TEST_STREAM=127.0.0.1:5552` these run against RabbitMQ (with
//! `rabbitmq-plugins enable rabbitmq_stream_management`), whose statistics
//! lag a few seconds: every look polls.

use crate::common;
use crate::stream_protocol::run_script;
use common::http::Api;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// RabbitMQ refreshes its statistics every 5 s.
const SETTLE: Duration = Duration::from_secs(20);

const DECLARE_PUBLISHER: u16 = 1;
const PUBLISH: u16 = 2;
const PUBLISH_CONFIRM: u16 = 3;
const SUBSCRIBE: u16 = 7;
const DELIVER: u16 = 8;
const CREDIT: u16 = 9;
const CONSUMER_UPDATE: u16 = 26;
const CREATE: u16 = 13;
const DELETE: u16 = 14;
const PEER_PROPERTIES: u16 = 17;
const SASL_HANDSHAKE: u16 = 18;
const SASL_AUTHENTICATE: u16 = 19;
const TUNE: u16 = 20;
const OPEN: u16 = 21;
const CLOSE: u16 = 22;
const HEARTBEAT: u16 = 23;
const RESPONSE: u16 = 0x8000;
const OK: u16 = 1;
const STREAM_DOES_NOT_EXIST: u16 = 2;

/// A frame being built: `key ‖ version ‖ fields`.
struct F(Vec<u8>);

impl F {
    fn new(key: u16) -> F {
        let mut v = key.to_be_bytes().to_vec();
        v.extend_from_slice(&1u16.to_be_bytes());
        F(v)
    }
    fn u8(mut self, v: u8) -> F {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> F {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> F {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> F {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn string(mut self, s: &str) -> F {
        self.0.extend_from_slice(&(s.len() as u16).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> F {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
}

/// A frame received: its key and what follows the version.
struct Got {
    key: u16,
    body: Vec<u8>,
}

impl Got {
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.body[at], self.body[at + 1]])
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.body[at..at + 4].try_into().unwrap())
    }
    /// A response's code, after its correlation id.
    fn code(&self) -> u16 {
        self.u16_at(4)
    }
}

/// How the client saw its connection end.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The socket closed with no Close command first (RabbitMQ's way when
    /// a connection is closed from outside).
    SocketClosed,
    /// The broker sent Close with this code.
    CloseCommand(u16),
    StillOpen,
}

/// A raw stream protocol client, open in a vhost.
pub(crate) struct Client {
    socket: TcpStream,
    corr: u32,
}

impl Client {
    /// Opens a connection as `user` in `vhost`, naming itself `name`
    /// (`connection_name`, shown as `user_provided_name`).
    async fn open(
        broker: &common::TestBroker,
        user: &str,
        password: &str,
        vhost: &str,
        name: &str,
    ) -> Client {
        let socket = TcpStream::connect(broker.stream_addr.expect("a stream port"))
            .await
            .unwrap();
        let mut c = Client { socket, corr: 0 };
        let props = c
            .request(PEER_PROPERTIES, |f| {
                f.u32(1).string("connection_name").string(name)
            })
            .await;
        assert_eq!(props.code(), OK);
        assert_eq!(c.request(SASL_HANDSHAKE, |f| f).await.code(), OK);
        let response = format!("\0{user}\0{password}");
        let auth = c
            .request(SASL_AUTHENTICATE, |f| {
                f.string("PLAIN").bytes(response.as_bytes())
            })
            .await;
        assert_eq!(auth.code(), OK, "login as {user}");
        c.expect(TUNE).await;
        c.send(F::new(TUNE | RESPONSE).u32(1 << 20).u32(0)).await;
        assert_eq!(
            c.request(OPEN, |f| f.string(vhost)).await.code(),
            OK,
            "open {vhost}"
        );
        c
    }

    pub(crate) async fn guest(broker: &common::TestBroker, name: &str) -> Client {
        Client::open(broker, "guest", "guest", "/", name).await
    }

    async fn send(&mut self, f: F) {
        let mut v = (f.0.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&f.0);
        self.socket.write_all(&v).await.unwrap();
    }

    /// A request with the next correlation id; its response.
    async fn request(&mut self, key: u16, build: impl FnOnce(F) -> F) -> Got {
        self.corr += 1;
        let f = build(F::new(key).u32(self.corr));
        self.send(f).await;
        self.expect(key | RESPONSE).await
    }

    /// The next frame, heartbeats skipped; `None` once the socket closed.
    async fn next(&mut self, limit: Duration) -> Result<Option<Got>, tokio::time::error::Elapsed> {
        tokio::time::timeout(limit, async {
            loop {
                let mut size = [0u8; 4];
                if self.socket.read_exact(&mut size).await.is_err() {
                    return None;
                }
                let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
                self.socket.read_exact(&mut frame).await.ok()?;
                let key = u16::from_be_bytes([frame[0], frame[1]]);
                if key != HEARTBEAT {
                    return Some(Got {
                        key,
                        body: frame[4..].to_vec(),
                    });
                }
            }
        })
        .await
    }

    async fn expect(&mut self, key: u16) -> Got {
        let got = self
            .next(Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
            .expect("a frame, not the end");
        assert_eq!(got.key, key, "frame key");
        got
    }

    /// Reads until the connection ends or `limit` passes.
    async fn ended(&mut self, limit: Duration) -> Ended {
        loop {
            match self.next(limit).await {
                Err(_) => return Ended::StillOpen,
                Ok(None) => return Ended::SocketClosed,
                Ok(Some(f)) if f.key == CLOSE => return Ended::CloseCommand(f.u16_at(4)),
                Ok(Some(_)) => {}
            }
        }
    }

    /// Still served: a request gets its answer.
    async fn answers(&mut self) -> bool {
        let stream = common::unique("no-such-stream");
        self.request(DELETE, |f| f.string(&stream)).await.code() == STREAM_DOES_NOT_EXIST
    }

    async fn create(&mut self, stream: &str) {
        let code = self
            .request(CREATE, |f| f.string(stream).u32(0))
            .await
            .code();
        assert_eq!(code, OK, "create {stream}");
    }

    async fn delete(&mut self, stream: &str) {
        assert_eq!(self.request(DELETE, |f| f.string(stream)).await.code(), OK);
    }

    pub(crate) async fn declare_publisher(&mut self, id: u8, reference: &str, stream: &str) {
        let code = self
            .request(DECLARE_PUBLISHER, |f| {
                f.u8(id).string(reference).string(stream)
            })
            .await
            .code();
        assert_eq!(code, OK, "declare publisher");
    }

    /// Publishes one message per publishing id, in one frame, and waits for
    /// their confirms.
    pub(crate) async fn publish_confirmed(&mut self, publisher: u8, ids: std::ops::Range<u64>) {
        let mut f = F::new(PUBLISH)
            .u8(publisher)
            .u32(ids.clone().count() as u32);
        for id in ids.clone() {
            f = f
                .u64(id)
                .bytes(&amqp10_message(format!("m{id}").as_bytes()));
        }
        self.send(f).await;
        let mut confirmed = 0;
        while confirmed < ids.clone().count() {
            let c = self.expect(PUBLISH_CONFIRM).await;
            confirmed += c.u32_at(1) as usize;
        }
    }

    /// Subscribes `id` to `stream` from its first offset with `credit`.
    pub(crate) async fn subscribe_first(&mut self, id: u8, stream: &str, credit: u16) {
        let code = self
            .request(SUBSCRIBE, |f| {
                f.u8(id).string(stream).u16(1).u16(credit).u32(0)
            })
            .await
            .code();
        assert_eq!(code, OK, "subscribe");
    }

    /// Subscribes `id` to `stream` from its first offset with `credit` and
    /// subscription `properties`; the frames that came before the response
    /// (a group's ConsumerUpdate may).
    async fn subscribe_with(
        &mut self,
        id: u8,
        stream: &str,
        credit: u16,
        properties: &[(&str, &str)],
    ) -> Vec<Got> {
        self.corr += 1;
        let mut f = F::new(SUBSCRIBE)
            .u32(self.corr)
            .u8(id)
            .string(stream)
            .u16(1)
            .u16(credit)
            .u32(properties.len() as u32);
        for (k, v) in properties {
            f = f.string(k).string(v);
        }
        self.send(f).await;
        let mut before = Vec::new();
        loop {
            let got = self
                .next(Duration::from_secs(10))
                .await
                .expect("a frame within 10 s")
                .expect("a frame, not the end");
            if got.key == SUBSCRIBE | RESPONSE {
                assert_eq!(got.code(), OK, "subscribe");
                return before;
            }
            before.push(got);
        }
    }

    async fn credit(&mut self, id: u8, credit: u16) {
        self.send(F::new(CREDIT).u8(id).u16(credit)).await;
    }

    /// Reads deliveries until `n` messages came; their chunks' count.
    async fn read_messages(&mut self, n: u32) -> u32 {
        let (mut got, mut chunks) = (0, 0);
        while got < n {
            let d = self.expect(DELIVER).await;
            // Subscription id, then the chunk: magic and version, chunk
            // type, entry count (u16), record count (u32).
            got += d.u32_at(1 + 4);
            chunks += 1;
        }
        chunks
    }
}

/// A minimal AMQP 1.0 message: one data section.
fn amqp10_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x53, 0x75, 0xb0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The listed object whose `user_provided_name` is `name`.
fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?
        .iter()
        .find(|c| c["user_provided_name"] == name)
}

/// Waits until `path` lists the connection named `name`; its JSON.
async fn listed(api: &Api, path: &str, name: &str) -> Value {
    common::wait_for(&format!("{name} in {path}"), SETTLE, || async {
        let r = api.get(path).await;
        named(&r.json, name).cloned().ok_or(r.text)
    })
    .await
}

async fn not_listed(api: &Api, path: &str, name: &str) {
    common::eventually(&format!("{name} gone from {path}"), SETTLE, || async {
        named(&api.get(path).await.json, name).is_none()
    })
    .await
}

/// Waits until `path` lists an entry on `connection` for which `check`
/// holds; that entry.
async fn entry_where(
    api: &Api,
    path: &str,
    connection: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    common::wait_for(what, SETTLE, || async {
        let r = api.get(path).await;
        let found = r.json.as_array().and_then(|all| {
            all.iter()
                .find(|e| e["connection_details"]["name"] == connection && check(e))
                .cloned()
        });
        found.ok_or(r.text)
    })
    .await
}

async fn setup() -> Option<(common::TestBroker, Api)> {
    let broker = common::TestBroker::start().await;
    broker.stream_addr?;
    let api = Api::of(&broker)?;
    Some((broker, api))
}

#[tokio::test]
async fn a_stream_connection_is_listed_in_both_apis_and_closed_by_delete() {
    let Some((broker, api)) = setup().await else {
        return;
    };
    let name = common::unique("stream-mgmt-listed");
    let mut client = Client::guest(&broker, &name).await;
    let c = listed(&api, "/api/connections", &name).await;
    assert_eq!(c["protocol"], "stream", "{c}");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["user"], "guest");
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert_eq!(c["channel_max"], 0);
    assert_eq!(c["frame_max"], 1 << 20);
    assert_eq!(c["client_properties"]["connection_name"], name.as_str());
    assert_eq!(c["port"], broker.stream_addr.unwrap().port());
    let conn_name = c["name"].as_str().unwrap().to_string();
    assert!(conn_name.contains(" -> "), "{conn_name}");
    let s = listed(&api, "/api/stream/connections", &name).await;
    assert_eq!(s["name"], conn_name.as_str());
    listed(&api, "/api/stream/connections/%2F", &name).await;
    let one = api
        .get(&format!("/api/stream/connections/%2F/{}", enc(&conn_name)))
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.json["name"], conn_name.as_str());
    assert_eq!(one.json["protocol"], "stream");
    // Not in another vhost, and an AMQP connection is not a stream one.
    let elsewhere = api
        .get(&format!(
            "/api/stream/connections/no-such-vhost/{}",
            enc(&conn_name)
        ))
        .await;
    assert_eq!(elsewhere.status, 404);
    assert_eq!(
        api.get("/api/stream/connections/no-such-vhost")
            .await
            .status,
        404
    );
    let amqp = broker.connect().await;
    let streams_only = api.get("/api/stream/connections").await.json;
    assert!(streams_only
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["protocol"] == "stream"));
    // Paged as the other lists.
    let page = api.get("/api/stream/connections?page=1&page_size=1").await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert_eq!(
        page.json["items"].as_array().unwrap().len(),
        1,
        "{}",
        page.text
    );

    let deleted = api
        .delete(&format!("/api/stream/connections/%2F/{}", enc(&conn_name)))
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(
        client.ended(Duration::from_secs(10)).await,
        Ended::SocketClosed
    );
    not_listed(&api, "/api/connections", &name).await;

    // DELETE /api/connections/{name} closes a stream connection too.
    let name = common::unique("stream-mgmt-generic-delete");
    let mut client = Client::guest(&broker, &name).await;
    let c = listed(&api, "/api/connections", &name).await;
    let conn_name = c["name"].as_str().unwrap();
    let deleted = api
        .delete(&format!("/api/connections/{}", enc(conn_name)))
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(
        client.ended(Duration::from_secs(10)).await,
        Ended::SocketClosed
    );
    not_listed(&api, "/api/stream/connections", &name).await;
    let _ = amqp.close(200, "bye".into()).await;
}

#[tokio::test]
async fn a_deleted_users_or_vhosts_stream_connections_are_closed() {
    let Some((broker, api)) = setup().await else {
        return;
    };
    let user = common::unique("stream-mgmt-user");
    let vhost = common::unique("stream-mgmt-vhost");
    assert!(
        api.put(
            &format!("/api/users/{user}"),
            json!({"password": "pw", "tags": ""})
        )
        .await
        .status
            < 300
    );
    assert!(
        api.put(&format!("/api/vhosts/{vhost}"), json!({}))
            .await
            .status
            < 300
    );
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    for (v, u) in [("%2F", user.as_str()), (vhost.as_str(), "guest")] {
        let r = api
            .put(&format!("/api/permissions/{v}/{u}"), all.clone())
            .await;
        assert!(r.status < 300, "{}", r.text);
    }
    let bystander_name = common::unique("stream-mgmt-bystander");
    let mut bystander = Client::guest(&broker, &bystander_name).await;

    let name = common::unique("stream-mgmt-of-user");
    let mut client = Client::open(&broker, &user, "pw", "/", &name).await;
    let c = listed(&api, "/api/stream/connections", &name).await;
    assert_eq!(c["user"], user.as_str());
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
    assert_eq!(
        client.ended(Duration::from_secs(10)).await,
        Ended::SocketClosed
    );
    not_listed(&api, "/api/stream/connections", &name).await;

    let name = common::unique("stream-mgmt-in-vhost");
    let mut client = Client::open(&broker, "guest", "guest", &vhost, &name).await;
    let c = listed(&api, &format!("/api/stream/connections/{vhost}"), &name).await;
    assert_eq!(c["vhost"], vhost.as_str());
    assert_eq!(
        api.delete(&format!("/api/vhosts/{vhost}")).await.status,
        204
    );
    assert_eq!(
        client.ended(Duration::from_secs(10)).await,
        Ended::SocketClosed
    );

    // Everyone else's connection stays.
    assert!(bystander.answers().await);
    listed(&api, "/api/stream/connections", &bystander_name).await;
}

#[tokio::test]
async fn publisher_counts_follow_confirms() {
    let Some((broker, api)) = setup().await else {
        return;
    };
    let name = common::unique("stream-mgmt-publisher");
    let stream = common::unique("stream-mgmt-published");
    let mut client = Client::guest(&broker, &name).await;
    client.create(&stream).await;
    client.declare_publisher(7, "orders-writer", &stream).await;
    client.publish_confirmed(7, 1..11).await;
    let conn_name = listed(&api, "/api/stream/connections", &name).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let p = entry_where(
        &api,
        "/api/stream/publishers",
        &conn_name,
        "10 confirmed",
        |p| p["confirmed"] == 10,
    )
    .await;
    assert_eq!(p["publisher_id"], 7, "{p}");
    assert_eq!(p["reference"], "orders-writer");
    assert_eq!(p["published"], 10);
    assert_eq!(p["errored"], 0);
    assert_eq!(p["queue"], json!({"name": stream, "vhost": "/"}));
    assert_eq!(p["connection_details"]["user"], "guest");
    // More publishes move the counts.
    client.publish_confirmed(7, 11..16).await;
    entry_where(
        &api,
        "/api/stream/publishers/%2F",
        &conn_name,
        "15 confirmed",
        |p| p["published"] == 15 && p["confirmed"] == 15,
    )
    .await;
    for path in [
        format!("/api/stream/publishers/%2F/{}", enc(&stream)),
        format!("/api/stream/connections/%2F/{}/publishers", enc(&conn_name)),
    ] {
        entry_where(
            &api,
            &path,
            &conn_name,
            &format!("the publisher in {path}"),
            |p| p["publisher_id"] == 7,
        )
        .await;
    }
    let missing = api
        .get(&format!(
            "/api/stream/publishers/%2F/{}",
            enc(&common::unique("no-such-stream"))
        ))
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        api.get("/api/stream/publishers/no-such-vhost").await.status,
        404
    );
    client.delete(&stream).await;
}

#[tokio::test]
async fn consumer_offset_and_lag_are_visible_and_move() {
    let Some((broker, api)) = setup().await else {
        return;
    };
    let stream = common::unique("stream-mgmt-consumed");
    // Two publishing runs of rstream: two chunks at least on RabbitMQ.
    for prefix in ["a", "b"] {
        let published = run_script(
            &broker,
            "stream_client.py",
            &["publish", &stream, "10", prefix],
        )
        .await;
        assert_eq!(published["confirmed"], 10);
    }
    let name = common::unique("stream-mgmt-consumer");
    let mut client = Client::guest(&broker, &name).await;
    // No credit yet: nothing is sent, everything is lag.
    client.subscribe_first(3, &stream, 0).await;
    let conn_name = listed(&api, "/api/stream/connections", &name).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let c = entry_where(
        &api,
        "/api/stream/consumers",
        &conn_name,
        "a lagging consumer",
        |c| c["offset_lag"].as_u64().is_some_and(|l| l > 0),
    )
    .await;
    assert_eq!(c["subscription_id"], 3, "{c}");
    assert_eq!(c["consumed"], 0);
    assert_eq!(c["credits"], 0);
    assert_eq!(c["offset"], 0);
    assert_eq!(c["queue"], json!({"name": stream, "vhost": "/"}));
    assert!(c["properties"].is_object());
    if !common::against_other_broker() {
        assert_eq!(c["active"], true);
        assert_eq!(c["activity_status"], "up");
        // The queue's readers show it beside AMQP's, and /metrics too.
        let q = api
            .get(&format!("/api/queues/%2F/{}", enc(&stream)))
            .await
            .json;
        let readers = q["stream"]["readers"].as_array().unwrap();
        let r = readers
            .iter()
            .find(|r| r["connection"] == conn_name.as_str())
            .unwrap_or_else(|| panic!("no stream protocol reader: {q}"));
        assert_eq!(r["consumer_tag"], "stream.subid-3");
        assert_eq!(r["protocol"], "stream");
        assert_eq!(r["offset"], 0);
        assert_eq!(r["lag"], 20);
        let metrics = common::http::raw_request(api.addr, "GET", "/metrics", None, None).await;
        let line = metrics
            .text
            .lines()
            .find(|l| {
                l.starts_with("leveret_stream_consumer_lag{")
                    && l.contains(&stream)
                    && l.contains("stream.subid-3")
            })
            .unwrap_or_else(|| panic!("no lag metric for the subscription: {}", metrics.text));
        assert!(
            line.contains(&format!("connection=\"{conn_name}\"")),
            "{line}"
        );
        assert!(line.ends_with(" 20"), "{line}");
    }
    // Among the queue's consumers, as RabbitMQ counts it.
    let queue_path = format!("/api/queues/%2F/{}", enc(&stream));
    let consumer = common::wait_for(
        "the subscription among the queue's consumers",
        SETTLE,
        || async {
            let q = api.get(&queue_path).await.json;
            let found = q["consumer_details"].as_array().and_then(|all| {
                all.iter()
                    .find(|d| d["channel_details"]["connection_name"] == conn_name.as_str())
                    .cloned()
            });
            match found {
                Some(d) if q["consumers"] == 1 => Ok(d),
                _ => Err(q),
            }
        },
    )
    .await;
    assert_eq!(consumer["consumer_tag"], "stream.subid-3", "{consumer}");
    let overview = common::wait_for(
        "the subscription among the overview's consumers",
        SETTLE,
        || async {
            let o = api.get("/api/overview").await.json;
            match o["object_totals"]["consumers"].as_u64() {
                Some(n) if n >= 1 => Ok(n),
                _ => Err(o),
            }
        },
    )
    .await;
    if !common::against_other_broker() {
        assert_eq!(overview, 1);
    }
    assert_eq!(consumer["ack_required"], false);
    assert_eq!(consumer["active"], true);
    // Credit: everything is sent, the offset moves up and the lag to 0.
    client.credit(3, 100).await;
    client.read_messages(20).await;
    let c = entry_where(
        &api,
        "/api/stream/consumers/%2F",
        &conn_name,
        "a consumer caught up",
        |c| c["consumed"] == 20 && c["offset_lag"] == 0,
    )
    .await;
    assert!(c["offset"].as_u64().unwrap() > 0, "{c}");
    let path = format!("/api/stream/connections/%2F/{}/consumers", enc(&conn_name));
    entry_where(&api, &path, &conn_name, "the connection's consumer", |c| {
        c["subscription_id"] == 3
    })
    .await;
    if !common::against_other_broker() {
        let q = api
            .get(&format!("/api/queues/%2F/{}", enc(&stream)))
            .await
            .json;
        let r = q["stream"]["readers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["connection"] == conn_name.as_str())
            .cloned()
            .unwrap();
        assert_eq!(
            (r["offset"].as_u64(), r["lag"].as_u64()),
            (Some(20), Some(0)),
            "{r}"
        );
    }
    client.delete(&stream).await;
}

#[tokio::test]
async fn ctl_lists_stream_connections_consumers_and_publishers() {
    let Some((broker, api)) = setup().await else {
        return;
    };
    let name = common::unique("stream-mgmt-ctl");
    let stream = common::unique("stream-mgmt-ctl-stream");
    let mut client = Client::guest(&broker, &name).await;
    client.create(&stream).await;
    client.declare_publisher(2, "ctl-writer", &stream).await;
    client.publish_confirmed(2, 1..4).await;
    client.subscribe_first(5, &stream, 10).await;
    client.read_messages(3).await;
    let conn_name = listed(&api, "/api/stream/connections", &name).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    entry_where(
        &api,
        "/api/stream/consumers",
        &conn_name,
        "the consumer",
        |c| c["consumed"] == 3,
    )
    .await;
    entry_where(
        &api,
        "/api/stream/publishers",
        &conn_name,
        "the publisher",
        |p| p["confirmed"] == 3,
    )
    .await;
    let url = format!("http://{}", api.addr);
    let ctl = |args: &[&str]| {
        let mut full = vec!["ctl".to_string(), "--url".into(), url.clone()];
        full.extend(args.iter().map(|a| a.to_string()));
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_leveret"))
                .args(&full)
                .env_remove("LEVERET_URL")
                .env_remove("LEVERET_VHOST")
                .output()
                .unwrap();
            assert!(out.status.success(), "{full:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    let connections = ctl(&["list_stream_connections"]).await.unwrap();
    let row = connections
        .lines()
        .find(|l| l.contains(&conn_name))
        .unwrap_or_else(|| panic!("{connections}"));
    assert!(row.contains(&name), "{row}");
    assert!(
        connections.lines().next().unwrap().contains("conn_name"),
        "{connections}"
    );
    let consumers = ctl(&["list_stream_consumers"]).await.unwrap();
    let row: Vec<&str> = consumers
        .lines()
        .find(|l| l.contains(&conn_name))
        .unwrap_or_else(|| panic!("{consumers}"))
        .split_whitespace()
        .collect();
    assert!(consumers.contains("offset_lag"), "{consumers}");
    assert!(
        row.contains(&stream.as_str()) && row.contains(&"5"),
        "{row:?}"
    );
    let publishers = ctl(&["--format", "json", "list_stream_publishers"])
        .await
        .unwrap();
    let publishers: Value = serde_json::from_str(&publishers).unwrap();
    let p = publishers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["connection_details"]["name"] == conn_name.as_str())
        .unwrap_or_else(|| panic!("{publishers}"));
    assert_eq!(
        (p["reference"].as_str(), p["published"].as_u64()),
        (Some("ctl-writer"), Some(3))
    );
    client.delete(&stream).await;
}

#[tokio::test]
async fn a_management_user_sees_and_closes_only_its_own_stream_connections() {
    let Some((broker, api)) = setup().await else {
        return;
    };
    let user = common::unique("stream-mgmt-manager");
    let r = api
        .put(
            &format!("/api/users/{user}"),
            json!({"password": "pw", "tags": "management"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let all = json!({"configure": ".*", "write": ".*", "read": ".*"});
    let r = api.put(&format!("/api/permissions/%2F/{user}"), all).await;
    assert!(r.status < 300, "{}", r.text);
    let mine_api = api.as_user(&user, "pw");
    let stream = common::unique("stream-mgmt-shared");
    let theirs_name = common::unique("stream-mgmt-theirs");
    let mut theirs = Client::guest(&broker, &theirs_name).await;
    theirs.create(&stream).await;
    theirs.declare_publisher(1, "", &stream).await;
    let mine_name = common::unique("stream-mgmt-mine");
    let mut mine = Client::open(&broker, &user, "pw", "/", &mine_name).await;
    mine.declare_publisher(2, "", &stream).await;
    let theirs_conn = listed(&api, "/api/stream/connections", &theirs_name).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mine_conn = listed(&mine_api, "/api/stream/connections", &mine_name).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(named(
        &mine_api.get("/api/stream/connections").await.json,
        &theirs_name
    )
    .is_none());
    entry_where(
        &api,
        "/api/stream/publishers",
        &theirs_conn,
        "their publisher",
        |_| true,
    )
    .await;
    entry_where(
        &mine_api,
        "/api/stream/publishers",
        &mine_conn,
        "my publisher",
        |_| true,
    )
    .await;
    let publishers = mine_api.get("/api/stream/publishers").await.json;
    assert!(
        publishers
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["connection_details"]["user"] == user.as_str()),
        "{publishers}"
    );
    // Someone else's connection: RabbitMQ's 401, and it stays open.
    let theirs_path = format!("/api/stream/connections/%2F/{}", enc(&theirs_conn));
    for reply in [
        mine_api.get(&theirs_path).await,
        mine_api.delete(&theirs_path).await,
        mine_api.get(&format!("{theirs_path}/publishers")).await,
        mine_api
            .delete(&format!("/api/connections/{}", enc(&theirs_conn)))
            .await,
    ] {
        assert_eq!(reply.status, 401, "{}", reply.text);
        assert_eq!(reply.json["reason"], "User not authorised to access object");
    }
    assert!(theirs.answers().await);
    // Its own: closed.
    let mine_path = format!("/api/stream/connections/%2F/{}", enc(&mine_conn));
    assert_eq!(mine_api.get(&mine_path).await.status, 200);
    assert_eq!(mine_api.delete(&mine_path).await.status, 204);
    assert_eq!(
        mine.ended(Duration::from_secs(10)).await,
        Ended::SocketClosed
    );
    theirs.delete(&stream).await;
    assert_eq!(api.delete(&format!("/api/users/{user}")).await.status, 204);
}

/// Single active consumer (RabbitMQ 3.11+, not in 3.10): the group's
/// active member and the waiting one, as RabbitMQ reports them.
#[tokio::test]
async fn group_members_show_which_one_is_active() {
    if common::against_other_broker() {
        return;
    }
    let Some((broker, api)) = setup().await else {
        return;
    };
    let stream = common::unique("stream-mgmt-group");
    let name = common::unique("stream-mgmt-group-member");
    let mut client = Client::guest(&broker, &name).await;
    client.create(&stream).await;
    let group = [("single-active-consumer", "true"), ("name", "billing")];
    let mut frames = client.subscribe_with(1, &stream, 10, &group).await;
    frames.extend(client.subscribe_with(2, &stream, 10, &group).await);
    if frames.is_empty() {
        frames.push(client.expect(CONSUMER_UPDATE).await);
    }
    let update = &frames[0];
    assert_eq!(update.key, CONSUMER_UPDATE);
    // Correlation id, then the subscription and whether it is active.
    assert_eq!(
        (update.body[4], update.body[5]),
        (1, 1),
        "subscription 1 is activated"
    );
    let conn_name = listed(&api, "/api/stream/connections", &name).await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let status = |id: u64| {
        let api = api.clone();
        let conn_name = conn_name.clone();
        async move {
            let c = entry_where(&api, "/api/stream/consumers", &conn_name, "a member", |c| {
                c["subscription_id"] == id
            })
            .await;
            assert_eq!(c["properties"]["name"], "billing", "{c}");
            (c["active"].clone(), c["activity_status"].clone())
        }
    };
    assert_eq!(status(1).await, (json!(true), json!("single_active")));
    assert_eq!(status(2).await, (json!(false), json!("waiting")));
    client.delete(&stream).await;
}
