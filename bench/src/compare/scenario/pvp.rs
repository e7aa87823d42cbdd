//! PVP (physical–virtual–physical, here virtual–switch–virtual): the generator and the
//! sink are virtio-net devices driven by the harness over vhost-user
//! ([`crate::compare::vhost_front`]), the device under test forwards between its two
//! vhost-user ports, port to port on one network. [`Ports`] name the harness's two
//! sockets; every device connects to them as the vhost-user client.

use pollux_control::validate::fmt_mac;

use super::{cmds, Ports, Scenario};
use crate::compare::topology::{GEN_MAC, SINK_MAC};

/// Two VMs' virtio-net devices on one network, known unicast.
#[derive(Clone, Copy, Debug)]
pub struct Pvp;

impl Scenario for Pvp {
    fn name(&self) -> &'static str {
        "pvp"
    }

    fn describe(&self) -> &'static str {
        "vhost-user to vhost-user (PVP), port to port on one network, known unicast"
    }

    fn vhost_user(&self) -> bool {
        true
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
binding = {{ driver = "vhost-user", socket = "{ingress}", mode = "client" }}

[[ports]]
id = "sink"
network_id = "bench"
mac_address = "{sink}"
port_security_enabled = false
binding = {{ driver = "vhost-user", socket = "{egress}", mode = "client" }}
"#,
            gen = fmt_mac(GEN_MAC),
            sink = fmt_mac(SINK_MAC),
            ingress = p.ingress,
            egress = p.egress,
        ))
    }

    fn ovs_commands(&self, _: Ports<'_>) -> Option<Vec<Vec<String>>> {
        None
    }

    fn ovs_dpdk_commands(&self, p: Ports<'_>) -> Option<Vec<Vec<String>>> {
        Some(
            [("vhu-gen", p.ingress), ("vhu-sink", p.egress)]
                .iter()
                .flat_map(|(name, socket)| {
                    let path = format!("options:vhost-server-path={socket}");
                    cmds(&[&[
                        "add-port",
                        "br0",
                        name,
                        "--",
                        "set",
                        "interface",
                        name,
                        "type=dpdkvhostuserclient",
                        &path,
                    ]])
                })
                .collect(),
        )
    }

    fn testpmd_vdevs(&self, p: Ports<'_>) -> Option<Vec<String>> {
        Some(vec![
            format!("net_vhost0,iface={},client=1,queues=1", p.ingress),
            format!("net_vhost1,iface={},client=1,queues=1", p.egress),
        ])
    }

    fn linux_commands(&self, _: Ports<'_>) -> Option<Vec<Vec<String>>> {
        None
    }

    fn linux_cleanup(&self, _: Ports<'_>) -> Vec<Vec<String>> {
        Vec::new()
    }
}
