//! Publishers are blocked (connection.blocked, then no more reads) while the
//! queues hold more than the memory watermark, and resume once drained.

use crate::common;

use common::{unique, TestBroker};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;
use tokio::time::timeout;

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn publisher_is_blocked_above_the_memory_watermark_and_resumes_when_drained() {
    if std::env::var("LEVERET_TEST_URI").is_ok() {
        return; // needs a small watermark only our in-process broker can be given
    }
    let mut config = leveret::Config::default();
    config.limits.memory_high_watermark = 256 * 1024;
    let broker = TestBroker::start_with(config).await;
    let publisher = broker.connect().await;
    let ch = publisher.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = unique("flow");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // lapin itself holds back publishes once told it is blocked, so publish
    // from a task.
    let body = vec![0u8; 16 * 1024];
    let publishing = tokio::spawn({
        let (ch, queue, body) = (ch.clone(), queue.clone(), body.clone());
        async move {
            let mut confirms = Vec::new();
            for _ in 0..64 {
                let confirm = ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap();
                confirms.push(confirm);
            }
            for confirm in confirms {
                assert!(confirm.await.unwrap().is_ack());
            }
        }
    });
    wait_until("the publisher is blocked", || publisher.status().blocked()).await;

    // Another connection still works and sees the backlog stop growing.
    let admin = broker.connect().await;
    let admin_ch = admin.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let held = admin_ch
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    assert!(
        held < 64,
        "reading stopped before every message arrived, got {held}"
    );
    assert!(held as usize * body.len() >= 256 * 1024, "held {held}");

    // A consumer drains the queue: the publisher gets going again and every
    // message is confirmed.
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let _consumer = admin_ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .unwrap();
    timeout(Duration::from_secs(10), publishing)
        .await
        .expect("every publish confirmed once unblocked")
        .unwrap();
    wait_until("the publisher is unblocked", || {
        !publisher.status().blocked()
    })
    .await;
}
