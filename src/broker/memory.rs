//! The memory watermark: bytes of ready messages held by all queues, and
//! whether publishers must be blocked until consumers drain them.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use tokio::sync::watch;

pub struct MemoryGauge {
    used: AtomicI64,
    /// The most `used` reached since the trimmer last looked: a spike that
    /// comes and goes between two of its looks still counts.
    peak: AtomicI64,
    high_watermark: i64,
    blocked: AtomicBool,
    /// `true` while the alarm is on; publishing connections wait on it.
    state: watch::Sender<bool>,
    /// Serialises alarm flips, so `blocked` and `state` always agree.
    flip: parking_lot::Mutex<()>,
}

impl MemoryGauge {
    pub fn new(high_watermark: u64) -> MemoryGauge {
        MemoryGauge {
            used: AtomicI64::new(0),
            peak: AtomicI64::new(0),
            high_watermark: high_watermark.min(i64::MAX as u64) as i64,
            blocked: AtomicBool::new(false),
            state: watch::channel(false).0,
            flip: parking_lot::Mutex::new(()),
        }
    }

    /// Records a change in held bytes and flips the alarm on crossing the
    /// mark. The alarm clears below 90 % of the mark, so it does not flap
    /// with every message around it.
    pub fn add(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let used = self.used.fetch_add(delta, Ordering::Relaxed) + delta;
        if used > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(used, Ordering::Relaxed);
        }
        if self.should_block(used) == self.blocked.load(Ordering::Acquire) {
            return;
        }
        // Threads adding and removing at once could otherwise leave the
        // flag and the watch disagreeing: publishers were then told to wait
        // for a state that was already "clear" and never stopped.
        let _flip = self.flip.lock();
        let used = self.used.load(Ordering::Relaxed);
        let over = self.should_block(used);
        if over == self.blocked.load(Ordering::Acquire) {
            return;
        }
        self.blocked.store(over, Ordering::Release);
        self.state.send_replace(over);
        if over {
            tracing::warn!(
                used,
                high_watermark = self.high_watermark,
                "memory alarm set: blocking publishers"
            );
        } else {
            tracing::info!(used, "memory alarm cleared: unblocking publishers");
        }
    }

    fn should_block(&self, used: i64) -> bool {
        if self.blocked.load(Ordering::Acquire) {
            used > self.high_watermark / 10 * 9
        } else {
            used > self.high_watermark
        }
    }

    pub fn used(&self) -> i64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The most held since the last call (at least what is held now).
    fn take_peak(&self) -> i64 {
        let used = self.used();
        self.peak.swap(used, Ordering::Relaxed).max(used)
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

/// Gives memory freed by drained queues back to the OS.
///
/// glibc's malloc keeps freed memory in per-thread arenas, so after a spike
/// of queued messages is consumed the process would stay at its peak size.
/// A thread watches the gauge and trims once queued bytes fell well below
/// what they were.
pub fn start_trimmer(gauge: std::sync::Weak<MemoryGauge>) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(2);
    /// Trim only after this much was released: trimming walks every arena.
    const RELEASED: i64 = 32 * 1024 * 1024;
    let _ = std::thread::Builder::new()
        .name("leveret-trim".into())
        .spawn(move || {
            let mut high = 0i64;
            loop {
                std::thread::sleep(EVERY);
                let Some(gauge) = gauge.upgrade() else { return };
                high = high.max(gauge.take_peak());
                let used = gauge.used();
                if high - used >= RELEASED && used < high / 2 {
                    trim();
                    high = used;
                }
            }
        });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spike_between_two_looks_still_counts() {
        let g = MemoryGauge::new(1 << 30);
        g.add(100);
        g.add(-100);
        assert_eq!(g.take_peak(), 100);
        assert_eq!(g.take_peak(), 0);
    }

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

    #[test]
    fn alarm_clears_only_below_ninety_percent() {
        let g = MemoryGauge::new(100);
        g.add(101);
        g.add(-5);
        assert!(g.is_blocked(), "96 bytes: still on");
        g.add(-7);
        assert!(!g.is_blocked(), "89 bytes: off");
    }

    #[test]
    fn flag_and_watch_agree_after_racing_threads() {
        for _ in 0..20 {
            let g = std::sync::Arc::new(MemoryGauge::new(1000));
            g.add(995);
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        for i in 0..20_000 {
                            g.add(if (i + t) % 2 == 0 { 10 } else { -10 });
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            g.add(10); // 1005: over the mark
            assert!(g.is_blocked());
            assert!(*g.subscribe().borrow(), "the watch says blocked too");
        }
    }
}
