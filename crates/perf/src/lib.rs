//! `leveret perf`: a PerfTest-style load generator for any AMQP 0-9-1
//! broker. Producers stamp each body with its send time and a sequence
//! number; consumers measure end-to-end latency and check that nothing is
//! lost, duplicated or reordered. Rates are taken over a steady window
//! after a warm-up; with `--broker-pid` the broker's CPU time and peak RSS
//! over that window are reported too.

#![warn(unreachable_pub)]

mod check;
mod client;
mod stream;
mod sys;
mod tls;

use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use check::{percentiles, read_stamp, stamp, Bits, Seen, STAMP};
use client::{arguments, FrameIn, Target};
use leveret_protocol::encode;
use leveret_protocol::frame::FrameType;
use leveret_protocol::method::method_ids;
use serde_json::{json, Value};
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct PerfArgs {
    /// Broker to load: amqp://… or amqps://…[?cacertfile=F&certfile=F&keyfile=F&verify=verify_none]
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (at least 16: the stamp).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seconds measured, after the warm-up (default 15; with
    /// --pmessages/--cmessages/--churn the run ends when they are done,
    /// or after this many seconds). Ctrl-C ends the window early and
    /// still reports it.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Messages per second per producer (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Publisher confirms with this many outstanding per producer (0: none).
    #[arg(long, default_value_t = 0)]
    confirm: u64,
    /// delivery_mode 2, durable queues (and exchange).
    #[arg(long)]
    persistent: bool,
    /// Consume without acknowledgements.
    #[arg(long)]
    autoack: bool,
    /// Per-consumer prefetch with manual acks.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Acknowledge every N deliveries with multiple=true.
    #[arg(long, default_value_t = 1)]
    multi_ack_every: u64,
    /// Publish to this exchange (declared, with every queue bound); default: the default exchange.
    #[arg(long, default_value = "")]
    exchange: String,
    #[arg(long = "type", default_value = "direct")]
    kind: String,
    /// Routing key (default: the queue's name).
    #[arg(long)]
    routing_key: Option<String>,
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Queue argument k=v (numbers become integers), repeatable.
    #[arg(long = "queue-args")]
    queue_args: Vec<String>,
    /// basic.consume argument k=v (numbers become integers), repeatable:
    /// `x-stream-offset=first` reads a stream from its start.
    #[arg(long = "consume-args")]
    consume_args: Vec<String>,
    /// Run over RabbitMQ's stream protocol instead of AMQP:
    /// rabbitmq-stream://user:password@host:port/vhost (producers publish
    /// into the first queue name as a stream, consumers read it from first).
    #[arg(long)]
    stream_uri: Option<String>,
    /// Queue names are PREFIX-1, PREFIX-2, ... (default perf-<pid>).
    #[arg(long)]
    queue_prefix: Option<String>,
    /// Each producer stops after this many messages.
    #[arg(long)]
    pmessages: Option<u64>,
    /// Each consumer stops after this many messages.
    #[arg(long)]
    cmessages: Option<u64>,
    /// Keep the queues at the end (to drain them in a later run).
    #[arg(long)]
    keep: bool,
    /// Each producer opens a connection, declares a queue, publishes one
    /// message and closes, this many times.
    #[arg(long)]
    churn: Option<u64>,
    /// Socket send buffer of each connection, in bytes (0: leave it to the
    /// system). Over loopback Linux grows an unthrottled producer's send
    /// buffer to its 4 MiB maximum (loopback segments are 64 KiB), and the
    /// messages waiting there, in the generator rather than the broker,
    /// then make up most of the end-to-end latency.
    #[arg(long, default_value_t = 256 * 1024)]
    sndbuf: u32,
    /// Also report this process's CPU time and peak RSS (the broker's);
    /// several (comma-separated or repeated: a cluster's nodes) are summed.
    #[arg(long, value_delimiter = ',')]
    broker_pid: Vec<u32>,
    /// Report these processes' CPU time and peak RSS apart from the
    /// broker's (a cluster's etcd), summed.
    #[arg(long, value_delimiter = ',')]
    watch_pid: Vec<u32>,
    /// One JSON object on stdout at the end.
    #[arg(long)]
    json: bool,
}

/// Counters every task adds to, and the flags that steer them.
#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    received: AtomicU64,
    /// Latencies are recorded while set.
    measuring: AtomicBool,
    /// Publish-to-confirm latencies (µs) of the steady window, from every
    /// producer's confirm reader.
    confirm_latencies_us: Mutex<Vec<u32>>,
    /// Producers stop when set.
    stop: AtomicBool,
    /// Producers are done: consumers stop once idle.
    draining: AtomicBool,
}

struct Plan {
    args: PerfArgs,
    target: Target,
    queues: Vec<String>,
    start: Instant,
    shared: Shared,
    /// Properties of every message: just delivery_mode when persistent.
    properties: Vec<u8>,
    /// The processes of --watch-pid.
    watched: Option<sys::BrokerWatch>,
}

impl Plan {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Where producer `p` publishes: (exchange, routing key).
    fn route(&self, p: usize) -> (String, String) {
        let queue = &self.queues[p % self.queues.len()];
        let key = self
            .args
            .routing_key
            .clone()
            .unwrap_or_else(|| queue.clone());
        (self.args.exchange.clone(), key)
    }

    /// Whether queue `q` receives producer `p`'s messages.
    fn reaches(&self, q: usize, p: usize) -> bool {
        !self.args.exchange.is_empty() || q == p % self.queues.len()
    }
}

pub fn run(args: PerfArgs) -> ExitCode {
    if args.size < STAMP {
        eprintln!("leveret perf: --size must be at least {STAMP} (the stamp)");
        return ExitCode::from(2);
    }
    let target = match Target::parse(&args.uri) {
        Ok(t) => Target {
            send_buffer: args.sndbuf,
            ..t
        },
        Err(e) => {
            eprintln!("leveret perf: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run_async(args, target)) {
        Ok(report) => {
            let failed = report["violations"]
                .as_object()
                .is_some_and(|v| v.values().any(|n| n.as_u64().unwrap_or(0) > 0));
            if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("leveret perf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn queue_arguments(list: &[String]) -> io::Result<FieldTable> {
    let mut t = FieldTable::default();
    for kv in list {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| io::Error::other(format!("arguments are k=v, not '{kv}'")))?;
        let value = match v.parse::<i64>() {
            Ok(n) => AMQPValue::LongLongInt(n),
            Err(_) => AMQPValue::LongString(LongString::from(v)),
        };
        t.insert(k.into(), value);
    }
    Ok(t)
}

async fn run_async(args: PerfArgs, target: Target) -> io::Result<Value> {
    let prefix = args
        .queue_prefix
        .clone()
        .unwrap_or_else(|| format!("perf-{}", std::process::id()));
    let queues: Vec<String> = (1..=args.queues.max(1))
        .map(|i| format!("{prefix}-{i}"))
        .collect();
    let properties = if args.persistent {
        vec![0x10, 0x00, 2] // flags: delivery_mode; delivery_mode 2
    } else {
        vec![0, 0]
    };
    let plan = Arc::new(Plan {
        args: args.clone(),
        target,
        queues,
        start: Instant::now(),
        shared: Shared::default(),
        properties,
        watched: sys::BrokerWatch::start(&args.watch_pid),
    });
    if let Some(n) = args.churn {
        return churn(plan, n).await;
    }
    if let Some(uri) = &args.stream_uri {
        return stream::run(plan, uri).await;
    }
    setup(&plan).await?;

    let broker = sys::BrokerWatch::start(&args.broker_pid);
    let counted = args.pmessages.is_some() || args.cmessages.is_some();
    // A counted run is measured whole, from before its first message.
    let whole = Snapshot::take(&plan, broker.as_ref());
    let mut consumers = Vec::new();
    let ready = Arc::new(tokio::sync::Barrier::new(args.consumers + 1));
    for c in 0..args.consumers {
        let (plan, ready) = (plan.clone(), ready.clone());
        consumers.push(Some(tokio::spawn(
            async move { consumer(c, plan, ready).await },
        )));
    }
    ready.wait().await;
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let plan = plan.clone();
        producers.push(Some(tokio::spawn(async move { producer(p, plan).await })));
    }
    let progress = tokio::spawn(progress(plan.clone()));

    // The steady window.
    if !counted {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    }
    let begin = if counted {
        whole
    } else {
        Snapshot::take(&plan, broker.as_ref())
    };
    plan.shared.measuring.store(true, Ordering::Release);
    let mut interrupted = false;
    let mut sent_by = vec![0u64; args.producers];
    let mut results = Vec::new();
    if counted {
        let all_done = join(
            &plan,
            &mut producers,
            &mut consumers,
            &mut sent_by,
            &mut results,
        );
        let cap = args.duration.map_or(Duration::MAX, Duration::from_secs_f64);
        tokio::select! {
            done = tokio::time::timeout(cap, all_done) => {
                if let Ok(done) = done {
                    done?;
                }
            }
            _ = tokio::signal::ctrl_c() => interrupted = true,
        }
    } else {
        let window = Duration::from_secs_f64(args.duration.unwrap_or(15.0));
        tokio::select! {
            _ = tokio::time::sleep(window) => {}
            _ = tokio::signal::ctrl_c() => interrupted = true,
        }
    }
    let end = Snapshot::take(&plan, broker.as_ref());
    plan.shared.measuring.store(false, Ordering::Release);
    plan.shared.stop.store(true, Ordering::Release);
    // What the consumers still had to receive when the window ended, and
    // how long they took to get it once the producers stopped.
    let stopped = Instant::now();
    let drained = join(
        &plan,
        &mut producers,
        &mut consumers,
        &mut sent_by,
        &mut results,
    );
    if interrupted {
        // A second Ctrl-C gives up on the drain, not on the report.
        tokio::select! {
            r = drained => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        drained.await?;
    }
    // Until the last message arrived, not until the consumers noticed
    // the queues stayed empty.
    let drain_s = results
        .iter()
        .filter_map(|r| r.last_after_stop)
        .max()
        .map_or(0.0, |last| {
            last.saturating_duration_since(stopped).as_secs_f64()
        });
    progress.abort();
    if plan_is_tty(&plan) {
        eprintln!();
    }
    if !args.keep {
        cleanup(&plan).await?;
    }
    let mut report = report(&plan, &begin, &end, &sent_by, results, broker.as_ref());
    let copies: u64 = (0..args.producers)
        .map(|p| {
            (0..plan.queues.len())
                .filter(|&q| plan.reaches(q, p))
                .count() as u64
        })
        .max()
        .unwrap_or(0);
    if args.consumers > 0 && copies > 0 {
        report["backlog_at_end"] = json!((end.sent * copies).saturating_sub(end.received));
        report["drain_s"] = json!(drain_s);
    }
    report["interrupted"] = json!(interrupted);
    print_report(&plan, &report);
    Ok(report)
}

type Task<T> = Option<tokio::task::JoinHandle<io::Result<T>>>;

/// Waits for the producers, then (draining) for the consumers; each task
/// is awaited once, so this can run again after a timeout.
async fn join(
    plan: &Plan,
    producers: &mut [Task<u64>],
    consumers: &mut [Task<ConsumerResult>],
    sent_by: &mut [u64],
    results: &mut Vec<ConsumerResult>,
) -> io::Result<()> {
    for (p, slot) in producers.iter_mut().enumerate() {
        if let Some(task) = slot.as_mut() {
            let sent = task.await.map_err(io::Error::other)?;
            *slot = None;
            sent_by[p] = sent?;
        }
    }
    plan.shared.draining.store(true, Ordering::Release);
    for slot in consumers.iter_mut() {
        if let Some(task) = slot.as_mut() {
            let result = task.await.map_err(io::Error::other)?;
            *slot = None;
            results.push(result?);
        }
    }
    Ok(())
}

fn plan_is_tty(plan: &Plan) -> bool {
    !plan.args.json && std::io::stderr().is_terminal()
}

/// Exchange, queues and bindings.
async fn setup(plan: &Plan) -> io::Result<()> {
    let (mut rx, mut tx) = client::open(&plan.target, "leveret perf setup").await?;
    let durable = plan.args.persistent;
    if !plan.args.exchange.is_empty() {
        client::declare_exchange(
            &mut rx,
            &mut tx,
            &plan.args.exchange,
            &plan.args.kind,
            durable,
        )
        .await?;
    }
    let arguments = queue_arguments(&plan.args.queue_args)?;
    for q in &plan.queues {
        client::declare_queue(&mut rx, &mut tx, q, durable, false, arguments.clone()).await?;
        if !plan.args.exchange.is_empty() {
            let key = plan.args.routing_key.as_deref().unwrap_or(q);
            client::bind(&mut rx, &mut tx, q, &plan.args.exchange, key).await?;
        }
    }
    client::close(&mut rx, &mut tx).await
}

async fn cleanup(plan: &Plan) -> io::Result<()> {
    let (mut rx, mut tx) = client::open(&plan.target, "leveret perf cleanup").await?;
    for q in &plan.queues {
        client::delete_queue(&mut rx, &mut tx, q).await?;
    }
    client::close(&mut rx, &mut tx).await
}

/// Publishes until told to stop (or --pmessages); returns how many it sent.
async fn producer(id: usize, plan: Arc<Plan>) -> io::Result<u64> {
    let args = &plan.args;
    let (mut rx, mut tx) =
        client::open(&plan.target, &format!("leveret perf producer {id}")).await?;
    let confirms = Arc::new(Confirms::default());
    let (reader, mut rx) = if args.confirm > 0 {
        client::confirm_select(&mut rx, &mut tx).await?;
        let (plan, confirms) = (plan.clone(), confirms.clone());
        let reader = tokio::spawn(async move { read_confirms(rx, plan, confirms).await });
        (Some(reader), None)
    } else {
        (None, Some(rx))
    };
    let (exchange, key) = plan.route(id);
    let limit = args.pmessages.unwrap_or(u64::MAX);
    let mut body = vec![0u8; args.size];
    let mut sent: u64 = 0;
    let started = Instant::now();
    // Enough messages per write to amortise the syscall, few enough to
    // keep latency low.
    let batch_bytes = 64 * 1024;
    while sent < limit && !plan.shared.stop.load(Ordering::Acquire) {
        let mut allowed = limit - sent;
        if args.rate > 0 {
            let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64 + 1;
            if due <= sent {
                let next = Duration::from_secs_f64((sent + 1) as f64 / args.rate as f64);
                tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
                continue;
            }
            allowed = allowed.min(due - sent);
        }
        if args.confirm > 0 {
            let outstanding = sent - confirms.settled.load(Ordering::Acquire);
            if outstanding >= args.confirm {
                let wait = confirms.changed.notified();
                if sent - confirms.settled.load(Ordering::Acquire) >= args.confirm {
                    let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
                }
                continue;
            }
            allowed = allowed.min(args.confirm - outstanding);
        }
        let mut n = 0;
        let mut times = Vec::new();
        while n < allowed && tx.buf.len() < batch_bytes {
            let now = plan.now_ns();
            stamp(&mut body, now, sent as u32, id as u16);
            encode::basic_publish(&mut tx.buf, 1, &exchange, &key);
            encode::content(&mut tx.buf, 1, &plan.properties, &body, 131072);
            if args.confirm > 0 {
                times.push(now);
            }
            sent += 1;
            n += 1;
        }
        if !times.is_empty() {
            let mut at = confirms.sent_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.times.is_empty() {
                at.first = sent - n + 1;
            }
            at.times.extend(times.into_iter().map(Some));
        }
        tx.flush().await?;
        plan.shared.sent.fetch_add(n, Ordering::Relaxed);
    }
    if let Some(reader) = reader {
        // Wait for the last confirms.
        let deadline = Instant::now() + Duration::from_secs(60);
        while confirms.settled.load(Ordering::Acquire) < sent && Instant::now() < deadline {
            let _ =
                tokio::time::timeout(Duration::from_millis(100), confirms.changed.notified()).await;
        }
        reader.abort();
    }
    if let Some(rx) = rx.as_mut() {
        // Without confirms, close-ok is the broker saying it has taken
        // everything sent before; dropping the socket could lose the tail.
        let _ = tokio::time::timeout(Duration::from_secs(30), client::close(rx, &mut tx)).await;
    }
    Ok(sent)
}

#[derive(Default)]
struct Confirms {
    /// Highest delivery tag acked or nacked (tags start at 1).
    settled: AtomicU64,
    changed: Notify,
    /// When each unconfirmed message was published.
    sent_at: Mutex<SentAt>,
}

/// Publish times (ns on the plan's clock) of the messages not yet
/// confirmed, by delivery tag: `times[i]` is tag `first + i`, `None` once
/// confirmed out of order.
#[derive(Default)]
struct SentAt {
    first: u64,
    times: std::collections::VecDeque<Option<u64>>,
}

impl SentAt {
    /// Takes the publish times that an ack or nack of `tag` settles, in
    /// `out`.
    fn settle(&mut self, tag: u64, multiple: bool, out: &mut Vec<u64>) {
        if multiple {
            while self.first <= tag {
                match self.times.pop_front() {
                    Some(t) => out.extend(t),
                    None => break,
                }
                self.first += 1;
            }
        } else if let Some(slot) = tag
            .checked_sub(self.first)
            .and_then(|i| self.times.get_mut(usize::try_from(i).ok()?))
        {
            out.extend(slot.take());
        }
        while self.times.front() == Some(&None) {
            self.times.pop_front();
            self.first += 1;
        }
    }
}

async fn read_confirms(
    mut rx: FrameIn,
    plan: Arc<Plan>,
    confirms: Arc<Confirms>,
) -> io::Result<()> {
    loop {
        let f = rx.next().await?;
        if f.kind != FrameType::Method {
            continue;
        }
        let ids = method_ids(&f.payload);
        if ids == (60, 80) || ids == (60, 120) {
            let mut r = arguments(&f);
            let tag = r.u64().unwrap_or(0);
            let multiple = r.u8().unwrap_or(0) & 1 != 0;
            let before = confirms.settled.load(Ordering::Acquire);
            let mut times = Vec::new();
            confirms
                .sent_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .settle(tag, multiple, &mut times);
            if plan.shared.measuring.load(Ordering::Relaxed) && !times.is_empty() {
                let now = plan.now_ns();
                let us = times
                    .iter()
                    .map(|&t| (now.saturating_sub(t) / 1000).min(u64::from(u32::MAX)) as u32);
                plan.shared
                    .confirm_latencies_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(us);
            }
            let newly = if multiple {
                tag.saturating_sub(before)
            } else {
                1
            };
            if ids == (60, 80) {
                plan.shared.confirmed.fetch_add(newly, Ordering::Relaxed);
            } else {
                plan.shared.nacked.fetch_add(newly, Ordering::Relaxed);
            }
            confirms.settled.fetch_max(tag, Ordering::AcqRel);
            confirms.changed.notify_waiters();
        } else if ids == (10, 50) || ids == (20, 40) {
            let mut r = arguments(&f);
            let code = r.u16().unwrap_or(0);
            let text = r.short_str().unwrap_or_default();
            return Err(io::Error::other(format!(
                "producer closed by the broker: {code} {text}"
            )));
        }
    }
}

struct ConsumerResult {
    queue: usize,
    seen: Seen,
    latencies_us: Vec<u32>,
    /// When the last message after the producers stopped arrived.
    last_after_stop: Option<Instant>,
}

/// Consumes from its queue until drained (or --cmessages).
async fn consumer(
    id: usize,
    plan: Arc<Plan>,
    ready: Arc<tokio::sync::Barrier>,
) -> io::Result<ConsumerResult> {
    let args = &plan.args;
    let queue = id % plan.queues.len();
    let opened = async {
        let (mut rx, mut tx) =
            client::open(&plan.target, &format!("leveret perf consumer {id}")).await?;
        client::consume(
            &mut rx,
            &mut tx,
            &plan.queues[queue],
            args.prefetch,
            args.autoack,
            queue_arguments(&args.consume_args)?,
        )
        .await?;
        Ok::<_, io::Error>((rx, tx))
    }
    .await;
    ready.wait().await;
    let (mut rx, mut tx) = opened?;
    let limit = args.cmessages.unwrap_or(u64::MAX);
    let ack_every = if args.autoack {
        u64::MAX
    } else {
        args.multi_ack_every
            .clamp(1, u64::from(args.prefetch.max(1)))
    };
    let mut result = ConsumerResult {
        queue,
        seen: Seen::default(),
        latencies_us: Vec::new(),
        last_after_stop: None,
    };
    let mut received = 0u64;
    let (mut delivery_tag, mut redelivered) = (0u64, false);
    let (mut body_left, mut head) = (0u64, Vec::with_capacity(STAMP));
    let mut unacked = 0u64;
    let mut counted = 0u64;
    'run: while received < limit {
        // A timer only when the socket must be read: one per frame would
        // cost more than the frame.
        let frame = if rx.has_frame() {
            rx.next().await?
        } else if plan.shared.draining.load(Ordering::Acquire) {
            match tokio::time::timeout(Duration::from_secs(1), rx.next()).await {
                Ok(f) => f?,
                Err(_) => break 'run, // idle after the producers finished
            }
        } else {
            match tokio::time::timeout(Duration::from_millis(200), rx.next()).await {
                Ok(f) => f?,
                Err(_) => continue,
            }
        };
        let complete = match frame.kind {
            FrameType::Method => match method_ids(&frame.payload) {
                (60, 60) => {
                    let mut r = arguments(&frame);
                    r.short_bytes();
                    delivery_tag = r.u64().unwrap_or(0);
                    redelivered = r.u8().unwrap_or(0) != 0;
                    head.clear();
                    false
                }
                (10, 50) | (20, 40) => {
                    let mut r = arguments(&frame);
                    let code = r.u16().unwrap_or(0);
                    let text = r.short_str().unwrap_or_default();
                    return Err(io::Error::other(format!(
                        "consumer closed by the broker: {code} {text}"
                    )));
                }
                _ => false,
            },
            FrameType::Header => {
                // class, weight, then the body size.
                body_left = frame
                    .payload
                    .get(4..12)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                body_left == 0
            }
            FrameType::Body => {
                let take = (STAMP - head.len()).min(frame.payload.len());
                head.extend_from_slice(&frame.payload[..take]);
                body_left = body_left.saturating_sub(frame.payload.len() as u64);
                body_left == 0
            }
            FrameType::Heartbeat => false,
        };
        if !complete {
            continue;
        }
        received += 1;
        counted += 1;
        if plan.shared.stop.load(Ordering::Relaxed) {
            result.last_after_stop = Some(Instant::now());
        }
        if let Some((sent_ns, seq, producer)) = read_stamp(&head) {
            result.seen.record(producer, seq, redelivered);
            if plan.shared.measuring.load(Ordering::Relaxed) {
                let us = plan.now_ns().saturating_sub(sent_ns) / 1000;
                result.latencies_us.push(us.min(u64::from(u32::MAX)) as u32);
            }
        }
        if !args.autoack {
            unacked += 1;
            if unacked >= ack_every {
                encode::basic_ack(&mut tx.buf, 1, delivery_tag, true);
                unacked = 0;
            }
        }
        // Batch counter updates and ack writes: flush when nothing more is
        // buffered to read.
        if counted >= 64 || !rx.has_frame() {
            plan.shared.received.fetch_add(counted, Ordering::Relaxed);
            counted = 0;
            tx.flush().await?;
        }
    }
    plan.shared.received.fetch_add(counted, Ordering::Relaxed);
    if unacked > 0 {
        encode::basic_ack(&mut tx.buf, 1, delivery_tag, true);
    }
    tx.flush().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), client::close(&mut rx, &mut tx)).await;
    Ok(result)
}

/// Open, declare, publish one, close: `n` times per producer.
async fn churn(plan: Arc<Plan>, n: u64) -> io::Result<Value> {
    let broker = sys::BrokerWatch::start(&plan.args.broker_pid);
    let begin = Snapshot::take(&plan, broker.as_ref());
    let mut tasks = Vec::new();
    for id in 0..plan.args.producers.max(1) {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut body = vec![0u8; plan.args.size];
            let cap = plan.args.duration.map(Duration::from_secs_f64);
            let started = Instant::now();
            for i in 0..n {
                if cap.is_some_and(|cap| started.elapsed() >= cap) {
                    break;
                }
                let (mut rx, mut tx) =
                    client::open(&plan.target, &format!("leveret perf churn {id}")).await?;
                let q =
                    client::declare_queue(&mut rx, &mut tx, "", false, true, FieldTable::default())
                        .await?;
                stamp(&mut body, plan.now_ns(), i as u32, id as u16);
                encode::basic_publish(&mut tx.buf, 1, "", &q);
                encode::content(&mut tx.buf, 1, &plan.properties, &body, 131072);
                client::close(&mut rx, &mut tx).await?;
                plan.shared.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(())
        }));
    }
    for t in tasks {
        t.await.map_err(io::Error::other)??;
    }
    let end = Snapshot::take(&plan, broker.as_ref());
    let secs = end.at.duration_since(begin.at).as_secs_f64();
    let ops = end.sent - begin.sent;
    let mut report = json!({
        "duration_s": secs,
        "sent": ops,
        "confirmed": 0, "nacked": 0, "received": 0,
        "sent_rate": ops as f64 / secs,
        "confirmed_rate": 0.0, "received_rate": 0.0,
        "latency_us": null,
        "violations": {"lost": 0, "duplicated": 0, "reordered": 0},
        "churn_rate": ops as f64 / secs,
        "tool": cpu_json(end.tool_cpu - begin.tool_cpu, ops),
        "params": plan.args,
    });
    if let (Some(b), Some(e), Some(w)) = (begin.broker_cpu, end.broker_cpu, broker.as_ref()) {
        let mut broker = cpu_json(e - b, ops);
        broker["peak_rss_kb"] = json!(w.peak_rss_kb());
        report["broker"] = broker;
    }
    print_report(&plan, &report);
    Ok(report)
}

/// Counters and CPU times at one instant.
struct Snapshot {
    at: Instant,
    sent: u64,
    confirmed: u64,
    received: u64,
    tool_cpu: f64,
    broker_cpu: Option<f64>,
    watched_cpu: Option<f64>,
}

impl Snapshot {
    fn take(plan: &Plan, broker: Option<&sys::BrokerWatch>) -> Snapshot {
        let s = &plan.shared;
        Snapshot {
            at: Instant::now(),
            sent: s.sent.load(Ordering::Relaxed),
            confirmed: s.confirmed.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            tool_cpu: sys::own_cpu_seconds(),
            broker_cpu: broker.and_then(sys::BrokerWatch::cpu_seconds),
            watched_cpu: plan
                .watched
                .as_ref()
                .and_then(sys::BrokerWatch::cpu_seconds),
        }
    }
}

fn cpu_json(cpu_s: f64, messages: u64) -> Value {
    json!({
        "cpu_s": cpu_s,
        "cpu_us_per_msg": if messages > 0 { cpu_s * 1e6 / messages as f64 } else { 0.0 },
    })
}

fn report(
    plan: &Plan,
    begin: &Snapshot,
    end: &Snapshot,
    sent_by: &[u64],
    mut results: Vec<ConsumerResult>,
    broker: Option<&sys::BrokerWatch>,
) -> Value {
    let secs = end.at.duration_since(begin.at).as_secs_f64().max(1e-9);
    let sent = end.sent - begin.sent;
    let confirmed = end.confirmed - begin.confirmed;
    let received = end.received - begin.received;
    let mut latencies: Vec<u32> = results
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.latencies_us))
        .collect();
    // Stamps of another run's producers are on another clock.
    if sent_by.is_empty() {
        latencies.clear();
    }
    let latency = percentiles(&mut latencies)
        .map(|[p50, p95, p99, max]| json!({"p50": p50, "p95": p95, "p99": p99, "max": max}));
    let mut confirm_latencies = std::mem::take(
        &mut *plan
            .shared
            .confirm_latencies_us
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let confirm_latency = percentiles(&mut confirm_latencies)
        .map(|[p50, p95, p99, max]| json!({"p50": p50, "p95": p95, "p99": p99, "max": max}));

    // Per queue and producer: what every consumer of the queue saw.
    let (mut duplicated, mut reordered) = (0u64, 0u64);
    let queues = plan.queues.len();
    let mut union: Vec<Vec<Bits>> = vec![vec![Bits::default(); sent_by.len().max(1)]; queues];
    let mut consumed = vec![false; queues];
    for r in &results {
        duplicated += r.seen.duplicated;
        reordered += r.seen.reordered;
        consumed[r.queue] = true;
        for (p, (bits, _)) in r.seen.per_producer.iter().enumerate() {
            if p < union[r.queue].len() {
                duplicated += union[r.queue][p].merge(bits);
            }
        }
    }
    // Loss is only known when this run both produced and drained every queue.
    let lost =
        if plan.args.cmessages.is_none() && consumed.iter().all(|c| *c) && !sent_by.is_empty() {
            let mut lost = 0u64;
            for (q, per_producer) in union.iter().enumerate() {
                for (p, bits) in per_producer.iter().enumerate() {
                    if plan.reaches(q, p) {
                        lost += sent_by[p].saturating_sub(bits.count());
                    }
                }
            }
            json!(lost)
        } else {
            Value::Null
        };
    let mut report = json!({
        "duration_s": secs,
        "sent": sent,
        "confirmed": confirmed,
        "nacked": plan.shared.nacked.load(Ordering::Relaxed),
        "received": received,
        "sent_rate": sent as f64 / secs,
        "confirmed_rate": confirmed as f64 / secs,
        "received_rate": received as f64 / secs,
        "latency_us": latency,
        "confirm_latency_us": confirm_latency,
        "violations": {"lost": lost, "duplicated": duplicated, "reordered": reordered},
        "churn_rate": null,
        "tool": cpu_json(end.tool_cpu - begin.tool_cpu, sent + received),
        // So a saved report says what produced it.
        "params": plan.args,
        "queues": plan.queues,
    });
    if let (Some(b), Some(e), Some(w)) = (begin.broker_cpu, end.broker_cpu, broker) {
        let mut cpu = cpu_json(e - b, sent + received);
        cpu["peak_rss_kb"] = json!(w.peak_rss_kb());
        cpu["pids"] = json!(w.pids);
        report["broker"] = cpu;
    }
    if let (Some(b), Some(e), Some(w)) = (begin.watched_cpu, end.watched_cpu, &plan.watched) {
        let mut cpu = cpu_json(e - b, sent + received);
        cpu["peak_rss_kb"] = json!(w.peak_rss_kb());
        cpu["pids"] = json!(w.pids);
        report["watched"] = cpu;
    }
    report
}

fn print_report(plan: &Plan, r: &Value) {
    if plan.args.json {
        println!("{r}");
        return;
    }
    let mut out = std::io::stdout().lock();
    let rate = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        out,
        "{:.1} s: sent {:.0} msg/s, confirmed {:.0} msg/s, received {:.0} msg/s",
        rate("duration_s"),
        rate("sent_rate"),
        rate("confirmed_rate"),
        rate("received_rate")
    );
    if let Some(c) = r["churn_rate"].as_f64() {
        let _ = writeln!(out, "churn: {c:.0} connections/s");
    }
    if let Some(l) = r["latency_us"].as_object() {
        let _ = writeln!(
            out,
            "latency µs: p50 {} p95 {} p99 {} max {}",
            l["p50"], l["p95"], l["p99"], l["max"]
        );
    }
    if let Some(l) = r["confirm_latency_us"].as_object() {
        let _ = writeln!(
            out,
            "confirm latency µs: p50 {} p95 {} p99 {} max {}",
            l["p50"], l["p95"], l["p99"], l["max"]
        );
    }
    if let (Some(b), Some(d)) = (r["backlog_at_end"].as_u64(), r["drain_s"].as_f64()) {
        let _ = writeln!(
            out,
            "not yet received at the end: {b} messages, drained in {d:.2} s"
        );
    }
    if r["interrupted"].as_bool() == Some(true) {
        let _ = writeln!(out, "interrupted: the window ended early");
    }
    let v = &r["violations"];
    let _ = writeln!(
        out,
        "lost {} duplicated {} reordered {}",
        v["lost"], v["duplicated"], v["reordered"]
    );
    let _ = writeln!(
        out,
        "perf CPU {:.2} µs/msg",
        r["tool"]["cpu_us_per_msg"].as_f64().unwrap_or(0.0)
    );
    if let Some(b) = r.get("broker") {
        let _ = writeln!(
            out,
            "broker CPU {:.2} µs/msg, peak RSS {} kB",
            b["cpu_us_per_msg"].as_f64().unwrap_or(0.0),
            b["peak_rss_kb"]
        );
    }
    if let Some(w) = r.get("watched") {
        let _ = writeln!(
            out,
            "watched CPU {:.2} µs/msg, peak RSS {} kB",
            w["cpu_us_per_msg"].as_f64().unwrap_or(0.0),
            w["peak_rss_kb"]
        );
    }
}

/// A line a second on stderr: in place on a terminal, else one per line.
async fn progress(plan: Arc<Plan>) {
    let tty = plan_is_tty(&plan);
    let mut last = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let s = &plan.shared;
        let now = (
            s.sent.load(Ordering::Relaxed),
            s.confirmed.load(Ordering::Relaxed),
            s.received.load(Ordering::Relaxed),
        );
        let line = format!(
            "time {:.0} s, sent {} msg/s, confirmed {} msg/s, received {} msg/s",
            plan.start.elapsed().as_secs_f64(),
            now.0 - last.0,
            now.1 - last.1,
            now.2 - last.2
        );
        last = now;
        if tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SentAt;

    #[test]
    fn confirms_settle_publish_times_once() {
        let mut at = SentAt {
            first: 1,
            times: (10..20).map(Some).collect(),
        };
        let mut out = Vec::new();
        at.settle(3, false, &mut out); // tag 3 alone
        assert_eq!(out, [12]);
        out.clear();
        at.settle(4, true, &mut out); // 1, 2 and 4; 3 is done already
        assert_eq!(out, [10, 11, 13]);
        assert_eq!(at.first, 5);
        out.clear();
        at.settle(4, true, &mut out); // again: nothing
        at.settle(99, false, &mut out); // unknown tag: nothing
        assert!(out.is_empty());
        at.settle(10, true, &mut out);
        assert_eq!(out, [14, 15, 16, 17, 18, 19]);
        assert!(at.times.is_empty());
    }
}
