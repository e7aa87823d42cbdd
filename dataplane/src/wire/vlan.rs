//! IEEE 802.1Q VLAN tags.
//!
//! A tag is the 4 bytes that follow a TPID of 0x8100 (where an untagged frame has its
//! EtherType): the TCI (PCP 3 bits, DEI 1 bit, VID 12 bits) and the inner EtherType.
//! The view starts at the TCI, i.e. at [`EthernetFrame::payload`](super::EthernetFrame::payload)
//! of the frame whose EtherType is the TPID.
//!
//! 802.1ad (QinQ) outer tags use TPID 0x88a8 and exactly the same 4-byte layout, so the
//! same view reads them: an S-tagged, C-tagged frame is `dst src 88a8 [S-TCI 8100]
//! [C-TCI type] payload`, two `VlanTag`s in a row.

use super::{get_u16, set_u16, Error, EtherType, Result};

/// Lowest VID that names a VLAN; VID 0 means "priority tag only, no VLAN".
pub const VID_MIN: u16 = 1;
/// Highest VID that names a VLAN; 4095 is reserved.
pub const VID_MAX: u16 = 4094;
/// The reserved VID, which must not be sent.
pub const VID_RESERVED: u16 = 0x0fff;
/// The VID bits of the TCI.
pub const TCI_VID_MASK: u16 = 0x0fff;
/// The DEI bit of the TCI.
pub const TCI_DEI: u16 = 0x1000;

mod field {
    use crate::wire::{Field, Rest};

    pub const TCI: Field = 0..2;
    pub const ETHERTYPE: Field = 2..4;
    pub const PAYLOAD: Rest = 4..;
}

/// A view of an 802.1Q or 802.1ad tag (TCI and inner EtherType) and what follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    /// Length of the tag as the view sees it: TCI and inner EtherType.
    pub const HEADER_LEN: usize = field::PAYLOAD.start;

    /// Wraps `buffer` without checking its length; accessors may panic on a short buffer.
    #[inline]
    pub const fn new_unchecked(buffer: T) -> Self {
        VlanTag { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self> {
        let tag = Self::new_unchecked(buffer);
        tag.check_len()?;
        Ok(tag)
    }

    /// Fails with [`Error::Truncated`] if the buffer cannot hold the tag.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole Tag Control Information word.
    #[inline]
    pub fn tci(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::TCI)
    }

    /// Priority Code Point (0..=7).
    #[inline]
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop Eligible Indicator.
    #[inline]
    pub fn dei(&self) -> bool {
        self.tci() & TCI_DEI != 0
    }

    /// VLAN identifier (0..=4095).
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & TCI_VID_MASK
    }

    /// EtherType of what follows the tag (0x8100 again for the outer tag of QinQ).
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType(get_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the tag.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    /// Sets the whole TCI.
    #[inline]
    pub fn set_tci(&mut self, tci: u16) {
        set_u16(self.buffer.as_mut(), field::TCI, tci);
    }

    /// Sets the PCP; only the low 3 bits of `pcp` are used.
    #[inline]
    pub fn set_pcp(&mut self, pcp: u8) {
        self.set_tci((self.tci() & 0x1fff) | (u16::from(pcp & 0x07) << 13));
    }

    /// Sets the DEI bit.
    #[inline]
    pub fn set_dei(&mut self, dei: bool) {
        self.set_tci((self.tci() & !TCI_DEI) | if dei { TCI_DEI } else { 0 });
    }

    /// Sets the VID; only the low 12 bits of `vid` are used.
    #[inline]
    pub fn set_vid(&mut self, vid: u16) {
        self.set_tci((self.tci() & !TCI_VID_MASK) | (vid & TCI_VID_MASK));
    }

    /// Sets the inner EtherType.
    #[inline]
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        set_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.0);
    }

    /// Everything after the tag, writable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A VLAN tag as values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VlanRepr {
    /// Priority Code Point (0..=7).
    pub pcp: u8,
    /// Drop Eligible Indicator.
    pub dei: bool,
    /// VLAN identifier (0 for a priority tag, else 1..=4094).
    pub vid: u16,
    /// EtherType of what follows the tag.
    pub ethertype: EtherType,
}

impl VlanRepr {
    /// Reads `tag`; the reserved VID 4095 is [`Error::Malformed`].
    pub fn parse<T: AsRef<[u8]>>(tag: &VlanTag<T>) -> Result<Self> {
        tag.check_len()?;
        if tag.vid() == VID_RESERVED {
            return Err(Error::Malformed);
        }
        Ok(VlanRepr {
            pcp: tag.pcp(),
            dei: tag.dei(),
            vid: tag.vid(),
            ethertype: tag.ethertype(),
        })
    }

    /// The TCI word this tag is sent with (out-of-range `pcp`/`vid` bits are dropped).
    #[inline]
    pub fn tci(&self) -> u16 {
        (u16::from(self.pcp & 0x07) << 13)
            | if self.dei { TCI_DEI } else { 0 }
            | (self.vid & TCI_VID_MASK)
    }

    /// Length of the tag.
    #[inline]
    pub const fn header_len(&self) -> usize {
        field::PAYLOAD.start
    }

    /// Bytes `emit` writes: the tag only.
    #[inline]
    pub const fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the tag into `tag`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, tag: &mut VlanTag<T>) {
        tag.set_tci(self.tci());
        tag.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetFrame, EthernetRepr};
    use proptest::prelude::*;

    /// An IPv4 frame on VLAN 100, PCP 5 (header, tag, first payload bytes).
    const TAGGED: [u8; 22] = [
        0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc, // dst
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
        0x81, 0x00, // TPID 802.1Q
        0xa0, 0x64, // PCP 5, DEI 0, VID 100
        0x08, 0x00, // IPv4
        0x45, 0x00, 0x00, 0x54, // start of an IPv4 header
    ];

    /// An ARP frame double-tagged: S-tag VID 200 (TPID 0x88a8), C-tag VID 100 with DEI.
    const QINQ: [u8; 26] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
        0x88, 0xa8, // TPID 802.1ad
        0x20, 0xc8, // PCP 1, DEI 0, VID 200
        0x81, 0x00, // inner TPID 802.1Q
        0x10, 0x64, // PCP 0, DEI 1, VID 100
        0x08, 0x06, // ARP
        0x00, 0x01, 0x08, 0x00, // start of an ARP packet
    ];

    #[test]
    fn tagged_fixture() {
        let eth = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::VLAN);
        let tag = VlanTag::new_checked(eth.payload()).unwrap();
        assert_eq!(tag.tci(), 0xa064);
        assert_eq!(tag.pcp(), 5);
        assert!(!tag.dei());
        assert_eq!(tag.vid(), 100);
        assert_eq!(tag.ethertype(), EtherType::IPV4);
        assert_eq!(tag.payload(), &[0x45, 0x00, 0x00, 0x54]);
        assert_eq!(VlanTag::<&[u8]>::HEADER_LEN, 4);

        let eth_repr = EthernetRepr::parse(&eth).unwrap();
        let repr = VlanRepr::parse(&tag).unwrap();
        assert_eq!(
            repr,
            VlanRepr {
                pcp: 5,
                dei: false,
                vid: 100,
                ethertype: EtherType::IPV4
            }
        );
        let mut buf = [0u8; 22];
        buf[18..].copy_from_slice(&TAGGED[18..]);
        let mut out = EthernetFrame::new_unchecked(&mut buf[..]);
        eth_repr.emit(&mut out);
        repr.emit(&mut VlanTag::new_unchecked(out.payload_mut()));
        assert_eq!(buf, TAGGED);
    }

    #[test]
    fn qinq_fixture() {
        let eth = EthernetFrame::new_checked(&QINQ[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::QINQ);
        let outer = VlanTag::new_checked(eth.payload()).unwrap();
        assert_eq!((outer.pcp(), outer.dei(), outer.vid()), (1, false, 200));
        assert_eq!(outer.ethertype(), EtherType::VLAN);
        let inner = VlanTag::new_checked(outer.payload()).unwrap();
        assert_eq!((inner.pcp(), inner.dei(), inner.vid()), (0, true, 100));
        assert_eq!(inner.ethertype(), EtherType::ARP);
        assert_eq!(inner.payload(), &[0x00, 0x01, 0x08, 0x00]);

        let (e, o, i) = (
            EthernetRepr::parse(&eth).unwrap(),
            VlanRepr::parse(&outer).unwrap(),
            VlanRepr::parse(&inner).unwrap(),
        );
        let mut buf = [0u8; 26];
        buf[22..].copy_from_slice(&QINQ[22..]);
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        e.emit(&mut f);
        let mut outer = VlanTag::new_unchecked(f.payload_mut());
        o.emit(&mut outer);
        i.emit(&mut VlanTag::new_unchecked(outer.payload_mut()));
        assert_eq!(buf, QINQ);
    }

    #[test]
    fn setters_touch_only_their_bits() {
        let mut buf = [0xff, 0xff, 0x08, 0x00];
        let mut tag = VlanTag::new_checked(&mut buf[..]).unwrap();
        tag.set_vid(0x123);
        assert_eq!(tag.tci(), 0xf123);
        tag.set_pcp(2);
        assert_eq!(tag.tci(), 0x5123);
        tag.set_dei(false);
        assert_eq!(tag.tci(), 0x4123);
        tag.set_ethertype(EtherType::IPV6);
        assert_eq!(buf, [0x41, 0x23, 0x86, 0xdd]);
    }

    #[test]
    fn reserved_vid_and_short() {
        let tag = VlanTag::new_checked(&[0x0f, 0xff, 0x08, 0x00][..]).unwrap();
        assert_eq!(VlanRepr::parse(&tag), Err(Error::Malformed));
        assert_eq!(
            VlanTag::new_checked(&[0u8; 3][..]).unwrap_err(),
            Error::Truncated
        );
    }

    proptest! {
        #[test]
        fn checked_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(t) = VlanTag::new_checked(&data[..]) {
                let _ = (t.tci(), t.pcp(), t.dei(), t.vid(), t.ethertype(), t.payload());
                if let Ok(r) = VlanRepr::parse(&t) {
                    prop_assert_eq!(r.tci(), t.tci());
                }
            }
        }

        #[test]
        fn repr_round_trip(pcp in 0u8..8, dei in any::<bool>(), vid in 0u16..4095, ty in any::<u16>()) {
            let repr = VlanRepr { pcp, dei, vid, ethertype: EtherType(ty) };
            let mut buf = [0u8; 4];
            repr.emit(&mut VlanTag::new_unchecked(&mut buf[..]));
            prop_assert_eq!(VlanRepr::parse(&VlanTag::new_checked(&buf[..]).unwrap()), Ok(repr));
        }
    }
}
