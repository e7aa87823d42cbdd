//! IPv4 longest-prefix match for the router stage: a leaf-pushed multibit trie whose shape
//! follows the table's size.
//!
//! Every router has its own table (connected subnets, a default route through the
//! external gateway, extra routes), so a small table must cost little: 1,000 routers of
//! 10 routes each must not need a 2^16 or 2^24 array apiece. A single table must also hold
//! a full Internet table (1,000,000 routes) and stay fast. [`LpmBuilder`] collects routes
//! on the control thread; [`LpmBuilder::build`] compiles them into an immutable [`Lpm`]
//! that lives in the snapshot and is only read by workers.
//!
//! # Structure
//!
//! The top `r` bits of the address index a root array; each further level is a node of
//! 2^`k` entries indexed by the next `k` bits. Routes are leaf-pushed: every entry holds
//! either a child node or the answer for all the addresses under it (the longest route
//! covering them), so a lookup walks down until it reads an answer and never backtracks.
//! An entry is a `u32`: a flag and a node index, or an index into a deduplicated array of
//! `Option<u32>` values (a table has few next hops, so that array stays in cache). Index 0
//! is "no route", so no value is reserved.
//!
//! `build` picks the shape by the number of routes:
//!
//! - below 4,096 routes, 8-4-4-4-4-4-4: a 1 KiB root and 64-byte nodes, so a route costs
//!   at most 6 nodes (384 bytes), and usually shares them;
//! - below 131,072, 16-8-8: a 256 KiB root and 1 KiB nodes;
//! - above, DIR-24-8 (24-8): a 64 MiB root that answers every route up to `/24` in one
//!   load, and a 1 KiB node per `/24` that holds longer routes.
//!
//! A lookup is one load per level (at most 7 for a small table, 2 for a large one) and one
//! for the value: a shift, a mask, a load and a well-predicted branch per level, no
//! allocation.
//!
//! # Why this structure: measurements
//!
//! Measured against the same trie with 8-bit strides everywhere (8-8-8-8 below 65,536
//! routes, 16-8-8 above: "multibit8") and against a poptrie (Asai and Ohara, SIGCOMM
//! 2015: 6-bit nodes compressed with bitmaps and population counts, a direct array of 6,
//! 12 or 18 bits). The poptrie and the benchmark tables are in `bench/src/lpm.rs`;
//! `cargo bench -p pollux-bench --bench lpm` and `bench/lpm-instructions.sh` reproduce the
//! figures. Tables: a Neutron router's 10 routes; 1,000 such routers with each lookup in a
//! random router's table; 1,000,000 routes shaped like a BGP table (55% `/24`, 36%
//! `/16`-`/23`, 1% `/8`-`/15`, 8% longer than `/24`, clustered in allocations; fixed seed).
//! Lookups: 4M uniformly random addresses ("random") and 4M addresses inside random routes
//! ("routed"). Machine: an AMD EPYC KVM guest, 2 vCPUs; two runs at low load. Instruction
//! counts are exact and include about 4 for the benchmark loop.
//!
//! | | this trie | multibit8 | poptrie |
//! |---|---|---|---|
//! | 10 routes: memory | 2,320 B | 11,408 B | 1,064 B |
//! | 10 routes: build | 0.5 µs | 0.8 µs | 2.7 µs |
//! | 10 routes: ns/lookup, random / routed | 1.1 / 9.9 | 1.1 / 8.2 | 2.9 / 14.4 |
//! | 10 routes: instructions/lookup, random / routed | 21 / 52 | 21 / 38 | 26 / 111 |
//! | 1,000 routers × 10 routes: memory | 3.4 MB | 17.4 MB | 1.5 MB |
//! | 1,000 routers × 10 routes: ns/lookup | 20 | 15 | 30 |
//! | 1M routes: memory | 141 MB | 119 MB | 13.8 MB |
//! | 1M routes: build (from a filled builder) | 220 ms (126 ms) | 210-227 ms | 125-131 ms |
//! | 1M routes: ns/lookup, random / routed | 13-14 / 16-17 | 16-17 / 21-22 | 20-33 / 47-66 |
//! | 1M routes: instructions/lookup, random / routed | 21 / 22 | 28 / 33 | 38 / 65 |
//!
//! The poptrie is the smallest at every size, 10 times smaller than the others with 1M
//! routes, but it is the slowest everywhere. Each level costs a population count: the
//! default `x86-64` target has no `popcnt` instruction, so that is a dozen instructions.
//! A small table walks 3 to 5 levels of them. A full table fits the last-level cache only
//! when nothing else is using it. With 1M routes, on a busier moment of the same machine,
//! it measured 24-32 / 48-69 ns against DIR-24-8's 14 / 14-15. So it is kept in the
//! benchmark and not here.
//!
//! 8-bit strides are 1.7-5 ns faster than 4-bit strides on small tables, because they walk
//! fewer levels. But they cost 1 KiB per node, which comes to 11 KiB for the Neutron
//! router, 21 KiB for 10 routes scattered over the address space, and 17 MB for 1,000
//! routers. With 4-bit strides a small table stays at a few KiB (2.3 KiB here, 3.7 KiB
//! scattered). For a full table, DIR-24-8 answers most lookups in one load. It beats
//! 16-8-8 on every figure except memory (141 MB against 119 MB).
//!
//! Limits: a large table costs 1 KiB for every `/24` that holds a longer route (72,600 of
//! them in the benchmark table), so a million host routes in distinct `/24`s would take a
//! GiB. Should such tables appear, the poptrie handles them in a few MB behind this same
//! API.
//!
//! [`Lpm::lookup_batch`] is a plain loop over an always-inlined lookup. The lookups are
//! independent and only a few instructions long, so the core already keeps many of them
//! in flight: batch and single lookups measure the same (1.3 / 1.1 ns and 13-14 / 13-14 ns
//! for random addresses).

use std::collections::BTreeMap;
use std::fmt;

/// In an entry, marks a child node index; otherwise the entry is a value index.
const CHILD: u32 = 1 << 31;

/// Collects routes for an [`Lpm`]. Lives on the control thread and may allocate.
#[derive(Clone, Debug, Default)]
pub struct LpmBuilder {
    /// Value by (prefix length, prefix address with host bits cleared): iterating it goes
    /// by increasing length, the order [`LpmBuilder::build_with`] needs. (A `BTreeMap`,
    /// not a `HashMap`: no random seed, so no system call.)
    routes: BTreeMap<(u8, u32), u32>,
}

impl LpmBuilder {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) prefix `addr/len` → `value`. Host bits of `addr` are ignored.
    ///
    /// # Panics
    ///
    /// If `len` is greater than 32 (validation rejects such routes before they get here).
    pub fn insert(&mut self, addr: u32, len: u8, value: u32) {
        assert!(len <= 32, "prefix length {len} is longer than 32");
        self.routes.insert((len, addr & prefix_mask(len)), value);
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route has been inserted.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Compiles the routes in the shape their number calls for (see the module
    /// documentation): a root of `r` bits, then nodes of `k` bits.
    pub fn build(&self) -> Lpm {
        let (r, k) = match self.routes.len() {
            0..4096 => (8, 4),
            4096..131_072 => (16, 8),
            _ => (24, 8),
        };
        self.build_with(r, k)
    }

    /// Compiles the routes with a root of 2^`root_bits` entries and nodes of 2^`stride`
    /// entries, for tests and for benchmarks of the choice [`LpmBuilder::build`] makes.
    ///
    /// # Panics
    ///
    /// Unless `root_bits` is in 1..=24, `stride` in 1..=8, and the strides end exactly at
    /// bit 32 (`(32 - root_bits) % stride == 0`).
    pub fn build_with(&self, root_bits: u8, stride: u8) -> Lpm {
        let (r, k) = (u32::from(root_bits), u32::from(stride));
        assert!(
            (1..=24).contains(&r) && (1..=8).contains(&k) && (32 - r) % k == 0,
            "shape {r}-{k} does not end at bit 32"
        );
        let mut entries = vec![0; 1 << r];
        // Values are deduplicated: a table has few next hops, so this array stays small
        // and cached. Index 0 is "no route", which every entry starts as.
        let mut values = vec![None];
        let mut ids = BTreeMap::new();
        // By increasing length: a route fills its slots at the level where it ends, and
        // those are all still values then, because only longer routes (which come later)
        // turn a slot into a child. A new child starts as copies of the value it
        // replaces, so shorter routes reach every address below them (leaf pushing).
        for (&(len, addr), &value) in &self.routes {
            let id = *ids.entry(value).or_insert_with(|| {
                values.push(Some(value));
                index(values.len() - 1)
            });
            let len = u32::from(len);
            let (mut node, mut start, mut width) = (0, 0, r);
            while len > start + width {
                let at = node + bits(addr, start, width);
                node = if entries[at] & CHILD == 0 {
                    let child = entries.len();
                    entries.extend(std::iter::repeat_n(entries[at], 1 << k));
                    entries[at] = CHILD | index(child);
                    child
                } else {
                    (entries[at] & !CHILD) as usize
                };
                start += width;
                width = k;
            }
            let first = node + bits(addr, start, width);
            entries[first..first + (1 << (start + width - len))].fill(id);
        }
        Lpm {
            root_shift: 32 - r,
            stride: k,
            slot_mask: (1 << k) - 1,
            entries: entries.into_boxed_slice(),
            values: values.into_boxed_slice(),
            routes: self.routes.len(),
        }
    }
}

/// The mask of a prefix length's network bits (a length above 32 is taken as 32): the one
/// the routers, port security, security groups and the trace match all use.
#[inline]
pub const fn prefix_mask(len: u8) -> u32 {
    let len = if len > 32 { 32 } else { len };
    ((u32::MAX as u64) << (32 - len as u32)) as u32
}

/// `width` bits of `addr` starting `start` bits from the top, as an index.
fn bits(addr: u32, start: u32, width: u32) -> usize {
    ((u64::from(addr) << (32 + start)) >> (64 - width)) as usize
}

/// An index into the compiled arrays, which must stay below 2^31 to leave room for
/// [`CHILD`]: 8 GiB of entries, far beyond any table the configuration allows.
fn index(i: usize) -> u32 {
    match u32::try_from(i) {
        Ok(i) if i < CHILD => i,
        _ => panic!("routing table too large: index {i}"),
    }
}

/// A compiled routing table: immutable, shared by workers through the snapshot.
///
/// `entries` holds the root (its first 2^r entries) and then every node (2^k entries
/// each). An entry is `CHILD | index of a node's first entry`, or an index into `values`.
#[derive(Clone)]
pub struct Lpm {
    /// `32 - r`: shifts an address down to its root slot.
    root_shift: u32,
    /// `k`, the bits each node consumes.
    stride: u32,
    /// `2^k - 1`.
    slot_mask: u32,
    entries: Box<[u32]>,
    values: Box<[Option<u32>]>,
    routes: usize,
}

impl Lpm {
    /// The value of the longest prefix containing `addr` (host byte order), if any.
    #[inline]
    pub fn lookup(&self, addr: u32) -> Option<u32> {
        self.find(addr)
    }

    /// The lookup itself, always inlined so that [`Lpm::lookup_batch`]'s loop never
    /// makes a call per address.
    #[inline(always)]
    fn find(&self, addr: u32) -> Option<u32> {
        let mut shift = self.root_shift;
        let mut entry = self.entries[(addr >> shift) as usize];
        // At most (32 - r) / k rounds: nodes at the last level hold no children.
        while entry & CHILD != 0 {
            shift -= self.stride;
            let slot = (addr >> shift) & self.slot_mask;
            entry = self.entries[((entry & !CHILD) + slot) as usize];
        }
        self.values[entry as usize]
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
            + std::mem::size_of_val(&*self.entries)
            + std::mem::size_of_val(&*self.values)
    }

    /// Number of distinct prefixes in the table.
    pub fn routes(&self) -> usize {
        self.routes
    }

    /// The shape: root bits and node bits (for example `(8, 4)` or `(24, 8)`).
    pub fn shape(&self) -> (u32, u32) {
        (32 - self.root_shift, self.stride)
    }
}

/// A summary: the entries of a large table are megabytes long.
impl fmt::Debug for Lpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lpm")
            .field("routes", &self.routes)
            .field("shape", &self.shape())
            .field("entries", &self.entries.len())
            .field("values", &self.values.len())
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

    /// The table built in every shape that matters: adaptive (8-4-4-4-4-4-4 below 4,096
    /// routes), the medium shape, and odd ones whose node boundaries fall elsewhere (a
    /// 1-bit root, 1-bit strides, 3-bit strides). DIR-24-8 (16M entries) is checked on
    /// fixtures only, in `prefixes_at_and_across_stride_boundaries`.
    fn builds(b: &LpmBuilder) -> Vec<Lpm> {
        let mut all = vec![b.build()];
        all.extend([(16, 8), (8, 8), (1, 1), (2, 3), (4, 4)].map(|(r, k)| b.build_with(r, k)));
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
        // Every length from 0 to 32 nested in one address, so each node boundary (every 4
        // bits, 8 bits, 16, 24) has a route ending on it, before and after it.
        let base = ip(198, 18, 85, 170);
        let nested: Vec<_> = (0..=32).map(|len| (base, len, u32::from(len))).collect();
        check(&nested, &adversarial(&nested));
        // Every other length only: leaves must be pushed through the missing ones.
        let sparse: Vec<_> = nested.iter().copied().step_by(2).collect();
        check(&sparse, &adversarial(&sparse));
        // DIR-24-8, the shape of large tables: everything up to /24 is a root entry.
        let lpm = table(&nested).build_with(24, 8);
        for addr in adversarial(&nested) {
            assert_eq!(lpm.lookup(addr), naive(&nested, addr), "{addr:#010x}");
        }
        // Siblings that differ only in the bit just after a boundary.
        let siblings: Vec<_> = [
            3u8, 4, 5, 7, 8, 9, 15, 16, 17, 23, 24, 25, 27, 28, 29, 31, 32,
        ]
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
        assert!(lpm.memory_bytes() < 4096, "{lpm:?}");
        check(&routes, &adversarial(&routes));
    }

    #[test]
    fn shape_follows_table_size() {
        let mut b = LpmBuilder::new();
        assert_eq!(b.build().shape(), (8, 4));
        for i in 0..4096u32 {
            b.insert(i << 12, 20, i);
        }
        assert_eq!(b.build().shape(), (16, 8));
        for i in 0..131_072u32 {
            b.insert(i << 8, 24, i);
        }
        let lpm = b.build();
        assert_eq!(lpm.shape(), (24, 8));
        assert_eq!(lpm.routes(), 4096 + 131_072);
        assert_eq!(lpm.lookup(0x0001_2345), Some(0x123));
        assert_eq!(lpm.lookup(0x0123_4567), Some(0x12345));
    }

    #[test]
    #[should_panic(expected = "shape")]
    fn shapes_that_do_not_end_at_32_bits_are_refused() {
        LpmBuilder::new().build_with(8, 5);
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
