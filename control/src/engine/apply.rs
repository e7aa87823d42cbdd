//! Changes to the running configuration: apply (in the order the module documentation
//! of [`super`] gives), rollback, and the retained generations.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::ports::PortChanges;
use super::{Active, ApplyError, Engine, WORKER_TIMEOUT};
use crate::compile::dhcp::dhcp_configs_of;
use crate::compile::metadata::metadata_table;
use crate::compile::{
    compile_ports, compile_reusing, routers_unchanged, Compiled, Identities, PortsCompiled,
};
use crate::diff::{diff, diff_of, Diff};
use crate::identity::dhcp_mac;
use crate::model::DesiredState;
use crate::patch::Edits;
use crate::validate::{validate, Validated, ValidationError};
use pollux_services::dhcp::service::NetworkDhcp;

/// A state to apply, validated and diffed against the active one.
pub(super) struct Next {
    /// The state; `None` when the active state was changed in place into it (an object
    /// change, [`super::objects`]), and is taken back by the caller unless it is applied.
    pub state: Option<DesiredState>,
    /// Its view.
    pub valid: Validated,
    /// What differs from the active state.
    pub diff: Diff,
    /// Whether the active [`crate::validate::PortIndex`] was brought in step with `valid`
    /// (and is kept), rather than left for the next change to make again.
    pub keep_index: bool,
}

/// How long each step of a change took, for the log: where the time of an apply goes.
pub(super) struct Phases {
    last: Instant,
    took: Vec<(&'static str, Duration)>,
    /// The same steps in the control thread's CPU time (what a loaded machine does not
    /// inflate; what the steps that wait, persist and worker, do not spend).
    cpu: crate::compile::spans::Spans,
}

impl Phases {
    pub(super) fn start() -> Phases {
        Phases {
            last: Instant::now(),
            took: Vec::new(),
            cpu: crate::compile::spans::Spans::start(),
        }
    }

    pub(super) fn mark(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.took.push((phase, now - self.last));
        self.last = now;
        self.cpu.mark(phase);
    }

    fn summary(&self) -> String {
        self.took
            .iter()
            .map(|(phase, d)| format!("{phase} {:.2} ms", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
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
pub(super) fn dhcp_networks(valid: &Validated, identities: &Identities) -> Vec<NetworkDhcp> {
    dhcp_networks_of(valid, identities, |_| true)
}

/// [`dhcp_networks`] of the networks (indices into `valid.networks`) `wanted` says yes to.
fn dhcp_networks_of(
    valid: &Validated,
    identities: &Identities,
    wanted: impl Fn(usize) -> bool,
) -> Vec<NetworkDhcp> {
    let uid_of = |n: usize| identities.network_uid(&valid.networks[n].id);
    let port_of = |i: usize| identities.vm_port(&valid.ports[i].id);
    dhcp_configs_of(
        valid,
        wanted,
        |n| uid_of(n).map(dhcp_mac).unwrap_or_default(),
        port_of,
    )
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

/// Whether a change can change the DHCP servers' configuration: it is made of the
/// networks (whose MTU can come from their uplink), their subnets and ports, and the
/// settings sections (and the identities of networks, which only change when networks
/// come or go). Routers, floating IPs and security groups are not part of it.
fn touches_dhcp(diff: &Diff, metadata_on: bool) -> bool {
    fn objects<T>(c: &crate::diff::ByCollection<T>) -> bool {
        !c.uplinks.is_empty()
            || !c.networks.is_empty()
            || !c.subnets.is_empty()
            || !c.ports.is_empty()
    }
    objects(&diff.added)
        || objects(&diff.removed)
        || objects(&diff.changed.objects)
        || diff.changed.dhcp
        || diff.changed.l2
        || diff.changed.metadata
        // Routers make a subnet's metadata route (isolated or not).
        || (metadata_on
            && (!diff.added.routers.is_empty()
            || !diff.removed.routers.is_empty()
                || !diff.changed.objects.routers.is_empty()))
}

/// Whether a change can change what the metadata proxy serves: `[metadata]` itself, and
/// with the proxy on, the networks, subnets, ports and routers it is made of.
fn touches_metadata(diff: &Diff, new: &Validated) -> bool {
    fn objects<T>(c: &crate::diff::ByCollection<T>) -> bool {
        !c.networks.is_empty()
            || !c.subnets.is_empty()
            || !c.ports.is_empty()
            || !c.routers.is_empty()
    }
    diff.changed.metadata
        || (new.metadata.is_some()
            && (objects(&diff.added) || objects(&diff.removed) || objects(&diff.changed.objects)))
}

/// The networks (indices into `new.networks`) whose DHCP servers a change can alter when
/// it is made of ports alone: those its ports were on and are on. `None` when it touches
/// anything else DHCP is made of, and every server is reconfigured.
fn dhcp_scope(diff: &Diff, old: &Validated, new: &Validated) -> Option<Vec<bool>> {
    fn none<T>(c: &crate::diff::ByCollection<T>) -> bool {
        c.uplinks.is_empty() && c.networks.is_empty() && c.subnets.is_empty()
    }
    let ports_only = none(&diff.added)
        && none(&diff.removed)
        && none(&diff.changed.objects)
        && !diff.changed.dhcp
        && !diff.changed.l2
        && !diff.changed.metadata;
    if !ports_only {
        return None;
    }
    let changed: HashSet<&str> = diff
        .changed
        .objects
        .ports
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    let now: HashSet<&str> = diff.added.ports.iter().map(String::as_str).collect();
    let before: HashSet<&str> = diff.removed.ports.iter().map(String::as_str).collect();
    // The networks are the same objects in both states (none changed), but not
    // necessarily at the same index: matched by id. The ports are looked for one by one:
    // a change touches few, and hashing every port's id costs more than a scan per port.
    let mut touched: HashSet<&str> = HashSet::new();
    for id in now.iter().chain(&changed) {
        if let Some(p) = new.ports.iter().find(|p| p.id == *id) {
            touched.insert(new.networks[p.network].id.as_str());
        }
    }
    for id in before.iter().chain(&changed) {
        if let Some(p) = old.ports.iter().find(|p| p.id == *id) {
            touched.insert(old.networks[p.network].id.as_str());
        }
    }
    Some(
        new.networks
            .iter()
            .map(|n| touched.contains(n.id.as_str()))
            .collect(),
    )
}

/// A change compiled: whole, or as a patch of the running snapshot.
enum Made {
    Whole(Compiled),
    Patched(PortsCompiled),
}

/// Objects a batch may touch for its diff to look at them alone; a larger batch (it
/// costs objects x state) is diffed whole.
pub(super) const DIFF_BY_TOUCHED_MAX: usize = 64;

/// Drops a replaced configuration on a thread of its own: freeing a large state takes
/// tens of milliseconds that the reply need not wait for. Inline if no thread starts.
fn drop_elsewhere(old: Active) {
    // On failure the closure, and `old` with it, is dropped right here.
    let spawned = std::thread::Builder::new()
        .name("pollux-drop".into())
        .spawn(move || drop(old));
    if let Err(e) = spawned {
        pollux_services::log!(pollux_services::log::Level::Debug, "dropping inline: {e}");
    }
}

/// Logs what a change did (at info) or why it was refused (at debug).
pub(super) fn log_outcome(result: &Result<ApplyOutcome, ApplyError>, started: Instant) {
    match result {
        Ok(o) if o.applied => {
            let (added, removed, changed) = o.diff.counts();
            pollux_services::info!(
                "generation {} applied in {:?}: {added} added, {removed} removed, \
                 {changed} changed",
                o.generation,
                started.elapsed()
            );
        }
        Ok(_) => {}
        Err(e) => pollux_services::log!(
            pollux_services::log::Level::Debug,
            "change refused: {}",
            e.to_string().lines().next().unwrap_or_default()
        ),
    }
}

pub(super) fn to_value(state: &DesiredState) -> Value {
    serde_json::to_value(state).expect("the model serialises to JSON")
}

impl Engine {
    /// Applies `state`. See the module documentation for the steps; on error nothing
    /// changed.
    pub fn apply(
        &mut self,
        state: DesiredState,
        options: ApplyOptions,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.apply_edits(state, options, None)
    }

    /// [`Engine::apply`] of a state that `edits` made of the active one: diffed over the
    /// objects they touch alone and persisted as those edits, appended to the store's
    /// journal, instead of as the whole state.
    pub(super) fn apply_edits(
        &mut self,
        state: DesiredState,
        options: ApplyOptions,
        edits: Option<Edits>,
    ) -> Result<ApplyOutcome, ApplyError> {
        let started = Instant::now();
        let result = self.apply_inner(state, options, edits);
        log_outcome(&result, started);
        result
    }

    fn apply_inner(
        &mut self,
        state: DesiredState,
        options: ApplyOptions,
        edits: Option<Edits>,
    ) -> Result<ApplyOutcome, ApplyError> {
        if let Some(expected) = options.expect_generation {
            if expected != self.active.generation {
                return Err(ApplyError::GenerationMismatch {
                    expected,
                    current: self.active.generation,
                });
            }
        }
        let mut phases = Phases::start();
        let valid = validate(&state).map_err(ApplyError::Invalid)?;
        super::refuse_flow_state(&state, &valid, self.workers.len())?;
        phases.mark("validate");
        let diff = match &edits {
            Some(edits) if edits.touched.len() <= DIFF_BY_TOUCHED_MAX => {
                let d = diff_of(&self.active.state, &state, &edits.touched);
                debug_assert_eq!(
                    d,
                    diff(&self.active.state, &state),
                    "the diff over the touched objects is not the whole diff"
                );
                d
            }
            _ => diff(&self.active.state, &state),
        };
        phases.mark("diff");
        self.apply_checked(
            Next {
                state: Some(state),
                valid,
                diff,
                keep_index: false,
            },
            options,
            edits,
            phases,
        )
    }

    /// The steps of a change from compilation on (see the module documentation of
    /// [`super`]), for a state validated and diffed against the active one. Identities a
    /// patch changed in place are taken back unless a new generation came of it.
    pub(super) fn apply_checked(
        &mut self,
        next_state: Next,
        options: ApplyOptions,
        edits: Option<Edits>,
        phases: Phases,
    ) -> Result<ApplyOutcome, ApplyError> {
        let generation = self.active.generation;
        let result = self.apply_compiled(next_state, options, edits, phases);
        self.take_back_identities(generation);
        result
    }

    /// Takes back the change a patch made in place to the active identities, unless a
    /// generation after `generation` was published with them.
    pub(super) fn take_back_identities(&mut self, generation: u64) {
        if let Some(undo) = self.identities_undo.take() {
            if self.active.generation == generation {
                self.active.identities.undo(undo);
            }
        }
    }

    fn apply_compiled(
        &mut self,
        next_state: Next,
        options: ApplyOptions,
        edits: Option<Edits>,
        mut phases: Phases,
    ) -> Result<ApplyOutcome, ApplyError> {
        let Next {
            state,
            valid,
            diff,
            keep_index,
        } = next_state;
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
        // The running snapshot was compiled from the active state and identities.
        let running = edits
            .as_ref()
            .is_some_and(|e| routers_unchanged(&e.touched, &self.active.valid, &valid))
            .then(|| self.publisher.current());
        // What the test builds' checks of DHCP below compare with (a patch changes the
        // identities in place).
        let identities_before = cfg!(debug_assertions).then(|| self.active.identities.clone());
        let patched = match (&edits, &running) {
            (Some(edits), Some(snapshot)) => compile_ports(
                &valid,
                &self.active.valid,
                &mut self.active.identities,
                &edits.touched,
                next,
                snapshot,
                &self.active.plans,
            )?,
            _ => None,
        };
        let compiled = match patched {
            Some(mut patched) => {
                self.identities_undo = Some(std::mem::take(&mut patched.undo));
                Made::Patched(patched)
            }
            None => Made::Whole(compile_reusing(
                &valid,
                &self.active.identities,
                next,
                running.as_deref(),
            )?),
        };
        drop(running);
        phases.mark("compile");
        if options.dry_run {
            return Ok(unchanged);
        }
        let diff = unchanged.diff;
        // With the proxy on (before or after), routers decide which subnets are isolated.
        let metadata_on = valid.metadata.is_some() || self.active.valid.metadata.is_some();
        let dhcp_scope = touches_dhcp(&diff, metadata_on)
            .then(|| dhcp_scope(&diff, &self.active.valid, &valid))
            .flatten();

        let changes = match &compiled {
            Made::Whole(c) => PortChanges::between(&self.active.plans, &c.ports),
            Made::Patched(p) => PortChanges {
                added: p.added.clone(),
                removed: p.removed.clone(),
                rebound_old: p.rebound_old.clone(),
                rebound_new: p.rebound_new.clone(),
            },
        };
        self.check_frame_budget(&changes)?;
        let added = self.open_ports(&changes.added)?;
        phases.mark("open");
        if let Some(store) = self.store.as_mut() {
            let committed = match edits {
                Some(edits) if store.can_append() => store.append(next, &edits.journal),
                _ => {
                    store.commit_owned(next, to_value(state.as_ref().unwrap_or(&self.active.state)))
                }
            };
            if let Err(e) = committed {
                self.close_ports(&added);
                return Err(ApplyError::Store(e));
            }
        }
        phases.mark("persist");
        // Before the publish: no worker counts in a slot new to this generation yet.
        let meters = {
            let identities = match &compiled {
                Made::Whole(c) => &c.identities,
                Made::Patched(_) => &self.active.identities,
            };
            self.metrics.meter_table(identities.meters(), false)
        };
        let (snapshot, identities, plans) = match compiled {
            Made::Whole(c) => (c.snapshot, c.identities, c.ports),
            Made::Patched(p) => {
                self.patched += 1;
                let mut plans = std::mem::take(&mut self.active.plans);
                p.apply_to(&mut plans);
                (
                    p.snapshot,
                    std::mem::take(&mut self.active.identities),
                    plans,
                )
            }
        };
        self.identities_undo = None;
        // Committed: from here on the new generation is the running one, whatever happens.
        self.publisher
            .publish(snapshot)
            .map_err(|e| ApplyError::Internal(e.to_string()))?;
        self.metrics.install_meters(meters);
        phases.mark("publish");
        let state = state.unwrap_or_else(|| std::mem::take(&mut self.active.state));
        let index = if keep_index {
            self.active.index.take()
        } else {
            None
        };
        let old_subports = self.subport_labels();
        let old = std::mem::replace(
            &mut self.active,
            Active {
                state,
                valid,
                generation: next,
                identities,
                plans,
                index,
            },
        );
        let before = identities_before.map(|ids| (old.valid.clone(), ids));
        drop_elsewhere(old);
        phases.mark("activate");
        // Port labels are by id and key, which a port keeps for as long as it exists.
        if !changes.added.is_empty() || !changes.removed.is_empty() {
            self.update_metric_ports_of(&changes);
        }
        // Subports have no plan, so the change's ports miss them; trunks are few and
        // rarely changed, and a port may turn from one into the other: relabel all then.
        if self.subport_labels() != old_subports {
            self.update_metric_ports();
        }
        phases.mark("metrics");
        if touches_dhcp(&diff, metadata_on) {
            if let Some(dhcp) = self.dhcp.as_mut() {
                let (valid, identities) = (&self.active.valid, &self.active.identities);
                match &dhcp_scope {
                    Some(touched) => {
                        dhcp.update(dhcp_networks_of(valid, identities, |n| touched[n]))
                    }
                    None => dhcp.reconfigure(dhcp_networks(valid, identities)),
                }
            }
            if let (Some(touched), Some((old_valid, old_identities))) = (&dhcp_scope, &before) {
                // The scope is a claim about what DHCP is made of; the test builds check
                // that the networks left out kept their configuration.
                let key = |n: Vec<NetworkDhcp>| -> Vec<_> {
                    let mut k: Vec<_> = n
                        .into_iter()
                        .map(|n| (n.network_id, n.uid, n.config))
                        .collect();
                    k.sort_by(|a, b| a.0.cmp(&b.0));
                    k
                };
                let untouched: HashSet<&str> = self
                    .active
                    .valid
                    .networks
                    .iter()
                    .zip(touched)
                    .filter(|(_, t)| !**t)
                    .map(|(n, _)| n.id.as_str())
                    .collect();
                let old_untouched: Vec<usize> = (0..old_valid.networks.len())
                    .filter(|&n| untouched.contains(old_valid.networks[n].id.as_str()))
                    .collect();
                debug_assert_eq!(
                    key(dhcp_networks_of(
                        &self.active.valid,
                        &self.active.identities,
                        |n| { !touched[n] }
                    )),
                    key(dhcp_networks_of(old_valid, old_identities, |n| {
                        old_untouched.contains(&n)
                    })),
                    "a change of ports changed the DHCP configuration of another network"
                );
            }
        } else if let Some((old_valid, old_identities)) = &before {
            // The rule above is a claim about what the configuration is made of; the test
            // builds check it on every change they make.
            let key = |n: Vec<NetworkDhcp>| -> Vec<_> {
                n.into_iter()
                    .map(|n| (n.uid, n.network_id, n.config))
                    .collect()
            };
            debug_assert_eq!(
                key(dhcp_networks(&self.active.valid, &self.active.identities)),
                key(dhcp_networks(old_valid, old_identities)),
                "a change that touches no DHCP input changed the DHCP configuration"
            );
        }
        phases.mark("dhcp");
        if touches_metadata(&diff, &self.active.valid) {
            self.metadata
                .reconfigure(metadata_table(&self.active.valid, &self.active.identities));
        }
        self.wait_for_worker(next)?;
        phases.mark("worker");

        self.close_ports(&changes.removed);
        // A port whose binding changed keeps its id: closed, then opened again with the
        // new binding. A failure leaves it down, retried by `supervise_links`.
        self.close_ports(&changes.rebound_old);
        self.reopen(&changes.rebound_new);
        self.publisher.reclaim();
        phases.mark("close");
        pollux_services::log!(
            pollux_services::log::Level::Debug,
            "generation {next}: {}",
            phases.summary()
        );
        if let Some(cpu) = phases.cpu.summary() {
            pollux_services::log!(
                pollux_services::log::Level::Debug,
                "CPU of generation {next}: {cpu}"
            );
        }
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

    /// Waits until every worker runs `generation` (or a newer one).
    pub(super) fn wait_for_worker(&self, generation: u64) -> Result<(), ApplyError> {
        let deadline = Instant::now() + WORKER_TIMEOUT;
        while self.workers.iter().any(|w| w.ack.get() < generation) {
            if Instant::now() > deadline {
                let late: Vec<String> = self
                    .workers
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.ack.get() < generation)
                    .map(|(i, w)| {
                        let core = w.core.map_or("-".into(), |c| c.to_string());
                        format!("worker {i} on CPU {core}")
                    })
                    .collect();
                return Err(ApplyError::Internal(format!(
                    "generation {generation} is committed, but {} has not picked it up within \
                     {WORKER_TIMEOUT:?} (stalled: see workers.list)",
                    late.join(", ")
                )));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::binding::MemWires;
    use crate::engine::{EngineConfig, Initial};
    use crate::store::{Store, FAIL_NEXT};

    const STATE: &str = r#"
        [[networks]]
        id = "net-a"
        network_type = "local"

        [[ports]]
        id = "vm1"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        binding = { driver = "mem" }
    "#;

    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_port(state: &DesiredState, id: &str, mac: &str) -> DesiredState {
        let mut state = state.clone();
        let mut port = state.ports[0].clone();
        port.id = id.into();
        port.mac_address = mac.into();
        state.ports.push(port);
        state
    }

    /// A commit that fails at any step leaves the engine running the old generation and
    /// the store holding it, so the next change gets the next number and succeeds, and a
    /// restart boots the generation that ran.
    #[test]
    fn a_failed_commit_leaves_engine_and_store_agreeing() {
        let dir = TempDir(
            std::env::temp_dir().join(format!("pollux-engine-commit-{}", std::process::id())),
        );
        let _ = std::fs::remove_dir_all(&dir.0);
        let state = DesiredState::from_toml_str(STATE).unwrap();
        let config = EngineConfig {
            pool_frames: 1024,
            ..EngineConfig::default()
        };
        let initial = Initial {
            state: state.clone(),
            generation: 1,
            persist: true,
        };
        let store = Store::open(&dir.0, 8).unwrap();
        let mut engine = Engine::start(&config, initial, Some(store), MemWires::default()).unwrap();

        let mut next = state.clone();
        for (k, step) in ["write", "fsync", "rename", "fsync state directory"]
            .into_iter()
            .enumerate()
        {
            FAIL_NEXT.with(|f| f.set(Some(step)));
            let refused = with_port(
                &next,
                &format!("vm-x{k}"),
                &format!("fa:16:3e:00:01:{k:02x}"),
            );
            let err = engine.apply(refused, ApplyOptions::default()).unwrap_err();
            assert!(matches!(err, ApplyError::Store(_)), "{step}: {err}");
            let running = engine.generation();
            assert_eq!(
                engine.store().unwrap().current_generation(),
                Some(running),
                "{step}: the store and the engine disagree"
            );
            assert_eq!(engine.state(), &next, "{step}: the old state keeps running");
            let tmp_left = std::fs::read_dir(&dir.0)
                .unwrap()
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
            assert!(!tmp_left, "{step}: a temp file is left");

            next = with_port(
                &next,
                &format!("vm-{k}"),
                &format!("fa:16:3e:00:02:{k:02x}"),
            );
            let outcome = engine.apply(next.clone(), ApplyOptions::default()).unwrap();
            assert_eq!(outcome.generation, running + 1, "{step}");
            assert_eq!(
                engine.store().unwrap().current_generation(),
                Some(running + 1)
            );
        }
        let generation = engine.generation();
        drop(engine);
        let store = Store::open(&dir.0, 8).unwrap();
        assert_eq!(store.current_generation(), Some(generation));
    }
}
