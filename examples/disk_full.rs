//! The full-disk run (RELIABILITY.md, "Full disk"): a publisher with
//! confirms at full speed until the broker blocks it or the time is up,
//! remembering which message ids were acked and nacked; then a drain that
//! checks what the queue gives back against that.
//!
//! ```text
//! cargo run --release --example disk_full -- publish URI QUEUE SECONDS SIZE IDS
//! cargo run --release --example disk_full -- drain   URI QUEUE IDS
//! ```
//! `publish` writes one line per message to IDS (`ID ack|nack|unconfirmed`);
//! `drain` consumes with manual acks until the queue stays empty for 5 s
//! and reports what the queue said it held, what came, nacked messages
//! that came anyway, and acked ones that did not.

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, PublisherConfirm};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

const OUTSTANDING: usize = 1000;
/// A publish held back this long means the broker blocked the publisher.
const BLOCKED_FOR: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let (mode, uri, queue) = (arg(0), arg(1), arg(2));
    let conn = Connection::connect(&uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await?;
    match mode.as_str() {
        "publish" => {
            let seconds: u64 = arg(3).parse().unwrap_or(60);
            let size: usize = arg(4).parse().unwrap_or(1024);
            publish(&conn, &queue, seconds, size, &arg(5)).await
        }
        "drain" => drain(&conn, &queue, &arg(3)).await,
        _ => {
            eprintln!("usage: disk_full publish URI QUEUE SECONDS SIZE IDS | drain URI QUEUE IDS");
            std::process::exit(2);
        }
    }
}

async fn publish(
    conn: &Connection,
    queue: &str,
    seconds: u64,
    size: usize,
    ids: &str,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let props = BasicProperties::default().with_delivery_mode(2);
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut pending: VecDeque<(u64, PublisherConfirm)> = VecDeque::new();
    let mut outcome: BTreeMap<u64, &str> = BTreeMap::new();
    let mut blocked_at = None;
    let mut id = 0u64;
    'publishing: while Instant::now() < end {
        let mut body = id.to_be_bytes().to_vec();
        body.resize(size.max(8), b'.');
        let publish = ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            props.clone(),
        );
        match tokio::time::timeout(BLOCKED_FOR, publish).await {
            Ok(confirm) => pending.push_back((id, confirm?)),
            Err(_) => break,
        }
        id += 1;
        while pending.len() >= OUTSTANDING {
            let (id, confirm) = pending.pop_front().expect("pending");
            match tokio::time::timeout(BLOCKED_FOR, confirm).await {
                Ok(Ok(c)) => {
                    outcome.insert(id, if c.is_ack() { "ack" } else { "nack" });
                }
                _ => {
                    outcome.insert(id, "unconfirmed");
                    break 'publishing;
                }
            }
        }
        if conn.status().blocked() {
            // Held back by lapin from now on: the run ends here.
            blocked_at = Some(started.elapsed());
            break;
        }
    }
    let deadline = Instant::now() + BLOCKED_FOR;
    for (id, confirm) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        let what = match tokio::time::timeout(left, confirm).await {
            Ok(Ok(c)) if c.is_ack() => "ack",
            Ok(Ok(_)) => "nack",
            _ => "unconfirmed",
        };
        outcome.insert(id, what);
    }
    if conn.status().blocked() && blocked_at.is_none() {
        blocked_at = Some(started.elapsed());
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(ids).expect("ids file"));
    for (id, what) in &outcome {
        writeln!(f, "{id} {what}").expect("write ids");
    }
    f.flush().expect("write ids");
    let count = |w: &str| outcome.values().filter(|v| **v == w).count();
    println!(
        "published {} in {:.1} s: {} acked, {} nacked, {} unconfirmed; blocked: {}",
        outcome.len(),
        started.elapsed().as_secs_f64(),
        count("ack"),
        count("nack"),
        count("unconfirmed"),
        blocked_at.map_or("no".into(), |t| format!("after {:.1} s", t.as_secs_f64())),
    );
    Ok(())
}

async fn drain(conn: &Connection, queue: &str, ids: &str) -> Result<(), lapin::Error> {
    let text = std::fs::read_to_string(ids).expect("ids file from publish");
    let mut acked = BTreeSet::new();
    let mut nacked = BTreeSet::new();
    for line in text.lines() {
        let mut parts = line.split(' ');
        let id: u64 = parts.next().and_then(|s| s.parse().ok()).expect("id");
        match parts.next() {
            Some("ack") => acked.insert(id),
            Some("nack") => nacked.insert(id),
            _ => false,
        };
    }
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let reported = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?
        .message_count();
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "drain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let mut delivered = BTreeSet::new();
    let mut duplicates = 0;
    while let Ok(Some(d)) = tokio::time::timeout(BLOCKED_FOR, consumer.next()).await {
        let d = d?;
        let id = u64::from_be_bytes(d.data[..8].try_into().expect("8-byte id"));
        if !delivered.insert(id) {
            duplicates += 1;
        }
        d.ack(BasicAckOptions::default()).await?;
    }
    let nacked_delivered = delivered.intersection(&nacked).count();
    let acked_missing = acked.difference(&delivered).count();
    println!(
        "queue reported {reported}; delivered {} in {:.1} s ({duplicates} twice); nacked but delivered: {nacked_delivered}; acked but not delivered: {acked_missing}",
        delivered.len(),
        started.elapsed().as_secs_f64() - BLOCKED_FOR.as_secs_f64(),
    );
    Ok(())
}
