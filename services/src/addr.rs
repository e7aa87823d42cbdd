//! Addresses as the desired state writes them: IPv4 addresses and prefixes, MACs and DNS
//! names, parsed and formatted one way for every module that reads or prints them.

use std::fmt;
use std::net::Ipv4Addr;

use pollux_dataplane::wire::EthernetAddress;

/// An IPv4 prefix: `addr` with its host bits zero, and the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// The prefix containing `addr` (host bits are cleared).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        Ipv4Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        }
    }

    /// The netmask as a number.
    pub fn mask(&self) -> u32 {
        mask(self.prefix)
    }

    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let m = mask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The broadcast address (the last of the prefix).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is the network or the broadcast address of a prefix that has both
    /// (prefixes up to /30), so that no host may use it.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.prefix <= 30 && (ip == self.addr || ip == self.broadcast())
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// Parses a dotted-quad IPv4 address.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse().map_err(|_| format!("{s} is not an IPv4 address"))
}

/// Parses an IPv4 prefix whose host bits are zero (`198.18.1.0/24`).
pub fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let (addr, prefix) = parse_addr_prefix(s)?;
    let cidr = Ipv4Cidr::new(addr, prefix);
    if cidr.addr != addr {
        return Err(format!("{s} has host bits set (the prefix is {cidr})"));
    }
    Ok(cidr)
}

/// Parses an interface address with its prefix length (`198.18.255.1/24`).
pub fn parse_interface_addr(s: &str) -> Result<(Ipv4Addr, Ipv4Cidr), String> {
    if !s.contains('/') {
        return Err(format!(
            "{s} needs a prefix length, as in {s}/24 (the endpoint's subnet)"
        ));
    }
    let (addr, prefix) = parse_addr_prefix(s)?;
    Ok((addr, Ipv4Cidr::new(addr, prefix)))
}

fn parse_addr_prefix(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let Some((a, p)) = s.split_once('/') else {
        return Err(format!(
            "{s} is not a CIDR (expected an IPv4 prefix like 198.18.1.0/24)"
        ));
    };
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{s} is not a CIDR: {a} is not an IPv4 address"))?;
    let digits_ok = !p.is_empty()
        && p.len() <= 2
        && p.bytes().all(|b| b.is_ascii_digit())
        && !(p.len() > 1 && p.starts_with('0'));
    let prefix = match p.parse::<u8>() {
        Ok(p) if digits_ok && p <= 32 => p,
        _ => {
            return Err(format!(
                "{s} is not a CIDR: the prefix length must be 0..=32"
            ))
        }
    };
    Ok((addr, prefix))
}

/// Parses a MAC (`fa:16:3e:00:00:01`, six hex bytes separated by colons): the data
/// plane's [`EthernetAddress`] parser, with the message the configuration reports.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    s.parse::<EthernetAddress>()
        .map(|m| m.0)
        .map_err(|_| format!("{s} is not a MAC address (six hex bytes like fa:16:3e:00:00:01)"))
}

/// Parses a MAC a station may own: unicast and not all zeros.
pub fn parse_station_mac(s: &str) -> Result<[u8; 6], String> {
    let mac = parse_mac(s)?;
    if mac[0] & 1 == 1 {
        return Err(format!(
            "{s} is a multicast MAC; a port needs a unicast MAC"
        ));
    }
    if mac == [0; 6] {
        return Err(format!("{s} is not a station address"));
    }
    Ok(mac)
}

/// Formats a MAC as `fa:16:3e:00:00:01` ([`EthernetAddress`]'s formatter).
pub fn fmt_mac(mac: [u8; 6]) -> String {
    EthernetAddress(mac).to_string()
}

/// Checks a DNS name (RFC 1123): one label or several joined by dots, a trailing dot
/// allowed, at most 253 bytes, labels of 1..=63 letters, digits and `-` that neither start
/// nor end with `-`. Returns the name without its trailing dot.
pub fn check_dns_name(name: &str) -> Result<String, String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err(format!("{name:?} is not a DNS name"));
    }
    if bare.len() > 253 {
        return Err(format!(
            "the name is {} bytes; a DNS name has at most 253",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(format!("{name:?} is not a DNS name: it has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} is {} bytes; a label has at most 63",
                label.len()
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} has characters other than \
                 letters, digits and '-'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{name:?} is not a DNS name: label {label:?} starts or ends with '-'"
            ));
        }
    }
    Ok(bare.to_owned())
}
