//! Trunk ports (Neutron's trunk extension, VLAN-aware VMs): a parent port whose frames
//! tagged with a subport's VLAN ID belong to that subport, a port of another network
//! with no interface of its own.
//!
//! The subport is an ordinary VM port in the snapshot (its network, MACs, port security,
//! security groups, QoS, counters); only its frames travel on the parent's interface.
//! So that every stage keeps taking its identity from the burst's input port, a burst
//! received on a parent is split here, before classification, into one sub-burst per
//! port (the parent's untagged and priority-tagged frames, each subport's frames with
//! their tag popped), each run through the stage table as if received on that port.
//! Frames to a subport leave through [`crate::output`] tagged with its VLAN ID (as an
//! uplink's VLAN networks do) on the parent's interface ([`Trunks::parent`], used by the
//! output stage for a port that has no driver).

use crate::buf::FramePool;
use crate::counters::WorkerCounters;
use crate::drop::DropReason;
use crate::output::{drop_held, set_egress_tag};
use crate::packet::{Meta, Packet, MAX_BURST};
use crate::pipeline::{tsc, BurstCtx, Stage, StageTable};
use crate::port::PortId;
use crate::wire::{EtherType, EthernetFrame, VlanTag};

/// The trunks of a snapshot: per parent its subports by VLAN ID, per subport its parent
/// and VLAN ID. Empty (and never looked at) without trunks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trunks {
    /// (parent, VLAN ID, subport), sorted: a parent's subports are one run, by VID.
    by_parent: Box<[(PortId, u16, PortId)]>,
    /// Per port id, `(parent, vid)` of a subport; VID 0 for any other port.
    of_subport: Box<[(PortId, u16)]>,
}

impl Trunks {
    /// The trunks from `(parent, vid, subport)` triples; the builder checked them.
    pub(crate) fn new(mut subports: Vec<(PortId, u16, PortId)>) -> Trunks {
        subports.sort_unstable();
        let len = subports.iter().map(|s| s.2.index() + 1).max().unwrap_or(0);
        let mut of_subport = vec![(PortId(0), 0u16); len].into_boxed_slice();
        for &(parent, vid, sub) in &subports {
            of_subport[sub.index()] = (parent, vid);
        }
        Trunks {
            by_parent: subports.into_boxed_slice(),
            of_subport,
        }
    }

    /// True when no port is a trunk's parent.
    pub fn is_empty(&self) -> bool {
        self.by_parent.is_empty()
    }

    /// The subport of `parent` reached by VLAN ID `vid`.
    #[inline]
    pub fn subport(&self, parent: PortId, vid: u16) -> Option<PortId> {
        self.by_parent
            .binary_search_by(|&(p, v, _)| (p, v).cmp(&(parent, vid)))
            .ok()
            .map(|i| self.by_parent[i].2)
    }

    /// The parent of subport `port` and the VLAN ID its frames carry there.
    #[inline]
    pub fn parent(&self, port: PortId) -> Option<(PortId, u16)> {
        self.of_subport
            .get(port.index())
            .copied()
            .filter(|&(_, vid)| vid != 0)
    }

    /// Every `(parent, vid, subport)`, by parent and VID.
    pub fn iter(&self) -> impl Iterator<Item = (PortId, u16, PortId)> + '_ {
        self.by_parent.iter().copied()
    }
}

/// Counts a frame to subport `sub` (tagged, on its way to the parent's interface) as the
/// subport's; the parent's counters count it again when its driver sends it.
#[cold]
#[inline(never)]
pub(crate) fn count_subport_tx(
    counters: &WorkerCounters,
    pool: &FramePool,
    sub: PortId,
    pkt: &Packet,
) {
    if let Some(pc) = counters.port(sub) {
        pc.tx_packets.inc();
        pc.tx_bytes.add(pool.packet_len(pkt) as u64);
    }
}

/// Where one received frame of a parent belongs: the parent itself (untagged, a priority
/// tag, or too short to tell: classification decides), a subport (its tag to pop), or
/// nowhere (a VLAN ID no subport has).
#[inline]
fn demux(trunks: &Trunks, parent: PortId, data: &[u8]) -> Result<Option<PortId>, DropReason> {
    let Ok(eth) = EthernetFrame::new_checked(data) else {
        return Ok(None);
    };
    if eth.ethertype() != EtherType::VLAN {
        return Ok(None);
    }
    let Ok(tag) = VlanTag::new_checked(eth.payload()) else {
        return Ok(None);
    };
    match tag.tci() & 0x0fff {
        0 => Ok(None),
        vid => trunks
            .subport(parent, vid)
            .map(Some)
            .ok_or(DropReason::UnknownTrunkVlan),
    }
}

/// Splits a burst received on trunk parent `cx.in_port` into its ports' sub-bursts and
/// runs each through `table` as received on its port (see the module documentation).
/// Frames keep their order within each port.
pub(crate) fn run_split(table: &mut StageTable, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) {
    let t = tsc::now();
    let parent = cx.in_port;
    let snap = cx.snap;
    let trunks = snap.trunks();
    let mut kept = 0;
    for i in 0..pkts.len() {
        let mut pkt = pkts[i];
        pkt.in_port = parent;
        match demux(trunks, parent, cx.pool.data(&pkt)) {
            Ok(None) => {}
            Ok(Some(sub)) => {
                pop_tag(cx.pool, &mut pkt);
                pkt.in_port = sub;
            }
            Err(reason) => {
                drop_held(cx, pkt, Stage::Trunk, reason);
                continue;
            }
        }
        pkts[kept] = pkt;
        kept += 1;
    }
    finish(table, cx, &mut pkts[..kept], t);
}

/// Removes the frame's 802.1Q tag (which [`demux`] found), as the output stage removes
/// an uplink's; the metadata is classification's to fill afterwards.
#[inline]
fn pop_tag(pool: &mut FramePool, pkt: &mut Packet) {
    pkt.meta = Meta {
        flags: Meta::VLAN,
        l3_offset: (EthernetFrame::<&[u8]>::HEADER_LEN + VlanTag::<&[u8]>::HEADER_LEN) as u8,
        ..Meta::default()
    };
    // Popping needs no headroom: it cannot fail.
    let _ = set_egress_tag(pool, pkt, None);
    pkt.meta = Meta::default();
}

/// Counts the split as the trunk stage's work, then runs each port's frames, in the
/// order their ports first appear in the burst.
#[inline]
fn finish(table: &mut StageTable, cx: &mut BurstCtx<'_>, pkts: &mut [Packet], t: u64) {
    let counters = cx.counters;
    let i = Stage::Trunk as usize;
    counters.stage_calls[i].inc();
    counters.stage_packets[i].add(pkts.len() as u64);
    counters.stage_cycles[i].add(tsc::now().wrapping_sub(t));
    let parent = cx.in_port;
    let role = cx.role;
    let mut group = [Packet::default(); MAX_BURST];
    let mut done = 0u64;
    for first in 0..pkts.len() {
        if done & (1 << first) != 0 {
            continue;
        }
        let port = pkts[first].in_port;
        let mut n = 0;
        let mut bytes = 0u64;
        for (k, pkt) in pkts.iter().enumerate().skip(first) {
            if pkt.in_port == port {
                done |= 1 << k;
                group[n] = *pkt;
                n += 1;
                bytes += cx.pool.packet_len(pkt) as u64;
            }
        }
        if port != parent {
            // The parent's counters are its interface's: the frame was received there
            // (its bytes with the tag); the subport counts its own frames.
            if let Some(pc) = counters.port(port) {
                pc.rx_packets.add(n as u64);
            }
            if let Some(pc) = counters.port(parent) {
                pc.rx_bytes.add(bytes + 4 * n as u64);
            }
        }
        cx.in_port = port;
        cx.role = cx.snap.port(port);
        let mut enabled = cx.snap.port_stages(port).without(Stage::Trunk);
        if table.flow.active {
            enabled = table.flow.prepare(cx.snap, enabled).without(Stage::Trunk);
        }
        table.run_port(cx, &mut group[..n], enabled);
    }
    cx.in_port = parent;
    cx.role = role;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subports_by_parent_and_vid() {
        let t = Trunks::new(vec![
            (PortId(1), 200, PortId(5)),
            (PortId(1), 100, PortId(4)),
            (PortId(2), 100, PortId(6)),
        ]);
        assert_eq!(t.subport(PortId(1), 100), Some(PortId(4)));
        assert_eq!(t.subport(PortId(1), 200), Some(PortId(5)));
        assert_eq!(t.subport(PortId(2), 100), Some(PortId(6)));
        assert_eq!(t.subport(PortId(2), 200), None);
        assert_eq!(t.parent(PortId(5)), Some((PortId(1), 200)));
        assert_eq!(t.parent(PortId(1)), None);
        assert_eq!(t.parent(PortId(60)), None);
    }

    #[test]
    fn demux_by_tag() {
        let t = Trunks::new(vec![(PortId(1), 100, PortId(4))]);
        let mut f = vec![0u8; 64];
        f[6] = 0x02;
        f[12..14].copy_from_slice(&[0x81, 0x00]);
        f[14..16].copy_from_slice(&100u16.to_be_bytes());
        f[16..18].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(demux(&t, PortId(1), &f), Ok(Some(PortId(4))));
        f[14..16].copy_from_slice(&0xe000u16.to_be_bytes());
        assert_eq!(
            demux(&t, PortId(1), &f),
            Ok(None),
            "priority tag: the parent's"
        );
        f[14..16].copy_from_slice(&101u16.to_be_bytes());
        assert_eq!(demux(&t, PortId(1), &f), Err(DropReason::UnknownTrunkVlan));
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(demux(&t, PortId(1), &f), Ok(None));
        assert_eq!(
            demux(&t, PortId(1), &f[..10]),
            Ok(None),
            "runt: classify drops it"
        );
    }
}
