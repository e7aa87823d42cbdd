//! The learned MAC table of one worker.
//!
//! Entries are keyed by network slot and MAC and remember the network's stable uid, so an
//! entry left behind when a slot changes hands in a new snapshot is never used for the
//! new network. Each network has a quota so one tenant cannot fill the table for all, and
//! each VM port one so that a VM bridging other hosts (port security off) cannot fill its
//! network's quota and keep the hosts behind the uplink from being learned.
//!
//! A MAC learned on an uplink (a host of the physical network, its gateway say) is never
//! moved to a VM port: a VM sending from that MAC would otherwise pull the host's traffic
//! to itself. The entry ages out if the host really went away.

use crate::ident::{FdbKey, NetworkSlot};
use crate::port::PortId;
use crate::snapshot::{NetworkUid, MAX_NETWORKS};
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
    /// Learned on a VM port (not an uplink).
    pub on_vm: bool,
}

/// Where a MAC is being learned, and the quotas that apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnLimits {
    /// Most entries in one network.
    pub per_network: u32,
    /// Most entries on one VM port (uplinks have no per-port quota).
    pub per_vm_port: u32,
    /// The port is a VM port.
    pub vm_port: bool,
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
    /// Not learned: the VM port already holds its quota of learned MACs.
    PortFull,
    /// Not moved: the MAC belongs to a host behind an uplink and a VM port sent it.
    MoveRefused,
}

/// See the module documentation.
#[derive(Debug)]
pub struct MacTable {
    map: U64Map<Learned>,
    per_network: Box<[u32]>,
    /// Entries on each VM port, by port index.
    per_vm_port: Box<[u32]>,
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
            per_vm_port: vec![0; usize::from(u16::MAX) + 1].into_boxed_slice(),
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
    pub fn count_in(&self, slot: NetworkSlot) -> u32 {
        self.per_network.get(slot.index()).copied().unwrap_or(0)
    }

    /// Learned MACs on VM port `port`.
    pub fn count_on_port(&self, port: PortId) -> u32 {
        self.per_vm_port[port.index()]
    }

    /// The port a MAC was learned on, by its key (network slot and MAC) and the
    /// network's identity `uid`.
    #[inline]
    pub fn lookup(&self, key: FdbKey, uid: NetworkUid) -> Option<PortId> {
        self.map
            .get(key.get())
            .filter(|e| e.uid == uid.0)
            .map(|e| e.port)
    }

    /// Updates the timestamp of `mac` if it is already learned on `port` in this network;
    /// returns false (changing nothing) otherwise.
    #[inline]
    pub fn refresh(&mut self, key: FdbKey, uid: NetworkUid, port: PortId, now: u32) -> bool {
        match self.map.get_mut(key.get()) {
            Some(e) if e.uid == uid.0 && e.port == port => {
                e.seen = now;
                true
            }
            _ => false,
        }
    }

    /// Records that `key`'s MAC was seen on uplink `port` in `key`'s network at `now`
    /// (seconds). A new entry is added only when the network has fewer than `limit`
    /// entries.
    #[inline]
    pub fn learn(
        &mut self,
        key: FdbKey,
        uid: NetworkUid,
        port: PortId,
        now: u32,
        limit: u32,
    ) -> LearnOutcome {
        let limits = LearnLimits {
            per_network: limit,
            per_vm_port: u32::MAX,
            vm_port: false,
        };
        self.learn_on(key, uid, port, now, limits)
    }

    /// Records that `key`'s MAC was seen on `port` in `key`'s network at `now` (seconds), within
    /// `limits`: a new entry needs room in the network's and (on a VM port) the port's
    /// quota; an entry learned on an uplink does not move to a VM port.
    #[inline]
    pub fn learn_on(
        &mut self,
        key: FdbKey,
        uid: NetworkUid,
        port: PortId,
        now: u32,
        limits: LearnLimits,
    ) -> LearnOutcome {
        let slot = key.slot();
        let fresh = Learned {
            port,
            uid: uid.0,
            seen: now,
            on_vm: limits.vm_port,
        };
        if let Some(e) = self.map.get_mut(key.get()) {
            let stale = e.uid != uid.0;
            if !stale && e.port == port {
                e.seen = now;
                return LearnOutcome::Refreshed;
            }
            if !stale && !e.on_vm && limits.vm_port {
                return LearnOutcome::MoveRefused;
            }
            if limits.vm_port && self.per_vm_port[port.index()] >= limits.per_vm_port {
                return LearnOutcome::PortFull;
            }
            let old = std::mem::replace(e, fresh);
            if old.on_vm {
                self.per_vm_port[old.port.index()] -= 1;
            }
            if limits.vm_port {
                self.per_vm_port[port.index()] += 1;
            }
            // An entry left by the slot's previous network is reused: the slot's count
            // already includes it.
            return if stale {
                LearnOutcome::Learned
            } else {
                LearnOutcome::Moved
            };
        }
        if self.per_network[slot.index()] >= limits.per_network {
            return LearnOutcome::Full;
        }
        if limits.vm_port && self.per_vm_port[port.index()] >= limits.per_vm_port {
            return LearnOutcome::PortFull;
        }
        match self.map.insert(key.get(), fresh) {
            Ok(_) => {
                self.per_network[slot.index()] += 1;
                if limits.vm_port {
                    self.per_vm_port[port.index()] += 1;
                }
                LearnOutcome::Learned
            }
            Err(_) => LearnOutcome::Full,
        }
    }

    /// Removes entries idle for `max_idle` seconds or longer, visiting at most `budget`
    /// slots from where the last call stopped; returns how many it removed.
    pub fn age(&mut self, now: u32, max_idle: u32, budget: usize) -> usize {
        let (counts, ports) = (&mut self.per_network, &mut self.per_vm_port);
        let (cursor, removed) = self.map.retain_slots(self.age_cursor, budget, |key, e| {
            let keep = now.wrapping_sub(e.seen) < max_idle;
            if !keep {
                counts[FdbKey::from_bits(key).slot().index()] -= 1;
                if e.on_vm {
                    ports[e.port.index()] -= 1;
                }
            }
            keep
        });
        self.age_cursor = cursor;
        removed
    }

    /// Every entry with its key (network slot and MAC).
    pub fn entries(&self) -> impl Iterator<Item = (FdbKey, Learned)> + '_ {
        self.map.iter().map(|(k, e)| (FdbKey::from_bits(k), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ident::PackedMac;

    const NET: NetworkUid = NetworkUid(5);

    fn k(slot: u16, mac: u64) -> FdbKey {
        FdbKey::packed(NetworkSlot(slot), PackedMac::from_bits(mac))
    }

    #[test]
    fn learn_refresh_move_and_age() {
        let mut t = MacTable::new(16);
        assert_eq!(
            t.learn(k(0, 0xa), NET, PortId(1), 100, 10),
            LearnOutcome::Learned
        );
        assert_eq!(
            t.learn(k(0, 0xa), NET, PortId(1), 101, 10),
            LearnOutcome::Refreshed
        );
        assert_eq!(
            t.learn(k(0, 0xa), NET, PortId(2), 102, 10),
            LearnOutcome::Moved
        );
        assert_eq!(t.lookup(k(0, 0xa), NET), Some(PortId(2)));
        // The same MAC in another network is a separate entry.
        assert_eq!(
            t.learn(k(1, 0xa), NetworkUid(6), PortId(3), 102, 10),
            LearnOutcome::Learned
        );
        assert_eq!(t.lookup(k(0, 0xa), NET), Some(PortId(2)));
        assert_eq!(t.lookup(k(1, 0xa), NetworkUid(6)), Some(PortId(3)));
        // An entry under another identity of the slot is invisible.
        assert_eq!(t.lookup(k(0, 0xa), NetworkUid(7)), None);
        assert_eq!(t.age(401, 300, usize::MAX), 0);
        assert_eq!(t.age(402, 300, usize::MAX), 2);
        assert!(t.is_empty());
        assert_eq!(t.count_in(NetworkSlot(0)), 0);
    }

    #[test]
    fn quota_per_network_and_capacity_are_enforced() {
        let mut t = MacTable::new(4);
        for mac in 0..3 {
            assert_eq!(
                t.learn(k(0, mac), NET, PortId(1), 0, 3),
                LearnOutcome::Learned
            );
        }
        assert_eq!(t.learn(k(0, 9), NET, PortId(1), 0, 3), LearnOutcome::Full);
        assert_eq!(
            t.learn(k(1, 9), NetworkUid(6), PortId(1), 0, 3),
            LearnOutcome::Learned
        );
        assert_eq!(
            t.learn(k(2, 9), NetworkUid(7), PortId(1), 0, 3),
            LearnOutcome::Full,
            "table full"
        );
        assert_eq!(t.count_in(NetworkSlot(0)), 3);
    }

    fn vm(per_vm_port: u32) -> LearnLimits {
        LearnLimits {
            per_network: 100,
            per_vm_port,
            vm_port: true,
        }
    }

    #[test]
    fn a_vm_port_cannot_take_an_uplinks_mac() {
        let mut t = MacTable::new(16);
        let gateway = 0x5254_0000_0001;
        assert_eq!(
            t.learn(k(0, gateway), NET, PortId(9), 10, 100),
            LearnOutcome::Learned
        );
        assert_eq!(
            t.learn_on(k(0, gateway), NET, PortId(1), 11, vm(8)),
            LearnOutcome::MoveRefused
        );
        assert_eq!(t.lookup(k(0, gateway), NET), Some(PortId(9)));
        assert_eq!(t.count_on_port(PortId(1)), 0);
        // Once the host is gone (aged out), the MAC may be learned anywhere.
        assert_eq!(t.age(400, 300, usize::MAX), 1);
        assert_eq!(
            t.learn_on(k(0, gateway), NET, PortId(1), 401, vm(8)),
            LearnOutcome::Learned
        );
        // A VM's MAC may move to the uplink (the VM migrated) and between VM ports.
        assert_eq!(
            t.learn_on(k(0, gateway), NET, PortId(2), 402, vm(8)),
            LearnOutcome::Moved
        );
        assert_eq!(
            (t.count_on_port(PortId(1)), t.count_on_port(PortId(2))),
            (0, 1)
        );
        assert_eq!(
            t.learn(k(0, gateway), NET, PortId(9), 403, 100),
            LearnOutcome::Moved
        );
        assert_eq!(t.count_on_port(PortId(2)), 0);
    }

    #[test]
    fn each_vm_port_has_its_quota() {
        let mut t = MacTable::new(64);
        for mac in 0..4 {
            assert_eq!(
                t.learn_on(k(0, mac), NET, PortId(1), 0, vm(4)),
                LearnOutcome::Learned
            );
        }
        assert_eq!(
            t.learn_on(k(0, 99), NET, PortId(1), 0, vm(4)),
            LearnOutcome::PortFull
        );
        // Another VM port and the uplink still learn in the same network.
        assert_eq!(
            t.learn_on(k(0, 99), NET, PortId(2), 0, vm(4)),
            LearnOutcome::Learned
        );
        assert_eq!(
            t.learn(k(0, 100), NET, PortId(9), 0, 100),
            LearnOutcome::Learned
        );
        // A full port cannot take another port's MAC either; aging frees its quota.
        assert_eq!(
            t.learn_on(k(0, 99), NET, PortId(1), 1, vm(4)),
            LearnOutcome::PortFull
        );
        assert_eq!(t.age(1000, 300, usize::MAX), 6);
        assert_eq!(t.count_on_port(PortId(1)), 0);
        assert_eq!(
            t.learn_on(k(0, 99), NET, PortId(1), 1000, vm(4)),
            LearnOutcome::Learned
        );
    }
}
