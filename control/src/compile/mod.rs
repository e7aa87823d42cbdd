//! Compiling a validated desired state into a data-plane [`Snapshot`].
//!
//! The data plane keys its mutable state (learned MACs, later connections) on identities
//! that must mean the same thing from one generation to the next: a port's [`PortId`], a
//! network's [`NetworkUid`]. [`Identities`] assigns them from the Neutron ids and carries
//! them across generations. Compiling never changes the identities in use; it returns the
//! updated set, which the caller keeps only if it publishes the snapshot.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use pollux_dataplane::buf::{DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM};
use pollux_dataplane::metering::{LabelMeterSpec, MeterDirection, MeterMatch, MAX_METERS};
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::port::PortId;
use pollux_dataplane::port_security::{Ipv4Source, Ipv6Source, PortSecurity};
use pollux_dataplane::qos::PortQos;
use pollux_dataplane::ratelimit::ByteRate;
use pollux_dataplane::routing::{InterfaceSpec, RouteSpec, RouterSpec, RouterUid};
use pollux_dataplane::slowpath::{NetworkService, ServiceId, SlowPathConfig, METADATA_ADDR};
use pollux_dataplane::snapshot::{
    BuildError, NetworkUid, PhysnetId, Segment as DpSegment, Snapshot, SnapshotBuilder,
};

use crate::identity::{dhcp_mac, router_mac};
use crate::model::Direction;
use crate::validate::{Binding, Segment, Validated};
use pollux_services::addr::Ipv4Cidr;

/// The largest network MTU whose frames (with an Ethernet header and one 802.1Q tag) fit
/// the data room of one frame of the worker's pool: the one limit on MTUs the data plane
/// forwards (validation's bound, [`crate::validate::JUMBO_MTU`], is the schema's).
pub const MAX_MTU: u16 = (DEFAULT_FRAME_SIZE - DEFAULT_HEADROOM as u32 - 18) as u16;

pub mod dhcp;
pub mod metadata;
mod overlay;

pub use overlay::tunnel_key;
mod ports;
pub mod security_groups;
pub mod spans;

pub use ports::{compile_ports, IdentitiesUndo, PortsCompiled};

/// Port ids are `u16` and 0xffff is reserved by the data plane.
const MAX_PORT_IDS: usize = u16::MAX as usize;

/// Stable identities of ports, networks and physnets, carried across generations.
///
/// The maps are shared (`Arc`) and copied on write: compiling starts from a copy of the
/// identities in use, which a change that adds or removes nothing never writes to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identities {
    /// Port key (`uplink:NAME` or `port:ID`) → port id.
    ports: Arc<BTreeMap<String, u16>>,
    /// Next port id to try: ids are handed out round-robin so that a removed port's id is
    /// reused as late as possible (state learned on it has long aged out by then).
    next_port: u16,
    /// Network id → uid. A uid is never reused, so state left by a removed network can
    /// never be mistaken for a new network's.
    networks: Arc<BTreeMap<String, u32>>,
    next_network_uid: u32,
    /// Physnet name → id.
    physnets: BTreeMap<String, u16>,
    /// Router id → uid, never reused (the uid is in the router's MAC, which hosts cache).
    routers: Arc<BTreeMap<String, u32>>,
    next_router_uid: u32,
    /// (metering label id, router id) → meter slot, while the label is counted on the
    /// router: its counts live in the workers' slot, so they survive any change that
    /// keeps the pair. Handed out round-robin, as port ids are, so that a slot is reused
    /// as late as possible.
    meters: Arc<BTreeMap<(String, String), u16>>,
    next_meter: u16,
}

/// The identity key of a Neutron port.
fn vm_port_key(port_id: &str) -> String {
    format!("port:{port_id}")
}

/// Router uids fit the low three bytes of the router's MAC.
const MAX_ROUTER_UID: u32 = 1 << 24;

impl Identities {
    /// The id of the port with this key, if it has one.
    pub fn port(&self, key: &str) -> Option<PortId> {
        self.ports.get(key).map(|&id| PortId(id))
    }

    /// The id of the Neutron port `port_id`, if it has one.
    pub fn vm_port(&self, port_id: &str) -> Option<PortId> {
        self.port(&vm_port_key(port_id))
    }

    /// The key (`port:ID`, `uplink:NAME`) of the port with id `id`.
    pub fn port_key(&self, id: PortId) -> Option<&str> {
        self.ports
            .iter()
            .find(|(_, &p)| p == id.0)
            .map(|(k, _)| k.as_str())
    }

    /// The uid of network `id`, if it has one.
    pub fn network_uid(&self, id: &str) -> Option<NetworkUid> {
        self.networks.get(id).map(|&uid| NetworkUid(uid))
    }

    /// Network uid → network id, for the networks in use.
    pub fn networks_by_uid(&self) -> BTreeMap<u32, &str> {
        self.networks
            .iter()
            .map(|(id, &uid)| (uid, id.as_str()))
            .collect()
    }

    /// Port id → key, for the ports in use.
    pub fn ports_by_id(&self) -> BTreeMap<u16, &str> {
        self.ports.iter().map(|(k, &id)| (id, k.as_str())).collect()
    }

    /// The id of `key`, assigning one not in `taken` (every id held by a key, marked by
    /// [`Identities::taken_port_ids`]) if it has none.
    fn assign_port(&mut self, key: &str, taken: &mut [bool]) -> Result<PortId, CompileError> {
        if let Some(&id) = self.ports.get(key) {
            return Ok(PortId(id));
        }
        for _ in 0..MAX_PORT_IDS {
            let id = self.next_port;
            self.next_port = if usize::from(id) + 1 >= MAX_PORT_IDS {
                0
            } else {
                id + 1
            };
            if !taken[usize::from(id)] {
                taken[usize::from(id)] = true;
                Arc::make_mut(&mut self.ports).insert(key.to_string(), id);
                return Ok(PortId(id));
            }
        }
        Err(CompileError::TooManyPorts)
    }

    fn taken_port_ids(&self) -> Vec<bool> {
        let mut taken = vec![false; MAX_PORT_IDS];
        for &id in self.ports.values() {
            taken[usize::from(id)] = true;
        }
        taken
    }

    fn network(&mut self, id: &str) -> Result<NetworkUid, CompileError> {
        if let Some(&uid) = self.networks.get(id) {
            return Ok(NetworkUid(uid));
        }
        let uid = self.next_network_uid;
        self.next_network_uid = uid
            .checked_add(1)
            .ok_or(CompileError::NetworkUidsExhausted)?;
        Arc::make_mut(&mut self.networks).insert(id.to_string(), uid);
        Ok(NetworkUid(uid))
    }

    /// Router uid → router id, for the routers in use.
    pub fn routers_by_uid(&self) -> BTreeMap<u32, &str> {
        self.routers
            .iter()
            .map(|(id, &uid)| (uid, id.as_str()))
            .collect()
    }

    /// The uid of router `id`, if it has one.
    pub fn router_uid(&self, id: &str) -> Option<RouterUid> {
        self.routers.get(id).map(|&uid| RouterUid(uid))
    }

    fn router(&mut self, id: &str) -> Result<RouterUid, CompileError> {
        if let Some(&uid) = self.routers.get(id) {
            return Ok(RouterUid(uid));
        }
        // Uid 0 is never handed out, so no router has the MAC 02:70:6c:00:00:00.
        let uid = self.next_router_uid.max(1);
        if uid >= MAX_ROUTER_UID {
            return Err(CompileError::RouterUidsExhausted);
        }
        self.next_router_uid = uid + 1;
        Arc::make_mut(&mut self.routers).insert(id.to_string(), uid);
        Ok(RouterUid(uid))
    }

    /// (label id, router id, slot) of every metered pair.
    pub fn meters(&self) -> impl Iterator<Item = (&str, &str, u16)> + '_ {
        self.meters
            .iter()
            .map(|((label, router), &slot)| (label.as_str(), router.as_str(), slot))
    }

    /// The slot of (label, router), assigning one no other pair holds if it has none.
    fn meter(&mut self, label: &str, router: &str) -> Result<u16, CompileError> {
        let key = (label.to_owned(), router.to_owned());
        if let Some(&slot) = self.meters.get(&key) {
            return Ok(slot);
        }
        let mut taken = vec![false; MAX_METERS];
        for &slot in self.meters.values() {
            taken[usize::from(slot)] = true;
        }
        for _ in 0..MAX_METERS {
            let slot = self.next_meter;
            self.next_meter = if usize::from(slot) + 1 >= MAX_METERS {
                0
            } else {
                slot + 1
            };
            if !taken[usize::from(slot)] {
                Arc::make_mut(&mut self.meters).insert(key, slot);
                return Ok(slot);
            }
        }
        Err(CompileError::TooManyMeters)
    }

    fn physnet(&mut self, name: &str) -> Result<PhysnetId, CompileError> {
        if let Some(&id) = self.physnets.get(name) {
            return Ok(PhysnetId(id));
        }
        let id = u16::try_from(self.physnets.len()).map_err(|_| CompileError::TooManyPhysnets)?;
        self.physnets.insert(name.to_string(), id);
        Ok(PhysnetId(id))
    }

    /// Forgets the ports and networks that are not in `keep_ports` / `keep_networks`, so
    /// that their entries do not accumulate. Network uids are still never reused.
    fn retain(
        &mut self,
        keep_ports: &HashSet<&str>,
        keep_networks: &HashSet<&str>,
        keep_routers: &HashSet<&str>,
    ) {
        if self.ports.keys().any(|k| !keep_ports.contains(k.as_str())) {
            Arc::make_mut(&mut self.ports).retain(|k, _| keep_ports.contains(k.as_str()));
        }
        if self
            .networks
            .keys()
            .any(|k| !keep_networks.contains(k.as_str()))
        {
            Arc::make_mut(&mut self.networks).retain(|k, _| keep_networks.contains(k.as_str()));
        }
        if self
            .routers
            .keys()
            .any(|k| !keep_routers.contains(k.as_str()))
        {
            Arc::make_mut(&mut self.routers).retain(|k, _| keep_routers.contains(k.as_str()));
        }
    }
}

/// What a port is attached as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// The uplink of a physnet.
    Uplink,
    /// A VM port.
    Vm,
}

/// A port the drivers must provide, with the id the snapshot knows it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    /// Data-plane id.
    pub id: PortId,
    /// Key in [`Identities`]: `uplink:NAME` or `port:ID`.
    pub key: String,
    /// Uplink or VM port.
    pub kind: PortKind,
    /// How to attach it.
    pub binding: Binding,
}

/// The result of a compile: the snapshot, the ports it expects, and the identities to keep
/// if the snapshot is published.
#[derive(Debug)]
pub struct Compiled {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Every port the snapshot refers to, in id order.
    pub ports: Vec<PortPlan>,
    /// Identities including any assigned by this compile.
    pub identities: Identities,
}

/// Why a valid desired state cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileError {
    /// A network type the data plane does not forward yet.
    Unsupported {
        /// Path of the offending field.
        path: String,
        /// What is missing.
        what: String,
    },
    /// More than 65535 ports.
    TooManyPorts,
    /// More than 65536 physnets.
    TooManyPhysnets,
    /// Four billion networks created over the daemon's life.
    NetworkUidsExhausted,
    /// Sixteen million routers created over the daemon's life.
    RouterUidsExhausted,
    /// More (metering label, router) pairs than the workers have counters for.
    TooManyMeters,
    /// The data plane refused the configuration (validation should have caught it).
    Build(BuildError),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Unsupported { path, what } => write!(f, "{path}: {what}"),
            CompileError::TooManyPorts => write!(f, "more than {MAX_PORT_IDS} ports"),
            CompileError::TooManyPhysnets => write!(f, "more than 65536 physical networks"),
            CompileError::NetworkUidsExhausted => {
                write!(f, "network identities exhausted; restart polluxd")
            }
            CompileError::RouterUidsExhausted => {
                write!(f, "router identities exhausted; restart polluxd")
            }
            CompileError::TooManyMeters => write!(
                f,
                "metering_labels: more than {MAX_METERS} (label, router) pairs to count"
            ),
            CompileError::Build(e) => write!(f, "data plane refused the configuration: {e}"),
        }
    }
}

impl std::error::Error for CompileError {}

/// Refuses the drivers that validate but have no implementation yet (none today: kept
/// as the one place to say so when a driver is added to the model first).
fn supported_binding(binding: &Binding, _path: impl Fn() -> String) -> Result<(), CompileError> {
    match binding {
        Binding::Afxdp { .. } | Binding::Mem | Binding::Tap { .. } | Binding::VhostUser { .. } => {
            Ok(())
        }
    }
}

/// Compiles `state` as generation `generation`, starting from the identities in use.
pub fn compile(
    state: &Validated,
    previous: &Identities,
    generation: u64,
) -> Result<Compiled, CompileError> {
    compile_reusing(state, previous, generation, None)
}

/// [`compile`], taking the routers of `routers_of` (the running snapshot, compiled with
/// `previous`) as they are instead of compiling them again: for a change after which
/// every router compiles as before (see [`routers_unchanged`]). The test builds check
/// that the result is what a compile from scratch makes.
pub fn compile_reusing(
    state: &Validated,
    previous: &Identities,
    generation: u64,
    routers_of: Option<&Snapshot>,
) -> Result<Compiled, CompileError> {
    let compiled = compile_inner(state, previous, generation, routers_of)?;
    if cfg!(debug_assertions) && routers_of.is_some() {
        let whole = compile_inner(state, previous, generation, None)?;
        debug_assert_eq!(
            compiled.snapshot.differences(&whole.snapshot),
            Vec::<&str>::new(),
            "the snapshot compiled from the running one is not the one compiled from scratch"
        );
        debug_assert_eq!(compiled.ports, whole.ports);
        debug_assert_eq!(compiled.identities, whole.identities);
    }
    Ok(compiled)
}

/// Whether every router compiles as before after a change that touched the objects
/// `touched` of `old` into `new`: a change of ports alone, none of them the target of a
/// floating IP before or after (a router's floating IPs are made of their ports).
pub fn routers_unchanged(
    touched: &[(crate::patch::Collection, String)],
    old: &Validated,
    new: &Validated,
) -> bool {
    if touched
        .iter()
        .any(|(c, _)| *c != crate::patch::Collection::Ports)
    {
        return false;
    }
    let targets_touched = |v: &Validated| {
        v.floating_ips.iter().any(|f| {
            f.target
                .is_some_and(|t| touched.iter().any(|(_, id)| *id == v.ports[t.port].id))
        })
    };
    !targets_touched(old) && !targets_touched(new)
}

fn compile_inner(
    state: &Validated,
    previous: &Identities,
    generation: u64,
    routers_of: Option<&Snapshot>,
) -> Result<Compiled, CompileError> {
    let mut spans = spans::Spans::start();
    let mut ids = previous.clone();
    let mut taken = ids.taken_port_ids();
    let mut b = SnapshotBuilder::new();
    b.l2(state.l2);
    let mut plans = Vec::new();

    let mut uplink_physnet = Vec::with_capacity(state.uplinks.len());
    let mut uplink_ids = Vec::with_capacity(state.uplinks.len());
    for (i, uplink) in state.uplinks.iter().enumerate() {
        supported_binding(&uplink.binding, || format!("uplinks[{i}].binding.driver"))?;
        let physnet = ids.physnet(&uplink.physnet)?;
        uplink_physnet.push(physnet);
        let key = format!("uplink:{}", uplink.name);
        let id = ids.assign_port(&key, &mut taken)?;
        uplink_ids.push(id);
        b.uplink(id, physnet);
        if kernel_interface(&uplink.binding) {
            b.enable_stage(id, Stage::ChecksumOffload);
        }
        plans.push(PortPlan {
            id,
            key,
            kind: PortKind::Uplink,
            binding: uplink.binding.clone(),
        });
    }

    let mut network_uid = Vec::with_capacity(state.networks.len());
    for (i, net) in state.networks.iter().enumerate() {
        if net.mtu > MAX_MTU {
            if let Some(why) = jumbo_refusal(state, i) {
                return Err(CompileError::Unsupported {
                    path: format!("networks[{i}].mtu"),
                    what: format!(
                        "{} is above {MAX_MTU}, the largest MTU whose frames fit one of the data \
                         plane's {DEFAULT_FRAME_SIZE}-byte buffers, and {why}",
                        net.mtu
                    ),
                });
            }
        }
        let uid = ids.network(&net.id)?;
        network_uid.push(uid);
        let segment = match net.segment {
            Segment::Local => DpSegment::Local,
            Segment::Flat { uplink } => DpSegment::Flat {
                physnet: uplink_physnet[uplink],
            },
            Segment::Vlan { uplink, vid } => DpSegment::Vlan {
                physnet: uplink_physnet[uplink],
                vid,
            },
            Segment::Vxlan { vni, .. } => DpSegment::Vxlan { vni },
            Segment::Geneve { vni, .. } => DpSegment::Geneve { vni },
            Segment::Gre { key, .. } => DpSegment::Gre { key },
        };
        // A network that is administratively down has no ports in the data plane, so
        // frames on its ports are dropped (as port_not_configured).
        if net.admin_state_up {
            b.network(uid, segment);
        }
    }

    spans.mark("uplinks+networks");
    let mut filtered = Vec::new();
    // A trunk's subport has no binding either, but is of this host: a port in the
    // snapshot whose frames its parent's driver carries (no plan of its own).
    let subports: HashSet<usize> = state
        .trunks
        .iter()
        .flat_map(|t| t.sub_ports.iter().map(|s| s.port))
        .collect();
    let mut port_ids: Vec<Option<PortId>> = vec![None; state.ports.len()];
    let mut subport_keys: Vec<String> = Vec::new();
    for (i, port) in state.ports.iter().enumerate() {
        // A port of another host has no binding here: the overlay reaches it.
        let binding = match &port.binding {
            Some(binding) => Some(binding),
            None if subports.contains(&i) => None,
            None => continue,
        };
        if let Some(binding) = binding {
            supported_binding(binding, || format!("ports[{i}].binding.driver"))?;
        }
        let key = vm_port_key(&port.id);
        let id = ids.assign_port(&key, &mut taken)?;
        port_ids[i] = Some(id);
        if state.networks[port.network].admin_state_up {
            let macs = port.macs();
            b.access_port(id, network_uid[port.network], &macs);
            if port.port_security_enabled {
                b.port_security(id, port_security(port, &macs));
                // Port security brings security groups: no group is deny-all but for
                // Neutron's implicit allows.
                filtered.push((i, id));
            }
            if binding.is_some_and(kernel_interface) {
                b.enable_stage(id, Stage::ChecksumOffload);
            }
            if let Some(q) = port.qos_policy {
                b.qos(id, port_qos(&state.qos_policies[q]));
            }
        }
        match binding {
            Some(binding) => plans.push(PortPlan {
                id,
                key,
                kind: PortKind::Vm,
                binding: binding.clone(),
            }),
            None => subport_keys.push(key),
        }
    }
    spans.mark("ports");
    for t in state.trunks.iter() {
        let up = |port: usize| state.networks[state.ports[port].network].admin_state_up;
        let Some(parent) = port_ids[t.parent].filter(|_| up(t.parent)) else {
            continue;
        };
        for s in &t.sub_ports {
            if let Some(sub) = port_ids[s.port].filter(|_| up(s.port)) {
                b.trunk_subport(parent, s.vid, sub);
            }
        }
    }
    let tunnel_keys = overlay::compile_overlay(
        state,
        &mut ids,
        &mut taken,
        &mut b,
        &uplink_ids,
        &network_uid,
    )?;

    spans.mark("trunks+overlay");
    b.security_groups(security_groups::tables(state, &filtered));
    spans.mark("security_groups");

    // A router runs on one host (Neutron's L3-agent scheduling); the others reach it
    // over the overlay (above) or their physical networks.
    let mut metered: Vec<(&str, &str)> = Vec::new();
    if let Some(previous) = routers_of {
        // The routers, their uids and their meters' slots are those of `previous`.
        b.routers_of(previous);
    }
    for (index, router) in state.routers.iter().enumerate() {
        if !router.runs_here || routers_of.is_some() {
            continue;
        }
        let uid = ids.router(&router.id)?;
        let mut spec = router_spec(state, index, uid, &network_uid);
        if spec.external.is_some() {
            spec.metering = router_metering(state, index, &mut ids, &mut metered)?;
        }
        b.router(spec);
    }
    // A pair not counted any more frees its slot (and its counts with it).
    if routers_of.is_none() && ids.meters.len() != metered.len() {
        let keep: HashSet<(&str, &str)> = metered.iter().copied().collect();
        Arc::make_mut(&mut ids.meters)
            .retain(|(label, router), _| keep.contains(&(label.as_str(), router.as_str())));
    }

    spans.mark("routers");
    let mut slow_path = SlowPathConfig::default().with_per_port(ServiceId::DHCP, state.dhcp.port);
    if let Some(m) = &state.metadata {
        slow_path = slow_path.with_per_port(ServiceId::METADATA, m.port);
    }
    b.slow_path(slow_path);
    let mut dhcp_addresses: BTreeMap<usize, Vec<Ipv4Addr>> = BTreeMap::new();
    for (network, ip) in dhcp::dhcp_server_addresses(state) {
        dhcp_addresses.entry(network).or_default().push(ip);
    }
    let served = metadata::metadata_networks(state);
    for (network, addresses) in dhcp_addresses {
        if state.networks[network].admin_state_up {
            let uid = network_uid[network];
            b.dhcp_server(uid, dhcp_mac(uid), &addresses);
            if served[network].1 {
                b.service(
                    uid,
                    dhcp_mac(uid),
                    NetworkService {
                        id: ServiceId::METADATA,
                        matches: pollux_dataplane::slowpath::metadata::MATCH,
                        addresses: Box::new([u32::from(METADATA_ADDR)]),
                    },
                );
            }
        }
    }
    for (network, &(via_router, _)) in served.iter().enumerate() {
        if via_router && state.networks[network].admin_state_up {
            b.metadata_via_router(network_uid[network]);
        }
    }

    spans.mark("services");
    // Every key in use was assigned above, so the identities hold no other key when they
    // hold as many as are in use (keys are distinct): the common case of a change that
    // removes nothing, which then costs no set of every key.
    let ports_in_use = plans.len() + subport_keys.len() + tunnel_keys.len();
    let retain = |ids: &mut Identities| {
        let keep_ports: HashSet<&str> = plans
            .iter()
            .map(|p| p.key.as_str())
            .chain(subport_keys.iter().map(String::as_str))
            .chain(tunnel_keys.iter().map(String::as_str))
            .collect();
        let keep_networks: HashSet<&str> = state.networks.iter().map(|n| n.id.as_str()).collect();
        let keep_routers: HashSet<&str> = state
            .routers
            .iter()
            .filter(|r| r.runs_here)
            .map(|r| r.id.as_str())
            .collect();
        ids.retain(&keep_ports, &keep_networks, &keep_routers);
    };
    if ids.ports.len() != ports_in_use
        || ids.networks.len() != state.networks.len()
        || ids.routers.len() != state.routers.iter().filter(|r| r.runs_here).count()
    {
        retain(&mut ids);
    } else if cfg!(debug_assertions) {
        let mut all = ids.clone();
        retain(&mut all);
        debug_assert_eq!(all, ids, "identities of keys no longer in use were kept");
    }
    plans.sort_by_key(|p| p.id);
    spans.mark("identities");
    let snapshot = b.build(generation).map_err(CompileError::Build)?;
    spans.mark("build");
    if let Some(summary) = spans.summary() {
        pollux_services::log!(
            pollux_services::log::Level::Debug,
            "compile parts (CPU) of generation {generation}: {summary}"
        );
    }
    Ok(Compiled {
        snapshot,
        ports: plans,
        identities: ids,
    })
}

/// Why network `i`, whose MTU is above [`MAX_MTU`], cannot run: its larger frames travel
/// as chains of buffers (see `pollux_dataplane::buf`), which only some drivers send and
/// receive (tap, vhost-user and mem ports, up to a 9000-byte MTU; not yet AF_XDP, which
/// needs multi-buffer sockets), and which tunnels do not carry yet. `None` when every port
/// the network's frames cross can carry them.
fn jumbo_refusal(state: &Validated, i: usize) -> Option<String> {
    // Every binding but AF_XDP carries chains.
    let chains = |b: &Binding| !matches!(b, Binding::Afxdp { .. });
    let afxdp = "an AF_XDP port, which carries frames of one buffer only (multi-buffer AF_XDP \
                 is not supported yet; tap and vhost-user ports carry jumbo frames)";
    match state.networks[i].segment {
        Segment::Local => {}
        Segment::Flat { uplink } | Segment::Vlan { uplink, .. } => {
            let u = &state.uplinks[uplink];
            if !chains(&u.binding) {
                return Some(format!("its uplink {} is {afxdp}", u.name));
            }
        }
        _ => return Some("jumbo frames through tunnels are not supported yet".into()),
    }
    let (j, port) = state
        .ports
        .iter()
        .enumerate()
        .find(|(_, p)| p.network == i && !p.binding.as_ref().is_some_and(chains))?;
    Some(match &port.binding {
        Some(_) => format!("port ports[{j}] ({}) is {afxdp}", port.id),
        None => format!(
            "port ports[{j}] ({}) is a trunk's subport, whose jumbo frames are not supported \
             yet",
            port.id
        ),
    })
}

/// Whether frames of this binding come from a kernel interface whose local senders may
/// leave TCP/UDP checksums to an offload that AF_XDP does not carry.
fn kernel_interface(binding: &Binding) -> bool {
    matches!(binding, Binding::Afxdp { .. })
}

/// What the data plane enforces of a QoS policy.
fn port_qos(policy: &crate::validate::QosPolicy) -> PortQos {
    let rate = |l: crate::validate::BandwidthLimit| ByteRate {
        max_kbps: l.max_kbps,
        burst_kbit: l.burst_kbit,
    };
    PortQos {
        egress: policy.egress.map(rate),
        ingress: policy.ingress.map(rate),
        dscp: policy.dscp_mark,
    }
}

/// The anti-spoofing policy of a port with port security: its MACs, its fixed IPs from
/// its own MAC, and each address pair from the pair's MAC.
fn port_security(port: &crate::validate::Port, macs: &[[u8; 6]]) -> PortSecurity {
    let mut sources: Vec<Ipv4Source> = port
        .fixed_ips
        .iter()
        .map(|f| Ipv4Source::new(port.mac, f.ip, 32))
        .collect();
    sources.extend(
        port.allowed_address_pairs
            .iter()
            .map(|p| Ipv4Source::new(p.mac, p.ip.addr, p.ip.prefix)),
    );
    let sources6: Vec<Ipv6Source> = port
        .fixed_ips6
        .iter()
        .map(|&ip| Ipv6Source::new(port.mac, ip, 128))
        .chain(
            port.allowed_address_pairs6
                .iter()
                .map(|p| Ipv6Source::new(p.mac, p.addr, p.prefix)),
        )
        .collect();
    PortSecurity::new(macs, &sources).with_ipv6(&sources6)
}

/// The metering labels counted on router `index` (which has an external gateway), with
/// their slots; each (label, router) pair is appended to `metered`.
fn router_metering<'a>(
    state: &'a Validated,
    index: usize,
    ids: &mut Identities,
    metered: &mut Vec<(&'a str, &'a str)>,
) -> Result<Vec<LabelMeterSpec>, CompileError> {
    let router = &state.routers[index];
    let prefix = |c: Option<Ipv4Cidr>| c.map(|c| (u32::from(c.addr), c.prefix));
    let mut labels = Vec::new();
    for label in state.metering_labels.iter() {
        if !label.applies_to(router.project_id.as_deref()) {
            continue;
        }
        let slot = ids.meter(&label.id, &router.id)?;
        metered.push((label.id.as_str(), router.id.as_str()));
        labels.push(LabelMeterSpec {
            slot,
            rules: label
                .rules
                .iter()
                .map(|r| {
                    let direction = match r.direction {
                        Direction::Ingress => MeterDirection::Ingress,
                        Direction::Egress => MeterDirection::Egress,
                    };
                    let matched = MeterMatch::new(prefix(r.source), prefix(r.destination));
                    (direction, matched, r.excluded)
                })
                .collect(),
        });
    }
    Ok(labels)
}

/// The data plane's view of router `index`: an interface at the gateway IP of each of its
/// subnets and one at its external gateway's address, the extra routes, a default route
/// via the external subnet's gateway (as Neutron's L3 agent adds), SNAT, and its floating
/// IPs. Interfaces on networks that are administratively down are left out, with the
/// routes and floating IPs through them.
fn router_spec(
    state: &Validated,
    index: usize,
    uid: RouterUid,
    network_uid: &[NetworkUid],
) -> RouterSpec {
    let router = &state.routers[index];
    let up = |network: usize| state.networks[network].admin_state_up;
    let iface = |subnet: usize, ip| {
        let s = &state.subnets[subnet];
        InterfaceSpec {
            network: network_uid[s.network],
            ip,
            prefix_len: s.cidr.prefix,
            mtu: state.networks[s.network].mtu,
        }
    };
    let mut interfaces: Vec<InterfaceSpec> = router
        .interfaces
        .iter()
        .filter(|&&s| up(state.subnets[s].network))
        .filter_map(|&s| Some(iface(s, state.subnets[s].gateway_ip?)))
        .collect();
    let mut routes = Vec::new();
    let mut external = None;
    let mut enable_snat = false;
    let mut floating_ips = Vec::new();
    if let Some(g) = router.external_gateway.filter(|g| up(g.network)) {
        external = Some(interfaces.len());
        enable_snat = g.enable_snat;
        interfaces.push(iface(g.subnet, g.ip));
        floating_ips = state
            .floating_ips
            .iter()
            .filter_map(|f| {
                let t = f.target?;
                let behind_up_network = up(state.ports[t.port].network);
                (t.router == index && behind_up_network).then_some((t.fixed_ip, f.address))
            })
            .collect();
        if let Some(gateway) = state.subnets[g.subnet].gateway_ip {
            routes.push(RouteSpec {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                nexthop: gateway,
            });
        }
    }
    let connected = |ip: Ipv4Addr| {
        interfaces
            .iter()
            .any(|i| Ipv4Cidr::new(i.ip, i.prefix_len).contains(ip))
    };
    routes.extend(
        router
            .routes
            .iter()
            .filter(|r| connected(r.nexthop))
            .map(|r| RouteSpec {
                destination: r.destination.addr,
                prefix_len: r.destination.prefix,
                nexthop: r.nexthop,
            }),
    );
    RouterSpec {
        uid,
        mac: router.mac.unwrap_or_else(|| router_mac(uid)),
        interfaces,
        routes,
        external,
        enable_snat,
        floating_ips,
        metering: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DesiredState;
    use crate::validate::validate;
    use pollux_dataplane::overlay::Encapsulation;

    fn state(extra_port: bool) -> Validated {
        let mut text = String::from(
            r#"
            [[uplinks]]
            name = "uplink0"
            physnet = "physnet1"
            binding = { driver = "mem" }

            [[networks]]
            id = "net-a"
            network_type = "vlan"
            physical_network = "physnet1"
            segmentation_id = 100

            [[networks]]
            id = "net-b"
            network_type = "local"

            [[ports]]
            id = "vm1"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:01"
            binding = { driver = "mem" }

            [[ports]]
            id = "vm2"
            network_id = "net-b"
            mac_address = "fa:16:3e:00:00:02"
            binding = { driver = "mem" }
            "#,
        );
        if extra_port {
            text.push_str(
                r#"
                [[ports]]
                id = "vm0"
                network_id = "net-a"
                mac_address = "fa:16:3e:00:00:03"
                binding = { driver = "mem" }
                "#,
            );
        }
        validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap()
    }

    /// A port's own policy wins over its network's; the network's reaches its other
    /// ports; a port on a network without one, and no policy, has no QoS stage.
    #[test]
    fn qos_port_policy_over_network_policy() {
        let text = r#"
            [[networks]]
            id = "net-a"
            network_type = "local"
            qos_policy_id = "slow"

            [[networks]]
            id = "net-b"
            network_type = "local"

            [[ports]]
            id = "vm1"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:01"
            binding = { driver = "mem" }

            [[ports]]
            id = "vm2"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:02"
            binding = { driver = "mem" }
            qos_policy_id = "marked"

            [[ports]]
            id = "vm3"
            network_id = "net-b"
            mac_address = "fa:16:3e:00:00:03"
            binding = { driver = "mem" }

            [[qos_policies]]
            id = "slow"
            rules = [{ type = "bandwidth_limit", max_kbps = 2000 }]

            [[qos_policies]]
            id = "marked"
            rules = [{ type = "dscp_marking", dscp_mark = 46 }]
        "#;
        let valid = validate(&DesiredState::from_toml_str(text).unwrap()).unwrap();
        let c = compile(&valid, &Identities::default(), 1).unwrap();
        let id = |p: &str| c.identities.port(&format!("port:{p}")).unwrap();
        let snap = &c.snapshot;
        let slow = ByteRate {
            max_kbps: 2000,
            burst_kbit: 1600,
        };
        assert_eq!(
            snap.qos(id("vm1")),
            Some(&PortQos {
                egress: Some(slow),
                ..PortQos::default()
            })
        );
        assert_eq!(
            snap.qos(id("vm2")),
            Some(&PortQos {
                dscp: Some(46),
                ..PortQos::default()
            }),
            "the port's policy replaces the network's"
        );
        assert_eq!(snap.qos(id("vm3")), None);
        assert!(snap.port_stages(id("vm1")).contains(Stage::QosEgress));
        assert!(snap.port_stages(id("vm2")).contains(Stage::QosEgress));
        assert!(!snap.port_stages(id("vm3")).contains(Stage::QosEgress));
        assert!(!snap.port_stages(id("vm3")).contains(Stage::QosIngress));
    }

    #[test]
    fn identities_are_stable_across_generations() {
        let first = compile(&state(false), &Identities::default(), 1).unwrap();
        assert_eq!(first.ports.len(), 3);
        let vm1 = first.identities.port("port:vm1").unwrap();
        let second = compile(&state(true), &first.identities, 2).unwrap();
        assert_eq!(
            second.identities.port("port:vm1"),
            Some(vm1),
            "existing ports keep their id"
        );
        let vm0 = second.identities.port("port:vm0").unwrap();
        assert!(
            first.ports.iter().all(|p| p.id != vm0),
            "a new port gets a fresh id"
        );
        assert_eq!(second.identities.networks, first.identities.networks);
        // Removing vm0 and adding it back gives it a new id (ids are reused late).
        let third = compile(&state(false), &second.identities, 3).unwrap();
        assert_eq!(third.identities.port("port:vm0"), None);
        let fourth = compile(&state(true), &third.identities, 4).unwrap();
        assert_ne!(fourth.identities.port("port:vm0"), Some(vm0));
        assert_eq!(fourth.snapshot.generation(), 4);
    }

    /// A router on two tenant subnets with an external gateway and an extra route; the
    /// `up` flag sets net-b's admin state.
    fn routed(up: bool) -> Validated {
        let text = format!(
            r#"
            [[networks]]
            id = "net-a"
            network_type = "local"
            [[networks]]
            id = "net-b"
            network_type = "local"
            admin_state_up = {up}
            [[networks]]
            id = "ext"
            network_type = "local"
            [[subnets]]
            id = "sub-a"
            network_id = "net-a"
            cidr = "198.18.1.0/24"
            gateway_ip = "198.18.1.1"
            [[subnets]]
            id = "sub-b"
            network_id = "net-b"
            cidr = "198.18.2.0/24"
            gateway_ip = "198.18.2.1"
            [[subnets]]
            id = "sub-ext"
            network_id = "ext"
            cidr = "203.0.113.0/25"
            gateway_ip = "203.0.113.1"
            [[routers]]
            id = "r1"
            interfaces = ["sub-a", "sub-b"]
            external_gateway_info = {{ network_id = "ext", external_fixed_ip = "203.0.113.10" }}
            routes = [{{ destination = "198.19.0.0/16", nexthop = "198.18.2.254" }}]
            "#
        );
        validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap()
    }

    /// Three routers on one external network (r1 and r2 of project p1, r3 of p2, r4 of p1
    /// without a gateway) and the labels `labels` (TOML).
    fn metered(labels: &str) -> Validated {
        let text = format!(
            r#"
            [[networks]]
            id = "ext"
            network_type = "local"
            [[subnets]]
            id = "sub-ext"
            network_id = "ext"
            cidr = "203.0.113.0/24"
            gateway_ip = "203.0.113.1"
            [[routers]]
            id = "r1"
            project_id = "p1"
            external_gateway_info = {{ network_id = "ext", external_fixed_ip = "203.0.113.10" }}
            [[routers]]
            id = "r2"
            project_id = "p1"
            external_gateway_info = {{ network_id = "ext", external_fixed_ip = "203.0.113.11" }}
            [[routers]]
            id = "r3"
            project_id = "p2"
            external_gateway_info = {{ network_id = "ext", external_fixed_ip = "203.0.113.12" }}
            [[routers]]
            id = "r4"
            project_id = "p1"
            {labels}
            "#
        );
        validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap()
    }

    fn meters(ids: &Identities) -> Vec<(String, String, u16)> {
        ids.meters()
            .map(|(l, r, s)| (l.to_owned(), r.to_owned(), s))
            .collect()
    }

    #[test]
    fn labels_are_counted_on_their_projects_routers_and_keep_their_slots() {
        let shared = r#"
            [[metering_labels]]
            id = "all"
            shared = true
            rules = [{ direction = "egress", remote_ip_prefix = "0.0.0.0/0" }]
        "#;
        let project = r#"
            [[metering_labels]]
            id = "p1-label"
            project_id = "p1"
            rules = [{ direction = "ingress", remote_ip_prefix = "198.18.0.0/15" }]
        "#;
        let first = compile(
            &metered(&format!("{shared}{project}")),
            &Identities::default(),
            1,
        )
        .unwrap();
        let pairs: Vec<(String, String)> = meters(&first.identities)
            .into_iter()
            .map(|(l, r, _)| (l, r))
            .collect();
        let pair = |l: &str, r: &str| (l.to_owned(), r.to_owned());
        // The shared label on every router with a gateway, the project's on its own.
        assert_eq!(
            pairs,
            vec![
                pair("all", "r1"),
                pair("all", "r2"),
                pair("all", "r3"),
                pair("p1-label", "r1"),
                pair("p1-label", "r2"),
            ]
        );
        let routing = first.snapshot.routing();
        let has: Vec<bool> = routing
            .routers()
            .iter()
            .map(|r| r.metering.is_some())
            .collect();
        assert_eq!(
            has,
            [true, true, true, false],
            "r4 has no gateway to count at"
        );
        let slots: HashSet<u16> = meters(&first.identities).iter().map(|m| m.2).collect();
        assert_eq!(slots.len(), 5, "one slot per pair");
        // A change that does not touch the labels keeps every slot.
        let again = compile(
            &metered(&format!("{shared}{project}")),
            &first.identities,
            2,
        )
        .unwrap();
        assert_eq!(meters(&again.identities), meters(&first.identities));
        // The project label removed, then added again: its pairs get new slots, the
        // shared label keeps its own.
        let without = compile(&metered(shared), &again.identities, 3).unwrap();
        assert_eq!(meters(&without.identities), meters(&first.identities)[..3]);
        let back = compile(
            &metered(&format!("{shared}{project}")),
            &without.identities,
            4,
        )
        .unwrap();
        let before: Vec<u16> = meters(&first.identities)[3..].iter().map(|m| m.2).collect();
        let after: Vec<u16> = meters(&back.identities)[3..].iter().map(|m| m.2).collect();
        assert!(
            before.iter().all(|s| !after.contains(s)),
            "{before:?} {after:?}"
        );
        // No labels: no router pays for metering.
        let none = compile(&metered(""), &back.identities, 5).unwrap();
        assert!(meters(&none.identities).is_empty());
        assert!(none
            .snapshot
            .routing()
            .routers()
            .iter()
            .all(|r| r.metering.is_none()));
    }

    #[test]
    fn routers_compile_to_interfaces_routes_and_a_stable_mac() {
        let first = compile(&routed(true), &Identities::default(), 1).unwrap();
        let routing = first.snapshot.routing();
        let [r] = routing.routers() else {
            panic!("one router: {routing:?}")
        };
        assert_eq!(r.mac.0, [0x02, 0x70, 0x6c, 0, 0, 1]);
        let ips: Vec<Ipv4Addr> = r
            .interfaces
            .iter()
            .map(|&i| Ipv4Addr::from(routing.interface(i).unwrap().ip))
            .collect();
        assert_eq!(
            ips,
            [
                Ipv4Addr::new(198, 18, 1, 1),
                Ipv4Addr::new(198, 18, 2, 1),
                Ipv4Addr::new(203, 0, 113, 10)
            ]
        );
        let via = |dst: [u8; 4]| r.lookup(u32::from(Ipv4Addr::from(dst))).unwrap();
        assert_eq!(via([198, 18, 2, 7]).gateway, 0, "connected");
        assert_eq!(
            Ipv4Addr::from(via([198, 19, 5, 5]).gateway),
            Ipv4Addr::new(198, 18, 2, 254),
            "the extra route"
        );
        assert_eq!(
            Ipv4Addr::from(via([203, 0, 113, 200]).gateway),
            Ipv4Addr::new(203, 0, 113, 1),
            "the default route via the external subnet's gateway"
        );
        // The uid, and so the MAC, stays across generations.
        let second = compile(&routed(true), &first.identities, 2).unwrap();
        assert_eq!(second.snapshot.routing().routers()[0].mac, r.mac);

        // net-b down: its interface and the route through it are gone.
        let down = compile(&routed(false), &second.identities, 3).unwrap();
        let r = &down.snapshot.routing().routers()[0];
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(
            Ipv4Addr::from(
                r.lookup(u32::from(Ipv4Addr::new(198, 19, 5, 5)))
                    .unwrap()
                    .gateway
            ),
            Ipv4Addr::new(203, 0, 113, 1),
            "falls back to the default route"
        );
    }

    #[test]
    fn compile_does_not_touch_the_identities_in_use() {
        let ids = Identities::default();
        let compiled = compile(&state(true), &ids, 1).unwrap();
        assert_eq!(ids, Identities::default());
        assert_ne!(compiled.identities, ids);
    }

    /// A network above `MAX_MTU` compiles when every port its frames cross carries chains
    /// (tap, vhost-user and mem ports, a mem or tap uplink), and is refused at its MTU's
    /// path, naming the port, when one does not (AF_XDP, a subport, a tunnel).
    #[test]
    fn jumbo_networks_compile_where_every_port_carries_chains() {
        assert!(i64::from(MAX_MTU) < crate::validate::JUMBO_MTU);
        assert!(i64::from(MAX_MTU) >= crate::validate::MIN_MTU);
        let state = |mtu: u16, uplink: &str, network: &str, port: &str| {
            let text = format!(
                r#"
                [[uplinks]]
                name = "uplink0"
                physnet = "physnet1"
                binding = {uplink}
                mtu = 9000

                [[networks]]
                id = "net-j"
                {network}
                mtu = {mtu}

                [[ports]]
                id = "vm-j"
                network_id = "net-j"
                mac_address = "fa:16:3e:00:00:01"
                binding = {port}
                "#
            );
            validate(&DesiredState::from_toml_str(&text).unwrap()).expect("a valid MTU")
        };
        let mem = r#"{ driver = "mem" }"#;
        let tap = r#"{ driver = "tap", interface = "tapj" }"#;
        let xdp = r#"{ driver = "afxdp", interface = "vethj" }"#;
        let vhost = r#"{ driver = "vhost-user", socket = "/run/pollux-j.sock", mode = "server" }"#;
        let local = r#"network_type = "local""#;
        let flat = r#"network_type = "flat"
                physical_network = "physnet1""#;
        let compiles = |mtu, uplink, network, port| {
            compile(
                &state(mtu, uplink, network, port),
                &Identities::default(),
                1,
            )
        };
        let refusal = |mtu, uplink, network, port| match compiles(mtu, uplink, network, port) {
            Err(CompileError::Unsupported { path, what }) => {
                assert_eq!(path, "networks[0].mtu");
                what
            }
            other => panic!("refused as unsupported: {:?}", other.map(|_| ())),
        };
        let tap_uplink = r#"{ driver = "tap", interface = "tapu" }"#;
        let xdp_uplink = r#"{ driver = "afxdp", interface = "vethu" }"#;
        for port in [mem, tap, vhost] {
            assert!(compiles(9000, xdp_uplink, local, port).is_ok());
            assert!(compiles(9000, tap_uplink, flat, port).is_ok());
        }
        assert!(
            compiles(MAX_MTU, xdp_uplink, flat, xdp).is_ok(),
            "one buffer: anything"
        );
        let err = refusal(MAX_MTU + 1, xdp_uplink, local, xdp);
        assert!(err.contains("ports[0] (vm-j) is an AF_XDP port"), "{err}");
        assert!(compiles(9000, mem, flat, vhost).is_ok());
        let err = refusal(9000, mem, local, xdp);
        assert!(err.contains("ports[0] (vm-j) is an AF_XDP port"), "{err}");
        let err = refusal(9000, xdp_uplink, flat, tap);
        assert!(err.starts_with("9000 is above 1774"), "{err}");
        assert!(err.contains("uplink uplink0 is an AF_XDP"), "{err}");
    }

    const OVERLAY: &str = r#"
            [agent]
            host = "compute-1"

            [[hosts]]
            name = "compute-1"
            tunnel_ip = "198.18.255.1"

            [[hosts]]
            name = "compute-2"
            tunnel_ip = "198.18.255.2"

            [[hosts]]
            name = "compute-3"
            tunnel_ip = "198.18.255.3"

            [[uplinks]]
            name = "uplink0"
            physnet = "physnet1"
            binding = { driver = "mem" }
            local_ip = "198.18.255.1/24"

            [[networks]]
            id = "net-x"
            network_type = "vxlan"
            segmentation_id = 5000

            [[subnets]]
            id = "sub-x"
            network_id = "net-x"
            cidr = "203.0.113.0/24"
            enable_dhcp = false

            [[ports]]
            id = "vm1"
            network_id = "net-x"
            mac_address = "fa:16:3e:00:00:01"
            fixed_ips = [{ subnet_id = "sub-x", ip_address = "203.0.113.11" }]
            binding = { driver = "mem" }

            [[ports]]
            id = "vm2"
            network_id = "net-x"
            mac_address = "fa:16:3e:00:00:02"
            fixed_ips = [{ subnet_id = "sub-x", ip_address = "203.0.113.12" }]
            binding_host_id = "compute-2"
            "#;

    #[test]
    fn vxlan_compiles_to_tunnels_l2pop_and_arp_entries() {
        let v = validate(&DesiredState::from_toml_str(OVERLAY).unwrap()).unwrap();
        let c = compile(&v, &Identities::default(), 1).unwrap();
        // Only ports of this host are bound; compute-3 has no port, so no tunnel.
        let keys: Vec<&str> = c.ports.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["uplink:uplink0", "port:vm1"]);
        let tunnel = c.identities.port("host:compute-2").expect("a tunnel port");
        assert!(c.identities.port("host:compute-3").is_none());
        let ov = c.snapshot.overlay();
        assert!(ov.enabled());
        assert_eq!(ov.local_ip(), u32::from(Ipv4Addr::new(198, 18, 255, 1)));
        let slot = ov.network_of(Encapsulation::Vxlan, 5000).unwrap();
        assert_eq!(ov.flood_tunnels(slot), &[tunnel]);
        assert_eq!(
            ov.peer(slot, u32::from(Ipv4Addr::new(198, 18, 255, 2))),
            Some(tunnel)
        );
        let vm2 = pollux_dataplane::ident::PackedMac::from([0xfa, 0x16, 0x3e, 0, 0, 2]);
        let key = pollux_dataplane::ident::FdbKey::packed(slot, vm2);
        assert_eq!(c.snapshot.static_mac(key), Some(tunnel));
        assert_eq!(
            ov.arp_answer(slot, u32::from(Ipv4Addr::new(203, 0, 113, 12))),
            Some(vm2)
        );
        assert!(ov
            .arp_answer(slot, u32::from(Ipv4Addr::new(203, 0, 113, 11)))
            .is_some());
        // The tunnel port's id is stable across generations.
        let again = compile(&v, &c.identities, 2).unwrap();
        assert_eq!(again.identities.port("host:compute-2"), Some(tunnel));
    }

    #[test]
    fn geneve_and_gre_compile_to_their_encapsulation() {
        for (ty, kind) in [
            ("geneve", Encapsulation::Geneve),
            ("gre", Encapsulation::Gre),
        ] {
            let toml = OVERLAY.replace(
                "network_type = \"vxlan\"",
                &format!("network_type = \"{ty}\""),
            );
            let v = validate(&DesiredState::from_toml_str(&toml).unwrap()).unwrap();
            let c = compile(&v, &Identities::default(), 1).unwrap();
            let ov = c.snapshot.overlay();
            let slot = ov.network_of(kind, 5000).expect("the network");
            assert!(ov.network_of(Encapsulation::Vxlan, 5000).is_none());
            assert_eq!(
                ov.tunnel(slot),
                Some(pollux_dataplane::overlay::TunnelId {
                    encapsulation: kind,
                    id: 5000
                })
            );
            let tunnel = c.identities.port("host:compute-2").expect("a tunnel port");
            assert_eq!(ov.flood_tunnels(slot), &[tunnel]);
        }
    }

    /// [`OVERLAY`] with a gateway on sub-x and router r1 on it, run by `host` (absent:
    /// this host).
    fn overlay_with_router(host: Option<&str>) -> Validated {
        let bound = host.map_or(String::new(), |h| format!("binding_host_id = \"{h}\"\n"));
        let text = format!(
            "{}\n[[routers]]\nid = \"r1\"\ninterfaces = [\"sub-x\"]\n\
             mac_address = \"fa:16:3e:00:0f:01\"\n{bound}",
            OVERLAY.replace(
                "enable_dhcp = false",
                "enable_dhcp = false\ngateway_ip = \"203.0.113.1\""
            )
        );
        validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn a_router_of_another_host_is_its_l2population_entry() {
        // r1 runs on compute-3, which has no port on net-x: it joins the flood list for the
        // router alone.
        let c = compile(
            &overlay_with_router(Some("compute-3")),
            &Identities::default(),
            1,
        )
        .unwrap();
        assert!(
            c.snapshot.routing().routers().is_empty(),
            "r1 runs elsewhere"
        );
        assert!(c.identities.routers.is_empty());
        let t2 = c.identities.port("host:compute-2").unwrap();
        let t3 = c
            .identities
            .port("host:compute-3")
            .expect("a tunnel to r1's host");
        let ov = c.snapshot.overlay();
        let slot = ov.network_of(Encapsulation::Vxlan, 5000).unwrap();
        assert_eq!(ov.flood_tunnels(slot), &[t2, t3]);
        assert_eq!(
            ov.peer(slot, u32::from(Ipv4Addr::new(198, 18, 255, 3))),
            Some(t3)
        );
        let r1 = pollux_dataplane::ident::PackedMac::from([0xfa, 0x16, 0x3e, 0, 0x0f, 1]);
        let key = pollux_dataplane::ident::FdbKey::packed(slot, r1);
        assert_eq!(c.snapshot.static_mac(key), Some(t3));
        assert_eq!(
            ov.arp_answer(slot, u32::from(Ipv4Addr::new(203, 0, 113, 1))),
            Some(r1)
        );
    }

    #[test]
    fn a_router_of_this_host_serves_an_overlay_network_with_its_given_mac() {
        for host in [None, Some("compute-1")] {
            let v = overlay_with_router(host);
            let c = compile(&v, &Identities::default(), 1).unwrap();
            let routers = c.snapshot.routing().routers();
            assert_eq!(routers.len(), 1);
            assert_eq!(routers[0].mac.0, [0xfa, 0x16, 0x3e, 0, 0x0f, 1]);
            // Its own host answers ARP for it from the router, not the responder.
            let ov = c.snapshot.overlay();
            let slot = ov.network_of(Encapsulation::Vxlan, 5000).unwrap();
            assert_eq!(
                ov.arp_answer(slot, u32::from(Ipv4Addr::new(203, 0, 113, 1))),
                None
            );
            assert!(c.identities.port("host:compute-3").is_none());
        }
    }

    #[test]
    fn what_the_overlay_does_not_do_is_refused_with_a_path() {
        let refused = |extra: &str, edit: &dyn Fn(&str) -> String| {
            let text = edit(&format!("{OVERLAY}{extra}"));
            let v = validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap();
            compile(&v, &Identities::default(), 1)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("", &|t| t.replace("198.18.255.2\"", "198.18.254.2\"")),
            "hosts[1].tunnel_ip: 198.18.254.2 is outside 198.18.255.0/24, the subnet of \
             local_ip: tunnel endpoints behind a router of the underlay are not supported yet"
        );
        let on_local = "\n[[networks]]\nid = \"net-l\"\nnetwork_type = \"local\"\n\n\
                        [[ports]]\nid = \"vm3\"\nnetwork_id = \"net-l\"\n\
                        mac_address = \"fa:16:3e:00:00:03\"\nbinding_host_id = \"compute-2\"\n";
        assert_eq!(
            refused(on_local, &|t| t.to_owned()),
            "ports[2].binding_host_id: ports of other hosts are supported on vxlan, geneve and gre networks only"
        );
    }

    /// A router on net-a with one VM port there; `mac` is the port's last MAC byte.
    fn routed_port(mac: u8, gateway: &str) -> Validated {
        let text = format!(
            r#"
            [[networks]]
            id = "net-a"
            network_type = "local"
            [[subnets]]
            id = "sub-a"
            network_id = "net-a"
            cidr = "198.18.1.0/24"
            gateway_ip = "{gateway}"
            [[routers]]
            id = "r1"
            interfaces = ["sub-a"]
            [[ports]]
            id = "vm1"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:{mac:02x}"
            fixed_ips = [{{ subnet_id = "sub-a", ip_address = "198.18.1.10" }}]
            binding = {{ driver = "mem" }}
            "#
        );
        validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap()
    }

    /// The routers taken from the running snapshot after a change of a port are those a
    /// compile from scratch makes; taken after a change of a router they are not, which
    /// the comparison the test builds make sees.
    #[test]
    fn routers_taken_from_the_running_snapshot_are_what_a_compile_makes() {
        let first = compile(&routed_port(1, "198.18.1.1"), &Identities::default(), 1).unwrap();
        let port_changed = routed_port(2, "198.18.1.1");
        let reused =
            compile_reusing(&port_changed, &first.identities, 2, Some(&first.snapshot)).unwrap();
        let whole = compile(&port_changed, &first.identities, 2).unwrap();
        assert!(reused.snapshot.differences(&whole.snapshot).is_empty());
        let vm1 = whole.identities.vm_port("vm1").unwrap();
        let slot = whole
            .snapshot
            .network_slot(whole.identities.network_uid("net-a").unwrap());
        assert_eq!(
            reused
                .snapshot
                .static_mac(pollux_dataplane::ident::FdbKey::new(
                    slot.unwrap(),
                    pollux_dataplane::wire::EthernetAddress([0xfa, 0x16, 0x3e, 0, 0, 2])
                )),
            Some(vm1),
            "the port's new MAC is in the snapshot"
        );

        let router_changed = routed_port(1, "198.18.1.253");
        let stale =
            compile_inner(&router_changed, &first.identities, 2, Some(&first.snapshot)).unwrap();
        let whole = compile(&router_changed, &first.identities, 2).unwrap();
        assert!(stale
            .snapshot
            .differences(&whole.snapshot)
            .contains(&"routing"));
    }
}
