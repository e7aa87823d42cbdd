//! Port security through the whole worker on `mem` ports: what a hostile VM sends from
//! addresses that are not its own is dropped with its reason before L2 learns from it or
//! floods it, nothing reaches the other VMs, legitimate traffic (address pairs, DHCP
//! clients, IPv6 link-local) passes, and a port with port security off is not checked.
//! Every frame is accounted for.

use std::net::{Ipv4Addr, Ipv6Addr};

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::port::PortId;
use pollux_dataplane::port_security::{Ipv4Source, PortSecurity};
use pollux_dataplane::routing::{InterfaceSpec, RouterSpec, RouterUid};
use pollux_dataplane::snapshot::{L2Config, NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::wire::ipv6::link_local_from_mac;
use pollux_tests::frames::{arp, icmp_echo, ipv4, udp, BROADCAST};
use pollux_tests::harness::MemSwitch;

const NET: NetworkUid = NetworkUid(10);
const PHYS: PhysnetId = PhysnetId(1);

/// VM1 and VM2 have port security; VM3 has it off; the uplink carries NET untagged.
const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const UPLINK: u16 = 9;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
/// VM1's address-pair MAC (a VRRP-style virtual MAC) with 198.18.2.0/24 behind it.
const PAIR_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 0x11];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];
const OUTSIDE_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x99];

const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM2_IP: [u8; 4] = [198, 18, 1, 11];
const GW: [u8; 4] = [198, 18, 1, 1];

fn config() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Flat { physnet: PHYS })
        .uplink(PortId(UPLINK), PHYS)
        .access_port(PortId(VM1), NET, &[VM1_MAC, PAIR_MAC])
        .access_port(PortId(VM2), NET, &[VM2_MAC])
        .access_port(PortId(VM3), NET, &[VM3_MAC])
        .port_security(
            PortId(VM1),
            PortSecurity::new(
                &[VM1_MAC, PAIR_MAC],
                &[
                    Ipv4Source::new(VM1_MAC, VM1_IP.into(), 32),
                    Ipv4Source::new(PAIR_MAC, Ipv4Addr::new(198, 18, 2, 0), 24),
                ],
            ),
        )
        .port_security(
            PortId(VM2),
            PortSecurity::new(&[VM2_MAC], &[Ipv4Source::new(VM2_MAC, VM2_IP.into(), 32)]),
        )
        .router(RouterSpec {
            uid: RouterUid(1),
            mac: ROUTER_MAC,
            interfaces: vec![InterfaceSpec {
                network: NET,
                ip: GW.into(),
                prefix_len: 24,
                mtu: 1500,
            }],
            external: None,
            enable_snat: false,
            floating_ips: Vec::new(),
            metering: Vec::new(),
            routes: Vec::new(),
        });
    b
}

fn switch() -> MemSwitch {
    MemSwitch::new(&config(), &[VM1, VM2, VM3, UPLINK])
}

fn drops(sw: &MemSwitch, reason: DropReason) -> u64 {
    sw.counters().dropped(reason)
}

fn ping(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4]) -> Vec<u8> {
    ipv4(
        dst,
        src,
        None,
        src_ip,
        dst_ip,
        64,
        1,
        &icmp_echo(false, 7, 1),
    )
}

fn ipv6_frame(dst: [u8; 6], src: [u8; 6], src_ip: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 255]);
    f.extend_from_slice(&src_ip.octets());
    f.extend_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(l4);
    f
}

/// Sends `frame` from `port` and asserts that nothing leaves any port and that the drop
/// is counted once under `reason`.
fn refused(sw: &mut MemSwitch, port: u16, frame: &[u8], reason: DropReason) {
    let before = drops(sw, reason);
    let out = sw.exchange(port, frame);
    assert!(out.is_empty(), "{reason}: nothing may leave, got {out:?}");
    assert_eq!(drops(sw, reason), before + 1, "{reason} counted once");
    sw.assert_conserved();
}

#[test]
fn own_addresses_pass() {
    let mut sw = switch();
    let out = sw.exchange(VM1, &ping(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM2]);
    // The address pair, from its own MAC, anywhere in its prefix: floods (unknown
    // destination) to every other port.
    let out = sw.exchange(
        VM1,
        &ping(OUTSIDE_MAC, PAIR_MAC, [198, 18, 2, 77], [198, 18, 2, 1]),
    );
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![VM2, VM3, UPLINK]
    );
    // A DHCP client before it has an address.
    let discover = udp([0; 4], [255; 4], 68, 67, &[0; 240]);
    let out = sw.exchange(
        VM1,
        &ipv4(
            BROADCAST, VM1_MAC, None, [0; 4], [255; 4], 64, 17, &discover,
        ),
    );
    assert_eq!(out.len(), 3, "flooded: no DHCP server on this network");
    // IPv6 neighbour solicitation from the MAC's link-local address and a DAD probe (for
    // the port's own link-local address, the target a probe may name).
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&link_local_from_mac(VM1_MAC).octets());
    for src in [link_local_from_mac(VM1_MAC), Ipv6Addr::UNSPECIFIED] {
        let out = sw.exchange(VM1, &ipv6_frame(BROADCAST, VM1_MAC, src, 58, &ns));
        assert_eq!(out.len(), 3, "from {src}");
    }
    assert_eq!(sw.counters().dropped_total(), 0);
    sw.assert_conserved();
}

#[test]
fn a_foreign_source_mac_reaches_nobody_and_is_not_learned() {
    let mut sw = switch();
    // VM1 pretends to be VM2 (to steal its traffic) and a host behind the uplink.
    refused(
        &mut sw,
        VM1,
        &ping(BROADCAST, VM2_MAC, VM2_IP, GW),
        DropReason::SpoofedMac,
    );
    refused(
        &mut sw,
        VM1,
        &ping(VM3_MAC, OUTSIDE_MAC, VM1_IP, VM2_IP),
        DropReason::SpoofedMac,
    );
    // The outside host is then learned on the uplink as usual, not on VM1.
    sw.exchange(UPLINK, &ping(VM3_MAC, OUTSIDE_MAC, [198, 18, 1, 99], GW));
    let out = sw.exchange(VM3, &ping(OUTSIDE_MAC, VM3_MAC, [198, 18, 1, 12], GW));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    assert_eq!(sw.counters().macs_learned.get(), 1);
}

#[test]
fn a_foreign_source_ip_reaches_nobody() {
    let mut sw = switch();
    refused(
        &mut sw,
        VM1,
        &ping(VM2_MAC, VM1_MAC, VM2_IP, VM2_IP),
        DropReason::SpoofedIp,
    );
    // The pair's prefix belongs to the pair MAC, not to the port's own MAC.
    refused(
        &mut sw,
        VM1,
        &ping(VM2_MAC, VM1_MAC, [198, 18, 2, 77], VM2_IP),
        DropReason::SpoofedIp,
    );
    // 0.0.0.0 only for a DHCP client's broadcast.
    refused(
        &mut sw,
        VM1,
        &ping(VM2_MAC, VM1_MAC, [0; 4], VM2_IP),
        DropReason::SpoofedIp,
    );
    // Routed traffic is checked too: nothing reaches the router.
    refused(
        &mut sw,
        VM1,
        &ping(ROUTER_MAC, VM1_MAC, [203, 0, 113, 5], GW),
        DropReason::SpoofedIp,
    );
}

#[test]
fn arp_for_the_gateway_or_a_neighbour_is_refused() {
    let mut sw = switch();
    // A gratuitous ARP claiming the gateway's address, and a reply poisoning VM2's cache.
    refused(
        &mut sw,
        VM1,
        &arp(2, BROADCAST, VM1_MAC, GW, BROADCAST, GW),
        DropReason::SpoofedArp,
    );
    refused(
        &mut sw,
        VM1,
        &arp(2, VM2_MAC, VM1_MAC, [198, 18, 1, 12], VM2_MAC, VM2_IP),
        DropReason::SpoofedArp,
    );
    // The Ethernet source is VM1's, the ARP sender another's.
    let mut forged = arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], VM2_IP);
    forged[22..28].copy_from_slice(&VM3_MAC);
    refused(&mut sw, VM1, &forged, DropReason::SpoofedArp);
    // Its own ARP passes: a request for VM2 floods to the others.
    let out = sw.exchange(VM1, &arp(1, BROADCAST, VM1_MAC, VM1_IP, [0; 6], VM2_IP));
    assert_eq!(out.len(), 3);
    sw.assert_conserved();
}

#[test]
fn rogue_dhcp_and_router_advertisements_reach_nobody() {
    let mut sw = switch();
    let offer = udp(VM1_IP, [255; 4], 67, 68, &[0; 240]);
    refused(
        &mut sw,
        VM1,
        &ipv4(BROADCAST, VM1_MAC, None, VM1_IP, [255; 4], 64, 17, &offer),
        DropReason::DhcpServerFromVm,
    );
    let ll = link_local_from_mac(VM1_MAC);
    refused(
        &mut sw,
        VM1,
        &ipv6_frame(BROADCAST, VM1_MAC, ll, 58, &[134, 0, 0, 0, 64, 0, 0, 0]),
        DropReason::RouterAdvertisementFromVm,
    );
    refused(
        &mut sw,
        VM1,
        &ipv6_frame(BROADCAST, VM1_MAC, ll, 17, &[2, 35, 2, 34, 0, 8, 0, 0]),
        DropReason::DhcpServerFromVm,
    );
    let global: Ipv6Addr = "2001:db8::1".parse().unwrap();
    refused(
        &mut sw,
        VM1,
        &ipv6_frame(BROADCAST, VM1_MAC, global, 58, &[128, 0, 0, 0]),
        DropReason::SpoofedIp,
    );
    // LLDP and other EtherTypes.
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    lldp.extend_from_slice(&VM1_MAC);
    lldp.extend_from_slice(&[0x88, 0xcc]);
    lldp.resize(60, 0);
    refused(&mut sw, VM1, &lldp, DropReason::EthertypeNotPermitted);
}

#[test]
fn port_security_off_checks_nothing() {
    let mut sw = switch();
    // VM3 may bridge other hosts and serve DHCP: every frame goes on.
    let out = sw.exchange(VM3, &ping(BROADCAST, OUTSIDE_MAC, [198, 18, 9, 9], GW));
    assert_eq!(out.len(), 3);
    let offer = udp([198, 18, 1, 12], [255; 4], 67, 68, &[0; 240]);
    let out = sw.exchange(
        VM3,
        &ipv4(
            BROADCAST,
            VM3_MAC,
            None,
            [198, 18, 1, 12],
            [255; 4],
            64,
            17,
            &offer,
        ),
    );
    assert_eq!(out.len(), 3);
    assert_eq!(sw.counters().dropped_total(), 0);
    sw.assert_conserved();
}

#[test]
fn turning_port_security_off_takes_effect_at_the_next_generation() {
    let mut sw = switch();
    let spoof = ping(VM2_MAC, VM1_MAC, [198, 18, 1, 200], VM2_IP);
    refused(&mut sw, VM1, &spoof, DropReason::SpoofedIp);
    let mut open = SnapshotBuilder::new();
    open.network(NET, Segment::Flat { physnet: PHYS })
        .uplink(PortId(UPLINK), PHYS)
        .access_port(PortId(VM1), NET, &[VM1_MAC, PAIR_MAC])
        .access_port(PortId(VM2), NET, &[VM2_MAC])
        .access_port(PortId(VM3), NET, &[VM3_MAC]);
    sw.apply(&open);
    let out = sw.exchange(VM1, &spoof);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM2]);
    sw.apply(&config());
    refused(&mut sw, VM1, &spoof, DropReason::SpoofedIp);
}

#[test]
fn a_mixed_burst_drops_exactly_the_spoofed_frames() {
    let mut sw = switch();
    let good = ping(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP);
    let bad = ping(VM2_MAC, VM1_MAC, VM2_IP, VM1_IP);
    for i in 0..40 {
        sw.send(VM1, if i % 3 == 0 { &bad } else { &good });
    }
    sw.run();
    let out = sw.collect();
    assert_eq!(out[&VM2].len(), 26);
    assert!(out[&VM2].iter().all(|f| *f == good));
    assert_eq!(drops(&sw, DropReason::SpoofedIp), 14);
    sw.assert_conserved();
}

#[test]
fn a_vm_cannot_take_over_a_mac_learned_on_the_uplink() {
    let mut sw = switch();
    // The physical gateway behind the uplink is learned there.
    sw.exchange(UPLINK, &ping(BROADCAST, OUTSIDE_MAC, [198, 18, 1, 254], GW));
    // VM3 (port security off, so its frames reach L2) sends from the gateway's MAC.
    sw.exchange(VM3, &ping(BROADCAST, OUTSIDE_MAC, [198, 18, 1, 254], GW));
    assert_eq!(sw.counters().mac_move_refused.get(), 1);
    // Traffic for the gateway still goes to the uplink, not to VM3.
    let out = sw.exchange(VM2, &ping(OUTSIDE_MAC, VM2_MAC, VM2_IP, [198, 18, 1, 254]));
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![UPLINK]);
    assert_eq!(sw.counters().mac_moves.get(), 0);
    sw.assert_conserved();
}

#[test]
fn a_bridging_vm_learns_only_its_quota_of_macs() {
    let mut b = config();
    b.l2(L2Config {
        mac_limit_per_port: 4,
        ..L2Config::default()
    });
    let mut sw = MemSwitch::new(&b, &[VM1, VM2, VM3, UPLINK]);
    for n in 0..10u8 {
        let src = [0x52, 0x54, 0, 0, 1, n];
        sw.exchange(VM3, &ping(BROADCAST, src, [198, 18, 1, 100 + n], GW));
    }
    let c = sw.counters();
    assert_eq!((c.macs_learned.get(), c.mac_port_limit.get()), (4, 6));
    // The network's other hosts are still learned.
    sw.exchange(UPLINK, &ping(BROADCAST, OUTSIDE_MAC, [198, 18, 1, 254], GW));
    assert_eq!(sw.counters().macs_learned.get(), 5);
    sw.assert_conserved();
}
