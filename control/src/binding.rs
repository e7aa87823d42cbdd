//! Opening ports for their bindings, split between the control thread and the worker.
//!
//! Everything that can sleep or fail slowly (attaching the XDP program, creating and
//! binding AF_XDP sockets, registering them in the XSKMAP) happens here, on the control
//! thread, into a [`Prepared`] port. What needs the worker's frame pool (filling an AF_XDP
//! port's fill ring) is the [`Prepared::open`] closure, which the engine runs on the
//! worker's thread as a job, so the worker is never stopped to add a port.
//!
//! [`Bindings`] also keeps what must outlive a port's presence in the worker but not the
//! daemon: the XDP programs (detached when dropped), the interface index each AF_XDP port
//! is bound to (to notice an interface that vanished or was recreated), and the far ends of
//! `mem` ports.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use pollux_dataplane::buf::{FramePool, DEFAULT_FRAME_SIZE};
use pollux_dataplane::port::{Port, PortId};
use pollux_drivers::mem::{mem_port, MemPortConfig, MemWire};
use pollux_drivers::netdev::Interface;
use pollux_drivers::tap::{Origin, TapDevice, TapPort, TapPortConfig};
use pollux_drivers::vhost_user::{self, Mailbox, VhostUserBackend, VhostUserPort};
use pollux_drivers::xdp::{XdpAttachment, XdpMode, XdpProgram};
use pollux_drivers::xsk::{AfXdpPort, BusyPoll, Umem, XskConfig, XskSocket};

use crate::compile::{PortPlan, MAX_MTU};
use crate::model::VhostUserMode;
use crate::validate::Binding;

/// Ring entries per AF_XDP socket (each of rx, tx, fill and completion).
pub const XSK_RING: u32 = 1024;

/// Frames one AF_XDP queue can tie up: a full fill ring, a full rx ring (frames handed to
/// the worker) and a full tx ring in flight.
pub const FRAMES_PER_QUEUE: u32 = XSK_RING * 3;

/// The far ends of `mem` ports, by port key (`port:ID`, `uplink:NAME`): whoever plays the
/// peer (a test, a benchmark) takes them from here.
pub type MemWires = Arc<Mutex<BTreeMap<String, MemWire>>>;

/// Opens a prepared port with the worker's pool, on the worker's thread.
pub type Opener = Box<dyn FnOnce(&mut FramePool) -> io::Result<Box<dyn Port>> + Send>;

/// A port made ready off the worker: what remains is [`Prepared::open`] on the worker.
pub struct Prepared {
    /// Runs on the worker's thread.
    pub open: Opener,
    /// Port queues to poll.
    pub queues: Vec<u16>,
    /// Frames of the pool the port will hold at most (see [`FRAMES_PER_QUEUE`]).
    pub frames: u32,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("queues", &self.queues)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

/// What a port is bound to, for logs: `interface NAME` or the driver.
pub fn describe(binding: &Binding) -> String {
    match binding {
        Binding::Afxdp { interface, .. } => format!("interface {interface}"),
        Binding::VhostUser { socket, mode } => {
            format!("vhost-user socket {socket} ({})", mode_name(*mode))
        }
        Binding::Mem => "mem rings".into(),
        Binding::Tap { interface } => format!("tap {interface}"),
    }
}

/// Driver resources of the ports, kept on the control thread. See the module docs.
pub struct Bindings {
    /// One per worker, over that worker's pool: an AF_XDP socket uses the UMEM of the
    /// worker that polls its queue.
    umems: Vec<Umem>,
    mem: MemPortConfig,
    xdp: BTreeMap<PortId, XdpAttachment>,
    /// Interface index each AF_XDP port's sockets are bound to.
    ifindex: BTreeMap<PortId, u32>,
    wires: MemWires,
    /// The protocol thread of each vhost-user port (stopped when removed).
    vhost_user: BTreeMap<PortId, (VhostUserBackend, Arc<Mailbox>)>,
}

impl std::fmt::Debug for Bindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bindings")
            .field("umems", &self.umems)
            .field("xdp", &self.xdp.len())
            .field("ifindex", &self.ifindex)
            .finish_non_exhaustive()
    }
}

impl Bindings {
    /// Bindings whose AF_XDP sockets use `umems[w]` on worker `w`, whose `mem` ports have
    /// rings of `mem` geometry, and whose `mem` far ends go to `wires`.
    pub fn new(umems: Vec<Umem>, mem: MemPortConfig, wires: MemWires) -> Self {
        Bindings {
            umems,
            mem,
            xdp: BTreeMap::new(),
            ifindex: BTreeMap::new(),
            wires,
            vhost_user: BTreeMap::new(),
        }
    }

    /// Frames `binding` would hold once open.
    pub fn frames_needed(binding: &Binding) -> u32 {
        match binding {
            Binding::Afxdp { queues, .. } => queues.len() as u32 * FRAMES_PER_QUEUE,
            _ => 0,
        }
    }

    /// Receive queues `binding` has (each polled by one worker).
    pub fn queue_count(binding: &Binding) -> usize {
        match binding {
            Binding::Afxdp { queues, .. } => queues.len().max(1),
            _ => 1,
        }
    }

    /// Prepares `plan`'s port, queue `i` for worker `owners[i]` (one owner per queue, see
    /// [`Bindings::queue_count`]): a part per worker, each opened on its worker and
    /// holding only that worker's queues. For AF_XDP: checks the MTU, attaches the XDP
    /// program, creates one socket per queue on its worker's UMEM and registers it.
    /// Errors name the interface and queue.
    pub fn prepare(
        &mut self,
        plan: &PortPlan,
        owners: &[u16],
    ) -> Result<Vec<(u16, Prepared)>, String> {
        let first = owners.first().copied().unwrap_or(0);
        match &plan.binding {
            Binding::Afxdp { interface, queues } => {
                self.prepare_afxdp(plan, interface, queues, owners)
            }
            other => self.prepare_one(plan, other).map(|p| vec![(first, p)]),
        }
    }

    fn prepare_one(&mut self, plan: &PortPlan, binding: &Binding) -> Result<Prepared, String> {
        match binding {
            Binding::Afxdp { .. } => Err("AF_XDP ports are prepared per worker".into()),
            Binding::Mem => {
                let (port, wire) = mem_port(plan.key.clone(), self.mem);
                lock(&self.wires).insert(plan.key.clone(), wire);
                Ok(Prepared {
                    open: Box::new(move |_| Ok(Box::new(port) as Box<dyn Port>)),
                    queues: vec![0],
                    frames: 0,
                })
            }
            Binding::VhostUser { socket, mode } => self.prepare_vhost_user(plan, socket, *mode),
            // TSO with one worker only: the rings between workers carry one frame per
            // packet, so a super-frame could not be handed to another worker.
            Binding::Tap { interface } => prepare_tap(plan, interface, self.umems.len() <= 1),
        }
    }

    fn prepare_afxdp(
        &mut self,
        plan: &PortPlan,
        interface: &str,
        queues: &[u32],
        owners: &[u16],
    ) -> Result<Vec<(u16, Prepared)>, String> {
        check_mtu(interface, MAX_MTU)?;
        let max_queue = queues.iter().copied().max().unwrap_or(0);
        let xdp = XdpProgram::attach(interface, XdpMode::Auto, max_queue + 1)
            .map_err(|e| format!("interface {interface}: {e}"))?;
        let config = XskConfig {
            rx_size: XSK_RING,
            tx_size: XSK_RING,
            fill_size: XSK_RING,
            comp_size: XSK_RING,
            busy_poll: busy_poll(),
            ..XskConfig::default()
        };
        // The sockets of each worker, in queue order.
        let mut parts: BTreeMap<u16, Vec<XskSocket>> = BTreeMap::new();
        for (i, &q) in queues.iter().enumerate() {
            let worker = owners.get(i).copied().unwrap_or(0);
            let umem = self
                .umems
                .get(usize::from(worker))
                .ok_or_else(|| format!("interface {interface} queue {q}: no worker {worker}"))?;
            let socket = XskSocket::new(umem, interface, q, &config)
                .and_then(|s| xdp.register(q, s.fd()).map(|()| s))
                .map_err(|e| format!("interface {interface} queue {q}: {e}"))?;
            pollux_services::info!(
                "{} on {interface} queue {q}: XDP {} mode, AF_XDP {}",
                plan.key,
                xdp.mode(),
                socket.mode_note()
            );
            parts.entry(worker).or_default().push(socket);
        }
        self.ifindex.insert(plan.id, xdp.ifindex());
        self.xdp.insert(plan.id, xdp);
        Ok(parts
            .into_iter()
            .map(|(worker, sockets)| {
                let name = interface.to_string();
                let n = sockets.len();
                let part = Prepared {
                    frames: n as u32 * FRAMES_PER_QUEUE,
                    // Queue i of the worker's part is its socket i; it transmits on its
                    // first.
                    queues: (0..n as u16).collect(),
                    open: Box::new(move |pool: &mut FramePool| {
                        AfXdpPort::new(name, sockets, pool).map(|p| Box::new(p) as Box<dyn Port>)
                    }) as Opener,
                };
                (worker, part)
            })
            .collect())
    }

    /// Starts the protocol thread of a vhost-user port (binding its socket now in server
    /// mode, so that a bad path fails the apply); the worker's port takes its queues from
    /// the mailbox when a front end has set them up.
    fn prepare_vhost_user(
        &mut self,
        plan: &PortPlan,
        socket: &str,
        mode: VhostUserMode,
    ) -> Result<Prepared, String> {
        // A port rebound in place (same id) stops its old thread first, freeing the path.
        self.vhost_user.remove(&plan.id);
        let driver_mode = match mode {
            VhostUserMode::Server => {
                check_socket_path(socket)?;
                vhost_user::Mode::Server
            }
            VhostUserMode::Client => vhost_user::Mode::Client,
        };
        let mailbox = Mailbox::new();
        let backend = VhostUserBackend::start(&plan.key, socket, driver_mode, Arc::clone(&mailbox))
            .map_err(|e| format!("vhost-user socket {socket}: {e}"))?;
        pollux_services::info!(
            "{} on vhost-user socket {socket}: {}",
            plan.key,
            match mode {
                VhostUserMode::Server => "listening",
                VhostUserMode::Client => "connecting (and reconnecting) to the VM's process",
            }
        );
        self.vhost_user
            .insert(plan.id, (backend, Arc::clone(&mailbox)));
        let name = plan.key.clone();
        Ok(Prepared {
            open: Box::new(move |_| {
                Ok(Box::new(VhostUserPort::new(name, mailbox)) as Box<dyn Port>)
            }),
            queues: vec![0],
            frames: 0,
        })
    }

    /// The vhost-user state of port `id`, if it is a vhost-user port.
    pub fn vhost_user_status(&self, id: PortId) -> Option<(vhost_user::Status, u64)> {
        self.vhost_user
            .get(&id)
            .map(|(_, m)| (m.status(), m.broken()))
    }

    /// Each vhost-user port's mailbox (its shared state).
    pub fn vhost_user_mailboxes(&self) -> impl Iterator<Item = (PortId, Arc<Mailbox>)> + '_ {
        self.vhost_user
            .iter()
            .map(|(id, (_, m))| (*id, Arc::clone(m)))
    }

    /// Forgets the driver resources of port `id` (detaching its XDP program, dropping the
    /// far end of a mem port with key `key`, stopping a vhost-user protocol thread). The
    /// port itself must be closed already.
    pub fn release(&mut self, id: PortId, key: &str) {
        self.vhost_user.remove(&id);
        self.xdp.remove(&id);
        self.ifindex.remove(&id);
        lock(&self.wires).remove(key);
    }

    /// Whether `plan`'s port is bound to what its binding names now: false for an AF_XDP
    /// port whose interface is gone or was recreated (another index) since it was bound.
    pub fn is_current(&self, plan: &PortPlan) -> bool {
        match &plan.binding {
            Binding::Afxdp { interface, .. } => {
                self.ifindex.get(&plan.id).copied().unwrap_or(0) == ifindex(interface)
            }
            _ => true,
        }
    }

    /// Whether the interface `plan`'s binding names exists (always true for other drivers).
    pub fn interface_present(plan: &PortPlan) -> bool {
        match &plan.binding {
            Binding::Afxdp { interface, .. } => ifindex(interface) != 0,
            _ => true,
        }
    }

    /// Why `plan`'s kernel interface can no longer stay bound: its MTU was raised above
    /// what one pool frame holds (checked at bind time too, see [`check_mtu`]). `None` for
    /// other drivers and for an interface that is gone (the link check handles that).
    pub fn mtu_refusal(plan: &PortPlan) -> Option<String> {
        match &plan.binding {
            Binding::Afxdp { interface, .. } => check_mtu(interface, MAX_MTU).err(),
            Binding::Tap { interface } => check_mtu(interface, TAP_MAX_MTU).err(),
            _ => None,
        }
    }

    /// The MTU of `plan`'s kernel interface, if it has one in this namespace.
    pub fn interface_mtu(plan: &PortPlan) -> Option<u32> {
        match &plan.binding {
            Binding::Afxdp { interface, .. } | Binding::Tap { interface } => {
                interface_mtu(interface).ok()
            }
            _ => None,
        }
    }

    /// The XDP mode of port `id`, if it is an AF_XDP port.
    pub fn xdp_mode(&self, id: PortId) -> Option<String> {
        self.xdp.get(&id).map(|x| x.mode().to_string())
    }
}

/// Opens `plan`'s tap on the control thread (attaching to an existing tap or creating
/// it: see `pollux_drivers::tap::device`); the worker then sets up its io_uring queue and
/// posts the reads. The port holds no pool frames between calls. `tso`: negotiate TSO
/// (TCP super-frames carried whole between such ports, segmented for the others).
fn prepare_tap(plan: &PortPlan, interface: &str, tso: bool) -> Result<Prepared, String> {
    check_mtu(interface, TAP_MAX_MTU)?;
    let device =
        TapDevice::open_with(interface, tso).map_err(|e| format!("tap {interface}: {e}"))?;
    pollux_services::info!(
        "{} on tap {interface}: {}{}",
        plan.key,
        match device.origin {
            Origin::Created => "created (removed when the port closes)".to_string(),
            Origin::Attached { multi_queue } => format!(
                "attached to the existing device{}",
                if multi_queue { " (multi_queue)" } else { "" }
            ),
        },
        if device.tso { "; TSO on" } else { "" }
    );
    let name = interface.to_string();
    Ok(Prepared {
        open: Box::new(move |_pool| {
            let config = TapPortConfig::for_device(&device);
            TapPort::new(device, TAP_MAX_FRAME, config)
                .map(|p| Box::new(p) as Box<dyn Port>)
                .map_err(|e| io::Error::new(e.kind(), format!("tap {name}: io_uring queue: {e}")))
        }),
        queues: vec![0],
        frames: 0,
    })
}

/// The name of a vhost-user mode, as in the configuration.
pub fn mode_name(mode: VhostUserMode) -> &'static str {
    match mode {
        VhostUserMode::Server => "server",
        VhostUserMode::Client => "client",
    }
}

/// Refuses a server-mode socket path whose directory is missing, that is something other
/// than a socket (never unlinked: polluxd runs as root), or a socket another process
/// serves; a stale socket of a process that died is removed.
fn check_socket_path(path: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let p = std::path::Path::new(path);
    match p.parent().map(std::fs::metadata) {
        Some(Ok(m)) if m.is_dir() => {}
        _ => {
            return Err(format!(
                "vhost-user socket {path}: its directory does not exist"
            ))
        }
    }
    match std::fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if !m.file_type().is_socket() => Err(format!(
            "vhost-user socket {path}: the path exists and is not a socket"
        )),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(p).is_ok() {
                return Err(format!(
                    "vhost-user socket {path}: another process is listening on it"
                ));
            }
            std::fs::remove_file(p)
                .map_err(|e| format!("vhost-user socket {path}: removing the stale socket: {e}"))
        }
    }
}

/// Preferred busy polling for every AF_XDP socket this process binds (`polluxd
/// --busy-poll`); set once at startup, off unless set.
static BUSY_POLL: std::sync::OnceLock<BusyPoll> = std::sync::OnceLock::new();

/// Turns on preferred busy polling for every AF_XDP socket bound from now on. Only the
/// first call counts.
pub fn set_busy_poll(config: BusyPoll) {
    let _ = BUSY_POLL.set(config);
}

fn busy_poll() -> Option<BusyPoll> {
    BUSY_POLL.get().copied()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Only inserts and removes happen under the lock: a panic cannot leave it half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The index of interface `name` in this network namespace, 0 if there is none.
pub fn ifindex(name: &str) -> u32 {
    Interface::from(name)
        .resolve()
        .map_or(0, |(_, index)| index)
}

/// The MTU of interface `name` in this network namespace.
fn interface_mtu(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad MTU {text:?}")))
}

/// The largest MTU of a tap port's interface: the largest a network may have (a tap
/// port's frames larger than one pool frame are chained; see `pollux_dataplane::buf`).
const TAP_MAX_MTU: u16 = crate::validate::JUMBO_MTU as u16;
/// A tap port's largest frame: its MTU with an Ethernet header and one 802.1Q tag.
const TAP_MAX_FRAME: usize = TAP_MAX_MTU as usize + 18;

/// Refuses an interface that can receive frames larger than its port can carry (`limit`,
/// an MTU): the AF_XDP socket would drop them (as `xdp_rx_dropped`) where no drop reason
/// shows them, a tap port as `rx_oversize`.
fn check_mtu(interface: &str, limit: u16) -> Result<(), String> {
    match interface_mtu(interface) {
        Ok(mtu) if mtu > u32::from(limit) && limit == MAX_MTU => Err(format!(
            "interface {interface} has MTU {mtu}, above {MAX_MTU}, the largest whose frames fit \
             the data plane's {DEFAULT_FRAME_SIZE}-byte buffers (jumbo frames on AF_XDP need \
             multi-buffer sockets, not supported yet; tap ports carry them); lower it with \
             `ip link set {interface} mtu 1500`"
        )),
        Ok(mtu) if mtu > u32::from(limit) => Err(format!(
            "interface {interface} has MTU {mtu}, above {limit}, the largest a port of this \
             kind carries; lower it with `ip link set {interface} mtu {limit}`"
        )),
        // A missing interface is reported, with its name, by the XDP attach that follows.
        _ => Ok(()),
    }
}
