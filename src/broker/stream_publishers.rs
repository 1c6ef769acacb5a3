//! The stream protocol's publisher deduplication: for each stream, the
//! highest publishing id each named publisher (its "reference") had
//! accepted. A publish at or below it is a duplicate: confirmed, not
//! stored again, as osiris's writer sequences do.
//!
//! Held in memory for what is in flight (a retry can arrive before the
//! first try's confirm); what is on disk is also stored beside the stream
//! (`StreamQueue::set_publisher_sequence`), where a restarted broker
//! starts from.

use crate::hash::HashMap;
use parking_lot::Mutex;

/// References one stream remembers at most: each costs memory, and a
/// client chooses them.
pub(crate) const MAX_REFERENCES: usize = 10_000;

#[derive(Default)]
pub(crate) struct PublisherSequences(Mutex<HashMap<u32, HashMap<String, u64>>>);

impl PublisherSequences {
    /// The highest publishing id `reference` had accepted on stream
    /// `stream` (the stream's store id), if any.
    pub(crate) fn last(&self, stream: u32, reference: &str) -> Option<u64> {
        self.0.lock().get(&stream)?.get(reference).copied()
    }

    /// Whether `reference` may publish to `stream`: it is known, or there
    /// is room for one more.
    pub(crate) fn admits(&self, stream: u32, reference: &str) -> bool {
        let all = self.0.lock();
        all.get(&stream)
            .is_none_or(|refs| refs.contains_key(reference) || refs.len() < MAX_REFERENCES)
    }

    /// Runs `f` on the highest publishing id `reference` had accepted on
    /// `stream` (`stored` when this run of the broker has seen none: what
    /// the stream stored), under the lock, for one publish frame: `f`
    /// raises it past each id it accepts. A reference beyond
    /// [`MAX_REFERENCES`] is not remembered (`admits` refused it first).
    pub(crate) fn with<R>(
        &self,
        stream: u32,
        reference: &str,
        stored: Option<u64>,
        f: impl FnOnce(&mut Option<u64>) -> R,
    ) -> R {
        let mut all = self.0.lock();
        let refs = all.entry(stream).or_default();
        if let Some(last) = refs.get_mut(reference) {
            let mut seq = Some(*last);
            let r = f(&mut seq);
            *last = seq.unwrap_or(*last);
            return r;
        }
        let mut seq = stored;
        let r = f(&mut seq);
        if let (Some(s), true) = (seq, refs.len() < MAX_REFERENCES) {
            refs.insert(reference.to_string(), s);
        }
        r
    }

    /// A stream was deleted: its publishers are forgotten.
    pub(crate) fn forget(&self, stream: u32) {
        self.0.lock().remove(&stream);
    }
}
