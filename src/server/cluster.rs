//! The server's life in cluster mode: it follows its [`Role`]. Leading, it
//! opens the store and serves exactly as a single node; following, it
//! forwards clients to the leader and answers the management API about
//! itself; losing the lead, it closes every connection and stops the store
//! before going back to following. The listeners are bound once, for the
//! process's life: between roles, clients wait in their backlog.

use super::{serve_on, Listeners, ServeError};
use crate::broker::Broker;
use crate::cluster::{self, Cluster, Member, Role};
use crate::config::Config;
use crate::replication::{
    self,
    follower::FollowerState,
    leader::{AbortOnDrop, Replicas},
    link::Security,
};
use crate::store::journal::Journal;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

/// Serves `listeners` in the role etcd gives this node until `shutdown`.
pub async fn serve_cluster(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let replication = TcpListener::bind(&config.cluster.replication_listen)
        .await
        .map_err(|source| ServeError::Replication {
            addr: config.cluster.replication_listen.clone(),
            source,
        })?;
    let me = member(&config, &listeners, &replication);
    info!(node = %me.node_name, etcd = ?config.cluster.etcd, "cluster mode: campaigning");
    let cluster = Cluster::start(&config.cluster, me).await?;
    cluster::set_current(cluster.clone());
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut role = cluster.role();
    loop {
        if *stop.borrow() {
            // Serves nothing any more: the lease goes now rather than
            // when it runs out, so a successor takes over at once.
            cluster.resign().await;
            return Ok(());
        }
        let now = role.borrow_and_update().clone();
        match now {
            Role::Leader { term } => {
                lead(
                    &listeners,
                    &replication,
                    &config,
                    &cluster,
                    term,
                    stop.clone(),
                )
                .await
            }
            Role::Follower { leader } => {
                follow(&listeners, &config, &cluster, &leader, stop.clone()).await
            }
            Role::Starting | Role::Fenced => {
                wait_for_change(&listeners, &config, &cluster, stop.clone()).await
            }
        }
    }
}

/// Serves as the leader until this term ends or the process stops.
async fn lead(
    listeners: &Listeners,
    replication: &TcpListener,
    config: &Config,
    cluster: &Arc<Cluster>,
    term: i64,
    stop: watch::Receiver<bool>,
) {
    let secret = match cluster.secret().await {
        Ok(s) => s,
        Err(e) => {
            error!("cluster: cannot read the replication secret: {e}");
            return sleep_or_stop(Duration::from_millis(500), stop).await;
        }
    };
    // Read at each term, so rotated certificate files are picked up.
    let security = match Security::new(config.cluster.replication_tls, &config.tls) {
        Ok(s) => s,
        Err(e) => {
            error!("cluster: cannot serve replication over TLS: {e}");
            return sleep_or_stop(Duration::from_secs(5), stop).await;
        }
    };
    let journal = Journal::new(
        &config.server.data_dir,
        config.cluster.replication_buffer_bytes as usize,
    );
    let opened = {
        let (config, journal) = (config.clone(), journal.clone());
        tokio::task::spawn_blocking(move || Broker::open_replicated(config, Some(journal))).await
    };
    let broker = match opened {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            // The previous term's store may still be closing; the role
            // stays, so the next turn of the loop tries again.
            error!("cluster: cannot open the store as leader: {e}");
            return sleep_or_stop(Duration::from_millis(500), stop).await;
        }
        Err(e) => return error!("cluster: opening the store failed: {e}"),
    };
    broker.measure_process_memory();
    let Some(serving) = dup_all(listeners) else {
        return sleep_or_stop(Duration::from_millis(500), stop).await;
    };
    let Ok(replication) = dup(replication) else {
        error!("cluster: cannot share the replication listener");
        return sleep_or_stop(Duration::from_millis(500), stop).await;
    };
    // Followers copy the store and then follow its journal, for the term;
    // promises wait for the in-sync ones (`replication::leader`).
    let recorder = cluster.clone();
    let replicas = Replicas::new(
        journal,
        config.cluster.min_insync as usize,
        Box::new(move |isr| {
            let cluster = recorder.clone();
            Box::pin(async move { cluster.set_isr(term, isr).await.is_ok() })
        }),
    );
    cluster.set_replicas(Some(replicas.clone()));
    let server = AbortOnDrop(tokio::spawn(replication::leader::serve(
        replication,
        security,
        replicas,
        secret,
        broker.store.trees.clone(),
    )));
    info!(term, "cluster: serving clients as the leader");
    serve_on(serving, broker, term_over(cluster.role(), term, stop)).await;
    drop(server);
    cluster.set_replicas(None);
    info!(term, "cluster: stopped serving as the leader");
}

/// Completes when the role is no longer leader of `term`, or on stop.
async fn term_over(mut role: watch::Receiver<Role>, term: i64, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = role.wait_for(|r| *r != Role::Leader { term }) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Forwards clients to `leader` (and runs the replication client) until
/// the role changes or the process stops.
async fn follow(
    listeners: &Listeners,
    config: &Config,
    cluster: &Arc<Cluster>,
    leader: &Member,
    stop: watch::Receiver<bool>,
) {
    let Some(clients) = client_listeners(listeners) else {
        return sleep_or_stop(Duration::from_millis(500), stop).await;
    };
    let api = management(
        listeners,
        config,
        cluster,
        role_changed(cluster.role(), stop.clone()),
    );
    let forwarding = cluster::proxy::forward(
        &clients,
        leader,
        config.limits.max_connections,
        role_changed(cluster.role(), stop.clone()),
    );
    let replica = replicate(config, cluster, leader, role_changed(cluster.role(), stop));
    tokio::join!(api, forwarding, replica);
}

/// The follower's replication client: for as long as this node follows
/// `leader` (until `until`), keeps `config.server.data_dir` a copy of the
/// leader's store, from `leader.replication`.
async fn replicate(
    config: &Config,
    cluster: &Arc<Cluster>,
    leader: &Member,
    until: impl Future<Output = ()>,
) {
    tokio::pin!(until);
    let secret = loop {
        tokio::select! {
            secret = cluster.secret() => match secret {
                Ok(s) => break s,
                Err(e) => warn!("cluster: cannot read the replication secret: {e}"),
            },
            () = &mut until => return,
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let security = loop {
        match Security::new(config.cluster.replication_tls, &config.tls) {
            Ok(s) => break s,
            Err(e) => error!("cluster: cannot replicate over TLS: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            () = &mut until => return,
        }
    };
    let state = Arc::new(parking_lot::Mutex::new(FollowerState::default()));
    cluster.set_follower_state(Some(state.clone()));
    let (stop, stopped) = watch::channel(false);
    let following = tokio::spawn(replication::follower::follow_until(
        leader.replication.clone(),
        security,
        secret,
        config.cluster.node_name(),
        config.server.data_dir.clone(),
        state,
        stopped,
    ));
    until.await;
    // The copy is closed (sled and files) before this node may open it.
    let _ = stop.send(true);
    let _ = following.await;
    cluster.set_follower_state(None);
}

/// Between roles: only the management API answers (about this node).
async fn wait_for_change(
    listeners: &Listeners,
    config: &Config,
    cluster: &Arc<Cluster>,
    stop: watch::Receiver<bool>,
) {
    management(
        listeners,
        config,
        cluster,
        role_changed(cluster.role(), stop),
    )
    .await;
}

/// The follower's management API on the management listeners until `until`.
async fn management(
    listeners: &Listeners,
    config: &Config,
    cluster: &Arc<Cluster>,
    until: impl Future<Output = ()> + Send + 'static,
) {
    let mut all = Vec::new();
    for (ls, https) in [(&listeners.mgmt, false), (&listeners.mgmts, true)] {
        for l in ls {
            match dup(l) {
                Ok(l) => all.push((l, https)),
                Err(e) => error!(error = %e, "cluster: cannot share the management listener"),
            }
        }
    }
    crate::mgmt::serve_follower(
        all,
        listeners.tls.clone(),
        cluster.clone(),
        config.mgmt.clone(),
        until,
    )
    .await;
}

/// Completes when the role changes from what it is now, or on stop.
fn role_changed(
    mut role: watch::Receiver<Role>,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let now = role.borrow_and_update().clone();
    async move {
        tokio::select! {
            _ = role.wait_for(|r| *r != now) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

async fn sleep_or_stop(d: Duration, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// A second handle on a bound listener (the same socket): each role's
/// server takes its own and drops it when the role ends, while the socket
/// stays bound for the next.
fn dup(listener: &TcpListener) -> std::io::Result<TcpListener> {
    use std::os::fd::AsFd;
    let fd = listener.as_fd().try_clone_to_owned()?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

fn dup_each(ls: &[TcpListener]) -> std::io::Result<Vec<TcpListener>> {
    ls.iter().map(dup).collect()
}

/// Every listener, duplicated, for [`serve_on`].
fn dup_all(l: &Listeners) -> Option<Listeners> {
    let all = || -> std::io::Result<Listeners> {
        Ok(Listeners {
            amqp: dup_each(&l.amqp)?,
            amqps: dup_each(&l.amqps)?,
            mgmt: dup_each(&l.mgmt)?,
            mgmts: dup_each(&l.mgmts)?,
            stream: dup_each(&l.stream)?,
            stream_tls: dup_each(&l.stream_tls)?,
            tls: l.tls.clone(),
        })
    };
    all()
        .inspect_err(|e| error!(error = %e, "cluster: cannot share the listeners"))
        .ok()
}

/// The client listeners, duplicated and tagged with their protocol.
fn client_listeners(l: &Listeners) -> Option<Vec<(TcpListener, &'static str)>> {
    let mut all = Vec::new();
    for (ls, protocol) in [
        (&l.amqp, "amqp"),
        (&l.amqps, "amqp/ssl"),
        (&l.stream, "stream"),
        (&l.stream_tls, "stream/ssl"),
    ] {
        for listener in ls {
            match dup(listener) {
                Ok(d) => all.push((d, protocol)),
                Err(e) => {
                    error!(error = %e, "cluster: cannot share the listeners");
                    return None;
                }
            }
        }
    }
    Some(all)
}

/// This node's member record: its names and where each of its listeners
/// can be reached (a wildcard address is given as the advertised host).
fn member(config: &Config, l: &Listeners, replication: &TcpListener) -> Member {
    let c = &config.cluster;
    let node_name = c.node_name();
    let first = |ls: &[TcpListener]| ls.iter().find_map(|l| l.local_addr().ok());
    let amqp = first(&l.amqp);
    let advertised_uri = if c.advertised_uri.is_empty() {
        format!("amqp://{node_name}:{}", amqp.map_or(5672, |a| a.port()))
    } else {
        c.advertised_uri.clone()
    };
    let host = advertised_host(&advertised_uri).unwrap_or(node_name.clone());
    let reachable = |a: Option<SocketAddr>| match a {
        None => String::new(),
        Some(a) if a.ip().is_unspecified() => format!("{host}:{}", a.port()),
        Some(a) => a.to_string(),
    };
    let replication = reachable(replication.local_addr().ok());
    Member {
        advertised_uri,
        replication,
        management: reachable(first(&l.mgmt)),
        amqp: reachable(amqp),
        amqps: reachable(first(&l.amqps)),
        stream: reachable(first(&l.stream)),
        stream_tls: reachable(first(&l.stream_tls)),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        node_name,
    }
}

/// The host of an `amqp://[user@]host[:port][/vhost]` URI.
fn advertised_host(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::advertised_host;

    #[test]
    fn the_host_of_an_advertised_uri() {
        assert_eq!(advertised_host("amqp://n1:5672").as_deref(), Some("n1"));
        assert_eq!(
            advertised_host("amqps://u:p@h.example/%2f").as_deref(),
            Some("h.example")
        );
        assert_eq!(advertised_host("amqp://[::1]:5672").as_deref(), Some("::1"));
        assert_eq!(advertised_host("nonsense"), None);
    }
}
