//! Exchange behaviour, pinned against RabbitMQ: routing for every exchange type,
//! exchange-to-exchange bindings, alternate exchanges, auto-delete, and the exact
//! channel errors (reply code + reply text) for the misuse cases.

use crate::common;

use common::amqp::{
    assert_closed, bind_queue, confirm_channel as channel, declare_unique, exclusive,
    get_all_bodies, open_confirmed as setup, within_for,
};
use common::unique;
use lapin::{
    options::*,
    types::{AMQPValue, FieldTable},
    BasicProperties, Channel, Confirmation, ExchangeKind,
};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// Runs a whole test body under [`TEST_TIMEOUT`].
async fn within<F: std::future::Future<Output = ()>>(test: F) {
    within_for(TEST_TIMEOUT, test).await
}

/// Publishes and waits for the publisher confirm (returns the error if the broker
/// closed the channel instead).
async fn try_publish_with(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &str,
    props: BasicProperties,
) -> lapin::Result<()> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await?;
    tokio::time::timeout(TIMEOUT, confirm)
        .await
        .expect("timed out waiting for publisher confirm")?;
    Ok(())
}

async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &str) {
    try_publish_with(ch, exchange, routing_key, body, BasicProperties::default())
        .await
        .unwrap();
}

async fn publish_headers(ch: &Channel, exchange: &str, body: &str, headers: FieldTable) {
    let props = BasicProperties::default().with_headers(headers);
    try_publish_with(ch, exchange, "", body, props)
        .await
        .unwrap();
}

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn passive_exchange(ch: &Channel, name: &str) -> lapin::Result<()> {
    ch.exchange_declare(
        name.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Declares a fresh, auto-deleting-with-the-connection queue.
async fn declare_queue(ch: &Channel) -> String {
    declare_unique(ch, "q", exclusive(), FieldTable::default()).await
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_queue(ch, queue, exchange, key, FieldTable::default()).await;
}

/// A field table of string values.
fn string_table(entries: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), AMQPValue::LongString((*v).into()));
    }
    t
}

/// Publishes one message per routing key to a topic exchange bound with `pattern`
/// and returns the keys that were routed.
async fn topic_matches(pattern: &str, keys: &[&str]) -> Vec<String> {
    let (_broker, _conn, ch) = setup().await;
    let ex = unique("topic");
    declare_exchange(&ch, &ex, ExchangeKind::Topic).await;
    let q = declare_queue(&ch).await;
    bind(&ch, &q, &ex, pattern).await;
    for key in keys {
        publish(&ch, &ex, key, key).await;
    }
    get_all_bodies(&ch, &q).await
}

/// Binds a queue to a headers exchange with `binding` arguments, publishes one message
/// per header table and returns the bodies (message indices) that were routed.
async fn headers_matches(binding: &[(&str, &str)], messages: &[&[(&str, &str)]]) -> Vec<String> {
    let (_broker, _conn, ch) = setup().await;
    let ex = unique("headers");
    declare_exchange(&ch, &ex, ExchangeKind::Headers).await;
    let q = declare_queue(&ch).await;
    bind_queue(&ch, &q, &ex, "", string_table(binding)).await;
    for (i, headers) in messages.iter().enumerate() {
        publish_headers(&ch, &ex, &i.to_string(), string_table(headers)).await;
    }
    get_all_bodies(&ch, &q).await
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn direct_exchange_routes_on_exact_key() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("direct");
        declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
        let qa = declare_queue(&ch).await;
        let qb = declare_queue(&ch).await;
        bind(&ch, &qa, &ex, "a").await;
        bind(&ch, &qb, &ex, "b").await;
        bind(&ch, &qb, &ex, "a.b").await;

        publish(&ch, &ex, "a", "1").await;
        publish(&ch, &ex, "b", "2").await;
        publish(&ch, &ex, "a.b", "3").await;
        publish(&ch, &ex, "A", "4").await; // keys are case-sensitive
        publish(&ch, &ex, "c", "5").await;

        assert_eq!(get_all_bodies(&ch, &qa).await, ["1"]);
        assert_eq!(get_all_bodies(&ch, &qb).await, ["2", "3"]);
    })
    .await
}

#[tokio::test]
async fn direct_exchange_delivers_once_per_queue_with_duplicate_bindings() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("direct");
        declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &ex, "k").await;
        bind(&ch, &q, &ex, "k").await;
        publish(&ch, &ex, "k", "once").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["once"]);
    })
    .await
}

#[tokio::test]
async fn fanout_exchange_routes_to_every_bound_queue_ignoring_key() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("fanout");
        declare_exchange(&ch, &ex, ExchangeKind::Fanout).await;
        let q1 = declare_queue(&ch).await;
        let q2 = declare_queue(&ch).await;
        let q3 = declare_queue(&ch).await;
        let unbound = declare_queue(&ch).await;
        bind(&ch, &q1, &ex, "").await;
        bind(&ch, &q2, &ex, "whatever").await;
        bind(&ch, &q3, &ex, "x.y").await;

        publish(&ch, &ex, "some.key", "m").await;

        assert_eq!(get_all_bodies(&ch, &q1).await, ["m"]);
        assert_eq!(get_all_bodies(&ch, &q2).await, ["m"]);
        assert_eq!(get_all_bodies(&ch, &q3).await, ["m"]);
        assert!(get_all_bodies(&ch, &unbound).await.is_empty());
    })
    .await
}

#[tokio::test]
async fn topic_star_matches_exactly_one_word() {
    within(async {
        let routed = topic_matches(
            "a.*.c",
            &[
                "a.b.c", "a.x.c", "a.c", "a.b.b.c", "a.b.c.d", "x.b.c", "a..c",
            ],
        )
        .await;
        // An empty word still counts as a word.
        assert_eq!(routed, ["a.b.c", "a.x.c", "a..c"]);
    })
    .await
}

#[tokio::test]
async fn topic_hash_matches_zero_or_more_words() {
    within(async {
        let routed = topic_matches("a.#", &["a", "a.b", "a.b.c", "b.a", "ab"]).await;
        assert_eq!(routed, ["a", "a.b", "a.b.c"]);
    })
    .await
}

#[tokio::test]
async fn topic_lone_hash_matches_everything_including_empty_key() {
    within(async {
        let routed = topic_matches("#", &["", "a", "a.b.c"]).await;
        assert_eq!(routed, ["", "a", "a.b.c"]);
    })
    .await
}

#[tokio::test]
async fn topic_hash_in_the_middle() {
    within(async {
        let routed = topic_matches(
            "a.#.b",
            &["a.b", "a.x.b", "a.x.y.b", "a.b.c", "x.a.b", "a.bb", "a.b.b"],
        )
        .await;
        assert_eq!(routed, ["a.b", "a.x.b", "a.x.y.b", "a.b.b"]);
    })
    .await
}

#[tokio::test]
async fn topic_leading_star_and_hash_combinations() {
    within(async {
        let routed = topic_matches("*.#", &["", "a", "a.b", "a.b.c"]).await;
        assert_eq!(routed, ["a", "a.b", "a.b.c"]);
        let routed = topic_matches("#.*.c", &["c", "a.c", "a.b.c", "a.b"]).await;
        assert_eq!(routed, ["a.c", "a.b.c"]);
    })
    .await
}

#[tokio::test]
async fn topic_without_wildcards_is_exact_match() {
    within(async {
        let routed = topic_matches("a.b", &["a.b", "a.b.c", "a", "A.B"]).await;
        assert_eq!(routed, ["a.b"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_x_match_all() {
    within(async {
        let routed = headers_matches(
            &[("x-match", "all"), ("a", "1"), ("b", "2")],
            &[
                &[("a", "1"), ("b", "2")],             // 0: all match
                &[("a", "1"), ("b", "2"), ("c", "3")], // 1: extra headers are fine
                &[("a", "1")],                         // 2: missing b
                &[("a", "1"), ("b", "9")],             // 3: wrong value
                &[],                                   // 4: no headers
            ],
        )
        .await;
        assert_eq!(routed, ["0", "1"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_x_match_any() {
    within(async {
        let routed = headers_matches(
            &[("x-match", "any"), ("a", "1"), ("b", "2")],
            &[
                &[("a", "1")],             // 0
                &[("b", "2"), ("c", "3")], // 1
                &[("a", "9"), ("b", "9")], // 2: values differ
                &[("c", "3")],             // 3
            ],
        )
        .await;
        assert_eq!(routed, ["0", "1"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_defaults_to_x_match_all() {
    within(async {
        let routed = headers_matches(
            &[("a", "1"), ("b", "2")],
            &[&[("a", "1")], &[("a", "1"), ("b", "2")]],
        )
        .await;
        assert_eq!(routed, ["1"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_all_ignores_x_prefixed_binding_args() {
    within(async {
        let routed = headers_matches(
            &[("x-match", "all"), ("x-foo", "1"), ("a", "1")],
            &[
                &[("a", "1")],                 // 0: x-foo not required
                &[("a", "1"), ("x-foo", "2")], // 1: x-foo value irrelevant
            ],
        )
        .await;
        assert_eq!(routed, ["0", "1"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_all_with_x_requires_x_prefixed_args() {
    within(async {
        let routed = headers_matches(
            &[("x-match", "all-with-x"), ("x-foo", "1"), ("a", "1")],
            &[
                &[("a", "1")],                 // 0: x-foo missing
                &[("a", "1"), ("x-foo", "2")], // 1: x-foo differs
                &[("a", "1"), ("x-foo", "1")], // 2: all match
            ],
        )
        .await;
        assert_eq!(routed, ["2"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_any_ignores_x_prefixed_binding_args() {
    within(async {
        let routed = headers_matches(
            &[("x-match", "any"), ("x-foo", "1"), ("a", "1")],
            &[
                &[("x-foo", "1")], // 0: only an x- header matches: ignored
                &[("a", "1")],     // 1
            ],
        )
        .await;
        assert_eq!(routed, ["1"]);
    })
    .await
}

#[tokio::test]
async fn headers_exchange_any_with_x_matches_on_x_prefixed_args() {
    within(async {
        let routed = headers_matches(
            &[("x-match", "any-with-x"), ("x-foo", "1"), ("a", "1")],
            &[
                &[("x-foo", "1")], // 0
                &[("a", "1")],     // 1
                &[("x-foo", "2")], // 2
            ],
        )
        .await;
        assert_eq!(routed, ["0", "1"]);
    })
    .await
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare_queue(&ch).await;
        let other = declare_queue(&ch).await;
        publish(&ch, "", &q, "direct-to-queue").await;
        publish(&ch, "", &unique("no-such-queue"), "dropped").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["direct-to-queue"]);
        assert!(get_all_bodies(&ch, &other).await.is_empty());
    })
    .await
}

#[tokio::test]
async fn exchange_to_exchange_bind_and_unbind() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let src = unique("e2e-src");
        let dst = unique("e2e-dst");
        declare_exchange(&ch, &src, ExchangeKind::Direct).await;
        declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &dst, "").await;
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

        publish(&ch, &src, "k", "via-binding").await;
        publish(&ch, &src, "other", "not-matching").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["via-binding"]);

        ch.exchange_unbind(
            dst.as_str().into(),
            src.as_str().into(),
            "k".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, &src, "k", "after-unbind").await;
        assert!(get_all_bodies(&ch, &q).await.is_empty());
    })
    .await
}

#[tokio::test]
async fn exchange_to_exchange_delivers_once_per_queue_across_paths() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let src = unique("e2e-src");
        let dst = unique("e2e-dst");
        declare_exchange(&ch, &src, ExchangeKind::Fanout).await;
        declare_exchange(&ch, &dst, ExchangeKind::Fanout).await;
        let q = declare_queue(&ch).await;
        // q is reachable both directly and through dst.
        bind(&ch, &q, &src, "").await;
        bind(&ch, &q, &dst, "").await;
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, &src, "", "once").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["once"]);
    })
    .await
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ae = unique("ae");
        declare_exchange(&ch, &ae, ExchangeKind::Fanout).await;
        let ae_q = declare_queue(&ch).await;
        bind(&ch, &ae_q, &ae, "").await;

        let ex = unique("with-ae");
        let mut args = FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(ae.as_str().into()),
        );
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &ex, "known").await;

        publish(&ch, &ex, "known", "routed").await;
        publish(&ch, &ex, "unknown", "unroutable").await;

        assert_eq!(get_all_bodies(&ch, &q).await, ["routed"]);
        assert_eq!(get_all_bodies(&ch, &ae_q).await, ["unroutable"]);
    })
    .await
}

/// Publishes with mandatory=true and returns the basic.return (code, text), if any.
async fn publish_mandatory(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
) -> Option<(u16, String)> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirmation = tokio::time::timeout(TIMEOUT, confirm)
        .await
        .expect("timed out waiting for publisher confirm")
        .unwrap();
    match confirmation {
        Confirmation::Ack(ret) => ret.map(|r| (r.reply_code, r.reply_text.to_string())),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned_with_312_no_route() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("direct");
        declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &ex, "known").await;
        assert_eq!(
            publish_mandatory(&ch, &ex, "unknown").await,
            Some((312, "NO_ROUTE".to_string()))
        );
        assert_eq!(publish_mandatory(&ch, &ex, "known").await, None);
    })
    .await
}

#[tokio::test]
async fn mandatory_message_routed_via_alternate_exchange_is_not_returned() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ae = unique("ae");
        declare_exchange(&ch, &ae, ExchangeKind::Fanout).await;
        let ae_q = declare_queue(&ch).await;
        bind(&ch, &ae_q, &ae, "").await;
        let ex = unique("with-ae");
        let mut args = FieldTable::default();
        args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(ae.as_str().into()),
        );
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        )
        .await
        .unwrap();
        assert_eq!(publish_mandatory(&ch, &ex, "unknown").await, None);
        assert_eq!(get_all_bodies(&ch, &ae_q).await, ["m"]);
    })
    .await
}

// ---------------------------------------------------------------- declare / delete

#[tokio::test]
async fn predeclared_amq_exchanges_exist() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        for name in [
            "amq.direct",
            "amq.fanout",
            "amq.topic",
            "amq.headers",
            "amq.match",
        ] {
            passive_exchange(&ch, name)
                .await
                .unwrap_or_else(|e| panic!("{name} should exist: {e}"));
        }
    })
    .await
}

#[tokio::test]
async fn passive_declare_of_default_exchange_is_403() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        assert_closed(
            passive_exchange(&ch, "").await,
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        );
    })
    .await
}

#[tokio::test]
async fn predeclared_amq_exchanges_route() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare_queue(&ch).await;
        bind(&ch, &q, "amq.direct", &q).await;
        bind(&ch, &q, "amq.topic", &format!("{q}.#")).await;
        publish(&ch, "amq.direct", &q, "direct").await;
        publish(&ch, "amq.topic", &format!("{q}.x.y"), "topic").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["direct", "topic"]);
    })
    .await
}

#[tokio::test]
async fn redeclare_with_same_properties_is_ok() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("ex");
        declare_exchange(&ch, &ex, ExchangeKind::Topic).await;
        declare_exchange(&ch, &ex, ExchangeKind::Topic).await;
        passive_exchange(&ch, &ex).await.unwrap();
        ch.exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn passive_declare_of_missing_exchange_is_404() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("missing");
        assert_closed(
            passive_exchange(&ch, &ex).await,
            404,
            &format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"),
        );
    })
    .await
}

#[tokio::test]
async fn declaring_amq_prefixed_exchange_is_403() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let name = unique("amq.custom");
        let res = ch
            .exchange_declare(
                name.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(
            res,
            403,
            &format!("ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"),
        );
    })
    .await
}

#[tokio::test]
async fn redeclare_with_different_type_is_406() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let ex = unique("ex");
        declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
        let res = ch
            .exchange_declare(
                ex.as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(
            res,
            406,
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{ex}' in vhost '/': \
                 received 'fanout' but current is 'direct'"
            ),
        );
        // The original exchange is untouched.
        let ch = channel(&conn).await;
        passive_exchange(&ch, &ex).await.unwrap();
        ch.exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn redeclare_with_different_durable_flag_is_406() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let ex = unique("ex");
        declare_exchange(&ch, &ex, ExchangeKind::Direct).await;
        let res = ch
            .exchange_declare(
                ex.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        assert_closed(
            res,
            406,
            &format!(
                "PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{ex}' in vhost '/': \
                 received 'true' but current is 'false'"
            ),
        );
        let ch = channel(&conn).await;
        ch.exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    })
    .await
}

#[tokio::test]
async fn binding_to_default_exchange_is_403() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let q = declare_queue(&ch).await;
        let res = ch
            .queue_bind(
                q.as_str().into(),
                "".into(),
                q.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert_closed(
            res,
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        );
    })
    .await
}

#[tokio::test]
async fn deleting_default_exchange_is_403() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let res = ch
            .exchange_delete("".into(), ExchangeDeleteOptions::default())
            .await;
        assert_closed(
            res,
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange",
        );
    })
    .await
}

#[tokio::test]
async fn deleting_missing_exchange_is_ok() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        ch.exchange_delete(
            unique("never-declared").as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    })
    .await
}

#[tokio::test]
async fn delete_if_unused_with_bindings_is_406() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let ex = unique("ex");
        declare_exchange(&ch, &ex, ExchangeKind::Fanout).await;
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &ex, "").await;
        let res = ch
            .exchange_delete(
                ex.as_str().into(),
                ExchangeDeleteOptions {
                    if_unused: true,
                    ..Default::default()
                },
            )
            .await;
        assert_closed(
            res,
            406,
            &format!("PRECONDITION_FAILED - exchange '{ex}' in vhost '/' in use"),
        );
        // Still there, and a plain delete works.
        let ch = channel(&conn).await;
        passive_exchange(&ch, &ex).await.unwrap();
        ch.exchange_delete(ex.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
        assert_closed(
            passive_exchange(&ch, &ex).await,
            404,
            &format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"),
        );
    })
    .await
}

#[tokio::test]
async fn delete_if_unused_without_bindings_succeeds() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("ex");
        declare_exchange(&ch, &ex, ExchangeKind::Fanout).await;
        ch.exchange_delete(
            ex.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    })
    .await
}

#[tokio::test]
async fn auto_delete_exchange_is_deleted_when_last_binding_goes() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("autodel");
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        // Never having had a binding, it stays.
        passive_exchange(&ch, &ex).await.unwrap();

        let q = declare_queue(&ch).await;
        bind(&ch, &q, &ex, "a").await;
        bind(&ch, &q, &ex, "b").await;
        ch.queue_unbind(
            q.as_str().into(),
            ex.as_str().into(),
            "a".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        // One binding left: still there.
        passive_exchange(&ch, &ex).await.unwrap();

        ch.queue_unbind(
            q.as_str().into(),
            ex.as_str().into(),
            "b".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        assert_closed(
            passive_exchange(&ch, &ex).await,
            404,
            &format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"),
        );
    })
    .await
}

#[tokio::test]
async fn auto_delete_exchange_is_deleted_when_bound_queue_is_deleted() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("autodel");
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &ex, "").await;
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        assert_closed(
            passive_exchange(&ch, &ex).await,
            404,
            &format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"),
        );
    })
    .await
}

// ---------------------------------------------------------------- publish errors

#[tokio::test]
async fn publish_to_internal_exchange_closes_channel_403() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let ex = unique("internal");
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let res = try_publish_with(&ch, &ex, "", "nope", BasicProperties::default()).await;
        assert_closed(
            res,
            403,
            &format!("ACCESS_REFUSED - cannot publish to internal exchange '{ex}' in vhost '/'"),
        );
    })
    .await
}

#[tokio::test]
async fn internal_exchange_routes_via_exchange_binding() {
    within(async {
        let (_broker, _conn, ch) = setup().await;
        let internal = unique("internal");
        ch.exchange_declare(
            internal.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let front = unique("front");
        declare_exchange(&ch, &front, ExchangeKind::Fanout).await;
        ch.exchange_bind(
            internal.as_str().into(),
            front.as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let q = declare_queue(&ch).await;
        bind(&ch, &q, &internal, "").await;
        publish(&ch, &front, "", "through").await;
        assert_eq!(get_all_bodies(&ch, &q).await, ["through"]);
    })
    .await
}

#[tokio::test]
async fn publish_to_missing_exchange_closes_channel_404() {
    within(async {
        let (_broker, conn, ch) = setup().await;
        let ex = unique("missing");
        let res = try_publish_with(&ch, &ex, "k", "nope", BasicProperties::default()).await;
        assert_closed(
            res,
            404,
            &format!("NOT_FOUND - no exchange '{ex}' in vhost '/'"),
        );
        // Only the channel is closed; the connection remains usable.
        let ch2 = channel(&conn).await;
        publish(&ch2, "amq.direct", "k", "fine").await;
    })
    .await
}
