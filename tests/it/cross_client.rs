//! Cross-client suites: pika (Python) and amqplib (Node) against the broker.
//!
//! Each test starts Leveret in-process (or uses `LEVERET_TEST_URI`, e.g. a real
//! RabbitMQ) and runs one external suite with `AMQP_URL` pointing at it:
//!
//! - `python3 -m pytest -q tests/python`   (tests/python/test_pika.py)
//! - `node --test tests/node/test/`         (tests/node/test/*.test.js)
//!
//! The suites also get `LEVERET_TEST_MGMT_URL` (e.g. `http://127.0.0.1:15672`), the
//! base URL of the broker's management HTTP API, which the permission tests
//! use (as the `AMQP_URL` user) to create vhosts, users and permissions. For
//! the in-process broker that is its own API; against another broker it comes
//! from `LEVERET_TEST_MGMT` (e.g. `127.0.0.1:15672`, as in tests/common/http.rs),
//! and without it the suites skip the tests that need the API.
//!
//! The client libraries are pinned in `tests/python/requirements.txt` and
//! `tests/node/package-lock.json`; install them with `scripts/install-test-deps`.
//! Missing dependencies fail these tests (they are never skipped).
//!
//! `LEVERET_PYTHON` / `LEVERET_NODE` override the interpreters used.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Hard limit for one external suite. Each suite bounds its own waits and
/// normally finishes in well under a minute; this only catches a wedged child.
const SUITE_TIMEOUT: Duration = Duration::from_secs(150);

const INSTALL_HINT: &str = "run `scripts/install-test-deps` from the repository root";

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `LEVERET_PYTHON`, else the virtual environment `scripts/install-test-deps`
/// makes (tests/python/.venv), else `python3`.
pub(crate) fn python() -> String {
    if let Ok(python) = std::env::var("LEVERET_PYTHON") {
        return python;
    }
    let venv = repo_root().join("tests/python/.venv/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

pub(crate) fn node() -> String {
    std::env::var("LEVERET_NODE").unwrap_or_else(|_| "node".into())
}

pub(crate) struct Finished {
    /// `None` when the child was killed for running past its time limit.
    status: Option<ExitStatus>,
    pub(crate) stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    pub(crate) fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub(crate) fn report(&self, what: &str) -> String {
        let outcome = match self.status {
            Some(status) => format!("exited with {status}"),
            None => format!("was killed after running for {SUITE_TIMEOUT:?}"),
        };
        format!(
            "{what} {outcome} after {:.1}s\n\
             ---------------- stdout ----------------\n{}\n\
             ---------------- stderr ----------------\n{}\n\
             ----------------------------------------",
            self.elapsed.as_secs_f64(),
            self.stdout.trim_end(),
            self.stderr.trim_end(),
        )
    }
}

/// Runs `cmd` to completion (blocking), capturing its output, and kills its
/// whole process group if it runs past `timeout`.
fn run_blocking(mut cmd: Command, timeout: Duration) -> std::io::Result<Finished> {
    use std::os::unix::process::CommandExt;

    let started = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can kill everything it started.
        .process_group(0);
    let mut child = cmd.spawn()?;

    fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    }
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());

    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > timeout {
            // Kill the group we created (negative pid), then the child itself.
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}

/// Runs `cmd` on the blocking pool so the in-process broker keeps serving.
pub(crate) async fn run(cmd: Command) -> Finished {
    let program = format!("{:?}", cmd.get_program());
    tokio::task::spawn_blocking(move || run_blocking(cmd, SUITE_TIMEOUT))
        .await
        .expect("runner thread panicked")
        .unwrap_or_else(|e| panic!("cannot start {program}: {e} ({INSTALL_HINT})"))
}

/// Checks the Python side is installed; panics with how to fix it if not.
pub(crate) async fn require_python_deps(root: &Path) {
    let mut cmd = Command::new(python());
    cmd.current_dir(root).args([
        "-c",
        "import pika, pytest; print('pika', pika.__version__, '/ pytest', pytest.__version__)",
    ]);
    let out = run(cmd).await;
    assert!(
        out.success(),
        "pika and pytest must be importable by `{py}` for the cross-client suite.\n\
         Install them with:\n\n    pip install -r tests/python/requirements.txt\n\n\
         (that is, `{py} -m pip install -r tests/python/requirements.txt`; or {INSTALL_HINT}).\n\n{}",
        out.report("the import check"),
        py = python(),
    );
    eprintln!("cross_client: using {}", out.stdout.trim());
}

/// Checks the Node side is installed; panics with how to fix it if not.
pub(crate) async fn require_node_deps(root: &Path) {
    let amqplib = root.join("tests/node/node_modules/amqplib/package.json");
    assert!(
        amqplib.is_file(),
        "amqplib is not installed ({} is missing). Install it with:\n\n    \
         npm ci --prefix tests/node\n\n(or {INSTALL_HINT}).",
        amqplib.display()
    );
    let mut cmd = Command::new(node());
    cmd.current_dir(root).arg("--version");
    let out = run(cmd).await;
    assert!(
        out.success(),
        "`{}` is needed for the amqplib suite.\n{}",
        node(),
        out.report("node --version")
    );
    eprintln!("cross_client: using node {}", out.stdout.trim());
}

/// The Node suite's test files (the same set `node --test tests/node/test/`
/// runs), listed explicitly so the command means the same on every Node
/// version.
fn node_test_files(root: &Path) -> Vec<String> {
    let dir = root.join("tests/node/test");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.ends_with(".test.js")
                .then(|| format!("tests/node/test/{name}"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.js files in {}", dir.display());
    files
}

/// The management API's base URL for the suites (`LEVERET_TEST_MGMT_URL`): the
/// in-process broker's own, or `LEVERET_TEST_MGMT` against another broker.
fn mgmt_url(broker: &common::TestBroker) -> Option<String> {
    let hostport = match broker.mgmt_addr {
        Some(addr) => addr.to_string(),
        None => std::env::var("LEVERET_TEST_MGMT").ok()?,
    };
    let hostport = hostport.trim().trim_end_matches('/');
    if hostport.is_empty() {
        return None;
    }
    Some(if hostport.contains("://") {
        hostport.to_string()
    } else {
        format!("http://{hostport}")
    })
}

/// Passes the management API's URL to a suite, or makes sure it has none
/// (so a stale `LEVERET_TEST_MGMT_URL` in our own environment cannot leak in).
fn set_mgmt_env(cmd: &mut Command, broker: &common::TestBroker) {
    match mgmt_url(broker) {
        Some(url) => {
            eprintln!("cross_client: LEVERET_TEST_MGMT_URL={url}");
            cmd.env("LEVERET_TEST_MGMT_URL", url);
        }
        None => {
            eprintln!(
                "cross_client: no management API (set LEVERET_TEST_MGMT with \
                 LEVERET_TEST_URI); the suites skip the tests that need it"
            );
            cmd.env_remove("LEVERET_TEST_MGMT_URL");
        }
    }
}

async fn stop(broker: common::TestBroker) {
    tokio::time::timeout(Duration::from_secs(15), broker.stop())
        .await
        .expect("broker did not shut down within 15 s after the suite finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_suite() {
    let root = repo_root();
    require_python_deps(&root).await;

    let broker = common::TestBroker::start().await;
    let mut cmd = Command::new(python());
    cmd.current_dir(&root)
        .args(["-m", "pytest", "-q", "tests/python"])
        .env("AMQP_URL", &broker.uri)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    set_mgmt_env(&mut cmd, &broker);
    let out = run(cmd).await;
    assert!(
        out.success(),
        "{}",
        out.report("the pika suite (python3 -m pytest -q tests/python)")
    );
    eprintln!("{}", out.report("the pika suite"));
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplib_suite() {
    let root = repo_root();
    require_node_deps(&root).await;

    let broker = common::TestBroker::start().await;
    let mut cmd = Command::new(node());
    cmd.current_dir(&root)
        .arg("--test")
        .args(node_test_files(&root))
        .env("AMQP_URL", &broker.uri)
        .env("NO_COLOR", "1");
    set_mgmt_env(&mut cmd, &broker);
    let out = run(cmd).await;
    assert!(
        out.success(),
        "{}",
        out.report("the amqplib suite (node --test tests/node/test/)")
    );
    eprintln!("{}", out.report("the amqplib suite"));
    stop(broker).await;
}
