//! Prometheus metrics: the exposition and the tiny HTTP server that serves it.
//!
//! Every worker writes only its own [`WorkerCounters`] (single writer, no atomic
//! read-modify-write on the hot path). A scrape reads each worker's block once, sums
//! over workers where the metric is not per worker, and encodes the result with the
//! `prometheus-client` crate. That crate writes the OpenMetrics text format
//! ([`render_openmetrics`]); [`render`] maps it to the Prometheus text format 0.0.4, which
//! every scraper and `promtool check metrics` accept. The server picks by `Accept`.
//! Config-apply statistics are kept here and updated by the control thread.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pollux_dataplane::counters::{Stage, WorkerCounters};
use pollux_dataplane::drop::DropReason;
use pollux_dataplane::port::PortId;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use pollux_dataplane::slowpath::SERVICES;
use pollux_drivers::vhost_user::Mailbox;
use pollux_services::dhcp::service::{FrameDrop, ServiceStats};
use pollux_services::dispatch::DispatchStats;

/// The `Content-Type` of [`render`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Content-Type` of [`render_openmetrics`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the config-apply latency histogram: 100 µs to 10 s.
pub const APPLY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

type GenerationFn = Box<dyn Fn() -> u64 + Send + Sync>;
type DhcpFn = Box<dyn Fn() -> ServiceStats + Send + Sync>;
type SlowPathFn = Box<dyn Fn() -> DispatchStats + Send + Sync>;
/// Each security-group rule's (group, rule, hits).
type SgRulesFn = Box<dyn Fn() -> Vec<(String, String, u64)> + Send + Sync>;

/// A metered (label, router) pair: its meter slot and the slot's counts when the pair
/// got it, which its own counts start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterRow {
    label: String,
    router: String,
    slot: u16,
    base: [u64; 4],
}

/// What a metering label counted on one router (Neutron's iptables driver's label chain,
/// split by direction).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MeterCount {
    /// The label's id.
    pub label: String,
    /// The router's id.
    pub router: String,
    /// Packets that arrived through the external gateway.
    pub ingress_packets: u64,
    /// Their bytes (IPv4 total lengths).
    pub ingress_bytes: u64,
    /// Packets that left through the external gateway.
    pub egress_packets: u64,
    /// Their bytes.
    pub egress_bytes: u64,
}

/// Everything a scrape reads: the workers' counters, the port names, the active
/// generation and the config-apply statistics.
pub struct MetricsSource {
    workers: Vec<(usize, Arc<WorkerCounters>)>,
    /// Port id → label; a change edits the ports it adds and removes (a map, so that a
    /// one-port change on a host with 10,000 ports does not rebuild the table).
    ports: Mutex<BTreeMap<PortId, String>>,
    /// The vhost-user ports' shared state, by port label.
    vhost_user: Mutex<Vec<(String, Arc<Mailbox>)>>,
    generation: AtomicU64,
    generation_fn: Option<GenerationFn>,
    dhcp_fn: Option<DhcpFn>,
    slow_path_fn: Option<SlowPathFn>,
    sg_rules_fn: Option<SgRulesFn>,
    meters: Mutex<Vec<MeterRow>>,
    apply_total: Counter,
    apply_failures_total: Counter,
    apply_seconds: Histogram,
}

impl fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsSource")
            .field("workers", &self.workers.len())
            .field("ports", &self.ports.lock().map(|p| p.len()).unwrap_or(0))
            .field("generation", &self.generation())
            .field("apply_total", &self.apply_total.get())
            .field("apply_failures_total", &self.apply_failures_total.get())
            .finish_non_exhaustive()
    }
}

impl MetricsSource {
    /// A source over `workers` (worker id, its counters) and the port-name table `ports`.
    pub fn new(workers: Vec<(usize, Arc<WorkerCounters>)>, ports: Vec<(PortId, String)>) -> Self {
        MetricsSource {
            workers,
            ports: Mutex::new(ports.into_iter().collect()),
            vhost_user: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            generation_fn: None,
            dhcp_fn: None,
            slow_path_fn: None,
            sg_rules_fn: None,
            meters: Mutex::new(Vec::new()),
            apply_total: Counter::default(),
            apply_failures_total: Counter::default(),
            apply_seconds: Histogram::new(APPLY_BUCKETS),
        }
    }

    /// Reads the active generation from `f` at each scrape instead of from
    /// [`set_generation`](Self::set_generation).
    pub fn with_generation_fn(mut self, f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.generation_fn = Some(Box::new(f));
        self
    }

    /// Exports the DHCP server's counters, read from `f` at each scrape.
    pub fn with_dhcp_fn(mut self, f: impl Fn() -> ServiceStats + Send + Sync + 'static) -> Self {
        self.dhcp_fn = Some(Box::new(f));
        self
    }

    /// Exports the slow-path thread's per-service counters, read from `f` at each scrape.
    pub fn with_slow_path_fn(
        mut self,
        f: impl Fn() -> DispatchStats + Send + Sync + 'static,
    ) -> Self {
        self.slow_path_fn = Some(Box::new(f));
        self
    }

    /// Exports each security-group rule's hits, read from `f` at each scrape.
    pub fn with_sg_rules_fn(
        mut self,
        f: impl Fn() -> Vec<(String, String, u64)> + Send + Sync + 'static,
    ) -> Self {
        self.sg_rules_fn = Some(Box::new(f));
        self
    }

    /// Replaces the port-name table (after a configuration change).
    pub fn set_ports(&self, ports: Vec<(PortId, String)>) {
        *self.ports.lock().unwrap_or_else(|e| e.into_inner()) = ports.into_iter().collect();
    }

    /// Takes the `removed` ports out of the port-name table and puts the `added` ones in.
    pub fn update_ports(
        &self,
        removed: impl IntoIterator<Item = PortId>,
        added: impl IntoIterator<Item = (PortId, String)>,
    ) {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        for id in removed {
            ports.remove(&id);
        }
        ports.extend(added);
    }

    /// The metering table for the metered `(label, router, slot)` triples: a pair that keeps
    /// its slot keeps its baseline; any other starts from the slot's counts now (or from
    /// zero with `fresh`: workers that never counted). Built before the snapshot that
    /// counts in a new slot is published, while no worker counts in it, so that the
    /// baseline is exact.
    pub fn meter_table<'a>(
        &self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str, u16)>,
        fresh: bool,
    ) -> Vec<MeterRow> {
        let old = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        pairs
            .into_iter()
            .map(|(label, router, slot)| {
                let kept = old
                    .iter()
                    .find(|r| r.label == label && r.router == router && r.slot == slot);
                let base = match kept {
                    Some(r) => r.base,
                    None if fresh => [0; 4],
                    None => self.meter_sum(slot),
                };
                MeterRow {
                    label: label.to_owned(),
                    router: router.to_owned(),
                    slot,
                    base,
                }
            })
            .collect()
    }

    /// Installs a table made by [`MetricsSource::meter_table`].
    pub fn install_meters(&self, table: Vec<MeterRow>) {
        *self.meters.lock().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The workers' counts of meter slot `slot`, summed: ingress packets and bytes, egress
    /// packets and bytes.
    fn meter_sum(&self, slot: u16) -> [u64; 4] {
        let mut v = [0u64; 4];
        for (_, w) in &self.workers {
            if let Some(m) = w.meters.get(usize::from(slot)) {
                v[0] += m.packets[0].get();
                v[1] += m.bytes[0].get();
                v[2] += m.packets[1].get();
                v[3] += m.bytes[1].get();
            }
        }
        v
    }

    /// Each metered (label, router) pair's counts since the label was counted on the
    /// router, in (label, router) order.
    pub fn meter_counts(&self) -> Vec<MeterCount> {
        let rows = self
            .meters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut counts: Vec<MeterCount> = rows
            .into_iter()
            .map(|r| {
                let now = self.meter_sum(r.slot);
                let d = |i: usize| now[i].wrapping_sub(r.base[i]);
                MeterCount {
                    label: r.label,
                    router: r.router,
                    ingress_packets: d(0),
                    ingress_bytes: d(1),
                    egress_packets: d(2),
                    egress_bytes: d(3),
                }
            })
            .collect();
        counts.sort_by(|a, b| (&a.label, &a.router).cmp(&(&b.label, &b.router)));
        counts
    }

    /// Replaces the vhost-user ports' table (after a configuration change).
    pub fn set_vhost_user(&self, ports: Vec<(String, Arc<Mailbox>)>) {
        *self.vhost_user.lock().unwrap_or_else(|e| e.into_inner()) = ports;
    }

    /// Records the active generation (ignored if a generation function was given).
    pub fn set_generation(&self, generation: u64) {
        self.generation.store(generation, Ordering::Relaxed);
    }

    /// The active generation as exported.
    pub fn generation(&self) -> u64 {
        match &self.generation_fn {
            Some(f) => f(),
            None => self.generation.load(Ordering::Relaxed),
        }
    }

    /// Records one configuration apply that took `elapsed` and succeeded or not.
    pub fn record_apply(&self, ok: bool, elapsed: Duration) {
        self.apply_total.inc();
        if !ok {
            self.apply_failures_total.inc();
        }
        self.apply_seconds.observe(elapsed.as_secs_f64());
    }

    /// Applies recorded so far.
    pub fn apply_total(&self) -> u64 {
        self.apply_total.get()
    }

    /// Failed applies recorded so far.
    pub fn apply_failures_total(&self) -> u64 {
        self.apply_failures_total.get()
    }

    /// Reads every counter once into an owned snapshot.
    fn scrape(&self) -> Scrape {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ports = ports
            .into_iter()
            .map(|(id, name)| {
                let mut v = [0u64; PORT_VALUES];
                for (_, w) in &self.workers {
                    if let Some(p) = w.port(id) {
                        v[0] += p.rx_packets.get();
                        v[1] += p.rx_bytes.get();
                        v[2] += p.tx_packets.get();
                        v[3] += p.tx_bytes.get();
                        v[4] += p.tx_dropped.get();
                        v[5] += p.rx_dropped.get();
                        v[6] += p.policed_egress_packets.get();
                        v[7] += p.policed_egress_bytes.get();
                        v[8] += p.policed_ingress_packets.get();
                        v[9] += p.policed_ingress_bytes.get();
                        v[10] += p.dscp_marked.get();
                    }
                }
                (name, v)
            })
            .collect();
        let sum = |f: &dyn Fn(&WorkerCounters) -> u64| -> u64 {
            self.workers.iter().map(|(_, w)| f(w)).sum()
        };
        let vhost_user = self
            .vhost_user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(label, m)| {
                let s = m.status();
                (
                    label.clone(),
                    [u64::from(s.connected), s.disconnects, m.broken()],
                )
            })
            .collect();
        Scrape {
            ports,
            vhost_user,
            drops: DropReason::ALL
                .iter()
                .map(|&r| (r.name(), sum(&|w| w.dropped(r))))
                .collect(),
            stages: Stage::ALL
                .iter()
                .map(|&s| (s.name(), sum(&|w| w.stage_packets[s as usize].get())))
                .collect(),
            workers: self
                .workers
                .iter()
                .map(|(id, w)| WorkerScrape {
                    id: id.to_string(),
                    loops: w.loops.get(),
                    busy_loops: w.busy_loops.get(),
                    busy_ns: w.busy_ns.get(),
                    idle_ns: w.idle_ns.get(),
                    handoffs: w.handoffs.get(),
                    handoff_drops: w.handoff_drops.get(),
                    handoffs_received: w.handoffs_received.get(),
                    flow_handoffs: w.flow_handoffs.get(),
                    flow_handoff_drops: w.flow_handoff_drops.get(),
                    flow_handoffs_received: w.flow_handoffs_received.get(),
                })
                .collect(),
            generation: self.generation(),
            apply_total: self.apply_total.get(),
            apply_failures_total: self.apply_failures_total.get(),
            apply_seconds: self.apply_seconds.clone(),
            fdb_entries: sum(&|w| w.macs.get()),
            mac_learned: sum(&|w| w.macs_learned.get()),
            mac_moves: sum(&|w| w.mac_moves.get()),
            mac_table_full: sum(&|w| w.mac_table_full.get()),
            mac_port_limit: sum(&|w| w.mac_port_limit.get()),
            mac_move_refused: sum(&|w| w.mac_move_refused.get()),
            checksums_completed: sum(&|w| w.checksums_completed.get()),
            overlay: [
                sum(&|w| w.vxlan_encapsulated.get()),
                sum(&|w| w.vxlan_decapsulated.get()),
                sum(&|w| w.arp_responder_replies.get()),
                sum(&|w| w.geneve_encapsulated.get()),
                sum(&|w| w.geneve_decapsulated.get()),
                sum(&|w| w.gre_encapsulated.get()),
                sum(&|w| w.gre_decapsulated.get()),
            ],
            mac_aged: sum(&|w| w.macs_aged.get()),
            router: [
                sum(&|w| w.sessions.get()),
                sum(&|w| w.neighbors.get()),
                sum(&|w| w.icmp_errors.get()),
                sum(&|w| w.icmp_rate_limited.get()),
                sum(&|w| w.nat_icmp_errors.get()),
                sum(&|w| w.tcp_resets.get()),
                sum(&|w| w.fragments.get()),
                sum(&|w| w.route_cache_hits.get()),
                sum(&|w| w.originated.get()),
                sum(&|w| w.consumed.get()),
            ],
            slow_path: [
                sum(&|w| w.punted.get()),
                sum(&|w| w.injected.get()),
                sum(&|w| w.inject_dropped.get()),
            ],
            punted_by_service: SERVICES
                .iter()
                .map(|k| (k.name, sum(&|w| w.punted_by_service[k.id.index()].get())))
                .collect(),
            dispatch: self.slow_path_fn.as_ref().map(|f| f()),
            dhcp: self.dhcp_fn.as_ref().map(|f| f()),
            sg_rules: self.sg_rules_fn.as_ref().map(|f| f()).unwrap_or_default(),
            meters: self.meter_counts(),
            stage_metrics: crate::stage_counters::StageMetrics::scrape(
                self.workers.iter().map(|(_, w)| &**w),
            ),
        }
    }
}

#[derive(Debug)]
struct WorkerScrape {
    id: String,
    loops: u64,
    busy_loops: u64,
    busy_ns: u64,
    idle_ns: u64,
    handoffs: u64,
    handoff_drops: u64,
    handoffs_received: u64,
    flow_handoffs: u64,
    flow_handoff_drops: u64,
    flow_handoffs_received: u64,
}

/// Counters per port in a scrape: rx/tx packets, bytes and drops, then QoS's.
const PORT_VALUES: usize = 11;

/// One scrape's values, owned so the registry's collector can be `'static`.
#[derive(Debug)]
struct Scrape {
    ports: Vec<(String, [u64; PORT_VALUES])>,
    /// Per vhost-user port: connected (0/1), disconnects, queues given up.
    vhost_user: Vec<(String, [u64; 3])>,
    drops: Vec<(&'static str, u64)>,
    stages: Vec<(&'static str, u64)>,
    workers: Vec<WorkerScrape>,
    generation: u64,
    apply_total: u64,
    apply_failures_total: u64,
    apply_seconds: Histogram,
    fdb_entries: u64,
    mac_learned: u64,
    mac_moves: u64,
    mac_table_full: u64,
    mac_port_limit: u64,
    mac_move_refused: u64,
    checksums_completed: u64,
    /// VXLAN encapsulated and decapsulated, ARP responder replies, Geneve and GRE
    /// encapsulated and decapsulated.
    overlay: [u64; 7],
    mac_aged: u64,
    /// In [`ROUTER_FAMILIES`] order.
    router: [u64; 10],
    /// In [`SLOW_PATH_FAMILIES`] order.
    slow_path: [u64; 3],
    /// Per service of the data plane, the frames punted for it.
    punted_by_service: Vec<(&'static str, u64)>,
    dispatch: Option<DispatchStats>,
    dhcp: Option<ServiceStats>,
    sg_rules: Vec<(String, String, u64)>,
    meters: Vec<MeterCount>,
    stage_metrics: crate::stage_counters::StageMetrics,
}

/// The slow path's counter families: name and help.
const SLOW_PATH_FAMILIES: [(&str, &str); 3] = [
    (
        "pollux_frames_punted",
        "Frames the workers handed to the slow path (every service).",
    ),
    (
        "pollux_frames_injected",
        "Frames the slow path sent through the workers (DHCP replies).",
    ),
    (
        "pollux_inject_dropped",
        "Slow-path frames not sent: their port or network was gone, or no buffer was free.",
    ),
];

/// The routers' families: name, help, and whether it is a gauge (else a counter).
const ROUTER_FAMILIES: [(&str, &str, bool); 10] = [
    (
        "pollux_nat_sessions",
        "NAT sessions held now, over all workers.",
        true,
    ),
    (
        "pollux_neighbors",
        "Router neighbours (ARP entries) held now.",
        true,
    ),
    ("pollux_icmp_errors", "ICMP errors the routers sent.", false),
    (
        "pollux_icmp_rate_limited",
        "ICMP errors not sent because of the rate limit.",
        false,
    ),
    (
        "pollux_nat_icmp_errors",
        "ICMP errors about NATed flows translated as their flow (RFC 5508).",
        false,
    ),
    (
        "pollux_tcp_resets",
        "TCP resets the routers sent for segments to their own addresses.",
        false,
    ),
    (
        "pollux_fragments",
        "IPv4 fragments the routers made.",
        false,
    ),
    (
        "pollux_route_cache_hits",
        "Packets the routers forwarded from their forwarding cache (a run of one destination or NAT flow within a burst, after its first packet).",
        false,
    ),
    (
        "pollux_frames_originated",
        "Frames the workers made (ARP requests, ICMP errors, fragments).",
        false,
    ),
    (
        "pollux_frames_consumed",
        "Frames that ended in a worker: ARP replies to a router, datagrams sent as fragments.",
        false,
    ),
];

/// Writes one metric family of counters, one sample per label value.
fn counter_family<V: prometheus_client::encoding::EncodeCounterValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (impl AsRef<str>, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in samples {
        let labels = [(label, value.as_ref())];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one unlabelled counter.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> fmt::Result {
    let c = ConstCounter::new(n);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes one unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, n: u64) -> fmt::Result {
    let g = ConstGauge::new(n);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for Scrape {
    // Counter names are given without `_total`: the encoder appends it to each sample.
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        type PortField = (&'static str, &'static str, usize);
        const PORT_FIELDS: [PortField; PORT_VALUES] = [
            (
                "pollux_port_rx_packets",
                "Frames received from the port.",
                0,
            ),
            ("pollux_port_rx_bytes", "Bytes received from the port.", 1),
            (
                "pollux_port_tx_packets",
                "Frames the port accepted for transmission.",
                2,
            ),
            (
                "pollux_port_tx_bytes",
                "Bytes the port accepted for transmission.",
                3,
            ),
            (
                "pollux_port_tx_dropped",
                "Frames meant for the port that it did not take.",
                4,
            ),
            (
                "pollux_port_rx_dropped",
                "Frames received from the port that the pipeline dropped.",
                5,
            ),
            (
                "pollux_port_qos_policed_egress_packets",
                "Frames from the port (Neutron egress) its QoS bandwidth limit dropped.",
                6,
            ),
            (
                "pollux_port_qos_policed_egress_bytes",
                "Bytes of frames from the port its QoS bandwidth limit dropped.",
                7,
            ),
            (
                "pollux_port_qos_policed_ingress_packets",
                "Frames to the port (Neutron ingress) its QoS bandwidth limit dropped.",
                8,
            ),
            (
                "pollux_port_qos_policed_ingress_bytes",
                "Bytes of frames to the port its QoS bandwidth limit dropped.",
                9,
            ),
            (
                "pollux_port_qos_dscp_marked",
                "Packets from the port whose DSCP its QoS policy rewrote.",
                10,
            ),
        ];
        for (name, help, i) in PORT_FIELDS {
            counter_family(
                &mut e,
                name,
                help,
                "port",
                self.ports.iter().map(|(p, v)| (p.as_str(), v[i])),
            )?;
        }
        let mut connected = e.encode_descriptor(
            "pollux_vhost_user_connected",
            "1 while a front end is connected to the vhost-user port.",
            None,
            MetricType::Gauge,
        )?;
        for (port, v) in &self.vhost_user {
            let labels = [("port", port.as_str())];
            ConstGauge::new(v[0]).encode(connected.encode_family(&labels)?)?;
        }
        counter_family(
            &mut e,
            "pollux_vhost_user_disconnects",
            "Connections of the vhost-user port that ended.",
            "port",
            self.vhost_user.iter().map(|(p, v)| (p.as_str(), v[1])),
        )?;
        counter_family(
            &mut e,
            "pollux_vhost_user_broken_queues",
            "Queues of the vhost-user port given up for descriptors breaking the rules.",
            "port",
            self.vhost_user.iter().map(|(p, v)| (p.as_str(), v[2])),
        )?;
        counter_family(
            &mut e,
            "pollux_drops",
            "Frames dropped, by reason.",
            "reason",
            self.drops.iter().copied(),
        )?;
        counter_family(
            &mut e,
            "pollux_stage_packets",
            "Packets that entered each pipeline stage.",
            "stage",
            self.stages.iter().copied(),
        )?;
        self.stage_metrics.encode(&mut e)?;
        counter_family(
            &mut e,
            "pollux_worker_loops",
            "Passes over the worker's poll list.",
            "worker",
            self.workers.iter().map(|w| (w.id.as_str(), w.loops)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_handoffs",
            "Frames handed to the worker that polls their output port.",
            "worker",
            self.workers.iter().map(|w| (w.id.as_str(), w.handoffs)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_handoff_drops",
            "Frames not handed off: the ring to the owning worker was full.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.handoff_drops)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_handoffs_received",
            "Frames other workers handed to this one to send.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.handoffs_received)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_flow_handoffs",
            "Packets handed to the worker that owns their flow's state.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.flow_handoffs)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_flow_handoff_drops",
            "Packets not handed to their flow's owner: the ring to it was full.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.flow_handoff_drops)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_flow_handoffs_received",
            "Packets other workers handed to this one as their flow's owner.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.flow_handoffs_received)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_busy_loops",
            "Passes that received at least one frame.",
            "worker",
            self.workers.iter().map(|w| (w.id.as_str(), w.busy_loops)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_busy_seconds",
            "Time spent in passes that received frames.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.busy_ns as f64 / 1e9)),
        )?;
        counter_family(
            &mut e,
            "pollux_worker_idle_seconds",
            "Time spent in passes that received nothing.",
            "worker",
            self.workers
                .iter()
                .map(|w| (w.id.as_str(), w.idle_ns as f64 / 1e9)),
        )?;
        gauge(
            &mut e,
            "pollux_generation",
            "Generation of the active configuration.",
            self.generation,
        )?;
        counter(
            &mut e,
            "pollux_config_apply",
            "config.apply and config.rollback requests, dry runs excluded.",
            self.apply_total,
        )?;
        counter(
            &mut e,
            "pollux_config_apply_failures",
            "config.apply and config.rollback requests refused, for any reason.",
            self.apply_failures_total,
        )?;
        let h = &self.apply_seconds;
        h.encode(e.encode_descriptor(
            "pollux_config_apply_seconds",
            "Time taken to answer a config.apply or config.rollback request.",
            None,
            h.metric_type(),
        )?)?;
        gauge(
            &mut e,
            "pollux_fdb_entries",
            "Learned MAC addresses held now, over all workers.",
            self.fdb_entries,
        )?;
        counter(
            &mut e,
            "pollux_mac_learned",
            "MAC addresses learned.",
            self.mac_learned,
        )?;
        counter(
            &mut e,
            "pollux_mac_moves",
            "Learned MAC addresses that moved to another port.",
            self.mac_moves,
        )?;
        counter(
            &mut e,
            "pollux_mac_table_full",
            "Source MACs not learned because the table was full.",
            self.mac_table_full,
        )?;
        counter(
            &mut e,
            "pollux_mac_port_limit",
            "Source MACs not learned because their VM port held its quota of learned MACs.",
            self.mac_port_limit,
        )?;
        counter(
            &mut e,
            "pollux_mac_move_refused",
            "MACs of hosts behind an uplink that a VM port sent from and did not take over.",
            self.mac_move_refused,
        )?;
        counter(
            &mut e,
            "pollux_checksums_completed",
            "TCP/UDP checksums completed for kernel senders that left them partial (checksum offload).",
            self.checksums_completed,
        )?;
        for (name, help, v) in [
            (
                "pollux_vxlan_encapsulated",
                "Frames VXLAN-encapsulated towards a remote tunnel endpoint (head-end copies included).",
                self.overlay[0],
            ),
            (
                "pollux_vxlan_decapsulated",
                "VXLAN packets decapsulated into an overlay network.",
                self.overlay[1],
            ),
            (
                "pollux_arp_responder_replies",
                "ARP requests on overlay networks answered on the host (never sent over the underlay).",
                self.overlay[2],
            ),
            (
                "pollux_geneve_encapsulated",
                "Frames Geneve-encapsulated towards a remote tunnel endpoint (head-end copies included).",
                self.overlay[3],
            ),
            (
                "pollux_geneve_decapsulated",
                "Geneve packets decapsulated into an overlay network.",
                self.overlay[4],
            ),
            (
                "pollux_gre_encapsulated",
                "Frames GRE-encapsulated towards a remote tunnel endpoint (head-end copies included).",
                self.overlay[5],
            ),
            (
                "pollux_gre_decapsulated",
                "GRE packets decapsulated into an overlay network.",
                self.overlay[6],
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        counter(
            &mut e,
            "pollux_mac_aged",
            "Learned MAC addresses removed by aging.",
            self.mac_aged,
        )?;
        if !self.sg_rules.is_empty() {
            let mut family = e.encode_descriptor(
                "pollux_sg_rule_hits",
                "Connections (stateless groups: packets) each security-group rule admitted, \
                 since the configuration that has it was applied.",
                None,
                MetricType::Counter,
            )?;
            for (group, rule, n) in &self.sg_rules {
                let labels = [("group", group.as_str()), ("rule", rule.as_str())];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        if !self.meters.is_empty() {
            for (name, help, packets) in [
                (
                    "pollux_metering_label_packets",
                    "Packets each metering label counted at a router's external gateway, by \
                     direction, since the label was counted on the router.",
                    true,
                ),
                (
                    "pollux_metering_label_bytes",
                    "Bytes (IPv4 total lengths) each metering label counted at a router's \
                     external gateway, by direction.",
                    false,
                ),
            ] {
                let mut family = e.encode_descriptor(name, help, None, MetricType::Counter)?;
                for m in &self.meters {
                    for (direction, p, b) in [
                        ("ingress", m.ingress_packets, m.ingress_bytes),
                        ("egress", m.egress_packets, m.egress_bytes),
                    ] {
                        let labels = [
                            ("label", m.label.as_str()),
                            ("router", m.router.as_str()),
                            ("direction", direction),
                        ];
                        let n = if packets { p } else { b };
                        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        for ((name, help, is_gauge), n) in ROUTER_FAMILIES.into_iter().zip(self.router) {
            if is_gauge {
                gauge(&mut e, name, help, n)?;
            } else {
                counter(&mut e, name, help, n)?;
            }
        }
        counter_family(
            &mut e,
            "pollux_slowpath_punted",
            "Frames the workers punted, by the service they were punted for.",
            "service",
            self.punted_by_service.iter().copied(),
        )?;
        for ((name, help), n) in SLOW_PATH_FAMILIES.into_iter().zip(self.slow_path) {
            counter(&mut e, name, help, n)?;
        }
        if let Some(d) = &self.dhcp {
            encode_dhcp(&mut e, d)?;
        }
        if let Some(d) = &self.dispatch {
            encode_dispatch(&mut e, d)?;
        }
        Ok(())
    }
}

/// Reads one counter of a service's [`pollux_services::dispatch::ServiceCounts`].
type ServiceCount = fn(&pollux_services::dispatch::ServiceCounts) -> u64;

fn encode_dispatch(e: &mut DescriptorEncoder, d: &DispatchStats) -> fmt::Result {
    let families: [(&str, &str, ServiceCount); 3] = [
        (
            "pollux_slowpath_received",
            "Punted frames the slow-path thread handed to each service.",
            |c| c.received,
        ),
        (
            "pollux_slowpath_replies",
            "Replies of each service put on the inject rings.",
            |c| c.replies,
        ),
        (
            "pollux_slowpath_replies_lost",
            "Replies of each service the inject rings had no room for.",
            |c| c.replies_lost,
        ),
    ];
    for (name, help, value) in families {
        counter_family(
            e,
            name,
            help,
            "service",
            d.services.iter().map(|(service, c)| (*service, value(c))),
        )?;
    }
    counter(
        e,
        "pollux_slowpath_unhandled",
        "Punted frames no service was registered for (or too short for a ring header).",
        d.unhandled,
    )
}

fn encode_dhcp(e: &mut DescriptorEncoder, d: &ServiceStats) -> fmt::Result {
    counter(
        e,
        "pollux_dhcp_received",
        "DHCP messages the server took from the punt rings.",
        d.received,
    )?;
    counter(
        e,
        "pollux_dhcp_replies",
        "DHCP replies the server sent.",
        d.replies,
    )?;
    let s = &d.server;
    counter_family(
        e,
        "pollux_dhcp_outcomes",
        "DHCP exchanges by what the server did.",
        "outcome",
        [
            ("offer", s.offers),
            ("ack", s.acks),
            ("nak", s.naks),
            ("inform", s.informs),
            ("release", s.releases),
            ("decline", s.declines),
            ("other_server", s.other_server),
        ],
    )?;
    // Every reason is exported, zero or not, so that rates work from the first scrape.
    let drops: Vec<(&str, u64)> = pollux_services::dhcp::Discard::ALL
        .iter()
        .map(|r| r.as_str())
        .chain(FrameDrop::ALL.iter().map(|r| r.as_str()))
        .map(|r| (r, d.drops.get(r).copied().unwrap_or(0)))
        .collect();
    counter_family(
        e,
        "pollux_dhcp_drops",
        "DHCP messages the server did not answer, by reason.",
        "reason",
        drops,
    )?;
    gauge(
        e,
        "pollux_dhcp_leases",
        "DHCP leases held now (offered or bound).",
        d.leases,
    )?;
    counter(
        e,
        "pollux_dhcp_lease_save_errors",
        "Lease files that could not be written.",
        d.save_errors,
    )
}

/// Renders the OpenMetrics text exposition of `source` (ends with `# EOF`).
pub fn render_openmetrics(source: &MetricsSource) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(source.scrape()));
    let mut out = String::with_capacity(8192);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Renders the Prometheus text format 0.0.4 exposition of `source`.
pub fn render(source: &MetricsSource) -> String {
    openmetrics_to_prometheus(&render_openmetrics(source))
}

/// Maps prometheus-client's OpenMetrics text to the Prometheus text format 0.0.4.
///
/// The two differ here only in that OpenMetrics names a counter family without its
/// `_total` suffix in `# HELP`/`# TYPE` (the samples carry it), has `# UNIT` lines and
/// ends with `# EOF`. Samples, label escaping and histograms are the same.
fn openmetrics_to_prometheus(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len() + 16 * counters.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(p);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Longest request head the server reads.
const MAX_REQUEST: usize = 8192;
/// How long one connection may take in all, from accept to the last byte of the response:
/// bytes trickled in or taken out slowly do not extend it.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed at once (a scraper retries).
pub const MAX_CONCURRENT_SCRAPES: usize = 8;

/// A tiny HTTP/1.1 server answering `GET /metrics`.
///
/// Each connection is served on a thread of its own (at most
/// [`MAX_CONCURRENT_SCRAPES`]), so a slow client delays no one else, and is closed after
/// one response or when its 2 s deadline passes; a request head is at most 8 KiB.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and starts serving `source`.
    pub fn bind(addr: SocketAddr, source: Arc<MetricsSource>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("pollux-metrics".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || serve(listener, source, &stop)
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port if bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = thread.join();
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn serve(listener: TcpListener, source: Arc<MetricsSource>, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                if active.load(Ordering::SeqCst) >= MAX_CONCURRENT_SCRAPES {
                    continue; // dropped: closed at once
                }
                active.fetch_add(1, Ordering::SeqCst);
                let guard = ActiveGuard(Arc::clone(&active));
                let source = Arc::clone(&source);
                let spawned = std::thread::Builder::new()
                    .name("pollux-scrape".into())
                    .spawn(move || {
                        let _guard = guard;
                        let deadline = Instant::now() + CONNECTION_DEADLINE;
                        let _ = handle(stream, &source, deadline);
                    });
                // A thread that cannot be created drops its guard and connection here.
                drop(spawned);
            }
            // Transient accept failures (EMFILE, ECONNABORTED): back off briefly.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Counts a connection being served for as long as it lives.
struct ActiveGuard(Arc<AtomicUsize>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The time left before `deadline`, as a socket timeout; an error once it has passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Reads the request head: `Ok(None)` if it is larger than [`MAX_REQUEST`].
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(None);
        }
        stream.set_read_timeout(Some(time_left(deadline)?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn handle(mut stream: TcpStream, source: &MetricsSource, deadline: Instant) -> io::Result<()> {
    let mut stream = Deadlined {
        stream: &mut stream,
        deadline,
    };
    let head = match read_head(stream.stream, deadline)? {
        Some(head) => head,
        None => {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
                false,
            )
        }
    };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let result = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let (body, content_type) = if accepts_openmetrics(&head) {
                (render_openmetrics(source), OPENMETRICS_CONTENT_TYPE)
            } else {
                (render(source), CONTENT_TYPE)
            };
            respond(
                &mut stream,
                "200 OK",
                content_type,
                body.as_bytes(),
                method == "HEAD",
            )
        }
        (_, "/metrics") => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"method not allowed\n",
            false,
        ),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found\n",
            false,
        ),
    };
    let _ = stream.stream.shutdown(Shutdown::Write);
    result
}

/// A stream whose writes give up at `deadline`, however slowly the client reads.
struct Deadlined<'a> {
    stream: &'a mut TcpStream,
    deadline: Instant,
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream
            .set_write_timeout(Some(time_left(self.deadline)?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Whether the request's `Accept` header names OpenMetrics text.
fn accepts_openmetrics(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept")
                && v.to_ascii_lowercase()
                    .contains("application/openmetrics-text")
        })
    })
}

fn respond(
    stream: &mut impl Write,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_keeps_its_counts_and_a_slot_given_again_starts_from_zero() {
        let worker = Arc::new(WorkerCounters::new(1));
        let source = MetricsSource::new(vec![(0, Arc::clone(&worker))], Vec::new());
        source.install_meters(source.meter_table([("m", "r1", 7)], true));
        worker.meters[7].packets[1].add(2);
        worker.meters[7].bytes[1].add(300);
        let row = |c: &MeterCount| (c.egress_packets, c.egress_bytes);
        assert_eq!(
            source.meter_counts().iter().map(row).collect::<Vec<_>>(),
            [(2, 300)]
        );
        // An apply that keeps the pair on its slot keeps the counts.
        source.install_meters(source.meter_table([("m", "r1", 7)], false));
        assert_eq!(
            source.meter_counts().iter().map(row).collect::<Vec<_>>(),
            [(2, 300)]
        );
        // The label removed, its slot given to another pair: that pair starts from zero.
        source.install_meters(source.meter_table([], false));
        assert!(source.meter_counts().is_empty());
        source.install_meters(source.meter_table([("other", "r2", 7)], false));
        assert_eq!(
            source.meter_counts().iter().map(row).collect::<Vec<_>>(),
            [(0, 0)]
        );
        worker.meters[7].packets[1].add(1);
        worker.meters[7].bytes[1].add(60);
        assert_eq!(
            source.meter_counts().iter().map(row).collect::<Vec<_>>(),
            [(1, 60)]
        );
        let text = render(&source);
        assert!(
            text.contains(
                "pollux_metering_label_bytes_total{label=\"other\",router=\"r2\",direction=\"egress\"} 60"
            ),
            "{text}"
        );
    }
}
