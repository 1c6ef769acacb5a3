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
    tls: Option<EtcdTls>,
    /// `etcdctl --user`, once authentication is enabled.
    user: Option<String>,
}

/// etcd serving clients over TLS, asking each for a certificate signed
/// by `ca`; `cert`/`key` are etcd's own, and also what `etcdctl` presents.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
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
        Etcd::start_with(None)
    }

    /// As [`start`](Self::start), over TLS with client certificates.
    pub fn start_with(tls: Option<EtcdTls>) -> Option<Etcd> {
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
            tls,
            user: None,
        };
        etcd.run();
        Some(etcd)
    }

    /// `http://127.0.0.1:PORT` (`https://` over TLS), for `[cluster] etcd`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Turns on etcd's authentication with a root user of `password`;
    /// `etcdctl` logs in as it from then on.
    pub fn enable_auth(&mut self, password: &str) {
        self.ctl(&["user", "add", &format!("root:{password}")])
            .expect("etcdctl user add");
        self.ctl(&["auth", "enable"]).expect("etcdctl auth enable");
        self.user = Some(format!("root:{password}"));
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
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cert-file={}", t.cert.display()),
                    format!("--key-file={}", t.key.display()),
                    format!("--trusted-ca-file={}", t.ca.display()),
                    "--client-cert-auth".to_string(),
                ]
            }))
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
            .args(self.tls.iter().flat_map(|t| {
                [
                    format!("--cacert={}", t.ca.display()),
                    format!("--cert={}", t.cert.display()),
                    format!("--key={}", t.key.display()),
                ]
            }))
            .args(self.user.iter().map(|u| format!("--user={u}")))
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
