//! Ports: network, MAC, fixed IPs, security groups, port security and allowed address
//! pairs, binding, and the DHCP settings of the port (`dns_name`, `extra_dhcp_opts`).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Binding, Checked, Checker, Hosts, Network, SecurityGroup, Subnet};
use crate::identity::{DHCP_MAC_PREFIX, ROUTER_MAC_PREFIX};
use crate::model;
use pollux_dataplane::overlay::VTEP_MAC_PREFIX;
use pollux_services::addr::{fmt_mac, parse_station_mac, Ipv4Cidr};
use pollux_services::dhcp::options::{dhcp_option_code, encode_dhcp_option};
use pollux_services::dhcp::ExtraOption;

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

/// A checked allowed address pair with an IPv6 address or prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPair6 {
    /// Network address (the address itself for a /128).
    pub addr: std::net::Ipv6Addr,
    /// Prefix length.
    pub prefix: u8,
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
    /// Its IPv4 addresses.
    pub fixed_ips: Vec<FixedIp>,
    /// Its IPv6 addresses (fixed IPs on IPv6 subnets).
    pub fixed_ips6: Vec<std::net::Ipv6Addr>,
    /// Indices of its security groups.
    pub security_groups: Vec<usize>,
    /// Port security on.
    pub port_security_enabled: bool,
    /// Allowed address pairs (IPv4).
    pub allowed_address_pairs: Vec<AddressPair>,
    /// Allowed address pairs with IPv6 addresses or prefixes.
    pub allowed_address_pairs6: Vec<AddressPair6>,
    /// How it is attached.
    /// How it is attached: `None` for a port of another host.
    pub binding: Option<Binding>,
    /// The host it is bound to when that is another host (an index of `hosts`): a remote
    /// port, reached over the overlay.
    pub remote_host: Option<usize>,
    /// Host name for DHCP option 12 (`dns_name`: one label or a FQDN, RFC 1123, without a
    /// trailing dot; an empty `dns_name` is none).
    pub hostname: Option<String>,
    /// Its DHCPv4 `extra_dhcp_opts`, encoded (IPv6 entries are left out), distinct codes.
    pub extra_dhcp_opts: Vec<ExtraOption>,
    /// The QoS policy in force (an index of `qos_policies`): its own `qos_policy_id`, else
    /// its network's.
    pub qos_policy: Option<usize>,
    /// `device_id` (empty when absent): the metadata proxy's `X-Instance-ID`.
    pub device_id: String,
    /// `project_id` (empty when absent): the metadata proxy's `X-Tenant-ID`.
    pub project_id: String,
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

/// Who owns each MAC and IPv6 address of the ports checked so far, per network (IPv4
/// addresses are the checker's, shared with routers, floating IPs and DHCP servers).
#[derive(Default)]
pub(super) struct PortOwners {
    macs: HashMap<(usize, [u8; 6]), String>,
    ips6: HashMap<(usize, std::net::Ipv6Addr), String>,
}

impl Checker {
    /// An id the metadata proxy writes into an HTTP header (`device_id`, `project_id`):
    /// at most 255 visible ASCII characters, so that no value can end a header line.
    fn header_value(&mut self, path: String, value: &Option<String>) -> String {
        let Some(v) = value else {
            return String::new();
        };
        if v.len() > 255 || !v.bytes().all(|b| b.is_ascii_graphic()) {
            self.err(
                path,
                format!("{v:?} is not an id of at most 255 visible ASCII characters"),
            );
            return String::new();
        }
        v.clone()
    }

    pub(super) fn mac(&mut self, path: &str, s: &str) -> Option<[u8; 6]> {
        match parse_station_mac(s) {
            Ok(m)
                if m[..3] == ROUTER_MAC_PREFIX
                    || m[..3] == DHCP_MAC_PREFIX
                    || m[..3] == VTEP_MAC_PREFIX =>
            {
                let what = if m[..3] == ROUTER_MAC_PREFIX {
                    "routers"
                } else if m[..3] == DHCP_MAC_PREFIX {
                    "DHCP servers"
                } else {
                    "VXLAN tunnel endpoints"
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

    pub(super) fn ports(
        &mut self,
        ports: &[model::Port],
        networks: &Checked<Network>,
        subnets: &Checked<Subnet>,
        groups: &Checked<SecurityGroup>,
        hosts: &Hosts,
    ) -> Checked<Port> {
        let mut out = Checked::default();
        let mut owners = PortOwners::default();
        for (i, p) in ports.iter().enumerate() {
            let before = self.errors.len();
            self.id(format!("ports[{i}].id"), &p.id, "port", &mut out.by_id, i);
            let (port, core_ok) =
                self.port(i, p, before, networks, subnets, groups, hosts, &mut owners);
            out.items.push(port);
            out.ok.push(core_ok);
        }
        out
    }

    /// Checks port `p` at index `i` (its id already checked, with `before` errors before
    /// that), against the MACs and IPv6 addresses of the ports before it (`owners`);
    /// whether its fields others depend on are valid. Its QoS policy is left unresolved
    /// (`Checker::attach_qos`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn port(
        &mut self,
        i: usize,
        p: &model::Port,
        before: usize,
        networks: &Checked<Network>,
        subnets: &Checked<Subnet>,
        groups: &Checked<SecurityGroup>,
        hosts: &Hosts,
        owners: &mut PortOwners,
    ) -> (Port, bool) {
        let PortOwners { macs, ips6 } = owners;
        {
            let base = format!("ports[{i}]");
            let network = self.reference(
                &format!("{base}.network_id"),
                &p.network_id,
                "network",
                networks,
            );
            let mac = self.mac(&format!("{base}.mac_address"), &p.mac_address);
            let core_ok = self.clean(before);
            let mut fixed_ips = Vec::new();
            let mut fixed_ips6 = Vec::new();
            for (k, f) in p.fixed_ips.iter().enumerate() {
                let fp = format!("{base}.fixed_ips[{k}]");
                let v6 = subnets
                    .by_id
                    .get(f.subnet_id.as_str())
                    .and_then(|&i| Some((i, subnets.items[i].ipv6?)));
                if let Some((si, net6)) = v6 {
                    let ip_path = format!("{fp}.ip_address");
                    let Ok(ip) = f.ip_address.parse::<std::net::Ipv6Addr>() else {
                        self.err(
                            ip_path,
                            format!(
                                "{:?} is not an IPv6 address (subnet {} is IPv6)",
                                f.ip_address, f.subnet_id
                            ),
                        );
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
                    if !net6.contains(ip) {
                        self.err(
                            ip_path,
                            format!(
                                "{ip} is not inside the subnet's cidr {}/{}",
                                net6.addr, net6.prefix
                            ),
                        );
                    } else if net6.gateway_ip == Some(ip) {
                        self.err(
                            ip_path,
                            format!("{ip} is the gateway_ip of subnet {}", s.id),
                        );
                    } else if let Some(owner) = ips6.get(&(s.network, ip)) {
                        self.err(ip_path, format!("{ip} is already used by port {owner}"));
                    } else {
                        ips6.insert((s.network, ip), p.id.clone());
                        fixed_ips6.push(ip);
                    }
                    continue;
                }
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
            let stateful = security_groups
                .iter()
                .map(|&g| groups.items[g].stateful)
                .collect::<Vec<_>>();
            if stateful.contains(&true) && stateful.contains(&false) {
                self.err(
                    format!("{base}.security_groups"),
                    "a port cannot have both stateful and stateless security groups (Neutron \
                     refuses this too)",
                );
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
            let mut allowed_address_pairs6 = Vec::new();
            let mut own_macs: Vec<([u8; 6], String)> = Vec::new();
            if let Some(m) = mac {
                own_macs.push((m, format!("{base}.mac_address")));
            }
            for (k, a) in p.allowed_address_pairs.iter().enumerate() {
                let ap = format!("{base}.allowed_address_pairs[{k}]");
                let ip6 = a
                    .ip_address
                    .contains(':')
                    .then(|| self.ipv6_prefix(&format!("{ap}.ip_address"), &a.ip_address));
                let ip = if ip6.is_some() {
                    None
                } else if a.ip_address.contains('/') {
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
                if let (Some(Some((addr, prefix))), Some(mac)) = (ip6, pair_mac) {
                    allowed_address_pairs6.push(AddressPair6 { addr, prefix, mac });
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
            let remote_host = match p.binding_host_id.as_deref() {
                None => None,
                Some(h) if h == hosts.local => None,
                Some(h) => match hosts.index(h) {
                    Some(k) => hosts.ok[k].then_some(k),
                    None => {
                        self.err(
                            format!("{base}.binding_host_id"),
                            format!(
                                "no host has name {h:?} (hosts[].name), and this host is {:?} \
                                 (agent.host)",
                                hosts.local
                            ),
                        );
                        None
                    }
                },
            };
            let is_remote = p
                .binding_host_id
                .as_deref()
                .is_some_and(|h| h != hosts.local);
            let bpath = format!("{base}.binding");
            let binding = match (&p.binding, is_remote) {
                (Some(b), false) => Some(self.binding(&bpath, b, &format!("port {}", p.id))),
                // A trunk's subport rides on its parent's interface.
                (None, false) if self.subports.contains(&p.id) => None,
                (None, false) => {
                    self.err(bpath, "a port of this host needs a binding");
                    None
                }
                // A port of another host is attached there: its binding is that host's to
                // check and use (so every host can be given the same state), never this
                // one's, which reaches the port over the overlay.
                (_, true) => None,
            };
            let hostname = self.dns_name(format!("{base}.dns_name"), p.dns_name.as_deref());
            let extra_dhcp_opts = self.extra_dhcp_opts(&base, &p.extra_dhcp_opts);
            let device_id = self.header_value(format!("{base}.device_id"), &p.device_id);
            let project_id = self.header_value(format!("{base}.project_id"), &p.project_id);
            let port = Port {
                id: p.id.clone(),
                network: network.unwrap_or(usize::MAX),
                mac: mac.unwrap_or_default(),
                fixed_ips,
                fixed_ips6,
                security_groups,
                port_security_enabled: p.port_security_enabled,
                allowed_address_pairs,
                allowed_address_pairs6,
                binding,
                remote_host,
                hostname,
                extra_dhcp_opts,
                // Resolved once every port is known (`Checker::attach_qos`).
                qos_policy: None,
                device_id,
                project_id,
            };
            (port, core_ok)
        }
    }

    /// Encodes a port's `extra_dhcp_opts`. DHCPv6 entries are refused: there is no DHCPv6
    /// server to hand them out, and an option accepted but never served would be a lie.
    pub(super) fn extra_dhcp_opts(
        &mut self,
        base: &str,
        opts: &[model::ExtraDhcpOpt],
    ) -> Vec<ExtraOption> {
        let mut out: Vec<ExtraOption> = Vec::new();
        let mut first: HashMap<u8, usize> = HashMap::new();
        for (k, o) in opts.iter().enumerate() {
            let p = format!("{base}.extra_dhcp_opts[{k}]");
            match o.ip_version {
                None | Some(4) => {}
                Some(6) => {
                    self.err(
                        format!("{p}.ip_version"),
                        "not supported: DHCPv6 options are not served (there is no DHCPv6 \
                         server yet); leave the entry out",
                    );
                    continue;
                }
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
}

#[cfg(test)]
mod tests {
    use crate::model;
    use crate::validate::fixtures::*;
    use crate::validate::validate;
    use pollux_services::dhcp::ExtraOption;

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
    fn extra_options_reach_the_validated_port() {
        let mut state = base();
        state.ports[0].extra_dhcp_opts = vec![
            opt("ntp-server", "198.18.1.1,198.18.1.2"),
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
                model::ExtraDhcpOpt {
                    ip_version: Some(6),
                    ..opt("dns-server", "2001:db8::1")
                },
                "ip_version: not supported: DHCPv6 options are not served (there is no \
                 DHCPv6 server yet); leave the entry out",
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
