//! Dynamic shovels, as RabbitMQ's `rabbitmq_shovel` and
//! `rabbitmq_shovel_management` plugins have them: set as `shovel` runtime
//! parameters over the management API, moving messages between queues of
//! this broker, listed at `/api/shovels`. The tests of shared behaviour
//! also run against RabbitMQ with both plugins enabled (`LEVERET_TEST_URI`
//! and `LEVERET_TEST_MGMT`); names are unique and every test removes what
//! it made.

use crate::common;

use common::amqp::*;
use common::http::{Api, Reply};
use common::process::{BrokerProcess, TempDir};
use common::{unique, TestBroker};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn param(name: &str) -> String {
    format!("/api/parameters/shovel/%2f/{}", name.replace(' ', "%20"))
}

/// The shovel the web UI's "Move messages" creates (RabbitMQ's queue.ejs).
fn move_messages(from: &str, to: &str) -> Value {
    json!({
        "component": "shovel",
        "vhost": "/",
        "name": format!("Move from {from}"),
        "value": {
            "src-uri": "amqp:///%2F",
            "src-queue": from,
            "src-protocol": "amqp091",
            "src-prefetch-count": 1000,
            "src-delete-after": "queue-length",
            "dest-protocol": "amqp091",
            "dest-uri": "amqp:///%2F",
            "dest-add-forward-headers": false,
            "ack-mode": "on-confirm",
            "dest-queue": to,
        }
    })
}

async fn put_shovel(api: &Api, name: &str, value: Value) -> Reply {
    api.put(&param(name), json!({ "value": value })).await
}

async fn publish_persistent(ch: &Channel, queue: &str, n: usize) {
    let mut confirms = Vec::with_capacity(n);
    for i in 0..n {
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("m-{i:06}").as_bytes(),
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(tokio::time::timeout(WAIT, c)
            .await
            .expect("confirm in time")
            .unwrap()
            .is_ack());
    }
}

/// The shovel's status in `/api/shovels`, if listed.
async fn status(api: &Api, name: &str) -> Option<Value> {
    let r = api.get("/api/shovels/%2f").await;
    assert_eq!(r.status, 200, "{r:?}");
    r.json
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

async fn wait_running(api: &Api, name: &str) -> Value {
    common::wait_for("the shovel to run", WAIT, || async {
        match status(api, name).await {
            Some(s) if s["state"] == "running" => Ok(s),
            other => Err(other),
        }
    })
    .await
}

#[tokio::test]
async fn move_messages_moves_every_message_once_and_deletes_itself() {
    const N: usize = 2000;
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let (from, to) = (unique("shovel-from"), unique("shovel-to"));
    declare_queue(&ch, &from, durable(), FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_persistent(&ch, &from, N).await;

    // The destination does not exist: the shovel declares it, durable.
    let name = format!("Move from {from}");
    let r = api.put(&param(&name), move_messages(&from, &to)).await;
    assert_eq!(r.status, 201, "{r:?}");

    common::eventually("the shovel to delete itself", WAIT, || async {
        api.get(&param(&name)).await.status == 404 && status(&api, &name).await.is_none()
    })
    .await;
    let left = count(&conn, &from, WAIT).await;
    if left != 0 {
        // Say what went where, to tell a lost count from a duplicate.
        let dst = get_all_bodies(&ch, &to).await;
        let distinct: BTreeSet<&String> = dst.iter().collect();
        panic!(
            "{left} messages left in the source; {} at the destination, {} distinct",
            dst.len(),
            distinct.len()
        );
    }
    let q = api.get(&format!("/api/queues/%2f/{to}")).await;
    assert_eq!(q.json["durable"], true, "{q:?}");
    let bodies = get_all_bodies(&ch, &to).await;
    let want: Vec<String> = (0..N).map(|i| format!("m-{i:06}")).collect();
    assert_same_sequence("moved messages", &bodies, &want);

    for q in [&from, &to] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test]
async fn a_shovel_of_an_empty_queue_deletes_itself_at_once() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let (from, to) = (unique("shovel-empty"), unique("shovel-empty-to"));
    declare_queue(&ch, &from, durable(), FieldTable::default()).await;
    let name = format!("Move from {from}");
    let r = api.put(&param(&name), move_messages(&from, &to)).await;
    assert_eq!(r.status, 201, "{r:?}");
    common::eventually("the shovel to delete itself", WAIT, || async {
        api.get(&param(&name)).await.status == 404
    })
    .await;
    for q in [&from, &to] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test]
async fn a_running_shovel_is_listed_moves_new_messages_restarts_and_is_deleted() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let (from, to, name) = (unique("sh-src"), unique("sh-dest"), unique("sh"));
    declare_queue(&ch, &from, durable(), FieldTable::default()).await;
    declare_queue(&ch, &to, durable(), FieldTable::default()).await;
    let value = json!({
        "src-uri": "amqp://",
        "src-queue": from,
        "dest-uri": "amqp://guest:guest@/%2f",
        "dest-queue": to,
        "dest-add-forward-headers": true,
    });
    let r = put_shovel(&api, &name, value.clone()).await;
    assert_eq!(r.status, 201, "{r:?}");
    let got = api.get(&param(&name)).await;
    assert_eq!(
        got.json,
        json!({"value": value, "vhost": "/", "component": "shovel", "name": name})
    );

    let s = wait_running(&api, &name).await;
    assert_eq!(s["vhost"], "/");
    assert_eq!(s["type"], "dynamic");
    assert_eq!(s["src_uri"], "amqp://");
    // Credentials are not shown.
    assert_eq!(s["dest_uri"], "amqp:///%2f");
    assert_eq!(s["src_protocol"], "amqp091");
    assert_eq!(s["src_queue"], from.as_str());
    assert_eq!(s["dest_queue"], to.as_str());
    assert!(
        s["timestamp"].as_str().is_some_and(|t| t.len() >= 17),
        "{s}"
    );
    let all = api.get("/api/shovels").await;
    assert!(all
        .json
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == name.as_str()));

    publish_props(&ch, "", &from, b"hello", persistent()).await;
    let d = common::wait_for("the message at the destination", WAIT, || async {
        match ch
            .basic_get(to.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => Ok(m.delivery),
            None => Err("nothing yet"),
        }
    })
    .await;
    assert_eq!(d.data, b"hello");
    // dest-add-forward-headers: where it came from, as RabbitMQ says it.
    let headers = d.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(trail)) = headers.inner().get("x-shovelled") else {
        panic!("no x-shovelled header: {headers:?}");
    };
    let Some(AMQPValue::FieldTable(hop)) = trail.as_slice().first() else {
        panic!("x-shovelled: {trail:?}");
    };
    let field = |k: &str| match hop.inner().get(k) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(field("shovel-name"), name);
    assert_eq!(field("shovel-type"), "dynamic");
    assert_eq!(field("shovel-vhost"), "/");
    assert_eq!(field("src-queue"), from);
    assert_eq!(field("dest-queue"), to);

    let r = api
        .delete(&format!("/api/shovels/vhost/%2f/{name}/restart"))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    wait_running(&api, &name).await;
    let r = api
        .delete("/api/shovels/vhost/%2f/no-such-shovel/restart")
        .await;
    assert_eq!(r.status, 404, "{r:?}");
    let r = api.delete("/api/shovels/vhost/%2f/no-such-shovel").await;
    assert_eq!(r.status, 404, "{r:?}");

    let r = api.delete(&format!("/api/shovels/vhost/%2f/{name}")).await;
    assert_eq!(r.status, 204, "{r:?}");
    common::eventually("the shovel to go", WAIT, || async {
        api.get(&param(&name)).await.status == 404 && status(&api, &name).await.is_none()
    })
    .await;
    // Stopped: messages stay where they are.
    publish_props(&ch, "", &from, b"stays", persistent()).await;
    wait_ready(&ch, &from, 1).await;
    for q in [&from, &to] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test]
async fn an_exchange_source_forwards_what_its_key_routes() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let (to, name) = (unique("sh-x-dest"), unique("sh-x"));
    let key = format!("{name}.#");
    declare_queue(&ch, &to, durable(), FieldTable::default()).await;
    let value = json!({
        "src-uri": "amqp://",
        "src-exchange": "amq.topic",
        "src-exchange-key": key,
        "dest-uri": "amqp://",
        "dest-exchange": "",
        "dest-exchange-key": to,
        "ack-mode": "on-publish",
    });
    let r = put_shovel(&api, &name, value).await;
    assert_eq!(r.status, 201, "{r:?}");
    let s = wait_running(&api, &name).await;
    assert_eq!(s["src_exchange"], "amq.topic");
    assert_eq!(s["src_exchange_key"], key.as_str());
    assert_eq!(s["dest_exchange_key"], to.as_str());
    for rk in [
        format!("{name}.a"),
        "elsewhere".to_string(),
        format!("{name}.b"),
    ] {
        publish_props(&ch, "amq.topic", &rk, rk.as_bytes(), transient()).await;
    }
    wait_ready(&ch, &to, 2).await;
    let bodies = get_all_bodies(&ch, &to).await;
    assert_eq!(bodies, [format!("{name}.a"), format!("{name}.b")]);
    let r = api.delete(&param(&name)).await;
    assert_eq!(r.status, 204, "{r:?}");
    ch.queue_delete(to.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(200, "bye".into()).await.ok();
}

/// RabbitMQ 3.10's validation texts, escaped as its API escapes them.
#[tokio::test]
async fn definitions_are_validated_as_rabbitmq_validates_them() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let name = unique("sh-bad");
    let cases = [
        (
            json!({}),
            "Must specify 'src-exchange' or 'src-queue'\nKey \"dest-uri\" not found in NAME\nKey \"src-uri\" not found in NAME\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "src-exchange": "x", "dest-uri": "amqp://"}),
            "Cannot specify 'src-exchange' and 'src-queue'\n",
        ),
        (
            json!({"src-uri": "foo://x", "src-queue": "a", "dest-uri": "amqp://"}),
            "\"foo://x\" not a valid URI: {{unexpected_uri_scheme,\"foo\"},\"foo://x\"}\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "ack-mode": "bad"}),
            "ack-mode should be one of [&lt;&lt;\"no-ack\"&gt;&gt;,&lt;&lt;\"on-publish\"&gt;&gt;,&lt;&lt;\"on-confirm\"&gt;&gt;], actually was &lt;&lt;\"bad\"&gt;&gt;\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-delete-after": -1}),
            "src-delete-after should be a number greater than or equal to 0, \"never\" or \"queue-length\", actually was -1\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-delete-after": 5, "ack-mode": "no-ack"}),
            "Cannot specify 'no-ack' and numerical 'delete-after'\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-prefetch-count": "x"}),
            "src-prefetch-count should be a number, actually was &lt;&lt;\"x\"&gt;&gt;\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "dest-queue": "b", "dest-exchange": "x"}),
            "Cannot specify 'dest-exchange' and 'dest-queue'\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "add-forward-headers": "yes"}),
            "add-forward-headers should be boolean, actually was &lt;&lt;\"yes\"&gt;&gt;\n",
        ),
        (
            json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "foo": 1, "bar": "x"}),
            "Unrecognised terms [{&lt;&lt;\"bar\"&gt;&gt;,&lt;&lt;\"x\"&gt;&gt;},{&lt;&lt;\"foo\"&gt;&gt;,1}] in NAME\n",
        ),
        (
            json!({"src-uri": 5, "src-queue": "a", "dest-uri": "amqp://"}),
            "src-uri should be list, actually was 5\n",
        ),
        (
            json!({"src-uri": "amqp:///no-such-vhost", "src-queue": "a", "dest-uri": "amqp://"}),
            "user \"guest\" may not connect to vhost \"no-such-vhost\"\n",
        ),
        (
            json!({"src-uri": "amqp://h:99999", "src-queue": "a", "dest-uri": "amqp://"}),
            "\"amqp://h:99999\" not a valid URI: {{port_out_of_range,99999},\"amqp://h:99999\"}\n",
        ),
    ];
    for (value, want) in cases {
        let r = put_shovel(&api, &name, value.clone()).await;
        assert_eq!(r.status, 400, "{value}: {r:?}");
        assert_eq!(r.json["error"], "bad_request", "{value}: {r:?}");
        let want = format!("Validation failed\n\n{}", want.replace("NAME", &name));
        assert_eq!(r.json["reason"], want.as_str(), "{value}");
    }
    assert_eq!(api.get(&param(&name)).await.status, 404);
}

/// RabbitMQ takes AMQP 1.0 ends; Leveret refuses them in its words.
#[tokio::test]
async fn amqp10_ends_are_refused() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let r = put_shovel(
        &api,
        "sh-amqp10",
        json!({"src-protocol": "amqp10", "src-uri": "amqp://", "src-address": "a", "dest-uri": "amqp://", "dest-queue": "b"}),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let reason = r.json["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Validation failed\n\n")
            && reason.contains("src-protocol should be one of [&lt;&lt;\"amqp091\"&gt;&gt;], actually was &lt;&lt;\"amqp10\"&gt;&gt;"),
        "{reason}"
    );
}

#[tokio::test]
async fn shovels_go_through_definitions_export_and_import() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let (from, to, name) = (
        unique("sh-def-src"),
        unique("sh-def-dest"),
        unique("sh-def"),
    );
    declare_queue(&ch, &from, durable(), FieldTable::default()).await;
    let value = json!({"src-uri": "amqp://", "src-queue": from, "dest-uri": "amqp://", "dest-queue": to, "reconnect-delay": 2});
    assert_eq!(put_shovel(&api, &name, value.clone()).await.status, 201);
    let exported = api.get("/api/definitions").await.json;
    let entry = exported["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name.as_str())
        .cloned()
        .expect("the shovel is exported");
    assert_eq!(
        entry,
        json!({"value": value, "vhost": "/", "component": "shovel", "name": name})
    );
    assert_eq!(api.delete(&param(&name)).await.status, 204);
    assert_eq!(api.get(&param(&name)).await.status, 404);

    let r = api
        .post(
            "/api/definitions",
            json!({"parameters": [entry], "queues": [], "exchanges": [], "bindings": []}),
        )
        .await;
    assert!(
        r.status == 204 || r.status == 201 || r.status == 200,
        "{r:?}"
    );
    assert_eq!(api.get(&param(&name)).await.json["value"], value);
    wait_running(&api, &name).await;
    publish_props(&ch, "", &from, b"after import", persistent()).await;
    wait_ready(&ch, &to, 1).await;

    assert_eq!(api.delete(&param(&name)).await.status, 204);
    for q in [&from, &to] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test]
async fn a_shovel_is_deleted_with_its_vhost() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let vhost = unique("sh-vhost");
    assert_eq!(
        api.put(&format!("/api/vhosts/{vhost}"), json!({}))
            .await
            .status,
        201
    );
    let r = api
        .put(
            &format!("/api/permissions/{vhost}/guest"),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert!(r.status == 201 || r.status == 204, "{r:?}");
    let path = format!("/api/parameters/shovel/{vhost}/s");
    let value = json!({"src-uri": format!("amqp:///{vhost}"), "src-queue": "a", "dest-uri": format!("amqp:///{vhost}"), "dest-queue": "b"});
    let r = api.put(&path, json!({ "value": value })).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        api.delete(&format!("/api/vhosts/{vhost}")).await.status,
        204
    );
    assert_eq!(api.get(&path).await.status, 404);
    common::eventually("the shovel's status to go", WAIT, || async {
        let all = api.get("/api/shovels").await.json;
        !all.as_array()
            .unwrap()
            .iter()
            .any(|s| s["vhost"] == vhost.as_str())
    })
    .await;
    // Created again, the vhost has no shovel.
    assert_eq!(
        api.put(&format!("/api/vhosts/{vhost}"), json!({}))
            .await
            .status,
        201
    );
    assert_eq!(api.get(&path).await.status, 404);
    assert_eq!(
        api.delete(&format!("/api/vhosts/{vhost}")).await.status,
        204
    );
}

fn process_api(broker: &BrokerProcess) -> Api {
    Api {
        addr: broker.mgmt_addr(),
        user: "guest".into(),
        password: "guest".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shovel_survives_a_restart_and_moves_again() {
    let dir = TempDir::new("shovel-restart");
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start(&data);
    let api = process_api(&broker);
    let value = json!({"src-uri": "amqp://", "src-queue": "in", "dest-uri": "amqp://", "dest-queue": "out"});
    assert_eq!(put_shovel(&api, "keeper", value.clone()).await.status, 201);
    wait_running(&api, "keeper").await;
    broker.sigterm_and_wait();

    let broker = BrokerProcess::start(&data);
    let api = process_api(&broker);
    assert_eq!(api.get(&param("keeper")).await.json["value"], value);
    wait_running(&api, "keeper").await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    publish_props(&ch, "", "in", b"after restart", persistent()).await;
    wait_ready(&ch, "out", 1).await;
    assert_eq!(get_all_bodies(&ch, "out").await, ["after restart"]);
}

/// on-confirm: a message leaves its source only once the destination has
/// it on disk, so a broker killed in the middle of a move loses nothing
/// (a message may be in both queues: the move is at least once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_move_loses_nothing() {
    const N: usize = 20_000;
    let dir = TempDir::new("shovel-kill");
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start(&data);
    let api = process_api(&broker);
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, "from", durable(), FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_persistent(&ch, "from", N).await;
    let r = api
        .put(&param("Move from from"), move_messages("from", "to"))
        .await;
    assert_eq!(r.status, 201, "{r:?}");
    // Kill it once the move is under way.
    common::eventually("some messages to move", WAIT, || async {
        let q = api.get("/api/queues/%2f/to").await;
        q.status == 200 && q.json["messages"].as_u64().unwrap_or(0) > 0
    })
    .await;
    broker.kill9();

    let mut broker = BrokerProcess::start(&data);
    let api = process_api(&broker);
    // The shovel starts again and finishes the move (of the messages
    // left in the source when it restarted).
    common::eventually("the shovel to finish", Duration::from_secs(60), || async {
        api.get(&param("Move from from")).await.status == 404
    })
    .await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut seen = BTreeSet::new();
    for q in ["from", "to"] {
        seen.extend(get_all_bodies(&ch, q).await);
    }
    let missing: Vec<String> = (0..N)
        .map(|i| format!("m-{i:06}"))
        .filter(|b| !seen.contains(b))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    broker.sigterm_and_wait();
}

/// The web UI's "Move messages" on a queue's page, in a browser.
#[tokio::test]
async fn in_a_browser_move_messages_empties_the_queue_into_another() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    let broker = TestBroker::start().await;
    let (conn, ch) = open_channel(&broker).await;
    declare_queue(&ch, "orders", durable(), FieldTable::default()).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_persistent(&ch, "orders", 25).await;
    let seen = crate::webui::drive(
        &broker,
        &browser,
        "shovel.move",
        &[
            ("WEBUI_QUEUE", "orders"),
            ("WEBUI_DEST", "orders.retry"),
            ("WEBUI_DEPTH", "25"),
        ],
    )
    .await;
    assert_eq!(seen["dest_ready"], "25", "{seen}");
    assert_eq!(get_all_bodies(&ch, "orders.retry").await.len(), 25);
    conn.close(200, "bye".into()).await.ok();
    broker.stop().await;
}

/// The Shovels page: add one, see it run, restart and delete it.
#[tokio::test]
async fn in_a_browser_a_shovel_is_added_restarted_and_deleted() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    let broker = TestBroker::start().await;
    let seen = crate::webui::drive(
        &broker,
        &browser,
        "shovel.manage",
        &[
            ("WEBUI_SHOVEL", "to-archive"),
            ("WEBUI_QUEUE", "events"),
            ("WEBUI_DEST", "archive"),
        ],
    )
    .await;
    assert_eq!(
        seen["confirmations"],
        json!(["Delete shovel \"to-archive\"?"]),
        "{seen}"
    );
    let api = Api::of(&broker).unwrap();
    assert_eq!(api.get(&param("to-archive")).await.status, 404);
    broker.stop().await;
}

/// A stream's messages move too (are copied: a stream keeps them), read
/// from where `src-consumer-args` says (RabbitMQ's UI sends
/// `x-stream-offset: first` for a stream). Leveret-only: RabbitMQ 3.10
/// takes a stream's length from queue.declare-ok, which says 0 for a
/// stream, so its shovel deletes itself at once having moved nothing.
#[tokio::test]
async fn a_stream_is_moved_from_its_first_offset() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (conn, ch) = open_channel(&broker).await;
    let (from, to) = (unique("sh-stream"), unique("sh-stream-to"));
    let args = table(&[("x-queue-type", AMQPValue::LongString("stream".into()))]);
    declare_queue(&ch, &from, durable(), args).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_persistent(&ch, &from, 10).await;
    let mut body = move_messages(&from, &to);
    body["value"]["src-consumer-args"] = json!({"x-stream-offset": "first"});
    let name = format!("Move from {from}");
    let r = api.put(&param(&name), body).await;
    assert_eq!(r.status, 201, "{r:?}");
    common::eventually("the shovel to delete itself", WAIT, || async {
        api.get(&param(&name)).await.status == 404
    })
    .await;
    let want: Vec<String> = (0..10).map(|i| format!("m-{i:06}")).collect();
    assert_eq!(get_all_bodies(&ch, &to).await, want);
    for q in [&from, &to] {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    conn.close(200, "bye".into()).await.ok();
}

/// A shovel to another host is kept (as RabbitMQ keeps it), and its
/// status says why Leveret does not run it.
#[tokio::test]
async fn a_remote_shovel_reports_why_it_does_not_run() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let value = json!({"src-uri": "amqp://u:p@elsewhere.example:5672", "src-queue": "a",
                       "dest-uri": "amqp://", "dest-queue": "b",
                       "src-queue-args": {"x-max-length": 5}});
    assert_eq!(put_shovel(&api, "remote", value).await.status, 201);
    let s = common::wait_for("a terminated status", WAIT, || async {
        match status(&api, "remote").await {
            Some(s) if s["state"] == "terminated" => Ok(s),
            other => Err(other),
        }
    })
    .await;
    assert!(
        s["reason"].as_str().unwrap().contains("URIs with a host"),
        "{s}"
    );
    // Nothing was declared for it.
    assert_eq!(api.get("/api/queues/%2f/b").await.status, 404);
}

/// `src-queue-args` and `dest-queue-args` apply to the queues the shovel
/// declares.
#[tokio::test]
async fn declared_queues_take_their_arguments() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (from, to, name) = (
        unique("sh-args-src"),
        unique("sh-args-dest"),
        unique("sh-args"),
    );
    let value = json!({"src-uri": "amqp://", "src-queue": from, "src-queue-args": {"x-max-length": 5},
                       "dest-uri": "amqp://", "dest-queue": to, "dest-queue-args": {"x-message-ttl": 60000}});
    assert_eq!(put_shovel(&api, &name, value).await.status, 201);
    wait_running(&api, &name).await;
    let src = api.get(&format!("/api/queues/%2f/{from}")).await;
    assert_eq!(src.json["arguments"], json!({"x-max-length": 5}), "{src:?}");
    let dest = api.get(&format!("/api/queues/%2f/{to}")).await;
    assert_eq!(
        dest.json["arguments"],
        json!({"x-message-ttl": 60000}),
        "{dest:?}"
    );
    assert_eq!(api.delete(&param(&name)).await.status, 204);
    for q in [&from, &to] {
        assert_eq!(
            api.delete(&format!("/api/queues/%2f/{q}")).await.status,
            204
        );
    }
}

/// Each move declares its destination and publishes to it at once: the
/// shovel waits, as a channel's queue.declare-ok waits, until the new
/// queue is on disk, or the store refuses its messages (nacks), which go
/// back to the source and are counted as moved. This failed a few rounds
/// in before the wait.
#[tokio::test]
async fn repeated_moves_into_new_queues_lose_nothing() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (_conn, ch) = open_channel(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for round in 0..40 {
        let (from, to) = (format!("rep-{round}"), format!("rep-{round}-to"));
        declare_queue(&ch, &from, durable(), FieldTable::default()).await;
        publish_persistent(&ch, &from, 25).await;
        let name = format!("Move from {from}");
        let r = api.put(&param(&name), move_messages(&from, &to)).await;
        assert_eq!(r.status, 201);
        common::eventually("gone", WAIT, || async {
            api.get(&param(&name)).await.status == 404
        })
        .await;
        let left = ready_count(&ch, &from).await;
        let moved = ready_count(&ch, &to).await;
        assert_eq!((left, moved), (0, 25), "round {round}");
    }
}
