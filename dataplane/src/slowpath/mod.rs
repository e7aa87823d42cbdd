//! The worker's side of the slow path: the punt ring up to the control plane and the
//! inject ring back, as in the design's packet path.
//!
//! The L2 stage sends a frame here ([`Next::SlowPath`]) when it is a broadcast on a network
//! that offers services, or is addressed to the network's service MAC. This stage then:
//!
//! - copies a packet that one of the network's services takes (its [`service`] table in the
//!   snapshot: protocol, destination port, optionally address) into the punt ring, with
//!   the service's id in the ring header, once the service admitted it and within the
//!   input port's budget for that service, and frees the frame. A broadcast taken so is
//!   not flooded on: like OVN's native DHCP, the service is the only one to hear it;
//! - answers ARP requests for the services' addresses in place, as the router stage does
//!   for router addresses, so that clients can unicast to them (DHCP renewals);
//! - sends every other broadcast on to where it would have gone (flooding, or the router
//!   stage for ARP on a routed network), and drops anything else sent to the service MAC.
//!
//! Replies come back on the inject ring as whole Ethernet frames with the port and network
//! to leave by; the worker sends them at its next housekeeping round, tagging them for
//! the port as it would any frame of that network.
//!
//! Both rings are the bounded SPSC slot rings of [`crate::ring`]: the worker never
//! allocates, blocks or waits on the control plane. A full punt ring is a counted drop,
//! and the client retries.

pub mod dhcp;
pub mod metadata;
pub mod service;

pub use dhcp::DHCP_SERVER_PORT;
pub use metadata::{METADATA_ADDR, METADATA_PORT};
pub use service::{
    NetworkService, NetworkServices, ServiceId, ServiceKind, ServiceMatch, MAX_SERVICES, SERVICES,
};

use crate::buf::FramePool;
use crate::drop::DropReason;
use crate::ident::FdbKey;
use crate::l3::answer_arp_in_place;
use crate::output::output;
use crate::packet::{Batch, Meta, Next, Packet, MAX_BURST};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::ratelimit::{BucketConfig, TokenBucket};
use crate::ring::{self, Consumer, Producer};
use crate::snapshot::{NetworkEntry, NetworkUid, Snapshot};
use crate::wire::{ArpOperation, ArpPacket, EtherType, EthernetFrame};

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
    /// Per service (by id), the frames one port may punt to it: one VM cannot starve the
    /// others, nor spend another service's share.
    per_port: [BucketConfig; MAX_SERVICES],
}

impl Default for SlowPathConfig {
    fn default() -> Self {
        SlowPathConfig {
            per_port: [BucketConfig {
                rate_per_sec: 100,
                burst: 200,
            }; MAX_SERVICES],
        }
    }
}

impl SlowPathConfig {
    /// This configuration with `per_port` as each port's budget for `service`.
    pub fn with_per_port(mut self, service: ServiceId, per_port: BucketConfig) -> Self {
        if let Some(slot) = self.per_port.get_mut(service.index()) {
            *slot = per_port;
        }
        self
    }

    /// Each port's budget for `service`.
    pub fn per_port(&self, service: ServiceId) -> BucketConfig {
        self.per_port[service.index() % MAX_SERVICES]
    }
}

/// What travels in front of a frame on the rings: the port it came in by (punt) or leaves
/// by (inject), its network, the service it is for (punt) or from (inject), and (punt
/// only) where its IPv4 header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingHeader {
    /// The port.
    pub port: PortId,
    /// The network's stable identity (slots change between snapshots, uids do not).
    pub network: NetworkUid,
    /// The service: the control plane dispatches a punted frame by it.
    pub service: ServiceId,
    /// Offset of the L3 header in the frame (after any 802.1Q tag); 0 on inject.
    pub l3_offset: u8,
}

impl RingHeader {
    /// Writes the header into the first [`RING_HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.port.0.to_le_bytes());
        out[2] = self.l3_offset;
        out[3] = self.service.0;
        out[4..8].copy_from_slice(&self.network.0.to_le_bytes());
    }

    /// Splits a ring entry into its header and frame; `None` when it is too short.
    pub fn read(entry: &[u8]) -> Option<(RingHeader, &[u8])> {
        let (head, frame) = entry.split_at_checked(RING_HEADER_LEN)?;
        Some((
            RingHeader {
                port: PortId(u16::from_le_bytes([head[0], head[1]])),
                l3_offset: head[2],
                service: ServiceId(head[3]),
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
    /// Per input port (by index) and service, its budget (index
    /// `port * MAX_SERVICES + service`); grown when a port first punts.
    budgets: Vec<TokenBucket>,
    budget_config: SlowPathConfig,
    /// The frames taken off the inject ring in one round.
    to_send: Batch,
    /// Of those, the metadata proxy's: TCP segments of a connection the VM's security
    /// groups track, checked (and so tracked) as any reply to the VM would be.
    to_check: Batch,
}

impl Default for SlowPath {
    fn default() -> Self {
        SlowPath {
            punt: None,
            inject: None,
            budgets: Vec::new(),
            budget_config: SlowPathConfig::default(),
            to_send: Batch::with_capacity(MAX_BURST),
            to_check: Batch::with_capacity(MAX_BURST),
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

    /// The budget of `port` for `service`, following the snapshot's configuration.
    fn budget(
        &mut self,
        port: PortId,
        service: ServiceId,
        config: &SlowPathConfig,
    ) -> &mut TokenBucket {
        if *config != self.budget_config {
            self.budget_config = *config;
            self.budgets.clear();
        }
        let first = port.index() * MAX_SERVICES;
        while self.budgets.len() <= first {
            self.budgets
                .extend(self.budget_config.per_port.map(TokenBucket::new));
        }
        &mut self.budgets[first + service.index() % MAX_SERVICES]
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
            pkt.meta.next = self.next_step(cx, pkt);
            produced |= Pending::of(pkt.meta.next);
        }
        Outcome {
            packets: entered,
            produced,
        }
    }
}

impl SlowPath {
    /// Where `pkt` goes: punted for a service, answered (ARP), or on to its usual place.
    fn next_step(&mut self, cx: &mut BurstCtx<'_>, pkt: &mut Packet) -> Next {
        let snap = cx.snap;
        let slot = pkt.meta.network;
        let Some(net) = snap.network(slot) else {
            return Next::Drop(DropReason::InternalError, Stage::SlowPath);
        };
        let services = snap.services(slot);
        let l3 = usize::from(pkt.meta.l3_offset);
        if pkt.meta.ethertype == EtherType::IPV4.0 {
            let ip = cx.pool.data(pkt).get(l3..).unwrap_or_default();
            if let Some(kind) = services.match_ipv4(ip).and_then(ServiceId::kind) {
                if let Some(reason) = (kind.admit)(snap, slot, pkt.in_port, ip) {
                    return Next::Drop(reason, Stage::SlowPath);
                }
                return self.punt(cx, pkt, net.uid, kind);
            }
        } else if pkt.meta.ethertype == EtherType::ARP.0 {
            let data = cx.pool.data_mut(pkt);
            if let Some(arp) = data.get(l3..).and_then(|b| ArpPacket::new_checked(b).ok()) {
                let asked = u32::from(arp.target_protocol_addr());
                let sender = u32::from(arp.sender_protocol_addr());
                if arp.is_ethernet_ipv4() && services.addresses().contains(&sender) {
                    return Next::Drop(DropReason::ArpClaimsDhcpServer, Stage::SlowPath);
                }
                if arp.is_ethernet_ipv4()
                    && arp.operation() == ArpOperation::REQUEST
                    && services.addresses().contains(&asked)
                {
                    let own = net.service_mac.address();
                    answer_arp_in_place(data, l3, own);
                    pkt.meta.flags &= !Meta::MULTICAST;
                    return Next::Output(pkt.in_port);
                }
            }
        }
        if net.metadata_via_router && pkt.meta.flags & Meta::MULTICAST == 0 {
            // Sent to a router's MAC (the L2 stage's reason for sending it here) and not
            // the proxy's: routed as if it had never come here.
            let dst = EthernetFrame::new_unchecked(cx.pool.data(pkt)).dst_mac();
            if let Some(router) = snap.routing().router_by_mac(FdbKey::packed(slot, dst)) {
                return Next::Route(router);
            }
        }
        not_for_service(net, pkt)
    }

    fn punt(
        &mut self,
        cx: &mut BurstCtx<'_>,
        pkt: &Packet,
        network: NetworkUid,
        service: &ServiceKind,
    ) -> Next {
        if cx.dry_run {
            // An explained packet would go to the slow path: it takes no token and is
            // not handed over.
            cx.pool.free_packet(pkt);
            return Next::Consumed;
        }
        if !self
            .budget(pkt.in_port, service.id, cx.snap.slow_path())
            .allow(cx.now_ns)
        {
            return Next::Drop(service.rate_limited, Stage::SlowPath);
        }
        let frame = cx.pool.data(pkt);
        if frame.len() > MAX_RING_FRAME || pkt.chained {
            return Next::Drop(DropReason::PuntTooLarge, Stage::SlowPath);
        }
        let header = RingHeader {
            port: pkt.in_port,
            network,
            service: service.id,
            l3_offset: pkt.meta.l3_offset,
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
        cx.pool.free_packet(pkt);
        cx.counters.punted.inc();
        cx.counters.punted_by_service[service.id.index() % MAX_SERVICES].inc();
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
        let (to_send, to_check) = (&mut self.to_send, &mut self.to_check);
        to_send.clear();
        to_check.clear();
        let pool = &mut *cx.pool;
        let taken = ring.pop_burst(MAX_BURST, |entry| {
            match injected_packet(snap, pool, entry) {
                Some((pkt, service)) => {
                    // A batch of MAX_BURST always has room: at most MAX_BURST are taken.
                    let _ = if service == ServiceId::METADATA {
                        to_check.push(pkt)
                    } else {
                        to_send.push(pkt)
                    };
                    counters.injected.inc();
                    counters.originated.inc();
                }
                None => counters.inject_dropped.inc(),
            }
            true
        });
        if !self.to_check.is_empty() {
            // The VM's SYN went through its security groups; the stack's SYN-ACK must be
            // seen by them too, or the VM's next segment is out of the tracked window.
            if snap.security_groups().any() {
                crate::secgroup::SgIngress.process(cx, self.to_check.as_mut_slice());
            }
            let sent = output(cx, self.to_check.as_mut_slice());
            counters.stage_packets[Stage::Output as usize].add(u64::from(sent));
            self.to_check.clear();
        }
        if !self.to_send.is_empty() {
            let sent = output(cx, self.to_send.as_mut_slice());
            counters.stage_packets[Stage::Output as usize].add(u64::from(sent));
            self.to_send.clear();
        }
        taken
    }
}

/// Where a frame no service takes goes: broadcasts on to their usual place, a frame to
/// the service MAC nowhere.
fn not_for_service(net: &NetworkEntry, pkt: &Packet) -> Next {
    if pkt.meta.flags & Meta::MULTICAST == 0 {
        Next::Drop(DropReason::ToDhcpServer, Stage::SlowPath)
    } else if net.routed && pkt.meta.ethertype == EtherType::ARP.0 {
        Next::Arp
    } else {
        Next::Flood
    }
}

/// A packet for an inject ring entry, in a frame of the pool, and the service that sent
/// it; `None` when the entry is malformed, its network or port is no longer configured,
/// or the pool is empty.
fn injected_packet(
    snap: &Snapshot,
    pool: &mut FramePool,
    entry: &[u8],
) -> Option<(Packet, ServiceId)> {
    let (header, frame) = RingHeader::read(entry)?;
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ethertype = eth.ethertype();
    if ethertype == EtherType::VLAN {
        // The worker tags for the output port; an already-tagged frame would be tagged twice.
        return None;
    }
    let slot = snap.network_slot(header.network)?;
    if !snap.port_serves(header.port, slot) || header.port == PortId::NONE {
        return None;
    }
    let (id, offset) = pool.alloc_with(frame)?;
    let pkt = Packet {
        frame: id,
        offset,
        len: frame.len() as u16,
        in_port: PortId::NONE,
        meta: Meta {
            next: Next::Output(header.port),
            network: slot,
            ethertype: ethertype.0,
            tci: 0,
            flags: 0,
            l3_offset: EthernetFrame::<&[u8]>::HEADER_LEN as u8,
        },
        chained: false,
    };
    Some((pkt, header.service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_header_round_trips() {
        let header = RingHeader {
            port: PortId(0x1234),
            network: NetworkUid(0xdead_beef),
            service: ServiceId(3),
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
}
