//! Per-worker counters.
//!
//! Each worker writes only its own counters and the control thread reads them to export
//! metrics. A single writer needs no atomic read-modify-write: an increment is a relaxed
//! load and store, as cheap as a plain add, and a reader always sees a value the counter
//! really had. The block is cache-line aligned so two workers never share a line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::drop::DropReason;
use crate::metering::{MeterCounters, MAX_METERS};
use crate::port::PortId;

pub use crate::pipeline::Stage;

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

/// The load of one receive queue on the worker that polls it, as OVS measures an rxq's
/// processing cycles: every poll that returned frames adds the time-stamp-counter cycles
/// from before the driver's receive to the end of the burst's pipeline (its transmit
/// batches included), and the frames. Empty polls are the worker's idle time, not a
/// queue's. Counts start at zero on the worker that polls the queue (a moved queue starts
/// again on its new worker).
#[derive(Debug)]
pub struct QueueLoad {
    /// The port.
    pub port: PortId,
    /// The queue, as the worker's part of the port numbers it (an AF_XDP port's queues on
    /// one worker are 0, 1, ... in the order of the port's `queues`).
    pub queue: u16,
    /// Frames received from the queue.
    pub packets: Counter,
    /// Polls that returned frames.
    pub bursts: Counter,
    /// Cycles spent on those polls.
    pub cycles: Counter,
}

impl QueueLoad {
    /// A queue with nothing counted yet.
    pub fn new(port: PortId, queue: u16) -> Self {
        QueueLoad {
            port,
            queue,
            packets: Counter::default(),
            bursts: Counter::default(),
            cycles: Counter::default(),
        }
    }
}

impl WorkerCounters {
    /// The receive queues' loads, in polling order.
    pub fn queue_loads(&self) -> Vec<Arc<QueueLoad>> {
        self.rx_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    /// Frames from the port (Neutron egress) its bandwidth limit dropped.
    pub policed_egress_packets: Counter,
    /// Their bytes.
    pub policed_egress_bytes: Counter,
    /// Frames to the port (Neutron ingress) its bandwidth limit dropped.
    pub policed_ingress_packets: Counter,
    /// Their bytes.
    pub policed_ingress_bytes: Counter,
    /// IPv4 and IPv6 packets from the port whose DSCP its QoS policy rewrote.
    pub dscp_marked: Counter,
}

impl PortCounters {
    fn all(&self) -> [&Counter; 11] {
        [
            &self.rx_packets,
            &self.rx_bytes,
            &self.rx_dropped,
            &self.tx_packets,
            &self.tx_bytes,
            &self.tx_dropped,
            &self.policed_egress_packets,
            &self.policed_egress_bytes,
            &self.policed_ingress_packets,
            &self.policed_ingress_bytes,
            &self.dscp_marked,
        ]
    }

    /// Zeroes every counter. Only the owning worker may call this.
    pub fn reset(&self) {
        for c in self.all() {
            c.reset();
        }
    }

    /// Adds `other`'s counts to these (a sum nobody else writes).
    pub fn add_from(&self, other: &PortCounters) {
        for (a, b) in self.all().into_iter().zip(other.all()) {
            a.add(b.get());
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
    /// The same frames by the service they were punted for, indexed by
    /// [`crate::slowpath::ServiceId`] as `usize`.
    pub punted_by_service: [Counter; crate::slowpath::MAX_SERVICES],
    /// Frames the slow path sent through the inject ring (also counted in `originated`).
    pub injected: Counter,
    /// Frames on the inject ring that could not be sent: their network or port is gone
    /// from the configuration, they are malformed, or the pool was empty.
    pub inject_dropped: Counter,
    /// Drops, indexed by [`DropReason`] as `usize`.
    pub drops: [Counter; DropReason::COUNT],
    /// Packets that entered each stage, indexed by [`Stage`] as `usize`.
    pub stage_packets: [Counter; Stage::COUNT],
    /// Calls of each stage (bursts it ran for), indexed by [`Stage`] as `usize`.
    pub stage_calls: [Counter; Stage::COUNT],
    /// Time-stamp-counter cycles spent in each stage, indexed by [`Stage`] as `usize`.
    pub stage_cycles: [Counter; Stage::COUNT],
    /// Drops by the stage that decided them and reason: index
    /// `stage as usize * DropReason::COUNT + reason as usize` (see
    /// [`WorkerCounters::stage_dropped`]).
    pub stage_drops: Box<[Counter]>,
    /// Drops by (port, stage, reason).
    pub port_drops: PortDrops,
    /// Passes over the poll list.
    pub loops: Counter,
    /// Passes that received at least one frame.
    pub busy_loops: Counter,
    /// Nanoseconds (from the worker's clock) spent in passes that received frames.
    pub busy_ns: Counter,
    /// Nanoseconds spent in passes that received nothing.
    pub idle_ns: Counter,
    /// The load of each receive queue the worker polls, in polling order (see
    /// [`QueueLoad`]): replaced by the worker when its poll list changes, read by the
    /// control thread. Never locked on the packet path.
    pub rx_queues: Mutex<Vec<Arc<QueueLoad>>>,
    /// Frames handed to the worker that owns their output port's queue (see
    /// [`crate::handoff`]).
    pub handoffs: Counter,
    /// Frames that could not be handed off because the ring to the owner was full (also
    /// counted as drops, `handoff_ring_full`).
    pub handoff_drops: Counter,
    /// Frames other workers handed to this one to transmit.
    pub handoffs_received: Counter,
    /// Packets handed to the worker that owns their flow's state (see
    /// [`crate::flow_owner`]).
    pub flow_handoffs: Counter,
    /// Packets that could not be handed to their flow's owner because the ring to it was
    /// full (also counted as drops, `flow_handoff_ring_full`).
    pub flow_handoff_drops: Counter,
    /// Packets other workers handed to this one as their flow's owner.
    pub flow_handoffs_received: Counter,
    /// Neighbours learned by other workers and applied here.
    pub neighbor_news: Counter,
    /// Neighbour news not delivered to a peer because the ring to it was full.
    pub neighbor_news_lost: Counter,
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
    /// TCP/UDP checksums completed for kernel senders that left them partial.
    pub checksums_completed: Counter,
    /// ARP requests on overlay networks answered by the ARP responder.
    pub arp_responder_replies: Counter,
    /// Frames VXLAN-encapsulated towards a remote tunnel endpoint (head-end copies
    /// included).
    pub vxlan_encapsulated: Counter,
    /// VXLAN packets decapsulated into an overlay network.
    pub vxlan_decapsulated: Counter,
    /// Frames Geneve-encapsulated towards a remote tunnel endpoint (head-end copies
    /// included).
    pub geneve_encapsulated: Counter,
    /// Geneve packets decapsulated into an overlay network.
    pub geneve_decapsulated: Counter,
    /// Frames GRE-encapsulated towards a remote tunnel endpoint (head-end copies
    /// included).
    pub gre_encapsulated: Counter,
    /// GRE packets decapsulated into an overlay network.
    pub gre_decapsulated: Counter,
    /// Learned MAC addresses held now.
    pub macs: Gauge,
    /// ICMP errors the routers sent.
    pub icmp_errors: Counter,
    /// ICMP errors not sent because of the rate limit.
    pub icmp_rate_limited: Counter,
    /// ICMP errors about NATed flows translated as their flow (RFC 5508), sent or passed.
    pub nat_icmp_errors: Counter,
    /// TCP resets the routers sent for segments to their own addresses.
    pub tcp_resets: Counter,
    /// Fragments the routers made.
    pub fragments: Counter,
    /// Packets the routers forwarded from their forwarding cache: a run of one
    /// destination or one NAT flow within a burst, after its first packet.
    pub route_cache_hits: Counter,
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
    /// Metering counters, indexed by meter slot (see [`crate::metering`]).
    pub meters: Box<[MeterCounters]>,
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
            punted_by_service: std::array::from_fn(|_| Counter::default()),
            injected: Counter::default(),
            inject_dropped: Counter::default(),
            drops: std::array::from_fn(|_| Counter::default()),
            stage_packets: std::array::from_fn(|_| Counter::default()),
            stage_calls: std::array::from_fn(|_| Counter::default()),
            stage_cycles: std::array::from_fn(|_| Counter::default()),
            stage_drops: (0..Stage::COUNT * DropReason::COUNT)
                .map(|_| Counter::default())
                .collect(),
            port_drops: PortDrops::new(PORT_DROP_SLOTS),
            loops: Counter::default(),
            busy_loops: Counter::default(),
            busy_ns: Counter::default(),
            idle_ns: Counter::default(),
            rx_queues: Mutex::new(Vec::new()),
            handoffs: Counter::default(),
            handoff_drops: Counter::default(),
            handoffs_received: Counter::default(),
            flow_handoffs: Counter::default(),
            flow_handoff_drops: Counter::default(),
            flow_handoffs_received: Counter::default(),
            neighbor_news: Counter::default(),
            neighbor_news_lost: Counter::default(),
            macs_learned: Counter::default(),
            mac_moves: Counter::default(),
            macs_aged: Counter::default(),
            mac_table_full: Counter::default(),
            mac_port_limit: Counter::default(),
            mac_move_refused: Counter::default(),
            checksums_completed: Counter::default(),
            arp_responder_replies: Counter::default(),
            vxlan_encapsulated: Counter::default(),
            vxlan_decapsulated: Counter::default(),
            geneve_encapsulated: Counter::default(),
            geneve_decapsulated: Counter::default(),
            gre_encapsulated: Counter::default(),
            gre_decapsulated: Counter::default(),
            macs: Gauge::default(),
            icmp_errors: Counter::default(),
            icmp_rate_limited: Counter::default(),
            nat_icmp_errors: Counter::default(),
            tcp_resets: Counter::default(),
            fragments: Counter::default(),
            route_cache_hits: Counter::default(),
            sessions: Gauge::default(),
            neighbors: Gauge::default(),
            neighbor_waiting: Gauge::default(),
            generation: Gauge::default(),
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
            meters: (0..MAX_METERS).map(|_| MeterCounters::default()).collect(),
        }
    }

    /// The sum of several workers' counters (gauges summed too, but the generation is the
    /// oldest any of them runs), for showing one figure for all of them. Per-port counters
    /// are kept for port ids below `max_ports`.
    pub fn summed<'a>(
        workers: impl IntoIterator<Item = &'a WorkerCounters>,
        max_ports: usize,
    ) -> Self {
        fn add_all(to: &[Counter], from: &[Counter]) {
            for (a, b) in to.iter().zip(from) {
                a.add(b.get());
            }
        }
        let sum = WorkerCounters::new(max_ports);
        let mut generation = u64::MAX;
        for w in workers {
            sum.rx_packets.add(w.rx_packets.get());
            sum.tx_packets.add(w.tx_packets.get());
            sum.replicas.add(w.replicas.get());
            sum.originated.add(w.originated.get());
            sum.consumed.add(w.consumed.get());
            sum.punted.add(w.punted.get());
            add_all(&sum.punted_by_service, &w.punted_by_service);
            sum.injected.add(w.injected.get());
            sum.inject_dropped.add(w.inject_dropped.get());
            add_all(&sum.drops, &w.drops);
            add_all(&sum.stage_packets, &w.stage_packets);
            add_all(&sum.stage_calls, &w.stage_calls);
            add_all(&sum.stage_cycles, &w.stage_cycles);
            add_all(&sum.stage_drops, &w.stage_drops);
            for (port, stage, reason, n) in w.port_drops.iter() {
                sum.port_drops.add(port, stage, reason, n);
            }
            sum.port_drops.overflow.add(w.port_drops.overflow.get());
            sum.loops.add(w.loops.get());
            sum.busy_loops.add(w.busy_loops.get());
            sum.busy_ns.add(w.busy_ns.get());
            sum.idle_ns.add(w.idle_ns.get());
            sum.handoffs.add(w.handoffs.get());
            sum.handoff_drops.add(w.handoff_drops.get());
            sum.handoffs_received.add(w.handoffs_received.get());
            sum.flow_handoffs.add(w.flow_handoffs.get());
            sum.flow_handoff_drops.add(w.flow_handoff_drops.get());
            sum.flow_handoffs_received
                .add(w.flow_handoffs_received.get());
            sum.neighbor_news.add(w.neighbor_news.get());
            sum.neighbor_news_lost.add(w.neighbor_news_lost.get());
            sum.macs_learned.add(w.macs_learned.get());
            sum.mac_moves.add(w.mac_moves.get());
            sum.macs_aged.add(w.macs_aged.get());
            sum.mac_table_full.add(w.mac_table_full.get());
            sum.mac_port_limit.add(w.mac_port_limit.get());
            sum.mac_move_refused.add(w.mac_move_refused.get());
            sum.checksums_completed.add(w.checksums_completed.get());
            sum.arp_responder_replies.add(w.arp_responder_replies.get());
            sum.vxlan_encapsulated.add(w.vxlan_encapsulated.get());
            sum.vxlan_decapsulated.add(w.vxlan_decapsulated.get());
            sum.macs.set(sum.macs.get() + w.macs.get());
            sum.icmp_errors.add(w.icmp_errors.get());
            sum.icmp_rate_limited.add(w.icmp_rate_limited.get());
            sum.fragments.add(w.fragments.get());
            sum.sessions.set(sum.sessions.get() + w.sessions.get());
            sum.neighbors.set(sum.neighbors.get() + w.neighbors.get());
            sum.neighbor_waiting
                .set(sum.neighbor_waiting.get() + w.neighbor_waiting.get());
            generation = generation.min(w.generation.get());
            for (a, b) in sum.ports.iter().zip(w.ports.iter()) {
                a.add_from(b);
            }
            for (a, b) in sum.meters.iter().zip(w.meters.iter()) {
                for d in 0..2 {
                    a.packets[d].add(b.packets[d].get());
                    a.bytes[d].add(b.bytes[d].get());
                }
            }
        }
        sum.generation.set(if generation == u64::MAX {
            0
        } else {
            generation
        });
        sum
    }

    /// Count of drops for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    /// Count of drops decided by `stage` for `reason`.
    pub fn stage_dropped(&self, stage: Stage, reason: DropReason) -> u64 {
        self.stage_drops[stage as usize * DropReason::COUNT + reason as usize].get()
    }

    /// Counts `n` drops that `stage` decided for `reason`, charged to `port` when the
    /// drop belongs to one (the input port of a received frame, the output port of a
    /// frame its ring refused). The per-reason total is counted here as well.
    #[inline]
    pub fn count_drop(&self, port: Option<PortId>, stage: Stage, reason: DropReason, n: u64) {
        self.drops[reason as usize].add(n);
        self.stage_drops[stage as usize * DropReason::COUNT + reason as usize].add(n);
        if let Some(port) = port {
            self.port_drops.add(port, stage, reason, n);
        }
    }

    /// Frames that came into the worker: received, copied by flooding, made by the
    /// worker (or injected), handed over by another worker.
    pub fn frames_in(&self) -> u64 {
        self.rx_packets.get()
            + self.replicas.get()
            + self.originated.get()
            + self.handoffs_received.get()
            + self.flow_handoffs_received.get()
    }

    /// Frames that left the worker: sent, dropped, consumed, handed to another worker.
    /// Once the worker has flushed, `frames_in() == frames_out()` plus the packets waiting
    /// for a neighbour; summed over workers whose handoff rings are empty, likewise.
    pub fn frames_out(&self) -> u64 {
        self.tx_packets.get()
            + self.dropped_total()
            + self.consumed.get()
            + self.handoffs.get()
            + self.flow_handoffs.get()
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

/// Slots of a worker's [`PortDrops`] table.
pub const PORT_DROP_SLOTS: usize = 4096;

/// Slots looked at for a key before a drop counts as overflow.
const PORT_DROP_PROBES: usize = 16;

/// Drops per (port, stage, reason), for one worker: a fixed open-addressed table, since
/// only a few of the (port, stage, reason) combinations ever happen and a dense array for
/// every port id would be megabytes. Written only by its worker (an entry is claimed by
/// storing its key, never removed); read by anyone. What does not fit is counted in
/// `overflow` (it is still in the per-stage and per-reason totals).
#[derive(Debug)]
pub struct PortDrops {
    /// `0` for a free slot, else `1 << 32 | port << 16 | stage << 8 | reason`.
    keys: Box<[AtomicU64]>,
    counts: Box<[Counter]>,
    /// Drops that found no slot.
    pub overflow: Counter,
}

impl PortDrops {
    /// A table of `slots` entries (rounded up to a power of two).
    pub fn new(slots: usize) -> Self {
        let slots = slots.next_power_of_two();
        PortDrops {
            keys: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            counts: (0..slots).map(|_| Counter::default()).collect(),
            overflow: Counter::default(),
        }
    }

    fn key(port: PortId, stage: Stage, reason: DropReason) -> u64 {
        1 << 32 | u64::from(port.0) << 16 | (stage as u64) << 8 | reason as u64
    }

    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing spreads ports and reasons over the table.
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & (self.keys.len() - 1)
    }

    /// Adds `n` drops. Only the owning worker may call this.
    #[inline(never)]
    pub fn add(&self, port: PortId, stage: Stage, reason: DropReason, n: u64) {
        let key = Self::key(port, stage, reason);
        let mask = self.keys.len() - 1;
        let mut i = self.home(key);
        for _ in 0..PORT_DROP_PROBES {
            let k = self.keys[i].load(Ordering::Relaxed);
            if k == key {
                self.counts[i].add(n);
                return;
            }
            if k == 0 {
                self.counts[i].reset();
                self.counts[i].add(n);
                // A reader that sees the key sees its count (or a later one).
                self.keys[i].store(key, Ordering::Release);
                return;
            }
            i = (i + 1) & mask;
        }
        self.overflow.add(n);
    }

    /// Zeroes the counts of `port` (its id given to a new port). Only the owning worker.
    pub fn reset_port(&self, port: PortId) {
        for (k, c) in self.keys.iter().zip(self.counts.iter()) {
            let k = k.load(Ordering::Relaxed);
            if k != 0 && (k >> 16) as u16 == port.0 {
                c.reset();
            }
        }
    }

    /// Every non-zero count as (port, stage, reason, count).
    pub fn iter(&self) -> impl Iterator<Item = (PortId, Stage, DropReason, u64)> + '_ {
        self.keys
            .iter()
            .zip(self.counts.iter())
            .filter_map(|(k, c)| {
                let k = k.load(Ordering::Acquire);
                if k == 0 {
                    return None;
                }
                let stage = Stage::from_index(((k >> 8) & 0xff) as usize)?;
                let reason = *DropReason::ALL.get((k & 0xff) as usize)?;
                let n = c.get();
                (n > 0).then_some((PortId((k >> 16) as u16), stage, reason, n))
            })
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

    #[test]
    fn drops_count_per_stage_and_port() {
        let c = WorkerCounters::new(4);
        c.count_drop(Some(PortId(2)), Stage::L2, DropReason::Hairpin, 2);
        c.count_drop(Some(PortId(2)), Stage::L2, DropReason::Hairpin, 1);
        c.count_drop(Some(PortId(3)), Stage::Classify, DropReason::Runt, 1);
        c.count_drop(None, Stage::Flood, DropReason::NoBuffers, 5);
        assert_eq!(c.dropped(DropReason::Hairpin), 3);
        assert_eq!(c.stage_dropped(Stage::L2, DropReason::Hairpin), 3);
        assert_eq!(c.stage_dropped(Stage::Flood, DropReason::NoBuffers), 5);
        let mut per_port: Vec<_> = c.port_drops.iter().collect();
        per_port.sort();
        assert_eq!(
            per_port,
            vec![
                (PortId(2), Stage::L2, DropReason::Hairpin, 3),
                (PortId(3), Stage::Classify, DropReason::Runt, 1)
            ]
        );
        c.port_drops.reset_port(PortId(2));
        assert_eq!(c.port_drops.iter().count(), 1);
    }

    #[test]
    fn port_drops_overflow_instead_of_growing() {
        let t = PortDrops::new(4);
        for p in 0..10u16 {
            t.add(PortId(p), Stage::L2, DropReason::Hairpin, 1);
        }
        let held: u64 = t.iter().map(|e| e.3).sum();
        assert_eq!(held + t.overflow.get(), 10);
        assert_eq!(t.iter().count(), 4);
    }
}
