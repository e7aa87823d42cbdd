//! The per-worker frame pool.
//!
//! A worker owns one contiguous, page-aligned region cut into fixed-size frames. For
//! AF_XDP that region is registered as the UMEM, so every socket of the worker shares it
//! and forwarding between two AF_XDP ports moves a descriptor, never bytes. Drivers that
//! cannot share memory (in-process rings, vhost-user) copy into and out of the pool.
//!
//! Frames are named by index; a [`crate::packet::Packet`] names a frame plus the offset
//! and length of its data. Received data starts after [`FramePool::headroom`] bytes so
//! that a VLAN tag or a VXLAN header can be pushed in front without moving the payload.
//!
//! A packet larger than one frame (a jumbo frame, later a TSO super-frame) is a *chain*:
//! its first frame is the packet's own (`frame`, `offset`, `len` name the first segment,
//! which holds every header the pipeline parses, since drivers fill it first), and the
//! pool links the frames after it, each with its own segment, as VPP links its buffers.
//! The packet says it is chained ([`Packet::chained`]), so an unchained packet never
//! looks at the links; freeing a frame frees the frames linked
//! after it, so no path that drops or transmits a packet can leak a chain's tail.

use std::alloc::{self, Layout};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::packet::Packet;

/// Default frame size: one 2 KiB frame holds a 1500-byte MTU frame plus headroom.
pub const DEFAULT_FRAME_SIZE: u32 = 2048;
/// Default headroom in front of received data: room for a VLAN push and VXLAN encap.
pub const DEFAULT_HEADROOM: u16 = 256;
/// Alignment of the region: AF_XDP requires the UMEM to start on a page boundary.
const REGION_ALIGN: usize = 4096;

/// Index of a frame within its pool.
pub type FrameId = u32;

/// The end of a chain: no frame follows.
const NO_FRAME: FrameId = FrameId::MAX;

/// The largest packet a chain may hold: a 64 KiB IP datagram behind an Ethernet header
/// and two VLAN tags, which is what a TSO super-frame can reach.
pub const MAX_CHAIN_LEN: usize = 65535 + 22;

/// One frame's segment of a chain after the first: where its data lies in the frame.
#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    offset: u16,
    len: u16,
}

/// Why a pool could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The frame size must be a power of two between 512 bytes and 64 KiB.
    BadFrameSize(u32),
    /// The headroom must leave at least 64 bytes of data room in a frame.
    BadHeadroom(u16),
    /// Zero frames, or a region larger than the address space allows.
    BadFrameCount(u32),
    /// The allocator could not provide the region.
    OutOfMemory(usize),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::BadFrameSize(s) => {
                write!(f, "frame size {s} is not a power of two in 512..=65536")
            }
            PoolError::BadHeadroom(h) => {
                write!(f, "headroom {h} leaves less than 64 bytes of data room")
            }
            PoolError::BadFrameCount(n) => write!(f, "cannot make a pool of {n} frames"),
            PoolError::OutOfMemory(b) => write!(f, "cannot allocate a {b}-byte frame region"),
        }
    }
}

impl std::error::Error for PoolError {}

/// A fixed set of equal-size frames in one page-aligned region, with a LIFO free list
/// (the most recently freed frame is the one most likely still in cache).
pub struct FramePool {
    base: NonNull<u8>,
    layout: Layout,
    frame_shift: u32,
    headroom: u16,
    frames: u32,
    /// Free frame ids in `free[..free_len]`; fixed storage, one slot per frame, so freeing
    /// never checks capacity or grows.
    free: Box<[FrameId]>,
    free_len: usize,
    /// Per frame: the frame linked after it in a chain, [`NO_FRAME`] otherwise (every free
    /// frame has none).
    next: Box<[FrameId]>,
    /// Per frame after the first of a chain: its segment.
    segment: Box<[Segment]>,
    /// Per first frame of a chain: the bytes in the frames after it.
    tail_len: Box<[u32]>,
    /// Catches double frees and leaks in test builds; absent from release builds.
    #[cfg(debug_assertions)]
    owned_by_pool: Vec<bool>,
}

/// Read access to a pool's frames: see [`FramePool::reader`].
#[derive(Clone, Copy, Debug)]
pub struct FrameReader<'a> {
    base: NonNull<u8>,
    frames: u32,
    frame_shift: u32,
    _pool: PhantomData<&'a FramePool>,
}

impl<'a> FrameReader<'a> {
    /// The whole frame holding a packet.
    #[inline(always)]
    fn frame_of(&self, pkt: &Packet) -> &'a [u8] {
        assert!(
            pkt.frame < self.frames,
            "frame {} is not in this pool",
            pkt.frame
        );
        let size = 1usize << self.frame_shift;
        // SAFETY: as in `FramePool::frame`: the frame lies inside the pool's region, which
        // the borrow `'a` of the pool keeps alive and free of `&mut` access.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(pkt.frame as usize * size), size)
        }
    }

    /// The data of a packet (as [`FramePool::data`]).
    #[inline(always)]
    pub fn data(&self, pkt: &Packet) -> &'a [u8] {
        let start = usize::from(pkt.offset);
        &self.frame_of(pkt)[start..start + usize::from(pkt.len)]
    }

    /// The first 12 bytes of a packet's data: both MAC addresses of a frame that
    /// classification accepted (it checked that the frame holds a whole Ethernet header).
    /// The packet's length is not checked again, which the L2 stage would pay for on every
    /// packet; the bytes lie inside the packet's frame whatever the length.
    #[inline(always)]
    pub fn mac_header(&self, pkt: &Packet) -> &'a [u8; 12] {
        let start = usize::from(pkt.offset);
        self.frame_of(pkt)[start..start + 12]
            .try_into()
            .expect("a slice of 12 bytes")
    }
}

// SAFETY: the pool owns its region exclusively (it is never aliased by another pool) and
// only hands out references through `&self`/`&mut self`, so moving the pool to another
// thread moves the sole access path with it.
unsafe impl Send for FramePool {}

impl fmt::Debug for FramePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramePool")
            .field("frames", &self.frames)
            .field("frame_size", &self.frame_size())
            .field("headroom", &self.headroom)
            .field("available", &self.free_len)
            .finish()
    }
}

impl FramePool {
    /// Allocates `frames` frames of `frame_size` bytes, each with `headroom` bytes reserved
    /// in front of received data.
    pub fn new(frames: u32, frame_size: u32, headroom: u16) -> Result<Self, PoolError> {
        if !frame_size.is_power_of_two() || !(512..=65536).contains(&frame_size) {
            return Err(PoolError::BadFrameSize(frame_size));
        }
        if u32::from(headroom) + 64 > frame_size {
            return Err(PoolError::BadHeadroom(headroom));
        }
        if frames == 0 {
            return Err(PoolError::BadFrameCount(frames));
        }
        let bytes = (frames as usize)
            .checked_mul(frame_size as usize)
            .ok_or(PoolError::BadFrameCount(frames))?;
        let layout = Layout::from_size_align(bytes, REGION_ALIGN)
            .map_err(|_| PoolError::BadFrameCount(frames))?;
        // SAFETY: `layout` has a non-zero size (frames > 0 and frame_size >= 512).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let base = NonNull::new(raw).ok_or(PoolError::OutOfMemory(bytes))?;
        // Hand out low indices first so a lightly loaded pool touches few pages.
        let free: Box<[FrameId]> = (0..frames).rev().collect();
        Ok(FramePool {
            base,
            layout,
            frame_shift: frame_size.trailing_zeros(),
            headroom,
            frames,
            free_len: free.len(),
            free,
            next: vec![NO_FRAME; frames as usize].into_boxed_slice(),
            segment: vec![Segment::default(); frames as usize].into_boxed_slice(),
            tail_len: vec![0; frames as usize].into_boxed_slice(),
            #[cfg(debug_assertions)]
            owned_by_pool: vec![true; frames as usize],
        })
    }

    /// A pool with the default frame size and headroom.
    pub fn with_frames(frames: u32) -> Result<Self, PoolError> {
        Self::new(frames, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM)
    }

    /// Size of every frame in bytes.
    #[inline]
    pub fn frame_size(&self) -> u32 {
        1 << self.frame_shift
    }

    /// Bytes reserved in front of received data.
    #[inline]
    pub fn headroom(&self) -> u16 {
        self.headroom
    }

    /// The largest frame a driver may receive into one frame of this pool.
    #[inline]
    pub fn max_data_len(&self) -> usize {
        self.frame_size() as usize - usize::from(self.headroom)
    }

    /// Number of frames in the pool.
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.frames
    }

    /// Number of frames currently free.
    #[inline]
    pub fn available(&self) -> usize {
        self.free_len
    }

    /// Start of the region, for registering it with a kernel (AF_XDP UMEM).
    pub fn region_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Length of the region in bytes.
    pub fn region_len(&self) -> usize {
        self.layout.size()
    }

    /// Byte address of a frame relative to the region start (an AF_XDP descriptor address).
    #[inline]
    pub fn frame_addr(&self, frame: FrameId) -> u64 {
        u64::from(frame) << self.frame_shift
    }

    /// Frame that contains region-relative address `addr`, if it lies inside the region.
    #[inline]
    pub fn frame_of_addr(&self, addr: u64) -> Option<FrameId> {
        let frame = addr >> self.frame_shift;
        (frame < u64::from(self.frames)).then_some(frame as FrameId)
    }

    /// Takes a frame from the free list.
    #[inline]
    pub fn alloc(&mut self) -> Option<FrameId> {
        self.free_len = self.free_len.checked_sub(1)?;
        let frame = self.free[self.free_len];
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.owned_by_pool[frame as usize],
                "frame {frame} allocated twice"
            );
            self.owned_by_pool[frame as usize] = false;
        }
        Some(frame)
    }

    /// Returns a packet's frames to the free list: its frame, and when it is chained, the
    /// frames after it. The unchained case (most packets) never reads the links.
    #[inline(always)]
    pub fn free_packet(&mut self, pkt: &Packet) {
        if pkt.chained {
            self.free_chain(pkt.frame);
        } else {
            debug_assert_eq!(
                self.next[pkt.frame as usize], NO_FRAME,
                "frame {} heads a chain its packet does not know of",
                pkt.frame
            );
            self.free_one(pkt.frame);
        }
    }

    /// [`FramePool::free`] out of line, for a chain: kept out of the loops that free
    /// unchained packets, whose registers it would otherwise take.
    #[cold]
    #[inline(never)]
    fn free_chain(&mut self, frame: FrameId) {
        self.free(frame);
    }

    /// Returns a frame to the free list, with every frame chained after it.
    #[inline]
    pub fn free(&mut self, frame: FrameId) {
        let mut at = frame;
        loop {
            let next = self.next[at as usize];
            self.free_one(at);
            if next == NO_FRAME {
                return;
            }
            self.next[at as usize] = NO_FRAME;
            at = next;
        }
    }

    #[inline(always)]
    fn free_one(&mut self, frame: FrameId) {
        debug_assert!(frame < self.frames, "frame {frame} is not in this pool");
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                !self.owned_by_pool[frame as usize],
                "frame {frame} freed twice"
            );
            self.owned_by_pool[frame as usize] = true;
        }
        // Every frame has a slot, so the list cannot overflow unless a frame is freed twice,
        // which the bounds check then catches even in release builds.
        self.free[self.free_len] = frame;
        self.free_len += 1;
    }

    /// The whole frame. Panics if `frame` is not in this pool.
    #[inline]
    pub fn frame(&self, frame: FrameId) -> &[u8] {
        assert!(frame < self.frames, "frame {frame} is not in this pool");
        let size = self.frame_size() as usize;
        // SAFETY: `frame < self.frames`, so `frame * size .. (frame + 1) * size` lies inside
        // the region allocated in `new`, which lives as long as `self`. Mutable access to any
        // frame needs `&mut self`, so no `&mut` to these bytes can coexist with this `&`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(frame as usize * size), size) }
    }

    /// The whole frame, writable. Panics if `frame` is not in this pool.
    #[inline]
    pub fn frame_mut(&mut self, frame: FrameId) -> &mut [u8] {
        assert!(frame < self.frames, "frame {frame} is not in this pool");
        let size = self.frame_size() as usize;
        // SAFETY: bounds as in `frame`; `&mut self` guarantees this is the only live
        // reference into the region.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(frame as usize * size), size)
        }
    }

    /// A read-only view of the frames for a loop over a burst: its fields are copied into
    /// locals, so the compiler keeps them in registers even across calls it cannot see
    /// into, instead of reloading the pool's fields for every packet.
    #[inline(always)]
    pub fn reader(&self) -> FrameReader<'_> {
        FrameReader {
            base: self.base,
            frames: self.frames,
            frame_shift: self.frame_shift,
            _pool: PhantomData,
        }
    }

    /// The data of a packet.
    #[inline]
    pub fn data(&self, pkt: &Packet) -> &[u8] {
        let start = usize::from(pkt.offset);
        &self.frame(pkt.frame)[start..start + usize::from(pkt.len)]
    }

    /// The data of a packet, writable.
    #[inline]
    pub fn data_mut(&mut self, pkt: &Packet) -> &mut [u8] {
        let start = usize::from(pkt.offset);
        &mut self.frame_mut(pkt.frame)[start..start + usize::from(pkt.len)]
    }

    /// [`FramePool::data_mut`], inlined into its caller. `data_mut` stays out of line: it
    /// has many callers, and inlining it into all of them made some dearer (register
    /// pressure in larger stages); a per-packet loop that writes every packet uses this.
    #[inline(always)]
    pub fn data_mut_inlined(&mut self, pkt: &Packet) -> &mut [u8] {
        let start = usize::from(pkt.offset);
        &mut self.frame_mut(pkt.frame)[start..start + usize::from(pkt.len)]
    }

    /// Copies `bytes` into a fresh frame after the headroom; `None` when the pool is empty
    /// or the bytes do not fit (callers check [`FramePool::max_data_len`] first).
    #[inline]
    pub fn alloc_with(&mut self, bytes: &[u8]) -> Option<(FrameId, u16)> {
        if bytes.len() > self.max_data_len() {
            return None;
        }
        let frame = self.alloc()?;
        let start = usize::from(self.headroom);
        self.frame_mut(frame)[start..start + bytes.len()].copy_from_slice(bytes);
        Some((frame, self.headroom))
    }

    /// A copy of `pkt` (its whole chain) in fresh frames, the first at the same offset so
    /// the copy keeps the same headroom; `None` when the pool runs short (nothing taken).
    #[inline]
    pub fn clone_packet(&mut self, pkt: &Packet) -> Option<Packet> {
        if pkt.chained {
            return self.clone_chain(pkt);
        }
        let frame = self.alloc()?;
        self.copy_head(pkt, frame);
        Some(Packet { frame, ..*pkt })
    }

    fn copy_head(&mut self, pkt: &Packet, frame: FrameId) {
        let size = self.frame_size() as usize;
        let start = usize::from(pkt.offset);
        let len = usize::from(pkt.len);
        assert!(start + len <= size && pkt.frame < self.frames && frame < self.frames);
        // SAFETY: both ranges lie inside the region (checked above) and inside two distinct
        // frames (`frame` was just taken from the free list, so it is not `pkt.frame`, which
        // the caller owns), so they do not overlap; `&mut self` excludes other references.
        unsafe {
            let src = self.base.as_ptr().add(pkt.frame as usize * size + start);
            let dst = self.base.as_ptr().add(frame as usize * size + start);
            std::ptr::copy_nonoverlapping(src, dst, len);
        }
    }

    #[cold]
    fn clone_chain(&mut self, pkt: &Packet) -> Option<Packet> {
        let frames = 1 + self.tail_frames(pkt);
        if self.free_len < frames {
            return None;
        }
        let head = self.alloc()?;
        self.copy_head(pkt, head);
        let (mut from, mut last) = (self.next[pkt.frame as usize], head);
        while from != NO_FRAME {
            let to = self.alloc()?;
            let seg = self.segment[from as usize];
            let size = self.frame_size() as usize;
            let (at, len) = (usize::from(seg.offset), usize::from(seg.len));
            // SAFETY: `seg` was set by `link` inside frame `from`; `to` is a different,
            // just-allocated frame; both lie in the region and `&mut self` is exclusive.
            unsafe {
                let src = self.base.as_ptr().add(from as usize * size + at);
                let dst = self.base.as_ptr().add(to as usize * size + at);
                std::ptr::copy_nonoverlapping(src, dst, len);
            }
            self.segment[to as usize] = seg;
            self.next[last as usize] = to;
            last = to;
            from = self.next[from as usize];
        }
        self.tail_len[head as usize] = self.tail_len[pkt.frame as usize];
        Some(Packet {
            frame: head,
            ..*pkt
        })
    }

    /// Frames after the first in `pkt`'s chain.
    fn tail_frames(&self, pkt: &Packet) -> usize {
        let mut n = 0;
        let mut at = if pkt.chained {
            self.next[pkt.frame as usize]
        } else {
            NO_FRAME
        };
        while at != NO_FRAME {
            n += 1;
            at = self.next[at as usize];
        }
        n
    }

    /// Bytes of the whole packet: its first segment and, when chained, the rest.
    #[inline(always)]
    pub fn packet_len(&self, pkt: &Packet) -> usize {
        usize::from(pkt.len) + self.tail_len(pkt)
    }

    /// Bytes of the packet after its first segment (zero unless it is chained): what a
    /// header view of [`FramePool::data`] must allow for beyond its buffer.
    #[inline(always)]
    pub fn tail_len(&self, pkt: &Packet) -> usize {
        if pkt.chained {
            self.tail_len[pkt.frame as usize] as usize
        } else {
            0
        }
    }

    /// Bytes of `pkts` beyond their first frames: what a burst's byte count adds once
    /// it has seen that some packet of it is chained.
    #[cold]
    pub fn tails_len(&self, pkts: &[Packet]) -> u64 {
        pkts.iter().map(|p| self.tail_len(p) as u64).sum()
    }

    /// The packet's data, segment by segment (the first is [`FramePool::data`]).
    pub fn segments<'a>(&'a self, pkt: &Packet) -> Segments<'a> {
        Segments {
            pool: self,
            first: Some(self.data(pkt)),
            at: if pkt.chained {
                self.next[pkt.frame as usize]
            } else {
                NO_FRAME
            },
        }
    }

    /// Copies the packet's bytes from byte `from` on into `out`, as many as fit; returns
    /// how many it copied.
    #[inline]
    pub fn copy_out(&self, pkt: &Packet, from: usize, out: &mut [u8]) -> usize {
        if !pkt.chained {
            let data = self.data(pkt).get(from..).unwrap_or_default();
            let n = data.len().min(out.len());
            out[..n].copy_from_slice(&data[..n]);
            return n;
        }
        self.copy_out_chain(pkt, from, out)
    }

    #[cold]
    fn copy_out_chain(&self, pkt: &Packet, from: usize, out: &mut [u8]) -> usize {
        let (mut skip, mut done) = (from, 0);
        for seg in self.segments(pkt) {
            if done == out.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            let n = (seg.len() - skip).min(out.len() - done);
            out[done..done + n].copy_from_slice(&seg[skip..skip + n]);
            done += n;
            skip = 0;
        }
        done
    }

    /// A received packet holding `bytes`: in one frame after the headroom when they fit,
    /// chained over as many frames as they need otherwise (the first filled to its end,
    /// so it holds every header, the rest from their start). `None` when the pool runs
    /// short (nothing is taken) or `bytes` exceed [`MAX_CHAIN_LEN`].
    #[inline]
    pub fn alloc_packet(&mut self, bytes: &[u8]) -> Option<Packet> {
        if bytes.len() <= self.max_data_len() {
            let (frame, offset) = self.alloc_with(bytes)?;
            return Some(Packet::received(frame, offset, bytes.len() as u16));
        }
        self.alloc_chain(bytes)
    }

    /// Frames a packet of `len` bytes takes (see [`FramePool::alloc_packet`]).
    #[inline]
    pub fn frames_for(&self, len: usize) -> usize {
        1 + len
            .saturating_sub(self.max_data_len())
            .div_ceil(self.frame_size() as usize)
    }

    #[cold]
    #[inline(never)]
    fn alloc_chain(&mut self, bytes: &[u8]) -> Option<Packet> {
        if bytes.len() > MAX_CHAIN_LEN || self.free_len < self.frames_for(bytes.len()) {
            return None;
        }
        let (first, rest) = bytes.split_at(self.max_data_len());
        let size = self.frame_size() as usize;
        let (head, offset) = self.alloc_with(first)?;
        let mut last = head;
        for piece in rest.chunks(size) {
            let frame = self.alloc()?;
            self.frame_mut(frame)[..piece.len()].copy_from_slice(piece);
            self.segment[frame as usize] = Segment {
                offset: 0,
                len: piece.len() as u16,
            };
            self.next[last as usize] = frame;
            last = frame;
        }
        self.tail_len[head as usize] = rest.len() as u32;
        let mut pkt = Packet::received(head, offset, first.len() as u16);
        pkt.chained = true;
        Some(pkt)
    }
}

/// The segments of a packet: see [`FramePool::segments`].
#[derive(Debug)]
pub struct Segments<'a> {
    pool: &'a FramePool,
    first: Option<&'a [u8]>,
    at: FrameId,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        if self.at == NO_FRAME {
            return None;
        }
        let frame = self.at;
        let seg = self.pool.segment[frame as usize];
        self.at = self.pool.next[frame as usize];
        let start = usize::from(seg.offset);
        Some(&self.pool.frame(frame)[start..start + usize::from(seg.len)])
    }
}

impl Drop for FramePool {
    fn drop(&mut self) {
        // SAFETY: `base` was returned by `alloc_zeroed` with exactly `self.layout`, and the
        // region is freed only here, once.
        unsafe { alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_geometry() {
        assert_eq!(
            FramePool::new(8, 1000, 0).unwrap_err(),
            PoolError::BadFrameSize(1000)
        );
        assert_eq!(
            FramePool::new(8, 512, 500).unwrap_err(),
            PoolError::BadHeadroom(500)
        );
        assert_eq!(
            FramePool::new(0, 2048, 256).unwrap_err(),
            PoolError::BadFrameCount(0)
        );
    }

    #[test]
    fn region_is_page_aligned_and_frames_are_disjoint() {
        let mut pool = FramePool::with_frames(4).unwrap();
        assert_eq!(pool.region_ptr() as usize % 4096, 0);
        assert_eq!(pool.region_len(), 4 * 2048);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        assert_ne!(a, b);
        pool.frame_mut(a).fill(0xaa);
        pool.frame_mut(b).fill(0xbb);
        assert!(pool.frame(a).iter().all(|&x| x == 0xaa));
        assert_eq!(pool.frame_of_addr(pool.frame_addr(b) + 100), Some(b));
        assert_eq!(pool.frame_of_addr(4 * 2048), None);
    }

    #[test]
    fn mac_header_is_the_start_of_the_data() {
        let mut pool = FramePool::with_frames(2).unwrap();
        let bytes: Vec<u8> = (1..=60).collect();
        let (frame, offset) = pool.alloc_with(&bytes).unwrap();
        let pkt = Packet::received(frame, offset + 2, 58);
        assert_eq!(&pool.reader().mac_header(&pkt)[..], &bytes[2..14]);
    }

    #[test]
    fn alloc_until_empty_then_free_restores() {
        let mut pool = FramePool::with_frames(3).unwrap();
        let frames: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(pool.available(), 0);
        frames.into_iter().for_each(|f| pool.free(f));
        assert_eq!(pool.available(), 3);
    }

    #[test]
    fn alloc_with_and_clone_keep_offset_and_bytes() {
        let mut pool = FramePool::with_frames(4).unwrap();
        let (frame, offset) = pool.alloc_with(b"hello, frame").unwrap();
        assert_eq!(offset, DEFAULT_HEADROOM);
        let pkt = Packet::received(frame, offset, 12);
        let copy = pool.clone_packet(&pkt).unwrap();
        assert_ne!(copy.frame, pkt.frame);
        assert_eq!(pool.data(&copy), b"hello, frame");
        assert!(pool.alloc_with(&vec![0; pool.max_data_len() + 1]).is_none());
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn read_back(pool: &FramePool, pkt: &Packet) -> Vec<u8> {
        let mut out = vec![0; pool.packet_len(pkt) + 3];
        let n = pool.copy_out(pkt, 0, &mut out);
        out.truncate(n);
        out
    }

    #[test]
    fn a_packet_larger_than_a_frame_is_chained_and_read_back_whole() {
        let mut pool = FramePool::with_frames(16).unwrap();
        let bytes = pattern(9018);
        let pkt = pool.alloc_packet(&bytes).unwrap();
        assert!(pkt.chained);
        assert_eq!(
            usize::from(pkt.len),
            pool.max_data_len(),
            "the first frame is full"
        );
        assert_eq!(pool.data(&pkt), &bytes[..pool.max_data_len()]);
        assert_eq!(pool.packet_len(&pkt), 9018);
        assert_eq!(pool.tail_len(&pkt), 9018 - pool.max_data_len());
        assert_eq!(pool.frames_for(9018), 5);
        assert_eq!(pool.available(), 11);
        assert_eq!(read_back(&pool, &pkt), bytes);
        let mut part = [0u8; 100];
        assert_eq!(pool.copy_out(&pkt, 5000, &mut part), 100);
        assert_eq!(&part[..], &bytes[5000..5100]);
        assert_eq!(pool.copy_out(&pkt, 9000, &mut part), 18, "stops at the end");
        let joined: Vec<u8> = pool.segments(&pkt).flatten().copied().collect();
        assert_eq!(joined, bytes);

        let copy = pool.clone_packet(&pkt).unwrap();
        assert!(copy.chained && copy.frame != pkt.frame);
        assert_eq!(read_back(&pool, &copy), bytes);
        assert_eq!(pool.available(), 6);
        pool.free(pkt.frame);
        assert_eq!(read_back(&pool, &copy), bytes, "the copy owns its frames");
        pool.free(copy.frame);
        assert_eq!(
            pool.available(),
            16,
            "freeing a chain's first frame frees it all"
        );
    }

    #[test]
    fn a_chain_is_all_or_nothing() {
        let mut pool = FramePool::with_frames(4).unwrap();
        assert!(
            pool.alloc_packet(&pattern(9018)).is_none(),
            "needs 5 frames"
        );
        assert_eq!(pool.available(), 4, "nothing taken");
        let pkt = pool.alloc_packet(&pattern(4000)).unwrap();
        assert_eq!(pool.available(), 1);
        assert!(pool.clone_packet(&pkt).is_none(), "a copy needs 3");
        assert_eq!(pool.available(), 1);
        assert!(pool.alloc_packet(&vec![0; MAX_CHAIN_LEN + 1]).is_none());
        pool.free(pkt.frame);
        assert_eq!(pool.available(), 4);
    }

    #[test]
    fn a_packet_that_fits_one_frame_is_not_chained() {
        let mut pool = FramePool::with_frames(2).unwrap();
        let bytes = pattern(pool.max_data_len());
        let pkt = pool.alloc_packet(&bytes).unwrap();
        assert!(!pkt.chained);
        assert_eq!(
            (pool.packet_len(&pkt), pool.tail_len(&pkt)),
            (bytes.len(), 0)
        );
        assert_eq!(pool.segments(&pkt).count(), 1);
        assert_eq!(read_back(&pool, &pkt), bytes);
    }

    proptest::proptest! {
        /// Any length up to the largest chain goes in and comes out byte for byte, takes
        /// the frames `frames_for` says, and gives every one of them back when freed
        /// (with its copy's, in either order).
        #[test]
        fn chains_round_trip_and_free_whole(
            len in 0usize..MAX_CHAIN_LEN,
            from in 0usize..70_000,
            copy_first in proptest::bool::ANY,
        ) {
            let mut pool = FramePool::new(80, 2048, 256).unwrap();
            let bytes = pattern(len);
            let pkt = pool.alloc_packet(&bytes).unwrap();
            proptest::prop_assert_eq!(pool.available(), 80 - pool.frames_for(len));
            proptest::prop_assert_eq!(pool.packet_len(&pkt), len);
            proptest::prop_assert_eq!(read_back(&pool, &pkt), bytes.clone());
            let mut tail = vec![0; 300];
            let n = pool.copy_out(&pkt, from, &mut tail);
            let want = bytes.get(from..).unwrap_or_default();
            proptest::prop_assert_eq!(&tail[..n], &want[..want.len().min(300)]);
            if let Some(copy) = pool.clone_packet(&pkt) {
                proptest::prop_assert_eq!(read_back(&pool, &copy), bytes);
                let (a, b) = if copy_first { (copy, pkt) } else { (pkt, copy) };
                pool.free(a.frame);
                pool.free(b.frame);
            } else {
                pool.free(pkt.frame);
            }
            proptest::prop_assert_eq!(pool.available(), 80);
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "freed twice")]
    fn double_free_is_caught_in_test_builds() {
        let mut pool = FramePool::with_frames(2).unwrap();
        let f = pool.alloc().unwrap();
        pool.free(f);
        pool.free(f);
    }
}
