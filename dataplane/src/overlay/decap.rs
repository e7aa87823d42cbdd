//! Decapsulation on the tunnel endpoint's uplink, right after classification.
//!
//! The underlay is untagged, so classification has put a tunnel packet on the physnet's
//! flat network (`Next::L2`) or found none (`no_flat_network`); both are looked at here.
//! A packet to `local_ip` is the endpoint's: VXLAN (UDP 4789), Geneve (UDP 6081) and GRE
//! (IPv4 protocol 47) are decapsulated, each by its own parser, ARP for the address
//! answered, anything else dropped. Every other frame goes on untouched.

use crate::drop::DropReason;
use crate::ident::{NetworkSlot, PackedMac};
use crate::overlay::underlay::{self, ArpOutcome, Underlay};
use crate::overlay::{Encapsulation, Overlay};
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::wire::{checksum, geneve, gre, vxlan, EtherType, EthernetFrame};

const UDP: usize = 8;
const PROTO_UDP: u8 = 17;

/// The decapsulation stage: a view of the worker's underlay state for one burst.
#[derive(Debug)]
pub struct TunnelDecap<'a> {
    /// Remote endpoints' MACs, learned from what they send.
    pub under: &'a mut Underlay,
}

impl BurstStage for TunnelDecap<'_> {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::TunnelDecap
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::L2 | Pending::DONE
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let ov = cx.snap.overlay();
        let mut entered = 0;
        let mut produced = Pending::L2 | Pending::DONE;
        // A peer's MAC is confirmed once per burst and per change, not for every packet.
        let mut confirmed = (0u32, PackedMac::NONE);
        // Runs of one tunnel: its VNI and source are looked up once per run.
        let mut run = Run::default();

        for pkt in pkts.iter_mut() {
            let candidate = matches!(
                pkt.meta.next,
                Next::L2 | Next::Drop(DropReason::NoFlatNetwork, Stage::Classify)
            ) && pkt.meta.flags & Meta::VLAN == 0;
            if !candidate {
                continue;
            }
            let ethertype = EtherType(pkt.meta.ethertype);
            let l3 = usize::from(pkt.meta.l3_offset);
            if ethertype == EtherType::IPV4 {
                let data = cx.pool.data(pkt);
                // The destination address decides whose packet it is.
                let Some(dst) = data.get(l3 + 16..l3 + 20) else {
                    continue;
                };
                if u32::from_be_bytes([dst[0], dst[1], dst[2], dst[3]]) != ov.local_ip() {
                    continue;
                }
                entered += 1;
                pkt.meta.next = match decap(ov, data, l3, &mut run) {
                    Ok(d) => {
                        let src_mac = EthernetFrame::new_unchecked(data).src_mac();
                        if confirmed != (d.outer_src, src_mac) {
                            confirmed = (d.outer_src, src_mac);
                            if !cx.dry_run {
                                self.under.learn_peer(d.outer_src, src_mac, cx.now_secs);
                            }
                        }
                        pkt.offset += d.strip as u16;
                        pkt.len = d.inner_len as u16;
                        pkt.in_port = d.tunnel;
                        pkt.meta = Meta {
                            network: d.slot,
                            ..d.inner
                        };
                        run.packets += 1;
                        Next::L2
                    }
                    Err(reason) => Next::Drop(reason, Stage::TunnelDecap),
                };
            } else if ethertype == EtherType::ARP {
                let now = cx.now_secs;
                let data = cx.pool.data_mut(pkt);
                match underlay::arp(ov, self.under, data, l3, now, cx.dry_run) {
                    ArpOutcome::NotOurs => continue,
                    ArpOutcome::Reply => {
                        pkt.meta.next = Next::Output(ov.uplink());
                        pkt.meta.flags &= !Meta::MULTICAST;
                        produced |= Pending::SEND;
                    }
                    ArpOutcome::Consumed => {
                        cx.pool.free_packet(pkt);
                        cx.counters.consumed.inc();
                        pkt.meta.next = Next::Consumed;
                    }
                    ArpOutcome::Bad => {
                        // Not ours to judge unless it was for the endpoint; leave it.
                        continue;
                    }
                }
                entered += 1;
            }
        }
        run.flush();
        for (kind, n) in Encapsulation::ALL.into_iter().zip(run.decapsulated) {
            if n > 0 {
                kind.decapsulated(cx.counters).add(n);
            }
        }
        Outcome {
            packets: entered,
            produced,
        }
    }
}

/// The last (kind, VNI or key, source) looked up and what it resolved to, with the
/// packets decapsulated in it; so the per-kind counts are sorted out once per run.
#[derive(Clone, Copy)]
struct Run {
    /// [`Encapsulation::key`] of the kind and identifier; `u64::MAX` (no key) before the
    /// first lookup that succeeded.
    key: u64,
    kind: Encapsulation,
    src: u32,
    slot: NetworkSlot,
    tunnel: PortId,
    /// Packets decapsulated in this run, not yet in `decapsulated`.
    packets: u64,
    /// Packets decapsulated per kind (index: `Encapsulation as usize`) in earlier runs.
    decapsulated: [u64; Encapsulation::ALL.len()],
}

impl Default for Run {
    fn default() -> Self {
        Run {
            key: u64::MAX,
            kind: Encapsulation::Vxlan,
            src: 0,
            slot: NetworkSlot::default(),
            tunnel: PortId::default(),
            packets: 0,
            decapsulated: [0; Encapsulation::ALL.len()],
        }
    }
}

impl Run {
    /// Moves the run's packets to its kind's count.
    #[cold]
    fn flush(&mut self) {
        self.decapsulated[self.kind as usize] += self.packets;
        self.packets = 0;
    }
}

/// A tunnel packet for one of this host's networks, from one of its peers.
struct Decapped {
    /// Bytes in front of the inner frame.
    strip: usize,
    inner_len: usize,
    /// The inner frame's metadata.
    inner: Meta,
    slot: NetworkSlot,
    tunnel: PortId,
    /// The sending endpoint, host order.
    outer_src: u32,
}

/// What a per-kind parser found after the outer IPv4 header.
struct TunnelHeader<'a> {
    kind: Encapsulation,
    /// VNI or key.
    id: u32,
    /// Offset of the inner frame from the start of the IPv4 payload.
    inner_at: usize,
    /// The inner frame (what follows the tunnel header, to the end of the datagram).
    inner: &'a [u8],
}

/// Checks the outer headers of a packet to `local_ip` and finds its network and tunnel.
#[inline]
fn decap(ov: &Overlay, data: &[u8], l3: usize, run: &mut Run) -> Result<Decapped, DropReason> {
    let ip = data.get(l3..).ok_or(DropReason::BadOuterIpv4)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(DropReason::BadOuterIpv4);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(DropReason::BadOuterIpv4);
    }
    // The outer header's checksum, as any IPv4 receiver checks it (Linux's ip_rcv, Open
    // vSwitch's tunnel receive): its source address names the peer.
    let header_ok = match <&[u8; 20]>::try_from(&ip[..ihl]) {
        Ok(h) => checksum::sums_to_ones20(h),
        Err(_) => header_with_options_ok(&ip[..ihl]),
    };
    if !header_ok {
        return Err(DropReason::BadOuterIpv4);
    }
    // A fragment (MF set or a non-zero offset) cannot be decapsulated alone.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DropReason::BadOuterIpv4);
    }
    // What followed the IPv4 datagram (Ethernet padding) is not part of the inner frame.
    let payload = &ip[ihl..total];
    let hdr = if ip[9] == PROTO_UDP {
        udp_tunnel(payload)?
    } else if ip[9] == gre::IP_PROTOCOL {
        gre_tunnel(payload)?
    } else {
        return Err(DropReason::NotVxlan);
    };
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let key = hdr.kind.key(hdr.id);
    if !(run.key == key && run.src == src) {
        run.flush();
        run.key = u64::MAX;
        let slot = ov
            .network_of(hdr.kind, hdr.id)
            .ok_or(DropReason::UnknownVni)?;
        let tunnel = ov
            .peer(slot, src)
            .ok_or(DropReason::UnknownTunnelEndpoint)?;
        *run = Run {
            key,
            kind: hdr.kind,
            src,
            slot,
            tunnel,
            ..*run
        };
    }
    let (slot, tunnel) = (run.slot, run.tunnel);
    let bad = || match hdr.kind {
        Encapsulation::Vxlan => DropReason::BadVxlan,
        Encapsulation::Geneve => DropReason::BadGeneve,
        Encapsulation::Gre => DropReason::BadGre,
    };
    let inner = crate::classify::parse(hdr.inner).map_err(|_| bad())?;
    if inner.flags & Meta::VLAN != 0 {
        return Err(bad());
    }
    Ok(Decapped {
        strip: l3 + ihl + hdr.inner_at,
        inner_len: hdr.inner.len(),
        inner,
        slot,
        tunnel,
        outer_src: src,
    })
}

/// Whether an outer IPv4 header with options sums to all ones: rare, out of line.
#[cold]
#[inline(never)]
fn header_with_options_ok(header: &[u8]) -> bool {
    checksum::sum(header) == 0xffff
}

/// VXLAN or Geneve in the UDP datagram `udp`.
#[inline(always)]
fn udp_tunnel(udp: &[u8]) -> Result<TunnelHeader<'_>, DropReason> {
    let Some(h) = udp.first_chunk::<UDP>() else {
        return Err(DropReason::BadOuterIpv4);
    };
    let dport = u16::from_be_bytes([h[2], h[3]]);
    let udp_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    // The UDP checksum is not checked: senders may leave it zero (RFC 7348, RFC 8926), and
    // the inner frame's own checksums protect what matters.
    if dport == vxlan::VXLAN_PORT {
        let body = udp.get(UDP..udp_len).ok_or(DropReason::BadVxlan)?;
        let vx = vxlan::VxlanPacket::new_checked(body).map_err(|_| DropReason::BadVxlan)?;
        Ok(TunnelHeader {
            kind: Encapsulation::Vxlan,
            id: vx.vni(),
            inner_at: UDP + vxlan::HEADER_LEN,
            inner: vx.into_inner().get(vxlan::HEADER_LEN..).unwrap_or_default(),
        })
    } else if dport == geneve::GENEVE_PORT {
        let body = udp.get(UDP..udp_len).ok_or(DropReason::BadGeneve)?;
        let gn = geneve::GenevePacket::new_checked(body).map_err(|_| DropReason::BadGeneve)?;
        if gn.flags() & geneve::FLAG_OAM != 0 {
            return Err(DropReason::GeneveControl);
        }
        match gn.has_critical_option() {
            Ok(false) => {}
            Ok(true) => return Err(DropReason::GeneveCriticalOption),
            Err(_) => return Err(DropReason::BadGeneve),
        }
        if gn.protocol() != geneve::PROTO_ETHERNET {
            return Err(DropReason::TunnelNotEthernet);
        }
        let hlen = gn.header_len();
        Ok(TunnelHeader {
            kind: Encapsulation::Geneve,
            id: gn.vni(),
            inner_at: UDP + hlen,
            inner: body.get(hlen..).unwrap_or_default(),
        })
    } else {
        Err(DropReason::NotVxlan)
    }
}

/// GRE with a key, in the IPv4 payload `payload`.
#[inline(always)]
fn gre_tunnel(payload: &[u8]) -> Result<TunnelHeader<'_>, DropReason> {
    let g = gre::GrePacket::new_checked(payload).map_err(|_| DropReason::BadGre)?;
    if !g.verify_checksum() {
        return Err(DropReason::GreChecksum);
    }
    if g.protocol() != gre::PROTO_ETHERNET {
        return Err(DropReason::TunnelNotEthernet);
    }
    // A sequence number is skipped: no reordering, as Linux's and Open vSwitch's GRE
    // receivers by default.
    let key = g.key().ok_or(DropReason::BadGre)?;
    let hlen = g.header_len();
    Ok(TunnelHeader {
        kind: Encapsulation::Gre,
        id: key,
        inner_at: hlen,
        inner: payload.get(hlen..).unwrap_or_default(),
    })
}
