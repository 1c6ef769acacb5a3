//! Cluster mode's roles (issue 20): three real `leveret` processes and a
//! private etcd, all on loopback ports this test picks. Exactly one node
//! leads; a leader killed or paused past its lease is replaced within
//! seconds and a paused one does not serve on waking; etcd's own restart
//! never shows two leaders; followers forward clients to the leader; only
//! the leader writes the ISR; `leveret ctl cluster status` shows it all.
//!
//! Roles are read from each node's `/metrics` (`leveret_cluster_leader`,
//! 1 only while the node leads with a valid lease), which followers serve
//! without credentials.

use crate::common;

use common::etcd::Etcd;
use common::process::{BrokerProcess, TempDir};
use common::unique;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One broker of the cluster, and what stays when it is killed.
struct Node {
    name: String,
    _dir: TempDir,
    process: Option<BrokerProcess>,
    amqp: String,
    mgmt: SocketAddr,
}

struct TestCluster {
    etcd: Etcd,
    name: String,
    nodes: Vec<Node>,
}

impl TestCluster {
    /// etcd and three nodes; `None` where etcd is not installed.
    fn start() -> Option<TestCluster> {
        let etcd = Etcd::start()?;
        let name = unique("cluster");
        let mut cluster = TestCluster {
            etcd,
            name,
            nodes: Vec::new(),
        };
        for i in 1..=3 {
            let node_name = format!("n{i}");
            let dir = TempDir::new(&format!("cluster-{node_name}"));
            let process = cluster.launch(&node_name, &dir);
            cluster.nodes.push(Node {
                amqp: process.addr().to_string(),
                mgmt: process.mgmt_addr(),
                name: node_name,
                _dir: dir,
                process: Some(process),
            });
        }
        Some(cluster)
    }

    /// n3 is configured with flags, the others through the environment.
    fn launch(&self, node_name: &str, dir: &TempDir) -> BrokerProcess {
        if node_name == "n3" {
            let etcd = self.etcd.endpoint();
            let dir = dir.path().to_str().expect("UTF-8 path");
            return BrokerProcess::spawn(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--stream-listen",
                "127.0.0.1:0",
                "--mgmt-listen",
                "127.0.0.1:0",
                "--data-dir",
                dir,
                "--cluster-etcd",
                &etcd,
                "--cluster-name",
                &self.name,
                "--node-name",
                node_name,
                "--replication-listen",
                "127.0.0.1:0",
            ]);
        }
        let etcd = format!("[\"{}\"]", self.etcd.endpoint());
        BrokerProcess::start_with_env(
            dir.path(),
            &[
                ("LEVERET_CLUSTER_ETCD", &etcd),
                ("LEVERET_CLUSTER_NAME", &self.name),
                ("LEVERET_CLUSTER_NODE_NAME", node_name),
                ("LEVERET_CLUSTER_REPLICATION_LISTEN", "127.0.0.1:0"),
            ],
        )
    }

    /// Each running node's answer to "do you lead?" (`None`: no answer,
    /// as from a stopped or killed node).
    async fn leading(&self) -> Vec<Option<bool>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            let answer = match &node.process {
                None => None,
                Some(_) => get(node.mgmt, "/metrics").await.and_then(|(_, body)| {
                    body.lines()
                        .find_map(|l| l.strip_prefix("leveret_cluster_leader "))
                        .map(|v| v.trim() == "1")
                }),
            };
            all.push(answer);
        }
        all
    }

    /// The one node that leads, waiting up to `within`; panics if two ever
    /// say they do.
    async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let leading = self.leading().await;
            let leaders: Vec<usize> = (0..leading.len())
                .filter(|&i| leading[i] == Some(true))
                .collect();
            assert!(leaders.len() <= 1, "two leaders at once: {leading:?}");
            if let [one] = leaders[..] {
                return one;
            }
            assert!(
                Instant::now() < deadline,
                "no leader within {within:?}: {leading:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until etcd records both followers of `leader` in sync (as
    /// `/api/nodes` of a follower shows, from etcd's view).
    async fn all_in_sync(&self, leader: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let follower = &self.nodes[(leader + 1) % 3];
        loop {
            let in_sync = get(follower.mgmt, "/api/nodes")
                .await
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v.as_array().cloned())
                .map_or(0, |nodes| {
                    nodes
                        .iter()
                        .filter(|n| n["role"] == "follower" && n["in_sync"] == true)
                        .count()
                });
            if in_sync == 2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the followers are not in sync after {within:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter_map(|n| {
                let p = n.process.as_ref()?;
                let lines: Vec<String> = p
                    .log_lines()
                    .into_iter()
                    .filter(|l| l.contains("cluster"))
                    .collect();
                Some(format!("--- {}:\n{}", n.name, lines.join("\n")))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].process.as_ref().expect("running").pid();
        let ok = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {signal} {pid}");
    }
}

/// One GET with every step bounded (a stopped node answers nothing):
/// status and body, or `None`.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(1), exchange)
        .await
        .ok()
        .flatten()
}

fn uri(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// A connection and a channel within `limit`, or `None`.
async fn try_open(addr: &str, limit: Duration) -> Option<(lapin::Connection, lapin::Channel)> {
    let attempt = async {
        let c = lapin::Connection::connect(&uri(addr), lapin::ConnectionProperties::default())
            .await
            .ok()?;
        let ch = c.create_channel().await.ok()?;
        Some((c, ch))
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_node_of_three_leads() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    // And it stays so: every node answers, one says yes.
    for _ in 0..10 {
        let leading = cluster.leading().await;
        assert!(leading.iter().all(Option::is_some), "{leading:?}");
        assert_eq!(
            leading.iter().filter(|l| **l == Some(true)).count(),
            1,
            "{leading:?}"
        );
        assert_eq!(leading[leader], Some(true));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // /api/nodes lists all three, with their roles.
    let (status, body) = get(cluster.nodes[0].mgmt, "/api/nodes")
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let roles: Vec<(String, String)> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = (0..3)
        .map(|i| {
            let role = if i == leader { "leader" } else { "follower" };
            (format!("leveret@n{}", i + 1), role.to_string())
        })
        .collect();
    assert_eq!(roles, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_clients_served_within_5_s() {
    let Some(mut cluster) = TestCluster::start() else {
        return;
    };
    let old = cluster.leader(Duration::from_secs(10)).await;
    cluster.all_in_sync(old, Duration::from_secs(20)).await;
    // Confirmed on the leader (and so on both followers' disks) ...
    let (c, ch) = try_open(&cluster.nodes[old].amqp, Duration::from_secs(5))
        .await
        .expect("the leader serves");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("orders".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..300 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                format!("order-{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    drop((c, ch));
    cluster.nodes[old].process.take().expect("running").kill9();
    let killed = Instant::now();
    let survivors: Vec<String> = (0..3)
        .filter(|&i| i != old)
        .map(|i| cluster.nodes[i].amqp.clone())
        .collect();
    // Clients of either survivor (a follower forwards to the new leader).
    let served = loop {
        let mut served = None;
        for addr in &survivors {
            if let Some((c, ch)) = try_open(addr, Duration::from_millis(500)).await {
                let q = unique("failover");
                let declared = ch
                    .queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions::default(),
                        FieldTable::default(),
                    )
                    .await;
                let _ = c.close(200, "bye".into()).await;
                if declared.is_ok() {
                    served = Some(killed.elapsed());
                    break;
                }
            }
        }
        if let Some(t) = served {
            break t;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no node served a client 15 s after the leader's SIGKILL\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let new = cluster.leader(Duration::from_secs(1)).await;
    assert_ne!(new, old);
    println!("failover: SIGKILL of the leader to a client served: {served:?}");
    assert!(served < Duration::from_secs(5), "failover took {served:?}");
    // ... so the new leader has every one of them, in order.
    let (c, ch) = try_open(&cluster.nodes[new].amqp, Duration::from_secs(5))
        .await
        .expect("the new leader serves");
    let q = ch
        .queue_declare(
            "orders".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 300, "every confirmed message survived");
    for i in 0..300 {
        let got = ch
            .basic_get("orders".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message");
        assert_eq!(got.delivery.data, format!("order-{i}").as_bytes());
    }
    let _ = c.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_replaced_and_serves_nothing_on_waking() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let old = cluster.leader(Duration::from_secs(10)).await;
    // A publisher with confirms on the leader, before the pause.
    let (conn, ch) = try_open(&cluster.nodes[old].amqp, Duration::from_secs(5))
        .await
        .expect("connect to the leader");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("paused");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    cluster.signal(old, "-STOP");
    // Past the 3 s lease: another node takes over.
    let paused = Instant::now();
    let new = loop {
        let leading = cluster.leading().await;
        if let Some(i) = (0..3).find(|&i| i != old && leading[i] == Some(true)) {
            break i;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(10),
            "no new leader while the old one is stopped: {leading:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "pause: SIGSTOP of the leader to a new leader: {:?}",
        paused.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(old, "-CONT");
    // Woken, the old leader confirms nothing: its connection is closed.
    let confirm = async {
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"after the pause",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), confirm).await;
    assert!(
        !matches!(&outcome, Ok(Ok(c)) if c.is_ack()),
        "the paused leader confirmed a publish on waking: {outcome:?}"
    );
    drop(conn);
    // It says so at once, and is a follower of the new leader soon after.
    let woke = Instant::now();
    loop {
        let leading = cluster.leading().await;
        assert_ne!(
            leading[old],
            Some(true),
            "the old leader still leads: {leading:?}"
        );
        assert_eq!(leading[new], Some(true), "{leading:?}");
        let process = cluster.nodes[old].process.as_ref().unwrap();
        let following = process.log_lines().iter().any(|l| {
            l.contains("this node is a follower")
                && l.contains(&format!("leader={}", cluster.nodes[new].name))
        });
        if following && leading[old] == Some(false) {
            break;
        }
        assert!(
            woke.elapsed() < Duration::from_secs(10),
            "the old leader did not follow the new one\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its address now reaches the new leader: a queue declared there is
    // on the new leader.
    let (c, ch) = try_open(&cluster.nodes[old].amqp, Duration::from_secs(5))
        .await
        .expect("a client through the old leader");
    let q2 = unique("through-old");
    ch.queue_declare(
        q2.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = c.close(200, "bye".into()).await;
    let path = format!("/api/queues/%2f/{q2}");
    let (status, body) = get(cluster.nodes[new].mgmt, &path).await.expect("answer");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_never_shows_two_leaders() {
    let Some(mut cluster) = TestCluster::start() else {
        return;
    };
    cluster.leader(Duration::from_secs(10)).await;
    cluster.etcd.kill9();
    // Without etcd, no lease can be renewed: the leader fences itself.
    let down = Instant::now();
    let mut fenced = None;
    while down.elapsed() < Duration::from_secs(5) {
        let leading = cluster.leading().await;
        let leaders = leading.iter().filter(|l| **l == Some(true)).count();
        assert!(leaders <= 1, "two leaders with etcd down: {leading:?}");
        if leaders == 0 && fenced.is_none() {
            fenced = Some(down.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fenced = fenced.expect("the leader kept leading with etcd down");
    println!("etcd down: the leader stopped leading after {fenced:?}");
    assert!(fenced < Duration::from_secs(3), "fenced after {fenced:?}");
    cluster.etcd.restart();
    let up = Instant::now();
    // `leader` panics if two ever lead at once.
    cluster.leader(Duration::from_secs(15)).await;
    println!("etcd back: a leader again after {:?}", up.elapsed());
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        cluster.leader(Duration::from_secs(1)).await;
    }
    // The leader serves again: its store reopened (if it led before, in
    // the same process).
    let leader = cluster.leader(Duration::from_secs(1)).await;
    let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(10))
        .await
        .expect("a client of the leader after etcd's restart");
    let q = unique("after-etcd");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = c.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_clients_to_the_leader() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let (c, ch) = try_open(&cluster.nodes[follower].amqp, Duration::from_secs(5))
        .await
        .expect("a client through a follower");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let q = unique("forwarded");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let confirm = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"through a follower",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = c.close(200, "bye".into()).await;
    // The queue and its message are the leader's.
    let path = format!("/api/queues/%2f/{q}");
    let (status, body) = get(cluster.nodes[leader].mgmt, &path)
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    // The follower's own API has no store: it names the leader instead.
    let (status, body) = get(cluster.nodes[follower].mgmt, &path)
        .await
        .expect("answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("not_leader")
            && body.contains(&format!("leveret@{}", cluster.nodes[leader].name)),
        "{body}"
    );
    // And answers about the cluster: its metrics and the quorum check.
    let (status, _) = get(
        cluster.nodes[follower].mgmt,
        "/api/health/checks/node-is-quorum-critical",
    )
    .await
    .expect("answer");
    assert_eq!(status, 200, "a follower outside the ISR is not critical");
}

fn member(name: &str) -> leveret::Member {
    leveret::Member {
        node_name: name.into(),
        advertised_uri: format!("amqp://{name}:5672"),
        replication: format!("{name}:5679"),
        management: String::new(),
        amqp: String::new(),
        amqps: String::new(),
        stream: String::new(),
        stream_tls: String::new(),
        version: "test".into(),
        started_at: 0,
    }
}

async fn role_becomes(
    cluster: &leveret::Cluster,
    want: impl Fn(&leveret::Role) -> bool,
) -> leveret::Role {
    let mut role = cluster.role();
    let got = tokio::time::timeout(Duration::from_secs(10), role.wait_for(|r| want(r)))
        .await
        .expect("the role in time")
        .expect("the cluster runs")
        .clone();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_the_isr_and_only_the_isr_may_lead() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let config = leveret::config::ClusterConfig {
        etcd: vec![etcd.endpoint()],
        name: unique("isr"),
        ..Default::default()
    };
    let a = leveret::Cluster::start(&config, member("a")).await.unwrap();
    let term = match role_becomes(&a, |r| matches!(r, leveret::Role::Leader { .. })).await {
        leveret::Role::Leader { term } => term,
        other => unreachable!("{other:?}"),
    };
    let b = leveret::Cluster::start(&config, member("b")).await.unwrap();
    role_becomes(
        &b,
        |r| matches!(r, leveret::Role::Follower { leader } if leader.node_name == "a"),
    )
    .await;

    // A follower cannot write it; the leader can.
    assert!(matches!(
        b.set_isr(vec!["b".into()]).await,
        Err(leveret::ClusterError::NotLeader)
    ));
    a.set_isr(vec!["c".into()]).await.unwrap();
    let key = format!("/leveret/{}/isr", config.name);
    let stored = etcd.ctl(&["get", &key, "--print-value-only"]).unwrap();
    let isr: leveret::Isr = serde_json::from_str(stored.trim()).unwrap();
    assert_eq!(
        isr,
        leveret::Isr {
            leader: "a".into(),
            term,
            followers: vec!["c".into()]
        }
    );

    // Deposed (its key deleted behind its back), the old leader's write is
    // refused by etcd even before it notices.
    let leader_key = format!("/leveret/{}/leader", config.name);
    etcd.ctl(&["del", &leader_key]).unwrap();
    assert!(a.set_isr(vec!["a".into(), "b".into()]).await.is_err());
    let stored = etcd.ctl(&["get", &key, "--print-value-only"]).unwrap();
    assert!(stored.contains("\"followers\":[\"c\"]"), "{stored}");

    // b is not in the ISR: with no leader it must not take over; a (the
    // ISR's leader) may, and does.
    role_becomes(
        &a,
        |r| matches!(r, leveret::Role::Leader { term: t } if *t > term),
    )
    .await;
    assert!(!matches!(*b.role().borrow(), leveret::Role::Leader { .. }));
}

/// `leveret ctl` against `mgmt`: exit code and stdout.
fn ctl(mgmt: SocketAddr, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_leveret"))
        .args(["ctl", "--url", &format!("http://{mgmt}")])
        .args(args)
        .output()
        .expect("run leveret ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_cluster_status_shows_nodes_roles_and_the_leader() {
    let Some(cluster) = TestCluster::start() else {
        return;
    };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let leader_name = format!("leveret@{}", cluster.nodes[leader].name);
    // Wait until every node's view holds all three members.
    let deadline = Instant::now() + Duration::from_secs(5);
    for node in &cluster.nodes {
        loop {
            let (code, out) = ctl(node.mgmt, &["cluster", "status"]);
            if code == 0 && out.matches("leveret@n").count() >= 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ctl cluster status: {code}\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let follower = &cluster.nodes[(leader + 1) % 3];
    let (code, out) = ctl(follower.mgmt, &["cluster", "status"]);
    assert_eq!(code, 0, "{out}");
    println!("{out}");
    assert!(
        out.starts_with(&format!("leader: {leader_name}\n")),
        "{out}"
    );
    let header = out.lines().nth(2).unwrap();
    for column in [
        "node",
        "role",
        "in_sync",
        "advertised_uri",
        "lease_ms",
        "lag_bytes",
        "lag_ms",
    ] {
        assert!(header.contains(column), "{header}");
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        let row = out
            .lines()
            .find(|l| l.contains(&format!("leveret@{} ", node.name)))
            .unwrap_or_else(|| panic!("no row for {}: {out}", node.name));
        let role = if i == leader { "leader" } else { "follower" };
        assert!(row.contains(role), "{row}");
        assert!(row.contains(&format!("amqp://{}:", node.name)), "{row}");
    }
    // Both followers in sync: stopping any one node keeps a leader and an
    // in-sync follower (min_insync 1), so none is critical.
    cluster.all_in_sync(leader, Duration::from_secs(20)).await;
    for node in [&cluster.nodes[leader], follower] {
        let (code, out) = ctl(node.mgmt, &["check_if_node_is_quorum_critical"]);
        assert_eq!((code, out.as_str()), (0, "ok\n"), "{}", node.name);
    }
    // The leader reports each follower's replication lag.
    let (_, out) = ctl(cluster.nodes[leader].mgmt, &["cluster", "status"]);
    let lag = out
        .lines()
        .nth(2)
        .unwrap()
        .split_whitespace()
        .position(|c| c == "lag_bytes")
        .unwrap();
    for row in out.lines().filter(|l| l.contains(" follower ")) {
        let cell = row.split_whitespace().nth(lag).unwrap_or("");
        assert!(
            cell.parse::<u64>().is_ok(),
            "a number of bytes: {row}\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_of_the_same_name_neither_registers_nor_leads() {
    let Some(_etcd) = Etcd::start() else {
        return;
    };
    let config = leveret::config::ClusterConfig {
        etcd: vec![_etcd.endpoint()],
        name: unique("twins"),
        ..Default::default()
    };
    let first = leveret::Cluster::start(&config, member("twin"))
        .await
        .unwrap();
    let term = match role_becomes(&first, |r| matches!(r, leveret::Role::Leader { .. })).await {
        leveret::Role::Leader { term } => term,
        other => unreachable!("{other:?}"),
    };
    let second = leveret::Cluster::start(&config, member("twin"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(*second.role().borrow(), leveret::Role::Starting);
    assert_eq!(*first.role().borrow(), leveret::Role::Leader { term });
}

/// Addresses of the running nodes, for clients that reconnect anywhere.
type Addresses = std::sync::Arc<parking_lot::Mutex<Vec<String>>>;

/// A connection to the first node of `addrs` that answers, trying each.
async fn connect_any(addrs: &Addresses) -> (lapin::Connection, lapin::Channel) {
    loop {
        let list = addrs.lock().clone();
        for addr in list {
            if let Some(open) = try_open(&addr, Duration::from_millis(500)).await {
                return open;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes ids 0.. in confirmed batches of 20 until `stop`, to any node;
/// a batch whose confirms did not all come back is sent again (at least
/// once). Returns the confirmed ids, and when each confirm came.
async fn publish_until(
    addrs: Addresses,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    confirmed: std::sync::Arc<parking_lot::Mutex<Vec<(u64, Instant)>>>,
) {
    let mut next = 0u64;
    'connect: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (_c, ch) = connect_any(&addrs).await;
        if ch
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .is_err()
        {
            continue;
        }
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let mut pending = Vec::new();
            for id in next..next + 20 {
                let Ok(p) = ch
                    .basic_publish(
                        "".into(),
                        "orders".into(),
                        BasicPublishOptions::default(),
                        id.to_string().as_bytes(),
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                else {
                    continue 'connect;
                };
                pending.push(p);
            }
            for p in pending {
                match tokio::time::timeout(Duration::from_secs(5), p).await {
                    Ok(Ok(c)) if c.is_ack() => {}
                    _ => continue 'connect,
                }
            }
            let now = Instant::now();
            confirmed
                .lock()
                .extend((next..next + 20).map(|id| (id, now)));
            next += 20;
        }
    }
}

/// Consumes with manual acks from any node until `stop`, noting each id.
async fn consume_until(
    addrs: Addresses,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    received: std::sync::Arc<parking_lot::Mutex<Vec<u64>>>,
) {
    use futures_lite::StreamExt;
    'connect: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (_c, ch) = connect_any(&addrs).await;
        if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
            continue;
        }
        let Ok(mut consumer) = ch
            .basic_consume(
                "orders".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
        else {
            continue;
        };
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                Err(_) => {}
                Ok(Some(Ok(d))) => {
                    let id = std::str::from_utf8(&d.data).unwrap().parse().unwrap();
                    if d.ack(BasicAckOptions::default()).await.is_err() {
                        continue 'connect;
                    }
                    received.lock().push(id);
                }
                Ok(_) => continue 'connect,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_confirmed_message() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let Some(mut cluster) = TestCluster::start() else {
        return;
    };
    let mut leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.all_in_sync(leader, Duration::from_secs(20)).await;
    {
        let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(5))
            .await
            .expect("the leader serves");
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("orders".into(), durable, FieldTable::default())
            .await
            .unwrap();
        let _ = c.close(200, "bye".into()).await;
    }
    let addrs: Addresses = Arc::new(parking_lot::Mutex::new(
        cluster.nodes.iter().map(|n| n.amqp.clone()).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let received = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let publisher = tokio::spawn(publish_until(
        addrs.clone(),
        stop.clone(),
        confirmed.clone(),
    ));
    let consumer = tokio::spawn(consume_until(addrs.clone(), stop.clone(), received.clone()));
    for round in 1..=2 {
        // A random moment while publishers and consumers run.
        let wait = 500 + u64::from(rand::random::<u16>() % 1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let before = confirmed.lock().len();
        cluster.nodes[leader]
            .process
            .take()
            .expect("running")
            .kill9();
        let killed = Instant::now();
        let next = cluster.leader(Duration::from_secs(10)).await;
        assert_ne!(next, leader);
        let failover = killed.elapsed();
        // Unavailable until a publish is confirmed again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let unavailable = loop {
            if let Some((_, at)) = confirmed.lock().get(before) {
                break at.saturating_duration_since(killed);
            }
            assert!(
                Instant::now() < deadline,
                "no confirm after the kill\n{}",
                cluster.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!(
            "round {round}: killed {} after {wait} ms; new leader {} in {failover:?}; confirms resumed after {unavailable:?}",
            cluster.nodes[leader].name, cluster.nodes[next].name
        );
        // The killed node comes back, catches up and is in sync again.
        let name = cluster.nodes[leader].name.clone();
        let process = cluster.launch(&name, &cluster.nodes[leader]._dir);
        cluster.nodes[leader].amqp = process.addr().to_string();
        cluster.nodes[leader].mgmt = process.mgmt_addr();
        cluster.nodes[leader].process = Some(process);
        *addrs.lock() = cluster.nodes.iter().map(|n| n.amqp.clone()).collect();
        cluster.all_in_sync(next, Duration::from_secs(30)).await;
        leader = next;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    consumer.await.unwrap();
    // What the consumer did not get is still queued on the leader.
    let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(5))
        .await
        .expect("the leader serves");
    let mut drained = Vec::new();
    while let Some(got) = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        drained.push(
            std::str::from_utf8(&got.delivery.data)
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
    }
    let _ = c.close(200, "bye".into()).await;
    let received = received.lock().clone();
    let seen: std::collections::HashSet<u64> =
        received.iter().chain(drained.iter()).copied().collect();
    let confirmed: Vec<u64> = confirmed.lock().iter().map(|(id, _)| *id).collect();
    let lost: Vec<u64> = confirmed
        .iter()
        .copied()
        .filter(|id| !seen.contains(id))
        .collect();
    let duplicates = received.len() + drained.len() - seen.len();
    println!(
        "confirmed {}, consumed {}, left queued {}, duplicates {duplicates}, lost {}",
        confirmed.len(),
        received.len(),
        drained.len(),
        lost.len()
    );
    assert!(confirmed.len() > 100, "the publisher made progress");
    assert!(lost.is_empty(), "confirmed but lost: {lost:?}");
}

/// `leveret ctl` against a management address: exit code, stdout and stderr.
fn ctl_all(mgmt: SocketAddr, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_leveret"))
        .args(["ctl", "--url", &format!("http://{mgmt}")])
        .args(args)
        .output()
        .expect("run leveret ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// A node's entry in `/api/nodes` as `node` sees it (`None`: not listed).
async fn node_entry(node: SocketAddr, name: &str) -> Option<serde_json::Value> {
    let (_, body) = get(node, "/api/nodes").await?;
    let all: serde_json::Value = serde_json::from_str(&body).ok()?;
    all.as_array()?
        .iter()
        .find(|n| n["name"] == format!("leveret@{name}").as_str())
        .cloned()
}

/// `name`'s entry in `node`'s `/api/nodes` once `pred` holds for it
/// (views are refreshed from etcd every quarter second), within 5 s.
async fn entry_when(
    node: SocketAddr,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match node_entry(node, name).await {
            Some(e) if pred(&e) => return e,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!(
                "leveret@{name} not as expected: {other:?}\n{:?}",
                get(node, "/api/nodes").await
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanly_stopped_leader_hands_over_at_once_and_stays_listed_until_forgotten() {
    let Some(mut cluster) = TestCluster::start() else {
        return;
    };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.all_in_sync(leader, Duration::from_secs(20)).await;
    // The leader's /metrics has a series per follower.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = get(cluster.nodes[leader].mgmt, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let followers: Vec<&Node> = (0..3)
            .filter(|&i| i != leader)
            .map(|i| &cluster.nodes[i])
            .collect();
        let shown = followers.iter().all(|n| {
            let node = format!("{{node=\"leveret@{}\"}}", n.name);
            metrics.contains(&format!("leveret_cluster_follower_in_sync{node} 1"))
                && metrics.contains(&format!("leveret_cluster_follower_lag_bytes{node} "))
                && metrics.contains(&format!("leveret_cluster_follower_lag_seconds{node} "))
        });
        if shown {
            break;
        }
        assert!(Instant::now() < deadline, "no follower gauges:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped = cluster.nodes[leader].name.clone();
    let prefix = format!("/leveret/{}/", cluster.name);
    cluster.nodes[leader]
        .process
        .as_mut()
        .expect("running")
        .sigterm_and_wait();
    // A clean stop revokes the lease: the leader key and the node's record
    // are gone when the process has exited, not a lease's life later.
    let exited = Instant::now();
    let keys = cluster
        .etcd
        .ctl(&["get", "--prefix", "--keys-only", &prefix])
        .expect("etcdctl get");
    let checked = exited.elapsed();
    assert!(
        !keys.contains(&format!("{prefix}nodes/{stopped}")),
        "the stopped node's record outlived it ({checked:?} after exit):\n{keys}"
    );
    let leader_key = cluster
        .etcd
        .ctl(&["get", &format!("{prefix}leader")])
        .expect("etcdctl get");
    assert!(
        !leader_key.contains(&format!("\"node_name\":\"{stopped}\"")),
        "the stopped leader's key outlived it ({checked:?} after exit):\n{leader_key}"
    );
    cluster.nodes[leader].process = None;
    let next = cluster.leader(Duration::from_secs(10)).await;
    println!(
        "{stopped} stopped cleanly; {} leads {:?} after it exited",
        cluster.nodes[next].name,
        exited.elapsed()
    );
    let next_mgmt = cluster.nodes[next].mgmt;
    let follower = 3 - leader - next;
    let follower_name = cluster.nodes[follower].name.clone();

    // Still a member, as a stopped RabbitMQ disc node is.
    let entry = entry_when(next_mgmt, &stopped, |e| e["running"] == false).await;
    assert_eq!(entry["role"], "stopped", "{entry}");
    let (code, out) = ctl_all(next_mgmt, &["cluster", "status"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&format!("leveret@{stopped}")) && l.contains("stopped")),
        "{out}"
    );

    // Forgetting: only on the leader, only a stopped node, never itself.
    let (code, out) = ctl_all(
        cluster.nodes[follower].mgmt,
        &["forget_cluster_node", &stopped],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not the cluster's leader"), "{out}");
    let (code, out) = ctl_all(next_mgmt, &["forget_cluster_node", &follower_name]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{follower_name} is running; stop it before forgetting it"
        )),
        "{out}"
    );
    let (code, out) = ctl_all(
        next_mgmt,
        &["forget_cluster_node", &cluster.nodes[next].name],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("a node cannot forget itself"), "{out}");
    assert!(node_entry(next_mgmt, &follower_name).await.is_some());

    let (code, out) = ctl_all(
        next_mgmt,
        &["forget_cluster_node", &format!("leveret@{stopped}")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("leveret@{stopped} forgotten")),
        "{out}"
    );
    assert!(node_entry(next_mgmt, &stopped).await.is_none());
    let keys = cluster
        .etcd
        .ctl(&["get", "--prefix", "--keys-only", &prefix])
        .expect("etcdctl get");
    assert!(!keys.contains(&format!("/{stopped}")), "{keys}");
    let (code, out) = ctl_all(next_mgmt, &["forget_cluster_node", &stopped]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("404"), "{out}");

    // A forgotten node started again simply joins anew.
    let process = cluster.launch(&stopped, &cluster.nodes[leader]._dir);
    cluster.nodes[leader].amqp = process.addr().to_string();
    cluster.nodes[leader].mgmt = process.mgmt_addr();
    cluster.nodes[leader].process = Some(process);
    cluster.all_in_sync(next, Duration::from_secs(30)).await;
    entry_when(next_mgmt, &stopped, |e| e["running"] == true).await;
}

/// `/api/channels` of `node`, with credentials.
async fn channels(node: SocketAddr) -> Vec<serde_json::Value> {
    get(node, "/api/channels")
        .await
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_follower_in_sync_confirms_wait_and_the_channel_shows_them_unconfirmed() {
    let Some(mut cluster) = TestCluster::start() else {
        return;
    };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.all_in_sync(leader, Duration::from_secs(20)).await;
    let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(5))
        .await
        .expect("the leader serves");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("held".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Both followers gone: min_insync = 1 cannot be met.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for &i in &followers {
        cluster.nodes[i].process.take().expect("running").kill9();
    }
    let mut pending = Vec::new();
    for i in 0..5 {
        pending.push(
            ch.basic_publish(
                "".into(),
                "held".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    let leader_mgmt = cluster.nodes[leader].mgmt;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = channels(leader_mgmt).await;
        if all.iter().any(|c| c["messages_unconfirmed"] == 5) {
            break;
        }
        assert!(Instant::now() < deadline, "not shown unconfirmed: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Held for as long as no follower is in sync.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = pending.remove(0);
    let first = tokio::time::timeout(Duration::from_millis(10), first).await;
    assert!(
        first.is_err(),
        "confirmed with no follower in sync: {first:?}"
    );
    // One follower back: it catches up, and everything is confirmed.
    let i = followers[0];
    let name = cluster.nodes[i].name.clone();
    let process = cluster.launch(&name, &cluster.nodes[i]._dir);
    cluster.nodes[i].process = Some(process);
    for p in pending {
        let confirm = tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("confirmed once a follower is in sync")
            .unwrap();
        assert!(confirm.is_ack());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = channels(leader_mgmt).await;
        if !all.is_empty() && all.iter().all(|c| c["messages_unconfirmed"] == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "still unconfirmed: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = c.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_to_etcd_with_its_authentication_and_replication_over_tls_nothing_confirmed_is_lost(
) {
    use crate::tls::Pki;
    use common::etcd::EtcdTls;
    let pki = Pki::new("cluster");
    let etcd_pair = pki.issue("localhost", 1, None);
    let node_pair = pki.issue("node", 2, None);
    let tls = EtcdTls {
        ca: pki.ca(),
        cert: etcd_pair.cert.clone(),
        key: etcd_pair.key.clone(),
    };
    let Some(mut etcd) = Etcd::start_with(Some(tls)) else {
        return;
    };
    etcd.enable_auth("s3cret");
    let name = unique("cluster-tls");
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_string();
    let launch = |node_name: &str, dir: &TempDir| {
        let env = [
            ("LEVERET_CLUSTER_ETCD", format!("[\"{}\"]", etcd.endpoint())),
            ("LEVERET_CLUSTER_ETCD_CA", path(&pki.ca())),
            ("LEVERET_CLUSTER_ETCD_CERT", path(&node_pair.cert)),
            ("LEVERET_CLUSTER_ETCD_KEY", path(&node_pair.key)),
            ("LEVERET_CLUSTER_ETCD_USER", "root".to_string()),
            ("LEVERET_CLUSTER_ETCD_PASSWORD", "s3cret".to_string()),
            ("LEVERET_CLUSTER_NAME", name.clone()),
            ("LEVERET_CLUSTER_NODE_NAME", node_name.to_string()),
            (
                "LEVERET_CLUSTER_REPLICATION_LISTEN",
                "127.0.0.1:0".to_string(),
            ),
            ("LEVERET_CLUSTER_REPLICATION_TLS", "true".to_string()),
            ("LEVERET_TLS_CERT", path(&node_pair.cert)),
            ("LEVERET_TLS_KEY", path(&node_pair.key)),
            ("LEVERET_TLS_CA", path(&pki.ca())),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        BrokerProcess::start_with_env(dir.path(), &env)
    };
    let mut nodes = Vec::new();
    for node_name in ["n1", "n2"] {
        let dir = TempDir::new(&format!("cluster-tls-{node_name}"));
        let process = launch(node_name, &dir);
        nodes.push(Node {
            amqp: process.addr().to_string(),
            mgmt: process.mgmt_addr(),
            name: node_name.to_string(),
            _dir: dir,
            process: Some(process),
        });
    }
    let mut cluster = TestCluster { etcd, name, nodes };
    let leader = cluster.leader(Duration::from_secs(10)).await;
    let follower = 1 - leader;
    let follower_name = cluster.nodes[follower].name.clone();
    entry_when(cluster.nodes[leader].mgmt, &follower_name, |e| {
        e["in_sync"] == true
    })
    .await;
    let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(5))
        .await
        .expect("the leader serves");
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("orders".into(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..100 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    drop((c, ch));
    // Everything confirmed went to the follower over TLS: it leads alone.
    cluster.nodes[leader]
        .process
        .take()
        .expect("running")
        .kill9();
    assert_eq!(cluster.leader(Duration::from_secs(10)).await, follower);
    let (_c, ch) = try_open(&cluster.nodes[follower].amqp, Duration::from_secs(5))
        .await
        .expect("the new leader serves");
    let mut got = Vec::new();
    while let Some(m) = ch
        .basic_get("orders".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
}
