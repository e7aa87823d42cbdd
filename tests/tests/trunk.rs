//! Trunk ports (VLAN-aware VMs) through the whole worker on `mem` ports: a frame tagged
//! with a subport's VLAN ID on the parent's interface is the subport's (tag removed, its
//! port security, learning and counters), an untagged one the parent's; frames to a
//! subport leave on the parent's interface with its tag. Exact bytes and counters.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::port_security::{Ipv4Source, PortSecurity};
use pollux_dataplane::snapshot::{NetworkUid, Segment, SnapshotBuilder};
use pollux_tests::frames::{frame, ipv4, mac, udp, untagged, BROADCAST};
use pollux_tests::harness::MemSwitch;

const NET_A: NetworkUid = NetworkUid(10);
const NET_B: NetworkUid = NetworkUid(20);
const NET_C: NetworkUid = NetworkUid(30);

/// VMs with interfaces: one on A, two on B, one on C.
const VM_A: u16 = 1;
const VM_B: u16 = 2;
const VM_B2: u16 = 3;
const VM_C: u16 = 4;
/// The trunk's parent (network A) and its subports, which have no interface: S1 on B by
/// VLAN 100 (with the parent's MAC, as Neutron's subports usually have), S2 on C by VLAN
/// 200 with port security.
const PARENT: u16 = 5;
const S1: u16 = 6;
const S2: u16 = 7;
/// Another VM on A, with an interface (and the highest id, so that counters cover all).
const VM_A2: u16 = 9;

const PARENT_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 5];
const S2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 7];

fn config() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET_A, Segment::Local)
        .network(NET_B, Segment::Local)
        .network(NET_C, Segment::Local)
        .access_port(PortId(VM_A), NET_A, &[mac(VM_A as u8)])
        .access_port(PortId(VM_A2), NET_A, &[mac(VM_A2 as u8)])
        .access_port(PortId(VM_B), NET_B, &[mac(VM_B as u8)])
        .access_port(PortId(VM_B2), NET_B, &[mac(VM_B2 as u8)])
        .access_port(PortId(VM_C), NET_C, &[mac(VM_C as u8)])
        .access_port(PortId(PARENT), NET_A, &[PARENT_MAC])
        .access_port(PortId(S1), NET_B, &[PARENT_MAC])
        .access_port(PortId(S2), NET_C, &[S2_MAC])
        .port_security(
            PortId(S2),
            PortSecurity::new(
                &[S2_MAC],
                &[Ipv4Source::new(
                    S2_MAC,
                    std::net::Ipv4Addr::new(198, 18, 3, 7),
                    32,
                )],
            ),
        )
        .trunk_subport(PortId(PARENT), 100, PortId(S1))
        .trunk_subport(PortId(PARENT), 200, PortId(S2));
    b
}

fn switch() -> MemSwitch {
    MemSwitch::new(&config(), &[VM_A, VM_B, VM_B2, VM_C, PARENT, VM_A2])
}

/// `frame` with an 802.1Q tag of `vid` (PCP 0) after the MACs.
fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
    [&f[..12], &[0x81, 0x00], &vid.to_be_bytes()[..], &f[12..]].concat()
}

#[test]
fn tagged_frames_belong_to_the_subport_and_leave_it_tagged() {
    let mut sw = switch();
    let c = sw.counters();
    // Parent, VLAN 100 → VM_B on network B: the tag is removed.
    let to_b = frame(mac(VM_B as u8), PARENT_MAC, Some(100), 1, 68);
    let out = sw.exchange(PARENT, &to_b);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_B]);
    assert_eq!(out[&VM_B], vec![untagged(&to_b)]);
    let s1 = c.port(PortId(S1)).unwrap();
    let parent = c.port(PortId(PARENT)).unwrap();
    assert_eq!((s1.rx_packets.get(), s1.rx_bytes.get()), (1, 64));
    // The parent's counters are its interface's: the frame as received there.
    assert_eq!((parent.rx_packets.get(), parent.rx_bytes.get()), (1, 68));
    assert_eq!(c.stage_packets[Stage::Trunk as usize].get(), 1);

    // VM_B → the subport's MAC: out on the parent's interface, tagged 100.
    let from_b = frame(PARENT_MAC, mac(VM_B as u8), None, 2, 64);
    let out = sw.exchange(VM_B, &from_b);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![PARENT]);
    assert_eq!(out[&PARENT], vec![tagged(&from_b, 100)]);
    assert_eq!((s1.tx_packets.get(), s1.tx_bytes.get()), (1, 68));
    assert_eq!((parent.tx_packets.get(), parent.tx_bytes.get()), (1, 68));

    // Untagged from the parent is the parent's, on network A, never B's or C's.
    let to_a = frame(mac(VM_A as u8), PARENT_MAC, None, 3, 64);
    let out = sw.exchange(PARENT, &to_a);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_A]);
    assert_eq!(out[&VM_A], vec![to_a.clone()]);
    // A priority tag (VID 0) is the parent's too.
    let prio = [&to_a[..12], &[0x81, 0x00, 0xe0, 0x00][..], &to_a[12..]].concat();
    let out = sw.exchange(PARENT, &prio);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_A]);
    assert_eq!(s1.rx_packets.get(), 1, "no other frame was the subport's");
    assert_eq!(parent.rx_packets.get(), 3);
    sw.assert_conserved();
}

#[test]
fn floods_reach_the_subport_tagged_and_vlan_ids_without_subport_are_dropped() {
    let mut sw = switch();
    let c = sw.counters();
    // A broadcast on C reaches S2 through the parent, tagged 200, and no port of A or B.
    let bcast = frame(BROADCAST, mac(VM_C as u8), None, 7, 64);
    let out = sw.exchange(VM_C, &bcast);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![PARENT]);
    assert_eq!(out[&PARENT], vec![tagged(&bcast, 200)]);

    // A broadcast from the parent tagged 100 floods network B only, untagged.
    let bcast = frame(BROADCAST, PARENT_MAC, Some(100), 8, 68);
    let out = sw.exchange(PARENT, &bcast);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![VM_B, VM_B2]);
    assert_eq!(out[&VM_B], vec![untagged(&bcast)]);
    assert_eq!(out[&VM_B2], vec![untagged(&bcast)]);

    // VLAN 300 is no subport's: dropped by the trunk stage, against the parent.
    let stray = frame(mac(VM_B as u8), PARENT_MAC, Some(300), 9, 68);
    assert!(sw.exchange(PARENT, &stray).is_empty());
    assert_eq!(
        c.stage_dropped(Stage::Trunk, DropReason::UnknownTrunkVlan),
        1
    );
    assert_eq!(c.port(PortId(PARENT)).unwrap().rx_dropped.get(), 1);
    sw.assert_conserved();
}

#[test]
fn the_subport_has_its_own_port_security_and_learning() {
    let mut sw = switch();
    let c = sw.counters();
    // S2 has port security: a frame tagged 200 from a MAC not its own is refused, and
    // counted against S2, not the parent.
    let spoof = frame(mac(VM_C as u8), PARENT_MAC, Some(200), 1, 68);
    assert!(sw.exchange(PARENT, &spoof).is_empty());
    assert_eq!(
        c.stage_dropped(Stage::PortSecurity, DropReason::SpoofedMac),
        1
    );
    assert_eq!(c.port(PortId(S2)).unwrap().rx_dropped.get(), 1);
    assert_eq!(c.port(PortId(PARENT)).unwrap().rx_dropped.get(), 0);

    // S1 has none: a MAC behind it (a container in the VM) is learned on S1, so frames
    // to it leave on the parent tagged 100 and are not flooded to VM_B2.
    let inner = mac(0x42);
    let hello = frame(mac(VM_B as u8), inner, Some(100), 2, 68);
    let out = sw.exchange(PARENT, &hello);
    assert_eq!(out[&VM_B], vec![untagged(&hello)]);
    assert_eq!(c.macs_learned.get(), 1);
    let reply = frame(inner, mac(VM_B as u8), None, 3, 64);
    let out = sw.exchange(VM_B, &reply);
    assert_eq!(out.keys().copied().collect::<Vec<_>>(), vec![PARENT]);
    assert_eq!(out[&PARENT], vec![tagged(&reply, 100)]);

    // One burst mixing the three identities keeps each port's frames in order.
    let frames = [
        frame(mac(VM_B as u8), PARENT_MAC, Some(100), 10, 68),
        frame(mac(VM_A as u8), PARENT_MAC, None, 11, 64),
        frame(mac(VM_B as u8), PARENT_MAC, Some(100), 12, 68),
        // Port security lets S2's own IPv4 through.
        ipv4(
            mac(VM_C as u8),
            S2_MAC,
            Some(200),
            [198, 18, 3, 7],
            [198, 18, 3, 4],
            64,
            17,
            &udp([198, 18, 3, 7], [198, 18, 3, 4], 5000, 5001, &[13; 8]),
        ),
        frame(mac(VM_A as u8), PARENT_MAC, None, 14, 64),
    ];
    for f in &frames {
        sw.send(PARENT, f);
    }
    sw.run();
    let out = sw.collect();
    assert_eq!(out[&VM_B], vec![untagged(&frames[0]), untagged(&frames[2])]);
    assert_eq!(out[&VM_A], vec![frames[1].clone(), frames[4].clone()]);
    assert_eq!(out[&VM_C], vec![untagged(&frames[3])]);
    assert_eq!(out.len(), 3);
    sw.assert_conserved();
}

#[test]
fn the_builder_refuses_inconsistent_trunks() {
    let mut b = config();
    b.trunk_subport(PortId(PARENT), 100, PortId(VM_C));
    assert!(b.build(1).is_err(), "VLAN 100 twice in one trunk");
    let mut b = config();
    b.trunk_subport(PortId(VM_A), 300, PortId(S1));
    assert!(b.build(1).is_err(), "a subport in two trunks");
    let mut b = config();
    b.trunk_subport(PortId(PARENT), 4095, PortId(VM_C));
    assert!(b.build(1).is_err(), "VLAN 4095");
    let mut b = config();
    b.trunk_subport(PortId(S1), 300, PortId(VM_C));
    assert!(b.build(1).is_err(), "a subport as a parent");
}
