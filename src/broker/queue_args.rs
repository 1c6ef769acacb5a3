//! Queue arguments (`x-message-ttl`, `x-max-length`, ...): checked on
//! queue.declare with RabbitMQ's rules and reply texts, and kept parsed.

use crate::error::AmqpError;
use amq_protocol::types::{AMQPValue, FieldTable};

pub(crate) use crate::message::MAX_TTL_MS;

/// What a full queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Overflow {
    /// Drop (dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (basic.nack under confirms).
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum QueueType {
    #[default]
    Classic,
    Quorum,
    Stream,
}

/// The arguments a queue acts on.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct QueueArgs {
    pub(crate) message_ttl: Option<u64>,
    pub(crate) expires: Option<u64>,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_length_bytes: Option<u64>,
    pub(crate) overflow: Overflow,
    pub(crate) dead_letter_exchange: Option<String>,
    pub(crate) dead_letter_routing_key: Option<String>,
    pub(crate) max_priority: Option<u8>,
    pub(crate) single_active_consumer: bool,
    pub(crate) queue_type: QueueType,
    pub(crate) delivery_limit: Option<u64>,
    /// x-consumer-timeout (ms): how long a delivery may stay unacknowledged.
    pub(crate) consumer_timeout: Option<u64>,
    /// A stream's retention and segment size.
    pub(crate) stream: Option<super::stream_args::StreamArgs>,
}

/// The declaration being checked, for reply texts and type rules.
pub(crate) struct Declared<'a> {
    pub(crate) name: &'a str,
    pub(crate) vhost: &'a str,
    pub(crate) durable: bool,
    pub(crate) exclusive: bool,
    pub(crate) auto_delete: bool,
}

impl Declared<'_> {
    /// Quorum queues and streams are durable, never exclusive or
    /// auto-delete: RabbitMQ's refusal of the first property that is not.
    pub(crate) fn refuse_transient(&self) -> Result<(), AmqpError> {
        let property = if !self.durable {
            "non-durable"
        } else if self.exclusive {
            "exclusive-owner"
        } else if self.auto_delete {
            "auto-delete"
        } else {
            return Ok(());
        };
        Err(AmqpError::precondition_failed(format_args!(
            "invalid property '{property}' for queue '{}' in vhost '{}'",
            self.name, self.vhost
        )))
    }
}

impl QueueArgs {
    /// Parses and checks `args` as RabbitMQ 3.x does: the first bad
    /// argument gets 406 PRECONDITION_FAILED naming it.
    pub(crate) fn parse(args: &FieldTable, q: &Declared<'_>) -> Result<QueueArgs, AmqpError> {
        let t = args.inner();
        let invalid = |arg: &str, why: String| {
            AmqpError::precondition_failed(format_args!(
                "invalid arg '{arg}' for queue '{}' in vhost '{}': {why}",
                q.name, q.vhost
            ))
        };
        let int = |arg: &str, allow_zero: bool| -> Result<Option<u64>, AmqpError> {
            let Some(v) = t.get(arg) else {
                return Ok(None);
            };
            let n = integer(v).ok_or_else(|| {
                invalid(arg, format!("\"expected integer, got {}\"", type_name(v)))
            })?;
            if n < 0 {
                return Err(invalid(arg, format!("{{value_negative,{n}}}")));
            }
            if n == 0 && !allow_zero {
                return Err(invalid(arg, "{value_zero,0}".into()));
            }
            Ok(Some(n as u64))
        };
        // Ten years in milliseconds: RabbitMQ's ceiling for TTLs.
        let at_most = |v: Option<u64>, arg: &str| match v {
            Some(n) if n > MAX_TTL_MS => Err(invalid(arg, format!("{{value_too_large,{n}}}"))),
            v => Ok(v),
        };
        let string = |arg: &str| -> Result<Option<String>, AmqpError> {
            match t.get(arg) {
                None => Ok(None),
                Some(AMQPValue::LongString(s)) => {
                    Ok(Some(String::from_utf8_lossy(s.as_bytes()).into_owned()))
                }
                Some(AMQPValue::ShortString(s)) => Ok(Some(s.to_string())),
                Some(v) => Err(invalid(
                    arg,
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                )),
            }
        };

        let queue_type = match string("x-queue-type")?.as_deref() {
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some("stream") => {
                let stream = super::stream_args::StreamArgs::parse(args, q)?;
                return Ok(QueueArgs {
                    queue_type: QueueType::Stream,
                    single_active_consumer: stream.single_active_consumer,
                    stream: Some(stream),
                    ..QueueArgs::default()
                });
            }
            Some(other) => {
                return Err(invalid(
                    "x-queue-type",
                    format!("\"unsupported queue type '{other}'\""),
                ))
            }
        };
        if queue_type == QueueType::Quorum {
            q.refuse_transient()?;
            if t.contains_key("x-max-priority") {
                return Err(AmqpError::precondition_failed(format_args!(
                    "invalid arg 'x-max-priority' for queue '{}' in vhost '{}' of queue type rabbit_quorum_queue",
                    q.name, q.vhost
                )));
            }
        }

        let expires = at_most(int("x-expires", false)?, "x-expires")?;
        let message_ttl = at_most(int("x-message-ttl", true)?, "x-message-ttl")?;
        let max_length = int("x-max-length", true)?;
        let max_length_bytes = int("x-max-length-bytes", true)?;
        let max_priority = match int("x-max-priority", true)? {
            Some(n) if n > 255 => {
                return Err(invalid(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{n}}}"),
                ))
            }
            n => n.map(|n| n as u8),
        };
        let overflow = match t.get("x-overflow") {
            None => Overflow::DropHead,
            Some(AMQPValue::LongString(s)) => match s.as_bytes() {
                b"drop-head" => Overflow::DropHead,
                b"reject-publish" => Overflow::RejectPublish,
                b"reject-publish-dlx" => Overflow::RejectPublishDlx,
                _ => return Err(invalid("x-overflow", "invalid_overflow".into())),
            },
            Some(v) => {
                return Err(invalid(
                    "x-overflow",
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                ))
            }
        };
        let dead_letter_exchange = match t.get("x-dead-letter-exchange") {
            None => None,
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(v) => {
                return Err(AmqpError::precondition_failed(format_args!(
                "invalid type '{}' for arg 'x-dead-letter-exchange' in queue '{}' in vhost '{}'",
                type_name(v),
                q.name,
                q.vhost
            )))
            }
        };
        let dead_letter_routing_key = string("x-dead-letter-routing-key")?;
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
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
        // RabbitMQ offers a delivery limit on quorum queues only; Leveret
        // on every queue (the "after 3 failed attempts" pattern).
        let delivery_limit = int("x-delivery-limit", true)?;
        let consumer_timeout = int("x-consumer-timeout", true)?;
        Ok(QueueArgs {
            message_ttl,
            expires,
            max_length,
            max_length_bytes,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            single_active_consumer,
            queue_type,
            delivery_limit,
            consumer_timeout,
            stream: None,
        })
    }
}

pub(crate) fn integer(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        _ => return None,
    })
}

/// RabbitMQ's name for an AMQP field type, as its reply texts use them.
pub(crate) fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> Declared<'static> {
        Declared {
            name: "q",
            vhost: "/",
            durable: false,
            exclusive: false,
            auto_delete: false,
        }
    }

    fn check(arg: &str, v: AMQPValue) -> Result<QueueArgs, String> {
        let mut t = FieldTable::default();
        t.insert(arg.into(), v);
        QueueArgs::parse(&t, &declared()).map_err(|e| e.text)
    }

    #[test]
    fn reply_texts_match_rabbitmq() {
        let cases = [
            ("x-message-ttl", AMQPValue::LongInt(-1), "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}"),
            ("x-message-ttl", AMQPValue::LongString("100".into()), "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\""),
            ("x-expires", AMQPValue::LongInt(0), "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"),
            ("x-max-priority", AMQPValue::LongInt(256), "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}"),
            ("x-overflow", AMQPValue::LongString("bogus".into()), "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow"),
            ("x-overflow", AMQPValue::LongInt(1), "invalid arg 'x-overflow' for queue 'q' in vhost '/': {unacceptable_type,signedint}"),
            ("x-queue-type", AMQPValue::LongString("bogus".into()), "invalid arg 'x-queue-type' for queue 'q' in vhost '/': \"unsupported queue type 'bogus'\""),
            ("x-dead-letter-exchange", AMQPValue::LongInt(5), "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"),
            ("x-dead-letter-routing-key", AMQPValue::LongString("rk".into()), "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined"),
            ("x-single-active-consumer", AMQPValue::LongString("true".into()), "invalid arg 'x-single-active-consumer' for queue 'q' in vhost '/': {unacceptable_type,longstr}"),
            ("x-queue-type", AMQPValue::LongString("quorum".into()), "invalid property 'non-durable' for queue 'q' in vhost '/'"),
        ];
        for (arg, v, text) in cases {
            assert_eq!(
                check(arg, v).unwrap_err(),
                format!("PRECONDITION_FAILED - {text}")
            );
        }
    }

    #[test]
    fn good_arguments_are_parsed() {
        let a = check("x-max-length", AMQPValue::LongLongInt(10)).unwrap();
        assert_eq!(a.max_length, Some(10));
        let a = check(
            "x-overflow",
            AMQPValue::LongString("reject-publish-dlx".into()),
        )
        .unwrap();
        assert_eq!(a.overflow, Overflow::RejectPublishDlx);
        let a = check("x-max-priority", AMQPValue::ShortShortUInt(0)).unwrap();
        assert_eq!(a.max_priority, Some(0));
        assert!(
            check("x-single-active-consumer", AMQPValue::Boolean(true))
                .unwrap()
                .single_active_consumer
        );
    }
}
