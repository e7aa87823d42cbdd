//! The socket methods: parameters in, engine calls, JSON out.
//!
//! The JSON shapes are the external contract documented in the README ("Control
//! socket"); `polluxctl` and control-plane software rely on them. Parameters are objects
//! with known fields only (a typo is an error, not a silently ignored option).

mod capture;
pub mod explain;
mod stages;
pub mod trace;
mod workers;

use std::collections::HashMap;
use std::time::Instant;

use pollux_dataplane::counters::{PortCounters, WorkerCounters};
use pollux_dataplane::port::PortId;
use pollux_dataplane::slowpath::{ServiceId, SERVICES};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::compile::PortKind;
use crate::engine::{
    kind_name, port_label, state_from_json, ApplyError, ApplyOptions, ApplyOutcome, Engine,
    SessionFlow,
};
use crate::model::{Binding, NetworkType};
use crate::routes::routes;
use crate::rpc::{Handler, MethodInfo, RpcError};
use crate::validate::Segment;

mod objects;
use objects::object_method;

/// `config.apply`/`config.rollback`: the state does not parse or validate.
pub const INVALID_CONFIG: i64 = -32001;
/// `expect_generation` is not the active generation.
pub const GENERATION_MISMATCH: i64 = -32002;
/// Ports that could not be opened.
pub const BIND_FAILED: i64 = -32003;
/// The new generation could not be persisted.
pub const STORE_FAILED: i64 = -32004;
/// A generation that is not retained.
pub const UNKNOWN_GENERATION: i64 = -32005;
/// Valid, but not something the data plane runs yet.
pub const NOT_SUPPORTED: i64 = -32006;
/// Anything else that went wrong inside the daemon.
pub const DAEMON_ERROR: i64 = -32010;
/// `<collection>.delete`/`config.patch`: a delete of an object the state does not hold.
pub const UNKNOWN_OBJECT: i64 = -32007;

/// The methods and their usage strings, as `rpc.list` reports them.
const METHODS: &[(&str, &str)] = &[
    (
        "config.apply",
        "{state, dry_run?: bool, expect_generation?: u64} -> {generation, applied, changed, \
         dry_run, diff}: make `state` (the desired state as JSON) the running configuration",
    ),
    (
        "config.get",
        "{generation?: u64} -> {generation, state_generation, state}: the desired state of \
         the active generation, or of a retained one (-32005 if not retained)",
    ),
    (
        "config.history",
        "{} -> {generation, history: [{generation, applied_at_unix, active}]}: retained \
         generations, newest first",
    ),
    (
        "config.rollback",
        "{generation: u64, dry_run?: bool, expect_generation?: u64} -> as config.apply plus \
         rolled_back_to: apply a retained generation's state as a new generation",
    ),
    (
        "stats.get",
        "{} -> {generation, uptime_secs, workers: [...], drops: {reason: n}, apply: {total, \
         failures}}: worker counters",
    ),
    (
        "ports.list",
        "{} -> {generation, ports: [{id, kind, port_no, driver, state, rx_packets, ...}]}",
    ),
    (
        "networks.list",
        "{} -> {generation, networks: [{id, network_type, segmentation_id, mtu, ports, \
         subnets}]}",
    ),
    (
        "fdb.list",
        "{network_id?: string} -> {generation, entries: [{network_id, mac_address, port, kind, \
         age_secs}]}: static and learned MACs",
    ),
    (
        "routes.list",
        "{router_id?: string} -> {generation, routes: [{router_id, destination, nexthop, kind, \
         interface}]}",
    ),
    (
        "neighbors.list",
        "{network_id?: string} -> {generation, neighbors: [{network_id, ip_address, \
         mac_address (null until resolved), state: incomplete|reachable|stale, age_secs}]}: \
         the routers' ARP entries",
    ),
    (
        "sessions.list",
        "{router_id?: string} -> {generation, sessions: [{zone, router_id, port, protocol, \
         original: {src, sport, dst, dport}, reply: {src, sport, dst, dport}, state, \
         idle_secs, expires_in_secs, packets_out, packets_in, bytes_out, bytes_in}]}: NAT \
         sessions (zone router:ID) and security-group connections (zone port:ID); for ICMP \
         the ports are the echo identifier",
    ),
    (
        "leases.list",
        "{network_id?: string} -> {generation, leases: [{network_id, port_id (null for a MAC \
         that is no port's), mac_address, ip_address, hostname?, state: offered|bound, \
         expires_in_secs}]}: the DHCP server's leases",
    ),
    (
        "metering.list",
        "{label_id?: string, router_id?: string} -> {generation, metering: [{label_id, name, \
         router_id, packets, bytes, ingress_packets, ingress_bytes, egress_packets, \
         egress_bytes}]}: what each metering label counted at each router's external gateway \
         (bytes: IPv4 total lengths; packets and bytes: both directions, Neutron's label \
         chain) since the label was counted on the router",
    ),
    ("version.get", "{} -> {generation, name, version}"),
    ("drops.list", stages::DROPS_LIST_USAGE),
    ("runtime.get", stages::RUNTIME_GET_USAGE),
    ("trace.start", trace::TRACE_START_USAGE),
    ("trace.show", trace::TRACE_SHOW_USAGE),
    ("trace.stop", trace::TRACE_STOP_USAGE),
    ("capture.start", capture::CAPTURE_START_USAGE),
    ("explain.run", explain::EXPLAIN_RUN_USAGE),
    ("workers.list", workers::WORKERS_LIST_USAGE),
    ("workers.rebalance", workers::WORKERS_REBALANCE_USAGE),
    ("workers.pin", workers::WORKERS_PIN_USAGE),
];

/// The method handler of `polluxd`: the engine behind the socket.
#[derive(Debug)]
pub struct Service {
    /// The engine the methods act on.
    pub engine: Engine,
}

impl Service {
    /// Serves `engine`.
    pub fn new(engine: Engine) -> Self {
        Service { engine }
    }
}

impl Handler for Service {
    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let e = &mut self.engine;
        match method {
            "config.apply" | "config.rollback" => {
                // Every request to change the configuration counts, whatever refuses it
                // (params, validation, generation check, binding, store), so that
                // `failures / total` is what a control plane sees; dry runs change nothing
                // and are not counted.
                let dry_run = params
                    .as_ref()
                    .and_then(|p| p.get("dry_run"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let started = Instant::now();
                let result = if method == "config.apply" {
                    config_apply(e, params)
                } else {
                    config_rollback(e, params)
                };
                if !dry_run {
                    e.metrics().record_apply(result.is_ok(), started.elapsed());
                }
                result
            }
            "config.get" => config_get(e, params),
            "config.history" => config_history(e, params),
            "stats.get" => stats_get(e, params),
            "ports.list" => ports_list(e, params),
            "networks.list" => networks_list(e, params),
            "fdb.list" => fdb_list(e, params),
            "routes.list" => routes_list(e, params),
            "neighbors.list" => neighbors_list(e, params),
            "sessions.list" => sessions_list(e, params),
            "metering.list" => metering_list(e, params),
            "leases.list" => leases_list(e, params),
            "drops.list" => stages::drops_list(e, params),
            "runtime.get" => stages::runtime_get(e, params),
            "trace.start" => trace::trace_start(e, params),
            "trace.show" => trace::trace_show(e, params),
            "trace.stop" => trace::trace_stop(e, params),
            // Served by `open_stream`; only a notification (no id to stream to) gets here.
            "capture.start" => Err(RpcError::invalid_request(
                "capture.start streams its frames: send it with an id",
            )),
            "explain.run" => explain::explain_run(e, params),
            "workers.list" => workers::workers_list(e, params),
            "workers.rebalance" => workers::workers_rebalance(e, params),
            "workers.pin" => workers::workers_pin(e, params),
            m if m == "config.patch" || object_method(m).is_some() => {
                let dry_run = params
                    .as_ref()
                    .and_then(|p| p.get("dry_run"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let started = Instant::now();
                let result = objects::call(e, m, params);
                if !dry_run {
                    e.metrics().record_apply(result.is_ok(), started.elapsed());
                }
                result
            }
            "version.get" => {
                parse::<NoParams>(params)?;
                Ok(json!({ "name": "polluxd", "version": env!("CARGO_PKG_VERSION") }))
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }

    fn methods(&self) -> Vec<MethodInfo> {
        METHODS
            .iter()
            .map(|(name, usage)| MethodInfo::new(*name, *usage))
            .chain(objects::methods())
            .collect()
    }

    fn generation(&self) -> u64 {
        self.engine.generation()
    }

    fn streaming_methods(&self) -> &'static [&'static str] {
        &["capture.start"]
    }

    fn open_stream(
        &mut self,
        method: &str,
        params: Option<Value>,
    ) -> Result<Box<dyn crate::rpc::RpcStream>, RpcError> {
        match method {
            "capture.start" => capture::open(&mut self.engine, params),
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

/// Parses `params` (absent: `{}`) into `T`, refusing arrays and unknown fields.
pub(crate) fn parse<T: DeserializeOwned>(params: Option<Value>) -> Result<T, RpcError> {
    let value = match params {
        None => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(RpcError::invalid_params("params must be an object")),
    };
    serde_json::from_value(value).map_err(|e| RpcError::invalid_params(e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoParams {}

/// The JSON-RPC form of an engine error.
pub fn rpc_error(e: ApplyError) -> RpcError {
    let message = e.to_string();
    match e {
        ApplyError::Invalid(errors) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|e| json!({ "path": e.path, "message": e.message }))
                .collect();
            RpcError::application(INVALID_CONFIG, message, json!({ "errors": errors }))
        }
        ApplyError::GenerationMismatch { expected, current } => RpcError::application(
            GENERATION_MISMATCH,
            message,
            json!({ "expected": expected, "current": current }),
        ),
        ApplyError::Unsupported { path, what } => RpcError::application(
            NOT_SUPPORTED,
            message,
            json!({ "path": path, "details": what }),
        ),
        ApplyError::Bind(errors) => {
            let errors: Vec<Value> = errors
                .iter()
                .map(|(port, why)| json!({ "port": port, "message": why }))
                .collect();
            RpcError::application(BIND_FAILED, message, json!({ "errors": errors }))
        }
        ApplyError::Store(e) => {
            RpcError::application(STORE_FAILED, message, json!({ "details": e.to_string() }))
        }
        ApplyError::UnknownGeneration {
            generation,
            retained,
        } => RpcError::application(
            UNKNOWN_GENERATION,
            message,
            json!({ "requested": generation, "retained": retained }),
        ),
        ApplyError::UnknownObject {
            collection,
            id,
            change,
        } => RpcError::application(
            UNKNOWN_OBJECT,
            message,
            json!({ "collection": collection, "id": id, "change": change }),
        ),
        ApplyError::Internal(why) => {
            RpcError::application(DAEMON_ERROR, message, json!({ "details": why }))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyParams {
    state: Value,
    #[serde(default)]
    dry_run: bool,
    expect_generation: Option<u64>,
}

fn outcome_json(o: &ApplyOutcome, dry_run: bool) -> Value {
    json!({
        "generation": o.generation,
        "applied": o.applied,
        "changed": o.changed,
        "dry_run": dry_run,
        "diff": o.diff,
    })
}

fn config_apply(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: ApplyParams = parse(params)?;
    let state = state_from_json(&p.state).map_err(rpc_error)?;
    let options = ApplyOptions {
        dry_run: p.dry_run,
        expect_generation: p.expect_generation,
    };
    let outcome = e.apply(state, options).map_err(rpc_error)?;
    Ok(outcome_json(&outcome, p.dry_run))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    generation: Option<u64>,
}

fn config_get(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: GetParams = parse(params)?;
    let generation = p.generation.unwrap_or(e.generation());
    let state = e.state_of(generation).map_err(rpc_error)?;
    // `generation` here is the one asked for; the server adds the active one at the top
    // level of the reply.
    Ok(json!({ "state": state, "state_generation": generation }))
}

fn config_history(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let active = e.generation();
    let history: Vec<Value> = e
        .history()
        .into_iter()
        .map(|(g, at)| json!({ "generation": g, "applied_at_unix": at, "active": g == active }))
        .collect();
    Ok(json!({ "history": history }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackParams {
    generation: u64,
    #[serde(default)]
    dry_run: bool,
    expect_generation: Option<u64>,
}

fn config_rollback(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: RollbackParams = parse(params)?;
    let options = ApplyOptions {
        dry_run: p.dry_run,
        expect_generation: p.expect_generation,
    };
    let outcome = e.rollback(p.generation, options).map_err(rpc_error)?;
    let mut v = outcome_json(&outcome, p.dry_run);
    v["rolled_back_to"] = json!(p.generation);
    Ok(v)
}

fn stats_get(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let c = e.counters();
    let workers = workers::worker_rows(e);
    let drops: Map<String, Value> = c
        .drop_summary()
        .into_iter()
        .map(|(reason, n)| (reason.name().to_string(), json!(n)))
        .collect();
    // Per VM port with a QoS policy, what it policed and marked.
    let mut qos = Vec::new();
    for (port_id, policy_id) in qos_policy_ids(e) {
        let Some(pc) = e
            .plans()
            .iter()
            .find(|p| p.key.strip_prefix("port:") == Some(port_id.as_str()))
            .and_then(|p| c.port(PortId(p.id.0)))
        else {
            continue;
        };
        let mut entry = Map::new();
        entry.insert("port_id".into(), json!(port_id));
        entry.insert("qos_policy_id".into(), json!(policy_id));
        insert_qos_counters(&mut entry, pc);
        qos.push(Value::Object(entry));
    }
    qos.sort_by(|a, b| a["port_id"].as_str().cmp(&b["port_id"].as_str()));
    let m = e.metrics();
    let d = e.dhcp_stats();
    let dhcp = json!({
        "punted": c.punted_by_service[ServiceId::DHCP.index()].get(),
        "injected": c.injected.get(),
        "inject_dropped": c.inject_dropped.get(),
        "received": d.received,
        "replies": d.replies,
        "offers": d.server.offers,
        "acks": d.server.acks,
        "naks": d.server.naks,
        "informs": d.server.informs,
        "releases": d.server.releases,
        "declines": d.server.declines,
        "drops": d.drops,
        "save_errors": d.save_errors,
    });
    // Per service: what the workers punted for it and what the slow-path thread did.
    let dispatched = e.slow_path_stats();
    let slow_path: Map<String, Value> = SERVICES
        .iter()
        .map(|kind| {
            let handled = dispatched
                .services
                .iter()
                .find(|(name, _)| *name == kind.name)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            let entry = json!({
                "punted": c.punted_by_service[kind.id.index()].get(),
                "received": handled.received,
                "replies": handled.replies,
                "replies_lost": handled.replies_lost,
            });
            (kind.name.to_string(), entry)
        })
        .collect();
    Ok(json!({
        "uptime_secs": e.uptime().as_secs(),
        "workers": workers,
        "drops": drops,
        "dhcp": dhcp,
        "metadata": e.metadata_stats().counts,
        "slow_path": { "services": slow_path, "unhandled": dispatched.unhandled },
        "qos": qos,
        "apply": { "total": m.apply_total(), "failures": m.apply_failures_total() },
    }))
}

fn driver_name(b: &Binding) -> (&'static str, Option<&str>) {
    match b {
        Binding::Afxdp { interface, .. } => ("afxdp", Some(interface)),
        Binding::VhostUser { socket, .. } => ("vhost-user", Some(socket)),
        Binding::Mem {} => ("mem", None),
        Binding::Tap { interface } => ("tap", Some(interface)),
    }
}

/// The QoS policy in force for each VM port that has one (its own, else its network's),
/// by port id.
/// The security groups of the port data-plane id `p` names in `names` (empty for an uplink
/// or an unknown id): what trace and explain say beside a security-group verdict.
pub(super) fn port_security_groups(
    e: &Engine,
    names: &std::collections::BTreeMap<PortId, String>,
    p: PortId,
) -> Vec<String> {
    let Some(n) = names.get(&p) else {
        return Vec::new();
    };
    e.state()
        .ports
        .iter()
        .find(|q| &q.id == n)
        .map(|q| q.security_groups.clone())
        .unwrap_or_default()
}

fn qos_policy_ids(e: &Engine) -> HashMap<String, String> {
    let valid = e.validated();
    valid
        .ports
        .iter()
        .filter_map(|p| {
            let q = valid.qos_policies.get(p.qos_policy?)?;
            Some((p.id.clone(), q.id.clone()))
        })
        .collect()
}

/// A port's QoS counters: what its bandwidth limits dropped, and what it marked.
fn insert_qos_counters(entry: &mut Map<String, Value>, pc: &PortCounters) {
    for (name, c) in [
        ("policed_egress_packets", &pc.policed_egress_packets),
        ("policed_egress_bytes", &pc.policed_egress_bytes),
        ("policed_ingress_packets", &pc.policed_ingress_packets),
        ("policed_ingress_bytes", &pc.policed_ingress_bytes),
        ("dscp_marked", &pc.dscp_marked),
    ] {
        entry.insert(name.into(), json!(c.get()));
    }
}

fn ports_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let state = e.state();
    let vms: HashMap<&str, &crate::model::Port> =
        state.ports.iter().map(|p| (p.id.as_str(), p)).collect();
    let uplinks: HashMap<&str, &crate::model::Uplink> =
        state.uplinks.iter().map(|u| (u.name.as_str(), u)).collect();
    let qos = qos_policy_ids(e);
    let counters = e.counters();
    let mut ports = Vec::with_capacity(e.plans().len());
    for plan in e.plans() {
        let mut entry = Map::new();
        let binding = match plan.kind {
            PortKind::Vm => {
                let Some(p) = plan.key.strip_prefix("port:").and_then(|id| vms.get(id)) else {
                    continue;
                };
                entry.insert("id".into(), json!(p.id));
                entry.insert("network_id".into(), json!(p.network_id));
                entry.insert("mac_address".into(), json!(p.mac_address));
                entry.insert("qos_policy_id".into(), json!(qos.get(p.id.as_str())));
                // Only ports of this host have plans, and they have a binding.
                let Some(b) = &p.binding else {
                    continue;
                };
                b
            }
            PortKind::Uplink => {
                let Some(u) = plan
                    .key
                    .strip_prefix("uplink:")
                    .and_then(|n| uplinks.get(n))
                else {
                    continue;
                };
                entry.insert("id".into(), json!(u.name));
                entry.insert("physnet".into(), json!(u.physnet));
                &u.binding
            }
        };
        entry.insert("kind".into(), json!(kind_name(plan.kind)));
        entry.insert("port_no".into(), json!(plan.id.0));
        let (driver, interface) = driver_name(binding);
        entry.insert("driver".into(), json!(driver));
        entry.insert("interface".into(), json!(interface));
        entry.insert("xdp_mode".into(), json!(e.xdp_mode(plan.id)));
        entry.insert(
            "interface_mtu".into(),
            json!(crate::binding::Bindings::interface_mtu(plan)),
        );
        if let Some((s, broken)) = e.vhost_user_status(plan.id) {
            let mode = match binding {
                Binding::VhostUser { mode, .. } => mode.map_or("server", crate::binding::mode_name),
                _ => "server",
            };
            entry.insert(
                "vhost_user".into(),
                json!({
                    "mode": mode,
                    "connected": s.connected,
                    "running": s.running,
                    "features": format!("{:#x}", s.features),
                    "feature_names": pollux_drivers::vhost_user::backend::feature_names(s.features),
                    "protocol_features": format!("{:#x}", s.protocol_features),
                    "queues": s.queue_sizes,
                    "queues_running": s.queues_running,
                    "disconnects": s.disconnects,
                    "broken_queues": broken,
                    "last_error": s.last_error,
                }),
            );
        }
        match e.port_status(plan.id) {
            crate::engine::PortStatus::Up => {
                entry.insert("state".into(), json!("up"));
            }
            crate::engine::PortStatus::Down(why) => {
                entry.insert("state".into(), json!("down"));
                entry.insert("reason".into(), json!(why));
            }
        }
        if let Some(pc) = counters.port(PortId(plan.id.0)) {
            insert_port_counters(&mut entry, pc);
        }
        ports.push(Value::Object(entry));
    }
    ports.extend(subport_entries(e, &vms, &qos, &counters));
    Ok(json!({ "ports": ports }))
}

/// A `ports.list` entry's counters: traffic, drops and the QoS policers'.
fn insert_port_counters(entry: &mut Map<String, Value>, pc: &PortCounters) {
    entry.insert("rx_packets".into(), json!(pc.rx_packets.get()));
    entry.insert("rx_bytes".into(), json!(pc.rx_bytes.get()));
    entry.insert("rx_dropped".into(), json!(pc.rx_dropped.get()));
    entry.insert("tx_packets".into(), json!(pc.tx_packets.get()));
    entry.insert("tx_bytes".into(), json!(pc.tx_bytes.get()));
    entry.insert("tx_dropped".into(), json!(pc.tx_dropped.get()));
    insert_qos_counters(entry, pc);
}

/// The `ports.list` entries of the trunks' subports: ports without a plan (their frames
/// travel on the parent's interface), so each names its parent and VLAN ID instead of a
/// driver of its own.
fn subport_entries(
    e: &Engine,
    vms: &HashMap<&str, &crate::model::Port>,
    qos: &HashMap<String, String>,
    counters: &WorkerCounters,
) -> Vec<Value> {
    let valid = e.validated();
    let ids = e.identities();
    let mut entries = Vec::new();
    for t in valid.trunks.iter() {
        let parent = &valid.ports[t.parent];
        for s in &t.sub_ports {
            let p = &valid.ports[s.port];
            // A port the compiler gave no id is in no snapshot yet.
            let (Some(id), Some(model)) = (ids.vm_port(&p.id), vms.get(p.id.as_str())) else {
                continue;
            };
            let mut entry = Map::new();
            entry.insert("id".into(), json!(p.id));
            entry.insert("kind".into(), json!("subport"));
            entry.insert("port_no".into(), json!(id.0));
            entry.insert("network_id".into(), json!(model.network_id));
            entry.insert("mac_address".into(), json!(model.mac_address));
            entry.insert("qos_policy_id".into(), json!(qos.get(p.id.as_str())));
            entry.insert("trunk_id".into(), json!(t.id));
            entry.insert("parent".into(), json!(parent.id));
            entry.insert("vlan_id".into(), json!(s.vid));
            if let Some(pc) = counters.port(id) {
                insert_port_counters(&mut entry, pc);
            }
            entries.push(Value::Object(entry));
        }
    }
    entries
}

fn networks_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    parse::<NoParams>(params)?;
    let valid = e.validated();
    let state = e.state();
    let mut port_counts = vec![0usize; valid.networks.len()];
    for p in &valid.ports {
        port_counts[p.network] += 1;
    }
    let mut subnets: Vec<Vec<String>> = vec![Vec::new(); valid.networks.len()];
    for s in valid.subnets.iter() {
        let cidr = match s.ipv6 {
            Some(v6) => format!("{}/{}", v6.addr, v6.prefix),
            None => s.cidr.to_string(),
        };
        subnets[s.network].push(cidr);
    }
    let networks: Vec<Value> = valid
        .networks
        .iter()
        .zip(&state.networks)
        .enumerate()
        .map(|(i, (n, m))| {
            let segmentation_id = match n.segment {
                Segment::Vlan { vid, .. } => Some(u32::from(vid)),
                Segment::Vxlan { vni, .. } | Segment::Geneve { vni, .. } => Some(vni),
                Segment::Gre { key, .. } => Some(key),
                Segment::Local | Segment::Flat { .. } => None,
            };
            let network_type = match m.network_type {
                NetworkType::Local => "local",
                NetworkType::Flat => "flat",
                NetworkType::Vlan => "vlan",
                NetworkType::Vxlan => "vxlan",
                NetworkType::Geneve => "geneve",
                NetworkType::Gre => "gre",
            };
            json!({
                "id": n.id,
                "name": n.name,
                "network_type": network_type,
                "physical_network": m.physical_network,
                "segmentation_id": segmentation_id,
                "mtu": n.mtu,
                "admin_state_up": n.admin_state_up,
                "ports": port_counts[i],
                "subnets": subnets[i],
            })
        })
        .collect();
    Ok(json!({ "networks": networks }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFilter {
    network_id: Option<String>,
}

fn fdb_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NetworkFilter = parse(params)?;
    let entries: Vec<Value> = e
        .fdb()
        .map_err(rpc_error)?
        .into_iter()
        .filter(|f| p.network_id.as_ref().is_none_or(|n| *n == f.network_id))
        .map(|f| {
            json!({
                "network_id": f.network_id,
                "mac_address": f.mac,
                "port": port_label(&f.port),
                "kind": if f.learned { "learned" } else { "static" },
                "age_secs": f.age_secs,
            })
        })
        .collect();
    Ok(json!({ "entries": entries }))
}

fn neighbors_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NetworkFilter = parse(params)?;
    let neighbors: Vec<Value> = e
        .neighbors()
        .map_err(rpc_error)?
        .into_iter()
        .filter(|n| p.network_id.as_ref().is_none_or(|id| *id == n.network_id))
        .map(|n| {
            json!({
                "network_id": n.network_id,
                "ip_address": n.ip.to_string(),
                "mac_address": n.mac,
                "state": n.state.name(),
                "age_secs": n.age_secs,
            })
        })
        .collect();
    Ok(json!({ "neighbors": neighbors }))
}

fn leases_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: NetworkFilter = parse(params)?;
    let state = e.state();
    let port_of = |network_id: &str, mac: &str| {
        state
            .ports
            .iter()
            .find(|port| {
                port.network_id == network_id && port.mac_address.eq_ignore_ascii_case(mac)
            })
            .map(|port| port.id.clone())
    };
    let leases: Vec<Value> = e
        .leases()
        .into_iter()
        .filter(|row| p.network_id.as_ref().is_none_or(|id| *id == row.network_id))
        .map(|row| {
            let l = &row.lease;
            let mut v = json!({
                "network_id": row.network_id,
                "port_id": port_of(&row.network_id, &l.mac),
                "mac_address": l.mac,
                "ip_address": l.ip.to_string(),
                "state": l.state.as_str(),
                "expires_in_secs": l.expires_in_secs,
            });
            if let Some(h) = &l.hostname {
                v["hostname"] = json!(h);
            }
            v
        })
        .collect();
    Ok(json!({ "leases": leases }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouterFilter {
    router_id: Option<String>,
}

fn sessions_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: RouterFilter = parse(params)?;
    let endpoints = |k: &SessionFlow| {
        json!({
            "src": k.src.to_string(),
            "sport": k.sport,
            "dst": k.dst.to_string(),
            "dport": k.dport,
        })
    };
    let sessions: Vec<Value> = e
        .sessions()
        .map_err(rpc_error)?
        .into_iter()
        .filter(|s| {
            p.router_id
                .as_ref()
                .is_none_or(|id| Some(id) == s.router_id.as_ref())
        })
        .map(|s| {
            json!({
                "zone": s.zone,
                "router_id": s.router_id,
                "port": s.port.as_deref().map(port_label),
                "protocol": protocol_name(s.original.proto),
                "original": endpoints(&s.original),
                "reply": endpoints(&s.reply),
                "state": s.state,
                "idle_secs": s.idle_secs,
                "expires_in_secs": s.expires_in_secs,
                "packets_out": s.packets[0],
                "packets_in": s.packets[1],
                "bytes_out": s.bytes[0],
                "bytes_in": s.bytes[1],
            })
        })
        .collect();
    Ok(json!({ "sessions": sessions }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeteringFilter {
    label_id: Option<String>,
    router_id: Option<String>,
}

fn metering_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: MeteringFilter = parse(params)?;
    let labels = &e.validated().metering_labels;
    let rows: Vec<Value> = e
        .metrics()
        .meter_counts()
        .into_iter()
        .filter(|m| p.label_id.as_ref().is_none_or(|id| *id == m.label))
        .filter(|m| p.router_id.as_ref().is_none_or(|id| *id == m.router))
        .map(|m| {
            let name = labels
                .iter()
                .find(|l| l.id == m.label)
                .and_then(|l| l.name.clone());
            json!({
                "label_id": m.label,
                "name": name,
                "router_id": m.router,
                "packets": m.ingress_packets + m.egress_packets,
                "bytes": m.ingress_bytes + m.egress_bytes,
                "ingress_packets": m.ingress_packets,
                "ingress_bytes": m.ingress_bytes,
                "egress_packets": m.egress_packets,
                "egress_bytes": m.egress_bytes,
            })
        })
        .collect();
    Ok(json!({ "metering": rows }))
}

fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        58 => "ipv6-icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

fn routes_list(e: &mut Engine, params: Option<Value>) -> Result<Value, RpcError> {
    let p: RouterFilter = parse(params)?;
    let routes: Vec<_> = routes(e.validated())
        .into_iter()
        .filter(|r| p.router_id.as_ref().is_none_or(|id| *id == r.router_id))
        .collect();
    Ok(json!({ "routes": routes }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::MemWires;
    use crate::engine::{EngineConfig, Initial};
    use crate::model::DesiredState;
    use proptest::prelude::*;

    const BASE: &str = r#"
        [[uplinks]]
        name = "uplink0"
        physnet = "physnet1"
        binding = { driver = "mem" }

        [[networks]]
        id = "net-a"
        network_type = "vlan"
        physical_network = "physnet1"
        segmentation_id = 100

        [[subnets]]
        id = "sub-a"
        network_id = "net-a"
        cidr = "198.18.1.0/24"
        gateway_ip = "198.18.1.1"

        [[ports]]
        id = "vm1"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.10" }]
        binding = { driver = "mem" }

        [[routers]]
        id = "r1"
        interfaces = ["sub-a"]
    "#;

    fn service() -> Service {
        let config = EngineConfig {
            pool_frames: 1024,
            ..EngineConfig::default()
        };
        let initial = Initial {
            state: DesiredState::from_toml_str(BASE).unwrap(),
            generation: 1,
            persist: false,
        };
        Service::new(Engine::start(&config, initial, None, MemWires::default()).unwrap())
    }

    /// Any JSON value, with object keys drawn mostly from the methods' parameter names so
    /// that the generator reaches past "unknown field".
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            (0u64..5).prop_map(|n| json!(n)),
            "[a-z0-9:.-]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            let key = prop_oneof![
                Just("state".to_string()),
                Just("dry_run".to_string()),
                Just("expect_generation".to_string()),
                Just("generation".to_string()),
                Just("network_id".to_string()),
                Just("router_id".to_string()),
                Just("label_id".to_string()),
                Just("port".to_string()),
                Just("per_port".to_string()),
                Just("count".to_string()),
                Just("match".to_string()),
                Just("ports".to_string()),
                Just("port".to_string()),
                Just("id".to_string()),
                Just("changes".to_string()),
                Just("op".to_string()),
                Just("collection".to_string()),
                Just("object".to_string()),
                "[a-z_]{1,8}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn method() -> impl Strategy<Value = String> {
        let names: Vec<String> = METHODS
            .iter()
            .map(|(m, _)| (*m).to_owned())
            .chain(objects::methods().into_iter().map(|m| m.name))
            .collect();
        prop::sample::select(names)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the parameters, every method answers with a result or a documented
        /// error, and only a successful apply or rollback changes the generation.
        #[test]
        fn any_params_get_a_result_or_a_documented_error(
            calls in prop::collection::vec((method(), prop::option::of(json_value())), 1..8)
        ) {
            let mut s = service();
            for (method, params) in calls {
                let before = s.generation();
                let method = method.as_str();
                let outcome = s.call(method, params);
                let changes = matches!(method, "config.apply" | "config.rollback")
                    || method == "config.patch"
                    || object_method(method).is_some();
                match outcome {
                    Ok(result) => {
                        prop_assert!(result.is_object(), "{method}: {result}");
                        if !changes {
                            prop_assert_eq!(s.generation(), before);
                        }
                    }
                    Err(e) => {
                        prop_assert!(
                            e.code == crate::rpc::INVALID_PARAMS
                                || (NOT_SUPPORTED..=INVALID_CONFIG).contains(&e.code)
                                || e.code == UNKNOWN_OBJECT
                                // A stream is opened by the server, not `call`: what gets
                                // here is a notification, refused as such.
                                || (method == "capture.start"
                                    && e.code == crate::rpc::INVALID_REQUEST),
                            "{method}: unexpected error {e:?}"
                        );
                        prop_assert!(!e.message.is_empty());
                        prop_assert_eq!(s.generation(), before, "{} failed but changed", method);
                    }
                }
            }
        }
    }

    #[test]
    fn rollback_to_the_active_generation_is_a_no_op() {
        let mut s = service();
        let r = s
            .call("config.rollback", Some(json!({ "generation": 1 })))
            .unwrap();
        assert_eq!(r["changed"], json!(false));
        assert_eq!(r["rolled_back_to"], json!(1));
        assert_eq!(s.generation(), 1);
    }
}
