//! The Python examples (examples/python/) run against the broker and do
//! what they say. Each example's `demo` mode runs the whole pattern within
//! its own time limit, prints `key=value` lines and exits non-zero when the
//! pattern did not hold; these tests run it against a fresh broker and check
//! those lines.
//!
//! The interpreter and pika are the ones the cross-client suites use
//! (`scripts/install-test-deps`; `LEVERET_PYTHON` overrides), with the same
//! policy: missing dependencies fail the test with how to install them.
//! With `LEVERET_TEST_URI` (and `LEVERET_TEST_MGMT` for the management API)
//! the same examples run against another broker, e.g. RabbitMQ.

use crate::common;
use crate::common::http::Api;
use crate::cross_client::{python, repo_root, require_python_deps, run, Finished};

use std::process::Command;

/// Runs `examples/python/{file}` against `broker`, asserts it succeeded and
/// returns its standard output.
async fn run_example(broker: &common::TestBroker, file: &str, args: &[&str]) -> String {
    let out = run_example_for_status(broker, file, args).await;
    assert!(
        out.success(),
        "{}",
        out.report(&format!("examples/python/{file}"))
    );
    out.stdout
}

async fn run_example_for_status(
    broker: &common::TestBroker,
    file: &str,
    args: &[&str],
) -> Finished {
    let root = repo_root();
    require_python_deps(&root).await;
    let mut cmd = Command::new(python());
    cmd.current_dir(root.join("examples/python"))
        .arg(file)
        .args(["--url", &broker.uri])
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        // Only what the test passes: no stale URLs from our own environment.
        .env_remove("AMQP_URL")
        .env_remove("MGMT_URL");
    run(cmd).await
}

/// The broker's management API as a base URL: its own, or `LEVERET_TEST_MGMT`
/// against another broker; `None` when there is none (the test is skipped).
fn mgmt_url(broker: &common::TestBroker) -> Option<String> {
    let api = Api::of(broker)?;
    Some(format!("http://{}", api.addr))
}

/// The value of `key=` on the first line that has one and, with `filter`
/// (a whole word such as `"worker=fast"`), that word too.
fn value<'a>(stdout: &'a str, filter: Option<&str>, key: &str) -> Option<&'a str> {
    let prefix = format!("{key}=");
    stdout
        .lines()
        .filter(|line| filter.is_none_or(|f| line.split_whitespace().any(|w| w == f)))
        .find_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(prefix.as_str()))
        })
}

fn number(stdout: &str, filter: Option<&str>, key: &str) -> u64 {
    value(stdout, filter, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}= (on a line with {filter:?}) in:\n{stdout}"))
}

async fn stop(broker: common::TestBroker) {
    tokio::time::timeout(std::time::Duration::from_secs(15), broker.stop())
        .await
        .expect("broker did not shut down within 15 s after the example finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_queue_dispatches_fairly() {
    let broker = common::TestBroker::start().await;
    let out = run_example(&broker, "1_work_queue.py", &["--count", "30"]).await;
    let fast = number(&out, Some("worker=fast"), "processed");
    let slow = number(&out, Some("worker=slow"), "processed");
    assert_eq!(fast + slow, 30, "{out}");
    assert_eq!(number(&out, None, "total"), 30, "{out}");
    // The slow worker takes 20x longer per task: with prefetch 1 it gets
    // far fewer than the round-robin half (under load too, where each task
    // costs both workers some extra time).
    assert!(fast >= 2 * slow, "fast {fast}, slow {slow}:\n{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_delivers_to_every_subscriber() {
    let broker = common::TestBroker::start().await;
    let out = run_example(
        &broker,
        "2_publish_subscribe.py",
        &["--subscribers", "3", "--count", "5"],
    )
    .await;
    let queues: Vec<&str> = (1..=3)
        .map(|n| {
            let filter = format!("subscriber={n}");
            assert_eq!(number(&out, Some(&filter), "received"), 5, "{out}");
            value(&out, Some(&filter), "queue").unwrap()
        })
        .collect();
    // Each subscriber had its own server-named queue.
    assert!(queues.iter().all(|q| q.starts_with("amq.gen-")), "{out}");
    assert!(
        queues[0] != queues[1] && queues[1] != queues[2] && queues[0] != queues[2],
        "{out}"
    );
    assert_eq!(number(&out, None, "all_received"), 5, "{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_matches_words() {
    let broker = common::TestBroker::start().await;
    let out = run_example(&broker, "3_topic_routing.py", &[]).await;
    for (subscriber, keys) in [
        ("critical", "kern.critical,auth.critical"),
        ("kernel", "kern.critical,kern.info,kern,kern.disk.full"),
        (
            "everything",
            "kern.critical,kern.info,auth.critical,auth.info,kern,kern.disk.full,cron.critical.now",
        ),
        // Two bindings match kern.critical: the queue still gets it once.
        ("kern-or-critical", "kern.critical,kern.info,auth.critical"),
    ] {
        let filter = format!("subscriber={subscriber}");
        assert_eq!(value(&out, Some(&filter), "keys"), Some(keys), "{out}");
    }
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_over_direct_reply_to() {
    let broker = common::TestBroker::start().await;
    let out = run_example(&broker, "4_rpc_direct_reply_to.py", &["--count", "20"]).await;
    assert_eq!(number(&out, Some("n=19"), "result"), 4181, "{out}");
    assert_eq!(number(&out, None, "calls"), 20, "{out}");
    assert_eq!(number(&out, None, "correct"), 20, "{out}");
    // The server saw the broker's per-channel address, not the pseudo-queue.
    let reply_to = value(&out, Some("server"), "reply_to").unwrap();
    assert!(reply_to.starts_with("amq.rabbitmq.reply-to."), "{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_then_park_in_dead_letter_queue() {
    let broker = common::TestBroker::start().await;
    let out = run_example(
        &broker,
        "5_retry_dead_letter.py",
        &["--retry-delay-ms", "200"],
    )
    .await;
    let attempts = |id: &str| -> Vec<String> {
        let filter = format!("message_id={id}");
        out.lines()
            .filter(|l| l.starts_with("attempt ") && l.split_whitespace().any(|w| w == filter))
            .map(|l| {
                format!(
                    "{}:{}",
                    value(l, None, "n").unwrap(),
                    value(l, None, "outcome").unwrap()
                )
            })
            .collect()
    };
    assert_eq!(attempts("ok"), ["1:ok"], "{out}");
    // Each failure went round through emails.retry and came back counted.
    assert_eq!(attempts("flaky"), ["1:retry", "2:retry", "3:ok"], "{out}");
    assert_eq!(
        attempts("poison"),
        ["1:retry", "2:retry", "3:parked"],
        "{out}"
    );
    // Parked after the 3rd attempt; the broker's x-death counted the two
    // rejections that dead-lettered it (the 3rd was parked by the consumer).
    let dlq = out
        .lines()
        .find(|l| l.starts_with("dlq "))
        .expect("a dlq line");
    assert_eq!(value(dlq, None, "message_id"), Some("poison"), "{out}");
    assert_eq!(value(dlq, None, "attempts"), Some("3"), "{out}");
    assert_eq!(value(dlq, None, "x-death-count"), Some("2"), "{out}");
    assert_eq!(value(dlq, None, "x-death-queue"), Some("emails"), "{out}");
    assert_eq!(
        value(dlq, None, "x-death-reason"),
        Some("rejected"),
        "{out}"
    );
    assert_eq!(number(&out, None, "emails"), 0, "{out}");
    assert_eq!(number(&out, None, "emails.retry"), 0, "{out}");
    assert_eq!(number(&out, None, "emails.dlq"), 1, "{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_consumer_processes_each_id_once() {
    let broker = common::TestBroker::start().await;
    let out = run_example(&broker, "6_idempotent_consumer.py", &[]).await;
    let outcomes: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("delivery "))
        .map(|l| {
            let id = value(l, None, "message_id").unwrap();
            let redelivered = value(l, None, "redelivered").unwrap();
            let outcome = value(l, None, "outcome").unwrap();
            format!("{id}:{redelivered}:{outcome}")
        })
        .collect();
    // Published p1 p2 p3 p2 p4 p1 p5; the first consumer died after
    // committing p3, so the broker redelivered it to the second.
    assert_eq!(
        outcomes,
        [
            "p1:False:processed",
            "p2:False:processed",
            "p3:True:duplicate",
            "p2:False:duplicate",
            "p4:False:processed",
            "p1:False:duplicate",
            "p5:False:processed",
        ],
        "{out}"
    );
    for id in ["p1", "p2", "p3", "p4", "p5"] {
        let filter = format!("message_id={id}");
        assert_eq!(number(&out, Some(&filter), "times"), 1, "{out}");
    }
    assert_eq!(value(&out, None, "all_once"), Some("True"), "{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_relay_loses_nothing_when_it_crashes() {
    let broker = common::TestBroker::start().await;
    let out = run_example(&broker, "7_transactional_outbox.py", &[]).await;
    // The rolled-back order left no outbox row: 5 orders, 5 rows.
    assert!(out.contains("rolled_back item=unicorn"), "{out}");
    assert_eq!(number(&out, None, "outbox_rows"), 5, "{out}");
    // The first relay published 3 rows and crashed before marking them; the
    // second published all 5 and marked them.
    assert_eq!(
        number(&out, Some("crashed_before_mark=True"), "published"),
        3,
        "{out}"
    );
    assert_eq!(number(&out, Some("marked=5"), "published"), 5, "{out}");
    assert_eq!(number(&out, None, "unsent"), 0, "{out}");
    // 8 deliveries: 3 duplicates ignored, every order invoiced exactly once.
    assert_eq!(number(&out, None, "deliveries"), 8, "{out}");
    assert_eq!(number(&out, None, "processed"), 5, "{out}");
    assert_eq!(number(&out, None, "duplicates"), 3, "{out}");
    assert_eq!(number(&out, None, "invoiced"), 5, "{out}");
    assert_eq!(number(&out, None, "lost"), 0, "{out}");
    assert_eq!(number(&out, None, "doubled"), 0, "{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_monitor_warns_when_a_consumer_falls_behind() {
    let broker = common::TestBroker::start().await;
    let Some(mgmt) = mgmt_url(&broker) else {
        eprintln!("skipped: no management API (set LEVERET_TEST_MGMT with LEVERET_TEST_URI)");
        return;
    };
    // A publisher at ~200 msg/s against a consumer at ~20 msg/s.
    let out = run_example(
        &broker,
        "8_consumer_lag_monitor.py",
        &[
            "--mgmt-url",
            &mgmt,
            "--max-depth",
            "100",
            "--max-growth",
            "10",
            "--interval",
            "0.5",
        ],
    )
    .await;
    let warning = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with("WARN queue=lag.demo ") && l.contains(prefix))
            .unwrap_or_else(|| panic!("no WARN line with {prefix}:\n{out}"))
            .to_string()
    };
    let depth: u64 = number(&warning("depth="), None, "depth");
    assert!(depth > 100, "{out}");
    let growth: f64 = value(&warning("growth="), None, "growth")
        .and_then(|g| g.trim_end_matches("/s").parse().ok())
        .unwrap();
    assert!(growth > 10.0, "{out}");
    // The samples showed the consumer attached and the rates apart.
    let sample = out
        .lines()
        .rfind(|l| l.starts_with("sample queue=lag.demo "))
        .unwrap();
    assert_eq!(number(sample, None, "consumers"), 1, "{out}");
    let rate = |key| {
        value(sample, None, key)
            .and_then(|r| r.parse::<f64>().ok())
            .unwrap()
    };
    assert!(rate("publish_rate") > rate("ack_rate"), "{out}");
    assert_eq!(value(&out, None, "warned"), Some("depth,growth"), "{out}");
    stop(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_monitor_check_fails_on_a_queue_without_consumers() {
    use crate::common::amqp;
    let broker = common::TestBroker::start().await;
    let Some(mgmt) = mgmt_url(&broker) else {
        eprintln!("skipped: no management API (set LEVERET_TEST_MGMT with LEVERET_TEST_URI)");
        return;
    };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let queue =
        amqp::declare_unique(&ch, "lag-check", Default::default(), Default::default()).await;
    for _ in 0..5 {
        amqp::publish_props(&ch, "", &queue, b"waiting", Default::default()).await;
    }
    let expected = format!("WARN queue={queue} depth=5 > max_depth=3");
    // RabbitMQ's API shows the depth only after its next statistics interval.
    let out = common::wait_for(
        "the check to warn",
        std::time::Duration::from_secs(20),
        || {
            let args = ["monitor", "--once", "--mgmt-url", &mgmt, "--max-depth", "3"];
            let expected = expected.clone();
            let broker = &broker;
            async move {
                let out = run_example_for_status(broker, "8_consumer_lag_monitor.py", &args).await;
                if !out.success() && out.stdout.contains(&expected) {
                    Ok(out.stdout)
                } else {
                    Err(out.report("monitor --once"))
                }
            }
        },
    )
    .await;
    assert!(
        out.contains(&format!("WARN queue={queue} consumers=0 depth=5")),
        "{out}"
    );
    let sample = format!("sample queue={queue} ");
    let sample = out.lines().find(|l| l.starts_with(&sample)).unwrap();
    assert_eq!(number(sample, None, "ready"), 5, "{out}");
    assert_eq!(number(sample, None, "consumers"), 0, "{out}");
    // A check that cannot reach the API says so and exits 2, not 0.
    let args = ["monitor", "--once", "--mgmt-url", "http://127.0.0.1:1"];
    let out = run_example_for_status(&broker, "8_consumer_lag_monitor.py", &args).await;
    assert!(
        !out.success() && out.stdout.starts_with("ERROR "),
        "{}",
        out.report("monitor --once")
    );
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    conn.close(0, "".into()).await.unwrap();
    stop(broker).await;
}

/// Leveret stores the analytics service's offset (RabbitMQ has no
/// server-side tracking over AMQP 0-9-1), so this one runs on Leveret only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_stream_serves_each_service_at_its_own_offset() {
    if common::against_other_broker() {
        return;
    }
    let broker = common::TestBroker::start().await;
    let out = run_example(&broker, "9_order_events_stream.py", &[]).await;
    assert_eq!(
        value(&out, Some("run=1"), "first_offset"),
        Some("10"),
        "{out}"
    );
    assert_eq!(number(&out, Some("run=2"), "first_offset"), 15, "{out}");
    assert_eq!(number(&out, Some("run=2"), "events"), 5, "{out}");
    assert_eq!(number(&out, Some("inventory"), "events"), 20, "{out}");
    assert_eq!(
        value(&out, None, "analytics_missed_nothing"),
        Some("True"),
        "{out}"
    );
    stop(broker).await;
}

/// A consumer group over a super stream (stream protocol, rstream): the
/// partitions spread over two members, a killed member's move to the
/// other, and every order's events are read once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_events_super_stream_survives_a_member_dying() {
    let broker = common::TestBroker::start().await;
    let Some(addr) = broker.stream_addr else {
        return;
    };
    let out = run_example(
        &broker,
        "10_order_events_super_stream.py",
        &["--stream", &addr.to_string()],
    )
    .await;
    assert_eq!(number(&out, Some("member=a"), "partitions"), 2, "{out}");
    assert_eq!(number(&out, Some("member=b"), "partitions"), 1, "{out}");
    assert_eq!(number(&out, Some("after_kill"), "partitions"), 3, "{out}");
    assert_eq!(number(&out, None, "events"), 60, "{out}");
    assert_eq!(value(&out, None, "in_order"), Some("True"), "{out}");
    stop(broker).await;
}
