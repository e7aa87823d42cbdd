//! L2 switching with Neutron semantics: each network is its own broadcast domain; VM
//! ports' MACs are static, everything else is learned; group and unknown destinations
//! flood within the network only.

mod learn;

pub use learn::{LearnOutcome, Learned, MacTable};

use crate::counters::WorkerCounters;
use crate::drop::DropReason;
use crate::packet::{Meta, Next, Packet};
use crate::snapshot::{PortRole, Snapshot};

/// Learns source MACs and picks the output of every packet whose next step is L2.
///
/// `now` is the worker clock in seconds.
#[inline]
pub fn forward(
    snap: &Snapshot,
    macs: &mut MacTable,
    counters: &WorkerCounters,
    now: u32,
    pkts: &mut [Packet],
) {
    let limit = snap.l2().mac_limit_per_network;
    for pkt in pkts.iter_mut() {
        if pkt.meta.next != Next::L2 {
            continue;
        }
        let slot = pkt.meta.network;
        let Some(net) = snap.network(slot) else {
            // Classification only assigns slots of this snapshot.
            debug_assert!(false, "packet classified into missing slot {slot}");
            pkt.meta.next = Next::Drop(DropReason::PortNotConfigured);
            continue;
        };
        let uid = net.uid;
        let src = pkt.meta.src_mac;
        let own_mac = matches!(snap.port(pkt.in_port), PortRole::Access { mac, .. } if mac == src);
        if !own_mac {
            learn(snap, macs, counters, pkt, uid, now, limit);
        }

        let dst = pkt.meta.dst_mac;
        pkt.meta.next = if pkt.meta.flags & Meta::MULTICAST != 0 {
            Next::Flood
        } else {
            let out = snap.static_mac(slot, dst).or_else(|| {
                macs.lookup(slot, uid, dst)
                    .filter(|&p| snap.port_serves(p, slot))
            });
            match out {
                Some(p) if p == pkt.in_port => Next::Drop(DropReason::Hairpin),
                Some(p) => Next::Output(p),
                None => Next::Flood,
            }
        };
    }
}

#[cold]
#[inline(never)]
fn count_learn(counters: &WorkerCounters, outcome: LearnOutcome) {
    match outcome {
        LearnOutcome::Refreshed => {}
        LearnOutcome::Learned => counters.macs_learned.inc(),
        LearnOutcome::Moved => counters.mac_moves.inc(),
        LearnOutcome::Full => counters.mac_table_full.inc(),
    }
}

#[inline]
fn learn(
    snap: &Snapshot,
    macs: &mut MacTable,
    counters: &WorkerCounters,
    pkt: &Packet,
    uid: crate::snapshot::NetworkUid,
    now: u32,
    limit: u32,
) {
    let slot = pkt.meta.network;
    let src = pkt.meta.src_mac;
    // The common case, a MAC already learned on this port, costs one lookup.
    if macs.lookup(slot, uid, src) == Some(pkt.in_port) {
        macs.learn(slot, uid, src, pkt.in_port, now, limit);
        return;
    }
    // A VM port's MAC is never learned elsewhere: the static entry wins, so a spoofed
    // source cannot pull a VM's traffic to another port.
    if snap.static_mac(slot, src).is_some() {
        return;
    }
    let outcome = macs.learn(slot, uid, src, pkt.in_port, now, limit);
    count_learn(counters, outcome);
}
