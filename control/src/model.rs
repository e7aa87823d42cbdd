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
    /// Rate limits of the built-in DHCP server (`[dhcp]`); left out when all are defaults.
    #[serde(default, skip_serializing_if = "DhcpLimits::is_default")]
    pub dhcp: DhcpLimits,
    /// The metadata proxy (`[metadata]`): where requests to 169.254.169.254 go. Absent:
    /// no proxy, nothing is intercepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// This polluxd's own settings (`[agent]`): the host it runs on.
    #[serde(default, skip_serializing_if = "Agent::is_default")]
    pub agent: Agent,
    /// The hosts of the deployment and their tunnel endpoints (`[[hosts]]`): where ports
    /// bound to another host are reached over the overlay (l2population).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Host>,
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
    /// Security group rules outside their group, as the Neutron API lists them (each with
    /// its `id` and `security_group_id`); besides the rules nested in their group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_rules: Vec<SecurityGroupRule>,
    /// Address groups (Neutron's), for `remote_address_group_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub address_groups: Vec<AddressGroup>,
    /// QoS policies (Neutron's), attached by a port's or a network's `qos_policy_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos_policies: Vec<QosPolicy>,
    /// Neutron's metering labels, counted at the external gateways of their project's
    /// routers (all routers for a shared label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metering_labels: Vec<MeteringLabel>,
    /// Metering label rules outside their label, as the Neutron API lists them (each with
    /// its `metering_label_id`); besides the rules nested in their label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metering_label_rules: Vec<MeteringLabelRule>,
    /// Trunks (Neutron's trunk extension, VLAN-aware VMs): a parent port whose frames
    /// tagged with a subport's VLAN ID are that subport's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<Trunk>,
}

/// The top-level keys of a desired state, in document order. Every validation error path
/// starts with one of them.
pub const TOP_LEVEL_KEYS: [&str; 18] = [
    "l2",
    "dhcp",
    "metadata",
    "agent",
    "hosts",
    "uplinks",
    "networks",
    "subnets",
    "ports",
    "routers",
    "floating_ips",
    "security_groups",
    "security_group_rules",
    "address_groups",
    "qos_policies",
    "metering_labels",
    "metering_label_rules",
    "trunks",
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
    /// Most learned MACs per VM port, for VMs that bridge other hosts with port security
    /// off (default 1024).
    #[serde(
        default = "default_mac_limit_per_port",
        skip_serializing_if = "is_default_mac_limit_per_port"
    )]
    pub mac_limit_per_port: i64,
}

impl Default for L2 {
    fn default() -> Self {
        L2 {
            mac_aging_secs: default_mac_aging_secs(),
            mac_limit_per_network: default_mac_limit_per_network(),
            mac_limit_per_port: default_mac_limit_per_port(),
        }
    }
}

fn default_mac_aging_secs() -> i64 {
    300
}

fn default_mac_limit_per_network() -> i64 {
    8192
}

fn default_mac_limit_per_port() -> i64 {
    1024
}

fn is_default_mac_limit_per_port(v: &i64) -> bool {
    *v == default_mac_limit_per_port()
}

/// This polluxd's own settings (`[agent]`, as Neutron's agents' `host` option).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// The name of the host this polluxd runs on, as ports' `binding_host_id` and
    /// `hosts[].name` give it (default: the machine's hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Agent {
    /// Whether nothing is set (the section is then not serialised).
    pub fn is_default(&self) -> bool {
        *self == Agent::default()
    }
}

/// A host of the deployment (a Neutron agent's `host`) and its tunnel endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Its name, as ports' `binding_host_id` gives it.
    pub name: String,
    /// The IPv4 address of its VXLAN endpoint (its `local_ip`).
    pub tunnel_ip: String,
}

/// The metadata proxy (`[metadata]`): Neutron's metadata agent settings, and its bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The metadata server's address (Nova's metadata API): an IPv4 or IPv6 address.
    pub nova_metadata_host: String,
    /// Its port (default 8775).
    #[serde(default = "default_nova_metadata_port")]
    pub nova_metadata_port: i64,
    /// `http` (the default); `https` is not supported yet.
    #[serde(default = "default_nova_metadata_protocol")]
    pub nova_metadata_protocol: String,
    /// The key of `X-Instance-ID-Signature` (HMAC-SHA256), shared with Nova.
    #[serde(default)]
    pub metadata_proxy_shared_secret: String,
    /// Open connections in all (default 1024).
    #[serde(default = "default_metadata_max_connections")]
    pub max_connections: i64,
    /// Open connections of one port (default 16).
    #[serde(default = "default_metadata_max_connections_per_port")]
    pub max_connections_per_port: i64,
    /// Bytes of a request, head and body (default 8192).
    #[serde(default = "default_metadata_max_request_bytes")]
    pub max_request_bytes: i64,
    /// Bytes of an answer (default 1048576).
    #[serde(default = "default_metadata_max_response_bytes")]
    pub max_response_bytes: i64,
    /// Milliseconds a VM has to send its request (default 10000).
    #[serde(default = "default_metadata_client_timeout_ms")]
    pub client_timeout_ms: i64,
    /// Milliseconds the metadata server has to accept a connection (default 5000).
    #[serde(default = "default_metadata_connect_timeout_ms")]
    pub connect_timeout_ms: i64,
    /// Milliseconds the metadata server has to finish an answer (default 30000).
    #[serde(default = "default_metadata_response_timeout_ms")]
    pub response_timeout_ms: i64,
    /// TCP segments per second one port may send to the proxy (default 1000).
    #[serde(default = "default_metadata_port_rate")]
    pub port_rate: i64,
    /// Burst of one port (default 2000).
    #[serde(default = "default_metadata_port_burst")]
    pub port_burst: i64,
}

fn default_nova_metadata_port() -> i64 {
    8775
}
fn default_nova_metadata_protocol() -> String {
    "http".into()
}
fn default_metadata_max_connections() -> i64 {
    1024
}
fn default_metadata_max_connections_per_port() -> i64 {
    16
}
fn default_metadata_max_request_bytes() -> i64 {
    8192
}
fn default_metadata_max_response_bytes() -> i64 {
    1 << 20
}
fn default_metadata_client_timeout_ms() -> i64 {
    10_000
}
fn default_metadata_connect_timeout_ms() -> i64 {
    5_000
}
fn default_metadata_response_timeout_ms() -> i64 {
    30_000
}
fn default_metadata_port_rate() -> i64 {
    1000
}
fn default_metadata_port_burst() -> i64 {
    2000
}

/// Rate limits of the built-in DHCP server (`[dhcp]`), in messages per second and bucket
/// sizes. A rate of 0 never refills the bucket (only the burst is ever allowed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpLimits {
    /// Messages per second one port may send to the DHCP server (default 100).
    #[serde(default = "default_dhcp_port_rate")]
    pub port_rate: i64,
    /// Burst of one port (default 200).
    #[serde(default = "default_dhcp_port_burst")]
    pub port_burst: i64,
    /// Messages per second per client MAC (`chaddr`) (default 5).
    #[serde(default = "default_dhcp_client_rate")]
    pub client_rate: i64,
    /// Burst per client MAC (default 20).
    #[serde(default = "default_dhcp_client_burst")]
    pub client_burst: i64,
    /// Messages per second one network's server handles in all (default 5000).
    #[serde(default = "default_dhcp_network_rate")]
    pub network_rate: i64,
    /// Burst of one network's server (default 1000).
    #[serde(default = "default_dhcp_network_burst")]
    pub network_burst: i64,
    /// Most dynamic leases (subnets with `dhcp_serve_unknown`) the clients behind one
    /// port may hold at once (default 16): a VM cycling through made-up MACs cannot drain
    /// the pool that others are served from.
    #[serde(default = "default_dhcp_leases_per_port")]
    pub leases_per_port: i64,
}

impl Default for DhcpLimits {
    fn default() -> Self {
        DhcpLimits {
            port_rate: default_dhcp_port_rate(),
            port_burst: default_dhcp_port_burst(),
            client_rate: default_dhcp_client_rate(),
            client_burst: default_dhcp_client_burst(),
            network_rate: default_dhcp_network_rate(),
            network_burst: default_dhcp_network_burst(),
            leases_per_port: default_dhcp_leases_per_port(),
        }
    }
}

impl DhcpLimits {
    /// Whether every limit has its default value (the section is then not serialised, so
    /// states written before it existed read and write back the same).
    pub fn is_default(&self) -> bool {
        *self == DhcpLimits::default()
    }
}

fn default_dhcp_port_rate() -> i64 {
    100
}

fn default_dhcp_port_burst() -> i64 {
    200
}

fn default_dhcp_client_rate() -> i64 {
    5
}

fn default_dhcp_client_burst() -> i64 {
    20
}

fn default_dhcp_network_rate() -> i64 {
    5000
}

fn default_dhcp_network_burst() -> i64 {
    1000
}

fn default_dhcp_leases_per_port() -> i64 {
    16
}

fn default_true() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
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
    /// Geneve-encapsulated (without options) between tunnel endpoints.
    Geneve,
    /// GRE-encapsulated (with a key) between tunnel endpoints.
    Gre,
}

impl fmt::Display for NetworkType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkType::Local => "local",
            NetworkType::Flat => "flat",
            NetworkType::Vlan => "vlan",
            NetworkType::Vxlan => "vxlan",
            NetworkType::Geneve => "geneve",
            NetworkType::Gre => "gre",
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
    /// VLAN ID (vlan), VNI (vxlan, geneve) or key (gre).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation_id: Option<i64>,
    /// MTU. When absent: 1500 for local networks, the uplink's MTU for flat and VLAN
    /// networks, and the uplink's MTU minus the overhead for overlays: 50 bytes for vxlan
    /// and geneve, 42 for gre.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// Whether the network forwards (default true).
    #[serde(default = "default_true")]
    pub admin_state_up: bool,
    /// Domain name handed out by DHCP (option 15), e.g. `openstacklocal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<String>,
    /// The QoS policy of its ports that have none of their own (Neutron's network
    /// `qos_policy_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_policy_id: Option<String>,
}

/// A subnet of a network: IPv4, or IPv6 with `ip_version = 6` (whose addresses port
/// security and the security groups know, but which is neither served by DHCP nor
/// routed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// Unique id.
    pub id: String,
    /// The network it belongs to.
    pub network_id: String,
    /// 4 (or absent) or 6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i64>,
    /// The prefix, host bits zero (`198.18.1.0/24`, `2001:db8:1::/64`).
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
    /// The DHCP server's address on the subnet (Neutron's DHCP port). Default: the last
    /// host address of `cidr` (`.254` of a /24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_server_ip: Option<String>,
    /// Lease time in seconds (Neutron's `dhcp_lease_duration`); -1 is infinite. Default
    /// 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp_lease_duration: Option<i64>,
    /// Whether MACs that are no port's get addresses from the rest of the subnet (default
    /// false: only ports' MACs get offers, each its fixed IP).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dhcp_serve_unknown: bool,
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
    /// The host the port is bound to (Neutron's `binding:host_id`). Absent or this host's
    /// name: a port of this host. Another host's name: a remote port, reached through that
    /// host's tunnel endpoint (only on vxlan networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_host_id: Option<String>,
    /// How the port is attached: needed for a port of this host; for a port of another
    /// host, that host's business (so one state fits every host), not used here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<Binding>,
    /// The port's host name, handed out by DHCP (option 12): one label or a FQDN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    /// Further DHCP options for this port (Neutron's `extra_dhcp_opts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_dhcp_opts: Vec<ExtraDhcpOpt>,
    /// Its QoS policy; absent: its network's, if any (Neutron's port `qos_policy_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_policy_id: Option<String>,
    /// The instance it belongs to (Neutron's `device_id`): the metadata proxy's
    /// `X-Instance-ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Its project (Neutron's `project_id`): the metadata proxy's `X-Tenant-ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

/// An entry of a port's `extra_dhcp_opts`, in Neutron's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraDhcpOpt {
    /// The option: a dnsmasq name (`ntp-server`), a number (`42`) or either after
    /// `option:` (`option:ntp-server`).
    pub opt_name: String,
    /// The value, as dnsmasq reads it (`198.18.1.1,198.18.1.2`, `pxelinux.0`, ...).
    pub opt_value: String,
    /// 4 (or absent) for DHCPv4; 6 (DHCPv6) is refused as not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<i64>,
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
        /// Pollux's role on the socket (default `server`). Neutron's `vhostuser_mode`
        /// names QEMU's role, the opposite one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<VhostUserMode>,
    },
    /// An in-process ring pair, for tests and benchmarks.
    Mem {},
    /// A tap device.
    Tap {
        /// The interface name.
        interface: String,
    },
}

/// Pollux's role on a vhost-user socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostUserMode {
    /// Pollux creates the socket and listens; the VM's process connects (QEMU's
    /// `server=off`, Neutron's `vhostuser_mode = client`).
    Server,
    /// Pollux connects to the VM's process, and again when it restarts (QEMU's
    /// `server=on`, Neutron's `vhostuser_mode = server`, OVS's `dpdkvhostuserclient`).
    Client,
}

/// A QoS policy: a set of rules, in Neutron's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosPolicy {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its rules: at most one `bandwidth_limit` per direction and one `dscp_marking`.
    #[serde(default)]
    pub rules: Vec<QosRule>,
}

/// A rule of a QoS policy, as the Neutron API lists a policy's rules (each with its
/// `type`). Which fields a rule takes depends on its type; validation says which.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QosRule {
    /// Its id (optional here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `bandwidth_limit` or `dscp_marking` (Neutron's other types are refused as not
    /// supported).
    #[serde(rename = "type")]
    pub rule_type: String,
    /// `bandwidth_limit`: the average rate in kbit/s (1000 bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kbps: Option<i64>,
    /// `bandwidth_limit`: the burst in kbit; absent or 0: 80% of `max_kbps`, as Neutron's
    /// OVS and Linux bridge drivers default it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_burst_kbps: Option<i64>,
    /// `bandwidth_limit`: `egress` (from the VM, the default) or `ingress` (to the VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `dscp_marking`: the DSCP written into what the VM sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dscp_mark: Option<i64>,
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
    /// The host the router runs on (Neutron's L3-agent scheduling, its ports'
    /// `binding:host_id`). Absent or this host's name: it runs here. Another host's name:
    /// it runs there; on overlay networks its interfaces are that host's l2population
    /// entries (centralized routing, as Neutron's legacy L3 agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_host_id: Option<String>,
    /// The MAC of its interfaces (Neutron's router ports' `mac_address`). Absent: its
    /// polluxd picks one (`02:70:6c` and the router's number); needed when it runs on
    /// another host and has an interface on an overlay network, which reaches it by MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    /// Its project: the project metering labels that apply to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
}

/// A trunk (Neutron's `trunk`): the parent port `port_id`, bound on this host, carries
/// its subports' frames tagged with their `segmentation_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// The parent port.
    pub port_id: String,
    /// The subports.
    #[serde(default)]
    pub sub_ports: Vec<SubPort>,
}

/// A subport of a trunk (Neutron's `sub_ports[]` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubPort {
    /// The port: one of another network, with no binding of its own.
    pub port_id: String,
    /// `vlan` (Neutron's `inherit` is not supported).
    pub segmentation_type: String,
    /// Its VLAN ID in the parent's frames, 1–4094.
    pub segmentation_id: i64,
}

/// A metering label (Neutron's `metering_label`): packets and bytes counted at routers'
/// external gateways by its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringLabel {
    /// Unique id.
    pub id: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The project whose routers it is counted on (unless `shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Counted on every router (default false).
    #[serde(default)]
    pub shared: bool,
    /// Its rules (a rule here needs no `metering_label_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<MeteringLabelRule>,
}

/// A metering label rule (Neutron's `metering_label_rule`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeteringLabelRule {
    /// Its id (optional here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The label it belongs to: required for a top-level rule, optional (and then its
    /// label's) for a nested one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metering_label_id: Option<String>,
    /// `ingress` (arriving through the external gateway) or `egress` (leaving by it).
    pub direction: Direction,
    /// Deprecated by Neutron: for egress the source prefix, for ingress the destination
    /// prefix (what Neutron's iptables driver matches); not with the two below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    /// Source prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip_prefix: Option<String>,
    /// Destination prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_ip_prefix: Option<String>,
    /// Matching packets are not counted by this label, whatever its other rules say.
    #[serde(default)]
    pub excluded: bool,
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
    /// Descriptive name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Descriptive text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Connection tracking on (default): replies of allowed connections pass. Off: every
    /// packet needs a rule in its own direction.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub stateful: bool,
    /// Allow rules.
    #[serde(default)]
    pub rules: Vec<SecurityGroupRule>,
}

fn is_true(v: &bool) -> bool {
    *v
}

/// A Neutron address group: prefixes a rule names with `remote_address_group_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressGroup {
    /// Unique id.
    pub id: String,
    /// Descriptive name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Descriptive text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Addresses or prefixes (IPv4 or IPv6).
    #[serde(default)]
    pub addresses: Vec<String>,
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
    /// The rule's id: required in the top-level `security_group_rules`; optional in a
    /// group, where it defaults to `<group id>/<index>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The group the rule belongs to: required in `security_group_rules`; in a group, it
    /// may only name that group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group_id: Option<String>,
    /// Descriptive text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Ingress or egress.
    pub direction: Direction,
    /// `IPv4` (default); `IPv6` is not supported yet.
    #[serde(default = "default_ethertype")]
    pub ethertype: String,
    /// Protocol; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<ProtocolSpec>,
    /// First destination port (tcp, udp, sctp, dccp, udplite); ICMP type (icmp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_min: Option<i64>,
    /// Last destination port; ICMP code (icmp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range_max: Option<i64>,
    /// Remote addresses this rule allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_ip_prefix: Option<String>,
    /// Remote ports (members of this group) this rule allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group_id: Option<String>,
    /// Remote addresses (of this address group) this rule allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address_group_id: Option<String>,
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
                .and_then(|v| locate(&v, e.message()));
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
                    .and_then(|v| locate(&v, &e.to_string()))
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

    /// Reads a desired state from a file's text, in the format the one rule both
    /// `polluxd --config` and `polluxctl apply` follow: a `.json` file is JSON, a `.toml`
    /// file TOML, and anything else (another name, standard input: `path` `None`) is JSON
    /// when its first non-blank character is `{` (which no TOML document starts with), else
    /// TOML.
    pub fn from_file_text(path: Option<&std::path::Path>, text: &str) -> Result<Self, ParseError> {
        let ext = path
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let json = match ext.as_deref() {
            Some("json") => true,
            Some("toml") => false,
            _ => text.trim_start().starts_with('{'),
        };
        if json {
            Self::from_json_str(text)
        } else {
            Self::from_toml_str(text)
        }
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

/// Finds what a parse error of a document (already parsed as data) is about: a top-level
/// key the schema does not have, when the error `message` names it (`dhpc`), else the
/// first list item that does not deserialise into its type, as `ports[3]`.
fn locate(doc: &serde_json::Value, message: &str) -> Option<String> {
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
    let unknown = obj
        .keys()
        .filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()))
        .find(|k| message.contains(&format!("unknown field `{k}`")));
    if let Some(key) = unknown {
        return Some(key.clone());
    }
    for (key, v) in obj {
        let bad = match key.as_str() {
            "l2" => serde_json::from_value::<L2>(v.clone())
                .err()
                .map(|_| "l2".to_owned()),
            "dhcp" => serde_json::from_value::<DhcpLimits>(v.clone())
                .err()
                .map(|_| "dhcp".to_owned()),
            "metadata" => serde_json::from_value::<Metadata>(v.clone())
                .err()
                .map(|_| "metadata".to_owned()),
            "uplinks" => first_bad::<Uplink>(key, v),
            "networks" => first_bad::<Network>(key, v),
            "subnets" => first_bad::<Subnet>(key, v),
            "ports" => first_bad::<Port>(key, v),
            "routers" => first_bad::<Router>(key, v),
            "floating_ips" => first_bad::<FloatingIp>(key, v),
            "security_groups" => first_bad::<SecurityGroup>(key, v),
            "security_group_rules" => first_bad::<SecurityGroupRule>(key, v),
            "address_groups" => first_bad::<AddressGroup>(key, v),
            "qos_policies" => first_bad::<QosPolicy>(key, v),
            "trunks" => first_bad::<Trunk>(key, v),
            _ => None,
        };
        if bad.is_some() {
            return bad;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state as written before the DHCP fields existed: every field the serialiser
    /// always writes is present, no DHCP field is.
    const OLD_JSON: &str = r#"{
  "l2": { "mac_aging_secs": 300, "mac_limit_per_network": 8192 },
  "uplinks": [{ "name": "uplink0", "physnet": "physnet1", "binding": { "driver": "mem" } }],
  "networks": [
    { "id": "net-a", "network_type": "vlan", "physical_network": "physnet1",
      "segmentation_id": 100, "admin_state_up": true }
  ],
  "subnets": [
    { "id": "sub-a", "network_id": "net-a", "cidr": "198.18.1.0/24",
      "gateway_ip": "198.18.1.1", "enable_dhcp": true, "dns_nameservers": ["198.18.1.1"],
      "host_routes": [{ "destination": "198.19.0.0/16", "nexthop": "198.18.1.2" }] }
  ],
  "ports": [
    { "id": "vm1", "network_id": "net-a", "mac_address": "fa:16:3e:00:00:01",
      "fixed_ips": [{ "subnet_id": "sub-a", "ip_address": "198.18.1.10" }],
      "security_groups": [], "port_security_enabled": true, "allowed_address_pairs": [],
      "binding": { "driver": "mem" } }
  ],
  "routers": [],
  "floating_ips": [],
  "security_groups": []
}"#;

    #[test]
    fn a_state_without_dhcp_fields_serialises_unchanged() {
        let state = DesiredState::from_json_str(OLD_JSON).unwrap();
        assert_eq!(state.dhcp, DhcpLimits::default());
        assert!(state.subnets[0].dhcp_server_ip.is_none());
        assert!(!state.subnets[0].dhcp_serve_unknown);
        let written = state.to_json_string();
        let old: serde_json::Value = serde_json::from_str(OLD_JSON).unwrap();
        let new: serde_json::Value = serde_json::from_str(&written).unwrap();
        assert_eq!(old, new);
        for key in [
            "dhcp",
            "dns_domain",
            "dns_name",
            "extra_dhcp_opts",
            "dhcp_server_ip",
            "dhcp_lease_duration",
            "dhcp_serve_unknown",
        ] {
            let quoted = format!("\"{key}\"");
            assert!(!written.contains(&quoted), "{key} in {written}");
        }
        // The same through TOML.
        let toml_text = toml::to_string(&state).unwrap();
        assert_eq!(DesiredState::from_toml_str(&toml_text).unwrap(), state);
        assert_eq!(toml_text.matches("dhcp").count(), 1, "{toml_text}"); // enable_dhcp
    }

    #[test]
    fn dhcp_fields_round_trip() {
        let text = r#"
            [dhcp]
            port_rate = 10
            network_burst = 50

            [[networks]]
            id = "net-a"
            network_type = "local"
            dns_domain = "example.org"

            [[subnets]]
            id = "sub-a"
            network_id = "net-a"
            cidr = "198.18.1.0/24"
            dhcp_server_ip = "198.18.1.2"
            dhcp_lease_duration = -1
            dhcp_serve_unknown = true

            [[ports]]
            id = "vm1"
            network_id = "net-a"
            mac_address = "fa:16:3e:00:00:01"
            binding = { driver = "mem" }
            dns_name = "vm1"
            extra_dhcp_opts = [
                { opt_name = "ntp-server", opt_value = "198.18.1.1" },
                { opt_name = "dns-server", opt_value = "2001:db8::1", ip_version = 6 },
            ]
        "#;
        let state = DesiredState::from_toml_str(text).unwrap();
        assert_eq!(
            state.dhcp,
            DhcpLimits {
                port_rate: 10,
                network_burst: 50,
                ..DhcpLimits::default()
            }
        );
        assert_eq!(state.networks[0].dns_domain.as_deref(), Some("example.org"));
        let s = &state.subnets[0];
        assert_eq!(s.dhcp_server_ip.as_deref(), Some("198.18.1.2"));
        assert_eq!(s.dhcp_lease_duration, Some(-1));
        assert!(s.dhcp_serve_unknown);
        let p = &state.ports[0];
        assert_eq!(p.dns_name.as_deref(), Some("vm1"));
        assert_eq!(
            p.extra_dhcp_opts[1],
            ExtraDhcpOpt {
                opt_name: "dns-server".into(),
                opt_value: "2001:db8::1".into(),
                ip_version: Some(6),
            }
        );
        let json = state.to_json_string();
        assert_eq!(DesiredState::from_json_str(&json).unwrap(), state);
        let toml_text = toml::to_string(&state).unwrap();
        assert_eq!(DesiredState::from_toml_str(&toml_text).unwrap(), state);
    }

    #[test]
    fn the_format_follows_the_extension_else_the_first_character() {
        use std::path::Path;
        let toml_text = "[[networks]]\nid = \"net-a\"\nnetwork_type = \"local\"\n";
        let state = DesiredState::from_toml_str(toml_text).unwrap();
        let json_text = state.to_json_string();
        for (path, text) in [
            (Some(Path::new("x.json")), json_text.as_str()),
            (Some(Path::new("x.JSON")), json_text.as_str()),
            (Some(Path::new("x.toml")), toml_text),
            (Some(Path::new("x.conf")), toml_text),
            (Some(Path::new("x.conf")), json_text.as_str()),
            (None, toml_text),
            (None, json_text.as_str()),
        ] {
            assert_eq!(
                DesiredState::from_file_text(path, text).unwrap(),
                state,
                "{path:?}"
            );
        }
        let e = DesiredState::from_file_text(Some(Path::new("x.json")), toml_text).unwrap_err();
        assert_eq!(e.format, Format::Json);
        let e = DesiredState::from_file_text(Some(Path::new("x.toml")), &json_text).unwrap_err();
        assert_eq!(e.format, Format::Toml);
    }

    /// A misspelt top-level table is reported at its own name, not at an item of another
    /// table, in both formats.
    #[test]
    fn an_unknown_top_level_table_is_reported_at_its_own_path() {
        let text = "[dhpc]\nport_rate = 1\n\n[[networks]]\nid = \"net-a\"\n\
                    network_type = \"local\"\n\n[[ports]]\nid = \"vm1\"\n\
                    network_id = \"net-a\"\nmac_address = \"fa:16:3e:00:00:01\"\n\
                    binding = { driver = \"mem\" }\n";
        let e = DesiredState::from_toml_str(text).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("dhpc"), "{e}");
        assert!(
            e.to_string()
                .starts_with("TOML line 1, column 2 in dhpc: unknown field `dhpc`"),
            "{e}"
        );
        let e = DesiredState::from_json_str(
            r#"{"ports": [{"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01",
                "binding": {"driver": "mem"}, "extra_dhcp_opts": [{"opt_name": "42"}]}],
                "dhpc": {}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.path.as_deref(),
            Some("ports[0]"),
            "the first error is the port's"
        );
        let e = DesiredState::from_json_str(r#"{"dhpc": {}, "ports": []}"#).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("dhpc"), "{e}");
    }

    #[test]
    fn unknown_dhcp_fields_are_refused() {
        let e = DesiredState::from_toml_str("[dhcp]\nport_rat = 1\n").unwrap_err();
        assert_eq!(e.path.as_deref(), Some("dhcp"));
        assert!(e.message.contains("port_rat"), "{e}");
        let e = DesiredState::from_json_str(
            r#"{"ports": [{"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01",
                "binding": {"driver": "mem"}, "extra_dhcp_opts": [{"opt_name": "42"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path.as_deref(), Some("ports[0]"));
    }
}
