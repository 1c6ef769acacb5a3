//! Rate history in the API, as RabbitMQ's: with `lengths_age` and
//! `lengths_incr` (seconds) the `*_details` of message counts carry
//! `samples` (`[{"sample", "timestamp"}]`, newest first, one per `incr`
//! going back `age`), `avg` and `avg_rate`; `msg_rates_age` and
//! `msg_rates_incr` do the same for `message_stats`. The values come from
//! each object's [`History`], filled by the rate sampler.

use crate::broker::queue_stats::History;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// Samples one answer may hold per series: a client asking for a year by
/// the second gets the newest ones.
const MAX_SAMPLES: u64 = 1000;

#[derive(Clone, Copy)]
pub(super) struct Range {
    age_ms: u64,
    incr_ms: u64,
}

/// What a request asked for.
#[derive(Default, Clone, Copy)]
pub(super) struct Ask {
    pub(super) lengths: Option<Range>,
    pub(super) msg_rates: Option<Range>,
}

impl Ask {
    pub(super) fn from(query: &HashMap<String, String>) -> Ask {
        let range = |prefix: &str| {
            let get = |what: &str| {
                query
                    .get(&format!("{prefix}_{what}"))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let (age, incr) = (get("age")?, get("incr")?);
            (incr > 0).then(|| Range {
                age_ms: age
                    .saturating_mul(1000)
                    .min(incr.saturating_mul(1000).saturating_mul(MAX_SAMPLES)),
                incr_ms: incr.saturating_mul(1000),
            })
        };
        Ask {
            lengths: range("lengths"),
            msg_rates: range("msg_rates"),
        }
    }
}

/// Overview totals: messages, messages_ready, messages_unacknowledged,
/// publish, deliver_get, redeliver, ack summed over queues, and confirm
/// (publishes confirmed on channels).
pub(super) const CONFIRM: usize = 7;

/// One series of overview totals and the confirm rate at its last sample.
#[derive(Default)]
pub(super) struct Series {
    pub(super) history: History<8>,
    last: Option<(u64, u64)>,
    pub(super) confirm_rate: f64,
}

impl Series {
    fn record(&mut self, at_ms: u64, values: [u64; 8]) {
        let confirmed = values[CONFIRM];
        if let Some((then, before)) = self.last {
            if at_ms > then {
                self.confirm_rate =
                    confirmed.saturating_sub(before) as f64 / ((at_ms - then) as f64 / 1000.0);
            }
        }
        self.last = Some((at_ms, confirmed));
        self.history.record(at_ms, values);
    }
}

/// The overview's history: the whole broker's, and each vhost's for users
/// who see only some (RabbitMQ sums its vhost stats for them).
#[derive(Default)]
pub(super) struct Histories {
    pub(super) all: Series,
    pub(super) by_vhost: HashMap<String, Series>,
}

impl Histories {
    /// One sampling: the broker's totals and each existing vhost's (a
    /// deleted vhost's history goes with it).
    pub(super) fn record(&mut self, at_ms: u64, all: [u64; 8], by_vhost: Vec<(String, [u64; 8])>) {
        self.all.record(at_ms, all);
        let existing: std::collections::HashSet<&str> =
            by_vhost.iter().map(|(v, _)| v.as_str()).collect();
        self.by_vhost
            .retain(|name, _| existing.contains(name.as_str()));
        for (name, values) in by_vhost {
            self.by_vhost.entry(name).or_default().record(at_ms, values);
        }
    }

    /// The values at `at_ms` summed over `vhosts`; None when none of them
    /// has history that far back.
    pub(super) fn summed_at(&self, vhosts: &[&str], at_ms: u64) -> Option<[u64; 8]> {
        let mut sum = None;
        for v in vhosts {
            if let Some(values) = self.by_vhost.get(*v).and_then(|s| s.history.at(at_ms)) {
                let total = sum.get_or_insert([0u64; 8]);
                for (t, x) in total.iter_mut().zip(values) {
                    *t += x;
                }
            }
        }
        sum
    }
}

pub(super) type Totals = Arc<Mutex<Histories>>;

/// A `*_details` object: `rate`, and with a range `samples`, `avg_rate`
/// and `avg` of value `i` of the history that `at` reads.
pub(super) fn details<const N: usize>(
    rate: f64,
    range: Option<Range>,
    at: impl Fn(u64) -> Option<[u64; N]>,
    i: usize,
    now_ms: u64,
) -> Value {
    let Some(Range { age_ms, incr_ms }) = range else {
        return json!({ "rate": rate });
    };
    let newest = now_ms - now_ms % incr_ms;
    let mut samples = Vec::new();
    let mut t = newest;
    while newest - t <= age_ms {
        let Some(values) = at(t) else { break };
        samples.push((t, values[i]));
        let Some(earlier) = t.checked_sub(incr_ms) else {
            break;
        };
        t = earlier;
    }
    let avg = if samples.is_empty() {
        0.0
    } else {
        samples.iter().map(|(_, v)| *v as f64).sum::<f64>() / samples.len() as f64
    };
    let avg_rate = match (samples.first(), samples.last()) {
        (Some((t1, v1)), Some((t0, v0))) if t1 > t0 => {
            (*v1 as f64 - *v0 as f64) / ((t1 - t0) as f64 / 1000.0)
        }
        _ => 0.0,
    };
    let samples: Vec<Value> = samples
        .iter()
        .map(|(t, v)| json!({ "sample": v, "timestamp": t }))
        .collect();
    json!({ "rate": rate, "samples": samples, "avg_rate": avg_rate, "avg": avg })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(pairs: &[(&str, &str)]) -> Ask {
        Ask::from(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn samples_go_back_age_by_incr_from_the_newest_boundary() {
        let mut h = History::<1>::default();
        h.record(100_000, [10]);
        h.record(112_000, [40]);
        let range = ask(&[("lengths_age", "20"), ("lengths_incr", "5")]).lengths;
        let d = details(1.5, range, |t| h.at(t), 0, 121_000);
        assert_eq!(
            d["samples"],
            json!([
                {"sample": 40, "timestamp": 120_000},
                {"sample": 40, "timestamp": 115_000},
                {"sample": 10, "timestamp": 110_000},
                {"sample": 10, "timestamp": 105_000},
                {"sample": 10, "timestamp": 100_000},
            ])
        );
        assert_eq!(d["rate"], 1.5);
        assert_eq!(d["avg_rate"], 1.5); // 30 more over 20 s
        assert_eq!(d["avg"], 22.0);
    }

    #[test]
    fn vhost_histories_sum_for_a_user_and_go_with_their_vhost() {
        let mut h = Histories::default();
        let v = |n: u64| [n, n, 0, 0, 0, 0, 0, n * 10];
        h.record(1_000, v(3), vec![("a".into(), v(1)), ("b".into(), v(2))]);
        h.record(2_000, v(7), vec![("a".into(), v(5)), ("b".into(), v(2))]);
        assert_eq!(h.summed_at(&["a"], 2_000), Some(v(5)));
        assert_eq!(h.summed_at(&["a", "b"], 2_000), Some(v(7)));
        assert_eq!(h.summed_at(&["a", "b"], 1_500), Some(v(3)));
        assert_eq!(h.summed_at(&["a"], 500), None);
        assert_eq!(h.summed_at(&["nobody"], 2_000), None);
        // Confirmed went from 10 to 50 in a second on "a", 30 to 70 in all.
        assert_eq!(h.by_vhost["a"].confirm_rate, 40.0);
        assert_eq!(h.all.confirm_rate, 40.0);
        // "b" deleted: its history goes.
        h.record(3_000, v(5), vec![("a".into(), v(5))]);
        assert!(!h.by_vhost.contains_key("b"));
        assert_eq!(h.by_vhost["a"].confirm_rate, 0.0);
    }

    #[test]
    fn without_both_parameters_there_are_no_samples() {
        let h = History::<1>::default();
        assert!(ask(&[("lengths_age", "60")]).lengths.is_none());
        assert!(ask(&[("msg_rates_age", "60"), ("msg_rates_incr", "0")])
            .msg_rates
            .is_none());
        assert_eq!(
            details(0.0, None, |t| h.at(t), 0, 5000),
            json!({"rate": 0.0})
        );
        // Hostile numbers neither overflow nor run long.
        let max = u64::MAX.to_string();
        let range = ask(&[
            ("lengths_age", max.as_str()),
            ("lengths_incr", max.as_str()),
        ])
        .lengths;
        assert_eq!(
            details(0.0, range, |t| h.at(t), 0, 5000)["samples"],
            json!([])
        );
        // A huge age is cut to MAX_SAMPLES samples.
        let mut h = History::<1>::default();
        h.record(0, [1]);
        let range = ask(&[("lengths_age", "99999999999"), ("lengths_incr", "1")]).lengths;
        let d = details(0.0, range, |t| h.at(t), 0, 5_000_000);
        assert_eq!(
            d["samples"].as_array().unwrap().len(),
            MAX_SAMPLES as usize + 1
        );
    }
}
