//! A stream queue's declaration (`x-queue-type = stream`), checked as
//! RabbitMQ 3.10 checks it, with its reply texts: durable only, never
//! exclusive or auto-delete; retention by `x-max-length-bytes`,
//! `x-max-age` (`7D`, `30m`…) and `x-stream-max-segment-size-bytes`; the
//! arguments of other queue types refused.

use super::queue_args::{integer, type_name, Declared};
use crate::error::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};

/// RabbitMQ's default segment size (500 MB).
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// What a stream acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamArgs {
    pub(crate) max_length_bytes: Option<u64>,
    /// Milliseconds.
    pub(crate) max_age_ms: Option<u64>,
    pub(crate) max_segment_bytes: u64,
    /// Leveret's extension: one consumer at a time (RabbitMQ 3.10 refuses
    /// the argument on streams; its stream protocol has the same idea).
    pub(crate) single_active_consumer: bool,
}

/// Arguments of the other queue types; a stream refuses each
/// (`rabbit_stream_queue`'s capabilities list only its own).
const NOT_FOR_STREAMS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-expires",
    "x-max-in-memory-bytes",
    "x-max-in-memory-length",
    "x-max-length",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-master-locator",
    "x-queue-mode",
    "x-queue-version",
];

impl StreamArgs {
    /// Checks a stream's declaration; the first fault gets 406
    /// PRECONDITION_FAILED in RabbitMQ's words.
    pub(crate) fn parse(args: &FieldTable, q: &Declared<'_>) -> Result<StreamArgs, AmqpError> {
        q.refuse_transient()?;
        let t = args.inner();
        for arg in NOT_FOR_STREAMS {
            if t.contains_key(*arg) {
                return Err(AmqpError::precondition_failed(format_args!(
                    "invalid arg '{arg}' for queue '{}' in vhost '{}' of queue type rabbit_stream_queue",
                    q.name, q.vhost
                )));
            }
        }
        let invalid = |arg: &str, why: String| {
            AmqpError::precondition_failed(format_args!(
                "invalid arg '{arg}' for queue '{}' in vhost '{}': {why}",
                q.name, q.vhost
            ))
        };
        let int = |arg: &str| -> Result<Option<u64>, AmqpError> {
            let Some(v) = t.get(arg) else {
                return Ok(None);
            };
            let n = integer(v).ok_or_else(|| {
                invalid(arg, format!("\"expected integer, got {}\"", type_name(v)))
            })?;
            if n < 0 {
                return Err(invalid(arg, format!("{{value_negative,{n}}}")));
            }
            Ok(Some(n as u64))
        };
        let max_length_bytes = int("x-max-length-bytes")?;
        let max_segment_bytes =
            int("x-stream-max-segment-size-bytes")?.unwrap_or(DEFAULT_SEGMENT_BYTES);
        let max_age_ms = match t.get("x-max-age") {
            None => None,
            Some(AMQPValue::LongString(s)) => Some(
                parse_age(&String::from_utf8_lossy(s.as_bytes()))
                    .ok_or_else(|| invalid("x-max-age", "invalid_max_age".into()))?,
            ),
            Some(AMQPValue::ShortString(s)) => Some(
                parse_age(s.as_str())
                    .ok_or_else(|| invalid("x-max-age", "invalid_max_age".into()))?,
            ),
            Some(v) => {
                return Err(invalid(
                    "x-max-age",
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                ))
            }
        };
        let single_active_consumer = match t.get("x-single-active-consumer") {
            None => false,
            Some(AMQPValue::Boolean(b)) => *b,
            Some(v) => {
                return Err(invalid(
                    "x-single-active-consumer",
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                ))
            }
        };
        Ok(StreamArgs {
            max_length_bytes,
            max_age_ms,
            max_segment_bytes,
            single_active_consumer,
        })
    }
}

/// RabbitMQ's `x-max-age`: a positive whole number and one unit, `Y`
/// (365 days), `M` (30 days), `D`, `h`, `m` or `s`.
pub(crate) fn parse_age(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let seconds: u64 = match unit {
        'Y' => 365 * 86_400,
        'M' => 30 * 86_400,
        'D' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    n.checked_mul(seconds)?.checked_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(durable: bool, exclusive: bool, auto_delete: bool) -> Declared<'static> {
        Declared {
            name: "s",
            vhost: "/",
            durable,
            exclusive,
            auto_delete,
        }
    }

    fn check(args: &[(&str, AMQPValue)]) -> Result<StreamArgs, String> {
        let mut t = FieldTable::default();
        for (k, v) in args {
            t.insert((*k).into(), v.clone());
        }
        StreamArgs::parse(&t, &declared(true, false, false)).map_err(|e| e.text)
    }

    /// Texts from RabbitMQ 3.10.8, declaring each over AMQP.
    #[test]
    fn refusals_match_rabbitmq() {
        let props = [
            (
                (false, false, false),
                "invalid property 'non-durable' for queue 's' in vhost '/'",
            ),
            (
                (true, true, false),
                "invalid property 'exclusive-owner' for queue 's' in vhost '/'",
            ),
            (
                (true, false, true),
                "invalid property 'auto-delete' for queue 's' in vhost '/'",
            ),
        ];
        for ((d, e, a), text) in props {
            let err = StreamArgs::parse(&FieldTable::default(), &declared(d, e, a)).unwrap_err();
            assert_eq!(err.text, format!("PRECONDITION_FAILED - {text}"));
        }
        let s = |v: &str| AMQPValue::LongString(v.into());
        let cases = [
            ("x-max-age", s("7X"), "invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age"),
            ("x-max-age", AMQPValue::LongInt(7), "invalid arg 'x-max-age' for queue 's' in vhost '/': {unacceptable_type,signedint}"),
            ("x-max-length-bytes", s("x"), "invalid arg 'x-max-length-bytes' for queue 's' in vhost '/': \"expected integer, got longstr\""),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(-1), "invalid arg 'x-stream-max-segment-size-bytes' for queue 's' in vhost '/': {value_negative,-1}"),
            ("x-max-length", AMQPValue::LongInt(10), "invalid arg 'x-max-length' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
            ("x-message-ttl", AMQPValue::LongInt(10), "invalid arg 'x-message-ttl' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
            ("x-dead-letter-exchange", s("x"), "invalid arg 'x-dead-letter-exchange' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
            ("x-max-priority", AMQPValue::LongInt(3), "invalid arg 'x-max-priority' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
            ("x-single-active-consumer", s("true"), "invalid arg 'x-single-active-consumer' for queue 's' in vhost '/': {unacceptable_type,longstr}"),
            ("x-overflow", s("reject-publish"), "invalid arg 'x-overflow' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
            ("x-expires", AMQPValue::LongInt(1000), "invalid arg 'x-expires' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ];
        for (arg, v, text) in cases {
            assert_eq!(
                check(&[(arg, v)]).unwrap_err(),
                format!("PRECONDITION_FAILED - {text}"),
                "{arg}"
            );
        }
    }

    #[test]
    fn retention_arguments_are_read() {
        let a = check(&[
            ("x-max-age", AMQPValue::LongString("7D".into())),
            ("x-max-length-bytes", AMQPValue::LongLongInt(20_000_000_000)),
            (
                "x-stream-max-segment-size-bytes",
                AMQPValue::LongInt(100_000_000),
            ),
        ])
        .unwrap();
        assert_eq!(
            a,
            StreamArgs {
                max_length_bytes: Some(20_000_000_000),
                max_age_ms: Some(7 * 86_400_000),
                max_segment_bytes: 100_000_000,
                single_active_consumer: false,
            }
        );
        assert_eq!(check(&[]).unwrap().max_segment_bytes, DEFAULT_SEGMENT_BYTES);
    }

    #[test]
    fn ages_take_rabbitmqs_units() {
        assert_eq!(parse_age("30m"), Some(1_800_000));
        assert_eq!(parse_age("1Y"), Some(365 * 86_400_000));
        assert_eq!(parse_age("2M"), Some(60 * 86_400_000));
        assert_eq!(parse_age("10s"), Some(10_000));
        assert_eq!(parse_age("1h"), Some(3_600_000));
        for bad in [
            "",
            "D",
            "7",
            "7d",
            "-1D",
            "1.5h",
            "99999999999999999999Y",
            "7DD",
        ] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }
}
