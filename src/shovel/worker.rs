//! One running shovel: a tokio task that opens its ends, moves messages
//! until told to stop, and on a failure reports it and starts again after
//! the reconnect delay, as RabbitMQ's worker under its supervisor.
//!
//! Acknowledgement modes, as RabbitMQ's: `on-confirm` settles a source
//! message only once the destination has it (on disk, for a persistent
//! message reaching durable queues), so a broker that dies mid-move loses
//! nothing (it may deliver twice); `on-publish` settles it once routed;
//! `no-ack` consumes without acknowledgements. A source message the
//! destination refused (a nack) goes back to its queue.

use super::definition::{AckMode, DeleteAfter, Source, Spec};
use super::local::{self, Inbox, ShovelGate};
use super::status::{State, Status};
use super::uri::without_credentials;
use crate::broker::ops::publish::{self, Outgoing};
use crate::broker::parameters::SHOVEL;
use crate::broker::queue::Queue;
use crate::broker::stream_consume::{check_consumer, ReadSpec};
use crate::broker::timers::now_ms;
use crate::broker::vhost::{Routing, VHost};
use crate::broker::Broker;
use crate::protocol::properties::PropertiesView;
use crate::store::{ConfirmSink, QueuedMessage};
use amq_protocol::types::{AMQPValue, FieldArray, FieldTable};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// A pause after the destination refused messages, so a destination that
/// refuses everything (a full queue with reject-publish) is retried, not
/// spun on.
const AFTER_NACK: Duration = Duration::from_millis(100);

/// How long a stopping shovel waits for the confirms of what it forwarded.
const DRAIN: Duration = Duration::from_secs(2);

pub(super) struct Worker {
    pub(super) broker: Arc<Broker>,
    pub(super) vhost: String,
    pub(super) name: String,
    pub(super) spec: Spec,
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) stop: watch::Receiver<bool>,
    /// As the management API names this node (`shovelled-by`).
    pub(super) node: String,
}

/// How one attempt ended.
enum Ended {
    Stopped,
    /// `src-delete-after` reached: the shovel deletes itself.
    Completed,
    /// `started`: it had been running (RabbitMQ reports `terminated`);
    /// else it could not start and stays `starting` while it retries.
    Failed {
        reason: String,
        started: bool,
    },
}

fn failed(reason: impl Into<String>) -> Ended {
    Ended::Failed {
        reason: reason.into(),
        started: false,
    }
}

impl Worker {
    pub(super) async fn run(mut self) {
        loop {
            self.status.lock().set(State::Starting);
            match self.attempt().await {
                Ended::Stopped => return,
                Ended::Completed => {
                    tracing::info!(shovel = %self.name, vhost = %self.vhost, "shovel is stopping: it was configured to delete itself and its transfer is complete");
                    self.broker
                        .parameters
                        .delete(SHOVEL, &self.vhost, &self.name);
                    return;
                }
                Ended::Failed { reason, started } => {
                    tracing::warn!(shovel = %self.name, vhost = %self.vhost, %reason, "shovel failed; restarting after its reconnect delay");
                    if started {
                        self.status.lock().set(State::Terminated(reason));
                    }
                }
            }
            let delay = self.spec.reconnect_delay.max(Duration::from_millis(10));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn attempt(&mut self) -> Ended {
        let spec = &self.spec;
        let pick = |uris: &[(String, super::uri::AmqpUri)]| {
            uris[rand::random::<usize>() % uris.len()].clone()
        };
        let (src_text, src_uri) = pick(&spec.src_uris);
        let (dest_text, dest_uri) = pick(&spec.dest_uris);
        if !src_uri.is_local() || !dest_uri.is_local() {
            // Reported as terminated, so the status says why.
            return Ended::Failed {
                reason: "Leveret's shovels move messages within this broker only: URIs with a host are not supported yet".into(),
                started: true,
            };
        }
        let vhost_of = |name: &str| {
            self.broker.vhost(name).ok_or_else(|| {
                failed(format!(
                    "access to target virtual host '{name}' was refused: it does not exist"
                ))
            })
        };
        let src_vhost = match vhost_of(&src_uri.vhost) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let dest_vhost = match vhost_of(&dest_uri.vhost) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let owner = self.broker.next_id();
        let mark = self.broker.store.meta_queued();
        // Destination first, then the source, as RabbitMQ sets them up.
        if let Some(q) = &spec.dest.queue {
            if let Err(e) = local::ensure_queue(&dest_vhost, q, &spec.dest_queue_args, owner) {
                return failed(e.text);
            }
        }
        let made = match &spec.source {
            Source::Queue(q) => {
                local::ensure_queue(&src_vhost, q, &spec.src_queue_args, owner).map(|q| (q, false))
            }
            Source::Exchange { exchange, key } => {
                local::bound_queue(&src_vhost, exchange, key, owner).map(|q| (q, true))
            }
        };
        let (queue, temporary) = match made {
            Ok(made) => made,
            Err(e) => return failed(e.text),
        };
        // As a channel answers queue.declare only once the queue is on
        // disk: nothing is published to a queue the store does not know.
        if let Some(durable) = self.broker.store.meta_durable_since(mark) {
            let written = tokio::select! {
                w = durable => w,
                _ = self.stop.wait_for(|s| *s) => Ok(()),
            };
            if let Err(e) = written {
                if temporary {
                    src_vhost.delete_queue(&queue);
                }
                return failed(format!("cannot write to the store: {e}"));
            }
        }
        let remaining = match spec.delete_after {
            DeleteAfter::Never => None,
            DeleteAfter::QueueLength => Some(queue.counts().ready as u64),
            DeleteAfter::Count(n) => Some(n),
        };
        let ended = if remaining == Some(0) {
            Ended::Completed
        } else {
            let ends = Ends {
                queue: &queue,
                src_vhost: &src_vhost,
                dest_vhost: &dest_vhost,
                src_text: &src_text,
                dest_text: &dest_text,
            };
            self.move_messages(ends, owner, remaining).await
        };
        if temporary {
            src_vhost.delete_queue(&queue);
        }
        ended
    }
}

/// Where one attempt moves messages.
struct Ends<'a> {
    queue: &'a Arc<Queue>,
    src_vhost: &'a Arc<VHost>,
    dest_vhost: &'a Arc<VHost>,
    src_text: &'a str,
    dest_text: &'a str,
}

impl Worker {
    /// Consumes from the source queue until stopped, failed or done, then
    /// puts back what it holds.
    async fn move_messages(&mut self, ends: Ends<'_>, owner: u64, remaining: Option<u64>) -> Ended {
        let spec = &self.spec;
        let queue = ends.queue;
        self.status.lock().set(State::Running(running_fields(
            spec,
            ends.src_text,
            ends.dest_text,
        )));
        let limit = match spec.prefetch {
            0 => usize::from(u16::MAX),
            n => n.min(u64::from(u16::MAX)) as usize,
        };
        let no_ack = spec.ack_mode == AckMode::NoAck;
        let inbox = Inbox::new(limit, no_ack);
        let tag = format!("amq.ctag-shovel-{owner}");
        let args = local::table(&spec.consumer_args);
        // A stream is read from where the consumer arguments say, as a
        // channel's consumer reads it.
        let read = match queue.stream() {
            None => Ok(None),
            Some(_) => {
                check_consumer(limit as u16, no_ack, &queue.name, &queue.vhost).and_then(|()| {
                    ReadSpec::parse(&args, &tag, &queue.name, &queue.vhost, now_ms() as i64)
                        .map(Some)
                })
            }
        };
        let consumer = local::consumer(tag, &inbox, queue, args);
        let added = read.and_then(|read| queue.add_consumer(consumer.clone(), read, || {}));
        if let Err(e) = added {
            return Ended::Failed {
                reason: e.text,
                started: true,
            };
        }
        let mut pump = Pump {
            src_uri: without_credentials(ends.src_text),
            dest_uri: without_credentials(ends.dest_text),
            worker: self,
            queue,
            dest: ends.dest_vhost,
            inbox: &inbox,
            remaining,
            unforwarded: remaining,
            seq: 0,
            pending: VecDeque::new(),
            surplus: Vec::new(),
            settle: Vec::new(),
            requeue: Vec::new(),
            confirms: Arc::new(Confirms::default()),
            routing: Routing::default(),
        };
        let ended = pump.run().await;
        if matches!(ended, Ended::Stopped) {
            pump.drain().await;
        }
        let mut back = inbox.close();
        back.extend(pump.pending.drain(..).map(|(_, m)| m));
        back.append(&mut pump.surplus);
        back.append(&mut pump.requeue);
        if queue.remove_consumer(&consumer) {
            ends.src_vhost.delete_queue(queue);
        }
        if !no_ack {
            queue.requeue(back);
        }
        ended
    }
}

/// What `/api/shovels` shows of a running shovel (RabbitMQ's
/// `report_running`).
fn running_fields(spec: &Spec, src: &str, dest: &str) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("src_uri", without_credentials(src)),
        ("src_protocol", "amqp091".to_string()),
        ("dest_protocol", "amqp091".to_string()),
        ("dest_uri", without_credentials(dest)),
    ];
    match &spec.source {
        Source::Queue(q) => f.push(("src_queue", q.clone())),
        Source::Exchange { exchange, key } => {
            f.push(("src_exchange", exchange.clone()));
            f.push(("src_exchange_key", key.clone()));
        }
    }
    let d = &spec.dest;
    for (k, v) in [
        ("dest_exchange", &d.exchange),
        ("dest_exchange_key", &d.exchange_key),
        ("dest_queue", &d.queue),
    ] {
        if let Some(v) = v {
            f.push((k, v.clone()));
        }
    }
    f
}

/// The persister's confirms of the shovel's stored messages: every
/// sequence number up to `seq` has the outcome (cumulative, per sink).
#[derive(Default)]
struct Confirms {
    runs: Mutex<Vec<(u64, bool)>>,
    wake: Notify,
}

impl ConfirmSink for Confirms {
    fn confirm_persisted(&self, seq: u64, ok: bool) {
        self.runs.lock().push((seq, ok));
        self.wake.notify_one();
    }
}

/// The moving of one attempt.
struct Pump<'a> {
    worker: &'a mut Worker,
    queue: &'a Arc<Queue>,
    dest: &'a Arc<VHost>,
    inbox: &'a Arc<Inbox>,
    src_uri: String,
    dest_uri: String,
    /// Messages left to settle before the shovel deletes itself.
    remaining: Option<u64>,
    /// Messages left to forward: past them, deliveries wait to be requeued.
    unforwarded: Option<u64>,
    seq: u64,
    /// Forwarded, waiting for the destination's confirm.
    pending: VecDeque<(u64, QueuedMessage)>,
    surplus: Vec<QueuedMessage>,
    settle: Vec<QueuedMessage>,
    requeue: Vec<QueuedMessage>,
    confirms: Arc<Confirms>,
    routing: Routing,
}

impl Pump<'_> {
    async fn run(&mut self) -> Ended {
        let mut batch = Vec::new();
        loop {
            self.settle_confirmed();
            let cancelled = self.inbox.take(&mut batch);
            let mut taken = batch.drain(..);
            while let Some(msg) = taken.next() {
                if let Err(ended) = self.forward(msg).await {
                    self.requeue.extend(taken);
                    return ended;
                }
            }
            drop(taken);
            if let Some(ended) = self.settle_now().await {
                return ended;
            }
            if cancelled {
                return Ended::Failed {
                    reason: "needed a restart".into(),
                    started: true,
                };
            }
            let stop = &mut self.worker.stop;
            tokio::select! {
                _ = self.inbox.wait() => {}
                _ = self.confirms.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return Ended::Stopped,
            }
        }
    }

    /// On a stop: waits a moment for the confirms of what was forwarded,
    /// so that a stopped shovel leaves those at the destination only
    /// rather than in both queues.
    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + DRAIN;
        loop {
            self.settle_confirmed();
            if self.pending.is_empty() {
                break;
            }
            let confirmed = self.confirms.wake.notified();
            if tokio::time::timeout_at(deadline, confirmed).await.is_err() {
                break;
            }
        }
        self.queue
            .settle(self.settle.drain(..).map(|m| m.receipt()));
    }

    /// Settles what the persister confirmed (or requeues what it could
    /// not write).
    fn settle_confirmed(&mut self) {
        let runs = std::mem::take(&mut *self.confirms.runs.lock());
        for (seq, ok) in runs {
            while self.pending.front().is_some_and(|(s, _)| *s <= seq) {
                let (_, msg) = self.pending.pop_front().expect("checked");
                if ok {
                    self.settle.push(msg);
                } else {
                    self.requeue.push(msg);
                }
            }
        }
    }

    /// Acknowledges and requeues at the source what is decided, counts it
    /// against `src-delete-after`, and lets the queue deliver again.
    async fn settle_now(&mut self) -> Option<Ended> {
        let (settled, nacked) = (self.settle.len(), self.requeue.len());
        if settled + nacked == 0 {
            return None;
        }
        self.queue
            .settle(self.settle.drain(..).map(|m| m.receipt()));
        self.queue.requeue(self.requeue.drain(..));
        self.inbox.released(settled + nacked);
        if let Some(ended) = self.count_done((settled + nacked) as u64) {
            return Some(ended);
        }
        if nacked > 0 {
            tokio::time::sleep(AFTER_NACK).await;
        }
        self.queue.dispatch();
        None
    }

    fn count_done(&mut self, n: u64) -> Option<Ended> {
        let left = self.remaining.as_mut()?;
        *left = left.saturating_sub(n);
        (*left == 0).then_some(Ended::Completed)
    }

    /// Publishes one source message to the destination.
    async fn forward(&mut self, msg: QueuedMessage) -> Result<(), Ended> {
        if self.unforwarded == Some(0) {
            // Delivered past the count: back to the queue when done.
            self.surplus.push(msg);
            return Ok(());
        }
        let broker = self.worker.broker.clone();
        let spec = &self.worker.spec;
        let m = &msg.message;
        let (exchange, routing_key) = spec.dest.target(&m.exchange, &m.routing_key);
        let mut properties = m.properties.clone();
        if spec.add_forward_headers {
            let table = self.forward_table();
            properties = prepend_header(&properties, "x-shovelled", table).unwrap_or(properties);
        }
        if spec.add_timestamp_header {
            let now = (crate::broker::timers::now_ms() / 1000) as i32;
            properties = crate::broker::dead_letter::with_header(
                &properties,
                "x-shovelled-timestamp",
                AMQPValue::LongInt(now),
            )
            .unwrap_or(properties);
        }
        let view = PropertiesView::scan(&properties).map_err(|_| failed("malformed properties"))?;
        if broker.alarm_reason().is_some() {
            let stop = &mut self.worker.stop;
            tokio::select! {
                _ = publish::alarms_cleared(broker.clone()) => {}
                _ = stop.wait_for(|s| *s) => { self.requeue.push(msg); return Err(Ended::Stopped) }
            }
        }
        let outgoing = Outgoing {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            properties,
            view,
            body: m.body.clone(),
        };
        let accepted = publish::check_size(&broker, m.body.len() as u64)
            .and_then(|()| publish::accept(&mut ShovelGate, self.dest, outgoing, None));
        let (message, view) = match accepted {
            Ok(a) => a,
            Err(e) => {
                self.requeue.push(msg);
                return Err(Ended::Failed {
                    reason: e.text,
                    started: true,
                });
            }
        };
        let routed = publish::route(&broker, self.dest, message, &view, &mut self.routing);
        if let Some(n) = self.unforwarded.as_mut() {
            *n -= 1;
        }
        match spec.ack_mode {
            AckMode::NoAck => {
                self.inbox.released(1);
                if let Some(ended) = self.count_done(1) {
                    return Err(ended);
                }
            }
            AckMode::OnPublish => self.settle.push(msg),
            AckMode::OnConfirm if routed.refused => self.requeue.push(msg),
            AckMode::OnConfirm => {
                if let Some(appends) = &routed.appends {
                    if appends.finished().await {
                        self.settle.push(msg);
                    } else {
                        self.requeue.push(msg);
                    }
                } else if routed.stored {
                    self.seq += 1;
                    let sink: Arc<dyn ConfirmSink> = self.confirms.clone();
                    broker
                        .store
                        .confirm_when_written(sink, self.seq, &routed.message);
                    self.pending.push_back((self.seq, msg));
                } else {
                    // Transient, or routed nowhere: confirmed at once.
                    self.settle.push(msg);
                }
            }
        }
        let stop = &mut self.worker.stop;
        if let Some(queue) = routed.flow {
            tokio::select! {
                _ = publish::flow_released(queue) => {}
                _ = stop.wait_for(|s| *s) => return Err(Ended::Stopped),
            }
        }
        if broker.store.backlog.is_over() {
            tokio::select! {
                _ = broker.store.backlog.wait_drained() => {}
                _ = stop.wait_for(|s| *s) => return Err(Ended::Stopped),
            }
        }
        Ok(())
    }

    /// RabbitMQ's `x-shovelled` entry for a dynamic shovel.
    fn forward_table(&self) -> FieldTable {
        let w = &self.worker;
        let mut pairs = vec![
            ("shovelled-by", w.node.clone()),
            ("shovel-type", "dynamic".to_string()),
            ("shovel-name", w.name.clone()),
            ("shovel-vhost", w.vhost.clone()),
            ("src-uri", self.src_uri.clone()),
            ("dest-uri", self.dest_uri.clone()),
        ];
        match &w.spec.source {
            Source::Queue(q) => pairs.push(("src-queue", q.clone())),
            Source::Exchange { exchange, key } => {
                pairs.push(("src-exchange", exchange.clone()));
                pairs.push(("src-exchange-key", key.clone()));
            }
        }
        let d = &w.spec.dest;
        for (k, v) in [
            ("dest-exchange", &d.exchange),
            ("dest-exchange-key", &d.exchange_key),
            ("dest-queue", &d.queue),
        ] {
            if let Some(v) = v {
                pairs.push((k, v.clone()));
            }
        }
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), AMQPValue::LongString(v.as_str().into()));
        }
        t
    }
}

/// Raw properties with `table` put first in the array header `name`
/// (RabbitMQ's `prepend_table_header`).
fn prepend_header(properties: &[u8], name: &str, table: FieldTable) -> Option<bytes::Bytes> {
    let view = PropertiesView::scan(properties).ok()?;
    let mut all = FieldArray::default();
    all.push(AMQPValue::FieldTable(table));
    if let Some(AMQPValue::FieldArray(old)) = view
        .headers(properties)
        .and_then(|h| h.inner().get(name).cloned())
    {
        for v in old.as_slice() {
            all.push(v.clone());
        }
    }
    crate::broker::dead_letter::with_header(properties, name, AMQPValue::FieldArray(all))
}
