//! The first stage: parse the Ethernet and 802.1Q headers once into [`Meta`] and decide
//! which network the frame belongs to.

use crate::buf::FramePool;
use crate::drop::DropReason;
use crate::packet::{Meta, Next, Packet};
use crate::port::PortId;
use crate::snapshot::{PortRole, Snapshot, NO_NETWORK};
use crate::wire::{EtherType, EthernetFrame, VlanTag};

/// Parses and classifies every packet of a receive burst from `in_port`.
#[inline]
pub fn classify(snap: &Snapshot, pool: &FramePool, in_port: PortId, pkts: &mut [Packet]) {
    let role = snap.port(in_port);
    for pkt in pkts.iter_mut() {
        pkt.in_port = in_port;
        pkt.meta = match parse(pool.data(pkt)) {
            Ok(meta) => meta,
            Err(reason) => {
                pkt.meta.next = Next::Drop(reason);
                continue;
            }
        };
        let tci = (pkt.meta.flags & Meta::VLAN != 0).then_some(pkt.meta.tci);
        let network = match role {
            PortRole::Absent => Err(DropReason::PortNotConfigured),
            // A priority tag (VID 0) on a VM port is tolerated, as 802.1Q asks.
            PortRole::Access { network, .. } => match tci {
                Some(t) if t & 0x0fff != 0 => Err(DropReason::TaggedOnAccess),
                _ => Ok(network),
            },
            PortRole::Uplink { vlan_map, .. } => match snap.uplink_network(vlan_map, tci) {
                NO_NETWORK if tci.is_some_and(|t| t & 0x0fff != 0) => Err(DropReason::UnknownVlan),
                NO_NETWORK => Err(DropReason::NoFlatNetwork),
                slot => Ok(slot),
            },
        };
        match network {
            Ok(slot) => {
                pkt.meta.network = slot;
                pkt.meta.next = Next::L2;
            }
            Err(reason) => pkt.meta.next = Next::Drop(reason),
        }
    }
}

/// Extracts the L2 facts of one frame.
#[inline]
pub fn parse(data: &[u8]) -> Result<Meta, DropReason> {
    let eth = EthernetFrame::new_checked(data).map_err(|_| DropReason::Runt)?;
    let dst = eth.dst_addr();
    let src = eth.src_addr();
    if src.is_multicast() {
        return Err(DropReason::SrcMacMulticast);
    }
    let mut meta = Meta {
        dst_mac: dst.as_u64(),
        src_mac: src.as_u64(),
        l3_offset: EthernetFrame::<&[u8]>::HEADER_LEN as u8,
        ethertype: eth.ethertype().0,
        next: Next::L2,
        ..Meta::default()
    };
    if dst.is_multicast() {
        meta.flags |= Meta::MULTICAST;
    }
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
