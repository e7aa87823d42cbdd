//! DHCPv4 on the wire (RFC 2131 §2, RFC 2132), in the style of the other protocols here: a
//! zero-copy view ([`DhcpPacket`], with `check_len` and `new_checked`), a validated summary
//! of a message ([`Message::parse`], the repr) and a builder that emits a reply into a
//! caller's buffer without allocating ([`ReplyBuilder`]).
//!
//! Nothing here indexes a slice it has not bounds-checked, so no input can panic it.

use std::net::Ipv4Addr;

/// Why bytes are not a DHCP message this view can read. Fine-grained (unlike
/// [`super::Error`]) because a DHCP server counts each as its own drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DhcpError {
    /// Shorter than the fixed header and magic cookie (240 bytes).
    Truncated,
    /// Longer than [`MAX_MESSAGE_LEN`].
    Oversized,
    /// `htype`/`hlen` are not Ethernet's (1/6): the hardware address cannot be a MAC.
    BadHardwareType,
    /// The magic cookie is not 99.130.83.99: BOOTP or not DHCP at all.
    BadMagicCookie,
    /// An option's length byte or value runs past the end of the message.
    OptionTruncated,
    /// The options end without the End option (255).
    MissingEnd,
    /// An option read here has the wrong length (message type, addresses, ...).
    BadOptionLength,
    /// No DHCP message type option (53): a plain BOOTP message.
    MissingMessageType,
    /// An unknown message type.
    UnexpectedMessageType,
}

/// `op` of a client's message.
pub const BOOTREQUEST: u8 = 1;
/// `op` of a server's message.
pub const BOOTREPLY: u8 = 2;
/// `htype` of Ethernet.
pub const HTYPE_ETHERNET: u8 = 1;
/// The magic cookie that marks the options as DHCP's (RFC 2131 §3).
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The broadcast bit of `flags`.
pub const FLAG_BROADCAST: u16 = 0x8000;
/// Fixed header plus magic cookie: where the options start.
pub const HEADER_LEN: usize = 240;
/// The smallest datagram every DHCP client must accept (RFC 2131 §2), IP and UDP included.
pub const MIN_MAX_MESSAGE_SIZE: u16 = 576;
/// IPv4 (no options) and UDP headers, which option 57 counts and the DHCP payload does not.
pub const IP_UDP_HEADERS: usize = 28;
/// The largest message accepted: a full 1500-byte Ethernet payload less IP and UDP. Real
/// clients send a few hundred bytes; anything bigger is a flood or an attack.
pub const MAX_MESSAGE_LEN: usize = 1500 - IP_UDP_HEADERS;
/// BOOTP relays and some old clients drop replies shorter than a BOOTP message (300 bytes,
/// RFC 951), so replies are padded to it, as ISC dhcpd and dnsmasq do.
pub const MIN_REPLY_LEN: usize = 300;

/// Option codes used by the server.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS_SERVERS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const INTERFACE_MTU: u8 = 26;
    pub const BROADCAST_ADDRESS: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const CLASSLESS_ROUTES: u8 = 121;
    pub const END: u8 = 255;
}

mod field {
    use std::ops::Range;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: Range<usize> = 4..8;
    pub const SECS: Range<usize> = 8..10;
    pub const FLAGS: Range<usize> = 10..12;
    pub const CIADDR: Range<usize> = 12..16;
    pub const YIADDR: Range<usize> = 16..20;
    pub const SIADDR: Range<usize> = 20..24;
    pub const GIADDR: Range<usize> = 24..28;
    pub const CHADDR: Range<usize> = 28..44;
    pub const COOKIE: Range<usize> = 236..240;
}

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    /// The type for a value of option 53, if it is one of RFC 2132's eight.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }

    /// The value of option 53.
    pub const fn to_u8(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
        }
    }
}

fn ipv4_at(b: &[u8], r: std::ops::Range<usize>) -> Ipv4Addr {
    match b.get(r) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

fn u16_at(b: &[u8], r: std::ops::Range<usize>) -> u16 {
    match b.get(r) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// A view of a DHCP message in a buffer. Accessors of a view that is shorter than the
/// header (only possible through [`DhcpPacket::new_unchecked`]) return zeros rather than
/// panicking.
#[derive(Clone, Copy, Debug)]
pub struct DhcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DhcpPacket<T> {
    /// A view without any check.
    pub const fn new_unchecked(buffer: T) -> Self {
        DhcpPacket { buffer }
    }

    /// A view of a buffer that holds at least the fixed header and the magic cookie.
    pub fn new_checked(buffer: T) -> Result<Self, DhcpError> {
        let packet = DhcpPacket { buffer };
        packet.check_len()?;
        if packet.b().get(field::COOKIE) != Some(&MAGIC_COOKIE[..]) {
            return Err(DhcpError::BadMagicCookie);
        }
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed header and magic cookie and is no longer
    /// than [`MAX_MESSAGE_LEN`].
    pub fn check_len(&self) -> Result<(), DhcpError> {
        let len = self.b().len();
        if len < HEADER_LEN {
            return Err(DhcpError::Truncated);
        }
        if len > MAX_MESSAGE_LEN {
            return Err(DhcpError::Oversized);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    fn byte(&self, i: usize) -> u8 {
        self.b().get(i).copied().unwrap_or(0)
    }

    pub fn op(&self) -> u8 {
        self.byte(field::OP)
    }
    pub fn htype(&self) -> u8 {
        self.byte(field::HTYPE)
    }
    pub fn hlen(&self) -> u8 {
        self.byte(field::HLEN)
    }
    pub fn hops(&self) -> u8 {
        self.byte(field::HOPS)
    }
    pub fn xid(&self) -> u32 {
        match self.b().get(field::XID) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => 0,
        }
    }
    pub fn secs(&self) -> u16 {
        u16_at(self.b(), field::SECS)
    }
    pub fn flags(&self) -> u16 {
        u16_at(self.b(), field::FLAGS)
    }
    /// Whether the client asked for broadcast replies (it cannot receive unicast before it
    /// has an address).
    pub fn broadcast(&self) -> bool {
        self.flags() & FLAG_BROADCAST != 0
    }
    pub fn ciaddr(&self) -> Ipv4Addr {
        ipv4_at(self.b(), field::CIADDR)
    }
    pub fn yiaddr(&self) -> Ipv4Addr {
        ipv4_at(self.b(), field::YIADDR)
    }
    pub fn siaddr(&self) -> Ipv4Addr {
        ipv4_at(self.b(), field::SIADDR)
    }
    pub fn giaddr(&self) -> Ipv4Addr {
        ipv4_at(self.b(), field::GIADDR)
    }
    /// The whole 16-byte `chaddr` field.
    pub fn chaddr(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        if let Some(src) = self.b().get(field::CHADDR) {
            out.copy_from_slice(src);
        }
        out
    }
    /// The first six bytes of `chaddr`: the client's MAC when `htype`/`hlen` are Ethernet's.
    pub fn client_mac(&self) -> [u8; 6] {
        let mut out = [0u8; 6];
        if let Some(src) = self.b().get(28..34) {
            out.copy_from_slice(src);
        }
        out
    }
    pub fn magic_cookie(&self) -> [u8; 4] {
        let mut out = [0u8; 4];
        if let Some(src) = self.b().get(field::COOKIE) {
            out.copy_from_slice(src);
        }
        out
    }

    /// The options field's TLVs. `sname`/`file` are never read: option overload (52) is
    /// not supported, and what a client puts there is not worth the attack surface.
    pub fn options(&self) -> Options<'_> {
        Options {
            data: self.b().get(HEADER_LEN..).unwrap_or(&[]),
            done: false,
        }
    }
}

/// One option: its code and value (pad and end are not yielded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhcpOption<'a> {
    pub code: u8,
    pub data: &'a [u8],
}

/// Iterator over the options up to End. Yields one error and stops when the layout is
/// broken (a value past the end, no End option).
#[derive(Clone, Debug)]
pub struct Options<'a> {
    data: &'a [u8],
    done: bool,
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<DhcpOption<'a>, DhcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let Some((&code, rest)) = self.data.split_first() else {
                self.done = true;
                return Some(Err(DhcpError::MissingEnd));
            };
            match code {
                opt::PAD => self.data = rest,
                opt::END => {
                    self.done = true;
                    return None;
                }
                _ => {
                    let Some((&len, rest)) = rest.split_first() else {
                        self.done = true;
                        return Some(Err(DhcpError::OptionTruncated));
                    };
                    let len = usize::from(len);
                    if rest.len() < len {
                        self.done = true;
                        return Some(Err(DhcpError::OptionTruncated));
                    }
                    let (data, rest) = rest.split_at(len);
                    self.data = rest;
                    return Some(Ok(DhcpOption { code, data }));
                }
            }
        }
    }
}

fn addr_opt(data: &[u8]) -> Result<Ipv4Addr, DhcpError> {
    match *data {
        [a, b, c, d] => Ok(Ipv4Addr::new(a, b, c, d)),
        _ => Err(DhcpError::BadOptionLength),
    }
}

/// What the server needs of a message, read once and validated: the fixed fields and the
/// options it understands (the first instance of each; RFC 3396 concatenation of the
/// ones read here is not supported, as no client splits them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub op: u8,
    pub message_type: MessageType,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub lease_time: Option<u32>,
    /// Option 57 as sent (the whole IP datagram, RFC 2132 §9.10).
    pub max_message_size: Option<u16>,
    /// Option 55, empty when absent.
    pub parameter_request_list: &'a [u8],
    pub hostname: Option<&'a [u8]>,
    pub client_id: Option<&'a [u8]>,
    /// Whether option 52 was present (its spill-over into sname/file was ignored).
    pub overload: bool,
}

impl<'a> Message<'a> {
    /// Parses and validates a message of either direction: Ethernet hardware addresses,
    /// a sound option layout ending in End, a known message type, well-sized values of
    /// the options read here.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DhcpError> {
        let p = DhcpPacket::new_checked(bytes)?;
        if p.htype() != HTYPE_ETHERNET || p.hlen() != 6 {
            return Err(DhcpError::BadHardwareType);
        }
        let mut msg_type = None;
        let mut m = Message {
            op: p.op(),
            message_type: MessageType::Discover,
            xid: p.xid(),
            secs: p.secs(),
            flags: p.flags(),
            ciaddr: p.ciaddr(),
            yiaddr: p.yiaddr(),
            siaddr: p.siaddr(),
            giaddr: p.giaddr(),
            chaddr: p.client_mac(),
            requested_ip: None,
            server_id: None,
            lease_time: None,
            max_message_size: None,
            parameter_request_list: &[],
            hostname: None,
            client_id: None,
            overload: false,
        };
        let data: &'a [u8] = bytes.get(HEADER_LEN..).unwrap_or(&[]);
        let options = Options { data, done: false };
        for o in options {
            let o = o?;
            match o.code {
                opt::MESSAGE_TYPE if msg_type.is_none() => {
                    let &[v] = o.data else {
                        return Err(DhcpError::BadOptionLength);
                    };
                    msg_type =
                        Some(MessageType::from_u8(v).ok_or(DhcpError::UnexpectedMessageType)?);
                }
                opt::REQUESTED_IP if m.requested_ip.is_none() => {
                    m.requested_ip = Some(addr_opt(o.data)?);
                }
                opt::SERVER_ID if m.server_id.is_none() => {
                    m.server_id = Some(addr_opt(o.data)?);
                }
                opt::LEASE_TIME if m.lease_time.is_none() => match *o.data {
                    [a, b, c, d] => m.lease_time = Some(u32::from_be_bytes([a, b, c, d])),
                    _ => return Err(DhcpError::BadOptionLength),
                },
                opt::MAX_MESSAGE_SIZE if m.max_message_size.is_none() => match *o.data {
                    [a, b] => m.max_message_size = Some(u16::from_be_bytes([a, b])),
                    _ => return Err(DhcpError::BadOptionLength),
                },
                opt::PARAMETER_REQUEST_LIST if m.parameter_request_list.is_empty() => {
                    m.parameter_request_list = o.data;
                }
                opt::HOSTNAME if m.hostname.is_none() => m.hostname = Some(o.data),
                opt::CLIENT_ID if m.client_id.is_none() => m.client_id = Some(o.data),
                opt::OVERLOAD => m.overload = true,
                _ => {}
            }
        }
        m.message_type = msg_type.ok_or(DhcpError::MissingMessageType)?;
        Ok(m)
    }

    /// Whether the client asked for broadcast replies.
    pub fn broadcast(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }

    /// The largest reply (DHCP payload, without IP and UDP) the client accepts: option 57
    /// less the headers, never below RFC 2131's 576-byte minimum, which a client may not
    /// lower.
    pub fn max_reply_len(&self) -> usize {
        let datagram = self
            .max_message_size
            .unwrap_or(MIN_MAX_MESSAGE_SIZE)
            .max(MIN_MAX_MESSAGE_SIZE);
        usize::from(datagram) - IP_UDP_HEADERS
    }
}

/// The buffer (or the client's maximum size) has no room for another option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoRoom;

/// The fixed fields of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyHeader {
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
}

/// Writes a BOOTREPLY into a caller's buffer: the header first, then options one by one,
/// always keeping one byte for End so [`ReplyBuilder::finish`] cannot fail.
#[derive(Debug)]
pub struct ReplyBuilder<'a> {
    buf: &'a mut [u8],
    len: usize,
    limit: usize,
}

impl<'a> ReplyBuilder<'a> {
    /// Starts a reply in `buf`, which it must not outgrow, nor `limit` bytes.
    pub fn new(buf: &'a mut [u8], limit: usize, h: &ReplyHeader) -> Result<Self, NoRoom> {
        let limit = limit.min(buf.len());
        // Header, then room for End.
        if limit < HEADER_LEN + 1 {
            return Err(NoRoom);
        }
        let Some(head) = buf.get_mut(..HEADER_LEN) else {
            return Err(NoRoom);
        };
        head.fill(0);
        head[field::OP] = BOOTREPLY;
        head[field::HTYPE] = HTYPE_ETHERNET;
        head[field::HLEN] = 6;
        head[field::HOPS] = 0;
        head[field::XID].copy_from_slice(&h.xid.to_be_bytes());
        head[field::FLAGS].copy_from_slice(&h.flags.to_be_bytes());
        head[field::CIADDR].copy_from_slice(&h.ciaddr.octets());
        head[field::YIADDR].copy_from_slice(&h.yiaddr.octets());
        head[field::SIADDR].copy_from_slice(&h.siaddr.octets());
        head[field::GIADDR].copy_from_slice(&h.giaddr.octets());
        head[28..34].copy_from_slice(&h.chaddr);
        head[field::COOKIE].copy_from_slice(&MAGIC_COOKIE);
        Ok(ReplyBuilder {
            buf,
            len: HEADER_LEN,
            limit,
        })
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false, as the header is written on construction; `len` comes with it.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends an option; a value longer than 255 bytes is split into consecutive
    /// instances of the code, which receivers concatenate (RFC 3396). On `NoRoom` nothing
    /// is written, so the caller may skip an optional option and go on.
    pub fn option(&mut self, code: u8, data: &[u8]) -> Result<(), NoRoom> {
        let chunks = data.len().div_ceil(255).max(1);
        let need = data.len() + 2 * chunks;
        // One byte stays free for End.
        if self.len + need + 1 > self.limit {
            return Err(NoRoom);
        }
        let mut at = self.len;
        let mut rest = data;
        for _ in 0..chunks {
            let n = rest.len().min(255);
            let (chunk, tail) = rest.split_at(n);
            let dst = self.buf.get_mut(at..at + 2 + n).ok_or(NoRoom)?;
            dst[0] = code;
            dst[1] = n as u8;
            dst[2..].copy_from_slice(chunk);
            at += 2 + n;
            rest = tail;
        }
        self.len = at;
        Ok(())
    }

    /// Writes End, pads to the BOOTP minimum when the limit allows, and returns the
    /// message's length.
    pub fn finish(self) -> usize {
        let mut len = self.len;
        if let Some(b) = self.buf.get_mut(len) {
            *b = opt::END;
            len += 1;
        }
        let padded = MIN_REPLY_LEN.min(self.limit).max(len);
        if let Some(pad) = self.buf.get_mut(len..padded) {
            pad.fill(opt::PAD);
            len = padded;
        }
        len
    }
}

/// Appends RFC 3442's encoding of one route: the prefix length, the prefix's significant
/// octets only, then the router.
pub fn push_classless_route(out: &mut Vec<u8>, dst: Ipv4Addr, prefix: u8, router: Ipv4Addr) {
    let prefix = prefix.min(32);
    out.push(prefix);
    let significant = usize::from(prefix).div_ceil(8);
    out.extend_from_slice(&dst.octets()[..significant]);
    out.extend_from_slice(&router.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(msg_type: u8) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = BOOTREQUEST;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        b[236..240].copy_from_slice(&MAGIC_COOKIE);
        b.extend_from_slice(&[53, 1, msg_type, 255]);
        b
    }

    #[test]
    fn check_len_bounds_the_message() {
        assert_eq!(
            DhcpPacket::new_unchecked(&[0u8; HEADER_LEN - 1][..]).check_len(),
            Err(DhcpError::Truncated)
        );
        assert_eq!(
            DhcpPacket::new_unchecked(&[0u8; HEADER_LEN][..]).check_len(),
            Ok(())
        );
        assert_eq!(
            DhcpPacket::new_unchecked(&[0u8; MAX_MESSAGE_LEN][..]).check_len(),
            Ok(())
        );
        assert_eq!(
            DhcpPacket::new_unchecked(&[0u8; MAX_MESSAGE_LEN + 1][..]).check_len(),
            Err(DhcpError::Oversized)
        );
        // Long enough but not DHCP: the view refuses it, the length check alone does not.
        let mut b = minimal(1);
        b[236] = 0;
        assert_eq!(DhcpPacket::new_unchecked(&b[..]).check_len(), Ok(()));
        assert_eq!(
            DhcpPacket::new_checked(&b[..]).map(|_| ()),
            Err(DhcpError::BadMagicCookie)
        );
    }

    #[test]
    fn dhcp_wire_parses_minimal_discover() {
        let b = minimal(1);
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.message_type, MessageType::Discover);
        assert_eq!(m.chaddr, [0x02, 0, 0, 0, 0, 1]);
        assert_eq!(m.max_reply_len(), 548);
    }

    #[test]
    fn dhcp_wire_distinct_errors() {
        assert_eq!(Message::parse(&[0u8; 100]), Err(DhcpError::Truncated));
        assert_eq!(Message::parse(&[0u8; 2000]), Err(DhcpError::Oversized));
        let mut b = minimal(1);
        b[236] = 0;
        assert_eq!(Message::parse(&b), Err(DhcpError::BadMagicCookie));
        let mut b = minimal(1);
        b[1] = 6;
        assert_eq!(Message::parse(&b), Err(DhcpError::BadHardwareType));
        let mut b = minimal(1);
        b.pop();
        assert_eq!(Message::parse(&b), Err(DhcpError::MissingEnd));
        let mut b = minimal(1);
        b.truncate(b.len() - 2);
        assert_eq!(Message::parse(&b), Err(DhcpError::OptionTruncated));
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[53, 2, 1, 1, 255]);
        assert_eq!(Message::parse(&b), Err(DhcpError::BadOptionLength));
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[0, 0, 255]);
        assert_eq!(Message::parse(&b), Err(DhcpError::MissingMessageType));
        assert_eq!(
            Message::parse(&minimal(9)),
            Err(DhcpError::UnexpectedMessageType)
        );
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[53, 1, 1, 50, 3, 1, 2, 3, 255]);
        assert_eq!(Message::parse(&b), Err(DhcpError::BadOptionLength));
    }

    #[test]
    fn dhcp_wire_max_message_size() {
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[53, 1, 1, 57, 2, 0x05, 0xdc, 255]);
        assert_eq!(Message::parse(&b).unwrap().max_reply_len(), 1500 - 28);
        // Below the RFC minimum: the minimum holds.
        b[HEADER_LEN + 5] = 0x01;
        b[HEADER_LEN + 6] = 0x00;
        assert_eq!(Message::parse(&b).unwrap().max_reply_len(), 548);
    }

    #[test]
    fn dhcp_wire_builder_splits_and_respects_limit() {
        let mut buf = [0u8; 1024];
        let h = ReplyHeader {
            xid: 7,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::new(198, 18, 1, 10),
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: [2, 0, 0, 0, 0, 1],
        };
        let mut b = ReplyBuilder::new(&mut buf, 600, &h).unwrap();
        b.option(53, &[2]).unwrap();
        b.option(200, &[7u8; 300]).unwrap();
        assert_eq!(b.option(201, &[0u8; 100]), Err(NoRoom));
        let before = b.len();
        b.option(202, &[1, 2]).unwrap();
        assert_eq!(b.len(), before + 4);
        let len = b.finish();
        assert!(len <= 600);
        let p = DhcpPacket::new_checked(&buf[..len]).unwrap();
        let opts: Vec<_> = p.options().collect::<Result<_, _>>().unwrap();
        assert_eq!(opts[1].code, 200);
        assert_eq!(opts[1].data.len(), 255);
        assert_eq!(opts[2].code, 200);
        assert_eq!(opts[2].data.len(), 45);
        assert_eq!(p.yiaddr(), Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(p.op(), BOOTREPLY);
    }

    #[test]
    fn dhcp_wire_classless_route_encoding() {
        let mut v = Vec::new();
        push_classless_route(
            &mut v,
            Ipv4Addr::UNSPECIFIED,
            0,
            Ipv4Addr::new(198, 18, 1, 1),
        );
        push_classless_route(
            &mut v,
            Ipv4Addr::new(198, 19, 0, 0),
            16,
            Ipv4Addr::new(198, 18, 1, 254),
        );
        push_classless_route(
            &mut v,
            Ipv4Addr::new(203, 0, 113, 128),
            25,
            Ipv4Addr::new(198, 18, 1, 254),
        );
        assert_eq!(
            v,
            [
                0, 198, 18, 1, 1, //
                16, 198, 19, 198, 18, 1, 254, //
                25, 203, 0, 113, 128, 198, 18, 1, 254
            ]
        );
    }
}
