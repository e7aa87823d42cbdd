//! The router stage: what Neutron's L3 agent does in a `qrouter` namespace, for every
//! packet the L2 stage sent to a router MAC or that is a broadcast ARP on a routed network.
//!
//! - ARP: requests for a router address are answered in place (the request frame becomes
//!   the reply) and teach the router the sender; replies complete neighbour entries and
//!   release the packets that waited for them; other broadcasts flood on as before.
//! - IPv4 to a router address: ICMP echo requests are answered in place; anything else is
//!   dropped (`to_router`) until the slow path serves it.
//! - IPv4 through the router: the header is checked (version, length, checksum, as RFC
//!   1812 §5.2.2 asks), the TTL decremented with an incremental checksum update, the
//!   route looked up in the router's LPM table, the next hop resolved in the worker's
//!   [`NeighborTable`] (ARP requests are made here, rate limited, and the packet waits in
//!   a bounded queue), and the MACs rewritten; the output is then the egress network's
//!   FDB, as for a switched frame.
//!
//! Frames the stage makes (ARP requests) or releases from the waiting queue are collected
//! in the router state's originated batch and sent after the burst (`BurstStage::finish`).

mod fast;
pub(crate) mod nat;
mod neighbor;
mod related;
mod reset;

pub use neighbor::{
    Neighbor, NeighborTable, Resolution, DEFAULT_CAPACITY as DEFAULT_NEIGHBORS, EXPIRE_SECS,
    PENDING_CAPACITY, PENDING_PER_NEIGHBOR, PENDING_SECS, REACHABLE_SECS, RETRY_SECS,
};

use std::net::Ipv4Addr;

use crate::overlay::encap::TunnelEncap;
use crate::overlay::underlay::Underlay;

use crate::buf::{FrameId, FramePool};
use crate::conntrack::{Dir, FlowKey, InsertError};
use crate::drop::DropReason;
use crate::frag::{self, FragError};
use crate::handoff::NeighborNews;
use crate::icmp_error::{self, IcmpErrorKind};
use crate::ident::{FdbKey, NetworkSlot, PackedMac, RouterIndex};
use crate::l2::egress_port;
use crate::metering::{MeterDirection, RouterMetering};
use crate::output::{capture_drops_of, drop_held, output};
use crate::packet::{Batch, Meta, Next, Packet, MAX_BURST};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::ratelimit::{KeyedLimiter, TokenBucket, DEFAULT_KEYED_BUCKETS};
use crate::routing::{Interface, NextHop, Router};
use crate::snapshot::NetworkUid;
use crate::wire::{
    ipv4, ArpOperation, ArpPacket, EtherType, EthernetAddress, EthernetFrame, Icmpv4Packet,
    Icmpv4Type, IpProtocol, Ipv4Packet,
};
use related::{Crossing, Related};

/// A frame the router made in `frame` at `offset` (untagged Ethernet, `len` bytes) on
/// network `network`, to go `next`: it comes from no port, and flooding skips none.
fn originated(
    frame: FrameId,
    offset: u16,
    len: usize,
    network: NetworkSlot,
    ethertype: EtherType,
    next: Next,
) -> Packet {
    Packet {
        frame,
        offset,
        len: len as u16,
        // No port has it, so flooding skips none and no port's counters are charged.
        in_port: PortId::NONE,
        meta: Meta {
            next,
            network,
            ethertype: ethertype.0,
            tci: 0,
            flags: Meta::ROUTED,
            l3_offset: EthernetFrame::<&[u8]>::HEADER_LEN as u8,
        },
        chained: false,
    }
}

/// Length of an Ethernet ARP frame without FCS, padded to the 60-byte minimum.
const ARP_FRAME_LEN: usize = 60;

/// Per-worker router state: neighbours, waiting packets and the frames to send after the
/// burst.
#[derive(Debug)]
pub struct RouterState {
    neighbors: NeighborTable,
    /// Frames the router made or released in this burst (ARP requests and replies, ICMP,
    /// fragments, packets whose neighbour just answered): sent after the burst.
    originated: Batch,
    /// A neighbour was completed in this pass: waiting packets may go.
    resolved: bool,
    /// ICMP errors the worker may send, in all and per offending source (RFC 1812
    /// §4.3.2.8: rate limited, so a flood of bad packets cannot become a flood of errors).
    icmp_budget: TokenBucket,
    icmp_per_source: KeyedLimiter<DEFAULT_KEYED_BUCKETS>,
    /// IPv4 identification of the next packet the router originates.
    ident: u16,
    /// The last route and neighbour looked up in this burst (see [`BurstCache`]).
    cache: BurstCache,
    /// The next hop (network, address) an explained packet would wait for.
    pub(crate) explained_wait: Option<(NetworkUid, u32)>,
    /// What this pass learned from ARP, for the other workers (see [`crate::handoff`]);
    /// its capacity is fixed when workers are connected and 0 before, so a single worker
    /// records nothing.
    news: Vec<NeighborNews>,
    /// News not recorded because `news` was full.
    news_overflow: u64,
    /// A datagram being fragmented, copied out of its frames (a jumbo one out of its
    /// chain) so the pool can hand out the fragments' frames meanwhile, and the fragment
    /// being written; allocated once.
    scratch: Box<[u8]>,
    fragment: Box<[u8]>,
}

/// A burst is mostly runs of one flow. Like the L2 stage (and VPP's l2-fwd), the router
/// remembers the last destination's route and the last next hop's MAC within a burst, so
/// a run costs one LPM lookup and one neighbour lookup. Cleared at the start of every
/// burst, so nothing cached outlives a snapshot or a neighbour change by more than the
/// burst that saw it.
#[derive(Clone, Copy, Debug, Default)]
struct BurstCache {
    /// `(router, destination)` → its next hop.
    route: Option<(RouterIndex, u32, Option<NextHop>)>,
    /// `(network uid, next-hop address)` → its MAC (only resolved, fresh entries).
    neighbor: Option<(NetworkUid, u32, PackedMac)>,
    /// `(network slot, MAC)` → the port a routed frame to it leaves by (`None`: flooded).
    egress: Option<(FdbKey, Option<PortId>)>,
    /// The NAT session the last translated flow key hit, and its direction. Within a burst
    /// (one clock reading) the router removes no live session: an insert only forgets
    /// sessions already expired at that reading, which a lookup never returns.
    session: Option<(FlowKey, crate::conntrack::SessionId, Dir)>,
    /// The last destination forwarded plainly (see [`fast`]); forgotten with `neighbor`.
    forward: Option<fast::Forward>,
}

impl BurstCache {
    /// The hop of `dst` through `router` (`r`): a run of one flow costs a compare, the
    /// first packet of a destination the route lookup, out of line.
    #[inline(always)]
    fn lookup(&mut self, r: &Router, router: RouterIndex, dst: u32) -> Option<NextHop> {
        match self.route {
            Some((cached_router, cached_dst, hop))
                if cached_router == router && cached_dst == dst =>
            {
                hop
            }
            _ => self.lookup_route(r, router, dst),
        }
    }

    #[inline(never)]
    fn lookup_route(&mut self, r: &Router, router: RouterIndex, dst: u32) -> Option<NextHop> {
        let hop = r.lookup(dst);
        self.route = Some((router, dst, hop));
        hop
    }
}

impl RouterState {
    /// State for up to `neighbors` neighbours, keyed with the secret `hash_seed` (the
    /// connection table's: both hold keys that hosts choose). The SNAT sessions live in
    /// the worker's connection table (`BurstCtx::conns`, zone = the router's uid), which
    /// the security groups share.
    pub fn new(neighbors: usize, hash_seed: u64) -> Self {
        RouterState {
            neighbors: NeighborTable::with_seed(neighbors, hash_seed),
            originated: Batch::with_capacity(MAX_BURST),
            resolved: false,
            explained_wait: None,
            icmp_budget: TokenBucket::default(),
            icmp_per_source: KeyedLimiter::default(),
            ident: 0,
            cache: BurstCache::default(),
            news: Vec::new(),
            news_overflow: 0,
            scratch: vec![0; crate::buf::MAX_CHAIN_LEN].into_boxed_slice(),
            fragment: vec![0; crate::buf::MAX_CHAIN_LEN].into_boxed_slice(),
        }
    }

    /// Starts recording what ARP teaches, for other workers: up to `per_pass` items
    /// between two [`RouterState::take_news`].
    pub fn record_news(&mut self, per_pass: usize) {
        self.news = Vec::with_capacity(per_pass);
    }

    /// Hands what this pass learned from ARP to `tell`; returns the items that did not
    /// fit the record since the last call.
    pub fn take_news(&mut self, tell: impl FnMut(NeighborNews)) -> u64 {
        self.news.drain(..).for_each(tell);
        std::mem::take(&mut self.news_overflow)
    }

    /// Learns what another worker learned from ARP, as if this one had seen the packet.
    pub fn apply_news(&mut self, news: NeighborNews, now: u32) {
        if self
            .neighbors
            .learn(news.network, news.ip, news.mac, now, news.create)
        {
            // Packets waiting for it go at the next housekeeping or burst.
            self.resolved = true;
            self.cache.neighbor = None;
            self.cache.forward = None;
        }
    }

    /// The neighbour table.
    pub fn neighbors(&self) -> &NeighborTable {
        &self.neighbors
    }
}

/// The router stage: its per-worker state is its `self`.
impl BurstStage for RouterState {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::L3
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::ROUTE
    }

    /// Runs every packet of a burst whose next step is [`Next::Route`] or [`Next::Arp`]
    /// through its router.
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        self.cache = BurstCache::default();
        let mut entered = 0;
        let mut cache_hits = 0;
        for pkt in pkts.iter_mut() {
            let next = match pkt.meta.next {
                Next::Route(router) => {
                    if pkt.meta.ethertype == EtherType::ARP.0 {
                        self.arp(cx, pkt, true)
                    } else if pkt.meta.ethertype == EtherType::IPV4.0 {
                        let cached = match &self.cache.forward {
                            Some(f) => fast::forward(cx, f, router, pkt),
                            None => None,
                        };
                        match cached {
                            Some(next) => {
                                cache_hits += 1;
                                next
                            }
                            None => self.ipv4(cx, router, pkt),
                        }
                    } else {
                        Next::Drop(DropReason::NotRoutable, Stage::L3)
                    }
                }
                Next::Arp => self.arp(cx, pkt, false),
                _ => continue,
            };
            entered += 1;
            pkt.meta.next = next;
        }
        if cache_hits > 0 {
            cx.counters.route_cache_hits.add(cache_hits);
        }
        if self.resolved {
            self.resolved = false;
            self.release_resolved(cx);
        }
        Outcome {
            packets: entered,
            produced: Pending::SEND | Pending::DONE,
        }
    }
}

impl RouterState {
    /// Sends the frames the router made or released in this pass; those to remote hosts
    /// of an overlay network (and the copies of a flood for them) are encapsulated first,
    /// with `under`'s endpoint MACs, as the burst's own frames are.
    pub(crate) fn send_made(&mut self, cx: &mut BurstCtx<'_>, under: &mut Underlay) {
        if self.originated.is_empty() {
            return;
        }
        if cx.snap.overlay().enabled() {
            let outcome = TunnelEncap { under }.process(cx, self.originated.as_mut_slice());
            cx.counters.stage_packets[Stage::TunnelEncap as usize].add(u64::from(outcome.packets));
        }
        // What the router sends after the burst (released packets, ICMP errors) did not
        // pass the ingress security groups of its output port.
        if !cx.snap.security_groups().is_empty() {
            for pkt in self.originated.as_mut_slice() {
                if let Next::Output(out) = pkt.meta.next {
                    let data = cx.pool.data(pkt);
                    if let Err(reason) = crate::secgroup::filter_ingress(
                        cx.snap,
                        cx.conns,
                        cx.conns6,
                        u64::from(cx.now_secs),
                        out,
                        data,
                        cx.pool.tail_len(pkt),
                        &pkt.meta,
                        cx.dry_run,
                    ) {
                        pkt.meta.next = Next::Drop(reason, Stage::SgIngress);
                    }
                }
            }
        }
        if cx.ports.capture.is_some() {
            capture_drops_of(cx, self.originated.as_slice());
        }
        let sent = output(cx, self.originated.as_mut_slice());
        cx.counters.stage_packets[Stage::Output as usize].add(u64::from(sent));
        self.originated.clear();
    }
}

impl RouterState {
    #[cold]
    #[inline(never)]
    fn note_news(&mut self, news: NeighborNews) {
        if self.news.len() < self.news.capacity() {
            self.news.push(news);
        } else {
            self.news_overflow += 1;
        }
    }

    /// Housekeeping: releases waiting packets whose next hop answered, drops those that waited
    /// too long (all of them with `all`) with an ICMP host unreachable to their senders, and
    /// ages neighbours.
    pub fn housekeeping(&mut self, cx: &mut BurstCtx<'_>, budget: usize, all: bool) {
        // Between bursts: what the last burst cached may be stale now.
        self.cache = BurstCache::default();
        let counters = cx.counters;
        let now = cx.now_secs;
        self.neighbors.age(now, budget);
        cx.conns.expire(u64::from(now), budget);
        cx.conns6.expire(u64::from(now), budget);
        counters
            .sessions
            .set((cx.conns.len() + cx.conns6.len()) as u64);
        counters.neighbors.set(self.neighbors.len() as u64);
        counters
            .neighbor_waiting
            .set(self.neighbors.pending() as u64);
        // Most rounds have nothing waiting: skip the rest (and its stack arrays).
        if self.neighbors.pending() == 0 {
            return;
        }
        self.release_resolved(cx);
        let mut expired = [Packet::default(); neighbor::PENDING_CAPACITY];
        let mut n = 0;
        self.neighbors.take_expired(now, all, |pkt| {
            expired[n] = pkt;
            n += 1;
        });
        for pkt in &expired[..n] {
            if !all {
                if let Next::Route(router) = pkt.meta.next {
                    self.icmp_error(cx, pkt, router, IcmpErrorKind::HostUnreachable);
                }
            }
            drop_held(cx, *pkt, Stage::L3, DropReason::NeighborUnresolved);
        }
        counters
            .neighbor_waiting
            .set(self.neighbors.pending() as u64);
    }

    /// Moves waiting packets whose next hop is now known into the originated batch, rewritten (and
    /// fragmented when they need it).
    fn release_resolved(&mut self, cx: &mut BurstCtx<'_>) {
        let snap = cx.snap;
        let mut ready = [(Packet::default(), None, PackedMac::default()); MAX_BURST];
        let mut n = 0;
        let generation = snap.generation();
        self.neighbors
            .take_resolved(self.originated.remaining(), |w, mac| {
                // An interface index is only meaningful in the snapshot it was taken from.
                let interface = (w.generation == generation).then_some(w.interface);
                ready[n] = (w.pkt, interface, mac);
                n += 1;
            });
        for &(mut pkt, interface, mac) in &ready[..n] {
            let routing = snap.routing();
            match interface.and_then(|i| routing.interface(i)) {
                Some(iface) => {
                    let router_mac = routing
                        .router(iface.router)
                        .map_or(PackedMac::default(), |r| PackedMac::from(r.mac));
                    pkt.meta.next = self.send(cx, &mut pkt, iface, router_mac, mac);
                    if pkt.meta.next != Next::Consumed {
                        let _ = self.originated.push(pkt);
                    }
                }
                None => {
                    pkt.meta.next = Next::Drop(DropReason::NeighborUnresolved, Stage::L3);
                    let _ = self.originated.push(pkt);
                }
            }
        }
    }

    /// ARP to a router (`unicast`: sent to its MAC) or broadcast on a routed network.
    fn arp(&mut self, cx: &mut BurstCtx<'_>, pkt: &mut Packet, unicast: bool) -> Next {
        let snap = cx.snap;
        let counters = cx.counters;
        let now = cx.now_secs;
        let routing = snap.routing();
        let slot = pkt.meta.network;
        let Some(net) = snap.network(slot) else {
            return Next::Drop(DropReason::InternalError, Stage::L3);
        };
        let l3 = usize::from(pkt.meta.l3_offset);
        let data = cx.pool.data_mut(pkt);
        let Some(arp) = data
            .get_mut(l3..)
            .and_then(|b| ArpPacket::new_checked(b).ok())
        else {
            return if unicast {
                Next::Drop(DropReason::BadArp, Stage::L3)
            } else {
                Next::Flood
            };
        };
        if !arp.is_ethernet_ipv4() {
            return if unicast {
                Next::Drop(DropReason::BadArp, Stage::L3)
            } else {
                Next::Flood
            };
        }
        let op = arp.operation();
        let sender_ip = u32::from(arp.sender_protocol_addr());
        let sender_mac = arp.sender_hardware_addr();
        let target_ip = u32::from(arp.target_protocol_addr());
        // The router owning the asked-for address: an interface address, or a floating IP
        // (which the external gateway answers for, as Neutron's qg- port holds them).
        let ours = routing
            .owner_of(slot, target_ip)
            .and_then(|i| routing.interface(i))
            .map(|i| i.router)
            .or_else(|| routing.floating_owner(slot, target_ip))
            .and_then(|r| routing.router(r));
        // Someone else announcing a router's own address (or a floating IP) on its network
        // is taking over the gateway: it goes nowhere, and teaches nothing.
        if routing.owner_of(slot, sender_ip).is_some()
            || routing.floating_owner(slot, sender_ip).is_some()
        {
            return Next::Drop(DropReason::ArpClaimsRouter, Stage::L3);
        }
        // RFC 826: update the sender's entry if we have one; create it when the packet is for
        // us. A sender claiming a group MAC or no address teaches nothing, and neither does
        // one outside every connected subnet of the network (it could only be a VM filling
        // the table with addresses of its choosing).
        if sender_mac.is_unicast()
            && sender_ip != 0
            && routing.on_connected_subnet(slot, sender_ip)
            && !cx.dry_run
        {
            let mac = PackedMac::new(sender_mac);
            let create = ours.is_some();
            if self.news.capacity() > 0 {
                self.note_news(NeighborNews {
                    network: net.uid,
                    ip: sender_ip,
                    mac,
                    create,
                });
            }
            if self.neighbors.learn(net.uid, sender_ip, mac, now, create) {
                self.resolved = true;
                // The MAC of a next hop may have changed under the burst's cache.
                self.cache.neighbor = None;
                self.cache.forward = None;
            }
        }
        match (op, ours) {
            (ArpOperation::REQUEST, Some(router)) => {
                answer_arp_in_place(data, l3, router.mac);
                pkt.meta.flags &= !Meta::MULTICAST;
                Next::Output(pkt.in_port)
            }
            // A reply (or a request for another host) sent to our MAC: its news are taken.
            _ if unicast => {
                counters.consumed.inc();
                cx.pool.free_packet(pkt);
                Next::Consumed
            }
            _ => Next::Flood,
        }
    }

    /// An IPv4 packet sent to router `router`'s MAC.
    #[inline]
    fn ipv4(&mut self, cx: &mut BurstCtx<'_>, router: RouterIndex, pkt: &mut Packet) -> Next {
        let snap = cx.snap;
        let now = cx.now_secs;
        let routing = snap.routing();
        let Some(r) = routing.router(router) else {
            return Next::Drop(DropReason::InternalError, Stage::L3);
        };
        let router_mac = PackedMac::from(r.mac);
        let l3 = usize::from(pkt.meta.l3_offset);
        let (ttl, total_len, dont_frag, protocol, arrived_src, arrived_dst) = {
            let data = cx.pool.data(pkt);
            let beyond = cx.pool.tail_len(pkt);
            let Some(ip) = data
                .get(l3..)
                .and_then(|b| Ipv4Packet::new_checked_within(b, beyond).ok())
            else {
                return Next::Drop(DropReason::BadIpv4Header, Stage::L3);
            };
            if ip.version() != 4 || !ip.verify_checksum() {
                return Next::Drop(DropReason::BadIpv4Header, Stage::L3);
            }
            let (src, dst) = (u32::from(ip.src_addr()), u32::from(ip.dst_addr()));
            (
                ip.ttl(),
                ip.total_len(),
                ip.dont_frag(),
                ip.protocol(),
                src,
                dst,
            )
        };
        // The route of the destination as it arrived decides whether NAT can be involved at
        // all: only what leaves through the external gateway, or is addressed to the
        // gateway's address or a floating IP, is looked up in the session table. Routing
        // between the router's own subnets pays nothing for NAT.
        let mut hop = self.cache.lookup(r, router, arrived_dst);
        let arrived_for_router = hop.is_some_and(|h| h.own_address);
        let nat_involved = r.external.is_some_and(|external| {
            hop.is_some_and(|h| h.interface == external)
                || arrived_for_router
                || (r.has_floating_ips && routing.fixed_of(router, arrived_dst).is_some())
        });
        let nat = if nat_involved {
            // Destination NAT first (a qrouter's PREROUTING): a packet of a known session
            // takes the session's translation whole, otherwise a floating IP as
            // destination becomes its fixed IP.
            self.inbound_nat(cx, router, pkt, total_len)
        } else {
            Inbound::default()
        };
        let dst = if nat.session || nat.dnat {
            u32::from(Ipv4Packet::new_unchecked(&cx.pool.data(pkt)[l3..]).dst_addr())
        } else {
            arrived_dst
        };
        let for_router = if dst == arrived_dst {
            arrived_for_router
        } else {
            hop = self.cache.lookup(r, router, dst);
            hop.is_some_and(|h| h.own_address)
        };
        if !nat.session && for_router {
            if protocol == IpProtocol::TCP {
                return self.tcp_reset(cx, pkt, router_mac);
            }
            let next = echo_reply(cx.pool, pkt, router_mac);
            // Nothing listens on a router address: a port unreachable ends a UDP traceroute
            // to it, a protocol unreachable refuses the rest (TCP gets a reset, above).
            // ICMP other than echo gets nothing, as RFC 1122 asks.
            let kind = match protocol {
                IpProtocol::ICMP => None,
                IpProtocol::UDP => Some(IcmpErrorKind::PortUnreachable),
                _ => Some(IcmpErrorKind::ProtocolUnreachable),
            };
            if let (Next::Drop(DropReason::ToRouter, _), Some(kind)) = (next, kind) {
                self.icmp_error(cx, pkt, router, kind);
            }
            return next;
        }
        if ttl <= 1 {
            let kind = IcmpErrorKind::TimeExceeded;
            self.icmp_error(cx, pkt, router, kind);
            return Next::Drop(DropReason::TtlExpired, Stage::L3);
        }
        if for_router {
            // A session translated it to one of the router's own addresses: there is
            // nothing to forward it to.
            return Next::Drop(DropReason::ToRouter, Stage::L3);
        }
        let Some(hop) = hop else {
            let kind = IcmpErrorKind::NetUnreachable;
            self.icmp_error(cx, pkt, router, kind);
            return Next::Drop(DropReason::NoRoute, Stage::L3);
        };
        let Some(iface) = routing.interface(hop.interface) else {
            return Next::Drop(DropReason::NoRoute, Stage::L3);
        };
        if total_len > iface.mtu && dont_frag {
            let kind = IcmpErrorKind::FragNeeded { mtu: iface.mtu };
            self.icmp_error(cx, pkt, router, kind);
            return Next::Drop(DropReason::MtuExceeded, Stage::L3);
        }
        let to_external = r.external == Some(hop.interface);
        if let Some(metering) = &r.metering {
            // What a qrouter's filter FORWARD chain sees: the destination after
            // destination NAT, the source before source NAT (which a session's translation
            // may already have applied above), with the TTL and MTU checks passed.
            let from_external = routing.interface_on_network(r.external, pkt.meta.network);
            if (from_external || to_external) && !cx.dry_run {
                meter(
                    cx,
                    metering,
                    from_external,
                    to_external,
                    arrived_src,
                    dst,
                    total_len,
                );
            }
        }
        // Source NAT (POSTROUTING): what leaves through the external gateway, and what was
        // sent to a floating IP from inside (hairpin, so the reply comes back through here),
        // takes its floating IP or, with SNAT on, the gateway's address and a port.
        if !nat.session
            && (to_external || nat.dnat)
            && routing.interface_on(router, pkt.meta.network) != r.external
        {
            if let Err(reason) = self.outbound_nat(cx, router, pkt, &nat, total_len) {
                return Next::Drop(reason, Stage::L3);
            }
        }
        let target = if hop.gateway == 0 { dst } else { hop.gateway };
        let resolution = match self.cache.neighbor {
            Some((uid, ip, mac)) if uid == iface.network_uid && ip == target => Resolution {
                mac: Some(mac),
                request: false,
            },
            // An explained packet leaves no entry behind; the request it would make is
            // shown, not sent (the explain pass has no ports).
            _ if cx.dry_run => self.neighbors.would_resolve(iface.network_uid, target, now),
            _ => {
                let resolution = self.neighbors.resolve(iface.network_uid, target, now);
                if let (Some(mac), false) = (resolution.mac, resolution.request) {
                    self.cache.neighbor = Some((iface.network_uid, target, mac));
                }
                resolution
            }
        };
        if resolution.request {
            self.request(cx, iface, router_mac, target);
        }
        match resolution.mac {
            Some(mac) => {
                let next = self.send(cx, pkt, iface, router_mac, mac);
                // Forwarded plainly and in place (it fit the MTU): the rest of the run to
                // this destination may take the same decision (see `fast`).
                if r.metering.is_none()
                    && !resolution.request
                    && !cx.dry_run
                    && total_len <= iface.mtu
                    && matches!(next, Next::Output(_) | Next::Flood)
                {
                    let nat = if nat_involved {
                        self.cached_translation(cx, &nat)
                    } else {
                        None
                    };
                    if !nat_involved || nat.is_some() {
                        self.cache.forward = Some(fast::Forward {
                            router,
                            dst: arrived_dst,
                            mtu: iface.mtu,
                            macs: fast::Forward::macs(router_mac, mac),
                            network: iface.network,
                            next,
                            nat,
                        });
                    }
                }
                next
            }
            None if cx.dry_run => {
                // It would wait for the answer to an ARP request; nothing waits for an
                // explained packet.
                self.explained_wait = Some((iface.network_uid, target));
                cx.pool.free_packet(pkt);
                Next::Waiting
            }
            None => {
                // Remembered so that an ICMP host unreachable can name the router later.
                pkt.meta.next = Next::Route(router);
                match self.neighbors.wait(
                    iface.network_uid,
                    target,
                    *pkt,
                    hop.interface,
                    snap.generation(),
                    now,
                ) {
                    Ok(()) => Next::Waiting,
                    Err(_) => Next::Drop(DropReason::NeighborQueueFull, Stage::L3),
                }
            }
        }
    }

    /// The translation the fast path may repeat for the rest of the run of the packet's
    /// flow: only a packet the session's translation alone handled (not a fragment, an
    /// ICMP error, a destination NAT without a session or a new source NAT).
    fn cached_translation(&self, cx: &BurstCtx<'_>, nat: &Inbound) -> Option<fast::Translation> {
        let (original, (key, id, dir)) = (nat.original?, self.cache.session?);
        if !nat.session || nat.dnat || key != original.key {
            return None;
        }
        let to = cx.conns.session(id).rewrite(dir)?;
        fast::Translation::new(key, id, dir, to)
    }

    /// Destination NAT of router `router` (which has an external gateway) on the packet.
    fn inbound_nat(
        &mut self,
        cx: &mut BurstCtx<'_>,
        router: RouterIndex,
        pkt: &Packet,
        total_len: u16,
    ) -> Inbound {
        let snap = cx.snap;
        let now = cx.now_secs;
        let routing = snap.routing();
        let Some(zone) = routing.router(router).map(|r| r.uid.0) else {
            return Inbound::default();
        };
        let l3 = usize::from(pkt.meta.l3_offset);
        let ip = &mut cx.pool.data_mut(pkt)[l3..];
        let now = u64::from(now);
        match nat::flow_key(ip, zone) {
            Ok(l4) => {
                let mut inbound = Inbound {
                    original: Some(l4),
                    ..Inbound::default()
                };
                let hit = match self.cache.session {
                    Some((key, id, dir)) if key == l4.key => Some((id, dir)),
                    _ => {
                        let hit = cx.conns.lookup(&l4.key, now);
                        if let Some((id, dir)) = hit {
                            self.cache.session = Some((l4.key, id, dir));
                        }
                        hit
                    }
                };
                if let Some((id, dir)) = hit {
                    if let Some(to) = cx.conns.session(id).rewrite(dir) {
                        if !cx.dry_run {
                            let owner = cx.conns.session(id).owner();
                            remember_fragments(cx.conns, ip, &l4.key, &to, owner, now);
                        }
                        nat::rewrite(ip, &l4.key, &to);
                    }
                    if !cx.dry_run {
                        cx.conns.touch(id, dir, l4.flags, u32::from(total_len), now);
                    }
                    inbound.session = true;
                } else if let Some(fixed) = routing.fixed_of(router, l4.key.dst) {
                    nat::rewrite(ip, &l4.key, &nat::to_dst(&l4.key, fixed));
                    inbound.dnat = true;
                }
                inbound
            }
            Err(nat::Unkeyed::Fragment) => {
                // A later fragment of a datagram whose first fragment a session translated
                // takes the same addresses (it has no ports to translate).
                let key = nat::later_fragment_key(ip, zone);
                if let Some((id, dir)) = cx.conns.lookup(&key, now) {
                    if let Some(to) = cx.conns.session(id).rewrite(dir) {
                        nat::rewrite_addresses(ip, to.src, to.dst);
                    }
                    return Inbound {
                        session: true,
                        ..Inbound::default()
                    };
                }
                floating_one_to_one(routing, router, ip)
            }
            Err(_) => {
                let crossing = Crossing::Inbound;
                match related::translate(cx.conns, routing, now, router, zone, ip, crossing) {
                    Related::No => {}
                    Related::Session => {
                        cx.counters.nat_icmp_errors.inc();
                        return Inbound {
                            session: true,
                            ..Inbound::default()
                        };
                    }
                    Related::Floating => {
                        cx.counters.nat_icmp_errors.inc();
                        return Inbound {
                            dnat: true,
                            ..Inbound::default()
                        };
                    }
                }
                floating_one_to_one(routing, router, ip)
            }
        }
    }

    /// Source NAT of router `router` on a packet leaving through its external gateway (or
    /// hairpinning): its floating IP if its source has one, else with SNAT on a new session
    /// from the gateway's address.
    fn outbound_nat(
        &mut self,
        cx: &mut BurstCtx<'_>,
        router: RouterIndex,
        pkt: &Packet,
        inbound: &Inbound,
        total_len: u16,
    ) -> Result<(), DropReason> {
        let snap = cx.snap;
        let now = cx.now_secs;
        let routing = snap.routing();
        let Some(r) = routing.router(router) else {
            return Ok(());
        };
        let zone = r.uid.0;
        let l3 = usize::from(pkt.meta.l3_offset);
        let ip = &mut cx.pool.data_mut(pkt)[l3..];
        let p = Ipv4Packet::new_unchecked(&ip[..]);
        let (src, dst) = (u32::from(p.src_addr()), u32::from(p.dst_addr()));
        let current = nat::flow_key(ip, zone);
        if current.is_err() {
            let now = u64::from(now);
            let crossing = Crossing::Outbound;
            if related::translate(cx.conns, routing, now, router, zone, ip, crossing) != Related::No
            {
                cx.counters.nat_icmp_errors.inc();
                return Ok(());
            }
        }
        if let Some(floating) = routing.floating_of(router, src) {
            match current {
                Ok(l4) => nat::rewrite(ip, &l4.key, &nat::to_src(&l4.key, floating)),
                Err(_) => nat::rewrite_addresses(ip, floating, dst),
            }
            return Ok(());
        }
        if !r.enable_snat {
            return Ok(());
        }
        let (Ok(current), Some(original)) = (current, inbound.original) else {
            return Err(DropReason::NatUnsupported);
        };
        let Some(external_ip) = r.external.and_then(|i| routing.interface(i)).map(|i| i.ip) else {
            return Ok(());
        };
        let key = current.key;
        let now = u64::from(now);
        if cx.dry_run {
            return planned_snat(cx, zone, external_ip, pkt, &original, &current);
        }
        let Some(port) =
            cx.conns
                .alloc_snat(zone, key.proto, external_ip, key.dst, key.dport, key.sport)
        else {
            return Err(DropReason::NatPortsExhausted);
        };
        // The session is keyed by the packet as it arrived (before any DNAT), so that the
        // next one of the flow finds it; replies come to the gateway's address and port.
        let reply = FlowKey { zone, ..key }.snat_reply(external_ip, port);
        let owner = u32::from(pkt.in_port.0);
        let id = match cx.conns.insert(original.key, reply, owner, 0, now) {
            Ok(id) => id,
            Err(InsertError::QuotaExceeded) => return Err(DropReason::NatQuotaExceeded),
            Err(InsertError::TableFull | InsertError::Exists) => {
                return Err(DropReason::NatTableFull)
            }
        };
        if let Some(to) = cx.conns.session(id).rewrite(Dir::Original) {
            remember_fragments(cx.conns, ip, &original.key, &to, owner, now);
            nat::rewrite(ip, &key, &to);
        }
        cx.conns
            .touch(id, Dir::Original, original.flags, u32::from(total_len), now);
        Ok(())
    }

    /// Sends a routed packet (TTL already decremented) to `mac` through `iface`: in place when
    /// it fits the egress MTU, else as fragments made into new frames (the original is then
    /// consumed). Returns the packet's next step; fragments go to the originated batch.
    #[inline(always)]
    fn send(
        &mut self,
        cx: &mut BurstCtx<'_>,
        pkt: &mut Packet,
        iface: &Interface,
        router_mac: PackedMac,
        mac: PackedMac,
    ) -> Next {
        let counters = cx.counters;
        let l3 = usize::from(pkt.meta.l3_offset);
        // The TTL is decremented here, once the packet leaves (not while it waits for ARP),
        // with the one write access that also rewrites its MACs.
        let beyond = cx.pool.tail_len(pkt);
        let data = cx.pool.data_mut(pkt);
        Ipv4Packet::new_unchecked(&mut data[l3..]).decrement_ttl();
        // The packet bounds the datagram (its total length was checked against it), so a
        // packet that fits needs no second look at the header.
        let fits = |len: usize| len <= usize::from(iface.mtu);
        if fits(data.len().saturating_sub(l3) + beyond)
            || fits(
                data.get(l3..)
                    .and_then(|b| Ipv4Packet::new_checked_within(b, beyond).ok())
                    .map_or(usize::MAX, |ip| usize::from(ip.total_len())),
            )
        {
            set_macs(data, router_mac, mac);
            return self.egress(cx, pkt, iface, mac);
        }
        let next = self.fragment(cx, pkt, iface, router_mac, mac);
        if let Next::Drop(..) = next {
            return next;
        }
        cx.pool.free_packet(pkt);
        counters.consumed.inc();
        next
    }

    /// Puts a routed packet (addressed to `mac`) on `iface`'s network and picks its port as
    /// the L2 stage would there. The choice is remembered for the rest of the burst: the L2
    /// stage has learnt what it will from this burst before the router runs, so it cannot
    /// change until the next one.
    #[inline(always)]
    fn egress(
        &mut self,
        cx: &mut BurstCtx<'_>,
        pkt: &mut Packet,
        iface: &Interface,
        mac: PackedMac,
    ) -> Next {
        let slot = iface.network;
        pkt.meta.network = slot;
        pkt.meta.flags |= Meta::ROUTED;
        let key = FdbKey::packed(slot, mac);
        let port = match self.cache.egress {
            Some((k, port)) if k == key => port,
            _ => {
                let port = egress_port(cx.snap, cx.macs, key, iface.network_uid);
                self.cache.egress = Some((key, port));
                port
            }
        };
        match port {
            Some(p) => Next::Output(p),
            None => Next::Flood,
        }
    }

    /// Splits a routed packet into fragments of `iface`'s MTU, each in a new frame addressed
    /// to `mac`, queued on the originated batch.
    #[cold]
    #[inline(never)]
    fn fragment(
        &mut self,
        cx: &mut BurstCtx<'_>,
        pkt: &Packet,
        iface: &Interface,
        router_mac: PackedMac,
        mac: PackedMac,
    ) -> Next {
        let counters = cx.counters;
        const ETH: usize = EthernetFrame::<&[u8]>::HEADER_LEN;
        let l3 = usize::from(pkt.meta.l3_offset);
        // The datagram stays in its frames while its fragments are made: copy it out first
        // so that the pool can hand out new frames.
        let len = cx.pool.packet_len(pkt).saturating_sub(l3);
        let datagram = &mut self.scratch[..len.min(crate::buf::MAX_CHAIN_LEN)];
        let len = cx.pool.copy_out(pkt, l3, datagram);
        let datagram = &datagram[..len];
        let pieces = match frag::fragment_count(datagram, iface.mtu) {
            Ok(n) => n,
            Err(FragError::DontFragment) => return Next::Drop(DropReason::MtuExceeded, Stage::L3),
            Err(_) => return Next::Drop(DropReason::BadIpv4Header, Stage::L3),
        };
        // All fragments or none: a datagram missing one is worthless to the receiver.
        if pieces > self.originated.remaining()
            || pieces > cx.pool.available()
            || pieces > MAX_BURST
        {
            return Next::Drop(DropReason::NoBuffers, Stage::L3);
        }
        let frame = &mut self.fragment;
        let mut made = [Packet::default(); MAX_BURST];
        let mut n = 0;
        let result = frag::fragment(datagram, iface.mtu, |piece| {
            let Some(written) = piece.write_to(&mut frame[ETH..]) else {
                return false;
            };
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..ETH]);
            eth.set_dst_addr(mac.address());
            eth.set_src_addr(router_mac.address());
            eth.set_ethertype(EtherType::IPV4);
            // A fragment for a jumbo network's smaller MTU may still need a chain.
            let Some(made_pkt) = cx.pool.alloc_packet(&frame[..ETH + written]) else {
                return false;
            };
            made[n] = originated(
                made_pkt.frame,
                made_pkt.offset,
                usize::from(made_pkt.len),
                pkt.meta.network,
                EtherType::IPV4,
                Next::Flood,
            );
            made[n].chained = made_pkt.chained;
            n += 1;
            true
        });
        if result.is_err() {
            for p in &made[..n] {
                cx.pool.free_packet(p);
            }
            return Next::Drop(DropReason::NoBuffers, Stage::L3);
        }
        for p in &mut made[..n] {
            set_macs(cx.pool.data_mut(p), router_mac, mac);
            p.meta.next = self.egress(cx, p, iface, mac);
            counters.originated.inc();
            let _ = self.originated.push(*p);
        }
        counters.fragments.add(n as u64);
        Next::Consumed
    }

    /// Sends an ICMP error about `offending` back where it came from: out of its input port,
    /// to the MAC it came from (the sender, or the router before this one), from router
    /// `router`'s address on that network. Rate limited in all and per offending source;
    /// never about packets RFC 1812 exempts (see [`icmp_error::build`]).
    fn icmp_error(
        &mut self,
        cx: &mut BurstCtx<'_>,
        offending: &Packet,
        router: RouterIndex,
        kind: IcmpErrorKind,
    ) {
        let snap = cx.snap;
        let counters = cx.counters;
        if self.originated.is_full() {
            return;
        }
        let routing = snap.routing();
        let slot = offending.meta.network;
        let (Some(r), Some(iface)) = (
            routing.router(router),
            routing
                .interface_on(router, slot)
                .and_then(|i| routing.interface(i)),
        ) else {
            return;
        };
        let data = cx.pool.data(offending);
        let beyond = cx.pool.tail_len(offending);
        let l3 = usize::from(offending.meta.l3_offset);
        let (Some(ip), Ok(eth)) = (data.get(l3..), EthernetFrame::new_checked(data)) else {
            return;
        };
        let source =
            Ipv4Packet::new_checked_within(ip, beyond).map_or(0, |p| u32::from(p.src_addr()));
        if !self.may_answer(cx, source) {
            return;
        }
        let mut frame = [0u8; EthernetFrame::<&[u8]>::HEADER_LEN + icmp_error::MAX_ERROR_LEN];
        let ident = self.ident.wrapping_add(1);
        if !cx.dry_run {
            self.ident = ident;
        }
        let built = icmp_error::build_frame(
            kind,
            Ipv4Addr::from(iface.ip),
            ident,
            ip,
            beyond,
            eth.src_addr(),
            r.mac,
            &mut frame,
        );
        let Ok(len) = built else {
            return;
        };
        if r.external.is_some() {
            // The packet it quotes may have been translated on its way here (an inbound
            // reply of a SNAT session, a packet to a floating IP, one translated before
            // it waited for ARP): the error names it as its sender sent it.
            let crossing = if routing.interface_on(router, slot) == r.external {
                Crossing::Outbound
            } else {
                Crossing::Inbound
            };
            let ip = &mut frame[EthernetFrame::<&[u8]>::HEADER_LEN..len];
            let now = u64::from(cx.now_secs);
            if related::translate(cx.conns, routing, now, router, r.uid.0, ip, crossing)
                != Related::No
            {
                counters.nat_icmp_errors.inc();
            }
        }
        let Some((id, offset)) = cx.pool.alloc_with(&frame[..len]) else {
            return;
        };
        counters.originated.inc();
        counters.icmp_errors.inc();
        let next = Next::Output(offending.in_port);
        let _ = self
            .originated
            .push(originated(id, offset, len, slot, EtherType::IPV4, next));
    }

    /// Whether the router may answer a packet from `source` with an error (an ICMP error
    /// or a TCP reset) now: rate limited in all and per source, so that no sender can make
    /// the router spend its time answering. Counts the refusals.
    fn may_answer(&mut self, cx: &BurstCtx<'_>, source: u32) -> bool {
        // An explained packet takes no token of the rate limits: the answer it shows is
        // the one a real packet would get now.
        let allowed = if cx.dry_run {
            self.icmp_per_source.would_allow(source, cx.now_ns)
                && self.icmp_budget.would_allow(cx.now_ns)
        } else {
            self.icmp_per_source.allow(source, cx.now_ns) && self.icmp_budget.allow(cx.now_ns)
        };
        if !allowed {
            cx.counters.icmp_rate_limited.inc();
        }
        allowed
    }

    /// Refuses a TCP segment to a router address with a reset made in its place and sent
    /// back out of its port, under the same rate limits as ICMP errors.
    fn tcp_reset(
        &mut self,
        cx: &mut BurstCtx<'_>,
        pkt: &mut Packet,
        router_mac: PackedMac,
    ) -> Next {
        let l3 = usize::from(pkt.meta.l3_offset);
        let Some(reset) = reset::reset_for(cx.pool.data(pkt), l3) else {
            return Next::Drop(DropReason::ToRouter, Stage::L3);
        };
        if !self.may_answer(cx, reset.source()) {
            return Next::Drop(DropReason::ToRouter, Stage::L3);
        }
        let data = cx.pool.data_mut(pkt);
        let len = reset::write(data, l3, &reset);
        let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
        let peer = eth.src_addr();
        eth.set_dst_addr(peer);
        eth.set_src_addr(router_mac.address());
        // The reset is shorter than the segment it replaces; it fits in its frame.
        pkt.len = len as u16;
        cx.counters.tcp_resets.inc();
        Next::Output(pkt.in_port)
    }

    /// Broadcasts an ARP request for `target` out of `iface`, from the router.
    fn request(
        &mut self,
        cx: &mut BurstCtx<'_>,
        iface: &Interface,
        router_mac: PackedMac,
        target: u32,
    ) {
        let counters = cx.counters;
        if self.originated.is_full() {
            return;
        }
        let mut frame = [0u8; ARP_FRAME_LEN];
        {
            let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
            eth.set_dst_addr(EthernetAddress::BROADCAST);
            eth.set_src_addr(router_mac.address());
            eth.set_ethertype(EtherType::ARP);
        }
        let repr = crate::wire::ArpRepr {
            operation: ArpOperation::REQUEST,
            sender_hardware_addr: router_mac.address(),
            sender_protocol_addr: Ipv4Addr::from(iface.ip),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Addr::from(target),
        };
        repr.emit(&mut ArpPacket::new_unchecked(
            &mut frame[EthernetFrame::<&[u8]>::HEADER_LEN..],
        ));
        let Some((id, offset)) = cx.pool.alloc_with(&frame) else {
            return;
        };
        counters.originated.inc();
        let mut pkt = originated(
            id,
            offset,
            ARP_FRAME_LEN,
            iface.network,
            EtherType::ARP,
            Next::Flood,
        );
        // Broadcast, like any ARP request.
        pkt.meta.flags |= Meta::MULTICAST;
        let _ = self.originated.push(pkt);
    }
}

/// Counts a packet crossing the external gateway in the router's metering labels: out of
/// line, so that routers without labels keep the forwarding path as it was.
#[inline(never)]
fn meter(
    cx: &BurstCtx<'_>,
    metering: &RouterMetering,
    from_external: bool,
    to_external: bool,
    src: u32,
    dst: u32,
    len: u16,
) {
    let counters = &cx.counters.meters;
    if from_external {
        metering.count(counters, MeterDirection::Ingress, src, dst, len);
    }
    if to_external {
        metering.count(counters, MeterDirection::Egress, src, dst, len);
    }
}

/// Turns the ARP request in `data` (an Ethernet frame whose ARP header at `l3` has been
/// checked) into `own`'s reply, in place: the asker becomes the target, `own` and the
/// asked-for address the sender, and the frame is addressed back to the asker.
pub(crate) fn answer_arp_in_place(data: &mut [u8], l3: usize, own: EthernetAddress) {
    let mut arp = ArpPacket::new_unchecked(&mut data[l3..]);
    let asker_mac = arp.sender_hardware_addr();
    let asker_ip = arp.sender_protocol_addr();
    let asked_ip = arp.target_protocol_addr();
    arp.set_operation(ArpOperation::REPLY);
    arp.set_target_hardware_addr(asker_mac);
    arp.set_target_protocol_addr(asker_ip);
    arp.set_sender_hardware_addr(own);
    arp.set_sender_protocol_addr(asked_ip);
    let mut eth = EthernetFrame::new_unchecked(data);
    eth.set_dst_addr(asker_mac);
    eth.set_src_addr(own);
}

/// Destination NAT of a packet without ports (a later fragment, ICMP other than echo): a
/// floating IP still translates its address 1:1.
fn floating_one_to_one(
    routing: &crate::routing::Routing,
    router: RouterIndex,
    ip: &mut [u8],
) -> Inbound {
    let p = Ipv4Packet::new_unchecked(&ip[..]);
    let (src, dst) = (u32::from(p.src_addr()), u32::from(p.dst_addr()));
    let mut inbound = Inbound::default();
    if let Some(fixed) = routing.fixed_of(router, dst) {
        nat::rewrite_addresses(ip, src, fixed);
        inbound.dnat = true;
    }
    inbound
}

/// When the packet at the start of `ip` (flow key `arrived`, as it arrived) is the first
/// fragment of a datagram that a session translates by `to`, remembers the translation for
/// its later fragments, which carry no ports (conntrack reassembles; this is VPP's shallow
/// virtual reassembly without the buffering: a later fragment that comes before its
/// first is `nat_unsupported`). The entry is charged to `owner` and lives as a session of
/// the protocol; a full table only costs the later fragments.
#[inline]
fn remember_fragments(
    conns: &mut crate::conntrack::ConnTable,
    ip: &[u8],
    arrived: &FlowKey,
    to: &crate::conntrack::Rewrite,
    owner: u32,
    now: u64,
) {
    let Some(ident) = nat::first_fragment(ip) else {
        return;
    };
    let key = nat::fragment_key(arrived, ident);
    let _ = conns.insert(key, nat::fragment_reply(&key, to), owner, 0, now);
}

/// What destination NAT did to a packet.
#[derive(Clone, Copy, Debug, Default)]
struct Inbound {
    /// It belongs to a NAT session and was translated by it.
    session: bool,
    /// Its destination was a floating IP, now the fixed IP.
    dnat: bool,
    /// Its flow key as it arrived, if it has one.
    original: Option<nat::L4>,
}

/// Addresses a routed frame to `mac`, from the router.
#[inline(always)]
fn set_macs(frame: &mut [u8], router_mac: PackedMac, mac: PackedMac) {
    let mut eth = EthernetFrame::new_unchecked(frame);
    eth.set_dst_addr(mac.address());
    eth.set_src_addr(router_mac.address());
}

/// Answers an ICMP echo request to a router address in place; anything else addressed to
/// the router is dropped.
fn echo_reply(pool: &mut FramePool, pkt: &mut Packet, router_mac: PackedMac) -> Next {
    let l3 = usize::from(pkt.meta.l3_offset);
    let beyond = pool.tail_len(pkt);
    let data = pool.data_mut(pkt);
    let Some(ip) = data
        .get_mut(l3..)
        .and_then(|b| Ipv4Packet::new_checked_within(b, beyond).ok())
    else {
        return Next::Drop(DropReason::BadIpv4Header, Stage::L3);
    };
    if ip.protocol() != IpProtocol::ICMP || ip.is_fragment() {
        return Next::Drop(DropReason::ToRouter, Stage::L3);
    }
    let header_len = ip.header_len();
    // The reply is made in place and its checksum patched, so a chained (jumbo) request
    // needs only the ICMP header, which its first frame holds.
    let total_len = usize::from(ip.total_len());
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    {
        let buffer = ip.into_inner();
        let end = total_len.min(buffer.len());
        let Some(icmp_bytes) = buffer.get_mut(header_len..end) else {
            return Next::Drop(DropReason::BadIpv4Header, Stage::L3);
        };
        let Ok(mut icmp) = Icmpv4Packet::new_checked(icmp_bytes) else {
            return Next::Drop(DropReason::ToRouter, Stage::L3);
        };
        if icmp.msg_type() != Icmpv4Type::ECHO_REQUEST || icmp.msg_code() != 0 {
            return Next::Drop(DropReason::ToRouter, Stage::L3);
        }
        // Only the type changes (8 → 0): patch the checksum for that word (RFC 1624).
        let old = u16::from(Icmpv4Type::ECHO_REQUEST.0) << 8;
        icmp.set_msg_type(Icmpv4Type::ECHO_REPLY);
        let sum = crate::wire::checksum::update16(icmp.checksum(), old, 0);
        icmp.set_checksum(sum);
    }
    let data = pool.data_mut(pkt);
    let mut ip = Ipv4Packet::new_unchecked(&mut data[l3..]);
    // Swapping the addresses leaves the header sum as it is; the TTL does not.
    ip.set_src_addr(dst);
    ip.set_dst_addr(src);
    ip.set_ttl_incremental(ipv4::DEFAULT_TTL);
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    let peer = eth.src_addr();
    eth.set_dst_addr(peer);
    eth.set_src_addr(router_mac.address());
    Next::Output(pkt.in_port)
}

/// Source NAT of an explained packet: the translation [`RouterState::outbound_nat`] would
/// make (the port it would allocate, the session it would create), written into the
/// packet, with no session created and no port taken.
#[cold]
#[inline(never)]
fn planned_snat(
    cx: &mut BurstCtx<'_>,
    zone: u32,
    external_ip: u32,
    pkt: &Packet,
    original: &nat::L4,
    current: &nat::L4,
) -> Result<(), DropReason> {
    let key = current.key;
    let Some(port) =
        cx.conns
            .probe_snat(zone, key.proto, external_ip, key.dst, key.dport, key.sport)
    else {
        return Err(DropReason::NatPortsExhausted);
    };
    let reply = FlowKey { zone, ..key }.snat_reply(external_ip, port);
    let owner = u32::from(pkt.in_port.0);
    let now = u64::from(cx.now_secs);
    match cx.conns.check_insert(&original.key, &reply, owner, now) {
        Ok(()) => {}
        Err(InsertError::QuotaExceeded) => return Err(DropReason::NatQuotaExceeded),
        Err(InsertError::TableFull | InsertError::Exists) => return Err(DropReason::NatTableFull),
    }
    // The session would be keyed by the packet as it arrived; the rewrite follows from
    // its reply key.
    if let Some(to) = crate::conntrack::Session::planned_rewrite(original.key, reply) {
        let l3 = usize::from(pkt.meta.l3_offset);
        nat::rewrite(&mut cx.pool.data_mut(pkt)[l3..], &key, &to);
    }
    Ok(())
}
