//! The web UI's queues, exchanges, bindings, streams and overview (issue
//! 19): the API fields they need (plain HTTP, RabbitMQ's where RabbitMQ
//! has them: run against it with LEVERET_TEST_URI and LEVERET_TEST_MGMT)
//! and what a user does with them in headless Chromium
//! (tests/python/webui_uiobjects.py).

use crate::common::{self, http::Api, TestBroker};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Polls `f` until it holds (RabbitMQ samples every 5 s), up to 30 s.
async fn eventually<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/api/overview` lists each listener with the port it is bound to (a
/// configured port 0 shows the port it got), as RabbitMQ's.
#[tokio::test]
async fn overview_listeners_show_the_bound_ports() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let overview = api.get("/api/overview").await;
    assert_eq!(overview.status, 200, "{}", overview.text);
    let listeners = overview.json["listeners"].as_array().expect("listeners");
    let find = |protocol: &str| {
        listeners
            .iter()
            .find(|l| l["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no {protocol} listener: {listeners:?}"))
    };
    assert_eq!(find("amqp")["port"], broker.addr.port());
    assert_eq!(find("http")["port"], api.addr.port());
    assert!(find("amqp")["ip_address"].is_string());
    broker.stop().await;
}

/// The node says where its data, config and log are, in RabbitMQ's fields.
#[tokio::test]
async fn the_node_names_its_data_dir_config_files_and_log_files() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let nodes = api.get("/api/nodes").await;
    assert_eq!(nodes.status, 200, "{}", nodes.text);
    let node = &nodes.json[0];
    let name = node["name"].as_str().unwrap();
    let one = api.get(&format!("/api/nodes/{name}")).await;
    // RabbitMQ fills these in from its first statistics event.
    let node = eventually("node facts", || {
        let api = api.clone();
        let name = name.to_string();
        async move {
            let n = api.get(&format!("/api/nodes/{name}")).await.json;
            n["db_dir"].is_string().then_some(n)
        }
    })
    .await;
    assert_eq!(one.status, 200);
    assert!(node["config_files"].is_array(), "{node}");
    let logs = node["log_files"].as_array().expect("log_files");
    assert!(!logs.is_empty(), "{node}");
    if !common::against_other_broker() {
        // The test broker's fresh data directory, as an absolute path.
        let dir = node["db_dir"].as_str().unwrap();
        assert!(std::path::Path::new(dir).is_absolute(), "{dir}");
        assert!(dir.contains("leveret-test-data"), "{dir}");
        assert_eq!(nodes.json[0]["db_dir"], dir);
        // No config file (the embedded defaults), the log on stderr.
        assert_eq!(node["config_files"], json!([]));
        assert_eq!(node["log_files"], json!(["<stderr>"]));
    }
    broker.stop().await;
}

/// `Config::load` keeps the file it read, absolute: the node's
/// `config_files`.
#[test]
fn a_loaded_config_remembers_its_file() {
    let dir = std::env::temp_dir().join(common::unique("uiobjects-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(&file, "[server]\nlog_level = \"info\"\n").unwrap();
    let config = leveret::Config::load(Some(&file), std::iter::empty()).unwrap();
    assert_eq!(config.config_file.as_deref(), Some(file.as_path()));
    let embedded = leveret::Config::load(None, std::iter::empty()).unwrap();
    assert_eq!(embedded.config_file, None);
    // Not a setting: a file cannot name itself.
    std::fs::write(&file, "config_file = \"/x\"\n").unwrap();
    assert!(leveret::Config::load(Some(&file), std::iter::empty()).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Publishes `n` messages on a confirm channel to `queue` through the
/// default exchange and waits for their confirms.
async fn publish_confirmed(conn: &lapin::Connection, queue: &str, n: usize) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..n {
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"confirmed",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    ch.close(200, "done".into()).await.unwrap();
}

/// The overview's `confirm` and `confirm_details` (with samples when
/// asked): publishes confirmed to publishers, as RabbitMQ's overview.
#[tokio::test]
async fn the_overview_counts_confirmed_publishes_with_their_rate_and_samples() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let conn = broker.connect().await;
    let queue = common::unique("uiobjects-confirm");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let before = api.get("/api/overview").await.json["message_stats"]["confirm"]
        .as_u64()
        .unwrap_or(0);
    // One channel that closes (its confirms must still count) and one open.
    publish_confirmed(&conn, &queue, 7).await;
    let open = conn.create_channel().await.unwrap();
    open.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        open.basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let overview = eventually("confirm counted", || {
        let api = api.clone();
        async move {
            let o = api
                .get("/api/overview?msg_rates_age=60&msg_rates_incr=5")
                .await
                .json;
            let confirmed = o["message_stats"]["confirm"].as_u64()?;
            (confirmed >= before + 10).then_some(o)
        }
    })
    .await;
    let details = &overview["message_stats"]["confirm_details"];
    assert!(details["rate"].is_number(), "{overview}");
    assert!(details["samples"].is_array(), "{overview}");
    if !common::against_other_broker() {
        // Nobody else publishes to this broker: exactly ours.
        assert_eq!(overview["message_stats"]["confirm"], 10);
        let newest = eventually("confirm sampled", || {
            let api = api.clone();
            async move {
                let o = api
                    .get("/api/overview?msg_rates_age=60&msg_rates_incr=5")
                    .await
                    .json;
                let s = o["message_stats"]["confirm_details"]["samples"][0]["sample"].as_u64()?;
                (s == 10).then_some(json!(s))
            }
        })
        .await;
        assert_eq!(newest, 10);
    }
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

/// A management user who sees only some vhosts gets the overview's
/// history summed over those (RabbitMQ's rabbit_mgmt_db:overview/3), and
/// not the node's listeners (RabbitMQ gives those to monitoring users
/// and administrators only).
#[tokio::test]
async fn a_management_user_gets_samples_of_their_own_vhosts() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let vhost = common::unique("uiobjects-vh");
    let user = common::unique("uiobjects-mgr");
    assert_eq!(
        api.put(&format!("/api/vhosts/{vhost}"), json!({}))
            .await
            .status,
        201
    );
    let reply = api
        .put(
            &format!("/api/users/{user}"),
            json!({"password": "secret", "tags": "management"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let reply = api
        .put(
            &format!("/api/permissions/{vhost}/{user}"),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    // 4 messages in the user's vhost, 2 in "/" that the user must not see.
    let queue = common::unique("uiobjects-q");
    let mine = format!("/api/queues/{vhost}/{queue}");
    assert_eq!(api.put(&mine, json!({"durable": false})).await.status, 201);
    let theirs = format!("/api/queues/%2F/{queue}");
    assert_eq!(
        api.put(&theirs, json!({"durable": false})).await.status,
        201
    );
    for (v, n) in [(vhost.as_str(), 4), ("%2F", 2)] {
        for _ in 0..n {
            let reply = api
                .post(
                    &format!("/api/exchanges/{v}/amq.default/publish"),
                    json!({"properties": {}, "routing_key": queue, "payload": "x", "payload_encoding": "string"}),
                )
                .await;
            assert_eq!(reply.json, json!({"routed": true}), "{}", reply.text);
        }
    }
    let manager = api.as_user(&user, "secret");
    let overview = eventually("samples of the user's vhost", || {
        let manager = manager.clone();
        async move {
            let o = manager
                .get(
                    "/api/overview?lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5",
                )
                .await
                .json;
            let newest = o["queue_totals"]["messages_details"]["samples"][0]["sample"].as_u64()?;
            (newest == 4).then_some(o)
        }
    })
    .await;
    assert_eq!(overview["queue_totals"]["messages"], 4, "{overview}");
    let published = &overview["message_stats"]["publish_details"]["samples"];
    assert!(published.is_array(), "{overview}");
    assert!(overview.get("listeners").is_none(), "{overview}");
    for path in [mine, theirs] {
        api.delete(&path).await;
    }
    api.delete(&format!("/api/users/{user}")).await;
    api.delete(&format!("/api/vhosts/{vhost}")).await;
    broker.stop().await;
}

/// Leveret's `type` parameter on queue lists: the UI's streams list.
#[tokio::test]
async fn queue_lists_keep_one_type_when_asked() {
    if common::against_other_broker() {
        return; // Leveret's own parameter
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    for (name, kind) in [
        ("a-classic", "classic"),
        ("b-stream", "stream"),
        ("c-stream", "stream"),
    ] {
        let reply = api
            .put(
                &format!("/api/queues/%2F/{name}"),
                json!({"durable": true, "arguments": {"x-queue-type": kind}}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_string())
            .collect()
    };
    let page = api
        .get("/api/queues?type=stream&page=1&page_size=1")
        .await
        .json;
    assert_eq!(names(&page), ["b-stream"]);
    assert_eq!(page["total_count"], 2, "{page}");
    assert_eq!(page["page_count"], 2, "{page}");
    let page = api
        .get("/api/queues/%2F?type=classic&page=1&page_size=10")
        .await
        .json;
    assert_eq!(names(&page), ["a-classic"]);
    let all = api.get("/api/queues?page=1&page_size=10").await.json;
    assert_eq!(all["total_count"], 3);
    broker.stop().await;
}

/// A queue's arguments from "Add a new queue", a redeclare with other
/// arguments refused in place, an exchange made, and a binding added and
/// removed from both the queue's and the exchange's page.
#[tokio::test]
async fn in_a_browser_queues_exchanges_and_bindings_are_made_and_unbound() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let seen = crate::webui::drive(&broker, &browser, "uiobjects.objects", &[]).await;
    // The queue the form made, with typed arguments.
    let q = api.get("/api/queues/%2F/made-in-the-form").await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(
        q.json["arguments"],
        json!({"x-max-length": 10, "x-dead-letter-exchange": "dlx", "x-single-active-consumer": true})
    );
    assert_eq!(q.json["durable"], true);
    assert_eq!(
        seen["conflict"].as_str().unwrap(),
        "inequivalent arg 'x-max-length' for queue 'made-in-the-form' in vhost '/': received '20' but current is '10'"
    );
    let x = api.get("/api/exchanges/%2F/made-exchange").await;
    assert_eq!(x.status, 200, "{}", x.text);
    assert_eq!(x.json["type"], "topic");
    assert_eq!(x.json["arguments"], json!({"alternate-exchange": "alt"}));
    // Bound and unbound in the browser: nothing left between them.
    assert_eq!(seen["bound_from_exchange"], "from/exchange %page~");
    assert_eq!(seen["bound_from_queue"], "from-queue-page");
    let left = api
        .get("/api/bindings/%2F/e/made-exchange/q/made-in-the-form")
        .await;
    assert_eq!(left.json, json!([]), "{}", left.text);
    broker.stop().await;
}

/// The streams list shows a stream queue with its size and readers, and
/// the stream's page its readers with offsets and lag.
#[tokio::test]
async fn in_a_browser_the_streams_list_shows_stream_queues() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    for (name, kind) in [("a-stream", "stream"), ("not-a-stream", "classic")] {
        let reply = api
            .put(
                &format!("/api/queues/%2F/{name}"),
                json!({"durable": true, "arguments": {"x-queue-type": kind}}),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    let conn = broker.connect().await;
    publish_confirmed(&conn, "a-stream", 5).await;
    // An AMQP reader from the first offset, with a prefetch of 2: it has
    // read 2 and lags behind the rest.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(2, Default::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let _consumer = ch
        .basic_consume(
            "a-stream".into(),
            "reader-1".into(),
            Default::default(),
            args,
        )
        .await
        .unwrap();
    // A stream protocol client that publishes 3 and reads from the first.
    let mut client = crate::stream_mgmt::Client::guest(&broker, "ui-stream-client").await;
    client.declare_publisher(7, "ui-writer", "a-stream").await;
    client.publish_confirmed(7, 1..4).await;
    client.subscribe_first(1, "a-stream", 1).await;
    let seen = crate::webui::drive(&broker, &browser, "uiobjects.streams", &[]).await;
    assert_eq!(seen["streams"], json!(["a-stream"]));
    assert_eq!(seen["messages"], "8");
    assert_eq!(seen["reader"], "reader-1");
    assert_eq!(seen["publisher"], "ui-writer");
    assert_eq!(seen["publisher_confirmed"], "3");
    assert_eq!(seen["consumer_stream"], "a-stream");
    drop(client);
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

/// The overview shows the data directory and, while a publisher's
/// messages are being confirmed, a publisher confirm rate.
#[tokio::test]
async fn in_a_browser_the_overview_shows_the_data_dir_and_the_confirm_rate() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let node = api.get("/api/nodes").await.json[0].clone();
    let dir = node["db_dir"].as_str().unwrap().to_string();
    let conn = broker.connect().await;
    let queue = common::unique("uiobjects-confirm");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // A steady trickle of confirmed publishes while the browser looks.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let queue = queue.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    b"x",
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let seen = crate::webui::drive(
        &broker,
        &browser,
        "uiobjects.overview",
        &[("WEBUI_DB_DIR", &dir)],
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    assert_eq!(seen["db_dir"], dir.as_str());
    let rate = seen["confirm_rate"].as_str().unwrap();
    assert!(rate.ends_with("/s") && rate != "0.00/s", "{rate}");
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

/// Issue 19: 10,000 queues load, filter and sort without freezing the
/// page (the add-queue form beside the list must not change that): no
/// task of the page's runs long, whatever the API takes.
#[tokio::test]
async fn in_a_browser_ten_thousand_queues_load_and_filter_without_freezing() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    const QUEUES: usize = 10_000;
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let nowait = QueueDeclareOptions {
        nowait: true,
        ..Default::default()
    };
    for i in 0..QUEUES {
        ch.queue_declare(
            format!("many-{i:05}").as_str().into(),
            nowait,
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // The channel's methods are handled in order: this answers after all.
    ch.queue_declare(
        "many-last".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let total = (QUEUES + 1).to_string();
    let seen = crate::webui::drive(
        &broker,
        &browser,
        "uiobjects.many_queues",
        &[("WEBUI_QUEUES", &total)],
    )
    .await;
    eprintln!("10,000 queues in the browser: {seen}");
    // "many-0999" matches many-09990 … many-09999.
    assert_eq!(seen["rows"], 10);
    let longest = seen["longest_task_ms"].as_f64().unwrap();
    assert!(longest < 1000.0, "the page froze for {longest} ms: {seen}");
    // The measure works: it saw the scenario's own 120 ms task.
    assert!(seen["observer_saw_ms"].as_f64().unwrap() >= 100.0, "{seen}");
    conn.close(200, "bye".into()).await.unwrap();
    broker.stop().await;
}

/// The header's vhost filter refreshes with the page: a vhost added or
/// deleted shows there without logging in again.
#[tokio::test]
async fn in_a_browser_the_vhost_filter_follows_vhosts_added_and_deleted() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = crate::webui::chromium() else {
        return;
    };
    let broker = TestBroker::start().await;
    let seen = crate::webui::drive(&broker, &browser, "uiobjects.vhost_list", &[]).await;
    assert_eq!(seen, json!({"added": true, "removed": true}));
    broker.stop().await;
}
