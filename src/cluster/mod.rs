//! Cluster mode's roles (issue 20): which node leads, who the members are,
//! and which followers are in sync, all kept in etcd (consensus is etcd's,
//! never ours; docs/CLUSTERING.md, "Roles, leases and fencing").
//!
//! Each node holds one etcd lease and binds to it its member record and,
//! when it leads, the leader key; the leader key is created only where
//! none exists, so there is at most one, and its create revision is the
//! leader's term. A leader stops serving when its local lease deadline
//! passes, before etcd can expire the lease and let another take over.
//!
//! What the rest of the broker uses: [`Cluster::role`] (a watch of this
//! node's [`Role`]), [`Cluster::lease_valid`] (cheap; check it before
//! anything a client is told), [`Cluster::set_isr`], [`Cluster::isr`] and
//! [`Cluster::members`].

mod election;
mod keys;
mod lease;
mod member;
pub(crate) mod proxy;
mod view;

pub use member::Member;
pub(crate) use view::View;

use crate::config::ClusterConfig;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp};
use keys::Keys;
use lease::LeaseClock;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

/// This node's part in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not yet registered, or waiting for a leader it may not replace.
    Starting,
    /// Another node leads; clients are forwarded to it.
    Follower { leader: Arc<Member> },
    /// This node leads; `term` is the leader key's create revision.
    Leader { term: i64 },
    /// This node led but its lease could not be kept alive (or it was
    /// deposed): it serves nothing until it has a new lease and a new role.
    Fenced,
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Follower { .. } => "follower",
            Role::Leader { .. } => "leader",
            Role::Fenced => "fenced",
        }
    }
}

/// The in-sync replica set as kept at `<prefix>/isr`: the followers that
/// hold every confirmed write, and the leader (and term) that said so.
/// Only these (and that leader) may become the next leader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isr {
    pub leader: String,
    pub term: i64,
    pub followers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot use etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("this node is not the leader")]
    NotLeader,
    #[error("{0} is not a node of this cluster")]
    UnknownNode(String),
    #[error("{0} is running; stop it before forgetting it")]
    Running(String),
    #[error("{0} leads this cluster; a node cannot forget itself")]
    Itself(String),
}

/// How often followers look for a missing leader, and everyone refreshes
/// their view of the cluster.
const POLL: Duration = Duration::from_millis(250);
/// How long one etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// One etcd request, failed if it takes longer than [`REQUEST_TIMEOUT`].
async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::InvalidArgs(
                "etcd did not answer in time".into(),
            ))
        })
}

pub struct Cluster {
    config: ClusterConfig,
    me: Member,
    keys: Keys,
    client: Client,
    clock: LeaseClock,
    role: watch::Sender<Role>,
    view: Mutex<View>,
    /// Leading: the followers replicating from this node.
    replicas: Mutex<Option<Arc<crate::replication::leader::Replicas>>>,
    /// Following: this node's copy.
    copy: Mutex<Option<Arc<Mutex<crate::replication::follower::FollowerState>>>>,
    /// Set on a clean stop: the campaign ends and the lease is revoked.
    resigned: watch::Sender<bool>,
    campaign: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

static CURRENT: OnceLock<Arc<Cluster>> = OnceLock::new();

/// This process's cluster, in cluster mode.
pub(crate) fn current() -> Option<&'static Arc<Cluster>> {
    CURRENT.get()
}

/// Makes `cluster` this process's (the one the server fences on and the
/// management API shows); the first one set stays.
pub(crate) fn set_current(cluster: Arc<Cluster>) {
    let _ = CURRENT.set(cluster);
}

/// This node may serve clients itself: it is not in cluster mode, or it
/// leads and its lease is valid. Checked on every accept.
pub(crate) fn may_serve() -> bool {
    current().is_none_or(|c| c.serves())
}

/// How this node reaches etcd: bounded timeouts, and TLS and etcd's
/// authentication as `[cluster]` asks.
fn connect_options(config: &ClusterConfig) -> Result<ConnectOptions, ClusterError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), REQUEST_TIMEOUT);
    let read = |what: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| ClusterError::File {
            what,
            path: path.to_owned(),
            source,
        })
    };
    if !config.etcd_ca.as_os_str().is_empty() {
        let ca = read("cluster.etcd_ca", &config.etcd_ca)?;
        let mut tls =
            etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(ca));
        if !config.etcd_cert.as_os_str().is_empty() {
            let cert = read("cluster.etcd_cert", &config.etcd_cert)?;
            let key = read("cluster.etcd_key", &config.etcd_key)?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if !config.etcd_user.is_empty() {
        options = options.with_user(&config.etcd_user, &config.etcd_password);
    }
    Ok(options)
}

impl Cluster {
    /// Connects to etcd and starts campaigning as `me`.
    pub async fn start(config: &ClusterConfig, me: Member) -> Result<Arc<Cluster>, ClusterError> {
        let client = Client::connect(&config.etcd, Some(connect_options(config)?)).await?;
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            keys: Keys::new(&config.name),
            me,
            client,
            clock: LeaseClock::default(),
            role: watch::Sender::new(Role::Starting),
            view: Mutex::new(View::default()),
            replicas: Mutex::new(None),
            copy: Mutex::new(None),
            resigned: watch::Sender::new(false),
            campaign: Mutex::new(None),
        });
        *cluster.campaign.lock() = Some(tokio::spawn(election::run(cluster.clone())));
        tokio::spawn(view::refresh(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// This node's member record.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// This node's role, as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// This node's lease is held: a leader may tell clients something only
    /// while this is true (it is false from the moment the local deadline
    /// passes, also right after the process wakes from a stop).
    pub fn lease_valid(&self) -> bool {
        self.clock.valid()
    }

    /// This node leads and its lease is valid.
    pub fn serves(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader { .. }) && self.lease_valid()
    }

    /// Records `followers` as the in-sync replica set of `term`. Only that
    /// term's leader can: the write is conditional on its leader key still
    /// being there, so a deposed leader never overwrites a newer leader's
    /// ISR, nor a finished term's replication state this node's next term.
    pub async fn set_isr(&self, term: i64, followers: Vec<String>) -> Result<(), ClusterError> {
        if *self.role.borrow() != (Role::Leader { term }) || !self.lease_valid() {
            return Err(ClusterError::NotLeader);
        }
        let isr = Isr {
            leader: self.me.node_name.clone(),
            term,
            followers,
        };
        let json = serde_json::to_string(&isr).unwrap_or_default();
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.leader(),
                CompareOp::Equal,
                term,
            )])
            .and_then([TxnOp::put(self.keys.isr(), json, None)]);
        let mut client = self.client.clone();
        let done = timed(client.txn(txn)).await?;
        if !done.succeeded() {
            return Err(ClusterError::NotLeader);
        }
        self.view.lock().isr = Some(isr);
        Ok(())
    }

    /// A clean stop: gives up the lease at once (dropping this node's
    /// records and, if it leads, the leader key), so the others need not
    /// wait for it to expire; a leader's successor is elected within a
    /// poll. Call once this node serves nothing any more.
    pub async fn resign(&self) {
        self.resigned.send_replace(true);
        let campaign = self.campaign.lock().take();
        if let Some(campaign) = campaign {
            let _ = tokio::time::timeout(2 * REQUEST_TIMEOUT, campaign).await;
        }
        self.clock.expire();
    }

    /// Forgets `name`, a node stopped for good (RabbitMQ's
    /// `forget_cluster_node`): its known record goes, so it is no longer
    /// listed. Only the leader may, and only while `name` does not run.
    /// (The in-sync set needs nothing: the leader records only followers
    /// connected to it.)
    pub async fn forget(&self, name: &str) -> Result<(), ClusterError> {
        let Role::Leader { term } = *self.role.borrow() else {
            return Err(ClusterError::NotLeader);
        };
        if !self.lease_valid() {
            return Err(ClusterError::NotLeader);
        }
        if name == self.me.node_name {
            return Err(ClusterError::Itself(name.to_string()));
        }
        let running = self.keys.node(name);
        let txn = Txn::new()
            .when([
                Compare::create_revision(self.keys.leader(), CompareOp::Equal, term),
                Compare::create_revision(running.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::delete(self.keys.known_node(name), None)])
            .or_else([TxnOp::get(running.as_str(), None)]);
        let mut client = self.client.clone();
        let done = timed(client.txn(txn)).await?;
        let mut deleted = 0;
        let mut is_running = false;
        for op in done.op_responses() {
            match op {
                etcd_client::TxnOpResponse::Delete(d) => deleted += d.deleted(),
                etcd_client::TxnOpResponse::Get(g) => is_running |= !g.kvs().is_empty(),
                _ => {}
            }
        }
        match (done.succeeded(), is_running) {
            (true, _) if deleted == 0 => Err(ClusterError::UnknownNode(name.to_string())),
            (true, _) => {
                self.view.lock().known.retain(|m| m.node_name != name);
                Ok(())
            }
            (false, true) => Err(ClusterError::Running(name.to_string())),
            (false, false) => Err(ClusterError::NotLeader),
        }
    }

    /// The cluster's replication secret (32 random bytes, hex), created in
    /// etcd by whoever asks first: only nodes that can read the cluster's
    /// keys can replicate, as in LavinMQ.
    pub async fn secret(&self) -> Result<Arc<[u8]>, ClusterError> {
        let key = self.keys.secret();
        let fresh: [u8; 32] = rand::random();
        let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), fresh, None)]);
        let mut client = self.client.clone();
        timed(client.txn(txn)).await?;
        let got = timed(client.get(key.as_str(), None)).await?;
        let value = got
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap_or_default();
        if value.len() < 32 {
            return Err(etcd_client::Error::InvalidArgs(
                "the cluster's secret is too short".into(),
            )
            .into());
        }
        Ok(value.into())
    }

    /// The in-sync followers as last read from etcd (refreshed every
    /// quarter second, and on each [`set_isr`](Self::set_isr)).
    pub fn isr(&self) -> Vec<String> {
        self.view
            .lock()
            .isr
            .as_ref()
            .map(|i| i.followers.clone())
            .unwrap_or_default()
    }

    /// Every registered node, as last read from etcd.
    pub fn members(&self) -> Vec<Member> {
        self.view.lock().members.clone()
    }

    /// The whole view: members, leader, ISR, whether etcd answered.
    pub(crate) fn view(&self) -> View {
        self.view.lock().clone()
    }

    pub(crate) fn set_replicas(&self, r: Option<Arc<crate::replication::leader::Replicas>>) {
        *self.replicas.lock() = r;
    }

    /// Leading: the followers replicating from this node.
    pub(crate) fn replicas(&self) -> Vec<crate::replication::leader::Replica> {
        self.replicas
            .lock()
            .as_ref()
            .map(|r| r.list())
            .unwrap_or_default()
    }

    pub(crate) fn set_follower_state(
        &self,
        s: Option<Arc<Mutex<crate::replication::follower::FollowerState>>>,
    ) {
        *self.copy.lock() = s;
    }

    /// Following: this node's copy (journal position, complete or not).
    pub(crate) fn copy(&self) -> Option<crate::replication::follower::FollowerState> {
        self.copy.lock().as_ref().map(|s| s.lock().clone())
    }

    /// The local lease deadline, from now (zero once passed).
    pub(crate) fn lease_remaining(&self) -> Duration {
        self.clock
            .deadline()
            .saturating_duration_since(tokio::time::Instant::now())
    }
}
