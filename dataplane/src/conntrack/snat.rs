//! Source-port ranges, their partition among workers, and which worker owns a flow.
//!
//! A worker only ever sees its own sessions, so both directions of a flow must reach the
//! worker that created the session. For a flow without NAT that is a hash of the flow
//! that does not depend on the direction ([`owner_worker`]). Under SNAT the reply carries
//! the external address and port instead of the inside ones, so no hash of one packet can
//! find the worker that hashed the other; as in VPP's NAT44-ED, each worker allocates
//! external ports only from its own slice of the range ([`PortRange::slice`]), and a
//! packet arriving on the outside is steered by its destination port
//! ([`PortRange::worker_for`]). The inside-to-outside direction goes by [`owner_worker`]
//! of its original key. A packet that lands on the wrong worker is handed over on a ring
//! to the owner, never looked up in another worker's table.

use super::{fold, FlowKey, K0, K1, K2};

/// An inclusive range of ports (or ICMP identifiers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive).
    pub last: u16,
}

impl PortRange {
    /// The unprivileged ports, 1024–65535: what SNAT allocates from by default (ICMP
    /// identifiers too, so one range governs the per-worker split of both).
    pub const DEFAULT: PortRange = PortRange {
        first: 1024,
        last: 65535,
    };

    /// The ports `first..=last`.
    pub const fn new(first: u16, last: u16) -> Self {
        PortRange { first, last }
    }

    /// Number of ports.
    pub const fn len(self) -> u32 {
        if self.last < self.first {
            0
        } else {
            self.last as u32 - self.first as u32 + 1
        }
    }

    /// True when the range has no port.
    pub const fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Whether `port` is in the range.
    pub const fn contains(self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// The part of the range worker `worker` of `workers` allocates from: consecutive
    /// slices as equal as the length allows. `None` when that part is empty (more
    /// workers than ports, or `worker >= workers`).
    pub fn slice(self, worker: usize, workers: usize) -> Option<PortRange> {
        if worker >= workers {
            return None;
        }
        let (len, n, i) = (u64::from(self.len()), workers as u64, worker as u64);
        let start = i * len / n;
        let end = (i + 1) * len / n;
        if start == end {
            return None;
        }
        let first = u64::from(self.first);
        Some(PortRange {
            first: (first + start) as u16,
            last: (first + end - 1) as u16,
        })
    }

    /// The worker (of `workers`) whose [`PortRange::slice`] holds `port`; `None` when the
    /// port is outside the range (not an allocated external port: steer by
    /// [`owner_worker`]).
    pub fn worker_for(self, port: u16, workers: usize) -> Option<usize> {
        if !self.contains(port) || workers == 0 {
            return None;
        }
        // Slice i starts at floor(i * len / n); the owner is the largest such i <= offset,
        // which is ceil((offset + 1) * n / len) - 1.
        let (len, n) = (u64::from(self.len()), workers as u64);
        let off = u64::from(port - self.first);
        Some((((off + 1) * n).div_ceil(len) - 1) as usize)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::DEFAULT
    }
}

/// The worker an out-to-in packet with destination port (or ICMP identifier) `port`
/// belongs to, when SNAT uses [`PortRange::DEFAULT`] split among `workers`.
pub fn worker_for_external_port(port: u16, workers: usize) -> Option<usize> {
    PortRange::DEFAULT.worker_for(port, workers)
}

/// The worker (of `workers`) that owns the flow of `key`. Symmetric: a key and its
/// [`FlowKey::reversed`] map to the same worker, so a flow without NAT needs nothing
/// else; see the module documentation for NAT. The hash is fixed (not seeded): the
/// workers steer flows with [`crate::flow_owner`]'s hash instead, keyed per run so that a
/// VM cannot choose where its flows go; this one is for receive steering that cannot
/// hold a key (none uses it yet).
pub fn owner_worker(key: &FlowKey, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let a = (u64::from(key.src) << 16) | u64::from(key.sport);
    let b = (u64::from(key.dst) << 16) | u64::from(key.dport);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let h = fold(
        fold(lo ^ K0, hi ^ K1) ^ (u64::from(key.zone) << 8) ^ u64::from(key.proto),
        K2,
    );
    // Multiply-shift maps the hash onto 0..workers without a division.
    (((h >> 32) * workers as u64) >> 32) as usize
}

/// The ports SNAT tries after the hint: a permutation of `range` from a pseudo-random
/// start with a stride coprime to its length (double hashing). Unlike trying the next
/// port, flows that start at the same place do not follow each other, so the number of
/// tries stays near `1 / free fraction` however the used ports cluster.
pub(super) fn candidates(range: PortRange, h: u64, count: u32) -> impl Iterator<Item = u16> {
    let len = range.len();
    let start = ((h >> 32) * u64::from(len)) >> 32;
    let mut stride = if len <= 1 {
        1
    } else {
        1 + (h as u32) % (len - 1)
    };
    let mut tries = 0;
    while gcd(stride, len) != 1 {
        tries += 1;
        stride = if tries > 16 || stride + 1 >= len {
            1
        } else {
            stride + 1
        };
    }
    let first = u64::from(range.first);
    (0..u64::from(count.min(len)))
        .map(move |k| (first + (start + k * u64::from(stride)) % u64::from(len)) as u16)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_partition_the_range_and_map_back() {
        for range in [
            PortRange::DEFAULT,
            PortRange::new(0, 65535),
            PortRange::new(1000, 1009),
            PortRange::new(7, 7),
        ] {
            for workers in 1..=9 {
                let mut owner = vec![None; 65536];
                for w in 0..workers {
                    if let Some(s) = range.slice(w, workers) {
                        for p in s.first..=s.last {
                            assert_eq!(owner[p as usize], None, "port {p} in two slices");
                            owner[p as usize] = Some(w);
                        }
                    }
                }
                for p in 0..=65535u16 {
                    assert_eq!(
                        range.worker_for(p, workers),
                        owner[p as usize],
                        "{range:?} port {p} workers {workers}"
                    );
                    assert_eq!(owner[p as usize].is_some(), range.contains(p));
                }
            }
        }
        assert_eq!(
            PortRange::DEFAULT.slice(0, 4),
            Some(PortRange::new(1024, 17151))
        );
        assert_eq!(
            PortRange::DEFAULT.slice(3, 4),
            Some(PortRange::new(49408, 65535))
        );
        assert_eq!(worker_for_external_port(17152, 4), Some(1));
        assert_eq!(worker_for_external_port(80, 4), None);
        assert_eq!(PortRange::new(7, 7).slice(1, 2), Some(PortRange::new(7, 7)));
        assert_eq!(PortRange::new(7, 7).slice(0, 2), None);
    }

    #[test]
    fn candidates_are_distinct_ports_of_the_range() {
        for (range, h) in [
            (PortRange::DEFAULT, 0x1234_5678_9abc_def0),
            (PortRange::new(100, 111), 0xffff_ffff_ffff_ffff),
            (PortRange::new(5, 5), 0),
            (PortRange::new(0, 65535), 42),
        ] {
            let all: Vec<u16> = candidates(range, h, u32::MAX).collect();
            assert_eq!(all.len() as u32, range.len());
            let mut sorted = all.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), all.len(), "a port repeated");
            assert!(all.iter().all(|&p| range.contains(p)));
        }
    }

    #[test]
    fn owner_worker_is_symmetric_and_spreads() {
        let mut per_worker = [0u32; 4];
        for i in 0..4000u32 {
            let k = FlowKey {
                zone: i % 3,
                proto: 17,
                src: 0xc612_0000 | i,
                dst: 0xcb00_7100 | (i % 7),
                sport: 1024 + i as u16,
                dport: 53,
            };
            let w = owner_worker(&k, 4);
            assert_eq!(w, owner_worker(&k.reversed(), 4));
            per_worker[w] += 1;
        }
        assert!(per_worker.iter().all(|&n| n > 800), "{per_worker:?}");
        assert_eq!(owner_worker(&FlowKey::default(), 1), 0);
    }
}
