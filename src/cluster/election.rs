//! The campaign: get a lease, register, and try to create the leader key;
//! lead until the lease is lost or the key is gone, follow otherwise.

use super::lease::{grant, keep_alive};
use super::{timed, Cluster, Isr, Member, Role, POLL};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::sync::Arc;
use tracing::{info, warn};

pub(super) async fn run(cluster: Arc<Cluster>) {
    let ttl = cluster.config.lease_ttl();
    let mut given_up: Vec<i64> = Vec::new();
    let mut resigned = cluster.resigned.subscribe();
    loop {
        if *resigned.borrow() {
            return;
        }
        let mut client = cluster.client.clone();
        let lease = match timed(grant(&mut client, ttl, &cluster.clock)).await {
            Ok(lease) => lease,
            Err(e) => {
                warn!(error = %e, "cluster: cannot get an etcd lease; retrying");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let keeper = {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                keep_alive(cluster.client.clone(), lease, ttl, &cluster.clock).await
            })
        };
        tokio::select! {
            () = hold(&cluster, lease, &given_up) => {}
            _ = resigned.wait_for(|r| *r) => info!("cluster: stopping: giving up the lease"),
        }
        keeper.abort();
        cluster.clock.expire();
        // Drops this node's keys at once where etcd can be reached, so the
        // others need not wait for the lease to run out.
        let _ = timed(client.lease_revoke(lease)).await;
        // Keys still bound to these are this process's own, stale.
        given_up.push(lease);
        if given_up.len() > 8 {
            given_up.remove(0);
        }
    }
}

enum Campaign {
    Won(i64),
    Lost(Arc<Member>),
    /// No leader, but this node is not in the ISR: it may not lead.
    NotEligible,
}

/// Registers and campaigns on `lease` until it is lost.
async fn hold(cluster: &Cluster, lease: i64, given_up: &[i64]) {
    let me = serde_json::to_string(&cluster.me).unwrap_or_default();
    let name = &cluster.me.node_name;
    let mut said = false;
    loop {
        tokio::select! {
            r = timed(register(cluster, lease, &me, given_up)) => match r {
                Ok(true) => break,
                Ok(false) if !said => {
                    said = true;
                    warn!(node = %name, "cluster: another node of this name is registered (or this node's record from before a crash has not expired yet); waiting");
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cluster: cannot register; retrying"),
            },
            _ = cluster.clock.expired() => return,
        }
        tokio::time::sleep(POLL).await;
    }
    info!(node = %name, "cluster: registered");
    loop {
        match campaign(cluster, lease, &me, given_up).await {
            Ok(Campaign::Won(term)) => {
                info!(term, "cluster: this node is the leader");
                cluster.role.send_replace(Role::Leader { term });
                lead(cluster, term).await;
                warn!(term, "cluster: fenced: this node no longer leads");
                cluster.role.send_replace(Role::Fenced);
                return;
            }
            Ok(Campaign::Lost(leader)) => {
                cluster.role.send_if_modified(|role| {
                    let follower = Role::Follower { leader };
                    if *role == follower {
                        return false;
                    }
                    if let Role::Follower { leader } = &follower {
                        info!(leader = %leader.node_name, "cluster: this node is a follower");
                    }
                    *role = follower;
                    true
                });
            }
            Ok(Campaign::NotEligible) => {
                cluster.role.send_if_modified(|role| {
                    let changed = *role != Role::Starting;
                    if changed {
                        info!("cluster: no leader, and this node is not in the ISR: waiting for one that is");
                    }
                    *role = Role::Starting;
                    changed
                });
            }
            Err(e) => warn!(error = %e, "cluster: campaign failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = cluster.clock.expired() => return,
        }
    }
}

/// Leads until the lease deadline passes or the leader key is no longer
/// this term's (deleted by an operator, or expired in etcd).
async fn lead(cluster: &Cluster, term: i64) {
    let key = cluster.keys.leader();
    loop {
        tokio::select! {
            _ = cluster.clock.expired() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
        let mut client = cluster.client.clone();
        // A failed read proves nothing: the lease deadline decides then.
        if let Ok(r) = timed(client.get(key.as_str(), None)).await {
            if r.kvs().first().map(|kv| kv.create_revision()) != Some(term) {
                warn!(term, "cluster: the leader key is gone");
                return;
            }
        }
    }
}

/// Writes this node's record on `lease`, and its known record, unless
/// another process holds the name (two nodes of one name would take each
/// other's leader key for stale). A record on one of this process's
/// given-up leases is its own.
async fn register(
    cluster: &Cluster,
    lease: i64,
    me: &str,
    given_up: &[i64],
) -> Result<bool, etcd_client::Error> {
    let mut client = cluster.client.clone();
    let key = cluster.keys.node(&cluster.me.node_name);
    let put = TxnOp::put(key.as_str(), me, Some(PutOptions::new().with_lease(lease)));
    let known = TxnOp::put(cluster.keys.known_node(&cluster.me.node_name), me, None);
    let current = client.get(key.as_str(), None).await?;
    let guard = match current.kvs().first() {
        None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
        Some(kv) if kv.lease() == lease || given_up.contains(&kv.lease()) => {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())
        }
        Some(_) => return Ok(false),
    };
    let r = client
        .txn(Txn::new().when([guard]).and_then([put, known]))
        .await?;
    Ok(r.succeeded())
}

/// One attempt to create the leader key; the current leader if another
/// holds it.
async fn campaign(
    cluster: &Cluster,
    lease: i64,
    me: &str,
    given_up: &[i64],
) -> Result<Campaign, etcd_client::Error> {
    let mut client = cluster.client.clone();
    let key = cluster.keys.leader();
    let isr_key = cluster.keys.isr();
    let current = timed(client.get(key.as_str(), None)).await?;
    if let Some(kv) = current.kvs().first() {
        let leader: Option<Member> = serde_json::from_slice(kv.value()).ok();
        match leader {
            // This node's own key from a lease it gave up (etcd was away
            // when it tried to revoke it): remove it and campaign anew.
            Some(l) if l.node_name == cluster.me.node_name && given_up.contains(&kv.lease()) => {
                let stale = Txn::new()
                    .when([Compare::create_revision(
                        key.as_str(),
                        CompareOp::Equal,
                        kv.create_revision(),
                    )])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                timed(client.txn(stale)).await?;
                info!("cluster: removed this node's leader key of an earlier lease");
                return Ok(Campaign::NotEligible);
            }
            // Created on this very lease (the answer to the txn that made
            // it was lost): this node leads.
            Some(l) if l.node_name == cluster.me.node_name && kv.lease() == lease => {
                return Ok(Campaign::Won(kv.create_revision()))
            }
            // Never follow oneself: wait for that key to expire.
            Some(l) if l.node_name == cluster.me.node_name => return Ok(Campaign::NotEligible),
            Some(l) => return Ok(Campaign::Lost(Arc::new(l))),
            None => {
                return Err(etcd_client::Error::InvalidArgs(
                    "the leader key holds no member record".into(),
                ))
            }
        }
    }
    let isr = timed(client.get(isr_key.as_str(), None)).await?;
    if let Some(kv) = isr.kvs().first() {
        let isr: Isr = serde_json::from_slice(kv.value()).unwrap_or_default();
        let name = &cluster.me.node_name;
        if isr.leader != *name && !isr.followers.contains(name) {
            return Ok(Campaign::NotEligible);
        }
    }
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            me,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let r = timed(client.txn(txn)).await?;
    if r.succeeded() {
        let term = r.header().map_or(0, |h| h.revision());
        return Ok(Campaign::Won(term));
    }
    for op in r.op_responses() {
        if let TxnOpResponse::Get(g) = op {
            if let Some(l) = g
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice(kv.value()).ok())
            {
                return Ok(Campaign::Lost(Arc::new(l)));
            }
        }
    }
    Ok(Campaign::NotEligible)
}
