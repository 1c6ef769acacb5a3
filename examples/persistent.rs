//! The persistent path, measured against any AMQP 0-9-1 broker: confirmed
//! persistent publishes to a durable queue, and draining a backlog with
//! manual acks. (The full load tool is `leveret perf`, issue 6.)
//!
//! ```text
//! cargo run --release --example persistent -- fill  URI QUEUE N SIZE   # publish N, 1000 confirms outstanding
//! cargo run --release --example persistent -- drain URI QUEUE          # consume until empty, prefetch 1000
//! cargo run --release --example persistent -- both  URI QUEUE N SIZE   # publish and consume at once
//! ```
//! Each prints messages per second; the broker's CPU and RSS are read from
//! /proc by the caller.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const OUTSTANDING: usize = 1000;

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("both");
    let uri = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = args.get(2).cloned().unwrap_or_else(|| "persistent".into());
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let size: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1024);

    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await?;
    match mode {
        "fill" => {
            let started = Instant::now();
            fill(&ch, &queue, n, size).await?;
            report("published+confirmed", n, started.elapsed());
        }
        "drain" => {
            let started = Instant::now();
            let got = drain(&conn, &queue, None).await?;
            report("consumed+acked", got, started.elapsed());
        }
        _ => {
            let started = Instant::now();
            let consumer = {
                let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
                let queue = queue.clone();
                tokio::spawn(async move { drain(&conn, &queue, Some(n)).await })
            };
            fill(&ch, &queue, n, size).await?;
            let got = consumer.await.expect("consumer task")?;
            report("published+consumed", got, started.elapsed());
        }
    }
    conn.close(200, "done".into()).await?;
    Ok(())
}

fn report(what: &str, n: usize, elapsed: Duration) {
    println!(
        "{what}: {n} in {:.2}s = {:.0} msg/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

async fn fill(ch: &Channel, queue: &str, n: usize, size: usize) -> Result<(), lapin::Error> {
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    let props = BasicProperties::default().with_delivery_mode(2);
    let mut pending = VecDeque::with_capacity(OUTSTANDING);
    for _ in 0..n {
        if pending.len() == OUTSTANDING {
            pending.pop_front().expect("non-empty").await?;
        }
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        pending.push_back(confirm);
    }
    for confirm in pending {
        confirm.await?;
    }
    Ok(())
}

/// Consumes with manual acks (one multiple-ack per 100) until `expect`
/// messages arrived, or until the queue stays empty for a second.
async fn drain(
    conn: &Connection,
    queue: &str,
    expect: Option<usize>,
) -> Result<usize, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(OUTSTANDING as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut got = 0usize;
    let mut unacked = None;
    loop {
        let wait = if expect.is_some() { 30 } else { 1 };
        let next = tokio::time::timeout(Duration::from_secs(wait), consumer.next()).await;
        let Ok(Some(delivery)) = next else { break };
        let delivery = delivery?;
        got += 1;
        unacked = Some(delivery.delivery_tag);
        if got.is_multiple_of(100) {
            ch.basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
            unacked = None;
        }
        if Some(got) == expect {
            break;
        }
    }
    if let Some(tag) = unacked {
        ch.basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    ch.close(200, "done".into()).await?;
    Ok(got)
}
