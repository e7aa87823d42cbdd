//! RFC 2544 throughput by binary search: the highest offered rate whose trial passes
//! (zero loss for the NDR, at most a given fraction for the PDR).
//!
//! A [`Search`] only decides which rate to try next; the caller runs the trial and
//! reports whether it passed. The first trial is at the maximum rate. After it, a *hint*
//! (typically the rate the device forwarded while overloaded) can be tried first, which
//! lands close to the answer; from then on the search bisects, but (after a hint) never
//! steps more than `gallop` (relative) away from the nearest known result, so a good hint
//! is refined in a few trials instead of bisecting the whole range again. Without a hint
//! it is a plain bisection.

/// Most trials stepped by `gallop` after a hint before the search bisects.
pub const MAX_GALLOPS: u32 = 3;

/// Bounds of one search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchConfig {
    /// Highest rate tried (frames per second): the first trial.
    pub max_pps: f64,
    /// Below this rate the search gives up: the result is the best pass so far (or 0).
    pub min_pps: f64,
    /// Stop when the gap between the best pass and the lowest failure is at most this
    /// fraction of the lowest failure.
    pub resolution: f64,
    /// Largest relative step away from the nearest result after a hint (e.g. 0.05).
    pub gallop: f64,
    /// Most trials in one search.
    pub max_trials: u32,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            max_pps: 2_000_000.0,
            min_pps: 1_000.0,
            resolution: 0.01,
            gallop: 0.05,
            max_trials: 20,
        }
    }
}

/// The state of one binary search.
///
/// Every outcome is kept, so a noisy device (a failure at or below a rate that passed)
/// never makes the search forget a pass: the bracket is always (highest pass, lowest
/// failure above it), and failures at or below the highest pass are counted as
/// inconsistencies for the report instead.
#[derive(Clone, Debug)]
pub struct Search {
    cfg: SearchConfig,
    /// Every outcome known, `(rate, passed)`: trials, and facts from elsewhere.
    known: Vec<(f64, bool)>,
    hint: Option<f64>,
    /// A hint was tried: refine around it rather than bisect the whole range.
    hinted: bool,
    /// Steps taken at most `gallop` away from a result; after [`MAX_GALLOPS`] the search
    /// bisects (a hint far from the answer must not cost many trials).
    gallops: u32,
    trials: u32,
}

impl Search {
    /// A search over `(0, cfg.max_pps]`.
    pub fn new(cfg: SearchConfig) -> Self {
        Search {
            cfg,
            known: Vec::new(),
            hint: None,
            hinted: false,
            gallops: 0,
            trials: 0,
        }
    }

    /// A search that already knows `rate` passes (e.g. the PDR search after the NDR: a
    /// zero-loss rate also has at most 0.5% loss).
    pub fn with_known_pass(cfg: SearchConfig, rate: f64) -> Self {
        let mut s = Search::new(cfg);
        let rate = rate.clamp(0.0, cfg.max_pps);
        if rate > 0.0 {
            s.known.push((rate, true));
            // The answer is usually just above: refine from there, as after a hint.
            s.hinted = true;
        }
        s
    }

    /// A search that already knows `rate` fails (e.g. the maximum, tried by another search).
    pub fn known_fail(&mut self, rate: f64) {
        self.known.push((rate, false));
    }

    /// A search that already knows `rate` passes, without counting a trial.
    pub fn known_pass(&mut self, rate: f64) {
        self.known.push((rate, true));
    }

    /// Rate to try after the current bracket is known, before bisecting.
    pub fn set_hint(&mut self, rate: f64) {
        if rate.is_finite() && rate > 0.0 {
            self.hint = Some(rate);
        }
    }

    /// Highest rate that passed (0: none yet).
    fn lo(&self) -> f64 {
        self.known
            .iter()
            .filter(|k| k.1)
            .map(|k| k.0)
            .fold(0.0, f64::max)
    }

    /// Lowest rate above [`Search::lo`] that failed (`None`: nothing above it failed).
    fn hi(&self) -> Option<f64> {
        let lo = self.lo();
        self.known
            .iter()
            .filter(|k| !k.1 && k.0 > lo)
            .map(|k| k.0)
            .reduce(f64::min)
    }

    /// The rate to try next, or `None` when the search is done.
    pub fn next_rate(&mut self) -> Option<f64> {
        if self.trials >= self.cfg.max_trials {
            return None;
        }
        let lo = self.lo();
        let Some(hi) = self.hi() else {
            // Nothing failed above the best pass: try the maximum (done if it passed).
            return (lo < self.cfg.max_pps).then_some(self.cfg.max_pps);
        };
        if hi <= self.cfg.min_pps || hi - lo <= self.cfg.resolution * hi {
            return None;
        }
        if let Some(h) = self.hint.take() {
            // Only a hint inside the open bracket is worth a trial.
            let margin = self.cfg.resolution * hi / 2.0;
            if h > lo + margin && h < hi - margin {
                self.hinted = true;
                return Some(h);
            }
        }
        let mid = (lo + hi) / 2.0;
        let x = if !self.hinted || self.gallops >= MAX_GALLOPS {
            mid
        } else if lo > 0.0 {
            self.gallops += 1;
            mid.min(lo * (1.0 + self.cfg.gallop))
        } else {
            self.gallops += 1;
            mid.max(hi * (1.0 - self.cfg.gallop))
        };
        Some(x.max(self.cfg.min_pps.min(hi)))
    }

    /// Records the outcome of a trial at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.trials += 1;
        self.known.push((rate, passed));
    }

    /// The highest passing rate found (0 when none passed). A later failure at a lower
    /// rate does not take it back: see [`Search::inconsistencies`].
    pub fn result(&self) -> f64 {
        self.lo()
    }

    /// Failures at or below the highest pass: the device (or the machine) is noisy there.
    pub fn inconsistencies(&self) -> usize {
        let lo = self.lo();
        self.known.iter().filter(|k| !k.1 && k.0 <= lo).count()
    }

    /// Trials recorded.
    pub fn trials(&self) -> u32 {
        self.trials
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(cfg: SearchConfig, threshold: f64, hint: Option<f64>) -> (f64, u32) {
        let mut s = Search::new(cfg);
        let mut first = true;
        while let Some(r) = s.next_rate() {
            s.record(r, r <= threshold);
            if first {
                if let Some(h) = hint {
                    s.set_hint(h);
                }
                first = false;
            }
        }
        (s.result(), s.trials())
    }

    #[test]
    fn first_trial_is_the_maximum_and_a_pass_there_ends_the_search() {
        let cfg = SearchConfig::default();
        let mut s = Search::new(cfg);
        assert_eq!(s.next_rate(), Some(cfg.max_pps));
        s.record(cfg.max_pps, true);
        assert_eq!(s.next_rate(), None);
        assert_eq!(s.result(), cfg.max_pps);
    }

    /// The smoke run's fault: a trial passes, a later one at a lower rate fails (noise),
    /// and the search forgot the pass and reported 0.
    #[test]
    fn a_failure_below_a_pass_keeps_the_pass() {
        let cfg = SearchConfig {
            max_trials: 4,
            ..SearchConfig::default()
        };
        let mut s = Search::new(cfg);
        s.record(2_000_000.0, false);
        s.record(500_000.0, true);
        s.record(480_000.0, false);
        assert_eq!(s.result(), 500_000.0);
    }

    #[test]
    fn nothing_passes_gives_zero() {
        let (r, n) = run(SearchConfig::default(), 0.0, None);
        assert_eq!(r, 0.0);
        assert!(n <= SearchConfig::default().max_trials);
    }

    #[test]
    fn a_good_hint_needs_few_trials() {
        let cfg = SearchConfig::default();
        let (r, n) = run(cfg, 1_000_000.0, Some(990_000.0));
        assert!((990_000.0..=1_000_000.0).contains(&r), "{r}");
        assert!(n <= 7, "{n} trials");
        let (_, without) = run(cfg, 1_000_000.0, None);
        assert!(without > n, "{without} vs {n}");
    }

    #[test]
    fn known_pass_starts_the_pdr_search_above_the_ndr() {
        let cfg = SearchConfig::default();
        let mut s = Search::with_known_pass(cfg, 500_000.0);
        s.known_fail(cfg.max_pps);
        let first = s.next_rate().unwrap();
        assert!(first > 500_000.0 && first <= 525_001.0, "{first}");
    }

    proptest! {
        #[test]
        fn converges_to_the_threshold_within_the_resolution(
            threshold in 2_000.0f64..2_000_000.0,
            hint in proptest::option::of(1_000.0f64..2_500_000.0),
        ) {
            let cfg = SearchConfig { max_trials: 64, ..SearchConfig::default() };
            let (r, _) = run(cfg, threshold, hint);
            prop_assert!(r <= threshold, "result {} above threshold {}", r, threshold);
            // The lowest failure is above the threshold, and within resolution of r.
            prop_assert!(r >= threshold * (1.0 - 2.0 * cfg.resolution) - 1.0,
                "result {} too far below {}", r, threshold);
        }

        /// A noisy device: above the threshold every trial fails, below it a trial fails
        /// now and then. Whatever the order of outcomes, a rate that passed is never
        /// forgotten, and the result is always a rate that passed.
        #[test]
        fn a_noisy_device_never_loses_a_pass(
            threshold in 2_000.0f64..2_000_000.0,
            noise in any::<u64>(),
            hint in proptest::option::of(1_000.0f64..2_500_000.0),
        ) {
            let cfg = SearchConfig { max_trials: 12, ..SearchConfig::default() };
            let mut s = Search::new(cfg);
            let mut bits = noise;
            let mut passed: Vec<f64> = Vec::new();
            let mut first = true;
            while let Some(r) = s.next_rate() {
                let unlucky = bits & 3 == 0;
                bits = bits.rotate_right(2);
                let pass = r <= threshold && !unlucky;
                s.record(r, pass);
                if pass {
                    passed.push(r);
                }
                if first {
                    if let Some(h) = hint {
                        s.set_hint(h);
                    }
                    first = false;
                }
            }
            let best = passed.iter().copied().fold(0.0, f64::max);
            prop_assert_eq!(s.result(), best);
            prop_assert!(s.result() <= threshold);
        }

        #[test]
        fn always_terminates(threshold in 0.0f64..3_000_000.0, noise in any::<u64>()) {
            let cfg = SearchConfig::default();
            let mut s = Search::new(cfg);
            let mut bits = noise;
            let mut n = 0;
            while let Some(r) = s.next_rate() {
                // Noisy device: passes flip at random near the threshold.
                let flip = bits & 1 == 1 && (r - threshold).abs() < threshold * 0.05;
                bits = bits.rotate_right(1);
                s.record(r, (r <= threshold) ^ flip);
                n += 1;
                prop_assert!(n <= cfg.max_trials);
            }
        }
    }
}
