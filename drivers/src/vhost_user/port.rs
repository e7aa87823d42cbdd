//! [`VhostUserPort`]: the worker's side of a vhost-user port. Receive takes the guest's
//! transmit chains and copies each frame (after the virtio-net header) into a pool frame,
//! or, for a jumbo frame larger than one, into a chain of them (see
//! `pollux_dataplane::buf`); transmit copies a packet, segment by segment, into the
//! guest's receive chains behind a header (over several with mergeable receive buffers).
//! Frames up to [`MAX_FRAME`] bytes cross. Queues arrive from the protocol thread through
//! the [`Mailbox`]; a queue whose descriptors break the rules is given up and counted,
//! and the port carries on without it.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::{Port, PortStats};

use super::mailbox::{Command, Device, Mailbox, MAX_QUEUES, MAX_QUEUE_PAIRS, RX_QUEUE, TX_QUEUE};
use super::ring::{Broken, Ring, Segments};

/// The largest frame a vhost-user port carries, either way: a 9000-byte MTU (the
/// largest a network may have) with an Ethernet header and one 802.1Q tag. Longer frames
/// from the guest are dropped and counted (`rx_oversize`).
pub const MAX_FRAME: usize = 9000 + 18;

/// Frames the driver dropped or could not place, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Guest frames longer than [`MAX_FRAME`].
    rx_oversize: u64,
    /// Guest chains shorter than the virtio-net header.
    rx_short: u64,
    /// Frames for the guest larger than the receive buffer it posted (without
    /// `MRG_RXBUF`).
    tx_too_big: u64,
    /// Transmit bursts cut short because the guest had no receive buffers.
    tx_no_buffers: u64,
    /// Interrupts sent to the guest (call eventfd writes).
    calls: u64,
    /// Interrupts that could not be sent.
    call_errors: u64,
    /// Queues given up, by any reason.
    broken_queues: u64,
    /// Why the last queue was given up.
    last_broken: Option<Broken>,
}

/// The queues of a started device.
#[derive(Debug)]
struct Active {
    dev: Arc<Device>,
    /// The guest's receive queue of each pair (written here), `None` when not run or
    /// given up.
    rx: Vec<Option<Ring>>,
    /// The guest's transmit queue of each pair (read here), `None` when not run or given
    /// up.
    tx: Vec<Option<Ring>>,
    hdr: [u8; 12],
}

/// A vhost-user port in a worker. See the module documentation.
#[derive(Debug)]
pub struct VhostUserPort {
    name: String,
    mailbox: Arc<Mailbox>,
    active: Option<Active>,
    segs: Box<Segments>,
    /// A guest's jumbo frame in one piece, on its way into a chain of pool frames: the
    /// pool makes chains from contiguous bytes, and guest memory cannot be borrowed as a
    /// slice (the guest may write it meanwhile). Allocated once, with the port.
    jumbo: Box<[u8]>,
    stats: PortStats,
    counters: Counters,
    /// The pair whose transmit queue the next receive burst starts with.
    next_rx_pair: usize,
}

impl VhostUserPort {
    /// A port that takes its queues from `mailbox`.
    pub fn new(name: impl Into<String>, mailbox: Arc<Mailbox>) -> Self {
        VhostUserPort {
            name: name.into(),
            mailbox,
            active: None,
            segs: Box::default(),
            jumbo: vec![0; MAX_FRAME].into_boxed_slice(),
            stats: PortStats::default(),
            counters: Counters::default(),
            next_rx_pair: 0,
        }
    }

    /// Applies a command from the protocol thread.
    fn poll_mailbox(&mut self) {
        let Some((seq, cmd)) = self.mailbox.take() else {
            return;
        };
        let stopped = self.active.take().map(|a| {
            let mut bases = [None; MAX_QUEUES];
            for (q, base) in bases.iter_mut().enumerate() {
                let rings = if q % 2 == RX_QUEUE { &a.rx } else { &a.tx };
                let ring = rings.get(q / 2).and_then(Option::as_ref);
                let setup = a.dev.queues.get(q).and_then(Option::as_ref);
                *base = ring.map(Ring::last_avail).or(setup.map(|s| s.base));
            }
            bases
        });
        if let Command::Start(dev) = cmd {
            let pairs = dev.queues.len().div_ceil(2).min(MAX_QUEUE_PAIRS);
            let mut active = Active {
                rx: Vec::with_capacity(pairs),
                tx: Vec::with_capacity(pairs),
                hdr: [0; 12],
                dev: Arc::clone(&dev),
            };
            let mut failed = Vec::new();
            for q in 0..2 * pairs {
                let ring = dev.queues.get(q).and_then(Option::as_ref).map(|setup| {
                    Ring::new(
                        Arc::clone(&dev.mem),
                        setup.addrs,
                        setup.base,
                        q % 2 == RX_QUEUE,
                    )
                    .map(|r| r.with_event_idx(dev.event_idx).with_indirect(dev.indirect))
                });
                let ring = match ring {
                    Some(Ok(r)) => Some(r),
                    Some(Err(why)) => {
                        failed.push((q, why));
                        None
                    }
                    None => None,
                };
                if q % 2 == RX_QUEUE {
                    active.rx.push(ring);
                } else {
                    active.tx.push(ring);
                }
            }
            // Active first, so that `broken` finds the queues' error eventfds.
            self.active = Some(active);
            for (q, why) in failed {
                self.broken(q, why);
            }
        }
        self.mailbox.applied(seq, stopped);
    }

    fn broken(&mut self, queue: usize, why: Broken) {
        self.counters.broken_queues += 1;
        self.counters.last_broken = Some(why);
        self.mailbox.count_broken();
        // The front end learns it through the queue's error eventfd (QEMU logs it).
        if let Some(err) = self
            .active
            .as_ref()
            .and_then(|a| a.dev.queues.get(queue)?.as_ref()?.err.as_ref())
        {
            Self::signal(err);
        }
    }

    /// Writes 1 to eventfd `fd`; whether it took it.
    fn signal(fd: &std::fs::File) -> bool {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local to an eventfd the device holds open.
        let r = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
        r == 8
    }

    fn call(&mut self, queue: usize) {
        let Some(a) = &self.active else { return };
        let Some(call) = a
            .dev
            .queues
            .get(queue)
            .and_then(|q| q.as_ref()?.call.as_ref())
        else {
            return;
        };
        if Self::signal(call) {
            self.counters.calls += 1;
        } else {
            self.counters.call_errors += 1;
        }
    }
}

impl Port for VhostUserPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, _queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize {
        // A stop or a new table is taken before the rings are touched again (two loads
        // when there is none), not only on the housekeeping cadence.
        self.poll_mailbox();
        let Some(a) = &self.active else { return 0 };
        // Every pair's transmit queue, from a different one each burst so that none
        // starves when the batch fills up.
        let pairs = a.tx.len();
        let first = self.next_rx_pair % pairs.max(1);
        self.next_rx_pair = first + 1;
        let mut added = 0;
        for i in 0..pairs {
            if batch.remaining() == 0 {
                break;
            }
            let pair = (first + i) % pairs;
            added += self.rx_queue(pair, pool, batch);
        }
        added
    }

    fn tx_burst(&mut self, _queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        let Some(a) = &mut self.active else { return 0 };
        // Frames for the guest go to the first receive queue it runs: one queue keeps
        // each flow's order (spreading by flow is for when pairs spread over workers).
        let Some(pair) = a.rx.iter().position(Option::is_some) else {
            return 0;
        };
        let Some(ring) = a.rx[pair].as_mut() else {
            return 0;
        };
        let (hdr_len, mergeable) = (a.dev.hdr_len, a.dev.mergeable);
        let mut chains = [(0u16, 0u32); 32];
        let (mut sent, mut delivered, mut bytes, mut too_big) = (0usize, 0usize, 0u64, 0u64);
        let mut no_buffers = false;
        let mut broken = None;
        match ring.available() {
            Err(why) => broken = Some(why),
            Ok(mut avail) => {
                let mut jumbo = false;
                'frames: for pkt in pkts {
                    if pkt.chained {
                        // A jumbo frame (a chain): it and the frames after it go out of
                        // line, below, so that this loop stays as short as it was.
                        jumbo = true;
                        break;
                    }
                    let data = pool.data(pkt);
                    let need = hdr_len + data.len();
                    self.segs.clear();
                    let (mut n, mut have) = (0usize, 0usize);
                    while have < need && n < chains.len() && (mergeable || n == 0) {
                        if n as u16 >= avail {
                            no_buffers = true;
                            break 'frames;
                        }
                        match ring.collect(n as u16, &mut self.segs) {
                            Ok(chain) => chains[n] = chain,
                            Err(why) => {
                                broken = Some(why);
                                break 'frames;
                            }
                        }
                        have += chains[n].1 as usize;
                        n += 1;
                    }
                    let hdr = &mut a.hdr[..hdr_len];
                    match ring.fill(&self.segs, &chains[..n], hdr, data) {
                        Some(used) => {
                            avail -= used as u16;
                            bytes += data.len() as u64;
                            delivered += 1;
                        }
                        // Larger than the guest's buffers: dropped here; the buffers
                        // stay for the next frame.
                        None => too_big += 1,
                    }
                    pool.free(pkt.frame);
                    sent += 1;
                }
                if jumbo {
                    // Every frame before the first chain was taken: `sent` is its index.
                    let hdr = &mut a.hdr[..hdr_len];
                    let mut t = Tally {
                        avail,
                        ..Tally::default()
                    };
                    let gear = (&mut *ring, &mut *self.segs, &mut chains, hdr, mergeable);
                    Self::tx_chains(gear, pool, &pkts[sent..], &mut t);
                    sent += t.sent;
                    delivered += t.delivered;
                    bytes += t.bytes;
                    too_big += t.too_big;
                    no_buffers |= t.no_buffers;
                    broken = broken.or(t.broken);
                }
            }
        }
        let wants_call = delivered > 0 && ring.publish();
        let queue = 2 * pair + RX_QUEUE;
        if let Some(why) = broken {
            a.rx[pair] = None;
            self.broken(queue, why);
        }
        self.counters.tx_too_big += too_big;
        self.counters.tx_no_buffers += u64::from(no_buffers);
        self.stats.tx_packets += delivered as u64;
        self.stats.tx_bytes += bytes;
        if wants_call {
            self.call(queue);
        }
        sent
    }

    fn housekeeping(&mut self, _pool: &mut FramePool) {
        self.poll_mailbox();
    }

    fn stats(&self) -> PortStats {
        let c = &self.counters;
        let mut stats = self.stats.clone();
        stats.extra = vec![
            ("rx_oversize", c.rx_oversize),
            ("rx_short", c.rx_short),
            ("tx_too_big", c.tx_too_big),
            ("tx_no_buffers", c.tx_no_buffers),
            ("calls", c.calls),
            ("call_errors", c.call_errors),
            ("broken_queues", c.broken_queues),
        ];
        stats
    }
}

/// Why no receive chains were gathered for a frame.
enum Gather {
    /// The guest has not posted enough: the frame waits for the next burst.
    NoBuffers,
    /// A chain broke the rules: the queue is given up.
    Broken(Broken),
}

/// Collects the guest's receive chains for a frame of `need` bytes (with its header) into
/// `segs` and `chains`, of the `avail` available: the first alone without mergeable
/// buffers, as many as it takes (up to `chains`' length) with them. Returns how many; the
/// caller checks whether they hold the frame.
#[inline(always)]
fn gather(
    ring: &Ring,
    segs: &mut Segments,
    chains: &mut [(u16, u32); 32],
    need: usize,
    avail: u16,
    mergeable: bool,
) -> Result<usize, Gather> {
    segs.clear();
    let (mut n, mut have) = (0usize, 0usize);
    while have < need && n < chains.len() && (mergeable || n == 0) {
        if n as u16 >= avail {
            return Err(Gather::NoBuffers);
        }
        chains[n] = ring.collect(n as u16, segs).map_err(Gather::Broken)?;
        have += chains[n].1 as usize;
        n += 1;
    }
    Ok(n)
}

/// What [`VhostUserPort::tx_chains`] did.
#[derive(Debug, Default)]
struct Tally {
    /// Receive chains still available (in and out).
    avail: u16,
    sent: usize,
    delivered: usize,
    bytes: u64,
    too_big: u64,
    no_buffers: bool,
    broken: Option<Broken>,
}

/// What copying into the guest's receive queue works with: the ring, scratch for the
/// segments and heads of the chains a frame takes, the header, and whether receive
/// buffers are mergeable.
type Gear<'a> = (
    &'a mut Ring,
    &'a mut Segments,
    &'a mut [(u16, u32); 32],
    &'a mut [u8],
    bool,
);

impl VhostUserPort {
    /// The transmit loop for any packet, chained or not, from the first chain of a burst
    /// on: as `tx_burst`'s, with each packet copied segment by segment
    /// ([`Ring::fill_pieces`]). Out of line: jumbo frames are rare.
    #[cold]
    #[inline(never)]
    fn tx_chains(gear: Gear<'_>, pool: &mut FramePool, pkts: &[Packet], t: &mut Tally) {
        let (ring, segs, chains, hdr, mergeable) = gear;
        for pkt in pkts {
            let len = pool.packet_len(pkt);
            let n = match gather(ring, segs, chains, hdr.len() + len, t.avail, mergeable) {
                Ok(n) => n,
                Err(Gather::NoBuffers) => {
                    t.no_buffers = true;
                    return;
                }
                Err(Gather::Broken(why)) => {
                    t.broken = Some(why);
                    return;
                }
            };
            match ring.fill_pieces(segs, &chains[..n], hdr, len, pool.segments(pkt)) {
                Some(used) => {
                    t.avail -= used as u16;
                    t.bytes += len as u64;
                    t.delivered += 1;
                }
                None => t.too_big += 1,
            }
            pool.free(pkt.frame);
            t.sent += 1;
        }
    }

    /// Receives from the guest's transmit queue of pair `pair` into `batch`.
    #[inline]
    fn rx_queue(&mut self, pair: usize, pool: &mut FramePool, batch: &mut Batch) -> usize {
        let Some(a) = &mut self.active else { return 0 };
        let Some(ring) = a.tx[pair].as_mut() else {
            return 0;
        };
        let hdr_len = a.dev.hdr_len;
        let max = pool.max_data_len();
        let headroom = usize::from(pool.headroom());
        let (mut added, mut bytes, mut short, mut oversize) = (0usize, 0u64, 0u64, 0u64);
        let mut broken = None;
        let mut taken = 0u16;
        match ring.available() {
            Err(why) => broken = Some(why),
            Ok(avail) => {
                let n = avail.min(batch.remaining().min(usize::from(u16::MAX)) as u16);
                while taken < n {
                    let Some(frame) = pool.alloc() else { break };
                    self.segs.clear();
                    let (head, total) = match ring.collect(taken, &mut self.segs) {
                        Ok(c) => c,
                        Err(why) => {
                            pool.free(frame);
                            broken = Some(why);
                            break;
                        }
                    };
                    let total = total as usize;
                    if total < hdr_len {
                        taken += 1;
                        ring.push_used(head, 0);
                        short += 1;
                        pool.free(frame);
                        continue;
                    }
                    let len = total - hdr_len;
                    if len > max {
                        pool.free(frame);
                        if len > MAX_FRAME {
                            oversize += 1;
                        } else {
                            // Short of frames for the chain: the frame stays in the ring
                            // for a later burst, as when one frame is lacking.
                            let Some(pkt) =
                                Self::rx_jumbo(&self.segs, &mut self.jumbo, hdr_len, len, pool)
                            else {
                                break;
                            };
                            // Cannot fail: at most `batch.remaining()` chains are taken.
                            let _ = batch.push(pkt);
                            added += 1;
                            bytes += len as u64;
                        }
                        taken += 1;
                        ring.push_used(head, 0);
                        continue;
                    }
                    taken += 1;
                    ring.push_used(head, 0);
                    let buf = &mut pool.frame_mut(frame)[headroom..headroom + len];
                    let copied = self.segs.read_into(hdr_len, buf);
                    // Cannot fail: at most `batch.remaining()` chains are taken.
                    let _ = batch.push(Packet::received(frame, headroom as u16, copied as u16));
                    added += 1;
                    bytes += copied as u64;
                }
            }
        }
        // Chains taken before a bad one are returned to the guest all the same.
        ring.take(taken);
        let wants_call = taken > 0 && ring.publish();
        let queue = 2 * pair + TX_QUEUE;
        if let Some(why) = broken {
            a.tx[pair] = None;
            self.broken(queue, why);
        }
        self.counters.rx_short += short;
        self.counters.rx_oversize += oversize;
        self.stats.rx_packets += added as u64;
        self.stats.rx_bytes += bytes;
        self.stats.rx_dropped += short + oversize;
        if wants_call {
            self.call(queue);
        }
        added
    }

    /// A guest's frame of `len` bytes (more than one pool frame, at most [`MAX_FRAME`])
    /// from `segs` after the `hdr_len`-byte header, as a chain of pool frames (through
    /// `scratch`); `None`, with nothing taken, when the pool lacks the frames.
    #[cold]
    #[inline(never)]
    fn rx_jumbo(
        segs: &Segments,
        scratch: &mut [u8],
        hdr_len: usize,
        len: usize,
        pool: &mut FramePool,
    ) -> Option<Packet> {
        if pool.available() < pool.frames_for(len) {
            return None;
        }
        let buf = &mut scratch[..len];
        let copied = segs.read_into(hdr_len, buf);
        pool.alloc_packet(&buf[..copied])
    }
}
