//! L2 switching with Neutron semantics on mem ports: isolation between networks, VLAN
//! push/pop on the uplink, static and learned MACs, flooding, aging and table limits.

use pollux_dataplane::counters::Stage;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::snapshot::{L2Config, NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::worker::WorkerConfig;
use pollux_tests::frames::{frame, mac, simple, untagged, vid_of, BROADCAST};
use pollux_tests::harness::MemSwitch;

const PHYS: PhysnetId = PhysnetId(1);
const NET_A: NetworkUid = NetworkUid(100); // VLAN 100 on the uplink
const NET_B: NetworkUid = NetworkUid(200); // VLAN 200 on the uplink
const NET_C: NetworkUid = NetworkUid(300); // flat on the uplink
const NET_D: NetworkUid = NetworkUid(400); // local only

const UPLINK: u16 = 0;
const A1: u16 = 1;
const A2: u16 = 2;
const B1: u16 = 3;
const C1: u16 = 4;
const D1: u16 = 5;
const D2: u16 = 6;

/// A2 and B1 share one MAC: each network is its own address space.
fn topology() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(
        NET_A,
        Segment::Vlan {
            physnet: PHYS,
            vid: 100,
        },
    )
    .network(
        NET_B,
        Segment::Vlan {
            physnet: PHYS,
            vid: 200,
        },
    )
    .network(NET_C, Segment::Flat { physnet: PHYS })
    .network(NET_D, Segment::Local)
    .uplink(pollux_dataplane::port::PortId(UPLINK), PHYS)
    .access_port(port(A1), NET_A, &[mac(1)])
    .access_port(port(A2), NET_A, &[mac(2)])
    .access_port(port(B1), NET_B, &[mac(2)])
    .access_port(port(C1), NET_C, &[mac(4)])
    .access_port(port(D1), NET_D, &[mac(5)])
    .access_port(port(D2), NET_D, &[mac(6)]);
    b
}

fn port(id: u16) -> pollux_dataplane::port::PortId {
    pollux_dataplane::port::PortId(id)
}

fn switch() -> MemSwitch {
    MemSwitch::new(&topology(), &[UPLINK, A1, A2, B1, C1, D1, D2])
}

fn ports_of(out: &std::collections::BTreeMap<u16, Vec<Vec<u8>>>) -> Vec<u16> {
    out.keys().copied().collect()
}

#[test]
fn known_unicast_goes_to_one_port_unchanged() {
    let mut sw = switch();
    let f = simple(mac(2), mac(1), None);
    let out = sw.exchange(A1, &f);
    assert_eq!(out.len(), 1);
    assert_eq!(out[&A2], vec![f]);
    sw.assert_conserved();
}

#[test]
fn same_mac_in_two_networks_stays_apart() {
    let mut sw = switch();
    // mac(2) is A2 in network A and B1 in network B.
    let out = sw.exchange(A1, &simple(mac(2), mac(1), None));
    assert_eq!(ports_of(&out), vec![A2]);
    let out = sw.exchange(UPLINK, &simple(mac(2), mac(9), Some(200)));
    assert_eq!(ports_of(&out), vec![B1]);
    assert_eq!(vid_of(&out[&B1][0]), None, "popped on the way to the VM");
    let out = sw.exchange(UPLINK, &simple(mac(2), mac(9), Some(100)));
    assert_eq!(ports_of(&out), vec![A2]);
    sw.assert_conserved();
}

#[test]
fn broadcast_floods_its_network_only_and_never_back() {
    let mut sw = switch();
    let f = simple(BROADCAST, mac(1), None);
    let out = sw.exchange(A1, &f);
    assert_eq!(ports_of(&out), vec![UPLINK, A2]);
    assert_eq!(out[&A2], vec![f.clone()]);
    assert_eq!(vid_of(&out[&UPLINK][0]), Some(100));
    assert_eq!(untagged(&out[&UPLINK][0]), f);

    let out = sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(200)));
    assert_eq!(ports_of(&out), vec![B1]);
    let out = sw.exchange(UPLINK, &simple(BROADCAST, mac(9), None));
    assert_eq!(ports_of(&out), vec![C1]);
    let out = sw.exchange(D1, &simple(BROADCAST, mac(5), None));
    assert_eq!(
        ports_of(&out),
        vec![D2],
        "a local network never reaches the uplink"
    );
    // Multicast and unknown unicast flood the same way.
    let out = sw.exchange(A2, &simple([0x01, 0x00, 0x5e, 0, 0, 1], mac(2), None));
    assert_eq!(ports_of(&out), vec![UPLINK, A1]);
    let out = sw.exchange(A2, &simple(mac(77), mac(2), None));
    assert_eq!(ports_of(&out), vec![UPLINK, A1]);
    assert_eq!(sw.counters().replicas.get(), 3);
    sw.assert_conserved();
}

#[test]
fn vlan_push_and_pop_are_exact() {
    let mut sw = switch();
    // Learn mac(9) behind the uplink in network A first so the reply is unicast.
    let from_phys = frame(mac(1), mac(9), Some(100), 7, 100);
    let out = sw.exchange(UPLINK, &from_phys);
    assert_eq!(
        out[&A1],
        vec![untagged(&from_phys)],
        "pop keeps every other byte"
    );
    let to_phys = frame(mac(9), mac(1), None, 8, 100);
    let out = sw.exchange(A1, &to_phys);
    assert_eq!(ports_of(&out), vec![UPLINK]);
    let tagged = &out[&UPLINK][0];
    assert_eq!(tagged.len(), to_phys.len() + 4);
    assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 100]);
    assert_eq!(untagged(tagged), to_phys);
    // A re-tag keeps the priority bits.
    let prio = {
        let mut f = simple(BROADCAST, mac(9), Some(100));
        f[14] |= 0xa0;
        f
    };
    let out = sw.exchange(UPLINK, &prio);
    assert_eq!(ports_of(&out), vec![A1, A2]);
    sw.assert_conserved();
}

#[test]
fn learned_macs_are_per_network_and_used_for_unicast() {
    let mut sw = switch();
    // The same outside MAC appears on VLAN 100 and VLAN 200.
    sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(100)));
    sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(200)));
    assert_eq!(sw.counters().macs_learned.get(), 2);
    let out = sw.exchange(A1, &simple(mac(9), mac(1), None));
    assert_eq!(ports_of(&out), vec![UPLINK]);
    assert_eq!(vid_of(&out[&UPLINK][0]), Some(100));
    let out = sw.exchange(B1, &simple(mac(9), mac(2), None));
    assert_eq!(ports_of(&out), vec![UPLINK]);
    assert_eq!(vid_of(&out[&UPLINK][0]), Some(200));
    // Network D never saw mac(9): it floods there, within D only.
    let out = sw.exchange(D1, &simple(mac(9), mac(5), None));
    assert_eq!(ports_of(&out), vec![D2]);
    sw.assert_conserved();
}

#[test]
fn a_mac_moves_from_a_vm_port_to_the_uplink_but_never_back() {
    let mut sw = switch();
    // mac(9) first sends from A1 (a VM without port security using a second MAC).
    sw.exchange(A1, &simple(BROADCAST, mac(9), None));
    let out = sw.exchange(A2, &simple(mac(9), mac(2), None));
    assert_eq!(ports_of(&out), vec![A1]);
    // It moves behind the uplink (the host migrated).
    sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(100)));
    assert_eq!(sw.counters().mac_moves.get(), 1);
    let out = sw.exchange(A2, &simple(mac(9), mac(2), None));
    assert_eq!(ports_of(&out), vec![UPLINK]);
    // A VM sending from a MAC learned on the uplink (a physical gateway's, say) does not
    // take it over: the host behind the uplink keeps its traffic.
    sw.exchange(A1, &simple(BROADCAST, mac(9), None));
    assert_eq!(sw.counters().mac_moves.get(), 1);
    assert_eq!(sw.counters().mac_move_refused.get(), 1);
    let out = sw.exchange(A2, &simple(mac(9), mac(2), None));
    assert_eq!(ports_of(&out), vec![UPLINK]);
    sw.assert_conserved();
}

#[test]
fn static_vm_macs_cannot_be_stolen() {
    let mut sw = switch();
    // Someone behind the uplink spoofs A2's MAC.
    sw.exchange(UPLINK, &simple(BROADCAST, mac(2), Some(100)));
    assert_eq!(sw.counters().macs_learned.get(), 0);
    let out = sw.exchange(A1, &simple(mac(2), mac(1), None));
    assert_eq!(ports_of(&out), vec![A2]);
    sw.assert_conserved();
}

#[test]
fn a_learned_mac_that_becomes_a_vm_port_follows_the_config() {
    let mut sw = switch();
    sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(100)));
    // The VM migrates to this host: a new generation gives A2 that MAC too.
    let mut next = topology();
    next.access_port(port(7), NET_A, &[mac(9)]);
    let (p7, w7) = pollux_drivers::mem::mem_port("mem7", Default::default());
    sw.worker.attach(port(7), Box::new(p7), &[0]);
    sw.wires.insert(7, w7);
    sw.apply(&next);
    let out = sw.exchange(A1, &simple(mac(9), mac(1), None));
    assert_eq!(ports_of(&out), vec![7]);
    sw.assert_conserved();
}

#[test]
fn learned_state_survives_a_swap_but_not_a_reused_slot() {
    let mut sw = switch();
    sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(100)));
    // An unrelated change keeps the entry.
    let mut next = topology();
    next.network(NetworkUid(500), Segment::Local);
    sw.apply(&next);
    let out = sw.exchange(A1, &simple(mac(9), mac(1), None));
    assert_eq!(ports_of(&out), vec![UPLINK]);
    // Replace network A by a new network on the same VLAN (same slot, new identity):
    // the old network's learned MAC must not steer the new network's traffic.
    let mut b = SnapshotBuilder::new();
    b.network(
        NetworkUid(99),
        Segment::Vlan {
            physnet: PHYS,
            vid: 100,
        },
    )
    .uplink(port(UPLINK), PHYS)
    .access_port(port(A1), NetworkUid(99), &[mac(1)])
    .access_port(port(A2), NetworkUid(99), &[mac(2)]);
    sw.apply(&b);
    let out = sw.exchange(A1, &simple(mac(9), mac(1), None));
    assert_eq!(ports_of(&out), vec![UPLINK, A2], "unknown again: flooded");
    sw.assert_conserved();
}

#[test]
fn learned_macs_age_out() {
    let mut b = topology();
    b.l2(L2Config {
        mac_aging_secs: 10,
        ..L2Config::default()
    });
    let mut sw = MemSwitch::new(&b, &[UPLINK, A1, A2, B1, C1, D1, D2]);
    sw.exchange(UPLINK, &simple(BROADCAST, mac(9), Some(100)));
    sw.now_ns += 9_000_000_000;
    sw.run();
    assert_eq!(sw.worker.macs().len(), 1, "still fresh");
    sw.now_ns += 2_000_000_000;
    // Aging sweeps a bounded part of the table per housekeeping round, one per interval.
    for _ in 0..1000 {
        sw.now_ns += WorkerConfig::default().housekeeping_interval_ns;
        sw.run();
    }
    assert_eq!(sw.worker.macs().len(), 0);
    assert_eq!(sw.counters().macs_aged.get(), 1);
    let out = sw.exchange(A1, &simple(mac(9), mac(1), None));
    assert_eq!(ports_of(&out), vec![UPLINK, A2]);
    sw.assert_conserved();
}

#[test]
fn per_network_mac_limit_counts_and_floods() {
    let mut b = topology();
    b.l2(L2Config {
        mac_limit_per_network: 2,
        ..L2Config::default()
    });
    let mut sw = MemSwitch::new(&b, &[UPLINK, A1, A2, B1, C1, D1, D2]);
    for n in 20..23 {
        sw.exchange(UPLINK, &simple(BROADCAST, mac(n), Some(100)));
    }
    assert_eq!(sw.counters().macs_learned.get(), 2);
    assert_eq!(sw.counters().mac_table_full.get(), 1);
    // Network B still learns: the quota is per network.
    sw.exchange(UPLINK, &simple(BROADCAST, mac(30), Some(200)));
    assert_eq!(sw.counters().macs_learned.get(), 3);
    let out = sw.exchange(A1, &simple(mac(22), mac(1), None));
    assert_eq!(ports_of(&out), vec![UPLINK, A2], "the unlearned MAC floods");
    sw.assert_conserved();
}

#[test]
fn bad_frames_are_counted_drops() {
    let mut sw = switch();
    let cases: Vec<(u16, Vec<u8>, DropReason)> = vec![
        (A1, vec![0; 13], DropReason::Runt),
        (
            A1,
            simple(mac(2), mac(1), Some(100)),
            DropReason::TaggedOnAccess,
        ),
        (
            A1,
            simple(mac(2), [0x01, 0, 0, 0, 0, 1], None),
            DropReason::SrcMacMulticast,
        ),
        (A1, simple(mac(1), mac(1), None), DropReason::Hairpin),
        (
            UPLINK,
            simple(BROADCAST, mac(9), Some(300)),
            DropReason::UnknownVlan,
        ),
        (
            UPLINK,
            simple(mac(1), mac(9), Some(100))[..16].to_vec(),
            DropReason::TruncatedVlan,
        ),
        (
            UPLINK,
            {
                let mut f = simple(BROADCAST, mac(9), Some(100));
                f[12..14].copy_from_slice(&[0x88, 0xa8]);
                f
            },
            DropReason::StackedVlan,
        ),
    ];
    for (input, f, reason) in cases {
        let before = sw.counters().dropped(reason);
        let rx_dropped = |sw: &MemSwitch| sw.counters().port(port(input)).unwrap().rx_dropped.get();
        let rx_dropped_before = rx_dropped(&sw);
        let out = sw.exchange(input, &f);
        assert!(out.is_empty(), "{reason}: nothing may leave, got {out:?}");
        assert_eq!(sw.counters().dropped(reason), before + 1, "{reason}");
        assert_eq!(
            rx_dropped(&sw),
            rx_dropped_before + 1,
            "{reason}: the drop counts against the port it came from"
        );
    }
    // Per-stage counters: all seven entered classification, only the hairpin reached L2.
    let stages = &sw.counters().stage_packets;
    assert_eq!(stages[Stage::Classify as usize].get(), 7);
    assert_eq!(stages[Stage::L2 as usize].get(), 1);
    assert_eq!(
        stages[Stage::Output as usize].get() + stages[Stage::Flood as usize].get(),
        0
    );
    sw.assert_conserved();
}

#[test]
fn a_port_outside_the_config_and_a_physnet_without_flat_network_drop() {
    let mut b = SnapshotBuilder::new();
    b.network(
        NET_A,
        Segment::Vlan {
            physnet: PHYS,
            vid: 100,
        },
    )
    .uplink(port(UPLINK), PHYS)
    .access_port(port(A1), NET_A, &[mac(1)]);
    let mut sw = MemSwitch::new(&b, &[UPLINK, A1, A2]);
    assert!(sw
        .exchange(UPLINK, &simple(BROADCAST, mac(9), None))
        .is_empty());
    assert_eq!(sw.counters().dropped(DropReason::NoFlatNetwork), 1);
    assert!(sw.exchange(A2, &simple(BROADCAST, mac(2), None)).is_empty());
    assert_eq!(sw.counters().dropped(DropReason::PortNotConfigured), 1);
    // A port configured but with no driver on this worker.
    b.access_port(port(9), NET_A, &[mac(99)]);
    sw.apply(&b);
    assert!(sw.exchange(A1, &simple(mac(99), mac(1), None)).is_empty());
    assert_eq!(sw.counters().dropped(DropReason::PortNotAttached), 1);
    sw.assert_conserved();
}

#[test]
fn a_full_transmit_ring_is_a_counted_drop() {
    use pollux_drivers::mem::MemPortConfig;
    let ring = MemPortConfig {
        depth: 4,
        max_frame: 2048,
    };
    let mut sw = MemSwitch::with(
        &topology(),
        &[UPLINK, A1, A2],
        Default::default(),
        ring,
        256,
    );
    for seq in 0..4 {
        sw.send(A1, &frame(mac(2), mac(1), None, seq, 64));
    }
    sw.run();
    for seq in 4..6 {
        sw.send(A1, &frame(mac(2), mac(1), None, seq, 64));
    }
    sw.run();
    assert_eq!(sw.counters().dropped(DropReason::TxRingFull), 2);
    assert_eq!(sw.collect()[&A2].len(), 4);
    sw.assert_conserved();
}

#[test]
fn learning_inside_a_burst_updates_later_decisions_in_it() {
    let mut sw = switch();
    // One burst from the uplink: X to an unknown M (flooded), M broadcasts from the uplink
    // (learned there), then X to M again: now a hairpin, not a flood.
    let x = mac(60);
    let m = mac(61);
    sw.send(UPLINK, &frame(m, x, Some(100), 1, 64));
    sw.send(UPLINK, &frame(BROADCAST, m, Some(100), 2, 64));
    sw.send(UPLINK, &frame(m, x, Some(100), 3, 64));
    assert_eq!(sw.run(), 3, "one burst");
    let out = sw.collect();
    let seqs = |port: u16| -> Vec<u32> {
        out.get(&port).map_or(vec![], |f| {
            f.iter().map(|f| pollux_tests::frames::seq_of(f)).collect()
        })
    };
    assert_eq!(seqs(A1), vec![1, 2], "the third frame was not flooded");
    assert_eq!(seqs(A2), vec![1, 2]);
    assert_eq!(
        sw.counters().dropped(DropReason::Hairpin),
        1,
        "X and M are both behind the uplink"
    );
    sw.assert_conserved();
}
