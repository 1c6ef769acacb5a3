//! Settings from the environment, as a container sets them: the real binary
//! started with `LEVERET_*` variables (src/config/env.rs). Precedence:
//! flags > environment > file > defaults.

use crate::common::process::{BrokerProcess, TempDir};

use lapin::{Connection, ConnectionProperties};
use std::time::Duration;

async fn connect(uri: &str) -> lapin::Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .expect("connect within 10 s")
}

#[tokio::test]
async fn default_user_pass_and_vhost_come_from_the_environment() {
    let data = TempDir::new("operator-env-default-user");
    let mut broker = BrokerProcess::start_with_env(
        data.path(),
        &[
            ("LEVERET_DEFAULT_USER", "orders-app"),
            ("LEVERET_DEFAULT_PASS", "s3cret"),
            ("LEVERET_DEFAULT_VHOST", "orders"),
        ],
    );
    let addr = broker.addr().to_owned();
    let conn = connect(&format!("amqp://orders-app:s3cret@{addr}/orders"))
        .await
        .expect("the user and vhost from the environment");
    let ch = conn.create_channel().await.expect("channel");
    // Full permissions on the vhost, as the default user has.
    ch.queue_declare("orders".into(), Default::default(), Default::default())
        .await
        .expect("declare in the default vhost");
    // They replace guest and /, as RABBITMQ_DEFAULT_USER/VHOST do.
    assert!(connect(&format!("amqp://guest:guest@{addr}/%2f"))
        .await
        .is_err());
    broker.sigterm_and_wait();
}

#[tokio::test]
async fn environment_overrides_the_file_and_flags_override_the_environment() {
    let data = TempDir::new("operator-env-precedence");
    let config_dir = TempDir::new("operator-env-precedence-config");
    let config = config_dir.path().join("broker.toml");
    std::fs::write(&config, "[limits]\nchannel_max = 10\n").unwrap();
    // A port that is taken: were the variable to win over --listen
    // 127.0.0.1:0, the broker could not start.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let mut broker = BrokerProcess::start_with_config_and_env(
        data.path(),
        &config,
        &[
            ("LEVERET_LIMITS_CHANNEL_MAX", "20"),
            ("LEVERET_SERVER_LISTEN", &taken),
        ],
    );
    assert_ne!(broker.addr(), taken);
    let conn = connect(&broker.uri()).await.expect("connect");
    assert_eq!(conn.configuration().channel_max(), 20);
    broker.sigterm_and_wait();
}

#[test]
fn a_malformed_value_stops_the_start_naming_the_variable() {
    for (var, value, expected) in [
        ("LEVERET_LIMITS_CHANNEL_MAX", "lots", "lots"),
        ("LEVERET_LIMITS_FRAME_MAX", "100", "at least 4096"),
        (
            "LEVERET_SERVER_LOG_LEVLE",
            "debug",
            "LEVERET_SERVER_LOG_LEVEL",
        ),
    ] {
        let data = TempDir::new("operator-env-malformed");
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--stream-listen",
            "127.0.0.1:0",
            "--mgmt-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ];
        let mut broker = BrokerProcess::launch_with_env(&args, &[(var, value)]);
        let status = broker
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{var}={value}: the broker kept running"));
        assert!(!status.success(), "{var}={value}: exit {status}");
        let stderr = broker.stderr();
        assert!(
            stderr.contains(&format!("invalid environment variable {var}"))
                && stderr.contains(expected),
            "{var}={value}: {stderr}"
        );
    }
}
