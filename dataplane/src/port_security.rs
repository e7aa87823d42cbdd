//! Port security: a VM port sends only from the addresses Neutron gave it.
//!
//! What Neutron's firewall drivers enforce for a port with `port_security_enabled` (the
//! OVS firewall's base flows, the iptables driver's `sg-fallback`/spoof chains and
//! ebtables ARP rules), checked on every frame the port sends, before L2 learns from it:
//!
//! - the source MAC is the port's `mac_address` or an `allowed_address_pairs` MAC;
//! - an IPv4 source is one of the port's fixed IPs or an address pair (a CIDR pair covers
//!   its whole prefix), *for the MAC the frame comes from*. The exceptions are DHCP
//!   clients (UDP 68 → 67): `0.0.0.0 → 255.255.255.255`, a client's first message, as
//!   Neutron allows it; and, on a network with a DHCP server, a client talking to that
//!   server (broadcast or to one of its addresses) from any source, because a client whose
//!   fixed IP was changed renews from its old address and must get the NAK that moves it
//!   on (Neutron's OVS firewall lets DHCP client traffic out whatever its source for the
//!   same reason; here such a broadcast reaches the server's punt ring, not the other VMs);
//! - ARP: the sender hardware address is the frame's source MAC and the sender IP belongs
//!   to it as above (or is `0.0.0.0`, an RFC 5227 probe), so a VM can neither answer for
//!   the gateway nor announce another's address in a gratuitous ARP;
//! - IPv6: the source is the link-local address of an allowed MAC (modified EUI-64), one
//!   of the port's IPv6 addresses (allowed address pairs with an IPv6 address or prefix)
//!   for that MAC, or `::` for the messages a host sends before it has an address
//!   (neighbour solicitation for duplicate address detection, MLD reports);
//! - neighbour discovery, as ARP: a neighbour advertisement's target, and a duplicate
//!   address detection probe's, is an address the port owns for the frame's MAC, and a
//!   link-layer address option (source in a solicitation, target in an advertisement) is
//!   the frame's source MAC, so a VM can neither answer for the router nor another VM nor
//!   steer their traffic to another MAC (`spoofed_nd`); a solicitation for someone
//!   else's address is the normal way to ask and passes;
//! - no DHCP server replies (UDP 67 → 68), DHCPv6 server replies (547 → 546), router
//!   advertisements or redirects from a VM;
//! - only IPv4, ARP and IPv6 frames (Neutron's OVS firewall drops other EtherTypes from a
//!   port with port security unless listed in `permitted_ethertypes`).
//!
//! Each refusal is a drop with its own reason. The check is per burst: a burst comes from
//! one port, so its policy is looked up once, and the last (MAC, IPv4 source) found to be
//! the port's own is remembered, so that the rest of a run of one flow costs a few reads
//! and comparisons per frame rather than the full check.

use crate::ident::PackedMac;
use core::net::{Ipv4Addr, Ipv6Addr};

use crate::buf::FramePool;
use crate::drop::DropReason;
use crate::packet::{Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::snapshot::PortRole;
use crate::wire::ipv6::{link_local_from_mac, Ipv6Packet, UpperLayer, ICMPV6};
use crate::wire::{ArpPacket, EtherType, EthernetFrame, IpProtocol, Ipv4Packet, UdpPacket};

/// DHCPv4 server and client ports.
const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
/// DHCPv6 server and client ports.
const DHCPV6_SERVER_PORT: u16 = 547;
const DHCPV6_CLIENT_PORT: u16 = 546;
/// ICMPv6 messages only a router sends: router advertisement and redirect.
const ICMPV6_ROUTER_ADVERTISEMENT: u8 = 134;
const ICMPV6_REDIRECT: u8 = 137;
/// Neighbour discovery: solicitation and advertisement.
const ICMPV6_NEIGHBOR_SOLICITATION: u8 = 135;
const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
/// ICMPv6 messages a host sends from `::` before it has an address: MLD report (131),
/// neighbour solicitation for duplicate address detection (135), MLDv2 report (143).
const ICMPV6_FROM_UNSPECIFIED: [u8; 3] = [131, 135, 143];

/// An IPv4 source a port may use: addresses within `addr/len`, sent from `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Source {
    /// The MAC that may send from these addresses.
    pub mac: PackedMac,
    /// The network address, host byte order.
    pub addr: u32,
    /// The prefix's mask, host byte order.
    pub mask: u32,
}

impl Ipv4Source {
    /// `addr/prefix_len` (bits outside the prefix are ignored) for `mac`.
    pub fn new(mac: [u8; 6], addr: Ipv4Addr, prefix_len: u8) -> Self {
        let mask = crate::lpm::prefix_mask(prefix_len);
        Ipv4Source {
            mac: PackedMac::from(mac),
            addr: u32::from(addr) & mask,
            mask,
        }
    }

    #[inline]
    fn allows(&self, mac: PackedMac, ip: u32) -> bool {
        self.mac == mac && ip & self.mask == self.addr
    }
}

/// An IPv6 source a port may use: addresses within `addr/len`, sent from `mac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Source {
    /// The MAC that may send from these addresses.
    pub mac: PackedMac,
    /// The network address.
    pub addr: u128,
    /// The prefix length, 0..=128.
    pub len: u8,
}

impl Ipv6Source {
    /// `addr/prefix_len` (bits outside the prefix are ignored) for `mac`.
    pub fn new(mac: [u8; 6], addr: Ipv6Addr, prefix_len: u8) -> Self {
        use crate::secgroup::SgAddr;
        let len = prefix_len.min(128);
        Ipv6Source {
            mac: PackedMac::from(mac),
            addr: u128::from(addr).masked(len),
            len,
        }
    }

    fn allows(&self, mac: PackedMac, ip: u128) -> bool {
        use crate::secgroup::SgAddr;
        self.mac == mac && ip.masked(self.len) == self.addr
    }
}

/// The compiled port-security policy of one VM port. Small: Neutron allows ten address
/// pairs per port by default, so linear scans beat any index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSecurity {
    /// MACs the port may send from; its own first.
    macs: Box<[PackedMac]>,
    /// Link-local IPv6 address of each MAC of `macs`, same order.
    link_locals: Box<[Ipv6Addr]>,
    /// IPv4 sources: fixed IPs as /32, then address pairs.
    ipv4: Box<[Ipv4Source]>,
    /// IPv6 sources besides the link-local addresses.
    ipv6: Box<[Ipv6Source]>,
}

impl PortSecurity {
    /// The policy of a port owning `macs` (its own first) and sending from `ipv4`.
    pub fn new(macs: &[[u8; 6]], ipv4: &[Ipv4Source]) -> Self {
        PortSecurity {
            macs: macs.iter().map(|&m| PackedMac::from(m)).collect(),
            link_locals: macs.iter().map(|&m| link_local_from_mac(m)).collect(),
            ipv4: ipv4.into(),
            ipv6: Box::default(),
        }
    }

    /// This policy with the IPv6 sources `ipv6` (besides the link-local addresses).
    pub fn with_ipv6(mut self, ipv6: &[Ipv6Source]) -> Self {
        self.ipv6 = ipv6.into();
        self
    }

    /// The IPv6 sources the port may use besides its link-local addresses.
    pub fn ipv6_sources(&self) -> &[Ipv6Source] {
        &self.ipv6
    }

    /// Whether `mac` owns IPv6 address `ip`: its link-local address or an IPv6 source.
    fn owns_ipv6(&self, mac: PackedMac, ip: Ipv6Addr) -> bool {
        self.allows_link_local(mac, ip) || {
            let ip = u128::from(ip);
            self.ipv6.iter().any(|s| s.allows(mac, ip))
        }
    }

    /// The MACs the port may send from, packed.
    pub fn macs(&self) -> &[PackedMac] {
        &self.macs
    }

    /// The IPv4 sources the port may use.
    pub fn ipv4_sources(&self) -> &[Ipv4Source] {
        &self.ipv4
    }

    #[inline]
    fn allows_mac(&self, mac: PackedMac) -> bool {
        self.macs.contains(&mac)
    }

    /// Whether `mac` may send from `ip`; never from 0.0.0.0, which no prefix gives.
    #[inline]
    fn allows_ipv4(&self, mac: PackedMac, ip: u32) -> bool {
        ip != 0 && self.ipv4.iter().any(|s| s.allows(mac, ip))
    }

    fn allows_link_local(&self, mac: PackedMac, ip: Ipv6Addr) -> bool {
        self.macs
            .iter()
            .zip(self.link_locals.iter())
            .any(|(&m, &ll)| m == mac && ll == ip)
    }

    /// What becomes of one frame the port sent (`data`, its L3 header at `l3_offset`,
    /// EtherType `ethertype` after any tag) on a network whose DHCP server answers at
    /// `dhcp_servers` (host byte order): `None` when it may pass.
    pub fn check(
        &self,
        data: &[u8],
        ethertype: u16,
        l3_offset: usize,
        dhcp_servers: &[u32],
    ) -> Option<DropReason> {
        self.check_within(data, 0, ethertype, l3_offset, dhcp_servers)
    }

    /// [`PortSecurity::check`] for a packet with `beyond` more bytes after `data` (the
    /// rest of a chain; see `crate::buf`).
    pub fn check_within(
        &self,
        data: &[u8],
        beyond: usize,
        ethertype: u16,
        l3_offset: usize,
        dhcp_servers: &[u32],
    ) -> Option<DropReason> {
        // Classification checked that the frame holds a whole Ethernet header.
        let src = EthernetFrame::new_unchecked(data).src_mac();
        if !self.allows_mac(src) {
            return Some(DropReason::SpoofedMac);
        }
        let l3 = data.get(l3_offset..).unwrap_or_default();
        match EtherType(ethertype) {
            EtherType::IPV4 => self.check_ipv4(src, l3, beyond, dhcp_servers),
            EtherType::ARP => self.check_arp(src, l3),
            EtherType::IPV6 => self.check_ipv6(src, l3, beyond),
            _ => Some(DropReason::EthertypeNotPermitted),
        }
    }

    fn check_ipv4(
        &self,
        src_mac: PackedMac,
        l3: &[u8],
        beyond: usize,
        dhcp_servers: &[u32],
    ) -> Option<DropReason> {
        let Ok(ip) = Ipv4Packet::new_checked_within(l3, beyond) else {
            return Some(DropReason::BadIpv4Header);
        };
        let src = u32::from(ip.src_addr());
        let udp = (ip.protocol() == IpProtocol::UDP && ip.frag_offset() == 0)
            .then(|| UdpPacket::new_checked(ip.payload()).ok())
            .flatten()
            .map(|u| (u.src_port(), u.dst_port()));
        if udp == Some((DHCP_CLIENT_PORT, DHCP_SERVER_PORT)) {
            let dst = ip.dst_addr();
            let broadcast = dst == Ipv4Addr::BROADCAST;
            let first_message = src == 0 && broadcast;
            let to_server =
                !dhcp_servers.is_empty() && (broadcast || dhcp_servers.contains(&u32::from(dst)));
            if first_message || to_server {
                return None;
            }
        }
        if !self.allows_ipv4(src_mac, src) {
            return Some(DropReason::SpoofedIp);
        }
        (udp == Some((DHCP_SERVER_PORT, DHCP_CLIENT_PORT))).then_some(DropReason::DhcpServerFromVm)
    }

    /// Neighbour solicitation or advertisement `icmp` (type `ty`, from `::` when
    /// `unspecified`) sent from `src_mac`: see the module documentation.
    fn check_nd(
        &self,
        src_mac: PackedMac,
        ty: u8,
        unspecified: bool,
        icmp: &[u8],
    ) -> Option<DropReason> {
        // Type, code, checksum, flags or reserved (8), target (16), then options.
        let Some(target) = icmp.get(8..24) else {
            return Some(DropReason::BadIpv6Header);
        };
        let mut t = [0u8; 16];
        t.copy_from_slice(target);
        let target = Ipv6Addr::from(t);
        let claims = ty == ICMPV6_NEIGHBOR_ADVERTISEMENT || unspecified;
        if claims && !self.owns_ipv6(src_mac, target) {
            return Some(DropReason::SpoofedNd);
        }
        // Link-layer address options (source: 1, target: 2), length in 8-octet units.
        let mut opts = &icmp[24..];
        while let [kind, len, ..] = *opts {
            let len = usize::from(len) * 8;
            if len == 0 || len > opts.len() {
                return Some(DropReason::BadIpv6Header);
            }
            if (kind == 1 || kind == 2) && len >= 8 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&opts[2..8]);
                if PackedMac::from(m) != src_mac {
                    return Some(DropReason::SpoofedNd);
                }
            }
            opts = &opts[len..];
        }
        None
    }

    fn check_arp(&self, src_mac: PackedMac, l3: &[u8]) -> Option<DropReason> {
        let arp = match ArpPacket::new_checked(l3) {
            Ok(arp) if arp.is_ethernet_ipv4() => arp,
            _ => return Some(DropReason::BadArp),
        };
        if PackedMac::new(arp.sender_hardware_addr()) != src_mac {
            return Some(DropReason::SpoofedArp);
        }
        let spa = u32::from(arp.sender_protocol_addr());
        // 0.0.0.0 is an address probe (RFC 5227), which claims nothing.
        (spa != 0 && !self.allows_ipv4(src_mac, spa)).then_some(DropReason::SpoofedArp)
    }

    fn check_ipv6(&self, src_mac: PackedMac, l3: &[u8], beyond: usize) -> Option<DropReason> {
        let Ok(ip) = Ipv6Packet::new_checked_within(l3, beyond) else {
            return Some(DropReason::BadIpv6Header);
        };
        let upper = match ip.upper_layer() {
            Ok(UpperLayer::Header(proto, at)) => Some((proto, ip.payload().get(at..))),
            Ok(UpperLayer::LaterFragment(_)) => None,
            Err(_) => return Some(DropReason::BadIpv6Header),
        };
        let icmp_type = match upper {
            Some((ICMPV6, h)) => match h.and_then(|h| h.first()) {
                Some(&t) => Some(t),
                None => return Some(DropReason::BadIpv6Header),
            },
            _ => None,
        };
        let src = ip.src_addr();
        let allowed = if src.is_unspecified() {
            icmp_type.is_some_and(|t| ICMPV6_FROM_UNSPECIFIED.contains(&t))
        } else {
            self.owns_ipv6(src_mac, src)
        };
        if !allowed {
            return Some(DropReason::SpoofedIp);
        }
        if let (
            Some(t @ (ICMPV6_NEIGHBOR_SOLICITATION | ICMPV6_NEIGHBOR_ADVERTISEMENT)),
            Some((_, Some(h))),
        ) = (icmp_type, upper)
        {
            return self.check_nd(src_mac, t, src.is_unspecified(), h);
        }
        if matches!(
            icmp_type,
            Some(ICMPV6_ROUTER_ADVERTISEMENT | ICMPV6_REDIRECT)
        ) {
            return Some(DropReason::RouterAdvertisementFromVm);
        }
        match upper {
            Some((IpProtocol::UDP, Some(h))) if h.len() >= 4 => {
                let ports = (
                    u16::from_be_bytes([h[0], h[1]]),
                    u16::from_be_bytes([h[2], h[3]]),
                );
                (ports == (DHCPV6_SERVER_PORT, DHCPV6_CLIENT_PORT))
                    .then_some(DropReason::DhcpServerFromVm)
            }
            _ => None,
        }
    }
}

/// The port-security stage: runs right after classification for the VM ports the
/// snapshot gives a policy (and only for them: see [`crate::snapshot::Snapshot::port_stages`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PortSecurityStage;

impl BurstStage for PortSecurityStage {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::PortSecurity
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::L2
    }

    #[inline]
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let Some(policy) = cx.snap.port_security(cx.in_port) else {
            return Outcome {
                packets: 0,
                produced: Pending::L2,
            };
        };
        // Port security is only ever given to VM ports, each on one network.
        let dhcp_servers = match cx.role {
            PortRole::Access { network, .. } => cx.snap.dhcp_addresses(network),
            _ => &[],
        };
        let checked = pkts.iter().filter(|p| p.meta.next == Next::L2).count() as u32;
        let refused = check_burst(policy, dhcp_servers, cx.pool, pkts);
        Outcome {
            packets: checked,
            produced: if refused > 0 {
                Pending::L2 | Pending::DONE
            } else {
                Pending::L2
            },
        }
    }
}

/// Checks every packet of a burst that `policy`'s port sent and whose next step is L2,
/// on a network whose DHCP server answers at `dhcp_servers`; a refused one is dropped
/// with its reason. Returns how many were refused.
#[inline]
pub fn check_burst(
    policy: &PortSecurity,
    dhcp_servers: &[u32],
    pool: &FramePool,
    pkts: &mut [Packet],
) -> u64 {
    let mut refused = 0;
    // (MAC, IPv4 source) of the last frame whose source the port owns; no key equals
    // `NONE` (no frame is from `PackedMac::NONE`).
    const NONE: (PackedMac, u32) = (PackedMac::NONE, 0);
    let mut owned = NONE;
    for pkt in pkts.iter_mut() {
        if pkt.meta.next != Next::L2 {
            continue;
        }
        let data = pool.data(pkt);
        let beyond = pool.tail_len(pkt);
        let l3 = usize::from(pkt.meta.l3_offset);
        let ipv4 = (pkt.meta.ethertype == EtherType::IPV4.0)
            .then(|| frame_source(data, beyond, l3))
            .flatten();
        if let Some(source) = ipv4 {
            if source.key() == owned && !source.dhcp_ports {
                continue;
            }
        }
        match policy.check_within(data, beyond, pkt.meta.ethertype, l3, dhcp_servers) {
            Some(reason) => {
                pkt.meta.next = Next::Drop(reason, Stage::PortSecurity);
                refused += 1;
            }
            None => {
                if let Some(s) = ipv4.filter(|s| policy.allows_ipv4(s.mac, s.ip)) {
                    owned = s.key();
                }
            }
        }
    }
    refused
}

/// The source of an IPv4 frame as the fast path of [`check_burst`] reads it.
#[derive(Clone, Copy, Debug)]
struct FrameSource {
    mac: PackedMac,
    ip: u32,
    /// UDP from or to port 67 or 68 (DHCP): its verdict depends on more than the source.
    dhcp_ports: bool,
}

impl FrameSource {
    fn key(&self) -> (PackedMac, u32) {
        (self.mac, self.ip)
    }
}

/// The source MAC and address of the IPv4 packet at `l3` in `frame` (with `beyond` more
/// bytes in a chain), if its header is one [`PortSecurity::check`] accepts as well-formed
/// (the same conditions as [`Ipv4Packet::check_len_within`]), read without building views.
#[inline]
fn frame_source(frame: &[u8], beyond: usize, l3: usize) -> Option<FrameSource> {
    let h = frame.get(l3..l3.checked_add(20)?)?;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if h[0] >> 4 != 4 || header_len < 20 || total < header_len || l3 + total > frame.len() + beyond
    {
        return None;
    }
    let later_fragment = u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0;
    let dhcp_ports = h[9] == IpProtocol::UDP.0 && !later_fragment && {
        let ports = frame.get(l3 + header_len..l3 + header_len + 4);
        ports.is_none_or(|p| {
            let (s, d) = (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            );
            [s, d]
                .iter()
                .any(|&x| x == DHCP_SERVER_PORT || x == DHCP_CLIENT_PORT)
        })
    };
    Some(FrameSource {
        mac: EthernetFrame::new_unchecked(frame).src_mac(),
        ip: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        dhcp_ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Repr;

    const OWN: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
    const PAIR: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
    const OTHER: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 9];

    fn policy() -> PortSecurity {
        PortSecurity::new(
            &[OWN, PAIR],
            &[
                Ipv4Source::new(OWN, Ipv4Addr::new(198, 18, 1, 10), 32),
                Ipv4Source::new(PAIR, Ipv4Addr::new(198, 18, 2, 0), 24),
            ],
        )
    }

    fn eth(src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
        let repr = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: IpProtocol(proto),
            payload_len: payload.len(),
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 1,
            dont_frag: false,
            more_frags: false,
            frag_offset: 0,
        };
        let mut b = vec![0; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        b[repr.buffer_len() - payload.len()..].copy_from_slice(payload);
        b
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut u = vec![0; 8];
        u[0..2].copy_from_slice(&sport.to_be_bytes());
        u[2..4].copy_from_slice(&dport.to_be_bytes());
        u[4..6].copy_from_slice(&8u16.to_be_bytes());
        u
    }

    fn arp(sha: [u8; 6], spa: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend_from_slice(&sha);
        a.extend_from_slice(&spa.octets());
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&[198, 18, 1, 1]);
        a
    }

    fn ipv6(src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 255]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(payload);
        p
    }

    /// The network's DHCP server.
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);

    fn verdict(frame: &[u8]) -> Option<DropReason> {
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        policy().check(frame, ethertype, 14, &[u32::from(SERVER)])
    }

    const V4: u16 = 0x0800;
    const ARP: u16 = 0x0806;
    const V6: u16 = 0x86dd;
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

    #[test]
    fn own_and_pair_sources_pass() {
        let own = ipv4(Ipv4Addr::new(198, 18, 1, 10), ROUTER, 6, &[0; 20]);
        assert_eq!(verdict(&eth(OWN, V4, &own)), None);
        let pair = ipv4(Ipv4Addr::new(198, 18, 2, 77), ROUTER, 1, &[8, 0, 0, 0]);
        assert_eq!(verdict(&eth(PAIR, V4, &pair)), None);
        assert_eq!(
            verdict(&eth(OWN, ARP, &arp(OWN, Ipv4Addr::new(198, 18, 1, 10)))),
            None
        );
        assert_eq!(
            verdict(&eth(PAIR, ARP, &arp(PAIR, Ipv4Addr::new(198, 18, 2, 5)))),
            None
        );
        // An address probe claims nothing.
        assert_eq!(
            verdict(&eth(OWN, ARP, &arp(OWN, Ipv4Addr::UNSPECIFIED))),
            None
        );
    }

    #[test]
    fn foreign_mac_is_refused_whatever_it_carries() {
        let own_ip = ipv4(Ipv4Addr::new(198, 18, 1, 10), ROUTER, 6, &[0; 20]);
        assert_eq!(
            verdict(&eth(OTHER, V4, &own_ip)),
            Some(DropReason::SpoofedMac)
        );
        assert_eq!(
            verdict(&eth(OTHER, 0x88b5, &[0; 46])),
            Some(DropReason::SpoofedMac)
        );
    }

    #[test]
    fn ipv4_source_must_belong_to_the_sending_mac() {
        let other_ip = ipv4(Ipv4Addr::new(198, 18, 1, 11), ROUTER, 6, &[0; 20]);
        assert_eq!(
            verdict(&eth(OWN, V4, &other_ip)),
            Some(DropReason::SpoofedIp)
        );
        // The pair's prefix is the pair MAC's, not the port MAC's.
        let pair_ip = ipv4(Ipv4Addr::new(198, 18, 2, 77), ROUTER, 6, &[0; 20]);
        assert_eq!(
            verdict(&eth(OWN, V4, &pair_ip)),
            Some(DropReason::SpoofedIp)
        );
        let own_ip = ipv4(Ipv4Addr::new(198, 18, 1, 10), ROUTER, 6, &[0; 20]);
        assert_eq!(
            verdict(&eth(PAIR, V4, &own_ip)),
            Some(DropReason::SpoofedIp)
        );
    }

    #[test]
    fn dhcp_client_to_the_server_from_any_source() {
        let bcast = Ipv4Addr::BROADCAST;
        let discover = ipv4(Ipv4Addr::UNSPECIFIED, bcast, 17, &udp(68, 67));
        assert_eq!(verdict(&eth(OWN, V4, &discover)), None);
        // A renewal from an address the port no longer has gets through to the server
        // (which NAKs it), unicast or broadcast.
        let old = Ipv4Addr::new(198, 18, 1, 99);
        let renew = ipv4(old, SERVER, 17, &udp(68, 67));
        assert_eq!(verdict(&eth(OWN, V4, &renew)), None);
        let rebind = ipv4(old, bcast, 17, &udp(68, 67));
        assert_eq!(verdict(&eth(OWN, V4, &rebind)), None);
        // Not to anyone else, and never from another MAC.
        let to_unicast = ipv4(Ipv4Addr::UNSPECIFIED, ROUTER, 17, &udp(68, 67));
        assert_eq!(
            verdict(&eth(OWN, V4, &to_unicast)),
            Some(DropReason::SpoofedIp)
        );
        let to_other = ipv4(old, ROUTER, 17, &udp(68, 67));
        assert_eq!(
            verdict(&eth(OWN, V4, &to_other)),
            Some(DropReason::SpoofedIp)
        );
        assert_eq!(
            verdict(&eth(OTHER, V4, &renew)),
            Some(DropReason::SpoofedMac)
        );
        // On a network without a DHCP server such a broadcast would flood to the other
        // VMs: only a client's first message (from 0.0.0.0) passes there.
        let check = |f: &[u8]| policy().check(f, V4, 14, &[]);
        assert_eq!(check(&eth(OWN, V4, &discover)), None);
        assert_eq!(check(&eth(OWN, V4, &rebind)), Some(DropReason::SpoofedIp));
        let other_ports = ipv4(Ipv4Addr::UNSPECIFIED, bcast, 17, &udp(1000, 67));
        assert_eq!(
            verdict(&eth(OWN, V4, &other_ports)),
            Some(DropReason::SpoofedIp)
        );
        let tcp = ipv4(Ipv4Addr::UNSPECIFIED, bcast, 6, &[0; 20]);
        assert_eq!(verdict(&eth(OWN, V4, &tcp)), Some(DropReason::SpoofedIp));
    }

    #[test]
    fn dhcp_server_replies_from_a_vm_are_refused() {
        let offer = ipv4(
            Ipv4Addr::new(198, 18, 1, 10),
            Ipv4Addr::BROADCAST,
            17,
            &udp(67, 68),
        );
        assert_eq!(
            verdict(&eth(OWN, V4, &offer)),
            Some(DropReason::DhcpServerFromVm)
        );
        let v6 = ipv6(link_local_from_mac(OWN), 17, &udp(547, 546));
        assert_eq!(
            verdict(&eth(OWN, V6, &v6)),
            Some(DropReason::DhcpServerFromVm)
        );
    }

    #[test]
    fn arp_must_name_the_frames_mac_and_an_owned_address() {
        let gateway = arp(OWN, ROUTER);
        assert_eq!(
            verdict(&eth(OWN, ARP, &gateway)),
            Some(DropReason::SpoofedArp)
        );
        let other_sha = arp(OTHER, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(
            verdict(&eth(OWN, ARP, &other_sha)),
            Some(DropReason::SpoofedArp)
        );
        let pair_ip_own_mac = arp(OWN, Ipv4Addr::new(198, 18, 2, 5));
        assert_eq!(
            verdict(&eth(OWN, ARP, &pair_ip_own_mac)),
            Some(DropReason::SpoofedArp)
        );
        assert_eq!(
            verdict(&eth(OWN, ARP, &[0, 1, 8, 0])),
            Some(DropReason::BadArp)
        );
    }

    #[test]
    fn ipv6_sources_and_neighbour_advertisements_belong_to_the_mac() {
        let global: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
        let pair_net: Ipv6Addr = "2001:db8:2::".parse().unwrap();
        let p = policy().with_ipv6(&[
            Ipv6Source::new(OWN, global, 128),
            Ipv6Source::new(PAIR, pair_net, 64),
        ]);
        let check = |f: &[u8]| p.check(f, V6, 14, &[]);
        let in_pair: Ipv6Addr = "2001:db8:2::77".parse().unwrap();
        assert_eq!(check(&eth(OWN, V6, &ipv6(global, 17, &udp(1, 2)))), None);
        assert_eq!(check(&eth(PAIR, V6, &ipv6(in_pair, 17, &udp(1, 2)))), None);
        assert_eq!(
            check(&eth(OWN, V6, &ipv6(in_pair, 17, &udp(1, 2)))),
            Some(DropReason::SpoofedIp),
            "the pair's prefix is the pair MAC's"
        );
        let na = |target: Ipv6Addr, lla: Option<[u8; 6]>| {
            let mut m = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
            m.extend_from_slice(&target.octets());
            if let Some(mac) = lla {
                m.extend_from_slice(&[2, 1]);
                m.extend_from_slice(&mac);
            }
            m
        };
        let ll = link_local_from_mac(OWN);
        assert_eq!(
            check(&eth(OWN, V6, &ipv6(ll, 58, &na(global, Some(OWN))))),
            None
        );
        assert_eq!(
            check(&eth(OWN, V6, &ipv6(ll, 58, &na(in_pair, None)))),
            Some(DropReason::SpoofedNd)
        );
        assert_eq!(
            check(&eth(OWN, V6, &ipv6(ll, 58, &na(global, Some(OTHER))))),
            Some(DropReason::SpoofedNd)
        );
        assert_eq!(
            check(&eth(OWN, V6, &ipv6(ll, 58, &na(global, None)[..20]))),
            Some(DropReason::BadIpv6Header)
        );
    }

    #[test]
    fn ipv6_from_link_local_or_unspecified_only() {
        // A neighbour solicitation (a DAD probe names an address its MAC owns).
        let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
        ns.extend_from_slice(&link_local_from_mac(OWN).octets());
        assert_eq!(
            verdict(&eth(OWN, V6, &ipv6(link_local_from_mac(OWN), 58, &ns))),
            None
        );
        assert_eq!(
            verdict(&eth(PAIR, V6, &ipv6(link_local_from_mac(PAIR), 58, &ns))),
            None
        );
        assert_eq!(
            verdict(&eth(OWN, V6, &ipv6(Ipv6Addr::UNSPECIFIED, 58, &ns))),
            None
        );
        assert_eq!(
            verdict(&eth(OWN, V6, &ipv6(Ipv6Addr::UNSPECIFIED, 17, &udp(1, 2)))),
            Some(DropReason::SpoofedIp)
        );
        assert_eq!(
            verdict(&eth(OWN, V6, &ipv6(link_local_from_mac(PAIR), 58, &ns))),
            Some(DropReason::SpoofedIp)
        );
        let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            verdict(&eth(OWN, V6, &ipv6(global, 58, &ns))),
            Some(DropReason::SpoofedIp)
        );
        for ra in [134u8, 137] {
            let p = ipv6(link_local_from_mac(OWN), 58, &[ra, 0, 0, 0]);
            assert_eq!(
                verdict(&eth(OWN, V6, &p)),
                Some(DropReason::RouterAdvertisementFromVm)
            );
        }
        // An RA behind a hop-by-hop header is found all the same.
        let mut hidden = vec![58, 0, 0, 0, 0, 0, 0, 0];
        hidden.extend_from_slice(&[134, 0, 0, 0]);
        let p = ipv6(link_local_from_mac(OWN), 0, &hidden);
        assert_eq!(
            verdict(&eth(OWN, V6, &p)),
            Some(DropReason::RouterAdvertisementFromVm)
        );
        assert_eq!(
            verdict(&eth(OWN, V6, &[0x60; 20])),
            Some(DropReason::BadIpv6Header)
        );
    }

    #[test]
    fn other_ethertypes_and_bad_headers() {
        assert_eq!(
            verdict(&eth(OWN, 0x88cc, &[0; 46])),
            Some(DropReason::EthertypeNotPermitted)
        );
        assert_eq!(
            verdict(&eth(OWN, V4, &[0x45, 0, 0])),
            Some(DropReason::BadIpv4Header)
        );
    }

    #[test]
    fn cidr_pair_masks_host_bits() {
        let s = Ipv4Source::new(PAIR, Ipv4Addr::new(198, 18, 2, 200), 24);
        assert_eq!(s.addr, u32::from(Ipv4Addr::new(198, 18, 2, 0)));
        let any = Ipv4Source::new(PAIR, Ipv4Addr::new(1, 2, 3, 4), 0);
        assert_eq!((any.addr, any.mask), (0, 0));
    }

    /// A burst through [`check_burst`] (with its fast path) against each frame through
    /// [`PortSecurity::check`] alone.
    fn burst_agrees_with_single_checks(frames: &[Vec<u8>]) {
        let mut pool = FramePool::with_frames(128).unwrap();
        let mut pkts = Vec::new();
        for f in frames {
            let id = pool.alloc().unwrap();
            let mut pkt = Packet::received(id, 256, f.len() as u16);
            pool.data_mut(&pkt).copy_from_slice(f);
            pkt.meta.next = Next::L2;
            pkt.meta.ethertype = u16::from_be_bytes([f[12], f[13]]);
            pkt.meta.l3_offset = 14;
            pkts.push(pkt);
        }
        let servers = [u32::from(SERVER)];
        let p = policy();
        check_burst(&p, &servers, &pool, &mut pkts);
        for (f, pkt) in frames.iter().zip(&pkts) {
            let ethertype = u16::from_be_bytes([f[12], f[13]]);
            let alone = p.check(f, ethertype, 14, &servers);
            assert_eq!(
                pkt.meta.next,
                alone.map_or(Next::L2, |r| Next::Drop(r, Stage::PortSecurity)),
                "{f:02x?}"
            );
        }
    }

    #[test]
    fn a_run_of_one_flow_takes_the_fast_path_with_the_same_verdicts() {
        let own = Ipv4Addr::new(198, 18, 1, 10);
        let good = eth(OWN, V4, &ipv4(own, ROUTER, 17, &udp(5000, 53)));
        let offer = eth(OWN, V4, &ipv4(own, Ipv4Addr::BROADCAST, 17, &udp(67, 68)));
        let spoof = eth(
            OWN,
            V4,
            &ipv4(Ipv4Addr::new(198, 18, 1, 11), ROUTER, 6, &[0; 20]),
        );
        let other_mac = eth(OTHER, V4, &ipv4(own, ROUTER, 17, &udp(5000, 53)));
        let discover = eth(
            OWN,
            V4,
            &ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &udp(68, 67)),
        );
        let mut truncated = good.clone();
        truncated.truncate(30);
        burst_agrees_with_single_checks(&[
            good.clone(),
            good.clone(),
            offer,
            good.clone(),
            spoof,
            other_mac,
            discover.clone(),
            truncated,
            good,
            discover,
        ]);
    }

    proptest::proptest! {
        #[test]
        fn bursts_agree_with_single_checks(
            picks in proptest::collection::vec((0usize..6, proptest::num::u8::ANY), 1..40),
        ) {
            let own = Ipv4Addr::new(198, 18, 1, 10);
            let pool_of_frames = [
                eth(OWN, V4, &ipv4(own, ROUTER, 17, &udp(5000, 53))),
                eth(OWN, V4, &ipv4(own, Ipv4Addr::BROADCAST, 17, &udp(67, 68))),
                eth(OWN, V4, &ipv4(Ipv4Addr::new(198, 18, 1, 11), ROUTER, 6, &[0; 20])),
                eth(OTHER, V4, &ipv4(own, ROUTER, 17, &udp(5000, 53))),
                eth(PAIR, V4, &ipv4(Ipv4Addr::new(198, 18, 2, 3), ROUTER, 1, &[8, 0, 0, 0])),
                eth(OWN, V4, &ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, 17, &udp(68, 67))),
            ];
            // Each pick may flip one byte of the IPv4 header, the UDP ports or the MAC.
            let frames: Vec<Vec<u8>> = picks
                .iter()
                .map(|&(i, b)| {
                    let mut f = pool_of_frames[i].clone();
                    if b % 3 == 0 {
                        let at = [6usize, 14, 15, 16, 17, 20, 21, 23, 26, 29, 34, 35, 36, 37][usize::from(b) % 14];
                        f[at] ^= b | 1;
                    }
                    f
                })
                .collect();
            burst_agrees_with_single_checks(&frames);
        }

        #[test]
        fn never_panics(
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..120),
            ethertype in proptest::prop_oneof![
                proptest::strategy::Just(V4),
                proptest::strategy::Just(ARP),
                proptest::strategy::Just(V6),
                proptest::num::u16::ANY
            ],
            l3 in 0usize..130,
        ) {
            let mut frame = eth(OWN, ethertype, &[]);
            frame.extend_from_slice(&data);
            let _ = policy().check(&frame, ethertype, l3.min(frame.len() + 4), &[1]);
        }
    }
}
