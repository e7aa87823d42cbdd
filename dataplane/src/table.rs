//! An open-addressing hash map from `u64` keys to small `Copy` values.
//!
//! Both the static FDB (in the snapshot) and the learned MAC table (per worker) key on
//! `network slot << 48 | MAC`, which fits a `u64` exactly. Linear probing over inline
//! `(key, value)` entries keeps a hit to one or two cache lines; deletion shifts entries
//! back instead of leaving tombstones, so lookups never slow down as entries come and go.
//! Capacity is fixed at construction and the load is capped at one half, so an insert
//! into a full map fails instead of growing.
//!
//! Tables whose keys a VM or an outside host chooses (learned MACs, neighbours) must not
//! let chosen keys pile up on one slot and turn every lookup into a scan. Two defences:
//! the hash is keyed with a secret seed (a 64×64→128-bit multiply folded to 64 bits, the
//! step wyhash and foldhash are built on, which no fixed multiplier can be aimed at), and
//! no entry is ever stored more than [`MAX_DISPLACEMENT`] slots past its home: an insert
//! that would go further fails like a full map. So a lookup, hit or miss, reads at most
//! `MAX_DISPLACEMENT + 1` slots whatever keys were inserted.

/// Most slots an entry may sit past its home slot. At a load of one half, honest keys
/// almost never come near it (the expected displacement is below one slot).
pub const MAX_DISPLACEMENT: usize = 32;

/// A key no caller may use: slot 0xffff with the broadcast MAC (group MACs are never keys).
const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Entry<V> {
    key: u64,
    val: V,
}

/// The map. See the module documentation.
#[derive(Clone, Debug)]
pub struct U64Map<V: Copy + Default> {
    entries: Box<[Entry<V>]>,
    seed: u64,
    shift: u32,
    len: usize,
    max_len: usize,
}

/// Returned by [`U64Map::insert`] when the map already holds its maximum, or when the
/// key's home is so crowded that it would land past [`MAX_DISPLACEMENT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapFull;

impl<V: Copy + Default> U64Map<V> {
    /// A map that holds up to `max_len` entries at a load of at most one half.
    pub fn with_max_len(max_len: usize) -> Self {
        Self::with_slots_per_entry(max_len, 2)
    }

    /// As [`U64Map::with_max_len`], hashing with `seed`: for keys that others choose,
    /// pick it at random.
    pub fn with_seed(max_len: usize, seed: u64) -> Self {
        let mut m = Self::with_max_len(max_len);
        m.seed = seed;
        m
    }

    /// A map that holds up to `max_len` entries with at least `spread` slots per entry:
    /// a sparser table makes misses (which probe to the next empty slot) cheaper.
    pub fn with_slots_per_entry(max_len: usize, spread: usize) -> Self {
        let slots = (max_len.max(8) * spread.max(2)).next_power_of_two();
        U64Map {
            entries: vec![
                Entry {
                    key: EMPTY,
                    val: V::default()
                };
                slots
            ]
            .into_boxed_slice(),
            seed: 0,
            shift: 64 - slots.trailing_zeros(),
            len: 0,
            max_len,
        }
    }

    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the map has no entries.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // The top bits of the folded product spread nearby keys (MACs that differ in their
        // last byte) across the whole table.
        let m = u128::from(key ^ self.seed) * u128::from(0x9e37_79b9_7f4a_7c15_u64);
        (((m as u64) ^ ((m >> 64) as u64)) >> self.shift) as usize
    }

    #[inline]
    fn find(&self, key: u64) -> Option<usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        for _ in 0..=MAX_DISPLACEMENT {
            let k = self.entries[i].key;
            if k == key {
                return Some(i);
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// The value stored under `key`.
    #[inline]
    pub fn get(&self, key: u64) -> Option<V> {
        debug_assert_ne!(key, EMPTY);
        self.find(key).map(|i| self.entries[i].val)
    }

    /// The value stored under `key`, writable.
    #[inline]
    pub fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        debug_assert_ne!(key, EMPTY);
        self.find(key).map(move |i| &mut self.entries[i].val)
    }

    /// Stores `val` under `key`, returning the previous value; fails when `key` is new and
    /// the map is full or its home is crowded (see [`MapFull`]).
    #[inline]
    pub fn insert(&mut self, key: u64, val: V) -> Result<Option<V>, MapFull> {
        assert_ne!(key, EMPTY, "the reserved key cannot be stored");
        let mask = self.mask();
        let mut i = self.home(key);
        for _ in 0..=MAX_DISPLACEMENT {
            let k = self.entries[i].key;
            if k == key {
                return Ok(Some(std::mem::replace(&mut self.entries[i].val, val)));
            }
            if k == EMPTY {
                if self.len >= self.max_len {
                    return Err(MapFull);
                }
                self.entries[i] = Entry { key, val };
                self.len += 1;
                return Ok(None);
            }
            i = (i + 1) & mask;
        }
        Err(MapFull)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let i = self.find(key)?;
        Some(self.remove_at(i))
    }

    /// Removes the entry in slot `hole` and shifts later entries of the same probe run back,
    /// so that every remaining key stays reachable from its home slot.
    fn remove_at(&mut self, mut hole: usize) -> V {
        let mask = self.mask();
        let removed = self.entries[hole].val;
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let k = self.entries[i].key;
            if k == EMPTY {
                break;
            }
            let home = self.home(k);
            // The entry at `i` may fill the hole only if its home is not in (hole, i]
            // (cyclically), or it would end up before its home slot.
            let dist_to_i = i.wrapping_sub(home) & mask;
            let dist_to_hole = hole.wrapping_sub(home) & mask;
            if dist_to_hole <= dist_to_i {
                self.entries[hole] = self.entries[i];
                hole = i;
            }
        }
        self.entries[hole] = Entry {
            key: EMPTY,
            val: V::default(),
        };
        self.len -= 1;
        removed
    }

    /// Visits slots `start..start + count` (wrapping), removing each entry for which
    /// `keep` returns false; returns the slot to resume from and how many were removed.
    /// Used for aging a little at a time. An entry shifted back across the scan position
    /// by a removal may be skipped until the next pass, which aging tolerates.
    pub fn retain_slots(
        &mut self,
        start: usize,
        count: usize,
        mut keep: impl FnMut(u64, &V) -> bool,
    ) -> (usize, usize) {
        let mask = self.mask();
        let mut i = start & mask;
        let mut removed = 0;
        for _ in 0..count.min(self.entries.len()) {
            let e = self.entries[i];
            if e.key != EMPTY && !keep(e.key, &e.val) {
                self.remove_at(i);
                removed += 1;
                // Re-examine slot `i`: a later entry may have shifted into it.
                if self.entries[i].key != EMPTY {
                    continue;
                }
            }
            i = (i + 1) & mask;
        }
        (i, removed)
    }

    /// Every `(key, value)` pair, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, V)> + '_ {
        self.entries
            .iter()
            .filter(|e| e.key != EMPTY)
            .map(|e| (e.key, e.val))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn insert_get_remove() {
        let mut m = U64Map::<u16>::with_max_len(4);
        assert_eq!(m.insert(1, 10), Ok(None));
        assert_eq!(m.insert(1, 11), Ok(Some(10)));
        for k in 2..=4 {
            m.insert(k, k as u16).unwrap();
        }
        assert_eq!(m.insert(5, 5), Err(MapFull));
        assert_eq!(m.get(1), Some(11));
        assert_eq!(m.remove(1), Some(11));
        assert_eq!(m.get(1), None);
        assert_eq!(m.len(), 3);
        assert_eq!(m.insert(5, 5), Ok(None));
    }

    /// `n` keys that all hash to the same home slot of `m`, found by brute force as an
    /// attacker who knew the seed would.
    fn colliding(m: &U64Map<u16>, n: usize) -> Vec<u64> {
        let target = m.home(1);
        (1u64..).filter(|&k| m.home(k) == target).take(n).collect()
    }

    #[test]
    fn chosen_collisions_cannot_lengthen_probes() {
        let mut m = U64Map::<u16>::with_seed(1024, 0x1234_5678);
        let keys = colliding(&m, 100);
        let stored = keys.iter().filter(|&&k| m.insert(k, 1).is_ok()).count();
        assert_eq!(stored, MAX_DISPLACEMENT + 1, "one home holds a bounded run");
        for &k in &keys[..stored] {
            assert_eq!(m.get(k), Some(1));
        }
        assert_eq!(m.get(keys[stored]), None);
        // Other keys are unaffected, and the same keys under another seed spread out.
        assert!(m.insert(u64::MAX - 1, 2).is_ok() || m.home(u64::MAX - 1) == m.home(1));
        let mut other = U64Map::<u16>::with_seed(1024, 0x9abc_def0);
        assert!(keys.iter().all(|&k| other.insert(k, 1).is_ok()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u16),
        Remove(u64),
        Sweep(usize, usize, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        // A small key space forces collisions, long probe runs and wrap-around.
        let key = 0u64..64;
        prop_oneof![
            (key.clone(), any::<u16>()).prop_map(|(k, v)| Op::Insert(k, v)),
            key.prop_map(Op::Remove),
            (0usize..64, 0usize..70, any::<u16>()).prop_map(|(s, c, t)| Op::Sweep(s, c, t)),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hashmap(ops in proptest::collection::vec(op(), 0..300)) {
            let mut m = U64Map::<u16>::with_max_len(24);
            let mut model = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let full = model.len() >= 24 && !model.contains_key(&k);
                        match m.insert(k, v) {
                            Err(MapFull) => prop_assert!(full),
                            Ok(prev) => prop_assert_eq!(prev, model.insert(k, v)),
                        }
                    }
                    Op::Remove(k) => prop_assert_eq!(m.remove(k), model.remove(&k)),
                    Op::Sweep(start, count, threshold) => {
                        m.retain_slots(start, count, |_, v| *v < threshold);
                        // A sweep may only remove entries that fail the predicate.
                        model.retain(|k, v| *v < threshold || m.get(*k).is_some());
                    }
                }
                prop_assert_eq!(m.len(), model.len());
                for (k, v) in &model {
                    prop_assert_eq!(m.get(*k), Some(*v));
                }
            }
        }
    }
}
