//! The broker's shared state: vhosts with their exchanges and queues, users,
//! and the registry of live connections.
//!
//! Lock order, kept everywhere: vhost maps (held only to clone an `Arc` out)
//! → exchange bindings (read) → queue state → consumer channel state →
//! outbox. Never two queue locks at once; never `.await` or I/O under a lock.

pub mod consumer;
pub mod dead_letter;
pub mod exchange;
pub mod memory;
pub mod message;
pub mod queue;
pub mod queue_args;
pub mod timers;
pub mod vhost;

use crate::channel::shared::ChannelShared;
use crate::config::Config;
use crate::store::{Store, StoreError};
use dashmap::DashMap;
use memory::MemoryGauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use vhost::VHost;

/// A channel consuming from the `amq.rabbitmq.reply-to` pseudo-queue.
pub struct ReplyTo {
    pub channel: Arc<ChannelShared>,
    pub consumer_tag: String,
}

pub struct User {
    pub name: String,
    pub password: String,
    pub tags: Vec<String>,
}

/// What the broker keeps about a live connection, to close it from outside.
pub struct ConnectionHandle {
    pub vhost: String,
    pub user: String,
    pub peer: String,
    /// Sending a reason asks the connection to close with 320 CONNECTION_FORCED.
    pub close: watch::Sender<Option<String>>,
}

pub struct Broker {
    pub config: Config,
    vhosts: DashMap<String, Arc<VHost>>,
    users: DashMap<String, User>,
    /// Direct reply-to consumers by their `amq.rabbitmq.reply-to.…` name.
    pub reply_to: DashMap<String, ReplyTo>,
    pub connections: DashMap<u64, ConnectionHandle>,
    /// Ready-message bytes across all queues, against the high watermark.
    pub memory: Arc<MemoryGauge>,
    pub store: Arc<Store>,
    pub dead_letters: dead_letter::DeadLetters,
    pub timers: timers::Timers,
    next_id: AtomicU64,
}

impl Broker {
    /// Opens the store in the configured data directory and restores the
    /// durable topology and messages it holds.
    pub fn open(config: Config) -> Result<Arc<Broker>, StoreError> {
        let (store, recovered) = Store::open(&config.server.data_dir, &config.storage)?;
        let (dead_letters, dead_letter_rx) = dead_letter::DeadLetters::channel();
        let broker = Broker {
            dead_letters,
            timers: timers::Timers::start(),
            vhosts: DashMap::new(),
            users: DashMap::new(),
            reply_to: DashMap::new(),
            connections: DashMap::new(),
            next_id: AtomicU64::new(1),
            memory: Arc::new(MemoryGauge::new(config.limits.memory_high_watermark)),
            store,
            config,
        };
        broker.add_vhost(&broker.config.auth.default_vhost.clone());
        for r in recovered.exchanges {
            broker.add_vhost(&r.vhost).restore_exchange(r);
        }
        for q in recovered.queues {
            broker.add_vhost(&q.record.vhost).restore_queue(q);
        }
        for b in recovered.bindings {
            broker.add_vhost(&b.vhost).restore_binding(b);
        }
        broker.users.insert(
            broker.config.auth.default_user.clone(),
            User {
                name: broker.config.auth.default_user.clone(),
                password: broker.config.auth.default_pass.clone(),
                tags: vec!["administrator".into()],
            },
        );
        let broker = Arc::new(broker);
        let weak = Arc::downgrade(&broker);
        std::thread::Builder::new()
            .name("leveret-dead-letters".into())
            .spawn(move || dead_letter::run(weak, dead_letter_rx))
            .expect("spawn the dead-letter thread");
        Ok(broker)
    }

    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        self.vhosts
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(VHost::new(
                    name.to_string(),
                    self.memory.clone(),
                    self.store.clone(),
                    self.dead_letters.clone(),
                    self.timers.clone(),
                ))
            })
            .clone()
    }

    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.vhosts.iter().map(|v| v.clone()).collect()
    }

    /// The tags of `user` when `password` is right.
    pub fn user_tags(&self, user: &str, password: &str) -> Option<Vec<String>> {
        let u = self.users.get(user)?;
        (u.password == password).then(|| u.tags.clone())
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| v.clone())
    }

    /// Checks credentials; `None` when the user is unknown or the password wrong.
    pub fn authenticate(&self, user: &str, password: &str) -> Option<()> {
        let u = self.users.get(user)?;
        (u.password == password).then_some(())
    }

    pub fn is_loopback_only(&self, user: &str) -> bool {
        self.config.auth.loopback_users.iter().any(|u| u == user)
    }

    /// A process-unique id for connections, consumers and server-named queues.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}
