//! Accept loop and graceful shutdown.

use crate::broker::Broker;
use crate::config::{Config, LimitsConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

/// How long shutdown waits for connections to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Opens the store, then serves AMQP clients on `listener` until `shutdown`
/// completes (see [`serve`]).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let mgmt_listen = config.server.mgmt_listen.clone();
    let broker = Broker::open(config)?;
    let mgmt = bind_mgmt(&mgmt_listen).await;
    serve(listener, mgmt, broker, shutdown).await;
    Ok(())
}

/// Binds the AMQP listener. Connections it accepts inherit its socket buffer
/// sizes (RabbitMQ's `tcp_listen_options` `recbuf`/`sndbuf`); 0 leaves a
/// buffer to the kernel's autotuning.
pub async fn bind_amqp(
    addr: &str,
    recv_buffer: u32,
    send_buffer: u32,
) -> std::io::Result<TcpListener> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{addr} resolves to no address"),
    );
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if recv_buffer > 0 {
            socket.set_recv_buffer_size(recv_buffer)?;
        }
        if send_buffer > 0 {
            socket.set_send_buffer_size(send_buffer)?;
        }
        if let Err(e) = socket.bind(a) {
            last = e;
            continue;
        }
        return socket.listen(1024);
    }
    Err(last)
}

/// Binds the management API's listener; without it the broker still serves
/// AMQP (the error is logged).
pub async fn bind_mgmt(addr: &str) -> Option<TcpListener> {
    match TcpListener::bind(addr).await {
        Ok(l) => {
            if let Ok(a) = l.local_addr() {
                info!(addr = %a, "management API listening");
            }
            Some(l)
        }
        Err(e) => {
            error!(addr, error = %e, "cannot bind the management API; serving AMQP without it");
            None
        }
    }
}

/// Serves AMQP clients on `listener` until `shutdown` completes, then closes
/// every connection with 320 CONNECTION_FORCED, flushes the store and returns.
pub async fn serve(
    listener: TcpListener,
    mgmt: Option<TcpListener>,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Admission::new(&broker.config.limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mgmt_task = mgmt.map(|l| {
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::mgmt::serve(l, broker.clone(), async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A place is taken before accepting, so past a limit the listener
        // stops accepting and clients wait in the kernel's backlog, as
        // RabbitMQ's (ranch's) max_connections does.
        let admitted = async {
            let place = admission.place().await;
            (place, listener.accept().await)
        };
        tokio::select! {
            (place, accepted) = admitted => match accepted {
                Ok((socket, peer)) => {
                    connections.spawn(crate::connection::serve(socket, peer, broker.clone(), stop_rx.clone(), place));
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
    drop(listener);
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
    // Connections are gone: write what the persister still holds and stop it.
    let store = broker.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.close()).await;
}

/// The connection limits, counted from accept: `max_connections` over
/// every connection, `max_handshakes` over those not yet open (a client
/// that has not logged in holds one until its handshake ends or times out).
struct Admission {
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
}

impl Place {
    /// The handshake is over: the connection no longer counts as one.
    pub(crate) fn handshake_done(&mut self) {
        self.handshake = None;
    }
}

impl Admission {
    fn new(limits: &LimitsConfig) -> Admission {
        let limit = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Admission {
            connections: limit(limits.max_connections),
            handshakes: limit(limits.max_handshakes),
        }
    }

    /// Waits until one more connection fits under both limits.
    async fn place(&self) -> Place {
        // Connection place first: a client waiting for one holds no
        // handshake place meanwhile.
        let connection = take(&self.connections, "max_connections").await;
        let handshake = take(&self.handshakes, "max_handshakes").await;
        Place {
            _connection: connection,
            handshake,
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

    #[tokio::test]
    async fn accepted_connections_get_the_configured_buffer_sizes() {
        let listener = bind_amqp("127.0.0.1:0", 64 * 1024, 96 * 1024)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = TcpSocket::from_std_stream(accepted.into_std().unwrap());
        // Linux reports twice the size asked for (the kernel's bookkeeping share).
        assert_eq!(socket.recv_buffer_size().unwrap(), 2 * 64 * 1024);
        assert_eq!(socket.send_buffer_size().unwrap(), 2 * 96 * 1024);
    }
}
