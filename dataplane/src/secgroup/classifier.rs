//! The rule classifier of one direction of one port: which allow rule, if any, admits a
//! packet's (remote address, protocol, port key).
//!
//! Chosen by measurement (see `bench/instructions.sh`, `sg_*` scenarios): tuple-space
//! search over the remote end, then a per-protocol interval table.
//!
//! - Rules with a remote prefix are grouped by prefix length (a *tuple*); each tuple is a
//!   sorted array of the distinct masked addresses, searched by bisection. A port's rules
//!   use few prefix lengths (Neutron rules are mostly `/0`, `/32` and a subnet or two), so
//!   a lookup is a handful of bisections whatever the rule count.
//! - Rules naming a remote group or address group share the group's [`AddressSet`] (in
//!   the snapshot, one per group, whatever the number of rules and ports using it): one
//!   membership test per set, then the set's bucket.
//! - A bucket holds, per protocol, the destination ports (ICMP: `type << 8 | code`) cut
//!   into elementary intervals, each with the first rule covering it, so overlapping
//!   ranges cost nothing at lookup; and the first any-protocol rule.
//!
//! Everything is built on the control thread; a lookup allocates nothing.

use crate::lpm::prefix_mask;
use std::collections::{BTreeMap, BinaryHeap};

/// No rule.
const NONE: u32 = u32::MAX;

/// An address the classifier matches remote ends on: IPv4 (`u32`) or IPv6 (`u128`), in
/// host byte order. The classifier is generic so that IPv6 rules get their own sets,
/// compiled the same way, and IPv4 lookups stay as they were.
pub trait SgAddr: Copy + Ord + Eq + core::hash::Hash + core::fmt::Debug + Default {
    /// Bits in an address (the longest prefix).
    const BITS: u8;
    /// The address with the bits after the first `len` cleared.
    fn masked(self, len: u8) -> Self;
}

impl SgAddr for u32 {
    const BITS: u8 = 32;

    #[inline(always)]
    fn masked(self, len: u8) -> Self {
        self & prefix_mask(len)
    }
}

impl SgAddr for u128 {
    const BITS: u8 = 128;

    #[inline(always)]
    fn masked(self, len: u8) -> Self {
        match len {
            0 => 0,
            l if l >= 128 => self,
            l => self & (u128::MAX << (128 - u32::from(l))),
        }
    }
}

/// Whom a compiled rule allows at the remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SgRemote<A: SgAddr = u32> {
    /// Any address.
    Any,
    /// Addresses within `addr/len` (host byte order).
    Prefix {
        /// Network address.
        addr: A,
        /// Prefix length, 0..=32 (IPv6: 0..=128).
        len: u8,
    },
    /// The members of an address set of the snapshot (a remote or address group).
    Set(u32),
}

/// One allow rule as the classifier takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SgRule<A: SgAddr = u32> {
    /// IP protocol; `None` is any (then `lo..=hi` is the whole range).
    pub proto: Option<u8>,
    /// First port key matched: destination port, or ICMP `type << 8 | code`.
    pub lo: u16,
    /// Last port key matched.
    pub hi: u16,
    /// Remote end.
    pub remote: SgRemote<A>,
    /// The rule's index in the snapshot's rule table (names, hit counters).
    pub id: u32,
}

impl<A: SgAddr> SgRule<A> {
    /// Whether the rule admits a packet from or to `remote` with `proto` and `port_key`
    /// (the reference semantics, used by tests against the classifier).
    pub fn matches(&self, sets: &[AddressSet<A>], remote: A, proto: u8, port_key: u16) -> bool {
        let proto_ok = self.proto.is_none_or(|p| p == proto);
        let port_ok = (self.lo..=self.hi).contains(&port_key);
        let remote_ok = match self.remote {
            SgRemote::Any => true,
            SgRemote::Prefix { addr, len } => remote.masked(len) == addr.masked(len),
            SgRemote::Set(s) => sets.get(s as usize).is_some_and(|s| s.contains(remote)),
        };
        proto_ok && port_ok && remote_ok
    }
}

/// The addresses of a remote group (its members' fixed IPs and allowed address pairs) or
/// an address group: single addresses in a sorted array, prefixes in a short list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSet<A: SgAddr = u32> {
    hosts: Box<[A]>,
    /// (network address, prefix length).
    prefixes: Box<[(A, u8)]>,
}

impl<A: SgAddr> AddressSet<A> {
    /// The set of `prefixes` (address, length; host byte order).
    pub fn new(prefixes: &[(A, u8)]) -> Self {
        let mut hosts: Vec<A> = prefixes
            .iter()
            .filter(|p| p.1 >= A::BITS)
            .map(|p| p.0)
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        let mut nets: Vec<(A, u8)> = prefixes
            .iter()
            .filter(|p| p.1 < A::BITS)
            .map(|&(a, l)| (a.masked(l), l))
            .collect();
        nets.sort_unstable();
        nets.dedup();
        AddressSet {
            hosts: hosts.into(),
            prefixes: nets.into(),
        }
    }

    /// Whether `ip` is in the set.
    #[inline]
    pub fn contains(&self, ip: A) -> bool {
        self.hosts.binary_search(&ip).is_ok()
            || self.prefixes.iter().any(|&(a, l)| ip.masked(l) == a)
    }

    /// Addresses and prefixes held.
    pub fn len(&self) -> usize {
        self.hosts.len() + self.prefixes.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Port keys of one protocol cut into elementary intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Intervals {
    /// Start of each interval, ascending, the first 0.
    starts: Box<[u16]>,
    /// First rule (lowest index into the rule list) covering each interval, or `NONE`.
    rules: Box<[u32]>,
}

impl Intervals {
    /// `ranges`: (lo, hi, order) with order the rule's position in the list.
    fn build(ranges: &[(u16, u16, u32)]) -> Self {
        // Sweep over the range ends: at each breakpoint, the lowest order still open.
        let mut events: BTreeMap<u32, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        events.entry(0).or_default();
        for &(lo, hi, order) in ranges {
            events.entry(u32::from(lo)).or_default().0.push(order);
            events.entry(u32::from(hi) + 1).or_default().1.push(order);
        }
        let mut open: BinaryHeap<std::cmp::Reverse<u32>> = BinaryHeap::new();
        let mut closed: BTreeMap<u32, u32> = BTreeMap::new();
        let mut starts = Vec::new();
        let mut rules: Vec<u32> = Vec::new();
        for (at, (adds, removes)) in events {
            if at > u32::from(u16::MAX) {
                break;
            }
            for o in adds {
                open.push(std::cmp::Reverse(o));
            }
            for o in removes {
                *closed.entry(o).or_default() += 1;
            }
            while let Some(&std::cmp::Reverse(top)) = open.peek() {
                match closed.get_mut(&top) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        open.pop();
                    }
                    _ => break,
                }
            }
            let first = open.peek().map_or(NONE, |r| r.0);
            if rules.last() != Some(&first) {
                starts.push(at as u16);
                rules.push(first);
            }
        }
        Intervals {
            starts: starts.into(),
            rules: rules.into(),
        }
    }

    #[inline]
    fn lookup(&self, key: u16) -> u32 {
        // The last interval starting at or before `key`; the first starts at 0.
        let i = self.starts.partition_point(|&s| s <= key);
        self.rules.get(i.wrapping_sub(1)).copied().unwrap_or(NONE)
    }
}

/// The rules of one remote key: per protocol, their intervals; and the first rule for
/// any protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Bucket {
    any_proto: u32,
    protos: Box<[(u8, Intervals)]>,
}

impl Bucket {
    fn build<A: SgAddr>(rules: &[(u32, SgRule<A>)]) -> Self {
        let any_proto = rules
            .iter()
            .filter(|(_, r)| r.proto.is_none())
            .map(|&(o, _)| o)
            .min()
            .unwrap_or(NONE);
        let mut by_proto: BTreeMap<u8, Vec<(u16, u16, u32)>> = BTreeMap::new();
        for &(o, r) in rules {
            if let Some(p) = r.proto {
                // A rule behind an earlier any-protocol rule never decides.
                if o < any_proto {
                    by_proto.entry(p).or_default().push((r.lo, r.hi, o));
                }
            }
        }
        Bucket {
            any_proto,
            protos: by_proto
                .into_iter()
                .map(|(p, ranges)| (p, Intervals::build(&ranges)))
                .collect(),
        }
    }

    #[inline]
    fn lookup(&self, proto: u8, key: u16) -> u32 {
        let mut best = self.any_proto;
        for (p, iv) in self.protos.iter() {
            if *p == proto {
                best = best.min(iv.lookup(key));
                break;
            }
        }
        best
    }
}

/// Remote prefixes of one length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tuple<A: SgAddr> {
    len: u8,
    /// Masked addresses, ascending.
    keys: Box<[A]>,
    buckets: Box<[Bucket]>,
}

/// The compiled rules of one direction of one port. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet<A: SgAddr = u32> {
    tuples: Box<[Tuple<A>]>,
    /// Rules on address sets: the set and its bucket.
    sets: Box<[(u32, Bucket)]>,
    /// Rule ids (into the snapshot's table) by position in the list given to `build`.
    ids: Box<[u32]>,
}

impl<A: SgAddr> RuleSet<A> {
    /// Compiles `rules` (their order decides which rule is reported when several match).
    pub fn build(rules: &[SgRule<A>]) -> Self {
        type Ordered<A> = Vec<(u32, SgRule<A>)>;
        let mut by_len: BTreeMap<u8, BTreeMap<A, Ordered<A>>> = BTreeMap::new();
        let mut by_set: BTreeMap<u32, Ordered<A>> = BTreeMap::new();
        for (order, r) in rules.iter().enumerate() {
            let order = order as u32;
            match r.remote {
                SgRemote::Any => by_len
                    .entry(0)
                    .or_default()
                    .entry(A::default())
                    .or_default()
                    .push((order, *r)),
                SgRemote::Prefix { addr, len } => {
                    let len = len.min(A::BITS);
                    by_len
                        .entry(len)
                        .or_default()
                        .entry(addr.masked(len))
                        .or_default()
                        .push((order, *r))
                }
                SgRemote::Set(s) => by_set.entry(s).or_default().push((order, *r)),
            }
        }
        // Longest prefixes first: the most specific remote is tried first.
        let tuples = by_len
            .into_iter()
            .rev()
            .map(|(len, keys)| Tuple {
                len,
                keys: keys.keys().copied().collect(),
                buckets: keys.values().map(|rs| Bucket::build(rs)).collect(),
            })
            .collect();
        RuleSet {
            tuples,
            sets: by_set
                .into_iter()
                .map(|(s, rs)| (s, Bucket::build(&rs)))
                .collect(),
            ids: rules.iter().map(|r| r.id).collect(),
        }
    }

    /// Whether the set holds no rule (everything but the implicit allows is dropped).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Rules held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The id of the first rule (in list order) admitting a packet with remote address
    /// `remote`, protocol `proto` and port key `key`, looking address-set rules up in
    /// `sets`; `None` when no rule does.
    #[inline]
    pub fn lookup(&self, sets: &[AddressSet<A>], remote: A, proto: u8, key: u16) -> Option<u32> {
        let mut best = NONE;
        for t in self.tuples.iter() {
            let masked = remote.masked(t.len);
            if let Ok(i) = t.keys.binary_search(&masked) {
                best = best.min(t.buckets[i].lookup(proto, key));
            }
        }
        for (set, bucket) in self.sets.iter() {
            if sets.get(*set as usize).is_some_and(|s| s.contains(remote)) {
                best = best.min(bucket.lookup(proto, key));
            }
        }
        self.ids.get(best as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(proto: Option<u8>, lo: u16, hi: u16, remote: SgRemote, id: u32) -> SgRule {
        SgRule {
            proto,
            lo,
            hi,
            remote,
            id,
        }
    }

    #[test]
    fn first_matching_rule_wins_and_no_rule_is_none() {
        let rules = [
            rule(Some(6), 80, 80, SgRemote::Any, 10),
            rule(
                Some(6),
                1,
                1024,
                SgRemote::Prefix {
                    addr: 0xc612_0100,
                    len: 24,
                },
                11,
            ),
            rule(None, 0, u16::MAX, SgRemote::Set(0), 12),
            rule(Some(1), 8 << 8, (8 << 8) | 255, SgRemote::Any, 13),
        ];
        let sets = [AddressSet::new(&[(0xc612_0909, 32)])];
        let rs = RuleSet::build(&rules);
        assert_eq!(rs.lookup(&sets, 1, 6, 80), Some(10));
        assert_eq!(rs.lookup(&sets, 0xc612_0105, 6, 22), Some(11));
        assert_eq!(rs.lookup(&sets, 0xc612_0205, 6, 22), None);
        assert_eq!(rs.lookup(&sets, 0xc612_0909, 17, 53), Some(12));
        assert_eq!(rs.lookup(&sets, 7, 1, 8 << 8), Some(13));
        assert_eq!(rs.lookup(&sets, 7, 1, 0), None);
        assert_eq!(RuleSet::build(&[]).lookup(&sets, 1, 6, 80), None);
    }

    #[test]
    fn overlapping_ranges_cut_into_intervals() {
        let iv = Intervals::build(&[(10, 20, 1), (15, 30, 0), (40, 40, 2)]);
        assert_eq!(iv.lookup(9), NONE);
        assert_eq!(iv.lookup(10), 1);
        assert_eq!(iv.lookup(15), 0);
        assert_eq!(iv.lookup(30), 0);
        assert_eq!(iv.lookup(31), NONE);
        assert_eq!(iv.lookup(40), 2);
        assert_eq!(iv.lookup(u16::MAX), NONE);
        let full = Intervals::build(&[(0, u16::MAX, 3)]);
        assert_eq!(full.lookup(0), 3);
        assert_eq!(full.lookup(u16::MAX), 3);
    }

    mod against_the_reference {
        use super::*;
        use proptest::prelude::*;

        /// Addresses and ports from small pools, so that rules and packets collide.
        fn remote() -> impl Strategy<Value = SgRemote> {
            prop_oneof![
                Just(SgRemote::Any),
                (
                    0u32..4,
                    prop_oneof![Just(8u8), Just(24), Just(30), Just(32), Just(0)]
                )
                    .prop_map(|(a, len)| SgRemote::Prefix {
                        addr: 0xc612_0000 | a << 2,
                        len
                    }),
                (0u32..3).prop_map(SgRemote::Set),
            ]
        }

        fn rule() -> impl Strategy<Value = SgRule> {
            (
                prop_oneof![Just(None), Just(Some(6u8)), Just(Some(17)), Just(Some(1))],
                0u16..40,
                0u16..40,
                remote(),
            )
                .prop_map(|(proto, a, b, remote)| {
                    let (lo, hi) = if proto.is_none() {
                        (0, u16::MAX)
                    } else {
                        (a.min(b), a.max(b))
                    };
                    SgRule {
                        proto,
                        lo,
                        hi,
                        remote,
                        id: 0,
                    }
                })
        }

        proptest! {
            /// The classifier admits exactly what some rule admits, and names the first
            /// such rule of the list.
            #[test]
            fn lookup_is_the_first_matching_rule(
                mut rules in proptest::collection::vec(rule(), 0..40),
                packets in proptest::collection::vec(
                    (0u32..16, prop_oneof![Just(6u8), Just(17), Just(1), Just(47)], 0u16..42),
                    1..60,
                ),
            ) {
                for (i, r) in rules.iter_mut().enumerate() {
                    r.id = 100 + i as u32;
                }
                let sets = [
                    AddressSet::new(&[(0xc612_0004, 32), (0xc612_0008, 30)]),
                    AddressSet::new(&[(0xc612_0000, 28)]),
                    AddressSet::new(&[]),
                ];
                let rs = RuleSet::build(&rules);
                for (host, proto, key) in packets {
                    let ip = 0xc612_0000 | host;
                    let expected = rules
                        .iter()
                        .find(|r| r.matches(&sets, ip, proto, key))
                        .map(|r| r.id);
                    prop_assert_eq!(rs.lookup(&sets, ip, proto, key), expected);
                }
            }
        }
    }
}
