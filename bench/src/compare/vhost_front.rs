//! A virtio-net device seen from the driver's side (what a VM's virtio-net driver does),
//! for the PVP scenario's generator and sink: the harness owns the guest memory (a
//! memfd it shares with the device under test), lays out one queue pair's split rings
//! in it, and speaks the front end's side of vhost-user with rust-vmm's `vhost` crate
//! over a socket the device under test connects to (every DUT runs its vhost-user side
//! as the client: polluxd `mode = "client"`, Open vSwitch `dpdkvhostuserclient`,
//! testpmd `net_vhost,client=1`).
//!
//! Negotiated: `VIRTIO_F_VERSION_1` (a 12-byte virtio-net header) and, where offered,
//! `VHOST_USER_F_PROTOCOL_FEATURES` (with no protocol feature: the rings are enabled
//! with `SET_VRING_ENABLE`). No mergeable buffers, no indirect descriptors, no
//! EVENT_IDX: the driver asks for no interrupts (`VRING_AVAIL_F_NO_INTERRUPT`) and
//! polls the used rings; it kicks only when the device has not said it polls
//! (`VRING_USED_F_NO_NOTIFY`). Descriptor `i` always points at buffer `i`, so a
//! frame is written straight into shared memory and read straight out of it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, Ordering};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`.
const F_VERSION_1: u64 = 1 << 32;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;
/// The virtio-net header with `VERSION_1` (`virtio_net_hdr_mrg_rxbuf`).
pub const HDR_LEN: usize = 12;
/// Bytes per buffer: a header and the largest frame, rounded up.
const BUF_SIZE: usize = 2048;
/// Entries per queue: deep enough that a device polling in bursts of 32 to 64 never
/// finds the ring empty at the rates one generator core reaches.
pub const QUEUE_SIZE: u16 = 1024;
/// The guest physical address of the memory's first byte.
const GPA_BASE: u64 = 0x1_0000_0000;
/// The queue the device writes into (the driver receives).
const RX: usize = 0;
/// The queue the device reads from (the driver transmits).
const TX: usize = 1;

/// Shared memory (a memfd mapped here), handed to the device with `SET_MEM_TABLE`.
struct SharedMemory {
    file: File,
    ptr: *mut u8,
    len: usize,
}

impl SharedMemory {
    fn new(len: usize) -> Result<SharedMemory, String> {
        // SAFETY: a constant NUL-terminated name; memfd_create returns a new descriptor
        // or -1.
        let fd = unsafe { libc::memfd_create(c"pollux-bench-pvp".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)
            .map_err(|e| format!("memfd of {len} bytes: {e}"))?;
        // SAFETY: a new shared mapping of the whole file; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(SharedMemory {
            file,
            ptr: ptr.cast(),
            len,
        })
    }

    fn gpa(&self, off: usize) -> u64 {
        GPA_BASE + off as u64
    }

    fn uva(&self, off: usize) -> u64 {
        self.ptr as u64 + off as u64
    }

    fn read_u16(&self, off: usize) -> u16 {
        assert!(off + 2 <= self.len && off.is_multiple_of(2));
        // SAFETY: in bounds and aligned (checked); the device writes it concurrently, so
        // it is read volatile.
        u16::from_le(unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u16>()) })
    }

    fn read_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: in bounds and aligned (checked), read volatile as above.
        u32::from_le(unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) })
    }

    fn write_u16(&self, off: usize, v: u16) {
        assert!(off + 2 <= self.len && off.is_multiple_of(2));
        // SAFETY: in bounds and aligned (checked); the device reads it concurrently.
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u16>(), v.to_le()) }
    }

    fn write_desc(&self, off: usize, addr: u64, len: u32, flags: u16) {
        assert!(off + 16 <= self.len && off.is_multiple_of(16));
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        // SAFETY: 16 bytes in bounds (checked); the device reads descriptors only after
        // the available index that publishes them (written after a release fence).
        unsafe { std::ptr::copy_nonoverlapping(d.as_ptr(), self.ptr.add(off), 16) }
    }

    /// The bytes at `off..off + len`.
    ///
    /// Only for buffers the device does not own at the time (not available, or used).
    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (checked); the buffer is the driver's while it is not
        // available to the device.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off), len) }
    }

    /// As [`SharedMemory::bytes`], writable.
    #[allow(clippy::mut_from_ref)]
    fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds (checked); the buffer is the driver's while it is not
        // available to the device, and the one caller holds `&mut VirtioNet`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One split queue's place in the shared memory and the driver's view of it.
struct Queue {
    desc: usize,
    avail: usize,
    used: usize,
    bufs: usize,
    /// Next available index to publish.
    avail_idx: u16,
    /// Used entries seen so far.
    last_used: u16,
    /// Descriptors (= buffers) the driver owns (transmit queue).
    free: Vec<u16>,
    kick: EventFd,
    call: EventFd,
}

impl Queue {
    fn layout(at: usize) -> (Queue, usize) {
        let n = usize::from(QUEUE_SIZE);
        let desc = at;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4096);
        let bufs = (used + 6 + 8 * n).next_multiple_of(4096);
        let end = bufs + BUF_SIZE * n;
        let q = Queue {
            desc,
            avail,
            used,
            bufs,
            avail_idx: 0,
            last_used: 0,
            free: Vec::new(),
            kick: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            call: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        };
        (q, end)
    }

    fn buf(&self, id: u16) -> usize {
        self.bufs + BUF_SIZE * usize::from(id)
    }
}

/// A virtio-net device driven from here over vhost-user.
pub struct VirtioNet {
    // Drop order: the connection first (the device stops using the memory), then the
    // memory.
    front: Frontend,
    mem: SharedMemory,
    q: [Queue; 2],
    /// Frames the device took from the transmit queue.
    pub tx_completed: u64,
    /// Kicks written (the device asked for notifications).
    pub kicks: u64,
    /// Receive buffers posted back to the device.
    rx_reposted: u16,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("tx_completed", &self.tx_completed)
            .finish()
    }
}

fn err(what: &str) -> impl Fn(vhost::Error) -> String + '_ {
    move |e| format!("vhost-user {what}: {e}")
}

impl VirtioNet {
    /// Sets up a device on `stream` (a DUT connected to the harness's socket): memory,
    /// both queues, every receive buffer posted.
    pub fn connect(stream: UnixStream) -> Result<VirtioNet, String> {
        let (rx, end) = Queue::layout(0);
        let (tx, end) = Queue::layout(end);
        let mem = SharedMemory::new(end)?;
        let mut dev = VirtioNet {
            front: Frontend::from_stream(stream, 2),
            mem,
            q: [rx, tx],
            tx_completed: 0,
            kicks: 0,
            rx_reposted: 0,
        };
        dev.prepare_rings();
        dev.negotiate()?;
        Ok(dev)
    }

    /// Descriptor `i` of each queue points at buffer `i`; every receive buffer is made
    /// available; the device is asked for no interrupts.
    fn prepare_rings(&mut self) {
        for (qi, q) in self.q.iter_mut().enumerate() {
            for id in 0..QUEUE_SIZE {
                let writable = if qi == RX { DESC_F_WRITE } else { 0 };
                self.mem.write_desc(
                    q.desc + 16 * usize::from(id),
                    self.mem.gpa(q.buf(id)),
                    BUF_SIZE as u32,
                    writable,
                );
            }
            self.mem.write_u16(q.avail, AVAIL_F_NO_INTERRUPT);
            if qi == RX {
                for id in 0..QUEUE_SIZE {
                    self.mem.write_u16(q.avail + 4 + 2 * usize::from(id), id);
                }
                q.avail_idx = QUEUE_SIZE;
                fence(Ordering::Release);
                self.mem.write_u16(q.avail + 2, q.avail_idx);
            } else {
                q.free = (0..QUEUE_SIZE).rev().collect();
            }
        }
    }

    fn negotiate(&mut self) -> Result<(), String> {
        let front = &mut self.front;
        front.set_owner().map_err(err("SET_OWNER"))?;
        let offered = front.get_features().map_err(err("GET_FEATURES"))?;
        if offered & F_VERSION_1 == 0 {
            return Err(format!(
                "the device does not offer VIRTIO_F_VERSION_1 (features {offered:#x})"
            ));
        }
        let features = offered & (F_VERSION_1 | F_PROTOCOL_FEATURES);
        let protocol = features & F_PROTOCOL_FEATURES != 0;
        if protocol {
            front
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            front
                .set_protocol_features(VhostUserProtocolFeatures::empty())
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
        }
        front.set_features(features).map_err(err("SET_FEATURES"))?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: GPA_BASE,
            memory_size: self.mem.len as u64,
            userspace_addr: self.mem.uva(0),
            mmap_offset: 0,
            mmap_handle: self.mem.file.as_raw_fd(),
        };
        front
            .set_mem_table(&[region])
            .map_err(err("SET_MEM_TABLE"))?;
        for (i, q) in self.q.iter().enumerate() {
            front
                .set_vring_num(i, QUEUE_SIZE)
                .map_err(err("SET_VRING_NUM"))?;
            let config = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: QUEUE_SIZE,
                flags: 0,
                desc_table_addr: self.mem.uva(q.desc),
                used_ring_addr: self.mem.uva(q.used),
                avail_ring_addr: self.mem.uva(q.avail),
                log_addr: None,
            };
            front
                .set_vring_addr(i, &config)
                .map_err(err("SET_VRING_ADDR"))?;
            front.set_vring_base(i, 0).map_err(err("SET_VRING_BASE"))?;
            front
                .set_vring_call(i, &q.call)
                .map_err(err("SET_VRING_CALL"))?;
            front
                .set_vring_kick(i, &q.kick)
                .map_err(err("SET_VRING_KICK"))?;
        }
        if protocol {
            for i in 0..2 {
                front
                    .set_vring_enable(i, true)
                    .map_err(err("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    fn kick_if_asked(&mut self, qi: usize) {
        let q = &self.q[qi];
        fence(Ordering::SeqCst);
        if self.mem.read_u16(q.used) & USED_F_NO_NOTIFY == 0 {
            let _ = q.kick.write(1);
            self.kicks += 1;
        }
    }

    /// Takes back the transmit buffers the device has used; returns how many.
    pub fn reclaim(&mut self) -> usize {
        let q = &mut self.q[TX];
        let used_idx = self.mem.read_u16(q.used + 2);
        fence(Ordering::Acquire);
        let n = used_idx.wrapping_sub(q.last_used);
        for i in 0..n {
            let slot = usize::from(q.last_used.wrapping_add(i) % QUEUE_SIZE);
            let id = self.mem.read_u32(q.used + 4 + 8 * slot);
            // A device returning a descriptor it was never given is a bug there; the
            // buffer is not taken back twice.
            if let Ok(id) = u16::try_from(id) {
                if id < QUEUE_SIZE && q.free.len() < usize::from(QUEUE_SIZE) {
                    q.free.push(id);
                }
            }
        }
        q.last_used = used_idx;
        self.tx_completed += u64::from(n);
        usize::from(n)
    }

    /// Makes up to `n` frames available on the transmit queue, each written by `fill`
    /// into its buffer (which returns the frame's length); returns how many (fewer when
    /// the device has not used enough buffers yet).
    pub fn send(&mut self, n: usize, mut fill: impl FnMut(&mut [u8]) -> usize) -> usize {
        let q = &mut self.q[TX];
        let mut sent = 0;
        while sent < n {
            let Some(id) = q.free.pop() else { break };
            let off = q.buf(id);
            let buf = self.mem.bytes_mut(off, BUF_SIZE);
            buf[..HDR_LEN].fill(0);
            let len = HDR_LEN + fill(&mut buf[HDR_LEN..]);
            self.mem.write_desc(
                q.desc + 16 * usize::from(id),
                self.mem.gpa(off),
                len as u32,
                0,
            );
            let slot = usize::from(q.avail_idx % QUEUE_SIZE);
            self.mem.write_u16(q.avail + 4 + 2 * slot, id);
            q.avail_idx = q.avail_idx.wrapping_add(1);
            sent += 1;
        }
        if sent > 0 {
            fence(Ordering::Release);
            self.mem.write_u16(q.avail + 2, q.avail_idx);
            self.kick_if_asked(TX);
        }
        sent
    }

    /// Hands every frame the device wrote into the receive queue to `each` (without the
    /// virtio-net header) and posts its buffer again; returns how many.
    pub fn recv(&mut self, mut each: impl FnMut(&[u8])) -> usize {
        let q = &mut self.q[RX];
        let used_idx = self.mem.read_u16(q.used + 2);
        fence(Ordering::Acquire);
        let n = used_idx.wrapping_sub(q.last_used);
        for i in 0..n {
            let slot = usize::from(q.last_used.wrapping_add(i) % QUEUE_SIZE);
            let id = self.mem.read_u32(q.used + 4 + 8 * slot);
            let len = self.mem.read_u32(q.used + 8 + 8 * slot) as usize;
            let id = match u16::try_from(id) {
                Ok(id) if id < QUEUE_SIZE => id,
                _ => continue,
            };
            if (HDR_LEN..=BUF_SIZE).contains(&len) {
                each(&self.mem.bytes(q.buf(id), len)[HDR_LEN..]);
            }
            let aslot = usize::from(q.avail_idx % QUEUE_SIZE);
            self.mem.write_u16(q.avail + 4 + 2 * aslot, id);
            q.avail_idx = q.avail_idx.wrapping_add(1);
        }
        q.last_used = used_idx;
        if n > 0 {
            fence(Ordering::Release);
            self.mem.write_u16(q.avail + 2, q.avail_idx);
            self.rx_reposted = self.rx_reposted.wrapping_add(n);
            self.kick_if_asked(RX);
        }
        usize::from(n)
    }

    /// Whether the device has taken every frame made available on the transmit queue.
    pub fn tx_drained(&self) -> bool {
        self.q[TX].free.len() == usize::from(QUEUE_SIZE)
    }
}
