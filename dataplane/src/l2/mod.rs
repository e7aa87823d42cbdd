//! L2 switching with Neutron semantics: each network is its own broadcast domain; VM
//! ports' MACs are static, everything else is learned; group and unknown destinations
//! flood within the network only.

mod learn;

pub use learn::{LearnLimits, LearnOutcome, Learned, MacTable};

use crate::counters::WorkerCounters;
use crate::drop::DropReason;
use crate::ident::{FdbKey, NetworkSlot, PackedMac};
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::snapshot::{NetworkUid, PortRole, Snapshot};
use crate::wire::{EtherType, EthernetFrame};

/// The L2 stage. Its table of learned MACs is the worker's (in the [`BurstCtx`]), since
/// the router's egress looks MACs up in it as well.
#[derive(Clone, Copy, Debug, Default)]
pub struct L2;

impl BurstStage for L2 {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::L2
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::L2
    }

    /// Learns source MACs and picks the output of every packet whose next step is L2.
    /// Says which optional stages the burst needs, so the router and slow-path stages run
    /// only for bursts that need them.
    #[inline]
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        // Only the tunnel endpoint's uplink has packets from several ports (decapsulated
        // ones come from their sender's tunnel port): every other port keeps the loop
        // that takes the input port once per burst.
        if cx.in_port == cx.snap.overlay().uplink() {
            forward::<true>(cx, pkts)
        } else {
            forward::<false>(cx, pkts)
        }
    }
}

/// `PER_PACKET_PORT`: each packet's own `in_port` is its input port (the burst's may be
/// only the uplink a tunnel's packets arrived on).
#[inline(always)]
fn forward<const PER_PACKET_PORT: bool>(cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
    let snap = cx.snap;
    let in_port = cx.in_port;
    let frames = cx.pool.reader();
    let mut learner = Learner {
        snap,
        macs: &mut *cx.macs,
        counters: cx.counters,
        in_port,
        now: cx.now_secs,
        dry_run: cx.dry_run,
        limits: LearnLimits {
            per_network: snap.l2().mac_limit_per_network,
            per_vm_port: snap.l2().mac_limit_per_port,
            vm_port: matches!(cx.role, PortRole::Access { .. }),
        },
    };
    // A VM port's own MAC needs no learning: it is a static entry already.
    // Opaque to the optimiser, so it is worked out once here rather than re-read from the
    // context for every packet (the context may change across the learning calls, as far
    // as the compiler can tell).
    let own_mac = std::hint::black_box(match cx.role {
        PortRole::Access { mac, .. } => mac,
        _ => PackedMac::NONE,
    });
    // A burst is mostly runs of one flow. Like VPP's l2-learn and l2-fwd, remember the last
    // key of each lookup within the burst, so a run costs one lookup rather than one per
    // frame. No key equals `NO_KEY`: its slot is `NetworkSlot::NONE`, never assigned.
    const NO_KEY: FdbKey = FdbKey::packed(NetworkSlot::NONE, PackedMac::NONE);
    let mut last_src = NO_KEY;
    let mut last_dst = NO_KEY;
    let mut last_next = Next::Flood;
    let mut entered = 0;
    let mut produced = Pending::SEND;
    for pkt in pkts.iter_mut() {
        if pkt.meta.next != Next::L2 {
            continue;
        }
        entered += 1;
        let in_port = if PER_PACKET_PORT {
            if pkt.in_port != learner.in_port {
                // Cached decisions (hairpin) and learning are per input port.
                learner.in_port = pkt.in_port;
                last_src = NO_KEY;
                last_dst = NO_KEY;
            }
            pkt.in_port
        } else {
            in_port
        };
        let slot = pkt.meta.network;
        // The network's entry is needed only off the cached path (learning, group
        // destinations, a new destination): a run of one flow skips the lookup.
        macro_rules! net {
            () => {
                match snap.network(slot) {
                    Some(net) => net,
                    None => {
                        missing_network(pkt);
                        produced |= Pending::DONE;
                        continue;
                    }
                }
            };
        }
        // Classification checked that the frame holds a whole Ethernet header.
        let eth = EthernetFrame::new_unchecked(&frames.mac_header(pkt)[..]);
        let src = eth.src_mac();
        let src_key = FdbKey::packed(slot, src);
        if src != own_mac && src_key != last_src {
            last_src = src_key;
            if learner.learn(src_key, net!().uid) {
                // The table changed: a cached forwarding decision may be stale.
                last_dst = NO_KEY;
            }
        }
        if pkt.meta.flags & Meta::MULTICAST != 0 {
            let net = net!();
            // The network's services hear what they take (DHCP) and ARP for their
            // addresses, a router ARP for its addresses; everything else floods.
            let ethertype = pkt.meta.ethertype;
            pkt.meta.next = if net.service_mac != PackedMac::NONE
                && (ethertype == EtherType::IPV4.0 || ethertype == EtherType::ARP.0)
            {
                produced |= Pending::SLOW_PATH;
                Next::SlowPath
            } else if net.routed && ethertype == EtherType::ARP.0 {
                produced |= Pending::ROUTE;
                Next::Arp
            } else {
                Next::Flood
            };
            continue;
        }
        let dst = eth.dst_mac();
        let dst_key = FdbKey::packed(slot, dst);
        if dst_key != last_dst {
            let net = net!();
            last_next = match snap.static_mac(dst_key) {
                Some(p) if p == in_port => Next::Drop(DropReason::Hairpin, Stage::L2),
                Some(p) => Next::Output(p),
                None => match net
                    .routed
                    .then(|| snap.routing().router_by_mac(dst_key))
                    .flatten()
                {
                    // The metadata proxy's requests go to the router's MAC too; where it
                    // serves the network they pass the slow-path stage first.
                    Some(_) if net.metadata_via_router => Next::SlowPath,
                    Some(router) => Next::Route(router),
                    None if dst == net.service_mac => Next::SlowPath,
                    None => match learned_port(snap, learner.macs, dst_key, net.uid) {
                        Some(p) if p == in_port => Next::Drop(DropReason::Hairpin, Stage::L2),
                        Some(p) => Next::Output(p),
                        None => Next::Flood,
                    },
                },
            };
            if PER_PACKET_PORT {
                last_next = split_horizon(snap, in_port, last_next);
            }
            // Every packet that reuses this decision needs the same stages.
            produced |= Pending::of(last_next);
            last_dst = dst_key;
        }
        pkt.meta.next = last_next;
    }
    Outcome {
        packets: entered,
        produced,
    }
}

/// A packet classified into a network the snapshot does not have: a bug, dropped.
#[cold]
#[inline(never)]
fn missing_network(pkt: &mut Packet) {
    debug_assert!(false, "packet classified into missing {}", pkt.meta.network);
    pkt.meta.next = Next::Drop(DropReason::InternalError, Stage::L2);
}

/// A frame decapsulated from one remote host never goes to another: the sender
/// replicated it to every host itself (hosts relay only between the overlay and their
/// own ports).
#[inline]
fn split_horizon(snap: &Snapshot, in_port: PortId, next: Next) -> Next {
    match next {
        Next::Output(p)
            if snap.overlay().remote(p).is_some() && snap.overlay().remote(in_port).is_some() =>
        {
            Next::Drop(DropReason::TunnelToTunnel, Stage::L2)
        }
        other => other,
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
        LearnOutcome::PortFull => counters.mac_port_limit.inc(),
        LearnOutcome::MoveRefused => counters.mac_move_refused.inc(),
    }
}

/// What learning needs from the burst, split from the context so that the frame being
/// read and the table being written are borrowed apart.
struct Learner<'a> {
    snap: &'a Snapshot,
    macs: &'a mut MacTable,
    counters: &'a WorkerCounters,
    in_port: PortId,
    now: u32,
    /// An explained packet teaches nothing.
    dry_run: bool,
    limits: LearnLimits,
}

/// The port frames to `key`'s MAC on `key`'s network (identity `uid`) leave by, when the
/// network has a static entry for it (a VM port's MAC): that port; else where the MAC was
/// learned, if that port still serves the network; `None`: unknown, flood. The egress
/// decision of routed packets, which are addressed to a neighbour (never to a router or
/// service MAC); switched frames take the same two steps, with router and service MACs
/// between them.
#[inline(always)]
pub(crate) fn egress_port(
    snap: &Snapshot,
    macs: &MacTable,
    key: FdbKey,
    uid: NetworkUid,
) -> Option<PortId> {
    snap.static_mac(key)
        .or_else(|| learned_port(snap, macs, key, uid))
}

/// Where `key`'s MAC was learned on `key`'s network (identity `uid`), if that port still
/// serves the network (a port moved to another network keeps no traffic of this one).
#[inline(always)]
fn learned_port(snap: &Snapshot, macs: &MacTable, key: FdbKey, uid: NetworkUid) -> Option<PortId> {
    macs.lookup(key, uid)
        .filter(|&p| snap.port_serves(p, key.slot()))
}

impl Learner<'_> {
    /// Learns or refreshes the source MAC of `key` on its network (identity `uid`) from
    /// the burst's input port; returns true when the table changed (an entry added or
    /// moved), which can change forwarding decisions.
    #[inline]
    fn learn(&mut self, key: FdbKey, uid: NetworkUid) -> bool {
        if self.dry_run {
            return false;
        }
        // The common case, a MAC already learned on this port, costs one lookup.
        if self.macs.refresh(key, uid, self.in_port, self.now) {
            return false;
        }
        // A VM port's MAC is never learned elsewhere: the static entry wins, so a spoofed
        // source cannot pull a VM's traffic to another port.
        if self.snap.static_mac(key).is_some() {
            return false;
        }
        let outcome = self
            .macs
            .learn_on(key, uid, self.in_port, self.now, self.limits);
        count_learn(self.counters, outcome);
        matches!(outcome, LearnOutcome::Learned | LearnOutcome::Moved)
    }
}
