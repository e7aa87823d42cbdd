//! `polluxd`: reads the desired state, binds every port to its driver, runs the worker and
//! shuts down cleanly on SIGINT or SIGTERM.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;

use pollux_dataplane::buf::{FramePool, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM};
use pollux_dataplane::counters::WorkerCounters;
use pollux_dataplane::port::{Port, PortId};
use pollux_dataplane::publish::Publisher;
use pollux_dataplane::worker::{Worker, WorkerConfig};
use pollux_drivers::mem::{mem_port, MemPortConfig, MemWire};
use pollux_drivers::xdp::{XdpAttachment, XdpMode, XdpProgram};
use pollux_drivers::xsk::{AfXdpPort, Umem, XskConfig, XskSocket};

use crate::compile::{compile, Identities, PortPlan};
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
/// programs (detached when dropped) and the far ends of mem ports.
#[derive(Default)]
struct Bindings {
    xdp: Vec<XdpAttachment>,
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

/// Opens the driver for one port.
fn bind(
    plan: &PortPlan,
    pool: &mut FramePool,
    umem: &Umem,
    bindings: &mut Bindings,
) -> Result<(Box<dyn Port>, Vec<u16>), StartError> {
    match &plan.binding {
        Binding::Afxdp { interface, queues } => {
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
            bindings.xdp.push(xdp);
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

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out-pointer; sigwait
    // only reads the one and writes the other.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    if rc != 0 {
        return libc::SIGTERM;
    }
    sig
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
    drop(umem);

    let max_ports = compiled
        .ports
        .iter()
        .map(|p| p.id.index() + 1)
        .max()
        .unwrap_or(0);
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
    let thread = workers::spawn(worker, 0, Some(core))
        .map_err(|e| fail(format!("worker on CPU {core}: {e}")))?;
    eprintln!(
        "polluxd: ready: generation {}, {} port(s), worker 0 on CPU {core}",
        publisher.generation(),
        names.len()
    );

    let sig = wait_for_signal(&signals);
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
    drop(stopped);
    drop(bindings);
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
