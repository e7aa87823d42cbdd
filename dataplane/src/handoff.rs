//! Between workers: frames for a port queue another worker owns, and the neighbours one
//! worker learned that the others need.
//!
//! Each port queue is polled (and transmitted on) by exactly one worker. A worker that
//! must send on a port it holds no queue of hands the frame to the port's owner through
//! a bounded single-producer, single-consumer ring per (sender, owner) pair: no lock and
//! no atomic read-modify-write on either side, one release store per burst. Frames are
//! copied into the ring's slot (the sender frees its frame at once) and out of it into
//! the owner's pool, so a frame never crosses from one worker's pool into another's and
//! each pool's conservation stays its own.
//!
//! Flows whose state (a security-group connection, a NAT session) another worker owns go
//! to that worker through a third ring per pair, with the metadata classification gave
//! them (see [`crate::flow_owner`]): the owner runs the stateful stages for them.
//!
//! Neighbours (ARP) are per worker, but an ARP reply arrives on whichever worker polls
//! the uplink's queue, not necessarily the one that asked: every worker tells the others
//! what it learned from ARP through a second ring per pair (a few bytes per ARP packet),
//! and they apply it as if they had seen the packet. See docs/DESIGN.md ("Workers").

use crate::buf::FramePool;
use crate::ident::{NetworkSlot, PackedMac};
use crate::packet::{Batch, Meta, Next, Packet, MAX_BURST};
use crate::port::PortId;
use crate::ring::{ring, Consumer, Producer};
use crate::snapshot::NetworkUid;

/// Slots per handoff ring between two workers.
pub const HANDOFF_DEPTH: usize = 1024;
/// Slots per neighbour-news ring between two workers.
pub const NEWS_DEPTH: usize = 256;
/// Bytes in front of a handed-off frame: the output port id.
const PORT_HEADER: usize = 2;
/// A neighbour news item: network (4), address (4), MAC (8), create (1).
const NEWS_SLOT: usize = 17;
/// Most workers a mesh connects.
pub const MAX_WORKERS: usize = 64;
/// Marks a port whose transmit no other worker owns.
const NO_OWNER: u16 = u16::MAX;
/// Marks a port whose queue is moving between workers: frames for it are held by the
/// sender until the move ends (see [`crate::output::PortSet::hold`]).
const HOLD: u16 = u16::MAX - 1;
/// Slots per flow handoff ring between two workers: a burst from each of several queues
/// may be on its way at once.
pub const FLOW_DEPTH: usize = 1024;
/// Bytes in front of a frame handed to its flow's owner: the burst's port (2), the
/// packet's input port (2), and the metadata classification gave it: network slot (2),
/// EtherType (2), TCI (2), flags (1), L3 offset (1).
const FLOW_HEADER: usize = 12;

/// A packet handed to the worker that owns its flow, as that worker receives it: the
/// frame's bytes and what it needs to resume the packet after classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandedFlow<'a> {
    /// The port whose receive burst the packet came in (a tunnel endpoint's uplink, a
    /// trunk's subport): its stage set applies.
    pub burst_port: PortId,
    /// The packet's own input port (differs after tunnel decapsulation).
    pub in_port: PortId,
    /// Its metadata, `next` aside (it resumes at [`Next::L2`]).
    pub meta: Meta,
    /// The frame.
    pub frame: &'a [u8],
}

fn write_flow_header(slot: &mut [u8], burst_port: PortId, pkt: &Packet) {
    let m = &pkt.meta;
    slot[0..2].copy_from_slice(&burst_port.0.to_le_bytes());
    slot[2..4].copy_from_slice(&pkt.in_port.0.to_le_bytes());
    slot[4..6].copy_from_slice(&m.network.0.to_le_bytes());
    slot[6..8].copy_from_slice(&m.ethertype.to_le_bytes());
    slot[8..10].copy_from_slice(&m.tci.to_le_bytes());
    slot[10] = m.flags;
    slot[11] = m.l3_offset;
}

fn read_flow(slot: &[u8]) -> Option<HandedFlow<'_>> {
    let (h, frame) = slot.split_first_chunk::<FLOW_HEADER>()?;
    let word = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
    Some(HandedFlow {
        burst_port: PortId(word(0)),
        in_port: PortId(word(2)),
        meta: Meta {
            next: Next::L2,
            network: NetworkSlot(word(4)),
            ethertype: word(6),
            tci: word(8),
            flags: h[10],
            l3_offset: h[11],
        },
        frame,
    })
}

/// A neighbour learned from an ARP packet, as [`crate::l3::neighbor::NeighborTable::learn`]
/// takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborNews {
    /// The network the ARP packet came in on.
    pub network: NetworkUid,
    /// The sender's IPv4 address.
    pub ip: u32,
    /// The sender's MAC.
    pub mac: PackedMac,
    /// Whether the entry is created when absent (the packet was for a router).
    pub create: bool,
}

impl NeighborNews {
    fn write(&self, slot: &mut [u8]) -> usize {
        slot[..4].copy_from_slice(&self.network.0.to_le_bytes());
        slot[4..8].copy_from_slice(&self.ip.to_le_bytes());
        slot[8..16].copy_from_slice(&self.mac.get().to_le_bytes());
        slot[16] = u8::from(self.create);
        NEWS_SLOT
    }

    fn read(slot: &[u8]) -> Option<Self> {
        let slot: &[u8; NEWS_SLOT] = slot.try_into().ok()?;
        let word =
            |at: usize| u32::from_le_bytes([slot[at], slot[at + 1], slot[at + 2], slot[at + 3]]);
        Some(NeighborNews {
            network: NetworkUid(word(0)),
            ip: word(4),
            // Written by `write` from a packed MAC: the top 16 bits are zero.
            mac: PackedMac::from_bits(
                (u64::from(word(8)) | u64::from(word(12)) << 32) & 0xffff_ffff_ffff,
            ),
            create: slot[16] != 0,
        })
    }
}

/// The sending side of one worker's handoffs: a ring to every other worker and, per
/// port id, the worker that transmits on that port.
#[derive(Debug, Default)]
pub struct HandoffOut {
    /// By peer worker index; `None` at the worker's own index.
    frames: Vec<Option<Producer>>,
    /// Frames waiting for the next burst to each peer, with their output port set in
    /// `meta.next`.
    pending: Vec<Batch>,
    news: Vec<Option<Producer>>,
    /// Flows for their owner, by peer worker index.
    flows: Vec<Option<Producer>>,
    /// Owner worker by port id ([`NO_OWNER`]: none).
    owners: Vec<u16>,
    /// Some batch in `pending` holds frames.
    any_pending: bool,
}

impl HandoffOut {
    /// The worker that transmits on `port` for this one, when another does.
    #[inline]
    pub fn owner(&self, port: u16) -> Option<u16> {
        match self.owners.get(usize::from(port)) {
            Some(&o) if o != NO_OWNER && self.frames.get(usize::from(o)).is_some() => Some(o),
            _ => None,
        }
    }

    /// Records that worker `owner` transmits on `port` (`None`: no other worker does).
    pub fn set_owner(&mut self, port: u16, owner: Option<u16>) {
        let i = usize::from(port);
        if self.owners.len() <= i {
            self.owners.resize(i + 1, NO_OWNER);
        }
        self.owners[i] = owner.unwrap_or(NO_OWNER);
    }

    /// Holds the frames for `port` in this worker from now on, until its owner is set
    /// again (its queue is moving between workers).
    pub fn set_hold(&mut self, port: u16) {
        self.set_owner(port, None);
        self.owners[usize::from(port)] = HOLD;
    }

    /// Whether frames for `port` are held here (see [`HandoffOut::set_hold`]).
    #[inline]
    pub fn holding(&self, port: u16) -> bool {
        self.owners.get(usize::from(port)) == Some(&HOLD)
    }

    /// Whether any peer is connected.
    pub fn connected(&self) -> bool {
        self.frames.iter().any(Option::is_some)
    }

    /// Queues `pkt` for `owner`; when that worker's batch is full it is pushed first
    /// (see [`HandoffOut::push`]). Returns the frames the ring refused, which the caller
    /// frees and counts.
    #[inline]
    pub(crate) fn queue(&mut self, owner: u16, out: u16, mut pkt: Packet) -> Result<(), Packet> {
        let Some(batch) = self.pending.get_mut(usize::from(owner)) else {
            return Err(pkt);
        };
        pkt.meta.next = Next::Output(crate::port::PortId(out));
        self.any_pending = true;
        batch.push(pkt)
    }

    /// Whether the batch to `owner` is full.
    #[inline]
    pub(crate) fn full(&self, owner: u16) -> bool {
        self.pending
            .get(usize::from(owner))
            .is_some_and(Batch::is_full)
    }

    /// Copies the batch waiting for `owner` into its ring, as many as fit, frees every
    /// frame of it (the ring holds copies) and empties it. Returns how many were handed
    /// off; `refused` is told each frame that was not (with the pool, its bytes still
    /// there), before its frame is freed.
    pub(crate) fn push(
        &mut self,
        owner: u16,
        pool: &mut FramePool,
        mut refused: impl FnMut(&Packet, &FramePool),
    ) -> usize {
        let i = usize::from(owner);
        let (Some(Some(ring)), Some(batch)) = (self.frames.get_mut(i), self.pending.get_mut(i))
        else {
            return 0;
        };
        let pkts = batch.as_slice();
        let mut oversize = [false; MAX_BURST];
        let pushed = {
            let pool = &*pool;
            ring.push_burst(pkts.len(), |k, slot| {
                let pkt = &pkts[k];
                let bytes = pool.data(pkt);
                let port = match pkt.meta.next {
                    Next::Output(p) => p.0,
                    _ => NO_OWNER,
                };
                let dst = slot
                    .get_mut(PORT_HEADER..PORT_HEADER + bytes.len())
                    .filter(|_| !pkt.chained);
                let Some(dst) = dst else {
                    // Larger than a slot (slots are sized from a pool frame: a chained
                    // jumbo frame): an empty slot, which the owner drops, and a drop here.
                    oversize[k] = true;
                    return 0;
                };
                dst.copy_from_slice(bytes);
                slot[..PORT_HEADER].copy_from_slice(&port.to_le_bytes());
                PORT_HEADER + bytes.len()
            })
        };
        let mut handed = 0;
        for (k, pkt) in pkts.iter().enumerate() {
            if k < pushed && !oversize[k] {
                handed += 1;
            } else {
                refused(pkt, pool);
            }
            pool.free(pkt.frame);
        }
        batch.clear();
        handed
    }

    /// Whether a frame waits for some peer.
    #[inline(always)]
    pub(crate) fn has_pending(&self) -> bool {
        self.any_pending
    }

    /// Peers with frames waiting; the caller pushes each of them.
    pub(crate) fn dirty(&mut self) -> impl Iterator<Item = u16> + '_ {
        self.any_pending = false;
        self.pending
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(i, _)| i as u16)
    }

    /// Number of workers in the mesh (this one included); 1 when not connected.
    pub fn workers(&self) -> usize {
        self.flows.len().max(1)
    }

    /// Copies the packets `pkts[idx[k]]` (received in a burst of `burst_port`) into the
    /// flow ring to `owner`, as many as fit, in order. Returns how many were copied: the
    /// first that many of `idx`. Frames are left to the caller to free.
    pub(crate) fn hand_flows(
        &mut self,
        owner: u16,
        burst_port: PortId,
        pkts: &[Packet],
        idx: &[u8],
        pool: &FramePool,
    ) -> usize {
        let Some(Some(ring)) = self.flows.get_mut(usize::from(owner)) else {
            return 0;
        };
        ring.push_burst(idx.len(), |k, slot| {
            let pkt = &pkts[usize::from(idx[k])];
            let bytes = pool.data(pkt);
            let dst = slot
                .get_mut(FLOW_HEADER..FLOW_HEADER + bytes.len())
                .filter(|_| !pkt.chained);
            let Some(dst) = dst else {
                // Slots are sized from a pool frame, so only a chain (which the control
                // plane keeps off several workers): an empty slot, which the owner skips
                // (the sender counted it handed; it is counted a drop there).
                return 0;
            };
            dst.copy_from_slice(bytes);
            write_flow_header(slot, burst_port, pkt);
            FLOW_HEADER + bytes.len()
        })
    }

    /// Tells every peer about `news`; returns how many peers' rings were full.
    pub(crate) fn tell(&mut self, news: &NeighborNews) -> u64 {
        let mut full = 0;
        for ring in self.news.iter_mut().flatten() {
            if ring.push_burst(1, |_, slot| news.write(slot)) == 0 {
                full += 1;
            }
        }
        full
    }
}

/// The receiving side of one worker's handoffs.
#[derive(Debug, Default)]
pub struct HandoffIn {
    frames: Vec<Consumer>,
    news: Vec<Consumer>,
    flows: Vec<Consumer>,
    /// The flow ring the next [`HandoffIn::take_flows`] starts with, so that one busy
    /// peer cannot starve the others.
    next_flow: usize,
}

impl HandoffIn {
    /// Offers up to `max` frames from the peers, in each peer's order, to `take(port,
    /// frame)`, which returns false to leave that frame (and that peer's later ones) in
    /// the ring for the next pass. Returns how many were taken.
    #[inline]
    pub fn take(&mut self, max: usize, mut take: impl FnMut(u16, &[u8]) -> bool) -> usize {
        let mut taken = 0;
        for ring in &mut self.frames {
            if taken >= max {
                break;
            }
            taken += ring.pop_burst(max - taken, |slot| {
                let Some((port, frame)) = slot.split_first_chunk::<PORT_HEADER>() else {
                    return take(NO_OWNER, &[]);
                };
                take(u16::from_le_bytes(*port), frame)
            });
        }
        taken
    }

    /// Offers up to `max` packets other workers handed to this one as their flows' owner,
    /// in each peer's order, to `take`, which returns false to leave that packet (and
    /// that peer's later ones) in the ring. A slot the sender could not fill is offered
    /// as `None` (count it a drop). Returns how many were taken.
    #[inline]
    pub fn take_flows(
        &mut self,
        max: usize,
        mut take: impl FnMut(Option<HandedFlow<'_>>) -> bool,
    ) -> usize {
        let n = self.flows.len();
        let mut taken = 0;
        for k in 0..n {
            if taken >= max {
                break;
            }
            let ring = &mut self.flows[(self.next_flow + k) % n];
            taken += ring.pop_burst(max - taken, |slot| take(read_flow(slot)));
        }
        if n > 0 {
            self.next_flow = (self.next_flow + 1) % n;
        }
        taken
    }

    /// Whether every ring from the other workers (frames and flows) is empty.
    pub fn is_empty(&mut self) -> bool {
        self.frames.iter_mut().all(Consumer::is_empty)
            && self.flows.iter_mut().all(Consumer::is_empty)
    }

    /// Hands every neighbour news item waiting to `apply`.
    pub fn news(&mut self, mut apply: impl FnMut(NeighborNews)) {
        for ring in &mut self.news {
            ring.pop_burst(NEWS_DEPTH, |slot| {
                if let Some(news) = NeighborNews::read(slot) {
                    apply(news);
                }
                true
            });
        }
    }
}

/// Both ends of one worker's handoffs.
#[derive(Debug, Default)]
pub struct Handoff {
    /// What the worker sends.
    pub out: HandoffOut,
    /// What it receives.
    pub inn: HandoffIn,
}

/// Rings between every pair of `workers` workers (frames of up to `max_frame` bytes);
/// element `i` belongs to worker `i`.
pub fn mesh(workers: usize, max_frame: usize) -> Vec<Handoff> {
    assert!(workers <= MAX_WORKERS, "at most {MAX_WORKERS} workers");
    let mut ends: Vec<Handoff> = (0..workers)
        .map(|_| Handoff {
            out: HandoffOut {
                frames: (0..workers).map(|_| None).collect(),
                pending: (0..workers)
                    .map(|_| Batch::with_capacity(MAX_BURST))
                    .collect(),
                news: (0..workers).map(|_| None).collect(),
                flows: (0..workers).map(|_| None).collect(),
                owners: Vec::new(),
                any_pending: false,
            },
            inn: HandoffIn::default(),
        })
        .collect();
    for from in 0..workers {
        for to in 0..workers {
            if from == to {
                continue;
            }
            let (p, c) = ring(HANDOFF_DEPTH, PORT_HEADER + max_frame);
            ends[from].out.frames[to] = Some(p);
            ends[to].inn.frames.push(c);
            let (p, c) = ring(NEWS_DEPTH, NEWS_SLOT);
            ends[from].out.news[to] = Some(p);
            ends[to].inn.news.push(c);
            let (p, c) = ring(FLOW_DEPTH, FLOW_HEADER + max_frame);
            ends[from].out.flows[to] = Some(p);
            ends[to].inn.flows.push(c);
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_round_trips() {
        let news = NeighborNews {
            network: NetworkUid(7),
            ip: 0xc612_0001,
            mac: PackedMac::from_bits(0x0a0b_0c0d_0e0f),
            create: true,
        };
        let mut slot = [0u8; NEWS_SLOT];
        assert_eq!(news.write(&mut slot), NEWS_SLOT);
        assert_eq!(NeighborNews::read(&slot), Some(news));
        assert_eq!(NeighborNews::read(&slot[..3]), None);
    }

    #[test]
    fn owners_name_only_connected_peers() {
        let mut ends = mesh(2, 64);
        let out = &mut ends[0].out;
        assert!(out.connected());
        out.set_owner(3, Some(1));
        assert_eq!(out.owner(3), Some(1));
        out.set_owner(4, Some(9));
        assert_eq!(out.owner(4), None, "worker 9 does not exist");
        out.set_owner(3, None);
        assert_eq!(out.owner(3), None);
        assert_eq!(out.owner(1000), None);
    }

    #[test]
    fn news_reach_every_peer() {
        let mut ends = mesh(3, 64);
        let news = NeighborNews {
            network: NetworkUid(1),
            ip: 1,
            mac: PackedMac::from_bits(2),
            create: false,
        };
        assert_eq!(ends[0].out.tell(&news), 0);
        for end in &mut ends[1..] {
            let mut got = Vec::new();
            end.inn.news(|n| got.push(n));
            assert_eq!(got, vec![news]);
        }
        let mut none = Vec::new();
        ends[0].inn.news(|n| none.push(n));
        assert!(none.is_empty());
    }
}
