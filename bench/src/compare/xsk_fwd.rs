//! `xsk-fwd`: a bare forwarder on Pollux's own AF_XDP driver, the ceiling of Pollux's
//! AF_XDP path on this kernel. It sets its sockets up as polluxd does (one frame pool
//! with polluxd's frame size, headroom and size rule as the shared UMEM, Pollux's XSKMAP
//! program on each interface, one socket per interface on queue 0 with polluxd's ring
//! sizes) and runs one thread pinned as polluxd's worker is, which moves every burst
//! received on the ingress interface to the egress interface: no classification, no
//! tables, no per-packet metadata. `pollux / xsk-fwd` is then what Pollux's pipeline costs
//! over the same I/O; `xsk-fwd / xdp-redirect` what the AF_XDP path costs over staying in
//! the kernel.
//!
//! The one thing it may do to a frame is push an 802.1Q tag (`--push-vlan`), the work of
//! the `l2-vlan-push` scenario. Frames received on the egress interface (the sink's prime
//! frames) are polled, as polluxd polls every port, and dropped.

use std::time::Instant;

use pollux_control::binding::{FRAMES_PER_QUEUE, XSK_RING};
use pollux_control::engine::{DEFAULT_POOL_FRAMES, SPARE_FRAMES};
use pollux_dataplane::buf::{FramePool, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM};
use pollux_dataplane::packet::{Batch, Packet, MAX_BURST};
use pollux_dataplane::port::Port;
use pollux_drivers::xdp::{XdpAttachment, XdpMode, XdpProgram};
use pollux_drivers::xsk::{AfXdpPort, Umem, XskConfig, XskSocket};

use super::sys::interrupted;

/// Name of the forwarding thread (the harness raises its priority by this prefix).
pub const THREAD_NAME: &str = "xsk-fwd-0";
/// Nanoseconds between the ports' housekeeping rounds while busy, as polluxd's worker.
const HOUSEKEEPING_NS: u64 = 100_000;
/// 802.1Q TPID.
const TPID_8021Q: u16 = 0x8100;

/// What to forward.
#[derive(Clone, Debug)]
pub struct Options {
    /// Receive here.
    pub ingress: String,
    /// Transmit here.
    pub egress: String,
    /// CPU of the forwarding thread.
    pub cpu: usize,
    /// Push this VLAN tag on every frame.
    pub push_vlan: Option<u16>,
}

/// Counters of one run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// The ports' driver counters that are not zero, one `interface: name value` each.
    pub ports: Vec<String>,
    /// Frames received on the ingress interface.
    pub received: u64,
    /// Frames accepted by the egress interface's tx ring.
    pub forwarded: u64,
    /// Frames dropped because the egress tx ring was full.
    pub tx_ring_full: u64,
    /// Frames too short to carry a tag (only with `push_vlan`).
    pub too_short: u64,
    /// Frames received on the egress interface, dropped.
    pub reverse_dropped: u64,
    /// Passes of the loop.
    pub loops: u64,
    /// Passes that received something.
    pub busy_loops: u64,
}

/// Pushes an 802.1Q tag in the frame's headroom: the MACs move 4 bytes forward, TPID and
/// TCI follow them. False (nothing changed) when the frame is shorter than two MACs or
/// has no headroom left.
#[inline]
pub fn push_tag(pool: &mut FramePool, pkt: &mut Packet, vid: u16) -> bool {
    let off = usize::from(pkt.offset);
    if pkt.len < 12 || off < 4 {
        return false;
    }
    let frame = pool.frame_mut(pkt.frame);
    if off + usize::from(pkt.len) > frame.len() {
        return false;
    }
    frame.copy_within(off..off + 12, off - 4);
    frame[off + 8..off + 10].copy_from_slice(&TPID_8021Q.to_be_bytes());
    frame[off + 10..off + 12].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
    pkt.offset -= 4;
    pkt.len += 4;
    true
}

/// An AF_XDP port on `iface` queue 0, as polluxd opens one (its XDP program attached).
fn open_port(
    umem: &Umem,
    pool: &mut FramePool,
    iface: &str,
) -> Result<(AfXdpPort, XdpAttachment, String), String> {
    let xdp = XdpProgram::attach(iface, XdpMode::Auto, 1)
        .map_err(|e| format!("interface {iface}: {e}"))?;
    let config = XskConfig {
        rx_size: XSK_RING,
        tx_size: XSK_RING,
        fill_size: XSK_RING,
        comp_size: XSK_RING,
        ..XskConfig::default()
    };
    let socket = XskSocket::new(umem, iface, 0, &config)
        .and_then(|s| xdp.register(0, s.fd()).map(|()| s))
        .map_err(|e| format!("interface {iface} queue 0: {e}"))?;
    let note = format!(
        "{iface} queue 0: XDP {} mode, AF_XDP {}",
        xdp.mode(),
        socket.mode_note()
    );
    let port = AfXdpPort::new(iface, vec![socket], pool).map_err(|e| e.to_string())?;
    Ok((port, xdp, note))
}

/// Runs the forwarder on a thread pinned to `opts.cpu` until SIGINT or SIGTERM; calls
/// `ready` with one line per port once both are open.
pub fn run(opts: &Options, ready: impl FnOnce(&[String]) + Send) -> Result<Stats, String> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn_scoped(s, || forward(opts, ready))
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "the forwarding thread panicked".to_string())?
    })
}

fn forward(opts: &Options, ready: impl FnOnce(&[String])) -> Result<Stats, String> {
    pollux_control::workers::pin_current_thread(opts.cpu).map_err(|e| e.to_string())?;
    let capacity = DEFAULT_POOL_FRAMES.max(2 * FRAMES_PER_QUEUE + SPARE_FRAMES);
    let mut pool = FramePool::new(capacity, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM)
        .map_err(|e| format!("frame pool of {capacity} frames: {e:?}"))?;
    // SAFETY: both ports release their frames (closing their sockets) below, on every
    // path after they were opened, before the pool is dropped at the end of this
    // function; nothing here indexes a frame it does not own (only received packets'
    // frames are written, by `push_tag`).
    let umem = unsafe { Umem::new(&pool) }.map_err(|e| format!("AF_XDP UMEM: {e}"))?;
    let (mut ingress, _ingress_xdp, in_note) = open_port(&umem, &mut pool, &opts.ingress)?;
    let (mut egress, _egress_xdp, out_note) = match open_port(&umem, &mut pool, &opts.egress) {
        Ok(p) => p,
        Err(e) => {
            ingress.release_frames(&mut pool);
            return Err(e);
        }
    };
    ready(&[in_note, out_note]);

    let mut stats = Stats::default();
    let mut batch = Batch::with_capacity(MAX_BURST);
    let mut out = Batch::with_capacity(MAX_BURST);
    let epoch = Instant::now();
    let mut next_housekeeping = 0u64;
    while !interrupted() {
        stats.loops += 1;
        batch.clear();
        let n = ingress.rx_burst(0, &mut pool, &mut batch);
        if n > 0 {
            stats.received += n as u64;
            let pkts = match opts.push_vlan {
                None => batch.as_slice(),
                Some(vid) => {
                    out.clear();
                    for &p in batch.as_slice() {
                        let mut p = p;
                        if push_tag(&mut pool, &mut p, vid) {
                            let _ = out.push(p);
                        } else {
                            pool.free(p.frame);
                            stats.too_short += 1;
                        }
                    }
                    out.as_slice()
                }
            };
            let sent = egress.tx_burst(0, &mut pool, pkts).min(pkts.len());
            for p in &pkts[sent..] {
                pool.free(p.frame);
            }
            stats.forwarded += sent as u64;
            stats.tx_ring_full += (pkts.len() - sent) as u64;
        }
        batch.clear();
        let m = egress.rx_burst(0, &mut pool, &mut batch);
        for p in batch.as_slice() {
            pool.free(p.frame);
        }
        stats.reverse_dropped += m as u64;
        if n + m > 0 {
            stats.busy_loops += 1;
        }
        // As polluxd's worker: the ports' upkeep (reaping completions, refilling, kicking)
        // on every idle pass and on the housekeeping cadence.
        let now = epoch.elapsed().as_nanos() as u64;
        let due = now >= next_housekeeping;
        if n + m == 0 || due {
            ingress.housekeeping(&mut pool);
            egress.housekeeping(&mut pool);
            if due {
                next_housekeeping = now + HOUSEKEEPING_NS;
            }
        }
    }
    for port in [&ingress, &egress] {
        let s = port.stats();
        stats.ports.extend(
            s.extra
                .iter()
                .filter(|(_, v)| *v > 0)
                .map(|(k, v)| format!("{}: {k} {v}", port.name())),
        );
    }
    ingress.release_frames(&mut pool);
    egress.release_frames(&mut pool);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_tag_moves_the_macs_and_writes_tpid_and_tci() {
        let mut pool = FramePool::new(4, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM).unwrap();
        let bytes: Vec<u8> = (0u8..60).collect();
        let (frame, off) = pool.alloc_with(&bytes).unwrap();
        let mut pkt = Packet::received(frame, off, 60);
        assert!(push_tag(&mut pool, &mut pkt, 100));
        assert_eq!((pkt.offset, pkt.len), (off - 4, 64));
        let d = pool.data(&pkt);
        assert_eq!(&d[..12], &bytes[..12]);
        assert_eq!(&d[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(&d[16..], &bytes[12..]);
    }

    #[test]
    fn push_tag_refuses_a_runt_and_a_frame_without_headroom() {
        let mut pool = FramePool::new(4, DEFAULT_FRAME_SIZE, DEFAULT_HEADROOM).unwrap();
        let (frame, off) = pool.alloc_with(&[0u8; 10]).unwrap();
        let mut runt = Packet::received(frame, off, 10);
        assert!(!push_tag(&mut pool, &mut runt, 100));
        assert_eq!((runt.offset, runt.len), (off, 10));
        let mut no_room = Packet::received(frame, 2, 20);
        assert!(!push_tag(&mut pool, &mut no_room, 100));
    }
}
