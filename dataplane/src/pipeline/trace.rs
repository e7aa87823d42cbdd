//! Packet trace, as VPP's `trace add`: for the next N packets received on one port, every
//! stage they passed and what it decided. Off, it costs one branch per burst; on, its
//! memory is bounded by the count asked for, allocated when the trace is started (by a
//! job on the worker's thread), never on the packet path.

use super::Stage;
use crate::packet::{Next, Packet};
use crate::port::PortId;

/// Most packets one trace records.
pub const MAX_TRACE_PACKETS: usize = 256;
/// Most steps recorded per packet (every built-in stage fits, with room to spare).
pub const MAX_TRACE_STEPS: usize = 8;

/// One stage a traced packet passed, and the next step it left the packet with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceStep {
    /// The stage.
    pub stage: Stage,
    /// Its decision.
    pub next: Next,
}

/// What happened to one traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    /// Generation of the snapshot the burst ran with.
    pub generation: u64,
    /// The port it came in on.
    pub port: PortId,
    /// Its length as received.
    pub len: u16,
    steps: [TraceStep; MAX_TRACE_STEPS],
    n_steps: u8,
}

impl TraceRecord {
    /// The stages passed, in order.
    pub fn steps(&self) -> &[TraceStep] {
        &self.steps[..usize::from(self.n_steps)]
    }

    fn push(&mut self, stage: Stage, next: Next) {
        if let Some(slot) = self.steps.get_mut(usize::from(self.n_steps)) {
            *slot = TraceStep { stage, next };
            self.n_steps += 1;
        }
    }
}

/// An armed (or finished) trace.
#[derive(Debug)]
pub struct Tracer {
    port: PortId,
    wanted: usize,
    records: Vec<TraceRecord>,
    /// Records of the burst being traced: `records[first..]`.
    first: usize,
}

impl Tracer {
    /// A trace of the next `count` packets (at most [`MAX_TRACE_PACKETS`]) from `port`.
    pub fn new(port: PortId, count: usize) -> Self {
        let wanted = count.min(MAX_TRACE_PACKETS);
        Tracer {
            port,
            wanted,
            records: Vec::with_capacity(wanted),
            first: 0,
        }
    }

    /// The packets recorded so far.
    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    /// The traced port.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// How many packets it still waits for.
    pub fn remaining(&self) -> usize {
        self.wanted - self.records.len()
    }

    /// Starts recording a burst from `port`: returns how many of its first packets are
    /// traced (0 when the burst is from another port or the trace is complete).
    #[inline]
    pub(crate) fn begin(&mut self, port: PortId, pkts: &[Packet], generation: u64) -> usize {
        if port != self.port {
            return 0;
        }
        let n = self.remaining().min(pkts.len());
        self.first = self.records.len();
        for pkt in &pkts[..n] {
            // Within the capacity reserved at `new`: no allocation here.
            self.records.push(TraceRecord {
                generation,
                port,
                len: pkt.len,
                steps: [TraceStep::default(); MAX_TRACE_STEPS],
                n_steps: 0,
            });
        }
        n
    }

    /// Records that `stage` ran over the traced packets of the burst: a step for each
    /// packet whose next step it changed (or every packet, with `always`).
    pub(crate) fn record(&mut self, stage: Stage, pkts: &[Packet], always: bool) {
        for (rec, pkt) in self.records[self.first..].iter_mut().zip(pkts) {
            let changed = rec
                .steps()
                .last()
                .is_none_or(|last| last.next != pkt.meta.next);
            if always || changed {
                rec.push(stage, pkt.meta.next);
            }
        }
    }
}
