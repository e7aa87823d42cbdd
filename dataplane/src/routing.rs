//! The routers of a snapshot: their interfaces, their MACs on each network and one
//! longest-prefix-match table per router, compiled on the control thread.
//!
//! A router (Neutron's `qrouter`) has an interface on each of its subnets at the subnet's
//! gateway IP, optionally an external gateway (another interface, on the external network,
//! plus a default route via that network's gateway), and extra routes whose next hops lie
//! in a connected subnet. All interfaces of one router share one MAC (Neutron gives each
//! router port its own; one per router is enough because each interface sits on a
//! different network, and it keeps the per-network MAC lookup to one entry per router).
//!
//! Nothing here is mutable: neighbours (ARP) and sessions are per-worker state, keyed by
//! identities that survive snapshot swaps ([`NetworkUid`], [`RouterUid`]).

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;

use crate::ident::{FdbKey, InterfaceIndex, NetworkSlot, PackedMac, RouterIndex};
use crate::lpm::{Lpm, LpmBuilder};
use crate::metering::{LabelMeterSpec, RouterMetering};
use crate::snapshot::NetworkUid;
use crate::table::U64Map;
use crate::wire::EthernetAddress;

pub use crate::ident::RouterUid;

/// One interface of a router as the builder takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The network it sits on.
    pub network: NetworkUid,
    /// Its address (a subnet's `gateway_ip`, or the external gateway's fixed IP).
    pub ip: Ipv4Addr,
    /// Prefix length of the connected subnet.
    pub prefix_len: u8,
    /// The network's MTU: larger packets are not forwarded out of this interface as they
    /// are.
    pub mtu: u16,
}

/// An extra route (Neutron's router `routes`, or the default route of an external
/// gateway): `destination/prefix_len` via `nexthop`, which must lie in a connected subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub destination: Ipv4Addr,
    /// Its length.
    pub prefix_len: u8,
    /// The next hop.
    pub nexthop: Ipv4Addr,
}

/// A router as the builder takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSpec {
    /// Stable identity.
    pub uid: RouterUid,
    /// The MAC of all its interfaces.
    pub mac: [u8; 6],
    /// Its interfaces; the connected routes come from them.
    pub interfaces: Vec<InterfaceSpec>,
    /// Extra routes.
    pub routes: Vec<RouteSpec>,
    /// Which of `interfaces` is the external gateway, if any.
    pub external: Option<usize>,
    /// Source-NAT to the external gateway's address what leaves through it (Neutron's
    /// `enable_snat`).
    pub enable_snat: bool,
    /// Floating IPs: `(fixed IP of a port behind the router, floating IP on the external
    /// network)`, translated 1:1 both ways.
    pub floating_ips: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// The metering labels counted at its external gateway.
    pub metering: Vec<LabelMeterSpec>,
}

/// Why the routers cannot be compiled (the control plane's validation reports these
/// earlier, with field paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoutingError {
    /// Two routers with one uid.
    DuplicateRouter(RouterUid),
    /// An interface on a network the snapshot does not have.
    UnknownNetwork(RouterUid, NetworkUid),
    /// Two interfaces of one router on one network.
    TwoInterfacesOnNetwork(RouterUid, NetworkUid),
    /// A route whose next hop is in no connected subnet of its router.
    NexthopNotConnected(RouterUid, Ipv4Addr),
    /// Two routers with one MAC on one network.
    DuplicateMac(NetworkUid, [u8; 6]),
    /// A group MAC, a prefix longer than 32 or more interfaces than fit.
    Invalid(RouterUid, &'static str),
    /// A floating IP used twice on one network, or a fixed IP with two floating IPs.
    DuplicateFloatingIp(RouterUid, Ipv4Addr),
}

impl fmt::Display for RoutingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoutingError::DuplicateRouter(r) => write!(f, "router uid {} is defined twice", r.0),
            RoutingError::UnknownNetwork(r, n) => {
                write!(
                    f,
                    "router uid {} has an interface on unknown network uid {}",
                    r.0, n.0
                )
            }
            RoutingError::TwoInterfacesOnNetwork(r, n) => {
                write!(
                    f,
                    "router uid {} has two interfaces on network uid {}",
                    r.0, n.0
                )
            }
            RoutingError::NexthopNotConnected(r, ip) => {
                write!(
                    f,
                    "router uid {} has a route via {ip}, in none of its subnets",
                    r.0
                )
            }
            RoutingError::DuplicateMac(n, mac) => {
                write!(
                    f,
                    "two routers use MAC {} on network uid {}",
                    crate::wire::EthernetAddress(*mac),
                    n.0
                )
            }
            RoutingError::Invalid(r, why) => write!(f, "router uid {}: {why}", r.0),
            RoutingError::DuplicateFloatingIp(r, ip) => {
                write!(
                    f,
                    "router uid {}: floating or fixed IP {ip} mapped twice",
                    r.0
                )
            }
        }
    }
}

impl std::error::Error for RoutingError {}

/// One interface of a compiled router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Index of its router in [`Routing::routers`].
    pub router: RouterIndex,
    /// Slot of its network.
    pub network: NetworkSlot,
    /// Stable identity of its network (the key of neighbour entries).
    pub network_uid: NetworkUid,
    /// Its address, host byte order.
    pub ip: u32,
    /// Prefix length of the connected subnet.
    pub prefix_len: u8,
    /// Egress MTU.
    pub mtu: u16,
}

/// Where the route for a destination points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// Index of the egress interface in [`Routing::interfaces`].
    pub interface: InterfaceIndex,
    /// The next hop's address, or 0 for a connected route (the destination itself).
    pub gateway: u32,
    /// The destination is the router's own address on `interface` (a receive
    /// adjacency, as VPP and Linux's local table have): the one route lookup a packet
    /// makes also tells whether it is for the router.
    pub own_address: bool,
}

/// One compiled router.
#[derive(Clone, Debug)]
pub struct Router {
    /// Stable identity.
    pub uid: RouterUid,
    /// MAC of all its interfaces.
    pub mac: EthernetAddress,
    /// Its interfaces: indices into [`Routing::interfaces`].
    pub interfaces: Vec<InterfaceIndex>,
    /// Destination → index into `nexthops`.
    pub fib: Lpm,
    /// The next hops the FIB points at.
    pub nexthops: Vec<NextHop>,
    /// The external gateway interface (index into [`Routing::interfaces`]).
    pub external: Option<InterfaceIndex>,
    /// Source NAT through the external gateway.
    pub enable_snat: bool,
    /// Whether it has floating IPs (an external gateway and at least one), so that a
    /// router without them never looks a destination up among floating IPs.
    pub has_floating_ips: bool,
    /// Its metering labels, if it has an external gateway and a label with counting rules.
    pub metering: Option<Box<RouterMetering>>,
}

impl Router {
    /// The next hop for `dst` (host byte order), if any route covers it.
    #[inline]
    pub fn lookup(&self, dst: u32) -> Option<NextHop> {
        self.fib
            .lookup(dst)
            .and_then(|i| self.nexthops.get(i as usize).copied())
    }
}

/// The routers of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    routers: Vec<Router>,
    interfaces: Vec<Interface>,
    /// Per network slot: indices into `interfaces` of the interfaces on it.
    by_network: Vec<Vec<InterfaceIndex>>,
    /// [`FdbKey`] of (slot, router MAC) → router index.
    macs: Option<U64Map<RouterIndex>>,
    /// `router index << 32 | floating IP` → fixed IP.
    fixed_of: Option<U64Map<u32>>,
    /// `router index << 32 | fixed IP` → floating IP.
    floating_of: Option<U64Map<u32>>,
    /// `network slot << 32 | floating IP` → router index: who answers ARP for it.
    floating_owner: Option<U64Map<RouterIndex>>,
    /// External addresses whose flows several workers must agree on (see
    /// [`crate::flow_owner`]): a floating IP → its fixed IP, a SNAT router's gateway
    /// address → 0 (steer by port).
    external: Option<U64Map<u32>>,
}

/// What [`Routing::external_address`] knows of an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExternalAddress {
    /// A floating IP: flows to it are the fixed IP's.
    Floating {
        /// The fixed IP it maps to.
        fixed: u32,
    },
    /// A SNAT router's external gateway address: replies find their session by port.
    Snat,
}

impl Routing {
    /// Compiles `specs`; `slot_of` maps each network to its slot and `networks` is the
    /// number of slots.
    pub(crate) fn compile(
        specs: &[RouterSpec],
        slot_of: &HashMap<NetworkUid, NetworkSlot>,
        networks: usize,
    ) -> Result<Routing, RoutingError> {
        let mut routing = Routing {
            by_network: vec![Vec::new(); networks],
            ..Routing::default()
        };
        if specs.is_empty() {
            return Ok(routing);
        }
        let mut specs: Vec<&RouterSpec> = specs.iter().collect();
        specs.sort_by_key(|s| s.uid);
        if let Some(w) = specs.windows(2).find(|w| w[0].uid == w[1].uid) {
            return Err(RoutingError::DuplicateRouter(w[0].uid));
        }
        let too_many = |uid| RoutingError::Invalid(uid, "more than 65535 routers or interfaces");
        let total_ifaces: usize = specs.iter().map(|s| s.interfaces.len()).sum();
        let mut macs = U64Map::with_slots_per_entry(total_ifaces.max(1), 4);
        let total_fips: usize = specs
            .iter()
            .map(|s| s.floating_ips.len())
            .sum::<usize>()
            .max(1);
        let mut fixed_of = U64Map::with_max_len(total_fips);
        let mut floating_of = U64Map::with_max_len(total_fips);
        let mut floating_owner = U64Map::with_max_len(total_fips);
        let mut external_addresses = U64Map::with_max_len(total_fips + specs.len());
        for spec in specs {
            let uid = spec.uid;
            let index = u16::try_from(routing.routers.len())
                .map(RouterIndex)
                .map_err(|_| too_many(uid))?;
            if spec.mac[0] & 1 == 1 {
                return Err(RoutingError::Invalid(
                    uid,
                    "a group MAC cannot be a router's",
                ));
            }
            let mut fib = LpmBuilder::new();
            let mut nexthops = Vec::new();
            let mut own = Vec::with_capacity(spec.interfaces.len());
            for i in &spec.interfaces {
                let slot = *slot_of
                    .get(&i.network)
                    .ok_or(RoutingError::UnknownNetwork(uid, i.network))?;
                if i.prefix_len > 32 {
                    return Err(RoutingError::Invalid(uid, "prefix length above 32"));
                }
                if own
                    .iter()
                    .any(|&x: &InterfaceIndex| routing.interfaces[x.index()].network == slot)
                {
                    return Err(RoutingError::TwoInterfacesOnNetwork(uid, i.network));
                }
                let at = u16::try_from(routing.interfaces.len())
                    .map(InterfaceIndex)
                    .map_err(|_| too_many(uid))?;
                routing.interfaces.push(Interface {
                    router: index,
                    network: slot,
                    network_uid: i.network,
                    ip: u32::from(i.ip),
                    prefix_len: i.prefix_len,
                    mtu: i.mtu,
                });
                routing.by_network[slot.index()].push(at);
                own.push(at);
                if macs
                    .insert(FdbKey::packed(slot, PackedMac::from(spec.mac)).get(), index)
                    .expect("sized for every interface")
                    .is_some()
                {
                    return Err(RoutingError::DuplicateMac(i.network, spec.mac));
                }
                fib.insert(u32::from(i.ip), i.prefix_len, nexthops.len() as u32);
                nexthops.push(NextHop {
                    interface: at,
                    gateway: 0,
                    own_address: false,
                });
            }
            for r in &spec.routes {
                let via = u32::from(r.nexthop);
                let iface = own
                    .iter()
                    .copied()
                    .find(|&x| {
                        let i = &routing.interfaces[x.index()];
                        same_prefix(i.ip, via, i.prefix_len)
                    })
                    .ok_or(RoutingError::NexthopNotConnected(uid, r.nexthop))?;
                if r.prefix_len > 32 {
                    return Err(RoutingError::Invalid(uid, "prefix length above 32"));
                }
                fib.insert(
                    u32::from(r.destination),
                    r.prefix_len,
                    nexthops.len() as u32,
                );
                nexthops.push(NextHop {
                    interface: iface,
                    gateway: via,
                    own_address: false,
                });
            }
            // Own addresses last: a /32 replaces any route to the same prefix, so no
            // static route can take a router's own address away from it.
            for &at in &own {
                let ip = routing.interfaces[at.index()].ip;
                fib.insert(ip, 32, nexthops.len() as u32);
                nexthops.push(NextHop {
                    interface: at,
                    gateway: 0,
                    own_address: true,
                });
            }
            let external = match spec.external {
                Some(i) => Some(*own.get(i).ok_or(RoutingError::Invalid(
                    uid,
                    "external gateway is no interface",
                ))?),
                None => None,
            };
            if let Some(ext) = external {
                let slot = routing.interfaces[ext.index()].network;
                for &(fixed, floating) in &spec.floating_ips {
                    let (fixed_ip, floating_ip) = (u32::from(fixed), u32::from(floating));
                    let router_key = |ip: u32| (u64::from(index.0) << 32) | u64::from(ip);
                    let duplicate = |ip| RoutingError::DuplicateFloatingIp(uid, ip);
                    let full = "more floating IPs than fit";
                    if fixed_of
                        .insert(router_key(floating_ip), fixed_ip)
                        .map_err(|_| RoutingError::Invalid(uid, full))?
                        .is_some()
                    {
                        return Err(duplicate(floating));
                    }
                    if floating_of
                        .insert(router_key(fixed_ip), floating_ip)
                        .map_err(|_| RoutingError::Invalid(uid, full))?
                        .is_some()
                    {
                        return Err(duplicate(fixed));
                    }
                    // The first mapping wins where two routers share a floating IP (on
                    // different external networks); flows of the other are then steered
                    // by its floating IP alone, which both directions still agree on
                    // only by chance: see `crate::flow_owner`.
                    if external_addresses.get(u64::from(floating_ip)).is_none() {
                        let _ = external_addresses.insert(u64::from(floating_ip), fixed_ip);
                    }
                    let owner_key = (u64::from(slot.0) << 32) | u64::from(floating_ip);
                    if floating_owner
                        .insert(owner_key, index)
                        .map_err(|_| RoutingError::Invalid(uid, full))?
                        .is_some()
                    {
                        return Err(duplicate(floating));
                    }
                }
            } else if !spec.floating_ips.is_empty() {
                return Err(RoutingError::Invalid(
                    uid,
                    "floating IPs need an external gateway",
                ));
            }
            if let (true, Some(gw)) = (spec.enable_snat, external) {
                let ip = routing.interfaces[gw.index()].ip;
                // A gateway address that is also a floating IP elsewhere: the floating IP
                // keeps it (see above).
                if external_addresses.get(u64::from(ip)).is_none() {
                    let _ = external_addresses.insert(u64::from(ip), 0);
                }
            }
            routing.routers.push(Router {
                uid,
                mac: EthernetAddress(spec.mac),
                interfaces: own,
                fib: fib.build(),
                nexthops,
                external,
                enable_snat: spec.enable_snat && external.is_some(),
                has_floating_ips: external.is_some() && !spec.floating_ips.is_empty(),
                metering: external.and_then(|_| RouterMetering::compile(&spec.metering)),
            });
        }
        routing.external = Some(external_addresses);
        routing.macs = Some(macs);
        routing.fixed_of = Some(fixed_of);
        routing.floating_of = Some(floating_of);
        routing.floating_owner = Some(floating_owner);
        Ok(routing)
    }

    /// Whether `ip` is a floating IP or a SNAT router's gateway address (see
    /// [`ExternalAddress`]).
    #[inline]
    pub fn external_address(&self, ip: u32) -> Option<ExternalAddress> {
        match self.external.as_ref()?.get(u64::from(ip))? {
            0 => Some(ExternalAddress::Snat),
            fixed => Some(ExternalAddress::Floating { fixed }),
        }
    }

    /// Whether some router keeps state that follows a flow: SNAT sessions or floating IPs.
    pub fn has_flow_state(&self) -> bool {
        self.external.as_ref().is_some_and(|m| !m.is_empty())
    }

    /// The routers, in uid order.
    pub fn routers(&self) -> &[Router] {
        &self.routers
    }

    /// Every router interface.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The router with index `index`.
    #[inline]
    pub fn router(&self, index: RouterIndex) -> Option<&Router> {
        self.routers.get(index.index())
    }

    /// The interface with index `index`.
    #[inline]
    pub fn interface(&self, index: InterfaceIndex) -> Option<&Interface> {
        self.interfaces.get(index.index())
    }

    /// The router whose MAC is `key`'s on `key`'s network.
    #[inline]
    pub fn router_by_mac(&self, key: FdbKey) -> Option<RouterIndex> {
        self.macs.as_ref()?.get(key.get())
    }

    /// The router interfaces on network `slot`.
    #[inline]
    pub fn on_network(&self, slot: NetworkSlot) -> &[InterfaceIndex] {
        self.by_network.get(slot.index()).map_or(&[], Vec::as_slice)
    }

    /// The interface of router `router` on network `slot`.
    #[inline]
    pub fn interface_on(&self, router: RouterIndex, slot: NetworkSlot) -> Option<InterfaceIndex> {
        self.on_network(slot)
            .iter()
            .copied()
            .find(|&i| self.interfaces[i.index()].router == router)
    }

    /// Whether interface `interface` sits on network `slot`.
    #[inline]
    pub fn interface_on_network(
        &self,
        interface: Option<InterfaceIndex>,
        slot: NetworkSlot,
    ) -> bool {
        interface
            .and_then(|i| self.interfaces.get(i.index()))
            .is_some_and(|i| i.network == slot)
    }

    /// Whether `ip` lies in the connected subnet of some router interface on network
    /// `slot`: a neighbour the routers may learn there.
    #[inline]
    pub fn on_connected_subnet(&self, slot: NetworkSlot, ip: u32) -> bool {
        self.on_network(slot).iter().any(|&i| {
            let iface = &self.interfaces[i.index()];
            same_prefix(iface.ip, ip, iface.prefix_len)
        })
    }

    /// The interface on network `slot` that owns address `ip` (host byte order).
    #[inline]
    pub fn owner_of(&self, slot: NetworkSlot, ip: u32) -> Option<InterfaceIndex> {
        self.on_network(slot)
            .iter()
            .copied()
            .find(|&i| self.interfaces[i.index()].ip == ip)
    }

    /// The router that answers ARP for floating IP `ip` on network `slot`.
    #[inline]
    pub fn floating_owner(&self, slot: NetworkSlot, ip: u32) -> Option<RouterIndex> {
        self.floating_owner
            .as_ref()?
            .get((u64::from(slot.0) << 32) | u64::from(ip))
    }

    /// The fixed IP floating IP `ip` of router `router` maps to.
    #[inline]
    pub fn fixed_of(&self, router: RouterIndex, ip: u32) -> Option<u32> {
        self.fixed_of
            .as_ref()?
            .get((u64::from(router.0) << 32) | u64::from(ip))
    }

    /// The floating IP of fixed IP `ip` behind router `router`.
    #[inline]
    pub fn floating_of(&self, router: RouterIndex, ip: u32) -> Option<u32> {
        self.floating_of
            .as_ref()?
            .get((u64::from(router.0) << 32) | u64::from(ip))
    }
}

/// Whether `a` and `b` share their first `len` bits.
fn same_prefix(a: u32, b: u32, len: u8) -> bool {
    let mask = crate::lpm::prefix_mask(len);
    a & mask == b & mask
}
