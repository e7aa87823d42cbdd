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

mod binding;
mod floating_ip;
mod host;
mod incremental;
mod metering;
mod network;
mod port;
mod qos;
mod router;
mod security_group;
mod settings;
mod subnet;
mod trunk;
mod uplink;

#[cfg(test)]
pub(crate) mod fixtures;

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use pollux_dataplane::snapshot::L2Config;

use crate::model::DesiredState;
use pollux_services::addr::{check_dns_name, parse_cidr, parse_ipv4, Ipv4Cidr};

pub use binding::{check_ifname, Binding};
pub use floating_ip::{FloatingIp, FloatingIpTarget};
pub use host::{machine_hostname, Host, Hosts};
pub use incremental::{revalidate_ports, IndexUndo, PortIndex};
pub use metering::{MeteringLabel, MeteringRule};
pub use network::{Network, Segment, DEFAULT_MTU, JUMBO_MTU, MIN_MTU, VXLAN_OVERHEAD};
/// The benchmark harness names the MAC formatter by this path (`pollux_services::addr` has it).
pub use pollux_services::addr::fmt_mac;
pub use port::{AddressPair, AddressPair6, FixedIp, Port};
pub use qos::{default_burst_kbit, BandwidthLimit, QosPolicy, MAX_KBPS, VALID_DSCP_MARKS};
pub use router::{ExternalGateway, Router};
pub use security_group::{protocol_number, AddressGroup, PortMatch, Remote, Rule, SecurityGroup};
pub use settings::{DhcpLimits, MetadataSettings, MAX_DHCP_LIMIT};
pub use subnet::{
    default_dhcp_server_ip, Ipv6Subnet, Subnet, MAX_LEASE_DURATION, MIN_LEASE_DURATION,
};
pub use trunk::{SubPort, Trunk};
pub use uplink::Uplink;

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

/// The typed view of a valid desired state, in document order. See the module docs.
///
/// Its parts are shared (`Arc`), so that a copy costs a reference per port and a change
/// of one port ([`incremental`]) makes the next view without copying the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Learning parameters.
    pub l2: L2Config,
    /// Rate limits of the DHCP server.
    pub dhcp: DhcpLimits,
    /// The metadata proxy, when `[metadata]` is configured.
    pub metadata: Option<MetadataSettings>,
    /// The hosts, and which one this is.
    pub hosts: Hosts,
    /// Uplinks.
    pub uplinks: Arc<Vec<Uplink>>,
    /// Networks.
    pub networks: Arc<Vec<Network>>,
    /// Subnets.
    pub subnets: Arc<Vec<Subnet>>,
    /// Ports.
    pub ports: Vec<Arc<Port>>,
    /// Routers.
    pub routers: Arc<Vec<Router>>,
    /// Floating IPs.
    pub floating_ips: Arc<Vec<FloatingIp>>,
    /// Security groups.
    pub security_groups: Arc<Vec<SecurityGroup>>,
    /// Address groups.
    pub address_groups: Arc<Vec<AddressGroup>>,
    /// QoS policies.
    pub qos_policies: Arc<Vec<QosPolicy>>,
    /// Metering labels, each with all its rules.
    pub metering_labels: Arc<Vec<MeteringLabel>>,
    /// Trunks.
    pub trunks: Arc<Vec<Trunk>>,
}

/// A checked route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub destination: Ipv4Cidr,
    /// Next hop.
    pub nexthop: Ipv4Addr,
}

/// Checks a desired state; see the module documentation.
pub fn validate(state: &DesiredState) -> Result<Validated, Vec<ValidationError>> {
    let mut c = Checker::default();
    let l2 = c.l2(&state.l2);
    let dhcp = c.dhcp_limits(&state.dhcp);
    let metadata = c.metadata(state.metadata.as_ref());
    let uplinks = c.uplinks(&state.uplinks);
    let hosts = c.hosts(&state.agent, &state.hosts, &uplinks);
    let mut networks = c.networks(&state.networks, &uplinks);
    let subnets = c.subnets(&state.subnets, &networks);
    let address_groups = c.address_groups(&state.address_groups);
    let security_groups = c.security_groups(
        &state.security_groups,
        &state.security_group_rules,
        &address_groups,
    );
    c.subports = trunk::subport_ids(&state.trunks);
    let mut ports = c.ports(&state.ports, &networks, &subnets, &security_groups, &hosts);
    let qos_policies = c.qos_policies(&state.qos_policies);
    c.attach_qos(state, &qos_policies, &mut networks, &mut ports);
    let metering_labels = c.metering_labels(&state.metering_labels, &state.metering_label_rules);
    let trunks = c.trunks(&state.trunks, &ports, &networks);
    let routers = c.routers(&state.routers, &networks, &subnets, &ports, &hosts);
    let floating_ips = c.floating_ips(&state.floating_ips, &ports, &subnets, &routers);
    // Last: every other address of each network is known by now.
    c.dhcp_servers(&state.subnets, &subnets);
    if !c.errors.is_empty() {
        return Err(c.errors);
    }
    Ok(Validated {
        l2,
        dhcp,
        metadata,
        hosts,
        uplinks: Arc::new(uplinks),
        networks: Arc::new(networks.items),
        subnets: Arc::new(subnets.items),
        ports: ports.items.into_iter().map(Arc::new).collect(),
        routers: Arc::new(routers.items),
        floating_ips: Arc::new(floating_ips.items),
        security_groups: Arc::new(security_groups.items),
        address_groups: Arc::new(address_groups.items),
        qos_policies: Arc::new(qos_policies.items),
        metering_labels: Arc::new(metering_labels.items),
        trunks: Arc::new(trunks),
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

impl<T> fmt::Debug for Checked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checked")
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
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
    /// Ports that trunks name as subports: they have no binding of their own.
    subports: std::collections::HashSet<String>,
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
}

#[cfg(test)]
mod tests {
    use crate::validate::fixtures::*;
    use pollux_services::addr::check_dns_name;

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
}
