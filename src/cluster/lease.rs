//! The etcd lease that everything this node keeps in etcd is bound to, and
//! the local deadline that fences a leader before etcd can expire it.
//!
//! The deadline is counted from when a keepalive request was *sent*: etcd
//! renews on receipt, later, so its expiry is never earlier than ours. A
//! safety margin covers clock-rate differences between the machines. The
//! clock is monotonic and keeps running while the process is stopped
//! (SIGSTOP), so a node that wakes up after its lease ran out sees at once
//! that it may no longer serve.

use etcd_client::Client;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// When this node's lease may still be assumed alive, as nanoseconds since
/// [`epoch`]; 0: not before any renewal.
#[derive(Default)]
pub(crate) struct LeaseClock {
    deadline_ns: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

impl LeaseClock {
    /// The lease is (still) held: now is before the deadline.
    pub(crate) fn valid(&self) -> bool {
        since_epoch(Instant::now()) < self.deadline_ns.load(Ordering::Acquire)
    }

    pub(crate) fn deadline(&self) -> Instant {
        epoch() + Duration::from_nanos(self.deadline_ns.load(Ordering::Acquire))
    }

    /// A renewal sent at `sent` was granted `ttl`.
    fn renewed(&self, sent: Instant, ttl: Duration) {
        let until = since_epoch(sent + ttl.saturating_sub(margin(ttl)));
        self.deadline_ns.fetch_max(until, Ordering::AcqRel);
    }

    /// The lease is given up: invalid from now on.
    pub(crate) fn expire(&self) {
        self.deadline_ns.store(0, Ordering::Release);
    }

    /// Completes once the deadline has passed (and no renewal moved it).
    pub(crate) async fn expired(&self) {
        loop {
            tokio::time::sleep_until(self.deadline()).await;
            if !self.valid() {
                return;
            }
        }
    }
}

/// How long before etcd's expiry this node stops counting on its lease.
fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(300))
}

/// Grants a lease of `ttl` and counts it as renewed from the request.
pub(crate) async fn grant(
    client: &mut Client,
    ttl: Duration,
    clock: &LeaseClock,
) -> Result<i64, etcd_client::Error> {
    let sent = Instant::now();
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await?;
    clock.renewed(sent, Duration::from_secs(lease.ttl().max(0) as u64));
    info!(
        lease = lease.id(),
        ttl_s = lease.ttl(),
        "cluster: etcd lease granted"
    );
    Ok(lease.id())
}

/// Keeps `lease` alive (a renewal every third of `ttl`) until it is lost:
/// etcd says it expired, or no renewal got through before the deadline.
pub(crate) async fn keep_alive(mut client: Client, lease: i64, ttl: Duration, clock: &LeaseClock) {
    let every = ttl / 3;
    let mut stream = None;
    loop {
        if !clock.valid() {
            warn!(lease, "cluster: etcd lease not renewed in time");
            return;
        }
        let sent = Instant::now();
        if stream.is_none() {
            match tokio::time::timeout(every, client.lease_keep_alive(lease)).await {
                Ok(Ok(s)) => stream = Some(s),
                Ok(Err(e)) => warn!(error = %e, "cluster: cannot open the lease keepalive"),
                Err(_) => warn!("cluster: opening the lease keepalive timed out"),
            }
        }
        if let Some((keeper, responses)) = &mut stream {
            let renewal = async {
                keeper.keep_alive().await?;
                responses.message().await
            };
            match tokio::time::timeout(every, renewal).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    clock.renewed(sent, Duration::from_secs(r.ttl() as u64));
                }
                Ok(Ok(Some(_))) => {
                    warn!(lease, "cluster: etcd lease expired");
                    clock.expire();
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    warn!(lease, "cluster: lease renewal failed; retrying");
                    stream = None;
                }
            }
        }
        tokio::time::sleep_until(sent + every).await;
    }
}
