//! One stream protocol client: the handshake (peer properties, SASL, tune,
//! open) as RabbitMQ's `rabbit_stream_reader` runs it, then the commands of
//! an open connection, with RabbitMQ's response codes.
//!
//! The connection's task reads frames and answers them; a writer task
//! sends what the outbox holds. Until open succeeds a frame may be at most
//! `stream.initial_frame_max` bytes (RabbitMQ's pre-authentication ceiling),
//! then the negotiated `frame_max`. A frame that does not parse closes the
//! connection: silently before open, with a close carrying RabbitMQ's code
//! after it. Nothing a client sends can stop another connection.

use super::frame::{self, code, key, Command, OffsetSpec, Out, Split, SIZE_PREFIX};
use super::groups::{GroupInbox, Pending};
use super::outbox::{Outbox, READ_LIMIT};
use super::publish::{still_there, Publisher, Unconfirmed};
use super::subscribe::start_at;
use super::subscribe::Subscription;
use crate::broker::access::{Access, Resource};
use crate::broker::limits::ConnectionPlace;
use crate::broker::ops::Gate;
use crate::broker::queue::Queue;
use crate::broker::stream_clients::StreamClient;
use crate::broker::vhost::{QueueDeclare, VHost};
use crate::broker::{Broker, ConnectionHandle};
use crate::error::{loggable, AmqpError, ReplyCode};
use crate::hash::HashMap;
use crate::server::Place;
use crate::tls::TlsSession;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// The longest publisher or offset reference (RabbitMQ's `IS_INVALID_REF`).
pub(super) const MAX_REFERENCE: usize = 255;
/// RabbitMQ answers a refused login or vhost only after this long
/// (`SILENT_CLOSE_DELAY`), then closes: guessing passwords stays slow.
const SILENT_CLOSE_DELAY: Duration = Duration::from_secs(3);
/// How long the broker waits for the client to answer its close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Read at most this much at once.
const READ_CHUNK: usize = 64 * 1024;
/// The SASL mechanisms offered on a plain socket (RabbitMQ's defaults).
const MECHANISMS: [&str; 2] = ["PLAIN", "AMQPLAIN"];
/// Over TLS, EXTERNAL too: offered whether or not the client presented a
/// certificate, as rabbit_auth_mechanism_ssl's `should_offer` (and
/// Leveret's AMQPS): without one the refusal says why.
const TLS_MECHANISMS: [&str; 3] = ["PLAIN", "AMQPLAIN", "EXTERNAL"];

/// Where the handshake is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Waiting for peer properties.
    Connected,
    /// Peer properties exchanged: SASL handshake next.
    PeerProperties,
    /// Mechanisms sent: SASL authenticate next.
    Authenticating,
    /// Authenticated as this user; tune sent, the client's tune next.
    Tuning(String),
    /// Tuned: open next.
    Tuned(String),
}

/// How handling a frame left the connection.
enum Flow {
    Continue,
    /// Answer the client after the silent-close delay, then close.
    SilentClose(BytesMut, &'static str),
    /// The server sent close: wait for the client's answer, then end.
    CloseSent(&'static str),
    /// End now (the reason is for the log).
    End(&'static str),
}

/// What an open connection holds.
pub(super) struct Session {
    pub(super) user: String,
    pub(super) vhost: Arc<VHost>,
    _place: ConnectionPlace,
    _registered: Registered,
}

/// Its entry in `Broker::connections`, removed when the connection ends
/// however it ends.
struct Registered {
    broker: Arc<Broker>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.broker.connections.remove(&self.id);
        crate::broker::counters::bump(&self.broker.counters.connections_closed);
    }
}

/// The client's end of the connection and the broker's, and what its TLS
/// session negotiated.
pub(crate) struct Transport {
    pub(crate) peer: SocketAddr,
    pub(crate) local: Option<SocketAddr>,
    /// `None` on plain TCP.
    pub(crate) tls: Option<Arc<TlsSession>>,
}

pub(crate) struct Connection {
    pub(super) broker: Arc<Broker>,
    pub(super) outbox: Arc<Outbox>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    /// Over TLS, what the session negotiated (protocol, cipher, the
    /// client's certificate) and the name its certificate gives SASL
    /// EXTERNAL; kept for the connection's listing.
    pub(super) tls: Option<Arc<TlsSession>>,
    /// The SASL mechanism the client logged in with ("" before; RabbitMQ's
    /// `auth_mechanism` connection fact).
    pub(super) auth_mechanism: &'static str,
    name: String,
    step: Step,
    session: Option<Session>,
    /// The largest frame accepted now.
    frame_limit: u32,
    /// The frame_max negotiated at tune.
    pub(super) frame_max: u32,
    /// Silence longer than this ends the connection (two heartbeats).
    read_timeout: Option<Duration>,
    pub(super) publishers: HashMap<u8, Publisher>,
    pub(super) subscriptions: HashMap<u8, Subscription>,
    /// Notified by the streams it publishes to or reads when they grow or
    /// are deleted.
    pub(super) watcher: Arc<Notify>,
    pub(super) unconfirmed: Arc<Unconfirmed>,
    /// The client takes Deliver version 2 (with the committed offset).
    pub(super) deliver_v2: bool,
    /// Its places under the broker's connection limits.
    place: Place,
    /// Its subscriptions' consumer groups: who it is to them, what they
    /// told it, what it asked the client.
    pub(super) group_owner: u64,
    pub(super) group_inbox: Arc<GroupInbox>,
    pub(super) pending_updates: Pending,
    /// What the management API shows of its publishers and subscriptions.
    pub(super) client: Arc<StreamClient>,
    /// The client's peer properties and the heartbeat it took, for the
    /// management API.
    client_properties: Vec<(String, String)>,
    heartbeat: u32,
    /// Handed to the broker's registry at open: a reason sent there
    /// closes the connection.
    close: Option<watch::Sender<Option<String>>>,
}

/// Serves one client over `read`/`write` until it leaves or is closed.
pub(crate) async fn serve<R, W>(
    read: R,
    write: W,
    transport: Transport,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    place: Place,
) where
    R: AsyncRead + Unpin,
    W: super::outbox::Sink,
{
    let Transport { peer, local, tls } = transport;
    let outbox = Arc::new(Outbox::default());
    let writer = tokio::spawn(outbox.clone().run_writer(write));
    let name = match local {
        Some(l) => format!("{peer} -> {l}"),
        None => peer.to_string(),
    };
    let frame_limit = broker.config.stream.initial_frame_max;
    let watcher = Arc::new(Notify::new());
    let (close, mut close_requested) = watch::channel(None);
    let mut conn = Connection {
        group_owner: broker.stream_groups.owner(),
        group_inbox: Arc::new(GroupInbox::new(watcher.clone())),
        pending_updates: Pending::default(),
        broker,
        outbox: outbox.clone(),
        peer,
        local,
        tls,
        auth_mechanism: "",
        name,
        step: Step::Connected,
        session: None,
        frame_limit,
        frame_max: frame_limit,
        read_timeout: None,
        publishers: HashMap::default(),
        subscriptions: HashMap::default(),
        watcher,
        unconfirmed: Arc::new(Unconfirmed::default()),
        deliver_v2: false,
        place,
        client: Arc::default(),
        client_properties: Vec::new(),
        heartbeat: 0,
        close: Some(close),
    };
    // A close asked from outside (the management API, a deleted user or
    // vhost) ends the connection wherever it waits; as RabbitMQ, the
    // socket closes without a Close command.
    let reason = tokio::select! {
        reason = conn.run(read, shutdown) => reason,
        Ok(()) = close_requested.changed() => {
            let why = close_requested.borrow().clone().unwrap_or_default();
            info!(connection = ?conn.name, reason = %why, "forcing stream connection closing");
            "closed from outside"
        }
    };
    match &conn.session {
        Some(s) => {
            info!(connection = ?conn.name, user = ?s.user, vhost = ?s.vhost.name, reason, "stream connection closed")
        }
        None => debug!(connection = ?conn.name, reason, "stream connection closed before open"),
    }
    outbox.close();
    let _ = writer.await;
}

impl Connection {
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut read: R,
        mut shutdown: watch::Receiver<bool>,
    ) -> &'static str {
        let handshake_timeout =
            Duration::from_millis(self.broker.config.limits.handshake_timeout_ms);
        // Counted from accept, as AMQP's.
        let handshake_deadline = self.place.handshake_deadline(handshake_timeout);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        // Heartbeats are checked against the last read, not the last wake-up:
        // a busy stream wakes this task often.
        let mut last_read = tokio::time::Instant::now();
        // A watched stream grew or was deleted since the last look.
        let mut streams_changed = false;
        loop {
            // Every whole frame buffered, in order.
            loop {
                match frame::split(&buf, self.frame_limit) {
                    Split::Incomplete => break,
                    Split::TooLarge(size) => {
                        warn!(connection = ?self.name, size, max = self.frame_limit, "stream frame too large");
                        if self.session.is_none() {
                            return "frame too large";
                        }
                        self.outbox
                            .push(|b| frame::close(b, code::FRAME_TOO_LARGE, "frame too large"));
                        return self.await_close_response(&mut read, &mut buf).await;
                    }
                    Split::Frame(n) => {
                        let whole = buf.split_to(SIZE_PREFIX + n);
                        match self.handle(&whole[SIZE_PREFIX..]).await {
                            Flow::Continue => {}
                            Flow::End(reason) => return reason,
                            Flow::CloseSent(reason) => {
                                let _ = reason;
                                return self.await_close_response(&mut read, &mut buf).await;
                            }
                            Flow::SilentClose(answer, reason) => {
                                tokio::select! {
                                    () = tokio::time::sleep(SILENT_CLOSE_DELAY) => {}
                                    () = super::stopped(&mut shutdown) => {}
                                }
                                self.outbox.push(|b| b.extend_from_slice(&answer));
                                return reason;
                            }
                        }
                    }
                }
                if self.outbox.pending() > READ_LIMIT {
                    if let Err(reason) = self.wait_for_output(&mut shutdown).await {
                        return reason;
                    }
                    last_read = tokio::time::Instant::now();
                }
            }
            if self.outbox.is_closed() {
                return "socket closed";
            }
            if self.session.is_some() {
                if std::mem::take(&mut streams_changed) {
                    self.forget_deleted_streams();
                    self.send_consumer_updates();
                }
                if self.outbox.pending() <= READ_LIMIT {
                    self.deliver().await;
                }
            }
            let more = self.can_deliver();
            let output_full = self.outbox.pending() > READ_LIMIT;
            // Past the unconfirmed bound the client is not read until
            // confirms come back (they wake this task).
            if self.unconfirmed.over_limit() {
                tokio::select! {
                    () = self.unconfirmed.below_limit() => {}
                    () = super::stopped(&mut shutdown) => return "broker shutting down",
                }
                // The client's heartbeats waited unread meanwhile.
                last_read = tokio::time::Instant::now();
                continue;
            }
            let deadline = if self.session.is_none() {
                Some(handshake_deadline)
            } else {
                self.read_timeout.map(|t| last_read + t)
            };
            buf.reserve(READ_CHUNK);
            let read_more = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, read.read_buf(&mut buf))
                        .await
                        .ok(),
                    None => Some(read.read_buf(&mut buf).await),
                }
            };
            let watcher = self.watcher.clone();
            let outbox = self.outbox.clone();
            tokio::select! {
                () = watcher.notified() => {
                    streams_changed = true;
                    continue;
                }
                () = outbox.drained_below(READ_LIMIT), if more && output_full => continue,
                () = std::future::ready(()), if more && !output_full => continue,
                got = read_more => match got {
                    None if self.session.is_none() => {
                        warn!(connection = ?self.name, "stream handshake timed out");
                        return "handshake timed out";
                    }
                    None => {
                        warn!(connection = ?self.name, "missed heartbeats from stream client, closing connection");
                        return "missed heartbeats";
                    }
                    Some(Ok(0)) | Some(Err(_)) => return "client closed the connection",
                    Some(Ok(_)) => last_read = tokio::time::Instant::now(),
                },
                () = super::stopped(&mut shutdown) => {
                    if self.session.is_some() {
                        self.outbox.push(|b| frame::close(b, code::OK, "broker shutting down"));
                    }
                    return "broker shutting down";
                }
            }
        }
    }

    /// Waits until the outbox is under its limit again; a client that
    /// reads nothing for two heartbeat intervals is gone.
    async fn wait_for_output(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), &'static str> {
        let limit = self.read_timeout.unwrap_or(Duration::MAX);
        tokio::select! {
            drained = tokio::time::timeout(limit, self.outbox.drained_below(READ_LIMIT)) => {
                drained.map_err(|_| {
                    warn!(connection = ?self.name, "stream client stopped reading, closing connection");
                    "client stopped reading"
                })
            }
            () = super::stopped(shutdown) => Err("broker shutting down"),
        }
    }

    /// After the server's close: waits a while for the client's close
    /// response, ignoring everything else (RabbitMQ's `close_sent`).
    async fn await_close_response<R: AsyncRead + Unpin>(
        &mut self,
        read: &mut R,
        buf: &mut BytesMut,
    ) -> &'static str {
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        buf.clear();
        loop {
            while let Split::Frame(n) = frame::split(buf, self.frame_limit) {
                let whole = buf.split_to(SIZE_PREFIX + n);
                if let Command::CloseResponse { .. } = frame::decode(&whole[SIZE_PREFIX..]) {
                    return "closed by the broker";
                }
            }
            if !matches!(frame::split(buf, self.frame_limit), Split::Incomplete) {
                // Past the limit again: nothing more is looked at.
                buf.clear();
            }
            buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline, read.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return "closed by the broker",
            }
        }
    }

    async fn handle(&mut self, bytes: &[u8]) -> Flow {
        let command = frame::decode(bytes);
        if self.session.is_none() {
            return self.handle_handshake(command);
        }
        self.handle_open(command).await
    }

    /// Before open: RabbitMQ's `handle_frame_pre_auth`. A command out of
    /// order, or one that does not parse, ends the connection silently.
    fn handle_handshake(&mut self, command: Command<'_>) -> Flow {
        match (command, self.step.clone()) {
            (Command::Heartbeat, _) => Flow::Continue,
            (Command::PeerProperties { corr, properties }, Step::Connected) => {
                if let Some((_, name)) = properties.iter().find(|(k, _)| *k == "connection_name") {
                    self.name = format!("{} - {}", self.name, loggable(name));
                }
                // Bounded by the frame (`initial_frame_max`).
                self.client_properties = properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let product = ("product", "Leveret");
                let version = ("version", env!("CARGO_PKG_VERSION"));
                let platform = ("platform", "Rust");
                let props = [product, version, platform];
                self.outbox.push(|b| {
                    Out::response(b, key::PEER_PROPERTIES, corr)
                        .u16(code::OK)
                        .map(props.into_iter());
                });
                self.step = Step::PeerProperties;
                Flow::Continue
            }
            (Command::SaslHandshake { corr }, Step::PeerProperties) => {
                let mechanisms = self.mechanisms();
                self.outbox.push(|b| {
                    let mut out = Out::response(b, key::SASL_HANDSHAKE, corr);
                    out.u16(code::OK).u32(mechanisms.len() as u32);
                    for m in mechanisms {
                        out.string(m);
                    }
                });
                self.step = Step::Authenticating;
                Flow::Continue
            }
            (
                Command::SaslAuthenticate {
                    corr,
                    mechanism,
                    data,
                },
                Step::Authenticating,
            ) => self.authenticate(corr, mechanism, data),
            (
                Command::Tune {
                    frame_max,
                    heartbeat,
                },
                Step::Tuning(user),
            ) => {
                let configured = self.broker.config.stream.frame_max;
                self.frame_max = match (frame_max, configured) {
                    (0, c) => c,
                    (f, c) => f.min(c),
                }
                // Below this no frame of the handshake would fit.
                .max(self.frame_limit);
                self.heartbeat = heartbeat;
                if heartbeat > 0 {
                    let every = Duration::from_secs(heartbeat as u64);
                    // Sent at half the interval so the client sees one in time.
                    self.outbox
                        .set_heartbeat(Some((every / 2).max(Duration::from_millis(500))));
                    self.read_timeout = Some(every * 2);
                }
                self.step = Step::Tuned(user);
                Flow::Continue
            }
            (Command::Open { corr, vhost }, Step::Tuned(user)) => self.open(corr, vhost, user),
            // RabbitMQ takes open without the client's tune: the offered
            // frame_max, no heartbeats.
            (Command::Open { corr, vhost }, Step::Tuning(user)) => {
                self.frame_max = self.broker.config.stream.frame_max;
                self.open(corr, vhost, user)
            }
            (Command::Unknown, step) => {
                debug!(connection = ?self.name, ?step, "unrecognised data before authentication, closing connection");
                Flow::End("unknown frame before open")
            }
            (command, step) => {
                warn!(connection = ?self.name, ?step, command = ?command_name(&command), "unexpected command during the stream handshake, closing connection");
                Flow::End("unexpected command during the handshake")
            }
        }
    }

    /// The SASL mechanisms this connection offers.
    fn mechanisms(&self) -> &'static [&'static str] {
        match self.tls {
            Some(_) => &TLS_MECHANISMS,
            None => &MECHANISMS,
        }
    }

    fn authenticate(&mut self, corr: u32, mechanism: &str, data: &[u8]) -> Flow {
        let answer = |code: u16| {
            let mut b = BytesMut::new();
            frame::response_code(&mut b, key::SASL_AUTHENTICATE, corr, code);
            b
        };
        let Some(&mechanism) = self.mechanisms().iter().find(|m| **m == mechanism) else {
            warn!(connection = ?self.name, "stream login refused: unsupported authentication mechanism '{}'", loggable(mechanism));
            let a = answer(code::SASL_MECHANISM_NOT_SUPPORTED);
            self.outbox.push(|b| b.extend_from_slice(&a));
            return Flow::End("unsupported SASL mechanism");
        };
        let user = if mechanism == "EXTERNAL" {
            match self.external_login() {
                Some(user) => user,
                None => {
                    return Flow::SilentClose(answer(code::AUTHENTICATION_FAILURE), "login refused")
                }
            }
        } else {
            let Some((user, password)) = crate::connection::auth::credentials(mechanism, data)
            else {
                warn!(connection = ?self.name, "{mechanism} stream login refused: the response does not hold a user name and password");
                let a = answer(code::SASL_ERROR);
                self.outbox.push(|b| b.extend_from_slice(&a));
                return Flow::End("malformed SASL response");
            };
            if self.broker.authenticate(&user, &password).is_none() {
                let why = match self.broker.access.user(&user) {
                    None => "no such user",
                    Some(_) if password.is_empty() => "empty password",
                    Some(_) => "wrong password",
                };
                warn!(connection = ?self.name, "{mechanism} stream login refused: user '{}' - invalid credentials ({why})", loggable(&user));
                return Flow::SilentClose(answer(code::AUTHENTICATION_FAILURE), "login refused");
            }
            user
        };
        // After any mechanism, as rabbit_stream_reader.
        if self.broker.is_loopback_only(&user)
            && !crate::connection::auth::is_loopback(self.peer.ip())
        {
            warn!(connection = ?self.name, "User '{}' can only connect via localhost", loggable(&user));
            let a = answer(code::SASL_AUTHENTICATION_FAILURE_LOOPBACK);
            self.outbox.push(|b| b.extend_from_slice(&a));
            return Flow::End("login refused: loopback user");
        }
        let stream = &self.broker.config.stream;
        let (frame_max, heartbeat) = (stream.frame_max, stream.heartbeat);
        self.outbox.push(|b| {
            frame::response_code(b, key::SASL_AUTHENTICATE, corr, code::OK);
            Out::begin(b, key::TUNE, 1).u32(frame_max).u32(heartbeat);
        });
        self.auth_mechanism = mechanism;
        self.step = Step::Tuning(user);
        Flow::Continue
    }

    /// EXTERNAL, as rabbit_auth_mechanism_ssl: the user the verified
    /// client certificate names, which must exist; the response is not
    /// looked at and no password is checked. `None`: refused (logged).
    fn external_login(&self) -> Option<String> {
        // Only offered, so only taken, over TLS.
        let login = &self.tls.as_ref()?.login;
        match login {
            Ok(user) if self.broker.access.user(user).is_some() => Some(user.clone()),
            Ok(user) => {
                warn!(connection = ?self.name, "EXTERNAL stream login refused: user '{}' - invalid credentials (no such user)", loggable(user));
                None
            }
            Err(reason) => {
                warn!(connection = ?self.name, "EXTERNAL stream login refused: {}", loggable(reason));
                None
            }
        }
    }

    /// Open: the vhost, its and the user's connection limits, then the
    /// user's access to it (RabbitMQ's order), answered with where clients
    /// should connect (`advertised_host`, `advertised_port`).
    fn open(&mut self, corr: u32, vhost_name: &str, user: String) -> Flow {
        let refused = |why: String| {
            let mut b = BytesMut::new();
            frame::response_code(&mut b, key::OPEN, corr, code::VHOST_ACCESS_FAILURE);
            (b, why)
        };
        let opened = match self.broker.vhost(vhost_name) {
            None => Err(refused(format!("vhost {vhost_name} not found"))),
            Some(vhost) => match self.broker.connection_place(&vhost.name, &user) {
                Err(e) => Err(refused(e.text)),
                Ok(_) if self.broker.access.permission(&vhost.name, &user).is_none() => {
                    Err(refused(format!(
                        "access to vhost '{vhost_name}' refused for user '{user}'"
                    )))
                }
                Ok(place) => Ok((vhost, place)),
            },
        };
        let (vhost, place) = match opened {
            Ok(v) => v,
            Err((answer, why)) => {
                warn!(connection = ?self.name, "Opening connection failed: {}", loggable(&why));
                return Flow::SilentClose(answer, "vhost access refused");
            }
        };
        let (host, port) = self.advertised();
        let port = port.to_string();
        self.outbox.push(|b| {
            Out::response(b, key::OPEN, corr).u16(code::OK).map(
                [
                    ("advertised_host", host.as_str()),
                    ("advertised_port", port.as_str()),
                ]
                .into_iter(),
            );
        });
        self.frame_limit = self.frame_max;
        self.place.handshake_done();
        info!(connection = ?self.name, user = ?user, vhost = ?vhost.name, "stream connection opened");
        let registered = self.register(&user, &vhost.name);
        self.session = Some(Session {
            user,
            vhost,
            _place: place,
            _registered: registered,
        });
        Flow::Continue
    }

    /// Enters the open connection in `Broker::connections`, beside AMQP's,
    /// so that listing, closing and the closing of a deleted user's or
    /// vhost's connections take one path for both protocols.
    fn register(&mut self, user: &str, vhost: &str) -> Registered {
        let id = self.broker.next_id();
        let local = self.local.map_or_else(String::new, |l| l.to_string());
        let mut client_properties = FieldTable::default();
        for (k, v) in std::mem::take(&mut self.client_properties) {
            client_properties.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        let (close, _) = watch::channel(None);
        self.broker.connections.insert(
            id,
            ConnectionHandle {
                // RabbitMQ's, without the client's connection_name.
                name: format!("{} -> {}", self.peer, local),
                vhost: vhost.to_string(),
                user: user.to_string(),
                peer: self.peer,
                local,
                client_properties,
                auth_mechanism: self.auth_mechanism.to_string(),
                tls: self.tls.clone(),
                connected_at: crate::broker::timers::now_ms(),
                frame_max: self.frame_max,
                channel_max: 0,
                heartbeat: self.heartbeat.min(u16::MAX as u32) as u16,
                channels: Default::default(),
                close: self.close.take().unwrap_or(close),
                publishing: Default::default(),
                stream: Some(self.client.clone()),
            },
        );
        crate::broker::counters::bump(&self.broker.counters.connections_opened);
        Registered {
            broker: self.broker.clone(),
            id,
        }
    }

    /// The host and port clients are told to connect to: the configured
    /// ones, else the address this client reached. A TLS client is told
    /// the TLS ones (RabbitMQ's `tls_host` and `tls_port`), so it
    /// reconnects over TLS: the TLS host falls back to the plain one.
    fn advertised(&self) -> (String, u16) {
        let stream = &self.broker.config.stream;
        let (host, port, default_port) = match self.tls {
            None => (&stream.advertised_host, stream.advertised_port, 5552),
            Some(_) => {
                let host = match stream.advertised_tls_host.as_str() {
                    "" => &stream.advertised_host,
                    _ => &stream.advertised_tls_host,
                };
                (host, stream.advertised_tls_port, 5551)
            }
        };
        let host = if host.is_empty() {
            self.local
                .map_or_else(|| "localhost".to_string(), |l| l.ip().to_string())
        } else {
            host.clone()
        };
        let port = match port {
            0 => self.local.map_or(default_port, |l| l.port()),
            p => p,
        };
        (host, port)
    }

    /// An open connection's commands: RabbitMQ's `handle_frame_post_auth`.
    async fn handle_open(&mut self, command: Command<'_>) -> Flow {
        match command {
            Command::Heartbeat => {}
            Command::Close {
                corr,
                code: c,
                reason,
            } => {
                debug!(connection = ?self.name, code = c, reason = %loggable(reason), "stream client closed the connection");
                self.outbox
                    .push(|b| frame::response_code(b, key::CLOSE, corr, code::OK));
                return Flow::End("client closed the connection");
            }
            Command::CloseResponse { .. } => {}
            Command::PeerProperties { .. }
            | Command::SaslHandshake { .. }
            | Command::Tune { .. }
            | Command::Open { .. }
            | Command::Unknown => {
                warn!(connection = ?self.name, "unrecognised stream frame, sending close command");
                self.outbox
                    .push(|b| frame::close(b, code::UNKNOWN_FRAME, "unknown frame"));
                return Flow::CloseSent("unknown frame");
            }
            Command::SaslAuthenticate { corr, .. } => {
                // Re-authentication (token refresh) is not supported.
                self.respond(key::SASL_AUTHENTICATE, corr, code::SASL_ERROR);
            }
            Command::ExchangeCommandVersions { corr, versions } => {
                self.deliver_v2 = versions
                    .iter()
                    .any(|&(k, _, max)| k == key::DELIVER && max >= 2);
                self.outbox.push(|b| {
                    let mut out = Out::response(b, key::EXCHANGE_COMMAND_VERSIONS, corr);
                    out.u16(code::OK).u32(COMMAND_VERSIONS.len() as u32);
                    for (k, min, max) in COMMAND_VERSIONS {
                        out.u16(k).u16(min).u16(max);
                    }
                });
            }
            Command::Metadata { corr, streams } => self.metadata(corr, &streams),
            Command::Create {
                corr,
                stream,
                arguments,
            } => {
                let code = self.create(stream, &arguments).await;
                self.respond(key::CREATE, corr, code);
            }
            Command::Delete { corr, stream } => {
                let code = self.delete(stream).await;
                self.respond(key::DELETE, corr, code);
                if code == code::OK {
                    self.forget_deleted_streams();
                }
            }
            Command::StreamStats { corr, stream } => {
                let stats = self.lookup(stream, &[Access::Read]).map(|q| {
                    let Some(log) = q.stream() else {
                        return [-1; 3];
                    };
                    let (first, end) = (log.extent().first, log.readable_end());
                    // Each entry is its own chunk id: Leveret cuts chunks
                    // when it delivers.
                    let (first, last) = if end > first {
                        (first as i64, end as i64 - 1)
                    } else {
                        (-1, -1)
                    };
                    [first, last, last]
                });
                self.outbox.push(|b| {
                    let mut out = Out::response(b, key::STREAM_STATS, corr);
                    match stats {
                        Ok([first, committed, last]) => {
                            out.u16(code::OK).u32(3);
                            out.string("first_chunk_id").i64(first);
                            out.string("committed_chunk_id").i64(committed);
                            out.string("last_chunk_id").i64(last);
                        }
                        Err(c) => {
                            out.u16(c).u32(0);
                        }
                    }
                });
            }
            Command::QueryOffset {
                corr,
                reference,
                stream,
            } => {
                let (code, offset) = match self.lookup(stream, &[Access::Read]) {
                    Ok(q) => match q.stream().and_then(|log| log.query_offset(reference)) {
                        Some(offset) => (code::OK, offset),
                        None => (code::NO_OFFSET, 0),
                    },
                    Err(c) => (c, 0),
                };
                self.outbox.push(|b| {
                    Out::response(b, key::QUERY_OFFSET, corr)
                        .u16(code)
                        .u64(offset);
                });
            }
            Command::QueryPublisherSequence {
                corr,
                reference,
                stream,
            } => {
                let (code, seq) = self.publisher_sequence(reference, stream);
                self.outbox.push(|b| {
                    Out::response(b, key::QUERY_PUBLISHER_SEQUENCE, corr)
                        .u16(code)
                        .u64(seq);
                });
            }
            Command::StoreOffset {
                reference,
                stream,
                offset,
            } => self.store_offset(reference, stream, offset),
            Command::DeclarePublisher {
                corr,
                publisher_id,
                reference,
                stream,
            } => {
                let code = self.declare_publisher(corr, publisher_id, reference, stream);
                self.respond(key::DECLARE_PUBLISHER, corr, code);
            }
            Command::DeletePublisher { corr, publisher_id } => {
                let code = self.delete_publisher(publisher_id);
                self.respond(key::DELETE_PUBLISHER, corr, code);
            }
            Command::Publish {
                version,
                publisher_id,
                messages,
            } => self.publish(version, publisher_id, messages),
            Command::Subscribe {
                corr,
                subscription_id,
                stream,
                offset,
                credit,
                properties,
            } => {
                let code = self
                    .subscribe(subscription_id, stream, offset, credit, &properties)
                    .await;
                self.respond(key::SUBSCRIBE, corr, code);
            }
            Command::Unsubscribe {
                corr,
                subscription_id,
            } => {
                let code = self.unsubscribe(subscription_id);
                self.respond(key::UNSUBSCRIBE, corr, code);
            }
            Command::Credit {
                subscription_id,
                credit,
            } => self.credit(subscription_id, credit),
            Command::ResolveOffsetSpec {
                corr,
                stream,
                offset,
            } => {
                let (code, at) = self.resolve_offset(stream, offset).await;
                self.outbox.push(|b| {
                    Out::response(b, key::RESOLVE_OFFSET_SPEC, corr)
                        .u16(code)
                        .u16(4)
                        .u64(at);
                });
            }
            Command::Route {
                corr,
                routing_key,
                super_stream,
            } => self.route(corr, routing_key, super_stream),
            Command::Partitions { corr, super_stream } => self.partitions(corr, super_stream),
            Command::CreateSuperStream {
                corr,
                name,
                partitions,
                binding_keys,
                arguments,
            } => {
                let code = self
                    .create_super_stream(name, &partitions, &binding_keys, &arguments)
                    .await;
                self.respond(key::CREATE_SUPER_STREAM, corr, code);
            }
            Command::DeleteSuperStream { corr, name } => {
                let code = self.delete_super_stream(name).await;
                self.respond(key::DELETE_SUPER_STREAM, corr, code);
                // After the response, as RabbitMQ's clean-up after it.
                self.forget_deleted_streams();
            }
            Command::ConsumerUpdateResponse { corr, offset } => {
                self.consumer_update_answered(corr, offset).await
            }
        }
        Flow::Continue
    }

    fn respond(&self, key: u16, corr: u32, code: u16) {
        self.outbox
            .push(|b| frame::response_code(b, key, corr, code));
    }

    pub(super) fn session(&self) -> &Session {
        // Only called for an open connection.
        self.session
            .as_ref()
            .expect("stream commands are handled after open")
    }

    pub(super) fn gate(&self) -> StreamGate<'_> {
        let s = self.session();
        StreamGate {
            broker: &self.broker,
            user: &s.user,
            vhost: &s.vhost.name,
        }
    }

    /// The stream named `name`, once the user may do one of `access` on
    /// it: ACCESS_REFUSED otherwise, then STREAM_DOES_NOT_EXIST when there
    /// is no such stream (a queue of another type is none).
    pub(super) fn lookup(&self, name: &str, access: &[Access]) -> Result<Arc<Queue>, u16> {
        let mut gate = self.gate();
        if !access
            .iter()
            .any(|a| gate.check(*a, Resource::Queue, name).is_ok())
        {
            return Err(code::ACCESS_REFUSED);
        }
        match self.session().vhost.queue(name) {
            Ok(q) if q.stream().is_some() => Ok(q),
            _ => Err(code::STREAM_DOES_NOT_EXIST),
        }
    }

    /// Publishers and subscriptions on streams deleted since: gone, and
    /// the client told once per stream (MetadataUpdate, RabbitMQ's code 6).
    pub(super) fn forget_deleted_streams(&mut self) {
        let mut gone: Vec<String> = Vec::new();
        self.publishers.retain(|_, p| {
            let kept = still_there(&p.queue);
            if !kept && !gone.contains(&p.stream) {
                gone.push(p.stream.clone());
            }
            kept
        });
        self.subscriptions.retain(|_, s| {
            let kept = still_there(&s.queue);
            if !kept && !gone.contains(&s.stream) {
                gone.push(s.stream.clone());
            }
            kept
        });
        for stream in gone {
            self.outbox.push(|b| {
                Out::begin(b, key::METADATA_UPDATE, 1)
                    .u16(code::STREAM_NOT_AVAILABLE)
                    .string(&stream);
            });
        }
    }

    /// StoreOffset (no response): a subscriber of the stream may, others
    /// need read permission; a reference over 255 bytes is ignored.
    fn store_offset(&self, reference: &str, stream: &str, offset: u64) {
        if reference.len() > MAX_REFERENCE {
            warn!(connection = ?self.name, "Reference is too long to store offset: {}", reference.len());
            return;
        }
        let subscribed = self.subscriptions.values().find(|s| s.stream == stream);
        let queue = match subscribed {
            Some(s) => Ok(s.queue.clone()),
            None => self.lookup(stream, &[Access::Read]),
        };
        let Ok(queue) = queue else {
            warn!(connection = ?self.name, stream = %loggable(stream), "Not authorized to store offset on stream, or no such stream");
            return;
        };
        if let Some(log) = queue.stream() {
            if !log.store_offset(reference, offset) {
                warn!(connection = ?self.name, stream = %loggable(stream), "the stream stores the offsets of too many names; offset not stored");
            }
        }
    }

    /// ResolveOffsetSpec: the offset a subscription with `offset` would
    /// start at.
    async fn resolve_offset(&self, stream: &str, offset: OffsetSpec) -> (u16, u64) {
        let q = match self.lookup(stream, &[Access::Read]) {
            Ok(q) => q,
            Err(c) => return (c, 0),
        };
        let Some(log) = q.stream() else {
            return (code::STREAM_DOES_NOT_EXIST, 0);
        };
        match log.resolve(start_at(offset)).await {
            Ok(n) => (code::OK, n),
            Err(_) => (code::NO_OFFSET, 0),
        }
    }

    /// Metadata: this broker as every stream's leader, no replicas; a
    /// stream the user may neither read nor write is ACCESS_REFUSED.
    fn metadata(&self, corr: u32, streams: &[&str]) {
        let codes: Vec<u16> = streams
            .iter()
            .map(|s| match self.lookup(s, &[Access::Read, Access::Write]) {
                Ok(_) => code::OK,
                Err(c) => c,
            })
            .collect();
        let (host, port) = self.advertised();
        let any = codes.contains(&code::OK);
        self.outbox.push(|b| {
            let mut out = Out::response(b, key::METADATA, corr);
            if any {
                out.u32(1).u16(0).string(&host).u32(port as u32);
            } else {
                out.u32(0);
            }
            out.u32(streams.len() as u32);
            for (s, &c) in streams.iter().zip(&codes) {
                out.string(s).u16(c);
                if c == code::OK {
                    out.u16(0).u32(0);
                } else {
                    out.u16(u16::MAX).u32(0);
                }
            }
        });
    }

    /// Create: a durable queue of type stream through the one declare path
    /// (permissions, limits, arguments checked as over AMQP), with
    /// RabbitMQ's mapping of the protocol's argument names.
    async fn create(&self, stream: &str, arguments: &[frame::Pair<'_>]) -> u16 {
        // RabbitMQ takes out line breaks, then checks the name.
        let name: String = stream
            .chars()
            .filter(|c| *c != '\n' && *c != '\r')
            .collect();
        if name.is_empty() || name.len() > 255 || name.starts_with("amq.") {
            return code::PRECONDITION_FAILED;
        }
        let Some(args) = stream_arguments(arguments) else {
            return code::PRECONDITION_FAILED;
        };
        let s = self.session();
        let mut gate = self.gate();
        if gate
            .check(Access::Configure, Resource::Queue, &name)
            .is_err()
        {
            return code::ACCESS_REFUSED;
        }
        if s.vhost.queue(&name).is_ok() {
            // An existing queue of another type, or a stream declared
            // with other arguments, is a failed precondition.
            return match s.vhost.queue(&name) {
                Ok(q) if q.stream().is_some() && same_arguments(&q.arguments, &args) => {
                    code::STREAM_ALREADY_EXISTS
                }
                _ => code::PRECONDITION_FAILED,
            };
        }
        let mark = self.broker.store.meta_queued();
        let declared = crate::broker::ops::topology::declare_queue(
            &mut gate,
            &s.vhost,
            &QueueDeclare {
                name: &name,
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: &args,
                connection: 0,
            },
        );
        match declared {
            Ok((_, true)) => {}
            Ok((_, false)) => return code::STREAM_ALREADY_EXISTS,
            Err(e) => {
                warn!(connection = ?self.name, stream = %loggable(&name), error = %e.text, "cannot create stream");
                return error_code(&e);
            }
        }
        self.durable(mark).await
    }

    async fn delete(&self, stream: &str) -> u16 {
        let s = self.session();
        let mut gate = self.gate();
        if gate
            .check(Access::Configure, Resource::Queue, stream)
            .is_err()
        {
            return code::ACCESS_REFUSED;
        }
        let id = match s.vhost.queue(stream) {
            Ok(q) => match q.stream() {
                Some(log) => log.id,
                None => return code::STREAM_DOES_NOT_EXIST,
            },
            _ => return code::STREAM_DOES_NOT_EXIST,
        };
        self.broker.stream_publishers.forget(id);
        let mark = self.broker.store.meta_queued();
        match crate::broker::ops::topology::delete_queue(
            &mut gate, &s.vhost, stream, false, false, None,
        ) {
            Ok(Some(_)) => self.durable(mark).await,
            Ok(None) => code::STREAM_DOES_NOT_EXIST,
            Err(e) => error_code(&e),
        }
    }

    /// OK once topology writes since `mark` are on disk, as AMQP's
    /// declare-ok waits; INTERNAL_ERROR if one failed.
    pub(super) async fn durable(&self, mark: u64) -> u16 {
        match self.broker.store.meta_durable_since(mark) {
            None => code::OK,
            Some(wait) => match wait.await {
                Ok(()) => code::OK,
                Err(e) => {
                    warn!(connection = ?self.name, error = %e, "topology write failed");
                    code::INTERNAL_ERROR
                }
            },
        }
    }
}

/// The versions of each command Leveret serves (RabbitMQ's
/// `rabbit_stream_utils:command_versions/0`, as of 3.13).
const COMMAND_VERSIONS: [(u16, u16, u16); 20] = [
    (key::DECLARE_PUBLISHER, 1, 1),
    (key::PUBLISH, 1, 2),
    (key::QUERY_PUBLISHER_SEQUENCE, 1, 1),
    (key::DELETE_PUBLISHER, 1, 1),
    (key::SUBSCRIBE, 1, 1),
    (key::CREDIT, 1, 1),
    (key::STORE_OFFSET, 1, 1),
    (key::QUERY_OFFSET, 1, 1),
    (key::UNSUBSCRIBE, 1, 1),
    (key::CREATE, 1, 1),
    (key::DELETE, 1, 1),
    (key::METADATA, 1, 1),
    (key::CLOSE, 1, 1),
    (key::HEARTBEAT, 1, 1),
    (key::STREAM_STATS, 1, 1),
    (key::RESOLVE_OFFSET_SPEC, 1, 1),
    (key::ROUTE, 1, 1),
    (key::PARTITIONS, 1, 1),
    (key::CREATE_SUPER_STREAM, 1, 1),
    (key::DELETE_SUPER_STREAM, 1, 1),
];

/// The queue arguments a Create's arguments mean (RabbitMQ's
/// `stream_queue_arguments`): `None` when a number does not parse or an
/// argument's value is out of range.
pub(super) fn stream_arguments(arguments: &[frame::Pair<'_>]) -> Option<FieldTable> {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    for (k, v) in arguments {
        let number = || v.trim().parse::<i64>().ok().map(AMQPValue::LongLongInt);
        match *k {
            "max-length-bytes" => {
                t.insert("x-max-length-bytes".into(), number()?);
            }
            "stream-max-segment-size-bytes" => {
                t.insert("x-stream-max-segment-size-bytes".into(), number()?);
            }
            "max-age" => {
                t.insert("x-max-age".into(), AMQPValue::LongString((*v).into()));
            }
            "initial-cluster-size" => match number()? {
                AMQPValue::LongLongInt(n) if n > 0 => {}
                _ => return None,
            },
            "queue-leader-locator"
                if !["client-local", "balanced", "random", "least-leaders"].contains(v) =>
            {
                return None;
            }
            "stream-filter-size-bytes" => match number()? {
                AMQPValue::LongLongInt(n) if (16..=255).contains(&n) => {}
                _ => return None,
            },
            // RabbitMQ ignores the others.
            _ => {}
        }
    }
    Some(t)
}

/// Whether a stream's declared arguments are those a Create asks for.
fn same_arguments(declared: &FieldTable, asked: &FieldTable) -> bool {
    [
        "x-max-length-bytes",
        "x-max-age",
        "x-stream-max-segment-size-bytes",
    ]
    .iter()
    .all(|k| {
        let number = |t: &FieldTable| match t.inner().get(*k) {
            Some(AMQPValue::LongLongInt(n)) => Some(n.to_string()),
            Some(AMQPValue::LongInt(n)) => Some(n.to_string()),
            Some(AMQPValue::LongString(s)) => Some(s.to_string()),
            Some(other) => Some(format!("{other:?}")),
            None => None,
        };
        number(declared) == number(asked)
    })
}

/// The response code for a refused topology operation.
pub(super) fn error_code(e: &AmqpError) -> u16 {
    match e.code {
        ReplyCode::AccessRefused => code::ACCESS_REFUSED,
        ReplyCode::PreconditionFailed | ReplyCode::ResourceLocked | ReplyCode::NotAllowed => {
            code::PRECONDITION_FAILED
        }
        ReplyCode::NotFound => code::STREAM_DOES_NOT_EXIST,
        _ => code::INTERNAL_ERROR,
    }
}

fn command_name(c: &Command<'_>) -> &'static str {
    match c {
        Command::PeerProperties { .. } => "peer_properties",
        Command::SaslHandshake { .. } => "sasl_handshake",
        Command::SaslAuthenticate { .. } => "sasl_authenticate",
        Command::Tune { .. } => "tune",
        Command::Open { .. } => "open",
        Command::Close { .. } => "close",
        _ => "other",
    }
}

/// A stream connection's permission checks, in its vhost.
pub(super) struct StreamGate<'a> {
    broker: &'a Broker,
    user: &'a str,
    vhost: &'a str,
}

impl Gate for StreamGate<'_> {
    fn user(&self) -> &str {
        self.user
    }

    fn check(&mut self, access: Access, resource: Resource, name: &str) -> Result<(), AmqpError> {
        self.broker
            .access
            .check(self.user, self.vhost, access, resource, name)
    }

    fn check_topic(&mut self, access: Access, exchange: &str, key: &str) -> Result<(), AmqpError> {
        match self
            .broker
            .access
            .topic_permissions_of(self.vhost, self.user)
        {
            None => Ok(()),
            Some(t) => t.check(self.user, self.vhost, access, exchange, key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_arguments_as_rabbitmq_maps_them() {
        let t = stream_arguments(&[
            ("max-length-bytes", "1000"),
            ("max-age", "1h"),
            ("other", "x"),
        ])
        .unwrap();
        assert!(matches!(
            t.inner().get("x-max-length-bytes"),
            Some(AMQPValue::LongLongInt(1000))
        ));
        assert!(
            matches!(t.inner().get("x-max-age"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"1h")
        );
        assert!(stream_arguments(&[("max-length-bytes", "lots")]).is_none());
        assert!(stream_arguments(&[("initial-cluster-size", "0")]).is_none());
        assert!(stream_arguments(&[("queue-leader-locator", "nearest")]).is_none());
        assert!(stream_arguments(&[("stream-filter-size-bytes", "8")]).is_none());
    }
}
