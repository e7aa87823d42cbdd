//! End to end with a real front end other than QEMU: DPDK's `dpdk-testpmd` with
//! `net_virtio_user` vdevs on vhost-user ports of the real `polluxd` (release build).
//!
//! ```text
//!   testpmd A (txonly)  ──/tmp/<P>-a.sock (polluxd listens)──┐
//!   testpmd B (rxonly)  ──/tmp/<P>-b.sock (polluxd connects)─┼ polluxd (namespace host)
//!   namespace x1: eth0 198.18.0.2 ──veth── <P>x1 (AF_XDP)    ┘
//! ```
//!
//! One polluxd for the whole suite (it is never restarted; the front ends are):
//! 1. A floods B (64-byte UDP, txonly → rxonly) through two vhost-user ports; testpmd's
//!    own statistics and polluxd's port counters agree on both sides.
//! 2. Reconnect: both testpmds are stopped (SIGTERM) and started again, then killed
//!    (SIGKILL) and started again; each time polluxd counts the disconnect, the ports come
//!    back (polluxd's `client` port by reconnecting to B's new socket, its `server` port
//!    by accepting A's new connection) and traffic flows again.
//! 3. vhost-user ↔ AF_XDP: A floods x1 (testpmd's default 198.18.0.1 → 198.18.0.2), whose
//!    kernel counts the frames, while x1 pings B's MAC (a static neighbour) and B counts
//!    the requests.
//! 4. Multiqueue: both with `queues=2`; polluxd runs queues 0–3 once testpmd's control
//!    queue enabled the second pair, and takes A's frames from both transmit queues.
//!
//! testpmd runs without hugepages (`--no-huge`: its memory is then a memfd, which it can
//! share), both instances on CPU 0 and polluxd's worker on the last CPU. Every testpmd is
//! killed (its process group) on every exit path, and its runtime directory and socket
//! removed. Needs root, `ip`, `ping` and `dpdk-testpmd` (Debian's `dpdk-dev`): fails,
//! never skips, when one is missing.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use pollux_tests::daemon::{self, ConfigFile, Polluxd};
use pollux_tests::netns::{Netns, Proc};
use pollux_tests::vm_lab::{Vm, VmNet};
use serde_json::{json, Value};

const TOOLS: &[&str] = &["ip", "ping", "dpdk-testpmd"];
const CONFIG: &str = "e2e-vhost-user-testpmd.toml";
const A_MAC: &str = "fa:16:3e:1a:00:0a";
const B_MAC: &str = "fa:16:3e:1a:00:0b";
const X1_MAC: &str = "fa:16:3e:1a:00:13";
/// testpmd's txonly frames go from 198.18.0.1 to 198.18.0.2 unless told otherwise.
const X1_IP: &str = "198.18.0.2";
/// The AF_XDP namespace beside the vhost-user ports.
const X1: Vm = Vm {
    role: "x1",
    mac: X1_MAC,
    ip: X1_IP,
};
/// An address x1 reaches B by (a static neighbour: testpmd answers no ARP).
const B_IP: &str = "198.18.0.3";
/// Traffic time per phase: enough for thousands of frames on a loaded machine.
const TRAFFIC: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(15);

/// A testpmd port: its vhost-user socket, whether testpmd listens on it, its MAC and
/// queue pairs.
#[derive(Clone, Copy)]
struct Front<'a> {
    socket: &'a str,
    server: bool,
    mac: &'a str,
    queues: u8,
}

/// A running `dpdk-testpmd`; killed with its process group, and its files removed, on drop.
struct Testpmd {
    proc: Option<Proc>,
    runtime_dir: PathBuf,
    /// The socket it listens on, in server mode.
    listening: Option<PathBuf>,
}

impl Testpmd {
    /// testpmd on `port`'s vhost-user socket in forwarding mode `mode` (`txonly` sends
    /// to `peer`).
    fn start(
        host: &Netns,
        file_prefix: &str,
        port: &Front,
        mode: &str,
        peer: Option<&str>,
    ) -> Testpmd {
        let Front {
            socket,
            server,
            mac,
            queues,
        } = *port;
        let vdev = format!(
            "net_virtio_user0,path={socket},server={},queues={queues},mac={mac}",
            u8::from(server)
        );
        let rxq = format!("--rxq={queues}");
        let txq = format!("--txq={queues}");
        let forward = format!("--forward-mode={mode}");
        let mut args = vec![
            "--lcores",
            "0@0,1@0",
            "--no-pci",
            "--no-huge",
            "-m",
            "128",
            "--no-shconf",
            "--file-prefix",
            file_prefix,
            "--vdev",
            &vdev,
            "--",
            &forward,
            "--stats-period",
            "1",
            "--nb-cores",
            "1",
            "--total-num-mbufs",
            "8192",
            &rxq,
            &txq,
        ];
        let peer = peer.map(|p| format!("--eth-peer=0,{p}"));
        if let Some(p) = &peer {
            args.push(p);
        }
        let proc = host
            .spawn("dpdk-testpmd", &args)
            .expect("start dpdk-testpmd");
        Testpmd {
            proc: Some(proc),
            runtime_dir: PathBuf::from(format!("/var/run/dpdk/{file_prefix}")),
            listening: server.then(|| PathBuf::from(socket)),
        }
    }

    fn proc(&mut self) -> &mut Proc {
        self.proc.as_mut().expect("running")
    }

    /// The last received and sent packet counts testpmd printed (its periodic port
    /// statistics, or the forward statistics it prints when stopped).
    fn counts(out: &str) -> (u64, u64) {
        let last = |key: &str| {
            out.rsplit(key)
                .next()
                .filter(|_| out.contains(key))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (last("RX-packets:"), last("TX-packets:"))
    }

    /// Waits until testpmd's periodic statistics show at least `rx` received packets.
    fn wait_rx(&mut self, rx: u64) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if Self::counts(&self.proc().stdout_so_far()).0 >= rx {
                return true;
            }
            thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops testpmd with SIGTERM (it stops forwarding and prints its forward statistics
    /// first) and returns (received, sent).
    fn stop(self) -> (u64, u64) {
        Self::counts(&self.stop_text())
    }

    /// As [`Testpmd::stop`], returning all it printed.
    fn stop_text(mut self) -> String {
        let proc = self.proc.take().expect("running");
        let out = proc
            .stop(Duration::from_secs(5))
            .expect("stop dpdk-testpmd");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains("Forward statistics for port 0"),
            "testpmd printed no final statistics:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Frames sent from transmit queue `q`, from the per-stream forward statistics
    /// testpmd prints when it stops with more than one queue.
    fn sent_on_queue(text: &str, q: u16) -> u64 {
        let stream = format!("Queue= {q} -> TX Port= 0/Queue= {q}");
        let Some((_, rest)) = text.rsplit_once(&stream) else {
            return 0;
        };
        Self::counts(rest.split("-------\n").nth(1).unwrap_or(rest)).1
    }

    /// Kills testpmd (SIGKILL), as a crashing front end; returns the last statistics it
    /// printed.
    fn kill(mut self) -> (u64, u64) {
        let proc = self.proc.take().expect("running");
        proc.signal(libc::SIGKILL);
        let out = proc
            .stop(Duration::from_secs(5))
            .expect("reap dpdk-testpmd");
        // A killed server leaves its socket file, and DPDK's server mode does not replace
        // a stale one (QEMU does): whoever restarts it removes it, as here.
        if let Some(path) = &self.listening {
            let _ = std::fs::remove_file(path);
        }
        Self::counts(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// A file removed on drop (B's socket, should testpmd die before removing it).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn counter(p: &Value, name: &str) -> u64 {
    p[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {p}"))
}

fn running(p: &Value) -> bool {
    p["vhost_user"]["connected"] == true && p["vhost_user"]["running"] == true
}

/// Waits until port `id`'s counter `name` stops moving (the worker drained its rings).
fn settled(polluxd: &Polluxd, id: &str, name: &str) -> u64 {
    let deadline = Instant::now() + WAIT;
    let mut last = counter(&polluxd.port(id), name);
    loop {
        thread::sleep(Duration::from_millis(300));
        let now = counter(&polluxd.port(id), name);
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "{id}: {name} still moving");
        last = now;
    }
}

/// x1's kernel count of frames received on eth0.
fn x1_rx(x1: &Netns) -> u64 {
    x1.exec_ok("cat", &["/sys/class/net/eth0/statistics/rx_packets"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

struct Lab<'a> {
    host: &'a Netns,
    prefix: String,
    a_sock: String,
    b_sock: String,
    polluxd: Polluxd,
}

impl Lab<'_> {
    /// B (rxonly, listening: polluxd's `client` port connects) and A (txonly to `peer`,
    /// connecting to polluxd's `server` port), both running when this returns.
    fn start_pair(&self, round: u32, peer: &str) -> (Testpmd, Testpmd) {
        self.start_pair_with(round, peer, 1)
    }

    /// As [`Lab::start_pair`], each testpmd with `queues` queue pairs.
    fn start_pair_with(&self, round: u32, peer: &str, queues: u8) -> (Testpmd, Testpmd) {
        let b_port = Front {
            socket: &self.b_sock,
            server: true,
            mac: B_MAC,
            queues,
        };
        let b = Testpmd::start(
            self.host,
            &format!("{}-b{round}", self.prefix),
            &b_port,
            "rxonly",
            None,
        );
        self.polluxd.wait_port("tp-b", "running", WAIT, running);
        let a_port = Front {
            socket: &self.a_sock,
            server: false,
            mac: A_MAC,
            queues,
        };
        let a = Testpmd::start(
            self.host,
            &format!("{}-a{round}", self.prefix),
            &a_port,
            "txonly",
            Some(peer),
        );
        self.polluxd.wait_port("tp-a", "running", WAIT, running);
        (a, b)
    }

    fn wait_disconnects(&self, id: &str, n: u64) {
        let p = self.polluxd.wait_port(id, "disconnected", WAIT, |p| {
            p["vhost_user"]["connected"] == false && p["vhost_user"]["disconnects"] == n
        });
        assert_eq!(p["vhost_user"]["running"], false, "{p}");
    }
}

#[test]
#[ignore = "needs root: network namespaces, AF_XDP and dpdk-testpmd (run with --include-ignored as root)"]
fn testpmd_front_ends_exchange_traffic_reconnect_and_reach_an_afxdp_namespace() {
    let _serial = daemon::setup(TOOLS);
    let started = Instant::now();
    let net = VmNet::new(&[&X1]);
    let prefix = net.prefix().to_owned();
    let x1 = net.vm(&X1);
    x1.ip(&["neigh", "replace", B_IP, "lladdr", B_MAC, "dev", "eth0"])
        .unwrap();
    let host = net.host();

    let a_sock = format!("/tmp/{prefix}-a.sock");
    let b_sock = format!("/tmp/{prefix}-b.sock");
    let _files = [
        TempFile(a_sock.clone().into()),
        TempFile(b_sock.clone().into()),
    ];
    let config = ConfigFile::render(CONFIG, &prefix).unwrap();
    let polluxd =
        Polluxd::start(host, config.path(), &daemon::last_cpu()).unwrap_or_else(|e| panic!("{e}"));
    let lab = Lab {
        host,
        prefix: prefix.clone(),
        a_sock,
        b_sock,
        polluxd,
    };
    let p = lab.polluxd.port("tp-b");
    assert_eq!(p["vhost_user"]["mode"], "client", "{p}");
    assert_eq!(p["vhost_user"]["connected"], false, "{p}");

    // 1. A → B through two vhost-user ports; both stopped cleanly.
    let (a, mut b) = lab.start_pair(0, B_MAC);
    assert!(b.wait_rx(1000), "B received under 1000 frames");
    thread::sleep(TRAFFIC);
    let (_, a_tx) = a.stop();
    let a_rx_pollux = settled(&lab.polluxd, "tp-a", "rx_packets");
    let b_tx_pollux = settled(&lab.polluxd, "tp-b", "tx_packets");
    let (b_rx, _) = b.stop();
    eprintln!(
        "A sent {a_tx}; polluxd took {a_rx_pollux} from A, gave {b_tx_pollux} to B; B got {b_rx}"
    );
    assert!(
        a_rx_pollux > 0 && a_rx_pollux <= a_tx,
        "A sent {a_tx}, polluxd took {a_rx_pollux}"
    );
    assert!(
        b_tx_pollux >= 1000 && b_tx_pollux <= a_rx_pollux,
        "polluxd took {a_rx_pollux} from A and gave {b_tx_pollux} to B"
    );
    assert_eq!(
        b_rx, b_tx_pollux,
        "B's count against polluxd's tp-b tx_packets"
    );
    lab.wait_disconnects("tp-a", 1);
    lab.wait_disconnects("tp-b", 1);

    // 2. Both come back without polluxd restarting, and are killed, and come back again.
    let (a, mut b) = lab.start_pair(1, B_MAC);
    assert!(
        b.wait_rx(1000),
        "after a clean restart, B received under 1000 frames"
    );
    a.kill();
    b.kill();
    lab.wait_disconnects("tp-a", 2);
    lab.wait_disconnects("tp-b", 2);
    let before = counter(&lab.polluxd.port("tp-b"), "tx_packets");
    let (a, mut b) = lab.start_pair(2, B_MAC);
    assert!(
        b.wait_rx(1000),
        "after a kill, B received under 1000 frames"
    );
    a.stop();
    let after = settled(&lab.polluxd, "tp-b", "tx_packets");
    let (b_rx, _) = b.stop();
    assert_eq!(
        b_rx,
        after - before,
        "B's count after the kill against polluxd's"
    );
    lab.wait_disconnects("tp-a", 3);
    lab.wait_disconnects("tp-b", 3);

    // 3. vhost-user ↔ AF_XDP: A floods x1 while x1 pings B.
    let x1_before = x1_rx(x1);
    let x1_tx_before = counter(&lab.polluxd.port("tp-x1"), "tx_packets");
    let b_tx_before = counter(&lab.polluxd.port("tp-b"), "tx_packets");
    let (a, b) = lab.start_pair(3, X1_MAC);
    let pings = x1
        .exec_timeout(
            "ping",
            &["-c", "100", "-i", "0.01", "-W", "1", "-q", B_IP],
            Duration::from_secs(20),
        )
        .unwrap();
    let pings = String::from_utf8_lossy(&pings.stdout).into_owned();
    assert!(pings.contains("100 packets transmitted"), "{pings}");
    a.stop();
    let x1_tx = settled(&lab.polluxd, "tp-x1", "tx_packets") - x1_tx_before;
    let b_tx = settled(&lab.polluxd, "tp-b", "tx_packets") - b_tx_before;
    let (b_rx, _) = b.stop();
    let x1_got = x1_rx(x1) - x1_before;
    eprintln!(
        "polluxd sent {x1_tx} to x1, whose kernel got {x1_got}; B got {b_rx} of x1's 100 pings"
    );
    assert!(x1_tx >= 1000, "polluxd sent {x1_tx} frames of A's to x1");
    assert!(
        x1_got >= 1000 && x1_got <= x1_tx,
        "x1's kernel received {x1_got} of {x1_tx}"
    );
    // x1's pings share its veth with A's flood coming the other way at line rate, and
    // x1's AF_XDP queue has no back-pressure: on a loaded machine a few may be lost at
    // the socket (one run lost 6 at load 12); what reaches polluxd must reach B exactly.
    assert!(b_tx >= 90, "polluxd gave B {b_tx} frames of x1's 100 pings");
    assert_eq!(b_rx, b_tx, "B's count against polluxd's tp-b tx_packets");
    assert!(
        counter(&lab.polluxd.port("tp-x1"), "rx_packets") >= 100,
        "tp-x1 did not take x1's pings"
    );

    // 4. Two queue pairs (VIRTIO_NET_F_MQ, protocol MQ): testpmd enables the second pair
    // through its control queue (SET_VRING_ENABLE); A sends on both transmit queues.
    lab.wait_disconnects("tp-a", 4);
    lab.wait_disconnects("tp-b", 4);
    let a_rx_before = counter(&lab.polluxd.port("tp-a"), "rx_packets");
    let b_tx_before = counter(&lab.polluxd.port("tp-b"), "tx_packets");
    let (a, mut b) = lab.start_pair_with(4, B_MAC, 2);
    let two_pairs =
        |p: &Value| running(p) && p["vhost_user"]["queues_running"] == json!([0, 1, 2, 3]);
    let pa = &lab
        .polluxd
        .wait_port("tp-a", "running two pairs", WAIT, two_pairs);
    lab.polluxd
        .wait_port("tp-b", "running two pairs", WAIT, two_pairs);
    assert!(
        pa["vhost_user"]["feature_names"]
            .as_array()
            .unwrap()
            .contains(&json!("MQ")),
        "{pa}"
    );
    assert!(
        b.wait_rx(1000),
        "with two pairs, B received under 1000 frames"
    );
    let text = a.stop_text();
    let (on_0, on_1) = (
        Testpmd::sent_on_queue(&text, 0),
        Testpmd::sent_on_queue(&text, 1),
    );
    let a_rx = settled(&lab.polluxd, "tp-a", "rx_packets") - a_rx_before;
    let b_tx = settled(&lab.polluxd, "tp-b", "tx_packets") - b_tx_before;
    let (b_rx, _) = b.stop();
    eprintln!(
        "two pairs: A sent {on_0} + {on_1}; polluxd took {a_rx}, gave B {b_tx}; B got {b_rx}"
    );
    assert!(
        on_0 > 0 && on_1 > 0,
        "A did not send on both queues:\n{text}"
    );
    assert!(
        a_rx > on_0.max(on_1) && a_rx <= on_0 + on_1,
        "polluxd took {a_rx} of A's {on_0} + {on_1}: not from both queues"
    );
    assert!(b_tx > 0);
    assert_eq!(b_rx, b_tx, "B's count against polluxd's tp-b tx_packets");

    let Lab { polluxd, .. } = lab;
    let (status, stderr) = polluxd.stop().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "polluxd exited with {status}:\n{stderr}");
    eprintln!(
        "e2e vhost-user testpmd: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
