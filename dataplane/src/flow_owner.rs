//! With several workers: every flow has one owning worker, which runs the stateful
//! stages (security groups' conntrack, SNAT and floating IPs) for both of its
//! directions; a packet received by another worker is handed to the owner, as VPP's NAT
//! handoff does. See docs/DESIGN.md ("Workers", "State that follows a flow").
//!
//! The owner is decided from what both directions of a flow agree on, right after port
//! security and before the first stateful stage:
//!
//! - a keyed symmetric hash of (addresses, ports, protocol), with a floating IP replaced
//!   by its fixed IP, so that the reply to a floating IP and the fixed IP's own packets
//!   hash alike;
//! - to or from a SNAT router's gateway address, a port within the SNAT range names its
//!   owner ([`PortRange::worker_for`]): the inside-to-outside direction hashed to the
//!   owner, whose session took the external port from its own slice of the range;
//! - ICMP errors go with the flow they quote (the quoted packet's owner);
//! - fragments: a first fragment has its ports and goes with its flow; the worker that
//!   received it remembers (addresses, protocol, identification) → owner in a small
//!   direct-mapped table, and the later fragments it receives follow; a later fragment
//!   without an entry (it came first, or was evicted) stays on its worker, where the
//!   stateful stages drop it as they would with one worker. NICs hash every fragment of a
//!   datagram on its addresses alone, so the fragments of one datagram reach one worker.
//!
//! The hash is keyed per run (the workers' shared seed), so a VM cannot choose ports that
//! pile its flows onto one worker. With one worker the stage is never enabled.

use crate::buf::FramePool;
use crate::conntrack::PortRange;
use crate::drop::DropReason;
use crate::packet::{Next, Packet, MAX_BURST};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage, StageSet};
use crate::routing::{ExternalAddress, Routing};
use crate::snapshot::Snapshot;

const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;
const K3: u64 = 0x5899_65cc_7537_4cc3;

/// Slots of the table of first fragments' owners.
const FRAG_SLOTS: usize = 1024;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const IPV6_FRAGMENT: u8 = 44;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

/// One side of a flow as the hash sees it: an address (IPv6 folded to 64 bits) and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct End {
    addr: u64,
    port: u16,
}

/// The flow of a packet, as far as its owner depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// A keyed flow: its two ends and protocol, and for IPv4 the raw addresses (for the
    /// external-address mapping).
    Keyed {
        src: End,
        dst: End,
        proto: u8,
        v4: bool,
    },
    /// A later fragment: the owner of its first fragment, if remembered.
    Later(u64),
    /// No flow state can concern it (not IP, malformed): it stays where it is.
    Local,
}

/// The flow handoff stage and what it keeps: see the module documentation.
#[derive(Debug)]
pub struct FlowHandoff {
    /// Handing off is on: more than one worker.
    pub(crate) active: bool,
    /// The stage table is running packets handed to this worker (see
    /// [`FlowHandoff::prepare`]).
    pub(crate) resuming: bool,
    me: u16,
    workers: u16,
    seed: u64,
    snat_ports: PortRange,
    /// The snapshot generation `needed` was computed for.
    generation: u64,
    /// Whether that snapshot has state that follows a flow at all.
    needed: bool,
    /// First fragments' owners: (tag, owner) by slot.
    frags: Box<[(u64, u16)]>,
}

impl Default for FlowHandoff {
    fn default() -> Self {
        FlowHandoff::new(0, 1, 0, PortRange::DEFAULT)
    }
}

impl FlowHandoff {
    /// Worker `me` of `workers`, hashing with `seed` (the same for every worker), SNAT
    /// allocating from `snat_ports` split among the workers.
    pub fn new(me: u16, workers: u16, seed: u64, snat_ports: PortRange) -> Self {
        FlowHandoff {
            active: workers > 1,
            resuming: false,
            me,
            workers: workers.max(1),
            seed,
            snat_ports,
            generation: u64::MAX,
            needed: false,
            frags: if workers > 1 {
                vec![(0, 0); FRAG_SLOTS].into_boxed_slice()
            } else {
                Box::default()
            },
        }
    }

    /// The stages to run for a burst whose port enables `enabled`: with this stage when
    /// the snapshot needs it. Packets handed to this worker resume after the handoff:
    /// the stages before it were done where they were received, and this stage, which
    /// also takes packets pending classification, passes them on to the rest (so the
    /// stage table needs no other way in). Out of line: a lone worker never calls it,
    /// and the stage table it would be inlined into is the hot path.
    #[cold]
    #[inline(never)]
    pub(crate) fn prepare(&mut self, snap: &Snapshot, enabled: StageSet) -> StageSet {
        if self.resuming {
            return enabled
                .without(Stage::Classify)
                .without(Stage::TunnelDecap)
                .without(Stage::ChecksumOffload)
                .without(Stage::PortSecurity)
                .without(Stage::Trunk)
                .with(Stage::FlowHandoff);
        }
        self.enable(snap, enabled)
    }

    /// `enabled` with this stage in it when `snap` keeps state that follows a flow:
    /// security groups on some port, SNAT or floating IPs on some router. Looked at once
    /// per generation.
    #[inline]
    fn enable(&mut self, snap: &Snapshot, enabled: StageSet) -> StageSet {
        if snap.generation() != self.generation {
            self.generation = snap.generation();
            self.needed = needs_flow_state(snap);
        }
        if self.needed {
            enabled.with(Stage::FlowHandoff)
        } else {
            enabled
        }
    }

    /// The worker that owns the flow of the packet whose L3 header (EtherType
    /// `ethertype`) starts at `l3` in `data`; records a first fragment's owner.
    pub fn owner(&mut self, routing: &Routing, data: &[u8], ethertype: u16, l3: usize) -> u16 {
        let flow = match ethertype {
            ETH_IPV4 => self.flow4(data.get(l3..).unwrap_or(&[]), true),
            ETH_IPV6 => self.flow6(data.get(l3..).unwrap_or(&[]), true),
            _ => (Flow::Local, None),
        };
        let owner = match flow.0 {
            Flow::Keyed {
                src,
                dst,
                proto,
                v4,
            } => self.keyed(routing, src, dst, proto, v4),
            Flow::Later(tag) => {
                let (t, o) = self.frags[slot_of(tag)];
                if t == tag {
                    o
                } else {
                    self.me
                }
            }
            Flow::Local => self.me,
        };
        if let Some(tag) = flow.1 {
            self.frags[slot_of(tag)] = (tag, owner);
        }
        owner
    }

    /// The flow of the IPv4 packet `ip` and, for a first fragment, its fragment tag.
    /// `quote`: an ICMP error may be followed into the packet it quotes.
    fn flow4(&self, ip: &[u8], quote: bool) -> (Flow, Option<u64>) {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return (Flow::Local, None);
        }
        let ihl = usize::from(ip[0] & 15) * 4;
        let proto = ip[9];
        let src = be32(&ip[12..16]);
        let dst = be32(&ip[16..20]);
        let frag = u16::from_be_bytes([ip[6], ip[7]]);
        let tag = || {
            let id = u16::from_be_bytes([ip[4], ip[5]]);
            self.frag_tag(u64::from(src), u64::from(dst), proto, u32::from(id))
        };
        if frag & 0x1fff != 0 {
            return (Flow::Later(tag()), None);
        }
        let first = (frag & 0x2000 != 0).then(tag);
        let l4 = ip.get(ihl.max(20)..).unwrap_or(&[]);
        if quote && proto == ICMP && matches!(l4.first(), Some(3 | 4 | 5 | 11 | 12)) {
            // An error goes with the flow of the packet it quotes.
            let (flow, _) = self.flow4(l4.get(8..).unwrap_or(&[]), false);
            return (flow, first);
        }
        let (sport, dport) = ports(proto, l4, ICMP, 8, 0);
        (
            Flow::Keyed {
                src: End {
                    addr: u64::from(src),
                    port: sport,
                },
                dst: End {
                    addr: u64::from(dst),
                    port: dport,
                },
                proto,
                v4: true,
            },
            first,
        )
    }

    /// [`FlowHandoff::flow4`] for IPv6: the fragment header is followed (directly after
    /// the fixed header); behind other extension headers the ports are not looked for,
    /// which every packet of such a flow then shares.
    fn flow6(&self, ip: &[u8], quote: bool) -> (Flow, Option<u64>) {
        if ip.len() < 40 || ip[0] >> 4 != 6 {
            return (Flow::Local, None);
        }
        let half = |at: usize| {
            u64::from_be_bytes([
                ip[at],
                ip[at + 1],
                ip[at + 2],
                ip[at + 3],
                ip[at + 4],
                ip[at + 5],
                ip[at + 6],
                ip[at + 7],
            ])
        };
        let src = fold(half(8) ^ K0, half(16) ^ K1);
        let dst = fold(half(24) ^ K0, half(32) ^ K1);
        let mut proto = ip[6];
        let mut at = 40;
        let mut first = None;
        if proto == IPV6_FRAGMENT {
            let Some(f) = ip.get(40..48) else {
                return (Flow::Local, None);
            };
            let tag = self.frag_tag(src, dst, f[0], be32(&f[4..8]));
            if u16::from_be_bytes([f[2], f[3]]) & 0xfff8 != 0 {
                return (Flow::Later(tag), None);
            }
            if f[3] & 1 != 0 {
                first = Some(tag);
            }
            proto = f[0];
            at = 48;
        }
        let l4 = ip.get(at..).unwrap_or(&[]);
        if quote && proto == ICMPV6 && matches!(l4.first(), Some(1..=4)) {
            let (flow, _) = self.flow6(l4.get(8..).unwrap_or(&[]), false);
            return (flow, first);
        }
        let (sport, dport) = ports(proto, l4, ICMPV6, 128, 129);
        (
            Flow::Keyed {
                src: End {
                    addr: src,
                    port: sport,
                },
                dst: End {
                    addr: dst,
                    port: dport,
                },
                proto,
                v4: false,
            },
            first,
        )
    }

    fn frag_tag(&self, a: u64, b: u64, proto: u8, id: u32) -> u64 {
        fold(
            fold(a ^ self.seed, b ^ K2) ^ (u64::from(id) << 8 | u64::from(proto)),
            K3,
        ) | 1
    }

    /// The owner of a keyed flow: see the module documentation.
    #[inline]
    fn keyed(&self, routing: &Routing, mut src: End, mut dst: End, proto: u8, v4: bool) -> u16 {
        if v4 {
            let snat = |e: End| {
                self.snat_ports
                    .worker_for(e.port, usize::from(self.workers))
            };
            for end in [&mut dst, &mut src] {
                match routing.external_address(end.addr as u32) {
                    Some(ExternalAddress::Snat) => {
                        if let Some(w) = snat(*end) {
                            return w as u16;
                        }
                    }
                    Some(ExternalAddress::Floating { fixed }) => end.addr = u64::from(fixed),
                    None => {}
                }
            }
        }
        let side = |e: End| fold(e.addr ^ self.seed, K1) ^ u64::from(e.port);
        let (a, b) = (side(src), side(dst));
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let h = fold(fold(lo ^ K0, hi ^ K2) ^ u64::from(proto), K3);
        (((h >> 32) * u64::from(self.workers)) >> 32) as u16
    }
}

/// Slot of a fragment tag in the table.
#[inline]
fn slot_of(tag: u64) -> usize {
    (tag >> 40) as usize % FRAG_SLOTS
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The ports of an L4 header: TCP, UDP, SCTP, DCCP and UDP-Lite their own, ICMP (of
/// protocol `icmp`) echo request and reply (types `echo`, `echo_reply`) their
/// identifier on both sides, as NAT keys them; anything else none.
fn ports(proto: u8, l4: &[u8], icmp: u8, echo: u8, echo_reply: u8) -> (u16, u16) {
    let word = |at: usize| {
        l4.get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    match proto {
        6 | 17 | 33 | 132 | 136 => (word(0), word(2)),
        p if p == icmp => match l4.first() {
            Some(&t) if t == echo || t == echo_reply => (word(4), word(4)),
            _ => (0, 0),
        },
        _ => (0, 0),
    }
}

/// Whether `snap` keeps any state that follows a flow.
fn needs_flow_state(snap: &Snapshot) -> bool {
    snap.routing().has_flow_state()
        || (0..snap.port_slots()).any(|i| {
            let set = snap.port_stages(crate::port::PortId(i as u16));
            set.contains(Stage::SgEgress) || set.contains(Stage::SgIngress)
        })
}

impl BurstStage for FlowHandoff {
    fn id(&self) -> Stage {
        Stage::FlowHandoff
    }

    fn wants(&self) -> Pending {
        // Handed packets enter here, the burst still pending classification.
        Pending::L2 | Pending::CLASSIFY
    }

    // Out of line, so that the stage table's loop (the single-worker hot path, which
    // never runs it) keeps the shape it has without it.
    #[inline(never)]
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        if self.resuming {
            // Packets handed to this worker: on to the stateful stages.
            return Outcome {
                packets: 0,
                produced: Pending::L2,
            };
        }
        // An explained packet is decided where it is asked about.
        if cx.dry_run || !self.active {
            return Outcome::default();
        }
        let routing = cx.snap.routing();
        let mut owners = [u16::MAX; MAX_BURST];
        let (mut seen, mut remote) = (0u32, 0);
        for (i, pkt) in pkts.iter().enumerate() {
            if pkt.meta.next != Next::L2 {
                continue;
            }
            seen += 1;
            let data = cx.pool.data(pkt);
            let owner = self.owner(
                routing,
                data,
                pkt.meta.ethertype,
                usize::from(pkt.meta.l3_offset),
            );
            if owner != self.me {
                owners[i] = owner;
                remote += 1;
            }
        }
        if remote == 0 {
            return Outcome {
                packets: seen,
                produced: Pending::NONE,
            };
        }
        hand(cx, pkts, &mut owners);
        Outcome {
            packets: seen,
            produced: Pending::DONE,
        }
    }
}

/// Hands each packet with an owner in `owners` to it, in order per owner; what the ring
/// to an owner cannot hold is dropped.
#[cold]
#[inline(never)]
fn hand(cx: &mut BurstCtx<'_>, pkts: &mut [Packet], owners: &mut [u16; MAX_BURST]) {
    let n = pkts.len().min(MAX_BURST);
    for i in 0..n {
        let owner = owners[i];
        if owner == u16::MAX {
            continue;
        }
        let mut idx = [0u8; MAX_BURST];
        let mut count = 0;
        for (j, o) in owners.iter_mut().enumerate().take(n).skip(i) {
            if *o == owner {
                idx[count] = j as u8;
                count += 1;
                *o = u16::MAX;
            }
        }
        let pushed = cx
            .ports
            .handoff
            .hand_flows(owner, cx.in_port, pkts, &idx[..count], &*cx.pool);
        settle(cx.pool, pkts, &idx[..count], pushed);
        cx.counters.flow_handoffs.add(pushed as u64);
        cx.counters.flow_handoff_drops.add((count - pushed) as u64);
    }
}

/// Frees the frames of the first `pushed` packets of `idx` (the ring holds copies) and
/// drops the rest.
fn settle(pool: &mut FramePool, pkts: &mut [Packet], idx: &[u8], pushed: usize) {
    for (k, &i) in idx.iter().enumerate() {
        let pkt = &mut pkts[usize::from(i)];
        if k < pushed {
            pool.free(pkt.frame);
            pkt.meta.next = Next::Consumed;
        } else {
            pkt.meta.next = Next::Drop(DropReason::FlowHandoffRingFull, Stage::FlowHandoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 7, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn both_directions_agree_and_flows_spread() {
        let routing = Routing::default();
        let mut f = FlowHandoff::new(0, 4, 0x1234, PortRange::DEFAULT);
        let mut hits = [0u32; 4];
        for port in 0..400u16 {
            let a = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 6, 40000 + port, 80);
            let b = ipv4([198, 18, 0, 2], [198, 18, 0, 1], 6, 80, 40000 + port);
            let o = f.owner(&routing, &a, ETH_IPV4, 0);
            assert_eq!(o, f.owner(&routing, &b, ETH_IPV4, 0));
            hits[usize::from(o)] += 1;
        }
        assert!(hits.iter().all(|&h| h > 50), "{hits:?}");
    }

    #[test]
    fn the_seed_changes_the_owners() {
        let routing = Routing::default();
        let mut f = FlowHandoff::new(0, 4, 1, PortRange::DEFAULT);
        let mut g = FlowHandoff::new(0, 4, 2, PortRange::DEFAULT);
        let differ = (0..64u16)
            .filter(|&p| {
                let a = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, 5000 + p, 53);
                f.owner(&routing, &a, ETH_IPV4, 0) != g.owner(&routing, &a, ETH_IPV4, 0)
            })
            .count();
        assert!(differ > 16, "{differ}");
    }

    #[test]
    fn an_icmp_error_goes_with_the_flow_it_quotes() {
        let routing = Routing::default();
        let mut f = FlowHandoff::new(0, 8, 9, PortRange::DEFAULT);
        for port in 0..64u16 {
            let flow = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, 7000 + port, 53);
            let mut err = ipv4([198, 18, 9, 9], [198, 18, 0, 1], ICMP, 0x0303, 0);
            err.truncate(28);
            err.extend_from_slice(&flow[..28]);
            assert_eq!(
                f.owner(&routing, &flow, ETH_IPV4, 0),
                f.owner(&routing, &err, ETH_IPV4, 0)
            );
        }
    }

    #[test]
    fn later_fragments_follow_the_first() {
        let routing = Routing::default();
        let mut f = FlowHandoff::new(1, 8, 9, PortRange::DEFAULT);
        for port in 0..64u16 {
            let mut first = ipv4([198, 18, 0, 1], [198, 18, 0, 2], 17, 9000 + port, 53);
            first[4..6].copy_from_slice(&port.to_be_bytes());
            first[6] = 0x20; // MF
            let mut later = first.clone();
            later[6] = 0;
            later[7] = 10; // offset 80 bytes
            let owner = f.owner(&routing, &first, ETH_IPV4, 0);
            assert_eq!(owner, f.owner(&routing, &later, ETH_IPV4, 0));
        }
        // Unknown later fragments stay.
        let mut stray = ipv4([198, 18, 0, 7], [198, 18, 0, 8], 17, 1, 2);
        stray[7] = 10;
        assert_eq!(f.owner(&routing, &stray, ETH_IPV4, 0), 1);
    }

    #[test]
    fn not_ip_stays() {
        let mut f = FlowHandoff::new(3, 4, 0, PortRange::DEFAULT);
        assert_eq!(f.owner(&Routing::default(), &[0; 28], 0x0806, 0), 3);
        assert_eq!(f.owner(&Routing::default(), &[0x45; 10], ETH_IPV4, 0), 3);
    }
}
