//! The routing table each router gets from the configuration, as the `routes.list` socket
//! method shows it.
//!
//! It is computed from the [`Validated`] state rather than read from the data plane, so it
//! is what the configuration asks for: connected routes for the router's interface subnets
//! and its external subnet, the default route through the external subnet's gateway, and
//! the static routes. Within a router, entries are listed as a FIB is: longest prefix
//! first.

use std::cmp::Reverse;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::validate::{Router, Validated};
use pollux_services::addr::Ipv4Cidr;

/// The `interface` of routes through a router's external gateway.
pub const EXTERNAL: &str = "external";

/// The `interface` of a static route whose next hop is in no connected subnet (validation
/// rejects those, so it only shows up for a hand-made state).
pub const NO_INTERFACE: &str = "-";

/// Where a route comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A subnet the router has an address in.
    Connected,
    /// An entry of the router's `routes`.
    Static,
    /// The default route through the external gateway.
    Gateway,
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RouteKind::Connected => "connected",
            RouteKind::Static => "static",
            RouteKind::Gateway => "gateway",
        })
    }
}

/// One route of one router.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteEntry {
    /// The router's id.
    pub router_id: String,
    /// Destination prefix, `a.b.c.d/n` with host bits zero.
    pub destination: String,
    /// Next hop; `None` (JSON `null`) for a connected route.
    pub nexthop: Option<String>,
    /// Where the route comes from.
    pub kind: RouteKind,
    /// The subnet id the route leaves through, [`EXTERNAL`] for the external gateway, or
    /// [`NO_INTERFACE`].
    pub interface: String,
}

/// Every router's routes: routers in document order, each one's routes longest prefix
/// first, then by destination address.
pub fn routes(state: &Validated) -> Vec<RouteEntry> {
    state
        .routers
        .iter()
        .flat_map(|r| router_routes(state, r))
        .collect()
}

/// The routes of the router `router_id`, ordered as in [`routes`]; `None` when there is
/// no such router.
pub fn routes_of(state: &Validated, router_id: &str) -> Option<Vec<RouteEntry>> {
    state
        .routers
        .iter()
        .find(|r| r.id == router_id)
        .map(|r| router_routes(state, r))
}

fn router_routes(state: &Validated, router: &Router) -> Vec<RouteEntry> {
    let mut out: Vec<(Ipv4Cidr, RouteEntry)> = Vec::new();
    let mut push =
        |destination: Ipv4Cidr, nexthop: Option<Ipv4Addr>, kind: RouteKind, interface: &str| {
            out.push((
                destination,
                RouteEntry {
                    router_id: router.id.clone(),
                    destination: destination.to_string(),
                    nexthop: nexthop.map(|ip| ip.to_string()),
                    kind,
                    interface: interface.to_owned(),
                },
            ));
        };

    let interfaces: Vec<_> = router
        .interfaces
        .iter()
        .map(|&i| &state.subnets[i])
        .collect();
    for s in &interfaces {
        // Re-normalised so the entry never shows host bits, even for a hand-made state.
        push(
            Ipv4Cidr::new(s.cidr.addr, s.cidr.prefix),
            None,
            RouteKind::Connected,
            &s.id,
        );
    }
    let external = router.external_gateway.map(|g| &state.subnets[g.subnet]);
    if let Some(ext) = external {
        push(
            Ipv4Cidr::new(ext.cidr.addr, ext.cidr.prefix),
            None,
            RouteKind::Connected,
            EXTERNAL,
        );
        if let Some(gw) = ext.gateway_ip {
            push(
                Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
                Some(gw),
                RouteKind::Gateway,
                EXTERNAL,
            );
        }
    }
    for rt in &router.routes {
        let interface = interfaces
            .iter()
            .find(|s| s.cidr.contains(rt.nexthop))
            .map(|s| s.id.as_str())
            .or_else(|| {
                external
                    .filter(|s| s.cidr.contains(rt.nexthop))
                    .map(|_| EXTERNAL)
            })
            .unwrap_or(NO_INTERFACE);
        let destination = Ipv4Cidr::new(rt.destination.addr, rt.destination.prefix);
        push(destination, Some(rt.nexthop), RouteKind::Static, interface);
    }

    // Addresses compare as numbers (10.0.0.0 after 9.0.0.0), unlike their text. The sort
    // is stable so that entries for one destination keep the order they were added in:
    // connected, gateway, static.
    out.sort_by_key(|(d, _)| (Reverse(d.prefix), d.addr));
    out.into_iter().map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DesiredState;
    use crate::validate::{validate, Route};
    use serde_json::{json, Value};
    use std::sync::Arc;

    const ROUTER_FLOATING_IP: &str = include_str!("../../configs/router-floating-ip.toml");

    fn valid(toml: &str) -> Validated {
        let state = DesiredState::from_toml_str(toml).expect("the test config parses");
        match validate(&state) {
            Ok(v) => v,
            Err(errors) => panic!(
                "expected valid, got:\n{}",
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    fn entry(
        router: &str,
        destination: &str,
        nexthop: Option<&str>,
        kind: RouteKind,
        interface: &str,
    ) -> RouteEntry {
        RouteEntry {
            router_id: router.to_owned(),
            destination: destination.to_owned(),
            nexthop: nexthop.map(str::to_owned),
            kind,
            interface: interface.to_owned(),
        }
    }

    /// Two routers: r-a with two tenant subnets and a static route; r-b with one tenant
    /// subnet and a gateway on an external subnet that has no gateway_ip.
    const TWO_ROUTERS: &str = r#"
        [[networks]]
        id = "t1"
        network_type = "local"

        [[networks]]
        id = "t2"
        network_type = "local"

        [[networks]]
        id = "t3"
        network_type = "local"

        [[networks]]
        id = "ext"
        network_type = "local"

        [[subnets]]
        id = "t1-a"
        network_id = "t1"
        cidr = "10.1.0.0/16"
        gateway_ip = "10.1.0.1"

        [[subnets]]
        id = "t1-b"
        network_id = "t3"
        cidr = "9.9.9.0/24"
        gateway_ip = "9.9.9.1"

        [[subnets]]
        id = "t2-a"
        network_id = "t2"
        cidr = "192.0.2.0/28"
        gateway_ip = "192.0.2.1"

        [[subnets]]
        id = "ext-v4"
        network_id = "ext"
        cidr = "203.0.113.0/24"

        [[routers]]
        id = "r-b"
        interfaces = ["t2-a"]
        external_gateway_info = { network_id = "ext", external_fixed_ip = "203.0.113.2" }
        routes = [
          { destination = "198.51.100.0/24", nexthop = "203.0.113.9" },
          { destination = "0.0.0.0/0", nexthop = "203.0.113.254" },
        ]

        [[routers]]
        id = "r-a"
        interfaces = ["t1-a", "t1-b"]
        routes = [
          { destination = "172.16.0.0/12", nexthop = "10.1.0.254" },
          { destination = "10.1.0.0/16", nexthop = "9.9.9.2" },
          { destination = "100.64.0.0/10", nexthop = "9.9.9.3" },
        ]
    "#;

    #[test]
    fn router_floating_ip_example() {
        let v = valid(ROUTER_FLOATING_IP);
        assert_eq!(
            routes(&v),
            [
                entry(
                    "r1",
                    "198.18.10.0/24",
                    None,
                    RouteKind::Connected,
                    "tenant-v4"
                ),
                entry(
                    "r1",
                    "203.0.113.0/24",
                    None,
                    RouteKind::Connected,
                    "external"
                ),
                entry(
                    "r1",
                    "198.19.0.0/16",
                    Some("198.18.10.254"),
                    RouteKind::Static,
                    "tenant-v4"
                ),
                entry(
                    "r1",
                    "0.0.0.0/0",
                    Some("203.0.113.1"),
                    RouteKind::Gateway,
                    "external"
                ),
            ]
        );
    }

    #[test]
    fn serialises_with_lowercase_kind_and_null_nexthop() {
        let v = valid(ROUTER_FLOATING_IP);
        let r = routes(&v);
        assert_eq!(
            serde_json::to_value(&r[0]).unwrap(),
            json!({
                "router_id": "r1",
                "destination": "198.18.10.0/24",
                "nexthop": null,
                "kind": "connected",
                "interface": "tenant-v4",
            })
        );
        let kinds: Vec<Value> = r
            .iter()
            .map(|e| serde_json::to_value(e).unwrap()["kind"].clone())
            .collect();
        assert_eq!(
            kinds,
            [
                json!("connected"),
                json!("connected"),
                json!("static"),
                json!("gateway")
            ]
        );
        assert_eq!(RouteKind::Gateway.to_string(), "gateway");
    }

    #[test]
    fn routers_in_document_order_routes_longest_prefix_first() {
        let v = valid(TWO_ROUTERS);
        assert_eq!(
            routes(&v),
            [
                // r-b comes first in the document. Its external subnet has no gateway_ip,
                // so there is no gateway route, only its own static default.
                entry("r-b", "192.0.2.0/28", None, RouteKind::Connected, "t2-a"),
                entry(
                    "r-b",
                    "198.51.100.0/24",
                    Some("203.0.113.9"),
                    RouteKind::Static,
                    "external"
                ),
                entry(
                    "r-b",
                    "203.0.113.0/24",
                    None,
                    RouteKind::Connected,
                    "external"
                ),
                entry(
                    "r-b",
                    "0.0.0.0/0",
                    Some("203.0.113.254"),
                    RouteKind::Static,
                    "external"
                ),
                // 9.9.9.0 sorts before 10.1.0.0 as a number; the /16 static route to a
                // connected prefix stays after the connected route.
                entry("r-a", "9.9.9.0/24", None, RouteKind::Connected, "t1-b"),
                entry("r-a", "10.1.0.0/16", None, RouteKind::Connected, "t1-a"),
                entry(
                    "r-a",
                    "10.1.0.0/16",
                    Some("9.9.9.2"),
                    RouteKind::Static,
                    "t1-b"
                ),
                entry(
                    "r-a",
                    "172.16.0.0/12",
                    Some("10.1.0.254"),
                    RouteKind::Static,
                    "t1-a"
                ),
                entry(
                    "r-a",
                    "100.64.0.0/10",
                    Some("9.9.9.3"),
                    RouteKind::Static,
                    "t1-b"
                ),
            ]
        );
    }

    #[test]
    fn routes_of_one_router() {
        let v = valid(TWO_ROUTERS);
        let a = routes_of(&v, "r-a").expect("r-a exists");
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|e| e.router_id == "r-a"));
        assert_eq!(
            routes(&v)
                .into_iter()
                .filter(|e| e.router_id == "r-a")
                .collect::<Vec<_>>(),
            a
        );
        assert_eq!(routes_of(&v, "nope"), None);
    }

    #[test]
    fn a_router_without_anything_has_no_routes() {
        let v = valid(
            r#"
            [[routers]]
            id = "lonely"
            "#,
        );
        assert_eq!(routes(&v), []);
        assert_eq!(routes_of(&v, "lonely"), Some(Vec::new()));
    }

    #[test]
    fn no_routers_no_routes() {
        let v = valid("");
        assert!(routes(&v).is_empty());
    }

    #[test]
    fn a_nexthop_outside_every_connected_subnet_has_no_interface() {
        // Validation rejects this, so the route is added to an already validated state.
        let mut v = valid(ROUTER_FLOATING_IP);
        Arc::make_mut(&mut v.routers)[0].routes.push(Route {
            destination: Ipv4Cidr::new(Ipv4Addr::new(192, 0, 2, 0), 24),
            nexthop: Ipv4Addr::new(192, 0, 2, 1),
        });
        let r = routes_of(&v, "r1").unwrap();
        // Among the /24s, 192.0.2.0 is the lowest address.
        assert_eq!(
            r[0],
            entry(
                "r1",
                "192.0.2.0/24",
                Some("192.0.2.1"),
                RouteKind::Static,
                "-"
            )
        );
    }

    #[test]
    fn destinations_are_shown_without_host_bits() {
        // A hand-made state may hold a prefix with host bits; the table never shows them.
        let mut v = valid(ROUTER_FLOATING_IP);
        Arc::make_mut(&mut v.routers)[0].routes[0].destination = Ipv4Cidr {
            addr: Ipv4Addr::new(198, 19, 7, 7),
            prefix: 16,
        };
        let r = routes_of(&v, "r1").unwrap();
        assert_eq!(r[2].destination, "198.19.0.0/16");
    }
}
