//! The DHCPv4 server core against messages laid out as real clients send them.

use std::net::Ipv4Addr;

use pollux_dataplane::port::PortId;
use pollux_dataplane::wire::dhcp::{DhcpPacket, Message, MessageType, BOOTREPLY, MAX_MESSAGE_LEN};
use pollux_services::addr::Ipv4Cidr;
use pollux_services::dhcp::{
    DhcpConfig, DhcpServer, Discard, ExtraOption, HostConfig, HostRoute, LeaseState, Reply,
    SubnetConfig,
};
use proptest::prelude::*;

const VM1: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01];
const VM2: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0x02];
const STRANGER: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0x99];
const SERVER_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x00, 0xfe];
const NOW: u64 = 1_700_000_000;
/// The data-plane ports the clients are plugged into: VM1 and VM2 each on their own,
/// every other MAC behind a third.
const VM1_PORT: PortId = PortId(1);
const VM2_PORT: PortId = PortId(2);
const OTHER_PORT: PortId = PortId(9);

fn port_of(mac: &[u8]) -> PortId {
    match mac {
        m if m == VM1 => VM1_PORT,
        m if m == VM2 => VM2_PORT,
        _ => OTHER_PORT,
    }
}

/// Messages as they come in on the port of the client they name.
trait OwnPort {
    fn handle_on_own_port(&mut self, msg: &[u8], now: u64) -> Result<Option<Reply>, Discard>;
}

impl OwnPort for DhcpServer {
    fn handle_on_own_port(&mut self, msg: &[u8], now: u64) -> Result<Option<Reply>, Discard> {
        let chaddr = msg.get(28..34).unwrap_or_default();
        self.handle(msg, now, port_of(chaddr))
    }
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

fn subnet() -> SubnetConfig {
    let mut s = SubnetConfig::new(
        Ipv4Cidr::new(ip(198, 18, 1, 0), 24),
        ip(198, 18, 1, 2),
        SERVER_MAC,
    );
    s.gateway = Some(ip(198, 18, 1, 1));
    s.dns_servers = vec![ip(203, 0, 113, 53)];
    s.domain = Some("openstacklocal".into());
    s.mtu = Some(1450);
    s.host_routes = vec![HostRoute {
        destination: Ipv4Cidr::new(ip(198, 19, 0, 0), 16),
        nexthop: ip(198, 18, 1, 254),
    }];
    s
}

fn config() -> DhcpConfig {
    DhcpConfig {
        subnets: vec![subnet()],
        hosts: vec![
            HostConfig {
                mac: VM1,
                port: Some(VM1_PORT),
                ip: ip(198, 18, 1, 10),
                hostname: Some("vm1".into()),
                extra_options: vec![
                    ExtraOption::text(66, "203.0.113.5"),
                    ExtraOption::text(67, "pxelinux.0"),
                ],
            },
            HostConfig {
                mac: VM2,
                port: Some(VM2_PORT),
                ip: ip(198, 18, 1, 11),
                hostname: None,
                extra_options: vec![],
            },
        ],
        limiter_seed: Some(1),
        ..DhcpConfig::default()
    }
}

/// The fixed part up to `chaddr` (44 bytes), then `sname` and `file` (192 zero bytes),
/// then the magic cookie, as RFC 2131 §2 lays it out.
fn fixed(first44: &[u8; 44]) -> Vec<u8> {
    let mut b = first44.to_vec();
    b.extend_from_slice(&[0u8; 192]);
    b.extend_from_slice(&[99, 130, 83, 99]);
    b
}

/// ISC dhclient 4.4 DHCPDISCOVER from fa:16:3e:00:00:01, remembering no address.
fn dhclient_discover() -> Vec<u8> {
    #[rustfmt::skip]
    let mut b = fixed(&[
        0x01, 0x01, 0x06, 0x00,             // op BOOTREQUEST, htype Ethernet, hlen 6, hops
        0x3c, 0x2b, 0x1a, 0x09,             // xid
        0x00, 0x00, 0x00, 0x00,             // secs, flags (no broadcast)
        0, 0, 0, 0,                         // ciaddr
        0, 0, 0, 0,                         // yiaddr
        0, 0, 0, 0,                         // siaddr
        0, 0, 0, 0,                         // giaddr
        0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01, // chaddr
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0,       // chaddr padding
    ]);
    #[rustfmt::skip]
    b.extend_from_slice(&[
        53, 1, 1,                                       // DHCPDISCOVER
        12, 3, b'v', b'm', b'1',                        // hostname
        55, 13, 1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42, // parameter request list
        255,
    ]);
    // dhclient pads to the BOOTP minimum of 300 bytes.
    b.resize(300, 0);
    b
}

/// busybox udhcpc 1.36 DHCPREQUEST (SELECTING) from fa:16:3e:00:00:01 for 198.18.1.10.
fn udhcpc_request(server: Ipv4Addr) -> Vec<u8> {
    #[rustfmt::skip]
    let mut b = fixed(&[
        0x01, 0x01, 0x06, 0x00,
        0x7e, 0x51, 0x00, 0x42,             // xid
        0x00, 0x00, 0x00, 0x00,
        0, 0, 0, 0,
        0, 0, 0, 0,
        0, 0, 0, 0,
        0, 0, 0, 0,
        0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    let s = server.octets();
    #[rustfmt::skip]
    b.extend_from_slice(&[
        53, 1, 3,                                         // DHCPREQUEST
        61, 7, 0x01, 0xfa, 0x16, 0x3e, 0x00, 0x00, 0x01,  // client id: type 1 + MAC
        50, 4, 198, 18, 1, 10,                            // requested IP
        54, 4, s[0], s[1], s[2], s[3],                    // server id
        57, 2, 0x02, 0x40,                                // max message size 576
        55, 7, 1, 3, 6, 12, 15, 28, 42,                   // parameter request list
        60, 12, b'u', b'd', b'h', b'c', b'p', b' ', b'1', b'.', b'3', b'6', b'.', b'1',
        12, 3, b'v', b'm', b'1',
        255,
    ]);
    b
}

/// A message built field by field, for the cases no fixture covers.
struct Msg {
    mac: [u8; 6],
    xid: u32,
    flags: u16,
    ciaddr: Ipv4Addr,
    options: Vec<u8>,
}

impl Msg {
    fn new(mac: [u8; 6], msg_type: u8) -> Self {
        Msg {
            mac,
            xid: 0x1234_5678,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            options: vec![53, 1, msg_type],
        }
    }
    fn opt(mut self, code: u8, data: &[u8]) -> Self {
        self.options.push(code);
        self.options.push(data.len() as u8);
        self.options.extend_from_slice(data);
        self
    }
    fn requested(self, a: Ipv4Addr) -> Self {
        self.opt(50, &a.octets())
    }
    fn server(self, a: Ipv4Addr) -> Self {
        self.opt(54, &a.octets())
    }
    fn ciaddr(mut self, a: Ipv4Addr) -> Self {
        self.ciaddr = a;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[28..34].copy_from_slice(&self.mac);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&self.options);
        b.push(255);
        b
    }
}

fn options(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let p = DhcpPacket::new_checked(bytes).expect("reply parses");
    p.options()
        .map(|o| o.map(|o| (o.code, o.data.to_vec())))
        .collect::<Result<_, _>>()
        .expect("reply has a valid option layout")
}

fn get(opts: &[(u8, Vec<u8>)], code: u8) -> Option<&[u8]> {
    opts.iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_slice())
}

#[test]
fn dhcp_discover_from_dhclient_gets_exact_offer() {
    let mut s = DhcpServer::new(config());
    let r = s
        .handle_on_own_port(&dhclient_discover(), NOW)
        .unwrap()
        .unwrap();
    assert_eq!(r.message_type, MessageType::Offer);
    // No broadcast flag, no ciaddr: unicast to the offered address at the client's MAC.
    assert_eq!(r.dst_ip, ip(198, 18, 1, 10));
    assert_eq!(r.dst_mac, VM1);
    assert!(!r.broadcast);
    assert_eq!(r.src_ip, ip(198, 18, 1, 2));
    assert_eq!(r.src_mac, SERVER_MAC);
    assert_eq!(r.dst_port, 68);
    assert!(r.bytes.len() >= 300 && r.bytes.len() <= 548);

    let p = DhcpPacket::new_checked(&r.bytes[..]).unwrap();
    assert_eq!(p.op(), BOOTREPLY);
    assert_eq!((p.htype(), p.hlen(), p.hops()), (1, 6, 0));
    assert_eq!(p.xid(), 0x3c2b_1a09);
    assert_eq!(p.flags(), 0);
    assert_eq!(p.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.yiaddr(), ip(198, 18, 1, 10));
    assert_eq!(p.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.giaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.client_mac(), VM1);
    assert_eq!(&p.chaddr()[6..], &[0u8; 10]);

    let expected: Vec<(u8, Vec<u8>)> = vec![
        (53, vec![2]),
        (54, vec![198, 18, 1, 2]),
        (51, 86_400u32.to_be_bytes().to_vec()),
        (58, 43_200u32.to_be_bytes().to_vec()),
        (59, 75_600u32.to_be_bytes().to_vec()),
        (1, vec![255, 255, 255, 0]),
        (3, vec![198, 18, 1, 1]),
        // Then the request list's order: 28 2 15 6 119 12 44 47 26 121 42, skipping what
        // the server does not have.
        (28, vec![198, 18, 1, 255]),
        (15, b"openstacklocal".to_vec()),
        (6, vec![203, 0, 113, 53]),
        (12, b"vm1".to_vec()),
        (26, vec![0x05, 0xaa]),
        (
            121,
            vec![
                0, 198, 18, 1, 1, // 0.0.0.0/0 via the gateway
                16, 198, 19, 198, 18, 1, 254, // 198.19.0.0/16 via 198.18.1.254
            ],
        ),
    ];
    assert_eq!(options(&r.bytes), expected);
    // After End, only padding.
    let end = 240 + expected.iter().map(|(_, v)| 2 + v.len()).sum::<usize>();
    assert_eq!(r.bytes[end], 255);
    assert!(r.bytes[end + 1..].iter().all(|&b| b == 0));

    let l = s.leases().get(&VM1).unwrap();
    assert_eq!(l.state, LeaseState::Offered);
    assert_eq!(l.ip, ip(198, 18, 1, 10));
    assert_eq!(s.stats().offers, 1);
}

#[test]
fn dhcp_request_selecting_from_udhcpc_gets_ack() {
    let mut s = DhcpServer::new(config());
    s.handle_on_own_port(&dhclient_discover(), NOW)
        .unwrap()
        .unwrap();
    let r = s
        .handle_on_own_port(&udhcpc_request(ip(198, 18, 1, 2)), NOW + 1)
        .unwrap()
        .unwrap();
    assert_eq!(r.message_type, MessageType::Ack);
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (ip(198, 18, 1, 10), VM1, false)
    );
    let p = DhcpPacket::new_checked(&r.bytes[..]).unwrap();
    assert_eq!(p.xid(), 0x7e51_0042);
    assert_eq!(p.yiaddr(), ip(198, 18, 1, 10));
    assert_eq!(p.ciaddr(), Ipv4Addr::UNSPECIFIED);
    let expected: Vec<(u8, Vec<u8>)> = vec![
        (53, vec![5]),
        (54, vec![198, 18, 1, 2]),
        (51, 86_400u32.to_be_bytes().to_vec()),
        (58, 43_200u32.to_be_bytes().to_vec()),
        (59, 75_600u32.to_be_bytes().to_vec()),
        (1, vec![255, 255, 255, 0]),
        (3, vec![198, 18, 1, 1]),
        (6, vec![203, 0, 113, 53]),
        (12, b"vm1".to_vec()),
        (15, b"openstacklocal".to_vec()),
        (28, vec![198, 18, 1, 255]),
    ];
    assert_eq!(options(&r.bytes), expected);
    assert!(r.bytes.len() <= 576 - 28);
    let l = s.leases().get(&VM1).unwrap();
    assert_eq!(l.state, LeaseState::Bound);
    assert_eq!(l.expires, NOW + 1 + 86_400);
    assert_eq!(l.hostname.as_deref(), Some("vm1"));
    let list = s.leases().list(NOW + 1);
    assert_eq!(list[0].mac, "fa:16:3e:00:00:01");
    assert_eq!(list[0].expires_in_secs, 86_400);
    assert_eq!(s.stats().acks, 1);
}

#[test]
fn dhcp_request_selecting_other_server_forgets_offer() {
    let mut s = DhcpServer::new(config());
    s.handle_on_own_port(&dhclient_discover(), NOW).unwrap();
    assert!(s.leases().get(&VM1).is_some());
    let r = s
        .handle_on_own_port(&udhcpc_request(ip(203, 0, 113, 9)), NOW)
        .unwrap();
    assert!(r.is_none());
    assert!(s.leases().get(&VM1).is_none());
    assert_eq!(s.stats().other_server, 1);
}

#[test]
fn dhcp_request_selecting_wrong_address_is_nak() {
    let mut s = DhcpServer::new(config());
    let m = Msg::new(VM1, 3)
        .requested(ip(198, 18, 1, 77))
        .server(ip(198, 18, 1, 2));
    let r = s.handle_on_own_port(&m.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Nak);
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (Ipv4Addr::BROADCAST, [0xff; 6], true)
    );
    let p = DhcpPacket::new_checked(&r.bytes[..]).unwrap();
    assert_eq!(p.yiaddr(), Ipv4Addr::UNSPECIFIED);
    let o = options(&r.bytes);
    assert_eq!(get(&o, 53), Some(&[6][..]));
    assert_eq!(get(&o, 54), Some(&[198, 18, 1, 2][..]));
    assert_eq!(get(&o, 51), None);
    assert!(s.leases().get(&VM1).is_none());
}

#[test]
fn dhcp_request_init_reboot() {
    let mut s = DhcpServer::new(config());
    let ok = Msg::new(VM1, 3).requested(ip(198, 18, 1, 10));
    let r = s.handle_on_own_port(&ok.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Ack);
    assert_eq!(s.leases().get(&VM1).unwrap().state, LeaseState::Bound);

    let wrong = Msg::new(VM2, 3).requested(ip(198, 18, 1, 10));
    let r = s.handle_on_own_port(&wrong.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Nak);
    assert!(r.broadcast);

    let unknown = Msg::new(STRANGER, 3).requested(ip(198, 18, 1, 50));
    assert_eq!(
        s.handle_on_own_port(&unknown.bytes(), NOW),
        Err(Discard::UnknownClient)
    );
}

#[test]
fn dhcp_request_renewing_and_rebinding() {
    let mut s = DhcpServer::new(config());
    let renew = Msg::new(VM1, 3).ciaddr(ip(198, 18, 1, 10));
    let r = s.handle_on_own_port(&renew.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Ack);
    // To ciaddr, unicast, and ciaddr echoed.
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (ip(198, 18, 1, 10), VM1, false)
    );
    let p = DhcpPacket::new_checked(&r.bytes[..]).unwrap();
    assert_eq!(p.ciaddr(), ip(198, 18, 1, 10));
    assert_eq!(p.yiaddr(), ip(198, 18, 1, 10));

    // Rebinding is the same message broadcast; the broadcast flag is the client's.
    let mut rebind = Msg::new(VM1, 3).ciaddr(ip(198, 18, 1, 10));
    rebind.flags = 0x8000;
    let r = s.handle_on_own_port(&rebind.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Ack);
    assert_eq!(r.dst_ip, ip(198, 18, 1, 10));

    let wrong = Msg::new(VM1, 3).ciaddr(ip(198, 18, 1, 99));
    let r = s.handle_on_own_port(&wrong.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Nak);
    assert!(r.broadcast);

    let nothing = Msg::new(VM1, 3);
    assert_eq!(
        s.handle_on_own_port(&nothing.bytes(), NOW),
        Err(Discard::BadRequest)
    );
}

#[test]
fn dhcp_broadcast_flag_means_broadcast_reply() {
    let mut s = DhcpServer::new(config());
    let mut m = Msg::new(VM1, 1);
    m.flags = 0x8000;
    let r = s.handle_on_own_port(&m.bytes(), NOW).unwrap().unwrap();
    assert_eq!(
        (r.dst_ip, r.dst_mac, r.broadcast),
        (Ipv4Addr::BROADCAST, [0xff; 6], true)
    );
    assert_eq!(
        DhcpPacket::new_checked(&r.bytes[..]).unwrap().flags(),
        0x8000
    );
}

#[test]
fn dhcp_release_decline_inform() {
    let mut s = DhcpServer::new(config());
    let req = Msg::new(VM1, 3).requested(ip(198, 18, 1, 10));
    s.handle_on_own_port(&req.bytes(), NOW).unwrap().unwrap();
    let rel = Msg::new(VM1, 7)
        .ciaddr(ip(198, 18, 1, 10))
        .server(ip(198, 18, 1, 2));
    assert_eq!(s.handle_on_own_port(&rel.bytes(), NOW), Ok(None));
    assert!(s.leases().get(&VM1).is_none());
    assert_eq!(s.stats().releases, 1);

    // A decline of someone else's address is ignored.
    let foreign = Msg::new(VM2, 4)
        .requested(ip(198, 18, 1, 10))
        .server(ip(198, 18, 1, 2));
    assert_eq!(s.handle_on_own_port(&foreign.bytes(), NOW), Ok(None));
    assert_eq!(s.stats().declines, 0);
    s.handle_on_own_port(&req.bytes(), NOW).unwrap().unwrap();
    let dec = Msg::new(VM1, 4)
        .requested(ip(198, 18, 1, 10))
        .server(ip(198, 18, 1, 2));
    assert_eq!(s.handle_on_own_port(&dec.bytes(), NOW), Ok(None));
    assert_eq!(s.stats().declines, 1);
    assert!(s.leases().is_declined(ip(198, 18, 1, 10), NOW));
    assert!(s.leases().get(&VM1).is_none());
    assert_eq!(
        s.handle_on_own_port(&Msg::new(VM1, 4).bytes(), NOW),
        Err(Discard::BadRequest)
    );

    // INFORM: no PRL, so everything the server has, extras included; no lease.
    let inf = Msg::new(VM1, 8).ciaddr(ip(198, 18, 1, 10));
    let r = s.handle_on_own_port(&inf.bytes(), NOW).unwrap().unwrap();
    assert_eq!(r.message_type, MessageType::Ack);
    assert_eq!((r.dst_ip, r.dst_mac), (ip(198, 18, 1, 10), VM1));
    let p = DhcpPacket::new_checked(&r.bytes[..]).unwrap();
    assert_eq!(p.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(p.ciaddr(), ip(198, 18, 1, 10));
    let o = options(&r.bytes);
    let codes: Vec<u8> = o.iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [53, 54, 1, 3, 6, 12, 15, 26, 28, 121, 66, 67]);
    assert_eq!(get(&o, 66), Some(&b"203.0.113.5"[..]));
    assert_eq!(get(&o, 67), Some(&b"pxelinux.0"[..]));
    assert!(s.leases().get(&VM1).is_none());
    assert_eq!(s.stats().informs, 1);
    assert_eq!(
        s.handle_on_own_port(&Msg::new(VM1, 8).bytes(), NOW),
        Err(Discard::BadRequest)
    );
    let stranger = Msg::new(STRANGER, 8).ciaddr(ip(198, 18, 1, 50));
    assert_eq!(
        s.handle_on_own_port(&stranger.bytes(), NOW),
        Err(Discard::UnknownClient)
    );
}

#[test]
fn dhcp_extra_options_follow_request_list_and_override() {
    let mut cfg = config();
    cfg.hosts[0]
        .extra_options
        .push(ExtraOption::raw(6, vec![203, 0, 113, 54]));
    let mut s = DhcpServer::new(cfg);
    let m = Msg::new(VM1, 1).opt(55, &[67, 6, 66, 1]);
    let r = s.handle_on_own_port(&m.bytes(), NOW).unwrap().unwrap();
    let codes: Vec<u8> = options(&r.bytes).iter().map(|(c, _)| *c).collect();
    assert_eq!(codes, [53, 54, 51, 58, 59, 1, 3, 67, 6, 66]);
    assert_eq!(get(&options(&r.bytes), 6), Some(&[203, 0, 113, 54][..]));
}

#[test]
fn dhcp_reconfigure_moves_and_removes_hosts() {
    let mut s = DhcpServer::new(config());
    for mac in [VM1, VM2] {
        let req = Msg::new(mac, 3).requested(if mac == VM1 {
            ip(198, 18, 1, 10)
        } else {
            ip(198, 18, 1, 11)
        });
        assert_eq!(
            s.handle_on_own_port(&req.bytes(), NOW)
                .unwrap()
                .unwrap()
                .message_type,
            MessageType::Ack
        );
    }
    let mut cfg = config();
    cfg.hosts[0].ip = ip(198, 18, 1, 20);
    cfg.hosts.truncate(1);
    s.reconfigure(cfg);
    // The moved host's lease and the removed host's lease are gone.
    assert!(s.leases().get(&VM1).is_none());
    assert!(s.leases().get(&VM2).is_none());
    let renew = Msg::new(VM1, 3).ciaddr(ip(198, 18, 1, 10));
    let r = s
        .handle_on_own_port(&renew.bytes(), NOW + 10)
        .unwrap()
        .unwrap();
    assert_eq!(r.message_type, MessageType::Nak);
    let r = s
        .handle_on_own_port(&Msg::new(VM1, 1).bytes(), NOW + 11)
        .unwrap()
        .unwrap();
    assert_eq!(r.message_type, MessageType::Offer);
    assert_eq!(
        DhcpPacket::new_checked(&r.bytes[..]).unwrap().yiaddr(),
        ip(198, 18, 1, 20)
    );
    let renew2 = Msg::new(VM2, 3).ciaddr(ip(198, 18, 1, 11));
    assert_eq!(
        s.handle_on_own_port(&renew2.bytes(), NOW + 12),
        Err(Discard::UnknownClient)
    );
    assert_eq!(
        s.handle_on_own_port(&Msg::new(VM2, 1).bytes(), NOW + 12),
        Err(Discard::UnknownClient)
    );
}

#[test]
fn dhcp_unknown_macs_only_when_allowed() {
    let mut s = DhcpServer::new(config());
    assert_eq!(
        s.handle_on_own_port(&Msg::new(STRANGER, 1).bytes(), NOW),
        Err(Discard::UnknownClient)
    );
    let mut cfg = config();
    cfg.subnets[0].cidr = Ipv4Cidr::new(ip(203, 0, 113, 0), 29);
    cfg.subnets[0].server_ip = ip(203, 0, 113, 2);
    cfg.subnets[0].gateway = Some(ip(203, 0, 113, 1));
    cfg.subnets[0].serve_unknown = true;
    cfg.hosts = vec![HostConfig {
        mac: VM1,
        port: Some(VM1_PORT),
        ip: ip(203, 0, 113, 3),
        hostname: None,
        extra_options: vec![],
    }];
    let mut s = DhcpServer::new(cfg);
    // .0 network, .1 gateway, .2 server, .3 static host, .7 broadcast: .4 .5 .6 free.
    let mut got = Vec::new();
    for last in 0x10..0x14u8 {
        let mac = [0xfa, 0x16, 0x3e, 0, 1, last];
        match s.handle_on_own_port(&Msg::new(mac, 1).bytes(), NOW) {
            Ok(Some(r)) => got.push(DhcpPacket::new_checked(&r.bytes[..]).unwrap().yiaddr()),
            Err(e) => got.push({
                assert_eq!(e, Discard::PoolExhausted);
                Ipv4Addr::UNSPECIFIED
            }),
            Ok(None) => panic!("no reply"),
        }
    }
    assert_eq!(
        got,
        [
            ip(203, 0, 113, 4),
            ip(203, 0, 113, 5),
            ip(203, 0, 113, 6),
            Ipv4Addr::UNSPECIFIED
        ]
    );
    // The dynamic client completes with a REQUEST for its offer.
    let req = Msg::new([0xfa, 0x16, 0x3e, 0, 1, 0x10], 3)
        .requested(ip(203, 0, 113, 4))
        .server(ip(203, 0, 113, 2));
    assert_eq!(
        s.handle_on_own_port(&req.bytes(), NOW)
            .unwrap()
            .unwrap()
            .message_type,
        MessageType::Ack
    );
    // Offers lapse, and their addresses come back.
    s.leases_mut().expire(NOW + 1000);
    let r = s
        .handle_on_own_port(
            &Msg::new([0xfa, 0x16, 0x3e, 0, 1, 0x13], 1).bytes(),
            NOW + 1000,
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        DhcpPacket::new_checked(&r.bytes[..]).unwrap().yiaddr(),
        ip(203, 0, 113, 5)
    );
}

#[test]
fn dhcp_rate_limit_is_per_client() {
    let mut s = DhcpServer::new(config());
    let flood = Msg::new(VM1, 1).bytes();
    let mut limited = 0;
    for _ in 0..100 {
        if s.handle_on_own_port(&flood, NOW) == Err(Discard::RateLimited) {
            limited += 1;
        }
    }
    assert!(limited >= 70, "{limited}");
    assert_eq!(
        s.handle_on_own_port(&Msg::new(VM2, 1).bytes(), NOW)
            .unwrap()
            .unwrap()
            .message_type,
        MessageType::Offer
    );
    // The flooder's budget comes back with time.
    assert!(s.handle_on_own_port(&flood, NOW + 2).unwrap().is_some());
}

#[test]
fn dhcp_reply_respects_max_message_size() {
    let mut cfg = config();
    cfg.hosts[0]
        .extra_options
        .push(ExtraOption::raw(224, vec![0xab; 400]));
    let mut s = DhcpServer::new(cfg);
    let prl = [1, 3, 224, 6];
    let r = s
        .handle_on_own_port(&Msg::new(VM1, 1).opt(55, &prl).bytes(), NOW)
        .unwrap()
        .unwrap();
    assert!(r.bytes.len() <= 548);
    let o = options(&r.bytes);
    assert_eq!(get(&o, 224), None, "too big for 576: left out");
    assert!(get(&o, 6).is_some(), "later options still go in");
    let big = Msg::new(VM1, 1)
        .opt(57, &1500u16.to_be_bytes())
        .opt(55, &prl);
    let r = s
        .handle_on_own_port(&big.bytes(), NOW + 10)
        .unwrap()
        .unwrap();
    assert!(r.bytes.len() <= 1450 - 28, "capped by the subnet's MTU");
    let o = options(&r.bytes);
    // Split in two instances (RFC 3396).
    let parts: Vec<usize> = o
        .iter()
        .filter(|(c, _)| *c == 224)
        .map(|(_, v)| v.len())
        .collect();
    assert_eq!(parts, [255, 145]);
}

#[test]
fn dhcp_drop_reasons() {
    let mut s = DhcpServer::new(config());
    assert_eq!(
        s.handle_on_own_port(&[0u8; 10], NOW),
        Err(Discard::Truncated)
    );
    assert_eq!(
        s.handle_on_own_port(&[0u8; 1600], NOW),
        Err(Discard::Oversized)
    );
    let mut b = Msg::new(VM1, 1).bytes();
    b[0] = 2;
    assert_eq!(s.handle_on_own_port(&b, NOW), Err(Discard::NotBootRequest));
    let mut b = Msg::new(VM1, 1).bytes();
    b[24] = 198;
    assert_eq!(s.handle_on_own_port(&b, NOW), Err(Discard::Relayed));
    assert_eq!(
        s.handle_on_own_port(&Msg::new([0xff; 6], 1).bytes(), NOW),
        Err(Discard::BadClientMac)
    );
    assert_eq!(
        s.handle_on_own_port(&Msg::new(VM1, 2).bytes(), NOW),
        Err(Discard::UnexpectedMessageType)
    );
    let names: std::collections::HashSet<_> = Discard::ALL.iter().map(|d| d.as_str()).collect();
    assert_eq!(names.len(), Discard::ALL.len());
}

#[test]
fn dhcp_leases_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("pollux-dhcp-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("leases.json");
    let mut s = DhcpServer::new(config());
    s.handle_on_own_port(&udhcpc_request(ip(198, 18, 1, 2)), NOW)
        .unwrap()
        .unwrap();
    s.leases().save(&path).unwrap();
    let restored = pollux_services::dhcp::LeaseTable::load(&path).unwrap();
    let s2 = DhcpServer::with_leases(config(), restored);
    // Port ids are per run, so the port a lease came in on is not kept.
    let mut expected = s.leases().get(&VM1).unwrap().clone();
    expected.port = None;
    assert_eq!(s2.leases().len(), 1);
    assert_eq!(s2.leases().get(&VM1), Some(&expected));
    assert_eq!(s2.leases().get(&VM1).unwrap().expires, NOW + 86_400);
    std::fs::write(&path, b"not json").unwrap();
    let e = pollux_services::dhcp::LeaseTable::load(&path).unwrap_err();
    assert!(e.to_string().contains("leases.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn check_reply(r: &pollux_services::dhcp::Reply, request: &[u8]) {
    let m = Message::parse(&r.bytes).expect("reply parses with the module's own view");
    assert_eq!(m.op, BOOTREPLY);
    assert_eq!(m.message_type, r.message_type);
    assert!(m.server_id.is_some());
    assert!(r.bytes.len() <= MAX_MESSAGE_LEN);
    let req = Message::parse(request).unwrap();
    assert!(r.bytes.len() <= req.max_reply_len());
    assert_eq!(m.xid, req.xid);
    options(&r.bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn dhcp_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = Message::parse(&bytes);
        let p = DhcpPacket::new_unchecked(&bytes[..]);
        let _ = (p.xid(), p.ciaddr(), p.chaddr(), p.options().count());
        let mut s = DhcpServer::new(config());
        if let Ok(Some(r)) = s.handle_on_own_port(&bytes, NOW) {
            check_reply(&r, &bytes);
        }
    }

    #[test]
    fn dhcp_replies_are_well_formed(
        mac_pick in 0usize..3,
        msg_type in 1u8..=8,
        flags in prop_oneof![Just(0u16), Just(0x8000u16)],
        ciaddr in prop_oneof![Just(0u32), Just(0xc612_010a), Just(0xc612_0163)],
        options in proptest::collection::vec(
            (prop_oneof![Just(50u8), Just(54), Just(55), Just(57), Just(12), Just(61), any::<u8>()],
             proptest::collection::vec(any::<u8>(), 0..40)),
            0..8),
        serve_unknown in any::<bool>(),
    ) {
        let mac = [VM1, VM2, STRANGER][mac_pick];
        let mut m = Msg::new(mac, msg_type);
        m.flags = flags;
        m.ciaddr = Ipv4Addr::from(ciaddr);
        for (code, data) in &options {
            if *code != 0 && *code != 255 && *code != 53 {
                m = m.opt(*code, data);
            }
        }
        let bytes = m.bytes();
        let mut cfg = config();
        cfg.subnets[0].serve_unknown = serve_unknown;
        let mut s = DhcpServer::new(cfg);
        // Twice: the second message meets the state the first one left.
        for t in 0..2 {
            if let Ok(Some(r)) = s.handle_on_own_port(&bytes, NOW + t) {
                check_reply(&r, &bytes);
            }
        }
    }
}

#[test]
fn unknown_macs_get_addresses_from_the_allocation_pools_only() {
    let mut c = config();
    c.subnets[0].serve_unknown = true;
    c.subnets[0].pools = vec![
        (ip(198, 18, 1, 100), ip(198, 18, 1, 100)),
        (ip(198, 18, 1, 200), ip(198, 18, 1, 201)),
    ];
    let mut s = DhcpServer::new(c);
    let mut got = Vec::new();
    for n in 0..4u8 {
        let mac = [0xfa, 0x16, 0x3e, 0x00, 0x01, n];
        match s.handle_on_own_port(&Msg::new(mac, 1).bytes(), NOW) {
            Ok(Some(r)) => got.push(DhcpPacket::new_checked(&r.bytes[..]).unwrap().yiaddr()),
            Err(e) => {
                assert_eq!(e, Discard::PoolExhausted);
                got.push(Ipv4Addr::UNSPECIFIED);
            }
            Ok(None) => panic!("no answer"),
        }
    }
    assert_eq!(
        got,
        [
            ip(198, 18, 1, 100),
            ip(198, 18, 1, 200),
            ip(198, 18, 1, 201),
            Ipv4Addr::UNSPECIFIED
        ]
    );
    // A requested address outside the pools is not given either.
    let mac = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x01];
    let r = s.handle_on_own_port(&Msg::new(mac, 1).requested(ip(198, 18, 1, 50)).bytes(), NOW);
    assert_eq!(r, Err(Discard::PoolExhausted));
}

#[test]
fn dhcp_answers_a_port_only_on_its_own_port() {
    let mut s = DhcpServer::new(config());
    // VM2's MAC asked for on VM1's port: no offer, and not one message of VM2's budget
    // spent (the per-client burst is 20).
    for _ in 0..40 {
        assert_eq!(
            s.handle(&Msg::new(VM2, 1).bytes(), NOW, VM1_PORT),
            Err(Discard::ForeignClient)
        );
    }
    let offer = s.handle(&Msg::new(VM2, 1).bytes(), NOW, VM2_PORT);
    assert_eq!(offer.unwrap().unwrap().message_type, MessageType::Offer);
    // VM1 binds; another port can neither renew, release nor decline its address.
    let req = Msg::new(VM1, 3).requested(ip(198, 18, 1, 10));
    s.handle(&req.bytes(), NOW, VM1_PORT).unwrap().unwrap();
    let release = Msg::new(VM1, 7).ciaddr(ip(198, 18, 1, 10));
    let decline = Msg::new(VM1, 4).requested(ip(198, 18, 1, 10));
    let renew = Msg::new(VM1, 3).ciaddr(ip(198, 18, 1, 10));
    for m in [&release, &decline, &renew] {
        assert_eq!(
            s.handle(&m.bytes(), NOW, OTHER_PORT),
            Err(Discard::ForeignClient)
        );
    }
    let lease = s.leases().get(&VM1).expect("lease kept");
    assert_eq!(lease.state, LeaseState::Bound);
    assert_eq!(lease.port, Some(VM1_PORT));
    assert_eq!(s.stats().releases + s.stats().declines, 0);
    // A port that is not on this host is served by nobody here.
    let mut cfg = config();
    cfg.hosts[0].port = None;
    let mut s = DhcpServer::new(cfg);
    assert_eq!(
        s.handle(&Msg::new(VM1, 1).bytes(), NOW, VM1_PORT),
        Err(Discard::ForeignClient)
    );
}

#[test]
fn dhcp_dynamic_leases_are_capped_per_port_and_owned_by_it() {
    let mut cfg = config();
    cfg.subnets[0].serve_unknown = true;
    cfg.leases_per_port = 3;
    let mut s = DhcpServer::new(cfg);
    let stranger = |n: u8| [0x02, 0xaa, 0, 0, 0, n];
    for n in 0..3 {
        let r = s.handle(&Msg::new(stranger(n), 1).bytes(), NOW, OTHER_PORT);
        assert_eq!(r.unwrap().unwrap().message_type, MessageType::Offer);
    }
    // The fourth made-up MAC behind the same port gets nothing; one behind another port
    // still does, and a client that has its lease keeps being answered.
    assert_eq!(
        s.handle(&Msg::new(stranger(3), 1).bytes(), NOW, OTHER_PORT),
        Err(Discard::PortLeaseLimit)
    );
    let elsewhere = s.handle(&Msg::new(stranger(4), 1).bytes(), NOW, PortId(5));
    assert_eq!(elsewhere.unwrap().unwrap().message_type, MessageType::Offer);
    let again = s.handle(&Msg::new(stranger(0), 1).bytes(), NOW, OTHER_PORT);
    assert_eq!(again.unwrap().unwrap().message_type, MessageType::Offer);
    // A dynamic client is its port's: the same MAC on another port is refused.
    assert_eq!(
        s.handle(&Msg::new(stranger(0), 1).bytes(), NOW, PortId(5)),
        Err(Discard::ForeignClient)
    );
    // Once the offers lapse, the port may be served again.
    s.leases_mut().expire(NOW + 1000);
    let later = s.handle(&Msg::new(stranger(3), 1).bytes(), NOW + 1000, OTHER_PORT);
    assert_eq!(later.unwrap().unwrap().message_type, MessageType::Offer);
}
