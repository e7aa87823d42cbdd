//! The worker's side of the metadata proxy on `mem` ports: TCP to 169.254.169.254:80 from
//! a VM port goes up the punt ring with the metadata service id, through the router's MAC
//! (a network the proxy serves through its router) or the DHCP server's (the isolated
//! case); nothing else is taken, nothing from an uplink, and a network without the proxy
//! routes the same frame as any other. Every frame is accounted for.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::port::PortId;
use pollux_dataplane::routing::{InterfaceSpec, RouterSpec, RouterUid};
use pollux_dataplane::slowpath::{
    NetworkService, RingHeader, ServiceId, SlowPathEnds, METADATA_ADDR,
};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{icmp_echo, ipv4, tcp};
use pollux_tests::harness::MemSwitch;

const ROUTED: NetworkUid = NetworkUid(10);
const ISOLATED: NetworkUid = NetworkUid(20);
const PLAIN: NetworkUid = NetworkUid(30);
const PHYS: PhysnetId = PhysnetId(1);

const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const UPLINK: u16 = 9;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];
const SERVER_MAC: [u8; 6] = [0x02, 0x70, 0x64, 0, 0, 20];
const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM2_IP: [u8; 4] = [198, 18, 2, 10];
const VM3_IP: [u8; 4] = [198, 18, 3, 10];
const MD: [u8; 4] = METADATA_ADDR.octets();

fn interface(network: NetworkUid, ip: [u8; 4]) -> InterfaceSpec {
    InterfaceSpec {
        network,
        ip: ip.into(),
        prefix_len: 24,
        mtu: 1500,
    }
}

/// VM1 on ROUTED (router r1, the proxy through it, behind a flat uplink too), VM2 on
/// ISOLATED (a DHCP server carrying the proxy), VM3 on PLAIN (routed by r1, no proxy).
fn switch() -> (MemSwitch, SlowPathEnds) {
    let mut b = SnapshotBuilder::new();
    b.network(ROUTED, Segment::Flat { physnet: PHYS })
        .network(ISOLATED, Segment::Local)
        .network(PLAIN, Segment::Local)
        .access_port(PortId(VM1), ROUTED, &[VM1_MAC])
        .access_port(PortId(VM2), ISOLATED, &[VM2_MAC])
        .access_port(PortId(VM3), PLAIN, &[VM3_MAC])
        .uplink(PortId(UPLINK), PHYS)
        .dhcp_server(ISOLATED, SERVER_MAC, &[[198, 18, 2, 254].into()])
        .service(
            ISOLATED,
            SERVER_MAC,
            NetworkService {
                id: ServiceId::METADATA,
                matches: pollux_dataplane::slowpath::metadata::MATCH,
                addresses: Box::new([u32::from(METADATA_ADDR)]),
            },
        )
        .metadata_via_router(ROUTED)
        .router(RouterSpec {
            uid: RouterUid(1),
            mac: ROUTER_MAC,
            interfaces: vec![
                interface(ROUTED, [198, 18, 1, 1]),
                interface(PLAIN, [198, 18, 3, 1]),
            ],
            external: None,
            enable_snat: false,
            floating_ips: Vec::new(),
            routes: Vec::new(),
            metering: Vec::new(),
        });
    let mut sw = MemSwitch::new(&b, &[VM1, VM2, VM3, UPLINK]);
    let ends = sw.worker.connect_slow_path(64);
    (sw, ends)
}

/// A SYN from `src_ip` to `dst_ip`:`dport`, to the MAC `dst`.
fn syn(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4], dst_ip: [u8; 4], dport: u16) -> Vec<u8> {
    let l4 = tcp(src_ip, dst_ip, 40000, dport, 1, 0, 0x02, 64240, &[]);
    ipv4(dst, src, None, src_ip, dst_ip, 64, 6, &l4)
}

fn punted(ends: &mut SlowPathEnds) -> Vec<(RingHeader, Vec<u8>)> {
    let mut out = Vec::new();
    ends.punt.pop_burst(usize::MAX, |entry| {
        let (h, f) = RingHeader::read(entry).expect("a header");
        out.push((h, f.to_vec()));
        true
    });
    out
}

fn metadata_punts(sw: &MemSwitch) -> u64 {
    sw.counters().punted_by_service[ServiceId::METADATA.index()].get()
}

fn drops(sw: &MemSwitch, reason: DropReason) -> u64 {
    sw.counters().drops[reason as usize].get()
}

#[test]
fn tcp_80_to_the_metadata_address_through_the_router_is_punted_with_the_port() {
    let (mut sw, mut ends) = switch();
    let frame = syn(ROUTER_MAC, VM1_MAC, VM1_IP, MD, 80);
    assert!(sw.exchange(VM1, &frame).is_empty());
    let p = punted(&mut ends);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].0,
        RingHeader {
            port: PortId(VM1),
            network: ROUTED,
            service: ServiceId::METADATA,
            l3_offset: 14
        }
    );
    assert_eq!(p[0].1, frame, "the frame goes up unchanged");
    assert_eq!(metadata_punts(&sw), 1);
    sw.assert_conserved();
}

#[test]
fn other_traffic_to_the_router_mac_is_routed_as_before() {
    let (mut sw, mut ends) = switch();
    // Another port of the metadata address, another protocol: not the proxy's.
    for frame in [
        syn(ROUTER_MAC, VM1_MAC, VM1_IP, MD, 81),
        ipv4(ROUTER_MAC, VM1_MAC, None, VM1_IP, MD, 64, 17, &[0; 8]),
    ] {
        sw.exchange(VM1, &frame);
    }
    assert!(punted(&mut ends).is_empty());
    assert_eq!(
        drops(&sw, DropReason::NoRoute),
        2,
        "routed: r1 has no route there"
    );
    // Routed between the router's networks, ping of the router answered.
    let out = sw.exchange(VM1, &syn(ROUTER_MAC, VM1_MAC, VM1_IP, VM3_IP, 80));
    let asked = &out[&VM3][0];
    assert_eq!(
        &asked[12..14],
        &[0x08, 0x06],
        "the router ARPs for VM3 first"
    );
    let ping = ipv4(
        ROUTER_MAC,
        VM1_MAC,
        None,
        VM1_IP,
        [198, 18, 1, 1],
        64,
        1,
        &icmp_echo(false, 1, 1),
    );
    let out = sw.exchange(VM1, &ping);
    assert_eq!(out[&VM1].len(), 1, "echo reply from the router");
    assert_eq!(metadata_punts(&sw), 0);
    sw.assert_conserved();
}

#[test]
fn a_routed_network_without_the_proxy_routes_the_metadata_address() {
    let (mut sw, mut ends) = switch();
    sw.exchange(VM3, &syn(ROUTER_MAC, VM3_MAC, VM3_IP, MD, 80));
    assert!(punted(&mut ends).is_empty());
    assert_eq!(drops(&sw, DropReason::NoRoute), 1);
    assert_eq!(metadata_punts(&sw), 0);
    sw.assert_conserved();
}

#[test]
fn only_vm_ports_reach_the_proxy() {
    let (mut sw, mut ends) = switch();
    sw.exchange(UPLINK, &syn(ROUTER_MAC, HOST_MAC, [198, 18, 1, 99], MD, 80));
    assert!(punted(&mut ends).is_empty());
    assert_eq!(drops(&sw, DropReason::MetadataNotFromVm), 1);
    sw.assert_conserved();
}

#[test]
fn the_isolated_case_goes_through_the_dhcp_servers_mac() {
    let (mut sw, mut ends) = switch();
    assert!(sw
        .exchange(VM2, &syn(SERVER_MAC, VM2_MAC, VM2_IP, MD, 80))
        .is_empty());
    let p = punted(&mut ends);
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].0.port, p[0].0.service),
        (PortId(VM2), ServiceId::METADATA)
    );
    assert_eq!(p[0].0.network, ISOLATED);
    // Port 81 on the server's MAC is nobody's.
    sw.exchange(VM2, &syn(SERVER_MAC, VM2_MAC, VM2_IP, MD, 81));
    assert_eq!(drops(&sw, DropReason::ToDhcpServer), 1);
    assert_eq!(metadata_punts(&sw), 1);
    sw.assert_conserved();
}
