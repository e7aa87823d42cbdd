//! The devices under test: how each is started in the DUT namespace for a scenario, what
//! it reports, and how it is stopped. A [`Running`] device is stopped when dropped (child
//! processes signalled and reaped, bridges deleted, XDP links closed), so a failed or
//! interrupted run leaves nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pollux_drivers::bpf::{BpfLink, BpfProgram, BPF_PROG_TYPE_XDP, BPF_XDP, XDP_FLAGS_DRV_MODE};
use pollux_drivers::netdev::Interface;
use pollux_drivers::xdp::encode;

use super::ovn::{self, Ovn};
use super::scenario::{Ports, Scenario};
use super::sys::{self, interrupted, interrupted_error, run, run_in, write_in};
use super::topology::Topology;
use pollux_testkit::ovs::OvsSwitch;

/// A kind of device under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DutKind {
    /// polluxd, one worker.
    Pollux,
    /// polluxd, one worker, its sockets in preferred busy-polling mode.
    PolluxBusyPoll,
    /// A bare forwarder on Pollux's AF_XDP driver (`pollux-bench xsk-fwd`): the ceiling of
    /// Pollux's AF_XDP path, placed as polluxd's worker.
    XskFwd,
    /// Open vSwitch userspace datapath with afxdp ports, one PMD thread.
    OvsAfxdp,
    /// Open vSwitch on its DPDK datapath (`ovs-vswitchd-dpdk`), vhost-user client
    /// ports, one PMD thread (vhost-user scenarios).
    OvsDpdk,
    /// The kernel bridge.
    LinuxBridge,
    /// The kernel as Neutron's L3 agent sets up a `qrouter` namespace: `ip_forward`, the
    /// router's addresses and routes, and for SNAT an iptables `POSTROUTING` rule.
    LinuxRouter,
    /// OVN (`ovn-northd`, `ovn-controller`) programming Open vSwitch's userspace datapath
    /// with afxdp ports, one PMD thread: a logical router between logical switches.
    Ovn,
    /// An XDP program redirecting ingress to egress: the ceiling on veth.
    XdpRedirect,
    /// `dpdk-testpmd` forwarding between two `net_vhost` ports in io mode: the ceiling of
    /// vhost-user scenarios.
    TestpmdVhost,
}

impl DutKind {
    /// Every kind, in report order.
    pub const ALL: [DutKind; 10] = [
        DutKind::Pollux,
        DutKind::PolluxBusyPoll,
        DutKind::XskFwd,
        DutKind::OvsAfxdp,
        DutKind::OvsDpdk,
        DutKind::Ovn,
        DutKind::LinuxBridge,
        DutKind::LinuxRouter,
        DutKind::XdpRedirect,
        DutKind::TestpmdVhost,
    ];

    /// Name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DutKind::Pollux => "pollux",
            DutKind::PolluxBusyPoll => "pollux-busy-poll",
            DutKind::XskFwd => "xsk-fwd",
            DutKind::OvsAfxdp => "ovs-afxdp",
            DutKind::LinuxBridge => "linux-bridge",
            DutKind::LinuxRouter => "linux-router",
            DutKind::Ovn => "ovn",
            DutKind::XdpRedirect => "xdp-redirect",
            DutKind::OvsDpdk => "ovs-dpdk",
            DutKind::TestpmdVhost => "testpmd-vhost",
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<DutKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether this is Pollux (its ratios to the others are reported).
    pub fn is_pollux(self) -> bool {
        matches!(self, DutKind::Pollux | DutKind::PolluxBusyPoll)
    }
}

/// What every device is started with.
#[derive(Debug)]
pub struct Env<'a> {
    /// The topology.
    pub topo: &'a Topology,
    /// Scratch directory of this run.
    pub work: &'a Path,
    /// polluxd binary.
    pub polluxd: &'a Path,
    /// The generator's CPU.
    pub gen_cpu: usize,
    /// The DUT's CPU.
    pub dut_cpu: usize,
    /// The generator's and the sink's vhost-user sockets (vhost-user scenarios).
    pub vhost_sockets: &'a [PathBuf; 2],
    /// `SO_BUSY_POLL_BUDGET` for pollux-busy-poll.
    pub busy_poll_budget: u16,
}

/// A started device; dropping it stops it.
#[derive(Debug, Default)]
pub struct Running {
    /// Children to stop (SIGINT, then SIGKILL), last first.
    pub(super) children: Vec<(String, Child)>,
    /// Commands run in the DUT namespace when stopping.
    pub(super) cleanup: Vec<Vec<String>>,
    /// sysfs writes `(path, value)` in the DUT namespace when stopping.
    restore: Vec<(String, String)>,
    xdp: Option<(BpfLink, BpfProgram)>,
    /// The private Open vSwitch of the kit.
    pub(super) ovs: Option<OvsSwitch>,
    /// The private OVN driving it (stopped before it).
    ovn: Option<Ovn>,
    /// Logs whose last lines are kept with the notes when the device stops.
    pub(super) logs: Vec<PathBuf>,
    /// polluxd's log and socket.
    pollux: Option<(PathBuf, PathBuf)>,
    /// xsk-fwd's log.
    fwd_log: Option<PathBuf>,
    ns: String,
    /// Notes for the report (modes, versions).
    pub notes: Vec<String>,
}

pub(super) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if interrupted() {
            return Err(interrupted_error());
        }
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out waiting for {what}"))
}

pub(super) fn spawn(args: &[&str], log: &Path) -> Result<Child, String> {
    let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|e| e.to_string())?)
        .stderr(file)
        .spawn()
        .map_err(|e| format!("{}: {e}", args[0]))
}

/// Starts `kind` for `scenario`; `Ok(None)` when the device cannot do the scenario.
pub fn start(
    kind: DutKind,
    env: &Env<'_>,
    scenario: &dyn Scenario,
) -> Result<Option<Running>, String> {
    let t = env.topo;
    let sockets = env
        .vhost_sockets
        .each_ref()
        .map(|p| p.to_str().unwrap_or_default());
    let ports = if scenario.vhost_user() {
        if kind == DutKind::PolluxBusyPoll {
            // Busy polling is about AF_XDP sockets; vhost-user ports are polled anyway.
            return Ok(None);
        }
        Ports {
            ingress: sockets[0],
            egress: sockets[1],
        }
    } else {
        Ports {
            ingress: &t.ingress,
            egress: &t.egress,
        }
    };
    let mut r = Running::default();
    r.ns.clone_from(&t.sw_ns);
    match kind {
        DutKind::Pollux | DutKind::PolluxBusyPoll => {
            let Some(config) = scenario.pollux_config(ports) else {
                return Ok(None);
            };
            let dir = env
                .work
                .join(format!("{}-{}", kind.name(), scenario.name()));
            fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let conf = dir.join("pollux.toml");
            fs::write(&conf, config).map_err(|e| e.to_string())?;
            let (sock, log, state) = (dir.join("sock"), dir.join("polluxd.log"), dir.join("state"));
            let cores = env.dut_cpu.to_string();
            let mut args = vec![
                "ip",
                "netns",
                "exec",
                &t.sw_ns,
                env.polluxd.to_str().ok_or("polluxd path is not UTF-8")?,
                "--config",
                conf.to_str().unwrap_or_default(),
                "--cores",
                &cores,
                "--socket",
                sock.to_str().unwrap_or_default(),
                "--state-dir",
                state.to_str().unwrap_or_default(),
            ];
            let budget = env.busy_poll_budget.to_string();
            if kind == DutKind::PolluxBusyPoll {
                // Preferred busy polling needs the device to defer its "interrupts" (for veth:
                // the sender's napi_schedule) while the socket polls.
                for dev in [&t.ingress, &t.egress] {
                    for (file, value, old) in [
                        ("napi_defer_hard_irqs", "2", "0"),
                        ("gro_flush_timeout", "200000", "0"),
                    ] {
                        let path = format!("/sys/class/net/{dev}/{file}");
                        write_in(&t.sw_ns, &path, value)?;
                        r.restore.push((path, old.to_string()));
                    }
                }
                args.extend(["--busy-poll", "--busy-poll-budget", &budget]);
                r.notes.push(format!(
                    "busy polling: SO_PREFER_BUSY_POLL, SO_BUSY_POLL_BUDGET {budget}; \
                     napi_defer_hard_irqs 2, gro_flush_timeout 200 us on {} and {}",
                    t.ingress, t.egress
                ));
            }
            let child = spawn(&args, &log)?;
            r.children.push(("polluxd".into(), child));
            r.pollux = Some((log.clone(), sock));
            let result = wait_for("polluxd ready", Duration::from_secs(15), || {
                fs::read_to_string(&log).is_ok_and(|s| s.contains("ready"))
            });
            if let Err(e) = result {
                let text = fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{e}; polluxd log:\n{text}"));
            }
            let text = fs::read_to_string(&log).unwrap_or_default();
            r.notes.extend(
                text.lines()
                    .filter(|l| l.contains("AF_XDP") || l.contains("ready"))
                    .map(|l| l.trim().to_string()),
            );
        }
        DutKind::XskFwd => {
            let Some(extra) = scenario.xsk_fwd_args() else {
                return Ok(None);
            };
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let log = env.work.join(format!("xsk-fwd-{}.log", scenario.name()));
            let cpu = env.dut_cpu.to_string();
            let mut args = vec![
                "ip",
                "netns",
                "exec",
                &t.sw_ns,
                exe.to_str().ok_or("pollux-bench path is not UTF-8")?,
                "xsk-fwd",
                "--ingress",
                &t.ingress,
                "--egress",
                &t.egress,
                "--cpu",
                &cpu,
            ];
            args.extend(extra.iter().map(String::as_str));
            let child = spawn(&args, &log)?;
            r.children.push(("xsk-fwd".into(), child));
            r.fwd_log = Some(log.clone());
            let result = wait_for("xsk-fwd ready", Duration::from_secs(15), || {
                fs::read_to_string(&log).is_ok_and(|s| s.contains("ready"))
            });
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Err(e) = result {
                return Err(format!("{e}; xsk-fwd log:\n{text}"));
            }
            r.notes.extend(text.lines().map(|l| l.trim().to_string()));
        }
        DutKind::OvsAfxdp => {
            let Some(commands) = scenario.ovs_commands(ports) else {
                return Ok(None);
            };
            ensure_ovs()?;
            let mask = format!("{:#x}", 1u64 << env.dut_cpu);
            let workdir = env.work.join(format!("ovs-{}", scenario.name()));
            let sw = OvsSwitch::start_with(&t.sw_ns, &workdir, &[("pmd-cpu-mask", &mask)])
                .map_err(|e| e.to_string())?;
            let sw = r.ovs.insert(sw);
            let vsctl = |args: &[&str]| sw.vsctl(args).map_err(|e| e.to_string());
            sw.add_bridge("br0").map_err(|e| e.to_string())?;
            for c in &commands {
                let args: Vec<&str> = c.iter().map(String::as_str).collect();
                vsctl(&args)?;
            }
            sw.wait_ready().map_err(|e| e.to_string())?;
            if let Some(flows) = scenario.ovs_flows(ports) {
                let ofctl = |cmd: &str, args: &[&str]| {
                    sw.ofctl(cmd, "br0", args)
                        .map_err(|e| format!("ovs-ofctl {cmd} {args:?}: {e}"))
                };
                ofctl("del-flows", &[])?;
                for f in &flows {
                    ofctl("add-flow", &[f.as_str()])?;
                }
                r.notes
                    .push(format!("{} OpenFlow flows replace NORMAL", flows.len()));
            }
            std::thread::sleep(Duration::from_secs(1));
            let version = run(&["ovs-vswitchd", "--version"]).unwrap_or_default();
            r.notes.push(format!(
                "{}; netdev datapath, afxdp ports (xdp-mode=best-effort), pmd-cpu-mask {mask}",
                version.lines().next().unwrap_or("ovs").trim(),
            ));
        }
        DutKind::OvsDpdk => {
            let Some(commands) = scenario.ovs_dpdk_commands(ports) else {
                return Ok(None);
            };
            super::vhost_duts::start_ovs_dpdk(env, scenario, &commands, &mut r)?;
        }
        DutKind::TestpmdVhost => {
            let Some(vdevs) = scenario.testpmd_vdevs(ports) else {
                return Ok(None);
            };
            super::vhost_duts::start_testpmd(env, scenario, &vdevs, &mut r)?;
        }
        DutKind::LinuxBridge => {
            let Some(commands) = scenario.linux_commands(ports) else {
                return Ok(None);
            };
            r.cleanup = scenario.linux_cleanup(ports);
            for c in &commands {
                let args: Vec<&str> = c.iter().map(String::as_str).collect();
                run_in(&t.sw_ns, &args)?;
            }
        }
        DutKind::LinuxRouter => {
            let Some(commands) = scenario.linux_router_commands(ports) else {
                return Ok(None);
            };
            sys::ensure_packages(&[("iptables", "iptables")])?;
            // The commands give the ingress veth the router's MAC; the next device gets
            // the veth's own back.
            let mac = run_in(
                &t.sw_ns,
                &["cat", &format!("/sys/class/net/{}/address", t.ingress)],
            )?;
            r.cleanup = scenario.linux_router_cleanup(ports);
            r.cleanup.push(
                ["ip", "link", "set", &t.ingress, "address", mac.trim()]
                    .map(String::from)
                    .into(),
            );
            for c in &commands {
                let args: Vec<&str> = c.iter().map(String::as_str).collect();
                run_in(&t.sw_ns, &args)?;
            }
            let version = run(&["iptables", "--version"]).unwrap_or_default();
            r.notes.push(format!(
                "the kernel's forwarding in the DUT namespace ({}): {}",
                version.trim(),
                commands
                    .iter()
                    .map(|c| c.join(" "))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        DutKind::Ovn => {
            let Some(commands) = scenario.ovn_nb_commands(ovn::CHASSIS) else {
                return Ok(None);
            };
            start_ovn(env, scenario, ports, &commands, &mut r)?;
        }
        DutKind::XdpRedirect => {
            let (ingress, egress) = (t.ingress.clone(), t.egress.clone());
            let loaded = t
                .ns("sw")
                .run_here(|| -> Result<Option<(BpfLink, BpfProgram)>, String> {
                    let (_, in_idx) = Interface::from(ingress.as_str())
                        .resolve()
                        .map_err(|e| e.to_string())?;
                    let (_, out_idx) = Interface::from(egress.as_str())
                        .resolve()
                        .map_err(|e| e.to_string())?;
                    let Some(insns) = scenario.xdp_program(out_idx) else {
                        return Ok(None);
                    };
                    let prog = BpfProgram::load(
                        BPF_PROG_TYPE_XDP,
                        BPF_XDP,
                        "bench_redirect",
                        &encode(&insns),
                    )
                    .map_err(|e| format!("load redirect program: {e}"))?;
                    let link = BpfLink::create_xdp(&prog, in_idx, XDP_FLAGS_DRV_MODE)
                        .map_err(|e| format!("attach redirect program to {ingress}: {e}"))?;
                    Ok(Some((link, prog)))
                })
                .map_err(|e| e.to_string())??;
            let Some(loaded) = loaded else {
                return Ok(None);
            };
            r.xdp = Some(loaded);
            r.notes.push(format!(
                "native XDP on {} calling bpf_redirect to {}",
                t.ingress, t.egress
            ));
        }
    }
    Ok(Some(r))
}

/// Starts a private Open vSwitch (one PMD thread on the DUT's CPU) and a private OVN
/// on it, binds the DUT's interfaces (afxdp ports on `br-int`) to the logical ports
/// `gen` and `sink`, and applies the scenario's `ovn-nbctl` commands; returns once the
/// chassis has installed them.
fn start_ovn(
    env: &Env<'_>,
    scenario: &dyn Scenario,
    ports: Ports<'_>,
    commands: &[Vec<String>],
    r: &mut Running,
) -> Result<(), String> {
    let t = env.topo;
    sys::ensure_packages(&ovn::PACKAGES)?;
    let mask = format!("{:#x}", 1u64 << env.dut_cpu);
    let ovs_dir = env.work.join(format!("ovn-ovs-{}", scenario.name()));
    let sw = OvsSwitch::start_with(&t.sw_ns, &ovs_dir, &[("pmd-cpu-mask", &mask)])
        .map_err(|e| e.to_string())?;
    let sw = r.ovs.insert(sw);
    let o = Ovn::start(&env.work.join(format!("ovn-{}", scenario.name())), sw)?;
    let o = r.ovn.insert(o);
    for (ifname, lport) in [(ports.ingress, "gen"), (ports.egress, "sink")] {
        let iface_id = format!("external_ids:iface-id={lport}");
        sw.vsctl(&[
            "add-port",
            "br-int",
            ifname,
            "--",
            "set",
            "interface",
            ifname,
            "type=afxdp",
            "options:xdp-mode=best-effort",
            &iface_id,
        ])
        .map_err(|e| e.to_string())?;
    }
    for c in commands {
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        o.nbctl(&args)?;
    }
    o.sync()
        .map_err(|e| format!("{e}; ovn-controller log:\n{}", o.log_tail("controller.log")))?;
    sw.wait_ready().map_err(|e| e.to_string())?;
    let lflows = o
        .sbctl(&["--bare", "--columns=_uuid", "list", "Logical_Flow"])
        .map_or(0, |s| s.lines().filter(|l| !l.trim().is_empty()).count());
    let oflows = sw
        .ofctl("dump-flows", "br-int", &[])
        .map_or(0, |s| s.lines().count().saturating_sub(1));
    let version = run(&["ovn-controller", "--version"]).unwrap_or_default();
    let ovs_version = run(&["ovs-vswitchd", "--version"]).unwrap_or_default();
    r.notes.push(format!(
        "{} on {}: chassis {}, br-int on the netdev datapath, afxdp ports \
         (xdp-mode=best-effort), pmd-cpu-mask {mask}; {lflows} logical flows, \
         {oflows} OpenFlow flows on br-int",
        version.lines().next().unwrap_or("ovn-controller").trim(),
        ovs_version.lines().next().unwrap_or("ovs").trim(),
        ovn::CHASSIS,
    ));
    r.notes.push(format!(
        "ovn-nbctl: {}",
        commands
            .iter()
            .map(|c| c.join(" "))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    Ok(())
}

/// Installs Open vSwitch with apt-get when `ovs-vswitchd` is missing.
fn ensure_ovs() -> Result<(), String> {
    sys::ensure_packages(&[("ovs-vswitchd", "openvswitch-switch")])
}

impl Running {
    /// Process ids of the device's own processes (polluxd, ovs-vswitchd, ovsdb-server).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.children.iter().map(|(_, c)| c.id()).collect();
        pids.extend(self.ovs.iter().flat_map(OvsSwitch::pids));
        pids
    }

    /// After the front end connected (vhost-user scenarios): waits until Open vSwitch has
    /// every interface in its datapath. Its vhost ports are configured only once the
    /// front end is there, and a port that fails then (no memory pool, say) is left out
    /// of the datapath with nothing in the database: every trial would lose every frame.
    pub fn wait_connected(&self) -> Result<(), String> {
        let Some(sw) = &self.ovs else {
            return Ok(());
        };
        let names = sw
            .vsctl(&[
                "--format=csv",
                "--data=bare",
                "--no-headings",
                "--columns=name",
                "list",
                "Interface",
            ])
            .map_err(|e| e.to_string())?;
        let names: Vec<&str> = names
            .lines()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let in_datapath = || {
            sw.appctl(&["dpctl/show"]).is_ok_and(|dp| {
                names
                    .iter()
                    .all(|n| dp.lines().any(|l| l.split_whitespace().nth(2) == Some(*n)))
            })
        };
        wait_for(
            "OVS ports in the datapath",
            Duration::from_secs(10),
            in_datapath,
        )
        .map_err(|e| {
            let errors: Vec<String> = sw
                .log_tail("vswitchd.log", 400)
                .lines()
                .filter(|l| l.contains("|ERR|"))
                .map(String::from)
                .collect();
            format!("{e} ({names:?}); vswitchd errors:\n{}", errors.join("\n"))
        })
    }

    /// Device statistics worth keeping with the results (one line each).
    pub fn stats(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(sw) = &self.ovs {
            if let Ok(s) = sw.appctl(&["dpif-netdev/pmd-stats-show"]) {
                out.extend(
                    s.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty()),
                );
            }
            if let Ok(s) = sw.appctl(&["dpctl/show", "-s"]) {
                out.extend(
                    s.lines()
                        .filter(|l| l.contains("dropped") || l.contains("port"))
                        .map(|l| l.trim().to_string()),
                );
            }
        }
        if let Some((_, sock)) = &self.pollux {
            let polluxctl = std::env::current_exe()
                .ok()
                .map(|p| p.with_file_name("polluxctl"))
                .filter(|p| p.exists());
            if let Some(ctl) = polluxctl {
                let ctl = ctl.to_string_lossy();
                let sock = sock.to_string_lossy();
                if let Ok(s) = run(&[&ctl, "--socket", &sock, "show", "stats"]) {
                    out.extend(s.lines().map(|l| l.trim_end().to_string()));
                }
            }
        }
        out
    }
}

impl Running {
    /// Stops the device and returns its notes, with what it logged when stopping.
    pub fn stop(mut self) -> Vec<String> {
        self.shutdown();
        std::mem::take(&mut self.notes)
    }

    fn shutdown(&mut self) {
        self.xdp = None;
        if let Some(o) = self.ovn.take() {
            // Its logs go with its directory: keep their last lines first.
            for file in ["northd.log", "controller.log"] {
                let tail = o.log_tail(file);
                self.notes.extend(
                    tail.lines()
                        .rev()
                        .take(6)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .map(|l| format!("{file}: {}", l.trim())),
                );
            }
        }
        if let Some(sw) = self.ovs.take() {
            // `exit --cleanup` removes the afxdp ports (and their XDP programs) before the
            // kit stops the daemons.
            let _ = sw.appctl(&["exit", "--cleanup"]);
        }
        while let Some((name, mut child)) = self.children.pop() {
            sys::kill(child.id(), libc::SIGINT);
            let end = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > end => {
                        eprintln!("pollux-bench: {name} did not stop in 10 s; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if let Some(log) = &self.fwd_log {
            // xsk-fwd prints its counters when it stops.
            if let Ok(text) = fs::read_to_string(log) {
                self.notes.extend(
                    text.lines()
                        .skip_while(|l| !l.contains("stopped"))
                        .map(|l| l.trim().to_string()),
                );
            }
        }
        if let Some((log, _)) = &self.pollux {
            // polluxd logs its counters when it stops.
            if let Ok(text) = fs::read_to_string(log) {
                self.notes.extend(
                    text.lines()
                        .skip_while(|l| !l.contains("stopping") && !l.contains("stopped"))
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| l.trim().to_string()),
                );
            }
        }
        for log in &self.logs {
            if let Ok(text) = fs::read_to_string(log) {
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                self.notes.extend(
                    lines[lines.len().saturating_sub(12)..]
                        .iter()
                        .map(|l| l.trim().to_string()),
                );
            }
        }
        for c in self.cleanup.drain(..) {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            let _ = run_in(&self.ns, &args);
        }
        for (path, value) in self.restore.drain(..) {
            let _ = write_in(&self.ns, &path, &value);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}
