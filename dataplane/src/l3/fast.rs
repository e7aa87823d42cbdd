//! The router's forwarding cache: a run of packets of one destination (or one translated
//! flow) that the full path forwarded is forwarded from what the first of them worked out.
//!
//! How a router forwards a destination depends only on the snapshot (the route, whether
//! NAT or metering is involved, the egress interface and its MTU), the neighbour entry of
//! the next hop and the L2 choice of the egress port: all fixed for a burst, except the
//! neighbour entry, which ARP in the same burst can change (the cache is then forgotten
//! with the neighbour cache). A NAT session's translation is fixed too: within a burst
//! (one clock reading) the router removes no live session. So once the full path has
//! forwarded a packet in place, without metering or an ARP request, either plainly or as
//! a packet of an established NAT session, the rest of the run needs only what depends on
//! the packet itself: a valid option-less header, an unfragmented datagram with a TTL
//! above 1 that fits the egress MTU in a single frame, and for NAT the same flow key, the
//! session's accounting (`touch`, which follows TCP's state) and the rewrite, whose
//! checksum differences are worked out once. Anything else goes the full way, as VPP's
//! adjacency or a route cache would send it to the slow path.

use crate::conntrack::{ConnTable, Dir, FlowKey, Rewrite, SessionId};
use crate::ident::{NetworkSlot, PackedMac, RouterIndex};
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::BurstCtx;
use crate::wire::checksum::{self, apply_folded, delta16, delta32, fold};
use crate::wire::{IpProtocol, TcpFlags};

/// What the full path decided for a destination's last packet.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forward {
    pub router: RouterIndex,
    /// The destination address, host byte order.
    pub dst: u32,
    /// The egress interface's MTU.
    pub mtu: u16,
    /// The next hop's MAC then the router's, as the frame carries them.
    pub macs: [u8; 12],
    /// The egress network's slot.
    pub network: NetworkSlot,
    /// The egress port ([`Next::Output`]) or [`Next::Flood`].
    pub next: Next,
    /// The NAT session the packet belonged to; `None`: forwarded plainly, `dst` involves
    /// no NAT at all.
    pub nat: Option<Translation>,
}

/// An established NAT session's translation of one flow.
#[derive(Clone, Copy, Debug)]
pub(super) struct Translation {
    id: SessionId,
    dir: Dir,
    proto: u8,
    /// Addresses and ports as the flow's packets arrive and as they leave, in wire order:
    /// in a header without options they are 12 contiguous bytes (source and destination
    /// address, source and destination port), compared and written whole.
    from: [u8; 12],
    to: [u8; 12],
    /// The sums of the changed fields' differences, folded: addresses (the IPv4 header),
    /// and addresses and ports (TCP and UDP, whose pseudo-header covers the addresses).
    ip_delta: u16,
    l4_delta: u16,
}

impl Translation {
    /// The translation of flow `key` to `to` by session `id` in direction `dir`; `None` for
    /// what the cache does not take (ICMP echo).
    pub fn new(key: FlowKey, id: SessionId, dir: Dir, to: Rewrite) -> Option<Translation> {
        if key.proto != TCP && key.proto != UDP {
            return None;
        }
        let wire = |src: u32, dst: u32, sport: u16, dport: u16| {
            let mut b = [0; 12];
            b[..4].copy_from_slice(&src.to_be_bytes());
            b[4..8].copy_from_slice(&dst.to_be_bytes());
            b[8..10].copy_from_slice(&sport.to_be_bytes());
            b[10..].copy_from_slice(&dport.to_be_bytes());
            b
        };
        let addresses = delta32(key.src, to.src) + delta32(key.dst, to.dst);
        let ports = delta16(key.sport, to.sport) + delta16(key.dport, to.dport);
        Some(Translation {
            id,
            dir,
            proto: key.proto,
            from: wire(key.src, key.dst, key.sport, key.dport),
            to: wire(to.src, to.dst, to.sport, to.dport),
            ip_delta: fold(addresses),
            l4_delta: fold(addresses + ports),
        })
    }
}

const TCP: u8 = IpProtocol::TCP.0;
const UDP: u8 = IpProtocol::UDP.0;

impl Forward {
    /// The MACs of a frame from `router_mac` to `mac`, in frame order.
    pub fn macs(router_mac: PackedMac, mac: PackedMac) -> [u8; 12] {
        let mut macs = [0; 12];
        macs[..6].copy_from_slice(mac.address().as_bytes());
        macs[6..].copy_from_slice(router_mac.address().as_bytes());
        macs
    }
}

/// Forwards `pkt` as the cached decision `f` says, or returns `None` (the packet untouched)
/// when it is not a plain packet to `f`'s destination (or of `f`'s flow) through `router`.
#[inline(always)]
pub(super) fn forward(
    cx: &mut BurstCtx<'_>,
    f: &Forward,
    router: RouterIndex,
    pkt: &mut Packet,
) -> Option<Next> {
    if f.router != router || pkt.chained {
        return None;
    }
    let l3 = usize::from(pkt.meta.l3_offset);
    let data = cx.pool.data_mut_inlined(pkt);
    if data.len() < l3 + 20 || l3 < 12 {
        return None;
    }
    let (eth, ip) = data.split_at_mut(l3);
    let held = ip.len();
    // Version 4 without options; a total length the frame holds and the MTU allows; a
    // valid checksum (RFC 1812 §5.2.2); a TTL that survives the hop.
    let header: &[u8; 20] = ip[..20].try_into().ok()?;
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let dst = u32::from_be_bytes([header[16], header[17], header[18], header[19]]);
    if header[0] != 0x45
        || total < 20
        || total > held
        || total > usize::from(f.mtu)
        || header[8] <= 1
        || !checksum::sums_to_ones20(header)
    {
        return None;
    }
    match &f.nat {
        None if dst == f.dst => {}
        None => return None,
        Some(t) => translate(cx.conns, u64::from(cx.now_secs), t, ip, total)?,
    }
    ip[8] -= 1;
    // As `Ipv4Packet::decrement_ttl` (the checksum rises by 0x0100 with end-around carry),
    // without its TTL-of-zero test and second bounds check, both settled above: calling it
    // here cost 3 to 4 instructions per packet (measured).
    let c = u32::from(u16::from_be_bytes([ip[10], ip[11]])) + 0x0100;
    ip[10..12].copy_from_slice(&((c + u32::from(c >= 0xffff)) as u16).to_be_bytes());
    eth[..12].copy_from_slice(&f.macs);
    pkt.meta.network = f.network;
    pkt.meta.flags |= Meta::ROUTED;
    Some(f.next)
}

/// Accounts and rewrites the packet at the start of `ip` (`total` bytes, header checked,
/// without options) if it is an unfragmented packet of `t`'s flow; `None` (nothing
/// changed) if not.
#[inline(always)]
fn translate(
    conns: &mut ConnTable,
    now: u64,
    t: &Translation,
    ip: &mut [u8],
    total: usize,
) -> Option<()> {
    // The L4 header must be whole within the datagram: TCP's flags are read, UDP's
    // checksum patched.
    let (l4_len, csum_at) = if t.proto == TCP { (20, 36) } else { (8, 26) };
    if total < 20 + l4_len
        || ip[9] != t.proto
        || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0
        || ip[12..24] != t.from
    {
        return None;
    }
    let flags = if t.proto == TCP {
        TcpFlags(u16::from_be_bytes([ip[32], ip[33]]) & 0x01ff)
    } else {
        TcpFlags(0)
    };
    conns.touch(t.id, t.dir, flags, total as u32, now);
    ip[12..24].copy_from_slice(&t.to);
    let ip_csum = apply_folded(u16::from_be_bytes([ip[10], ip[11]]), t.ip_delta);
    ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
    let csum = u16::from_be_bytes([ip[csum_at], ip[csum_at + 1]]);
    // A UDP checksum of zero (none) stays zero; a computed zero is sent as all ones
    // (RFC 768), as `nat::rewrite` does.
    if t.proto == TCP || csum != 0 {
        let mut csum = apply_folded(csum, t.l4_delta);
        if t.proto == UDP && csum == 0 {
            csum = 0xffff;
        }
        ip[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    }
    Some(())
}
