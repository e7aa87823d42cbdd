//! Frame capture through the whole worker on `mem` ports: what a port receives (before any
//! rewrite), sends (as it goes on the wire, tag pushed) and drops (with the stage and
//! reason) is copied into the capture ring, cut at the snap length; the capture takes no
//! more than its count, a full ring is counted as lost (the worker never waits), and
//! forwarding is the same with a capture running.

use pollux_dataplane::counters::Stage;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::capture::{capture, CaptureReader, CaptureSpec, Directions};
use pollux_dataplane::pipeline::trace::TraceMatch;
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_tests::frames::{frame, mac};
use pollux_tests::harness::MemSwitch;

const NET: NetworkUid = NetworkUid(100);
const PHYS: PhysnetId = PhysnetId(1);
const UPLINK: u16 = 0;
const A: u16 = 1;
const B: u16 = 2;

fn switch() -> MemSwitch {
    let mut b = SnapshotBuilder::new();
    b.network(
        NET,
        Segment::Vlan {
            physnet: PHYS,
            vid: 100,
        },
    )
    .uplink(PortId(UPLINK), PHYS)
    .access_port(PortId(A), NET, &[mac(1)])
    .access_port(PortId(B), NET, &[mac(2)]);
    MemSwitch::new(&b, &[UPLINK, A, B])
}

/// Everything in the ring: (direction, drop, original length, bytes).
type Seen = Vec<(Directions, Option<(Stage, DropReason)>, u32, Vec<u8>)>;

fn drain(reader: &mut CaptureReader) -> Seen {
    let mut seen = Vec::new();
    reader.drain(usize::MAX, |f| {
        seen.push((f.direction, f.drop, f.orig_len, f.data.to_vec()));
        true
    });
    seen
}

fn start(sw: &mut MemSwitch, port: u16, directions: Directions, count: u64) -> CaptureReader {
    start_matching(sw, port, directions, count, TraceMatch::default())
}

fn start_matching(
    sw: &mut MemSwitch,
    port: u16,
    directions: Directions,
    count: u64,
    filter: TraceMatch,
) -> CaptureReader {
    let (capturer, reader) = capture(CaptureSpec {
        port: PortId(port),
        directions,
        snaplen: 1500,
        count,
        filter,
    });
    sw.worker
        .capture_start(Box::new(capturer))
        .expect("no capture running");
    reader
}

#[test]
fn rx_is_the_frame_as_received_and_tx_the_frame_as_sent() {
    let mut sw = switch();
    // Learn A's and B's MACs, so that what follows is unicast.
    sw.exchange(A, &frame(mac(9), mac(1), None, 0, 64));
    sw.exchange(B, &frame(mac(9), mac(2), None, 0, 64));
    let mut rx = start(&mut sw, A, Directions::RX, 100);
    let untagged = frame(mac(9), mac(1), None, 1, 64);
    let out = sw.exchange(A, &untagged);
    let tagged = out[&UPLINK][0].clone();
    assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x00, 100], "sent tagged");
    assert_eq!(drain(&mut rx), vec![(Directions::RX, None, 64, untagged)]);
    assert!(sw.worker.capture_stop().is_some());

    let mut tx = start(&mut sw, UPLINK, Directions::TX, 100);
    // From B (not captured on receipt: another port), out of the uplink: captured as sent.
    let from_b = frame(mac(9), mac(2), None, 2, 80);
    let out = sw.exchange(B, &from_b);
    let seen = drain(&mut tx);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, Directions::TX);
    assert_eq!(seen[0].2, 84, "the tag is counted in the length sent");
    assert_eq!(
        seen[0].3, out[&UPLINK][0],
        "the bytes that went on the wire"
    );
    assert_eq!((tx.captured(), tx.lost()), (1, 0));
    sw.assert_conserved();
}

#[test]
fn drops_carry_their_stage_and_reason_and_forwarded_frames_are_not_drops() {
    let mut sw = switch();
    let mut reader = start(&mut sw, A, Directions::DROP.with(Directions::RX), 100);
    let hairpin = frame(mac(1), mac(1), None, 1, 64);
    let runt = vec![0u8; 10];
    let passes = frame(mac(9), mac(1), None, 2, 64);
    sw.send(A, &hairpin);
    sw.send(A, &runt);
    sw.send(A, &passes);
    sw.run();
    let seen = drain(&mut reader);
    let rx: Vec<_> = seen.iter().filter(|s| s.0 == Directions::RX).collect();
    let drops: Vec<_> = seen
        .iter()
        .filter(|s| s.0 == Directions::DROP)
        .map(|s| (s.1, s.3.clone()))
        .collect();
    assert_eq!(rx.len(), 3, "every frame received is captured once as rx");
    assert_eq!(
        drops,
        vec![
            (Some((Stage::L2, DropReason::Hairpin)), hairpin),
            (Some((Stage::Classify, DropReason::Runt)), runt),
        ]
    );
    sw.assert_conserved();
}

#[test]
fn snaplen_cuts_and_count_bounds_and_a_full_ring_is_counted_lost() {
    let mut sw = switch();
    let (capturer, mut reader) = capture(CaptureSpec {
        port: PortId(A),
        directions: Directions::RX,
        snaplen: 20,
        count: 2000,
        filter: TraceMatch::default(),
    });
    sw.worker.capture_start(Box::new(capturer)).unwrap();
    let (again, _) = capture(CaptureSpec {
        port: PortId(B),
        directions: Directions::RX,
        snaplen: 20,
        count: 1,
        filter: TraceMatch::default(),
    });
    assert!(
        sw.worker.capture_start(Box::new(again)).is_err(),
        "one capture at a time"
    );
    // Nobody drains: 1500 frames into a ring of 1024 slots.
    for seq in 0..1500 {
        sw.send(A, &frame(mac(9), mac(1), None, seq, 100));
        if seq % 100 == 99 {
            sw.run();
        }
    }
    sw.run();
    sw.collect();
    let ring = pollux_dataplane::pipeline::capture::CAPTURE_RING_DEPTH as u64;
    assert_eq!((reader.captured(), reader.lost()), (ring, 1500 - ring));
    let seen = drain(&mut reader);
    assert_eq!(seen.len() as u64, ring);
    assert!(seen.iter().all(|s| s.2 == 100 && s.3.len() == 20));
    assert_eq!(seen[0].3, frame(mac(9), mac(1), None, 0, 100)[..20]);
    // 500 more frames: only the 500 left of the count of 2000 are taken, and the ring
    // (drained) has room for them.
    for seq in 0..600 {
        sw.send(A, &frame(mac(9), mac(1), None, seq, 100));
        if seq % 100 == 99 {
            sw.run();
        }
    }
    assert_eq!(drain(&mut reader).len(), 500);
    assert_eq!(reader.captured() + reader.lost(), 2000);
    // Forwarding did not suffer: every frame flooded to B and the uplink.
    let out = sw.collect();
    assert_eq!(out[&B].len(), 600);
    sw.assert_conserved();
}

/// A capture with a match takes only the frames that match, as they are where they are
/// copied, and its count counts only those.
#[test]
fn a_match_takes_only_the_matching_frames() {
    let mut sw = switch();
    let filter = TraceMatch {
        dst_mac: Some(mac(9)),
        ..TraceMatch::default()
    };
    let mut reader = start_matching(&mut sw, A, Directions::RX, 2, filter);
    let to_9 = frame(mac(9), mac(1), None, 1, 64);
    let to_8 = frame(mac(8), mac(1), None, 2, 64);
    for f in [&to_8, &to_9, &to_8, &to_9, &to_9] {
        sw.exchange(A, f);
    }
    let seen = drain(&mut reader);
    assert_eq!(
        seen,
        vec![
            (Directions::RX, None, 64, to_9.clone()),
            (Directions::RX, None, 64, to_9)
        ],
        "only frames to mac(9), and only `count` of them"
    );
    assert_eq!((reader.captured(), reader.lost()), (2, 0));
    sw.assert_conserved();
}

/// Drops decided inside the output stage, after the burst's drops were copied, reach the
/// capture too, with their stage and reason: a frame for a configured port that no worker
/// drives (captured on the port it came in on) and frames a full transmit ring refuses
/// (captured on the port they were for).
#[test]
fn drops_decided_in_the_output_stage_are_captured_with_stage_and_reason() {
    const C: u16 = 3;
    let mut b = SnapshotBuilder::new();
    b.network(
        NET,
        Segment::Vlan {
            physnet: PHYS,
            vid: 100,
        },
    )
    .uplink(PortId(UPLINK), PHYS)
    .access_port(PortId(A), NET, &[mac(1)])
    .access_port(PortId(B), NET, &[mac(2)])
    .access_port(PortId(C), NET, &[mac(3)]);
    let ring = pollux_drivers::mem::MemPortConfig {
        depth: 8,
        ..Default::default()
    };
    // C is configured but not attached to the worker.
    let mut sw = MemSwitch::with(
        &b,
        &[UPLINK, A, B],
        pollux_dataplane::worker::WorkerConfig::default(),
        ring,
        pollux_tests::harness::POOL_FRAMES,
    );
    let mut on_a = start(&mut sw, A, Directions::DROP, 100);
    let to_c = frame(mac(3), mac(1), None, 1, 64);
    let out = sw.exchange(A, &to_c);
    assert!(out.values().all(Vec::is_empty), "nothing sent: {out:?}");
    assert_eq!(
        drain(&mut on_a),
        vec![(
            Directions::DROP,
            Some((Stage::Output, DropReason::PortNotAttached)),
            64,
            to_c
        )]
    );
    assert!(sw.worker.capture_stop().is_some());

    // B's wire is never read: its transmit ring fills, then refuses.
    let mut on_b = start(&mut sw, B, Directions::DROP, 100);
    let mut sent = Vec::new();
    for round in 0..3 {
        for seq in 0..6 {
            let f = frame(mac(2), mac(1), None, round * 10 + seq, 64);
            sw.send(A, &f);
            sent.push(f);
        }
        sw.run();
    }
    let refused = sw
        .counters()
        .stage_dropped(Stage::Output, DropReason::TxRingFull);
    assert!(refused > 0, "the ring of 8 took 18 frames");
    let seen = drain(&mut on_b);
    assert_eq!(
        seen.len() as u64,
        refused,
        "every refused frame is captured"
    );
    assert!(seen
        .iter()
        .all(|s| s.0 == Directions::DROP && s.1 == Some((Stage::Output, DropReason::TxRingFull))));
    // The refused frames are the last ones sent, as they were.
    let tail: Vec<Vec<u8>> = sent[sent.len() - seen.len()..].to_vec();
    assert_eq!(seen.into_iter().map(|s| s.3).collect::<Vec<_>>(), tail);
    sw.collect();
    sw.assert_conserved();
}
