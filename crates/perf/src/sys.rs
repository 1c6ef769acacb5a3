//! CPU time and resident memory from the OS, for the generator itself and
//! for the broker under test (Linux `/proc`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// This process's user + system CPU seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Another process's user + system CPU seconds, from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples the resident memory of a set of processes (a broker, or every
/// node of a cluster) every 100 ms and keeps the peak of their sum.
pub(crate) struct BrokerWatch {
    pub pids: Vec<u32>,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl BrokerWatch {
    /// `None` for no pids.
    pub(crate) fn start(pids: &[u32]) -> Option<BrokerWatch> {
        if pids.is_empty() {
            return None;
        }
        let pids = pids.to_vec();
        let total = |pids: &[u32]| pids.iter().filter_map(|&p| rss_kb(p)).sum::<u64>();
        let peak = Arc::new(AtomicU64::new(total(&pids)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, watched) = (peak.clone(), stop.clone(), pids.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(total(&watched), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Some(BrokerWatch { pids, peak, stop })
    }

    /// The processes' user + system CPU seconds, summed; `None` when one
    /// of them is gone (its time would be missing from the sum).
    pub(crate) fn cpu_seconds(&self) -> Option<f64> {
        self.pids.iter().map(|&p| cpu_seconds(p)).sum()
    }

    pub(crate) fn peak_rss_kb(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for BrokerWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some());
        assert!(rss_kb(me).unwrap() > 0);
        assert!(own_cpu_seconds() >= 0.0);
    }
}
