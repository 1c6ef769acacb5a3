//! Many publishers and consumers on shared queues at once: every confirmed
//! message is delivered exactly once to one consumer, nothing deadlocks.

use crate::common;

use common::{unique, TestBroker};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::timeout;

const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 2_000;
const CONSUMERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_and_consumers_lose_and_duplicate_nothing() {
    let broker = TestBroker::start().await;
    let setup = broker.connect().await;
    let ch = setup.create_channel().await.unwrap();
    let exchange = unique("fan");
    ch.exchange_declare(
        exchange.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Two queues behind a fanout: each message must reach both, once.
    let queues = [unique("work-a"), unique("work-b")];
    for q in &queues {
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            q.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }

    let mut consumers = Vec::new();
    for i in 0..CONSUMERS {
        let conn = broker.connect().await;
        let queue = queues[i % 2].clone();
        consumers.push(tokio::spawn(async move {
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
            let mut deliveries = ch
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let mut seen = Vec::new();
            while let Ok(Some(d)) = timeout(Duration::from_secs(2), deliveries.next()).await {
                let d = d.unwrap();
                seen.push(String::from_utf8(d.data.clone()).unwrap());
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
            (queue, seen, conn)
        }));
    }

    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let conn = broker.connect().await;
        let exchange = exchange.clone();
        publishers.push(tokio::spawn(async move {
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut confirms = Vec::with_capacity(PER_PUBLISHER);
            for n in 0..PER_PUBLISHER {
                let body = format!("{p}-{n}");
                confirms.push(
                    ch.basic_publish(
                        exchange.as_str().into(),
                        "".into(),
                        BasicPublishOptions::default(),
                        body.as_bytes(),
                        BasicProperties::default(),
                    )
                    .await
                    .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
            conn
        }));
    }
    for p in publishers {
        timeout(Duration::from_secs(60), p)
            .await
            .expect("publishers finish")
            .unwrap();
    }
    let mut per_queue: [HashSet<String>; 2] = Default::default();
    let mut total = 0;
    for c in consumers {
        let (queue, seen, _conn) = timeout(Duration::from_secs(60), c)
            .await
            .expect("consumers finish")
            .unwrap();
        let idx = queues.iter().position(|q| *q == queue).unwrap();
        total += seen.len();
        for body in seen {
            assert!(
                per_queue[idx].insert(body.clone()),
                "{body} delivered twice from {queue}"
            );
        }
    }
    assert_eq!(total, 2 * PUBLISHERS * PER_PUBLISHER);
    assert_eq!(per_queue[0].len(), PUBLISHERS * PER_PUBLISHER);
    assert_eq!(per_queue[1].len(), PUBLISHERS * PER_PUBLISHER);
}
