//! Shared harness: starts the real broker in-process on an ephemeral port.
//!
//! Set `LEVERET_TEST_URI` (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`) to run the
//! same tests against another broker, such as RabbitMQ, to check that a test
//! asserts RabbitMQ's behaviour.
#![allow(dead_code)]

pub mod amqp;
pub mod deadlock;
pub mod etcd;
pub mod http;
pub mod process;
pub mod raw;

use leveret::Config;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

pub struct TestBroker {
    /// `amqp://guest:guest@host:port/%2f`
    pub uri: String,
    /// Address of the AMQP listener (for raw-socket tests).
    pub addr: SocketAddr,
    /// Address of the management HTTP API (None against another broker).
    pub mgmt_addr: Option<SocketAddr>,
    /// Address of the stream protocol listener (against another broker:
    /// `LEVERET_TEST_STREAM`, e.g. `127.0.0.1:5552`, if set).
    pub stream_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), leveret::ServeError>>>,
    data_dir: Option<std::path::PathBuf>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(Config::default()).await
    }

    /// Starts the broker with `config`, its data directory replaced by a
    /// fresh temporary one (removed when the broker stops).
    pub async fn start_with(mut config: Config) -> TestBroker {
        deadlock::watch();
        if let Ok(uri) = std::env::var("LEVERET_TEST_URI") {
            let hostport = uri
                .split('@')
                .nth(1)
                .and_then(|s| s.split('/').next())
                .unwrap_or("127.0.0.1:5672")
                .to_string();
            let addr = tokio::net::lookup_host(hostport)
                .await
                .unwrap()
                .next()
                .unwrap();
            let stream_addr = match std::env::var("LEVERET_TEST_STREAM") {
                Ok(a) => tokio::net::lookup_host(a).await.unwrap().next(),
                Err(_) => None,
            };
            return TestBroker {
                uri,
                addr,
                mgmt_addr: None,
                stream_addr,
                shutdown: None,
                task: None,
                data_dir: None,
            };
        }
        let data_dir = std::env::temp_dir().join(unique("leveret-test-data"));
        config.server.data_dir = data_dir.clone();
        // Rates in the management API within a tenth of a second, not five.
        if config.server.collect_statistics_interval_ms
            == Config::default().server.collect_statistics_interval_ms
        {
            config.server.collect_statistics_interval_ms = 100;
        }
        let kept_dir = data_dir.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mgmt = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mgmt_addr = mgmt.local_addr().unwrap();
        let stream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream_addr = stream.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let result = match leveret::Broker::open(config) {
                Ok(broker) => {
                    let listeners = leveret::Listeners {
                        amqp: vec![listener],
                        mgmt: vec![mgmt],
                        stream: vec![stream],
                        ..leveret::Listeners::default()
                    };
                    leveret::serve_on(listeners, broker, async {
                        let _ = rx.await;
                    })
                    .await;
                    Ok(())
                }
                Err(e) => Err(leveret::ServeError::from(e)),
            };
            let _ = std::fs::remove_dir_all(&data_dir);
            result
        });
        TestBroker {
            uri: format!("amqp://guest:guest@{addr}/%2f"),
            addr,
            mgmt_addr: Some(mgmt_addr),
            stream_addr: Some(stream_addr),
            shutdown: Some(tx),
            task: Some(task),
            data_dir: Some(kept_dir),
        }
    }

    /// URI for another vhost on the same broker (vhost is URL-encoded by the caller).
    pub fn uri_for_vhost(&self, encoded_vhost: &str) -> String {
        let base = self.uri.rsplit_once('/').unwrap().0;
        format!("{base}/{encoded_vhost}")
    }

    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.uri, lapin::ConnectionProperties::default())
            .await
            .expect("connect to broker")
    }

    /// Stops the broker and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        // A test that never called stop() leaves its store behind otherwise.
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A name unique to this test process, so tests can share a broker.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// True when `LEVERET_TEST_URI` points the tests at another broker (e.g. RabbitMQ),
/// for the few tests that need Leveret-specific configuration.
pub fn against_other_broker() -> bool {
    std::env::var("LEVERET_TEST_URI").is_ok()
}

/// How often [`wait_for`] and [`eventually`] look again.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits for something to happen instead of sleeping a fixed time: calls
/// `probe` every [`POLL`] until it returns `Ok`, for at most `limit`. On
/// timeout panics naming `what` and the last `Err` (what was seen instead).
pub async fn wait_for<T, E: Debug, Fut>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Fut,
) -> T
where
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; last seen: {last:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] a condition that says only yes or no.
pub async fn eventually<Fut: Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Fut,
) {
    wait_for(what, limit, || {
        let check = check();
        async move {
            if check.await {
                Ok(())
            } else {
                Err("not yet")
            }
        }
    })
    .await
}
