//! Routing tables and addresses for the LPM benchmarks, and the structures the poptrie
//! in `pollux_dataplane::lpm` was measured against, shared by `benches/lpm.rs` and
//! `bin/lpm-instructions.rs` so both measure the same work.
//!
//! Everything is generated from fixed seeds: no external data.

use std::collections::HashMap;

use pollux_dataplane::lpm::{Lpm, LpmBuilder};

/// A route: prefix address, prefix length, value (a next-hop index).
pub type Route = (u32, u8, u32);

/// Next hops a generated table spreads its routes over.
const NEXT_HOPS: u64 = 256;

/// SplitMix64: a tiny, good-enough, seedable generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with this seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_be_bytes([a, b, c, d])
}

/// A Neutron router's table: a default route through the external gateway, connected
/// subnets (external, tenant networks), extra routes and a host route.
pub fn neutron_router() -> Vec<Route> {
    vec![
        (0, 0, 0),
        (ip(203, 0, 113, 0), 24, 1),
        (ip(10, 0, 0, 0), 24, 2),
        (ip(10, 0, 1, 0), 24, 3),
        (ip(10, 0, 2, 0), 24, 4),
        (ip(192, 168, 0, 0), 16, 5),
        (ip(172, 16, 0, 0), 12, 6),
        (ip(198, 18, 0, 0), 15, 7),
        (ip(198, 18, 7, 7), 32, 8),
        (ip(100, 64, 0, 0), 10, 9),
    ]
}

/// Share of each prefix length in a generated table, per mille: close to today's IPv4 BGP
/// table (mostly /24, then /16-/23), with more routes longer than /24 than a BGP feed
/// carries, as an internal table has.
const LENGTHS: [(u8, u32); 25] = [
    (8, 1),
    (9, 1),
    (10, 1),
    (11, 2),
    (12, 2),
    (13, 3),
    (14, 4),
    (15, 6),
    (16, 15),
    (17, 8),
    (18, 14),
    (19, 25),
    (20, 40),
    (21, 45),
    (22, 110),
    (23, 100),
    (24, 560),
    (25, 10),
    (26, 8),
    (27, 8),
    (28, 8),
    (29, 8),
    (30, 8),
    (31, 4),
    (32, 15),
];

/// A prefix length of at least `min`, drawn from [`LENGTHS`].
fn length(rng: &mut Rng, min: u8) -> u8 {
    let eligible = || LENGTHS.iter().filter(|&&(len, _)| len >= min);
    let total: u32 = eligible().map(|&(_, w)| w).sum();
    let mut pick = rng.below(u64::from(total)) as u32;
    for &(len, weight) in eligible() {
        if pick < weight {
            return len;
        }
        pick -= weight;
    }
    32
}

/// `n` distinct unicast routes shaped like a BGP table, the same for the same seed.
///
/// Real tables cluster: a network announces its allocation (a /8-/22) and more-specifics
/// inside it, often runs of adjacent /24s. So routes are generated per allocation: the
/// aggregate (60% of the time), then up to 512 more-specifics at lengths drawn from
/// [`LENGTHS`], 70% adjacent to the previous one; most share the allocation's next hop.
pub fn bgp_like(n: usize, seed: u64) -> Vec<Route> {
    let mut rng = Rng::new(seed);
    let mut routes: HashMap<(u32, u8), u32> = HashMap::with_capacity(n);
    while routes.len() < n {
        let block_len = [
            8u8, 9, 10, 11, 12, 13, 14, 14, 15, 15, 16, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20, 20,
            21, 22,
        ][rng.below(24) as usize];
        let size = 1u64 << (32 - block_len);
        // 1.0.0.0 up to 223.255.255.255: the unicast space.
        let base = ((1u64 << 24) + rng.below(223 << 24)) & !(size - 1);
        let hop = rng.below(NEXT_HOPS) as u32;
        if rng.below(10) < 6 {
            routes.insert((base as u32, block_len), hop);
        }
        let count = 1 + rng.below((1u64 << (24 - block_len)).min(512));
        let mut cursor = base + rng.below(size);
        for _ in 0..count {
            if routes.len() >= n {
                break;
            }
            let len = length(&mut rng, block_len + 1);
            let prefix_size = 1u64 << (32 - len);
            if rng.below(10) < 3 {
                cursor = base + rng.below(size);
            }
            let mut addr = cursor & !(prefix_size - 1);
            if addr >= base + size {
                addr = base;
            }
            cursor = addr + prefix_size;
            let value = if rng.below(4) == 0 {
                rng.below(NEXT_HOPS) as u32
            } else {
                hop
            };
            routes.insert((addr as u32, len), value);
        }
    }
    let mut routes: Vec<Route> = routes.into_iter().map(|((a, l), v)| (a, l, v)).collect();
    // HashMap order differs between runs; the table must not.
    routes.sort_unstable();
    routes
}

/// The table for `n` routes: [`neutron_router`] for 10, [`bgp_like`] otherwise.
pub fn table(n: usize) -> Vec<Route> {
    if n == 10 {
        neutron_router()
    } else {
        bgp_like(n, 42)
    }
}

/// `n` uniformly random addresses.
pub fn random_addrs(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.next_u64() as u32).collect()
}

/// `n` addresses each inside a random route of `routes` (traffic to routed destinations,
/// which walks deeper than random addresses, many of which hit no or a short route).
pub fn routed_addrs(routes: &[Route], n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let (addr, len, _) = routes[rng.below(routes.len() as u64) as usize];
            let host = (u64::from(u32::MAX) >> len) as u32;
            addr | (rng.next_u64() as u32 & host)
        })
        .collect()
}

/// A structure measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Structure {
    /// `pollux_dataplane::lpm`, as the router uses it.
    Poptrie,
    /// [`Multibit`] with its root stride adapted to the table: 8-8-8-8 below 65,536
    /// routes, 16-8-8 above.
    Multibit,
    /// [`Multibit`] with a 24-bit root: DIR-24-8.
    Dir24,
}

impl Structure {
    /// Every structure.
    pub const ALL: [Structure; 3] = [Structure::Poptrie, Structure::Multibit, Structure::Dir24];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Structure::Poptrie => "poptrie",
            Structure::Multibit => "multibit",
            Structure::Dir24 => "dir24",
        }
    }

    /// The structure with this name.
    pub fn from_name(name: &str) -> Option<Structure> {
        Structure::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Builds `routes` (distinct prefixes) into this structure.
    pub fn build(self, routes: &[Route]) -> Table {
        match self {
            Structure::Poptrie => {
                let mut b = LpmBuilder::new();
                for &(addr, len, value) in routes {
                    b.insert(addr, len, value);
                }
                Table::Poptrie(b.build())
            }
            Structure::Multibit => {
                let root = if routes.len() < 65536 { 8 } else { 16 };
                Table::Multibit(Multibit::build(routes, root))
            }
            Structure::Dir24 => Table::Multibit(Multibit::build(routes, 24)),
        }
    }
}

/// A built table of any structure.
#[derive(Clone, Debug)]
pub enum Table {
    /// The dataplane's table.
    Poptrie(Lpm),
    /// The multibit trie (or DIR-24-8).
    Multibit(Multibit),
}

impl Table {
    /// Looks up every address and returns the sum of the values found, so no lookup can
    /// be optimized away. Not inlined: the instruction counter counts inside it.
    #[inline(never)]
    pub fn lookup_all(&self, addrs: &[u32]) -> u64 {
        match self {
            Table::Poptrie(t) => addrs
                .iter()
                .map(|&a| t.lookup(a).map_or(0, u64::from))
                .sum(),
            Table::Multibit(t) => addrs
                .iter()
                .map(|&a| t.lookup(a).map_or(0, u64::from))
                .sum(),
        }
    }

    /// One lookup.
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        match self {
            Table::Poptrie(t) => t.lookup(addr),
            Table::Multibit(t) => t.lookup(addr),
        }
    }

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Table::Poptrie(t) => t.memory_bytes(),
            Table::Multibit(t) => t.memory_bytes(),
        }
    }
}

/// In a multibit entry, marks a child node index (otherwise a value index).
const CHILD: u32 = 1 << 31;

/// The alternative measured: a leaf-pushed multibit trie, a root of 2^`root_bits` entries
/// then 256-entry nodes (8-bit strides). Each entry is a child node index or the index of
/// the longest match's value (values are deduplicated, 0 is "no route"), so a lookup is
/// one load per level and one for the value, no population count; but every node costs
/// 1 KiB however few routes it holds.
#[derive(Clone, Debug)]
pub struct Multibit {
    root_bits: u32,
    entries: Box<[u32]>,
    values: Box<[Option<u32>]>,
}

/// `width` bits of `addr` starting `start` bits from the top.
fn bits(addr: u32, start: u32, width: u32) -> usize {
    ((u64::from(addr) << (32 + start)) >> (64 - width)) as usize
}

impl Multibit {
    /// Builds distinct-prefix `routes` with a root of `root_bits` (8, 16 or 24).
    ///
    /// Routes go in by increasing length, each filling its slot range at the level where
    /// it ends; a level's slots are therefore still leaves when a route fills them (only
    /// longer routes, inserted later, make children), and a new child starts as copies of
    /// the leaf it replaces (leaf pushing).
    pub fn build(routes: &[Route], root_bits: u32) -> Multibit {
        assert!(matches!(root_bits, 8 | 16 | 24));
        let mut sorted: Vec<(u8, u32, u32)> = routes.iter().map(|&(a, l, v)| (l, a, v)).collect();
        sorted.sort_unstable();
        let mut ids = HashMap::new();
        let mut values = vec![None];
        let mut entries = vec![0u32; 1 << root_bits];
        for (len, addr, value) in sorted {
            let len = u32::from(len);
            let id = *ids.entry(value).or_insert_with(|| {
                values.push(Some(value));
                values.len() as u32 - 1
            });
            let (mut base, mut start, mut width) = (0, 0, root_bits);
            while len > start + width {
                let at = base + bits(addr, start, width);
                let entry = entries[at];
                if entry & CHILD == 0 {
                    base = entries.len();
                    entries.extend(std::iter::repeat_n(entry, 256));
                    entries[at] = CHILD | base as u32;
                } else {
                    base = (entry & !CHILD) as usize;
                }
                start += width;
                width = 8;
            }
            let mask = (u64::from(u32::MAX) << (32 - len)) as u32;
            let first = base + bits(addr & mask, start, width);
            entries[first..first + (1 << (start + width - len))].fill(id);
        }
        Multibit {
            root_bits,
            entries: entries.into_boxed_slice(),
            values: values.into_boxed_slice(),
        }
    }

    /// The value of the longest prefix containing `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        let mut shift = 32 - self.root_bits;
        let mut entry = self.entries[(addr >> shift) as usize];
        while entry & CHILD != 0 {
            shift -= 8;
            entry = self.entries[(entry & !CHILD) as usize + ((addr >> shift) & 0xff) as usize];
        }
        self.values[entry as usize]
    }

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val(&*self.entries)
            + std::mem::size_of_val(&*self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tables_are_distinct_and_reproducible() {
        let a = bgp_like(20_000, 42);
        assert_eq!(a.len(), 20_000);
        assert_eq!(a, bgp_like(20_000, 42));
        let share_24 = a.iter().filter(|r| r.1 == 24).count() as f64 / a.len() as f64;
        assert!((0.4..0.7).contains(&share_24), "{share_24}");
    }

    #[test]
    fn every_structure_agrees() {
        for routes in [neutron_router(), bgp_like(5_000, 7)] {
            let tables: Vec<Table> = Structure::ALL.iter().map(|s| s.build(&routes)).collect();
            let routed = routed_addrs(&routes, 5_000, 2);
            assert!(routed.iter().all(|&a| tables[0].lookup(a).is_some()));
            let mut addrs = random_addrs(5_000, 1);
            addrs.extend(routed);
            for addr in addrs {
                let want = tables[0].lookup(addr);
                for t in &tables[1..] {
                    assert_eq!(t.lookup(addr), want, "{addr:#010x}");
                }
            }
        }
    }
}
