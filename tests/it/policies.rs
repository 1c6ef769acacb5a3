//! Policies and operator policies, as a user sees them: set over the
//! management API, acting on queues and exchanges that clients use over
//! AMQP. Each test that describes shared behaviour also runs against
//! RabbitMQ (`LEVERET_TEST_URI` and `LEVERET_TEST_MGMT`); names are unique
//! and patterns anchored, so nothing else on that broker is touched, and
//! every test removes what it made.

use crate::common;

use common::amqp::*;
use common::http::{Api, Reply};
use common::process::{BrokerProcess, TempDir};
use common::{unique, TestBroker};
use lapin::message::Delivery;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// RabbitMQ applies a policy to a queue a moment after answering the
/// request (a message to the queue's process); Leveret before answering.
async fn settle() {
    if common::against_other_broker() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn path(kind: &str, name: &str) -> String {
    format!("/api/{kind}/%2f/{name}")
}

async fn set(api: &Api, kind: &str, name: &str, body: Value) {
    let r = api.put(&path(kind, name), body).await;
    assert!(r.status == 201 || r.status == 204, "set {name}: {r:?}");
    settle().await;
}

async fn clear(api: &Api, kind: &str, name: &str) {
    let r = api.delete(&path(kind, name)).await;
    assert_eq!(r.status, 204, "clear {name}: {r:?}");
    settle().await;
}

/// A pattern for exactly this name.
fn exactly(name: &str) -> String {
    format!("^{}$", regex_escape(name))
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

async fn publish_n(ch: &Channel, queue: &str, from: usize, n: usize) {
    for i in from..from + n {
        publish_props(ch, "", queue, i.to_string().as_bytes(), transient()).await;
    }
}

async fn queue_json(api: &Api, name: &str) -> Value {
    let r = api.get(&path("queues", name)).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json
}

/// Waits until the API's queue object shows `want` at `field` (RabbitMQ's
/// shows a queue's statistics, policy included, a few seconds late).
async fn wait_shown(api: &Api, queue: &str, field: &str, want: Value) {
    common::wait_for(&format!("{queue}'s {field} to be {want}"), WAIT, || async {
        let shown = queue_json(api, queue).await[field].clone();
        if shown == want {
            Ok(())
        } else {
            Err(shown)
        }
    })
    .await
}

fn header<'a>(d: &'a Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
}

/// The reason of the first `x-death` entry.
fn death_reason(d: &Delivery) -> String {
    let Some(AMQPValue::FieldArray(a)) = header(d, "x-death") else {
        panic!("no x-death on {:?}", d.properties)
    };
    let Some(AMQPValue::FieldTable(t)) = a.as_slice().first() else {
        panic!("empty x-death")
    };
    match t.inner().get("reason") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("x-death reason: {other:?}"),
    }
}

async fn delete_queues(ch: &Channel, names: &[&str]) {
    for n in names {
        let _ = ch
            .queue_delete((*n).into(), QueueDeleteOptions::default())
            .await;
    }
}

/// A lower max-length set by policy trims a queue that already holds more:
/// the oldest go, dead-lettered with reason maxlen to the policy's DLX.
#[tokio::test]
async fn a_policy_max_length_trims_an_existing_queue() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    let q = unique("pol-trim");
    let dead = unique("pol-trim-dead");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue(
        &ch,
        &dead,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    publish_n(&ch, &q, 1, 5).await;
    wait_ready(&ch, &q, 5).await;
    let policy = unique("pol-trim");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q), "apply-to": "queues",
               "definition": {"max-length": 2, "dead-letter-exchange": "", "dead-letter-routing-key": dead}}),
    )
    .await;
    wait_ready(&ch, &q, 2).await;
    assert_eq!(get_all_bodies(&ch, &q).await, ["4", "5"], "the newest stay");
    let dropped = consume_exactly(&ch, &dead, 3).await;
    assert_eq!(texts(&dropped), ["1", "2", "3"]);
    assert_eq!(death_reason(&dropped[0]), "maxlen");
    wait_shown(&api, &q, "policy", json!(policy)).await;
    let shown = queue_json(&api, &q).await;
    assert_eq!(shown["operator_policy"], Value::Null);
    assert_eq!(shown["effective_policy_definition"]["max-length"], json!(2));
    clear(&api, "policies", &policy).await;
    wait_shown(&api, &q, "policy", Value::Null).await;
    delete_queues(&ch, &[&q, &dead]).await;
}

/// message-ttl and a dead-letter exchange by policy: messages published
/// after it is set expire and go to the DLX with reason expired.
#[tokio::test]
async fn a_policy_message_ttl_expires_messages_to_its_dead_letter_exchange() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    let q = unique("pol-ttl");
    let dead = unique("pol-ttl-dead");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    declare_queue(
        &ch,
        &dead,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let policy = unique("pol-ttl");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q),
               "definition": {"message-ttl": 100, "dead-letter-exchange": "", "dead-letter-routing-key": dead}}),
    )
    .await;
    publish_n(&ch, &q, 1, 2).await;
    let expired = consume_exactly(&ch, &dead, 2).await;
    assert_eq!(texts(&expired), ["1", "2"]);
    assert_eq!(death_reason(&expired[0]), "expired");
    assert_eq!(ready_count(&ch, &q).await, 0);
    clear(&api, "policies", &policy).await;
    delete_queues(&ch, &[&q, &dead]).await;
}

/// expires by policy deletes a queue that is already idle, counting from
/// when the policy applies; clearing it before then keeps the queue.
#[tokio::test]
async fn a_policy_expires_deletes_an_idle_queue() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("pol-exp");
    let kept = unique("pol-exp-kept");
    for name in [&q, &kept] {
        declare_queue(
            &ch,
            name,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    }
    let policy = unique("pol-exp");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q), "definition": {"expires": 300}}),
    )
    .await;
    // Watched through the API: a passive queue.declare would count as a
    // use and restart the expiry, in RabbitMQ as in Leveret.
    common::eventually("the idle queue to expire", WAIT, || async {
        api.get(&path("queues", &q)).await.status == 404
    })
    .await;
    let long = unique("pol-exp-long");
    set(
        &api,
        "policies",
        &long,
        json!({"pattern": exactly(&kept), "definition": {"expires": 1500}}),
    )
    .await;
    clear(&api, "policies", &long).await;
    tokio::time::sleep(Duration::from_millis(2000)).await; // proving it stays
    assert_eq!(count(&conn, &kept, WAIT).await, 0, "cleared in time: kept");
    clear(&api, "policies", &policy).await;
    delete_queues(&ch, &[&kept]).await;
}

/// The retry story: a quorum queue whose policy sets delivery-limit 2 and a
/// dead-letter exchange; a message nacked with requeue is delivered three
/// times, then dead-lettered. A message rejected without requeue goes to
/// the policy's DLX at once.
#[tokio::test]
async fn delivery_limit_and_dead_letter_exchange_by_policy() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    let q = unique("pol-retry");
    let dead = unique("pol-retry-dead");
    let policy = unique("pol-retry");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q), "apply-to": "queues",
               "definition": {"delivery-limit": 2, "dead-letter-exchange": "", "dead-letter-routing-key": dead}}),
    )
    .await;
    declare_queue(
        &ch,
        &q,
        durable(),
        table(&[("x-queue-type", AMQPValue::LongString("quorum".into()))]),
    )
    .await;
    declare_queue(
        &ch,
        &dead,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    wait_shown(&api, &q, "policy", json!(policy)).await;
    publish_n(&ch, &q, 1, 1).await;
    let mut attempts = 0;
    loop {
        let got = wait_for_get(&ch, &q).await;
        attempts += 1;
        got.nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
        if attempts == 3 {
            break;
        }
    }
    let dl = consume_exactly(&ch, &dead, 1).await;
    assert_eq!(texts(&dl), ["1"]);
    assert_eq!(ready_count(&ch, &q).await, 0, "gone after three attempts");
    publish_n(&ch, &q, 2, 1).await;
    let got = wait_for_get(&ch, &q).await;
    got.reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dl = consume_exactly(&ch, &dead, 1).await;
    assert_eq!(texts(&dl), ["2"]);
    assert_eq!(death_reason(&dl[0]), "rejected");
    clear(&api, "policies", &policy).await;
    delete_queues(&ch, &[&q, &dead]).await;
}

async fn wait_for_get(ch: &Channel, q: &str) -> lapin::message::BasicGetMessage {
    common::wait_for("a message to get", WAIT, || async {
        ch.basic_get(q.into(), BasicGetOptions::default())
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "empty".to_string())
    })
    .await
}

/// Limits: the smaller of argument, policy and operator policy wins;
/// the dead-letter exchange: the argument wins over the policy.
#[tokio::test]
async fn precedence_between_argument_policy_and_operator_policy() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    let q = unique("pol-prec");
    let by_arg = unique("pol-prec-arg-dead");
    let by_policy = unique("pol-prec-policy-dead");
    for d in [&by_arg, &by_policy] {
        declare_queue(
            &ch,
            d,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    }
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(&[
            ("x-max-length", AMQPValue::LongLongInt(5)),
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(by_arg.as_str().into()),
            ),
        ]),
    )
    .await;
    let policy = unique("pol-prec");
    let operator = unique("pol-prec-op");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q),
               "definition": {"max-length": 3, "dead-letter-exchange": "", "dead-letter-routing-key": by_policy}}),
    )
    .await;
    publish_n(&ch, &q, 1, 10).await;
    wait_ready(&ch, &q, 3).await;
    set(
        &api,
        "operator-policies",
        &operator,
        json!({"pattern": exactly(&q), "definition": {"max-length": 2}}),
    )
    .await;
    wait_ready(&ch, &q, 2).await;
    wait_shown(&api, &q, "operator_policy", json!(operator)).await;
    let shown = queue_json(&api, &q).await;
    assert_eq!(shown["effective_policy_definition"]["max-length"], json!(2));
    // Every dropped head went to the argument's dead-letter target.
    wait_ready(&ch, &by_arg, 8).await;
    assert_eq!(ready_count(&ch, &by_policy).await, 0);
    // A larger operator limit leaves the policy's smaller one in force.
    set(
        &api,
        "operator-policies",
        &operator,
        json!({"pattern": exactly(&q), "definition": {"max-length": 100}}),
    )
    .await;
    publish_n(&ch, &q, 11, 5).await;
    wait_ready(&ch, &q, 3).await;
    clear(&api, "operator-policies", &operator).await;
    clear(&api, "policies", &policy).await;
    // Only the argument is left.
    publish_n(&ch, &q, 16, 5).await;
    wait_ready(&ch, &q, 5).await;
    delete_queues(&ch, &[&q, &by_arg, &by_policy]).await;
}

/// Of two matching policies the higher priority applies, alone; clearing
/// it lets the other apply, and clearing both restores the argument.
#[tokio::test]
async fn the_higher_priority_policy_applies_and_clearing_restores_the_argument() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    let q = unique("pol-prio");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        table(&[("x-max-length", AMQPValue::LongLongInt(4))]),
    )
    .await;
    let low = unique("pol-prio-low");
    let high = unique("pol-prio-high");
    set(
        &api,
        "policies",
        &low,
        json!({"pattern": exactly(&q), "priority": 1, "definition": {"max-length": 2}}),
    )
    .await;
    set(
        &api,
        "policies",
        &high,
        json!({"pattern": exactly(&q), "priority": 7, "definition": {"message-ttl": 60000}}),
    )
    .await;
    wait_shown(&api, &q, "policy", json!(high)).await;
    assert_eq!(
        queue_json(&api, &q).await["effective_policy_definition"],
        json!({"message-ttl": 60000}),
        "only one policy applies"
    );
    publish_n(&ch, &q, 1, 6).await;
    wait_ready(&ch, &q, 4).await;
    clear(&api, "policies", &high).await;
    wait_shown(&api, &q, "policy", json!(low)).await;
    wait_ready(&ch, &q, 2).await;
    clear(&api, "policies", &low).await;
    publish_n(&ch, &q, 7, 6).await;
    wait_ready(&ch, &q, 4).await;
    delete_queues(&ch, &[&q]).await;
}

/// An alternate exchange set by policy takes what the exchange cannot
/// route; the exchange object names its policy.
#[tokio::test]
async fn an_alternate_exchange_by_policy_is_used_by_routing() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    let x = unique("pol-x");
    let ae = unique("pol-ae");
    let q = unique("pol-ae-q");
    for (name, kind) in [
        (&x, lapin::ExchangeKind::Direct),
        (&ae, lapin::ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(
            name.as_str().into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    bind_queue(&ch, &q, &ae, "", FieldTable::default()).await;
    let policy = unique("pol-ae");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&x), "apply-to": "exchanges", "definition": {"alternate-exchange": ae}}),
    )
    .await;
    let shown = api.get(&path("exchanges", &x)).await.json;
    assert_eq!(shown["policy"], json!(policy));
    assert!(
        api.get(&path("exchanges", &ae))
            .await
            .json
            .get("policy")
            .is_none(),
        "no policy key without a policy"
    );
    publish_props(&ch, &x, "nowhere", b"lost?", BasicProperties::default()).await;
    wait_ready(&ch, &q, 1).await;
    clear(&api, "policies", &policy).await;
    publish_props(&ch, &x, "nowhere", b"lost", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // proving nothing arrives
    assert_eq!(ready_count(&ch, &q).await, 1);
    for e in [&x, &ae] {
        ch.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    delete_queues(&ch, &[&q]).await;
}

/// RabbitMQ's answers to bad policies: its status codes and texts.
#[tokio::test]
async fn bad_policies_get_rabbitmqs_errors() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let name = unique("pol-bad");
    let p = path("policies", &name);
    let cases = [
        (json!({"pattern": "^a", "definition": {"foo": 1}}), "Validation failed\n\n[{&lt;&lt;\"foo\"&gt;&gt;,1}] are not recognised policy settings\n"),
        (json!({"pattern": "^a", "definition": {"max-length": "x"}}), "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n"),
        (json!({"pattern": "(", "definition": {"max-length": 1}}), "Validation failed\n\npattern should be regular expression but is invalid: {\"missing )\",1}\n"),
        (json!({"pattern": "^a", "definition": {"max-length": 1}, "apply-to": "bogus"}), "Validation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n"),
        (json!({"pattern": "^a", "definition": {"max-length": 1}, "priority": "5"}), "Validation failed\n\npriority should be a number, actually was &lt;&lt;\"5\"&gt;&gt;\n"),
        (json!({"pattern": "^a", "definition": {}}), "Validation failed\n\nno policy provided\n"),
        (json!({"pattern": "^a", "definition": {"expires": 0}}), "Validation failed\n\n0 is not a valid queue expiry\n"),
        (json!({"pattern": "^a"}), "[{key_missing,definition}]"),
    ];
    for (body, reason) in cases {
        let r: Reply = api.put(&p, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert_eq!(r.json["error"], json!("bad_request"));
        assert_eq!(r.json["reason"], json!(reason), "{body}");
    }
    let r = api
        .put(
            &path("operator-policies", &name),
            json!({"pattern": "^a", "definition": {"overflow": "reject-publish"}}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json["reason"],
        json!("Validation failed\n\n[{<<\"overflow\">>,<<\"reject-publish\">>}] are not recognised policy settings\n"),
        "operator policies allow only limits, and their texts are not escaped"
    );
    assert_eq!(api.get(&p).await.status, 404);
    assert_eq!(api.delete(&p).await.status, 404);
    let r = api
        .put(
            &format!("/api/policies/{}/{name}", unique("no-such-vhost")),
            json!({"pattern": "^a", "definition": {"max-length": 1}}),
        )
        .await;
    assert_eq!(
        (r.status, r.json["reason"].clone()),
        (404, json!("vhost_not_found"))
    );
}

/// Who may: a policymaker sets policies in its vhosts, not operator
/// policies; a plain management user neither; both list policies.
#[tokio::test]
async fn policymakers_set_policies_and_administrators_operator_policies() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let maker = unique("pol-maker");
    let plain = unique("pol-plain");
    for (user, tags) in [(&maker, "policymaker"), (&plain, "management")] {
        let r = api
            .put(
                &format!("/api/users/{user}"),
                json!({"password": "pw", "tags": tags}),
            )
            .await;
        assert_eq!(r.status, 201, "{r:?}");
        let r = api
            .put(
                &format!("/api/permissions/%2f/{user}"),
                json!({"configure": ".*", "write": ".*", "read": ".*"}),
            )
            .await;
        assert!(r.status == 201 || r.status == 204, "{r:?}");
    }
    let name = unique("pol-who");
    let body = json!({"pattern": "^pol-who-nothing$", "definition": {"max-length": 1}});
    let as_maker = api.as_user(&maker, "pw");
    let as_plain = api.as_user(&plain, "pw");
    let r = as_plain.put(&path("policies", &name), body.clone()).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json["reason"],
        json!("User not authorised to access object")
    );
    assert_eq!(
        as_maker
            .put(&path("policies", &name), body.clone())
            .await
            .status,
        201
    );
    let listed = as_plain.get("/api/policies/%2f").await;
    assert_eq!(listed.status, 200);
    assert!(listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == json!(name)));
    let r = as_maker
        .put(&path("operator-policies", &name), body.clone())
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json["reason"], json!("Not administrator user"));
    assert_eq!(as_maker.delete(&path("policies", &name)).await.status, 204);
    for user in [&maker, &plain] {
        api.delete(&format!("/api/users/{user}")).await;
    }
}

/// The JSON RabbitMQ shows for a policy, and definitions carrying them
/// out and back in; a bad one fails the import naming it.
#[tokio::test]
async fn policies_round_trip_through_definitions() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let name = unique("pol-defs");
    set(
        &api,
        "policies",
        &name,
        json!({"pattern": "^pol-defs-nothing$", "apply-to": "queues", "priority": 3,
               "definition": {"max-length": 7, "queue-mode": "lazy"}}),
    )
    .await;
    let want = json!({"vhost": "/", "name": name, "pattern": "^pol-defs-nothing$", "apply-to": "queues",
                      "definition": {"max-length": 7, "queue-mode": "lazy"}, "priority": 3});
    assert_eq!(api.get(&path("policies", &name)).await.json, want);
    let exported = api.get("/api/definitions").await.json;
    let item = exported["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == json!(name))
        .cloned()
        .expect("the policy is exported");
    assert_eq!(item, want);
    clear(&api, "policies", &name).await;
    let r = api
        .post("/api/definitions/%2f", json!({"policies": [item]}))
        .await;
    assert!(r.status == 204 || r.status == 201, "{r:?}");
    assert_eq!(api.get(&path("policies", &name)).await.json, want);
    clear(&api, "policies", &name).await;
    let bad = unique("pol-defs-bad");
    let item =
        json!({"vhost": "/", "name": bad, "pattern": "^x", "definition": {"max-length": "x"}});
    let r = api
        .post("/api/definitions", json!({"policies": [item.clone()]}))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let text = format!(
        "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n (//{bad})"
    );
    assert_eq!(r.json["reason"], json!(text));
    let r = api
        .post("/api/definitions/%2f", json!({"policies": [item]}))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    let quoted = text.replace('"', "\\\"").replace('\n', "\\n");
    assert_eq!(r.json["reason"], json!(format!("<<\"{quoted}\">>")));
    assert_eq!(api.get(&path("policies", &bad)).await.status, 404);
}

/// Policies and operator policies outlive kill -9 and apply to the queues
/// recovered at start-up.
#[tokio::test]
async fn policies_survive_a_restart_and_apply_to_recovered_queues() {
    if common::against_other_broker() {
        return;
    }
    let data = TempDir::new("pol-restart");
    let mut broker = BrokerProcess::start(data.path());
    let api = Api {
        addr: broker.mgmt_addr(),
        user: "guest".into(),
        password: "guest".into(),
    };
    set(
        &api,
        "policies",
        "cap",
        json!({"pattern": "^capped$", "definition": {"max-length": 3}}),
    )
    .await;
    set(
        &api,
        "operator-policies",
        "opcap",
        json!({"pattern": "^capped$", "definition": {"max-length": 2}}),
    )
    .await;
    set(
        &api,
        "policies",
        "builtin",
        json!({"pattern": "^amq\\.direct$", "apply-to": "exchanges",
               "definition": {"alternate-exchange": "amq.fanout"}}),
    )
    .await;
    {
        let conn = broker.connect().await;
        let ch = conn.create_channel().await.unwrap();
        declare_queue(&ch, "capped", durable(), FieldTable::default()).await;
    }
    broker.kill9();
    drop(broker);
    let broker = BrokerProcess::start(data.path());
    let api = Api {
        addr: broker.mgmt_addr(),
        ..api
    };
    assert_eq!(
        api.get("/api/policies/%2f/cap").await.json["definition"],
        json!({"max-length": 3})
    );
    assert_eq!(
        api.get("/api/operator-policies/%2f/opcap").await.status,
        200
    );
    assert_eq!(
        api.get("/api/exchanges/%2f/amq.direct").await.json["policy"],
        json!("builtin"),
        "built-in exchanges take stored policies too"
    );
    let shown = queue_json(&api, "capped").await;
    assert_eq!(
        (shown["policy"].clone(), shown["operator_policy"].clone()),
        (json!("cap"), json!("opcap"))
    );
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    for i in 0..5 {
        publish_props(&ch, "", "capped", format!("{i}").as_bytes(), persistent()).await;
    }
    wait_ready(&ch, "capped", 2).await;
}

/// `leveret ctl` run as a subprocess: exit code, stdout, stderr.
async fn ctl(api: &Api, args: &[&str]) -> (i32, String, String) {
    let mut full: Vec<String> = vec!["ctl".into(), "--url".into(), format!("http://{}", api.addr)];
    full.extend(args.iter().map(|a| a.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_leveret"))
            .args(&full)
            .env_remove("LEVERET_VHOST")
            .env_remove("LEVERET_FORMAT")
            .output()
            .expect("run leveret ctl")
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `leveret ctl set_policy / list_policies / clear_policy` and the
/// operator policy commands, named and shaped as rabbitmqctl's.
#[tokio::test]
async fn ctl_sets_lists_and_clears_policies() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let name = unique("pol-ctl");
    let (code, out, err) = ctl(
        &api,
        &[
            "set_policy",
            "-p",
            "/",
            "--priority",
            "4",
            "--apply-to",
            "queues",
            &name,
            "^pol-ctl-nothing$",
            r#"{"max-length":9}"#,
        ],
    )
    .await;
    assert_eq!((code, out.trim(), err.as_str()), (0, "policy set", ""));
    let shown = api.get(&path("policies", &name)).await.json;
    assert_eq!(shown["priority"], json!(4));
    assert_eq!(shown["apply-to"], json!("queues"));
    assert_eq!(shown["definition"], json!({"max-length": 9}));
    let (code, out, _) = ctl(&api, &["list_policies"]).await;
    assert_eq!(code, 0);
    let row = out
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{name} listed in:\n{out}"));
    assert!(
        row.contains("^pol-ctl-nothing$") && row.contains("queues"),
        "{row}"
    );
    let (_, listed, _) = ctl(&api, &["list", "policies"]).await;
    assert!(listed.contains(&name), "{listed}");
    let (code, _, err) = ctl(
        &api,
        &["set_policy", &name, "^x", r#"{"max-length":"many"}"#],
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "leveret ctl: 400 Bad Request: Validation failed: <<\"many\">> is not a valid maximum length"
    );
    let (code, out, _) = ctl(
        &api,
        &[
            "set_operator_policy",
            &name,
            "^pol-ctl-nothing$",
            r#"{"max-length":2}"#,
        ],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "operator policy set"));
    let (_, out, _) = ctl(&api, &["list_operator_policies"]).await;
    assert!(out.contains(&name), "{out}");
    let (code, out, _) = ctl(&api, &["clear_operator_policy", &name]).await;
    assert_eq!((code, out.trim()), (0, "operator policy cleared"));
    let (code, out, _) = ctl(&api, &["clear_policy", &name]).await;
    assert_eq!((code, out.trim()), (0, "policy cleared"));
    let (code, _, err) = ctl(&api, &["clear_policy", &name]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
}

/// consumer-timeout by policy (RabbitMQ 3.12's key; 3.10 refuses it, so
/// Leveret only): a delivery left unacknowledged past it closes the
/// channel with 406, as the argument does.
#[tokio::test]
async fn a_policy_consumer_timeout_closes_a_stuck_channel() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let q = unique("pol-ct");
    declare_queue(
        &ch,
        &q,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let policy = unique("pol-ct");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q), "definition": {"consumer-timeout": 500}}),
    )
    .await;
    publish_n(&ch, &q, 1, 1).await;
    let cch = conn.create_channel().await.unwrap();
    let mut consumer = consume(&cch, &q, "", false).await;
    next(&mut consumer).await;
    let mut closes = Closes::watch(&conn);
    let (code, text) = closes.channel(&conn, &cch).await;
    assert_eq!(code, 406);
    assert!(text.contains("Timeout value used: 500 ms"), "{text}");
}

/// A durable queue with most of its backlog paged out to disk is trimmed
/// to a policy's max-length too: the oldest go, even those on disk.
#[tokio::test]
async fn a_policy_max_length_trims_a_paged_out_durable_queue() {
    if common::against_other_broker() {
        return; // the memory window is Leveret's setting
    }
    let mut config = leveret::Config::default();
    config.storage.queue_memory_window = 16 * 1024;
    let broker = TestBroker::start_with(config).await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let q = unique("pol-paged");
    declare_queue(&ch, &q, durable(), FieldTable::default()).await;
    let confirms = confirm_channel(&conn).await;
    let filler = "x".repeat(1000);
    for i in 0..200 {
        let body = format!("{i:03}{filler}");
        publish_and_confirm(&confirms, "", &q, body.as_bytes(), persistent()).await;
    }
    let policy = unique("pol-paged");
    set(
        &api,
        "policies",
        &policy,
        json!({"pattern": exactly(&q), "definition": {"max-length": 10}}),
    )
    .await;
    wait_ready(&ch, &q, 10).await;
    let kept: Vec<String> = get_all_bodies(&ch, &q)
        .await
        .iter()
        .map(|b| b[..3].to_string())
        .collect();
    let want: Vec<String> = (190..200).map(|i| format!("{i:03}")).collect();
    assert_eq!(kept, want, "the newest ten stay");
}

/// RabbitMQ's own rabbitmqadmin declares, lists and deletes policies and
/// operator policies against the API.
#[tokio::test]
async fn rabbitmqadmin_declares_lists_and_deletes_policies() {
    const RABBITMQADMIN: &str = "/usr/bin/rabbitmqadmin";
    if !std::path::Path::new(RABBITMQADMIN).exists() {
        eprintln!("skipped: {RABBITMQADMIN} is not installed");
        return;
    }
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let run = |args: Vec<String>| {
        let mut command = std::process::Command::new(RABBITMQADMIN);
        command
            .args(["-H", &api.addr.ip().to_string()])
            .args(["-P", &api.addr.port().to_string()])
            .args(["-u", "guest", "-p", "guest"])
            .args(args);
        async move {
            let out = tokio::task::spawn_blocking(move || command.output())
                .await
                .unwrap()
                .expect("run rabbitmqadmin");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            text
        }
    };
    let name = unique("pol-admin");
    for kind in ["policy", "operator_policy"] {
        run(vec![
            "declare".into(),
            kind.into(),
            format!("name={name}"),
            "pattern=^pol-admin-nothing$".into(),
            r#"definition={"max-length":5}"#.into(),
            "priority=2".into(),
            "apply-to=queues".into(),
        ])
        .await;
        let listed = run(vec![
            "-f".into(),
            "raw_json".into(),
            "list".into(),
            format!("{kind}s").replace("policys", "policies"),
        ])
        .await;
        let items: Value = serde_json::from_str(listed.trim()).expect(&listed);
        let item = items
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == json!(name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {listed}"));
        assert_eq!(
            (
                item["priority"].clone(),
                item["apply-to"].clone(),
                item["definition"].clone()
            ),
            (json!(2), json!("queues"), json!({"max-length": 5}))
        );
        run(vec!["delete".into(), kind.into(), format!("name={name}")]).await;
    }
    assert_eq!(api.get(&path("policies", &name)).await.status, 404);
    assert_eq!(api.get(&path("operator-policies", &name)).await.status, 404);
}

/// Deleting a vhost deletes its policies: a vhost made again with the
/// same name starts without them.
#[tokio::test]
async fn deleting_a_vhost_deletes_its_policies() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let vhost = unique("pol-vhost");
    assert_eq!(
        api.put(&format!("/api/vhosts/{vhost}"), json!({}))
            .await
            .status,
        201
    );
    let body = json!({"pattern": ".*", "definition": {"max-length": 1}});
    for kind in ["policies", "operator-policies"] {
        let r = api
            .put(&format!("/api/{kind}/{vhost}/p"), body.clone())
            .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    assert_eq!(
        api.delete(&format!("/api/vhosts/{vhost}")).await.status,
        204
    );
    assert_eq!(
        api.put(&format!("/api/vhosts/{vhost}"), json!({}))
            .await
            .status,
        201
    );
    for kind in ["policies", "operator-policies"] {
        let r = api.get(&format!("/api/{kind}/{vhost}")).await;
        assert_eq!((r.status, r.json.clone()), (200, json!([])), "{kind}");
    }
    api.delete(&format!("/api/vhosts/{vhost}")).await;
}
