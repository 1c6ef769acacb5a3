//! One client connection: the handshake, then a reader loop that owns the
//! decoder and every channel's state, and a writer task draining the outbox.

pub(crate) mod auth;
mod interrupts;
pub(crate) mod outbox;

use crate::broker::limits::{ConnectionPlace, MAX_CHANNELS};
use crate::broker::queue::Queue;
use crate::broker::{Broker, ChannelRegistry, ConnectionHandle, PublishingState};
use crate::channel::shared::ChannelShared;
use crate::channel::{Channel, ConnCtx, Outcome};
use crate::error::{loggable, AmqpError, ReplyCode};
use crate::hash::HashMap;
use crate::protocol::frame::{decode_frame, Frame, FrameType, FRAME_MIN_SIZE};
use crate::protocol::method::{decode_method, method_ids, Method};
use crate::protocol::{encode, PROTOCOL_HEADER};
use crate::server::Place;
use crate::tls::{HandshakeError, TlsSession};
use amq_protocol::protocol::{connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::BytesMut;
use interrupts::{Interrupt, Interrupts};
use outbox::Outbox;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Why a connection ended when the client went without connection.close:
/// RabbitMQ's words, and a warning as in its log.
const CLOSED_ABRUPTLY: &str = "client unexpectedly closed TCP connection";
/// How long to wait for close-ok after sending connection.close.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a heartbeat timer of a connection without heartbeats (reader
/// or writer) looks at its absent deadline.
const NO_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The read buffer until tune-ok, when frames are at most FRAME_MIN_SIZE:
/// what a client nobody has authenticated can make the broker hold.
const HANDSHAKE_READ_BUFFER: usize = FRAME_MIN_SIZE as usize;
/// The read buffer from tune-ok on. BytesMut sizes each new allocation,
/// once frames still hold the old one, by its first capacity: reads of up
/// to this many bytes, and allocations this big, whatever the frame size.
const READ_BUFFER: usize = 64 * 1024;

/// Serves one client until it disconnects, fails, or is closed by the broker.
pub(crate) async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    place: Place,
) {
    let _ = socket.set_nodelay(true);
    let local = socket
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let (read, write) = socket.into_split();
    serve_stream(read, write, peer, local, broker, shutdown, place).await;
}

/// Serves one client over TLS: the TLS handshake, within the handshake
/// timeout counted from accept, then [`serve_stream`] over the decrypted
/// stream, which knows the name the client's certificate gives EXTERNAL.
pub(crate) async fn serve_tls(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Arc<crate::tls::Tls>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    place: Place,
) {
    let _ = socket.set_nodelay(true);
    let local = socket
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let timeout = Duration::from_millis(broker.config.limits.handshake_timeout_ms);
    // A second descriptor of the socket, never read: the TCP stream is
    // inside the TLS stream, and this is how a paused connection still
    // sees its client go away.
    let (socket, close_watch) = match watch_descriptor(socket) {
        Ok(pair) => pair,
        Err(e) => {
            warn!(peer = %peer, error = %e, "cannot set up the connection");
            return;
        }
    };
    let deadline = place.handshake_deadline(timeout);
    let handshake = crate::tls::accept(
        tls.amqp(),
        tls.settings(),
        socket,
        deadline,
        shutdown.clone(),
    );
    let (stream, session) = match handshake.await {
        Ok(done) => done,
        Err(HandshakeError::Failed(e)) => {
            warn!(peer = %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(HandshakeError::TimedOut) => {
            warn!(peer = %peer, "TLS handshake timed out");
            return;
        }
        // Shutdown does not wait for a handshake: no AMQP connection yet.
        Err(HandshakeError::ShuttingDown) => return,
    };
    let session = Arc::new(session);
    let (read, write) = tokio::io::split(stream);
    let read = TlsRead {
        read,
        session,
        close_watch,
    };
    serve_stream(read, write, peer, local, broker, shutdown, place).await;
}

/// `socket` and a duplicate of its descriptor, both registered with tokio.
fn watch_descriptor(socket: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let socket = socket.into_std()?;
    let watch = socket.try_clone()?;
    Ok((TcpStream::from_std(socket)?, TcpStream::from_std(watch)?))
}

/// The reading half of a TLS connection, with what its handshake
/// negotiated and said about the client's certificate.
struct TlsRead<R> {
    read: R,
    session: Arc<TlsSession>,
    /// The same socket (another descriptor), only to see the peer close.
    close_watch: TcpStream,
}

impl<R: AsyncRead + Unpin> AsyncRead for TlsRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + Unpin + Send> ClientRead for TlsRead<R> {
    /// As for plain TCP, looked at through the second descriptor.
    fn peer_closed(&self) -> impl std::future::Future<Output = ()> + Send {
        let watch = &self.close_watch;
        read_closed(move || watch.ready(tokio::io::Interest::READABLE))
    }

    fn tls(&self) -> Option<&Arc<TlsSession>> {
        Some(&self.session)
    }
}

/// Serves one client over any byte stream, given as its two halves: what
/// [`serve`] does once it has taken the socket apart. The fuzz targets drive
/// connections in memory through it; `local` names the broker's end.
pub async fn serve_stream<R, W>(
    read: R,
    write: W,
    peer: SocketAddr,
    local: String,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    place: Place,
) where
    R: ClientRead,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let outbox = Arc::new(Outbox::default());
    let heartbeat = Arc::new(Mutex::new(None));
    let writer = tokio::spawn(outbox.clone().run_writer(write, heartbeat.clone()));
    let mut conn = Connection {
        reader: FrameReader {
            read,
            buf: BytesMut::with_capacity(HANDSHAKE_READ_BUFFER),
            // Until tune-ok, as RabbitMQ: a client nobody has authenticated
            // cannot make the broker buffer more.
            frame_max: FRAME_MIN_SIZE,
        },
        id: broker.next_id(),
        peer,
        name: format!("{peer} -> {local}"),
        local,
        broker,
        outbox: outbox.clone(),
        heartbeat,
        shutdown,
        resumed: None,
        place,
    };
    conn.run().await;
    outbox.close();
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        // A client that never reads would keep the writer, and the
        // outbox it holds, forever.
        writer.abort();
    }
}

/// The half of a client's stream the reader takes bytes from.
pub trait ClientRead: AsyncRead + Unpin + Send {
    /// Completes once the peer has closed the stream (or it failed),
    /// without reading from it: for a connection whose frames wait.
    fn peer_closed(&self) -> impl std::future::Future<Output = ()> + Send;

    /// On a TLS connection, what its session negotiated, including the
    /// user name SASL EXTERNAL logs in as (from the client's verified
    /// certificate) or why there is none; `None` without TLS, where
    /// EXTERNAL is not offered.
    fn tls(&self) -> Option<&Arc<TlsSession>> {
        None
    }
}

impl ClientRead for tokio::net::tcp::OwnedReadHalf {
    /// A close queued behind input the broker is not reading never
    /// arrives; the next heartbeat the writer sends then draws a reset.
    async fn peer_closed(&self) {
        read_closed(|| self.ready(tokio::io::Interest::READABLE)).await
    }
}

/// Completes once a socket's readiness (from `ready`) says the peer
/// closed it (or the socket failed), without reading from it.
async fn read_closed<F, Fut>(ready: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<tokio::io::Ready>>,
{
    /// Unread input keeps the socket readable: look again this often.
    const LOOK_EVERY: Duration = Duration::from_millis(200);
    loop {
        match ready().await {
            Ok(ready) if !ready.is_read_closed() => tokio::time::sleep(LOOK_EVERY).await,
            _ => return,
        }
    }
}

impl<T: AsyncRead + Send> ClientRead for tokio::io::ReadHalf<T> {
    /// An in-memory stream cannot be looked at without reading it: its
    /// closing shows only once the connection reads again.
    fn peer_closed(&self) -> impl std::future::Future<Output = ()> + Send {
        std::future::pending()
    }
}

struct FrameReader<R> {
    read: R,
    buf: BytesMut,
    frame_max: u32,
}

enum ReadError {
    /// The peer closed the socket or the read failed.
    Closed,
    /// Nothing arrived within the allowed time (missed heartbeats, handshake).
    Timeout,
    Protocol(AmqpError),
}

impl<R: ClientRead> FrameReader<R> {
    /// Reads more bytes; `Closed` on EOF.
    async fn fill(&mut self, timeout: Option<Duration>) -> Result<(), ReadError> {
        let read = self.read.read_buf(&mut self.buf);
        let n = match timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .map_err(|_| ReadError::Timeout)?,
            None => read.await,
        };
        match n {
            Ok(0) | Err(_) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
        }
    }

    /// Tune-ok: frames up to `frame_max` from now on, read into a full-size
    /// buffer (what the client has sent ahead moves along).
    fn tuned(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
        let mut buf = BytesMut::with_capacity(READ_BUFFER.max(self.buf.len()));
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }

    fn next_buffered(&mut self) -> Result<Option<Frame>, ReadError> {
        decode_frame(&mut self.buf, self.frame_max).map_err(ReadError::Protocol)
    }

    /// Completes once the peer has closed the stream: see
    /// [`ClientRead::peer_closed`].
    async fn peer_closed(&self) {
        self.read.peer_closed().await
    }

    async fn next_frame(&mut self, timeout: Option<Duration>) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(frame);
            }
            self.fill(timeout).await?;
        }
    }
}

struct Connection<R> {
    reader: FrameReader<R>,
    id: u64,
    peer: SocketAddr,
    /// The broker's end of the socket, for the connection's name.
    local: String,
    /// The name logs use, as RabbitMQ's: `peer -> local`, then ` - ` and
    /// the client-provided `connection_name` once start-ok brings it.
    name: String,
    broker: Arc<Broker>,
    outbox: Arc<Outbox>,
    heartbeat: Arc<Mutex<Option<Duration>>>,
    shutdown: watch::Receiver<bool>,
    /// When the last pause (the socket not read) ended, not yet seen by
    /// the heartbeat check.
    resumed: Option<tokio::time::Instant>,
    /// Its places under the connection limits.
    place: Place,
}

/// Results of the handshake the reader loop needs.
struct Session {
    ctx: ConnCtx,
    channel_max: u16,
    place: ConnectionPlace,
    heartbeat: Option<Duration>,
    client_properties: FieldTable,
    mechanism: String,
}

impl<R: ClientRead> Connection<R> {
    async fn run(&mut self) {
        let handshake_timeout =
            Duration::from_millis(self.broker.config.limits.handshake_timeout_ms);
        // Counted from accept: a TLS handshake before it took its share.
        let deadline = self.place.handshake_deadline(handshake_timeout);
        let handshake = tokio::time::timeout_at(deadline, self.handshake()).await;
        self.place.handshake_done();
        let session = match handshake {
            Ok(Ok(Some(session))) => session,
            Ok(Ok(None)) => return,
            Ok(Err(err)) => {
                // A refused login was logged where it was refused, with why.
                let login_refused = err.code == ReplyCode::AccessRefused
                    && (err.class_id, err.method_id) == (10, 11);
                if !login_refused {
                    warn!(connection = ?self.name, error = %err.log_text(), "handshake failed");
                }
                self.send_connection_close(&err);
                self.await_close_ok().await;
                return;
            }
            Err(_) => {
                warn!(connection = ?self.name, "handshake timed out");
                return;
            }
        };
        let (close_tx, close_rx) = watch::channel(None);
        let registry = ChannelRegistry::default();
        let publishing = Arc::new(PublishingState::default());
        self.broker.connections.insert(
            self.id,
            ConnectionHandle {
                name: format!("{} -> {}", self.peer, self.local),
                vhost: session.ctx.vhost.name.clone(),
                user: session.ctx.user.clone(),
                peer: self.peer,
                local: self.local.clone(),
                client_properties: session.client_properties,
                auth_mechanism: session.mechanism,
                tls: self.reader.read.tls().cloned(),
                connected_at: crate::broker::timers::now_ms(),
                frame_max: session.ctx.frame_max,
                channel_max: session.channel_max,
                heartbeat: session.heartbeat.map_or(0, |h| h.as_secs() as u16),
                channels: registry.clone(),
                close: close_tx,
                publishing: publishing.clone(),
                stream: None,
            },
        );
        crate::broker::counters::bump(&self.broker.counters.connections_opened);
        info!(connection = ?self.name, user = ?session.ctx.user, vhost = ?session.ctx.vhost.name, "connection opened");
        let mut open = OpenConnection {
            name: self.name.clone(),
            ctx: session.ctx,
            channels: HashMap::default(),
            registry,
            channel_max: session.channel_max,
            place: session.place,
            frame_timeout: session.heartbeat.map(|h| h * 2),
            publishing,
        };
        let reason = self.serve_frames(&mut open, close_rx).await;
        open.release();
        self.broker.connections.remove(&self.id);
        crate::broker::counters::bump(&self.broker.counters.connections_closed);
        if reason == CLOSED_ABRUPTLY {
            warn!(connection = ?self.name, user = ?open.ctx.user, vhost = ?open.ctx.vhost.name, reason, "connection closed");
        } else {
            info!(connection = ?self.name, user = ?open.ctx.user, vhost = ?open.ctx.vhost.name, reason, "connection closed");
        }
    }

    /// Protocol header, start/start-ok, tune/tune-ok, open/open-ok.
    /// `Ok(None)`: the socket is done without an AMQP error to report.
    async fn handshake(&mut self) -> Result<Option<Session>, AmqpError> {
        let mut header = [0u8; 8];
        if self.reader.buf.len() < 8 {
            let need = 8 - self.reader.buf.len();
            let mut tmp = vec![0u8; need];
            if self.reader.read.read_exact(&mut tmp).await.is_err() {
                return Ok(None);
            }
            self.reader.buf.extend_from_slice(&tmp);
        }
        header.copy_from_slice(&self.reader.buf.split_to(8));
        if &header != PROTOCOL_HEADER {
            debug!(connection = ?self.name, ?header, "bad protocol header");
            self.outbox
                .push(|buf| buf.extend_from_slice(PROTOCOL_HEADER));
            return Ok(None);
        }
        self.send0(AMQPClass::Connection(connection::AMQPMethod::Start(
            connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: LongString::from(if self.reader.read.tls().is_some() {
                    // Offered on every TLS connection, as RabbitMQ's
                    // rabbitmq_auth_mechanism_ssl: without a certificate
                    // the refusal says why, which beats no mechanism.
                    "PLAIN AMQPLAIN EXTERNAL"
                } else {
                    "PLAIN AMQPLAIN"
                }),
                locales: LongString::from("en_US"),
            },
        )));

        let start_ok = match self.expect_connection_method(false).await? {
            Some(connection::AMQPMethod::StartOk(s)) => s,
            Some(_) => {
                return Err(
                    AmqpError::command_invalid("expected connection.start-ok").on_method(10, 11)
                )
            }
            None => return Ok(None),
        };
        if let Some(AMQPValue::LongString(given)) =
            start_ok.client_properties.inner().get("connection_name")
        {
            self.name = format!(
                "{} - {}",
                self.name,
                String::from_utf8_lossy(given.as_bytes())
            );
        }
        let cancel_notify =
            client_capability(&start_ok.client_properties, "consumer_cancel_notify");
        let mechanism = start_ok.mechanism.as_str();
        let user = self.login(mechanism, start_ok.response.as_bytes())?;
        if self.broker.is_loopback_only(&user) && !auth::is_loopback(self.peer.ip()) {
            warn!(connection = ?self.name, "{mechanism} login refused: user '{}' can only connect via localhost (auth.loopback_users)", loggable(&user));
            return Err(AmqpError::access_refused(format_args!(
                "user '{user}' can only connect via localhost"
            ))
            .on_method(10, 11));
        }

        let limits = self.broker.config.limits.clone();
        self.send0(AMQPClass::Connection(connection::AMQPMethod::Tune(
            connection::Tune {
                channel_max: limits.channel_max,
                frame_max: limits.frame_max,
                heartbeat: limits.heartbeat,
            },
        )));
        let tune_ok = match self.expect_connection_method(false).await? {
            Some(connection::AMQPMethod::TuneOk(t)) => t,
            Some(_) => {
                return Err(
                    AmqpError::command_invalid("expected connection.tune-ok").on_method(10, 31)
                )
            }
            None => return Ok(None),
        };
        let negotiated = negotiate(
            "frame_max",
            FRAME_MIN_SIZE,
            limits.frame_max,
            tune_ok.frame_max,
        )
        .and_then(|()| {
            negotiate(
                "channel_max",
                1,
                limits.channel_max.into(),
                tune_ok.channel_max.into(),
            )
        });
        if let Err(detail) = negotiated {
            // RabbitMQ closes the socket without a reply here.
            warn!(connection = ?self.name, "failed to negotiate connection parameters: {detail}");
            return Ok(None);
        }
        let (channel_max, frame_max) = (tune_ok.channel_max, tune_ok.frame_max);
        self.reader.tuned(frame_max);
        let heartbeat =
            (tune_ok.heartbeat > 0).then(|| Duration::from_secs(tune_ok.heartbeat as u64));
        // Send at half the interval so the peer always sees one in time.
        *self.heartbeat.lock() = heartbeat.map(|h| (h / 2).max(Duration::from_millis(500)));

        let open = match self.expect_connection_method(true).await? {
            Some(connection::AMQPMethod::Open(o)) => o,
            Some(_) => {
                return Err(AmqpError::command_invalid("expected connection.open").on_method(10, 40))
            }
            None => return Ok(None),
        };
        let Some(vhost) = self.broker.vhost(open.virtual_host.as_str()) else {
            return Err(AmqpError::not_allowed(format_args!(
                "vhost {} not found",
                open.virtual_host
            ))
            .on_method(10, 40));
        };
        // RabbitMQ checks the vhost's and then the user's connection limit
        // before the user's access to the vhost.
        let place = self
            .broker
            .connection_place(&vhost.name, &user)
            .map_err(|e| e.on_method(10, 40))?;
        if self.broker.access.permission(&vhost.name, &user).is_none() {
            warn!(connection = ?self.name, user = ?user, vhost = ?vhost.name, "access to vhost refused: the user has no permissions on it");
            return Err(AmqpError::not_allowed(format_args!(
                "access to vhost '{}' refused for user '{user}'",
                vhost.name
            ))
            .on_method(10, 40));
        }
        self.send0(AMQPClass::Connection(connection::AMQPMethod::OpenOk(
            connection::OpenOk {},
        )));
        Ok(Some(Session {
            ctx: ConnCtx {
                id: self.id,
                broker: self.broker.clone(),
                vhost,
                user,
                outbox: self.outbox.clone(),
                frame_max,
                cancel_notify,
                blocked_notify: client_capability(
                    &start_ok.client_properties,
                    "connection.blocked",
                ),
                has_published: false,
                flow: None,
                waiting: None,
                meta_mark: 0,
                method: (0, 0),
                exclusive_queues: Vec::new(),
                allowed: Default::default(),
            },
            channel_max,
            place,
            heartbeat,
            client_properties: start_ok.client_properties.clone(),
            mechanism: mechanism.to_string(),
        }))
    }

    /// The user start-ok's mechanism and response log in as, or RabbitMQ's
    /// refusal (the reason goes to the log, as RabbitMQ's).
    fn login(&self, mechanism: &str, response: &[u8]) -> Result<String, AmqpError> {
        let refused = || {
            AmqpError::access_refused(format_args!("Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."))
            .on_method(10, 11)
        };
        if mechanism == "EXTERNAL" {
            let Some(login) = self.reader.read.tls().map(|t| &t.login) else {
                return Err(AmqpError::access_refused(format_args!(
                    "unsupported authentication mechanism '{mechanism}'"
                ))
                .on_method(10, 11));
            };
            // As rabbit_auth_mechanism_ssl: the response is not looked at;
            // the user must exist, no password is checked.
            return match login {
                Ok(user) if self.broker.access.user(user).is_some() => Ok(user.clone()),
                Ok(user) => {
                    warn!(connection = ?self.name, "EXTERNAL login refused: user '{}' - invalid credentials (no such user)", loggable(user));
                    Err(refused())
                }
                Err(reason) => {
                    warn!(connection = ?self.name, "EXTERNAL login refused: {}", loggable(reason));
                    Err(refused())
                }
            };
        }
        let Some((user, password)) = auth::credentials(mechanism, response) else {
            return Err(if mechanism == "PLAIN" || mechanism == "AMQPLAIN" {
                warn!(connection = ?self.name, "{} login refused: the response does not hold a user name and password", loggable(mechanism));
                refused()
            } else {
                warn!(connection = ?self.name, "login refused: unsupported authentication mechanism '{}'", loggable(mechanism));
                AmqpError::access_refused(format_args!(
                    "unsupported authentication mechanism '{mechanism}'"
                ))
                .on_method(10, 11)
            });
        };
        if self.broker.authenticate(&user, &password).is_none() {
            // The client is told to see the log: say why, as RabbitMQ
            // does, and which of the reasons it folds into one.
            let why = match self.broker.access.user(&user) {
                None => "no such user",
                Some(_) if password.is_empty() => "empty password",
                Some(_) => "wrong password",
            };
            warn!(connection = ?self.name, "{mechanism} login refused: user '{}' - invalid credentials ({why})", loggable(&user));
            return Err(refused());
        }
        Ok(user)
    }

    /// The next connection-class method on channel 0 during the handshake
    /// (heartbeats skipped); `None` when the client went away or closed.
    /// Before tune-ok (`tuned` false) a frame that cannot be decoded ends the
    /// connection without a reply, as RabbitMQ does.
    async fn expect_connection_method(
        &mut self,
        tuned: bool,
    ) -> Result<Option<connection::AMQPMethod>, AmqpError> {
        let undecodable = |err: AmqpError| {
            if tuned {
                return Err(err);
            }
            warn!(connection = ?self.name, error = %err.log_text(), "closing connection before tune-ok");
            Ok(None)
        };
        loop {
            let frame = match self.reader.next_frame(None).await {
                Ok(f) => f,
                Err(ReadError::Protocol(e)) => return undecodable(e),
                Err(_) => return Ok(None),
            };
            match frame.kind {
                FrameType::Heartbeat => continue,
                FrameType::Method if frame.channel == 0 => match decode_method(&frame.payload) {
                    Err(e) => return undecodable(e),
                    Ok(Method::Other(class)) => match *class {
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                            self.send0(AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )));
                            return Ok(None);
                        }
                        AMQPClass::Connection(m) => return Ok(Some(m)),
                        other => {
                            return Err(AmqpError::command_invalid(
                                "expected a connection method during the handshake",
                            )
                            .on_method(other.get_amqp_class_id(), other.get_amqp_method_id()))
                        }
                    },
                    Ok(_) => {
                        return Err(AmqpError::command_invalid(
                            "expected a connection method during the handshake",
                        ))
                    }
                },
                _ => {
                    return Err(AmqpError::unexpected_frame(
                        "expected a method frame on channel 0 during the handshake",
                    ))
                }
            }
        }
    }

    fn send0(&self, class: AMQPClass) {
        self.outbox.push(|buf| encode::method(buf, 0, &class));
    }

    fn send_connection_close(&self, err: &AmqpError) {
        self.send0(AMQPClass::Connection(connection::AMQPMethod::Close(
            connection::Close {
                reply_code: err.code as u16,
                reply_text: short_string(&err.text),
                class_id: err.class_id,
                method_id: err.method_id,
            },
        )));
    }

    /// After sending connection.close, discards frames until close-ok (or
    /// the client's own close) arrives, or a timeout.
    async fn await_close_ok(&mut self) {
        let wait = async {
            loop {
                let frame = match self.reader.next_frame(None).await {
                    Ok(f) => f,
                    Err(ReadError::Protocol(_)) => {
                        // Skip undecodable bytes: the connection is going anyway.
                        return;
                    }
                    Err(_) => return,
                };
                if frame.kind == FrameType::Method && frame.channel == 0 {
                    match method_ids(&frame.payload) {
                        (10, 51) => return,
                        (10, 50) => {
                            self.send0(AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )));
                            return;
                        }
                        _ => {}
                    }
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, wait).await;
    }

    /// Discards input until the client closes its side, or a timeout.
    async fn await_eof(&mut self) {
        let drain = async {
            loop {
                self.reader.buf.clear();
                if self.reader.fill(None).await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_OK_TIMEOUT, drain).await;
    }

    /// The main loop. Returns why the connection ended.
    async fn serve_frames(
        &mut self,
        open: &mut OpenConnection,
        close_rx: watch::Receiver<Option<String>>,
    ) -> &'static str {
        let frame_timeout = open.frame_timeout.unwrap_or(NO_HEARTBEAT);
        // The heartbeat deadline is checked lazily: a read only notes when
        // it happened, and the timer, when it fires, moves to the deadline
        // that read implies.
        let mut last_read = tokio::time::Instant::now();
        let mut interrupts = Interrupts::new(
            self.shutdown.clone(),
            close_rx.clone(),
            last_read + frame_timeout,
            ACK_TIMEOUT_CHECK,
        );
        loop {
            // Frames left buffered because an alarm stopped the reading.
            let mut held_back = false;
            loop {
                let frame = match self.reader.next_buffered() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(ReadError::Protocol(err)) => return self.fail(open, err).await,
                    Err(_) => return CLOSED_ABRUPTLY,
                };
                // A frame costs the task budget like a read does, so a
                // publisher whose socket always has more to read yields to
                // the consumers' tasks within about a hundred frames
                // instead of a whole budget of reads (8 MiB here).
                tokio::task::coop::consume_budget().await;
                match open.handle_frame(frame) {
                    Ok(FrameOutcome::Continue) if open.ctx.waiting.is_some() => {
                        held_back = true;
                        break;
                    }
                    Ok(FrameOutcome::Continue) => {
                        // As RabbitMQ's reader once blocked: a publisher
                        // stops at once, not at the end of what it already
                        // sent, which can be a whole socket buffer.
                        if open.ctx.has_published && self.broker.alarm_reason().is_some() {
                            held_back = true;
                            break;
                        }
                    }
                    Ok(FrameOutcome::ClientClosed) => {
                        open.release();
                        self.send0(AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )));
                        // The client closes the socket once it has close-ok;
                        // closing first can make it see an abort instead.
                        self.await_eof().await;
                        return "client closed the connection";
                    }
                    Ok(FrameOutcome::Ended) => return "client sent connection.close-ok",
                    Err(err) => return self.fail(open, err).await,
                }
            }
            open.flush_confirms();
            // A method whose reply waits: nothing more is read until it is
            // answered (its resumption may wait again).
            while let Some(waiting) = open.ctx.waiting.take() {
                let resume = match self.pause(open, &close_rx, waiting.until).await {
                    Ok(resume) => resume,
                    Err(reason) => return reason,
                };
                if let Err(err) = open.resume(waiting.channel, resume) {
                    return self.fail(open, err).await;
                }
            }
            if self.outbox.is_over_read_limit() {
                // The client is not reading what it asked for: stop
                // reading it until it does.
                let outbox = self.outbox.clone();
                let drained = async move { outbox.drained_below_read_limit().await };
                if let Err(reason) = self.pause(open, &close_rx, drained).await {
                    return reason;
                }
            }
            if open.ctx.has_published && self.broker.alarm_reason().is_some() {
                if let Some(reason) = self.wait_while_blocked(open, &close_rx).await {
                    return reason;
                }
            }
            if let Some(queue) = open.ctx.flow.take() {
                if let Some(reason) = self.wait_for_flow(open, queue, &close_rx).await {
                    return reason;
                }
            }
            if open.ctx.has_published && self.broker.store.backlog.is_over() {
                // The disk is behind: stop reading this publisher (TCP
                // back-pressure, RabbitMQ's "flow") until it catches up.
                let store = self.broker.store.clone();
                let drained = async move { store.backlog.wait_drained().await };
                if let Err(reason) = self.pause(open, &close_rx, drained).await {
                    return reason;
                }
            }
            if let Some(resumed) = self.resumed.take() {
                // The client's heartbeats wait unread while it is paused:
                // that silence is the broker's (RabbitMQ pauses its
                // heartbeat monitor too).
                last_read = last_read.max(resumed);
            }
            if held_back {
                continue;
            }
            tokio::select! {
                // Interrupts first (a flag test unless one woke), so that a
                // socket that never runs dry cannot keep them out.
                biased;
                interrupt = interrupts.next() => match interrupt {
                    Interrupt::Ended(reason) => {
                        let err = AmqpError::new(ReplyCode::ConnectionForced, reason);
                        return self.force_close(open, err).await;
                    }
                    Interrupt::HeartbeatDue => {
                        if open.frame_timeout.is_some() && last_read.elapsed() >= frame_timeout {
                            warn!(connection = ?self.name, user = ?open.ctx.user, vhost = ?open.ctx.vhost.name, "missed heartbeats from client, closing connection");
                            return "missed heartbeats";
                        }
                        interrupts.heartbeat_at(last_read + frame_timeout);
                    }
                    Interrupt::AckCheckDue => open.enforce_ack_timeouts(),
                },
                r = self.reader.fill(None) => match r {
                    Ok(()) => last_read = tokio::time::Instant::now(),
                    Err(_) => return CLOSED_ABRUPTLY,
                },
            }
        }
    }

    /// Stops reading from a publisher while `queue` asks its publishers to
    /// wait (flow control: see `broker::flow`). Clients are not told, as
    /// RabbitMQ does not tell them of its flow state.
    async fn wait_for_flow(
        &mut self,
        open: &mut OpenConnection,
        queue: Arc<Queue>,
        close_rx: &watch::Receiver<Option<String>>,
    ) -> Option<&'static str> {
        open.publishing.paused_by_flow();
        let released = crate::broker::ops::publish::flow_released(queue);
        self.pause(open, close_rx, released).await.err()
    }

    /// Waits for `until` (not reading the socket) unless the connection
    /// must end first: broker shutdown, or closed via management. Then it
    /// closes the connection and says why.
    async fn pause<T>(
        &mut self,
        open: &mut OpenConnection,
        close_rx: &watch::Receiver<Option<String>>,
        until: impl std::future::Future<Output = T>,
    ) -> Result<T, &'static str> {
        let reason = tokio::select! {
            done = until => {
                self.resumed = Some(tokio::time::Instant::now());
                return Ok(done);
            }
            // What it holds (a transaction, a body) is given back now, not
            // when the wait ends: the wait may be for that memory.
            () = self.reader.peer_closed() => return Err(CLOSED_ABRUPTLY),
            reason = interrupts::ended(self.shutdown.clone(), close_rx.clone()) => reason,
        };
        let err = AmqpError::new(ReplyCode::ConnectionForced, reason);
        Err(self.force_close(open, err).await)
    }

    /// Stops reading from a publishing connection while a resource alarm
    /// (memory or disk) is on (TCP back-pressure, as RabbitMQ), telling
    /// clients that listen. Returns a reason when the connection must end
    /// meanwhile.
    async fn wait_while_blocked(
        &mut self,
        open: &mut OpenConnection,
        close_rx: &watch::Receiver<Option<String>>,
    ) -> Option<&'static str> {
        if let (true, Some(reason)) = (open.ctx.blocked_notify, self.broker.alarm_reason()) {
            self.send0(AMQPClass::Connection(connection::AMQPMethod::Blocked(
                connection::Blocked {
                    reason: reason.into(),
                },
            )));
        }
        let cleared = crate::broker::ops::publish::alarms_cleared(self.broker.clone());
        // The connection ends on the other ways out of this wait.
        open.publishing.set_blocked(true);
        if let Err(reason) = self.pause(open, close_rx, cleared).await {
            return Some(reason);
        }
        open.publishing.set_blocked(false);
        if open.ctx.blocked_notify {
            self.send0(AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                connection::Unblocked {},
            )));
        }
        None
    }

    async fn fail(&mut self, open: &mut OpenConnection, err: AmqpError) -> &'static str {
        warn!(connection = ?self.name, user = ?open.ctx.user, vhost = ?open.ctx.vhost.name, error = %err.log_text(), "connection error");
        open.release();
        self.send_connection_close(&err);
        self.await_close_ok().await;
        "connection error"
    }

    async fn force_close(&mut self, open: &mut OpenConnection, err: AmqpError) -> &'static str {
        open.release();
        self.send_connection_close(&err);
        self.await_close_ok().await;
        "closed by the broker"
    }
}

/// How often a connection looks for deliveries past their ack timeout.
const ACK_TIMEOUT_CHECK: Duration = Duration::from_secs(1);

enum FrameOutcome {
    Continue,
    /// connection.close from the client: reply close-ok.
    ClientClosed,
    /// The connection is over with nothing more to send.
    Ended,
}

/// A connection past its handshake: its channels and their context.
struct OpenConnection {
    /// The connection's name in logs (`Connection::name`).
    name: String,
    ctx: ConnCtx,
    channels: HashMap<u16, Channel>,
    /// The same channels, as the management API sees them.
    registry: ChannelRegistry,
    channel_max: u16,
    /// Its place under the vhost's and user's limits, with its channels.
    place: ConnectionPlace,
    /// Silence longer than this (two heartbeat intervals) drops the peer.
    frame_timeout: Option<Duration>,
    publishing: Arc<PublishingState>,
}

impl OpenConnection {
    fn handle_frame(&mut self, frame: Frame) -> Result<FrameOutcome, AmqpError> {
        if frame.channel == 0 {
            return self.handle_channel0(frame);
        }
        if frame.kind == FrameType::Heartbeat {
            return Err(AmqpError::unexpected_frame("type 8, all octets = <<>>"));
        }
        let id = frame.channel;
        let Some(channel) = self.channels.get_mut(&id) else {
            return self.open_channel(frame).map(|()| FrameOutcome::Continue);
        };
        if channel.closing {
            // Until the client's close-ok the channel is closing, as in
            // RabbitMQ: a channel.close that crossed ours gets its
            // close-ok, and everything else is dropped.
            if frame.kind == FrameType::Method {
                match method_ids(&frame.payload) {
                    (20, 41) => {
                        self.remove_channel(id);
                    }
                    (20, 40) => {
                        channel.shared.send(AMQPClass::Channel(
                            amq_protocol::protocol::channel::AMQPMethod::CloseOk(
                                amq_protocol::protocol::channel::CloseOk {},
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            return Ok(FrameOutcome::Continue);
        }
        let result = match frame.kind {
            FrameType::Method => {
                decode_method(&frame.payload).and_then(|m| channel.handle_method(&mut self.ctx, m))
            }
            FrameType::Header => channel
                .handle_content_header(&mut self.ctx, &frame.payload)
                .map(|()| Outcome::Continue),
            FrameType::Body => channel
                .handle_content_body(&mut self.ctx, &frame.payload)
                .map(|()| Outcome::Continue),
            FrameType::Heartbeat => unreachable!("handled above"),
        };
        match result {
            Ok(Outcome::Continue) => {}
            Ok(Outcome::Closed) => {
                self.remove_channel(id);
            }
            Err(err) if err.is_connection_error() => return Err(err),
            Err(err) => self.close_channel(id, err),
        }
        Ok(FrameOutcome::Continue)
    }

    /// Finishes a method that waited (see `channel::Waiting`), unless its
    /// channel is gone meanwhile.
    fn resume(&mut self, id: u16, resume: crate::channel::Resume) -> Result<(), AmqpError> {
        let Some(channel) = self.channels.get_mut(&id).filter(|c| !c.closing) else {
            return Ok(());
        };
        match resume(channel, &mut self.ctx) {
            Ok(()) => Ok(()),
            Err(err) if err.is_connection_error() => Err(err),
            Err(err) => {
                self.close_channel(id, err);
                Ok(())
            }
        }
    }

    /// A channel error: release the channel and send channel.close; the
    /// channel discards everything until the client's close-ok.
    fn close_channel(&mut self, id: u16, err: AmqpError) {
        // As RabbitMQ's "Channel error on connection …" (which it logs
        // at error; a client's mistake is a warning here).
        warn!(connection = ?self.name, user = ?self.ctx.user, vhost = ?self.ctx.vhost.name, channel = id, "channel error: {}", err.log_text());
        let Some(channel) = self.channels.get_mut(&id) else {
            return;
        };
        channel.release(&self.ctx);
        channel.closing = true;
        channel.shared.send(AMQPClass::Channel(
            amq_protocol::protocol::channel::AMQPMethod::Close(
                amq_protocol::protocol::channel::Close {
                    reply_code: err.code as u16,
                    reply_text: short_string(&err.text),
                    class_id: err.class_id,
                    method_id: err.method_id,
                },
            ),
        ));
    }

    /// Closes, as RabbitMQ does, channels holding a delivery unacknowledged
    /// past the consumer timeout; their messages go back to their queues.
    fn enforce_ack_timeouts(&mut self) {
        let default = self.ctx.broker.config.limits.consumer_timeout_ms;
        let overdue: Vec<(u16, u64)> = self
            .channels
            .iter()
            .filter(|(_, c)| !c.closing)
            .filter_map(|(id, c)| c.shared.overdue_ack(default).map(|t| (*id, t)))
            .collect();
        for (id, timeout) in overdue {
            self.close_channel(
                id,
                AmqpError::precondition_failed(format_args!(
                    "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout} ms. This timeout value can be configured, see consumers doc guide to learn more"
                )),
            );
        }
    }

    fn remove_channel(&mut self, id: u16) {
        if self.channels.remove(&id).is_some() {
            self.place.close_channel();
        }
        self.registry.lock().remove(&id);
    }

    fn open_channel(&mut self, frame: Frame) -> Result<(), AmqpError> {
        let id = frame.channel;
        if frame.kind != FrameType::Method {
            return Err(AmqpError::unexpected_frame(
                "expected method frame, got non method frame instead",
            ));
        }
        let ids = method_ids(&frame.payload);
        if ids != (20, 10) {
            return Err(AmqpError::channel_error("expected 'channel.open'").on_method(ids.0, ids.1));
        }
        // Like RabbitMQ, channel_max bounds how many channels are open, not
        // the channel numbers used.
        if self.channels.len() >= self.channel_max as usize {
            return Err(AmqpError::not_allowed(format_args!(
                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                self.channels.len(),
                self.channel_max
            )));
        }
        let max_channels = self
            .ctx
            .broker
            .access
            .user_limit(&self.ctx.user, MAX_CHANNELS);
        self.place.open_channel(&self.ctx.user, max_channels)?;
        let shared = Arc::new(ChannelShared::new(
            id,
            self.ctx.outbox.clone(),
            self.ctx.frame_max,
            self.ctx.cancel_notify,
        ));
        shared.send(AMQPClass::Channel(
            amq_protocol::protocol::channel::AMQPMethod::OpenOk(
                amq_protocol::protocol::channel::OpenOk {},
            ),
        ));
        self.registry.lock().insert(id, shared.clone());
        self.channels.insert(id, Channel::new(shared));
        crate::broker::counters::bump(&self.ctx.broker.counters.channels_opened);
        Ok(())
    }

    fn handle_channel0(&mut self, frame: Frame) -> Result<FrameOutcome, AmqpError> {
        match frame.kind {
            FrameType::Heartbeat => Ok(FrameOutcome::Continue),
            FrameType::Method => match decode_method(&frame.payload)? {
                Method::Other(class) => match *class {
                    AMQPClass::Connection(connection::AMQPMethod::Close(c)) => {
                        debug!(reply_code = c.reply_code, reply_text = %c.reply_text, "client closed connection");
                        Ok(FrameOutcome::ClientClosed)
                    }
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => {
                        Ok(FrameOutcome::Ended)
                    }
                    AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
                    | AMQPClass::Connection(connection::AMQPMethod::Unblocked(_)) => {
                        Ok(FrameOutcome::Continue)
                    }
                    AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(_)) => {
                        self.ctx.outbox.push(|buf| {
                            encode::method(
                                buf,
                                0,
                                &AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                                    connection::UpdateSecretOk {},
                                )),
                            )
                        });
                        Ok(FrameOutcome::Continue)
                    }
                    other => Err(unexpected_on_channel0(
                        other.get_amqp_class_id(),
                        other.get_amqp_method_id(),
                    )),
                },
                _ => {
                    let (class_id, method_id) = method_ids(&frame.payload);
                    Err(unexpected_on_channel0(class_id, method_id))
                }
            },
            _ => Err(AmqpError::unexpected_frame("content frame on channel 0")),
        }
    }

    fn flush_confirms(&mut self) {
        for channel in self.channels.values_mut() {
            channel.flush_confirms();
        }
    }

    /// Releases every channel and the connection's exclusive queues.
    fn release(&mut self) {
        for (_, mut channel) in self.channels.drain() {
            channel.release(&self.ctx);
        }
        for queue in std::mem::take(&mut self.ctx.exclusive_queues) {
            self.ctx.vhost.delete_queue(&queue);
        }
    }
}

/// Checks a client's tune-ok value as RabbitMQ does: at least `min`, and
/// neither 0 ("no limit") nor above the server's value unless that is 0.
fn negotiate(field: &str, min: u32, server: u32, client: u32) -> Result<(), String> {
    if client != 0 && client < min {
        return Err(format!(
            "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
        ));
    }
    if server != 0 && (client == 0 || client > server) {
        let no_limit = if field == "channel_max" && client == 0 {
            " (no limit)"
        } else {
            ""
        };
        return Err(format!(
            "negotiated {field} = {client}{no_limit} is higher than the maximum allowed value ({server})"
        ));
    }
    Ok(())
}

fn unexpected_on_channel0(class_id: u16, method_id: u16) -> AmqpError {
    AmqpError::channel_error("unexpected method in connection state running")
        .on_method(class_id, method_id)
}

/// A reply text that fits a short string: longer ones are cut to 252 bytes
/// and end in "...", as RabbitMQ does.
fn short_string(text: &str) -> ShortString {
    if text.len() <= 255 {
        return ShortString::from(text);
    }
    let mut end = 252;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(format!("{}...", &text[..end]))
}

fn client_capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "per_consumer_qos",
        "authentication_failure_close",
        "direct_reply_to",
        "consumer_priorities",
    ] {
        caps.insert(ShortString::from(cap), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v));
    props.insert("product".into(), s("Leveret"));
    props.insert("version".into(), s(env!("CARGO_PKG_VERSION")));
    props.insert(
        "platform".into(),
        s(&format!("Rust ({})", std::env::consts::OS)),
    );
    props.insert("copyright".into(), s("Copyright (c) the Leveret authors"));
    props.insert(
        "information".into(),
        s("A RabbitMQ-compatible AMQP 0-9-1 broker; licensed under MIT"),
    );
    props.insert("cluster_name".into(), s("leveret"));
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}
