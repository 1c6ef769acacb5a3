//! Wake-ups for queues at given times: message expiry at the head of a
//! queue, and unused queues expiring (`x-expires`). One thread keeps the
//! deadlines in a heap; queues decide what is due when woken.

use super::queue::Queue;
use parking_lot::{Condvar, Mutex};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: message expiry is wall-clock time,
/// as it is stored.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// [`now_ms`] as of the kernel's last tick (a few ms behind, never ahead):
/// what stamps a message's arrival in a queue, once per enqueue, where the
/// precise clock's conversions cost about 60 instructions per message.
#[cfg(target_os = "linux")]
pub(crate) fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return now_ms();
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_now_ms() -> u64 {
    now_ms()
}

struct Wakeup {
    at: u64,
    queue: Weak<Queue>,
}

impl PartialEq for Wakeup {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Wakeup {}
impl PartialOrd for Wakeup {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wakeup {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

#[derive(Default)]
struct Shared {
    heap: Mutex<BinaryHeap<Reverse<Wakeup>>>,
    changed: Condvar,
}

/// Schedules queue wake-ups; cheap to clone.
#[derive(Clone)]
pub(crate) struct Timers {
    shared: Arc<Shared>,
}

impl Timers {
    /// Starts the timer thread; it ends when every handle is dropped.
    pub(crate) fn start() -> Timers {
        let shared = Arc::new(Shared::default());
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("leveret-timers".into())
            .spawn(move || run(weak))
            .expect("spawn the timer thread");
        Timers { shared }
    }

    /// Wakes `queue` (calls [`Queue::on_timer`]) at `at` (ms since the epoch).
    pub(crate) fn wake_at(&self, at: u64, queue: Weak<Queue>) {
        let mut heap = self.shared.heap.lock();
        let earliest = heap.peek().is_none_or(|Reverse(w)| at < w.at);
        heap.push(Reverse(Wakeup { at, queue }));
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

// The timer thread: sleeping on its Condvar blocks no tokio worker.
#[allow(clippy::disallowed_methods)]
fn run(shared: Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut due = Vec::new();
        {
            let mut heap = shared.heap.lock();
            let now = now_ms();
            while heap.peek().is_some_and(|Reverse(w)| w.at <= now) {
                due.push(heap.pop().expect("peeked").0);
            }
            if due.is_empty() {
                // Sleep until the earliest deadline, or a while to notice
                // that the broker has gone.
                let wait = heap
                    .peek()
                    .map_or(1000, |Reverse(w)| w.at.saturating_sub(now).min(1000));
                shared
                    .changed
                    .wait_for(&mut heap, Duration::from_millis(wait));
            }
        }
        drop(shared);
        for w in due {
            if let Some(queue) = w.queue.upgrade() {
                queue.on_timer(w.at);
            }
        }
    }
}
