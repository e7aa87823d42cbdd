//! Access port to uplink: untagged frames from a VM port leave on the uplink with the
//! network's 802.1Q tag pushed (a Neutron `vlan` network).

use pollux_control::validate::fmt_mac;
use pollux_drivers::xdp::{op, reg::*, BpfInsn};

use super::{bpf, cmds, Ports, Scenario};
use crate::compare::topology::{GEN_MAC, SINK_MAC};

/// Access (VM) port → uplink trunk, VLAN `vid` pushed.
#[derive(Clone, Copy, Debug)]
pub struct VlanPush {
    /// The network's VLAN ID.
    pub vid: u16,
}

impl Scenario for VlanPush {
    fn name(&self) -> &'static str {
        "l2-vlan-push"
    }

    fn describe(&self) -> &'static str {
        "access port to uplink trunk, 802.1Q tag pushed (VLAN 100), sink MAC learned on the uplink"
    }

    fn egress_vlan(&self) -> Option<u16> {
        Some(self.vid)
    }

    fn prime_frame(&self) -> Vec<u8> {
        crate::compare::frame::tagged_prime(GEN_MAC, SINK_MAC, Some(self.vid))
    }

    fn pollux_config(&self, p: Ports<'_>) -> Option<String> {
        Some(format!(
            r#"[[uplinks]]
name = "uplink0"
physnet = "physnet1"
binding = {{ driver = "afxdp", interface = "{egress}" }}

[[networks]]
id = "net-{vid}"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = {vid}

[[ports]]
id = "gen"
network_id = "net-{vid}"
mac_address = "{gen}"
port_security_enabled = false
binding = {{ driver = "afxdp", interface = "{ingress}" }}
"#,
            vid = self.vid,
            gen = fmt_mac(GEN_MAC),
            ingress = p.ingress,
            egress = p.egress,
        ))
    }

    fn ovs_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        let tag = format!("tag={}", self.vid);
        Some(cmds(&[
            &[
                "add-port",
                "br0",
                p.ingress,
                &tag,
                "--",
                "set",
                "interface",
                p.ingress,
                "type=afxdp",
                "options:xdp-mode=best-effort",
            ],
            &[
                "add-port",
                "br0",
                p.egress,
                "--",
                "set",
                "interface",
                p.egress,
                "type=afxdp",
                "options:xdp-mode=best-effort",
            ],
        ]))
    }

    /// A VLAN device on the egress veth in the bridge (as Neutron's linuxbridge agent
    /// builds it), so no `vlan_filtering` (not every kernel has it) is needed.
    fn linux_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        let vid = self.vid.to_string();
        let vlan_dev = format!("{}.{vid}", p.egress);
        Some(cmds(&[
            &[
                "ip", "link", "add", "link", p.egress, "name", &vlan_dev, "type", "vlan", "id",
                &vid,
            ],
            &["ip", "link", "add", "lbr0", "type", "bridge"],
            &["ip", "link", "set", p.ingress, "master", "lbr0"],
            &["ip", "link", "set", &vlan_dev, "master", "lbr0"],
            &["ip", "link", "set", &vlan_dev, "up"],
            &["ip", "link", "set", "lbr0", "up"],
        ]))
    }

    fn linux_cleanup(&self, p: Ports<'_>) -> Vec<Vec<String>> {
        let vlan_dev = format!("{}.{}", p.egress, self.vid);
        cmds(&[
            &["ip", "link", "del", "lbr0"],
            &["ip", "link", "del", &vlan_dev],
        ])
    }

    /// The forwarder pushes the tag itself, in the frame's headroom, as the XDP ceiling
    /// and Pollux do.
    fn xsk_fwd_args(&self) -> Option<Vec<String>> {
        Some(vec!["--push-vlan".to_string(), self.vid.to_string()])
    }

    /// Pushes the tag in place (`bpf_xdp_adjust_head` by -4, the MACs moved to the new
    /// start, TPID and TCI written) and redirects.
    fn xdp_program(&self, egress_ifindex: u32) -> Option<Vec<BpfInsn>> {
        const R6: u8 = 6;
        let tci = self.vid.to_be_bytes();
        Some(vec![
            BpfInsn::mov64_reg(R6, R1),
            BpfInsn::mov64_imm(R2, -4),
            BpfInsn::call(bpf::FUNC_XDP_ADJUST_HEAD),
            bpf::jne_imm(R0, 0, 17), // -> drop
            // r2 = data, r1 = data_end (reloaded: the call invalidated packet pointers)
            BpfInsn::ldx_mem(op::BPF_W, R2, R6, 0),
            BpfInsn::ldx_mem(op::BPF_W, R1, R6, 4),
            BpfInsn::mov64_reg(R3, R2),
            bpf::add64_imm(R3, 18),
            bpf::jgt_reg(R3, R1, 12), // -> drop
            // Move the 12 bytes of MACs from data + 4 to data.
            BpfInsn::ldx_mem(op::BPF_W, R3, R2, 4),
            bpf::stx_mem(op::BPF_W, R2, R3, 0),
            BpfInsn::ldx_mem(op::BPF_W, R3, R2, 8),
            bpf::stx_mem(op::BPF_W, R2, R3, 4),
            BpfInsn::ldx_mem(op::BPF_W, R3, R2, 12),
            bpf::stx_mem(op::BPF_W, R2, R3, 8),
            // TPID 0x8100 and TCI, in network order (stored as host-order immediates).
            bpf::st_mem(
                op::BPF_H,
                R2,
                12,
                i32::from(u16::from_ne_bytes([0x81, 0x00])),
            ),
            bpf::st_mem(op::BPF_H, R2, 14, i32::from(u16::from_ne_bytes(tci))),
            // redirect
            BpfInsn::mov64_imm(R1, egress_ifindex as i32),
            BpfInsn::mov64_imm(R2, 0),
            BpfInsn::call(bpf::FUNC_REDIRECT),
            BpfInsn::exit(),
            // drop:
            BpfInsn::mov64_imm(R0, bpf::XDP_DROP),
            BpfInsn::exit(),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_the_drop_label() {
        let prog = VlanPush { vid: 100 }.xdp_program(7).unwrap();
        let drop = prog.len() - 2;
        for (i, insn) in prog.iter().enumerate() {
            if insn.code & 0x07 == op::BPF_JMP
                && insn.code & 0xf0 != 0x80
                && insn.code & 0xf0 != 0x90
            {
                assert_eq!(i + 1 + insn.off as usize, drop, "jump at {i}");
            }
        }
        assert_eq!(prog[drop], BpfInsn::mov64_imm(R0, bpf::XDP_DROP));
    }
}
