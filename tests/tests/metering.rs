//! L3 metering on `mem` ports: what each label counts at the router's external gateway,
//! to the byte, as Neutron's iptables metering driver counts it in the qrouter's filter
//! FORWARD chain: egress before SNAT (the VM's address), ingress after DNAT (a floating
//! IP's or a SNAT reply's destination is the VM's), IPv4 total lengths, excluded rules
//! first, traffic between tenant networks never.

use pollux_dataplane::conntrack::ConnConfig;
use pollux_dataplane::metering::{LabelMeterSpec, MeterDirection, MeterMatch};
use pollux_dataplane::snapshot::SnapshotBuilder;
use pollux_tests::frames::{ipv4, udp, vid_of};
use pollux_tests::harness::MemSwitch;
use pollux_tests::router_lab::*;

/// nat.rs's topology, the router counting `metering`.
fn config_metered(metering: Vec<LabelMeterSpec>) -> SnapshotBuilder {
    topology(1500, metering)
}

fn prefix(ip: [u8; 4], len: u8) -> Option<(u32, u8)> {
    Some((u32::from_be_bytes(ip), len))
}

const EGRESS: MeterDirection = MeterDirection::Egress;
const INGRESS: MeterDirection = MeterDirection::Ingress;

/// Slot 0: everything of subnet A both ways, but VM3 (excluded). Slot 1: ingress to VM2's
/// fixed IP (its floating IP is translated before the count). Slot 2: ingress to the
/// floating IP itself, which the count never sees. Slot 3: egress from A, counted twice by
/// two rules. Slot 4: a label with only an excluded rule: nothing.
fn labels() -> Vec<LabelMeterSpec> {
    let a = prefix([198, 18, 1, 0], 24);
    vec![
        LabelMeterSpec {
            slot: 0,
            rules: vec![
                (EGRESS, MeterMatch::new(a, None), false),
                (INGRESS, MeterMatch::new(None, a), false),
                (EGRESS, MeterMatch::new(prefix(VM3_IP, 32), None), true),
                (INGRESS, MeterMatch::new(None, prefix(VM3_IP, 32)), true),
            ],
        },
        LabelMeterSpec {
            slot: 1,
            rules: vec![(INGRESS, MeterMatch::new(None, prefix(VM2_IP, 32)), false)],
        },
        LabelMeterSpec {
            slot: 2,
            rules: vec![(INGRESS, MeterMatch::new(None, prefix(VM2_FIP, 32)), false)],
        },
        LabelMeterSpec {
            slot: 3,
            rules: vec![
                (EGRESS, MeterMatch::new(a, None), false),
                (EGRESS, MeterMatch::new(None, prefix(INTERNET, 32)), false),
            ],
        },
        LabelMeterSpec {
            slot: 4,
            rules: vec![(EGRESS, MeterMatch::new(None, None), true)],
        },
    ]
}

/// (ingress packets, ingress bytes, egress packets, egress bytes) of `slot`.
fn counts(sw: &MemSwitch, slot: usize) -> (u64, u64, u64, u64) {
    let c = sw.counters();
    let m = &c.meters[slot];
    (
        m.packets[0].get(),
        m.bytes[0].get(),
        m.packets[1].get(),
        m.bytes[1].get(),
    )
}

fn udp_from(mac: [u8; 6], src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, n: usize) -> Vec<u8> {
    let data = vec![0x5a; n];
    ipv4(
        ROUTER_MAC,
        mac,
        None,
        src,
        dst,
        64,
        17,
        &udp(src, dst, sport, dport, &data),
    )
}

fn from_internet(dst: [u8; 4], sport: u16, dport: u16, n: usize) -> Vec<u8> {
    let data = vec![0xa5; n];
    let mut f = ipv4(
        ROUTER_MAC,
        UPSTREAM_MAC,
        None,
        INTERNET,
        dst,
        60,
        17,
        &udp(INTERNET, dst, sport, dport, &data),
    );
    tag(&mut f);
    f
}

/// The one frame `port` emitted.
fn one(out: &std::collections::BTreeMap<u16, Vec<Vec<u8>>>, port: u16) -> Vec<u8> {
    assert_eq!(
        out.keys().copied().collect::<Vec<_>>(),
        vec![port],
        "{out:?}"
    );
    assert_eq!(out[&port].len(), 1, "{out:?}");
    let f = out[&port][0].clone();
    if vid_of(&f).is_some() {
        [&f[..12], &f[16..]].concat()
    } else {
        f
    }
}

#[test]
fn labels_count_the_ip_bytes_of_a_traffic_mix_as_iptables_does() {
    let mut sw = switch_of(&config_metered(labels()), ConnConfig::with_capacity(1024));
    // SNAT egress from VM1: 3 datagrams of 100, 200 and 1000 bytes of payload (IP
    // lengths 128, 228, 1028), counted with VM1's address before translation.
    let mut sport = 0;
    for n in [100, 200, 1000] {
        let f = one(
            &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, n)),
            UPLINK,
        );
        assert_eq!(&f[26..30], &ROUTER_EXT, "translated after the count");
        sport = u16::from_be_bytes([f[34], f[35]]);
    }
    assert_eq!(counts(&sw, 0), (0, 0, 3, 128 + 228 + 1028));
    // Two counting rules of one label match: counted twice, as the label chain would.
    assert_eq!(counts(&sw, 3), (0, 0, 6, 2 * (128 + 228 + 1028)));
    // Replies to the gateway address: de-SNATed to VM1 before the ingress count.
    for n in [10, 20] {
        one(
            &sw.exchange(UPLINK, &from_internet(ROUTER_EXT, 53, sport, n)),
            VM1,
        );
    }
    assert_eq!(counts(&sw, 0), (2, 38 + 48, 3, 128 + 228 + 1028));
    // VM3 is excluded from label 0 (both ways), counted by label 3 (no exclusion).
    one(
        &sw.exchange(VM3, &udp_from(VM3_MAC, VM3_IP, 40001, INTERNET, 53, 72)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0).2, 3);
    assert_eq!(counts(&sw, 3), (0, 0, 8, 2 * (128 + 228 + 1028 + 100)));
    // Floating IP ingress: counted against the fixed address, never the floating one.
    for n in [0, 500] {
        one(
            &sw.exchange(UPLINK, &from_internet(VM2_FIP, 1234, 7, n)),
            VM2,
        );
    }
    assert_eq!(counts(&sw, 1), (2, 28 + 528, 0, 0));
    assert_eq!(counts(&sw, 2), (0, 0, 0, 0));
    // Routed between tenant networks: not through the gateway, not counted anywhere.
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40002, VM2_IP, 9, 300)),
        VM2,
    );
    assert_eq!(counts(&sw, 0), (2, 86, 3, 1384));
    assert_eq!(counts(&sw, 1), (2, 556, 0, 0));
    assert_eq!(counts(&sw, 4), (0, 0, 0, 0));
    sw.assert_conserved();
}

#[test]
fn counts_survive_a_snapshot_swap_and_a_router_without_labels_counts_nothing() {
    let mut sw = switch_of(&config_metered(labels()), ConnConfig::with_capacity(1024));
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, 100)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0), (0, 0, 1, 128));
    // A new generation with the same slots: the worker's counters carry on.
    sw.apply(&config_metered(labels()));
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, 100)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0), (0, 0, 2, 256));
    // Without labels the router has no metering at all.
    sw.apply(&config_metered(Vec::new()));
    one(
        &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40000, INTERNET, 53, 100)),
        UPLINK,
    );
    assert_eq!(counts(&sw, 0), (0, 0, 2, 256));
    let snap = config_metered(Vec::new()).build(1).unwrap();
    assert!(snap.routing().routers()[0].metering.is_none());
    sw.assert_conserved();
}

/// One datagram of the comparison's traffic mix: sender, destination, UDP payload bytes.
#[derive(Clone, Copy)]
enum Send {
    /// From a VM on subnet A (its address) to the internet host, port 53.
    Out([u8; 4], u16, usize),
    /// From the internet host's port 53 back to VM1's SNAT session.
    Reply(usize),
    /// From the internet host to VM2's floating IP, port 7.
    ToFloating(usize),
    /// VM1 to VM2, port 9: routed between tenant networks.
    EastWest(usize),
}

const MIX: [Send; 9] = [
    Send::Out(VM1_IP, 40000, 100),
    Send::Out(VM1_IP, 40000, 200),
    Send::Out(VM1_IP, 40000, 1000),
    Send::Reply(10),
    Send::Reply(20),
    Send::Out(VM3_IP, 40001, 72),
    Send::ToFloating(0),
    Send::ToFloating(500),
    Send::EastWest(300),
];

/// Each label's (packets, bytes) in Pollux after [`MIX`], both directions summed as the
/// driver's label chain sums them.
fn pollux_counts() -> Vec<(u64, u64)> {
    let mut sw = switch_of(&config_metered(labels()), ConnConfig::with_capacity(1024));
    let mut sport = 0;
    for send in MIX {
        match send {
            Send::Out(ip, port, n) => {
                let mac = if ip == VM1_IP { VM1_MAC } else { VM3_MAC };
                let vm = if ip == VM1_IP { VM1 } else { VM3 };
                let f = one(
                    &sw.exchange(vm, &udp_from(mac, ip, port, INTERNET, 53, n)),
                    UPLINK,
                );
                if ip == VM1_IP {
                    sport = u16::from_be_bytes([f[34], f[35]]);
                }
            }
            Send::Reply(n) => {
                one(
                    &sw.exchange(UPLINK, &from_internet(ROUTER_EXT, 53, sport, n)),
                    VM1,
                );
            }
            Send::ToFloating(n) => {
                one(
                    &sw.exchange(UPLINK, &from_internet(VM2_FIP, 1234, 7, n)),
                    VM2,
                );
            }
            Send::EastWest(n) => {
                one(
                    &sw.exchange(VM1, &udp_from(VM1_MAC, VM1_IP, 40002, VM2_IP, 9, n)),
                    VM2,
                );
            }
        }
    }
    sw.assert_conserved();
    (0..labels().len())
        .map(|slot| {
            let (ip, ib, ep, eb) = counts(&sw, slot);
            (ip + ep, ib + eb)
        })
        .collect()
}

fn dotted(ip: u32) -> String {
    std::net::Ipv4Addr::from(ip).to_string()
}

/// The label chains Neutron's iptables metering driver writes for `labels` in a router
/// namespace whose gateway device is `qg`: `iptables` argument lists, in order.
fn neutron_meter_rules(labels: &[LabelMeterSpec], qg: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let mut out = vec![
        s(&["-N", "neutron-meter-FORWARD"]),
        s(&["-A", "FORWARD", "-j", "neutron-meter-FORWARD"]),
    ];
    for (k, label) in labels.iter().enumerate() {
        let (l, r) = (
            format!("neutron-meter-l-{k}"),
            format!("neutron-meter-r-{k}"),
        );
        out.push(s(&["-N", &l]));
        out.push(s(&["-N", &r]));
        out.push(s(&["-A", "neutron-meter-FORWARD", "-j", &r]));
        out.push(s(&["-A", &l]));
        for &(dir, m, excluded) in &label.rules {
            // `_add_rule_to_chain`: excluded rules at the top, RETURN.
            let mut rule = s(&[if excluded { "-I" } else { "-A" }, &r]);
            if m.src_mask != 0 {
                let len = m.src_mask.count_ones().to_string();
                rule.extend(s(&["-s", &format!("{}/{len}", dotted(m.src))]));
            }
            if m.dst_mask != 0 {
                let len = m.dst_mask.count_ones().to_string();
                rule.extend(s(&["-d", &format!("{}/{len}", dotted(m.dst))]));
            }
            let device = if dir == EGRESS { "-o" } else { "-i" };
            rule.extend(s(&[device, qg, "-j"]));
            rule.push(if excluded { "RETURN".into() } else { l.clone() });
            out.push(rule);
        }
    }
    out
}

/// The same labels and traffic mix through a kernel router namespace built as Neutron's
/// L3 agent builds a qrouter (forwarding, SNAT to the gateway address, a floating IP as
/// DNAT/SNAT with the address on the `qg` device) with the metering chains written as its
/// metering driver writes them: each label's iptables counters equal Pollux's counts.
#[test]
#[ignore = "needs root: network namespaces, iptables"]
fn counts_equal_the_neutron_iptables_driver_s_counters_in_a_kernel_router() {
    use pollux_tests::netns::{self, Prefix, Topology};
    use std::net::{SocketAddrV4, UdpSocket};
    use std::time::Duration;
    netns::require_root();
    netns::require_tools(&["ip", "iptables"]);
    let _guard = netns::exclusive(&["iptables"]);
    let expected = pollux_counts();

    let mut t = Topology::with_prefix(Prefix::next_under("pmex").unwrap());
    for role in ["vma", "vmb", "qr", "inet"] {
        t.add_ns(role).unwrap();
    }
    t.veth("vma", "eth0", "qr", "qr-a").unwrap();
    t.veth("vmb", "eth0", "qr", "qr-b").unwrap();
    t.veth("inet", "eth0", "qr", "qg-me").unwrap();
    let dot = |ip: [u8; 4]| std::net::Ipv4Addr::from(ip).to_string();
    for (ns, dev, cidr) in [
        ("vma", "eth0", format!("{}/24", dot(VM1_IP))),
        ("vma", "eth0", format!("{}/24", dot(VM3_IP))),
        ("vmb", "eth0", format!("{}/24", dot(VM2_IP))),
        ("qr", "qr-a", format!("{}/24", dot(GW_A))),
        ("qr", "qr-b", format!("{}/24", dot(GW_B))),
        ("qr", "qg-me", format!("{}/24", dot(ROUTER_EXT))),
        ("qr", "qg-me", format!("{}/32", dot(VM2_FIP))),
        ("inet", "eth0", format!("{}/24", dot(INTERNET))),
    ] {
        t.addr(ns, dev, &cidr).unwrap();
    }
    t.route("vma", "default", &dot(GW_A)).unwrap();
    t.route("vmb", "default", &dot(GW_B)).unwrap();
    let qr = t.ns("qr").unwrap();
    qr.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let iptables = |args: &[&str]| {
        qr.exec_ok("iptables", args)
            .unwrap_or_else(|e| panic!("iptables {args:?}: {e}"))
    };
    // The L3 agent's floating IP and SNAT rules.
    let (fip, vm2, ext) = (dot(VM2_FIP), dot(VM2_IP), dot(ROUTER_EXT));
    iptables(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-d",
        &format!("{fip}/32"),
        "-j",
        "DNAT",
        "--to-destination",
        &vm2,
    ]);
    iptables(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        &format!("{vm2}/32"),
        "-j",
        "SNAT",
        "--to-source",
        &fip,
    ]);
    iptables(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        "qg-me",
        "-j",
        "SNAT",
        "--to-source",
        &ext,
    ]);
    for rule in neutron_meter_rules(&labels(), "qg-me") {
        let args: Vec<&str> = rule.iter().map(String::as_str).collect();
        iptables(&args);
    }

    let bind = |role: &str, ip: [u8; 4], port: u16| -> UdpSocket {
        t.ns(role)
            .unwrap()
            .run_in(move || {
                let s = UdpSocket::bind(SocketAddrV4::new(ip.into(), port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s
            })
            .unwrap()
    };
    let vm1 = bind("vma", VM1_IP, 40000);
    let vm3 = bind("vma", VM3_IP, 40001);
    let vm2_7 = bind("vmb", VM2_IP, 7);
    let vm2_9 = bind("vmb", VM2_IP, 9);
    let inet = bind("inet", INTERNET, 53);
    let inet_other = bind("inet", INTERNET, 1234);
    let internet = SocketAddrV4::new(INTERNET.into(), 53);
    let mut buf = [0u8; 2048];
    let mut snat_source = None;
    for send in MIX {
        match send {
            Send::Out(ip, _, n) => {
                let s = if ip == VM1_IP { &vm1 } else { &vm3 };
                s.send_to(&vec![0x5a; n], internet).unwrap();
                let (got, from) = inet.recv_from(&mut buf).unwrap();
                assert_eq!(got, n);
                if ip == VM1_IP {
                    snat_source = Some(from);
                }
            }
            Send::Reply(n) => {
                inet.send_to(&vec![0xa5; n], snat_source.unwrap()).unwrap();
                assert_eq!(vm1.recv_from(&mut buf).unwrap().0, n);
            }
            Send::ToFloating(n) => {
                let to = SocketAddrV4::new(VM2_FIP.into(), 7);
                inet_other.send_to(&vec![0xa5; n], to).unwrap();
                assert_eq!(vm2_7.recv_from(&mut buf).unwrap().0, n);
            }
            Send::EastWest(n) => {
                vm1.send_to(&vec![0x5a; n], SocketAddrV4::new(VM2_IP.into(), 9))
                    .unwrap();
                assert_eq!(vm2_9.recv_from(&mut buf).unwrap().0, n);
            }
        }
    }
    let kernel: Vec<(u64, u64)> = (0..labels().len())
        .map(|k| {
            let listing = iptables(&["-L", &format!("neutron-meter-l-{k}"), "-v", "-x", "-n"]);
            // Two header lines, then the one empty rule: "pkts bytes target ...".
            let line = listing
                .lines()
                .nth(2)
                .unwrap_or_else(|| panic!("{listing}"));
            let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().unwrap());
            (fields.next().unwrap(), fields.next().unwrap())
        })
        .collect();
    assert_eq!(
        kernel, expected,
        "iptables (left) and Pollux (right), per label"
    );
    // The mix reaches every kind of rule: not a comparison of zeros.
    assert_eq!(expected[0], (5, 128 + 228 + 1028 + 38 + 48));
}
