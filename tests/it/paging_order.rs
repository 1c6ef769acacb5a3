//! A property of the durable store's paging: a durable queue whose memory
//! window keeps only about three messages in memory delivers in publish
//! order whatever random mix of publishes, gets, acks, requeues and
//! restarts it sees. Each step is compared with a model, the ready messages
//! in a `VecDeque`:
//!
//! - a get takes the model's front, with `redelivered` set exactly when the
//!   message was delivered before;
//! - a requeued message goes back to its original position, as RabbitMQ
//!   puts it back ("placed to its original position in its queue, if
//!   possible", rabbitmq.com/nack.html; always possible with one consumer);
//! - a restart (connection closed, SIGTERM, start) returns every unacked
//!   message to its position and drops the transient ones.
//!
//! With `LEVERET_TEST_URI` the same steps run against that broker (RabbitMQ
//! 3.10 passes), a restart there being only a reconnect.
//!
//! Over TCP against the real binary rather than a unit test of
//! `store::durable`: the order a client sees is made by the queue, the
//! durable store's window, the persister's reads ahead of consumers and
//! recovery together, and a restart here is a real stop and start.

use crate::common;

use common::amqp::{persistent, timed_confirm_channel, timed_for, transient};
use common::process::{BrokerProcess, TempDir};
use common::unique;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use proptest::prelude::*;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

/// Bytes of a durable queue kept in memory: three of the messages below
/// (each costs its body plus about 128 bytes), the rest is paged out.
const WINDOW: usize = 4 * 1024;
/// Body size of every message.
const BODY: usize = 1024;
/// Deadline for any single reply of the broker.
const WAIT: Duration = Duration::from_secs(10);
/// Deadline for one whole case (a few restarts of a child process).
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
enum Step {
    /// `count` messages, all persistent or all transient, each confirmed.
    Publish { count: usize, persistent: bool },
    /// basic.get with manual ack: the message is held unacked.
    Get,
    /// basic.get with no_ack.
    GetNoAck,
    /// Acks one of the held messages (chosen by index, modulo how many).
    Ack(usize),
    /// basic.reject with requeue of one of the held messages.
    Requeue(usize),
    /// Closes the connection, stops the broker with SIGTERM and starts it.
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..40usize, prop::bool::weighted(0.75))
            .prop_map(|(count, persistent)| Step::Publish { count, persistent }),
        5 => Just(Step::Get),
        1 => Just(Step::GetNoAck),
        2 => any::<usize>().prop_map(Step::Ack),
        2 => any::<usize>().prop_map(Step::Requeue),
        1 => Just(Step::Restart),
    ]
}

/// A message as the model knows it: `id` is its publish order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    id: u64,
    persistent: bool,
    delivered: bool,
}

#[derive(Default)]
struct Model {
    ready: VecDeque<Msg>,
    /// Delivered with manual ack, not yet acked: (message, delivery tag).
    held: Vec<(Msg, u64)>,
    next_id: u64,
}

impl Model {
    /// Puts `msg` back where publish order says it belongs.
    fn requeue(&mut self, mut msg: Msg) {
        msg.delivered = true;
        let at = self.ready.partition_point(|m| m.id < msg.id);
        self.ready.insert(at, msg);
    }

    /// The connection closed: every held message goes back.
    fn reconnect(&mut self) {
        for (msg, _) in std::mem::take(&mut self.held) {
            self.requeue(msg);
        }
    }

    fn restart(&mut self) {
        self.reconnect();
        self.ready.retain(|m| m.persistent);
    }
}

fn body(id: u64) -> Vec<u8> {
    let mut body = format!("m{id:06} ").into_bytes();
    body.resize(BODY, b'.');
    body
}

/// The id `body` was made from.
fn id_of(body: &[u8]) -> u64 {
    std::str::from_utf8(&body[1..7])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a test message: {:?}", String::from_utf8_lossy(body)))
}

/// Leveret as a child process with the small window, or the broker
/// `LEVERET_TEST_URI` names.
enum Target {
    Leveret(Broker),
    Other(String),
}

impl Target {
    fn uri(&self) -> String {
        match self {
            Target::Leveret(broker) => broker.process.uri(),
            Target::Other(uri) => uri.clone(),
        }
    }
}

/// A data directory and a config file with the small window.
struct Broker {
    process: BrokerProcess,
    data: TempDir,
    config: PathBuf,
}

impl Broker {
    fn start() -> Broker {
        let data = TempDir::new("paging-order");
        let config = data.path().with_extension("toml");
        std::fs::write(
            &config,
            format!("[storage]\nqueue_memory_window = {WINDOW}\n"),
        )
        .expect("write config file");
        let process = BrokerProcess::start_with_config(data.path(), &config);
        Broker {
            process,
            data,
            config,
        }
    }

    fn restart(&mut self) {
        self.process.sigterm_and_wait();
        self.process = BrokerProcess::start_with_config(self.data.path(), &self.config);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn open(target: &Target) -> (Connection, Channel) {
    let conn = timed_for(
        WAIT,
        "connection",
        Connection::connect(&target.uri(), ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = timed_confirm_channel(&conn, WAIT).await;
    (conn, ch)
}

/// Runs `steps` against a fresh broker and the model; panics at the first
/// difference.
async fn check(steps: Vec<Step>) {
    let mut target = match std::env::var("LEVERET_TEST_URI") {
        Ok(uri) => Target::Other(uri),
        Err(_) => Target::Leveret(Broker::start()),
    };
    let queue = unique("paging-order");
    let queue = queue.as_str();
    let (mut conn, mut ch) = open(&target).await;
    timed_for(
        WAIT,
        "queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    let mut model = Model::default();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("step {i} ({step:?})");
        match *step {
            Step::Publish {
                count,
                persistent: p,
            } => {
                let mut confirms = Vec::with_capacity(count);
                for _ in 0..count {
                    let id = model.next_id;
                    model.next_id += 1;
                    let props = if p { persistent() } else { transient() };
                    let confirm = timed_for(
                        WAIT,
                        "basic.publish",
                        ch.basic_publish(
                            "".into(),
                            queue.into(),
                            BasicPublishOptions::default(),
                            &body(id),
                            props,
                        ),
                    )
                    .await
                    .expect("basic.publish");
                    confirms.push(confirm);
                    model.ready.push_back(Msg {
                        id,
                        persistent: p,
                        delivered: false,
                    });
                }
                for confirm in confirms {
                    let c = timed_for(WAIT, "publisher confirm", confirm)
                        .await
                        .expect("publisher confirm");
                    assert!(c.is_ack(), "{at}: publish nacked");
                }
            }
            Step::Get | Step::GetNoAck => {
                let no_ack = matches!(step, Step::GetNoAck);
                let got = timed_for(
                    WAIT,
                    "basic.get",
                    ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
                )
                .await
                .expect("basic.get");
                let want = model.ready.pop_front();
                let got_id = got.as_ref().map(|m| {
                    (
                        id_of(&m.delivery.data),
                        m.delivery.redelivered,
                        m.delivery.delivery_tag,
                    )
                });
                assert_eq!(
                    got_id.map(|(id, redelivered, _)| (id, redelivered)),
                    want.map(|m| (m.id, m.delivered)),
                    "{at}: (message id, redelivered) got vs the model's front; \
                     the model's next ready: {:?}",
                    model.ready.iter().take(5).map(|m| m.id).collect::<Vec<_>>()
                );
                if let (Some((_, _, tag)), Some(mut msg), false) = (got_id, want, no_ack) {
                    msg.delivered = true;
                    model.held.push((msg, tag));
                }
            }
            Step::Ack(pick) | Step::Requeue(pick) => {
                if model.held.is_empty() {
                    continue;
                }
                let (msg, tag) = model.held.remove(pick % model.held.len());
                if matches!(step, Step::Ack(_)) {
                    timed_for(
                        WAIT,
                        "basic.ack",
                        ch.basic_ack(tag, BasicAckOptions::default()),
                    )
                    .await
                    .expect("basic.ack");
                } else {
                    timed_for(
                        WAIT,
                        "basic.reject",
                        ch.basic_reject(tag, BasicRejectOptions { requeue: true }),
                    )
                    .await
                    .expect("basic.reject");
                    model.requeue(msg);
                }
            }
            Step::Restart => {
                // close-ok comes after everything sent before it was handled.
                timed_for(WAIT, "connection.close", conn.close(200, "restart".into()))
                    .await
                    .expect("connection.close");
                match &mut target {
                    Target::Leveret(broker) => {
                        broker.restart();
                        model.restart();
                    }
                    Target::Other(_) => model.reconnect(),
                }
                (conn, ch) = open(&target).await;
            }
        }
    }
    // Whatever is left comes out in the model's order, then nothing.
    let held = std::mem::take(&mut model.held);
    for (msg, tag) in held {
        timed_for(
            WAIT,
            "basic.reject",
            ch.basic_reject(tag, BasicRejectOptions { requeue: true }),
        )
        .await
        .expect("basic.reject");
        model.requeue(msg);
    }
    let mut got = Vec::new();
    while let Some(m) = timed_for(
        WAIT,
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("basic.get")
    {
        got.push((id_of(&m.delivery.data), m.delivery.redelivered));
    }
    let want: Vec<(u64, bool)> = model.ready.iter().map(|m| (m.id, m.delivered)).collect();
    assert_eq!(
        got, want,
        "draining at the end: (message id, redelivered) got vs the model"
    );
    match target {
        Target::Leveret(mut broker) => broker.process.sigterm_and_wait(),
        Target::Other(_) => {
            let _ = ch.queue_delete(queue.into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

proptest! {
    // Each case starts a broker process and restarts it a few times.
    #![proptest_config(ProptestConfig {
        cases: 16,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_paged_durable_queue_keeps_publish_order_through_gets_acks_requeues_and_restarts(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            tokio::time::timeout(CASE_TIMEOUT, check(steps))
                .await
                .expect("case timed out (broker did not answer?)")
        });
    }
}
