//! Port to port on one network: the generator's frames go, unchanged, to the sink.

use pollux_control::validate::fmt_mac;
use pollux_drivers::xdp::{reg::*, BpfInsn};

use super::{bpf, cmds, Ports, Scenario};
use crate::compare::topology::{GEN_MAC, SINK_MAC};

/// L2 forwarding between two ports of one network (known unicast).
#[derive(Clone, Copy, Debug)]
pub struct PortToPort;

impl Scenario for PortToPort {
    fn name(&self) -> &'static str {
        "l2-p2p"
    }

    fn describe(&self) -> &'static str {
        "port to port on one network, known unicast, untagged"
    }

    fn egress_vlan(&self) -> Option<u16> {
        None
    }

    fn prime_frame(&self) -> Vec<u8> {
        crate::compare::frame::tagged_prime(GEN_MAC, SINK_MAC, None)
    }

    fn pollux_config(&self, p: Ports<'_>) -> Option<String> {
        Some(format!(
            r#"[[networks]]
id = "bench"
network_type = "local"

[[ports]]
id = "gen"
network_id = "bench"
mac_address = "{gen}"
port_security_enabled = false
binding = {{ driver = "afxdp", interface = "{ingress}" }}

[[ports]]
id = "sink"
network_id = "bench"
mac_address = "{sink}"
port_security_enabled = false
binding = {{ driver = "afxdp", interface = "{egress}" }}
"#,
            gen = fmt_mac(GEN_MAC),
            sink = fmt_mac(SINK_MAC),
            ingress = p.ingress,
            egress = p.egress,
        ))
    }

    fn ovs_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        Some(
            [p.ingress, p.egress]
                .iter()
                .flat_map(|i| {
                    cmds(&[&[
                        "add-port",
                        "br0",
                        i,
                        "--",
                        "set",
                        "interface",
                        i,
                        "type=afxdp",
                        "options:xdp-mode=best-effort",
                    ]])
                })
                .collect(),
        )
    }

    fn linux_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        Some(cmds(&[
            &["ip", "link", "add", "lbr0", "type", "bridge"],
            &["ip", "link", "set", p.ingress, "master", "lbr0"],
            &["ip", "link", "set", p.egress, "master", "lbr0"],
            &["ip", "link", "set", "lbr0", "up"],
        ]))
    }

    fn xsk_fwd_args(&self) -> Option<Vec<String>> {
        Some(Vec::new())
    }

    fn xdp_program(&self, egress_ifindex: u32) -> Option<Vec<BpfInsn>> {
        Some(vec![
            BpfInsn::mov64_imm(R1, egress_ifindex as i32),
            BpfInsn::mov64_imm(R2, 0),
            BpfInsn::call(bpf::FUNC_REDIRECT),
            BpfInsn::exit(),
        ])
    }
}
