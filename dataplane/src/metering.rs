//! L3 metering: what Neutron's iptables metering driver counts in a `qrouter` namespace.
//!
//! The driver hangs one rules chain per label off the router's `filter FORWARD` chain.
//! Each rule matches on the external gateway device (`-i qg-…` for ingress, `-o qg-…` for
//! egress) and on source and destination prefixes; excluded rules `RETURN` first (the
//! driver inserts them at the top), the others jump to the label's chain, whose one empty
//! rule counts packets and bytes (the IP datagram's length) and falls back, so a packet
//! matching two counting rules of one label is counted twice. The FORWARD hook sees a
//! packet after destination NAT (a floating IP's or a SNAT reply's address is already the
//! VM's) and before source NAT (a VM's packet still has its fixed address).
//!
//! The router stage calls [`RouterMetering::count`] at that point. Counters live in the
//! worker's [`MeterCounters`], one per meter slot: the control plane gives each (label,
//! router) a slot that it keeps while both exist, so applies that do not remove the label
//! keep its counts. A router without labels has no [`RouterMetering`] and pays one
//! branch.

use crate::counters::Counter;

/// Meter slots per worker: (label, router) pairs that can be metered at once.
pub const MAX_METERS: usize = 4096;

/// Which way a packet crosses the external gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MeterDirection {
    /// Arrived on the external gateway (`-i qg-…`).
    Ingress = 0,
    /// Leaves through the external gateway (`-o qg-…`).
    Egress = 1,
}

impl MeterDirection {
    /// Both, in counter index order.
    pub const ALL: [MeterDirection; 2] = [MeterDirection::Ingress, MeterDirection::Egress];

    /// Neutron's name.
    pub fn name(self) -> &'static str {
        match self {
            MeterDirection::Ingress => "ingress",
            MeterDirection::Egress => "egress",
        }
    }
}

/// One worker's counts of one meter slot, by [`MeterDirection`].
#[derive(Debug, Default)]
pub struct MeterCounters {
    /// Packets counted.
    pub packets: [Counter; 2],
    /// Their bytes: IPv4 total lengths, as iptables counts them.
    pub bytes: [Counter; 2],
}

/// A source and a destination prefix (mask 0 matches everything), host byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterMatch {
    /// Source address, already masked.
    pub src: u32,
    /// Source mask.
    pub src_mask: u32,
    /// Destination address, already masked.
    pub dst: u32,
    /// Destination mask.
    pub dst_mask: u32,
}

impl MeterMatch {
    /// Matches `src_prefix` as source and `dst_prefix` as destination (`(address, length)`,
    /// `None`: any).
    pub fn new(src_prefix: Option<(u32, u8)>, dst_prefix: Option<(u32, u8)>) -> Self {
        let (src, src_mask) = masked(src_prefix);
        let (dst, dst_mask) = masked(dst_prefix);
        MeterMatch {
            src,
            src_mask,
            dst,
            dst_mask,
        }
    }

    #[inline(always)]
    fn matches(&self, src: u32, dst: u32) -> bool {
        src & self.src_mask == self.src && dst & self.dst_mask == self.dst
    }
}

fn masked(prefix: Option<(u32, u8)>) -> (u32, u32) {
    match prefix {
        Some((ip, len)) if len > 0 => {
            let mask = u32::MAX << (32 - u32::from(len.min(32)));
            (ip & mask, mask)
        }
        _ => (0, 0),
    }
}

/// One label's rules on one router, as the builder takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelMeterSpec {
    /// Its counter slot (below [`MAX_METERS`]).
    pub slot: u16,
    /// `(direction, match, excluded)` of each rule.
    pub rules: Vec<(MeterDirection, MeterMatch, bool)>,
}

/// One label's compiled rules on one router: per direction, the excluded matches then the
/// counting ones.
#[derive(Clone, Debug)]
struct LabelMeter {
    slot: u16,
    excluded: [Box<[MeterMatch]>; 2],
    counted: [Box<[MeterMatch]>; 2],
}

/// The labels of one router.
#[derive(Clone, Debug)]
pub struct RouterMetering {
    labels: Box<[LabelMeter]>,
}

impl RouterMetering {
    /// Compiles `labels`; `None` when there is nothing to count (no label, or labels without
    /// counting rules), so that such a router pays nothing.
    pub fn compile(labels: &[LabelMeterSpec]) -> Option<Box<RouterMetering>> {
        let labels: Box<[LabelMeter]> = labels
            .iter()
            .filter(|l| usize::from(l.slot) < MAX_METERS)
            .map(|l| {
                let pick = |dir: MeterDirection, excluded: bool| -> Box<[MeterMatch]> {
                    l.rules
                        .iter()
                        .filter(|r| r.0 == dir && r.2 == excluded)
                        .map(|r| r.1)
                        .collect()
                };
                LabelMeter {
                    slot: l.slot,
                    excluded: MeterDirection::ALL.map(|d| pick(d, true)),
                    counted: MeterDirection::ALL.map(|d| pick(d, false)),
                }
            })
            .filter(|l| l.counted.iter().any(|c| !c.is_empty()))
            .collect();
        (!labels.is_empty()).then(|| Box::new(RouterMetering { labels }))
    }

    /// The slots this router counts in.
    pub fn slots(&self) -> impl Iterator<Item = u16> + '_ {
        self.labels.iter().map(|l| l.slot)
    }

    /// Counts a packet of `bytes` (its IPv4 total length) from `src` to `dst` crossing the
    /// gateway in direction `dir` into `counters` (the worker's, indexed by slot).
    #[inline]
    pub fn count(
        &self,
        counters: &[MeterCounters],
        dir: MeterDirection,
        src: u32,
        dst: u32,
        bytes: u16,
    ) {
        let d = dir as usize;
        for label in self.labels.iter() {
            if label.excluded[d].iter().any(|m| m.matches(src, dst)) {
                continue;
            }
            let hits = label.counted[d]
                .iter()
                .filter(|m| m.matches(src, dst))
                .count() as u64;
            if hits == 0 {
                continue;
            }
            if let Some(c) = counters.get(usize::from(label.slot)) {
                c.packets[d].add(hits);
                c.bytes[d].add(hits * u64::from(bytes));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: [u8; 4]) -> u32 {
        u32::from_be_bytes(a)
    }

    fn counters() -> Vec<MeterCounters> {
        (0..4).map(|_| MeterCounters::default()).collect()
    }

    #[test]
    fn a_router_without_counting_rules_has_no_metering() {
        assert!(RouterMetering::compile(&[]).is_none());
        let only_excluded = LabelMeterSpec {
            slot: 1,
            rules: vec![(
                MeterDirection::Egress,
                MeterMatch::new(Some((ip([198, 18, 0, 0]), 16)), None),
                true,
            )],
        };
        assert!(RouterMetering::compile(&[only_excluded]).is_none());
    }

    #[test]
    fn excluded_rules_return_before_counting_and_each_counting_rule_counts() {
        let any = MeterMatch::new(None, None);
        let to_doc = MeterMatch::new(None, Some((ip([203, 0, 113, 0]), 24)));
        let from_excluded = MeterMatch::new(Some((ip([198, 18, 1, 128]), 25)), None);
        let m = RouterMetering::compile(&[
            LabelMeterSpec {
                slot: 2,
                rules: vec![
                    (MeterDirection::Egress, any, false),
                    (MeterDirection::Egress, to_doc, false),
                    (MeterDirection::Egress, from_excluded, true),
                ],
            },
            LabelMeterSpec {
                slot: 3,
                rules: vec![(MeterDirection::Ingress, any, false)],
            },
        ])
        .unwrap();
        let c = counters();
        let e = MeterDirection::Egress as usize;
        m.count(
            &c,
            MeterDirection::Egress,
            ip([198, 18, 1, 10]),
            ip([198, 19, 0, 1]),
            100,
        );
        assert_eq!((c[2].packets[e].get(), c[2].bytes[e].get()), (1, 100));
        // Two counting rules match: iptables' label chain sees it twice.
        m.count(
            &c,
            MeterDirection::Egress,
            ip([198, 18, 1, 10]),
            ip([203, 0, 113, 5]),
            60,
        );
        assert_eq!((c[2].packets[e].get(), c[2].bytes[e].get()), (3, 220));
        // Excluded source: not counted by that label at all.
        m.count(
            &c,
            MeterDirection::Egress,
            ip([198, 18, 1, 200]),
            ip([203, 0, 113, 5]),
            60,
        );
        assert_eq!((c[2].packets[e].get(), c[2].bytes[e].get()), (3, 220));
        assert_eq!(c[3].packets[e].get(), 0);
        let i = MeterDirection::Ingress as usize;
        m.count(
            &c,
            MeterDirection::Ingress,
            ip([203, 0, 113, 5]),
            ip([198, 18, 1, 10]),
            40,
        );
        assert_eq!((c[3].packets[i].get(), c[3].bytes[i].get()), (1, 40));
        assert_eq!(c[2].packets[i].get(), 0);
    }
}
