//! Network-namespace topologies for end-to-end tests and the demo, with guaranteed cleanup.
//!
//! Everything here runs real commands (`ip`, `ping`, `iperf3`, `tcpdump`) and needs root
//! (`CAP_NET_ADMIN` and `CAP_SYS_ADMIN`). Tests call [`require_root`] and
//! [`require_tools`] first: both panic with a message naming what is missing, so a test
//! never passes by silently skipping.
//!
//! # Naming scheme
//!
//! Every [`Topology`] gets a [`Prefix`] `<root><pid-hex>t<counter>`, e.g. `plx1f3at0`:
//!
//! - `root` is [`PREFIX_ROOT`] (`plx`) unless a caller picks another one;
//! - `pid-hex` is the creating process's PID in lowercase hex (at most 6 digits, since
//!   `pid_max` ≤ 2²²), so parallel test binaries never collide and [`remove_stale`] can
//!   tell whether the creator is still alive;
//! - `counter` is a per-process decimal counter, so parallel tests (threads) in one
//!   binary never collide.
//!
//! A namespace is named `<prefix>-<role>`, e.g. `plx1f3at0-a`; roles are 1–8 characters
//! of `[a-z0-9]`. Interfaces are created directly inside their namespaces (never in the
//! root namespace), so interface names need to be unique only per namespace and carry no
//! prefix; they are checked against the kernel's 15-byte limit. [`Prefix::ifname`] builds
//! a prefixed interface name for the rare case one is needed (at most 15 bytes, checked).
//!
//! # Cleanup
//!
//! - [`Netns`] deletes its namespace on drop (also while a panic unwinds), after killing
//!   every process still inside it (`ip netns pids`), so no namespace survives invisibly.
//! - [`Proc`] kills its process group and reaps it on drop.
//! - [`Topology`] drops its processes first, then its namespaces; deleting a namespace
//!   deletes its veth ends.
//! - A process that dies without unwinding (SIGKILL, `panic = "abort"`) leaves its
//!   namespaces behind: [`remove_stale`] deletes every namespace matching the pattern
//!   whose creating PID is dead; call it at the start of a test run. The first
//!   [`Prefix::next`] in a process also deletes namespaces carrying this process's own
//!   PID (left by an earlier process that had the same PID), so a reused PID never
//!   collides.
//!
//! # Network hygiene
//!
//! Test traffic stays inside namespaces the test created, and addresses come only from
//! 198.18.0.0/15 and 203.0.113.0/24: [`Topology::addr`], [`Topology::route`] and every
//! probe reject anything else. Every command runs with a bounded time ([`DEFAULT_TIMEOUT`]
//! unless stated), probes have bounded counts and durations.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The default root of every prefix: `plx` (Pollux).
pub const PREFIX_ROOT: &str = "plx";

/// Upper bound for any command run through this module unless a caller gives another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAMSIZ_MAX: usize = 15;

/// Most echo requests one [`ping`] may send.
pub const PING_MAX_COUNT: u32 = 100;
/// Longest time one [`ping`] may take.
pub const PING_MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `-t` an [`iperf3_client`] run may have, in seconds.
pub const IPERF3_MAX_SECS: u32 = 10;
/// Most frames one capture may wait for.
pub const CAPTURE_MAX_COUNT: u32 = 10_000;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// What went wrong; every variant that comes from a command names the command line.
#[derive(Debug)]
pub enum Error {
    /// The command could not be started (e.g. the tool is not installed).
    Spawn { cmd: String, source: io::Error },
    /// The command ran and exited unsuccessfully.
    Failed {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The command did not finish in time and was killed.
    Timeout {
        cmd: String,
        after: Duration,
        stderr: String,
    },
    /// A caller's argument was rejected before anything ran.
    Invalid(String),
    /// A system call or file operation failed.
    Io { what: String, source: io::Error },
    /// A command's output could not be understood.
    Parse { what: String, output: String },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Spawn { cmd, source } => write!(f, "cannot start `{cmd}`: {source}"),
            Error::Failed {
                cmd,
                status,
                stderr,
            } => write!(f, "`{cmd}` failed ({status}): {}", stderr.trim()),
            Error::Timeout { cmd, after, stderr } => {
                write!(f, "`{cmd}` timed out after {after:?}: {}", stderr.trim())
            }
            Error::Invalid(msg) => write!(f, "invalid argument: {msg}"),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::Parse { what, output } => {
                write!(f, "cannot parse {what} from output: {}", output.trim())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

// ---------------------------------------------------------------------------------------
// Preconditions
// ---------------------------------------------------------------------------------------

/// Removes the namespaces that earlier, dead runs left (see [`remove_stale`]), once per
/// test process.
pub fn remove_stale_once() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let removed = remove_stale(PREFIX_ROOT).expect("remove_stale");
        if !removed.is_empty() {
            eprintln!("removed stale namespaces: {removed:?}");
        }
    });
}

/// The start of a test that must not run beside the others of its process (they share
/// daemons, CPUs and timing): root and `tools` checked, stale namespaces removed once,
/// and a guard that keeps the next such test waiting until this one ends.
pub fn exclusive(tools: &[&str]) -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    require_root();
    require_tools(tools);
    // A test that failed while holding the guard poisons it; the next one still runs.
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    remove_stale_once();
    guard
}

/// Panics unless the process runs as root (namespaces need `CAP_SYS_ADMIN`).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN); \
         effective uid is {euid}: run it as root with the ignored tests included, e.g. \
         `sudo -E cargo test --workspace -- --include-ignored`"
    );
}

/// Panics naming every tool of `tools` not found on `PATH` (or in `/usr/sbin`, `/sbin`).
///
/// `ip` is always required, whether listed or not.
pub fn require_tools(tools: &[&str]) {
    let mut wanted: Vec<&str> = vec!["ip"];
    wanted.extend(tools.iter().copied().filter(|t| *t != "ip"));
    let missing: Vec<&str> = wanted
        .into_iter()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|t| package_of(t)).collect();
        panic!(
            "required tools missing: {} (install with `apt-get install -y {}`; \
             scripts/test.sh does this)",
            missing.join(", "),
            packages.join(" ")
        );
    }
}

fn package_of(tool: &str) -> &str {
    match tool {
        "ip" | "bridge" => "iproute2",
        "ping" => "iputils-ping",
        "arping" => "iputils-arping",
        "sysctl" => "procps",
        "dhclient" => "isc-dhcp-client",
        "dhcpcd" => "dhcpcd5",
        "unshare" => "util-linux",
        other => other,
    }
}

/// Where `tool` lives, searching `PATH` and the sbin directories.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------------------
// Address hygiene
// ---------------------------------------------------------------------------------------

/// Whether `ip` is in 198.18.0.0/15 or 203.0.113.0/24, the only ranges tests may use.
pub fn is_test_addr(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    (o[0] == 198 && (o[1] == 18 || o[1] == 19)) || (o[0] == 203 && o[1] == 0 && o[2] == 113)
}

fn check_test_ip(s: &str) -> Result<Ipv4Addr> {
    let ip: Ipv4Addr = s
        .parse()
        .map_err(|_| Error::Invalid(format!("`{s}` is not an IPv4 address")))?;
    if !is_test_addr(ip) {
        return invalid(format!(
            "{ip} is outside 198.18.0.0/15 and 203.0.113.0/24 (network hygiene)"
        ));
    }
    Ok(ip)
}

/// Checks an address a probe sends to or binds: an IPv4 test address, or an IPv6 address
/// in 2001:db8::/32 (the documentation range, which the IPv6 tests use only inside their
/// namespaces, besides link-local addresses).
fn check_test_host(s: &str) -> Result<()> {
    if !s.contains(':') {
        return check_test_ip(s).map(drop);
    }
    let ip: Ipv6Addr = s
        .parse()
        .map_err(|_| Error::Invalid(format!("`{s}` is not an IPv6 address")))?;
    if ip.segments()[..2] != [0x2001, 0x0db8] {
        return invalid(format!("{ip} is outside 2001:db8::/32 (network hygiene)"));
    }
    Ok(())
}

/// Checks `a.b.c.d/len` with the address and the whole prefix inside a test range.
fn check_test_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| Error::Invalid(format!("`{s}` is not of the form a.b.c.d/len")))?;
    let ip = check_test_ip(ip)?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or_else(|| Error::Invalid(format!("bad prefix length in `{s}`")))?;
    let min_len = if ip.octets()[0] == 198 { 15 } else { 24 };
    if len < min_len {
        return invalid(format!(
            "`{s}` reaches outside 198.18.0.0/15 and 203.0.113.0/24 (network hygiene)"
        ));
    }
    Ok((ip, len))
}

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAMSIZ_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "interface name `{name}` must be 1-{IFNAMSIZ_MAX} bytes of [A-Za-z0-9._-]"
        ))
    }
}

fn check_mac(mac: &str) -> Result<()> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        invalid(format!("`{mac}` is not a MAC address aa:bb:cc:dd:ee:ff"))
    }
}

// ---------------------------------------------------------------------------------------
// Running commands with a bound
// ---------------------------------------------------------------------------------------

fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A pipe drained by a thread into a shared buffer, so the child never blocks on it and
/// the output can be looked at while the child runs.
#[derive(Debug, Clone, Default)]
struct Drain {
    buf: Arc<Mutex<(Vec<u8>, bool)>>,
}

impl Drain {
    fn start(mut pipe: impl Read + Send + 'static) -> Drain {
        let d = Drain::default();
        let buf = Arc::clone(&d.buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => lock(&buf).0.extend_from_slice(&chunk[..n]),
                }
            }
            lock(&buf).1 = true;
        });
        d
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.buf).0).into_owned()
    }

    fn bytes(&self) -> Vec<u8> {
        lock(&self.buf).0.clone()
    }

    /// Waits up to `limit` for end of file (a grandchild may hold the pipe open).
    fn wait_eof(&self, limit: Duration) {
        let end = Instant::now() + limit;
        while !lock(&self.buf).1 && Instant::now() < end {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process (in its own process group) that is killed and reaped on drop.
///
/// Its stdout and stderr are collected in the background and can be read while it runs.
#[derive(Debug)]
pub struct Proc {
    cmd: String,
    child: Option<Child>,
    stdout: Drain,
    stderr: Drain,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr collected.
    pub fn spawn(mut cmd: Command) -> Result<Proc> {
        let line = cmdline(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
        let stdout = Drain::start(child.stdout.take().expect("stdout is piped"));
        let stderr = Drain::start(child.stderr.take().expect("stderr is piped"));
        Ok(Proc {
            cmd: line,
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// The command line, for messages.
    pub fn cmdline(&self) -> &str {
        &self.cmd
    }

    /// The process ID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.text()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// Waits up to `limit` until stderr contains `needle`; false if it did not, or if the
    /// process exited first.
    pub fn wait_stderr_contains(&mut self, needle: &str, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.stderr.text().contains(needle) {
                return true;
            }
            if !self.is_running() || Instant::now() >= end {
                return self.stderr.text().contains(needle);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it still runs.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        let Some(child) = self.child.as_mut() else {
            return invalid("process already collected");
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) if Instant::now() >= end => return Ok(None),
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    return Err(Error::Io {
                        what: format!("waiting for `{}`", self.cmd),
                        source,
                    })
                }
            }
        }
    }

    /// Sends `sig` to the whole process group.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill has no memory-safety preconditions; the group is ours (we
                // made the child its leader) and it is not reaped yet, so its ID is
                // not reused.
                unsafe { libc::kill(-pid, sig) };
            }
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after `grace`), reaps it and returns its
    /// exit status and output.
    pub fn stop(mut self, grace: Duration) -> Result<Output> {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            if self.wait_timeout(grace)?.is_none() {
                self.signal(libc::SIGKILL);
            }
        }
        self.collect()
    }

    /// Waits up to `limit` for the process to exit; kills it and reports
    /// [`Error::Timeout`] if it did not. The output is returned whatever the exit status.
    pub fn wait_output(mut self, limit: Duration) -> Result<Output> {
        if self.wait_timeout(limit)?.is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.collect();
            return Err(Error::Timeout {
                cmd: self.cmd.clone(),
                after: limit,
                stderr: self.stderr.text(),
            });
        }
        self.collect()
    }

    fn collect(&mut self) -> Result<Output> {
        let Some(mut child) = self.child.take() else {
            return invalid("process already collected");
        };
        let status = child.wait().map_err(|source| Error::Io {
            what: format!("reaping `{}`", self.cmd),
            source,
        })?;
        self.stdout.wait_eof(Duration::from_secs(1));
        self.stderr.wait_eof(Duration::from_secs(1));
        Ok(Output {
            status,
            stdout: self.stdout.bytes(),
            stderr: self.stderr.bytes(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                    // SAFETY: as in `signal`: our own, not yet reaped process group.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
            let _ = child.wait();
        }
    }
}

/// Runs `cmd` to completion within `limit`; the output whatever the exit status.
pub fn run_bounded(cmd: Command, limit: Duration) -> Result<Output> {
    Proc::spawn(cmd)?.wait_output(limit)
}

/// Runs `cmd` within `limit` and returns its stdout; [`Error::Failed`] with its stderr if
/// it exits unsuccessfully.
pub fn run_checked(cmd: Command, limit: Duration) -> Result<String> {
    let line = cmdline(&cmd);
    let out = run_bounded(cmd, limit)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            cmd: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn ip_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(args);
    c
}

/// Runs `ip ARGS` in the root namespace (only for `ip netns` management here).
fn ip(args: &[&str]) -> Result<String> {
    run_checked(ip_cmd(args), DEFAULT_TIMEOUT)
}

// ---------------------------------------------------------------------------------------
// Prefixes and stale namespaces
// ---------------------------------------------------------------------------------------

/// Serializes `ip netns add/delete` within the process: the first `ip netns add` on a
/// machine sets up the `/run/netns` mount, and concurrent first calls can stack mounts.
static NETNS_LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEPT_ROOTS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The unique name stem of one topology: `<root><pid-hex>t<counter>` (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// A fresh prefix under [`PREFIX_ROOT`].
    pub fn next() -> Prefix {
        Prefix::next_under(PREFIX_ROOT).expect("PREFIX_ROOT is valid")
    }

    /// A fresh prefix under `root` (1–4 lowercase letters, ending in a non-hex letter so
    /// the PID that follows can be told apart).
    pub fn next_under(root: &str) -> Result<Prefix> {
        check_root(root)?;
        {
            // Once per root and process: anything carrying our PID was left by a dead
            // process that had our PID. Held while sweeping, so no namespace of ours is
            // created before the sweep ends.
            let mut swept = lock(&SWEPT_ROOTS);
            if swept.insert(root.to_owned()) {
                let _ = remove_matching(root, |pid| pid == std::process::id());
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(Prefix(format!("{root}{:x}t{n}", std::process::id())))
    }

    /// The prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The namespace name for `role`: `<prefix>-<role>`.
    pub fn ns_name(&self, role: &str) -> Result<String> {
        check_role(role)?;
        Ok(format!("{}-{role}", self.0))
    }

    /// `<prefix><suffix>` as an interface name, if it fits in 15 bytes.
    pub fn ifname(&self, suffix: &str) -> Result<String> {
        let name = format!("{}{suffix}", self.0);
        check_ifname(&name)?;
        Ok(name)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_root(root: &str) -> Result<()> {
    let ok = (1..=4).contains(&root.len())
        && root.bytes().all(|b| b.is_ascii_lowercase())
        && !root.as_bytes()[root.len() - 1].is_ascii_hexdigit();
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "prefix root `{root}` must be 1-4 lowercase letters ending in g-z"
        ))
    }
}

fn check_role(role: &str) -> Result<()> {
    let ok = (1..=8).contains(&role.len())
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        invalid(format!("role `{role}` must be 1-8 characters of [a-z0-9]"))
    }
}

/// Parses `<root><pid-hex>t<counter>-<role>` and returns the PID.
pub fn parse_ns_name(root: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(root)?;
    let (pid_hex, rest) = rest.split_once('t')?;
    let (counter, role) = rest.split_once('-')?;
    let hex_ok = (1..=8).contains(&pid_hex.len())
        && pid_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let counter_ok = !counter.is_empty() && counter.bytes().all(|b| b.is_ascii_digit());
    if !hex_ok || !counter_ok || check_role(role).is_err() {
        return None;
    }
    u32::from_str_radix(pid_hex, 16).ok()
}

/// Names of all namespaces `ip netns list` shows.
pub fn list_netns() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Whether a process with this PID exists.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Deletes every namespace named `<prefix_root><pid-hex>t<n>-<role>` whose creating PID
/// is dead, after killing the processes left inside it. Returns the deleted names.
///
/// Call it at the start of a test run; it never touches namespaces of live processes, so
/// it is safe while other test binaries run. (PIDs are those of the PID namespace the
/// caller runs in: do not share `/run/netns` between PID namespaces.)
pub fn remove_stale(prefix_root: &str) -> Result<Vec<String>> {
    check_root(prefix_root)?;
    remove_matching(prefix_root, |pid| !pid_alive(pid))
}

/// Deletes every namespace under `prefix_root` that this process created. For a panic
/// hook: where panics abort, no [`Netns`] is dropped, so nothing else would delete them.
pub fn remove_own(prefix_root: &str) -> Result<Vec<String>> {
    check_root(prefix_root)?;
    remove_matching(prefix_root, |pid| pid == std::process::id())
}

fn remove_matching(root: &str, doomed: impl Fn(u32) -> bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut first_err = None;
    for name in list_netns()? {
        match parse_ns_name(root, &name) {
            Some(pid) if doomed(pid) => match delete_netns(&name) {
                Ok(()) => removed.push(name),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            },
            _ => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// Kills every process inside namespace `name`, then deletes it.
fn delete_netns(name: &str) -> Result<()> {
    kill_netns_pids(name);
    let _guard = lock(&NETNS_LOCK);
    match ip(&["netns", "delete", name]) {
        Ok(_) => Ok(()),
        // Someone else (a concurrent `remove_stale`) deleted it first: that is success.
        Err(_) if !Path::new("/run/netns").join(name).exists() => Ok(()),
        Err(e) => Err(e),
    }
}

/// SIGKILLs every process `ip netns pids` lists (never this process) and waits briefly
/// for them to go away, so the namespace does not outlive its mount.
fn kill_netns_pids(name: &str) {
    let me = std::process::id();
    for _ in 0..50 {
        let Ok(out) = ip(&["netns", "pids", name]) else {
            return;
        };
        let pids: Vec<u32> = out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != me)
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill has no memory-safety preconditions; the process lives
                // in a namespace this module created for tests.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Our own children stay listed as zombies until their `Proc` reaps them;
        // zombies hold no namespace reference, so stop when only they are left.
        thread::sleep(Duration::from_millis(20));
        let alive = ip(&["netns", "pids", name]).unwrap_or_default();
        let any_live = alive
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .any(|p| p != me && !is_zombie(p));
        if !any_live {
            return;
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

// ---------------------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------------------

/// A named network namespace, deleted on drop together with everything inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add NAME`, then brings `lo` up. Prefer [`Topology::add_ns`], which names
    /// the namespace by the naming scheme.
    pub fn create(name: &str) -> Result<Netns> {
        if name.is_empty() || name.len() > 64 || name.contains('/') || name.starts_with('.') {
            return invalid(format!("bad namespace name `{name}`"));
        }
        {
            let _guard = lock(&NETNS_LOCK);
            ip(&["netns", "add", name])?;
        }
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount under `/run/netns`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn command(&self, cmd: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, cmd]).args(args);
        c
    }

    /// Runs `ip netns exec NAME CMD ARGS` within [`DEFAULT_TIMEOUT`]. The output is
    /// returned whatever the exit status; errors only if it could not run or timed out.
    ///
    /// Arbitrary commands are not checked for network hygiene: address only test ranges.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        self.exec_timeout(cmd, args, DEFAULT_TIMEOUT)
    }

    /// [`Netns::exec`] with another bound.
    pub fn exec_timeout(&self, cmd: &str, args: &[&str], limit: Duration) -> Result<Output> {
        run_bounded(self.command(cmd, args), limit)
    }

    /// Runs CMD ARGS in the namespace and returns stdout; [`Error::Failed`] with stderr if
    /// it exits unsuccessfully.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> Result<String> {
        run_checked(self.command(cmd, args), DEFAULT_TIMEOUT)
    }

    /// Runs `ip ARGS` in the namespace (`ip -n NAME ARGS`), checked.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut c = ip_cmd(&["-n", &self.name]);
        c.args(args);
        run_checked(c, DEFAULT_TIMEOUT)
    }

    /// Starts CMD ARGS in the namespace in the background; the returned [`Proc`] kills
    /// and reaps it on drop.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Result<Proc> {
        Proc::spawn(self.command(cmd, args))
    }

    /// Sets sysctl `key` (dotted `net.ipv4.ip_forward` or path form `net/ipv4/ip_forward`)
    /// to `value` inside the namespace, by writing `/proc/sys` from a thread in it (no
    /// `sysctl` binary needed). Only `net.*` keys are per namespace, so only they are
    /// accepted.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        let value = value.to_owned();
        self.run_in(move || {
            std::fs::write(&path, value.as_bytes()).map_err(|source| Error::Io {
                what: format!("writing {}", path.display()),
                source,
            })
        })?
    }

    /// Reads sysctl `key` inside the namespace (trimmed).
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        self.run_in(move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(|source| Error::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })
        })?
    }

    /// Turns IPv6 off in the namespace (no router solicitations or DAD on new links), to
    /// keep captures quiet.
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// Turns IPv6 on in the namespace (link-local addresses, neighbour discovery), for the
    /// IPv6 tests; addresses beyond link-local come from [`Topology::addr6`].
    pub fn enable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "0")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "0")
    }

    /// Runs `f` on the calling thread moved into this namespace with `setns(2)`, then moves
    /// the thread back (also when `f` panics). For what cannot cross threads, such as
    /// AF_XDP sockets sharing one UMEM; sockets and XDP links `f` makes stay bound to
    /// this namespace. Prefer [`Netns::run_in`], which leaves the caller untouched.
    pub fn run_here<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R,
    {
        let io_err = |what: String| move |source| Error::Io { what, source };
        let home = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(io_err("opening /proc/thread-self/ns/net".into()))?;
        let target = std::fs::File::open(self.path())
            .map_err(io_err(format!("opening {}", self.path().display())))?;
        setns_net(&target).map_err(io_err(format!("setns into {}", self.name)))?;
        /// Moves the thread home when dropped, so a panic in `f` does not leave it here.
        struct Home(std::fs::File);
        impl Drop for Home {
            fn drop(&mut self) {
                // A thread left in a test namespace would send the caller's later traffic
                // there: that must not go unnoticed.
                setns_net(&self.0).expect("setns back to the calling thread's namespace");
            }
        }
        let _home = Home(home);
        Ok(f())
    }

    /// Runs `f` on a fresh thread that entered this namespace with `setns(2)`, and returns
    /// its result; the calling thread's namespace is untouched. A panic in `f` is resumed
    /// in the caller. Sockets `f` opens belong to the namespace.
    pub fn run_in<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        run_in_named(&self.name, f)
    }
}

/// [`Netns::run_in`] for a namespace this process does not own, by its name (a child
/// process working in its parent's namespace); nothing is deleted afterwards.
pub fn run_in_named<F, R>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|source| Error::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    let outcome = thread::scope(|s| {
        s.spawn(|| {
            // This thread ends right after `f`, so it is never moved back.
            setns_net(&file).map_err(|source| Error::Io {
                what: format!("setns into {}", path.display()),
                source,
            })?;
            Ok(f())
        })
        .join()
    });
    match outcome {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_netns(&self.name) {
            eprintln!("netns: cannot delete namespace {}: {e}", self.name);
        }
    }
}

fn setns_net(ns: &std::fs::File) -> io::Result<()> {
    // SAFETY: `ns` is an open namespace file for the duration of the call; setns only
    // changes the calling thread's network namespace.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let ok = rel.starts_with("net/")
        && !rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if !ok {
        return invalid(format!("sysctl `{key}` is not a per-namespace net.* key"));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

// ---------------------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------------------

/// Options for [`Topology::veth_with`].
#[derive(Debug, Clone, Default)]
pub struct VethOptions {
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// MAC of the end in `ns_a`.
    pub mac_a: Option<String>,
    /// MAC of the end in `ns_b`.
    pub mac_b: Option<String>,
}

/// Identifies a process started with [`Topology::spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

/// A set of namespaces named under one [`Prefix`] and the links between them.
///
/// Namespaces are named by role (`"a"`, `"vm1"`, `"ext"` ...); every method takes roles.
/// On drop it kills its processes and deletes its namespaces (and so their veths).
#[derive(Debug)]
pub struct Topology {
    prefix: Prefix,
    procs: Vec<Option<Proc>>,
    namespaces: Vec<(String, Netns)>,
}

impl Topology {
    /// An empty topology under a fresh [`Prefix`].
    pub fn new() -> Topology {
        Topology::with_prefix(Prefix::next())
    }

    /// An empty topology under `prefix`.
    pub fn with_prefix(prefix: Prefix) -> Topology {
        Topology {
            prefix,
            procs: Vec::new(),
            namespaces: Vec::new(),
        }
    }

    /// This topology's prefix.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// Creates namespace `<prefix>-<role>` with `lo` up.
    pub fn add_ns(&mut self, role: &str) -> Result<&Netns> {
        if self.namespaces.iter().any(|(r, _)| r == role) {
            return invalid(format!("role `{role}` exists already"));
        }
        let ns = Netns::create(&self.prefix.ns_name(role)?)?;
        self.namespaces.push((role.to_owned(), ns));
        Ok(&self.namespaces.last().expect("just pushed").1)
    }

    /// The namespace of `role`.
    pub fn ns(&self, role: &str) -> Result<&Netns> {
        self.namespaces
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, ns)| ns)
            .ok_or_else(|| Error::Invalid(format!("no namespace with role `{role}`")))
    }

    /// The roles, in creation order.
    pub fn roles(&self) -> Vec<&str> {
        self.namespaces.iter().map(|(r, _)| r.as_str()).collect()
    }

    /// A veth pair `if_a` (in `ns_a`) ↔ `if_b` (in `ns_b`), both up.
    pub fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) -> Result<()> {
        self.veth_with(ns_a, if_a, ns_b, if_b, &VethOptions::default())
    }

    /// A veth pair with options. The pair is created with one `ip link add ... netns`, so
    /// neither end ever exists in the root namespace.
    pub fn veth_with(
        &self,
        ns_a: &str,
        if_a: &str,
        ns_b: &str,
        if_b: &str,
        opts: &VethOptions,
    ) -> Result<()> {
        check_ifname(if_a)?;
        check_ifname(if_b)?;
        if ns_a == ns_b && if_a == if_b {
            return invalid("both veth ends have the same name in the same namespace");
        }
        for mac in [&opts.mac_a, &opts.mac_b].into_iter().flatten() {
            check_mac(mac)?;
        }
        let a = self.ns(ns_a)?.name();
        let b = self.ns(ns_b)?.name();
        let mtu = opts.mtu.map(|m| m.to_string());
        let mut args = vec!["link", "add", "name", if_a, "netns", a];
        if let Some(m) = &opts.mac_a {
            args.extend(["address", m]);
        }
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        args.extend(["type", "veth", "peer", "name", if_b, "netns", b]);
        if let Some(m) = &opts.mac_b {
            args.extend(["address", m]);
        }
        if let Some(m) = &mtu {
            args.extend(["mtu", m]);
        }
        ip(&args)?;
        self.link_up(ns_a, if_a)?;
        self.link_up(ns_b, if_b)
    }

    /// `ip addr add CIDR dev IFNAME` in `ns`; the address must be in a test range.
    pub fn addr(&self, ns: &str, ifname: &str, cidr: &str) -> Result<()> {
        check_test_cidr(cidr)?;
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["addr", "add", cidr, "dev", ifname])
            .map(drop)
    }

    /// `ip -6 addr add CIDR dev IFNAME nodad` in `ns`: an address and prefix inside
    /// 2001:db8::/32 (no duplicate address detection, so it is usable at once).
    pub fn addr6(&self, ns: &str, ifname: &str, cidr: &str) -> Result<()> {
        let (ip, len) = cidr
            .split_once('/')
            .ok_or_else(|| Error::Invalid(format!("`{cidr}` is not of the form addr/len")))?;
        check_test_host(ip)?;
        if !ip.contains(':') || !len.parse::<u8>().is_ok_and(|l| (32..=128).contains(&l)) {
            return invalid(format!(
                "`{cidr}` is not an IPv6 prefix inside 2001:db8::/32 (network hygiene)"
            ));
        }
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
            .map(drop)
    }

    /// `ip route replace DST via VIA` in `ns`; `dst` is `default` or a test-range CIDR,
    /// `via` a test-range address.
    pub fn route(&self, ns: &str, dst: &str, via: &str) -> Result<()> {
        check_route_dst(dst)?;
        check_test_ip(via)?;
        self.ns(ns)?
            .ip(&["route", "replace", dst, "via", via])
            .map(drop)
    }

    /// `ip route replace DST dev IFNAME` in `ns` (an on-link route).
    pub fn route_dev(&self, ns: &str, dst: &str, ifname: &str) -> Result<()> {
        check_route_dst(dst)?;
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["route", "replace", dst, "dev", ifname])
            .map(drop)
    }

    /// Sets the MAC address of `ifname` in `ns`.
    pub fn set_mac(&self, ns: &str, ifname: &str, mac: &str) -> Result<()> {
        check_mac(mac)?;
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["link", "set", "dev", ifname, "address", mac])
            .map(drop)
    }

    /// Sets the MTU of `ifname` in `ns`.
    pub fn set_mtu(&self, ns: &str, ifname: &str, mtu: u32) -> Result<()> {
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["link", "set", "dev", ifname, "mtu", &mtu.to_string()])
            .map(drop)
    }

    /// `ip link set IFNAME down` in `ns`. Routes through the link other than the
    /// connected one are removed by the kernel and are not restored by [`link_up`].
    ///
    /// [`link_up`]: Topology::link_up
    pub fn link_down(&self, ns: &str, ifname: &str) -> Result<()> {
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["link", "set", "dev", ifname, "down"])
            .map(drop)
    }

    /// `ip link set IFNAME up` in `ns`.
    pub fn link_up(&self, ns: &str, ifname: &str) -> Result<()> {
        check_ifname(ifname)?;
        self.ns(ns)?
            .ip(&["link", "set", "dev", ifname, "up"])
            .map(drop)
    }

    /// The MAC address of `ifname` in `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<String> {
        check_ifname(ifname)?;
        let path = format!("/sys/class/net/{ifname}/address");
        let out = self.ns(ns)?.exec_ok("cat", &[&path])?;
        Ok(out.trim().to_owned())
    }

    /// Starts CMD ARGS in `ns` in the background, owned by the topology (killed on drop).
    pub fn spawn(&mut self, ns: &str, cmd: &str, args: &[&str]) -> Result<ProcId> {
        let p = self.ns(ns)?.spawn(cmd, args)?;
        self.procs.push(Some(p));
        Ok(ProcId(self.procs.len() - 1))
    }

    /// The process `id`, unless it was taken.
    pub fn proc_mut(&mut self, id: ProcId) -> Option<&mut Proc> {
        self.procs.get_mut(id.0).and_then(Option::as_mut)
    }

    /// Takes process `id` out of the topology (e.g. to [`Proc::stop`] it).
    pub fn take_proc(&mut self, id: ProcId) -> Option<Proc> {
        self.procs.get_mut(id.0).and_then(Option::take)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes first (killed and reaped), then the namespaces, last created first.
        self.procs.clear();
        while let Some((_, ns)) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

fn check_route_dst(dst: &str) -> Result<()> {
    if dst == "default" {
        Ok(())
    } else if dst.contains('/') {
        check_test_cidr(dst).map(drop)
    } else {
        check_test_ip(dst).map(drop)
    }
}

// ---------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------

/// What `ping` reported in its summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
}

impl PingResult {
    /// At least one request and a reply for every one.
    pub fn all_received(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }
}

/// Parses `N packets transmitted, M received, ...` (iputils and busybox).
pub fn parse_ping_summary(out: &str) -> Option<PingResult> {
    let line = out.lines().find(|l| l.contains("transmitted"))?;
    let mut transmitted = None;
    let mut received = None;
    for part in line.split(',') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        match what {
            "packets" if part.contains("transmitted") => transmitted = Some(n),
            "received" | "packets" => received = received.or(Some(n)),
            _ => {}
        }
    }
    Some(PingResult {
        transmitted: transmitted?,
        received: received?,
    })
}

/// Sends `count` echo requests (0.2 s apart) from `ns` to `dst` (a test-range address)
/// and waits at most `timeout` in all (ping's `-w` deadline; at least 1 s).
///
/// Returns the summary whether or not replies came; an error if ping printed no summary
/// (e.g. `Network is unreachable`), with its stderr.
pub fn ping(ns: &Netns, dst: &str, count: u32, timeout: Duration) -> Result<PingResult> {
    check_test_host(dst)?;
    if !(1..=PING_MAX_COUNT).contains(&count) {
        return invalid(format!("ping count {count} not in 1..={PING_MAX_COUNT}"));
    }
    if timeout > PING_MAX_TIMEOUT {
        return invalid(format!(
            "ping timeout {timeout:?} above {PING_MAX_TIMEOUT:?}"
        ));
    }
    let deadline = timeout.as_secs_f64().ceil().max(1.0) as u64;
    let (count_s, deadline_s) = (count.to_string(), deadline.to_string());
    let args = [
        "-n",
        "-q",
        "-c",
        &count_s,
        "-i",
        "0.2",
        "-W",
        "1",
        "-w",
        &deadline_s,
        dst,
    ];
    let out = ns.exec_timeout("ping", &args, Duration::from_secs(deadline + 5))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_ping_summary(&stdout).ok_or_else(|| Error::Failed {
        cmd: format!("ip netns exec {} ping {}", ns.name(), args.join(" ")),
        status: out.status,
        stderr: format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout),
    })
}

/// Sends `count` ARP requests for `dst` out of `ifname` in `ns` (iputils `arping`,
/// bounded by `-w`); returns how many were answered.
pub fn arping(ns: &Netns, ifname: &str, dst: &str, count: u32, timeout: Duration) -> Result<u32> {
    check_test_ip(dst)?;
    check_ifname(ifname)?;
    if !(1..=PING_MAX_COUNT).contains(&count) || timeout > PING_MAX_TIMEOUT {
        return invalid("arping count or timeout out of bounds");
    }
    let deadline = timeout.as_secs_f64().ceil().max(1.0) as u64;
    let (count_s, deadline_s) = (count.to_string(), deadline.to_string());
    let args = ["-c", &count_s, "-w", &deadline_s, "-I", ifname, dst];
    let out = ns.exec_timeout("arping", &args, Duration::from_secs(deadline + 5))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| {
            // iputils: "Received 3 response(s)"; the Debian `arping` package (Habets):
            // "3 packets transmitted, 3 packets received, ...".
            if let Some(rest) = l.strip_prefix("Received ") {
                return rest.split_whitespace().next()?.parse().ok();
            }
            let (_, received) = l.split_once(" packets transmitted, ")?;
            received.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| Error::Parse {
            what: "arping summary".into(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        })
}

/// An `iperf3 -s` in a namespace; killed on drop.
#[derive(Debug)]
pub struct Iperf3Server {
    proc: Proc,
    addr: String,
    port: u16,
}

impl Iperf3Server {
    /// Address the server listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process.
    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// Starts `iperf3 -s -B BIND -p PORT` in `ns` and waits (at most 5 s) until it listens.
/// Its output is flushed line by line (`--forceflush`): on a pipe, stdio would hold lines
/// such as "Accepted connection from" until 4 KiB had gathered, and a test reading them
/// would see nothing.
pub fn iperf3_server(ns: &Netns, bind: &str, port: u16) -> Result<Iperf3Server> {
    check_test_host(bind)?;
    let port_s = port.to_string();
    let mut proc = ns.spawn("iperf3", &["-s", "--forceflush", "-B", bind, "-p", &port_s])?;
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if ns.run_in(|| tcp_listening(port))?? {
            break;
        }
        if !proc.is_running() || Instant::now() >= end {
            let stderr = format!("{}{}", proc.stderr_so_far(), proc.stdout_so_far());
            return Err(Error::Timeout {
                cmd: proc.cmdline().to_owned(),
                after: Duration::from_secs(5),
                stderr: format!("server not listening: {stderr}"),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(Iperf3Server {
        proc,
        addr: bind.to_owned(),
        port,
    })
}

/// Whether a TCP socket of the current thread's namespace listens on `port`.
fn tcp_listening(port: u16) -> Result<bool> {
    for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        let hit = table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == "0A"
                && f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        });
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The summary of one iperf3 TCP run (the `end` section of `-J`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf3Result {
    /// Sender-side throughput, bits per second.
    pub sent_bps: f64,
    /// Receiver-side throughput, bits per second.
    pub received_bps: f64,
    /// Bytes the sender sent.
    pub sent_bytes: u64,
    /// Bytes the receiver received.
    pub received_bytes: u64,
    /// TCP retransmissions (sender side; absent on systems that do not report them).
    pub retransmits: Option<u64>,
}

/// Parses iperf3's `-J` output.
pub fn parse_iperf3_json(json: &str) -> Result<Iperf3Result> {
    let parse_err = |what: &str| Error::Parse {
        what: what.to_owned(),
        output: json.chars().take(2000).collect(),
    };
    let v: serde_json::Value = serde_json::from_str(json).map_err(|_| parse_err("iperf3 JSON"))?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(Error::Parse {
            what: "iperf3 result".into(),
            output: format!("iperf3 error: {e}"),
        });
    }
    let end = v.get("end").ok_or_else(|| parse_err("iperf3 `end`"))?;
    let sent = end
        .get("sum_sent")
        .ok_or_else(|| parse_err("iperf3 `end.sum_sent`"))?;
    let recv = end
        .get("sum_received")
        .ok_or_else(|| parse_err("iperf3 `end.sum_received`"))?;
    let f = |o: &serde_json::Value, k: &str| {
        o.get(k)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| parse_err(&format!("iperf3 `{k}`")))
    };
    let u = |o: &serde_json::Value, k: &str| {
        o.get(k)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| parse_err(&format!("iperf3 `{k}`")))
    };
    Ok(Iperf3Result {
        sent_bps: f(sent, "bits_per_second")?,
        received_bps: f(recv, "bits_per_second")?,
        sent_bytes: u(sent, "bytes")?,
        received_bytes: u(recv, "bytes")?,
        retransmits: sent.get("retransmits").and_then(serde_json::Value::as_u64),
    })
}

/// Runs `iperf3 -c SERVER -p PORT -t SECS -J --connect-timeout 3000` in `ns` (TCP) and
/// returns its summary. `secs` is 1..=10; the whole run is bounded by `secs + 15` s.
pub fn iperf3_client(ns: &Netns, server: &str, port: u16, secs: u32) -> Result<Iperf3Result> {
    iperf3_client_parallel(ns, server, port, secs, 1)
}

/// [`iperf3_client`] with `-P STREAMS` parallel TCP connections (1..=64).
pub fn iperf3_client_parallel(
    ns: &Netns,
    server: &str,
    port: u16,
    secs: u32,
    streams: u32,
) -> Result<Iperf3Result> {
    check_test_host(server)?;
    if !(1..=IPERF3_MAX_SECS).contains(&secs) {
        return invalid(format!("iperf3 -t {secs} not in 1..={IPERF3_MAX_SECS}"));
    }
    if !(1..=64).contains(&streams) {
        return invalid(format!("iperf3 -P {streams} not in 1..=64"));
    }
    let (port_s, secs_s, streams_s) = (port.to_string(), secs.to_string(), streams.to_string());
    let args = [
        "-c",
        server,
        "-p",
        &port_s,
        "-t",
        &secs_s,
        "-P",
        &streams_s,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    let out = ns.exec_timeout("iperf3", &args, Duration::from_secs(u64::from(secs) + 15))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = parse_iperf3_json(&stdout);
    match parsed {
        Ok(r) if out.status.success() => Ok(r),
        Ok(_) | Err(_) => Err(Error::Failed {
            cmd: format!("ip netns exec {} iperf3 {}", ns.name(), args.join(" ")),
            status: out.status,
            stderr: match parsed {
                Err(e) => format!("{e}; {}", String::from_utf8_lossy(&out.stderr)),
                Ok(_) => String::from_utf8_lossy(&out.stderr).into_owned(),
            },
        }),
    }
}

/// How a [`Capture`] records frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureFormat {
    /// `tcpdump -e -nn -l`: one text line per frame, with link-level headers.
    Text,
    /// `tcpdump -w FILE -U`: the raw frames.
    Pcap,
}

/// What a [`Capture`] saw.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// Text lines, one per frame ([`CaptureFormat::Text`]).
    pub lines: Vec<String>,
    /// Raw frames ([`CaptureFormat::Pcap`]).
    pub frames: Vec<Vec<u8>>,
}

/// A running `tcpdump` in a namespace; killed on drop, its pcap file removed.
#[derive(Debug)]
pub struct Capture {
    proc: Option<Proc>,
    format: CaptureFormat,
    file: Option<PathBuf>,
}

static CAPTURE_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Capture {
    /// Starts `tcpdump -i IFNAME -c COUNT [FILTER...]` in `ns` and returns once it
    /// listens (at most 5 s).
    pub fn start(
        ns: &Netns,
        ifname: &str,
        count: u32,
        filter: &[&str],
        format: CaptureFormat,
    ) -> Result<Capture> {
        Capture::start_with(ns, ifname, count, filter, format, &[])
    }

    /// [`Capture::start`] for the frames `ifname` receives only (`-Q in`), each handed to
    /// tcpdump as it arrives (`--immediate-mode`): what a host sends itself is not seen,
    /// and a capture finished right after the traffic has every frame.
    pub fn start_inbound(
        ns: &Netns,
        ifname: &str,
        count: u32,
        filter: &[&str],
        format: CaptureFormat,
    ) -> Result<Capture> {
        Capture::start_with(
            ns,
            ifname,
            count,
            filter,
            format,
            &["-Q", "in", "--immediate-mode"],
        )
    }

    fn start_with(
        ns: &Netns,
        ifname: &str,
        count: u32,
        filter: &[&str],
        format: CaptureFormat,
        options: &[&str],
    ) -> Result<Capture> {
        check_ifname(ifname)?;
        if !(1..=CAPTURE_MAX_COUNT).contains(&count) {
            return invalid(format!(
                "capture count {count} not in 1..={CAPTURE_MAX_COUNT}"
            ));
        }
        let count_s = count.to_string();
        let file = match format {
            CaptureFormat::Text => None,
            CaptureFormat::Pcap => Some(std::env::temp_dir().join(format!(
                "{}-{}-{}.pcap",
                ns.name(),
                ifname,
                CAPTURE_COUNTER.fetch_add(1, Ordering::Relaxed)
            ))),
        };
        let file_s = file.as_ref().map(|f| f.to_string_lossy().into_owned());
        let mut args: Vec<&str> = vec!["-i", ifname, "-c", &count_s, "-nn", "-Z", "root"];
        args.extend(options);
        match &file_s {
            None => args.extend(["-e", "-l"]),
            Some(f) => args.extend(["-U", "-w", f]),
        }
        args.extend(filter);
        let mut proc = ns.spawn("tcpdump", &args)?;
        if !proc.wait_stderr_contains("listening on", Duration::from_secs(5)) {
            let stderr = proc.stderr_so_far();
            return Err(Error::Failed {
                cmd: proc.cmdline().to_owned(),
                status: proc.stop(Duration::from_millis(100))?.status,
                stderr: format!("tcpdump did not start listening: {stderr}"),
            });
        }
        Ok(Capture {
            proc: Some(proc),
            format,
            file,
        })
    }

    /// Waits up to `timeout` for tcpdump to see its count, then stops it (SIGTERM, so it
    /// flushes) and returns what it captured — possibly fewer frames than asked for.
    pub fn finish(mut self, timeout: Duration) -> Result<Captured> {
        let mut proc = self.proc.take().expect("a capture is finished only once");
        proc.wait_timeout(timeout)?;
        let out = proc.stop(Duration::from_secs(2))?;
        match self.format {
            CaptureFormat::Text => Ok(Captured {
                lines: String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
                frames: Vec::new(),
            }),
            CaptureFormat::Pcap => {
                let path = self.file.clone().expect("pcap capture has a file");
                let data = std::fs::read(&path).map_err(|source| Error::Io {
                    what: format!(
                        "reading {} (tcpdump: {})",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    source,
                })?;
                Ok(Captured {
                    lines: Vec::new(),
                    frames: parse_pcap(&data)?,
                })
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Starts a capture; see [`Capture::start`].
pub fn tcpdump(
    ns: &Netns,
    ifname: &str,
    count: u32,
    filter: &[&str],
    format: CaptureFormat,
) -> Result<Capture> {
    Capture::start(ns, ifname, count, filter, format)
}

/// The frames of a classic pcap file (either byte order, µs or ns timestamps); a
/// truncated last record is ignored.
pub fn parse_pcap(data: &[u8]) -> Result<Vec<Vec<u8>>> {
    let bad = |what: &str| Error::Parse {
        what: format!("pcap ({what})"),
        output: format!("{} bytes", data.len()),
    };
    if data.len() < 24 {
        return Err(bad("short global header"));
    }
    let magic = [data[0], data[1], data[2], data[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(bad("bad magic")),
    };
    let u32_at = |off: usize| {
        let b = [data[off], data[off + 1], data[off + 2], data[off + 3]];
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let incl = u32_at(off + 8) as usize;
        let start = off + 16;
        let Some(end) = start.checked_add(incl).filter(|e| *e <= data.len()) else {
            break;
        };
        frames.push(data[start..end].to_vec());
        off = end;
    }
    Ok(frames)
}

/// Interface index of `ifname` in the calling thread's namespace (0 if absent); use it
/// inside [`Netns::run_in`].
pub fn if_index(ifname: &str) -> u32 {
    let Ok(c) = CString::new(ifname) else {
        return 0;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Names of this module's namespaces (`<root>...`) that `ip netns list` shows now and
/// that were created under `prefix`.
pub fn namespaces_with_prefix(prefix: &Prefix) -> Result<Vec<String>> {
    let stem = format!("{}-", prefix.as_str());
    Ok(list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(&stem))
        .collect())
}

/// All namespace names under `root` (any PID), for end-of-run leak checks.
pub fn namespaces_under_root(root: &str) -> Result<Vec<String>> {
    Ok(list_netns()?
        .into_iter()
        .filter(|n| parse_ns_name(root, n).is_some())
        .collect())
}
