//! A private etcd for cluster tests: Debian's `etcd` binary on free
//! loopback ports with its own data directory, never a system etcd. It can
//! be killed (SIGKILL) and started again on the same ports and data.

use super::process::TempDir;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
}

/// A port nothing listens on now (the kernel's next ephemeral one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Etcd {
    /// Starts etcd and waits until it answers (10 s at most). `None`, with
    /// a note, where no etcd binary is installed (outside CI).
    pub fn start() -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is not installed (.ci/run installs etcd-server)"
            );
            eprintln!("etcd not installed: cluster test skipped");
            return None;
        }
        let mut etcd = Etcd {
            child: None,
            dir: TempDir::new("etcd"),
            client_port: free_port(),
            peer_port: free_port(),
        };
        etcd.run();
        Some(etcd)
    }

    /// `http://127.0.0.1:PORT`, for `[cluster] etcd`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn run(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not listen within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not serving: wait until it has elected itself.
        while !self.healthy() {
            assert!(Instant::now() < deadline, "etcd not healthy within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn healthy(&self) -> bool {
        self.ctl(&["endpoint", "health"]).is_some()
    }

    /// `etcdctl` against this etcd; its stdout, `None` if it failed.
    pub fn ctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--command-timeout=2s")
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill9();
        self.run();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill9();
    }
}
