//! The management API and the data directory against hostile input (issue
//! 14, finding 2): guest from a non-loopback address and the data
//! directory's permissions.
//!
//! These start the broker in-process with their own listeners: the API must
//! be reachable on a non-loopback address, and a broker is restarted on the
//! same data directory.

mod common;

use common::http::Api;
use common::unique;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

/// This machine's address on its default route, if it has one that is not
/// loopback. Connecting a UDP socket sends nothing; it only picks the
/// source address the kernel would use.
fn non_loopback_v4() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("203.0.113.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn non_loopback_v6() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("[::]:0").ok()?;
    s.connect("[2001:db8::1]:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

// ------------------------------------------------------- loopback users

/// Finding 2: as RabbitMQ's management plugin (rabbit_mgmt_util), a user in
/// `loopback_users` that logs in from a non-loopback address gets 401
/// `not_authorised` "User can only log in via localhost", after the
/// password was checked (a wrong one is still "Login failed").
#[tokio::test]
async fn guest_is_refused_over_http_from_a_non_loopback_address() {
    let Some(remote) = non_loopback_v4() else {
        eprintln!("skipped: this machine has no non-loopback IPv4 address");
        return;
    };
    let dir = DataDir::new();
    let broker = Running::start("0.0.0.0:0", &dir.0).await;
    let local = broker.api_at("127.0.0.1".parse().unwrap());
    let far = broker.api_at(remote);

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
/// and must still let guest in; its non-loopback IPv6 address must not.
#[tokio::test]
async fn loopback_is_judged_as_rabbitmq_judges_it_on_a_dual_stack_listener() {
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
    for ip in [non_loopback_v4(), non_loopback_v6()].into_iter().flatten() {
        let reply = broker.api_at(ip).get("/api/whoami").await;
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
