//! The AF_XDP driver: sockets whose UMEM is the worker's [`FramePool`].
//!
//! # Pieces
//!
//! - [`Umem`] describes the pool's region for `XDP_UMEM_REG` and remembers which sockets
//!   use it. The kernel attaches a UMEM to a socket, not to a file of its own: the first
//!   [`XskSocket`] made from a `Umem` registers the region on itself; every later one binds
//!   with `XDP_SHARED_UMEM` naming a live earlier socket, so all sockets of a worker (its
//!   ports and queues) share one registration and one address space of descriptors, and
//!   forwarding between two AF_XDP ports moves a descriptor, never bytes.
//! - [`XskSocket`] is one bound socket (interface + queue) with its four rings mmapped: rx
//!   and tx, and its own fill and completion rings (`XDP_UMEM_FILL_RING` /
//!   `XDP_UMEM_COMPLETION_RING` set on each socket, as the kernel requires when sockets on
//!   *different* interfaces or queues share a UMEM; two sockets on the *same* interface and
//!   queue, which would have to share one fill ring, are not supported).
//! - [`AfXdpPort`] implements [`Port`] over one socket per port queue.
//!
//! # Addresses and headroom
//!
//! The UMEM is registered in *aligned* mode with `chunk_size = pool.frame_size()`, so one
//! chunk is one pool frame and a descriptor address `a` lies in frame `a >> log2(size)`
//! ([`FramePool::frame_of_addr`]). In aligned mode the kernel ignores the offset of a fill
//! ring address: it masks it to the chunk start and writes received data at
//! `chunk + umem headroom + XDP_PACKET_HEADROOM` (256). We therefore
//!
//! - put chunk starts (`frame_addr(f)`) on the fill ring;
//! - register a UMEM headroom of `pool.headroom() - 256` (0 for the default 256-byte pool
//!   headroom), so received data starts at least `pool.headroom()` bytes into the frame and
//!   a VLAN tag or VXLAN header can be pushed in front of it;
//! - turn an rx descriptor into `Packet { frame: frame_of_addr(addr), offset: addr -
//!   frame_addr(frame), len }`, taking the offset from the descriptor rather than assuming
//!   it, so [`FramePool::data`] finds the bytes even after an XDP program moved the start;
//! - transmit `addr = frame_addr(frame) + offset`, which aligned mode accepts anywhere in a
//!   chunk as long as `offset + len <= frame_size`; the completion ring returns that same
//!   address, and `frame_of_addr` maps it back to the frame.
//!
//! Aligned mode limits the frame size to the page size (4 KiB) for a pool that is not backed
//! by huge pages; [`Umem::new`] refuses larger frames.
//!
//! # Frame ownership
//!
//! A frame on the fill ring, or in the kernel on its way to the rx ring, or on the tx ring
//! until it comes back on the completion ring, belongs to the port. The port keeps one bit
//! per pool frame for these, so a descriptor the kernel returns is checked against it (and
//! cannot free a frame twice), and [`Port::release_frames`] knows exactly what to give back:
//! it closes the sockets first (the kernel writes into fill frames until the socket is
//! gone) and then frees every frame still marked.

mod ring;

pub use crate::netdev::Interface;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, Weak};

use pollux_dataplane::buf::{FrameId, FramePool};
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::{Port, PortStats};
use rustix::io::Errno;
use rustix::net::sockopt;
use rustix::net::xdp::{
    SocketAddrXdp, SocketAddrXdpFlags, SocketAddrXdpWithSharedUmem, XdpOptionsFlags, XdpRingOffset,
    XdpStatistics, XdpUmemReg, XdpUmemRegFlags, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING,
    XDP_UMEM_PGOFF_COMPLETION_RING, XDP_UMEM_PGOFF_FILL_RING,
};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use self::ring::{ConsRing, Mapping, ProdRing};

/// Headroom the kernel keeps in front of received data in every chunk (`XDP_PACKET_HEADROOM`),
/// on top of the UMEM's registered headroom.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// Most descriptors one `sendto` kick transmits in copy mode (the kernel's
/// `TX_BATCH_SIZE`); a kick with more pending returns `EAGAIN`.
const COPY_TX_BATCH: u32 = 32;

/// `struct xdp_desc`: an rx or tx descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Desc {
    addr: u64,
    len: u32,
    options: u32,
}

const _: () = assert!(std::mem::size_of::<Desc>() == 16);

/// Wraps `source` with a description of what failed, keeping its kind.
fn context(source: impl Into<io::Error>, what: impl fmt::Display) -> io::Error {
    let source = source.into();
    io::Error::new(source.kind(), format!("{what}: {source}"))
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.into())
}

// ---------------------------------------------------------------------------------------
// UMEM
// ---------------------------------------------------------------------------------------

/// A [`FramePool`]'s region as an AF_XDP UMEM, shared by every socket made from it.
///
/// Cheap to clone: clones name the same UMEM.
#[derive(Clone)]
pub struct Umem {
    inner: Arc<UmemShared>,
}

struct UmemShared {
    /// Region start, as an address (the pool owns the memory).
    region: usize,
    region_len: usize,
    frame_size: u32,
    /// Headroom registered with the kernel (in front of `XDP_PACKET_HEADROOM`).
    reg_headroom: u32,
    state: Mutex<UmemState>,
}

#[derive(Default)]
struct UmemState {
    /// Bound sockets using this UMEM. Weak, so closing a socket really closes it; the
    /// strong references are upgraded only while this mutex is held.
    sockets: Vec<Weak<OwnedFd>>,
    /// Mode of the socket that registered the UMEM, which sharing sockets inherit.
    zero_copy: bool,
    need_wakeup: bool,
}

impl fmt::Debug for Umem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Umem")
            .field("region", &format_args!("{:#x}", self.inner.region))
            .field("region_len", &self.inner.region_len)
            .field("frame_size", &self.inner.frame_size)
            .field("reg_headroom", &self.inner.reg_headroom)
            .finish()
    }
}

impl Umem {
    /// Describes `pool`'s region as a UMEM. Nothing is registered until the first
    /// [`XskSocket::new`].
    ///
    /// # Safety
    ///
    /// The kernel writes received frames into the region and reads frames to transmit
    /// from it behind Rust's back. The caller must ensure that
    ///
    /// - `pool` is not dropped while any socket made from this `Umem` is open (drop every
    ///   [`XskSocket`]/[`AfXdpPort`], or call [`Port::release_frames`] on each port, first);
    /// - frames the driver owns (handed to the kernel on the fill or tx ring) are not read
    ///   or written through the pool ([`FramePool::frame`] and friends take any index)
    ///   until the driver has returned them to the pool or handed them out as packets.
    ///
    /// Frames the driver owns are allocated from the pool, so `FramePool::alloc` never hands
    /// them out; the second point is only about code that indexes frames it does not own.
    pub unsafe fn new(pool: &FramePool) -> io::Result<Umem> {
        let frame_size = pool.frame_size();
        let page = rustix::param::page_size();
        if frame_size as usize > page {
            return Err(invalid(format!(
                "AF_XDP aligned UMEM: frame size {frame_size} exceeds the page size {page}"
            )));
        }
        if !(pool.region_ptr() as usize).is_multiple_of(page) {
            return Err(invalid("AF_XDP UMEM: pool region is not page-aligned"));
        }
        let reg_headroom = u32::from(pool.headroom()).saturating_sub(XDP_PACKET_HEADROOM);
        if reg_headroom + XDP_PACKET_HEADROOM + 64 > frame_size {
            return Err(invalid(format!(
                "AF_XDP UMEM: headroom {} + XDP_PACKET_HEADROOM leaves no room in a \
                 {frame_size}-byte frame",
                pool.headroom()
            )));
        }
        Ok(Umem {
            inner: Arc::new(UmemShared {
                region: pool.region_ptr() as usize,
                region_len: pool.region_len(),
                frame_size,
                reg_headroom,
                state: Mutex::new(UmemState::default()),
            }),
        })
    }

    /// Bytes per frame (= UMEM chunk size).
    pub fn frame_size(&self) -> u32 {
        self.inner.frame_size
    }

    /// Headroom registered with the kernel (`pool.headroom() - 256`, at least 0).
    pub fn registered_headroom(&self) -> u32 {
        self.inner.reg_headroom
    }

    /// Offset within a frame at which the kernel writes received data (before any XDP
    /// program moves it).
    pub fn rx_offset(&self) -> u32 {
        self.inner.reg_headroom + XDP_PACKET_HEADROOM
    }

    /// Largest frame the kernel can receive into one chunk; longer frames are dropped and
    /// counted in the socket's `rx_dropped`.
    pub fn max_rx_len(&self) -> u32 {
        self.inner.frame_size - self.rx_offset()
    }

    /// True when `pool` is the pool this UMEM describes.
    pub fn is_pool(&self, pool: &FramePool) -> bool {
        self.inner.is_pool(pool)
    }

    /// Number of open, bound sockets using this UMEM.
    pub fn sockets(&self) -> usize {
        let mut state = self.inner.lock();
        state.sockets.retain(|w| w.strong_count() > 0);
        state.sockets.len()
    }

    /// `XDP_UMEM_REG` on `fd`.
    fn register(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let reg = XdpUmemReg {
            addr: self.inner.region as u64,
            len: self.inner.region_len as u64,
            chunk_size: self.inner.frame_size,
            headroom: self.inner.reg_headroom,
            flags: XdpUmemRegFlags::empty(),
            tx_metadata_len: 0,
        };
        sockopt::set_xdp_umem_reg(fd, reg).map_err(|e| {
            context(
                e,
                format_args!(
                    "XDP_UMEM_REG of {} bytes in {}-byte chunks (needs CAP_NET_RAW and \
                     enough RLIMIT_MEMLOCK)",
                    self.inner.region_len, self.inner.frame_size
                ),
            )
        })
    }
}

impl UmemShared {
    fn is_pool(&self, pool: &FramePool) -> bool {
        pool.region_ptr() as usize == self.region
            && pool.region_len() == self.region_len
            && pool.frame_size() == self.frame_size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UmemState> {
        // A panic while holding the lock leaves the list valid (only pushes and retains).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------
// Socket
// ---------------------------------------------------------------------------------------

/// Which data path to ask the kernel for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BindMode {
    /// Try `XDP_ZEROCOPY`; if the driver refuses, bind with `XDP_COPY`.
    #[default]
    Auto,
    /// `XDP_COPY`: the kernel copies between skbs/XDP buffers and the UMEM. Works on any
    /// interface (veth, tap, ...).
    Copy,
    /// `XDP_ZEROCOPY`: the driver DMAs straight into the UMEM; fails if unsupported.
    ZeroCopy,
}

/// The data path a socket was bound with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    /// `XDP_COPY`.
    Copy,
    /// `XDP_ZEROCOPY`.
    ZeroCopy,
}

impl fmt::Display for XskMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XskMode::Copy => "copy",
            XskMode::ZeroCopy => "zero-copy",
        })
    }
}

/// Ring sizes (each a power of two) and bind options of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Rx ring entries.
    pub rx_size: u32,
    /// Tx ring entries.
    pub tx_size: u32,
    /// Fill ring entries; the port keeps this many frames of the pool on it.
    pub fill_size: u32,
    /// Completion ring entries.
    pub comp_size: u32,
    /// Zero-copy, copy, or zero-copy with fallback. Sockets sharing a UMEM inherit the
    /// first socket's mode (the kernel's rule); asking for another is an error.
    pub bind_mode: BindMode,
    /// `XDP_USE_NEED_WAKEUP`: the kernel says when it needs a syscall to make progress,
    /// instead of user space kicking every time. Inherited like `bind_mode`.
    pub need_wakeup: bool,
    /// Preferred busy polling, per socket; `None` (the default) leaves it off.
    pub busy_poll: Option<BusyPoll>,
}

/// Preferred busy polling of one socket: `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` and
/// `SO_BUSY_POLL_BUDGET`. The port then calls `recvfrom(MSG_DONTWAIT)` on every receive
/// burst, which runs the device's NAPI poll for the socket's queue (the XDP program and,
/// in copy mode, the copy into the UMEM) in the calling thread, up to `budget` frames,
/// instead of in softirq or a NAPI thread on whatever CPU the device chose. For the
/// kernel to leave the NAPI instance to the socket between polls, the interface should
/// defer its interrupts (`napi_defer_hard_irqs` and `gro_flush_timeout` in
/// `/sys/class/net/IF/`); without that, busy polling only adds polls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// `SO_BUSY_POLL`: microseconds a blocking receive may spin (the port never blocks,
    /// but the kernel busy-polls only sockets with a non-zero value).
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: frames one busy poll may process.
    pub budget: u16,
}

impl Default for BusyPoll {
    fn default() -> Self {
        BusyPoll {
            usecs: 20,
            budget: 64,
        }
    }
}

/// `SO_BUSY_POLL` (asm-generic/socket.h).
const SO_BUSY_POLL: libc::c_int = 46;
/// `SO_PREFER_BUSY_POLL`.
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
/// `SO_BUSY_POLL_BUDGET`.
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// `setsockopt(fd, SOL_SOCKET, opt, &value, sizeof(int))`.
fn set_socket_int(fd: BorrowedFd<'_>, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the option value is a live `c_int` on our stack and the length passed is
    // exactly its size; the kernel only reads it during the call. `fd` is a borrowed,
    // open socket.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 2048,
            comp_size: 2048,
            bind_mode: BindMode::Auto,
            need_wakeup: true,
            busy_poll: None,
        }
    }
}

/// One bound AF_XDP socket with its rings.
pub struct XskSocket {
    // Declaration order is drop order: unmap the rings (each mapping holds a reference to
    // the socket's file) before the last reference to the fd closes it.
    rx: ConsRing<Desc>,
    tx: ProdRing<Desc>,
    fill: ProdRing<u64>,
    comp: ConsRing<u64>,
    fd: Arc<OwnedFd>,
    umem: Arc<UmemShared>,
    ifname: String,
    ifindex: u32,
    queue: u32,
    mode: XskMode,
    need_wakeup: bool,
    shared: bool,
    /// Preferred busy polling is on: every receive burst polls.
    busy_poll: bool,
    note: String,
}

impl fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd)
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .field("need_wakeup", &self.need_wakeup)
            .field("shared", &self.shared)
            .field("busy_poll", &self.busy_poll)
            .finish()
    }
}

fn check_ring_size(what: &str, size: u32) -> io::Result<()> {
    if size.is_power_of_two() {
        Ok(())
    } else {
        Err(invalid(format!(
            "AF_XDP {what} ring size {size} is not a non-zero power of two"
        )))
    }
}

impl XskSocket {
    /// Creates a socket on `iface` (resolved in the calling thread's network namespace)
    /// rx/tx `queue`, with `umem` as its UMEM: registered on this socket if no other open
    /// socket uses it yet, else shared with one that does (`XDP_SHARED_UMEM`).
    ///
    /// Frames reach the rx ring only once an XDP program redirects them to this socket
    /// (register [`XskSocket::fd`] in its `XSKMAP`); transmitting needs no program.
    pub fn new(
        umem: &Umem,
        iface: impl Into<Interface>,
        queue: u32,
        config: &XskConfig,
    ) -> io::Result<XskSocket> {
        check_ring_size("rx", config.rx_size)?;
        check_ring_size("tx", config.tx_size)?;
        check_ring_size("fill", config.fill_size)?;
        check_ring_size("completion", config.comp_size)?;
        let (ifname, ifindex) = iface.into().resolve()?;
        let what = format!("AF_XDP socket on {ifname} queue {queue}");
        Self::create(umem, ifname, ifindex, queue, config).map_err(|e| context(e, &what))
    }

    fn create(
        umem: &Umem,
        ifname: String,
        ifindex: u32,
        queue: u32,
        config: &XskConfig,
    ) -> io::Result<XskSocket> {
        let fd = rustix::net::socket_with(
            AddressFamily::XDP,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| context(e, "socket(AF_XDP)"))?;

        // Hold the lock from choosing a socket to share with until this one is listed, so
        // a shared socket cannot close in between and two first sockets cannot race.
        let mut state = umem.inner.lock();
        state.sockets.retain(|w| w.strong_count() > 0);
        let share_with = state.sockets.iter().find_map(Weak::upgrade);
        if share_with.is_none() {
            umem.register(fd.as_fd())?;
        }

        let set = |r: rustix::io::Result<()>, what: &str| r.map_err(|e| context(e, what));
        set(
            sockopt::set_xdp_umem_fill_ring_size(&fd, config.fill_size),
            "XDP_UMEM_FILL_RING",
        )?;
        set(
            sockopt::set_xdp_umem_completion_ring_size(&fd, config.comp_size),
            "XDP_UMEM_COMPLETION_RING",
        )?;
        set(
            sockopt::set_xdp_rx_ring_size(&fd, config.rx_size),
            "XDP_RX_RING",
        )?;
        set(
            sockopt::set_xdp_tx_ring_size(&fd, config.tx_size),
            "XDP_TX_RING",
        )?;
        let off = sockopt::xdp_mmap_offsets(&fd).map_err(|e| context(e, "XDP_MMAP_OFFSETS"))?;

        let map = |pgoff: u64, ro: &XdpRingOffset, size: u32, entry: usize, what: &str| {
            let len = usize::try_from(ro.desc).expect("offset fits usize") + size as usize * entry;
            Mapping::ring(fd.as_fd(), pgoff, len)
                .map_err(|e| context(e, format!("mmap {what} ring")))
        };
        let desc = std::mem::size_of::<Desc>();
        let rx_map = map(XDP_PGOFF_RX_RING, &off.rx, config.rx_size, desc, "rx")?;
        let tx_map = map(XDP_PGOFF_TX_RING, &off.tx, config.tx_size, desc, "tx")?;
        let fill_map = map(
            XDP_UMEM_PGOFF_FILL_RING,
            &off.fr,
            config.fill_size,
            8,
            "fill",
        )?;
        let comp_map = map(
            XDP_UMEM_PGOFF_COMPLETION_RING,
            &off.cr,
            config.comp_size,
            8,
            "completion",
        )?;
        // SAFETY: (for all four) each mapping is the kernel's ring of the given size, laid out
        // as `off` says and mapped with the length computed from it; the ring takes
        // ownership of its mapping so the memory lives as long as the ring; this socket is
        // the only user-space producer of fill/tx and the only consumer of rx/completion.
        let (rx, tx, fill, comp) = unsafe {
            let (rb, tb, fb, cb) = (rx_map.ptr(), tx_map.ptr(), fill_map.ptr(), comp_map.ptr());
            (
                ConsRing::<Desc>::new(Some(rx_map), rb, &off.rx, config.rx_size),
                ProdRing::<Desc>::new(Some(tx_map), tb, &off.tx, config.tx_size),
                ProdRing::<u64>::new(Some(fill_map), fb, &off.fr, config.fill_size),
                ConsRing::<u64>::new(Some(comp_map), cb, &off.cr, config.comp_size),
            )
        };

        let (mode, need_wakeup, note) = match &share_with {
            Some(other) => {
                let addr = SocketAddrXdpWithSharedUmem {
                    addr: SocketAddrXdp::new(SocketAddrXdpFlags::XDP_SHARED_UMEM, ifindex, queue),
                    shared_umem_fd: other.as_fd(),
                };
                rustix::net::bind(&fd, &addr).map_err(|e| {
                    let mode = if state.zero_copy { "zero-copy" } else { "copy" };
                    context(
                        e,
                        format_args!(
                            "bind with XDP_SHARED_UMEM (sockets sharing a UMEM inherit the \
                             first socket's {mode} mode, and two sockets on one interface \
                             queue are not supported)"
                        ),
                    )
                })?;
                let mode = query_mode(fd.as_fd())?;
                let wanted = match config.bind_mode {
                    BindMode::Auto => None,
                    BindMode::Copy => Some(XskMode::Copy),
                    BindMode::ZeroCopy => Some(XskMode::ZeroCopy),
                };
                if wanted.is_some_and(|w| w != mode) {
                    return Err(invalid(format!(
                        "{:?} was asked for, but sockets sharing this UMEM run in {mode} mode \
                         (inherited from the first socket)",
                        config.bind_mode
                    )));
                }
                let note = format!(
                    "{mode} mode, inherited from the socket that registered the UMEM \
                     (XDP_SHARED_UMEM)"
                );
                (mode, state.need_wakeup, note)
            }
            None => {
                let wake = if config.need_wakeup {
                    SocketAddrXdpFlags::XDP_USE_NEED_WAKEUP
                } else {
                    SocketAddrXdpFlags::empty()
                };
                let bind = |flags: SocketAddrXdpFlags| {
                    rustix::net::bind(&fd, &SocketAddrXdp::new(flags | wake, ifindex, queue))
                };
                let note = match config.bind_mode {
                    BindMode::Copy => {
                        bind(SocketAddrXdpFlags::XDP_COPY)
                            .map_err(|e| context(e, "bind with XDP_COPY"))?;
                        "copy mode (XDP_COPY asked for)".to_owned()
                    }
                    BindMode::ZeroCopy => {
                        bind(SocketAddrXdpFlags::XDP_ZEROCOPY).map_err(|e| {
                            context(
                                e,
                                format_args!(
                                    "bind with XDP_ZEROCOPY ({ifname}'s driver may not \
                                     support AF_XDP zero-copy; use BindMode::Auto or Copy)"
                                ),
                            )
                        })?;
                        "zero-copy mode (XDP_ZEROCOPY asked for)".to_owned()
                    }
                    BindMode::Auto => match bind(SocketAddrXdpFlags::XDP_ZEROCOPY) {
                        Ok(()) => "zero-copy mode (XDP_ZEROCOPY accepted)".to_owned(),
                        Err(zc) => {
                            bind(SocketAddrXdpFlags::XDP_COPY).map_err(|e| {
                                context(
                                    e,
                                    format_args!(
                                        "bind with XDP_COPY, after XDP_ZEROCOPY failed ({zc})"
                                    ),
                                )
                            })?;
                            format!(
                                "copy mode: {ifname} queue {queue} refused XDP_ZEROCOPY \
                                 ({zc}), fell back to XDP_COPY"
                            )
                        }
                    },
                };
                let mode = query_mode(fd.as_fd())?;
                state.zero_copy = mode == XskMode::ZeroCopy;
                state.need_wakeup = config.need_wakeup;
                (mode, config.need_wakeup, note)
            }
        };
        let shared = share_with.is_some();
        drop(share_with);
        if let Some(bp) = config.busy_poll {
            let usecs = libc::c_int::try_from(bp.usecs).unwrap_or(libc::c_int::MAX);
            for (opt, value, what) in [
                (SO_PREFER_BUSY_POLL, 1, "SO_PREFER_BUSY_POLL"),
                (SO_BUSY_POLL, usecs, "SO_BUSY_POLL"),
                (
                    SO_BUSY_POLL_BUDGET,
                    libc::c_int::from(bp.budget),
                    "SO_BUSY_POLL_BUDGET",
                ),
            ] {
                set_socket_int(fd.as_fd(), opt, value).map_err(|e| {
                    context(e, format_args!("{what} (busy polling needs CAP_NET_ADMIN)"))
                })?;
            }
        }

        let fd = Arc::new(fd);
        state.sockets.push(Arc::downgrade(&fd));
        drop(state);
        Ok(XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem: Arc::clone(&umem.inner),
            ifname,
            ifindex,
            queue,
            mode,
            need_wakeup,
            shared,
            busy_poll: config.busy_poll.is_some(),
            note,
        })
    }

    /// The socket's fd, for registering it in an `XSKMAP`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The data path the kernel bound: copy or zero-copy.
    pub fn mode(&self) -> XskMode {
        self.mode
    }

    /// How the mode came about, for the log (e.g. the zero-copy refusal before a fallback).
    pub fn mode_note(&self) -> &str {
        &self.note
    }

    /// Whether the kernel uses the `XDP_RING_NEED_WAKEUP` protocol on this socket.
    pub fn need_wakeup(&self) -> bool {
        self.need_wakeup
    }

    /// Whether preferred busy polling is on for this socket.
    pub fn busy_poll(&self) -> bool {
        self.busy_poll
    }

    /// True when this socket shares a UMEM registered by another socket.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Interface name as given (or `ifindex N`).
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Rx/tx queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The kernel's `XDP_STATISTICS` for this socket.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        sockopt::xdp_statistics(&*self.fd).map_err(|e| context(e, "XDP_STATISTICS"))
    }

    /// Unmaps the rings and closes the socket, and returns once the kernel has let go of it
    /// (closing the last reference runs the socket's release, which unbinds it and waits
    /// for in-flight receive work, before `close` returns). False if the fd could not be
    /// closed because something else still holds it.
    fn close(self) -> bool {
        let XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem,
            ..
        } = self;
        drop((rx, tx, fill, comp));
        // Under the lock nobody holds an upgraded reference, so ours is the only one.
        let _state = umem.lock();
        match Arc::try_unwrap(fd) {
            Ok(fd) => {
                drop(fd);
                true
            }
            Err(_) => false,
        }
    }

    /// `sendto(MSG_DONTWAIT)` with no data: asks the kernel to process the tx ring.
    fn kick_tx(&self) -> Result<(), Errno> {
        rustix::net::send(&*self.fd, &[], SendFlags::DONTWAIT).map(drop)
    }

    /// `recvfrom(MSG_DONTWAIT)` with no buffer: asks the kernel to process the fill ring.
    fn wake_rx(&self) -> Result<(), Errno> {
        let mut none: [u8; 0] = [];
        rustix::net::recv(&*self.fd, &mut none, RecvFlags::DONTWAIT).map(drop)
    }

    /// Whether a tx kick is needed after queueing descriptors.
    #[inline]
    fn tx_needs_kick(&self) -> bool {
        if !self.need_wakeup || self.mode == XskMode::Copy {
            return true;
        }
        // Order our producer store before reading the kernel's flag, so we cannot miss a
        // flag it sets after looking at an older producer index.
        fence(Ordering::SeqCst);
        self.tx.needs_wakeup()
    }
}

fn query_mode(fd: BorrowedFd<'_>) -> io::Result<XskMode> {
    let opts = sockopt::xdp_options(fd).map_err(|e| context(e, "XDP_OPTIONS"))?;
    Ok(if opts.contains(XdpOptionsFlags::XDP_OPTIONS_ZEROCOPY) {
        XskMode::ZeroCopy
    } else {
        XskMode::Copy
    })
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

// ---------------------------------------------------------------------------------------
// Port
// ---------------------------------------------------------------------------------------

/// One bit per pool frame: set while the port (the kernel, through it) owns the frame.
#[derive(Debug)]
struct Held {
    bits: Vec<u64>,
    count: usize,
}

impl Held {
    fn new(frames: u32) -> Self {
        Held {
            bits: vec![0; (frames as usize).div_ceil(64)],
            count: 0,
        }
    }

    #[inline]
    fn mark(&mut self, f: FrameId) {
        let (w, b) = (f as usize / 64, f % 64);
        debug_assert!(self.bits[w] & (1 << b) == 0, "frame {f} already held");
        self.bits[w] |= 1 << b;
        self.count += 1;
    }

    /// Clears the bit; true if it was set.
    #[inline]
    fn take(&mut self, f: FrameId) -> bool {
        let (w, b) = (f as usize / 64, f % 64);
        let Some(word) = self.bits.get_mut(w) else {
            return false;
        };
        let was = *word & (1 << b) != 0;
        *word &= !(1 << b);
        self.count -= usize::from(was);
        was
    }

    /// Every held frame, clearing all bits.
    fn drain(&mut self) -> Vec<FrameId> {
        let mut out = Vec::with_capacity(self.count);
        for (w, word) in self.bits.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                out.push((w * 64) as u32 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        self.count = 0;
        out
    }
}

/// Own counters, beyond [`PortStats`]' standard ones.
#[derive(Clone, Debug, Default)]
struct Counters {
    /// Rx descriptors naming no frame we gave the kernel, or overrunning their frame.
    rx_bad_descs: u64,
    /// Completions naming no frame we gave the kernel.
    tx_bad_completions: u64,
    /// Packets accepted by `tx_burst` but dropped because they overrun their frame or are
    /// empty (the kernel would drop them without a completion, leaking the frame).
    tx_bad_packets: u64,
    /// Kicks (`sendto`/`recvfrom`) that failed with something other than `EAGAIN`.
    kick_errors: u64,
    /// `sendto` kicks issued.
    tx_kicks: u64,
    /// `recvfrom` calls made to busy-poll.
    busy_polls: u64,
    /// Frames returned on the completion ring.
    tx_completed: u64,
}

#[derive(Debug)]
struct Queue {
    sock: XskSocket,
    /// Kicks still to skip after the kernel said the link is down: the worker calls
    /// `kick` on every idle pass, and a syscall per pass would burn the core for nothing
    /// until the link comes back (about a millisecond of passes between retries).
    kick_skip: u32,
}

/// Kicks skipped after a kick failed with ENETDOWN.
const DOWN_KICK_SKIP: u32 = 1024;

/// A port over AF_XDP sockets sharing the worker's pool as UMEM: port queue `i` is
/// socket `i`. See the module documentation for addresses and frame ownership.
#[derive(Debug)]
pub struct AfXdpPort {
    name: String,
    queues: Vec<Queue>,
    /// Start of the pool's region: every call checks it was given the UMEM's pool.
    region: usize,
    held: Held,
    stats: PortStats,
    counters: Counters,
    /// Kernel statistics of sockets closed by `release_frames`, so totals survive.
    closed: [u64; 6],
}

const KERNEL_STATS: [&str; 6] = [
    "xdp_rx_dropped",
    "xdp_rx_invalid_descs",
    "xdp_tx_invalid_descs",
    "xdp_rx_ring_full",
    "xdp_rx_fill_ring_empty_descs",
    "xdp_tx_ring_empty_descs",
];

fn kernel_stats(s: &XdpStatistics) -> [u64; 6] {
    [
        s.rx_dropped,
        s.rx_invalid_descs,
        s.tx_invalid_descs,
        s.rx_ring_full.unwrap_or(0),
        s.rx_fill_ring_empty_descs.unwrap_or(0),
        s.tx_ring_empty_descs.unwrap_or(0),
    ]
}

impl AfXdpPort {
    /// A port named `name` whose queue `i` is `sockets[i]`. Every socket must use `pool`
    /// as its UMEM. Fills each socket's fill ring from `pool` right away, so frames the
    /// XDP program redirects before the first `rx_burst` are not dropped.
    pub fn new(
        name: impl Into<String>,
        sockets: Vec<XskSocket>,
        pool: &mut FramePool,
    ) -> io::Result<AfXdpPort> {
        let name = name.into();
        if sockets.is_empty() {
            return Err(invalid(format!("AF_XDP port {name}: no sockets")));
        }
        if let Some(s) = sockets.iter().find(|s| !s.umem.is_pool(pool)) {
            return Err(invalid(format!(
                "AF_XDP port {name}: socket on {} queue {} uses another pool as UMEM",
                s.ifname, s.queue
            )));
        }
        let mut port = AfXdpPort {
            name,
            queues: sockets
                .into_iter()
                .map(|sock| Queue { sock, kick_skip: 0 })
                .collect(),
            region: pool.region_ptr() as usize,
            held: Held::new(pool.capacity()),
            stats: PortStats::default(),
            counters: Counters::default(),
            closed: [0; 6],
        };
        for q in 0..port.queues.len() {
            port.refill(q, pool);
        }
        Ok(port)
    }

    /// The socket behind port queue `queue`, if the port is open.
    pub fn socket(&self, queue: u16) -> Option<&XskSocket> {
        self.queues.get(usize::from(queue)).map(|q| &q.sock)
    }

    /// Frames of the pool the port currently owns (fill ring, kernel, tx ring).
    pub fn frames_held(&self) -> usize {
        self.held.count
    }

    #[inline]
    fn check_pool(&self, pool: &FramePool) {
        assert_eq!(
            pool.region_ptr() as usize,
            self.region,
            "AF_XDP port {} used with a pool other than its UMEM",
            self.name
        );
    }

    /// Tops the fill ring of queue `q` up with fresh frames from the pool.
    #[inline]
    fn refill(&mut self, q: usize, pool: &mut FramePool) {
        let fill = &mut self.queues[q].sock.fill;
        let held = &mut self.held;
        let size = fill.size();
        fill.produce(size, || {
            let frame = pool.alloc()?;
            held.mark(frame);
            Some(pool.frame_addr(frame))
        });
    }

    /// Returns completed tx frames of queue `q` to the pool.
    #[inline]
    fn reap(&mut self, q: usize, pool: &mut FramePool) {
        let comp = &mut self.queues[q].sock.comp;
        let held = &mut self.held;
        let (mut done, mut bad) = (0u64, 0u64);
        let size = comp.size();
        comp.consume(size, |addr| match pool.frame_of_addr(addr) {
            Some(frame) if held.take(frame) => {
                pool.free(frame);
                done += 1;
            }
            _ => bad += 1,
        });
        self.counters.tx_completed += done;
        self.counters.tx_bad_completions += bad;
    }

    /// Makes the kernel transmit what is on queue `q`'s tx ring. In copy mode one kick
    /// sends at most 32 frames and answers `EAGAIN` while more remain (or while the
    /// completion ring is full), so kick until the ring is drained, reaping in between,
    /// a bounded number of times; `housekeeping` picks up any rest.
    fn kick(&mut self, q: usize, pool: &mut FramePool) {
        if self.queues[q].kick_skip > 0 {
            self.queues[q].kick_skip -= 1;
            return;
        }
        let rounds = if self.queues[q].sock.mode == XskMode::Copy {
            self.queues[q].sock.tx.pending() / COPY_TX_BATCH + 2
        } else {
            1
        };
        for _ in 0..rounds {
            self.counters.tx_kicks += 1;
            match self.queues[q].sock.kick_tx() {
                Ok(()) => break,
                Err(Errno::AGAIN) => {
                    self.reap(q, pool);
                    if self.queues[q].sock.tx.pending() == 0 {
                        break;
                    }
                }
                // Transient: the device queue is busy or full.
                Err(Errno::BUSY | Errno::NOBUFS) => break,
                Err(Errno::NETDOWN) => {
                    self.queues[q].kick_skip = DOWN_KICK_SKIP;
                    break;
                }
                Err(_) => {
                    self.counters.kick_errors += 1;
                    break;
                }
            }
        }
    }
}

impl Port for AfXdpPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize {
        self.check_pool(pool);
        let q = usize::from(queue);
        let Some(Queue { sock, .. }) = self.queues.get_mut(q) else {
            return 0;
        };
        let busy_poll = sock.busy_poll;
        if busy_poll {
            // Runs the device's NAPI poll for this queue here, before reading the ring, so
            // what it receives is taken in this same burst.
            self.counters.busy_polls += 1;
            if !matches!(sock.wake_rx(), Ok(()) | Err(Errno::AGAIN)) {
                self.counters.kick_errors += 1;
            }
        }
        let held = &mut self.held;
        let frame_size = u64::from(pool.frame_size());
        let (mut added, mut bytes, mut bad) = (0usize, 0u64, 0u64);
        let max = u32::try_from(batch.remaining()).unwrap_or(u32::MAX);
        sock.rx.consume(max, |d: Desc| {
            let Some(frame) = pool.frame_of_addr(d.addr) else {
                bad += 1;
                return;
            };
            if !held.take(frame) {
                // Not a frame we gave the kernel: never touch it.
                bad += 1;
                return;
            }
            let offset = d.addr - pool.frame_addr(frame);
            if d.len == 0 || offset + u64::from(d.len) > frame_size {
                bad += 1;
                pool.free(frame);
                return;
            }
            // Both fit u16: offset + len <= frame_size <= 4096 (checked in `Umem::new`).
            let pkt = Packet::received(frame, offset as u16, d.len as u16);
            // Cannot fail: `consume` hands over at most `remaining()` descriptors.
            let _ = batch.push(pkt);
            added += 1;
            bytes += u64::from(d.len);
        });
        let wake = !busy_poll && added == 0 && sock.fill.needs_wakeup();
        if wake && !matches!(sock.wake_rx(), Ok(()) | Err(Errno::AGAIN)) {
            self.counters.kick_errors += 1;
        }
        self.stats.rx_packets += added as u64;
        self.stats.rx_bytes += bytes;
        self.counters.rx_bad_descs += bad;
        self.refill(q, pool);
        added
    }

    fn tx_burst(&mut self, queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        self.check_pool(pool);
        let q = usize::from(queue);
        if q >= self.queues.len() || pkts.is_empty() {
            return 0;
        }
        // Completions first: they return frames to the pool and room to the ring.
        self.reap(q, pool);
        let tx = &mut self.queues[q].sock.tx;
        let held = &mut self.held;
        let frame_size = pool.frame_size();
        let (mut next, mut queued, mut bytes, mut bad) = (0usize, 0u64, 0u64, 0u64);
        let max = u32::try_from(pkts.len()).unwrap_or(u32::MAX);
        tx.produce(max, || loop {
            let pkt = pkts.get(next)?;
            next += 1;
            if pkt.len == 0
                || u32::from(pkt.offset) + u32::from(pkt.len) > frame_size
                || pkt.chained
            {
                // Accepted and dropped here: the kernel would discard it without a
                // completion, and the frame would never come back. A chained (jumbo)
                // frame needs multi-buffer AF_XDP, which these sockets do not use; the
                // control plane keeps jumbo networks off AF_XDP ports, so none comes.
                pool.free_packet(pkt);
                bad += 1;
                continue;
            }
            held.mark(pkt.frame);
            queued += 1;
            bytes += u64::from(pkt.len);
            return Some(Desc {
                addr: pool.frame_addr(pkt.frame) + u64::from(pkt.offset),
                len: u32::from(pkt.len),
                options: 0,
            });
        });
        self.stats.tx_packets += queued;
        self.stats.tx_bytes += bytes;
        self.counters.tx_bad_packets += bad;
        if queued > 0 && self.queues[q].sock.tx_needs_kick() {
            self.kick(q, pool);
        }
        next
    }

    fn housekeeping(&mut self, pool: &mut FramePool) {
        self.check_pool(pool);
        for q in 0..self.queues.len() {
            self.reap(q, pool);
            self.refill(q, pool);
            let sock = &mut self.queues[q].sock;
            if sock.tx.pending() > 0 && sock.tx_needs_kick() {
                self.kick(q, pool);
            }
        }
    }

    fn stats(&self) -> PortStats {
        let mut kernel = self.closed;
        for q in &self.queues {
            if let Ok(s) = q.sock.statistics() {
                for (k, v) in kernel.iter_mut().zip(kernel_stats(&s)) {
                    *k += v;
                }
            }
        }
        let c = &self.counters;
        let mut stats = self.stats.clone();
        // Dropped before the pipeline saw them: too large or no fill frame (rx_dropped),
        // rx ring full, and descriptors we refused.
        stats.rx_dropped = kernel[0] + kernel[3] + c.rx_bad_descs;
        stats.extra = KERNEL_STATS.iter().copied().zip(kernel).collect();
        stats.extra.extend([
            ("rx_bad_descs", c.rx_bad_descs),
            ("tx_bad_packets", c.tx_bad_packets),
            ("tx_bad_completions", c.tx_bad_completions),
            ("tx_completed", c.tx_completed),
            ("tx_kicks", c.tx_kicks),
            ("busy_polls", c.busy_polls),
            ("kick_errors", c.kick_errors),
            ("frames_held", self.held.count as u64),
            (
                "zero_copy_queues",
                self.queues
                    .iter()
                    .filter(|q| q.sock.mode == XskMode::ZeroCopy)
                    .count() as u64,
            ),
        ]);
        stats
    }

    /// Closes every socket and returns all frames the port held. The port is closed
    /// afterwards: bursts return 0.
    fn release_frames(&mut self, pool: &mut FramePool) {
        self.check_pool(pool);
        for q in 0..self.queues.len() {
            self.reap(q, pool);
        }
        for frame in self.close() {
            pool.free(frame);
        }
    }

    /// Closes every socket (each close waits for the kernel to let go of it) and returns
    /// the frames the kernel held, which are free once it has. A socket that could not be
    /// closed keeps them: they are leaked rather than handed out while the kernel may
    /// still write to them.
    fn close(&mut self) -> Vec<FrameId> {
        let mut all_closed = true;
        for Queue { sock, .. } in std::mem::take(&mut self.queues) {
            if let Ok(s) = sock.statistics() {
                for (k, v) in self.closed.iter_mut().zip(kernel_stats(&s)) {
                    *k += v;
                }
            }
            all_closed &= sock.close();
        }
        if all_closed {
            // Frames on the rx ring, the fill ring, inside the kernel, or not yet
            // completed are ours again.
            self.held.drain()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_marks_takes_and_drains() {
        let mut h = Held::new(130);
        h.mark(0);
        h.mark(64);
        h.mark(129);
        assert_eq!(h.count, 3);
        assert!(h.take(64));
        assert!(!h.take(64));
        assert!(!h.take(5000), "out of range is not held");
        assert_eq!(h.drain(), vec![0, 129]);
        assert_eq!(h.count, 0);
        assert!(!h.take(0));
    }

    #[test]
    fn umem_geometry_follows_the_pool() {
        let pool = FramePool::new(16, 2048, 256).unwrap();
        // SAFETY: no socket is made from this Umem.
        let umem = unsafe { Umem::new(&pool) }.unwrap();
        assert_eq!(umem.registered_headroom(), 0);
        assert_eq!(umem.rx_offset(), 256);
        assert_eq!(umem.max_rx_len(), 2048 - 256);
        assert!(umem.is_pool(&pool));
        assert_eq!(umem.sockets(), 0);
        let other = FramePool::new(16, 2048, 256).unwrap();
        assert!(!umem.is_pool(&other));

        let deep = FramePool::new(4, 4096, 512).unwrap();
        // SAFETY: as above.
        let umem = unsafe { Umem::new(&deep) }.unwrap();
        assert_eq!(umem.registered_headroom(), 256);
        assert_eq!(umem.rx_offset(), 512);

        let big = FramePool::new(4, 8192, 256).unwrap();
        // SAFETY: as above.
        let err = unsafe { Umem::new(&big) }.unwrap_err();
        assert!(err.to_string().contains("page size"), "{err}");
    }

    #[test]
    fn ring_sizes_must_be_powers_of_two() {
        let pool = FramePool::new(16, 2048, 256).unwrap();
        // SAFETY: the pool outlives the umem and any socket (none is created: the config
        // is rejected before any syscall).
        let umem = unsafe { Umem::new(&pool) }.unwrap();
        let config = XskConfig {
            fill_size: 1000,
            ..XskConfig::default()
        };
        let err = XskSocket::new(&umem, 1u32, 0, &config).unwrap_err();
        assert!(err.to_string().contains("fill ring size 1000"), "{err}");
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let err = Interface::from("pxs-no-such-if").resolve().unwrap_err();
        assert!(err.to_string().contains("pxs-no-such-if"), "{err}");
    }
}
