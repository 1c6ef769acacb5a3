//! A priority queue's messages (`x-max-priority`): one FIFO lane per
//! priority, the highest non-empty lane first.
//!
//! Everything is held in memory (a priority queue is not paged out); for a
//! durable queue, persistent messages are also written to its index, as in
//! [`super::durable::DurableStore`], and read back in full after a restart.
//! Delivery is not in seq order here, so no delivered mark is kept: after a
//! restart, messages delivered before come back without `redelivered`.

use super::fail_stop::Unwritten;
use super::persister::{LoadRequest, Loaded, Op};
use super::QueueEvents;
use super::{DiskRef, Persistent, QueueStore, QueuedMessage, Receipt, Store};
use crate::message::Message;
use crate::protocol::properties::PropertiesView;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};

/// Where a durable priority queue's persistent messages are written.
pub(crate) struct PriorityDisk {
    pub(crate) store: Arc<Store>,
    pub(crate) queue: Weak<dyn QueueEvents>,
    pub(crate) queue_id: u32,
    /// Recovered messages not read back yet.
    pub(crate) on_disk: usize,
    /// The first seq after the recovered ones: later messages were pushed
    /// (and are held) here, so reading them back would deliver them twice.
    pub(crate) recovered_end: u64,
}

pub(crate) struct PriorityStore {
    lanes: Vec<VecDeque<QueuedMessage>>,
    len: usize,
    bytes: usize,
    body_bytes: u64,
    /// Persistent ones among them (a durable queue's only), beside `body_bytes`.
    persistent: Persistent,
    disk: Option<PriorityDisk>,
    loading: bool,
    deleted: bool,
}

impl PriorityStore {
    pub(crate) fn new(max_priority: u8, disk: Option<PriorityDisk>) -> PriorityStore {
        PriorityStore {
            lanes: (0..=max_priority).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            body_bytes: 0,
            persistent: Persistent::default(),
            disk,
            loading: false,
            deleted: false,
        }
    }

    fn lane(&self, msg: &QueuedMessage) -> usize {
        let priority = PropertiesView::scan(&msg.message.properties)
            .ok()
            .and_then(|v| v.priority)
            .unwrap_or(0);
        usize::from(priority).min(self.lanes.len() - 1)
    }

    fn add(&mut self, msg: &QueuedMessage) {
        self.len += 1;
        self.bytes += msg.message.size();
        self.body_bytes += msg.message.body.len() as u64;
        if self.disk.is_some() {
            self.persistent.add(&msg.message);
        }
    }

    fn take(&mut self, msg: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= msg.message.size();
        self.body_bytes -= msg.message.body.len() as u64;
        if self.disk.is_some() {
            self.persistent.sub(&msg.message);
        }
    }

    fn remove(&self, seq: u64, disk: DiskRef) {
        if let Some(d) = &self.disk {
            d.store.remove_entry(d.queue_id, seq, disk);
        }
    }

    /// Reads every recovered message back (once, on first use).
    fn load_recovered(&mut self) {
        let Some(d) = &self.disk else {
            return;
        };
        if d.on_disk == 0 || self.loading {
            return;
        }
        self.loading = true;
        d.store.send(Op::Load(LoadRequest {
            queue: d.queue.clone(),
            queue_id: d.queue_id,
            from: 0,
            until: d.recovered_end,
            max_bytes: usize::MAX,
            generation: 0,
        }));
    }
}

impl QueueStore for PriorityStore {
    fn push(&mut self, mut msg: QueuedMessage) {
        if let (Some(d), true) = (&self.disk, msg.message.persistent) {
            if let Some(msg_id) = msg.message.stored() {
                let disk = DiskRef { msg_id, flags: 0 };
                msg.disk = Some(disk);
                d.store.write_entry(d.queue_id, &msg, disk);
            }
        }
        self.add(&msg);
        let lane = self.lane(&msg);
        self.lanes[lane].push_back(msg);
    }

    fn requeue(&mut self, msg: QueuedMessage) {
        self.add(&msg);
        let lane = self.lane(&msg);
        let at = self.lanes[lane].partition_point(|m| m.seq < msg.seq);
        self.lanes[lane].insert(at, msg);
    }

    fn pop(&mut self) -> Option<QueuedMessage> {
        let msg = self.lanes.iter_mut().rev().find_map(|l| l.pop_front());
        match &msg {
            Some(m) => self.take(m),
            None => self.load_recovered(),
        }
        msg
    }

    fn unpop(&mut self, msg: QueuedMessage) {
        self.add(&msg);
        let lane = self.lane(&msg);
        self.lanes[lane].push_front(msg);
    }

    fn len(&self) -> usize {
        self.len + self.disk.as_ref().map_or(0, |d| d.on_disk)
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// The highest non-empty lane's first message: at most one look per
    /// lane, read by the management API, never on the publish path.
    fn head(&self) -> Option<&QueuedMessage> {
        self.lanes.iter().rev().find_map(VecDeque::front)
    }

    fn purge(&mut self) -> usize {
        let count = self.len();
        let stored: Vec<(u64, DiskRef)> = self
            .lanes
            .iter_mut()
            .flat_map(|lane| lane.drain(..))
            .filter_map(|m| m.disk.map(|d| (m.seq, d)))
            .collect();
        for (seq, disk) in stored {
            self.remove(seq, disk);
        }
        if let Some(d) = &mut self.disk {
            if d.on_disk > 0 && !self.loading {
                // Nothing was read back yet: every entry is a ready message.
                d.store.send(Op::RemoveFrom {
                    queue_id: d.queue_id,
                    from: 0,
                });
                d.on_disk = 0;
            }
        }
        self.len = 0;
        self.bytes = 0;
        self.body_bytes = 0;
        self.persistent = Persistent::default();
        count
    }

    fn delivered(&mut self, receipt: Receipt, no_ack: bool) {
        if let (Some(disk), true) = (receipt.disk, no_ack) {
            self.remove(receipt.seq, disk);
        }
    }

    fn acked(&mut self, receipt: Receipt) {
        if let (Some(disk), false) = (receipt.disk, self.deleted) {
            self.remove(receipt.seq, disk);
        }
    }

    fn refused(&mut self, message: &Message) {
        if let Some(d) = &self.disk {
            d.store.release_refused(message);
        }
    }

    fn delete(&mut self) {
        self.purge_memory();
        if let Some(d) = &mut self.disk {
            d.on_disk = 0;
        }
        self.deleted = true;
    }

    fn loaded(&mut self, loaded: Loaded) {
        self.loading = false;
        if let Some(d) = &mut self.disk {
            // One read takes every recovered message: none is left on disk,
            // and a second read would deliver them again.
            d.on_disk = 0;
        }
        if self.deleted {
            return;
        }
        for msg in loaded.messages {
            self.requeue(msg);
        }
    }

    fn awaiting_disk(&self) -> bool {
        self.len == 0 && self.disk.as_ref().is_some_and(|d| d.on_disk > 0)
    }

    fn persistent(&self) -> Persistent {
        self.persistent
    }

    fn refuses_persistent(&self) -> bool {
        self.disk
            .as_ref()
            .is_some_and(|d| d.store.disk_alarm().is_failed())
    }

    fn forget_unwritten(&mut self, unwritten: &[Unwritten]) -> usize {
        let before = self.len;
        for lane in 0..self.lanes.len() {
            let mut lane_msgs = std::mem::take(&mut self.lanes[lane]);
            lane_msgs.retain(|m| {
                let gone = unwritten.binary_search_by_key(&m.seq, |u| u.1).is_ok();
                if gone {
                    self.take(m);
                }
                !gone
            });
            self.lanes[lane] = lane_msgs;
        }
        before - self.len
    }
}

impl PriorityStore {
    fn purge_memory(&mut self) {
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.len = 0;
        self.bytes = 0;
        self.body_bytes = 0;
        self.persistent = Persistent::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::basic::{gen_properties, AMQPProperties};
    use bytes::Bytes;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use std::cmp::Reverse;

    /// Raw basic properties with `priority` set (or absent).
    fn props(priority: Option<u8>) -> Bytes {
        let mut p = AMQPProperties::default();
        if let Some(priority) = priority {
            p = p.with_priority(priority);
        }
        Bytes::from(cookie_factory::gen_simple(gen_properties(&p), Vec::new()).unwrap())
    }

    fn msg(seq: u64, priority: Option<u8>, body: usize) -> QueuedMessage {
        QueuedMessage::new(
            seq,
            Arc::new(Message::new(
                String::new(),
                String::new(),
                props(priority),
                Bytes::from(vec![0u8; body]),
                false,
            )),
        )
    }

    /// A ready message as the reference model sees it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Ref {
        seq: u64,
        lane: u8,
        size: usize,
        body: usize,
    }

    /// The naive reference: a flat list; the head is the message of the
    /// highest lane with the lowest seq.
    #[derive(Default)]
    struct Model {
        max: u8,
        ready: Vec<Ref>,
    }

    impl Model {
        fn new(max: u8) -> Model {
            Model {
                max,
                ready: Vec::new(),
            }
        }

        fn entry(&self, m: &QueuedMessage, priority: Option<u8>) -> Ref {
            Ref {
                seq: m.seq,
                lane: priority.unwrap_or(0).min(self.max),
                size: m.message.properties.len() + m.message.body.len(),
                body: m.message.body.len(),
            }
        }

        fn head(&self) -> Option<usize> {
            (0..self.ready.len()).min_by_key(|&i| (Reverse(self.ready[i].lane), self.ready[i].seq))
        }

        fn pop(&mut self) -> Option<Ref> {
            self.head().map(|i| self.ready.remove(i))
        }

        /// Delivery order of everything ready.
        fn order(&self) -> Vec<u64> {
            let mut all = self.ready.clone();
            all.sort_by_key(|r| (Reverse(r.lane), r.seq));
            all.iter().map(|r| r.seq).collect()
        }

        fn bytes(&self) -> usize {
            self.ready.iter().map(|r| r.size).sum()
        }

        fn body_bytes(&self) -> u64 {
            self.ready.iter().map(|r| r.body as u64).sum()
        }
    }

    fn check_counts(s: &PriorityStore, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(s.len(), model.ready.len());
        prop_assert_eq!(s.is_empty(), model.ready.is_empty());
        prop_assert_eq!(s.bytes(), model.bytes());
        prop_assert_eq!(s.body_bytes(), model.body_bytes());
        Ok(())
    }

    /// Pops everything, checking each message against the model.
    fn drain(s: &mut PriorityStore, model: &mut Model) -> Result<(), TestCaseError> {
        while let Some(m) = s.pop() {
            let want = model.pop();
            prop_assert_eq!(Some(m.seq), want.map(|r| r.seq));
            check_counts(s, model)?;
        }
        prop_assert!(model.ready.is_empty(), "store ran dry before the model");
        check_counts(s, model)
    }

    /// Fisher-Yates driven by proptest indices (shrinks towards no change).
    fn shuffle<T>(v: &mut [T], picks: &[Index]) {
        if picks.is_empty() {
            return;
        }
        for i in (1..v.len()).rev() {
            let j = picks[i % picks.len()].index(i + 1);
            v.swap(i, j);
        }
    }

    fn max_priority() -> impl Strategy<Value = u8> {
        prop_oneof![4 => 0u8..=10, 1 => Just(255u8), 1 => any::<u8>()]
    }

    /// Missing, within a typical max, or anything up to 255.
    fn priority() -> impl Strategy<Value = Option<u8>> {
        prop_oneof![
            Just(None),
            (0u8..=12).prop_map(Some),
            any::<u8>().prop_map(Some)
        ]
    }

    fn pushes() -> impl Strategy<Value = Vec<(Option<u8>, usize)>> {
        prop::collection::vec((priority(), 0usize..20), 0..80)
    }

    fn fill(max: u8, pushes: &[(Option<u8>, usize)]) -> (PriorityStore, Model) {
        let mut s = PriorityStore::new(max, None);
        let mut model = Model::new(max);
        for (seq, &(p, body)) in pushes.iter().enumerate() {
            let m = msg(seq as u64, p, body);
            model.ready.push(model.entry(&m, p));
            s.push(m);
        }
        (s, model)
    }

    #[test]
    fn highest_priority_first_fifo_within() {
        let mut s = PriorityStore::new(5, None);
        for (seq, p) in [
            (0, None),
            (1, Some(3)),
            (2, Some(9)),
            (3, Some(3)),
            (4, Some(0)),
        ] {
            s.push(msg(seq, p, 1));
        }
        // 9 counts as 5, missing as 0.
        let order: Vec<u64> = std::iter::from_fn(|| s.pop()).map(|m| m.seq).collect();
        assert_eq!(order, vec![2, 1, 3, 0, 4]);
        assert!(s.is_empty());
        assert_eq!((s.bytes(), s.body_bytes()), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Action {
        Push(Option<u8>, usize),
        Pop,
        PopUnpop,
        /// Pop up to n, then requeue them in a shuffled order.
        PopRequeue(usize, Vec<Index>),
        /// Pop up to n, push these, then requeue the popped ones shuffled.
        PopPushRequeue(usize, Vec<(Option<u8>, usize)>, Vec<Index>),
        Purge,
    }

    fn action() -> impl Strategy<Value = Action> {
        let picks = || prop::collection::vec(any::<Index>(), 0..8);
        prop_oneof![
            8 => (priority(), 0usize..20).prop_map(|(p, b)| Action::Push(p, b)),
            3 => Just(Action::Pop),
            2 => Just(Action::PopUnpop),
            2 => (0usize..12, picks()).prop_map(|(n, i)| Action::PopRequeue(n, i)),
            1 => (0usize..12, prop::collection::vec((priority(), 0usize..20), 0..6), picks())
                .prop_map(|(n, p, i)| Action::PopPushRequeue(n, p, i)),
            1 => Just(Action::Purge),
        ]
    }

    proptest! {
        /// Pops come highest priority first, FIFO within a priority; a
        /// priority above the max counts as the max, a missing one as 0.
        #[test]
        fn pops_follow_the_reference(max in max_priority(), pushes in pushes()) {
            let (mut s, mut model) = fill(max, &pushes);
            check_counts(&s, &model)?;
            drain(&mut s, &mut model)?;
            prop_assert!(s.pop().is_none());
        }

        /// Popping some and requeueing them in any order (with new
        /// messages published meanwhile) restores the exact order.
        #[test]
        fn requeue_in_any_order_restores_order(
            max in max_priority(),
            pushes in pushes(),
            take in 0usize..80,
            later in prop::collection::vec((priority(), 0usize..20), 0..10),
            picks in prop::collection::vec(any::<Index>(), 0..16),
        ) {
            let (mut s, mut model) = fill(max, &pushes);
            let mut taken: Vec<QueuedMessage> = (0..take).map_while(|_| s.pop()).collect();
            for m in &taken {
                prop_assert_eq!(model.pop().map(|r| r.seq), Some(m.seq));
            }
            for (i, &(p, body)) in later.iter().enumerate() {
                let m = msg((pushes.len() + i) as u64, p, body);
                model.ready.push(model.entry(&m, p));
                s.push(m);
            }
            let mut expected = taken.iter().map(|m| {
                let p = PropertiesView::scan(&m.message.properties).unwrap().priority;
                model.entry(m, p)
            }).collect::<Vec<_>>();
            model.ready.append(&mut expected);
            shuffle(&mut taken, &picks);
            for m in taken {
                s.requeue(m);
            }
            check_counts(&s, &model)?;
            let order: Vec<u64> = std::iter::from_fn(|| s.pop()).map(|m| m.seq).collect();
            prop_assert_eq!(order, model.order());
        }

        /// `unpop` right after `pop` puts the head back where it was, with
        /// the counts as before.
        #[test]
        fn unpop_after_pop_restores(max in max_priority(), pushes in pushes(), pops in 0usize..80) {
            let (mut s, mut model) = fill(max, &pushes);
            for _ in 0..pops {
                let Some(head) = s.pop() else { break };
                prop_assert_eq!(model.head().map(|i| model.ready[i].seq), Some(head.seq));
                s.unpop(head);
                check_counts(&s, &model)?;
                // The same head comes out again, then goes for good.
                let again = s.pop().map(|m| m.seq);
                prop_assert_eq!(again, model.pop().map(|r| r.seq));
                check_counts(&s, &model)?;
            }
            drain(&mut s, &mut model)?;
        }

        /// `purge` says how many were ready and leaves nothing.
        #[test]
        fn purge_returns_the_count_and_empties(max in max_priority(), pushes in pushes(), pops in 0usize..80) {
            let (mut s, mut model) = fill(max, &pushes);
            for _ in 0..pops {
                prop_assert_eq!(s.pop().map(|m| m.seq), model.pop().map(|r| r.seq));
            }
            prop_assert_eq!(s.purge(), model.ready.len());
            model.ready.clear();
            check_counts(&s, &model)?;
            prop_assert!(s.pop().is_none());
            prop_assert_eq!(s.purge(), 0);
            // Still usable afterwards.
            let m = msg(1_000, Some(max), 3);
            model.ready.push(model.entry(&m, Some(max)));
            s.push(m);
            check_counts(&s, &model)?;
            drain(&mut s, &mut model)?;
        }

        /// Any mix of operations: every pop matches the reference, and the
        /// counts match after every step.
        #[test]
        fn any_operations_match_the_reference(
            max in max_priority(),
            actions in prop::collection::vec(action(), 0..120),
        ) {
            let mut s = PriorityStore::new(max, None);
            let mut model = Model::new(max);
            let mut next_seq = 0u64;
            let mut push = |s: &mut PriorityStore, model: &mut Model, p: Option<u8>, body: usize| {
                let m = msg(next_seq, p, body);
                next_seq += 1;
                model.ready.push(model.entry(&m, p));
                s.push(m);
            };
            for action in actions {
                match action {
                    Action::Push(p, body) => push(&mut s, &mut model, p, body),
                    Action::Pop => {
                        prop_assert_eq!(s.pop().map(|m| m.seq), model.pop().map(|r| r.seq));
                    }
                    Action::PopUnpop => {
                        if let Some(m) = s.pop() {
                            prop_assert_eq!(model.head().map(|i| model.ready[i].seq), Some(m.seq));
                            s.unpop(m);
                        } else {
                            prop_assert!(model.ready.is_empty());
                        }
                    }
                    Action::PopRequeue(n, picks) => {
                        let mut taken: Vec<QueuedMessage> = (0..n).map_while(|_| s.pop()).collect();
                        for m in &taken {
                            prop_assert_eq!(model.pop().map(|r| r.seq), Some(m.seq));
                        }
                        shuffle(&mut taken, &picks);
                        for m in taken {
                            let p = PropertiesView::scan(&m.message.properties).unwrap().priority;
                            model.ready.push(model.entry(&m, p));
                            s.requeue(m);
                        }
                    }
                    Action::PopPushRequeue(n, pushes, picks) => {
                        let mut taken: Vec<QueuedMessage> = (0..n).map_while(|_| s.pop()).collect();
                        for m in &taken {
                            prop_assert_eq!(model.pop().map(|r| r.seq), Some(m.seq));
                        }
                        for (p, body) in pushes {
                            push(&mut s, &mut model, p, body);
                        }
                        shuffle(&mut taken, &picks);
                        for m in taken {
                            let p = PropertiesView::scan(&m.message.properties).unwrap().priority;
                            model.ready.push(model.entry(&m, p));
                            s.requeue(m);
                        }
                    }
                    Action::Purge => {
                        prop_assert_eq!(s.purge(), model.ready.len());
                        model.ready.clear();
                    }
                }
                check_counts(&s, &model)?;
                prop_assert_eq!(s.awaiting_disk(), false);
            }
            drain(&mut s, &mut model)?;
        }
    }
}
