//! The hot path's allocation budget, counted. A global allocator counts
//! every allocation this process makes while one publisher sends messages
//! through a queue to one consumer. Broker and clients share the process,
//! but the clients only write frames encoded beforehand and read into a
//! buffer allocated beforehand, so what is counted is the broker's
//! publish → route → enqueue → deliver (→ ack) path.
//!
//! The budget is what the path costs today, so that a change adding an
//! allocation per message fails here rather than in a benchmark: four per
//! message, all made once when the message is assembled (its routing key,
//! its raw properties, its body, and the shared `Message`); routing,
//! enqueueing, delivery and acknowledgement allocate nothing once the
//! buffers they reuse have grown.
//!
//! A test binary of its own, not a module of `tests/it`: the counting
//! allocator is global to the process, and any other test running beside
//! this one would add its allocations to the count.

#[path = "it/common/mod.rs"]
mod common;

use common::raw::*;
use common::{against_other_broker, TestBroker};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Allocations per message the broker may make.
const BUDGET: f64 = 4.0;
const QUEUE: &str = "alloc-budget";
const CONSUMER_TAG: &str = "c";
const BODY: usize = 1024;
const WARM_UP: usize = 2_000;
const MEASURED: usize = 20_000;
/// Manual acks go out every this many deliveries (multiple=true), one per
/// message as most clients send them.
const ACK_EVERY: usize = 1;

/// How messages reach the queue: the exchange, the queue's bindings to it
/// and the messages' routing key.
#[derive(Clone, Copy)]
struct Route {
    exchange: &'static str,
    bindings: &'static [&'static str],
    routing_key: &'static str,
}

/// Through the default exchange, straight to the queue.
const DIRECT: Route = Route {
    exchange: "",
    bindings: &[],
    routing_key: QUEUE,
};

/// Through amq.topic, the key matching two of three binding keys (routing
/// matches words against the keys: it must not allocate either).
const TOPIC: Route = Route {
    exchange: "amq.topic",
    bindings: &["alloc.*.#", "#.budget", "other.*"],
    routing_key: "alloc.msg.budget",
};

/// Allocations per message through a queue, counted over `MEASURED`
/// messages after `WARM_UP` (buffers and queues grown to their working
/// size).
async fn allocations_per_message(no_ack: bool, route: Route) -> f64 {
    let broker = TestBroker::start().await;
    let (mut publisher, _) = Raw::open(broker.addr).await;
    let (mut consumer, _) = Raw::open(broker.addr).await;
    publisher.open_channel(1).await;
    consumer.open_channel(1).await;
    consumer
        .send_method(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: QUEUE.into(),
                passive: false,
                durable: false,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
    consumer.next_method().await;
    consumer
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 500,
                global: false,
            })),
        )
        .await;
    consumer.next_method().await;
    consumer
        .send_method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: QUEUE.into(),
                consumer_tag: CONSUMER_TAG.into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
    consumer.next_method().await;

    for key in route.bindings {
        consumer
            .send_method(
                1,
                AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                    queue: QUEUE.into(),
                    exchange: route.exchange.into(),
                    routing_key: (*key).into(),
                    nowait: false,
                    arguments: FieldTable::default(),
                })),
            )
            .await;
        consumer.next_method().await;
    }
    let one = {
        let mut bytes = method_frame(1, &publish_method(route.exchange, route.routing_key));
        bytes.extend(header_frame(1, BODY as u64));
        bytes.extend(frame(FRAME_BODY, 1, &[b'x'; BODY]));
        bytes
    };
    let batch = |n: usize| one.repeat(n);
    let acks = |from: usize, n: usize| -> Vec<u8> {
        (1..=n / ACK_EVERY)
            .flat_map(|k| {
                method_frame(
                    1,
                    &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: (from + k * ACK_EVERY) as u64,
                        multiple: true,
                    })),
                )
            })
            .collect()
    };
    // deliver (class, method, tag, delivery tag, redelivered, exchange,
    // routing key) + header (no properties) + body, each framed.
    let delivery_size = (4
        + 1
        + CONSUMER_TAG.len()
        + 8
        + 1
        + 1
        + route.exchange.len()
        + 1
        + route.routing_key.len()
        + 8)
        + (14 + 8)
        + (BODY + 8);

    let mut inbox = vec![0u8; 1 << 20];
    let mut run = async |n: usize, from: usize| {
        let (publishing, acking) = (batch(n), acks(from, n));
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let send = async {
            publisher.send(&publishing).await;
        };
        let receive = async {
            let mut got = 0;
            let mut acked = 0;
            while got < n * delivery_size {
                let read = consumer.stream.read(&mut inbox).await.expect("read");
                assert!(read > 0, "the broker closed the consumer's connection");
                got += read;
                if !no_ack {
                    // Acknowledge what has fully arrived, in steps of ACK_EVERY.
                    let due = (got / delivery_size / ACK_EVERY) * ack_frame_size();
                    if due > acked {
                        consumer.send(&acking[acked..due]).await;
                        acked = due;
                    }
                }
            }
            assert_eq!(
                got,
                n * delivery_size,
                "deliveries of another size than expected"
            );
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            tokio::join!(send, receive)
        })
        .await
        .expect("messages went through");
        ALLOCATIONS.load(Ordering::Relaxed) - before
    };
    run(WARM_UP, 0).await;
    let counted = run(MEASURED, WARM_UP).await;
    broker.stop().await;
    counted as f64 / MEASURED as f64
}

/// Bytes of one basic.ack frame.
fn ack_frame_size() -> usize {
    4 + 8 + 1 + 8
}

// One test: the count is process-wide, so nothing else may run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_costs_few_allocations_from_publisher_to_consumer() {
    if against_other_broker() {
        return;
    }
    let no_ack = allocations_per_message(true, DIRECT).await;
    let acked = allocations_per_message(false, DIRECT).await;
    let topic = allocations_per_message(true, TOPIC).await;
    println!(
        "allocations per message: {no_ack:.2} to a no-ack consumer, {acked:.2} with acks, \
         {topic:.2} through a topic exchange"
    );
    // The slack is for the odd allocation of a background task (the
    // management sampler) during the run, not for one more per message.
    assert!(
        no_ack <= BUDGET + 0.05,
        "{no_ack:.2} allocations per message to a no-ack consumer"
    );
    assert!(
        acked <= BUDGET + 0.05,
        "{acked:.2} allocations per message with acks"
    );
    // One more for the exchange's name, which the message keeps (the
    // default exchange's is empty); matching the binding keys, none.
    assert!(
        topic <= BUDGET + 1.0 + 0.05,
        "{topic:.2} allocations per message through a topic exchange"
    );
}
