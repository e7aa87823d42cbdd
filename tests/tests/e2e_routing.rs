//! End to end: a Neutron router inside the real `polluxd` (release build), between two
//! subnets in network namespaces, over AF_XDP on veth.
//!
//! ```text
//!   namespace a1: eth0 198.18.21.10/24 via .1 ──veth── <P>a1 ┐ polluxd (namespace host),
//!   namespace b1: eth0 198.18.22.10/24 via .1 ──veth── <P>b1 ┘ router r1 at .1 on each
//! ```
//!
//! (`configs/e2e-router.toml`; network B has MTU 1400.) The NAT case adds an "internet"
//! namespace on the external network, which routes on to a "far" host over a 1280-byte
//! link, for path MTU discovery through SNAT and a floating IP. Checked with the kernel's own
//! ARP, ping and iperf3 in the namespaces, and with `neighbors.list` and `stats.get` over
//! the control socket. Needs root and `ip`, `ping`, `iperf3`, `ethtool`, `traceroute`: it
//! fails, never skips, when any is missing. Everything it makes is removed on every path.

use std::thread;
use std::time::Duration;

use pollux_control::client::Client;
use pollux_tests::daemon::{self, ConfigFile, Polluxd};
use pollux_tests::netns::{
    self, iperf3_client, iperf3_client_parallel, iperf3_server, ping, Netns, Topology, VethOptions,
};
use serde_json::json;

const TOOLS: &[&str] = &["ip", "ping", "iperf3", "ethtool", "traceroute"];
const CONFIG: &str = "e2e-router.toml";
const NAT_CONFIG: &str = "e2e-router-nat.toml";
/// The "internet" namespace's address on the external network, and the router's, and b1's
/// floating IP (`configs/e2e-router-nat.toml`).
const INTERNET: &str = "203.0.113.1";
const ROUTER_EXT: &str = "203.0.113.10";
const B1_FIP: &str = "203.0.113.20";
/// A host beyond the "internet" namespace, which routes to it over a 1280-byte link: the
/// kernel there answers larger datagrams with DF with "fragmentation needed" to the
/// address they came from (the router's gateway address, or a floating IP).
const FAR: &str = "198.19.99.2";

struct Vm {
    role: &'static str,
    mac: &'static str,
    cidr: &'static str,
    ip: &'static str,
    gateway: &'static str,
    mtu: &'static str,
}

const A1: Vm = Vm {
    role: "a1",
    mac: "fa:16:3e:15:00:11",
    cidr: "198.18.21.10/24",
    ip: "198.18.21.10",
    gateway: "198.18.21.1",
    mtu: "1500",
};
const B1: Vm = Vm {
    role: "b1",
    mac: "fa:16:3e:15:00:12",
    cidr: "198.18.22.10/24",
    ip: "198.18.22.10",
    gateway: "198.18.22.1",
    mtu: "1400",
};

fn lab(internet: bool) -> Topology {
    netns::require_root();
    netns::require_tools(TOOLS);
    netns::remove_stale_once();
    daemon::polluxd_path();
    let mut topo = Topology::new();
    topo.add_ns("host").unwrap();
    topo.ns("host").unwrap().disable_ipv6().unwrap();
    for vm in [&A1, &B1] {
        topo.add_ns(vm.role).unwrap();
        topo.ns(vm.role).unwrap().disable_ipv6().unwrap();
        let switch_if = topo.prefix().ifname(vm.role).unwrap();
        topo.veth_with(
            "host",
            &switch_if,
            vm.role,
            "eth0",
            &VethOptions {
                mac_b: Some(vm.mac.to_owned()),
                ..VethOptions::default()
            },
        )
        .unwrap();
        let ns = topo.ns(vm.role).unwrap();
        // Default offloads: polluxd completes the checksums the veth leaves partial.
        ns.ip(&["link", "set", "eth0", "mtu", vm.mtu]).unwrap();
        topo.addr(vm.role, "eth0", vm.cidr).unwrap();
        topo.route(vm.role, "default", vm.gateway).unwrap();
    }
    if internet {
        topo.add_ns("internet").unwrap();
        topo.ns("internet").unwrap().disable_ipv6().unwrap();
        let switch_if = topo.prefix().ifname("ext").unwrap();
        topo.veth("host", &switch_if, "internet", "eth0").unwrap();
        topo.addr("internet", "eth0", &format!("{INTERNET}/24"))
            .unwrap();
        topo.add_ns("far").unwrap();
        topo.ns("far").unwrap().disable_ipv6().unwrap();
        topo.veth("internet", "narrow", "far", "eth0").unwrap();
        for ns in ["internet", "far"] {
            let ifname = if ns == "far" { "eth0" } else { "narrow" };
            topo.ns(ns)
                .unwrap()
                .ip(&["link", "set", ifname, "mtu", "1280"])
                .unwrap();
        }
        topo.addr("internet", "narrow", "198.19.99.1/24").unwrap();
        topo.addr("far", "eth0", &format!("{FAR}/24")).unwrap();
        topo.route("far", "default", "198.19.99.1").unwrap();
        topo.ns("internet")
            .unwrap()
            .sysctl("net.ipv4.ip_forward", "1")
            .unwrap();
    }
    topo
}

/// One ping with the reply's TTL: `ping -c 1` prints `ttl=N` for the reply.
fn reply_ttl(ns: &Netns, dst: &str) -> Option<u32> {
    let out = ns
        .exec_timeout(
            "ping",
            &["-n", "-c", "1", "-W", "2", dst],
            Duration::from_secs(5),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok())
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn ping_and_tcp_across_a_router_with_arp_and_ttl() {
    let topo = lab(false);
    let config = ConfigFile::render(CONFIG, topo.prefix().as_str()).unwrap();
    let polluxd = Polluxd::start(topo.ns("host").unwrap(), config.path(), &daemon::last_cpu())
        .unwrap_or_else(|e| panic!("{e}"));
    let a1 = topo.ns(A1.role).unwrap();
    let b1 = topo.ns(B1.role).unwrap();

    // The router answers ARP and pings on its own address (the kernel sends TTL 64; the
    // reply is made by the router, not routed, so it arrives with 64).
    let r = ping(a1, A1.gateway, 3, Duration::from_secs(5)).unwrap();
    assert!(
        r.all_received(),
        "a1 -> its gateway: {r:?}\n{}",
        polluxd.stderr_so_far()
    );
    assert_eq!(reply_ttl(a1, A1.gateway), Some(64));
    let neigh = a1.ip(&["neigh", "show", A1.gateway]).unwrap();
    assert!(
        neigh.contains("lladdr 02:70:6c:"),
        "a1 resolved the router MAC: {neigh}"
    );

    // Across the router both ways: the router asks for b1 by ARP, then forwards with the
    // TTL decremented (b1 answers with 64, a1 sees 63).
    let r = ping(a1, B1.ip, 5, Duration::from_secs(5)).unwrap();
    assert!(
        r.all_received(),
        "a1 -> b1: {r:?}\n{}",
        polluxd.stderr_so_far()
    );
    assert_eq!(reply_ttl(a1, B1.ip), Some(63));
    let r = ping(b1, A1.ip, 5, Duration::from_secs(5)).unwrap();
    assert!(r.all_received(), "b1 -> a1: {r:?}");

    let neighbors = polluxd.call("neighbors.list", json!({}));
    let entries = neighbors["neighbors"].as_array().unwrap();
    for (network, ip, mac) in [("net-a", A1.ip, A1.mac), ("net-b", B1.ip, B1.mac)] {
        assert!(
            entries.iter().any(|n| n["network_id"] == network
                && n["ip_address"] == ip
                && n["mac_address"] == mac
                && n["state"] == "reachable"),
            "no reachable neighbour {ip} ({mac}) on {network}: {neighbors}"
        );
    }

    // Explain, on the live AF_XDP data plane: a ping from a1 to b1 would leave on b1's
    // port from the router's MAC to b1's, TTL down by one, as the pings above did; asking
    // changes no neighbour and sends nothing.
    let mut client = Client::connect(polluxd.socket()).unwrap();
    let learned = |client: &mut Client| {
        let list = client.call("neighbors.list", json!({})).unwrap();
        let mut rows: Vec<String> = list["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                format!(
                    "{} {} {}",
                    n["network_id"], n["ip_address"], n["mac_address"]
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let before = learned(&mut client);
    let ex = client
        .call(
            "explain.run",
            json!({ "port": "vm-a1", "dst_ip": B1.ip, "proto": "icmp" }),
        )
        .unwrap_or_else(|e| panic!("explain.run: {e}"));
    assert_eq!(ex["verdict"], "sent", "{ex}");
    assert_eq!(ex["sent"].as_array().map(Vec::len), Some(1), "{ex}");
    let out = &ex["sent"][0];
    assert_eq!(out["port"], "vm-b1", "{ex}");
    assert_eq!(out["frame"]["dst_mac"], B1.mac, "{ex}");
    assert!(
        out["frame"]["src_mac"]
            .as_str()
            .is_some_and(|m| m.starts_with("02:70:6c:")),
        "{ex}"
    );
    assert_eq!(out["frame"]["ttl"], 63, "{ex}");
    assert_eq!(learned(&mut client), before);

    // TCP through the router for 3 s. b1's MTU is 1400, so its MSS keeps a1's segments
    // within network B's MTU.
    let server = iperf3_server(b1, B1.ip, 5201).unwrap();
    let tcp = iperf3_client(a1, B1.ip, server.port(), 3).unwrap();
    drop(server);
    assert!(
        tcp.received_bps > 0.0 && tcp.received_bytes > 0,
        "iperf3 a1 -> b1 moved nothing: {tcp:?}"
    );
    eprintln!(
        "iperf3 a1 -> b1 across the router: {:.2} Gbit/s, retransmits {:?}",
        tcp.received_bps / 1e9,
        tcp.retransmits
    );

    // traceroute (UDP probes) shows the router's hop, then b1.
    let out = a1
        .exec_timeout(
            "traceroute",
            &["-n", "-q", "1", "-w", "1", "-m", "4", B1.ip],
            Duration::from_secs(15),
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hops: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(hops, [A1.gateway, B1.ip], "traceroute:\n{text}");

    // Path MTU discovery: a 1500-byte packet with DF does not fit network B (MTU 1400);
    // the router says so (ICMP fragmentation needed, MTU 1400), the sender's kernel
    // remembers it, and packets of that size then pass.
    let ping_df = |size: &str| {
        let out = a1
            .exec_timeout(
                "ping",
                &[
                    "-n", "-M", "do", "-s", size, "-c", "2", "-i", "0.2", "-W", "1", B1.ip,
                ],
                Duration::from_secs(5),
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let first = ping_df("1472");
    assert!(
        first.contains("mtu = 1400") || first.contains("mtu=1400"),
        "{first}"
    );
    let route = a1.ip(&["route", "get", B1.ip]).unwrap();
    assert!(route.contains("mtu 1400"), "PMTU not learned: {route}");
    let fitting = ping_df("1372");
    let summary = netns::parse_ping_summary(&fitting).unwrap();
    assert!(summary.all_received(), "{fitting}");
    let stats = polluxd.call("stats.get", json!({}));
    eprintln!("drops at the end: {}", stats["drops"]);
    assert!(
        stats["drops"]["mtu_exceeded"].as_u64() >= Some(1),
        "the oversized ping is counted: {stats}"
    );

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn snat_floating_ip_and_hairpin_to_an_internet_namespace() {
    let topo = lab(true);
    let config = ConfigFile::render(NAT_CONFIG, topo.prefix().as_str()).unwrap();
    let polluxd = Polluxd::start(topo.ns("host").unwrap(), config.path(), &daemon::last_cpu())
        .unwrap_or_else(|e| panic!("{e}"));
    let a1 = topo.ns(A1.role).unwrap();
    let b1 = topo.ns(B1.role).unwrap();
    let internet = topo.ns("internet").unwrap();

    // SNAT: a1 has no floating IP; the internet sees the router's gateway address.
    let r = ping(a1, INTERNET, 3, Duration::from_secs(5)).unwrap();
    assert!(
        r.all_received(),
        "a1 -> internet: {r:?}\n{}",
        polluxd.stderr_so_far()
    );
    let mut server = iperf3_server(internet, INTERNET, 5201).unwrap();
    let tcp = iperf3_client_parallel(a1, INTERNET, server.port(), 3, 32).unwrap();
    let seen = server.proc_mut().stdout_so_far();
    drop(server);
    assert!(
        tcp.received_bytes > 0,
        "iperf3 -P 32 a1 -> internet: {tcp:?}"
    );
    assert!(
        seen.contains(&format!("Accepted connection from {ROUTER_EXT}")),
        "the server must see the router's address:\n{seen}"
    );
    assert!(
        !seen.contains("198.18."),
        "a tenant address leaked:\n{seen}"
    );
    eprintln!(
        "iperf3 -P 32 a1 -> internet through SNAT: {:.2} Gbit/s, retransmits {:?}",
        tcp.received_bps / 1e9,
        tcp.retransmits
    );
    let sessions = polluxd.call("sessions.list", json!({}));
    let tcp_sessions = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] == "tcp" && s["original"]["src"] == A1.ip)
        .count();
    assert!(
        tcp_sessions >= 33,
        "32 streams and the control connection: {sessions}"
    );

    // Path MTU discovery through the NAT: the internet namespace's kernel answers a
    // 1378-byte datagram with DF for the far host with "fragmentation needed" (MTU 1280)
    // to the router's gateway address (a1, SNAT) or b1's floating IP; polluxd translates
    // the error back (RFC 5508), so each VM's kernel learns the path MTU.
    for vm in [a1, b1] {
        let out = vm
            .exec_timeout(
                "ping",
                &["-n", "-M", "do", "-s", "1350", "-c", "2", "-W", "2", FAR],
                Duration::from_secs(10),
            )
            .unwrap();
        let route = vm.ip(&["-4", "route", "get", FAR]).unwrap();
        assert!(
            route.contains("mtu 1280"),
            "{}: the path MTU to {FAR} was not learnt: {route}\n{}{}",
            vm.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Smaller datagrams then get through.
        let r = ping(vm, FAR, 2, Duration::from_secs(5)).unwrap();
        assert!(r.all_received(), "{} -> far host: {r:?}", vm.name());
    }

    // Fragmented datagrams through SNAT: a 3028-byte echo request leaves a1 as three
    // fragments, and its reply comes back as three; the later ones carry no identifier.
    let out = a1
        .exec_timeout(
            "ping",
            &["-n", "-s", "3000", "-c", "2", "-W", "2", INTERNET],
            Duration::from_secs(10),
        )
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("2 received"),
        "fragmented pings through SNAT:\n{summary}"
    );

    // The floating IP: reachable from the internet, and b1's own traffic leaves from it.
    let r = ping(internet, B1_FIP, 3, Duration::from_secs(5)).unwrap();
    assert!(r.all_received(), "internet -> b1's floating IP: {r:?}");
    let mut server = iperf3_server(internet, INTERNET, 5202).unwrap();
    let tcp = iperf3_client(b1, INTERNET, server.port(), 1).unwrap();
    let seen = server.proc_mut().stdout_so_far();
    drop(server);
    assert!(tcp.received_bytes > 0);
    assert!(
        seen.contains(&format!("Accepted connection from {B1_FIP}")),
        "b1 leaves from its floating IP:\n{seen}"
    );

    // Hairpin: a1 reaches b1 through b1's floating IP, from behind the same router.
    let r = ping(a1, B1_FIP, 3, Duration::from_secs(5)).unwrap();
    assert!(r.all_received(), "a1 -> b1's floating IP (hairpin): {r:?}");

    // A TCP session survives configuration changes that do not touch it.
    let mut server = iperf3_server(internet, INTERNET, 5203).unwrap();
    let socket = polluxd.socket().to_path_buf();
    let applier = thread::spawn(move || {
        thread::sleep(Duration::from_millis(700));
        let mut client = Client::connect(&socket).unwrap();
        let state = client.call("config.get", json!({})).unwrap()["state"].clone();
        let mut generations = Vec::new();
        for i in 0..5 {
            let mut next = state.clone();
            next["ports"].as_array_mut().unwrap().push(json!({
                "id": format!("spare-{i}"),
                "network_id": "net-a",
                "mac_address": format!("fa:16:3e:15:99:{i:02x}"),
                "binding": { "driver": "mem" },
            }));
            let r = client
                .call("config.apply", json!({ "state": next }))
                .unwrap();
            generations.push(r["generation"].as_u64().unwrap());
            thread::sleep(Duration::from_millis(300));
        }
        // After the last apply the stream's session still moves packets.
        let packets = |client: &mut Client| -> u64 {
            let sessions = client.call("sessions.list", json!({})).unwrap();
            sessions["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["protocol"] == "tcp" && s["original"]["dport"] == 5203)
                .map(|s| s["packets_out"].as_u64().unwrap())
                .sum()
        };
        let before = packets(&mut client);
        thread::sleep(Duration::from_millis(300));
        (generations, before, packets(&mut client))
    });
    let tcp = iperf3_client(a1, INTERNET, server.port(), 4).unwrap();
    let (generations, before, after) = applier.join().unwrap();
    assert!(
        after > before && before > 0,
        "the stream's session stopped after the applies: {before} then {after} packets"
    );
    let log = server.proc_mut().stdout_so_far();
    drop(server);
    assert_eq!(generations.len(), 5, "{generations:?}");
    assert!(
        tcp.received_bytes > 0 && tcp.received_bps > 0.0,
        "TCP across 5 applies: {tcp:?}\n{log}"
    );
    eprintln!(
        "iperf3 a1 -> internet across applies {generations:?}: {:.2} Gbit/s",
        tcp.received_bps / 1e9
    );

    let stats = polluxd.call("stats.get", json!({}));
    eprintln!("drops at the end: {}", stats["drops"]);
    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
}

/// Replaces the veth `switch_if` (in the host namespace) to `role`'s `eth0` with one of
/// `queues` queues each way, so that the kernel spreads flows over the queues and so over
/// polluxd's workers; `mac` for `eth0`, then `cidr` (and `gateway`) as before.
fn requeue(
    topo: &Topology,
    role: &str,
    mac: Option<&str>,
    cidr: &str,
    gateway: Option<&str>,
    queues: &str,
) {
    let switch_if = topo
        .prefix()
        .ifname(if role == "internet" { "ext" } else { role })
        .unwrap();
    let host = topo.ns("host").unwrap();
    host.ip(&["link", "del", &switch_if]).unwrap();
    let vm_ns = topo.ns(role).unwrap().name().to_owned();
    host.ip(&[
        "link",
        "add",
        &switch_if,
        "numtxqueues",
        queues,
        "numrxqueues",
        queues,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "numtxqueues",
        queues,
        "numrxqueues",
        queues,
        "netns",
        &vm_ns,
    ])
    .unwrap();
    host.ip(&["link", "set", &switch_if, "up"]).unwrap();
    if let Some(mac) = mac {
        topo.set_mac(role, "eth0", mac).unwrap();
    }
    topo.ns(role)
        .unwrap()
        .ip(&["link", "set", "eth0", "up"])
        .unwrap();
    topo.addr(role, "eth0", cidr).unwrap();
    if let Some(gw) = gateway {
        topo.route(role, "default", gw).unwrap();
    }
}

/// polluxd with `--cores 0,1` and two-queue veths: a1 (security group: egress only)
/// reaches the internet through SNAT, ping and eight TCP streams, whichever worker
/// receives each direction; b1's floating IP works both ways; b1 cannot open anything to
/// a1, a1's connections to b1 are answered. Flows are handed to their owners (counted).
#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn two_workers_keep_snat_and_security_group_state() {
    let topo = lab(true);
    requeue(&topo, A1.role, Some(A1.mac), A1.cidr, Some(A1.gateway), "2");
    requeue(&topo, B1.role, Some(B1.mac), B1.cidr, Some(B1.gateway), "2");
    requeue(
        &topo,
        "internet",
        None,
        &format!("{INTERNET}/24"),
        None,
        "2",
    );
    for vm in [&A1, &B1] {
        topo.ns(vm.role)
            .unwrap()
            .ip(&["link", "set", "eth0", "mtu", vm.mtu])
            .unwrap();
    }
    let config = ConfigFile::render("e2e-router-nat-workers.toml", topo.prefix().as_str()).unwrap();
    let polluxd = Polluxd::start(topo.ns("host").unwrap(), config.path(), "0,1")
        .unwrap_or_else(|e| panic!("{e}"));
    let a1 = topo.ns(A1.role).unwrap();
    let b1 = topo.ns(B1.role).unwrap();
    let internet = topo.ns("internet").unwrap();

    let r = ping(a1, INTERNET, 5, Duration::from_secs(8)).unwrap();
    assert!(
        r.all_received(),
        "a1 -> internet through SNAT: {r:?}\n{}",
        polluxd.stderr_so_far()
    );
    let mut server = iperf3_server(internet, INTERNET, 5201).unwrap();
    let snat = iperf3_client_parallel(a1, INTERNET, server.port(), 3, 8).unwrap();
    let seen = server.proc_mut().stdout_so_far();
    drop(server);
    assert!(
        snat.received_bytes > 0,
        "iperf3 -P 8 a1 -> internet: {snat:?}"
    );
    assert!(
        seen.contains(&format!("Accepted connection from {ROUTER_EXT}")),
        "{seen}"
    );

    let r = ping(internet, B1_FIP, 5, Duration::from_secs(8)).unwrap();
    assert!(r.all_received(), "internet -> b1's floating IP: {r:?}");
    let mut server = iperf3_server(internet, INTERNET, 5202).unwrap();
    let fip = iperf3_client_parallel(b1, INTERNET, server.port(), 3, 8).unwrap();
    let seen = server.proc_mut().stdout_so_far();
    drop(server);
    assert!(
        fip.received_bytes > 0,
        "iperf3 -P 8 b1 -> internet: {fip:?}"
    );
    assert!(
        seen.contains(&format!("Accepted connection from {B1_FIP}")),
        "{seen}"
    );

    // Security groups: a1 opens connections to b1 (answered), b1 none to a1.
    let r = ping(a1, B1.ip, 5, Duration::from_secs(8)).unwrap();
    assert!(r.all_received(), "a1 -> b1: {r:?}");
    let server = iperf3_server(b1, B1.ip, 5203).unwrap();
    let sg = iperf3_client_parallel(a1, B1.ip, server.port(), 3, 8).unwrap();
    drop(server);
    assert!(sg.received_bytes > 0, "iperf3 -P 8 a1 -> b1: {sg:?}");
    let r = ping(b1, A1.ip, 3, Duration::from_secs(4)).unwrap();
    assert_eq!(
        r.received, 0,
        "b1 -> a1 must be refused by a1's group: {r:?}"
    );

    let stats = polluxd.call("workers.list", json!({}));
    let rows = stats["workers"].as_array().expect("rows").clone();
    let sum = |key: &str| -> u64 { rows.iter().map(|w| w[key].as_u64().unwrap_or(0)).sum() };
    let per =
        |key: &str| -> Vec<u64> { rows.iter().map(|w| w[key].as_u64().unwrap_or(0)).collect() };
    assert!(sum("flow_handoffs") > 0, "{stats}");
    eprintln!(
        "two workers: iperf3 -P 8 through SNAT {:.2} Gbit/s (retransmits {:?}), through the \
         floating IP {:.2} Gbit/s, a1 -> b1 with security groups {:.2} Gbit/s; flow handoffs \
         {:?} (received {:?}, ring full {:?}), output handoffs {:?}",
        snat.received_bps / 1e9,
        snat.retransmits,
        fip.received_bps / 1e9,
        sg.received_bps / 1e9,
        per("flow_handoffs"),
        per("flow_handoffs_received"),
        per("flow_handoff_drops"),
        per("handoffs"),
    );
    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
}
