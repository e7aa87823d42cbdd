//! Zero-copy views of the protocol headers the pipeline reads and rewrites.
//!
//! Modelled on smoltcp's `wire` module. Each protocol has:
//!
//! - a *view* (`EthernetFrame<T>`, `Ipv4Packet<T>`, ...) over any `T: AsRef<[u8]>`. Getters
//!   need `AsRef<[u8]>`, setters also `AsMut<[u8]>`. `new_checked` runs `check_len` once;
//!   after it succeeds no getter or setter can panic, whatever the bytes are. Field offsets
//!   live in a private `field` module per protocol.
//! - a *repr* (`EthernetRepr`, `Ipv4Repr`, ...): the header as plain values, with
//!   `parse(&view)` (validating) and `emit(&self, &mut view)`. `emit` expects a view whose
//!   buffer is at least `buffer_len()` bytes long (it indexes, so a shorter buffer panics).
//!
//! Everything is big-endian on the wire and read with `u16::from_be_bytes` and friends.
//! Nothing here allocates and nothing here is `unsafe`.

use core::fmt;
use core::ops::{Range, RangeFrom};

pub mod checksum;

pub mod arp;
pub mod dhcp;
pub mod ethernet;
pub mod geneve;
pub mod gre;
pub mod icmpv4;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;
pub mod vlan;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, ParseEthernetAddressError,
};
pub use geneve::{GenevePacket, GeneveRepr, GENEVE_PORT};
pub use gre::{GrePacket, GreRepr};
pub use icmpv4::{Icmpv4Packet, Icmpv4Repr, Icmpv4Type, TimeExceeded, Unreachable};
pub use ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};
pub use vlan::{VlanRepr, VlanTag};
pub use vxlan::{VxlanPacket, VxlanRepr, VXLAN_PORT};

/// Why a buffer could not be viewed or parsed as a given protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field says it is.
    Truncated,
    /// A field holds a value the protocol forbids (bad version, length below minimum, ...).
    Malformed,
    /// Well-formed, but a kind this module does not handle (other ARP hardware, ICMP type, ...).
    Unsupported,
    /// The checksum does not match the contents.
    Checksum,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated packet",
            Error::Malformed => "malformed packet",
            Error::Unsupported => "unsupported packet kind",
            Error::Checksum => "checksum mismatch",
        })
    }
}

impl std::error::Error for Error {}

/// Result of parsing wire data.
pub type Result<T> = core::result::Result<T, Error>;

/// A fixed-size header field: a byte range within the header.
type Field = Range<usize>;
/// Everything from an offset to the end of the buffer.
type Rest = RangeFrom<usize>;

#[inline]
fn get_u16(data: &[u8], field: Field) -> u16 {
    let mut b = [0; 2];
    b.copy_from_slice(&data[field]);
    u16::from_be_bytes(b)
}

#[inline]
fn set_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn get_u32(data: &[u8], field: Field) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&data[field]);
    u32::from_be_bytes(b)
}

#[inline]
fn set_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn get_ipv4(data: &[u8], field: Field) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(get_u32(data, field))
}

#[inline]
fn set_ipv4(data: &mut [u8], field: Field, addr: std::net::Ipv4Addr) {
    data[field].copy_from_slice(&addr.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display() {
        assert_eq!(Error::Truncated.to_string(), "truncated packet");
        assert_eq!(Error::Checksum.to_string(), "checksum mismatch");
        let e: Box<dyn std::error::Error> = Box::new(Error::Malformed);
        assert_eq!(e.to_string(), "malformed packet");
    }
}
