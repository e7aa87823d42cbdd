//! The slow-path thread: drains the workers' punt rings and hands each frame to the
//! service its ring header names ([`ServiceId`]), answering through the inject ring of the
//! worker that punted it (the only one that holds the client's port).
//!
//! Services register a [`PuntService`] each; the thread knows nothing of their
//! protocols. Nothing here runs on a worker: a slow or stuck service only fills the punt
//! ring, which the worker counts as drops. When the rings are empty the thread sleeps,
//! backing off from [`MIN_IDLE_SLEEP`] to [`MAX_IDLE_SLEEP`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pollux_dataplane::slowpath::{
    RingHeader, ServiceId, SlowPathEnds, MAX_RING_FRAME, MAX_SERVICES,
};

/// How long the thread sleeps when the rings are empty: from the shortest, doubling each
/// idle round up to the longest, and back to the shortest as soon as a frame comes. A
/// busy service answers within a fraction of a millisecond, an idle daemon wakes only 200
/// times a second, and the worker never waits either way: it only fills a ring.
pub const MIN_IDLE_SLEEP: Duration = Duration::from_micros(100);
/// See [`MIN_IDLE_SLEEP`].
pub const MAX_IDLE_SLEEP: Duration = Duration::from_millis(5);
/// Frames handled per ring per round, so one worker's ring cannot starve another's.
const BURST: usize = 64;

/// A service behind the slow path, called on the slow-path thread for every punted frame
/// whose ring header carries its id.
pub trait PuntService: Send {
    /// The id the data plane punts this service's frames with.
    fn id(&self) -> ServiceId;

    /// Handles one punt ring entry (its [`RingHeader`], then the frame). When the service
    /// answers, it writes the whole inject ring entry (header, then an untagged Ethernet
    /// frame of at most [`MAX_RING_FRAME`] bytes) into `reply` and returns true.
    fn handle(&mut self, entry: &[u8], reply: &mut Vec<u8>) -> bool;

    /// Whether the reply `handle` wrote went out: false when the inject ring was full.
    fn replied(&mut self, sent: bool);

    /// [`PuntService::handle`] for an entry that came on the punt ring of worker `worker`
    /// (an index into the rings the thread was started with): a service that sends later,
    /// from [`PuntService::poll`], remembers it to send there.
    fn handle_on(&mut self, worker: usize, entry: &[u8], reply: &mut Vec<u8>) -> bool {
        let _ = worker;
        self.handle(entry, reply)
    }

    /// Called every round of the thread, frames or not, for what a service sends on its
    /// own (a TCP stack's timers, data from elsewhere): each entry (header, then frame)
    /// with `send(worker, entry)`, false when that inject ring is full. Returns whether it
    /// has work in progress: the thread then keeps its shortest sleep.
    fn poll(&mut self, send: &mut dyn FnMut(usize, &[u8]) -> bool) -> bool {
        let _ = send;
        false
    }
}

/// Frames of one service through the thread.
#[derive(Debug, Default)]
struct Counts {
    received: AtomicU64,
    replies: AtomicU64,
    replies_lost: AtomicU64,
}

/// What the thread counts, readable from any thread.
#[derive(Debug, Default)]
struct Counters {
    by_service: [Counts; MAX_SERVICES],
    /// Entries shorter than a ring header, or for a service that is not registered.
    unhandled: AtomicU64,
}

/// The counters of one service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    /// Punted frames handed to it.
    pub received: u64,
    /// Its replies put on an inject ring.
    pub replies: u64,
    /// Its replies the inject ring had no room for.
    pub replies_lost: u64,
}

/// The slow-path thread's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Per registered service: its name and counts.
    pub services: Vec<(&'static str, ServiceCounts)>,
    /// Entries no service could take: too short for a header, or for an id nothing is
    /// registered under.
    pub unhandled: u64,
}

/// The running slow-path thread.
#[derive(Debug)]
pub struct SlowPathThread {
    counters: Arc<Counters>,
    registered: Vec<ServiceId>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SlowPathThread {
    /// Starts the thread on the control ends of the workers' rings, handing frames to
    /// `services` (at most one per id; a later one for the same id replaces the earlier).
    pub fn start(
        ends: Vec<SlowPathEnds>,
        services: Vec<Box<dyn PuntService>>,
    ) -> std::io::Result<SlowPathThread> {
        let mut table: [Option<Box<dyn PuntService>>; MAX_SERVICES] = Default::default();
        for service in services {
            let index = service.id().index();
            if index >= MAX_SERVICES {
                return Err(std::io::Error::other(format!(
                    "service id {index} is beyond the {MAX_SERVICES} the rings carry"
                )));
            }
            table[index] = Some(service);
        }
        let registered = table.iter().flatten().map(|s| s.id()).collect::<Vec<_>>();
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("pollux-slowpath".into())
                .spawn(move || serve(ends, table, &counters, &stop))?
        };
        Ok(SlowPathThread {
            counters,
            registered,
            stop,
            thread: Some(thread),
        })
    }

    /// The thread's counters.
    pub fn stats(&self) -> DispatchStats {
        stats_of(&self.counters, &self.registered)
    }

    /// A function that reads the counters, for the metrics endpoint's thread.
    pub fn stats_fn(&self) -> impl Fn() -> DispatchStats + Send + Sync + 'static {
        let (counters, registered) = (Arc::clone(&self.counters), self.registered.clone());
        move || stats_of(&counters, &registered)
    }

    /// Stops the thread; the services see no frame after this returns.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                crate::warn!("the pollux-slowpath thread panicked");
            }
        }
    }
}

impl std::ops::Drop for SlowPathThread {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn stats_of(counters: &Counters, registered: &[ServiceId]) -> DispatchStats {
    DispatchStats {
        services: registered
            .iter()
            .map(|id| {
                let c = &counters.by_service[id.index()];
                (
                    id.name(),
                    ServiceCounts {
                        received: c.received.load(Ordering::Relaxed),
                        replies: c.replies.load(Ordering::Relaxed),
                        replies_lost: c.replies_lost.load(Ordering::Relaxed),
                    },
                )
            })
            .collect(),
        unhandled: counters.unhandled.load(Ordering::Relaxed),
    }
}

/// The thread's loop.
fn serve(
    mut ends: Vec<SlowPathEnds>,
    mut services: [Option<Box<dyn PuntService>>; MAX_SERVICES],
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut idle_sleep = MIN_IDLE_SLEEP;
    let mut reply = Vec::with_capacity(MAX_RING_FRAME);
    while !stop.load(Ordering::Relaxed) {
        let mut handled = 0;
        for (worker, end) in ends.iter_mut().enumerate() {
            let inject = &mut end.inject;
            handled += end.punt.pop_burst(BURST, |entry| {
                dispatch(&mut services, counters, worker, entry, &mut reply, |r| {
                    inject.push(r)
                });
                true
            });
        }
        let mut busy = false;
        for (index, service) in services.iter_mut().enumerate() {
            let Some(service) = service else { continue };
            let counts = &counters.by_service[index];
            busy |= service.poll(&mut |worker, entry| {
                let sent = ends
                    .get_mut(worker)
                    .is_some_and(|end| end.inject.push(entry));
                let counter = if sent {
                    &counts.replies
                } else {
                    &counts.replies_lost
                };
                counter.fetch_add(1, Ordering::Relaxed);
                sent
            });
        }
        if busy {
            std::thread::sleep(MIN_IDLE_SLEEP);
            idle_sleep = MIN_IDLE_SLEEP;
        } else if handled == 0 {
            std::thread::sleep(idle_sleep);
            idle_sleep = (idle_sleep * 2).min(MAX_IDLE_SLEEP);
        } else {
            idle_sleep = MIN_IDLE_SLEEP;
        }
    }
}

/// Hands one punt ring entry to the service its header names and sends the reply, if any,
/// with `send` (false when there is no room).
fn dispatch(
    services: &mut [Option<Box<dyn PuntService>>; MAX_SERVICES],
    counters: &Counters,
    worker: usize,
    entry: &[u8],
    reply: &mut Vec<u8>,
    send: impl FnOnce(&[u8]) -> bool,
) {
    let service = RingHeader::read(entry).and_then(|(header, _)| {
        let index = header.service.index();
        Some((
            services.get_mut(index)?.as_mut()?,
            &counters.by_service[index],
        ))
    });
    let Some((service, counts)) = service else {
        counters.unhandled.fetch_add(1, Ordering::Relaxed);
        return;
    };
    counts.received.fetch_add(1, Ordering::Relaxed);
    reply.clear();
    if service.handle_on(worker, entry, reply) {
        let sent = send(reply);
        let counter = if sent {
            &counts.replies
        } else {
            &counts.replies_lost
        };
        counter.fetch_add(1, Ordering::Relaxed);
        service.replied(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollux_dataplane::port::PortId;
    use pollux_dataplane::ring::ring;
    use pollux_dataplane::slowpath::{RING_HEADER_LEN, RING_SLOT_SIZE};
    use pollux_dataplane::snapshot::NetworkUid;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Echoes every frame back with its id in front, and records what it was told.
    struct Echo {
        id: ServiceId,
        seen: Arc<Mutex<Vec<(ServiceId, bool)>>>,
    }

    impl PuntService for Echo {
        fn id(&self) -> ServiceId {
            self.id
        }
        fn handle(&mut self, entry: &[u8], reply: &mut Vec<u8>) -> bool {
            reply.extend_from_slice(&entry[..RING_HEADER_LEN]);
            reply.push(self.id.0);
            reply.extend_from_slice(&entry[RING_HEADER_LEN..]);
            true
        }
        fn replied(&mut self, sent: bool) {
            self.seen.lock().unwrap().push((self.id, sent));
        }
    }

    fn entry(service: ServiceId, byte: u8) -> Vec<u8> {
        let mut e = vec![0u8; RING_HEADER_LEN];
        RingHeader {
            port: PortId(1),
            network: NetworkUid(5),
            service,
            l3_offset: 14,
        }
        .write(&mut e);
        e.push(byte);
        e
    }

    #[test]
    fn frames_go_to_the_service_their_header_names() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let echo = |id| -> Box<dyn PuntService> {
            Box::new(Echo {
                id,
                seen: Arc::clone(&seen),
            })
        };
        let (mut punt, punt_rx) = ring(8, RING_SLOT_SIZE);
        let (inject_tx, mut inject) = ring(8, RING_SLOT_SIZE);
        let thread = SlowPathThread::start(
            vec![SlowPathEnds {
                punt: punt_rx,
                inject: inject_tx,
            }],
            vec![echo(ServiceId::DHCP), echo(ServiceId(2))],
        )
        .unwrap();
        assert!(punt.push(&entry(ServiceId(2), 0xaa)));
        assert!(punt.push(&entry(ServiceId(1), 0xbb))); // nobody registered
        assert!(punt.push(&[1, 2, 3])); // no header
        assert!(punt.push(&entry(ServiceId::DHCP, 0xcc)));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut replies = Vec::new();
        while replies.len() < 2 {
            assert!(Instant::now() < deadline, "replies: {replies:?}");
            let mut out = Vec::new();
            if inject.pop_into(&mut out) {
                replies.push(out[RING_HEADER_LEN..].to_vec());
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(replies, vec![vec![2, 0xaa], vec![0, 0xcc]]);
        let stats = thread.stats();
        thread.stop();
        let one = ServiceCounts {
            received: 1,
            replies: 1,
            replies_lost: 0,
        };
        assert_eq!(stats.services, vec![("dhcp", one), ("unknown", one)]);
        assert_eq!(stats.unhandled, 2);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(ServiceId(2), true), (ServiceId::DHCP, true)]
        );
    }

    #[test]
    fn a_full_inject_ring_is_counted_against_the_service() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut services: [Option<Box<dyn PuntService>>; MAX_SERVICES] = Default::default();
        services[0] = Some(Box::new(Echo {
            id: ServiceId::DHCP,
            seen: Arc::clone(&seen),
        }));
        let counters = Counters::default();
        let mut reply = Vec::new();
        dispatch(
            &mut services,
            &counters,
            0,
            &entry(ServiceId::DHCP, 1),
            &mut reply,
            |_| false,
        );
        let stats = stats_of(&counters, &[ServiceId::DHCP]);
        assert_eq!(
            stats.services[0].1,
            ServiceCounts {
                received: 1,
                replies: 0,
                replies_lost: 1
            }
        );
        assert_eq!(*seen.lock().unwrap(), vec![(ServiceId::DHCP, false)]);
    }
}
