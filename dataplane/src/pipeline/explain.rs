//! Explain, as `ovn-trace` answers but from the running data plane: one frame, as if
//! received on a port, run through the worker's stage table with its live snapshot and
//! live tables (learned MACs, neighbours, connections and NAT sessions), changing none of
//! them, and the answer of where it would go or what would drop it.
//!
//! Nothing on the forwarding path pays for this beyond a flag the stages test where they
//! already branch. The pass runs on the worker's thread (a job between two passes) with
//!
//! - counters of its own, so that no counter, drop or runtime figure of the worker moves
//!   (and its drops tell which stage dropped which copy for what reason);
//! - a port set of its own that has no ports and records what would be sent (port and
//!   frame as it would leave: tag, rewritten MACs, TTL, NAT) instead of sending it;
//! - [`super::BurstCtx::dry_run`] set, so that the stages that change tables decide as
//!   they would and change nothing: no MAC learned, no connection or NAT session created
//!   or touched, no neighbour entry, ARP request or waiting packet, no rate-limiter token,
//!   nothing handed to the slow path;
//! - a trace of the one packet, whatever trace the worker runs meanwhile.

use super::trace::TraceStep;
use super::Stage;
use crate::conntrack::{ConnTable, Dir, FlowKey, TcpState};
use crate::counters::WorkerCounters;
use crate::drop::DropReason;
use crate::ident::{PackedMac, RouterIndex};
use crate::l3::nat;
use crate::l3::NeighborTable;
use crate::lpm::prefix_mask;
use crate::port::PortId;
use crate::routing::{Interface, Routing};
use crate::secgroup::{port_zone, rule_for, Direction, RuleName, RuleVerdict};
use crate::snapshot::{NetworkUid, PortRole, Snapshot};
use crate::wire::EtherType;

/// A frame an explained packet would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    /// The port it would leave on.
    pub port: PortId,
    /// The frame as it would leave (with its egress tag or encapsulation).
    pub frame: Vec<u8>,
}

/// A packet, or one copy of it, that a stage would drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The stage that would drop it.
    pub stage: Stage,
    /// Why.
    pub reason: DropReason,
}

/// A connection-table entry the packet matched, as the pass found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMatch {
    /// What kind of entry: a router's NAT session or a port's security-group connection.
    pub owner: ConnOwner,
    /// The direction of the entry the packet belongs to.
    pub dir: Dir,
    /// The entry's keys: as its first packet arrived, and as its replies arrive.
    pub original: FlowKey,
    /// See `original`.
    pub reply: FlowKey,
    /// TCP state, for TCP.
    pub tcp: Option<TcpState>,
    /// Its deadline, in worker seconds.
    pub expires: u64,
}

/// What the security groups of a port the packet crosses say of it by their rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCheck {
    /// The port.
    pub port: PortId,
    /// Out of its VM (the input port) or into it (an output port).
    pub direction: Direction,
    /// The verdict of its rules.
    pub verdict: RuleVerdict,
    /// For [`RuleVerdict::Rule`], the group and rule ids of the rule.
    pub rule: Option<RuleName>,
}

/// The rule checks of an explained packet: on the way out of the input port's VM (unless
/// a stage before the groups dropped it) and into each port it would be sent to (as it
/// would leave, which is how that port's groups see it: routed, translated). A drop by a
/// port's groups is its own answer: no rule allowed it (`sg_no_rule`), or what the reason
/// names.
pub(crate) fn rule_checks(
    snap: &Snapshot,
    in_port: PortId,
    frame: &[u8],
    steps: &[TraceStep],
    sent: &[Emitted],
) -> Vec<RuleCheck> {
    let check = |port: PortId, direction: Direction, frame: &[u8]| {
        let (ethertype, l3) = ethertype_of(frame)?;
        // An explained frame is one contiguous copy, never a chain.
        let verdict = rule_for(snap, port, direction, frame, 0, ethertype, l3)?;
        let rule = match verdict {
            RuleVerdict::Rule(id) => snap.security_groups().rule(id).cloned(),
            RuleVerdict::Implicit | RuleVerdict::NoRule => None,
        };
        Some(RuleCheck {
            port,
            direction,
            verdict,
            rule,
        })
    };
    let dropped_before_groups = steps.iter().any(|s| {
        matches!(s.next, crate::packet::Next::Drop(_, stage)
            if matches!(stage, Stage::Classify | Stage::TunnelDecap | Stage::ChecksumOffload | Stage::PortSecurity))
    });
    let mut checks = Vec::new();
    if !dropped_before_groups {
        checks.extend(check(in_port, Direction::Egress, frame));
    }
    for e in sent {
        checks.extend(check(e.port, Direction::Ingress, &e.frame));
    }
    checks
}

/// The EtherType and network-layer offset of a frame, after one 802.1Q tag if any.
fn ethertype_of(frame: &[u8]) -> Option<(EtherType, usize)> {
    let be16 = |at: usize| Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?));
    match be16(12)? {
        0x8100 => Some((EtherType(be16(16)?), 18)),
        t => Some((EtherType(t), 14)),
    }
}

/// Whose entry a [`ConnMatch`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnOwner {
    /// NAT session of the router with this index in the snapshot.
    Router(RouterIndex),
    /// Security-group connection of this VM port.
    Port(PortId),
}

/// What happened in the pass, for a frame that would have been received on `in_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The generation of the snapshot the pass ran with.
    pub generation: u64,
    /// The worker that ran it.
    pub worker: u16,
    /// The port the frame was given as received on.
    pub in_port: PortId,
    /// Every stage passed and its decision (as `trace` records it).
    pub steps: Vec<TraceStep>,
    /// What would be sent, in order.
    pub sent: Vec<Emitted>,
    /// What would be dropped (the packet, or copies of a flood), in order of stage.
    pub dropped: Vec<Dropped>,
    /// Whether the packet would wait for its next hop's MAC (an ARP request would be
    /// sent), as `(network, address)` of that next hop.
    pub waiting_for: Option<(NetworkUid, u32)>,
    /// Whether the slow path (DHCP server) would get it.
    pub to_slow_path: bool,
    /// Whether it would be taken where it arrived (an ARP reply to a router, whose news
    /// would be learned).
    pub consumed: bool,
    /// Connection-table entries the packet matched before the pass.
    pub connections: Vec<ConnMatch>,
    /// What the security groups of the ports it crosses say of it by their rules.
    pub rules: Vec<RuleCheck>,
}

/// Why a frame could not be explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExplainError {
    /// The frame is longer than a frame of the worker's pool holds.
    TooLong,
    /// The pool has no free frame.
    NoBuffers,
    /// The port is not attached to this worker.
    NoSuchPort,
}

impl std::fmt::Display for ExplainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExplainError::TooLong => "the frame does not fit a frame of the worker's pool",
            ExplainError::NoBuffers => "the worker has no free frame",
            ExplainError::NoSuchPort => "the port is not attached to the worker",
        })
    }
}

impl std::error::Error for ExplainError {}

/// The drops an explain pass's own counters saw, by stage and reason.
pub(crate) fn drops_counted(counters: &WorkerCounters) -> Vec<Dropped> {
    let mut dropped = Vec::new();
    for stage in Stage::ALL {
        for &reason in DropReason::ALL {
            for _ in 0..counters.stage_dropped(stage, reason) {
                dropped.push(Dropped { stage, reason });
            }
        }
    }
    dropped
}

/// The L3 bytes of an Ethernet frame (after one 802.1Q tag, if any) when it is IPv4.
fn ipv4_of(frame: &[u8]) -> Option<&[u8]> {
    let ethertype = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (ethertype, l3) = match ethertype(12)? {
        0x8100 => (ethertype(16)?, 18),
        other => (other, 14),
    };
    let ip = frame.get(l3..).filter(|_| ethertype == 0x0800)?;
    (ip.len() >= 20 && ip[0] >> 4 == 4).then_some(ip)
}

/// The entry of `conns` that `frame` belongs to in `zone`.
fn lookup(
    conns: &ConnTable,
    frame: &[u8],
    zone: u32,
    now: u64,
) -> Option<(crate::conntrack::SessionId, Dir)> {
    let l4 = nat::flow_key(ipv4_of(frame)?, zone).ok()?;
    conns.lookup(&l4.key, now)
}

/// The connection entries the explained packet matched: the security-group connection
/// of its input port (the frame as received) and of each port it would be sent to (the
/// frame as it would leave), and the NAT session of each router it would pass.
pub(crate) fn connections(
    conns: &ConnTable,
    routing: &Routing,
    now: u64,
    in_port: PortId,
    frame: &[u8],
    steps: &[TraceStep],
    sent: &[Emitted],
) -> Vec<ConnMatch> {
    let entry = |owner, zone, frame: &[u8]| {
        lookup(conns, frame, zone, now).map(|(id, dir)| {
            let s = conns.session(id);
            ConnMatch {
                owner,
                dir,
                original: *s.key(Dir::Original),
                reply: *s.key(Dir::Reply),
                tcp: s.tcp_state(),
                expires: s.expires(),
            }
        })
    };
    let mut found = Vec::new();
    found.extend(entry(ConnOwner::Port(in_port), port_zone(in_port), frame));
    let mut routers: Vec<RouterIndex> = steps
        .iter()
        .filter_map(|s| match s.next {
            crate::packet::Next::Route(r) => Some(r),
            _ => None,
        })
        .collect();
    routers.dedup();
    for r in routers {
        if let Some(router) = routing.router(r) {
            found.extend(entry(ConnOwner::Router(r), router.uid.0, frame));
        }
    }
    for e in sent {
        found.extend(entry(ConnOwner::Port(e.port), port_zone(e.port), &e.frame));
    }
    found
}

/// The destination MAC of a frame from VM port `port` (from `src_ip`) to `dst_ip` when
/// whoever asks for an explanation does not give one, as the VM would address it: a
/// router's own address is the router's MAC; an address beyond the VM's subnet goes to
/// its subnet's router (the gateway); one on its subnet is `owner` (the configured port
/// holding the address, from the control plane), else the routers' neighbour entry for
/// it. `None` when nothing is known, or for a port that is no VM port.
pub fn default_dst_mac(
    snap: &Snapshot,
    neighbors: &NeighborTable,
    port: PortId,
    src_ip: u32,
    dst_ip: u32,
    owner: Option<[u8; 6]>,
) -> Option<[u8; 6]> {
    let PortRole::Access { network: slot, .. } = snap.port(port) else {
        return owner;
    };
    let routing = snap.routing();
    let router_mac = |i: &Interface| routing.router(i.router).map(|r| r.mac.0);
    let mut on_network = routing.interfaces().iter().filter(|i| i.network == slot);
    if let Some(i) = on_network.clone().find(|i| i.ip == dst_ip) {
        return router_mac(i);
    }
    let mask = |i: &Interface| prefix_mask(i.prefix_len);
    match on_network.find(|i| src_ip & mask(i) == i.ip & mask(i)) {
        Some(gateway) if dst_ip & mask(gateway) != gateway.ip & mask(gateway) => {
            router_mac(gateway)
        }
        _ => owner.or_else(|| {
            let uid = snap.network(slot)?.uid;
            neighbors
                .get(uid, dst_ip)
                .and_then(|n| n.mac())
                .map(PackedMac::octets)
        }),
    }
}
