//! Consumer groups on streams (single active consumer), as RabbitMQ's
//! `rabbit_stream_sac_coordinator` runs them: per (vhost, stream, group
//! name) one member is active. On a plain stream the first to join is
//! active and the next in line takes over when it leaves. On a super
//! stream's partition with index i the active member is `members[i % n]`
//! (members in the order they joined), so a group's members share the
//! partitions; when a join or a leave moves a partition, its active member
//! is first told to step down, and the new one is activated only once the
//! old one answered (it has stopped and stored its offset) — or left.
//!
//! Independent of any protocol: a member is told of changes through
//! [`ConsumerUpdates`], which its front end implements without blocking.
//! A [`Membership`] leaves its group when dropped, so a subscription that
//! ends, or a connection that dies, hands its partitions over.

use crate::hash::HashMap;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Groups one stream may have.
pub(crate) const MAX_GROUPS_PER_STREAM: usize = 1024;
/// Members one group may have.
pub(crate) const MAX_MEMBERS: usize = 1024;

/// How a member hears that it became active or stopped being so. Called
/// outside the groups' lock; it must not block (front ends queue a frame).
pub(crate) trait ConsumerUpdates: Send + Sync {
    fn consumer_update(&self, subscription: u8, active: bool);
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GroupKey {
    pub(crate) vhost: String,
    pub(crate) stream: String,
    pub(crate) name: String,
}

struct Member {
    owner: u64,
    subscription: u8,
    active: bool,
    /// Told to step down and not yet answered.
    stepping_down: bool,
    updates: Arc<dyn ConsumerUpdates>,
}

struct Group {
    /// The stream's place in its super stream; -1 for a plain stream.
    partition_index: i64,
    members: Vec<Member>,
}

/// Why a member was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    TooManyGroups,
    TooManyMembers,
}

#[derive(Default)]
pub(crate) struct StreamGroups {
    inner: Mutex<Groups>,
    next_owner: AtomicU64,
}

#[derive(Default)]
struct Groups {
    groups: HashMap<GroupKey, Group>,
    /// Groups per (vhost, stream).
    per_stream: HashMap<(String, String), usize>,
}

/// The notifications a change makes, sent once the lock is released.
type Effects = Vec<(Arc<dyn ConsumerUpdates>, u8, bool)>;

fn send(effects: Effects) {
    for (to, subscription, active) in effects {
        to.consumer_update(subscription, active);
    }
}

impl Group {
    /// The member a super stream partition's group should have active.
    fn chosen(&self) -> Option<usize> {
        if self.members.is_empty() {
            return None;
        }
        let n = self.members.len() as i64;
        Some(if self.partition_index < 0 {
            0
        } else {
            (self.partition_index % n) as usize
        })
    }

    fn active(&self) -> Option<usize> {
        self.members.iter().position(|m| m.active)
    }

    fn notify(&self, at: usize, active: bool, effects: &mut Effects) {
        let m = &self.members[at];
        effects.push((m.updates.clone(), m.subscription, active));
    }

    /// After a join or a leave: the active member steps down if another
    /// should be; with none active and none stepping down, the chosen one
    /// is activated.
    fn rebalance(&mut self, effects: &mut Effects) {
        if let Some(at) = self.active() {
            if self.partition_index >= 0 && self.chosen() != Some(at) {
                let m = &mut self.members[at];
                m.active = false;
                m.stepping_down = true;
                self.notify(at, false, effects);
            }
            return;
        }
        if self.members.iter().any(|m| m.stepping_down) {
            return;
        }
        if let Some(at) = self.chosen() {
            self.members[at].active = true;
            self.notify(at, true, effects);
        }
    }
}

impl StreamGroups {
    /// A new owner id (one per connection) for the members it registers.
    pub(crate) fn owner(&self) -> u64 {
        self.next_owner.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds subscription `subscription` of `owner` to group `key`; it is
    /// told through `updates` when it is active. Dropping the returned
    /// membership removes it.
    pub(crate) fn join(
        self: &Arc<Self>,
        key: GroupKey,
        partition_index: i64,
        owner: u64,
        subscription: u8,
        updates: Arc<dyn ConsumerUpdates>,
    ) -> Result<Membership, Refused> {
        let mut effects = Effects::new();
        {
            let mut inner = self.inner.lock();
            let Groups { groups, per_stream } = &mut *inner;
            let stream = (key.vhost.clone(), key.stream.clone());
            if !groups.contains_key(&key) {
                let count = per_stream.entry(stream).or_default();
                if *count >= MAX_GROUPS_PER_STREAM {
                    return Err(Refused::TooManyGroups);
                }
                *count += 1;
                groups.insert(
                    key.clone(),
                    Group {
                        partition_index,
                        members: Vec::new(),
                    },
                );
            }
            let group = groups.get_mut(&key).expect("inserted above");
            if group.members.len() >= MAX_MEMBERS {
                return Err(Refused::TooManyMembers);
            }
            // A newcomer is passive; whoever should be active is told.
            group.members.push(Member {
                owner,
                subscription,
                active: false,
                stepping_down: false,
                updates,
            });
            group.rebalance(&mut effects);
        }
        send(effects);
        Ok(Membership {
            groups: self.clone(),
            key,
            owner,
            subscription,
        })
    }

    fn leave(&self, key: &GroupKey, owner: u64, subscription: u8) {
        let mut effects = Effects::new();
        {
            let mut inner = self.inner.lock();
            let Groups { groups, per_stream } = &mut *inner;
            let Some(group) = groups.get_mut(key) else {
                return;
            };
            let Some(at) = group
                .members
                .iter()
                .position(|m| m.owner == owner && m.subscription == subscription)
            else {
                return;
            };
            group.members.remove(at);
            if group.members.is_empty() {
                groups.remove(key);
                let stream = (key.vhost.clone(), key.stream.clone());
                if let Some(count) = per_stream.get_mut(&stream) {
                    *count -= 1;
                    if *count == 0 {
                        per_stream.remove(&stream);
                    }
                }
            } else {
                // A member stepping down that leaves has stopped too: the
                // chosen one may start.
                group.rebalance(&mut effects);
            }
        }
        send(effects);
    }

    /// A member that was told to step down has stopped: the chosen member
    /// of `key` may become active.
    fn stepped_down(&self, key: &GroupKey, owner: u64, subscription: u8) {
        let mut effects = Effects::new();
        if let Some(group) = self.inner.lock().groups.get_mut(key) {
            for m in &mut group.members {
                if m.owner == owner && m.subscription == subscription {
                    m.stepping_down = false;
                }
            }
            group.rebalance(&mut effects);
        }
        send(effects);
    }

    /// Groups now, for tests and monitoring.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().groups.len()
    }
}

/// One subscription's place in a group; leaving it is dropping it.
pub(crate) struct Membership {
    groups: Arc<StreamGroups>,
    pub(crate) key: GroupKey,
    owner: u64,
    subscription: u8,
}

impl Membership {
    /// This member, told to step down, has stopped.
    pub(crate) fn stepped_down(&self) {
        self.groups
            .stepped_down(&self.key, self.owner, self.subscription);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.groups.leave(&self.key, self.owner, self.subscription);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u8, bool)>>);

    impl ConsumerUpdates for Log {
        fn consumer_update(&self, subscription: u8, active: bool) {
            self.0.lock().push((subscription, active));
        }
    }

    impl Log {
        fn take(&self) -> Vec<(u8, bool)> {
            std::mem::take(&mut *self.0.lock())
        }
    }

    fn key(stream: &str) -> GroupKey {
        GroupKey {
            vhost: "/".into(),
            stream: stream.into(),
            name: "g".into(),
        }
    }

    #[test]
    fn a_plain_stream_has_its_first_member_active_then_the_next() {
        let groups = Arc::new(StreamGroups::default());
        let (a, b) = (Arc::new(Log::default()), Arc::new(Log::default()));
        let ma = groups.join(key("s"), -1, 1, 0, a.clone()).unwrap();
        assert_eq!(a.take(), vec![(0, true)]);
        let mb = groups.join(key("s"), -1, 2, 0, b.clone()).unwrap();
        assert_eq!(b.take(), vec![]);
        drop(ma);
        assert_eq!(b.take(), vec![(0, true)]);
        drop(mb);
        assert_eq!(groups.len(), 0);
    }

    #[test]
    fn partitions_spread_over_members_and_move_back_when_one_leaves() {
        let groups = Arc::new(StreamGroups::default());
        let (a, b) = (Arc::new(Log::default()), Arc::new(Log::default()));
        let mut ma = Vec::new();
        for i in 0..3u8 {
            ma.push(
                groups
                    .join(key(&format!("p{i}")), i as i64, 1, i, a.clone())
                    .unwrap(),
            );
        }
        assert_eq!(a.take(), vec![(0, true), (1, true), (2, true)]);
        let mut mb = Vec::new();
        for i in 0..3u8 {
            mb.push(
                groups
                    .join(key(&format!("p{i}")), i as i64, 2, i, b.clone())
                    .unwrap(),
            );
        }
        // Partition 1 (1 % 2) goes to b: a steps down first.
        assert_eq!(a.take(), vec![(1, false)]);
        assert_eq!(b.take(), vec![]);
        ma[1].stepped_down();
        assert_eq!(b.take(), vec![(1, true)]);
        // b dies: its partition comes back to a.
        drop(mb);
        assert_eq!(a.take(), vec![(1, true)]);
    }

    #[test]
    fn a_member_that_leaves_while_stepping_down_hands_over() {
        let groups = Arc::new(StreamGroups::default());
        let (a, b) = (Arc::new(Log::default()), Arc::new(Log::default()));
        let ma = groups.join(key("p1"), 1, 1, 7, a.clone()).unwrap();
        let _mb = groups.join(key("p1"), 1, 2, 8, b.clone()).unwrap();
        assert_eq!(a.take(), vec![(7, true), (7, false)]);
        drop(ma);
        assert_eq!(b.take(), vec![(8, true)]);
    }

    #[test]
    fn groups_and_members_are_bounded() {
        let groups = Arc::new(StreamGroups::default());
        let log = Arc::new(Log::default());
        let mut kept = Vec::new();
        for i in 0..MAX_MEMBERS {
            kept.push(groups.join(key("s"), -1, i as u64, 0, log.clone()).unwrap());
        }
        assert_eq!(
            groups.join(key("s"), -1, 0, 1, log.clone()).err(),
            Some(Refused::TooManyMembers)
        );
        for i in 1..MAX_GROUPS_PER_STREAM {
            let k = GroupKey {
                name: format!("g{i}"),
                ..key("s")
            };
            kept.push(groups.join(k, -1, 0, 0, log.clone()).unwrap());
        }
        let k = GroupKey {
            name: "one-too-many".into(),
            ..key("s")
        };
        assert_eq!(
            groups.join(k, -1, 0, 0, log.clone()).err(),
            Some(Refused::TooManyGroups)
        );
        drop(kept);
        assert_eq!(groups.len(), 0);
    }
}
