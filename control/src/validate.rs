//! Validation: turns a [`DesiredState`] into a typed, cross-checked [`Validated`] view,
//! or reports every problem at once.
//!
//! Each [`ValidationError`] names the offending field by its path in the document, with
//! list indices (`ports[3].fixed_ips[0].ip_address`), and says what is wrong with the value
//! (`203.0.113.300 is not an IPv4 address`). A bad value is reported where it is; a
//! reference to an object with a bad id, or a check that needs a value that failed to
//! parse, is not reported again (a port on a network with a bad VLAN ID is not an error
//! of the port), so the list is about causes rather than their consequences.
//!
//! [`Validated`] keeps the order of the document: indices (`network`, `subnet`, `port`,
//! ...) are positions in its vectors, which are the positions in the desired state.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

use pollux_dataplane::snapshot::L2Config;

use crate::compile::ROUTER_MAC_PREFIX;
use crate::model::{self, DesiredState, Direction, NetworkType, ProtocolSpec};

/// One problem of a desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the offending field, e.g. `ports[3].fixed_ips[0].ip_address`.
    pub path: String,
    /// What is wrong with it, e.g. `203.0.113.300 is not an IPv4 address`.
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// An IPv4 prefix: `addr` with its host bits zero, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The prefix containing `addr` (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        mask(self.prefix)
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The broadcast address (the last of the prefix).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is the network or the broadcast address of a prefix that has both
    /// (prefixes up to /30), so that no host may use it.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.prefix <= 30 && (ip == self.addr || ip == self.broadcast())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// The typed view of a valid desired state, in document order. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Learning parameters.
    pub l2: L2Config,
    /// Uplinks.
    pub uplinks: Vec<Uplink>,
    /// Networks.
    pub networks: Vec<Network>,
    /// Subnets.
    pub subnets: Vec<Subnet>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Routers.
    pub routers: Vec<Router>,
    /// Floating IPs.
    pub floating_ips: Vec<FloatingIp>,
    /// Security groups.
    pub security_groups: Vec<SecurityGroup>,
}

/// A checked binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// AF_XDP on `interface`, queue ids `queues` (at least one, distinct).
    Afxdp {
        /// Kernel interface name (1..=15 bytes).
        interface: String,
        /// Queue ids.
        queues: Vec<u32>,
    },
    /// vhost-user back end on the Unix socket `socket` (an absolute path).
    VhostUser {
        /// Socket path.
        socket: String,
    },
    /// In-process rings.
    Mem,
    /// Tap device `interface`.
    Tap {
        /// Kernel interface name (1..=15 bytes).
        interface: String,
    },
}

/// A checked uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    /// Unique name.
    pub name: String,
    /// Its physnet (unique among uplinks).
    pub physnet: String,
    /// How it is attached.
    pub binding: Binding,
    /// The VXLAN endpoint address and its subnet (at most one uplink has one).
    pub local_ip: Option<(Ipv4Addr, Ipv4Cidr)>,
    /// MTU of the physical network.
    pub mtu: u16,
}

/// A checked segment of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Local to the host.
    Local,
    /// Untagged on `uplink` (the only flat network of its physnet).
    Flat {
        /// Index of the uplink.
        uplink: usize,
    },
    /// Tagged `vid` on `uplink`.
    Vlan {
        /// Index of the uplink.
        uplink: usize,
        /// VLAN ID, 1..=4094, unique on the physnet.
        vid: u16,
    },
    /// VXLAN with `vni` through the endpoint uplink.
    Vxlan {
        /// Index of the uplink with `local_ip`.
        uplink: usize,
        /// VNI, 1..=16777215, unique.
        vni: u32,
    },
}

/// A checked network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Unique id.
    pub id: String,
    /// Name.
    pub name: Option<String>,
    /// How it is carried.
    pub segment: Segment,
    /// Effective MTU (defaults applied).
    pub mtu: u16,
    /// Whether it forwards.
    pub admin_state_up: bool,
}

/// A checked route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub destination: Ipv4Cidr,
    /// Next hop.
    pub nexthop: Ipv4Addr,
}

/// A checked subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// Unique id.
    pub id: String,
    /// Index of its network.
    pub network: usize,
    /// Its prefix (no overlap with the network's other subnets).
    pub cidr: Ipv4Cidr,
    /// Gateway, inside `cidr`.
    pub gateway_ip: Option<Ipv4Addr>,
    /// DHCP on.
    pub enable_dhcp: bool,
    /// DNS servers.
    pub dns_nameservers: Vec<Ipv4Addr>,
    /// Host routes (next hops inside `cidr`).
    pub host_routes: Vec<Route>,
    /// Inclusive ranges inside `cidr`, disjoint, without the gateway. Empty: none given.
    pub allocation_pools: Vec<(Ipv4Addr, Ipv4Addr)>,
}

/// A checked fixed IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedIp {
    /// Index of the subnet (on the port's network).
    pub subnet: usize,
    /// The address (inside the subnet, unique on the network, not the gateway).
    pub ip: Ipv4Addr,
}

/// A checked allowed address pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPair {
    /// The addresses (a plain address is a /32).
    pub ip: Ipv4Cidr,
    /// The MAC (the port's own when not given).
    pub mac: [u8; 6],
}

/// A checked port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Unique id.
    pub id: String,
    /// Index of its network.
    pub network: usize,
    /// Its unicast MAC, unique on the network.
    pub mac: [u8; 6],
    /// Its addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// Indices of its security groups.
    pub security_groups: Vec<usize>,
    /// Port security on.
    pub port_security_enabled: bool,
    /// Allowed address pairs.
    pub allowed_address_pairs: Vec<AddressPair>,
    /// How it is attached.
    pub binding: Binding,
}

impl Port {
    /// Every MAC the port owns on its network (its own, then those of its address pairs),
    /// without repeats: the static FDB entries for it.
    pub fn macs(&self) -> Vec<[u8; 6]> {
        let mut macs = vec![self.mac];
        for p in &self.allowed_address_pairs {
            if !macs.contains(&p.mac) {
                macs.push(p.mac);
            }
        }
        macs
    }
}

/// A checked external gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalGateway {
    /// Index of the external network.
    pub network: usize,
    /// Index of the external network's subnet holding `ip`.
    pub subnet: usize,
    /// The router's address there.
    pub ip: Ipv4Addr,
    /// SNAT on.
    pub enable_snat: bool,
}

/// A checked router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    /// Unique id.
    pub id: String,
    /// Indices of the subnets it has an interface on (at their gateway IPs).
    pub interfaces: Vec<usize>,
    /// Its external gateway.
    pub external_gateway: Option<ExternalGateway>,
    /// Extra routes (next hops in connected subnets).
    pub routes: Vec<Route>,
}

/// A checked floating IP association.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloatingIpTarget {
    /// Index of the port.
    pub port: usize,
    /// The port's fixed IP it maps to.
    pub fixed_ip: Ipv4Addr,
    /// Index of the router that translates it.
    pub router: usize,
}

/// A checked floating IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIp {
    /// Unique id.
    pub id: String,
    /// The external address.
    pub address: Ipv4Addr,
    /// Index of the external network it is on.
    pub network: usize,
    /// What it maps to, when associated.
    pub target: Option<FloatingIpTarget>,
}

/// A rule's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
    /// Another IP protocol number.
    Other(u8),
}

/// Whom a rule allows at the remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Anyone.
    Any,
    /// Addresses in a prefix.
    Prefix(Ipv4Cidr),
    /// Ports in a security group (index).
    Group(usize),
}

/// A checked security group rule (IPv4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Direction.
    pub direction: Direction,
    /// Protocol; `None` is any.
    pub protocol: Option<Protocol>,
    /// Destination port range (tcp and udp only), `min <= max`.
    pub ports: Option<(u16, u16)>,
    /// Remote end.
    pub remote: Remote,
}

/// A checked security group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Unique id.
    pub id: String,
    /// Rules.
    pub rules: Vec<Rule>,
}

/// Default MTU of an uplink (and of a local network).
pub const DEFAULT_MTU: u16 = 1500;
/// Bytes VXLAN adds on the uplink: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u16 = 50;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: i64 = 68;
/// Largest MTU.
pub const MAX_MTU: i64 = 9000;

/// Checks a desired state; see the module documentation.
pub fn validate(state: &DesiredState) -> Result<Validated, Vec<ValidationError>> {
    let mut c = Checker::default();
    let l2 = c.l2(&state.l2);
    let uplinks = c.uplinks(&state.uplinks);
    let networks = c.networks(&state.networks, &uplinks);
    let subnets = c.subnets(&state.subnets, &networks);
    let security_groups = c.security_groups(&state.security_groups);
    let ports = c.ports(&state.ports, &networks, &subnets, &security_groups);
    let routers = c.routers(&state.routers, &networks, &subnets);
    let floating_ips = c.floating_ips(&state.floating_ips, &ports, &subnets, &routers);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Validated {
        l2,
        uplinks,
        networks: networks.items,
        subnets: subnets.items,
        ports: ports.items,
        routers: routers.items,
        floating_ips: floating_ips.items,
        security_groups: security_groups.items,
    })
}

/// Items of one kind as checked so far: the typed items (fields that failed hold
/// placeholders, which never leave [`validate`] because it then returns errors), whether
/// each item's fields that others depend on are valid, and the index of each id.
struct Checked<T> {
    items: Vec<T>,
    ok: Vec<bool>,
    by_id: HashMap<String, usize>,
}

impl<T> Default for Checked<T> {
    fn default() -> Self {
        Checked {
            items: Vec::new(),
            ok: Vec::new(),
            by_id: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct Checker {
    errors: Vec<ValidationError>,
    /// Addresses in use per network, with who uses them.
    used_ips: HashMap<(usize, Ipv4Addr), String>,
    /// Kernel interfaces and sockets bound, with who binds them.
    bound: HashMap<String, String>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether no error was recorded since there were `before` of them.
    fn clean(&self, before: usize) -> bool {
        self.errors.len() == before
    }

    /// Checks an id: non-empty and unique among `ids` (the first holder keeps it).
    fn id(
        &mut self,
        path: String,
        id: &str,
        kind: &str,
        ids: &mut HashMap<String, usize>,
        i: usize,
    ) {
        if id.is_empty() {
            self.err(path, format!("a {kind} needs a non-empty id"));
        } else if let Some(&first) = ids.get(id) {
            self.err(
                path,
                format!("{kind} id {id} is already used by {kind}s[{first}]"),
            );
        } else {
            ids.insert(id.to_owned(), i);
        }
    }

    fn ip(&mut self, path: &str, s: &str) -> Option<Ipv4Addr> {
        match parse_ipv4(s) {
            Ok(ip) => Some(ip),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    fn cidr(&mut self, path: &str, s: &str) -> Option<Ipv4Cidr> {
        match parse_cidr(s) {
            Ok(c) => Some(c),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    fn mac(&mut self, path: &str, s: &str) -> Option<[u8; 6]> {
        match parse_station_mac(s) {
            Ok(m) if m[..3] == ROUTER_MAC_PREFIX => {
                self.err(
                    path,
                    format!(
                        "{s} is in {}/24, which polluxd reserves for its routers",
                        fmt_mac([m[0], m[1], m[2], 0, 0, 0])
                    ),
                );
                None
            }
            Ok(m) => Some(m),
            Err(m) => {
                self.err(path, m);
                None
            }
        }
    }

    /// Records that `who` uses `ip` on `network`; an error when someone already does.
    fn use_ip(&mut self, path: &str, network: usize, ip: Ipv4Addr, who: String) {
        match self.used_ips.get(&(network, ip)) {
            Some(owner) => {
                let m = format!("{ip} is already used by {owner}");
                self.err(path, m);
            }
            None => {
                self.used_ips.insert((network, ip), who);
            }
        }
    }

    /// Checks an address a host uses in `cidr`: inside it, not its network or broadcast
    /// address, not its gateway.
    fn host_ip(&mut self, path: &str, ip: Ipv4Addr, subnet: &Subnet) -> bool {
        if !subnet.cidr.contains(ip) {
            self.err(
                path,
                format!("{ip} is not inside {} of subnet {}", subnet.cidr, subnet.id),
            );
            false
        } else if subnet.cidr.is_reserved(ip) {
            let what = if ip == subnet.cidr.addr {
                "network"
            } else {
                "broadcast"
            };
            self.err(
                path,
                format!(
                    "{ip} is the {what} address of {} (subnet {})",
                    subnet.cidr, subnet.id
                ),
            );
            false
        } else if subnet.gateway_ip == Some(ip) {
            self.err(
                path,
                format!("{ip} is the gateway_ip of subnet {}", subnet.id),
            );
            false
        } else {
            true
        }
    }

    fn binding(&mut self, path: &str, b: &model::Binding, owner: &str) -> Binding {
        match b {
            model::Binding::Mem {} => Binding::Mem,
            model::Binding::Afxdp { interface, queues } => {
                self.interface(&format!("{path}.interface"), interface, owner);
                let queues = match queues {
                    None => vec![0],
                    Some(qs) => {
                        if qs.is_empty() {
                            self.err(
                                format!("{path}.queues"),
                                "give at least one queue id, or leave queues out for queue 0",
                            );
                        }
                        let mut seen = HashSet::new();
                        let mut out = Vec::new();
                        for (k, &q) in qs.iter().enumerate() {
                            let p = format!("{path}.queues[{k}]");
                            match u32::try_from(q) {
                                Ok(q) if q < 1024 => {
                                    if !seen.insert(q) {
                                        self.err(p, format!("queue {q} is listed twice"));
                                    }
                                    out.push(q);
                                }
                                _ => self.err(p, format!("{q} is not a queue id (0..=1023)")),
                            }
                        }
                        out
                    }
                };
                Binding::Afxdp {
                    interface: interface.clone(),
                    queues,
                }
            }
            model::Binding::Tap { interface } => {
                self.interface(&format!("{path}.interface"), interface, owner);
                Binding::Tap {
                    interface: interface.clone(),
                }
            }
            model::Binding::VhostUser { socket } => {
                let p = format!("{path}.socket");
                if !socket.starts_with('/') || socket.len() < 2 || socket.contains('\0') {
                    self.err(
                        p,
                        format!("{socket:?} is not an absolute path for the vhost-user socket"),
                    );
                } else if socket.len() > 107 {
                    self.err(
                        p,
                        format!(
                            "the socket path is {} bytes; a Unix socket path has at most 107",
                            socket.len()
                        ),
                    );
                } else {
                    self.bind(&p, format!("socket {socket}"), owner);
                }
                Binding::VhostUser {
                    socket: socket.clone(),
                }
            }
        }
    }

    fn interface(&mut self, path: &str, name: &str, owner: &str) {
        match check_ifname(name) {
            Ok(()) => self.bind(path, format!("interface {name}"), owner),
            Err(m) => self.err(path, m),
        }
    }

    fn bind(&mut self, path: &str, what: String, owner: &str) {
        match self.bound.get(&what) {
            Some(first) => {
                let m = format!("{what} is already bound by {first}");
                self.err(path, m);
            }
            None => {
                self.bound.insert(what, owner.to_owned());
            }
        }
    }

    fn l2(&mut self, l2: &model::L2) -> L2Config {
        let mut out = L2Config::default();
        match u32::try_from(l2.mac_aging_secs) {
            Ok(v) if v >= 1 => out.mac_aging_secs = v,
            _ => self.err(
                "l2.mac_aging_secs",
                format!("{} is outside 1..={}", l2.mac_aging_secs, u32::MAX),
            ),
        }
        match u32::try_from(l2.mac_limit_per_network) {
            Ok(v) if v >= 1 => out.mac_limit_per_network = v,
            _ => self.err(
                "l2.mac_limit_per_network",
                format!("{} is outside 1..={}", l2.mac_limit_per_network, u32::MAX),
            ),
        }
        out
    }

    fn uplinks(&mut self, uplinks: &[model::Uplink]) -> Vec<Uplink> {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut physnets: HashMap<&str, usize> = HashMap::new();
        let mut vtep: Option<usize> = None;
        let mut out = Vec::with_capacity(uplinks.len());
        for (i, u) in uplinks.iter().enumerate() {
            let base = format!("uplinks[{i}]");
            if u.name.is_empty() {
                self.err(format!("{base}.name"), "an uplink needs a non-empty name");
            } else if let Some(first) = names.insert(&u.name, i) {
                names.insert(&u.name, first);
                self.err(
                    format!("{base}.name"),
                    format!("uplink name {} is already used by uplinks[{first}]", u.name),
                );
            }
            if u.physnet.is_empty() {
                self.err(
                    format!("{base}.physnet"),
                    "an uplink needs a non-empty physnet",
                );
            } else if let Some(first) = physnets.insert(&u.physnet, i) {
                physnets.insert(&u.physnet, first);
                self.err(
                    format!("{base}.physnet"),
                    format!(
                        "physnet {} already has an uplink (uplinks[{first}]); a physnet has one",
                        u.physnet
                    ),
                );
            }
            let binding = self.binding(
                &format!("{base}.binding"),
                &u.binding,
                &format!("uplink {}", u.name),
            );
            let local_ip = u.local_ip.as_deref().and_then(|s| {
                let p = format!("{base}.local_ip");
                match parse_interface_addr(s) {
                    Err(m) => {
                        self.err(p, m);
                        None
                    }
                    Ok(v) => {
                        if let Some(first) = vtep {
                            self.err(
                                p,
                                format!(
                                    "uplinks[{first}] already has local_ip; one uplink is the VXLAN endpoint"
                                ),
                            );
                        } else {
                            vtep = Some(i);
                        }
                        Some(v)
                    }
                }
            });
            let mtu = match u.mtu {
                None => DEFAULT_MTU,
                Some(m) => self.mtu(&format!("{base}.mtu"), m).unwrap_or(DEFAULT_MTU),
            };
            out.push(Uplink {
                name: u.name.clone(),
                physnet: u.physnet.clone(),
                binding,
                local_ip,
                mtu,
            });
        }
        out
    }

    /// The uplink of a flat or VLAN network's `physical_network`.
    fn physnet_uplink(
        &mut self,
        path: &str,
        ty: NetworkType,
        physnet: Option<&str>,
        physnets: &HashMap<&str, usize>,
    ) -> Option<usize> {
        match physnet {
            None => {
                self.err(path, format!("a {ty} network needs a physical_network"));
                None
            }
            Some(p) => {
                match physnets.get(p) {
                    Some(&u) => Some(u),
                    None => {
                        self.err(
                        path,
                        format!("no uplink carries physnet {p} (add an uplink with physnet = \"{p}\")"),
                    );
                        None
                    }
                }
            }
        }
    }

    fn mtu(&mut self, path: &str, mtu: i64) -> Option<u16> {
        if (MIN_MTU..=MAX_MTU).contains(&mtu) {
            Some(mtu as u16)
        } else {
            self.err(path, format!("MTU {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
            None
        }
    }

    fn networks(&mut self, networks: &[model::Network], uplinks: &[Uplink]) -> Checked<Network> {
        let mut out = Checked::default();
        let physnets: HashMap<&str, usize> = uplinks
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, u)| !u.physnet.is_empty())
            .map(|(i, u)| (u.physnet.as_str(), i))
            .collect();
        let vtep = uplinks.iter().position(|u| u.local_ip.is_some());
        let mut flat: HashMap<usize, String> = HashMap::new();
        let mut vlans: HashMap<(usize, u16), String> = HashMap::new();
        let mut vnis: HashMap<u32, String> = HashMap::new();
        for (i, n) in networks.iter().enumerate() {
            let base = format!("networks[{i}]");
            let before = self.errors.len();
            self.id(format!("{base}.id"), &n.id, "network", &mut out.by_id, i);
            let id_ok = self.clean(before);
            let ty = n.network_type;
            let pn_path = format!("{base}.physical_network");
            let seg_path = format!("{base}.segmentation_id");
            let physnet_uplink = |c: &mut Checker| -> Option<usize> {
                c.physnet_uplink(&pn_path, ty, n.physical_network.as_deref(), &physnets)
            };
            let segment = match ty {
                NetworkType::Local => {
                    if n.physical_network.is_some() {
                        self.err(&pn_path, "a local network has no physical_network");
                    }
                    if n.segmentation_id.is_some() {
                        self.err(&seg_path, "a local network has no segmentation_id");
                    }
                    Some(Segment::Local)
                }
                NetworkType::Flat if n.segmentation_id.is_some() => {
                    self.err(&seg_path, "a flat network has no segmentation_id");
                    physnet_uplink(self);
                    None
                }
                NetworkType::Flat => physnet_uplink(self).and_then(|uplink| {
                    if let Some(first) = flat.get(&uplink) {
                        let m = format!(
                            "physnet {} already carries flat network {first}; a physnet carries one",
                            uplinks[uplink].physnet
                        );
                        self.err(&pn_path, m);
                        None
                    } else {
                        flat.insert(uplink, n.id.clone());
                        Some(Segment::Flat { uplink })
                    }
                }),
                NetworkType::Vlan => {
                    let uplink = physnet_uplink(self);
                    let vid = match n.segmentation_id {
                        None => {
                            self.err(&seg_path, "a vlan network needs a segmentation_id (VLAN ID 1..=4094)");
                            None
                        }
                        Some(v) if (1..=4094).contains(&v) => Some(v as u16),
                        Some(v) => {
                            self.err(&seg_path, format!("{v} is not a VLAN ID (1..=4094)"));
                            None
                        }
                    };
                    match (uplink, vid) {
                        (Some(uplink), Some(vid)) => {
                            if let Some(first) = vlans.get(&(uplink, vid)) {
                                let m = format!(
                                    "VLAN {vid} on physnet {} is already used by network {first}",
                                    uplinks[uplink].physnet
                                );
                                self.err(&seg_path, m);
                                None
                            } else {
                                vlans.insert((uplink, vid), n.id.clone());
                                Some(Segment::Vlan { uplink, vid })
                            }
                        }
                        _ => None,
                    }
                }
                NetworkType::Vxlan => {
                    if n.physical_network.is_some() {
                        self.err(
                            &pn_path,
                            "a vxlan network has no physical_network; it uses the uplink with local_ip",
                        );
                    }
                    if vtep.is_none() {
                        self.err(
                            format!("{base}.network_type"),
                            "a vxlan network needs an uplink with local_ip (the VXLAN endpoint)",
                        );
                    }
                    let vni = match n.segmentation_id {
                        None => {
                            self.err(&seg_path, "a vxlan network needs a segmentation_id (VNI 1..=16777215)");
                            None
                        }
                        Some(v) if (1..=16_777_215).contains(&v) => {
                            let v = v as u32;
                            if let Some(first) = vnis.get(&v) {
                                let m = format!("VNI {v} is already used by network {first}");
                                self.err(&seg_path, m);
                                None
                            } else {
                                vnis.insert(v, n.id.clone());
                                Some(v)
                            }
                        }
                        Some(v) => {
                            self.err(&seg_path, format!("{v} is not a VXLAN VNI (1..=16777215)"));
                            None
                        }
                    };
                    match (vtep, vni) {
                        (Some(uplink), Some(vni)) => Some(Segment::Vxlan { uplink, vni }),
                        _ => None,
                    }
                }
            };
            let mtu_path = format!("{base}.mtu");
            let (limit, why) = match segment {
                Some(Segment::Flat { uplink } | Segment::Vlan { uplink, .. }) => (
                    Some(uplinks[uplink].mtu),
                    format!("the MTU of uplink {}", uplinks[uplink].name),
                ),
                Some(Segment::Vxlan { uplink, .. }) => (
                    uplinks[uplink].mtu.checked_sub(VXLAN_OVERHEAD),
                    format!(
                        "the MTU {} of uplink {} minus {VXLAN_OVERHEAD} bytes of VXLAN overhead",
                        uplinks[uplink].mtu, uplinks[uplink].name
                    ),
                ),
                _ => (None, String::new()),
            };
            let mtu = match n.mtu {
                Some(m) => self.mtu(&mtu_path, m),
                None => Some(limit.unwrap_or(DEFAULT_MTU)),
            };
            if let (Some(m), Some(limit)) = (mtu, limit) {
                if m > limit {
                    self.err(&mtu_path, format!("MTU {m} exceeds {limit}, {why}"));
                } else if i64::from(m) < MIN_MTU {
                    self.err(
                        &mtu_path,
                        format!("the default MTU {m} ({why}) is below {MIN_MTU}"),
                    );
                }
            }
            out.items.push(Network {
                id: n.id.clone(),
                name: n.name.clone(),
                segment: segment.unwrap_or(Segment::Local),
                mtu: mtu.unwrap_or(DEFAULT_MTU),
                admin_state_up: n.admin_state_up,
            });
            // Other objects may refer to a network whose segment is bad: that is the
            // network's error, not theirs.
            out.ok.push(id_ok);
        }
        out
    }

    fn subnets(
        &mut self,
        subnets: &[model::Subnet],
        networks: &Checked<Network>,
    ) -> Checked<Subnet> {
        let mut out: Checked<Subnet> = Checked::default();
        for (i, s) in subnets.iter().enumerate() {
            let base = format!("subnets[{i}]");
            let before = self.errors.len();
            self.id(format!("{base}.id"), &s.id, "subnet", &mut out.by_id, i);
            let network = self.reference(
                &format!("{base}.network_id"),
                &s.network_id,
                "network",
                networks,
            );
            let cidr = self.cidr(&format!("{base}.cidr"), &s.cidr);
            let core_ok = self.clean(before);
            let gateway_ip = s.gateway_ip.as_deref().and_then(|g| {
                let p = format!("{base}.gateway_ip");
                let ip = self.ip(&p, g)?;
                let cidr = cidr?;
                if !cidr.contains(ip) {
                    self.err(p, format!("{ip} is not inside the subnet's cidr {cidr}"));
                    None
                } else if cidr.is_reserved(ip) {
                    self.err(
                        p,
                        format!("{ip} is the network or broadcast address of {cidr}"),
                    );
                    None
                } else {
                    Some(ip)
                }
            });
            if let (Some(net), Some(gw)) = (network, gateway_ip) {
                self.use_ip(
                    &format!("{base}.gateway_ip"),
                    net,
                    gw,
                    format!("the gateway of subnet {}", s.id),
                );
            }
            let dns_nameservers = s
                .dns_nameservers
                .iter()
                .enumerate()
                .filter_map(|(k, d)| self.ip(&format!("{base}.dns_nameservers[{k}]"), d))
                .collect();
            let host_routes = s
                .host_routes
                .iter()
                .enumerate()
                .filter_map(|(k, r)| {
                    let p = format!("{base}.host_routes[{k}]");
                    let destination = self.cidr(&format!("{p}.destination"), &r.destination);
                    let nexthop = self.ip(&format!("{p}.nexthop"), &r.nexthop);
                    if let (Some(nh), Some(c)) = (nexthop, cidr) {
                        if !c.contains(nh) {
                            self.err(
                                format!("{p}.nexthop"),
                                format!("{nh} is not inside the subnet's cidr {c}"),
                            );
                        }
                    }
                    Some(Route {
                        destination: destination?,
                        nexthop: nexthop?,
                    })
                })
                .collect();
            let mut allocation_pools: Vec<(Ipv4Addr, Ipv4Addr)> = Vec::new();
            for (k, pool) in s.allocation_pools.iter().flatten().enumerate() {
                let p = format!("{base}.allocation_pools[{k}]");
                let start = self.ip(&format!("{p}.start"), &pool.start);
                let end = self.ip(&format!("{p}.end"), &pool.end);
                let (Some(start), Some(end), Some(c)) = (start, end, cidr) else {
                    continue;
                };
                let mut ok = true;
                for (f, ip) in [("start", start), ("end", end)] {
                    if !c.contains(ip) {
                        self.err(
                            format!("{p}.{f}"),
                            format!("{ip} is not inside the subnet's cidr {c}"),
                        );
                        ok = false;
                    } else if c.is_reserved(ip) {
                        self.err(
                            format!("{p}.{f}"),
                            format!("{ip} is the network or broadcast address of {c}"),
                        );
                        ok = false;
                    }
                }
                if !ok {
                    continue;
                }
                if start > end {
                    self.err(
                        format!("{p}.start"),
                        format!("{start} is after the pool's end {end}"),
                    );
                    continue;
                }
                if let Some(gw) = gateway_ip.filter(|gw| (start..=end).contains(gw)) {
                    self.err(
                        p.clone(),
                        format!("{start}-{end} contains the gateway_ip {gw}"),
                    );
                }
                if let Some((a, b)) = allocation_pools
                    .iter()
                    .find(|(a, b)| start <= *b && *a <= end)
                {
                    self.err(p, format!("{start}-{end} overlaps the pool {a}-{b}"));
                    continue;
                }
                allocation_pools.push((start, end));
            }
            let subnet = Subnet {
                id: s.id.clone(),
                network: network.unwrap_or(usize::MAX),
                cidr: cidr.unwrap_or(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
                gateway_ip,
                enable_dhcp: s.enable_dhcp,
                dns_nameservers,
                host_routes,
                allocation_pools,
            };
            // No two subnets of a network overlap.
            if core_ok {
                let clash = out.items.iter().zip(&out.ok).find(|(o, &ok)| {
                    ok && o.network == subnet.network && o.cidr.overlaps(&subnet.cidr)
                });
                if let Some((o, _)) = clash {
                    let m = format!(
                        "{} overlaps {} of subnet {} on network {}",
                        subnet.cidr, o.cidr, o.id, networks.items[subnet.network].id
                    );
                    self.err(format!("{base}.cidr"), m);
                }
            }
            out.items.push(subnet);
            out.ok.push(core_ok);
        }
        out
    }

    /// Resolves a reference to an item of `kind`; `None` (and an error when the id is
    /// unknown) when it does not resolve to a valid item.
    fn reference<T>(
        &mut self,
        path: &str,
        id: &str,
        kind: &str,
        items: &Checked<T>,
    ) -> Option<usize> {
        match items.by_id.get(id) {
            None => {
                self.err(path, format!("no {kind} has id {id:?}"));
                None
            }
            Some(&i) => items.ok[i].then_some(i),
        }
    }

    fn security_groups(&mut self, groups: &[model::SecurityGroup]) -> Checked<SecurityGroup> {
        let mut out: Checked<SecurityGroup> = Checked::default();
        for (i, g) in groups.iter().enumerate() {
            let before = self.errors.len();
            self.id(
                format!("security_groups[{i}].id"),
                &g.id,
                "security_group",
                &mut out.by_id,
                i,
            );
            out.ok.push(self.clean(before));
            out.items.push(SecurityGroup {
                id: g.id.clone(),
                rules: Vec::new(),
            });
        }
        for (i, g) in groups.iter().enumerate() {
            for (k, r) in g.rules.iter().enumerate() {
                let rule = self.rule(&format!("security_groups[{i}].rules[{k}]"), r, &out);
                out.items[i].rules.push(rule);
            }
        }
        out
    }

    fn rule(
        &mut self,
        base: &str,
        r: &model::SecurityGroupRule,
        groups: &Checked<SecurityGroup>,
    ) -> Rule {
        match r.ethertype.as_str() {
            "IPv4" => {}
            "IPv6" => self.err(
                format!("{base}.ethertype"),
                "IPv6 rules are not supported yet",
            ),
            e => self.err(
                format!("{base}.ethertype"),
                format!("{e:?} is not an ethertype (IPv4)"),
            ),
        }
        let protocol = r.protocol.as_ref().and_then(|p| {
            let parsed = match p {
                ProtocolSpec::Number(n) => u8::try_from(*n).ok(),
                ProtocolSpec::Name(s) => match s.to_ascii_lowercase().as_str() {
                    "tcp" => Some(6),
                    "udp" => Some(17),
                    "icmp" => Some(1),
                    s if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
                    _ => None,
                },
            };
            match parsed {
                Some(6) => Some(Protocol::Tcp),
                Some(17) => Some(Protocol::Udp),
                Some(1) => Some(Protocol::Icmp),
                Some(n) => Some(Protocol::Other(n)),
                None => {
                    self.err(
                        format!("{base}.protocol"),
                        format!("{p} is not a protocol (tcp, udp, icmp or a number 0..=255)"),
                    );
                    None
                }
            }
        });
        let mut port = |field: &str, v: Option<i64>| -> Option<u16> {
            let v = v?;
            match u16::try_from(v) {
                Ok(p) if p >= 1 => Some(p),
                _ => {
                    self.err(
                        format!("{base}.{field}"),
                        format!("{v} is not a port (1..=65535)"),
                    );
                    None
                }
            }
        };
        let min = port("port_range_min", r.port_range_min);
        let max = port("port_range_max", r.port_range_max);
        let ports = match (r.port_range_min, r.port_range_max) {
            (None, None) => None,
            (given_min, _) => {
                let field = if given_min.is_some() {
                    "port_range_min"
                } else {
                    "port_range_max"
                };
                // A protocol that did not parse was reported already.
                let protocol_bad = r.protocol.is_some() && protocol.is_none();
                if !protocol_bad && !matches!(protocol, Some(Protocol::Tcp | Protocol::Udp)) {
                    let proto = r
                        .protocol
                        .as_ref()
                        .map_or("any".to_owned(), |p| p.to_string());
                    self.err(
                        format!("{base}.{field}"),
                        format!("a port range needs protocol tcp or udp, not {proto}"),
                    );
                    None
                } else if r.port_range_min.is_none() {
                    self.err(
                        format!("{base}.port_range_min"),
                        "port_range_max needs port_range_min too",
                    );
                    None
                } else if r.port_range_max.is_none() {
                    self.err(
                        format!("{base}.port_range_max"),
                        "port_range_min needs port_range_max too",
                    );
                    None
                } else {
                    match (min, max) {
                        (Some(a), Some(b)) if a > b => {
                            self.err(
                                format!("{base}.port_range_min"),
                                format!("{a} is greater than port_range_max {b}"),
                            );
                            None
                        }
                        (Some(a), Some(b)) => Some((a, b)),
                        _ => None,
                    }
                }
            }
        };
        let remote = match (&r.remote_ip_prefix, &r.remote_group_id) {
            (Some(_), Some(_)) => {
                self.err(
                    format!("{base}.remote_group_id"),
                    "give remote_ip_prefix or remote_group_id, not both",
                );
                Remote::Any
            }
            (Some(p), None) => self
                .cidr(&format!("{base}.remote_ip_prefix"), p)
                .map_or(Remote::Any, Remote::Prefix),
            (None, Some(g)) => self
                .reference(
                    &format!("{base}.remote_group_id"),
                    g,
                    "security group",
                    groups,
                )
                .map_or(Remote::Any, Remote::Group),
            (None, None) => Remote::Any,
        };
        Rule {
            direction: r.direction,
            protocol,
            ports,
            remote,
        }
    }

    fn ports(
        &mut self,
        ports: &[model::Port],
        networks: &Checked<Network>,
        subnets: &Checked<Subnet>,
        groups: &Checked<SecurityGroup>,
    ) -> Checked<Port> {
        let mut out = Checked::default();
        let mut macs: HashMap<(usize, [u8; 6]), String> = HashMap::new();
        for (i, p) in ports.iter().enumerate() {
            let base = format!("ports[{i}]");
            let before = self.errors.len();
            self.id(format!("{base}.id"), &p.id, "port", &mut out.by_id, i);
            let network = self.reference(
                &format!("{base}.network_id"),
                &p.network_id,
                "network",
                networks,
            );
            let mac = self.mac(&format!("{base}.mac_address"), &p.mac_address);
            let core_ok = self.clean(before);
            let mut fixed_ips = Vec::new();
            for (k, f) in p.fixed_ips.iter().enumerate() {
                let fp = format!("{base}.fixed_ips[{k}]");
                let subnet =
                    self.reference(&format!("{fp}.subnet_id"), &f.subnet_id, "subnet", subnets);
                let ip = self.ip(&format!("{fp}.ip_address"), &f.ip_address);
                let (Some(si), Some(ip)) = (subnet, ip) else {
                    continue;
                };
                let s = &subnets.items[si];
                if let Some(net) = network.filter(|&n| n != s.network) {
                    self.err(
                        format!("{fp}.subnet_id"),
                        format!(
                            "subnet {} is on network {}, not on the port's network {}",
                            s.id, networks.items[s.network].id, networks.items[net].id
                        ),
                    );
                    continue;
                }
                let ip_path = format!("{fp}.ip_address");
                if self.host_ip(&ip_path, ip, s) {
                    self.use_ip(&ip_path, s.network, ip, format!("port {}", p.id));
                }
                fixed_ips.push(FixedIp { subnet: si, ip });
            }
            let mut security_groups = Vec::new();
            for (k, g) in p.security_groups.iter().enumerate() {
                let gp = format!("{base}.security_groups[{k}]");
                if let Some(gi) = self.reference(&gp, g, "security group", groups) {
                    if security_groups.contains(&gi) {
                        self.err(gp, format!("security group {g} is listed twice"));
                    } else {
                        security_groups.push(gi);
                    }
                }
            }
            if !p.port_security_enabled {
                if !p.security_groups.is_empty() {
                    self.err(
                        format!("{base}.security_groups"),
                        "a port with port_security_enabled = false has no security groups",
                    );
                }
                if !p.allowed_address_pairs.is_empty() {
                    self.err(
                        format!("{base}.allowed_address_pairs"),
                        "a port with port_security_enabled = false has no allowed_address_pairs",
                    );
                }
            }
            let mut allowed_address_pairs = Vec::new();
            let mut own_macs: Vec<([u8; 6], String)> = Vec::new();
            if let Some(m) = mac {
                own_macs.push((m, format!("{base}.mac_address")));
            }
            for (k, a) in p.allowed_address_pairs.iter().enumerate() {
                let ap = format!("{base}.allowed_address_pairs[{k}]");
                let ip = if a.ip_address.contains('/') {
                    self.cidr(&format!("{ap}.ip_address"), &a.ip_address)
                } else {
                    self.ip(&format!("{ap}.ip_address"), &a.ip_address)
                        .map(|ip| Ipv4Cidr::new(ip, 32))
                };
                let pair_mac = match &a.mac_address {
                    Some(m) => self.mac(&format!("{ap}.mac_address"), m),
                    None => mac,
                };
                if let (Some(m), Some(_)) = (pair_mac, &a.mac_address) {
                    if !own_macs.iter().any(|(o, _)| *o == m) {
                        own_macs.push((m, format!("{ap}.mac_address")));
                    }
                }
                if let (Some(ip), Some(mac)) = (ip, pair_mac) {
                    allowed_address_pairs.push(AddressPair { ip, mac });
                }
            }
            if let Some(net) = network {
                for (m, path) in own_macs {
                    match macs.get(&(net, m)) {
                        Some(owner) => {
                            let msg = format!(
                                "{} is already a MAC of port {owner} on network {}",
                                fmt_mac(m),
                                networks.items[net].id
                            );
                            self.err(path, msg);
                        }
                        None => {
                            macs.insert((net, m), p.id.clone());
                        }
                    }
                }
            }
            let binding = self.binding(
                &format!("{base}.binding"),
                &p.binding,
                &format!("port {}", p.id),
            );
            out.items.push(Port {
                id: p.id.clone(),
                network: network.unwrap_or(usize::MAX),
                mac: mac.unwrap_or_default(),
                fixed_ips,
                security_groups,
                port_security_enabled: p.port_security_enabled,
                allowed_address_pairs,
                binding,
            });
            out.ok.push(core_ok);
        }
        out
    }

    fn routers(
        &mut self,
        routers: &[model::Router],
        networks: &Checked<Network>,
        subnets: &Checked<Subnet>,
    ) -> Checked<Router> {
        let mut out = Checked::default();
        let mut attached: HashMap<usize, String> = HashMap::new();
        for (i, r) in routers.iter().enumerate() {
            let base = format!("routers[{i}]");
            let before = self.errors.len();
            self.id(format!("{base}.id"), &r.id, "router", &mut out.by_id, i);
            let id_ok = self.clean(before);
            let mut interfaces: Vec<usize> = Vec::new();
            for (k, sid) in r.interfaces.iter().enumerate() {
                let p = format!("{base}.interfaces[{k}]");
                let Some(si) = self.reference(&p, sid, "subnet", subnets) else {
                    continue;
                };
                let s = &subnets.items[si];
                if interfaces.contains(&si) {
                    self.err(p, format!("subnet {sid} is listed twice"));
                    continue;
                }
                if s.gateway_ip.is_none() {
                    self.err(
                        p,
                        format!("subnet {sid} has no gateway_ip for the router's interface"),
                    );
                    continue;
                }
                if let Some(other) = attached.get(&si) {
                    let m = format!("subnet {sid} already has an interface on router {other}");
                    self.err(p, m);
                    continue;
                }
                if let Some(&o) = interfaces
                    .iter()
                    .find(|&&o| subnets.items[o].network == s.network)
                {
                    // One interface per network: the data plane gives a router one MAC,
                    // and each network sees it once.
                    let m = format!(
                        "subnet {sid} is on the same network as subnet {}, which already has \
                         an interface on this router",
                        subnets.items[o].id
                    );
                    self.err(p, m);
                    continue;
                }
                if let Some(&o) = interfaces
                    .iter()
                    .find(|&&o| subnets.items[o].cidr.overlaps(&s.cidr))
                {
                    let o = &subnets.items[o];
                    self.err(
                        p,
                        format!(
                            "{} of subnet {sid} overlaps {} of subnet {} on the same router",
                            s.cidr, o.cidr, o.id
                        ),
                    );
                    continue;
                }
                attached.insert(si, r.id.clone());
                interfaces.push(si);
            }
            let external_gateway = r.external_gateway_info.as_ref().and_then(|g| {
                let gp = format!("{base}.external_gateway_info");
                let network = self.reference(
                    &format!("{gp}.network_id"),
                    &g.network_id,
                    "network",
                    networks,
                );
                let ip = self.ip(&format!("{gp}.external_fixed_ip"), &g.external_fixed_ip);
                let network = network?;
                if interfaces
                    .iter()
                    .any(|&s| subnets.items[s].network == network)
                {
                    self.err(
                        format!("{gp}.network_id"),
                        format!(
                            "network {} is also on an interface of this router",
                            g.network_id
                        ),
                    );
                    return None;
                }
                let ip = ip?;
                let ip_path = format!("{gp}.external_fixed_ip");
                let subnet = self.subnet_of(&ip_path, network, ip, subnets, networks)?;
                if !self.host_ip(&ip_path, ip, &subnets.items[subnet]) {
                    return None;
                }
                self.use_ip(
                    &ip_path,
                    network,
                    ip,
                    format!("the gateway of router {}", r.id),
                );
                Some(ExternalGateway {
                    network,
                    subnet,
                    ip,
                    enable_snat: g.enable_snat,
                })
            });
            let connected: Vec<Ipv4Cidr> = interfaces
                .iter()
                .map(|&s| subnets.items[s].cidr)
                .chain(external_gateway.map(|g| subnets.items[g.subnet].cidr))
                .collect();
            let routes = r
                .routes
                .iter()
                .enumerate()
                .filter_map(|(k, rt)| {
                    let p = format!("{base}.routes[{k}]");
                    let destination = self.cidr(&format!("{p}.destination"), &rt.destination);
                    let nexthop = self.ip(&format!("{p}.nexthop"), &rt.nexthop)?;
                    if !connected.iter().any(|c| c.contains(nexthop)) {
                        self.err(
                            format!("{p}.nexthop"),
                            format!(
                                "{nexthop} is not inside a subnet connected to router {}",
                                r.id
                            ),
                        );
                    }
                    Some(Route {
                        destination: destination?,
                        nexthop,
                    })
                })
                .collect();
            out.items.push(Router {
                id: r.id.clone(),
                interfaces,
                external_gateway,
                routes,
            });
            out.ok.push(id_ok);
        }
        out
    }

    /// The valid subnet of `network` that contains `ip`; an error when there is none.
    fn subnet_of(
        &mut self,
        path: &str,
        network: usize,
        ip: Ipv4Addr,
        subnets: &Checked<Subnet>,
        networks: &Checked<Network>,
    ) -> Option<usize> {
        let found = subnets
            .items
            .iter()
            .zip(&subnets.ok)
            .position(|(s, &ok)| ok && s.network == network && s.cidr.contains(ip));
        if found.is_none() {
            let net = &networks.items[network].id;
            let has_subnets = subnets
                .items
                .iter()
                .zip(&subnets.ok)
                .any(|(s, &ok)| ok && s.network == network);
            if has_subnets {
                self.err(
                    path,
                    format!("{ip} is not inside a subnet of network {net}"),
                );
            } else {
                self.err(
                    path,
                    format!("{ip} needs a subnet of network {net}, which has none"),
                );
            }
        }
        found
    }

    fn floating_ips(
        &mut self,
        fips: &[model::FloatingIp],
        ports: &Checked<Port>,
        subnets: &Checked<Subnet>,
        routers: &Checked<Router>,
    ) -> Checked<FloatingIp> {
        let mut out = Checked::default();
        let mut mapped: HashMap<(usize, Ipv4Addr), String> = HashMap::new();
        for (i, f) in fips.iter().enumerate() {
            let base = format!("floating_ips[{i}]");
            let before = self.errors.len();
            self.id(
                format!("{base}.id"),
                &f.id,
                "floating_ip",
                &mut out.by_id,
                i,
            );
            let addr_path = format!("{base}.floating_ip_address");
            let address = self.ip(&addr_path, &f.floating_ip_address);
            // The external network and subnet that hold the address.
            let ext = address.and_then(|ip| {
                let found = routers
                    .items
                    .iter()
                    .filter_map(|r| r.external_gateway)
                    .find_map(|g| {
                        subnets
                            .items
                            .iter()
                            .zip(&subnets.ok)
                            .position(|(s, &ok)| ok && s.network == g.network && s.cidr.contains(ip))
                    });
                if found.is_none() {
                    self.err(
                        &addr_path,
                        format!(
                            "{ip} is not inside a subnet of an external network (one that a router's external_gateway_info names)"
                        ),
                    );
                }
                let s = &subnets.items[found?];
                if !self.host_ip(&addr_path, ip, s) {
                    return None;
                }
                self.use_ip(&addr_path, s.network, ip, format!("floating IP {}", f.id));
                Some(s.network)
            });
            let target = match (&f.port_id, &f.fixed_ip_address) {
                (None, None) => None,
                (None, Some(_)) => {
                    self.err(format!("{base}.fixed_ip_address"), "fixed_ip_address needs a port_id");
                    None
                }
                (Some(pid), fixed) => self
                    .reference(&format!("{base}.port_id"), pid, "port", ports)
                    .and_then(|pi| {
                        let port = &ports.items[pi];
                        let fixed = match fixed {
                            Some(s) => {
                                let p = format!("{base}.fixed_ip_address");
                                let ip = self.ip(&p, s)?;
                                let found = port.fixed_ips.iter().find(|x| x.ip == ip).copied();
                                if found.is_none() {
                                    self.err(p, format!("{ip} is not a fixed IP of port {pid}"));
                                }
                                found?
                            }
                            None => match port.fixed_ips.as_slice() {
                                [one] => *one,
                                [] => {
                                    self.err(format!("{base}.port_id"), format!("port {pid} has no fixed IP"));
                                    return None;
                                }
                                _ => {
                                    self.err(
                                        format!("{base}.fixed_ip_address"),
                                        format!("port {pid} has several fixed IPs; name one here"),
                                    );
                                    return None;
                                }
                            },
                        };
                        let ext = ext?;
                        let router = routers.items.iter().position(|r| {
                            r.interfaces.contains(&fixed.subnet)
                                && r.external_gateway.is_some_and(|g| g.network == ext)
                        });
                        let Some(router) = router else {
                            self.err(
                                format!("{base}.port_id"),
                                format!(
                                    "subnet {} of port {pid} has no router with a gateway on the floating IP's network",
                                    subnets.items[fixed.subnet].id
                                ),
                            );
                            return None;
                        };
                        if let Some(other) = mapped.get(&(pi, fixed.ip)) {
                            let m = format!(
                                "fixed IP {} of port {pid} already has floating IP {other}",
                                fixed.ip
                            );
                            self.err(format!("{base}.port_id"), m);
                            return None;
                        }
                        mapped.insert((pi, fixed.ip), f.id.clone());
                        Some(FloatingIpTarget {
                            port: pi,
                            fixed_ip: fixed.ip,
                            router,
                        })
                    }),
            };
            out.items.push(FloatingIp {
                id: f.id.clone(),
                address: address.unwrap_or(Ipv4Addr::UNSPECIFIED),
                network: ext.unwrap_or(usize::MAX),
                target,
            });
            out.ok.push(self.clean(before));
        }
        out
    }
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| format!("{s} is not an IPv4 address"))
}

/// Parses an IPv4 prefix whose host bits are zero (`198.18.1.0/24`).
pub fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let (addr, prefix) = parse_addr_prefix(s)?;
    let cidr = Ipv4Cidr::new(addr, prefix);
    if cidr.addr != addr {
        return Err(format!("{s} has host bits set (the prefix is {cidr})"));
    }
    Ok(cidr)
}

/// Parses an interface address with its prefix length (`198.18.255.1/24`).
pub fn parse_interface_addr(s: &str) -> Result<(Ipv4Addr, Ipv4Cidr), String> {
    if !s.contains('/') {
        return Err(format!(
            "{s} needs a prefix length, as in {s}/24 (the endpoint's subnet)"
        ));
    }
    let (addr, prefix) = parse_addr_prefix(s)?;
    Ok((addr, Ipv4Cidr::new(addr, prefix)))
}

fn parse_addr_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let Some((a, p)) = s.split_once('/') else {
        return Err(format!(
            "{s} is not a CIDR (expected an IPv4 prefix like 198.18.1.0/24)"
        ));
    };
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s} is not a CIDR: {a} is not an IPv4 address"))?;
    let digits_ok = !p.is_empty()
        && p.len() <= 2
        && p.bytes().all(|b| b.is_ascii_digit())
        && !(p.len() > 1 && p.starts_with('0'));
    let prefix = match p.parse::<u8>() {
        Ok(p) if digits_ok && p <= 32 => p,
        _ => {
            return Err(format!(
                "{s} is not a CIDR: the prefix length must be 0..=32"
            ))
        }
    };
    Ok((addr, prefix))
}

/// Parses a MAC (`fa:16:3e:00:00:01`, six hex bytes separated by colons).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s} is not a MAC address (six hex bytes like fa:16:3e:00:00:01)");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Parses a MAC a station may own: unicast and not all zeros.
pub fn parse_station_mac(s: &str) -> Result<[u8; 6], String> {
    let mac = parse_mac(s)?;
    if mac[0] & 1 == 1 {
        return Err(format!(
            "{s} is a multicast MAC; a port needs a unicast MAC"
        ));
    }
    if mac == [0; 6] {
        return Err(format!("{s} is not a station address"));
    }
    Ok(mac)
}

/// Checks a Linux interface name: 1..=15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("an interface name cannot be empty".to_owned())
    } else if name.len() > 15 {
        Err(format!(
            "interface name {name:?} is {} bytes; Linux allows at most 15",
            name.len()
        ))
    } else if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Err(format!("{name:?} is not a valid interface name"))
    } else {
        Ok(())
    }
}

/// Formats a MAC as `fa:16:3e:00:00:01`.
pub fn fmt_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
