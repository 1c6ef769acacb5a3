//! What consumers check about every message: end-to-end latency, and that
//! nothing is lost, duplicated or reordered.
//!
//! Producers stamp each body: send time (ns since the run started), their
//! sequence number and their id. Each consumer keeps, per producer, a
//! bitmap of the sequence numbers it saw; merging the bitmaps of a queue's
//! consumers at the end shows duplicates and gaps without any sharing on
//! the hot path.

/// Bytes the stamp takes at the start of every body.
pub(crate) const STAMP: usize = 16;

pub(crate) fn stamp(body: &mut [u8], sent_ns: u64, seq: u32, producer: u16) {
    body[0..8].copy_from_slice(&sent_ns.to_be_bytes());
    body[8..12].copy_from_slice(&seq.to_be_bytes());
    body[12..14].copy_from_slice(&producer.to_be_bytes());
}

/// (sent_ns, seq, producer) from a stamped body.
pub(crate) fn read_stamp(body: &[u8]) -> Option<(u64, u32, u16)> {
    if body.len() < STAMP {
        return None;
    }
    Some((
        u64::from_be_bytes(body[0..8].try_into().ok()?),
        u32::from_be_bytes(body[8..12].try_into().ok()?),
        u16::from_be_bytes(body[12..14].try_into().ok()?),
    ))
}

#[derive(Default, Clone)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was set already.
    fn set(&mut self, i: u32) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let was = self.0[word] & bit != 0;
        self.0[word] |= bit;
        was
    }

    pub(crate) fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds `other`; returns how many bits were in both.
    pub(crate) fn merge(&mut self, other: &Bits) -> u64 {
        if other.0.len() > self.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        let mut both = 0;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            both += u64::from((*a & b).count_ones());
            *a |= b;
        }
        both
    }
}

/// One consumer's view of the messages it received.
#[derive(Default)]
pub(crate) struct Seen {
    /// Per producer: sequence numbers received, and the highest.
    pub per_producer: Vec<(Bits, Option<u32>)>,
    pub duplicated: u64,
    pub reordered: u64,
}

impl Seen {
    pub(crate) fn record(&mut self, producer: u16, seq: u32, redelivered: bool) {
        let p = producer as usize;
        if p >= self.per_producer.len() {
            self.per_producer.resize(p + 1, (Bits::default(), None));
        }
        let (bits, last) = &mut self.per_producer[p];
        let again = bits.set(seq);
        if again && !redelivered {
            self.duplicated += 1;
        } else if !again && last.is_some_and(|l| seq < l) && !redelivered {
            self.reordered += 1;
        }
        *last = Some(last.map_or(seq, |l| l.max(seq)));
    }
}

/// Percentiles of latencies in µs (sorts `v`).
pub(crate) fn percentiles(v: &mut [u32]) -> Option<[u32; 4]> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Some([at(0.50), at(0.95), at(0.99), v[v.len() - 1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut body = [0u8; 16];
        stamp(&mut body, 123_456_789, 42, 7);
        assert_eq!(read_stamp(&body), Some((123_456_789, 42, 7)));
        assert_eq!(read_stamp(&body[..15]), None);
    }

    #[test]
    fn duplicates_and_reorders_are_counted() {
        let mut s = Seen::default();
        for seq in [0, 1, 2, 2, 5, 4] {
            s.record(0, seq, false);
        }
        s.record(0, 1, true); // a redelivery is neither
        assert_eq!((s.duplicated, s.reordered), (1, 1));
        assert_eq!(s.per_producer[0].0.count(), 5);
    }

    #[test]
    fn merging_finds_messages_two_consumers_both_got() {
        let mut a = Seen::default();
        let mut b = Seen::default();
        for seq in 0..100 {
            if seq % 2 == 0 { &mut a } else { &mut b }.record(3, seq, false);
        }
        b.record(3, 10, false);
        let mut all = a.per_producer[3].0.clone();
        assert_eq!(all.merge(&b.per_producer[3].0), 1);
        assert_eq!(all.count(), 100);
    }

    #[test]
    fn percentiles_of_latencies() {
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentiles(&mut v), Some([51, 96, 100, 100]));
        assert_eq!(percentiles(&mut []), None);
    }
}
