//! polluxd in a host namespace with namespaces as VMs plugged into it over veths, the
//! set-up the netns e2e tests share: [`VmNet`] is the namespaces alone (a test starts
//! polluxd, or several, itself), [`VmLab`] the namespaces with polluxd running.

use std::time::Duration;

use serde_json::{json, Value};

use crate::daemon::{self, ConfigFile, Polluxd};
use crate::netns::{self, Netns, Topology, VethOptions};

/// A VM: namespace `role`, whose `eth0` has `mac` and `ip`/24. Its veth's other end is in
/// the host namespace, named from the run's prefix and `role` (the configuration's
/// `@P@<role>`).
#[derive(Debug, Clone, Copy)]
pub struct Vm {
    pub role: &'static str,
    pub mac: &'static str,
    pub ip: &'static str,
}

/// Namespace `host` (where polluxd runs) and one namespace per VM, joined by veths
/// `host:<P><role>` ↔ `<role>:eth0`, IPv6 off everywhere (its link-local chatter would
/// only add noise to counters and captures). Dropping it deletes the namespaces.
#[derive(Debug)]
pub struct VmNet {
    pub topo: Topology,
}

impl VmNet {
    /// Namespace `host` and `vms`, plugged; panics on any failure.
    pub fn new(vms: &[&Vm]) -> VmNet {
        VmNet::with_roles(Topology::new(), &[], vms)
    }

    /// `topo` with namespace `host`, one namespace per `extra` role (not plugged: the
    /// test wires them) and `vms`, plugged.
    pub fn with_roles(mut topo: Topology, extra: &[&str], vms: &[&Vm]) -> VmNet {
        let roles = std::iter::once("host")
            .chain(extra.iter().copied())
            .chain(vms.iter().map(|vm| vm.role));
        for role in roles {
            topo.add_ns(role).unwrap();
            topo.ns(role).unwrap().disable_ipv6().unwrap();
        }
        let net = VmNet { topo };
        for vm in vms {
            net.plug(vm, &VethOptions::default());
        }
        net
    }

    /// Creates the veth between `host` and `vm` (with `options`; the guest end gets the
    /// VM's MAC) and gives the guest end its address. The guest keeps the kernel's default
    /// offloads: polluxd completes the TCP/UDP checksums its veth leaves partial.
    pub fn plug(&self, vm: &Vm, options: &VethOptions) {
        let options = VethOptions {
            mac_b: Some(vm.mac.to_owned()),
            ..options.clone()
        };
        self.topo
            .veth_with("host", &self.switch_if(vm), vm.role, "eth0", &options)
            .unwrap();
        self.topo
            .addr(vm.role, "eth0", &format!("{}/24", vm.ip))
            .unwrap();
    }

    /// The run's interface prefix (`@P@` in configurations).
    pub fn prefix(&self) -> &str {
        self.topo.prefix().as_str()
    }

    /// The switch-side interface of `vm` (in namespace `host`).
    pub fn switch_if(&self, vm: &Vm) -> String {
        self.topo.prefix().ifname(vm.role).unwrap()
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: &str) -> &Netns {
        self.topo.ns(role).unwrap()
    }

    /// Namespace `host`.
    pub fn host(&self) -> &Netns {
        self.ns("host")
    }

    /// The namespace of `vm`.
    pub fn vm(&self, vm: &Vm) -> &Netns {
        self.ns(vm.role)
    }

    /// `template` (a file in `configs/`) rendered with this run's prefix.
    pub fn config(&self, template: &str) -> ConfigFile {
        ConfigFile::render(template, self.prefix()).unwrap()
    }

    /// polluxd in namespace `host` with `config`, its worker on the last CPU; panics when
    /// it does not get ready.
    pub fn start(&self, config: &ConfigFile) -> Polluxd {
        Polluxd::start(self.host(), config.path(), &daemon::last_cpu())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every one of `count` pings from `from` to `to` answered; else panics with polluxd's
    /// stderr so far.
    pub fn assert_reach(&self, from: &Vm, to: &Vm, count: u32, polluxd: &Polluxd) {
        let r = self.ping(from.role, to.ip, count);
        assert!(
            r.all_received(),
            "{} -> {}: {r:?}, expected every reply; polluxd stderr so far:\n{}",
            from.role,
            to.role,
            polluxd.stderr_so_far()
        );
    }

    /// `count` pings from namespace `from` to `to`, 0.2 s apart, at most `count * 0.2 + 3` s.
    pub fn ping(&self, from: &str, to: &str, count: u32) -> netns::PingResult {
        let limit = Duration::from_millis(u64::from(count) * 200 + 3000);
        netns::ping(self.ns(from), to, count, limit).unwrap()
    }
}

/// A running lab; dropping it stops polluxd and deletes the namespaces.
#[derive(Debug)]
pub struct VmLab {
    pub topo: Topology,
    pub polluxd: Polluxd,
    _config: ConfigFile,
}

impl VmLab {
    /// Plugs `vms` and starts polluxd in the host namespace with configuration `config` (a
    /// file in `configs/` with `@P@` for the prefix) on the last CPU. Panics on any failure.
    pub fn start(config: &str, vms: &[&Vm]) -> VmLab {
        VmLab::start_with_ipv6(config, vms, &[])
    }

    /// [`VmLab::start`] where the VM `vms[i]` also has IPv6 on, with the address
    /// `ipv6[i]` (a prefix of 2001:db8::/32, e.g. `2001:db8:31::11/64`) besides its
    /// link-local one; the host namespace keeps IPv6 off.
    pub fn start_with_ipv6(config: &str, vms: &[&Vm], ipv6: &[&str]) -> VmLab {
        let net = VmNet::new(vms);
        for (vm, cidr) in vms.iter().zip(ipv6) {
            // Turning IPv6 on for the namespace ("all") turns it on for its eth0 too.
            net.vm(vm).enable_ipv6().unwrap();
            net.topo.addr6(vm.role, "eth0", cidr).unwrap();
        }
        let config = net.config(config);
        let polluxd = net.start(&config);
        VmLab {
            topo: net.topo,
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
        self.polluxd.call(method, params)
    }

    /// Frames dropped for `reason` so far (`stats.get`).
    pub fn drops(&self, reason: &str) -> u64 {
        self.call("stats.get", json!({}))["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }
}
