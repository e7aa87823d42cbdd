//! Thousands of snapshots published under a worker that forwards a steady stream: not one
//! frame lost, reordered or sent anywhere else, and every replaced snapshot freed by the
//! control thread, none by the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_control::workers;
use pollux_dataplane::buf::FramePool;
use pollux_dataplane::port::PortId;
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::snapshot::{
    snapshots_freed_on_this_thread, NetworkUid, PhysnetId, Segment, SnapshotBuilder,
};
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_drivers::mem::{mem_port, MemPortConfig};
use pollux_tests::frames::{frame, mac, seq_of};

const PUBLISHES: u64 = 5_000;
const IN_FLIGHT: u32 = 256;
const DEADLINE: Duration = Duration::from_secs(60);

/// The stream's network and ports stay; everything else changes from one generation to
/// the next, including the number (and so the slots) of other networks.
fn config(variant: u64) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    let physnet = PhysnetId(1);
    b.network(NetworkUid(1), Segment::Vlan { physnet, vid: 10 })
        .uplink(PortId(0), physnet)
        .access_port(PortId(1), NetworkUid(1), &[mac(1)])
        .access_port(PortId(2), NetworkUid(1), &[mac(2)]);
    for n in 0..(variant % 5) {
        let uid = NetworkUid(1000 + n as u32 + variant as u32 * 10);
        b.network(
            uid,
            Segment::Vlan {
                physnet,
                vid: 100 + n as u16,
            },
        )
        .access_port(PortId(10 + n as u16), uid, &[mac(50 + n as u8)]);
    }
    // Port 3 moves between two networks that are not the stream's.
    let other = NetworkUid(2 + (variant % 2) as u32);
    b.network(other, Segment::Local)
        .access_port(PortId(3), other, &[mac(3)]);
    b
}

#[test]
fn thousands_of_swaps_under_a_steady_stream_lose_nothing() {
    let mut publisher = Publisher::new(config(0).build(1).unwrap());
    let ack = publisher.register_worker();
    let pool = FramePool::with_frames(4096).unwrap();
    let mut worker = Worker::new(WorkerConfig::default(), pool, publisher.cell(), ack, 16);
    let ring = MemPortConfig {
        depth: 1024,
        max_frame: 2048,
    };
    let mut wires = Vec::new();
    for id in 0..4 {
        let (port, wire) = mem_port(format!("mem{id}"), ring);
        worker.attach(PortId(id), Box::new(port), &[0]);
        wires.push(wire);
    }
    // Port 1 sends to port 2; the uplink (0) and port 3 must see nothing.
    let mut others = vec![(0, wires.remove(0))];
    let mut from = wires.remove(0);
    let mut to = wires.remove(0);
    others.push((3, wires.remove(0)));
    let counters = worker.counters();
    let thread = workers::spawn(worker, 0, None).expect("worker thread");

    let publishing_done = Arc::new(AtomicBool::new(false));
    let stream_done = Arc::clone(&publishing_done);
    let stream = std::thread::spawn(move || {
        let start = Instant::now();
        let (mut sent, mut received) = (0u32, 0u32);
        let mut misordered = 0u32;
        let mut receive = |received: &mut u32| {
            to.drain(usize::MAX, |f| {
                if seq_of(f) != *received {
                    misordered += 1;
                }
                *received += 1;
            });
        };
        // Keep the stream going until the publisher is done (and at least 100k frames),
        // with a bounded number of frames in flight so no ring can overflow.
        while (sent < 100_000 || !stream_done.load(Ordering::Relaxed)) && start.elapsed() < DEADLINE
        {
            while sent - received < IN_FLIGHT {
                if !from.send(&frame(mac(2), mac(1), None, sent, 64)) {
                    break;
                }
                sent += 1;
            }
            receive(&mut received);
        }
        while received < sent && start.elapsed() < DEADLINE {
            receive(&mut received);
        }
        (sent, received, misordered)
    });

    // Let the stream get going, then swap under it.
    let warm_up = Instant::now();
    while counters.rx_packets.get() < 1000 && warm_up.elapsed() < DEADLINE {
        std::thread::yield_now();
    }
    let forwarded_before = counters.tx_packets.get();
    let start = Instant::now();
    let (mut published, mut adopted) = (0, 0);
    while published < PUBLISHES && start.elapsed() < DEADLINE {
        let generation = publisher.generation() + 1;
        publisher
            .publish(config(generation).build(generation).unwrap())
            .unwrap();
        published += 1;
        // Give the worker the chance to run this generation before the next replaces it,
        // so the stream really crosses thousands of swaps (a worker that is slower simply
        // skips to the newest, which is also correct).
        let wait = Instant::now();
        while counters.generation.get() < generation && wait.elapsed() < Duration::from_millis(5) {
            std::thread::yield_now();
        }
        if counters.generation.get() == generation {
            adopted += 1;
        }
    }
    let forwarded_during = counters.tx_packets.get() - forwarded_before;
    publishing_done.store(true, Ordering::Relaxed);
    let (sent, received, misordered) = stream.join().unwrap();
    let stopped = thread.stop().expect("worker thread did not panic");

    assert_eq!(published, PUBLISHES, "publishing timed out");
    assert!(sent >= 100_000, "stream too short: {sent}");
    assert_eq!(
        received,
        sent,
        "frames lost; worker rx {} tx {} drops {:?}",
        counters.rx_packets.get(),
        counters.tx_packets.get(),
        counters.drop_summary()
    );
    assert_eq!(misordered, 0, "frames reordered");
    assert_eq!(counters.rx_packets.get(), u64::from(sent));
    assert_eq!(counters.tx_packets.get(), u64::from(sent));
    assert_eq!(
        counters.dropped_total(),
        0,
        "drops: {:?}",
        counters.drop_summary()
    );
    for (id, w) in others.iter_mut() {
        assert!(w.recv().is_none(), "port {id} received stream frames");
    }
    // The worker switched generations thousands of times while forwarding, and freed none.
    assert!(
        adopted > PUBLISHES / 2,
        "the worker ran only {adopted} of {PUBLISHES} generations"
    );
    assert!(
        forwarded_during > 1_000,
        "only {forwarded_during} frames forwarded during the swaps"
    );
    assert_eq!(stopped.snapshots_freed, 0, "a worker freed a snapshot");
    // Once the worker is parked, the control thread reclaims every replaced snapshot.
    publisher.reclaim();
    assert_eq!(publisher.retired(), 0);
    assert_eq!(snapshots_freed_on_this_thread(), PUBLISHES);
    assert_eq!(stopped.worker.pool().available(), 4096);
}
