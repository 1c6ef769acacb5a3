//! An exchange's message counts as RabbitMQ's management API shows them:
//! `publish_in`, messages published to it, and `publish_out`, the queue
//! deliveries they made (a message routed to three queues counts three,
//! through exchange-to-exchange bindings too), with their rates at the
//! last sample.

use crate::broker::timers::now_ms;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct ExchangeStats {
    publish_in: AtomicU64,
    publish_out: AtomicU64,
    last: Mutex<Last>,
}

#[derive(Default, Clone, Copy)]
struct Last {
    at_ms: u64,
    counts: [u64; 2],
    rates: [f64; 2],
}

impl ExchangeStats {
    /// A message published to the exchange reached `queues` queues.
    pub(crate) fn published(&self, queues: usize) {
        self.publish_in.fetch_add(1, Ordering::Relaxed);
        if queues > 0 {
            self.publish_out.fetch_add(queues as u64, Ordering::Relaxed);
        }
    }

    /// `[publish_in, publish_out]`.
    pub(crate) fn counts(&self) -> [u64; 2] {
        [
            self.publish_in.load(Ordering::Relaxed),
            self.publish_out.load(Ordering::Relaxed),
        ]
    }

    /// Per-second rates of `counts` at the last sample.
    pub(crate) fn rates(&self) -> [f64; 2] {
        self.last.lock().rates
    }

    /// Takes a sample: rates since the previous one.
    pub(crate) fn sample(&self) {
        let now = now_ms();
        let counts = self.counts();
        let mut last = self.last.lock();
        let elapsed = now.saturating_sub(last.at_ms);
        if last.at_ms != 0 && elapsed > 0 {
            let secs = elapsed as f64 / 1000.0;
            let before = last.counts;
            for ((rate, now), before) in last.rates.iter_mut().zip(counts).zip(before) {
                *rate = now.saturating_sub(before) as f64 / secs;
            }
        }
        last.at_ms = now;
        last.counts = counts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_publishes_in_and_queue_deliveries_out() {
        let s = ExchangeStats::default();
        s.sample();
        s.published(3);
        s.published(0);
        assert_eq!(s.counts(), [2, 3]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.sample();
        let [rate_in, rate_out] = s.rates();
        assert!(rate_in > 0.0 && rate_out > rate_in, "{rate_in} {rate_out}");
    }
}
