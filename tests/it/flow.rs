//! Flow control: a publisher is paused while a queue it feeds grows although
//! the queue's consumers keep up, and never because consumers are busy,
//! stuck or gone; then the queue absorbs the burst, as RabbitMQ's does.
//!
//! The flow window is shrunk to 64 KiB and messages are 64 KiB, so a queue
//! that grows by more than a couple of messages shows flow control off,
//! while the socket buffers between publisher and broker (megabytes) would
//! let hundreds through without it.

use crate::common;

use common::amqp::declare_queue;
use common::http::Api;
use common::{against_other_broker, unique, TestBroker};
use futures_lite::StreamExt;
use lapin::{options::*, types::FieldTable, BasicProperties, Channel, Connection};
use leveret::Config;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, timeout, Instant};

const BODY: usize = 64 * 1024;
const WAIT: Duration = Duration::from_secs(30);

/// A broker whose flow window is one message, and which counts a consumer
/// as busy only above `busy_us` per message.
async fn broker(busy_us: u64) -> TestBroker {
    let mut config = Config::default();
    config.limits.queue_flow_window = BODY as u64;
    config.limits.flow_busy_consumer_us = busy_us;
    TestBroker::start_with(config).await
}

async fn declare(ch: &Channel, name: &str) {
    declare_queue(
        ch,
        name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Consumes from `queue` with `prefetch`, acknowledging each delivery after
/// `work`, the first `ack_first` of them only (None: all). Counts deliveries.
async fn start_consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    work: Duration,
    ack_first: Option<u32>,
) -> Arc<AtomicU32> {
    let ch = conn.create_channel().await.expect("channel.open");
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("basic.qos");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    let received = Arc::new(AtomicU32::new(0));
    let counted = received.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            sleep(work).await;
            if ack_first.is_none_or(|first| n <= first) {
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        }
        drop(ch);
    });
    received
}

/// Publishes `n` messages of `BODY` bytes to `queue` as fast as the broker
/// reads them; with `confirms`, waits for every confirm. Returns how long
/// that took.
async fn flood(conn: &Connection, queue: &str, n: usize, confirms: bool) -> Duration {
    let ch = conn.create_channel().await.expect("channel.open");
    if confirms {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
    }
    let body = vec![b'x'; BODY];
    let started = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .expect("basic.publish");
        pending.push(confirm);
    }
    if confirms {
        for confirm in pending {
            let c = confirm.await.expect("publisher confirm");
            assert!(c.is_ack(), "a publish was nacked: {c:?}");
        }
    }
    started.elapsed()
}

/// Publishes `n` messages (confirmed) and waits until the consumer counting
/// into `received` has them, so that its pace is known.
async fn warm_up(publisher: &Connection, queue: &str, received: &AtomicU32, n: usize) {
    flood(publisher, queue, n, true).await;
    received_at_least(received, n).await;
}

async fn received_at_least(received: &AtomicU32, n: usize) {
    timeout(WAIT, async {
        while received.load(Ordering::Relaxed) < n as u32 {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} messages delivered"));
}

/// Samples the ready count of `queue` until `stop`; returns the largest.
async fn watch_depth(conn: &Connection, queue: &str, stop: Arc<AtomicBool>) -> u32 {
    let mut deepest = 0;
    while !stop.load(Ordering::Relaxed) {
        deepest = deepest.max(common::amqp::count(conn, queue, WAIT).await);
        sleep(Duration::from_millis(5)).await;
    }
    deepest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_whose_consumer_keeps_up_pushes_back_on_its_publisher() {
    if against_other_broker() {
        return;
    }
    // Every consumer that acknowledges at all keeps up.
    let broker = broker(1_000_000).await;
    let (publisher, consumer, watcher) = (
        broker.connect().await,
        broker.connect().await,
        broker.connect().await,
    );
    let queue = unique("flow");
    declare(&publisher.create_channel().await.unwrap(), &queue).await;
    const N: usize = 300;
    // 2 ms a message: far slower than the flood, but keeping up.
    let received = start_consumer(&consumer, &queue, 10, Duration::from_millis(2), None).await;
    // A consumer's pace is unknown until it has settled something, and a
    // queue absorbs meanwhile.
    const WARM_UP: usize = 20;
    warm_up(&publisher, &queue, &received, WARM_UP).await;

    let stop = Arc::new(AtomicBool::new(false));
    let depth = tokio::spawn({
        let (queue, stop) = (queue.clone(), stop.clone());
        async move { watch_depth(&watcher, &queue, stop).await }
    });
    timeout(WAIT, flood(&publisher, &queue, N, false))
        .await
        .expect("the flood was paused for good");
    // The management API shows the publisher in RabbitMQ's "flow" state
    // (paused within the last second).
    let api = Api::of(&broker).expect("the broker's API");
    let connections = api.get("/api/connections").await.json;
    let states: Vec<&str> = connections
        .as_array()
        .expect("a list of connections")
        .iter()
        .filter_map(|c| c["state"].as_str())
        .collect();
    assert!(states.contains(&"flow"), "connection states: {states:?}");
    received_at_least(&received, WARM_UP + N).await;
    stop.store(true, Ordering::Relaxed);
    let deepest = depth.await.unwrap();
    // Without flow control the socket buffers let well over a hundred
    // through while the consumer takes 2 ms for each.
    assert!(
        deepest <= 16,
        "the queue grew to {deepest} ready messages although its consumer kept up"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_consumer_leaves_a_spike_in_the_queue() {
    if against_other_broker() {
        return;
    }
    // The default judgement of "busy": over 100 µs a message.
    let broker = broker(Config::default().limits.flow_busy_consumer_us).await;
    let (publisher, consumer) = (broker.connect().await, broker.connect().await);
    let queue = unique("spike");
    declare(&publisher.create_channel().await.unwrap(), &queue).await;
    const N: usize = 300;
    // An application doing 20 ms of work per message, one at a time.
    let received = start_consumer(&consumer, &queue, 1, Duration::from_millis(20), None).await;
    // Its pace known, so it is judged busy rather than unknown.
    const WARM_UP: usize = 5;
    warm_up(&publisher, &queue, &received, WARM_UP).await;

    timeout(WAIT, flood(&publisher, &queue, N, true))
        .await
        .expect("the spike's publishes were confirmed");
    // Paced to the consumer, the flood would have taken 6 s and left the
    // queue nearly empty; absorbed, it waits in the queue.
    let ready = common::amqp::count(&publisher, &queue, WAIT).await;
    let taken = received.load(Ordering::Relaxed);
    assert!(
        ready >= N as u32 / 3,
        "only {ready} of {N} messages waited in the queue ({taken} taken by the consumer): the publisher was held back"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_acknowledging_does_not_hold_publishers() {
    if against_other_broker() {
        return;
    }
    let broker = broker(1_000_000).await;
    let (publisher, consumer) = (broker.connect().await, broker.connect().await);
    let queue = unique("stuck");
    declare(&publisher.create_channel().await.unwrap(), &queue).await;
    const N: usize = 200;
    // Quick for 20 messages, then it holds its 10 deliveries for ever.
    let received = start_consumer(&consumer, &queue, 10, Duration::from_millis(1), Some(20)).await;

    // Judged stuck after 250 ms without an acknowledgement; 10 s leaves
    // room for a slow machine, not for waiting on the consumer's pace to
    // decay (about 20 s here).
    timeout(Duration::from_secs(10), flood(&publisher, &queue, N, true))
        .await
        .expect("the publisher was held by a consumer that acknowledges nothing");
    let ready = common::amqp::count(&publisher, &queue, WAIT).await;
    let taken = received.load(Ordering::Relaxed);
    assert_eq!(
        ready + taken,
        N as u32,
        "every message is either delivered or waiting"
    );
    assert!(
        taken <= 30,
        "the consumer took {taken} with prefetch 10 after 20 acks"
    );
    broker.stop().await;
}
