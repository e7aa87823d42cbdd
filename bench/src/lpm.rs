//! Routing tables and addresses for the LPM benchmarks, and the structures measured,
//! shared by `benches/lpm.rs` and `bin/lpm-instructions.rs` so both measure the same
//! work: `pollux_dataplane::lpm` in the shape it picks, the same trie with 8-bit strides
//! everywhere, and a poptrie (kept here: it lost, see `pollux_dataplane::lpm`).
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

/// `n` small router tables, different for each router, as a host with many Neutron routers
/// has them: a default route, then 9 of tenant subnets (mostly /24s in 10.0.0.0/8, some in
/// 192.168.0.0/16 or anywhere), extra routes (/16-/28) and host routes (/32).
pub fn routers(n: usize, seed: u64) -> Vec<Vec<Route>> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut routes = vec![(0, 0, 0)];
            while routes.len() < 10 {
                let x = rng.next_u64() as u32;
                let (addr, len) = match rng.below(10) {
                    0..=4 => (10 << 24 | (x & 0x00ff_ff00), 24),
                    5 => (ip(192, 168, 0, 0) | (x & 0xff00), 24),
                    6 => (x, 24),
                    7 => (x, 16 + (x % 13) as u8),
                    _ => (x, 32),
                };
                let addr = addr & (u64::from(u32::MAX) << (32 - len)) as u32;
                if !routes.iter().any(|&(a, l, _)| (a, l) == (addr, len)) {
                    routes.push((addr, len, routes.len() as u32));
                }
            }
            routes
        })
        .collect()
}

/// `n` lookups spread over `tables`: a random table's index and an address inside one of
/// its routes.
pub fn spread_lookups(tables: &[Vec<Route>], n: usize, seed: u64) -> Vec<(u32, u32)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let t = rng.below(tables.len() as u64) as usize;
            let (addr, len, _) = tables[t][rng.below(tables[t].len() as u64) as usize];
            let host = (u64::from(u32::MAX) >> len) as u32;
            (t as u32, addr | (rng.next_u64() as u32 & host))
        })
        .collect()
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

/// A prefix length of at least `min`, drawn from `LENGTHS`.
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
/// `LENGTHS`, 70% adjacent to the previous one; most share the allocation's next hop.
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
    /// `pollux_dataplane::lpm` as the router uses it: 8-4-4-4-4-4-4 below 4,096 routes,
    /// 16-8-8 below 131,072, DIR-24-8 above.
    Lpm,
    /// The same trie with 8-bit strides: 8-8-8-8 below 65,536 routes, 16-8-8 above.
    Multibit8,
    /// [`Poptrie`].
    Poptrie,
}

impl Structure {
    /// Every structure.
    pub const ALL: [Structure; 3] = [Structure::Lpm, Structure::Multibit8, Structure::Poptrie];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Structure::Lpm => "lpm",
            Structure::Multibit8 => "multibit8",
            Structure::Poptrie => "poptrie",
        }
    }

    /// The structure with this name.
    pub fn from_name(name: &str) -> Option<Structure> {
        Structure::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Builds `routes` (distinct prefixes) into this structure.
    pub fn build(self, routes: &[Route]) -> Table {
        let builder = || {
            let mut b = LpmBuilder::new();
            for &(addr, len, value) in routes {
                b.insert(addr, len, value);
            }
            b
        };
        match self {
            Structure::Lpm => Table::Lpm(builder().build()),
            Structure::Multibit8 => {
                let root = if routes.len() < 65536 { 8 } else { 16 };
                Table::Lpm(builder().build_with(root, 8))
            }
            Structure::Poptrie => Table::Poptrie(Poptrie::build(routes)),
        }
    }
}

/// A built table of any structure.
#[derive(Clone, Debug)]
pub enum Table {
    /// The dataplane's trie, in some shape.
    Lpm(Lpm),
    /// The poptrie.
    Poptrie(Poptrie),
}

impl Table {
    /// Looks up every address and returns the sum of the values found, so no lookup can
    /// be optimized away. Not inlined: the instruction counter counts inside it.
    #[inline(never)]
    pub fn lookup_all(&self, addrs: &[u32]) -> u64 {
        match self {
            Table::Lpm(t) => addrs
                .iter()
                .map(|&a| t.lookup(a).map_or(0, u64::from))
                .sum(),
            Table::Poptrie(t) => addrs
                .iter()
                .map(|&a| t.lookup(a).map_or(0, u64::from))
                .sum(),
        }
    }

    /// Looks up each `(table, address)` of `queries` in `tables[table]`; the sum of the
    /// values found, as [`Table::lookup_all`].
    #[inline(never)]
    pub fn lookup_spread(tables: &[Table], queries: &[(u32, u32)]) -> u64 {
        queries
            .iter()
            .map(|&(t, a)| tables[t as usize].lookup(a).map_or(0, u64::from))
            .sum()
    }

    /// One lookup.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        match self {
            Table::Lpm(t) => t.lookup(addr),
            Table::Poptrie(t) => t.lookup(addr),
        }
    }

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        match self {
            Table::Lpm(t) => t.memory_bytes(),
            Table::Poptrie(t) => t.memory_bytes(),
        }
    }
}

/// Bits consumed by each subtree node: 64 slots, so each bitmap is one `u64`.
const STRIDE: u32 = 6;

/// In a direct entry, marks a leaf index (otherwise the entry is a node index).
const LEAF: u32 = 1 << 31;

/// A node of the builder's binary trie: one per prefix bit on the path to a route.
#[derive(Clone, Copy, Debug, Default)]
struct Bit {
    /// Index of the child for a 0 and a 1 bit; 0 means none (index 0 is never a child).
    child: [u32; 2],
    /// The route ending exactly here, if any.
    value: Option<u32>,
}

/// The root of the builder's binary trie; index 0 is a placeholder so 0 can mean "none".
const ROOT: u32 = 1;

/// Collects routes for a [`Poptrie`] in a binary trie, which building walks in address
/// order.
#[derive(Clone, Debug)]
struct PoptrieBuilder {
    bits: Vec<Bit>,
    routes: usize,
}

/// One slot of an expanded node while building: a leaf, or a subtree still to build
/// (its binary-trie node and the longest match inherited from above it).
#[derive(Clone, Copy, Debug)]
enum Slot {
    Leaf(Option<u32>),
    Subtree(u32, Option<u32>),
}

impl PoptrieBuilder {
    fn new() -> Self {
        PoptrieBuilder {
            bits: vec![Bit::default(); 2],
            routes: 0,
        }
    }

    /// Adds (or replaces) prefix `addr/len` → `value`. Host bits of `addr` are ignored.
    fn insert(&mut self, addr: u32, len: u8, value: u32) {
        assert!(len <= 32, "prefix length {len} is longer than 32");
        let mut at = ROOT as usize;
        for depth in 0..u32::from(len) {
            let bit = ((addr >> (31 - depth)) & 1) as usize;
            let mut next = self.bits[at].child[bit];
            if next == 0 {
                next = u32::try_from(self.bits.len()).expect("fewer than 2^32 trie nodes");
                self.bits.push(Bit::default());
                self.bits[at].child[bit] = next;
            }
            at = next as usize;
        }
        if self.bits[at].value.replace(value).is_none() {
            self.routes += 1;
        }
    }

    /// Compiles the routes, with a direct array sized for their number: 6 bits (256 bytes)
    /// below 1,024 routes, 12 bits (16 KiB) below 65,536, 18 bits (1 MiB) above. Node
    /// boundaries then fall at 6, 12, 18 and 24 bits in every case.
    fn build(&self) -> Poptrie {
        let bits = match self.routes {
            0..1024 => 6,
            1024..65536 => 12,
            _ => 18,
        };
        self.build_with_direct_bits(bits)
    }

    /// Compiles the routes with a direct array of 2^`bits` entries (1..=24).
    fn build_with_direct_bits(&self, bits: u8) -> Poptrie {
        assert!((1..=24).contains(&bits), "direct bits {bits} not in 1..=24");
        let bits = u32::from(bits);
        let mut out = Compiled::default();
        let mut slots = Vec::with_capacity(1 << bits);
        self.expand(ROOT, 0, bits, None, &mut slots);
        let mut direct = Vec::with_capacity(slots.len());
        let mut subtrees = Vec::new();
        let mut last = None;
        for slot in slots {
            match slot {
                Slot::Leaf(value) => {
                    // Consecutive direct entries with the same answer share a leaf.
                    if last != Some(value) {
                        out.leaves.push(value);
                        last = Some(value);
                    }
                    direct.push(LEAF | index(out.leaves.len() - 1));
                }
                Slot::Subtree(bit, inherited) => {
                    direct.push(index(out.nodes.len()));
                    out.nodes.push(Node::default());
                    subtrees.push((bit, inherited));
                    last = None;
                }
            }
        }
        for (i, (bit, inherited)) in subtrees.into_iter().enumerate() {
            self.build_node(&mut out, i, bit, inherited);
        }
        Poptrie {
            direct_shift: 32 - bits,
            direct: direct.into_boxed_slice(),
            nodes: out.nodes.into_boxed_slice(),
            leaves: out.leaves.into_boxed_slice(),
        }
    }

    /// Appends to `out` the 2^(`width` - `level`) slots under binary-trie node `bit`, which
    /// sits `level` bits below the node being expanded: the longest match for each slot
    /// (`best` is the one inherited from above), or the subtree holding longer routes.
    fn expand(&self, bit: u32, level: u32, width: u32, best: Option<u32>, out: &mut Vec<Slot>) {
        if bit == 0 {
            out.extend(std::iter::repeat_n(Slot::Leaf(best), 1 << (width - level)));
            return;
        }
        let node = self.bits[bit as usize];
        let best = node.value.or(best);
        if level == width {
            out.push(if node.child == [0, 0] {
                Slot::Leaf(best)
            } else {
                Slot::Subtree(bit, best)
            });
            return;
        }
        self.expand(node.child[0], level + 1, width, best, out);
        self.expand(node.child[1], level + 1, width, best, out);
    }

    /// Fills `out.nodes[at]` (already reserved) with the subtree at binary-trie node `bit`,
    /// appending its leaves and reserving its children contiguously, then recursing.
    fn build_node(&self, out: &mut Compiled, at: usize, bit: u32, inherited: Option<u32>) {
        let mut slots = Vec::with_capacity(1 << STRIDE);
        self.expand(bit, 0, STRIDE, inherited, &mut slots);
        let mut node = Node {
            children: 0,
            leaf_runs: 0,
            first_leaf: index(out.leaves.len()),
            first_child: index(out.nodes.len()),
        };
        let mut subtrees = Vec::new();
        let mut last = None;
        for (i, slot) in slots.into_iter().enumerate() {
            match slot {
                Slot::Leaf(value) => {
                    // A child slot between two equal leaves does not break their run:
                    // lookups count runs only over leaf slots.
                    if last != Some(value) {
                        node.leaf_runs |= 1 << i;
                        out.leaves.push(value);
                        last = Some(value);
                    }
                }
                Slot::Subtree(child, best) => {
                    node.children |= 1 << i;
                    subtrees.push((child, best));
                }
            }
        }
        let first = out.nodes.len();
        out.nodes
            .extend(std::iter::repeat_n(Node::default(), subtrees.len()));
        out.nodes[at] = node;
        for (i, (child, best)) in subtrees.into_iter().enumerate() {
            self.build_node(out, first + i, child, best);
        }
    }
}

/// An index into the compiled arrays, which stay far below 2^31 entries (one node or leaf
/// per slot of a route's path at most, and routes are bounded by the configuration).
fn index(i: usize) -> u32 {
    let i = u32::try_from(i).expect("index below 2^31");
    assert!(i < LEAF, "index below 2^31");
    i
}

/// The arrays under construction.
#[derive(Debug, Default)]
struct Compiled {
    nodes: Vec<Node>,
    leaves: Vec<Option<u32>>,
}

/// A subtree node: 64 slots in 24 bytes. Slot `i` is bit `i` of both bitmaps.
///
/// Aligned to 32 bytes so a node never straddles two cache lines (3 in 8 would at 24):
/// 10-15% faster lookups in a full table for 12% more memory.
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(32))]
struct Node {
    /// Slots that are child nodes.
    children: u64,
    /// Leaf slots whose leaf differs from the previous leaf slot's (a run starts).
    leaf_runs: u64,
    /// Index in `leaves` of this node's first leaf run.
    first_leaf: u32,
    /// Index in `nodes` of this node's first child.
    first_child: u32,
}

/// A poptrie (Asai and Ohara, SIGCOMM 2015): the top `s` bits index a direct array of
/// leaves and subtree roots; a subtree node consumes 6 bits, one of 64 slots, each a child
/// node or a leaf-pushed answer. Nodes are compressed with two bitmaps (slots that are
/// children; slots where a run of equal leaves starts), children and leaf runs are
/// contiguous, and a slot's child or leaf is found by a population count.
#[derive(Clone, Debug)]
pub struct Poptrie {
    /// `32 - s` for a direct array of 2^s entries.
    direct_shift: u32,
    /// `LEAF | leaf index`, or a node index.
    direct: Box<[u32]>,
    nodes: Box<[Node]>,
    leaves: Box<[Option<u32>]>,
}

impl Poptrie {
    /// Builds distinct-prefix `routes`.
    pub fn build(routes: &[Route]) -> Poptrie {
        let mut b = PoptrieBuilder::new();
        for &(addr, len, value) in routes {
            b.insert(addr, len, value);
        }
        b.build()
    }

    /// The value of the longest prefix containing `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        let entry = self.direct[(addr >> self.direct_shift) as usize];
        if entry & LEAF != 0 {
            return self.leaves[(entry & !LEAF) as usize];
        }
        let mut node = &self.nodes[entry as usize];
        // The address in the top half of a u64, so the last node's slot (which may reach
        // past bit 32) reads zeros; the builder expanded routes over those bits too.
        let key = u64::from(addr) << 32;
        let mut depth = 32 - self.direct_shift;
        loop {
            let slot = (key << depth) >> (64 - STRIDE);
            let up_to_slot = u64::MAX >> (63 - slot);
            if node.children & (1 << slot) == 0 {
                let run = (node.leaf_runs & up_to_slot).count_ones();
                return self.leaves[(node.first_leaf + run - 1) as usize];
            }
            let child = (node.children & up_to_slot).count_ones();
            node = &self.nodes[(node.first_child + child - 1) as usize];
            // Terminates: a node at depth d has children only if a route is longer than
            // d + 6, so depth never passes 30.
            depth += STRIDE;
        }
    }

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val(&*self.direct)
            + std::mem::size_of_val(&*self.nodes)
            + std::mem::size_of_val(&*self.leaves)
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
    fn router_tables_have_10_distinct_routes() {
        let tables = routers(100, 3);
        for t in &tables {
            let mut b = LpmBuilder::new();
            t.iter().for_each(|&(a, l, v)| b.insert(a, l, v));
            assert_eq!(b.len(), 10);
        }
        let built: Vec<Table> = tables.iter().map(|t| Structure::Lpm.build(t)).collect();
        let queries = spread_lookups(&tables, 1000, 4);
        assert!(queries
            .iter()
            .all(|&(t, a)| built[t as usize].lookup(a).is_some()));
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
