//! Which worker each receive queue should be on, from the queues' measured load: the
//! assignment of OVS's `pmd-auto-lb` (its "cycles" algorithm). Pure: the engine measures
//! the loads ([`super::load`]) and moves the queues ([`super::moves`]).
//!
//! Queues that stay where they are (pinned by hand, or of a driver whose queues cannot
//! move) count as load on their worker first; the others are taken from the busiest down
//! and each given to the worker with the least load so far, preferring the one it is on
//! when loads tie (no move for nothing; a queue without load stays). The plan is worth applying when it lowers the
//! variance of the workers' loads by at least the configured share (25% by default, as
//! OVS's `pmd-auto-lb-improvement-threshold`); a plan no better than the present
//! assignment is never proposed (greedy placement is not optimal: it could be worse).

/// One receive queue as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueIn {
    /// The worker that polls it now.
    pub worker: u16,
    /// Its load (any unit the same for every queue: cycles per second here).
    pub load: f64,
    /// Whether it must stay on `worker` (pinned, or its driver cannot move it).
    pub fixed: bool,
}

/// What the planner proposes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The worker of each queue, by the index of the input.
    pub assignment: Vec<u16>,
    /// Each worker's load now.
    pub before: Vec<f64>,
    /// Each worker's load with `assignment`.
    pub after: Vec<f64>,
    /// The variance of `before`.
    pub variance_before: f64,
    /// The variance of `after`.
    pub variance_after: f64,
}

impl Plan {
    /// By how much the plan lowers the variance, as a share of the present one (0 when
    /// the load is already even or the plan changes nothing).
    pub fn improvement(&self) -> f64 {
        if self.variance_before <= 0.0 {
            0.0
        } else {
            ((self.variance_before - self.variance_after) / self.variance_before).max(0.0)
        }
    }

    /// The indexes of the queues the plan moves.
    pub fn moved<'a>(&'a self, queues: &'a [QueueIn]) -> impl Iterator<Item = usize> + 'a {
        queues
            .iter()
            .zip(&self.assignment)
            .enumerate()
            .filter(|(_, (q, &w))| q.worker != w)
            .map(|(i, _)| i)
    }
}

/// The population variance of `loads`.
pub fn variance(loads: &[f64]) -> f64 {
    if loads.is_empty() {
        return 0.0;
    }
    let n = loads.len() as f64;
    let mean = loads.iter().sum::<f64>() / n;
    loads.iter().map(|l| (l - mean) * (l - mean)).sum::<f64>() / n
}

fn loads_of(workers: usize, queues: &[QueueIn], assignment: &[u16]) -> Vec<f64> {
    let mut loads = vec![0.0; workers];
    for (q, &w) in queues.iter().zip(assignment) {
        if let Some(l) = loads.get_mut(usize::from(w)) {
            *l += q.load.max(0.0);
        }
    }
    loads
}

/// Plans the queues over `workers` workers (at least one). See the module documentation.
/// Every queue is assigned exactly once, fixed ones to their worker; the plan's variance
/// is never above the present one (when greedy placement would be, the plan is the
/// present assignment).
pub fn plan(workers: usize, queues: &[QueueIn]) -> Plan {
    let workers = workers.max(1);
    let present: Vec<u16> = queues.iter().map(|q| q.worker).collect();
    let before = loads_of(workers, queues, &present);
    let mut assignment = present.clone();
    let mut loads = vec![0.0; workers];
    for q in queues.iter().filter(|q| q.fixed) {
        if let Some(l) = loads.get_mut(usize::from(q.worker)) {
            *l += q.load.max(0.0);
        }
    }
    let mut order: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].fixed).collect();
    // Busiest first; ties in input order, so that a plan is repeatable.
    order.sort_by(|&a, &b| {
        queues[b]
            .load
            .partial_cmp(&queues[a].load)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    for i in order {
        let q = &queues[i];
        let current = usize::from(q.worker).min(workers - 1);
        let mut best = current;
        // A queue without load changes no worker's load wherever it is: it stays.
        if q.load > 0.0 {
            for w in 0..workers {
                if loads[w] < loads[best] {
                    best = w;
                }
            }
        }
        assignment[i] = best as u16;
        loads[best] += q.load.max(0.0);
    }
    let mut after = loads_of(workers, queues, &assignment);
    let (variance_before, mut variance_after) = (variance(&before), variance(&after));
    if variance_after >= variance_before {
        assignment = present;
        after = before.clone();
        variance_after = variance_before;
    }
    Plan {
        assignment,
        before,
        after,
        variance_before,
        variance_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(worker: u16, load: f64) -> QueueIn {
        QueueIn {
            worker,
            load,
            fixed: false,
        }
    }

    #[test]
    fn the_busiest_queues_are_spread_and_the_improvement_measured() {
        // Three busy queues and an idle one, all on worker 0 of two.
        let queues = [q(0, 90.0), q(0, 60.0), q(0, 30.0), q(1, 0.0)];
        let p = plan(2, &queues);
        assert_eq!(p.before, vec![180.0, 0.0]);
        assert_eq!(p.after, vec![90.0, 90.0]);
        assert_eq!(p.assignment, vec![0, 1, 1, 1]);
        assert_eq!(p.moved(&queues).collect::<Vec<_>>(), vec![1, 2]);
        assert!((p.improvement() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn pinned_queues_stay_and_count_on_their_worker() {
        let mut queues = vec![q(0, 50.0), q(0, 50.0), q(0, 40.0)];
        queues[0].fixed = true;
        queues[1].fixed = true;
        let p = plan(2, &queues);
        assert_eq!(p.assignment, vec![0, 0, 1]);
    }

    #[test]
    fn an_even_load_moves_nothing() {
        let queues = [q(0, 10.0), q(1, 10.0)];
        let p = plan(2, &queues);
        assert_eq!(p.assignment, vec![0, 1]);
        assert_eq!(p.improvement(), 0.0);
        assert_eq!(p.moved(&queues).count(), 0);
    }

    proptest! {
        #[test]
        fn every_queue_once_pinned_kept_never_worse(
            workers in 1usize..6,
            raw in proptest::collection::vec((0u16..6, 0u32..1000, any::<bool>()), 0..40),
        ) {
            let queues: Vec<QueueIn> = raw
                .iter()
                .map(|&(w, l, fixed)| QueueIn {
                    worker: w % workers as u16,
                    load: f64::from(l),
                    fixed,
                })
                .collect();
            let p = plan(workers, &queues);
            // Exactly one worker per queue, a real one.
            prop_assert_eq!(p.assignment.len(), queues.len());
            prop_assert!(p.assignment.iter().all(|&w| usize::from(w) < workers));
            for (q, &w) in queues.iter().zip(&p.assignment) {
                if q.fixed {
                    prop_assert_eq!(w, q.worker);
                }
            }
            // The load is conserved and the plan never worse than now.
            let total: f64 = queues.iter().map(|q| q.load).sum();
            prop_assert!((p.after.iter().sum::<f64>() - total).abs() < 1e-6);
            prop_assert!((p.before.iter().sum::<f64>() - total).abs() < 1e-6);
            prop_assert!(p.variance_after <= p.variance_before + 1e-9);
            prop_assert!((p.variance_after - variance(&p.after)).abs() < 1e-6);
            prop_assert!(p.improvement() >= 0.0 && p.improvement() <= 1.0);
        }
    }
}
