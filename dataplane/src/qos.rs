//! QoS of VM ports (Neutron QoS policies): policing to a bandwidth limit per port and
//! direction, and DSCP marking of what the VM sends.
//!
//! Directions are Neutron's, seen from the VM: *egress* is what the VM sends (policed and
//! marked by [`QosEgress`], on bursts received from the port, after port security and
//! security groups), *ingress* what it receives (policed by [`QosIngress`], after the
//! forwarding decision, on unicast frames to the port).
//!
//! Policing is a token bucket of bytes (frame lengths on the wire, without FCS, as OVS and
//! tc count them), refilled from the worker's clock ([`BurstCtx::now_ns`]), no syscall, no
//! allocation: the buckets are a per-worker array by port index, sized when the worker is
//! made. A bucket follows the snapshot lazily: when the rate it was filled for differs from
//! the port's current one, it starts over full at the new rate, so a policy change applies
//! at once and an unchanged port keeps its credit across applies.
//!
//! Per port across workers: there is one worker today, so each port has exactly one bucket
//! per direction. With several workers (#19) each worker keeps its own buckets, so a port
//! whose traffic several workers see would get the rate once per worker. The plan for #19
//! is to keep a policed direction on one worker (a VM port's receive queues on one worker
//! for egress; for ingress, hand frames to a policed port over to the worker owning that
//! port, as NAT flows are handed off) rather than share a bucket under atomics on the
//! packet path.
//!
//! Not policed on ingress (documented in the README): flooded replicas (broadcast,
//! multicast, unknown unicast) and frames a router sends after the burst (released once
//! ARP resolved); both are control traffic in volume, and unicast carries the bulk.

use crate::drop::DropReason;
use crate::packet::{Meta, Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::port::PortId;
use crate::ratelimit::{ByteBucket, ByteRate};
use crate::wire::ethernet::EtherType;
use crate::wire::ipv4::Ipv4Packet;

/// A VM port's QoS, compiled from its policy (its own, else its network's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortQos {
    /// Bandwidth limit on what the VM sends.
    pub egress: Option<ByteRate>,
    /// Bandwidth limit on what the VM receives.
    pub ingress: Option<ByteRate>,
    /// DSCP (0..=63) written into the IPv4 and IPv6 packets the VM sends.
    pub dscp: Option<u8>,
}

impl PortQos {
    /// Whether the egress stage has anything to do for the port.
    pub const fn acts_on_egress(&self) -> bool {
        self.egress.is_some() || self.dscp.is_some()
    }
}

/// One direction's buckets of a worker, by port index.
#[derive(Debug, Default)]
struct Buckets(Box<[ByteBucket]>);

impl Buckets {
    fn new(max_ports: usize) -> Self {
        Buckets(vec![ByteBucket::default(); max_ports].into_boxed_slice())
    }

    /// Takes `bytes` from `port`'s bucket at `rate`; in a dry run (an explained packet)
    /// says whether it would, taking nothing.
    #[inline]
    fn allow(
        &mut self,
        port: PortId,
        rate: ByteRate,
        now_ns: u64,
        bytes: u32,
        dry_run: bool,
    ) -> bool {
        match self.0.get_mut(port.index()) {
            Some(b) => {
                let mut probe;
                let b = if dry_run {
                    probe = *b;
                    &mut probe
                } else {
                    b
                };
                if b.rate() != rate {
                    *b = ByteBucket::full(rate, now_ns);
                }
                b.allow(now_ns, bytes)
            }
            // A port beyond what the worker was sized for (it has no counters either and
            // cannot be attached): fail closed rather than pass unpoliced.
            None => false,
        }
    }
}

/// Writes `dscp` into the IPv4 or IPv6 header of a frame (keeping ECN; IPv4 with an
/// incremental checksum update); `true` when it changed the packet. A header too short or
/// of another version is left alone for the stages that parse it to judge: marking never
/// drops.
#[inline]
fn mark(frame: &mut [u8], meta: &Meta, dscp: u8) -> bool {
    let Some(l3) = frame.get_mut(usize::from(meta.l3_offset)..) else {
        return false;
    };
    match EtherType(meta.ethertype) {
        EtherType::IPV4 => {
            if l3.len() < 20 || l3[0] >> 4 != 4 || l3[1] >> 2 == dscp {
                return false;
            }
            Ipv4Packet::new_unchecked(l3).set_dscp_incremental(dscp);
            true
        }
        EtherType::IPV6 => {
            // Version (4 bits), traffic class (8: DSCP then ECN), flow label (20).
            if l3.len() < 40 || l3[0] >> 4 != 6 {
                return false;
            }
            let old = (l3[0] << 4) | (l3[1] >> 4);
            let new = (dscp << 2) | (old & 0x03);
            if old == new {
                return false;
            }
            l3[0] = (l3[0] & 0xf0) | (new >> 4);
            l3[1] = (l3[1] & 0x0f) | (new << 4);
            true
        }
        _ => false,
    }
}

/// The egress stage: polices and marks what a VM port with a QoS policy sends.
#[derive(Debug, Default)]
pub struct QosEgress {
    buckets: Buckets,
}

impl QosEgress {
    /// A stage with a bucket for every port id below `max_ports`.
    pub fn new(max_ports: usize) -> Self {
        QosEgress {
            buckets: Buckets::new(max_ports),
        }
    }
}

impl BurstStage for QosEgress {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::QosEgress
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::L2
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let port = cx.in_port;
        let Some(&qos) = cx.snap.qos(port) else {
            return Outcome {
                packets: 0,
                produced: Pending::L2,
            };
        };
        let now = cx.now_ns;
        let mut checked = 0;
        let (mut policed, mut policed_bytes, mut marked) = (0u64, 0u64, 0u64);
        for pkt in pkts.iter_mut() {
            if pkt.meta.next != Next::L2 {
                continue;
            }
            checked += 1;
            if let Some(rate) = qos.egress {
                let len = cx.pool.packet_len(pkt) as u32;
                if !self.buckets.allow(port, rate, now, len, cx.dry_run) {
                    pkt.meta.next = Next::Drop(DropReason::Policed, Stage::QosEgress);
                    policed += 1;
                    policed_bytes += u64::from(len);
                    continue;
                }
            }
            if let Some(dscp) = qos.dscp {
                let meta = pkt.meta;
                marked += u64::from(mark(cx.pool.data_mut(pkt), &meta, dscp));
            }
        }
        if let Some(pc) = cx.counters.port(port) {
            if policed > 0 {
                pc.policed_egress_packets.add(policed);
                pc.policed_egress_bytes.add(policed_bytes);
            }
            if marked > 0 {
                pc.dscp_marked.add(marked);
            }
        }
        Outcome {
            packets: checked,
            produced: if policed > 0 {
                Pending::L2 | Pending::DONE
            } else {
                Pending::L2
            },
        }
    }
}

/// The ingress stage: polices unicast frames to VM ports with an ingress limit.
#[derive(Debug, Default)]
pub struct QosIngress {
    buckets: Buckets,
}

impl QosIngress {
    /// A stage with a bucket for every port id below `max_ports`.
    pub fn new(max_ports: usize) -> Self {
        QosIngress {
            buckets: Buckets::new(max_ports),
        }
    }
}

impl BurstStage for QosIngress {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::QosIngress
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::SEND
    }

    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let snap = cx.snap;
        let now = cx.now_ns;
        let mut checked = 0;
        let mut refused = false;
        for pkt in pkts.iter_mut() {
            let Next::Output(out) = pkt.meta.next else {
                continue;
            };
            let Some(rate) = snap.qos(out).and_then(|q| q.ingress) else {
                continue;
            };
            checked += 1;
            let len = cx.pool.packet_len(pkt) as u32;
            if !self.buckets.allow(out, rate, now, len, cx.dry_run) {
                pkt.meta.next = Next::Drop(DropReason::Policed, Stage::QosIngress);
                refused = true;
                if let Some(pc) = cx.counters.port(out) {
                    pc.policed_ingress_packets.inc();
                    pc.policed_ingress_bytes.add(u64::from(len));
                }
            }
        }
        Outcome {
            packets: checked,
            produced: if refused {
                Pending::SEND | Pending::DONE
            } else {
                Pending::SEND
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    fn meta(ethertype: EtherType) -> Meta {
        Meta {
            ethertype: ethertype.0,
            l3_offset: 14,
            ..Meta::default()
        }
    }

    fn ipv4_frame(tos: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        let mut ip = vec![
            0x45, tos, 0, 28, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 18, 1, 10, 198, 18, 2, 20,
        ];
        let c = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0; 8]);
        f
    }

    #[test]
    fn ipv4_mark_keeps_ecn_and_the_checksum_right() {
        for tos in [0x00, 0x03, 0xb8, 0x01, 0xff] {
            for dscp in [0u8, 10, 26, 46, 56] {
                let mut f = ipv4_frame(tos);
                let changed = mark(&mut f, &meta(EtherType::IPV4), dscp);
                assert_eq!(changed, tos >> 2 != dscp);
                assert_eq!(f[15], (dscp << 2) | (tos & 3));
                assert_eq!(
                    checksum::checksum(&f[14..34]),
                    0,
                    "tos {tos:#x} dscp {dscp}"
                );
            }
        }
    }

    #[test]
    fn ipv6_mark_keeps_ecn_and_flow_label() {
        let mut f = vec![0u8; 14 + 40];
        f[14..18].copy_from_slice(&[0x6a, 0xb1, 0x23, 0x45]); // tc 0xab, flow 0x12345
        assert!(mark(&mut f, &meta(EtherType::IPV6), 46));
        let tc = (f[14] << 4) | (f[15] >> 4);
        assert_eq!(tc, (46 << 2) | 0x03);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u32::from_be_bytes([0, f[15] & 0x0f, f[16], f[17]]), 0x12345);
    }

    #[test]
    fn short_or_foreign_headers_are_left_alone() {
        let mut short = ipv4_frame(0);
        short.truncate(14 + 19);
        let copy = short.clone();
        assert!(!mark(&mut short, &meta(EtherType::IPV4), 46));
        assert_eq!(short, copy);
        let mut v6_in_v4 = ipv4_frame(0);
        v6_in_v4[14] = 0x65;
        assert!(!mark(&mut v6_in_v4, &meta(EtherType::IPV4), 46));
        let mut arp = vec![0u8; 42];
        assert!(!mark(&mut arp, &meta(EtherType::ARP), 46));
        let mut runt = vec![0u8; 10];
        assert!(!mark(&mut runt, &meta(EtherType::IPV4), 46));
    }
}
