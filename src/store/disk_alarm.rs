//! The disk alarm: publishers are blocked while the data directory's file
//! system has less free space than `storage.disk_free_limit` (RabbitMQ's
//! free disk space alarm), or while the store cannot write (fail-stop
//! after a write or fsync error).
//!
//! Free space is looked at by a thread, more often the closer it is to the
//! limit, as RabbitMQ's disk monitor does. The same thread keeps a reserve
//! file in the data directory: a start on a completely full disk deletes
//! it, which gives sled the room it needs to open (it writes a few hundred
//! KiB whatever it holds), so the broker can start and consumers drain.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Bytes of the reserve file: room for sled to open (one log segment) and
/// for the first writes after a start on a full disk.
pub(crate) const RESERVE_BYTES: u64 = 4 << 20;
const RESERVE_FILE: &str = "disk-reserve";

/// RabbitMQ's bounds on the check interval, and the write rate it assumes
/// to decide how soon the limit could be reached.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(10);
const FASTEST_WRITE_BYTES_PER_SEC: u64 = 250 << 20;

pub(crate) struct DiskAlarm {
    dir: PathBuf,
    /// Free bytes below which publishers are blocked (0: never).
    limit: u64,
    free: AtomicU64,
    low: AtomicBool,
    /// Set while the store cannot write; why, for logs and health checks.
    failure: parking_lot::Mutex<Option<String>>,
    failed: AtomicBool,
    blocked: AtomicBool,
    /// `true` while the alarm is on; publishing connections wait on it.
    state: watch::Sender<bool>,
}

impl DiskAlarm {
    pub(crate) fn new(dir: &Path, limit: u64) -> DiskAlarm {
        DiskAlarm {
            dir: dir.to_owned(),
            limit,
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
            failure: parking_lot::Mutex::new(None),
            failed: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            state: watch::channel(false).0,
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    #[inline]
    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Acquire)
    }

    /// Free space is below the limit.
    pub(crate) fn is_low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    /// The store stopped writing after a failure.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the store stopped writing, while it does.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// The store could not write (`Some(why)`), or writes again (`None`).
    pub(crate) fn set_failed(&self, why: Option<String>) {
        let mut failure = self.failure.lock();
        self.failed.store(why.is_some(), Ordering::Release);
        *failure = why;
        self.update(&failure);
    }

    /// Looks at free space now; returns it (None: unknown).
    pub(crate) fn check(&self) -> Option<u64> {
        let free = free_bytes(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        let low = free < self.limit;
        if low != self.low.load(Ordering::Acquire) {
            let failure = self.failure.lock();
            self.low.store(low, Ordering::Release);
            if low {
                tracing::warn!(
                    free,
                    limit = self.limit,
                    "disk alarm set: free disk space below disk_free_limit, blocking publishers"
                );
            } else {
                tracing::info!(free, "disk alarm cleared: free disk space above the limit");
            }
            self.update(&failure);
        }
        Some(free)
    }

    /// Re-derives the alarm from `low` and `failed`; the caller holds the
    /// failure lock, which serialises flips so flag and watch agree.
    fn update(&self, _serialised: &Option<String>) {
        let on = self.low.load(Ordering::Acquire) || self.failed.load(Ordering::Acquire);
        if on != self.blocked.load(Ordering::Acquire) {
            self.blocked.store(on, Ordering::Release);
            self.state.send_replace(on);
        }
    }

    /// How long until the next look: sooner the closer free space is to
    /// the limit (RabbitMQ's disk monitor).
    fn interval(&self, free: Option<u64>) -> Duration {
        let Some(free) = free else {
            return MAX_INTERVAL;
        };
        let headroom = free.saturating_sub(self.limit);
        Duration::from_millis(headroom.saturating_mul(1000) / FASTEST_WRITE_BYTES_PER_SEC)
            .clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    /// Watches free space until the alarm is dropped, and puts the reserve
    /// back once there is room for it above the limit.
    pub(crate) fn start_monitor(alarm: std::sync::Weak<DiskAlarm>) {
        let _ = std::thread::Builder::new()
            .name("leveret-disk".into())
            .spawn(move || loop {
                let Some(a) = alarm.upgrade() else { return };
                let free = a.check();
                if free.is_some_and(|f| f >= a.limit.saturating_add(2 * RESERVE_BYTES)) {
                    restore_reserve(&a.dir);
                }
                let wait = a.interval(free);
                drop(a);
                std::thread::sleep(wait);
            });
    }
}

/// Deletes the reserve file when free space is short of it, so the start
/// has room. Called before the store is opened.
pub(crate) fn release_reserve_if_short(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if !path.exists() || free_bytes(dir).is_some_and(|f| f >= RESERVE_BYTES) {
        return;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            "disk nearly full: released the disk reserve to start"
        ),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot release the disk reserve")
        }
    }
}

/// Writes the reserve file if it is missing (real bytes: a sparse file
/// would reserve nothing).
fn restore_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if path.exists() {
        return;
    }
    let partial = dir.join(format!("{RESERVE_FILE}.tmp"));
    let result = (|| -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&partial)?;
        let zeros = vec![0u8; 64 << 10];
        for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
            f.write_all(&zeros)?;
        }
        f.sync_all()?;
        std::fs::rename(&partial, &path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        tracing::debug!(error = %e, "cannot write the disk reserve");
    }
}

/// Free bytes (for unprivileged users) on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we own, and the
    // path is a valid NUL-terminated string for the duration of the call.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        (libc::statvfs(c.as_ptr(), &mut s) == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
    }
}

/// Total memory of the machine in bytes (0 when unknown), for a limit
/// relative to RAM.
pub(crate) fn total_memory() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we own.
    unsafe {
        let mut s: libc::sysinfo = std::mem::zeroed();
        if libc::sysinfo(&mut s) == 0 {
            s.totalram as u64 * u64::from(s.mem_unit)
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_is_on_while_low_or_failed() {
        let dir = std::env::temp_dir();
        let a = DiskAlarm::new(&dir, u64::MAX);
        let rx = a.subscribe();
        a.check().expect("statvfs works on the temp dir");
        assert!(a.is_low() && a.is_blocked() && *rx.borrow());
        let a = DiskAlarm::new(&dir, 0);
        a.check();
        assert!(!a.is_blocked());
        a.set_failed(Some("No space left on device".into()));
        assert!(a.is_blocked() && *a.subscribe().borrow());
        a.set_failed(None);
        assert!(!a.is_blocked() && !*a.subscribe().borrow());
    }

    #[test]
    fn checks_sooner_near_the_limit() {
        let a = DiskAlarm::new(Path::new("/"), 50 << 20);
        assert_eq!(a.interval(Some(51 << 20)), MIN_INTERVAL);
        assert_eq!(a.interval(Some(1 << 40)), MAX_INTERVAL);
        assert_eq!(
            a.interval(Some((50 << 20) + (250 << 20))),
            Duration::from_secs(1)
        );
    }
}
