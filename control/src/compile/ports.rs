//! A change of ports alone compiled into a patch of the running snapshot
//! ([`Snapshot::patch_ports`]) instead of a compile of the whole state: the cost of the
//! ports touched, not of every port. The identities are changed in place (the engine
//! takes the change back with [`Identities::undo`] unless the generation is published),
//! and the port plans come as the changes to make to the running ones.
//!
//! Only what a port's own entries decide is patched: a port on a network that is up, not
//! an overlay network, with an MTU one buffer holds, bound here, in no trunk, listing no
//! security group (a group's members are its remote-group address set, which every
//! policy naming it is built from). Anything else, and whatever the snapshot cannot
//! patch (see [`Snapshot::patch_ports`]), is compiled whole. The test builds compare
//! every patched snapshot, identities and plans with a compile from scratch.

use std::collections::HashSet;
use std::sync::Arc;

use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::snapshot::{AccessPort, NetworkUid, Snapshot};

use super::{
    kernel_interface, port_qos, port_security, security_groups, vm_port_key, CompileError,
    Identities, PortKind, PortPlan, MAX_MTU,
};
use crate::patch::Collection;
use crate::validate::{Port, Validated};

/// Most ports one patch touches; a larger batch is compiled whole.
const MAX_TOUCHED: usize = 64;

/// What taking back an in-place change of the identities needs.
#[derive(Debug, Default)]
pub struct IdentitiesUndo {
    added: Vec<String>,
    removed: Vec<(String, u16)>,
    next_port: u16,
}

impl Identities {
    /// Takes back the change [`compile_ports`] made in place.
    pub fn undo(&mut self, undo: IdentitiesUndo) {
        if undo.added.is_empty() && undo.removed.is_empty() {
            self.next_port = undo.next_port;
            return;
        }
        let ports = Arc::make_mut(&mut self.ports);
        for key in &undo.added {
            ports.remove(key);
        }
        ports.extend(undo.removed);
        self.next_port = undo.next_port;
    }
}

/// A change of ports compiled as a patch: the snapshot, and the port plans that changed.
#[derive(Debug)]
pub struct PortsCompiled {
    /// The snapshot of the next generation.
    pub snapshot: Snapshot,
    /// Plans of ports new to the configuration.
    pub added: Vec<PortPlan>,
    /// Plans of ports gone.
    pub removed: Vec<PortPlan>,
    /// Ports kept with another binding: the old plans and (same order) the new ones.
    pub rebound_old: Vec<PortPlan>,
    /// See `rebound_old`.
    pub rebound_new: Vec<PortPlan>,
    /// How to take back the change made to the identities.
    pub undo: IdentitiesUndo,
}

impl PortsCompiled {
    /// `plans` (sorted by id) changed as this compile says.
    pub fn apply_to(&self, plans: &mut Vec<PortPlan>) {
        for gone in &self.removed {
            if let Ok(at) = plans.binary_search_by_key(&gone.id, |p| p.id) {
                plans.remove(at);
            }
        }
        for plan in &self.rebound_new {
            if let Ok(at) = plans.binary_search_by_key(&plan.id, |p| p.id) {
                plans[at] = plan.clone();
            }
        }
        for plan in &self.added {
            let at = plans.partition_point(|p| p.id < plan.id);
            plans.insert(at, plan.clone());
        }
    }
}

/// Whether port `p` of `v` is one whose entries alone a patch can change (see the module
/// documentation).
fn patchable(v: &Validated, p: &Port) -> bool {
    let net = &v.networks[p.network];
    p.binding.is_some()
        && p.remote_host.is_none()
        && p.security_groups.is_empty()
        && net.admin_state_up
        && !net.segment.is_overlay()
        && net.mtu <= MAX_MTU
}

/// Port `p` of `v` as the snapshot takes it, as the compile from scratch gives it.
fn access_port(v: &Validated, p: &Port, id: PortId, network: NetworkUid) -> AccessPort {
    let macs = p.macs();
    let kernel = p.binding.as_ref().is_some_and(kernel_interface);
    AccessPort {
        id,
        network,
        port_security: p.port_security_enabled.then(|| port_security(p, &macs)),
        security_groups: p.port_security_enabled.then(|| {
            (
                security_groups::ungrouped(v),
                security_groups::ra_sources_of(v, p.network),
            )
        }),
        qos: p.qos_policy.map(|q| port_qos(&v.qos_policies[q])),
        stages: if kernel {
            vec![Stage::ChecksumOffload]
        } else {
            Vec::new()
        },
        macs,
    }
}

fn plan(p: &Port, id: PortId) -> PortPlan {
    PortPlan {
        id,
        key: vm_port_key(&p.id),
        kind: PortKind::Vm,
        binding: p.binding.clone().expect("patchable ports are bound"),
    }
}

/// Compiles `state`, which differs from `old` (compiled with `ids` into `running`, whose
/// port plans are `plans`) in the ports `touched` alone, as generation `generation` by
/// patching `running`. `ids` is changed in place; the result says how to take that back.
/// `Ok(None)`, with `ids` as they were, when the change is not one a patch makes: the
/// caller compiles the whole state.
pub fn compile_ports(
    state: &Validated,
    old: &Validated,
    ids: &mut Identities,
    touched: &[(Collection, String)],
    generation: u64,
    running: &Snapshot,
    plans: &[PortPlan],
) -> Result<Option<PortsCompiled>, CompileError> {
    if touched.len() > MAX_TOUCHED
        || touched.iter().any(|(c, _)| *c != Collection::Ports)
        || !state.trunks.is_empty()
        || !old.trunks.is_empty()
        || !Arc::ptr_eq(&state.networks, &old.networks)
    {
        return Ok(None);
    }
    let ids_touched: HashSet<&str> = touched.iter().map(|(_, id)| id.as_str()).collect();
    if ids_touched.len() != touched.len() {
        return Ok(None);
    }
    // A scan per port touched (no hashing of every port's id), in the state's order.
    let indices = |v: &Validated| -> Vec<usize> {
        let mut at: Vec<usize> = touched
            .iter()
            .filter_map(|(_, id)| v.ports.iter().position(|p| p.id == *id))
            .collect();
        at.sort_unstable();
        at
    };
    let (olds, news) = (indices(old), indices(state));
    if !olds.iter().all(|&i| patchable(old, &old.ports[i]))
        || !news.iter().all(|&i| patchable(state, &state.ports[i]))
    {
        return Ok(None);
    }
    let uid =
        |ids: &Identities, v: &Validated, p: &Port| ids.network_uid(&v.networks[p.network].id);
    let before = cfg!(debug_assertions).then(|| ids.clone());

    let mut old_specs = Vec::with_capacity(olds.len());
    for &i in &olds {
        let p = &old.ports[i];
        let (Some(id), Some(network)) = (ids.vm_port(&p.id), uid(ids, old, p)) else {
            return Ok(None);
        };
        old_specs.push((access_port(old, p, id, network), plan(p, id)));
    }
    // New ids in the state's order, from the ids every key held before the change, as
    // the compile from scratch hands them out.
    let mut undo = IdentitiesUndo {
        next_port: ids.next_port,
        ..IdentitiesUndo::default()
    };
    let mut taken = ids.taken_port_ids();
    let mut new_specs = Vec::with_capacity(news.len());
    for &i in &news {
        let p = &state.ports[i];
        let key = vm_port_key(&p.id);
        let existed = ids.ports.contains_key(&key);
        let id = match ids.assign_port(&key, &mut taken) {
            Ok(id) => id,
            Err(e) => {
                ids.undo(undo);
                return Err(e);
            }
        };
        if !existed {
            undo.added.push(key);
        }
        let Some(network) = uid(ids, state, p) else {
            ids.undo(undo);
            return Ok(None);
        };
        new_specs.push((access_port(state, p, id, network), plan(p, id)));
    }
    let mut compiled = PortsCompiled {
        snapshot: Snapshot::empty(),
        added: Vec::new(),
        removed: Vec::new(),
        rebound_old: Vec::new(),
        rebound_new: Vec::new(),
        undo: IdentitiesUndo::default(),
    };
    for (_, old_plan) in &old_specs {
        match new_specs.iter().find(|(_, n)| n.key == old_plan.key) {
            Some((_, new_plan)) if new_plan.binding != old_plan.binding => {
                compiled.rebound_old.push(old_plan.clone());
                compiled.rebound_new.push(new_plan.clone());
            }
            Some(_) => {}
            None => {
                let key = old_plan.key.clone();
                if let Some(id) = Arc::make_mut(&mut ids.ports).remove(&key) {
                    undo.removed.push((key, id));
                }
                compiled.removed.push(old_plan.clone());
            }
        }
    }
    for (_, new_plan) in &new_specs {
        if !old_specs.iter().any(|(_, o)| o.key == new_plan.key) {
            compiled.added.push(new_plan.clone());
        }
    }
    let old_ports: Vec<AccessPort> = old_specs.into_iter().map(|(s, _)| s).collect();
    let new_ports: Vec<AccessPort> = new_specs.into_iter().map(|(s, _)| s).collect();
    let snapshot = match running.patch_ports(generation, &old_ports, &new_ports) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            ids.undo(undo);
            return Ok(None);
        }
        Err(e) => {
            ids.undo(undo);
            return Err(CompileError::Build(e));
        }
    };
    compiled.snapshot = snapshot;
    compiled.undo = undo;
    if let Some(before) = before {
        let whole = super::compile_inner(state, &before, generation, None)?;
        debug_assert_eq!(
            compiled.snapshot.differences(&whole.snapshot),
            Vec::<&str>::new(),
            "the snapshot patched from the running one is not the one compiled from scratch"
        );
        debug_assert_eq!(*ids, whole.identities, "patched identities");
        let mut patched = plans.to_vec();
        compiled.apply_to(&mut patched);
        debug_assert_eq!(patched, whole.ports, "patched port plans");
    }
    Ok(Some(compiled))
}
