//! Through one router: the generator (198.18.0.1 on 198.18.0.0/24) sends 64-byte UDP to
//! the router's MAC, and the router forwards it to the sink on another subnet (`routed`:
//! 198.18.1.2 on 198.18.1.0/24), or to the external network's gateway with the source
//! translated to the router's gateway address (`snat`: to 198.19.0.2, beyond the gateway
//! 203.0.113.1 that the sink plays, from 203.0.113.10). The sink answers the routers' ARP
//! for its address (the next hop) and checks the source of every frame.
//!
//! - polluxd: a router with an interface on each subnet, or one interface and an external
//!   gateway with `enable_snat`, the router's MAC set (`mac_address`).
//! - The kernel (`linux-router`): what Neutron's L3 agent builds in a `qrouter`
//!   namespace: `ip_forward`, the router's addresses on its two interfaces (the ingress
//!   one with the router's MAC), for SNAT the default route via the external gateway and
//!   `iptables -t nat -A POSTROUTING -o <gateway interface> -j SNAT --to-source`, which
//!   turns conntrack on.
//! - OVN: a logical router with a port on each of two logical switches; for SNAT the
//!   external one is a distributed gateway port scheduled on the one chassis (as
//!   Neutron's OVN driver makes router gateways), with a default route and an `snat`
//!   rule for 198.18.0.0/24. The generator's and the sink's logical ports carry their
//!   addresses, so the router knows the sink's MAC without asking.
//!
//! In `snat` the router also has a floating IP (203.0.113.20 for 198.18.0.20, a VM the
//! flow never reaches: a `mem` port for polluxd; for the kernel its address on the
//! gateway veth, DNAT and its SNAT before the router's; for OVN a `dnat_and_snat` rule),
//! so every device has it in its NAT rules as a Neutron router with floating IPs does.
//!
//! Switches, the bare AF_XDP forwarder and the XDP redirect do not route.

use pollux_control::validate::fmt_mac;

use super::{cmds, Ports, Scenario};
use crate::compare::frame::{self, SRC_IP};
use crate::compare::topology::{GEN_MAC, SINK_MAC};
use crate::compare::traffic::{dotted, Flow};

/// The router's MAC on its interface towards the generator (every device's router
/// answers to it: polluxd's `mac_address`, the kernel's ingress veth, OVN's port).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x01];
/// OVN's router port towards the sink (polluxd's router has one MAC on all networks).
const ROUTER_MAC_OUT: [u8; 6] = [0x02, 0, 0, 0, 0xfe, 0x02];
/// The generator's subnet and the router's address on it.
const INSIDE: &str = "198.18.0.0/24";
const INSIDE_GW: [u8; 4] = [198, 18, 0, 254];
/// `routed`: the sink's subnet, the router's address and the sink's.
const OUTSIDE: &str = "198.18.1.0/24";
const OUTSIDE_GW: [u8; 4] = [198, 18, 1, 254];
const SINK_IP: [u8; 4] = [198, 18, 1, 2];
/// `snat`: the external subnet, its gateway (the sink), the router's gateway address
/// (what sources become) and a destination beyond the gateway.
const EXTERNAL: &str = "203.0.113.0/24";
const EXTERNAL_GW: [u8; 4] = [203, 0, 113, 1];
const ROUTER_EXT_IP: [u8; 4] = [203, 0, 113, 10];
const BEYOND: [u8; 4] = [198, 19, 0, 2];
/// `snat`: a floating IP of another VM behind the router, as a Neutron router with a
/// floating IP carries: the generator's flow does not use it, every device has it in
/// its NAT rules.
const FIP_VM_IP: [u8; 4] = [198, 18, 0, 20];
const FIP_VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x20];
const FIP: [u8; 4] = [203, 0, 113, 20];

/// One router between the generator's subnet and the sink's, with or without SNAT.
#[derive(Clone, Copy, Debug)]
pub struct Routed {
    /// The sink is beyond the external gateway and sources are translated.
    pub snat: bool,
}

fn prefix_len(cidr: &str) -> &str {
    cidr.rsplit('/').next().unwrap_or("24")
}

impl Routed {
    /// `routed`: between two tenant subnets.
    pub fn plain() -> Routed {
        Routed { snat: false }
    }

    /// `snat`: out through the external gateway with SNAT.
    pub fn snat() -> Routed {
        Routed { snat: true }
    }

    /// The sink's subnet, the router's address on it, and where the router sends.
    fn outside(&self) -> (&'static str, [u8; 4], [u8; 4]) {
        if self.snat {
            (EXTERNAL, ROUTER_EXT_IP, EXTERNAL_GW)
        } else {
            (OUTSIDE, OUTSIDE_GW, SINK_IP)
        }
    }
}

impl Scenario for Routed {
    fn name(&self) -> &'static str {
        if self.snat {
            "snat"
        } else {
            "routed"
        }
    }

    fn describe(&self) -> &'static str {
        if self.snat {
            "through a router's external gateway with SNAT (198.18.0.1 -> 198.19.0.2 via \
             203.0.113.1, source becomes 203.0.113.10)"
        } else {
            "through a router between two subnets (198.18.0.1 -> 198.18.1.2)"
        }
    }

    fn egress_vlan(&self) -> Option<u16> {
        None
    }

    fn prime_frame(&self) -> Vec<u8> {
        // Nothing to learn: a frame to the generator's MAC from the sink's side that no
        // router forwards (it is not addressed to one).
        frame::tagged_prime(GEN_MAC, SINK_MAC, None)
    }

    fn flow(&self) -> Flow {
        let (_, _, next_hop) = self.outside();
        Flow {
            dst_mac: ROUTER_MAC,
            src_ip: SRC_IP,
            dst_ip: if self.snat { BEYOND } else { SINK_IP },
            expect_src_ip: if self.snat { ROUTER_EXT_IP } else { SRC_IP },
            sink_addrs: vec![next_hop],
        }
    }

    fn check_before_search(&self) -> bool {
        true
    }

    fn pollux_config(&self, p: Ports<'_>) -> Option<String> {
        let (out_cidr, out_gw, _) = self.outside();
        let (out_net, gateway_of_subnet) = if self.snat {
            ("ext", dotted(EXTERNAL_GW))
        } else {
            ("outside", dotted(out_gw))
        };
        let router = if self.snat {
            // The floating IP's VM is a `mem` port: never sent to, its ring polled empty.
            format!(
                "interfaces = [\"inside-v4\"]\nexternal_gateway_info = {{ network_id = \"ext\", \
                 external_fixed_ip = \"{}\", enable_snat = true }}\n\n\
                 [[ports]]\nid = \"vm-fip\"\nnetwork_id = \"inside\"\nmac_address = \"{}\"\n\
                 fixed_ips = [{{ subnet_id = \"inside-v4\", ip_address = \"{}\" }}]\n\
                 port_security_enabled = false\nbinding = {{ driver = \"mem\" }}\n\n\
                 [[floating_ips]]\nid = \"fip\"\nfloating_ip_address = \"{}\"\nport_id = \"vm-fip\"",
                dotted(ROUTER_EXT_IP),
                fmt_mac(FIP_VM_MAC),
                dotted(FIP_VM_IP),
                dotted(FIP),
            )
        } else {
            "interfaces = [\"inside-v4\", \"outside-v4\"]".to_string()
        };
        Some(format!(
            r#"[[networks]]
id = "inside"
network_type = "local"

[[networks]]
id = "{out_net}"
network_type = "local"

[[subnets]]
id = "inside-v4"
network_id = "inside"
cidr = "{INSIDE}"
gateway_ip = "{inside_gw}"
enable_dhcp = false

[[subnets]]
id = "{out_net}-v4"
network_id = "{out_net}"
cidr = "{out_cidr}"
gateway_ip = "{gateway_of_subnet}"
enable_dhcp = false

[[ports]]
id = "gen"
network_id = "inside"
mac_address = "{gen}"
port_security_enabled = false
binding = {{ driver = "afxdp", interface = "{ingress}" }}

[[ports]]
id = "sink"
network_id = "{out_net}"
mac_address = "{sink}"
port_security_enabled = false
binding = {{ driver = "afxdp", interface = "{egress}" }}

[[routers]]
id = "r1"
mac_address = "{router_mac}"
{router}
"#,
            inside_gw = dotted(INSIDE_GW),
            gen = fmt_mac(GEN_MAC),
            sink = fmt_mac(SINK_MAC),
            router_mac = fmt_mac(ROUTER_MAC),
            ingress = p.ingress,
            egress = p.egress,
        ))
    }

    fn ovs_commands(&self, _p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        // Open vSwitch routes and translates only with flows a controller programs: that
        // is the `ovn` device.
        None
    }

    fn linux_commands(&self, _p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        // A bridge does not route: that is the `linux-router` device.
        None
    }

    fn linux_router_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        let (out_cidr, out_addr, next_hop) = self.outside();
        let inside = format!("{}/{}", dotted(INSIDE_GW), prefix_len(INSIDE));
        let outside = format!("{}/{}", dotted(out_addr), prefix_len(out_cidr));
        let router_mac = fmt_mac(ROUTER_MAC);
        let mut c = cmds(&[
            &["ip", "link", "set", p.ingress, "address", &router_mac],
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            &["ip", "addr", "add", &inside, "dev", p.ingress],
            &["ip", "addr", "add", &outside, "dev", p.egress],
        ]);
        if self.snat {
            let gw = dotted(next_hop);
            let to = dotted(ROUTER_EXT_IP);
            let (fip, fip32, vm, vm32) = (
                dotted(FIP),
                format!("{}/32", dotted(FIP)),
                dotted(FIP_VM_IP),
                format!("{}/32", dotted(FIP_VM_IP)),
            );
            // The floating IP as the L3 agent sets it: its address on the gateway device,
            // DNAT in, and its SNAT before the router's (the agent's float-snat chain
            // comes before its snat chain).
            c.extend(cmds(&[
                &["ip", "route", "add", "default", "via", &gw, "dev", p.egress],
                &["ip", "addr", "add", &fip32, "dev", p.egress],
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    &fip32,
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &vm,
                ],
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-s",
                    &vm32,
                    "-j",
                    "SNAT",
                    "--to-source",
                    &fip,
                ],
                &[
                    "iptables",
                    "-t",
                    "nat",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    p.egress,
                    "-j",
                    "SNAT",
                    "--to-source",
                    &to,
                ],
            ]));
        }
        Some(c)
    }

    fn linux_router_cleanup(&self, p: Ports<'_>) -> Vec<Vec<String>> {
        // The namespace is the DUT's for the other devices too: no address, route, rule
        // or forwarding left behind.
        cmds(&[
            &["iptables", "-t", "nat", "-F"],
            &["ip", "route", "flush", "default"],
            &["ip", "addr", "flush", "dev", p.ingress],
            &["ip", "addr", "flush", "dev", p.egress],
            &["ip", "neigh", "flush", "all"],
            &["sysctl", "-qw", "net.ipv4.ip_forward=0"],
        ])
    }

    fn ovn_nb_commands(&self, chassis: &str) -> Option<Vec<Vec<String>>> {
        let (out_cidr, out_addr, next_hop) = self.outside();
        let out_switch = if self.snat { "ext" } else { "outside" };
        let lrp_in = format!("{}/{}", dotted(INSIDE_GW), prefix_len(INSIDE));
        let lrp_out = format!("{}/{}", dotted(out_addr), prefix_len(out_cidr));
        let (mac_in, mac_out) = (fmt_mac(ROUTER_MAC), fmt_mac(ROUTER_MAC_OUT));
        // The sink's logical port carries the address the router sends to.
        let sink_addrs = format!("{} {}", fmt_mac(SINK_MAC), dotted(next_hop));
        let gen_addrs = format!("{} {}", fmt_mac(GEN_MAC), dotted(SRC_IP));
        let mut c = cmds(&[
            &["ls-add", "inside"],
            &["ls-add", out_switch],
            &["lr-add", "r1"],
            &["lrp-add", "r1", "r1-inside", &mac_in, &lrp_in],
            &["lrp-add", "r1", "r1-out", &mac_out, &lrp_out],
        ]);
        for (switch, lsp, lrp) in [
            ("inside", "inside-r1", "r1-inside"),
            (out_switch, "out-r1", "r1-out"),
        ] {
            let opt = format!("router-port={lrp}");
            c.extend(cmds(&[
                &["lsp-add", switch, lsp],
                &["lsp-set-type", lsp, "router"],
                &["lsp-set-addresses", lsp, "router"],
                &["lsp-set-options", lsp, &opt],
            ]));
        }
        c.extend(cmds(&[
            &["lsp-add", "inside", "gen"],
            &["lsp-set-addresses", "gen", &gen_addrs],
            &["lsp-add", out_switch, "sink"],
            &["lsp-set-addresses", "sink", &sink_addrs],
        ]));
        if self.snat {
            let gw = dotted(next_hop);
            let ext_ip = dotted(ROUTER_EXT_IP);
            c.extend(cmds(&[
                &["lrp-set-gateway-chassis", "r1-out", chassis, "1"],
                &["lr-route-add", "r1", "0.0.0.0/0", &gw],
                &["lr-nat-add", "r1", "snat", &ext_ip, INSIDE],
                &[
                    "lr-nat-add",
                    "r1",
                    "dnat_and_snat",
                    &dotted(FIP),
                    &dotted(FIP_VM_IP),
                ],
            ]));
        }
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Ports<'static> = Ports {
        ingress: "pbn1t0g",
        egress: "pbn1t0k",
    };

    fn joined(c: &[Vec<String>]) -> Vec<String> {
        c.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn polluxd_gets_one_router_with_the_benchmark_mac() {
        for (sc, interfaces, snat) in [(Routed::plain(), 2, false), (Routed::snat(), 1, true)] {
            let text = sc.pollux_config(PORTS).unwrap();
            let state = pollux_control::model::DesiredState::from_toml_str(&text).unwrap();
            if let Err(errors) = pollux_control::validate::validate(&state) {
                panic!("{}: {errors:?}", sc.name());
            }
            assert_eq!(state.routers.len(), 1);
            let r = &state.routers[0];
            assert_eq!(r.interfaces.len(), interfaces, "{}", sc.name());
            assert!(text.contains("mac_address = \"02:00:00:00:fe:01\""));
            assert_eq!(
                text.contains("enable_snat = true"),
                snat,
                "{}:\n{text}",
                sc.name()
            );
            if snat {
                assert!(text.contains("external_fixed_ip = \"203.0.113.10\""));
                assert!(text.contains("gateway_ip = \"203.0.113.1\""));
                assert_eq!(state.floating_ips.len(), 1);
                assert_eq!(state.ports.len(), 3);
            } else {
                assert!(state.floating_ips.is_empty());
            }
        }
    }

    #[test]
    fn the_kernel_is_a_qrouter_namespace() {
        let plain = joined(&Routed::plain().linux_router_commands(PORTS).unwrap());
        for want in [
            "ip link set pbn1t0g address 02:00:00:00:fe:01",
            "sysctl -qw net.ipv4.ip_forward=1",
            "ip addr add 198.18.0.254/24 dev pbn1t0g",
            "ip addr add 198.18.1.254/24 dev pbn1t0k",
        ] {
            assert!(
                plain.iter().any(|c| c == want),
                "missing `{want}`: {plain:?}"
            );
        }
        assert!(!plain.iter().any(|c| c.starts_with("iptables")));
        let snat = joined(&Routed::snat().linux_router_commands(PORTS).unwrap());
        for want in [
            "ip addr add 203.0.113.10/24 dev pbn1t0k",
            "ip route add default via 203.0.113.1 dev pbn1t0k",
            "iptables -t nat -A POSTROUTING -o pbn1t0k -j SNAT --to-source 203.0.113.10",
            "ip addr add 203.0.113.20/32 dev pbn1t0k",
            "iptables -t nat -A PREROUTING -d 203.0.113.20/32 -j DNAT --to-destination 198.18.0.20",
        ] {
            assert!(snat.iter().any(|c| c == want), "missing `{want}`: {snat:?}");
        }
        // The floating IP's SNAT comes before the router's, which would take its flows.
        let pos = |want: &str| snat.iter().position(|c| c.contains(want)).unwrap();
        assert!(
            pos("-s 198.18.0.20/32 -j SNAT --to-source 203.0.113.20")
                < pos("--to-source 203.0.113.10")
        );
        let cleanup = joined(&Routed::snat().linux_router_cleanup(PORTS));
        assert!(cleanup.contains(&"iptables -t nat -F".to_string()));
        assert!(cleanup.contains(&"sysctl -qw net.ipv4.ip_forward=0".to_string()));
    }

    #[test]
    fn ovn_gets_a_logical_router_between_two_switches() {
        let plain = joined(&Routed::plain().ovn_nb_commands("ch1").unwrap());
        for want in [
            "lrp-add r1 r1-inside 02:00:00:00:fe:01 198.18.0.254/24",
            "lrp-add r1 r1-out 02:00:00:00:fe:02 198.18.1.254/24",
            "lsp-set-options inside-r1 router-port=r1-inside",
            "lsp-set-addresses gen 02:00:00:00:01:01 198.18.0.1",
            "lsp-set-addresses sink 02:00:00:00:02:02 198.18.1.2",
        ] {
            assert!(
                plain.iter().any(|c| c == want),
                "missing `{want}`: {plain:?}"
            );
        }
        assert!(!plain.iter().any(|c| c.starts_with("lr-nat-add")));
        let snat = joined(&Routed::snat().ovn_nb_commands("ch1").unwrap());
        for want in [
            "lrp-add r1 r1-out 02:00:00:00:fe:02 203.0.113.10/24",
            "lrp-set-gateway-chassis r1-out ch1 1",
            "lr-route-add r1 0.0.0.0/0 203.0.113.1",
            "lr-nat-add r1 snat 203.0.113.10 198.18.0.0/24",
            "lr-nat-add r1 dnat_and_snat 203.0.113.20 198.18.0.20",
            "lsp-set-addresses sink 02:00:00:00:02:02 203.0.113.1",
        ] {
            assert!(snat.iter().any(|c| c == want), "missing `{want}`: {snat:?}");
        }
    }

    #[test]
    fn the_sink_checks_the_translated_source_and_answers_for_the_next_hop() {
        let f = Routed::snat().flow();
        assert_eq!(f.dst_mac, ROUTER_MAC);
        assert_eq!((f.src_ip, f.dst_ip), ([198, 18, 0, 1], [198, 19, 0, 2]));
        assert_eq!(f.expect_src_ip, [203, 0, 113, 10]);
        assert_eq!(f.sink_addrs, vec![[203, 0, 113, 1]]);
        let f = Routed::plain().flow();
        assert_eq!(
            (f.dst_ip, f.expect_src_ip),
            ([198, 18, 1, 2], [198, 18, 0, 1])
        );
        assert_eq!(f.sink_addrs, vec![[198, 18, 1, 2]]);
        // No switch or ceiling pretends to route.
        for sc in [Routed::plain(), Routed::snat()] {
            assert!(sc.ovs_commands(PORTS).is_none());
            assert!(sc.linux_commands(PORTS).is_none());
            assert!(sc.xsk_fwd_args().is_none());
            assert!(sc.xdp_program(1).is_none());
        }
    }
}
