//! The real `leveret` binary as a child process: start it, read its log, stop it
//! with SIGTERM or SIGKILL, and restart it on the same data directory.
//!
//! Every wait here has a deadline, and dropping a [`BrokerProcess`] kills the
//! child, so a failing test never leaves a broker running or hangs cargo.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the broker gets to log that it is accepting connections.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker gets to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// The child closed stderr (it exited).
    closed: bool,
}

/// stderr lines, collected by a reader thread as the child writes them.
#[derive(Clone, Default)]
struct Log(Arc<(Mutex<LogState>, Condvar)>);

impl Log {
    fn collect(&self, stderr: impl std::io::Read + Send + 'static) {
        let log = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let (state, cond) = &*log.0;
                state.lock().unwrap().lines.push(line);
                cond.notify_all();
            }
            let (state, cond) = &*log.0;
            state.lock().unwrap().closed = true;
            cond.notify_all();
        });
    }

    fn is_closed(&self) -> bool {
        self.0 .0.lock().unwrap().closed
    }

    fn lines(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// Waits until a line satisfies `pred` (returning it), stderr closes, or
    /// `timeout` passes.
    fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (state, cond) = &*self.0;
        let mut guard = state.lock().unwrap();
        loop {
            if let Some(line) = guard.lines.iter().find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if guard.closed || now >= deadline {
                return None;
            }
            guard = cond.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Waits (up to `timeout`) for the child's stderr to reach end of file, so
    /// that `lines` holds everything it wrote.
    fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let (state, cond) = &*self.0;
        let mut guard = state.lock().unwrap();
        while !guard.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            guard = cond.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }
}

/// A running (or exited) `leveret` child process.
pub struct BrokerProcess {
    child: Child,
    addr: Option<String>,
    log: Log,
    exit: Option<ExitStatus>,
}

impl BrokerProcess {
    /// `leveret serve` on an ephemeral port with `data_dir` for durable state;
    /// returns once the broker logs the address it accepts connections on.
    pub fn start(data_dir: &Path) -> BrokerProcess {
        Self::spawn(&Self::serve_args(data_dir))
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> BrokerProcess {
        let mut broker = Self::launch_with_env(&Self::serve_args(data_dir), env);
        broker.wait_ready();
        broker
    }

    /// `leveret serve` on `data_dir` without waiting for it to be ready, for
    /// start-ups that are expected to fail.
    pub fn launch_on(data_dir: &Path) -> BrokerProcess {
        Self::launch(&Self::serve_args(data_dir))
    }

    fn serve_args(data_dir: &Path) -> Vec<&str> {
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            // Keep parallel brokers off the fixed default management port.
            "--stream-listen",
            "127.0.0.1:0",
            "--mgmt-listen",
            "127.0.0.1:0",
            "--data-dir",
            data_dir.to_str().expect("UTF-8 data dir path"),
        ]
    }

    /// Runs the binary with `args` and waits for the log line naming the bound address.
    pub fn spawn(args: &[&str]) -> BrokerProcess {
        let mut broker = Self::launch(args);
        broker.wait_ready();
        broker
    }

    /// Runs the binary with `args` (stdout discarded, stderr collected) and returns at once.
    pub fn launch(args: &[&str]) -> BrokerProcess {
        Self::launch_with_env(args, &[])
    }

    /// [`launch`](Self::launch) with extra environment variables.
    pub fn launch_with_env(args: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start leveret");
        let log = Log::default();
        log.collect(child.stderr.take().unwrap());
        BrokerProcess {
            child,
            addr: None,
            log,
            exit: None,
        }
    }

    /// Waits for the "accepting AMQP" log line and records its `addr=HOST:PORT`.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = self
                .log
                .wait_for(remaining.min(Duration::from_millis(100)), |l| {
                    l.contains("accepting AMQP")
                });
            if let Some(line) = line {
                let at = line.find("addr=").expect("addr field in the startup line") + 5;
                self.addr = Some(line[at..].split_whitespace().next().unwrap().to_string());
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.exit = Some(status);
                self.log.wait_closed(Duration::from_secs(2));
                panic!(
                    "leveret exited ({status}) before accepting connections; stderr:\n{}",
                    self.stderr()
                );
            }
            if self.log.is_closed() {
                // stderr is closed but the exit is not reaped yet.
                std::thread::sleep(Duration::from_millis(10));
            }
            if remaining.is_zero() {
                panic!(
                    "leveret did not log \"accepting AMQP\" within {STARTUP_TIMEOUT:?}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// `HOST:PORT` the broker accepts AMQP connections on.
    pub fn addr(&self) -> &str {
        self.addr.as_deref().expect("broker not started")
    }

    /// `amqp://guest:guest@HOST:PORT/%2f`
    /// A lapin connection to the broker (10 s at most).
    pub async fn connect(&self) -> lapin::Connection {
        super::amqp::connect_uri(&self.uri()).await
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line collected so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lines()
    }

    /// Everything collected from stderr so far, one line per line.
    pub fn stderr(&self) -> String {
        self.log.lines().join("\n")
    }

    /// The management API's address, from the line the broker logs once
    /// it listens (waiting up to 10 s for it).
    pub fn mgmt_addr(&self) -> std::net::SocketAddr {
        self.listening("management API")
    }

    /// The stream protocol listener's address (as [`mgmt_addr`](Self::mgmt_addr)).
    pub fn stream_addr(&self) -> std::net::SocketAddr {
        self.listening("stream protocol")
    }

    /// The address of the listener `what` from its "listening" log line.
    fn listening(&self, what: &str) -> std::net::SocketAddr {
        let needle = format!("{what} listening");
        let line = self
            .wait_for_log(Duration::from_secs(10), |l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no {what} log line; stderr:\n{}", self.stderr()));
        let at = line.find("addr=").expect("addr field") + 5;
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches('"')
            .parse()
            .expect("a socket address")
    }

    /// Waits up to `timeout` for a log line satisfying `pred`.
    pub fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.log.wait_for(timeout, pred)
    }

    /// Sends SIGTERM (does not wait).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    /// Once it has exited, the log holds all of its stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    self.exit = Some(status);
                    break;
                }
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.log.wait_closed(Duration::from_secs(2));
        self.exit
    }

    /// SIGTERM, then asserts the broker exits with code 0 within [`EXIT_TIMEOUT`].
    pub fn sigterm_and_wait(&mut self) {
        self.sigterm();
        match self.wait_exit(EXIT_TIMEOUT) {
            Some(status) => assert!(
                status.success(),
                "exit code 0 after SIGTERM, got {status}; stderr:\n{}",
                self.stderr()
            ),
            None => panic!(
                "leveret did not exit within {EXIT_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// SIGKILL (`kill -9`): the broker gets no chance to flush anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL leveret");
        let status = self.child.wait().expect("reap leveret");
        self.exit = Some(status);
        self.log.wait_closed(Duration::from_secs(2));
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // A failed assertion must not leave a broker running.
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh directory under the system temp dir, unique to this test and process,
/// removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        // Unique per call too: every integration test shares one process.
        let path = std::env::temp_dir().join(super::unique(&format!("leveret-{name}")));
        let _ = std::fs::remove_dir_all(&path);
        let _ = std::fs::remove_file(&path);
        std::fs::create_dir_all(&path).expect("create test temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

impl BrokerProcess {
    /// `leveret serve --config CONFIG` on an ephemeral port with `data_dir` for
    /// durable state; returns once the broker accepts connections.
    pub fn start_with_config(data_dir: &Path, config: &Path) -> BrokerProcess {
        let mut args = Self::serve_args(data_dir);
        args.push("--config");
        args.push(config.to_str().expect("UTF-8 config path"));
        Self::spawn(&args)
    }
}

impl BrokerProcess {
    /// [`start_with_config`](Self::start_with_config) with extra environment
    /// variables (`TOKIO_WORKER_THREADS`, say).
    pub fn start_with_config_and_env(
        data_dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
    ) -> BrokerProcess {
        let mut args = Self::serve_args(data_dir);
        args.push("--config");
        args.push(config.to_str().expect("UTF-8 config path"));
        let mut broker = Self::launch_with_env(&args, env);
        broker.wait_ready();
        broker
    }
}
