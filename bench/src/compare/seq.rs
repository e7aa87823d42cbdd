//! What the sink checks: every frame of a trial carries the trial's tag, a sequence number
//! and the time it was sent. [`SeqTracker`] counts unique frames, duplicates, frames that
//! arrived after a higher sequence number (reordered) and frames with sequence numbers
//! the generator never sent; loss is what was sent and never arrived.

/// Per-trial accounting of sequence numbers.
#[derive(Clone, Debug)]
pub struct SeqTracker {
    seen: Vec<u64>,
    capacity: u64,
    /// Frames of this trial received, duplicates included.
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Frames whose sequence number had already arrived.
    pub duplicates: u64,
    /// Frames that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// Frames with a sequence number beyond the trial's.
    pub out_of_range: u64,
    max_seen: Option<u64>,
}

impl SeqTracker {
    /// A tracker for sequence numbers `0..capacity`.
    pub fn new(capacity: u64) -> Self {
        SeqTracker {
            seen: vec![0; capacity.div_ceil(64) as usize],
            capacity,
            received: 0,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            out_of_range: 0,
            max_seen: None,
        }
    }

    /// Records one received frame.
    #[inline]
    pub fn record(&mut self, seq: u64) {
        self.received += 1;
        if seq >= self.capacity {
            self.out_of_range += 1;
            return;
        }
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.seen[w] & (1 << b) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[w] |= 1 << b;
        self.unique += 1;
        match self.max_seen {
            Some(m) if seq < m => self.reordered += 1,
            _ => self.max_seen = Some(seq),
        }
    }

    /// Frames sent and never received.
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique)
    }

    /// Whether `seq` arrived.
    pub fn has(&self, seq: u64) -> bool {
        seq < self.capacity && self.seen[(seq / 64) as usize] & (1 << (seq % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_loss_duplicates_and_reordering() {
        let mut t = SeqTracker::new(10);
        for s in [0, 1, 3, 2, 3, 5, 12] {
            t.record(s);
        }
        assert_eq!(t.received, 7);
        assert_eq!(t.unique, 5);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.reordered, 1); // 2 after 3
        assert_eq!(t.out_of_range, 1);
        assert_eq!(t.lost(6), 1); // 4 never came
        assert!(t.has(5) && !t.has(4) && !t.has(100));
    }

    proptest! {
        /// Any arrival pattern: unique + duplicates + out_of_range = received, unique is
        /// the number of distinct in-range values, and loss is sent minus unique.
        #[test]
        fn invariants(arrivals in proptest::collection::vec(0u64..300, 0..1000)) {
            let mut t = SeqTracker::new(256);
            for &s in &arrivals {
                t.record(s);
            }
            let distinct: std::collections::BTreeSet<u64> =
                arrivals.iter().copied().filter(|&s| s < 256).collect();
            prop_assert_eq!(t.received, arrivals.len() as u64);
            prop_assert_eq!(t.unique + t.duplicates + t.out_of_range, t.received);
            prop_assert_eq!(t.unique, distinct.len() as u64);
            prop_assert_eq!(t.lost(256), 256 - distinct.len() as u64);
            prop_assert!(t.reordered <= t.unique);
        }

        /// In-order delivery of a subset is never counted as reordered.
        #[test]
        fn in_order_is_not_reordered(mut seqs in proptest::collection::vec(0u64..1000, 0..500)) {
            seqs.sort_unstable();
            seqs.dedup();
            let mut t = SeqTracker::new(1000);
            for &s in &seqs {
                t.record(s);
            }
            prop_assert_eq!(t.reordered, 0);
            prop_assert_eq!(t.duplicates, 0);
        }
    }
}
