//! ICMP errors about flows the router's NAT translates (RFC 5508 §4): an error that comes
//! back about a translated packet must name that packet as its sender sent it, or the
//! sender's stack cannot match it to a socket, and path MTU discovery, traceroute and
//! "port unreachable" fail through the NAT. The error itself is addressed to the
//! translated address, so it must be translated too.
//!
//! The quoted packet travelled the opposite way to the error, so the session is found by
//! the quote's reversed key, which is a key of the error's own direction; the quote then
//! takes the mirror image of that direction's translation, and the error's addresses the
//! translation itself where they are the flow's. Floating IPs are 1:1 and stateless: their
//! mapping is applied the same way without a session. Errors never refresh a session.

use super::nat;
use crate::conntrack::ConnTable;
use crate::routing::Routing;
use crate::wire::Ipv4Packet;

/// Which way an ICMP error crosses the router's external gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Crossing {
    /// Into the router's tenant networks from the external network.
    Inbound,
    /// Out to the external network (sent by a VM or by the router itself).
    Outbound,
}

/// How an ICMP error was related to a NATed flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Related {
    /// Not an error about a translated flow of this router.
    No,
    /// About a packet of a NAT session: translated by the session.
    Session,
    /// About a packet that went through a floating IP: translated by its 1:1 mapping.
    Floating,
}

/// Translates the ICMP error at the start of `ip` (an IPv4 packet whose header is checked)
/// if it is about a flow that router `router` (whose sessions are in `zone`) translates.
pub(super) fn translate(
    conns: &ConnTable,
    routing: &Routing,
    now: u64,
    router: crate::ident::RouterIndex,
    zone: u32,
    ip: &mut [u8],
    crossing: Crossing,
) -> Related {
    let Some(quote) = nat::icmp_error_quote(ip, zone) else {
        return Related::No;
    };
    let p = Ipv4Packet::new_unchecked(&ip[..]);
    let (src, dst) = (u32::from(p.src_addr()), u32::from(p.dst_addr()));
    let this_way = quote.key.reversed();
    if let Some((id, dir)) = conns.lookup(&this_way, now) {
        if let Some(to) = conns.session(id).rewrite(dir) {
            let src = if src == this_way.src { to.src } else { src };
            let dst = if dst == this_way.dst { to.dst } else { dst };
            nat::translate_icmp_error(ip, &quote, &nat::mirrored(&to), src, dst);
        }
        return Related::Session;
    }
    let key = quote.key;
    match crossing {
        // The quote left from a floating IP: it was sent from the fixed IP.
        Crossing::Inbound => {
            let Some(fixed) = routing.fixed_of(router, key.src) else {
                return Related::No;
            };
            let quoted = nat::to_src(&key, fixed);
            let dst = if dst == key.src { fixed } else { dst };
            nat::translate_icmp_error(ip, &quote, &quoted, src, dst);
        }
        // The quote reached the fixed IP through its floating IP.
        Crossing::Outbound => {
            let Some(floating) = routing.floating_of(router, key.dst) else {
                return Related::No;
            };
            let quoted = nat::to_dst(&key, floating);
            let src = if src == key.dst { floating } else { src };
            nat::translate_icmp_error(ip, &quote, &quoted, src, dst);
        }
    }
    Related::Floating
}
