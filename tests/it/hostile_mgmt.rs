//! The management API and the data directory against hostile input (issue
//! 14, findings 2 and 10): guest from a non-loopback address, names and
//! field-table keys over 255 bytes, `columns` and `sort` that used to panic a
//! handler, and the data directory's permissions.
//!
//! These start the broker in-process with their own listeners: the API must
//! be reachable from a non-loopback address, and a broker is restarted on the
//! same data directory. The non-loopback client runs in a network namespace
//! the test makes itself (root and iproute2 needed; skipped loudly without).

use crate::common;

use common::http::{Api, Reply};
use common::unique;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A broker running in this process on `data_dir`, which outlives it.
struct Running {
    mgmt: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts a broker whose API listens on `mgmt_bind`.
    async fn start(mgmt_bind: &str, data_dir: &Path) -> Running {
        let mut config = leveret::Config::default();
        config.server.data_dir = data_dir.to_path_buf();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mgmt_listener = tokio::net::TcpListener::bind(mgmt_bind).await.unwrap();
        let mgmt = mgmt_listener.local_addr().unwrap();
        common::deadlock::watch();
        let broker = leveret::Broker::open(config).expect("the broker opens its data directory");
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            leveret::serve(listener, Some(mgmt_listener), broker, async {
                let _ = rx.await;
            })
            .await;
        });
        Running { mgmt, stop, task }
    }

    /// The API as guest, reached at `ip` on the API's port.
    fn api_at(&self, ip: IpAddr) -> Api {
        Api {
            addr: SocketAddr::new(ip, self.mgmt.port()),
            user: "guest".into(),
            password: "guest".into(),
        }
    }

    fn api(&self) -> Api {
        self.api_at(self.mgmt.ip())
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// A fresh data directory path (not created) that is removed on drop.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> DataDir {
        DataDir(std::env::temp_dir().join(unique("leveret-hostile-mgmt")))
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace this test makes for itself, joined to the root
/// namespace by a veth pair. The broker listens in the root namespace; a
/// client inside the namespace reaches it at `host_v4` / `host_v6`, private
/// test addresses on the veth's host end that exist only while this value
/// lives. No traffic leaves the machine, and none goes to its real
/// interfaces. Namespace and veth are deleted on drop, panic or not.
struct TestNet {
    ns: String,
    host_if: String,
    host_v4: IpAddr,
    host_v6: Option<IpAddr>,
}

impl TestNet {
    /// `None`, with the reason printed, only when this process cannot make
    /// network namespaces (not root, or no `ip netns`). Any other failure to
    /// set up panics: where namespaces work, the test must run.
    fn new() -> Option<TestNet> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: not root, so this test cannot make a network namespace");
            return None;
        }
        let ip_netns = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output();
        if !ip_netns.is_ok_and(|o| o.status.success()) {
            eprintln!("SKIPPED: `ip netns` (iproute2) is not available");
            return None;
        }
        static N: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let mut net = TestNet {
            ns: format!("lvt-{pid}-{n}"),
            // Interface names are at most 15 bytes: "lvt" + pid (≤ 7) + "h" + n.
            host_if: format!("lvt{pid}h{n}"),
            host_v4: format!("10.213.{}.{}", pid % 256, 4 * (n % 64) + 1)
                .parse()
                .unwrap(),
            host_v6: None,
        };
        let peer_if = format!("lvt{pid}p{n}");
        let peer_v4 = format!("10.213.{}.{}", pid % 256, 4 * (n % 64) + 2);
        let (ns, host_if) = (net.ns.as_str(), net.host_if.as_str());
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", net.host_v4),
            "dev",
            host_if,
        ]);
        ip(&["link", "set", host_if, "up"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{peer_v4}/30"),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", ns, "link", "set", &peer_if, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let v6 = format!("fd13:{:x}:{n:x}::", pid & 0xffff);
        let with_v6 = try_ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6}1/64"),
            "dev",
            host_if,
            "nodad",
        ]) && try_ip(&[
            "-n",
            ns,
            "-6",
            "addr",
            "add",
            &format!("{v6}2/64"),
            "dev",
            &peer_if,
            "nodad",
        ]);
        if !with_v6 {
            eprintln!("NOTE: no IPv6 on the test veth; IPv6 cases are not tested");
        }
        net.host_v6 = with_v6.then(|| format!("{v6}1").parse().unwrap());
        Some(net)
    }

    /// One request to the API at `api`, made by curl from inside the
    /// namespace, so the broker sees it come from a non-loopback address.
    async fn request(&self, api: &Api, method: &str, path: &str, body: Option<Value>) -> Reply {
        let mut command = std::process::Command::new("ip");
        command.args([
            "netns",
            "exec",
            &self.ns,
            "curl",
            "--silent",
            "--show-error",
        ]);
        command.args(["--noproxy", "*", "--globoff", "--max-time", "10"]);
        command.args(["--user", &format!("{}:{}", api.user, api.password)]);
        command.args(["--request", method, "--write-out", "\n%{http_code}"]);
        if let Some(body) = body {
            command.args(["--header", "Content-Type: application/json"]);
            command.args(["--data-binary", &body.to_string()]);
        }
        command.arg(format!("http://{}{path}", api.addr));
        // The broker runs on this test's runtime: wait for curl off it.
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("curl runs (apt-get install curl)");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {method} {path}: {stderr}");
        let (text, status) = stdout.rsplit_once('\n').expect("curl wrote a status");
        Reply {
            status: status.parse().unwrap(),
            json: serde_json::from_str(text).unwrap_or(Value::Null),
            text: text.to_string(),
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peer end, and with it the pair;
        // the host end is deleted too in case the move into it never happened.
        let _ = try_ip(&["link", "del", &self.host_if]);
        let _ = try_ip(&["netns", "del", &self.ns]);
    }
}

fn try_ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The API as seen from inside a [`TestNet`].
struct Far<'a> {
    net: &'a TestNet,
    api: Api,
}

impl Far<'_> {
    fn as_user(&self, user: &str, password: &str) -> Far<'_> {
        Far {
            net: self.net,
            api: self.api.as_user(user, password),
        }
    }
    async fn get(&self, path: &str) -> Reply {
        self.net.request(&self.api, "GET", path, None).await
    }
    async fn put(&self, path: &str, body: Value) -> Reply {
        self.net.request(&self.api, "PUT", path, Some(body)).await
    }
}

/// A request whose handler may have died: `None` when the connection
/// closed without an answer (a panicked handler).
async fn try_request(api: &Api, method: &str, path: &str, body: Option<Value>) -> Option<Reply> {
    let api = api.clone();
    let (method, path) = (method.to_string(), path.to_string());
    tokio::spawn(async move {
        api.request(&method, &path, body.map(|b| b.to_string()))
            .await
    })
    .await
    .ok()
}

/// Asserts RabbitMQ's 400 `{"error":"bad_request","reason":…}` whose
/// reason mentions `needle`.
async fn assert_bad_request(api: &Api, method: &str, path: &str, body: Value, needle: &str) {
    let reply = try_request(api, method, path, Some(body))
        .await
        .unwrap_or_else(|| panic!("{method} {path}: no answer (the handler panicked)"));
    assert_eq!(reply.status, 400, "{method} {path}: {}", reply.text);
    assert_eq!(reply.json["error"], "bad_request", "{}", reply.text);
    let reason = reply.json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(needle),
        "{method} {path}: reason {reason:?} should mention {needle:?}"
    );
}

fn long(n: usize) -> String {
    "x".repeat(n)
}

// ------------------------------------------------------- loopback users

/// Finding 2: as RabbitMQ's management plugin (rabbit_mgmt_util), a user in
/// `loopback_users` that logs in from a non-loopback address gets 401
/// `not_authorised` "User can only log in via localhost", after the
/// password was checked (a wrong one is still "Login failed").
#[tokio::test]
async fn guest_is_refused_over_http_from_a_non_loopback_address() {
    let Some(net) = TestNet::new() else { return };
    let dir = DataDir::new();
    let broker = Running::start("0.0.0.0:0", &dir.0).await;
    let local = broker.api_at("127.0.0.1".parse().unwrap());
    let far = Far {
        net: &net,
        api: broker.api_at(net.host_v4),
    };

    // From loopback guest is the administrator it always was.
    assert_eq!(local.get("/api/users").await.status, 200);

    let refused = far.get("/api/users").await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    assert_eq!(
        refused.json,
        json!({"error": "not_authorised", "reason": "User can only log in via localhost"})
    );
    let wrong = far.as_user("guest", "wrong").get("/api/overview").await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.json,
        json!({"error": "not_authorized", "reason": "Login failed"})
    );

    // The attack: guest from afar makes itself a remote administrator.
    let made = far
        .put(
            "/api/users/mallory",
            json!({"password": "mallory", "tags": "administrator"}),
        )
        .await;
    assert_eq!(made.status, 401, "{}", made.text);
    let granted = far
        .put(
            "/api/permissions/%2F/mallory",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(granted.status, 401);
    assert_eq!(local.get("/api/users/mallory").await.status, 404);

    // A user not in loopback_users may use the API from anywhere.
    let put = local
        .put(
            "/api/users/remote-admin",
            json!({"password": "s3cret", "tags": "administrator"}),
        )
        .await;
    assert_eq!(put.status, 201);
    let admin = far.as_user("remote-admin", "s3cret");
    assert_eq!(admin.get("/api/whoami").await.status, 200);
    broker.stop().await;
}

/// RabbitMQ's `rabbit_net:is_loopback`: 127.0.0.0/8, ::1 and IPv4-mapped
/// 127.x are loopback. A dual-stack API sees 127.0.0.1 as ::ffff:127.0.0.1
/// and must still let guest in; a client on a non-loopback address, IPv4
/// (seen as ::ffff:10.213.x.y) or IPv6, must not.
#[tokio::test]
async fn loopback_is_judged_as_rabbitmq_judges_it_on_a_dual_stack_listener() {
    let Some(net) = TestNet::new() else { return };
    let dir = DataDir::new();
    let Ok(probe) = std::net::TcpListener::bind("[::]:0") else {
        eprintln!("skipped: no IPv6");
        return;
    };
    drop(probe);
    let broker = Running::start("[::]:0", &dir.0).await;
    for ip in ["127.0.0.1", "127.0.0.2", "::1"] {
        let reply = broker.api_at(ip.parse().unwrap()).get("/api/whoami").await;
        assert_eq!(reply.status, 200, "guest via {ip}: {}", reply.text);
    }
    for ip in [Some(net.host_v4), net.host_v6].into_iter().flatten() {
        let far = Far {
            net: &net,
            api: broker.api_at(ip),
        };
        let reply = far.get("/api/whoami").await;
        assert_eq!(reply.status, 401, "guest via {ip}: {}", reply.text);
        assert_eq!(reply.json["error"], "not_authorised");
    }
    broker.stop().await;
}

// ------------------------------------------------------- data directory

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir` that others may read.
fn world_readable(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let m = mode(&path);
            if m & 0o004 != 0 {
                found.push((path.clone(), m));
            }
            if path.is_dir() {
                todo.push(path);
            }
        }
    }
    found
}

/// Finding 2: RabbitMQ's data directory is 0750 and its files are created
/// under umask 027 (its systemd unit): message bodies, password hashes and
/// the topology are not for other local users.
#[tokio::test]
async fn a_new_data_directory_is_0750_and_nothing_in_it_is_world_readable() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_eq!(
        api.put("/api/queues/%2F/kept", json!({"durable": true}))
            .await
            .status,
        201
    );
    let published = api
        .post(
            "/api/exchanges/%2F/amq.default/publish",
            json!({"properties": {"delivery_mode": 2}, "routing_key": "kept",
                   "payload": "secret", "payload_encoding": "string"}),
        )
        .await;
    assert_eq!(published.json["routed"], true);
    broker.stop().await;
    assert_eq!(mode(&dir.0), 0o750);
    assert_eq!(world_readable(&dir.0), vec![]);
}

/// An existing data directory that others may enter loses those rights (and
/// the broker warns); the owner's and group's are left as the operator set
/// them.
#[tokio::test]
async fn an_existing_world_open_data_directory_is_closed_to_others() {
    let dir = DataDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    broker.stop().await;
    assert_eq!(mode(&dir.0), 0o770);
}

// ------------------------------------------------------- names over 255 bytes

/// Finding 10: what AMQP carries as a short string (names, routing keys,
/// field-table keys, most properties) must fit in 255 bytes; longer ones are
/// refused with 400 instead of being cut or lost at the next start.
#[tokio::test]
async fn names_over_255_bytes_are_refused_with_400() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    let l = long(300);
    assert_bad_request(&api, "PUT", &format!("/api/vhosts/{l}"), json!({}), "255").await;
    assert_bad_request(
        &api,
        "PUT",
        &format!("/api/exchanges/%2F/{l}"),
        json!({"type": "direct", "durable": true}),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "PUT",
        &format!("/api/queues/%2F/{l}"),
        json!({"durable": true}),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        "/api/definitions",
        json!({"vhosts": [{"name": l}]}),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        "/api/definitions",
        json!({"exchanges": [{"name": l, "vhost": "/", "type": "fanout"}]}),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        "/api/definitions",
        json!({"queues": [{"name": l, "vhost": "/"}]}),
        "255",
    )
    .await;
    let vhosts = api.get("/api/vhosts").await.json;
    assert_eq!(vhosts.as_array().map(Vec::len), Some(1), "{vhosts}");
    let exchanges = api.get("/api/exchanges/%2F").await.json;
    assert!(
        !exchanges.to_string().contains(&l[..256]),
        "a long exchange was made"
    );
    broker.stop().await;
}

/// The longest names that fit survive a restart whole, and a durable queue
/// in a vhost with a 255-byte name is still there.
#[tokio::test]
async fn names_of_255_bytes_survive_a_restart() {
    let dir = DataDir::new();
    let name = long(255);
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_eq!(
        api.put(&format!("/api/vhosts/{name}"), json!({}))
            .await
            .status,
        201
    );
    let q = format!("/api/queues/{name}/{name}");
    let x = format!("/api/exchanges/{name}/{name}");
    assert_eq!(api.put(&q, json!({"durable": true})).await.status, 201);
    assert_eq!(
        api.put(&x, json!({"type": "fanout", "durable": true}))
            .await
            .status,
        201
    );
    broker.stop().await;
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_eq!(api.get(&q).await.json["name"], name.as_str());
    assert_eq!(api.get(&x).await.json["name"], name.as_str());
    broker.stop().await;
}

/// Finding 10: a 300-byte key in queue, exchange or binding arguments used
/// to panic the handler (or, in a release build, write a table whose key
/// length byte is wrong).
#[tokio::test]
async fn argument_keys_over_255_bytes_are_refused_with_400() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    let l = long(300);
    assert_bad_request(
        &api,
        "PUT",
        "/api/queues/%2F/args",
        json!({"arguments": {l.clone(): 1}}),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "PUT",
        "/api/queues/%2F/args",
        json!({"arguments": {"x-nested": {"a": [{l.clone(): 1}]}}}),
        "255",
    )
    .await;
    assert_eq!(api.get("/api/queues/%2F/args").await.status, 404);
    assert_bad_request(
        &api,
        "PUT",
        "/api/exchanges/%2F/args",
        json!({"type": "headers", "arguments": {l.clone(): "v"}}),
        "255",
    )
    .await;
    assert_eq!(
        api.put("/api/queues/%2F/bound", json!({})).await.status,
        201
    );
    assert_bad_request(
        &api,
        "POST",
        "/api/bindings/%2F/e/amq.direct/q/bound",
        json!({"routing_key": "k", "arguments": {l.clone(): 1}}),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        "/api/bindings/%2F/e/amq.direct/q/bound",
        json!({"routing_key": l}),
        "255",
    )
    .await;
    let bindings = api.get("/api/queues/%2F/bound/bindings").await.json;
    assert_eq!(bindings.as_array().map(Vec::len), Some(1), "{bindings}");
    broker.stop().await;
}

/// `n` JSON objects nested in all: `{"k": {"k": … {}}}`.
fn nested(n: usize) -> Value {
    (1..n).fold(json!({}), |inner, _| json!({ "k": inner }))
}

/// The API nests tables and arrays no deeper than AMQP lets a client (100
/// in all): deeper arguments or headers are refused with 400 instead of
/// being stored where a client could never have put them.
#[tokio::test]
async fn arguments_nest_no_deeper_than_amqp_allows() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_bad_request(
        &api,
        "PUT",
        "/api/queues/%2F/too-deep",
        json!({"durable": true, "arguments": nested(101)}),
        "deeper than 100",
    )
    .await;
    assert_eq!(api.get("/api/queues/%2F/too-deep").await.status, 404);
    let in_array = json!({"a": [[nested(99)]]});
    assert_bad_request(
        &api,
        "PUT",
        "/api/queues/%2F/too-deep",
        json!({"arguments": in_array}),
        "deeper than 100",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        json!({"properties": {"headers": nested(101)}, "routing_key": "r",
               "payload": "p", "payload_encoding": "string"}),
        "deeper than 100",
    )
    .await;
    let put = api
        .put(
            "/api/queues/%2F/deepest",
            json!({"durable": true, "arguments": nested(100)}),
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.text);
    broker.stop().await;
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let queue = broker.api().get("/api/queues/%2F/deepest").await;
    assert_eq!(queue.json["arguments"], nested(100));
    broker.stop().await;
}

/// Finding 10: a 300-byte content_type or header key on publish used to
/// panic the handler; so does any other short-string property and the
/// routing key. The message is not enqueued.
#[tokio::test]
async fn publish_with_short_strings_over_255_bytes_is_refused_with_400() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_eq!(
        api.put("/api/queues/%2F/target", json!({})).await.status,
        201
    );
    let l = long(300);
    let publish = "/api/exchanges/%2F/amq.default/publish";
    let body = |properties: Value, routing_key: &str| {
        json!({"properties": properties, "routing_key": routing_key,
               "payload": "p", "payload_encoding": "string"})
    };
    assert_bad_request(
        &api,
        "POST",
        publish,
        body(json!({"content_type": l}), "target"),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        publish,
        body(json!({"headers": {l.clone(): 1}}), "target"),
        "255",
    )
    .await;
    assert_bad_request(
        &api,
        "POST",
        publish,
        body(
            json!({"headers": {"h": {"nested": {l.clone(): 1}}}}),
            "target",
        ),
        "255",
    )
    .await;
    for property in [
        "content_encoding",
        "correlation_id",
        "reply_to",
        "message_id",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ] {
        assert_bad_request(
            &api,
            "POST",
            publish,
            body(json!({property: l}), "target"),
            "255",
        )
        .await;
    }
    assert_bad_request(&api, "POST", publish, body(json!({}), &l), "255").await;
    let queue = api.get("/api/queues/%2F/target").await.json;
    assert_eq!(queue["messages"], 0, "{queue}");
    // Within bounds, publishing still works.
    let ok = api
        .post(publish, body(json!({"content_type": long(255)}), "target"))
        .await;
    assert_eq!(ok.json["routed"], true, "{}", ok.text);
    broker.stop().await;
}

// ------------------------------------------------------- list parameters

/// Finding 10: `?columns=name,name.x` asked for a key inside a string and
/// panicked the handler of every list. RabbitMQ answers the list with the
/// plain column.
#[tokio::test]
async fn columns_naming_a_path_inside_a_plain_value_do_not_panic() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_eq!(api.put("/api/queues/%2F/cols", json!({})).await.status, 201);
    for list in [
        "/api/queues",
        "/api/queues/%2F",
        "/api/exchanges",
        "/api/bindings",
        "/api/vhosts",
        "/api/users",
        "/api/permissions",
        "/api/connections",
        "/api/channels",
        "/api/consumers",
    ] {
        for columns in ["name,name.x", "name.x,name", "name,name.x.y,vhost"] {
            let path = format!("{list}?columns={columns}");
            let reply = try_request(&api, "GET", &path, None)
                .await
                .unwrap_or_else(|| panic!("GET {path}: no answer (the handler panicked)"));
            assert_eq!(reply.status, 200, "GET {path}: {}", reply.text);
        }
    }
    let queues = api.get("/api/queues/%2F?columns=name,name.x").await.json;
    assert_eq!(queues, json!([{"name": "cols"}]));
    broker.stop().await;
}

/// Sorting by a column whose values have different JSON types (numbers,
/// strings, missing) used a comparison that is not a total order; Rust's
/// sort panics on that. Order as Erlang orders terms: numbers first.
#[tokio::test]
async fn sorting_by_a_column_of_mixed_types_does_not_panic() {
    let dir = DataDir::new();
    let broker = Running::start("127.0.0.1:0", &dir.0).await;
    let api = broker.api();
    assert_eq!(api.put("/api/vhosts/mixed", json!({})).await.status, 201);
    // A fixed pseudo-random mix: a comparison that calls numbers and strings
    // equal sorts a list like this one inconsistently.
    let mut s: u64 = 0;
    for i in 0..40 {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r = s >> 33;
        let arguments = match r % 3 {
            0 => json!({"x-k": r / 3 % 10}),
            1 => json!({"x-k": format!("{}", r / 3 % 10)}),
            _ => json!({}),
        };
        let put = api
            .put(
                &format!("/api/queues/mixed/s{i:02}"),
                json!({"arguments": arguments}),
            )
            .await;
        assert_eq!(put.status, 201, "{}", put.text);
    }
    for path in [
        "/api/queues/mixed?sort=arguments.x-k",
        "/api/queues/mixed?sort=arguments.x-k&sort_reverse=true",
    ] {
        let reply = try_request(&api, "GET", path, None)
            .await
            .unwrap_or_else(|| panic!("GET {path}: no answer (the handler panicked)"));
        assert_eq!(reply.status, 200, "{}", reply.text);
        let keys: Vec<Value> = reply
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["arguments"]["x-k"].clone())
            .collect();
        let kinds: Vec<u8> = keys
            .iter()
            .map(|k| match k {
                Value::Number(_) => 0,
                Value::Null => 1,
                _ => 2,
            })
            .collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        if path.contains("reverse") {
            sorted.reverse();
        }
        assert_eq!(
            kinds, sorted,
            "numbers, then missing, then strings: {keys:?}"
        );
    }
    broker.stop().await;
}

// The management listener's bounds (RabbitMQ's Ranch/Cowboy defaults, set
// short here): a header timeout, a connection cap, a header size limit and
// a body that may not stall.

/// guest:guest as an Authorization header.
const GUEST: &str = "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n";

/// A broker whose management listener has the limits `set` gives it.
async fn broker_with(set: impl FnOnce(&mut leveret::config::MgmtConfig)) -> common::TestBroker {
    let mut config = leveret::Config::default();
    set(&mut config.mgmt);
    common::TestBroker::start_with(config).await
}

async fn connect(broker: &common::TestBroker) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(broker.mgmt_addr.unwrap())
        .await
        .unwrap()
}

/// Reads until the peer closes; `Some(time taken)`, or `None` when it is
/// still open at `deadline`. Whatever arrives before the close is ignored.
async fn closed_within(socket: &mut tokio::net::TcpStream, deadline: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One response's status line and body, read off a keep-alive connection
/// (axum's replies carry a Content-Length); `None` if none came in `wait`.
async fn response(socket: &mut tokio::net::TcpStream, wait: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if got.len() >= end + 4 + length {
                    let status = head.lines().next().unwrap_or("").to_string();
                    return Some(status);
                }
            }
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

async fn send(socket: &mut tokio::net::TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    socket.write_all(bytes).await.unwrap();
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: leveret\r\n{GUEST}\r\n")
}

#[tokio::test]
async fn a_client_that_stops_sending_headers_is_disconnected() {
    let broker = broker_with(|m| m.request_timeout_ms = 300).await;
    // Silent from the start, stopped in the request line, stopped in a
    // header (slowloris), and idle after one answered request.
    let mut silent = connect(&broker).await;
    let mut in_line = connect(&broker).await;
    send(&mut in_line, b"GET /api/overv").await;
    let mut in_header = connect(&broker).await;
    send(&mut in_header, b"GET /api/overview HTTP/1.1\r\nHost: lev").await;
    let mut idle = connect(&broker).await;
    send(&mut idle, get("/api/overview").as_bytes()).await;
    let status = response(&mut idle, Duration::from_secs(10)).await;
    assert_eq!(status.as_deref(), Some("http/1.1 200 ok"));
    for (what, socket) in [
        ("silent", &mut silent),
        ("stopped in the request line", &mut in_line),
        ("stopped in a header", &mut in_header),
        ("idle after a request", &mut idle),
    ] {
        let closed = closed_within(socket, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "{what}: still connected after 10 s");
    }
    // Sending a byte now and then does not keep a connection: the time is
    // for the whole header.
    let mut slowloris = connect(&broker).await;
    let start = Instant::now();
    send(&mut slowloris, b"GET / HTTP/1.1\r\n").await;
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(10) {
        use tokio::io::AsyncWriteExt;
        if slowloris.write_all(b"X-A: b\r\n").await.is_err() {
            cut = true;
            break;
        }
        if closed_within(&mut slowloris, Duration::from_millis(100))
            .await
            .is_some()
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a header sent a line every 100 ms is still being read after 10 s"
    );
    broker.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_and_existing_ones_are_served() {
    let broker = broker_with(|m| {
        m.max_connections = 2;
        m.request_timeout_ms = 60_000;
    })
    .await;
    let wait = Duration::from_secs(10);
    let mut first = connect(&broker).await;
    let mut second = connect(&broker).await;
    for socket in [&mut first, &mut second] {
        send(socket, get("/api/whoami").as_bytes()).await;
        assert_eq!(
            response(socket, wait).await.as_deref(),
            Some("http/1.1 200 ok")
        );
    }
    // Past the cap: the kernel completes the TCP handshake, but the broker
    // does not take the connection, so its request is not answered.
    let mut third = connect(&broker).await;
    send(&mut third, get("/api/whoami").as_bytes()).await;
    assert_eq!(
        response(&mut third, Duration::from_millis(700)).await,
        None,
        "a third connection was served with max_connections = 2"
    );
    // The connections inside the cap are still answered.
    send(&mut first, get("/api/overview").as_bytes()).await;
    assert_eq!(
        response(&mut first, wait).await.as_deref(),
        Some("http/1.1 200 ok")
    );
    // One ends: the waiting connection gets in and is answered.
    drop(second);
    assert_eq!(
        response(&mut third, wait).await.as_deref(),
        Some("http/1.1 200 ok")
    );
    send(&mut first, get("/api/whoami").as_bytes()).await;
    assert_eq!(
        response(&mut first, wait).await.as_deref(),
        Some("http/1.1 200 ok")
    );
    broker.stop().await;
}

#[tokio::test]
async fn headers_over_the_limit_get_431_and_the_connection_closes() {
    let broker = broker_with(|m| m.max_header_size = 8192).await;
    let wait = Duration::from_secs(10);
    // Just under the limit is served.
    let mut fits = connect(&broker).await;
    let header = format!("X-Pad: {}\r\n", "a".repeat(6000));
    let request = format!("GET /api/whoami HTTP/1.1\r\nHost: leveret\r\n{GUEST}{header}\r\n");
    send(&mut fits, request.as_bytes()).await;
    assert_eq!(
        response(&mut fits, wait).await.as_deref(),
        Some("http/1.1 200 ok")
    );
    // A complete request with 16 KiB of headers.
    let mut big = connect(&broker).await;
    let header = format!("X-Pad: {}\r\n", "a".repeat(16 * 1024));
    let request = format!("GET /api/whoami HTTP/1.1\r\nHost: leveret\r\n{GUEST}{header}\r\n");
    send(&mut big, request.as_bytes()).await;
    let status = response(&mut big, wait).await;
    assert_eq!(
        status.as_deref(),
        Some("http/1.1 431 request header fields too large")
    );
    assert!(closed_within(&mut big, wait).await.is_some());
    // Headers that never end: the broker stops reading once its buffer is
    // full instead of growing it, so writing 8 MiB fails long before the end.
    let mut endless = connect(&broker).await;
    send(&mut endless, b"GET /api/whoami HTTP/1.1\r\nX-Pad: ").await;
    let chunk = vec![b'a'; 64 * 1024];
    let mut written = 0;
    while written < 8 << 20 {
        use tokio::io::AsyncWriteExt;
        match tokio::time::timeout(wait, endless.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            _ => break,
        }
    }
    assert!(written < 8 << 20, "8 MiB of one header were read");
    broker.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stalls_fails_and_its_connection_closes() {
    let broker = broker_with(|m| m.idle_timeout_ms = 300).await;
    let mut stalled = connect(&broker).await;
    let head = format!(
        "POST /api/definitions HTTP/1.1\r\nHost: leveret\r\n{GUEST}\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"users\""
    );
    send(&mut stalled, head.as_bytes()).await;
    let closed = closed_within(&mut stalled, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "a body stalled for 10 s is still awaited");
    broker.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_size_get_413() {
    let broker = broker_with(|m| m.max_body_size = 1000).await;
    let mut socket = connect(&broker).await;
    let body = format!("{{\"users\": [], \"pad\": \"{}\"}}", "a".repeat(2000));
    let request = format!(
        "POST /api/definitions HTTP/1.1\r\nHost: leveret\r\n{GUEST}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    send(&mut socket, request.as_bytes()).await;
    let status = response(&mut socket, Duration::from_secs(10)).await;
    assert_eq!(status.as_deref(), Some("http/1.1 413 payload too large"));
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_its_responses_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let broker = broker_with(|m| m.send_timeout_ms = 500).await;
    // A small receive window, so the broker's writes stall soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader_never = socket.connect(broker.mgmt_addr.unwrap()).await.unwrap();
    let request = get("/api/overview").repeat(100);
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(
            Duration::from_secs(1),
            reader_never.write_all(request.as_bytes()),
        )
        .await
        {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => {
                cut = true;
                break;
            }
        }
    }
    assert!(
        cut,
        "a client that reads no response is still connected after 20 s"
    );
    broker.stop().await;
}
