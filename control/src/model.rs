//! The desired state: what a client asks Pollux to be, in Neutron's vocabulary.
//!
//! These are the serde types of the configuration file (TOML) and of `config.apply`
//! (JSON); both use the same schema, the one sketched in `DESIGN.md` "External contract".
//! Field names follow the Neutron API so that a Neutron user recognises every object.
//!
//! Unknown fields are rejected, so a typo is an error rather than a silently ignored
//! setting. Addresses, MACs and CIDRs stay strings here and numbers stay wide (`i64`), so
//! that a bad value still deserialises and reaches [`crate::validate`], which reports it
//! with the path of the field (`ports[3].fixed_ips[0].ip_address: ...`). Only the shape of
//! the document (types, enum values, unknown or missing fields) is checked while parsing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The whole desired state of one Pollux node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// Learning parameters (`[l2]`).
    #[serde(default)]
    pub l2: L2,
    /// Physical network attachments (Neutron's `bridge_mappings` and tunnel `local_ip`).
    #[serde(default)]
    pub uplinks: Vec<Uplink>,
    /// Networks.
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Subnets.
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    /// Ports (VM interfaces).
    #[serde(default)]
    pub ports: Vec<Port>,
    /// Routers.
    #[serde(default)]
    pub routers: Vec<Router>,
    /// Floating IPs.
    #[serde(default)]
    pub floating_ips: Vec<FloatingIp>,
    /// Security groups.
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
}

/// The top-level keys of a desired state, in document order. Every validation error path
/// starts with one of them.
pub const TOP_LEVEL_KEYS: [&str; 8] = [
    "l2",
    "uplinks",
    "networks",
    "subnets",
    "ports",
    "routers",
    "floating_ips",
    "security_groups",
];

/// MAC learning parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L2 {
    /// Seconds after which an idle learned MAC is forgotten (default 300).
    #[serde(default = "default_mac_aging_secs")]
    pub mac_aging_secs: i64,
    /// Most learned MACs per network (default 8192).
    #[serde(default = "default_mac_limit_per_network")]
    pub mac_limit_per_network: i64,
}

impl Default for L2 {
    fn default() -> Self {
        L2 {
            mac_aging_secs: default_mac_aging_secs(),
            mac_limit_per_network: default_mac_limit_per_network(),
        }
    }
}

fn default_mac_aging_secs() -> i64 {
    300
}

fn default_mac_limit_per_network() -> i64 {
    8192
}

fn default_true() -> bool {
    true
}

fn default_ethertype() -> String {
    "IPv4".to_owned()
}

/// An uplink: the port that carries one physical network (an entry of Neutron's
/// `bridge_mappings`), and optionally the VXLAN tunnel endpoint (`local_ip`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// Unique name of the uplink.
    pub name: String,
    /// The physical network it carries (`physical_network` of flat and VLAN networks).
    pub physnet: String,
    /// How the uplink is attached.
    pub binding: Binding,
    /// Address with prefix length (`198.18.255.1/24`) of the VXLAN endpoint on this uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
    /// MTU of the physical network (default 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
}

/// Neutron's `network_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// Only between ports of this host.
    Local,
    /// Untagged on a physical network.
    Flat,
    /// 802.1Q-tagged on a physical network.
    Vlan,
    /// VXLAN-encapsulated between tunnel endpoints.
    Vxlan,
}

impl fmt::Display for NetworkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkType::Local => "local",
            NetworkType::Flat => "flat",
            NetworkType::Vlan => "vlan",
            NetworkType::Vxlan => "vxlan",
        })
    }
}

/// A network (an L2 broadcast domain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// How the network is carried.
    pub network_type: NetworkType,
    /// The physnet of a flat or VLAN network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical_network: Option<String>,
    /// VLAN ID (vlan) or VNI (vxlan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation_id: Option<i64>,
    /// MTU. When absent: 1500 for local networks, the uplink's MTU for flat and VLAN
    /// networks, and the uplink's MTU minus the 50 bytes of VXLAN overhead for vxlan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// Whether the network forwards (default true).
    #[serde(default = "default_true")]
    pub admin_state_up: bool,
}

/// An IPv4 subnet of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// Unique id.
    pub id: String,
    /// The network it belongs to.
    pub network_id: String,
    /// The prefix, host bits zero (`198.18.1.0/24`).
    pub cidr: String,
    /// The gateway (a router interface takes this address). Absent: no gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<String>,
    /// Whether the built-in DHCP server serves this subnet (default true).
    #[serde(default = "default_true")]
    pub enable_dhcp: bool,
    /// DNS servers handed out by DHCP.
    #[serde(default)]
    pub dns_nameservers: Vec<String>,
    /// Static routes handed out by DHCP (option 121).
    #[serde(default)]
    pub host_routes: Vec<Route>,
    /// Ranges DHCP allocates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_pools: Option<Vec<AllocationPool>>,
}

/// A static route: `destination` (a CIDR) via `nexthop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination prefix.
    pub destination: String,
    /// Next hop address.
    pub nexthop: String,
}

/// An inclusive address range of a subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationPool {
    /// First address.
    pub start: String,
    /// Last address.
    pub end: String,
}

/// A port: one VM interface on one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// Unique id.
    pub id: String,
    /// The network it is an access port of.
    pub network_id: String,
    /// Its unicast MAC (`fa:16:3e:00:00:01`).
    pub mac_address: String,
    /// Its addresses.
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    /// Security group ids applied to it.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Anti-spoofing and security groups on (default true).
    #[serde(default = "default_true")]
    pub port_security_enabled: bool,
    /// Further addresses the port may use as source.
    #[serde(default)]
    pub allowed_address_pairs: Vec<AddressPair>,
    /// How the port is attached.
    pub binding: Binding,
}

/// An address of a port in one subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedIp {
    /// The subnet.
    pub subnet_id: String,
    /// The address.
    pub ip_address: String,
}

/// An entry of `allowed_address_pairs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    /// An address or a CIDR.
    pub ip_address: String,
    /// The MAC that may use it (default: the port's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
}

/// How a port or uplink is attached to the data plane (Neutron's binding, by driver).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "driver", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Binding {
    /// An AF_XDP socket on a kernel interface.
    Afxdp {
        /// The interface name.
        interface: String,
        /// Queue ids to bind (default: queue 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queues: Option<Vec<i64>>,
    },
    /// A vhost-user socket (the switch is the back end of a VM's virtio-net device).
    VhostUser {
        /// Path of the Unix socket.
        socket: String,
    },
    /// An in-process ring pair, for tests and benchmarks.
    Mem {},
    /// A tap device.
    Tap {
        /// The interface name.
        interface: String,
    },
}

/// A router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Router {
    /// Unique id.
    pub id: String,
    /// Subnet ids it has an interface on (each at the subnet's `gateway_ip`).
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Its gateway to an external network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_gateway_info: Option<ExternalGateway>,
    /// Extra routes.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// A router's gateway to an external network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalGateway {
    /// The external network.
    pub network_id: String,
    /// The router's address on it.
    pub external_fixed_ip: String,
    /// Whether traffic leaving through the gateway is source-NATed (default true).
    #[serde(default = "default_true")]
    pub enable_snat: bool,
}

/// A floating IP: an external address mapped 1:1 to a port's fixed IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatingIp {
    /// Unique id.
    pub id: String,
    /// The external address.
    pub floating_ip_address: String,
    /// The port it is associated with (absent: allocated but unassociated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_id: Option<String>,
    /// Which of the port's fixed IPs (needed when the port has several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_ip_address: Option<String>,
}

/// A security group: a set of allow rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    /// Unique id.
    pub id: String,
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<SecurityGroupRule>,
}

/// Direction of a security group rule, seen from the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic to the port.
    Ingress,
    /// Traffic from the port.
    Egress,
}

/// A rule's protocol: a name (`tcp`, `udp`, `icmp`, or a number in a string, as the
/// Neutron API allows) or an IP protocol number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProtocolSpec {
    /// IP protocol number.
    Number(i64),
    /// Protocol name.
    Name(String),
}

impl fmt::Display for ProtocolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolSpec::Number(n) => write!(f, "{n}"),
            ProtocolSpec::Name(s) => f.write_str(s),
        }
    }
}

/// One allow rule of a security group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRule {
    /// Ingress or egress.
    pub direction: Direction,
    /// `IPv4` (default); `IPv6` is not supported yet.
    #[serde(default = "default_ethertype")]
    pub ethertype: String,
    /// Protocol; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
    /// First port (tcp, udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_min: Option<i64>,
    /// Last port (tcp, udp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_max: Option<i64>,
    /// Remote addresses this rule allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    /// Remote ports (members of this group) this rule allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group_id: Option<String>,
}

/// Which syntax a document was in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// TOML (configuration files).
    Toml,
    /// JSON (`config.apply`).
    Json,
}

/// Why a document is not a desired state: bad syntax, or a shape that does not match the
/// schema (an unknown field, a missing field, a wrong type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The document's syntax.
    pub format: Format,
    /// 1-based line of the offending text, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending text, when known.
    pub column: Option<usize>,
    /// The item the error is in (`ports[3]`), when known: the first list item, by
    /// top-level key, that does not fit its type (with several bad items, it may be
    /// another one than the line and column point at).
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.format {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " line {l}, column {c}")?,
            (Some(l), None) => write!(f, " line {l}")?,
            _ => {}
        }
        if let Some(p) = &self.path {
            write!(f, " in {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ParseError {}

impl DesiredState {
    /// Reads a desired state from TOML (a configuration file).
    pub fn from_toml_str(text: &str) -> Result<Self, ParseError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_column(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            // The item is located on the document as data, which only works when the
            // syntax is fine; otherwise the line and column say enough.
            let path = toml::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| locate(&v));
            ParseError {
                format: Format::Toml,
                line,
                column,
                path,
                message: e.message().trim_end().to_owned(),
            }
        })
    }

    /// Reads a desired state from JSON (the `config.apply` parameter).
    pub fn from_json_str(text: &str) -> Result<Self, ParseError> {
        serde_json::from_str(text).map_err(|e| {
            let path = if e.is_data() {
                serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| locate(&v))
            } else {
                None
            };
            let message = strip_json_position(&e.to_string());
            ParseError {
                format: Format::Json,
                line: (e.line() > 0).then_some(e.line()),
                column: (e.column() > 0).then_some(e.column()),
                path,
                message,
            }
        })
    }

    /// Writes the desired state as pretty-printed JSON.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("the model serialises to JSON")
    }
}

/// 1-based line and column (in characters) of byte offset `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// serde_json appends " at line L column C" to its messages; the position is reported in
/// fields of its own.
fn strip_json_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Finds the first list item of a document (already parsed as data) that does not
/// deserialise into its type, as `ports[3]`.
fn locate(doc: &serde_json::Value) -> Option<String> {
    fn first_bad<T: serde::de::DeserializeOwned>(
        key: &str,
        v: &serde_json::Value,
    ) -> Option<String> {
        match v {
            serde_json::Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                serde_json::from_value::<T>(item.clone())
                    .err()
                    .map(|_| format!("{key}[{i}]"))
            }),
            _ => Some(key.to_owned()),
        }
    }
    let obj = doc.as_object()?;
    for (key, v) in obj {
        let bad = match key.as_str() {
            "l2" => serde_json::from_value::<L2>(v.clone())
                .err()
                .map(|_| "l2".to_owned()),
            "uplinks" => first_bad::<Uplink>(key, v),
            "networks" => first_bad::<Network>(key, v),
            "subnets" => first_bad::<Subnet>(key, v),
            "ports" => first_bad::<Port>(key, v),
            "routers" => first_bad::<Router>(key, v),
            "floating_ips" => first_bad::<FloatingIp>(key, v),
            "security_groups" => first_bad::<SecurityGroup>(key, v),
            _ => None,
        };
        if bad.is_some() {
            return bad;
        }
    }
    None
}
