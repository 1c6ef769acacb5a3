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
//!
//! Under load (issue 20, part 5; RELIABILITY.md, "Cluster failover"): the
//! leader killed, paused, or paused just past its own deadline; etcd
//! killed; a follower killed; a rolling restart; a node added. Each runs
//! a confirming publisher and a manual-ack consumer (`load::Load`) and
//! checks that every confirmed message was consumed or is still queued.

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

    /// The in-sync replica set as etcd holds it now (`None` while etcd
    /// does not answer or none is recorded).
    fn isr(&self) -> Option<leveret::Isr> {
        let key = format!("/leveret/{}/isr", self.name);
        let stored = self.etcd.ctl(&["get", &key, "--print-value-only"])?;
        serde_json::from_str(stored.trim()).ok()
    }

    /// Waits until etcd records every other running node as an in-sync
    /// follower of `leader`.
    async fn all_in_sync(&self, leader: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let want: Vec<&str> = (0..self.nodes.len())
            .filter(|&i| i != leader && self.nodes[i].process.is_some())
            .map(|i| self.nodes[i].name.as_str())
            .collect();
        loop {
            let isr = self.isr();
            let done = isr.as_ref().is_some_and(|isr| {
                isr.leader == self.nodes[leader].name
                    && want.iter().all(|n| isr.followers.iter().any(|f| f == n))
            });
            if done {
                // The nodes' own views (management API, quorum checks)
                // read etcd every 250 ms.
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{want:?} not in sync with {} after {within:?}: {isr:?}\n{}",
                self.nodes[leader].name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until etcd's in-sync set no longer names node `i`.
    async fn out_of_isr(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let isr = self.isr();
            if isr
                .as_ref()
                .is_some_and(|isr| !isr.followers.contains(&self.nodes[i].name))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} still in sync after {within:?}: {isr:?}\n{}",
                self.nodes[i].name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL of node `i` (it stays down until [`relaunch`](Self::relaunch)).
    fn kill9(&mut self, i: usize) {
        self.nodes[i].process.take().expect("running").kill9();
    }

    /// A clean stop (SIGTERM) of node `i`, waiting for its exit.
    fn stop(&mut self, i: usize) {
        let mut process = self.nodes[i].process.take().expect("running");
        process.sigterm_and_wait();
    }

    /// Starts stopped node `i` again on its data directory.
    fn relaunch(&mut self, i: usize) {
        let process = self.launch(&self.nodes[i].name, &self.nodes[i]._dir);
        self.nodes[i].amqp = process.addr().to_string();
        self.nodes[i].mgmt = process.mgmt_addr();
        self.nodes[i].process = Some(process);
    }

    /// Starts a new node of the same cluster; its index.
    fn add_node(&mut self, node_name: &str) -> usize {
        let dir = TempDir::new(&format!("cluster-{node_name}"));
        let process = self.launch(node_name, &dir);
        self.nodes.push(Node {
            amqp: process.addr().to_string(),
            mgmt: process.mgmt_addr(),
            name: node_name.to_string(),
            _dir: dir,
            process: Some(process),
        });
        self.nodes.len() - 1
    }

    /// The AMQP addresses of the running nodes.
    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.amqp.clone())
            .collect()
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

/// Declares the durable queue `orders` and publishes `bodies` to it,
/// persistent, in confirm mode; each must be acked.
async fn publish_confirmed(ch: &lapin::Channel, bodies: impl Iterator<Item = String>) {
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
    for body in bodies {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
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
    publish_confirmed(&ch, (0..300).map(|i| format!("order-{i}"))).await;
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
    let q = crate::queues::passive(&ch, "orders").await.unwrap();
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
        b.set_isr(term, vec!["b".into()]).await,
        Err(leveret::ClusterError::NotLeader)
    ));
    a.set_isr(term, vec!["c".into()]).await.unwrap();
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
    assert!(a.set_isr(term, vec!["a".into(), "b".into()]).await.is_err());
    let stored = etcd.ctl(&["get", &key, "--print-value-only"]).unwrap();
    assert!(stored.contains("\"followers\":[\"c\"]"), "{stored}");

    // b is not in the ISR: with no leader it must not take over; a (the
    // ISR's leader) may, and does.
    let next = match role_becomes(
        &a,
        |r| matches!(r, leveret::Role::Leader { term: t } if *t > term),
    )
    .await
    {
        leveret::Role::Leader { term } => term,
        other => unreachable!("{other:?}"),
    };
    assert!(!matches!(*b.role().borrow(), leveret::Role::Leader { .. }));
    // Leading again, it writes only as the new term: a late write asked
    // for by the old term's replication is refused.
    assert!(matches!(
        a.set_isr(term, vec!["b".into()]).await,
        Err(leveret::ClusterError::NotLeader)
    ));
    a.set_isr(next, vec!["b".into()]).await.unwrap();
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

/// Under load (issue 20, part 5): a publisher with confirms and a consumer
/// with manual acks run against the cluster while a test breaks it; at the
/// end every confirmed id must have been consumed or still be queued.
mod load {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Ids published per batch, whose confirms are awaited together.
    const BATCH: u64 = 20;
    /// How long the publisher waits for a batch's confirms before it
    /// reconnects and sends the batch again.
    const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
    const QUEUE: &str = "orders";

    /// A batch whose every confirm came.
    #[derive(Clone, Copy)]
    struct Batch {
        first: u64,
        sent: Instant,
        confirmed: Instant,
    }

    /// Addresses of the running nodes, for clients that reconnect anywhere.
    type Addresses = Arc<Mutex<Vec<String>>>;

    pub(super) struct Load {
        addrs: Addresses,
        stop: Arc<AtomicBool>,
        batches: Arc<Mutex<Vec<Batch>>>,
        received: Arc<Mutex<Vec<u64>>>,
        /// The consumer is to let messages pile up from now on.
        held: Arc<AtomicBool>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    /// What the clients saw, and what is left on the leader.
    pub(super) struct Report {
        pub(super) confirmed: usize,
        pub(super) consumed: usize,
        pub(super) drained: usize,
        pub(super) duplicates: usize,
        pub(super) lost: Vec<u64>,
    }

    impl Report {
        /// Prints the counts and asserts that nothing confirmed was lost.
        pub(super) fn check(&self) {
            println!(
                "confirmed {}, consumed {}, left queued {}, duplicates {}, lost {}",
                self.confirmed,
                self.consumed,
                self.drained,
                self.duplicates,
                self.lost.len()
            );
            assert!(self.confirmed > 100, "the publisher made progress");
            assert!(self.lost.is_empty(), "confirmed but lost: {:?}", self.lost);
        }
    }

    impl Load {
        /// Declares the durable queue on the leader and starts the
        /// publisher and the consumer, both reconnecting to any running
        /// node.
        pub(super) async fn start(cluster: &TestCluster) -> Load {
            let leader = cluster.leader(Duration::from_secs(10)).await;
            let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(5))
                .await
                .expect("the leader serves");
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            ch.queue_declare(QUEUE.into(), durable, FieldTable::default())
                .await
                .unwrap();
            let _ = c.close(200, "bye".into()).await;
            let mut load = Load {
                addrs: Arc::new(Mutex::new(cluster.addresses())),
                stop: Arc::new(AtomicBool::new(false)),
                batches: Arc::default(),
                received: Arc::default(),
                held: Arc::default(),
                tasks: Vec::new(),
            };
            load.tasks = vec![
                tokio::spawn(publish(
                    load.addrs.clone(),
                    load.stop.clone(),
                    load.batches.clone(),
                )),
                tokio::spawn(consume(
                    load.addrs.clone(),
                    load.stop.clone(),
                    load.held.clone(),
                    load.received.clone(),
                )),
            ];
            load
        }

        /// The consumer disconnects and consumes no more: from now on
        /// every confirmed message stays queued, so the final check covers
        /// all of them, not only those not yet consumed.
        pub(super) fn hold_consumer(&self) {
            self.held.store(true, Ordering::Relaxed);
        }

        /// Clients reconnect to the nodes running now.
        pub(super) fn reach(&self, cluster: &TestCluster) {
            *self.addrs.lock() = cluster.addresses();
        }

        /// Confirms of publishes sent after `sent` that came before `by`.
        pub(super) fn confirmed_sent_after(&self, sent: Instant, by: Instant) -> usize {
            let batches = self.batches.lock();
            let n = batches
                .iter()
                .filter(|b| b.sent > sent && b.confirmed < by)
                .count();
            n * BATCH as usize
        }

        /// When the last confirm came.
        pub(super) fn last_confirm(&self) -> Option<Instant> {
            self.batches.lock().last().map(|b| b.confirmed)
        }

        /// Waits (up to `within`) until a batch published after `fault` is
        /// confirmed: the time from the fault until confirms resumed.
        pub(super) async fn resumed_after(
            &self,
            fault: Instant,
            within: Duration,
            cluster: &TestCluster,
        ) -> Duration {
            let deadline = Instant::now() + within;
            loop {
                let resumed = self
                    .batches
                    .lock()
                    .iter()
                    .find(|b| b.sent >= fault)
                    .map(|b| b.confirmed.saturating_duration_since(fault));
                if let Some(t) = resumed {
                    return t;
                }
                assert!(
                    Instant::now() < deadline,
                    "no publish confirmed within {within:?} of the fault\n{}",
                    cluster.logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// The longest time without a confirm between `from` and now.
        pub(super) fn longest_pause(&self, from: Instant) -> Duration {
            let mut times: Vec<Instant> = self
                .batches
                .lock()
                .iter()
                .map(|b| b.confirmed)
                .filter(|t| *t > from)
                .collect();
            times.insert(0, from);
            times.push(Instant::now());
            times
                .windows(2)
                .map(|w| w[1].saturating_duration_since(w[0]))
                .max()
                .unwrap_or_default()
        }

        /// Stops the clients, drains what is left queued on the leader,
        /// and compares with what was confirmed.
        pub(super) async fn finish(mut self, cluster: &TestCluster) -> Report {
            self.stop.store(true, Ordering::Relaxed);
            self.held.store(true, Ordering::Relaxed);
            for task in self.tasks.drain(..) {
                tokio::time::timeout(Duration::from_secs(20), task)
                    .await
                    .expect("the clients stop")
                    .unwrap();
            }
            let leader = cluster.leader(Duration::from_secs(15)).await;
            let (c, ch) = try_open(&cluster.nodes[leader].amqp, Duration::from_secs(5))
                .await
                .expect("the leader serves");
            let mut drained = Vec::new();
            while let Some(got) = ch
                .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                drained.push(id_of(&got.delivery.data));
            }
            let _ = c.close(200, "bye".into()).await;
            let received = self.received.lock().clone();
            let seen: std::collections::HashSet<u64> =
                received.iter().chain(drained.iter()).copied().collect();
            let confirmed: Vec<u64> = self
                .batches
                .lock()
                .iter()
                .flat_map(|b| b.first..b.first + BATCH)
                .collect();
            let lost = confirmed
                .iter()
                .copied()
                .filter(|id| !seen.contains(id))
                .collect();
            Report {
                confirmed: confirmed.len(),
                consumed: received.len(),
                drained: drained.len(),
                duplicates: received.len() + drained.len() - seen.len(),
                lost,
            }
        }
    }

    impl Drop for Load {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            self.held.store(true, Ordering::Relaxed);
        }
    }

    fn id_of(body: &[u8]) -> u64 {
        std::str::from_utf8(body)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an id: {body:?}"))
    }

    /// A connection to the first node of `addrs` that answers, trying each
    /// until `stop`.
    async fn connect_any(
        addrs: &Addresses,
        stop: &AtomicBool,
    ) -> Option<(lapin::Connection, lapin::Channel)> {
        while !stop.load(Ordering::Relaxed) {
            let list = addrs.lock().clone();
            for addr in list {
                if let Some(open) = try_open(&addr, Duration::from_millis(500)).await {
                    return Some(open);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Publishes ids 0.. (persistent) in confirmed batches until `stop`,
    /// to any node; a batch whose confirms did not all come back is sent
    /// again on a new connection (at least once).
    async fn publish(addrs: Addresses, stop: Arc<AtomicBool>, batches: Arc<Mutex<Vec<Batch>>>) {
        let mut next = 0u64;
        'connect: while let Some((_c, ch)) = connect_any(&addrs, &stop).await {
            if ch
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .is_err()
            {
                continue;
            }
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let mut pending = Vec::new();
                for id in next..next + BATCH {
                    let Ok(p) = ch
                        .basic_publish(
                            "".into(),
                            QUEUE.into(),
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
                    match tokio::time::timeout(CONFIRM_TIMEOUT, p).await {
                        Ok(Ok(c)) if c.is_ack() => {}
                        _ => continue 'connect,
                    }
                }
                batches.lock().push(Batch {
                    first: next,
                    sent,
                    confirmed: Instant::now(),
                });
                next += BATCH;
            }
        }
    }

    /// Consumes with manual acks from any node until `stop` (or `held`),
    /// noting each id as it arrives (a delivery whose ack is lost is
    /// redelivered: a duplicate, never a loss).
    async fn consume(
        addrs: Addresses,
        stop: Arc<AtomicBool>,
        held: Arc<AtomicBool>,
        received: Arc<Mutex<Vec<u64>>>,
    ) {
        use futures_lite::StreamExt;
        'connect: while let Some((c, ch)) = connect_any(&addrs, &held).await {
            if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
                continue;
            }
            let Ok(mut consumer) = ch
                .basic_consume(
                    QUEUE.into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
            else {
                continue;
            };
            while !stop.load(Ordering::Relaxed) {
                if held.load(Ordering::Relaxed) {
                    // Its unacknowledged deliveries go back to the queue.
                    let _ = c.close(200, "held".into()).await;
                    break 'connect;
                }
                match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
                    Err(_) => {}
                    Ok(Some(Ok(d))) => {
                        received.lock().push(id_of(&d.data));
                        if d.ack(BasicAckOptions::default()).await.is_err() {
                            continue 'connect;
                        }
                    }
                    Ok(_) => continue 'connect,
                }
            }
        }
    }
}

use load::Load;

/// A random moment while the clients run: 0.5–2 s.
async fn a_random_moment() -> u64 {
    let wait = 500 + u64::from(rand::random::<u16>() % 1500);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    wait
}

/// A cluster with both followers in sync and the clients running.
async fn loaded() -> Option<(TestCluster, usize, Load)> {
    let cluster = TestCluster::start()?;
    let leader = cluster.leader(Duration::from_secs(10)).await;
    cluster.all_in_sync(leader, Duration::from_secs(20)).await;
    let load = Load::start(&cluster).await;
    Some((cluster, leader, load))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_confirmed_message() {
    let Some((mut cluster, mut leader, load)) = loaded().await else {
        return;
    };
    for round in 1..=2 {
        let wait = a_random_moment().await;
        cluster.kill9(leader);
        let killed = Instant::now();
        let next = cluster.leader(Duration::from_secs(10)).await;
        assert_ne!(next, leader);
        let failover = killed.elapsed();
        let unavailable = load
            .resumed_after(killed, Duration::from_secs(20), &cluster)
            .await;
        println!(
            "round {round}: killed {} after {wait} ms; new leader {} in {failover:?}; confirms resumed after {unavailable:?}",
            cluster.nodes[leader].name, cluster.nodes[next].name
        );
        // The killed node comes back, catches up and is in sync again.
        cluster.relaunch(leader);
        load.reach(&cluster);
        cluster.all_in_sync(next, Duration::from_secs(30)).await;
        leader = next;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish(&cluster).await.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_the_leader_under_load_loses_nothing_and_the_woken_node_confirms_nothing() {
    let Some((cluster, old, load)) = loaded().await else {
        return;
    };
    // A publisher of the leader's own (its address, not a follower's),
    // on a queue of its own.
    let (conn, ch) = try_open(&cluster.nodes[old].amqp, Duration::from_secs(5))
        .await
        .expect("connect to the leader");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("stale".into(), durable, FieldTable::default())
        .await
        .unwrap();
    let wait = a_random_moment().await;
    cluster.signal(old, "-STOP");
    let paused = Instant::now();
    // Sent while it is stopped: it reads them when it wakes.
    let mut stale = Vec::new();
    for i in 0..20 {
        let body = format!("stale-{i}");
        let publish = ch.basic_publish(
            "".into(),
            "stale".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        );
        match tokio::time::timeout(Duration::from_secs(1), publish).await {
            Ok(Ok(confirm)) => stale.push(confirm),
            _ => break,
        }
    }
    // Past the 3 s lease another node leads and confirms resume.
    let new = loop {
        let leading = cluster.leading().await;
        assert!(
            leading.iter().filter(|l| **l == Some(true)).count() <= 1,
            "{leading:?}"
        );
        if let Some(i) = (0..3).find(|&i| i != old && leading[i] == Some(true)) {
            break i;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(15),
            "no new leader while the old one is stopped: {leading:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failover = paused.elapsed();
    let unavailable = load
        .resumed_after(paused, Duration::from_secs(20), &cluster)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.signal(old, "-CONT");
    let woke = Instant::now();
    let held = woke.duration_since(paused);
    // Woken, it never says it leads, and follows the new leader.
    let following = loop {
        let leading = cluster.leading().await;
        assert_ne!(
            leading[old],
            Some(true),
            "the woken node leads again: {leading:?}"
        );
        assert_ne!(leading[new], Some(false), "{leading:?}");
        let follows = cluster.nodes[old]
            .process
            .as_ref()
            .unwrap()
            .log_lines()
            .iter()
            .any(|l| {
                l.contains("this node is a follower")
                    && l.contains(&format!("leader={}", cluster.nodes[new].name))
            });
        if follows && leading[old] == Some(false) {
            break woke.elapsed();
        }
        assert!(
            woke.elapsed() < Duration::from_secs(10),
            "the woken node did not follow the new leader\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Its own publisher got no confirm for what it sent during the pause.
    let confirms = async {
        let mut acks = 0;
        for confirm in stale {
            match confirm.await {
                Ok(c) if c.is_ack() => acks += 1,
                _ => break,
            }
        }
        acks
    };
    let acks = tokio::time::timeout(Duration::from_secs(5), confirms)
        .await
        .unwrap_or(0);
    assert_eq!(acks, 0, "the woken node confirmed publishes");
    drop(conn);
    // It catches up and is in sync again, and clients went on.
    cluster.all_in_sync(new, Duration::from_secs(30)).await;
    let rejoined = woke.elapsed();
    println!(
        "SIGSTOP of {} after {wait} ms, held {held:?}: new leader {} in {failover:?}; confirms resumed after {unavailable:?}; woken, it followed in {following:?} and was in sync again after {rejoined:?}",
        cluster.nodes[old].name, cluster.nodes[new].name
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish(&cluster).await.check();
    // What the woken node was sent never reached the new leader.
    let (c, ch) = try_open(&cluster.nodes[new].amqp, Duration::from_secs(5))
        .await
        .expect("the leader serves");
    let q = crate::queues::passive(&ch, "stale").await.unwrap();
    assert_eq!(q.message_count(), 0, "the paused node's publishes spread");
    let _ = c.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_under_load_shows_one_leader_and_loses_nothing() {
    let Some((mut cluster, leader, load)) = loaded().await else {
        return;
    };
    let wait = a_random_moment().await;
    cluster.etcd.kill9();
    let down = Instant::now();
    // Without etcd no lease is renewed: the leader fences itself (2.4 s
    // after its last renewal at most) and stops confirming.
    let mut fenced = None;
    while down.elapsed() < Duration::from_secs(6) {
        let leading = cluster.leading().await;
        let leaders = leading.iter().filter(|l| **l == Some(true)).count();
        assert!(leaders <= 1, "two leaders with etcd down: {leading:?}");
        if leaders == 0 && fenced.is_none() {
            fenced = Some(down.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fenced = fenced.expect("the leader kept leading with etcd down");
    assert!(fenced < Duration::from_secs(3), "fenced after {fenced:?}");
    let last = load
        .last_confirm()
        .map(|t| t.saturating_duration_since(down));
    // Nothing sent once the leader must have fenced (2.4 s after its last
    // renewal at most) is confirmed while etcd is away.
    let late = load.confirmed_sent_after(down + Duration::from_secs(3), Instant::now());
    assert_eq!(late, 0, "publishes confirmed with etcd down");
    cluster.etcd.restart();
    let up = Instant::now();
    // `leader` panics if two ever lead at once.
    let next = cluster.leader(Duration::from_secs(15)).await;
    let elected = up.elapsed();
    let resumed = load
        .resumed_after(up, Duration::from_secs(30), &cluster)
        .await;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        cluster.leader(Duration::from_secs(1)).await;
    }
    println!(
        "etcd SIGKILL after {wait} ms: {} fenced after {fenced:?}, last confirm {last:?} after the kill; etcd down {:?}; leader {} after {elected:?} of the restart; confirms resumed {resumed:?} after the restart, unavailable {:?} in all",
        cluster.nodes[leader].name,
        up.duration_since(down),
        cluster.nodes[next].name,
        (up + resumed).duration_since(down)
    );
    load.finish(&cluster).await.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_under_load_catches_up_and_then_alone_holds_every_confirmed_message() {
    let Some((mut cluster, leader, load)) = loaded().await else {
        return;
    };
    let (f, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let wait = a_random_moment().await;
    // From here on every confirmed message stays queued: the follower must
    // get those published while it is down by its catch-up copy.
    load.hold_consumer();
    cluster.kill9(f);
    let killed = Instant::now();
    // The leader records the smaller in-sync set; confirms go on.
    cluster.out_of_isr(f, Duration::from_secs(15)).await;
    let dropped = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.relaunch(f);
    load.reach(&cluster);
    let restarted = Instant::now();
    cluster.all_in_sync(leader, Duration::from_secs(30)).await;
    let rejoined = restarted.elapsed();
    let pause = load.longest_pause(killed);
    println!(
        "follower {} killed after {wait} ms: out of the in-sync set after {dropped:?}; restarted, in sync after {rejoined:?}; longest confirm pause {pause:?}",
        cluster.nodes[f].name
    );
    assert!(pause < Duration::from_secs(12), "confirms paused {pause:?}");
    // The strong check: only the restarted follower is left. It is in the
    // recorded in-sync set, so it leads, and it must hold every confirm.
    a_random_moment().await;
    cluster.kill9(leader);
    cluster.kill9(other);
    let killed = Instant::now();
    let next = cluster.leader(Duration::from_secs(15)).await;
    assert_eq!(next, f, "the restarted follower leads");
    println!(
        "leader and other follower killed: {} leads alone after {:?}",
        cluster.nodes[f].name,
        killed.elapsed()
    );
    load.finish(&cluster).await.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_keeps_serving_and_loses_nothing() {
    let Some((mut cluster, leader, load)) = loaded().await else {
        return;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let began = Instant::now();
    // docs/CLUSTERING.md, "Rolling restart": the followers one at a time,
    // each back in sync before the next; the leader last.
    let not_critical = |cluster: &TestCluster, i: usize| {
        let (code, out) = ctl(cluster.nodes[i].mgmt, &["check_if_node_is_quorum_critical"]);
        assert_eq!(
            (code, out.as_str()),
            (0, "ok\n"),
            "{}",
            cluster.nodes[i].name
        );
    };
    for f in [(leader + 1) % 3, (leader + 2) % 3] {
        not_critical(&cluster, f);
        let stopped = Instant::now();
        cluster.stop(f);
        cluster.out_of_isr(f, Duration::from_secs(15)).await;
        cluster.relaunch(f);
        load.reach(&cluster);
        cluster.all_in_sync(leader, Duration::from_secs(30)).await;
        println!(
            "follower {} restarted, in sync again after {:?}; longest confirm pause since its stop {:?}",
            cluster.nodes[f].name,
            stopped.elapsed(),
            load.longest_pause(stopped)
        );
    }
    not_critical(&cluster, leader);
    let stopped = Instant::now();
    cluster.stop(leader);
    let next = cluster.leader(Duration::from_secs(15)).await;
    let failover = stopped.elapsed();
    let unavailable = load
        .resumed_after(stopped, Duration::from_secs(20), &cluster)
        .await;
    cluster.relaunch(leader);
    load.reach(&cluster);
    cluster.all_in_sync(next, Duration::from_secs(30)).await;
    let longest = load.longest_pause(began);
    println!(
        "leader {} stopped (SIGTERM): {} leads after {failover:?}, confirms resumed after {unavailable:?}; back in sync after {:?}; longest confirm pause of the whole restart {longest:?}",
        cluster.nodes[leader].name,
        cluster.nodes[next].name,
        stopped.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.finish(&cluster).await.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_under_load_syncs_and_then_alone_holds_every_confirmed_message() {
    let Some((mut cluster, leader, load)) = loaded().await else {
        return;
    };
    // Every confirmed message stays queued: the new node must get those
    // published before it joined by its full copy.
    load.hold_consumer();
    a_random_moment().await;
    let added = Instant::now();
    let n4 = cluster.add_node("n4");
    load.reach(&cluster);
    cluster.all_in_sync(leader, Duration::from_secs(30)).await;
    println!(
        "n4 added: in sync after {:?}; longest confirm pause {:?}",
        added.elapsed(),
        load.longest_pause(added)
    );
    // Only the new node is left: it is in the recorded in-sync set, so it
    // leads, and it must hold every confirm.
    a_random_moment().await;
    for i in 0..3 {
        cluster.kill9(i);
    }
    let killed = Instant::now();
    let next = cluster.leader(Duration::from_secs(15)).await;
    assert_eq!(next, n4, "the added node leads");
    println!(
        "the other three killed: n4 leads after {:?}",
        killed.elapsed()
    );
    load.finish(&cluster).await.check();
}

/// This node's local lease deadline as it says (`lease_remaining_ms` in
/// `/api/nodes`), if it answered within 100 ms: the deadline lies between
/// the request plus that and the answer plus that.
async fn lease_remaining(node: &Node) -> Option<(Instant, Instant, Duration)> {
    let asked = Instant::now();
    let (_, body) = get(node.mgmt, "/api/nodes").await?;
    let answered = Instant::now();
    let nodes: serde_json::Value = serde_json::from_str(&body).ok()?;
    let me = nodes
        .as_array()?
        .iter()
        .find(|n| n["cluster_node_name"] == node.name.as_str())?;
    let remaining = Duration::from_millis(me["lease_remaining_ms"].as_u64()?);
    (answered - asked < Duration::from_millis(100)).then_some((asked, answered, remaining))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_deadline_but_not_etcds_fences_and_the_cluster_serves_again() {
    let Some((cluster, old, load)) = loaded().await else {
        return;
    };
    a_random_moment().await;
    // Stopped between two renewals (one is sent when 1.4 s remain), and
    // woken 300 ms past its own deadline: etcd keeps the lease 600 ms
    // longer (the margin), so no other node can have taken over, and the
    // woken leader must see that it may not serve, step down and leave
    // the cluster able to serve again (often with itself leading anew,
    // in the same process, on the same store).
    // A renewal can still slip in before the stop on a loaded machine:
    // then the node did not pass its deadline, and the pause is tried
    // again.
    let fenced = |c: &TestCluster| {
        let log = c.nodes[old].process.as_ref().unwrap().log_lines();
        log.iter()
            .filter(|l| l.contains("fenced: this node no longer leads"))
            .count()
    };
    let mut attempts = 0;
    let (paused, pause) = loop {
        attempts += 1;
        assert!(
            attempts <= 3,
            "the woken leader did not step down\n{}",
            cluster.logs()
        );
        let before = fenced(&cluster);
        let started = Instant::now();
        let (asked, pause) = loop {
            if let Some((asked, answered, remaining)) = lease_remaining(&cluster.nodes[old]).await {
                if remaining > Duration::from_millis(1600) {
                    cluster.signal(old, "-STOP");
                    let until = answered + remaining + Duration::from_millis(300);
                    break (asked, until.saturating_duration_since(Instant::now()));
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no lease reading"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(pause).await;
        cluster.signal(old, "-CONT");
        let woke = Instant::now();
        while fenced(&cluster) == before && woke.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if fenced(&cluster) > before {
            break (asked, pause);
        }
        println!(
            "{} was not past its deadline on waking; again",
            cluster.nodes[old].name
        );
    };
    let next = cluster.leader(Duration::from_secs(15)).await;
    let failover = paused.elapsed();
    let unavailable = load
        .resumed_after(paused, Duration::from_secs(20), &cluster)
        .await;
    println!(
        "{} stopped for {pause:?} (past its deadline, within etcd's lease): stepped down; {} leads after {failover:?}; confirms resumed after {unavailable:?}",
        cluster.nodes[old].name, cluster.nodes[next].name
    );
    cluster.all_in_sync(next, Duration::from_secs(30)).await;
    load.finish(&cluster).await.check();
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
    publish_confirmed(&ch, (0..100).map(|i| i.to_string())).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_without_followers_in_sync_keeps_the_previous_set_so_another_may_take_over() {
    let Some((mut cluster, leader, load)) = loaded().await else {
        return;
    };
    let (next, paused) = ((leader + 1) % 3, (leader + 2) % 3);
    a_random_moment().await;
    load.hold_consumer();
    // `paused` is in the in-sync set but can neither campaign nor catch up;
    // the leader dies well before it could drop it (10 s behind).
    cluster.signal(paused, "-STOP");
    cluster.kill9(leader);
    let leads = cluster.leader(Duration::from_secs(15)).await;
    assert_eq!(leads, next, "the follower that runs leads");
    // Nothing can be confirmed in its term (no follower in sync), so it
    // records no set of its own: the previous one, naming `paused`, stands.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let isr = cluster.isr().expect("an in-sync set in etcd");
    assert!(
        isr.followers.contains(&cluster.nodes[paused].name),
        "the new leader dropped the previous in-sync set: {isr:?}"
    );
    // The new leader dies too: the paused node, woken, may and does lead,
    // with everything confirmed.
    cluster.kill9(next);
    cluster.signal(paused, "-CONT");
    let woke = Instant::now();
    assert_eq!(cluster.leader(Duration::from_secs(15)).await, paused);
    println!(
        "{} led without a follower in sync and died; {} leads after waking in {:?}",
        cluster.nodes[next].name,
        cluster.nodes[paused].name,
        woke.elapsed()
    );
    load.finish(&cluster).await.check();
}
