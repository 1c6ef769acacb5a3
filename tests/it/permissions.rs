//! Users, virtual hosts and permissions, as RabbitMQ 3.10 implements them: the
//! access-control table for AMQP 0-9-1 methods (configure / write / read
//! regular expressions per user and vhost), login and vhost-access refusals,
//! the management API's users, vhosts and permissions endpoints, tags,
//! password hashes, and what happens to open connections when a user or a
//! vhost is deleted.
//!
//! Users, vhosts and permissions are set up through the management API, so
//! every test runs unchanged against RabbitMQ (`LEVERET_TEST_URI` and
//! `LEVERET_TEST_MGMT`); all of them pass there, except the restart test,
//! which needs the Leveret binary. Everything a test creates has a unique name
//! and is deleted when the test ends, pass or fail, since RabbitMQ is shared.

use crate::common;

use common::amqp::{amqp_error, timed_for, within_for};
use common::http::{Api, Reply};
use common::process::{BrokerProcess, TempDir};
use common::raw::{plain, Raw};
use common::{against_other_broker, unique, TestBroker};
use futures_lite::{Stream, StreamExt};
use lapin::{
    options::*,
    types::{AMQPValue, FieldTable},
    uri::{AMQPUri, AMQPUserInfo},
    BasicProperties, Channel, Connection, ConnectionProperties, Event, ExchangeKind,
};
use serde_json::{json, Value};
use std::fmt::Debug;
use std::time::Duration;

/// Upper bound for anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(5);
/// Upper bound for the broker closing connections after a user or vhost is deleted.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(10);
/// Upper bound for a whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Full permissions.
const ALL: &str = ".*";
/// No permission: RabbitMQ treats the empty pattern as "matches nothing".
const NONE: &str = "";
/// Names starting with `app.`.
const APP: &str = "^app\\.";

/// RabbitMQ's reply text for a refused login (PLAIN), sent in connection.close
/// because lapin advertises the `authentication_failure_close` capability.
const LOGIN_REFUSED: &str = "ACCESS_REFUSED - Login was refused using authentication \
                             mechanism PLAIN. For details see the broker logfile.";

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

/// Percent-encodes `s` for a URL path segment (`/` becomes `%2F`).
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

fn user_path(user: &str) -> String {
    format!("/api/users/{}", enc(user))
}

fn vhost_path(vhost: &str) -> String {
    format!("/api/vhosts/{}", enc(vhost))
}

fn permission_path(vhost: &str, user: &str) -> String {
    format!("/api/permissions/{}/{}", enc(vhost), enc(user))
}

#[track_caller]
fn assert_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(
        reply.status, status,
        "{what}: HTTP {} with body {:?}",
        reply.status, reply.text
    );
}

/// Asserts a management API error: `status` and the JSON body
/// `{"error": error, "reason": reason}`.
#[track_caller]
fn assert_api_error(reply: &Reply, status: u16, error: &str, reason: Value, what: &str) {
    assert_status(reply, status, what);
    assert_eq!(
        reply.json,
        json!({"error": error, "reason": reason}),
        "{what}: body {:?}",
        reply.text
    );
}

/// Asserts RabbitMQ's 404 for a missing object.
#[track_caller]
fn assert_not_found(reply: &Reply, what: &str) {
    assert_api_error(reply, 404, "Object Not Found", json!("Not Found"), what);
}

/// Asserts a 400 `{"error": "bad_request", "reason": reason}`.
#[track_caller]
fn assert_bad_request(reply: &Reply, reason: Value, what: &str) {
    assert_api_error(reply, 400, "bad_request", reason, what);
}

/// Asserts the management API's refusal of a user who lacks a tag:
/// `reason` is "Not management user" or "Not administrator user".
#[track_caller]
fn assert_not_authorised(reply: &Reply, reason: &str, what: &str) {
    assert_api_error(reply, 401, "not_authorised", json!(reason), what);
}

/// Asserts the management API's refusal of bad credentials.
#[track_caller]
fn assert_login_failed(reply: &Reply, what: &str) {
    assert_api_error(reply, 401, "not_authorized", json!("Login failed"), what);
}

fn permission(vhost: &str, user: &str, configure: &str, write: &str, read: &str) -> Value {
    json!({"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read})
}

/// The `name` fields of a JSON list.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a JSON list: {list}"))
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn string(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

/// RabbitMQ's password hash: base64(salt ++ sha256(salt ++ password)), with a
/// 4-byte salt.
fn rabbit_hash(salt: [u8; 4], password: &str) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut raw = salt.to_vec();
    raw.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn decode_base64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("{s:?} is not base64: {e}"))
}

/// The (reply code, reply text) of the next channel.close or connection.close
/// lapin reports on `events`.
async fn next_close<S: Stream<Item = Event> + Unpin>(
    events: &mut S,
    limit: Duration,
) -> (u16, String) {
    timed_for(limit, "the broker to close", async {
        while let Some(event) = events.next().await {
            if let Event::Error(err) = event {
                if let Some(reason) = amqp_error(&err) {
                    return reason;
                }
            }
        }
        panic!("connection event stream ended without a close");
    })
    .await
}

/// A server-named exclusive queue, to show a connection still works.
async fn assert_usable(conn: &Connection, what: &str) {
    let ch = conn
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("{what}: channel.open: {e}"));
    ch.queue_declare("".into(), exclusive(), FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: queue.declare: {e}"));
}

/// Paths to DELETE through the management API when the test ends, pass or
/// fail. Only needed against a shared broker: an in-process Leveret goes away
/// with the test (and its API could not answer from inside `drop` anyway).
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
        // The test's runtime may be the one running this drop: use a fresh one.
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

/// A broker with its management API, and what this test created in it.
struct Env {
    broker: TestBroker,
    api: Api,
    cleanup: Cleanup,
}

impl Env {
    /// `None` when the broker has no management API (the test is skipped).
    async fn start() -> Option<Env> {
        let broker = TestBroker::start().await;
        let api = Api::of(&broker)?;
        Some(Env {
            cleanup: Cleanup {
                api: api.clone(),
                paths: Vec::new(),
            },
            broker,
            api,
        })
    }

    /// Deletes `path` when the test ends.
    fn remove_later(&mut self, path: String) {
        self.cleanup.paths.push(path);
    }

    /// Creates a fresh vhost through the API (201), as guest.
    async fn vhost(&mut self) -> String {
        let vhost = unique("perm-vhost");
        self.remove_later(vhost_path(&vhost));
        let reply = self.api.put(&vhost_path(&vhost), json!({})).await;
        assert_status(&reply, 201, &format!("PUT /api/vhosts/{vhost}"));
        vhost
    }

    /// Creates a fresh user with `password` and `tags` through the API (201).
    async fn user(&mut self, password: &str, tags: &str) -> String {
        let user = unique("perm-user");
        self.put_user(&user, json!({"password": password, "tags": tags}))
            .await;
        user
    }

    /// PUT /api/users/{user} with `body`, which must create it (201).
    async fn put_user(&mut self, user: &str, body: Value) {
        self.remove_later(user_path(user));
        let reply = self.api.put(&user_path(user), body).await;
        assert_status(&reply, 201, &format!("PUT /api/users/{user}"));
    }

    /// Sets `user`'s permissions in `vhost` (201 when new, 204 when replaced).
    async fn permit(&self, vhost: &str, user: &str, configure: &str, write: &str, read: &str) {
        let reply = self
            .api
            .put(
                &permission_path(vhost, user),
                json!({"configure": configure, "write": write, "read": read}),
            )
            .await;
        assert!(
            reply.status == 201 || reply.status == 204,
            "PUT /api/permissions/{vhost}/{user}: HTTP {} {:?}",
            reply.status,
            reply.text
        );
    }

    /// An AMQP connection as `user`/`password` to `vhost`.
    async fn connect_as(
        &self,
        user: &str,
        password: &str,
        vhost: &str,
    ) -> lapin::Result<Connection> {
        let mut uri: AMQPUri = self.broker.uri.parse().expect("broker URI");
        uri.authority.userinfo = AMQPUserInfo {
            username: user.into(),
            password: password.into(),
        };
        uri.vhost = vhost.into();
        timed_for(
            WAIT,
            "connection.open",
            Connection::connect_uri(uri, ConnectionProperties::default()),
        )
        .await
    }

    /// An AMQP connection that must succeed.
    async fn login(&self, user: &str, password: &str, vhost: &str) -> Connection {
        self.connect_as(user, password, vhost)
            .await
            .unwrap_or_else(|e| panic!("{user} should log in to vhost {vhost:?}: {e}"))
    }

    /// Asserts that logging in fails with `code` and `text`.
    async fn assert_login_refused(
        &self,
        user: &str,
        password: &str,
        vhost: &str,
        code: u16,
        text: &str,
    ) {
        let err = self
            .connect_as(user, password, vhost)
            .await
            .expect_err(&format!("{user}:{password} on {vhost:?} should be refused"));
        assert_eq!(
            amqp_error(&err),
            Some((code, text.to_string())),
            "{user}:{password} on {vhost:?}: {err}"
        );
    }

    /// Asserts that `user` has no permissions in `vhost` (530 at connection.open).
    async fn assert_no_vhost_access(&self, user: &str, password: &str, vhost: &str) {
        self.assert_login_refused(
            user,
            password,
            vhost,
            530,
            &format!("NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user}'"),
        )
        .await;
    }
}

/// A fresh vhost in which guest owns everything, and users with chosen
/// permissions act on resources guest set up.
struct Scene {
    env: Env,
    vhost: String,
    admin: Connection,
    admin_ch: Channel,
}

/// A user logged in to the scene's vhost.
struct Actor {
    name: String,
    vhost: String,
    conn: Connection,
}

impl Scene {
    async fn start() -> Option<Scene> {
        let mut env = Env::start().await?;
        let vhost = env.vhost().await;
        env.permit(&vhost, "guest", ALL, ALL, ALL).await;
        let admin = env.login("guest", "guest", &vhost).await;
        let admin_ch = admin.create_channel().await.unwrap();
        admin_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Some(Scene {
            env,
            vhost,
            admin,
            admin_ch,
        })
    }

    /// A new user with these permissions in the scene's vhost, logged in.
    async fn actor(&mut self, configure: &str, write: &str, read: &str) -> Actor {
        let name = self.env.user("secret", "").await;
        self.env
            .permit(&self.vhost, &name, configure, write, read)
            .await;
        let conn = self.env.login(&name, "secret", &self.vhost).await;
        Actor {
            name,
            vhost: self.vhost.clone(),
            conn,
        }
    }

    async fn exchange(&self, name: &str) {
        self.exchange_with(name, FieldTable::default()).await
    }

    async fn exchange_with(&self, name: &str, args: FieldTable) {
        self.admin_ch
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                args,
            )
            .await
            .unwrap_or_else(|e| panic!("guest declares exchange {name}: {e}"));
    }

    async fn queue(&self, name: &str) {
        self.queue_with(name, FieldTable::default()).await
    }

    async fn queue_with(&self, name: &str, args: FieldTable) {
        self.admin_ch
            .queue_declare(name.into(), QueueDeclareOptions::default(), args)
            .await
            .unwrap_or_else(|e| panic!("guest declares queue {name}: {e}"));
    }

    async fn bind_queue(&self, queue: &str, exchange: &str, key: &str) {
        self.admin_ch
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    async fn bind_exchange(&self, destination: &str, source: &str, key: &str) {
        self.admin_ch
            .exchange_bind(
                destination.into(),
                source.into(),
                key.into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Guest publishes `body` to the default exchange, straight into `queue`.
    async fn put_message(&self, queue: &str, body: &[u8]) {
        let confirm = self
            .admin_ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    /// Whether guest sees `name` with a passive exchange.declare.
    async fn exchange_exists(&self, name: &str) -> bool {
        let ch = self.admin.create_channel().await.unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let res = ch
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await;
        match res {
            Ok(()) => true,
            Err(e) if amqp_error(&e).map(|r| r.0) == Some(404) => false,
            Err(e) => panic!("passive exchange.declare {name}: {e}"),
        }
    }

    /// The ready-message count of `name` as guest sees it, or `None` if it
    /// does not exist.
    async fn queue_count(&self, name: &str) -> Option<u32> {
        match common::amqp::queue_count(&self.admin, name, WAIT).await {
            Ok(n) => Some(n),
            Err(e) if amqp_error(&e).map(|r| r.0) == Some(404) => None,
            Err(e) => panic!("passive queue.declare {name}: {e}"),
        }
    }
}

impl Actor {
    async fn channel(&self) -> Channel {
        timed_for(WAIT, "channel.open", self.conn.create_channel())
            .await
            .expect("channel.open")
    }

    /// RabbitMQ's reply text for refusing this user access to a resource.
    fn refusal(&self, kind: &str, name: &str) -> String {
        format!(
            "ACCESS_REFUSED - access to {kind} '{name}' in vhost '{}' refused for user '{}'",
            self.vhost, self.name
        )
    }

    /// Asserts that `res` is a 403 refusal naming `kind` `name`, and that it
    /// closed the channel but not the connection.
    #[track_caller]
    fn assert_refused<T: Debug>(
        &self,
        ch: &Channel,
        res: lapin::Result<T>,
        kind: &str,
        name: &str,
    ) {
        let err = res.expect_err(&format!("access to {kind} {name} should be refused"));
        assert_eq!(
            amqp_error(&err),
            Some((403, self.refusal(kind, name))),
            "unexpected error: {err}"
        );
        assert!(
            !ch.status().connected(),
            "the refused channel should be closed"
        );
        assert!(
            self.conn.status().connected(),
            "a refusal closes the channel, not the connection"
        );
    }

    async fn declare_exchange(
        &self,
        ch: &Channel,
        name: &str,
        args: FieldTable,
    ) -> lapin::Result<()> {
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
    }

    async fn declare_queue(
        &self,
        ch: &Channel,
        name: &str,
        args: FieldTable,
    ) -> lapin::Result<lapin::Queue> {
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
            .await
    }

    /// Publishes on a fresh confirm channel: `Ok` once confirmed, or the
    /// (code, text) the broker closed the channel with.
    async fn publish(&self, exchange: &str, key: &str) -> Result<(), (u16, String)> {
        let ch = self.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut events = Box::pin(self.conn.events_listener());
        let confirm = ch
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                b"hello",
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish is sent");
        if let Ok(Ok(confirmation)) = tokio::time::timeout(WAIT, confirm).await {
            if confirmation.is_ack() {
                return Ok(());
            }
        }
        // Not confirmed: the broker closed the channel; report why.
        let reason = next_close(&mut events, WAIT).await;
        assert!(
            !ch.status().connected(),
            "the refused channel should be closed"
        );
        Err(reason)
    }
}

// ---------------------------------------------------------------------------
// the access-control table: exchange.declare / exchange.delete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn exchange_declare_needs_configure_on_the_exchange() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.exchange("other.x").await;
        let u = s.actor(APP, NONE, NONE).await;

        let ch = u.channel().await;
        u.declare_exchange(&ch, "app.x", FieldTable::default())
            .await
            .expect("configure on app.x allows declaring it");

        let ch = u.channel().await;
        let res = u
            .declare_exchange(&ch, "other.y", FieldTable::default())
            .await;
        u.assert_refused(&ch, res, "exchange", "other.y");
        assert!(
            !s.exchange_exists("other.y").await,
            "a refused declare creates nothing"
        );

        // Redeclaring an existing exchange needs configure too.
        let ch = u.channel().await;
        let res = u
            .declare_exchange(&ch, "other.x", FieldTable::default())
            .await;
        u.assert_refused(&ch, res, "exchange", "other.x");
    })
    .await;
}

#[tokio::test]
async fn passive_declares_need_no_permission() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.exchange("other.x").await;
        s.queue("other.q").await;
        s.put_message("other.q", b"m").await;
        // Empty patterns grant nothing, but the permission entry still lets the
        // user into the vhost.
        let u = s.actor(NONE, NONE, NONE).await;

        let ch = u.channel().await;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.exchange_declare(
            "other.x".into(),
            ExchangeKind::Direct,
            passive,
            FieldTable::default(),
        )
        .await
        .expect("passive exchange.declare needs no permission");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare("other.q".into(), passive, FieldTable::default())
            .await
            .expect("passive queue.declare needs no permission");
        assert_eq!(q.message_count(), 1);

        // A missing one is 404 NOT_FOUND, not a refusal.
        let res = ch
            .queue_declare("other.missing".into(), passive, FieldTable::default())
            .await;
        assert_eq!(
            amqp_error(&res.expect_err("missing queue")),
            Some((
                404,
                format!(
                    "NOT_FOUND - no queue 'other.missing' in vhost '{}'",
                    s.vhost
                )
            ))
        );
    })
    .await;
}

#[tokio::test]
async fn declaring_an_exchange_with_an_alternate_exchange_needs_write_on_it_and_read_on_the_exchange(
) {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        let ae = |name: &str| table(&[("alternate-exchange", string(name))]);
        s.exchange("other.ae").await;
        s.exchange_with("other.has-ae", ae("other.ae")).await;

        // Write on the alternate exchange.
        let u = s.actor(ALL, APP, ALL).await;
        let ch = u.channel().await;
        let res = u.declare_exchange(&ch, "app.x1", ae("other.ae")).await;
        u.assert_refused(&ch, res, "exchange", "other.ae");
        assert!(
            !s.exchange_exists("app.x1").await,
            "a refused declare creates nothing"
        );
        let ch = u.channel().await;
        u.declare_exchange(&ch, "app.x2", ae("app.ae"))
            .await
            .expect("write on app.ae allows it as alternate exchange");
        // Only checked when the exchange is created: redeclaring one that
        // exists with the same arguments needs configure only.
        u.declare_exchange(&ch, "other.has-ae", ae("other.ae"))
            .await
            .expect("redeclaring an existing exchange does not check its alternate exchange");

        // Read on the exchange being declared.
        let u = s.actor(ALL, ALL, APP).await;
        let ch = u.channel().await;
        let res = u.declare_exchange(&ch, "other.x3", ae("app.ae")).await;
        u.assert_refused(&ch, res, "exchange", "other.x3");
        let ch = u.channel().await;
        u.declare_exchange(&ch, "other.x4", FieldTable::default())
            .await
            .expect("without an alternate exchange, read is not needed");

        // Read is checked before write.
        let u = s.actor(ALL, NONE, NONE).await;
        let ch = u.channel().await;
        let res = u.declare_exchange(&ch, "app.x5", ae("app.ae")).await;
        u.assert_refused(&ch, res, "exchange", "app.x5");
    })
    .await;
}

#[tokio::test]
async fn exchange_delete_needs_configure_on_the_exchange() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.exchange("app.x").await;
        s.exchange("other.x").await;
        let u = s.actor(APP, ALL, ALL).await;

        let ch = u.channel().await;
        ch.exchange_delete("app.x".into(), ExchangeDeleteOptions::default())
            .await
            .expect("configure on app.x allows deleting it");
        assert!(!s.exchange_exists("app.x").await);

        let ch = u.channel().await;
        let res = ch
            .exchange_delete("other.x".into(), ExchangeDeleteOptions::default())
            .await;
        u.assert_refused(&ch, res, "exchange", "other.x");
        assert!(
            s.exchange_exists("other.x").await,
            "a refused delete deletes nothing"
        );

        // Checked even when the exchange does not exist.
        let ch = u.channel().await;
        let res = ch
            .exchange_delete("other.missing".into(), ExchangeDeleteOptions::default())
            .await;
        u.assert_refused(&ch, res, "exchange", "other.missing");
    })
    .await;
}

// ---------------------------------------------------------------------------
// queue.declare / queue.delete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn queue_declare_needs_configure_on_the_queue() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.queue("other.q").await;
        let u = s.actor(APP, NONE, NONE).await;

        let ch = u.channel().await;
        u.declare_queue(&ch, "app.q", FieldTable::default())
            .await
            .expect("configure on app.q allows declaring it");

        let ch = u.channel().await;
        let res = u
            .declare_queue(&ch, "other.q2", FieldTable::default())
            .await;
        u.assert_refused(&ch, res, "queue", "other.q2");
        assert_eq!(
            s.queue_count("other.q2").await,
            None,
            "a refused declare creates nothing"
        );

        // Redeclaring an existing queue needs configure too.
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "other.q", FieldTable::default()).await;
        u.assert_refused(&ch, res, "queue", "other.q");
    })
    .await;
}

#[tokio::test]
async fn a_server_named_queue_is_checked_under_its_generated_name() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        let u = s.actor(APP, ALL, ALL).await;
        let ch = u.channel().await;
        let res = ch
            .queue_declare("".into(), exclusive(), FieldTable::default())
            .await;
        let err = res.expect_err("amq.gen-* does not match ^app\\.");
        let (code, text) = amqp_error(&err).expect("a channel close");
        assert_eq!(code, 403, "{text}");
        let pattern = format!(
            "^ACCESS_REFUSED - access to queue 'amq\\.gen-[^']+' in vhost '{}' refused for user '{}'$",
            regex::escape(&s.vhost),
            regex::escape(&u.name)
        );
        assert!(
            regex::Regex::new(&pattern).unwrap().is_match(&text),
            "{text}"
        );
        assert!(!ch.status().connected());

        let u = s.actor("^amq\\.gen-", NONE, NONE).await;
        let ch = u.channel().await;
        let q = ch
            .queue_declare("".into(), exclusive(), FieldTable::default())
            .await
            .expect("configure on ^amq\\.gen- allows server-named queues");
        assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    })
    .await;
}

#[tokio::test]
async fn declaring_a_queue_with_a_dead_letter_exchange_needs_write_on_it_and_read_on_the_queue() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        let dlx = |name: &str| table(&[("x-dead-letter-exchange", string(name))]);
        s.exchange("other.dlx").await;
        s.queue_with("other.has-dlx", dlx("other.dlx")).await;

        // Write on the dead-letter exchange.
        let u = s.actor(ALL, APP, ALL).await;
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "app.q1", dlx("other.dlx")).await;
        u.assert_refused(&ch, res, "exchange", "other.dlx");
        assert_eq!(
            s.queue_count("app.q1").await,
            None,
            "a refused declare creates nothing"
        );
        // The default exchange as dead-letter exchange is checked as amq.default.
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "app.q2", dlx("")).await;
        u.assert_refused(&ch, res, "exchange", "amq.default");
        let ch = u.channel().await;
        u.declare_queue(&ch, "app.q3", dlx("app.dlx"))
            .await
            .expect("write on app.dlx allows it as dead-letter exchange");
        // Only checked when the queue is created.
        u.declare_queue(&ch, "other.has-dlx", dlx("other.dlx"))
            .await
            .expect("redeclaring an existing queue does not check its dead-letter exchange");

        // Read on the queue being declared.
        let u = s.actor(ALL, ALL, APP).await;
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "other.q4", dlx("app.dlx")).await;
        u.assert_refused(&ch, res, "queue", "other.q4");
        let ch = u.channel().await;
        u.declare_queue(&ch, "other.q5", FieldTable::default())
            .await
            .expect("without a dead-letter exchange, read is not needed");

        // Read is checked before write.
        let u = s.actor(ALL, NONE, NONE).await;
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "app.q6", dlx("app.dlx")).await;
        u.assert_refused(&ch, res, "queue", "app.q6");
    })
    .await;
}

#[tokio::test]
async fn queue_delete_needs_configure_on_the_queue() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.queue("app.q").await;
        s.queue("other.q").await;
        let u = s.actor(APP, ALL, ALL).await;

        let ch = u.channel().await;
        ch.queue_delete("app.q".into(), QueueDeleteOptions::default())
            .await
            .expect("configure on app.q allows deleting it");
        assert_eq!(s.queue_count("app.q").await, None);

        let ch = u.channel().await;
        let res = ch
            .queue_delete("other.q".into(), QueueDeleteOptions::default())
            .await;
        u.assert_refused(&ch, res, "queue", "other.q");
        assert_eq!(
            s.queue_count("other.q").await,
            Some(0),
            "a refused delete deletes nothing"
        );

        // Checked even when the queue does not exist.
        let ch = u.channel().await;
        let res = ch
            .queue_delete("other.missing".into(), QueueDeleteOptions::default())
            .await;
        u.assert_refused(&ch, res, "queue", "other.missing");
    })
    .await;
}

// ---------------------------------------------------------------------------
// bindings
// ---------------------------------------------------------------------------

async fn queue_bind(ch: Channel, queue: &str, exchange: &str) -> (Channel, lapin::Result<()>) {
    let res = ch
        .queue_bind(
            queue.into(),
            exchange.into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    (ch, res)
}

async fn queue_unbind(ch: Channel, queue: &str, exchange: &str) -> (Channel, lapin::Result<()>) {
    let res = ch
        .queue_unbind(
            queue.into(),
            exchange.into(),
            "k".into(),
            FieldTable::default(),
        )
        .await;
    (ch, res)
}

async fn exchange_bind(
    ch: Channel,
    destination: &str,
    source: &str,
) -> (Channel, lapin::Result<()>) {
    let res = ch
        .exchange_bind(
            destination.into(),
            source.into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await;
    (ch, res)
}

async fn exchange_unbind(
    ch: Channel,
    destination: &str,
    source: &str,
) -> (Channel, lapin::Result<()>) {
    let res = ch
        .exchange_unbind(
            destination.into(),
            source.into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await;
    (ch, res)
}

#[tokio::test]
async fn queue_bind_and_unbind_need_write_on_the_queue_and_read_on_the_exchange() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        for x in ["app.x", "other.x"] {
            s.exchange(x).await;
        }
        for q in ["app.q", "other.q"] {
            s.queue(q).await;
        }
        s.bind_queue("app.q", "other.x", "k").await;
        s.bind_queue("other.q", "app.x", "k").await;
        let u = s.actor(NONE, APP, APP).await;

        let (_, res) = queue_bind(u.channel().await, "app.q", "app.x").await;
        res.expect("write on app.q and read on app.x allow binding");
        let (_, res) = queue_unbind(u.channel().await, "app.q", "app.x").await;
        res.expect("and unbinding");

        let (ch, res) = queue_bind(u.channel().await, "other.q", "app.x").await;
        u.assert_refused(&ch, res, "queue", "other.q");
        let (ch, res) = queue_bind(u.channel().await, "app.q", "other.x").await;
        u.assert_refused(&ch, res, "exchange", "other.x");
        // Write on the queue is checked first.
        let (ch, res) = queue_bind(u.channel().await, "other.q", "other.x").await;
        u.assert_refused(&ch, res, "queue", "other.q");

        let (ch, res) = queue_unbind(u.channel().await, "other.q", "app.x").await;
        u.assert_refused(&ch, res, "queue", "other.q");
        let (ch, res) = queue_unbind(u.channel().await, "app.q", "other.x").await;
        u.assert_refused(&ch, res, "exchange", "other.x");
    })
    .await;
}

#[tokio::test]
async fn exchange_bind_and_unbind_need_write_on_the_destination_and_read_on_the_source() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        for x in ["app.src", "app.dst", "other.src", "other.dst"] {
            s.exchange(x).await;
        }
        s.bind_exchange("app.dst", "other.src", "k").await;
        s.bind_exchange("other.dst", "app.src", "k").await;
        let u = s.actor(NONE, APP, APP).await;

        let (_, res) = exchange_bind(u.channel().await, "app.dst", "app.src").await;
        res.expect("write on app.dst and read on app.src allow binding");
        let (_, res) = exchange_unbind(u.channel().await, "app.dst", "app.src").await;
        res.expect("and unbinding");

        let (ch, res) = exchange_bind(u.channel().await, "other.dst", "app.src").await;
        u.assert_refused(&ch, res, "exchange", "other.dst");
        let (ch, res) = exchange_bind(u.channel().await, "app.dst", "other.src").await;
        u.assert_refused(&ch, res, "exchange", "other.src");
        // Write on the destination is checked first.
        let (ch, res) = exchange_bind(u.channel().await, "other.dst", "other.src").await;
        u.assert_refused(&ch, res, "exchange", "other.dst");

        let (ch, res) = exchange_unbind(u.channel().await, "other.dst", "app.src").await;
        u.assert_refused(&ch, res, "exchange", "other.dst");
        let (ch, res) = exchange_unbind(u.channel().await, "app.dst", "other.src").await;
        u.assert_refused(&ch, res, "exchange", "other.src");
    })
    .await;
}

// ---------------------------------------------------------------------------
// basic.publish / basic.get / basic.consume / queue.purge
// ---------------------------------------------------------------------------

#[tokio::test]
async fn publish_needs_write_on_the_exchange() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.exchange("app.x").await;
        s.exchange("other.x").await;
        s.queue("other.q").await;
        s.bind_queue("other.q", "app.x", "k").await;
        let u = s.actor(NONE, APP, NONE).await;

        u.publish("app.x", "k")
            .await
            .expect("write on app.x allows publishing to it");
        // The queue it routes to needs nothing.
        assert_eq!(s.queue_count("other.q").await, Some(1));

        let reason = u.publish("other.x", "k").await.expect_err("refused");
        assert_eq!(reason, (403, u.refusal("exchange", "other.x")));
        assert!(u.conn.status().connected(), "only the channel is closed");
    })
    .await;
}

#[tokio::test]
async fn publishing_to_the_default_exchange_needs_write_on_amq_default() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.queue("app.q").await;
        s.queue("other.q").await;

        let u = s.actor(NONE, APP, NONE).await;
        let reason = u
            .publish("", "app.q")
            .await
            .expect_err("write on app.q is not write on the default exchange");
        assert_eq!(reason, (403, u.refusal("exchange", "amq.default")));

        let u = s.actor(NONE, "^amq\\.default$", NONE).await;
        u.publish("", "other.q")
            .await
            .expect("write on amq.default allows publishing to any queue through it");
        assert_eq!(s.queue_count("other.q").await, Some(1));
    })
    .await;
}

#[tokio::test]
async fn basic_get_needs_read_on_the_queue() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.queue("app.q").await;
        s.queue("other.q").await;
        s.put_message("app.q", b"mine").await;
        s.put_message("other.q", b"theirs").await;
        let u = s.actor(NONE, NONE, APP).await;

        let ch = u.channel().await;
        let got = ch
            .basic_get("app.q".into(), BasicGetOptions { no_ack: true })
            .await
            .expect("read on app.q allows basic.get")
            .expect("a message");
        assert_eq!(got.delivery.data, b"mine");

        let ch = u.channel().await;
        let res = ch
            .basic_get("other.q".into(), BasicGetOptions { no_ack: true })
            .await;
        u.assert_refused(&ch, res, "queue", "other.q");
        assert_eq!(s.queue_count("other.q").await, Some(1), "the message stays");
    })
    .await;
}

#[tokio::test]
async fn basic_consume_needs_read_on_the_queue() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.queue("app.q").await;
        s.queue("other.q").await;
        s.put_message("app.q", b"mine").await;
        let u = s.actor(NONE, NONE, APP).await;

        let ch = u.channel().await;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let mut consumer = ch
            .basic_consume("app.q".into(), "c".into(), no_ack, FieldTable::default())
            .await
            .expect("read on app.q allows consuming");
        let delivery = timed_for(WAIT, "a delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("a delivery");
        assert_eq!(delivery.data, b"mine");

        let ch = u.channel().await;
        let res = ch
            .basic_consume("other.q".into(), "c".into(), no_ack, FieldTable::default())
            .await;
        u.assert_refused(&ch, res, "queue", "other.q");
    })
    .await;
}

#[tokio::test]
async fn queue_purge_needs_read_on_the_queue() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        s.queue("app.q").await;
        s.queue("other.q").await;
        s.put_message("app.q", b"mine").await;
        s.put_message("other.q", b"theirs").await;
        // Configure is not what purge needs.
        let u = s.actor(ALL, NONE, APP).await;

        let ch = u.channel().await;
        let purged = ch
            .queue_purge("app.q".into(), QueuePurgeOptions::default())
            .await
            .expect("read on app.q allows purging it");
        assert_eq!(purged, 1);

        let ch = u.channel().await;
        let res = ch
            .queue_purge("other.q".into(), QueuePurgeOptions::default())
            .await;
        u.assert_refused(&ch, res, "queue", "other.q");
        assert_eq!(
            s.queue_count("other.q").await,
            Some(1),
            "nothing was purged"
        );
    })
    .await;
}

#[tokio::test]
async fn permission_patterns_are_unanchored_regular_expressions() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        let u = s.actor("app", NONE, NONE).await;
        for name in ["app", "my.app.q", "apple"] {
            let ch = u.channel().await;
            u.declare_queue(&ch, name, FieldTable::default())
                .await
                .unwrap_or_else(|e| panic!("\"app\" matches {name}: {e}"));
        }
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "ap.p", FieldTable::default()).await;
        u.assert_refused(&ch, res, "queue", "ap.p");

        let u = s.actor("^app$|^x\\.[0-9]+$", NONE, NONE).await;
        let ch = u.channel().await;
        u.declare_queue(&ch, "app", FieldTable::default())
            .await
            .expect("^app$ matches app");
        u.declare_queue(&ch, "x.42", FieldTable::default())
            .await
            .expect("^x\\.[0-9]+$ matches x.42");
        for name in ["app.q", "x.4a"] {
            let ch = u.channel().await;
            let res = u.declare_queue(&ch, name, FieldTable::default()).await;
            u.assert_refused(&ch, res, "queue", name);
        }
    })
    .await;
}

#[tokio::test]
async fn permission_changes_apply_to_new_channels_of_open_connections() {
    within(async {
        let Some(mut s) = Scene::start().await else {
            return;
        };
        let u = s.actor(ALL, ALL, ALL).await;
        let ch = u.channel().await;
        u.declare_queue(&ch, "app.q", FieldTable::default())
            .await
            .unwrap();

        // Revoking the permissions does not close the connection, but refuses
        // what it does next.
        let path = permission_path(&s.vhost, &u.name);
        assert_status(&s.env.api.delete(&path).await, 204, "DELETE permissions");
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "app.q", FieldTable::default()).await;
        u.assert_refused(&ch, res, "queue", "app.q");
        // New connections are refused at connection.open.
        s.env
            .assert_no_vhost_access(&u.name, "secret", &s.vhost)
            .await;

        // Granting them again works on the same connection.
        s.env.permit(&s.vhost, &u.name, APP, NONE, NONE).await;
        let ch = u.channel().await;
        u.declare_queue(&ch, "app.q2", FieldTable::default())
            .await
            .expect("the new permissions apply");
        let ch = u.channel().await;
        let res = u.declare_queue(&ch, "other.q", FieldTable::default()).await;
        u.assert_refused(&ch, res, "queue", "other.q");
    })
    .await;
}

// ---------------------------------------------------------------------------
// logging in
// ---------------------------------------------------------------------------

#[tokio::test]
async fn connecting_to_a_vhost_without_permissions_is_530_not_allowed() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("secret", "").await;
        // Permissions elsewhere do not count.
        env.permit("/", &user, ALL, ALL, ALL).await;
        env.login(&user, "secret", "/").await;
        env.assert_no_vhost_access(&user, "secret", &vhost).await;
    })
    .await;
}

#[tokio::test]
async fn connecting_to_a_missing_vhost_is_530_vhost_not_found() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user("secret", "").await;
        let missing = unique("perm-missing-vhost");
        let text = format!("NOT_ALLOWED - vhost {missing} not found");
        env.assert_login_refused(&user, "secret", &missing, 530, &text)
            .await;
        // The same for guest, who has permissions elsewhere.
        env.assert_login_refused("guest", "guest", &missing, 530, &text)
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_is_403_access_refused() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user("secret", "").await;
        env.permit("/", &user, ALL, ALL, ALL).await;
        env.assert_login_refused(&user, "Secret", "/", 403, LOGIN_REFUSED)
            .await;
        env.assert_login_refused(&user, "", "/", 403, LOGIN_REFUSED)
            .await;
        let nobody = unique("perm-nobody");
        env.assert_login_refused(&nobody, "secret", "/", 403, LOGIN_REFUSED)
            .await;
        // The password is checked before the vhost.
        let missing = unique("perm-missing-vhost");
        env.assert_login_refused(&user, "wrong", &missing, 403, LOGIN_REFUSED)
            .await;
        env.login(&user, "secret", "/").await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// users through the management API
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_user_created_through_the_api_can_log_in_over_amqp() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("s3cret", "").await;
        env.permit(&vhost, &user, ALL, ALL, ALL).await;

        let conn = env.login(&user, "s3cret", &vhost).await;
        assert_usable(&conn, "the new user's connection").await;

        // Updating the user is 204.
        let reply = env
            .api
            .put(&user_path(&user), json!({"password": "s3cret", "tags": ""}))
            .await;
        assert_status(&reply, 204, "PUT an existing user");
        env.login(&user, "s3cret", &vhost).await;
    })
    .await;
}

#[tokio::test]
async fn get_user_shows_name_hash_algorithm_tags_and_limits() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user("pw", "management,monitoring").await;
        let reply = env.api.get(&user_path(&user)).await;
        assert_status(&reply, 200, "GET user");
        let body = &reply.json;
        assert_eq!(body["name"], user.as_str());
        assert_eq!(body["hashing_algorithm"], "rabbit_password_hashing_sha256");
        assert_eq!(body["tags"], json!(["management", "monitoring"]));
        assert_eq!(body["limits"], json!({}));
        assert!(body["password_hash"].is_string(), "{body}");
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "hashing_algorithm",
                "limits",
                "name",
                "password_hash",
                "tags"
            ]
        );

        // Tags may also be a list, or a comma-separated string with spaces.
        for tags in [json!(["monitoring", "custom"]), json!("monitoring, custom")] {
            let other = unique("perm-user");
            env.put_user(&other, json!({"password": "pw", "tags": tags}))
                .await;
            let reply = env.api.get(&user_path(&other)).await;
            assert_eq!(
                reply.json["tags"],
                json!(["monitoring", "custom"]),
                "{tags}"
            );
        }

        let reply = env.api.get(&user_path(&unique("perm-user"))).await;
        assert_not_found(&reply, "GET a missing user");

        // GET /api/users lists it.
        let reply = env.api.get("/api/users").await;
        assert_status(&reply, 200, "GET /api/users");
        let entry = reply
            .json
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == user.as_str())
            .expect("the user is listed")
            .clone();
        assert_eq!(entry, *body);
    })
    .await;
}

#[tokio::test]
async fn changing_a_password_refuses_the_old_one_and_keeps_open_connections() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user("old-pw", "").await;
        env.permit("/", &user, ALL, ALL, ALL).await;
        let open = env.login(&user, "old-pw", "/").await;

        let reply = env
            .api
            .put(&user_path(&user), json!({"password": "new-pw", "tags": ""}))
            .await;
        assert_status(&reply, 204, "PUT new password");

        env.assert_login_refused(&user, "old-pw", "/", 403, LOGIN_REFUSED)
            .await;
        env.login(&user, "new-pw", "/").await;
        // The connection opened with the old password carries on.
        assert_usable(&open, "the connection opened before the change").await;
    })
    .await;
}

#[tokio::test]
async fn a_user_without_tags_can_use_amqp_but_not_the_management_api() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user("pw", "").await;
        env.permit("/", &user, ALL, ALL, ALL).await;
        env.login(&user, "pw", "/").await;

        let api = env.api.as_user(&user, "pw");
        for path in ["/api/overview", "/api/whoami", "/api/vhosts", "/api/queues"] {
            assert_not_authorised(&api.get(path).await, "Not management user", path);
        }
        // Wrong credentials are a different 401.
        let reply = env.api.as_user(&user, "wrong").get("/api/overview").await;
        assert_login_failed(&reply, "wrong password");
    })
    .await;
}

#[tokio::test]
async fn management_monitoring_and_policymaker_users_can_read_the_api_but_not_administer_it() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        for tag in ["management", "monitoring", "policymaker"] {
            let user = env.user("pw", tag).await;
            let api = env.api.as_user(&user, "pw");
            let what = |w: &str| format!("{tag}: {w}");

            let reply = api.get("/api/overview").await;
            assert_status(&reply, 200, &what("GET /api/overview"));
            let reply = api.get("/api/whoami").await;
            assert_status(&reply, 200, &what("GET /api/whoami"));
            assert_eq!(reply.json, json!({"name": user, "tags": [tag]}));
            assert_status(&api.get("/api/vhosts").await, 200, &what("GET /api/vhosts"));

            let not_admin = "Not administrator user";
            let vhost = unique("perm-vhost");
            env.remove_later(vhost_path(&vhost));
            let reply = api.put(&vhost_path(&vhost), json!({})).await;
            assert_not_authorised(&reply, not_admin, &what("PUT vhost"));
            let reply = env.api.get(&vhost_path(&vhost)).await;
            assert_status(&reply, 404, &what("the vhost was not created"));

            let other = unique("perm-user");
            env.remove_later(user_path(&other));
            let reply = api
                .put(&user_path(&other), json!({"password": "x", "tags": ""}))
                .await;
            assert_not_authorised(&reply, not_admin, &what("PUT user"));
            let reply = env.api.get(&user_path(&other)).await;
            assert_status(&reply, 404, &what("the user was not created"));

            let reply = api.get("/api/users").await;
            assert_not_authorised(&reply, not_admin, &what("GET /api/users"));
            let reply = api.get("/api/permissions").await;
            assert_not_authorised(&reply, not_admin, &what("GET /api/permissions"));
            let reply = api.delete(&user_path(&user)).await;
            assert_not_authorised(&reply, not_admin, &what("DELETE itself"));
            let reply = api
                .put(
                    &permission_path("/", &user),
                    json!({"configure": ".*", "write": ".*", "read": ".*"}),
                )
                .await;
            assert_not_authorised(&reply, not_admin, &what("PUT permissions"));
        }
    })
    .await;
}

#[tokio::test]
async fn management_users_list_only_vhosts_they_have_permissions_in() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let manager = env.user("pw", "management").await;
        env.permit(&vhost, &manager, NONE, NONE, NONE).await;
        let reply = env.api.as_user(&manager, "pw").get("/api/vhosts").await;
        assert_status(&reply, 200, "GET /api/vhosts as management");
        assert_eq!(names(&reply.json), [vhost.as_str()]);

        // Monitoring sees every vhost.
        let monitor = env.user("pw", "monitoring").await;
        let reply = env.api.as_user(&monitor, "pw").get("/api/vhosts").await;
        let seen = names(&reply.json);
        assert!(
            seen.contains(&"/".to_string()) && seen.contains(&vhost),
            "{seen:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_deleted_user_cannot_log_in_and_loses_its_permissions() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("pw", "management").await;
        env.permit(&vhost, &user, ALL, ALL, ALL).await;
        env.login(&user, "pw", &vhost).await;

        let path = user_path(&user);
        assert_status(&env.api.delete(&path).await, 204, "DELETE user");
        assert_not_found(&env.api.delete(&path).await, "DELETE it again");
        assert_not_found(&env.api.get(&path).await, "GET the deleted user");

        env.assert_login_refused(&user, "pw", &vhost, 403, LOGIN_REFUSED)
            .await;
        let reply = env.api.as_user(&user, "pw").get("/api/overview").await;
        assert_login_failed(&reply, "API login of a deleted user");
        let reply = env.api.get(&permission_path(&vhost, &user)).await;
        assert_not_found(&reply, "permissions of a deleted user");

        // A user recreated with the same name starts without permissions.
        env.put_user(&user, json!({"password": "pw", "tags": ""}))
            .await;
        env.assert_no_vhost_access(&user, "pw", &vhost).await;
    })
    .await;
}

#[tokio::test]
async fn deleting_a_user_closes_its_connections_with_320() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        env.permit(&vhost, "guest", ALL, ALL, ALL).await;
        let user = env.user("pw", "").await;
        env.permit(&vhost, &user, ALL, ALL, ALL).await;
        env.permit("/", &user, ALL, ALL, ALL).await;
        let in_vhost = env.login(&user, "pw", &vhost).await;
        let in_default = env.login(&user, "pw", "/").await;
        let bystander = env.login("guest", "guest", &vhost).await;
        let mut events = [
            Box::pin(in_vhost.events_listener()),
            Box::pin(in_default.events_listener()),
        ];

        assert_status(&env.api.delete(&user_path(&user)).await, 204, "DELETE user");

        for (conn, events) in [&in_vhost, &in_default].into_iter().zip(events.iter_mut()) {
            let reason = next_close(events, FORCED_CLOSE_WAIT).await;
            assert_eq!(
                reason,
                (320, format!("CONNECTION_FORCED - user '{user}' is deleted"))
            );
            assert!(!conn.status().connected());
        }
        assert_usable(&bystander, "another user's connection").await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// vhosts through the management API
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_new_vhost_takes_connections_and_queues() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let reply = env.api.put(&vhost_path(&vhost), json!({})).await;
        assert_status(&reply, 204, "PUT an existing vhost");

        let conn = env.login("guest", "guest", &vhost).await;
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("q".into(), durable, FieldTable::default())
            .await
            .unwrap();
        let reply = env.api.get(&format!("/api/queues/{}", enc(&vhost))).await;
        assert_status(&reply, 200, "GET its queues");
        assert_eq!(names(&reply.json), ["q"]);
        assert_eq!(reply.json[0]["vhost"], vhost.as_str());
    })
    .await;
}

#[tokio::test]
async fn creating_a_vhost_through_the_api_grants_its_creator_full_permissions() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let reply = env
            .api
            .get(&format!("/api/vhosts/{}/permissions", enc(&vhost)))
            .await;
        assert_status(&reply, 200, "GET vhost permissions");
        assert_eq!(
            reply.json,
            json!([permission(&vhost, "guest", ALL, ALL, ALL)])
        );
        // So guest can use it straight away.
        env.login("guest", "guest", &vhost).await;
    })
    .await;
}

#[tokio::test]
async fn get_vhost_shows_name_description_tags_and_tracing() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let path = vhost_path(&vhost);
        let reply = env.api.get(&path).await;
        assert_status(&reply, 200, "GET vhost");
        let body = &reply.json;
        assert_eq!(body["name"], vhost.as_str());
        assert_eq!(body["description"], "");
        assert_eq!(body["tags"], json!([]));
        assert_eq!(body["tracing"], false);

        let reply = env
            .api
            .put(&path, json!({"description": "for tests", "tags": "a,b"}))
            .await;
        assert_status(&reply, 204, "PUT description and tags");
        let body = env.api.get(&path).await.json;
        assert_eq!(body["description"], "for tests");
        assert_eq!(body["tags"], json!(["a", "b"]));

        let listed = names(&env.api.get("/api/vhosts").await.json);
        assert!(listed.contains(&vhost), "GET /api/vhosts lists it");

        let missing = vhost_path(&unique("perm-missing-vhost"));
        assert_not_found(&env.api.get(&missing).await, "GET a missing vhost");
        assert_not_found(&env.api.delete(&missing).await, "DELETE a missing vhost");
    })
    .await;
}

/// A raw AMQP connection as `user` to `vhost` (no heartbeats), to read
/// exactly what the broker sends.
async fn raw_login(addr: std::net::SocketAddr, user: &str, password: &str, vhost: &str) -> Raw {
    let (mut raw, _) = Raw::start(addr).await;
    raw.start_ok("PLAIN", plain(user, password)).await;
    let tune = raw.expect_tune().await;
    raw.tune_ok(tune.channel_max, tune.frame_max, 0).await;
    raw.open_vhost(vhost).await;
    raw.expect_open_ok().await;
    raw
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_with_320() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("pw", "").await;
        env.permit(&vhost, &user, ALL, ALL, ALL).await;
        env.permit("/", &user, ALL, ALL, ALL).await;
        let mut raw = raw_login(env.broker.addr, "guest", "guest", &vhost).await;
        let as_user = env.login(&user, "pw", &vhost).await;
        let elsewhere = env.login(&user, "pw", "/").await;
        let mut events = Box::pin(as_user.events_listener());

        assert_status(
            &env.api.delete(&vhost_path(&vhost)).await,
            204,
            "DELETE vhost",
        );

        // RabbitMQ races two closers here: usually "vhost 'v' is deleted",
        // sometimes "vhost 'v' is down". Leveret must say "is deleted".
        let deleted = format!("CONNECTION_FORCED - vhost '{vhost}' is deleted");
        let down = format!("CONNECTION_FORCED - vhost '{vhost}' is down");
        let close = timed_for(
            FORCED_CLOSE_WAIT,
            "connection.close",
            raw.read_connection_close(),
        )
        .await;
        assert_eq!(close.reply_code, 320, "{close:?}");
        let text = close.reply_text.as_str();
        if against_other_broker() {
            assert!(text == deleted || text == down, "{close:?}");
        } else {
            assert_eq!(text, deleted);
        }
        assert_eq!((close.class_id, close.method_id), (0, 0), "{close:?}");

        // lapin sees the same close (against RabbitMQ, the socket is sometimes
        // reset before lapin reports it).
        let end = timed_for(FORCED_CLOSE_WAIT, "lapin's connection to end", async {
            while let Some(event) = events.next().await {
                if let Event::Error(err) = event {
                    return err;
                }
            }
            panic!("connection event stream ended without an error");
        })
        .await;
        match amqp_error(&end) {
            Some((code, text)) => {
                assert_eq!(code, 320, "{text}");
                assert!(
                    text == deleted || (against_other_broker() && text == down),
                    "{text}"
                );
            }
            None => assert!(against_other_broker(), "no connection.close: {end}"),
        }
        assert!(!as_user.status().connected());
        assert_usable(&elsewhere, "a connection to another vhost").await;
    })
    .await;
}

#[tokio::test]
async fn deleting_a_vhost_removes_its_queues_and_permissions() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("pw", "").await;
        env.permit(&vhost, &user, ALL, ALL, ALL).await;
        {
            let conn = env.login(&user, "pw", &vhost).await;
            let ch = conn.create_channel().await.unwrap();
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare("kept".into(), durable, FieldTable::default())
                .await
                .unwrap();
            let _ = conn.close(200, "bye".into()).await;
        }

        let path = vhost_path(&vhost);
        assert_status(&env.api.delete(&path).await, 204, "DELETE vhost");
        assert_not_found(&env.api.get(&path).await, "GET the deleted vhost");
        let queues = format!("/api/queues/{}", enc(&vhost));
        assert_not_found(&env.api.get(&queues).await, "GET its queues");
        let perm = permission_path(&vhost, &user);
        assert_not_found(&env.api.get(&perm).await, "GET its permissions");
        let reply = env
            .api
            .get(&format!("/api/users/{}/permissions", enc(&user)))
            .await;
        assert_eq!(reply.json, json!([]), "the user has no permissions left");
        let text = format!("NOT_ALLOWED - vhost {vhost} not found");
        env.assert_login_refused(&user, "pw", &vhost, 530, &text)
            .await;

        // Recreated, it is empty, and the old permissions do not come back.
        assert_status(&env.api.put(&path, json!({})).await, 201, "PUT it again");
        let reply = env.api.get(&queues).await;
        assert_status(&reply, 200, "GET queues of the new vhost");
        assert_eq!(reply.json, json!([]));
        assert_not_found(&env.api.get(&perm).await, "the old permissions");
        env.assert_no_vhost_access(&user, "pw", &vhost).await;
        let conn = env.login("guest", "guest", &vhost).await;
        let res = common::amqp::queue_count(&conn, "kept", WAIT).await;
        assert_eq!(
            amqp_error(&res.expect_err("the old queue is gone")),
            Some((
                404,
                format!("NOT_FOUND - no queue 'kept' in vhost '{vhost}'")
            ))
        );
    })
    .await;
}

// ---------------------------------------------------------------------------
// permissions through the management API
// ---------------------------------------------------------------------------

#[tokio::test]
async fn permissions_are_listed_per_user_per_vhost_and_in_total() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("pw", "").await;
        let path = permission_path(&vhost, &user);
        let body = json!({"configure": "^c", "write": "^w", "read": "^r"});
        let reply = env.api.put(&path, body.clone()).await;
        assert_status(&reply, 201, "PUT new permissions");
        assert_status(&env.api.put(&path, body).await, 204, "PUT them again");
        let entry = permission(&vhost, &user, "^c", "^w", "^r");

        let reply = env.api.get(&path).await;
        assert_status(&reply, 200, "GET permission");
        assert_eq!(reply.json, entry);

        let user_perms = format!("/api/users/{}/permissions", enc(&user));
        let reply = env.api.get(&user_perms).await;
        assert_status(&reply, 200, "GET user permissions");
        assert_eq!(reply.json, json!([entry]));

        let reply = env
            .api
            .get(&format!("/api/vhosts/{}/permissions", enc(&vhost)))
            .await;
        assert_status(&reply, 200, "GET vhost permissions");
        let mut listed = reply.json.as_array().unwrap().clone();
        listed.sort_by_key(|p| p["user"].as_str().unwrap().to_string());
        assert_eq!(
            listed,
            vec![permission(&vhost, "guest", ALL, ALL, ALL), entry.clone()]
        );

        let reply = env.api.get("/api/permissions").await;
        assert_status(&reply, 200, "GET /api/permissions");
        let all = reply.json.as_array().unwrap();
        assert!(all.contains(&entry), "{all:?}");
        assert!(
            all.contains(&permission("/", "guest", ALL, ALL, ALL)),
            "{all:?}"
        );

        // Deleting: 204, then 404.
        assert_status(&env.api.delete(&path).await, 204, "DELETE permission");
        assert_not_found(&env.api.get(&path).await, "GET deleted permission");
        assert_not_found(&env.api.delete(&path).await, "DELETE it again");
        assert_eq!(env.api.get(&user_perms).await.json, json!([]));
    })
    .await;
}

#[tokio::test]
async fn permissions_for_a_missing_vhost_or_user_are_400_or_404() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("pw", "").await;
        let missing_vhost = unique("perm-missing-vhost");
        let missing_user = unique("perm-missing-user");
        let body = json!({"configure": ALL, "write": ALL, "read": ALL});

        for (v, u) in [(&missing_vhost, &user), (&vhost, &missing_user)] {
            let path = permission_path(v, u);
            let reply = env.api.put(&path, body.clone()).await;
            assert_bad_request(
                &reply,
                json!("vhost_or_user_not_found"),
                &format!("PUT {path}"),
            );
            assert_not_found(&env.api.get(&path).await, &format!("GET {path}"));
        }
        // Both exist, but no permissions are set.
        let path = permission_path(&vhost, &user);
        assert_not_found(&env.api.get(&path).await, "GET unset permissions");
        assert_not_found(&env.api.delete(&path).await, "DELETE unset permissions");

        let path = format!("/api/users/{}/permissions", enc(&missing_user));
        assert_not_found(&env.api.get(&path).await, &path);
        let path = format!("/api/vhosts/{}/permissions", enc(&missing_vhost));
        assert_not_found(&env.api.get(&path).await, &path);
    })
    .await;
}

#[tokio::test]
async fn permissions_need_configure_write_and_read_and_valid_regexes() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = env.vhost().await;
        let user = env.user("pw", "").await;
        let path = permission_path(&vhost, &user);

        assert_bad_request(
            &env.api.put(&path, json!({})).await,
            json!("[{key_missing,configure},{key_missing,write},{key_missing,read}]"),
            "PUT {}",
        );
        assert_bad_request(
            &env.api.put(&path, json!({"configure": ".*"})).await,
            json!("[{key_missing,write},{key_missing,read}]"),
            "PUT configure only",
        );
        // An invalid regex is refused (RabbitMQ's reason is an Erlang term).
        let reply = env
            .api
            .put(&path, json!({"configure": "(", "write": "", "read": ""}))
            .await;
        assert_status(&reply, 400, "PUT an invalid regex");
        assert_eq!(reply.json["error"], "bad_request");
        assert_not_found(&env.api.get(&path).await, "nothing was stored");
    })
    .await;
}

// ---------------------------------------------------------------------------
// password hashes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn users_show_their_password_as_a_salted_sha256_hash() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = env.user("correct horse", "").await;
        let reply = env.api.get(&user_path(&user)).await;
        assert_eq!(
            reply.json["hashing_algorithm"],
            "rabbit_password_hashing_sha256"
        );
        let hash = reply.json["password_hash"]
            .as_str()
            .expect("a password_hash")
            .to_string();
        let raw = decode_base64(&hash);
        assert_eq!(raw.len(), 4 + 32, "4-byte salt + SHA-256: {hash}");
        let salt: [u8; 4] = raw[..4].try_into().unwrap();
        assert_eq!(hash, rabbit_hash(salt, "correct horse"));

        // Setting the password again salts it afresh.
        let reply = env
            .api
            .put(
                &user_path(&user),
                json!({"password": "correct horse", "tags": ""}),
            )
            .await;
        assert_status(&reply, 204, "PUT the same password");
        let again = env.api.get(&user_path(&user)).await.json["password_hash"]
            .as_str()
            .unwrap()
            .to_string();
        assert_ne!(again, hash, "a new salt");
        let salt: [u8; 4] = decode_base64(&again)[..4].try_into().unwrap();
        assert_eq!(again, rabbit_hash(salt, "correct horse"));
    })
    .await;
}

#[tokio::test]
async fn a_user_created_from_a_password_hash_logs_in_with_that_password() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let hash = rabbit_hash([0xde, 0xad, 0xbe, 0xef], "from-hash");

        let user = unique("perm-user");
        env.put_user(
            &user,
            json!({
                "password_hash": hash,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ""
            }),
        )
        .await;
        let reply = env.api.get(&user_path(&user)).await;
        assert_eq!(
            reply.json["password_hash"],
            hash.as_str(),
            "stored as given"
        );
        assert_eq!(
            reply.json["hashing_algorithm"],
            "rabbit_password_hashing_sha256"
        );
        env.permit("/", &user, ALL, ALL, ALL).await;
        env.login(&user, "from-hash", "/").await;
        env.assert_login_refused(&user, "From-hash", "/", 403, LOGIN_REFUSED)
            .await;

        // Without hashing_algorithm, SHA-256 is assumed.
        let user = unique("perm-user");
        env.put_user(&user, json!({"password_hash": hash, "tags": ""}))
            .await;
        let reply = env.api.get(&user_path(&user)).await;
        assert_eq!(
            reply.json["hashing_algorithm"],
            "rabbit_password_hashing_sha256"
        );
        env.permit("/", &user, ALL, ALL, ALL).await;
        env.login(&user, "from-hash", "/").await;
    })
    .await;
}

#[tokio::test]
async fn an_empty_password_hash_refuses_every_password() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = unique("perm-user");
        env.put_user(&user, json!({"password_hash": "", "tags": "management"}))
            .await;
        let reply = env.api.get(&user_path(&user)).await;
        assert_eq!(reply.json["password_hash"], "");
        env.permit("/", &user, ALL, ALL, ALL).await;
        for password in ["", "guest", "anything"] {
            env.assert_login_refused(&user, password, "/", 403, LOGIN_REFUSED)
                .await;
            let reply = env.api.as_user(&user, password).get("/api/overview").await;
            assert_login_failed(&reply, &format!("API login with {password:?}"));
        }
    })
    .await;
}

#[tokio::test]
async fn a_user_put_without_a_password_cannot_log_in() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        // Created without password or hash: 201, stored with a hash of the
        // empty password, and RabbitMQ never accepts an empty password.
        let user = unique("perm-user");
        env.put_user(&user, json!({"tags": ""})).await;
        let reply = env.api.get(&user_path(&user)).await;
        assert_eq!(
            reply.json["hashing_algorithm"],
            "rabbit_password_hashing_sha256"
        );
        env.permit("/", &user, ALL, ALL, ALL).await;
        for password in ["", "guest"] {
            env.assert_login_refused(&user, password, "/", 403, LOGIN_REFUSED)
                .await;
        }

        // An existing user updated without a password loses it: the hash is
        // cleared.
        let user = env.user("pw", "").await;
        env.permit("/", &user, ALL, ALL, ALL).await;
        env.login(&user, "pw", "/").await;
        let reply = env
            .api
            .put(&user_path(&user), json!({"tags": "management"}))
            .await;
        assert_status(&reply, 204, "PUT without a password");
        let body = env.api.get(&user_path(&user)).await.json;
        assert_eq!(body["password_hash"], "");
        assert_eq!(body["tags"], json!(["management"]));
        env.assert_login_refused(&user, "pw", "/", 403, LOGIN_REFUSED)
            .await;
    })
    .await;
}

#[tokio::test]
async fn bad_password_hashes_are_400() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = unique("perm-user");
        let path = user_path(&user);
        env.remove_later(path.clone());

        let reply = env
            .api
            .put(
                &path,
                json!({"password": "pw", "password_hash": "", "tags": ""}),
            )
            .await;
        assert_bad_request(
            &reply,
            json!("both_password_and_password_hash_are_provided"),
            "password and password_hash",
        );
        let reply = env
            .api
            .put(&path, json!({"password_hash": "!!!", "tags": ""}))
            .await;
        assert_bad_request(&reply, json!(["not_base64", "!!!"]), "not base64");
        assert_not_found(&env.api.get(&path).await, "no user was created");
    })
    .await;
}

// ---------------------------------------------------------------------------
// bad input
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_json_bodies_are_400_not_json() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let vhost = unique("perm-vhost");
        let user = unique("perm-user");
        env.remove_later(vhost_path(&vhost));
        env.remove_later(user_path(&user));
        let cases = [
            (user_path(&user), "{\"password\": "),
            (user_path(&user), "[]"),
            (vhost_path(&vhost), "{nope"),
            (permission_path("/", "guest"), "[1"),
        ];
        for (path, body) in cases {
            let reply = env.api.request("PUT", &path, Some(body.to_string())).await;
            assert_bad_request(&reply, json!("not_json"), &format!("PUT {path} {body}"));
        }
        assert_not_found(&env.api.get(&user_path(&user)).await, "no user");
        assert_not_found(&env.api.get(&vhost_path(&vhost)).await, "no vhost");
        let reply = env.api.get(&permission_path("/", "guest")).await;
        assert_eq!(
            reply.json,
            permission("/", "guest", ALL, ALL, ALL),
            "guest's permissions are unchanged"
        );
    })
    .await;
}

#[tokio::test]
async fn a_user_without_tags_is_400_tags_not_present() {
    within(async {
        let Some(mut env) = Env::start().await else {
            return;
        };
        let user = unique("perm-user");
        let path = user_path(&user);
        env.remove_later(path.clone());
        let reply = env.api.put(&path, json!({"password": "pw"})).await;
        assert_bad_request(&reply, json!("tags_not_present"), "PUT without tags");
        assert_not_found(&env.api.get(&path).await, "no user was created");
    })
    .await;
}

// ---------------------------------------------------------------------------
// persistence (Leveret only)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn users_vhosts_and_permissions_survive_a_restart() {
    if against_other_broker() {
        // Restarting the shared RabbitMQ node is not something a test should do.
        return;
    }
    within(async {
        let data = TempDir::new("permissions-restart");
        let mut broker = BrokerProcess::start(data.path());
        let api = Api {
            addr: broker.mgmt_addr(),
            user: "guest".into(),
            password: "guest".into(),
        };
        let vhost = "kept-vhost";
        let user = "kept-user";
        let hashed = "hashed-user";
        let hash = rabbit_hash([1, 2, 3, 4], "hashed-pw");
        let reply = api
            .put(&vhost_path(vhost), json!({"description": "d"}))
            .await;
        assert_status(&reply, 201, "PUT vhost");
        let reply = api
            .put(
                &user_path(user),
                json!({"password": "pw", "tags": "management"}),
            )
            .await;
        assert_status(&reply, 201, "PUT user");
        let reply = api
            .put(
                &user_path(hashed),
                json!({"password_hash": hash, "tags": ""}),
            )
            .await;
        assert_status(&reply, 201, "PUT hashed user");
        for u in [user, hashed] {
            let reply = api
                .put(
                    &permission_path(vhost, u),
                    json!({"configure": APP, "write": APP, "read": APP}),
                )
                .await;
            assert_status(&reply, 201, "PUT permissions");
        }
        let user_before = api.get(&user_path(user)).await.json;

        broker.sigterm_and_wait();
        let broker = BrokerProcess::start(data.path());
        let api = Api {
            addr: broker.mgmt_addr(),
            ..api
        };

        assert_eq!(api.get(&user_path(user)).await.json, user_before);
        assert_eq!(
            api.get(&user_path(hashed)).await.json["password_hash"],
            hash.as_str()
        );
        assert_eq!(api.get(&vhost_path(vhost)).await.json["description"], "d");
        let reply = api
            .get(&format!("/api/vhosts/{}/permissions", enc(vhost)))
            .await;
        let mut listed = reply.json.as_array().expect("a list").clone();
        listed.sort_by_key(|p| p["user"].as_str().unwrap().to_string());
        assert_eq!(
            listed,
            vec![
                permission(vhost, "guest", ALL, ALL, ALL),
                permission(vhost, hashed, APP, APP, APP),
                permission(vhost, user, APP, APP, APP),
            ]
        );
        let reply = api.as_user(user, "pw").get("/api/overview").await;
        assert_status(&reply, 200, "API login after the restart");

        let connect = |u: &str, p: &str| {
            let uri = format!("amqp://{u}:{p}@{}/{vhost}", broker.addr());
            async move {
                timed_for(
                    WAIT,
                    "connection.open",
                    Connection::connect(&uri, ConnectionProperties::default()),
                )
                .await
            }
        };
        let conn = connect(user, "pw")
            .await
            .expect("the user logs in after a restart");
        connect(hashed, "hashed-pw")
            .await
            .expect("so does the one created from a hash");
        let err = connect(user, "wrong").await.expect_err("wrong password");
        assert_eq!(amqp_error(&err), Some((403, LOGIN_REFUSED.to_string())));

        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "app.q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("the permissions still allow app.*");
        let ch = conn.create_channel().await.unwrap();
        let err = ch
            .queue_declare(
                "other.q".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect_err("and still refuse the rest");
        assert_eq!(
            amqp_error(&err),
            Some((
                403,
                format!(
                    "ACCESS_REFUSED - access to queue 'other.q' in vhost '{vhost}' \
                     refused for user '{user}'"
                )
            ))
        );
    })
    .await;
}
