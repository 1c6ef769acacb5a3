//! The hasher of the maps on the message path, and the hash super streams
//! route with.
//!
//! std's SipHash was about a tenth of the broker's instructions per
//! message (channel, exchange, queue, binding and consumer lookups).
//! foldhash is several times faster and, seeded per process like SipHash,
//! still keeps clients from choosing names that collide.

pub(crate) type RandomState = foldhash::quality::RandomState;
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
pub(crate) type DashMap<K, V> = dashmap::DashMap<K, V, RandomState>;

/// Super-stream routing by hash, as RabbitMQ's stream clients route.
// Not called yet: super streams route through it once they exist.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod super_stream {
    /// The seed RabbitMQ's stream clients hash super-stream routing keys with
    /// (the Java client's `HashUtils.MURMUR3`, the Rust client's
    /// `HashRoutingMurmurStrategy`).
    pub(crate) const SEED: u32 = 104_729;

    /// The partition (an index into the super stream's partitions, in order)
    /// the stream clients route `routing_key` to: its UTF-8 octets hashed,
    /// then the unsigned remainder. `None` when there are no partitions.
    pub(crate) fn partition(routing_key: &[u8], partitions: u32) -> Option<u32> {
        murmur3_32(routing_key, SEED).checked_rem(partitions)
    }

    /// MurmurHash3, x86 32-bit.
    pub(crate) fn murmur3_32(data: &[u8], seed: u32) -> u32 {
        const C1: u32 = 0xcc9e_2d51;
        const C2: u32 = 0x1b87_3593;
        let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        let mut h = seed;
        let blocks = data.chunks_exact(4);
        let tail = blocks.remainder();
        for block in blocks {
            let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
            h = (h ^ mix(k))
                .rotate_left(13)
                .wrapping_mul(5)
                .wrapping_add(0xe654_6b64);
        }
        if !tail.is_empty() {
            let k = tail
                .iter()
                .rev()
                .fold(0u32, |k, &b| (k << 8) | u32::from(b));
            h ^= mix(k);
        }
        h ^= data.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn murmur3_matches_the_stream_clients() {
            // rabbitmq-stream-java-client's HashUtilsTest.
            for (key, hash) in [
                ("hello", 1_321_743_225),
                ("brave", 3_825_276_426),
                ("new", 2_970_740_106),
                ("world", 2_453_398_188),
            ] {
                assert_eq!(murmur3_32(key.as_bytes(), SEED), hash, "{key}");
            }
            for (key, hash) in [
                ("hello", 3_806_057_185),
                ("brave", 619_588_758),
                ("new", 1_483_300_585),
                ("world", 1_145_629_360),
            ] {
                assert_eq!(murmur3_32(key.as_bytes(), 42), hash, "{key}");
            }
            // Every tail length, and UTF-8 beyond ASCII (Python's mmh3).
            for (key, seed, hash) in [
                ("", 0, 0),
                ("", 1, 1_364_076_727),
                ("a", 0, 1_009_084_850),
                ("ab", 0, 2_613_040_991),
                ("abc", 0, 3_017_643_002),
                ("abcd", 0, 1_139_631_978),
                ("héllo wörld", SEED, 3_359_300_955),
            ] {
                assert_eq!(murmur3_32(key.as_bytes(), seed), hash, "{key:?}");
            }
        }

        #[test]
        fn routing_keys_land_where_the_stream_clients_send_them() {
            // rabbitmq-stream-java-client's HashRoutingStrategyTest: partitions
            // invoices-01, -02, -03.
            let expected = [2, 1, 2, 3, 1, 3, 1, 2, 1, 3];
            for (i, index) in (1..=10).zip(expected) {
                let key = format!("hello{i}");
                assert_eq!(partition(key.as_bytes(), 3), Some(index - 1), "{key}");
            }
            assert_eq!(partition(b"rk", 0), None);
        }
    }
}
