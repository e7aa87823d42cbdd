//! Moving receive queues between workers: by hand (`workers.pin`), by measured load
//! (`workers.rebalance`, and on a cadence with `polluxd --auto-rebalance-interval`).
//!
//! A queue moves with its port's driver object, so only ports whose object may change
//! threads move: `mem` and vhost-user ports (plain memory and eventfds; they hold no pool
//! frames between calls). An AF_XDP queue's socket is bound to the UMEM of the worker
//! that polls it (its fill and completion rings hold that worker's frames): it would need
//! a new socket on the other worker's UMEM, losing what the old socket's rings hold. A tap
//! port's reads are posted on an io_uring by its worker's thread and complete as that
//! thread's task work. Both are refused with the not-supported error.
//!
//! The move loses nothing and keeps each flow's order (docs/DESIGN.md, "Workers"):
//!
//! 1. every other worker holds the frames it sends to the port (flushing what it sent
//!    before into its ring to the old worker);
//! 2. the old worker takes everything handed to it (and sends what is for the port on
//!    the port), stops polling it and lets go of it; it holds its own frames for the port
//!    from then on;
//! 3. every other worker takes everything the old worker handed it, so that the frames
//!    the old worker received from the port are ahead of anything the new one will;
//! 4. the new worker attaches the port, polls it and sends its own held frames on it;
//! 5. every other worker sends its held frames to the new worker, and later ones too.
//!
//! Each step is a job on the workers' mailboxes, run between two passes: no worker stops.
//! While the port is between workers nobody polls it (its frames wait in its receive
//! ring, a VM's virtqueue) and frames to it wait in their senders (at most
//! [`pollux_dataplane::output::MAX_HELD`] each; beyond that a counted drop,
//! `queue_move_hold_full`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_dataplane::counters::QueueLoad;
use pollux_dataplane::port::PortId;

use super::load::QueueRate;
use super::rebalance::{self, QueueIn};
use super::{port_label, ApplyError, Engine, PortStatus};
use crate::validate::Binding;

/// Share by which a rebalance must lower the variance of the workers' loads to be
/// applied, unless told otherwise (OVS's `pmd-auto-lb-improvement-threshold`).
pub const DEFAULT_IMPROVEMENT: f64 = 0.25;

/// Automatic rebalancing's consecutive checks that must each find a plan worth applying
/// before one is (hysteresis: a burst of load does not move queues).
pub const AUTO_CHECKS: u32 = 2;

/// How the engine rebalances by itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoRebalance {
    /// Between two checks; `None`: only on demand.
    pub interval: Option<Duration>,
    /// The share by which a plan must lower the variance (0 to 1).
    pub improvement: f64,
}

impl Default for AutoRebalance {
    fn default() -> Self {
        AutoRebalance {
            interval: None,
            improvement: DEFAULT_IMPROVEMENT,
        }
    }
}

/// Rebalancing's state and counters.
#[derive(Debug)]
pub(super) struct RebalanceState {
    pub(super) auto: AutoRebalance,
    last_check: Instant,
    /// Consecutive automatic checks that found a plan worth applying.
    worth: u32,
    /// Rebalances run (on demand and automatic, dry runs aside).
    pub(super) runs: u64,
    /// Of which applied (moved at least one queue).
    pub(super) applied: u64,
    /// Automatic rebalances applied.
    pub(super) auto_applied: u64,
    /// Queues moved by rebalances and pins.
    pub(super) moved: u64,
    /// Queue pins: port key → queue → worker.
    pub(super) pins: BTreeMap<String, BTreeMap<u16, u16>>,
}

impl RebalanceState {
    pub(super) fn new(auto: AutoRebalance, pins: Pins) -> Self {
        RebalanceState {
            auto,
            last_check: Instant::now(),
            worth: 0,
            runs: 0,
            applied: 0,
            auto_applied: 0,
            moved: 0,
            pins,
        }
    }
}

/// Queue pins: port key → queue → worker.
pub(super) type Pins = BTreeMap<String, BTreeMap<u16, u16>>;

/// The file, in the state directory, that keeps the pins across restarts.
pub const PINS_FILE: &str = "queue-pins.json";

/// Reads the pins kept in `dir` (none when there is no file). A file that cannot be read
/// or parsed is an error naming it, as the state files are: polluxd never silently
/// forgets what it was told.
pub(super) fn load_pins(dir: &Path) -> Result<Pins, String> {
    let path = dir.join(PINS_FILE);
    let bytes = match pollux_services::private_fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pins::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces the pins kept in `dir`: a temporary file, fsynced, renamed over the old one;
/// no pins, no file.
fn save_pins(dir: &Path, pins: &Pins) -> std::io::Result<()> {
    let (path, tmp) = (dir.join(PINS_FILE), dir.join(format!("{PINS_FILE}.tmp")));
    if pins.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => return std::fs::File::open(dir)?.sync_all(),
        }
    }
    let mut file = pollux_services::private_fs::create_new(&tmp)?;
    file.write_all(&serde_json::to_vec(pins).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// One receive queue as `workers.list` shows it.
#[derive(Clone, Debug)]
pub struct QueueRow {
    /// The port's id (`uplink:NAME` for an uplink).
    pub port: String,
    /// The queue's index in the port.
    pub queue: u16,
    /// The worker polling it.
    pub worker: u16,
    /// Pinned there by hand.
    pub pinned: bool,
    /// Why it cannot move, if it cannot.
    pub fixed: Option<String>,
    /// Frames received from it on this worker, and the polls and cycles they took.
    pub packets: u64,
    /// Polls that returned frames.
    pub bursts: u64,
    /// Cycles of those polls.
    pub cycles: u64,
    /// Its rate over the last seconds.
    pub rate: Option<QueueRate>,
}

/// A queue a rebalance moved (or would move).
#[derive(Clone, Debug, PartialEq)]
pub struct Moved {
    /// The port's id.
    pub port: String,
    /// The queue's index.
    pub queue: u16,
    /// Its worker before.
    pub from: u16,
    /// Its worker after.
    pub to: u16,
    /// Its load (cycles per second).
    pub load: f64,
}

/// What a rebalance found and did.
#[derive(Clone, Debug)]
pub struct RebalanceOutcome {
    /// The queues moved (or that a dry run, or a plan below the threshold, would move).
    pub moves: Vec<Moved>,
    /// Each worker's load (cycles per second) before and after.
    pub before: Vec<f64>,
    /// The same with the plan.
    pub after: Vec<f64>,
    /// The variance of the workers' loads before and with the plan.
    pub variance_before: f64,
    /// With the plan.
    pub variance_after: f64,
    /// The share by which the plan lowers the variance.
    pub improvement: f64,
    /// The threshold it was held against.
    pub threshold: f64,
    /// Whether the moves were made.
    pub applied: bool,
}

/// Options of [`Engine::rebalance`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RebalanceOptions {
    /// Plan only.
    pub dry_run: bool,
    /// The share by which the plan must lower the variance (default: the engine's).
    pub improvement: Option<f64>,
}

impl Engine {
    /// Why `port`'s queues cannot move between workers, if they cannot.
    fn unmovable(&self, id: PortId) -> Option<String> {
        // Plans are sorted by id (as compiled): a lookup, not a scan, per queue.
        let plans = &self.active.plans;
        let plan = &plans[plans.binary_search_by_key(&id, |p| p.id).ok()?];
        let worker = self.placement.home(id);
        match &plan.binding {
            Binding::Mem | Binding::VhostUser { .. } => {
                (self.status.get(&id) != Some(&PortStatus::Up)).then(|| "the port is down".into())
            }
            Binding::Afxdp { .. } => Some(format!(
                "an AF_XDP queue's socket is bound to the UMEM of the worker polling it \
                 (worker {worker}); moving it needs a new socket on the other worker's \
                 UMEM, which would lose the frames in the old socket's rings"
            )),
            Binding::Tap { .. } => Some(format!(
                "a tap port's reads are posted on an io_uring by its worker's thread \
                 (worker {worker}) and complete there; moving it needs its queue set up \
                 again on the new worker, which is not done yet"
            )),
        }
    }

    /// The port whose users' name (VM port id, `uplink:NAME`) is `name`.
    fn port_named(&self, name: &str) -> Option<(PortId, String)> {
        self.active
            .plans
            .iter()
            .find(|p| port_label(&p.key) == name)
            .map(|p| (p.id, p.key.clone()))
    }

    /// Samples every queue's load counters (see [`super::load`]); on the control
    /// thread's timer, and before a rebalance.
    pub fn sample_loads(&mut self) {
        let mut seen = Vec::new();
        for (w, link) in self.workers.iter().enumerate() {
            let w = w as u16;
            for record in link.counters.queue_loads() {
                // The worker numbers its part's queues 0, 1, ...: the i-th queue of the
                // port placed on it.
                let Some(owners) = self.placement.owners(record.port) else {
                    continue;
                };
                let global = owners
                    .iter()
                    .enumerate()
                    .filter(|(_, &o)| o == w)
                    .nth(usize::from(record.queue))
                    .map(|(g, _)| g as u16);
                if let Some(g) = global {
                    seen.push((record.port, g, w, Arc::clone(&record)));
                }
            }
        }
        self.loads.observe(seen, Instant::now());
    }

    /// Every receive queue with its worker, counters and rate, by worker then port.
    pub fn queue_rows(&self) -> Vec<QueueRow> {
        let names: BTreeMap<PortId, String> = self.port_names().into_iter().collect();
        let mut rows = Vec::new();
        for (w, link) in self.workers.iter().enumerate() {
            let w = w as u16;
            let records: BTreeMap<(PortId, u16), Arc<QueueLoad>> = link
                .counters
                .queue_loads()
                .into_iter()
                .map(|r| ((r.port, r.queue), r))
                .collect();
            for (port, q) in self.placement.queues_of(w) {
                let key = names.get(&port).cloned().unwrap_or_default();
                let local = self.placement.owners(port).map_or(0, |o| {
                    o[..usize::from(q)].iter().filter(|&&x| x == w).count()
                });
                let record = records.get(&(port, local as u16));
                rows.push(QueueRow {
                    port: port_label(&key).to_string(),
                    queue: q,
                    worker: w,
                    pinned: self.is_pinned(&key, q),
                    fixed: self.unmovable(port),
                    packets: record.map_or(0, |r| r.packets.get()),
                    bursts: record.map_or(0, |r| r.bursts.get()),
                    cycles: record.map_or(0, |r| r.cycles.get()),
                    rate: self.loads.rate(port, q),
                });
            }
        }
        rows
    }

    fn is_pinned(&self, key: &str, queue: u16) -> bool {
        self.rebalance
            .pins
            .get(key)
            .is_some_and(|p| p.contains_key(&queue))
    }

    /// The pins of the port with key `key` (queue → worker), for placing it.
    pub(super) fn pins_of(&self, key: &str) -> BTreeMap<u16, u16> {
        self.rebalance.pins.get(key).cloned().unwrap_or_default()
    }

    /// Pins queue `queue` of port `name` to `worker` (moving it there now), or unpins it
    /// (`None`). Returns whether the queue moved.
    pub fn pin_queue(
        &mut self,
        name: &str,
        queue: u16,
        worker: Option<u16>,
    ) -> Result<bool, ApplyError> {
        let (id, key) = self.lookup_queue(name, queue)?;
        let mut pins = self.rebalance.pins.clone();
        let moved = match worker {
            None => {
                if let Some(p) = pins.get_mut(&key) {
                    p.remove(&queue);
                    if p.is_empty() {
                        pins.remove(&key);
                    }
                }
                false
            }
            Some(to) => {
                self.check_worker(to)?;
                if let Some(why) = self.unmovable(id).filter(|_| {
                    self.placement
                        .owners(id)
                        .and_then(|o| o.get(usize::from(queue)))
                        != Some(&to)
                }) {
                    return Err(ApplyError::Unsupported {
                        path: "queue".into(),
                        what: why,
                    });
                }
                pins.entry(key).or_default().insert(queue, to);
                false
            }
        };
        // Kept before the queue moves: a pin that could not be written is refused whole.
        if pins != self.rebalance.pins {
            if let Some(dir) = self.store.as_ref().map(|s| s.dir().to_path_buf()) {
                save_pins(&dir, &pins).map_err(|source| {
                    ApplyError::Store(crate::store::StoreError::Io {
                        op: "write queue pins",
                        path: dir.join(PINS_FILE),
                        source,
                    })
                })?;
            }
            self.rebalance.pins = pins;
        }
        match worker {
            Some(to) => self.move_queue(id, queue, to),
            None => Ok(moved),
        }
    }

    fn lookup_queue(&self, name: &str, queue: u16) -> Result<(PortId, String), ApplyError> {
        let (id, key) = self
            .port_named(name)
            .ok_or_else(|| ApplyError::UnknownObject {
                collection: "ports".into(),
                id: name.into(),
                change: 0,
            })?;
        let queues = self.placement.owners(id).map_or(0, <[u16]>::len);
        if usize::from(queue) >= queues {
            return Err(ApplyError::Unsupported {
                path: "queue".into(),
                what: format!("port {name} has {queues} receive queue(s), numbered from 0"),
            });
        }
        Ok((id, key))
    }

    fn check_worker(&self, worker: u16) -> Result<(), ApplyError> {
        if usize::from(worker) >= self.workers.len() {
            return Err(ApplyError::Unsupported {
                path: "worker".into(),
                what: format!(
                    "there are {} worker(s) (one per CPU of --cores), numbered from 0",
                    self.workers.len()
                ),
            });
        }
        Ok(())
    }

    /// Moves queue `queue` of port `id` to worker `to` without losing or reordering a
    /// frame (see the module documentation). Returns false when it is there already.
    pub(super) fn move_queue(
        &mut self,
        id: PortId,
        queue: u16,
        to: u16,
    ) -> Result<bool, ApplyError> {
        let from = self
            .placement
            .owners(id)
            .and_then(|o| o.get(usize::from(queue)).copied())
            .ok_or_else(|| ApplyError::Internal(format!("port #{} has no queue {queue}", id.0)))?;
        if from == to {
            return Ok(false);
        }
        if let Some(why) = self.unmovable(id) {
            return Err(ApplyError::Unsupported {
                path: "queue".into(),
                what: why,
            });
        }
        let n = self.workers.len() as u16;
        let others = |w: u16| (0..n).filter(move |&x| x != w);
        // 1. Nobody hands the old worker frames for the port any more.
        for w in others(from) {
            self.call_on(w, move |wk| wk.hold_port(id))?;
        }
        // 2. The old worker sends what it was handed for the port and lets go of it.
        let (port, polled, drained) = self.call_on(from, move |wk| {
            wk.hold_port(id);
            let drained = wk.drain_peers();
            let polled: Vec<u16> = wk
                .poll_list()
                .iter()
                .filter(|&&(p, _)| p == id)
                .map(|&(_, q)| q)
                .collect();
            (wk.take_port(id), polled, drained)
        })?;
        let Some(port) = port else {
            for w in 0..n {
                let owner = (w != from).then_some(from);
                self.call_on(w, move |wk| wk.release_held(id, owner))?;
            }
            return Err(ApplyError::Internal(format!(
                "worker {from} does not hold port #{}",
                id.0
            )));
        };
        let mut undrained = u32::from(!drained);
        // 3. What the old worker received from the port is ahead of what the new one
        // will receive.
        for w in others(from) {
            if !self.call_on(w, |wk| wk.drain_peers())? {
                undrained += 1;
            }
        }
        if undrained > 0 {
            pollux_services::warn!(
                "moving port #{} queue {queue}: {undrained} worker(s) could not empty their \
                 rings from the others (pool short or peers too fast); frames still in them \
                 may arrive after newer ones",
                id.0
            );
        }
        // 4. The new worker polls the port and sends on it.
        self.call_on(to, move |wk| {
            wk.attach(id, port, &polled);
            wk.release_held(id, None);
        })?;
        // 5. The others send there.
        for w in others(to) {
            self.call_on(w, move |wk| wk.release_held(id, Some(to)))?;
        }
        self.placement.set_worker(id, queue, to);
        self.rebalance.moved += 1;
        pollux_services::info!(
            "port #{} queue {queue} moved from worker {from} to worker {to}",
            id.0
        );
        Ok(true)
    }

    /// Plans the queues by their measured load and, unless a dry run or the plan is not
    /// worth it, moves them. See [`super::rebalance`].
    pub fn rebalance(&mut self, options: RebalanceOptions) -> Result<RebalanceOutcome, ApplyError> {
        let threshold = options
            .improvement
            .unwrap_or(self.rebalance.auto.improvement);
        self.sample_loads();
        let names: BTreeMap<PortId, String> = self.port_names().into_iter().collect();
        let mut refs = Vec::new();
        let mut queues = Vec::new();
        for (port, owners) in self.placement.ports() {
            let key = names.get(&port).cloned().unwrap_or_default();
            let fixed = self.unmovable(port).is_some();
            for (q, &w) in owners.iter().enumerate() {
                let q = q as u16;
                refs.push((port, q, key.clone()));
                queues.push(QueueIn {
                    worker: w,
                    load: self.loads.rate(port, q).map_or(0.0, |r| r.cycles_per_sec),
                    fixed: fixed || self.is_pinned(&key, q),
                });
            }
        }
        let plan = rebalance::plan(self.workers.len(), &queues);
        let improvement = plan.improvement();
        let moves: Vec<Moved> = plan
            .moved(&queues)
            .map(|i| Moved {
                port: port_label(&refs[i].2).to_string(),
                queue: refs[i].1,
                from: queues[i].worker,
                to: plan.assignment[i],
                load: queues[i].load,
            })
            .collect();
        let apply = !options.dry_run && !moves.is_empty() && improvement >= threshold;
        if !options.dry_run {
            self.rebalance.runs += 1;
        }
        if apply {
            for i in plan.moved(&queues).collect::<Vec<_>>() {
                let (port, q, _) = refs[i];
                self.move_queue(port, q, plan.assignment[i])?;
            }
            self.rebalance.applied += 1;
        }
        Ok(RebalanceOutcome {
            moves,
            before: plan.before,
            after: plan.after,
            variance_before: plan.variance_before,
            variance_after: plan.variance_after,
            improvement,
            threshold,
            applied: apply,
        })
    }

    /// Automatic rebalancing, on the control thread's timer: every interval, plans; applies
    /// when [`AUTO_CHECKS`] checks in a row found a plan worth it. Logged and counted.
    pub(super) fn auto_rebalance(&mut self) {
        let Some(interval) = self.rebalance.auto.interval else {
            return;
        };
        if self.workers.len() < 2 || self.rebalance.last_check.elapsed() < interval {
            return;
        }
        self.rebalance.last_check = Instant::now();
        let check = self.rebalance(RebalanceOptions {
            dry_run: true,
            improvement: None,
        });
        let worth = match check {
            Ok(o) => !o.moves.is_empty() && o.improvement >= o.threshold,
            Err(e) => {
                pollux_services::warn!("automatic rebalance: {e}");
                false
            }
        };
        self.rebalance.worth = if worth { self.rebalance.worth + 1 } else { 0 };
        if self.rebalance.worth < AUTO_CHECKS {
            return;
        }
        self.rebalance.worth = 0;
        match self.rebalance(RebalanceOptions::default()) {
            Ok(o) if o.applied => {
                self.rebalance.auto_applied += 1;
                pollux_services::info!(
                    "automatic rebalance: {} queue(s) moved, load variance {:.3e} -> {:.3e} \
                     ({:.0}% better)",
                    o.moves.len(),
                    o.variance_before,
                    o.variance_after,
                    o.improvement * 100.0
                );
            }
            Ok(_) => {}
            Err(e) => pollux_services::warn!("automatic rebalance: {e}"),
        }
    }

    /// Rebalancing's settings and counters: (settings, runs, applied, automatic applied,
    /// queues moved).
    pub fn rebalance_stats(&self) -> (AutoRebalance, u64, u64, u64, u64) {
        let r = &self.rebalance;
        (r.auto, r.runs, r.applied, r.auto_applied, r.moved)
    }
}
