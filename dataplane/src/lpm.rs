//! IPv4 longest-prefix match for the router stage: a poptrie.
//!
//! Every router has its own table (connected subnets, a default route through the
//! external gateway, extra routes), so a small table must cost little: 1,000 routers of
//! 10 routes each should not need a 2^16 or 2^24 array apiece. A single table must also
//! hold a full Internet table (1,000,000 routes) and stay fast. [`LpmBuilder`] collects
//! routes on the control thread; [`LpmBuilder::build`] compiles them into an immutable
//! [`Lpm`] that lives in the snapshot and is only read by workers.
//!
//! # Structure
//!
//! A poptrie (Asai and Ohara, "Poptrie: a compressed trie with population count for fast
//! and scalable software IP routing table lookup", SIGCOMM 2015):
//!
//! - The top `s` bits of the address index a *direct* array. Each entry is either a leaf
//!   (the answer for that whole `/s`) or the root of a subtree.
//! - A subtree node consumes 6 more bits, one of 64 *slots*. Routes are leaf-pushed: a slot
//!   is either a child node (some route in it is longer than the node's depth + 6) or a
//!   leaf holding the longest match for the whole slot. Nodes are compressed with two
//!   bitmaps: `children` marks the slots that are child nodes, `leaf_runs` marks each slot
//!   where a run of equal leaves starts. A node's children are contiguous in `nodes` and
//!   its leaf runs contiguous in `leaves`, so the index of a slot's child or leaf is the
//!   node's base plus a population count of the bitmap below it. A node is 32 bytes
//!   whatever its shape, and a leaf is stored once per run, not once per slot.
//! - `s` adapts to the table: 6 bits (256 bytes) below 1,024 routes, 12 bits (16 KiB) below
//!   65,536 routes, 18 bits (1 MiB) above. Depths 6, 12, 18, 24 are node boundaries in every
//!   case, so the common `/24` and `/16` routes end exactly on a boundary and need no node
//!   below them.
//!
//! A lookup is one direct entry, then at most `(32 - s) / 6` rounded up nodes (3 for a
//! large table, 5 for a small one), then one leaf: a few dependent loads, a shift, a
//! population count and a branch per level, no allocation. Values are arbitrary `u32`s:
//! leaves are `Option<u32>`, so no value is reserved.
//!
//! # Why this structure: measurements
//!
//! Compared with a leaf-pushed multibit trie with 8-bit strides whose root stride adapts
//! (8-8-8-8 for small tables, 16-8-8 for large ones) and with DIR-24-8 (24-8). All three
//! are in `bench/src/lpm.rs`; `cargo bench -p pollux-bench --bench lpm` and
//! `bench/lpm-instructions.sh` reproduce the figures. Tables: 10 routes as a Neutron
//! router has them, and 1,000,000 routes with a BGP-like length mix (60% `/24`, 36%
//! `/16`-`/23`, 2% `/8`-`/15`, 7% longer than `/24`, clustered in allocations), fixed
//! seed. Lookups: uniformly random addresses, and addresses inside a random route.
//! AMD EPYC (Zen 5) KVM guest, 2 vCPUs shared with other builds, so times are ±30%;
//! instruction counts are exact.
//!
//! | | poptrie | multibit 8/16-8-8 | DIR-24-8 |
//! |---|---|---|---|
//! | 10 routes: memory | 0.5 KiB (1.5 KiB scattered) | 3 KiB (21 KiB scattered) | 64 MiB |
//! | 10 routes: ns/lookup random / routed | TODO | TODO | TODO |
//! | 10 routes: instructions/lookup random / routed | TODO | TODO | TODO |
//! | 1M routes: memory | TODO | TODO | TODO |
//! | 1M routes: build | TODO | TODO | TODO |
//! | 1M routes: ns/lookup random / routed | TODO | TODO | TODO |
//! | 1M routes: instructions/lookup random / routed | TODO | TODO | TODO |
//!
//! ("Scattered": 10 routes of lengths /16, /24 and /32 in unrelated parts of the address
//! space, which costs the multibit trie two 1 KiB nodes per route.)
//!
//! The multibit trie needs fewer instructions per level (no population count) and wins on
//! tiny tables by a few nanoseconds, but costs up to ~20 KiB per small router and ~100 MB
//! for a full table, where every lookup leaves the cache; the poptrie is 10 times smaller
//! at both ends, keeps a full table in the last-level cache, and is as fast there. Without
//! a `popcnt` target feature (the default `x86-64` target) `count_ones` is a dozen
//! instructions; building with `-C target-cpu=x86-64-v2` or later makes it one and takes
//! about a third off the poptrie's lookup time. [`Lpm::lookup_batch`] is a plain loop:
//! lookups of different addresses are independent, so the core already overlaps their
//! cache misses; a hand-interleaved version (8 addresses advanced level by level) measured
//! no faster.

use std::fmt;

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

/// Collects routes for an [`Lpm`]. Lives on the control thread and may allocate.
///
/// The routes are kept in a binary trie, so inserting replaces in place and building
/// walks the routes in address order without sorting.
#[derive(Clone, Debug)]
pub struct LpmBuilder {
    bits: Vec<Bit>,
    routes: usize,
}

impl Default for LpmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// One slot of an expanded node while building: a leaf, or a subtree still to build
/// (its binary-trie node and the longest match inherited from above it).
#[derive(Clone, Copy, Debug)]
enum Slot {
    Leaf(Option<u32>),
    Subtree(u32, Option<u32>),
}

impl LpmBuilder {
    /// An empty table.
    pub fn new() -> Self {
        LpmBuilder {
            bits: vec![Bit::default(); 2],
            routes: 0,
        }
    }

    /// Adds (or replaces) prefix `addr/len` → `value`. Host bits of `addr` are ignored.
    ///
    /// # Panics
    ///
    /// If `len` is greater than 32 (validation rejects such routes before they get here).
    pub fn insert(&mut self, addr: u32, len: u8, value: u32) {
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

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.routes
    }

    /// True when no route has been inserted.
    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// Compiles the routes, with a direct array sized for their number (see the module
    /// documentation).
    pub fn build(&self) -> Lpm {
        let bits = match self.routes {
            0..1024 => 6,
            1024..65536 => 12,
            _ => 18,
        };
        self.build_with_direct_bits(bits)
    }

    /// Compiles the routes with a direct array of 2^`bits` entries, for tests and
    /// benchmarks of the choice [`LpmBuilder::build`] makes.
    ///
    /// # Panics
    ///
    /// If `bits` is not in 1..=24.
    pub fn build_with_direct_bits(&self, bits: u8) -> Lpm {
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
        Lpm {
            direct_shift: 32 - bits,
            direct: direct.into_boxed_slice(),
            nodes: out.nodes.into_boxed_slice(),
            leaves: out.leaves.into_boxed_slice(),
            routes: self.routes,
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
#[derive(Default)]
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

/// A compiled routing table: immutable, shared by workers through the snapshot.
#[derive(Clone)]
pub struct Lpm {
    /// `32 - s` for a direct array of 2^s entries.
    direct_shift: u32,
    /// `LEAF | leaf index`, or a node index.
    direct: Box<[u32]>,
    nodes: Box<[Node]>,
    leaves: Box<[Option<u32>]>,
    routes: usize,
}

impl Lpm {
    /// The value of the longest prefix containing `addr` (host byte order), if any.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        self.find(addr)
    }

    /// The lookup itself, always inlined so that [`Lpm::lookup_batch`]'s loop never
    /// makes a call per address (measured: a third slower when it did).
    #[inline(always)]
    fn find(&self, addr: u32) -> Option<u32> {
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

    /// Fills `out[i]` with `lookup(addrs[i])`, for the first `min(addrs.len(), out.len())`
    /// addresses (callers pass slices of equal length).
    ///
    /// A plain loop: the lookups are independent, so the core overlaps their loads
    /// without help (see the module documentation).
    pub fn lookup_batch(&self, addrs: &[u32], out: &mut [Option<u32>]) {
        debug_assert_eq!(addrs.len(), out.len());
        for (addr, out) in addrs.iter().zip(out) {
            *out = self.find(*addr);
        }
    }

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val(&*self.direct)
            + std::mem::size_of_val(&*self.nodes)
            + std::mem::size_of_val(&*self.leaves)
    }

    /// Number of distinct prefixes in the table.
    pub fn routes(&self) -> usize {
        self.routes
    }
}

/// A summary: the arrays of a full table are megabytes long.
impl fmt::Debug for Lpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lpm")
            .field("routes", &self.routes)
            .field("direct_bits", &(32 - self.direct_shift))
            .field("nodes", &self.nodes.len())
            .field("leaves", &self.leaves.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> u32 {
        u32::from_be_bytes([a, b, c, d])
    }

    fn table(routes: &[(u32, u8, u32)]) -> LpmBuilder {
        let mut b = LpmBuilder::new();
        for &(addr, len, value) in routes {
            b.insert(addr, len, value);
        }
        b
    }

    /// The table built every way that matters: adaptive (6 direct bits below 1,024
    /// routes), and with each other direct size it picks, plus odd ones (1 bit, and 7 so
    /// node boundaries fall off the multiples of 6).
    fn builds(b: &LpmBuilder) -> Vec<Lpm> {
        let mut all = vec![b.build()];
        all.extend([1, 7, 12, 18].map(|bits| b.build_with_direct_bits(bits)));
        all
    }

    /// The longest matching prefix by linear scan; later routes replace equal prefixes.
    fn naive(routes: &[(u32, u8, u32)], addr: u32) -> Option<u32> {
        let mut best: Option<(u8, u32)> = None;
        for &(prefix, len, value) in routes {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            if (addr ^ prefix) & mask == 0 && best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, value));
            }
        }
        best.map(|(_, v)| v)
    }

    /// Every prefix's first and last address and their neighbours, plus the extremes.
    fn adversarial(routes: &[(u32, u8, u32)]) -> Vec<u32> {
        let mut addrs = vec![0, 1, u32::MAX - 1, u32::MAX];
        for &(prefix, len, _) in routes {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let (first, last) = (prefix & mask, prefix | !mask);
            addrs.extend([
                first,
                last,
                first.wrapping_sub(1),
                first.wrapping_add(1),
                last.wrapping_sub(1),
                last.wrapping_add(1),
            ]);
        }
        addrs
    }

    fn check(routes: &[(u32, u8, u32)], addrs: &[u32]) {
        let b = table(routes);
        for lpm in builds(&b) {
            let mut out = vec![Some(0xdead); addrs.len()];
            lpm.lookup_batch(addrs, &mut out);
            for (&addr, &batch) in addrs.iter().zip(&out) {
                let want = naive(routes, addr);
                assert_eq!(lpm.lookup(addr), want, "{addr:#010x} in {lpm:?}");
                assert_eq!(batch, want, "batch {addr:#010x} in {lpm:?}");
            }
        }
    }

    #[test]
    fn empty_table_matches_nothing() {
        let b = LpmBuilder::new();
        assert!(b.is_empty());
        for lpm in builds(&b) {
            assert_eq!(lpm.routes(), 0);
            for addr in [0, 1, ip(10, 0, 0, 1), u32::MAX] {
                assert_eq!(lpm.lookup(addr), None);
            }
        }
    }

    #[test]
    fn default_route_matches_everything_not_more_specific() {
        let routes = [(0, 0, 7), (ip(10, 0, 0, 0), 8, 1)];
        check(&routes, &adversarial(&routes));
        let lpm = table(&routes).build();
        assert_eq!(lpm.lookup(ip(8, 8, 8, 8)), Some(7));
        assert_eq!(lpm.lookup(ip(10, 1, 2, 3)), Some(1));
    }

    #[test]
    fn host_routes_match_only_their_address() {
        let routes = [
            (ip(198, 18, 0, 1), 32, 1),
            (ip(198, 18, 0, 2), 32, 2),
            (0, 32, 3),
            (u32::MAX, 32, 4),
        ];
        check(&routes, &adversarial(&routes));
        let lpm = table(&routes).build();
        assert_eq!(lpm.lookup(ip(198, 18, 0, 2)), Some(2));
        assert_eq!(lpm.lookup(ip(198, 18, 0, 3)), None);
        assert_eq!(lpm.lookup(0), Some(3));
        assert_eq!(lpm.lookup(u32::MAX), Some(4));
    }

    #[test]
    fn overlapping_prefixes_pick_the_longest() {
        let routes = [
            (ip(198, 18, 0, 0), 15, 1),
            (ip(198, 18, 0, 0), 16, 2),
            (ip(198, 18, 1, 0), 24, 3),
            (ip(198, 18, 1, 128), 25, 4),
            (ip(198, 18, 1, 130), 31, 5),
        ];
        check(&routes, &adversarial(&routes));
        let lpm = table(&routes).build();
        assert_eq!(lpm.lookup(ip(198, 19, 0, 1)), Some(1));
        assert_eq!(lpm.lookup(ip(198, 18, 2, 1)), Some(2));
        assert_eq!(lpm.lookup(ip(198, 18, 1, 1)), Some(3));
        assert_eq!(lpm.lookup(ip(198, 18, 1, 129)), Some(4));
        assert_eq!(lpm.lookup(ip(198, 18, 1, 131)), Some(5));
    }

    #[test]
    fn insert_replaces_and_ignores_host_bits() {
        let mut b = LpmBuilder::new();
        b.insert(ip(203, 0, 113, 0), 24, 1);
        b.insert(ip(203, 0, 113, 99), 24, 2);
        assert_eq!(b.len(), 1);
        let lpm = b.build();
        assert_eq!(lpm.routes(), 1);
        assert_eq!(lpm.lookup(ip(203, 0, 113, 1)), Some(2));
        assert_eq!(lpm.lookup(ip(203, 0, 114, 1)), None);
        // len 0 ignores every bit.
        b.insert(u32::MAX, 0, 3);
        assert_eq!(b.build().lookup(ip(1, 2, 3, 4)), Some(3));
    }

    #[test]
    fn no_value_is_reserved() {
        let routes = [
            (0, 0, u32::MAX),
            (ip(10, 0, 0, 0), 8, 0),
            (ip(10, 0, 0, 0), 31, 1 << 31),
        ];
        check(&routes, &adversarial(&routes));
    }

    #[test]
    fn prefixes_at_and_across_stride_boundaries() {
        // Every length from 0 to 32 nested in one address, so each node boundary (6, 12,
        // 18, 24, 30 and the direct sizes) has a route ending on it, before and after it.
        let base = ip(198, 18, 85, 170);
        let nested: Vec<_> = (0..=32).map(|len| (base, len, u32::from(len))).collect();
        check(&nested, &adversarial(&nested));
        // Every other length only: leaves must be pushed through the missing ones.
        let sparse: Vec<_> = nested.iter().copied().step_by(2).collect();
        check(&sparse, &adversarial(&sparse));
        // The largest direct array: everything up to /24 is a direct leaf.
        let lpm = table(&nested).build_with_direct_bits(24);
        for addr in adversarial(&nested) {
            assert_eq!(lpm.lookup(addr), naive(&nested, addr), "{addr:#010x}");
        }
        // Siblings that differ only in the bit just after a boundary.
        let siblings: Vec<_> = [5u8, 6, 7, 11, 12, 13, 17, 18, 19, 23, 24, 25, 29, 30, 31]
            .iter()
            .flat_map(|&len| {
                let flip = 1u32 << (32 - len);
                [
                    (base, len, u32::from(len)),
                    (base ^ flip, len, 100 + u32::from(len)),
                ]
            })
            .collect();
        check(&siblings, &adversarial(&siblings));
    }

    #[test]
    fn small_tables_are_small() {
        // A Neutron router: connected subnets, a default route, a few extra routes.
        let routes = [
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
        ];
        let lpm = table(&routes).build();
        assert!(lpm.memory_bytes() < 2048, "{lpm:?}");
        check(&routes, &adversarial(&routes));
    }

    #[test]
    fn lpm_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Lpm>();
    }

    /// A prefix length biased to the interesting ones: short, at boundaries, long.
    fn prefix() -> impl Strategy<Value = (u32, u8, u32)> {
        let len = prop_oneof![0u8..=32, 22u8..=26, 30u8..=32];
        (any::<u32>(), len, any::<u32>())
    }

    /// Routes that cluster under a few random bases, so they overlap and share nodes.
    fn clustered() -> impl Strategy<Value = Vec<(u32, u8, u32)>> {
        (
            any::<u32>(),
            prop::collection::vec((prefix(), any::<bool>()), 0..60),
        )
            .prop_map(|(base, routes)| {
                routes
                    .into_iter()
                    .map(|((addr, len, v), near)| {
                        let addr = if near { base ^ (addr >> 12) } else { addr };
                        (addr, len, v)
                    })
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn lookup_matches_a_linear_scan(
            routes in clustered(),
            random in prop::collection::vec(any::<u32>(), 64),
        ) {
            let mut addrs = adversarial(&routes);
            addrs.extend(random);
            check(&routes, &addrs);
        }
    }
}
