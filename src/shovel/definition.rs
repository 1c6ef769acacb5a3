//! A dynamic shovel's definition: the JSON value of a `shovel` runtime
//! parameter, checked as RabbitMQ 3.10's `rabbit_shovel_parameters` checks
//! it (same keys, same error texts, in its order), and read into a
//! [`Spec`] the worker runs. AMQP 1.0 ends are refused: Leveret's shovels
//! speak AMQP 0-9-1.

use super::uri::{self, AmqpUri};
use crate::broker::policy::erlang_term;
use serde_json::{Map, Value};
use std::time::Duration;

/// RabbitMQ's defaults.
pub(crate) const DEFAULT_PREFETCH: u64 = 1000;
pub(crate) const DEFAULT_RECONNECT_DELAY: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckMode {
    OnConfirm,
    OnPublish,
    NoAck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeleteAfter {
    Never,
    /// The source queue's length when the shovel starts.
    QueueLength,
    Count(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Source {
    Queue(String),
    /// An exclusive server-named queue bound to the exchange with the key.
    Exchange {
        exchange: String,
        key: String,
    },
}

/// What a forwarded message's basic.publish says: each `None` keeps the
/// exchange or routing key the message was delivered with.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Destination {
    pub(crate) queue: Option<String>,
    pub(crate) exchange: Option<String>,
    pub(crate) exchange_key: Option<String>,
}

impl Destination {
    /// The exchange and routing key a message delivered from `exchange`
    /// with `routing_key` is published with.
    pub(crate) fn target<'a>(
        &'a self,
        exchange: &'a str,
        routing_key: &'a str,
    ) -> (&'a str, &'a str) {
        match &self.queue {
            Some(q) => ("", q),
            None => (
                self.exchange.as_deref().unwrap_or(exchange),
                self.exchange_key.as_deref().unwrap_or(routing_key),
            ),
        }
    }
}

/// A checked definition.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) src_uris: Vec<(String, AmqpUri)>,
    pub(crate) source: Source,
    /// `src-consumer-args` (a stream's `x-stream-offset`, say).
    pub(crate) consumer_args: Value,
    /// Arguments of a source or destination queue the shovel declares.
    pub(crate) src_queue_args: Value,
    pub(crate) dest_queue_args: Value,
    pub(crate) prefetch: u64,
    pub(crate) delete_after: DeleteAfter,
    pub(crate) dest_uris: Vec<(String, AmqpUri)>,
    pub(crate) dest: Destination,
    pub(crate) ack_mode: AckMode,
    pub(crate) add_forward_headers: bool,
    pub(crate) add_timestamp_header: bool,
    pub(crate) reconnect_delay: Duration,
}

type Check = fn(&str, &Value) -> Result<(), String>;

/// Who sets the definition: the user whose vhost access a local URI is
/// checked against (none for a definitions import, as RabbitMQ's).
pub(crate) trait VhostAccess {
    fn may_use(&self, vhost: &str) -> Result<(), String>;
}

/// No check (definitions import, start-up).
pub(crate) struct AnyVhost;

impl VhostAccess for AnyVhost {
    fn may_use(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// RabbitMQ's validation: every error found, in its order; none when the
/// definition is good.
pub(crate) fn validate(name: &str, value: &Value, access: &dyn VhostAccess) -> Vec<String> {
    let empty = Map::new();
    let def = match value {
        Value::Object(m) => m,
        // An empty list is an empty proplist to RabbitMQ.
        Value::Array(a) if a.is_empty() => &empty,
        other => return vec![format!("{name} not a list {}", erlang_term(other))],
    };
    let mut errors = Vec::new();
    let present = |k: &str| def.contains_key(k);
    // validate_amqp091_src
    match (present("src-exchange"), present("src-queue")) {
        (false, false) => errors.push("Must specify 'src-exchange' or 'src-queue'".to_string()),
        (true, true) => errors.push("Cannot specify 'src-exchange' and 'src-queue'".to_string()),
        _ => {}
    }
    let delete_after = def
        .get("src-delete-after")
        .or_else(|| def.get("delete-after"));
    if delete_after.is_some_and(Value::is_u64) && def.get("ack-mode") == Some(&"no-ack".into()) {
        errors.push("Cannot specify 'no-ack' and numerical 'delete-after'".to_string());
    }
    // validate_amqp091_dest
    if present("dest-exchange") && present("dest-queue") {
        errors.push("Cannot specify 'dest-exchange' and 'dest-queue'".to_string());
    }
    let uri_check = |key: &str, v: &Value| validate_uri(key, v, access);
    let constraints: &[(&str, Check, bool)] = &[
        ("reconnect-delay", number, false),
        (
            "ack-mode",
            |k, v| enumerated(k, v, &["no-ack", "on-publish", "on-confirm"]),
            false,
        ),
        ("src-protocol", protocol, false),
        ("dest-protocol", protocol, false),
        ("src-uri", |_, _| Ok(()), true),
        ("src-exchange", binary, false),
        ("src-exchange-key", binary, false),
        ("src-queue", binary, false),
        ("src-queue-args", proplist, false),
        ("src-consumer-args", proplist, false),
        ("prefetch-count", number, false),
        ("src-prefetch-count", number, false),
        ("delete-after", validate_delete_after, false),
        ("src-delete-after", validate_delete_after, false),
        ("dest-uri", |_, _| Ok(()), true),
        ("dest-exchange", binary, false),
        ("dest-exchange-key", binary, false),
        ("dest-queue", queue_name, false),
        ("dest-queue-args", proplist, false),
        ("add-forward-headers", boolean, false),
        ("add-timestamp-header", boolean, false),
        ("dest-add-forward-headers", boolean, false),
        ("dest-add-timestamp-header", boolean, false),
        ("publish-properties", properties, false),
        ("dest-publish-properties", properties, false),
    ];
    // rabbit_parameter_validation:proplist: results gathered newest first,
    // unrecognised keys ahead of them.
    let mut results = Vec::new();
    for (key, check, mandatory) in constraints {
        match def.get(*key) {
            Some(v) if key.ends_with("-uri") => results.push(uri_check(key, v)),
            Some(v) => results.push(check(key, v)),
            None if *mandatory => results.push(Err(format!("Key \"{key}\" not found in {name}"))),
            None => {}
        }
    }
    let unknown: Vec<String> = def
        .iter()
        .filter(|(k, _)| !constraints.iter().any(|(c, _, _)| c == k))
        .map(|(k, v)| {
            format!(
                "{{{},{}}}",
                erlang_term(&Value::String(k.clone())),
                erlang_term(v)
            )
        })
        .collect();
    if !unknown.is_empty() {
        errors.push(format!(
            "Unrecognised terms [{}] in {name}",
            unknown.join(",")
        ));
    }
    errors.extend(results.into_iter().rev().filter_map(Result::err));
    errors
}

fn number(key: &str, v: &Value) -> Result<(), String> {
    if v.is_number() {
        Ok(())
    } else {
        Err(format!(
            "{key} should be a number, actually was {}",
            erlang_term(v)
        ))
    }
}

fn binary(key: &str, v: &Value) -> Result<(), String> {
    if v.is_string() {
        Ok(())
    } else {
        Err(format!(
            "{key} should be binary, actually was {}",
            erlang_term(v)
        ))
    }
}

fn boolean(key: &str, v: &Value) -> Result<(), String> {
    if v.is_boolean() {
        Ok(())
    } else {
        Err(format!(
            "{key} should be boolean, actually was {}",
            erlang_term(v)
        ))
    }
}

fn queue_name(key: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) if s.len() > 255 => Err(format!(
            "{key} should be less than 255 bytes, actually was {}",
            s.len()
        )),
        Value::String(_) => Ok(()),
        _ => binary(key, v),
    }
}

fn enumerated(key: &str, v: &Value, options: &[&str]) -> Result<(), String> {
    match v {
        Value::String(s) if options.contains(&s.as_str()) => Ok(()),
        Value::String(_) => {
            let list: Vec<String> = options
                .iter()
                .map(|o| erlang_term(&Value::String(o.to_string())))
                .collect();
            Err(format!(
                "{key} should be one of [{}], actually was {}",
                list.join(","),
                erlang_term(v)
            ))
        }
        _ => binary(key, v),
    }
}

/// RabbitMQ also takes `amqp10`; Leveret's shovels speak AMQP 0-9-1 only.
fn protocol(key: &str, v: &Value) -> Result<(), String> {
    enumerated(key, v, &["amqp091"])
}

fn proplist(key: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::Object(_) => Ok(()),
        Value::Array(a) if a.is_empty() => Ok(()),
        other => Err(format!("{key} not a list {}", erlang_term(other))),
    }
}

fn properties(key: &str, v: &Value) -> Result<(), String> {
    const STRINGS: &[&str] = &[
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    ];
    const NUMBERS: &[&str] = &["delivery_mode", "priority", "timestamp"];
    let Value::Object(m) = v else {
        return proplist(key, v);
    };
    for (k, v) in m {
        if STRINGS.contains(&k.as_str()) {
            binary(k, v)?;
        } else if NUMBERS.contains(&k.as_str()) {
            number(k, v)?;
        } else {
            return Err(format!(
                "Unrecognised terms [{{{},{}}}] in {key}",
                erlang_term(&Value::String(k.clone())),
                erlang_term(v)
            ));
        }
    }
    Ok(())
}

fn validate_delete_after(key: &str, v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) if s == "never" || s == "queue-length" => Ok(()),
        Value::Number(n) if n.is_u64() => Ok(()),
        other => Err(format!(
            "{key} should be a number greater than or equal to 0, \"never\" or \"queue-length\", actually was {}",
            erlang_term(other)
        )),
    }
}

/// One URI or a list of them, each parsed; a local one's vhost must be
/// one the user may use.
fn validate_uri(key: &str, v: &Value, access: &dyn VhostAccess) -> Result<(), String> {
    let uris: Vec<&Value> = match v {
        Value::String(_) => vec![v],
        Value::Array(a) => a.iter().collect(),
        other => {
            return Err(format!(
                "{key} should be list, actually was {}",
                erlang_term(other)
            ))
        }
    };
    for u in uris {
        let Value::String(s) = u else {
            return binary(key, u);
        };
        let parsed = uri::parse(s)?;
        if parsed.is_local() {
            access.may_use(&parsed.vhost)?;
        }
    }
    Ok(())
}

fn uris(def: &Map<String, Value>, key: &str) -> Vec<(String, AmqpUri)> {
    let all: Vec<&str> = match def.get(key) {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    all.into_iter()
        .filter_map(|s| uri::parse(s).ok().map(|u| (s.to_string(), u)))
        .collect()
}

/// Reads a definition that `validate` passed.
pub(crate) fn parse(value: &Value) -> Result<Spec, String> {
    let empty = Map::new();
    let def = value.as_object().unwrap_or(&empty);
    let s = |k: &str| def.get(k).and_then(Value::as_str).map(str::to_string);
    let flag = |k: &str, legacy: &str| {
        def.get(k)
            .or_else(|| def.get(legacy))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let source = match (s("src-queue"), s("src-exchange")) {
        (Some(q), _) => Source::Queue(q),
        (None, Some(x)) => Source::Exchange {
            exchange: x,
            key: s("src-exchange-key").unwrap_or_default(),
        },
        (None, None) => return Err("Must specify 'src-exchange' or 'src-queue'".into()),
    };
    let delete_after = match def
        .get("src-delete-after")
        .or_else(|| def.get("delete-after"))
    {
        Some(Value::String(s)) if s == "queue-length" => DeleteAfter::QueueLength,
        Some(Value::Number(n)) => DeleteAfter::Count(n.as_u64().unwrap_or(0)),
        _ => DeleteAfter::Never,
    };
    let prefetch = def
        .get("src-prefetch-count")
        .or_else(|| def.get("prefetch-count"))
        .and_then(Value::as_f64)
        .map_or(DEFAULT_PREFETCH, |n| n.max(0.0) as u64);
    let ack_mode = match def.get("ack-mode").and_then(Value::as_str) {
        Some("on-publish") => AckMode::OnPublish,
        Some("no-ack") => AckMode::NoAck,
        _ => AckMode::OnConfirm,
    };
    let delay = def
        .get("reconnect-delay")
        .and_then(Value::as_f64)
        .unwrap_or(DEFAULT_RECONNECT_DELAY);
    let (src_uris, dest_uris) = (uris(def, "src-uri"), uris(def, "dest-uri"));
    if src_uris.is_empty() || dest_uris.is_empty() {
        return Err("no valid URI".into());
    }
    Ok(Spec {
        src_uris,
        source,
        consumer_args: def.get("src-consumer-args").cloned().unwrap_or(Value::Null),
        src_queue_args: def.get("src-queue-args").cloned().unwrap_or(Value::Null),
        dest_queue_args: def.get("dest-queue-args").cloned().unwrap_or(Value::Null),
        prefetch,
        delete_after,
        dest_uris,
        dest: Destination {
            queue: s("dest-queue"),
            exchange: s("dest-exchange"),
            exchange_key: s("dest-exchange-key"),
        },
        ack_mode,
        add_forward_headers: flag("dest-add-forward-headers", "add-forward-headers"),
        add_timestamp_header: flag("dest-add-timestamp-header", "add-timestamp-header"),
        // Bounded: a delay of years is a shovel that never restarts.
        reconnect_delay: Duration::from_secs_f64(delay.clamp(0.0, 86_400.0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(v: Value) -> Vec<String> {
        validate("t1", &v, &AnyVhost)
    }

    #[test]
    fn rabbitmq_messages_in_its_order() {
        assert_eq!(
            errors(json!({})),
            [
                "Must specify 'src-exchange' or 'src-queue'",
                "Key \"dest-uri\" not found in t1",
                "Key \"src-uri\" not found in t1"
            ]
        );
        assert_eq!(
            errors(
                json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "ack-mode": "bad"})
            ),
            [
                r#"ack-mode should be one of [<<"no-ack">>,<<"on-publish">>,<<"on-confirm">>], actually was <<"bad">>"#
            ]
        );
        assert_eq!(
            errors(
                json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "foo": 1, "bar": "x"})
            ),
            [r#"Unrecognised terms [{<<"bar">>,<<"x">>},{<<"foo">>,1}] in t1"#]
        );
        assert_eq!(
            errors(json!({"src-uri": 5, "src-queue": "a", "dest-uri": "amqp://"})),
            ["src-uri should be list, actually was 5"]
        );
        assert_eq!(
            errors(
                json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-delete-after": 5, "ack-mode": "no-ack"})
            ),
            ["Cannot specify 'no-ack' and numerical 'delete-after'"]
        );
        assert!(errors(json!({"src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://", "src-prefetch-count": 1.5})).is_empty());
    }

    #[test]
    fn amqp10_is_refused() {
        assert_eq!(
            errors(
                json!({"src-protocol": "amqp10", "src-uri": "amqp://", "src-queue": "a", "dest-uri": "amqp://"})
            ),
            [r#"src-protocol should be one of [<<"amqp091">>], actually was <<"amqp10">>"#]
        );
    }

    #[test]
    fn destination_overrides() {
        let d = Destination {
            queue: Some("q".into()),
            ..Default::default()
        };
        assert_eq!(d.target("x", "k"), ("", "q"));
        let d = Destination {
            exchange: Some("y".into()),
            ..Default::default()
        };
        assert_eq!(d.target("x", "k"), ("y", "k"));
    }
}
