//! The broker's shared state: vhosts with their exchanges and queues, users,
//! and the registry of live connections.
//!
//! Lock order, kept everywhere: vhost maps (held only to clone an `Arc` out)
//! → a vhost's policies (read) → exchange bindings (read) → queue state →
//! consumer channel state → outbox. Never two queue locks at once; never `.await` or I/O under a lock.

pub(crate) mod access;
pub(crate) mod consumer;
pub(crate) mod counters;
pub(crate) mod dead_letter;
pub(crate) mod exchange;
pub(crate) mod flow;
pub(crate) mod limits;
pub(crate) mod memory;
pub(crate) mod ops;
pub(crate) mod parameters;
pub(crate) mod policy;
pub(crate) mod queue;
pub(crate) mod queue_args;
pub(crate) mod queue_stats;
pub(crate) mod stream;
pub(crate) mod stream_args;
pub(crate) mod stream_clients;
pub(crate) mod stream_consume;
pub(crate) mod stream_groups;
pub(crate) mod stream_publishers;
pub(crate) mod super_stream;
pub(crate) mod timers;
pub(crate) mod topic_permissions;
pub(crate) mod vhost;

use crate::config::Config;
use crate::hash::DashMap;
use crate::store::{Store, StoreError};
use access::{AccessControl, Permission, UserRecord, VhostRecord};
use consumer::ConsumerChannel;
use flow::FlowLimits;
use memory::MemoryGauge;
use queue::QueueServices;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vhost::VHost;

/// A channel consuming from the `amq.rabbitmq.reply-to` pseudo-queue.
pub(crate) struct ReplyTo {
    pub(crate) channel: Arc<dyn ConsumerChannel>,
    pub(crate) consumer_tag: String,
}

/// A connection's open channels by number.
pub(crate) type ChannelRegistry =
    Arc<parking_lot::Mutex<std::collections::BTreeMap<u16, Arc<dyn ConsumerChannel>>>>;

/// What the broker keeps about a live connection, of either protocol: what
/// the management API shows, and the means to close it from outside.
pub(crate) struct ConnectionHandle {
    /// RabbitMQ's connection name, `peer -> local`.
    pub name: String,
    pub vhost: String,
    pub user: String,
    pub peer: std::net::SocketAddr,
    pub local: String,
    pub client_properties: amq_protocol::types::FieldTable,
    pub auth_mechanism: String,
    /// Over TLS (RabbitMQ's `ssl`): what the session negotiated.
    pub(crate) tls: Option<Arc<crate::tls::TlsSession>>,
    /// ms since the Unix epoch.
    pub(crate) connected_at: u64,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    /// Negotiated heartbeat in seconds (0 = none).
    pub(crate) heartbeat: u16,
    pub(crate) channels: ChannelRegistry,
    /// Sending a reason asks the connection to close: AMQP with 320
    /// CONNECTION_FORCED; a stream connection's socket is closed, as
    /// RabbitMQ closes it (no Close command).
    pub(crate) close: watch::Sender<Option<String>>,
    pub(crate) publishing: Arc<PublishingState>,
    /// A stream protocol connection's publishers and subscriptions; `None`
    /// for AMQP 0-9-1 (the protocol marker).
    pub(crate) stream: Option<Arc<stream_clients::StreamClient>>,
}

/// What holds a connection's publishing back, for the management API's
/// connection `state` (RabbitMQ's running / flow / blocked).
#[derive(Default)]
pub(crate) struct PublishingState {
    /// When flow control last paused it (ms since the Unix epoch).
    last_flow_ms: AtomicU64,
    blocked: std::sync::atomic::AtomicBool,
}

impl PublishingState {
    pub(crate) fn paused_by_flow(&self) {
        self.last_flow_ms.store(timers::now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::Relaxed);
    }

    /// "blocked" by the memory alarm; "flow" when paused by flow control
    /// within the last second (pauses last milliseconds, so a moment's
    /// look would rarely catch one); else "running".
    pub(crate) fn describe(&self) -> &'static str {
        if self.blocked.load(Ordering::Relaxed) {
            "blocked"
        } else if timers::now_ms().saturating_sub(self.last_flow_ms.load(Ordering::Relaxed)) < 1000
        {
            "flow"
        } else {
            "running"
        }
    }
}

pub struct Broker {
    pub(crate) config: Config,
    vhosts: DashMap<String, Arc<VHost>>,
    /// Users, vhost records and permissions.
    pub(crate) access: AccessControl,
    /// Runtime parameters of components such as `shovel`.
    pub(crate) parameters: parameters::RuntimeParameters,
    /// Direct reply-to consumers by their `amq.rabbitmq.reply-to.…` name.
    pub(crate) reply_to: DashMap<String, ReplyTo>,
    pub(crate) connections: DashMap<u64, ConnectionHandle>,
    /// Ready-message bytes across all queues, against the high watermark.
    pub(crate) memory: Arc<MemoryGauge>,
    pub(crate) store: Arc<Store>,
    /// Open connections and channels by vhost and user, for the limits.
    live: limits::LiveCounts,
    /// Running totals for `/metrics`.
    pub(crate) counters: Arc<counters::Counters>,
    /// Handed to every queue.
    queue_services: QueueServices,
    /// The stream protocol's publisher sequences, for deduplication.
    pub(crate) stream_publishers: stream_publishers::PublisherSequences,
    /// Consumer groups (single active consumer) of stream clients.
    pub(crate) stream_groups: Arc<stream_groups::StreamGroups>,
    next_id: AtomicU64,
}

impl Broker {
    /// Why publishers are blocked, or None while no resource alarm is on:
    /// RabbitMQ's connection.blocked reason, "low on " and the alarmed
    /// resources joined by " & " (rabbit_reader).
    #[inline]
    pub(crate) fn alarm_reason(&self) -> Option<&'static str> {
        match (
            self.memory.is_blocked(),
            self.store.disk_alarm().is_blocked(),
        ) {
            (false, false) => None,
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk"),
            (true, true) => Some("low on memory & disk"),
        }
    }

    /// Opens the store in the configured data directory and restores the
    /// durable topology and messages it holds.
    pub fn open(config: Config) -> Result<Arc<Broker>, StoreError> {
        Broker::open_replicated(config, None)
    }

    /// As `open`, recording every change to the store in `journal` for the
    /// cluster's followers, whose copies durability promises then wait for.
    pub(crate) fn open_replicated(
        config: Config,
        journal: Option<Arc<crate::store::journal::Journal>>,
    ) -> Result<Arc<Broker>, StoreError> {
        let (store, mut recovered) =
            Store::open_replicated(&config.server.data_dir, &config.storage, journal)?;
        let (dead_letters, dead_letter_rx) = dead_letter::DeadLetters::channel();
        let access_records = std::mem::take(&mut recovered.access);
        let damaged = |detail| StoreError::Damaged {
            path: store.path().join(crate::store::SLED_LOG),
            detail,
        };
        let access::Loaded { access, seeded } =
            AccessControl::load(store.clone(), &access_records).map_err(damaged)?;
        let policies = policy::stored(&access_records).map_err(damaged)?;
        let parameters =
            parameters::RuntimeParameters::load(store.clone(), &access_records).map_err(damaged)?;
        let memory = Arc::new(MemoryGauge::new(config.limits.memory_high_watermark));
        let counters = Arc::new(counters::Counters::default());
        let streams = crate::store::stream_writer::StreamWriter::start(
            store.backlog.clone(),
            store.files.clone(),
        )
        .map_err(|source| StoreError::Io {
            path: store.path().to_owned(),
            source,
        })?;
        let queue_services = QueueServices {
            streams,
            memory: memory.clone(),
            counters: counters.clone(),
            dead_letters,
            timers: timers::Timers::start(),
            flow: FlowLimits {
                window: config.limits.queue_flow_window,
                busy_consumer: Duration::from_micros(config.limits.flow_busy_consumer_us),
            },
        };
        let broker = Broker {
            access,
            parameters,
            queue_services,
            vhosts: DashMap::default(),
            reply_to: DashMap::default(),
            connections: DashMap::default(),
            live: limits::LiveCounts::default(),
            stream_publishers: Default::default(),
            stream_groups: Default::default(),
            next_id: AtomicU64::new(1),
            counters,
            memory,
            store,
            config,
        };
        if !seeded {
            broker.seed_defaults();
        }
        for record in broker.access.vhost_records() {
            broker.add_vhost(&record.name);
        }
        // Before the objects they apply to.
        for (kind, record) in &policies {
            broker
                .add_vhost(&record.vhost)
                .restore_policy(*kind, record);
        }
        for r in recovered.exchanges {
            broker.add_vhost(&r.vhost).restore_exchange(r);
        }
        for q in recovered.queues {
            broker.add_vhost(&q.record.vhost).restore_queue(q)?;
        }
        for b in recovered.bindings {
            broker.add_vhost(&b.vhost).restore_binding(b);
        }
        for vhost in broker.vhosts() {
            if broker.access.vhost(&vhost.name).is_some() {
                continue;
            }
            if seeded {
                // Left by a connection that declared into its vhost while
                // the vhost was being deleted.
                tracing::warn!(vhost = %vhost.name, "dropping durable objects of a deleted vhost");
                vhost.delete_everything();
                broker.vhosts.remove(&vhost.name);
            } else {
                // A store from before vhosts were recorded names them only
                // in its topology: give each a record.
                broker.access.put_vhost(VhostRecord {
                    name: vhost.name.clone(),
                    ..Default::default()
                });
            }
        }
        let broker = Arc::new(broker);
        memory::start_monitor(Arc::downgrade(&broker.memory));
        let weak = Arc::downgrade(&broker);
        std::thread::Builder::new()
            .name("leveret-dead-letters".into())
            .spawn(move || dead_letter::run(weak, dead_letter_rx))
            .expect("spawn the dead-letter thread");
        Ok(broker)
    }

    /// First start: the configured default vhost and user, with full
    /// permissions there, as RabbitMQ creates guest on a fresh node.
    fn seed_defaults(&self) {
        let auth = &self.config.auth;
        self.access.put_vhost(VhostRecord {
            name: auth.default_vhost.clone(),
            description: "Default virtual host".into(),
            tags: Vec::new(),
        });
        if !auth.default_user.is_empty() {
            self.access.put_user(UserRecord::with_password(
                &auth.default_user,
                &auth.default_pass,
                auth.default_user_tags.clone(),
            ));
            self.access
                .put_permission(Permission::full(&auth.default_user, &auth.default_vhost));
        }
        self.access.mark_seeded();
    }

    /// Creates a vhost (or updates its description and tags); true when new.
    pub(crate) fn create_vhost(&self, record: VhostRecord) -> bool {
        let name = record.name.clone();
        let created = self.access.put_vhost(record);
        self.add_vhost(&name);
        created
    }

    /// Deletes a vhost: its connections are closed, its queues (with their
    /// messages), exchanges, bindings and permissions removed.
    pub(crate) fn delete_vhost(&self, name: &str) -> bool {
        let existed = self.access.delete_vhost(name);
        self.parameters.delete_vhost(name);
        let Some((_, vhost)) = self.vhosts.remove(name) else {
            return existed;
        };
        for c in self.connections.iter() {
            if c.vhost == name {
                let _ = c.close.send(Some(format!("vhost '{name}' is deleted")));
            }
        }
        vhost.delete_everything();
        true
    }

    /// Deletes a user and its permissions; false when there was none.
    /// Its connections are closed, as RabbitMQ does.
    pub(crate) fn delete_user(&self, name: &str) -> bool {
        if !self.access.delete_user(name) {
            return false;
        }
        for c in self.connections.iter() {
            if c.user == name {
                let _ = c.close.send(Some(format!("user '{name}' is deleted")));
            }
        }
        true
    }

    /// Replaces a vhost's limits (empty: clears them), applied at once.
    pub(crate) fn set_vhost_limits(&self, vhost: &str, values: limits::Limits) {
        if let Some(v) = self.vhost(vhost) {
            v.set_max_queues(values.get(limits::MAX_QUEUES));
        }
        self.access.set_vhost_limits(vhost, values);
    }

    /// A connection's place under its vhost's and user's `max-connections`,
    /// or RabbitMQ's refusal of connection.open.
    pub(crate) fn connection_place(
        &self,
        vhost: &str,
        user: &str,
    ) -> Result<limits::ConnectionPlace, crate::error::AmqpError> {
        self.live.connect(
            vhost,
            user,
            self.access.vhost_limit(vhost, limits::MAX_CONNECTIONS),
            self.access.user_limit(user, limits::MAX_CONNECTIONS),
        )
    }

    pub(crate) fn add_vhost(&self, name: &str) -> Arc<VHost> {
        self.vhosts
            .entry(name.to_string())
            .or_insert_with(|| {
                let vhost = VHost::new(
                    name.to_string(),
                    self.queue_services.clone(),
                    self.store.clone(),
                );
                vhost.set_max_queues(self.access.vhost_limit(name, limits::MAX_QUEUES));
                Arc::new(vhost)
            })
            .clone()
    }

    pub(crate) fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.iter().map(|v| v.clone()).collect()
    }

    pub(crate) fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    /// Checks credentials; `None` when the user is unknown or the password wrong.
    pub(crate) fn authenticate(&self, user: &str, password: &str) -> Option<Arc<UserRecord>> {
        self.access.authenticate(user, password)
    }

    pub(crate) fn is_loopback_only(&self, user: &str) -> bool {
        self.config.auth.loopback_users.iter().any(|u| u == user)
    }

    /// A process-unique id for connections, consumers and server-named queues.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes this process's resident memory count against the memory
    /// watermark: for a broker that is its own process, not one inside a test.
    pub fn measure_process_memory(&self) {
        self.memory.measure_process();
    }

    /// Flushes and closes the store, for a broker that stops before serving.
    pub fn close_store(&self) {
        self.store.close();
    }
}
