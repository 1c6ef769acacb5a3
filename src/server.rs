//! Accept loop and graceful shutdown.

use crate::broker::Broker;
use crate::config::Config;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
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
    let max_connections = broker.config.limits.max_connections;
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
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    if max_connections > 0 && broker.connections.len() >= max_connections {
                        warn!(%peer, max_connections, "connection limit reached, refusing");
                        drop(socket);
                        continue;
                    }
                    connections.spawn(crate::connection::serve(socket, peer, broker.clone(), stop_rx.clone()));
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
