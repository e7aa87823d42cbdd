//! The generator and the sink, on AF_XDP (the `pollux-drivers` sockets), driven by one
//! thread pinned to the generator's CPU.
//!
//! The generator sends stamped frames paced by a [`Pacer`] (no sleeping per packet: the
//! thread spins, sending whatever is due and receiving whatever arrived). The sink's
//! socket sits behind Pollux's XSKMAP redirect program on the sink's `eth0`; every frame
//! it receives is checked ([`SeqTracker`]) and its latency recorded (`hdrhistogram`).
//! "Sent" counts frames the kernel completed on the generator's tx ring: a veth that
//! cannot take a frame pushes back instead of dropping it, so those frames wait on the
//! ring; a rate the path cannot take shows up as frames written off by the pacer.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use pollux_dataplane::buf::FramePool;
use pollux_dataplane::packet::{Batch, Packet};
use pollux_dataplane::port::Port;
use pollux_drivers::xdp::{XdpAttachment, XdpMode, XdpProgram};
use pollux_drivers::xsk::{AfXdpPort, Umem, XskConfig, XskSocket};

use super::frame;
use super::pacing::Pacer;
use super::seq::SeqTracker;
use super::sys::{interrupted, interrupted_error};
use pollux_testkit::netns::Netns;

const BURST: usize = 64;
/// Frames the generator may send at once to catch up after falling behind: one burst,
/// well below a veth's 256-entry ring, so catching up never overflows the ring by itself.
const MAX_CATCH_UP: u64 = BURST as u64;
/// Fraction of a trial's frames the generator may fall short by (its own limit, or
/// hiccups of a shared machine); beyond it the rate counts as not offered and the trial
/// fails. Results report the rate actually offered, never the rate asked for.
pub const MAX_NOT_OFFERED: f64 = 0.05;
/// Time after the last frame is sent during which the sink still waits for frames.
const DRAIN: Duration = Duration::from_millis(300);

/// One trial: offered rate, length, frame.
#[derive(Clone, Debug)]
pub struct TrialSpec {
    /// Offered rate, frames per second.
    pub rate_pps: f64,
    /// Trial length.
    pub secs: f64,
    /// Frame size on the wire (with FCS).
    pub frame_size: u16,
    /// VLAN the frames must carry at the sink (`None`: untagged).
    pub expect_vlan: Option<u16>,
    /// Addresses of the flow and what the sink must see of it.
    pub flow: Flow,
}

/// The generator's flow: where its frames go, and what the sink must see of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Destination MAC of the generator's frames: the sink's, or a router's.
    pub dst_mac: [u8; 6],
    /// IPv4 source address the generator sends from.
    pub src_ip: [u8; 4],
    /// IPv4 destination address.
    pub dst_ip: [u8; 4],
    /// Source address the frames must carry at the sink: `src_ip`, or what a NAT
    /// translates it to. Frames with another are counted (`bad_source`) and fail the trial.
    pub expect_src_ip: [u8; 4],
    /// Addresses the sink answers ARP requests for with its MAC (a router's next hop).
    pub sink_addrs: Vec<[u8; 4]>,
}

impl Default for Flow {
    /// Switching: from the generator's address to the sink's MAC, nothing translated.
    fn default() -> Flow {
        Flow {
            dst_mac: crate::compare::topology::SINK_MAC,
            src_ip: frame::SRC_IP,
            dst_ip: frame::DST_IP,
            expect_src_ip: frame::SRC_IP,
            sink_addrs: Vec::new(),
        }
    }
}

/// Latency percentiles in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    /// Frames measured.
    pub samples: u64,
    /// Median.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

impl Latency {
    /// Percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            samples: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }
}

/// What one trial measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TrialResult {
    /// Rate asked for.
    pub requested_pps: f64,
    /// Frames the generator sent (completed by the kernel), per second of the trial.
    pub offered_pps: f64,
    /// Frames received by the sink (unique) per second of the trial.
    pub received_pps: f64,
    /// Frames sent.
    pub sent: u64,
    /// Frames the pacer wrote off: the path pushed back and the rate was not offered.
    pub not_offered: u64,
    /// More than [`MAX_NOT_OFFERED`] of the frames were not offered: the trial says
    /// nothing about the device at the asked rate (it fails, whatever the loss).
    pub generator_limited: bool,
    /// Frames received, duplicates included.
    pub received: u64,
    /// Frames sent and never received.
    pub lost: u64,
    /// Duplicates received.
    pub duplicates: u64,
    /// Frames that arrived after a later one.
    pub reordered: u64,
    /// Frames with the wrong VLAN tag (or a tag where none was expected).
    pub bad_vlan: u64,
    /// Frames with another source address than [`Flow::expect_src_ip`] (not translated).
    pub bad_source: u64,
    /// The first wrong source address seen, dotted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrong_source: Option<String>,
    /// ARP requests the sink answered.
    pub arp_answered: u64,
    /// Frames at the sink that were not this trial's.
    pub foreign: u64,
    /// Length of the sending phase, seconds.
    pub secs: f64,
    /// Latency of every received frame of the trial.
    pub latency: Latency,
    /// Counters along the path that changed during the trial (drops, errors, packets).
    pub path: std::collections::BTreeMap<String, u64>,
}

impl TrialResult {
    /// Whether the generator offered (nearly) the whole rate: at most
    /// [`MAX_NOT_OFFERED`] of the trial's frames written off.
    pub fn offered_in_full(&self) -> bool {
        let wanted = self.sent + self.not_offered;
        wanted > 0 && self.not_offered as f64 <= MAX_NOT_OFFERED * wanted as f64
    }

    /// Whether the trial passes with at most `max_loss` of the frames sent lost (0 for
    /// the NDR): the rate was offered in full, and no frame arrived with a wrong tag or
    /// source address.
    pub fn passes(&self, max_loss: f64) -> bool {
        self.sent > 0
            && self.bad_vlan == 0
            && self.bad_source == 0
            && self.offered_in_full()
            && if max_loss == 0.0 {
                self.lost == 0
            } else {
                self.lost as f64 <= max_loss * self.sent as f64
            }
    }
}

/// Where trials run: a generator and a sink around the device under test.
pub trait TrafficPath {
    /// Sends `frame` from the sink (so learning switches learn the sink's MAC), and
    /// discards whatever arrives for a moment (answering ARP for `flow`'s sink addresses).
    fn prime(&mut self, frame: &[u8], flow: &Flow);
    /// Runs one trial. `progress` is called about every 100 ms with the frames sent and
    /// received so far.
    fn run_trial(
        &mut self,
        spec: &TrialSpec,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<TrialResult, String>;
    /// Counters of the generator's and the sink's own ends.
    fn counters(&self) -> std::collections::BTreeMap<String, u64>;
}

impl TrafficPath for Traffic {
    fn prime(&mut self, frame: &[u8], flow: &Flow) {
        Traffic::prime(self, frame, &flow.sink_addrs);
    }

    fn run_trial(
        &mut self,
        spec: &TrialSpec,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<TrialResult, String> {
        self.trial(spec, progress)
    }

    fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.socket_counters()
    }
}

/// The generator's and the sink's sockets, with their pools (one UMEM each).
pub struct Traffic {
    // Declaration order is drop order: ports and the XDP attachment before the pools
    // they use as UMEM (see `Umem::new`).
    gen: AfXdpPort,
    sink: AfXdpPort,
    _sink_xdp: XdpAttachment,
    gen_pool: Box<FramePool>,
    sink_pool: Box<FramePool>,
    clock: Instant,
    run_tag: u32,
    trials: u32,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("trials", &self.trials)
            .finish()
    }
}

impl Traffic {
    /// Opens the generator's socket on `eth0` of `gen_ns` and the sink's on `eth0` of
    /// `sink_ns` (with the redirect program). Each socket is made on this thread moved
    /// into its namespace, as the sockets share this thread's UMEMs.
    pub fn open(gen_ns: &Netns, sink_ns: &Netns) -> Result<Traffic, String> {
        let mut gen_pool = Box::new(FramePool::with_frames(8192).map_err(|e| e.to_string())?);
        let mut sink_pool = Box::new(FramePool::with_frames(8192).map_err(|e| e.to_string())?);
        // SAFETY: both UMEMs describe pools owned by the `Traffic` being built, whose
        // fields drop the ports (closing every socket) before the pools; frames are only
        // read or written through packets the ports handed out.
        let (gen_umem, sink_umem) = unsafe {
            (
                Umem::new(&gen_pool).map_err(|e| e.to_string())?,
                Umem::new(&sink_pool).map_err(|e| e.to_string())?,
            )
        };
        let gen_cfg = XskConfig {
            rx_size: 64,
            fill_size: 64,
            tx_size: 2048,
            comp_size: 2048,
            ..XskConfig::default()
        };
        let sink_cfg = XskConfig {
            rx_size: 4096,
            fill_size: 4096,
            tx_size: 64,
            comp_size: 64,
            ..XskConfig::default()
        };
        let gen_sock = gen_ns
            .run_here(|| XskSocket::new(&gen_umem, "eth0", 0, &gen_cfg))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("generator socket: {e}"))?;
        let (sink_xdp, sink_sock) = sink_ns
            .run_here(|| -> Result<_, String> {
                let xdp = XdpProgram::attach("eth0", XdpMode::Native, 1)
                    .map_err(|e| format!("sink XDP: {e}"))?;
                let sock = XskSocket::new(&sink_umem, "eth0", 0, &sink_cfg)
                    .map_err(|e| format!("sink socket: {e}"))?;
                xdp.register(0, sock.fd()).map_err(|e| e.to_string())?;
                Ok((xdp, sock))
            })
            .map_err(|e| e.to_string())??;
        let gen =
            AfXdpPort::new("gen", vec![gen_sock], &mut gen_pool).map_err(|e| e.to_string())?;
        let sink =
            AfXdpPort::new("sink", vec![sink_sock], &mut sink_pool).map_err(|e| e.to_string())?;
        Ok(Traffic {
            gen,
            sink,
            _sink_xdp: sink_xdp,
            gen_pool,
            sink_pool,
            clock: Instant::now(),
            run_tag: new_run_tag(),
            trials: 0,
        })
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    /// Sends `frame` from the sink (so learning switches learn the sink's MAC), and
    /// discards whatever arrives for a moment, answering ARP for `sink_addrs`.
    pub fn prime(&mut self, frame: &[u8], sink_addrs: &[[u8; 4]]) {
        for _ in 0..3 {
            self.send_from_sink(frame);
        }
        let until = Instant::now() + Duration::from_millis(50);
        let mut batch = Batch::with_capacity(BURST);
        while Instant::now() < until {
            self.sink.housekeeping(&mut self.sink_pool);
            self.discard(&mut batch, sink_addrs);
        }
    }

    fn send_from_sink(&mut self, frame: &[u8]) {
        if let Some((id, off)) = self.sink_pool.alloc_with(frame) {
            let pkt = Packet::received(id, off, frame.len() as u16);
            if self.sink.tx_burst(0, &mut self.sink_pool, &[pkt]) == 0 {
                self.sink_pool.free(id);
            }
        }
    }

    /// Answers `frame` if it is an ARP request for one of `sink_addrs`.
    fn answer_arp(&mut self, frame: &[u8], sink_addrs: &[[u8; 4]]) -> bool {
        let reply = frame::arp_reply(frame, sink_addrs, crate::compare::topology::SINK_MAC);
        if let Some(r) = &reply {
            self.send_from_sink(r);
        }
        reply.is_some()
    }

    fn discard(&mut self, batch: &mut Batch, sink_addrs: &[[u8; 4]]) {
        batch.clear();
        self.sink.rx_burst(0, &mut self.sink_pool, batch);
        for p in batch.as_slice() {
            if !sink_addrs.is_empty() {
                let data = self.sink_pool.data(p).to_vec();
                self.answer_arp(&data, sink_addrs);
            }
            self.sink_pool.free(p.frame);
        }
        batch.clear();
    }

    fn gen_completed(&self) -> u64 {
        self.gen
            .stats()
            .extra
            .iter()
            .find(|(k, _)| *k == "tx_completed")
            .map_or(0, |(_, v)| *v)
    }

    /// Runs one trial. `progress` is called about every 100 ms with the frames sent and
    /// received so far.
    pub fn trial(
        &mut self,
        spec: &TrialSpec,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<TrialResult, String> {
        self.trials += 1;
        let tag = self.run_tag | (self.trials & 0xffff);
        let flow = &spec.flow;
        let template = frame::build_ip(
            spec.frame_size,
            flow.dst_mac,
            crate::compare::topology::GEN_MAC,
            flow.src_ip,
            flow.dst_ip,
        );
        let total = Pacer::frames_for(spec.rate_pps, spec.secs).min(u64::from(u32::MAX));
        let mut tracker = SeqTracker::new(total);
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
        let (mut bad_vlan, mut foreign) = (0u64, 0u64);
        let (mut bad_source, mut wrong_source, mut arp_answered) = (0u64, None, 0u64);
        let completed_before = self.gen_completed();
        let mut batch = Batch::with_capacity(BURST);
        let mut out: Vec<Packet> = Vec::with_capacity(BURST);

        let start = self.now_ns();
        let mut pacer = Pacer::new(spec.rate_pps, start, total, MAX_CATCH_UP);
        let mut seq: u32 = 0;
        let hard_end = start + ((spec.secs * 2.0 + 5.0) * 1e9) as u64;
        let mut sent_done_at: Option<u64> = None;
        let mut next_progress = start + 100_000_000;
        loop {
            let now = self.now_ns();
            if interrupted() {
                return Err(interrupted_error());
            }
            if now > hard_end {
                break;
            }
            // Send what is due.
            if !pacer.done() {
                let due = pacer.due(now).min(BURST as u64) as usize;
                if due > 0 {
                    out.clear();
                    for _ in 0..due {
                        let Some((id, off)) = self.gen_pool.alloc_with(&template) else {
                            break;
                        };
                        let pkt = Packet::received(id, off, template.len() as u16);
                        frame::stamp(self.gen_pool.data_mut(&pkt), tag, seq, now);
                        seq = seq.wrapping_add(1);
                        out.push(pkt);
                    }
                    let n = self.gen.tx_burst(0, &mut self.gen_pool, &out);
                    for p in &out[n..] {
                        self.gen_pool.free(p.frame);
                    }
                    // Sequence numbers of refused frames are reused.
                    seq = seq.wrapping_sub((out.len() - n) as u32);
                    pacer.sent(n as u64);
                    if n < out.len() {
                        // The tx ring is full: `tx_burst` queued nothing new and so did not
                        // kick; housekeeping reaps completions and kicks the kernel.
                        self.gen.housekeeping(&mut self.gen_pool);
                    }
                } else {
                    self.gen.housekeeping(&mut self.gen_pool);
                }
            } else {
                self.gen.housekeeping(&mut self.gen_pool);
                let done_at = *sent_done_at.get_or_insert(now);
                let drained = self.gen_completed() - completed_before >= pacer.frames_sent();
                if drained && tracker.unique >= pacer.frames_sent() {
                    break;
                }
                if now > done_at + DRAIN.as_nanos() as u64 {
                    break;
                }
            }
            // Receive what arrived.
            batch.clear();
            let n = self.sink.rx_burst(0, &mut self.sink_pool, &mut batch);
            if n > 0 {
                let rx_now = self.now_ns();
                for p in batch.as_slice() {
                    match frame::parse(self.sink_pool.data(p)) {
                        Some(s) if s.tag == tag => {
                            tracker.record(u64::from(s.seq));
                            if s.vlan != spec.expect_vlan {
                                bad_vlan += 1;
                            }
                            if s.src_ip != flow.expect_src_ip {
                                bad_source += 1;
                                wrong_source.get_or_insert_with(|| dotted(s.src_ip));
                            }
                            let _ = hist.record(rx_now.saturating_sub(s.sent_ns).max(1));
                        }
                        _ if !flow.sink_addrs.is_empty() => {
                            let data = self.sink_pool.data(p).to_vec();
                            if self.answer_arp(&data, &flow.sink_addrs) {
                                arp_answered += 1;
                            } else {
                                foreign += 1;
                            }
                        }
                        _ => foreign += 1,
                    }
                    self.sink_pool.free(p.frame);
                }
            }
            if now >= next_progress {
                next_progress = now + 100_000_000;
                progress(pacer.frames_sent(), tracker.unique);
            }
        }
        let send_secs = (sent_done_at.unwrap_or_else(|| self.now_ns()) - start) as f64 / 1e9;
        let completed = self.gen_completed() - completed_before;
        Ok(TrialResult {
            bad_vlan,
            bad_source,
            wrong_source,
            arp_answered,
            foreign,
            ..trial_result(spec, send_secs, completed, 0, &pacer, &tracker, &hist)
        })
    }

    /// The NAPI instance the kernel marked on the sink's socket (`SO_INCOMING_NAPI_ID`):
    /// busy polling a socket polls that instance, and does nothing while it is 0.
    pub fn sink_napi_id(&self) -> Option<u32> {
        use std::os::fd::AsRawFd;
        const SO_INCOMING_NAPI_ID: libc::c_int = 56;
        let fd = self.sink.socket(0)?.fd().as_raw_fd();
        let mut value: libc::c_uint = 0;
        let mut len = std::mem::size_of::<libc::c_uint>() as libc::socklen_t;
        // SAFETY: `value` and `len` are live locals; the kernel writes at most `len` bytes
        // (the size of `value`) into `value` and the actual length into `len`. `fd` is the
        // sink's open socket, borrowed from `self` for the call.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_INCOMING_NAPI_ID,
                (&mut value as *mut libc::c_uint).cast(),
                &mut len,
            )
        };
        (ret == 0).then_some(value)
    }

    /// Kernel and driver counters of the generator's and the sink's sockets.
    pub fn socket_counters(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for (name, port) in [("gen_xsk", &self.gen), ("sink_xsk", &self.sink)] {
            let s = port.stats();
            out.insert(format!("{name}/rx_packets"), s.rx_packets);
            out.insert(format!("{name}/tx_packets"), s.tx_packets);
            for (k, v) in s.extra {
                if k.contains("drop")
                    || k.contains("full")
                    || k.contains("invalid")
                    || k.contains("empty")
                    || k.contains("kick")
                    || k.contains("completed")
                {
                    out.insert(format!("{name}/{k}"), v);
                }
            }
        }
        out
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.gen.release_frames(&mut self.gen_pool);
        self.sink.release_frames(&mut self.sink_pool);
    }
}

/// `a.b.c.d`.
pub fn dotted(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

/// The high half of every frame's trial tag for one traffic path: different for each
/// run, so frames of an earlier run still in flight are never counted as this one's.
pub(crate) fn new_run_tag() -> u32 {
    let seed = std::process::id().wrapping_mul(0x9e37_79b9)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    seed & 0xffff_0000
}

/// The result of a trial from what the generator completed (`completed` frames of the
/// `pacer`'s, sending over in `send_secs`) and what the sink's `tracker` and latency
/// `hist` saw; every traffic path reports through it, so their figures mean the same.
/// `refused` frames were issued but the device under test had no room for them (a
/// virtio transmit queue it had not drained): offered and lost, as frames a NIC's full
/// receive ring drops would be. The caller adds what only it counts (stray frames).
pub(crate) fn trial_result(
    spec: &TrialSpec,
    send_secs: f64,
    completed: u64,
    refused: u64,
    pacer: &Pacer,
    tracker: &SeqTracker,
    hist: &Histogram<u64>,
) -> TrialResult {
    let secs = send_secs.max(spec.secs.min(send_secs.max(1e-3)));
    let sent = (completed + refused).min(pacer.frames_sent());
    let mut result = TrialResult {
        requested_pps: spec.rate_pps,
        offered_pps: sent as f64 / secs,
        received_pps: tracker.unique as f64 / secs,
        sent,
        not_offered: pacer.skipped() + (pacer.frames_sent() - sent),
        received: tracker.received,
        lost: tracker.lost(sent),
        duplicates: tracker.duplicates,
        reordered: tracker.reordered,
        secs,
        latency: Latency::of(hist),
        ..TrialResult::default()
    };
    result.generator_limited = !result.offered_in_full();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrialSpec {
        TrialSpec {
            rate_pps: 1000.0,
            secs: 1.0,
            frame_size: 64,
            expect_vlan: None,
            flow: Flow::default(),
        }
    }

    /// Frames a full transmit queue refused were offered and are lost: the trial fails by
    /// loss, not as generator-limited.
    #[test]
    fn refused_frames_are_offered_and_lost() {
        let mut pacer = Pacer::new(1000.0, 0, 1000, 64);
        let mut now = 0;
        while !pacer.done() {
            now += 1_000_000;
            let due = pacer.due(now);
            pacer.sent(due);
        }
        let mut tracker = SeqTracker::new(1000);
        for seq in 0..900 {
            tracker.record(seq);
        }
        let hist = Histogram::<u64>::new(3).unwrap();
        let r = trial_result(&spec(), 1.0, 900, 100, &pacer, &tracker, &hist);
        assert_eq!((r.sent, r.lost, r.not_offered), (1000, 100, 0));
        assert!(!r.generator_limited);
        assert!(!r.passes(0.0) && !r.passes(0.005));
        // Without refusals the same completions leave 100 frames not offered (AF_XDP).
        let r = trial_result(&spec(), 1.0, 900, 0, &pacer, &tracker, &hist);
        assert_eq!((r.sent, r.lost, r.not_offered), (900, 0, 100));
        assert!(r.generator_limited);
    }
}
