//! Decapsulation on the tunnel endpoint's uplink, right after classification.
//!
//! The underlay is untagged, so classification has put a VXLAN packet on the physnet's
//! flat network (`Next::L2`) or found none (`no_flat_network`); both are looked at here.
//! A packet to `local_ip` is the endpoint's: VXLAN (UDP 4789) is decapsulated, ARP for
//! the address answered, anything else dropped. Every other frame goes on untouched.

use crate::drop::DropReason;
use crate::overlay::underlay::{self, ArpOutcome, Underlay};
use crate::overlay::Overlay;
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::wire::{vxlan, EtherType, EthernetFrame};

const UDP: usize = 8;
const PROTO_UDP: u8 = 17;

/// The decapsulation stage: a view of the worker's underlay state for one burst.
#[derive(Debug)]
pub struct VxlanDecap<'a> {
    /// Remote endpoints' MACs, learned from what they send.
    pub under: &'a mut Underlay,
}

impl BurstStage for VxlanDecap<'_> {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::VxlanDecap
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
        let mut confirmed = (0u32, u64::MAX);
        // Runs of one tunnel: its VNI and source are looked up once per run.
        let mut run = Run::default();
        let mut decapsulated = 0;
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
                        let src_mac = EthernetFrame::new_unchecked(data).src_addr_u64();
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
                        decapsulated += 1;
                        Next::L2
                    }
                    Err(reason) => Next::Drop(reason, Stage::VxlanDecap),
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
                        cx.pool.free(pkt.frame);
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
        if decapsulated > 0 {
            cx.counters.vxlan_decapsulated.add(decapsulated);
        }
        Outcome {
            packets: entered,
            produced,
        }
    }
}

/// The last (VNI, source) looked up and what it resolved to.
#[derive(Clone, Copy, Default)]
struct Run {
    vni: u32,
    src: u32,
    slot: u16,
    tunnel: PortId,
    /// Whether the fields above hold a lookup that succeeded.
    valid: bool,
}

/// A VXLAN packet for one of this host's networks, from one of its peers.
struct Decapped {
    /// Bytes in front of the inner frame.
    strip: usize,
    inner_len: usize,
    /// The inner frame's metadata.
    inner: Meta,
    slot: u16,
    tunnel: PortId,
    /// The sending endpoint, host order.
    outer_src: u32,
}

/// Checks the outer headers of a packet to `local_ip` and finds its network and tunnel.
#[inline]
fn decap(ov: &Overlay, data: &[u8], l3: usize, run: &mut Run) -> Result<Decapped, DropReason> {
    let ip = data.get(l3..).ok_or(DropReason::BadVxlan)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(DropReason::BadVxlan);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(DropReason::BadVxlan);
    }
    // A fragment (MF set or a non-zero offset) cannot be decapsulated alone.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DropReason::BadVxlan);
    }
    if ip[9] != PROTO_UDP {
        return Err(DropReason::NotVxlan);
    }
    let udp = &ip[ihl..total];
    if udp.len() < UDP {
        return Err(DropReason::BadVxlan);
    }
    if u16::from_be_bytes([udp[2], udp[3]]) != vxlan::VXLAN_PORT {
        return Err(DropReason::NotVxlan);
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP + vxlan::HEADER_LEN || udp_len > udp.len() {
        return Err(DropReason::BadVxlan);
    }
    // The UDP checksum is not checked: senders may leave it zero (RFC 7348), and the
    // inner frame's own checksums protect what matters.
    let vx =
        vxlan::VxlanPacket::new_checked(&udp[UDP..udp_len]).map_err(|_| DropReason::BadVxlan)?;
    let vni = vx.vni();
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    if !(run.valid && run.vni == vni && run.src == src) {
        run.valid = false;
        let slot = ov.network_of_vni(vni).ok_or(DropReason::UnknownVni)?;
        let tunnel = ov
            .peer(slot, src)
            .ok_or(DropReason::UnknownTunnelEndpoint)?;
        *run = Run {
            vni,
            src,
            slot,
            tunnel,
            valid: true,
        };
    }
    let (slot, tunnel) = (run.slot, run.tunnel);
    let inner = crate::classify::parse(vx.payload()).map_err(|_| DropReason::BadVxlan)?;
    if inner.flags & Meta::VLAN != 0 {
        return Err(DropReason::BadVxlan);
    }
    Ok(Decapped {
        strip: l3 + ihl + UDP + vxlan::HEADER_LEN,
        // What followed the UDP datagram (Ethernet padding) is not part of the inner frame.
        inner_len: udp_len - UDP - vxlan::HEADER_LEN,
        inner,
        slot,
        tunnel,
        outer_src: src,
    })
}
