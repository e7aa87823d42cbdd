//! A split virtqueue (virtio 1.x, 2.6) seen from the device side, over untrusted guest
//! memory.
//!
//! Own code rather than the `virtio-queue` crate: the worker needs only "how many chains
//! are available", "the segments of chain N, checked" and "publish these used entries",
//! over a memory table it already holds, with no per-chain allocation or trait dispatch;
//! see the README for the instruction counts.
//!
//! Every value read from the guest is checked before use: the available index may run at
//! most one ring ahead, heads and `next` fields must index the table, a chain may not be
//! longer than [`MAX_CHAIN`] descriptors (which also ends loops), descriptors must point
//! into guest memory and go in the queue's direction. An indirect descriptor (with
//! `VIRTIO_RING_F_INDIRECT_DESC` negotiated) is followed to its table under the same
//! rules, plus the table's own: wholly in one region of guest memory, a whole number of
//! descriptors (at most [`MAX_CHAIN`]), no `NEXT` beside `INDIRECT`, and no indirect
//! descriptor inside a table (so the hop happens once a chain and cannot loop); its
//! descriptors count towards the same chain length. Any violation is a [`Broken`] queue:
//! the caller stops using it, counts it, and never panics.

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use super::memory::GuestMemory;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// In `used.flags`: the device polls, so the driver need not kick it.
const USED_F_NO_NOTIFY: u16 = 1;
/// In `avail.flags`: the driver does not want interrupts.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue the protocol allows for a split ring.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptors per chain at most. A 1500-byte frame from Linux takes 1 or 2, a
/// fragmented skb up to 19 (`MAX_SKB_FRAGS` + 2); longer chains are a guest bug or an
/// attack and break the queue.
pub const MAX_CHAIN: usize = 64;

/// Segments (descriptors, or their pieces where they cross a memory region boundary)
/// collected for one frame.
pub const MAX_SEGS: usize = 64;

/// Where a queue's three parts are, as front-end virtual addresses, and its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VringAddrs {
    /// Entries (a power of two, at most [`MAX_QUEUE_SIZE`]).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring (driver → device).
    pub avail: u64,
    /// Used ring (device → driver).
    pub used: u64,
}

/// Why a queue was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The ring's parts are not inside guest memory, misaligned, or its size is invalid.
    RingAddress,
    /// The available index ran more than a ring ahead.
    AvailIndex,
    /// A head or `next` field beyond the table.
    DescIndex,
    /// A chain longer than [`MAX_CHAIN`] descriptors (or a loop), or a frame spread
    /// over more than [`MAX_SEGS`] pieces.
    ChainTooLong,
    /// An indirect descriptor without `VIRTIO_RING_F_INDIRECT_DESC`, or inside an
    /// indirect table.
    Indirect,
    /// An indirect descriptor with `NEXT`, or whose table is empty, not a whole number
    /// of descriptors, or not wholly inside one region of guest memory.
    IndirectTable,
    /// A device-writable descriptor on a transmit queue or a readable one on a receive
    /// queue.
    Direction,
    /// A descriptor's buffer is not (wholly) in guest memory.
    BufferAddress,
}

impl Broken {
    /// A name for counters and logs.
    pub fn name(self) -> &'static str {
        match self {
            Broken::RingAddress => "ring_address",
            Broken::AvailIndex => "avail_index",
            Broken::DescIndex => "desc_index",
            Broken::ChainTooLong => "chain_too_long",
            Broken::Indirect => "indirect",
            Broken::IndirectTable => "indirect_table",
            Broken::Direction => "direction",
            Broken::BufferAddress => "buffer_address",
        }
    }
}

/// Host pieces of one or more chains, in order.
#[derive(Debug)]
pub struct Segments {
    ptr: [*mut u8; MAX_SEGS],
    len: [u32; MAX_SEGS],
    n: usize,
}

// SAFETY: the pointers are scratch space, dereferenced only within the burst that
// collected them, while the ring they came from (and its memory) is alive.
unsafe impl Send for Segments {}

impl Default for Segments {
    fn default() -> Self {
        Segments {
            ptr: [std::ptr::null_mut(); MAX_SEGS],
            len: [0; MAX_SEGS],
            n: 0,
        }
    }
}

impl Segments {
    /// Forgets every segment.
    #[inline]
    pub fn clear(&mut self) {
        self.n = 0;
    }

    /// Copies the bytes after the first `skip` into `out` (as many as fit); returns the
    /// number copied.
    #[inline]
    pub fn read_into(&self, mut skip: usize, out: &mut [u8]) -> usize {
        let mut done = 0;
        for i in 0..self.n {
            let len = self.len[i] as usize;
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(out.len() - done);
            // SAFETY: `ptr[i] .. ptr[i] + len[i]` was checked to lie inside a mapped guest
            // region (see `Ring::collect`), which the ring's `Arc<GuestMemory>` keeps
            // mapped; `out[done..done + n]` is in bounds by the `min` above. The guest may
            // write the source concurrently: a byte copy tolerates that (it may see torn
            // data, which is then just a bad frame).
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr[i].add(skip), out[done..].as_mut_ptr(), n)
            };
            done += n;
            skip = 0;
            if done == out.len() {
                break;
            }
        }
        done
    }

    /// Writes `parts` one after another from segment `first` on; returns, per segment
    /// from `first`, nothing: the caller knows the lengths it wrote. Stops at the end of
    /// the segments.
    #[inline]
    fn write_from(&self, first: usize, parts: &[&[u8]]) {
        let (mut seg, mut at) = (first, 0usize);
        for part in parts {
            let mut src = *part;
            while !src.is_empty() && seg < self.n {
                let room = self.len[seg] as usize - at;
                let n = room.min(src.len());
                // SAFETY: as in `read_into`: inside a checked, still mapped guest range;
                // `at + n <= len[seg]`.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr[seg].add(at), n) };
                src = &src[n..];
                at += n;
                if at == self.len[seg] as usize {
                    seg += 1;
                    at = 0;
                }
            }
        }
    }
}

/// Where the next byte goes in [`Segments`]: a segment and an offset in it.
#[derive(Clone, Copy, Debug, Default)]
struct Cursor {
    seg: usize,
    at: usize,
}

impl Segments {
    /// Writes `src` at `to` and moves `to` past it, as far as the segments go.
    fn write_at(&self, to: &mut Cursor, mut src: &[u8]) {
        while !src.is_empty() && to.seg < self.n {
            let room = self.len[to.seg] as usize - to.at;
            let n = room.min(src.len());
            // SAFETY: as in `read_into`: inside a checked, still mapped guest range;
            // `at + n <= len[seg]`.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr[to.seg].add(to.at), n) };
            src = &src[n..];
            to.at += n;
            if to.at == self.len[to.seg] as usize {
                to.seg += 1;
                to.at = 0;
            }
        }
    }
}

/// One split virtqueue, from the device's side. See the module documentation.
#[derive(Debug)]
pub struct Ring {
    /// Keeps the mapping the pointers below point into.
    mem: Arc<GuestMemory>,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    mask: u16,
    /// Next available entry to take.
    last_avail: u16,
    /// Next used entry to fill (always `last_avail`: chains are never held across calls,
    /// but kept apart to publish in batches).
    used_idx: u16,
    /// Whether the queue carries device-writable buffers (receive, to the guest).
    writable: bool,
    /// `VIRTIO_RING_F_EVENT_IDX`: interrupts by the driver's `used_event`, kicks by the
    /// device's `avail_event`, instead of the flags.
    event_idx: bool,
    /// `VIRTIO_RING_F_INDIRECT_DESC`: a descriptor may point to a table of them.
    indirect: bool,
    /// The used index last published (for `used_event`).
    published: u16,
}

// SAFETY: the raw pointers point into `mem`, which the ring owns a share of; the ring is
// used by one thread at a time (it moves to the worker with its port).
unsafe impl Send for Ring {}

impl Ring {
    /// The ring at `addrs` in `mem`, starting at available and used index `base`.
    /// `writable`: the device writes the buffers (the guest's receive queue).
    pub fn new(
        mem: Arc<GuestMemory>,
        addrs: VringAddrs,
        base: u16,
        writable: bool,
    ) -> Result<Ring, Broken> {
        let size = addrs.size;
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Broken::RingAddress);
        }
        let n = u64::from(size);
        // Lengths and alignments of virtio 1.x 2.6 (with the event fields, which exist in
        // memory whether or not EVENT_IDX is negotiated).
        let desc = mem.uva(addrs.desc, 16 * n, 16);
        let avail = mem.uva(addrs.avail, 6 + 2 * n, 2);
        let used = mem.uva(addrs.used, 6 + 8 * n, 4);
        let (Some(desc), Some(avail), Some(used)) = (desc, avail, used) else {
            return Err(Broken::RingAddress);
        };
        let ring = Ring {
            mem,
            desc,
            avail,
            used,
            mask: size - 1,
            last_avail: base,
            used_idx: base,
            writable,
            event_idx: false,
            indirect: false,
            published: base,
        };
        // SAFETY: `used` is checked to hold `6 + 8 * size` bytes, aligned to 4.
        unsafe { std::ptr::write_volatile(ring.used.cast::<u16>(), USED_F_NO_NOTIFY.to_le()) };
        Ok(ring)
    }

    /// With `on`, notifications follow `VIRTIO_RING_F_EVENT_IDX` (as negotiated): the
    /// driver is asked never to kick (the worker polls) and interrupted only when it
    /// asked for the used entries published.
    pub fn with_event_idx(mut self, on: bool) -> Ring {
        self.event_idx = on;
        if on {
            self.hold_kicks();
        }
        self
    }

    /// With `on`, chains may go through an indirect table (`VIRTIO_RING_F_INDIRECT_DESC`
    /// negotiated); without, an indirect descriptor breaks the queue.
    pub fn with_indirect(mut self, on: bool) -> Ring {
        self.indirect = on;
        self
    }

    /// Sets `avail_event` one behind the next entry to take: the driver kicks only when
    /// it makes that entry available, a whole index wrap (65,536 entries) away.
    #[inline]
    fn hold_kicks(&self) {
        let slot = 4 + 8 * (usize::from(self.mask) + 1);
        // SAFETY: `avail_event` follows the used ring's entries, inside the checked
        // `6 + 8 * size` bytes, 2-aligned.
        unsafe {
            std::ptr::write_volatile(
                self.used.add(slot).cast::<u16>(),
                self.last_avail.wrapping_sub(1).to_le(),
            )
        };
    }

    /// The next available index to take (what `GET_VRING_BASE` reports).
    pub fn last_avail(&self) -> u16 {
        self.last_avail
    }

    /// Chains the driver made available and the device has not taken yet.
    #[inline]
    pub fn available(&self) -> Result<u16, Broken> {
        // SAFETY: `avail + 2` lies in the checked available ring, 2-aligned.
        let idx = u16::from_le(unsafe { std::ptr::read_volatile(self.avail.add(2).cast::<u16>()) });
        // The ring entries and descriptors below are read after the index that
        // published them.
        fence(Ordering::Acquire);
        let n = idx.wrapping_sub(self.last_avail);
        if n > self.mask + 1 {
            return Err(Broken::AvailIndex);
        }
        Ok(n)
    }

    /// The head of the `i`-th chain not taken yet (`i` below [`Ring::available`]).
    #[inline]
    fn head(&self, i: u16) -> Result<u16, Broken> {
        let slot = usize::from(self.last_avail.wrapping_add(i) & self.mask);
        // SAFETY: `slot <= mask`, so `4 + 2 * slot` is inside the checked available ring.
        let head = u16::from_le(unsafe {
            std::ptr::read_volatile(self.avail.add(4 + 2 * slot).cast::<u16>())
        });
        if head > self.mask {
            return Err(Broken::DescIndex);
        }
        Ok(head)
    }

    /// Appends the segments of the `i`-th chain not taken yet to `segs`; returns its
    /// head and its length in bytes.
    #[inline(always)]
    pub fn collect(&self, i: u16, segs: &mut Segments) -> Result<(u16, u32), Broken> {
        let head = self.head(i)?;
        let mut index = head;
        let mut total = 0u32;
        for walked in 0..MAX_CHAIN {
            // SAFETY: `index <= mask`, so the 16 bytes at `16 * index` are inside the
            // checked descriptor table (16-aligned).
            let (addr, len, flags, next) = unsafe {
                let d = self.desc.add(16 * usize::from(index));
                (
                    u64::from_le(std::ptr::read_volatile(d.cast::<u64>())),
                    u32::from_le(std::ptr::read_volatile(d.add(8).cast::<u32>())),
                    u16::from_le(std::ptr::read_volatile(d.add(12).cast::<u16>())),
                    u16::from_le(std::ptr::read_volatile(d.add(14).cast::<u16>())),
                )
            };
            if flags & DESC_F_INDIRECT != 0 {
                let total = self.collect_indirect(addr, len, flags, walked, total, segs)?;
                return Ok((head, total));
            }
            total = self.segment(addr, len, flags, total, segs)?;
            if flags & DESC_F_NEXT == 0 {
                return Ok((head, total));
            }
            if next > self.mask {
                return Err(Broken::DescIndex);
            }
            index = next;
        }
        Err(Broken::ChainTooLong)
    }

    /// Checks descriptor (`addr`, `len`, `flags`) and appends its pieces to `segs`;
    /// returns the chain's length so far, `total` before it.
    #[inline(always)]
    fn segment(
        &self,
        addr: u64,
        len: u32,
        flags: u16,
        total: u32,
        segs: &mut Segments,
    ) -> Result<u32, Broken> {
        if (flags & DESC_F_WRITE != 0) != self.writable {
            return Err(Broken::Direction);
        }
        let total = total.checked_add(len).ok_or(Broken::BufferAddress)?;
        let (mut addr, mut left) = (addr, len);
        while left > 0 {
            let (ptr, n) = self
                .mem
                .gpa_prefix(addr, left)
                .ok_or(Broken::BufferAddress)?;
            if segs.n == MAX_SEGS {
                return Err(Broken::ChainTooLong);
            }
            segs.ptr[segs.n] = ptr;
            segs.len[segs.n] = n;
            segs.n += 1;
            addr = addr.wrapping_add(u64::from(n));
            left -= n;
        }
        Ok(total)
    }

    /// The rest of a chain from the indirect descriptor (`addr`, `len`, `flags`) on,
    /// `walked` descriptors and `total` bytes into it: the table's descriptors, under the
    /// same checks. Out of line, so that the direct walk stays as short as it was.
    #[cold]
    #[inline(never)]
    fn collect_indirect(
        &self,
        addr: u64,
        len: u32,
        flags: u16,
        walked: usize,
        mut total: u32,
        segs: &mut Segments,
    ) -> Result<u32, Broken> {
        if !self.indirect {
            return Err(Broken::Indirect);
        }
        let (table, last) = self.indirect_table(addr, len, flags)?;
        let mut index = 0u16;
        for _ in walked..MAX_CHAIN {
            // SAFETY: `index <= last`, and the table was checked to hold
            // `16 * (last + 1)` bytes of guest memory (`indirect_table`). It need not be
            // aligned: read as bytes, once.
            let d = unsafe {
                std::ptr::read_volatile(table.add(16 * usize::from(index)).cast::<[u8; 16]>())
            };
            let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = d;
            let addr = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
            let len = u32::from_le_bytes([l0, l1, l2, l3]);
            let flags = u16::from_le_bytes([f0, f1]);
            let next = u16::from_le_bytes([n0, n1]);
            // No table inside a table: the hop happens once, so it cannot loop.
            if flags & DESC_F_INDIRECT != 0 {
                return Err(Broken::Indirect);
            }
            total = self.segment(addr, len, flags, total, segs)?;
            if flags & DESC_F_NEXT == 0 {
                return Ok(total);
            }
            if u32::from(next) > last {
                return Err(Broken::DescIndex);
            }
            index = next;
        }
        Err(Broken::ChainTooLong)
    }

    /// The indirect table an `INDIRECT` descriptor (`addr`, `len`, `flags`) points to:
    /// its first byte in this process and its last index.
    fn indirect_table(&self, addr: u64, len: u32, flags: u16) -> Result<(*const u8, u32), Broken> {
        // virtio 1.x 2.7.5.3.1: an indirect descriptor does not chain on (its table is
        // the rest of the chain), and its table is whole descriptors, at least one.
        if flags & DESC_F_NEXT != 0 || len == 0 || !len.is_multiple_of(16) {
            return Err(Broken::IndirectTable);
        }
        // A table longer than a chain may be is refused outright (a `next` could never
        // reach its end anyway: indices are 16-bit).
        let entries = len / 16;
        if entries as usize > MAX_CHAIN {
            return Err(Broken::ChainTooLong);
        }
        let table = self
            .mem
            .gpa_range(addr, u64::from(len))
            .ok_or(Broken::IndirectTable)?;
        Ok((table.cast_const(), entries - 1))
    }

    /// Records chain `head` as used with `len` bytes written; visible to the driver
    /// only after [`Ring::publish`].
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        let slot = usize::from(self.used_idx & self.mask);
        // SAFETY: `slot <= mask`: the 8 bytes at `4 + 8 * slot` are inside the checked
        // used ring, 4-aligned.
        unsafe {
            let e = self.used.add(4 + 8 * slot);
            std::ptr::write_volatile(e.cast::<u32>(), u32::from(head).to_le());
            std::ptr::write_volatile(e.add(4).cast::<u32>(), len.to_le());
        }
        self.used_idx = self.used_idx.wrapping_add(1);
    }

    /// Marks `n` available chains as taken.
    #[inline]
    pub fn take(&mut self, n: u16) {
        self.last_avail = self.last_avail.wrapping_add(n);
    }

    /// Publishes the used entries pushed so far; returns whether the driver wants an
    /// interrupt for them.
    #[inline]
    pub fn publish(&mut self) -> bool {
        // The entries before the index that publishes them.
        fence(Ordering::Release);
        // SAFETY: `used + 2` is inside the checked used ring, 2-aligned.
        unsafe { std::ptr::write_volatile(self.used.add(2).cast::<u16>(), self.used_idx.to_le()) };
        if self.event_idx {
            self.hold_kicks();
        }
        // The driver re-enables interrupts and then re-checks the used index; the device
        // stores the index and then checks the flag. Without a full fence both could miss
        // the other's store (virtio 1.x 2.7.7.2).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let (new, old) = (self.used_idx, self.published);
            self.published = new;
            let slot = 4 + 2 * (usize::from(self.mask) + 1);
            // SAFETY: `used_event` follows the available ring's entries, inside the
            // checked `6 + 2 * size` bytes, 2-aligned.
            let event = u16::from_le(unsafe {
                std::ptr::read_volatile(self.avail.add(slot).cast::<u16>())
            });
            // vring_need_event: the driver asked to hear once `event` is used.
            return new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old);
        }
        // SAFETY: `avail` is the checked available ring's flags field.
        let flags = u16::from_le(unsafe { std::ptr::read_volatile(self.avail.cast::<u16>()) });
        flags & AVAIL_F_NO_INTERRUPT == 0
    }

    /// Returns `chains` to the driver as used, `need` bytes written over them in order,
    /// and takes them off the collected ones: the end of [`Ring::fill`] and
    /// [`Ring::fill_pieces`].
    #[inline(always)]
    fn use_chains(&mut self, chains: &[(u16, u32)], need: usize) {
        let mut left = need;
        for &(head, len) in chains {
            let n = left.min(len as usize);
            self.push_used(head, n as u32);
            left -= n;
        }
        self.take(chains.len() as u16);
    }

    /// Writes a frame into the segments of chains collected by [`Ring::collect`]:
    /// the virtio-net header `hdr` (its `num_buffers` set to the chains used), then
    /// `frame`. `chains` holds each collected chain's head and length. Returns how many
    /// chains the frame used, `None` when they cannot hold it all.
    #[inline]
    pub fn fill(
        &mut self,
        segs: &Segments,
        chains: &[(u16, u32)],
        hdr: &mut [u8],
        frame: &[u8],
    ) -> Option<usize> {
        let need = hdr.len() + frame.len();
        let used = chains_for(chains, need)?;
        if hdr.len() >= 12 {
            hdr[10..12].copy_from_slice(&(used as u16).to_le_bytes());
        }
        segs.write_from(0, &[hdr, frame]);
        self.use_chains(&chains[..used], need);
        Some(used)
    }

    /// As [`Ring::fill`], for a frame of `len` bytes in pieces (a chain of pool frames,
    /// in order). Out of line, so that `fill` stays as short as it was for the frames of
    /// one pool frame.
    #[cold]
    #[inline(never)]
    pub fn fill_pieces<'a>(
        &mut self,
        segs: &Segments,
        chains: &[(u16, u32)],
        hdr: &mut [u8],
        len: usize,
        pieces: impl Iterator<Item = &'a [u8]>,
    ) -> Option<usize> {
        let need = hdr.len() + len;
        let used = chains_for(chains, need)?;
        if hdr.len() >= 12 {
            hdr[10..12].copy_from_slice(&(used as u16).to_le_bytes());
        }
        let mut to = Cursor::default();
        segs.write_at(&mut to, hdr);
        let mut left = len;
        for piece in pieces {
            // The pieces add up to `len`; never write past it, which the used lengths
            // below announce.
            let piece = &piece[..piece.len().min(left)];
            segs.write_at(&mut to, piece);
            left -= piece.len();
        }
        self.use_chains(&chains[..used], need);
        Some(used)
    }
}

/// How many of the collected `chains` (head, length) a frame of `need` bytes takes, in
/// order; `None` when all of them together are too short.
#[inline(always)]
fn chains_for(chains: &[(u16, u32)], need: usize) -> Option<usize> {
    let mut have = 0usize;
    let mut used = 0;
    for &(_, len) in chains {
        used += 1;
        have += len as usize;
        if have >= need {
            break;
        }
    }
    (have >= need).then_some(used)
}
