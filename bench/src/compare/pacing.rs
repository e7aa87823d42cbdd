//! Pacing at a requested rate without sleeping per packet: the generator spins, and on
//! each pass asks how many frames are due by now.
//!
//! Frames due by time `t` after the start are `floor(rate * t)`. A generator that falls
//! behind (the link pushed back, or it was descheduled) may catch up by at most
//! `max_burst` frames at once; the rest of its debt is written off as *not offered* and
//! counted, so a trial knows whether it really offered the rate it asked for.

/// A pacing schedule for one trial.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate_pps: f64,
    start_ns: u64,
    /// Frames handed out (sent or written off).
    issued: u64,
    /// Frames written off.
    skipped: u64,
    max_burst: u64,
    /// Frames in the whole trial: nothing is due after them.
    total: u64,
}

impl Pacer {
    /// A schedule of `rate_pps` from `start_ns` for `total` frames, catching up at most
    /// `max_burst` frames at once.
    pub fn new(rate_pps: f64, start_ns: u64, total: u64, max_burst: u64) -> Self {
        Pacer {
            rate_pps,
            start_ns,
            issued: 0,
            skipped: 0,
            max_burst: max_burst.max(1),
            total,
        }
    }

    /// Frames in a trial of `secs` at `rate_pps` (at least 1).
    pub fn frames_for(rate_pps: f64, secs: f64) -> u64 {
        ((rate_pps * secs).round() as u64).max(1)
    }

    /// Frames that should have been issued by `now_ns` in all.
    pub fn target(&self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        ((self.rate_pps * elapsed) as u64).min(self.total)
    }

    /// How many frames to send now. Debt beyond `max_burst` is written off.
    pub fn due(&mut self, now_ns: u64) -> u64 {
        let owed = self.target(now_ns).saturating_sub(self.issued);
        if owed > self.max_burst {
            let skip = owed - self.max_burst;
            self.skipped += skip;
            self.issued += skip;
            self.max_burst
        } else {
            owed
        }
    }

    /// Records that `n` frames were sent.
    pub fn sent(&mut self, n: u64) {
        self.issued += n;
    }

    /// Frames sent (issued and not written off).
    pub fn frames_sent(&self) -> u64 {
        self.issued - self.skipped
    }

    /// Frames written off: the rate was not offered in full.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// True once every frame of the trial has been issued.
    pub fn done(&self) -> bool {
        self.issued >= self.total
    }

    /// Nanoseconds after the start at which the whole trial has been due.
    pub fn end_ns(&self) -> u64 {
        self.start_ns + (self.total as f64 / self.rate_pps * 1e9).ceil() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_become_due_at_the_rate() {
        let mut p = Pacer::new(1_000_000.0, 1_000, 10_000, 64);
        assert_eq!(p.due(1_000), 0);
        // 10 us at 1 Mpps: 10 frames.
        assert_eq!(p.due(11_000), 10);
        p.sent(10);
        assert_eq!(p.due(11_000), 0);
        // 64 us more: 64 frames, within the burst.
        assert_eq!(p.due(75_000), 64);
        p.sent(64);
        assert_eq!(p.frames_sent(), 74);
        assert_eq!(p.skipped(), 0);
    }

    #[test]
    fn debt_beyond_the_burst_is_written_off() {
        let mut p = Pacer::new(1_000_000.0, 0, 1_000_000, 64);
        // 1 ms late: 1000 owed, 64 allowed, 936 written off.
        assert_eq!(p.due(1_000_000), 64);
        assert_eq!(p.skipped(), 936);
        p.sent(64);
        assert_eq!(p.frames_sent(), 64);
        assert_eq!(p.due(1_000_000), 0);
    }

    #[test]
    fn nothing_is_due_after_the_total() {
        let mut p = Pacer::new(1_000_000.0, 0, 100, 1000);
        assert_eq!(p.due(10_000_000), 100);
        p.sent(100);
        assert!(p.done());
        assert_eq!(p.due(20_000_000), 0);
        assert_eq!(p.end_ns(), 100_000);
        assert_eq!(Pacer::frames_for(1e6, 2.5), 2_500_000);
    }

    proptest! {
        /// Sent + written off never exceeds what was due, and a generator that always
        /// sends everything due ends with every frame sent and none written off.
        #[test]
        fn accounting_adds_up(rate in 1_000.0f64..5e6, steps in proptest::collection::vec(1u64..200_000, 1..200)) {
            let total = 1_000_000;
            let mut p = Pacer::new(rate, 0, total, 1 << 40);
            let mut now = 0;
            for s in steps {
                now += s;
                let d = p.due(now);
                p.sent(d);
                prop_assert_eq!(p.frames_sent() + p.skipped(), p.target(now));
            }
            prop_assert_eq!(p.skipped(), 0);
            let d = p.due(u64::MAX / 2);
            p.sent(d);
            prop_assert_eq!(p.frames_sent(), total);
        }
    }
}
