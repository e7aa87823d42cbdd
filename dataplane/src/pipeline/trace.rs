//! Packet trace, as VPP's `trace add`: for the next N packets received on one port (that
//! match a [`TraceMatch`], when one is given), every stage they passed and what it
//! decided. Off, it costs one branch per burst; on, its memory is bounded by the count
//! asked for, allocated when the trace is started (by a job on the worker's thread), never
//! on the packet path.

use super::Stage;
use crate::buf::FramePool;
use crate::lpm::prefix_mask;
use crate::packet::{Next, Packet};
use crate::port::PortId;

/// Which received frames a trace records: every field given must match, as a frame
/// arrives on the wire (before any rewrite). An empty match takes every frame.
///
/// Addresses are prefixes (`/32` for one host); ports match TCP and UDP only, and only the
/// first fragment carries them. A field a frame does not have (an untagged frame and
/// `vlan`, ARP and `proto`) does not match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceMatch {
    /// Source MAC.
    pub src_mac: Option<[u8; 6]>,
    /// Destination MAC.
    pub dst_mac: Option<[u8; 6]>,
    /// 802.1Q VLAN id of the outer tag.
    pub vlan: Option<u16>,
    /// Ethertype after the tag, if any.
    pub ethertype: Option<u16>,
    /// IPv4 source prefix (address, length), host order.
    pub src_ip: Option<(u32, u8)>,
    /// IPv4 destination prefix.
    pub dst_ip: Option<(u32, u8)>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// TCP/UDP source port.
    pub src_port: Option<u16>,
    /// TCP/UDP destination port.
    pub dst_port: Option<u16>,
}

/// The fields of a frame a [`TraceMatch`] looks at.
#[derive(Default)]
struct FrameFields {
    vlan: Option<u16>,
    ethertype: u16,
    ipv4: Option<(u32, u32, u8)>,
    ports: Option<(u16, u16)>,
}

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_IPV4: u16 = 0x0800;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl FrameFields {
    /// Reads what it can of `frame`; a truncated header leaves the later fields unset.
    fn parse(frame: &[u8]) -> FrameFields {
        let mut f = FrameFields::default();
        let Some(mut ethertype) = be16(frame, 12) else {
            return f;
        };
        let mut l3 = 14;
        if ethertype == ETHERTYPE_VLAN {
            f.vlan = be16(frame, 14).map(|tci| tci & 0x0fff);
            let Some(inner) = be16(frame, 16) else {
                return f;
            };
            ethertype = inner;
            l3 = 18;
        }
        f.ethertype = ethertype;
        if ethertype != ETHERTYPE_IPV4 {
            return f;
        }
        let (Some(&ver_ihl), Some(&proto), Some(flags_frag), Some(src), Some(dst)) = (
            frame.get(l3),
            frame.get(l3 + 9),
            be16(frame, l3 + 6),
            be32(frame, l3 + 12),
            be32(frame, l3 + 16),
        ) else {
            return f;
        };
        f.ipv4 = Some((src, dst, proto));
        let l4 = l3 + usize::from(ver_ihl & 0x0f) * 4;
        let first_fragment = flags_frag & 0x1fff == 0;
        if first_fragment && matches!(proto, 6 | 17) {
            if let (Some(sport), Some(dport)) = (be16(frame, l4), be16(frame, l4 + 2)) {
                f.ports = Some((sport, dport));
            }
        }
        f
    }
}

fn in_prefix(ip: u32, (net, len): (u32, u8)) -> bool {
    let mask = prefix_mask(len);
    ip & mask == net & mask
}

impl TraceMatch {
    /// Whether this matches every frame.
    pub fn is_empty(&self) -> bool {
        *self == TraceMatch::default()
    }

    /// Whether `frame` (as received) matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let mac_is = |at: usize, want: Option<[u8; 6]>| {
            want.is_none_or(|m| frame.get(at..at + 6) == Some(&m[..]))
        };
        if !mac_is(0, self.dst_mac) || !mac_is(6, self.src_mac) {
            return false;
        }
        let f = FrameFields::parse(frame);
        let ip = f.ipv4;
        self.vlan.is_none_or(|v| f.vlan == Some(v))
            && self.ethertype.is_none_or(|e| f.ethertype == e)
            && self
                .src_ip
                .is_none_or(|p| ip.is_some_and(|(src, _, _)| in_prefix(src, p)))
            && self
                .dst_ip
                .is_none_or(|p| ip.is_some_and(|(_, dst, _)| in_prefix(dst, p)))
            && self
                .proto
                .is_none_or(|want| ip.is_some_and(|(_, _, proto)| proto == want))
            && self
                .src_port
                .is_none_or(|want| f.ports.is_some_and(|(sport, _)| sport == want))
            && self
                .dst_port
                .is_none_or(|want| f.ports.is_some_and(|(_, dport)| dport == want))
    }
}

/// Most packets one trace records.
pub const MAX_TRACE_PACKETS: usize = 256;
/// Most steps recorded per packet (every built-in stage fits, with room to spare).
pub const MAX_TRACE_STEPS: usize = 8;

/// One stage a traced packet passed, and the next step it left the packet with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStep {
    /// The stage.
    pub stage: Stage,
    /// Its decision.
    pub next: Next,
}

/// What happened to one traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Generation of the snapshot the burst ran with.
    pub generation: u64,
    /// The port it came in on.
    pub port: PortId,
    /// Its length as received.
    pub len: u32,
    steps: [TraceStep; MAX_TRACE_STEPS],
    n_steps: u8,
    /// Its index in the burst being traced.
    index: u8,
}

impl TraceRecord {
    /// The stages passed, in order.
    pub fn steps(&self) -> &[TraceStep] {
        &self.steps[..usize::from(self.n_steps)]
    }

    fn push(&mut self, stage: Stage, next: Next) {
        if let Some(slot) = self.steps.get_mut(usize::from(self.n_steps)) {
            *slot = TraceStep { stage, next };
            self.n_steps += 1;
        }
    }
}

/// An armed (or finished) trace.
#[derive(Debug)]
pub struct Tracer {
    port: PortId,
    filter: TraceMatch,
    wanted: usize,
    records: Vec<TraceRecord>,
    /// Records of the burst being traced: `records[first..]`.
    first: usize,
}

impl Tracer {
    /// A trace of the next `count` packets (at most [`MAX_TRACE_PACKETS`]) from `port`
    /// that `filter` matches.
    pub fn new(port: PortId, count: usize, filter: TraceMatch) -> Self {
        let wanted = count.min(MAX_TRACE_PACKETS);
        Tracer {
            port,
            filter,
            wanted,
            records: Vec::with_capacity(wanted),
            first: 0,
        }
    }

    /// The packets recorded so far.
    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    /// The traced port.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// Which packets it records.
    pub fn filter(&self) -> &TraceMatch {
        &self.filter
    }

    /// How many packets it still waits for.
    pub fn remaining(&self) -> usize {
        self.wanted - self.records.len()
    }

    /// Starts recording a burst from `port`: returns how many of its packets are traced
    /// (0 when the burst is from another port, none matches or the trace is complete).
    #[inline]
    pub(crate) fn begin(
        &mut self,
        port: PortId,
        pkts: &[Packet],
        pool: &FramePool,
        generation: u64,
    ) -> usize {
        if port != self.port {
            return 0;
        }
        self.first = self.records.len();
        for (index, pkt) in pkts.iter().enumerate() {
            if self.remaining() == 0 {
                break;
            }
            if !self.filter.matches(pool.data(pkt)) {
                continue;
            }
            // Within the capacity reserved at `new`: no allocation here. A burst holds
            // at most MAX_BURST (< 256) packets, so the index fits.
            self.records.push(TraceRecord {
                generation,
                port,
                len: pool.packet_len(pkt) as u32,
                steps: [TraceStep::default(); MAX_TRACE_STEPS],
                n_steps: 0,
                index: index as u8,
            });
        }
        self.records.len() - self.first
    }

    /// Records that `stage` ran over the traced packets of the burst: a step for each
    /// packet whose next step it changed (or every packet, with `always`).
    pub(crate) fn record(&mut self, stage: Stage, pkts: &[Packet], always: bool) {
        for rec in &mut self.records[self.first..] {
            let Some(pkt) = pkts.get(usize::from(rec.index)) else {
                continue;
            };
            let changed = rec
                .steps()
                .last()
                .is_none_or(|last| last.next != pkt.meta.next);
            if always || changed {
                rec.push(stage, pkt.meta.next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matching_never_panics(
            frame in proptest::collection::vec(any::<u8>(), 0..80),
            vlan in any::<Option<u16>>(),
            proto in any::<Option<u8>>(),
            dst_port in any::<Option<u16>>(),
            dst_ip in any::<Option<(u32, u8)>>(),
        ) {
            let m = TraceMatch { vlan, proto, dst_port, dst_ip, ..TraceMatch::default() };
            let _ = m.matches(&frame);
        }
    }
}
