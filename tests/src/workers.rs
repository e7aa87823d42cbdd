//! An in-memory switch with several workers on threads of their own (unpinned: the tests
//! need not have as many CPUs), each polling the mem ports assigned to it, connected by
//! the handoff rings as polluxd connects its workers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::handoff::mesh;
use pollux_dataplane::port::PortId;
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::snapshot::Snapshot;
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_drivers::mem::{mem_port, MemPortConfig, MemWire};

use crate::harness::POOL_FRAMES;

/// Several workers on threads, the far ends of their ports, and the publisher.
#[derive(Debug)]
pub struct MultiSwitch {
    /// Far ends of the ports, by port id.
    pub wires: BTreeMap<u16, MemWire>,
    /// The worker that polls each port, by port id.
    pub owners: BTreeMap<u16, u16>,
    /// The control side.
    pub publisher: Publisher,
    counters: Vec<Arc<WorkerCounters>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Worker>>,
}

impl MultiSwitch {
    /// `workers` workers running `snapshot`, with a mem port for every id in `ports`,
    /// port `ports[i]` polled by worker `i % workers` (round-robin by queue, a mem port
    /// having one).
    pub fn start(snapshot: Snapshot, ports: &[u16], workers: u16) -> Self {
        Self::start_with(snapshot, ports, workers, MemPortConfig::default())
    }

    /// As [`MultiSwitch::start`] with the mem ports' ring geometry.
    pub fn start_with(
        snapshot: Snapshot,
        ports: &[u16],
        workers: u16,
        ring: MemPortConfig,
    ) -> Self {
        let mut publisher = Publisher::new(snapshot);
        let max_ports = ports
            .iter()
            .copied()
            .max()
            .map_or(0, |m| usize::from(m) + 1);
        let owners: BTreeMap<u16, u16> = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| (p, (i % usize::from(workers)) as u16))
            .collect();
        let mut handoffs = mesh(usize::from(workers), ring.max_frame).into_iter();
        let mut wires = BTreeMap::new();
        let mut built = Vec::new();
        for w in 0..workers {
            let ack = publisher.register_worker();
            let pool = FramePool::with_frames(POOL_FRAMES).expect("pool");
            let config = WorkerConfig {
                id: w,
                ..WorkerConfig::default()
            };
            let mut worker = Worker::new(config, pool, publisher.cell(), ack, max_ports);
            worker.connect_workers(handoffs.next().expect("one end per worker"));
            for (&port, &owner) in &owners {
                if owner == w {
                    let (p, wire) = mem_port(format!("mem{port}"), ring);
                    worker.attach(PortId(port), Box::new(p), &[0]);
                    wires.insert(port, wire);
                } else {
                    worker.set_transmit_owner(PortId(port), Some(owner));
                }
            }
            built.push(worker);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let counters = built.iter().map(Worker::counters).collect();
        let threads = built
            .into_iter()
            .map(|mut worker| {
                let stop = Arc::clone(&stop);
                std::thread::Builder::new()
                    .name(format!("test-worker-{}", worker.id()))
                    .spawn(move || {
                        let epoch = Instant::now();
                        // The clock starts at one second, as the single-worker harness's.
                        worker.run(&stop, || 1_000_000_000 + epoch.elapsed().as_nanos() as u64);
                        worker
                    })
                    .expect("worker thread")
            })
            .collect();
        MultiSwitch {
            wires,
            owners,
            publisher,
            counters,
            stop,
            threads,
        }
    }

    /// Each worker's counters, by worker index.
    pub fn counters(&self) -> &[Arc<WorkerCounters>] {
        &self.counters
    }

    /// Stops the workers and returns them (holding their ports and pools), by index.
    pub fn stop(mut self) -> (Vec<Worker>, BTreeMap<u16, MemWire>) {
        self.stop.store(true, Ordering::Relaxed);
        let workers = self
            .threads
            .drain(..)
            .map(|t| t.join().expect("worker thread"))
            .collect();
        (workers, std::mem::take(&mut self.wires))
    }
}

impl Drop for MultiSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Asserts conservation summed over stopped workers (every frame that came into any
/// worker left it exactly once: sent, dropped, consumed, handed to another) and that no
/// pool lost a frame. Call it once the traffic has drained: a frame still in a handoff
/// ring fails it.
pub fn assert_conserved(workers: &[Worker]) {
    let (mut frames_in, mut frames_out, mut waiting) = (0, 0, 0);
    for w in workers {
        let c = w.counters();
        frames_in += c.frames_in();
        frames_out += c.frames_out();
        let pending = w.router().neighbors().pending() as u64;
        waiting += pending;
        assert_eq!(
            c.frames_in(),
            c.frames_out() + pending,
            "worker {}: conservation: rx {} + replicas {} + originated {} + handed in {} != \
             tx {} + drops {:?} + consumed {} + handed off {} + waiting {pending} (flows \
             handed in {}, off {})",
            w.id(),
            c.rx_packets.get(),
            c.replicas.get(),
            c.originated.get(),
            c.handoffs_received.get(),
            c.tx_packets.get(),
            c.drop_summary(),
            c.consumed.get(),
            c.handoffs.get(),
            c.flow_handoffs_received.get(),
            c.flow_handoffs.get(),
        );
        let pool = w.pool();
        assert_eq!(
            pool.available() + pending as usize,
            pool.capacity() as usize,
            "worker {}: frames leaked from the pool",
            w.id()
        );
    }
    let handed_off: u64 = workers.iter().map(|w| w.counters().handoffs.get()).sum();
    let handed_in: u64 = workers
        .iter()
        .map(|w| w.counters().handoffs_received.get())
        .sum();
    assert_eq!(handed_off, handed_in, "frames left in the handoff rings");
    let flows_off: u64 = workers
        .iter()
        .map(|w| w.counters().flow_handoffs.get())
        .sum();
    let flows_in: u64 = workers
        .iter()
        .map(|w| w.counters().flow_handoffs_received.get())
        .sum();
    assert_eq!(
        flows_off, flows_in,
        "packets left in the flow handoff rings"
    );
    assert_eq!(frames_in, frames_out + waiting);
}
