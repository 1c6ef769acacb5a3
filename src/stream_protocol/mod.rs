//! RabbitMQ's stream protocol (port 5552): the binary protocol RabbitMQ's
//! stream clients (`rstream`, `rabbitmq-stream-client`, the Java client)
//! speak, as a front end beside AMQP 0-9-1. `frame` is the wire format,
//! `chunk` the osiris chunks deliveries carry, `connection` one client.
//!
//! A front end like `connection/`: it uses `broker` (access, vhosts, the
//! one declare path) and `store`, and nothing above them.

mod chunk;
mod connection;
mod frame;
mod groups;
mod outbox;
mod publish;
mod subscribe;
mod super_streams;

use crate::broker::Broker;
use crate::listen::accept_any;
use crate::server::Admission;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, warn};

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long shutdown waits for stream connections to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts stream protocol clients on `listeners` until `stop` turns true,
/// then waits (a while) for their connections to end.
pub(crate) async fn serve(
    listeners: Vec<TcpListener>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
) {
    // The limits count each protocol's listeners apart, as RabbitMQ's
    // (Ranch's) max_connections counts per listener.
    let admission = Admission::new(&broker.config.limits);
    let listeners: Vec<_> = listeners.into_iter().map(|l| (l, ())).collect();
    let mut connections = JoinSet::new();
    let mut stopping = stop.clone();
    loop {
        // A place under the connection limits is taken before accepting,
        // as the AMQP listener does.
        let admitted = async {
            let place = admission.place().await;
            (place, accept_any(&listeners).await)
        };
        tokio::select! {
            (mut place, (accepted, ())) = admitted => match accepted {
                Ok((socket, peer)) => {
                    place.accepted();
                    let _ = socket.set_nodelay(true);
                    let local = socket.local_addr().ok();
                    let (read, write) = socket.into_split();
                    connections.spawn(connection::serve(
                        read,
                        write,
                        peer,
                        local,
                        broker.clone(),
                        stop.clone(),
                        place,
                    ));
                }
                Err(e) => {
                    error!(error = %e, "stream protocol accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut stopping) => break,
        }
    }
    drop(listeners);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("some stream connections did not close in time; aborting them");
        connections.abort_all();
    }
}
