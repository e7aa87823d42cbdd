//! The pipeline as a table of stages, in the manner of VPP's graph nodes and feature arcs.
//!
//! A receive burst is handed to the [`StageTable`], which walks its stages in order. Each
//! stage is a type owning its per-worker state with one entry point over the whole burst
//! ([`BurstStage::process`]); what every stage needs besides its own state (snapshot,
//! pool, counters, clock, input port) comes in one per-burst [`BurstCtx`] instead of
//! argument lists. A stage runs for a burst only when
//!
//! - the snapshot enables it for the burst's input port (a per-port [`StageSet`], as VPP
//!   enables features per interface), so a port without a feature pays nothing for it;
//! - and some packet of the burst is pending for it: every stage declares the kinds of
//!   [`Next`] it takes ([`BurstStage::wants`]) and says which kinds it produced, so the
//!   router or the slow path never runs for a burst that has nothing for them.
//!
//! A dropped packet carries the stage that dropped it (`Next::Drop(reason, stage)`), so a
//! drop is counted against the (stage, reason) that made it, per worker and per port.
//! The table also keeps each stage's runtime (calls, packets, time-stamp-counter cycles),
//! as VPP's `show runtime`.
//!
//! # Adding a stage
//!
//! 1. A new file with a type implementing [`BurstStage`]: `id` returns its [`Stage`],
//!    `wants` the kinds of next step it takes (e.g. [`Pending::L2`] for an ingress feature
//!    such as port security, which sees packets after classification), `process` loops
//!    over the burst, skips packets whose `meta.next` it does not take, and sets
//!    `meta.next` of those it decides (a drop is `Next::Drop(reason, its id)`; the
//!    output stage frees and counts it). A stage that changes state other than the
//!    packet and the counters (a table, a rate limiter, a queue) leaves it as it is for
//!    a [`BurstCtx::dry_run`] burst (an explained packet, see [`explain`]), deciding as
//!    it would.
//! 2. A line in the `stages!` list of [`Stage`] (its name and help).
//! 3. A field and a `step!` line in [`StageTable`] (`table.rs`), where in the order it
//!    runs.
//! 4. Enabling per port: [`crate::snapshot::SnapshotBuilder::enable_stage`] from the
//!    control plane's compile step for the ports that have the feature. The built-in
//!    stages are enabled by the snapshot itself (see `Snapshot::port_stages`).
//!
//! Stages that are not built in (tests, experiments) can be added at run time with
//! `Worker::add_stage`: they run right after classification, under the id
//! [`Stage::Extension`], through dynamic dispatch.

pub mod capture;
pub mod explain;
mod table;
pub mod trace;
pub mod tsc;

pub use table::StageTable;

use crate::buf::FramePool;
use crate::conntrack::ConnTable;
use crate::counters::WorkerCounters;
use crate::l2::MacTable;
use crate::output::PortSet;
use crate::packet::{Next, Packet};
use crate::port::PortId;
use crate::snapshot::{PortRole, Snapshot};

macro_rules! stages {
    ($($variant:ident => $name:literal, $help:literal;)*) => {
        /// The stages of the pipeline: the identity of a stage in counters, drop
        /// attribution and per-port stage sets.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Stage {
            #[default]
            $(#[doc = $help] $variant,)*
        }

        impl Stage {
            /// Every stage, in counter order.
            pub const ALL: [Stage; [$(Stage::$variant,)*].len()] = [$(Stage::$variant,)*];
            /// Number of stages (the length of a per-stage counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// Stable name for metrics and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(Stage::$variant => $name,)* }
            }

            /// One-line explanation for humans.
            pub const fn help(self) -> &'static str {
                match self { $(Stage::$variant => $help,)* }
            }
        }
    };
}

// Counter order: append new stages at the end, so that existing indices stay.
stages! {
    Classify => "classify", "Ethernet/802.1Q parsing and network classification.";
    L2 => "l2", "MAC learning and forwarding decision.";
    L3 => "l3", "Routing, NAT, ARP and ICMP echo of the routers.";
    Output => "output", "Egress encapsulation and transmit batching.";
    Flood => "flood", "Replication of broadcast, multicast and unknown unicast.";
    SlowPath => "slow_path", "Frames for the slow path (DHCP) and ARP for its addresses.";
    Extension => "extension", "A stage added at run time (Worker::add_stage), not built in.";
    PortSecurity => "port_security", "Anti-spoofing of VM ports with port security (source MAC, addresses, ARP; no DHCP server or router advertisement from a VM).";
    ChecksumOffload => "checksum_offload", "Completes TCP/UDP checksums that a kernel sender with checksum offload left partial (AF_XDP ports).";
    TunnelDecap => "tunnel_decap", "VXLAN, Geneve or GRE to the tunnel endpoint: VNI or key to network, inner frame on to L2 from the sender's tunnel port; ARP for the endpoint's address.";
    ArpResponder => "arp_responder", "Answers ARP requests on overlay networks for addresses of known ports (l2population), on the host.";
    TunnelEncap => "tunnel_encap", "Outer Ethernet/IPv4 and UDP/VXLAN, UDP/Geneve or GRE headers for frames to remote hosts; head-end replication of floods.";
    SgEgress => "sg_egress", "Security groups of VM ports, on traffic from the VM (after port security).";
    SgIngress => "sg_ingress", "Security groups of VM ports, on traffic to the VM (after the forwarding decision; flooded replicas per output port).";
    QosEgress => "qos_egress", "QoS of VM ports on traffic from the VM (Neutron egress): bandwidth limit, then DSCP marking.";
    QosIngress => "qos_ingress", "QoS of VM ports on traffic to the VM (Neutron ingress): bandwidth limit, after the forwarding decision.";
    Trunk => "trunk", "Trunk parents (VLAN-aware VMs): a burst split by VLAN ID into its subports' frames (tag popped) and the parent's, each run as received on its port.";
    FlowHandoff => "flow_handoff", "With several workers: packets whose flow (connection, NAT session) another worker owns are handed to it before the stateful stages.";
}

impl Stage {
    /// The stage with counter index `index`.
    pub fn from_index(index: usize) -> Option<Stage> {
        Stage::ALL.get(index).copied()
    }

    /// Looks a stage up by its [`Stage::name`].
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.iter().copied().find(|s| s.name() == name)
    }

    #[inline(always)]
    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of stages: those the snapshot enables for one input port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StageSet(u32);

impl StageSet {
    /// No stage at all.
    pub const EMPTY: StageSet = StageSet(0);
    /// What every burst passes, configured port or not: classification (which drops
    /// what a port without configuration sends) and output (which accounts for every
    /// packet's fate).
    pub const BASE: StageSet = StageSet(Stage::Classify.bit() | Stage::Output.bit());

    /// This set with `stage` in it.
    #[inline]
    pub const fn with(self, stage: Stage) -> StageSet {
        StageSet(self.0 | stage.bit())
    }

    /// Every stage of either set.
    #[inline]
    #[must_use]
    pub const fn union(self, other: StageSet) -> StageSet {
        StageSet(self.0 | other.0)
    }

    /// This set without `stage`.
    #[inline]
    pub const fn without(self, stage: Stage) -> StageSet {
        StageSet(self.0 & !stage.bit())
    }

    /// Whether `stage` is in the set.
    #[inline(always)]
    pub const fn contains(self, stage: Stage) -> bool {
        self.0 & stage.bit() != 0
    }

    /// The stages in the set, in counter order.
    pub fn iter(self) -> impl Iterator<Item = Stage> {
        Stage::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

/// Kinds of [`Next`] that packets of a burst may have: what a stage takes and what it
/// leaves behind, so the table runs a stage only when something is pending for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pending(u8);

impl Pending {
    /// Nothing.
    pub const NONE: Pending = Pending(0);
    /// [`Next::Classify`]: just received.
    pub const CLASSIFY: Pending = Pending(1 << 0);
    /// [`Next::L2`]: classified, before the forwarding decision (ingress features).
    pub const L2: Pending = Pending(1 << 1);
    /// [`Next::Route`] or [`Next::Arp`]: for a router.
    pub const ROUTE: Pending = Pending(1 << 2);
    /// [`Next::SlowPath`]: for the slow path.
    pub const SLOW_PATH: Pending = Pending(1 << 3);
    /// [`Next::Output`] or [`Next::Flood`]: decided, to send.
    pub const SEND: Pending = Pending(1 << 4);
    /// [`Next::Drop`], [`Next::Consumed`] or [`Next::Waiting`]: decided, not sent now.
    pub const DONE: Pending = Pending(1 << 5);
    /// Every kind.
    pub const ALL: Pending = Pending(0x3f);

    /// The kind of `next`.
    #[inline]
    pub const fn of(next: Next) -> Pending {
        match next {
            Next::Classify => Pending::CLASSIFY,
            Next::L2 => Pending::L2,
            Next::Route(_) | Next::Arp => Pending::ROUTE,
            Next::SlowPath => Pending::SLOW_PATH,
            Next::Output(_) | Next::Flood => Pending::SEND,
            Next::Drop(..) | Next::Consumed | Next::Waiting => Pending::DONE,
        }
    }

    /// Both sets together.
    #[inline(always)]
    #[must_use]
    pub const fn union(self, other: Pending) -> Pending {
        Pending(self.0 | other.0)
    }

    /// Whether the sets share a kind.
    #[inline(always)]
    pub const fn intersects(self, other: Pending) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for Pending {
    type Output = Pending;
    #[inline(always)]
    fn bitor(self, rhs: Pending) -> Pending {
        self.union(rhs)
    }
}

impl std::ops::BitOrAssign for Pending {
    #[inline(always)]
    fn bitor_assign(&mut self, rhs: Pending) {
        *self = self.union(rhs);
    }
}

/// What one call of a stage did: how many packets it took (its vector size) and which
/// kinds of next step it may have left (a superset is fine; it only makes later stages
/// look at the burst).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Packets the stage took from the burst.
    pub packets: u32,
    /// Kinds of next step it set.
    pub produced: Pending,
}

/// Everything a stage needs for one burst besides its own state. Built once per burst by
/// the worker (and for housekeeping, with [`PortId::NONE`] as the input port).
pub struct BurstCtx<'a> {
    /// The snapshot of this pass: a burst never sees two generations.
    pub snap: &'a Snapshot,
    /// The worker's frames.
    pub pool: &'a mut FramePool,
    /// The worker's ports and their transmit batches.
    pub ports: &'a mut PortSet,
    /// Learned MACs: the L2 stage learns them and the router's egress looks them up, so
    /// they are the worker's, not one stage's.
    pub macs: &'a mut MacTable,
    /// The worker's connection table: NAT sessions (zone = router) and security-group
    /// connections (zone = port) on one lookup path.
    pub conns: &'a mut ConnTable,
    /// The worker's IPv6 connection table (security groups; same zones).
    pub conns6: &'a mut ConnTable<crate::conntrack::FlowKey6>,
    /// The worker's counters.
    pub counters: &'a WorkerCounters,
    /// The worker's clock at the start of the pass, in nanoseconds.
    pub now_ns: u64,
    /// The same in seconds (the time base of learned entries).
    pub now_secs: u32,
    /// The port the burst came from.
    pub in_port: PortId,
    /// Its role in the snapshot, looked up once for the burst.
    pub role: PortRole,
    /// An explained packet ([`crate::pipeline::explain`]): every stage decides as it
    /// would, but leaves the worker's tables as they are (no learning, no session, no
    /// neighbour entry or ARP request, no rate-limiter token, nothing punted). Counters
    /// and transmission need no check: an explain pass runs with counters and ports of
    /// its own. Stages test it where they already branch (a table miss, a new flow), or
    /// once per burst, never per packet on the forwarding path.
    pub dry_run: bool,
}

impl std::fmt::Debug for BurstCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurstCtx")
            .field("generation", &self.snap.generation())
            .field("in_port", &self.in_port)
            .field("role", &self.role)
            .field("now_ns", &self.now_ns)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// A stage of the pipeline. See the module documentation.
pub trait BurstStage {
    /// Its identity.
    fn id(&self) -> Stage;

    /// The kinds of next step it takes packets from.
    fn wants(&self) -> Pending;

    /// Runs every packet of the burst whose next step it takes.
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome;

    /// Runs after the burst was sent: a stage that made frames of its own (ARP requests,
    /// released packets) sends them here.
    fn finish(&mut self, _cx: &mut BurstCtx<'_>) {}
}
