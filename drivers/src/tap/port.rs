//! [`TapPort`]: the [`Port`] implementation on a [`TapQueue`], and its counters.
//!
//! Receive strips the virtio-net header (completing a checksum it says is partial) and
//! copies the frame into a pool frame; transmit copies a pool frame behind a zeroed
//! header. On a port that negotiated TSO, a TCP super-frame keeps its GSO state: it
//! becomes a chain whose [`Offload`] says so, its checksum left partial, and a
//! super-frame sent is written whole behind a header that says the same (the pipeline
//! segments super-frames only for ports that do not take them: [`Port::takes_gso`]).
//! Every frame that does not make it is counted with its reason.

use pollux_dataplane::buf::{FrameId, FramePool, MAX_CHAIN_LEN};
use pollux_dataplane::gso;
use pollux_dataplane::packet::{Batch, Offload, Packet};
use pollux_dataplane::port::{Port, PortStats};

use super::device::{Origin, TapDevice};
use super::queue::{Dir, QueueConfig, TapQueue};
use super::rx::{classify_read, ReadOutcome, RxDrop};
use super::vnet::{self, VnetHdr, VNET_HDR_LEN};

/// Geometry of a tap port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TapPortConfig {
    /// Reads posted ahead.
    pub rx_slots: u32,
    /// Writes in flight at most.
    pub tx_slots: u32,
}

impl TapPortConfig {
    /// The geometry of a port that negotiated TSO: its slots hold a 64 KiB super-frame
    /// (65,600 bytes each). Reads stay at 256 posted (with 128, bursts of small frames,
    /// UDP at 200 Mbit/s, overflowed the tap's queue: thousands lost in 2 s, where 256
    /// lose a few hundred at most); writes are 128, which hold far more bytes than the
    /// default's 256 plain frames: 25.2 MB of slots per queue (33.6 MB at 256 + 256).
    pub const TSO: TapPortConfig = TapPortConfig {
        rx_slots: 256,
        tx_slots: 128,
    };

    /// The geometry for `device`: [`TapPortConfig::TSO`] when it negotiated TSO.
    pub fn for_device(device: &TapDevice) -> TapPortConfig {
        if device.tso {
            Self::TSO
        } else {
            Self::default()
        }
    }
}

impl Default for TapPortConfig {
    fn default() -> Self {
        // 256 each: four bursts of 64 in either direction, 1 MiB of slots in all. Measured
        // on TAP<->TAP TCP: 16 or 64 posted reads drain the tap too slowly per kernel
        // entry (the tap's queue overflows), 512 or 1024 cost more than they bring (every
        // posted read sits on the tap's wait queue, and a wake-up visits them all).
        TapPortConfig {
            rx_slots: 256,
            tx_slots: 256,
        }
    }
}

/// Drops and events the pipeline cannot see, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TapCounters {
    /// Frames with a GSO type the port did not negotiate (any, without TSO; UDP).
    rx_gso_dropped: u64,
    /// TCP super-frames received whole (TSO).
    rx_gso_frames: u64,
    /// TCP super-frames written whole (TSO).
    tx_gso_frames: u64,
    /// Super-frames whose headers did not say where to segment them: dropped.
    tx_gso_bad: u64,
    /// Frames whose partial checksum was completed here.
    rx_csum_completed: u64,
    /// Frames whose checksum offsets lie outside the frame.
    rx_bad_csum_offsets: u64,
    /// Reads shorter than the virtio-net header.
    rx_short: u64,
    /// Frames larger than a slot or a pool frame.
    rx_oversize: u64,
    /// Reads that failed (the tap detached, deleted, ...).
    rx_errors: u64,
    /// Writes that failed (tap down, deleted, ...).
    tx_errors: u64,
    /// Writes the kernel took only partly.
    tx_short: u64,
    /// Frames larger than a slot.
    tx_oversize: u64,
    /// Bursts cut short because every transmit slot was in flight.
    tx_slots_exhausted: u64,
    /// Completions for no operation in flight.
    bogus_completions: u64,
    /// Submits the kernel refused.
    submit_errors: u64,
}

/// A port on one tap queue. See the module documentation.
#[derive(Debug)]
pub struct TapPort {
    name: String,
    origin: Origin,
    queue: TapQueue,
    stats: PortStats,
    counters: TapCounters,
    /// The last reads failed and none has brought a frame since (a deleted tap): reads
    /// are posted again one at a time, as probes, not all at once.
    rx_failing: bool,
    /// TSO was negotiated: super-frames come in and go out whole.
    tso: bool,
}

impl TapPort {
    /// A port on `device`, with slots sized for frames of up to `max_frame` bytes (those
    /// larger than a pool frame are chained in the pool), or a 64 KiB super-frame when the
    /// device negotiated TSO: reads are posted at once.
    pub fn new(
        device: TapDevice,
        max_frame: usize,
        config: TapPortConfig,
    ) -> std::io::Result<TapPort> {
        let max_frame = if device.tso {
            max_frame.max(MAX_CHAIN_LEN)
        } else {
            max_frame
        };
        // Rounded to a cache line so slots do not share one.
        let slot_size = (VNET_HDR_LEN + max_frame).next_multiple_of(64) as u32;
        let queue = TapQueue::new(
            device.fd,
            QueueConfig {
                rx_slots: config.rx_slots,
                tx_slots: config.tx_slots,
                slot_size,
            },
        )?;
        Ok(TapPort {
            name: device.name,
            origin: device.origin,
            queue,
            stats: PortStats::default(),
            counters: TapCounters::default(),
            rx_failing: false,
            tso: device.tso,
        })
    }

    /// How the port came by its tap.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    fn reap(&mut self) {
        let reaped = self.queue.reap();
        self.counters.bogus_completions += reaped.bogus;
        while let Some((slot, result)) = self.queue.pop_done(Dir::Tx) {
            match result {
                r if r < 0 => self.counters.tx_errors += 1,
                // A tap takes a frame whole or not at all; anything else is worth seeing.
                r if (r as usize) < VNET_HDR_LEN => self.counters.tx_short += 1,
                _ => {}
            }
            self.queue.release(Dir::Tx, slot);
        }
    }

    fn submit(&mut self) {
        if self.queue.submit().is_err() {
            // The entries stay queued and go with the next submit.
            self.counters.submit_errors += 1;
        }
    }

    /// Turns completed read `slot` (`result` bytes or `-errno`) into a packet in `pool`.
    /// `Err(())` leaves the slot in place: the pool is empty (back-pressure, not loss).
    fn receive(
        &mut self,
        slot: u32,
        result: i32,
        pool: &mut FramePool,
    ) -> Result<Option<Packet>, ()> {
        let Some(bytes) = self.queue.slot_mut(Dir::Rx, slot) else {
            return Ok(None);
        };
        let (hdr, len) = match classify_read(bytes, result, MAX_CHAIN_LEN, self.tso) {
            ReadOutcome::Frame { hdr, len } => {
                self.rx_failing = false;
                (hdr, len)
            }
            ReadOutcome::Retry => return Ok(None),
            ReadOutcome::Drop(why) => {
                self.rx_failing |= why == RxDrop::Error;
                let c = &mut self.counters;
                *match why {
                    RxDrop::Error => &mut c.rx_errors,
                    RxDrop::Short => &mut c.rx_short,
                    RxDrop::Oversize => &mut c.rx_oversize,
                    RxDrop::Gso => &mut c.rx_gso_dropped,
                    RxDrop::BadCsumOffsets => &mut c.rx_bad_csum_offsets,
                } += 1;
                return Ok(None);
            }
        };
        // Back-pressure before anything is changed: the frame is read again next time.
        if pool.available() < pool.frames_for(len) {
            return Err(());
        }
        let frame = &mut bytes[VNET_HDR_LEN..VNET_HDR_LEN + len];
        if hdr.is_gso() {
            // Carried whole with its state, the checksum left partial: segmented (and
            // checksummed) only where its egress cannot take it.
            self.counters.rx_gso_frames += 1;
            let offload = Offload {
                flags: hdr.flags,
                gso_type: hdr.gso_type,
                hdr_len: hdr.hdr_len,
                gso_size: hdr.gso_size,
                csum_start: hdr.csum_start,
                csum_offset: hdr.csum_offset,
            };
            return pool.alloc_offloaded(frame, offload).map(Some).ok_or(());
        }
        // Completed in the slot, where the frame is in one piece (a jumbo frame is chained
        // in the pool). `classify_read` checked the offsets against the frame, so this
        // completes.
        if hdr.needs_csum() && vnet::complete_checksum(frame, hdr.csum_start, hdr.csum_offset) {
            self.counters.rx_csum_completed += 1;
        }
        // Larger than a pool frame: chained over several. Cannot fail: the frames are
        // there and `classify_read` bounded the length.
        pool.alloc_packet(frame).map(Some).ok_or(())
    }
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn rx_burst(&mut self, _queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize {
        if self.queue.kick().is_err() {
            self.counters.submit_errors += 1;
        }
        self.reap();
        let (mut added, mut bytes, mut dropped) = (0usize, 0u64, 0u64);
        while batch.remaining() > 0 {
            let Some((slot, result)) = self.queue.peek_done(Dir::Rx) else {
                break;
            };
            match self.receive(slot, result, pool) {
                // Out of pool frames: the frame stays in its slot, at the head of the done
                // queue, for the next burst (back-pressure, not loss).
                Err(()) => break,
                Ok(found) => {
                    let _ = self.queue.pop_done(Dir::Rx);
                    self.queue.release(Dir::Rx, slot);
                    match found {
                        Some(pkt) => {
                            bytes += u64::from(pkt.len);
                            // Cannot fail: the loop runs while the batch has room.
                            let _ = batch.push(pkt);
                            added += 1;
                        }
                        None if result >= 0 => dropped += 1,
                        // A failed read is reposted on the housekeeping cadence.
                        None => {}
                    }
                }
            }
        }
        // Posted again now, submitted by the next kick or transmit: one syscall per burst.
        if added > 0 || dropped > 0 {
            self.queue.post_reads(usize::MAX);
        }
        self.stats.rx_packets += added as u64;
        self.stats.rx_bytes += bytes;
        self.stats.rx_dropped += dropped;
        added
    }

    fn tx_burst(&mut self, _queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        self.reap();
        let (mut sent, mut oversize, mut bad) = (0usize, 0u64, 0u64);
        let mut bytes = 0u64;
        for pkt in pkts {
            let Some(slot) = self.queue.take_tx() else {
                self.counters.tx_slots_exhausted += 1;
                break;
            };
            let len = pool.packet_len(pkt);
            let Some(out) = self.queue.slot_mut(Dir::Tx, slot) else {
                self.queue.release(Dir::Tx, slot);
                break;
            };
            let total = VNET_HDR_LEN + len;
            if total > out.len() {
                oversize += 1;
                self.queue.release(Dir::Tx, slot);
                pool.free_packet(pkt);
                sent += 1;
                continue;
            }
            let gso = if self.tso { pool.offload(pkt) } else { None };
            let hdr = match gso {
                Some(off) if off.is_gso() => match gso_header(pool, pkt, &off) {
                    Some(hdr) => hdr,
                    None => {
                        self.counters.tx_gso_bad += 1;
                        bad += 1;
                        self.queue.release(Dir::Tx, slot);
                        pool.free_packet(pkt);
                        sent += 1;
                        continue;
                    }
                },
                _ => VnetHdr::default(),
            };
            if hdr.gso_type != 0 {
                self.counters.tx_gso_frames += 1;
            }
            // Cannot fail: the slot is longer than `total`.
            let _ = hdr.emit(out);
            pool.copy_out(pkt, 0, &mut out[VNET_HDR_LEN..total]);
            if !self.queue.queue_write(slot, total as u32) {
                self.queue.release(Dir::Tx, slot);
                break;
            }
            bytes += len as u64;
            pool.free_packet(pkt);
            sent += 1;
        }
        self.submit();
        self.counters.tx_oversize += oversize;
        self.stats.tx_packets += sent as u64 - oversize - bad;
        self.stats.tx_bytes += bytes;
        sent
    }

    fn housekeeping(&mut self, _pool: &mut FramePool) {
        self.reap();
        // Slots whose read failed were released without a repost: post them here, on the
        // housekeeping cadence, and only one while reads keep failing, so a deleted tap
        // costs one failed read per round rather than a storm of them.
        self.queue
            .post_reads(if self.rx_failing { 1 } else { usize::MAX });
        self.submit();
    }

    fn stats(&self) -> PortStats {
        let c = &self.counters;
        let mut stats = self.stats.clone();
        let (rx_in_flight, tx_in_flight) = self.queue.in_flight();
        stats.extra = vec![
            ("rx_gso_dropped", c.rx_gso_dropped),
            ("rx_gso_frames", c.rx_gso_frames),
            ("tx_gso_frames", c.tx_gso_frames),
            ("tx_gso_bad", c.tx_gso_bad),
            ("tso", u64::from(self.tso)),
            ("rx_csum_completed", c.rx_csum_completed),
            ("rx_bad_csum_offsets", c.rx_bad_csum_offsets),
            ("rx_short", c.rx_short),
            ("rx_oversize", c.rx_oversize),
            ("rx_errors", c.rx_errors),
            ("tx_errors", c.tx_errors),
            ("tx_short", c.tx_short),
            ("tx_oversize", c.tx_oversize),
            ("tx_slots_exhausted", c.tx_slots_exhausted),
            ("bogus_completions", c.bogus_completions),
            ("submit_errors", c.submit_errors),
            ("rx_posted", rx_in_flight as u64),
            ("tx_in_flight", tx_in_flight as u64),
            ("fixed_buffers", u64::from(self.queue.fixed_buffers())),
        ];
        stats
    }

    fn takes_gso(&self) -> bool {
        self.tso
    }

    fn close(&mut self) -> Vec<FrameId> {
        // No pool frame is ever held between calls; only the slots need the kernel to let
        // go of them, which closing waits for (or leaks them if it cannot).
        self.queue.cancel_and_drain();
        Vec::new()
    }
}

/// The virtio-net header of super-frame `pkt` as it leaves: its GSO type and size, and
/// its offsets read from the frame as it is now (a tag pushed or popped since it came in
/// moved them); `None` when its headers do not say where to segment it.
fn gso_header(pool: &FramePool, pkt: &Packet, off: &Offload) -> Option<VnetHdr> {
    let layout = gso::layout(pool, pkt, off).ok()?;
    Some(VnetHdr {
        flags: vnet::FLAG_NEEDS_CSUM,
        gso_type: off.gso_type,
        hdr_len: layout.payload_at as u16,
        gso_size: off.gso_size,
        csum_start: layout.l4 as u16,
        csum_offset: 16,
        num_buffers: 0,
    })
}
