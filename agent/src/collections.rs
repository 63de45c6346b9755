//! Hash maps for the hot path, and the one stable hash.
//!
//! std's default hasher (SipHash-1-3) costs about as much per message as
//! parsing a small JSON-RPC envelope, and every record probes several maps
//! (stream, session, pairing, process). foldhash is several times cheaper
//! and, seeded per process, keys chosen by a remote peer (JSON-RPC ids,
//! tool names) cannot be crafted offline to collide.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash},
};

/// A hash map with foldhash, seeded per process.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A hash set with foldhash, seeded per process.
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// A hash that is the same in every run and on every host, for keys that
/// leave the process (session ids in events and the audit trail).
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    // Any fixed seed; this one is π's fractional part.
    foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3).hash_one(value)
}
