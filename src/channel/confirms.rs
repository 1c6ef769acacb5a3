//! Publisher confirms as a state machine, apart from the frames that carry
//! them, so its promise can be tested on its own: every publish is acked or
//! nacked exactly once, in order, and never acked before its message is on
//! disk.
//!
//! Acks go out with multiple=true up to the highest sequence number whose
//! message and every earlier one are settled: a persistent message waits
//! for the disk, and later ones wait behind it. A message a queue refused
//! (x-overflow reject-publish), or one the disk did not take, is nacked in
//! its turn.

use std::collections::VecDeque;

/// One confirm frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// basic.ack with multiple=true.
    AckUpTo(u64),
    /// basic.nack of one sequence number.
    Nack(u64),
}

#[derive(Default)]
pub(crate) struct Confirms {
    /// Last sequence number given to a publish.
    published: u64,
    /// Sequence numbers not settled with the others, in order: waiting for
    /// the disk, or to be nacked (`true`) once everything before is settled.
    pending: VecDeque<(u64, bool)>,
    /// Highest sequence number acked (or nacked) to the client.
    acked: u64,
    /// Sequence numbers nacked, for `confirmed`.
    nacked: u64,
}

impl Confirms {
    /// The next publish's sequence number. A message stored for durable
    /// queues (`on_disk`) waits for the disk; a refused one is a nack.
    pub(crate) fn next(&mut self, on_disk: bool, refused: bool) -> u64 {
        self.published += 1;
        let seq = self.published;
        if refused || on_disk {
            self.pending.push_back((seq, refused));
        }
        seq
    }

    /// The store wrote everything up to `seq` (`ok`), or did not (a nack
    /// for each message among them still waiting).
    pub(crate) fn persisted(&mut self, seq: u64, ok: bool) {
        let mut i = 0;
        while i < self.pending.len() && self.pending[i].0 <= seq {
            if !self.pending[i].1 {
                if ok {
                    self.pending.remove(i);
                    continue;
                }
                // A publisher must not believe a message is safe that
                // never reached the disk.
                self.pending[i].1 = true;
            }
            i += 1;
        }
    }

    /// Publishes acknowledged so far (acks sent, not nacks).
    pub(crate) fn confirmed(&self) -> u64 {
        self.acked - self.nacked
    }

    /// Hands `send` the confirms owed now, in order.
    pub(crate) fn settle(&mut self, mut send: impl FnMut(Confirm)) {
        while let Some(&(seq, true)) = self.pending.front() {
            self.pending.pop_front();
            if seq - 1 > self.acked {
                send(Confirm::AckUpTo(seq - 1));
            }
            send(Confirm::Nack(seq));
            self.nacked += 1;
            self.acked = seq;
        }
        let upto = self.pending.front().map_or(self.published, |(s, _)| s - 1);
        if upto > self.acked {
            self.acked = upto;
            send(Confirm::AckUpTo(upto));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A publish: stored for durable queues, refused by a queue.
        Publish { on_disk: bool, refused: bool },
        /// The store finished the oldest unfinished batch of disk writes,
        /// covering this many of the waiting messages, written or not.
        Persisted { count: usize, ok: bool },
        /// The channel sends what it owes (end of a read batch).
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (any::<bool>(), prop::bool::weighted(0.1))
                .prop_map(|(on_disk, refused)| Step::Publish { on_disk, refused }),
            2 => (1usize..4, prop::bool::weighted(0.8))
                .prop_map(|(count, ok)| Step::Persisted { count, ok }),
            2 => Just(Step::Settle),
        ]
    }

    proptest! {
        /// Every publish is confirmed exactly once, in order: refused and
        /// unwritten messages with a nack, the rest with an ack, and never
        /// an ack for a message still waiting for the disk.
        #[test]
        fn each_publish_is_confirmed_once_in_order(steps in prop::collection::vec(step(), 0..80)) {
            let mut c = Confirms::default();
            // What each seq should get (true: ack), and whether its write is done.
            let mut expected: Vec<Option<bool>> = vec![None];
            let mut waiting: VecDeque<u64> = VecDeque::new();
            let mut got: Vec<Option<bool>> = vec![None];
            let mut confirmed = 0u64;
            let mut record = |frame: Confirm, expected: &Vec<Option<bool>>, got: &mut Vec<Option<bool>>| {
                let (from, to, ack) = match frame {
                    Confirm::AckUpTo(n) => (confirmed + 1, n, true),
                    Confirm::Nack(n) => (n, n, false),
                };
                // In order: nothing skipped, nothing twice.
                assert_eq!(from, confirmed + 1, "{frame:?} after {confirmed}");
                assert!(to >= from, "{frame:?} confirms nothing");
                for seq in from..=to {
                    let want = expected[seq as usize];
                    assert!(want.is_some(), "seq {seq} confirmed while its write is not done");
                    assert_eq!(want, Some(ack), "seq {seq}");
                    got[seq as usize] = Some(ack);
                }
                confirmed = to;
            };
            for s in steps.iter().chain([Step::Persisted { count: usize::MAX, ok: true }, Step::Settle].iter()) {
                match *s {
                    Step::Publish { on_disk, refused } => {
                        let seq = c.next(on_disk, refused);
                        assert_eq!(seq as usize, expected.len());
                        got.push(None);
                        if refused {
                            expected.push(Some(false));
                        } else if on_disk {
                            expected.push(None);
                            waiting.push_back(seq);
                        } else {
                            expected.push(Some(true));
                        }
                    }
                    Step::Persisted { count, ok } => {
                        let n = count.min(waiting.len());
                        if n == 0 {
                            continue;
                        }
                        let mut last = 0;
                        for seq in waiting.drain(..n) {
                            expected[seq as usize] = Some(ok);
                            last = seq;
                        }
                        c.persisted(last, ok);
                    }
                    Step::Settle => c.settle(|f| record(f, &expected, &mut got)),
                }
            }
            prop_assert_eq!(&got, &expected, "every publish confirmed once with its outcome");
        }
    }
}
