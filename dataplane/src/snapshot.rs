//! The immutable forwarding configuration that workers run: one generation of it.
//!
//! The control plane compiles the desired state into a [`Snapshot`] off the hot path
//! (all hashing, sorting and validation happens in [`SnapshotBuilder::build`]); workers
//! only read it. Mutable forwarding state (learned MACs and later connections, sessions)
//! lives in the workers, keyed by identities that stay stable across generations.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::overlay::{
    Encapsulation, EndpointSpec, Overlay, OverlayBuilder, OverlayNetworks, TunnelId,
};
use crate::pipeline::{Stage, StageSet};
use crate::port::PortId;
use crate::port_security::PortSecurity;
use crate::qos::PortQos;
use crate::routing::{RouterSpec, Routing, RoutingError};
use crate::secgroup::{SgPolicy, SgTables};
use crate::slowpath::{NetworkService, NetworkServices, ServiceId, SlowPathConfig};
use crate::table::U64Map;
use crate::trunk::Trunks;

pub use crate::ident::NetworkUid;
use crate::ident::{FdbKey, NetworkSlot, PackedMac};

/// A physical network (Neutron's `physical_network`, the left side of `bridge_mappings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhysnetId(pub u16);

/// How a network is carried: Neutron's `network_type` with its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Only between ports of this host.
    Local,
    /// Untagged on the uplink of `physnet`.
    Flat {
        /// The physical network.
        physnet: PhysnetId,
    },
    /// 802.1Q-tagged with `vid` on the uplink of `physnet`.
    Vlan {
        /// The physical network.
        physnet: PhysnetId,
        /// VLAN ID, 1..=4094.
        vid: u16,
    },
    /// VXLAN-encapsulated with `vni` between tunnel endpoints (see [`crate::overlay`]).
    Vxlan {
        /// VXLAN network identifier, 1..=16777215.
        vni: u32,
    },
    /// Geneve-encapsulated (without options) with `vni` between tunnel endpoints.
    Geneve {
        /// Geneve virtual network identifier, 1..=16777215.
        vni: u32,
    },
    /// GRE-encapsulated with `key` between tunnel endpoints.
    Gre {
        /// GRE key, 1..=4294967295.
        key: u32,
    },
}

impl Segment {
    /// The encapsulation and identifier of an overlay segment.
    pub fn tunnel(self) -> Option<TunnelId> {
        let (encapsulation, id) = match self {
            Segment::Vxlan { vni } => (Encapsulation::Vxlan, vni),
            Segment::Geneve { vni } => (Encapsulation::Geneve, vni),
            Segment::Gre { key } => (Encapsulation::Gre, key),
            Segment::Local | Segment::Flat { .. } | Segment::Vlan { .. } => return None,
        };
        Some(TunnelId { encapsulation, id })
    }

    /// The physical network carrying this segment, if any.
    pub fn physnet(self) -> Option<PhysnetId> {
        match self {
            Segment::Local
            | Segment::Vxlan { .. }
            | Segment::Geneve { .. }
            | Segment::Gre { .. } => None,
            Segment::Flat { physnet } | Segment::Vlan { physnet, .. } => Some(physnet),
        }
    }
}

/// Learning parameters, Neutron/OVS-style defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Config {
    /// Seconds after which an idle learned MAC is forgotten (OVS `mac-aging-time`).
    pub mac_aging_secs: u32,
    /// Most learned MACs per network (OVS `mac-table-size` is per bridge; per network
    /// keeps one tenant from filling another's table).
    pub mac_limit_per_network: u32,
    /// Most learned MACs per VM port (one that bridges other hosts, with port security
    /// off), so that no VM fills its network's quota.
    pub mac_limit_per_port: u32,
}

impl Default for L2Config {
    fn default() -> Self {
        L2Config {
            mac_aging_secs: 300,
            mac_limit_per_network: 8192,
            mac_limit_per_port: 1024,
        }
    }
}

/// Most networks one snapshot can hold (slots are `u16`, [`NetworkSlot::NONE`] is
/// reserved).
pub const MAX_NETWORKS: usize = NetworkSlot::NONE.index();

/// What a port is in the active configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PortRole {
    /// Not configured.
    #[default]
    Absent,
    /// A VM port: an untagged member of one network.
    Access {
        /// Network slot.
        network: NetworkSlot,
        /// The port's own MAC ([`PackedMac::NONE`] without one); source MACs equal to it
        /// need no learning.
        mac: PackedMac,
    },
    /// An uplink to a physical network, carrying its flat and VLAN networks.
    Uplink {
        /// Index into the snapshot's VLAN maps.
        vlan_map: VlanMapIndex,
        /// The physical network.
        physnet: PhysnetId,
    },
    /// A remote host's tunnel endpoint (no driver): frames sent to it are encapsulated
    /// towards that host, decapsulated frames from it come in as received on it.
    Tunnel,
}

/// One network in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkEntry {
    /// Stable identity.
    pub uid: NetworkUid,
    /// How it is carried.
    pub segment: Segment,
    /// VID on its uplink, 0 when it leaves the uplink untagged (or has none).
    uplink_vid: u16,
    /// Some router has an interface here: the L2 stage looks for router MACs and ARP.
    pub routed: bool,
    /// MAC of the network's services (the DHCP server's), or [`PackedMac::NONE`] when it
    /// offers none: the L2 stage sends broadcasts and frames to this MAC to the slow-path
    /// stage.
    pub service_mac: PackedMac,
    /// The metadata proxy serves this network's VMs through its router: the L2 stage sends
    /// frames to a router MAC here through the slow-path stage, which takes TCP to
    /// 169.254.169.254:80 before routing. Off, routed frames never see that stage.
    pub metadata_via_router: bool,
    flood_start: u32,
    flood_len: u32,
}

/// An uplink's VLAN map's position in one snapshot's VLAN maps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct VlanMapIndex(pub u16);

/// VLAN ID → network slot for one uplink.
#[derive(Clone, Debug)]
pub struct VlanMap {
    by_vid: Box<[NetworkSlot; 4096]>,
    untagged: NetworkSlot,
}

impl VlanMap {
    /// Slot of the network a frame belongs to: `tci` is the received 802.1Q TCI, or `None`
    /// for an untagged frame. A priority tag (VID 0) counts as untagged, as 802.1Q requires.
    /// `None` when no network of the physnet uses that VID (or it has no flat network).
    #[inline]
    pub fn network(&self, tci: Option<u16>) -> Option<NetworkSlot> {
        let slot = match tci {
            None => self.untagged,
            Some(t) => match t & 0x0fff {
                0 => self.untagged,
                vid => self.by_vid[usize::from(vid)],
            },
        };
        (slot != NetworkSlot::NONE).then_some(slot)
    }
}

/// An immutable, compiled forwarding configuration. See the module documentation.
pub struct Snapshot {
    generation: u64,
    ports: Box<[PortRole]>,
    /// Per port (by id), the stages its received bursts may pass.
    port_stages: Box<[StageSet]>,
    networks: Box<[NetworkEntry]>,
    flood_ports: Box<[PortId]>,
    /// Shared with the previous generation by a change of ports alone
    /// ([`Snapshot::patch_ports`]), as the other parts no port change touches are.
    vlan_maps: Arc<[VlanMap]>,
    /// Static MACs, keyed by [`FdbKey::get`].
    fdb: U64Map<PortId>,
    l2: L2Config,
    /// Shared with the previous generation when a change leaves every router as it was
    /// ([`SnapshotBuilder::routers_of`]): compiling a thousand routers' tables is most of
    /// what a one-port change would cost otherwise.
    routing: Arc<Routing>,
    /// Per network slot, the services it offers (the slow path's table).
    services: Arc<[NetworkServices]>,
    slow_path: SlowPathConfig,
    /// Per port id, the port-security policy of a VM port that has it on; each shared
    /// with the generation that made it, so that a change of one port copies pointers.
    port_security: Box<[Option<Arc<PortSecurity>>]>,
    /// Per port id, the QoS of a VM port that has a policy.
    qos: Box<[Option<PortQos>]>,
    /// The tunnel endpoint and overlay networks, if any.
    overlay: Arc<Overlay>,
    /// Security groups: per-port compiled rules, address sets, rule names and hits.
    /// Shared (hit counters and all) by a change that touches no port with port security.
    security_groups: Arc<SgTables>,
    /// Trunk parents and their subports.
    trunks: Arc<Trunks>,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field(
                "ports",
                &self
                    .ports
                    .iter()
                    .filter(|p| **p != PortRole::Absent)
                    .count(),
            )
            .field("networks", &self.networks.len())
            .field("static_macs", &self.fdb.len())
            .field("routers", &self.routing.routers().len())
            .finish()
    }
}

fn mac_is_group(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 1
}

fn fmt_mac(mac: [u8; 6]) -> String {
    crate::wire::EthernetAddress(mac).to_string()
}

impl Snapshot {
    /// The empty configuration, generation 0: no ports, so every frame is dropped.
    pub fn empty() -> Self {
        SnapshotBuilder::new()
            .build(0)
            .expect("the empty configuration is valid")
    }

    /// The empty configuration shared by every parked worker. It lives for the whole
    /// process, so a worker that swaps it in never frees anything.
    pub fn parked() -> std::sync::Arc<Snapshot> {
        static PARKED: std::sync::OnceLock<std::sync::Arc<Snapshot>> = std::sync::OnceLock::new();
        std::sync::Arc::clone(PARKED.get_or_init(|| std::sync::Arc::new(Snapshot::empty())))
    }

    /// This configuration's generation number.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Learning parameters.
    #[inline]
    pub fn l2(&self) -> &L2Config {
        &self.l2
    }

    /// Role of a port; `Absent` for unknown ids.
    #[inline]
    pub fn port(&self, port: PortId) -> PortRole {
        self.ports.get(port.index()).copied().unwrap_or_default()
    }

    /// The stages a burst received on `port` may pass (VPP's feature arc of the
    /// interface): only classification and output for a port not configured.
    #[inline]
    pub fn port_stages(&self, port: PortId) -> StageSet {
        self.port_stages
            .get(port.index())
            .copied()
            .unwrap_or(StageSet::BASE)
    }

    /// Number of port slots (one past the highest configured id).
    pub fn port_slots(&self) -> usize {
        self.ports.len()
    }

    /// A network by slot.
    #[inline]
    pub fn network(&self, slot: NetworkSlot) -> Option<&NetworkEntry> {
        self.networks.get(slot.index())
    }

    /// Every network, indexed by slot.
    pub fn networks(&self) -> &[NetworkEntry] {
        &self.networks
    }

    /// The slot of the network with identity `uid` (slots are taken in uid order).
    pub fn network_slot(&self, uid: NetworkUid) -> Option<NetworkSlot> {
        self.networks
            .binary_search_by_key(&uid, |n| n.uid)
            .ok()
            .map(|slot| NetworkSlot(slot as u16))
    }

    /// The DHCP server addresses of network `slot` (host byte order).
    pub fn dhcp_addresses(&self, slot: NetworkSlot) -> &[u32] {
        self.services(slot).addresses_of(ServiceId::DHCP)
    }

    /// The services network `slot` offers (an empty table when it offers none).
    #[inline]
    pub fn services(&self, slot: NetworkSlot) -> &NetworkServices {
        static NONE: NetworkServices = NetworkServices::EMPTY;
        self.services.get(slot.index()).unwrap_or(&NONE)
    }

    /// The slow path's limits.
    pub fn slow_path(&self) -> &SlowPathConfig {
        &self.slow_path
    }

    /// The VLAN map of an uplink (`PortRole::Uplink::vlan_map`).
    #[inline]
    pub fn vlan_map(&self, index: VlanMapIndex) -> Option<&VlanMap> {
        self.vlan_maps.get(usize::from(index.0))
    }

    /// Ports that receive flooded frames of a network, in id order.
    #[inline]
    pub fn flood_ports(&self, slot: NetworkSlot) -> &[PortId] {
        match self.networks.get(slot.index()) {
            Some(n) => {
                let start = n.flood_start as usize;
                &self.flood_ports[start..start + n.flood_len as usize]
            }
            None => &[],
        }
    }

    /// The port-security policy of `port`, if it is a VM port with port security on.
    #[inline]
    pub fn security_groups(&self) -> &SgTables {
        &self.security_groups
    }

    /// The port-security policy of `port`, if it has port security on.
    #[inline]
    pub fn port_security(&self, port: PortId) -> Option<&PortSecurity> {
        self.port_security.get(port.index())?.as_deref()
    }

    /// The QoS of `port`, if it has a policy (its own or its network's).
    #[inline]
    pub fn qos(&self, port: PortId) -> Option<&PortQos> {
        self.qos.get(port.index())?.as_ref()
    }

    /// The overlay tables (empty without a tunnel endpoint).
    #[inline]
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    /// The routers.
    #[inline]
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// The port that owns `mac` statically in a network (a VM port's MAC).
    #[inline]
    pub fn static_mac(&self, key: FdbKey) -> Option<PortId> {
        self.fdb.get(key.get())
    }

    /// Every static FDB entry as `(network slot and MAC, port)`.
    pub fn static_macs(&self) -> impl Iterator<Item = (FdbKey, PortId)> + '_ {
        self.fdb.iter().map(|(k, p)| (FdbKey::from_bits(k), p))
    }

    /// Whether `port` carries network `slot` (so a MAC learned there may be used).
    #[inline]
    pub fn port_serves(&self, port: PortId, slot: NetworkSlot) -> bool {
        match self.port(port) {
            PortRole::Absent => false,
            PortRole::Access { network, .. } => network == slot,
            PortRole::Tunnel => self.overlay.tunnel(slot).is_some(),
            PortRole::Uplink { physnet, .. } => self
                .network(slot)
                .is_some_and(|n| n.segment.physnet() == Some(physnet)),
        }
    }

    /// The parts in which `self` and `other` forward differently (empty when they are the
    /// same configuration), ignoring the generation and the security groups' hit counters:
    /// the check that a configuration compiled from a previous one is what compiling it
    /// from scratch makes. Compares their printed forms, so it is for tests and debug
    /// builds, not for the control thread of a release build.
    pub fn differences(&self, other: &Snapshot) -> Vec<&'static str> {
        let fdb = |s: &Snapshot| {
            let mut entries: Vec<_> = s.static_macs().collect();
            entries.sort_unstable();
            entries
        };
        // A copy's hit counters start from zero.
        let sg = |s: &Snapshot| format!("{:?}", (*s.security_groups).clone());
        let mut out = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        check("ports", self.ports == other.ports);
        check("port_stages", self.port_stages == other.port_stages);
        check("networks", self.networks == other.networks);
        check("flood_ports", self.flood_ports == other.flood_ports);
        check(
            "vlan_maps",
            format!("{:?}", self.vlan_maps) == format!("{:?}", other.vlan_maps),
        );
        check("fdb", fdb(self) == fdb(other));
        check("l2", self.l2 == other.l2);
        check(
            "routing",
            format!("{:?}", self.routing) == format!("{:?}", other.routing),
        );
        check("services", self.services == other.services);
        check("slow_path", self.slow_path == other.slow_path);
        check("port_security", self.port_security == other.port_security);
        check("qos", self.qos == other.qos);
        check(
            "overlay",
            format!("{:?}", self.overlay) == format!("{:?}", other.overlay),
        );
        check("security_groups", sg(self) == sg(other));
        check("trunks", self.trunks == other.trunks);
        out
    }

    /// This configuration with the VM ports `old` taken out and `new` put in, as
    /// generation `generation`: what a build from scratch of the whole configuration so
    /// changed makes, at the cost of the ports touched (and a copy of the per-port arrays
    /// and the static MACs); every other part (routers, VLAN maps, services, overlay,
    /// trunks, and the security groups when no port with port security is touched) is
    /// shared with `self`. `Ok(None)` when the change reaches beyond its ports (a port of
    /// a trunk or an overlay network, a network not in `self`, a security-group policy
    /// `self` does not hold or no longer used, the first or last port with groups or an
    /// ingress QoS, a full MAC table, with an overlay a change of the number of port
    /// slots): the caller builds from scratch. The control
    /// plane's test builds compare every result with a build from scratch
    /// ([`Snapshot::differences`]).
    pub fn patch_ports(
        &self,
        generation: u64,
        old: &[AccessPort],
        new: &[AccessPort],
    ) -> Result<Option<Snapshot>, BuildError> {
        if !self.trunks.is_empty() {
            return Ok(None);
        }
        let mut ports = self.ports.to_vec();
        let mut port_stages = self.port_stages.to_vec();
        let mut port_security = self.port_security.to_vec();
        let mut qos = self.qos.to_vec();
        let mut fdb = self.fdb.clone();
        let sg_touched = old
            .iter()
            .chain(new)
            .any(|p| p.port_security.is_some() || p.security_groups.is_some());
        let mut sg = sg_touched.then(|| (*self.security_groups).clone());
        let mut touched: Vec<NetworkSlot> = Vec::new();
        for p in old {
            let i = p.id.index();
            let Some(PortRole::Access { network, .. }) = ports.get(i).copied() else {
                return Ok(None);
            };
            if self.overlay.tunnel(network).is_some() {
                return Ok(None);
            }
            for mac in &p.macs {
                let key = FdbKey::packed(network, PackedMac::from(*mac)).get();
                if fdb.remove(key) != Some(p.id) {
                    return Ok(None);
                }
            }
            ports[i] = PortRole::Absent;
            port_stages[i] = StageSet::BASE;
            port_security[i] = None;
            qos[i] = None;
            if let Some(sg) = sg.as_mut() {
                sg.set_port(p.id, None);
            }
            touched.push(network);
        }
        for p in new {
            if p.id == PortId::NONE {
                return Err(BuildError::ReservedPortId);
            }
            let Some(slot) = self.network_slot(p.network) else {
                return Ok(None);
            };
            if self.overlay.tunnel(slot).is_some() {
                return Ok(None);
            }
            let i = p.id.index();
            if ports.len() <= i {
                ports.resize(i + 1, PortRole::Absent);
                port_stages.resize(i + 1, StageSet::BASE);
                port_security.resize(i + 1, None);
                qos.resize(i + 1, None);
            }
            if ports[i] != PortRole::Absent {
                return Err(BuildError::DuplicatePort(p.id));
            }
            for &mac in &p.macs {
                if mac_is_group(mac) {
                    return Err(BuildError::GroupMac { port: p.id, mac });
                }
                match fdb.insert(FdbKey::packed(slot, PackedMac::from(mac)).get(), p.id) {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        return Err(BuildError::DuplicateMac {
                            network: p.network,
                            mac,
                        })
                    }
                    Err(_) => return Ok(None),
                }
            }
            ports[i] = PortRole::Access {
                network: slot,
                mac: p
                    .macs
                    .first()
                    .map_or(PackedMac::NONE, |&m| PackedMac::from(m)),
            };
            if p.security_groups.is_some() && p.port_security.is_none() {
                return Err(BuildError::SecurityGroupsWithoutPortSecurity(p.id));
            }
            port_security[i] = p.port_security.clone().map(Arc::new);
            qos[i] = p.qos;
            if let Some(sg) = sg.as_mut() {
                let policy = p.security_groups.as_ref().map(|(pol, ra)| (pol, &ra[..]));
                if !sg.set_port(p.id, policy) {
                    return Ok(None);
                }
            }
            touched.push(slot);
        }
        // As long as a build from scratch makes the per-port arrays: one past the last
        // port it has.
        let len = ports
            .iter()
            .rposition(|r| *r != PortRole::Absent)
            .map_or(0, |last| last + 1);
        // The overlay's per-port table is as long as the ports' (the patch shares it).
        if self.overlay.enabled() && len != self.ports.len() {
            return Ok(None);
        }
        ports.truncate(len);
        port_stages.truncate(len);
        port_security.truncate(len);
        qos.truncate(len);
        // What every port's stages depend on must stay as it was.
        if let Some(sg) = sg.as_mut() {
            if !sg.settle() || sg.any() != self.security_groups.any() {
                return Ok(None);
            }
        }
        let ingress_qos = |q: &[Option<PortQos>]| q.iter().flatten().any(|q| q.ingress.is_some());
        let qos_ingress = ingress_qos(&self.qos);
        if ingress_qos(&qos) != qos_ingress {
            return Ok(None);
        }
        let overlay_l3 = self.overlay.endpoint_uplink().is_some()
            && self.networks.iter().enumerate().any(|(slot, n)| {
                n.routed && self.overlay.tunnel(NetworkSlot(slot as u16)).is_some()
            });
        for p in new {
            let PortRole::Access { network, .. } = ports[p.id.index()] else {
                unreachable!("put in above");
            };
            let net = &self.networks[network.index()];
            let mut set = StageSet::BASE.with(Stage::L2);
            if net.routed {
                set = set.with(Stage::L3);
                if overlay_l3 {
                    set = set.with(Stage::TunnelEncap);
                }
            }
            if net.service_mac != PackedMac::NONE || net.metadata_via_router {
                set = set.with(Stage::SlowPath);
            }
            if p.port_security.is_some() {
                set = set.with(Stage::PortSecurity);
            }
            if p.security_groups.is_some() {
                set = set.with(Stage::SgEgress);
            }
            if self.security_groups.any() {
                set = set.with(Stage::SgIngress);
            }
            if p.qos.is_some_and(|q| q.acts_on_egress()) {
                set = set.with(Stage::QosEgress);
            }
            if qos_ingress {
                set = set.with(Stage::QosIngress);
            }
            for &stage in &p.stages {
                set = set.with(stage);
            }
            port_stages[p.id.index()] = set;
        }
        touched.sort_unstable();
        touched.dedup();
        let mut networks = self.networks.to_vec();
        let mut flood_ports = Vec::with_capacity(self.flood_ports.len() + new.len());
        for (slot, n) in networks.iter_mut().enumerate() {
            let slot = NetworkSlot(slot as u16);
            let before = self.flood_ports(slot);
            let start = flood_ports.len();
            if touched.binary_search(&slot).is_ok() {
                let mut list: Vec<PortId> = before
                    .iter()
                    .copied()
                    .filter(|id| !old.iter().any(|p| p.id == *id))
                    .collect();
                list.extend(
                    new.iter()
                        .filter(|p| {
                            matches!(ports[p.id.index()],
                                PortRole::Access { network, .. } if network == slot)
                        })
                        .map(|p| p.id),
                );
                list.sort_unstable();
                flood_ports.extend(list);
            } else {
                flood_ports.extend_from_slice(before);
            }
            n.flood_start = start as u32;
            n.flood_len = (flood_ports.len() - start) as u32;
        }
        Ok(Some(Snapshot {
            generation,
            ports: ports.into(),
            port_stages: port_stages.into(),
            networks: networks.into(),
            flood_ports: flood_ports.into(),
            vlan_maps: Arc::clone(&self.vlan_maps),
            fdb,
            l2: self.l2,
            routing: Arc::clone(&self.routing),
            services: Arc::clone(&self.services),
            slow_path: self.slow_path,
            port_security: port_security.into(),
            qos: qos.into(),
            overlay: Arc::clone(&self.overlay),
            security_groups: sg
                .map(Arc::new)
                .unwrap_or_else(|| Arc::clone(&self.security_groups)),
            trunks: Arc::clone(&self.trunks),
        }))
    }

    /// The 802.1Q VID a frame of network `slot` carries when leaving through `port`, or
    /// `None` when it leaves untagged.
    #[inline]
    pub fn egress_vid(&self, port: PortId, slot: NetworkSlot) -> Option<u16> {
        match self.ports.get(port.index()) {
            Some(PortRole::Uplink { .. }) => self
                .networks
                .get(slot.index())
                .map(|n| n.uplink_vid)
                .filter(|&vid| vid != 0),
            // A trunk's subport: its frames carry its VLAN ID on the parent's interface.
            Some(PortRole::Access { .. }) => self.trunks.parent(port).map(|(_, vid)| vid),
            _ => None,
        }
    }

    /// [`Snapshot::egress_vid`] and [`Snapshot::transmit_port`] in one lookup of the
    /// port: how a frame of network `slot` leaves for `port`, `(tag, transmitting port)`.
    #[inline]
    pub fn egress(&self, port: PortId, slot: NetworkSlot) -> (Option<u16>, PortId) {
        match self.ports.get(port.index()) {
            Some(PortRole::Uplink { .. }) => (self.egress_vid(port, slot), port),
            Some(PortRole::Access { .. }) => match self.trunks.parent(port) {
                Some((parent, vid)) => (Some(vid), parent),
                None => (None, port),
            },
            _ => (None, self.transmit_port(port)),
        }
    }

    /// The trunks: parents, their subports and VLAN IDs.
    #[inline]
    pub fn trunks(&self) -> &Trunks {
        &self.trunks
    }

    /// The port whose driver transmits frames for `port`: its trunk's parent for a
    /// subport (which has no interface of its own), else itself.
    #[inline]
    pub fn transmit_port(&self, port: PortId) -> PortId {
        self.trunks.parent(port).map_or(port, |(parent, _)| parent)
    }
}

/// Static MACs a snapshot's table holds: those it has and room for a few more, which
/// changes of ports take without a table made again.
fn fdb_room(macs: usize) -> usize {
    macs + macs / 8 + 64
}

/// A VM port as [`Snapshot::patch_ports`] takes it: what the builder's calls for one port
/// ([`SnapshotBuilder::access_port`], `port_security`, `qos`, `enable_stage` and its
/// share of the security groups) give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPort {
    /// Its id.
    pub id: PortId,
    /// Its network.
    pub network: NetworkUid,
    /// Its MACs, its own first.
    pub macs: Vec<[u8; 6]>,
    /// Its anti-spoofing policy, with port security on.
    pub port_security: Option<PortSecurity>,
    /// Its security-group policy (one the running tables hold) and the addresses it takes
    /// router advertisements from, with port security on.
    pub security_groups: Option<(SgPolicy, Vec<u128>)>,
    /// Its QoS.
    pub qos: Option<PortQos>,
    /// Stages enabled for it besides those its roles bring.
    pub stages: Vec<Stage>,
}

/// A port as the builder takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// A VM port on one network, owning the given MACs (Neutron's `mac_address` plus any
    /// `allowed_address_pairs` MACs).
    Access {
        /// The network.
        network: NetworkUid,
        /// Static FDB entries for this port.
        macs: Vec<[u8; 6]>,
    },
    /// The uplink of a physical network.
    Uplink {
        /// The physical network.
        physnet: PhysnetId,
    },
    /// The tunnel port of a remote endpoint.
    Tunnel,
}

/// Why a configuration cannot be compiled. The control plane's validation should catch
/// all of these earlier with field paths; this is the data plane's own last line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// Two networks with one uid.
    DuplicateNetwork(NetworkUid),
    /// Two ports with one id.
    DuplicatePort(PortId),
    /// A port refers to a network that does not exist.
    UnknownNetwork {
        /// The port.
        port: PortId,
        /// The missing network.
        network: NetworkUid,
    },
    /// VLAN ID outside 1..=4094.
    VlanOutOfRange {
        /// The network.
        network: NetworkUid,
        /// The VID.
        vid: u16,
    },
    /// Two networks with one VLAN ID on one physnet.
    VlanInUse {
        /// The physnet.
        physnet: PhysnetId,
        /// The VID.
        vid: u16,
    },
    /// Two flat networks on one physnet.
    SecondFlatNetwork(PhysnetId),
    /// Two uplinks for one physnet (each physnet has one uplink, as in `bridge_mappings`).
    SecondUplink(PhysnetId),
    /// A MAC given to two ports of one network.
    DuplicateMac {
        /// The network.
        network: NetworkUid,
        /// The MAC.
        mac: [u8; 6],
    },
    /// A group (multicast or broadcast) MAC given to a port.
    GroupMac {
        /// The port.
        port: PortId,
        /// The MAC.
        mac: [u8; 6],
    },
    /// More networks than slots.
    TooManyNetworks(usize),
    /// Port id 0xffff is reserved.
    ReservedPortId,
    /// The routers do not compile.
    Routing(RoutingError),
    /// A service (the DHCP server) on a network that does not exist.
    UnknownServiceNetwork(NetworkUid),
    /// A network offering one service twice, services behind different MACs or a group
    /// MAC, or a service id that [`crate::slowpath::SERVICES`] does not have.
    BadService(NetworkUid),
    /// Port security for a port that is not a VM port of this configuration.
    PortSecurityNotOnVmPort(PortId),
    /// QoS for a port that is not a VM port of this configuration.
    QosNotOnVmPort(PortId),
    /// The overlay configuration is inconsistent (what is wrong).
    Overlay(&'static str),
    /// Security groups given to a port without port security.
    SecurityGroupsWithoutPortSecurity(PortId),
    /// The trunks are inconsistent (what is wrong).
    Trunk(&'static str),
    /// A stage enabled for a port the configuration does not have.
    StageOnUnknownPort {
        /// The port.
        port: PortId,
        /// The stage.
        stage: Stage,
    },
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::DuplicateNetwork(n) => write!(f, "network uid {} is defined twice", n.0),
            BuildError::DuplicatePort(p) => write!(f, "{p} is defined twice"),
            BuildError::UnknownNetwork { port, network } => {
                write!(f, "{port} refers to unknown network uid {}", network.0)
            }
            BuildError::VlanOutOfRange { network, vid } => {
                write!(
                    f,
                    "network uid {} has VLAN ID {vid}, outside 1..=4094",
                    network.0
                )
            }
            BuildError::VlanInUse { physnet, vid } => {
                write!(f, "VLAN ID {vid} is used twice on physnet {}", physnet.0)
            }
            BuildError::SecondFlatNetwork(p) => write!(f, "physnet {} has two flat networks", p.0),
            BuildError::SecondUplink(p) => write!(f, "physnet {} has two uplinks", p.0),
            BuildError::UnknownServiceNetwork(n) => {
                write!(f, "service (DHCP server) on unknown network uid {}", n.0)
            }
            BuildError::BadService(n) => write!(
                f,
                "network uid {} offers a service twice, its services have different or \
                 group MACs, or one is unknown",
                n.0
            ),
            BuildError::DuplicateMac { network, mac } => {
                write!(
                    f,
                    "MAC {} is used twice in network uid {}",
                    fmt_mac(*mac),
                    network.0
                )
            }
            BuildError::GroupMac { port, mac } => {
                write!(
                    f,
                    "{port} has group MAC {}, which cannot be a station address",
                    fmt_mac(*mac)
                )
            }
            BuildError::TooManyNetworks(n) => {
                write!(f, "{n} networks exceed the limit of {MAX_NETWORKS}")
            }
            BuildError::ReservedPortId => write!(f, "port id 65535 is reserved"),
            BuildError::SecurityGroupsWithoutPortSecurity(p) => {
                write!(f, "security groups on port {} without port security", p.0)
            }
            BuildError::PortSecurityNotOnVmPort(p) => {
                write!(f, "port security for {p}, which is not a VM port")
            }
            BuildError::QosNotOnVmPort(p) => write!(f, "QoS for {p}, which is not a VM port"),
            BuildError::Routing(e) => e.fmt(f),
            BuildError::Overlay(what) => write!(f, "overlay: {what}"),
            BuildError::Trunk(what) => write!(f, "trunks: {what}"),
            BuildError::StageOnUnknownPort { port, stage } => {
                write!(
                    f,
                    "stage {stage} enabled on {port}, which is not configured"
                )
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Collects networks and ports and compiles them into a [`Snapshot`].
#[derive(Clone, Debug, Default)]
pub struct SnapshotBuilder {
    networks: Vec<(NetworkUid, Segment)>,
    ports: Vec<(PortId, PortSpec)>,
    l2: L2Config,
    routers: Vec<RouterSpec>,
    /// Per network, the service MAC and the services on it.
    services: Vec<(NetworkUid, [u8; 6], NetworkService)>,
    /// Networks whose VMs reach the metadata proxy through their router.
    metadata_via_router: Vec<NetworkUid>,
    slow_path: SlowPathConfig,
    port_security: Vec<(PortId, PortSecurity)>,
    qos: Vec<(PortId, PortQos)>,
    security_groups: SgTables,
    stages: Vec<(PortId, Stage)>,
    overlay: OverlayBuilder,
    /// MACs of remote ports: static FDB entries on their host's tunnel port.
    remote_macs: Vec<(NetworkUid, PortId, [u8; 6])>,
    /// The routers of a previous snapshot, taken instead of compiling `routers`.
    routing_of: Option<Arc<Routing>>,
    /// Trunk subports as (parent, VLAN ID, subport).
    trunk_subports: Vec<(PortId, u16, PortId)>,
}

impl SnapshotBuilder {
    /// An empty configuration with default learning parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the learning parameters.
    pub fn l2(&mut self, l2: L2Config) -> &mut Self {
        self.l2 = l2;
        self
    }

    /// Adds a network.
    pub fn network(&mut self, uid: NetworkUid, segment: Segment) -> &mut Self {
        self.networks.push((uid, segment));
        self
    }

    /// Adds a VM port on `network` owning `macs`.
    pub fn access_port(
        &mut self,
        port: PortId,
        network: NetworkUid,
        macs: &[[u8; 6]],
    ) -> &mut Self {
        self.ports.push((
            port,
            PortSpec::Access {
                network,
                macs: macs.to_vec(),
            },
        ));
        self
    }

    /// Adds a router.
    pub fn router(&mut self, router: RouterSpec) -> &mut Self {
        self.routers.push(router);
        self
    }

    /// Takes the routers of `previous` as they are, instead of compiling those given to
    /// [`SnapshotBuilder::router`]: for a change that leaves every router, and the network
    /// slots they refer to, as they were (the caller's claim, which its test builds check
    /// against a compile from scratch).
    pub fn routers_of(&mut self, previous: &Snapshot) -> &mut Self {
        self.routing_of = Some(Arc::clone(&previous.routing));
        self
    }

    /// Gives `network` a DHCP server at `mac` answering for `addresses` (one per subnet
    /// with DHCP): its messages go up the punt ring, ARP for its addresses is answered.
    pub fn dhcp_server(
        &mut self,
        network: NetworkUid,
        mac: [u8; 6],
        addresses: &[Ipv4Addr],
    ) -> &mut Self {
        self.service(
            network,
            mac,
            NetworkService {
                id: ServiceId::DHCP,
                matches: crate::slowpath::dhcp::MATCH,
                addresses: addresses.iter().map(|&a| u32::from(a)).collect(),
            },
        )
    }

    /// Offers `service` on `network`, behind the network's service MAC `mac` (every
    /// service of a network gives the same one): the packets it matches go up the punt
    /// ring with its id, ARP for its addresses is answered with `mac`.
    pub fn service(
        &mut self,
        network: NetworkUid,
        mac: [u8; 6],
        service: NetworkService,
    ) -> &mut Self {
        self.services.push((network, mac, service));
        self
    }

    /// Takes TCP to 169.254.169.254:80 that VMs of `network` send to a router's MAC up
    /// the punt ring for the metadata proxy, before routing (Neutron's router case).
    pub fn metadata_via_router(&mut self, network: NetworkUid) -> &mut Self {
        self.metadata_via_router.push(network);
        self
    }

    /// Turns port security on for the VM port `port`, with `policy`.
    pub fn port_security(&mut self, port: PortId, policy: PortSecurity) -> &mut Self {
        self.port_security.push((port, policy));
        self
    }

    /// Gives the VM port `port` its QoS (bandwidth limits, DSCP marking).
    pub fn qos(&mut self, port: PortId, qos: PortQos) -> &mut Self {
        self.qos.push((port, qos));
        self
    }

    /// Sets the security groups of the VM ports (each of which must have port security).
    pub fn security_groups(&mut self, tables: SgTables) -> &mut Self {
        self.security_groups = tables;
        self
    }

    /// Sets the slow path's limits.
    pub fn slow_path(&mut self, config: SlowPathConfig) -> &mut Self {
        self.slow_path = config;
        self
    }

    /// Enables `stage` for the bursts received on `port` (a feature of that port, such as
    /// port security). The built-in stages are enabled where they are needed without this.
    pub fn enable_stage(&mut self, port: PortId, stage: Stage) -> &mut Self {
        self.stages.push((port, stage));
        self
    }

    /// Makes VM port `subport` a subport of trunk parent `parent` (a VM port too),
    /// reached by VLAN ID `vid` in the parent's frames.
    pub fn trunk_subport(&mut self, parent: PortId, vid: u16, subport: PortId) -> &mut Self {
        self.trunk_subports.push((parent, vid, subport));
        self
    }

    /// Makes `endpoint` this host's VXLAN tunnel endpoint.
    pub fn tunnel_endpoint(&mut self, endpoint: EndpointSpec) -> &mut Self {
        self.overlay.endpoint = Some(endpoint);
        self
    }

    /// Adds tunnel port `port` towards the remote endpoint `remote`.
    pub fn tunnel_port(&mut self, port: PortId, remote: Ipv4Addr) -> &mut Self {
        self.ports.push((port, PortSpec::Tunnel));
        self.overlay.tunnels.push((port, remote));
        self
    }

    /// Puts the host behind tunnel port `tunnel` in the peer and flood lists of `network`
    /// (it has ports there).
    pub fn tunnel_peer(&mut self, network: NetworkUid, tunnel: PortId) -> &mut Self {
        self.overlay.peers.push((network, tunnel));
        self
    }

    /// A remote port (l2population): `macs` on `network` are behind tunnel port `tunnel`,
    /// whose host becomes a peer of the network.
    pub fn remote_port(
        &mut self,
        network: NetworkUid,
        tunnel: PortId,
        macs: &[[u8; 6]],
    ) -> &mut Self {
        self.tunnel_peer(network, tunnel);
        self.remote_macs
            .extend(macs.iter().map(|&mac| (network, tunnel, mac)));
        self
    }

    /// Lets the ARP responder answer for `ip` on `network` with `mac`.
    pub fn arp_entry(&mut self, network: NetworkUid, ip: Ipv4Addr, mac: [u8; 6]) -> &mut Self {
        self.overlay.arp.push((network, ip, mac));
        self
    }

    /// Adds the uplink of `physnet`.
    pub fn uplink(&mut self, port: PortId, physnet: PhysnetId) -> &mut Self {
        self.ports.push((port, PortSpec::Uplink { physnet }));
        self
    }

    /// Validates and compiles the configuration as generation `generation`.
    pub fn build(&self, generation: u64) -> Result<Snapshot, BuildError> {
        if self.networks.len() > MAX_NETWORKS {
            return Err(BuildError::TooManyNetworks(self.networks.len()));
        }
        // Networks take slots in uid order, so equal configurations compile identically.
        let mut nets: Vec<(NetworkUid, Segment)> = self.networks.clone();
        nets.sort_by_key(|(uid, _)| *uid);
        let mut slot_of: HashMap<NetworkUid, NetworkSlot> = HashMap::new();
        let mut vids: HashMap<(PhysnetId, u16), NetworkUid> = HashMap::new();
        let mut flat: HashMap<PhysnetId, NetworkSlot> = HashMap::new();
        let mut tunnels: Vec<(NetworkSlot, TunnelId)> = Vec::new();
        for (slot, (uid, segment)) in nets.iter().enumerate() {
            let slot = NetworkSlot(slot as u16);
            if slot_of.insert(*uid, slot).is_some() {
                return Err(BuildError::DuplicateNetwork(*uid));
            }
            match *segment {
                Segment::Local => {}
                Segment::Vxlan { .. } | Segment::Geneve { .. } | Segment::Gre { .. } => {
                    tunnels.extend(segment.tunnel().map(|t| (slot, t)))
                }
                Segment::Flat { physnet } => {
                    if flat.insert(physnet, slot).is_some() {
                        return Err(BuildError::SecondFlatNetwork(physnet));
                    }
                }
                Segment::Vlan { physnet, vid } => {
                    if !(1..=4094).contains(&vid) {
                        return Err(BuildError::VlanOutOfRange { network: *uid, vid });
                    }
                    if vids.insert((physnet, vid), *uid).is_some() {
                        return Err(BuildError::VlanInUse { physnet, vid });
                    }
                }
            }
        }

        let mut specs: Vec<&(PortId, PortSpec)> = self.ports.iter().collect();
        specs.sort_by_key(|(id, _)| *id);
        if let Some(w) = specs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(BuildError::DuplicatePort(w[0].0));
        }
        if specs.last().is_some_and(|(id, _)| *id == PortId::NONE) {
            return Err(BuildError::ReservedPortId);
        }
        let port_slots = specs.last().map_or(0, |(id, _)| id.index() + 1);
        let mut ports = vec![PortRole::Absent; port_slots].into_boxed_slice();
        let mut members: BTreeMap<NetworkSlot, Vec<PortId>> = BTreeMap::new();
        let mut uplink_of: BTreeMap<PhysnetId, PortId> = BTreeMap::new();
        let mut vlan_maps = Vec::new();
        let mut static_macs: Vec<(NetworkSlot, [u8; 6], PortId)> = Vec::new();
        for (id, spec) in specs {
            ports[id.index()] = match spec {
                PortSpec::Access { network, macs } => {
                    let slot = *slot_of.get(network).ok_or(BuildError::UnknownNetwork {
                        port: *id,
                        network: *network,
                    })?;
                    for mac in macs {
                        if mac_is_group(*mac) {
                            return Err(BuildError::GroupMac {
                                port: *id,
                                mac: *mac,
                            });
                        }
                        static_macs.push((slot, *mac, *id));
                    }
                    members.entry(slot).or_default().push(*id);
                    PortRole::Access {
                        network: slot,
                        mac: macs
                            .first()
                            .map_or(PackedMac::NONE, |&m| PackedMac::from(m)),
                    }
                }
                PortSpec::Uplink { physnet } => {
                    if uplink_of.insert(*physnet, *id).is_some() {
                        return Err(BuildError::SecondUplink(*physnet));
                    }
                    let mut by_vid = Box::new([NetworkSlot::NONE; 4096]);
                    for (&(p, vid), uid) in &vids {
                        if p == *physnet {
                            by_vid[usize::from(vid)] = slot_of[uid];
                        }
                    }
                    let untagged = flat.get(physnet).copied().unwrap_or(NetworkSlot::NONE);
                    vlan_maps.push(VlanMap { by_vid, untagged });
                    PortRole::Uplink {
                        vlan_map: VlanMapIndex((vlan_maps.len() - 1) as u16),
                        physnet: *physnet,
                    }
                }
                PortSpec::Tunnel => PortRole::Tunnel,
            };
        }
        for &(network, tunnel, mac) in &self.remote_macs {
            let slot = *slot_of.get(&network).ok_or(BuildError::UnknownNetwork {
                port: tunnel,
                network,
            })?;
            if mac_is_group(mac) {
                return Err(BuildError::GroupMac { port: tunnel, mac });
            }
            static_macs.push((slot, mac, tunnel));
        }
        let overlay = self.overlay.build(
            &OverlayNetworks {
                slot_of: &slot_of,
                tunnels,
                slots: nets.len(),
            },
            &ports,
        )?;

        // Every frame to a MAC behind an uplink misses here first: keep the table sparse so
        // a miss costs about one probe.
        // With room for the ports later changes add ([`Snapshot::patch_ports`]); a table
        // that fills up is made again by the next compile from scratch.
        let mut fdb = U64Map::with_slots_per_entry(fdb_room(static_macs.len()), 8);
        for (slot, mac, port) in static_macs {
            if fdb
                .insert(FdbKey::packed(slot, PackedMac::from(mac)).get(), port)
                .expect("sized for every MAC")
                .is_some()
            {
                return Err(BuildError::DuplicateMac {
                    network: nets[slot.index()].0,
                    mac,
                });
            }
        }

        let routing = match &self.routing_of {
            Some(routing) => Arc::clone(routing),
            None => Arc::new(
                Routing::compile(&self.routers, &slot_of, nets.len())
                    .map_err(BuildError::Routing)?,
            ),
        };
        let mut service_macs = vec![PackedMac::NONE; nets.len()];
        let mut services: Vec<Vec<NetworkService>> = vec![Vec::new(); nets.len()];
        for (uid, mac, service) in &self.services {
            let slot = slot_of
                .get(uid)
                .ok_or(BuildError::UnknownServiceNetwork(*uid))?
                .index();
            let packed = PackedMac::from(*mac);
            let taken = &services[slot];
            if mac_is_group(*mac)
                || (service_macs[slot] != PackedMac::NONE && service_macs[slot] != packed)
                || taken.iter().any(|s| s.id == service.id)
                || service.id.kind().is_none()
            {
                return Err(BuildError::BadService(*uid));
            }
            service_macs[slot] = packed;
            services[slot].push(service.clone());
        }
        let mut metadata_via_router = vec![false; nets.len()];
        for uid in &self.metadata_via_router {
            let slot = slot_of
                .get(uid)
                .ok_or(BuildError::UnknownServiceNetwork(*uid))?
                .index();
            metadata_via_router[slot] = true;
            // The match the slow-path stage takes them by; with no address of its own
            // unless the network's DHCP server carries the proxy too.
            if !services[slot].iter().any(|s| s.id == ServiceId::METADATA) {
                services[slot].push(NetworkService {
                    id: ServiceId::METADATA,
                    matches: crate::slowpath::metadata::MATCH,
                    addresses: Box::new([]),
                });
            }
        }
        let services: Box<[NetworkServices]> =
            services.into_iter().map(NetworkServices::new).collect();
        let mut port_security = vec![None; port_slots].into_boxed_slice();
        for (port, policy) in &self.port_security {
            match ports.get(port.index()) {
                Some(PortRole::Access { .. }) => {
                    port_security[port.index()] = Some(Arc::new(policy.clone()))
                }
                _ => return Err(BuildError::PortSecurityNotOnVmPort(*port)),
            }
        }
        let mut qos = vec![None; port_slots].into_boxed_slice();
        for (port, q) in &self.qos {
            match ports.get(port.index()) {
                Some(PortRole::Access { .. }) => qos[port.index()] = Some(*q),
                _ => return Err(BuildError::QosNotOnVmPort(*port)),
            }
        }
        let mut flood_ports = Vec::new();
        let mut networks = Vec::with_capacity(nets.len());
        for (index, (uid, segment)) in nets.iter().enumerate() {
            let slot = NetworkSlot(index as u16);
            let start = flood_ports.len();
            let mut list: Vec<PortId> = members.remove(&slot).unwrap_or_default();
            if let Some(uplink) = segment.physnet().and_then(|p| uplink_of.get(&p)) {
                list.push(*uplink);
            }
            list.sort_unstable();
            flood_ports.extend(list);
            networks.push(NetworkEntry {
                uid: *uid,
                segment: *segment,
                uplink_vid: match segment {
                    Segment::Vlan { vid, .. } => *vid,
                    _ => 0,
                },
                flood_start: start as u32,
                flood_len: (flood_ports.len() - start) as u32,
                routed: !routing.on_network(slot).is_empty(),
                service_mac: service_macs[index],
                metadata_via_router: metadata_via_router[index]
                    && !routing.on_network(slot).is_empty(),
            });
        }

        // A port pays only for the optional stages some network it carries uses. A VM port
        // carries one network; an uplink those of its physnet (looked at once per physnet,
        // so that compiling stays linear in ports plus networks).
        let needs = |net: &NetworkEntry| {
            let mut set = StageSet::EMPTY;
            if net.routed {
                set = set.with(Stage::L3);
            }
            if net.service_mac != PackedMac::NONE || net.metadata_via_router {
                set = set.with(Stage::SlowPath);
            }
            set
        };
        let mut physnet_needs: BTreeMap<PhysnetId, StageSet> = BTreeMap::new();
        for net in &networks {
            if let Some(p) = net.segment.physnet() {
                let set = physnet_needs.entry(p).or_default();
                *set = set.union(needs(net));
            }
        }
        let mut port_stages: Box<[StageSet]> = ports
            .iter()
            .map(|role| {
                let base = StageSet::BASE.with(Stage::L2);
                match *role {
                    PortRole::Absent | PortRole::Tunnel => StageSet::BASE,
                    PortRole::Access { network, .. } => {
                        base.union(networks.get(network.index()).map_or(StageSet::EMPTY, needs))
                    }
                    PortRole::Uplink { physnet, .. } => {
                        base.union(physnet_needs.get(&physnet).copied().unwrap_or_default())
                    }
                }
            })
            .collect();
        for (port, _) in &self.port_security {
            port_stages[port.index()] = port_stages[port.index()].with(Stage::PortSecurity);
        }
        overlay.enable_stages(&ports, &mut port_stages);
        // Decapsulated frames enter on the endpoint's uplink: it needs what the overlay
        // networks need (a router, their services). A router on an overlay network may
        // send what any of its ports received to a remote host: those ports encapsulate.
        if let Some(endpoint) = overlay.endpoint_uplink() {
            let mut overlay_needs = StageSet::EMPTY;
            for (slot, net) in networks.iter().enumerate() {
                if overlay.tunnel(NetworkSlot(slot as u16)).is_some() {
                    overlay_needs = overlay_needs.union(needs(net));
                }
            }
            if let Some(set) = port_stages.get_mut(endpoint.index()) {
                *set = set.union(overlay_needs);
            }
            if overlay_needs.contains(Stage::L3) {
                for set in port_stages.iter_mut() {
                    if set.contains(Stage::L3) {
                        *set = set.with(Stage::TunnelEncap);
                    }
                }
            }
        }
        let security_groups = self.security_groups.clone();
        for port in security_groups.ports() {
            // By index: a scan of the policies per port costs ports squared, 100 million
            // comparisons on a host with 10,000 ports.
            if port_security.get(port.index()).is_none_or(Option::is_none) {
                return Err(BuildError::SecurityGroupsWithoutPortSecurity(port));
            }
            port_stages[port.index()] = port_stages[port.index()].with(Stage::SgEgress);
        }
        // Traffic to a port with groups may come from any port, switched or routed: the
        // ingress stage looks at every burst's unicast output once any port has groups.
        if !security_groups.is_empty() {
            for (set, role) in port_stages.iter_mut().zip(ports.iter()) {
                if *role != PortRole::Absent {
                    *set = set.with(Stage::SgIngress);
                }
            }
        }
        // As with security groups: the egress stage only on the ports with a policy that
        // acts there, the ingress one on every burst once some port limits its ingress.
        for (port, q) in &self.qos {
            if q.acts_on_egress() {
                port_stages[port.index()] = port_stages[port.index()].with(Stage::QosEgress);
            }
        }
        if self.qos.iter().any(|(_, q)| q.ingress.is_some()) {
            for (set, role) in port_stages.iter_mut().zip(ports.iter()) {
                if *role != PortRole::Absent {
                    *set = set.with(Stage::QosIngress);
                }
            }
        }
        let trunks = self.trunks(&ports, &mut port_stages)?;
        for &(port, stage) in &self.stages {
            match port_stages.get_mut(port.index()) {
                Some(set) if ports[port.index()] != PortRole::Absent => *set = set.with(stage),
                _ => return Err(BuildError::StageOnUnknownPort { port, stage }),
            }
        }

        Ok(Snapshot {
            generation,
            ports,
            port_stages,
            networks: networks.into_boxed_slice(),
            flood_ports: flood_ports.into_boxed_slice(),
            vlan_maps: vlan_maps.into(),
            fdb,
            l2: self.l2,
            routing,
            services: services.into(),
            slow_path: self.slow_path,
            port_security,
            qos,
            overlay: Arc::new(overlay),
            security_groups: Arc::new(security_groups),
            trunks: Arc::new(trunks),
        })
    }

    /// The trunks, checked: parents and subports are VM ports, VLAN IDs 1..=4094 and
    /// distinct per parent, a subport in one trunk and never a parent. Parents get the
    /// trunk stage.
    fn trunks(
        &self,
        ports: &[PortRole],
        port_stages: &mut [StageSet],
    ) -> Result<Trunks, BuildError> {
        let vm = |p: PortId| matches!(ports.get(p.index()), Some(PortRole::Access { .. }));
        let mut seen = std::collections::HashSet::new();
        let parents: std::collections::HashSet<PortId> =
            self.trunk_subports.iter().map(|t| t.0).collect();
        for &(parent, vid, sub) in &self.trunk_subports {
            if !vm(parent) || !vm(sub) {
                return Err(BuildError::Trunk(
                    "a trunk's parent or subport is not a VM port",
                ));
            }
            if !(1..=4094).contains(&vid) {
                return Err(BuildError::Trunk("a subport's VLAN ID is outside 1..=4094"));
            }
            if !seen.insert((parent, vid)) || !seen.insert((sub, 0)) || parents.contains(&sub) {
                return Err(BuildError::Trunk(
                    "a VLAN ID twice in a trunk, or a port twice as a subport or as both",
                ));
            }
            port_stages[parent.index()] = port_stages[parent.index()].with(Stage::Trunk);
        }
        Ok(Trunks::new(self.trunk_subports.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EthernetAddress;

    const P1: PhysnetId = PhysnetId(1);

    fn two_vlans() -> SnapshotBuilder {
        let mut b = SnapshotBuilder::new();
        b.network(
            NetworkUid(10),
            Segment::Vlan {
                physnet: P1,
                vid: 100,
            },
        )
        .network(
            NetworkUid(20),
            Segment::Vlan {
                physnet: P1,
                vid: 200,
            },
        )
        .network(NetworkUid(30), Segment::Flat { physnet: P1 })
        .network(NetworkUid(40), Segment::Local)
        .uplink(PortId(0), P1)
        .access_port(PortId(1), NetworkUid(10), &[[2, 0, 0, 0, 0, 1]])
        .access_port(PortId(2), NetworkUid(20), &[[2, 0, 0, 0, 0, 1]])
        .access_port(PortId(3), NetworkUid(40), &[]);
        b
    }

    #[test]
    fn compiles_vlan_maps_flood_lists_and_static_macs() {
        let s = two_vlans().build(7).unwrap();
        assert_eq!(s.generation(), 7);
        let map = match s.port(PortId(0)) {
            PortRole::Uplink { vlan_map, .. } => vlan_map,
            other => panic!("{other:?}"),
        };
        let map = s.vlan_map(map).unwrap();
        assert_eq!(map.network(Some(100)), Some(NetworkSlot(0)));
        assert_eq!(
            map.network(Some(0x2000 | 200)),
            Some(NetworkSlot(1)),
            "PCP bits are ignored"
        );
        assert_eq!(map.network(None), Some(NetworkSlot(2)));
        assert_eq!(
            map.network(Some(0)),
            Some(NetworkSlot(2)),
            "priority tag is untagged"
        );
        assert_eq!(map.network(Some(300)), None);
        assert_eq!(s.flood_ports(NetworkSlot(0)), &[PortId(0), PortId(1)]);
        assert_eq!(s.flood_ports(NetworkSlot(3)), &[PortId(3)]);
        // The same MAC in two networks is two independent entries.
        let mac = EthernetAddress([2, 0, 0, 0, 0, 1]);
        let key = |slot| FdbKey::new(NetworkSlot(slot), mac);
        assert_eq!(s.static_mac(key(0)), Some(PortId(1)));
        assert_eq!(s.static_mac(key(1)), Some(PortId(2)));
        assert_eq!(s.static_mac(key(3)), None);
        assert!(
            s.port_serves(PortId(0), NetworkSlot(1)) && !s.port_serves(PortId(0), NetworkSlot(3))
        );
        assert_eq!(s.egress_vid(PortId(0), NetworkSlot(1)), Some(200));
        assert_eq!(s.egress_vid(PortId(0), NetworkSlot(2)), None);
        assert_eq!(s.egress_vid(PortId(1), NetworkSlot(0)), None);
        for port in [PortId(0), PortId(1), PortId(7)] {
            for slot in [NetworkSlot(0), NetworkSlot(1), NetworkSlot(2)] {
                let apart = (s.egress_vid(port, slot), s.transmit_port(port));
                assert_eq!(s.egress(port, slot), apart, "{port:?} {slot:?}");
            }
        }
        assert_eq!(s.port(PortId(9)), PortRole::Absent);
    }

    #[test]
    fn rejects_inconsistent_configurations() {
        let mut b = two_vlans();
        b.network(
            NetworkUid(50),
            Segment::Vlan {
                physnet: P1,
                vid: 100,
            },
        );
        assert_eq!(
            b.build(1).unwrap_err(),
            BuildError::VlanInUse {
                physnet: P1,
                vid: 100
            }
        );

        let mut b = two_vlans();
        b.network(
            NetworkUid(50),
            Segment::Vlan {
                physnet: P1,
                vid: 4095,
            },
        );
        assert!(matches!(
            b.build(1),
            Err(BuildError::VlanOutOfRange { vid: 4095, .. })
        ));

        let mut b = two_vlans();
        b.access_port(PortId(5), NetworkUid(10), &[[2, 0, 0, 0, 0, 1]]);
        assert!(matches!(b.build(1), Err(BuildError::DuplicateMac { .. })));

        let mut b = two_vlans();
        b.access_port(PortId(5), NetworkUid(99), &[]);
        assert!(matches!(b.build(1), Err(BuildError::UnknownNetwork { .. })));

        let mut b = two_vlans();
        b.uplink(PortId(6), P1);
        assert_eq!(b.build(1).unwrap_err(), BuildError::SecondUplink(P1));

        let mut b = two_vlans();
        b.access_port(PortId(1), NetworkUid(40), &[]);
        assert_eq!(
            b.build(1).unwrap_err(),
            BuildError::DuplicatePort(PortId(1))
        );

        let mut b = two_vlans();
        b.access_port(PortId(7), NetworkUid(40), &[[1, 0, 0x5e, 0, 0, 1]]);
        assert!(matches!(b.build(1), Err(BuildError::GroupMac { .. })));
        assert!(b
            .build(1)
            .unwrap_err()
            .to_string()
            .contains("01:00:5e:00:00:01"));
    }

    #[test]
    fn mac_packing_round_trips() {
        let mac = [0xfa, 0x16, 0x3e, 0x01, 0x02, 0x03];
        assert_eq!(PackedMac::from(mac).get(), 0xfa16_3e01_0203);
        assert_eq!(PackedMac::from(mac).octets(), mac);
    }
}

thread_local! {
    static FREED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        FREED_HERE.with(|n| n.set(n.get() + 1));
    }
}

/// How many snapshots the calling thread has freed. Workers must never free one (the
/// control thread reclaims them), and tests check exactly that with this witness.
pub fn snapshots_freed_on_this_thread() -> u64 {
    FREED_HERE.with(|n| n.get())
}
