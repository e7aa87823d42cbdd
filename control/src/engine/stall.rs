//! Stalled workers: a worker whose poll loop stops turning (a livelock, a wedged driver
//! call, a thread stopped by a debugger or starved by the scheduler) is found from its
//! loop counter on the control thread's timer and reported (the log, `workers.list`, the
//! error of an apply that waited for it) instead of only making applies time out.

use std::time::{Duration, Instant};

use super::Engine;

/// How long a loop counter may stand still before its worker is called stalled. A poll
/// loop turns every few microseconds, idle or not; a second is far beyond any burst, and
/// beyond scheduler hiccups on a loaded machine.
pub(super) const STALL_AFTER: Duration = Duration::from_secs(1);

/// The last loop count seen per worker, since when it has stood still, and whether that
/// was reported.
#[derive(Debug, Default)]
pub(super) struct StallWatch {
    workers: Vec<Option<Seen>>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    loops: u64,
    since: Instant,
    reported: bool,
}

/// A change worth a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StallEvent {
    /// Worker `0` has not turned its loop for `1`.
    Stalled(usize, Duration),
    /// Worker `0` turns again, after standing still for `1`.
    Resumed(usize, Duration),
}

impl StallWatch {
    /// Takes worker `w`'s loop count `loops` at `now`.
    pub(super) fn observe(&mut self, w: usize, loops: u64, now: Instant) -> Option<StallEvent> {
        if self.workers.len() <= w {
            self.workers.resize(w + 1, None);
        }
        let Some(seen) = &mut self.workers[w] else {
            self.workers[w] = Some(Seen {
                loops,
                since: now,
                reported: false,
            });
            return None;
        };
        if seen.loops != loops {
            let was = seen.reported.then(|| now.duration_since(seen.since));
            *seen = Seen {
                loops,
                since: now,
                reported: false,
            };
            return was.map(|d| StallEvent::Resumed(w, d));
        }
        let still = now.duration_since(seen.since);
        if still >= STALL_AFTER && !seen.reported {
            seen.reported = true;
            return Some(StallEvent::Stalled(w, still));
        }
        None
    }

    /// How long worker `w` has stood still, once that is long enough to call it stalled.
    pub(super) fn stalled_for(&self, w: usize, now: Instant) -> Option<Duration> {
        let seen = self.workers.get(w)?.as_ref()?;
        let still = now.duration_since(seen.since);
        (still >= STALL_AFTER).then_some(still)
    }
}

impl Engine {
    /// Reads every running worker's loop counter and logs a worker that stalls or
    /// resumes. Called on the control thread's timer, between requests (so never while
    /// an apply has paused the workers).
    pub fn supervise_workers(&mut self) {
        let now = Instant::now();
        for (w, link) in self.workers.iter().enumerate() {
            if link.thread.is_none() {
                continue;
            }
            let core = link.core.map_or("-".into(), |c| c.to_string());
            match self.stall.observe(w, link.counters.loops.get(), now) {
                Some(StallEvent::Stalled(_, still)) => pollux_services::warn!(
                    "worker {w} on CPU {core} has not polled for {} ms: stalled; applies \
                     will time out until it runs again",
                    still.as_millis()
                ),
                Some(StallEvent::Resumed(_, still)) => pollux_services::info!(
                    "worker {w} on CPU {core} polls again after {} ms",
                    still.as_millis()
                ),
                None => {}
            }
        }
        self.sample_loads();
        self.auto_rebalance();
    }

    /// How long worker `w` has been stalled, as of the last [`Engine::supervise_workers`]
    /// (`None`: it polls).
    pub fn worker_stalled_for(&self, w: usize) -> Option<Duration> {
        self.stall.stalled_for(w, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_standing_still_is_reported_once_and_its_resumption_once() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut watch = StallWatch::default();
        assert_eq!(watch.observe(1, 10, at(0)), None);
        assert_eq!(watch.observe(1, 10, at(500)), None);
        assert_eq!(watch.stalled_for(1, at(500)), None);
        assert_eq!(
            watch.observe(1, 10, at(1000)),
            Some(StallEvent::Stalled(1, Duration::from_millis(1000)))
        );
        assert_eq!(watch.observe(1, 10, at(1500)), None, "reported once");
        assert_eq!(
            watch.stalled_for(1, at(1500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(watch.stalled_for(0, at(1500)), None, "worker 0 never seen");
        assert_eq!(
            watch.observe(1, 11, at(2000)),
            Some(StallEvent::Resumed(1, Duration::from_millis(2000)))
        );
        assert_eq!(watch.stalled_for(1, at(2500)), None);
        assert_eq!(
            watch.observe(1, 12, at(2500)),
            None,
            "moving: nothing to say"
        );
    }
}
