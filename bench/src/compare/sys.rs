//! Small system helpers of the harness: signals, CPU affinity and priorities, and running
//! commands (bounded, through the namespace kit).

use std::io;
use std::process::Command;
use std::time::Duration;

use pollux_testkit::netns;

pub use pollux_testkit::signal::{install_signal_handlers, interrupted};

/// What the harness itself runs, `(command, Debian package)`: installed by
/// [`ensure_packages`] before the run (Open vSwitch only when it is measured).
pub const HARNESS_PACKAGES: [(&str, &str); 3] = [
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("taskset", "util-linux"),
];

/// Installs with apt-get (the harness runs as root) the package of every command that is
/// not found, as scripts/test.sh does on a fresh machine.
pub fn ensure_packages(needed: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(cmd, _)| run(&["sh", "-c", &format!("command -v {cmd}")]).is_err())
        .map(|&(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "pollux-bench: installing {} with apt-get",
        missing.join(" ")
    );
    // Package downloads take longer than the kit's default bound for a command.
    let apt = Duration::from_secs(600);
    run_for(&["apt-get", "update", "-q"], apt)?;
    let mut args = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-q",
    ];
    args.extend(&missing);
    run_for(&args, apt).map(drop)
}

/// Error for an interrupted run.
pub fn interrupted_error() -> String {
    "interrupted".to_string()
}

/// Runs `args` through the namespace kit, bounded by its default timeout, returning
/// stdout; an error carries stderr.
pub fn run(args: &[&str]) -> Result<String, String> {
    run_for(args, netns::DEFAULT_TIMEOUT)
}

/// [`run`] with another bound.
pub fn run_for(args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    netns::run_checked(cmd, limit).map_err(|e| e.to_string())
}

/// Runs `args` inside network namespace `ns`.
pub fn run_in(ns: &str, args: &[&str]) -> Result<String, String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Writes `value` to a sysfs/procfs `path` as seen from namespace `ns` (`ip netns exec`
/// mounts the namespace's own `/sys`, which a `setns` thread would not see).
pub fn write_in(ns: &str, path: &str, value: &str) -> Result<(), String> {
    run_in(ns, &["sh", "-c", &format!("echo {value} > {path}")]).map(drop)
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// Processes whose name (`/proc/PID/comm`, 15 bytes at most) starts with `prefix`.
pub fn pids_named(prefix: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            let comm = comm.trim_end();
            if comm.starts_with(prefix) {
                out.push((pid, comm.to_string()));
            }
        }
    }
    out.sort();
    out
}

/// Threads of processes `pids` whose name starts with `prefix`: `(tid, name)`.
pub fn threads_named(prefix: &str, pids: &[u32]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) {
                let comm = comm.trim_end();
                if comm.starts_with(prefix) {
                    out.push((tid, comm.to_string()));
                }
            }
        }
    }
    out.sort();
    out
}

/// How long thread `tid` has waited runnable while others ran on its CPU (ns,
/// `/proc/<tid>/schedstat`) and how often it was preempted (involuntary context
/// switches): what other work took from a device's datapath thread.
pub fn preemption(tid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    let waited = stat.split_whitespace().nth(1)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    let preempted = status
        .lines()
        .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()?;
    Some((waited, preempted))
}

/// Gives thread `tid` the real-time policy SCHED_FIFO at `prio` (0: back to SCHED_OTHER).
pub fn set_fifo(tid: u32, prio: u32) -> Result<(), String> {
    let tid = tid.to_string();
    if prio == 0 {
        run(&["chrt", "-o", "-p", "0", &tid]).map(drop)
    } else {
        run(&["chrt", "-f", "-p", &prio.to_string(), &tid]).map(drop)
    }
}

/// Sets thread `tid`'s nice value (on Linux `setpriority(PRIO_PROCESS)` on a thread id
/// applies to that thread alone).
pub fn set_nice(tid: u32, nice: i32) -> Result<(), String> {
    run(&["renice", "-n", &nice.to_string(), "-p", &tid.to_string()]).map(drop)
}

/// The calling thread's id.
pub fn gettid() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Sends `sig` to `pid`.
pub fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; a stale pid at worst signals nothing (we only
    // signal children we spawned and have not reaped).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}
