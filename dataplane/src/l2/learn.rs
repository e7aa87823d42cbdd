//! The learned MAC table of one worker.
//!
//! Entries are keyed by network slot and MAC and remember the network's stable uid, so an
//! entry left behind when a slot changes hands in a new snapshot is never used for the
//! new network. Each network has a quota so one tenant cannot fill the table for all.

use crate::port::PortId;
use crate::snapshot::{fdb_key, NetworkUid, MAX_NETWORKS};
use crate::table::U64Map;

/// A learned MAC: where it was last seen and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Port the MAC was last seen on.
    pub port: PortId,
    /// Network identity the entry belongs to.
    pub uid: u32,
    /// Worker clock, in seconds, when the MAC was last seen.
    pub seen: u32,
}

/// What [`MacTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LearnOutcome {
    /// Already known on this port; timestamp refreshed.
    Refreshed,
    /// New entry.
    Learned,
    /// Known on another port of the same network; moved.
    Moved,
    /// Not learned: the network's quota or the table is full.
    Full,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MacTable {
    map: U64Map<Learned>,
    per_network: Box<[u32]>,
    age_cursor: usize,
}

impl MacTable {
    /// A table for up to `capacity` MACs across all networks.
    pub fn new(capacity: usize) -> Self {
        Self::with_seed(capacity, 0)
    }

    /// As [`MacTable::new`], hashing with a secret `seed`, so that MACs chosen by a VM or
    /// a host behind an uplink cannot crowd one slot of the table.
    pub fn with_seed(capacity: usize, seed: u64) -> Self {
        MacTable {
            map: U64Map::with_seed(capacity, seed),
            per_network: vec![0; MAX_NETWORKS].into_boxed_slice(),
            age_cursor: 0,
        }
    }

    /// Number of learned MACs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is learned.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Learned MACs in one network slot (including entries left by an earlier owner of the
    /// slot until they age out).
    pub fn count_in(&self, slot: u16) -> u32 {
        self.per_network
            .get(usize::from(slot))
            .copied()
            .unwrap_or(0)
    }

    /// The port a MAC was learned on in network `slot` with identity `uid`.
    #[inline]
    pub fn lookup(&self, slot: u16, uid: NetworkUid, mac: u64) -> Option<PortId> {
        self.map
            .get(fdb_key(slot, mac))
            .filter(|e| e.uid == uid.0)
            .map(|e| e.port)
    }

    /// Updates the timestamp of `mac` if it is already learned on `port` in this network;
    /// returns false (changing nothing) otherwise.
    #[inline]
    pub fn refresh(
        &mut self,
        slot: u16,
        uid: NetworkUid,
        mac: u64,
        port: PortId,
        now: u32,
    ) -> bool {
        match self.map.get_mut(fdb_key(slot, mac)) {
            Some(e) if e.uid == uid.0 && e.port == port => {
                e.seen = now;
                true
            }
            _ => false,
        }
    }

    /// Records that `mac` was seen on `port` in network `slot` at `now` (seconds). A new
    /// entry is added only when the network has fewer than `limit` entries.
    #[inline]
    pub fn learn(
        &mut self,
        slot: u16,
        uid: NetworkUid,
        mac: u64,
        port: PortId,
        now: u32,
        limit: u32,
    ) -> LearnOutcome {
        let key = fdb_key(slot, mac);
        if let Some(e) = self.map.get_mut(key) {
            let outcome = if e.uid != uid.0 {
                // Left by the slot's previous network: reuse the entry (the slot's count
                // already includes it).
                LearnOutcome::Learned
            } else if e.port != port {
                LearnOutcome::Moved
            } else {
                LearnOutcome::Refreshed
            };
            *e = Learned {
                port,
                uid: uid.0,
                seen: now,
            };
            return outcome;
        }
        let count = &mut self.per_network[usize::from(slot)];
        if *count >= limit {
            return LearnOutcome::Full;
        }
        match self.map.insert(
            key,
            Learned {
                port,
                uid: uid.0,
                seen: now,
            },
        ) {
            Ok(_) => {
                *count += 1;
                LearnOutcome::Learned
            }
            Err(_) => LearnOutcome::Full,
        }
    }

    /// Removes entries idle for `max_idle` seconds or longer, visiting at most `budget`
    /// slots from where the last call stopped; returns how many it removed.
    pub fn age(&mut self, now: u32, max_idle: u32, budget: usize) -> usize {
        let counts = &mut self.per_network;
        let (cursor, removed) = self.map.retain_slots(self.age_cursor, budget, |key, e| {
            let keep = now.wrapping_sub(e.seen) < max_idle;
            if !keep {
                counts[(key >> 48) as usize] -= 1;
            }
            keep
        });
        self.age_cursor = cursor;
        removed
    }

    /// Every entry as `(network slot, packed MAC, entry)`.
    pub fn entries(&self) -> impl Iterator<Item = (u16, u64, Learned)> + '_ {
        self.map
            .iter()
            .map(|(k, e)| ((k >> 48) as u16, k & 0xffff_ffff_ffff, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: NetworkUid = NetworkUid(5);

    #[test]
    fn learn_refresh_move_and_age() {
        let mut t = MacTable::new(16);
        assert_eq!(
            t.learn(0, NET, 0xa, PortId(1), 100, 10),
            LearnOutcome::Learned
        );
        assert_eq!(
            t.learn(0, NET, 0xa, PortId(1), 101, 10),
            LearnOutcome::Refreshed
        );
        assert_eq!(
            t.learn(0, NET, 0xa, PortId(2), 102, 10),
            LearnOutcome::Moved
        );
        assert_eq!(t.lookup(0, NET, 0xa), Some(PortId(2)));
        // The same MAC in another network is a separate entry.
        assert_eq!(
            t.learn(1, NetworkUid(6), 0xa, PortId(3), 102, 10),
            LearnOutcome::Learned
        );
        assert_eq!(t.lookup(0, NET, 0xa), Some(PortId(2)));
        assert_eq!(t.lookup(1, NetworkUid(6), 0xa), Some(PortId(3)));
        // An entry under another identity of the slot is invisible.
        assert_eq!(t.lookup(0, NetworkUid(7), 0xa), None);
        assert_eq!(t.age(401, 300, usize::MAX), 0);
        assert_eq!(t.age(402, 300, usize::MAX), 2);
        assert!(t.is_empty());
        assert_eq!(t.count_in(0), 0);
    }

    #[test]
    fn quota_per_network_and_capacity_are_enforced() {
        let mut t = MacTable::new(4);
        for mac in 0..3 {
            assert_eq!(t.learn(0, NET, mac, PortId(1), 0, 3), LearnOutcome::Learned);
        }
        assert_eq!(t.learn(0, NET, 9, PortId(1), 0, 3), LearnOutcome::Full);
        assert_eq!(
            t.learn(1, NetworkUid(6), 9, PortId(1), 0, 3),
            LearnOutcome::Learned
        );
        assert_eq!(
            t.learn(2, NetworkUid(7), 9, PortId(1), 0, 3),
            LearnOutcome::Full,
            "table full"
        );
        assert_eq!(t.count_in(0), 3);
    }
}
