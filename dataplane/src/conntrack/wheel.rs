//! The expiry timer wheel and the free list of session slots.
//!
//! One bucket per second, `slots` buckets (a power of two) in a ring; a session waits in
//! the bucket of its scheduled second (`sched`, modulo the ring), on an intrusive doubly
//! linked list, so linking, unlinking and moving cost O(1) and no memory.
//!
//! Scheduling is lazy: a packet that only pushes the deadline later changes nothing here
//! (it writes the session's `expires`, a line the packet path touches anyway); when the
//! bucket comes round, a session whose deadline moved is filed again under its real
//! deadline. A long-lived flow therefore costs one visit per wheel revolution or per
//! timeout, whichever is longer, instead of list surgery per packet. Only a deadline
//! that moves *earlier* (a TCP FIN or RST) moves the session at once, so closed
//! connections give their slot back on time. Deadlines beyond one revolution stay in
//! their bucket and are skipped until their round comes.
//!
//! Node ids: `0..capacity` are sessions, then one sentinel per bucket, then the sentinel
//! of `pending`: sessions examined in the current bucket but due in a later round. They
//! wait there until the bucket is finished, so a bucket interrupted by the budget resumes
//! with the sessions it has not looked at yet instead of the same ones again.
//!
//! Free session slots are chained through `next`, marked by `sched == FREE`; the most
//! recently freed slot is reused first, while its lines may still be cached.

/// No node.
const NIL: u32 = u32::MAX;
/// `sched` of a free session slot.
const FREE: u64 = u64::MAX;

#[derive(Clone, Copy, Debug)]
struct Link {
    prev: u32,
    next: u32,
    sched: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Wheel {
    links: Box<[Link]>,
    capacity: u32,
    mask: u64,
    /// The second whose bucket is being (or will next be) processed: every earlier
    /// second's bucket has been emptied of sessions due at that time.
    pub(super) time: u64,
    free: u32,
}

impl Wheel {
    /// A wheel for `capacity` sessions (all free) with `slots` one-second buckets.
    pub(super) fn new(capacity: usize, slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two());
        let nodes = capacity + slots + 1;
        assert!(nodes < NIL as usize, "too many sessions for 32-bit ids");
        let links = (0..nodes as u32)
            .map(|i| {
                if (i as usize) < capacity {
                    let next = if i as usize + 1 < capacity {
                        i + 1
                    } else {
                        NIL
                    };
                    Link {
                        prev: NIL,
                        next,
                        sched: FREE,
                    }
                } else {
                    Link {
                        prev: i,
                        next: i,
                        sched: 0,
                    }
                }
            })
            .collect();
        Wheel {
            links,
            capacity: capacity as u32,
            mask: slots as u64 - 1,
            time: 0,
            free: if capacity > 0 { 0 } else { NIL },
        }
    }

    #[inline]
    fn bucket(&self, t: u64) -> u32 {
        self.capacity + (t & self.mask) as u32
    }

    #[inline]
    fn pending(&self) -> u32 {
        self.capacity + self.mask as u32 + 1
    }

    /// Whether session slot `id` is in use.
    #[inline]
    pub(super) fn is_live(&self, id: u32) -> bool {
        id < self.capacity && self.links[id as usize].sched != FREE
    }

    /// When session `id` is next examined, at the latest.
    pub(super) fn sched(&self, id: u32) -> u64 {
        self.links[id as usize].sched
    }

    /// Takes a free session slot.
    #[inline]
    pub(super) fn alloc(&mut self) -> Option<u32> {
        let id = self.free;
        if id == NIL {
            return None;
        }
        self.free = self.links[id as usize].next;
        // Self-linked: unlinking a node that is on no list is then a no-op.
        self.links[id as usize] = Link {
            prev: id,
            next: id,
            sched: 0,
        };
        Some(id)
    }

    /// Unlinks session `id` and returns its slot to the free list.
    #[inline]
    pub(super) fn release(&mut self, id: u32) {
        self.unlink(id);
        self.links[id as usize] = Link {
            prev: NIL,
            next: self.free,
            sched: FREE,
        };
        self.free = id;
    }

    #[inline]
    fn unlink(&mut self, id: u32) {
        let Link { prev, next, .. } = self.links[id as usize];
        self.links[prev as usize].next = next;
        self.links[next as usize].prev = prev;
        let l = &mut self.links[id as usize];
        l.prev = id;
        l.next = id;
    }

    /// Appends node `id` to the list of sentinel `head`.
    #[inline]
    fn push_back(&mut self, head: u32, id: u32) {
        let tail = self.links[head as usize].prev;
        self.links[id as usize].prev = tail;
        self.links[id as usize].next = head;
        self.links[tail as usize].next = id;
        self.links[head as usize].prev = id;
    }

    /// Moves every node of list `from` to the end of list `to`.
    fn splice(&mut self, from: u32, to: u32) {
        let first = self.links[from as usize].next;
        if first == from {
            return;
        }
        let last = self.links[from as usize].prev;
        let tail = self.links[to as usize].prev;
        self.links[tail as usize].next = first;
        self.links[first as usize].prev = tail;
        self.links[last as usize].next = to;
        self.links[to as usize].prev = last;
        self.links[from as usize].prev = from;
        self.links[from as usize].next = from;
    }

    /// Files session `id` (on no list) to be examined at second `at`, or at the current
    /// second if `at` is already past.
    #[inline]
    pub(super) fn schedule(&mut self, id: u32, at: u64) {
        let at = at.max(self.time);
        self.links[id as usize].sched = at;
        self.push_back(self.bucket(at), id);
    }

    /// Moves session `id` to an earlier second `at`.
    #[inline]
    pub(super) fn reschedule(&mut self, id: u32, at: u64) {
        self.unlink(id);
        self.schedule(id, at);
    }

    /// Files again a session [`Wheel::next_due`] returned whose deadline `at` is after
    /// the `now` it was called with.
    #[inline]
    pub(super) fn refile(&mut self, id: u32, at: u64) {
        let at = at.max(self.time);
        self.links[id as usize].sched = at;
        let head = if at & self.mask == self.time & self.mask {
            self.pending()
        } else {
            self.bucket(at)
        };
        self.push_back(head, id);
    }

    /// The next session to examine for expiry at `now`, taken off its list (the caller
    /// either releases or refiles it), or `None` when every bucket up to `now` is done.
    /// Skips at most one revolution of empty buckets per call.
    #[inline]
    pub(super) fn next_due(&mut self, now: u64) -> Option<u32> {
        if now >= self.time.saturating_add(self.mask + 1) {
            // Every bucket is due: visiting each once from `now - slots + 1` covers all.
            self.splice(self.pending(), self.bucket(self.time));
            self.time = now - self.mask;
        }
        while self.time <= now {
            let head = self.bucket(self.time);
            let first = self.links[head as usize].next;
            if first != head {
                self.unlink(first);
                return Some(first);
            }
            self.splice(self.pending(), head);
            self.time += 1;
        }
        None
    }

    /// Free session slots (for checks: O(capacity)).
    #[cfg(test)]
    pub(super) fn free_len(&self) -> usize {
        let mut n = 0;
        let mut i = self.free;
        while i != NIL {
            n += 1;
            i = self.links[i as usize].next;
        }
        n
    }

    /// Sessions on the lists (for checks: O(capacity + slots)).
    #[cfg(test)]
    pub(super) fn linked_len(&self) -> usize {
        let mut n = 0;
        for head in self.capacity..=self.pending() {
            let mut i = self.links[head as usize].next;
            while i != head {
                assert!(i < self.capacity, "a sentinel inside a list");
                assert!(
                    self.links[i as usize].sched != FREE,
                    "a free slot on a list"
                );
                n += 1;
                i = self.links[i as usize].next;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_sessions_come_out_in_time_order_and_pending_waits_for_its_bucket() {
        let mut w = Wheel::new(4, 8);
        let a = w.alloc().unwrap();
        let b = w.alloc().unwrap();
        let c = w.alloc().unwrap();
        w.schedule(a, 3);
        w.schedule(b, 2);
        w.schedule(c, 11); // same bucket as 3, next round
        assert_eq!(w.next_due(1), None);
        assert_eq!(w.next_due(3), Some(b));
        w.release(b);
        assert_eq!(w.next_due(3), Some(a));
        w.release(a);
        assert_eq!(w.next_due(3), Some(c));
        w.refile(c, 11);
        assert_eq!(w.next_due(3), None, "a refiled session waits for its round");
        assert_eq!(w.linked_len(), 1);
        assert_eq!(w.next_due(10), None);
        assert_eq!(w.next_due(11), Some(c));
        w.release(c);
        assert_eq!((w.free_len(), w.linked_len()), (4, 0));
    }

    #[test]
    fn a_long_gap_visits_every_bucket_once() {
        let mut w = Wheel::new(8, 4);
        let ids: Vec<u32> = (0..8).map(|_| w.alloc().unwrap()).collect();
        for (k, &id) in ids.iter().enumerate() {
            w.schedule(id, k as u64);
        }
        assert_eq!(w.alloc(), None);
        let mut seen = Vec::new();
        while let Some(id) = w.next_due(1_000_000) {
            seen.push(id);
            w.release(id);
        }
        seen.sort_unstable();
        assert_eq!(seen, ids);
    }
}
