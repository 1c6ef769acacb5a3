//! `leveret perf` end to end: the built binary loads a real broker and
//! reports what it measured, checking every message on the way.

use crate::common;

use common::TestBroker;
use serde_json::Value;
use std::process::{Command, Output};

/// Runs the binary off the runtime that serves the in-process broker.
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(args)
            .output()
            .expect("run leveret")
    })
    .await
    .unwrap()
}

/// Runs `leveret perf --json ARGS` against `broker`; the report and exit status.
async fn perf(broker: &TestBroker, args: &[&str]) -> (Value, bool) {
    let mut all: Vec<String> = ["perf", "--uri", &broker.uri, "--json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let out = run(all).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (report, out.status.success())
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number, got {v}"))
}

fn assert_clean(r: &Value) {
    let v = &r["violations"];
    assert_eq!(v["duplicated"], 0, "{r}");
    assert_eq!(v["reordered"], 0, "{r}");
    assert!(v["lost"] == 0 || v["lost"].is_null(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_run_reports_rates_latency_and_no_violations() {
    let broker = TestBroker::start().await;
    // Paced, so the check does not depend on how fast a debug build is.
    let (r, ok) = perf(
        &broker,
        &[
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--size",
            "64",
            "--rate",
            "2000",
        ],
    )
    .await;
    assert!(ok, "{r}");
    assert_clean(&r);
    assert_eq!(
        r["violations"]["lost"], 0,
        "a drained run knows nothing was lost: {r}"
    );
    assert!(
        n(&r["sent_rate"]) > 0.0 && n(&r["received_rate"]) > 0.0,
        "{r}"
    );
    let l = &r["latency_us"];
    assert!(
        n(&l["p50"]) <= n(&l["p99"]) && n(&l["p99"]) <= n(&l["max"]),
        "{r}"
    );
    assert!(n(&r["tool"]["cpu_s"]) > 0.0, "{r}");
    assert!(
        r.get("broker").is_none(),
        "no --broker-pid, no broker figures"
    );
    // Paced at 2 000 msg/s, the consumer keeps up: little is in flight
    // when the window ends, and the rest arrives at once.
    assert!(n(&r["backlog_at_end"]) < 2000.0, "{r}");
    assert!(n(&r["drain_s"]) < 5.0, "{r}");
    assert_eq!(r["interrupted"], false, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_ends_the_window_early_and_still_reports_it() {
    let broker = TestBroker::start().await;
    let uri = broker.uri.clone();
    let out = tokio::task::spawn_blocking(move || {
        let child = Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args([
                "perf",
                "--uri",
                &uri,
                "--json",
                "--duration",
                "60",
                "--warmup",
                "0.2",
            ])
            .args(["--rate", "1000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run leveret perf");
        // The subject: a run interrupted after 1.5 s still reports.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        // SAFETY: signalling a child process this test started.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        child.wait_with_output().expect("perf exits")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no report after Ctrl-C ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{r}");
    assert_eq!(r["interrupted"], true, "{r}");
    assert!(n(&r["duration_s"]) < 10.0, "the window ran on: {r}");
    assert!(n(&r["received"]) > 0.0, "{r}");
    assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_caps_a_churn_run() {
    let broker = TestBroker::start().await;
    let (r, ok) = perf(
        &broker,
        &[
            "--producers",
            "1",
            "--consumers",
            "0",
            "--churn",
            "1000000",
            "--duration",
            "0.5",
        ],
    )
    .await;
    assert!(ok, "{r}");
    assert!(n(&r["sent"]) > 0.0 && n(&r["sent"]) < 1_000_000.0, "{r}");
    assert!(n(&r["duration_s"]) < 10.0, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_confirmed_messages_fill_a_queue_that_a_second_run_drains() {
    let broker = TestBroker::start().await;
    let prefix = common::unique("perf-backlog");
    let (fill, ok) = perf(
        &broker,
        &[
            "--persistent",
            "--confirm",
            "50",
            "--consumers",
            "0",
            "--pmessages",
            "2000",
            "--size",
            "1024",
            "--queue-prefix",
            &prefix,
            "--keep",
        ],
    )
    .await;
    assert!(ok, "{fill}");
    assert_eq!(fill["sent"], 2000, "{fill}");
    assert_eq!(fill["confirmed"], 2000, "every message confirmed: {fill}");
    assert_eq!(fill["nacked"], 0);
    let (drain, ok) = perf(
        &broker,
        &[
            "--persistent",
            "--producers",
            "0",
            "--cmessages",
            "2000",
            "--prefetch",
            "200",
            "--multi-ack-every",
            "50",
            "--queue-prefix",
            &prefix,
        ],
    )
    .await;
    assert!(ok, "{drain}");
    assert_eq!(drain["received"], 2000, "{drain}");
    assert_clean(&drain);
    assert!(
        drain["latency_us"].is_null(),
        "another run's stamps: {drain}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_every_message_to_every_queue() {
    let broker = TestBroker::start().await;
    let exchange = common::unique("perf-fanout");
    let (r, ok) = perf(
        &broker,
        &[
            "--exchange",
            &exchange,
            "--type",
            "fanout",
            "--queues",
            "3",
            "--consumers",
            "3",
            "--pmessages",
            "3000",
            "--autoack",
        ],
    )
    .await;
    assert!(ok, "{r}");
    assert_eq!(r["sent"], 3000, "{r}");
    assert_eq!(r["received"], 9000, "{r}");
    assert_eq!(r["violations"]["lost"], 0, "{r}");
    assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_opens_and_closes_connections_and_measures_the_broker() {
    let broker = TestBroker::start().await;
    let pid = std::process::id().to_string(); // the in-process broker
    let (r, ok) = perf(
        &broker,
        &["--churn", "20", "--producers", "2", "--broker-pid", &pid],
    )
    .await;
    assert!(ok, "{r}");
    assert_eq!(r["sent"], 40, "{r}");
    assert!(n(&r["churn_rate"]) > 0.0, "{r}");
    assert!(
        n(&r["broker"]["cpu_s"]) >= 0.0 && n(&r["broker"]["peak_rss_kb"]) > 0.0,
        "{r}"
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_in_one_line() {
    let out = run(vec!["perf".into(), "--size".into(), "8".into()]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        "leveret perf: --size must be at least 16 (the stamp)"
    );
}
