//! The worker's side of the slow path on `mem` ports: DHCP client messages go up the punt
//! ring (within each port's budget) instead of flooding, ARP for the DHCP server's
//! addresses is answered, replies on the inject ring leave by their port (tagged for an
//! uplink), and everything else behaves as before. Every frame is accounted for.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::port::PortId;
use pollux_dataplane::ratelimit::BucketConfig;
use pollux_dataplane::routing::{InterfaceSpec, RouterSpec, RouterUid};
use pollux_dataplane::slowpath::{
    NetworkService, RingHeader, ServiceId, ServiceMatch, SlowPathConfig, SlowPathEnds,
    RING_HEADER_LEN,
};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::wire::IpProtocol;
use pollux_tests::frames::{arp, icmp_echo, ipv4, mac, udp, vid_of, BROADCAST};
use pollux_tests::harness::MemSwitch;

const NET: NetworkUid = NetworkUid(10);
const NET_VLAN: NetworkUid = NetworkUid(20);
const NET_PLAIN: NetworkUid = NetworkUid(30);
const PHYS: PhysnetId = PhysnetId(1);
const VID: u16 = 120;

const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const UPLINK: u16 = 9;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const SERVER_MAC: [u8; 6] = [0x02, 0x70, 0x64, 0, 0, 10];
const SERVER_MAC_VLAN: [u8; 6] = [0x02, 0x70, 0x64, 0, 0, 20];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];
const SERVER_IP: [u8; 4] = [198, 18, 1, 254];
const SERVER_IP_VLAN: [u8; 4] = [198, 18, 2, 254];
const GW: [u8; 4] = [198, 18, 1, 1];

/// VM1 and VM2 on NET (DHCP, routed), VM3 on NET_PLAIN (no DHCP), NET_VLAN (DHCP) only
/// behind the uplink.
fn config(per_port: Option<BucketConfig>) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .network(
            NET_VLAN,
            Segment::Vlan {
                physnet: PHYS,
                vid: VID,
            },
        )
        .network(NET_PLAIN, Segment::Local)
        .access_port(PortId(VM1), NET, &[VM1_MAC])
        .access_port(PortId(VM2), NET, &[VM2_MAC])
        .access_port(PortId(VM3), NET_PLAIN, &[VM3_MAC])
        .uplink(PortId(UPLINK), PHYS)
        .dhcp_server(NET, SERVER_MAC, &[SERVER_IP.into()])
        .dhcp_server(NET_VLAN, SERVER_MAC_VLAN, &[SERVER_IP_VLAN.into()])
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
    if let Some(limit) = per_port {
        b.slow_path(SlowPathConfig::default().with_per_port(ServiceId::DHCP, limit));
    }
    b
}

fn switch(per_port: Option<BucketConfig>, depth: usize) -> (MemSwitch, SlowPathEnds) {
    let mut sw = MemSwitch::new(&config(per_port), &[VM1, VM2, VM3, UPLINK]);
    let ends = sw.worker.connect_slow_path(depth);
    (sw, ends)
}

/// A minimal DHCPDISCOVER from `mac` (BOOTP header, magic cookie, option 53, end).
fn discover_payload(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut m = vec![0u8; 240];
    m[0] = 1;
    m[1] = 1;
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[28..34].copy_from_slice(&mac);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, 1, 255]);
    m
}

/// The DISCOVER as a client sends it: broadcast, from 0.0.0.0:68 to 255.255.255.255:67.
fn discover(mac: [u8; 6], vid: Option<u16>, xid: u32) -> Vec<u8> {
    let l4 = udp([0; 4], [255; 4], 68, 67, &discover_payload(mac, xid));
    ipv4(BROADCAST, mac, vid, [0; 4], [255; 4], 64, 17, &l4)
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

fn inject(ends: &mut SlowPathEnds, port: u16, network: NetworkUid, frame: &[u8]) {
    let mut entry = vec![0u8; RING_HEADER_LEN];
    RingHeader {
        port: PortId(port),
        network,
        service: ServiceId::DHCP,
        l3_offset: 0,
    }
    .write(&mut entry);
    entry.extend_from_slice(frame);
    assert!(ends.inject.push(&entry));
}

fn drops(sw: &MemSwitch, reason: DropReason) -> u64 {
    sw.counters().drops[reason as usize].get()
}

#[test]
fn dhcp_broadcast_is_punted_not_flooded() {
    let (mut sw, mut ends) = switch(None, 64);
    let frame = discover(VM1_MAC, None, 7);
    let out = sw.exchange(VM1, &frame);
    assert!(out.is_empty(), "nothing floods: {out:?}");
    let p = punted(&mut ends);
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].0,
        RingHeader {
            port: PortId(VM1),
            network: NET,
            service: ServiceId::DHCP,
            l3_offset: 14
        }
    );
    assert_eq!(p[0].1, frame, "the frame goes up unchanged");
    let c = sw.counters();
    assert_eq!((c.punted.get(), c.consumed.get()), (1, 1));
    sw.assert_conserved();
}

#[test]
fn tagged_dhcp_from_the_uplink_is_punted_with_its_network() {
    let (mut sw, mut ends) = switch(None, 64);
    let frame = discover([2, 0, 0, 0, 0, 0x42], Some(VID), 9);
    assert!(sw.exchange(UPLINK, &frame).is_empty());
    let p = punted(&mut ends);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.network, NET_VLAN);
    assert_eq!(p[0].0.port, PortId(UPLINK));
    assert_eq!(p[0].0.l3_offset, 18, "after the 802.1Q tag");
    assert_eq!(p[0].0.service, ServiceId::DHCP);
    sw.assert_conserved();
}

#[test]
fn injected_replies_leave_by_their_port_tagged_for_an_uplink() {
    let (mut sw, mut ends) = switch(None, 64);
    let reply = ipv4(
        VM1_MAC,
        SERVER_MAC,
        None,
        SERVER_IP,
        [198, 18, 1, 10],
        64,
        17,
        &udp(SERVER_IP, [198, 18, 1, 10], 67, 68, &[1, 2, 3]),
    );
    inject(&mut ends, VM1, NET, &reply);
    let vlan_reply = ipv4(
        [2, 0, 0, 0, 0, 0x42],
        SERVER_MAC_VLAN,
        None,
        SERVER_IP_VLAN,
        [255; 4],
        64,
        17,
        &udp(SERVER_IP_VLAN, [255; 4], 67, 68, &[4, 5, 6]),
    );
    inject(&mut ends, UPLINK, NET_VLAN, &vlan_reply);
    sw.run();
    let out = sw.collect();
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM1, UPLINK]);
    assert_eq!(out[&VM1], vec![reply]);
    assert_eq!(vid_of(&out[&UPLINK][0]), Some(VID));
    let c = sw.counters();
    assert_eq!((c.injected.get(), c.originated.get()), (2, 2));
    sw.assert_conserved();
}

#[test]
fn injected_frames_for_gone_ports_or_networks_are_counted_not_sent() {
    let (mut sw, mut ends) = switch(None, 64);
    let frame = ipv4(
        VM1_MAC, SERVER_MAC, None, SERVER_IP, [255; 4], 64, 17, &[0; 8],
    );
    inject(&mut ends, VM3, NET, &frame); // VM3 is not on NET
    inject(&mut ends, VM1, NetworkUid(99), &frame); // no such network
    inject(&mut ends, VM1, NET, &frame[..10]); // not even an Ethernet header
    let tagged = ipv4(
        VM1_MAC,
        SERVER_MAC,
        Some(5),
        SERVER_IP,
        [255; 4],
        64,
        17,
        &[0; 8],
    );
    inject(&mut ends, VM1, NET, &tagged);
    sw.run();
    assert!(sw.collect().is_empty());
    assert_eq!(sw.counters().inject_dropped.get(), 4);
    assert_eq!(sw.counters().injected.get(), 0);
    sw.assert_conserved();
}

#[test]
fn arp_for_the_server_is_answered_other_arp_goes_on() {
    let (mut sw, _ends) = switch(None, 64);
    let vm1_ip = [198, 18, 1, 10];
    // For the DHCP server: answered from its MAC, to the asker only.
    let req = arp(1, BROADCAST, VM1_MAC, vm1_ip, [0; 6], SERVER_IP);
    let out = sw.exchange(VM1, &req);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM1]);
    let r = &out[&VM1][0];
    assert_eq!(&r[0..6], &VM1_MAC);
    assert_eq!(&r[6..12], &SERVER_MAC);
    assert_eq!(&r[20..22], &[0, 2], "a reply");
    assert_eq!(&r[22..28], &SERVER_MAC);
    assert_eq!(&r[28..32], &SERVER_IP);
    assert_eq!(&r[32..38], &VM1_MAC);
    assert_eq!(&r[38..42], &vm1_ip);
    // For the router on the same network: the router answers.
    let out = sw.exchange(VM1, &arp(1, BROADCAST, VM1_MAC, vm1_ip, [0; 6], GW));
    assert_eq!(&out[&VM1][0][6..12], &ROUTER_MAC);
    // For another host: flooded as before.
    let out = sw.exchange(
        VM1,
        &arp(1, BROADCAST, VM1_MAC, vm1_ip, [0; 6], [198, 18, 1, 11]),
    );
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM2]);
    sw.assert_conserved();
}

#[test]
fn unicast_to_the_server_mac_is_dhcp_or_a_drop() {
    let (mut sw, mut ends) = switch(None, 64);
    let vm1_ip = [198, 18, 1, 10];
    // A renewal: unicast to the server.
    let payload = discover_payload(VM1_MAC, 3);
    let renew = ipv4(
        SERVER_MAC,
        VM1_MAC,
        None,
        vm1_ip,
        SERVER_IP,
        64,
        17,
        &udp(vm1_ip, SERVER_IP, 68, 67, &payload),
    );
    assert!(sw.exchange(VM1, &renew).is_empty());
    assert_eq!(punted(&mut ends).len(), 1);
    // A ping to the server: nothing answers it.
    let ping = ipv4(
        SERVER_MAC,
        VM1_MAC,
        None,
        vm1_ip,
        SERVER_IP,
        64,
        1,
        &icmp_echo(false, 1, 1),
    );
    assert!(sw.exchange(VM1, &ping).is_empty());
    assert_eq!(drops(&sw, DropReason::ToDhcpServer), 1);
    // Other UDP broadcasts still flood.
    let other = ipv4(
        BROADCAST,
        VM1_MAC,
        None,
        vm1_ip,
        [255; 4],
        64,
        17,
        &udp(vm1_ip, [255; 4], 5353, 5353, &[0; 4]),
    );
    assert_eq!(
        sw.exchange(VM1, &other).keys().copied().collect::<Vec<_>>(),
        vec![VM2]
    );
    assert!(punted(&mut ends).is_empty());
    sw.assert_conserved();
}

#[test]
fn a_network_without_dhcp_floods_dhcp_as_plain_broadcast() {
    let (mut sw, mut ends) = switch(None, 64);
    // VM3 is alone on its network, so its DISCOVER has nowhere to go.
    let out = sw.exchange(VM3, &discover(VM3_MAC, None, 1));
    assert!(out.is_empty());
    assert_eq!(drops(&sw, DropReason::NoFloodTargets), 1);
    assert!(punted(&mut ends).is_empty());
    sw.assert_conserved();
}

#[test]
fn each_port_has_its_own_budget() {
    let limit = BucketConfig {
        rate_per_sec: 0,
        burst: 3,
    };
    let (mut sw, mut ends) = switch(Some(limit), 64);
    for i in 0..5 {
        sw.send(VM1, &discover(VM1_MAC, None, i));
    }
    sw.run();
    assert_eq!(punted(&mut ends).len(), 3);
    assert_eq!(drops(&sw, DropReason::DhcpRateLimited), 2);
    // The flood from VM1 leaves VM2's budget whole.
    for i in 0..3 {
        sw.send(VM2, &discover(VM2_MAC, None, i));
    }
    sw.run();
    assert_eq!(punted(&mut ends).len(), 3);
    assert_eq!(drops(&sw, DropReason::DhcpRateLimited), 2);
    sw.assert_conserved();
}

#[test]
fn a_full_or_missing_punt_ring_is_a_counted_drop() {
    let (mut sw, mut ends) = switch(None, 2);
    for i in 0..4 {
        sw.send(VM1, &discover(VM1_MAC, None, i));
    }
    sw.run();
    assert_eq!(punted(&mut ends).len(), 2);
    assert_eq!(drops(&sw, DropReason::PuntQueueFull), 2);
    sw.assert_conserved();

    // A worker that was never connected drops them the same way.
    let mut sw = MemSwitch::new(&config(None), &[VM1, VM2, VM3, UPLINK]);
    assert!(sw.exchange(VM1, &discover(VM1_MAC, None, 1)).is_empty());
    assert_eq!(drops(&sw, DropReason::PuntQueueFull), 1);
    sw.assert_conserved();
}

#[test]
fn fragmented_dhcp_is_not_punted() {
    let (mut sw, mut ends) = switch(None, 64);
    // A first fragment of a UDP datagram to port 67: not a message the server can read,
    // so it is flooded as any broadcast.
    let mut frag = discover(VM1_MAC, None, 1);
    frag[20] |= 0x20;
    let sum_off = 24;
    frag[sum_off..sum_off + 2].copy_from_slice(&[0, 0]);
    let sum = pollux_tests::frames::internet_checksum(&frag[14..34]);
    frag[sum_off..sum_off + 2].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(
        sw.exchange(VM1, &frag).keys().copied().collect::<Vec<_>>(),
        vec![VM2]
    );
    assert!(punted(&mut ends).is_empty());
    sw.assert_conserved();
}

#[test]
fn a_client_asking_for_another_ports_mac_is_refused() {
    let (mut sw, mut ends) = switch(None, 64);
    // VM1 sends a DISCOVER whose chaddr is VM2's MAC: the server would answer with VM2's
    // address and options.
    let l4 = udp([0; 4], [255; 4], 68, 67, &discover_payload(VM2_MAC, 1));
    let forged = ipv4(BROADCAST, VM1_MAC, None, [0; 4], [255; 4], 64, 17, &l4);
    assert!(sw.exchange(VM1, &forged).is_empty());
    assert_eq!(drops(&sw, DropReason::DhcpForeignClient), 1);
    // Nor VM2 for VM1's.
    let l4 = udp([0; 4], [255; 4], 68, 67, &discover_payload(VM1_MAC, 2));
    let forged = ipv4(BROADCAST, VM2_MAC, None, [0; 4], [255; 4], 64, 17, &l4);
    assert!(sw.exchange(VM2, &forged).is_empty());
    assert!(punted(&mut ends).is_empty());
    // A MAC no port has (a host behind a bridging VM) is the server's to judge.
    let l4 = udp([0; 4], [255; 4], 68, 67, &discover_payload(mac(0x42), 3));
    let unknown = ipv4(BROADCAST, VM1_MAC, None, [0; 4], [255; 4], 64, 17, &l4);
    sw.exchange(VM1, &unknown);
    assert_eq!(punted(&mut ends).len(), 1);
    assert_eq!(drops(&sw, DropReason::DhcpForeignClient), 2);
    sw.assert_conserved();
}

#[test]
fn the_network_service_table_decides_what_is_punted_and_for_which_service() {
    // The same network, its DHCP entry matching UDP 6767 to one address instead of the
    // usual UDP 67 to anything: the stage follows the table, not a built-in protocol.
    let entry = NetworkService {
        id: ServiceId::DHCP,
        matches: ServiceMatch {
            protocol: IpProtocol::UDP,
            dst_port: 6767,
            dst_addr: Some(SERVER_IP.into()),
        },
        addresses: Box::new([u32::from_be_bytes(SERVER_IP)]),
    };
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .access_port(PortId(VM1), NET, &[VM1_MAC])
        .access_port(PortId(VM2), NET, &[VM2_MAC])
        .service(NET, SERVER_MAC, entry);
    let mut sw = MemSwitch::new(&b, &[VM1, VM2]);
    let mut ends = sw.worker.connect_slow_path(64);
    let vm1_ip = [198, 18, 1, 11];
    let to_server = |dst_port: u16| {
        let l4 = udp(
            vm1_ip,
            SERVER_IP,
            68,
            dst_port,
            &discover_payload(VM1_MAC, 1),
        );
        ipv4(SERVER_MAC, VM1_MAC, None, vm1_ip, SERVER_IP, 64, 17, &l4)
    };
    assert!(sw.exchange(VM1, &to_server(6767)).is_empty());
    let p = punted(&mut ends);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0.service, ServiceId::DHCP);
    // UDP 67 is no longer the service's: to the service MAC it goes nowhere, broadcast it
    // floods as any broadcast.
    assert!(sw.exchange(VM1, &to_server(67)).is_empty());
    assert_eq!(drops(&sw, DropReason::ToDhcpServer), 1);
    assert_eq!(
        sw.exchange(VM1, &discover(VM1_MAC, None, 2))
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![VM2]
    );
    // To another address on the service's port: not the service's either.
    let l4 = udp(vm1_ip, GW, 68, 6767, &[0; 8]);
    let elsewhere = ipv4(SERVER_MAC, VM1_MAC, None, vm1_ip, GW, 64, 17, &l4);
    assert!(sw.exchange(VM1, &elsewhere).is_empty());
    assert_eq!(drops(&sw, DropReason::ToDhcpServer), 2);
    assert!(punted(&mut ends).is_empty());
    let c = sw.counters();
    assert_eq!(c.punted.get(), 1);
    assert_eq!(c.punted_by_service[ServiceId::DHCP.index()].get(), 1);
    assert_eq!(
        c.punted_by_service[1..]
            .iter()
            .map(|c| c.get())
            .sum::<u64>(),
        0
    );
    sw.assert_conserved();
}

#[test]
fn a_service_the_data_plane_does_not_know_or_a_second_mac_is_refused() {
    let dhcp = |id| NetworkService {
        id,
        matches: ServiceMatch::udp(67),
        addresses: Box::new([]),
    };
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .service(NET, SERVER_MAC, dhcp(ServiceId(3)));
    assert!(b.build(1).is_err(), "no such service");
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .service(NET, SERVER_MAC, dhcp(ServiceId::DHCP))
        .service(NET, SERVER_MAC, dhcp(ServiceId::DHCP));
    assert!(b.build(1).is_err(), "one service twice");
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .dhcp_server(NET, SERVER_MAC, &[SERVER_IP.into()])
        .dhcp_server(NET, SERVER_MAC_VLAN, &[SERVER_IP.into()]);
    assert!(b.build(1).is_err(), "two MACs");
}
