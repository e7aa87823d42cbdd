//! Checksum offload that a kernel interface leaves unfinished in the frame.
//!
//! A Linux sender whose interface offers TX checksum offload (a veth does by default)
//! does not compute its TCP and UDP checksums: it stores only the sum of the pseudo-header
//! in the checksum field (`CHECKSUM_PARTIAL`) and leaves the rest to the device. On a veth
//! the peer's stack knows this from the skb; through AF_XDP only the bytes travel, so a
//! switch that forwards them unchanged hands its receivers segments whose checksum is
//! wrong, and they drop them. Ping works, TCP and UDP do not, unless every guest turns
//! offloads off, which no user does.
//!
//! So a frame from such a port gets its checksum completed here, as the device would have:
//! when the field holds exactly the pseudo-header sum, the one's-complement sum of the
//! segment (that field included) is complemented into it. Only a frame whose field equals
//! the pseudo-header sum is touched; a complete, valid checksum that happens to equal it
//! is left as it was by the same arithmetic (the segment then sums to its complement), so
//! the rewrite is safe on any frame and costs a pass over the payload only when needed.

use core::net::Ipv4Addr;

use crate::buf::FramePool;
use crate::packet::{Next, Packet};
use crate::pipeline::{BurstCtx, BurstStage, Outcome, Pending, Stage};
use crate::wire::checksum;
use crate::wire::ipv6::{Ipv6Packet, UpperLayer};
use crate::wire::{EtherType, IpProtocol, Ipv4Packet};

/// Offset of the checksum field within a TCP and a UDP header.
const TCP_CHECKSUM_AT: usize = 16;
const UDP_CHECKSUM_AT: usize = 6;

/// Completes the TCP or UDP checksum of the IPv4 packet at `l3` in `frame` if the field
/// holds only the pseudo-header sum; returns whether it did. Anything else (another
/// protocol, a fragment, a truncated header, a complete checksum) is left untouched.
pub fn complete_partial_checksum(frame: &mut [u8], l3: usize) -> bool {
    let Some(ip_bytes) = frame.get_mut(l3..) else {
        return false;
    };
    let Ok(ip) = Ipv4Packet::new_checked(&*ip_bytes) else {
        return false;
    };
    if ip.is_fragment() {
        return false;
    }
    let field = match ip.protocol() {
        IpProtocol::TCP => TCP_CHECKSUM_AT,
        IpProtocol::UDP => UDP_CHECKSUM_AT,
        _ => return false,
    };
    let (src, dst, protocol) = (ip.src_addr(), ip.dst_addr(), ip.protocol().0);
    let header_len = ip.header_len();
    let total = usize::from(ip.total_len());
    let Some(l4) = ip_bytes.get_mut(header_len..total) else {
        return false;
    };
    if l4.len() < field + 2 || l4.len() > usize::from(u16::MAX) {
        return false;
    }
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    let pseudo = pseudo_header_sum(src, dst, protocol, l4.len() as u16);
    if stored != pseudo {
        return false;
    }
    let mut csum = !checksum::sum(l4);
    if protocol == IpProtocol::UDP.0 && csum == 0 {
        // Zero means "no checksum" in UDP; its one's-complement twin stands in.
        csum = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

#[inline]
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    checksum::pseudo_header_v4(src, dst, protocol, length)
}

/// The same for the IPv6 packet at `l3` (RFC 8200 §8.1 pseudo-header), whose TCP or UDP
/// header follows any extension headers; fragments are left alone.
pub fn complete_partial_checksum6(frame: &mut [u8], l3: usize) -> bool {
    let Some(ip_bytes) = frame.get_mut(l3..) else {
        return false;
    };
    let Ok(ip) = Ipv6Packet::new_checked(&*ip_bytes) else {
        return false;
    };
    let Ok(UpperLayer::Header(protocol, at)) = ip.upper_layer() else {
        return false;
    };
    let field = match protocol {
        IpProtocol::TCP => TCP_CHECKSUM_AT,
        IpProtocol::UDP => UDP_CHECKSUM_AT,
        _ => return false,
    };
    let end = Ipv6Packet::<&[u8]>::HEADER_LEN + usize::from(ip.payload_len());
    let start = Ipv6Packet::<&[u8]>::HEADER_LEN + at;
    let addrs = checksum::sum(&ip_bytes[8..40]);
    let Some(l4) = ip_bytes.get_mut(start..end) else {
        return false;
    };
    if l4.len() < field + 2 || l4.len() > usize::from(u16::MAX) {
        return false;
    }
    let len = l4.len() as u32;
    let pseudo = checksum::combine(&[addrs, (len >> 16) as u16, len as u16, u16::from(protocol.0)]);
    let stored = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if stored != pseudo {
        return false;
    }
    let mut csum = !checksum::sum(l4);
    if csum == 0 {
        // UDP over IPv6 must carry a checksum; 0xffff is zero's one's-complement twin.
        csum = 0xffff;
    }
    l4[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    true
}

/// The stage: enabled by the control plane for ports on kernel interfaces (AF_XDP),
/// where local senders leave checksums partial; it runs before port security and L2, so
/// every later stage, the slow path and the receivers see complete checksums.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChecksumOffload;

impl BurstStage for ChecksumOffload {
    #[inline(always)]
    fn id(&self) -> Stage {
        Stage::ChecksumOffload
    }

    #[inline(always)]
    fn wants(&self) -> Pending {
        Pending::L2
    }

    #[inline]
    fn process(&mut self, cx: &mut BurstCtx<'_>, pkts: &mut [Packet]) -> Outcome {
        let completed = complete_burst(cx.pool, pkts);
        if completed > 0 {
            cx.counters.checksums_completed.add(completed);
        }
        Outcome {
            packets: pkts.len() as u32,
            produced: Pending::L2,
        }
    }
}

/// Completes partial checksums in every IPv4 and IPv6 packet of a burst whose next step is L2;
/// returns how many it completed (the caller counts them).
#[inline]
pub fn complete_burst(pool: &mut FramePool, pkts: &[Packet]) -> u64 {
    let mut completed = 0;
    for pkt in pkts {
        if pkt.meta.next != Next::L2 {
            continue;
        }
        let l3 = usize::from(pkt.meta.l3_offset);
        let done = match EtherType(pkt.meta.ethertype) {
            EtherType::IPV4 => complete_partial_checksum(pool.data_mut(pkt), l3),
            EtherType::IPV6 => complete_partial_checksum6(pool.data_mut(pkt), l3),
            _ => false,
        };
        if done {
            completed += 1;
        }
    }
    completed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{TcpPacket, UdpPacket};
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);

    #[test]
    fn ipv6_partial_checksums_are_completed_behind_extension_headers() {
        let src = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let dst = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
        ];
        // TCP: ports, sequence numbers, header length 5, SYN, window, checksum, urgent.
        let mut tcp = vec![
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0,
        ];
        tcp.extend_from_slice(&[0, 0, 0, 0, b'h', b'i', b'!']);
        let len = tcp.len() as u32;
        let pseudo = checksum::combine(&[
            checksum::sum(&src),
            checksum::sum(&dst),
            (len >> 16) as u16,
            len as u16,
            6,
        ]);
        let full = !checksum::combine(&[pseudo, checksum::sum(&tcp)]);
        // A hop-by-hop header (8 octets of padding) before TCP.
        let mut payload = vec![6, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&tcp);
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&payload);
        let at = 14 + 40 + 8 + 16;
        f[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        assert!(complete_partial_checksum6(&mut f, 14));
        assert_eq!(u16::from_be_bytes([f[at], f[at + 1]]), full);
        // Complete now: left alone.
        assert!(!complete_partial_checksum6(&mut f, 14));
    }

    /// An Ethernet/IPv4 frame carrying `l4` (whose checksum field is computed in full).
    fn frame(protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, protocol, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&SRC.octets());
        ip.extend_from_slice(&DST.octets());
        let c = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut l4 = l4.to_vec();
        let at = if protocol == 6 { 16 } else { 6 };
        l4[at..at + 2].fill(0);
        let pseudo = pseudo_header_sum(SRC, DST, protocol, l4.len() as u16);
        let mut c = !checksum::combine(&[pseudo, checksum::sum(&l4)]);
        if protocol == 17 && c == 0 {
            c = 0xffff;
        }
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&l4);
        f
    }

    fn tcp(payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 20];
        h[0..2].copy_from_slice(&5201u16.to_be_bytes());
        h[2..4].copy_from_slice(&40000u16.to_be_bytes());
        h[12] = 5 << 4;
        h[13] = 0x18;
        h.extend_from_slice(payload);
        h
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&5353u16.to_be_bytes());
        h[2..4].copy_from_slice(&53u16.to_be_bytes());
        h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    /// The frame as a sender with checksum offload hands it over: the field holds the
    /// pseudo-header sum only.
    fn partial(mut f: Vec<u8>, protocol: u8) -> Vec<u8> {
        let at = 34 + if protocol == 6 { 16 } else { 6 };
        let l4_len = (f.len() - 34) as u16;
        let pseudo = pseudo_header_sum(SRC, DST, protocol, l4_len);
        f[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        f
    }

    fn valid(f: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        match ip.protocol() {
            IpProtocol::TCP => TcpPacket::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(SRC, DST),
            _ => UdpPacket::new_checked(ip.payload())
                .unwrap()
                .verify_checksum(SRC, DST),
        }
    }

    #[test]
    fn completes_tcp_and_udp_as_the_device_would() {
        for (proto, l4) in [(6u8, tcp(b"hello, switch")), (17, udp(b"query"))] {
            let good = frame(proto, &l4);
            assert!(valid(&good));
            let mut f = partial(good.clone(), proto);
            assert!(!valid(&f), "a partial checksum does not verify");
            assert!(complete_partial_checksum(&mut f, 14));
            assert_eq!(f, good);
            assert!(!complete_partial_checksum(&mut f, 14), "done once");
        }
    }

    #[test]
    fn leaves_everything_else_alone() {
        let good = frame(6, &tcp(b"x"));
        let mut f = good.clone();
        assert!(!complete_partial_checksum(&mut f, 14));
        assert_eq!(f, good);
        // A broken checksum that is not the pseudo-header sum stays broken (the receiver
        // drops it, as it should).
        let mut bad = good.clone();
        bad[50] ^= 0x55;
        let copy = bad.clone();
        assert!(!complete_partial_checksum(&mut bad, 14));
        assert_eq!(bad, copy);
        // ICMP, fragments, truncated segments, short frames.
        let mut icmp = frame(17, &udp(b"abc"));
        icmp[23] = 1;
        assert!(!complete_partial_checksum(&mut icmp.clone(), 14));
        let mut frag = partial(frame(17, &udp(b"abc")), 17);
        frag[20] |= 0x20;
        assert!(!complete_partial_checksum(&mut frag, 14));
        let mut short = partial(frame(6, &tcp(b"")), 6);
        short.truncate(40);
        assert!(!complete_partial_checksum(&mut short, 14));
        assert!(!complete_partial_checksum(&mut [0u8; 10], 14));
    }

    proptest! {
        #[test]
        fn partial_becomes_valid_and_valid_stays(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            is_tcp in any::<bool>(),
        ) {
            let (proto, l4) = if is_tcp { (6, tcp(&payload)) } else { (17, udp(&payload)) };
            let good = frame(proto, &l4);
            let mut f = good.clone();
            complete_partial_checksum(&mut f, 14);
            prop_assert_eq!(&f, &good, "a valid checksum never changes");
            let mut p = partial(good.clone(), proto);
            complete_partial_checksum(&mut p, 14);
            prop_assert!(valid(&p));
            prop_assert_eq!(p, good);
        }

        #[test]
        fn never_panics(mut data in proptest::collection::vec(any::<u8>(), 0..120), l3 in 0usize..130) {
            let _ = complete_partial_checksum(&mut data, l3);
        }
    }
}
