//! The web UI's access-control and policy pages (issue 19): a user's and
//! a vhost's page (permissions, topic permissions, limits), policies and
//! operator policies, a channel's page, driven in headless Chromium
//! (tests/python/webui_uiaccess.py) and checked through the API; and the
//! channel API those pages need, in plain HTTP (also against RabbitMQ:
//! LEVERET_TEST_MGMT=127.0.0.1:15672 LEVERET_TEST_URI=amqp://…).

use crate::common::{self, http::Api, TestBroker};
use crate::webui::{chromium, drive};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::Duration;

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A broker whose rates are sampled often, so a test sees them soon.
async fn broker() -> TestBroker {
    let mut config = leveret::Config::default();
    config.server.collect_statistics_interval_ms = 200;
    TestBroker::start_with(config).await
}

/// A client with a channel in confirm mode, prefetch 7, consuming from a
/// fresh queue with tag `tag`, publishing to it until dropped; the
/// channel's name as the API gives it.
struct Client {
    _conn: lapin::Connection,
    _consumer: lapin::Consumer,
    publishing: tokio::task::JoinHandle<()>,
    channel: String,
    queue: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.publishing.abort();
    }
}

async fn client(broker: &TestBroker, api: &Api, tag: &str) -> Client {
    let name = common::unique("uiaccess-client");
    let conn = lapin::Connection::connect(
        &broker.uri,
        lapin::ConnectionProperties::default().with_connection_name(name.as_str().into()),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_qos(7, BasicQosOptions::default()).await.unwrap();
    let queue = common::unique("uiaccess-q");
    let options = lapin::options::QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    common::amqp::declare_queue(&ch, &queue, options, FieldTable::default()).await;
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publishing = tokio::spawn({
        let (ch, queue) = (ch.clone(), queue.clone());
        async move {
            loop {
                let publish = ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"m",
                    BasicProperties::default(),
                );
                if publish.await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    // The connection's name is the API's, found by the client's name.
    let connection = common::wait_for(
        "the connection in the API",
        Duration::from_secs(20),
        || async {
            let all = api.get("/api/connections").await.json;
            all.as_array()
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c["client_properties"]["connection_name"] == name.as_str())
                })
                .and_then(|c| c["name"].as_str().map(String::from))
                .ok_or(all)
        },
    )
    .await;
    Client {
        _conn: conn,
        _consumer: consumer,
        publishing,
        channel: format!("{connection} (1)"),
        queue,
    }
}

#[tokio::test]
async fn a_channel_shows_its_consumers_and_message_rates() {
    let broker = broker().await;
    let Some(api) = Api::of(&broker) else { return };
    let tag = common::unique("uiaccess-tag");
    let c = client(&broker, &api, &tag).await;
    let path = format!("/api/channels/{}", enc(&c.channel));
    // RabbitMQ emits channel stats every few seconds: wait for a rate.
    let channel = common::wait_for("a publish rate", Duration::from_secs(30), || async {
        let reply = api.get(&path).await;
        let rate = reply.json["message_stats"]["publish_details"]["rate"].as_f64();
        if rate.is_some_and(|r| r > 0.0) {
            Ok(reply.json)
        } else {
            Err(reply.text)
        }
    })
    .await;
    assert_eq!(channel["name"], c.channel.as_str());
    assert_eq!(channel["confirm"], true);
    assert_eq!(channel["prefetch_count"], 7);
    let consumers = channel["consumer_details"]
        .as_array()
        .expect("consumer_details");
    assert_eq!(consumers.len(), 1, "{channel}");
    let consumer = &consumers[0];
    assert_eq!(consumer["consumer_tag"], tag.as_str());
    assert_eq!(consumer["prefetch_count"], 7);
    assert_eq!(consumer["ack_required"], true);
    assert_eq!(consumer["exclusive"], false);
    assert_eq!(consumer["queue"], json!({"name": c.queue, "vhost": "/"}));
    assert_eq!(consumer["channel_details"]["name"], c.channel.as_str());
    for stat in [
        "publish",
        "confirm",
        "deliver",
        "deliver_get",
        "ack",
        "redeliver",
    ] {
        assert!(
            channel["message_stats"][format!("{stat}_details")]["rate"].is_number(),
            "{stat}: {channel}"
        );
    }
    // The lists carry rates too, but not the consumers.
    let connection = channel["connection_details"]["name"].as_str().unwrap();
    let list = api
        .get(&format!("/api/connections/{}/channels", enc(connection)))
        .await
        .json;
    assert!(
        list[0]["message_stats"]["publish_details"]["rate"].is_number(),
        "{list}"
    );
    assert!(list[0].get("consumer_details").is_none(), "{list}");
    // A channel that is not there is RabbitMQ's 404.
    let missing = api.get("/api/channels/nothing%20(1)").await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json,
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    drop(c);
    broker.stop().await;
}

async fn put(api: &Api, path: &str, body: Value) {
    let reply = api.put(path, body).await;
    assert!(matches!(reply.status, 201 | 204), "{path}: {}", reply.text);
}

#[tokio::test]
async fn in_a_browser_a_users_page_sets_permissions_limits_and_tags() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let (user, doomed, vhost) = ("ui-user", "ui-doomed-user", "ui-vhost");
    put(
        &api,
        &format!("/api/users/{user}"),
        json!({"password": "secret", "tags": ""}),
    )
    .await;
    put(
        &api,
        &format!("/api/users/{doomed}"),
        json!({"password": "x", "tags": ""}),
    )
    .await;
    put(&api, &format!("/api/vhosts/{vhost}"), json!({})).await;

    let seen = drive(
        &broker,
        &browser,
        "uiaccess.user_page",
        &[
            ("WEBUI_USER", user),
            ("WEBUI_VHOST", vhost),
            ("WEBUI_DOOMED_USER", doomed),
        ],
    )
    .await;
    let regex_error = seen["regex_error"].as_str().unwrap();
    assert!(
        regex_error.contains("invalid regular expression '('"),
        "{regex_error}"
    );
    assert_eq!(seen["permission_row"], json!([vhost, "^cfg", ".*", "^r"]));
    assert_eq!(seen["topic_row"], json!([vhost, "amq.topic", "^w", ".*"]));
    assert_eq!(
        seen["limit_error"],
        "Validation failed\n\nmax-channels should be a number, actually was \"many\""
    );
    assert_eq!(seen["limits"], json!(["max-connections", "3"]));
    assert_eq!(seen["phone_overflow"], 0);
    assert_eq!(
        seen["dialogs"],
        json!([format!("Delete user \"{doomed}\"?")])
    );

    // What the browser did is what the broker has.
    let p = api.get(&format!("/api/permissions/{vhost}/{user}")).await;
    assert_eq!(
        p.json,
        json!({"user": user, "vhost": vhost, "configure": "^cfg", "write": ".*", "read": "^r"})
    );
    let topic = api
        .get(&format!("/api/users/{user}/topic-permissions"))
        .await;
    assert_eq!(topic.json, json!([]));
    let limits = api.get(&format!("/api/user-limits/{user}")).await;
    assert_eq!(
        limits.json,
        json!([{"user": user, "value": {"max-connections": 3}}])
    );
    let u = api.get(&format!("/api/users/{user}")).await;
    assert_eq!(u.json["tags"], json!(["monitoring"]));
    let me = api.as_user(user, "new-secret").get("/api/whoami").await;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(api.get(&format!("/api/users/{doomed}")).await.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn in_a_browser_a_vhosts_page_sets_permissions_and_limits() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let (user, vhost, doomed) = ("ui-user", "ui-vhost", "ui-doomed-vhost");
    put(
        &api,
        &format!("/api/users/{user}"),
        json!({"password": "secret", "tags": ""}),
    )
    .await;
    put(&api, &format!("/api/vhosts/{vhost}"), json!({})).await;
    put(&api, &format!("/api/vhosts/{doomed}"), json!({})).await;
    // guest is given the new vhosts; no one else is.
    api.delete(&format!("/api/permissions/{vhost}/guest")).await;

    let seen = drive(
        &broker,
        &browser,
        "uiaccess.vhost_page",
        &[
            ("WEBUI_USER", user),
            ("WEBUI_VHOST", vhost),
            ("WEBUI_DOOMED_VHOST", doomed),
        ],
    )
    .await;
    assert_eq!(seen["limits"], json!(["max-queues", "2"]));
    assert_eq!(
        seen["dialogs"],
        json!([format!(
            "Delete virtual host \"{doomed}\" and everything in it?"
        )])
    );
    let p = api.get(&format!("/api/permissions/{vhost}/{user}")).await;
    assert_eq!(
        p.json,
        json!({"user": user, "vhost": vhost, "configure": ".*", "write": "^only-this", "read": ".*"})
    );
    let limits = api.get(&format!("/api/vhost-limits/{vhost}")).await;
    assert_eq!(
        limits.json,
        json!([{"vhost": vhost, "value": {"max-queues": 2}}])
    );
    assert_eq!(api.get(&format!("/api/vhosts/{doomed}")).await.status, 404);
    broker.stop().await;
}

#[tokio::test]
async fn in_a_browser_policies_are_added_edited_and_deleted_and_apply_to_a_queue() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let queue = "ui-policy-target";
    put(
        &api,
        &format!("/api/queues/%2F/{queue}"),
        json!({"durable": true}),
    )
    .await;
    let effective = || async {
        let q = api.get(&format!("/api/queues/%2F/{queue}")).await.json;
        (
            q["policy"].clone(),
            q["operator_policy"].clone(),
            q["effective_policy_definition"].clone(),
        )
    };
    let env = [("WEBUI_QUEUE", queue)];

    let seen = drive(&broker, &browser, "uiaccess.policy_add", &env).await;
    let error = seen["pattern_error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "Validation failed\n\npattern should be regular expression but is invalid"
        ),
        "{error}"
    );
    assert_eq!(
        seen["policy_row"],
        json!([
            "/",
            "ui-policy",
            format!("^{queue}$"),
            "queues",
            "dead-letter-exchange: ui-dlx\nmax-length: 2",
            "0"
        ])
    );
    let policy = api.get("/api/policies/%2F/ui-policy").await.json;
    assert_eq!(
        policy["definition"],
        json!({"max-length": 2, "dead-letter-exchange": "ui-dlx"})
    );
    assert_eq!(
        effective().await,
        (
            json!("ui-policy"),
            Value::Null,
            json!({"max-length": 2, "dead-letter-exchange": "ui-dlx"})
        )
    );

    drive(&broker, &browser, "uiaccess.policy_edit", &env).await;
    let policy = api.get("/api/policies/%2F/ui-policy").await.json;
    assert_eq!(policy["priority"], 5);
    assert_eq!(policy["definition"]["max-length"], 3);
    // The operator policy's lower max-length wins.
    assert_eq!(
        effective().await,
        (
            json!("ui-policy"),
            json!("ui-op"),
            json!({"max-length": 1, "dead-letter-exchange": "ui-dlx"})
        )
    );

    // A policymaker may change policies but not operator policies.
    put(
        &api,
        "/api/users/maker",
        json!({"password": "secret", "tags": "policymaker"}),
    )
    .await;
    put(
        &api,
        "/api/permissions/%2F/maker",
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let seen = drive(
        &broker,
        &browser,
        "uiaccess.policy_non_admin",
        &[("WEBUI_MAKER", "maker")],
    )
    .await;
    assert_eq!(seen["operator_form"], 0);
    assert_eq!(seen["operator_buttons"], 0);

    let seen = drive(&broker, &browser, "uiaccess.policy_delete", &env).await;
    assert_eq!(
        seen["dialogs"],
        json!([
            "Delete policy \"ui-policy\"?",
            "Delete operator policy \"ui-op\"?"
        ])
    );
    assert_eq!(api.get("/api/policies").await.json, json!([]));
    assert_eq!(api.get("/api/operator-policies").await.json, json!([]));
    assert_eq!(effective().await, (Value::Null, Value::Null, json!({})));
    broker.stop().await;
}

#[tokio::test]
async fn in_a_browser_a_channels_page_shows_its_consumer_and_rates() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let broker = broker().await;
    let api = Api::of(&broker).unwrap();
    let tag = "ui-consumer";
    let c = client(&broker, &api, tag).await;
    let seen = drive(
        &broker,
        &browser,
        "uiaccess.channel_page",
        &[("WEBUI_CHANNEL", &c.channel), ("WEBUI_TAG", tag)],
    )
    .await;
    assert_eq!(seen["prefetch"], "7");
    assert_eq!(seen["mode"], "confirm");
    assert_eq!(seen["consumer"], json!([tag, c.queue, "yes", "no", "7"]));
    let rate = seen["publish_rate"].as_str().unwrap();
    assert!(rate.ends_with("/s") && rate != "0.00/s", "{rate}");
    drop(c);
    broker.stop().await;
}

/// RabbitMQ lists operator policies to any management user, of the vhosts
/// it may use, as it lists policies (the policies page shows both); only
/// reading one and changing them is for administrators.
#[tokio::test]
async fn operator_policies_are_listed_to_management_users_of_the_vhost() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let (user, vhost, name) = (
        common::unique("uiaccess-maker"),
        common::unique("uiaccess-v"),
        common::unique("uiaccess-op"),
    );
    put(
        &api,
        &format!("/api/users/{user}"),
        json!({"password": "secret", "tags": "policymaker"}),
    )
    .await;
    put(&api, &format!("/api/vhosts/{vhost}"), json!({})).await;
    put(
        &api,
        &format!("/api/permissions/%2F/{user}"),
        json!({"configure": ".*", "write": ".*", "read": ".*"}),
    )
    .await;
    let policy = json!({"pattern": "^uiaccess-none$", "definition": {"max-length": 1}});
    put(
        &api,
        &format!("/api/operator-policies/%2F/{name}"),
        policy.clone(),
    )
    .await;
    put(
        &api,
        &format!("/api/operator-policies/{vhost}/{name}"),
        policy,
    )
    .await;

    let maker = api.as_user(&user, "secret");
    for path in [
        "/api/operator-policies".to_string(),
        "/api/operator-policies/%2F".into(),
    ] {
        let r = maker.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let names: Vec<(&str, &str)> = r
            .json
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["vhost"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        // Only "/": the maker has no permissions in the other vhost.
        assert_eq!(names, [("/", name.as_str())], "{path}");
    }
    let r = maker.get(&format!("/api/operator-policies/{vhost}")).await;
    assert_eq!(r.status, 401, "{}", r.text);
    assert_eq!(
        r.json,
        json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"})
    );
    // One operator policy, and changing them, stay for administrators.
    let r = maker
        .get(&format!("/api/operator-policies/%2F/{name}"))
        .await;
    assert_eq!(
        (r.status, r.json),
        (
            401,
            json!({"error": "not_authorised", "reason": "Not administrator user"})
        )
    );
    let r = maker
        .delete(&format!("/api/operator-policies/%2F/{name}"))
        .await;
    assert_eq!(r.status, 401);

    api.delete(&format!("/api/operator-policies/%2F/{name}"))
        .await;
    api.delete(&format!("/api/vhosts/{vhost}")).await;
    api.delete(&format!("/api/users/{user}")).await;
    broker.stop().await;
}
