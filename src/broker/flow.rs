//! Publisher flow control (RabbitMQ's "flow" state).
//!
//! A publisher is paused (its socket is not read) while a queue it
//! publishes to grows although the queue's consumers keep up: each of them
//! settles a message in at most `busy_consumer` on average and has nothing
//! stuck for `STUCK`. The broker, not the consumers, is then the
//! bottleneck, and a longer queue would only add latency (an unthrottled
//! producer would otherwise fill memory up to the alarm, and every message
//! would wait seconds).
//!
//! Queues without consumers, or whose consumers are busy with their work
//! (or new, their pace not known yet), absorb bursts as RabbitMQ's do, up
//! to the memory alarm or their max-length: a spike of orders is queued,
//! not pushed back onto the order API. Only growth while consumers keep up
//! counts, so a consumer catching up on an old backlog pauses no one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often a paused publisher re-checks its queue even without a wake-up
/// (its consumers may have turned slow or stuck, which no event reports).
pub(crate) const RECHECK: Duration = Duration::from_millis(5);

#[derive(Clone, Copy, Debug)]
pub(crate) struct FlowLimits {
    /// Growth of a queue's backlog, in bytes (bodies plus the per-message
    /// overhead), above its lowest point while its consumers kept up, at
    /// which its publishers are paused; they go on once it is back under
    /// half of this. 0 turns flow control off.
    pub(crate) window: u64,
    /// A consumer that takes longer than this per message, on average, is
    /// busy with its work, and its queue absorbs.
    pub(crate) busy_consumer: Duration,
}

/// How fast a consumer settles messages (acknowledges them, or takes them
/// without acks), counted over windows of `PACE_WINDOW` and readable
/// without a lock. A window, not a moving average over the last few
/// messages: flow control looks at a queue exactly when it grew, which is
/// when a consumer was held up for a moment (descheduled, say); that
/// moment must not make it count as busy.
#[derive(Default)]
pub(crate) struct Pace {
    window_start: AtomicU64,
    count: AtomicU64,
    /// Microseconds per message over the last whole window (0: unknown).
    last_per_message: AtomicU64,
}

/// A consumer that has not acknowledged a delivery for this long, or a
/// no-ack consumer whose socket has not taken a write for this long, is
/// stuck or busy, whatever its pace.
pub(crate) const STUCK: Duration = Duration::from_millis(250);

/// The window `Pace` counts over.
pub(crate) const PACE_WINDOW: Duration = Duration::from_millis(250);

impl Pace {
    pub(crate) fn record(&self, settled: u64) {
        // Racing writers may lose a count; an estimate does not mind.
        let now = monotonic_us();
        let start = self.window_start.load(Ordering::Relaxed);
        if start == 0 {
            self.window_start.store(now, Ordering::Relaxed);
        } else if now.saturating_sub(start) >= PACE_WINDOW.as_micros() as u64 {
            // The window ends with this record; after an idle gap it is
            // longer than PACE_WINDOW, and the average says so.
            let count = self.count.swap(0, Ordering::Relaxed);
            let per_message = (now - start).checked_div(count).unwrap_or(0);
            self.last_per_message.store(per_message, Ordering::Relaxed);
            self.window_start.store(now, Ordering::Relaxed);
        }
        self.count.fetch_add(settled, Ordering::Relaxed);
    }

    /// Average time per message: over the last whole window, or over the
    /// current one if that is faster so far (None: nothing settled yet).
    pub(crate) fn per_message(&self) -> Option<Duration> {
        let last = self.last_per_message.load(Ordering::Relaxed);
        let start = self.window_start.load(Ordering::Relaxed);
        let count = self.count.load(Ordering::Relaxed);
        let current = match start {
            0 => None,
            _ => monotonic_us().saturating_sub(start).checked_div(count),
        };
        let last = (last > 0).then_some(last);
        let best = match (last, current) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        best.map(Duration::from_micros)
    }
}

/// Microseconds on a monotonic clock, never 0 (0 marks "not started").
pub(crate) fn monotonic_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_time_per_message() {
        let pace = Pace::default();
        assert_eq!(pace.per_message(), None);
        pace.record(1);
        std::thread::sleep(Duration::from_millis(20));
        pace.record(100);
        let fast = pace.per_message().expect("counted");
        // 100 or 101 messages in at least 20 ms: about 200 µs each.
        assert!(fast >= Duration::from_micros(190), "{fast:?}");
        assert!(fast < Duration::from_millis(2), "{fast:?}");
    }
}
