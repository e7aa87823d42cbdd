//! Per-worker counters.
//!
//! Each worker writes only its own counters and the control thread reads them to export
//! metrics. A single writer needs no atomic read-modify-write: an increment is a relaxed
//! load and store, as cheap as a plain add, and a reader always sees a value the counter
//! really had. The block is cache-line aligned so two workers never share a line.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::drop::DropReason;
use crate::port::PortId;

/// A monotonically increasing counter with a single writer.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Starts again from zero (a port id given to a new port). Only the owning worker may
    /// call this; a scraper sees an ordinary counter reset.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// A gauge with a single writer.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value. Only the owning worker may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The stages of the pipeline, for per-stage packet counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// Ethernet/802.1Q parsing and network classification.
    Classify,
    /// MAC learning and forwarding decision.
    L2,
    /// Routing, ARP and ICMP echo of the routers.
    L3,
    /// Egress encapsulation and transmit batching.
    Output,
    /// Replication of broadcast, multicast and unknown unicast.
    Flood,
    /// Frames for the slow path (DHCP) and ARP for its addresses.
    SlowPath,
    /// Anti-spoofing of VM ports with port security.
    PortSecurity,
}

impl Stage {
    /// Every stage, in counter order.
    pub const ALL: [Stage; 7] = [
        Stage::Classify,
        Stage::L2,
        Stage::L3,
        Stage::Output,
        Stage::Flood,
        Stage::SlowPath,
        Stage::PortSecurity,
    ];

    /// Stable name for metrics and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Classify => "classify",
            Stage::L2 => "l2",
            Stage::L3 => "l3",
            Stage::Output => "output",
            Stage::Flood => "flood",
            Stage::SlowPath => "slow_path",
            Stage::PortSecurity => "port_security",
        }
    }
}

/// Counters of one port as seen by one worker's pipeline.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received from the port.
    pub rx_packets: Counter,
    /// Bytes received from the port.
    pub rx_bytes: Counter,
    /// Frames received from the port that the pipeline dropped (any reason).
    pub rx_dropped: Counter,
    /// Frames the port accepted for transmission.
    pub tx_packets: Counter,
    /// Bytes the port accepted for transmission.
    pub tx_bytes: Counter,
    /// Frames meant for the port that it did not take (ring full, not attached).
    pub tx_dropped: Counter,
}

impl PortCounters {
    /// Zeroes every counter. Only the owning worker may call this.
    pub fn reset(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.rx_dropped,
            &self.tx_packets,
            &self.tx_bytes,
            &self.tx_dropped,
        ] {
            c.reset();
        }
    }
}

/// Everything one worker counts.
///
/// Conservation: every frame the worker ever held is accounted for exactly once, so once
/// the worker has flushed, `rx_packets + replicas == tx_packets + dropped_total()`.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Frames received on all ports.
    pub rx_packets: Counter,
    /// Frames sent on all ports.
    pub tx_packets: Counter,
    /// Extra frames made by flooding (one per copy beyond the original).
    pub replicas: Counter,
    /// Frames the worker made itself (a router's ARP requests) or took from the slow path's
    /// inject ring.
    pub originated: Counter,
    /// Frames that ended inside the worker, neither sent nor dropped (ARP replies to a
    /// router, frames handed to the slow path).
    pub consumed: Counter,
    /// Frames handed to the slow path through the punt ring (also counted in `consumed`).
    pub punted: Counter,
    /// Frames the slow path sent through the inject ring (also counted in `originated`).
    pub injected: Counter,
    /// Frames on the inject ring that could not be sent: their network or port is gone
    /// from the configuration, they are malformed, or the pool was empty.
    pub inject_dropped: Counter,
    /// Drops, indexed by [`DropReason`] as `usize`.
    pub drops: [Counter; DropReason::COUNT],
    /// Packets that entered each stage, indexed by [`Stage`] as `usize`.
    pub stage_packets: [Counter; Stage::ALL.len()],
    /// Passes over the poll list.
    pub loops: Counter,
    /// Passes that received at least one frame.
    pub busy_loops: Counter,
    /// Nanoseconds (from the worker's clock) spent in passes that received frames.
    pub busy_ns: Counter,
    /// Nanoseconds spent in passes that received nothing.
    pub idle_ns: Counter,
    /// MAC addresses learned.
    pub macs_learned: Counter,
    /// Learned MAC addresses that moved to another port.
    pub mac_moves: Counter,
    /// Learned MAC addresses removed by aging.
    pub macs_aged: Counter,
    /// Source MACs not learned because the network's (or the worker's) table was full.
    pub mac_table_full: Counter,
    /// Source MACs not learned because their VM port held its quota of learned MACs.
    pub mac_port_limit: Counter,
    /// MACs of hosts behind an uplink that a VM port sent from and did not take over.
    pub mac_move_refused: Counter,
    /// Learned MAC addresses held now.
    pub macs: Gauge,
    /// ICMP errors the routers sent.
    pub icmp_errors: Counter,
    /// ICMP errors not sent because of the rate limit.
    pub icmp_rate_limited: Counter,
    /// Fragments the routers made.
    pub fragments: Counter,
    /// NAT sessions held now.
    pub sessions: Gauge,
    /// Router neighbours (ARP entries) held now.
    pub neighbors: Gauge,
    /// Packets waiting for a next hop to answer ARP, at the last housekeeping.
    pub neighbor_waiting: Gauge,
    /// Generation of the snapshot the worker is running.
    pub generation: Gauge,
    /// Per-port counters, indexed by [`PortId`].
    pub ports: Box<[PortCounters]>,
}

impl WorkerCounters {
    /// Counters for a worker whose ports have ids below `max_ports`.
    pub fn new(max_ports: usize) -> Self {
        WorkerCounters {
            rx_packets: Counter::default(),
            tx_packets: Counter::default(),
            replicas: Counter::default(),
            originated: Counter::default(),
            consumed: Counter::default(),
            punted: Counter::default(),
            injected: Counter::default(),
            inject_dropped: Counter::default(),
            drops: std::array::from_fn(|_| Counter::default()),
            stage_packets: std::array::from_fn(|_| Counter::default()),
            loops: Counter::default(),
            busy_loops: Counter::default(),
            busy_ns: Counter::default(),
            idle_ns: Counter::default(),
            macs_learned: Counter::default(),
            mac_moves: Counter::default(),
            macs_aged: Counter::default(),
            mac_table_full: Counter::default(),
            mac_port_limit: Counter::default(),
            mac_move_refused: Counter::default(),
            macs: Gauge::default(),
            icmp_errors: Counter::default(),
            icmp_rate_limited: Counter::default(),
            fragments: Counter::default(),
            sessions: Gauge::default(),
            neighbors: Gauge::default(),
            neighbor_waiting: Gauge::default(),
            generation: Gauge::default(),
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
        }
    }

    /// Count of drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// Count of all drops.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }

    /// Per-port counters, if `port` is within range.
    pub fn port(&self, port: PortId) -> Option<&PortCounters> {
        self.ports.get(port.index())
    }

    /// Non-zero drop counts by reason, for logs and tests.
    pub fn drop_summary(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.dropped(r)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_sum() {
        let c = WorkerCounters::new(4);
        c.drops[DropReason::Runt as usize].add(3);
        c.drops[DropReason::Hairpin as usize].inc();
        assert_eq!(c.dropped_total(), 4);
        assert_eq!(
            c.drop_summary(),
            vec![(DropReason::Runt, 3), (DropReason::Hairpin, 1)]
        );
        assert!(c.port(PortId(3)).is_some() && c.port(PortId(4)).is_none());
        assert_eq!(std::mem::align_of::<WorkerCounters>(), 128);
    }
}
