//! The `leveret` binary as users run it: flags over config file over
//! defaults, the bound port in the log, graceful stop on SIGTERM.

use crate::common;

use common::process::{BrokerProcess, TempDir, EXIT_TIMEOUT};
use futures_lite::StreamExt;
use lapin::{Connection, ConnectionProperties};
use std::process::Command;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_is_logged_and_sigterm_closes_clients_with_320_then_exits_0() {
    let data = TempDir::new("cli");
    let mut broker = BrokerProcess::start(data.path());
    assert!(
        !broker.addr().ends_with(":0"),
        "the log names the real port: {}",
        broker.addr()
    );

    let conn = Connection::connect(&broker.uri(), ConnectionProperties::default())
        .await
        .expect("connect to the logged address");
    let mut events = conn.events_listener();
    broker.sigterm();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(err) = event {
                return err;
            }
        }
        panic!("event stream ended without an error");
    })
    .await
    .expect("client told of the close");
    let code = match err.kind() {
        lapin::ErrorKind::ProtocolError(e) => e.get_id(),
        other => panic!("expected connection.close, got {other:?}"),
    };
    assert_eq!(code, 320);
    let status = broker
        .wait_exit(EXIT_TIMEOUT)
        .expect("leveret exits within 10 s of SIGTERM");
    assert!(status.success(), "exit code 0 after SIGTERM, got {status}");
    let log = broker.log_lines();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "log: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() {
    let dir = TempDir::new("cli-conf");
    let file = dir.path().join("broker.toml");
    // The file's data_dir is used (nothing lands in ./data); its listen
    // address is overridden by the flag; a fixed receive buffer (see the
    // unit test in server.rs for its effect on sockets) still serves.
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = {:?}\ntcp_recv_buffer = 65536\n[limits]\nframe_max = 8192\nheartbeat = 7\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let mut broker = BrokerProcess::spawn(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        // A management port that cannot bind stops the start: not 15672.
        "--stream-listen",
        "127.0.0.1:0",
        "--mgmt-listen",
        "127.0.0.1:0",
    ]);
    let conn = Connection::connect(&broker.uri(), ConnectionProperties::default())
        .await
        .expect("the flag's address, not the file's, is bound");
    assert_eq!(
        conn.configuration().frame_max(),
        8192,
        "frame_max from the file"
    );
    assert_eq!(
        conn.configuration().heartbeat(),
        7,
        "heartbeat from the file"
    );
    conn.close(200, "bye".into()).await.unwrap();
    broker.sigterm_and_wait();
    assert!(
        dir.path().join("data").is_dir(),
        "the store is in the file's data_dir"
    );
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = TempDir::new("cli-bad");
    let file = dir.path().join("broker.toml");
    std::fs::write(&file, "[limits]\nframe_max = 100\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_leveret"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frame_max must be at least 4096"),
        "{stderr}"
    );

    std::fs::write(&file, "[limits]\nframe_maks = 8192\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_leveret"))
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("frame_maks") && stderr.contains(file.to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn default_config_prints_the_documented_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_leveret"))
        .arg("default-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        include_str!("../../broker.toml")
    );
}
