//! The key index: open addressing from a flow key's hash to `session << 1 | direction`.
//!
//! A slot is 8 bytes, the top 32 bits of the key's hash and the value, so eight share a
//! cache line and a miss never touches a session. The full key is not stored: a hit is
//! confirmed by comparing the key in the session, which the caller reads next anyway. The
//! home slot is the top bits of the stored hash, so deletion can shift entries back
//! (no tombstones) without rehashing any key. The table holds at most half as many
//! entries as it has slots, so every probe run ends at an empty slot.

/// The value of an empty slot (no session has this index).
pub(super) const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    tag: u32,
    val: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct KeyIndex {
    slots: Box<[Slot]>,
    tag_shift: u32,
    len: usize,
}

impl KeyIndex {
    /// An index for up to `max_len` entries at a load of at most one half.
    pub(super) fn with_max_len(max_len: usize) -> Self {
        let n = (max_len.max(8) * 2).next_power_of_two();
        assert!(n <= 1 << 31, "key index of {n} slots is too large");
        KeyIndex {
            slots: vec![Slot { tag: 0, val: EMPTY }; n].into_boxed_slice(),
            tag_shift: 32 - n.trailing_zeros(),
            len: 0,
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        (tag >> self.tag_shift) as usize
    }

    /// The first value stored under `tag` that `is` accepts.
    #[inline]
    pub(super) fn find(&self, tag: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let mut i = self.home(tag);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                return None;
            }
            if s.tag == tag && is(s.val) {
                return Some(s.val);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds `val` under `tag`. The caller has checked the key is not present and keeps the
    /// count within the maximum the index was built for.
    #[inline]
    pub(super) fn insert(&mut self, tag: u32, val: u32) {
        debug_assert!(val != EMPTY && self.len < self.slots.len() / 2);
        let mask = self.mask();
        let mut i = self.home(tag);
        while self.slots[i].val != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { tag, val };
        self.len += 1;
    }

    /// Removes the entry holding exactly `val` under `tag`; false if there is none.
    pub(super) fn remove(&mut self, tag: u32, val: u32) -> bool {
        let mask = self.mask();
        let mut i = self.home(tag);
        loop {
            let s = self.slots[i];
            if s.val == EMPTY {
                return false;
            }
            if s.val == val {
                self.remove_at(i);
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    /// Empties slot `hole` and shifts later entries of its probe run back, so that every
    /// remaining entry stays reachable from its home slot.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let s = self.slots[i];
            if s.val == EMPTY {
                break;
            }
            let home = self.home(s.tag);
            // The entry may move into the hole only if that does not put it before its
            // home slot (cyclically).
            if hole.wrapping_sub(home) & mask <= i.wrapping_sub(home) & mask {
                self.slots[hole] = s;
                hole = i;
            }
        }
        self.slots[hole] = Slot { tag: 0, val: EMPTY };
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colliding_tags_survive_removal_of_any_one() {
        let mut ix = KeyIndex::with_max_len(8);
        // Same home slot (top bits equal), different tags and the same tag twice.
        let tags = [
            0x1000_0001,
            0x1000_0002,
            0x1000_0001,
            0xf000_0000,
            0xf800_0000,
        ];
        for (v, &t) in tags.iter().enumerate() {
            ix.insert(t, v as u32);
        }
        for gone in 0..tags.len() {
            let mut ix2 = KeyIndex::with_max_len(8);
            for (v, &t) in tags.iter().enumerate() {
                ix2.insert(t, v as u32);
            }
            assert!(ix2.remove(tags[gone], gone as u32));
            assert!(!ix2.remove(tags[gone], gone as u32));
            for (v, &t) in tags.iter().enumerate() {
                let found = ix2.find(t, |x| x == v as u32);
                assert_eq!(
                    found.is_some(),
                    v != gone,
                    "entry {v} after removing {gone}"
                );
            }
            assert_eq!(ix2.len(), tags.len() - 1);
        }
        assert_eq!(ix.len(), tags.len());
    }
}
