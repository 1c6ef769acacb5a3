//! Everything other than the socket that wakes a connection's reader loop:
//! the end of the connection (broker shutdown, close via management), the
//! heartbeat deadline and the periodic consumer-timeout check.
//!
//! The reader loop waits for the socket and for these at once, and it wakes
//! for every read. Polling the three each time would re-register two watch
//! waiters and two timers per read, a tenth of the broker's work per message
//! at low rates; so they sit behind one waker of their own and are polled
//! only after that waker was woken.

use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

pub(super) enum Interrupt {
    /// The connection must end; the reason to give the client.
    Ended(String),
    /// The heartbeat timer fired: look at when the last read was.
    HeartbeatDue,
    /// Time to look for deliveries unacknowledged past the consumer timeout.
    AckCheckDue,
}

type Ended = Pin<Box<dyn Future<Output = String> + Send>>;

pub(super) struct Interrupts {
    ended: Ended,
    heartbeat: Pin<Box<Sleep>>,
    ack_check: Pin<Box<Sleep>>,
    ack_period: Duration,
    gate: Arc<Gate>,
    inner_waker: Waker,
}

/// Remembers whether the inner futures were woken since they were polled,
/// and whom to wake in turn.
struct Gate {
    woken: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(waker) = self.outer.lock().as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Completes, with the reason to give the client, when the broker shuts
/// down or the connection is closed via management.
pub(super) async fn ended(
    mut shutdown: watch::Receiver<bool>,
    mut close_rx: watch::Receiver<Option<String>>,
) -> String {
    tokio::select! {
        _ = shutdown.changed() => "broker forced connection closure with reason 'shutdown'".to_string(),
        _ = close_rx.changed() => {
            close_rx.borrow().clone().unwrap_or_else(|| "closed via management".into())
        }
    }
}

impl Interrupts {
    pub(super) fn new(
        shutdown: watch::Receiver<bool>,
        close_rx: watch::Receiver<Option<String>>,
        heartbeat_at: Instant,
        ack_period: Duration,
    ) -> Self {
        let ended = Box::pin(ended(shutdown, close_rx));
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            outer: Mutex::new(None),
        });
        Interrupts {
            ended,
            heartbeat: Box::pin(tokio::time::sleep_until(heartbeat_at)),
            ack_check: Box::pin(tokio::time::sleep(ack_period)),
            ack_period,
            inner_waker: Waker::from(gate.clone()),
            gate,
        }
    }

    /// Moves the heartbeat timer to `at`.
    pub(super) fn heartbeat_at(&mut self, at: Instant) {
        self.heartbeat.as_mut().reset(at);
        self.gate.woken.store(true, Ordering::Release);
    }

    pub(super) async fn next(&mut self) -> Interrupt {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Interrupt> {
        {
            let mut outer = self.gate.outer.lock();
            if !outer.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *outer = Some(cx.waker().clone());
            }
        }
        if !self.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut inner = Context::from_waker(&self.inner_waker);
        if let Poll::Ready(reason) = self.ended.as_mut().poll(&mut inner) {
            self.ended = Box::pin(std::future::pending());
            return Poll::Ready(Interrupt::Ended(reason));
        }
        if self.heartbeat.as_mut().poll(&mut inner).is_ready() {
            // The loop resets the timer; until then there is nothing new.
            self.gate.woken.store(true, Ordering::Release);
            return Poll::Ready(Interrupt::HeartbeatDue);
        }
        if self.ack_check.as_mut().poll(&mut inner).is_ready() {
            let next = Instant::now() + self.ack_period;
            self.ack_check.as_mut().reset(next);
            self.gate.woken.store(true, Ordering::Release);
            return Poll::Ready(Interrupt::AckCheckDue);
        }
        Poll::Pending
    }
}
