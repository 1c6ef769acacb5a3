//! The memory watermark: bytes of ready messages held by all queues, and
//! whether publishers must be blocked until consumers drain them.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use tokio::sync::watch;

pub struct MemoryGauge {
    used: AtomicI64,
    high_watermark: i64,
    blocked: AtomicBool,
    /// `true` while above the watermark; publishing connections wait on it.
    state: watch::Sender<bool>,
}

impl MemoryGauge {
    pub fn new(high_watermark: u64) -> MemoryGauge {
        MemoryGauge {
            used: AtomicI64::new(0),
            high_watermark: high_watermark.min(i64::MAX as u64) as i64,
            blocked: AtomicBool::new(false),
            state: watch::channel(false).0,
        }
    }

    /// Records a change in held bytes and flips the alarm on crossing the mark.
    pub fn add(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let used = self.used.fetch_add(delta, Ordering::Relaxed) + delta;
        let over = used > self.high_watermark;
        if over != self.blocked.load(Ordering::Relaxed)
            && self.blocked.swap(over, Ordering::AcqRel) != over
        {
            if over {
                tracing::warn!(
                    used,
                    high_watermark = self.high_watermark,
                    "memory alarm set: blocking publishers"
                );
            } else {
                tracing::info!(used, "memory alarm cleared: unblocking publishers");
            }
            self.state.send_replace(over);
        }
    }

    pub fn used(&self) -> i64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_follows_the_watermark() {
        let g = MemoryGauge::new(100);
        let rx = g.subscribe();
        g.add(60);
        assert!(!g.is_blocked());
        g.add(60);
        assert!(g.is_blocked() && *rx.borrow());
        g.add(-30);
        assert!(!g.is_blocked() && !*rx.borrow());
    }
}
