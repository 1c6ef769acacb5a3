//! Leveret: a RabbitMQ-compatible AMQP 0-9-1 message broker.
//!
//! The entry points: [`Listeners::bind`] binds what a configuration names,
//! [`Broker::open`] opens its store, and [`serve_on`] serves until a shutdown
//! future completes. Tests bind `127.0.0.1:0` and run the broker in-process.
//!
//! Every module is private and every item `pub(crate)` unless the binary, the
//! integration tests or the fuzz targets use it: what is re-exported below is
//! the whole public surface, and the `unreachable_pub` lint keeps it that way.

#![warn(unreachable_pub)]

// Until the stream queue and the stream protocol read and write through it.
#[cfg_attr(not(test), allow(dead_code))]
mod amqp10;
mod broker;
mod channel;
mod cluster;
pub mod config;
mod connection;
mod hash;
mod listen;
mod logging;
mod message;
mod mgmt;
mod replication;
mod server;
mod shovel;
mod store;
mod stream_entry;
mod stream_protocol;
mod tls;

/// The wire format and AMQP's errors live in their own crate, below the broker.
pub use leveret_protocol as protocol;
pub use leveret_protocol::error;

pub use broker::Broker;
pub use config::Config;
pub use logging::init as init_logging;
pub use server::{serve, serve_cluster, serve_on, Listeners, Place, ServeError};

/// Cluster mode's roles, for the binary and the cluster tests.
pub use cluster::{Cluster, ClusterError, Isr, Member, Role};
pub use tls::{provider as tls_provider, Tls, TlsSession};

/// What the damage and disk-full tests open or measure directly.
pub use store::{disk_alarm::free_bytes, Recovered, Store, StoreError};

/// What the fuzz targets drive without a socket.
pub use connection::{auth::credentials as sasl_credentials, serve_stream, ClientRead};
#[doc(hidden)]
pub mod fuzzing;
