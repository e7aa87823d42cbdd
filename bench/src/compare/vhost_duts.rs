//! The devices under test that exist only for vhost-user scenarios: Open vSwitch on its
//! DPDK datapath and `dpdk-testpmd` between two `net_vhost` ports (the ceiling). Both
//! run DPDK without hugepages (`--no-huge`: its memory comes from anonymous pages, which
//! is enough, since vhost-user copies between the guest's shared memory and DPDK's
//! mbufs), and their DPDK runtime directories are removed when they stop.

use std::fs;
use std::time::Duration;

use pollux_testkit::ovs::OvsSwitch;

use super::dut::{spawn, wait_for, Env, Running};
use super::scenario::Scenario;
use super::sys::{self, run};

/// Debian's DPDK build of `ovs-vswitchd` (package `openvswitch-switch-dpdk`), run by path
/// so that the system-wide `ovs-vswitchd` alternative is left alone.
pub const OVS_VSWITCHD_DPDK: &str = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk";
/// DPDK memory (MB) of either device.
const DPDK_MEM_MB: &str = "1024";

fn runtime_dir_cleanup(prefix: &str) -> Vec<String> {
    ["rm", "-rf", &format!("/var/run/dpdk/{prefix}")]
        .map(String::from)
        .to_vec()
}

/// Starts Open vSwitch with `dpdk-init=true` and one PMD thread on the DUT's CPU, then
/// `commands` (`ovs-vsctl` argument lists) after `add-br br0` on the netdev datapath.
pub fn start_ovs_dpdk(
    env: &Env<'_>,
    scenario: &dyn Scenario,
    commands: &[Vec<String>],
    r: &mut Running,
) -> Result<(), String> {
    if !std::path::Path::new(OVS_VSWITCHD_DPDK).exists() {
        sys::ensure_packages(&[("ovs-vswitchd", "openvswitch-switch")])?;
        run(&["apt-get", "install", "-y", "openvswitch-switch-dpdk"])?;
    }
    let t = env.topo;
    let prefix = format!("{}-ovs", t.prefix);
    // OVS adds `--in-memory` unless told `--legacy-mem`, and `--no-huge` needs the
    // latter.
    let extra = format!("--no-huge --legacy-mem -m {DPDK_MEM_MB} --no-pci --file-prefix={prefix}");
    let mask = format!("{:#x}", 1u64 << env.dut_cpu);
    let workdir = env.work.join(format!("ovs-dpdk-{}", scenario.name()));
    r.cleanup.push(runtime_dir_cleanup(&prefix));
    let sw = OvsSwitch::start_program(
        &t.sw_ns,
        &workdir,
        &[
            ("dpdk-init", "true"),
            ("dpdk-extra", &extra),
            // Without it OVS sizes one shared pool for a NIC (262,144 mbufs, ~600 MB),
            // which --no-huge's memory cannot hold: the vhost ports fail when the front
            // end connects ("Failed to create memory pool"). Per port, it takes what the
            // port's queues need.
            ("per-port-memory", "true"),
            ("pmd-cpu-mask", &mask),
        ],
        OVS_VSWITCHD_DPDK,
    )
    .map_err(|e| format!("ovs-vswitchd-dpdk: {e}"))?;
    let sw = r.ovs.insert(sw);
    sw.add_bridge("br0").map_err(|e| e.to_string())?;
    for c in commands {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        sw.vsctl(&args)
            .map_err(|e| format!("ovs-vsctl {args:?}: {e}"))?;
    }
    sw.wait_ready().map_err(|e| e.to_string())?;
    let version = run(&[OVS_VSWITCHD_DPDK, "--version"]).unwrap_or_default();
    r.notes.push(format!(
        "{}; DPDK datapath (dpdk-extra {extra}), dpdkvhostuserclient ports, pmd-cpu-mask {mask}",
        version.lines().next().unwrap_or("ovs").trim(),
    ));
    Ok(())
}

/// Starts `dpdk-testpmd` on `vdevs` in io forwarding mode: its main lcore on the
/// generator's CPU (it only waits), its one forwarding lcore on the DUT's.
pub fn start_testpmd(
    env: &Env<'_>,
    scenario: &dyn Scenario,
    vdevs: &[String],
    r: &mut Running,
) -> Result<(), String> {
    sys::ensure_packages(&[("dpdk-testpmd", "dpdk-dev")])?;
    let t = env.topo;
    let prefix = format!("{}-tpmd", t.prefix);
    let log = env.work.join(format!("testpmd-{}.log", scenario.name()));
    let lcores = format!("0@{},1@{}", env.gen_cpu, env.dut_cpu);
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        &t.sw_ns,
        "dpdk-testpmd",
        "--lcores",
        &lcores,
        "--no-pci",
        "--no-huge",
        "-m",
        DPDK_MEM_MB,
        "--file-prefix",
        &prefix,
    ];
    for v in vdevs {
        args.extend(["--vdev", v.as_str()]);
    }
    // `--stats-period` keeps testpmd running without a terminal (otherwise it waits for
    // Enter on stdin, which is /dev/null, and quits at once).
    args.extend([
        "--",
        "--forward-mode=io",
        "--nb-cores",
        "1",
        "--stats-period",
        "10",
    ]);
    r.cleanup.push(runtime_dir_cleanup(&prefix));
    let child = spawn(&args, &log)?;
    r.children.push(("dpdk-testpmd".into(), child));
    r.logs.push(log.clone());
    let result = wait_for("testpmd forwarding", Duration::from_secs(30), || {
        fs::read_to_string(&log).is_ok_and(|s| s.contains("io packet forwarding"))
    });
    if let Err(e) = result {
        let text = fs::read_to_string(&log).unwrap_or_default();
        return Err(format!("{e}; testpmd log:\n{text}"));
    }
    r.notes.push(format!(
        "dpdk-testpmd io forwarding, lcores {lcores}, --no-huge, vdevs {}",
        vdevs.join(" ")
    ));
    Ok(())
}
