//! Tenant networks between hosts, VXLAN (RFC 7348), Geneve (RFC 8926) or GRE with a key
//! (RFC 2890), with Neutron's l2population and ARP responder: what `br-tun` does in an
//! Open vSwitch deployment.
//!
//! Everything but the tunnel header is the same for the three: each overlay network has
//! one [`Encapsulation`] and an identifier (VNI or GRE key) chosen in the snapshot; the
//! encapsulation stage writes the outer headers from a per-kind template
//! ([`encap::Outer`]), the decapsulation stage dispatches the outer IPv4 packet to a
//! per-kind parser; l2population, flood lists, the ARP responder and the underlay's
//! neighbours do not know which kind a network uses.
//!
//! Each remote host (tunnel endpoint) is a *tunnel port* of the snapshot
//! ([`crate::snapshot::PortRole::Tunnel`]): a port id without a driver. So the L2 stage
//! needs nothing new: a remote port's MACs (l2population) are static FDB entries on its
//! host's tunnel port, MACs learned from decapsulated frames are learned on the tunnel
//! port they came from (bounded and aged like every learned MAC), and a unicast decision
//! to a remote MAC is `Next::Output(tunnel port)`. Three stages do the rest, each enabled
//! only for the ports that need it (a network without an overlay pays nothing):
//!
//! - [`decap::TunnelDecap`], on the uplink with the tunnel endpoint address (`local_ip`),
//!   after classification: VXLAN, Geneve or GRE to `local_ip` → (kind, VNI or key) → network, source → tunnel port, the
//!   inner frame goes on to L2 as if received on that tunnel port; ARP for `local_ip` is
//!   answered there.
//! - [`arp_responder::ArpResponder`], on VM ports of overlay networks: ARP requests for
//!   the address of a known port (local or remote) are answered on the host.
//! - [`encap::TunnelEncap`], on VM ports of overlay networks and the endpoint's uplink:
//!   frames to a tunnel port get their outer headers in the headroom and leave on the
//!   uplink; broadcast and unknown unicast are replicated head-end to the network's flood
//!   list (the hosts with ports on it) as well as flooded to the local ports.
//!
//! The underlay is IPv4 on the uplink, untagged, with the remote endpoints on the link of
//! `local_ip` (validation refuses others): their MACs come from ARP, in a per-worker
//! neighbour table ([`underlay::Underlay`], the routers' [`crate::l3::neighbor`] table
//! under a key of its own).

pub mod arp_responder;
pub mod decap;
pub mod encap;
pub mod underlay;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use crate::counters::{Counter, WorkerCounters};
use crate::ident::{NetworkSlot, PackedMac};
use crate::pipeline::{Stage, StageSet};
use crate::port::PortId;
use crate::snapshot::{BuildError, NetworkUid, PortRole};
use crate::table::U64Map;

/// Bytes VXLAN adds in front of the inner frame: outer Ethernet (14), IPv4 (20), UDP (8)
/// and VXLAN (8).
pub const VXLAN_OVERHEAD: u16 = 50;
/// Bytes Geneve without options adds: outer Ethernet (14), IPv4 (20), UDP (8), Geneve (8).
pub const GENEVE_OVERHEAD: u16 = 50;
/// Bytes GRE with a key adds: outer Ethernet (14), IPv4 (20), GRE with key (8).
pub const GRE_OVERHEAD: u16 = 42;

/// How an overlay network's frames travel between hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Encapsulation {
    /// VXLAN, UDP 4789, the identifier a 24-bit VNI.
    Vxlan,
    /// Geneve without options, UDP 6081, the identifier a 24-bit VNI.
    Geneve,
    /// GRE (IPv4 protocol 47) with a 32-bit key, protocol 0x6558.
    Gre,
}

impl Encapsulation {
    /// Every kind, in counter order.
    pub const ALL: [Encapsulation; 3] = [
        Encapsulation::Vxlan,
        Encapsulation::Geneve,
        Encapsulation::Gre,
    ];

    /// Bytes the outer headers add in front of the inner frame.
    #[inline]
    pub const fn overhead(self) -> u16 {
        match self {
            Encapsulation::Vxlan => VXLAN_OVERHEAD,
            Encapsulation::Geneve => GENEVE_OVERHEAD,
            Encapsulation::Gre => GRE_OVERHEAD,
        }
    }

    /// Lower-case name, as in `network_type`.
    pub const fn name(self) -> &'static str {
        match self {
            Encapsulation::Vxlan => "vxlan",
            Encapsulation::Geneve => "geneve",
            Encapsulation::Gre => "gre",
        }
    }

    /// The frames this host encapsulated with this kind.
    #[inline(always)]
    pub fn encapsulated(self, c: &WorkerCounters) -> &Counter {
        match self {
            Encapsulation::Vxlan => &c.vxlan_encapsulated,
            Encapsulation::Geneve => &c.geneve_encapsulated,
            Encapsulation::Gre => &c.gre_encapsulated,
        }
    }

    /// The packets of this kind this host decapsulated.
    #[inline(always)]
    pub fn decapsulated(self, c: &WorkerCounters) -> &Counter {
        match self {
            Encapsulation::Vxlan => &c.vxlan_decapsulated,
            Encapsulation::Geneve => &c.geneve_decapsulated,
            Encapsulation::Gre => &c.gre_decapsulated,
        }
    }

    /// Key of the (kind, identifier) → network table: a VNI of VXLAN and the same number
    /// as a GRE key are different networks.
    #[inline(always)]
    pub(crate) fn key(self, id: u32) -> u64 {
        (self as u64) << 32 | u64::from(id)
    }
}

/// An overlay network's encapsulation and identifier (VNI or GRE key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunnelId {
    /// The kind of tunnel.
    pub encapsulation: Encapsulation,
    /// VNI (VXLAN, Geneve) or key (GRE).
    pub id: u32,
}

/// The first three bytes of the tunnel endpoint's MAC (locally administered, unicast),
/// followed by the low three bytes of `local_ip`.
pub const VTEP_MAC_PREFIX: [u8; 3] = [0x02, 0x70, 0x76];

/// The MAC this host's tunnel endpoint uses on the underlay for `local_ip`.
pub fn vtep_mac(local_ip: Ipv4Addr) -> [u8; 6] {
    let [_, a, b, c] = local_ip.octets();
    [
        VTEP_MAC_PREFIX[0],
        VTEP_MAC_PREFIX[1],
        VTEP_MAC_PREFIX[2],
        a,
        b,
        c,
    ]
}

/// This host's tunnel endpoint as the builder takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The uplink that carries the underlay (untagged).
    pub uplink: PortId,
    /// The endpoint's address (outer source, what remote hosts send to).
    pub local_ip: Ipv4Addr,
}

/// What the builder collects about overlays.
#[derive(Clone, Debug, Default)]
pub(crate) struct OverlayBuilder {
    pub(crate) endpoint: Option<EndpointSpec>,
    /// Tunnel port → remote endpoint address.
    pub(crate) tunnels: Vec<(PortId, Ipv4Addr)>,
    /// (network, tunnel port): the host behind the tunnel has ports on the network.
    pub(crate) peers: Vec<(NetworkUid, PortId)>,
    /// (network, address, MAC) answered by the ARP responder.
    pub(crate) arp: Vec<(NetworkUid, Ipv4Addr, [u8; 6])>,
}

/// The compiled overlay tables of one snapshot: empty without tunnel endpoint.
#[derive(Clone, Debug)]
pub struct Overlay {
    uplink: PortId,
    local_ip: u32,
    mac: PackedMac,
    /// [`Encapsulation::key`] → network slot.
    by_id: U64Map<NetworkSlot>,
    /// Per network slot, its tunnel (`None`: not an overlay network).
    tunnel_of: Box<[Option<TunnelId>]>,
    /// `peer_key(slot, remote address)` → tunnel port: the network's peer list, checked on
    /// every decapsulated frame.
    peers: U64Map<PortId>,
    /// Per network slot, the range of `flood` holding its tunnel ports.
    flood_range: Box<[(u32, u32)]>,
    flood: Box<[PortId]>,
    /// `peer_key(slot, address)` → MAC, for the ARP responder.
    arp: U64Map<PackedMac>,
    /// Per port id, the remote address of a tunnel port (0 for other ports).
    remote_of: Box<[u32]>,
    /// Remote address → its tunnel port.
    by_remote: U64Map<PortId>,
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay {
            uplink: PortId::NONE,
            local_ip: 0,
            mac: PackedMac::NONE,
            by_id: U64Map::with_max_len(0),
            tunnel_of: Box::default(),
            peers: U64Map::with_max_len(0),
            flood_range: Box::default(),
            flood: Box::default(),
            arp: U64Map::with_max_len(0),
            remote_of: Box::default(),
            by_remote: U64Map::with_max_len(0),
        }
    }
}

/// Key of the per-network address tables: slot in the high half, IPv4 address below.
#[inline(always)]
fn peer_key(slot: NetworkSlot, ip: u32) -> u64 {
    (u64::from(slot.0) << 32) | u64::from(ip)
}

impl Overlay {
    /// Whether this snapshot has a tunnel endpoint.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.local_ip != 0
    }

    /// The uplink carrying the underlay.
    #[inline]
    pub fn uplink(&self) -> PortId {
        self.uplink
    }

    /// The endpoint's address, host order.
    #[inline]
    pub fn local_ip(&self) -> u32 {
        self.local_ip
    }

    /// The endpoint's MAC on the underlay.
    #[inline]
    pub fn mac(&self) -> PackedMac {
        self.mac
    }

    /// The network slot of identifier `id` (VNI or key) of `kind`.
    #[inline]
    pub fn network_of(&self, kind: Encapsulation, id: u32) -> Option<NetworkSlot> {
        self.by_id.get(kind.key(id))
    }

    /// The tunnel of network `slot`, if it is an overlay network.
    #[inline]
    pub fn tunnel(&self, slot: NetworkSlot) -> Option<TunnelId> {
        self.tunnel_of.get(slot.index()).copied().flatten()
    }

    /// The tunnel port of `remote` if that endpoint is a peer of network `slot`.
    #[inline]
    pub fn peer(&self, slot: NetworkSlot, remote: u32) -> Option<PortId> {
        self.peers.get(peer_key(slot, remote))
    }

    /// The tunnel ports broadcast and unknown unicast of network `slot` are replicated to.
    #[inline]
    pub fn flood_tunnels(&self, slot: NetworkSlot) -> &[PortId] {
        match self.flood_range.get(slot.index()) {
            Some(&(start, len)) => &self.flood[start as usize..(start + len) as usize],
            None => &[],
        }
    }

    /// The MAC of the port that has address `ip` on network `slot`.
    #[inline]
    pub fn arp_answer(&self, slot: NetworkSlot, ip: u32) -> Option<PackedMac> {
        self.arp.get(peer_key(slot, ip))
    }

    /// The remote endpoint (host order) behind tunnel port `port`, if it is one.
    #[inline]
    pub fn remote(&self, port: PortId) -> Option<u32> {
        self.remote_of
            .get(port.index())
            .copied()
            .filter(|&ip| ip != 0)
    }

    /// Whether `ip` is the address of a tunnel port (a known remote endpoint).
    #[inline]
    pub fn is_remote_endpoint(&self, ip: u32) -> bool {
        self.by_remote.get(u64::from(ip)).is_some()
    }

    /// Every tunnel port with its remote endpoint.
    pub fn tunnels(&self) -> impl Iterator<Item = (PortId, Ipv4Addr)> + '_ {
        self.remote_of
            .iter()
            .enumerate()
            .filter(|(_, &ip)| ip != 0)
            .map(|(i, &ip)| (PortId(i as u16), Ipv4Addr::from(ip)))
    }
}

/// Network slot and tunnel of every overlay network, for [`OverlayBuilder::build`].
pub(crate) struct OverlayNetworks<'a> {
    pub(crate) slot_of: &'a HashMap<NetworkUid, NetworkSlot>,
    /// (slot, tunnel) of each overlay network.
    pub(crate) tunnels: Vec<(NetworkSlot, TunnelId)>,
    pub(crate) slots: usize,
}

impl OverlayBuilder {
    /// Compiles the overlay tables; `ports` is the port table being built.
    pub(crate) fn build(
        &self,
        nets: &OverlayNetworks<'_>,
        ports: &[PortRole],
    ) -> Result<Overlay, BuildError> {
        let Some(endpoint) = self.endpoint else {
            if !nets.tunnels.is_empty() {
                return Err(BuildError::Overlay(
                    "an overlay network without tunnel endpoint",
                ));
            }
            return Ok(Overlay::default());
        };
        if !matches!(
            ports.get(endpoint.uplink.index()),
            Some(PortRole::Uplink { .. })
        ) {
            return Err(BuildError::Overlay(
                "the tunnel endpoint is not on an uplink",
            ));
        }
        let local_ip = u32::from(endpoint.local_ip);
        if local_ip == 0 {
            return Err(BuildError::Overlay(
                "the tunnel endpoint has address 0.0.0.0",
            ));
        }
        let mut by_id = U64Map::with_max_len(nets.tunnels.len());
        let mut tunnel_of = vec![None; nets.slots].into_boxed_slice();
        for &(slot, tunnel) in &nets.tunnels {
            let TunnelId { encapsulation, id } = tunnel;
            let max = match encapsulation {
                Encapsulation::Vxlan | Encapsulation::Geneve => crate::wire::vxlan::VNI_MAX,
                Encapsulation::Gre => u32::MAX,
            };
            if id == 0 || id > max {
                return Err(BuildError::Overlay("a VNI or GRE key out of range"));
            }
            if by_id
                .insert(encapsulation.key(id), slot)
                .ok()
                .flatten()
                .is_some()
            {
                return Err(BuildError::Overlay("a VNI or GRE key used by two networks"));
            }
            tunnel_of[slot.index()] = Some(tunnel);
        }
        let mut remote_of = vec![0u32; ports.len()].into_boxed_slice();
        let mut by_remote = U64Map::with_max_len(self.tunnels.len());
        for &(port, ip) in &self.tunnels {
            let ip = u32::from(ip);
            if ip == 0 || ip == local_ip {
                return Err(BuildError::Overlay(
                    "a remote endpoint at 0.0.0.0 or at local_ip",
                ));
            }
            match ports.get(port.index()) {
                Some(PortRole::Tunnel) => {
                    remote_of[port.index()] = ip;
                    if by_remote
                        .insert(u64::from(ip), port)
                        .ok()
                        .flatten()
                        .is_some()
                    {
                        return Err(BuildError::Overlay("two tunnels to one remote endpoint"));
                    }
                }
                _ => return Err(BuildError::Overlay("a tunnel that is not a tunnel port")),
            }
        }
        let mut by_network: BTreeMap<NetworkSlot, Vec<PortId>> = BTreeMap::new();
        let mut peers = U64Map::with_max_len(self.peers.len());
        for &(uid, port) in &self.peers {
            let slot = *nets
                .slot_of
                .get(&uid)
                .ok_or(BuildError::Overlay("a peer of an unknown network"))?;
            let ip = remote_of.get(port.index()).copied().unwrap_or(0);
            if ip == 0 || tunnel_of[slot.index()].is_none() {
                return Err(BuildError::Overlay(
                    "a peer that is not a tunnel, or on a network without VNI",
                ));
            }
            if peers
                .insert(peer_key(slot, ip), port)
                .ok()
                .flatten()
                .is_none()
            {
                by_network.entry(slot).or_default().push(port);
            }
        }
        let mut flood = Vec::new();
        let mut flood_range = vec![(0u32, 0u32); nets.slots].into_boxed_slice();
        for (slot, mut list) in by_network {
            list.sort_unstable();
            flood_range[slot.index()] = (flood.len() as u32, list.len() as u32);
            flood.extend(list);
        }
        let mut arp = U64Map::with_max_len(self.arp.len());
        for &(uid, ip, mac) in &self.arp {
            let slot = *nets
                .slot_of
                .get(&uid)
                .ok_or(BuildError::Overlay("an ARP entry of an unknown network"))?;
            // Two ports with one address: validation refuses that; keep the first.
            let key = peer_key(slot, u32::from(ip));
            if arp.get(key).is_none() {
                arp.insert(key, PackedMac::from(mac))
                    .map_err(|_| BuildError::Overlay("ARP responder table full"))?;
            }
        }
        Ok(Overlay {
            uplink: endpoint.uplink,
            local_ip,
            mac: PackedMac::from(vtep_mac(endpoint.local_ip)),
            by_id,
            tunnel_of,
            peers,
            flood_range,
            flood: flood.into_boxed_slice(),
            arp,
            remote_of,
            by_remote,
        })
    }
}

impl Overlay {
    /// Adds the overlay stages to the ports that need them: decapsulation on the
    /// endpoint's uplink, the ARP responder and encapsulation on VM ports of overlay
    /// networks. Nothing for anyone else.
    /// The uplink of the tunnel endpoint, when there is one.
    pub(crate) fn endpoint_uplink(&self) -> Option<PortId> {
        self.enabled().then_some(self.uplink)
    }

    pub(crate) fn enable_stages(&self, ports: &[PortRole], stages: &mut [StageSet]) {
        if !self.enabled() {
            return;
        }
        for (i, role) in ports.iter().enumerate() {
            let add = match *role {
                // Nothing it receives is encapsulated again: L2 drops a decapsulated
                // frame to another tunnel (`tunnel_to_tunnel`), and floods from a tunnel
                // stay local.
                PortRole::Uplink { .. } if PortId(i as u16) == self.uplink => {
                    StageSet::EMPTY.with(Stage::TunnelDecap)
                }
                PortRole::Access { network, .. } if self.tunnel(network).is_some() => {
                    StageSet::EMPTY
                        .with(Stage::ArpResponder)
                        .with(Stage::TunnelEncap)
                }
                _ => StageSet::EMPTY,
            };
            stages[i] = stages[i].union(add);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_carries_the_low_bytes_of_local_ip() {
        assert_eq!(
            vtep_mac(Ipv4Addr::new(198, 18, 0, 1)),
            [0x02, 0x70, 0x76, 18, 0, 1]
        );
    }
}
