//! The identities the data plane is keyed by, each its own type so that a network slot
//! cannot be passed where a router index is meant, nor a packed MAC where a table key is.
//!
//! All are `#[repr(transparent)]` over the integer they always were: tables and packet
//! metadata keep their size and layout, and the types cost nothing at run time. Where a
//! table needs a "none" value inside a dense array (the VLAN maps, per-port indices), it
//! is a named constant of the type rather than `Option`, whose tag would double the
//! entry (these integers have no niche).
//!
//! Slots and indices are positions in one snapshot: meaningless in the next. Uids are
//! assigned by the control plane and never reused, so state a worker keeps across
//! generations (learned MACs, neighbours, connections) is keyed by them.

use core::fmt;

pub use crate::wire::EthernetAddress;

/// A port's identity, stable across configuration generations (the control plane assigns
/// it and never reuses one while the port exists). Indexes per-port tables directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct PortId(pub u16);

impl PortId {
    /// No port: the input port of frames the worker made itself (ARP requests, replies,
    /// frames handed over by another worker), and the uplink of an overlay without one.
    /// The control plane never assigns it.
    pub const NONE: PortId = PortId(u16::MAX);

    /// The id as a table index.
    #[inline]
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for RouterIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for InterfaceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// Stable identity of a network, assigned by the control plane and never reused, so that
/// state learned under one network can never be applied to another that later takes its
/// slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct NetworkUid(pub u32);

/// Stable identity of a router, assigned by the control plane and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct RouterUid(pub u32);

/// A network's position in one snapshot (its index in the snapshot's networks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct NetworkSlot(pub u16);

impl NetworkSlot {
    /// "No network", in dense tables (a VLAN map's unused VIDs).
    pub const NONE: NetworkSlot = NetworkSlot(u16::MAX);

    /// The slot as a table index.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NetworkSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network slot {}", self.0)
    }
}

/// A router's position in one snapshot's routers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct RouterIndex(pub u16);

impl RouterIndex {
    /// The index into the routers.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A router interface's position in one snapshot's interfaces (of every router).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct InterfaceIndex(pub u16);

impl InterfaceIndex {
    /// The index into the interfaces.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// A MAC packed big-endian into the low 48 bits of a `u64` (as
/// [`EthernetAddress::as_u64`]): the form the stages read it in from a frame (one load)
/// and compare and hash it in. Integer order is the address's byte order.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct PackedMac(u64);

impl PackedMac {
    /// "No MAC", where a dense entry needs one (a network without services, a port
    /// without a MAC). Above 48 bits, so no address packs to it.
    pub const NONE: PackedMac = PackedMac(u64::MAX);

    /// `mac`, packed.
    #[inline(always)]
    pub const fn new(mac: EthernetAddress) -> PackedMac {
        PackedMac(mac.as_u64())
    }

    /// The MAC whose packed form is `bits`; the bits above 48 must be zero (they are
    /// for everything read by [`crate::wire::EthernetFrame::dst_mac`] and the like).
    #[inline(always)]
    pub(crate) const fn from_bits(bits: u64) -> PackedMac {
        debug_assert!(bits >> 48 == 0);
        PackedMac(bits)
    }

    /// The packed integer, for hashing.
    #[inline(always)]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The address.
    #[inline]
    pub const fn address(self) -> EthernetAddress {
        EthernetAddress::from_u64(self.0)
    }

    /// The octets.
    #[inline]
    pub const fn octets(self) -> [u8; 6] {
        self.address().0
    }
}

impl From<EthernetAddress> for PackedMac {
    #[inline]
    fn from(mac: EthernetAddress) -> PackedMac {
        PackedMac::new(mac)
    }
}

impl From<[u8; 6]> for PackedMac {
    #[inline]
    fn from(mac: [u8; 6]) -> PackedMac {
        PackedMac::new(EthernetAddress(mac))
    }
}

impl fmt::Display for PackedMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PackedMac::NONE {
            f.write_str("none")
        } else {
            self.address().fmt(f)
        }
    }
}

impl fmt::Debug for PackedMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The key of the MAC tables (static and learned FDB, router MACs): the network slot in
/// the top 16 bits, the MAC big-endian in the low 48, so that one integer compare and
/// hash covers both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct FdbKey(u64);

impl FdbKey {
    /// The key of `mac` on network `slot`.
    #[inline(always)]
    pub const fn new(slot: NetworkSlot, mac: EthernetAddress) -> FdbKey {
        FdbKey::packed(slot, PackedMac::new(mac))
    }

    /// The key of a MAC already packed (the form the stages read it in, one load from
    /// the frame).
    #[inline(always)]
    pub const fn packed(slot: NetworkSlot, mac: PackedMac) -> FdbKey {
        FdbKey((slot.0 as u64) << 48 | mac.0)
    }

    /// The key the tables hashed as `bits` ([`FdbKey::get`]).
    #[inline(always)]
    pub(crate) const fn from_bits(bits: u64) -> FdbKey {
        FdbKey(bits)
    }

    /// The key as the tables hash it.
    #[inline(always)]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The network slot.
    pub const fn slot(self) -> NetworkSlot {
        NetworkSlot((self.0 >> 48) as u16)
    }

    /// The MAC.
    pub const fn mac(self) -> EthernetAddress {
        EthernetAddress::from_u64(self.0)
    }

    /// The MAC, packed.
    #[inline(always)]
    pub const fn packed_mac(self) -> PackedMac {
        PackedMac(self.0 & 0xffff_ffff_ffff)
    }
}

// The types are their integers: tables of them are no larger.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<PortId>() == 2);
    assert!(size_of::<NetworkSlot>() == 2);
    assert!(size_of::<RouterIndex>() == 2);
    assert!(size_of::<InterfaceIndex>() == 2);
    assert!(size_of::<NetworkUid>() == 4);
    assert!(size_of::<RouterUid>() == 4);
    assert!(size_of::<FdbKey>() == 8);
    assert!(size_of::<PackedMac>() == 8);
    assert!(size_of::<EthernetAddress>() == 6);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_fdb_key_holds_its_slot_and_mac() {
        let mac: EthernetAddress = "fa:16:3e:01:02:03".parse().unwrap();
        let key = FdbKey::new(NetworkSlot(7), mac);
        assert_eq!(key.get(), 7 << 48 | 0xfa16_3e01_0203);
        assert_eq!((key.slot(), key.mac()), (NetworkSlot(7), mac));
        assert_eq!(FdbKey::packed(NetworkSlot(7), PackedMac::new(mac)), key);
        assert_eq!(key.packed_mac(), PackedMac::from(mac));
        assert_eq!(PackedMac::from(mac).to_string(), "fa:16:3e:01:02:03");
        assert_ne!(FdbKey::new(NetworkSlot(8), mac), key);
    }
}
