//! QoS through the whole worker on `mem` ports, with the worker's clock held still: a
//! policed port passes exactly its bucket's bytes and drops the rest as `policed`
//! (counted per port, in packets and bytes), refills at its rate to the byte; DSCP marking
//! rewrites what a VM sends with a correct IPv4 checksum; ports without QoS beside them
//! are untouched. Every frame is accounted for.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::qos::PortQos;
use pollux_dataplane::ratelimit::ByteRate;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::wire::checksum;
use pollux_tests::frames::{ipv4, udp};
use pollux_tests::harness::MemSwitch;

const NET: NetworkUid = NetworkUid(10);
const PHYS: PhysnetId = PhysnetId(1);

/// VM1 limited on egress, VM2 without QoS, VM3 limited on ingress, VM4 marking DSCP.
const VM1: u16 = 1;
const VM2: u16 = 2;
const VM3: u16 = 3;
const VM4: u16 = 4;
const UPLINK: u16 = 9;

const fn mac(n: u8) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0, 0, n]
}
const fn ip(n: u8) -> [u8; 4] {
    [198, 18, 1, n]
}

/// 8000 kbit/s is 1_000_000 bytes per second, 1000 per millisecond; 80 kbit of burst is
/// 10_000 bytes: a hundred of [`FRAME_LEN`].
const RATE: ByteRate = ByteRate {
    max_kbps: 8000,
    burst_kbit: 80,
};
const FRAME_LEN: usize = 100;
const EF: u8 = 46;

fn config() -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Flat { physnet: PHYS })
        .uplink(PortId(UPLINK), PHYS);
    for vm in [VM1, VM2, VM3, VM4] {
        b.access_port(PortId(vm), NET, &[mac(vm as u8)]);
    }
    b.qos(
        PortId(VM1),
        PortQos {
            egress: Some(RATE),
            ..PortQos::default()
        },
    )
    .qos(
        PortId(VM3),
        PortQos {
            ingress: Some(RATE),
            ..PortQos::default()
        },
    )
    .qos(
        PortId(VM4),
        PortQos {
            dscp: Some(EF),
            ..PortQos::default()
        },
    );
    b
}

fn switch() -> MemSwitch {
    MemSwitch::new(&config(), &[VM1, VM2, VM3, VM4, UPLINK])
}

/// A UDP frame of exactly [`FRAME_LEN`] bytes from VM `from` to VM `to`.
fn frame(from: u16, to: u16) -> Vec<u8> {
    let (f, t) = (from as u8, to as u8);
    let payload = [0u8; FRAME_LEN - 14 - 20 - 8];
    let f = ipv4(
        mac(t),
        mac(f),
        None,
        ip(f),
        ip(t),
        64,
        17,
        &udp(ip(f), ip(t), 5000, 5001, &payload),
    );
    assert_eq!(f.len(), FRAME_LEN);
    f
}

/// Sends `n` copies of `frame` from `port` (in bursts the ring takes) and returns how many
/// frames reached `to`.
fn blast(sw: &mut MemSwitch, port: u16, to: u16, frame: &[u8], n: usize) -> usize {
    let mut arrived = 0;
    let mut left = n;
    while left > 0 {
        let chunk = left.min(64);
        for _ in 0..chunk {
            sw.send(port, frame);
        }
        sw.run();
        let out = sw.collect();
        arrived += out.get(&to).map_or(0, Vec::len);
        assert!(out.keys().all(|&p| p == to), "only {to} receives: {out:?}");
        left -= chunk;
    }
    arrived
}

#[test]
fn egress_passes_the_burst_to_the_byte_then_the_rate() {
    let mut sw = switch();
    let f = frame(VM1, VM2);
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 250), 100);
    let c = sw.counters();
    let pc = c.port(PortId(VM1)).unwrap();
    assert_eq!(pc.policed_egress_packets.get(), 150);
    assert_eq!(pc.policed_egress_bytes.get(), 150 * FRAME_LEN as u64);
    assert_eq!(c.stage_dropped(Stage::QosEgress, DropReason::Policed), 150);
    assert_eq!(pc.rx_dropped.get(), 150);
    // One millisecond more is 1000 bytes: ten frames, not eleven.
    sw.now_ns += 1_000_000;
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 50), 10);
    // Half a millisecond more is five.
    sw.now_ns += 500_000;
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 50), 5);
    assert_eq!(pc.policed_egress_packets.get(), 150 + 40 + 45);
    // A second idle fills the bucket to its burst, not to a second's worth.
    sw.now_ns += 1_000_000_000;
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 300), 100);
    // The port beside it, unlimited, is untouched at the same instant.
    assert_eq!(blast(&mut sw, VM2, VM1, &frame(VM2, VM1), 300), 300);
    assert_eq!(c.port(PortId(VM2)).unwrap().policed_egress_packets.get(), 0);
    sw.assert_conserved();
}

#[test]
fn ingress_polices_what_the_port_receives_only() {
    let mut sw = switch();
    // To VM3 from two senders: one bucket, VM3's.
    assert_eq!(blast(&mut sw, VM2, VM3, &frame(VM2, VM3), 60), 60);
    assert_eq!(blast(&mut sw, VM1, VM3, &frame(VM1, VM3), 60), 40);
    let c = sw.counters();
    let vm3 = c.port(PortId(VM3)).unwrap();
    assert_eq!(vm3.policed_ingress_packets.get(), 20);
    assert_eq!(vm3.policed_ingress_bytes.get(), 20 * FRAME_LEN as u64);
    assert_eq!(c.stage_dropped(Stage::QosIngress, DropReason::Policed), 20);
    // What VM3 sends is not limited (egress has no rule), nor is VM2 to VM4.
    assert_eq!(blast(&mut sw, VM3, VM2, &frame(VM3, VM2), 300), 300);
    assert_eq!(blast(&mut sw, VM2, VM4, &frame(VM2, VM4), 300), 300);
    sw.now_ns += 2_000_000;
    assert_eq!(blast(&mut sw, VM2, VM3, &frame(VM2, VM3), 60), 20);
    sw.assert_conserved();
}

#[test]
fn dscp_is_rewritten_with_a_correct_checksum_on_egress_only() {
    let mut sw = switch();
    let mut f = frame(VM4, VM2);
    // ECN bits set by the sender survive the rewrite.
    f[15] = 0x01;
    let c = checksum::checksum(&{
        let mut h = f[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let out = sw.exchange(VM4, &f);
    let got = &out[&VM2][0];
    assert_eq!(got[15], (EF << 2) | 0x01);
    assert_eq!(checksum::checksum(&got[14..34]), 0, "IPv4 header checksum");
    let mut expect = f.clone();
    expect[15] = got[15];
    expect[24..26].copy_from_slice(&got[24..26]);
    assert_eq!(got, &expect, "nothing else changed");
    assert_eq!(
        sw.counters().port(PortId(VM4)).unwrap().dscp_marked.get(),
        1
    );
    // To VM4 nothing is marked, from a port without a policy neither.
    let out = sw.exchange(VM2, &frame(VM2, VM4));
    assert_eq!(out[&VM4][0], frame(VM2, VM4));
    sw.assert_conserved();
}

#[test]
fn a_port_without_qos_pays_nothing() {
    let snap = config().build(1).unwrap();
    assert!(snap.port_stages(PortId(VM1)).contains(Stage::QosEgress));
    assert!(snap.port_stages(PortId(VM4)).contains(Stage::QosEgress));
    assert!(!snap.port_stages(PortId(VM2)).contains(Stage::QosEgress));
    assert!(!snap.port_stages(PortId(VM3)).contains(Stage::QosEgress));
    // Ingress limits may be hit from any port, as security groups' ingress.
    assert!(snap.port_stages(PortId(UPLINK)).contains(Stage::QosIngress));
    let mut plain = SnapshotBuilder::new();
    plain
        .network(NET, Segment::Flat { physnet: PHYS })
        .uplink(PortId(UPLINK), PHYS)
        .access_port(PortId(VM1), NET, &[mac(1)]);
    let snap = plain.build(1).unwrap();
    for p in [VM1, UPLINK] {
        let set = snap.port_stages(PortId(p));
        assert!(!set.contains(Stage::QosEgress) && !set.contains(Stage::QosIngress));
    }
    assert!(config()
        .qos(PortId(UPLINK), PortQos::default())
        .build(1)
        .is_err());
}

#[test]
fn a_new_rate_applies_at_once_and_an_unchanged_one_keeps_its_credit() {
    let mut sw = switch();
    let f = frame(VM1, VM2);
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 50), 50);
    // Re-applying the same configuration keeps the 50 frames of credit left.
    sw.apply(&config());
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 100), 50);
    // A new burst starts full.
    let mut bigger = config();
    bigger.qos(
        PortId(VM1),
        PortQos {
            egress: Some(ByteRate {
                max_kbps: 8000,
                burst_kbit: 160,
            }),
            ..PortQos::default()
        },
    );
    sw.apply(&bigger);
    assert_eq!(blast(&mut sw, VM1, VM2, &f, 300), 200);
    sw.assert_conserved();
}
