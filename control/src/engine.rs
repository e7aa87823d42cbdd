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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_dataplane::buf::{FramePool, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM};
use pollux_dataplane::conntrack::{Dir, FlowKey, TcpState};
use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::l3::REACHABLE_SECS;
use pollux_dataplane::port::{Port, PortId};
use pollux_dataplane::publish::{GenerationAck, Publisher};
use pollux_dataplane::slowpath::DEFAULT_RING_DEPTH;
use pollux_dataplane::snapshot::mac_from_u64;
use pollux_dataplane::worker::{Mailbox, Worker, WorkerConfig};
use pollux_drivers::mem::MemPortConfig;
use pollux_drivers::xsk::Umem;
use serde::Deserialize;
use serde_json::Value;

use crate::binding::{describe, Bindings, MemWires};
use crate::compile::{compile, dhcp_mac, CompileError, Compiled, Identities, PortKind, PortPlan};
use crate::dhcp::config::dhcp_configs;
use crate::dhcp::service::{DhcpService, LeaseRow, NetworkDhcp, ServiceStats};
use crate::diff::{diff, Diff};
use crate::metrics::MetricsSource;
use crate::model::DesiredState;
use crate::store::{Store, StoreError};
use crate::validate::{fmt_mac, validate, Validated, ValidationError};
use crate::workers::{self, WorkerThread};

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

/// How the engine runs its worker.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// CPU the worker is pinned to (`None`: not pinned).
    pub core: Option<usize>,
    /// Frames in the worker's pool; raised to what the initial ports need.
    pub pool_frames: u32,
    /// Ring geometry of `mem` ports.
    pub mem: MemPortConfig,
    /// Worker tunables.
    pub worker: WorkerConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            core: None,
            pool_frames: DEFAULT_POOL_FRAMES,
            mem: MemPortConfig::default(),
            worker: WorkerConfig::default(),
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

/// Options of one change.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Validate, compile and diff only.
    pub dry_run: bool,
    /// Refuse unless this is the active generation.
    pub expect_generation: Option<u64>,
}

/// What a change did.
#[derive(Clone, Debug)]
pub struct ApplyOutcome {
    /// The active generation afterwards (the new one when applied).
    pub generation: u64,
    /// Whether a new generation was published.
    pub applied: bool,
    /// Whether the state differs from the active one.
    pub changed: bool,
    /// What differs.
    pub diff: Diff,
}

/// The state of one port's binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortStatus {
    /// Open and polled.
    Up,
    /// Not open: why (an interface that vanished, a failed reopen). Retried.
    Down(String),
}

/// The running configuration.
#[derive(Debug)]
struct Active {
    state: DesiredState,
    valid: Validated,
    generation: u64,
    identities: Identities,
    plans: Vec<PortPlan>,
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
    worker: WorkerLink,
    status: BTreeMap<PortId, PortStatus>,
    /// Frames the open ports may hold, against the pool's capacity.
    frames_committed: u32,
    pool_capacity: u32,
    metrics: Arc<MetricsSource>,
    started: Instant,
    /// The DHCP server; `None` only after shutdown.
    dhcp: Option<DhcpService>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("generation", &self.active.generation)
            .field("ports", &self.active.plans.len())
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// Reads a desired state sent as JSON, with the paths of shape errors.
pub fn state_from_json(value: &Value) -> Result<DesiredState, ApplyError> {
    if let Ok(state) = DesiredState::deserialize(value) {
        return Ok(state);
    }
    // The error path goes through the text parser, which locates the offending field.
    DesiredState::from_json_str(&value.to_string()).map_err(|e| {
        ApplyError::Invalid(vec![ValidationError {
            path: e.path.clone().unwrap_or_else(|| "state".into()),
            message: e.message.clone(),
        }])
    })
}

/// The DHCP server configuration of every network with DHCP, keyed by the identities
/// the snapshot uses.
fn dhcp_networks(valid: &Validated, identities: &Identities) -> Vec<NetworkDhcp> {
    let uid_of = |n: usize| identities.network_uid(&valid.networks[n].id);
    dhcp_configs(valid, |n| uid_of(n).map(dhcp_mac).unwrap_or_default())
        .into_iter()
        .filter_map(|(n, config)| {
            Some(NetworkDhcp {
                uid: uid_of(n)?,
                network_id: valid.networks[n].id.clone(),
                config,
            })
        })
        .collect()
}

fn to_value(state: &DesiredState) -> Value {
    serde_json::to_value(state).expect("the model serialises to JSON")
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
        let pool_capacity = config.pool_frames.max(needed + SPARE_FRAMES);
        let mut pool = FramePool::new(pool_capacity, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM)
            .map_err(|e| format!("frame pool of {pool_capacity} frames: {e}"))?;
        // SAFETY: every socket made from this UMEM belongs to a port that lives in the
        // worker (which drops its ports before its pool) or is closed by the engine before
        // its frames go back to the pool; on the error path below the opened ports release
        // their frames before the pool is dropped. No code indexes frames it does not own.
        let umem = unsafe { Umem::new(&pool) }.map_err(|e| format!("AF_XDP UMEM: {e}"))?;
        let mut bindings = Bindings::new(umem, config.mem, wires);

        let mut opened: Vec<(PortId, Box<dyn Port>, Vec<u16>)> = Vec::new();
        let mut failure = None;
        for plan in &plans {
            let result = bindings
                .prepare(plan)
                .and_then(|p| match (p.open)(&mut pool) {
                    Ok(port) => Ok((port, p.queues)),
                    Err(e) => Err(e.to_string()),
                });
            match result {
                Ok((port, queues)) => opened.push((plan.id, port, queues)),
                Err(e) => {
                    failure = Some(format!("{}: {e}", plan.key));
                    break;
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
            for (_, mut port, _) in opened {
                port.release_frames(&mut pool);
            }
            return Err(e);
        }

        let mut publisher = Publisher::new(snapshot);
        let ack = publisher.register_worker();
        let mut worker = Worker::new(
            config.worker,
            pool,
            publisher.cell(),
            Arc::clone(&ack),
            PORT_ID_SLOTS,
        );
        let mut status = BTreeMap::new();
        for (id, port, queues) in opened {
            worker.attach(id, port, &queues);
            status.insert(id, PortStatus::Up);
        }
        let slow_path = worker.connect_slow_path(DEFAULT_RING_DEPTH);
        let dhcp = DhcpService::start(
            vec![slow_path],
            store.as_ref().map(|s| s.dir().join(LEASE_DIR)),
            dhcp_networks(&valid, &identities),
        )
        .map_err(|e| format!("DHCP service: {e}"))?;
        let counters = worker.counters();
        let mailbox = worker.mailbox();
        let cell = publisher.cell();
        let metrics = Arc::new(
            MetricsSource::new(vec![(0, Arc::clone(&counters))], Vec::new())
                .with_generation_fn(move || cell.generation())
                .with_dhcp_fn(dhcp.stats_fn()),
        );
        let thread = workers::spawn(worker, config.worker.id, config.core).map_err(|e| {
            format!(
                "worker on CPU {}: {e}",
                config.core.map_or("-".into(), |c| c.to_string())
            )
        })?;
        let engine = Engine {
            active: Active {
                state: initial.state,
                valid,
                generation: initial.generation,
                identities,
                plans,
            },
            publisher,
            store,
            bindings,
            worker: WorkerLink {
                thread: Some(thread),
                mailbox,
                counters,
                ack,
                core: config.core,
            },
            status,
            frames_committed: needed,
            pool_capacity,
            metrics,
            started: Instant::now(),
            dhcp: Some(dhcp),
        };
        engine.update_metric_ports();
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

    /// The worker's counters.
    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.worker.counters
    }

    /// The CPU the worker is pinned to.
    pub fn worker_core(&self) -> Option<usize> {
        self.worker.core
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

    /// Applies `state`. See the module documentation for the steps; on error nothing
    /// changed.
    pub fn apply(
        &mut self,
        state: DesiredState,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        let started = Instant::now();
        let result = self.apply_inner(state, options);
        match &result {
            Ok(o) if o.applied => {
                let (added, removed, changed) = o.diff.counts();
                crate::info!(
                    "generation {} applied in {:?}: {added} added, {removed} removed, \
                     {changed} changed",
                    o.generation,
                    started.elapsed()
                );
            }
            Ok(_) => {}
            Err(e) => crate::log!(
                crate::log::Level::Debug,
                "change refused: {}",
                e.to_string().lines().next().unwrap_or_default()
            ),
        }
        result
    }

    fn apply_inner(
        &mut self,
        state: DesiredState,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        if let Some(expected) = options.expect_generation {
            if expected != self.active.generation {
                return Err(ApplyError::GenerationMismatch {
                    expected,
                    current: self.active.generation,
                });
            }
        }
        let valid = validate(&state).map_err(ApplyError::Invalid)?;
        let diff = diff(&self.active.state, &state);
        let unchanged = ApplyOutcome {
            generation: self.active.generation,
            applied: false,
            changed: !diff.is_empty(),
            diff,
        };
        if !unchanged.changed {
            return Ok(unchanged);
        }
        let next = self.active.generation + 1;
        let compiled = compile(&valid, &self.active.identities, next)?;
        if options.dry_run {
            return Ok(unchanged);
        }
        let diff = unchanged.diff;

        let changes = PortChanges::between(&self.active.plans, &compiled.ports);
        self.check_frame_budget(&changes)?;
        let added = self.open_ports(&changes.added)?;
        if let Some(store) = self.store.as_mut() {
            if let Err(e) = store.commit_owned(next, to_value(&state)) {
                self.close_ports(&added);
                return Err(ApplyError::Store(e));
            }
        }
        // Committed: from here on the new generation is the running one, whatever happens.
        self.publisher
            .publish(compiled.snapshot)
            .map_err(|e| ApplyError::Internal(e.to_string()))?;
        self.active = Active {
            state,
            valid,
            generation: next,
            identities: compiled.identities,
            plans: compiled.ports,
        };
        self.update_metric_ports();
        if let Some(dhcp) = self.dhcp.as_mut() {
            dhcp.reconfigure(dhcp_networks(&self.active.valid, &self.active.identities));
        }
        self.wait_for_worker(next)?;

        self.close_ports(&changes.removed);
        // A port whose binding changed keeps its id: closed, then opened again with the
        // new binding. A failure leaves it down, retried by `supervise_links`.
        self.close_ports(&changes.rebound_old);
        self.reopen(&changes.rebound_new);
        self.publisher.reclaim();
        Ok(ApplyOutcome {
            generation: next,
            applied: true,
            changed: true,
            diff,
        })
    }

    /// Rolls back to retained generation `generation`: applies its state as a new
    /// generation.
    pub fn rollback(
        &mut self,
        generation: u64,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        let retained = || {
            self.history()
                .into_iter()
                .map(|(g, _)| g)
                .collect::<Vec<_>>()
        };
        let value = match &self.store {
            Some(store) => store.get(generation).map_err(ApplyError::Store)?,
            None => (generation == self.active.generation).then(|| to_value(&self.active.state)),
        };
        let Some(value) = value else {
            return Err(ApplyError::UnknownGeneration {
                generation,
                retained: retained(),
            });
        };
        let state = state_from_json(&value)?;
        self.apply(state, options)
    }

    /// The retained generations and when each was applied (Unix seconds), newest first.
    pub fn history(&self) -> Vec<(u64, u64)> {
        match &self.store {
            Some(store) => store.history(),
            None => vec![(self.active.generation, 0)],
        }
    }

    /// The state of a retained generation.
    pub fn state_of(&self, generation: u64) -> Result<DesiredState, ApplyError> {
        if generation == self.active.generation {
            return Ok(self.active.state.clone());
        }
        let value = match &self.store {
            Some(store) => store.get(generation).map_err(ApplyError::Store)?,
            None => None,
        };
        match value {
            Some(v) => state_from_json(&v),
            None => Err(ApplyError::UnknownGeneration {
                generation,
                retained: self.history().into_iter().map(|(g, _)| g).collect(),
            }),
        }
    }

    /// Learned and static FDB entries: (network id, MAC, port key, learned, age in
    /// seconds). Learned entries come from the worker's table, read by a job.
    pub fn fdb(&self) -> Result<Vec<FdbEntry>, ApplyError> {
        let (now, learned) = self.call(|w| {
            let entries: Vec<_> = w.macs().entries().collect();
            (w.now_secs(), entries)
        })?;
        let networks = self.active.identities.networks_by_uid();
        let ports = self.active.identities.ports_by_id();
        let snap = self.publisher.current();
        let mut out = Vec::new();
        for (slot, mac, port) in snap.static_macs() {
            let Some(net) = snap.network(slot) else {
                continue;
            };
            if let (Some(&network_id), Some(&port)) = (networks.get(&net.uid.0), ports.get(&port.0))
            {
                out.push(FdbEntry {
                    network_id: network_id.to_string(),
                    mac: fmt_mac(mac_from_u64(mac)),
                    port: port.to_string(),
                    learned: false,
                    age_secs: 0,
                });
            }
        }
        for (_, mac, entry) in learned {
            // Entries left by a removed network or port age out; they are not shown.
            if let (Some(&network_id), Some(&port)) =
                (networks.get(&entry.uid), ports.get(&entry.port.0))
            {
                out.push(FdbEntry {
                    network_id: network_id.to_string(),
                    mac: fmt_mac(mac_from_u64(mac)),
                    port: port.to_string(),
                    learned: true,
                    age_secs: now.saturating_sub(entry.seen),
                });
            }
        }
        out.sort_by(|a, b| (&a.network_id, &a.mac).cmp(&(&b.network_id, &b.mac)));
        Ok(out)
    }

    /// The routers' neighbours (ARP entries) as the worker holds them, read by a job,
    /// sorted by network and address. Entries of removed networks are not shown (they age
    /// out).
    pub fn neighbors(&self) -> Result<Vec<NeighborEntry>, ApplyError> {
        let (now, entries) = self.call(|w| {
            let entries: Vec<_> = w.router().neighbors().entries().collect();
            (w.now_secs(), entries)
        })?;
        let networks = self.active.identities.networks_by_uid();
        let mut out: Vec<NeighborEntry> = entries
            .into_iter()
            .filter_map(|(uid, ip, n)| {
                let network_id = networks.get(&uid.0)?.to_string();
                let age_secs = now.saturating_sub(n.confirmed);
                let state = match n.mac() {
                    None => NeighborState::Incomplete,
                    Some(_) if age_secs >= REACHABLE_SECS => NeighborState::Stale,
                    Some(_) => NeighborState::Reachable,
                };
                Some(NeighborEntry {
                    network_id,
                    ip: Ipv4Addr::from(ip),
                    mac: n.mac().map(|m| fmt_mac(mac_from_u64(m))),
                    state,
                    age_secs,
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.network_id, a.ip).cmp(&(&b.network_id, b.ip)));
        Ok(out)
    }

    /// The routers' NAT sessions as the worker holds them (live ones), read by a job,
    /// sorted by router and original flow. Sessions of removed routers are not shown.
    pub fn sessions(&self) -> Result<Vec<SessionEntry>, ApplyError> {
        let (now, sessions) = self.call(|w| {
            let now = u64::from(w.now_secs());
            let sessions: Vec<_> = w
                .router()
                .sessions()
                .iter()
                .filter(|(_, s)| !s.is_expired(now))
                .map(|(_, s)| *s)
                .collect();
            (now, sessions)
        })?;
        let routers = self.active.identities.routers_by_uid();
        let ports = self.active.identities.ports_by_id();
        let mut out: Vec<SessionEntry> = sessions
            .into_iter()
            .filter_map(|s| {
                let original = *s.key(Dir::Original);
                let router_id = routers.get(&original.zone)?.to_string();
                let owner = u16::try_from(s.owner()).ok();
                Some(SessionEntry {
                    router_id,
                    port: owner.and_then(|p| ports.get(&p)).map(|k| k.to_string()),
                    original,
                    reply: *s.key(Dir::Reply),
                    state: s.tcp_state().map(TcpState::name),
                    idle_secs: now.saturating_sub(s.last_seen()),
                    expires_in_secs: s.expires().saturating_sub(now),
                    packets: [s.packets(Dir::Original), s.packets(Dir::Reply)],
                    bytes: [s.bytes(Dir::Original), s.bytes(Dir::Reply)],
                })
            })
            .collect();
        out.sort_by_key(|e| {
            let k = e.original;
            (e.router_id.clone(), k.proto, k.src, k.sport, k.dst, k.dport)
        });
        Ok(out)
    }

    /// Every open port's driver name (its interface, for AF_XDP) and driver statistics,
    /// read by a job.
    pub fn driver_stats(&self) -> Result<Vec<DriverStats>, ApplyError> {
        self.call(|w| {
            w.ports()
                .iter()
                .map(|(id, p)| DriverStats {
                    id,
                    name: p.name().to_string(),
                    extra: p.stats().extra,
                })
                .collect()
        })
    }

    /// Closes and reopens AF_XDP ports whose interface vanished, came back or was
    /// recreated, and retries ports that are down. Called on a timer.
    pub fn supervise_links(&mut self) {
        let mut close = Vec::new();
        let mut reopen = Vec::new();
        for plan in &self.active.plans {
            let up = self.status.get(&plan.id) == Some(&PortStatus::Up);
            if up && self.bindings.is_current(plan) {
                continue;
            }
            if up {
                crate::info!(
                    "{}: {} vanished or was recreated; port closed",
                    plan.key,
                    describe(&plan.binding)
                );
                close.push(plan.clone());
            }
            if Bindings::interface_present(plan) {
                reopen.push(plan.clone());
            }
        }
        self.close_ports(&close);
        for plan in &close {
            self.status
                .insert(plan.id, PortStatus::Down("interface vanished".into()));
        }
        self.reopen(&reopen);
    }

    /// Opens each of `plans`' ports, leaving those that fail down with their reason (logged
    /// when it changes), for [`Engine::supervise_links`] to retry.
    fn reopen(&mut self, plans: &[PortPlan]) {
        let outcomes = match self.open_each(plans) {
            Ok(o) => o,
            Err(e) => {
                crate::warn!("{e}");
                return;
            }
        };
        for (plan, result) in outcomes {
            match result {
                Ok(()) => crate::info!(
                    "{}: {} is back; port reopened",
                    plan.key,
                    describe(&plan.binding)
                ),
                Err(why) => {
                    let down = PortStatus::Down(why.clone());
                    if self.status.get(&plan.id) != Some(&down) {
                        crate::warn!("{}: {why}; will retry", plan.key);
                    }
                    self.status.insert(plan.id, down);
                }
            }
        }
    }

    /// Stops the worker (its ports release their frames and close) and frees everything.
    /// Returns the worker's counters and each port's driver statistics.
    pub fn shutdown(mut self) -> Result<Shutdown, String> {
        let driver_stats = self.driver_stats().unwrap_or_default();
        // Its last lease changes are written before anything else stops.
        if let Some(dhcp) = self.dhcp.take() {
            dhcp.stop();
        }
        let stopped = self.stop_worker()?;
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
            counters: Arc::clone(&self.worker.counters),
            names,
            driver_stats,
        })
    }

    /// Stops the worker thread, if it runs: its ports release their frames and close.
    fn stop_worker(&mut self) -> Result<Option<workers::StoppedWorker>, String> {
        let Some(thread) = self.worker.thread.take() else {
            return Ok(None);
        };
        let stopped = thread.stop().map_err(|_| "the worker thread panicked")?;
        self.publisher.reclaim();
        Ok(Some(stopped))
    }

    /// Every DHCP lease, by network id then address.
    pub fn leases(&self) -> Vec<LeaseRow> {
        self.dhcp.as_ref().map(|d| d.leases()).unwrap_or_default()
    }

    /// The DHCP server's counters.
    pub fn dhcp_stats(&self) -> ServiceStats {
        self.dhcp.as_ref().map(|d| d.stats()).unwrap_or_default()
    }

    /// (port id, key) of every port of the active configuration.
    pub fn port_names(&self) -> Vec<(PortId, String)> {
        self.active
            .plans
            .iter()
            .map(|p| (p.id, p.key.clone()))
            .collect()
    }

    /// Ports are labelled as `fdb.list` names them: a VM port by its id, an uplink as
    /// `uplink:NAME`.
    fn update_metric_ports(&self) {
        let labels = self
            .port_names()
            .into_iter()
            .map(|(id, key)| (id, port_label(&key).to_string()))
            .collect();
        self.metrics.set_ports(labels);
    }

    /// Runs `f` on the worker's thread and returns its result.
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> R + Send + 'static,
    ) -> Result<R, ApplyError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.worker
            .mailbox
            .post(move |w| {
                let _ = tx.send(f(w));
            })
            .map_err(|e| ApplyError::Internal(e.to_string()))?;
        rx.recv_timeout(WORKER_TIMEOUT).map_err(|_| {
            ApplyError::Internal(format!(
                "the worker did not answer within {WORKER_TIMEOUT:?}"
            ))
        })
    }

    fn check_frame_budget(&self, changes: &PortChanges) -> Result<(), ApplyError> {
        let frames = |plans: &[PortPlan]| -> u32 {
            plans
                .iter()
                .map(|p| Bindings::frames_needed(&p.binding))
                .sum()
        };
        let after = (self.frames_committed + frames(&changes.added) + frames(&changes.rebound_new))
            .saturating_sub(frames(&changes.removed) + frames(&changes.rebound_old));
        let budget = self.pool_capacity.saturating_sub(SPARE_FRAMES);
        if after > budget {
            return Err(ApplyError::Bind(vec![(
                "ports".into(),
                format!(
                    "the AF_XDP queues would need {after} frames of the worker's pool, which \
                     has {} ({SPARE_FRAMES} kept spare); start polluxd with a larger \
                     --pool-frames",
                    self.pool_capacity
                ),
            )]));
        }
        Ok(())
    }

    /// Prepares and opens `plans`' ports and attaches them to the worker. All or nothing:
    /// on any failure the ones opened are closed again and every failure is reported.
    fn open_ports(&mut self, plans: &[PortPlan]) -> Result<Vec<PortPlan>, ApplyError> {
        let mut opened = Vec::new();
        let mut errors = Vec::new();
        for (plan, result) in self.open_each(plans)? {
            match result {
                Ok(()) => opened.push(plan),
                Err(e) => errors.push((plan.key, e)),
            }
        }
        if errors.is_empty() {
            return Ok(opened);
        }
        self.close_ports(&opened);
        Err(ApplyError::Bind(errors))
    }

    /// Prepares and opens each of `plans`' ports, attaching those that open; the outcome
    /// for each. Fails only when the worker does not answer.
    fn open_each(&mut self, plans: &[PortPlan]) -> Result<Vec<OpenOutcome>, ApplyError> {
        let mut outcomes = Vec::new();
        let mut pending = Vec::new();
        let mut jobs = Vec::new();
        for plan in plans {
            match self.bindings.prepare(plan) {
                Ok(p) => {
                    jobs.push((plan.id, p.open, p.queues));
                    pending.push((plan.clone(), p.frames));
                }
                Err(e) => outcomes.push((plan.clone(), Err(e))),
            }
        }
        if jobs.is_empty() {
            return Ok(outcomes);
        }
        let results = self.call(move |w| {
            jobs.into_iter()
                .map(|(id, open, queues)| {
                    let port = open(w.pool_mut()).map_err(|e| e.to_string())?;
                    w.attach_new(id, port, &queues);
                    Ok(())
                })
                .collect::<Vec<Result<(), String>>>()
        });
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                for (plan, _) in &pending {
                    self.bindings.release(plan.id, &plan.key);
                }
                return Err(e);
            }
        };
        for ((plan, frames), result) in pending.into_iter().zip(results) {
            match &result {
                Ok(()) => {
                    self.frames_committed += frames;
                    self.status.insert(plan.id, PortStatus::Up);
                }
                Err(_) => self.bindings.release(plan.id, &plan.key),
            }
            outcomes.push((plan, result));
        }
        Ok(outcomes)
    }

    /// Takes `plans`' ports out of the worker, closes them here and gives their frames
    /// back to the worker's pool.
    fn close_ports(&mut self, plans: &[PortPlan]) {
        if plans.is_empty() {
            return;
        }
        let ids: Vec<PortId> = plans.iter().map(|p| p.id).collect();
        let taken = self.call(move |w| {
            ids.iter()
                .filter_map(|&id| w.take_port(id))
                .collect::<Vec<_>>()
        });
        let mut frames = Vec::new();
        if let Ok(ports) = taken {
            for mut port in ports {
                frames.extend(port.close());
            }
        }
        if !frames.is_empty() {
            // Without waiting: later jobs (ports opened next) run after this one.
            let _ = self.worker.mailbox.post(move |w| w.free_frames(&frames));
        }
        for plan in plans {
            self.frames_committed = self
                .frames_committed
                .saturating_sub(Bindings::frames_needed(&plan.binding));
            self.bindings.release(plan.id, &plan.key);
            self.status.remove(&plan.id);
        }
    }

    /// Waits until the worker runs `generation` (or a newer one).
    fn wait_for_worker(&self, generation: u64) -> Result<(), ApplyError> {
        let deadline = Instant::now() + WORKER_TIMEOUT;
        while self.worker.ack.get() < generation {
            if Instant::now() > deadline {
                return Err(ApplyError::Internal(format!(
                    "generation {generation} is committed, but the worker has not picked it up \
                     within {WORKER_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }
}

impl Drop for Engine {
    /// An engine dropped without [`Engine::shutdown`] (an error path, a failing test) still
    /// stops its worker, so no poll loop outlives it.
    fn drop(&mut self) {
        let _ = self.stop_worker();
    }
}

/// A port and whether it opened (or why not).
type OpenOutcome = (PortPlan, Result<(), String>);

/// One FDB entry for `fdb.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    /// The network.
    pub network_id: String,
    /// The MAC (`fa:16:3e:00:00:01`).
    pub mac: String,
    /// The port key (`port:ID`, `uplink:NAME`).
    pub port: String,
    /// Learned (true) or a VM port's own MAC (false).
    pub learned: bool,
    /// Seconds since last seen (learned entries).
    pub age_secs: u32,
}

/// How sure the router is of a neighbour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighborState {
    /// Asked for, no answer yet.
    Incomplete,
    /// Confirmed recently.
    Reachable,
    /// Still used, being asked again.
    Stale,
}

impl NeighborState {
    /// The name `neighbors.list` uses.
    pub fn name(self) -> &'static str {
        match self {
            NeighborState::Incomplete => "incomplete",
            NeighborState::Reachable => "reachable",
            NeighborState::Stale => "stale",
        }
    }
}

/// One neighbour for `neighbors.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighborEntry {
    /// The network.
    pub network_id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC, once resolved.
    pub mac: Option<String>,
    /// Resolution state.
    pub state: NeighborState,
    /// Seconds since it last confirmed its address.
    pub age_secs: u32,
}

/// One NAT session for `sessions.list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    /// The router translating it.
    pub router_id: String,
    /// The port that opened it (`port:ID`), if it still exists.
    pub port: Option<String>,
    /// The flow as its first packet arrived.
    pub original: FlowKey,
    /// The flow as replies carry it (after translation).
    pub reply: FlowKey,
    /// TCP state (TCP only).
    pub state: Option<&'static str>,
    /// Seconds since the last packet.
    pub idle_secs: u64,
    /// Seconds until it times out unless a packet comes.
    pub expires_in_secs: u64,
    /// Packets as originated, and as replied.
    pub packets: [u64; 2],
    /// Bytes as originated, and as replied.
    pub bytes: [u64; 2],
}

/// One port's driver statistics.
#[derive(Clone, Debug)]
pub struct DriverStats {
    /// The port.
    pub id: PortId,
    /// The driver's name for it (the interface of an AF_XDP port).
    pub name: String,
    /// Driver counters by name.
    pub extra: Vec<(&'static str, u64)>,
}

/// What [`Engine::shutdown`] leaves.
#[derive(Debug)]
pub struct Shutdown {
    /// The worker's final counters.
    pub counters: Arc<WorkerCounters>,
    /// (port id, driver name) of the ports.
    pub names: Vec<(PortId, String)>,
    /// Driver statistics of each port just before the stop.
    pub driver_stats: Vec<DriverStats>,
}

/// How the ports of two configurations differ.
#[derive(Debug, Default)]
struct PortChanges {
    added: Vec<PortPlan>,
    removed: Vec<PortPlan>,
    /// Same key, other binding: the old plan and the new one.
    rebound_old: Vec<PortPlan>,
    rebound_new: Vec<PortPlan>,
}

impl PortChanges {
    fn between(old: &[PortPlan], new: &[PortPlan]) -> Self {
        let old_by_key: BTreeMap<&str, &PortPlan> =
            old.iter().map(|p| (p.key.as_str(), p)).collect();
        let new_keys: BTreeSet<&str> = new.iter().map(|p| p.key.as_str()).collect();
        let mut changes = PortChanges::default();
        for plan in new {
            match old_by_key.get(plan.key.as_str()) {
                None => changes.added.push(plan.clone()),
                Some(old) if old.binding != plan.binding => {
                    changes.rebound_old.push((*old).clone());
                    changes.rebound_new.push(plan.clone());
                }
                Some(_) => {}
            }
        }
        changes.removed = old
            .iter()
            .filter(|p| !new_keys.contains(p.key.as_str()))
            .cloned()
            .collect();
        changes
    }
}

/// A port key as users name the port: a VM port by its id, an uplink as `uplink:NAME`.
pub fn port_label(key: &str) -> &str {
    key.strip_prefix("port:").unwrap_or(key)
}

/// The kind of a port as `ports.list` shows it.
pub fn kind_name(kind: PortKind) -> &'static str {
    match kind {
        PortKind::Uplink => "uplink",
        PortKind::Vm => "vm",
    }
}
