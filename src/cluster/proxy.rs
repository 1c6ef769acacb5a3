//! A follower's client listeners: each client is forwarded at TCP level to
//! the leader's listener of the same protocol (as LavinMQ's followers do),
//! so clients may use any node's address. TLS passes through untouched and
//! ends at the leader.

use super::Member;
use crate::listen::accept_any;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// How long reaching the leader may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards every client accepted on `listeners` (each tagged with its
/// protocol: `amqp`, `amqp/ssl`, `stream`, `stream/ssl`) to `leader` until
/// `stop` completes; then drops every forwarded connection. At most
/// `max_connections` at once (0: no limit), as the leader's own limit:
/// past it, clients wait in the backlog.
pub(crate) async fn forward(
    listeners: &[(TcpListener, &'static str)],
    leader: &Member,
    max_connections: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    let places = Arc::new(Semaphore::new(match max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n,
    }));
    let mut clients = JoinSet::new();
    tokio::pin!(stop);
    loop {
        let admitted = async {
            let place = places.clone().acquire_owned().await;
            (place, accept_any(listeners).await)
        };
        tokio::select! {
            (place, (accepted, protocol)) = admitted => match accepted {
                Ok((client, peer)) => {
                    let Some(target) = leader.address_for(protocol).map(String::from) else {
                        debug!(%peer, protocol, "cluster: the leader has no such listener; client dropped");
                        continue;
                    };
                    clients.spawn(async move {
                        pipe(client, target).await;
                        drop(place);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            _ = &mut stop => break,
        }
    }
    clients.abort_all();
}

async fn pipe(mut client: TcpStream, target: String) {
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await;
    let mut upstream = match upstream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(%target, error = %e, "cluster: cannot reach the leader"),
        Err(_) => return debug!(%target, "cluster: reaching the leader timed out"),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
