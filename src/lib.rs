//! Leveret: a RabbitMQ-compatible AMQP 0-9-1 message broker.
//!
//! The entry point is [`run`]: give it a bound listener, a configuration and a
//! shutdown future. Tests bind `127.0.0.1:0` and run the broker in-process.

pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod hash;
pub mod listen;
pub mod message;
pub mod mgmt;
pub mod server;
pub mod store;
pub mod tls;

/// The wire format and AMQP's errors live in their own crate, below the broker.
pub use leveret_protocol as protocol;
pub use leveret_protocol::error;

pub use broker::Broker;
pub use config::Config;
pub use server::{run, serve, ServeError};
