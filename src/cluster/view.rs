//! What this node last read of the cluster from etcd: members, leader and
//! ISR, refreshed every [`POLL`](super::POLL), for the management API and
//! `leveret ctl cluster status` (which must answer even when etcd does not).

use super::{Cluster, Isr, Member, POLL, REQUEST_TIMEOUT};
use etcd_client::GetOptions;
use std::sync::Weak;

#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// The running nodes.
    pub(crate) members: Vec<Member>,
    /// Every node that joined and was not forgotten, with its last record.
    pub(crate) known: Vec<Member>,
    /// The leader's record and term.
    pub(crate) leader: Option<(Member, i64)>,
    pub(crate) isr: Option<Isr>,
    /// etcd answered the last read.
    pub(crate) etcd_reachable: bool,
}

impl View {
    /// `name` runs: its lease-bound record is there.
    pub(crate) fn running(&self, name: &str) -> bool {
        self.members.iter().any(|m| m.node_name == name)
    }

    pub(crate) fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|(m, _)| m.node_name.as_str())
    }

    /// `name` holds every confirmed write: it leads, or it is in the ISR
    /// (with no ISR recorded yet, no follower is known to be in sync).
    pub(crate) fn in_sync(&self, name: &str) -> bool {
        self.leader_name() == Some(name)
            || self
                .isr
                .as_ref()
                .is_some_and(|i| i.followers.iter().any(|f| f == name))
    }
}

pub(super) async fn refresh(cluster: Weak<Cluster>) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let read = read(&cluster).await;
        let mut view = cluster.view.lock();
        match read {
            Some(v) => *view = v,
            None => view.etcd_reachable = false,
        }
    }
}

async fn read(cluster: &Cluster) -> Option<View> {
    let mut client = cluster.client.clone();
    let all = client.get(
        cluster.keys.prefix.as_str(),
        Some(GetOptions::new().with_prefix()),
    );
    let all = tokio::time::timeout(REQUEST_TIMEOUT, all)
        .await
        .ok()?
        .ok()?;
    let nodes = cluster.keys.nodes();
    let known = cluster.keys.known();
    let mut view = View {
        etcd_reachable: true,
        ..View::default()
    };
    for kv in all.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        if key.starts_with(&nodes) {
            if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
                view.members.push(m);
            }
        } else if key.starts_with(&known) {
            if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
                view.known.push(m);
            }
        } else if key == cluster.keys.leader() {
            if let Ok(m) = serde_json::from_slice::<Member>(kv.value()) {
                view.leader = Some((m, kv.create_revision()));
            }
        } else if key == cluster.keys.isr() {
            view.isr = serde_json::from_slice(kv.value()).ok();
        }
    }
    view.members.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    view.known.sort_by(|a, b| a.node_name.cmp(&b.node_name));
    Some(view)
}
