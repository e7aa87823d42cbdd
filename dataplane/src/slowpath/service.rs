//! The slow path's services: which punted frames belong to which control-side service.
//!
//! A network's entry in the snapshot lists the services it offers ([`NetworkServices`]):
//! each a [`ServiceMatch`] (protocol, destination port, optionally one destination
//! address) and the [`ServiceId`] the frame is punted for. The id travels in the ring
//! header, and the control plane hands the frame to the service registered under it, so
//! a service is added by a new file, a line in [`SERVICES`] here and a line in the
//! control plane's table of handlers, never by touching the stage.
//!
//! The services of one network share one MAC (the network's service port, as Neutron's
//! DHCP port also carries its metadata proxy): the L2 stage sends broadcasts and frames
//! to that MAC here, and ARP for every service address is answered with it.

use std::net::Ipv4Addr;

use crate::drop::DropReason;
use crate::port::PortId;
use crate::snapshot::Snapshot;
use crate::wire::{IpProtocol, Ipv4Packet, TcpPacket, UdpPacket};

use super::{dhcp, metadata};

/// Which control-side service a punted frame is for (its index in [`SERVICES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u8);

impl ServiceId {
    /// The DHCP server.
    pub const DHCP: ServiceId = ServiceId(0);
    /// The metadata proxy.
    pub const METADATA: ServiceId = ServiceId(1);

    /// Index into per-service tables (budgets, counters).
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// What the data plane knows of this service, if it is one.
    pub fn kind(self) -> Option<&'static ServiceKind> {
        SERVICES.get(self.index())
    }

    /// The service's name (metrics, `stats.get`), or `"unknown"`.
    pub fn name(self) -> &'static str {
        self.kind().map_or("unknown", |k| k.name)
    }
}

/// How many services there may be: sizes the per-port budgets and per-service counters.
pub const MAX_SERVICES: usize = 4;

/// What the data plane knows of a kind of service, whatever network offers it.
#[derive(Debug)]
pub struct ServiceKind {
    /// Its id on the rings (its index in [`SERVICES`]).
    pub id: ServiceId,
    /// A stable snake_case name.
    pub name: &'static str,
    /// Checked before a frame is punted (and before the budget is spent): whether the
    /// port may send this frame to the service; `Some(reason)` drops it.
    pub admit: fn(&Snapshot, crate::ident::NetworkSlot, PortId, &[u8]) -> Option<DropReason>,
    /// Why a frame is dropped when its port has spent its budget for this service.
    pub rate_limited: DropReason,
}

/// Every service, indexed by id. Adding one: a file with its admission check, a line here.
pub static SERVICES: [ServiceKind; 2] = [dhcp::KIND, metadata::KIND];

const _: () = assert!(SERVICES.len() <= MAX_SERVICES);

/// Which IPv4 packets a service takes: unfragmented, to `protocol` (UDP or TCP) and
/// `dst_port`, and when `dst_addr` is set only to that address. Without one, any
/// destination matches: the frame reached the slow path as a broadcast or sent to the
/// service MAC (a DHCP client asks before it has an address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceMatch {
    /// UDP or TCP.
    pub protocol: IpProtocol,
    /// The destination port.
    pub dst_port: u16,
    /// The one destination address, if any.
    pub dst_addr: Option<Ipv4Addr>,
}

impl ServiceMatch {
    /// UDP to `dst_port`, any destination address.
    pub const fn udp(dst_port: u16) -> ServiceMatch {
        ServiceMatch {
            protocol: IpProtocol::UDP,
            dst_port,
            dst_addr: None,
        }
    }
}

/// One service a network offers: what it takes, and the addresses it answers ARP for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkService {
    /// The service.
    pub id: ServiceId,
    /// The packets it takes.
    pub matches: ServiceMatch,
    /// Its addresses on the network (host byte order).
    pub addresses: Box<[u32]>,
}

/// The services of one network, as the snapshot holds them (few: a short scan).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkServices {
    entries: Vec<NetworkService>,
    /// Every entry's addresses, answered in ARP with the network's service MAC.
    addresses: Vec<u32>,
}

impl NetworkServices {
    /// No services.
    pub const EMPTY: NetworkServices = NetworkServices {
        entries: Vec::new(),
        addresses: Vec::new(),
    };

    /// The table of `entries`.
    pub fn new(entries: Vec<NetworkService>) -> NetworkServices {
        let mut addresses: Vec<u32> = entries
            .iter()
            .flat_map(|e| e.addresses.iter().copied())
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        NetworkServices { entries, addresses }
    }

    /// The entries.
    pub fn entries(&self) -> &[NetworkService] {
        &self.entries
    }

    /// Every service address (host byte order, sorted).
    pub fn addresses(&self) -> &[u32] {
        &self.addresses
    }

    /// The addresses of service `id` (host byte order).
    pub fn addresses_of(&self, id: ServiceId) -> &[u32] {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .map_or(&[], |e| &e.addresses)
    }

    /// The service the IPv4 packet starting at `l3` is for, if any. A fragment never
    /// matches: a piece of a message is not a message a service could read.
    pub fn match_ipv4(&self, l3: &[u8]) -> Option<ServiceId> {
        let ip = Ipv4Packet::new_checked(l3).ok()?;
        if ip.more_frags() || ip.frag_offset() != 0 {
            return None;
        }
        let protocol = ip.protocol();
        let dst_port = match protocol {
            IpProtocol::UDP => UdpPacket::new_checked(ip.payload()).ok()?.dst_port(),
            IpProtocol::TCP => TcpPacket::new_checked(ip.payload()).ok()?.dst_port(),
            _ => return None,
        };
        let dst_addr = ip.dst_addr();
        self.entries
            .iter()
            .find(|e| {
                e.matches.protocol == protocol
                    && e.matches.dst_port == dst_port
                    && e.matches.dst_addr.is_none_or(|a| a == dst_addr)
            })
            .map(|e| e.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(protocol: u8, dst: [u8; 4], dst_port: u16, l4_len: usize) -> Vec<u8> {
        let total = 20 + l4_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = protocol;
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&68u16.to_be_bytes());
        p[22..24].copy_from_slice(&dst_port.to_be_bytes());
        if protocol == 17 {
            p[24..26].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else if protocol == 6 {
            p[32] = 5 << 4;
        }
        p
    }

    const METADATA: ServiceId = ServiceId::METADATA;
    const METADATA_IP: [u8; 4] = [169, 254, 169, 254];

    fn table() -> NetworkServices {
        NetworkServices::new(vec![
            NetworkService {
                id: ServiceId::DHCP,
                matches: ServiceMatch::udp(67),
                addresses: Box::new([0xc612_01fe]),
            },
            NetworkService {
                id: METADATA,
                matches: ServiceMatch {
                    protocol: IpProtocol::TCP,
                    dst_port: 80,
                    dst_addr: Some(METADATA_IP.into()),
                },
                addresses: Box::new([u32::from_be_bytes(METADATA_IP)]),
            },
        ])
    }

    #[test]
    fn a_packet_goes_to_the_service_whose_match_it_fits() {
        let t = table();
        assert_eq!(
            t.match_ipv4(&ipv4(17, [255; 4], 67, 8)),
            Some(ServiceId::DHCP)
        );
        assert_eq!(t.match_ipv4(&ipv4(6, METADATA_IP, 80, 20)), Some(METADATA));
        // The metadata service takes only its own address; DHCP any.
        assert_eq!(t.match_ipv4(&ipv4(6, [198, 18, 1, 254], 80, 20)), None);
        assert_eq!(t.match_ipv4(&ipv4(17, METADATA_IP, 80, 8)), None);
        assert_eq!(t.match_ipv4(&ipv4(17, [255; 4], 68, 8)), None);
        assert_eq!(t.addresses(), &[0xa9fe_a9fe, 0xc612_01fe]);
        assert_eq!(t.addresses_of(ServiceId::DHCP), &[0xc612_01fe]);
        assert_eq!(t.addresses_of(ServiceId(3)), &[] as &[u32]);
    }

    #[test]
    fn fragments_other_protocols_and_short_headers_match_nothing() {
        let t = table();
        let mut frag = ipv4(17, [255; 4], 67, 8);
        frag[6] = 0x20;
        assert_eq!(t.match_ipv4(&frag), None);
        assert_eq!(t.match_ipv4(&ipv4(1, [255; 4], 67, 8)), None);
        let whole = ipv4(17, [255; 4], 67, 8);
        assert_eq!(t.match_ipv4(&whole[..24]), None);
        assert_eq!(t.match_ipv4(&[]), None);
        let tcp = ipv4(6, METADATA_IP, 80, 20);
        assert_eq!(t.match_ipv4(&tcp[..30]), None);
    }

    #[test]
    fn every_service_sits_at_its_own_index() {
        for (index, kind) in SERVICES.iter().enumerate() {
            assert_eq!(kind.id.index(), index, "{}", kind.name);
        }
        assert_eq!(ServiceId::DHCP.name(), "dhcp");
        assert_eq!(ServiceId::METADATA.name(), "metadata");
        assert_eq!(ServiceId(3).name(), "unknown");
    }
}
