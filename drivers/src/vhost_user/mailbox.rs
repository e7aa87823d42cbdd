//! What the protocol thread (control side) and the worker's port share: a one-slot
//! command box with an acknowledgement, and the status `polluxctl show ports` prints.
//!
//! The worker looks at the box on its housekeeping cadence with one atomic load; a lock is
//! taken only when a command is waiting (a connection, a stop, a new memory table: a few
//! per VM lifetime). The control side waits for the acknowledgement before it answers
//! `GET_VRING_BASE` (the indices must be the worker's last ones) or drops a memory table
//! it replaced. The worker's rings hold the table in an `Arc`, so even a worker that
//! never answers cannot see it unmapped: the mapping goes with the last holder.

use std::fs::File;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::memory::GuestMemory;
use super::ring::VringAddrs;

/// The guest's receive queue of the first pair (the device writes: Pollux's transmit);
/// pair `p`'s is `2 * p`.
pub const RX_QUEUE: usize = 0;
/// The guest's transmit queue of the first pair (Pollux's receive); pair `p`'s is
/// `2 * p + 1`.
pub const TX_QUEUE: usize = 1;
/// Queue pairs a device may have (`VIRTIO_NET_F_MQ`, `GET_QUEUE_NUM`).
pub const MAX_QUEUE_PAIRS: usize = 8;
/// Queues a device may have.
pub const MAX_QUEUES: usize = 2 * MAX_QUEUE_PAIRS;

/// One queue as the front end set it up.
#[derive(Debug)]
pub struct QueueSetup {
    /// Where the ring is.
    pub addrs: VringAddrs,
    /// The first available index to take.
    pub base: u16,
    /// The eventfd that interrupts the guest (none: the guest polls).
    pub call: Option<File>,
    /// The eventfd that tells the front end the queue broke (none: not told).
    pub err: Option<File>,
}

/// A started device: what the worker needs to run its queues.
#[derive(Debug)]
pub struct Device {
    /// Guest memory.
    pub mem: Arc<GuestMemory>,
    /// Indexed by queue number (pair `p`: receive `2 * p`, transmit `2 * p + 1`); `None`
    /// for a queue not set up or not enabled, which the worker does not touch. The first
    /// pair is always there.
    pub queues: Vec<Option<QueueSetup>>,
    /// Bytes of virtio-net header before each frame (10, or 12 with `VERSION_1` or
    /// `MRG_RXBUF`).
    pub hdr_len: usize,
    /// Whether a frame to the guest may span several receive chains (`MRG_RXBUF`).
    pub mergeable: bool,
    /// `VIRTIO_RING_F_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC` was negotiated.
    pub indirect: bool,
}

/// A command for the worker.
#[derive(Debug)]
pub enum Command {
    /// Run these queues (replacing any).
    Start(Arc<Device>),
    /// Stop using the queues and record where they stopped.
    Stop,
}

/// Connection state, for `polluxctl show ports`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// A front end is connected.
    pub connected: bool,
    /// The queues run in the worker.
    pub running: bool,
    /// Negotiated virtio features.
    pub features: u64,
    /// Negotiated vhost-user protocol features.
    pub protocol_features: u64,
    /// Size of each queue up to the last one set up (0: not set up).
    pub queue_sizes: Vec<u16>,
    /// Queues the worker runs (set up and enabled), by number.
    pub queues_running: Vec<u16>,
    /// Connections that ended (the front end went away or broke the protocol).
    pub disconnects: u64,
    /// The last protocol error, if any.
    pub last_error: Option<String>,
}

/// Shared between the protocol thread and the port. See the module documentation.
#[derive(Debug, Default)]
pub struct Mailbox {
    slot: Mutex<Option<(u64, Command)>>,
    posted: AtomicU64,
    applied: AtomicU64,
    /// Next available index of each queue, written by the worker when it stops.
    bases: [AtomicU16; MAX_QUEUES],
    /// Queues the worker gave up (bad descriptors), by the worker.
    broken: AtomicU64,
    status: Mutex<Status>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a plain store or take: a panic cannot leave it half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mailbox {
    /// A new, shared mailbox.
    pub fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox::default())
    }

    /// Posts `cmd` (replacing one not taken yet) and waits up to `timeout` for the worker
    /// to apply it; returns whether it did.
    pub fn send(&self, cmd: Command, timeout: Duration) -> bool {
        if let Command::Start(dev) = &cmd {
            for (q, base) in dev.queues.iter().zip(&self.bases) {
                if let Some(q) = q {
                    base.store(q.base, Ordering::Relaxed);
                }
            }
        }
        let seq = {
            let mut slot = lock(&self.slot);
            let seq = self.posted.load(Ordering::Relaxed) + 1;
            *slot = Some((seq, cmd));
            self.posted.store(seq, Ordering::Release);
            seq
        };
        let deadline = Instant::now() + timeout;
        while self.applied.load(Ordering::Acquire) < seq {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// The command waiting for the worker, if any (one load when there is none).
    #[inline]
    pub fn take(&self) -> Option<(u64, Command)> {
        let posted = self.posted.load(Ordering::Acquire);
        if posted == self.applied.load(Ordering::Relaxed) {
            return None;
        }
        lock(&self.slot).take()
    }

    /// The worker applied the command numbered `seq`; `bases` (by queue number, `None`
    /// for a queue it did not run) when it stopped queues.
    pub fn applied(&self, seq: u64, bases: Option<[Option<u16>; MAX_QUEUES]>) {
        if let Some(b) = bases {
            for (slot, v) in self.bases.iter().zip(b) {
                if let Some(v) = v {
                    slot.store(v, Ordering::Relaxed);
                }
            }
        }
        self.applied.fetch_max(seq, Ordering::Release);
    }

    /// Where each queue stopped (or was set to start), by queue number.
    pub fn bases(&self) -> [u16; MAX_QUEUES] {
        std::array::from_fn(|q| self.bases[q].load(Ordering::Relaxed))
    }

    /// Counts a queue the worker gave up.
    pub fn count_broken(&self) {
        self.broken.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues given up so far.
    pub fn broken(&self) -> u64 {
        self.broken.load(Ordering::Relaxed)
    }

    /// The connection state.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// Changes the connection state.
    pub fn update_status(&self, f: impl FnOnce(&mut Status)) {
        f(&mut lock(&self.status));
    }
}
