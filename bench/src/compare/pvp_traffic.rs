//! The generator and the sink of the PVP scenario: two virtio-net devices driven from
//! the generator's thread ([`super::vhost_front`]), the device under test between them
//! on vhost-user (what two VMs' virtio-net drivers would be). Trials run as on AF_XDP
//! ([`super::traffic`]): stamped frames paced by a [`Pacer`], every frame the sink
//! receives checked and its latency recorded. "Sent" counts frames the device under
//! test took from the generator's transmit queue and the frames that queue, full,
//! refused: those are lost at the device (as a NIC's full receive ring drops them), so a
//! device that does not keep up fails the trial by loss (`gen_virtio/tx_queue_full`).
//! Frames the pacer writes off (the generator's thread fell behind) are *not offered*,
//! as on AF_XDP.

use std::collections::BTreeMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::frame;
use super::pacing::Pacer;
use super::seq::SeqTracker;
use super::sys::{interrupted, interrupted_error};
use super::topology::{GEN_MAC, SINK_MAC};
use super::traffic::{new_run_tag, trial_result, TrafficPath, TrialResult, TrialSpec};
use super::vhost_front::VirtioNet;

const BURST: usize = 64;
/// As on AF_XDP: at most one burst to catch up after falling behind.
const MAX_CATCH_UP: u64 = BURST as u64;
/// Time after the last frame is sent during which the sink still waits for frames.
const DRAIN: Duration = Duration::from_millis(300);

/// The two sockets the device under test connects to, listening from before it starts;
/// both files are removed on drop.
#[derive(Debug)]
pub struct PvpListener {
    gen: UnixListener,
    sink: UnixListener,
    paths: [PathBuf; 2],
}

impl PvpListener {
    /// Listens on `gen` and `sink` (stale files replaced).
    pub fn bind(gen: &Path, sink: &Path) -> Result<PvpListener, String> {
        let listen = |p: &Path| {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p).map_err(|e| format!("{}: {e}", p.display()))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok::<_, String>(l)
        };
        Ok(PvpListener {
            gen: listen(gen)?,
            sink: listen(sink)?,
            paths: [gen.to_path_buf(), sink.to_path_buf()],
        })
    }

    /// Waits up to `limit` for the device under test to connect to both sockets and
    /// sets both devices up.
    pub fn accept(&self, limit: Duration) -> Result<PvpTraffic, String> {
        let end = Instant::now() + limit;
        let wait = |l: &UnixListener, what: &str| -> Result<UnixStream, String> {
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).map_err(|e| e.to_string())?;
                        s.set_read_timeout(Some(Duration::from_secs(10)))
                            .map_err(|e| e.to_string())?;
                        return Ok(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("accept on the {what} socket: {e}")),
                }
                if interrupted() {
                    return Err(interrupted_error());
                }
                if Instant::now() > end {
                    return Err(format!(
                        "the device under test did not connect to the {what} socket within {limit:?}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let gen = VirtioNet::connect(wait(&self.gen, "generator")?)
            .map_err(|e| format!("generator: {e}"))?;
        let sink =
            VirtioNet::connect(wait(&self.sink, "sink")?).map_err(|e| format!("sink: {e}"))?;
        Ok(PvpTraffic {
            gen,
            sink,
            clock: Instant::now(),
            run_tag: new_run_tag(),
            trials: 0,
            gen_rx: 0,
            gen_refused: 0,
        })
    }
}

impl Drop for PvpListener {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The generator's and the sink's virtio-net devices, connected to one device under test.
#[derive(Debug)]
pub struct PvpTraffic {
    gen: VirtioNet,
    sink: VirtioNet,
    clock: Instant,
    run_tag: u32,
    trials: u32,
    /// Frames that came back to the generator (flooded before the sink was learnt).
    gen_rx: u64,
    /// Frames the generator's full transmit queue refused (lost at the device under test).
    gen_refused: u64,
}

impl PvpTraffic {
    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    fn discard_at_generator(&mut self) {
        let mut n = 0;
        self.gen.recv(|_| n += 1);
        self.gen_rx += n;
    }
}

impl TrafficPath for PvpTraffic {
    fn prime(&mut self, f: &[u8], _flow: &super::traffic::Flow) {
        for _ in 0..3 {
            self.sink.reclaim();
            self.sink.send(1, |buf| {
                buf[..f.len()].copy_from_slice(f);
                f.len()
            });
        }
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            self.sink.reclaim();
            self.sink.recv(|_| ());
            self.discard_at_generator();
        }
    }

    fn run_trial(
        &mut self,
        spec: &TrialSpec,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<TrialResult, String> {
        self.trials += 1;
        let tag = self.run_tag | (self.trials & 0xffff);
        let template = frame::build(spec.frame_size, SINK_MAC, GEN_MAC);
        let total = Pacer::frames_for(spec.rate_pps, spec.secs).min(u64::from(u32::MAX));
        let mut tracker = SeqTracker::new(total);
        let mut hist =
            Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string())?;
        let (mut bad_vlan, mut foreign) = (0u64, 0u64);
        self.gen.reclaim();
        let completed_before = self.gen.tx_completed;

        let start = self.now_ns();
        let mut pacer = Pacer::new(spec.rate_pps, start, total, MAX_CATCH_UP);
        let mut seq: u32 = 0;
        let mut refused = 0u64;
        let hard_end = start + ((spec.secs * 2.0 + 5.0) * 1e9) as u64;
        let mut sent_done_at: Option<u64> = None;
        let mut next_progress = start + 100_000_000;
        let mut loops = 0u32;
        loop {
            let now = self.now_ns();
            if interrupted() {
                return Err(interrupted_error());
            }
            if now > hard_end {
                break;
            }
            self.gen.reclaim();
            if !pacer.done() {
                let due = pacer.due(now).min(BURST as u64) as usize;
                if due > 0 {
                    let n = self.gen.send(due, |buf| {
                        let len = template.len();
                        buf[..len].copy_from_slice(&template);
                        frame::stamp(&mut buf[..len], tag, seq, now);
                        seq = seq.wrapping_add(1);
                        len
                    });
                    // What the full queue did not take is given up now, not owed: a
                    // VM's driver cannot hold it either, and a device that leaves its
                    // receive queue full loses those frames.
                    refused += (due - n) as u64;
                    pacer.sent(due as u64);
                }
            } else {
                let done_at = *sent_done_at.get_or_insert(now);
                let taken = pacer.frames_sent() - refused;
                let drained = self.gen.tx_completed - completed_before >= taken;
                if drained && tracker.unique >= taken {
                    break;
                }
                if now > done_at + DRAIN.as_nanos() as u64 {
                    break;
                }
            }
            let clock = self.clock;
            let expect_vlan = spec.expect_vlan;
            self.sink.recv(|f| {
                let rx_now = clock.elapsed().as_nanos() as u64;
                match frame::parse(f) {
                    Some(s) if s.tag == tag => {
                        tracker.record(u64::from(s.seq));
                        if s.vlan != expect_vlan {
                            bad_vlan += 1;
                        }
                        let _ = hist.record(rx_now.saturating_sub(s.sent_ns).max(1));
                    }
                    _ => foreign += 1,
                }
            });
            loops = loops.wrapping_add(1);
            if loops.is_multiple_of(1024) {
                self.discard_at_generator();
            }
            if now >= next_progress {
                next_progress = now + 100_000_000;
                progress(pacer.frames_sent(), tracker.unique);
            }
        }
        self.discard_at_generator();
        let send_secs = (sent_done_at.unwrap_or_else(|| self.now_ns()) - start) as f64 / 1e9;
        let completed = self.gen.tx_completed - completed_before;
        self.gen_refused += refused;
        Ok(TrialResult {
            bad_vlan,
            foreign,
            ..trial_result(spec, send_secs, completed, refused, &pacer, &tracker, &hist)
        })
    }

    fn counters(&self) -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("gen_virtio/tx_completed".to_string(), self.gen.tx_completed),
            ("gen_virtio/kicks".to_string(), self.gen.kicks),
            ("gen_virtio/rx_frames".to_string(), self.gen_rx),
            ("gen_virtio/tx_queue_full".to_string(), self.gen_refused),
            ("sink_virtio/kicks".to_string(), self.sink.kicks),
        ])
    }
}
