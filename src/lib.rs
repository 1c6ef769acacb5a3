//! Leveret: a RabbitMQ-compatible AMQP 0-9-1 message broker.
//!
//! The entry point is [`run`]: give it a bound listener, a configuration and a
//! shutdown future. Tests bind `127.0.0.1:0` and run the broker in-process.

pub mod broker;
pub mod channel;
pub mod config;
pub mod connection;
pub mod ctl;
pub mod error;
pub mod hash;
pub mod mgmt;
pub mod perf;
pub mod protocol;
pub mod server;
pub mod store;

pub use broker::Broker;
pub use config::Config;
pub use server::{run, serve, ServeError};
