//! The port lifecycle: opening the ports a change adds (within the pool's frame
//! budget), closing those it removes, and reopening ports whose link went away.

use std::collections::{BTreeMap, BTreeSet};

use pollux_dataplane::port::PortId;

use super::{ApplyError, Engine, SPARE_FRAMES};
use crate::binding::{describe, Bindings, Opener};
use crate::compile::{PortKind, PortPlan};

/// The state of one port's binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortStatus {
    /// Open and polled.
    Up,
    /// Not open: why (an interface that vanished, a failed reopen). Retried.
    Down(String),
}

impl Engine {
    /// Folds the store's journal into a generation file when it is due (see
    /// [`crate::store::Store::compaction_due`]). Called on a timer, between requests; a
    /// failure is logged and retried at the next call, the journal still holding
    /// everything.
    pub fn compact_store(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if !store.compaction_due(std::time::Instant::now()) {
            return;
        }
        let records = store.journal_len();
        let started = std::time::Instant::now();
        match store.compact() {
            Ok(()) => pollux_services::log!(
                pollux_services::log::Level::Debug,
                "state store: {records} journal records folded into a generation file in {:?}",
                started.elapsed()
            ),
            Err(e) => pollux_services::warn!("state store: compaction: {e}"),
        }
    }

    /// Closes and reopens AF_XDP ports whose interface vanished, came back or was
    /// recreated, closes kernel-interface ports whose MTU was raised beyond a pool
    /// frame (reopened once it is lowered again), and retries ports that are down.
    /// Called on a timer.
    pub fn supervise_links(&mut self) {
        let mut close = Vec::new();
        let mut reopen = Vec::new();
        for plan in &self.active.plans {
            let up = self.status.get(&plan.id) == Some(&PortStatus::Up);
            if up && self.bindings.is_current(plan) {
                // Left bound, such an interface would hand the socket frames no buffer
                // holds, dropped where no drop reason shows them.
                if let Some(why) = Bindings::mtu_refusal(plan) {
                    pollux_services::warn!("{}: {why}; port closed until then", plan.key);
                    close.push((plan.clone(), why));
                }
                continue;
            }
            if up {
                pollux_services::info!(
                    "{}: {} vanished or was recreated; port closed",
                    plan.key,
                    describe(&plan.binding)
                );
                close.push((plan.clone(), "interface vanished".into()));
            }
            if Bindings::interface_present(plan) {
                reopen.push(plan.clone());
            }
        }
        let plans: Vec<PortPlan> = close.iter().map(|(plan, _)| plan.clone()).collect();
        self.close_ports(&plans);
        for (plan, why) in close {
            self.status.insert(plan.id, PortStatus::Down(why));
        }
        self.reopen(&reopen);
    }

    /// Opens each of `plans`' ports, leaving those that fail down with their reason (logged
    /// when it changes), for [`Engine::supervise_links`] to retry.
    pub(super) fn reopen(&mut self, plans: &[PortPlan]) {
        let outcomes = match self.open_each(plans) {
            Ok(o) => o,
            Err(e) => {
                pollux_services::warn!("{e}");
                return;
            }
        };
        for (plan, result) in outcomes {
            match result {
                Ok(()) => pollux_services::info!(
                    "{}: {} is back; port reopened",
                    plan.key,
                    describe(&plan.binding)
                ),
                Err(why) => {
                    let down = PortStatus::Down(why.clone());
                    if self.status.get(&plan.id) != Some(&down) {
                        pollux_services::warn!("{}: {why}; will retry", plan.key);
                    }
                    self.status.insert(plan.id, down);
                }
            }
        }
    }

    /// (port id, key) of every port of the active configuration.
    pub fn port_names(&self) -> Vec<(PortId, String)> {
        self.active
            .plans
            .iter()
            .map(|p| (p.id, p.key.clone()))
            .collect()
    }

    /// (port id, port id as users name it) of every trunk subport of the active
    /// configuration: ports of the snapshot without a plan of their own.
    pub(super) fn subport_labels(&self) -> Vec<(PortId, String)> {
        let (valid, ids) = (&self.active.valid, &self.active.identities);
        valid
            .trunks
            .iter()
            .flat_map(|t| &t.sub_ports)
            .filter_map(|s| {
                let id = &valid.ports[s.port].id;
                Some((ids.vm_port(id)?, id.clone()))
            })
            .collect()
    }

    /// Ports are labelled as `fdb.list` names them: a VM port (or a trunk's subport) by
    /// its id, an uplink as `uplink:NAME`.
    pub(super) fn update_metric_ports(&self) {
        let labels = self
            .port_names()
            .into_iter()
            .map(|(id, key)| (id, port_label(&key).to_string()))
            .chain(self.subport_labels())
            .collect();
        self.metrics.set_ports(labels);
        self.update_metric_vhost_user();
    }

    /// [`Engine::update_metric_ports`] for a change that added and removed the ports of
    /// `changes`: what it costs is the ports it touched (and the vhost-user ports).
    pub(super) fn update_metric_ports_of(&self, changes: &PortChanges) {
        self.metrics.update_ports(
            changes.removed.iter().map(|p| p.id),
            changes
                .added
                .iter()
                .map(|p| (p.id, port_label(&p.key).to_string())),
        );
        self.update_metric_vhost_user();
    }

    /// The vhost-user ports' labels, each found in the plans (sorted by id).
    fn update_metric_vhost_user(&self) {
        let plans = &self.active.plans;
        let label = |id: PortId| {
            let at = plans.binary_search_by_key(&id, |p| p.id).ok()?;
            Some(port_label(&plans[at].key).to_string())
        };
        self.metrics.set_vhost_user(
            self.bindings
                .vhost_user_mailboxes()
                .filter_map(|(id, m)| Some((label(id)?, m)))
                .collect(),
        );
    }

    pub(super) fn check_frame_budget(&self, changes: &PortChanges) -> Result<(), ApplyError> {
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
    pub(super) fn open_ports(&mut self, plans: &[PortPlan]) -> Result<Vec<PortPlan>, ApplyError> {
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
    /// for each. Each port's queues are placed on workers (see [`super::Placement`]) and
    /// each worker opens its part; the others learn where to hand its frames. Fails only
    /// when a worker does not answer.
    pub(super) fn open_each(&mut self, plans: &[PortPlan]) -> Result<Vec<OpenOutcome>, ApplyError> {
        let mut outcomes = Vec::new();
        let mut pending = Vec::new();
        let workers = self.workers.len();
        let mut jobs: Vec<Vec<(PortId, Opener, Vec<u16>)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for plan in plans {
            let pins = self.pins_of(&plan.key);
            let owners =
                self.placement
                    .place_pinned(plan.id, Bindings::queue_count(&plan.binding), &pins);
            match self.bindings.prepare(plan, &owners) {
                Ok(parts) => {
                    let frames: u32 = parts.iter().map(|(_, p)| p.frames).sum();
                    for (w, part) in parts {
                        jobs[usize::from(w)].push((plan.id, part.open, part.queues));
                    }
                    pending.push((plan.clone(), frames));
                }
                Err(e) => {
                    self.placement.remove(plan.id);
                    outcomes.push((plan.clone(), Err(e)));
                }
            }
        }
        if pending.is_empty() {
            return Ok(outcomes);
        }
        // Each port's failure, if any part of it failed on any worker.
        let mut failed: BTreeMap<PortId, String> = BTreeMap::new();
        let mut lost = None;
        for (w, jobs) in jobs.into_iter().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            let results = self.call_on(w as u16, move |w| {
                jobs.into_iter()
                    .map(|(id, open, queues)| {
                        let port = open(w.pool_mut()).map_err(|e| e.to_string())?;
                        w.attach_new(id, port, &queues);
                        Ok(())
                    })
                    .collect::<Vec<Result<(), String>>>()
            });
            match results {
                Ok(results) => {
                    // Results come in the order of the jobs, which is the plans' order.
                    let ids = pending.iter().map(|(p, _)| p.id).filter(|id| {
                        self.placement
                            .owners(*id)
                            .is_some_and(|o| o.contains(&(w as u16)))
                    });
                    for (id, result) in ids.zip(results) {
                        if let Err(e) = result {
                            failed.entry(id).or_insert(e);
                        }
                    }
                }
                Err(e) => lost = Some(e),
            }
        }
        if let Some(e) = lost {
            let ids: Vec<PortPlan> = pending.iter().map(|(p, _)| p.clone()).collect();
            self.detach_parts(&ids);
            for (plan, _) in &pending {
                self.placement.remove(plan.id);
                self.bindings.release(plan.id, &plan.key);
            }
            return Err(e);
        }
        let broken: Vec<PortPlan> = pending
            .iter()
            .filter(|(p, _)| failed.contains_key(&p.id))
            .map(|(p, _)| p.clone())
            .collect();
        self.detach_parts(&broken);
        for (plan, frames) in pending {
            let result = match failed.remove(&plan.id) {
                None => {
                    self.frames_committed += frames;
                    self.status.insert(plan.id, PortStatus::Up);
                    self.set_transmit_owners(plan.id)?;
                    Ok(())
                }
                Some(e) => {
                    self.placement.remove(plan.id);
                    self.bindings.release(plan.id, &plan.key);
                    Err(e)
                }
            };
            outcomes.push((plan, result));
        }
        Ok(outcomes)
    }

    /// Tells every worker that polls no queue of `port` which worker to hand its frames
    /// for it to (or, after the port is gone, that none does).
    fn set_transmit_owners(&self, port: PortId) -> Result<(), ApplyError> {
        if self.workers.len() < 2 {
            return Ok(());
        }
        let owners = self.placement.owners(port).map(<[u16]>::to_vec);
        for w in 0..self.workers.len() as u16 {
            let owner = owners
                .as_deref()
                .and_then(|o| self.placement.transmit_owner(o, w));
            self.call_on(w, move |worker| worker.set_transmit_owner(port, owner))?;
        }
        Ok(())
    }

    /// Takes `plans`' ports out of every worker that holds a part of them, closes the
    /// parts here and gives their frames back to their workers' pools.
    fn detach_parts(&mut self, plans: &[PortPlan]) {
        if plans.is_empty() {
            return;
        }
        for w in 0..self.workers.len() as u16 {
            let ids: Vec<PortId> = plans
                .iter()
                .map(|p| p.id)
                .filter(|id| self.placement.owners(*id).is_none_or(|o| o.contains(&w)))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let taken = self.call_on(w, move |worker| {
                ids.iter()
                    .filter_map(|&id| worker.take_port(id))
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
                let _ = self.workers[usize::from(w)]
                    .mailbox
                    .post(move |worker| worker.free_frames(&frames));
            }
        }
    }

    /// Takes `plans`' ports out of the workers, closes them here and gives their frames
    /// back to the workers' pools.
    pub(super) fn close_ports(&mut self, plans: &[PortPlan]) {
        if plans.is_empty() {
            return;
        }
        self.detach_parts(plans);
        for plan in plans {
            self.frames_committed = self
                .frames_committed
                .saturating_sub(Bindings::frames_needed(&plan.binding));
            self.bindings.release(plan.id, &plan.key);
            self.status.remove(&plan.id);
            if !self.placement.remove(plan.id).is_empty() {
                let _ = self.set_transmit_owners(plan.id);
            }
        }
    }
}

/// A port and whether it opened (or why not).
type OpenOutcome = (PortPlan, Result<(), String>);

/// How the ports of two configurations differ.
#[derive(Debug, Default, PartialEq)]
pub(super) struct PortChanges {
    pub(super) added: Vec<PortPlan>,
    pub(super) removed: Vec<PortPlan>,
    /// Same key, other binding: the old plan and the new one.
    pub(super) rebound_old: Vec<PortPlan>,
    pub(super) rebound_new: Vec<PortPlan>,
}

impl PortChanges {
    /// The changes from `old` to `new`, both sorted by port id (as compiled): one merge
    /// of the two lists, so that a change of one port does not cost a map of every port.
    pub(super) fn between(old: &[PortPlan], new: &[PortPlan]) -> Self {
        let mut changes = PortChanges::default();
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let (o, n) = (old.get(i), new.get(j));
            match (o, n) {
                (Some(o), Some(n)) if o.id == n.id && o.key == n.key => {
                    if o.binding != n.binding {
                        changes.rebound_old.push(o.clone());
                        changes.rebound_new.push(n.clone());
                    }
                    i += 1;
                    j += 1;
                }
                // The same id under another key: a port id handed again to a new port.
                (Some(o), Some(n)) if o.id == n.id => {
                    changes.removed.push(o.clone());
                    changes.added.push(n.clone());
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o.id < n.id => {
                    changes.removed.push(o.clone());
                    i += 1;
                }
                (Some(o), None) => {
                    changes.removed.push(o.clone());
                    i += 1;
                }
                (_, Some(n)) => {
                    changes.added.push(n.clone());
                    j += 1;
                }
                (None, None) => unreachable!("the loop runs while a list has plans left"),
            }
        }
        debug_assert!(
            old.windows(2).all(|w| w[0].id < w[1].id) && new.windows(2).all(|w| w[0].id < w[1].id),
            "port plans are sorted by id"
        );
        debug_assert_eq!(
            changes,
            PortChanges::by_key(old, new),
            "the merge of the port plans is not their diff by key"
        );
        changes
    }

    /// [`PortChanges::between`] by key, whatever the order: what the merge must equal.
    fn by_key(old: &[PortPlan], new: &[PortPlan]) -> Self {
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
