//! The vhost-user protocol, back-end side, on a thread of its own per port: the `vhost`
//! crate parses and answers the messages (including `REPLY_ACK`), [`Handler`] keeps the
//! device state they build, and hands a started device to the worker through the
//! [`Mailbox`].
//!
//! What is offered: `VERSION_1`, `MRG_RXBUF`, `MQ` (up to [`MAX_QUEUE_PAIRS`] pairs),
//! `INDIRECT_DESC`, `EVENT_IDX` and `PROTOCOL_FEATURES`; as protocol features `REPLY_ACK`
//! and `MQ`. No checksum or segmentation offload, no dirty logging: the front end
//! negotiates them away. The queues start when there is a memory table and the first pair
//! has a size, addresses and a kick (and, with `PROTOCOL_FEATURES`, is enabled), with every
//! other queue that is ready by then; `GET_VRING_BASE` stops them and answers with the
//! worker's last index; a new memory table, call eventfd, ring address, queue enabled or
//! disabled, or queue set up while running stops the worker's queues first
//! (acknowledged) and starts the new set.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    BackendReqHandler, Error, GpuBackend, Listener, Result, VhostUserBackendReqHandlerMut,
};

use super::mailbox::{Command, Device, Mailbox, QueueSetup, MAX_QUEUES, MAX_QUEUE_PAIRS};
use super::memory::{GuestMemory, RegionSpec};
use super::ring::{VringAddrs, MAX_QUEUE_SIZE};

/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_MQ`.
pub const F_MQ: u64 = 1 << 22;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << 28;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// Every virtio feature offered.
pub const OFFERED: u64 =
    F_MRG_RXBUF | F_MQ | F_INDIRECT_DESC | F_EVENT_IDX | F_PROTOCOL_FEATURES | F_VERSION_1;

/// The names of the offered features in `features`, for `polluxctl show ports`.
pub fn feature_names(features: u64) -> Vec<&'static str> {
    [
        (F_VERSION_1, "VERSION_1"),
        (F_MRG_RXBUF, "MRG_RXBUF"),
        (F_MQ, "MQ"),
        (F_INDIRECT_DESC, "INDIRECT_DESC"),
        (F_EVENT_IDX, "EVENT_IDX"),
        (F_PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
    ]
    .into_iter()
    .filter(|(bit, _)| features & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// How long the protocol thread waits for the worker to take a command (the worker looks
/// every few microseconds when it runs; longer means it is not running this port yet).
const WORKER_ACK: Duration = Duration::from_secs(1);

/// How often the thread looks at its stop flag while it waits for a front end (the
/// longest a port removal waits for it).
const POLL_MS: i32 = 50;

/// Pollux's role on the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pollux listens, the VM's process connects (QEMU `server=off`).
    Server,
    /// Pollux connects to the VM's process, and reconnects when it restarts.
    Client,
}

#[derive(Debug, Default)]
struct QueueState {
    size: u16,
    addrs: Option<(u64, u64, u64)>,
    base: u16,
    kicked: bool,
    enabled: bool,
    call: Option<File>,
    err: Option<File>,
}

impl QueueState {
    /// Set up far enough to run: size, addresses and kick.
    fn ready(&self) -> bool {
        self.size > 0 && self.addrs.is_some() && self.kicked
    }
}

/// The device state the messages of one connection build.
#[derive(Debug)]
struct Handler {
    mailbox: Arc<Mailbox>,
    name: String,
    owned: bool,
    features: u64,
    protocol: u64,
    /// SET_PROTOCOL_FEATURES was received on this connection.
    protocol_set: bool,
    mem: Option<Arc<GuestMemory>>,
    /// By queue number (pair `p`: receive `2 * p`, transmit `2 * p + 1`).
    queues: [QueueState; MAX_QUEUES],
    running: bool,
    /// The front end enabled the rings before it set the features (QEMU restores the
    /// enable state first, then starts the device), and the crate refused the message.
    early_enable: bool,
    /// How long to wait for the worker's acknowledgements: zero once the port is being
    /// removed (the engine has taken it out of the worker already, nobody would answer).
    ack_timeout: Duration,
}

fn param(what: &str) -> Error {
    Error::ReqHandlerError(io::Error::new(
        io::ErrorKind::InvalidInput,
        what.to_string(),
    ))
}

fn unsupported(what: &str) -> Error {
    Error::ReqHandlerError(io::Error::new(io::ErrorKind::Unsupported, what.to_string()))
}

fn queue(index: u32) -> Result<usize> {
    match usize::try_from(index) {
        Ok(q) if q < MAX_QUEUES => Ok(q),
        _ => Err(param(
            "queue beyond the queue pairs offered (GET_QUEUE_NUM)",
        )),
    }
}

impl Handler {
    fn new(name: String, mailbox: Arc<Mailbox>) -> Handler {
        Handler {
            mailbox,
            name,
            owned: false,
            features: 0,
            protocol: 0,
            protocol_set: false,
            mem: None,
            queues: Default::default(),
            running: false,
            early_enable: false,
            ack_timeout: WORKER_ACK,
        }
    }

    /// Stops the worker's queues (waiting for it) and remembers where they stopped.
    fn stop(&mut self) {
        if !self.running {
            return;
        }
        if !self.mailbox.send(Command::Stop, self.ack_timeout) && !self.ack_timeout.is_zero() {
            pollux_services_log(
                &self.name,
                "the worker did not acknowledge the stop in time",
            );
        }
        let bases = self.mailbox.bases();
        for (q, b) in self.queues.iter_mut().zip(bases) {
            q.base = b;
        }
        self.running = false;
        self.mailbox.update_status(|s| {
            s.running = false;
            s.queues_running.clear();
        });
    }

    /// Starts the queues in the worker when everything they need is there: the memory
    /// table and the first pair; every other queue set up (and enabled) by then starts
    /// with them, later ones restart the device.
    fn try_start(&mut self) -> Result<()> {
        let need_enable = self.features & F_PROTOCOL_FEATURES != 0 && !self.early_enable;
        let runs = |q: &QueueState| q.ready() && (q.enabled || !need_enable);
        let ready = self.mem.is_some() && self.queues[..2].iter().all(runs);
        if !ready || self.running {
            return Ok(());
        }
        let Some(mem) = self.mem.clone() else {
            return Ok(());
        };
        let mut queues = Vec::with_capacity(MAX_QUEUES);
        for q in &self.queues {
            if !runs(q) {
                queues.push(None);
                continue;
            }
            let (desc, used, avail) = q.addrs.unwrap_or_default();
            let dup = |f: &Option<File>| -> Result<Option<File>> {
                f.as_ref()
                    .map(|f| f.try_clone().map_err(Error::ReqHandlerError))
                    .transpose()
            };
            let (call, err) = (dup(&q.call)?, dup(&q.err)?);
            queues.push(Some(QueueSetup {
                addrs: VringAddrs {
                    size: q.size,
                    desc,
                    avail,
                    used,
                },
                base: q.base,
                call,
                err,
            }));
        }
        while queues.len() > 2 && queues.last().is_some_and(Option::is_none) {
            queues.pop();
        }
        let running: Vec<u16> = (0..queues.len() as u16)
            .filter(|&q| queues[usize::from(q)].is_some())
            .collect();
        let mergeable = self.features & F_MRG_RXBUF != 0;
        let hdr_len = if self.features & (F_VERSION_1 | F_MRG_RXBUF) != 0 {
            12
        } else {
            10
        };
        let dev = Device {
            mem,
            queues,
            hdr_len,
            mergeable,
            event_idx: self.features & F_EVENT_IDX != 0,
            indirect: self.features & F_INDIRECT_DESC != 0,
        };
        if !self
            .mailbox
            .send(Command::Start(Arc::new(dev)), self.ack_timeout)
        {
            pollux_services_log(
                &self.name,
                "queues ready; the worker takes them when it runs the port",
            );
        }
        self.running = true;
        let sizes = self.queue_sizes();
        self.mailbox.update_status(|s| {
            s.running = true;
            s.queue_sizes = sizes;
            s.queues_running = running;
        });
        Ok(())
    }

    /// Each queue's size up to the last one set up.
    fn queue_sizes(&self) -> Vec<u16> {
        let n = self
            .queues
            .iter()
            .rposition(|q| q.size > 0)
            .map_or(0, |i| i + 1);
        self.queues[..n].iter().map(|q| q.size).collect()
    }

    /// Applies a change to a running device: stop, change, start again.
    fn restarting<T>(&mut self, change: impl FnOnce(&mut Handler) -> Result<T>) -> Result<T> {
        let was = self.running;
        self.stop();
        let out = change(self)?;
        if was {
            self.try_start()?;
        }
        Ok(out)
    }

    /// Forgets the connection's state (the front end went away or reset the device).
    fn reset(&mut self) {
        self.stop();
        self.mem = None;
        self.queues = Default::default();
        self.features = 0;
        self.protocol = 0;
        self.protocol_set = false;
        self.owned = false;
        self.early_enable = false;
        self.mailbox.update_status(|s| {
            s.features = 0;
            s.protocol_features = 0;
            s.queue_sizes.clear();
        });
    }
}

/// Logs a line for port `name` (no dependency on the services crate: plain stderr, as the
/// daemon's own log lines are).
fn pollux_services_log(name: &str, what: &str) {
    eprintln!("polluxd: {name}: vhost-user: {what}");
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> Result<()> {
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.reset();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        self.reset();
        self.owned = true;
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(OFFERED)
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        if features & !OFFERED != 0 {
            return Err(param("features that were not offered"));
        }
        self.features = features;
        self.mailbox.update_status(|s| s.features = features);
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<u64>>> {
        let specs: Vec<RegionSpec> = regions
            .iter()
            .map(|r| RegionSpec {
                guest_phys_addr: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        let mem = GuestMemory::map(&specs, &files).map_err(Error::ReqHandlerError)?;
        // The old table goes only after the worker let go of its rings (`stop` waits for
        // the acknowledgement); their `Arc` keeps it mapped even if it never answers.
        self.restarting(|h| {
            h.mem = Some(Arc::new(mem));
            Ok(None)
        })
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let q = queue(index)?;
        if num == 0 || !num.is_power_of_two() || num > u32::from(MAX_QUEUE_SIZE) {
            return Err(param("queue size is not a power of two up to 32768"));
        }
        self.restarting(|h| {
            h.queues[q].size = num as u16;
            Ok(())
        })
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let q = queue(index)?;
        if !flags.is_empty() {
            // VHOST_VRING_F_LOG: dirty logging is not offered.
            return Err(unsupported("ring logging is not supported"));
        }
        self.restarting(|h| {
            h.queues[q].addrs = Some((descriptor, used, available));
            Ok(())
        })
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let q = queue(index)?;
        let base = u16::try_from(base).map_err(|_| param("ring base above 65535"))?;
        self.restarting(|h| {
            h.queues[q].base = base;
            Ok(())
        })
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        let q = queue(index)?;
        // Stopping one ring stops the device's pair: a front end stops both anyway.
        self.stop();
        self.queues[q].kicked = false;
        Ok(VhostUserVringState::new(
            index,
            u32::from(self.queues[q].base),
        ))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = queue(u32::from(index))?;
        // The worker polls: the used ring tells the guest not to kick, and the eventfd
        // is not read (dropping it closes only this process's copy).
        drop(fd);
        if self.queues[q].kicked {
            return self.try_start();
        }
        // A queue that joins a running device (another pair) restarts it.
        self.restarting(|h| {
            h.queues[q].kicked = true;
            Ok(())
        })?;
        self.try_start()
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = queue(u32::from(index))?;
        self.restarting(|h| {
            h.queues[q].call = fd;
            Ok(())
        })
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let q = queue(u32::from(index))?;
        self.restarting(|h| {
            h.queues[q].err = fd;
            Ok(())
        })
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        // REPLY_ACK is added by the crate, which implements it.
        Ok(VhostUserProtocolFeatures::MQ)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let offered = VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ;
        if features & !offered.bits() != 0 {
            return Err(param("protocol features that were not offered"));
        }
        self.protocol = features;
        self.protocol_set = true;
        self.mailbox
            .update_status(|s| s.protocol_features = features);
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(MAX_QUEUE_PAIRS as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let q = queue(index)?;
        if self.queues[q].enabled == enable {
            return Ok(());
        }
        // The worker runs exactly the enabled queues: a change restarts the device (a
        // disabled first pair stops it until enabled again).
        self.restarting(|h| {
            h.queues[q].enabled = enable;
            Ok(())
        })?;
        self.try_start()
    }

    fn get_config(&mut self, _: u32, _: u32, _: VhostUserConfigFlags) -> Result<Vec<u8>> {
        Err(unsupported("CONFIG is not offered"))
    }

    fn set_config(&mut self, _: u32, _: &[u8], _: VhostUserConfigFlags) -> Result<()> {
        Err(unsupported("CONFIG is not offered"))
    }

    fn set_gpu_socket(&mut self, _: GpuBackend) -> Result<()> {
        Err(unsupported("not a GPU"))
    }

    fn get_shared_object(&mut self, _: VhostUserSharedMsg) -> Result<File> {
        Err(unsupported("SHARED_OBJECT is not offered"))
    }

    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        Err(unsupported("INFLIGHT_SHMFD is not offered"))
    }

    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> Result<()> {
        Err(unsupported("INFLIGHT_SHMFD is not offered"))
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(unsupported("CONFIGURE_MEM_SLOTS is not offered"))
    }

    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> Result<Option<u64>> {
        Err(unsupported("CONFIGURE_MEM_SLOTS is not offered"))
    }

    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(unsupported("CONFIGURE_MEM_SLOTS is not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> Result<Option<File>> {
        Err(unsupported("DEVICE_STATE is not offered"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(unsupported("DEVICE_STATE is not offered"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(unsupported("SHMEM is not offered"))
    }

    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> Result<()> {
        Err(unsupported("LOG_SHMFD is not offered"))
    }
}

/// The protocol thread of one port; stopped (and its socket file removed, in server
/// mode) when dropped.
#[derive(Debug)]
pub struct VhostUserBackend {
    stop: Arc<AtomicBool>,
    /// The connection being served, to shut it down from here.
    conn: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    mode: Mode,
}

impl VhostUserBackend {
    /// Starts serving port `name` on `path` in `mode`. In server mode the socket is bound
    /// here (an error names the path); in client mode the thread connects, and reconnects.
    pub fn start(
        name: &str,
        path: &str,
        mode: Mode,
        mailbox: Arc<Mailbox>,
    ) -> io::Result<VhostUserBackend> {
        let listener = match mode {
            Mode::Server => {
                let l = Listener::new(path, true).map_err(io::Error::other)?;
                l.set_nonblocking(true).map_err(io::Error::other)?;
                Some(l)
            }
            Mode::Client => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Arc::new(Mutex::new(None));
        let handler = Arc::new(Mutex::new(Handler::new(name.to_string(), mailbox)));
        let (t_stop, t_conn, t_path) = (Arc::clone(&stop), Arc::clone(&conn), path.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("pollux-vu-{name}"))
            .spawn(move || serve(listener, &t_path, &t_stop, &t_conn, &handler))?;
        Ok(VhostUserBackend {
            stop,
            conn,
            thread: Some(thread),
            path: PathBuf::from(path),
            mode,
        })
    }
}

impl Drop for VhostUserBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(c) = lock(&self.conn).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.mode == Mode::Server {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections are single stores or takes (the handler's are the crate's calls,
    // each of which leaves the state consistent between messages).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits up to `ms` for `fd` to be readable; true when it is.
fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// The thread: accept (server) or connect (client), serve one connection until it ends,
/// reset, repeat, until stopped.
fn serve(
    listener: Option<Listener>,
    path: &str,
    stop: &AtomicBool,
    conn: &Mutex<Option<UnixStream>>,
    handler: &Arc<Mutex<Handler>>,
) {
    let name = lock(handler).name.clone();
    let mailbox = Arc::clone(&lock(handler).mailbox);
    while !stop.load(Ordering::Relaxed) {
        let stream = match &listener {
            Some(l) => {
                if !readable(l.as_raw_fd(), POLL_MS) {
                    continue;
                }
                match l.accept() {
                    Ok(Some(s)) => s,
                    _ => continue,
                }
            }
            None => match UnixStream::connect(path) {
                Ok(s) => s,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(POLL_MS as u64));
                    continue;
                }
            },
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        *lock(conn) = Some(clone);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        mailbox.update_status(|s| s.connected = true);
        pollux_services_log(&name, "front end connected");
        let mut session = BackendReqHandler::from_stream(stream, Arc::clone(handler));
        let why = loop {
            match session.handle_request() {
                Ok(()) => {}
                // A refused request was read whole (and answered, with REPLY_ACK), so the
                // stream is in step: note it and go on. QEMU, for one, disables the rings
                // before it sets the features that make SET_VRING_ENABLE valid.
                // The one message the crate refuses for want of acknowledged features
                // is SET_VRING_ENABLE, which QEMU sends (to enable: it restores the
                // state) before SET_FEATURES. The spec allows it once the protocol
                // features are negotiated, which they are by then; DPDK takes it.
                Err(Error::InactiveFeature(f))
                    if f.bits() == F_PROTOCOL_FEATURES && lock(handler).protocol_set =>
                {
                    lock(handler).early_enable = true;
                }
                Err(
                    e @ (Error::ReqHandlerError(_)
                    | Error::InvalidParam
                    | Error::InvalidOperation(_)
                    | Error::InactiveFeature(_)
                    | Error::InactiveOperation(_)
                    | Error::FeatureMismatch),
                ) => {
                    let text = e.to_string();
                    pollux_services_log(&name, &format!("refused a request: {text}"));
                    mailbox.update_status(|s| s.last_error = Some(text));
                }
                Err(e) => break e,
            }
        };
        *lock(conn) = None;
        let mut h = lock(handler);
        if stop.load(Ordering::Relaxed) {
            h.ack_timeout = Duration::ZERO;
        }
        h.reset();
        drop(h);
        let text = why.to_string();
        pollux_services_log(&name, &format!("front end gone ({text})"));
        mailbox.update_status(|s| {
            s.connected = false;
            s.disconnects += 1;
            if !matches!(why, Error::Disconnected | Error::PartialMessage) {
                s.last_error = Some(text);
            }
        });
        if listener.is_none() && !stop.load(Ordering::Relaxed) {
            // A client that lost its server waits a little before trying again.
            std::thread::sleep(Duration::from_millis(POLL_MS as u64));
        }
    }
}
