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

use pollux_dataplane::ratelimit::BucketConfig;
use pollux_dataplane::snapshot::L2Config;

use crate::compile::{DHCP_MAC_PREFIX, ROUTER_MAC_PREFIX};
use crate::dhcp::server::DEFAULT_LEASE_TIME;
use crate::dhcp::wire::push_classless_route;
use crate::dhcp::ExtraOption;
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
    /// Rate limits of the DHCP server.
    pub dhcp: DhcpLimits,
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

/// Checked rate limits of the DHCP server (`[dhcp]`): rates 0..=1,000,000 per second,
/// bursts 1..=1,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpLimits {
    /// Messages one port may send to its network's DHCP server (`port_rate`,
    /// `port_burst`).
    pub port: BucketConfig,
    /// Messages per client MAC (`client_rate`, `client_burst`): the server's per-client
    /// limit.
    pub client: BucketConfig,
    /// Messages one network's server handles in all (`network_rate`, `network_burst`):
    /// the server's global limit.
    pub network: BucketConfig,
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
    /// Domain name for DHCP option 15 (RFC 1123, without a trailing dot; an empty
    /// `dns_domain` is none).
    pub dns_domain: Option<String>,
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
    /// The DHCP server's address: `Some` exactly when `enable_dhcp`. Inside `cidr`, a host
    /// address no one else on the network uses (`dhcp_server_ip`, by default the last
    /// host address of `cidr`).
    pub dhcp_server_ip: Option<Ipv4Addr>,
    /// Lease time in seconds (`dhcp_lease_duration`); `u32::MAX` is infinite.
    pub lease_time: u32,
    /// Whether MACs that are no port's get addresses (`dhcp_serve_unknown`).
    pub serve_unknown: bool,
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
    /// Host name for DHCP option 12 (`dns_name`: one label or a FQDN, RFC 1123, without a
    /// trailing dot; an empty `dns_name` is none).
    pub hostname: Option<String>,
    /// Its DHCPv4 `extra_dhcp_opts`, encoded (IPv6 entries are left out), distinct codes.
    pub extra_dhcp_opts: Vec<ExtraOption>,
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
/// Shortest `dhcp_lease_duration` in seconds (a shorter lease only makes clients chatty).
pub const MIN_LEASE_DURATION: i64 = 60;
/// Largest `dhcp_lease_duration` in seconds: 2^31 - 1 (-1 is infinite).
pub const MAX_LEASE_DURATION: i64 = i32::MAX as i64;
/// Largest DHCP rate (per second) and burst of `[dhcp]`.
pub const MAX_DHCP_LIMIT: i64 = 1_000_000;

/// Checks a desired state; see the module documentation.
pub fn validate(state: &DesiredState) -> Result<Validated, Vec<ValidationError>> {
    let mut c = Checker::default();
    let l2 = c.l2(&state.l2);
    let dhcp = c.dhcp_limits(&state.dhcp);
    let uplinks = c.uplinks(&state.uplinks);
    let networks = c.networks(&state.networks, &uplinks);
    let subnets = c.subnets(&state.subnets, &networks);
    let security_groups = c.security_groups(&state.security_groups);
    let ports = c.ports(&state.ports, &networks, &subnets, &security_groups);
    let routers = c.routers(&state.routers, &networks, &subnets);
    let floating_ips = c.floating_ips(&state.floating_ips, &ports, &subnets, &routers);
    // Last: every other address of each network is known by now.
    c.dhcp_servers(&state.subnets, &subnets);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Validated {
        l2,
        dhcp,
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
            Ok(m) if m[..3] == ROUTER_MAC_PREFIX || m[..3] == DHCP_MAC_PREFIX => {
                let what = if m[..3] == ROUTER_MAC_PREFIX {
                    "routers"
                } else {
                    "DHCP servers"
                };
                self.err(
                    path,
                    format!(
                        "{s} is in {}/24, which polluxd reserves for its {what}",
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

    fn dhcp_limits(&mut self, d: &model::DhcpLimits) -> DhcpLimits {
        let mut bucket = |name: &str, rate: i64, burst: i64, default: BucketConfig| {
            let mut out = default;
            match u32::try_from(rate) {
                Ok(v) if i64::from(v) <= MAX_DHCP_LIMIT => out.rate_per_sec = v,
                _ => self.err(
                    format!("dhcp.{name}_rate"),
                    format!("{rate} is outside 0..={MAX_DHCP_LIMIT} (messages per second)"),
                ),
            }
            match u32::try_from(burst) {
                Ok(v) if v >= 1 && i64::from(v) <= MAX_DHCP_LIMIT => out.burst = v,
                _ => self.err(
                    format!("dhcp.{name}_burst"),
                    format!("{burst} is outside 1..={MAX_DHCP_LIMIT} (messages)"),
                ),
            }
            out
        };
        let defaults = model::DhcpLimits::default();
        let default_of = |rate: i64, burst: i64| BucketConfig {
            rate_per_sec: rate as u32,
            burst: burst as u32,
        };
        DhcpLimits {
            port: bucket(
                "port",
                d.port_rate,
                d.port_burst,
                default_of(defaults.port_rate, defaults.port_burst),
            ),
            client: bucket(
                "client",
                d.client_rate,
                d.client_burst,
                default_of(defaults.client_rate, defaults.client_burst),
            ),
            network: bucket(
                "network",
                d.network_rate,
                d.network_burst,
                default_of(defaults.network_rate, defaults.network_burst),
            ),
        }
    }

    /// Checks an optional DNS name; an empty one is none.
    fn dns_name(&mut self, path: String, name: Option<&str>) -> Option<String> {
        match name {
            None | Some("") => None,
            Some(n) => match check_dns_name(n) {
                Ok(n) => Some(n),
                Err(m) => {
                    self.err(path, m);
                    None
                }
            },
        }
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
                dns_domain: self.dns_name(format!("{base}.dns_domain"), n.dns_domain.as_deref()),
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
            let lease_time = match s.dhcp_lease_duration {
                None => DEFAULT_LEASE_TIME,
                Some(-1) => u32::MAX,
                Some(d) if (MIN_LEASE_DURATION..=MAX_LEASE_DURATION).contains(&d) => d as u32,
                Some(d) => {
                    self.err(
                        format!("{base}.dhcp_lease_duration"),
                        format!(
                            "{d} is not a lease time: give seconds in \
                             {MIN_LEASE_DURATION}..={MAX_LEASE_DURATION}, or -1 for infinite"
                        ),
                    );
                    DEFAULT_LEASE_TIME
                }
            };
            let dhcp_server_ip = self.subnet_dhcp_server_ip(&base, s, cidr, gateway_ip);
            let mut subnet = Subnet {
                id: s.id.clone(),
                network: network.unwrap_or(usize::MAX),
                cidr: cidr.unwrap_or(Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0)),
                gateway_ip,
                enable_dhcp: s.enable_dhcp,
                dns_nameservers,
                host_routes,
                allocation_pools,
                dhcp_server_ip,
                lease_time,
                serve_unknown: s.dhcp_serve_unknown,
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
                    // Its DHCP address would collide with the other subnet's: a
                    // consequence, not reported.
                    subnet.dhcp_server_ip = None;
                }
            }
            out.items.push(subnet);
            out.ok.push(core_ok);
        }
        out
    }

    /// The DHCP server address of a subnet, with the checks that need only the subnet:
    /// `None` when DHCP is off (a given `dhcp_server_ip` is still checked then) or the
    /// address is bad. Collisions with other users of the network are checked last, by
    /// [`Checker::dhcp_servers`].
    fn subnet_dhcp_server_ip(
        &mut self,
        base: &str,
        s: &model::Subnet,
        cidr: Option<Ipv4Cidr>,
        gateway_ip: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        let path = format!("{base}.dhcp_server_ip");
        let explicit = match s.dhcp_server_ip.as_deref() {
            Some(text) => Some(self.ip(&path, text)?),
            None => None,
        };
        let cidr = cidr?;
        if s.enable_dhcp && cidr.prefix >= 31 {
            self.err(
                format!("{base}.enable_dhcp"),
                format!(
                    "{cidr} has no room for a DHCP server next to its hosts; set \
                     enable_dhcp = false"
                ),
            );
            return None;
        }
        let ip = match explicit {
            Some(ip) => {
                if !cidr.contains(ip) {
                    self.err(path, format!("{ip} is not inside the subnet's cidr {cidr}"));
                    return None;
                }
                if cidr.is_reserved(ip) {
                    self.err(
                        path,
                        format!("{ip} is the network or broadcast address of {cidr}"),
                    );
                    return None;
                }
                if gateway_ip == Some(ip) {
                    self.err(path, format!("{ip} is the subnet's gateway_ip"));
                    return None;
                }
                ip
            }
            None if !s.enable_dhcp => return None,
            None => {
                let ip = default_dhcp_server_ip(cidr);
                if gateway_ip == Some(ip) {
                    self.err(
                        path,
                        format!(
                            "the default DHCP server address {ip} (the last host address of \
                             {cidr}) is the subnet's gateway_ip; set dhcp_server_ip to a free \
                             address of the subnet"
                        ),
                    );
                    return None;
                }
                ip
            }
        };
        s.enable_dhcp.then_some(ip)
    }

    /// Checks that no one else on its network uses a subnet's DHCP server address (ports'
    /// fixed IPs, router gateways and floating IPs are all known by now), and reserves it.
    fn dhcp_servers(&mut self, subnets: &[model::Subnet], checked: &Checked<Subnet>) {
        for (i, (s, v)) in subnets.iter().zip(&checked.items).enumerate() {
            let (Some(ip), true) = (v.dhcp_server_ip, checked.ok[i]) else {
                continue;
            };
            let path = format!("subnets[{i}].dhcp_server_ip");
            match self.used_ips.get(&(v.network, ip)) {
                Some(owner) => {
                    let m = if s.dhcp_server_ip.is_none() {
                        format!(
                            "the default DHCP server address {ip} (the last host address of {}) \
                             is already used by {owner}; set dhcp_server_ip to a free address \
                             of the subnet",
                            v.cidr
                        )
                    } else {
                        format!("{ip} is already used by {owner}")
                    };
                    self.err(path, m);
                }
                None => {
                    let who = format!("the DHCP server of subnet {}", v.id);
                    self.used_ips.insert((v.network, ip), who);
                }
            }
        }
    }

    /// Encodes a port's `extra_dhcp_opts`; IPv6 entries are checked for their
    /// `ip_version` only and left out.
    fn extra_dhcp_opts(&mut self, base: &str, opts: &[model::ExtraDhcpOpt]) -> Vec<ExtraOption> {
        let mut out: Vec<ExtraOption> = Vec::new();
        let mut first: HashMap<u8, usize> = HashMap::new();
        for (k, o) in opts.iter().enumerate() {
            let p = format!("{base}.extra_dhcp_opts[{k}]");
            match o.ip_version {
                None | Some(4) => {}
                Some(6) => continue,
                Some(v) => {
                    self.err(
                        format!("{p}.ip_version"),
                        format!("{v} is not an IP version (4, or 6 for DHCPv6, not served yet)"),
                    );
                    continue;
                }
            }
            let (code, kind) = match dhcp_option_code(&o.opt_name) {
                Ok(c) => c,
                Err(m) => {
                    self.err(format!("{p}.opt_name"), m);
                    continue;
                }
            };
            let value = match encode_dhcp_option(code, kind, &o.opt_value) {
                Ok(v) => v,
                Err(m) => {
                    self.err(format!("{p}.opt_value"), m);
                    continue;
                }
            };
            if let Some(j) = first.insert(code, k) {
                first.insert(code, j);
                self.err(
                    format!("{p}.opt_name"),
                    format!("option {code} is already set by extra_dhcp_opts[{j}]"),
                );
                continue;
            }
            out.push(ExtraOption { code, value });
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
            let hostname = self.dns_name(format!("{base}.dns_name"), p.dns_name.as_deref());
            let extra_dhcp_opts = self.extra_dhcp_opts(&base, &p.extra_dhcp_opts);
            out.items.push(Port {
                id: p.id.clone(),
                network: network.unwrap_or(usize::MAX),
                mac: mac.unwrap_or_default(),
                fixed_ips,
                security_groups,
                port_security_enabled: p.port_security_enabled,
                allowed_address_pairs,
                binding,
                hostname,
                extra_dhcp_opts,
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

/// The DHCP server address of a subnet that does not name one: its last host address
/// (`.254` of a /24). Meant for prefixes up to /30.
pub fn default_dhcp_server_ip(cidr: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.broadcast()).wrapping_sub(1))
}

/// Checks a DNS name (RFC 1123): one label or several joined by dots, a trailing dot
/// allowed, at most 253 bytes, labels of 1..=63 letters, digits and `-` that neither start
/// nor end with `-`. Returns the name without its trailing dot.
pub fn check_dns_name(name: &str) -> Result<String, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err(format!("{name:?} is not a DNS name"));
    }
    if bare.len() > 253 {
        return Err(format!(
            "the name is {} bytes; a DNS name has at most 253",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(format!("{name:?} is not a DNS name: it has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} is {} bytes; a label has at most 63",
                label.len()
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} has characters other than \
                 letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} starts or ends with '-'"
            ));
        }
    }
    Ok(bare.to_owned())
}

/// How the value of a DHCP option is written in `extra_dhcp_opts` and encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpOptionKind {
    /// One IPv4 address.
    Ip,
    /// Comma-separated IPv4 addresses, at least one.
    IpList,
    /// Comma-separated IPv4 addresses in pairs (option 33: destination, router).
    IpPairs,
    /// An integer 0..=255.
    U8,
    /// An integer 0..=65535, big-endian.
    U16,
    /// An integer 0..=2^32-1, big-endian.
    U32,
    /// `0` or `1`.
    Bool,
    /// Text, sent as is (no trailing NUL).
    Text,
    /// Comma-separated domain names in RFC 1035 encoding (option 119, RFC 3397).
    DomainSearch,
    /// Comma-separated `destination/prefix,router` pairs (option 121, RFC 3442).
    ClasslessRoutes,
    /// An option polluxd does not know: hex bytes (`0x0a0b` or `0a:0b`), else text.
    Raw,
}

/// dnsmasq's names of the options `extra_dhcp_opts` may set, with their codes and value
/// kinds.
const DHCP_OPTION_NAMES: [(&str, u8, DhcpOptionKind); 28] = [
    ("netmask", 1, DhcpOptionKind::Ip),
    ("router", 3, DhcpOptionKind::IpList),
    ("dns-server", 6, DhcpOptionKind::IpList),
    ("log-server", 7, DhcpOptionKind::IpList),
    ("hostname", 12, DhcpOptionKind::Text),
    ("domain-name", 15, DhcpOptionKind::Text),
    ("swap-server", 16, DhcpOptionKind::Ip),
    ("root-path", 17, DhcpOptionKind::Text),
    ("ip-forward-enable", 19, DhcpOptionKind::Bool),
    ("mtu", 26, DhcpOptionKind::U16),
    ("broadcast", 28, DhcpOptionKind::Ip),
    ("static-route", 33, DhcpOptionKind::IpPairs),
    ("nis-domain", 40, DhcpOptionKind::Text),
    ("nis-server", 41, DhcpOptionKind::IpList),
    ("ntp-server", 42, DhcpOptionKind::IpList),
    ("vendor-encap", 43, DhcpOptionKind::Raw),
    ("netbios-ns", 44, DhcpOptionKind::IpList),
    ("netbios-dd", 45, DhcpOptionKind::IpList),
    ("netbios-nodetype", 46, DhcpOptionKind::U8),
    ("netbios-scope", 47, DhcpOptionKind::Text),
    ("x-windows-fs", 48, DhcpOptionKind::IpList),
    ("x-windows-dm", 49, DhcpOptionKind::IpList),
    ("tftp-server", 66, DhcpOptionKind::Text),
    ("bootfile-name", 67, DhcpOptionKind::Text),
    ("user-class", 77, DhcpOptionKind::Raw),
    ("client-arch", 93, DhcpOptionKind::U16),
    ("domain-search", 119, DhcpOptionKind::DomainSearch),
    (
        "classless-static-route",
        121,
        DhcpOptionKind::ClasslessRoutes,
    ),
];

/// Names of options the DHCP server sets itself, so that naming one gets a clear refusal
/// rather than "unknown name".
const DHCP_SERVER_OPTION_NAMES: [(&str, u8); 10] = [
    ("requested-address", 50),
    ("lease-time", 51),
    ("option-overload", 52),
    ("message-type", 53),
    ("server-identifier", 54),
    ("parameter-request", 55),
    ("max-message-size", 57),
    ("t1", 58),
    ("t2", 59),
    ("client-id", 61),
];

/// Resolves an `extra_dhcp_opts` name as dnsmasq (and so Neutron) reads it: a number
/// (`42`), a name (`ntp-server`), or either after `option:`; case is ignored. Options the
/// server sets itself (0, 50..=55, 57..=59, 61, 255) are refused, and so is
/// `server-ip-address` (the `siaddr` header field, not an option).
pub fn dhcp_option_code(name: &str) -> Result<(u8, DhcpOptionKind), String> {
    let lower = name.trim().to_ascii_lowercase();
    if lower.starts_with("option6:") {
        return Err(format!(
            "{name} is a DHCPv6 option; give it ip_version = 6 (DHCPv6 is not served yet)"
        ));
    }
    if lower.starts_with("tag:") || lower.contains(',') {
        return Err(format!(
            "{name}: dnsmasq tags are not supported; give the option's name or number"
        ));
    }
    let bare = lower.strip_prefix("option:").unwrap_or(&lower);
    let code = if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        match bare.parse::<u8>() {
            Ok(c) => c,
            Err(_) => return Err(format!("{name} is not an option code (1..=254)")),
        }
    } else if bare == "server-ip-address" {
        return Err(
            "server-ip-address sets the siaddr header field, which polluxd does not set; \
             give a TFTP server as tftp-server (option 66)"
                .to_owned(),
        );
    } else if let Some(&(_, c, _)) = DHCP_OPTION_NAMES.iter().find(|(n, _, _)| *n == bare) {
        c
    } else if let Some(&(_, c)) = DHCP_SERVER_OPTION_NAMES.iter().find(|(n, _)| *n == bare) {
        c
    } else {
        return Err(format!(
            "{name} is not a DHCP option name polluxd knows; give the option's number \
             (option:NUMBER)"
        ));
    };
    match code {
        0 | 255 => Err(format!("{code} is not an option code (1..=254)")),
        51 | 58 | 59 => Err(format!(
            "option {code} (lease, renewal and rebinding times) is set by the DHCP server; \
             set the subnet's dhcp_lease_duration instead"
        )),
        50 | 52 | 53 | 54 | 55 | 57 | 61 => Err(format!(
            "option {code} is part of the DHCP exchange and set by the server itself"
        )),
        _ => {
            let kind = DHCP_OPTION_NAMES
                .iter()
                .find(|(_, c, _)| *c == code)
                .map_or(DhcpOptionKind::Raw, |&(_, _, k)| k);
            Ok((code, kind))
        }
    }
}

/// Encodes an `extra_dhcp_opts` value of option `code` as `kind` says; at most 255 bytes.
pub fn encode_dhcp_option(code: u8, kind: DhcpOptionKind, value: &str) -> Result<Vec<u8>, String> {
    if value.trim().is_empty() {
        return Err(format!("option {code} needs a value"));
    }
    let items = || value.split(',').map(str::trim);
    let ips = |min: usize| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for item in items() {
            if item.is_empty() {
                return Err(format!("{value:?} has an empty list entry (option {code})"));
            }
            out.extend_from_slice(&parse_ipv4(item)?.octets());
        }
        if out.len() / 4 < min {
            return Err(format!(
                "option {code} needs at least {min} IPv4 address(es)"
            ));
        }
        Ok(out)
    };
    let int = |max: u64| -> Result<u64, String> {
        let t = value.trim();
        t.parse::<u64>()
            .ok()
            .filter(|&n| n <= max && !t.starts_with('+'))
            .ok_or_else(|| format!("{value:?} is not an integer 0..={max} (option {code})"))
    };
    let out = match kind {
        DhcpOptionKind::Ip => {
            let v = ips(1)?;
            if v.len() != 4 {
                return Err(format!("option {code} takes one IPv4 address"));
            }
            v
        }
        DhcpOptionKind::IpList => ips(1)?,
        DhcpOptionKind::IpPairs => {
            let v = ips(2)?;
            if !v.len().is_multiple_of(8) {
                return Err(format!(
                    "option {code} takes pairs of IPv4 addresses (destination,router)"
                ));
            }
            v
        }
        DhcpOptionKind::U8 => vec![int(u64::from(u8::MAX))? as u8],
        DhcpOptionKind::U16 => (int(u64::from(u16::MAX))? as u16).to_be_bytes().to_vec(),
        DhcpOptionKind::U32 => (int(u64::from(u32::MAX))? as u32).to_be_bytes().to_vec(),
        DhcpOptionKind::Bool => match value.trim() {
            "0" => vec![0],
            "1" => vec![1],
            _ => return Err(format!("{value:?} is not 0 or 1 (option {code})")),
        },
        DhcpOptionKind::Text => value.as_bytes().to_vec(),
        DhcpOptionKind::DomainSearch => {
            let mut out = Vec::new();
            for item in items() {
                for label in check_dns_name(item)?.split('.') {
                    out.push(label.len() as u8);
                    out.extend_from_slice(label.as_bytes());
                }
                out.push(0);
            }
            out
        }
        DhcpOptionKind::ClasslessRoutes => {
            let parts: Vec<&str> = items().collect();
            if !parts.len().is_multiple_of(2) {
                return Err(format!(
                    "option {code} takes pairs destination/prefix,router (e.g. \
                     198.19.0.0/16,198.18.1.1)"
                ));
            }
            let mut out = Vec::new();
            for pair in parts.chunks(2) {
                let dst = parse_cidr(pair[0])?;
                let router = parse_ipv4(pair[1])?;
                push_classless_route(&mut out, dst.addr, dst.prefix, router);
            }
            out
        }
        DhcpOptionKind::Raw => parse_hex_bytes(value).unwrap_or_else(|| value.as_bytes().to_vec()),
    };
    if out.is_empty() {
        return Err(format!("option {code} needs a value"));
    }
    if out.len() > 255 {
        return Err(format!(
            "the value of option {code} is {} bytes encoded; an option holds at most 255",
            out.len()
        ));
    }
    Ok(out)
}

/// Bytes written as `0x0a0b` or `0a:0b` (at least two octets with colons), as dnsmasq
/// reads hex; `None` for anything else.
fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty()
            || !hex.len().is_multiple_of(2)
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
    }
    if !s.contains(':') {
        return None;
    }
    s.split(':')
        .map(|p| {
            let ok = (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| u8::from_str_radix(p, 16).ok()).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network with a /24 (DHCP on by default) and a port, a router with an external
    /// gateway and a floating IP.
    const BASE: &str = r#"
        [[networks]]
        id = "net-a"
        network_type = "local"

        [[networks]]
        id = "ext"
        network_type = "local"

        [[subnets]]
        id = "sub-a"
        network_id = "net-a"
        cidr = "198.18.1.0/24"
        gateway_ip = "198.18.1.1"

        [[subnets]]
        id = "sub-ext"
        network_id = "ext"
        cidr = "203.0.113.0/24"
        gateway_ip = "203.0.113.1"

        [[ports]]
        id = "vm1"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.10" }]
        binding = { driver = "mem" }

        [[routers]]
        id = "r1"
        interfaces = ["sub-a"]
        external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.10" }

        [[floating_ips]]
        id = "fip1"
        floating_ip_address = "203.0.113.20"
        port_id = "vm1"
    "#;

    fn base() -> DesiredState {
        DesiredState::from_toml_str(BASE).expect("the base state parses")
    }

    fn errors(state: &DesiredState) -> Vec<String> {
        match validate(state) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[track_caller]
    fn assert_errors(state: &DesiredState, expected: &[&str]) {
        assert_eq!(errors(state), expected);
    }

    fn opt(name: &str, value: &str) -> model::ExtraDhcpOpt {
        model::ExtraDhcpOpt {
            opt_name: name.into(),
            opt_value: value.into(),
            ip_version: None,
        }
    }

    /// The encoding of one extra option, or its error.
    fn encode(name: &str, value: &str) -> Result<(u8, Vec<u8>), String> {
        let (code, kind) = dhcp_option_code(name)?;
        Ok((code, encode_dhcp_option(code, kind, value)?))
    }

    #[test]
    fn dhcp_defaults() {
        let v = validate(&base()).unwrap();
        let s = &v.subnets[0];
        assert_eq!(s.dhcp_server_ip, Some(Ipv4Addr::new(198, 18, 1, 254)));
        assert_eq!(s.lease_time, 86_400);
        assert!(!s.serve_unknown);
        assert_eq!(v.networks[0].dns_domain, None);
        assert_eq!(v.ports[0].hostname, None);
        assert!(v.ports[0].extra_dhcp_opts.is_empty());
        assert_eq!(
            v.dhcp,
            DhcpLimits {
                port: BucketConfig {
                    rate_per_sec: 100,
                    burst: 200
                },
                client: BucketConfig {
                    rate_per_sec: 5,
                    burst: 20
                },
                network: BucketConfig {
                    rate_per_sec: 5000,
                    burst: 1000
                },
            }
        );
        // Without DHCP there is no server address.
        let mut state = base();
        state.subnets[0].enable_dhcp = false;
        assert_eq!(validate(&state).unwrap().subnets[0].dhcp_server_ip, None);
        // A /30's last host address.
        state.subnets[0].enable_dhcp = true;
        state.subnets[0].cidr = "198.18.1.8/30".into();
        state.subnets[0].gateway_ip = Some("198.18.1.9".into());
        state.ports[0].fixed_ips.clear();
        state.floating_ips[0].port_id = None;
        let v = validate(&state).unwrap();
        assert_eq!(
            v.subnets[0].dhcp_server_ip,
            Some(Ipv4Addr::new(198, 18, 1, 10))
        );
    }

    #[test]
    fn dhcp_settings_are_read() {
        let mut state = base();
        state.dhcp.port_rate = 0;
        state.dhcp.port_burst = 1;
        state.dhcp.network_rate = 1_000_000;
        state.subnets[0].dhcp_server_ip = Some("198.18.1.2".into());
        state.subnets[0].dhcp_lease_duration = Some(-1);
        state.subnets[0].dhcp_serve_unknown = true;
        state.subnets[1].dhcp_lease_duration = Some(60);
        state.networks[0].dns_domain = Some("Example.org.".into());
        state.networks[1].dns_domain = Some(String::new());
        state.ports[0].dns_name = Some("vm-1.example.org".into());
        let v = validate(&state).unwrap();
        assert_eq!(
            v.dhcp.port,
            BucketConfig {
                rate_per_sec: 0,
                burst: 1
            }
        );
        assert_eq!(v.dhcp.network.rate_per_sec, 1_000_000);
        assert_eq!(
            v.subnets[0].dhcp_server_ip,
            Some(Ipv4Addr::new(198, 18, 1, 2))
        );
        assert_eq!(v.subnets[0].lease_time, u32::MAX);
        assert!(v.subnets[0].serve_unknown);
        assert_eq!(v.subnets[1].lease_time, 60);
        assert_eq!(v.networks[0].dns_domain.as_deref(), Some("Example.org"));
        assert_eq!(v.networks[1].dns_domain, None);
        assert_eq!(v.ports[0].hostname.as_deref(), Some("vm-1.example.org"));
        // A server address given with DHCP off is checked, then not used.
        state.subnets[0].enable_dhcp = false;
        assert_eq!(validate(&state).unwrap().subnets[0].dhcp_server_ip, None);
        state.subnets[0].dhcp_server_ip = Some("198.18.2.2".into());
        assert_errors(
            &state,
            &["subnets[0].dhcp_server_ip: 198.18.2.2 is not inside the subnet's cidr 198.18.1.0/24"],
        );
    }

    #[test]
    fn dhcp_limits_are_bounded() {
        let mut state = base();
        state.dhcp.port_rate = -1;
        state.dhcp.port_burst = 0;
        state.dhcp.client_rate = 1_000_001;
        state.dhcp.client_burst = 1_000_001;
        state.dhcp.network_rate = i64::MAX;
        state.dhcp.network_burst = -5;
        assert_errors(
            &state,
            &[
                "dhcp.port_rate: -1 is outside 0..=1000000 (messages per second)",
                "dhcp.port_burst: 0 is outside 1..=1000000 (messages)",
                "dhcp.client_rate: 1000001 is outside 0..=1000000 (messages per second)",
                "dhcp.client_burst: 1000001 is outside 1..=1000000 (messages)",
                "dhcp.network_rate: 9223372036854775807 is outside 0..=1000000 (messages per second)",
                "dhcp.network_burst: -5 is outside 1..=1000000 (messages)",
            ],
        );
    }

    #[test]
    fn lease_durations() {
        let mut state = base();
        for bad in [0, 59, -2, 1 << 31] {
            state.subnets[0].dhcp_lease_duration = Some(bad);
            assert_errors(
                &state,
                &[&format!(
                    "subnets[0].dhcp_lease_duration: {bad} is not a lease time: give seconds in \
                     60..=2147483647, or -1 for infinite"
                )],
            );
        }
        state.subnets[0].dhcp_lease_duration = Some((1 << 31) - 1);
        assert_eq!(
            validate(&state).unwrap().subnets[0].lease_time,
            i32::MAX as u32
        );
    }

    #[test]
    fn dhcp_server_ip_must_be_a_free_host_address_of_the_subnet() {
        let cases = [
            ("198.18.1.300", "198.18.1.300 is not an IPv4 address"),
            (
                "198.18.2.5",
                "198.18.2.5 is not inside the subnet's cidr 198.18.1.0/24",
            ),
            (
                "198.18.1.0",
                "198.18.1.0 is the network or broadcast address of 198.18.1.0/24",
            ),
            (
                "198.18.1.255",
                "198.18.1.255 is the network or broadcast address of 198.18.1.0/24",
            ),
            ("198.18.1.1", "198.18.1.1 is the subnet's gateway_ip"),
            ("198.18.1.10", "198.18.1.10 is already used by port vm1"),
        ];
        for (ip, message) in cases {
            let mut state = base();
            state.subnets[0].dhcp_server_ip = Some(ip.into());
            assert_errors(&state, &[&format!("subnets[0].dhcp_server_ip: {message}")]);
        }
        // The router's external address and a floating IP, on the external subnet.
        for (ip, owner) in [
            ("203.0.113.10", "the gateway of router r1"),
            ("203.0.113.20", "floating IP fip1"),
        ] {
            let mut state = base();
            state.subnets[1].dhcp_server_ip = Some(ip.into());
            assert_errors(
                &state,
                &[&format!(
                    "subnets[1].dhcp_server_ip: {ip} is already used by {owner}"
                )],
            );
        }
    }

    #[test]
    fn a_colliding_default_asks_for_an_explicit_address() {
        let mut state = base();
        state.ports[0].fixed_ips[0].ip_address = "198.18.1.254".into();
        assert_errors(
            &state,
            &[
                "subnets[0].dhcp_server_ip: the default DHCP server address 198.18.1.254 (the \
               last host address of 198.18.1.0/24) is already used by port vm1; set \
               dhcp_server_ip to a free address of the subnet",
            ],
        );
        state.subnets[0].dhcp_server_ip = Some("198.18.1.253".into());
        assert!(validate(&state).is_ok());

        let mut state = base();
        state.subnets[1].gateway_ip = Some("203.0.113.254".into());
        assert_errors(
            &state,
            &[
                "subnets[1].dhcp_server_ip: the default DHCP server address 203.0.113.254 (the \
               last host address of 203.0.113.0/24) is the subnet's gateway_ip; set \
               dhcp_server_ip to a free address of the subnet",
            ],
        );
        // A floating IP on the default address.
        let mut state = base();
        state.floating_ips[0].floating_ip_address = "203.0.113.254".into();
        assert_errors(
            &state,
            &[
                "subnets[1].dhcp_server_ip: the default DHCP server address 203.0.113.254 (the \
               last host address of 203.0.113.0/24) is already used by floating IP fip1; set \
               dhcp_server_ip to a free address of the subnet",
            ],
        );
    }

    #[test]
    fn dhcp_needs_room_in_the_subnet() {
        for cidr in ["198.18.1.0/31", "198.18.1.0/32"] {
            let mut state = base();
            state.routers.clear();
            state.floating_ips.clear();
            state.subnets[0].cidr = cidr.into();
            state.subnets[0].gateway_ip = None;
            state.ports[0].fixed_ips[0].ip_address = "198.18.1.0".into();
            assert_errors(
                &state,
                &[&format!(
                    "subnets[0].enable_dhcp: {cidr} has no room for a DHCP server next to its \
                     hosts; set enable_dhcp = false"
                )],
            );
            state.subnets[0].enable_dhcp = false;
            assert!(validate(&state).is_ok(), "{cidr} without DHCP");
        }
    }

    #[test]
    fn dns_names() {
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62),
        ]
        .join(".");
        assert_eq!(long_name.len(), 254);
        let cases = [
            (
                "a..b",
                "\"a..b\" is not a DNS name: it has an empty label".to_owned(),
            ),
            (".", "\".\" is not a DNS name".to_owned()),
            (
                "under_score",
                "\"under_score\" is not a DNS name: label \"under_score\" has characters \
                 other than letters, digits and '-'"
                    .to_owned(),
            ),
            (
                "-vm",
                "\"-vm\" is not a DNS name: label \"-vm\" starts or ends with '-'".to_owned(),
            ),
            (
                &long_label,
                format!(
                    "{long_label:?} is not a DNS name: label {long_label:?} is 64 bytes; a \
                     label has at most 63"
                ),
            ),
            (
                &long_name,
                "the name is 254 bytes; a DNS name has at most 253".to_owned(),
            ),
        ];
        for (name, message) in &cases {
            let mut state = base();
            state.networks[0].dns_domain = Some((*name).to_owned());
            state.ports[0].dns_name = Some((*name).to_owned());
            assert_errors(
                &state,
                &[
                    &format!("networks[0].dns_domain: {message}"),
                    &format!("ports[0].dns_name: {message}"),
                ],
            );
        }
        assert_eq!(check_dns_name("vm1").as_deref(), Ok("vm1"));
        assert_eq!(
            check_dns_name("3com.example.").as_deref(),
            Ok("3com.example")
        );
        let max = &long_name[1..];
        assert_eq!(check_dns_name(max).as_deref(), Ok(max));
    }

    #[test]
    fn reserved_macs_are_refused() {
        let mut state = base();
        state.ports[0].mac_address = "02:70:64:00:00:01".into();
        assert_errors(
            &state,
            &[
                "ports[0].mac_address: 02:70:64:00:00:01 is in 02:70:64:00:00:00/24, which \
               polluxd reserves for its DHCP servers",
            ],
        );
        let mut state = base();
        state.ports[0].allowed_address_pairs = vec![model::AddressPair {
            ip_address: "198.18.1.50".into(),
            mac_address: Some("02:70:64:ab:cd:ef".into()),
        }];
        assert_errors(
            &state,
            &[
                "ports[0].allowed_address_pairs[0].mac_address: 02:70:64:ab:cd:ef is in \
               02:70:64:00:00:00/24, which polluxd reserves for its DHCP servers",
            ],
        );
        let mut state = base();
        state.ports[0].mac_address = "02:70:6c:00:00:01".into();
        assert_errors(
            &state,
            &[
                "ports[0].mac_address: 02:70:6c:00:00:01 is in 02:70:6c:00:00:00/24, which \
               polluxd reserves for its routers",
            ],
        );
    }

    #[test]
    fn extra_option_names_and_numbers() {
        let ntp = Ok((42, vec![198, 18, 1, 1, 198, 18, 1, 2]));
        for name in [
            "ntp-server",
            "option:ntp-server",
            "42",
            "option:42",
            "NTP-Server",
        ] {
            assert_eq!(encode(name, "198.18.1.1,198.18.1.2"), ntp, "{name}");
        }
        assert_eq!(encode("ntp-server", " 198.18.1.1 , 198.18.1.2 "), ntp);
        let table: [(&str, u8); 28] = [
            ("netmask", 1),
            ("router", 3),
            ("dns-server", 6),
            ("log-server", 7),
            ("hostname", 12),
            ("domain-name", 15),
            ("swap-server", 16),
            ("root-path", 17),
            ("ip-forward-enable", 19),
            ("mtu", 26),
            ("broadcast", 28),
            ("static-route", 33),
            ("nis-domain", 40),
            ("nis-server", 41),
            ("ntp-server", 42),
            ("vendor-encap", 43),
            ("netbios-ns", 44),
            ("netbios-dd", 45),
            ("netbios-nodetype", 46),
            ("netbios-scope", 47),
            ("x-windows-fs", 48),
            ("x-windows-dm", 49),
            ("tftp-server", 66),
            ("bootfile-name", 67),
            ("user-class", 77),
            ("client-arch", 93),
            ("domain-search", 119),
            ("classless-static-route", 121),
        ];
        for (name, code) in table {
            assert_eq!(dhcp_option_code(name).map(|c| c.0), Ok(code), "{name}");
        }
    }

    #[test]
    fn extra_option_encodings_are_byte_exact() {
        let cases: [(&str, &str, u8, Vec<u8>); 16] = [
            ("netmask", "255.255.255.0", 1, vec![255, 255, 255, 0]),
            ("router", "198.18.1.1", 3, vec![198, 18, 1, 1]),
            (
                "static-route",
                "198.19.0.0,198.18.1.2",
                33,
                vec![198, 19, 0, 0, 198, 18, 1, 2],
            ),
            ("ip-forward-enable", "1", 19, vec![1]),
            ("mtu", "1450", 26, vec![0x05, 0xaa]),
            ("netbios-nodetype", "8", 46, vec![8]),
            ("client-arch", "7", 93, vec![0, 7]),
            ("bootfile-name", "pxelinux.0", 67, b"pxelinux.0".to_vec()),
            ("tftp-server", "tftp.example", 66, b"tftp.example".to_vec()),
            ("hostname", "other", 12, b"other".to_vec()),
            (
                "domain-search",
                "example.org,eng.example.org.",
                119,
                [
                    &b"\x07example\x03org\x00"[..],
                    &b"\x03eng\x07example\x03org\x00"[..],
                ]
                .concat(),
            ),
            (
                "classless-static-route",
                "198.19.0.0/16,198.18.1.2,0.0.0.0/0,198.18.1.1",
                121,
                vec![16, 198, 19, 198, 18, 1, 2, 0, 198, 18, 1, 1],
            ),
            // Unknown codes: text, or hex bytes.
            ("150", "198.18.1.5", 150, b"198.18.1.5".to_vec()),
            ("option:224", "0x0a0B", 224, vec![0x0a, 0x0b]),
            ("224", "0a:b:ff", 224, vec![0x0a, 0x0b, 0xff]),
            (
                "vendor-encap",
                "01:04:c0:a8:00:01",
                43,
                vec![1, 4, 0xc0, 0xa8, 0, 1],
            ),
        ];
        for (name, value, code, bytes) in cases {
            assert_eq!(encode(name, value), Ok((code, bytes)), "{name} = {value}");
        }
        // Text that only looks a little like hex stays text.
        assert_eq!(encode("224", "0xabc"), Ok((224, b"0xabc".to_vec())));
        assert_eq!(encode("224", "abc"), Ok((224, b"abc".to_vec())));
    }

    #[test]
    fn extra_options_reach_the_validated_port() {
        let mut state = base();
        state.ports[0].extra_dhcp_opts = vec![
            opt("ntp-server", "198.18.1.1,198.18.1.2"),
            model::ExtraDhcpOpt {
                ip_version: Some(6),
                ..opt("dns-server", "2001:db8::1")
            },
            model::ExtraDhcpOpt {
                ip_version: Some(4),
                ..opt("bootfile-name", "pxelinux.0")
            },
        ];
        let v = validate(&state).unwrap();
        assert_eq!(
            v.ports[0].extra_dhcp_opts,
            [
                ExtraOption::raw(42, [198, 18, 1, 1, 198, 18, 1, 2]),
                ExtraOption::text(67, "pxelinux.0"),
            ]
        );
    }

    #[test]
    fn extra_option_errors() {
        let long = "x".repeat(256);
        let many_ips = vec!["198.18.1.1"; 64].join(",");
        let cases: Vec<(model::ExtraDhcpOpt, &str)> = vec![
            (
                opt("no-such-option", "1"),
                "opt_name: no-such-option is not a DHCP option name polluxd knows; give the \
                 option's number (option:NUMBER)",
            ),
            (
                opt("256", "1"),
                "opt_name: 256 is not an option code (1..=254)",
            ),
            (opt("0", "1"), "opt_name: 0 is not an option code (1..=254)"),
            (
                opt("option:255", "1"),
                "opt_name: 255 is not an option code (1..=254)",
            ),
            (
                opt("lease-time", "60"),
                "opt_name: option 51 (lease, renewal and rebinding times) is set by the DHCP \
                 server; set the subnet's dhcp_lease_duration instead",
            ),
            (
                opt("58", "60"),
                "opt_name: option 58 (lease, renewal and rebinding times) is set by the DHCP \
                 server; set the subnet's dhcp_lease_duration instead",
            ),
            (
                opt("server-identifier", "198.18.1.1"),
                "opt_name: option 54 is part of the DHCP exchange and set by the server itself",
            ),
            (
                opt("option:61", "x"),
                "opt_name: option 61 is part of the DHCP exchange and set by the server itself",
            ),
            (
                opt("server-ip-address", "198.18.1.5"),
                "opt_name: server-ip-address sets the siaddr header field, which polluxd does \
                 not set; give a TFTP server as tftp-server (option 66)",
            ),
            (
                opt("option6:dns-server", "2001:db8::1"),
                "opt_name: option6:dns-server is a DHCPv6 option; give it ip_version = 6 \
                 (DHCPv6 is not served yet)",
            ),
            (
                opt("tag:pxe,bootfile-name", "x"),
                "opt_name: tag:pxe,bootfile-name: dnsmasq tags are not supported; give the \
                 option's name or number",
            ),
            (
                model::ExtraDhcpOpt {
                    ip_version: Some(5),
                    ..opt("ntp-server", "198.18.1.1")
                },
                "ip_version: 5 is not an IP version (4, or 6 for DHCPv6, not served yet)",
            ),
            (
                opt("ntp-server", "198.18.1.x"),
                "opt_value: 198.18.1.x is not an IPv4 address",
            ),
            (opt("ntp-server", ""), "opt_value: option 42 needs a value"),
            (
                opt("ntp-server", "198.18.1.1,"),
                "opt_value: \"198.18.1.1,\" has an empty list entry (option 42)",
            ),
            (
                opt("netmask", "255.255.255.0,255.0.0.0"),
                "opt_value: option 1 takes one IPv4 address",
            ),
            (
                opt("static-route", "198.19.0.0"),
                "opt_value: option 33 needs at least 2 IPv4 address(es)",
            ),
            (
                opt("static-route", "198.19.0.0,198.18.1.1,198.20.0.0"),
                "opt_value: option 33 takes pairs of IPv4 addresses (destination,router)",
            ),
            (
                opt("mtu", "65536"),
                "opt_value: \"65536\" is not an integer 0..=65535 (option 26)",
            ),
            (
                opt("netbios-nodetype", "-1"),
                "opt_value: \"-1\" is not an integer 0..=255 (option 46)",
            ),
            (
                opt("ip-forward-enable", "yes"),
                "opt_value: \"yes\" is not 0 or 1 (option 19)",
            ),
            (
                opt("bootfile-name", ""),
                "opt_value: option 67 needs a value",
            ),
            (
                opt("root-path", &long),
                "opt_value: the value of option 17 is 256 bytes encoded; an option holds at \
                 most 255",
            ),
            (
                opt("dns-server", &many_ips),
                "opt_value: the value of option 6 is 256 bytes encoded; an option holds at \
                 most 255",
            ),
            (
                opt("domain-search", "example.org,bad_name"),
                "opt_value: \"bad_name\" is not a DNS name: label \"bad_name\" has characters \
                 other than letters, digits and '-'",
            ),
            (
                opt("classless-static-route", "198.19.0.1/16,198.18.1.1"),
                "opt_value: 198.19.0.1/16 has host bits set (the prefix is 198.19.0.0/16)",
            ),
            (
                opt("classless-static-route", "198.19.0.0/16"),
                "opt_value: option 121 takes pairs destination/prefix,router (e.g. \
                 198.19.0.0/16,198.18.1.1)",
            ),
        ];
        for (o, message) in cases {
            let mut state = base();
            state.ports[0].extra_dhcp_opts = vec![o.clone()];
            assert_errors(&state, &[&format!("ports[0].extra_dhcp_opts[0].{message}")]);
        }
        // The same option twice.
        let mut state = base();
        state.ports[0].extra_dhcp_opts = vec![
            opt("42", "198.18.1.1"),
            opt("bootfile-name", "a"),
            opt("ntp-server", "198.18.1.2"),
        ];
        assert_errors(
            &state,
            &[
                "ports[0].extra_dhcp_opts[2].opt_name: option 42 is already set by \
               extra_dhcp_opts[0]",
            ],
        );
    }
}
