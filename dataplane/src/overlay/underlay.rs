//! The underlay as the tunnel endpoint sees it: the MACs of remote endpoints (from ARP
//! and from the VXLAN packets they send), the ARP requests asking for them, and the
//! answers to ARP for `local_ip`.
//!
//! The table is the routers' neighbour table ([`NeighborTable`]) under a network key no
//! network has ([`UNDERLAY`]), so entries are re-confirmed and expire as the routers'
//! do. Only remote endpoints of the snapshot get entries: a host on the underlay cannot
//! fill the table with addresses of its choosing.

use crate::buf::FramePool;
use crate::counters::WorkerCounters;
use crate::ident::{PackedMac, PortId};
use crate::l3::NeighborTable;
use crate::output::PortSet;
use crate::overlay::Overlay;
use crate::packet::{Meta, Next, Packet};
use crate::snapshot::NetworkUid;
use crate::wire::{ArpOperation, ArpPacket, EtherType, EthernetAddress, EthernetFrame};

/// The neighbour-table key of the underlay (network uids are handed out from 0 upwards
/// and never reach it).
pub const UNDERLAY: NetworkUid = NetworkUid(u32::MAX);

/// Remote endpoints whose MACs one worker remembers (an eighth of the table: the
/// neighbour table's per-network quota).
const CAPACITY: usize = 8 * 1024;

const ETH: usize = 14;
const ARP_LEN: usize = 28;

/// The per-worker underlay state, shared by the decapsulation and encapsulation stages.
#[derive(Debug)]
pub struct Underlay {
    neighbors: NeighborTable,
    /// When [`Underlay::probe_new`] last looked for endpoints without an entry.
    probed: u32,
}

impl Default for Underlay {
    fn default() -> Self {
        Underlay {
            neighbors: NeighborTable::new(CAPACITY),
            probed: u32::MAX,
        }
    }
}

impl Underlay {
    /// The MAC of remote endpoint `ip`, or `None` after asking for it (an ARP request out
    /// of the uplink, at most one per second per endpoint, as the routers ask).
    #[inline]
    pub fn resolve(
        &mut self,
        ov: &Overlay,
        ip: u32,
        now: u32,
        pool: &mut FramePool,
        ports: &mut PortSet,
        counters: &WorkerCounters,
    ) -> Option<PackedMac> {
        let r = self.neighbors.resolve(UNDERLAY, ip, now);
        if r.request {
            request(ov, ip, pool, ports, counters);
        }
        r.mac
    }

    /// [`Underlay::resolve`] for a packet of the burst of `cx`: an explained packet asks
    /// nobody and leaves no entry behind.
    #[inline]
    pub(crate) fn resolve_for(
        &mut self,
        ov: &Overlay,
        ip: u32,
        cx: &mut crate::pipeline::BurstCtx<'_>,
    ) -> Option<PackedMac> {
        if cx.dry_run {
            let r = self.neighbors.would_resolve(UNDERLAY, ip, cx.now_secs);
            if r.request {
                request(ov, ip, cx.pool, cx.ports, cx.counters);
            }
            return r.mac;
        }
        self.resolve(ov, ip, cx.now_secs, cx.pool, cx.ports, cx.counters)
    }

    /// Records that remote endpoint `ip` has `mac`. Addresses that are no remote endpoint
    /// of the snapshot are ignored.
    #[inline]
    pub fn learn(&mut self, ov: &Overlay, ip: u32, mac: PackedMac, now: u32) {
        if ov.is_remote_endpoint(ip) {
            self.neighbors.learn(UNDERLAY, ip, mac, now, true);
        }
    }

    /// Records that `ip`, a peer that just sent a VXLAN packet, has `mac`.
    #[inline]
    pub(crate) fn learn_peer(&mut self, ip: u32, mac: PackedMac, now: u32) {
        self.neighbors.learn(UNDERLAY, ip, mac, now, true);
    }

    /// The remote endpoints known now, with their MAC (`None`: asked, not answered).
    pub fn entries(&self) -> impl Iterator<Item = (u32, Option<PackedMac>)> + '_ {
        self.neighbors
            .entries()
            .filter(|(uid, _, _)| *uid == UNDERLAY)
            .map(|(_, ip, n)| (ip, n.mac()))
    }

    /// Asks for the MAC of every remote endpoint the table has no entry for (a host new in
    /// the configuration, or one forgotten), at most once a second: so that the first
    /// frames towards it find it resolved rather than being dropped while it is asked.
    pub fn probe_new(
        &mut self,
        ov: &Overlay,
        now: u32,
        pool: &mut FramePool,
        ports: &mut PortSet,
        counters: &WorkerCounters,
    ) {
        if !ov.enabled() || now == self.probed {
            return;
        }
        self.probed = now;
        for (_, ip) in ov.tunnels() {
            let ip = u32::from(ip);
            if self.neighbors.get(UNDERLAY, ip).is_none() {
                self.resolve(ov, ip, now, pool, ports, counters);
            }
        }
    }

    /// Forgets entries not confirmed for a while (housekeeping); returns how many.
    pub fn age(&mut self, now: u32, budget: usize) -> usize {
        self.neighbors.age(now, budget)
    }
}

/// Sends a broadcast ARP request for `ip` from the endpoint out of the uplink. A frame the
/// worker made: counted as originated, sent or dropped like any other.
#[cold]
#[inline(never)]
fn request(
    ov: &Overlay,
    ip: u32,
    pool: &mut FramePool,
    ports: &mut PortSet,
    counters: &WorkerCounters,
) {
    let mut frame = [0u8; ETH + ARP_LEN];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(ov.mac().address());
    eth.set_ethertype(EtherType::ARP);
    let mut arp = ArpPacket::new_unchecked(&mut frame[ETH..]);
    arp.set_hardware_type(1);
    arp.set_protocol_type(EtherType::IPV4);
    arp.set_hardware_len(6);
    arp.set_protocol_len(4);
    arp.set_operation(ArpOperation::REQUEST);
    arp.set_sender_hardware_addr(ov.mac().address());
    arp.set_sender_protocol_addr(ov.local_ip().into());
    arp.set_target_hardware_addr(EthernetAddress([0; 6]));
    arp.set_target_protocol_addr(ip.into());
    let Some((id, offset)) = pool.alloc_with(&frame) else {
        return;
    };
    counters.originated.inc();
    let pkt = Packet {
        frame: id,
        offset,
        len: frame.len() as u16,
        in_port: PortId::NONE,
        meta: Meta {
            next: Next::Output(ov.uplink()),
            ethertype: EtherType::ARP.0,
            l3_offset: ETH as u8,
            flags: Meta::MULTICAST | Meta::ROUTED,
            ..Meta::default()
        },
        chained: false,
    };
    ports.enqueue(pool, counters, ov.uplink(), pkt);
}

/// What ARP for the endpoint's address became.
pub(crate) enum ArpOutcome {
    /// Not for the endpoint: the frame goes on as it was.
    NotOurs,
    /// A request: the frame was rewritten into the reply, to send back out of the uplink.
    Reply,
    /// A reply to the endpoint: learned; the frame is no longer needed.
    Consumed,
    /// Malformed.
    Bad,
}

/// Handles an untagged ARP frame on the uplink: a request for `local_ip` becomes its
/// reply in place; a reply to `local_ip` is learned.
pub(crate) fn arp(
    ov: &Overlay,
    under: &mut Underlay,
    data: &mut [u8],
    l3: usize,
    now: u32,
    dry_run: bool,
) -> ArpOutcome {
    let Some(body) = data.get(l3..) else {
        return ArpOutcome::Bad;
    };
    let Ok(req) = ArpPacket::new_checked(body) else {
        return ArpOutcome::Bad;
    };
    if !req.is_ethernet_ipv4() || u32::from(req.target_protocol_addr()) != ov.local_ip() {
        return ArpOutcome::NotOurs;
    }
    let sender_ip = u32::from(req.sender_protocol_addr());
    let sender_mac = req.sender_hardware_addr();
    let op = req.operation();
    if !dry_run {
        under.learn(ov, sender_ip, PackedMac::new(sender_mac), now);
    }
    if op != ArpOperation::REQUEST {
        return ArpOutcome::Consumed;
    }
    let ours = ov.mac().address();
    let mut eth = EthernetFrame::new_unchecked(&mut data[..]);
    eth.set_dst_addr(sender_mac);
    eth.set_src_addr(ours);
    let mut reply = ArpPacket::new_unchecked(&mut data[l3..]);
    reply.set_operation(ArpOperation::REPLY);
    reply.set_target_hardware_addr(sender_mac);
    reply.set_target_protocol_addr(sender_ip.into());
    reply.set_sender_hardware_addr(ours);
    reply.set_sender_protocol_addr(ov.local_ip().into());
    ArpOutcome::Reply
}
