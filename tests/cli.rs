//! The `leveret` binary as users run it: flags over config file over
//! defaults, the bound port in the log, graceful stop on SIGTERM.

use futures_lite::StreamExt;
use lapin::{Connection, ConnectionProperties};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Broker {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
}

/// Starts the binary and waits for the log line naming the bound address.
fn spawn(args: &[&str]) -> Broker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leveret"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start leveret");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("startup log line");
        if line.contains("accepting AMQP") {
            let at = line.find("addr=").expect("addr field") + 5;
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
    };
    Broker {
        child,
        addr,
        log: rx,
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A failed assertion must not leave a broker running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("leveret did not exit within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_is_logged_and_sigterm_closes_clients_with_320_then_exits_0() {
    let data = std::env::temp_dir().join(format!("leveret-cli-{}", std::process::id()));
    let mut broker = spawn(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        !broker.addr.ends_with(":0"),
        "the log names the real port: {}",
        broker.addr
    );

    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", broker.addr),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect to the logged address");
    let mut events = conn.events_listener();
    sigterm(&broker.child);
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
    assert!(
        wait_exit(&mut broker.child).success(),
        "exit code 0 after SIGTERM"
    );
    let log: Vec<String> = broker.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "log: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() {
    let dir = std::env::temp_dir().join(format!("leveret-cli-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\n[limits]\nframe_max = 8192\nheartbeat = 7\n",
    )
    .unwrap();
    let mut broker = spawn(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let conn = Connection::connect(
        &format!("amqp://guest:guest@{}/%2f", broker.addr),
        ConnectionProperties::default(),
    )
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
    sigterm(&broker.child);
    assert!(wait_exit(&mut broker.child).success());
}

#[test]
fn a_bad_config_file_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("leveret-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
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
        include_str!("../broker.toml")
    );
}
