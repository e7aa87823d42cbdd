//! An in-memory switch: one worker with `mem` ports, driven step by step by the test.

use std::collections::BTreeMap;
use std::sync::Arc;

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::port::PortId;
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::snapshot::{Snapshot, SnapshotBuilder};
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_drivers::mem::{mem_port, MemPortConfig, MemWire};

/// Frames in the harness's pool: enough for full rings plus replication.
pub const POOL_FRAMES: u32 = 4096;

/// One worker, its ports' far ends, and the publisher that configures it.
#[derive(Debug)]
pub struct MemSwitch {
    /// The worker under test.
    pub worker: Worker,
    /// The control side.
    pub publisher: Publisher,
    /// Far ends of the ports, by port id.
    pub wires: BTreeMap<u16, MemWire>,
    /// The worker's clock in nanoseconds; tests move it forward by hand.
    pub now_ns: u64,
    next_generation: u64,
}

impl MemSwitch {
    /// A switch running `config` as generation 1, with a mem port for every id in `ports`.
    pub fn new(config: &SnapshotBuilder, ports: &[u16]) -> Self {
        Self::with(
            config,
            ports,
            WorkerConfig::default(),
            MemPortConfig::default(),
            POOL_FRAMES,
        )
    }

    /// As [`MemSwitch::new`] with explicit worker, ring and pool sizes.
    pub fn with(
        config: &SnapshotBuilder,
        ports: &[u16],
        worker_config: WorkerConfig,
        ring: MemPortConfig,
        pool_frames: u32,
    ) -> Self {
        Self::with_snapshot(
            config.build(1).expect("valid test configuration"),
            ports,
            worker_config,
            ring,
            pool_frames,
        )
    }

    /// A switch running `snapshot` (a compiled desired state, say), with explicit worker,
    /// ring and pool sizes.
    pub fn with_snapshot(
        snapshot: Snapshot,
        ports: &[u16],
        worker_config: WorkerConfig,
        ring: MemPortConfig,
        pool_frames: u32,
    ) -> Self {
        let next_generation = snapshot.generation() + 1;
        let mut publisher = Publisher::new(snapshot);
        let ack = publisher.register_worker();
        let pool = FramePool::with_frames(pool_frames).expect("pool");
        let max_ports = ports
            .iter()
            .copied()
            .max()
            .map_or(0, |m| usize::from(m) + 1);
        let mut worker = Worker::new(worker_config, pool, publisher.cell(), ack, max_ports);
        let mut wires = BTreeMap::new();
        for &id in ports {
            let (port, wire) = mem_port(format!("mem{id}"), ring);
            worker.attach(PortId(id), Box::new(port), &[0]);
            wires.insert(id, wire);
        }
        MemSwitch {
            worker,
            publisher,
            wires,
            now_ns: 1_000_000_000,
            next_generation,
        }
    }

    /// Publishes `snapshot` (whose generation must be newer than the running one).
    pub fn publish(&mut self, snapshot: Snapshot) -> u64 {
        self.next_generation = self.next_generation.max(snapshot.generation() + 1);
        self.publisher.publish(snapshot).expect("newer generation")
    }

    /// Publishes `config` as the next generation.
    pub fn apply(&mut self, config: &SnapshotBuilder) -> u64 {
        let snap: Snapshot = config
            .build(self.next_generation)
            .expect("valid test configuration");
        self.next_generation += 1;
        self.publisher.publish(snap).expect("newer generation")
    }

    /// Offers `frame` on port `id`'s wire.
    pub fn send(&mut self, id: u16, frame: &[u8]) {
        assert!(
            self.wires.get_mut(&id).expect("port exists").send(frame),
            "port {id} rx ring full"
        );
    }

    /// Polls until a pass receives nothing; returns the frames received.
    pub fn run(&mut self) -> usize {
        let mut total = 0;
        loop {
            let n = self.worker.poll(self.now_ns);
            total += n;
            if n == 0 {
                return total;
            }
        }
    }

    /// Sends one frame, runs the worker, and returns what every port emitted.
    pub fn exchange(&mut self, id: u16, frame: &[u8]) -> BTreeMap<u16, Vec<Vec<u8>>> {
        self.send(id, frame);
        self.run();
        self.collect()
    }

    /// What every port has emitted since the last call, by port id (ports that emitted
    /// nothing are left out).
    pub fn collect(&mut self) -> BTreeMap<u16, Vec<Vec<u8>>> {
        self.wires
            .iter_mut()
            .map(|(&id, w)| (id, w.recv_all()))
            .filter(|(_, frames)| !frames.is_empty())
            .collect()
    }

    /// The worker's counters.
    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.worker.counters()
    }

    /// Asserts that every frame the worker received is accounted for exactly once and
    /// that no frame leaked from the pool.
    pub fn assert_conserved(&self) {
        let c = self.counters();
        let waiting = self.worker.router().neighbors().pending() as u64;
        assert_eq!(
            c.rx_packets.get() + c.replicas.get() + c.originated.get(),
            c.tx_packets.get() + c.dropped_total() + c.consumed.get() + waiting,
            "conservation: rx {} + replicas {} + originated {} != tx {} + drops {:?} + \
             consumed {} + waiting for ARP {waiting}",
            c.rx_packets.get(),
            c.replicas.get(),
            c.originated.get(),
            c.tx_packets.get(),
            c.drop_summary(),
            c.consumed.get(),
        );
        let pool = self.worker.pool();
        assert_eq!(
            pool.available() + waiting as usize,
            pool.capacity() as usize,
            "frames leaked from the pool"
        );
    }
}
