//! The router topology the SNAT, floating-IP and metering tests share on `mem` ports:
//! two tenant networks and a tagged external network behind one router, every host's
//! address already known to the router.

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::metering::LabelMeterSpec;
use pollux_dataplane::port::PortId;
use pollux_dataplane::routing::{InterfaceSpec, RouteSpec, RouterSpec, RouterUid};
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;

use crate::frames::{arp, BROADCAST};
use crate::harness::{MemSwitch, POOL_FRAMES};

pub const NET_A: NetworkUid = NetworkUid(10);
pub const NET_B: NetworkUid = NetworkUid(20);
pub const NET_EXT: NetworkUid = NetworkUid(30);
pub const PHYS: PhysnetId = PhysnetId(1);
pub const EXT_VID: u16 = 300;

pub const VM1: u16 = 1;
pub const VM2: u16 = 2;
pub const VM3: u16 = 3;
pub const UPLINK: u16 = 9;

pub const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
pub const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
pub const VM3_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 3];
pub const UPSTREAM_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 1];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x6c, 0, 0, 1];

pub const VM1_IP: [u8; 4] = [198, 18, 1, 10];
pub const VM3_IP: [u8; 4] = [198, 18, 1, 11];
pub const VM2_IP: [u8; 4] = [198, 18, 2, 10];
pub const GW_A: [u8; 4] = [198, 18, 1, 1];
pub const GW_B: [u8; 4] = [198, 18, 2, 1];
pub const ROUTER_EXT: [u8; 4] = [203, 0, 113, 10];
pub const UPSTREAM: [u8; 4] = [203, 0, 113, 1];
pub const VM2_FIP: [u8; 4] = [203, 0, 113, 20];
pub const INTERNET: [u8; 4] = [203, 0, 113, 200];

/// VM1 and VM3 on network A, VM2 (floating IP VM2_FIP) on B, the external network tagged
/// `EXT_VID` on the uplink; one router with SNAT between them, its tenant interfaces at
/// `mtu` (the external one stays at 1500), counting `metering`.
pub fn topology(mtu: u16, metering: Vec<LabelMeterSpec>) -> SnapshotBuilder {
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

/// A switch running `config`, after every host (VMs and the upstream gateway) announced
/// itself to the router, as a host does when it first asks for its gateway, so no test
/// waits on ARP.
pub fn switch_of(config: &SnapshotBuilder, conntrack: ConnConfig) -> MemSwitch {
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

/// `frame` tagged as the external network's frames are on the uplink.
pub fn tag(frame: &mut Vec<u8>) {
    frame.splice(12..12, [0x81, 0x00, (EXT_VID >> 8) as u8, EXT_VID as u8]);
}
