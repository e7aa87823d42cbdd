//! Port to port through security groups: the generator's UDP flow leaves through its
//! port's egress rule and enters the sink's port after `filler_rules` ingress rules that
//! do not match it, the same groups for every device, each port with port security.
//!
//! - polluxd: the groups as its desired state (a connection tracked in each port's zone).
//! - The kernel: as Neutron's hybrid iptables driver writes them (the matrix's
//!   translator, `pollux_tests::neutron_iptables`: per-port chains, `-m state`, a
//!   conntrack zone per port), on one bridge between the two interfaces with
//!   `bridge-nf-call-iptables`.
//! - Open vSwitch (userspace datapath, afxdp ports): the pipeline Neutron's openvswitch
//!   firewall driver programs ([`SecurityGroups::ovs_flows`]): the port and its zone in
//!   registers 5 and 6, anti-spoofing and `ct(table=..,zone=reg6)` in the egress base
//!   table (71), the egress rules matching `ct_state` (72), `ct(commit)` of new
//!   connections (73), the destination port chosen by MAC (60), then the same in the
//!   destination's zone for ingress (81, 82): two conntrack passes per packet, as in
//!   Neutron.
//!
//! The benchmark's flow never sees a reply: the kernel's conntrack and OVS's keep it
//! `+new` (`NEW`), so every frame walks the rules, which is what the rule count measures;
//! Pollux tracks it as a connection after its first packet (its established path). No
//! XDP ceiling or bare AF_XDP forwarder filters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pollux_control::validate::fmt_mac;
use pollux_tests::neutron_iptables::SgState;

use super::{cmds, Ports, Scenario};
use crate::compare::frame::{DST_IP, SRC_IP, UDP_PORT};
use crate::compare::topology::{GEN_MAC, SINK_MAC};

/// The generator's flow through its egress group and the sink's ingress group.
#[derive(Clone, Copy, Debug)]
pub struct SecurityGroups {
    /// Ingress rules of the sink's group that come before the one allowing the flow.
    pub filler_rules: u16,
}

fn ip(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

impl SecurityGroups {
    /// The desired state, with `ingress`/`egress` as the ports' interfaces.
    fn state(&self, p: Ports<'_>) -> String {
        let mut s = format!(
            r#"[[networks]]
id = "bench"
network_type = "local"

[[subnets]]
id = "bench-v4"
network_id = "bench"
cidr = "198.18.0.0/24"
enable_dhcp = false

[[security_groups]]
id = "bench-client"

[[security_groups.rules]]
direction = "egress"
protocol = "udp"
port_range_min = {port}
port_range_max = {port}
remote_ip_prefix = "{sink_ip}/32"

[[security_groups]]
id = "bench-server"

[[security_groups.rules]]
direction = "egress"
"#,
            port = UDP_PORT,
            sink_ip = ip(DST_IP),
        );
        for n in 0..self.filler_rules {
            // TCP ports the flow never uses, each its own rule as a tenant writes them.
            write!(
                s,
                "\n[[security_groups.rules]]\ndirection = \"ingress\"\nprotocol = \"tcp\"\n\
                 port_range_min = {p}\nport_range_max = {p}\n",
                p = 10000 + u32::from(n)
            )
            .unwrap();
        }
        write!(
            s,
            r#"
[[security_groups.rules]]
direction = "ingress"
protocol = "udp"
port_range_min = {port}
port_range_max = {port}
remote_ip_prefix = "{gen_ip}/32"

[[ports]]
id = "gen"
network_id = "bench"
mac_address = "{gen}"
fixed_ips = [{{ subnet_id = "bench-v4", ip_address = "{gen_ip}" }}]
security_groups = ["bench-client"]
binding = {{ driver = "afxdp", interface = "{ingress}" }}

[[ports]]
id = "sink"
network_id = "bench"
mac_address = "{sink}"
fixed_ips = [{{ subnet_id = "bench-v4", ip_address = "{sink_ip}" }}]
security_groups = ["bench-server"]
binding = {{ driver = "afxdp", interface = "{egress}" }}
"#,
            port = UDP_PORT,
            gen_ip = ip(SRC_IP),
            sink_ip = ip(DST_IP),
            gen = fmt_mac(GEN_MAC),
            sink = fmt_mac(SINK_MAC),
            ingress = p.ingress,
            egress = p.egress,
        )
        .unwrap();
        s
    }
}

impl SecurityGroups {
    /// The openvswitch firewall driver's pipeline for the two ports: `gen` (port 1, zone
    /// 1, egress: the one UDP rule) and `sink` (port 2, zone 2, egress anything; ingress:
    /// the filler rules, then the one allowing the flow). Table numbers and flow shapes
    /// are the driver's (`openvswitch_firewall/firewall.py`, `constants.py`).
    fn openflow(&self, p: Ports<'_>) -> Vec<String> {
        let (gen_mac, sink_mac) = (fmt_mac(GEN_MAC), fmt_mac(SINK_MAC));
        let (gen_ip, sink_ip) = (ip(SRC_IP), ip(DST_IP));
        let zone = "NXM_NX_REG6[0..15]";
        let commit = format!("ct(commit,zone={zone})");
        let mut f = Vec::new();
        // (reg5 value, interface, MAC, address)
        let ports = [
            (1, p.ingress, &gen_mac, &gen_ip),
            (2, p.egress, &sink_mac, &sink_ip),
        ];
        for &(n, ifname, mac, addr) in &ports {
            // Table 0: the port and its conntrack zone into registers 5 and 6.
            f.push(format!(
                "table=0,priority=100,in_port={ifname},\
                 actions=load:{n}->NXM_NX_REG5[],load:{n}->NXM_NX_REG6[],resubmit(,71)"
            ));
            // 71: ARP and IP only from the port's own MAC and address, IP into conntrack.
            f.push(format!(
                "table=71,priority=95,arp,reg5={n},in_port={ifname},dl_src={mac},arp_spa={addr},\
                 actions=resubmit(,94)"
            ));
            f.push(format!(
                "table=71,priority=65,ip,reg5={n},in_port={ifname},dl_src={mac},nw_src={addr},\
                 actions=ct(table=72,zone={zone})"
            ));
            f.push(format!(
                "table=71,priority=10,reg5={n},in_port={ifname},actions=drop"
            ));
            // 72: established and related pass, invalid drops, then the egress rules.
            f.push(format!(
                "table=72,priority=77,ct_state=+est-rel-rpl,ip,reg5={n},actions=resubmit(,73)"
            ));
            f.push(format!(
                "table=72,priority=77,ct_state=+trk+inv,ip,reg5={n},actions=drop"
            ));
            // 73: a new connection is committed in the port's zone; then the destination.
            f.push(format!(
                "table=73,priority=90,ct_state=+new-est,ip,reg5={n},actions={commit},resubmit(,60)"
            ));
            f.push(format!(
                "table=73,priority=80,reg5={n},actions=resubmit(,60)"
            ));
            // 60: a frame to the port's MAC enters its ingress pipeline, in its zone.
            f.push(format!(
                "table=60,priority=90,dl_dst={mac},\
                 actions=load:{n}->NXM_NX_REG5[],load:{n}->NXM_NX_REG6[],resubmit(,81)"
            ));
            // 81: ARP straight out, IP into conntrack in the destination's zone.
            f.push(format!(
                "table=81,priority=95,arp,reg5={n},actions=output:{ifname}"
            ));
            f.push(format!(
                "table=81,priority=90,ip,reg5={n},actions=ct(table=82,zone={zone})"
            ));
            f.push(format!(
                "table=82,priority=77,ct_state=+est-rel-rpl,ip,reg5={n},actions=output:{ifname}"
            ));
            f.push(format!(
                "table=82,priority=77,ct_state=+trk+inv,ip,reg5={n},actions=drop"
            ));
        }
        // Egress rules: gen's UDP to the sink, the sink's anything.
        f.push(format!(
            "table=72,priority=70,ct_state=+new-est,udp,reg5=1,nw_dst={sink_ip},tp_dst={UDP_PORT},\
             actions=resubmit(,73)"
        ));
        f.push("table=72,priority=70,ct_state=+new-est,ip,reg5=2,actions=resubmit(,73)".into());
        // Ingress rules of the sink: the fillers, then the one for the flow.
        for n in 0..self.filler_rules {
            f.push(format!(
                "table=82,priority=70,ct_state=+new-est,tcp,reg5=2,tp_dst={},\
                 actions={commit},output:{}",
                10000 + u32::from(n),
                p.egress
            ));
        }
        f.push(format!(
            "table=82,priority=70,ct_state=+new-est,udp,reg5=2,nw_src={gen_ip},tp_dst={UDP_PORT},\
             actions={commit},output:{}",
            p.egress
        ));
        // 94: accepted ARP is switched by MAC (the driver's NORMAL).
        f.push("table=94,priority=10,actions=resubmit(,60)".into());
        // Whatever no rule allowed.
        for t in [0, 60, 72, 73, 81, 82] {
            f.push(format!("table={t},priority=0,actions=drop"));
        }
        f
    }
}

impl Scenario for SecurityGroups {
    fn name(&self) -> &'static str {
        "sg-udp"
    }

    fn describe(&self) -> &'static str {
        "port to port through security groups (egress rule, ingress rule after filler rules)"
    }

    fn egress_vlan(&self) -> Option<u16> {
        None
    }

    fn prime_frame(&self) -> Vec<u8> {
        crate::compare::frame::tagged_prime(GEN_MAC, SINK_MAC, None)
    }

    fn pollux_config(&self, p: Ports<'_>) -> Option<String> {
        Some(self.state(p))
    }

    fn ovs_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        super::p2p::PortToPort.ovs_commands(p)
    }

    fn ovs_flows(&self, p: Ports<'_>) -> Option<Vec<String>> {
        Some(self.openflow(p))
    }

    fn linux_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        let devices = BTreeMap::from([
            ("gen".to_owned(), p.ingress.to_owned()),
            ("sink".to_owned(), p.egress.to_owned()),
        ]);
        let fw = SgState::from_toml(&self.state(p))
            .and_then(|s| s.to_hybrid_firewall_on(&devices))
            .ok()?;
        let mut c = cmds(&[
            &["ip", "link", "add", "lbr0", "type", "bridge"],
            &["ip", "link", "set", p.ingress, "master", "lbr0"],
            &["ip", "link", "set", p.egress, "master", "lbr0"],
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        ]);
        // The scripts go through a shell's here-document: the commands are argument lists.
        for (tool, script) in [
            ("ipset restore", &fw.ipset),
            ("iptables-restore", &fw.iptables),
        ] {
            if !script.is_empty() {
                c.push(vec![
                    "sh".into(),
                    "-c".into(),
                    format!("{tool} <<'EOF'\n{script}EOF\n"),
                ]);
            }
        }
        c.extend(cmds(&[&["ip", "link", "set", "lbr0", "up"]]));
        Some(c)
    }

    fn linux_cleanup(&self, _p: Ports<'_>) -> Vec<Vec<String>> {
        // The namespace is the DUT's for the other devices too: no filtering left behind.
        cmds(&[
            &["ip", "link", "del", "lbr0"],
            &["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"],
            &["iptables", "-F"],
            &["iptables", "-X"],
            &["iptables", "-t", "raw", "-F"],
            &["iptables", "-t", "raw", "-X"],
            &["ipset", "destroy"],
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: Ports<'static> = Ports {
        ingress: "pbn1t0g",
        egress: "pbn1t0k",
    };

    #[test]
    fn the_kernel_gets_the_drivers_chains_on_the_benchmark_interfaces() {
        let sc = SecurityGroups { filler_rules: 3 };
        let c = sc.linux_commands(PORTS).unwrap();
        let script = c
            .iter()
            .find(|c| c[2].starts_with("iptables-restore"))
            .map(|c| c[2].clone())
            .unwrap();
        for want in [
            "-A neutron-openvswi-sg-chain -m physdev --physdev-out pbn1t0k --physdev-is-bridged",
            "-A neutron-openvswi-isink -p tcp -m tcp --dport 10002 -j RETURN",
            "-A neutron-openvswi-isink -s 198.18.0.1/32 -p udp -m udp --dport 9 -j RETURN",
            "-A neutron-openvswi-ogen -d 198.18.0.2/32 -p udp -m udp --dport 9 -j RETURN",
        ] {
            assert!(script.contains(want), "missing `{want}`:\n{script}");
        }
        let fillers = script.matches("-p tcp -m tcp --dport 100").count();
        assert_eq!(fillers, 3);
    }

    #[test]
    fn open_vswitch_gets_the_firewall_drivers_pipeline() {
        let flows = SecurityGroups { filler_rules: 3 }.ovs_flows(PORTS).unwrap();
        let has = |want: &str| flows.iter().any(|f| f.contains(want));
        for want in [
            "in_port=pbn1t0g,actions=load:1->NXM_NX_REG5[],load:1->NXM_NX_REG6[]",
            "nw_src=198.18.0.1,actions=ct(table=72,zone=NXM_NX_REG6[0..15])",
            "table=81,priority=90,ip,reg5=2,actions=ct(table=82,zone=NXM_NX_REG6[0..15])",
            "udp,reg5=2,nw_src=198.18.0.1,tp_dst=9,actions=ct(commit,zone=NXM_NX_REG6[0..15]),output:pbn1t0k",
        ] {
            assert!(has(want), "missing `{want}`:\n{}", flows.join("\n"));
        }
        assert_eq!(
            flows
                .iter()
                .filter(|f| f.contains(",tcp,reg5=2,tp_dst=1000"))
                .count(),
            3
        );
    }

    #[test]
    fn the_desired_state_is_the_agreed_schema() {
        let text = SecurityGroups { filler_rules: 2 }
            .pollux_config(PORTS)
            .unwrap();
        let state = SgState::from_toml(&text).unwrap();
        assert_eq!(state.ports.len(), 2);
        assert!(state.ports.iter().all(|p| p.port_security_enabled));
    }
}
