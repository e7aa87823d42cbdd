//! Packet handles, their per-packet metadata, and the batch they travel in.

use crate::buf::FrameId;
use crate::drop::DropReason;
use crate::ident::{NetworkSlot, RouterIndex};
use crate::pipeline::Stage;
use crate::port::PortId;

/// Most packets a driver hands over in one receive burst.
pub const MAX_BURST: usize = 64;

/// Where a packet goes after the stage that set it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Next {
    /// Still to be classified into a network (the state right after receive).
    #[default]
    Classify,
    /// Classified; the L2 stage decides the output.
    L2,
    /// Out through one port.
    Output(PortId),
    /// Out through every other port of the packet's network.
    Flood,
    /// To the router with this index (its MAC was the destination).
    Route(RouterIndex),
    /// A broadcast ARP on a network with router interfaces: answered if it asks for a
    /// router address, flooded otherwise.
    Arp,
    /// Dropped by this stage, for this reason. The stage travels in the same word as the
    /// reason, so naming it costs nothing on the fast path.
    Drop(DropReason, Stage),
    /// Taken by the worker (an ARP reply to a router, a frame copied to the slow path);
    /// its frame is already free.
    Consumed,
    /// Waiting for its next hop to answer ARP; the router stage holds it.
    Waiting,
    /// To the slow-path stage: a broadcast on a network with a DHCP server, or a frame to
    /// that server's MAC. DHCP goes up the punt ring; ARP for the server is answered;
    /// other broadcasts flood on.
    SlowPath,
}

/// Facts that the classify stage extracts once so later stages never re-parse. Kept
/// small: the handle is copied whole at every hand-over, so each byte costs on every packet.
/// The MAC addresses stay in the frame, where the L2 stage reads them (same cache line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// What happens to the packet next.
    pub next: Next,
    /// The network's slot in the active snapshot, set by classification.
    pub network: NetworkSlot,
    /// EtherType after any 802.1Q tag.
    pub ethertype: u16,
    /// The received 802.1Q TCI; meaningful when `flags & Meta::VLAN` is set.
    pub tci: u16,
    /// Bit set of `Meta::VLAN`, `Meta::MULTICAST`.
    pub flags: u8,
    /// Offset of the L3 header from the start of the packet's data.
    pub l3_offset: u8,
}

impl Meta {
    /// The frame carries one 802.1Q tag right after the source MAC.
    pub const VLAN: u8 = 1 << 0;
    /// The destination MAC is a group address (broadcast included).
    pub const MULTICAST: u8 = 1 << 1;
    /// Routed (or made) by a router: flooding does not skip the input port, because the
    /// packet entered on another network.
    pub const ROUTED: u8 = 1 << 2;
}

/// The offload state a super-frame carries (the fields of the virtio-net header a TSO
/// sender fills in): stored in the pool beside the chain's links, per first frame, and
/// read only for a chained packet (see [`crate::buf::FramePool::offload`]), so packets of
/// one frame never touch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// `NEEDS_CSUM` / `DATA_VALID` bits, as in the virtio-net header.
    pub flags: u8,
    /// `GSO_*` type, ECN bit included; `GSO_NONE`: not a super-frame.
    pub gso_type: u8,
    /// Bytes of headers before the payload (Ethernet to the end of TCP).
    pub hdr_len: u16,
    /// Payload bytes per segment (the sender's MSS).
    pub gso_size: u16,
    /// Where the partial checksum's coverage starts, from the start of the frame.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl Offload {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum field holds the pseudo-header sum.
    pub const NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub const DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const GSO_NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub const GSO_TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub const GSO_TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_ECN`, or-ed into a GSO type: the sender set CWR on the
    /// super-frame (the first segment keeps it).
    pub const GSO_ECN: u8 = 0x80;

    /// Whether this is a TSO super-frame (any GSO type, ECN bit aside).
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// Whether the L4 checksum is still partial (the pseudo-header sum only).
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags & Self::NEEDS_CSUM != 0
    }
}

/// A packet: which frame holds it, where its data starts, how long it is, where it came
/// from and what the pipeline knows about it. Small and `Copy`, so stages pass it by value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Packet {
    /// Frame in the worker's pool.
    pub frame: FrameId,
    /// Start of the data within the frame.
    pub offset: u16,
    /// Length of the data in this frame: the whole packet unless it is chained.
    pub len: u16,
    /// Port the packet was received on.
    pub in_port: PortId,
    /// Per-packet metadata.
    pub meta: Meta,
    /// More frames follow this one in the pool's chain (see [`crate::buf`]): the packet is
    /// longer than `len`. Kept out of [`Meta`], which stages rebuild, because it describes
    /// the buffer, not what the pipeline has learnt; it fits the handle's padding.
    pub chained: bool,
}

impl Packet {
    /// A freshly received packet with empty metadata; the worker sets `in_port`.
    #[inline]
    pub fn received(frame: FrameId, offset: u16, len: u16) -> Self {
        Packet {
            frame,
            offset,
            len,
            in_port: PortId(0),
            meta: Meta::default(),
            chained: false,
        }
    }
}

/// A bounded list of packets in fixed storage: at most [`MAX_BURST`], allocated once at
/// construction, so the hot path never allocates and pushing past capacity is refused.
#[derive(Debug)]
pub struct Batch {
    pkts: Box<[Packet; MAX_BURST]>,
    len: usize,
    capacity: usize,
}

impl Batch {
    /// An empty batch that holds up to `capacity` packets (at most [`MAX_BURST`]).
    pub fn with_capacity(capacity: usize) -> Self {
        Batch {
            pkts: Box::new([Packet::default(); MAX_BURST]),
            len: 0,
            capacity: capacity.min(MAX_BURST),
        }
    }

    /// Appends a packet; gives it back when the batch is full.
    #[inline]
    pub fn push(&mut self, pkt: Packet) -> Result<(), Packet> {
        if self.len >= self.capacity {
            return Err(pkt);
        }
        self.pkts[self.len] = pkt;
        self.len += 1;
        Ok(())
    }

    /// Appends as many of `pkts` as fit, in order, with one copy; returns how many.
    #[inline]
    pub fn extend_from_slice(&mut self, pkts: &[Packet]) -> usize {
        let n = pkts.len().min(self.capacity - self.len);
        self.pkts[self.len..self.len + n].copy_from_slice(&pkts[..n]);
        self.len += n;
        n
    }

    /// Room left before the batch is full.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }

    /// Most packets this batch can hold.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of packets held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no packet is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more packets fit.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Forgets every packet (the caller has already disposed of their frames).
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The packets.
    #[inline]
    pub fn as_slice(&self) -> &[Packet] {
        &self.pkts[..self.len]
    }

    /// The packets, writable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Packet] {
        &mut self.pkts[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_refuses_past_capacity_without_growing() {
        let mut b = Batch::with_capacity(2);
        assert!(b.push(Packet::default()).is_ok());
        assert!(b.push(Packet::default()).is_ok());
        assert!(b.push(Packet::default()).is_err());
        assert_eq!(b.capacity(), 2);
        assert!(b.is_full());
        b.clear();
        assert_eq!(b.remaining(), 2);
        assert_eq!(Batch::with_capacity(1000).capacity(), MAX_BURST);
    }

    #[test]
    fn extend_takes_what_fits_in_order() {
        let pkt = |frame| Packet {
            frame,
            ..Packet::default()
        };
        let mut b = Batch::with_capacity(3);
        assert!(b.push(pkt(1)).is_ok());
        assert_eq!(b.extend_from_slice(&[pkt(2), pkt(3), pkt(4)]), 2);
        let frames: Vec<_> = b.as_slice().iter().map(|p| p.frame).collect();
        assert_eq!(frames, [1, 2, 3]);
        assert_eq!(b.extend_from_slice(&[pkt(5)]), 0);
        assert_eq!(b.extend_from_slice(&[]), 0);
    }

    #[test]
    fn packet_handle_stays_small() {
        assert!(
            std::mem::size_of::<Packet>() <= 24,
            "{}",
            std::mem::size_of::<Packet>()
        );
    }
}
