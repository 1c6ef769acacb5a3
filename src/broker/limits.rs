//! Vhost limits (`max-connections`, `max-queues`) and user limits
//! (`max-connections`, `max-channels`), as RabbitMQ has them: integers,
//! negative for no limit, 0 for nothing allowed; and the live counts they
//! are checked against.
//!
//! The counts are taken where RabbitMQ checks: a connection takes its
//! place in its vhost's and its user's count at connection.open (refused
//! there with RabbitMQ's 530 when a limit is reached) and gives it back
//! when it ends; a channel takes one in its user's count at channel.open.

use crate::error::AmqpError;
use crate::hash::DashMap;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

pub(crate) const MAX_CONNECTIONS: &str = "max-connections";
pub(crate) const MAX_QUEUES: &str = "max-queues";
pub(crate) const MAX_CHANNELS: &str = "max-channels";

/// What limits apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    Vhost,
    User,
}

impl Subject {
    fn names(self) -> [&'static str; 2] {
        match self {
            Subject::Vhost => [MAX_CONNECTIONS, MAX_QUEUES],
            Subject::User => [MAX_CONNECTIONS, MAX_CHANNELS],
        }
    }
}

/// The limits of one vhost or user, newest first (RabbitMQ's order;
/// JSON objects show them by name).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Limits(pub(crate) Vec<(String, i64)>);

impl Limits {
    /// The limit `name` sets, None when it sets none or a negative one.
    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        let (_, v) = self.0.iter().find(|(n, _)| n == name)?;
        (*v >= 0).then(|| u32::try_from(*v).unwrap_or(u32::MAX))
    }

    /// A copy with `name` set to `value`, first.
    pub(crate) fn with(&self, name: &str, value: i64) -> Limits {
        let mut all = vec![(name.to_string(), value)];
        all.extend(self.0.iter().filter(|(n, _)| n != name).cloned());
        Limits(all)
    }

    /// A copy without `name`.
    pub(crate) fn without(&self, name: &str) -> Limits {
        Limits(self.0.iter().filter(|(n, _)| n != name).cloned().collect())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The JSON object RabbitMQ shows (`{"max-connections": 10, …}`).
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::from(*v)))
                .collect(),
        )
    }

    /// Reads a JSON object of limits as RabbitMQ validates it: known names
    /// only, integer values. The error is RabbitMQ's text.
    pub(crate) fn from_json(subject: Subject, value: &serde_json::Value) -> Result<Limits, String> {
        let Some(object) = value.as_object() else {
            return Err(format!(
                "limits should be a JSON object, actually was {value}"
            ));
        };
        let mut limits = Limits::default();
        let mut unknown = Vec::new();
        for (name, v) in object {
            if !subject.names().contains(&name.as_str()) {
                unknown.push(format!("{{<<\"{name}\">>,{v}}}"));
                continue;
            }
            limits = limits.with(name, integer(name, v)?);
        }
        if !unknown.is_empty() {
            let what = match subject {
                Subject::Vhost => "limits",
                Subject::User => "user-limits",
            };
            return Err(format!(
                "Unrecognised terms [{}] in {what}",
                unknown.join(",")
            ));
        }
        Ok(limits)
    }
}

/// Checks one limit's name and value as RabbitMQ does; its error text.
pub(crate) fn validate(
    subject: Subject,
    name: &str,
    value: &serde_json::Value,
) -> Result<i64, String> {
    if !subject.names().contains(&name) {
        let what = match subject {
            Subject::Vhost => "limits",
            Subject::User => "user-limits",
        };
        return Err(format!(
            "Unrecognised terms [{{<<\"{name}\">>,{value}}}] in {what}"
        ));
    }
    integer(name, value)
}

/// RabbitMQ's `rabbit_parameter_validation:integer`: a JSON integer, not
/// a string of one nor a float.
fn integer(name: &str, v: &serde_json::Value) -> Result<i64, String> {
    v.as_i64().ok_or_else(|| {
        let shown = match v {
            serde_json::Value::String(s) => format!("<<\"{s}\">>"),
            other => other.to_string(),
        };
        format!("{name} should be a number, actually was {shown}")
    })
}

/// Live counts of one vhost or one user.
#[derive(Default)]
pub(crate) struct Counts {
    connections: AtomicU32,
    channels: AtomicU32,
}

/// Takes one in `count` unless that reaches `limit`; false when refused.
fn take(count: &AtomicU32, limit: Option<u32>) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match limit {
            Some(max) if n >= max => None,
            _ => Some(n + 1),
        })
        .is_ok()
}

/// Open connections and channels by vhost and user.
#[derive(Default)]
pub(crate) struct LiveCounts {
    vhosts: DashMap<String, Arc<Counts>>,
    users: DashMap<String, Arc<Counts>>,
}

impl LiveCounts {
    fn of(map: &DashMap<String, Arc<Counts>>, name: &str) -> Arc<Counts> {
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        map.entry(name.to_string()).or_default().clone()
    }

    /// A connection's place in its vhost's and its user's counts, unless
    /// one of `vhost_limit` and `user_limit` (max-connections) is reached:
    /// then RabbitMQ's refusal of connection.open, the vhost's first.
    pub(crate) fn connect(
        &self,
        vhost: &str,
        user: &str,
        vhost_limit: Option<u32>,
        user_limit: Option<u32>,
    ) -> Result<ConnectionPlace, AmqpError> {
        let v = Self::of(&self.vhosts, vhost);
        if !take(&v.connections, vhost_limit) {
            return Err(AmqpError::not_allowed(format_args!(
                "access to vhost '{vhost}' refused for user '{user}': connection limit ({}) is reached",
                vhost_limit.unwrap_or(0)
            )));
        }
        let u = Self::of(&self.users, user);
        if !take(&u.connections, user_limit) {
            v.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(AmqpError::not_allowed(format_args!(
                "connection refused for user '{user}': user connection limit ({}) is reached",
                user_limit.unwrap_or(0)
            )));
        }
        Ok(ConnectionPlace {
            vhost: v,
            user: u,
            channels: 0,
        })
    }
}

/// A connection's place in the live counts, given back when dropped.
pub(crate) struct ConnectionPlace {
    vhost: Arc<Counts>,
    user: Arc<Counts>,
    /// Channels this connection holds in its user's count.
    channels: u32,
}

impl ConnectionPlace {
    /// A channel's place in the user's count, unless `limit`
    /// (max-channels) is reached: RabbitMQ's refusal of channel.open.
    pub(crate) fn open_channel(&mut self, user: &str, limit: Option<u32>) -> Result<(), AmqpError> {
        if !take(&self.user.channels, limit) {
            return Err(AmqpError::not_allowed(format_args!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({})",
                limit.unwrap_or(0)
            )));
        }
        self.channels += 1;
        Ok(())
    }

    pub(crate) fn close_channel(&mut self) {
        if self.channels > 0 {
            self.channels -= 1;
            self.user.channels.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ConnectionPlace {
    fn drop(&mut self) {
        self.vhost.connections.fetch_sub(1, Ordering::AcqRel);
        self.user.connections.fetch_sub(1, Ordering::AcqRel);
        self.user
            .channels
            .fetch_sub(self.channels, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_keep_rabbitmq_order_and_negative_means_none() {
        let l = Limits::default()
            .with(MAX_CONNECTIONS, 10)
            .with(MAX_QUEUES, -1);
        assert_eq!(l.0[0], (MAX_QUEUES.to_string(), -1));
        assert_eq!(
            l.to_json(),
            serde_json::json!({"max-queues": -1, "max-connections": 10})
        );
        assert_eq!(l.get(MAX_CONNECTIONS), Some(10));
        assert_eq!(l.get(MAX_QUEUES), None);
        assert!(l.without(MAX_QUEUES).without(MAX_CONNECTIONS).is_empty());
    }

    #[test]
    fn validation_texts_are_rabbitmqs() {
        use serde_json::json;
        assert_eq!(
            validate(Subject::Vhost, "max-queues", &json!("5")),
            Err("max-queues should be a number, actually was <<\"5\">>".into())
        );
        assert_eq!(
            validate(Subject::User, "max-foo", &json!(3)),
            Err("Unrecognised terms [{<<\"max-foo\">>,3}] in user-limits".into())
        );
        assert_eq!(validate(Subject::User, "max-channels", &json!(0)), Ok(0));
    }

    #[test]
    fn places_are_refused_at_the_limit_and_given_back() {
        let live = LiveCounts::default();
        let a = live.connect("/", "u", Some(1), None).unwrap();
        let e = live.connect("/", "v", Some(1), None).err().unwrap();
        assert!(
            e.text.contains("connection limit (1) is reached"),
            "{}",
            e.text
        );
        drop(a);
        let mut b = live.connect("/", "u", Some(1), Some(1)).unwrap();
        b.open_channel("u", Some(1)).unwrap();
        assert!(b.open_channel("u", Some(1)).is_err());
        b.close_channel();
        b.open_channel("u", Some(1)).unwrap();
    }
}
