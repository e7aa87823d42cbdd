//! Port to port through security groups (a skeleton until polluxd enforces them): the
//! generator's UDP flow leaves through its port's egress rule and enters the sink's port
//! after `filler_rules` ingress rules that do not match it, the same groups for every
//! device. The kernel gets them as Neutron's iptables driver writes them (the matrix's
//! translator, `pollux_tests::neutron_iptables`), on one bridge between the two
//! interfaces; the benchmark's flow never sees a reply, so conntrack keeps it `NEW` and
//! every frame walks the rule list, which is what the rule count measures.
//!
//! Not in [`super::all`] yet: polluxd refuses ports with security groups until the
//! `secgroups` branch is merged; `--scenarios sg-udp` asks for it explicitly. Open
//! vSwitch with the flows Neutron's openvswitch firewall driver programs is not written
//! yet (`ovs_commands` is `None`), nor is an XDP ceiling.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pollux_control::validate::fmt_mac;
use pollux_drivers::xdp::BpfInsn;
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

    fn ovs_commands(&self, _p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        None
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

    fn xsk_fwd_args(&self) -> Option<Vec<String>> {
        None
    }

    fn xdp_program(&self, _egress_ifindex: u32) -> Option<Vec<BpfInsn>> {
        None
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
    fn the_desired_state_is_the_agreed_schema() {
        let text = SecurityGroups { filler_rules: 2 }
            .pollux_config(PORTS)
            .unwrap();
        let state = SgState::from_toml(&text).unwrap();
        assert_eq!(state.ports.len(), 2);
        assert!(state.ports.iter().all(|p| p.port_security_enabled));
    }
}
