//! Seed inputs built from what real clients send (frames encoded by
//! amq-protocol, as lapin sends them), so that the fuzzer starts past the
//! handshake and inside every class of method instead of guessing them.
//!
//! `cargo test --test it fuzz_regressions:: -- --ignored write_seed_corpora`
//! writes them to `fuzz/seeds/<target>/`.

use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
use amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, gen_class, queue, tx, AMQPClass,
};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

fn method_payload(class: &AMQPClass) -> Vec<u8> {
    cookie_factory::gen_simple(gen_class(class), Vec::new()).expect("a method encodes")
}

fn encode_properties(props: &AMQPProperties) -> Vec<u8> {
    cookie_factory::gen_simple(gen_properties(props), Vec::new()).expect("properties encode")
}

fn encode_table(table: &FieldTable) -> Vec<u8> {
    cookie_factory::gen_simple(gen_field_table(table), Vec::new()).expect("a table encodes")
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// A table holding one value of every field type RabbitMQ knows (not
/// amq-protocol's short string, which RabbitMQ does not accept).
fn every_type() -> FieldTable {
    table(&[
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(2.5)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        ("long", long("text")),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                long("two"),
                AMQPValue::FieldTable(table(&[("k", AMQPValue::Boolean(false))])),
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        (
            "table",
            AMQPValue::FieldTable(table(&[("nested", long("v"))])),
        ),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3])),
        ),
        ("void", AMQPValue::Void),
    ])
}

fn client_properties() -> FieldTable {
    let caps = table(&[
        ("authentication_failure_close", AMQPValue::Boolean(true)),
        ("consumer_cancel_notify", AMQPValue::Boolean(true)),
        ("basic.nack", AMQPValue::Boolean(true)),
        ("publisher_confirms", AMQPValue::Boolean(true)),
        ("connection.blocked", AMQPValue::Boolean(true)),
    ]);
    table(&[
        ("product", long("lapin")),
        ("version", long("4.0.0")),
        ("platform", long("rust")),
        ("capabilities", AMQPValue::FieldTable(caps)),
    ])
}

/// Every property set, headers of every type.
fn full_properties(reply_to: &str) -> AMQPProperties {
    AMQPProperties::default()
        .with_content_type("text/plain".into())
        .with_content_encoding("utf-8".into())
        .with_headers(every_type())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1".into())
        .with_reply_to(reply_to.into())
        .with_expiration("60000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("kind".into())
        .with_user_id("guest".into())
        .with_app_id("app".into())
        .with_cluster_id("cluster".into())
}

/// A client's bytes, frame by frame.
#[derive(Default)]
struct Session {
    bytes: Vec<u8>,
}

impl Session {
    fn method(mut self, channel: u16, class: AMQPClass) -> Self {
        self.bytes
            .extend(frame(FRAME_METHOD, channel, &method_payload(&class)));
        self
    }

    fn open_channel(self, channel: u16) -> Self {
        self.method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
    }

    fn declare_queue(self, channel: u16, name: &str, durable: bool, arguments: FieldTable) -> Self {
        self.method(
            channel,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                passive: false,
                durable,
                exclusive: false,
                auto_delete: false,
                nowait: false,
                arguments,
            })),
        )
    }

    fn declare_exchange(self, channel: u16, name: &str, kind: &str, arguments: FieldTable) -> Self {
        self.method(
            channel,
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: name.into(),
                kind: kind.into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments,
            })),
        )
    }

    fn bind(self, channel: u16, queue: &str, exchange: &str, key: &str, args: FieldTable) -> Self {
        self.method(
            channel,
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                nowait: false,
                arguments: args,
            })),
        )
    }

    /// basic.publish, its content header and the body in two frames.
    fn publish(
        mut self,
        channel: u16,
        exchange: &str,
        key: &str,
        props: &AMQPProperties,
        body: &[u8],
    ) -> Self {
        self = self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: exchange.into(),
                routing_key: key.into(),
                mandatory: true,
                immediate: false,
            })),
        );
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend(encode_properties(props));
        self.bytes.extend(frame(FRAME_HEADER, channel, &header));
        let (a, b) = body.split_at(body.len() / 2);
        for part in [a, b] {
            if !part.is_empty() {
                self.bytes.extend(frame(FRAME_BODY, channel, part));
            }
        }
        self
    }

    fn consume(self, channel: u16, queue: &str, no_ack: bool, arguments: FieldTable) -> Self {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack,
                exclusive: false,
                nowait: false,
                arguments,
            })),
        )
    }

    fn get(self, channel: u16, queue: &str, no_ack: bool) -> Self {
        self.method(
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.into(),
                no_ack,
            })),
        )
    }

    fn close_channel(self, channel: u16) -> Self {
        self.method(
            channel,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
    }

    fn close_connection(self) -> Self {
        self.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
    }
}

/// What a client sends up to and including connection.open: guest on "/",
/// the broker's limits accepted, no heartbeats.
pub fn login() -> Vec<u8> {
    login_as("PLAIN", b"\0guest\0guest")
}

fn login_as(mechanism: &str, response: &[u8]) -> Vec<u8> {
    let mut bytes = PROTOCOL_HEADER.to_vec();
    bytes.extend(
        Session::default()
            .method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                    client_properties: client_properties(),
                    mechanism: mechanism.into(),
                    response: response.to_vec().into(),
                    locale: "en_US".into(),
                })),
            )
            .method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                    channel_max: 2047,
                    frame_max: 131072,
                    heartbeat: 0,
                })),
            )
            .method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                    virtual_host: "/".into(),
                })),
            )
            .bytes,
    );
    bytes
}

/// Client traffic after login, one session per kind of work.
pub fn sessions() -> Vec<(&'static str, Vec<u8>)> {
    let plain = AMQPProperties::default();
    let persistent = AMQPProperties::default().with_delivery_mode(2);
    let queue_args = table(&[
        ("x-message-ttl", AMQPValue::LongInt(60_000)),
        ("x-max-length", AMQPValue::LongInt(100)),
        ("x-max-priority", AMQPValue::ShortShortUInt(10)),
        ("x-overflow", long("reject-publish")),
        ("x-queue-mode", long("lazy")),
    ]);
    let dead_letter_args = table(&[
        ("x-dead-letter-exchange", long("")),
        ("x-dead-letter-routing-key", long("dlq")),
        ("x-message-ttl", AMQPValue::LongInt(0)),
    ]);
    let ack = |tag: u64, multiple: bool| {
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: tag,
            multiple,
        }))
    };
    vec![
        (
            "publish_get_ack",
            Session::default()
                .open_channel(1)
                .declare_queue(1, "q", false, queue_args.clone())
                .publish(1, "", "q", &full_properties("replies"), b"hello, world")
                .publish(1, "", "q", &plain, b"")
                .get(1, "q", false)
                .method(1, ack(1, false))
                .get(1, "q", true)
                .close_channel(1)
                .close_connection()
                .bytes,
        ),
        (
            "consume_qos_nack_reject",
            Session::default()
                .open_channel(1)
                .method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                        prefetch_count: 10,
                        global: false,
                    })),
                )
                .declare_queue(1, "work", true, FieldTable::default())
                .publish(1, "", "work", &persistent, b"one")
                .publish(1, "", "work", &persistent, b"two")
                .publish(1, "", "work", &persistent, b"three")
                .consume(
                    1,
                    "work",
                    false,
                    table(&[("x-priority", AMQPValue::LongInt(5))]),
                )
                .method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: 1,
                        multiple: false,
                        requeue: true,
                    })),
                )
                .method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
                        delivery_tag: 2,
                        requeue: false,
                    })),
                )
                .method(1, ack(3, true))
                .method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
                )
                .method(
                    1,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: "amq.ctag-1".into(),
                        nowait: false,
                    })),
                )
                .method(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
                        queue: "work".into(),
                        nowait: false,
                    })),
                )
                .method(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
                        queue: "work".into(),
                        if_unused: false,
                        if_empty: false,
                        nowait: false,
                    })),
                )
                .bytes,
        ),
        (
            "exchanges_and_bindings",
            Session::default()
                .open_channel(1)
                .declare_exchange(1, "topic", "topic", FieldTable::default())
                .declare_exchange(1, "headers", "headers", FieldTable::default())
                .declare_exchange(
                    1,
                    "fanout",
                    "fanout",
                    table(&[("alternate-exchange", long("amq.fanout"))]),
                )
                .declare_queue(1, "", false, FieldTable::default())
                .bind(1, "", "topic", "a.*.#", FieldTable::default())
                .bind(
                    1,
                    "",
                    "headers",
                    "",
                    table(&[("x-match", long("any")), ("k", AMQPValue::LongInt(7))]),
                )
                .method(
                    1,
                    AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                        destination: "fanout".into(),
                        source: "topic".into(),
                        routing_key: "#".into(),
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                )
                .publish(1, "topic", "a.b.c", &plain, b"topic")
                .publish(
                    1,
                    "headers",
                    "",
                    &AMQPProperties::default().with_headers(table(&[("k", AMQPValue::LongInt(7))])),
                    b"headers",
                )
                .publish(1, "amq.direct", "unbound", &plain, b"returned")
                .method(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                        queue: "".into(),
                        exchange: "topic".into(),
                        routing_key: "a.*.#".into(),
                        arguments: FieldTable::default(),
                    })),
                )
                .method(
                    1,
                    AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                        destination: "fanout".into(),
                        source: "topic".into(),
                        routing_key: "#".into(),
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                )
                .method(
                    1,
                    AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
                        exchange: "topic".into(),
                        if_unused: false,
                        nowait: false,
                    })),
                )
                .bytes,
        ),
        (
            "confirms_and_transactions",
            Session::default()
                .open_channel(1)
                .open_channel(2)
                .method(
                    1,
                    AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                        nowait: false,
                    })),
                )
                .declare_queue(1, "c", false, FieldTable::default())
                .publish(1, "", "c", &persistent, b"confirm me")
                .method(2, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})))
                .publish(2, "", "c", &plain, b"in a transaction")
                .method(2, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})))
                .publish(2, "", "c", &plain, b"rolled back")
                .method(2, AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})))
                .method(
                    1,
                    AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: false })),
                )
                .bytes,
        ),
        (
            "dead_letters_and_reply_to",
            Session::default()
                .open_channel(1)
                .declare_queue(1, "dlq", false, FieldTable::default())
                .declare_queue(1, "expiring", false, dead_letter_args)
                .publish(
                    1,
                    "",
                    "expiring",
                    &full_properties("replies"),
                    b"dies at once",
                )
                .consume(1, "amq.rabbitmq.reply-to", true, FieldTable::default())
                .publish(
                    1,
                    "",
                    "dlq",
                    &full_properties("amq.rabbitmq.reply-to"),
                    b"please reply",
                )
                .get(1, "dlq", false)
                .bytes,
        ),
        (
            "heartbeats_and_channel_errors",
            Session::default()
                .open_channel(1)
                .method(
                    1,
                    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                        queue: "missing".into(),
                        passive: true,
                        durable: false,
                        exclusive: false,
                        auto_delete: false,
                        nowait: false,
                        arguments: FieldTable::default(),
                    })),
                )
                .method(
                    1,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                )
                .open_channel(3)
                .bytes
                .into_iter()
                .chain(frame(FRAME_HEARTBEAT, 0, &[]))
                .collect(),
        ),
    ]
}

/// Seeds for every target, as (target, name, bytes).
pub fn corpora() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let login = login();
    for (name, session) in sessions() {
        let mut whole = login.clone();
        whole.extend_from_slice(&session);
        out.push(("connection_after_login", name.to_string(), session.clone()));
        out.push(("connection_before_login", name.to_string(), whole.clone()));
        for chunk in [0u8, 6, 255] {
            let mut stream = vec![chunk];
            stream.extend_from_slice(&whole);
            out.push(("frame", format!("{name}_chunk{chunk}"), stream));
        }
        // Each frame's payload: methods for `method`, content-header
        // properties for `properties`.
        let mut rest = &whole[PROTOCOL_HEADER.len()..];
        let mut n = 0;
        while rest.len() >= 8 {
            let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
            let payload = &rest[7..7 + size];
            match rest[0] {
                FRAME_METHOD => out.push(("method", format!("{name}_{n}"), payload.to_vec())),
                FRAME_HEADER => {
                    out.push(("properties", format!("{name}_{n}"), payload[12..].to_vec()))
                }
                _ => {}
            }
            rest = &rest[8 + size..];
            n += 1;
        }
    }
    let amqplain = encode_table(&table(&[
        ("LOGIN", long("guest")),
        ("PASSWORD", long("guest")),
    ]));
    out.push((
        "connection_before_login",
        "amqplain_login".into(),
        login_as("AMQPLAIN", &amqplain[4..]),
    ));
    for (name, t) in [
        ("every_type", every_type()),
        ("client_properties", client_properties()),
        (
            "amqplain",
            table(&[("LOGIN", long("guest")), ("PASSWORD", long("guest"))]),
        ),
    ] {
        out.push(("field_table", name.to_string(), encode_table(&t)));
    }
    out
}

/// A field table nested `depth` levels deep ({"a": {"a": ...}}), with its
/// length, built in one pass.
pub fn nested_table(depth: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(depth as usize * 7 + 4);
    for level in 0..depth {
        bytes.extend_from_slice(&(7 * (depth - level)).to_be_bytes());
        bytes.extend_from_slice(&[1, b'a', b'F']);
    }
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes
}

/// Inputs for every target carrying a table nested `depth` levels deep:
/// at 10,000 (as many as RabbitMQ accepts after login), the known stack
/// overflow of recursive field-table parsing, through each entry point.
pub fn nested_table_inputs(depth: u32) -> Vec<(&'static str, String, Vec<u8>)> {
    let table = nested_table(depth);
    // queue.declare "q" with the table as its arguments.
    let mut declare = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
    declare.extend_from_slice(&table);
    let declare_frames = Session::default()
        .open_channel(1)
        .bytes
        .into_iter()
        .chain(frame(FRAME_METHOD, 1, &declare))
        .collect::<Vec<u8>>();
    // connection.start-ok with the table as its client properties.
    let mut start_ok = vec![0, 10, 0, 11];
    start_ok.extend_from_slice(&table);
    start_ok.extend_from_slice(b"\x05PLAIN\x00\x00\x00\x0c\x00guest\x00guest\x05en_US");
    let mut before_login = PROTOCOL_HEADER.to_vec();
    before_login.extend(frame(FRAME_METHOD, 0, &start_ok));
    // Basic properties with only headers set, to the table.
    let mut properties = vec![0x20, 0];
    properties.extend_from_slice(&table);
    vec![
        ("field_table", format!("depth_{depth}"), table),
        ("method", format!("queue_declare_depth_{depth}"), declare),
        ("properties", format!("headers_depth_{depth}"), properties),
        (
            "connection_after_login",
            format!("queue_declare_depth_{depth}"),
            declare_frames,
        ),
        (
            "connection_before_login",
            format!("start_ok_depth_{depth}"),
            before_login,
        ),
    ]
}
