//! One tap queue driven through io_uring: the buffers, the ring, and the ownership of
//! every buffer while the kernel may touch it.
//!
//! Receive: every free receive slot has a read posted ahead. On a non-blocking tap the
//! kernel arms a poll for each (no io-wq thread is involved: checked, none appears) and,
//! when a frame arrives, queues the copy as task work for this thread. The ring is set up
//! with `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG`: rather than interrupting
//! the busy-polling worker with an IPI for every wake-up, the kernel raises a flag in the
//! submission ring, and [`TapQueue::kick`] enters the kernel once, at the start of a burst,
//! only when that flag is up or reads are queued for posting. The driver then reaps the
//! completions (shared memory, no syscall), copies the frames into the worker's pool and
//! queues the reads again for the next kick: one `io_uring_enter` per burst at most, none
//! on an idle poll. (Measured against the default IPI notification on TAP↔TAP TCP: at
//! least as fast, and it leaves the worker's core uninterrupted.)
//!
//! Transmit: each frame is copied out of the pool into a free transmit slot (header,
//! then frame) and a write is queued; one `io_uring_enter` submits the burst. The pool
//! frame is freed at once, so the port never holds pool frames between calls.
//!
//! Why bounce slots rather than reading straight into pool frames: a posted read owns its
//! buffer until it completes, which on an idle tap is forever. In pool frames that would
//! tie the pool's lifetime to the kernel's (a port closed on the control thread while the
//! worker drops its pool could let the kernel write into freed memory), and every posted
//! read would pin a pool frame. Slots owned by this queue make the argument local: the
//! slab is freed only after every operation on it has been cancelled and reaped, and is
//! leaked if that cannot be confirmed. The extra copy is one memcpy of a frame that the
//! kernel copied anyway.
//!
//! The slab is registered as a fixed buffer when the kernel allows it (saving a page
//! pin per operation); otherwise plain reads and writes are used.

use std::alloc::{self, Layout};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::slots::{SlotState, Slots};

/// `user_data` tag of a transmit slot (receive slots carry their index alone).
const TX_TAG: u64 = 1 << 32;
/// `user_data` of the cancel request sent on close.
const CANCEL_TAG: u64 = u64::MAX;
/// How long closing waits for cancelled operations before leaking their buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Geometry of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// Receive slots (reads posted ahead).
    pub rx_slots: u32,
    /// Transmit slots (writes in flight at most).
    pub tx_slots: u32,
    /// Bytes per slot: the virtio-net header plus the largest frame.
    pub slot_size: u32,
}

/// Which direction a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// A receive slot.
    Rx,
    /// A transmit slot.
    Tx,
}

/// Counts of what reaping found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Completions for no slot in flight (never expected; counted, not trusted).
    pub bogus: u64,
}

/// A page-aligned region of `count` slots of `slot_size` bytes, never moved.
#[derive(Debug)]
struct Slab {
    base: NonNull<u8>,
    layout: Layout,
    slot_size: usize,
}

impl Slab {
    fn new(count: usize, slot_size: usize) -> io::Result<Slab> {
        let bytes = count
            .checked_mul(slot_size)
            .filter(|&b| b > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty tap slab"))?;
        let layout = Layout::from_size_align(bytes, 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Slab {
            base,
            layout,
            slot_size,
        })
    }

    /// Address of slot `index`; in bounds because callers index through a `Slots` ledger
    /// whose slot count matches this slab's.
    fn ptr(&self, index: usize) -> *mut u8 {
        debug_assert!((index + 1) * self.slot_size <= self.layout.size());
        // SAFETY: `index * slot_size` is within the allocation (see above).
        unsafe { self.base.as_ptr().add(index * self.slot_size) }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed(layout)` and is freed only here. The
        // owner (`TapQueue`) drops a slab only once no operation on it is in flight.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// A tap queue. See the module documentation.
pub struct TapQueue {
    // Field order matters for nothing: `Drop` cancels and drains before any field goes.
    ring: IoUring,
    /// `None` once leaked (operations could not be confirmed finished).
    slab: Option<Slab>,
    fixed: bool,
    rx: Slots,
    tx: Slots,
    config: QueueConfig,
    fd: OwnedFd,
    /// Operations queued since the last submit.
    queued: u32,
}

// SAFETY: the slab pointer is only dereferenced through `&mut self` (or in `Drop`), so
// the queue is the sole user of the region wherever it goes; the kernel's accesses are
// tied to the ring, which moves with it. `IoUring` and `OwnedFd` are `Send`.
unsafe impl Send for TapQueue {}

impl std::fmt::Debug for TapQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapQueue")
            .field("config", &self.config)
            .field("fixed", &self.fixed)
            .field("rx_in_flight", &self.rx.in_flight())
            .field("tx_in_flight", &self.tx.in_flight())
            .finish_non_exhaustive()
    }
}

impl TapQueue {
    /// A queue on `fd` (a non-blocking tap queue) with `config`'s slots, every receive
    /// slot's read posted.
    pub fn new(fd: OwnedFd, config: QueueConfig) -> io::Result<TapQueue> {
        let slots = config.rx_slots as usize + config.tx_slots as usize;
        let entries = (slots + 1).next_power_of_two() as u32;
        // The completion queue (twice the submission queue) has room for every slot's
        // completion plus the cancel: it cannot overflow.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)?;
        let slab = Slab::new(slots, config.slot_size as usize)?;
        let iov = libc::iovec {
            iov_base: slab.base.as_ptr().cast(),
            iov_len: slab.layout.size(),
        };
        // SAFETY: the iovec names the slab, which stays allocated and unmoved until the
        // ring is gone or, if operations could not be drained, forever (it is leaked).
        let fixed = unsafe { ring.submitter().register_buffers(&[iov]) }.is_ok();
        let mut q = TapQueue {
            ring,
            slab: Some(slab),
            fixed,
            rx: Slots::new(config.rx_slots),
            tx: Slots::new(config.tx_slots),
            config,
            fd,
            queued: 0,
        };
        q.post_reads(usize::MAX);
        q.submit()?;
        Ok(q)
    }

    /// Whether the slab is registered as a fixed buffer.
    pub fn fixed_buffers(&self) -> bool {
        self.fixed
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.config.slot_size as usize
    }

    /// Lets the kernel finish what it has pending for this queue: submits what was queued
    /// and, when the kernel flagged task work (completed reads waiting to be copied),
    /// enters it so that work runs. At most one syscall, none when there is nothing to do.
    pub fn kick(&mut self) -> io::Result<()> {
        if self.queued == 0 && !self.ring.submission().taskrun() {
            return Ok(());
        }
        self.ring.submit()?;
        self.queued = 0;
        Ok(())
    }

    /// Moves every available completion into its slots' done queues; no syscall.
    pub fn reap(&mut self) -> Reaped {
        let mut reaped = Reaped::default();
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            let ok = match data {
                CANCEL_TAG => Ok(()),
                d if d & TX_TAG != 0 => self.tx.completed(d as u32, cqe.result()),
                d => self.rx.completed(d as u32, cqe.result()),
            };
            if ok.is_err() {
                reaped.bogus += 1;
            }
        }
        reaped
    }

    /// The oldest completed slot of `dir` and its result (bytes, or `-errno`), left in
    /// place.
    pub fn peek_done(&self, dir: Dir) -> Option<(u32, i32)> {
        self.slots(dir).peek_done()
    }

    /// Takes the oldest completed slot of `dir`; hand it back with [`TapQueue::release`].
    pub fn pop_done(&mut self, dir: Dir) -> Option<(u32, i32)> {
        self.slots_mut(dir).pop_done()
    }

    /// Takes a free transmit slot to fill; hand it to [`TapQueue::queue_write`] or back
    /// with [`TapQueue::release`].
    pub fn take_tx(&mut self) -> Option<u32> {
        self.tx.take_free()
    }

    /// Returns a held slot to its free list (a receive slot is posted again on the next
    /// [`TapQueue::post_reads`]).
    pub fn release(&mut self, dir: Dir, slot: u32) {
        // Only slots this driver took are released; a refusal would be a driver bug and
        // leaves the slot out of circulation rather than risking a double post.
        let _ = self.slots_mut(dir).release(slot);
    }

    /// The bytes of a slot the driver owns (held, or completed and not yet popped);
    /// `None` for a slot the kernel may be using (or no such slot).
    pub fn slot_mut(&mut self, dir: Dir, slot: u32) -> Option<&mut [u8]> {
        if !matches!(
            self.slots(dir).state(slot),
            Some(SlotState::Held | SlotState::Done)
        ) {
            return None;
        }
        let index = self.index(dir, slot);
        let size = self.slot_size();
        let slab = self.slab.as_ref()?;
        // SAFETY: the ledger says the driver owns this slot: no operation on it is in
        // flight, so the kernel does not touch these bytes, and `&mut self` makes this the
        // only reference to them; the range is within the slab (index < slot count).
        Some(unsafe { std::slice::from_raw_parts_mut(slab.ptr(index), size) })
    }

    /// Queues a write of the first `len` bytes of held transmit slot `slot`; false (slot
    /// still held) when the submission queue is full.
    pub fn queue_write(&mut self, slot: u32, len: u32) -> bool {
        let index = self.index(Dir::Tx, slot);
        let Some(slab) = self.slab.as_ref() else {
            return false;
        };
        if self.tx.state(slot) != Some(SlotState::Held) || len > self.config.slot_size {
            return false;
        }
        let fd = types::Fd(self.fd.as_raw_fd());
        let ptr = slab.ptr(index);
        let entry = if self.fixed {
            opcode::WriteFixed::new(fd, ptr, len, 0).build()
        } else {
            opcode::Write::new(fd, ptr, len).build()
        };
        if !self.push(entry.user_data(TX_TAG | u64::from(slot))) {
            return false;
        }
        // Cannot fail: the slot was checked held above.
        let _ = self.tx.submitted(slot);
        true
    }

    /// Posts a read on up to `max` free receive slots (as far as the submission queue
    /// allows).
    pub fn post_reads(&mut self, max: usize) {
        let fd = types::Fd(self.fd.as_raw_fd());
        for _ in 0..max {
            let Some(slot) = self.rx.take_free() else {
                return;
            };
            let index = self.index(Dir::Rx, slot);
            let Some(slab) = self.slab.as_ref() else {
                let _ = self.rx.release(slot);
                return;
            };
            let ptr = slab.ptr(index);
            let len = self.config.slot_size;
            let entry = if self.fixed {
                opcode::ReadFixed::new(fd, ptr, len, 0).build()
            } else {
                opcode::Read::new(fd, ptr, len).build()
            };
            if !self.push(entry.user_data(u64::from(slot))) {
                let _ = self.rx.release(slot);
                return;
            }
            let _ = self.rx.submitted(slot);
        }
    }

    /// Submits what was queued since the last call: one syscall, none if nothing was.
    pub fn submit(&mut self) -> io::Result<()> {
        if self.queued == 0 {
            return Ok(());
        }
        self.ring.submit()?;
        self.queued = 0;
        Ok(())
    }

    /// Operations the kernel holds: (receive, transmit).
    pub fn in_flight(&self) -> (usize, usize) {
        (self.rx.in_flight(), self.tx.in_flight())
    }

    /// Cancels every operation and waits (bounded) until each completion is reaped; if
    /// that cannot be confirmed, the slab is leaked so the kernel can never write into
    /// freed memory. Idempotent. Returns whether the queue is drained.
    pub fn cancel_and_drain(&mut self) -> bool {
        if self.slab.is_none() {
            return false;
        }
        self.reap();
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut cancel_sent = false;
        while self.rx.in_flight() + self.tx.in_flight() > 0 && Instant::now() < deadline {
            if !cancel_sent {
                let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(CANCEL_TAG);
                cancel_sent = self.push(cancel);
            }
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.queued = 0;
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => break,
            }
            self.reap();
            while let Some((slot, _)) = self.rx.pop_done() {
                let _ = self.rx.release(slot);
            }
            while let Some((slot, _)) = self.tx.pop_done() {
                let _ = self.tx.release(slot);
            }
        }
        if self.rx.in_flight() + self.tx.in_flight() > 0 {
            // The kernel may still write into the slab: never free it.
            std::mem::forget(self.slab.take());
            return false;
        }
        true
    }

    fn push(&mut self, entry: squeue::Entry) -> bool {
        // SAFETY: every entry pushed here names a buffer inside the slab (a slot the
        // ledger has just moved to in-flight, or none for the cancel), which stays
        // allocated and unmoved until its completion is reaped (see `cancel_and_drain`
        // and `Drop`); the fd is owned by this queue and outlives the ring's use of it
        // (the kernel holds its own file reference for in-flight operations).
        let pushed = unsafe { self.ring.submission().push(&entry) }.is_ok();
        if pushed {
            self.queued += 1;
        }
        pushed
    }

    fn slots(&self, dir: Dir) -> &Slots {
        match dir {
            Dir::Rx => &self.rx,
            Dir::Tx => &self.tx,
        }
    }

    fn slots_mut(&mut self, dir: Dir) -> &mut Slots {
        match dir {
            Dir::Rx => &mut self.rx,
            Dir::Tx => &mut self.tx,
        }
    }

    /// Slab index of a slot: receive slots first, then transmit slots.
    fn index(&self, dir: Dir, slot: u32) -> usize {
        match dir {
            Dir::Rx => slot as usize,
            Dir::Tx => self.config.rx_slots as usize + slot as usize,
        }
    }
}

impl Drop for TapQueue {
    fn drop(&mut self) {
        self.cancel_and_drain();
    }
}
