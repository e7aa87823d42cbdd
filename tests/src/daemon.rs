//! Running the real `polluxd` in a network namespace, for end-to-end tests.
//!
//! - [`polluxd_path`] builds `polluxd` (release) once per test process and returns the
//!   binary's path.
//! - [`ConfigFile`] renders one of the workspace's `configs/*.toml` templates, replacing
//!   `@P@` with a per-test interface prefix, into a temporary file removed on drop.
//! - [`Polluxd`] runs `ip netns exec NS polluxd --config F --cores C` (so the child's PID
//!   is polluxd itself: `ip netns exec` execs it), waits until it reports `ready`, and
//!   kills it on drop, so no daemon outlives a failing test; [`Polluxd::call`] calls a
//!   method on its socket.
//! - [`setup`] is what every test of polluxd in namespaces starts with.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pollux_control::client::Client;
use serde_json::{json, Value};

use crate::netns::{self, Netns, Proc};

/// How long [`Polluxd::start`] waits for `ready` on stderr.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Polluxd::stop`] waits for the daemon to exit after SIGINT.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for building `polluxd` (a cold release build on a small, shared machine).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The placeholder templates use for the per-test interface prefix.
pub const PLACEHOLDER: &str = "@P@";

/// The Cargo workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("the tests crate lives inside the workspace")
        .to_path_buf()
}

/// The target directory Cargo builds into (`CARGO_TARGET_DIR` if set, else `target/`).
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        _ => root.join("target"),
    }
}

/// Builds binary `bin` of package `package` with Cargo (in release mode with `release`)
/// and returns its path in the target directory.
fn build_binary(package: &str, bin: &str, release: bool) -> Result<PathBuf, String> {
    let root = workspace_root();
    // The `cargo` that runs the tests, if it told us (it sets CARGO for test processes).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec!["build"];
    if release {
        args.push("--release");
    }
    args.extend(["-q", "-p", package, "--bin", bin]);
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root).args(&args);
    let line = format!(
        "{} {} (in {})",
        cargo.to_string_lossy(),
        args.join(" "),
        root.display()
    );
    let out = netns::run_bounded(cmd, BUILD_TIMEOUT).map_err(|e| format!("`{line}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{line}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let profile = if release { "release" } else { "debug" };
    let path = target_dir(&root).join(profile).join(bin);
    if !path.is_file() {
        return Err(format!(
            "`{line}` succeeded but {} does not exist",
            path.display()
        ));
    }
    Ok(path)
}

/// Builds `polluxd` in release mode (once per test process; concurrent callers wait for
/// the one build) and returns `target/release/polluxd`. Panics with Cargo's output if the
/// build fails.
pub fn polluxd_path() -> &'static Path {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PATH.get_or_init(|| build_binary("pollux-control", "polluxd", true)) {
        Ok(p) => p,
        Err(e) => panic!("cannot build polluxd: {e}"),
    }
}

/// Builds `polluxctl` in release mode (once per test process) and returns its path.
pub fn polluxctl_path() -> &'static Path {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PATH.get_or_init(|| build_binary("pollux-control", "polluxctl", true)) {
        Ok(p) => p,
        Err(e) => panic!("cannot build polluxctl: {e}"),
    }
}

/// Builds `pollux-agent` (debug, once per test process) and returns its path: the agent
/// is off the packet path, and a debug build saves a release build of etcd-client's gRPC
/// stack. Panics with Cargo's output if the build fails.
pub fn agent_path() -> &'static Path {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PATH.get_or_init(|| build_binary("pollux-agent", "pollux-agent", false)) {
        Ok(p) => p,
        Err(e) => panic!("cannot build pollux-agent: {e}"),
    }
}

/// Root and `tools` (it fails, never skips, when one is missing), one test at a time, and
/// polluxd built before the test's clock starts. Hold the guard for the whole test.
pub fn setup(tools: &[&str]) -> MutexGuard<'static, ()> {
    let guard = netns::exclusive(tools);
    polluxd_path();
    guard
}

/// The last CPU of the machine, as a `--cores` list: where the tests pin the worker.
pub fn last_cpu() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (n - 1).to_string()
}

/// A configuration rendered from a template into a temporary file, removed on drop.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    /// Renders `configs/<template>` of the workspace with every [`PLACEHOLDER`] replaced
    /// by `prefix`, into `<tmp>/<prefix>-<template>`.
    pub fn render(template: &str, prefix: &str) -> Result<ConfigFile, String> {
        let src = workspace_root().join("configs").join(template);
        let text = std::fs::read_to_string(&src)
            .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
        if !text.contains(PLACEHOLDER) {
            return Err(format!(
                "{} has no {PLACEHOLDER} placeholder: its interface names would collide \
                 between tests",
                src.display()
            ));
        }
        let path = std::env::temp_dir().join(format!("{prefix}-{template}"));
        std::fs::write(&path, text.replace(PLACEHOLDER, prefix))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(ConfigFile { path })
    }

    /// Writes `text`, a desired state a test composed itself, to `<tmp>/<name>.toml`.
    pub fn write(name: &str, text: &str) -> Result<ConfigFile, String> {
        let path = std::env::temp_dir().join(format!("{name}.toml"));
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(ConfigFile { path })
    }

    /// Where the rendered configuration is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A private directory for one polluxd's control socket and state directory, removed
/// (with everything in it) on drop. Keep it across restarts to restart into the persisted
/// state.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A fresh, empty directory `<tmp>/<name>-run`.
    pub fn new(name: &str) -> Result<RunDir, String> {
        let path = std::env::temp_dir().join(format!("{name}-run"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(RunDir { path })
    }

    /// The control socket polluxd listens on.
    pub fn socket(&self) -> PathBuf {
        self.path.join("polluxd.sock")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.path.join("state")
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn utf8(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()))
}

/// A `polluxd` running in a network namespace; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Polluxd {
    proc: Option<Proc>,
    ns: String,
    socket: PathBuf,
    /// Its own run directory, unless the caller keeps one across restarts.
    _run: Option<RunDir>,
}

impl Polluxd {
    /// Starts `polluxd --config CONFIG --cores CORES` in `ns` without waiting for it, with
    /// its socket and state in a run directory of its own.
    pub fn spawn(ns: &Netns, config: &Path, cores: &str) -> Result<Polluxd, String> {
        let run = RunDir::new(ns.name())?;
        let mut d = Polluxd::spawn_in(ns, Some(config), cores, &run, &[])?;
        d._run = Some(run);
        Ok(d)
    }

    /// Starts `polluxd [--config CONFIG] --cores CORES EXTRA...` in `ns` with its socket
    /// and state in `run`, without waiting for it.
    pub fn spawn_in(
        ns: &Netns,
        config: Option<&Path>,
        cores: &str,
        run: &RunDir,
        extra: &[&str],
    ) -> Result<Polluxd, String> {
        let bin = polluxd_path();
        let socket = run.socket();
        let state = run.state_dir();
        let mut args = vec![
            "--cores",
            cores,
            "--socket",
            utf8(&socket)?,
            "--state-dir",
            utf8(&state)?,
        ];
        if let Some(config) = config {
            args.extend(["--config", utf8(config)?]);
        }
        args.extend_from_slice(extra);
        let proc = ns
            .spawn(utf8(bin)?, &args)
            .map_err(|e| format!("cannot start polluxd in {}: {e}", ns.name()))?;
        Ok(Polluxd {
            proc: Some(proc),
            ns: ns.name().to_owned(),
            socket,
            _run: None,
        })
    }

    /// Calls `method` on the daemon's socket; panics on any error.
    pub fn call(&self, method: &str, params: Value) -> Value {
        let mut client = Client::connect(self.socket())
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket().display()));
        client
            .call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// `ports.list`'s entry of port `id` (a VM port's id or an uplink's name); panics when
    /// there is none.
    pub fn port(&self, id: &str) -> Value {
        let list = self.call("ports.list", json!({}));
        list["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("no port {id} in {list}"))
    }

    /// Waits up to `limit` for `f` to hold on port `id`'s entry and returns it; panics
    /// with the entry and polluxd's log, saying it was not `what`, otherwise.
    pub fn wait_port(
        &self,
        id: &str,
        what: &str,
        limit: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let p = self.port(id);
            if f(&p) {
                return p;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{id}: not {what} within {limit:?}: {p}\npolluxd stderr:\n{}",
                    self.stderr_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The worker's counter `name` (`stats.get` → `workers[0]`); panics when it has none.
    pub fn worker_stat(&self, name: &str) -> u64 {
        let stats = self.call("stats.get", json!({}));
        stats["workers"][0][name]
            .as_u64()
            .unwrap_or_else(|| panic!("stats.get has no workers[0].{name}: {stats}"))
    }

    /// Its control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Starts `polluxd` in `ns` and waits (at most [`READY_TIMEOUT`]) until it says
    /// `ready` on stderr. On failure the daemon is killed and the error carries its
    /// stderr.
    pub fn start(ns: &Netns, config: &Path, cores: &str) -> Result<Polluxd, String> {
        let d = Polluxd::spawn(ns, config, cores)?;
        d.ready()
    }

    /// Waits (at most [`READY_TIMEOUT`]) until the spawned polluxd says `ready`; on
    /// failure it is killed and the error carries its stderr.
    pub fn ready(mut self) -> Result<Polluxd, String> {
        let p = self.proc_mut();
        if p.wait_stderr_contains("polluxd: ready", READY_TIMEOUT) {
            return Ok(self);
        }
        let running = p.is_running();
        let stderr = p.stderr_so_far();
        Err(format!(
            "polluxd in {} did not report ready within {READY_TIMEOUT:?} ({}); stderr:\n{stderr}",
            self.ns,
            if running {
                "still running"
            } else {
                "it exited"
            },
        ))
    }

    fn proc_mut(&mut self) -> &mut Proc {
        self.proc
            .as_mut()
            .expect("the process is present until consumed")
    }

    fn take(&mut self) -> Proc {
        self.proc
            .take()
            .expect("the process is present until consumed")
    }

    /// polluxd's PID.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// The namespace it runs in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc_mut().is_running()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.proc
            .as_ref()
            .map(Proc::stderr_so_far)
            .unwrap_or_default()
    }

    /// Waits up to `limit` until polluxd has written `needle` to stderr.
    pub fn wait_stderr_contains(&mut self, needle: &str, limit: Duration) -> bool {
        self.proc_mut().wait_stderr_contains(needle, limit)
    }

    /// Waits up to `limit` for it to exit by itself; its status and full stderr, or
    /// `None` (still running; it is left running).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<Option<(ExitStatus, String)>, String> {
        match self.proc_mut().wait_timeout(limit) {
            Ok(None) => Ok(None),
            Ok(Some(_)) => {
                let out = self
                    .take()
                    .wait_output(Duration::from_secs(1))
                    .map_err(|e| e.to_string())?;
                Ok(Some((
                    out.status,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGINT, then waits (at most [`STOP_TIMEOUT`]) for it to exit; returns its exit
    /// status and full stderr. If it does not exit in time it is SIGKILLed and this is
    /// an error carrying its stderr.
    pub fn stop(self) -> Result<(ExitStatus, String), String> {
        self.stop_with(libc::SIGINT)
    }

    /// [`Polluxd::stop`] with another signal (SIGTERM, as systemd sends).
    pub fn stop_with(mut self, sig: libc::c_int) -> Result<(ExitStatus, String), String> {
        let p = self.take();
        p.signal(sig);
        let ns = self.ns.clone();
        let out = p
            .wait_output(STOP_TIMEOUT)
            .map_err(|e| format!("polluxd in {ns} did not stop after signal {sig}: {e}"))?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// SIGKILL (no clean-up by polluxd itself), then reaps it; returns its exit status.
    pub fn kill9(mut self) -> Result<ExitStatus, String> {
        let p = self.take();
        p.signal(libc::SIGKILL);
        p.wait_output(Duration::from_secs(5))
            .map(|out| out.status)
            .map_err(|e| format!("polluxd did not die of SIGKILL: {e}"))
    }
}

impl Drop for Polluxd {
    fn drop(&mut self) {
        // `Proc`'s own drop SIGKILLs the process group and reaps it.
        self.proc.take();
    }
}

/// The numbers of polluxd's final `polluxd: worker 0: rx N tx N flood copies N dropped N`
/// line, if `stderr` has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerTotals {
    /// Frames received from all ports.
    pub rx: u64,
    /// Frames sent to all ports.
    pub tx: u64,
    /// Extra copies flooding made.
    pub flood_copies: u64,
    /// Frames dropped, for any reason.
    pub dropped: u64,
}

/// Parses the worker totals line of polluxd's final counters (summed over the workers
/// when several run).
pub fn parse_worker_totals(stderr: &str) -> Option<WorkerTotals> {
    let line = stderr.lines().find_map(|l| {
        l.strip_prefix("polluxd: worker 0: ")
            .or_else(|| l.strip_prefix("polluxd: workers: "))
    })?;
    let w: Vec<&str> = line.split_whitespace().collect();
    // rx N tx N flood copies N dropped N
    match w.as_slice() {
        ["rx", rx, "tx", tx, "flood", "copies", fc, "dropped", d] => Some(WorkerTotals {
            rx: rx.parse().ok()?,
            tx: tx.parse().ok()?,
            flood_copies: fc.parse().ok()?,
            dropped: d.parse().ok()?,
        }),
        _ => None,
    }
}

/// The `key value` pairs of polluxd's final `polluxd:   IFNAME driver: k v, k v` line for
/// `ifname` (empty if there is none: it prints only non-zero driver counters).
pub fn driver_counters(stderr: &str, ifname: &str) -> Vec<(String, u64)> {
    let prefix = format!("polluxd:   {ifname} driver: ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .flat_map(|rest| rest.split(", "))
        .filter_map(|kv| {
            let (k, v) = kv.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Interfaces among `ifnames` in `ns` that have an XDP program attached (`ip -d link
/// show` lists `prog/xdp`).
pub fn xdp_attached(ns: &Netns, ifnames: &[&str]) -> Result<Vec<String>, String> {
    let mut with = Vec::new();
    for name in ifnames {
        let out = ns
            .ip(&["-d", "link", "show", "dev", name])
            .map_err(|e| e.to_string())?;
        if out.contains("prog/xdp") {
            with.push((*name).to_owned());
        }
    }
    Ok(with)
}
