//! The `mem` driver: a port whose "wire" is a pair of in-process rings.
//!
//! Tests and benchmarks hold the [`MemWire`] end and inject or collect frames as a peer on
//! a cable would; the worker drives the [`MemPort`] end. Frames are copied into the
//! worker's pool on receive and out of it on transmit, as for any port that cannot share
//! memory with the pool.
//!
//! A port made by [`mem_port_vnet`] stands in for a TAP port that negotiated TSO: every
//! frame on its wire follows a 12-byte virtio-net header, as on the tap's descriptor; a
//! TCP super-frame offered with a GSO header enters as one (its [`Offload`] kept), and
//! one sent leaves whole behind a GSO header, so tests of super-frames need no kernel.

use pollux_dataplane::buf::{FramePool, MAX_CHAIN_LEN};
use pollux_dataplane::gso;
use pollux_dataplane::packet::{Batch, Offload, Packet};
use pollux_dataplane::port::{Port, PortStats};

use crate::tap::vnet::{VnetHdr, FLAG_NEEDS_CSUM, VNET_HDR_LEN};

use pollux_dataplane::ring::{ring, Consumer, Producer};

/// Geometry of a mem port's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemPortConfig {
    /// Slots per direction (rounded up to a power of two).
    pub depth: usize,
    /// Largest frame a slot carries.
    pub max_frame: usize,
}

impl Default for MemPortConfig {
    fn default() -> Self {
        MemPortConfig {
            depth: 1024,
            max_frame: 2048,
        }
    }
}

/// Creates a connected port and wire end.
pub fn mem_port(name: impl Into<String>, config: MemPortConfig) -> (MemPort, MemWire) {
    let (to_port, from_wire) = ring(config.depth, config.max_frame);
    let (to_wire, from_port) = ring(config.depth, config.max_frame);
    (
        MemPort {
            name: name.into(),
            rx: from_wire,
            tx: to_wire,
            stats: PortStats::default(),
            tx_oversize: 0,
        },
        MemWire {
            tx: to_port,
            rx: from_port,
        },
    )
}

/// A connected port and wire end whose frames carry a virtio-net header (see the module
/// documentation); `config.max_frame` counts the header.
pub fn mem_port_vnet(name: impl Into<String>, config: MemPortConfig) -> (VnetMemPort, MemWire) {
    let (port, wire) = mem_port(name, config);
    (VnetMemPort(port), wire)
}

/// A mem port whose frames carry a virtio-net header: a TAP port with TSO, without the
/// kernel. A type of its own, so the plain port's loops stay as they were.
#[derive(Debug)]
pub struct VnetMemPort(MemPort);

/// The worker's end. See the module documentation.
#[derive(Debug)]
pub struct MemPort {
    name: String,
    rx: Consumer,
    tx: Producer,
    stats: PortStats,
    tx_oversize: u64,
}

impl VnetMemPort {
    fn rx_vnet(&mut self, pool: &mut FramePool, batch: &mut Batch) -> usize {
        let (mut added, mut bytes, mut bad) = (0u64, 0u64, 0u64);
        let port = &mut self.0;
        port.rx.pop_burst(batch.remaining(), |slot| {
            let (Ok(hdr), Some(frame)) = (VnetHdr::parse(slot), slot.get(VNET_HDR_LEN..)) else {
                bad += 1;
                return true;
            };
            if frame.len() > MAX_CHAIN_LEN || pool.available() < pool.frames_for(frame.len()) {
                bad += u64::from(frame.len() > MAX_CHAIN_LEN);
                return frame.len() > MAX_CHAIN_LEN;
            }
            let pkt = if hdr.is_gso() {
                let offload = Offload {
                    flags: hdr.flags,
                    gso_type: hdr.gso_type,
                    hdr_len: hdr.hdr_len,
                    gso_size: hdr.gso_size,
                    csum_start: hdr.csum_start,
                    csum_offset: hdr.csum_offset,
                };
                pool.alloc_offloaded(frame, offload)
            } else {
                pool.alloc_packet(frame)
            };
            let Some(pkt) = pkt else {
                return false;
            };
            let _ = batch.push(pkt);
            added += 1;
            bytes += frame.len() as u64;
            true
        });
        port.stats.rx_packets += added;
        port.stats.rx_bytes += bytes;
        port.stats.rx_dropped += bad;
        added as usize
    }

    fn tx_vnet(&mut self, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        let (mut oversize, mut bytes) = (0u64, 0u64);
        let port = &mut self.0;
        let sent = port.tx.push_burst(pkts.len(), |i, slot| {
            let pkt = &pkts[i];
            let len = pool.packet_len(pkt);
            let hdr = match pool.offload(pkt) {
                Some(off) if off.is_gso() => match gso::layout(pool, pkt, &off) {
                    Ok(l) => VnetHdr {
                        flags: FLAG_NEEDS_CSUM,
                        gso_type: off.gso_type,
                        hdr_len: l.payload_at as u16,
                        gso_size: off.gso_size,
                        csum_start: l.l4 as u16,
                        csum_offset: 16,
                        num_buffers: 0,
                    },
                    Err(_) => {
                        oversize += 1;
                        return 0;
                    }
                },
                _ => VnetHdr::default(),
            };
            let Some(dst) = slot.get_mut(..VNET_HDR_LEN + len) else {
                oversize += 1;
                return 0;
            };
            let _ = hdr.emit(dst);
            pool.copy_out(pkt, 0, &mut dst[VNET_HDR_LEN..]);
            bytes += len as u64;
            VNET_HDR_LEN + len
        });
        for pkt in &pkts[..sent] {
            pool.free_packet(pkt);
        }
        port.tx_oversize += oversize;
        port.stats.tx_packets += sent as u64 - oversize;
        port.stats.tx_bytes += bytes;
        sent
    }
}

impl Port for VnetMemPort {
    fn name(&self) -> &str {
        &self.0.name
    }

    fn takes_gso(&self) -> bool {
        true
    }

    fn rx_burst(&mut self, _queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize {
        self.rx_vnet(pool, batch)
    }

    fn tx_burst(&mut self, _queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        self.tx_vnet(pool, pkts)
    }

    fn stats(&self) -> PortStats {
        self.0.stats()
    }
}

impl Port for MemPort {
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn rx_burst(&mut self, _queue: u16, pool: &mut FramePool, batch: &mut Batch) -> usize {
        let max_len = pool.max_data_len();
        let (mut added, mut bytes, mut oversize) = (0u64, 0u64, 0u64);
        self.rx.pop_burst(batch.remaining(), |frame| {
            if frame.len() > MAX_CHAIN_LEN {
                // Like a NIC given a frame larger than its buffers: count and discard.
                oversize += 1;
                return true;
            }
            // With no free frame, leave the frame in the ring: back-pressure, not loss.
            let pkt = if frame.len() <= max_len {
                let Some((id, offset)) = pool.alloc_with(frame) else {
                    return false;
                };
                Packet::received(id, offset, frame.len() as u16)
            } else {
                // Larger than a pool frame: chained over several.
                let Some(pkt) = pool.alloc_packet(frame) else {
                    return false;
                };
                pkt
            };
            // Cannot fail: `pop_burst` offers at most `remaining()` frames.
            let _ = batch.push(pkt);
            added += 1;
            bytes += frame.len() as u64;
            true
        });
        self.stats.rx_packets += added;
        self.stats.rx_bytes += bytes;
        self.stats.rx_dropped += oversize;
        added as usize
    }

    #[inline]
    fn tx_burst(&mut self, _queue: u16, pool: &mut FramePool, pkts: &[Packet]) -> usize {
        let (mut oversize, mut bytes) = (0u64, 0u64);
        let sent = self.tx.push_burst(pkts.len(), |i, slot| {
            let pkt = &pkts[i];
            let len = if pkt.chained {
                pool.packet_len(pkt)
            } else {
                usize::from(pkt.len)
            };
            let Some(dst) = slot.get_mut(..len) else {
                oversize += 1;
                return 0;
            };
            if pkt.chained {
                pool.copy_out(pkt, 0, dst);
            } else {
                dst.copy_from_slice(pool.data(pkt));
            }
            bytes += len as u64;
            len
        });
        for pkt in &pkts[..sent] {
            pool.free_packet(pkt);
        }
        self.tx_oversize += oversize;
        self.stats.tx_packets += sent as u64 - oversize;
        self.stats.tx_bytes += bytes;
        sent
    }

    fn stats(&self) -> PortStats {
        let mut stats = self.stats.clone();
        stats.extra = vec![("tx_oversize", self.tx_oversize)];
        stats
    }
}

/// The peer's end of a mem port: what a test or benchmark sends and receives.
#[derive(Debug)]
pub struct MemWire {
    tx: Producer,
    rx: Consumer,
}

impl MemWire {
    /// Offers a frame to the port; false when its receive ring is full or the frame is
    /// larger than a slot.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.tx.push(frame)
    }

    /// Offers the same frame `count` times; returns how many the ring took.
    pub fn send_repeated(&mut self, frame: &[u8], count: usize) -> usize {
        if frame.len() > self.tx.slot_size() {
            return 0;
        }
        self.tx.push_burst(count, |_, slot| {
            slot[..frame.len()].copy_from_slice(frame);
            frame.len()
        })
    }

    /// Takes the next frame the port sent.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.rx.pop_into(&mut out).then_some(out)
    }

    /// Takes every frame the port has sent so far.
    pub fn recv_all(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv()).collect()
    }

    /// Discards up to `max` sent frames, passing each to `inspect`; returns how many.
    pub fn drain(&mut self, max: usize, mut inspect: impl FnMut(&[u8])) -> usize {
        self.rx.pop_burst(max, |f| {
            inspect(f);
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_both_ways_through_the_pool() {
        let (mut port, mut wire) = mem_port(
            "m0",
            MemPortConfig {
                depth: 4,
                max_frame: 2048,
            },
        );
        let mut pool = FramePool::with_frames(8).unwrap();
        let mut batch = Batch::with_capacity(8);
        assert!(wire.send(b"0123456789abcdef"));
        let big: Vec<u8> = (0..1900u32).map(|i| i as u8).collect();
        assert!(wire.send(&big), "fits a slot but not a frame's data room");
        assert_eq!(port.rx_burst(0, &mut pool, &mut batch), 2);
        assert_eq!(port.stats().rx_dropped, 0);
        let (pkt, chained) = (batch.as_slice()[0], batch.as_slice()[1]);
        assert_eq!(pool.data(&pkt), b"0123456789abcdef");
        assert!(chained.chained, "chained over two frames");
        assert_eq!(pool.available(), 5);
        assert_eq!(port.tx_burst(0, &mut pool, &[pkt, chained]), 2);
        assert_eq!(pool.available(), 8, "transmit returns every frame");
        assert_eq!(wire.recv().unwrap(), b"0123456789abcdef");
        assert_eq!(wire.recv().unwrap(), big, "sent whole");
        assert!(wire.recv().is_none());
        assert_eq!(port.stats().tx_bytes, 16 + 1900);
    }

    #[test]
    fn empty_pool_leaves_frames_in_the_ring() {
        let (mut port, mut wire) = mem_port("m0", MemPortConfig::default());
        let mut pool = FramePool::with_frames(1).unwrap();
        let mut batch = Batch::with_capacity(8);
        assert_eq!(wire.send_repeated(b"frame", 3), 3);
        assert_eq!(port.rx_burst(0, &mut pool, &mut batch), 1);
        let pkt = batch.as_slice()[0];
        port.tx_burst(0, &mut pool, &[pkt]);
        batch.clear();
        assert_eq!(
            port.rx_burst(0, &mut pool, &mut batch),
            1,
            "the rest waited"
        );
    }
}
