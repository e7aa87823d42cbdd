//! The first stage: parse the Ethernet and 802.1Q headers once into [`Meta`] and decide
//! which network the frame belongs to.

use crate::buf::FramePool;
use crate::drop::DropReason;
use crate::ident::NetworkSlot;
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::snapshot::{PortRole, Snapshot};
use crate::wire::{EtherType, EthernetFrame, VlanTag};

/// The classify stage: stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct Classify;

impl BurstStage for Classify {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::Classify
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::CLASSIFY
    }

    #[inline(always)]
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let bytes = classify(cx.snap, cx.pool, cx.in_port, cx.role, pkts);
        // The received bytes are summed here, in the loop that reads every packet anyway.
        if let Some(pc) = cx.counters.port(cx.in_port) {
            pc.rx_bytes.add(bytes);
        }
        Outcome {
            packets: pkts.len() as u32,
            produced: Pending::L2 | Pending::DONE,
        }
    }
}

/// Parses and classifies every packet of a receive burst from `in_port`, whose role is
/// `role`. A burst comes from one port, so the loop is specialised to its role. Returns
/// the bytes received.
#[inline]
pub fn classify(
    snap: &Snapshot,
    pool: &FramePool,
    in_port: PortId,
    role: PortRole,
    pkts: &mut [Packet],
) -> u64 {
    match role {
        PortRole::Absent | PortRole::Tunnel => {
            let mut bytes = 0;
            for pkt in pkts.iter_mut() {
                pkt.in_port = in_port;
                pkt.meta.next = Next::Drop(DropReason::PortNotConfigured, Stage::Classify);
                bytes += pool.packet_len(pkt) as u64;
            }
            bytes
        }
        // A priority tag (VID 0) on a VM port is tolerated, as 802.1Q asks.
        PortRole::Access { network, .. } => classify_with(pool, in_port, pkts, |tci| match tci {
            Some(t) if t & 0x0fff != 0 => Err(DropReason::TaggedOnAccess),
            _ => Ok(network),
        }),
        PortRole::Uplink { vlan_map, .. } => {
            let Some(map) = snap.vlan_map(vlan_map) else {
                debug_assert!(false, "uplink without VLAN map");
                return classify_with(pool, in_port, pkts, |_| Err(DropReason::InternalError));
            };
            classify_with(pool, in_port, pkts, |tci| match map.network(tci) {
                Some(slot) => Ok(slot),
                None if tci.is_some_and(|t| t & 0x0fff != 0) => Err(DropReason::UnknownVlan),
                None => Err(DropReason::NoFlatNetwork),
            })
        }
    }
}

#[inline(always)]
fn classify_with(
    pool: &FramePool,
    in_port: PortId,
    pkts: &mut [Packet],
    network_of: impl Fn(Option<u16>) -> Result<NetworkSlot, DropReason>,
) -> u64 {
    let frames = pool.reader();
    let (mut bytes, mut chained) = (0, false);
    for pkt in pkts.iter_mut() {
        bytes += u64::from(pkt.len);
        chained |= pkt.chained;
        pkt.in_port = in_port;
        pkt.meta = match parse(frames.data(pkt)) {
            Ok(meta) => meta,
            Err(reason) => Meta {
                next: Next::Drop(reason, Stage::Classify),
                ..Meta::default()
            },
        };
        let tci = (pkt.meta.flags & Meta::VLAN != 0).then_some(pkt.meta.tci);
        match network_of(tci) {
            Ok(slot) if pkt.meta.next == Next::L2 => pkt.meta.network = slot,
            Ok(_) => {}
            Err(reason) => pkt.meta.next = Next::Drop(reason, Stage::Classify),
        }
    }
    if chained {
        bytes += pool.tails_len(pkts);
    }
    bytes
}

/// Extracts the L2 facts of one frame; the next step is L2 unless it is malformed.
/// Always inlined: its two callers (classification and tunnel decapsulation) are per-packet
/// loops, and left to the compiler the second made it a call (+50 instructions per packet).
#[inline(always)]
pub fn parse(data: &[u8]) -> Result<Meta, DropReason> {
    let eth = EthernetFrame::new_checked(data).map_err(|_| DropReason::Runt)?;
    if eth.src_addr().is_multicast() {
        return Err(DropReason::SrcMacMulticast);
    }
    let mut meta = Meta {
        next: Next::L2,
        ethertype: eth.ethertype().0,
        l3_offset: EthernetFrame::<&[u8]>::HEADER_LEN as u8,
        flags: if eth.dst_addr().is_multicast() {
            Meta::MULTICAST
        } else {
            0
        },
        ..Meta::default()
    };
    match EtherType(meta.ethertype) {
        EtherType::VLAN => {
            let tag = VlanTag::new_checked(eth.payload()).map_err(|_| DropReason::TruncatedVlan)?;
            meta.flags |= Meta::VLAN;
            meta.tci = tag.tci();
            meta.ethertype = tag.ethertype().0;
            meta.l3_offset += VlanTag::<&[u8]>::HEADER_LEN as u8;
            if matches!(EtherType(meta.ethertype), EtherType::VLAN | EtherType::QINQ) {
                return Err(DropReason::StackedVlan);
            }
        }
        EtherType::QINQ => return Err(DropReason::StackedVlan),
        _ => {}
    }
    Ok(meta)
}
