//! A channel's `message_stats` as RabbitMQ's API shows them: each count
//! with its `*_details.rate`, per second since the previous sample. The
//! rate sampler ([`ChannelRates::sample`]) reads every channel's counts
//! with the queues'; channels that closed are forgotten there.

use crate::broker::counters::MessageCounts;
use crate::broker::Broker;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

const STATS: usize = 12;

/// RabbitMQ's channel `message_stats` names with their counts.
fn stats(c: &MessageCounts) -> [(&'static str, u64); STATS] {
    [
        ("publish", c.received),
        ("confirm", c.confirmed),
        ("return_unroutable", c.unroutable_returned),
        ("drop_unroutable", c.unroutable_dropped),
        ("deliver", c.consume_manual_ack),
        ("deliver_no_ack", c.consume_auto_ack),
        ("get", c.get_manual_ack),
        ("get_no_ack", c.get_auto_ack),
        ("get_empty", c.get_empty),
        ("deliver_get", c.delivered()),
        ("redeliver", c.redelivered),
        ("ack", c.acknowledged),
    ]
}

struct Sample {
    at_ms: u64,
    counts: [u64; STATS],
    rates: [f64; STATS],
}

/// The latest sample of each open channel, by (connection id, channel
/// number). A leaf lock: filled from counts read before it is taken.
#[derive(Clone, Default)]
pub(super) struct ChannelRates(Arc<Mutex<HashMap<(u64, u16), Sample>>>);

impl ChannelRates {
    pub(super) fn sample(&self, broker: &Broker, now_ms: u64) {
        let mut read = Vec::new();
        for conn in broker.connections.iter() {
            for ch in conn.channels.lock().values() {
                if let Some(c) = ch.counts() {
                    read.push(((*conn.key(), ch.id()), stats(&c).map(|(_, n)| n)));
                }
            }
        }
        let mut samples = self.0.lock();
        let mut next = HashMap::with_capacity(read.len());
        for (key, counts) in read {
            let rates = match samples.remove(&key) {
                Some(last) if now_ms > last.at_ms => {
                    let secs = (now_ms - last.at_ms) as f64 / 1000.0;
                    std::array::from_fn(|i| counts[i].saturating_sub(last.counts[i]) as f64 / secs)
                }
                Some(last) => last.rates,
                None => [0.0; STATS],
            };
            next.insert(
                key,
                Sample {
                    at_ms: now_ms,
                    counts,
                    rates,
                },
            );
        }
        *samples = next;
    }

    /// `message_stats` of channel `number` of connection `conn`: its
    /// counts, with rates once it has been sampled.
    pub(super) fn message_stats(&self, conn: u64, number: u16, counts: &MessageCounts) -> Value {
        let rates = self.0.lock().get(&(conn, number)).map(|s| s.rates);
        let mut out = Map::new();
        for (i, (name, n)) in stats(counts).into_iter().enumerate() {
            out.insert(name.into(), json!(n));
            let rate = rates.map_or(0.0, |r| r[i]);
            out.insert(format!("{name}_details"), json!({ "rate": rate }));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_count_has_its_rate_and_unsampled_channels_show_zero() {
        let rates = ChannelRates::default();
        let counts = MessageCounts {
            received: 7,
            acknowledged: 2,
            ..Default::default()
        };
        let m = rates.message_stats(1, 1, &counts);
        assert_eq!(m["publish"], 7);
        assert_eq!(m["publish_details"], json!({"rate": 0.0}));
        assert_eq!(m["ack"], 2);
        assert_eq!(m.as_object().unwrap().len(), 2 * STATS);
    }
}
