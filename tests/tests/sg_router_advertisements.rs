//! Router advertisements to VM ports with security groups, through the whole worker on
//! `mem` ports: as Neutron's provider rule has it, an RA passes in only from the network's
//! routers (the link-local gateway of each of its IPv6 subnets); one from any other source
//! (a rogue router behind a port with port security off, an uplink) passes only when a
//! rule of the port's groups allows it, else it is `sg_ra_not_from_router`. A network
//! whose IPv6 subnet has a global gateway accepts no RA without a rule, as in Neutron.
//! Addresses: 2001:db8::/32 and fe80::/10 only.

use pollux_dataplane::drop::DropReason;
use pollux_dataplane::pipeline::Stage;
use pollux_dataplane::wire::ipv6::link_local_from_mac;
use pollux_dataplane::worker::WorkerConfig;
use pollux_tests::frames::{icmpv6, ipv6_frame};
use pollux_tests::port_lab::{NamedVm, PortLab};

#[derive(Clone, Copy, Debug)]
struct Vm {
    name: &'static str,
    mac: [u8; 6],
}

impl NamedVm for Vm {
    fn name(&self) -> &'static str {
        self.name
    }
}

const fn vm(name: &'static str, last: u8) -> Vm {
    Vm {
        name,
        mac: [0xfa, 0x16, 0x3e, 0, 0, last],
    }
}

/// The network's router (a physical router on the segment, port security off), at the
/// subnet's link-local gateway fe80::1.
const GW: Vm = vm("gw", 0xfe);
/// Another host with port security off, sending RAs from its own link-local address.
const ROGUE: Vm = vm("rogue", 0xfd);
/// A VM whose groups have no ICMPv6 rule.
const QUIET: Vm = vm("quiet", 1);
/// A VM whose groups allow any ICMPv6 in: it takes RAs from anyone, as in Neutron.
const OPEN: Vm = vm("open", 2);
/// On the other network, whose IPv6 subnet's gateway is global.
const GW2: Vm = vm("gw2", 0xfc);
const QUIET2: Vm = vm("quiet2", 3);

const ROUTER_LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

const STATE: &str = r#"
[[networks]]
id = "net"
network_type = "local"

[[networks]]
id = "net2"
network_type = "local"

[[subnets]]
id = "sub6"
network_id = "net"
ip_version = 6
cidr = "2001:db8:1::/64"
gateway_ip = "fe80::1"
enable_dhcp = false

[[subnets]]
id = "sub6-global-gw"
network_id = "net2"
ip_version = 6
cidr = "2001:db8:2::/64"
gateway_ip = "2001:db8:2::1"
enable_dhcp = false

[[security_groups]]
id = "quiet"
rules = [{ direction = "egress", ethertype = "IPv6" }]

[[security_groups]]
id = "icmp"
rules = [{ direction = "ingress", ethertype = "IPv6", protocol = "ipv6-icmp" }]

[[ports]]
id = "gw"
network_id = "net"
mac_address = "fa:16:3e:00:00:fe"
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "rogue"
network_id = "net"
mac_address = "fa:16:3e:00:00:fd"
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "quiet"
network_id = "net"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "sub6", ip_address = "2001:db8:1::11" }]
security_groups = ["quiet"]
binding = { driver = "mem" }

[[ports]]
id = "open"
network_id = "net"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub6", ip_address = "2001:db8:1::12" }]
security_groups = ["icmp"]
binding = { driver = "mem" }

[[ports]]
id = "gw2"
network_id = "net2"
mac_address = "fa:16:3e:00:00:fc"
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "quiet2"
network_id = "net2"
mac_address = "fa:16:3e:00:00:03"
fixed_ips = [{ subnet_id = "sub6-global-gw", ip_address = "2001:db8:2::11" }]
security_groups = ["quiet"]
binding = { driver = "mem" }
"#;

fn lab() -> PortLab {
    PortLab::new(
        STATE,
        &[GW, ROGUE, QUIET, OPEN, GW2, QUIET2].map(|v| v.name),
        WorkerConfig::default(),
    )
}

/// A router advertisement (default router for 1800 s) from `src_ip` behind `from`'s MAC,
/// to `dst_mac`/`dst_ip`.
fn ra(from: &Vm, src_ip: [u8; 16], dst_mac: [u8; 6], dst_ip: [u8; 16]) -> Vec<u8> {
    let body = [64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    let m = icmpv6(src_ip, dst_ip, 134, 0, &body);
    ipv6_frame(dst_mac, from.mac, src_ip, dst_ip, 58, &m)
}

/// A unicast RA to `to`'s link-local address.
fn ra_to(from: &Vm, src_ip: [u8; 16], to: &Vm) -> Vec<u8> {
    ra(from, src_ip, to.mac, link_local_from_mac(to.mac).octets())
}

fn names(got: &[(&'static str, Vec<u8>)]) -> Vec<&'static str> {
    let mut n: Vec<_> = got.iter().map(|(name, _)| *name).collect();
    n.sort_unstable();
    n
}

#[test]
fn router_advertisements_pass_only_from_the_networks_router_unless_a_rule_allows_them() {
    let mut lab = lab();
    let rogue_ll = link_local_from_mac(ROGUE.mac).octets();
    // From the subnet's link-local gateway: passes without a rule.
    lab.passes(&GW, &QUIET, &ra_to(&GW, ROUTER_LL, &QUIET));
    // From another link-local source: no rule of `quiet` allows it.
    lab.refused(
        &ROGUE,
        &ra_to(&ROGUE, rogue_ll, &QUIET),
        Stage::SgIngress,
        DropReason::SgRaNotFromRouter,
    );
    // A rogue claiming the router's address from its own MAC is not told apart at layer
    // 3 (Neutron's rule matches the source address only): it is the port security of the
    // sender that stops this, and the rogue has none. What the groups decide is the
    // source address.
    lab.passes(&ROGUE, &QUIET, &ra_to(&ROGUE, ROUTER_LL, &QUIET));
    // `open` allows every ICMPv6 type in: the rogue's RA passes by that rule.
    lab.passes(&ROGUE, &OPEN, &ra_to(&ROGUE, rogue_ll, &OPEN));

    // Flooded to all nodes: every copy is decided for its own port.
    let got = lab.send(&GW, &ra(&GW, ROUTER_LL, ALL_NODES_MAC, ALL_NODES));
    assert_eq!(names(&got), ["open", "quiet", "rogue"], "from the router");
    let got = lab.send(&ROGUE, &ra(&ROGUE, rogue_ll, ALL_NODES_MAC, ALL_NODES));
    assert_eq!(names(&got), ["gw", "open"], "from the rogue: not to quiet");
    let dropped: u64 = [Stage::SgIngress, Stage::Output]
        .iter()
        .map(|&s| {
            lab.sw
                .counters()
                .stage_dropped(s, DropReason::SgRaNotFromRouter)
        })
        .sum();
    assert_eq!(dropped, 2, "the unicast and the flooded copy to quiet");
}

#[test]
fn a_subnet_with_a_global_gateway_names_no_router_for_advertisements() {
    let mut lab = lab();
    let gw2_ll = link_local_from_mac(GW2.mac).octets();
    lab.refused(
        &GW2,
        &ra_to(&GW2, gw2_ll, &QUIET2),
        Stage::SgIngress,
        DropReason::SgRaNotFromRouter,
    );
    // The global gateway address itself is no RA source either (RAs come from
    // link-local addresses; Neutron skips a global gateway without ipv6_ra_mode).
    let global_gw = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    lab.refused(
        &GW2,
        &ra_to(&GW2, global_gw, &QUIET2),
        Stage::SgIngress,
        DropReason::SgRaNotFromRouter,
    );
    // Neighbour discovery still needs no rule.
    let ll = link_local_from_mac(QUIET2.mac).octets();
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&ll);
    let ns = ipv6_frame(
        QUIET2.mac,
        GW2.mac,
        gw2_ll,
        ll,
        58,
        &icmpv6(gw2_ll, ll, 135, 0, &body),
    );
    lab.passes(&GW2, &QUIET2, &ns);
}
