//! Subnets: prefixes, gateways, host routes, allocation pools and DHCP settings, and
//! the DHCP server address of each (checked last, against every other user of the
//! network).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Checked, Checker, Network, Route};
use crate::model;
use pollux_services::addr::Ipv4Cidr;
use pollux_services::dhcp::server::DEFAULT_LEASE_TIME;

/// What an IPv6 subnet holds: its prefix and gateway (the addresses port security and
/// the security groups need; IPv6 is neither routed nor served by DHCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Subnet {
    /// Network address.
    pub addr: Ipv6Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway, inside the prefix (an address no port may take).
    pub gateway_ip: Option<Ipv6Addr>,
}

impl Ipv6Subnet {
    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        let mask = match self.prefix {
            0 => 0,
            l => u128::MAX << (128 - u32::from(l.min(128))),
        };
        u128::from(ip) & mask == u128::from(self.addr)
    }
}

/// A checked subnet. An IPv6 subnet (`ipv6`) is kept here too, so that ids and indices
/// are shared, but is never valid as an IPv4 subnet: its `cidr` is `0.0.0.0/0`, it has no
/// DHCP, and a reference that needs an IPv4 subnet refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// Unique id.
    pub id: String,
    /// Index of its network.
    pub network: usize,
    /// The IPv6 subnet, for `ip_version = 6`.
    pub ipv6: Option<Ipv6Subnet>,
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

/// Shortest `dhcp_lease_duration` in seconds (a shorter lease only makes clients chatty).
pub const MIN_LEASE_DURATION: i64 = 60;
/// Largest `dhcp_lease_duration` in seconds: 2^31 - 1 (-1 is infinite).
pub const MAX_LEASE_DURATION: i64 = i32::MAX as i64;

impl Checker {
    pub(super) fn subnets(
        &mut self,
        subnets: &[model::Subnet],
        networks: &Checked<Network>,
    ) -> Checked<Subnet> {
        let mut out: Checked<Subnet> = Checked::default();
        for (i, s) in subnets.iter().enumerate() {
            let base = format!("subnets[{i}]");
            match s.ip_version {
                None | Some(4) => {}
                Some(6) => {
                    let (subnet, ok) = self.subnet6(&base, i, s, networks, &mut out.by_id);
                    out.items.push(subnet);
                    out.ok.push(ok);
                    continue;
                }
                Some(v) => self.err(
                    format!("{base}.ip_version"),
                    format!("{v} is not an IP version (4 or 6)"),
                ),
            }
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
                ipv6: None,
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

    /// An IPv6 subnet (`ip_version = 6`): its id, network, prefix and gateway; the DHCP
    /// fields are refused (DHCPv6 is not served). Returned with `ok = false`, so that a
    /// reference needing an IPv4 subnet gets none; the ports find it by id.
    fn subnet6(
        &mut self,
        base: &str,
        i: usize,
        s: &model::Subnet,
        networks: &Checked<Network>,
        by_id: &mut std::collections::HashMap<String, usize>,
    ) -> (Subnet, bool) {
        self.id(format!("{base}.id"), &s.id, "subnet", by_id, i);
        let network = self.reference(
            &format!("{base}.network_id"),
            &s.network_id,
            "network",
            networks,
        );
        let cidr_path = format!("{base}.cidr");
        let cidr = if !s.cidr.contains(':') || !s.cidr.contains('/') {
            self.err(
                &cidr_path,
                format!("{:?} is not an IPv6 prefix (ip_version = 6)", s.cidr),
            );
            None
        } else {
            self.ipv6_prefix(&cidr_path, &s.cidr)
        };
        let gateway_ip = s.gateway_ip.as_deref().and_then(|g| {
            let p = format!("{base}.gateway_ip");
            let Ok(ip) = g.parse::<Ipv6Addr>() else {
                self.err(p, format!("{g:?} is not an IPv6 address"));
                return None;
            };
            let (addr, prefix) = cidr?;
            let net = Ipv6Subnet {
                addr,
                prefix,
                gateway_ip: None,
            };
            // Neutron takes a link-local gateway (the router's address that RAs come
            // from) besides one inside the prefix.
            if !net.contains(ip) && !ip.is_unicast_link_local() {
                self.err(
                    p,
                    format!("{ip} is not inside the subnet's cidr {}", s.cidr),
                );
                return None;
            }
            Some(ip)
        });
        let refuse = |c: &mut Self, field: &str, given: bool| {
            if given {
                c.err(
                    format!("{base}.{field}"),
                    "not supported on an IPv6 subnet: DHCPv6 is not served (leave it out)",
                );
            }
        };
        if s.enable_dhcp {
            self.err(
                format!("{base}.enable_dhcp"),
                "not supported on an IPv6 subnet: DHCPv6 is not served; set enable_dhcp = false",
            );
        }
        refuse(self, "dns_nameservers", !s.dns_nameservers.is_empty());
        refuse(self, "host_routes", !s.host_routes.is_empty());
        refuse(self, "allocation_pools", s.allocation_pools.is_some());
        refuse(self, "dhcp_server_ip", s.dhcp_server_ip.is_some());
        refuse(self, "dhcp_lease_duration", s.dhcp_lease_duration.is_some());
        refuse(self, "dhcp_serve_unknown", s.dhcp_serve_unknown);
        let (addr, prefix) = cidr.unwrap_or((Ipv6Addr::UNSPECIFIED, 0));
        let subnet = Subnet {
            id: s.id.clone(),
            network: network.unwrap_or(usize::MAX),
            ipv6: Some(Ipv6Subnet {
                addr,
                prefix,
                gateway_ip,
            }),
            cidr: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
            gateway_ip: None,
            enable_dhcp: false,
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
            allocation_pools: Vec::new(),
            dhcp_server_ip: None,
            lease_time: DEFAULT_LEASE_TIME,
            serve_unknown: false,
        };
        (subnet, false)
    }

    /// The DHCP server address of a subnet, with the checks that need only the subnet:
    /// `None` when DHCP is off (a given `dhcp_server_ip` is still checked then) or the
    /// address is bad. Collisions with other users of the network are checked last, by
    /// [`Checker::dhcp_servers`].
    pub(super) fn subnet_dhcp_server_ip(
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
    pub(super) fn dhcp_servers(&mut self, subnets: &[model::Subnet], checked: &Checked<Subnet>) {
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
}

/// The DHCP server address of a subnet that does not name one: its last host address
/// (`.254` of a /24). Meant for prefixes up to /30.
pub fn default_dhcp_server_ip(cidr: Ipv4Cidr) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.broadcast()).wrapping_sub(1))
}

#[cfg(test)]
mod tests {
    use crate::validate::fixtures::*;
    use crate::validate::validate;

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
}
