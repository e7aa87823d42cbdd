//! Sessions held per owner, for quotas.
//!
//! Owner ids are opaque `u32`s (a port slot, a router slot), so they are counted in a small
//! open-addressing map rather than an array indexed by id. An owner is present only while
//! it holds a session, so the map never needs more entries than the table has sessions,
//! and it is sized for that up front.

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    owner: u32,
    /// Zero marks an empty slot.
    count: u32,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct OwnerCounts {
    entries: Box<[Entry]>,
    shift: u32,
    len: usize,
}

impl OwnerCounts {
    /// Room for `max_owners` owners at a load of at most one half.
    pub(super) fn new(max_owners: usize) -> Self {
        let n = (max_owners.max(8) * 2).next_power_of_two();
        OwnerCounts {
            entries: vec![Entry::default(); n].into_boxed_slice(),
            shift: 64 - n.trailing_zeros(),
            len: 0,
        }
    }

    /// Owners holding at least one session.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    #[inline]
    fn home(&self, owner: u32) -> usize {
        (u64::from(owner).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// The slot holding `owner`, or the empty slot where it would go.
    #[inline]
    fn slot(&self, owner: u32) -> usize {
        let mask = self.mask();
        let mut i = self.home(owner);
        loop {
            let e = self.entries[i];
            if e.count == 0 || e.owner == owner {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Sessions `owner` holds.
    #[inline]
    pub(super) fn get(&self, owner: u32) -> u32 {
        self.entries[self.slot(owner)].count
    }

    /// Counts one more session for `owner`. The caller keeps the number of owners within
    /// the maximum (it never holds more sessions than that).
    #[inline]
    pub(super) fn inc(&mut self, owner: u32) {
        let i = self.slot(owner);
        debug_assert!(self.entries[i].count > 0 || self.len < self.entries.len() / 2);
        let e = &mut self.entries[i];
        if e.count == 0 {
            e.owner = owner;
            self.len += 1;
        }
        e.count += 1;
    }

    /// Counts one session less for `owner`, forgetting it at zero.
    pub(super) fn dec(&mut self, owner: u32) {
        let i = self.slot(owner);
        let e = &mut self.entries[i];
        debug_assert!(
            e.count > 0 && e.owner == owner,
            "owner {owner} holds nothing"
        );
        if e.count == 0 {
            return;
        }
        e.count -= 1;
        if e.count == 0 {
            self.len -= 1;
            self.shift_back(i);
        }
    }

    /// Backward-shift deletion of the (now empty) slot `hole`; see `table.rs`.
    fn shift_back(&mut self, mut hole: usize) {
        let mask = self.mask();
        let mut i = hole;
        loop {
            i = (i + 1) & mask;
            let e = self.entries[i];
            if e.count == 0 {
                break;
            }
            let home = self.home(e.owner);
            if hole.wrapping_sub(home) & mask <= i.wrapping_sub(home) & mask {
                self.entries[hole] = e;
                hole = i;
            }
        }
        self.entries[hole] = Entry::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_and_down_and_forgets_at_zero() {
        let mut o = OwnerCounts::new(4);
        for owner in [7, 7, 9, u32::MAX, 0, 7] {
            o.inc(owner);
        }
        assert_eq!(
            (o.get(7), o.get(9), o.get(0), o.get(u32::MAX)),
            (3, 1, 1, 1)
        );
        assert_eq!(o.len(), 4);
        o.dec(9);
        o.dec(0);
        assert_eq!(
            (o.get(9), o.get(0), o.get(7), o.get(u32::MAX)),
            (0, 0, 3, 1)
        );
        assert_eq!(o.len(), 2);
        for _ in 0..3 {
            o.dec(7);
        }
        o.dec(u32::MAX);
        assert_eq!(o.len(), 0);
        assert!(o.entries.iter().all(|e| e.count == 0));
    }
}
