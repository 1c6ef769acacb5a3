//! Vhost limits, user limits and topic permissions, as RabbitMQ 3.10 has
//! them: set through the management API, enforced on AMQP clients with
//! RabbitMQ's reply codes and texts, kept across a restart and carried by
//! definitions.
//!
//! Everything is set up through the management API, so every test but the
//! restart runs unchanged against RabbitMQ (`LEVERET_TEST_URI` and
//! `LEVERET_TEST_MGMT`). Whatever a test creates has a unique name and is
//! deleted when the test ends, pass or fail, since RabbitMQ is shared.

use crate::common;

use common::amqp::{amqp_error, timed_for, within_for};
use common::http::{Api, Reply};
use common::process::{BrokerProcess, TempDir};
use common::{against_other_broker, eventually, unique, TestBroker};
use lapin::{
    options::*,
    types::FieldTable,
    uri::{AMQPUri, AMQPUserInfo},
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[track_caller]
fn assert_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(
        reply.status, status,
        "{what}: HTTP {} with body {:?}",
        reply.status, reply.text
    );
}

/// Paths to DELETE through the API when the test ends (against a shared
/// broker only: an in-process Leveret goes away with the test).
struct Cleanup {
    api: Api,
    paths: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !against_other_broker() || self.paths.is_empty() {
            return;
        }
        let api = self.api.clone();
        let paths = std::mem::take(&mut self.paths);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for path in paths.iter().rev() {
                    let _ = api.delete(path).await;
                }
            });
        })
        .join();
    }
}

/// A broker with its API, a fresh vhost where guest may do everything,
/// and what the test created.
struct Env {
    broker: TestBroker,
    api: Api,
    vhost: String,
    cleanup: Cleanup,
}

impl Env {
    /// `None` when the broker has no management API (the test is skipped).
    async fn start() -> Option<Env> {
        let broker = TestBroker::start().await;
        let api = Api::of(&broker)?;
        let mut env = Env {
            cleanup: Cleanup {
                api: api.clone(),
                paths: Vec::new(),
            },
            broker,
            api,
            vhost: String::new(),
        };
        env.vhost = env.new_vhost().await;
        env.permit(&env.vhost.clone(), "guest").await;
        Some(env)
    }

    async fn new_vhost(&mut self) -> String {
        let vhost = unique("limits-vhost");
        let path = format!("/api/vhosts/{}", enc(&vhost));
        self.cleanup.paths.push(path.clone());
        assert_status(&self.api.put(&path, json!({})).await, 201, "PUT vhost");
        vhost
    }

    /// A fresh user (password "pw") with full permissions in the vhost.
    async fn user(&mut self) -> String {
        let user = unique("limits-user");
        let path = format!("/api/users/{}", enc(&user));
        self.cleanup.paths.push(path.clone());
        let reply = self
            .api
            .put(&path, json!({"password": "pw", "tags": ""}))
            .await;
        assert_status(&reply, 201, "PUT user");
        self.permit(&self.vhost.clone(), &user).await;
        user
    }

    async fn permit(&self, vhost: &str, user: &str) {
        let path = format!("/api/permissions/{}/{}", enc(vhost), enc(user));
        let reply = self
            .api
            .put(
                &path,
                json!({"configure": ".*", "write": ".*", "read": ".*"}),
            )
            .await;
        assert!(reply.status == 201 || reply.status == 204, "{reply:?}");
    }

    async fn topic_permission(&self, user: &str, exchange: &str, write: &str, read: &str) {
        let path = format!("/api/topic-permissions/{}/{}", enc(&self.vhost), enc(user));
        let reply = self
            .api
            .put(
                &path,
                json!({"exchange": exchange, "write": write, "read": read}),
            )
            .await;
        assert!(reply.status == 201 || reply.status == 204, "{reply:?}");
    }

    async fn vhost_limit(&self, name: &str, value: i64) {
        let path = format!("/api/vhost-limits/{}/{name}", enc(&self.vhost));
        let reply = self.api.put(&path, json!({ "value": value })).await;
        assert_status(&reply, 204, &format!("PUT {path}"));
    }

    async fn user_limit(&self, user: &str, name: &str, value: i64) {
        let path = format!("/api/user-limits/{}/{name}", enc(user));
        let reply = self.api.put(&path, json!({ "value": value })).await;
        assert_status(&reply, 204, &format!("PUT {path}"));
    }

    async fn connect_as(&self, user: &str, password: &str) -> lapin::Result<Connection> {
        let mut uri: AMQPUri = self.broker.uri.parse().expect("broker URI");
        uri.authority.userinfo = AMQPUserInfo {
            username: user.into(),
            password: password.into(),
        };
        uri.vhost = self.vhost.clone();
        timed_for(
            WAIT,
            "connection.open",
            Connection::connect_uri(uri, ConnectionProperties::default()),
        )
        .await
    }

    async fn login(&self, user: &str) -> Connection {
        let password = if user == "guest" { "guest" } else { "pw" };
        self.connect_as(user, password)
            .await
            .unwrap_or_else(|e| panic!("{user} should log in to {}: {e}", self.vhost))
    }

    async fn assert_login_refused(&self, user: &str, text: &str) {
        let password = if user == "guest" { "guest" } else { "pw" };
        let err = self
            .connect_as(user, password)
            .await
            .expect_err(&format!("{user} should be refused"));
        assert_eq!(amqp_error(&err), Some((530, text.to_string())), "{err}");
    }
}

async fn publish(ch: &Channel, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        b"m",
        BasicProperties::default(),
    )
    .await?
    .await?;
    Ok(())
}

async fn confirmed_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) -> lapin::Result<()> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(res: lapin::Result<T>, code: u16, text: &str) {
    let err = res.expect_err(&format!("expected {code} {text}"));
    assert_eq!(amqp_error(&err), Some((code, text.to_string())), "{err}");
}

// ---------------------------------------------------------------------------
// topic permissions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_publish_to_a_topic_exchange_needs_a_routing_key_its_write_pattern_matches() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        // `{username}` and `{vhost}` stand for the publisher's.
        env.topic_permission(&user, "amq.topic", "^{username}\\.|^{vhost}$", ".*")
            .await;
        let conn = env.login(&user).await;

        let ch = confirmed_channel(&conn).await;
        publish(&ch, "amq.topic", &format!("{user}.orders"))
            .await
            .expect("a key starting with the user name");
        publish(&ch, "amq.topic", &env.vhost)
            .await
            .expect("the vhost name");
        // Other exchanges, and other kinds, are not concerned.
        publish(&ch, "amq.direct", "other.orders")
            .await
            .expect("a direct exchange");
        let own = unique("limits-topic");
        ch.exchange_declare(
            own.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, &own, "other.orders")
            .await
            .expect("a topic exchange without a topic permission");

        assert_refused(
            publish(&ch, "amq.topic", "other.orders").await,
            403,
            &format!(
                "ACCESS_REFUSED - access to topic 'other.orders' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            ),
        );

        // An empty pattern allows only the empty key.
        env.topic_permission(&user, "amq.topic", "", "").await;
        let ch = confirmed_channel(&conn).await;
        publish(&ch, "amq.topic", "")
            .await
            .expect("the empty key under an empty pattern");
        assert_refused(
            publish(&ch, "amq.topic", &format!("{user}.orders")).await,
            403,
            &format!(
                "ACCESS_REFUSED - access to topic '{user}.orders' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            ),
        );
    })
    .await
}

#[tokio::test]
async fn client_id_is_not_a_variable_for_amqp_clients_but_literal_text() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        // RabbitMQ expands {client_id} for MQTT and STOMP only; for AMQP
        // 0-9-1 the braces are literal characters of the expression.
        env.topic_permission(&user, "amq.topic", "^{client_id}\\.", ".*")
            .await;
        let conn = env.login(&user).await;
        let ch = confirmed_channel(&conn).await;
        publish(&ch, "amq.topic", "{client_id}.x")
            .await
            .expect("the literal text");
        assert_refused(
            publish(&ch, "amq.topic", "c1.x").await,
            403,
            &format!(
                "ACCESS_REFUSED - access to topic 'c1.x' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            ),
        );
    })
    .await
}

#[tokio::test]
async fn a_bind_from_a_topic_exchange_needs_a_binding_key_its_read_pattern_matches() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        env.topic_permission(&user, "amq.topic", ".*", "^{username}\\.")
            .await;
        let conn = env.login(&user).await;
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let q = q.name().as_str().to_string();
        bind(&ch, &q, "amq.topic", &format!("{user}.#"))
            .await
            .expect("a key starting with the user name");
        assert_refused(
            bind(&ch, &q, "amq.topic", "#").await,
            403,
            &format!(
                "ACCESS_REFUSED - access to topic '#' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            ),
        );

        // exchange.bind from the topic exchange is checked the same way.
        let ch = conn.create_channel().await.unwrap();
        let dest = unique("limits-dest");
        ch.exchange_declare(
            dest.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        assert_refused(
            ch.exchange_bind(
                dest.as_str().into(),
                "amq.topic".into(),
                "a.b".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await,
            403,
            &format!(
                "ACCESS_REFUSED - access to topic 'a.b' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            ),
        );
    })
    .await
}

#[tokio::test]
async fn the_management_api_is_held_to_topic_permissions_too() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        let reply = env
            .api
            .put(
                &format!("/api/users/{}", enc(&user)),
                json!({"password": "pw", "tags": "management"}),
            )
            .await;
        assert_status(&reply, 204, "tag the user management");
        env.topic_permission(&user, "amq.topic", "^ok", "^ok").await;
        let api = env.api.as_user(&user, "pw");
        let v = enc(&env.vhost);
        let q = unique("limits-api-q");
        let reply = api
            .put(&format!("/api/queues/{v}/{q}"), json!({"auto_delete": true}))
            .await;
        assert_status(&reply, 201, "PUT queue");

        let bindings = format!("/api/bindings/{v}/e/amq.topic/q/{q}");
        let reply = api.post(&bindings, json!({"routing_key": "no"})).await;
        assert_eq!(
            (reply.status, &reply.json),
            (401, &json!({"error": "not_authorised", "reason": "Access refused."}))
        );
        let reply = api.post(&bindings, json!({"routing_key": "ok"})).await;
        assert_status(&reply, 201, "a binding key the read pattern matches");

        let publish = format!("/api/exchanges/{v}/amq.topic/publish");
        let message = |key: &str| json!({"routing_key": key, "payload": "x", "payload_encoding": "string", "properties": {}});
        let reply = api.post(&publish, message("no")).await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": format!(
                "403 ACCESS_REFUSED - access to topic 'no' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            )}))
        );
        let reply = api.post(&publish, message("ok")).await;
        assert_eq!((reply.status, &reply.json), (200, &json!({"routed": true})));
        env.api.delete(&format!("/api/queues/{v}/{q}")).await;
    })
    .await
}

#[tokio::test]
async fn topic_permissions_in_the_api_have_rabbitmqs_shapes() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        let (v, u) = (enc(&env.vhost), enc(&user));
        let path = format!("/api/topic-permissions/{v}/{u}");
        assert_status(&env.api.get(&path).await, 404, "none yet");
        let body = json!({"exchange": "amq.topic", "write": "^a", "read": ""});
        assert_status(&env.api.put(&path, body.clone()).await, 201, "new");
        assert_status(&env.api.put(&path, body).await, 204, "replaced");
        let reply = env
            .api
            .put(&path, json!({"exchange": "x", "write": "a"}))
            .await;
        assert_status(&reply, 400, "no read");
        assert_eq!(
            reply.json,
            json!({"error": "bad_request", "reason": "[{key_missing,read}]"})
        );
        let reply = env
            .api
            .put(
                &format!("/api/topic-permissions/{v}/{}", unique("nobody")),
                json!({"exchange": "x", "write": "a", "read": "b"}),
            )
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (
                400,
                &json!({"error": "bad_request", "reason": "vhost_or_user_not_found"})
            )
        );
        let reply = env
            .api
            .put(&path, json!({"exchange": "x", "write": "(", "read": ""}))
            .await;
        assert_status(&reply, 400, "a bad expression");

        let one = json!({"user": user, "vhost": env.vhost, "exchange": "amq.topic", "write": "^a", "read": ""});
        assert_eq!(env.api.get(&path).await.json, json!([one]));
        assert_eq!(
            env.api
                .get(&format!("/api/users/{u}/topic-permissions"))
                .await
                .json,
            json!([one])
        );
        assert_eq!(
            env.api
                .get(&format!("/api/vhosts/{v}/topic-permissions"))
                .await
                .json,
            json!([one])
        );
        let all = env.api.get("/api/topic-permissions").await.json;
        assert!(
            all.as_array().unwrap().contains(&one),
            "{one} in /api/topic-permissions: {all}"
        );

        assert_status(&env.api.delete(&path).await, 204, "DELETE");
        assert_status(&env.api.get(&path).await, 404, "after DELETE");
        assert_status(&env.api.delete(&path).await, 404, "DELETE again");
    })
    .await
}

// ---------------------------------------------------------------------------
// vhost limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn vhost_max_connections_refuses_connection_open_once_reached() {
    within(async {
        let Some(env) = Env::start().await else {
            return;
        };
        env.vhost_limit("max-connections", 1).await;
        let first = env.login("guest").await;
        let refused = format!(
            "NOT_ALLOWED - access to vhost '{}' refused for user 'guest': connection limit (1) is reached",
            env.vhost
        );
        env.assert_login_refused("guest", &refused).await;
        first.close(200, "bye".into()).await.unwrap();
        // RabbitMQ forgets a closed connection asynchronously.
        eventually("the closed connection forgotten", WAIT, || async {
            env.connect_as("guest", "guest").await.is_ok()
        })
        .await;

        env.vhost_limit("max-connections", 0).await;
        let refused = format!(
            "NOT_ALLOWED - access to vhost '{}' refused for user 'guest': connection limit (0) is reached",
            env.vhost
        );
        env.assert_login_refused("guest", &refused).await;
        env.vhost_limit("max-connections", -1).await;
        env.login("guest").await;
    })
    .await
}

#[tokio::test]
async fn vhost_max_queues_refuses_a_new_queue_but_not_a_redeclare() {
    within(async {
        let Some(env) = Env::start().await else {
            return;
        };
        env.vhost_limit("max-queues", 1).await;
        let conn = env.login("guest").await;
        let ch = conn.create_channel().await.unwrap();
        let opts = QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        };
        let q1 = unique("limits-q1");
        ch.queue_declare(q1.as_str().into(), opts, FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(q1.as_str().into(), opts, FieldTable::default())
            .await
            .expect("redeclaring an existing queue");
        let q2 = unique("limits-q2");
        assert_refused(
            ch.queue_declare(q2.as_str().into(), opts, FieldTable::default())
                .await,
            406,
            &format!(
                "PRECONDITION_FAILED - cannot declare queue '{q2}': queue limit in vhost '{}' (1) is reached",
                env.vhost
            ),
        );
        // The management API is refused too.
        let reply = env
            .api
            .put(
                &format!("/api/queues/{}/{q2}", enc(&env.vhost)),
                json!({"auto_delete": true}),
            )
            .await;
        assert_status(&reply, 400, "PUT queue over the limit");
        // Lifting the limit lets it in.
        let path = format!("/api/vhost-limits/{}/max-queues", enc(&env.vhost));
        assert_status(&env.api.delete(&path).await, 204, "DELETE limit");
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(q2.as_str().into(), opts, FieldTable::default())
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn vhost_limits_in_the_api_have_rabbitmqs_shapes_and_texts() {
    within(async {
        let Some(env) = Env::start().await else {
            return;
        };
        let v = enc(&env.vhost);
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json,
            json!([])
        );
        env.vhost_limit("max-connections", 10).await;
        env.vhost_limit("max-queues", -1).await;
        let expected = json!([{"vhost": env.vhost, "value": {"max-queues": -1, "max-connections": 10}}]);
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json,
            expected
        );
        let all = env.api.get("/api/vhost-limits").await.json;
        assert!(all.as_array().unwrap().contains(&expected[0]), "{all}");

        let put = |name: &str, body: Value| {
            let path = format!("/api/vhost-limits/{v}/{name}");
            let api = env.api.clone();
            async move { api.put(&path, body).await }
        };
        let reply = put("max-queues", json!({"value": "5"})).await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": "Validation failed\n\nmax-queues should be a number, actually was <<\"5\">>\n"}))
        );
        let reply = put("max-foo", json!({"value": 3})).await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": "Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,3}] in limits\n"}))
        );
        let reply = put("max-queues", json!({})).await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": "[{key_missing,value}]"}))
        );
        let reply = env
            .api
            .put(
                &format!("/api/vhost-limits/{}/max-queues", unique("novhost")),
                json!({"value": 1}),
            )
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (404, &json!({"error": "not_found", "reason": "vhost_not_found"}))
        );

        for name in ["max-queues", "max-connections"] {
            let reply = env
                .api
                .delete(&format!("/api/vhost-limits/{v}/{name}"))
                .await;
            assert_status(&reply, 204, name);
        }
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json,
            json!([])
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// user limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn user_max_connections_refuses_connection_open_once_reached() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        env.user_limit(&user, "max-connections", 1).await;
        let first = env.login(&user).await;
        env.assert_login_refused(
            &user,
            &format!(
                "NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached"
            ),
        )
        .await;
        // Other users are not limited.
        env.login("guest").await;
        first.close(200, "bye".into()).await.unwrap();
        eventually("the closed connection forgotten", WAIT, || async {
            env.connect_as(&user, "pw").await.is_ok()
        })
        .await;
    })
    .await
}

#[tokio::test]
async fn user_max_channels_refuses_channel_open_beyond_it_across_connections() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        env.user_limit(&user, "max-channels", 2).await;
        let a = env.login(&user).await;
        let b = env.login(&user).await;
        let kept = a.create_channel().await.unwrap();
        let closed = b.create_channel().await.unwrap();
        assert_refused(
            b.create_channel().await,
            530,
            &format!(
                "NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed user limit of (2)"
            ),
        );
        // The refusal closes that connection, and gives back its channel.
        drop(closed);
        eventually("the refused connection's channel given back", WAIT, || async {
            let c = env.login(&user).await;
            c.create_channel().await.is_ok()
        })
        .await;
        assert!(kept.status().connected(), "the other connection's channel stays open");
    })
    .await
}

#[tokio::test]
async fn user_limits_in_the_api_have_rabbitmqs_shapes_and_texts() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        let u = enc(&user);
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json,
            json!([])
        );
        env.user_limit(&user, "max-connections", 2).await;
        env.user_limit(&user, "max-channels", 3).await;
        let value = json!({"max-channels": 3, "max-connections": 2});
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json,
            json!([{"user": user, "value": value}])
        );
        assert_eq!(
            env.api.get(&format!("/api/users/{u}")).await.json["limits"],
            value
        );
        let all = env.api.get("/api/user-limits").await.json;
        assert!(
            all.as_array()
                .unwrap()
                .contains(&json!({"user": user, "value": value})),
            "{all}"
        );
        let reply = env
            .api
            .put(
                &format!("/api/user-limits/{u}/max-channels"),
                json!({"value": "3"}),
            )
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": "max-channels should be a number, actually was <<\"3\">>"}))
        );
        let reply = env
            .api
            .put(&format!("/api/user-limits/{u}/max-foo"), json!({"value": 3}))
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": "Unrecognised terms [{<<\"max-foo\">>,3}] in user-limits"}))
        );
        let nobody = unique("nobody");
        let reply = env
            .api
            .put(
                &format!("/api/user-limits/{nobody}/max-channels"),
                json!({"value": 3}),
            )
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (400, &json!({"error": "bad_request", "reason": ["no_such_user", nobody]}))
        );
        for name in ["max-channels", "max-connections"] {
            let reply = env
                .api
                .delete(&format!("/api/user-limits/{u}/{name}"))
                .await;
            assert_status(&reply, 204, name);
        }
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json,
            json!([])
        );
        assert_eq!(
            env.api.get(&format!("/api/users/{u}")).await.json["limits"],
            json!({})
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// lifecycle: deletion, definitions, restart
// ---------------------------------------------------------------------------

#[tokio::test]
async fn deleting_a_user_or_a_vhost_drops_its_limits_and_topic_permissions() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        env.user_limit(&user, "max-channels", 5).await;
        env.topic_permission(&user, "amq.topic", "^a", "^b").await;
        env.vhost_limit("max-queues", 5).await;
        let (u, v) = (enc(&user), enc(&env.vhost));

        let user_path = format!("/api/users/{u}");
        assert_status(&env.api.delete(&user_path).await, 204, "DELETE user");
        let reply = env
            .api
            .put(&user_path, json!({"password": "pw", "tags": ""}))
            .await;
        assert_status(&reply, 201, "PUT the user again");
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json,
            json!([])
        );
        assert_eq!(env.api.get(&user_path).await.json["limits"], json!({}));
        let topic = format!("/api/topic-permissions/{v}/{u}");
        assert_status(&env.api.get(&topic).await, 404, "topic permissions");

        env.topic_permission("guest", "amq.topic", "^a", "^b").await;
        let vhost_path = format!("/api/vhosts/{v}");
        assert_status(&env.api.delete(&vhost_path).await, 204, "DELETE vhost");
        let all = env.api.get("/api/topic-permissions").await.json;
        assert!(
            !all.as_array()
                .unwrap()
                .iter()
                .any(|p| p["vhost"] == env.vhost.as_str()),
            "topic permissions of the deleted vhost: {all}"
        );
        assert_status(&env.api.put(&vhost_path, json!({})).await, 201, "PUT again");
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json,
            json!([])
        );
    })
    .await
}

#[tokio::test]
async fn definitions_carry_limits_and_topic_permissions_as_rabbitmq_exports_them() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        env.user_limit(&user, "max-channels", 3).await;
        env.topic_permission(&user, "amq.topic", "^{username}\\.", "")
            .await;
        env.vhost_limit("max-connections", 10).await;

        let exported = env.api.get("/api/definitions").await.json;
        let exported_user = exported["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == user.as_str())
            .expect("the user is exported")
            .clone();
        assert_eq!(exported_user["limits"], json!({"max-channels": 3}));
        let topic = json!({"user": user, "vhost": env.vhost, "exchange": "amq.topic", "write": "^{username}\\.", "read": ""});
        assert!(
            exported["topic_permissions"]
                .as_array()
                .unwrap()
                .contains(&topic),
            "{}",
            exported["topic_permissions"]
        );
        let parameter = json!({"value": {"max-connections": 10}, "vhost": env.vhost, "component": "vhost-limits", "name": "limits"});
        assert!(
            exported["parameters"].as_array().unwrap().contains(&parameter),
            "{}",
            exported["parameters"]
        );
        let v = enc(&env.vhost);
        let per_vhost = env.api.get(&format!("/api/definitions/{v}")).await.json;
        assert_eq!(per_vhost["parameters"], json!([parameter]));

        // Cleared, then brought back by importing what was exported.
        let u = enc(&user);
        for path in [
            format!("/api/user-limits/{u}/max-channels"),
            format!("/api/topic-permissions/{v}/{u}"),
            format!("/api/vhost-limits/{v}/max-connections"),
        ] {
            assert_status(&env.api.delete(&path).await, 204, &path);
        }
        let import = json!({
            "users": [exported_user],
            "vhosts": [{"name": env.vhost}],
            "topic_permissions": [topic],
            "parameters": [parameter],
        });
        let reply = env.api.post("/api/definitions", import).await;
        assert!(reply.status == 201 || reply.status == 204, "{reply:?}");
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json,
            json!([{"user": user, "value": {"max-channels": 3}}])
        );
        assert_eq!(
            env.api
                .get(&format!("/api/topic-permissions/{v}/{u}"))
                .await
                .json,
            json!([topic])
        );
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json,
            json!([{"vhost": env.vhost, "value": {"max-connections": 10}}])
        );
        // And they are enforced.
        let conn = env.login(&user).await;
        let ch = confirmed_channel(&conn).await;
        assert_refused(
            publish(&ch, "amq.topic", "x").await,
            403,
            &format!(
                "ACCESS_REFUSED - access to topic 'x' in exchange 'amq.topic' in vhost '{}' refused for user '{user}'",
                env.vhost
            ),
        );
    })
    .await
}

#[tokio::test]
async fn a_definitions_import_over_max_queues_is_refused_as_a_whole() {
    within(async {
        let Some(env) = Env::start().await else {
            return;
        };
        env.vhost_limit("max-queues", 1).await;
        let v = enc(&env.vhost);
        let queue = |name: &str| json!({"name": name, "durable": true, "auto_delete": false, "arguments": {}});
        let (a, b) = (unique("limits-a"), unique("limits-b"));
        let reply = env
            .api
            .post(
                &format!("/api/definitions/{v}"),
                json!({"queues": [queue(&a), queue(&b)]}),
            )
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (
                400,
                &json!({"error": "bad_request", "reason": format!(
                    "Adding 2 queue(s) to virtual host \"{}\" would exceed the limit of 1 queue(s).\n\nThis virtual host currently has 0 queue(s) defined.\n\nImport aborted!",
                    env.vhost
                )})
            )
        );
        assert_eq!(
            env.api.get(&format!("/api/queues/{v}")).await.json,
            json!([]),
            "nothing imported"
        );
        // One new queue fits.
        let reply = env
            .api
            .post(&format!("/api/definitions/{v}"), json!({"queues": [queue(&a)]}))
            .await;
        assert!(reply.status == 201 || reply.status == 204, "{reply:?}");
        let path = format!("/api/queues/{v}/{a}");
        assert_status(&env.api.get(&path).await, 200, "the imported queue");
        env.api.delete(&path).await;
    })
    .await
}

#[tokio::test]
async fn limits_and_topic_permissions_survive_a_restart() {
    if against_other_broker() {
        // Restarting the shared RabbitMQ node is not something a test should do.
        return;
    }
    within(async {
        let data = TempDir::new("limits-restart");
        let mut broker = BrokerProcess::start(data.path());
        let api = Api {
            addr: broker.mgmt_addr(),
            user: "guest".into(),
            password: "guest".into(),
        };
        let put = |path: &str, body: Value| {
            let (api, path) = (api.clone(), path.to_string());
            async move {
                let reply = api.put(&path, body).await;
                assert!(reply.status == 201 || reply.status == 204, "{path}: {reply:?}");
            }
        };
        put("/api/vhost-limits/%2F/max-queues", json!({"value": 0})).await;
        put("/api/user-limits/guest/max-channels", json!({"value": 7})).await;
        put(
            "/api/topic-permissions/%2F/guest",
            json!({"exchange": "amq.topic", "write": "^ok$", "read": ".*"}),
        )
        .await;
        let before = [
            api.get("/api/vhost-limits").await.json,
            api.get("/api/user-limits").await.json,
            api.get("/api/topic-permissions").await.json,
        ];

        broker.sigterm_and_wait();
        let broker = BrokerProcess::start(data.path());
        let api = Api {
            addr: broker.mgmt_addr(),
            ..api
        };
        let after = [
            api.get("/api/vhost-limits").await.json,
            api.get("/api/user-limits").await.json,
            api.get("/api/topic-permissions").await.json,
        ];
        assert_eq!(after, before);
        assert_eq!(before[0], json!([{"vhost": "/", "value": {"max-queues": 0}}]));

        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        assert_refused(
            ch.queue_declare("q".into(), QueueDeclareOptions::default(), FieldTable::default())
                .await,
            406,
            "PRECONDITION_FAILED - cannot declare queue 'q': queue limit in vhost '/' (0) is reached",
        );
        let ch = confirmed_channel(&conn).await;
        publish(&ch, "amq.topic", "ok").await.unwrap();
        assert_refused(
            publish(&ch, "amq.topic", "no").await,
            403,
            "ACCESS_REFUSED - access to topic 'no' in exchange 'amq.topic' in vhost '/' refused for user 'guest'",
        );
    })
    .await
}

// ---------------------------------------------------------------------------
// leveret ctl
// ---------------------------------------------------------------------------

/// Runs `leveret ctl --url … ARGS` against the env's API; (exit code,
/// stdout, stderr).
async fn ctl(env: &Env, args: &[&str]) -> (i32, String, String) {
    let mut full = vec![
        "ctl".to_string(),
        "--url".to_string(),
        format!("http://{}", env.api.addr),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(&full)
            .env_remove("LEVERET_VHOST")
            .env_remove("LEVERET_FORMAT")
            .env_remove("LEVERET_USER")
            .env_remove("LEVERET_PASSWORD")
            .env_remove("LEVERET_URL")
            .output()
            .expect("run leveret ctl")
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ctl_sets_lists_and_clears_limits_and_topic_permissions_as_rabbitmqctl_names_them() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user().await;
        let vhost = env.vhost.clone();
        let ok = |r: (i32, String, String), what: &str| {
            assert_eq!(r.0, 0, "{what}: stdout {:?} stderr {:?}", r.1, r.2);
            r.1
        };
        let (v, u) = (enc(&vhost), enc(&user));

        ok(
            ctl(&env, &["-p", &vhost, "set_vhost_limits", r#"{"max-connections": 10, "max-queues": 5}"#]).await,
            "set_vhost_limits",
        );
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json[0]["value"],
            json!({"max-connections": 10, "max-queues": 5})
        );
        // A new definition replaces the old one.
        ok(
            ctl(&env, &["-p", &vhost, "set_vhost_limits", r#"{"max-queues": 1}"#]).await,
            "set_vhost_limits again",
        );
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json[0]["value"],
            json!({"max-queues": 1})
        );
        let listed = ok(
            ctl(&env, &["-p", &vhost, "list_vhost_limits"]).await,
            "list_vhost_limits",
        );
        assert!(listed.contains(r#"{"max-queues":1}"#), "{listed}");
        let (code, _, err) = ctl(&env, &["-p", &vhost, "set_vhost_limits", r#"{"max-foo": 1}"#]).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("max-foo"), "{err}");
        ok(
            ctl(&env, &["-p", &vhost, "clear_vhost_limits"]).await,
            "clear_vhost_limits",
        );
        assert_eq!(
            env.api.get(&format!("/api/vhost-limits/{v}")).await.json,
            json!([])
        );

        ok(
            ctl(&env, &["set_user_limits", &user, r#"{"max-channels": 4}"#]).await,
            "set_user_limits",
        );
        ok(
            ctl(&env, &["set_user_limits", &user, r#"{"max-connections": 2}"#]).await,
            "set_user_limits again",
        );
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json[0]["value"],
            json!({"max-channels": 4, "max-connections": 2})
        );
        let listed = ok(ctl(&env, &["list_user_limits", &user]).await, "list_user_limits");
        assert!(listed.contains(&user), "{listed}");
        ok(
            ctl(&env, &["clear_user_limits", &user, "max-channels"]).await,
            "clear_user_limits NAME",
        );
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json[0]["value"],
            json!({"max-connections": 2})
        );
        ok(
            ctl(&env, &["clear_user_limits", &user, "all"]).await,
            "clear_user_limits all",
        );
        assert_eq!(
            env.api.get(&format!("/api/user-limits/{u}")).await.json,
            json!([])
        );

        ok(
            ctl(&env, &["-p", &vhost, "set_topic_permissions", &user, "amq.topic", "^{username}\\.", ".*"]).await,
            "set_topic_permissions",
        );
        let listed = ok(
            ctl(&env, &["-p", &vhost, "list_topic_permissions", "--format", "json"]).await,
            "list_topic_permissions",
        );
        let listed: Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(
            listed,
            json!([{"user": user, "vhost": vhost, "exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}])
        );
        ok(
            ctl(&env, &["-p", &vhost, "clear_topic_permissions", &user, "amq.topic"]).await,
            "clear_topic_permissions",
        );
        assert_status(
            &env.api
                .get(&format!("/api/topic-permissions/{v}/{u}"))
                .await,
            404,
            "after clear_topic_permissions",
        );
    })
    .await
}

/// Vhost limits are also the runtime parameter `vhost-limits`/`limits`
/// (what rabbitmqadmin's `list parameters` and `declare parameter` use);
/// a component the broker lacks gets RabbitMQ's answer for a plugin that is
/// not enabled.
#[tokio::test]
async fn vhost_limits_are_the_runtime_parameter_vhost_limits() {
    within(async {
        let Some(env) = Env::start().await else {
            return;
        };
        let v = enc(&env.vhost);
        let path = format!("/api/parameters/vhost-limits/{v}/limits");
        let reply = env
            .api
            .put(
                &path,
                json!({"value": {"max-queues": 7, "max-connections": 3}}),
            )
            .await;
        assert_status(&reply, 201, "PUT parameter");
        let limits = env.api.get(&format!("/api/vhost-limits/{v}")).await.json;
        assert_eq!(
            limits,
            json!([{"vhost": env.vhost, "value": {"max-queues": 7, "max-connections": 3}}])
        );
        let one = env.api.get(&path).await;
        assert_status(&one, 200, "GET parameter");
        assert_eq!(
            one.json,
            json!({"value": {"max-queues": 7, "max-connections": 3}, "vhost": env.vhost,
                   "component": "vhost-limits", "name": "limits"})
        );
        let in_vhost = env
            .api
            .get(&format!("/api/parameters/vhost-limits/{v}"))
            .await;
        assert_eq!(in_vhost.json, json!([one.json.clone()]));
        let all = env.api.get("/api/parameters").await.json;
        assert!(all.as_array().unwrap().contains(&one.json), "{all}");
        assert_eq!(env.api.get("/api/parameters/shovel").await.json, json!([]));

        let reply = env
            .api
            .put(
                &format!("/api/parameters/federation-upstream/{v}/up"),
                json!({"value": {"uri": "amqp://elsewhere"}}),
            )
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (
                400,
                &json!({"error": "bad_request",
                        "reason": "Validation failed\n\ncomponent federation-upstream not found\n"})
            )
        );

        assert_status(&env.api.delete(&path).await, 204, "DELETE parameter");
        let limits = env.api.get(&format!("/api/vhost-limits/{v}")).await.json;
        assert_eq!(limits, json!([]));
    })
    .await;
}
