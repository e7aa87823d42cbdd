//! The checksum-offload stage through the whole worker on `mem` ports: a TCP or UDP
//! segment whose checksum field holds only the pseudo-header sum (what a Linux sender
//! with TX checksum offload hands to a veth) leaves the switch with its checksum complete,
//! on the ports the snapshot enables the stage for, and only there.

use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, Segment, SnapshotBuilder};
use pollux_tests::frames::{internet_checksum, ipv4, transport_checksum, udp};
use pollux_tests::harness::MemSwitch;

const NET: NetworkUid = NetworkUid(1);
const VM1: u16 = 1;
const VM2: u16 = 2;
const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM1_IP: [u8; 4] = [198, 18, 1, 10];
const VM2_IP: [u8; 4] = [198, 18, 1, 11];

fn config(offload_on_vm1: bool) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .access_port(PortId(VM1), NET, &[VM1_MAC])
        .access_port(PortId(VM2), NET, &[VM2_MAC]);
    if offload_on_vm1 {
        b.enable_stage(PortId(VM1), Stage::ChecksumOffload);
    }
    b
}

/// A UDP datagram from VM1 to VM2 as a sender with checksum offload writes it: the
/// checksum field holds the folded pseudo-header sum, not complemented.
fn partial_udp() -> (Vec<u8>, Vec<u8>) {
    let l4 = udp(VM1_IP, VM2_IP, 40000, 5201, b"offloaded checksum");
    let complete = ipv4(VM2_MAC, VM1_MAC, None, VM1_IP, VM2_IP, 64, 17, &l4);
    let mut partial = complete.clone();
    let len = (l4.len() as u16).to_be_bytes();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&VM1_IP);
    pseudo.extend_from_slice(&VM2_IP);
    pseudo.extend_from_slice(&[0, 17, len[0], len[1]]);
    let sum = !internet_checksum(&pseudo);
    partial[40..42].copy_from_slice(&sum.to_be_bytes());
    (partial, complete)
}

#[test]
fn a_partial_checksum_leaves_complete_where_the_stage_is_on() {
    let (partial, complete) = partial_udp();
    assert_ne!(partial, complete);
    let l4 = &complete[34..];
    assert_eq!(
        transport_checksum(VM1_IP, VM2_IP, 17, l4),
        0,
        "the reference frame's checksum verifies"
    );
    let mut sw = MemSwitch::new(&config(true), &[VM1, VM2]);
    let out = sw.exchange(VM1, &partial);
    assert_eq!(out[&VM2], vec![complete.clone()]);
    assert_eq!(sw.counters().checksums_completed.get(), 1);
    // A complete checksum passes unchanged and is not counted.
    let out = sw.exchange(VM1, &complete);
    assert_eq!(out[&VM2], vec![complete.clone()]);
    assert_eq!(sw.counters().checksums_completed.get(), 1);
    sw.assert_conserved();

    // Without the stage (a port that is not on a kernel interface) nothing is touched.
    let mut sw = MemSwitch::new(&config(false), &[VM1, VM2]);
    let out = sw.exchange(VM1, &partial);
    assert_eq!(out[&VM2], vec![partial]);
    assert_eq!(sw.counters().checksums_completed.get(), 0);
}
