//! A queue's message counters and the rates and consumer utilisation the
//! management API and `/metrics` report.
//!
//! Counters are plain relaxed atomics bumped on the hot path. Rates come
//! from a sampler that calls [`QueueStats::sample`] every few seconds, as
//! RabbitMQ's management plugin samples every 5 s; each sample also goes
//! into the queue's [`History`], the `samples` the API serves.

use super::timers::now_ms;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct QueueStats {
    pub(crate) published: AtomicU64,
    /// Deliveries to consumers and basic.get ("deliver_get").
    pub(crate) delivered: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) acked: AtomicU64,
    /// basic.get deliveries (also counted in `delivered`).
    pub(crate) got: AtomicU64,
    /// Of `delivered`, those needing no ack (consumers and gets).
    delivered_no_ack: AtomicU64,
    /// Of `got`, those needing no ack.
    got_no_ack: AtomicU64,
    /// basic.get that found the queue empty.
    got_empty: AtomicU64,
    /// Since when (ms) consumers were there but none could take the ready
    /// head (prefetch full); 0 when not blocked.
    blocked_since: AtomicU64,
    /// Total ms spent blocked that way.
    blocked_ms: AtomicU64,
    last: Mutex<Sample>,
    /// messages, messages_ready, messages_unacknowledged, publish,
    /// deliver_get, redeliver, ack, get.
    history: Mutex<History<8>>,
    /// When the queue was made (ms): its first sample's rates count from
    /// here, so a new queue shows them at once, as RabbitMQ's.
    created_ms: u64,
}

/// Values at the sampler's ticks, for the API's `samples` (RabbitMQ's
/// `lengths_age`, `msg_rates_age`…): a point is kept only when something
/// changed since the previous one (the values hold until the next), and
/// at most [`History::POINTS`] of them, so an idle object costs one point
/// and a busy one at most `POINTS` × (8 + 8 N) bytes.
#[derive(Default)]
pub(crate) struct History<const N: usize> {
    /// (ms since the Unix epoch, values), oldest first.
    points: std::collections::VecDeque<(u64, [u64; N])>,
}

impl<const N: usize> History<N> {
    /// With RabbitMQ's 5 s sampling, five minutes of a queue that changes
    /// all the time; longer for one that changes less often.
    pub(crate) const POINTS: usize = 64;

    pub(crate) fn record(&mut self, at_ms: u64, values: [u64; N]) {
        if self.points.back().is_some_and(|(_, last)| *last == values) {
            return;
        }
        if self.points.len() == Self::POINTS {
            self.points.pop_front();
        }
        self.points.push_back((at_ms, values));
    }

    /// The values at `at_ms`: those of the last point at or before it;
    /// None before the history begins.
    pub(crate) fn at(&self, at_ms: u64) -> Option<[u64; N]> {
        let i = self.points.partition_point(|(t, _)| *t <= at_ms);
        i.checked_sub(1).map(|i| self.points[i].1)
    }
}

/// Counter values at one sampling and the rates since the previous one.
#[derive(Default, Clone, Copy)]
pub(crate) struct Sample {
    at_ms: u64,
    counts: [u64; 4],
    got: u64,
    blocked_ms: u64,
    pub(crate) got_rate: f64,
    /// messages, messages_ready, messages_unacknowledged at the sample.
    gauges: [u64; 3],
    /// Their change per second.
    pub(crate) gauge_rates: [f64; 3],
    /// publish, deliver_get, redeliver, ack per second.
    pub(crate) rates: [f64; 4],
    /// Fraction of the last interval consumers could take messages.
    pub(crate) utilisation: f64,
    /// When a sample last saw the queue change (ms since the Unix epoch).
    active_ms: u64,
    /// `active_ms` while the last interval saw no change: RabbitMQ's
    /// `idle_since`.
    pub(crate) idle_since_ms: Option<u64>,
}

impl QueueStats {
    pub(crate) fn new() -> QueueStats {
        QueueStats {
            created_ms: now_ms(),
            ..QueueStats::default()
        }
    }

    pub(crate) fn delivered(&self, redelivered: bool, no_ack: bool) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if no_ack {
            self.delivered_no_ack.fetch_add(1, Ordering::Relaxed);
        }
        if redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if self.blocked_since.load(Ordering::Relaxed) != 0 {
            let since = self.blocked_since.swap(0, Ordering::Relaxed);
            if since != 0 {
                self.blocked_ms
                    .fetch_add(now_ms().saturating_sub(since), Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn got(&self, redelivered: bool, no_ack: bool) {
        self.got.fetch_add(1, Ordering::Relaxed);
        if no_ack {
            self.got_no_ack.fetch_add(1, Ordering::Relaxed);
        }
        self.delivered(redelivered, no_ack);
    }

    pub(crate) fn got_empty(&self) {
        self.got_empty.fetch_add(1, Ordering::Relaxed);
    }

    /// RabbitMQ's split of `deliver_get`: `deliver`, `deliver_no_ack`,
    /// `get`, `get_no_ack`, and `get_empty` beside them.
    pub(crate) fn delivery_kinds(&self) -> [u64; 5] {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (all, all_no_ack) = (load(&self.delivered), load(&self.delivered_no_ack));
        let (got, got_no_ack) = (load(&self.got), load(&self.got_no_ack));
        let deliver_no_ack = all_no_ack.saturating_sub(got_no_ack);
        let deliver = all.saturating_sub(got).saturating_sub(deliver_no_ack);
        [
            deliver,
            deliver_no_ack,
            got.saturating_sub(got_no_ack),
            got_no_ack,
            load(&self.got_empty),
        ]
    }

    /// Ready messages wait while every consumer is at its prefetch limit.
    pub(crate) fn consumers_blocked(&self) {
        if self.blocked_since.load(Ordering::Relaxed) == 0 {
            self.blocked_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub(crate) fn counts(&self) -> [u64; 4] {
        [
            self.published.load(Ordering::Relaxed),
            self.delivered.load(Ordering::Relaxed),
            self.redelivered.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
        ]
    }

    fn blocked_total(&self, now: u64) -> u64 {
        let since = self.blocked_since.load(Ordering::Relaxed);
        let ongoing = if since == 0 {
            0
        } else {
            now.saturating_sub(since)
        };
        self.blocked_ms.load(Ordering::Relaxed) + ongoing
    }

    /// Takes a sample: rates and utilisation since the previous one, and
    /// how fast the ready and unacknowledged counts change.
    pub(crate) fn sample(&self, ready: usize, unacked: usize) {
        let gauges = [(ready + unacked) as u64, ready as u64, unacked as u64];
        let now = now_ms();
        let counts = self.counts();
        let got = self.got.load(Ordering::Relaxed);
        self.history.lock().record(
            now,
            [
                gauges[0], gauges[1], gauges[2], counts[0], counts[1], counts[2], counts[3], got,
            ],
        );
        let blocked = self.blocked_total(now);
        let mut last = self.last.lock();
        let first = last.at_ms == 0;
        if first && self.created_ms != 0 {
            // Lengths change from what the queue holds now (a recovered
            // backlog is no rate).
            last.at_ms = self.created_ms;
            last.gauges = gauges;
        }
        let elapsed = now.saturating_sub(last.at_ms);
        if last.at_ms != 0 && elapsed > 0 {
            let secs = elapsed as f64 / 1000.0;
            let before_gauges = last.gauges;
            for ((rate, now), before) in last.gauge_rates.iter_mut().zip(gauges).zip(before_gauges)
            {
                *rate = (now as f64 - before as f64) / secs;
            }
            last.got_rate = got.saturating_sub(last.got) as f64 / secs;
            last.got = got;
            let previous = last.counts;
            for ((rate, now), before) in last.rates.iter_mut().zip(counts).zip(previous) {
                *rate = now.saturating_sub(before) as f64 / secs;
            }
            let blocked_in_window = blocked.saturating_sub(last.blocked_ms).min(elapsed);
            last.utilisation = 1.0 - blocked_in_window as f64 / elapsed as f64;
        } else {
            last.utilisation = 1.0;
        }
        if first || last.counts != counts || last.gauges != gauges {
            last.active_ms = now;
            last.idle_since_ms = None;
        } else {
            last.idle_since_ms = Some(last.active_ms);
        }
        last.at_ms = now;
        last.gauges = gauges;
        last.counts = counts;
        last.blocked_ms = blocked;
    }

    pub(crate) fn last(&self) -> Sample {
        *self.last.lock()
    }

    /// Runs `f` on the history (the API builds `samples` from it).
    pub(crate) fn with_history<T>(&self, f: impl FnOnce(&History<8>) -> T) -> T {
        f(&self.history.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utilisation_is_the_share_of_time_consumers_could_take_messages() {
        let stats = QueueStats::default();
        stats.sample(0, 0);
        std::thread::sleep(Duration::from_millis(100));
        stats.consumers_blocked();
        std::thread::sleep(Duration::from_millis(200));
        stats.delivered(false, false);
        stats.sample(0, 0);
        let u = stats.last().utilisation;
        assert!((0.2..0.5).contains(&u), "blocked 200 of ~300 ms: {u}");
        std::thread::sleep(Duration::from_millis(50));
        stats.sample(0, 0);
        assert_eq!(stats.last().utilisation, 1.0);
    }

    #[test]
    fn history_keeps_changes_only_and_at_most_its_points() {
        let mut h = History::<1>::default();
        assert_eq!(h.at(5), None);
        h.record(10, [1]);
        h.record(20, [1]);
        h.record(30, [2]);
        assert_eq!(h.points.len(), 2, "an unchanged value adds no point");
        assert_eq!(
            (h.at(9), h.at(10), h.at(29), h.at(31)),
            (None, Some([1]), Some([1]), Some([2]))
        );
        for i in 0..1000 {
            h.record(100 + i, [i]);
        }
        assert_eq!(h.points.len(), History::<1>::POINTS);
        assert_eq!(h.at(1099), Some([999]));
        assert_eq!(h.at(100), None, "the oldest points are gone");
    }

    #[test]
    fn a_new_queue_has_rates_at_its_first_sample() {
        let stats = QueueStats::new();
        for _ in 0..10 {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100));
        stats.sample(10, 0);
        let s = stats.last();
        assert!(s.rates[0] > 10.0, "10 published in ~100 ms: {:?}", s.rates);
        assert_eq!(
            s.gauge_rates, [0.0; 3],
            "lengths count from the first sample"
        );
    }

    #[test]
    fn rates_are_per_second_since_the_last_sample() {
        let stats = QueueStats::default();
        stats.sample(0, 0);
        for _ in 0..10 {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        stats.got(true, false);
        std::thread::sleep(Duration::from_millis(200));
        stats.sample(10, 0);
        let s = stats.last();
        assert!((20.0..=55.0).contains(&s.rates[0]), "{}", s.rates[0]);
        assert!(s.rates[2] > 0.0 && s.got_rate > 0.0);
        assert!(s.gauge_rates[1] > 0.0);
        assert_eq!(stats.counts(), [10, 1, 1, 0]);
    }
}
