//! Topic permissions, as RabbitMQ's internal backend has them: for one
//! user in one vhost and one topic exchange, a `write` expression the
//! routing key of a publish must match and a `read` expression the binding
//! key of a bind from that exchange must match. No topic permission for an
//! exchange allows everything.
//!
//! RabbitMQ expands `{username}` and `{vhost}` in the expression at each
//! check; both are fixed for a permission (it belongs to one user and one
//! vhost), so they are expanded once, when the permission is set, and the
//! expression compiled then: a check is one `is_match`. The values go in
//! escaped, as in RabbitMQ since 3.11 (3.10 put them in raw, so a user
//! named `a.b` also matched `axb`). `{client_id}` is expanded only for
//! MQTT and STOMP clients, so for AMQP it stays literal text, which PCRE
//! reads as a literal and so does this (`pcre_braces`).

use super::access::Access;
use crate::error::AmqpError;
use crate::hash::HashMap;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One topic permission as RabbitMQ's API and definitions show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct TopicPermissionRecord {
    pub(crate) user: String,
    pub(crate) vhost: String,
    pub(crate) exchange: String,
    pub(crate) write: String,
    pub(crate) read: String,
}

/// A topic permission with its expressions expanded and compiled.
pub(crate) struct TopicPermission {
    pub(crate) record: TopicPermissionRecord,
    write: Regex,
    read: Regex,
}

impl TopicPermission {
    /// Expands the variables and compiles both expressions; the error
    /// names the one that is bad.
    pub(crate) fn compile(record: TopicPermissionRecord) -> Result<TopicPermission, String> {
        let compile = |re: &str| -> Result<Regex, String> {
            // RabbitMQ: an empty expression is `^$` (only the empty key).
            let source = if re.is_empty() { "^$" } else { re };
            let expanded = source
                .replace("{username}", &regex::escape(&record.user))
                .replace("{vhost}", &regex::escape(&record.vhost));
            Regex::new(&pcre_braces(&expanded))
                .map_err(|e| format!("invalid regular expression '{re}': {e}"))
        };
        Ok(TopicPermission {
            write: compile(&record.write)?,
            read: compile(&record.read)?,
            record,
        })
    }

    fn allows(&self, access: Access, routing_key: &str) -> bool {
        match access {
            Access::Write => self.write.is_match(routing_key),
            Access::Read => self.read.is_match(routing_key),
            Access::Configure => true,
        }
    }
}

/// A user's topic permissions in one vhost, by exchange. Replaced as a
/// whole when one changes, so a connection can hold it and check without
/// a lock.
#[derive(Default)]
pub(crate) struct VhostTopicPermissions {
    by_exchange: HashMap<String, Arc<TopicPermission>>,
}

impl VhostTopicPermissions {
    pub(crate) fn get(&self, exchange: &str) -> Option<&Arc<TopicPermission>> {
        self.by_exchange.get(exchange)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_exchange.is_empty()
    }

    pub(crate) fn records(&self) -> impl Iterator<Item = &TopicPermissionRecord> {
        self.by_exchange.values().map(|p| &p.record)
    }

    /// A copy with `p` set for its exchange.
    pub(crate) fn with(&self, p: TopicPermission) -> VhostTopicPermissions {
        let mut by_exchange = self.by_exchange.clone();
        by_exchange.insert(p.record.exchange.clone(), Arc::new(p));
        VhostTopicPermissions { by_exchange }
    }

    /// A copy without `exchange`'s permission.
    pub(crate) fn without(&self, exchange: &str) -> VhostTopicPermissions {
        let mut by_exchange = self.by_exchange.clone();
        by_exchange.remove(exchange);
        VhostTopicPermissions { by_exchange }
    }

    /// RabbitMQ's topic check of `routing_key` for `access` to a topic
    /// exchange (the caller knows it is one): 403 ACCESS_REFUSED with
    /// RabbitMQ 3.10's text when the exchange has a permission the key
    /// does not match.
    pub(crate) fn check(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), AmqpError> {
        match self.get(exchange) {
            Some(p) if !p.allows(access, routing_key) => Err(AmqpError::access_refused(format_args!(
                "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
            ))),
            _ => Ok(()),
        }
    }
}

/// The expression with each `{` or `}` that PCRE reads as a literal (any
/// that is not part of a `{n}`, `{n,}` or `{n,m}` quantifier) escaped, as
/// the regex crate refuses them unescaped.
fn pcre_braces(re: &str) -> String {
    let bytes = re.as_bytes();
    let mut out = String::with_capacity(re.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                // An escape and the character it escapes, whatever it is.
                let end = re[i + 1..]
                    .chars()
                    .next()
                    .map_or(i + 1, |ch| i + 1 + ch.len_utf8());
                out.push_str(&re[i..end]);
                i = end;
                continue;
            }
            b'[' if !in_class => {
                in_class = true;
                out.push('[');
                i += 1;
                // A `]` first in a class (after an optional `^`) is literal.
                if bytes.get(i) == Some(&b'^') {
                    out.push('^');
                    i += 1;
                }
                if bytes.get(i) == Some(&b']') {
                    out.push_str("\\]");
                    i += 1;
                }
                continue;
            }
            b']' if in_class => in_class = false,
            b'{' if !in_class => {
                let len = quantifier_len(&bytes[i..]);
                if len > 0 {
                    out.push_str(&re[i..i + len]);
                    i += len;
                } else {
                    out.push_str("\\{");
                    i += 1;
                }
                continue;
            }
            b'}' if !in_class => {
                out.push_str("\\}");
                i += 1;
                continue;
            }
            _ => {}
        }
        let ch = re[i..].chars().next().expect("i is on a char boundary");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The length of a `{n}`, `{n,}` or `{n,m}` quantifier at the start of
/// `s`, or 0.
fn quantifier_len(s: &[u8]) -> usize {
    let digits = |from: usize| s[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let n = digits(1);
    if n == 0 {
        return 0;
    }
    let mut i = 1 + n;
    if s.get(i) == Some(&b',') {
        i += 1 + digits(i + 1);
    }
    if s.get(i) == Some(&b'}') {
        i + 1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission(write: &str, read: &str) -> TopicPermission {
        TopicPermission::compile(TopicPermissionRecord {
            user: "a.b".into(),
            vhost: "/".into(),
            exchange: "amq.topic".into(),
            write: write.into(),
            read: read.into(),
        })
        .unwrap()
    }

    #[test]
    fn variables_are_expanded_escaped_and_empty_means_only_the_empty_key() {
        let p = permission("^{username}\\.", "");
        assert!(p.allows(Access::Write, "a.b.orders"));
        assert!(!p.allows(Access::Write, "axb.orders"));
        assert!(!p.allows(Access::Write, "c.orders"));
        assert!(p.allows(Access::Read, ""));
        assert!(!p.allows(Access::Read, "x"));
        let v = permission("^{vhost}$", ".*");
        assert!(v.allows(Access::Write, "/"));
    }

    #[test]
    fn braces_pcre_reads_as_literals_are_literals() {
        assert_eq!(pcre_braces("^{client_id}\\."), "^\\{client_id\\}\\.");
        assert_eq!(pcre_braces("a{2}b{1,}c{1,3}"), "a{2}b{1,}c{1,3}");
        assert_eq!(pcre_braces("[{}]x{,2}"), "[{}]x\\{,2\\}");
        assert_eq!(pcre_braces("[]{]\\{é{"), "[\\]{]\\{é\\{");
        let p = permission("^{client_id}$", "x{2}");
        assert!(p.allows(Access::Write, "{client_id}"));
        assert!(p.allows(Access::Read, "axx"));
        assert!(TopicPermission::compile(TopicPermissionRecord {
            write: "(".into(),
            ..p.record.clone()
        })
        .is_err());
    }
}
