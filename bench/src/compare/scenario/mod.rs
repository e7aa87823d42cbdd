//! Scenarios: what the devices under test are asked to do with the generator's frames.
//!
//! Each scenario is a small module that says, for each kind of device, how to configure
//! it (or that it cannot do the scenario), which VLAN the sink must see, and what the sink
//! sends first so learning switches know where it is, and for routed scenarios the flow
//! (the router's MAC, the addresses, what the sink must see). Later scenarios (VXLAN,
//! traffic to a floating IP) add a module here and an entry in [`all`].

use pollux_drivers::xdp::BpfInsn;

use super::traffic::Flow;

mod p2p;
mod pvp;
mod routed;
mod security_groups;
mod vlan_push;

pub use p2p::PortToPort;
pub use pvp::Pvp;
pub use routed::Routed;
pub use security_groups::SecurityGroups;
pub use vlan_push::VlanPush;

/// Names the DUT's two interfaces (in vhost-user scenarios, the sockets of the
/// harness's generator and sink).
#[derive(Clone, Copy, Debug)]
pub struct Ports<'a> {
    /// Towards the generator.
    pub ingress: &'a str,
    /// Towards the sink.
    pub egress: &'a str,
}

/// One way of forwarding the generator's frames to the sink.
pub trait Scenario: std::fmt::Debug {
    /// Name on the command line and in reports.
    fn name(&self) -> &'static str;
    /// One line for the report.
    fn describe(&self) -> &'static str;
    /// Whether the generator and the sink are virtio-net devices on vhost-user (PVP):
    /// [`Ports`] then name their sockets, which the device under test connects to.
    fn vhost_user(&self) -> bool {
        false
    }
    /// VLAN ID the frames carry when they reach the sink.
    fn egress_vlan(&self) -> Option<u16>;
    /// The frame the sink sends before each trial (learning switches learn its MAC).
    fn prime_frame(&self) -> Vec<u8>;
    /// The generator's flow and what the sink must see of it; by default switched
    /// unchanged from the generator's address to the sink's MAC.
    fn flow(&self) -> Flow {
        Flow::default()
    }
    /// Whether the harness must see the device forward the flow as the scenario says
    /// (every frame through, correctly translated) before it searches: routers resolve
    /// their next hop and OVN installs its flows only after they start. A device that
    /// never does is reported as failed, with what arrived, rather than measured.
    fn check_before_search(&self) -> bool {
        false
    }
    /// polluxd's desired state (TOML), or `None` if Pollux cannot do this scenario.
    fn pollux_config(&self, ports: Ports<'_>) -> Option<String>;
    /// `ovs-vsctl` commands after `add-br br0` (netdev datapath), one argument list each;
    /// `None` if Open vSwitch (without a controller) cannot do this scenario.
    fn ovs_commands(&self, ports: Ports<'_>) -> Option<Vec<Vec<String>>>;
    /// OpenFlow flows (`ovs-ofctl add-flow br0` syntax, port names allowed) that replace
    /// the bridge's `NORMAL` flow after [`Scenario::ovs_commands`]; `None`: the default
    /// `NORMAL` switching.
    fn ovs_flows(&self, _ports: Ports<'_>) -> Option<Vec<String>> {
        None
    }
    /// `ovs-vsctl` commands after `add-br br0` for Open vSwitch on its DPDK datapath;
    /// `None` if it cannot do this scenario.
    fn ovs_dpdk_commands(&self, _ports: Ports<'_>) -> Option<Vec<Vec<String>>> {
        None
    }
    /// `--vdev` arguments of a `dpdk-testpmd` forwarding between its two ports (io mode,
    /// no switching): the ceiling of vhost-user scenarios; `None` elsewhere.
    fn testpmd_vdevs(&self, _ports: Ports<'_>) -> Option<Vec<String>> {
        None
    }
    /// `ip`/`bridge` commands (run in the DUT's namespace) that build the kernel's
    /// forwarding for this scenario, each an argument list.
    fn linux_commands(&self, ports: Ports<'_>) -> Option<Vec<Vec<String>>>;
    /// Commands that undo [`Scenario::linux_commands`] (run even if they failed halfway).
    fn linux_cleanup(&self, _ports: Ports<'_>) -> Vec<Vec<String>> {
        cmds(&[&["ip", "link", "del", "lbr0"]])
    }
    /// Commands (run in the DUT's namespace) that make it a router as Neutron's L3 agent
    /// makes a `qrouter` namespace, each an argument list; `None` if the scenario is not
    /// routed.
    fn linux_router_commands(&self, _ports: Ports<'_>) -> Option<Vec<Vec<String>>> {
        None
    }
    /// Commands that undo [`Scenario::linux_router_commands`] (run even if they failed
    /// halfway; the harness restores the ingress veth's MAC itself).
    fn linux_router_cleanup(&self, _ports: Ports<'_>) -> Vec<Vec<String>> {
        Vec::new()
    }
    /// `ovn-nbctl` commands (argument lists) that build the scenario's logical topology;
    /// the device binds its ingress interface to logical port `gen` and its egress to
    /// `sink`, and `chassis` is its one chassis (for gateway ports). `None` if OVN is not
    /// measured in this scenario.
    fn ovn_nb_commands(&self, _chassis: &str) -> Option<Vec<Vec<String>>> {
        None
    }
    /// Arguments of `pollux-bench xsk-fwd` beyond the interfaces and CPU (the bare AF_XDP
    /// forwarder: only a tag push is available), or `None` (the default) if it cannot do
    /// this scenario.
    fn xsk_fwd_args(&self) -> Option<Vec<String>> {
        None
    }
    /// The XDP program for the ingress interface that does this scenario's rewriting and
    /// redirects to `egress_ifindex`, or `None` (the default) if there is no such ceiling.
    fn xdp_program(&self, _egress_ifindex: u32) -> Option<Vec<BpfInsn>> {
        None
    }
}

/// Every scenario, in report order.
pub fn all() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(PortToPort),
        Box::new(VlanPush { vid: 100 }),
        Box::new(SecurityGroups { filler_rules: 10 }),
        Box::new(Routed::plain()),
        Box::new(Routed::snat()),
        Box::new(Pvp),
    ]
}

/// Scenarios that need what polluxd does not do yet: never run by default, only when
/// named.
pub fn pending() -> Vec<Box<dyn Scenario>> {
    Vec::new()
}

/// The scenario called `name`.
pub fn by_name(name: &str) -> Option<Box<dyn Scenario>> {
    all()
        .into_iter()
        .chain(pending())
        .find(|s| s.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every scenario's desired state is one polluxd accepts, and its ports run without
    /// port security: the generator's addresses are no port's fixed IPs, and the other
    /// devices check no source addresses either (with it on, every frame is a
    /// `spoofed_ip` drop). The security-group scenario is the exception: its ports hold
    /// the generator's and the sink's addresses, and every device filters them.
    #[test]
    fn pollux_configs_validate_without_port_security() {
        let veths = Ports {
            ingress: "pbn1t0g",
            egress: "pbn1t0k",
        };
        let sockets = Ports {
            ingress: "/tmp/pbn1.work/pvp-gen.sock",
            egress: "/tmp/pbn1.work/pvp-sink.sock",
        };
        for sc in all() {
            let ports = if sc.vhost_user() { sockets } else { veths };
            let text = sc.pollux_config(ports).unwrap();
            let state = pollux_control::model::DesiredState::from_toml_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e:?}", sc.name()));
            assert!(!state.ports.is_empty(), "{}", sc.name());
            let filtered = sc.name().starts_with("sg-");
            assert!(
                state
                    .ports
                    .iter()
                    .all(|p| p.port_security_enabled == filtered),
                "{}",
                sc.name()
            );
            if let Err(errors) = pollux_control::validate::validate(&state) {
                panic!("{}: {errors:?}", sc.name());
            }
        }
    }
}

/// Argument lists from string slices.
pub(crate) fn cmds(list: &[&[&str]]) -> Vec<Vec<String>> {
    list.iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// BPF encodings the scenarios' XDP programs need beyond `pollux_drivers::xdp`'s.
pub(crate) mod bpf {
    use pollux_drivers::xdp::{op, BpfInsn};

    /// `bpf_redirect(ifindex, flags)`.
    pub const FUNC_REDIRECT: i32 = 23;
    /// `bpf_xdp_adjust_head(ctx, delta)`.
    pub const FUNC_XDP_ADJUST_HEAD: i32 = 44;
    /// XDP action: drop.
    pub const XDP_DROP: i32 = 1;
    const BPF_ST: u8 = 0x02;
    const BPF_STX: u8 = 0x03;
    const BPF_ADD: u8 = 0x00;
    const BPF_JGT: u8 = 0x20;
    const BPF_JNE: u8 = 0x50;

    /// `*(size *)(dst + off) = imm`.
    pub const fn st_mem(size: u8, dst: u8, off: i16, imm: i32) -> BpfInsn {
        BpfInsn::new(BPF_ST | size | op::BPF_MEM, dst, 0, off, imm)
    }
    /// `*(size *)(dst + off) = src`.
    pub const fn stx_mem(size: u8, dst: u8, src: u8, off: i16) -> BpfInsn {
        BpfInsn::new(BPF_STX | size | op::BPF_MEM, dst, src, off, 0)
    }
    /// `dst += imm`.
    pub const fn add64_imm(dst: u8, imm: i32) -> BpfInsn {
        BpfInsn::new(op::BPF_ALU64 | BPF_ADD | op::BPF_K, dst, 0, 0, imm)
    }
    /// `if dst > src goto +off`.
    pub const fn jgt_reg(dst: u8, src: u8, off: i16) -> BpfInsn {
        BpfInsn::new(op::BPF_JMP | BPF_JGT | op::BPF_X, dst, src, off, 0)
    }
    /// `if dst != imm goto +off`.
    pub const fn jne_imm(dst: u8, imm: i32, off: i16) -> BpfInsn {
        BpfInsn::new(op::BPF_JMP | BPF_JNE | op::BPF_K, dst, 0, off, imm)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use pollux_drivers::xdp::reg::*;

        #[test]
        fn encodings_match_the_kernel() {
            // *(u16 *)(r2 + 12) = 0x0081
            assert_eq!(
                st_mem(op::BPF_H, R2, 12, 0x81).to_bytes(),
                [0x6a, 0x02, 12, 0, 0x81, 0, 0, 0]
            );
            // *(u32 *)(r2 + 0) = r3
            assert_eq!(
                stx_mem(op::BPF_W, R2, R3, 0).to_bytes(),
                [0x63, 0x32, 0, 0, 0, 0, 0, 0]
            );
            assert_eq!(
                add64_imm(R3, 18).to_bytes(),
                [0x07, 0x03, 0, 0, 18, 0, 0, 0]
            );
            assert_eq!(
                jgt_reg(R3, R1, 5).to_bytes(),
                [0x2d, 0x13, 5, 0, 0, 0, 0, 0]
            );
            assert_eq!(jne_imm(R0, 0, 2).to_bytes(), [0x55, 0x00, 2, 0, 0, 0, 0, 0]);
        }
    }
}
