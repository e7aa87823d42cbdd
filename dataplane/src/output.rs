//! The last stage: egress encapsulation, replication, transmit batching and the
//! accounting of every packet's fate.

use crate::buf::FramePool;
use crate::conntrack::ConnTable;
use crate::counters::WorkerCounters;
use crate::drop::DropReason;
use crate::gso::{GsoError, Segmenter};
use crate::handoff::HandoffOut;
use crate::packet::{Batch, Meta, Next, Packet, MAX_BURST};
use crate::pipeline::capture::Capturer;
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::{Port, PortId};
use crate::secgroup;
use crate::snapshot::Snapshot;
use crate::wire::{EtherType, VlanTag};

const TAG_LEN: u16 = 4;
/// Both MAC addresses: the bytes that move when a tag is pushed or popped.
const MACS_LEN: usize = 12;

struct Attached {
    port: Box<dyn Port>,
    pending: Batch,
    dirty: bool,
    /// The port takes TCP super-frames whole ([`Port::takes_gso`]); for the others they
    /// are segmented as their batch goes out.
    gso: bool,
}

/// The ports a worker drives, with a transmit batch per port.
pub struct PortSet {
    slots: Vec<Option<Attached>>,
    dirty: Vec<PortId>,
    tx_queue: u16,
    /// The frame capture, when one runs: here, because transmit batches go out from
    /// here (the stage table reaches it through the burst context for the rest).
    pub(crate) capture: Option<Box<Capturer>>,
    /// The port set of an explain pass, which has no ports: what would have been sent is
    /// recorded here instead (port and frame as it would leave).
    sink: Option<Vec<(PortId, Vec<u8>)>>,
    /// Frames for ports whose queues another worker owns go there (see
    /// [`crate::handoff`]); empty with one worker.
    pub(crate) handoff: HandoffOut,
    /// Frames for ports whose queue is moving between workers, in the order they were
    /// sent (see [`PortSet::hold`]); empty but while a move runs.
    held: Vec<Packet>,
}

/// Frames a worker holds at most for ports whose queue is moving: a move takes a few
/// housekeeping rounds (some hundreds of microseconds), so this is a port's frames for
/// that long at about 1 Mpps. Released at once, they go in one go into the port's
/// transmit ring (or the handoff ring to its new worker), 1024 slots for every driver:
/// held beyond half of that, they would overflow it. Held frames are pool frames, an
/// eighth of the spare the engine keeps beyond the AF_XDP rings' needs.
pub const MAX_HELD: usize = 512;

impl std::fmt::Debug for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|a| (i, a.port.name().to_string())))
            .collect();
        f.debug_struct("PortSet")
            .field("ports", &names)
            .field("tx_queue", &self.tx_queue)
            .finish()
    }
}

impl PortSet {
    /// No ports; frames go out on transmit queue `tx_queue` of every port.
    pub fn new(tx_queue: u16) -> Self {
        PortSet {
            slots: Vec::new(),
            dirty: Vec::new(),
            tx_queue,
            capture: None,
            sink: None,
            handoff: HandoffOut::default(),
            held: Vec::new(),
        }
    }

    /// No ports, and a record of what is queued for any port instead of a transmission:
    /// the port set of an explain pass.
    pub(crate) fn recorder(tx_queue: u16) -> Self {
        PortSet {
            sink: Some(Vec::with_capacity(8)),
            ..PortSet::new(tx_queue)
        }
    }

    /// What a recorder was given to send, as (port, frame).
    pub(crate) fn take_recorded(&mut self) -> Vec<(PortId, Vec<u8>)> {
        self.sink.take().unwrap_or_default()
    }

    /// Adds a port under `id`, replacing any port attached there before (returned).
    pub fn attach(&mut self, id: PortId, port: Box<dyn Port>) -> Option<Box<dyn Port>> {
        if self.slots.len() <= id.index() {
            self.slots.resize_with(id.index() + 1, || None);
        }
        self.dirty.reserve(self.slots.len());
        let new = Attached {
            gso: port.takes_gso(),
            port,
            pending: Batch::with_capacity(MAX_BURST),
            dirty: false,
        };
        self.slots[id.index()].replace(new).map(|old| {
            debug_assert!(old.pending.is_empty(), "detach after flushing");
            old.port
        })
    }

    /// Removes the port under `id` (call [`PortSet::flush`] first).
    pub fn detach(&mut self, id: PortId) -> Option<Box<dyn Port>> {
        let old = self.slots.get_mut(id.index())?.take()?;
        self.dirty.retain(|&p| p != id);
        Some(old.port)
    }

    /// One past the highest attached id.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no port is attached.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// The port attached under `id`.
    pub fn get(&self, id: PortId) -> Option<&dyn Port> {
        self.slots.get(id.index())?.as_ref().map(|a| &*a.port)
    }

    /// The port attached under `id`, writable.
    #[inline]
    pub fn get_mut(&mut self, id: PortId) -> Option<&mut (dyn Port + 'static)> {
        self.slots
            .get_mut(id.index())?
            .as_mut()
            .map(|a| &mut *a.port)
    }

    /// Every attached port with its id.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (PortId, &mut (dyn Port + 'static))> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.as_mut().map(|a| (PortId(i as u16), &mut *a.port)))
    }

    /// Every attached port, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (PortId, &(dyn Port + 'static))> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|a| (PortId(i as u16), &*a.port)))
    }

    /// Queues `pkt` for `out`; sends the port's batch as soon as it is full.
    #[inline(always)]
    pub(crate) fn enqueue(
        &mut self,
        pool: &mut FramePool,
        counters: &WorkerCounters,
        out: PortId,
        pkt: Packet,
    ) {
        let Some(Some(a)) = self.slots.get_mut(out.index()) else {
            return self.enqueue_elsewhere(pool, counters, out, pkt);
        };
        if !a.dirty {
            a.dirty = true;
            self.dirty.push(out);
        }
        // The batch is sent the moment it fills, so there is always room here.
        let queued = a.pending.push(pkt);
        debug_assert!(queued.is_ok());
        if a.pending.is_full() {
            send(a, out, self.tx_queue, pool, counters, &mut self.capture);
        }
    }

    /// Queues every packet of `pkts` for `out`, in order, as [`PortSet::enqueue`] would
    /// one by one, but copying them into the port's batch together (a burst is mostly
    /// runs of packets to one port).
    #[inline]
    pub(crate) fn enqueue_run(
        &mut self,
        pool: &mut FramePool,
        counters: &WorkerCounters,
        out: PortId,
        mut pkts: &[Packet],
    ) {
        let Some(Some(a)) = self.slots.get_mut(out.index()) else {
            for &pkt in pkts {
                self.enqueue_elsewhere(pool, counters, out, pkt);
            }
            return;
        };
        if !a.dirty {
            a.dirty = true;
            self.dirty.push(out);
        }
        loop {
            let queued = a.pending.extend_from_slice(pkts);
            pkts = &pkts[queued..];
            if a.pending.is_full() {
                send(a, out, self.tx_queue, pool, counters, &mut self.capture);
            }
            if pkts.is_empty() {
                return;
            }
        }
    }

    /// [`PortSet::enqueue`] for a port not attached here: recorded by an explain pass,
    /// handed to the worker that owns the port, or dropped. Out of line, so that the
    /// loops that enqueue stay as small as with one worker.
    #[cold]
    #[inline(never)]
    fn enqueue_elsewhere(
        &mut self,
        pool: &mut FramePool,
        counters: &WorkerCounters,
        out: PortId,
        pkt: Packet,
    ) {
        if let Some(sink) = self.sink.as_mut() {
            return record(sink, pool, out, pkt);
        }
        if self.handoff.holding(out.0) {
            return self.hold_frame(pool, counters, out, pkt);
        }
        if let Some(owner) = self.handoff.owner(out.0) {
            return self.hand_off(pool, counters, owner, out, pkt);
        }
        refused_at_port(
            pool,
            counters,
            &mut self.capture,
            pkt,
            out,
            DropReason::PortNotAttached,
        );
    }

    /// Sends every queued batch.
    #[inline]
    pub fn flush(&mut self, pool: &mut FramePool, counters: &WorkerCounters) {
        for out in self.dirty.drain(..) {
            if let Some(Some(a)) = self.slots.get_mut(out.index()) {
                a.dirty = false;
                if !a.pending.is_empty() {
                    send(a, out, self.tx_queue, pool, counters, &mut self.capture);
                }
            }
        }
        if self.handoff.has_pending() {
            self.flush_handoffs(pool, counters);
        }
    }

    /// Records that worker `owner` transmits on `port` for this one (`None`: none does).
    /// A port attached here is always sent on here.
    pub fn set_transmit_owner(&mut self, port: PortId, owner: Option<u16>) {
        self.handoff.set_owner(port.0, owner);
    }

    /// Holds the frames sent to `port` here from now on, in order, instead of handing them
    /// to the worker that polled it: its queue is moving to another worker. A port
    /// attached here is still sent on; once detached, its frames wait for
    /// [`PortSet::release_held`].
    pub fn hold(&mut self, port: PortId) {
        self.handoff.set_hold(port.0);
    }

    /// Ends the hold of `port`: from now on worker `owner` transmits on it (`None`: this
    /// one, or none), and the frames held for it are sent there, in the order they came.
    pub fn release_held(
        &mut self,
        pool: &mut FramePool,
        counters: &WorkerCounters,
        port: PortId,
        owner: Option<u16>,
    ) {
        self.handoff.set_owner(port.0, owner);
        if self.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.held);
        for pkt in held {
            match pkt.meta.next {
                Next::Output(out) if out == port => self.enqueue(pool, counters, out, pkt),
                _ => self.held.push(pkt),
            }
        }
        self.flush(pool, counters);
    }

    /// Frames held for moving ports.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Drops every held frame (the worker stops): counted, never leaked.
    pub(crate) fn drop_held(&mut self, pool: &mut FramePool, counters: &WorkerCounters) {
        for pkt in std::mem::take(&mut self.held) {
            let out = match pkt.meta.next {
                Next::Output(out) => Some(out),
                _ => None,
            };
            drop_in_output(
                pool,
                counters,
                &mut self.capture,
                pkt,
                out,
                Stage::Output,
                DropReason::PortNotAttached,
            );
        }
    }

    #[cold]
    #[inline(never)]
    fn hold_frame(
        &mut self,
        pool: &mut FramePool,
        counters: &WorkerCounters,
        out: PortId,
        mut pkt: Packet,
    ) {
        if self.held.len() >= MAX_HELD {
            refused_at_port(
                pool,
                counters,
                &mut self.capture,
                pkt,
                out,
                DropReason::QueueMoveHoldFull,
            );
            return;
        }
        pkt.meta.next = Next::Output(out);
        self.held.push(pkt);
    }

    /// Queues `pkt` for the worker that owns `out`'s queue; pushes that worker's batch
    /// when it is full.
    #[inline]
    fn hand_off(
        &mut self,
        pool: &mut FramePool,
        counters: &WorkerCounters,
        owner: u16,
        out: PortId,
        pkt: Packet,
    ) {
        if let Err(pkt) = self.handoff.queue(owner, out.0, pkt) {
            return drop_in_output(
                pool,
                counters,
                &mut self.capture,
                pkt,
                Some(out),
                Stage::Output,
                DropReason::InternalError,
            );
        }
        if self.handoff.full(owner) {
            push_handoff(&mut self.handoff, owner, pool, counters, &mut self.capture);
        }
    }

    #[cold]
    #[inline(never)]
    fn flush_handoffs(&mut self, pool: &mut FramePool, counters: &WorkerCounters) {
        let mut owners = [0u16; crate::handoff::MAX_WORKERS];
        let mut n = 0;
        for owner in self.handoff.dirty() {
            if n < owners.len() {
                owners[n] = owner;
                n += 1;
            }
        }
        for &owner in &owners[..n] {
            push_handoff(&mut self.handoff, owner, pool, counters, &mut self.capture);
        }
    }
}

/// Pushes the batch waiting for `owner` into its ring and counts the frames it refused
/// as drops (the ring is full: the owner is behind).
fn push_handoff(
    handoff: &mut HandoffOut,
    owner: u16,
    pool: &mut FramePool,
    counters: &WorkerCounters,
    capture: &mut Option<Box<Capturer>>,
) {
    let handed = handoff.push(owner, pool, |pkt, pool| {
        if let Some(capture) = capture.as_deref_mut() {
            let out = match pkt.meta.next {
                Next::Output(out) => Some(out),
                _ => None,
            };
            let reason = DropReason::HandoffRingFull;
            capture.dropped_late(pkt, out, pool, Stage::Output, reason);
        }
        counters.handoff_drops.inc();
        let port = (pkt.in_port != PortId::NONE).then_some(pkt.in_port);
        counters.count_drop(port, Stage::Output, DropReason::HandoffRingFull, 1);
        if let Some(pc) = counters.port(pkt.in_port) {
            pc.rx_dropped.inc();
        }
    });
    counters.handoffs.add(handed as u64);
}

/// Records a frame an explain pass would send, and frees it.
#[cold]
#[inline(never)]
fn record(sink: &mut Vec<(PortId, Vec<u8>)>, pool: &mut FramePool, out: PortId, pkt: Packet) {
    sink.push((out, pool.data(&pkt).to_vec()));
    pool.free_packet(&pkt);
}

#[inline]
fn send(
    a: &mut Attached,
    out: PortId,
    queue: u16,
    pool: &mut FramePool,
    counters: &WorkerCounters,
    capture: &mut Option<Box<Capturer>>,
) {
    let pending = a.pending.as_slice();
    // One branch per batch while no capture runs.
    if let Some(capture) = capture.as_deref_mut() {
        capture.transmit(out, pending, pool);
    }
    // Counted before the driver frees what it sends (a chain's length lives in the pool):
    // the first frames' lengths and, only when some packet is chained, the rest.
    let (mut bytes, mut chained) = (0u64, false);
    for p in pending {
        bytes += u64::from(p.len);
        chained |= p.chained;
    }
    if chained {
        if !a.gso && has_super_frame(pool, pending) {
            return send_segmented(a, out, queue, pool, counters, capture);
        }
        bytes += pool.tails_len(pending);
    }
    let sent = a.port.tx_burst(queue, pool, pending).min(pending.len());
    if sent < pending.len() {
        // What the driver refused stays ours: its bytes were not sent.
        bytes -= pending[sent..]
            .iter()
            .map(|p| pool.packet_len(p) as u64)
            .sum::<u64>();
    }
    counters.tx_packets.add(sent as u64);
    let pc = counters.port(out);
    if let Some(pc) = pc {
        pc.tx_packets.add(sent as u64);
        pc.tx_bytes.add(bytes);
    }
    let refused = &pending[sent..];
    if !refused.is_empty() {
        if let Some(capture) = capture.as_deref_mut() {
            for pkt in refused {
                let reason = DropReason::TxRingFull;
                capture.dropped_late(pkt, Some(out), pool, Stage::Output, reason);
            }
        }
        for pkt in refused {
            pool.free_packet(pkt);
        }
        counters.count_drop(
            Some(out),
            Stage::Output,
            DropReason::TxRingFull,
            refused.len() as u64,
        );
        if let Some(pc) = pc {
            pc.tx_dropped.add(refused.len() as u64);
        }
    }
    a.pending.clear();
}

/// Whether some packet of a batch with a chain in it is a TCP super-frame.
#[cold]
#[inline(never)]
fn has_super_frame(pool: &FramePool, pkts: &[Packet]) -> bool {
    pkts.iter()
        .any(|p| pool.offload(p).is_some_and(|o| o.is_gso()))
}

/// Sends `a`'s batch, which holds super-frames, to a port that does not take them: each
/// is replaced by its segments (made in fresh frames, all of them or none, see
/// [`crate::gso`]), the rest go as they are, in order; the batch goes out whenever it
/// fills. A super-frame that cannot be segmented is a counted drop. Each super-frame is
/// consumed and its segments originated, as the router's fragments are, so the worker's
/// conservation of packets holds.
#[cold]
#[inline(never)]
fn send_segmented(
    a: &mut Attached,
    out: PortId,
    queue: u16,
    pool: &mut FramePool,
    counters: &WorkerCounters,
    capture: &mut Option<Box<Capturer>>,
) {
    let mut held = [Packet::default(); MAX_BURST];
    let n = a.pending.len();
    held[..n].copy_from_slice(a.pending.as_slice());
    a.pending.clear();
    for pkt in &held[..n] {
        if !pool.offload(pkt).is_some_and(|o| o.is_gso()) {
            push_or_send(a, out, queue, pool, counters, capture, *pkt);
            continue;
        }
        let mut segmenter = match Segmenter::new(pool, pkt) {
            Ok(s) => s,
            Err(e) => {
                let reason = match e {
                    GsoError::PoolShort => DropReason::GsoPoolShort,
                    GsoError::Unsupported => DropReason::GsoUnsupported,
                };
                refused_at_port(pool, counters, capture, *pkt, out, reason);
                continue;
            }
        };
        let mut made = 0u64;
        while let Some(seg) = segmenter.next(pool) {
            made += 1;
            push_or_send(a, out, queue, pool, counters, capture, seg);
        }
        pool.free_packet(pkt);
        counters.consumed.inc();
        counters.originated.add(made);
        counters.gso_frames.inc();
        counters.gso_segments.add(made);
    }
    if !a.pending.is_empty() {
        send(a, out, queue, pool, counters, capture);
    }
}

/// Queues `pkt` in `a`'s batch, sending the batch when it fills (for [`send_segmented`]:
/// what it queues holds no super-frame, so the batch goes out the ordinary way).
fn push_or_send(
    a: &mut Attached,
    out: PortId,
    queue: u16,
    pool: &mut FramePool,
    counters: &WorkerCounters,
    capture: &mut Option<Box<Capturer>>,
    pkt: Packet,
) {
    // The batch is sent the moment it fills, so there is always room here.
    let _ = a.pending.push(pkt);
    if a.pending.is_full() {
        send(a, out, queue, pool, counters, capture);
    }
}

/// Frees a packet's frame and counts it as dropped by `stage` for `reason`, against the
/// port it came from. Out of line: drops are the exception, and the loops that call it
/// stay small.
#[cold]
#[inline(never)]
pub(crate) fn drop_packet(
    pool: &mut FramePool,
    counters: &WorkerCounters,
    pkt: Packet,
    stage: Stage,
    reason: DropReason,
) {
    pool.free_packet(&pkt);
    // Frames the worker made itself come from no port.
    let port = (pkt.in_port != PortId::NONE).then_some(pkt.in_port);
    counters.count_drop(port, stage, reason, 1);
    if let Some(pc) = counters.port(pkt.in_port) {
        pc.rx_dropped.inc();
    }
}

/// [`drop_in_output`] for a frame refused on its way to port `out`: the port counts it as
/// a transmit drop too.
#[cold]
#[inline(never)]
fn refused_at_port(
    pool: &mut FramePool,
    counters: &WorkerCounters,
    capture: &mut Option<Box<Capturer>>,
    pkt: Packet,
    out: PortId,
    reason: DropReason,
) {
    drop_in_output(
        pool,
        counters,
        capture,
        pkt,
        Some(out),
        Stage::Output,
        reason,
    );
    if let Some(pc) = counters.port(out) {
        pc.tx_dropped.inc();
    }
}

/// [`drop_packet`] for a drop decided inside the output stage, after the burst's drops
/// went to the capture: a capture of drops sees it too (`out`: the port it was refused
/// on its way to, for the transmit side's refusals).
#[cold]
#[inline(never)]
fn drop_in_output(
    pool: &mut FramePool,
    counters: &WorkerCounters,
    capture: &mut Option<Box<Capturer>>,
    pkt: Packet,
    out: Option<PortId>,
    stage: Stage,
    reason: DropReason,
) {
    if let Some(capture) = capture.as_deref_mut() {
        capture.dropped_late(&pkt, out, pool, stage, reason);
    }
    drop_packet(pool, counters, pkt, stage, reason);
}

/// [`drop_packet`] for a frame a stage drops outside its burst's packets (a flood copy it
/// made, a packet it held): a capture of drops sees it too.
#[cold]
#[inline(never)]
pub(crate) fn drop_held(cx: &mut BurstCtx<'_>, pkt: Packet, stage: Stage, reason: DropReason) {
    let (pool, counters) = (&mut *cx.pool, cx.counters);
    drop_in_output(
        pool,
        counters,
        &mut cx.ports.capture,
        pkt,
        None,
        stage,
        reason,
    );
}

/// Copies the drops among `pkts` into the capture: for what a stage sends after its
/// burst, which passed no copy of the burst's drops.
#[cold]
#[inline(never)]
pub(crate) fn capture_drops_of(cx: &mut BurstCtx<'_>, pkts: &[Packet]) {
    if let Some(capture) = cx.ports.capture.as_deref_mut() {
        for pkt in pkts {
            if let Next::Drop(reason, stage) = pkt.meta.next {
                capture.dropped_late(pkt, None, cx.pool, stage, reason);
            }
        }
    }
}

/// Counts a flooded replica that `out`'s security groups refused, as [`drop_packet`] would
/// have counted it had it been copied.
#[cold]
#[inline(never)]
fn count_refused_replica(counters: &WorkerCounters, in_port: PortId, reason: DropReason) {
    let port = (in_port != PortId::NONE).then_some(in_port);
    counters.count_drop(port, Stage::SgIngress, reason, 1);
    if let Some(pc) = counters.port(in_port) {
        pc.rx_dropped.inc();
    }
}

#[cold]
#[inline(never)]
fn count_no_buffers(counters: &WorkerCounters) {
    counters.count_drop(None, Stage::Flood, DropReason::NoBuffers, 1);
}

/// Rewrites the frame so it carries 802.1Q VID `vid` on the wire, or no tag for `None`.
/// Pushing uses the headroom in front of the frame; the received PCP is kept on a re-tag.
#[inline(always)]
pub fn set_egress_tag(
    pool: &mut FramePool,
    pkt: &mut Packet,
    vid: Option<u16>,
) -> Result<(), DropReason> {
    let tagged = pkt.meta.flags & Meta::VLAN != 0;
    match (tagged, vid) {
        (false, None) => {}
        (true, Some(vid)) => {
            let tci = (pkt.meta.tci & 0xf000) | vid;
            pkt.meta.tci = tci;
            VlanTag::new_unchecked(&mut pool.data_mut(pkt)[MACS_LEN + 2..]).set_tci(tci);
        }
        (true, None) => {
            // Moving the 12 MAC bytes through a local array compiles to two loads and two
            // stores; `copy_within` would call memmove for every packet.
            let data = pool.data_mut(pkt);
            let macs: [u8; MACS_LEN] = data[..MACS_LEN]
                .try_into()
                .expect("classified frames hold a MAC header");
            data[usize::from(TAG_LEN)..usize::from(TAG_LEN) + MACS_LEN].copy_from_slice(&macs);
            pkt.offset += TAG_LEN;
            pkt.len -= TAG_LEN;
            pkt.meta.flags &= !Meta::VLAN;
            pkt.meta.l3_offset -= TAG_LEN as u8;
        }
        (false, Some(vid)) => {
            if pkt.offset < TAG_LEN {
                return Err(DropReason::NoHeadroom);
            }
            pkt.offset -= TAG_LEN;
            pkt.len += TAG_LEN;
            let data = pool.data_mut(pkt);
            let tag_end = MACS_LEN + usize::from(TAG_LEN);
            let macs: [u8; MACS_LEN] = data[usize::from(TAG_LEN)..tag_end]
                .try_into()
                .expect("12 bytes");
            data[..MACS_LEN].copy_from_slice(&macs);
            data[MACS_LEN..MACS_LEN + 2].copy_from_slice(&EtherType::VLAN.0.to_be_bytes());
            VlanTag::new_unchecked(&mut data[MACS_LEN + 2..]).set_tci(vid);
            pkt.meta.flags |= Meta::VLAN;
            pkt.meta.tci = vid;
            pkt.meta.l3_offset += TAG_LEN as u8;
        }
    }
    Ok(())
}

/// The output stage: the end of every burst.
#[derive(Clone, Copy, Debug, Default)]
pub struct Output;

impl BurstStage for Output {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::Output
    }

    /// Everything: a packet still pending for a stage that did not run is a bug, dropped
    /// here as `internal_error` rather than leaked.
    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::ALL
    }

    #[inline(always)]
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        Outcome {
            packets: output(cx, pkts),
            produced: Pending::NONE,
        }
    }
}

/// Sends, floods or drops every packet of a processed burst; returns how many were sent
/// to one port (the flooded ones are counted under [`Stage::Flood`] here). After this,
/// the worker owns none of their frames any more (queued frames belong to the port
/// batches).
#[inline]
pub fn output(cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> u32 {
    let (snap, counters) = (cx.snap, cx.counters);
    let (pool, ports) = (&mut *cx.pool, &mut *cx.ports);
    let (conns, conns6, now, dry_run) = (
        &mut *cx.conns,
        &mut *cx.conns6,
        u64::from(cx.now_secs),
        cx.dry_run,
    );
    let mut unicast = 0;
    let mut flooded = 0;
    // A burst is mostly runs of one flow: its egress tag is looked up once per run.
    // The key packs (port, network) into one word: one compare per packet.
    let mut last_key = u32::MAX;
    let mut last_vid = None;
    let mut last_via = PortId(0);
    // The packets from `run_start` up to the one being looked at go to `run_via` and are
    // queued together when the run ends (at another port, at a packet that is not
    // unicast, or with the burst).
    let mut run_start = 0;
    let mut run_via = PortId::NONE;
    let mut i = 0;
    while i < pkts.len() {
        let at = i;
        i += 1;
        let pkt = &mut pkts[at];
        // Unicast first: it is most packets, and testing for it alone keeps the common
        // case off the dispatch over every other variant.
        if let Next::Output(out) = pkt.meta.next {
            unicast += 1;
            let network = pkt.meta.network;
            let key = u32::from(out.0) << 16 | u32::from(network.0);
            if key != last_key {
                last_key = key;
                (last_vid, last_via) = snap.egress(out, network);
            }
            match set_egress_tag(pool, pkt, last_vid) {
                Ok(()) => {
                    if last_via != out {
                        crate::trunk::count_subport_tx(counters, pool, out, pkt);
                    }
                    if last_via != run_via {
                        if run_start < at {
                            ports.enqueue_run(pool, counters, run_via, &pkts[run_start..at]);
                        }
                        run_start = at;
                        run_via = last_via;
                    }
                    if last_vid.is_none() && last_via == out {
                        // The packets after it that go the same way untagged need no
                        // more than joining the run: the common case, kept to a few
                        // compares per packet.
                        let same = pkts[i..]
                            .iter()
                            .take_while(|p| {
                                p.meta.next == Next::Output(out)
                                    && p.meta.network == network
                                    && p.meta.flags & Meta::VLAN == 0
                            })
                            .count();
                        i += same;
                        unicast += same as u32;
                    }
                    continue;
                }
                Err(reason) => {
                    let pkt = *pkt;
                    if run_start < at {
                        ports.enqueue_run(pool, counters, run_via, &pkts[run_start..at]);
                    }
                    (run_start, run_via) = (i, PortId::NONE);
                    drop_in_output(
                        pool,
                        counters,
                        &mut ports.capture,
                        pkt,
                        Some(out),
                        Stage::Output,
                        reason,
                    );
                    continue;
                }
            }
        }
        // Whatever this packet becomes is queued after the run before it.
        if run_start < at {
            ports.enqueue_run(pool, counters, run_via, &pkts[run_start..at]);
        }
        (run_start, run_via) = (i, PortId::NONE);
        let pkt = &mut pkts[at];
        match pkt.meta.next {
            // Taken above; kept so that the match stays exhaustive without a panic.
            Next::Output(out) => {
                unicast += 1;
                emit(snap, pool, ports, counters, pkt, out);
            }
            Next::Flood => {
                flooded += 1;
                if snap.security_groups().any() {
                    flood_filtered(
                        snap, pool, ports, counters, pkt, conns, conns6, now, dry_run,
                    );
                } else {
                    flood(snap, pool, ports, counters, pkt);
                }
            }
            Next::Drop(reason, stage) => drop_packet(pool, counters, *pkt, stage, reason),
            Next::Consumed | Next::Waiting => {}
            Next::Classify | Next::L2 | Next::Route(_) | Next::Arp | Next::SlowPath => {
                debug_assert!(false, "packet left the pipeline unfinished: {pkt:?}");
                drop_in_output(
                    pool,
                    counters,
                    &mut ports.capture,
                    *pkt,
                    None,
                    Stage::Output,
                    DropReason::InternalError,
                );
            }
        }
    }
    if run_start < pkts.len() {
        ports.enqueue_run(pool, counters, run_via, &pkts[run_start..]);
    }
    if flooded > 0 {
        let i = Stage::Flood as usize;
        counters.stage_calls[i].inc();
        counters.stage_packets[i].add(flooded);
    }
    unicast
}

#[inline(always)]
fn emit(
    snap: &Snapshot,
    pool: &mut FramePool,
    ports: &mut PortSet,
    counters: &WorkerCounters,
    pkt: &mut Packet,
    out: PortId,
) {
    let (vid, via) = snap.egress(out, pkt.meta.network);
    emit_tagged(pool, ports, counters, pkt, out, vid, via);
}

/// Tags `pkt` with `vid` (its egress tag on `out`) and queues it on `via`, the port that
/// transmits for `out` (its trunk's parent for a subport).
#[inline(always)]
fn emit_tagged(
    pool: &mut FramePool,
    ports: &mut PortSet,
    counters: &WorkerCounters,
    pkt: &mut Packet,
    out: PortId,
    vid: Option<u16>,
    via: PortId,
) {
    match set_egress_tag(pool, pkt, vid) {
        Ok(()) if via != out => {
            crate::trunk::count_subport_tx(counters, pool, out, pkt);
            ports.enqueue(pool, counters, via, *pkt)
        }
        Ok(()) => ports.enqueue(pool, counters, out, *pkt),
        Err(reason) => drop_in_output(
            pool,
            counters,
            &mut ports.capture,
            *pkt,
            Some(out),
            Stage::Output,
            reason,
        ),
    }
}

/// Replicates a packet to every port of its network except the one it came from (a routed
/// packet came from another network, so none is skipped). The original goes to the last
/// port, so a frame with one target is never copied. When some port has security groups,
/// [`flood_filtered`] does this instead, with a check per copy.
fn flood(
    snap: &Snapshot,
    pool: &mut FramePool,
    ports: &mut PortSet,
    counters: &WorkerCounters,
    pkt: &mut Packet,
) {
    let targets = snap.flood_ports(pkt.meta.network);
    let skip = flood_skip(pkt);
    let mut remaining = targets.iter().filter(|&&p| p != skip).count();
    if remaining == 0 {
        return drop_in_output(
            pool,
            counters,
            &mut ports.capture,
            *pkt,
            None,
            Stage::Flood,
            DropReason::NoFloodTargets,
        );
    }
    for &out in targets {
        if out == skip {
            continue;
        }
        remaining -= 1;
        if remaining == 0 {
            return emit(snap, pool, ports, counters, pkt, out);
        }
        // A copy is a new frame to account for, whether or not it could be made.
        counters.replicas.inc();
        match pool.clone_packet(pkt) {
            Some(mut copy) => emit(snap, pool, ports, counters, &mut copy, out),
            None => count_no_buffers(counters),
        }
    }
}

/// The port a flood skips: the input port, unless the packet was routed (it came from
/// another network, so none is skipped).
#[inline(always)]
fn flood_skip(pkt: &Packet) -> PortId {
    if pkt.meta.flags & Meta::ROUTED != 0 {
        PortId::NONE
    } else {
        pkt.in_port
    }
}

/// [`flood`] when some port has security groups: a copy for a port whose groups refuse
/// it is counted as made and dropped (with the reason, under `sg_ingress`), without
/// copying the frame; the others go out.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn flood_filtered(
    snap: &Snapshot,
    pool: &mut FramePool,
    ports: &mut PortSet,
    counters: &WorkerCounters,
    pkt: &mut Packet,
    conns: &mut ConnTable,
    conns6: &mut ConnTable<crate::conntrack::FlowKey6>,
    now: u64,
    dry_run: bool,
) {
    let targets = snap.flood_ports(pkt.meta.network);
    let skip = flood_skip(pkt);
    let mut remaining = targets.iter().filter(|&&p| p != skip).count();
    if remaining == 0 {
        return drop_in_output(
            pool,
            counters,
            &mut ports.capture,
            *pkt,
            None,
            Stage::Flood,
            DropReason::NoFloodTargets,
        );
    }
    for &out in targets {
        if out == skip {
            continue;
        }
        remaining -= 1;
        let (data, beyond) = (pool.data(pkt), pool.tail_len(pkt));
        let verdict = secgroup::filter_ingress(
            snap, conns, conns6, now, out, data, beyond, &pkt.meta, dry_run,
        );
        if remaining == 0 {
            return match verdict {
                Ok(()) => emit(snap, pool, ports, counters, pkt, out),
                Err(reason) => drop_in_output(
                    pool,
                    counters,
                    &mut ports.capture,
                    *pkt,
                    None,
                    Stage::SgIngress,
                    reason,
                ),
            };
        }
        counters.replicas.inc();
        if let Err(reason) = verdict {
            // The copy is not made: the capture is given the frame it would have been.
            if let Some(capture) = ports.capture.as_deref_mut() {
                capture.dropped_late(pkt, None, pool, Stage::SgIngress, reason);
            }
            count_refused_replica(counters, pkt.in_port, reason);
            continue;
        }
        match pool.clone_packet(pkt) {
            Some(mut copy) => emit(snap, pool, ports, counters, &mut copy, out),
            None => count_no_buffers(counters),
        }
    }
}
