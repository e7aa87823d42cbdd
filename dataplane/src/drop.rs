//! Why a packet was dropped. Every drop names one of these, and each has a counter.

use std::fmt;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $help:literal;)*) => {
        /// The reason a packet left the pipeline without being sent.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $help] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// Number of reasons (the length of a per-reason counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable snake_case name, used in metrics labels and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }

            /// One-line explanation for humans.
            pub const fn help(self) -> &'static str {
                match self { $(DropReason::$variant => $help,)* }
            }
        }
    };
}

drop_reasons! {
    Runt => "runt", "Frame shorter than an Ethernet header.";
    TruncatedVlan => "truncated_vlan", "802.1Q tag announced but the frame ends inside it.";
    StackedVlan => "stacked_vlan", "QinQ (0x88a8) or a second 802.1Q tag: no network is mapped to stacked tags.";
    SrcMacMulticast => "src_mac_multicast", "Source MAC is a group address, which no station may send from.";
    PortNotConfigured => "port_not_configured", "Received on a port the active configuration does not have.";
    TaggedOnAccess => "tagged_on_access", "802.1Q-tagged frame on a VM port (VLAN transparency is off).";
    UnknownVlan => "unknown_vlan", "Tagged frame on an uplink whose VLAN ID no network of its physnet uses.";
    NoFlatNetwork => "no_flat_network", "Untagged frame on an uplink whose physnet has no flat network.";
    Hairpin => "hairpin", "Destination MAC is behind the port the frame came in on.";
    NoFloodTargets => "no_flood_targets", "Flooded frame in a network with no other port.";
    NoBuffers => "no_buffers", "Frame pool empty when a flooded frame needed a copy.";
    NoHeadroom => "no_headroom", "No room in front of the frame to push a VLAN tag.";
    PortNotAttached => "port_not_attached", "Output port is configured but this worker has no driver for it.";
    TxRingFull => "tx_ring_full", "Output port did not accept the frame (transmit ring full).";
    NotRoutable => "not_routable", "Frame to a router MAC that is neither IPv4 nor ARP.";
    BadIpv4Header => "bad_ipv4_header", "Routed frame with a malformed IPv4 header (version, length, checksum).";
    BadArp => "bad_arp", "ARP frame to a router that is not Ethernet/IPv4 ARP or is truncated.";
    TtlExpired => "ttl_expired", "Routed packet whose TTL would reach zero.";
    NoRoute => "no_route", "No route to the destination in the router's table.";
    ToRouter => "to_router", "Addressed to a router address and not an ICMP echo request.";
    MtuExceeded => "mtu_exceeded", "Routed packet larger than the egress MTU.";
    NeighborUnresolved => "neighbor_unresolved", "Next hop did not answer ARP in time.";
    NeighborQueueFull => "neighbor_queue_full", "Too many packets already waiting for ARP.";
    NatUnsupported => "nat_unsupported", "Needs SNAT but has no ports to translate (a later fragment whose first was not seen, ICMP other than echo or an error about a translated flow, another protocol).";
    NatPortsExhausted => "nat_ports_exhausted", "No free SNAT port towards that destination.";
    NatTableFull => "nat_table_full", "The worker's NAT session table is full.";
    NatQuotaExceeded => "nat_quota_exceeded", "The sending port already holds its quota of NAT sessions.";
    DhcpRateLimited => "dhcp_rate_limited", "The port already sent its share of DHCP messages this second.";
    PuntQueueFull => "punt_queue_full", "The slow path is behind: its punt ring is full.";
    PuntTooLarge => "punt_too_large", "Frame for the slow path larger than a punt ring slot.";
    ToDhcpServer => "to_dhcp_server", "Sent to the network's service MAC (its DHCP server's) but neither a service's packet nor ARP.";
    SpoofedMac => "spoofed_mac", "Port security: source MAC is neither the port's nor one of its allowed address pairs'.";
    SpoofedIp => "spoofed_ip", "Port security: source address is not the port's (fixed IPs, allowed address pairs, link-local) for that MAC.";
    SpoofedArp => "spoofed_arp", "Port security: ARP sender MAC or IP does not belong to the port.";
    SpoofedNd => "spoofed_nd", "Port security: an IPv6 neighbour advertisement (or duplicate address detection probe) for an address the port does not own, or a link-layer address option that is not the frame's source MAC.";
    DhcpServerFromVm => "dhcp_server_from_vm", "Port security: a DHCP or DHCPv6 server reply sent by a VM.";
    RouterAdvertisementFromVm => "router_advertisement_from_vm", "Port security: an ICMPv6 router advertisement or redirect sent by a VM.";
    EthertypeNotPermitted => "ethertype_not_permitted", "Port security: neither IPv4, ARP nor IPv6.";
    ArpClaimsRouter => "arp_claims_router", "ARP from a host announcing a router's own address or a floating IP on that network (a gateway takeover).";
    ArpClaimsDhcpServer => "arp_claims_dhcp_server", "ARP from a host announcing a service's address (the DHCP server's) on that network.";
    DhcpForeignClient => "dhcp_foreign_client", "A DHCP client message for a hardware address (chaddr) that is not the port's: another port's MAC, or not one of a port-security port's MACs.";
    BadIpv6Header => "bad_ipv6_header", "Malformed IPv6 header, extension header chain (longer than 8 headers, or cut short) or neighbour discovery message, to or from a port with port security.";
    SgNoRule => "sg_no_rule", "Security groups: no rule of the port's groups allows it (to or from a port with port security), and it is not a reply of an allowed connection.";
    SgConnLimit => "sg_conn_limit", "Security groups: the port holds its quota of tracked connections, or the worker's connection table is full.";
    SgConnectionCut => "sg_connection_cut", "Security groups: a tracked connection the port's rules no longer allow after a change (the connection is removed).";
    SgInvalid => "sg_invalid", "Security groups: a TCP segment outside the tracked connection's sequence window (a forged RST, an out-of-window segment).";
    SgFragment => "sg_fragment", "Security groups: an IPv4 fragment other than the first whose first fragment was not admitted (or for a stateless group): it carries no ports to evaluate.";
    SgTruncated => "sg_truncated", "Security groups: the L4 header is cut short.";
    SgRaNotFromRouter => "sg_ra_not_from_router", "Security groups: an ICMPv6 router advertisement to a port from a source that is not one of its network's routers (an IPv6 subnet's link-local gateway), which no rule of the port's groups allows either.";
    SgConnLimitIpv6 => "sg_conn_limit_ipv6", "Security groups: the port holds its quota of tracked IPv6 connections, or the worker's IPv6 connection table is full (the IPv4 quota is apart: sg_conn_limit).";
    InternalError => "internal_error", "A broken internal invariant (a bug): e.g. a packet classified into a network or router its snapshot lacks, or one that left the pipeline unfinished.";
    UnknownVni => "unknown_vni", "Tunnel packet to the endpoint for a VNI (VXLAN, Geneve) or GRE key that no network of this host with that encapsulation has.";
    UnknownTunnelEndpoint => "unknown_tunnel_endpoint", "VXLAN, Geneve or GRE packet from an endpoint that is not a peer of the VNI's network (no port of the network is bound to that host).";
    BadOuterIpv4 => "bad_outer_ipv4", "Packet to the tunnel endpoint's address with a malformed outer IPv4 header (version, header or total length, checksum), or a fragment (tunnel packets are never reassembled).";
    BadVxlan => "bad_vxlan", "Malformed VXLAN packet to the tunnel endpoint: UDP length, VXLAN flags without the VNI bit, or a runt or 802.1Q-tagged inner frame.";
    BadGeneve => "bad_geneve", "Malformed Geneve packet to the tunnel endpoint: UDP length, a version other than 0, options longer than announced or than the packet, or a runt or 802.1Q-tagged inner frame.";
    GeneveCriticalOption => "geneve_critical_option", "Geneve packet with an option whose critical bit is set: Pollux understands no option, and RFC 8926 has such packets dropped.";
    GeneveControl => "geneve_control", "Geneve control packet (O bit): not data to forward, and Pollux speaks no Geneve control protocol.";
    BadGre => "bad_gre", "Malformed GRE packet to the tunnel endpoint: a version other than 0, RFC 1701 routing or recursion bits, no key, a header longer than the packet, or a runt or 802.1Q-tagged inner frame.";
    GreChecksum => "gre_checksum", "GRE packet whose checksum (C bit) does not match its header and payload.";
    TunnelNotEthernet => "tunnel_not_ethernet", "Geneve or GRE packet to the tunnel endpoint whose protocol type is not Ethernet (0x6558, transparent Ethernet bridging).";
    NotVxlan => "not_vxlan", "Sent to the tunnel endpoint's address but no tunnel packet (VXLAN on UDP 4789, Geneve on UDP 6081, GRE) nor ARP.";
    TunnelUnresolved => "tunnel_unresolved", "The remote tunnel endpoint's underlay MAC is not known yet (an ARP request was sent).";
    TunnelToTunnel => "tunnel_to_tunnel", "Decapsulated frame to a MAC behind another tunnel endpoint: hosts only relay between the overlay and their own ports.";
    HandoffRingFull => "handoff_ring_full", "The worker that owns the output port's queue is behind: the handoff ring to it is full.";
    MetadataNotFromVm => "metadata_not_from_vm", "TCP to the metadata address 169.254.169.254:80 from a port that is not a VM's (an uplink, a tunnel): the proxy names the instance by its port.";
    MetadataRateLimited => "metadata_rate_limited", "The port already sent its share of segments to the metadata proxy this second.";
    Policed => "policed", "QoS: over the port's bandwidth limit (a Neutron bandwidth_limit rule): its token bucket did not hold the frame's bytes.";
    UnknownTrunkVlan => "unknown_trunk_vlan", "Tagged frame on a trunk parent port whose VLAN ID no subport of its trunk has.";
    TooBig => "too_big", "A frame longer than where it goes can carry: a jumbo frame (chained over several buffers) toward a port whose driver sends frames of one buffer only (AF_XDP) or another worker's handoff ring, or a tunnel packet whose outer datagram would pass 64 KiB.";
    FlowHandoffRingFull => "flow_handoff_ring_full", "The worker that owns the packet's flow (its connection or NAT session) is behind: the flow handoff ring to it is full.";
    QueueMoveHoldFull => "queue_move_hold_full", "Sent to a port whose queue is moving to another worker while this worker already held the most frames it keeps for such ports until the move ends.";
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_dense() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
