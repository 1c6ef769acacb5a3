//! The management API's HTTP/1.1 listener, bounded as RabbitMQ's (a Ranch
//! listener running Cowboy): at most `max_connections` connections, each
//! given `request_timeout_ms` to send a request's headers and
//! `max_header_size` bytes for them; a request body that pauses longer
//! than `idle_timeout_ms` fails, and a connection whose response has waited
//! `send_timeout_ms` for the client to read is closed. Without these a
//! client holds sockets and memory forever by opening connections, sending
//! headers a byte a minute, or never reading.
//!
//! hyper's connection builder enforces the header limits and timeout,
//! tower-http's `TimeoutBody` the pause in a body, tokio-io-timeout's
//! stream the stalled write. This module only admits connections and hands
//! each its peer address.

use crate::config::MgmtConfig;
use crate::listen::accept_any;
use crate::tls::Tls;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;
use tower_http::timeout::TimeoutBody;
use tower_service::Service;

/// How long shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// hyper's smallest read buffer.
const MIN_READ_BUFFER: usize = 8192;

/// At most one warning this often that accepting waits at the limit.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A body pause that never ends (`idle_timeout_ms = 0`).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Serves `app` on `listeners` (those marked true over TLS with `tls`)
/// within `limits` until `shutdown` completes.
pub(super) async fn serve(
    listeners: Vec<(TcpListener, bool)>,
    tls: Option<Arc<Tls>>,
    app: Router,
    limits: &MgmtConfig,
    shutdown: impl Future<Output = ()>,
) {
    let places =
        (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(millis(limits.request_timeout_ms));
    if limits.max_header_size > 0 {
        // The read buffer bounds headers still arriving; the header size
        // limit, those complete in a smaller buffer.
        http.max_header_size(limits.max_header_size)
            .max_buf_size(limits.max_header_size.max(MIN_READ_BUFFER));
    }
    let body_pause = millis(limits.idle_timeout_ms).unwrap_or(NEVER);
    let send_timeout = millis(limits.send_timeout_ms);
    let request_timeout = millis(limits.request_timeout_ms);
    let graceful = GracefulShutdown::new();
    // Tells connections still in their TLS handshake (not yet watched by
    // `graceful`, but holding its watcher) to give up at shutdown.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let mut connections = JoinSet::new();
    let mut warned: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A place is taken before accepting, so at the limit the listener
        // stops accepting and clients wait in the kernel's backlog, as
        // Ranch's max_connections does.
        let admitted = async {
            let place = take(&places, &mut warned).await;
            (place, accept_any(&listeners).await)
        };
        tokio::select! {
            (place, (accepted, &over_tls)) = admitted => match accepted {
                Ok((socket, peer)) => {
                    let accepted_at = tokio::time::Instant::now();
                    let app = app.clone();
                    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                        // The peer address decides whether a loopback-only user may log in.
                        request.extensions_mut().insert(ConnectInfo(peer));
                        let request = request.map(|body| TimeoutBody::new(body_pause, body));
                        app.clone().call(request)
                    });
                    let mut socket = TimeoutStream::new(socket);
                    socket.set_write_timeout(send_timeout);
                    let socket = Box::pin(socket);
                    let tls = if over_tls { tls.as_ref().map(|t| t.mgmt()) } else { None };
                    let (http, graceful) = (http.clone(), graceful.watcher());
                    let mut stopping = stopping.clone();
                    connections.spawn(async move {
                        match tls {
                            None => serve_connection(TokioIo::new(socket), http, service, graceful, peer).await,
                            Some(config) => {
                                // The handshake runs here, not in the accept
                                // loop, and within the request timeout: what
                                // it took, the request's headers do not get.
                                let handshake = tokio_rustls::TlsAcceptor::from(config).accept(socket);
                                let deadline = accepted_at + request_timeout.unwrap_or(NEVER);
                                let accepted = tokio::select! {
                                    done = tokio::time::timeout_at(deadline, handshake) => done,
                                    _ = stopping.wait_for(|stop| *stop) => return,
                                };
                                match accepted {
                                    Ok(Ok(stream)) => {
                                        let mut http = http;
                                        if let Some(t) = request_timeout {
                                            http.header_read_timeout((accepted_at + t).saturating_duration_since(tokio::time::Instant::now()));
                                        }
                                        serve_connection(TokioIo::new(stream), http, service, graceful, peer).await
                                    }
                                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "management API: TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "management API: TLS handshake timed out"),
                                }
                            }
                        }
                        drop(place);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::error!(error = %e, "management API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut shutdown => break,
        }
    }
    drop(listeners);
    let _ = stopping_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("management API: requests still in progress at shutdown were dropped");
        connections.abort_all();
    }
}

/// Serves HTTP/1.1 on one connection until it ends or shutdown.
async fn serve_connection<I, S>(
    io: I,
    http: http1::Builder,
    service: S,
    graceful: Watcher,
    peer: std::net::SocketAddr,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(e) = graceful.watch(http.serve_connection(io, service)).await {
        tracing::debug!(%peer, error = %e, "management connection ended");
    }
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// A place under `max_connections`, if limited; logs when accepting has to
/// wait for one (at most once a [`WARN_EVERY`]: a flood of clients, each
/// let in as another ends, would log one line per client).
async fn take(
    places: &Option<Arc<Semaphore>>,
    warned: &mut Option<Instant>,
) -> Option<OwnedSemaphorePermit> {
    let places = places.clone()?;
    if let Ok(place) = places.clone().try_acquire_owned() {
        return Some(place);
    }
    if !warned.is_some_and(|at| at.elapsed() < WARN_EVERY) {
        *warned = Some(Instant::now());
        tracing::warn!(
            setting = "mgmt.max_connections",
            "management API connection limit reached; new connections wait until one ends"
        );
    }
    places.acquire_owned().await.ok()
}
