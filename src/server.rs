//! Accept loop and graceful shutdown.

mod cluster;

pub use cluster::serve_cluster;

use crate::broker::Broker;
use crate::config::{Config, LimitsConfig};
use crate::listen::{accept_any, bind_all, BindError};
use crate::tls::Tls;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How long shutdown waits for connections to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot listen for replication on {addr}: {source}")]
    Replication {
        addr: String,
        source: std::io::Error,
    },
}

/// Every listener the broker serves, bound, and the TLS certificates its
/// TLS listeners use.
#[derive(Default)]
pub struct Listeners {
    pub amqp: Vec<TcpListener>,
    pub amqps: Vec<TcpListener>,
    pub mgmt: Vec<TcpListener>,
    pub mgmts: Vec<TcpListener>,
    /// RabbitMQ's stream protocol.
    pub stream: Vec<TcpListener>,
    /// The stream protocol over TLS.
    pub stream_tls: Vec<TcpListener>,
    pub tls: Option<Arc<Tls>>,
}

impl Listeners {
    /// Reads the TLS files and binds every address `config` names: a file
    /// or an address that fails is an error naming it.
    pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
        let tls = config
            .uses_tls()
            .then(|| Tls::load(&config.tls))
            .transpose()?;
        let (recv, send) = (config.server.tcp_recv_buffer, config.server.tcp_send_buffer);
        let listeners = Listeners {
            amqp: bind_all("AMQP", &config.server.listen, recv, send).await?,
            amqps: bind_all("AMQPS", &config.tls.listen, recv, send).await?,
            mgmt: bind_all("the management API", &config.server.mgmt_listen, 0, 0).await?,
            mgmts: bind_all("the management API (HTTPS)", &config.tls.mgmt_listen, 0, 0).await?,
            stream: bind_all("the stream protocol", &config.stream.listen, recv, send).await?,
            stream_tls: bind_all(
                "the stream protocol (TLS)",
                &config.stream.tls_listen,
                recv,
                send,
            )
            .await?,
            tls,
        };
        crate::listen::log_bound("management API", &listeners.mgmt);
        crate::listen::log_bound("management API (HTTPS)", &listeners.mgmts);
        crate::listen::log_bound("stream protocol", &listeners.stream);
        crate::listen::log_bound("stream protocol (TLS)", &listeners.stream_tls);
        Ok(listeners)
    }
}

/// Serves AMQP clients on `listener` and the management API on `mgmt`
/// (plain TCP each) until `shutdown` completes: [`serve_on`].
pub async fn serve(
    listener: TcpListener,
    mgmt: Option<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let listeners = Listeners {
        amqp: vec![listener],
        mgmt: mgmt.into_iter().collect(),
        ..Listeners::default()
    };
    serve_on(listeners, broker, shutdown).await
}

/// Serves AMQP (and AMQPS) clients and the management API on `listeners`
/// until `shutdown` completes, then closes every connection with 320
/// CONNECTION_FORCED, flushes the store and returns.
pub async fn serve_on(
    listeners: Listeners,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Admission::new(&broker.config.limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let Listeners {
        amqp,
        amqps,
        mgmt,
        mgmts,
        stream,
        stream_tls,
        tls,
    } = listeners;
    let active: Vec<(&'static str, std::net::SocketAddr)> = [
        ("amqp", &amqp),
        ("amqp/ssl", &amqps),
        ("http", &mgmt),
        ("https", &mgmts),
        ("stream", &stream),
        ("stream/ssl", &stream_tls),
    ]
    .into_iter()
    .flat_map(|(protocol, ls)| {
        ls.iter()
            .filter_map(move |l| l.local_addr().ok().map(|a| (protocol, a)))
    })
    .collect();
    let (shovels, shovel_task) = crate::shovel::Shovels::start(broker.clone(), stop_rx.clone());
    let mgmt_task = (!mgmt.is_empty() || !mgmts.is_empty()).then(|| {
        let mut stop = stop_rx.clone();
        let mut all: Vec<_> = mgmt.into_iter().map(|l| (l, false)).collect();
        all.extend(mgmts.into_iter().map(|l| (l, true)));
        tokio::spawn(crate::mgmt::serve(
            all,
            broker.clone(),
            shovels,
            tls.clone(),
            active,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    let stream_task = (!stream.is_empty() || !stream_tls.is_empty()).then(|| {
        let mut all: Vec<_> = stream.into_iter().map(|l| (l, None)).collect();
        all.extend(stream_tls.into_iter().map(|l| (l, tls.clone())));
        tokio::spawn(crate::stream_protocol::serve(
            all,
            broker.clone(),
            stop_rx.clone(),
        ))
    });
    let mut amqp: Vec<_> = amqp.into_iter().map(|l| (l, None)).collect();
    amqp.extend(amqps.into_iter().map(|l| (l, tls.clone())));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A place is taken before accepting, so past a limit the listener
        // stops accepting and clients wait in the kernel's backlog, as
        // RabbitMQ's (ranch's) max_connections does.
        let admitted = async {
            let place = admission.place().await;
            (place, accept_any(&amqp).await)
        };
        tokio::select! {
            (mut place, (accepted, tls)) = admitted => match accepted {
                // In cluster mode, a leader whose lease may have run out
                // (it was paused, say) serves no one: fencing.
                Ok(_) if !crate::cluster::may_serve() => {}
                Ok((socket, peer)) => {
                    place.accepted();
                    let (broker, stop) = (broker.clone(), stop_rx.clone());
                    match tls {
                        // The TLS handshake runs in the connection's task,
                        // within its handshake timeout: a client stalling in
                        // it holds no one else up.
                        Some(tls) => {
                            connections.spawn(crate::connection::serve_tls(socket, peer, tls.clone(), broker, stop, place));
                        }
                        None => {
                            connections.spawn(crate::connection::serve(socket, peer, broker, stop, place));
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    info!(connections = connections.len(), "shutting down");
    drop(amqp);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("some connections did not close in time; aborting them");
        connections.abort_all();
    }
    if let Some(task) = mgmt_task {
        let _ = task.await;
    }
    if let Some(task) = stream_task {
        let _ = task.await;
    }
    // Shovels put back what they hold before the store closes.
    let _ = shovel_task.await;
    // Connections are gone: write what the persister still holds and stop it.
    let store = broker.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
}

/// The connection limits, counted from accept: `max_connections` over
/// every connection, `max_handshakes` over those not yet open (a client
/// that has not logged in holds one until its handshake ends or times out).
pub(crate) struct Admission {
    connections: Option<Arc<Semaphore>>,
    handshakes: Option<Arc<Semaphore>>,
}

/// A connection's places under the limits, given back as it ends. The
/// default holds none (a connection no listener accepted, as the fuzz
/// targets make).
#[derive(Default)]
pub struct Place {
    _connection: Option<OwnedSemaphorePermit>,
    handshake: Option<OwnedSemaphorePermit>,
    /// When the listener accepted the connection (none: not accepted).
    accepted_at: Option<tokio::time::Instant>,
}

impl Place {
    /// The listener accepted the connection: its handshake time starts.
    pub fn accepted(&mut self) {
        self.accepted_at = Some(tokio::time::Instant::now());
    }

    /// When a handshake of at most `timeout`, counted from accept (or
    /// from now, for a connection no listener accepted), must be over.
    pub fn handshake_deadline(&self, timeout: Duration) -> tokio::time::Instant {
        self.accepted_at.unwrap_or_else(tokio::time::Instant::now) + timeout
    }

    /// The handshake is over: the connection no longer counts as one.
    pub(crate) fn handshake_done(&mut self) {
        self.handshake = None;
    }
}

impl Admission {
    pub(crate) fn new(limits: &LimitsConfig) -> Admission {
        let limit = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Admission {
            connections: limit(limits.max_connections),
            handshakes: limit(limits.max_handshakes),
        }
    }

    /// Waits until one more connection fits under both limits.
    pub(crate) async fn place(&self) -> Place {
        // Connection place first: a client waiting for one holds no
        // handshake place meanwhile.
        let connection = take(&self.connections, "max_connections").await;
        let handshake = take(&self.handshakes, "max_handshakes").await;
        Place {
            _connection: connection,
            handshake,
            accepted_at: None,
        }
    }
}

/// A place under `limit`, if there is one; logs when accepting has to
/// wait for it (once per wait, not per client).
async fn take(limit: &Option<Arc<Semaphore>>, setting: &str) -> Option<OwnedSemaphorePermit> {
    let limit = limit.clone()?;
    if let Ok(place) = limit.clone().try_acquire_owned() {
        return Some(place);
    }
    warn!(
        setting,
        "connection limit reached; new connections wait until one ends"
    );
    limit.acquire_owned().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Addresses;
    use tokio::net::TcpSocket;

    #[tokio::test]
    async fn accepted_connections_get_the_configured_buffer_sizes() {
        let listener = bind_all("AMQP", &Addresses::one("127.0.0.1:0"), 64 * 1024, 96 * 1024)
            .await
            .unwrap()
            .remove(0);
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = TcpSocket::from_std_stream(accepted.into_std().unwrap());
        // Linux reports twice the size asked for (the kernel's bookkeeping share).
        assert_eq!(socket.recv_buffer_size().unwrap(), 2 * 64 * 1024);
        assert_eq!(socket.send_buffer_size().unwrap(), 2 * 96 * 1024);
    }
}
