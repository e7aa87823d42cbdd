//! A private OVN for the `ovn` device: its northbound and southbound databases,
//! `ovn-northd` and `ovn-controller`, driving the harness's private Open vSwitch
//! ([`OvsSwitch`], userspace datapath) as one chassis.
//!
//! Everything lives in a work directory of the run (databases, sockets, pid files, logs;
//! the `OVN_*DIR` variables point there for every OVN command), so nothing touches
//! `/var/run/ovn`, `/etc/ovn` or a system-wide instance. `ovn-controller` finds the
//! switch's database through its argument and its `br-int.mgmt` socket through
//! `OVS_RUNDIR` (the switch's work directory); it creates `br-int` itself, with the
//! datapath type `ovn-bridge-datapath-type` names (`netdev`). The daemons are
//! [`Proc`]s of the harness: dropping [`Ovn`] stops them (controller first) and removes
//! the directory. They run inside the DUT's namespace (they talk over Unix sockets only),
//! so where no destructor runs (an abort, SIGKILL) deleting the namespace kills them too:
//! the panic hook does, and so does the next run for a dead one's namespaces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pollux_testkit::netns::{self, Proc};
use pollux_testkit::ovs::OvsSwitch;

use super::dut::wait_for;

/// The chassis name (`external_ids:system-id`); gateway ports are scheduled on it.
pub const CHASSIS: &str = "pollux-bench";

/// What the `ovn` device runs, `(command, Debian package)`: installed with apt-get when
/// missing, as Open vSwitch is for `ovs-afxdp`.
pub const PACKAGES: [(&str, &str); 4] = [
    ("ovs-vswitchd", "openvswitch-switch"),
    ("ovn-northd", "ovn-central"),
    ("ovsdb-server", "openvswitch-switch"),
    ("ovn-controller", "ovn-host"),
];

/// Schemas installed by Debian's `ovn-common`.
const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";

/// How long a daemon may take to come up, and `ovn-nbctl --wait=hv` to see the chassis
/// catch up.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The `ovs-vsctl set Open_vSwitch .` arguments that make the switch an OVN chassis
/// whose southbound database is `sb`: one chassis, Geneve on loopback (no tunnel is ever
/// made with one chassis), bridges on the userspace datapath.
pub fn chassis_settings(sb: &str) -> Vec<String> {
    [
        format!("external_ids:system-id={CHASSIS}"),
        format!("external_ids:ovn-remote={sb}"),
        "external_ids:ovn-encap-type=geneve".into(),
        "external_ids:ovn-encap-ip=127.0.0.1".into(),
        "external_ids:ovn-bridge-datapath-type=netdev".into(),
    ]
    .into()
}

/// The running OVN daemons; dropping it stops them.
#[derive(Debug)]
pub struct Ovn {
    dir: PathBuf,
    /// The namespace the daemons run in (the switch's).
    netns: String,
    /// Last started first: controller, northd, southbound, northbound.
    procs: Vec<(&'static str, Proc)>,
}

impl Ovn {
    /// Creates `dir` (removed again on drop), starts the databases and `ovn-northd`,
    /// makes `sw` a chassis and starts `ovn-controller` on it; returns once `br-int`
    /// exists.
    pub fn start(dir: &Path, sw: &OvsSwitch) -> Result<Ovn, String> {
        for schema in [NB_SCHEMA, SB_SCHEMA] {
            if !Path::new(schema).is_file() {
                return Err(format!("OVN schema {schema} missing (package ovn-common)"));
            }
        }
        if dir.exists() {
            return Err(format!("{} already exists", dir.display()));
        }
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // From here on, Drop cleans up whatever has been started.
        let mut ovn = Ovn {
            dir: dir.to_path_buf(),
            netns: sw.netns().to_string(),
            procs: Vec::new(),
        };
        for (db, schema) in [("nb", NB_SCHEMA), ("sb", SB_SCHEMA)] {
            let file = ovn.path(&format!("{db}.db"));
            let mut create = ovn.cmd("ovsdb-tool");
            create.arg("create").arg(&file).arg(schema);
            netns::run_checked(create, TIMEOUT).map_err(|e| e.to_string())?;
            let mut server = ovn.daemon("ovsdb-server");
            server
                .arg(&file)
                .arg(format!("--remote=punix:{}", ovn.sock(db)))
                .arg(format!(
                    "--unixctl={}",
                    ovn.path(&format!("{db}.ctl")).display()
                ))
                .arg(format!(
                    "--pidfile={}",
                    ovn.path(&format!("{db}.pid")).display()
                ))
                .arg(format!(
                    "--log-file={}",
                    ovn.path(&format!("{db}.log")).display()
                ))
                .arg("--no-chdir");
            ovn.spawn(
                if db == "nb" {
                    "nb ovsdb-server"
                } else {
                    "sb ovsdb-server"
                },
                server,
            )?;
            let sock = PathBuf::from(ovn.sock(db));
            wait_for(&format!("OVN {db} database"), TIMEOUT, || sock.exists())?;
        }
        let mut northd = ovn.daemon("ovn-northd");
        northd
            .arg(format!("--ovnnb-db=unix:{}", ovn.sock("nb")))
            .arg(format!("--ovnsb-db=unix:{}", ovn.sock("sb")))
            .arg(format!("--unixctl={}", ovn.path("northd.ctl").display()))
            .arg(format!("--pidfile={}", ovn.path("northd.pid").display()))
            .arg(format!("--log-file={}", ovn.path("northd.log").display()))
            .arg("--no-chdir");
        ovn.spawn("ovn-northd", northd)?;

        let mut args = vec!["set".to_string(), "Open_vSwitch".into(), ".".into()];
        args.extend(chassis_settings(&format!("unix:{}", ovn.sock("sb"))));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sw.vsctl(&args).map_err(|e| e.to_string())?;
        let mut controller = ovn.daemon("ovn-controller");
        // The switch's management sockets (br-int.mgmt) are in its work directory.
        controller
            .env("OVS_RUNDIR", sw.workdir())
            .arg(sw.db_target())
            .arg(format!(
                "--pidfile={}",
                ovn.path("controller.pid").display()
            ))
            .arg(format!(
                "--log-file={}",
                ovn.path("controller.log").display()
            ))
            .arg("--no-chdir");
        ovn.spawn("ovn-controller", controller)?;
        wait_for("ovn-controller to create br-int", TIMEOUT, || {
            sw.vsctl(&["br-exists", "br-int"]).is_ok()
        })
        .map_err(|e| {
            format!(
                "{e}; ovn-controller log:\n{}",
                ovn.log_tail("controller.log")
            )
        })?;
        Ok(ovn)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn sock(&self, db: &str) -> String {
        self.path(&format!("{db}.sock")).display().to_string()
    }

    /// A command of the OVN tools with every `OVN_*DIR` set to the work directory.
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        for var in ["OVN_RUNDIR", "OVN_LOGDIR", "OVN_DBDIR", "OVN_SYSCONFDIR"] {
            c.env(var, &self.dir);
        }
        c
    }

    /// [`Ovn::cmd`] for a daemon: run in the namespace (`ip netns exec` execs it, so the
    /// child is the daemon itself).
    fn daemon(&self, prog: &str) -> Command {
        let mut c = self.cmd("ip");
        c.args(["netns", "exec", &self.netns, prog]);
        c
    }

    fn spawn(&mut self, name: &'static str, cmd: Command) -> Result<(), String> {
        let p = Proc::spawn(cmd).map_err(|e| format!("{name}: {e}"))?;
        self.procs.push((name, p));
        Ok(())
    }

    /// Runs `ovn-nbctl` on the northbound database, bounded.
    pub fn nbctl(&self, args: &[&str]) -> Result<String, String> {
        let mut c = self.cmd("ovn-nbctl");
        c.arg(format!("--db=unix:{}", self.sock("nb")))
            .arg(format!("--timeout={}", TIMEOUT.as_secs()))
            .args(args);
        netns::run_checked(c, TIMEOUT + Duration::from_secs(5))
            .map_err(|e| format!("ovn-nbctl {}: {e}", args.join(" ")))
    }

    /// Runs `ovn-sbctl` on the southbound database, bounded.
    pub fn sbctl(&self, args: &[&str]) -> Result<String, String> {
        let mut c = self.cmd("ovn-sbctl");
        c.arg(format!("--db=unix:{}", self.sock("sb")))
            .arg(format!("--timeout={}", TIMEOUT.as_secs()))
            .args(args);
        netns::run_checked(c, TIMEOUT + Duration::from_secs(5))
            .map_err(|e| format!("ovn-sbctl {}: {e}", args.join(" ")))
    }

    /// Waits until the chassis has installed everything the northbound database asks
    /// (`ovn-nbctl --wait=hv sync`).
    pub fn sync(&self) -> Result<(), String> {
        self.nbctl(&["--wait=hv", "sync"]).map(drop)
    }

    /// The last lines of one of the daemons' logs (`controller.log`, `northd.log`).
    pub fn log_tail(&self, file: &str) -> String {
        let text = fs::read_to_string(self.path(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Ovn {
    fn drop(&mut self) {
        while let Some((_, p)) = self.procs.pop() {
            let _ = p.stop(Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_becomes_a_netdev_chassis_of_the_private_database() {
        let s = chassis_settings("unix:/tmp/pbn1.work/ovn-snat/sb.sock");
        assert!(s.contains(&"external_ids:system-id=pollux-bench".to_string()));
        assert!(
            s.contains(&"external_ids:ovn-remote=unix:/tmp/pbn1.work/ovn-snat/sb.sock".to_string())
        );
        assert!(s.contains(&"external_ids:ovn-bridge-datapath-type=netdev".to_string()));
    }
}
