//! The worker's neighbour (ARP) table and the packets waiting for a resolution.
//!
//! Entries are keyed by `(network uid, IPv4 address)`: a network's uid never changes or
//! gets reused, so what was learned survives snapshot swaps and can never be applied to a
//! network that later takes the same slot. An entry is created when a packet needs a next
//! hop that has none (the entry is then *incomplete* and remembers when the last ARP
//! request went out, so requests are sent at most once per [`RETRY_SECS`]), and completed
//! by an ARP request or reply from that address.
//!
//! A complete entry is used for [`REACHABLE_SECS`] after its last confirmation; after
//! that, forwarding still uses it but sends a fresh request (at most once per
//! [`RETRY_SECS`]), and after [`EXPIRE_SECS`] without an answer it is gone, as Linux
//! moves an entry from REACHABLE through STALE/PROBE to FAILED.
//!
//! Packets towards an incomplete entry wait in a fixed queue of [`PENDING_CAPACITY`]
//! packets, at most [`PENDING_PER_NEIGHBOR`] per next hop (Linux's `unres_qlen` is
//! per neighbour too) and [`PENDING_PER_NETWORK`] per network, for at most
//! [`PENDING_SECS`]; then they are dropped with `neighbor_unresolved`.
//!
//! A VM can make the router create entries (by sending to every address of its subnet)
//! and choose their keys, so each network holds at most a quota of the table (an eighth
//! by default, so at least eight networks always fit), refusals are counted, and the
//! table is hashed with a secret seed.

use crate::ident::{InterfaceIndex, PackedMac};
use crate::packet::Packet;
use crate::snapshot::NetworkUid;
use crate::table::U64Map;

/// Seconds a confirmed entry is used without asking again.
pub const REACHABLE_SECS: u32 = 60;
/// Seconds without a confirmation after which an entry is forgotten.
pub const EXPIRE_SECS: u32 = 300;
/// Least seconds between two ARP requests for one address.
pub const RETRY_SECS: u32 = 1;
/// Seconds a packet may wait for its next hop to answer.
pub const PENDING_SECS: u32 = 3;
/// Packets waiting for resolution, over all next hops.
pub const PENDING_CAPACITY: usize = 256;
/// Packets waiting for one next hop.
pub const PENDING_PER_NEIGHBOR: usize = 16;
/// Packets waiting for next hops of one network.
pub const PENDING_PER_NETWORK: usize = 64;
/// Networks that hold neighbours at once in one worker; past it, the quota refuses.
pub const MAX_NETWORKS_WITH_NEIGHBORS: usize = 4096;
/// Neighbours the table holds by default.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// The MAC of a neighbour not resolved yet.
const INCOMPLETE: PackedMac = PackedMac::NONE;

/// One neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// Its MAC, or `INCOMPLETE`.
    mac: PackedMac,
    /// Last confirmation (an ARP packet from it), worker seconds.
    pub confirmed: u32,
    /// Last ARP request sent for it, worker seconds.
    requested: u32,
}

impl Default for Neighbor {
    fn default() -> Self {
        Neighbor {
            mac: INCOMPLETE,
            confirmed: 0,
            requested: 0,
        }
    }
}

impl Neighbor {
    /// The MAC, when resolved.
    pub fn mac(&self) -> Option<PackedMac> {
        (self.mac != INCOMPLETE).then_some(self.mac)
    }
}

/// What forwarding towards a next hop should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The MAC to send to, if known.
    pub mac: Option<PackedMac>,
    /// Send an ARP request now.
    pub request: bool,
}

fn key(network: NetworkUid, ip: u32) -> u64 {
    (u64::from(network.0) << 32) | u64::from(ip)
}

/// A packet waiting for its next hop.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    /// The packet, as it will be sent (addresses not rewritten yet).
    pub pkt: Packet,
    /// Neighbour key it waits for.
    key: u64,
    /// Router interface index (in the snapshot of `generation`) it leaves through.
    pub interface: InterfaceIndex,
    /// Generation of the snapshot the interface index belongs to.
    pub generation: u64,
    /// When it started waiting.
    since: u32,
}

/// The table and the waiting packets. See the module documentation.
#[derive(Debug)]
pub struct NeighborTable {
    map: U64Map<Neighbor>,
    /// Entries per network uid.
    per_network: U64Map<u32>,
    /// Most entries one network may hold.
    quota: u32,
    /// Entries not created because their network held its quota.
    quota_refusals: u64,
    age_cursor: usize,
    pending: Vec<Waiting>,
}

impl NeighborTable {
    /// A table for up to `capacity` neighbours; all memory is taken here.
    pub fn new(capacity: usize) -> Self {
        Self::with_seed(capacity, 0)
    }

    /// As [`NeighborTable::new`], hashing with a secret `seed` so that addresses chosen
    /// by hosts cannot crowd one slot.
    pub fn with_seed(capacity: usize, seed: u64) -> Self {
        NeighborTable {
            map: U64Map::with_seed(capacity, seed),
            per_network: U64Map::with_max_len(MAX_NETWORKS_WITH_NEIGHBORS),
            quota: (capacity / 8).max(1) as u32,
            quota_refusals: 0,
            age_cursor: 0,
            pending: Vec::with_capacity(PENDING_CAPACITY),
        }
    }

    /// Neighbours held (complete or not).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no neighbour is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Packets waiting for a resolution.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Most entries one network may hold.
    pub fn quota(&self) -> u32 {
        self.quota
    }

    /// Entries held for `network`.
    pub fn count_in(&self, network: NetworkUid) -> u32 {
        self.per_network.get(u64::from(network.0)).unwrap_or(0)
    }

    /// Entries not created because their network held its quota.
    pub fn quota_refusals(&self) -> u64 {
        self.quota_refusals
    }

    /// Adds a new entry under `k` if its network has room in its quota (and the table
    /// has room); counts a refusal by quota.
    fn insert_new(&mut self, k: u64, entry: Neighbor) -> bool {
        let net = k >> 32;
        let count = self.per_network.get(net).unwrap_or(0);
        if count >= self.quota || (count == 0 && self.per_network.insert(net, 0).is_err()) {
            self.quota_refusals += 1;
            return false;
        }
        if self.map.insert(k, entry).is_err() {
            return false;
        }
        if let Some(c) = self.per_network.get_mut(net) {
            *c += 1;
        }
        true
    }

    /// What to do to reach `ip` on `network` at `now`: the MAC if known, and whether to
    /// send an ARP request (creating an incomplete entry if there is none and room).
    #[inline]
    pub fn resolve(&mut self, network: NetworkUid, ip: u32, now: u32) -> Resolution {
        let k = key(network, ip);
        match self.map.get_mut(k) {
            Some(n) => {
                let age = now.wrapping_sub(n.confirmed);
                let mac = match n.mac {
                    INCOMPLETE => None,
                    _ if age >= EXPIRE_SECS => None,
                    m => Some(m),
                };
                let due = mac.is_none() || age >= REACHABLE_SECS;
                let request = due && now.wrapping_sub(n.requested) >= RETRY_SECS;
                if request {
                    n.requested = now;
                }
                Resolution { mac, request }
            }
            None => {
                let entry = Neighbor {
                    requested: now,
                    ..Neighbor::default()
                };
                // A full table (or network quota) still gets the request out; the answer
                // then has nowhere to go, which the counters of the caller show as
                // unresolved drops.
                self.insert_new(k, entry);
                Resolution {
                    mac: None,
                    request: true,
                }
            }
        }
    }

    /// What [`NeighborTable::resolve`] would answer at `now`, changing nothing (for an
    /// explained packet: no entry created, no request time noted).
    pub fn would_resolve(&self, network: NetworkUid, ip: u32, now: u32) -> Resolution {
        match self.map.get(key(network, ip)) {
            Some(n) => {
                let age = now.wrapping_sub(n.confirmed);
                let mac = match n.mac {
                    INCOMPLETE => None,
                    _ if age >= EXPIRE_SECS => None,
                    m => Some(m),
                };
                let due = mac.is_none() || age >= REACHABLE_SECS;
                Resolution {
                    mac,
                    request: due && now.wrapping_sub(n.requested) >= RETRY_SECS,
                }
            }
            None => Resolution {
                mac: None,
                request: true,
            },
        }
    }

    /// Records that `ip` on `network` has `mac` (an ARP packet from it). Only addresses
    /// the table already tracks are updated unless `create` is set (an ARP request to one
    /// of our addresses: its sender will surely be talked to, as RFC 826 suggests).
    /// Returns true when an incomplete entry became complete or the MAC changed, so
    /// waiting packets may go.
    pub fn learn(
        &mut self,
        network: NetworkUid,
        ip: u32,
        mac: PackedMac,
        now: u32,
        create: bool,
    ) -> bool {
        let k = key(network, ip);
        let entry = Neighbor {
            mac,
            confirmed: now,
            requested: now,
        };
        match self.map.get_mut(k) {
            Some(n) => {
                let changed = n.mac != mac;
                *n = Neighbor {
                    requested: n.requested,
                    ..entry
                };
                changed
            }
            None if create => self.insert_new(k, entry),
            None => false,
        }
    }

    /// Queues `pkt` until `ip` on `network` resolves; gives it back when the queue (or the
    /// share of this next hop) is full.
    pub fn wait(
        &mut self,
        network: NetworkUid,
        ip: u32,
        pkt: Packet,
        interface: InterfaceIndex,
        generation: u64,
        now: u32,
    ) -> Result<(), Packet> {
        let k = key(network, ip);
        if self.pending.len() >= PENDING_CAPACITY {
            return Err(pkt);
        }
        let (mut same_hop, mut same_network) = (0, 0);
        for w in &self.pending {
            same_hop += usize::from(w.key == k);
            same_network += usize::from(w.key >> 32 == k >> 32);
        }
        if same_hop >= PENDING_PER_NEIGHBOR || same_network >= PENDING_PER_NETWORK {
            return Err(pkt);
        }
        self.pending.push(Waiting {
            pkt,
            key: k,
            interface,
            generation,
            since: now,
        });
        Ok(())
    }

    /// Takes out every waiting packet whose next hop is resolved now, with its MAC, up to
    /// `max` of them; keeps the order in which they arrived.
    pub fn take_resolved(&mut self, max: usize, mut out: impl FnMut(Waiting, PackedMac)) {
        let mut taken = 0;
        let mut i = 0;
        while i < self.pending.len() && taken < max {
            let w = self.pending[i];
            match self.map.get(w.key).and_then(|n| n.mac()) {
                Some(mac) => {
                    self.pending.remove(i);
                    out(w, mac);
                    taken += 1;
                }
                None => i += 1,
            }
        }
    }

    /// Takes out every packet that has waited [`PENDING_SECS`] or more, or all of them
    /// with `all` (the worker is stopping).
    pub fn take_expired(&mut self, now: u32, all: bool, mut out: impl FnMut(Packet)) {
        self.pending.retain(|w| {
            let expired = all || now.wrapping_sub(w.since) >= PENDING_SECS;
            if expired {
                out(w.pkt);
            }
            !expired
        });
    }

    /// Forgets up to `budget` slots' worth of entries not confirmed (nor asked for) in
    /// [`EXPIRE_SECS`]; returns how many went.
    pub fn age(&mut self, now: u32, budget: usize) -> usize {
        let per_network = &mut self.per_network;
        let (cursor, removed) = self.map.retain_slots(self.age_cursor, budget, |k, n| {
            let keep = now.wrapping_sub(n.confirmed.max(n.requested)) < EXPIRE_SECS;
            if !keep {
                let net = k >> 32;
                match per_network.get_mut(net) {
                    // A network whose last neighbour went gives its slot back.
                    Some(1) => {
                        per_network.remove(net);
                    }
                    Some(c) => *c -= 1,
                    None => debug_assert!(false, "neighbour without its network's count"),
                }
            }
            keep
        });
        self.age_cursor = cursor;
        removed
    }

    /// The entry for `ip` on `network`, if the table has one (complete or not).
    #[inline]
    pub fn get(&self, network: NetworkUid, ip: u32) -> Option<Neighbor> {
        self.map.get(key(network, ip))
    }

    /// Every entry as `(network uid, address, entry)`.
    pub fn entries(&self) -> impl Iterator<Item = (NetworkUid, u32, Neighbor)> + '_ {
        self.map
            .iter()
            .map(|(k, n)| (NetworkUid((k >> 32) as u32), k as u32, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(packed: u64) -> PackedMac {
        PackedMac::from_bits(packed)
    }

    const NET: NetworkUid = NetworkUid(7);
    const IP: u32 = 0xc612_0105;

    #[test]
    fn a_miss_asks_once_per_retry_interval_and_a_reply_completes() {
        let mut t = NeighborTable::new(16);
        assert_eq!(
            t.resolve(NET, IP, 100),
            Resolution {
                mac: None,
                request: true
            }
        );
        assert!(!t.resolve(NET, IP, 100).request, "asked twice in a second");
        assert!(t.resolve(NET, IP, 101).request);
        assert!(t.learn(NET, IP, m(0x0a0b_0c0d_0e0f), 101, false));
        let r = t.resolve(NET, IP, 102);
        assert_eq!(r.mac, Some(m(0x0a0b_0c0d_0e0f)));
        assert!(!r.request);
    }

    /// An explained packet's question gets the answer a real one would, and leaves the
    /// table as it was.
    #[test]
    fn would_resolve_answers_as_resolve_and_changes_nothing() {
        let mut t = NeighborTable::new(16);
        for (now, learn) in [
            (100, None),
            (100, None),
            (101, None),
            (101, Some(0x0a0b)),
            (102, None),
            (102 + REACHABLE_SECS, None),
            (102 + REACHABLE_SECS, None),
            (103 + EXPIRE_SECS, None),
        ] {
            if let Some(mac) = learn {
                t.learn(NET, IP, m(mac), now, false);
            }
            let before: Vec<_> = t.entries().collect();
            let asked = t.would_resolve(NET, IP, now);
            assert_eq!(t.entries().collect::<Vec<_>>(), before);
            assert_eq!(asked, t.resolve(NET, IP, now), "at {now}");
        }
    }

    #[test]
    fn unsolicited_answers_create_nothing_unless_asked_to() {
        let mut t = NeighborTable::new(16);
        assert!(!t.learn(NET, IP, m(1), 5, false));
        assert!(t.is_empty());
        assert!(t.learn(NET, IP, m(1), 5, true));
        assert_eq!(t.resolve(NET, IP, 6).mac, Some(m(1)));
    }

    #[test]
    fn a_stale_entry_is_used_while_it_is_asked_again_then_forgotten() {
        let mut t = NeighborTable::new(16);
        t.learn(NET, IP, m(9), 0, true);
        let r = t.resolve(NET, IP, REACHABLE_SECS);
        assert_eq!(r.mac, Some(m(9)));
        assert!(r.request, "a stale entry is re-confirmed");
        assert_eq!(t.resolve(NET, IP, EXPIRE_SECS).mac, None);
        assert_eq!(t.age(EXPIRE_SECS + RETRY_SECS * 300, 64), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn waiting_packets_are_bounded_released_in_order_and_expire() {
        let mut t = NeighborTable::new(16);
        let pkt = |n: u32| Packet {
            frame: n,
            ..Packet::default()
        };
        for n in 0..PENDING_PER_NEIGHBOR as u32 {
            t.wait(NET, IP, pkt(n), InterfaceIndex(0), 1, 10).unwrap();
        }
        assert!(t.wait(NET, IP, pkt(99), InterfaceIndex(0), 1, 10).is_err());
        t.wait(NET, IP + 1, pkt(100), InterfaceIndex(0), 1, 10)
            .unwrap();
        t.resolve(NET, IP, 10);
        t.learn(NET, IP, m(5), 11, false);
        let mut out = Vec::new();
        t.take_resolved(4, |w, mac| out.push((w.pkt.frame, mac.get())));
        assert_eq!(out, [(0, 5), (1, 5), (2, 5), (3, 5)]);
        let mut expired = Vec::new();
        t.take_expired(10 + PENDING_SECS - 1, false, |p| expired.push(p.frame));
        assert!(expired.is_empty());
        t.take_expired(10 + PENDING_SECS, false, |p| expired.push(p.frame));
        assert_eq!(expired.len(), PENDING_PER_NEIGHBOR - 4 + 1);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn each_network_holds_at_most_its_quota() {
        let mut t = NeighborTable::new(64);
        let quota = t.quota();
        assert_eq!(quota, 8);
        // A VM sends to every address of its subnet: only the quota becomes entries.
        for ip in 0..100 {
            t.resolve(NET, IP + ip, 10);
        }
        assert_eq!(t.count_in(NET), quota);
        assert_eq!(t.quota_refusals(), 100 - u64::from(quota));
        // Another network, and ARP that creates entries, still find room.
        let other = NetworkUid(8);
        assert!(t.learn(other, IP, m(1), 10, true));
        assert_eq!(t.count_in(other), 1);
        // Aging gives the quota back.
        assert_eq!(t.age(10 + EXPIRE_SECS, usize::MAX), quota as usize + 1);
        assert_eq!((t.count_in(NET), t.count_in(other)), (0, 0));
        assert!(t.is_empty());
        t.resolve(NET, IP, 400);
        assert_eq!(t.count_in(NET), 1);
    }

    #[test]
    fn each_network_holds_at_most_its_share_of_waiting_packets() {
        let mut t = NeighborTable::new(1024);
        let pkt = Packet::default();
        let mut queued = 0;
        for ip in 0..PENDING_CAPACITY as u32 {
            if t.wait(NET, IP + ip, pkt, InterfaceIndex(0), 1, 10).is_ok() {
                queued += 1;
            }
        }
        assert_eq!(queued, PENDING_PER_NETWORK);
        assert!(t
            .wait(NetworkUid(8), IP, pkt, InterfaceIndex(0), 1, 10)
            .is_ok());
    }
}
