//! `--stream-uri`: the same runs over RabbitMQ's stream protocol (port
//! 5552). Producers publish into the first queue name as a stream (created
//! if missing) in batches of up to 100 messages, with at most `--confirm`
//! (1 000 when 0) unconfirmed; consumers read it from `first`, giving one
//! credit back per chunk. Counts and CPU are reported as for AMQP.
//!
//! A minimal client of the protocol's version 1 commands (as RabbitMQ 3.10
//! has them: the Rust and Java clients' first request, exchange command
//! versions, is a 3.11 command that 3.10 answers by closing), so the same
//! client measures both brokers.

use super::{report, sys, Plan, Snapshot};
use serde_json::Value;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

const DECLARE_PUBLISHER: u16 = 1;
const PUBLISH: u16 = 2;
const PUBLISH_CONFIRM: u16 = 3;
const PUBLISH_ERROR: u16 = 4;
const SUBSCRIBE: u16 = 7;
const DELIVER: u16 = 8;
const CREDIT: u16 = 9;
const CREATE: u16 = 13;
const DELETE: u16 = 14;
const PEER_PROPERTIES: u16 = 17;
const SASL_HANDSHAKE: u16 = 18;
const SASL_AUTHENTICATE: u16 = 19;
const TUNE: u16 = 20;
const OPEN: u16 = 21;
const CLOSE: u16 = 22;
const HEARTBEAT: u16 = 23;
const RESPONSE: u16 = 0x8000;
const OK: u16 = 1;
const STREAM_ALREADY_EXISTS: u16 = 5;
/// The largest frame this client accepts.
const FRAME_MAX: u32 = 1 << 20;
/// Messages per Publish frame.
const BATCH: usize = 100;
/// Outstanding confirms per producer when `--confirm` is 0.
const DEFAULT_OUTSTANDING: usize = 1000;
/// Chunks a consumer asks for ahead.
const CREDIT_AHEAD: u16 = 10;

/// Where `rabbitmq-stream://user:password@host:port/vhost` points.
#[derive(Clone)]
struct StreamTarget {
    addr: String,
    user: String,
    password: String,
    vhost: String,
}

fn parse(uri: &str) -> io::Result<StreamTarget> {
    let bad = || {
        io::Error::other(format!(
            "--stream-uri: not rabbitmq-stream://user:password@host:port/vhost: {uri}"
        ))
    };
    let rest = uri.strip_prefix("rabbitmq-stream://").ok_or_else(bad)?;
    let (auth, rest) = rest.split_once('@').ok_or_else(bad)?;
    let (user, password) = auth.split_once(':').ok_or_else(bad)?;
    let (addr, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    let vhost = match vhost {
        "" | "%2f" | "%2F" => "/".to_string(),
        v => v.replace("%2f", "/").replace("%2F", "/"),
    };
    Ok(StreamTarget {
        addr: addr.to_string(),
        user: user.to_string(),
        password: password.to_string(),
        vhost,
    })
}

/// A frame being built: `size ‖ key ‖ version ‖ fields`.
struct Frame(Vec<u8>);

impl Frame {
    fn new(key: u16) -> Frame {
        let mut v = vec![0; 4];
        v.extend_from_slice(&key.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        Frame(v)
    }
    fn u8(mut self, n: u8) -> Frame {
        self.0.push(n);
        self
    }
    fn u16(mut self, n: u16) -> Frame {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn u32(mut self, n: u32) -> Frame {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn u64(mut self, n: u64) -> Frame {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    fn str(mut self, s: &str) -> Frame {
        self.0.extend_from_slice(&(s.len() as u16).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Frame {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let size = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&size.to_be_bytes());
        self.0
    }
}

/// A frame read back: its key and the fields after key and version.
struct Read {
    key: u16,
    body: Vec<u8>,
}

impl Read {
    fn u16_at(&self, at: usize) -> u16 {
        self.body
            .get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A response's code (after its correlation id).
    fn code(&self) -> u16 {
        self.u16_at(4)
    }
}

type Reader = BufReader<ReadHalf<TcpStream>>;
type Writer = WriteHalf<TcpStream>;

async fn read_frame(r: &mut Reader) -> io::Result<Read> {
    let size = r.read_u32().await?;
    if !(4..=FRAME_MAX).contains(&size) {
        return Err(io::Error::other(format!("stream frame of {size} bytes")));
    }
    let key = r.read_u16().await?;
    let _version = r.read_u16().await?;
    let mut body = vec![0; size as usize - 4];
    r.read_exact(&mut body).await?;
    Ok(Read { key, body })
}

/// Reads frames until the response to `key`, answering what the server
/// asks on the way.
async fn response(r: &mut Reader, w: &mut Writer, key: u16) -> io::Result<Read> {
    loop {
        let f = read_frame(r).await?;
        match f.key {
            k if k == key | RESPONSE => return Ok(f),
            TUNE => {
                // Our frame size, and no heartbeats: runs are short.
                let tune = Frame::new(TUNE).u32(FRAME_MAX).u32(0).done();
                w.write_all(&tune).await?;
            }
            CLOSE => return Err(io::Error::other("the broker closed the stream connection")),
            _ => {}
        }
    }
}

async fn expect_ok(r: &mut Reader, w: &mut Writer, key: u16, what: &str) -> io::Result<Read> {
    let f = response(r, w, key).await?;
    if f.code() != OK {
        return Err(io::Error::other(format!(
            "{what}: response code {}",
            f.code()
        )));
    }
    Ok(f)
}

/// An open, authenticated connection in the target's vhost.
async fn connect(t: &StreamTarget) -> io::Result<(Reader, Writer)> {
    let socket = TcpStream::connect(&t.addr).await?;
    socket.set_nodelay(true)?;
    let (r, mut w) = tokio::io::split(socket);
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let peer = Frame::new(PEER_PROPERTIES)
        .u32(1)
        .u32(1)
        .str("product")
        .str("leveret perf")
        .done();
    w.write_all(&peer).await?;
    expect_ok(&mut r, &mut w, PEER_PROPERTIES, "peer properties").await?;
    w.write_all(&Frame::new(SASL_HANDSHAKE).u32(2).done())
        .await?;
    expect_ok(&mut r, &mut w, SASL_HANDSHAKE, "sasl handshake").await?;
    let plain = format!("\0{}\0{}", t.user, t.password);
    let auth = Frame::new(SASL_AUTHENTICATE)
        .u32(3)
        .str("PLAIN")
        .bytes(plain.as_bytes())
        .done();
    w.write_all(&auth).await?;
    expect_ok(&mut r, &mut w, SASL_AUTHENTICATE, "authentication").await?;
    // The server tunes next; our answer comes before open.
    loop {
        let f = read_frame(&mut r).await?;
        if f.key == TUNE {
            let tune = Frame::new(TUNE).u32(FRAME_MAX).u32(0).done();
            w.write_all(&tune).await?;
            break;
        }
    }
    w.write_all(&Frame::new(OPEN).u32(4).str(&t.vhost).done())
        .await?;
    expect_ok(&mut r, &mut w, OPEN, "open").await?;
    Ok((r, w))
}

/// The AMQP 1.0 message a stream client sends for `body`: one data section.
fn message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0x00, 0x53, 0x75, 0xb0];
    m.extend_from_slice(&(body.len() as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub(super) async fn run(plan: Arc<Plan>, uri: &str) -> io::Result<Value> {
    let target = parse(uri)?;
    let args = &plan.args;
    let stream = plan.queues[0].clone();
    {
        let (mut r, mut w) = connect(&target).await?;
        w.write_all(&Frame::new(CREATE).u32(5).str(&stream).u32(0).done())
            .await?;
        let f = response(&mut r, &mut w, CREATE).await?;
        if f.code() != OK && f.code() != STREAM_ALREADY_EXISTS {
            return Err(io::Error::other(format!(
                "create stream: response code {}",
                f.code()
            )));
        }
    }
    let broker = sys::BrokerWatch::start(&args.broker_pid);
    let counted = args.pmessages.is_some() || args.cmessages.is_some();
    let whole = Snapshot::take(&plan, broker.as_ref());
    let mut consumers = Vec::new();
    for _ in 0..args.consumers {
        let (plan, target, stream) = (plan.clone(), target.clone(), stream.clone());
        consumers.push(tokio::spawn(async move {
            consume(&plan, &target, &stream).await
        }));
    }
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let (plan, target, stream) = (plan.clone(), target.clone(), stream.clone());
        producers.push(tokio::spawn(async move {
            produce(plan, &target, &stream, p).await
        }));
    }
    if !counted {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    }
    let begin = if counted {
        whole
    } else {
        Snapshot::take(&plan, broker.as_ref())
    };
    if counted {
        let cap = args.duration.map_or(Duration::MAX, Duration::from_secs_f64);
        let all = async {
            for p in producers.iter_mut() {
                p.await.map_err(io::Error::other)??;
            }
            plan.shared.draining.store(true, Ordering::Release);
            for c in consumers.iter_mut() {
                c.await.map_err(io::Error::other)??;
            }
            Ok::<_, io::Error>(())
        };
        if let Ok(done) = tokio::time::timeout(cap, all).await {
            done?;
        }
    } else {
        tokio::time::sleep(Duration::from_secs_f64(args.duration.unwrap_or(15.0))).await;
    }
    let end = Snapshot::take(&plan, broker.as_ref());
    plan.shared.stop.store(true, Ordering::Release);
    plan.shared.draining.store(true, Ordering::Release);
    for t in producers.into_iter().chain(consumers) {
        if !t.is_finished() {
            t.await.map_err(io::Error::other)??;
        }
    }
    if !args.keep {
        let (mut r, mut w) = connect(&target).await?;
        w.write_all(&Frame::new(DELETE).u32(6).str(&stream).done())
            .await?;
        response(&mut r, &mut w, DELETE).await?;
    }
    let mut report = report(&plan, &begin, &end, &[], Vec::new(), broker.as_ref());
    report["protocol"] = "stream".into();
    super::print_report(&plan, &report);
    Ok(report)
}

async fn produce(
    plan: Arc<Plan>,
    target: &StreamTarget,
    stream: &str,
    id: usize,
) -> io::Result<()> {
    let args = &plan.args;
    let (mut r, mut w) = connect(target).await?;
    let declare = Frame::new(DECLARE_PUBLISHER)
        .u32(10)
        .u8(0)
        .str("")
        .str(stream)
        .done();
    w.write_all(&declare).await?;
    expect_ok(&mut r, &mut w, DECLARE_PUBLISHER, "declare publisher").await?;
    let outstanding = match args.confirm {
        0 => DEFAULT_OUTSTANDING,
        n => n as usize,
    };
    let permits = Arc::new(Semaphore::new(outstanding));
    // Confirms come back on the read half while the write half publishes.
    let confirms = {
        let (plan, permits) = (plan.clone(), permits.clone());
        tokio::spawn(async move {
            loop {
                let f = read_frame(&mut r).await?;
                let count = match f.key {
                    PUBLISH_CONFIRM | PUBLISH_ERROR => f
                        .body
                        .get(1..5)
                        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                    CLOSE => return Ok::<_, io::Error>(()),
                    _ => continue,
                };
                let s = &plan.shared;
                let counter = if f.key == PUBLISH_CONFIRM {
                    &s.confirmed
                } else {
                    &s.nacked
                };
                counter.fetch_add(u64::from(count), Ordering::Relaxed);
                permits.add_permits(count as usize);
            }
        })
    };
    let entry = message(&vec![b'x'; args.size]);
    let limit = args.pmessages.unwrap_or(u64::MAX);
    let (mut sent, mut publishing_id) = (0u64, (id as u64) << 40);
    let shared = &plan.shared;
    while sent < limit && !shared.stop.load(Ordering::Acquire) {
        let n = (BATCH as u64).min(limit - sent) as u32;
        permits
            .acquire_many(n)
            .await
            .map_err(io::Error::other)?
            .forget();
        let mut batch = Frame::new(PUBLISH).u8(0).u32(n);
        for _ in 0..n {
            publishing_id += 1;
            batch = batch.u64(publishing_id).bytes(&entry);
        }
        w.write_all(&batch.done()).await?;
        shared.sent.fetch_add(u64::from(n), Ordering::Relaxed);
        sent += u64::from(n);
    }
    // Every confirm in before the connection closes.
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        permits.acquire_many(outstanding as u32),
    )
    .await;
    confirms.abort();
    let _ = w.shutdown().await;
    Ok(())
}

async fn consume(plan: &Plan, target: &StreamTarget, stream: &str) -> io::Result<()> {
    let (mut r, mut w) = connect(target).await?;
    // Offset type 1: first.
    let subscribe = Frame::new(SUBSCRIBE)
        .u32(20)
        .u8(0)
        .str(stream)
        .u16(1)
        .u16(CREDIT_AHEAD)
        .u32(0)
        .done();
    w.write_all(&subscribe).await?;
    expect_ok(&mut r, &mut w, SUBSCRIBE, "subscribe").await?;
    let limit = plan.args.cmessages.unwrap_or(u64::MAX);
    let shared = &plan.shared;
    let credit = Frame::new(CREDIT).u8(0).u16(1).done();
    let mut received = 0u64;
    while received < limit {
        let wait = if shared.draining.load(Ordering::Acquire) {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(200)
        };
        let f = match tokio::time::timeout(wait, read_frame(&mut r)).await {
            Ok(f) => f?,
            Err(_) if shared.draining.load(Ordering::Acquire) => break,
            Err(_) => continue,
        };
        match f.key {
            // subscription id, then the chunk: magic and version, chunk
            // type, entries (u16), records (u32), ...
            DELIVER => {
                let records = f
                    .body
                    .get(5..9)
                    .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                received += u64::from(records);
                shared
                    .received
                    .fetch_add(u64::from(records), Ordering::Relaxed);
                w.write_all(&credit).await?;
            }
            HEARTBEAT => {}
            CLOSE => break,
            _ => {}
        }
    }
    let _ = w.shutdown().await;
    Ok(())
}
