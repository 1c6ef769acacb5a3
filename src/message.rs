//! A published message, shared by every queue it reaches.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest expiration, x-message-ttl or x-expires RabbitMQ accepts
/// (ten years, ms).
pub(crate) const MAX_TTL_MS: u64 = 315_360_000_000;

/// Everything a message carries, immutable once published. Queues hold it
/// behind an `Arc`, so a fanout to ten queues shares one body.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    /// Raw basic properties from the publisher's content header (flags
    /// onwards), re-sent byte for byte on delivery.
    pub(crate) properties: Bytes,
    pub(crate) body: Bytes,
    pub(crate) persistent: bool,
    /// The `expiration` property, parsed (ms).
    pub(crate) expiration_ms: Option<u64>,
    /// The id under which the message was handed to the persister for
    /// durable queues (0: not stored). Set once, while routing, before any
    /// queue holds the message.
    stored: AtomicU64,
}

impl Message {
    pub(crate) fn new(
        exchange: String,
        routing_key: String,
        properties: Bytes,
        body: Bytes,
        persistent: bool,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            expiration_ms: None,
            stored: AtomicU64::new(0),
        }
    }

    pub(crate) fn with_expiration(mut self, ms: Option<u64>) -> Message {
        self.expiration_ms = ms;
        self
    }

    /// Bytes this message accounts for against the memory watermark.
    pub(crate) fn size(&self) -> usize {
        self.body.len() + self.properties.len()
    }

    pub(crate) fn stored(&self) -> Option<u64> {
        let id = self.stored.load(Ordering::Acquire);
        (id != 0).then_some(id)
    }

    pub(crate) fn set_stored(&self, id: u64) {
        self.stored.store(id, Ordering::Release);
    }
}

/// Parses the `expiration` property as RabbitMQ does: an integer of
/// milliseconds, at most ten years; the error is the detail of its 406
/// reply text.
pub(crate) fn parse_expiration(raw: &[u8]) -> Result<u64, String> {
    let text = String::from_utf8_lossy(raw);
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, &text[..]),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("no_integer".into());
    }
    if digits < rest.len() {
        return Err(format!("{{leftover_string,\"{}\"}}", &rest[digits..]));
    }
    // The value as Erlang prints an integer of any size: no leading zeros.
    let value = match rest.trim_start_matches('0') {
        "" => "0",
        v => v,
    };
    if negative && value != "0" {
        return Err(format!("{{value_negative,-{value}}}"));
    }
    match value.parse::<u64>() {
        Ok(ms) if ms <= MAX_TTL_MS => Ok(ms),
        _ => Err(format!("{{value_too_large,{value}}}")),
    }
}

/// `term`, a one-line Erlang term such as `{value_too_large,123}`, laid
/// out as RabbitMQ's `~p` lays it out when it starts at `column` of its
/// reply text: a tuple that would end past column 78 has its second
/// element on the next line, under the first.
pub(crate) fn erlang_layout(term: &str, column: usize) -> String {
    match term.split_once(',') {
        Some((first, rest)) if term.starts_with('{') && column + term.chars().count() > 78 => {
            format!("{first},\n{:width$}{rest}", "", width = column + 1)
        }
        _ => term.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{erlang_layout, parse_expiration};

    #[test]
    fn expiration_parses_like_rabbitmq() {
        assert_eq!(parse_expiration(b"100"), Ok(100));
        assert_eq!(parse_expiration(b"0"), Ok(0));
        assert_eq!(parse_expiration(b"abc"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b""), Err("no_integer".into()));
        assert_eq!(parse_expiration(b" 100"), Err("no_integer".into()));
        assert_eq!(parse_expiration(b"-1"), Err("{value_negative,-1}".into()));
        assert_eq!(
            parse_expiration(b"1.5"),
            Err("{leftover_string,\".5\"}".into())
        );
    }

    #[test]
    fn long_terms_wrap_as_rabbitmq_prints_them() {
        // Column and term lengths at the edge, as RabbitMQ 3.10 printed them.
        assert_eq!(
            erlang_layout("{value_too_large,999999999999999999}", 42),
            "{value_too_large,999999999999999999}"
        );
        assert_eq!(
            erlang_layout("{value_too_large,999999999999999999}", 43),
            format!("{{value_too_large,\n{}999999999999999999}}", " ".repeat(44))
        );
        assert_eq!(erlang_layout("no_integer", 200), "no_integer");
    }

    mod expiry {
        use super::parse_expiration;
        use crate::message::Message;
        use crate::message::MAX_TTL_MS;
        use crate::store::QueuedMessage;
        use bytes::Bytes;
        use proptest::prelude::*;
        use std::sync::Arc;

        /// Does `raw` read as an integer, RabbitMQ's way (`[+-]?[0-9]+`)?
        fn is_integer(raw: &[u8]) -> bool {
            let digits = match raw.first() {
                Some(b'+' | b'-') => &raw[1..],
                _ => raw,
            };
            !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
        }

        fn queued(expires_at: Option<u64>) -> QueuedMessage {
            let message = Message::new(
                String::new(),
                String::new(),
                Bytes::new(),
                Bytes::new(),
                false,
            );
            let mut m = QueuedMessage::new(0, Arc::new(message));
            m.expires_at = expires_at.and_then(std::num::NonZeroU64::new);
            m
        }

        #[test]
        fn expiry_edges() {
            assert!(!queued(None).is_expired(u64::MAX));
            assert!(queued(Some(1)).is_expired(1));
            assert!(queued(Some(5)).is_expired(5), "due at its deadline");
            assert!(!queued(Some(5)).is_expired(4));
            assert!(queued(Some(u64::MAX)).is_expired(u64::MAX));
            assert_eq!(parse_expiration(b"+7"), Ok(7));
            assert_eq!(parse_expiration(b"-0"), Ok(0));
            assert_eq!(parse_expiration(b"007"), Ok(7));
            assert_eq!(parse_expiration(b"-007"), Err("{value_negative,-7}".into()));
            assert_eq!(parse_expiration(b"+"), Err("no_integer".into()));
            assert_eq!(parse_expiration(b"-"), Err("no_integer".into()));
            assert_eq!(
                parse_expiration(b"1 "),
                Err("{leftover_string,\" \"}".into())
            );
            assert_eq!(parse_expiration(b"315360000000"), Ok(MAX_TTL_MS));
            assert_eq!(
                parse_expiration(b"+00315360000001"),
                Err("{value_too_large,315360000001}".into())
            );
            assert_eq!(
                parse_expiration(u64::MAX.to_string().as_bytes()),
                Err(format!("{{value_too_large,{}}}", u64::MAX))
            );
            let huge = "9".repeat(60);
            assert_eq!(
                parse_expiration(huge.as_bytes()),
                Err(format!("{{value_too_large,{huge}}}"))
            );
            assert_eq!(
                parse_expiration(format!("-{huge}").as_bytes()),
                Err(format!("{{value_negative,-{huge}}}"))
            );
        }

        proptest! {
            /// A message expires from its deadline on, never without one.
            #[test]
            fn expired_from_the_deadline_on(at in any::<u64>(), now in any::<u64>()) {
                prop_assert_eq!(queued(Some(at)).is_expired(now), at <= now);
                prop_assert!(!queued(None).is_expired(now));
                prop_assert!(queued(Some(at)).is_expired(at));
                prop_assert!(queued(Some(at)).is_expired(at.saturating_add(now)));
            }

            /// Every value up to ten years reads back as itself, with or
            /// without a `+` or leading zeros.
            #[test]
            fn any_value_to_ten_years_parses(n in 0..=MAX_TTL_MS, zeros in 0usize..4) {
                prop_assert_eq!(parse_expiration(n.to_string().as_bytes()), Ok(n));
                prop_assert_eq!(parse_expiration(format!("+{n}").as_bytes()), Ok(n));
                let padded = format!("{}{n}", "0".repeat(zeros));
                prop_assert_eq!(parse_expiration(padded.as_bytes()), Ok(n));
            }

            /// Anything longer is refused with its value, however large.
            #[test]
            fn longer_than_ten_years_is_refused(n in MAX_TTL_MS + 1..=u64::MAX, zeros in 0usize..4) {
                prop_assert_eq!(
                    parse_expiration(format!("{}{n}", "0".repeat(zeros)).as_bytes()),
                    Err(format!("{{value_too_large,{n}}}"))
                );
            }

            /// A negative number is refused with its value.
            #[test]
            fn negative_numbers_are_refused(n in prop_oneof![1u64..10, 1u64..=u64::MAX]) {
                prop_assert_eq!(
                    parse_expiration(format!("-{n}").as_bytes()),
                    Err(format!("{{value_negative,-{n}}}"))
                );
            }

            /// Anything that is not `[+-]?[0-9]+` is refused; nothing panics.
            #[test]
            fn only_integers_parse(raw in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..12),
                "[+-]?[0-9]{0,6}[^0-9]{0,3}[0-9 .eE+-]{0,4}".prop_map(String::into_bytes),
                "\\PC{0,8}".prop_map(String::into_bytes),
            ]) {
                let result = parse_expiration(&raw);
                if !is_integer(&raw) {
                    prop_assert!(result.is_err(), "{:?} gave {:?}", String::from_utf8_lossy(&raw), result);
                } else if raw.len() <= 11 {
                    prop_assert!(result.is_ok() || raw[0] == b'-', "{:?} gave {:?}", raw, result);
                }
            }

            /// A number followed by something else: the rest is quoted back.
            #[test]
            fn leftover_is_reported(n in any::<u32>(), rest in "[^0-9][ -~]{0,6}") {
                prop_assert_eq!(
                    parse_expiration(format!("{n}{rest}").as_bytes()),
                    Err(format!("{{leftover_string,\"{rest}\"}}"))
                );
            }
        }
    }
}
