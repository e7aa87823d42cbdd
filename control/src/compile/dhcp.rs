//! From a validated desired state to the configuration of each network's DHCP server.
//!
//! A network gets a server when at least one of its subnets has `enable_dhcp`. The server
//! serves those subnets (at their `dhcp_server_ip`, from the network's DHCP MAC), and
//! knows every port of the network by its MAC with each fixed IP it has in them.

use std::net::Ipv4Addr;

use crate::validate::Validated;
use pollux_dataplane::port::PortId;
use pollux_services::dhcp::server::{DhcpConfig, HostConfig, HostRoute, SubnetConfig};

/// The DHCP server configuration of every network (by index into `v.networks`, in
/// order) that has a subnet with DHCP on. `mac_of_network` gives the server's MAC of a
/// network (its index), normally [`crate::identity::dhcp_mac`] of the network's uid.
///
/// Each DHCP subnet gets a [`SubnetConfig`]: its cidr, gateway (option 3 and the default
/// route of option 121), server address, DNS servers, the network's `dns_domain` and
/// MTU, its lease time, host routes and `dhcp_serve_unknown`. Each (port, fixed IP in a
/// DHCP subnet) gets a [`HostConfig`] with the port's host name and extra options. The
/// host answers only on `port_of(i)`, the data-plane port of port `i` (none: the port is
/// not here). The per-client and per-network limits and the per-port dynamic lease limit
/// come from `[dhcp]`; the limiter seed is left to
/// the server (random).
pub fn dhcp_configs(
    v: &Validated,
    mac_of_network: impl Fn(usize) -> [u8; 6],
    port_of: impl Fn(usize) -> Option<PortId>,
) -> Vec<(usize, DhcpConfig)> {
    dhcp_configs_of(v, |_| true, mac_of_network, port_of)
}

/// [`dhcp_configs`] of the networks (indices into `v.networks`) `wanted` says yes to.
pub fn dhcp_configs_of(
    v: &Validated,
    wanted: impl Fn(usize) -> bool,
    mac_of_network: impl Fn(usize) -> [u8; 6],
    port_of: impl Fn(usize) -> Option<PortId>,
) -> Vec<(usize, DhcpConfig)> {
    // Subnets and ports by network, in their order, in one pass each: looking them up per
    // network would cost networks x (subnets + ports) on every change.
    // Only those of the networks wanted: a change of one network's ports asks for one.
    let wanted_networks: Vec<bool> = (0..v.networks.len()).map(&wanted).collect();
    let mut subnets_of = vec![Vec::new(); v.networks.len()];
    for (i, s) in v.subnets.iter().enumerate() {
        if wanted_networks[s.network] {
            subnets_of[s.network].push(i);
        }
    }
    let mut ports_of = vec![Vec::new(); v.networks.len()];
    // A port of another host gets its addresses from its own host's server.
    for (i, p) in v.ports.iter().enumerate() {
        if p.remote_host.is_none() && wanted_networks[p.network] {
            ports_of[p.network].push(i);
        }
    }
    let routed = super::metadata::routed_subnets(v);
    let mut out = Vec::new();
    for (n, net) in v.networks.iter().enumerate() {
        if !wanted_networks[n] {
            continue;
        }
        let served: Vec<(usize, Ipv4Addr)> = subnets_of[n]
            .iter()
            .filter_map(|&i| Some((i, v.subnets[i].dhcp_server_ip?)))
            .collect();
        if served.is_empty() {
            continue;
        }
        let server_mac = mac_of_network(n);
        let subnets = served
            .iter()
            .map(|&(i, server_ip)| {
                let s = &v.subnets[i];
                SubnetConfig {
                    cidr: s.cidr,
                    gateway: s.gateway_ip,
                    server_ip,
                    server_mac,
                    dns_servers: s.dns_nameservers.clone(),
                    domain: net.dns_domain.clone(),
                    mtu: Some(net.mtu),
                    lease_time: s.lease_time,
                    host_routes: s
                        .host_routes
                        .iter()
                        .map(|r| HostRoute {
                            destination: r.destination,
                            nexthop: r.nexthop,
                        })
                        .chain(super::metadata::isolated_route(v, &routed, i))
                        .collect(),
                    serve_unknown: s.serve_unknown,
                    pools: s.allocation_pools.clone(),
                }
            })
            .collect();
        let hosts = ports_of[n]
            .iter()
            .flat_map(|&i| {
                let p = &v.ports[i];
                let port = port_of(i);
                p.fixed_ips
                    .iter()
                    .filter(|f| served.iter().any(|&(i, _)| i == f.subnet))
                    .map(move |f| HostConfig {
                        mac: p.mac,
                        port,
                        ip: f.ip,
                        hostname: p.hostname.clone(),
                        extra_options: p.extra_dhcp_opts.clone(),
                    })
            })
            .collect();
        out.push((
            n,
            DhcpConfig {
                subnets,
                hosts,
                per_client_limit: v.dhcp.client,
                global_limit: v.dhcp.network,
                limiter_seed: None,
                leases_per_port: v.dhcp.leases_per_port,
            },
        ));
    }
    out
}

/// Every DHCP server address, with its network (index into `v.networks`), in subnet
/// order: the addresses the data plane answers ARP for and punts unicast DHCP to.
pub fn dhcp_server_addresses(v: &Validated) -> Vec<(usize, Ipv4Addr)> {
    v.subnets
        .iter()
        .filter_map(|s| Some((s.network, s.dhcp_server_ip?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DesiredState;
    use crate::validate::validate;
    use pollux_dataplane::ratelimit::BucketConfig;
    use pollux_services::addr::Ipv4Cidr;
    use pollux_services::dhcp::ExtraOption;

    const STATE: &str = r#"
        [dhcp]
        client_rate = 7
        client_burst = 9
        network_rate = 70
        network_burst = 90

        [[networks]]
        id = "net-a"
        network_type = "local"
        mtu = 1450
        dns_domain = "example.org."

        [[networks]]
        id = "net-b"
        network_type = "local"

        [[subnets]]
        id = "sub-a"
        network_id = "net-a"
        cidr = "198.18.1.0/24"
        gateway_ip = "198.18.1.1"
        dns_nameservers = ["198.18.1.53"]
        host_routes = [{ destination = "198.19.0.0/16", nexthop = "198.18.1.2" }]
        dhcp_lease_duration = 3600

        [[subnets]]
        id = "sub-a2"
        network_id = "net-a"
        cidr = "198.18.2.0/28"
        dhcp_server_ip = "198.18.2.2"
        dhcp_lease_duration = -1
        dhcp_serve_unknown = true

        [[subnets]]
        id = "sub-a3"
        network_id = "net-a"
        cidr = "198.18.3.0/24"
        enable_dhcp = false

        [[subnets]]
        id = "sub-b"
        network_id = "net-b"
        cidr = "198.18.9.0/24"
        enable_dhcp = false

        [[ports]]
        id = "vm1"
        network_id = "net-a"
        mac_address = "fa:16:3e:00:00:01"
        fixed_ips = [
            { subnet_id = "sub-a", ip_address = "198.18.1.10" },
            { subnet_id = "sub-a3", ip_address = "198.18.3.10" },
            { subnet_id = "sub-a2", ip_address = "198.18.2.10" },
        ]
        dns_name = "vm1"
        extra_dhcp_opts = [
            { opt_name = "ntp-server", opt_value = "198.18.1.123" },
        ]
        binding = { driver = "mem" }

        [[ports]]
        id = "vm2"
        network_id = "net-b"
        mac_address = "fa:16:3e:00:00:02"
        fixed_ips = [{ subnet_id = "sub-b", ip_address = "198.18.9.10" }]
        binding = { driver = "mem" }
    "#;

    fn cidr(s: &str) -> Ipv4Cidr {
        pollux_services::addr::parse_cidr(s).unwrap()
    }

    #[test]
    fn one_server_per_network_with_dhcp() {
        let v = validate(&DesiredState::from_toml_str(STATE).unwrap()).unwrap();
        let mac = |n: usize| [0x02, 0x70, 0x64, 0, 0, n as u8 + 1];
        // Port i is data-plane port 10 + i; the second port is not on this host.
        let port_of = |i: usize| (i == 0).then_some(PortId(10));
        let configs = dhcp_configs(&v, mac, port_of);
        assert_eq!(configs.len(), 1, "net-b has no DHCP subnet");
        let (n, c) = &configs[0];
        assert_eq!(*n, 0);
        let mac_a = [0x02, 0x70, 0x64, 0, 0, 1];
        assert_eq!(
            c.subnets,
            [
                SubnetConfig {
                    cidr: cidr("198.18.1.0/24"),
                    gateway: Some(Ipv4Addr::new(198, 18, 1, 1)),
                    server_ip: Ipv4Addr::new(198, 18, 1, 254),
                    server_mac: mac_a,
                    dns_servers: vec![Ipv4Addr::new(198, 18, 1, 53)],
                    domain: Some("example.org".into()),
                    mtu: Some(1450),
                    lease_time: 3600,
                    host_routes: vec![HostRoute {
                        destination: cidr("198.19.0.0/16"),
                        nexthop: Ipv4Addr::new(198, 18, 1, 2),
                    }],
                    serve_unknown: false,
                    pools: Vec::new(),
                },
                SubnetConfig {
                    cidr: cidr("198.18.2.0/28"),
                    gateway: None,
                    server_ip: Ipv4Addr::new(198, 18, 2, 2),
                    server_mac: mac_a,
                    dns_servers: Vec::new(),
                    domain: Some("example.org".into()),
                    mtu: Some(1450),
                    lease_time: u32::MAX,
                    host_routes: Vec::new(),
                    serve_unknown: true,
                    pools: Vec::new(),
                },
            ]
        );
        let host = |ip: Ipv4Addr| HostConfig {
            mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
            port: Some(PortId(10)),
            ip,
            hostname: Some("vm1".into()),
            extra_options: vec![ExtraOption::raw(42, [198, 18, 1, 123])],
        };
        // The fixed IP in the subnet without DHCP is left out.
        assert_eq!(
            c.hosts,
            [
                host(Ipv4Addr::new(198, 18, 1, 10)),
                host(Ipv4Addr::new(198, 18, 2, 10))
            ]
        );
        assert_eq!(
            c.per_client_limit,
            BucketConfig {
                rate_per_sec: 7,
                burst: 9
            }
        );
        assert_eq!(
            c.global_limit,
            BucketConfig {
                rate_per_sec: 70,
                burst: 90
            }
        );
        assert_eq!(c.limiter_seed, None);
        assert_eq!(c.leases_per_port, 16);
        assert_eq!(
            dhcp_server_addresses(&v),
            [
                (0, Ipv4Addr::new(198, 18, 1, 254)),
                (0, Ipv4Addr::new(198, 18, 2, 2))
            ]
        );
    }

    #[test]
    fn a_state_without_dhcp_has_no_servers() {
        let text = STATE.replace("dhcp_lease_duration = 3600", "enable_dhcp = false");
        let text = text.replace("dhcp_serve_unknown = true", "enable_dhcp = false");
        let v = validate(&DesiredState::from_toml_str(&text).unwrap()).unwrap();
        assert!(dhcp_configs(&v, |_| [2, 0, 0, 0, 0, 1], |_| None).is_empty());
        assert!(dhcp_server_addresses(&v).is_empty());
    }
}
