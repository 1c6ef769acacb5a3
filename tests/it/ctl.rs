//! `leveret ctl`, the management CLI, run as users run it: the real binary
//! as a subprocess against a broker's management HTTP API.
//!
//! Against the in-process broker by default; with `LEVERET_TEST_URI` and
//! `LEVERET_TEST_MGMT` set, against another broker's API (RabbitMQ's
//! management plugin), which these tests share with others: every name is
//! unique and every test removes what it made. RabbitMQ's message counts
//! lag a few seconds behind, so counts are polled.

use crate::common;

use common::http::Api;
use common::{unique, TestBroker};
use lapin::{options::*, types::FieldTable};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a count or a listing may take to show a change.
const SETTLE: Duration = Duration::from_secs(8);
/// How long one `leveret ctl` run may take before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// What one run printed and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// The one-line error of a failed run.
    fn error_line(&self) -> &str {
        assert_ne!(self.code, 0, "expected a failure: {self:?}");
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("backtrace"),
            "a panic: {self:?}"
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "one line on stderr: {self:?}"
        );
        self.stderr.trim_end()
    }
}

/// `leveret ctl` pointed at one broker's API.
struct Ctl {
    url: String,
}

impl Ctl {
    fn of(api: &Api) -> Ctl {
        Ctl {
            url: format!("http://{}", api.addr),
        }
    }

    /// Runs `leveret ctl --url URL ARGS…` with `env` set and `stdin` piped in.
    async fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
        let mut full = vec!["ctl".to_string(), "--url".into(), self.url.clone()];
        full.extend(args.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stdin = stdin.map(str::to_string);
        // Never block the runtime the in-process broker runs on.
        tokio::task::spawn_blocking(move || run_binary(&full, &env, stdin))
            .await
            .unwrap()
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, &[], None).await
    }

    async fn run_as(&self, user: &str, password: &str, args: &[&str]) -> Out {
        let mut full = vec!["--user", user, "--password", password];
        full.extend_from_slice(args);
        self.run(&full).await
    }

    /// Runs and asserts success; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "leveret ctl {args:?} failed: {out:?}");
        out.stdout
    }

    /// Runs with `--format json` and parses stdout.
    async fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--format", "json"];
        full.extend_from_slice(args);
        let stdout = self.ok(&full).await;
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("leveret ctl {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// The objects `list WHAT --format json` prints.
    async fn list(&self, what: &str) -> Vec<Value> {
        match self.json(&["list", what]).await {
            Value::Array(items) => items,
            other => panic!("list {what} printed no array: {other}"),
        }
    }

    /// The listed object whose `field` is `value`, if any.
    async fn find(&self, what: &str, field: &str, value: &str) -> Option<Value> {
        self.list(what)
            .await
            .into_iter()
            .find(|o| o[field].as_str() == Some(value))
    }

    /// Waits until the queue reports `messages` messages (RabbitMQ's counts
    /// lag).
    async fn wait_for_messages(&self, queue: &str, messages: u64) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let seen = self
                .find("queues", "name", queue)
                .await
                .and_then(|q| q["messages"].as_u64());
            if seen == Some(messages) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} shows {seen:?} messages after {SETTLE:?}, expected {messages}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn run_binary(args: &[String], env: &[(String, String)], stdin: Option<String>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leveret"));
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "LEVERET_URL",
        "LEVERET_USER",
        "LEVERET_PASSWORD",
        "LEVERET_VHOST",
        "LEVERET_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().expect("start leveret ctl");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("leveret {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// A user's tags as a list, whether the API gives an array (RabbitMQ 3.9+)
/// or a comma-separated string.
fn tags(user: &Value) -> Vec<String> {
    match &user["tags"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        Value::String(s) => s
            .split(',')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        _ => vec![],
    }
}

/// The table line whose first column is `name`.
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declare_list_publish_get_purge_delete() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);
    let q = unique("ctl-queue");
    let name = format!("name={q}");

    let out = ctl
        .ok(&[
            "declare",
            "queue",
            &name,
            r#"arguments={"x-max-length":10}"#,
        ])
        .await;
    assert_eq!(out, "queue declared\n");
    // Declaring it again the same way is fine.
    ctl.ok(&[
        "declare",
        "queue",
        &name,
        "durable=true",
        r#"arguments={"x-max-length":10}"#,
    ])
    .await;

    let table = ctl.ok(&["list", "queues"]).await;
    let heading = table.lines().next().unwrap();
    for column in [
        "name",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ] {
        assert!(heading.split_whitespace().any(|c| c == column), "{table}");
    }
    assert!(row(&table, &q).is_some(), "{q} in:\n{table}");

    let listed = ctl.find("queues", "name", &q).await.expect("queue listed");
    assert_eq!(listed["durable"], true);
    assert_eq!(listed["arguments"]["x-max-length"], 10);

    let routing_key = format!("routing_key={q}");
    let out = ctl
        .ok(&["publish", &routing_key, "payload=hello world"])
        .await;
    assert_eq!(out, "message published\n");
    let out = ctl
        .run_with(
            &["publish", "exchange=amq.direct", &routing_key],
            &[],
            Some("from stdin"),
        )
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    // amq.direct has no binding to the queue.
    assert_eq!(out.stdout, "message published but NOT routed\n");
    let out = ctl
        .run_with(&["publish", &routing_key], &[], Some("from stdin"))
        .await;
    assert_eq!(out.stdout, "message published\n", "{out:?}");
    let routed = ctl.json(&["publish", &routing_key, "payload=third"]).await;
    assert_eq!(routed["routed"], true);
    ctl.wait_for_messages(&q, 3).await;

    let table = ctl.ok(&["get", &format!("queue={q}"), "count=3"]).await;
    let mut lines = table.lines();
    let heading: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    for column in [
        "routing_key",
        "exchange",
        "message_count",
        "payload",
        "redelivered",
    ] {
        assert!(heading.contains(&column), "{table}");
    }
    assert!(table.contains("hello world"), "{table}");
    assert!(table.contains("from stdin"), "{table}");
    assert_eq!(lines.count(), 3, "{table}");

    // get requeues by default: the messages are still there.
    let got = ctl.json(&["get", &format!("queue={q}"), "count=5"]).await;
    let payloads: Vec<&str> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads, ["hello world", "from stdin", "third"]);
    assert_eq!(got[0]["routing_key"], q.as_str());
    assert_eq!(got[0]["redelivered"], true);

    // ack_requeue_false takes one away.
    let got = ctl
        .json(&[
            "get",
            &format!("queue={q}"),
            "ackmode=ack_requeue_false",
            "encoding=base64",
        ])
        .await;
    assert_eq!(got[0]["payload_encoding"], "base64");
    assert_eq!(got[0]["payload"], "aGVsbG8gd29ybGQ=");
    ctl.wait_for_messages(&q, 2).await;

    assert_eq!(ctl.ok(&["purge", "queue", &name]).await, "queue purged\n");
    let got = ctl.json(&["get", &format!("queue={q}")]).await;
    assert_eq!(got, serde_json::json!([]));
    ctl.wait_for_messages(&q, 0).await;

    assert_eq!(
        ctl.ok(&["delete", "queue", &name, "if_empty=true"]).await,
        "queue deleted\n"
    );
    assert!(ctl.find("queues", "name", &q).await.is_none());
    let out = ctl.run(&["delete", "queue", &name]).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        out.error_line(),
        format!("leveret ctl: 404 Not Found: queue '{q}' in vhost '/' (Object Not Found)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_and_bindings_are_declared_listed_and_deleted() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);
    let x = unique("ctl-x");
    let x2 = unique("ctl-x2");
    let q = unique("ctl-bq");

    let out = ctl
        .ok(&["declare", "exchange", &format!("name={x}"), "type=topic"])
        .await;
    assert_eq!(out, "exchange declared\n");
    ctl.ok(&[
        "declare",
        "exchange",
        &format!("name={x2}"),
        "type=fanout",
        "durable=false",
        "auto_delete=false",
    ])
    .await;
    ctl.ok(&["declare", "queue", &format!("name={q}"), "durable=false"])
        .await;

    let table = ctl.ok(&["list", "exchanges"]).await;
    let cols = row(&table, &x).unwrap_or_else(|| panic!("{x} in:\n{table}"));
    assert_eq!(cols[1], "topic");
    let listed = ctl.find("exchanges", "name", &x).await.unwrap();
    assert_eq!(listed["type"], "topic");
    assert_eq!(listed["durable"], true);
    let listed = ctl.find("exchanges", "name", &x2).await.unwrap();
    assert_eq!(listed["durable"], false);

    let (src, dst) = (format!("source={x}"), format!("destination={q}"));
    let out = ctl
        .ok(&["declare", "binding", &src, &dst, "routing_key=a.#"])
        .await;
    assert_eq!(out, "binding declared\n");
    ctl.ok(&[
        "declare",
        "binding",
        &src,
        &format!("destination={x2}"),
        "destination_type=exchange",
    ])
    .await;

    let table = ctl.ok(&["list", "bindings"]).await;
    let line = table
        .lines()
        .find(|l| l.contains(&x) && l.contains(&q))
        .unwrap_or_else(|| panic!("binding {x} -> {q} in:\n{table}"));
    assert!(line.contains("a.#") && line.contains("queue"), "{line}");
    let bindings = ctl.list("bindings").await;
    let to_exchange = bindings
        .iter()
        .find(|b| b["source"] == x.as_str() && b["destination"] == x2.as_str())
        .expect("exchange-to-exchange binding listed");
    assert_eq!(to_exchange["destination_type"], "exchange");
    let properties_key = to_exchange["properties_key"].as_str().unwrap().to_string();

    let publish = [
        "publish",
        &format!("exchange={x}"),
        "routing_key=a.b",
        "payload=p",
    ];
    assert_eq!(ctl.ok(&publish).await, "message published\n");

    let out = ctl
        .ok(&["delete", "binding", &src, &dst, "routing_key=a.#"])
        .await;
    assert_eq!(out, "binding deleted\n");
    ctl.ok(&[
        "delete",
        "binding",
        &src,
        &format!("destination={x2}"),
        "destination_type=exchange",
        &format!("properties_key={properties_key}"),
    ])
    .await;
    let left: Vec<Value> = ctl
        .list("bindings")
        .await
        .into_iter()
        .filter(|b| b["source"] == x.as_str())
        .collect();
    assert!(left.is_empty(), "bindings left: {left:?}");
    assert_eq!(ctl.ok(&publish).await, "message published but NOT routed\n");
    let out = ctl
        .run(&["delete", "binding", &src, &dst, "routing_key=a.#"])
        .await;
    assert!(
        out.error_line().contains("no binding from exchange"),
        "{out:?}"
    );

    for name in [&x, &x2] {
        let out = ctl
            .ok(&["delete", "exchange", &format!("name={name}")])
            .await;
        assert_eq!(out, "exchange deleted\n");
    }
    ctl.ok(&["delete", "queue", &format!("name={q}")]).await;
    assert!(ctl.find("exchanges", "name", &x).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vhosts_and_permissions() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);
    let user = unique("ctl-user");
    let vhost = unique("ctl-vhost");
    let (name, vname) = (format!("name={user}"), format!("name={vhost}"));

    assert_eq!(ctl.ok(&["add_vhost", &vname]).await, "vhost added\n");
    assert!(ctl.find("vhosts", "name", &vhost).await.is_some());
    let out = ctl
        .ok(&["add_user", &name, "password=first", "tags=management"])
        .await;
    assert_eq!(out, "user added\n");
    let table = ctl.ok(&["list", "users"]).await;
    assert_eq!(row(&table, &user), Some(vec![user.as_str(), "management"]));

    let out = ctl
        .ok(&[
            "set_permissions",
            &format!("user={user}"),
            &format!("vhost={vhost}"),
            "configure=^ctl-",
            "write=.*",
            "read=.*",
        ])
        .await;
    assert_eq!(out, "permissions set\n");
    let table = ctl.ok(&["--vhost", &vhost, "list", "permissions"]).await;
    assert_eq!(
        row(&table, &user),
        Some(vec![user.as_str(), "^ctl-", ".*", ".*"]),
        "{table}"
    );

    // The new user logs in and sees its vhost.
    let vhosts = ctl
        .run_as(&user, "first", &["--format", "json", "list", "vhosts"])
        .await;
    assert_eq!(vhosts.code, 0, "{vhosts:?}");
    assert!(vhosts.stdout.contains(&vhost), "{vhosts:?}");

    // Per-vhost commands follow --vhost, or LEVERET_VHOST.
    let q = unique("ctl-vq");
    let out = ctl
        .run_with(
            &["declare", "queue", &format!("name={q}")],
            &[("LEVERET_VHOST", vhost.as_str())],
            None,
        )
        .await;
    assert_eq!(out.stdout, "queue declared\n", "{out:?}");
    let in_vhost = ctl.ok(&["--vhost", &vhost, "list", "queues"]).await;
    assert!(row(&in_vhost, &q).is_some(), "{in_vhost}");
    assert!(ctl.find("queues", "name", &q).await.is_none(), "not in /");

    // Tags change, the password stays.
    assert_eq!(
        ctl.ok(&["set_user_tags", &name, "tags=monitoring,management"])
            .await,
        "user tags set\n"
    );
    let listed = ctl.find("users", "name", &user).await.unwrap();
    assert_eq!(tags(&listed), ["monitoring", "management"]);
    let out = ctl.run_as(&user, "first", &["list", "vhosts"]).await;
    assert_eq!(out.code, 0, "password kept: {out:?}");

    // The password changes, the tags stay.
    assert_eq!(
        ctl.ok(&["change_password", &name, "password=second"]).await,
        "password changed\n"
    );
    let out = ctl.run_as(&user, "first", &["list", "vhosts"]).await;
    assert!(
        out.error_line()
            .starts_with(&format!("leveret ctl: 401 not authorized as {user}")),
        "{out:?}"
    );
    let out = ctl.run_as(&user, "second", &["list", "vhosts"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let listed = ctl.find("users", "name", &user).await.unwrap();
    assert_eq!(tags(&listed), ["monitoring", "management"]);

    let out = ctl
        .ok(&[
            "clear_permissions",
            &format!("user={user}"),
            &format!("vhost={vhost}"),
        ])
        .await;
    assert_eq!(out, "permissions cleared\n");
    let permissions = ctl.json(&["--vhost", &vhost, "list", "permissions"]).await;
    assert!(!permissions.to_string().contains(&user), "{permissions}");
    // The aliases: declare permission / delete permission.
    ctl.ok(&[
        "--vhost",
        &vhost,
        "declare",
        "permission",
        &format!("user={user}"),
        "configure=",
        "write=",
        "read=.*",
    ])
    .await;
    ctl.ok(&[
        "--vhost",
        &vhost,
        "delete",
        "permission",
        &format!("user={user}"),
    ])
    .await;

    assert_eq!(ctl.ok(&["delete_user", &name]).await, "user deleted\n");
    assert!(ctl.find("users", "name", &user).await.is_none());
    let out = ctl.run(&["delete", "user", &name]).await;
    assert_eq!(
        out.error_line(),
        format!("leveret ctl: 404 Not Found: user '{user}' (Object Not Found)")
    );
    assert_eq!(
        ctl.ok(&["delete", "vhost", &vname]).await,
        "vhost deleted\n"
    );
    assert!(ctl.find("vhosts", "name", &vhost).await.is_none());
    let out = ctl.run(&["delete_vhost", &vname]).await;
    assert!(out.error_line().contains("404"), "{out:?}");

    // declare user / declare vhost are the same as add_user / add_vhost.
    let other = unique("ctl-user2");
    ctl.ok(&[
        "declare",
        "user",
        &format!("name={other}"),
        "password=x",
        "tags=",
    ])
    .await;
    let listed = ctl.find("users", "name", &other).await.unwrap();
    assert!(tags(&listed).is_empty(), "{listed}");
    ctl.ok(&["delete", "user", &format!("name={other}")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_and_import_round_trip() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);
    let q = unique("ctl-defq");
    let x = unique("ctl-defx");
    ctl.ok(&[
        "declare",
        "queue",
        &format!("name={q}"),
        r#"arguments={"x-max-length":7}"#,
    ])
    .await;
    ctl.ok(&["declare", "exchange", &format!("name={x}"), "type=fanout"])
        .await;
    ctl.ok(&[
        "declare",
        "binding",
        &format!("source={x}"),
        &format!("destination={q}"),
    ])
    .await;

    let dir = common::process::TempDir::new(&unique("ctl-defs"));
    let file = dir.path().join("definitions.json");
    let file = file.to_str().unwrap();
    let out = ctl.ok(&["export", file]).await;
    assert_eq!(out, format!("definitions exported to {file}\n"));
    let exported: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    // `export definitions -` writes the same to stdout.
    let stdout: Value =
        serde_json::from_str(&ctl.ok(&["export", "definitions", "-"]).await).unwrap();
    assert!(stdout["queues"].is_array() && stdout["vhosts"].is_array());

    // Import back only what this test made: the broker may be shared.
    let pick = |kind: &str, keep: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        exported[kind]
            .as_array()
            .unwrap_or_else(|| panic!("no {kind} in {exported}"))
            .iter()
            .filter(|o| keep(o))
            .cloned()
            .collect()
    };
    let queues = pick("queues", &|o| o["name"] == q.as_str());
    let exchanges = pick("exchanges", &|o| o["name"] == x.as_str());
    let bindings = pick("bindings", &|o| o["source"] == x.as_str());
    assert_eq!((queues.len(), exchanges.len(), bindings.len()), (1, 1, 1));
    assert_eq!(queues[0]["arguments"]["x-max-length"], 7);
    let mine = serde_json::json!({
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    });
    std::fs::write(file, mine.to_string()).unwrap();

    ctl.ok(&["delete", "exchange", &format!("name={x}")]).await;
    ctl.ok(&["delete", "queue", &format!("name={q}")]).await;
    assert!(ctl.find("queues", "name", &q).await.is_none());

    let out = ctl.ok(&["import", file]).await;
    assert_eq!(out, format!("definitions imported from {file}\n"));
    let queue = ctl
        .find("queues", "name", &q)
        .await
        .expect("queue imported");
    assert_eq!(queue["arguments"]["x-max-length"], 7);
    assert!(ctl.find("exchanges", "name", &x).await.is_some());
    let bound = ctl
        .list("bindings")
        .await
        .into_iter()
        .any(|b| b["source"] == x.as_str() && b["destination"] == q.as_str());
    assert!(bound, "binding imported");

    // From stdin too; importing the same definitions again changes nothing.
    let out = ctl
        .run_with(
            &["import", "definitions", "-"],
            &[],
            Some(&mine.to_string()),
        )
        .await;
    assert_eq!(
        out.stdout, "definitions imported from standard input\n",
        "{out:?}"
    );

    // What Leveret cannot apply fails the import, named; skipping it is
    // asked for, and what was left out is listed.
    if !common::against_other_broker() {
        let shovel = json!({"parameters": [{"component": "federation-upstream", "vhost": "/", "name": "s1",
                                             "value": {"uri": "amqp://upstream"}}]});
        let out = ctl
            .run_with(&["import", "-"], &[], Some(&shovel.to_string()))
            .await;
        assert!(
            out.error_line()
                .contains("parameter 's1' of component 'federation-upstream' in vhost '/'"),
            "{out:?}"
        );
        let out = ctl
            .run_with(
                &["import", "--skip-unsupported", "-"],
                &[],
                Some(&shovel.to_string()),
            )
            .await;
        assert_eq!(
            out.stdout,
            "definitions imported from standard input\n\
             left out: parameter 's1' of component 'federation-upstream' in vhost '/': Leveret has no federation\n",
            "{out:?}"
        );
    }

    let out = ctl.run_with(&["import", "-"], &[], Some("not json")).await;
    assert!(
        out.error_line()
            .starts_with("leveret ctl: standard input is not JSON"),
        "{out:?}"
    );

    ctl.ok(&["delete", "exchange", &format!("name={x}")]).await;
    ctl.ok(&["delete", "queue", &format!("name={q}")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_health() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);

    let status = ctl.ok(&["status"]).await;
    for key in [
        "product:",
        "connections:",
        "exchanges:",
        "queues:",
        "messages:",
    ] {
        assert!(
            status.lines().any(|l| l.starts_with(key)),
            "{key} in:\n{status}"
        );
    }
    let overview = ctl.json(&["status"]).await;
    assert!(overview["object_totals"]["queues"].is_u64(), "{overview}");

    let out = ctl.run(&["health"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "ok\n"), "{out:?}");
    // LEVERET_FORMAT selects the format as --format does.
    let out = ctl
        .run_with(&["health"], &[("LEVERET_FORMAT", "json")], None)
        .await;
    let body: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_channels_and_consumers_are_listed_and_closed() {
    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);
    let q = unique("ctl-cq");
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let tag = unique("ctl-tag");
    let _consumer = ch
        .basic_consume(
            q.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    // The consumer names its channel's connection.
    let deadline = Instant::now() + SETTLE;
    let consumer = loop {
        if let Some(c) = ctl.find("consumers", "consumer_tag", &tag).await {
            break c;
        }
        assert!(Instant::now() < deadline, "consumer {tag} not listed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(consumer["queue"]["name"], q.as_str());
    let table = ctl.ok(&["list", "consumers"]).await;
    assert!(
        table.lines().any(|l| l.contains(&q) && l.contains(&tag)),
        "{table}"
    );
    let connection = consumer["channel_details"]["connection_name"]
        .as_str()
        .expect("channel_details.connection_name")
        .to_string();
    let channel = consumer["channel_details"]["name"]
        .as_str()
        .unwrap()
        .to_string();

    let deadline = Instant::now() + SETTLE;
    loop {
        let c = ctl.find("connections", "name", &connection).await;
        let h = ctl.find("channels", "name", &channel).await;
        if let (Some(c), Some(_)) = (c, h) {
            assert_eq!(c["user"], "guest");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{connection} / {channel} not listed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let table = ctl.ok(&["list", "connections"]).await;
    assert!(table.contains(&connection), "{table}");
    let table = ctl.ok(&["list", "channels"]).await;
    assert!(table.contains(&channel), "{table}");

    let out = ctl
        .ok(&[
            "close",
            "connection",
            &format!("name={connection}"),
            "reason=closed by the ctl test",
        ])
        .await;
    assert_eq!(out, "connection closed\n");
    let deadline = Instant::now() + SETTLE;
    while conn.status().connected() {
        assert!(Instant::now() < deadline, "connection still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = ctl
        .run(&["close", "connection", &format!("name={connection}")])
        .await;
    assert!(out.error_line().contains("404"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_line_and_exit_non_zero() {
    // An address nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let nowhere = Ctl {
        url: format!("http://127.0.0.1:{port}"),
    };
    let out = nowhere.run(&["list", "queues"]).await;
    assert_eq!(
        out.error_line(),
        format!("leveret ctl: could not connect to http://127.0.0.1:{port}: connection refused")
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");

    // Bad command lines fail before any request (exit 2).
    let cases: &[(&[&str], &str)] = &[
        (
            &["declare", "queue"],
            "leveret ctl: declare queue needs name=…",
        ),
        (
            &["declare", "exchange", "name=x"],
            "leveret ctl: declare exchange needs type=…",
        ),
        (
            &["declare", "queue", "name=x", "durable=maybe"],
            "leveret ctl: declare queue: durable= must be true or false, not 'maybe'",
        ),
        (
            &["declare", "queue", "name=x", "arguments={"],
            "leveret ctl: declare queue: arguments= is not valid JSON",
        ),
        (
            &["declare", "queue", "nme=x"],
            "leveret ctl: declare queue does not take nme=",
        ),
        (
            &["declare", "queue", "x"],
            "leveret ctl: declare queue: expected key=value, got 'x'",
        ),
        (
            &["declare", "widget"],
            "leveret ctl: declare: unknown object type 'widget'",
        ),
        (&["list"], "leveret ctl: list needs what to list"),
        (
            &["list", "widgets"],
            "leveret ctl: list: unknown object type 'widgets'",
        ),
        (&["get"], "leveret ctl: get needs queue=…"),
        (
            &["publish", "payload=x"],
            "leveret ctl: publish needs routing_key=…",
        ),
        (
            &["get", "queue=q", "ackmode=keep"],
            "leveret ctl: get: ackmode= must be one of",
        ),
        (
            &["set_permissions", "user=u", "configure=.*", "write=.*"],
            "leveret ctl: set_permissions needs read=…",
        ),
        (
            &["delete", "binding", "source=x", "destination=q"],
            "leveret ctl: delete binding needs properties_key=… or routing_key=…",
        ),
        (&["export"], "leveret ctl: export needs a FILE"),
    ];
    for (args, expected) in cases {
        let out = nowhere.run(args).await;
        assert!(
            out.error_line().starts_with(expected),
            "{args:?}: expected {expected:?}, got {out:?}"
        );
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }

    let broker = TestBroker::start().await;
    let Some(api) = Api::of(&broker) else { return };
    let ctl = Ctl::of(&api);
    let q = unique("ctl-missing");
    let out = ctl.run(&["get", &format!("queue={q}")]).await;
    assert!(
        out.error_line().starts_with(&format!(
            "leveret ctl: 404 Not Found: queue '{q}' in vhost '/'"
        )),
        "{out:?}"
    );
    let out = ctl.run(&["purge", "queue", &format!("name={q}")]).await;
    assert!(out.error_line().contains("404 Not Found"), "{out:?}");

    let out = ctl
        .run_as("guest", "wrong-password", &["list", "queues"])
        .await;
    assert!(
        out.error_line()
            .starts_with("leveret ctl: 401 not authorized as guest"),
        "{out:?}"
    );
    assert_eq!(out.code, 1);

    // A vhost that does not exist.
    let v = unique("ctl-novhost");
    let out = ctl.run(&["--vhost", &v, "list", "queues"]).await;
    assert!(
        out.error_line()
            .starts_with(&format!("leveret ctl: 404 Not Found: vhost '{v}'")),
        "{out:?}"
    );

    // Redeclaring with other properties: the API's reason, on one line.
    let q = unique("ctl-redeclare");
    ctl.ok(&["declare", "queue", &format!("name={q}"), "durable=true"])
        .await;
    let out = ctl
        .run(&["declare", "queue", &format!("name={q}"), "durable=false"])
        .await;
    assert!(
        out.error_line()
            .starts_with("leveret ctl: 400 Bad Request: "),
        "{out:?}"
    );
    ctl.ok(&["delete", "queue", &format!("name={q}")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_command_and_flag() {
    let ctl = Ctl {
        url: "http://127.0.0.1:1".into(),
    };
    let out = ctl.run(&["--help"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Usage: leveret ctl"), "{}", out.stdout);
    for command in [
        "list",
        "declare queue",
        "declare exchange",
        "declare binding",
        "delete queue",
        "delete exchange",
        "delete binding",
        "purge queue",
        "publish",
        "get queue=",
        "close connection",
        "add_user",
        "delete_user",
        "change_password",
        "set_user_tags",
        "add_vhost",
        "delete_vhost",
        "set_permissions",
        "clear_permissions",
        "export",
        "import",
        "status",
        "health",
        "--url",
        "--user",
        "--password",
        "--vhost",
        "--format",
        "LEVERET_URL",
    ] {
        assert!(
            out.stdout.contains(command),
            "{command} in:\n{}",
            out.stdout
        );
    }
}

/// Super streams and a stream's status from the command line, as
/// rabbitmq-streams names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_and_stream_status() {
    if common::against_other_broker() {
        return;
    }
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let ctl = Ctl::of(&api);
    let name = unique("invoices");
    let out = ctl
        .ok(&[
            "add_super_stream",
            &name,
            "--partitions",
            "2",
            "--max-age",
            "1D",
        ])
        .await;
    assert_eq!(out, "super stream added\n");
    let partition = format!("{name}-1");
    let q = api.get(&format!("/api/queues/%2F/{partition}")).await.json;
    assert_eq!(q["arguments"]["x-max-age"], "1D", "{q}");
    // Two messages in partition 1, a consumer reading with prefetch 1.
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for body in [b"a", b"b"] {
        ch.basic_publish(
            name.as_str().into(),
            "1".into(),
            BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        lapin::types::AMQPValue::LongString("first".into()),
    );
    let _consumer = ch
        .basic_consume(
            partition.as_str().into(),
            "reader-1".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    let deadline = Instant::now() + SETTLE;
    let status = loop {
        let status = ctl.ok(&["stream_status", &partition]).await;
        if status.contains("consumer reader-1") && status.contains("first offset 0, last offset 1")
            || Instant::now() > deadline
        {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.starts_with("first offset 0, last offset 1, 1 segments"),
        "{status}"
    );
    // Delivered one of two (prefetch 1): its next offset is 1, one behind.
    assert!(
        status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["consumer", "reader-1", "1", "1"]),
        "{status}"
    );
    let err = ctl.run(&["stream_status", &name]).await;
    assert!(err.error_line().contains("404 Not Found"), "{err:?}");
    assert_eq!(
        ctl.ok(&["delete_super_stream", &name]).await,
        "super stream deleted\n"
    );
    assert_eq!(
        api.get(&format!("/api/queues/%2F/{partition}"))
            .await
            .status,
        404
    );
}
