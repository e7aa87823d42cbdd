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
    /// The id as a table index.
    #[inline]
    pub fn index(self) -> usize {
        usize::from(self.0)
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
        FdbKey::packed(slot, mac.as_u64())
    }

    /// The key of a MAC already packed by [`EthernetAddress::as_u64`] (the form the
    /// stages read it in, two loads from the frame).
    #[inline(always)]
    pub const fn packed(slot: NetworkSlot, mac: u64) -> FdbKey {
        FdbKey((slot.0 as u64) << 48 | mac)
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
        assert_eq!(FdbKey::packed(NetworkSlot(7), mac.as_u64()), key);
        assert_ne!(FdbKey::new(NetworkSlot(8), mac), key);
    }
}
