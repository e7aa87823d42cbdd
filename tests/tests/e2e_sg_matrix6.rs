//! The IPv6 security-group semantic matrix (issue 15), the sibling of `e2e_sg_matrix.rs`:
//! the IPv6 groups of `configs/e2e-sg-matrix6.toml` enforced twice, by the Linux kernel
//! with the ip6tables and ipset rules Neutron's hybrid iptables firewall driver writes for
//! them (`SgState::to_hybrid_firewall6`: `NIPv6<group>` sets of family inet6, the driver's
//! fixed ICMPv6 and DHCPv6 rules, the router advertisement provider rule), and by
//! `polluxd`, then probed alike with whole frames (protocols, port ranges, ICMPv6 types
//! and codes, remote prefixes, remote groups, address groups, a stateless group, a port
//! without groups, DHCPv6, spoofing, router advertisements from the network's router and
//! from another host, replies, related ICMPv6 errors, an established TCP connection
//! carrying data). Every probe must get the verdict of the table below from both.
//! Addresses: 2001:db8::/32 and fe80::/10, inside the test's namespaces.
//!
//! Left out on purpose, where Neutron's two drivers disagree and Pollux follows the
//! openvswitch one: ICMPv6 *from* a VM without an egress rule (the iptables driver
//! returns every ICMPv6 type but RA out of the egress chain; the openvswitch driver and
//! Pollux only neighbour discovery, MLD and router solicitations), and MLD reports and
//! router solicitations *to* a VM (the iptables driver lets in only MLD queries, NS and
//! NA; the openvswitch driver and Pollux all of neighbour discovery and MLD but RA).
//! Rule deletion cutting connections is probed by the IPv4 matrix only.
//!
//! Needs root, `ip`, `bridge`, `ip6tables-restore`, `ipset` (apt: ipset, iptables);
//! fails, never skips.

use std::sync::OnceLock;

use pollux_tests::frames::transport_checksum6;
use pollux_tests::neutron_iptables::SgState;
use pollux_tests::sg_matrix::{self, Family, Host, Matrix, Probe, WarmUp};

const TOOLS: &[&str] = &["ip", "bridge", "ip6tables-restore", "ipset"];
const MATRIX: Matrix = Matrix {
    family: Family::V6,
    root: "scv",
    config: "e2e-sg-matrix6.toml",
};

/// `2001:db8:<net>::<host>`.
const fn v6(net: u16, host: u16) -> [u8; 16] {
    let n = net.to_be_bytes();
    let h = host.to_be_bytes();
    [
        0x20, 0x01, 0x0d, 0xb8, n[0], n[1], 0, 0, 0, 0, 0, 0, 0, 0, h[0], h[1],
    ]
}

/// The hosts' IPv6 addresses.
trait Address {
    fn ip(self) -> [u8; 16];
}

impl Address for Host {
    fn ip(self) -> [u8; 16] {
        match self {
            Host::M1 => v6(0x40, 0x11),
            Host::M2 => v6(0x40, 0x12),
            Host::M3 => v6(0x40, 0x13),
            Host::M4 => v6(0x40, 0x14),
            Host::M5 => v6(0x40, 0x15),
            Host::Ex => v6(0x40, 0x200),
        }
    }
}

/// Who sends or receives, and from or at which address.
#[derive(Debug, Clone, Copy)]
struct End {
    host: Host,
    ip: [u8; 16],
}

fn at(host: Host) -> End {
    End {
        host,
        ip: host.ip(),
    }
}

fn ex_as(ip: [u8; 16]) -> End {
    End { host: Host::Ex, ip }
}

/// `fe80::<last>`.
const fn link_local(last: u16) -> [u8; 16] {
    let l = last.to_be_bytes();
    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, l[0], l[1]]
}

const SYN: u8 = 0x02;
const PSH_ACK: u8 = 0x18;
const SYN_ACK: u8 = 0x12;
const ICMPV6: u8 = 58;

/// The probe table under construction: each probe gets its own source port or
/// identifier, so that every packet is unique.
#[derive(Default)]
struct Table {
    probes: Vec<Probe>,
    next_port: u16,
}

/// A TCP flow's numbers, to write its later packets.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    client: End,
    server: End,
    sport: u16,
    dport: u16,
    client_seq: u32,
    server_seq: u32,
}

impl Table {
    fn port(&mut self) -> u16 {
        self.next_port += 1;
        30000 + self.next_port
    }

    /// Adds a probe of `l4` (checksum field zero; filled here) as next header `next`;
    /// returns the IPv6 packet.
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        phase: u8,
        name: &str,
        from: End,
        to: End,
        next: u8,
        l4: &[u8],
        expect: bool,
    ) -> Vec<u8> {
        let mut l4 = l4.to_vec();
        let sum_at = match next {
            6 => Some(16),
            17 => Some(6),
            ICMPV6 => Some(2),
            _ => None,
        };
        if let Some(at) = sum_at {
            let sum = transport_checksum6(from.ip, to.ip, next, &l4);
            l4[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        // Neighbour discovery travels with hop limit 255.
        let hops = if next == ICMPV6 && (133..=137).contains(&l4[0]) {
            255
        } else {
            64
        };
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[next, hops]);
        ip.extend_from_slice(&from.ip);
        ip.extend_from_slice(&to.ip);
        ip.extend_from_slice(&l4);
        let mut frame = Vec::with_capacity(14 + ip.len());
        frame.extend_from_slice(&to.host.mac());
        frame.extend_from_slice(&from.host.mac());
        frame.extend_from_slice(&[0x86, 0xdd]);
        frame.extend_from_slice(&ip);
        self.probes.push(Probe {
            name: name.to_owned(),
            phase,
            from: from.host,
            to: to.host,
            frame,
            expect,
        });
        ip
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_segment(
        &mut self,
        phase: u8,
        name: &str,
        from: End,
        to: End,
        ports: (u16, u16),
        seq_ack: (u32, u32),
        flags: u8,
        data: &[u8],
        expect: bool,
    ) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&ports.0.to_be_bytes());
        t.extend_from_slice(&ports.1.to_be_bytes());
        t.extend_from_slice(&seq_ack.0.to_be_bytes());
        t.extend_from_slice(&seq_ack.1.to_be_bytes());
        t.extend_from_slice(&[0x50, flags]);
        t.extend_from_slice(&64240u16.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        t.extend_from_slice(data);
        self.add(phase, name, from, to, 6, &t, expect)
    }

    /// A SYN from `client` to `server`:`dport` (phase 1).
    fn syn(&mut self, name: &str, client: End, server: End, dport: u16, expect: bool) -> Tcp {
        let sport = self.port();
        let flow = Tcp {
            client,
            server,
            sport,
            dport,
            client_seq: 1_000_000 + u32::from(sport) * 7,
            server_seq: 2_000_000 + u32::from(sport) * 11,
        };
        self.tcp_segment(
            1,
            name,
            client,
            server,
            (sport, dport),
            (flow.client_seq, 0),
            SYN,
            &[],
            expect,
        );
        flow
    }

    /// The server's SYN-ACK (phase 2).
    fn syn_ack(&mut self, name: &str, f: Tcp, expect: bool) {
        self.tcp_segment(
            2,
            name,
            f.server,
            f.client,
            (f.dport, f.sport),
            (f.server_seq, f.client_seq + 1),
            SYN_ACK,
            &[],
            expect,
        );
    }

    /// The client's ACK with 4 bytes of data (phase 3), then the server's answer (phase 4).
    fn exchange(&mut self, name: &str, f: Tcp, expect: bool) {
        self.tcp_segment(
            3,
            &format!("{name}: client data"),
            f.client,
            f.server,
            (f.sport, f.dport),
            (f.client_seq + 1, f.server_seq + 1),
            PSH_ACK,
            b"GET ",
            expect,
        );
        self.tcp_segment(
            4,
            &format!("{name}: server data"),
            f.server,
            f.client,
            (f.dport, f.sport),
            (f.server_seq + 1, f.client_seq + 5),
            PSH_ACK,
            b"200 ",
            expect,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn udp(
        &mut self,
        phase: u8,
        name: &str,
        from: End,
        to: End,
        sport: u16,
        dport: u16,
        expect: bool,
    ) -> Vec<u8> {
        let data = b"sg-matrix6 probe";
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        self.add(phase, name, from, to, 17, &u, expect)
    }

    /// A first UDP datagram from a fresh port (phase 1); returns that port.
    fn udp_new(&mut self, name: &str, from: End, to: End, dport: u16, expect: bool) -> u16 {
        let sport = self.port();
        self.udp(1, name, from, to, sport, dport, expect);
        sport
    }

    /// An ICMPv6 message of `ty_code` with `body` after the checksum.
    #[allow(clippy::too_many_arguments)]
    fn icmp6(
        &mut self,
        phase: u8,
        name: &str,
        from: End,
        to: End,
        ty_code: (u8, u8),
        body: &[u8],
        expect: bool,
    ) -> Vec<u8> {
        let mut m = vec![ty_code.0, ty_code.1, 0, 0];
        m.extend_from_slice(body);
        self.add(phase, name, from, to, ICMPV6, &m, expect)
    }

    /// An echo request (type 128, `code`) with a fresh identifier, phase 1; returns it.
    fn echo(&mut self, name: &str, from: End, to: End, code: u8, expect: bool) -> u16 {
        let id = self.port();
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 1]);
        body.extend_from_slice(b"sg-matrix6 echo.");
        self.icmp6(1, name, from, to, (128, code), &body, expect);
        id
    }

    /// The echo reply to identifier `id`, phase 2.
    fn echo_reply(&mut self, name: &str, from: End, to: End, id: u16, expect: bool) {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 1]);
        body.extend_from_slice(b"sg-matrix6 echo.");
        self.icmp6(2, name, from, to, (129, 0), &body, expect);
    }

    /// A port unreachable (1/4) about `original` (an IPv6 packet), phase 2.
    fn port_unreachable(&mut self, name: &str, from: End, to: End, original: &[u8], expect: bool) {
        let mut body = vec![0u8; 4];
        body.extend_from_slice(original);
        self.icmp6(2, name, from, to, (1, 4), &body, expect);
    }

    /// A router advertisement (default router, 1800 s) from `from`, phase 1.
    fn router_advertisement(&mut self, name: &str, from: End, to: End, expect: bool) {
        let body = [64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        self.icmp6(1, name, from, to, (134, 0), &body, expect);
    }
}

/// The matrix, with the verdict Neutron's semantics give each probe.
fn table() -> Table {
    use Host::*;
    let mut t = Table::default();
    let admin = ex_as(v6(0xad, 5));
    let admin2 = ex_as(v6(0xad, 6));
    let not_admin = ex_as(v6(0xae, 0x77));
    let off_prefix = ex_as(v6(0x41, 9));

    // Protocols, port ranges and remote prefixes, into m1 (web6).
    let http = t.syn("m3->m1 tcp/80 (web6-http)", at(M3), at(M1), 80, true);
    let refused = t.syn("m3->m1 tcp/81: no rule", at(M3), at(M1), 81, false);
    t.syn("m3->m1 tcp/8000: range start", at(M3), at(M1), 8000, true);
    t.syn("m3->m1 tcp/8099: range end", at(M3), at(M1), 8099, true);
    t.syn(
        "m3->m1 tcp/8100: past the range",
        at(M3),
        at(M1),
        8100,
        false,
    );
    t.syn(
        "m3->m1 tcp/7999: before the range",
        at(M3),
        at(M1),
        7999,
        false,
    );
    t.syn(
        "ex->m1 tcp/8050 from the prefix",
        at(Ex),
        at(M1),
        8050,
        true,
    );
    t.syn(
        "ex(2001:db8:41::9)->m1 tcp/8050: outside the prefix",
        off_prefix,
        at(M1),
        8050,
        false,
    );
    // Remote group (the NIPv6app6 set) and address group.
    let sport_5000 = t.udp_new(
        "m2->m1 udp/5000: member of app6",
        at(M2),
        at(M1),
        5000,
        true,
    );
    t.udp_new("m2->m1 udp/5010: range end", at(M2), at(M1), 5010, true);
    t.udp_new(
        "m2->m1 udp/5011: past the range",
        at(M2),
        at(M1),
        5011,
        false,
    );
    t.udp_new("ex->m1 udp/5000: not a member", at(Ex), at(M1), 5000, false);
    t.syn(
        "m2->m1 tcp/22: m2 in the address group",
        at(M2),
        at(M1),
        22,
        true,
    );
    t.syn(
        "m3->m1 tcp/22: not in the address group",
        at(M3),
        at(M1),
        22,
        false,
    );
    t.syn(
        "ex(2001:db8:ad::5)->m1 tcp/22: address group",
        admin,
        at(M1),
        22,
        true,
    );
    t.syn(
        "ex(2001:db8:ae::77)->m1 tcp/22: outside the address group",
        not_admin,
        at(M1),
        22,
        false,
    );

    // ICMPv6 types and codes.
    let echo = t.echo("ex->m1 icmpv6 echo 128/0", at(Ex), at(M1), 0, true);
    t.echo(
        "ex->m1 icmpv6 128/1: type-only rule, any code",
        at(Ex),
        at(M1),
        1,
        true,
    );
    t.echo(
        "ex(2001:db8:ad::5)->m2 icmpv6 128/0: address group",
        admin,
        at(M2),
        0,
        true,
    );
    t.echo(
        "ex(2001:db8:ad::6)->m2 icmpv6 128/1: code mismatch",
        admin2,
        at(M2),
        1,
        false,
    );
    t.echo(
        "ex(2001:db8:ae::77)->m2 icmpv6 128/0: outside the address group",
        not_admin,
        at(M2),
        0,
        false,
    );
    let id = t.port();
    t.icmp6(
        1,
        "ex->m1 icmpv6 node information query 139: no rule",
        at(Ex),
        at(M1),
        (139, 0),
        &[0, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 0, 0, 0, 0, 0],
        false,
    );
    let mut ns = vec![0u8; 4];
    ns.extend_from_slice(&M1.ip());
    t.icmp6(
        1,
        "ex->m1 neighbour solicitation: implicit",
        at(Ex),
        at(M1),
        (135, 0),
        &ns,
        true,
    );
    // Router advertisements: from the subnet's link-local gateway only.
    t.router_advertisement(
        "ex(fe80::1)->m1 RA from the network's router",
        ex_as(link_local(1)),
        at(M1),
        true,
    );
    t.router_advertisement(
        "ex(fe80::bad)->m1 RA from another host: no rule",
        ex_as(link_local(0xbad)),
        at(M1),
        false,
    );

    // Directions: egress rules of the sender, ingress rules of the receiver.
    t.syn(
        "m1->m3 tcp/80: web6 has no egress",
        at(M1),
        at(M3),
        80,
        false,
    );
    t.udp_new(
        "m3->m2 udp/9999: plain6 allows no udp out",
        at(M3),
        at(M2),
        9999,
        false,
    );
    t.syn(
        "m3->m2 tcp/443: app6 allows only tcp/22 in",
        at(M3),
        at(M2),
        443,
        false,
    );
    t.syn("m3->m2 tcp/22: m3 not in app6", at(M3), at(M2), 22, false);
    let m2_udp = t.udp_new(
        "m2->ex udp/9000: app6 egress any",
        at(M2),
        at(Ex),
        9000,
        true,
    );
    t.syn(
        "m2->m3 tcp/22: only udp/53 into m3",
        at(M2),
        at(M3),
        22,
        false,
    );
    t.udp_new(
        "ex->m3 udp/53: second group (union)",
        at(Ex),
        at(M3),
        53,
        true,
    );
    t.udp_new(
        "ex->m3 udp/54: no rule in either group",
        at(Ex),
        at(M3),
        54,
        false,
    );

    // A port with port security and no group.
    t.syn(
        "m5->ex tcp/80: no group, no egress",
        at(M5),
        at(Ex),
        80,
        false,
    );
    t.echo(
        "ex->m5 icmpv6 echo: no group, no ingress",
        at(Ex),
        at(M5),
        0,
        false,
    );

    // DHCPv6 and spoofing.
    t.udp(
        1,
        "m3->ex udp 546->547 (DHCPv6 client)",
        at(M3),
        at(Ex),
        546,
        547,
        true,
    );
    t.udp(
        1,
        "m3->ex udp 547->546: DHCPv6 server from a VM",
        at(M3),
        at(Ex),
        547,
        546,
        false,
    );
    t.syn(
        "m3 from 2001:db8:40::99 (not its address)->ex tcp/80",
        End {
            host: M3,
            ip: v6(0x40, 0x99),
        },
        at(Ex),
        80,
        false,
    );

    // Stateless group sl6 on m4: each direction needs its rule.
    t.udp(
        1,
        "ex->m4 udp 40100->6000 (stateless ingress rule)",
        at(Ex),
        at(M4),
        40100,
        6000,
        true,
    );
    t.udp_new("ex->m4 udp/6001: no rule", at(Ex), at(M4), 6001, false);
    t.udp(
        1,
        "m4->ex udp 33333->40500 (stateless egress rule)",
        at(M4),
        at(Ex),
        33333,
        40500,
        true,
    );
    t.udp_new(
        "m4->ex udp/39999: no egress rule",
        at(M4),
        at(Ex),
        39999,
        false,
    );

    // Phase 2: replies, related errors and unsolicited reverse traffic.
    t.syn_ack("m1->m3 SYN-ACK of tcp/80: established", http, true);
    t.syn_ack("m1->m3 SYN-ACK of refused tcp/81", refused, false);
    t.udp(
        2,
        "m1->m2 udp reply 5000->sport: established",
        at(M1),
        at(M2),
        5000,
        sport_5000,
        true,
    );
    let quoted = |t: &Table, prefix: &str| {
        t.probes
            .iter()
            .find(|p| p.name.starts_with(prefix))
            .unwrap()
            .packet()
            .to_vec()
    };
    let udp_5000 = quoted(&t, "m2->m1 udp/5000");
    t.port_unreachable(
        "m1->m2 icmpv6 1/4 about udp/5000: related",
        at(M1),
        at(M2),
        &udp_5000,
        true,
    );
    // An error about a datagram never sent (the kernel would relate one about m2's refused
    // udp/5011 to m2's own zone, where m2's egress admitted it).
    let never_sent = Table::default().udp(1, "never sent", at(M2), at(Ex), 7, 7, false);
    t.port_unreachable(
        "ex->m2 icmpv6 1/4 about no connection",
        at(Ex),
        at(M2),
        &never_sent,
        false,
    );
    t.echo_reply("m1->ex echo reply: established", at(M1), at(Ex), echo, true);
    t.udp(
        2,
        "ex->m2 udp reply 9000->sport: established",
        at(Ex),
        at(M2),
        9000,
        m2_udp,
        true,
    );
    t.udp(
        2,
        "ex->m2 udp 9000->other port: unsolicited",
        at(Ex),
        at(M2),
        9000,
        m2_udp + 1000,
        false,
    );
    t.udp(
        2,
        "m4->ex udp reply 6000->40100 (egress rule)",
        at(M4),
        at(Ex),
        6000,
        40100,
        true,
    );
    t.udp(
        2,
        "m4->ex udp reply 6000->31999: stateless, no egress rule",
        at(M4),
        at(Ex),
        6000,
        31999,
        false,
    );
    t.udp(
        2,
        "ex->m4 udp reply 40500->33333: stateless, no ingress rule",
        at(Ex),
        at(M4),
        40500,
        33333,
        false,
    );

    // Phases 3 and 4: the established TCP connection carries data both ways.
    t.exchange("m3<->m1 tcp/80", http, true);
    t
}

/// m2 (app: egress any) to ex (unfiltered): up when this datagram passes.
fn warm_up_datagram(n: u16) -> (Vec<u8>, Vec<u8>) {
    let mut t = Table::default();
    let ip = t.udp(1, "warm-up", at(Host::M2), at(Host::Ex), 29000 + n, 9, true);
    (t.probes.pop().unwrap().frame, ip)
}

const WARM_UP: WarmUp = WarmUp {
    from: Host::M2,
    to: Host::Ex,
    datagram: warm_up_datagram,
};

/// The kernel's verdicts, measured once per test binary.
fn kernel_verdicts() -> &'static [bool] {
    static VERDICTS: OnceLock<Vec<bool>> = OnceLock::new();
    VERDICTS.get_or_init(|| {
        let probes = table().probes;
        let fw = SgState::from_toml(&MATRIX.config_text())
            .and_then(|s| s.to_hybrid_firewall6())
            .unwrap_or_else(|e| panic!("translating {}: {e}", MATRIX.config));
        let topo = MATRIX.kernel_lab(&fw);
        MATRIX.run_probes(&topo, &probes, &WARM_UP, &mut |_| {})
    })
}

#[test]
#[ignore = "needs root: network namespaces, ip6tables and ipset (run with --include-ignored as root)"]
fn the_kernel_with_neutrons_rules_gives_the_expected_verdicts() {
    let _serial = MATRIX.setup(TOOLS);
    sg_matrix::assert_kernel_as_expected(&table().probes, kernel_verdicts());
}

/// The same probes through polluxd: every verdict is the kernel's and the table's.
#[test]
#[ignore = "needs root: network namespaces, XDP (run with --include-ignored as root)"]
fn pollux_gives_the_kernels_verdicts() {
    let _serial = MATRIX.setup(TOOLS);
    let probes = table().probes;
    let kernel = kernel_verdicts();
    let (topo, polluxd) = MATRIX.pollux_lab();
    let pollux = MATRIX.run_probes(&topo, &probes, &WARM_UP, &mut |_| {});
    let stopped = polluxd.stop();
    sg_matrix::assert_pollux_as_kernel(
        &probes,
        kernel,
        &pollux,
        stopped.map(|(status, stderr)| format!("{status}: {stderr}")),
    );
}
