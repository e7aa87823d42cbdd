//! The table the worker walks for every burst: the built-in stages in order, with static
//! dispatch (each `step!` below is a direct, inlinable call), and the stages added at run
//! time, after classification, through dynamic dispatch.

use super::trace::Tracer;
use super::{tsc, BurstCtx, BurstStage, Pending, Stage, StageSet};
use crate::classify::Classify;
use crate::counters::WorkerCounters;
use crate::flow_owner::FlowHandoff;
use crate::l2::L2;
use crate::l3::RouterState;
use crate::offload::ChecksumOffload;
use crate::output::Output;
use crate::overlay::arp_responder::ArpResponder;
use crate::overlay::decap::TunnelDecap;
use crate::overlay::encap::TunnelEncap;
use crate::overlay::underlay::Underlay;
use crate::packet::Packet;
use crate::port_security::PortSecurityStage;
use crate::qos::{QosEgress, QosIngress};
use crate::secgroup::{SgEgress, SgIngress};
use crate::slowpath::SlowPath;

/// The stages of one worker, each with its per-worker state. See the module documentation
/// of [`crate::pipeline`].
pub struct StageTable {
    classify: Classify,
    checksum_offload: ChecksumOffload,
    port_security: PortSecurityStage,
    /// With several workers: hands packets to their flow's owner.
    pub(crate) flow: FlowHandoff,
    sg_egress: SgEgress,
    qos_egress: QosEgress,
    /// Stages added at run time; they run after classification.
    extensions: Vec<Box<dyn BurstStage + Send>>,
    l2: L2,
    /// The slow path's rings and per-port budgets.
    pub(crate) slow_path: SlowPath,
    /// The routers' neighbours, sessions and frames of their own.
    pub(crate) l3: RouterState,
    sg_ingress: SgIngress,
    qos_ingress: QosIngress,
    output: Output,
    /// Remote tunnel endpoints' MACs: the overlay stages' state, shared by decapsulation
    /// (which learns them) and encapsulation (which uses them).
    pub(crate) underlay: Underlay,
    /// The packet trace, when one was started.
    pub(crate) trace: Option<Box<Tracer>>,
}

impl std::fmt::Debug for StageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageTable")
            .field("extensions", &self.extensions.len())
            .field("slow_path", &self.slow_path)
            .field("l3", &self.l3)
            .finish_non_exhaustive()
    }
}

impl StageTable {
    /// The built-in stages, the router with its state in `l3`, the slow path disconnected,
    /// per-port state for port ids below `max_ports`.
    pub fn new(l3: RouterState, max_ports: usize) -> Self {
        StageTable {
            classify: Classify,
            checksum_offload: ChecksumOffload,
            port_security: PortSecurityStage,
            flow: FlowHandoff::default(),
            sg_egress: SgEgress,
            qos_egress: QosEgress::new(max_ports),
            extensions: Vec::new(),
            l2: L2,
            slow_path: SlowPath::disconnected(),
            l3,
            sg_ingress: SgIngress,
            qos_ingress: QosIngress::new(max_ports),
            output: Output,
            underlay: Underlay::default(),
            trace: None,
        }
    }

    /// Adds a stage that runs after classification (and after the stages added before it),
    /// for the ports whose stage set has [`Stage::Extension`].
    pub fn add(&mut self, stage: Box<dyn BurstStage + Send>) {
        self.extensions.push(stage);
    }

    /// Runs one burst from `cx.in_port` through every stage the snapshot enables for that
    /// port and that has packets pending, then lets the stages that ran send what they
    /// made. Each stage's calls, packets and cycles are counted.
    #[inline]
    pub fn run(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) {
        let mut enabled = cx.snap.port_stages(cx.in_port);
        // One branch per burst for a lone worker.
        if self.flow.active {
            enabled = self.flow.prepare(cx.snap, enabled);
        }
        // A trunk's parent: its burst is split into one per port (`crate::trunk`).
        if enabled.contains(Stage::Trunk) {
            return crate::trunk::run_split(self, cx, pkts);
        }
        self.run_port(cx, pkts, enabled);
    }

    /// [`StageTable::run`] for a burst of one port, whose stages are `enabled`.
    #[inline]
    pub(crate) fn run_port(
        &mut self,
        cx: &mut BurstCtx<'_>,
        pkts: &mut [Packet],
        enabled: StageSet,
    ) {
        let mut pending = Pending::CLASSIFY;
        let mut ran = StageSet::EMPTY;
        // One branch per burst while no trace runs.
        let mut traced = 0;
        if let Some(tracer) = self.trace.as_deref_mut() {
            traced = tracer.begin(cx.in_port, pkts, cx.pool, cx.snap.generation());
        }
        // And one more while no capture runs.
        let mut capture_drops = false;
        if let Some(capture) = cx.ports.capture.as_deref_mut() {
            capture_drops = capture.begin_burst(cx.in_port, pkts, cx.pool, cx.now_ns);
        }
        let mut t = tsc::now();
        macro_rules! step {
            ($stage:expr) => {{
                let stage = &mut $stage;
                let id = stage.id();
                if enabled.contains(id) && pending.intersects(stage.wants()) {
                    let outcome = stage.process(cx, pkts);
                    pending |= outcome.produced;
                    ran = ran.with(id);
                    if traced > 0 {
                        record(&mut self.trace, id, pkts);
                    }
                    let then = tsc::now();
                    account(cx.counters, id, outcome.packets, then.wrapping_sub(t));
                    t = then;
                }
            }};
        }
        step!(self.classify);
        step!(TunnelDecap {
            under: &mut self.underlay
        });
        step!(self.checksum_offload);
        step!(self.port_security);
        step!(self.flow);
        step!(self.sg_egress);
        step!(self.qos_egress);
        if !self.extensions.is_empty() {
            for ext in self.extensions.iter_mut() {
                step!(**ext);
            }
        }
        step!(self.l2);
        step!(self.slow_path);
        step!(self.l3);
        step!(ArpResponder);
        step!(TunnelEncap {
            under: &mut self.underlay
        });
        step!(self.sg_ingress);
        step!(self.qos_ingress);
        if capture_drops {
            capture_dropped(cx, pkts);
        }
        step!(self.output);
        if ran.contains(Stage::Extension) {
            for ext in self.extensions.iter_mut() {
                ext.finish(cx);
            }
        }
        if ran.contains(Stage::L3) {
            self.l3.send_made(cx, &mut self.underlay);
            // What the router sent after the burst is the router's time.
            cx.counters.stage_cycles[Stage::L3 as usize].add(tsc::now().wrapping_sub(t));
        }
    }
}

impl StageTable {
    /// Runs packets another worker handed to this one as their flow's owner
    /// ([`crate::flow_owner`]), received in a burst of `cx.in_port` and classified there:
    /// from the flow handoff on, with that port's stages (a trunk parent's own frames,
    /// untagged, split back to the parent).
    pub(crate) fn run_handed(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) {
        self.flow.resuming = true;
        self.run(cx, pkts);
        self.flow.resuming = false;
    }
}

/// Records `stage`'s decisions about the traced packets; kept out of line, since it runs
/// only while a trace does.
#[cold]
#[inline(never)]
fn record(trace: &mut Option<Box<Tracer>>, stage: Stage, pkts: &[Packet]) {
    if let Some(tracer) = trace.as_deref_mut() {
        // Classification and output always say what they did; the others when they
        // changed the packet's next step.
        tracer.record(
            stage,
            pkts,
            matches!(stage, Stage::Classify | Stage::Output),
        );
    }
}

/// Copies the burst's dropped packets into the capture before the output stage frees
/// them; out of line, since it runs only while a capture of drops does.
#[cold]
#[inline(never)]
fn capture_dropped(cx: &mut BurstCtx<'_>, pkts: &[Packet]) {
    if let Some(capture) = cx.ports.capture.as_deref_mut() {
        capture.drops(pkts, cx.pool);
    }
}

/// Counts one call of `stage` over `packets` packets that took `cycles`.
#[inline(always)]
fn account(counters: &WorkerCounters, stage: Stage, packets: u32, cycles: u64) {
    let i = stage as usize;
    counters.stage_calls[i].inc();
    counters.stage_packets[i].add(u64::from(packets));
    counters.stage_cycles[i].add(cycles);
}
