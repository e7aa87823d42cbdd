//! `polluxd`: reads the desired state, binds every port to its driver, runs the worker and
//! shuts down cleanly on SIGINT or SIGTERM.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use pollux_dataplane::buf::{FramePool, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM};
use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::port::{Port, PortId};
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_drivers::mem::{mem_port, MemPortConfig, MemWire};
use pollux_drivers::netdev::Interface;
use pollux_drivers::xdp::{XdpAttachment, XdpMode, XdpProgram};
use pollux_drivers::xsk::{AfXdpPort, Umem, XskConfig, XskSocket};

use crate::compile::{compile, Identities, PortPlan, MAX_MTU};
use crate::model::DesiredState;
use crate::validate::{validate, Binding};
use crate::workers;

/// Ring entries per AF_XDP socket (each of rx, tx, fill, completion).
const XSK_RING: u32 = 1024;
/// Frames beyond what the rings can hold: flood copies and bursts in flight.
const SPARE_FRAMES: u32 = 4096;

/// What `polluxd` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The desired state (TOML).
    pub config: PathBuf,
    /// The CPU the worker is pinned to; `None` picks the last CPU.
    pub core: Option<usize>,
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

/// Drivers' resources that must outlive the worker's ports but not the process: XDP
/// programs (detached when dropped), the interface each AF_XDP port is bound to, and the
/// far ends of mem ports.
#[derive(Default)]
struct Bindings {
    xdp: BTreeMap<PortId, XdpAttachment>,
    /// Interface index each AF_XDP port's sockets are bound to; 0 while it is missing.
    bound_ifindex: BTreeMap<PortId, u32>,
    mem_wires: Vec<MemWire>,
}

/// Reads, validates and compiles the desired state at `path`.
pub fn load(path: &std::path::Path) -> Result<crate::compile::Compiled, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let state =
        DesiredState::from_toml_str(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let valid = validate(&state).map_err(|errors| {
        let mut msg = format!("{}: {} problem(s):", path.display(), errors.len());
        for e in errors {
            let _ = write!(msg, "\n  {e}");
        }
        fail(msg)
    })?;
    compile(&valid, &Identities::default(), 1).map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// Frames the pool needs so that every AF_XDP queue can keep its rings full.
fn pool_frames(plans: &[PortPlan]) -> u32 {
    let queues: u32 = plans
        .iter()
        .map(|p| match &p.binding {
            Binding::Afxdp { queues, .. } => queues.len() as u32,
            _ => 0,
        })
        .sum();
    // Fill ring full, rx ring full (frames handed to the worker), tx in flight.
    queues * XSK_RING * 3 + SPARE_FRAMES
}

/// The MTU of interface `name` in this network namespace.
fn interface_mtu(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad MTU {text:?}")))
}

/// Refuses an interface that can receive frames larger than one frame of the pool: the
/// AF_XDP socket would drop them (as `xdp_rx_dropped`) where no drop reason shows them.
fn check_mtu(interface: &str) -> Result<(), String> {
    match interface_mtu(interface) {
        Ok(mtu) if mtu > u32::from(MAX_MTU) => Err(format!(
            "interface {interface} has MTU {mtu}, above {MAX_MTU}, the largest whose frames fit \
             the data plane's {DEFAULT_FRAME_SIZE}-byte buffers (jumbo frames need multi-buffer \
             AF_XDP, not supported yet); lower it with `ip link set {interface} mtu 1500`"
        )),
        // A missing interface is reported, with its name, by the XDP attach that follows.
        _ => Ok(()),
    }
}

/// Opens the driver for one port.
fn bind(
    plan: &PortPlan,
    pool: &mut FramePool,
    umem: &Umem,
    bindings: &mut Bindings,
) -> Result<(Box<dyn Port>, Vec<u16>), StartError> {
    match &plan.binding {
        Binding::Afxdp { interface, queues } => {
            check_mtu(interface).map_err(|e| fail(format!("{}: {e}", plan.key)))?;
            let max_queue = queues.iter().copied().max().unwrap_or(0);
            let xdp = XdpProgram::attach(interface.as_str(), XdpMode::Auto, max_queue + 1)
                .map_err(|e| fail(format!("{}: interface {interface}: {e}", plan.key)))?;
            let config = XskConfig {
                rx_size: XSK_RING,
                tx_size: XSK_RING,
                fill_size: XSK_RING,
                comp_size: XSK_RING,
                ..XskConfig::default()
            };
            let mut sockets = Vec::new();
            for &q in queues {
                let socket = XskSocket::new(umem, interface.as_str(), q, &config).map_err(|e| {
                    fail(format!(
                        "{}: interface {interface} queue {q}: {e}",
                        plan.key
                    ))
                })?;
                xdp.register(q, socket.fd()).map_err(|e| {
                    fail(format!(
                        "{}: interface {interface} queue {q}: {e}",
                        plan.key
                    ))
                })?;
                eprintln!(
                    "polluxd: {} on {interface} queue {q}: XDP {} mode, AF_XDP {}",
                    plan.key,
                    xdp.mode(),
                    socket.mode_note()
                );
                sockets.push(socket);
            }
            let port = AfXdpPort::new(interface.clone(), sockets, pool)
                .map_err(|e| fail(format!("{}: interface {interface}: {e}", plan.key)))?;
            bindings.bound_ifindex.insert(plan.id, xdp.ifindex());
            bindings.xdp.insert(plan.id, xdp);
            // Port queue i is socket i.
            Ok((Box::new(port), (0..queues.len() as u16).collect()))
        }
        Binding::Mem => {
            let (port, wire) = mem_port(plan.key.clone(), MemPortConfig::default());
            bindings.mem_wires.push(wire);
            Ok((Box::new(port), vec![0]))
        }
        Binding::VhostUser { .. } => Err(fail(format!(
            "{}: vhost-user ports are not supported yet",
            plan.key
        ))),
        Binding::Tap { .. } => Err(fail(format!(
            "{}: tap ports are not supported yet",
            plan.key
        ))),
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

/// The index of interface `name` in this network namespace, 0 if there is none.
fn ifindex(name: &str) -> u32 {
    Interface::from(name)
        .resolve()
        .map_or(0, |(_, index)| index)
}

/// How often the daemon looks for AF_XDP interfaces that vanished or came back.
const LINK_CHECK: std::time::Duration = std::time::Duration::from_millis(500);

/// Rebinds the AF_XDP ports whose interface vanished, reappeared or was recreated (a new
/// index), with the worker paused meanwhile. Returns the (restarted) worker thread.
fn supervise_links(
    thread: workers::WorkerThread,
    plans: &[PortPlan],
    umem: &Umem,
    bindings: &mut Bindings,
    core: usize,
) -> Result<workers::WorkerThread, StartError> {
    let changed: Vec<&PortPlan> = plans
        .iter()
        .filter(|p| match &p.binding {
            Binding::Afxdp { interface, .. } => {
                bindings.bound_ifindex.get(&p.id).copied().unwrap_or(0) != ifindex(interface)
            }
            _ => false,
        })
        .collect();
    if changed.is_empty() {
        return Ok(thread);
    }
    let mut worker = thread
        .pause()
        .map_err(|_| fail("the worker thread panicked"))?
        .worker;
    for plan in changed {
        let Binding::Afxdp { interface, .. } = &plan.binding else {
            continue;
        };
        if worker.detach(plan.id).is_some() {
            eprintln!(
                "polluxd: {}: interface {interface} vanished or was recreated; port closed",
                plan.key
            );
        }
        bindings.xdp.remove(&plan.id);
        bindings.bound_ifindex.insert(plan.id, 0);
        if ifindex(interface) == 0 {
            continue;
        }
        match bind(plan, worker.pool_mut(), umem, bindings) {
            Ok((port, queues)) => {
                worker.attach(plan.id, port, &queues);
                eprintln!(
                    "polluxd: {}: interface {interface} is back; port reopened",
                    plan.key
                );
            }
            Err(e) => eprintln!("polluxd: {e}; will retry"),
        }
    }
    workers::spawn(worker, 0, Some(core)).map_err(|e| fail(format!("worker on CPU {core}: {e}")))
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(options: &Options) -> Result<(), StartError> {
    let signals =
        block_termination_signals().map_err(|e| fail(format!("cannot block signals: {e}")))?;
    let compiled = load(&options.config)?;
    let mut pool = FramePool::new(
        pool_frames(&compiled.ports),
        DEFAULT_FRAME_SIZE,
        DEFAULT_HEADROOM,
    )
    .map_err(|e| fail(format!("frame pool: {e}")))?;
    // SAFETY: every socket made from this UMEM belongs to a port that ends up in the worker
    // (or in `opened`, dropped before `pool` on the error path below), and the worker drops
    // its ports before its pool; no code indexes frames it does not own.
    let umem = unsafe { Umem::new(&pool) }.map_err(|e| fail(format!("AF_XDP UMEM: {e}")))?;
    let mut bindings = Bindings::default();
    let mut opened: Vec<(PortId, Box<dyn Port>, Vec<u16>)> = Vec::new();
    for plan in &compiled.ports {
        match bind(plan, &mut pool, &umem, &mut bindings) {
            Ok((port, queues)) => opened.push((plan.id, port, queues)),
            Err(e) => {
                for (_, mut port, _) in opened {
                    port.release_frames(&mut pool);
                }
                return Err(e);
            }
        }
    }

    let max_ports = compiled
        .ports
        .iter()
        .map(|p| p.id.index() + 1)
        .max()
        .unwrap_or(0);
    let compiled_ports = compiled.ports;
    let mut publisher = Publisher::new(compiled.snapshot);
    let ack = publisher.register_worker();
    let mut worker = Worker::new(
        WorkerConfig::default(),
        pool,
        publisher.cell(),
        ack,
        max_ports,
    );
    let names: Vec<(PortId, String)> = opened
        .iter()
        .map(|(id, p, _)| (*id, p.name().to_string()))
        .collect();
    for (id, port, queues) in opened {
        worker.attach(id, port, &queues);
    }
    let counters = worker.counters();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let core = options.core.unwrap_or(cores - 1);
    let mut thread = workers::spawn(worker, 0, Some(core))
        .map_err(|e| fail(format!("worker on CPU {core}: {e}")))?;
    eprintln!(
        "polluxd: ready: generation {}, {} port(s), worker 0 on CPU {core}",
        publisher.generation(),
        names.len()
    );

    let sig = loop {
        if let Some(sig) = wait_for_signal(&signals, LINK_CHECK) {
            break sig;
        }
        thread = supervise_links(thread, &compiled_ports, &umem, &mut bindings, core)?;
    };
    eprintln!("polluxd: signal {sig}, stopping");
    let stopped = thread
        .stop()
        .map_err(|_| fail("the worker thread panicked"))?;
    publisher.reclaim();
    eprint!("{}", summary(&counters, &names));
    for (id, name) in &names {
        if let Some(port) = stopped.worker.ports().get(*id) {
            let extra: Vec<String> = port
                .stats()
                .extra
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if !extra.is_empty() {
                eprintln!("polluxd:   {name} driver: {}", extra.join(", "));
            }
        }
    }
    // The ports (in the worker) close before the XDP programs detach and the UMEM goes.
    drop(stopped);
    drop(bindings);
    drop(umem);
    Ok(())
}

/// Final counters, one line per port and one per drop reason.
pub fn summary(c: &WorkerCounters, names: &[(PortId, String)]) -> String {
    let mut s = format!(
        "polluxd: worker 0: rx {} tx {} flood copies {} dropped {}\n",
        c.rx_packets.get(),
        c.tx_packets.get(),
        c.replicas.get(),
        c.dropped_total()
    );
    for (id, name) in names {
        if let Some(p) = c.port(*id) {
            let _ = writeln!(
                s,
                "polluxd:   {name}: rx {} pkts {} bytes, tx {} pkts {} bytes, tx dropped {}",
                p.rx_packets.get(),
                p.rx_bytes.get(),
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
