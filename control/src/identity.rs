//! The identities polluxd gives its own stations: the MAC ranges of its routers and DHCP
//! servers (which validation keeps VM ports out of) and the MAC of each one. The ids these
//! MACs carry are assigned by [`crate::compile::Identities`].

use pollux_dataplane::routing::RouterUid;
use pollux_dataplane::snapshot::NetworkUid;

/// The first three bytes of every router MAC (locally administered, unicast); validation
/// keeps VM ports out of this range.
pub const ROUTER_MAC_PREFIX: [u8; 3] = [0x02, 0x70, 0x6c];

/// The first three bytes of every DHCP server MAC (locally administered, unicast);
/// validation keeps VM ports out of this range too.
pub const DHCP_MAC_PREFIX: [u8; 3] = [0x02, 0x70, 0x64];

/// The MAC of the DHCP server of the network with uid `uid`: [`DHCP_MAC_PREFIX`] followed
/// by the low 24 bits of the uid.
pub fn dhcp_mac(uid: NetworkUid) -> [u8; 6] {
    let [_, a, b, c] = uid.0.to_be_bytes();
    [
        DHCP_MAC_PREFIX[0],
        DHCP_MAC_PREFIX[1],
        DHCP_MAC_PREFIX[2],
        a,
        b,
        c,
    ]
}

/// The MAC of router `uid`: [`ROUTER_MAC_PREFIX`] and the uid's low three bytes.
pub fn router_mac(uid: RouterUid) -> [u8; 6] {
    let [_, a, b, c] = uid.0.to_be_bytes();
    let [p0, p1, p2] = ROUTER_MAC_PREFIX;
    [p0, p1, p2, a, b, c]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_macs_carry_the_network_uid() {
        assert_eq!(
            dhcp_mac(NetworkUid(0x0012_3456)),
            [0x02, 0x70, 0x64, 0x12, 0x34, 0x56]
        );
        // Only the low 24 bits.
        assert_eq!(
            dhcp_mac(NetworkUid(0xab00_0001)),
            [0x02, 0x70, 0x64, 0, 0, 1]
        );
        assert_ne!(DHCP_MAC_PREFIX, ROUTER_MAC_PREFIX);
    }

    #[test]
    fn router_macs_carry_the_router_uid() {
        assert_eq!(
            router_mac(RouterUid(0x0012_3456)),
            [0x02, 0x70, 0x6c, 0x12, 0x34, 0x56]
        );
    }
}
