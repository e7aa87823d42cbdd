//! The DHCP options a port may set (`extra_dhcp_opts`): dnsmasq's names for them (as
//! Neutron passes them) and their encodings.

use crate::addr::{check_dns_name, parse_cidr, parse_ipv4};
use pollux_dataplane::wire::dhcp::push_classless_route;

/// How the value of a DHCP option is written in `extra_dhcp_opts` and encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpOptionKind {
    /// One IPv4 address.
    Ip,
    /// Comma-separated IPv4 addresses, at least one.
    IpList,
    /// Comma-separated IPv4 addresses in pairs (option 33: destination, router).
    IpPairs,
    /// An integer 0..=255.
    U8,
    /// An integer 0..=65535, big-endian.
    U16,
    /// An integer 0..=2^32-1, big-endian.
    U32,
    /// `0` or `1`.
    Bool,
    /// Text, sent as is (no trailing NUL).
    Text,
    /// Comma-separated domain names in RFC 1035 encoding (option 119, RFC 3397).
    DomainSearch,
    /// Comma-separated `destination/prefix,router` pairs (option 121, RFC 3442).
    ClasslessRoutes,
    /// An option polluxd does not know: hex bytes (`0x0a0b` or `0a:0b`), else text.
    Raw,
}

/// dnsmasq's names of the options `extra_dhcp_opts` may set, with their codes and value
/// kinds.
const DHCP_OPTION_NAMES: [(&str, u8, DhcpOptionKind); 28] = [
    ("netmask", 1, DhcpOptionKind::Ip),
    ("router", 3, DhcpOptionKind::IpList),
    ("dns-server", 6, DhcpOptionKind::IpList),
    ("log-server", 7, DhcpOptionKind::IpList),
    ("hostname", 12, DhcpOptionKind::Text),
    ("domain-name", 15, DhcpOptionKind::Text),
    ("swap-server", 16, DhcpOptionKind::Ip),
    ("root-path", 17, DhcpOptionKind::Text),
    ("ip-forward-enable", 19, DhcpOptionKind::Bool),
    ("mtu", 26, DhcpOptionKind::U16),
    ("broadcast", 28, DhcpOptionKind::Ip),
    ("static-route", 33, DhcpOptionKind::IpPairs),
    ("nis-domain", 40, DhcpOptionKind::Text),
    ("nis-server", 41, DhcpOptionKind::IpList),
    ("ntp-server", 42, DhcpOptionKind::IpList),
    ("vendor-encap", 43, DhcpOptionKind::Raw),
    ("netbios-ns", 44, DhcpOptionKind::IpList),
    ("netbios-dd", 45, DhcpOptionKind::IpList),
    ("netbios-nodetype", 46, DhcpOptionKind::U8),
    ("netbios-scope", 47, DhcpOptionKind::Text),
    ("x-windows-fs", 48, DhcpOptionKind::IpList),
    ("x-windows-dm", 49, DhcpOptionKind::IpList),
    ("tftp-server", 66, DhcpOptionKind::Text),
    ("bootfile-name", 67, DhcpOptionKind::Text),
    ("user-class", 77, DhcpOptionKind::Raw),
    ("client-arch", 93, DhcpOptionKind::U16),
    ("domain-search", 119, DhcpOptionKind::DomainSearch),
    (
        "classless-static-route",
        121,
        DhcpOptionKind::ClasslessRoutes,
    ),
];

/// Names of options the DHCP server sets itself, so that naming one gets a clear refusal
/// rather than "unknown name".
const DHCP_SERVER_OPTION_NAMES: [(&str, u8); 10] = [
    ("requested-address", 50),
    ("lease-time", 51),
    ("option-overload", 52),
    ("message-type", 53),
    ("server-identifier", 54),
    ("parameter-request", 55),
    ("max-message-size", 57),
    ("t1", 58),
    ("t2", 59),
    ("client-id", 61),
];

/// Resolves an `extra_dhcp_opts` name as dnsmasq (and so Neutron) reads it: a number
/// (`42`), a name (`ntp-server`), or either after `option:`; case is ignored. Options the
/// server sets itself (0, 50..=55, 57..=59, 61, 255) are refused, and so is
/// `server-ip-address` (the `siaddr` header field, not an option).
pub fn dhcp_option_code(name: &str) -> Result<(u8, DhcpOptionKind), String> {
    let lower = name.trim().to_ascii_lowercase();
    if lower.starts_with("option6:") {
        return Err(format!(
            "{name} is a DHCPv6 option; give it ip_version = 6 (DHCPv6 is not served yet)"
        ));
    }
    if lower.starts_with("tag:") || lower.contains(',') {
        return Err(format!(
            "{name}: dnsmasq tags are not supported; give the option's name or number"
        ));
    }
    let bare = lower.strip_prefix("option:").unwrap_or(&lower);
    let code = if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
        match bare.parse::<u8>() {
            Ok(c) => c,
            Err(_) => return Err(format!("{name} is not an option code (1..=254)")),
        }
    } else if bare == "server-ip-address" {
        return Err(
            "server-ip-address sets the siaddr header field, which polluxd does not set; \
             give a TFTP server as tftp-server (option 66)"
                .to_owned(),
        );
    } else if let Some(&(_, c, _)) = DHCP_OPTION_NAMES.iter().find(|(n, _, _)| *n == bare) {
        c
    } else if let Some(&(_, c)) = DHCP_SERVER_OPTION_NAMES.iter().find(|(n, _)| *n == bare) {
        c
    } else {
        return Err(format!(
            "{name} is not a DHCP option name polluxd knows; give the option's number \
             (option:NUMBER)"
        ));
    };
    match code {
        0 | 255 => Err(format!("{code} is not an option code (1..=254)")),
        51 | 58 | 59 => Err(format!(
            "option {code} (lease, renewal and rebinding times) is set by the DHCP server; \
             set the subnet's dhcp_lease_duration instead"
        )),
        50 | 52 | 53 | 54 | 55 | 57 | 61 => Err(format!(
            "option {code} is part of the DHCP exchange and set by the server itself"
        )),
        _ => {
            let kind = DHCP_OPTION_NAMES
                .iter()
                .find(|(_, c, _)| *c == code)
                .map_or(DhcpOptionKind::Raw, |&(_, _, k)| k);
            Ok((code, kind))
        }
    }
}

/// Encodes an `extra_dhcp_opts` value of option `code` as `kind` says; at most 255 bytes.
pub fn encode_dhcp_option(code: u8, kind: DhcpOptionKind, value: &str) -> Result<Vec<u8>, String> {
    if value.trim().is_empty() {
        return Err(format!("option {code} needs a value"));
    }
    let items = || value.split(',').map(str::trim);
    let ips = |min: usize| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for item in items() {
            if item.is_empty() {
                return Err(format!("{value:?} has an empty list entry (option {code})"));
            }
            out.extend_from_slice(&parse_ipv4(item)?.octets());
        }
        if out.len() / 4 < min {
            return Err(format!(
                "option {code} needs at least {min} IPv4 address(es)"
            ));
        }
        Ok(out)
    };
    let int = |max: u64| -> Result<u64, String> {
        let t = value.trim();
        t.parse::<u64>()
            .ok()
            .filter(|&n| n <= max && !t.starts_with('+'))
            .ok_or_else(|| format!("{value:?} is not an integer 0..={max} (option {code})"))
    };
    let out = match kind {
        DhcpOptionKind::Ip => {
            let v = ips(1)?;
            if v.len() != 4 {
                return Err(format!("option {code} takes one IPv4 address"));
            }
            v
        }
        DhcpOptionKind::IpList => ips(1)?,
        DhcpOptionKind::IpPairs => {
            let v = ips(2)?;
            if !v.len().is_multiple_of(8) {
                return Err(format!(
                    "option {code} takes pairs of IPv4 addresses (destination,router)"
                ));
            }
            v
        }
        DhcpOptionKind::U8 => vec![int(u64::from(u8::MAX))? as u8],
        DhcpOptionKind::U16 => (int(u64::from(u16::MAX))? as u16).to_be_bytes().to_vec(),
        DhcpOptionKind::U32 => (int(u64::from(u32::MAX))? as u32).to_be_bytes().to_vec(),
        DhcpOptionKind::Bool => match value.trim() {
            "0" => vec![0],
            "1" => vec![1],
            _ => return Err(format!("{value:?} is not 0 or 1 (option {code})")),
        },
        DhcpOptionKind::Text => value.as_bytes().to_vec(),
        DhcpOptionKind::DomainSearch => {
            let mut out = Vec::new();
            for item in items() {
                for label in check_dns_name(item)?.split('.') {
                    out.push(label.len() as u8);
                    out.extend_from_slice(label.as_bytes());
                }
                out.push(0);
            }
            out
        }
        DhcpOptionKind::ClasslessRoutes => {
            let parts: Vec<&str> = items().collect();
            if !parts.len().is_multiple_of(2) {
                return Err(format!(
                    "option {code} takes pairs destination/prefix,router (e.g. \
                     198.19.0.0/16,198.18.1.1)"
                ));
            }
            let mut out = Vec::new();
            for pair in parts.chunks(2) {
                let dst = parse_cidr(pair[0])?;
                let router = parse_ipv4(pair[1])?;
                push_classless_route(&mut out, dst.addr, dst.prefix, router);
            }
            out
        }
        DhcpOptionKind::Raw => parse_hex_bytes(value).unwrap_or_else(|| value.as_bytes().to_vec()),
    };
    if out.is_empty() {
        return Err(format!("option {code} needs a value"));
    }
    if out.len() > 255 {
        return Err(format!(
            "the value of option {code} is {} bytes encoded; an option holds at most 255",
            out.len()
        ));
    }
    Ok(out)
}

/// Bytes written as `0x0a0b` or `0a:0b` (at least two octets with colons), as dnsmasq
/// reads hex; `None` for anything else.
fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty()
            || !hex.len().is_multiple_of(2)
            || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
    }
    if !s.contains(':') {
        return None;
    }
    s.split(':')
        .map(|p| {
            let ok = (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit());
            ok.then(|| u8::from_str_radix(p, 16).ok()).flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encoding of one extra option, or its error.
    fn encode(name: &str, value: &str) -> Result<(u8, Vec<u8>), String> {
        let (code, kind) = dhcp_option_code(name)?;
        Ok((code, encode_dhcp_option(code, kind, value)?))
    }

    #[test]
    fn extra_option_names_and_numbers() {
        let ntp = Ok((42, vec![198, 18, 1, 1, 198, 18, 1, 2]));
        for name in [
            "ntp-server",
            "option:ntp-server",
            "42",
            "option:42",
            "NTP-Server",
        ] {
            assert_eq!(encode(name, "198.18.1.1,198.18.1.2"), ntp, "{name}");
        }
        assert_eq!(encode("ntp-server", " 198.18.1.1 , 198.18.1.2 "), ntp);
        let table: [(&str, u8); 28] = [
            ("netmask", 1),
            ("router", 3),
            ("dns-server", 6),
            ("log-server", 7),
            ("hostname", 12),
            ("domain-name", 15),
            ("swap-server", 16),
            ("root-path", 17),
            ("ip-forward-enable", 19),
            ("mtu", 26),
            ("broadcast", 28),
            ("static-route", 33),
            ("nis-domain", 40),
            ("nis-server", 41),
            ("ntp-server", 42),
            ("vendor-encap", 43),
            ("netbios-ns", 44),
            ("netbios-dd", 45),
            ("netbios-nodetype", 46),
            ("netbios-scope", 47),
            ("x-windows-fs", 48),
            ("x-windows-dm", 49),
            ("tftp-server", 66),
            ("bootfile-name", 67),
            ("user-class", 77),
            ("client-arch", 93),
            ("domain-search", 119),
            ("classless-static-route", 121),
        ];
        for (name, code) in table {
            assert_eq!(dhcp_option_code(name).map(|c| c.0), Ok(code), "{name}");
        }
    }

    #[test]
    fn extra_option_encodings_are_byte_exact() {
        let cases: [(&str, &str, u8, Vec<u8>); 16] = [
            ("netmask", "255.255.255.0", 1, vec![255, 255, 255, 0]),
            ("router", "198.18.1.1", 3, vec![198, 18, 1, 1]),
            (
                "static-route",
                "198.19.0.0,198.18.1.2",
                33,
                vec![198, 19, 0, 0, 198, 18, 1, 2],
            ),
            ("ip-forward-enable", "1", 19, vec![1]),
            ("mtu", "1450", 26, vec![0x05, 0xaa]),
            ("netbios-nodetype", "8", 46, vec![8]),
            ("client-arch", "7", 93, vec![0, 7]),
            ("bootfile-name", "pxelinux.0", 67, b"pxelinux.0".to_vec()),
            ("tftp-server", "tftp.example", 66, b"tftp.example".to_vec()),
            ("hostname", "other", 12, b"other".to_vec()),
            (
                "domain-search",
                "example.org,eng.example.org.",
                119,
                [
                    &b"\x07example\x03org\x00"[..],
                    &b"\x03eng\x07example\x03org\x00"[..],
                ]
                .concat(),
            ),
            (
                "classless-static-route",
                "198.19.0.0/16,198.18.1.2,0.0.0.0/0,198.18.1.1",
                121,
                vec![16, 198, 19, 198, 18, 1, 2, 0, 198, 18, 1, 1],
            ),
            // Unknown codes: text, or hex bytes.
            ("150", "198.18.1.5", 150, b"198.18.1.5".to_vec()),
            ("option:224", "0x0a0B", 224, vec![0x0a, 0x0b]),
            ("224", "0a:b:ff", 224, vec![0x0a, 0x0b, 0xff]),
            (
                "vendor-encap",
                "01:04:c0:a8:00:01",
                43,
                vec![1, 4, 0xc0, 0xa8, 0, 1],
            ),
        ];
        for (name, value, code, bytes) in cases {
            assert_eq!(encode(name, value), Ok((code, bytes)), "{name} = {value}");
        }
        // Text that only looks a little like hex stays text.
        assert_eq!(encode("224", "0xabc"), Ok((224, b"0xabc".to_vec())));
        assert_eq!(encode("224", "abc"), Ok((224, b"abc".to_vec())));
    }
}
