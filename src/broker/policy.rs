//! Policies and operator policies, with RabbitMQ 3.10's meaning
//! (rabbit_policy, rabbit_policies, rabbit_amqqueue_process
//! `process_args_policy`, rabbit_quorum_queue).
//!
//! A policy names a pattern (a regular expression over queue or exchange
//! names), what it applies to, a priority and a definition. Of the
//! policies of a vhost that match an object, the one with the highest
//! priority applies, and at most one operator policy beside it. A queue's
//! effective arguments are worked out from its declared arguments and
//! those two definitions (`effective_queue_args`) whenever a policy
//! changes, never per message.

use super::queue_args::{Overflow, QueueArgs, QueueType, MAX_TTL_MS};
use amq_protocol::types::FieldTable;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::sync::Arc;

/// Which of the two kinds: policies are set by policymakers, operator
/// policies by administrators, to cap what policies and arguments allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    Policy,
    Operator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApplyTo {
    Queues,
    Exchanges,
    All,
}

impl ApplyTo {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }
}

/// A policy as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PolicyRecord {
    pub(crate) vhost: String,
    pub(crate) name: String,
    pub(crate) pattern: String,
    #[serde(rename = "apply-to")]
    pub(crate) apply_to: String,
    pub(crate) definition: Map<String, Value>,
    pub(crate) priority: Number,
}

/// What a definition sets, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) message_ttl: Option<u64>,
    pub(crate) expires: Option<u64>,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_length_bytes: Option<u64>,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
    pub(crate) delivery_limit: Option<u64>,
    pub(crate) alternate_exchange: Option<String>,
    pub(crate) consumer_timeout: Option<u64>,
    /// `queue-mode`: accepted, with no effect (Leveret pages by itself).
    pub(crate) queue_mode: bool,
}

/// A validated policy, its pattern compiled.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) record: PolicyRecord,
    pub(crate) apply_to: ApplyTo,
    regex: Regex,
    priority: f64,
    pub(crate) settings: Settings,
}

/// Definition keys and what RabbitMQ says about a bad value of each.
/// `int(min)`: an integer at least `min`.
enum Check {
    Int(i64),
    Str,
    OneOf(&'static [&'static str]),
}

const POLICY_KEYS: &[(&str, Check, &str)] = &[
    (
        "alternate-exchange",
        Check::Str,
        "is not a valid alternate exchange name",
    ),
    (
        "consumer-timeout",
        Check::Int(0),
        "is not a valid consumer timeout",
    ),
    (
        "dead-letter-exchange",
        Check::Str,
        "is not a valid dead letter exchange name",
    ),
    (
        "dead-letter-routing-key",
        Check::Str,
        "is not a valid dead letter routing key",
    ),
    (
        "delivery-limit",
        Check::Int(0),
        "is not a valid delivery limit",
    ),
    ("expires", Check::Int(1), "is not a valid queue expiry"),
    ("max-length", Check::Int(0), "is not a valid maximum length"),
    (
        "max-length-bytes",
        Check::Int(0),
        "is not a valid maximum length in bytes",
    ),
    ("message-ttl", Check::Int(0), "is not a valid message TTL"),
    (
        "overflow",
        Check::OneOf(&["drop-head", "reject-publish", "reject-publish-dlx"]),
        "is not a valid overflow value",
    ),
    (
        "queue-mode",
        Check::OneOf(&["default", "lazy"]),
        "is not a valid queue-mode value",
    ),
];

/// The keys RabbitMQ 3.10 allows in an operator policy (rabbit_policies
/// registers these as `operator_policy_validator`; the two
/// `max-in-memory-*` settings of quorum queues Leveret does not have).
const OPERATOR_KEYS: &[&str] = &[
    "delivery-limit",
    "expires",
    "max-length",
    "max-length-bytes",
    "message-ttl",
];

impl Policy {
    /// Checks a policy as RabbitMQ's `rabbit_policy:validate` does; the
    /// error is every complaint, one a line, in RabbitMQ's order
    /// (definition, apply-to, pattern, priority), ready for the API's
    /// "Validation failed" answer.
    pub(crate) fn parse(
        kind: PolicyKind,
        vhost: &str,
        name: &str,
        pattern: &Value,
        definition: &Value,
        priority: Option<&Value>,
        apply_to: Option<&Value>,
    ) -> Result<Policy, Vec<String>> {
        let mut errors = Vec::new();
        let settings = match parse_definition(kind, definition) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let apply = match apply_to {
            None => Some(ApplyTo::All),
            Some(Value::String(s)) if s == "all" => Some(ApplyTo::All),
            Some(Value::String(s)) if s == "queues" => Some(ApplyTo::Queues),
            Some(Value::String(s)) if s == "exchanges" => Some(ApplyTo::Exchanges),
            Some(v) => {
                let shown = match v {
                    Value::String(s) => s.clone(),
                    other => erlang_term(other),
                };
                errors.push(format!(
                    "apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                ));
                None
            }
        };
        let regex = match pattern {
            Value::String(p) => match Regex::new(p) {
                Ok(re) => Some(re),
                Err(_) => {
                    errors.push(regex_error(p));
                    None
                }
            },
            other => {
                errors.push(format!(
                    "pattern should be a binary but was {}",
                    erlang_term(other)
                ));
                None
            }
        };
        let priority = match priority {
            None => Some(Number::from(0)),
            Some(Value::Number(n)) => Some(n.clone()),
            Some(other) => {
                errors.push(format!(
                    "priority should be a number, actually was {}",
                    erlang_term(other)
                ));
                None
            }
        };
        match (settings, apply, regex, priority) {
            (Some((settings, definition)), Some(apply_to), Some(regex), Some(priority))
                if errors.is_empty() =>
            {
                Ok(Policy {
                    priority: priority.as_f64().unwrap_or(0.0),
                    record: PolicyRecord {
                        vhost: vhost.to_string(),
                        name: name.to_string(),
                        pattern: regex.as_str().to_string(),
                        apply_to: apply_to.as_str().to_string(),
                        definition,
                        priority,
                    },
                    apply_to,
                    regex,
                    settings,
                })
            }
            _ => Err(errors),
        }
    }

    /// A stored record, checked again.
    pub(crate) fn from_record(kind: PolicyKind, r: &PolicyRecord) -> Result<Policy, String> {
        Policy::parse(
            kind,
            &r.vhost,
            &r.name,
            &Value::String(r.pattern.clone()),
            &Value::Object(r.definition.clone()),
            Some(&Value::Number(r.priority.clone())),
            Some(&Value::String(r.apply_to.clone())),
        )
        .map_err(|e| e.join("; "))
    }

    pub(crate) fn name(&self) -> &str {
        &self.record.name
    }

    /// Whether this policy applies to a queue of this type named `name`:
    /// as RabbitMQ 3.10, a policy with a setting the queue type does not
    /// support (delivery-limit for classic queues, queue-mode for quorum
    /// queues) does not apply to it at all.
    fn matches_queue(&self, name: &str, queue_type: QueueType) -> bool {
        let supported = match queue_type {
            QueueType::Classic => self.settings.delivery_limit.is_none(),
            QueueType::Quorum => !self.settings.queue_mode,
            // A stream reads only its own keys, and ignores the rest.
            QueueType::Stream => true,
        };
        self.apply_to != ApplyTo::Exchanges && supported && self.regex.is_match(name)
    }

    fn matches_exchange(&self, name: &str) -> bool {
        self.apply_to != ApplyTo::Queues && self.regex.is_match(name)
    }
}

/// The settings of a definition, and the definition as an object.
fn parse_definition(
    kind: PolicyKind,
    definition: &Value,
) -> Result<(Settings, Map<String, Value>), String> {
    let map = match definition {
        Value::Object(m) if m.is_empty() => return Err("no policy provided".into()),
        Value::Object(m) => m,
        Value::Array(a) if a.is_empty() => return Err("no policy provided".into()),
        other => {
            return Err(format!(
                "definition must be a dictionary: {}",
                erlang_term(other)
            ))
        }
    };
    let known = |k: &str| match kind {
        PolicyKind::Policy => POLICY_KEYS.iter().any(|(key, _, _)| *key == k),
        PolicyKind::Operator => OPERATOR_KEYS.contains(&k),
    };
    // RabbitMQ checks the known keys in order, first failure wins; the
    // unknown ones are reported only when every known one is good.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut s = Settings::default();
    for key in keys.iter().filter(|k| known(k)) {
        let v = &map[key.as_str()];
        let Some((_, check, complaint)) = POLICY_KEYS.iter().find(|(k, _, _)| k == key) else {
            continue;
        };
        let bad = || format!("{} {complaint}", erlang_term(v));
        match check {
            Check::Int(min) => {
                let n = v.as_i64().filter(|n| n >= min).ok_or_else(bad)?;
                let n = n as u64;
                match key.as_str() {
                    "consumer-timeout" => s.consumer_timeout = Some(n),
                    "delivery-limit" => s.delivery_limit = Some(n),
                    "expires" => s.expires = Some(n),
                    "max-length" => s.max_length = Some(n),
                    "max-length-bytes" => s.max_length_bytes = Some(n),
                    _ => s.message_ttl = Some(n),
                }
            }
            Check::Str => {
                let text = v.as_str().ok_or_else(bad)?.to_string();
                match key.as_str() {
                    "alternate-exchange" => s.alternate_exchange = Some(text),
                    "dead-letter-exchange" => s.dead_letter_exchange = Some(text),
                    _ => s.dead_letter_routing_key = Some(text),
                }
            }
            Check::OneOf(allowed) => {
                let text = v.as_str().filter(|t| allowed.contains(t)).ok_or_else(bad)?;
                match text {
                    "drop-head" => s.overflow = Some(Overflow::DropHead),
                    "reject-publish" => s.overflow = Some(Overflow::RejectPublish),
                    "reject-publish-dlx" => s.overflow = Some(Overflow::RejectPublishDlx),
                    _ => s.queue_mode = true,
                }
            }
        }
    }
    let unknown: Vec<String> = keys
        .iter()
        .filter(|k| !known(k))
        .map(|k| format!("{{{},{}}}", erlang_binary(k), erlang_term(&map[k.as_str()])))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        ));
    }
    Ok((s, map.clone()))
}

/// RabbitMQ's complaint about a pattern PCRE will not compile, with
/// PCRE's wording for the usual mistakes. Erlang's `~p` breaks a term that
/// would run past column 80 and aligns the rest under it.
fn regex_error(pattern: &str) -> String {
    use regex_syntax::ast::ErrorKind as K;
    let prefix = "pattern should be regular expression but is invalid: ";
    let (what, at) = match regex_syntax::ast::parse::Parser::new().parse(pattern) {
        Err(e) => {
            let at = e.span().start.offset;
            match e.kind() {
                K::GroupUnclosed => ("missing )".to_string(), pattern.len()),
                K::GroupUnopened => ("unmatched parentheses".to_string(), at),
                K::ClassUnclosed => (
                    "missing terminating ] for character class".to_string(),
                    pattern.len(),
                ),
                K::RepetitionMissing => ("nothing to repeat".to_string(), at),
                K::RepetitionCountInvalid => (
                    "numbers out of order in {} quantifier".to_string(),
                    e.span().end.offset.saturating_sub(1),
                ),
                other => (other.to_string(), at),
            }
        }
        // Parsed, but refused later (e.g. too big): no position.
        Ok(_) => ("invalid pattern".to_string(), 0),
    };
    let what = erlang_string(&what);
    let one_line = format!("{{{what},{at}}}");
    if prefix.len() + one_line.len() >= 80 {
        let indent = " ".repeat(prefix.len() + 1);
        format!("{prefix}{{{what},\n{indent}{at}}}")
    } else {
        format!("{prefix}{one_line}")
    }
}

fn erlang_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn erlang_binary(s: &str) -> String {
    let quoted = erlang_string(s);
    if s.is_ascii() {
        format!("<<{quoted}>>")
    } else {
        format!("<<{quoted}/utf8>>")
    }
}

/// A JSON value as Erlang's `~p` prints what RabbitMQ decoded it to.
pub(crate) fn erlang_term(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.1}"),
            (_, _, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        Value::String(s) => erlang_binary(s),
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(erlang_term).collect::<Vec<_>>().join(",")
        ),
        Value::Object(m) => format!(
            "#{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{} => {}", erlang_binary(k), erlang_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Where a policy is stored: the access tree, beside users and vhosts.
pub(crate) fn store_key(kind: PolicyKind, vhost: &str, name: &str) -> Vec<u8> {
    let mut k = match kind {
        PolicyKind::Policy => POLICY_PREFIX.to_vec(),
        PolicyKind::Operator => OPERATOR_PREFIX.to_vec(),
    };
    k.extend_from_slice(vhost.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

const POLICY_PREFIX: &[u8] = b"P\0";
const OPERATOR_PREFIX: &[u8] = b"O\0";

/// The policies among the stored access records. One that does not decode
/// is an error, as a user's record: starting without it would let queues
/// run without their limits.
pub(crate) fn stored(
    entries: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<(PolicyKind, PolicyRecord)>, String> {
    let mut out = Vec::new();
    for (k, v) in entries {
        let kind = if k.starts_with(POLICY_PREFIX) {
            PolicyKind::Policy
        } else if k.starts_with(OPERATOR_PREFIX) {
            PolicyKind::Operator
        } else {
            continue;
        };
        let record = serde_json::from_slice::<PolicyRecord>(v).map_err(|e| {
            format!(
                "unreadable policy record {:?}: {e}",
                String::from_utf8_lossy(k)
            )
        })?;
        out.push((kind, record));
    }
    Ok(out)
}

/// The policies of one vhost, highest priority first.
#[derive(Default)]
pub(crate) struct PolicySet {
    policies: Vec<Arc<Policy>>,
    operator: Vec<Arc<Policy>>,
}

/// The policy and operator policy that apply to one object.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    pub(crate) policy: Option<Arc<Policy>>,
    pub(crate) operator: Option<Arc<Policy>>,
}

impl Applied {
    fn same(a: &Option<Arc<Policy>>, b: &Option<Arc<Policy>>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    pub(crate) fn is_same_as(&self, other: &Applied) -> bool {
        Applied::same(&self.policy, &other.policy) && Applied::same(&self.operator, &other.operator)
    }

    /// RabbitMQ's `effective_policy_definition`: both definitions merged,
    /// the smaller value where both set a limit.
    pub(crate) fn effective_definition(&self) -> Map<String, Value> {
        let mut out = self
            .policy
            .as_ref()
            .map(|p| p.record.definition.clone())
            .unwrap_or_default();
        if let Some(op) = &self.operator {
            for (k, v) in &op.record.definition {
                let merged = match (out.get(k).and_then(Value::as_i64), v.as_i64()) {
                    (Some(a), Some(b)) => Value::from(a.min(b)),
                    _ => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
        }
        out
    }

    /// A numeric limit both may set: the smaller wins (rabbit_policies
    /// `merge_policy_value`).
    fn limit(&self, get: impl Fn(&Settings) -> Option<u64>) -> Option<u64> {
        let p = self.policy.as_ref().and_then(|p| get(&p.settings));
        let o = self.operator.as_ref().and_then(|p| get(&p.settings));
        min(p, o)
    }

    /// A setting only policies have.
    fn setting<T: Clone>(&self, get: impl Fn(&Settings) -> Option<T>) -> Option<T> {
        self.policy.as_ref().and_then(|p| get(&p.settings))
    }
}

fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl PolicySet {
    pub(crate) fn list(&self, kind: PolicyKind) -> &[Arc<Policy>] {
        match kind {
            PolicyKind::Policy => &self.policies,
            PolicyKind::Operator => &self.operator,
        }
    }

    fn list_mut(&mut self, kind: PolicyKind) -> &mut Vec<Arc<Policy>> {
        match kind {
            PolicyKind::Policy => &mut self.policies,
            PolicyKind::Operator => &mut self.operator,
        }
    }

    /// Adds or replaces a policy; true when it is new.
    pub(crate) fn put(&mut self, kind: PolicyKind, policy: Policy) -> bool {
        let list = self.list_mut(kind);
        let old = list.iter().position(|p| p.name() == policy.name());
        let created = old.is_none();
        if let Some(i) = old {
            list.remove(i);
        }
        // Highest priority first; among equals the earlier set goes first
        // (RabbitMQ leaves the choice among equals unspecified).
        let at = list
            .iter()
            .position(|p| p.priority < policy.priority)
            .unwrap_or(list.len());
        list.insert(at, Arc::new(policy));
        created
    }

    pub(crate) fn delete(&mut self, kind: PolicyKind, name: &str) -> bool {
        let list = self.list_mut(kind);
        let before = list.len();
        list.retain(|p| p.name() != name);
        list.len() != before
    }

    pub(crate) fn for_queue(&self, name: &str, queue_type: QueueType) -> Applied {
        let find = |list: &[Arc<Policy>]| {
            list.iter()
                .find(|p| p.matches_queue(name, queue_type))
                .cloned()
        };
        Applied {
            policy: find(&self.policies),
            operator: find(&self.operator),
        }
    }

    pub(crate) fn for_exchange(&self, name: &str) -> Applied {
        let find = |list: &[Arc<Policy>]| list.iter().find(|p| p.matches_exchange(name)).cloned();
        Applied {
            policy: find(&self.policies),
            operator: find(&self.operator),
        }
    }
}

/// The arguments a queue acts on: its declared arguments resolved against
/// the policies that apply, as RabbitMQ 3.10 resolves each (classic
/// queues: `process_args_policy`; quorum queues: rabbit_quorum_queue).
/// Limits (TTL, expiry, lengths, delivery limit, consumer timeout): the
/// smaller of argument and policy. Dead-lettering: the argument wins. The
/// overflow mode: the argument on classic queues, the policy on quorum
/// queues, which also let a policy's `expires` win over the argument.
pub(crate) fn effective_queue_args(
    declared: &QueueArgs,
    arguments: &FieldTable,
    applied: &Applied,
) -> QueueArgs {
    let quorum = declared.queue_type == QueueType::Quorum;
    let mut e = declared.clone();
    let policy_ttl = |v: Option<u64>| v.map(|n| n.min(MAX_TTL_MS));
    let expires = policy_ttl(applied.limit(|s| s.expires));
    e.expires = if quorum {
        expires.or(declared.expires)
    } else {
        min(declared.expires, expires)
    };
    e.message_ttl = min(
        declared.message_ttl,
        policy_ttl(applied.limit(|s| s.message_ttl)),
    );
    e.max_length = min(declared.max_length, applied.limit(|s| s.max_length));
    e.max_length_bytes = min(
        declared.max_length_bytes,
        applied.limit(|s| s.max_length_bytes),
    );
    e.delivery_limit = min(declared.delivery_limit, applied.limit(|s| s.delivery_limit));
    e.consumer_timeout = min(
        declared.consumer_timeout,
        applied.setting(|s| s.consumer_timeout),
    );
    let policy_overflow = applied.setting(|s| s.overflow);
    e.overflow = match (quorum, arguments.contains_key("x-overflow")) {
        (true, _) => policy_overflow.unwrap_or(declared.overflow),
        (false, true) => declared.overflow,
        (false, false) => policy_overflow.unwrap_or(declared.overflow),
    };
    if declared.dead_letter_exchange.is_none() {
        e.dead_letter_exchange = applied.setting(|s| s.dead_letter_exchange.clone());
    }
    if declared.dead_letter_routing_key.is_none() {
        e.dead_letter_routing_key = applied.setting(|s| s.dead_letter_routing_key.clone());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(kind: PolicyKind, body: Value) -> Result<Policy, Vec<String>> {
        Policy::parse(
            kind,
            "/",
            "p",
            &body["pattern"],
            &body["definition"],
            body.get("priority"),
            body.get("apply-to"),
        )
    }

    #[test]
    fn complaints_are_rabbitmqs() {
        let cases = [
            (json!({"pattern": "^a", "definition": {"foo": 1}}), "[{<<\"foo\">>,1}] are not recognised policy settings"),
            (json!({"pattern": "^a", "definition": {"max-length": "x"}}), "<<\"x\">> is not a valid maximum length"),
            (json!({"pattern": "^a", "definition": {"max-length": -1}}), "-1 is not a valid maximum length"),
            (json!({"pattern": "^a", "definition": {"message-ttl": 1.5}}), "1.5 is not a valid message TTL"),
            (json!({"pattern": "^a", "definition": {"expires": 0}}), "0 is not a valid queue expiry"),
            (json!({"pattern": "^a", "definition": {"overflow": "bogus"}}), "<<\"bogus\">> is not a valid overflow value"),
            (json!({"pattern": "^a", "definition": {}}), "no policy provided"),
            (json!({"pattern": "^a", "definition": {"max-length": 1}, "apply-to": "bogus"}), "apply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'"),
            (json!({"pattern": "^a", "definition": {"max-length": 1}, "priority": "5"}), "priority should be a number, actually was <<\"5\">>"),
            (json!({"pattern": "ab(", "definition": {"max-length": 1}}), "pattern should be regular expression but is invalid: {\"missing )\",3}"),
            (json!({"pattern": "*a", "definition": {"max-length": 1}}), "pattern should be regular expression but is invalid: {\"nothing to repeat\",0}"),
            (json!({"pattern": "a)", "definition": {"max-length": 1}}), "pattern should be regular expression but is invalid: {\"unmatched parentheses\",\n                                                      1}"),
            (json!({"pattern": 5, "definition": {"max-length": 1}}), "pattern should be a binary but was 5"),
            (json!({"pattern": "^a", "definition": {"foo": 1, "bar": "x"}}), "[{<<\"bar\">>,<<\"x\">>},{<<\"foo\">>,1}] are not recognised policy settings"),
        ];
        for (body, text) in cases {
            let got = parse(PolicyKind::Policy, body.clone()).unwrap_err();
            assert_eq!(got, vec![text.to_string()], "{body}");
        }
        let all = parse(
            PolicyKind::Policy,
            json!({"pattern": "(", "definition": {"foo": 1}, "priority": "x", "apply-to": "bad"}),
        )
        .unwrap_err();
        assert_eq!(all.len(), 4);
        assert!(all[0].contains("not recognised") && all[3].starts_with("priority"));
        let op = parse(
            PolicyKind::Operator,
            json!({"pattern": "^a", "definition": {"overflow": "reject-publish"}}),
        )
        .unwrap_err();
        assert_eq!(
            op,
            vec!["[{<<\"overflow\">>,<<\"reject-publish\">>}] are not recognised policy settings"]
        );
    }

    fn policy(kind: PolicyKind, definition: Value, priority: i64) -> Policy {
        parse(
            kind,
            json!({"pattern": "^q", "definition": definition, "priority": priority}),
        )
        .unwrap()
    }

    #[test]
    fn precedence_follows_rabbitmq() {
        let mut set = PolicySet::default();
        set.put(
            PolicyKind::Policy,
            policy(
                PolicyKind::Policy,
                json!({"max-length": 10, "message-ttl": 500, "dead-letter-exchange": "pdlx", "overflow": "reject-publish"}),
                1,
            ),
        );
        set.put(
            PolicyKind::Operator,
            policy(PolicyKind::Operator, json!({"max-length": 5}), 0),
        );
        let applied = set.for_queue("q1", QueueType::Classic);
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), 1000i64.into());
        args.insert(
            "x-dead-letter-exchange".into(),
            amq_protocol::types::LongString::from("adlx").into(),
        );
        let declared = QueueArgs {
            message_ttl: Some(1000),
            dead_letter_exchange: Some("adlx".into()),
            ..Default::default()
        };
        let e = effective_queue_args(&declared, &args, &applied);
        assert_eq!(e.max_length, Some(5), "operator policy caps the policy");
        assert_eq!(
            e.message_ttl,
            Some(500),
            "the smaller of argument and policy"
        );
        assert_eq!(
            e.dead_letter_exchange.as_deref(),
            Some("adlx"),
            "argument wins"
        );
        assert_eq!(
            e.overflow,
            Overflow::RejectPublish,
            "no argument: the policy"
        );
        assert_eq!(
            applied.effective_definition()["max-length"],
            json!(5),
            "merged definition shows the smaller"
        );
        assert!(set.for_queue("other", QueueType::Classic).policy.is_none());
    }

    /// rabbit_quorum_queue: the policy's overflow and expires win over the
    /// arguments; limits still take the smaller; dead-lettering the argument.
    #[test]
    fn quorum_queues_let_the_policy_win_overflow_and_expires() {
        let mut set = PolicySet::default();
        set.put(
            PolicyKind::Policy,
            policy(
                PolicyKind::Policy,
                json!({"overflow": "reject-publish", "expires": 60000, "delivery-limit": 9, "dead-letter-routing-key": "p"}),
                0,
            ),
        );
        let mut args = FieldTable::default();
        args.insert(
            "x-overflow".into(),
            amq_protocol::types::LongString::from("drop-head").into(),
        );
        let declared = QueueArgs {
            queue_type: QueueType::Quorum,
            expires: Some(1000),
            delivery_limit: Some(3),
            dead_letter_routing_key: Some("a".into()),
            ..Default::default()
        };
        let e = effective_queue_args(&declared, &args, &set.for_queue("q", QueueType::Quorum));
        assert_eq!(e.overflow, Overflow::RejectPublish);
        assert_eq!(e.expires, Some(60000));
        assert_eq!(e.delivery_limit, Some(3));
        assert_eq!(e.dead_letter_routing_key.as_deref(), Some("a"));
        let classic = QueueArgs {
            queue_type: QueueType::Classic,
            ..declared
        };
        let mut set = PolicySet::default();
        set.put(
            PolicyKind::Policy,
            policy(
                PolicyKind::Policy,
                json!({"overflow": "reject-publish", "expires": 60000}),
                0,
            ),
        );
        let e = effective_queue_args(&classic, &args, &set.for_queue("q", QueueType::Classic));
        assert_eq!(e.overflow, Overflow::DropHead, "classic: the argument");
        assert_eq!(e.expires, Some(1000), "classic: the smaller");
    }

    #[test]
    fn the_highest_priority_wins_and_unsupported_settings_do_not_apply() {
        let mut set = PolicySet::default();
        set.put(
            PolicyKind::Policy,
            policy(PolicyKind::Policy, json!({"max-length": 1}), 1),
        );
        let mut high = policy(PolicyKind::Policy, json!({"delivery-limit": 3}), 5);
        high.record.name = "high".into();
        set.put(PolicyKind::Policy, high);
        assert_eq!(
            set.for_queue("q", QueueType::Quorum).policy.unwrap().name(),
            "high"
        );
        // delivery-limit is a quorum setting: RabbitMQ 3.10 does not apply
        // such a policy to classic queues at all.
        assert_eq!(
            set.for_queue("q", QueueType::Classic)
                .policy
                .unwrap()
                .name(),
            "p"
        );
    }
}
