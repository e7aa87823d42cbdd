//! polluxd in a host namespace with namespaces as VMs plugged into it over veths, the
//! set-up the netns e2e tests of port security and security groups share.

use pollux_control::client::Client;
use serde_json::{json, Value};

use crate::daemon::{self, ConfigFile, Polluxd};
use crate::netns::{Netns, Topology, VethOptions};

/// A VM: namespace `role`, whose `eth0` has `mac` and `ip`/24. Its veth's other end is in
/// the host namespace, named from the run's prefix and `role` (the configuration's
/// `@P@<role>`).
#[derive(Debug)]
pub struct Vm {
    pub role: &'static str,
    pub mac: &'static str,
    pub ip: &'static str,
}

/// A running lab; dropping it stops polluxd and deletes the namespaces.
#[derive(Debug)]
pub struct VmLab {
    pub topo: Topology,
    pub polluxd: Polluxd,
    _config: ConfigFile,
}

impl VmLab {
    /// Plugs `vms` (IPv6 off everywhere, so no stray neighbour discovery) and starts
    /// polluxd in the host namespace with configuration `config` (a file in `configs/`
    /// with `@P@` for the prefix) on the last CPU. Panics on any failure.
    pub fn start(config: &str, vms: &[&Vm]) -> VmLab {
        VmLab::start_with_ipv6(config, vms, &[])
    }

    /// [`VmLab::start`] where the VM `vms[i]` also has IPv6 on, with the address
    /// `ipv6[i]` (a prefix of 2001:db8::/32, e.g. `2001:db8:31::11/64`) besides its
    /// link-local one; the host namespace keeps IPv6 off.
    pub fn start_with_ipv6(config: &str, vms: &[&Vm], ipv6: &[&str]) -> VmLab {
        let mut topo = Topology::new();
        topo.add_ns("host").unwrap();
        topo.ns("host").unwrap().disable_ipv6().unwrap();
        for (i, vm) in vms.iter().enumerate() {
            topo.add_ns(vm.role).unwrap();
            if ipv6.get(i).is_some() {
                topo.ns(vm.role).unwrap().enable_ipv6().unwrap();
            } else {
                topo.ns(vm.role).unwrap().disable_ipv6().unwrap();
            }
            let switch_if = topo.prefix().ifname(vm.role).unwrap();
            let options = VethOptions {
                mac_b: Some(vm.mac.to_owned()),
                ..VethOptions::default()
            };
            topo.veth_with("host", &switch_if, vm.role, "eth0", &options)
                .unwrap();
            topo.addr(vm.role, "eth0", &format!("{}/24", vm.ip))
                .unwrap();
            if let Some(cidr) = ipv6.get(i) {
                topo.addr6(vm.role, "eth0", cidr).unwrap();
            }
        }
        let config = ConfigFile::render(config, topo.prefix().as_str()).unwrap();
        let polluxd = Polluxd::start(topo.ns("host").unwrap(), config.path(), &daemon::last_cpu())
            .unwrap_or_else(|e| panic!("{e}"));
        VmLab {
            topo,
            polluxd,
            _config: config,
        }
    }

    /// The namespace of `vm`.
    pub fn vm(&self, vm: &Vm) -> &Netns {
        self.topo.ns(vm.role).unwrap()
    }

    /// Calls `method` on polluxd's socket; panics on an error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let mut client = Client::connect(self.polluxd.socket()).expect("connect to polluxd");
        client
            .call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    /// Frames dropped for `reason` so far (`stats.get`).
    pub fn drops(&self, reason: &str) -> u64 {
        self.call("stats.get", json!({}))["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }
}
