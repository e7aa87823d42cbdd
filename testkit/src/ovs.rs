//! A private Open vSwitch instance (userspace `netdev` datapath) inside one network
//! namespace: an independent 802.1Q implementation to test Pollux's uplinks against.
//!
//! [`OvsSwitch::start`] makes a fresh database in a work directory of its own and runs
//! `ovsdb-server` and `ovs-vswitchd` as children of the test. Every socket, pid file, log
//! and bridge management socket lives in that directory (the `OVS_*DIR` variables point
//! there for every OVS command it runs), so it never touches `/var/run/openvswitch` or a
//! system-wide instance. `ovs-vswitchd` runs inside the given namespace (`ip netns exec`),
//! so it only ever sees that namespace's interfaces. Ports are `type=system` (AF_PACKET),
//! which works on veth (the benchmark harness adds `type=afxdp` ports instead). Dropping
//! the switch stops both daemons, waits for them and removes the work directory.
//!
//! Namespaces, captures and bounded commands come from [`crate::netns`]; the daemons are
//! [`Proc`]s (process group killed and reaped on drop).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{self, Proc};

/// The OVS database schema installed by Debian's `openvswitch-common`.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// The programs [`OvsSwitch`] runs (Debian: `apt-get install -y openvswitch-switch`).
pub const OVS_TOOLS: &[&str] = &[
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-appctl",
    "ovs-ofctl",
];

/// Longest work directory accepted: OVS puts `<bridge>.mgmt` sockets there, and a Unix
/// socket path has at most 107 bytes.
pub const MAX_WORKDIR_LEN: usize = 80;

/// How long any one OVS command may take (`--timeout` of the OVS tools); adding an
/// `afxdp` port waits for its XDP program and sockets, which takes seconds.
const CMD_TIMEOUT_SECS: u32 = 30;

/// How long a daemon may take to come up or to go down.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the ports may take to come up ([`OvsSwitch::wait_ready`]).
const PORTS_TIMEOUT: Duration = Duration::from_secs(15);

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Tools are looked up as the namespace library does (`PATH`, then the sbin directories
/// where Debian puts the OVS daemons).
pub use crate::netns::find_tool;

/// The tools in `tools` that are not installed.
pub fn missing_tools(tools: &[&str]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| find_tool(t).is_none())
        .map(|t| t.to_string())
        .collect()
}

/// Runs `cmd` to completion, bounded by `limit` (the child is killed after that), and
/// returns its stdout; a non-zero exit is an error that carries the command and stderr.
fn run_bounded(cmd: Command, limit: Duration) -> io::Result<String> {
    netns::run_checked(cmd, limit).map_err(|e| other(e.to_string()))
}

/// Polls `check` until it returns `Ok(true)` or `limit` passes; the error says what was
/// awaited and carries the last error `check` returned.
fn poll_until(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> io::Result<bool>,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(other(format!(
                "timed out after {limit:?} waiting for {what}; last error: {last}"
            )));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A private Open vSwitch (`ovsdb-server` + `ovs-vswitchd`) running inside one network
/// namespace, with all its state in a work directory of its own.
#[derive(Debug)]
pub struct OvsSwitch {
    netns: String,
    workdir: PathBuf,
    ovsdb: Option<Proc>,
    vswitchd: Option<Proc>,
}

impl OvsSwitch {
    /// Creates `workdir` (it must not exist: it is removed again on drop) with a fresh
    /// database, starts `ovsdb-server` on it, initialises the database and starts
    /// `ovs-vswitchd` inside namespace `netns`. Returns once both answer on their control
    /// sockets.
    pub fn start(netns: &str, workdir: &Path) -> io::Result<OvsSwitch> {
        OvsSwitch::start_with(netns, workdir, &[])
    }

    /// [`OvsSwitch::start`], with `other_config` keys of the `Open_vSwitch` table set
    /// before `ovs-vswitchd` starts (e.g. `("pmd-cpu-mask", "0x2")`), so its first
    /// configuration already has them.
    pub fn start_with(
        netns: &str,
        workdir: &Path,
        other_config: &[(&str, &str)],
    ) -> io::Result<OvsSwitch> {
        OvsSwitch::start_program(netns, workdir, other_config, "ovs-vswitchd")
    }

    /// [`OvsSwitch::start_with`], running `program` (a path or a name on `PATH`) as
    /// `ovs-vswitchd`: Debian's DPDK build is `/usr/lib/openvswitch-switch-dpdk/
    /// ovs-vswitchd-dpdk`, chosen here rather than by the system-wide alternative.
    pub fn start_program(
        netns: &str,
        workdir: &Path,
        other_config: &[(&str, &str)],
        program: &str,
    ) -> io::Result<OvsSwitch> {
        let missing = missing_tools(OVS_TOOLS);
        if !missing.is_empty() {
            return Err(other(format!(
                "Open vSwitch tools not installed: {} (apt-get install -y openvswitch-switch)",
                missing.join(", ")
            )));
        }
        if !Path::new(SCHEMA).is_file() {
            return Err(other(format!("OVS schema {SCHEMA} missing")));
        }
        let workdir = if workdir.is_absolute() {
            workdir.to_path_buf()
        } else {
            std::env::current_dir()?.join(workdir)
        };
        if workdir.as_os_str().len() > MAX_WORKDIR_LEN {
            return Err(other(format!(
                "work directory {} is longer than {MAX_WORKDIR_LEN} bytes (Unix socket paths)",
                workdir.display()
            )));
        }
        if workdir.exists() {
            return Err(other(format!(
                "work directory {} already exists",
                workdir.display()
            )));
        }
        fs::create_dir_all(&workdir)?;
        // From here on, Drop cleans up whatever has been started.
        let mut sw = OvsSwitch {
            netns: netns.to_string(),
            workdir,
            ovsdb: None,
            vswitchd: None,
        };
        let db = sw.path("conf.db");
        let mut create = sw.ovs_cmd("ovsdb-tool");
        create.arg("create").arg(&db).arg(SCHEMA);
        run_bounded(create, DAEMON_TIMEOUT)?;

        let mut ovsdb = sw.ovs_cmd("ovsdb-server");
        ovsdb
            .arg(&db)
            .arg(format!("--remote=punix:{}", sw.path("db.sock").display()))
            .arg(format!("--unixctl={}", sw.path("ovsdb.ctl").display()))
            .arg(format!("--pidfile={}", sw.path("ovsdb.pid").display()))
            .arg(format!("--log-file={}", sw.path("ovsdb.log").display()))
            .arg("--no-chdir");
        sw.ovsdb = Some(Proc::spawn(ovsdb).map_err(|e| other(e.to_string()))?);
        let sock = sw.path("db.sock");
        sw.wait_daemon(
            "ovsdb-server",
            |sw| Ok(sw.ovsdb_running()? && sock.exists()),
        )?;
        sw.vsctl(&["--no-wait", "init"])?;
        for (key, value) in other_config {
            let setting = format!("other_config:{key}={value}");
            sw.vsctl(&["--no-wait", "set", "Open_vSwitch", ".", &setting])?;
        }

        let mut vswitchd = Command::new("ip");
        vswitchd
            .args(["netns", "exec", netns, program])
            .arg(sw.db_target())
            .arg(format!("--unixctl={}", sw.ctl().display()))
            .arg(format!("--pidfile={}", sw.path("vswitchd.pid").display()))
            .arg(format!("--log-file={}", sw.path("vswitchd.log").display()))
            .arg("--no-chdir");
        sw.set_env(&mut vswitchd);
        // `ip netns exec` execs the program, so this child is ovs-vswitchd itself.
        sw.vswitchd = Some(Proc::spawn(vswitchd).map_err(|e| other(e.to_string()))?);
        sw.wait_daemon("ovs-vswitchd", |sw| {
            Ok(sw.vswitchd_running()? && sw.appctl(&["version"]).is_ok())
        })?;
        Ok(sw)
    }

    /// Process ids of `ovsdb-server` and `ovs-vswitchd` (for CPU placement).
    pub fn pids(&self) -> Vec<u32> {
        [&self.ovsdb, &self.vswitchd]
            .into_iter()
            .flatten()
            .map(Proc::pid)
            .collect()
    }

    /// The namespace `ovs-vswitchd` runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The work directory (database, sockets, pid files, logs).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `unix:<workdir>/db.sock`, the private database for `--db=`.
    pub fn db_target(&self) -> String {
        format!("unix:{}", self.path("db.sock").display())
    }

    /// The control socket of `ovs-vswitchd` (for `ovs-appctl -t`).
    pub fn ctl(&self) -> PathBuf {
        self.path("vswitchd.ctl")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.workdir.join(name)
    }

    fn set_env(&self, cmd: &mut Command) {
        for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
            cmd.env(var, &self.workdir);
        }
    }

    /// A command for one of the OVS tools with every `OVS_*DIR` set to the work directory.
    fn ovs_cmd(&self, prog: &str) -> Command {
        let mut cmd = Command::new(prog);
        self.set_env(&mut cmd);
        cmd
    }

    fn ovsdb_running(&mut self) -> io::Result<bool> {
        match self.ovsdb.as_mut().map(Proc::is_running) {
            Some(true) => Ok(true),
            Some(false) => Err(self.exited(self.ovsdb.as_ref(), "ovsdb-server", "ovsdb.log")),
            None => Ok(false),
        }
    }

    fn vswitchd_running(&mut self) -> io::Result<bool> {
        match self.vswitchd.as_mut().map(Proc::is_running) {
            Some(true) => Ok(true),
            Some(false) => Err(self.exited(self.vswitchd.as_ref(), "ovs-vswitchd", "vswitchd.log")),
            None => Ok(false),
        }
    }

    /// The error for a daemon that exited: its log's tail and its stderr.
    fn exited(&self, daemon: Option<&Proc>, name: &str, log: &str) -> io::Error {
        let stderr = daemon.map(Proc::stderr_so_far).unwrap_or_default();
        other(format!(
            "{name} exited; {}\n--- stderr ---\n{stderr}",
            self.log_tail(log, 20)
        ))
    }

    /// Waits until `ready` holds; a daemon that exits meanwhile ends the wait at once.
    fn wait_daemon(
        &mut self,
        what: &str,
        mut ready: impl FnMut(&mut Self) -> io::Result<bool>,
    ) -> io::Result<()> {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            let exited = self.ovsdb_running().and(self.vswitchd_running());
            exited?;
            if ready(self).unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(other(format!(
                    "{what} not ready within {DAEMON_TIMEOUT:?}; {}",
                    self.log_tail(
                        if what == "ovsdb-server" {
                            "ovsdb.log"
                        } else {
                            "vswitchd.log"
                        },
                        20
                    )
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of a file in the work directory, for error messages.
    pub fn log_tail(&self, file: &str, lines: usize) -> String {
        let text = fs::read_to_string(self.path(file)).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!("--- {file} ---\n{}", all[start..].join("\n"))
    }

    /// Runs one OVS tool with the common `--timeout`, bounded a little beyond it.
    fn tool(&self, prog: &str, args: &[&str]) -> io::Result<String> {
        let mut cmd = self.ovs_cmd(prog);
        cmd.arg(format!("--timeout={CMD_TIMEOUT_SECS}")).args(args);
        run_bounded(cmd, Duration::from_secs(u64::from(CMD_TIMEOUT_SECS) + 5))
    }

    /// Runs `ovs-vsctl` against the private database; waits for `ovs-vswitchd` to apply
    /// the change unless `--no-wait` is among `args`.
    pub fn vsctl(&self, args: &[&str]) -> io::Result<String> {
        let db = format!("--db={}", self.db_target());
        self.tool("ovs-vsctl", &[&[db.as_str()], args].concat())
    }

    /// Runs `ovs-appctl` against this `ovs-vswitchd`.
    pub fn appctl(&self, args: &[&str]) -> io::Result<String> {
        let ctl = self.ctl();
        let ctl = ctl.to_string_lossy();
        self.tool("ovs-appctl", &[&["-t", ctl.as_ref()], args].concat())
    }

    /// Runs `ovs-ofctl <command> unix:<workdir>/<bridge>.mgmt <args>`.
    pub fn ofctl(&self, command: &str, bridge: &str, args: &[&str]) -> io::Result<String> {
        let target = format!("unix:{}", self.path(&format!("{bridge}.mgmt")).display());
        self.tool("ovs-ofctl", &[&[command, target.as_str()], args].concat())
    }

    /// Adds bridge `name` on the userspace datapath (`datapath_type=netdev`), in the
    /// default `standalone` mode (one `NORMAL` flow: a learning 802.1Q switch).
    pub fn add_bridge(&self, name: &str) -> io::Result<()> {
        self.vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "bridge",
            name,
            "datapath_type=netdev",
        ])?;
        Ok(())
    }

    /// Adds interface `ifname` of the namespace as a `type=system` (AF_PACKET) port: an
    /// access port on VLAN `tag`, or with `None` a trunk of every VLAN (untagged frames
    /// are VLAN 0 there).
    pub fn add_port(&self, bridge: &str, ifname: &str, tag: Option<u16>) -> io::Result<()> {
        let tag_arg = tag.map(|t| format!("tag={t}"));
        let mut args = vec!["add-port", bridge, ifname];
        if let Some(t) = tag_arg.as_deref() {
            args.extend(["vlan_mode=access", t]);
        }
        self.vsctl(&args)?;
        Ok(())
    }

    /// Adds interface `ifname` as a trunk port (`vlan_mode=trunk`) carrying exactly the
    /// VLANs in `trunks` (all VLANs if empty); frames of other VLANs are dropped.
    pub fn add_trunk(&self, bridge: &str, ifname: &str, trunks: &[u16]) -> io::Result<()> {
        if trunks.is_empty() {
            return self.add_port(bridge, ifname, None);
        }
        let list: Vec<String> = trunks.iter().map(u16::to_string).collect();
        let trunks_arg = format!("trunks={}", list.join(","));
        self.vsctl(&["add-port", bridge, ifname, "vlan_mode=trunk", &trunks_arg])?;
        Ok(())
    }

    /// Waits (at most 10 s) until every interface in the database has an OpenFlow port
    /// number and no error, and shows up in the datapath (`dpif/show`).
    pub fn wait_ready(&self) -> io::Result<()> {
        poll_until("OVS ports to come up", PORTS_TIMEOUT, || {
            let rows = self.vsctl(&[
                "--format=csv",
                "--data=bare",
                "--no-headings",
                "--columns=name,ofport,error",
                "list",
                "Interface",
            ])?;
            let dpif = self.appctl(&["dpif/show"])?;
            for row in rows.lines().filter(|r| !r.trim().is_empty()) {
                let cols: Vec<&str> = row.splitn(3, ',').collect();
                let (name, ofport, error) = match cols.as_slice() {
                    [n, o, e] => (n.trim(), o.trim(), e.trim().trim_matches('"')),
                    _ => return Err(other(format!("unexpected ovs-vsctl row {row:?}"))),
                };
                if !error.is_empty() {
                    return Err(other(format!("interface {name}: {error}")));
                }
                let up = ofport.parse::<i64>().is_ok_and(|p| p > 0);
                let in_dp = dpif
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name));
                if !up || !in_dp {
                    return Err(other(format!(
                        "interface {name} not ready (ofport {ofport:?}); dpif/show:\n{dpif}"
                    )));
                }
            }
            Ok(true)
        })
    }

    /// The bridge's MAC learning table (`fdb/show`): `port VLAN MAC Age` rows.
    pub fn fdb_show(&self, bridge: &str) -> io::Result<String> {
        self.appctl(&["fdb/show", bridge])
    }

    /// The (MAC, VLAN) entries of the learning table, with the OpenFlow port they point to.
    pub fn fdb_entries(&self, bridge: &str) -> io::Result<Vec<FdbEntry>> {
        let text = self.fdb_show(bridge)?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    [port, vlan, mac, ..] => Some(FdbEntry {
                        port: port.to_string(),
                        vlan: vlan.parse().ok()?,
                        mac: mac.to_ascii_lowercase(),
                    }),
                    _ => None,
                }
            })
            .collect())
    }

    /// The OpenFlow port number of interface `ifname`.
    pub fn ofport(&self, ifname: &str) -> io::Result<String> {
        Ok(self
            .vsctl(&["get", "Interface", ifname, "ofport"])?
            .trim()
            .to_string())
    }

    /// The bridge's OpenFlow table (`ovs-ofctl dump-flows`).
    pub fn dump_flows(&self, bridge: &str) -> io::Result<String> {
        self.ofctl("dump-flows", bridge, &[])
    }

    /// The datapath flows the bridge installed (`dpif/dump-flows`).
    pub fn dump_datapath_flows(&self, bridge: &str) -> io::Result<String> {
        self.appctl(&["dpif/dump-flows", bridge])
    }

    /// `ovs-vsctl show`.
    pub fn show(&self) -> io::Result<String> {
        self.vsctl(&["show"])
    }

    /// What went on, for a failing test: `show`, `dpif/show`, flows and the log tails.
    pub fn diagnostics(&self, bridge: &str) -> String {
        let s = |r: io::Result<String>| r.unwrap_or_else(|e| format!("<{e}>"));
        format!(
            "--- ovs-vsctl show ---\n{}\n--- dpif/show ---\n{}\n--- fdb/show ---\n{}\n\
             --- dump-flows ---\n{}\n{}\n{}",
            s(self.show()),
            s(self.appctl(&["dpif/show"])),
            s(self.fdb_show(bridge)),
            s(self.dump_flows(bridge)),
            self.log_tail("vswitchd.log", 30),
            self.log_tail("ovsdb.log", 10),
        )
    }
}

/// One row of [`OvsSwitch::fdb_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// OpenFlow port number (as `fdb/show` prints it).
    pub port: String,
    /// VLAN ID.
    pub vlan: u16,
    /// MAC address, lower case.
    pub mac: String,
}

impl Drop for OvsSwitch {
    fn drop(&mut self) {
        // ovs-vswitchd first (it removes its tap devices on SIGTERM), then the database.
        for daemon in [self.vswitchd.take(), self.ovsdb.take()]
            .into_iter()
            .flatten()
        {
            let _ = daemon.stop(Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

/// Work directories `<parent>/<prefix><pid>` left by test runs that were killed: for each
/// whose pid is no longer alive, stops the daemons named in its pid files (only if their
/// command line names that directory) and removes it. Returns the directories removed.
pub fn sweep_stale_workdirs(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(parent) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        for pidfile in ["vswitchd.pid", "ovsdb.pid"] {
            let Ok(text) = fs::read_to_string(dir.join(pidfile)) else {
                continue;
            };
            let Ok(daemon) = text.trim().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(format!("/proc/{daemon}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
                if let Ok(pid) = libc::pid_t::try_from(daemon) {
                    // SAFETY: kill has no memory-safety preconditions; the process runs a
                    // daemon of this dead run's work directory (checked just above).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}
