//! VM ports of a desired state compiled by the control plane, forwarding through the
//! whole worker on `mem` ports, driven frame by frame: what the security-group and
//! port-security tests of both address families share.

use std::sync::Arc;

use pollux_control::compile::{compile, Compiled, Identities};
use pollux_control::model::DesiredState;
use pollux_control::validate::validate;
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::snapshot::Snapshot;
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;

use crate::harness::{MemSwitch, POOL_FRAMES};

/// A VM of a lab: the `<name>` of its port `port:<name>` in the desired state.
pub trait NamedVm {
    /// Its name.
    fn name(&self) -> &'static str;
}

/// `text` (TOML) parsed, validated and compiled as `generation` from `ids`; panics on
/// any error.
pub fn compile_state(text: &str, ids: &Identities, generation: u64) -> Compiled {
    let desired = DesiredState::from_toml_str(text).expect("parses");
    let valid = validate(&desired).unwrap_or_else(|e| panic!("valid: {e:?}"));
    compile(&valid, ids, generation).expect("compiles")
}

/// The compiled state on a [`MemSwitch`], with the identities of its ports.
#[allow(missing_debug_implementations)] // the switch holds a worker, which has no Debug
pub struct PortLab {
    /// The switch.
    pub sw: MemSwitch,
    /// The identities the running snapshot was compiled with.
    pub ids: Identities,
    generation: u64,
    vms: Vec<&'static str>,
}

impl PortLab {
    /// `text` compiled as generation 1 on a switch with a port for each of its ports;
    /// `vms` are the names [`PortLab::send`] reports frames for.
    pub fn new(text: &str, vms: &[&'static str], worker: WorkerConfig) -> PortLab {
        Self::with_ring(text, vms, worker, MemPortConfig::default())
    }

    /// [`PortLab::new`] with mem ports of geometry `ring` (larger slots for jumbo frames).
    pub fn with_ring(
        text: &str,
        vms: &[&'static str],
        worker: WorkerConfig,
        ring: MemPortConfig,
    ) -> PortLab {
        let c = compile_state(text, &Identities::default(), 1);
        let ports: Vec<u16> = c.ports.iter().map(|p| p.id.0).collect();
        let sw = MemSwitch::with_snapshot(c.snapshot, &ports, worker, ring, POOL_FRAMES);
        PortLab {
            sw,
            ids: c.identities,
            generation: 1,
            vms: vms.to_vec(),
        }
    }

    /// Publishes `text` compiled as the next generation.
    pub fn apply(&mut self, text: &str) {
        self.generation += 1;
        let c = compile_state(text, &self.ids, self.generation);
        self.ids = c.identities;
        self.sw.publish(c.snapshot);
    }

    /// The port id of `vm`.
    pub fn id(&self, vm: &impl NamedVm) -> u16 {
        self.id_of(vm.name())
    }

    fn id_of(&self, name: &str) -> u16 {
        self.ids
            .port(&format!("port:{name}"))
            .expect("port has an id")
            .0
    }

    /// The snapshot running.
    pub fn snap(&self) -> Arc<Snapshot> {
        self.sw.publisher.current()
    }

    /// Sends `frame` from `from`; returns the frames each VM received, by VM name, and
    /// checks that the switch conserved every frame.
    pub fn send(&mut self, from: &impl NamedVm, frame: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
        let id = self.id(from);
        let out = self.sw.exchange(id, frame);
        let mut got = Vec::new();
        for &vm in &self.vms {
            if let Some(frames) = out.get(&self.id_of(vm)) {
                got.extend(frames.iter().map(|f| (vm, f.clone())));
            }
        }
        self.sw.assert_conserved();
        got
    }

    /// Sends `frame` from `from` and asserts that exactly `to` received it, unchanged.
    pub fn passes(&mut self, from: &impl NamedVm, to: &impl NamedVm, frame: &[u8]) {
        let got = self.send(from, frame);
        assert_eq!(
            got,
            vec![(to.name(), frame.to_vec())],
            "{} -> {}",
            from.name(),
            to.name()
        );
    }

    /// Sends `frame` from `from` and asserts that nothing left and that one more drop was
    /// counted for `reason` under `stage`.
    pub fn refused(&mut self, from: &impl NamedVm, frame: &[u8], stage: Stage, reason: DropReason) {
        let before = self.sw.counters().stage_dropped(stage, reason);
        let got = self.send(from, frame);
        assert!(
            got.is_empty(),
            "{} sent {reason}: nothing may leave, got {got:?}",
            from.name()
        );
        assert_eq!(
            self.sw.counters().stage_dropped(stage, reason),
            before + 1,
            "{stage}/{reason} counted once"
        );
    }
}
