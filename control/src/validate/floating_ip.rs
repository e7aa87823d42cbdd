//! Floating IPs: an address on an external network, associated with a port's fixed IP
//! through a router that has a gateway there.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{Checked, Checker, Port, Router, Subnet};
use crate::model;

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

impl Checker {
    pub(super) fn floating_ips(
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
