//! Swapping snapshots under running workers without stopping or slowing them.
//!
//! The control thread publishes generation N+1 into a [`SnapshotCell`]; each worker checks
//! the cell's generation once per pass over its poll list (one relaxed load when nothing
//! changed), takes the new snapshot if there is one, and after every pass records the
//! generation it runs in its [`GenerationAck`]. The [`Publisher`] keeps every replaced
//! snapshot until all workers have acknowledged a newer generation, then drops it on the
//! control thread. A worker therefore never holds the last reference and never frees a
//! snapshot: freeing, with its unbounded cost, stays off the data path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::snapshot::Snapshot;

/// The active snapshot, shared by the control thread and every worker.
#[derive(Debug)]
pub struct SnapshotCell {
    generation: AtomicU64,
    current: ArcSwap<Snapshot>,
}

impl SnapshotCell {
    /// Generation of the active snapshot.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A reference to the active snapshot.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }
}

/// The generation a worker runs, written by that worker after every pass over its poll
/// list. Cache-line aligned so acknowledgements of different workers never share a line.
#[derive(Debug)]
#[repr(align(128))]
pub struct GenerationAck(AtomicU64);

impl GenerationAck {
    /// Value of a worker that holds no snapshot (stopped): it blocks no reclamation.
    pub const PARKED: u64 = u64::MAX;

    /// Records that the worker now runs `generation` and holds no older snapshot.
    #[inline]
    pub fn set(&self, generation: u64) {
        self.0.store(generation, Ordering::Release);
    }

    /// The acknowledged generation.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Why a snapshot was not published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleGeneration {
    /// The generation offered.
    pub offered: u64,
    /// The generation already active.
    pub active: u64,
}

impl std::fmt::Display for StaleGeneration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {} is not newer than the active {}",
            self.offered, self.active
        )
    }
}

impl std::error::Error for StaleGeneration {}

/// The control thread's side: publishes snapshots and reclaims replaced ones.
#[derive(Debug)]
pub struct Publisher {
    cell: Arc<SnapshotCell>,
    acks: Vec<Arc<GenerationAck>>,
    retired: VecDeque<Arc<Snapshot>>,
}

impl Publisher {
    /// Starts with `initial` active.
    pub fn new(initial: Snapshot) -> Self {
        Publisher {
            cell: Arc::new(SnapshotCell {
                generation: AtomicU64::new(initial.generation()),
                current: ArcSwap::from_pointee(initial),
            }),
            acks: Vec::new(),
            retired: VecDeque::new(),
        }
    }

    /// The cell workers read from.
    pub fn cell(&self) -> Arc<SnapshotCell> {
        Arc::clone(&self.cell)
    }

    /// Registers a worker; its acknowledgement starts at the active generation, which is
    /// the oldest snapshot it can ever load.
    pub fn register_worker(&mut self) -> Arc<GenerationAck> {
        let ack = Arc::new(GenerationAck(AtomicU64::new(self.cell.generation())));
        self.acks.push(Arc::clone(&ack));
        ack
    }

    /// Generation of the active snapshot.
    pub fn generation(&self) -> u64 {
        self.cell.generation()
    }

    /// The active snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.cell.load()
    }

    /// Makes `snapshot` active. Its generation must be newer than the active one.
    pub fn publish(&mut self, snapshot: Snapshot) -> Result<u64, StaleGeneration> {
        let generation = snapshot.generation();
        let active = self.cell.generation();
        if generation <= active {
            return Err(StaleGeneration {
                offered: generation,
                active,
            });
        }
        // Store the snapshot before its generation: a worker that sees the new number
        // must find the new snapshot (or a newer one) in the cell.
        let old = self.cell.current.swap(Arc::new(snapshot));
        self.cell.generation.store(generation, Ordering::Release);
        self.retired.push_back(old);
        self.reclaim();
        Ok(generation)
    }

    /// Frees every replaced snapshot that no worker can still be using; returns how many
    /// it freed. Called on publish and from the control thread's timer.
    pub fn reclaim(&mut self) -> usize {
        let oldest_in_use = self
            .acks
            .iter()
            .map(|a| a.get())
            .min()
            .unwrap_or(GenerationAck::PARKED);
        let before = self.retired.len();
        // Retired snapshots are in generation order, so the reclaimable ones are a prefix.
        while self
            .retired
            .front()
            .is_some_and(|s| s.generation() < oldest_in_use)
        {
            drop(self.retired.pop_front());
        }
        before - self.retired.len()
    }

    /// Replaced snapshots still waiting for a worker to move past them.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotBuilder;

    fn gen(n: u64) -> Snapshot {
        SnapshotBuilder::new().build(n).unwrap()
    }

    #[test]
    fn retired_snapshots_wait_for_every_worker() {
        let mut p = Publisher::new(gen(1));
        let a = p.register_worker();
        let b = p.register_worker();
        p.publish(gen(2)).unwrap();
        p.publish(gen(3)).unwrap();
        assert_eq!(p.retired(), 2);
        a.set(3);
        assert_eq!(p.reclaim(), 0, "worker b may still hold generation 1");
        b.set(2);
        assert_eq!(p.reclaim(), 1);
        b.set(GenerationAck::PARKED);
        assert_eq!(p.reclaim(), 1);
        assert_eq!(p.retired(), 0);
        assert_eq!(
            p.publish(gen(3)),
            Err(StaleGeneration {
                offered: 3,
                active: 3
            })
        );
        assert_eq!(p.current().generation(), 3);
    }
}
