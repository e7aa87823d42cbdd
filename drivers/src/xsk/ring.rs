//! The four AF_XDP rings (fill, completion, rx, tx) as seen from user space.
//!
//! Each ring is a power-of-two array of entries plus a producer and a consumer index, all
//! in memory shared with the kernel (an `mmap` of the socket). The indices are free-running
//! `u32`s; an entry's slot is `index & mask`. The producing side writes entries and then
//! publishes its index with a release store; the consuming side loads that index with an
//! acquire load before reading the entries behind it, and publishes its own index with a
//! release store once it no longer needs them. Each side caches both indices and rereads
//! the other side's only when its cached view says the ring is full (or empty), so a burst
//! costs one access to the shared line per side. This is the protocol of `libxdp`'s
//! `xsk.h` and of the `xdpilone` crate.

use std::io;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};
use rustix::net::xdp::{XdpRingFlags, XdpRingOffset};

/// One `mmap` of a ring, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a mapping is plain shared memory, usable from any thread; the ring types that
// access it enforce single ownership of each side.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the ring at page offset `pgoff` of the AF_XDP socket `fd`.
    pub(crate) fn ring(fd: BorrowedFd<'_>, pgoff: u64, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping chosen by the kernel (null hint, no MAP_FIXED)
        // cannot alias any existing Rust object; the kernel validates `pgoff` and `len`
        // against the socket's ring and fails the call otherwise.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                fd,
                pgoff,
            )
        }?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap at 0"))?;
        Ok(Mapping { ptr, len })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping made in `ring`, unmapped only
        // here, once. The rings holding pointers into it are dropped with it (they are
        // fields of the same owner) and never used afterwards.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Pointers into one ring's shared memory.
#[derive(Debug)]
struct RawRing<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: Option<NonNull<AtomicU32>>,
    descs: NonNull<T>,
    size: u32,
    mask: u32,
}

impl<T: Copy> RawRing<T> {
    /// # Safety
    ///
    /// `base` must point to memory laid out as `off` describes for a ring of `size`
    /// entries of `T` (producer, consumer and flags `u32`s, `size` entries at `desc`),
    /// valid for reads and writes for as long as the ring is used, and only accessed by
    /// others (the kernel, or the ring's other side) through the ring protocol.
    unsafe fn new(base: NonNull<u8>, off: &XdpRingOffset, size: u32) -> Self {
        assert!(
            size.is_power_of_two(),
            "ring size {size} is not a power of two"
        );
        let at = |o: u64| {
            let o = usize::try_from(o).expect("ring offset fits usize");
            // SAFETY: the caller guarantees the offsets lie inside the mapping.
            unsafe { base.add(o) }
        };
        let producer = at(off.producer).cast::<AtomicU32>();
        let consumer = at(off.consumer).cast::<AtomicU32>();
        let flags = off.flags.map(|f| at(f).cast::<AtomicU32>());
        let descs = at(off.desc).cast::<T>();
        assert!(producer.as_ptr().is_aligned() && consumer.as_ptr().is_aligned());
        assert!(flags.is_none_or(|f| f.as_ptr().is_aligned()));
        assert!(descs.as_ptr().is_aligned());
        RawRing {
            producer,
            consumer,
            flags,
            descs,
            size,
            mask: size - 1,
        }
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: `producer` points to an aligned u32 inside memory valid for the ring's
        // lifetime (contract of `new`); every party accesses it atomically.
        unsafe { self.producer.as_ref() }
    }

    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline]
    fn needs_wakeup(&self) -> bool {
        self.flags.is_some_and(|f| {
            // SAFETY: as for `producer`; the kernel writes the flags word atomically.
            let flags = unsafe { f.as_ref() }.load(Ordering::Relaxed);
            flags & XdpRingFlags::XDP_RING_NEED_WAKEUP.bits() != 0
        })
    }

    /// Slot of free-running index `idx`.
    #[inline]
    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: `idx & mask < size`, so the slot lies inside the entry array.
        unsafe { self.descs.as_ptr().add((idx & self.mask) as usize) }
    }
}

/// The side of a ring that user space produces into (fill, tx).
#[derive(Debug)]
pub(crate) struct ProdRing<T> {
    raw: RawRing<T>,
    /// Our next index to publish entries at.
    cached_prod: u32,
    /// The consumer index plus `size`: we may write up to (not including) this index.
    cached_cons: u32,
    _map: Option<Mapping>,
    _t: PhantomData<T>,
}

// SAFETY: the ring is a handle to shared memory plus private indices; only its single
// owner (one side of the protocol) writes through it, from whichever thread owns it.
unsafe impl<T: Send> Send for ProdRing<T> {}

impl<T: Copy> ProdRing<T> {
    /// A producer over a ring mapping.
    ///
    /// # Safety
    ///
    /// As for [`RawRing::new`] with `base = map.ptr()`, and this must be the only producer
    /// of the ring.
    pub(crate) unsafe fn new(
        map: Option<Mapping>,
        base: NonNull<u8>,
        off: &XdpRingOffset,
        size: u32,
    ) -> Self {
        // SAFETY: forwarded from our caller.
        let raw = unsafe { RawRing::new(base, off, size) };
        let cached_prod = raw.producer().load(Ordering::Relaxed);
        let cached_cons = raw.consumer().load(Ordering::Acquire).wrapping_add(size);
        ProdRing {
            raw,
            cached_prod,
            cached_cons,
            _map: map,
            _t: PhantomData,
        }
    }

    /// Free slots, rereading the consumer index only if fewer than `want` are known free.
    #[inline]
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        self.cached_cons = self
            .raw
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.raw.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes up to `max` entries taken from `next` (stopping at its first `None`) and
    /// publishes them; returns how many were written.
    #[inline]
    pub(crate) fn produce(&mut self, max: u32, mut next: impl FnMut() -> Option<T>) -> u32 {
        let room = self.free(max).min(max);
        let mut done = 0;
        while done < room {
            let Some(entry) = next() else { break };
            // SAFETY: index `cached_prod + done` is below `cached_cons` (= consumer + size),
            // so its slot is not owned by the consumer: it has consumed it (the acquire load
            // of its index ordered its reads before this write) or never received it.
            unsafe {
                self.raw
                    .slot(self.cached_prod.wrapping_add(done))
                    .write(entry)
            };
            done += 1;
        }
        if done > 0 {
            self.cached_prod = self.cached_prod.wrapping_add(done);
            // Release: the entries written above become visible before the new index.
            self.raw
                .producer()
                .store(self.cached_prod, Ordering::Release);
        }
        done
    }

    /// Entries published and not yet consumed, per a fresh read of the consumer index.
    #[inline]
    pub(crate) fn pending(&mut self) -> u32 {
        self.raw.size - self.free(self.raw.size)
    }

    /// True when the kernel asks for a syscall to process this ring (`XDP_RING_NEED_WAKEUP`).
    #[inline]
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.raw.needs_wakeup()
    }

    /// Entries the ring holds.
    pub(crate) fn size(&self) -> u32 {
        self.raw.size
    }
}

/// The side of a ring that user space consumes from (rx, completion).
#[derive(Debug)]
pub(crate) struct ConsRing<T> {
    raw: RawRing<T>,
    /// Our next index to read.
    cached_cons: u32,
    /// The producer index as last read: entries below it are ready.
    cached_prod: u32,
    _map: Option<Mapping>,
    _t: PhantomData<T>,
}

// SAFETY: as for `ProdRing`.
unsafe impl<T: Send> Send for ConsRing<T> {}

impl<T: Copy> ConsRing<T> {
    /// A consumer over a ring mapping.
    ///
    /// # Safety
    ///
    /// As for [`RawRing::new`] with `base = map.ptr()`, and this must be the only consumer
    /// of the ring.
    pub(crate) unsafe fn new(
        map: Option<Mapping>,
        base: NonNull<u8>,
        off: &XdpRingOffset,
        size: u32,
    ) -> Self {
        // SAFETY: forwarded from our caller.
        let raw = unsafe { RawRing::new(base, off, size) };
        let cached_cons = raw.consumer().load(Ordering::Relaxed);
        let cached_prod = raw.producer().load(Ordering::Acquire);
        ConsRing {
            raw,
            cached_cons,
            cached_prod,
            _map: map,
            _t: PhantomData,
        }
    }

    /// Ready entries, rereading the producer index only if fewer than `want` are known.
    #[inline]
    pub(crate) fn available(&mut self, want: u32) -> u32 {
        let ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready >= want {
            return ready;
        }
        self.cached_prod = self.raw.producer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Reads up to `max` ready entries, handing each to `f`, then releases their slots to
    /// the producer; returns how many were read.
    #[inline]
    pub(crate) fn consume(&mut self, max: u32, mut f: impl FnMut(T)) -> u32 {
        let n = self.available(max).min(max);
        for i in 0..n {
            // SAFETY: index `cached_cons + i` is below the producer index we loaded with
            // acquire ordering, so the producer wrote this slot before publishing it and
            // will not write it again until we release it below. `T: Copy` is plain data
            // for which any bit pattern the kernel writes is valid (u64, `Desc`).
            let entry = unsafe { self.raw.slot(self.cached_cons.wrapping_add(i)).read() };
            f(entry);
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n);
            // Release: our reads above happen before the producer may reuse the slots.
            self.raw
                .consumer()
                .store(self.cached_cons, Ordering::Release);
        }
        n
    }

    /// Entries the ring holds.
    pub(crate) fn size(&self) -> u32 {
        self.raw.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring laid out like the kernel's, in ordinary memory, with 8 entries of u64.
    struct FakeRing {
        mem: Box<[u64]>,
    }

    const SIZE: u32 = 8;

    impl FakeRing {
        fn new() -> Self {
            // producer at 0, consumer at 64, flags at 128, descs at 192 (bytes).
            FakeRing {
                mem: vec![0u64; 24 + SIZE as usize].into_boxed_slice(),
            }
        }

        fn off() -> XdpRingOffset {
            XdpRingOffset {
                producer: 0,
                consumer: 64,
                desc: 192,
                flags: Some(128),
            }
        }

        fn base(&mut self) -> NonNull<u8> {
            NonNull::new(self.mem.as_mut_ptr().cast::<u8>()).unwrap()
        }
    }

    #[test]
    fn entries_cross_the_ring_in_order_across_wraparound() {
        let mut fake = FakeRing::new();
        let base = fake.base();
        // SAFETY: `fake` outlives both rings, is laid out as `off` says, and the two rings
        // are its only producer and only consumer.
        let (mut prod, mut cons) = unsafe {
            (
                ProdRing::<u64>::new(None, base, &FakeRing::off(), SIZE),
                ConsRing::<u64>::new(None, base, &FakeRing::off(), SIZE),
            )
        };
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..50u32 {
            let want = round % 11;
            let wrote = prod.produce(want, || {
                next += 1;
                Some(next)
            });
            assert!(wrote <= SIZE);
            let take = round % 5 + 1;
            cons.consume(take, |v| {
                expect += 1;
                assert_eq!(v, expect);
            });
        }
        // Drain the rest.
        while cons.consume(SIZE, |v| {
            expect += 1;
            assert_eq!(v, expect);
        }) > 0
        {}
        // `produce` never asks `next` for more than the room it found, so every value
        // made was delivered.
        assert_eq!(expect, next);
        assert_eq!(prod.pending(), 0);
    }

    #[test]
    fn a_full_ring_refuses_and_a_stop_publishes_only_what_was_given() {
        let mut fake = FakeRing::new();
        let base = fake.base();
        // SAFETY: as above.
        let (mut prod, mut cons) = unsafe {
            (
                ProdRing::<u64>::new(None, base, &FakeRing::off(), SIZE),
                ConsRing::<u64>::new(None, base, &FakeRing::off(), SIZE),
            )
        };
        let mut left = 3;
        assert_eq!(
            prod.produce(SIZE, || (left > 0).then(|| {
                left -= 1;
                7
            })),
            3
        );
        assert_eq!(prod.produce(100, || Some(9)), SIZE - 3);
        assert_eq!(prod.produce(1, || Some(1)), 0, "full ring takes nothing");
        assert_eq!(prod.pending(), SIZE);
        let mut got = Vec::new();
        assert_eq!(cons.consume(2, |v| got.push(v)), 2);
        assert_eq!(got, [7, 7]);
        assert_eq!(prod.produce(5, || Some(1)), 2);
        assert!(!prod.needs_wakeup());
        // SAFETY: byte 128 of `fake` is the ring's aligned flags word, accessed atomically.
        let flags = unsafe { base.add(128).cast::<AtomicU32>().as_ref() };
        flags.store(XdpRingFlags::XDP_RING_NEED_WAKEUP.bits(), Ordering::Relaxed);
        assert!(prod.needs_wakeup());
    }
}
