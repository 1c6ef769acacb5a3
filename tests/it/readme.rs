//! The README's client snippets run as written: the pika and amqplib blocks
//! marked `<!-- readme-snippet: LANGUAGE -->` are taken from README.md, only
//! the port is rewritten, and each runs against the broker with the
//! interpreters and libraries the cross-client suites use
//! (`scripts/install-test-deps`). Python, JavaScript, then Python again on
//! one broker: both declare `orders` the same way, so neither order gives 406
//! PRECONDITION_FAILED.

use crate::common::TestBroker;
use crate::cross_client::{node, python, repo_root, require_node_deps, require_python_deps, run};

use std::process::Command;

/// The address the snippets connect to, as written in the README.
const README_ADDR: &str = "127.0.0.1:5672";

/// The fenced code block that follows `<!-- readme-snippet: {language} -->`.
/// Exactly one such block per language.
fn snippet(readme: &str, language: &str) -> String {
    let marker = format!("<!-- readme-snippet: {language} -->");
    assert_eq!(
        readme.matches(&marker).count(),
        1,
        "README.md must mark exactly one block with {marker}"
    );
    let after = &readme[readme.find(&marker).unwrap() + marker.len()..];
    let mut lines = after.lines().skip_while(|l| l.trim().is_empty());
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "{marker} must be followed by a fenced code block, found {fence:?}"
    );
    let body: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    let code = body.join("\n") + "\n";
    assert!(
        code.contains(README_ADDR),
        "the {language} snippet no longer connects to {README_ADDR}; update this test"
    );
    code
}

fn readme_snippets(addr: &str) -> (String, String) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let py = snippet(&readme, "python").replace(README_ADDR, addr);
    let js = snippet(&readme, "javascript").replace(README_ADDR, addr);
    (py, js)
}

async fn run_python(code: &str) -> String {
    let mut cmd = Command::new(python());
    cmd.current_dir(repo_root()).args(["-c", code]);
    let out = run(cmd).await;
    assert!(out.success(), "{}", out.report("the README's pika snippet"));
    out.stdout
}

async fn run_node(code: &str) -> String {
    let root = repo_root();
    // As `node hello.js` next to a node_modules holding amqplib.
    let mut cmd = Command::new(node());
    cmd.current_dir(&root)
        .env("NODE_PATH", root.join("tests/node/node_modules"))
        .args(["-e", code]);
    let out = run(cmd).await;
    assert!(
        out.success(),
        "{}",
        out.report("the README's amqplib snippet")
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_snippets_run_as_written() {
    let root = repo_root();
    require_python_deps(&root).await;
    require_node_deps(&root).await;
    let broker = TestBroker::start().await;
    let (py, js) = readme_snippets(&broker.addr.to_string());

    for (language, output) in [
        ("python", run_python(&py).await),
        ("javascript", run_node(&js).await),
        ("python", run_python(&py).await),
    ] {
        assert_eq!(
            output.trim(),
            "OrderPlaced #1",
            "the README's {language} snippet printed something else"
        );
    }
    broker.stop().await;
}
