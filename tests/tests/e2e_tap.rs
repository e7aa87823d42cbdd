//! End to end: the real `polluxd` (release build) switching between network namespaces on
//! TAP ports, and between a TAP port and an AF_XDP port, checked with ping and iperf3;
//! and jumbo frames (a 9000-byte network) between two TAP namespaces.
//!
//! ```text
//!   namespace t1: <P>t1 198.18.21.11 (tap polluxd created, then moved here)  ┐
//!   namespace t2: <P>t2 198.18.21.12 (persistent tap, attached, moved here)  ├ polluxd (namespace host)
//!   namespace x1: eth0  198.18.21.13 ──veth── <P>x1 (AF_XDP)                 ┘
//! ```
//!
//! polluxd holds each tap's file descriptor in namespace `host`; the test then moves the
//! netdevs into the VMs' namespaces (`ip link set ... netns`), as a container runtime
//! would, and the descriptors keep working. The TAP namespaces keep the kernel's default
//! offloads (no ethtool step), and polluxd negotiates TSO on the taps: their TCP goes to
//! polluxd as super-frames of up to 64 KiB with partial checksums, which go whole from
//! one TAP namespace to the other (counted by both taps' drivers) and are segmented
//! (checksums completed) toward the AF_XDP namespace (counted by the worker). TCP runs
//! both ways between the TAP namespaces, with a transfer whose bytes are compared end to
//! end, and both ways between a TAP and the AF_XDP namespace.
//!
//! Every tap lives only in the test's namespaces, which are deleted (taps with them) on
//! every exit path; the one polluxd created also goes away when polluxd exits or a change
//! removes its port at runtime, which the tests check. Needs root and `ip`, `ping`,
//! `iperf3`, `ethtool`, `python3`: it fails, never skips, when any is missing.

use std::thread;
use std::time::{Duration, Instant};

use pollux_tests::daemon::{self, driver_counters, parse_worker_totals, ConfigFile, Polluxd};
use pollux_tests::netns::{iperf3_client, iperf3_server, parse_iperf3_json, Topology};
use pollux_tests::vm_lab::{Vm, VmNet};
use serde_json::json;

const TOOLS: &[&str] = &["ip", "ping", "iperf3", "ethtool", "python3"];
const CONFIG: &str = "e2e-tap.toml";
const JUMBO_CONFIG: &str = "e2e-tap-jumbo.toml";

const T1: Vm = Vm {
    role: "t1",
    mac: "fa:16:3e:15:00:11",
    ip: "198.18.21.11",
};
const T2: Vm = Vm {
    role: "t2",
    mac: "fa:16:3e:15:00:12",
    ip: "198.18.21.12",
};
const X1: Vm = Vm {
    role: "x1",
    mac: "fa:16:3e:15:00:13",
    ip: "198.18.21.13",
};

const J1: Vm = Vm {
    role: "t1",
    mac: "fa:16:3e:16:00:11",
    ip: "198.18.22.11",
};
const J2: Vm = Vm {
    role: "t2",
    mac: "fa:16:3e:16:00:12",
    ip: "198.18.22.12",
};

/// The lab: namespace `host` (polluxd), `t1` and `t2` (their taps are moved in by the
/// tests), `x1` plugged over a veth (the kit's [`VmNet`]).
fn new_lab() -> VmNet {
    // x1 keeps the kernel's default offloads: polluxd completes the checksums the veth
    // leaves partial.
    let lab = VmNet::with_roles(Topology::new(), &[T1.role, T2.role], &[&X1]);
    // t2's tap exists before polluxd starts, as a VM manager would have made it.
    lab.host()
        .ip(&[
            "tuntap",
            "add",
            "dev",
            &lab.ifname(&T2),
            "mode",
            "tap",
            "vnet_hdr",
            "multi_queue",
        ])
        .unwrap();
    lab
}

/// What the tests do with the taps and between the VMs.
trait TapLab {
    fn ifname(&self, vm: &Vm) -> String;
    fn move_tap(&self, vm: &Vm);
    fn has_link(&self, role: &str, ifname: &str) -> bool;
    fn tcp(&self, from: &Vm, to: &Vm, secs: u32) -> u64;
    fn udp(&self, from: &Vm, to: &Vm) -> (u64, u64);
    fn transfer(&self, from: &Vm, to: &Vm, bytes: usize);
}

/// Receives one TCP connection on `argv[1]`:5300 until EOF (bounded by timeouts) and
/// prints the byte count and SHA-256 of what came.
const RECEIVER: &str = "import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5300)); s.listen(1); s.settimeout(20)
print('listening', file=sys.stderr, flush=True)
c, _ = s.accept(); c.settimeout(20); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)";

/// Sends `argv[2]` bytes of a seeded pseudo-random stream to `argv[1]`:5300 and prints the
/// byte count and SHA-256 of what it sent.
const SENDER: &str = "import hashlib, random, socket, sys
data = random.Random(17).randbytes(int(sys.argv[2]))
c = socket.create_connection((sys.argv[1], 5300), timeout=20); c.sendall(data); c.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)";

impl TapLab for VmNet {
    fn ifname(&self, vm: &Vm) -> String {
        self.switch_if(vm)
    }

    /// Moves `vm`'s tap from `host` into its namespace and configures it there.
    fn move_tap(&self, vm: &Vm) {
        let tap = self.ifname(vm);
        self.host()
            .ip(&["link", "set", "dev", &tap, "netns", self.ns(vm.role).name()])
            .unwrap();
        self.topo.set_mac(vm.role, &tap, vm.mac).unwrap();
        self.topo.link_up(vm.role, &tap).unwrap();
        self.topo
            .addr(vm.role, &tap, &format!("{}/24", vm.ip))
            .unwrap();
    }

    fn has_link(&self, role: &str, ifname: &str) -> bool {
        self.ns(role).ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// TCP from `from` to `to` for `secs` s; returns the bytes the server received.
    fn tcp(&self, from: &Vm, to: &Vm, secs: u32) -> u64 {
        let server = iperf3_server(self.ns(to.role), to.ip, 5201).unwrap();
        let r = iperf3_client(self.ns(from.role), to.ip, server.port(), secs).unwrap();
        drop(server);
        eprintln!(
            "iperf3 {} -> {}: {:.2} Gbit/s received, {} bytes, retransmits {:?}",
            from.role,
            to.role,
            r.received_bps / 1e9,
            r.received_bytes,
            r.retransmits
        );
        r.received_bytes
    }

    /// Sends `bytes` bytes from `from` to `to` over one TCP connection and asserts that
    /// the receiver got exactly them (same count, same SHA-256).
    fn transfer(&self, from: &Vm, to: &Vm, bytes: usize) {
        let mut rx = self
            .ns(to.role)
            .spawn("python3", &["-c", RECEIVER, to.ip])
            .unwrap();
        assert!(
            rx.wait_stderr_contains("listening", Duration::from_secs(10)),
            "receiver in {} did not start: {}",
            to.role,
            rx.stderr_so_far()
        );
        let n = bytes.to_string();
        let out = self
            .ns(from.role)
            .exec_timeout(
                "python3",
                &["-c", SENDER, to.ip, &n],
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(
            out.status.success(),
            "sender in {}: {}",
            from.role,
            String::from_utf8_lossy(&out.stderr)
        );
        let sent = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let done = rx.wait_timeout(Duration::from_secs(30)).unwrap();
        assert!(
            done.is_some_and(|s| s.success()),
            "receiver: {}",
            rx.stderr_so_far()
        );
        let got = rx.stdout_so_far().trim().to_string();
        eprintln!(
            "transfer {} -> {}: sent {sent}, received {got}",
            from.role, to.role
        );
        assert_eq!(
            got, sent,
            "{} -> {}: the bytes received are the bytes sent",
            from.role, to.role
        );
    }

    /// UDP from `from` to `to` at 200 Mbit/s for 2 s; returns (bytes received, datagrams
    /// lost) as the server reported them.
    fn udp(&self, from: &Vm, to: &Vm) -> (u64, u64) {
        let server = iperf3_server(self.ns(to.role), to.ip, 5202).unwrap();
        let out = self
            .ns(from.role)
            .exec_timeout(
                "iperf3",
                &[
                    "-c",
                    to.ip,
                    "-p",
                    "5202",
                    "-u",
                    "-b",
                    "200M",
                    "-l",
                    "1400",
                    "-t",
                    "2",
                    "-J",
                    "--connect-timeout",
                    "3000",
                ],
                Duration::from_secs(20),
            )
            .unwrap();
        drop(server);
        let json = String::from_utf8_lossy(&out.stdout);
        // The byte counts parse as for TCP; the loss is UDP's own field.
        let r = parse_iperf3_json(&json).unwrap_or_else(|e| panic!("iperf3 -u: {e}"));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let lost = v["end"]["sum"]["lost_packets"].as_u64().unwrap_or(u64::MAX);
        eprintln!(
            "iperf3 -u {} -> {}: {} bytes received, {lost} datagrams lost",
            from.role, to.role, r.received_bytes
        );
        (r.received_bytes, lost)
    }
}

/// Waits up to 5 s for `ifname` to leave namespace `role`; whether it did.
fn wait_gone(lab: &VmNet, role: &str, ifname: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.has_link(role, ifname) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    !lab.has_link(role, ifname)
}

fn counter(counters: &[(String, u64)], name: &str) -> u64 {
    counters
        .iter()
        .find(|(k, _)| k == name)
        .map_or(0, |&(_, v)| v)
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn tap_namespaces_exchange_ping_tcp_and_udp_and_reach_an_afxdp_namespace() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let lab = new_lab();
    let config = ConfigFile::render(CONFIG, lab.topo.prefix().as_str()).unwrap();
    let polluxd = Polluxd::start(lab.host(), config.path(), &daemon::last_cpu())
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = polluxd.stderr_so_far();
    assert!(
        stderr.contains(&format!("tap {}: created", lab.ifname(&T1))),
        "polluxd did not report creating t1's tap:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "tap {}: attached to the existing device (multi_queue)",
            lab.ifname(&T2)
        )),
        "polluxd did not report attaching to t2's tap:\n{stderr}"
    );
    lab.move_tap(&T1);
    lab.move_tap(&T2);

    // TAP <-> TAP: TCP both ways (as super-frames), and bytes compared end to end.
    lab.assert_reach(&T1, &T2, 5, &polluxd);
    lab.assert_reach(&T2, &T1, 5, &polluxd);
    for (from, to) in [(&T1, &T2), (&T2, &T1)] {
        let tcp_bytes = lab.tcp(from, to, 3);
        assert!(
            tcp_bytes > 100_000_000,
            "TCP {} -> {} moved {tcp_bytes} bytes",
            from.role,
            to.role
        );
        lab.transfer(from, to, 64 << 20);
    }
    let (udp_bytes, lost) = lab.udp(&T2, &T1);
    assert!(
        udp_bytes > 10_000_000,
        "UDP t2 -> t1 delivered {udp_bytes} bytes"
    );
    assert!(
        lost < 5_000,
        "UDP t2 -> t1 lost {lost} datagrams; polluxd: {}\n{}",
        polluxd.call("stats.get", json!({})),
        polluxd.call("ports.list", json!({}))
    );

    // TAP <-> AF_XDP.
    lab.assert_reach(&T1, &X1, 3, &polluxd);
    lab.assert_reach(&X1, &T2, 3, &polluxd);
    let to_afxdp = lab.tcp(&T2, &X1, 2);
    assert!(to_afxdp > 1_000_000, "TCP t2 -> x1 moved {to_afxdp} bytes");
    let from_afxdp = lab.tcp(&X1, &T1, 2);
    assert!(
        from_afxdp > 1_000_000,
        "TCP x1 -> t1 moved {from_afxdp} bytes"
    );
    lab.transfer(&T1, &X1, 16 << 20);
    lab.transfer(&X1, &T2, 16 << 20);

    // Super-frames toward x1 were segmented by the worker; none was dropped.
    let stats = polluxd.call("stats.get", json!({}));
    let worker = &stats["workers"][0];
    let segmented = worker["gso_segments"].as_u64().unwrap_or(0);
    eprintln!(
        "worker: {} super-frames segmented into {segmented} segments",
        worker["gso_frames"]
    );
    assert!(
        segmented > 1_000,
        "segments made for the AF_XDP port: {worker}"
    );
    for reason in ["gso_pool_short", "gso_unsupported", "too_big"] {
        let n = stats["drops"][reason].as_u64().unwrap_or(0);
        assert_eq!(n, 0, "{reason}: {}", stats["drops"]);
    }

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    let totals = parse_worker_totals(&stderr).expect("worker totals line");
    assert!(totals.rx > 0 && totals.tx > 0, "{totals:?}");
    for vm in [T1, T2] {
        let c = driver_counters(&stderr, &lab.ifname(&vm));
        eprintln!("{} driver counters: {c:?}", vm.role);
        // TSO negotiated: super-frames came in and went out whole, none refused.
        assert_eq!(counter(&c, "tso"), 1, "{}: {c:?}", vm.role);
        assert!(counter(&c, "rx_gso_frames") > 1_000, "{}: {c:?}", vm.role);
        assert!(counter(&c, "tx_gso_frames") > 1_000, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "rx_gso_dropped"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "tx_gso_bad"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "tx_oversize"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "rx_errors"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "tx_errors"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "bogus_completions"), 0, "{}: {c:?}", vm.role);
    }

    // The tap polluxd created left with it; the one it attached to stays.
    assert!(
        wait_gone(&lab, T1.role, &lab.ifname(&T1)),
        "the tap polluxd created outlived it"
    );
    assert!(
        lab.has_link(T2.role, &lab.ifname(&T2)),
        "the persistent tap polluxd attached to was removed"
    );
    lab.ns(T2.role)
        .ip(&["link", "del", "dev", &lab.ifname(&T2)])
        .unwrap();
    eprintln!("e2e tap: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_tap_port_removed_and_added_back_at_runtime() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab();
    let config = ConfigFile::render(CONFIG, lab.topo.prefix().as_str()).unwrap();
    let polluxd = Polluxd::start(lab.host(), config.path(), &daemon::last_cpu())
        .unwrap_or_else(|e| panic!("{e}"));
    lab.move_tap(&T1);
    lab.move_tap(&T2);
    lab.assert_reach(&T1, &T2, 3, &polluxd);

    // Without vm-t1, polluxd closes its port (on the control thread, the worker running
    // on): the tap it created goes with it, in whatever namespace it lives now.
    let full = polluxd.call("config.get", json!({}))["state"].clone();
    let mut without = full.clone();
    without["ports"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["id"] != "vm-t1");
    polluxd.call("config.apply", json!({ "state": without }));
    assert!(
        wait_gone(&lab, T1.role, &lab.ifname(&T1)),
        "the created tap outlived its port; polluxd stderr:\n{}",
        polluxd.stderr_so_far()
    );
    // t2's port, untouched by the change, still forwards.
    lab.assert_reach(&T2, &X1, 3, &polluxd);

    // Back again: a new tap, created in polluxd's namespace, moved and working.
    polluxd.call("config.apply", json!({ "state": full }));
    assert!(
        lab.has_link("host", &lab.ifname(&T1)),
        "no new tap in polluxd's namespace"
    );
    lab.move_tap(&T1);
    lab.assert_reach(&T1, &T2, 3, &polluxd);

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    assert!(wait_gone(&lab, T1.role, &lab.ifname(&T1)));
    lab.ns(T2.role)
        .ip(&["link", "del", "dev", &lab.ifname(&T2)])
        .unwrap();
}

/// A 9000-byte network on two TAP ports: full-size jumbo pings with DF set cross both
/// ways, and TCP runs with 9000-byte frames, every one of them chained over several pool
/// buffers inside polluxd (port security and a stateful group on the way).
#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn tap_namespaces_exchange_jumbo_frames() {
    let _serial = daemon::setup(TOOLS);
    let lab = VmNet::with_roles(Topology::new(), &[J1.role, J2.role], &[]);
    let config = ConfigFile::render(JUMBO_CONFIG, lab.topo.prefix().as_str()).unwrap();
    let polluxd = Polluxd::start(lab.host(), config.path(), &daemon::last_cpu())
        .unwrap_or_else(|e| panic!("{e}"));
    for vm in [&J1, &J2] {
        lab.move_tap(vm);
        lab.ns(vm.role)
            .ip(&["link", "set", "dev", &lab.ifname(vm), "mtu", "9000"])
            .unwrap();
    }
    lab.assert_reach(&J1, &J2, 3, &polluxd);
    for (from, to) in [(&J1, &J2), (&J2, &J1)] {
        // 8972 bytes of ICMP data + 28 of headers = 9000: a full frame, DF set.
        let out = lab
            .ns(from.role)
            .exec_timeout(
                "ping",
                &[
                    "-M", "do", "-s", "8972", "-c", "3", "-i", "0.2", "-W", "2", to.ip,
                ],
                Duration::from_secs(15),
            )
            .unwrap();
        assert!(
            out.status.success(),
            "jumbo ping {} -> {} failed:\n{}",
            from.role,
            to.role,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let tcp_bytes = lab.tcp(&J1, &J2, 3);
    assert!(
        tcp_bytes > 10_000_000,
        "TCP t1 -> t2 moved {tcp_bytes} bytes"
    );

    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    for vm in [J1, J2] {
        let c = driver_counters(&stderr, &lab.ifname(&vm));
        eprintln!("{} driver counters: {c:?}", vm.role);
        assert_eq!(counter(&c, "rx_oversize"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "tx_oversize"), 0, "{}: {c:?}", vm.role);
        assert_eq!(counter(&c, "rx_errors"), 0, "{}: {c:?}", vm.role);
    }
    // Both taps were polluxd's: they left with it.
    for vm in [J1, J2] {
        assert!(
            wait_gone(&lab, vm.role, &lab.ifname(&vm)),
            "{}'s tap stayed",
            vm.role
        );
    }
}
