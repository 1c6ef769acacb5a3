//! Replays every input the fuzzers found a bug with (kept under
//! `tests/fuzz_regressions/<target>/`) through the same code the fuzz
//! targets run (`fuzz/src/lib.rs`), so that a fixed bug stays fixed under an
//! ordinary `cargo test`, without nightly or cargo-fuzz.
//!
//! Inputs for bugs fixed on other branches wait in subdirectories, each
//! replayed by an ignored test until its fix is merged:
//! `nested_tables/<target>/` overflow the stack with deeply nested field
//! tables (a stack overflow aborts the whole test process), and
//! `poison_messages/<target>/` get the broker to deliver properties that
//! clients cannot decode.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 6] = [
    ("frame", harness::frame),
    ("method", harness::method),
    ("properties", harness::properties),
    ("field_table", harness::field_table),
    ("connection_before_login", |d| {
        harness::connection_before_login(d);
    }),
    ("connection_after_login", |d| {
        harness::connection_after_login(d);
    }),
];

fn kept_inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.expect("read dir entry").path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file());
    files.sort();
    files
}

/// Runs every kept input of every target under `root`; returns how many.
fn replay(root: &Path) -> usize {
    let mut replayed = 0;
    for (target, run) in TARGETS {
        for input in kept_inputs(&root.join(target)) {
            let data = std::fs::read(&input).expect("read a kept input");
            eprintln!("replaying {}", input.display());
            run(&data);
            replayed += 1;
        }
    }
    replayed
}

fn regressions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions")
}

#[test]
fn kept_crashers_run_cleanly() {
    let replayed = replay(&regressions_dir());
    eprintln!("{replayed} kept inputs replayed");
}

#[test]
fn kept_nested_table_crashers_run_cleanly() {
    let replayed = replay(&regressions_dir().join("nested_tables"));
    assert!(replayed > 0);
}

#[test]
fn kept_poison_message_crashers_run_cleanly() {
    let replayed = replay(&regressions_dir().join("poison_messages"));
    assert!(replayed > 0);
}

/// The seeds get past the handshake: after login the broker answers the
/// session's methods, so the fuzzer starts where the work is.
#[test]
fn seeds_reach_the_open_connection() {
    let sessions = harness::seeds::sessions();
    let (_, publish_get_ack) = &sessions[0];
    let reply = harness::connection_after_login(publish_get_ack);
    let methods = methods_sent(&reply);
    for expected in [(0, 10, 41), (1, 50, 11), (1, 60, 71), (0, 10, 51)] {
        assert!(
            methods.contains(&expected),
            "no {expected:?} (channel, class, method) in the broker's reply {methods:?}"
        );
    }
}

/// The nested-table inputs are well-formed: shallow, each is accepted.
#[test]
fn nested_table_inputs_are_valid_when_shallow() {
    for (target, name, input) in harness::seeds::nested_table_inputs(50) {
        match target {
            "field_table" => {
                assert!(amq_protocol::types::parsing::parse_field_table(&input[..]).is_ok())
            }
            "method" => assert!(leveret::protocol::method::decode_method(&input).is_ok()),
            "properties" => {
                let view = leveret::protocol::properties::PropertiesView::scan(&input).unwrap();
                assert!(view.headers(&input).is_some());
            }
            "connection_after_login" => {
                let methods = methods_sent(&harness::connection_after_login(&input));
                assert!(methods.contains(&(1, 50, 11)), "{name}: {methods:?}");
            }
            _ => {
                let methods = methods_sent(&harness::connection_before_login(&input));
                assert!(methods.contains(&(0, 10, 30)), "{name}: {methods:?}");
            }
        }
    }
}

/// (channel, class, method) of each method frame in a broker's output.
fn methods_sent(mut bytes: &[u8]) -> Vec<(u16, u16, u16)> {
    let mut methods = Vec::new();
    while bytes.len() >= 8 {
        let size = u32::from_be_bytes([bytes[3], bytes[4], bytes[5], bytes[6]]) as usize;
        let payload = &bytes[7..7 + size];
        if bytes[0] == 1 {
            methods.push((
                u16::from_be_bytes([bytes[1], bytes[2]]),
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            ));
        }
        bytes = &bytes[size + 8..];
    }
    methods
}

/// Writes the seed corpora to `fuzz/seeds/<target>/` and the nested-table
/// inputs to `tests/fuzz_regressions/nested_tables/<target>/`.
#[test]
#[ignore = "run by hand to regenerate fuzz/seeds"]
fn write_seed_corpora() {
    let write = |root: &Path, inputs: Vec<(&str, String, Vec<u8>)>| {
        for (target, name, bytes) in inputs {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).expect("create an input directory");
            std::fs::write(dir.join(name), bytes).expect("write an input");
        }
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    write(&repo.join("fuzz/seeds"), harness::seeds::corpora());
    write(
        &regressions_dir().join("nested_tables"),
        harness::seeds::nested_table_inputs(10_000),
    );
}
