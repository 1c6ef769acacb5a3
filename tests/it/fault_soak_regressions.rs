//! Findings of `scripts/fault-soak` (SIGKILL at random moments under load),
//! each reduced to a deterministic kill -9 of the real `leveret` binary.

use crate::common;

use common::amqp::{count, persistent, timed_confirm_channel, timed_for, within_for};
use common::process::{BrokerProcess, TempDir};
use lapin::{
    options::*,
    types::{AMQPValue, FieldTable},
    Channel,
};
use std::time::{Duration, Instant};

/// Deadline for any single wait on the broker (RPC, confirm, delivery).
const WAIT: Duration = Duration::from_secs(5);
/// Deadline for a whole test body.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn publish_confirmed(ch: &Channel, queue: &str, body: &str) {
    let confirm = timed_for(
        WAIT,
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            persistent(),
        ),
    )
    .await
    .expect("publish");
    let confirmation = timed_for(WAIT, "publisher confirm", confirm)
        .await
        .expect("confirm");
    assert!(confirmation.is_ack(), "{body} was not acked");
}

/// basic.get with manual ack; the body, if a message was ready.
async fn get(ch: &Channel, queue: &str) -> Option<(String, u64)> {
    timed_for(
        WAIT,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: false }),
    )
    .await
    .expect("basic.get")
    .map(|m| {
        (
            String::from_utf8_lossy(&m.delivery.data).into_owned(),
            m.delivery.delivery_tag,
        )
    })
}

/// A durable priority queue reads its recovered backlog back from disk once
/// its in-memory messages run out. It read every entry of its index, also
/// those published after the restart, which it held already: a message
/// delivered and not yet acknowledged was delivered a second time (the soak
/// saw the same consumer get one message under two delivery tags).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_reading_back_its_recovered_backlog_does_not_deliver_a_message_twice() {
    within_for(TEST_TIMEOUT, async {
        let data = TempDir::new("soak-priority-reload");
        let mut broker = BrokerProcess::start(data.path());
        let q = "prio";
        {
            let conn = broker.connect().await;
            let ch = timed_confirm_channel(&conn, WAIT).await;
            let mut args = FieldTable::default();
            args.insert("x-max-priority".into(), AMQPValue::LongInt(5));
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            timed_for(
                WAIT,
                "queue.declare",
                ch.queue_declare(q.into(), durable, args),
            )
            .await
            .expect("declare");
            publish_confirmed(&ch, q, "recovered").await;
        }
        broker.kill9();
        drop(broker);
        let broker = BrokerProcess::start(data.path());
        let conn = broker.connect().await;
        let ch = timed_confirm_channel(&conn, WAIT).await;
        publish_confirmed(&ch, q, "new").await;

        // "new" is in memory and comes first; it stays unacknowledged.
        let (first, first_tag) = get(&ch, q).await.expect("a message");
        assert_eq!(first, "new");
        // The queue now reads "recovered" back from disk: take everything it
        // offers until it has been quiet for a while.
        let mut rest = Vec::new();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(500) {
            match get(&ch, q).await {
                Some((body, _)) => {
                    rest.push(body);
                    quiet_since = Instant::now();
                }
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert_eq!(
            rest,
            ["recovered"],
            "after \"new\" (unacknowledged), only the recovered message"
        );
        assert_eq!(count(&conn, q, WAIT).await, 0, "nothing left ready");
        timed_for(
            WAIT,
            "basic.ack",
            ch.basic_ack(first_tag, BasicAckOptions { multiple: true }),
        )
        .await
        .expect("ack");
    })
    .await
}
