//! Tests of the network-namespace test library (`pollux_tests::netns`). They need root
//! and `ip`, `ping`, `iperf3` and `tcpdump`; they fail (never skip) with a message naming
//! what is missing.
//!
//! Addresses: 198.18.0.0/15 and 203.0.113.0/24 only, inside namespaces the tests create.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use pollux_tests::netns::{
    self, iperf3_client, iperf3_server, list_netns, ping, CaptureFormat, Error, Netns, Prefix,
    Topology, VethOptions, PREFIX_ROOT,
};

/// Root, tools, and a sweep of namespaces left by earlier, dead runs.
fn setup(tools: &[&str]) {
    netns::require_root();
    netns::require_tools(tools);
    netns::remove_stale_once();
}

/// Namespaces `a` and `b` joined by `a:veth0` (198.18.1.1/24) ↔ `b:veth0` (198.18.1.2/24).
fn pair() -> Topology {
    let mut t = Topology::new();
    t.add_ns("a").unwrap();
    t.add_ns("b").unwrap();
    t.veth_with(
        "a",
        "veth0",
        "b",
        "veth0",
        &VethOptions {
            mtu: Some(1400),
            ..VethOptions::default()
        },
    )
    .unwrap();
    t.addr("a", "veth0", "198.18.1.1/24").unwrap();
    t.addr("b", "veth0", "198.18.1.2/24").unwrap();
    t
}

fn leftovers(prefix: &Prefix) -> Vec<String> {
    netns::namespaces_with_prefix(prefix).unwrap()
}

const T: Duration = Duration::from_secs(5);

#[test]
fn prefix_names_follow_the_scheme() {
    let p = Prefix::next();
    let q = Prefix::next();
    assert_ne!(p, q, "two topologies in one process get different prefixes");
    let name = p.ns_name("vm1").unwrap();
    assert_eq!(
        netns::parse_ns_name(PREFIX_ROOT, &name),
        Some(std::process::id()),
        "the creating PID is recoverable from {name}"
    );
    assert!(p.as_str().len() <= 13, "{p} is short");
    assert!(p.ns_name("Bad/role").is_err());
    assert!(netns::parse_ns_name(PREFIX_ROOT, "plxzzt0-a").is_none());
    assert!(netns::parse_ns_name(PREFIX_ROOT, "plx1f-a").is_none());
    assert!(p.ifname("ab").unwrap().len() <= 15);
    assert!(p.ifname("a-very-long-suffix").is_err());
}

#[test]
fn require_tools_names_what_is_missing() {
    let err = catch_unwind(|| netns::require_tools(&["ping", "no-such-tool-xyz"])).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("no-such-tool-xyz"), "{msg}");
    assert!(
        !msg.contains("ping,"),
        "installed tools are not named: {msg}"
    );
    assert!(msg.contains("apt-get install"), "{msg}");
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn hygiene_rejects_addresses_outside_the_test_ranges() {
    setup(&[]);
    let mut t = Topology::new();
    t.add_ns("a").unwrap();
    for bad in ["10.0.0.1/24", "198.17.0.1/24", "198.18.0.1/8", "8.8.8.8/32"] {
        assert!(
            matches!(t.addr("a", "lo", bad), Err(Error::Invalid(_))),
            "{bad} must be rejected"
        );
    }
    t.addr("a", "lo", "203.0.113.5/32").unwrap();
    let ns = t.ns("a").unwrap();
    assert!(matches!(ping(ns, "1.1.1.1", 1, T), Err(Error::Invalid(_))));
    assert!(matches!(
        t.veth("a", "name-longer-than-15", "a", "x"),
        Err(Error::Invalid(_))
    ));
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn veth_pair_pings_both_ways_and_leaves_root_namespace_alone() {
    setup(&["ping"]);
    let t = pair();
    let (a, b) = (t.ns("a").unwrap(), t.ns("b").unwrap());

    let ab = ping(a, "198.18.1.2", 3, T).unwrap();
    assert_eq!(ab.transmitted, 3, "{ab:?}");
    assert_eq!(ab.received, ab.transmitted, "a → b: {ab:?}");
    let ba = ping(b, "198.18.1.1", 3, T).unwrap();
    assert_eq!(ba.transmitted, 3, "{ba:?}");
    assert_eq!(ba.received, ba.transmitted, "b → a: {ba:?}");

    // The veth ends exist only in their namespaces, with the requested MTU.
    assert_eq!(
        netns::if_index("veth0"),
        0,
        "no veth0 in the root namespace"
    );
    let inside = a.run_in(|| netns::if_index("veth0")).unwrap();
    assert_ne!(inside, 0, "veth0 is visible from a thread that entered a");
    let mtu = a.exec_ok("cat", &["/sys/class/net/veth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1400");

    // run_in: sockets opened by the closure live in the namespace.
    let bound = a
        .run_in(|| std::net::UdpSocket::bind("198.18.1.1:0").is_ok())
        .unwrap();
    assert!(bound, "198.18.1.1 is local inside a");
    assert!(
        std::net::UdpSocket::bind("198.18.1.1:0").is_err(),
        "198.18.1.1 is not local in the root namespace"
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn link_down_breaks_ping_and_link_up_restores_it() {
    setup(&["ping"]);
    let t = pair();
    let a = t.ns("a").unwrap();
    assert!(ping(a, "198.18.1.2", 2, T).unwrap().all_received());

    t.link_down("b", "veth0").unwrap();
    let down = ping(a, "198.18.1.2", 2, Duration::from_secs(2));
    assert!(
        !matches!(down, Ok(r) if r.received > 0),
        "no reply while b's link is down: {down:?}"
    );
    // Our own side down: no route at all; the error carries ping's message.
    t.link_down("a", "veth0").unwrap();
    let err = ping(a, "198.18.1.2", 1, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("unreachable"), "{err}");

    t.link_up("a", "veth0").unwrap();
    t.link_up("b", "veth0").unwrap();
    let up = ping(a, "198.18.1.2", 3, T).unwrap();
    assert!(up.all_received(), "after link_up: {up:?}");
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn commands_fail_with_stderr_in_the_error() {
    setup(&[]);
    let t = pair();
    let err = t.link_up("a", "nosuchif").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Failed { .. }), "{msg}");
    assert!(msg.contains("nosuchif"), "{msg}");
    assert!(msg.contains("ip -n"), "the command is named: {msg}");
    // Duplicate address → ip's own complaint.
    let err = t.addr("a", "veth0", "198.18.1.1/24").unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    // A command that runs too long is killed at its bound.
    let a = t.ns("a").unwrap();
    let err = a
        .exec_timeout("sleep", &["30"], Duration::from_millis(200))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn mac_route_and_sysctl_helpers() {
    setup(&["ping"]);
    let mut t = pair();
    t.set_mac("a", "veth0", "02:00:00:00:00:0a").unwrap();
    assert_eq!(t.mac("a", "veth0").unwrap(), "02:00:00:00:00:0a");

    // b routes to a second network behind a (203.0.113.0/24 on a's loopback).
    t.addr("a", "lo", "203.0.113.1/32").unwrap();
    t.route("b", "203.0.113.0/24", "198.18.1.1").unwrap();
    let r = ping(t.ns("b").unwrap(), "203.0.113.1", 2, T).unwrap();
    assert!(r.all_received(), "{r:?}");

    // sysctl changes the namespace's value and leaves the root namespace's alone.
    let a = t.ns("a").unwrap();
    let key = "/proc/sys/net/ipv4/conf/all/arp_ignore";
    let root_before = std::fs::read_to_string(key).unwrap();
    let want = if root_before.trim() == "2" { "1" } else { "2" };
    a.sysctl("net.ipv4.conf.all.arp_ignore", want).unwrap();
    assert_eq!(a.sysctl_get("net.ipv4.conf.all.arp_ignore").unwrap(), want);
    let seen = a.exec_ok("cat", &[key]).unwrap();
    assert_eq!(seen.trim(), want, "ip netns exec sees the new value");
    assert_eq!(std::fs::read_to_string(key).unwrap(), root_before);
    assert!(a.sysctl("kernel.hostname", "x").is_err(), "only net.* keys");

    // Spawned processes belong to the topology and die with it.
    let id = t.spawn("b", "sleep", &["60"]).unwrap();
    let pid = t.proc_mut(id).unwrap().pid();
    assert!(netns::pid_alive(pid));
    let prefix = t.prefix().clone();
    drop(t);
    // Reaped, so the PID is gone (a reuse within this test is vanishingly unlikely).
    assert!(!netns::pid_alive(pid), "spawned sleep {pid} was killed");
    assert!(leftovers(&prefix).is_empty());
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn iperf3_between_namespaces_reports_throughput() {
    setup(&["iperf3"]);
    let t = pair();
    let server = iperf3_server(t.ns("b").unwrap(), "198.18.1.2", 5201).unwrap();
    let r = iperf3_client(t.ns("a").unwrap(), server.addr(), server.port(), 2).unwrap();
    assert!(r.sent_bps > 0.0, "{r:?}");
    assert!(r.received_bps > 0.0, "{r:?}");
    assert!(r.received_bytes > 0, "{r:?}");
    assert!(r.sent_bytes >= r.received_bytes, "{r:?}");
    assert!(
        iperf3_client(t.ns("a").unwrap(), "198.18.1.2", 5201, 11).is_err(),
        "-t is bounded"
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn tcpdump_sees_the_icmp_frames() {
    setup(&["ping", "tcpdump"]);
    let t = pair();
    let (a, b) = (t.ns("a").unwrap(), t.ns("b").unwrap());

    // Text: 2 requests + 2 replies, with Ethernet headers (-e).
    let cap = netns::tcpdump(b, "veth0", 4, &["icmp"], CaptureFormat::Text).unwrap();
    assert!(ping(a, "198.18.1.2", 2, T).unwrap().all_received());
    let seen = cap.finish(T).unwrap();
    assert_eq!(seen.lines.len(), 4, "{:#?}", seen.lines);
    assert!(
        seen.lines
            .iter()
            .filter(|l| l.contains("ICMP echo request"))
            .count()
            == 2,
        "{:#?}",
        seen.lines
    );
    assert!(seen.lines.iter().all(|l| l.contains("ethertype IPv4")));

    // Pcap: the raw frames, checked byte by byte.
    let cap = netns::tcpdump(a, "veth0", 2, &["icmp"], CaptureFormat::Pcap).unwrap();
    assert!(ping(a, "198.18.1.2", 1, T).unwrap().all_received());
    let seen = cap.finish(T).unwrap();
    assert_eq!(seen.frames.len(), 2, "request and reply");
    for f in &seen.frames {
        assert!(f.len() >= 14 + 20 + 8, "{} bytes", f.len());
        assert_eq!(&f[12..14], &[0x08, 0x00], "IPv4 ethertype");
        assert_eq!(f[14 + 9], 1, "IP protocol ICMP");
    }
    assert_eq!(seen.frames[0][14 + 20], 8, "echo request first");
    assert_eq!(seen.frames[1][14 + 20], 0, "then the echo reply");
    assert_eq!(&seen.frames[0][14 + 16..14 + 20], &[198, 18, 1, 2]);

    // A capture that sees too little ends at its bound with what it has.
    let cap = netns::tcpdump(a, "veth0", 5, &["udp"], CaptureFormat::Text).unwrap();
    let seen = cap.finish(Duration::from_millis(300)).unwrap();
    assert!(seen.lines.is_empty(), "{:#?}", seen.lines);
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn topology_cleans_up_even_when_a_closure_panics() {
    setup(&["ping"]);
    // Normal drop.
    let t = pair();
    let prefix = t.prefix().clone();
    assert_eq!(leftovers(&prefix).len(), 2);
    drop(t);
    assert!(leftovers(&prefix).is_empty(), "{:?}", leftovers(&prefix));

    // A panic inside the test body, with a process running and a run_in in progress.
    let mut seen_prefix = None;
    let mut seen_pid = 0;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let mut t = pair();
        seen_prefix = Some(t.prefix().clone());
        let id = t.spawn("a", "sleep", &["60"]).unwrap();
        seen_pid = t.proc_mut(id).unwrap().pid();
        t.ns("b")
            .unwrap()
            .run_in(|| panic!("boom inside b"))
            .unwrap();
    }));
    let err = res.expect_err("the closure panicked");
    assert_eq!(err.downcast_ref::<&str>(), Some(&"boom inside b"));
    let prefix = seen_prefix.unwrap();
    assert!(leftovers(&prefix).is_empty(), "{:?}", leftovers(&prefix));
    assert!(!netns::pid_alive(seen_pid), "sleep {seen_pid} was killed");

    // A bare Netns guard too.
    let name = Prefix::next().ns_name("solo").unwrap();
    let res = catch_unwind(|| {
        let _ns = Netns::create(&name).unwrap();
        assert!(list_netns().unwrap().contains(&name));
        panic!("boom");
    });
    assert!(res.is_err());
    assert!(!list_netns().unwrap().contains(&name));
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn remove_stale_deletes_namespaces_of_dead_pids_only() {
    setup(&[]);
    // A PID that is certainly dead: a child we already reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!netns::pid_alive(dead));

    let stale = format!("{PREFIX_ROOT}{dead:x}t0-x");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success());
    // A process left running inside the stale namespace (as after a SIGKILLed run).
    let mut orphan = std::process::Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "60"])
        .spawn()
        .unwrap();

    let live = pair(); // ours: must survive
                       // (A concurrently running test binary may remove it first; either way it goes.)
    netns::remove_stale(PREFIX_ROOT).unwrap();
    assert!(!list_netns().unwrap().contains(&stale));
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan was killed: {status}");
    assert_eq!(leftovers(live.prefix()).len(), 2, "live namespaces kept");
    assert!(netns::remove_stale("123").is_err(), "bad root rejected");
}
