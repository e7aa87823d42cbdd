//! L3 metering on `mem` ports: what each label counts at the router's external gateway,
//! to the byte, as Neutron's iptables metering driver counts it in the qrouter's filter
//! FORWARD chain: egress before SNAT (the VM's address), ingress after DNAT (a floating
//! IP's or a SNAT reply's destination is the VM's), IPv4 total lengths, excluded rules
//! first, traffic between tenant networks never.

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::metering::{LabelMeterSpec, MeterDirection, MeterMatch};
use pollux_dataplane::port::PortId;
use pollux_dataplane::routing::{InterfaceSpec, RouteSpec, RouterSpec, RouterUid};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;
use pollux_tests::frames::{arp, ipv4, udp, vid_of, BROADCAST};
use pollux_tests::harness::{MemSwitch, POOL_FRAMES};

const NET_A: NetworkUid = NetworkUid(10);
const NET_B: NetworkUid = NetworkUid(20);
const NET_EXT: NetworkUid = NetworkUid(30);
const PHYS: PhysnetId = PhysnetId(1);
const EXT_VID: u16 = 300;

const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const UPLINK: u16 = 9;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
const UPSTREAM_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];

const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM3_IP: [u8; 4] = [198, 18, 1, 11];
const VM2_IP: [u8; 4] = [198, 18, 2, 10];
const GW_A: [u8; 4] = [198, 18, 1, 1];
const GW_B: [u8; 4] = [198, 18, 2, 1];
const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
const UPSTREAM: [u8; 4] = [203, 0, 113, 1];
const VM2_FIP: [u8; 4] = [203, 0, 113, 20];
const INTERNET: [u8; 4] = [203, 0, 113, 200];

/// nat.rs's topology: VM1 and VM3 on A, VM2 (floating IP) on B, the external network
/// tagged on the uplink; the router counts `metering`.
fn config_metered(metering: Vec<LabelMeterSpec>) -> SnapshotBuilder {
    let mtu = 1500;
    let iface = |network, ip: [u8; 4], prefix_len| InterfaceSpec {
        network,
        ip: ip.into(),
        prefix_len,
        mtu: if network == NET_EXT { 1500 } else { mtu },
    };
    let mut b = SnapshotBuilder::new();
    b.network(NET_A, Segment::Local)
        .network(NET_B, Segment::Local)
        .network(
            NET_EXT,
            Segment::Vlan {
                physnet: PHYS,
                vid: EXT_VID,
            },
        )
        .access_port(PortId(VM1), NET_A, &[VM1_MAC])
        .access_port(PortId(VM3), NET_A, &[VM3_MAC])
        .access_port(PortId(VM2), NET_B, &[VM2_MAC])
        .uplink(PortId(UPLINK), PHYS)
        .router(RouterSpec {
            uid: RouterUid(1),
            mac: ROUTER_MAC,
            interfaces: vec![
                iface(NET_A, GW_A, 24),
                iface(NET_B, GW_B, 24),
                // A /25: INTERNET (.200) lies beyond the upstream gateway.
                iface(NET_EXT, ROUTER_EXT, 25),
            ],
            routes: vec![RouteSpec {
                destination: [0, 0, 0, 0].into(),
                prefix_len: 0,
                nexthop: UPSTREAM.into(),
            }],
            external: Some(2),
            enable_snat: true,
            floating_ips: vec![(VM2_IP.into(), VM2_FIP.into())],
            metering,
        });
    b
}

fn switch_of(config: &SnapshotBuilder, conntrack: ConnConfig) -> MemSwitch {
    let mut sw = MemSwitch::with(
        config,
        &[VM1, VM2, VM3, UPLINK],
        WorkerConfig {
            conntrack,
            ..WorkerConfig::default()
        },
        MemPortConfig::default(),
        POOL_FRAMES,
    );
    // Every host announces itself to the router (as a host does when it first asks for
    // its gateway), so no test waits on ARP.
    for (port, mac, ip, gw) in [
        (VM1, VM1_MAC, VM1_IP, GW_A),
        (VM3, VM3_MAC, VM3_IP, GW_A),
        (VM2, VM2_MAC, VM2_IP, GW_B),
    ] {
        let out = sw.exchange(port, &arp(1, BROADCAST, mac, ip, [0; 6], gw));
        assert_eq!(out[&port].len(), 1, "the router answers ARP on {port}");
    }
    let mut upstream = arp(1, BROADCAST, UPSTREAM_MAC, UPSTREAM, [0; 6], ROUTER_EXT);
    tag(&mut upstream);
    let out = sw.exchange(UPLINK, &upstream);
    assert_eq!(out[&UPLINK].len(), 1);
    sw
}

fn tag(frame: &mut Vec<u8>) {
    frame.splice(12..12, [0x81, 0x00, (EXT_VID >> 8) as u8, EXT_VID as u8]);
}

fn prefix(ip: [u8; 4], len: u8) -> Option<(u32, u8)> {
    Some((u32::from_be_bytes(ip), len))
}

const EGRESS: MeterDirection = MeterDirection::Egress;
const INGRESS: MeterDirection = MeterDirection::Ingress;

/// Slot 0: everything of subnet A both ways, but VM3 (excluded). Slot 1: ingress to VM2's
/// fixed IP (its floating IP is translated before the count). Slot 2: ingress to the
/// floating IP itself, which the count never sees. Slot 3: egress from A, counted twice by
/// two rules. Slot 4: a label with only an excluded rule: nothing.
fn labels() -> Vec<LabelMeterSpec> {
    let a = prefix([198, 18, 1, 0], 24);
    vec![
        LabelMeterSpec {
            slot: 0,
            rules: vec![
                (EGRESS, MeterMatch::new(a, None), false),
                (INGRESS, MeterMatch::new(None, a), false),
                (EGRESS, MeterMatch::new(prefix(VM3_IP, 32), None), true),
                (INGRESS, MeterMatch::new(None, prefix(VM3_IP, 32)), true),
            ],
        },
        LabelMeterSpec {
            slot: 1,
            rules: vec![(INGRESS, MeterMatch::new(None, prefix(VM2_IP, 32)), false)],
        },
        LabelMeterSpec {
            slot: 2,
            rules: vec![(INGRESS, MeterMatch::new(None, prefix(VM2_FIP, 32)), false)],
        },
        LabelMeterSpec {
            slot: 3,
            rules: vec![
                (EGRESS, MeterMatch::new(a, None), false),
                (EGRESS, MeterMatch::new(None, prefix(INTERNET, 32)), false),
            ],
        },
        LabelMeterSpec {
            slot: 4,
            rules: vec![(EGRESS, MeterMatch::new(None, None), true)],
        },
    ]
}

/// (ingress packets, ingress bytes, egress packets, egress bytes) of `slot`.
fn counts(sw: &MemSwitch, slot: usize) -> (u64, u64, u64, u64) {
    let c = sw.counters();
    let m = &c.meters[slot];
    (
        m.packets[0].get(),
        m.bytes[0].get(),
        m.packets[1].get(),
        m.bytes[1].get(),
    )
}

fn udp_from(mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, n: usize) -> Vec<u8> {
    let data = vec![0x5a; n];
    ipv4(
        ROUTER_MAC,
        mac,
        None,
        src,
        dst,
        64,
        17,
        &udp(src, dst, sport, dport, &data),
    )
}

fn from_internet(dst: [u8; 4], sport: u16, dport: u16, n: usize) -> Vec<u8> {
    let data = vec![0xa5; n];
    let mut f = ipv4(
        ROUTER_MAC,
        UPSTREAM_MAC,
        None,
        INTERNET,
        dst,
        60,
        17,
        &udp(INTERNET, dst, sport, dport, &data),
    );
    tag(&mut f);
    f
}

/// The one frame `port` emitted.
fn one(out: &std::collections::BTreeMap<u16, Vec<Vec<u8>>>, port: u16) -> Vec<u8> {
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![port],
        "{out:?}"
    );
    assert_eq!(out[&port].len(), 1, "{out:?}");
    let f = out[&port][0].clone();
    if vid_of(&f).is_some() {
        [&f[..12], &f[16..]].concat()
    } else {
        f
    }
}

#[test]
fn labels_count_the_ip_bytes_of_a_traffic_mix_as_iptables_does() {
    let mut sw = switch_of(&config_metered(labels()), ConnConfig::with_capacity(1024));
    // SNAT egress from VM1: 3 datagrams of 100, 200 and 1000 bytes of payload (IP
    // lengths 128, 228, 1028), counted with VM1's address before translation.
    let mut sport = 0;
    for n in [100, 200, 1000] {
        let f = one(
            &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, n)),
            UPLINK,
        );
        assert_eq!(&f[26..30], &ROUTER_EXT, "translated after the count");
        sport = u16::from_be_bytes([f[34], f[35]]);
    }
    assert_eq!(counts(&sw, 0), (0, 0, 3, 128 + 228 + 1028));
    // Two counting rules of one label match: counted twice, as the label chain would.
    assert_eq!(counts(&sw, 3), (0, 0, 6, 2 * (128 + 228 + 1028)));
    // Replies to the gateway address: de-SNATed to VM1 before the ingress count.
    for n in [10, 20] {
        one(
            &sw.exchange(UPLINK, &from_internet(ROUTER_EXT, 53, sport, n)),
            VM1,
        );
    }
    assert_eq!(counts(&sw, 0), (2, 38 + 48, 3, 128 + 228 + 1028));
    // VM3 is excluded from label 0 (both ways), counted by label 3 (no exclusion).
    one(
        &sw.exchange(VM3, &udp_from(VM3_MAC, VM3_IP, 40001, INTERNET, 53, 72)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0).2, 3);
    assert_eq!(counts(&sw, 3), (0, 0, 8, 2 * (128 + 228 + 1028 + 100)));
    // Floating IP ingress: counted against the fixed address, never the floating one.
    for n in [0, 500] {
        one(
            &sw.exchange(UPLINK, &from_internet(VM2_FIP, 1234, 7, n)),
            VM2,
        );
    }
    assert_eq!(counts(&sw, 1), (2, 28 + 528, 0, 0));
    assert_eq!(counts(&sw, 2), (0, 0, 0, 0));
    // Routed between tenant networks: not through the gateway, not counted anywhere.
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40002, VM2_IP, 9, 300)),
        VM2,
    );
    assert_eq!(counts(&sw, 0), (2, 86, 3, 1384));
    assert_eq!(counts(&sw, 1), (2, 556, 0, 0));
    assert_eq!(counts(&sw, 4), (0, 0, 0, 0));
    sw.assert_conserved();
}

#[test]
fn counts_survive_a_snapshot_swap_and_a_router_without_labels_counts_nothing() {
    let mut sw = switch_of(&config_metered(labels()), ConnConfig::with_capacity(1024));
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, 100)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0), (0, 0, 1, 128));
    // A new generation with the same slots: the worker's counters carry on.
    sw.apply(&config_metered(labels()));
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, 100)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0), (0, 0, 2, 256));
    // Without labels the router has no metering at all.
    sw.apply(&config_metered(Vec::new()));
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, 100)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0), (0, 0, 2, 256));
    let snap = config_metered(Vec::new()).build(1).unwrap();
    assert!(snap.routing().routers()[0].metering.is_none());
    sw.assert_conserved();
}
