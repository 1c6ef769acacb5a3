//! The memory watermark: what the broker holds, and whether publishers must
//! be blocked until it is given back.
//!
//! Two measures feed one alarm. Bytes held on clients' behalf are counted
//! as they come and go (ready messages in queues, a transaction's buffered
//! publishes, bodies still arriving), so the alarm reacts at once to the
//! ways a client fills memory fastest. A broker running as its own process
//! also samples its resident memory every `SAMPLE_EVERY`, as RabbitMQ
//! compares total process memory with its watermark: that is the ground
//! truth, and it catches everything not counted (unacknowledged deliveries,
//! outboxes, returns, dead letters in flight, the persister's queue, the
//! allocator's own overhead) without a counter on every path. The alarm is
//! on while either measure is over the mark.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often resident memory is sampled (one read of /proc/self/statm).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub(crate) struct MemoryGauge {
    used: AtomicI64,
    /// The most `used` reached since the trimmer last looked: a spike that
    /// comes and goes between two of its looks still counts.
    peak: AtomicI64,
    /// Resident memory of the process at the last sample (0: not sampled,
    /// e.g. a broker inside a test process, whose memory is not its own).
    resident: AtomicI64,
    /// Resident memory is sampled (the broker is its own process).
    measure_process: AtomicBool,
    high_watermark: i64,
    blocked: AtomicBool,
    /// `true` while the alarm is on; publishing connections wait on it.
    state: watch::Sender<bool>,
    /// Serialises alarm flips, so `blocked` and `state` always agree.
    flip: parking_lot::Mutex<()>,
}

impl MemoryGauge {
    pub(crate) fn new(high_watermark: u64) -> MemoryGauge {
        MemoryGauge {
            used: AtomicI64::new(0),
            peak: AtomicI64::new(0),
            resident: AtomicI64::new(0),
            measure_process: AtomicBool::new(false),
            high_watermark: high_watermark.min(i64::MAX as u64) as i64,
            blocked: AtomicBool::new(false),
            state: watch::channel(false).0,
            flip: parking_lot::Mutex::new(()),
        }
    }

    /// Records a change in held bytes and flips the alarm on crossing the
    /// mark. The alarm clears below 90 % of the mark, so it does not flap
    /// with every message around it.
    pub(crate) fn add(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let used = self.used.fetch_add(delta, Ordering::Relaxed) + delta;
        if used > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(used, Ordering::Relaxed);
        }
        self.update_alarm(used);
    }

    /// Flips the alarm if the memory in use (counted bytes or, if higher,
    /// the last resident sample) is on the other side of the mark.
    fn update_alarm(&self, used: i64) {
        let level = used.max(self.resident.load(Ordering::Relaxed));
        if self.should_block(level) == self.blocked.load(Ordering::Acquire) {
            return;
        }
        // Threads adding and removing at once could otherwise leave the
        // flag and the watch disagreeing: publishers were then told to wait
        // for a state that was already "clear" and never stopped.
        let _flip = self.flip.lock();
        let used = self.used.load(Ordering::Relaxed);
        let resident = self.resident.load(Ordering::Relaxed);
        let over = self.should_block(used.max(resident));
        if over == self.blocked.load(Ordering::Acquire) {
            return;
        }
        self.blocked.store(over, Ordering::Release);
        self.state.send_replace(over);
        if over {
            tracing::warn!(
                used,
                resident,
                high_watermark = self.high_watermark,
                "memory alarm set: blocking publishers"
            );
        } else {
            tracing::info!(
                used,
                resident,
                "memory alarm cleared: unblocking publishers"
            );
        }
    }

    /// Makes the process's resident memory count against the mark: for a
    /// broker that is its own process. Inside another (a test), its memory
    /// is not the broker's, and only counted bytes drive the alarm.
    pub(crate) fn measure_process(&self) {
        self.measure_process.store(true, Ordering::Relaxed);
    }

    /// Records a sample of the process's resident memory.
    fn set_resident(&self, bytes: i64) {
        self.resident.store(bytes, Ordering::Relaxed);
        self.update_alarm(self.used());
    }

    fn should_block(&self, used: i64) -> bool {
        if self.blocked.load(Ordering::Acquire) {
            used > self.high_watermark / 10 * 9
        } else {
            used > self.high_watermark
        }
    }

    /// Bytes counted as held on clients' behalf.
    pub(crate) fn used(&self) -> i64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The most held since the last call (at least what is held now).
    fn take_peak(&self) -> i64 {
        let used = self.used();
        self.peak.swap(used, Ordering::Relaxed).max(used)
    }

    #[inline]
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

/// Bytes held for one client outside the queues (a body still arriving, a
/// transaction's publishes), counted in the gauge until given back or
/// dropped, so a closed channel or connection always gives them back.
pub(crate) struct Held {
    gauge: Arc<MemoryGauge>,
    bytes: i64,
}

impl Held {
    pub(crate) fn new(gauge: &Arc<MemoryGauge>) -> Held {
        Held {
            gauge: gauge.clone(),
            bytes: 0,
        }
    }

    pub(crate) fn add(&mut self, bytes: usize) {
        let bytes = bytes as i64;
        self.bytes += bytes;
        self.gauge.add(bytes);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.add(-self.bytes);
    }
}

/// The memory a watermark given as a fraction refers to: the machine's
/// RAM, or the cgroup's limit when it is lower (a container).
pub(crate) fn total_memory() -> u64 {
    // SAFETY: sysconf only reads system constants.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ram = (pages.max(0) as u64).saturating_mul(page.max(0) as u64);
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|path| std::fs::read_to_string(path).ok())
    .filter_map(|text| text.trim().parse::<u64>().ok())
    .min();
    match cgroup {
        Some(limit) if limit > 0 && (ram == 0 || limit < ram) => limit,
        _ => ram,
    }
}

/// Resident bytes of this process (None where /proc is not available).
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64;
    Some(pages.saturating_mul(page))
}

/// Samples the process's resident memory into the gauge (once asked to,
/// see `MemoryGauge::measure_process`) and gives freed memory back to the
/// OS (see `Monitor`).
pub(crate) fn start_monitor(gauge: std::sync::Weak<MemoryGauge>) {
    let _ = std::thread::Builder::new()
        .name("leveret-memory".into())
        .spawn(move || {
            let mut monitor = Monitor::default();
            loop {
                std::thread::sleep(SAMPLE_EVERY);
                let Some(gauge) = gauge.upgrade() else { return };
                monitor.tick(&gauge);
            }
        });
}

/// Gives memory freed by drained queues and closed clients back to the OS.
///
/// glibc's malloc keeps freed memory in per-thread arenas, so after a spike
/// of queued messages is consumed the process would stay at its peak size
/// (and, measured, keep the alarm on). The monitor trims once counted bytes
/// fell well below what they were, and, while the alarm is on, whenever
/// resident memory is well above the counted bytes (memory the allocator
/// may be holding after uncounted buffers were freed).
struct Monitor {
    /// Most counted bytes since the last trim.
    high: i64,
    last_peak_look: Instant,
    last_trim: Instant,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor {
            high: 0,
            last_peak_look: Instant::now(),
            last_trim: Instant::now(),
        }
    }
}

impl Monitor {
    /// How often counted bytes are compared with their peak.
    const PEAK_EVERY: Duration = Duration::from_secs(2);
    /// Trim only after this much was released: trimming walks every arena.
    const RELEASED: i64 = 32 * 1024 * 1024;
    /// Under the alarm, trim at most this often.
    const ALARM_TRIM_EVERY: Duration = Duration::from_secs(1);

    fn tick(&mut self, gauge: &MemoryGauge) {
        if self.last_peak_look.elapsed() >= Self::PEAK_EVERY {
            self.last_peak_look = Instant::now();
            self.high = self.high.max(gauge.take_peak());
            let used = gauge.used();
            if self.high - used >= Self::RELEASED && used < self.high / 2 {
                self.trim();
                self.high = used;
            }
        }
        if !gauge.measure_process.load(Ordering::Relaxed) {
            return;
        }
        let Some(mut resident) = resident_bytes() else {
            return;
        };
        if gauge.is_blocked()
            && resident - gauge.used() >= Self::RELEASED
            && self.last_trim.elapsed() >= Self::ALARM_TRIM_EVERY
        {
            self.trim();
            resident = resident_bytes().unwrap_or(resident);
        }
        gauge.set_resident(resident);
    }

    fn trim(&mut self) {
        self.last_trim = Instant::now();
        trim();
    }
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
