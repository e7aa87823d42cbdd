//! L2 switching with Neutron semantics: each network is its own broadcast domain; VM
//! ports' MACs are static, everything else is learned; group and unknown destinations
//! flood within the network only.

mod learn;

pub use learn::{LearnLimits, LearnOutcome, Learned, MacTable};

use crate::buf::FramePool;
use crate::counters::{Stage, WorkerCounters};
use crate::drop::DropReason;
use crate::packet::{Meta, Next, Packet};
use crate::port::PortId;
use crate::snapshot::{fdb_key, NetworkUid, PortRole, Snapshot, NO_MAC};
use crate::wire::{EtherType, EthernetFrame};

/// Which of the optional stages a burst needs after the L2 stage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Onward {
    /// Some packet goes to a router ([`Next::Route`] or [`Next::Arp`]).
    pub route: bool,
    /// Some packet goes to the slow-path stage ([`Next::Local`]).
    pub local: bool,
}

/// Learns source MACs and picks the output of every packet of a burst from `in_port`
/// whose next step is L2. `now` is the worker clock in seconds. Says which optional
/// stages the burst needs, so the router and slow-path stages run only for bursts that
/// need them.
#[inline]
pub fn forward(
    snap: &Snapshot,
    pool: &FramePool,
    macs: &mut MacTable,
    counters: &WorkerCounters,
    now: u32,
    in_port: PortId,
    pkts: &mut [Packet],
) -> Onward {
    // A VM port's own MAC needs no learning: it is a static entry already.
    let own_mac = match snap.port(in_port) {
        PortRole::Access { mac, .. } => mac,
        _ => NO_MAC,
    };
    let limits = LearnLimits {
        per_network: snap.l2().mac_limit_per_network,
        per_vm_port: snap.l2().mac_limit_per_port,
        vm_port: matches!(snap.port(in_port), PortRole::Access { .. }),
    };
    // A burst is mostly runs of one flow. Like VPP's l2-learn and l2-fwd, remember the last
    // key of each lookup within the burst, so a run costs one lookup rather than one per
    // frame. No key equals `NO_KEY`: slot 0xffff is never assigned.
    const NO_KEY: u64 = u64::MAX;
    let mut last_src = NO_KEY;
    let mut last_dst = NO_KEY;
    let mut last_next = Next::Flood;
    let mut entered = 0;
    let mut onward = Onward::default();
    for pkt in pkts.iter_mut() {
        if pkt.meta.next != Next::L2 {
            continue;
        }
        entered += 1;
        let slot = pkt.meta.network;
        let Some(net) = snap.network(slot) else {
            debug_assert!(false, "packet classified into missing slot {slot}");
            pkt.meta.next = Next::Drop(DropReason::PortNotConfigured);
            continue;
        };
        // Classification checked that the frame holds a whole Ethernet header.
        let eth = EthernetFrame::new_unchecked(pool.data(pkt));
        let src = eth.src_addr_u64();
        let src_key = fdb_key(slot, src);
        if src != own_mac && src_key != last_src {
            last_src = src_key;
            if learn(
                snap, macs, counters, slot, net.uid, src, in_port, now, limits,
            ) {
                // The table changed: a cached forwarding decision may be stale.
                last_dst = NO_KEY;
            }
        }
        if pkt.meta.flags & Meta::MULTICAST != 0 {
            // A DHCP server hears DHCP and ARP for its addresses, a router ARP for its
            // addresses; everything else floods.
            let ethertype = pkt.meta.ethertype;
            pkt.meta.next = if net.dhcp_mac != NO_MAC
                && (ethertype == EtherType::IPV4.0 || ethertype == EtherType::ARP.0)
            {
                onward.local = true;
                Next::Local
            } else if net.routed && ethertype == EtherType::ARP.0 {
                onward.route = true;
                Next::Arp
            } else {
                Next::Flood
            };
            continue;
        }
        let dst = eth.dst_addr_u64();
        let dst_key = fdb_key(slot, dst);
        if dst_key != last_dst {
            last_next = match snap.static_mac(slot, dst) {
                Some(p) if p == in_port => Next::Drop(DropReason::Hairpin),
                Some(p) => Next::Output(p),
                None => match net
                    .routed
                    .then(|| snap.routing().router_by_mac(slot, dst))
                    .flatten()
                {
                    Some(router) => {
                        // Every packet that reuses this decision is routed too.
                        onward.route = true;
                        Next::Route(router)
                    }
                    None if dst == net.dhcp_mac => {
                        onward.local = true;
                        Next::Local
                    }
                    None => match macs
                        .lookup(slot, net.uid, dst)
                        .filter(|&p| snap.port_serves(p, slot))
                    {
                        Some(p) if p == in_port => Next::Drop(DropReason::Hairpin),
                        Some(p) => Next::Output(p),
                        None => Next::Flood,
                    },
                },
            };
            last_dst = dst_key;
        }
        pkt.meta.next = last_next;
    }
    counters.stage_packets[Stage::L2 as usize].add(entered);
    onward
}

#[cold]
#[inline(never)]
fn count_learn(counters: &WorkerCounters, outcome: LearnOutcome) {
    match outcome {
        LearnOutcome::Refreshed => {}
        LearnOutcome::Learned => counters.macs_learned.inc(),
        LearnOutcome::Moved => counters.mac_moves.inc(),
        LearnOutcome::Full => counters.mac_table_full.inc(),
        LearnOutcome::PortFull => counters.mac_port_limit.inc(),
        LearnOutcome::MoveRefused => counters.mac_move_refused.inc(),
    }
}

/// Learns or refreshes `src`; returns true when the table changed (an entry added or
/// moved), which can change forwarding decisions.
#[inline]
#[allow(clippy::too_many_arguments)]
fn learn(
    snap: &Snapshot,
    macs: &mut MacTable,
    counters: &WorkerCounters,
    slot: u16,
    uid: NetworkUid,
    src: u64,
    in_port: PortId,
    now: u32,
    limits: LearnLimits,
) -> bool {
    // The common case, a MAC already learned on this port, costs one lookup.
    if macs.refresh(slot, uid, src, in_port, now) {
        return false;
    }
    // A VM port's MAC is never learned elsewhere: the static entry wins, so a spoofed
    // source cannot pull a VM's traffic to another port.
    if snap.static_mac(slot, src).is_some() {
        return false;
    }
    let outcome = macs.learn_on(slot, uid, src, in_port, now, limits);
    count_learn(counters, outcome);
    matches!(outcome, LearnOutcome::Learned | LearnOutcome::Moved)
}
