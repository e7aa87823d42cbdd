//! The ARP responder of overlay networks (Neutron's `arp_responder` with l2population):
//! a VM's broadcast ARP request for the address of a port the configuration knows, on
//! this host or another, is answered here, from that port's MAC, and never crosses the
//! underlay. Requests for other addresses, and gratuitous ARP, flood as before.

use crate::ident::{NetworkSlot, PackedMac};
use crate::overlay::Overlay;
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::wire::{ArpOperation, ArpPacket, EtherType, EthernetFrame};

/// The ARP responder stage: stateless.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArpResponder;

impl BurstStage for ArpResponder {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::ArpResponder
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::SEND
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let ov = cx.snap.overlay();
        let mut entered = 0;
        for pkt in pkts.iter_mut() {
            if pkt.meta.next != Next::Flood
                || pkt.meta.ethertype != EtherType::ARP.0
                || pkt.meta.flags & Meta::VLAN != 0
            {
                continue;
            }
            entered += 1;
            let l3 = usize::from(pkt.meta.l3_offset);
            if answer(ov, pkt.meta.network, cx.pool.data_mut(pkt), l3) {
                pkt.meta.next = Next::Output(pkt.in_port);
                pkt.meta.flags &= !Meta::MULTICAST;
                cx.counters.arp_responder_replies.inc();
            }
        }
        Outcome {
            packets: entered,
            produced: Pending::SEND,
        }
    }
}

/// Rewrites an ARP request on network `slot` into its reply, if the configuration knows
/// the asked address; returns whether it did.
fn answer(ov: &Overlay, slot: NetworkSlot, data: &mut [u8], l3: usize) -> bool {
    let Some(Ok(req)) = data.get(l3..).map(ArpPacket::new_checked) else {
        return false;
    };
    if !req.is_ethernet_ipv4() || req.operation() != ArpOperation::REQUEST {
        return false;
    }
    let target = req.target_protocol_addr();
    let sender_ip = req.sender_protocol_addr();
    // A gratuitous ARP announces the sender's own address: nothing to answer.
    if target == sender_ip {
        return false;
    }
    let Some(mac) = ov.arp_answer(slot, u32::from(target)) else {
        return false;
    };
    let sender_mac = req.sender_hardware_addr();
    // A port asking for its own address (duplicate address detection) must hear no one.
    if mac == PackedMac::new(sender_mac) {
        return false;
    }
    let mac = mac.address();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    eth.set_dst_addr(sender_mac);
    eth.set_src_addr(mac);
    let mut reply = ArpPacket::new_unchecked(&mut data[l3..]);
    reply.set_operation(ArpOperation::REPLY);
    reply.set_sender_hardware_addr(mac);
    reply.set_sender_protocol_addr(target);
    reply.set_target_hardware_addr(sender_mac);
    reply.set_target_protocol_addr(sender_ip);
    true
}
