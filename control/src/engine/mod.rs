//! The engine: the running configuration and every change to it.
//!
//! It owns the active desired state and its generation, the snapshot publisher, the port
//! identities, the state store, the port bindings and the worker. A change goes through
//! [`Engine::apply`], in an order chosen so that a failure at any step leaves the running
//! configuration, the published snapshot and the persisted file as they were:
//!
//! 1. check `expect_generation`, validate (every problem, with its path), compute the diff
//!    (an identical state is a no-op), compile into the next generation's snapshot;
//!    a dry run stops here;
//! 2. prepare the new ports on the control thread (XDP program, AF_XDP sockets) and open
//!    them on the worker as a job; nothing references them yet, so they carry no traffic;
//! 3. persist the new generation (temp file, fsync, rename, directory fsync);
//! 4. publish the snapshot and wait until the worker runs it;
//! 5. take the removed ports out of the worker (a job), close them here (closing an
//!    AF_XDP socket sleeps) and hand their frames back to the worker's pool (a job).
//!
//! The worker is never stopped: ports come and go through its mailbox between passes, and
//! the snapshot swap is the usual generation check. Traffic between ports the change does
//! not touch is not disturbed.
//!
//! `apply` holds the changes (apply, rollback, history), `ports` the port lifecycle (open,
//! close, reopen a link that went away) and `inspect` the reads of the running data plane
//! behind the socket's list methods.

mod apply;
mod flow_state;
mod inspect;
mod load;
mod moves;
mod objects;
mod placement;
mod ports;
mod rebalance;
mod stall;

pub use apply::{state_from_json, ApplyOptions, ApplyOutcome};
pub use inspect::{DriverStats, FdbEntry, NeighborEntry, NeighborState, SessionEntry, SessionFlow};
pub use load::QueueRate;
pub use moves::{
    AutoRebalance, Moved, QueueRow, RebalanceOptions, RebalanceOutcome, DEFAULT_IMPROVEMENT,
};
pub use placement::Placement;
pub use ports::{kind_name, port_label, PortStatus};

use self::flow_state::refuse_flow_state;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_dataplane::buf::{FramePool, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM};
use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::handoff::{mesh, MAX_WORKERS};
use pollux_dataplane::port::{Port, PortId};
use pollux_dataplane::publish::{GenerationAck, Publisher};
use pollux_dataplane::slowpath::DEFAULT_RING_DEPTH;
use pollux_dataplane::worker::{Mailbox, Worker, WorkerConfig};
use pollux_drivers::mem::MemPortConfig;
use pollux_drivers::xsk::Umem;

use self::apply::{dhcp_networks, to_value};
use crate::binding::{Bindings, MemWires};
use crate::compile::metadata::metadata_table;
use crate::compile::{compile, CompileError, Compiled, Identities, PortPlan};
use crate::metrics::MetricsSource;
use crate::model::DesiredState;
use crate::store::{Store, StoreError};
use crate::validate::{validate, PortIndex, Validated, ValidationError};
use crate::workers::{self, WorkerThread};
use pollux_services::dhcp::service::DhcpService;
use pollux_services::dispatch::{PuntService, SlowPathThread};
use pollux_services::metadata::MetadataService;

/// Directory of the DHCP lease files, inside the state directory.
pub const LEASE_DIR: &str = "leases";
/// Frames beyond what the AF_XDP rings can hold: flood copies and bursts in flight.
pub const SPARE_FRAMES: u32 = 4096;
/// Pool size when not configured: 65536 frames of 2 KiB (128 MiB), room for the rings of
/// 20 AF_XDP queues.
pub const DEFAULT_POOL_FRAMES: u32 = 65_536;
/// Port ids are `u16` and 0xffff is reserved: per-port counters for every possible id.
const PORT_ID_SLOTS: usize = u16::MAX as usize;
/// How long the control thread waits for the worker to run a job or a new generation.
/// Only a wedged worker takes this long.
const WORKER_TIMEOUT: Duration = Duration::from_secs(5);

/// How the engine runs its workers.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// One worker per entry, pinned to that CPU (`None`: not pinned, as tests run more
    /// workers than they have CPUs); empty: one unpinned worker.
    pub cores: Vec<Option<usize>>,
    /// Frames in the worker's pool; raised to what the initial ports need.
    pub pool_frames: u32,
    /// Ring geometry of `mem` ports.
    pub mem: MemPortConfig,
    /// Worker tunables.
    pub worker: WorkerConfig,
    /// Rebalancing of receive queues by load (automatic: off by default).
    pub rebalance: AutoRebalance,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cores: vec![None],
            pool_frames: DEFAULT_POOL_FRAMES,
            mem: MemPortConfig::default(),
            worker: WorkerConfig::default(),
            rebalance: AutoRebalance::default(),
        }
    }
}

/// The configuration to start with.
#[derive(Clone, Debug)]
pub struct Initial {
    /// The desired state.
    pub state: DesiredState,
    /// Its generation.
    pub generation: u64,
    /// Whether to persist it before starting (it is not in the store yet).
    pub persist: bool,
}

/// Why a change was refused. Whatever the reason, nothing changed.
#[derive(Debug)]
pub enum ApplyError {
    /// The state does not parse or validate; every problem with its path.
    Invalid(Vec<ValidationError>),
    /// `expect_generation` is not the active generation.
    GenerationMismatch {
        /// What the caller expected.
        expected: u64,
        /// The active generation.
        current: u64,
    },
    /// Valid, but the data plane cannot run it (yet).
    Unsupported {
        /// Path of the field.
        path: String,
        /// Why.
        what: String,
    },
    /// Ports that could not be opened: (port key, why).
    Bind(Vec<(String, String)>),
    /// The new generation could not be persisted.
    Store(StoreError),
    /// A rollback to a generation that is not retained.
    UnknownGeneration {
        /// The generation asked for.
        generation: u64,
        /// The retained generations.
        retained: Vec<u64>,
    },
    /// A delete of an object the state does not hold.
    UnknownObject {
        /// Its collection (`ports`).
        collection: String,
        /// Its id.
        id: String,
        /// Its position in the batch of changes.
        change: usize,
    },
    /// Something that should not happen (a wedged worker, identities exhausted).
    Internal(String),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Invalid(errors) => {
                write!(f, "invalid configuration: {} problem(s)", errors.len())?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            ApplyError::GenerationMismatch { expected, current } => write!(
                f,
                "generation mismatch: expected {expected}, the active generation is {current}"
            ),
            ApplyError::Unsupported { path, what } => write!(f, "not supported: {path}: {what}"),
            ApplyError::Bind(errors) => {
                write!(f, "cannot bind {} port(s)", errors.len())?;
                for (key, why) in errors {
                    write!(f, "\n  {key}: {why}")?;
                }
                Ok(())
            }
            ApplyError::Store(e) => write!(f, "{e}"),
            ApplyError::UnknownGeneration {
                generation,
                retained,
            } => write!(
                f,
                "generation {generation} is not retained (retained: {retained:?})"
            ),
            ApplyError::UnknownObject {
                collection,
                id,
                change,
            } => write!(
                f,
                "unknown object: changes[{change}]: {collection} has no object {id:?}"
            ),
            ApplyError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for ApplyError {}

impl From<CompileError> for ApplyError {
    fn from(e: CompileError) -> Self {
        match e {
            CompileError::Unsupported { path, what } => ApplyError::Unsupported { path, what },
            other => ApplyError::Internal(other.to_string()),
        }
    }
}

/// A port's part opened on a worker at start-up: (worker, port, the part, its queues).
type OpenedPart = (u16, PortId, Box<dyn Port>, Vec<u16>);

/// The running configuration.
#[derive(Debug)]
struct Active {
    state: DesiredState,
    valid: Validated,
    generation: u64,
    identities: Identities,
    plans: Vec<PortPlan>,
    /// What a change of ports alone is checked against ([`PortIndex`]): made from `valid`
    /// by the first such change, kept in step by the next ones, dropped by any other.
    index: Option<PortIndex>,
}

/// The worker as the control thread sees it.
#[derive(Debug)]
struct WorkerLink {
    thread: Option<WorkerThread>,
    mailbox: Mailbox,
    counters: Arc<WorkerCounters>,
    ack: Arc<GenerationAck>,
    core: Option<usize>,
}

/// The engine. See the module documentation.
pub struct Engine {
    active: Active,
    publisher: Publisher,
    store: Option<Store>,
    bindings: Bindings,
    /// Worker `i` at index `i`.
    workers: Vec<WorkerLink>,
    placement: Placement,
    status: BTreeMap<PortId, PortStatus>,
    /// Frames the open ports may hold, against the pool's capacity.
    frames_committed: u32,
    pool_capacity: u32,
    metrics: Arc<MetricsSource>,
    started: Instant,
    /// The thread that hands punted frames to the services; `None` only after shutdown.
    slow_path: Option<SlowPathThread>,
    /// The DHCP server; `None` only after shutdown.
    dhcp: Option<DhcpService>,
    /// The workers' loop counters as last seen, to find one that stalls.
    stall: stall::StallWatch,
    /// The metadata proxy's table and counters (its stacks live on the slow-path thread).
    metadata: MetadataService,
    /// How to take back what the change under way did to the active identities in place
    /// ([`crate::compile::compile_ports`]), until its generation is published.
    identities_undo: Option<crate::compile::IdentitiesUndo>,
    /// Generations published as a patch of the running snapshot.
    patched: u64,
    /// The receive queues' measured loads.
    loads: load::LoadWatch,
    /// Rebalancing's settings, pins and counters.
    rebalance: moves::RebalanceState,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("generation", &self.active.generation)
            .field("ports", &self.active.plans.len())
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Validates and compiles `initial`, opens every port, persists it when asked and
    /// starts the worker. Errors are fit for the user (they name the port and why).
    pub fn start(
        config: &EngineConfig,
        initial: Initial,
        mut store: Option<Store>,
        wires: MemWires,
    ) -> Result<Engine, String> {
        let valid = validate(&initial.state).map_err(|errors| {
            let mut msg = format!("{} problem(s):", errors.len());
            for e in errors {
                msg.push_str(&format!("\n  {e}"));
            }
            msg
        })?;
        let Compiled {
            snapshot,
            ports: plans,
            identities,
        } = compile(&valid, &Identities::default(), initial.generation)
            .map_err(|e| e.to_string())?;

        let needed: u32 = plans
            .iter()
            .map(|p| Bindings::frames_needed(&p.binding))
            .sum();
        let cores: Vec<Option<usize>> = if config.cores.is_empty() {
            vec![None]
        } else {
            config.cores.clone()
        };
        if cores.len() > MAX_WORKERS {
            return Err(format!("at most {MAX_WORKERS} workers"));
        }
        refuse_flow_state(&initial.state, &valid, cores.len()).map_err(|e| e.to_string())?;
        // Every worker's pool can hold every AF_XDP queue's frames: queues are placed on
        // workers as they come, and a change may put them all on one.
        let pool_capacity = config.pool_frames.max(needed + SPARE_FRAMES);
        let mut pools = Vec::with_capacity(cores.len());
        let mut umems = Vec::with_capacity(cores.len());
        for _ in &cores {
            let pool = FramePool::new(pool_capacity, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM)
                .map_err(|e| format!("frame pool of {pool_capacity} frames: {e}"))?;
            // SAFETY: every socket made from this UMEM belongs to a port that lives in its
            // worker (which drops its ports before its pool) or is closed by the engine
            // before its frames go back to the pool; on the error path below the opened
            // ports release their frames before the pool is dropped. No code indexes
            // frames it does not own.
            umems.push(unsafe { Umem::new(&pool) }.map_err(|e| format!("AF_XDP UMEM: {e}"))?);
            pools.push(pool);
        }
        let mut bindings = Bindings::new(umems, config.mem, wires);
        let mut placement = Placement::new(cores.len());
        let pins = match store.as_ref() {
            Some(store) => moves::load_pins(store.dir())?,
            None => Default::default(),
        };
        for (key, queues) in &pins {
            for (q, w) in queues {
                if usize::from(*w) >= cores.len() {
                    pollux_services::warn!(
                        "{key} queue {q} is pinned to worker {w}, and there are {} worker(s): \
                         placed round-robin until unpinned or polluxd runs that many",
                        cores.len()
                    );
                }
            }
        }

        let mut opened: Vec<OpenedPart> = Vec::new();
        let mut failure = None;
        'plans: for plan in &plans {
            let owners = placement.place_pinned(
                plan.id,
                Bindings::queue_count(&plan.binding),
                pins.get(&plan.key).unwrap_or(&Default::default()),
            );
            let parts = match bindings.prepare(plan, &owners) {
                Ok(parts) => parts,
                Err(e) => {
                    failure = Some(format!("{}: {e}", plan.key));
                    break;
                }
            };
            for (w, part) in parts {
                match (part.open)(&mut pools[usize::from(w)]) {
                    Ok(port) => opened.push((w, plan.id, port, part.queues)),
                    Err(e) => {
                        failure = Some(format!("{}: {e}", plan.key));
                        break 'plans;
                    }
                }
            }
        }
        let persisted = match (&failure, initial.persist, store.as_mut()) {
            (None, true, Some(store)) => store
                .commit_owned(initial.generation, to_value(&initial.state))
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        };
        if let Some(e) = failure.or(persisted.err()) {
            for (w, _, mut port, _) in opened {
                port.release_frames(&mut pools[usize::from(w)]);
            }
            return Err(e);
        }

        let mut publisher = Publisher::new(snapshot);
        let mut handoffs = mesh(cores.len(), pools[0].max_data_len()).into_iter();
        let mut built = Vec::with_capacity(cores.len());
        for (w, pool) in pools.into_iter().enumerate() {
            let ack = publisher.register_worker();
            let mut worker = Worker::new(
                WorkerConfig {
                    id: w as u16,
                    ..config.worker
                },
                pool,
                publisher.cell(),
                Arc::clone(&ack),
                PORT_ID_SLOTS,
            );
            if cores.len() > 1 {
                worker.connect_workers(handoffs.next().expect("one end per worker"));
            }
            built.push((worker, ack));
        }
        let mut status = BTreeMap::new();
        for (w, id, port, queues) in opened {
            built[usize::from(w)].0.attach(id, port, &queues);
            status.insert(id, PortStatus::Up);
        }
        for (id, owners) in placement.ports() {
            for (w, (worker, _)) in built.iter_mut().enumerate() {
                worker.set_transmit_owner(id, placement.transmit_owner(owners, w as u16));
            }
        }
        let ends = built
            .iter_mut()
            .map(|(w, _)| w.connect_slow_path(DEFAULT_RING_DEPTH))
            .collect();
        let dhcp = DhcpService::start(
            store.as_ref().map(|s| s.dir().join(LEASE_DIR)),
            dhcp_networks(&valid, &identities),
        )
        .map_err(|e| format!("DHCP service: {e}"))?;
        // The slow path's services, each taking the frames punted with its id: a service
        // joins with a line here (and its entry in the data plane's `slowpath::SERVICES`).
        let metadata = MetadataService::new(metadata_table(&valid, &identities));
        let services: Vec<Box<dyn PuntService>> = vec![
            Box::new(dhcp.punt_handler()),
            Box::new(metadata.punt_handler()),
        ];
        let slow_path =
            SlowPathThread::start(ends, services).map_err(|e| format!("slow-path thread: {e}"))?;
        let all_counters: Vec<(usize, Arc<WorkerCounters>)> = built
            .iter()
            .enumerate()
            .map(|(w, (worker, _))| (w, worker.counters()))
            .collect();
        let cell = publisher.cell();
        let rules_cell = publisher.cell();
        let metrics = Arc::new(
            MetricsSource::new(all_counters, Vec::new())
                .with_generation_fn(move || cell.generation())
                .with_dhcp_fn(dhcp.stats_fn())
                .with_slow_path_fn(slow_path.stats_fn())
                .with_sg_rules_fn(move || {
                    rules_cell
                        .load()
                        .security_groups()
                        .rule_hits()
                        .map(|(n, hits)| (n.group.clone(), n.rule.clone(), hits))
                        .collect()
                }),
        );
        let mut links = Vec::with_capacity(built.len());
        for (w, (worker, ack)) in built.into_iter().enumerate() {
            let core = cores[w];
            let counters = worker.counters();
            let mailbox = worker.mailbox();
            let thread = workers::spawn(worker, w as u16, core).map_err(|e| {
                format!(
                    "worker {w} on CPU {}: {e}",
                    core.map_or("-".into(), |c| c.to_string())
                )
            })?;
            links.push(WorkerLink {
                thread: Some(thread),
                mailbox,
                counters,
                ack,
                core,
            });
        }
        let engine = Engine {
            active: Active {
                state: initial.state,
                valid,
                generation: initial.generation,
                identities,
                plans,
                index: None,
            },
            publisher,
            store,
            bindings,
            workers: links,
            placement,
            status,
            frames_committed: needed,
            pool_capacity,
            metrics,
            started: Instant::now(),
            slow_path: Some(slow_path),
            dhcp: Some(dhcp),
            stall: stall::StallWatch::default(),
            metadata,
            identities_undo: None,
            patched: 0,
            loads: load::LoadWatch::default(),
            rebalance: moves::RebalanceState::new(config.rebalance, pins),
        };
        engine.update_metric_ports();
        let meters = engine.active.identities.meters();
        let table = engine.metrics.meter_table(meters, true);
        engine.metrics.install_meters(table);
        Ok(engine)
    }

    /// The active generation.
    pub fn generation(&self) -> u64 {
        self.active.generation
    }

    /// The active desired state.
    pub fn state(&self) -> &DesiredState {
        &self.active.state
    }

    /// The active state, validated.
    pub fn validated(&self) -> &Validated {
        &self.active.valid
    }

    /// The ports of the active configuration.
    pub fn plans(&self) -> &[PortPlan] {
        &self.active.plans
    }

    /// The port identities in use.
    pub fn identities(&self) -> &Identities {
        &self.active.identities
    }

    /// The snapshot the workers run (or are about to).
    pub fn snapshot(&self) -> Arc<pollux_dataplane::snapshot::Snapshot> {
        self.publisher.current()
    }

    /// How many generations were compiled as a patch of the running snapshot
    /// ([`crate::compile::compile_ports`]) rather than whole: what the tests and the
    /// benchmark check the fast path is taken by.
    pub fn patched_generations(&self) -> u64 {
        self.patched
    }

    /// The binding status of port `id`.
    pub fn port_status(&self, id: PortId) -> PortStatus {
        self.status
            .get(&id)
            .cloned()
            .unwrap_or_else(|| PortStatus::Down("not opened".into()))
    }

    /// The XDP mode of an AF_XDP port.
    pub fn xdp_mode(&self, id: PortId) -> Option<String> {
        self.bindings.xdp_mode(id)
    }

    /// The vhost-user state of port `id` and its queues given up, if it is a vhost-user
    /// port.
    pub fn vhost_user_status(
        &self,
        id: PortId,
    ) -> Option<(pollux_drivers::vhost_user::Status, u64)> {
        self.bindings.vhost_user_status(id)
    }

    /// The workers' counters summed (the worker's own with one worker).
    pub fn counters(&self) -> Arc<WorkerCounters> {
        match self.workers.as_slice() {
            [one] => Arc::clone(&one.counters),
            many => Arc::new(WorkerCounters::summed(
                many.iter().map(|w| &*w.counters),
                PORT_ID_SLOTS,
            )),
        }
    }

    /// Each worker's counters, by worker index.
    pub fn worker_counters(&self) -> Vec<Arc<WorkerCounters>> {
        self.workers
            .iter()
            .map(|w| Arc::clone(&w.counters))
            .collect()
    }

    /// The CPU each worker is pinned to, by worker index.
    pub fn worker_cores(&self) -> Vec<Option<usize>> {
        self.workers.iter().map(|w| w.core).collect()
    }

    /// The CPU the first worker is pinned to.
    pub fn worker_core(&self) -> Option<usize> {
        self.workers.first().and_then(|w| w.core)
    }

    /// Which worker polls each queue of each port.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// What the metrics endpoint exports.
    pub fn metrics(&self) -> &Arc<MetricsSource> {
        &self.metrics
    }

    /// Time since the engine started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The state store, if the engine persists.
    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Stops the worker (its ports release their frames and close) and frees everything.
    /// Returns the worker's counters and each port's driver statistics.
    pub fn shutdown(mut self) -> Result<Shutdown, String> {
        let driver_stats = self.driver_stats().unwrap_or_default();
        // No service sees a frame after this, so the last lease changes are written
        // before anything else stops.
        if let Some(slow_path) = self.slow_path.take() {
            slow_path.stop();
        }
        if let Some(dhcp) = self.dhcp.take() {
            dhcp.stop();
        }
        let stopped = self.stop_workers()?;
        let counters = self.counters();
        // Ports by their driver's name, as the logs called them while running.
        let names = self
            .port_names()
            .into_iter()
            .map(|(id, key)| {
                let name = driver_stats
                    .iter()
                    .find(|d| d.id == id)
                    .map(|d| d.name.clone());
                (id, name.unwrap_or(key))
            })
            .collect();
        // The worker's ports are closed; its pool goes before the bindings (the XDP
        // programs and the UMEM description), which go with `self`.
        drop(stopped);
        Ok(Shutdown {
            counters,
            workers: self.worker_counters(),
            names,
            driver_stats,
        })
    }

    /// Stops the worker threads that run: their ports release their frames and close.
    fn stop_workers(&mut self) -> Result<Vec<workers::StoppedWorker>, String> {
        let mut stopped = Vec::new();
        let mut panicked = false;
        for link in &mut self.workers {
            let Some(thread) = link.thread.take() else {
                continue;
            };
            match thread.stop() {
                Ok(s) => stopped.push(s),
                Err(_) => panicked = true,
            }
        }
        self.publisher.reclaim();
        if panicked {
            return Err("a worker thread panicked".into());
        }
        Ok(stopped)
    }
}

impl Drop for Engine {
    /// An engine dropped without [`Engine::shutdown`] (an error path, a failing test) still
    /// stops its worker, so no poll loop outlives it.
    fn drop(&mut self) {
        let _ = self.stop_workers();
    }
}

/// What [`Engine::shutdown`] leaves.
#[derive(Debug)]
pub struct Shutdown {
    /// The workers' final counters, summed.
    pub counters: Arc<WorkerCounters>,
    /// Each worker's final counters, by index.
    pub workers: Vec<Arc<WorkerCounters>>,
    /// (port id, driver name) of the ports.
    pub names: Vec<(PortId, String)>,
    /// Driver statistics of each port just before the stop.
    pub driver_stats: Vec<DriverStats>,
}
