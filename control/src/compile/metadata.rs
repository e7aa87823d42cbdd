//! From a validated desired state to the metadata proxy: which networks it serves and how
//! their VMs reach it, and what it tells the metadata server about each port.
//!
//! As Neutron does: a network with a router interface on one of its subnets is served
//! through the router (requests to 169.254.169.254 go to the VM's gateway, and are taken
//! before routing, `X-Neutron-Router-ID`); a subnet with DHCP and no router interface is
//! "isolated" (Neutron's `enable_isolated_metadata`): its DHCP server hands out the host
//! route `169.254.169.254/32 via <server address>` (option 121, with the default route
//! beside it), and the network's service MAC takes the requests
//! (`X-Neutron-Network-ID`). Without `[metadata]` nothing of this exists.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use pollux_dataplane::slowpath::METADATA_ADDR;
use pollux_services::addr::Ipv4Cidr;
use pollux_services::dhcp::server::HostRoute;
use pollux_services::metadata::{MetadataTable, NetworkMetadata, PortIdentity, Upstream};

use super::Identities;
use crate::identity::router_mac;
use crate::validate::Validated;

/// Per subnet (index into `v.subnets`): whether some router has an interface on it.
pub fn routed_subnets(v: &Validated) -> Vec<bool> {
    let mut routed = vec![false; v.subnets.len()];
    for r in v.routers.iter() {
        for &s in &r.interfaces {
            if let Some(flag) = routed.get_mut(s) {
                *flag = true;
            }
        }
    }
    routed
}

/// The host route DHCP hands out on subnet `s` for the isolated metadata case, if any:
/// `[metadata]` configured, the subnet served by DHCP and no router on it.
pub fn isolated_route(v: &Validated, routed: &[bool], s: usize) -> Option<HostRoute> {
    v.metadata.as_ref()?;
    let subnet = v.subnets.get(s)?;
    if routed.get(s).copied().unwrap_or(true) {
        return None;
    }
    Some(HostRoute {
        destination: Ipv4Cidr {
            addr: METADATA_ADDR,
            prefix: 32,
        },
        nexthop: subnet.dhcp_server_ip?,
    })
}

/// Per network (index into `v.networks`): (served through a router, served by its DHCP
/// server for an isolated subnet). Both false without `[metadata]`.
pub fn metadata_networks(v: &Validated) -> Vec<(bool, bool)> {
    let mut out = vec![(false, false); v.networks.len()];
    if v.metadata.is_none() {
        return out;
    }
    let routed = routed_subnets(v);
    for (s, subnet) in v.subnets.iter().enumerate() {
        let Some(entry) = out.get_mut(subnet.network) else {
            continue;
        };
        if routed[s] {
            entry.0 = true;
        } else if subnet.dhcp_server_ip.is_some() {
            entry.1 = true;
        }
    }
    out
}

/// What the proxy serves, keyed by the identities the snapshot uses: an empty table
/// without `[metadata]`.
pub fn metadata_table(v: &Validated, ids: &Identities) -> MetadataTable {
    let Some(settings) = &v.metadata else {
        return MetadataTable::default();
    };
    let served = metadata_networks(v);
    let mut routers_of: HashMap<usize, Vec<([u8; 6], String)>> = HashMap::new();
    for r in v.routers.iter() {
        let Some(uid) = ids.router_uid(&r.id) else {
            continue;
        };
        let networks: HashSet<usize> = r
            .interfaces
            .iter()
            .filter_map(|&s| Some(v.subnets.get(s)?.network))
            .collect();
        for n in networks {
            routers_of
                .entry(n)
                .or_default()
                .push((router_mac(uid), r.id.clone()));
        }
    }
    let mut networks = HashMap::new();
    let mut wanted = vec![false; v.networks.len()];
    for (n, net) in v.networks.iter().enumerate() {
        let (via_router, isolated) = served[n];
        let Some(uid) = ids.network_uid(&net.id) else {
            continue;
        };
        if !(via_router || isolated) {
            continue;
        }
        wanted[n] = true;
        networks.insert(
            uid,
            NetworkMetadata {
                network_id: net.id.clone(),
                routers: routers_of.remove(&n).unwrap_or_default(),
            },
        );
    }
    let mut ports = HashMap::new();
    for p in &v.ports {
        if p.remote_host.is_some() || !wanted.get(p.network).copied().unwrap_or(false) {
            continue;
        }
        let (Some(id), Some(uid)) = (
            ids.vm_port(&p.id),
            ids.network_uid(&v.networks[p.network].id),
        ) else {
            continue;
        };
        ports.insert(
            id,
            PortIdentity {
                network: uid,
                device_id: p.device_id.clone(),
                project_id: p.project_id.clone(),
                fixed_ips: p.fixed_ips.iter().map(|f| f.ip).collect::<Vec<Ipv4Addr>>(),
            },
        );
    }
    MetadataTable {
        upstream: Some(Upstream {
            addr: settings.upstream,
            secret: settings.secret.clone(),
        }),
        limits: settings.limits,
        networks,
        ports,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::dhcp::dhcp_configs;
    use crate::validate::fixtures::base;
    use crate::validate::validate;

    fn with_metadata() -> crate::model::DesiredState {
        let mut state = base();
        state.metadata = Some(
            serde_json::from_value(serde_json::json!({"nova_metadata_host": "198.19.250.2"}))
                .unwrap(),
        );
        state
    }

    #[test]
    fn a_routed_network_is_served_through_its_router_an_isolated_subnet_by_dhcp() {
        // net-a: sub-a is r1's interface; ext: only r1's gateway, and DHCP (Neutron's
        // isolated subnet: a gateway port is not an interface).
        let v = validate(&with_metadata()).unwrap();
        assert_eq!(metadata_networks(&v), vec![(true, false), (false, true)]);
        let configs = dhcp_configs(&v, |_| [2, 0, 0, 0, 0, 1], |_| None);
        let routes = |n: usize| {
            configs.iter().find(|(i, _)| *i == n).unwrap().1.subnets[0]
                .host_routes
                .clone()
        };
        assert!(routes(0).is_empty());
        assert_eq!(
            routes(1),
            vec![HostRoute {
                destination: Ipv4Cidr {
                    addr: METADATA_ADDR,
                    prefix: 32
                },
                nexthop: Ipv4Addr::new(203, 0, 113, 254),
            }]
        );
    }

    #[test]
    fn without_the_section_nothing_is_served_nor_routed() {
        let v = validate(&base()).unwrap();
        assert_eq!(metadata_networks(&v), vec![(false, false), (false, false)]);
        let configs = dhcp_configs(&v, |_| [2, 0, 0, 0, 0, 1], |_| None);
        assert!(configs
            .iter()
            .all(|(_, c)| c.subnets.iter().all(|s| s.host_routes.is_empty())));
        assert_eq!(
            metadata_table(&v, &Identities::default()),
            MetadataTable::default()
        );
    }
}
