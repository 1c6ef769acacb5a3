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

/// What a publish still waits for before its confirm.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    seq: u64,
    /// The persister's write of its message (cumulative: each report
    /// covers every earlier sequence number).
    disk: bool,
    /// Its stream appends (reported per sequence number: streams finish
    /// independently of each other and of the persister).
    streams: bool,
    /// To be nacked in its turn.
    nack: bool,
}

impl Waiting {
    fn settled(&self) -> bool {
        !self.disk && !self.streams
    }
}

#[derive(Default)]
pub(crate) struct Confirms {
    /// Last sequence number given to a publish.
    published: u64,
    /// Sequence numbers not settled with the others, in order: waiting for
    /// the disk or a stream, or to be nacked once everything before is
    /// settled.
    pending: VecDeque<Waiting>,
    /// Highest sequence number acked (or nacked) to the client.
    acked: u64,
    /// Sequence numbers nacked, for `confirmed`.
    nacked: u64,
}

impl Confirms {
    /// The next publish's sequence number. A message stored for durable
    /// queues (`on_disk`) waits for the disk, one appended to streams
    /// (`streams`) for their appends; a refused one is a nack.
    pub(crate) fn next(&mut self, on_disk: bool, streams: bool, refused: bool) -> u64 {
        self.published += 1;
        let seq = self.published;
        if refused || on_disk || streams {
            self.pending.push_back(Waiting {
                seq,
                disk: on_disk && !refused,
                streams: streams && !refused,
                nack: refused,
            });
        }
        seq
    }

    /// The store wrote everything up to `seq` (`ok`), or did not (a nack
    /// for each message among them still waiting).
    pub(crate) fn persisted(&mut self, seq: u64, ok: bool) {
        let mut i = 0;
        while i < self.pending.len() && self.pending[i].seq <= seq {
            let w = &mut self.pending[i];
            if w.disk {
                w.disk = false;
                // A publisher must not believe a message is safe that
                // never reached the disk.
                w.nack |= !ok;
                if w.settled() && !w.nack {
                    self.pending.remove(i);
                    continue;
                }
            }
            i += 1;
        }
    }

    /// The streams publish `seq` went to appended it (`ok`), or one did not.
    pub(crate) fn appended(&mut self, seq: u64, ok: bool) {
        let Ok(i) = self.pending.binary_search_by_key(&seq, |w| w.seq) else {
            return;
        };
        let w = &mut self.pending[i];
        w.streams = false;
        w.nack |= !ok;
        if w.settled() && !w.nack {
            self.pending.remove(i);
        }
    }

    /// Publishes not acked or nacked to the publisher yet.
    pub(crate) fn unconfirmed(&self) -> u64 {
        self.published - self.acked
    }

    /// Publishes acknowledged so far (acks sent, not nacks).
    pub(crate) fn confirmed(&self) -> u64 {
        self.acked - self.nacked
    }

    /// Hands `send` the confirms owed now, in order.
    pub(crate) fn settle(&mut self, mut send: impl FnMut(Confirm)) {
        // A nack goes out in its turn even while a write is still under
        // way: the publisher must not count on that message either way.
        while let Some(&Waiting {
            seq, nack: true, ..
        }) = self.pending.front()
        {
            self.pending.pop_front();
            if seq - 1 > self.acked {
                send(Confirm::AckUpTo(seq - 1));
            }
            send(Confirm::Nack(seq));
            self.nacked += 1;
            self.acked = seq;
        }
        let upto = self.pending.front().map_or(self.published, |w| w.seq - 1);
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
        /// A publish: stored for durable queues, appended to streams,
        /// refused by a queue.
        Publish {
            on_disk: bool,
            streams: bool,
            refused: bool,
        },
        /// The store finished the oldest unfinished batch of disk writes,
        /// covering this many of the waiting messages, written or not.
        Persisted { count: usize, ok: bool },
        /// The streams of one publish (any of those waiting: streams
        /// finish out of order) appended it, or failed to.
        Appended { pick: usize, ok: bool },
        /// The channel sends what it owes (end of a read batch).
        Settle,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (any::<bool>(), any::<bool>(), prop::bool::weighted(0.1))
                .prop_map(|(on_disk, streams, refused)| Step::Publish { on_disk, streams, refused }),
            2 => (1usize..4, prop::bool::weighted(0.8))
                .prop_map(|(count, ok)| Step::Persisted { count, ok }),
            2 => (any::<usize>(), prop::bool::weighted(0.8))
                .prop_map(|(pick, ok)| Step::Appended { pick, ok }),
            2 => Just(Step::Settle),
        ]
    }

    /// The model's view of one publish.
    #[derive(Debug, Clone, Copy, Default)]
    struct Model {
        disk: bool,
        streams: bool,
        failed: bool,
    }

    impl Model {
        /// What its confirm must be, once known: a nack as soon as any
        /// part failed, an ack only when every part is done.
        fn outcome(&self) -> Option<bool> {
            if self.failed {
                Some(false)
            } else if !self.disk && !self.streams {
                Some(true)
            } else {
                None
            }
        }
    }

    proptest! {
        /// Every publish is confirmed exactly once, in order: refused and
        /// unwritten messages with a nack, the rest with an ack, and never
        /// an ack for a message still waiting for the disk or a stream.
        #[test]
        fn each_publish_is_confirmed_once_in_order(steps in prop::collection::vec(step(), 0..80)) {
            let mut c = Confirms::default();
            let mut model: Vec<Model> = vec![Model::default()];
            let mut on_disk: VecDeque<u64> = VecDeque::new();
            let mut on_streams: Vec<u64> = Vec::new();
            let mut got: Vec<Option<bool>> = vec![None];
            let mut confirmed = 0u64;
            let mut record = |frame: Confirm, model: &Vec<Model>, got: &mut Vec<Option<bool>>| {
                let (from, to, ack) = match frame {
                    Confirm::AckUpTo(n) => (confirmed + 1, n, true),
                    Confirm::Nack(n) => (n, n, false),
                };
                // In order: nothing skipped, nothing twice.
                assert_eq!(from, confirmed + 1, "{frame:?} after {confirmed}");
                assert!(to >= from, "{frame:?} confirms nothing");
                for seq in from..=to {
                    let want = model[seq as usize].outcome();
                    assert!(want.is_some(), "seq {seq} confirmed while its write is not done");
                    assert_eq!(want, Some(ack), "seq {seq}");
                    got[seq as usize] = Some(ack);
                }
                confirmed = to;
            };
            let finish = [
                Step::Persisted { count: usize::MAX, ok: true },
                Step::Appended { pick: usize::MAX, ok: true },
                Step::Settle,
            ];
            for s in steps.iter().chain(finish.iter()) {
                match *s {
                    Step::Publish { on_disk: d, streams, refused } => {
                        let seq = c.next(d, streams, refused);
                        assert_eq!(seq as usize, model.len());
                        got.push(None);
                        model.push(Model { disk: d && !refused, streams: streams && !refused, failed: refused });
                        if d && !refused {
                            on_disk.push_back(seq);
                        }
                        if streams && !refused {
                            on_streams.push(seq);
                        }
                    }
                    Step::Persisted { count, ok } => {
                        let n = count.min(on_disk.len());
                        if n == 0 {
                            continue;
                        }
                        let mut last = 0;
                        for seq in on_disk.drain(..n) {
                            let m = &mut model[seq as usize];
                            m.disk = false;
                            m.failed |= !ok;
                            last = seq;
                        }
                        c.persisted(last, ok);
                    }
                    Step::Appended { pick, ok } => {
                        let picked: Vec<u64> = if pick == usize::MAX {
                            std::mem::take(&mut on_streams)
                        } else if on_streams.is_empty() {
                            continue;
                        } else {
                            vec![on_streams.remove(pick % on_streams.len())]
                        };
                        for seq in picked {
                            let m = &mut model[seq as usize];
                            m.streams = false;
                            m.failed |= !ok;
                            c.appended(seq, ok);
                        }
                    }
                    Step::Settle => c.settle(|f| record(f, &model, &mut got)),
                }
            }
            let expected: Vec<Option<bool>> = model.iter().map(Model::outcome).collect();
            prop_assert_eq!(&got[1..], &expected[1..], "every publish confirmed once with its outcome");
        }
    }
}
