//! Consuming from a stream as RabbitMQ does: a consumer needs a prefetch
//! and manual acks (acks only give credit back), basic.get is refused, and
//! `x-stream-offset` says where reading starts.

use super::stream_args::parse_age;
use crate::error::AmqpError;
use crate::store::stream_log::{Filter, StreamLog};
use amq_protocol::types::{AMQPValue, FieldTable};

/// Where a consumer starts reading (`x-stream-offset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    First,
    Last,
    /// After everything there now: only what is published from now on.
    Next,
    Offset(u64),
    /// The first entry appended at or after this time (ms since the epoch).
    Time(i64),
}

impl StartAt {
    /// Reads `x-stream-offset` as RabbitMQ's `parse_offset_arg`: absent is
    /// `next`; `first`, `last`, `next`; a number; an AMQP timestamp
    /// (seconds); or an interval such as `30m` or `7D`, counted back from
    /// `now_ms`. Anything else is refused with the newer RabbitMQ's 406
    /// (3.10 fails the consumer with 541 INTERNAL_ERROR).
    pub(crate) fn parse(
        arg: Option<&AMQPValue>,
        queue: &str,
        vhost: &str,
        now_ms: i64,
    ) -> Result<StartAt, AmqpError> {
        let refused = |why: String| {
            AmqpError::precondition_failed(format_args!(
                "failed consuming from stream queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let text = |s: &str| -> Result<StartAt, AmqpError> {
            Ok(match s {
                "first" => StartAt::First,
                "last" => StartAt::Last,
                "next" => StartAt::Next,
                interval => {
                    let ms =
                        parse_age(interval).ok_or_else(|| refused("invalid_max_age".into()))?;
                    StartAt::Time(now_ms.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)))
                }
            })
        };
        let Some(v) = arg else {
            return Ok(StartAt::Next);
        };
        match v {
            AMQPValue::LongString(s) => text(&String::from_utf8_lossy(s.as_bytes())),
            AMQPValue::ShortString(s) => text(s.as_str()),
            AMQPValue::Timestamp(seconds) => Ok(StartAt::Time(
                i64::try_from(*seconds)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000),
            )),
            v => match super::queue_args::integer(v) {
                Some(n) if n >= 0 => Ok(StartAt::Offset(n as u64)),
                Some(n) => Err(refused(format!("{{invalid_offset_arg,{n}}}"))),
                None => Err(refused(format!(
                    "{{invalid_offset_arg,{}}}",
                    super::queue_args::type_name(v)
                ))),
            },
        }
    }

    /// The offset this start means in `log` now: an offset before the
    /// first one kept starts at the first, one past the end at the end.
    pub(crate) fn resolve(self, log: &StreamLog) -> std::io::Result<u64> {
        let (first, next) = (log.first_offset(), log.next_offset());
        Ok(match self {
            StartAt::First => first,
            StartAt::Last => log.last_offset().unwrap_or(next),
            StartAt::Next => next,
            StartAt::Offset(n) => n.clamp(first, next),
            StartAt::Time(ms) => log.offset_at(ms)?,
        })
    }
}

/// basic.consume on a stream: RabbitMQ 3.10's refusals for a consumer
/// without a prefetch or with automatic acknowledgement.
pub(crate) fn check_consumer(
    prefetch: u16,
    no_ack: bool,
    queue: &str,
    vhost: &str,
) -> Result<(), AmqpError> {
    if no_ack {
        return Err(AmqpError::not_implemented(format_args!(
            "automatic acknowledgement not supported by stream queues queue '{queue}' in vhost '{vhost}'"
        )));
    }
    if prefetch == 0 {
        return Err(AmqpError::precondition_failed(format_args!(
            "consumer prefetch count is not set for 'queue '{queue}' in vhost '{vhost}''"
        )));
    }
    Ok(())
}

/// What a consumer filters on (RabbitMQ 3.13): `x-stream-filter`, one
/// value or an array of them, and `x-stream-match-unfiltered`, whether
/// messages without a filter value match too (default false).
pub(crate) fn filter(args: &FieldTable) -> Result<Option<Filter>, AmqpError> {
    let t = args.inner();
    let text = |v: &AMQPValue| match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    let values = match t.get("x-stream-filter") {
        None => return Ok(None),
        Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().map(text).collect(),
        Some(v) => text(v).map(|s| vec![s]),
    };
    let Some(values) = values else {
        return Err(AmqpError::precondition_failed(
            "x-stream-filter must be a string or an array of strings",
        ));
    };
    let match_unfiltered = match t.get("x-stream-match-unfiltered") {
        None => false,
        Some(AMQPValue::Boolean(b)) => *b,
        Some(_) => {
            return Err(AmqpError::precondition_failed(
                "x-stream-match-unfiltered must be a boolean",
            ))
        }
    };
    Ok(Some(Filter {
        values,
        match_unfiltered,
    }))
}

/// basic.nack or basic.reject of a stream's delivery, as RabbitMQ 3.10
/// answers it (newer versions give the credit back instead).
pub(crate) fn nack_refused(queue: &str, vhost: &str) -> AmqpError {
    AmqpError::not_implemented(format_args!(
        "basic.nack and basic.reject not supported by stream queues queue '{queue}' in vhost '{vhost}'"
    ))
}

/// basic.get on a stream, as RabbitMQ 3.10 answers it.
pub(crate) fn get_refused(queue: &str, vhost: &str) -> AmqpError {
    AmqpError::not_implemented(format_args!(
        "basic.get not supported by stream queues queue '{queue}' in vhost '{vhost}'"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Option<AMQPValue>) -> Result<StartAt, String> {
        StartAt::parse(v.as_ref(), "s", "/", 10_000_000).map_err(|e| e.text)
    }

    #[test]
    fn offsets_are_read_as_rabbitmq_reads_them() {
        let s = |v: &str| Some(AMQPValue::LongString(v.into()));
        assert_eq!(parse(None), Ok(StartAt::Next));
        assert_eq!(parse(s("first")), Ok(StartAt::First));
        assert_eq!(parse(s("last")), Ok(StartAt::Last));
        assert_eq!(parse(s("next")), Ok(StartAt::Next));
        assert_eq!(parse(s("30m")), Ok(StartAt::Time(10_000_000 - 1_800_000)));
        assert_eq!(
            parse(Some(AMQPValue::LongLongInt(3))),
            Ok(StartAt::Offset(3))
        );
        assert_eq!(
            parse(Some(AMQPValue::ShortShortUInt(3))),
            Ok(StartAt::Offset(3))
        );
        assert_eq!(
            parse(Some(AMQPValue::Timestamp(5))),
            Ok(StartAt::Time(5000))
        );
        assert_eq!(
            parse(s("bogus")).unwrap_err(),
            "PRECONDITION_FAILED - failed consuming from stream queue 's' in vhost '/': invalid_max_age"
        );
        assert_eq!(
            parse(Some(AMQPValue::LongInt(-1))).unwrap_err(),
            "PRECONDITION_FAILED - failed consuming from stream queue 's' in vhost '/': {invalid_offset_arg,-1}"
        );
        assert!(parse(Some(AMQPValue::Boolean(true))).is_err());
    }

    #[test]
    fn starts_resolve_against_the_log() {
        let dir = std::env::temp_dir().join(format!(
            "leveret-stream-consume-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let (mut log, _) = StreamLog::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            StartAt::Last.resolve(&log).unwrap(),
            0,
            "empty: last is next"
        );
        for i in 0..5 {
            log.append(1000 + i * 10, None, b"x").unwrap();
        }
        log.sync().unwrap();
        let at = |s: StartAt| s.resolve(&log).unwrap();
        assert_eq!(at(StartAt::First), 0);
        assert_eq!(at(StartAt::Last), 4);
        assert_eq!(at(StartAt::Next), 5);
        assert_eq!(at(StartAt::Offset(3)), 3);
        assert_eq!(at(StartAt::Offset(99)), 5);
        assert_eq!(at(StartAt::Time(1015)), 2);
        assert_eq!(at(StartAt::Time(0)), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Texts from RabbitMQ 3.10.8 (pika against the shared broker).
    #[test]
    fn consumer_refusals_match_rabbitmq() {
        assert_eq!(
            check_consumer(0, false, "s", "/").unwrap_err().text,
            "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 's' in vhost '/''"
        );
        let e = check_consumer(10, true, "s", "/").unwrap_err();
        assert_eq!(
            e.text,
            "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue 's' in vhost '/'"
        );
        assert!(check_consumer(10, false, "s", "/").is_ok());
        assert_eq!(
            get_refused("s", "/").text,
            "NOT_IMPLEMENTED - basic.get not supported by stream queues queue 's' in vhost '/'"
        );
    }
}
