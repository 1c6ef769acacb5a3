//! A quick side-by-side throughput check (the full load tool is `leveret perf`,
//! issue 6): one publisher, one auto-ack consumer, N messages of SIZE bytes.
//!
//! `cargo run --release --example throughput -- AMQP_URI [N] [SIZE]`

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let mut args = std::env::args().skip(1);
    let uri = args
        .next()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    let queue = format!("throughput-{}", std::process::id());

    let consumer_conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let cch = consumer_conn.create_channel().await?;
    let opts = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    cch.queue_declare(queue.as_str().into(), opts, FieldTable::default())
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut deliveries = cch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;

    let publisher_conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let pch = publisher_conn.create_channel().await?;
    let body = vec![b'x'; size];
    let start = Instant::now();
    let publishing = tokio::spawn(async move {
        for _ in 0..n {
            pch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await?;
        }
        Ok::<_, lapin::Error>(publisher_conn)
    });
    let mut received = 0;
    while received < n {
        match deliveries.next().await {
            Some(d) => {
                d?;
                received += 1;
            }
            None => break,
        }
    }
    let elapsed = start.elapsed();
    publishing.await.expect("publisher task")?;
    println!(
        "{received} msgs of {size} B in {:.2}s: {:.0} msg/s",
        elapsed.as_secs_f64(),
        received as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
