//! Single active consumer over the stream protocol: a subscription with
//! `single-active-consumer=true` and `name=<group>` joins the group of its
//! stream in `broker::stream_groups` (`super-stream=<name>` gives its
//! partition's index). It delivers only while active, and only once the
//! client answered the ConsumerUpdate that activated it (with where to
//! start). One told to step down stops delivering at once and, when the
//! client answers, lets the group activate the next member.

use super::connection::{Connection, MAX_REFERENCE};
use super::frame::{code, key, OffsetSpec, Out, Pair};
use super::subscribe::start_at;
use crate::broker::stream_groups::{ConsumerUpdates, GroupKey, Membership};
use crate::broker::super_stream;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::warn;

/// A subscription's part in its group.
pub(super) struct Sac {
    pub(super) membership: Membership,
    /// Where it asked to start at subscribe (for an update answered
    /// without an offset).
    offset: OffsetSpec,
    /// Active as last told to the client.
    active: bool,
    /// Active and the client answered: it may be sent chunks.
    pub(super) delivering: bool,
}

/// The changes the groups made for this connection's subscriptions, until
/// its task sends them: the latest per subscription (at most 256).
pub(super) struct GroupInbox {
    updates: Mutex<Vec<(u8, bool)>>,
    wake: Arc<Notify>,
}

impl GroupInbox {
    pub(super) fn new(wake: Arc<Notify>) -> GroupInbox {
        GroupInbox {
            updates: Mutex::new(Vec::new()),
            wake,
        }
    }
}

impl ConsumerUpdates for GroupInbox {
    fn consumer_update(&self, subscription: u8, active: bool) {
        let mut updates = self.updates.lock();
        updates.retain(|(s, _)| *s != subscription);
        updates.push((subscription, active));
        drop(updates);
        self.wake.notify_one();
    }
}

/// ConsumerUpdates sent and not answered: (subscription, active) by
/// correlation id, one per subscription.
#[derive(Default)]
pub(super) struct Pending {
    next: u32,
    sent: Vec<(u32, u8, bool)>,
}

impl Connection {
    /// The group a subscription with these properties joins: `Ok(None)`
    /// without single active consumer, PRECONDITION_FAILED without a name
    /// (RabbitMQ's check).
    pub(super) fn join_group(
        &self,
        id: u8,
        stream: &str,
        offset: OffsetSpec,
        properties: &[Pair<'_>],
    ) -> Result<Option<Sac>, u16> {
        let property = |k: &str| properties.iter().find(|(p, _)| *p == k).map(|(_, v)| *v);
        if property("single-active-consumer") != Some("true") {
            return Ok(None);
        }
        let Some(name) = property("name") else {
            warn!(
                subscription = id,
                "a single active consumer must have a name"
            );
            return Err(code::PRECONDITION_FAILED);
        };
        // The name is the group's offset reference: a longer one could
        // not store its offset, and the groups' keys stay small.
        if name.len() > MAX_REFERENCE {
            warn!(
                subscription = id,
                "a consumer group name is too long: {}",
                name.len()
            );
            return Err(code::PRECONDITION_FAILED);
        }
        let vhost = &self.session().vhost;
        let partition_index = property("super-stream")
            .and_then(|s| super_stream::partitions(vhost, s).ok())
            .and_then(|parts| parts.iter().position(|p| p == stream))
            .map_or(-1, |i| i as i64);
        let key = GroupKey {
            vhost: vhost.name.clone(),
            stream: stream.to_string(),
            name: name.to_string(),
        };
        let membership = self
            .broker
            .stream_groups
            .join(
                key,
                partition_index,
                self.group_owner,
                id,
                self.group_inbox.clone(),
            )
            .map_err(|e| {
                warn!(subscription = id, error = ?e, "consumer group refused");
                code::PRECONDITION_FAILED
            })?;
        Ok(Some(Sac {
            membership,
            offset,
            active: false,
            delivering: false,
        }))
    }

    /// Sends the ConsumerUpdates the groups asked for since the last look.
    pub(super) fn send_consumer_updates(&mut self) {
        let updates = std::mem::take(&mut *self.group_inbox.updates.lock());
        for (id, active) in updates {
            let Some(s) = self.subscriptions.get_mut(&id) else {
                continue;
            };
            s.stats.set_active(active);
            let Some(sac) = s.sac.as_mut() else {
                continue;
            };
            sac.active = active;
            // Active or not, nothing is sent until the client answered.
            sac.delivering = false;
            let pending = &mut self.pending_updates;
            pending.next = pending.next.wrapping_add(1);
            let corr = pending.next;
            pending.sent.retain(|(_, s, _)| *s != id);
            pending.sent.push((corr, id, active));
            self.outbox.push(|b| {
                Out::begin(b, key::CONSUMER_UPDATE, 1)
                    .u32(corr)
                    .u8(id)
                    .u8(u8::from(active));
            });
        }
    }

    /// The client answered a ConsumerUpdate: an activated subscription
    /// starts where it says (or where it asked at subscribe); one that
    /// stepped down lets its group move on.
    pub(super) async fn consumer_update_answered(&mut self, corr: u32, offset: Option<OffsetSpec>) {
        let sent = &mut self.pending_updates.sent;
        let Some(at) = sent.iter().position(|(c, _, _)| *c == corr) else {
            return;
        };
        let (_, id, active) = sent.remove(at);
        let Some(s) = self.subscriptions.get(&id) else {
            return;
        };
        let Some(sac) = &s.sac else {
            return;
        };
        if !active {
            if !sac.active {
                sac.membership.stepped_down();
            }
            return;
        }
        if !sac.active {
            return;
        }
        let spec = offset.unwrap_or(sac.offset);
        let Some(log) = s.queue.stream() else {
            return;
        };
        let next = match log.resolve(start_at(spec)).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(stream = %s.stream, error = %e, "cannot resolve a stream offset");
                return;
            }
        };
        if let Some(s) = self.subscriptions.get_mut(&id) {
            if let Some(sac) = s.sac.as_mut().filter(|sac| sac.active) {
                sac.delivering = true;
                s.set_next(next);
            }
        }
    }
}
