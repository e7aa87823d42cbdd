//! `polluxd`: starts the engine on the desired state, serves the control socket and the
//! metrics endpoint, keeps the ports bound while interfaces come and go, and shuts down
//! cleanly on SIGINT or SIGTERM.
//!
//! Which configuration it starts with:
//!
//! - the state directory holds a committed generation and no `--config` is given: that
//!   generation (a restart comes back as it was);
//! - `--config FILE` is given: the file, as the next generation if it differs from the
//!   persisted one (as the same generation if it does not);
//! - neither: an empty configuration, generation 0, waiting for `config.apply`.
//!
//! A state directory whose newest generation cannot be read is an error naming the file,
//! which is left in place: polluxd never silently starts empty instead.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::port::PortId;
use pollux_dataplane::worker::WorkerConfig;
use pollux_drivers::mem::MemPortConfig;

use crate::binding::MemWires;
use crate::engine::{
    AutoRebalance, Engine, EngineConfig, Initial, DEFAULT_IMPROVEMENT, DEFAULT_POOL_FRAMES,
};
use crate::metrics::MetricsServer;
use crate::model::DesiredState;
use crate::rpc::{RpcOptions, RpcServer};
use crate::service::Service;
use crate::store::{Store, DEFAULT_HISTORY};
use crate::validate::validate;

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/pollux/polluxd.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pollux";
/// How often the daemon looks for AF_XDP interfaces that vanished or came back.
const LINK_CHECK: Duration = Duration::from_millis(500);
/// Longest wait for socket events before the daemon looks at signals and links again.
const TICK: Duration = Duration::from_millis(100);
/// Slots per direction of a `mem` port in polluxd: nobody plays the peer of a mem port
/// in the daemon, so the rings only need to exist (a configuration of 10,000 of them
/// stays small).
const DAEMON_MEM_DEPTH: usize = 8;

/// What `polluxd` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The desired state (TOML) to start with, if any.
    pub config: Option<PathBuf>,
    /// The control socket.
    pub socket: PathBuf,
    /// Where generations are persisted.
    pub state_dir: PathBuf,
    /// Generations kept for rollback.
    pub history: usize,
    /// The CPUs of the workers, one worker pinned to each; empty: one worker on the last
    /// CPU.
    pub cores: Vec<usize>,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// Longest request line on the control socket.
    pub max_request: usize,
    /// Frames in the worker's pool.
    pub pool_frames: u32,
    /// Connections (NAT sessions and security-group connections) one port may hold in the
    /// worker's table; `None`: 1/8 of the table.
    pub conn_per_port: Option<usize>,
    /// IPv6 connections (security-group connections of IPv6 flows, in the worker's IPv6
    /// table) one port may hold; `None`: the same share of that table as `conn_per_port`
    /// is of the IPv4 one.
    pub conn6_per_port: Option<usize>,
    /// How often receive queues are rebalanced by load; `None`: only on demand.
    pub auto_rebalance_interval: Option<Duration>,
    /// The share by which a rebalance must lower the variance of the workers' loads.
    pub rebalance_improvement: f64,
}

impl Options {
    /// Defaults for everything but the configuration file.
    pub fn new(config: Option<PathBuf>) -> Self {
        Options {
            config,
            socket: DEFAULT_SOCKET.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            history: DEFAULT_HISTORY,
            cores: Vec::new(),
            metrics: None,
            max_request: RpcOptions::default().max_line,
            pool_frames: DEFAULT_POOL_FRAMES,
            conn_per_port: None,
            conn6_per_port: None,
            auto_rebalance_interval: None,
            rebalance_improvement: DEFAULT_IMPROVEMENT,
        }
    }
}

/// A startup failure, with a message fit for the user.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail(msg: impl Into<String>) -> StartError {
    StartError(msg.into())
}

/// Reads and validates the desired state at `path`; every problem with its field path.
pub fn load(path: &std::path::Path) -> Result<DesiredState, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let state = DesiredState::from_file_text(Some(path), &text)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    validate(&state).map_err(|errors| {
        let mut msg = format!("{}: {} problem(s):", path.display(), errors.len());
        for e in errors {
            let _ = write!(msg, "\n  {e}");
        }
        fail(msg)
    })?;
    Ok(state)
}

/// Chooses the starting configuration (see the module documentation).
fn initial_state(options: &Options, store: &Store) -> Result<Initial, StartError> {
    let persisted = match store.current() {
        Some((generation, value)) => {
            let state: DesiredState = serde_json::from_value(value.clone()).map_err(|e| {
                fail(format!(
                    "{}: not a desired state: {e} (the file is left in place for inspection)",
                    store.file(generation).display()
                ))
            })?;
            Some((generation, state))
        }
        None => None,
    };
    let from_file = options.config.as_deref().map(load).transpose()?;
    Ok(match (persisted, from_file) {
        (Some((generation, state)), None) => {
            pollux_services::info!("restarting into persisted generation {generation}");
            Initial {
                state,
                generation,
                persist: false,
            }
        }
        (Some((generation, old)), Some(state)) if old == state => Initial {
            state,
            generation,
            persist: false,
        },
        (Some((generation, _)), Some(state)) => {
            pollux_services::info!(
                "{} differs from persisted generation {generation}; starting it as \
                 generation {}",
                options
                    .config
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                generation + 1
            );
            Initial {
                state,
                generation: generation + 1,
                persist: true,
            }
        }
        (None, Some(state)) => Initial {
            state,
            generation: 1,
            persist: true,
        },
        (None, None) => Initial {
            state: DesiredState::default(),
            generation: 0,
            persist: false,
        },
    })
}

/// Creates the directory the socket goes in, if missing (mode 0755: the socket's own
/// mode, 0660, is what limits access).
fn socket_dir(socket: &std::path::Path) -> Result<(), StartError> {
    match socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.exists() => std::fs::create_dir_all(dir).map_err(|e| {
            fail(format!(
                "cannot create socket directory {}: {e}",
                dir.display()
            ))
        }),
        _ => Ok(()),
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it spawns later), so
/// that `wait_for_signal` can take them synchronously.
fn block_termination_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t for all three calls, and
    // `pthread_sigmask` with a null old-set pointer only reads `set`.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}

/// Waits up to `timeout` for one of the signals in `set`; `None` on timeout.
fn wait_for_signal(set: &libc::sigset_t, timeout: std::time::Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` is an initialised signal set, `ts` a valid timespec, and a null
    // siginfo pointer is allowed; sigtimedwait only reads them.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(options: &Options) -> Result<(), StartError> {
    let signals =
        block_termination_signals().map_err(|e| fail(format!("cannot block signals: {e}")))?;
    let store =
        Store::open(&options.state_dir, options.history).map_err(|e| fail(e.to_string()))?;
    let initial = initial_state(options, &store)?;
    // The socket first: a second daemon on the same socket stops here, before it touches
    // any interface.
    socket_dir(&options.socket)?;
    let rpc_options = RpcOptions {
        max_line: options.max_request,
        ..RpcOptions::default()
    };
    let mut server = RpcServer::bind(&options.socket, rpc_options)
        .map_err(|e| fail(format!("control socket: {e}")))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = if options.cores.is_empty() {
        vec![cpus - 1]
    } else {
        options.cores.clone()
    };
    let config = EngineConfig {
        cores: cores.iter().map(|&c| Some(c)).collect(),
        pool_frames: options.pool_frames,
        mem: MemPortConfig {
            depth: DAEMON_MEM_DEPTH,
            ..MemPortConfig::default()
        },
        worker: worker_config(options.conn_per_port, options.conn6_per_port).map_err(fail)?,
        rebalance: AutoRebalance {
            interval: options.auto_rebalance_interval,
            improvement: options.rebalance_improvement,
        },
    };
    let engine = Engine::start(&config, initial, Some(store), MemWires::default()).map_err(fail)?;
    let metrics = match options.metrics {
        Some(addr) => Some(
            MetricsServer::bind(addr, std::sync::Arc::clone(engine.metrics()))
                .map_err(|e| fail(format!("metrics endpoint {addr}: {e}")))?,
        ),
        None => None,
    };
    pollux_services::info!(
        "ready: generation {}, {} port(s), {}, socket {}{}",
        engine.generation(),
        engine.plans().len(),
        cores
            .iter()
            .enumerate()
            .map(|(w, c)| format!("worker {w} on CPU {c}"))
            .collect::<Vec<_>>()
            .join(", "),
        options.socket.display(),
        metrics
            .as_ref()
            .map(|m| format!(", metrics http://{}/metrics", m.local_addr()))
            .unwrap_or_default()
    );

    let mut service = Service::new(engine);
    let mut last_link_check = Instant::now();
    let sig = loop {
        if let Err(e) = server.poll_once(&mut service, Some(TICK)) {
            pollux_services::warn!("control socket: {e}");
        }
        if let Some(sig) = wait_for_signal(&signals, Duration::ZERO) {
            break sig;
        }
        if last_link_check.elapsed() >= LINK_CHECK {
            service.engine.supervise_links();
            service.engine.supervise_workers();
            service.engine.compact_store();
            last_link_check = Instant::now();
        }
    };
    pollux_services::info!("signal {sig}, stopping");
    drop(server);
    if let Some(m) = metrics {
        m.shutdown();
    }
    let done = service.engine.shutdown().map_err(fail)?;
    if pollux_services::log::enabled(pollux_services::log::Level::Info) {
        eprint!(
            "{}",
            summary(&done.counters, &done.names, done.workers.len())
        );
        if done.workers.len() > 1 {
            for (w, c) in done.workers.iter().enumerate() {
                eprintln!(
                    "polluxd: worker {w} alone: rx {} tx {} handoffs {} handed in {} handoff \
                     drops {} flow handoffs {} flows handed in {} flow handoff drops {}",
                    c.rx_packets.get(),
                    c.tx_packets.get(),
                    c.handoffs.get(),
                    c.handoffs_received.get(),
                    c.handoff_drops.get(),
                    c.flow_handoffs.get(),
                    c.flow_handoffs_received.get(),
                    c.flow_handoff_drops.get()
                );
            }
        }
    }
    for (id, name) in &done.names {
        let Some(stats) = done.driver_stats.iter().find(|d| d.id == *id) else {
            continue;
        };
        let extra: Vec<String> = stats
            .extra
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !extra.is_empty() {
            pollux_services::info!("  {name} driver: {}", extra.join(", "));
        }
    }
    Ok(())
}

/// Final counters of `workers` workers (summed), one line per port and one per drop
/// reason.
pub fn summary(c: &WorkerCounters, names: &[(PortId, String)], workers: usize) -> String {
    let who = if workers > 1 { "workers" } else { "worker 0" };
    let mut s = format!(
        "polluxd: {who}: rx {} tx {} flood copies {} dropped {}\n",
        c.rx_packets.get(),
        c.tx_packets.get(),
        c.replicas.get(),
        c.dropped_total()
    );
    for (id, name) in names {
        if let Some(p) = c.port(*id) {
            let _ = writeln!(
                s,
                "polluxd:   {name}: rx {} pkts {} bytes {} dropped, tx {} pkts {} bytes {} \
                 dropped",
                p.rx_packets.get(),
                p.rx_bytes.get(),
                p.rx_dropped.get(),
                p.tx_packets.get(),
                p.tx_bytes.get(),
                p.tx_dropped.get()
            );
        }
    }
    for (reason, n) in c.drop_summary() {
        let _ = writeln!(s, "polluxd:   dropped {reason}: {n}");
    }
    s
}

/// The worker's tunables, with fresh random seeds for the hashes of the tables whose keys
/// others choose (connections and neighbours, learned MACs), so that no VM or outside host
/// can aim its keys at one probe run of them.
fn worker_config(
    conn_per_port: Option<usize>,
    conn6_per_port: Option<usize>,
) -> Result<WorkerConfig, String> {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    let mut config = WorkerConfig::default();
    config.conntrack.hash_seed = random.hash_one(0u64);
    config.hash_seed = random.hash_one(1u64);
    let quota = |flag: &str, n: usize, capacity: usize| {
        if (1..=capacity).contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "--{flag} {n}: must be between 1 and the connection table's {capacity}"
            ))
        }
    };
    if let Some(n) = conn_per_port {
        config.conntrack.owner_quota = quota("conn-per-port", n, config.conntrack.capacity)?;
    }
    // Derived after the IPv4 quota (its default share follows it), with a seed of its own.
    let mut v6 = pollux_dataplane::worker::ipv6_conntrack(config.conntrack);
    v6.hash_seed = random.hash_one(2u64);
    if let Some(n) = conn6_per_port {
        v6.owner_quota = quota("conn6-per-port", n, v6.capacity)?;
    }
    config.conntrack6 = Some(v6);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::worker_config;

    #[test]
    fn conn_per_port_sets_the_quota_within_the_table() {
        let default = worker_config(None, None).unwrap();
        assert_eq!(
            default.conntrack.owner_quota,
            default.conntrack.capacity / 8
        );
        assert_eq!(
            worker_config(Some(100), None)
                .unwrap()
                .conntrack
                .owner_quota,
            100
        );
        assert!(worker_config(Some(0), None).is_err());
        assert!(worker_config(Some(default.conntrack.capacity + 1), None).is_err());
    }

    #[test]
    fn the_ipv6_quota_is_its_own() {
        let v6 = |c: super::WorkerConfig| c.conntrack6.expect("set");
        let default = worker_config(None, None).unwrap();
        let d6 = v6(default);
        assert_eq!(d6.capacity, default.conntrack.capacity / 4);
        assert_eq!(d6.owner_quota, d6.capacity / 8, "the same share as IPv4");
        assert_ne!(d6.hash_seed, default.conntrack.hash_seed);
        // The IPv4 quota moves the IPv6 default share with it, unless given.
        let c = worker_config(Some(800), None).unwrap();
        assert_eq!(v6(c).owner_quota, 200);
        let c = worker_config(Some(800), Some(50)).unwrap();
        assert_eq!((c.conntrack.owner_quota, v6(c).owner_quota), (800, 50));
        assert!(worker_config(None, Some(0)).is_err());
        assert!(worker_config(None, Some(d6.capacity + 1))
            .unwrap_err()
            .contains("--conn6-per-port"));
    }
}
