//! An in-memory Pollux: one pinned worker thread switching between `mem` ports while the
//! main thread plays the VMs and the physical network, swaps the configuration under
//! load, and prints what flowed. Exits non-zero if anything went where it must not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pollux_control::workers;
use pollux_dataplane::buf::FramePool;
use pollux_dataplane::port::PortId;
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::snapshot::{NetworkUid, PhysnetId, Segment, SnapshotBuilder};
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_drivers::mem::{mem_port, MemPortConfig, MemWire};

const PHYSNET: PhysnetId = PhysnetId(1);
const NET_A: NetworkUid = NetworkUid(1);
const NET_B: NetworkUid = NetworkUid(2);
const UPLINK: u16 = 0;
const FRAMES_PER_PATTERN: u32 = 200_000;
const DEADLINE: Duration = Duration::from_secs(30);

fn mac(n: u8) -> [u8; 6] {
    [0xfa, 0x16, 0x3e, 0, 0, n]
}

fn frame(dst: [u8; 6], src: [u8; 6], vid: Option<u16>, seq: u32) -> Vec<u8> {
    let mut f = [dst, src].concat();
    if let Some(vid) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(60, 0);
    f
}

/// Network A (VLAN 100): VMs on ports 1-3. Network B (VLAN 200): VMs on ports 4-5, where
/// port 4 reuses port 1's MAC to show that networks are separate address spaces.
fn config(extra_networks: u32) -> SnapshotBuilder {
    let mut b = SnapshotBuilder::new();
    b.network(
        NET_A,
        Segment::Vlan {
            physnet: PHYSNET,
            vid: 100,
        },
    )
    .network(
        NET_B,
        Segment::Vlan {
            physnet: PHYSNET,
            vid: 200,
        },
    )
    .uplink(PortId(UPLINK), PHYSNET);
    for p in 1..=3 {
        b.access_port(PortId(p), NET_A, &[mac(p as u8)]);
    }
    b.access_port(PortId(4), NET_B, &[mac(1)])
        .access_port(PortId(5), NET_B, &[mac(5)]);
    for n in 0..extra_networks {
        b.network(NetworkUid(100 + n), Segment::Local);
    }
    b
}

struct Pattern {
    name: &'static str,
    input: u16,
    frame: Vec<u8>,
    expect: &'static [u16],
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker_core = (cores > 1).then_some(cores - 1);
    let mut publisher = Publisher::new(config(0).build(1).expect("valid configuration"));
    let ack = publisher.register_worker();
    let pool = FramePool::with_frames(8192).expect("frame pool");
    let mut worker = Worker::new(WorkerConfig::default(), pool, publisher.cell(), ack, 6);
    let mut wires: BTreeMap<u16, MemWire> = BTreeMap::new();
    for id in 0..=5u16 {
        let (port, wire) = mem_port(
            format!("mem{id}"),
            MemPortConfig {
                depth: 4096,
                max_frame: 2048,
            },
        );
        worker.attach(PortId(id), Box::new(port), &[0]);
        wires.insert(id, wire);
    }
    let counters = worker.counters();
    let thread = workers::spawn(worker, 0, worker_core).unwrap_or_else(|e| {
        eprintln!("cannot start the worker: {e}");
        std::process::exit(1);
    });
    println!(
        "pollux in-memory demo: 1 worker on CPU {}, 6 mem ports, VLAN 100 = network A (ports 1-3), VLAN 200 = network B (ports 4-5), uplink = port 0",
        worker_core.map_or("any".to_string(), |c| c.to_string())
    );

    // The physical network first announces a host in each VLAN, so it is learned.
    let outside = [0x02, 0, 0, 0, 0, 0x99];
    wires
        .get_mut(&UPLINK)
        .unwrap()
        .send(&frame([0xff; 6], outside, Some(100), 0));
    wires
        .get_mut(&UPLINK)
        .unwrap()
        .send(&frame([0xff; 6], outside, Some(200), 0));
    std::thread::sleep(Duration::from_millis(50));
    for w in wires.values_mut() {
        w.drain(usize::MAX, |_| {});
    }

    let patterns = [
        Pattern {
            name: "VM to VM, network A (known unicast)",
            input: 1,
            frame: frame(mac(2), mac(1), None, 0),
            expect: &[2],
        },
        Pattern {
            name: "VM to outside host, network B (VLAN 200 push)",
            input: 5,
            frame: frame(outside, mac(5), None, 0),
            expect: &[UPLINK],
        },
        Pattern {
            name: "outside host to VM, network A (VLAN 100 pop)",
            input: UPLINK,
            frame: frame(mac(1), outside, Some(100), 0),
            expect: &[1],
        },
        Pattern {
            name: "broadcast from VM, network B (flood)",
            input: 4,
            frame: frame([0xff; 6], mac(1), None, 0),
            expect: &[UPLINK, 5],
        },
    ];
    let mut failed = false;
    let mut generation = 1;
    for pattern in &patterns {
        let start = Instant::now();
        let mut sent = 0u32;
        let mut got: BTreeMap<u16, u64> = BTreeMap::new();
        let mut next_swap = 20_000;
        let expected_total = u64::from(FRAMES_PER_PATTERN) * pattern.expect.len() as u64;
        while got.values().sum::<u64>() < expected_total && start.elapsed() < DEADLINE {
            if sent < FRAMES_PER_PATTERN {
                let room = (FRAMES_PER_PATTERN - sent).min(256) as usize;
                sent += wires
                    .get_mut(&pattern.input)
                    .unwrap()
                    .send_repeated(&pattern.frame, room) as u32;
            }
            for (&id, w) in wires.iter_mut() {
                let n = w.drain(usize::MAX, |_| {}) as u64;
                if n > 0 {
                    *got.entry(id).or_default() += n;
                }
            }
            // Reconfigure under load now and then: the stream must not notice.
            if sent >= next_swap {
                next_swap += 20_000;
                generation += 1;
                let _ = publisher.publish(
                    config(generation as u32 % 3)
                        .build(generation)
                        .expect("valid"),
                );
            }
        }
        let elapsed = start.elapsed();
        let ok = got.keys().copied().collect::<Vec<_>>() == pattern.expect
            && got.values().all(|&n| n == u64::from(FRAMES_PER_PATTERN));
        failed |= !ok;
        println!(
            "  {:<48} {:>7} frames in, out on ports {:?}: {} ({:.2} Mpps end to end, incl. the generator)",
            pattern.name,
            sent,
            got,
            if ok { "ok" } else { "WRONG" },
            f64::from(sent) / elapsed.as_secs_f64() / 1e6
        );
    }

    let stopped = thread.stop().expect("worker thread panicked");
    publisher.reclaim();
    println!(
        "worker: {} frames received, {} sent, {} flood copies, {} dropped {:?}; {} MACs learned; generation {} ({} swaps under load, {} snapshots left to free)",
        counters.rx_packets.get(),
        counters.tx_packets.get(),
        counters.replicas.get(),
        counters.dropped_total(),
        counters.drop_summary(),
        counters.macs_learned.get(),
        counters.generation.get(),
        generation - 1,
        publisher.retired(),
    );
    let conserved = counters.rx_packets.get() + counters.replicas.get()
        == counters.tx_packets.get() + counters.dropped_total();
    println!(
        "conservation rx + replicas == tx + drops: {}",
        if conserved { "holds" } else { "BROKEN" }
    );
    if failed || !conserved || stopped.snapshots_freed != 0 || counters.dropped_total() != 0 {
        eprintln!("demo FAILED");
        std::process::exit(1);
    }
    println!("demo OK");
}
