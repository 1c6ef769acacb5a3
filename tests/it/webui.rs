//! The web management UI (issue 19): how it is served (plain HTTP checks),
//! and what a user does with it, in headless Chromium driven by Playwright
//! (tests/python/webui.py).
//!
//! The browser is Debian's `chromium` (`LEVERET_CHROMIUM` overrides the
//! path) and Playwright comes from tests/python/requirements.txt; `.ci/run`
//! and `scripts/install-test-deps` install both. Without chromium the
//! browser tests skip with a message, except under CI (`CI` set), where
//! they fail: CI must run them.
//!
//! With `LEVERET_UI_SCREENSHOTS` set (to docs/screenshots to refresh the
//! README's) the browser test also saves screenshots there, which takes
//! it some 15 s more.

use crate::common::{self, http::Api, TestBroker};
use futures_lite::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A queue name that is markup: the UI must show it as text.
const HOSTILE: &str = "<img src=x onerror=alert(1)>/q";

/// One GET without credentials; the status line and headers (lower-cased)
/// and the body.
async fn get(addr: SocketAddr, path: &str, extra: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_ascii_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[tokio::test]
async fn the_ui_is_served_without_credentials_under_a_strict_policy() {
    if common::against_other_broker() {
        return; // Leveret's own UI
    }
    let broker = TestBroker::start().await;
    let addr = broker.mgmt_addr.unwrap();

    let (head, body) = get(addr, "/", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(body.contains(r#"<script type="module" src="/ui/app.js"></script>"#));
    let csp = header(&head, "content-security-policy").expect("a CSP");
    assert!(csp.starts_with("default-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));

    for (file, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("queue.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let (head, body) = get(addr, &format!("/ui/{file}"), "").await;
        assert!(head.starts_with("http/1.1 200"), "{file}: {head}");
        assert_eq!(header(&head, "content-type"), Some(kind), "{file}");
        assert!(!body.is_empty());
        // Revalidation: the same bytes are not sent again.
        let etag = header(&head, "etag").expect("an etag").to_string();
        let (again, body) = get(
            addr,
            &format!("/ui/{file}"),
            &format!("If-None-Match: {etag}\r\n"),
        )
        .await;
        assert!(again.starts_with("http/1.1 304"), "{file}: {again}");
        assert!(body.is_empty());
    }
    // No script or style is inline: the policy would block it.
    let (_, shell) = get(addr, "/", "").await;
    assert!(!shell.contains("<script>") && !shell.contains("<style") && !shell.contains("style="));

    // Anything else is still the API's 404, and the API still wants credentials.
    let (head, body) = get(addr, "/ui/../mgmt/mod.rs", "").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({"error": "Object Not Found", "reason": "Not Found"})
    );
    let (head, _) = get(addr, "/ui/nothing.js", "").await;
    assert!(head.starts_with("http/1.1 404"), "{head}");
    let (head, _) = get(addr, "/api/overview", "").await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    broker.stop().await;
}

/// Debian's chromium, or `None` (after saying why) when the browser tests
/// cannot run here. Under CI its absence is a failure.
pub(crate) fn chromium() -> Option<String> {
    let path = std::env::var("LEVERET_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&path).exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{path} is missing: CI must run the browser tests (apt-get install chromium)"
    );
    eprintln!(
        "SKIPPED: no browser at {path} (apt-get install chromium, then scripts/install-test-deps)"
    );
    None
}

fn screenshots() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LEVERET_UI_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir.canonicalize().unwrap())
}

/// Runs tests/python/webui.py's `scenario` against `broker`'s UI; its JSON.
pub(crate) async fn drive(
    broker: &TestBroker,
    browser: &str,
    scenario: &str,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let base = format!("http://{}", broker.mgmt_addr.unwrap());
    let mut cmd = std::process::Command::new(crate::cross_client::python());
    cmd.current_dir(crate::cross_client::repo_root())
        .arg("tests/python/webui.py")
        .arg(&base)
        .arg(scenario)
        .env("LEVERET_CHROMIUM", browser)
        .envs(env.iter().copied());
    if let Some(dir) = screenshots().filter(|_| scenario == "main") {
        cmd.arg(dir);
    }
    let out = crate::cross_client::run(cmd).await;
    assert!(
        out.success(),
        "{}",
        out.report(&format!(
            "webui.py {scenario} (Playwright; scripts/install-test-deps installs it)"
        ))
    );
    serde_json::from_str(out.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test]
async fn in_a_browser_guest_sees_a_queue_publishes_and_gets_messages() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let broker = TestBroker::start().await;
    let api = Api::of(&broker).unwrap();
    let path = format!("/api/queues/%2F/{}", urlencoding(HOSTILE));
    let reply = api
        .put(
            &path,
            json!({"durable": true, "arguments": {"x-max-length": 1000}}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    for i in 0..3 {
        let reply = api
            .post(
                "/api/exchanges/%2F/amq.default/publish",
                json!({"properties": {}, "routing_key": HOSTILE, "payload": format!("m{i}"), "payload_encoding": "string"}),
            )
            .await;
        assert_eq!(reply.json, json!({"routed": true}));
    }
    // An exchange whose name is markup too, bound to the queue with key "k".
    let exchange = format!("{HOSTILE}-x");
    let x = urlencoding(&exchange);
    let reply = api
        .put(
            &format!("/api/exchanges/%2F/{x}"),
            json!({"type": "direct"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let binding = format!("/api/bindings/%2F/e/{x}/q/{}", urlencoding(HOSTILE));
    let reply = api.post(&binding, json!({"routing_key": "k"})).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let reply = api
        .put(
            "/api/users/plain",
            json!({"password": "secret", "tags": ""}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);

    // A client with a channel, for the browser to find and close.
    let client = common::unique("webui-client");
    let conn = lapin::Connection::connect(
        &broker.uri,
        lapin::ConnectionProperties::default().with_connection_name(client.as_str().into()),
    )
    .await
    .unwrap();
    let _ch = conn.create_channel().await.unwrap();
    let mut events = conn.events_listener();

    let seen = drive(
        &broker,
        &browser,
        "main",
        &[
            ("WEBUI_QUEUE", HOSTILE),
            ("WEBUI_DEPTH", "3"),
            ("WEBUI_EXCHANGE", &exchange),
            ("WEBUI_CONNECTION", &client),
            ("WEBUI_NEW_USER", "made-in-the-browser"),
            ("WEBUI_PLAIN_USER", "plain"),
        ],
    )
    .await;
    assert_eq!(seen["overview_total"], "3");
    assert_eq!(seen["list_depth"], "3");
    assert_eq!(seen["after_publish"], "4");
    assert_eq!(
        seen["got"],
        json!(["hello from the browser", "through the exchange"])
    );
    assert_eq!(seen["refused"], "Not management user");

    assert_eq!(
        seen["confirmations"],
        json!([
            format!("Purge all messages of queue \"{HOSTILE}\"?"),
            format!("Delete queue \"{HOSTILE}\"?"),
            "Close this connection?".to_string(),
            "Delete user \"made-in-the-browser\"?".to_string(),
            "Delete virtual host \"made-vhost\" and everything in it?".to_string(),
        ])
    );
    // The browser's delete really deleted it.
    assert_eq!(api.get(&path).await.status, 404);
    assert_eq!(seen["user_made"], "made-in-the-browser");
    assert_eq!(api.get("/api/users/made-in-the-browser").await.status, 404);
    assert_eq!(seen["exported_users"], json!(["guest", "plain"]));
    assert_eq!(api.get("/api/vhosts/made-vhost").await.status, 404);
    let imported = api.get("/api/queues/%2F/imported-in-the-browser").await;
    assert_eq!(imported.status, 200, "{}", imported.text);
    assert_eq!(imported.json["durable"], true);
    // The client was told why its connection was closed.
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return e;
            }
        }
        panic!("lapin's events ended without an error");
    })
    .await
    .expect("the client saw its connection closed");
    assert_eq!(
        common::amqp::amqp_error(&error),
        Some((320, "CONNECTION_FORCED - closed from the browser".into())),
        "{error}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn in_a_browser_the_memory_alarm_shows_as_a_banner() {
    if common::against_other_broker() {
        return;
    }
    let Some(browser) = chromium() else { return };
    let mut config = leveret::Config::default();
    config.limits.memory_high_watermark = 256 * 1024;
    let broker = TestBroker::start_with(config).await;
    let api = Api::of(&broker).unwrap();
    let conn = broker.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let queue = common::unique("webui-alarm");
    common::amqp::declare_queue(&ch, &queue, Default::default(), Default::default()).await;
    // About 1 MiB held, four times the watermark. lapin holds publishes
    // back once blocked, so publish from a task that may never finish.
    let publishing = tokio::spawn({
        let (ch, queue) = (ch.clone(), queue.clone());
        async move {
            let body = vec![0u8; 16 * 1024];
            for _ in 0..64 {
                let publish = ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                );
                if publish.await.is_err() {
                    return;
                }
            }
        }
    });
    common::eventually("the memory alarm", Duration::from_secs(10), || async {
        api.get("/api/nodes").await.json[0]["mem_alarm"] == json!(true)
    })
    .await;

    let seen = drive(&broker, &browser, "alarm", &[]).await;
    let banner = seen["banner"].as_str().unwrap();
    assert!(banner.starts_with("Memory alarm on node "), "{banner}");
    publishing.abort();
    drop(conn);
    broker.stop().await;
}

fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
