//! Who owns each buffer slot of a tap queue: the driver or the kernel.
//!
//! A slot handed to io_uring belongs to the kernel until its completion is reaped; the
//! driver must neither read, write nor free it meanwhile. [`Slots`] is that ledger, kept
//! apart from the I/O so it can be tested without a kernel, and checked on every
//! transition: a completion for a slot the kernel does not hold is refused (and counted by
//! the caller), never trusted.
//!
//! Storage is fixed at construction (one entry per slot), so nothing here allocates on
//! the packet path.

/// The state of one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// On the free list: the driver may take it.
    Free,
    /// Taken by the driver (being filled, or being read after completion).
    Held,
    /// Submitted: the kernel owns its bytes until the completion is reaped.
    InFlight,
    /// Completed, waiting in the done queue: the driver owns its bytes again.
    Done,
}

/// A transition the ledger refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadTransition {
    /// The slot named.
    pub slot: u32,
    /// What state it was in (`None`: no such slot).
    pub state: Option<SlotState>,
}

/// A fixed-capacity FIFO of slot indices.
#[derive(Debug)]
struct Fifo {
    items: Box<[u32]>,
    head: usize,
    len: usize,
}

impl Fifo {
    fn new(capacity: usize) -> Fifo {
        Fifo {
            items: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    /// Cannot overflow: every slot is in at most one queue at a time (the ledger's states
    /// guarantee it) and each queue holds one entry per slot.
    fn push(&mut self, v: u32) {
        debug_assert!(self.len < self.items.len());
        let at = (self.head + self.len) % self.items.len();
        self.items[at] = v;
        self.len += 1;
    }

    fn peek(&self) -> Option<u32> {
        (self.len > 0).then(|| self.items[self.head])
    }

    fn pop(&mut self) -> Option<u32> {
        let v = self.peek()?;
        self.head = (self.head + 1) % self.items.len();
        self.len -= 1;
        Some(v)
    }
}

/// The ledger of `n` slots. See the module documentation.
#[derive(Debug)]
pub struct Slots {
    state: Box<[SlotState]>,
    result: Box<[i32]>,
    free: Fifo,
    done: Fifo,
    in_flight: usize,
}

impl Slots {
    /// `n` slots, all free.
    pub fn new(n: u32) -> Slots {
        let mut free = Fifo::new(n as usize);
        for i in 0..n {
            free.push(i);
        }
        Slots {
            state: vec![SlotState::Free; n as usize].into_boxed_slice(),
            result: vec![0; n as usize].into_boxed_slice(),
            free,
            done: Fifo::new(n as usize),
            in_flight: 0,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether there are no slots at all.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Slots the kernel holds.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Slots on the free list.
    pub fn free(&self) -> usize {
        self.free.len
    }

    /// The state of `slot` (`None`: no such slot).
    pub fn state(&self, slot: u32) -> Option<SlotState> {
        self.state.get(slot as usize).copied()
    }

    /// Takes a free slot for the driver: Free → Held.
    pub fn take_free(&mut self) -> Option<u32> {
        let slot = self.free.pop()?;
        self.state[slot as usize] = SlotState::Held;
        Some(slot)
    }

    /// Gives a held slot back to the free list: Held → Free.
    pub fn release(&mut self, slot: u32) -> Result<(), BadTransition> {
        self.expect(slot, SlotState::Held)?;
        self.state[slot as usize] = SlotState::Free;
        self.free.push(slot);
        Ok(())
    }

    /// Records that a held slot was handed to the kernel: Held → InFlight.
    pub fn submitted(&mut self, slot: u32) -> Result<(), BadTransition> {
        self.expect(slot, SlotState::Held)?;
        self.state[slot as usize] = SlotState::InFlight;
        self.in_flight += 1;
        Ok(())
    }

    /// Records the kernel's completion of `slot` with `result`: InFlight → Done, queued
    /// behind earlier completions.
    pub fn completed(&mut self, slot: u32, result: i32) -> Result<(), BadTransition> {
        self.expect(slot, SlotState::InFlight)?;
        self.state[slot as usize] = SlotState::Done;
        self.result[slot as usize] = result;
        self.in_flight -= 1;
        self.done.push(slot);
        Ok(())
    }

    /// The oldest completed slot and its result, left in the queue.
    pub fn peek_done(&self) -> Option<(u32, i32)> {
        let slot = self.done.peek()?;
        Some((slot, self.result[slot as usize]))
    }

    /// Takes the oldest completed slot for the driver: Done → Held.
    pub fn pop_done(&mut self) -> Option<(u32, i32)> {
        let slot = self.done.pop()?;
        self.state[slot as usize] = SlotState::Held;
        Some((slot, self.result[slot as usize]))
    }

    fn expect(&self, slot: u32, want: SlotState) -> Result<(), BadTransition> {
        match self.state(slot) {
            Some(s) if s == want => Ok(()),
            state => Err(BadTransition { slot, state }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slot_goes_round() {
        let mut s = Slots::new(2);
        let a = s.take_free().unwrap();
        assert_eq!(s.state(a), Some(SlotState::Held));
        s.submitted(a).unwrap();
        assert_eq!(s.in_flight(), 1);
        assert_eq!(s.peek_done(), None);
        s.completed(a, 60).unwrap();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.peek_done(), Some((a, 60)));
        assert_eq!(s.pop_done(), Some((a, 60)));
        s.release(a).unwrap();
        assert_eq!(s.free(), 2);
    }

    #[test]
    fn completions_are_delivered_in_completion_order() {
        let mut s = Slots::new(3);
        let ids: Vec<u32> = (0..3).map(|_| s.take_free().unwrap()).collect();
        for &i in &ids {
            s.submitted(i).unwrap();
        }
        s.completed(ids[2], 3).unwrap();
        s.completed(ids[0], 1).unwrap();
        assert_eq!(s.pop_done(), Some((ids[2], 3)));
        assert_eq!(s.pop_done(), Some((ids[0], 1)));
        assert_eq!(s.pop_done(), None);
        assert_eq!(s.take_free(), None, "all three are held or in flight");
    }

    #[test]
    fn bogus_transitions_are_refused() {
        let mut s = Slots::new(2);
        assert_eq!(
            s.completed(1, 0),
            Err(BadTransition {
                slot: 1,
                state: Some(SlotState::Free)
            }),
            "a completion for a slot never submitted"
        );
        assert_eq!(
            s.completed(9, 0),
            Err(BadTransition {
                slot: 9,
                state: None
            })
        );
        let a = s.take_free().unwrap();
        s.submitted(a).unwrap();
        assert!(s.submitted(a).is_err(), "submitted twice");
        assert!(s.release(a).is_err(), "freed while the kernel holds it");
        s.completed(a, 0).unwrap();
        assert!(s.completed(a, 0).is_err(), "completed twice");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Take,
        Submit(u32),
        Complete(u32, i32),
        Pop,
        Release(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::Take),
            (0u32..10).prop_map(Op::Submit),
            (0u32..10, any::<i32>()).prop_map(|(s, r)| Op::Complete(s, r)),
            Just(Op::Pop),
            (0u32..10).prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Whatever sequence of operations (including bogus ones), every slot is in
        /// exactly one place, the in-flight count matches the states, and no operation
        /// panics.
        #[test]
        fn ledger_stays_consistent(ops in proptest::collection::vec(op(), 0..200)) {
            let n = 8u32;
            let mut s = Slots::new(n);
            for op in ops {
                match op {
                    Op::Take => { s.take_free(); }
                    Op::Submit(i) => { let _ = s.submitted(i); }
                    Op::Complete(i, r) => { let _ = s.completed(i, r); }
                    Op::Pop => { s.pop_done(); }
                    Op::Release(i) => { let _ = s.release(i); }
                }
                let count = |st| (0..n).filter(|&i| s.state(i) == Some(st)).count();
                prop_assert_eq!(count(SlotState::InFlight), s.in_flight());
                prop_assert_eq!(count(SlotState::Free), s.free());
                prop_assert_eq!(count(SlotState::Done), s.done.len);
            }
        }
    }
}
