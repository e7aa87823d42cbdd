//! The worker's side of the slow path: the punt ring up to the control plane and the
//! inject ring back, as in the design's packet path.
//!
//! The L2 stage sends a frame here ([`Next::SlowPath`]) when it is a broadcast on a network
//! with a DHCP server, or is addressed to that server's MAC. This stage then:
//!
//! - copies a DHCP client message (IPv4, UDP to port 67, not a fragment) into the punt
//!   ring, within the input port's budget, and frees the frame. The broadcast is not
//!   flooded on: like OVN's native DHCP, the server is the only one to hear it;
//! - answers ARP requests for the server's addresses in place, as the router stage does
//!   for router addresses, so that clients can unicast their renewals;
//! - sends every other broadcast on to where it would have gone (flooding, or the router
//!   stage for ARP on a routed network), and drops anything else sent to the server's MAC.
//!
//! Replies come back on the inject ring as whole Ethernet frames with the port and network
//! to leave by; the worker sends them at its next housekeeping round, tagging them for
//! the port as it would any frame of that network.
//!
//! Both rings are the bounded SPSC slot rings of [`crate::ring`]: the worker never
//! allocates, blocks or waits on the control plane. A full punt ring is a counted drop,
//! and the DHCP client retries.

use crate::buf::FramePool;
use crate::drop::DropReason;
use crate::l3::{answer_arp_in_place, ORIGINATED};
use crate::output::output;
use crate::packet::{Batch, Meta, Next, Packet, MAX_BURST};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::ratelimit::{BucketConfig, TokenBucket};
use crate::ring::{self, Consumer, Producer};
use crate::snapshot::{mac_from_u64, mac_to_u64, NetworkEntry, NetworkUid, Snapshot};
use crate::wire::{
    ArpOperation, ArpPacket, EtherType, EthernetAddress, EthernetFrame, IpProtocol, Ipv4Packet,
    UdpPacket,
};

/// UDP port of DHCP servers (RFC 2131 §4.1).
pub const DHCP_SERVER_PORT: u16 = 67;
/// Bytes in front of every frame on either ring (see [`RingHeader`]).
pub const RING_HEADER_LEN: usize = 8;
/// Size of a ring slot: the header and a frame of up to 2040 bytes.
pub const RING_SLOT_SIZE: usize = 2048;
/// Largest frame a ring carries.
pub const MAX_RING_FRAME: usize = RING_SLOT_SIZE - RING_HEADER_LEN;
/// Slots per ring by default: enough for a burst of many clients booting at once.
pub const DEFAULT_RING_DEPTH: usize = 1024;

/// Limits of the slow path, part of the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowPathConfig {
    /// DHCP messages one port may send to the server: one VM cannot starve the others.
    pub dhcp_per_port: BucketConfig,
}

impl Default for SlowPathConfig {
    fn default() -> Self {
        SlowPathConfig {
            dhcp_per_port: BucketConfig {
                rate_per_sec: 100,
                burst: 200,
            },
        }
    }
}

/// What travels in front of a frame on the rings: the port it came in by (punt) or leaves
/// by (inject), its network, and (punt only) where its IPv4 header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHeader {
    /// The port.
    pub port: PortId,
    /// The network's stable identity (slots change between snapshots, uids do not).
    pub network: NetworkUid,
    /// Offset of the L3 header in the frame (after any 802.1Q tag); 0 on inject.
    pub l3_offset: u16,
}

impl RingHeader {
    /// Writes the header into the first [`RING_HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.port.0.to_le_bytes());
        out[2..4].copy_from_slice(&self.l3_offset.to_le_bytes());
        out[4..8].copy_from_slice(&self.network.0.to_le_bytes());
    }

    /// Splits a ring entry into its header and frame; `None` when it is too short.
    pub fn read(entry: &[u8]) -> Option<(RingHeader, &[u8])> {
        let (head, frame) = entry.split_at_checked(RING_HEADER_LEN)?;
        Some((
            RingHeader {
                port: PortId(u16::from_le_bytes([head[0], head[1]])),
                l3_offset: u16::from_le_bytes([head[2], head[3]]),
                network: NetworkUid(u32::from_le_bytes([head[4], head[5], head[6], head[7]])),
            },
            frame,
        ))
    }
}

/// The control plane's ends of a worker's slow-path rings.
#[derive(Debug)]
pub struct SlowPathEnds {
    /// Frames the worker punted, each a [`RingHeader`] and the received frame.
    pub punt: Consumer,
    /// Frames to send, each a [`RingHeader`] and an untagged Ethernet frame.
    pub inject: Producer,
}

/// The worker's ends of the slow-path rings and the per-port budgets.
#[derive(Debug)]
pub struct SlowPath {
    punt: Option<Producer>,
    inject: Option<Consumer>,
    /// Per input port (by index), its DHCP budget; grown when a port first punts.
    budgets: Vec<TokenBucket>,
    budget_config: BucketConfig,
    local: Batch,
}

impl Default for SlowPath {
    fn default() -> Self {
        SlowPath {
            punt: None,
            inject: None,
            budgets: Vec::new(),
            budget_config: SlowPathConfig::default().dhcp_per_port,
            local: Batch::with_capacity(MAX_BURST),
        }
    }
}

impl SlowPath {
    /// A slow path without rings: what would be punted is dropped as `punt_queue_full`.
    pub fn disconnected() -> Self {
        Self::default()
    }

    /// Connected rings of `depth` slots each; the worker keeps `SlowPath`, the control
    /// plane the returned ends.
    pub fn connected(depth: usize) -> (SlowPath, SlowPathEnds) {
        let (punt_tx, punt_rx) = ring::ring(depth, RING_SLOT_SIZE);
        let (inject_tx, inject_rx) = ring::ring(depth, RING_SLOT_SIZE);
        (
            SlowPath {
                punt: Some(punt_tx),
                inject: Some(inject_rx),
                ..SlowPath::default()
            },
            SlowPathEnds {
                punt: punt_rx,
                inject: inject_tx,
            },
        )
    }

    /// The budget of `port`, following the snapshot's configuration.
    fn budget(&mut self, port: PortId, config: BucketConfig) -> &mut TokenBucket {
        if config != self.budget_config {
            self.budget_config = config;
            self.budgets.clear();
        }
        let index = port.index();
        if index >= self.budgets.len() {
            self.budgets.resize(index + 1, TokenBucket::new(config));
        }
        &mut self.budgets[index]
    }
}

impl BurstStage for SlowPath {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::SlowPath
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::SLOW_PATH
    }

    /// Runs every packet of a burst whose next step is [`Next::SlowPath`]; some may go on to
    /// the router stage (a broadcast ARP on a routed network).
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let mut produced = Pending::NONE;
        let mut entered = 0;
        for pkt in pkts.iter_mut() {
            if pkt.meta.next != Next::SlowPath {
                continue;
            }
            entered += 1;
            pkt.meta.next = self.local(cx, pkt);
            produced |= Pending::of(pkt.meta.next);
        }
        Outcome {
            packets: entered,
            produced,
        }
    }
}

impl SlowPath {
    fn local(&mut self, cx: &mut BurstCtx<'_>, pkt: &mut Packet) -> Next {
        let snap = cx.snap;
        let slot = pkt.meta.network;
        let Some(net) = snap.network(slot) else {
            return Next::Drop(DropReason::InternalError, Stage::SlowPath);
        };
        let l3 = usize::from(pkt.meta.l3_offset);
        if pkt.meta.ethertype == EtherType::IPV4.0 {
            let ip = cx.pool.data(pkt).get(l3..).unwrap_or_default();
            if is_dhcp_to_server(ip) {
                if !client_belongs_to_port(snap, slot, pkt.in_port, ip) {
                    return Next::Drop(DropReason::DhcpForeignClient, Stage::SlowPath);
                }
                return self.punt(cx, pkt, net.uid);
            }
        } else if pkt.meta.ethertype == EtherType::ARP.0 {
            let data = cx.pool.data_mut(pkt);
            if let Some(arp) = data.get(l3..).and_then(|b| ArpPacket::new_checked(b).ok()) {
                let asked = u32::from(arp.target_protocol_addr());
                let sender = u32::from(arp.sender_protocol_addr());
                if arp.is_ethernet_ipv4() && snap.dhcp_addresses(slot).contains(&sender) {
                    return Next::Drop(DropReason::ArpClaimsDhcpServer, Stage::SlowPath);
                }
                if arp.is_ethernet_ipv4()
                    && arp.operation() == ArpOperation::REQUEST
                    && snap.dhcp_addresses(slot).contains(&asked)
                {
                    let own = EthernetAddress(mac_from_u64(net.dhcp_mac));
                    answer_arp_in_place(data, l3, own);
                    pkt.meta.flags &= !Meta::MULTICAST;
                    return Next::Output(pkt.in_port);
                }
            }
        }
        not_for_server(net, pkt)
    }

    fn punt(&mut self, cx: &mut BurstCtx<'_>, pkt: &Packet, network: NetworkUid) -> Next {
        if cx.dry_run {
            // An explained packet would go to the slow path: it takes no token and is
            // not handed over.
            cx.pool.free(pkt.frame);
            return Next::Consumed;
        }
        if !self
            .budget(pkt.in_port, cx.snap.slow_path().dhcp_per_port)
            .allow(cx.now_ns)
        {
            return Next::Drop(DropReason::DhcpRateLimited, Stage::SlowPath);
        }
        let frame = cx.pool.data(pkt);
        if frame.len() > MAX_RING_FRAME {
            return Next::Drop(DropReason::PuntTooLarge, Stage::SlowPath);
        }
        let header = RingHeader {
            port: pkt.in_port,
            network,
            l3_offset: u16::from(pkt.meta.l3_offset),
        };
        let pushed = self.punt.as_mut().is_some_and(|ring| {
            ring.push_burst(1, |_, slot| {
                header.write(slot);
                slot[RING_HEADER_LEN..RING_HEADER_LEN + frame.len()].copy_from_slice(frame);
                RING_HEADER_LEN + frame.len()
            }) == 1
        });
        if !pushed {
            return Next::Drop(DropReason::PuntQueueFull, Stage::SlowPath);
        }
        cx.pool.free(pkt.frame);
        cx.counters.punted.inc();
        cx.counters.consumed.inc();
        Next::Consumed
    }

    /// Sends up to one burst of frames from the inject ring. Returns how many were taken
    /// off the ring.
    pub fn inject(&mut self, cx: &mut BurstCtx<'_>) -> usize {
        let Some(ring) = self.inject.as_mut() else {
            return 0;
        };
        let (snap, counters) = (cx.snap, cx.counters);
        let local = &mut self.local;
        local.clear();
        let pool = &mut *cx.pool;
        let taken = ring.pop_burst(MAX_BURST, |entry| {
            match injected_packet(snap, pool, entry) {
                Some(pkt) => {
                    // A batch of MAX_BURST always has room: at most MAX_BURST are taken.
                    let _ = local.push(pkt);
                    counters.injected.inc();
                    counters.originated.inc();
                }
                None => counters.inject_dropped.inc(),
            }
            true
        });
        if !local.is_empty() {
            let sent = output(cx, self.local.as_mut_slice());
            counters.stage_packets[Stage::Output as usize].add(u64::from(sent));
            self.local.clear();
        }
        taken
    }
}

/// Where a frame the server does not take goes: broadcasts on to their usual place, a
/// frame to the server's MAC nowhere.
fn not_for_server(net: &NetworkEntry, pkt: &Packet) -> Next {
    if pkt.meta.flags & Meta::MULTICAST == 0 {
        Next::Drop(DropReason::ToDhcpServer, Stage::SlowPath)
    } else if net.routed && pkt.meta.ethertype == EtherType::ARP.0 {
        Next::Arp
    } else {
        Next::Flood
    }
}

/// Whether the client hardware address (`chaddr`) of the DHCP message in `l3` may be asked
/// for from `port`: never another port's MAC (the server would hand that port's address and
/// options to whoever asks), and on a port with port security only one of its own MACs
/// (else one VM could drain a pool that serves unknown MACs). A message too short to carry
/// one is left to the server, which drops it.
fn client_belongs_to_port(snap: &Snapshot, slot: u16, port: PortId, l3: &[u8]) -> bool {
    let Some(chaddr) = dhcp_chaddr(l3) else {
        return true;
    };
    if snap
        .static_mac(slot, chaddr)
        .is_some_and(|owner| owner != port)
    {
        return false;
    }
    snap.port_security(port)
        .is_none_or(|policy| policy.macs().contains(&chaddr))
}

/// The `chaddr` of the DHCP message in the IPv4/UDP packet `l3`, packed, when the
/// message is long enough to hold it.
fn dhcp_chaddr(l3: &[u8]) -> Option<u64> {
    let ip = Ipv4Packet::new_checked(l3).ok()?;
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    // BOOTP: op, htype, hlen, hops, xid (4), secs, flags, ciaddr, yiaddr, siaddr, giaddr,
    // then chaddr at offset 28 (RFC 2131 §2).
    let mac = udp.payload().get(28..34)?;
    Some(mac_to_u64([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]))
}

/// Whether `l3` starts an IPv4 packet to UDP port 67, unfragmented (a fragment of a DHCP
/// message is not a message the server could read).
fn is_dhcp_to_server(l3: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(l3) else {
        return false;
    };
    if ip.protocol() != IpProtocol::UDP || ip.more_frags() || ip.frag_offset() != 0 {
        return false;
    }
    UdpPacket::new_checked(ip.payload()).is_ok_and(|udp| udp.dst_port() == DHCP_SERVER_PORT)
}

/// A packet for an inject ring entry, in a frame of the pool; `None` when the entry is
/// malformed, its network or port is no longer configured, or the pool is empty.
fn injected_packet(snap: &Snapshot, pool: &mut FramePool, entry: &[u8]) -> Option<Packet> {
    let (header, frame) = RingHeader::read(entry)?;
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ethertype = eth.ethertype();
    if ethertype == EtherType::VLAN {
        // The worker tags for the output port; an already-tagged frame would be tagged twice.
        return None;
    }
    let slot = snap.network_slot(header.network)?;
    if !snap.port_serves(header.port, slot) || header.port == ORIGINATED {
        return None;
    }
    let (id, offset) = pool.alloc_with(frame)?;
    Some(Packet {
        frame: id,
        offset,
        len: frame.len() as u16,
        in_port: ORIGINATED,
        meta: Meta {
            next: Next::Output(header.port),
            network: slot,
            ethertype: ethertype.0,
            tci: 0,
            flags: 0,
            l3_offset: EthernetFrame::<&[u8]>::HEADER_LEN as u8,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_header_round_trips() {
        let header = RingHeader {
            port: PortId(0x1234),
            network: NetworkUid(0xdead_beef),
            l3_offset: 18,
        };
        let mut entry = [0u8; 12];
        header.write(&mut entry);
        entry[8..].copy_from_slice(&[1, 2, 3, 4]);
        let (read, frame) = RingHeader::read(&entry).unwrap();
        assert_eq!(read, header);
        assert_eq!(frame, &[1, 2, 3, 4]);
        assert!(RingHeader::read(&entry[..7]).is_none());
    }

    #[test]
    fn dhcp_test_needs_udp_67_unfragmented() {
        let mut ip = [0u8; 28];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[9] = 17;
        ip[20..22].copy_from_slice(&68u16.to_be_bytes());
        ip[22..24].copy_from_slice(&67u16.to_be_bytes());
        ip[24..26].copy_from_slice(&8u16.to_be_bytes());
        assert!(is_dhcp_to_server(&ip));
        let mut frag = ip;
        frag[6] = 0x20; // more fragments
        assert!(!is_dhcp_to_server(&frag));
        let mut tcp = ip;
        tcp[9] = 6;
        assert!(!is_dhcp_to_server(&tcp));
        let mut other = ip;
        other[23] = 68;
        assert!(!is_dhcp_to_server(&other));
        assert!(!is_dhcp_to_server(&ip[..24]));
        assert!(!is_dhcp_to_server(&[]));
    }
}
