//! The DHCP server's entry in the slow path: which client messages a port may punt.

use crate::drop::DropReason;
use crate::ident::{FdbKey, NetworkSlot, PackedMac};
use crate::port::PortId;
use crate::snapshot::Snapshot;
use crate::wire::{Ipv4Packet, UdpPacket};

use super::service::{ServiceId, ServiceKind, ServiceMatch};

/// UDP port of DHCP servers (RFC 2131 §4.1).
pub const DHCP_SERVER_PORT: u16 = 67;

/// What the DHCP server takes: client messages to UDP port 67, broadcast (before the
/// client has an address) or unicast to the server (renewals).
pub const MATCH: ServiceMatch = ServiceMatch::udp(DHCP_SERVER_PORT);

/// The DHCP server's line in [`super::service::SERVICES`].
pub const KIND: ServiceKind = ServiceKind {
    id: ServiceId::DHCP,
    name: "dhcp",
    admit,
    rate_limited: DropReason::DhcpRateLimited,
};

/// Whether the client hardware address (`chaddr`) of the DHCP message in `l3` may be asked
/// for from `port`: never another port's MAC (the server would hand that port's address and
/// options to whoever asks), and on a port with port security only one of its own MACs
/// (else one VM could drain a pool that serves unknown MACs). A message too short to carry
/// one is left to the server, which drops it.
fn admit(snap: &Snapshot, slot: NetworkSlot, port: PortId, l3: &[u8]) -> Option<DropReason> {
    let chaddr = dhcp_chaddr(l3)?;
    let foreign = snap
        .static_mac(FdbKey::packed(slot, chaddr))
        .is_some_and(|owner| owner != port)
        || snap
            .port_security(port)
            .is_some_and(|policy| !policy.macs().contains(&chaddr));
    foreign.then_some(DropReason::DhcpForeignClient)
}

/// The `chaddr` of the DHCP message in the IPv4/UDP packet `l3`, packed, when the
/// message is long enough to hold it.
fn dhcp_chaddr(l3: &[u8]) -> Option<PackedMac> {
    let ip = Ipv4Packet::new_checked(l3).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    // BOOTP: op, htype, hlen, hops, xid (4), secs, flags, ciaddr, yiaddr, siaddr, giaddr,
    // then chaddr at offset 28 (RFC 2131 §2).
    let mac = udp.payload().get(28..34)?;
    Some(PackedMac::from([
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slowpath::service::{NetworkService, NetworkServices};

    #[test]
    fn dhcp_matches_udp_67_unfragmented() {
        let t = NetworkServices::new(vec![NetworkService {
            id: ServiceId::DHCP,
            matches: MATCH,
            addresses: Box::new([]),
        }]);
        let mut ip = [0u8; 28];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[9] = 17;
        ip[20..22].copy_from_slice(&68u16.to_be_bytes());
        ip[22..24].copy_from_slice(&67u16.to_be_bytes());
        ip[24..26].copy_from_slice(&8u16.to_be_bytes());
        let dhcp = Some(ServiceId::DHCP);
        assert_eq!(t.match_ipv4(&ip), dhcp);
        let mut frag = ip;
        frag[6] = 0x20; // more fragments
        assert_eq!(t.match_ipv4(&frag), None);
        let mut tcp = ip;
        tcp[9] = 6;
        assert_eq!(t.match_ipv4(&tcp), None);
        let mut other = ip;
        other[23] = 68;
        assert_eq!(t.match_ipv4(&other), None);
        assert_eq!(t.match_ipv4(&ip[..24]), None);
        assert_eq!(t.match_ipv4(&[]), None);
    }
}
