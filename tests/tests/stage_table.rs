//! The pipeline as a table of stages: a toy stage added through the table (no other
//! stage's file touched) runs only for the ports whose stage set enables it, its drops are
//! counted per (stage, reason) and per port, and every stage's runtime is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pollux_dataplane::counters::Stage;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::packet::{Next, Packet};
use pollux_dataplane::pipeline::trace::TraceMatch;
use pollux_dataplane::pipeline::{BurstCtx, BurstStage, Outcome, Pending};
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{NetworkUid, Segment, SnapshotBuilder};
use pollux_tests::frames::{frame, ipv4, mac, simple, udp};
use pollux_tests::harness::MemSwitch;

const NET: NetworkUid = NetworkUid(7);
const A: u16 = 1;
const B: u16 = 2;
const C: u16 = 3;

/// A toy firewall: drops classified frames whose payload starts with an odd sequence
/// number, and counts the bursts it saw.
struct OddFilter {
    calls: Arc<AtomicU64>,
}

impl BurstStage for OddFilter {
    fn id(&self) -> Stage {
        Stage::Extension
    }

    fn wants(&self) -> Pending {
        Pending::L2
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut outcome = Outcome {
            packets: 0,
            produced: Pending::L2,
        };
        for pkt in pkts.iter_mut() {
            if pkt.meta.next != Next::L2 {
                continue;
            }
            outcome.packets += 1;
            let l3 = usize::from(pkt.meta.l3_offset);
            let odd = cx.pool.data(pkt).get(l3 + 3).is_some_and(|b| b & 1 == 1);
            if odd {
                pkt.meta.next = Next::Drop(DropReason::NotRoutable, Stage::Extension);
                outcome.produced |= Pending::DONE;
            }
        }
        outcome
    }
}

fn config(filtered: &[u16]) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(NET, Segment::Local)
        .access_port(PortId(A), NET, &[mac(1)])
        .access_port(PortId(B), NET, &[mac(2)])
        .access_port(PortId(C), NET, &[mac(3)]);
    for &p in filtered {
        b.enable_stage(PortId(p), Stage::Extension);
    }
    b
}

fn switch_with_filter(filtered: &[u16]) -> (MemSwitch, Arc<AtomicU64>) {
    let mut sw = MemSwitch::new(&config(filtered), &[A, B, C]);
    let calls = Arc::new(AtomicU64::new(0));
    sw.worker.add_stage(Box::new(OddFilter {
        calls: Arc::clone(&calls),
    }));
    (sw, calls)
}

#[test]
fn toy_stage_runs_only_where_enabled_and_its_drops_are_attributed() {
    let (mut sw, calls) = switch_with_filter(&[A]);
    // From A (filtered): the even frame passes, the odd one is dropped by the toy stage.
    let out = sw.exchange(A, &frame(mac(2), mac(1), None, 2, 64));
    assert_eq!(out[&B].len(), 1);
    let out = sw.exchange(A, &frame(mac(2), mac(1), None, 3, 64));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    // From C (not filtered): the odd frame passes and the toy stage never runs.
    let out = sw.exchange(C, &frame(mac(2), mac(3), None, 3, 64));
    assert_eq!(out[&B].len(), 1);
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    let c = sw.counters();
    assert_eq!(c.dropped(DropReason::NotRoutable), 1);
    assert_eq!(
        c.stage_dropped(Stage::Extension, DropReason::NotRoutable),
        1
    );
    let per_port: Vec<_> = c.port_drops.iter().collect();
    assert_eq!(
        per_port,
        vec![(PortId(A), Stage::Extension, DropReason::NotRoutable, 1)]
    );
    let ext = Stage::Extension as usize;
    assert_eq!(c.stage_calls[ext].get(), 2);
    assert_eq!(c.stage_packets[ext].get(), 2);
    sw.assert_conserved();

    // A new snapshot that no longer enables it: the stage stops running for A.
    sw.apply(&config(&[]));
    let out = sw.exchange(A, &frame(mac(2), mac(1), None, 5, 64));
    assert_eq!(out[&B].len(), 1);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    sw.assert_conserved();
}

#[test]
fn enabling_a_stage_on_an_unknown_port_is_refused() {
    let mut b = config(&[]);
    b.enable_stage(PortId(9), Stage::Extension);
    assert!(b.build(1).is_err());
}

#[test]
fn drops_are_counted_against_the_stage_that_decided_them() {
    let (mut sw, _) = switch_with_filter(&[]);
    // A runt: classification drops it. A frame to its own port's MAC: L2 (hairpin).
    sw.exchange(A, &[0u8; 10]);
    sw.exchange(A, &simple(mac(1), mac(1), None));
    let c = sw.counters();
    assert_eq!(c.stage_dropped(Stage::Classify, DropReason::Runt), 1);
    assert_eq!(c.stage_dropped(Stage::L2, DropReason::Hairpin), 1);
    assert_eq!(c.stage_dropped(Stage::L2, DropReason::Runt), 0);
    let mut per_port: Vec<_> = c.port_drops.iter().collect();
    per_port.sort();
    assert_eq!(
        per_port,
        vec![
            (PortId(A), Stage::Classify, DropReason::Runt, 1),
            (PortId(A), Stage::L2, DropReason::Hairpin, 1),
        ]
    );
    assert_eq!(c.port(PortId(A)).unwrap().rx_dropped.get(), 2);
    sw.assert_conserved();
}

#[test]
fn runtime_counts_calls_packets_and_skips_stages_without_work() {
    let (mut sw, _) = switch_with_filter(&[]);
    for seq in 0..4 {
        sw.send(A, &frame(mac(2), mac(1), None, seq, 64));
    }
    sw.run();
    let c = sw.counters();
    let of = |s: Stage| {
        (
            c.stage_calls[s as usize].get(),
            c.stage_packets[s as usize].get(),
        )
    };
    assert_eq!(of(Stage::Classify), (1, 4));
    assert_eq!(of(Stage::L2), (1, 4));
    assert_eq!(of(Stage::Output), (1, 4));
    // No router, no DHCP server on the network: those stages never ran.
    assert_eq!(of(Stage::L3), (0, 0));
    assert_eq!(of(Stage::SlowPath), (0, 0));
    if cfg!(target_arch = "x86_64") {
        assert!(c.stage_cycles[Stage::L2 as usize].get() > 0);
    }
    sw.assert_conserved();
}

#[test]
fn trace_records_each_stage_and_its_decision_for_the_next_packets_of_a_port() {
    let (mut sw, _) = switch_with_filter(&[]);
    sw.worker.trace_start(PortId(A), 3, TraceMatch::default());
    // Not from A: not traced.
    sw.exchange(C, &frame(mac(2), mac(3), None, 1, 64));
    // From A: switched, hairpin (dropped by L2), a runt (dropped by classification), and
    // a fourth beyond the count.
    sw.send(A, &frame(mac(2), mac(1), None, 2, 64));
    sw.send(A, &simple(mac(1), mac(1), None));
    sw.send(A, &[0u8; 10]);
    sw.send(A, &frame(mac(3), mac(1), None, 3, 64));
    sw.run();
    let trace = sw.worker.trace().expect("trace running");
    assert_eq!(trace.remaining(), 0);
    let steps: Vec<Vec<(Stage, Next)>> = trace
        .records()
        .iter()
        .map(|r| r.steps().iter().map(|s| (s.stage, s.next)).collect())
        .collect();
    assert_eq!(
        steps,
        vec![
            vec![
                (Stage::Classify, Next::L2),
                (Stage::L2, Next::Output(PortId(B))),
                (Stage::Output, Next::Output(PortId(B))),
            ],
            vec![
                (Stage::Classify, Next::L2),
                (Stage::L2, Next::Drop(DropReason::Hairpin, Stage::L2)),
                (Stage::Output, Next::Drop(DropReason::Hairpin, Stage::L2)),
            ],
            vec![
                (
                    Stage::Classify,
                    Next::Drop(DropReason::Runt, Stage::Classify)
                ),
                (Stage::Output, Next::Drop(DropReason::Runt, Stage::Classify)),
            ],
        ]
    );
    assert!(trace.records().iter().all(|r| r.port == PortId(A)));
    assert_eq!(trace.records()[0].generation, 1);
    assert_eq!(trace.records()[2].len, 10);
    let stopped = sw.worker.trace_stop().expect("was running");
    assert_eq!(stopped.records().len(), 3);
    assert!(sw.worker.trace().is_none());
    sw.assert_conserved();
}

#[test]
fn a_trace_with_a_match_records_only_the_packets_it_takes() {
    let (mut sw, _) = switch_with_filter(&[]);
    let dns = TraceMatch {
        proto: Some(17),
        dst_port: Some(53),
        dst_ip: Some((u32::from_be_bytes([198, 18, 1, 0]), 24)),
        ..TraceMatch::default()
    };
    sw.worker.trace_start(PortId(A), 2, dns);
    let to = |dst: [u8; 4], dport: u16| {
        let l4 = udp([198, 18, 1, 10], dst, 40000, dport, b"query");
        ipv4(mac(2), mac(1), None, [198, 18, 1, 10], dst, 64, 17, &l4)
    };
    // In one burst: not UDP, the wrong port, the wrong prefix, then two that match with
    // a non-matching one between them, and a third that matches beyond the count.
    sw.send(A, &simple(mac(2), mac(1), None));
    sw.send(A, &to([198, 18, 1, 20], 54));
    sw.send(A, &to([198, 18, 2, 20], 53));
    sw.send(A, &to([198, 18, 1, 20], 53));
    sw.send(A, &simple(mac(1), mac(1), None));
    sw.send(A, &to([198, 18, 1, 30], 53));
    sw.send(A, &to([198, 18, 1, 40], 53));
    sw.run();
    let trace = sw.worker.trace().expect("trace running");
    assert_eq!(trace.remaining(), 0);
    assert_eq!(trace.records().len(), 2);
    for r in trace.records() {
        // The matched packets' own fates, not their neighbours' in the burst (the
        // hairpin between them was dropped).
        let steps: Vec<(Stage, Next)> = r.steps().iter().map(|s| (s.stage, s.next)).collect();
        assert_eq!(
            steps,
            vec![
                (Stage::Classify, Next::L2),
                (Stage::L2, Next::Output(PortId(B))),
                (Stage::Output, Next::Output(PortId(B))),
            ]
        );
    }
    let empty = TraceMatch::default();
    assert!(empty.matches(&[]), "an empty match takes even a runt");
    assert!(!dns.matches(&[0u8; 10]), "a runt has no fields to match");
    sw.assert_conserved();
}
