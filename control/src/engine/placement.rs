//! Which worker polls each receive queue of each port.
//!
//! Queues are placed round-robin in the order ports are opened (queue after queue of a
//! multi-queue port), so that with one queue per port the ports alternate between the
//! workers. Each queue has exactly one worker; a worker that polls no queue of a port
//! hands the frames it sends there to the worker polling the port's first queue.

use std::collections::BTreeMap;

use pollux_dataplane::port::PortId;

/// The queue placement. See the module documentation.
#[derive(Clone, Debug)]
pub struct Placement {
    workers: u16,
    next: u16,
    /// Port → the worker of each of its queues, by queue index.
    ports: BTreeMap<PortId, Vec<u16>>,
}

impl Placement {
    /// No port placed yet, over `workers` workers (at least one).
    pub fn new(workers: usize) -> Self {
        Placement {
            workers: workers.max(1) as u16,
            next: 0,
            ports: BTreeMap::new(),
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        usize::from(self.workers)
    }

    /// Places the `queues` queues of `port` (replacing an earlier placement of it) and
    /// returns the worker of each.
    pub fn place(&mut self, port: PortId, queues: usize) -> Vec<u16> {
        self.place_pinned(port, queues, &BTreeMap::new())
    }

    /// [`Placement::place`], with the queues of `pinned` (queue index → worker) on their
    /// worker (a worker that does not exist is ignored: round-robin); the others go
    /// round-robin.
    pub fn place_pinned(
        &mut self,
        port: PortId,
        queues: usize,
        pinned: &BTreeMap<u16, u16>,
    ) -> Vec<u16> {
        let owners: Vec<u16> = (0..queues.max(1))
            .map(|q| match pinned.get(&(q as u16)) {
                Some(&w) if w < self.workers => w,
                _ => {
                    let w = self.next;
                    self.next = (self.next + 1) % self.workers;
                    w
                }
            })
            .collect();
        self.ports.insert(port, owners.clone());
        owners
    }

    /// Records that queue `queue` of `port` is polled by `worker` now (it moved); false
    /// when the port has no such queue.
    pub fn set_worker(&mut self, port: PortId, queue: u16, worker: u16) -> bool {
        match self
            .ports
            .get_mut(&port)
            .and_then(|o| o.get_mut(usize::from(queue)))
        {
            Some(w) => {
                *w = worker;
                true
            }
            None => false,
        }
    }

    /// Forgets `port`; returns the workers its queues were on.
    pub fn remove(&mut self, port: PortId) -> Vec<u16> {
        self.ports.remove(&port).unwrap_or_default()
    }

    /// The worker of each queue of `port`.
    pub fn owners(&self, port: PortId) -> Option<&[u16]> {
        self.ports.get(&port).map(Vec::as_slice)
    }

    /// Every placed port with the workers of its queues.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, &[u16])> + '_ {
        self.ports.iter().map(|(&p, o)| (p, o.as_slice()))
    }

    /// The worker that transmits for worker `worker` on a port whose queues are on
    /// `owners`: none (itself) when it polls one of them, else the first queue's.
    pub fn transmit_owner(&self, owners: &[u16], worker: u16) -> Option<u16> {
        if owners.contains(&worker) {
            None
        } else {
            owners.first().copied()
        }
    }

    /// The worker that polls the first queue of `port` (worker 0 for an unknown port):
    /// where reads and traces of that port run.
    pub fn home(&self, port: PortId) -> u16 {
        self.owners(port)
            .and_then(|o| o.first().copied())
            .unwrap_or(0)
    }

    /// The (port, queue index) pairs worker `worker` polls.
    pub fn queues_of(&self, worker: u16) -> Vec<(PortId, u16)> {
        self.ports
            .iter()
            .flat_map(|(&p, owners)| {
                owners
                    .iter()
                    .enumerate()
                    .filter(move |(_, &w)| w == worker)
                    .map(move |(q, _)| (p, q as u16))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_go_round_robin_and_each_has_one_worker() {
        let mut p = Placement::new(2);
        assert_eq!(p.place(PortId(1), 1), vec![0]);
        assert_eq!(p.place(PortId(2), 1), vec![1]);
        assert_eq!(p.place(PortId(3), 2), vec![0, 1]);
        assert_eq!(p.queues_of(0), vec![(PortId(1), 0), (PortId(3), 0)]);
        assert_eq!(p.queues_of(1), vec![(PortId(2), 0), (PortId(3), 1)]);
        assert_eq!(p.transmit_owner(&[1], 0), Some(1));
        assert_eq!(p.transmit_owner(&[0, 1], 1), None);
        assert_eq!(p.home(PortId(2)), 1);
        assert_eq!(p.remove(PortId(2)), vec![1]);
        assert_eq!(p.home(PortId(2)), 0);
        let mut one = Placement::new(1);
        assert_eq!(one.place(PortId(5), 3), vec![0, 0, 0]);
        // A pinned queue goes to its worker and takes no turn of the round-robin.
        let pins = BTreeMap::from([(1u16, 0u16)]);
        assert_eq!(p.place_pinned(PortId(7), 3, &pins), vec![0, 0, 1]);
        assert!(p.set_worker(PortId(7), 2, 0));
        assert!(!p.set_worker(PortId(7), 3, 0));
        assert_eq!(p.owners(PortId(7)), Some(&[0, 0, 0][..]));
    }
}
