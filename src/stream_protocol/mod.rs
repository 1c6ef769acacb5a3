//! RabbitMQ's stream protocol (port 5552): the binary protocol RabbitMQ's
//! stream clients (`rstream`, `rabbitmq-stream-client`, the Java client)
//! speak, as a front end beside AMQP 0-9-1. `frame` is the wire format,
//! `chunk` the osiris chunks deliveries carry, `connection` one client.
//!
//! A front end like `connection/`: it uses `broker` (access, vhosts, the
//! one declare path) and `store`, and nothing above them. Over TLS
//! (`stream.tls_listen`) the handshake runs in the connection's task, then
//! the same `connection::serve` takes the decrypted stream.

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
use crate::server::{Admission, Place};
use crate::tls::{HandshakeError, Tls};
use connection::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, warn};

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How long shutdown waits for stream connections to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts stream protocol clients on `listeners` (each with the TLS
/// configuration it serves, or none for plain TCP) until `stop` turns
/// true, then waits (a while) for their connections to end.
pub(crate) async fn serve(
    listeners: Vec<(TcpListener, Option<Arc<Tls>>)>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
) {
    // The limits count each protocol's listeners apart, as RabbitMQ's
    // (Ranch's) max_connections counts per listener.
    let admission = Admission::new(&broker.config.limits);
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
            (mut place, (accepted, tls)) = admitted => match accepted {
                Ok((socket, peer)) => {
                    place.accepted();
                    let _ = socket.set_nodelay(true);
                    let local = socket.local_addr().ok();
                    match tls {
                        Some(tls) => {
                            connections.spawn(serve_tls(
                                socket,
                                peer,
                                local,
                                tls.clone(),
                                broker.clone(),
                                stop.clone(),
                                place,
                            ));
                        }
                        None => {
                            let (read, write) = socket.into_split();
                            connections.spawn(connection::serve(
                                read,
                                write,
                                Transport { peer, local, tls: None },
                                broker.clone(),
                                stop.clone(),
                                place,
                            ));
                        }
                    }
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

/// One client on the TLS listener: the TLS handshake within the handshake
/// timeout counted from accept (the deadline the stream handshake after it
/// keeps), then the connection over the decrypted stream, which knows what
/// the session negotiated.
async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    tls: Arc<Tls>,
    broker: Arc<Broker>,
    stop: watch::Receiver<bool>,
    place: Place,
) {
    let timeout = Duration::from_millis(broker.config.limits.handshake_timeout_ms);
    let deadline = place.handshake_deadline(timeout);
    let handshake = crate::tls::accept(tls.amqp(), tls.settings(), socket, deadline, stop.clone());
    let (stream, session) = match handshake.await {
        Ok(done) => done,
        Err(HandshakeError::Failed(e)) => {
            warn!(peer = %peer, error = %e, "stream protocol TLS handshake failed");
            return;
        }
        Err(HandshakeError::TimedOut) => {
            warn!(peer = %peer, "stream protocol TLS handshake timed out");
            return;
        }
        Err(HandshakeError::ShuttingDown) => return,
    };
    let (read, write) = tokio::io::split(stream);
    let transport = Transport {
        peer,
        local,
        tls: Some(Arc::new(session)),
    };
    connection::serve(read, write, transport, broker, stop, place).await;
}
