//! Hash maps for the hot path, the one stable hash, and the bounded map
//! that every piece of per-key state lives in.
//!
//! std's default hasher (SipHash-1-3) costs about as much per message as
//! parsing a small JSON-RPC envelope, and every record probes several maps
//! (stream, session, pairing, process). foldhash is several times cheaper
//! and, seeded per process, keys chosen by a remote peer (JSON-RPC ids,
//! tool names) cannot be crafted offline to collide.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, Hash},
};

/// A hash map with foldhash, seeded per process.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A hash seeded once per process, for keys made of what peers send (message
/// bytes) that never leave the process.
pub fn process_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    static SEED: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
    SEED.get_or_init(Default::default).hash_one(value)
}

/// A hash that is the same in every run and on every host, for keys that
/// leave the process (session ids in events and the audit trail). Not for
/// keys made of what peers send: with a fixed seed, collisions can be
/// searched for offline (see [`process_hash`]).
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    // Any fixed seed; this one is π's fractional part.
    foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3).hash_one(value)
}

/// A bounded map: past `cap` keys, the least recently touched goes.
/// Eviction is O(1) amortised: touches are queued and stale queue entries
/// skipped, so a flood of unique keys cannot make each message O(cap).
///
/// Recency is kept to within `cap / 8` touches: a key touched again that
/// soon after its queued touch is not queued again (a hot key would
/// otherwise fill the queue with stale entries, one per message). The
/// key evicted is then at most that much younger than the true least
/// recently used one.
///
/// Values live in a slab indexed by the map, so a lookup is one hash
/// probe: the map hands out a slot number, not a borrow.
pub struct Lru<K, V> {
    index: FastMap<K, u32>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<u32>,
    order: VecDeque<(K, u64)>,
    cap: usize,
    clock: u64,
}

struct Slot<K, V> {
    /// The key (so that a kept slot number can be checked, see [`Lru::at`]).
    key: K,
    value: V,
    /// The clock of the touch queued for this key.
    touched: u64,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    /// At most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Self {
            index: FastMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            cap,
            clock: 0,
        }
    }

    /// Keys held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The values held, in no order.
    #[cfg(test)]
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.slots.iter().flatten().map(|s| &s.value)
    }

    /// The value of `k`, made if absent (evicting the least recently
    /// touched key when full, counted in `evicted`); touches `k`.
    pub fn get_or(&mut self, k: K, make: impl FnOnce() -> V, evicted: &mut u64) -> &mut V {
        let slot = self.slot(k, make, evicted);
        self.at(slot)
    }

    /// The slot number of `k`, made if absent (as [`Lru::get_or`]);
    /// touches `k`. Kept, it saves a later lookup of `k`: see
    /// [`Lru::at`] and [`Lru::get_kept`].
    pub fn slot(&mut self, k: K, make: impl FnOnce() -> V, evicted: &mut u64) -> u32 {
        self.slot_of(k, make, evicted).0
    }

    /// The value in `slot`, a slot number [`Lru::slot`] just gave (not a
    /// touch).
    pub fn at(&mut self, slot: u32) -> &mut V {
        &mut self.slots[slot as usize]
            .as_mut()
            .expect("an occupied slot")
            .value
    }

    /// Whether `slot` holds `k`.
    fn holds(&self, slot: u32, k: &K) -> bool {
        self.slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|s| s.key == *k)
    }

    /// `k`'s slot, made if absent, and whether it was; touches `k`.
    fn slot_of(&mut self, k: K, make: impl FnOnce() -> V, evicted: &mut u64) -> (u32, bool) {
        match self.index.get(&k) {
            Some(&i) => {
                self.touch(i, k);
                (i, false)
            }
            None => {
                self.clock += 1;
                let clock = self.clock;
                if self.index.len() >= self.cap {
                    self.evict_one(evicted);
                }
                let slot = Some(Slot {
                    key: k,
                    value: make(),
                    touched: clock,
                });
                let i = match self.free.pop() {
                    Some(i) => {
                        self.slots[i as usize] = slot;
                        i
                    }
                    None => {
                        self.slots.push(slot);
                        (self.slots.len() - 1) as u32
                    }
                };
                self.index.insert(k, i);
                self.queue_touch(k, clock);
                (i, true)
            }
        }
    }

    /// Marks the value in slot `i` (holding `k`) used now.
    fn touch(&mut self, i: u32, k: K) {
        self.clock += 1;
        let clock = self.clock;
        let slot = self.slots[i as usize].as_mut().expect("an occupied slot");
        if clock - slot.touched > (self.cap as u64 / 8).max(1) {
            slot.touched = clock;
            self.queue_touch(k, clock);
        } // else: touched recently, its queued touch stands (see above)
    }

    /// [`Lru::get_or`] with the slot number `kept` from an earlier call,
    /// tried first and then updated: a key used again and again (a
    /// session's caller and server) costs a comparison, not a hash-map
    /// probe, and is marked used all the same. Also says whether the value
    /// was made.
    #[inline]
    pub fn get_kept(
        &mut self,
        kept: &mut Option<u32>,
        k: K,
        make: impl FnOnce() -> V,
        evicted: &mut u64,
    ) -> (&mut V, bool) {
        if let Some(s) = kept.filter(|&s| self.holds(s, &k)) {
            self.touch(s, k);
            return (self.at(s), false);
        }
        self.get_kept_missed(kept, k, make, evicted)
    }

    /// [`Lru::get_kept`] where the kept slot does not hold `k`: out of
    /// line, so that the common case inlined is a comparison and a touch.
    #[inline(never)]
    fn get_kept_missed(
        &mut self,
        kept: &mut Option<u32>,
        k: K,
        make: impl FnOnce() -> V,
        evicted: &mut u64,
    ) -> (&mut V, bool) {
        let (slot, made) = self.slot_of(k, make, evicted);
        *kept = Some(slot);
        (self.at(slot), made)
    }

    /// [`Lru::get_mut`] with the slot number `kept` from an earlier call,
    /// tried first and then updated (as [`Lru::get_kept`]); not a touch.
    pub fn get_mut_kept(&mut self, kept: &mut Option<u32>, k: &K) -> Option<&mut V> {
        let slot = match kept.filter(|&s| self.holds(s, k)) {
            Some(s) => s,
            None => *self.index.get(k)?,
        };
        *kept = Some(slot);
        Some(self.at(slot))
    }

    /// When `k`'s queued touch was (None: not held).
    fn touched(&self, k: &K) -> Option<u64> {
        let i = *self.index.get(k)?;
        self.slots[i as usize].as_ref().map(|s| s.touched)
    }

    #[inline(never)]
    fn queue_touch(&mut self, k: K, clock: u64) {
        // Stale touches at the front (keys touched again later, or
        // removed) go as new ones come: the queue stays short.
        while let Some(&(old, t)) = self.order.front() {
            if self.touched(&old) == Some(t) {
                break;
            }
            self.order.pop_front();
        }
        self.order.push_back((k, clock));
        if self.order.len() > 4 * self.cap.max(16) {
            // Stale touches behind a live one.
            let order = std::mem::take(&mut self.order);
            self.order = order
                .into_iter()
                .filter(|(key, t)| self.touched(key) == Some(*t))
                .collect();
        }
    }

    fn evict_one(&mut self, evicted: &mut u64) {
        while let Some((old, t)) = self.order.pop_front() {
            if self.touched(&old) == Some(t) {
                self.remove(&old);
                *evicted += 1;
                return;
            }
        }
    }

    /// Touches `k`, adding it with `v` if absent; says whether it was.
    pub fn insert_new(&mut self, k: K, v: V, evicted: &mut u64) -> bool {
        self.slot_of(k, || v, evicted).1
    }

    /// The value of `k`, if present (not a touch).
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = *self.index.get(k)?;
        self.slots[i as usize].as_mut().map(|s| &mut s.value)
    }

    /// Removes `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.index.remove(k)?;
        self.free.push(i);
        self.slots[i as usize].take().map(|s| s.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_slot_is_checked_against_its_key() {
        let mut l: Lru<u32, u32> = Lru::new(1);
        let mut evicted = 0;
        let mut kept = None;
        let (v, made) = l.get_kept(&mut kept, 1, || 10, &mut evicted);
        *v += 1;
        assert!(made);
        let s1 = kept;
        assert_eq!(
            l.get_kept(&mut kept, 1, || 0, &mut evicted),
            (&mut 11, false)
        );
        assert_eq!(kept, s1);
        // 1 is evicted and its slot reused by 2: the kept number no
        // longer stands for 1.
        let s2 = l.slot(2, || 20, &mut evicted);
        assert_eq!((s1, evicted), (Some(s2), 1));
        let (v, made) = l.get_kept(&mut kept, 1, || 30, &mut evicted);
        assert!(made, "1 made again, in place of 2");
        assert_eq!((*v, evicted), (30, 2));
        // Found without making: a kept slot that holds another key is
        // not taken for this one, and an absent key is not made.
        let mut stale = Some(s2);
        l.remove(&1);
        assert_eq!(l.get_mut_kept(&mut stale, &1), None);
        l.slot(3, || 40, &mut evicted);
        let mut kept3 = None;
        assert_eq!(l.get_mut_kept(&mut kept3, &3), Some(&mut 40));
        assert_eq!(l.get_mut_kept(&mut stale, &3), Some(&mut 40));
        assert_eq!(stale, kept3);
    }

    #[test]
    fn a_key_found_by_its_kept_slot_is_touched() {
        // Found by its kept slot only, 1 stays the most recently used.
        let mut l: Lru<u32, u32> = Lru::new(16);
        let mut evicted = 0;
        let mut kept = None;
        l.get_kept(&mut kept, 1, || 1, &mut evicted);
        for k in 2..=16 {
            l.slot(k, || k, &mut evicted);
            l.get_kept(&mut kept, 1, || 0, &mut evicted);
        }
        l.slot(17, || 17, &mut evicted);
        assert_eq!(evicted, 1);
        assert_eq!(l.get_mut(&1).copied(), Some(1), "2 went, not 1");
        assert!(l.get_mut(&2).is_none());
    }

    #[test]
    fn lru_evicts_the_least_recently_touched_and_counts_it() {
        let mut l: Lru<u32, u32> = Lru::new(2);
        let mut evicted = 0;
        *l.get_or(1, || 10, &mut evicted) += 1;
        l.get_or(2, || 20, &mut evicted);
        l.get_or(1, || 0, &mut evicted); // 2 is now the oldest
        l.get_or(3, || 30, &mut evicted);
        assert_eq!(evicted, 1);
        assert_eq!(l.get_mut(&1).copied(), Some(11));
        assert!(l.get_mut(&2).is_none());
    }

    #[test]
    fn lru_stays_bounded_when_its_entries_are_consumed() {
        let mut l: Lru<u64, u64> = Lru::new(16);
        let mut evicted = 0;
        for k in 0..100_000u64 {
            assert!(l.insert_new(k, k, &mut evicted));
            assert_eq!(l.remove(&k), Some(k));
        }
        assert!(l.order.len() <= 2, "{} stale touches kept", l.order.len());
        assert_eq!(evicted, 0, "consumed entries are not evictions");
        for k in 0..17u64 {
            l.insert_new(k, k, &mut evicted);
        }
        assert_eq!((l.len(), evicted), (16, 1), "the oldest goes");
        assert!(l.get_mut(&0).is_none());
    }
}
