//! The measured load of each receive queue: samples of the workers' per-queue counters
//! ([`pollux_dataplane::counters::QueueLoad`]) taken on the control thread's timer, and
//! the rate over the last few seconds, for `workers.list` and for rebalancing.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollux_dataplane::counters::QueueLoad;
use pollux_dataplane::port::PortId;

/// Samples kept per queue: the rate is over the span they cover (5 s at the daemon's
/// 500 ms timer), long enough to smooth bursts, short enough to follow a change.
pub(super) const WINDOW: usize = 11;

/// Samples closer than this are not taken: `workers.list` samples too, and a client
/// calling it in a loop would otherwise shrink the window to a fraction of a second.
pub(super) const MIN_SPACING: Duration = Duration::from_millis(200);

/// A queue's rate over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QueueRate {
    /// Time-stamp-counter cycles per second spent on its bursts.
    pub cycles_per_sec: f64,
    /// Frames per second.
    pub packets_per_sec: f64,
}

#[derive(Debug)]
struct History {
    worker: u16,
    /// The record sampled: a queue that moved has a new one on its new worker.
    record: Arc<QueueLoad>,
    samples: VecDeque<(Instant, u64, u64)>,
    /// The rate measured on the worker before the last move, used until the new one has
    /// a rate of its own.
    carried: Option<QueueRate>,
}

impl History {
    fn rate(&self) -> Option<QueueRate> {
        let (&(t0, c0, p0), &(t1, c1, p1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.duration_since(t0);
        if span < Duration::from_millis(50) {
            return self.carried;
        }
        let secs = span.as_secs_f64();
        Some(QueueRate {
            cycles_per_sec: c1.wrapping_sub(c0) as f64 / secs,
            packets_per_sec: p1.wrapping_sub(p0) as f64 / secs,
        })
    }
}

/// The queues' load histories, by (port, queue index in the port).
#[derive(Debug, Default)]
pub(super) struct LoadWatch {
    queues: BTreeMap<(PortId, u16), History>,
    last: Option<Instant>,
}

impl LoadWatch {
    /// Takes a sample at `now` of every queue in `seen`: (port, queue index, worker, its
    /// record). Queues no longer seen are forgotten.
    pub(super) fn observe(&mut self, seen: Vec<(PortId, u16, u16, Arc<QueueLoad>)>, now: Instant) {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < MIN_SPACING)
        {
            return;
        }
        self.last = Some(now);
        let mut next = BTreeMap::new();
        for (port, queue, worker, record) in seen {
            let sample = (now, record.cycles.get(), record.packets.get());
            let mut h = match self.queues.remove(&(port, queue)) {
                Some(h) if Arc::ptr_eq(&h.record, &record) => h,
                Some(old) => History {
                    worker,
                    carried: old.rate().or(old.carried),
                    record,
                    samples: VecDeque::new(),
                },
                None => History {
                    worker,
                    record,
                    samples: VecDeque::new(),
                    carried: None,
                },
            };
            h.worker = worker;
            if h.samples.len() == WINDOW {
                h.samples.pop_front();
            }
            h.samples.push_back(sample);
            next.insert((port, queue), h);
        }
        self.queues = next;
    }

    /// The rate of queue `queue` of `port` over the window, if it has been sampled over
    /// some time (or measured before it last moved).
    pub(super) fn rate(&self, port: PortId, queue: u16) -> Option<QueueRate> {
        self.queues.get(&(port, queue)).and_then(History::rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_over_the_window_and_carried_across_a_move() {
        let t0 = Instant::now();
        let rec = Arc::new(QueueLoad::new(PortId(1), 0));
        let mut w = LoadWatch::default();
        w.observe(vec![(PortId(1), 0, 0, Arc::clone(&rec))], t0);
        assert_eq!(w.rate(PortId(1), 0), None, "one sample: no rate");
        rec.cycles.add(1_000_000);
        rec.packets.add(1000);
        w.observe(
            vec![(PortId(1), 0, 0, Arc::clone(&rec))],
            t0 + Duration::from_secs(1),
        );
        let r = w.rate(PortId(1), 0).expect("a rate");
        assert!((r.cycles_per_sec - 1e6).abs() < 1.0 && (r.packets_per_sec - 1e3).abs() < 1e-3);
        // Moved: a new record on worker 1; the old rate stands until the new one has one.
        let moved = Arc::new(QueueLoad::new(PortId(1), 0));
        w.observe(
            vec![(PortId(1), 0, 1, Arc::clone(&moved))],
            t0 + Duration::from_secs(2),
        );
        assert_eq!(w.rate(PortId(1), 0), Some(r));
        // Too soon after the last sample: not taken.
        w.observe(Vec::new(), t0 + Duration::from_millis(2100));
        assert_eq!(w.rate(PortId(1), 0), Some(r));
        w.observe(Vec::new(), t0 + Duration::from_secs(3));
        assert_eq!(w.rate(PortId(1), 0), None, "gone");
    }
}
