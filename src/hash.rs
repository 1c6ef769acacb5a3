//! The hasher of the maps on the message path.
//!
//! std's SipHash was about a tenth of the broker's instructions per
//! message (channel, exchange, queue, binding and consumer lookups).
//! foldhash is several times faster and, seeded per process like SipHash,
//! still keeps clients from choosing names that collide.

pub(crate) type RandomState = foldhash::quality::RandomState;
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
pub(crate) type DashMap<K, V> = dashmap::DashMap<K, V, RandomState>;
