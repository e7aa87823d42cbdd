//! Encapsulation towards remote tunnel endpoints, right before output.
//!
//! A frame the L2 stage sent to a tunnel port gets outer Ethernet, IPv4 and the tunnel
//! headers of its network's encapsulation (UDP and VXLAN, UDP and Geneve, or GRE with a
//! key) written into its headroom (the payload never moves) and leaves on the
//! endpoint's uplink. A flooded frame of an overlay network is also copied, head-end, to
//! every host of the network's flood list; a frame that came from a tunnel is never sent
//! to another one (the sender replicated it to every host already).

use crate::buf::FramePool;
use crate::counters::{Counter, WorkerCounters};
use crate::drop::DropReason;
use crate::ident::{NetworkSlot, PackedMac};
use crate::output::{drop_held, set_egress_tag};
use crate::overlay::underlay::Underlay;
use crate::overlay::{Encapsulation, Overlay, TunnelId};
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::wire::{geneve, gre, vxlan, EtherType};

const ETH: usize = 14;
const IP: usize = 20;
const UDP: usize = 8;
/// TTL of the outer header (Linux's default for its own packets).
const OUTER_TTL: u8 = 64;
/// Outer UDP source ports come from the inner flow, in the range RFC 7348 recommends.
const SPORT_BASE: u16 = 49152;

/// The encapsulation stage: a view of the worker's underlay state for one burst.
#[derive(Debug)]
pub struct TunnelEncap<'a> {
    /// Remote endpoints' MACs, asked for when unknown.
    pub under: &'a mut Underlay,
}

impl BurstStage for TunnelEncap<'_> {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::TunnelEncap
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::SEND
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let snap = cx.snap;
        let ov = snap.overlay();
        let mut entered = 0;
        let mut produced = Pending::SEND;
        // Runs of one flow: the tunnel, its underlay MAC and the outer headers are made
        // once per run.
        let mut last_out = PortId::NONE;
        let mut last_remote = None;
        // The run's headers live in memory, written by an out-of-line call: kept in the
        // run's tuple, the compiler split them into 50 byte-sized values and wrote each
        // packet's headers one byte at a time (about 45 instructions more per packet).
        let mut outer = Outer::EMPTY;
        let mut run: Option<(u32, NetworkSlot, &Counter)> = None;
        for pkt in pkts.iter_mut() {
            match pkt.meta.next {
                Next::Output(out) => {
                    if out != last_out {
                        last_out = out;
                        last_remote = ov.remote(out);
                    }
                    let Some(remote) = last_remote else {
                        continue;
                    };
                    entered += 1;
                    // Only VM ports have this stage: the L2 stage keeps decapsulated
                    // frames from other tunnels.
                    let slot = pkt.meta.network;
                    let hit = matches!(run, Some((r, s, ..)) if r == remote && s == slot);
                    if !hit {
                        let mac = self.under.resolve_for(ov, remote, cx);
                        match (mac, ov.tunnel(slot)) {
                            (Some(mac), Some(tunnel)) => {
                                outer.set(OuterHeaders {
                                    dst_mac: mac.octets(),
                                    src_mac: ov.mac().octets(),
                                    src_ip: ov.local_ip(),
                                    dst_ip: remote,
                                    tunnel,
                                });
                                let counter = tunnel.encapsulation.encapsulated(cx.counters);
                                run = Some((remote, slot, counter));
                            }
                            (mac, _) => {
                                run = None;
                                let reason = if mac.is_none() {
                                    DropReason::TunnelUnresolved
                                } else {
                                    DropReason::InternalError
                                };
                                pkt.meta.next = Next::Drop(reason, Stage::TunnelEncap);
                                produced |= Pending::DONE;
                                continue;
                            }
                        }
                    }
                    // Used in place: the headers are not copied out of the run for each
                    // packet. The run also holds the counter of its encapsulation.
                    let Some((_, _, counter)) = run else {
                        continue;
                    };
                    pkt.meta.next = push_outer(ov, cx.pool, counter, pkt, &outer);
                    produced |= Pending::of(pkt.meta.next);
                }
                Next::Flood => {
                    let tunnels = ov.flood_tunnels(pkt.meta.network);
                    if tunnels.is_empty() || ov.remote(pkt.in_port).is_some() {
                        continue;
                    }
                    entered += 1;
                    pkt.meta.next = self.replicate(cx, pkt, tunnels);
                    produced |= Pending::of(pkt.meta.next);
                }
                _ => {}
            }
        }
        Outcome {
            packets: entered,
            produced,
        }
    }
}

impl TunnelEncap<'_> {
    /// Sends a copy of a flooded frame to every host in `tunnels`; the original stays to
    /// be flooded to the local ports, or, when there is none but its input port, goes to
    /// the last host itself. Returns the original's next step.
    #[cold]
    fn replicate(&mut self, cx: &mut BurstCtx<'_>, pkt: &mut Packet, tunnels: &[PortId]) -> Next {
        let ov = cx.snap.overlay();
        let skip = if pkt.meta.flags & Meta::ROUTED != 0 {
            PortId::NONE
        } else {
            pkt.in_port
        };
        let locals = cx
            .snap
            .flood_ports(pkt.meta.network)
            .iter()
            .any(|&p| p != skip);
        let (copies, last) = match (locals, tunnels.split_last()) {
            (false, Some((last, rest))) => (rest, Some(*last)),
            _ => (tunnels, None),
        };
        for &tunnel in copies {
            let Some(remote) = ov.remote(tunnel) else {
                continue;
            };
            cx.counters.replicas.inc();
            let Some(mut copy) = cx.pool.clone_packet(pkt) else {
                cx.counters
                    .count_drop(None, Stage::TunnelEncap, DropReason::NoBuffers, 1);
                continue;
            };
            let mac = self.under.resolve_for(ov, remote, cx);
            match encap(ov, cx.pool, cx.counters, &mut copy, remote, mac) {
                Next::Output(uplink) => cx.ports.enqueue(cx.pool, cx.counters, uplink, copy),
                Next::Drop(reason, stage) => drop_held(cx, copy, stage, reason),
                _ => unreachable_next(cx, copy),
            }
        }
        match last.and_then(|t| ov.remote(t)) {
            Some(remote) => {
                let mac = self.under.resolve_for(ov, remote, cx);
                encap(ov, cx.pool, cx.counters, pkt, remote, mac)
            }
            None => Next::Flood,
        }
    }
}

#[cold]
fn unreachable_next(cx: &mut BurstCtx<'_>, pkt: Packet) {
    debug_assert!(false, "encapsulation leaves a frame sent or dropped");
    drop_held(cx, pkt, Stage::TunnelEncap, DropReason::InternalError);
}

/// Writes the outer headers of `pkt` towards `remote` (whose underlay MAC is `mac`, if
/// known) in front of it; returns its next step: out of the uplink, or a drop.
#[inline]
pub fn encap(
    ov: &Overlay,
    pool: &mut FramePool,
    counters: &WorkerCounters,
    pkt: &mut Packet,
    remote: u32,
    mac: Option<PackedMac>,
) -> Next {
    let Some(tunnel) = ov.tunnel(pkt.meta.network) else {
        return Next::Drop(DropReason::InternalError, Stage::TunnelEncap);
    };
    let Some(mac) = mac else {
        return Next::Drop(DropReason::TunnelUnresolved, Stage::TunnelEncap);
    };
    let outer = Outer::new(OuterHeaders {
        dst_mac: mac.octets(),
        src_mac: ov.mac().octets(),
        src_ip: ov.local_ip(),
        dst_ip: remote,
        tunnel,
    });
    let counter = tunnel.encapsulation.encapsulated(counters);
    push_outer(ov, pool, counter, pkt, &outer)
}

/// Puts `outer` in front of `pkt` (in its headroom); its next step.
#[inline(always)]
fn push_outer(
    ov: &Overlay,
    pool: &mut FramePool,
    counter: &Counter,
    pkt: &mut Packet,
    outer: &Outer,
) -> Next {
    // The inner frame is untagged on the overlay.
    if pkt.meta.flags & Meta::VLAN != 0 {
        if let Err(reason) = set_egress_tag(pool, pkt, None) {
            return Next::Drop(reason, Stage::TunnelEncap);
        }
    }
    let overhead = outer.overhead;
    if pkt.offset < overhead {
        return Next::Drop(DropReason::NoHeadroom, Stage::TunnelEncap);
    }
    // The outer lengths count the whole inner frame (every segment of a chain), which
    // must leave room for the outer headers in a 64 KiB datagram.
    let inner_len = match pkt.chained {
        false => pkt.len,
        true => match u16::try_from(pool.packet_len(pkt)) {
            Ok(len) if len <= u16::MAX - overhead => len,
            _ => return Next::Drop(DropReason::TooBig, Stage::TunnelEncap),
        },
    };
    // One view of the headroom and the frame: the inner frame to hash, the headroom to
    // write.
    let start = usize::from(pkt.offset - overhead);
    let end = usize::from(pkt.offset) + usize::from(pkt.len);
    let Some(region) = pool.frame_mut(pkt.frame).get_mut(start..end) else {
        return Next::Drop(DropReason::InternalError, Stage::TunnelEncap);
    };
    let (headers, inner) = region.split_at_mut(usize::from(overhead));
    // GRE has no field to carry the flow's entropy.
    let sport = if outer.udp {
        SPORT_BASE | (flow_hash(inner, &pkt.meta) & 0x3fff)
    } else {
        0
    };
    if !outer.write(headers, inner_len, sport) {
        return Next::Drop(DropReason::InternalError, Stage::TunnelEncap);
    }
    pkt.offset -= overhead;
    pkt.len += overhead;
    pkt.meta.flags = 0;
    pkt.meta.ethertype = EtherType::IPV4.0;
    pkt.meta.l3_offset = ETH as u8;
    counter.inc();
    Next::Output(ov.uplink())
}

/// Bytes of the longest outer headers (VXLAN's and Geneve's).
const OUTER_MAX: usize = ETH + IP + UDP + vxlan::HEADER_LEN;
/// Bytes of outer headers with UDP (VXLAN, Geneve without options).
const OUTER_UDP: usize = ETH + IP + UDP + vxlan::HEADER_LEN;
// VXLAN's and Geneve's (without options) headers have one length: one template size.
const _: () = assert!(geneve::HEADER_LEN == vxlan::HEADER_LEN);
/// Bytes of outer headers with GRE and a key.
const OUTER_GRE: usize = ETH + IP + gre::KEYED_LEN;

/// The values of the outer headers that are the same for every packet to one endpoint
/// on one network.
#[derive(Clone, Copy, Debug)]
pub struct OuterHeaders {
    /// The next hop's MAC on the underlay.
    pub dst_mac: [u8; 6],
    /// The endpoint's MAC.
    pub src_mac: [u8; 6],
    /// `local_ip`, host order.
    pub src_ip: u32,
    /// The remote endpoint, host order.
    pub dst_ip: u32,
    /// The network's encapsulation and VNI or key.
    pub tunnel: TunnelId,
}

/// The outer headers towards one endpoint on one network, made once per run of packets:
/// each packet copies them and fills in its lengths, IPv4 checksum and (UDP) source port.
#[derive(Clone, Copy, Debug)]
pub struct Outer {
    /// The headers, the first `overhead` bytes used.
    hdr: [u8; OUTER_MAX],
    /// Bytes of the headers, and whether they end in UDP (VXLAN, Geneve) rather than GRE:
    /// the kind's properties the packet path needs, so that it does not branch on it.
    overhead: u16,
    udp: bool,
    /// One's-complement sum of the IPv4 header words without the total length.
    ip_sum: u32,
}

impl Outer {
    /// Headers not yet made (a placeholder until [`Outer::set`]).
    pub const EMPTY: Outer = Outer {
        hdr: [0; OUTER_MAX],
        overhead: 0,
        udp: false,
        ip_sum: 0,
    };

    /// Makes the headers `h` in place. Out of line on purpose: see `TunnelEncap::process`.
    #[inline(never)]
    pub fn set(&mut self, h: OuterHeaders) {
        *self = Outer::new(h);
    }

    /// Outer Ethernet, IPv4 (DF set, identification 0: an atomic datagram, RFC 6864) and
    /// the tunnel headers: UDP (checksum zero, as RFC 7348 and RFC 8926 allow over IPv4)
    /// and VXLAN or Geneve (no options), or GRE with the key.
    pub fn new(h: OuterHeaders) -> Outer {
        let kind = h.tunnel.encapsulation;
        let mut hdr = [0u8; OUTER_MAX];
        hdr[0..6].copy_from_slice(&h.dst_mac);
        hdr[6..12].copy_from_slice(&h.src_mac);
        hdr[12..14].copy_from_slice(&EtherType::IPV4.0.to_be_bytes());
        let ip = &mut hdr[ETH..ETH + IP];
        ip[0] = 0x45;
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        ip[8] = OUTER_TTL;
        ip[9] = match kind {
            Encapsulation::Vxlan | Encapsulation::Geneve => 17,
            Encapsulation::Gre => gre::IP_PROTOCOL,
        };
        ip[12..16].copy_from_slice(&h.src_ip.to_be_bytes());
        ip[16..20].copy_from_slice(&h.dst_ip.to_be_bytes());
        let ip_sum = ip
            .chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let id = h.tunnel.id;
        let l4 = &mut hdr[ETH + IP..];
        match kind {
            Encapsulation::Vxlan => {
                l4[2..4].copy_from_slice(&vxlan::VXLAN_PORT.to_be_bytes());
                let vx = &mut l4[UDP..];
                vx[0] = vxlan::FLAG_I;
                vx[4..8].copy_from_slice(&((id & vxlan::VNI_MAX) << 8).to_be_bytes());
            }
            Encapsulation::Geneve => {
                l4[2..4].copy_from_slice(&geneve::GENEVE_PORT.to_be_bytes());
                geneve::GeneveRepr {
                    vni: id,
                    protocol: geneve::PROTO_ETHERNET,
                }
                .emit(&mut l4[UDP..]);
            }
            Encapsulation::Gre => gre::GreRepr {
                key: id,
                protocol: gre::PROTO_ETHERNET,
            }
            .emit(l4),
        }
        Outer {
            hdr,
            overhead: kind.overhead(),
            udp: kind != Encapsulation::Gre,
            ip_sum,
        }
    }

    /// Bytes of the outer headers.
    #[inline(always)]
    pub fn overhead(&self) -> u16 {
        self.overhead
    }

    /// Writes the headers for an inner frame of `inner_len` bytes and UDP source port
    /// `sport` (unused by GRE) at the start of `out`; false if `out` is too short.
    #[inline(always)]
    pub fn write(&self, out: &mut [u8], inner_len: u16, sport: u16) -> bool {
        let total = self.overhead - ETH as u16 + inner_len;
        let mut sum = self.ip_sum + u32::from(total);
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let csum = !(sum as u16);
        let ip_lengths = |out: &mut [u8]| {
            out[ETH + 2..ETH + 4].copy_from_slice(&total.to_be_bytes());
            out[ETH + 10..ETH + 12].copy_from_slice(&csum.to_be_bytes());
        };
        if self.udp {
            let Some(out) = out.first_chunk_mut::<OUTER_UDP>() else {
                return false;
            };
            *out = self.hdr;
            ip_lengths(out);
            out[ETH + IP..ETH + IP + 2].copy_from_slice(&sport.to_be_bytes());
            out[ETH + IP + 4..ETH + IP + 6].copy_from_slice(&(total - IP as u16).to_be_bytes());
        } else {
            let Some(out) = out.first_chunk_mut::<OUTER_GRE>() else {
                return false;
            };
            out.copy_from_slice(&self.hdr[..OUTER_GRE]);
            ip_lengths(out);
        }
        true
    }
}

/// A hash of the inner frame's flow (MACs, and for IPv4 the addresses, protocol and
/// TCP/UDP ports), so that underlay paths with ECMP keep each flow on one path.
#[inline]
pub fn flow_hash(data: &[u8], meta: &Meta) -> u16 {
    let le64 = |b: &[u8; 8]| u64::from_le_bytes(*b);
    let le32 = |b: &[u8; 4]| u64::from(u32::from_le_bytes(*b));
    let mut h = match data.first_chunk::<12>() {
        Some(m) => {
            let (a, b) = m.split_at(8);
            le64(a.try_into().unwrap_or(&[0; 8])) ^ le32(b.try_into().unwrap_or(&[0; 4])) << 29
        }
        None => 0,
    };
    if meta.ethertype == EtherType::IPV4.0 {
        let ip = data.get(usize::from(meta.l3_offset)..).unwrap_or(&[]);
        if let Some(hdr) = ip.first_chunk::<20>() {
            let addrs: &[u8; 8] = hdr[12..20].try_into().unwrap_or(&[0; 8]);
            h ^= le64(addrs).rotate_left(17) ^ u64::from(hdr[9]);
            // Ports when they follow a header without options and this is no fragment.
            let ports_here = hdr[0] == 0x45
                && (hdr[9] == 6 || hdr[9] == 17)
                && u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff == 0;
            if ports_here {
                if let Some(ports) = ip.get(20..24) {
                    h ^= le32(ports.try_into().unwrap_or(&[0; 4])).rotate_left(41);
                }
            }
        }
    }
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_headers_are_exact() {
        let mut out = [0u8; 50];
        assert!(outer(Encapsulation::Vxlan, 0x123456).write(&mut out, 60, 50000));
        let ip = crate::wire::Ipv4Packet::new_unchecked(&out[14..34]);
        assert!(ip.verify_checksum());
        assert!(ip.dont_frag());
        assert_eq!(ip.total_len(), 20 + 8 + 8 + 60);
        assert_eq!(&out[34..36], &50000u16.to_be_bytes());
        assert_eq!(&out[36..38], &4789u16.to_be_bytes());
        assert_eq!(&out[38..40], &(8u16 + 8 + 60).to_be_bytes());
        assert_eq!(&out[40..42], &[0, 0]);
        assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
    }

    fn outer(encapsulation: Encapsulation, id: u32) -> Outer {
        Outer::new(OuterHeaders {
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src_mac: [0x02, 0x70, 0x76, 18, 0, 1],
            src_ip: u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)),
            dst_ip: u32::from(std::net::Ipv4Addr::new(198, 18, 0, 2)),
            tunnel: TunnelId { encapsulation, id },
        })
    }

    #[test]
    fn geneve_outer_headers_are_exact() {
        let mut out = [0xeeu8; 51];
        assert!(outer(Encapsulation::Geneve, 0x123456).write(&mut out, 60, 50000));
        let ip = crate::wire::Ipv4Packet::new_unchecked(&out[14..34]);
        assert!(ip.verify_checksum());
        assert_eq!((ip.total_len(), ip.protocol().0), (20 + 8 + 8 + 60, 17));
        assert_eq!(&out[34..36], &50000u16.to_be_bytes());
        assert_eq!(&out[36..38], &6081u16.to_be_bytes());
        assert_eq!(&out[38..40], &(8u16 + 8 + 60).to_be_bytes());
        assert_eq!(&out[40..42], &[0, 0]);
        assert_eq!(&out[42..50], &[0, 0, 0x65, 0x58, 0x12, 0x34, 0x56, 0]);
        assert_eq!(out[50], 0xee, "nothing written past the headers");
    }

    #[test]
    fn gre_outer_headers_are_exact() {
        let mut out = [0xeeu8; 43];
        let o = outer(Encapsulation::Gre, 0x8765_4321);
        assert_eq!(o.overhead(), 42);
        assert!(o.write(&mut out, 60, 50000));
        let ip = crate::wire::Ipv4Packet::new_unchecked(&out[14..34]);
        assert!(ip.verify_checksum());
        assert!(ip.dont_frag());
        assert_eq!((ip.total_len(), ip.protocol().0), (20 + 8 + 60, 47));
        assert_eq!(&out[34..42], &[0x20, 0, 0x65, 0x58, 0x87, 0x65, 0x43, 0x21]);
        assert_eq!(out[42], 0xee, "nothing written past the headers");
        assert!(!o.write(&mut out[..41], 60, 1), "too short");
    }

    #[test]
    fn flow_hash_never_panics_on_short_frames() {
        let meta = Meta {
            ethertype: EtherType::IPV4.0,
            l3_offset: 14,
            ..Meta::default()
        };
        for len in 0..80 {
            let _ = flow_hash(&vec![0x45; len], &meta);
        }
    }
}
