//! Routers: interfaces on subnets (at their gateways), the external gateway and extra
//! routes.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Checked, Checker, Hosts, Network, Port, Route, Subnet};
use crate::model;
use pollux_services::addr::Ipv4Cidr;

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
    /// The host it runs on when that is another host (an index of `hosts`): this host
    /// does not run it, and reaches its interfaces on overlay networks over the overlay.
    pub remote_host: Option<usize>,
    /// Whether it runs on this host (its `binding_host_id` is absent or names this host).
    pub runs_here: bool,
    /// The MAC of its interfaces, when the state gives one.
    pub mac: Option<[u8; 6]>,
    /// Its project (the project metering labels counted on it).
    pub project_id: Option<String>,
}

impl Router {
    /// The networks it has an interface on, the external one included.
    pub fn networks<'a>(&'a self, subnets: &'a [Subnet]) -> impl Iterator<Item = usize> + 'a {
        self.interfaces
            .iter()
            .map(|&s| subnets[s].network)
            .chain(self.external_gateway.map(|g| g.network))
    }
}

impl Checker {
    pub(super) fn routers(
        &mut self,
        routers: &[model::Router],
        networks: &Checked<Network>,
        subnets: &Checked<Subnet>,
        ports: &Checked<Port>,
        hosts: &Hosts,
    ) -> Checked<Router> {
        let mut out = Checked::default();
        let mut attached: HashMap<usize, String> = HashMap::new();
        let mut router_macs: HashMap<[u8; 6], String> = HashMap::new();
        for (i, r) in routers.iter().enumerate() {
            let base = format!("routers[{i}]");
            let before = self.errors.len();
            self.id(format!("{base}.id"), &r.id, "router", &mut out.by_id, i);
            let id_ok = self.clean(before);
            let mut interfaces: Vec<usize> = Vec::new();
            for (k, sid) in r.interfaces.iter().enumerate() {
                let p = format!("{base}.interfaces[{k}]");
                if subnets
                    .by_id
                    .get(sid.as_str())
                    .is_some_and(|&i| subnets.items[i].ipv6.is_some())
                {
                    self.err(
                        p,
                        format!(
                            "subnet {sid} is an IPv6 subnet: not supported on a router (IPv6 \
                             is switched and filtered, not routed)"
                        ),
                    );
                    continue;
                }
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
            let (runs_here, remote_host) = self.bound_host(
                &format!("{base}.binding_host_id"),
                r.binding_host_id.as_deref(),
                hosts,
            );
            let mut router = Router {
                id: r.id.clone(),
                interfaces,
                external_gateway,
                routes,
                remote_host,
                runs_here,
                mac: None,
                project_id: r.project_id.clone().filter(|p| !p.is_empty()),
            };
            router.mac = self.router_mac(
                &base,
                r,
                &router,
                networks,
                subnets,
                ports,
                &mut router_macs,
            );
            out.items.push(router);
            out.ok.push(id_ok);
        }
        out
    }

    /// Checks a router's `mac_address`: a station MAC that no port on its networks and no
    /// other router has. Needed for a router of another host on an overlay network: the
    /// hosts that reach it over the overlay must know the MAC its own host gives it (the
    /// same state on its host makes it use that MAC).
    #[allow(clippy::too_many_arguments)]
    fn router_mac(
        &mut self,
        base: &str,
        r: &model::Router,
        router: &Router,
        networks: &Checked<Network>,
        subnets: &Checked<Subnet>,
        ports: &Checked<Port>,
        router_macs: &mut HashMap<[u8; 6], String>,
    ) -> Option<[u8; 6]> {
        let path = format!("{base}.mac_address");
        let Some(text) = r.mac_address.as_deref() else {
            if !router.runs_here
                && router
                    .networks(&subnets.items)
                    .any(|n| networks.items[n].segment.is_overlay())
            {
                self.err(
                    path,
                    "a router of another host on a vxlan, geneve or gre network needs a \
                     mac_address (Neutron's router ports' MAC) to be reached over the overlay",
                );
            }
            return None;
        };
        let mac = self.mac(&path, text)?;
        for n in router.networks(&subnets.items) {
            if let Some(p) = ports
                .items
                .iter()
                .find(|p| p.network == n && p.macs().contains(&mac))
            {
                let msg = format!(
                    "{text} is already a MAC of port {} on network {}",
                    p.id, networks.items[n].id
                );
                self.err(path, msg);
                return None;
            }
        }
        if let Some(other) = router_macs.insert(mac, r.id.clone()) {
            self.err(path, format!("{text} is already the MAC of router {other}"));
            return None;
        }
        Some(mac)
    }

    /// The valid subnet of `network` that contains `ip`; an error when there is none.
    pub(super) fn subnet_of(
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
}
