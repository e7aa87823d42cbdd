//! The header surgery of NAT: reading a packet's flow key and rewriting its addresses and
//! ports with incremental checksum updates (RFC 1624), so a translated packet costs a few
//! dozen instructions whatever its length.
//!
//! Only what NAT can key is handled: TCP, UDP and ICMP echo (request and reply, keyed by
//! identifier), unfragmented or the first fragment. [`flow_key`] returns `None` for the
//! rest; the router stage decides what to do with them. ICMP errors about such a flow
//! ([`icmp_error_quote`]) are translated as the flow is, quoted packet and all
//! ([`translate_icmp_error`]), as RFC 5508 asks of a NAT.

use crate::conntrack::{FlowKey, Rewrite, FRAGMENT_ZONE};
use crate::wire::checksum::{apply, delta16, delta32};
use crate::wire::{Icmpv4Type, IpProtocol, Ipv4Packet, TcpFlags};

/// What the router needs to know of a packet's L4 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4 {
    /// The flow key in `zone`.
    pub key: FlowKey,
    /// TCP flags (empty for other protocols).
    pub flags: TcpFlags,
}

/// Why a packet has no flow key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unkeyed {
    /// A fragment other than the first: it carries no ports.
    Fragment,
    /// ICMP other than echo, or another protocol.
    Unsupported,
    /// The L4 header is cut short.
    Truncated,
}

const TCP: u8 = IpProtocol::TCP.0;
const UDP: u8 = IpProtocol::UDP.0;
const ICMP: u8 = IpProtocol::ICMP.0;

/// The flow key of the IPv4 packet at the start of `ip` (its header already checked).
#[inline]
pub fn flow_key(ip: &[u8], zone: u32) -> Result<L4, Unkeyed> {
    key_of(ip, zone, true)
}

/// The flow key of `ip`, with its TCP flags if `flags` (a quoted packet's TCP header may
/// stop after its first 8 bytes, before the flags).
#[inline(always)]
fn key_of(ip: &[u8], zone: u32, flags: bool) -> Result<L4, Unkeyed> {
    let p = Ipv4Packet::new_unchecked(ip);
    if p.frag_offset() != 0 {
        return Err(Unkeyed::Fragment);
    }
    let l4 = ip.get(p.header_len()..).ok_or(Unkeyed::Truncated)?;
    let proto = p.protocol().0;
    let word = |at: usize| -> Result<u16, Unkeyed> {
        l4.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or(Unkeyed::Truncated)
    };
    let (sport, dport, flags) = match proto {
        TCP => {
            let flags = if flags { word(12)? & 0x01ff } else { 0 };
            (word(0)?, word(2)?, TcpFlags(flags))
        }
        UDP => (word(0)?, word(2)?, TcpFlags(0)),
        ICMP => {
            let ty = *l4.first().ok_or(Unkeyed::Truncated)?;
            if ty != Icmpv4Type::ECHO_REQUEST.0 && ty != Icmpv4Type::ECHO_REPLY.0 {
                return Err(Unkeyed::Unsupported);
            }
            let id = word(4)?;
            (id, id, TcpFlags(0))
        }
        _ => return Err(Unkeyed::Unsupported),
    };
    Ok(L4 {
        key: FlowKey {
            zone,
            proto,
            src: u32::from(p.src_addr()),
            dst: u32::from(p.dst_addr()),
            sport,
            dport,
        },
        flags,
    })
}

/// Rewrites the packet at the start of `ip` (with flow key `key`, from [`flow_key`]) to
/// carry `to`'s addresses and ports, patching the IPv4 header checksum and the L4 checksum
/// (TCP and UDP cover the addresses through their pseudo-header; ICMP covers only its
/// identifier). A UDP checksum of zero (none) stays zero.
#[inline]
pub fn rewrite(ip: &mut [u8], key: &FlowKey, to: &Rewrite) {
    // Every changed field's difference is summed, then each checksum is patched once.
    let addresses = delta32(key.src, to.src) + delta32(key.dst, to.dst);
    let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
    p.set_src_addr(to.src.into());
    p.set_dst_addr(to.dst.into());
    p.set_checksum(apply(p.checksum(), addresses));
    let header_len = p.header_len();
    let Some(l4) = ip.get_mut(header_len..) else {
        return;
    };
    let (csum_at, ports) = match key.proto {
        TCP => (
            16,
            addresses + delta16(key.sport, to.sport) + delta16(key.dport, to.dport),
        ),
        UDP => (
            6,
            addresses + delta16(key.sport, to.sport) + delta16(key.dport, to.dport),
        ),
        // ICMP covers no pseudo-header; the identifier is one field at offset 4.
        ICMP => (2, delta16(key.sport, to.sport)),
        _ => return,
    };
    let Some(old) = l4.get(csum_at..csum_at + 2) else {
        // The packet quoted in an ICMP error may end before its checksum (its first 8
        // bytes are all an error must carry): the ports are there all the same.
        set_ports(l4, key, to);
        return;
    };
    let csum = u16::from_be_bytes([old[0], old[1]]);
    if key.proto == UDP && csum == 0 {
        // No checksum: only the ports change.
        set_ports(l4, key, to);
        return;
    }
    let mut csum = apply(csum, ports);
    if key.proto == UDP && csum == 0 {
        // RFC 768: a computed zero is sent as all ones.
        csum = 0xffff;
    }
    l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    set_ports(l4, key, to);
}

/// [`rewrite`] for a packet whose TCP checksum field is partial (a TSO super-frame's,
/// holding the pseudo-header sum for the device or the segmenter to complete): the
/// address changes are added to that sum as they are, not through its complement, and
/// the port changes leave it alone (ports are not in the pseudo-header), as Linux's
/// `inet_proto_csum_replace4` does for `CHECKSUM_PARTIAL`. Out of line: only
/// super-frames come here.
#[cold]
#[inline(never)]
pub fn rewrite_partial(ip: &mut [u8], key: &FlowKey, to: &Rewrite) {
    let addresses = delta32(key.src, to.src) + delta32(key.dst, to.dst);
    let mut p = Ipv4Packet::new_unchecked(&mut ip[..]);
    p.set_src_addr(to.src.into());
    p.set_dst_addr(to.dst.into());
    p.set_checksum(apply(p.checksum(), addresses));
    let header_len = p.header_len();
    let Some(l4) = ip.get_mut(header_len..) else {
        return;
    };
    let csum_at = match key.proto {
        TCP => 16,
        UDP => 6,
        _ => return set_ports(l4, key, to),
    };
    if let Some(old) = l4.get(csum_at..csum_at + 2) {
        let field = crate::gso::apply_partial(u16::from_be_bytes([old[0], old[1]]), addresses);
        l4[csum_at..csum_at + 2].copy_from_slice(&field.to_be_bytes());
    }
    set_ports(l4, key, to);
}

/// [`rewrite`] or [`rewrite_partial`], as the packet's checksum is.
#[inline(always)]
pub fn rewrite_with(ip: &mut [u8], key: &FlowKey, to: &Rewrite, partial: bool) {
    if partial {
        rewrite_partial(ip, key, to)
    } else {
        rewrite(ip, key, to)
    }
}

fn set_ports(l4: &mut [u8], key: &FlowKey, to: &Rewrite) {
    if key.proto == ICMP {
        if let Some(id) = l4.get_mut(4..6) {
            id.copy_from_slice(&to.sport.to_be_bytes());
        }
        return;
    }
    if let Some(ports) = l4.get_mut(0..4) {
        ports[..2].copy_from_slice(&to.sport.to_be_bytes());
        ports[2..].copy_from_slice(&to.dport.to_be_bytes());
    }
}

/// The rewrite that changes only the destination address to `dst` (a floating IP's fixed
/// IP on the way in).
#[inline]
pub fn to_dst(key: &FlowKey, dst: u32) -> Rewrite {
    Rewrite {
        src: key.src,
        sport: key.sport,
        dst,
        dport: key.dport,
    }
}

/// The rewrite that changes only the source address to `src` (a floating IP on the way
/// out).
#[inline]
pub fn to_src(key: &FlowKey, src: u32) -> Rewrite {
    Rewrite {
        src,
        sport: key.sport,
        dst: key.dst,
        dport: key.dport,
    }
}

/// Rewrites only the IPv4 addresses of a packet that has no flow key (a later fragment,
/// ICMP other than echo) for a stateless 1:1 translation; the L4 header, which such a
/// packet either lacks or does not checksum with addresses, is left alone.
#[inline]
pub fn rewrite_addresses(ip: &mut [u8], src: u32, dst: u32) {
    let mut p = Ipv4Packet::new_unchecked(ip);
    if u32::from(p.src_addr()) != src {
        p.set_src_incremental(src.into());
    }
    if u32::from(p.dst_addr()) != dst {
        p.set_dst_incremental(dst.into());
    }
}

/// The key of the fragment entry that translates the later fragments of the datagram
/// whose first fragment has flow key `key` (as it arrived) and identification `ident`:
/// later fragments carry no ports, only the addresses, protocol and identification.
#[inline]
pub fn fragment_key(key: &FlowKey, ident: u16) -> FlowKey {
    FlowKey {
        zone: key.zone | FRAGMENT_ZONE,
        proto: key.proto,
        src: key.src,
        dst: key.dst,
        sport: ident,
        dport: 0,
    }
}

/// The fragment key of the later fragment at the start of `ip` (its header checked).
#[inline]
pub fn later_fragment_key(ip: &[u8], zone: u32) -> FlowKey {
    let p = Ipv4Packet::new_unchecked(ip);
    let key = FlowKey {
        zone,
        proto: p.protocol().0,
        src: u32::from(p.src_addr()),
        dst: u32::from(p.dst_addr()),
        sport: 0,
        dport: 0,
    };
    fragment_key(&key, p.ident())
}

/// The identification of the packet at the start of `ip` if it is a first fragment (more
/// fragments follow it), whose translation its later fragments must find.
#[inline]
pub fn first_fragment(ip: &[u8]) -> Option<u16> {
    let p = Ipv4Packet::new_unchecked(ip);
    (p.more_frags() && p.frag_offset() == 0).then(|| p.ident())
}

/// The reply key of a fragment entry whose datagram is translated by `to`: unique per
/// translated flow (the translated source port is in it), never looked up.
#[inline]
pub fn fragment_reply(fragment: &FlowKey, to: &Rewrite) -> FlowKey {
    FlowKey {
        zone: fragment.zone,
        proto: fragment.proto,
        src: to.dst,
        dst: to.src,
        sport: to.sport,
        dport: fragment.sport,
    }
}

/// ICMP error types a NAT translates: destination unreachable, source quench, time
/// exceeded, parameter problem (RFC 5508 REQ-3; redirects do not cross a NAT).
const NAT_ERRORS: [u8; 4] = [3, 4, 11, 12];

/// The packet an ICMP error quotes, as [`icmp_error_quote`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    /// Offset of the quoted IPv4 header in the error's IPv4 packet.
    inner: usize,
    /// End of the ICMP message in the error's IPv4 packet (its total length).
    end: usize,
    /// The flow key of the quoted packet (in the zone asked for), as that packet was sent.
    pub key: FlowKey,
}

/// The quote of the ICMP error at the start of `ip` (an IPv4 packet whose header is
/// already checked), when it is an error a NAT translates, whole (not a fragment, its
/// ICMP checksum right) and quoting a packet NAT could key (see [`flow_key`]); `None`
/// for anything else.
pub fn icmp_error_quote(ip: &[u8], zone: u32) -> Option<Quote> {
    let p = Ipv4Packet::new_unchecked(ip);
    if p.protocol().0 != ICMP || p.is_fragment() {
        return None;
    }
    let start = p.header_len();
    let end = usize::from(p.total_len());
    let icmp = ip.get(start..end)?;
    if !NAT_ERRORS.contains(icmp.first()?) || icmp.len() < 8 + 20 {
        return None;
    }
    if crate::wire::checksum::checksum(icmp) != 0 {
        return None;
    }
    let inner = start + 8;
    let quoted = &ip[inner..end];
    if quoted[0] >> 4 != 4 || usize::from(quoted[0] & 0x0f) * 4 < 20 {
        return None;
    }
    // The quoted header's own checksum and total length are not checked: routers quote
    // what they got, and the quote is cut short by design.
    let key = key_of(quoted, zone, false).ok()?.key;
    Some(Quote { inner, end, key })
}

/// Rewrites the ICMP error at the start of `ip` (whose quote `quote` is) for a NAT: the
/// quoted packet to carry `quoted`'s addresses and ports (its IPv4 header checksum and,
/// where the quote holds it, its L4 checksum patched), the error's own source and
/// destination to `src` and `dst`, and the ICMP checksum computed again over the message.
pub fn translate_icmp_error(ip: &mut [u8], quote: &Quote, quoted: &Rewrite, src: u32, dst: u32) {
    rewrite(&mut ip[quote.inner..quote.end], &quote.key, quoted);
    rewrite_addresses(ip, src, dst);
    let start = Ipv4Packet::new_unchecked(&ip[..]).header_len();
    let icmp = &mut ip[start..quote.end];
    icmp[2..4].fill(0);
    let sum = crate::wire::checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
}

/// The translation that undoes `to` on a packet of the opposite direction: what a packet
/// quoted in an error travelling that way must carry.
#[inline]
pub fn mirrored(to: &Rewrite) -> Rewrite {
    Rewrite {
        src: to.dst,
        sport: to.dport,
        dst: to.src,
        dport: to.sport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;

    /// A TCP or UDP packet (20-byte IPv4 header, 8 bytes of L4 header used, payload),
    /// with both checksums computed in full.
    fn packet(proto: u8, src: u32, dst: u32, sport: u16, dport: u16) -> Vec<u8> {
        let l4_len = if proto == TCP { 20 } else { 8 };
        let total = 20 + l4_len + 6;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&src.to_be_bytes());
        p[16..20].copy_from_slice(&dst.to_be_bytes());
        if proto == ICMP {
            p[20] = 8;
            p[24..26].copy_from_slice(&sport.to_be_bytes());
        } else {
            p[20..22].copy_from_slice(&sport.to_be_bytes());
            p[22..24].copy_from_slice(&dport.to_be_bytes());
        }
        if proto == TCP {
            p[32] = 5 << 4;
            p[33] = 0x02;
        }
        if proto == UDP {
            p[24..26].copy_from_slice(&((l4_len + 6) as u16).to_be_bytes());
        }
        p[20 + l4_len..].copy_from_slice(b"pollux");
        fill(&mut p);
        p
    }

    /// Both checksums computed in full.
    fn fill(p: &mut [u8]) {
        p[10..12].fill(0);
        let h = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&h.to_be_bytes());
        let proto = p[9];
        let at = match proto {
            TCP => 20 + 16,
            UDP => 20 + 6,
            _ => 20 + 2,
        };
        p[at..at + 2].fill(0);
        let len = (p.len() - 20) as u16;
        let sum = if proto == ICMP {
            checksum::checksum(&p[20..])
        } else {
            let src = u32::from_be_bytes(p[12..16].try_into().unwrap()).into();
            let dst = u32::from_be_bytes(p[16..20].try_into().unwrap()).into();
            let pseudo = checksum::pseudo_header_v4(src, dst, proto, len);
            !checksum::add(!checksum::checksum(&p[20..]), pseudo)
        };
        let sum = if proto == UDP && sum == 0 {
            0xffff
        } else {
            sum
        };
        p[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn rewriting_equals_recomputing_for_tcp_udp_and_icmp_echo() {
        for proto in [TCP, UDP, ICMP] {
            let before = packet(proto, 0xc612_010a, 0xcb00_71c8, 40000, 80);
            let l4 = flow_key(&before, 7).unwrap();
            assert_eq!(l4.key.zone, 7);
            let to = Rewrite {
                src: 0xcb00_710a,
                sport: 1025,
                dst: 0xcb00_71c8,
                dport: if proto == ICMP { 1025 } else { 80 },
            };
            let mut after = before.clone();
            rewrite(&mut after, &l4.key, &to);
            let key = flow_key(&after, 7).unwrap().key;
            assert_eq!(
                (key.src, key.sport, key.dst, key.dport),
                (to.src, to.sport, to.dst, to.dport),
                "proto {proto}"
            );
            let mut expected = after.clone();
            fill(&mut expected);
            assert_eq!(after, expected, "proto {proto}: checksums as if recomputed");
        }
    }

    #[test]
    fn later_fragments_and_other_icmp_have_no_key() {
        let mut p = packet(UDP, 1, 2, 3, 4);
        p[6..8].copy_from_slice(&0x0001u16.to_be_bytes());
        assert_eq!(flow_key(&p, 0), Err(Unkeyed::Fragment));
        let mut p = packet(ICMP, 1, 2, 3, 3);
        p[20] = 11;
        assert_eq!(flow_key(&p, 0), Err(Unkeyed::Unsupported));
        let p = packet(TCP, 1, 2, 3, 4);
        assert_eq!(flow_key(&p[..30], 0), Err(Unkeyed::Truncated));
    }

    /// An IPv4 ICMP error (type `ty`) from `src` to `dst` quoting `quoted`, checksummed.
    fn error(ty: u8, src: u32, dst: u32, quoted: &[u8]) -> Vec<u8> {
        let total = 20 + 8 + quoted.len();
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = ICMP;
        p[12..16].copy_from_slice(&src.to_be_bytes());
        p[16..20].copy_from_slice(&dst.to_be_bytes());
        p[20] = ty;
        p.extend_from_slice(quoted);
        let h = checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&h.to_be_bytes());
        let m = checksum::checksum(&p[20..]);
        p[22..24].copy_from_slice(&m.to_be_bytes());
        p
    }

    proptest::proptest! {
        #[test]
        fn a_quote_is_found_and_translated_with_every_checksum_right(
            proto in proptest::sample::select(vec![TCP, UDP, ICMP]),
            ty in proptest::sample::select(NAT_ERRORS.to_vec()),
            (src, dst, sport, dport) in proptest::arbitrary::any::<(u32, u32, u16, u16)>(),
            (to_src, to_dst, to_sport, to_dport) in proptest::arbitrary::any::<(u32, u32, u16, u16)>(),
            cut in 0usize..40,
            outer in proptest::arbitrary::any::<(u32, u32)>(),
        ) {
            let sent = packet(proto, src, dst, sport, if proto == ICMP { sport } else { dport });
            let quoted = &sent[..(28 + cut).min(sent.len())];
            let mut ip = error(ty, outer.0, outer.1, quoted);
            let quote = icmp_error_quote(&ip, 3).expect("a quote NAT can key");
            let key = flow_key(&sent, 3).unwrap().key;
            proptest::prop_assert_eq!(quote.key, key);
            let to_dport = if proto == ICMP { to_sport } else { to_dport };
            let to = Rewrite { src: to_src, sport: to_sport, dst: to_dst, dport: to_dport };
            translate_icmp_error(&mut ip, &quote, &to, outer.1, outer.0);
            proptest::prop_assert_eq!(checksum::checksum(&ip[..20]), 0, "outer header");
            proptest::prop_assert_eq!(checksum::checksum(&ip[20..]), 0, "ICMP message");
            proptest::prop_assert_eq!(checksum::checksum(&ip[28..48]), 0, "quoted header");
            proptest::prop_assert_eq!(&ip[12..16], &outer.1.to_be_bytes()[..]);
            let again = icmp_error_quote(&ip, 3).expect("still a quote");
            let k = again.key;
            proptest::prop_assert_eq!((k.src, k.sport, k.dst, k.dport), (to.src, to.sport, to.dst, to.dport));
            // Where the quote holds the whole datagram, its L4 checksum is right too.
            if cut >= 40 || quoted.len() == sent.len() {
                let mut expected = ip[28..].to_vec();
                fill(&mut expected);
                proptest::prop_assert_eq!(&ip[28..], &expected[..]);
            }
        }

        #[test]
        fn quotes_are_looked_for_in_arbitrary_bytes_without_panicking(
            mut data in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 24..120),
            ty in proptest::sample::select(vec![3u8, 4, 11, 12, 0, 8]),
        ) {
            data[0] = 0x45;
            data[9] = ICMP;
            data[6..8].fill(0);
            let total = data.len() as u16;
            data[2..4].copy_from_slice(&total.to_be_bytes());
            data[20] = ty;
            data[22..24].fill(0);
            let m = checksum::checksum(&data[20..]);
            data[22..24].copy_from_slice(&m.to_be_bytes());
            if let Some(quote) = icmp_error_quote(&data, 0) {
                let to = Rewrite { src: 1, sport: 2, dst: 3, dport: 2 };
                translate_icmp_error(&mut data, &quote, &to, 4, 5);
                proptest::prop_assert_eq!(checksum::checksum(&data[20..]), 0);
            }
        }
    }
}
