//! The worker: a poll-mode loop over its receive queues, in the manner of an OVS PMD
//! thread. Each pass takes the active snapshot once, runs every receive burst through the
//! stages, flushes the transmit batches, and acknowledges the generation it ran.
//!
//! Whatever else must change inside a running worker (ports opened and closed, tables
//! read for the CLI) is a [`Job`]: a closure the control thread posts to the worker's
//! mailbox and the worker runs between passes, at its housekeeping cadence. The worker is
//! never stopped or locked for it, and the other ports keep flowing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use crate::buf::{FrameId, FramePool};
use crate::conntrack::{ConnConfig, ConnTable, FlowKey6};
use crate::counters::{QueueLoad, WorkerCounters};
use crate::drop::DropReason;
use crate::flow_owner::FlowHandoff;
use crate::handoff::{Handoff, HandoffIn};
use crate::l2::MacTable;
use crate::l3::{self, RouterState};
use crate::output::PortSet;
use crate::packet::{Batch, MAX_BURST};
use crate::packet::{Next, Packet};
use crate::pipeline::capture::Capturer;
use crate::pipeline::explain::{self, Emitted, ExplainError, Explanation};
use crate::pipeline::trace::{TraceMatch, Tracer};
use crate::pipeline::{tsc, BurstCtx, BurstStage, Stage, StageTable};
use crate::port::{Port, PortId};
use crate::publish::{GenerationAck, SnapshotCell};
use crate::slowpath::{SlowPath, SlowPathEnds};
use crate::snapshot::{PortRole, Snapshot};

/// Tunables of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Worker index (its place among the workers of a [`crate::handoff::mesh`]).
    pub id: u16,
    /// Most MACs the worker learns across all networks.
    pub mac_table_capacity: usize,
    /// Nanoseconds between housekeeping rounds while busy (always done when idle).
    pub housekeeping_interval_ns: u64,
    /// Learned-table slots examined for aging per housekeeping round.
    pub aging_budget: usize,
    /// Most neighbours (ARP entries) the worker's routers hold.
    pub neighbor_capacity: usize,
    /// The worker's connection table: NAT sessions and IPv4 security-group connections.
    pub conntrack: ConnConfig,
    /// The worker's IPv6 connection table (security-group connections of IPv6 flows), with
    /// its own per-port quota. `None`: a quarter of `conntrack`'s capacity and the same
    /// share per port.
    pub conntrack6: Option<ConnConfig>,
    /// Secret seed of the learned MAC table's hash; pick it at random.
    pub hash_seed: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: 0,
            mac_table_capacity: 65_536,
            housekeeping_interval_ns: 100_000,
            aging_budget: 512,
            neighbor_capacity: l3::DEFAULT_NEIGHBORS,
            conntrack: ConnConfig::with_capacity(DEFAULT_SESSIONS),
            conntrack6: None,
            hash_seed: 0x1319_8a2e_0370_7344,
        }
    }
}

/// NAT sessions a worker holds by default (about 12 MiB).
pub const DEFAULT_SESSIONS: usize = 65_536;

/// Frames a worker takes from the other workers' handoff rings per pass at most.
pub const HANDOFFS_PER_PASS: usize = 4 * MAX_BURST;

/// Neighbour news items a worker records per pass at most (ARP packets are few).
pub const NEWS_PER_PASS: usize = 64;

/// Rounds of [`Worker::drain_peers`] at most (each takes up to [`HANDOFFS_PER_PASS`]
/// frames and as many flow packets).
pub const DRAIN_ROUNDS: usize = 256;

/// Jobs a worker runs per housekeeping round at most.
pub const JOBS_PER_ROUND: usize = 64;

/// Work for a running worker, run on its thread between two passes.
pub type Job = Box<dyn FnOnce(&mut Worker) + Send>;

/// Posts [`Job`]s to one worker. Cloneable; the worker runs them in posting order.
#[derive(Clone, Debug)]
pub struct Mailbox(Sender<Job>);

/// The worker that owned a [`Mailbox`] is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerGone;

impl std::fmt::Display for WorkerGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the worker is gone")
    }
}

impl std::error::Error for WorkerGone {}

impl Mailbox {
    /// Queues `job`; the worker runs it within one housekeeping interval while it runs
    /// (a paused worker runs it when resumed).
    pub fn post(&self, job: impl FnOnce(&mut Worker) + Send + 'static) -> Result<(), WorkerGone> {
        self.0.send(Box::new(job)).map_err(|_| WorkerGone)
    }
}

/// One worker's complete state. See the module documentation.
pub struct Worker {
    config: WorkerConfig,
    // Declared before the pool so that they are dropped first: a port may have lent the
    // pool's memory to the kernel (AF_XDP UMEM), which must stop using it before it goes.
    ports: PortSet,
    pool: FramePool,
    poll_list: Vec<(PortId, u16)>,
    /// The load of each entry of `poll_list`, at the same index (shared with the control
    /// thread through the counters).
    poll_load: Vec<Arc<QueueLoad>>,
    cell: Arc<SnapshotCell>,
    snap: Arc<Snapshot>,
    ack: Arc<GenerationAck>,
    macs: MacTable,
    /// NAT sessions and security-group connections, by zone.
    conns: ConnTable,
    /// IPv6 security-group connections, by zone: a table of their own so that the IPv4
    /// one keeps its narrow keys.
    conns6: ConnTable<FlowKey6>,
    stages: StageTable,
    counters: Arc<WorkerCounters>,
    batch: Batch,
    next_housekeeping_ns: u64,
    /// The worker's clock, in seconds, at the start of the latest pass.
    now_secs: u32,
    /// The same in nanoseconds.
    now_ns: u64,
    /// Frames and neighbour news from the other workers (see [`crate::handoff`]).
    handoff_in: HandoffIn,
    /// Whether other workers are connected: one branch per pass for a lone worker.
    has_peers: bool,
    /// Never disconnected: the worker holds a sender itself.
    jobs: Receiver<Job>,
    mailbox: Sender<Job>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.config.id)
            .field("generation", &self.snap.generation())
            .field("ports", &self.ports)
            .field("poll_list", &self.poll_list)
            .field("pool", &self.pool)
            .finish()
    }
}

impl Worker {
    /// A worker with no ports yet, running the snapshot in `cell` and acknowledging into
    /// `ack`. Per-port counters are kept for port ids below `max_ports`.
    pub fn new(
        config: WorkerConfig,
        pool: FramePool,
        cell: Arc<SnapshotCell>,
        ack: Arc<GenerationAck>,
        max_ports: usize,
    ) -> Self {
        let snap = cell.load();
        let (mailbox, jobs) = mpsc::channel();
        let counters = Arc::new(WorkerCounters::new(max_ports));
        counters.generation.set(snap.generation());
        Worker {
            pool,
            // Each worker's port holds only the queues that worker polls (the rest of a
            // multi-queue port is another worker's): it transmits on the first of them.
            ports: PortSet::new(0),
            poll_list: Vec::new(),
            poll_load: Vec::new(),
            snap,
            cell,
            ack,
            macs: MacTable::with_seed(config.mac_table_capacity, config.hash_seed),
            conns: ConnTable::new(config.conntrack),
            conns6: ConnTable::new(
                config
                    .conntrack6
                    .unwrap_or_else(|| ipv6_conntrack(config.conntrack)),
            ),
            stages: StageTable::new(
                RouterState::new(config.neighbor_capacity, config.conntrack.hash_seed),
                max_ports,
            ),
            counters,
            batch: Batch::with_capacity(MAX_BURST),
            next_housekeeping_ns: 0,
            now_secs: 0,
            now_ns: 0,
            handoff_in: HandoffIn::default(),
            has_peers: false,
            jobs,
            mailbox,
            config,
        }
    }

    /// Connects the worker to the others: `handoff` is its element of
    /// [`crate::handoff::mesh`]. Frames for ports set with
    /// [`Worker::set_transmit_owner`] go to their owner from then on, and neighbours
    /// learned from ARP are told to every peer.
    pub fn connect_workers(&mut self, handoff: Handoff) {
        self.has_peers = handoff.out.connected();
        let workers = handoff.out.workers();
        if self.has_peers {
            // Every flow has one owner (see [`crate::flow_owner`]); SNAT takes external
            // ports from this worker's slice of the range, so that replies find it.
            let ct = self.config.conntrack;
            if (ct.worker, ct.workers) != (usize::from(self.config.id), workers) {
                self.config.conntrack = ConnConfig {
                    worker: usize::from(self.config.id),
                    workers,
                    ..ct
                };
                self.conns = ConnTable::new(self.config.conntrack);
            }
            self.stages.flow = FlowHandoff::new(
                self.config.id,
                workers as u16,
                self.config.hash_seed ^ self.config.conntrack.hash_seed,
                self.config.conntrack.snat_ports,
            );
        }
        self.ports.handoff = handoff.out;
        self.handoff_in = handoff.inn;
        if self.has_peers {
            self.stages.l3.record_news(NEWS_PER_PASS);
        }
    }

    /// Records that worker `owner` polls and transmits on `port` (`None`: no other
    /// worker does), so frames this worker sends there are handed to it. A port attached
    /// to this worker is sent on here whatever this says.
    pub fn set_transmit_owner(&mut self, port: PortId, owner: Option<u16>) {
        self.ports.set_transmit_owner(port, owner);
    }

    /// Holds the frames this worker sends to `port` from now on (see
    /// [`PortSet::hold`]): the first step of moving the port's queue to another worker,
    /// so that nothing is handed to the worker letting go of it meanwhile. Flushes first:
    /// what was sent before goes the old way.
    pub fn hold_port(&mut self, port: PortId) {
        self.ports.flush(&mut self.pool, &self.counters);
        self.ports.hold(port);
    }

    /// Ends [`Worker::hold_port`]: worker `owner` (`None`: this one, which has the port
    /// attached now) transmits on `port`, and the frames held for it go there first, in
    /// order.
    pub fn release_held(&mut self, port: PortId, owner: Option<u16>) {
        self.ports
            .release_held(&mut self.pool, &self.counters, port, owner);
    }

    /// Takes everything the other workers have handed this one so far (frames to send,
    /// packets of flows it owns), runs it and flushes: after it, nothing another worker
    /// handed over before this call is still on its way. Returns false when the rings
    /// could not be emptied (the pool stayed short, or the peers kept filling them faster
    /// than this drained them for [`DRAIN_ROUNDS`] rounds).
    pub fn drain_peers(&mut self) -> bool {
        if !self.has_peers {
            return true;
        }
        for _ in 0..DRAIN_ROUNDS {
            let taken = self.take_from_peers();
            self.ports.flush(&mut self.pool, &self.counters);
            if self.handoff_in.is_empty() {
                return true;
            }
            if taken == 0 {
                // Frames in the rings and none taken: the pool is short; ports' upkeep
                // (transmit completions) gives frames back.
                for (_, port) in self.ports.iter_mut() {
                    port.housekeeping(&mut self.pool);
                }
            }
        }
        false
    }

    /// The worker's index.
    pub fn id(&self) -> u16 {
        self.config.id
    }

    /// The worker's mailbox.
    pub fn mailbox(&self) -> Mailbox {
        Mailbox(self.mailbox.clone())
    }

    /// Connects the worker's slow path (DHCP) with rings of `depth` slots and returns the
    /// control plane's ends. Until then, frames for the slow path are dropped.
    pub fn connect_slow_path(&mut self, depth: usize) -> SlowPathEnds {
        let (slow_path, ends) = SlowPath::connected(depth);
        self.stages.slow_path = slow_path;
        ends
    }

    /// Starts a packet trace of the next `count` packets received on `port` (at most
    /// [`crate::pipeline::trace::MAX_TRACE_PACKETS`]) that `filter` matches, replacing any
    /// trace before.
    pub fn trace_start(&mut self, port: PortId, count: usize, filter: TraceMatch) {
        self.stages.trace = Some(Box::new(Tracer::new(port, count, filter)));
    }

    /// Stops the trace; returns what it recorded.
    pub fn trace_stop(&mut self) -> Option<Box<Tracer>> {
        self.stages.trace.take()
    }

    /// Starts a frame capture (see [`crate::pipeline::capture`]); gives it back, not taken,
    /// when one already runs: captures are one at a time.
    pub fn capture_start(&mut self, capturer: Box<Capturer>) -> Result<(), Box<Capturer>> {
        if self.ports.capture.is_some() {
            return Err(capturer);
        }
        self.ports.capture = Some(capturer);
        Ok(())
    }

    /// Stops the capture; returns its worker end (whose ring the reader may still drain).
    pub fn capture_stop(&mut self) -> Option<Box<Capturer>> {
        self.ports.capture.take()
    }

    /// The running capture.
    pub fn capture(&self) -> Option<&Capturer> {
        self.ports.capture.as_deref()
    }

    /// The running (or completed, not yet stopped) trace.
    pub fn trace(&self) -> Option<&Tracer> {
        self.stages.trace.as_deref()
    }

    /// Runs `frame` as if received on `port` through the stages, with the live snapshot
    /// and tables, changing nothing: no table, counter or trace of the worker moves and
    /// nothing is sent. See [`crate::pipeline::explain`].
    pub fn explain(&mut self, port: PortId, frame: &[u8]) -> Result<Explanation, ExplainError> {
        if self.ports.get(port).is_none() {
            return Err(ExplainError::NoSuchPort);
        }
        if frame.len() > self.pool.max_data_len() {
            return Err(ExplainError::TooLong);
        }
        let (id, offset) = self.pool.alloc_with(frame).ok_or(ExplainError::NoBuffers)?;
        let mut pkt = Packet::received(id, offset, frame.len() as u16);
        pkt.in_port = port;
        let mut pkts = [pkt];
        let counters = WorkerCounters::new(self.counters.ports.len());
        let mut ports = PortSet::recorder(0);
        let running =
            self.stages
                .trace
                .replace(Box::new(Tracer::new(port, 1, TraceMatch::default())));
        self.stages.l3.explained_wait = None;
        let now = u64::from(self.now_secs);
        {
            let mut cx = BurstCtx {
                snap: &self.snap,
                pool: &mut self.pool,
                ports: &mut ports,
                macs: &mut self.macs,
                conns: &mut self.conns,
                conns6: &mut self.conns6,
                counters: &counters,
                now_ns: self.now_ns,
                now_secs: self.now_secs,
                in_port: port,
                role: self.snap.port(port),
                dry_run: true,
            };
            self.stages.run(&mut cx, &mut pkts);
        }
        let traced = std::mem::replace(&mut self.stages.trace, running);
        let steps = traced
            .as_deref()
            .and_then(|t| t.records().first().map(|r| r.steps().to_vec()))
            .unwrap_or_default();
        let sent: Vec<Emitted> = ports
            .take_recorded()
            .into_iter()
            .map(|(port, frame)| Emitted { port, frame })
            .collect();
        let last = steps.last().map(|s| s.next);
        let slow_path = steps
            .iter()
            .any(|s| s.stage == crate::pipeline::Stage::SlowPath && s.next == Next::Consumed);
        let connections = explain::connections(
            &self.conns,
            self.snap.routing(),
            now,
            port,
            frame,
            &steps,
            &sent,
        );
        let rules = explain::rule_checks(&self.snap, port, frame, &steps, &sent);
        Ok(Explanation {
            generation: self.snap.generation(),
            worker: self.config.id,
            in_port: port,
            dropped: explain::drops_counted(&counters),
            waiting_for: self.stages.l3.explained_wait.take(),
            to_slow_path: slow_path,
            consumed: last == Some(Next::Consumed) && !slow_path,
            steps,
            sent,
            connections,
            rules,
        })
    }

    /// Adds a stage that runs after classification for the ports whose snapshot stage
    /// set has [`crate::pipeline::Stage::Extension`] (see the [`crate::pipeline`]
    /// documentation); for stages that are not built in, such as tests' and experiments'.
    pub fn add_stage(&mut self, stage: Box<dyn BurstStage + Send>) {
        self.stages.add(stage);
    }

    /// Runs the jobs posted so far, at most [`JOBS_PER_ROUND`] of them, so that a burst
    /// of control work cannot hold the poll loop for long.
    fn run_jobs(&mut self) {
        for _ in 0..JOBS_PER_ROUND {
            match self.jobs.try_recv() {
                Ok(job) => job(self),
                Err(_) => break,
            }
        }
    }

    /// Attaches a port under `id` and polls the given receive queues of it.
    pub fn attach(&mut self, id: PortId, port: Box<dyn Port>, rx_queues: &[u16]) {
        self.detach(id);
        self.ports.attach(id, port);
        self.poll_list.extend(rx_queues.iter().map(|&q| (id, q)));
        self.sync_queue_loads();
    }

    /// Gives every entry of the poll list its load record (a new one for a queue new to
    /// this worker) and publishes the list of them to the counters.
    fn sync_queue_loads(&mut self) {
        let old = std::mem::take(&mut self.poll_load);
        self.poll_load = self
            .poll_list
            .iter()
            .map(|&(port, queue)| {
                old.iter()
                    .find(|l| l.port == port && l.queue == queue)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(QueueLoad::new(port, queue)))
            })
            .collect();
        *self
            .counters
            .rx_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.poll_load.clone();
    }

    /// Attaches a port that is new under `id`: as [`Worker::attach`], with the port's
    /// counters starting from zero (the id may have belonged to a removed port).
    pub fn attach_new(&mut self, id: PortId, port: Box<dyn Port>, rx_queues: &[u16]) {
        self.attach(id, port, rx_queues);
        if let Some(c) = self.counters.port(id) {
            c.reset();
        }
        self.counters.port_drops.reset_port(id);
    }

    /// Detaches the port under `id`, returning the frames it holds to the pool.
    pub fn detach(&mut self, id: PortId) -> Option<Box<dyn Port>> {
        let mut port = self.take_port(id)?;
        port.release_frames(&mut self.pool);
        Some(port)
    }

    /// Detaches the port under `id` without closing it, so that whoever closes it (which
    /// may sleep: see [`Port::close`]) does so off the worker's thread. The frames it holds
    /// stay out of the pool until handed back with [`Worker::free_frames`].
    pub fn take_port(&mut self, id: PortId) -> Option<Box<dyn Port>> {
        self.ports.flush(&mut self.pool, &self.counters);
        self.poll_list.retain(|&(p, _)| p != id);
        self.sync_queue_loads();
        self.ports.detach(id)
    }

    /// Returns frames a closed port held (from [`Port::close`]) to the pool.
    pub fn free_frames(&mut self, frames: &[FrameId]) {
        for &frame in frames {
            self.pool.free(frame);
        }
    }

    /// The receive queues polled, as (port, queue) in polling order.
    pub fn poll_list(&self) -> &[(PortId, u16)] {
        &self.poll_list
    }

    /// The counters, shared with whoever exports them.
    pub fn counters(&self) -> Arc<WorkerCounters> {
        Arc::clone(&self.counters)
    }

    /// The frame pool (free frames, geometry).
    pub fn pool(&self) -> &FramePool {
        &self.pool
    }

    /// The learned MAC table.
    pub fn macs(&self) -> &MacTable {
        &self.macs
    }

    /// The routers' per-worker state (neighbours, waiting packets).
    pub fn router(&self) -> &RouterState {
        &self.stages.l3
    }

    /// The connection table: NAT sessions (zone = router uid) and security-group
    /// connections (zone = [`crate::secgroup::port_zone`] of their port).
    pub fn sessions(&self) -> &ConnTable {
        &self.conns
    }

    /// The IPv6 connection table: security-group connections of IPv6 flows.
    pub fn sessions6(&self) -> &ConnTable<FlowKey6> {
        &self.conns6
    }

    /// The attached ports.
    pub fn ports(&self) -> &PortSet {
        &self.ports
    }

    /// The worker's clock in seconds (the time base of learned entries' `seen`).
    pub fn now_secs(&self) -> u32 {
        self.now_secs
    }

    /// The worker's clock in nanoseconds at the start of the latest pass (the time base
    /// of captured frames).
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The snapshot in use.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// Generation of the snapshot in use.
    pub fn generation(&self) -> u64 {
        self.snap.generation()
    }

    /// One pass over the poll list at time `now_ns` (any monotonic clock); returns the
    /// number of frames received. Never inlined: it is the unit that profilers and the
    /// instruction counter attribute a pass to.
    #[inline(never)]
    pub fn poll(&mut self, now_ns: u64) -> usize {
        if self.cell.generation() != self.snap.generation() {
            // The replaced snapshot is dropped here, but the publisher still holds it
            // until this worker acknowledges, so this never frees it.
            self.snap = self.cell.load();
            self.counters.generation.set(self.snap.generation());
        }
        let now_secs = (now_ns / 1_000_000_000) as u32;
        self.now_secs = now_secs;
        self.now_ns = now_ns;
        let mut received = 0;
        if self.has_peers {
            received += self.take_from_peers();
        }
        for i in 0..self.poll_list.len() {
            let (port_id, queue) = self.poll_list[i];
            // One time-stamp read per queue polled, one more per burst: the queue's load
            // for rebalancing (see [`QueueLoad`]).
            let t = tsc::now();
            let n = self.process_burst(port_id, queue);
            if n > 0 {
                if let Some(load) = self.poll_load.get(i) {
                    load.cycles.add(tsc::now().wrapping_sub(t));
                    load.packets.add(n as u64);
                    load.bursts.inc();
                }
                received += n;
            }
        }
        if self.has_peers {
            self.tell_peers();
        }
        self.ports.flush(&mut self.pool, &self.counters);
        // Jobs, slow-path replies and the ports' own upkeep are cheap and latency matters
        // to them: every idle pass does them. Aging scans tables: only on the cadence, so
        // that a worker spinning on empty rings does not spend its time there.
        let due = now_ns >= self.next_housekeeping_ns;
        if received == 0 || due {
            self.housekeeping(now_secs, due);
            if due {
                self.next_housekeeping_ns = now_ns + self.config.housekeeping_interval_ns;
            }
        }
        self.ack.set(self.snap.generation());
        self.counters.loops.inc();
        if received > 0 {
            self.counters.busy_loops.inc();
        }
        received
    }

    /// Takes the frames other workers handed over (into this worker's pool: a frame left
    /// in the ring when the pool is empty is back-pressure, not loss) and queues them for
    /// their ports; applies the neighbours the others learned. Returns the frames taken.
    #[cold]
    #[inline(never)]
    fn take_from_peers(&mut self) -> usize {
        let now = self.now_secs;
        let (router, counters) = (&mut self.stages.l3, &*self.counters);
        self.handoff_in.news(|news| {
            counters.neighbor_news.inc();
            router.apply_news(news, now);
        });
        let mut taken = self.take_flows();
        let counters = &*self.counters;
        let (pool, ports) = (&mut self.pool, &mut self.ports);
        taken += self.handoff_in.take(HANDOFFS_PER_PASS, |port, frame| {
            let port = PortId(port);
            if frame.is_empty() || port == PortId::NONE {
                // A frame the sender could not copy; it counted the drop.
                return true;
            }
            let Some((id, offset)) = pool.alloc_with(frame) else {
                return false;
            };
            counters.handoffs_received.inc();
            let mut pkt = Packet::received(id, offset, frame.len() as u16);
            pkt.in_port = PortId::NONE;
            pkt.meta.next = Next::Output(port);
            ports.enqueue(pool, counters, port, pkt);
            true
        });
        taken
    }

    /// Runs the packets other workers handed to this one as their flows' owner (see
    /// [`crate::flow_owner`]) through the stages after the handoff, a burst at a time,
    /// each run of one burst port together. Returns the packets taken.
    fn take_flows(&mut self) -> usize {
        let mut total = 0;
        while total < HANDOFFS_PER_PASS {
            self.batch.clear();
            let mut burst_ports = [PortId::NONE; MAX_BURST];
            let (pool, batch, counters) = (&mut self.pool, &mut self.batch, &*self.counters);
            let taken = self.handoff_in.take_flows(MAX_BURST, |handed| {
                let Some(h) = handed else {
                    // A slot the sender could not fill (it counted the packet handed).
                    counters.flow_handoffs_received.inc();
                    counters.count_drop(
                        None,
                        Stage::FlowHandoff,
                        DropReason::FlowHandoffRingFull,
                        1,
                    );
                    return true;
                };
                if batch.is_full() {
                    return false;
                }
                let Some((id, offset)) = pool.alloc_with(h.frame) else {
                    return false;
                };
                let mut pkt = Packet::received(id, offset, h.frame.len() as u16);
                pkt.in_port = h.in_port;
                pkt.meta = h.meta;
                burst_ports[batch.len()] = h.burst_port;
                let _ = batch.push(pkt);
                true
            });
            total += taken;
            let n = self.batch.len();
            self.counters.flow_handoffs_received.add(n as u64);
            let mut start = 0;
            while start < n {
                let port = burst_ports[start];
                let end = (start..n).find(|&k| burst_ports[k] != port).unwrap_or(n);
                let mut cx = BurstCtx {
                    snap: &self.snap,
                    pool: &mut self.pool,
                    ports: &mut self.ports,
                    macs: &mut self.macs,
                    conns: &mut self.conns,
                    conns6: &mut self.conns6,
                    counters: &self.counters,
                    now_ns: self.now_ns,
                    now_secs: self.now_secs,
                    in_port: port,
                    role: self.snap.port(port),
                    dry_run: false,
                };
                self.stages
                    .run_handed(&mut cx, &mut self.batch.as_mut_slice()[start..end]);
                start = end;
            }
            self.batch.clear();
            if taken < MAX_BURST {
                break;
            }
        }
        total
    }

    /// Tells the other workers what this pass learned from ARP.
    #[cold]
    #[inline(never)]
    fn tell_peers(&mut self) {
        let handoff = &mut self.ports.handoff;
        let mut lost = 0;
        let overflow = self.stages.l3.take_news(|news| lost += handoff.tell(&news));
        if lost + overflow > 0 {
            self.counters.neighbor_news_lost.add(lost + overflow);
        }
    }

    #[inline]
    fn process_burst(&mut self, port_id: PortId, queue: u16) -> usize {
        self.batch.clear();
        let Some(port) = self.ports.get_mut(port_id) else {
            return 0;
        };
        let n = port.rx_burst(queue, &mut self.pool, &mut self.batch);
        if n == 0 {
            return 0;
        }
        let counters = &*self.counters;
        let pkts = self.batch.as_mut_slice();
        counters.rx_packets.add(pkts.len() as u64);
        // The classify stage counts the bytes, in its loop over the packets.
        if let Some(pc) = counters.port(port_id) {
            pc.rx_packets.add(pkts.len() as u64);
        }
        let mut cx = BurstCtx {
            snap: &self.snap,
            pool: &mut self.pool,
            ports: &mut self.ports,
            macs: &mut self.macs,
            conns: &mut self.conns,
            conns6: &mut self.conns6,
            counters,
            now_ns: self.now_ns,
            now_secs: self.now_secs,
            in_port: port_id,
            role: self.snap.port(port_id),
            dry_run: false,
        };
        self.stages.run(&mut cx, pkts);
        self.batch.clear();
        n
    }

    fn housekeeping(&mut self, now_secs: u32, age: bool) {
        self.run_jobs();
        {
            let mut cx = BurstCtx {
                snap: &self.snap,
                pool: &mut self.pool,
                ports: &mut self.ports,
                macs: &mut self.macs,
                conns: &mut self.conns,
                conns6: &mut self.conns6,
                counters: &self.counters,
                now_ns: self.now_ns,
                now_secs: self.now_secs,
                in_port: PortId::NONE,
                role: PortRole::Absent,
                dry_run: false,
            };
            self.stages.slow_path.inject(&mut cx);
        }
        for (_, port) in self.ports.iter_mut() {
            port.housekeeping(&mut self.pool);
        }
        if !age {
            self.ports.flush(&mut self.pool, &self.counters);
            return;
        }
        let aged = self.macs.age(
            now_secs,
            self.snap.l2().mac_aging_secs,
            self.config.aging_budget,
        );
        self.counters.macs_aged.add(aged as u64);
        self.counters.macs.set(self.macs.len() as u64);
        // Remote tunnel endpoints that went quiet (or left the configuration) are forgotten;
        // new ones are asked for before traffic needs them.
        self.stages.underlay.age(now_secs, self.config.aging_budget);
        self.stages.underlay.probe_new(
            self.snap.overlay(),
            now_secs,
            &mut self.pool,
            &mut self.ports,
            &self.counters,
        );
        self.router_housekeeping(self.config.aging_budget, false);
    }

    /// The routers' housekeeping (see [`RouterState::housekeeping`]); what it makes (ICMP
    /// errors, released packets) leaves now, not a pass later. `all` drops every waiting
    /// packet.
    fn router_housekeeping(&mut self, budget: usize, all: bool) {
        let mut cx = BurstCtx {
            snap: &self.snap,
            pool: &mut self.pool,
            ports: &mut self.ports,
            macs: &mut self.macs,
            conns: &mut self.conns,
            conns6: &mut self.conns6,
            counters: &self.counters,
            now_ns: self.now_ns,
            now_secs: self.now_secs,
            in_port: PortId::NONE,
            role: PortRole::Absent,
            dry_run: false,
        };
        let router = &mut self.stages.l3;
        router.housekeeping(&mut cx, budget, all);
        router.send_made(&mut cx, &mut self.stages.underlay);
        self.ports.flush(&mut self.pool, &self.counters);
    }

    /// Polls until `stop` is set, reading time from `clock` (nanoseconds, monotonic) once
    /// per pass and charging each pass to busy or idle time.
    pub fn run(&mut self, stop: &AtomicBool, mut clock: impl FnMut() -> u64) {
        let mut now = clock();
        while !stop.load(Ordering::Relaxed) {
            let received = self.poll(now);
            let then = clock();
            let spent = then.saturating_sub(now);
            if received > 0 {
                self.counters.busy_ns.add(spent);
            } else {
                self.counters.idle_ns.add(spent);
            }
            now = then;
        }
    }

    /// Pauses the worker between passes: flushes, drops its snapshot reference and tells
    /// the publisher it holds none. Its ports stay open; the next [`Worker::poll`] picks up
    /// the active snapshot again. Used to change the worker's ports from another thread.
    pub fn suspend(&mut self) {
        self.ports.flush(&mut self.pool, &self.counters);
        // Hold the process-wide empty snapshot instead, which is never freed, so that
        // dropping the real one here cannot be the last reference.
        self.snap = Snapshot::parked();
        self.ack.set(GenerationAck::PARKED);
    }

    /// Stops the worker for good: suspends it and returns every port's frames to the pool
    /// (an AF_XDP port closes its sockets).
    pub fn park(&mut self) {
        // Packets waiting for ARP hold frames: they are dropped, not leaked.
        self.router_housekeeping(0, true);
        self.ports.drop_held(&mut self.pool, &self.counters);
        self.suspend();
        for (_, port) in self.ports.iter_mut() {
            port.release_frames(&mut self.pool);
        }
    }

    /// The frame pool, writable: for opening ports (an AF_XDP port fills its rings from
    /// it) while the worker is suspended.
    pub fn pool_mut(&mut self) -> &mut FramePool {
        &mut self.pool
    }
}

/// The IPv6 connection table's default configuration: a quarter of the IPv4 table's
/// capacity (IPv6 is a VM's second family; its sessions are wider) and the same share per
/// owner.
pub fn ipv6_conntrack(v4: ConnConfig) -> ConnConfig {
    let capacity = (v4.capacity / 4).max(1024).min(v4.capacity.max(1));
    let quota = v4.owner_quota as u128 * capacity as u128 / v4.capacity.max(1) as u128;
    ConnConfig {
        capacity,
        owner_quota: (quota as usize).max(1),
        ..v4
    }
}
