//! End to end: the real `polluxd` (release build) switching between network namespaces
//! over AF_XDP on veth, as `scripts/demo.sh` does, checked with ping, iperf3 and tcpdump.
//!
//! Each test builds its own topology under a unique prefix (`plx<pid>t<n>-*`), removed on
//! every path (the guards of `pollux_tests::netns` and `pollux_tests::daemon`):
//!
//! ```text
//!   namespace a1: eth0 198.18.20.11 ──veth── <P>a1 ┐
//!   namespace a2: eth0 198.18.20.12 ──veth── <P>a2 ├ polluxd (namespace host)
//!   namespace b1: eth0 198.18.20.13 ──veth── <P>b1 ┘
//! ```
//!
//! a1 and a2 are on network A, b1 on network B (`configs/e2e-two-local-networks.toml`);
//! both networks use 198.18.20.0/24, so only the switch keeps them apart.
//!
//! Needs root and `ip`, `ping`, `iperf3`, `tcpdump`, `ethtool`: it fails, never skips,
//! when any is missing. The tests run one at a time (a poll-mode worker pinned to the last
//! CPU each; the machine is small) and each stays well under 30 s.

use std::thread;
use std::time::{Duration, Instant};

use pollux_testkit::thread_stop::{thread_named, StoppedThread};
use pollux_tests::daemon::{self, parse_worker_totals, xdp_attached, Polluxd};
use pollux_tests::netns::{self, iperf3_client, iperf3_server, CaptureFormat, Netns, VethOptions};
use pollux_tests::vm_lab::{Vm, VmNet};

const TOOLS: &[&str] = &["ip", "ping", "iperf3", "tcpdump", "ethtool"];
const CONFIG: &str = "e2e-two-local-networks.toml";
const JUMBO_CONFIG: &str = "e2e-jumbo-network.toml";

/// The VMs of [`CONFIG`]: role (namespace and switch-side interface suffix), MAC, address.
const A1: Vm = Vm {
    role: "a1",
    mac: "fa:16:3e:14:00:11",
    ip: "198.18.20.11",
};
const A2: Vm = Vm {
    role: "a2",
    mac: "fa:16:3e:14:00:12",
    ip: "198.18.20.12",
};
const B1: Vm = Vm {
    role: "b1",
    mac: "fa:16:3e:14:00:13",
    ip: "198.18.20.13",
};
const PREFIX_LEN: u8 = 24;
const SUBNET_BROADCAST: &str = "198.18.20.255";

/// A test's topology: namespace `host` (where polluxd runs) and one namespace per VM,
/// joined by veths `host:<P><role>` ↔ `<role>:eth0` (the kit's [`VmNet`]).
fn new_lab(vms: &[Vm]) -> VmNet {
    VmNet::new(&vms.iter().collect::<Vec<_>>())
}

/// The pings these tests send.
trait Pings {
    fn ping_vm(&self, from: &Vm, to: &Vm, count: u32) -> netns::PingResult;
    fn ping_df(&self, from: &Vm, to: &Vm, size: u32, count: u32) -> netns::PingResult;
}

impl Pings for VmNet {
    /// `count` pings from `from` to `to`, 0.2 s apart, at most `count * 0.2 + 3` s.
    fn ping_vm(&self, from: &Vm, to: &Vm, count: u32) -> netns::PingResult {
        self.ping(from.role, to.ip, count)
    }

    /// `ping -M do -s SIZE` (don't fragment) from `from` to `to`, with a 2 s deadline: when
    /// no reply comes, ping keeps sending (0.2 s apart) until the deadline.
    fn ping_df(&self, from: &Vm, to: &Vm, size: u32, count: u32) -> netns::PingResult {
        let (size, count) = (size.to_string(), count.to_string());
        let args = [
            "-n", "-q", "-M", "do", "-s", &size, "-c", &count, "-i", "0.2", "-W", "1", "-w", "2",
            to.ip,
        ];
        let out = self
            .vm(from)
            .exec_timeout("ping", &args, Duration::from_secs(10))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        netns::parse_ping_summary(&stdout).unwrap_or_else(|| {
            panic!(
                "ping {args:?} printed no summary: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// polluxd's SIGINT exit: status 0, and the final counters' worker line parsed.
fn stop_cleanly(polluxd: Polluxd) -> (daemon::WorkerTotals, String) {
    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "polluxd exited with {status} after SIGINT; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("polluxd: signal 2, stopping"),
        "polluxd did not report SIGINT; stderr:\n{stderr}"
    );
    let totals = parse_worker_totals(&stderr).unwrap_or_else(|| {
        panic!(
            "no line `polluxd: worker 0: rx N tx N flood copies N dropped N` in stderr:\n{stderr}"
        )
    });
    (totals, stderr)
}

/// Waits up to 3 s until none of `ifnames` in `ns` has an XDP program; the ones left.
fn wait_xdp_gone(ns: &Netns, ifnames: &[&str]) -> Vec<String> {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let left = xdp_attached(ns, ifnames).unwrap();
        if left.is_empty() || Instant::now() >= end {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn ping_iperf_arp_broadcast_and_isolation() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let lab = new_lab(&[A1, A2, B1]);
    let config = lab.config(CONFIG);
    let polluxd = lab.start(&config);

    // Unicast both ways within network A.
    lab.assert_reach(&A1, &A2, 5, &polluxd);
    lab.assert_reach(&A2, &A1, 5, &polluxd);

    // TCP through the switch for 5 s.
    let server = iperf3_server(lab.vm(&A2), A2.ip, 5201).unwrap();
    let tcp = iperf3_client(lab.vm(&A1), A2.ip, server.port(), 5).unwrap();
    drop(server);
    assert!(
        tcp.received_bps > 0.0 && tcp.received_bytes > 0,
        "iperf3 a1 -> a2 moved nothing: {tcp:?}"
    );
    eprintln!(
        "iperf3 a1 -> a2: {:.2} Gbit/s received, {} bytes, retransmits {:?}",
        tcp.received_bps / 1e9,
        tcp.received_bytes,
        tcp.retransmits
    );

    // Broadcasts from a1 (the ARP request of the next ping, then a broadcast ping) must
    // reach a2 (network A) and never b1 (network B).
    let filter = ["ether", "src", A1.mac, "and", "ether", "broadcast"];
    let cap_a2 = netns::tcpdump(lab.vm(&A2), "eth0", 3, &filter, CaptureFormat::Text).unwrap();
    let cap_b1 = netns::tcpdump(lab.vm(&B1), "eth0", 1, &filter, CaptureFormat::Text).unwrap();

    // ARP: with a1's neighbour table flushed, a ping must resolve a2's MAC through the
    // switch (request flooded, reply unicast back).
    lab.vm(&A1).ip(&["neigh", "flush", "dev", "eth0"]).unwrap();
    let before = lab.vm(&A1).ip(&["neigh", "show", "dev", "eth0"]).unwrap();
    assert!(
        !before.contains(A2.mac),
        "a1 still knows a2's MAC after the flush: {before}"
    );
    lab.assert_reach(&A1, &A2, 1, &polluxd);
    let neigh = lab
        .vm(&A1)
        .ip(&["neigh", "show", A2.ip, "dev", "eth0"])
        .unwrap();
    assert!(
        neigh.contains(&format!("lladdr {}", A2.mac)),
        "a1 did not learn a2's MAC {} by ARP: `ip neigh` shows {neigh:?}",
        A2.mac
    );

    // A broadcast ping (a2 ignores broadcast echoes, which does not matter: the capture
    // is what counts).
    let out = lab
        .vm(&A1)
        .exec_timeout(
            "ping",
            &[
                "-b",
                "-n",
                "-q",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                SUBNET_BROADCAST,
            ],
            Duration::from_secs(8),
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 packets transmitted"),
        "broadcast ping did not send: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen_a2 = cap_a2.finish(Duration::from_secs(3)).unwrap().lines;
    let seen_b1 = cap_b1.finish(Duration::from_millis(500)).unwrap().lines;
    assert!(
        seen_a2
            .iter()
            .any(|l| l.contains("ARP") && l.contains(&format!("who-has {}", A2.ip))),
        "a2 did not see a1's broadcast ARP request; it saw: {seen_a2:#?}"
    );
    assert!(
        seen_a2
            .iter()
            .any(|l| l.contains(SUBNET_BROADCAST) && l.contains("ICMP echo request")),
        "a2 did not see a1's broadcast ping; it saw: {seen_a2:#?}"
    );
    assert!(
        seen_b1.is_empty(),
        "b1 (network B) saw broadcasts from a1 (network A): {seen_b1:#?}"
    );

    // Isolation: same subnet, different network: no replies either way.
    for (from, to) in [(&A1, &B1), (&B1, &A2)] {
        let r = lab.ping_vm(from, to, 3);
        assert_eq!(
            r.received,
            0,
            "{} (network {}) reached {} (network {}): {r:?}",
            from.role,
            &from.role[..1],
            to.role,
            &to.role[..1]
        );
    }

    let (totals, stderr) = stop_cleanly(polluxd);
    assert!(
        totals.rx > 0 && totals.tx > 0,
        "polluxd counted no traffic: {totals:?}; stderr:\n{stderr}"
    );
    // Every frame received (and every flood copy) was sent or dropped, exactly once.
    assert_eq!(
        totals.rx + totals.flood_copies,
        totals.tx + totals.dropped,
        "counters do not balance; stderr:\n{stderr}"
    );
    for vm in [A1, A2] {
        let ifname = lab.switch_if(&vm);
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("polluxd:   {ifname}: rx ")))
            .unwrap_or_else(|| panic!("no counters for {ifname} in stderr:\n{stderr}"));
        assert!(
            !line.starts_with(&format!("polluxd:   {ifname}: rx 0 pkts")),
            "{ifname} received nothing: {line}"
        );
    }
    eprintln!(
        "polluxd final counters:\n{stderr}\nping_iperf_arp_broadcast_and_isolation took {:?}",
        started.elapsed()
    );
}

/// polluxd's frames are 2048 bytes with 256 bytes of headroom: the largest frame it can
/// receive is 1792 bytes (`ping -M do -s 1750`). What happens above that is checked
/// precisely, so that a change of behaviour shows here.
#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn full_size_frames_and_jumbo() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let lab = new_lab(&[A1, A2, B1]);
    let (a1_if, a2_if) = (lab.switch_if(&A1), lab.switch_if(&A2));

    // A network MTU of 9000 in the configuration is refused at startup.
    let jumbo = lab.config(JUMBO_CONFIG);
    let mut refused = Polluxd::spawn(lab.host(), jumbo.path(), &daemon::last_cpu()).unwrap();
    let (status, stderr) = refused
        .wait_exit(Duration::from_secs(5))
        .unwrap()
        .unwrap_or_else(|| panic!("polluxd accepted a network MTU of 9000 and kept running"));
    assert_eq!(
        status.code(),
        Some(1),
        "polluxd with a 9000-byte network MTU: {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("networks[0].mtu: 9000 is above 1774"),
        "the refusal does not name the field and the limit; stderr:\n{stderr}"
    );
    assert!(
        wait_xdp_gone(lab.host(), &[&a1_if, &a2_if]).is_empty(),
        "a refused configuration left an XDP program attached"
    );

    let config = lab.config(CONFIG);
    let polluxd = lab.start(&config);
    lab.assert_reach(&A1, &A2, 1, &polluxd);
    // 1472 bytes of ICMP payload: a 1500-byte packet, a 1514-byte frame.
    let r = lab.ping_df(&A1, &A2, 1472, 3);
    assert!(r.all_received(), "1514-byte frames a1 -> a2: {r:?}");

    // Raising the switch end's MTU beyond what one 2048-byte buffer holds, while polluxd
    // runs, closes the port loudly (down with its reason in ports.list, a warning, XDP
    // detached) rather than leaving the socket to drop what no buffer holds where no
    // drop reason shows it; lowering it again brings the port back.
    lab.topo.set_mtu("host", &a1_if, 9000).unwrap();
    let p = polluxd.wait_port("vm-a1", "closed", Duration::from_secs(5), |p| {
        p["state"] == "down"
    });
    let reason = p["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("interface {a1_if} has MTU 9000, above 1774")),
        "{p}"
    );
    assert_eq!(p["interface_mtu"], 9000, "{p}");
    assert!(
        wait_xdp_gone(lab.host(), &[&a1_if]).is_empty(),
        "the closed port's XDP program is still attached"
    );
    let r = lab.ping(A1.role, A2.ip, 1);
    assert_eq!(r.received, 0, "a closed port forwarded: {r:?}");
    lab.topo.set_mtu("host", &a1_if, 1500).unwrap();
    let p = polluxd.wait_port("vm-a1", "reopened", Duration::from_secs(5), |p| {
        p["state"] == "up"
    });
    assert_eq!(p["interface_mtu"], 1500, "{p}");
    let r = lab.ping_df(&A1, &A2, 1472, 3);
    assert!(r.all_received(), "1514-byte frames after the reopen: {r:?}");
    let (totals, stderr) = stop_cleanly(polluxd);
    eprintln!("polluxd (a port closed for its MTU and reopened):\n{stderr}");
    assert!(
        stderr.contains("port closed until then"),
        "no warning for the closed port:\n{stderr}"
    );
    assert_eq!(
        totals.rx + totals.flood_copies,
        totals.tx + totals.dropped,
        "counters do not balance; stderr:\n{stderr}"
    );

    // With the switch-side MTUs at 9000 before polluxd starts, polluxd refuses to bind:
    // those interfaces could receive frames that no 2048-byte buffer holds, which the
    // socket would drop where no drop reason shows them.
    for vm in [A1, A2] {
        lab.topo.set_mtu("host", &lab.switch_if(&vm), 9000).unwrap();
        lab.topo.set_mtu(vm.role, "eth0", 9000).unwrap();
    }
    let mut refused = Polluxd::spawn(lab.host(), config.path(), &daemon::last_cpu()).unwrap();
    let (status, stderr) = refused
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .unwrap_or_else(|| panic!("polluxd accepted interfaces with MTU 9000 and kept running"));
    assert_eq!(
        status.code(),
        Some(1),
        "polluxd with 9000-byte interfaces: {status}; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("interface {a1_if} has MTU 9000, above 1774")),
        "the refusal does not name the interface and its MTU:\n{stderr}"
    );
    assert!(
        wait_xdp_gone(lab.host(), &[&a1_if, &a2_if]).is_empty(),
        "a refused start left an XDP program attached"
    );
    eprintln!("full_size_frames_and_jumbo took {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn link_down_up_while_traffic_runs() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let lab = new_lab(&[A1, A2, B1]);
    let config = lab.config(CONFIG);
    let mut polluxd = lab.start(&config);
    lab.assert_reach(&A1, &A2, 2, &polluxd);

    // 200 echo requests, 50 ms apart (about 10 s), while a2's switch port flaps.
    let flood = lab
        .vm(&A1)
        .spawn(
            "ping",
            &[
                "-n", "-q", "-c", "200", "-i", "0.05", "-W", "1", "-w", "20", A2.ip,
            ],
        )
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    let a2_if = lab.switch_if(&A2);
    lab.topo.link_down("host", &a2_if).unwrap();
    thread::sleep(Duration::from_secs(1));
    lab.topo.link_up("host", &a2_if).unwrap();
    let out = flood.wait_output(Duration::from_secs(25)).unwrap();
    let summary = netns::parse_ping_summary(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("no ping summary: {out:?}"));
    eprintln!("ping during the link flap: {summary:?}");
    assert_eq!(summary.transmitted, 200, "{summary:?}");

    assert!(
        polluxd.is_running(),
        "polluxd died during the link flap; stderr:\n{}",
        polluxd.stderr_so_far()
    );
    // Forwarding resumed without restarting polluxd.
    lab.assert_reach(&A1, &A2, 5, &polluxd);
    lab.assert_reach(&A2, &A1, 5, &polluxd);
    let (totals, stderr) = stop_cleanly(polluxd);
    assert_eq!(
        totals.rx + totals.flood_copies,
        totals.tx + totals.dropped,
        "counters do not balance; stderr:\n{stderr}"
    );
    eprintln!(
        "polluxd after the flap:\n{stderr}\nlink_down_up_while_traffic_runs took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn sigkill_and_restart() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let lab = new_lab(&[A1, A2, B1]);
    let ifnames: Vec<String> = [A1, A2, B1].iter().map(|vm| lab.switch_if(vm)).collect();
    let ifnames: Vec<&str> = ifnames.iter().map(String::as_str).collect();
    let config = lab.config(CONFIG);

    let polluxd = lab.start(&config);
    // `ip netns exec` execs polluxd, so the PID we signal is polluxd's own.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", polluxd.pid())).unwrap();
    assert_eq!(comm.trim(), "polluxd", "the child is not polluxd itself");
    assert_eq!(
        xdp_attached(lab.host(), &ifnames).unwrap().len(),
        ifnames.len(),
        "polluxd is ready but not every port has its XDP program"
    );
    lab.assert_reach(&A1, &A2, 3, &polluxd);

    let status = polluxd.kill9().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    // The XDP programs are held by BPF links whose only references were polluxd's file
    // descriptors: they must be gone with the process.
    let left = wait_xdp_gone(lab.host(), &ifnames);
    assert!(
        left.is_empty(),
        "XDP programs survived polluxd's SIGKILL on {left:?}"
    );
    let r = lab.ping_vm(&A1, &A2, 2);
    assert_eq!(r.received, 0, "a1 reached a2 with no switch running: {r:?}");

    // A new polluxd on the same configuration, no manual clean-up.
    let polluxd = lab.start(&config);
    lab.assert_reach(&A1, &A2, 3, &polluxd);
    let r = lab.ping_vm(&A1, &B1, 2);
    assert_eq!(r.received, 0, "isolation lost after the restart: {r:?}");
    let (totals, stderr) = stop_cleanly(polluxd);
    assert!(totals.rx > 0 && totals.tx > 0, "{stderr}");
    let left = wait_xdp_gone(lab.host(), &ifnames);
    assert!(
        left.is_empty(),
        "XDP programs left after a clean stop on {left:?}"
    );
    eprintln!("sigkill_and_restart took {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn missing_interface_is_a_clear_error() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    // b1's interface is missing; a1's and a2's exist and are bound first.
    let lab = new_lab(&[A1, A2]);
    let missing = lab.switch_if(&B1);
    let config = lab.config(CONFIG);
    let mut polluxd = Polluxd::spawn(lab.host(), config.path(), &daemon::last_cpu()).unwrap();
    let (status, stderr) = polluxd
        .wait_exit(Duration::from_secs(5))
        .unwrap()
        .unwrap_or_else(|| {
            panic!(
                "polluxd still runs 5 s after starting with interface {missing} missing; \
                 stderr:\n{}",
                polluxd.stderr_so_far()
            )
        });
    assert!(!status.success(), "polluxd exited with {status}: {stderr}");
    assert_eq!(status.code(), Some(1), "{status}: {stderr}");
    assert!(
        stderr.contains(&format!("interface {missing}")),
        "stderr does not name the missing interface {missing}:\n{stderr}"
    );
    assert!(
        !stderr.contains("ready"),
        "polluxd said ready although a port is missing:\n{stderr}"
    );
    let (a1_if, a2_if) = (lab.switch_if(&A1), lab.switch_if(&A2));
    let left = wait_xdp_gone(lab.host(), &[&a1_if, &a2_if]);
    assert!(
        left.is_empty(),
        "the failed start left XDP programs on {left:?}"
    );
    eprintln!(
        "polluxd: {stderr}\nmissing_interface_is_a_clear_error took {:?}",
        started.elapsed()
    );
}

/// A VM's interface deleted and created again (a VM restarted, its tap recreated): polluxd
/// closes the port, then reopens it on the new interface, without a restart.
#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn interface_deleted_and_recreated_without_restart() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab(&[A1, A2, B1]);
    let config = lab.config(CONFIG);
    let mut polluxd = lab.start(&config);
    lab.assert_reach(&A1, &A2, 2, &polluxd);

    let a2_if = lab.switch_if(&A2);
    lab.host().ip(&["link", "del", &a2_if]).unwrap();
    assert!(
        polluxd.wait_stderr_contains(
            &format!("interface {a2_if} vanished"),
            Duration::from_secs(5)
        ),
        "polluxd did not notice the interface vanish:\n{}",
        polluxd.stderr_so_far()
    );
    assert_eq!(
        lab.ping_vm(&A1, &A2, 2).received,
        0,
        "a2 answered without an interface"
    );

    lab.plug(&A2, &VethOptions::default());
    assert!(
        polluxd.wait_stderr_contains(
            &format!("interface {a2_if} is back"),
            Duration::from_secs(5)
        ),
        "polluxd did not reopen the port:\n{}",
        polluxd.stderr_so_far()
    );
    lab.assert_reach(&A1, &A2, 3, &polluxd);
    lab.assert_reach(&A2, &A1, 3, &polluxd);
    assert!(polluxd.is_running(), "polluxd restarted or died");
    let (totals, stderr) = stop_cleanly(polluxd);
    eprintln!("polluxd after the interface came back:\n{stderr}");
    assert!(totals.tx > 0);
}

/// Several queues per interface: with two-queue veths and one AF_XDP socket per queue,
/// several TCP streams (spread over both queues by the sender's flow hash) all get through.
#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn several_queues_per_interface() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab(&[A1, A2]);
    for vm in [A1, A2] {
        two_queue_veth(&lab, &vm);
    }
    let config = lab.config("e2e-multiqueue.toml");
    let polluxd = lab.start(&config);
    let ready = polluxd.stderr_so_far();
    for vm in [A1, A2] {
        for q in 0..2 {
            let line = format!(" on {} queue {q}: ", lab.switch_if(&vm));
            assert!(
                ready.contains(&line),
                "no socket on queue {q} of {}:\n{ready}",
                vm.role
            );
        }
    }
    lab.assert_reach(&A1, &A2, 3, &polluxd);
    let _server = netns::iperf3_server(lab.vm(&A2), A2.ip, 5201).unwrap();
    let summary = netns::iperf3_client_parallel(lab.vm(&A1), A2.ip, 5201, 2, 4)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        summary.received_bps > 0.0,
        "four TCP streams over two queues: {summary:?}"
    );
    let (totals, stderr) = stop_cleanly(polluxd);
    eprintln!("polluxd with two queues per port:\n{stderr}");
    assert!(totals.tx > 0);
}

/// Replaces `vm`'s veth with one of two receive and two transmit queues each side.
fn two_queue_veth(lab: &VmNet, vm: &Vm) {
    let ifname = lab.switch_if(vm);
    lab.host().ip(&["link", "del", &ifname]).unwrap();
    let vm_ns = lab.vm(vm).name().to_owned();
    lab.host()
        .ip(&[
            "link",
            "add",
            &ifname,
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "netns",
            &vm_ns,
        ])
        .unwrap();
    lab.host().ip(&["link", "set", &ifname, "up"]).unwrap();
    lab.topo.set_mac(vm.role, "eth0", vm.mac).unwrap();
    lab.vm(vm).ip(&["link", "set", "eth0", "up"]).unwrap();
    lab.topo
        .addr(vm.role, "eth0", &format!("{}/{PREFIX_LEN}", vm.ip))
        .unwrap();
}

/// polluxd with `--cores 0,1`: a1's two queues on one worker each, a2's one queue on
/// worker 0, so what worker 1 receives from a1 for a2 is handed to worker 0. Ping and
/// iperf3 pass; every worker polls its queues and the handoffs balance.
#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn two_workers_share_the_queues() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab(&[A1, A2]);
    two_queue_veth(&lab, &A1);
    let config = lab.config("e2e-two-workers.toml");
    let polluxd =
        Polluxd::start(lab.host(), config.path(), "0,1").unwrap_or_else(|e| panic!("{e}"));
    let ready = polluxd.stderr_so_far();
    assert!(
        ready.contains("worker 0 on CPU 0, worker 1 on CPU 1"),
        "two pinned workers:\n{ready}"
    );
    let workers = polluxd.call("workers.list", serde_json::json!({}));
    let queues = |w: usize| -> Vec<String> {
        workers["workers"][w]["queues"]
            .as_array()
            .unwrap_or_else(|| panic!("{workers}"))
            .iter()
            .map(|q| format!("{}:{}", q["port"].as_str().unwrap_or("?"), q["queue"]))
            .collect()
    };
    assert_eq!(queues(0), vec!["vm-a1:0", "vm-a2:0"], "{workers}");
    assert_eq!(queues(1), vec!["vm-a1:1"], "{workers}");

    lab.assert_reach(&A1, &A2, 3, &polluxd);
    lab.assert_reach(&A2, &A1, 3, &polluxd);
    let _server = netns::iperf3_server(lab.vm(&A2), A2.ip, 5201).unwrap();
    let summary = netns::iperf3_client_parallel(lab.vm(&A1), A2.ip, 5201, 2, 8)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        summary.received_bps > 0.0,
        "eight TCP streams through two workers: {summary:?}"
    );
    let stats = polluxd.call("workers.list", serde_json::json!({}));
    let rows = stats["workers"].as_array().expect("rows").clone();
    let sum = |key: &str| -> u64 { rows.iter().map(|w| w[key].as_u64().unwrap_or(0)).sum() };
    assert_eq!(sum("handoffs"), sum("handoffs_received"), "{stats}");
    // Not asserted zero: TCP fills any queue, and on a busy machine a worker the scheduler
    // puts aside lets its ring fill; the drops are counted, and TCP recovers.
    let (totals, stderr) = stop_cleanly(polluxd);
    eprintln!("polluxd with two workers:\n{stats:#}\n{stderr}");
    assert!(stderr.contains("polluxd: workers: rx"), "{stderr}");
    assert!(totals.tx > 0);
}

/// Two workers on AF_XDP veths: while iperf3 runs, `polluxctl show workers` lists each
/// receive queue's load (the two queues of vm-a1 on their two workers busy), `polluxctl
/// rebalance` plans but moves nothing (an AF_XDP queue's socket is bound to its
/// worker's UMEM), `polluxctl pin` of such a queue is refused naming the reason, and
/// traffic goes on as before.
#[test]
#[ignore = "needs root: network namespaces and AF_XDP (run with --include-ignored as root)"]
fn two_workers_show_queue_load_and_refuse_to_move_af_xdp_queues() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab(&[A1, A2]);
    two_queue_veth(&lab, &A1);
    let config = lab.config("e2e-two-workers.toml");
    let polluxd =
        Polluxd::start(lab.host(), config.path(), "0,1").unwrap_or_else(|e| panic!("{e}"));
    lab.assert_reach(&A1, &A2, 3, &polluxd);
    let _server = netns::iperf3_server(lab.vm(&A2), A2.ip, 5201).unwrap();
    let summary = netns::iperf3_client_parallel(lab.vm(&A1), A2.ip, 5201, 2, 8)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(summary.received_bps > 0.0, "{summary:?}");
    let list = polluxd.call("workers.list", serde_json::json!({}));
    let queue = |w: usize, port: &str, q: u64| -> serde_json::Value {
        list["workers"][w]["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|x| x["port"] == port && x["queue"] == q))
            .cloned()
            .unwrap_or_else(|| panic!("no {port}:{q} on worker {w}: {list}"))
    };
    for (w, q) in [(0, 0), (1, 1)] {
        let row = queue(w, "vm-a1", q);
        assert_eq!(row["movable"], false, "{row}");
        assert!(
            row["not_movable"]
                .as_str()
                .is_some_and(|r| r.contains("UMEM")),
            "{row}"
        );
    }
    // Which of vm-a1's queues the kernel's RSS gave the streams is its choice: together
    // they received the client's segments.
    let packets = queue(0, "vm-a1", 0)["packets"].as_u64().unwrap_or(0)
        + queue(1, "vm-a1", 1)["packets"].as_u64().unwrap_or(0);
    assert!(packets > 1000, "{list}");
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(daemon::polluxctl_path())
            .arg("--socket")
            .arg(polluxd.socket())
            .args(args)
            .output()
            .expect("polluxctl runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, shown, _) = ctl(&["show", "workers"]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("PINNED  MOVABLE  BUSY%"), "{shown}");
    let (code, plan, err) = ctl(&["rebalance"]);
    assert_eq!(code, Some(0), "{plan}{err}");
    assert!(plan.starts_with("nothing to move"), "{plan}");
    let (code, out, err) = ctl(&["pin", "vm-a1", "0", "--queue", "1"]);
    assert_eq!(code, Some(1), "refused: {out}{err}");
    assert!(err.contains("UMEM"), "{err}");
    let after = polluxd.call("workers.list", serde_json::json!({}));
    assert_eq!(after["workers"][1]["queues"][0]["port"], "vm-a1", "{after}");
    assert_eq!(after["rebalance"]["queues_moved"], 0, "{after}");
    lab.assert_reach(&A1, &A2, 3, &polluxd);
    lab.assert_reach(&A2, &A1, 3, &polluxd);
    eprintln!("{shown}\n{plan}");
    let (totals, _stderr) = stop_cleanly(polluxd);
    assert!(totals.tx > 0);
}

/// A worker that stops polling (here: its thread held in a ptrace stop, as a debugger
/// would) is reported within about a second, in the log and in `workers.list`, while the
/// other worker goes on; when it runs again it is reported back and traffic flows.
#[test]
#[ignore = "needs root: network namespaces and ptrace (run with --include-ignored as root)"]
fn a_stalled_worker_is_reported_and_recovers() {
    let _serial = daemon::setup(TOOLS);
    let lab = new_lab(&[A1, A2]);
    two_queue_veth(&lab, &A1);
    let config = lab.config("e2e-two-workers.toml");
    let mut polluxd =
        Polluxd::start(lab.host(), config.path(), "0,1").unwrap_or_else(|e| panic!("{e}"));
    let stalled_ms = |polluxd: &Polluxd, w: usize| {
        polluxd.call("workers.list", serde_json::json!({}))["workers"][w]["stalled_ms"].as_u64()
    };
    assert_eq!(stalled_ms(&polluxd, 1), None);
    let tid = thread_named(polluxd.pid(), "pollux-worker-1")
        .unwrap_or_else(|| panic!("no thread pollux-worker-1 in polluxd {}", polluxd.pid()));
    let stopped = StoppedThread::stop(tid).unwrap_or_else(|e| panic!("ptrace {tid}: {e}"));
    assert!(
        polluxd.wait_stderr_contains(
            "worker 1 on CPU 1 has not polled for",
            Duration::from_secs(5)
        ),
        "no stall reported:\n{}",
        polluxd.stderr_so_far()
    );
    let ms = stalled_ms(&polluxd, 1).expect("worker 1 is listed as stalled");
    assert!(ms >= 1000, "stalled_ms {ms}");
    assert_eq!(stalled_ms(&polluxd, 0), None, "worker 0 still polls");
    drop(stopped);
    assert!(
        polluxd.wait_stderr_contains(
            "worker 1 on CPU 1 polls again after",
            Duration::from_secs(5)
        ),
        "no recovery reported:\n{}",
        polluxd.stderr_so_far()
    );
    assert_eq!(stalled_ms(&polluxd, 1), None);
    lab.assert_reach(&A1, &A2, 3, &polluxd);
    let (totals, _stderr) = stop_cleanly(polluxd);
    assert!(totals.tx > 0);
}
