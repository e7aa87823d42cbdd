//! Frame capture, as VPP's `pcap trace` and `ovs-tcpdump`: copies of the frames one port
//! receives (before any rewrite), sends (as handed to its transmit) or drops (with the
//! stage and reason), into a bounded single-producer ring that the control plane drains.
//!
//! Off, it costs one branch per burst (and one per transmit batch). On, the worker copies
//! each captured frame (cut at the snap length) into a slot of a ring allocated by whoever
//! started the capture, never on the packet path; a full ring is a counted loss, so a slow
//! reader never makes the worker wait or buffer. A capture takes at most the frames it
//! was asked for (captured or lost), then copies nothing more.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::trace::TraceMatch;
use super::Stage;
use crate::buf::FramePool;
use crate::drop::DropReason;
use crate::packet::{Next, Packet};
use crate::port::PortId;
use crate::ring::{self, Consumer, Producer};

/// Which frames of the port a capture takes (a set: any of them together).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Directions(u8);

impl Directions {
    /// Frames received on the port, as they arrived.
    pub const RX: Directions = Directions(1);
    /// Frames sent on the port, as handed to its transmit.
    pub const TX: Directions = Directions(2);
    /// Frames received on the port that the pipeline dropped (in any stage, the output
    /// stage's replication included), and frames for the port that its transmit side
    /// refused (ring full, not attached, the owner's handoff ring full, no room for the
    /// tag).
    pub const DROP: Directions = Directions(4);
    /// Every direction.
    pub const ALL: Directions = Directions(7);

    /// Whether `self` has every direction of `other`.
    pub const fn contains(self, other: Directions) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Both sets.
    #[must_use]
    pub const fn with(self, other: Directions) -> Directions {
        Directions(self.0 | other.0)
    }

    /// True for the empty set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn from_bits(bits: u8) -> Option<Directions> {
        [Self::RX, Self::TX, Self::DROP]
            .into_iter()
            .find(|d| d.0 == bits)
    }

    /// `rx`, `tx` or `drop` for one direction.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "rx",
            2 => "tx",
            4 => "drop",
            _ => "several",
        }
    }
}

/// Longest snap length (bytes kept per frame): a jumbo frame with its tags.
pub const MAX_SNAPLEN: usize = 9216;
/// Slots of a capture ring: with the snap length, the bound of its memory.
pub const CAPTURE_RING_DEPTH: usize = 1024;
/// Bytes in front of each frame in a slot: direction, stage, reason, spare, original
/// length (u32 LE), timestamp (u64 LE, the worker's clock in nanoseconds).
const HEADER: usize = 16;

/// What a capture takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The port.
    pub port: PortId,
    /// Which of its frames.
    pub directions: Directions,
    /// Bytes kept of each frame (at most [`MAX_SNAPLEN`]).
    pub snaplen: usize,
    /// Frames taken at most (captured or lost), after which the capture copies nothing.
    pub count: u64,
    /// Which frames, by their headers as they are where they are copied (as received,
    /// as sent, as dropped); the empty match takes every frame.
    pub filter: TraceMatch,
}

/// Counts a capture shares between the worker and its reader.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Frames copied into the ring.
    pub captured: AtomicU64,
    /// Frames taken while the ring was full: not copied.
    pub lost: AtomicU64,
}

/// The worker's end of a capture.
#[derive(Debug)]
pub struct Capturer {
    spec: CaptureSpec,
    ring: Producer,
    stats: Arc<CaptureStats>,
    /// Frames it may still take.
    budget: u64,
    /// The worker's clock at the start of the latest burst: the timestamp of what it
    /// copies (transmit batches go out after their burst).
    now_ns: u64,
}

/// The control plane's end of a capture.
#[derive(Debug)]
pub struct CaptureReader {
    ring: Consumer,
    stats: Arc<CaptureStats>,
}

/// Creates a capture: the worker's end (to install with
/// [`crate::worker::Worker::capture_start`]) and the reader's. Allocates its ring here,
/// on the caller's thread.
pub fn capture(spec: CaptureSpec) -> (Capturer, CaptureReader) {
    let spec = CaptureSpec {
        snaplen: spec.snaplen.clamp(1, MAX_SNAPLEN),
        ..spec
    };
    let (producer, consumer) = ring::ring(CAPTURE_RING_DEPTH, HEADER + spec.snaplen);
    let stats = Arc::new(CaptureStats::default());
    (
        Capturer {
            spec,
            ring: producer,
            stats: Arc::clone(&stats),
            budget: spec.count,
            now_ns: 0,
        },
        CaptureReader {
            ring: consumer,
            stats,
        },
    )
}

/// Writes one captured frame into `slot` (every segment of a chain, up to the snap
/// length); returns the slot bytes used.
#[inline]
fn fill(
    slot: &mut [u8],
    dir: Directions,
    drop: (u8, u8),
    now_ns: u64,
    pool: &FramePool,
    pkt: &Packet,
) -> usize {
    let len = pool.packet_len(pkt);
    slot[0] = dir.0;
    slot[1] = drop.0;
    slot[2] = drop.1;
    slot[3] = 0;
    slot[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    slot[8..16].copy_from_slice(&now_ns.to_le_bytes());
    HEADER + pool.copy_out(pkt, 0, &mut slot[HEADER..])
}

impl Capturer {
    /// What it takes.
    pub fn spec(&self) -> &CaptureSpec {
        &self.spec
    }

    /// Copies `frames` (indices into `pkts`) as `dir`; counts those the ring has no room
    /// for as lost.
    #[inline]
    fn take(
        &mut self,
        dir: Directions,
        pkts: &[Packet],
        pool: &FramePool,
        select: impl Fn(&Packet) -> Option<(u8, u8)>,
    ) {
        let filter = self.spec.filter;
        let select = |p: &Packet| select(p).filter(|_| filter.matches(pool.data(p)));
        let wanted =
            (pkts.iter().filter(|p| select(p).is_some()).count() as u64).min(self.budget) as usize;
        if wanted == 0 {
            return;
        }
        self.budget -= wanted as u64;
        let now_ns = self.now_ns;
        let mut selected = pkts.iter().filter_map(|p| select(p).map(|d| (p, d)));
        let written = self
            .ring
            .push_burst(wanted, |_, slot| match selected.next() {
                Some((pkt, drop)) => fill(slot, dir, drop, now_ns, pool, pkt),
                // `wanted` counted exactly the selected packets: never reached.
                None => 0,
            });
        self.stats
            .captured
            .fetch_add(written as u64, Ordering::Relaxed);
        if written < wanted {
            self.stats
                .lost
                .fetch_add((wanted - written) as u64, Ordering::Relaxed);
        }
    }

    /// At the start of a burst from `port`: notes the clock, copies the burst if received
    /// frames are captured, and says whether its drops are.
    #[inline]
    pub(crate) fn begin_burst(
        &mut self,
        port: PortId,
        pkts: &[Packet],
        pool: &FramePool,
        now_ns: u64,
    ) -> bool {
        self.now_ns = now_ns;
        if port != self.spec.port || self.budget == 0 {
            return false;
        }
        if self.spec.directions.contains(Directions::RX) {
            self.take(Directions::RX, pkts, pool, |_| Some((0, 0)));
        }
        self.spec.directions.contains(Directions::DROP)
    }

    /// Before the output stage: copies the packets of the burst that a stage dropped,
    /// with the stage and reason.
    pub(crate) fn drops(&mut self, pkts: &[Packet], pool: &FramePool) {
        self.take(Directions::DROP, pkts, pool, |p| match p.meta.next {
            Next::Drop(reason, stage) => Some((stage as u8, reason as u8)),
            _ => None,
        });
    }

    /// A frame dropped after the burst's drops were copied: in the output stage (a
    /// transmit ring full, a port not attached, a handoff ring full, a refused flood
    /// copy, no headroom for a tag) or among what a stage sends after its burst. Copied
    /// when drops are captured and it came in on the port, or (`out`) was refused on its
    /// way out of it. Out of line: drops are the exception.
    #[cold]
    #[inline(never)]
    pub(crate) fn dropped_late(
        &mut self,
        pkt: &Packet,
        out: Option<PortId>,
        pool: &FramePool,
        stage: Stage,
        reason: DropReason,
    ) {
        let port = self.spec.port;
        if self.budget == 0
            || !self.spec.directions.contains(Directions::DROP)
            || (pkt.in_port != port && out != Some(port))
        {
            return;
        }
        self.take(Directions::DROP, core::slice::from_ref(pkt), pool, |_| {
            Some((stage as u8, reason as u8))
        });
    }

    /// Before a transmit batch goes to `port`: copies it if sent frames are captured.
    #[inline]
    pub(crate) fn transmit(&mut self, port: PortId, pkts: &[Packet], pool: &FramePool) {
        if port == self.spec.port && self.spec.directions.contains(Directions::TX) {
            self.take(Directions::TX, pkts, pool, |_| Some((0, 0)));
        }
    }
}

/// One frame read back from a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapturedFrame<'a> {
    /// Received, sent or dropped.
    pub direction: Directions,
    /// For a drop, the stage that made it and why.
    pub drop: Option<(Stage, DropReason)>,
    /// The frame's length on the wire (before the snap length cut it).
    pub orig_len: u32,
    /// The worker's clock when it was copied, in nanoseconds.
    pub timestamp_ns: u64,
    /// Its first bytes, up to the snap length.
    pub data: &'a [u8],
}

impl CapturedFrame<'_> {
    fn parse(slot: &[u8]) -> Option<CapturedFrame<'_>> {
        let header = slot.get(..HEADER)?;
        let direction = Directions::from_bits(header[0])?;
        let drop = if direction == Directions::DROP {
            Some((
                Stage::from_index(usize::from(header[1]))?,
                *DropReason::ALL.get(usize::from(header[2]))?,
            ))
        } else {
            None
        };
        Some(CapturedFrame {
            direction,
            drop,
            orig_len: u32::from_le_bytes(header[4..8].try_into().ok()?),
            timestamp_ns: u64::from_le_bytes(header[8..16].try_into().ok()?),
            data: &slot[HEADER..],
        })
    }
}

impl CaptureReader {
    /// Offers up to `max` captured frames in order to `take`, which returns false to leave
    /// that frame (and those after it) for later. Returns how many were taken.
    pub fn drain(&mut self, max: usize, mut take: impl FnMut(CapturedFrame<'_>) -> bool) -> usize {
        self.ring
            .pop_burst(max, |slot| match CapturedFrame::parse(slot) {
                Some(frame) => take(frame),
                // Only the capturer writes slots, always whole: never reached.
                None => true,
            })
    }

    /// Frames copied into the ring so far.
    pub fn captured(&self) -> u64 {
        self.stats.captured.load(Ordering::Relaxed)
    }

    /// Frames lost to a full ring so far.
    pub fn lost(&self) -> u64 {
        self.stats.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_read_back_with_their_header() {
        let mut slot = [0u8; HEADER + 8];
        let mut pool = FramePool::with_frames(8).unwrap();
        let frame = pool.alloc_packet(&[7u8; 20]).unwrap();
        let used = fill(
            &mut slot,
            Directions::DROP,
            (Stage::PortSecurity as u8, DropReason::Runt as u8),
            42,
            &pool,
            &frame,
        );
        assert_eq!(used, HEADER + 8);
        let f = CapturedFrame::parse(&slot[..used]).unwrap();
        assert_eq!(f.direction, Directions::DROP);
        assert_eq!(f.drop, Some((Stage::PortSecurity, DropReason::Runt)));
        assert_eq!((f.orig_len, f.timestamp_ns), (20, 42));
        assert_eq!(f.data, &[7u8; 8]);
        // A chained (jumbo) frame: its length whole, its bytes up to the snap length.
        let jumbo: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let chained = pool.alloc_packet(&jumbo).unwrap();
        let mut slot = vec![0u8; HEADER + 3000];
        let used = fill(&mut slot, Directions::RX, (0, 0), 1, &pool, &chained);
        let f = CapturedFrame::parse(&slot[..used]).unwrap();
        assert_eq!(f.orig_len, 5000);
        assert_eq!(f.data, &jumbo[..3000]);
        assert!(CapturedFrame::parse(&[9u8; HEADER]).is_none());
    }

    #[test]
    fn directions_are_a_set() {
        let both = Directions::RX.with(Directions::DROP);
        assert!(both.contains(Directions::RX) && both.contains(Directions::DROP));
        assert!(!both.contains(Directions::TX));
        assert!(!both.contains(Directions::default()));
        assert_eq!(Directions::TX.name(), "tx");
    }
}
