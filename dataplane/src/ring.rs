//! A bounded single-producer, single-consumer ring of frame-sized slots.
//!
//! The producer writes slot contents and then publishes its position with a release
//! store; the consumer reads a position with an acquire load before it reads the slots
//! behind it, and publishes its own position the same way when it is done with them.
//! Each side caches the other's position and rereads it only when the cached value says
//! the ring is full (or empty), so a burst costs one shared-cache-line access per side.

use std::cell::UnsafeCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[repr(align(128))]
#[derive(Debug, Default)]
struct Padded(AtomicUsize);

struct Ring {
    /// `depth * slot_size` bytes from a leaked `Box<[u8]>`, reclaimed in `Drop`. Slots are
    /// only ever reached through raw pointers, never through references to the whole.
    data: NonNull<u8>,
    lens: Box<[UnsafeCell<u32>]>,
    slot_size: usize,
    mask: usize,
    /// Next slot the consumer reads; written only by the consumer.
    head: Padded,
    /// Next slot the producer writes; written only by the producer.
    tail: Padded,
}

// SAFETY: a `Ring` is only reachable through one `Producer` and one `Consumer`, neither of
// which is `Clone`, and both need `&mut self` to touch slots. The producer writes only
// slots in `[tail, head + depth)`, which the consumer does not read, and the consumer reads
// only slots in `[head, tail)`, which the producer does not write; the release/acquire
// pairs on `head` and `tail` order those accesses. So no slot is ever accessed from two
// threads at once.
unsafe impl Sync for Ring {}
// SAFETY: the ring owns plain bytes and counters; nothing in it is tied to a thread.
unsafe impl Send for Ring {}

impl Ring {
    /// Pointer to slot `index`'s bytes. Callers uphold the SPSC ownership rule above.
    #[inline]
    fn slot_ptr(&self, index: usize) -> *mut u8 {
        let start = (index & self.mask) * self.slot_size;
        // SAFETY: `index & mask < depth`, so `start + slot_size <= depth * slot_size`, the
        // length of the allocation `data` points to.
        unsafe { self.data.as_ptr().add(start) }
    }

    #[inline]
    fn len_cell(&self, index: usize) -> *mut u32 {
        self.lens[index & self.mask].get()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let len = (self.mask + 1) * self.slot_size;
        let slice = std::ptr::slice_from_raw_parts_mut(self.data.as_ptr(), len);
        // SAFETY: `data` came from `Box::into_raw` of a `len`-byte boxed slice in `ring`, and
        // the ring is dropped once, when both ends are gone.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// Creates a ring of `depth` slots (rounded up to a power of two) of `slot_size` bytes.
pub fn ring(depth: usize, slot_size: usize) -> (Producer, Consumer) {
    let depth = depth.max(2).next_power_of_two();
    let ring = Arc::new(Ring {
        data: NonNull::new(
            Box::into_raw(vec![0u8; depth * slot_size].into_boxed_slice()).cast::<u8>(),
        )
        .expect("Box::into_raw never returns null"),
        lens: (0..depth).map(|_| UnsafeCell::new(0)).collect(),
        slot_size,
        mask: depth - 1,
        head: Padded::default(),
        tail: Padded::default(),
    });
    (
        Producer {
            ring: Arc::clone(&ring),
            tail: 0,
            cached_head: 0,
        },
        Consumer {
            ring,
            head: 0,
            cached_tail: 0,
        },
    )
}

/// The writing end of a ring.
pub struct Producer {
    ring: Arc<Ring>,
    tail: usize,
    cached_head: usize,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .finish()
    }
}

impl Producer {
    /// Largest frame a slot holds.
    pub fn slot_size(&self) -> usize {
        self.ring.slot_size
    }

    /// Free slots, at least `wanted` when the ring has that many: the consumer's position is
    /// reread only when the cached one shows too little room.
    #[inline]
    fn free_slots(&mut self, wanted: usize) -> usize {
        let depth = self.ring.mask + 1;
        if depth - (self.tail - self.cached_head) < wanted {
            self.cached_head = self.ring.head.0.load(Ordering::Acquire);
        }
        depth - (self.tail - self.cached_head)
    }

    /// Writes up to `count` frames, each produced by `fill(i, slot)` which writes into the
    /// slot and returns the frame's length (at most the slot size), and publishes them
    /// together. Returns how many were written: fewer than `count` when the ring fills.
    #[inline]
    pub fn push_burst(
        &mut self,
        count: usize,
        mut fill: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        let n = count.min(self.free_slots(count));
        for i in 0..n {
            let index = self.tail + i;
            // SAFETY: `index` is in `[tail, head + depth)` (n <= free slots), so the consumer
            // is not reading this slot and no other reference to it exists; the slot is
            // `slot_size` bytes long inside `data`.
            let slot = unsafe {
                std::slice::from_raw_parts_mut(self.ring.slot_ptr(index), self.ring.slot_size)
            };
            let len = fill(i, slot).min(self.ring.slot_size);
            // SAFETY: same slot ownership as above.
            unsafe { *self.ring.len_cell(index) = len as u32 };
        }
        if n > 0 {
            self.tail += n;
            self.ring.tail.0.store(self.tail, Ordering::Release);
        }
        n
    }

    /// Writes one frame; false when the ring is full or `bytes` exceeds the slot size.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > self.ring.slot_size {
            return false;
        }
        self.push_burst(1, |_, slot| {
            slot[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        }) == 1
    }
}

/// The reading end of a ring.
pub struct Consumer {
    ring: Arc<Ring>,
    head: usize,
    cached_tail: usize,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .finish()
    }
}

impl Consumer {
    /// Frames ready to read, at least `wanted` when the producer has published that many:
    /// the producer's position is reread only when the cached one shows too few.
    #[inline]
    fn ready(&mut self, wanted: usize) -> usize {
        if self.cached_tail - self.head < wanted {
            self.cached_tail = self.ring.tail.0.load(Ordering::Acquire);
        }
        self.cached_tail - self.head
    }

    /// Offers up to `max` frames in order to `take`, which returns false to leave that frame
    /// (and the ones after it) in the ring. Returns how many were taken.
    #[inline]
    pub fn pop_burst(&mut self, max: usize, mut take: impl FnMut(&[u8]) -> bool) -> usize {
        let n = max.min(self.ready(max));
        let mut taken = 0;
        while taken < n {
            let index = self.head + taken;
            // SAFETY: `index` is in `[head, tail)`: the producer published this slot with a
            // release store that our acquire load of `tail` observed, and will not write it
            // again until we advance `head` past it. Its length was written with it.
            let frame = unsafe {
                let len = (*self.ring.len_cell(index) as usize).min(self.ring.slot_size);
                std::slice::from_raw_parts(self.ring.slot_ptr(index), len)
            };
            if !take(frame) {
                break;
            }
            taken += 1;
        }
        if taken > 0 {
            self.head += taken;
            self.ring.head.0.store(self.head, Ordering::Release);
        }
        taken
    }

    /// Whether the producer has published nothing this end has not read.
    pub fn is_empty(&mut self) -> bool {
        self.ready(1) == 0
    }

    /// Reads one frame into `out`; false when the ring is empty.
    pub fn pop_into(&mut self, out: &mut Vec<u8>) -> bool {
        self.pop_burst(1, |frame| {
            out.clear();
            out.extend_from_slice(frame);
            true
        }) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_drains_and_wraps() {
        let (mut p, mut c) = ring(4, 16);
        for round in 0..3u8 {
            for i in 0..4u8 {
                assert!(p.push(&[round, i]));
            }
            assert!(!p.push(&[9]), "full");
            let mut seen = Vec::new();
            assert_eq!(
                c.pop_burst(8, |f| {
                    seen.push(f.to_vec());
                    true
                }),
                4
            );
            assert_eq!(seen, (0..4u8).map(|i| vec![round, i]).collect::<Vec<_>>());
        }
        assert!(!p.push(&[0; 17]), "larger than a slot");
    }

    #[test]
    fn a_stale_cached_position_never_shortens_a_burst() {
        let (mut p, mut c) = ring(4, 16);
        assert_eq!(p.push_burst(2, |_, _| 1), 2);
        assert_eq!(c.pop_burst(1, |_| true), 1);
        assert_eq!(c.pop_burst(1, |_| true), 1);
        // The producer's cached view still shows two slots in use.
        assert_eq!(p.push_burst(4, |_, _| 1), 4);
        assert_eq!(c.pop_burst(1, |_| true), 1);
        assert_eq!(c.pop_burst(4, |_| true), 3, "the consumer rereads as well");
    }

    #[test]
    fn consumer_can_leave_frames_in_place() {
        let (mut p, mut c) = ring(4, 16);
        p.push(b"a");
        p.push(b"b");
        assert_eq!(c.pop_burst(8, |f| f == b"a"), 1);
        let mut out = Vec::new();
        assert!(c.pop_into(&mut out));
        assert_eq!(out, b"b");
    }

    #[test]
    fn crosses_threads_in_order() {
        const N: u32 = 100_000;
        let (mut p, mut c) = ring(64, 8);
        let producer = std::thread::spawn(move || {
            let mut next = 0u32;
            while next < N {
                next += p.push_burst((N - next) as usize, |i, slot| {
                    slot[..4].copy_from_slice(&(next + i as u32).to_le_bytes());
                    4
                }) as u32;
            }
        });
        let mut expect = 0u32;
        while expect < N {
            c.pop_burst(32, |f| {
                assert_eq!(u32::from_le_bytes(f.try_into().unwrap()), expect);
                expect += 1;
                true
            });
        }
        producer.join().unwrap();
    }
}
