//! What a definitions file holds that Leveret cannot apply, found before
//! anything is applied: an import either fails listing all of it, or (when
//! the caller asks to skip it) applies the rest and answers with the list.
//! Nothing RabbitMQ exports is dropped without the caller being told.

use super::{BindingDef, Definitions, ExchangeDef, QueueDef};
use crate::broker::access::is_known_algorithm;
use crate::broker::exchange::ExchangeKind;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;

/// One thing left out of an import, and why.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Omission {
    pub(super) what: String,
    pub(super) why: String,
}

impl Omission {
    pub(super) fn new(what: impl Into<String>, why: impl Into<String>) -> Omission {
        Omission {
            what: what.into(),
            why: why.into(),
        }
    }
}

/// The sections of RabbitMQ's definitions format Leveret reads; the first
/// four only describe the exporting broker.
const SECTIONS: &[&str] = &[
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "queues",
    "exchanges",
    "bindings",
];

/// What `take` set aside.
#[derive(Default)]
pub(super) struct LeftOut {
    /// What Leveret cannot apply: the import fails unless asked to skip it.
    pub(super) unsupported: Vec<Omission>,
    /// What RabbitMQ's import would not apply either: reported, never a
    /// failure.
    pub(super) ignored: Vec<Omission>,
}

/// Removes from `d` everything the import will not apply and says what and
/// why. `only` is the vhost of a per-vhost import.
pub(super) fn take(d: &mut Definitions, only: Option<&str>) -> LeftOut {
    let mut left_out = LeftOut::default();
    let out = &mut left_out.unsupported;
    for key in d.other.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            out.push(Omission::new(
                format!("section '{key}'"),
                "not part of RabbitMQ's definitions format as Leveret knows it",
            ));
        }
    }
    if let Some(vhost) = only {
        broker_sections(d, &mut left_out.ignored);
        // A vhost's import puts everything in that vhost, whatever the file says.
        let here = Some(vhost.to_string());
        d.queues.iter_mut().for_each(|q| q.vhost.clone_from(&here));
        d.exchanges
            .iter_mut()
            .for_each(|e| e.vhost.clone_from(&here));
        d.bindings
            .iter_mut()
            .for_each(|b| b.vhost.clone_from(&here));
    }
    users(d, out);
    vhosts(d, out);
    parameters(d, out);
    global_parameters(d, out);
    policies(d, out);
    let exchanges = exchanges(d, out);
    let queues = queues(d, out);
    bindings(d, &exchanges, &queues, out);
    left_out
}

/// Sections a per-vhost import (`POST /api/definitions/{vhost}`) does not
/// apply, as RabbitMQ's: they belong to the whole broker.
fn broker_sections(d: &mut Definitions, ignored: &mut Vec<Omission>) {
    let counts = [
        ("users", std::mem::take(&mut d.users).len()),
        ("vhosts", std::mem::take(&mut d.vhosts).len()),
        ("permissions", std::mem::take(&mut d.permissions).len()),
        (
            "topic_permissions",
            std::mem::take(&mut d.topic_permissions).len(),
        ),
        (
            "global_parameters",
            std::mem::take(&mut d.global_parameters).len(),
        ),
    ];
    for (section, n) in counts {
        if n > 0 {
            ignored.push(Omission::new(
                format!("{n} {section}"),
                "a vhost's import applies exchanges, queues, bindings, policies and parameters; import the whole broker's definitions (POST /api/definitions) for the rest",
            ));
        }
    }
}

fn users(d: &mut Definitions, out: &mut Vec<Omission>) {
    d.users.retain(|u| {
        let algorithm = u.rest.get("hashing_algorithm").and_then(Value::as_str);
        match algorithm {
            Some(a) if !is_known_algorithm(a) => {
                out.push(Omission::new(
                    format!("user '{}'", u.name),
                    format!("password hashing algorithm '{a}' is not supported"),
                ));
                false
            }
            _ => true,
        }
    });
}

fn vhosts(d: &mut Definitions, out: &mut Vec<Omission>) {
    for v in &d.vhosts {
        let queue_type = v
            .default_queue_type
            .as_deref()
            .or_else(|| v.metadata.as_ref()?.default_queue_type.as_deref());
        if let Some(t) = queue_type.filter(|t| !matches!(*t, "classic" | "undefined")) {
            out.push(Omission::new(
                format!("default queue type of vhost '{}'", v.name),
                format!("queues declared without x-queue-type are classic in Leveret, not {t}"),
            ));
        }
    }
}

/// Runtime parameters: Leveret has vhost limits and shovels.
fn parameters(d: &mut Definitions, out: &mut Vec<Omission>) {
    d.parameters.retain(|p| {
        let component = p.get("component").and_then(Value::as_str).unwrap_or("");
        let why = match component {
            "vhost-limits" | "shovel" => return true,
            "federation-upstream" | "federation-upstream-set" => "Leveret has no federation".into(),
            other => format!("Leveret has no runtime parameters of component '{other}'"),
        };
        out.push(Omission::new(
            format!(
                "parameter {} of component '{component}' in vhost {}",
                field(p, "name"),
                field(p, "vhost")
            ),
            why,
        ));
        false
    });
}

/// Policy keys RabbitMQ acts on that Leveret does not: each is listed, and
/// skipping takes the key out of the policy (a policy left empty goes).
/// Keys neither knows stay, for the policy's own validation to refuse.
fn policies(d: &mut Definitions, out: &mut Vec<Omission>) {
    d.policies.retain_mut(|p| {
        let name = format!("policy {} in vhost {}", field(p, "name"), field(p, "vhost"));
        let Some(Value::Object(definition)) = p.get_mut("definition") else {
            return true;
        };
        definition.retain(|key, _| {
            let Some(why) = unsupported_policy_key(key) else {
                return true;
            };
            out.push(Omission::new(format!("key '{key}' of {name}"), why));
            false
        });
        !definition.is_empty()
    });
}

fn unsupported_policy_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "ha-mode"
        | "ha-params"
        | "ha-sync-mode"
        | "ha-sync-batch-size"
        | "ha-promote-on-shutdown"
        | "ha-promote-on-failure" => {
            "classic queue mirroring: Leveret runs one node and mirrors nothing"
        }
        "federation-upstream" | "federation-upstream-set" => "Leveret has no federation",
        "queue-master-locator" | "queue-leader-locator" => {
            "queue placement across nodes: Leveret runs one node"
        }
        "max-in-memory-length" | "max-in-memory-bytes" => {
            "Leveret keeps its own bounded in-memory window per queue"
        }
        "dead-letter-strategy" => "Leveret dead-letters at most once",
        "initial-cluster-size" => "Leveret runs one node",
        _ => return None,
    })
}

/// `internal_cluster_id` is the exporting cluster's generated identity, not
/// a setting: nothing to apply.
fn global_parameters(d: &mut Definitions, out: &mut Vec<Omission>) {
    for p in d.global_parameters.drain(..) {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        let why = match name {
            "internal_cluster_id" => continue,
            "cluster_name" => "Leveret's cluster name is its node name",
            _ => "Leveret has no such global parameter",
        };
        out.push(Omission::new(format!("global parameter '{name}'"), why));
    }
}

/// Exchanges of types Leveret lacks; returns the (vhost, name) of those
/// that stay, for the bindings' check.
fn exchanges(d: &mut Definitions, out: &mut Vec<Omission>) -> HashSet<(String, String)> {
    let mut dropped = HashSet::new();
    d.exchanges.retain(|e: &ExchangeDef| {
        if ExchangeKind::parse(&e.kind).is_some() {
            return true;
        }
        let why = match e.kind.as_str() {
            "x-delayed-message" => "the delayed-message exchange plugin is not part of Leveret",
            "x-consistent-hash" => "the consistent-hash exchange plugin is not part of Leveret",
            "x-random" | "x-local-random" => "random exchanges are not part of Leveret",
            "x-recent-history" => "the recent-history exchange plugin is not part of Leveret",
            "x-modulus-hash" => "the sharding plugin is not part of Leveret",
            _ => "Leveret has exchange types direct, fanout, topic and headers",
        };
        out.push(Omission::new(
            format!(
                "exchange '{}' of type '{}' in vhost {}",
                e.name,
                e.kind,
                opt(&e.vhost)
            ),
            why,
        ));
        dropped.insert((e.vhost.clone().unwrap_or_default(), e.name.clone()));
        false
    });
    dropped
}

/// Queues whose type or arguments Leveret cannot honour; returns the
/// (vhost, name) of those left out.
fn queues(d: &mut Definitions, out: &mut Vec<Omission>) -> HashSet<(String, String)> {
    let mut dropped = HashSet::new();
    d.queues.retain(|q: &QueueDef| {
        let arg = |k: &str| q.arguments.get(k).and_then(Value::as_str);
        let why = if arg("x-dead-letter-strategy") == Some("at-least-once") {
            "Leveret dead-letters at most once (x-dead-letter-strategy at-least-once)"
        } else {
            return true;
        };
        out.push(Omission::new(
            format!("queue '{}' in vhost {}", q.name, opt(&q.vhost)),
            why,
        ));
        dropped.insert((q.vhost.clone().unwrap_or_default(), q.name.clone()));
        false
    });
    dropped
}

fn bindings(
    d: &mut Definitions,
    exchanges: &HashSet<(String, String)>,
    queues: &HashSet<(String, String)>,
    out: &mut Vec<Omission>,
) {
    d.bindings.retain(|b: &BindingDef| {
        let vhost = b.vhost.clone().unwrap_or_default();
        let left_out = |set: &HashSet<(String, String)>, name: &str| {
            set.contains(&(vhost.clone(), name.to_string()))
        };
        let why = if left_out(exchanges, &b.source) {
            format!("its source exchange '{}' is left out", b.source)
        } else if b.destination_type == "exchange" && left_out(exchanges, &b.destination) {
            format!("its destination exchange '{}' is left out", b.destination)
        } else if b.destination_type == "queue" && left_out(queues, &b.destination) {
            format!("its destination queue '{}' is left out", b.destination)
        } else {
            return true;
        };
        out.push(Omission::new(binding_name(b), why));
        false
    });
}

pub(super) fn binding_name(b: &BindingDef) -> String {
    format!(
        "binding from '{}' to {} '{}' with key '{}' in vhost {}",
        b.source,
        b.destination_type,
        b.destination,
        b.routing_key,
        opt(&b.vhost)
    )
}

/// An object's string field, quoted, for naming it.
fn field(o: &Value, key: &str) -> String {
    match o.get(key) {
        Some(Value::String(s)) => format!("'{s}'"),
        Some(v) => v.to_string(),
        None => "?".into(),
    }
}

fn opt(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("'{v}'"),
        None => "?".into(),
    }
}
