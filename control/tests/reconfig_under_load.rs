//! Reconfiguration under load, on an in-process engine with `mem` ports.
//!
//! - `unrelated_changes_do_not_disturb_a_stream`: a traffic thread streams unicast frames
//!   from vm1 to vm2 (both on net-a, VLAN 100) while the main thread applies, again and
//!   again, changes that do not touch net-a, vm1 or vm2 (ports and a network added and
//!   removed, another port's MAC and network, another network's VLAN ID, the MAC aging
//!   time, rollbacks). Every frame must reach vm2 exactly once and in order, nothing may
//!   reach any other port, the worker must drop nothing, and every apply must succeed.
//! - `moving_the_receiver_stops_delivery`: moving vm2 to net-b makes it unreachable from
//!   vm1 (its MAC is no longer a static entry of net-a, so vm1's frames are flooded within
//!   net-a: to the uplink, tagged 100, and to vm3), and every frame is accounted for by the
//!   worker's counters (`rx + replicas == tx + drops`); rolling back brings delivery back.
//!
//! Every wait is bounded. The frame rates printed are for information only.

use pollux_testkit::TempDir;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use pollux_control::binding::MemWires;
use pollux_control::engine::{ApplyOptions, ApplyOutcome, Engine, EngineConfig, Initial};
use pollux_control::model::{Binding, DesiredState, FixedIp, Network, NetworkType, Port, Subnet};
use pollux_control::store::Store;
use pollux_dataplane::counters::WorkerCounters;
use pollux_drivers::mem::MemWire;

/// Frames the stream sends at least.
const MIN_FRAMES: u64 = 200_000;
/// Frames the stream sends at most (it runs on while the applies go on, up to this).
const MAX_FRAMES: u64 = 10_000_000;
/// Applies during the stream.
const APPLIES: usize = 200;
/// Frames sent but not yet received, at most: well below the mem rings' 1024 slots.
const WINDOW: u64 = 512;
/// Frames sent in one go, at most.
const BURST: u64 = 256;
/// How long any wait may go without progress.
const STALL: Duration = Duration::from_secs(30);

// The stream is L2 frames with an IPv4 EtherType but no IPv4 header: what is under test
// is switching across reconfiguration, so the ports have port security off.
const BASE: &str = r#"
[[uplinks]]
name = "uplink0"
physnet = "physnet1"
binding = { driver = "mem" }

[[networks]]
id = "net-a"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 100

[[networks]]
id = "net-b"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 200

[[networks]]
id = "net-c"
network_type = "vlan"
physical_network = "physnet1"
segmentation_id = 300

[[subnets]]
id = "sub-a"
network_id = "net-a"
cidr = "10.0.1.0/24"
gateway_ip = "10.0.1.1"

[[subnets]]
id = "sub-b"
network_id = "net-b"
cidr = "10.0.2.0/24"
gateway_ip = "10.0.2.1"

[[subnets]]
id = "sub-c"
network_id = "net-c"
cidr = "10.0.3.0/24"
gateway_ip = "10.0.3.1"

[[ports]]
id = "vm1"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "10.0.1.11" }]
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "vm2"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "10.0.1.12" }]
port_security_enabled = false
binding = { driver = "mem" }

# A bystander on net-a: never changed, must never see the stream.
[[ports]]
id = "vm3"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:03"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "10.0.1.13" }]
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "vm4"
network_id = "net-b"
mac_address = "fa:16:3e:00:00:04"
fixed_ips = [{ subnet_id = "sub-b", ip_address = "10.0.2.14" }]
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "vm5"
network_id = "net-b"
mac_address = "fa:16:3e:00:00:05"
fixed_ips = [{ subnet_id = "sub-b", ip_address = "10.0.2.15" }]
port_security_enabled = false
binding = { driver = "mem" }

[[ports]]
id = "vm6"
network_id = "net-c"
mac_address = "fa:16:3e:00:00:06"
fixed_ips = [{ subnet_id = "sub-c", ip_address = "10.0.3.16" }]
port_security_enabled = false
binding = { driver = "mem" }

# vm2's MAC on another network (each network is its own MAC space): must never see the
# stream to vm2.
[[ports]]
id = "vm7"
network_id = "net-c"
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub-c", ip_address = "10.0.3.17" }]
port_security_enabled = false
binding = { driver = "mem" }

[[routers]]
id = "r1"
interfaces = ["sub-a", "sub-b"]
"#;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const FRAME_LEN: usize = 60;

fn base_state() -> DesiredState {
    let state = DesiredState::from_toml_str(BASE).expect("the base configuration parses");
    // The stream's addresses are those of the configuration.
    let mac = |id: &str| {
        let p = state.ports.iter().find(|p| p.id == id).expect("port");
        parse_mac(&p.mac_address)
    };
    assert_eq!(mac("vm1"), VM1_MAC);
    assert_eq!(mac("vm2"), VM2_MAC);
    state
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, p) in m.iter_mut().zip(s.split(':')) {
        *b = u8::from_str_radix(p, 16).expect("hex byte");
    }
    m
}

/// A 60-byte IPv4-typed Ethernet frame from `src` to `dst` whose payload starts with
/// `seq` (big-endian).
fn frame(dst: [u8; 6], src: [u8; 6], seq: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < FRAME_LEN {
        f.push(f.len() as u8);
    }
    f
}

fn set_seq(f: &mut [u8], seq: u64) {
    f[14..22].copy_from_slice(&seq.to_be_bytes());
}

/// The sequence number of a frame of the stream, tagged or not, if it is one.
fn seq_of(f: &[u8]) -> Option<u64> {
    let body = if f.len() >= 18 && f[12..14] == [0x81, 0x00] {
        [&f[..12], &f[16..]].concat()
    } else {
        f.to_vec()
    };
    (body.len() == FRAME_LEN && body[..6] == VM2_MAC && body[6..12] == VM1_MAC)
        .then(|| u64::from_be_bytes(body[14..22].try_into().expect("8 bytes")))
}

/// The 802.1Q VID of a frame, if tagged.
fn vid_of(f: &[u8]) -> Option<u16> {
    (f.len() >= 18 && f[12..14] == [0x81, 0x00])
        .then(|| u16::from_be_bytes([f[14], f[15]]) & 0x0fff)
}

fn start(tmp: &TempDir, wires: &MemWires) -> Engine {
    start_workers(tmp, wires, 1)
}

/// As [`start`] with `workers` unpinned workers.
fn start_workers(tmp: &TempDir, wires: &MemWires, workers: usize) -> Engine {
    let store = Store::open(&tmp.join("state"), 16).expect("open the store");
    Engine::start(
        &EngineConfig {
            cores: vec![None; workers],
            pool_frames: 8192,
            ..Default::default()
        },
        Initial {
            state: base_state(),
            generation: 1,
            persist: true,
        },
        Some(store),
        Arc::clone(wires),
    )
    .expect("the base configuration starts")
}

/// Takes every far end the engine has put in `wires` since the last call.
fn take_wires(wires: &MemWires) -> Vec<(String, MemWire)> {
    let mut map = wires.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *map).into_iter().collect()
}

/// The wires the main thread watches, with what each received.
#[derive(Debug, Default)]
struct Watched {
    wires: Vec<(String, MemWire)>,
    /// Frames received per port key, and the first few of them (hex), for the report.
    got: BTreeMap<String, u64>,
    samples: Vec<String>,
}

impl Watched {
    fn add(&mut self, new: Vec<(String, MemWire)>) {
        for (key, wire) in new {
            self.got.entry(key.clone()).or_default();
            self.wires.push((key, wire));
        }
    }

    /// Drains every watched wire; returns how many frames that took.
    fn drain(&mut self) -> u64 {
        let mut total = 0;
        for (key, wire) in &mut self.wires {
            let samples = &mut self.samples;
            let n = wire.drain(usize::MAX, |f| {
                if samples.len() < 8 {
                    samples.push(format!("{key}: {:02x?}", &f[..f.len().min(24)]));
                }
            }) as u64;
            *self.got.get_mut(key.as_str()).expect("key") += n;
            total += n;
        }
        total
    }

    fn total(&self) -> u64 {
        self.got.values().sum()
    }
}

// ---------------------------------------------------------------------------------------
// Test 1: unrelated changes under load.

/// What the traffic thread saw.
#[derive(Debug, Default)]
struct Report {
    sent: u64,
    received: u64,
    /// Frames at vm2 whose sequence number was not the next expected (loss shows as a gap,
    /// a duplicate or reordering as a step back), and the first few of them.
    anomalies: u64,
    first_anomalies: Vec<String>,
    /// Frames at vm2 that are not frames of the stream.
    foreign: u64,
    /// Frames at vm1 (the sender): none may come back.
    at_vm1: u64,
    elapsed: Duration,
    /// Why the stream gave up, if it did.
    stalled: Option<String>,
}

/// Streams frames vm1 → vm2 until at least `MIN_FRAMES` are sent and `stop` is set (or
/// `MAX_FRAMES` are sent), keeping at most `WINDOW` in flight, then waits for the last.
fn stream(mut vm1: MemWire, mut vm2: MemWire, stop: &AtomicBool) -> Report {
    let mut r = Report::default();
    let mut buf = frame(VM2_MAC, VM1_MAC, 0);
    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let mut got = 0u64;
        vm2.drain(usize::MAX, |f| {
            got += 1;
            match seq_of(f).filter(|_| vid_of(f).is_none()) {
                Some(seq) if seq == r.received => r.received += 1,
                Some(seq) => {
                    r.anomalies += 1;
                    if r.first_anomalies.len() < 8 {
                        r.first_anomalies
                            .push(format!("expected {}, got {seq}", r.received));
                    }
                    // Resynchronise, so that one gap counts once.
                    r.received = seq + 1;
                }
                None => r.foreign += 1,
            }
        });
        r.at_vm1 += vm1.drain(usize::MAX, |_| {}) as u64;
        if got > 0 {
            last_progress = Instant::now();
        }
        let done_sending =
            r.sent >= MAX_FRAMES || (r.sent >= MIN_FRAMES && stop.load(Ordering::Relaxed));
        if done_sending && r.received >= r.sent {
            break;
        }
        let in_flight = r.sent.saturating_sub(r.received);
        let mut pushed = 0;
        if !done_sending && in_flight < WINDOW {
            let burst = BURST.min(WINDOW - in_flight).min(MAX_FRAMES - r.sent);
            for _ in 0..burst {
                set_seq(&mut buf, r.sent);
                if !vm1.send(&buf) {
                    break;
                }
                r.sent += 1;
                pushed += 1;
            }
        }
        if got == 0 && pushed == 0 {
            if last_progress.elapsed() > STALL {
                r.stalled = Some(format!(
                    "no frame reached vm2 for {STALL:?}: sent {}, received {}",
                    r.sent, r.received
                ));
                break;
            }
            thread::yield_now();
        }
    }
    r.elapsed = started.elapsed();
    r
}

/// Chooses the changes: none touches net-a, vm1, vm2, vm3 or the router.
struct Churn {
    rng: u64,
    n: u32,
}

impl Churn {
    fn rand(&mut self) -> u64 {
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn fresh(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    /// A free address in subnet `prefix.0/24` (hosts .100-.250).
    fn free_ip(state: &DesiredState, prefix: &str) -> String {
        (100..=250)
            .map(|h| format!("{prefix}.{h}"))
            .find(|ip| {
                !state
                    .ports
                    .iter()
                    .any(|p| p.fixed_ips.iter().any(|f| &f.ip_address == ip))
            })
            .expect("a free address")
    }

    fn add_port(&mut self, s: &mut DesiredState, id: String, network: &str) {
        let (subnet, prefix) = match network {
            "net-b" => ("sub-b", "10.0.2"),
            "net-c" => ("sub-c", "10.0.3"),
            _ => ("sub-x", "10.0.9"),
        };
        let n = self.fresh();
        s.ports.push(Port {
            id,
            network_id: network.into(),
            mac_address: format!("fa:16:3e:10:{:02x}:{:02x}", (n >> 8) as u8, n as u8),
            fixed_ips: vec![FixedIp {
                subnet_id: subnet.into(),
                ip_address: Self::free_ip(s, prefix),
            }],
            security_groups: Vec::new(),
            port_security_enabled: true,
            allowed_address_pairs: Vec::new(),
            binding_host_id: None,
            binding: Some(Binding::Mem {}),
            dns_name: None,
            extra_dhcp_opts: Vec::new(),
            qos_policy_id: None,
            device_id: None,
            project_id: None,
        });
    }

    /// The next change: a description, and either a state or a generation to roll back to.
    fn next(&mut self, engine: &Engine) -> (String, Result<DesiredState, u64>) {
        let mut s = engine.state().clone();
        let has_x = s.networks.iter().any(|n| n.id == "net-x");
        let extras: Vec<String> = s
            .ports
            .iter()
            .filter(|p| p.id.starts_with("extra") || p.id.starts_with("xp"))
            .map(|p| p.id.clone())
            .collect();
        let mut op = self.rand() % 9;
        if op == 2 && extras.is_empty() {
            op = 0;
        }
        let what = match op {
            0 | 1 => {
                let nets: &[&str] = if has_x {
                    &["net-b", "net-c", "net-x"]
                } else {
                    &["net-b", "net-c"]
                };
                let net = nets[(self.rand() % nets.len() as u64) as usize];
                let id = format!("extra{}", self.fresh());
                self.add_port(&mut s, id.clone(), net);
                format!("add port {id} on {net}")
            }
            2 => {
                let id = &extras[(self.rand() % extras.len() as u64) as usize];
                s.ports.retain(|p| &p.id != id);
                format!("remove port {id}")
            }
            3 if has_x => {
                s.networks.retain(|n| n.id != "net-x");
                s.subnets.retain(|x| x.network_id != "net-x");
                s.ports.retain(|p| p.network_id != "net-x");
                "remove network net-x with its subnet and ports".into()
            }
            3 => {
                s.networks.push(Network {
                    id: "net-x".into(),
                    name: None,
                    network_type: NetworkType::Vlan,
                    physical_network: Some("physnet1".into()),
                    segmentation_id: Some(400),
                    mtu: None,
                    admin_state_up: true,
                    dns_domain: None,
                    qos_policy_id: None,
                });
                s.subnets.push(Subnet {
                    id: "sub-x".into(),
                    network_id: "net-x".into(),
                    ip_version: None,
                    cidr: "10.0.9.0/24".into(),
                    gateway_ip: Some("10.0.9.1".into()),
                    enable_dhcp: true,
                    dns_nameservers: Vec::new(),
                    host_routes: Vec::new(),
                    allocation_pools: None,
                    dhcp_server_ip: None,
                    dhcp_lease_duration: None,
                    dhcp_serve_unknown: false,
                });
                let id = format!("xp{}", self.fresh());
                self.add_port(&mut s, id, "net-x");
                "add network net-x (VLAN 400) with a subnet and a port".into()
            }
            4 => {
                let p = s.ports.iter_mut().find(|p| p.id == "vm5").expect("vm5");
                p.mac_address = if p.mac_address == "fa:16:3e:00:00:05" {
                    "fa:16:3e:00:01:05".into()
                } else {
                    "fa:16:3e:00:00:05".into()
                };
                format!("change vm5's MAC to {}", p.mac_address)
            }
            5 => {
                let p = s.ports.iter_mut().find(|p| p.id == "vm4").expect("vm4");
                let (net, sub, ip) = if p.network_id == "net-b" {
                    ("net-c", "sub-c", "10.0.3.14")
                } else {
                    ("net-b", "sub-b", "10.0.2.14")
                };
                p.network_id = net.into();
                p.fixed_ips = vec![FixedIp {
                    subnet_id: sub.into(),
                    ip_address: ip.into(),
                }];
                format!("move vm4 to {net}")
            }
            6 => {
                let n = s.networks.iter_mut().find(|n| n.id == "net-c").expect("c");
                let vid = if n.segmentation_id == Some(300) {
                    301
                } else {
                    300
                };
                n.segmentation_id = Some(vid);
                format!("set net-c's VLAN ID to {vid}")
            }
            7 => {
                let history = engine.history();
                let older: Vec<u64> = history
                    .iter()
                    .map(|h| h.0)
                    .filter(|&g| g != engine.generation())
                    .collect();
                if !older.is_empty() {
                    let g = older[(self.rand() % older.len() as u64) as usize];
                    return (format!("roll back to generation {g}"), Err(g));
                }
                s.l2.mac_aging_secs += 1;
                format!("set l2.mac_aging_secs to {}", s.l2.mac_aging_secs)
            }
            _ => {
                let mut secs = 60 + (self.rand() % 3600) as i64;
                if secs == s.l2.mac_aging_secs {
                    secs += 1;
                }
                s.l2.mac_aging_secs = secs;
                format!("set l2.mac_aging_secs to {secs}")
            }
        };
        (what, Ok(s))
    }
}

/// The parts of a state the stream depends on.
fn stream_view(s: &DesiredState) -> String {
    let a = s.networks.iter().find(|n| n.id == "net-a");
    let ports: Vec<_> = s
        .ports
        .iter()
        .filter(|p| ["vm1", "vm2", "vm3"].contains(&p.id.as_str()) || p.network_id == "net-a")
        .collect();
    format!("{a:?} {ports:?} {:?}", s.uplinks)
}

fn counters_line(c: &WorkerCounters) -> String {
    format!(
        "rx {} tx {} replicas {} dropped {} {:?}",
        c.rx_packets.get(),
        c.tx_packets.get(),
        c.replicas.get(),
        c.dropped_total(),
        c.drop_summary()
    )
}

#[test]
fn unrelated_changes_do_not_disturb_a_stream() {
    unrelated_changes(1);
}

/// The same with two workers: ports are spread over them, so the stream (and the ports
/// that come and go) cross from one worker to the other through the handoff rings.
#[test]
fn unrelated_changes_do_not_disturb_a_stream_through_two_workers() {
    unrelated_changes(2);
}

fn unrelated_changes(workers: usize) {
    let tmp = TempDir::new();
    let wires = MemWires::default();
    let mut engine = start_workers(&tmp, &wires, workers);
    let per_worker = engine.worker_counters();
    // Summed now: each worker's counters are live, a sum is a copy.
    let sum = || WorkerCounters::summed(per_worker.iter().map(|c| &**c), 0);
    let base_view = stream_view(engine.state());

    let mut watched = Watched::default();
    let mut initial: BTreeMap<String, MemWire> = take_wires(&wires).into_iter().collect();
    let vm1 = initial.remove("port:vm1").expect("vm1's wire");
    let vm2 = initial.remove("port:vm2").expect("vm2's wire");
    assert!(initial.contains_key("port:vm3") && initial.contains_key("uplink:uplink0"));
    watched.add(initial.into_iter().collect());

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("vm1-to-vm2".into())
            .spawn(move || stream(vm1, vm2, &stop))
            .expect("spawn the traffic thread")
    };

    let mut churn = Churn {
        rng: 0x9e37_79b9_7f4a_7c15,
        n: 0,
    };
    let mut failures: Vec<String> = Vec::new();
    let mut during_stream = 0usize;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    for i in 0..APPLIES {
        let (what, change) = churn.next(&engine);
        let kind: String = what
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        *kinds.entry(kind).or_default() += 1;
        let before = engine.generation();
        let result = match change {
            Ok(state) => engine.apply(state, ApplyOptions::default()),
            Err(g) => engine.rollback(g, ApplyOptions::default()),
        };
        match result {
            Ok(ApplyOutcome { applied, .. }) => {
                if !applied && !what.starts_with("roll back") {
                    failures.push(format!("apply {i} ({what}) changed nothing"));
                }
                if applied {
                    assert_eq!(engine.generation(), before + 1);
                }
            }
            Err(e) => failures.push(format!("apply {i} ({what}) failed: {e}")),
        }
        assert_eq!(
            stream_view(engine.state()),
            base_view,
            "apply {i} ({what}) touched what the stream depends on (a bug in the test)"
        );
        if !traffic.is_finished() {
            during_stream += 1;
        }
        watched.add(take_wires(&wires));
        watched.drain();
    }
    let applies_elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);

    // The traffic thread stops on its own within STALL of its last progress.
    let deadline = Instant::now() + STALL + Duration::from_secs(30);
    while !traffic.is_finished() {
        watched.drain();
        assert!(
            Instant::now() < deadline,
            "the traffic thread did not finish; counters: {}",
            counters_line(&sum())
        );
        thread::sleep(Duration::from_millis(1));
    }
    let report = traffic.join().expect("the traffic thread panicked");
    engine.shutdown().expect("the engine shuts down");
    watched.add(take_wires(&wires));
    watched.drain();
    let counters = sum();
    if workers > 1 {
        let handed: u64 = per_worker.iter().map(|c| c.handoffs.get()).sum();
        let received: u64 = per_worker.iter().map(|c| c.handoffs_received.get()).sum();
        assert_eq!(handed, received, "every frame handed off was taken");
        assert!(
            per_worker
                .iter()
                .all(|c| c.rx_packets.get() + c.handoffs_received.get() > 0)
                || handed == 0,
            "the workers share the work"
        );
    }

    let fps = report.received as f64 / report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "stream: {} frames vm1 -> vm2 in {:.2?} ({:.0} frames/s); {during_stream} of {APPLIES} \
         applies during the stream ({:.2?} for all, {:.2?} each); changes: {kinds:?}",
        report.received,
        report.elapsed,
        fps,
        applies_elapsed,
        applies_elapsed / APPLIES as u32
    );
    println!("worker: {}", counters_line(&counters));
    for (w, c) in per_worker.iter().enumerate() {
        println!(
            "worker {w}: rx {} tx {} handoffs {} handed in {}",
            c.rx_packets.get(),
            c.tx_packets.get(),
            c.handoffs.get(),
            c.handoffs_received.get()
        );
    }

    // Every problem at once: a stall (loss) usually comes with frames elsewhere.
    let mut problems = Vec::new();
    if !failures.is_empty() {
        problems.push(format!("applies failed: {failures:#?}"));
    }
    if let Some(why) = &report.stalled {
        problems.push(format!("the stream stalled (frames lost?): {why}"));
    }
    if report.anomalies > 0 || report.foreign > 0 {
        problems.push(format!(
            "frames at vm2 lost, duplicated or reordered ({}) or not the stream's ({}); \
             first: {:?}",
            report.anomalies, report.foreign, report.first_anomalies
        ));
    }
    if report.received != report.sent {
        problems.push(format!(
            "vm2 received {} of {} frames",
            report.received, report.sent
        ));
    }
    if report.at_vm1 > 0 {
        problems.push(format!("{} frames came back to vm1", report.at_vm1));
    }
    if watched.total() > 0 {
        problems.push(format!(
            "frames reached other ports: {:?}; first: {:#?}",
            watched
                .got
                .iter()
                .filter(|(_, n)| **n > 0)
                .collect::<Vec<_>>(),
            watched.samples
        ));
    }
    if counters.dropped_total() > 0 || !counters.drop_summary().is_empty() {
        problems.push(format!(
            "the worker dropped frames: {:?}",
            counters.drop_summary()
        ));
    }
    let (rx, tx, replicas) = (
        counters.rx_packets.get(),
        counters.tx_packets.get(),
        counters.replicas.get(),
    );
    if (rx, tx, replicas) != (report.sent, report.sent, 0) {
        problems.push(format!(
            "the worker counted rx {rx}, tx {tx}, replicas {replicas} for {} frames sent",
            report.sent
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\nstream: {report:?}\nworker: {}",
        problems.len(),
        problems.join("\n"),
        counters_line(&counters)
    );
}

// ---------------------------------------------------------------------------------------
// Test 2: a change that does touch the stream.

/// Counter values at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    rx: u64,
    tx: u64,
    replicas: u64,
    dropped: u64,
}

impl Totals {
    fn read(c: &WorkerCounters) -> Totals {
        // Read drops and tx before rx: with rx read last, a frame in flight never makes
        // the right side look larger than the left.
        let dropped = c.dropped_total();
        let tx = c.tx_packets.get();
        let replicas = c.replicas.get();
        let rx = c.rx_packets.get();
        Totals {
            rx,
            tx,
            replicas,
            dropped,
        }
    }

    fn conserved(&self) -> bool {
        self.rx + self.replicas == self.tx + self.dropped
    }

    fn minus(&self, o: &Totals) -> Totals {
        Totals {
            rx: self.rx - o.rx,
            tx: self.tx - o.tx,
            replicas: self.replicas - o.replicas,
            dropped: self.dropped - o.dropped,
        }
    }
}

/// Every wire of the engine, with the stream frames each received (by sequence number).
#[derive(Debug, Default)]
struct AllWires {
    wires: BTreeMap<String, MemWire>,
    /// Stream frames per port key: (seq, vid).
    got: BTreeMap<String, Vec<(u64, Option<u16>)>>,
    /// Frames that are not stream frames, per port key.
    foreign: BTreeMap<String, u64>,
}

impl AllWires {
    fn drain(&mut self) -> u64 {
        let mut total = 0;
        for (key, wire) in &mut self.wires {
            let got = self.got.entry(key.clone()).or_default();
            let foreign = self.foreign.entry(key.clone()).or_default();
            total += wire.drain(usize::MAX, |f| match seq_of(f) {
                Some(seq) => got.push((seq, vid_of(f))),
                None => *foreign += 1,
            }) as u64;
        }
        total
    }

    fn in_range(&self, key: &str, range: &std::ops::Range<u64>) -> Vec<(u64, Option<u16>)> {
        self.got
            .get(key)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|(s, _)| range.contains(s))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn frames_seen(&self) -> u64 {
        self.got.values().map(|v| v.len() as u64).sum::<u64>() + self.foreign.values().sum::<u64>()
    }
}

/// Sends frames `seqs` from vm1 to vm2's MAC in bursts, each once the worker has received
/// the previous one, draining every wire meanwhile; then waits until the worker has
/// received them all and its counters balance.
fn send_phase(
    vm1: &mut MemWire,
    all: &mut AllWires,
    counters: &WorkerCounters,
    seqs: std::ops::Range<u64>,
) {
    let base_rx = counters.rx_packets.get();
    let mut buf = frame(VM2_MAC, VM1_MAC, 0);
    let mut seq = seqs.start;
    let mut last_progress = Instant::now();
    let mut last_rx = base_rx;
    loop {
        all.drain();
        let rx = counters.rx_packets.get();
        if rx != last_rx {
            last_rx = rx;
            last_progress = Instant::now();
        }
        let sent = seq - seqs.start;
        if rx - base_rx >= sent {
            if seq == seqs.end {
                break;
            }
            let burst = BURST.min(seqs.end - seq);
            for _ in 0..burst {
                set_seq(&mut buf, seq);
                assert!(vm1.send(&buf), "vm1's ring is full with nothing in flight");
                seq += 1;
            }
            last_progress = Instant::now();
        } else if last_progress.elapsed() > STALL {
            panic!(
                "the worker received {} of {sent} frames of {seqs:?} and then nothing for \
                 {STALL:?}; counters: {}",
                rx - base_rx,
                counters_line(counters)
            );
        } else {
            thread::yield_now();
        }
    }
    // Received; now let the outputs and the counters catch up.
    let deadline = Instant::now() + STALL;
    loop {
        all.drain();
        let t = Totals::read(counters);
        if t.conserved() && all.frames_seen() == t.tx {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters do not balance after {STALL:?}: {t:?} ({}), frames seen on the wires: {}",
            counters_line(counters),
            all.frames_seen()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn moving_the_receiver_stops_delivery() {
    const N: u64 = 10_000;
    let tmp = TempDir::new();
    let wires = MemWires::default();
    let mut engine = start(&tmp, &wires);
    let counters = engine.counters();
    let mut all = AllWires {
        wires: take_wires(&wires).into_iter().collect(),
        ..AllWires::default()
    };
    let mut vm1 = all.wires.remove("port:vm1").expect("vm1's wire");

    // Phase 1: vm2 on net-a gets every frame, in order, and no one else does.
    let p1 = 0..N;
    let t0 = Totals::read(&counters);
    send_phase(&mut vm1, &mut all, &counters, p1.clone());
    let t1 = Totals::read(&counters);
    let d1 = t1.minus(&t0);
    let at_vm2: Vec<u64> = all.in_range("port:vm2", &p1).iter().map(|f| f.0).collect();
    assert_eq!(
        at_vm2,
        p1.clone().collect::<Vec<_>>(),
        "phase 1: vm2 got {} frames",
        at_vm2.len()
    );
    assert_eq!(
        d1,
        Totals {
            rx: N,
            tx: N,
            replicas: 0,
            dropped: 0
        },
        "phase 1 counters: {}",
        counters_line(&counters)
    );
    assert_eq!(
        all.frames_seen(),
        N,
        "phase 1: frames elsewhere: {:?}",
        all.got.keys()
    );

    // Move vm2 to net-b.
    let mut moved = engine.state().clone();
    let vm2 = moved.ports.iter_mut().find(|p| p.id == "vm2").expect("vm2");
    vm2.network_id = "net-b".into();
    vm2.fixed_ips = vec![FixedIp {
        subnet_id: "sub-b".into(),
        ip_address: "10.0.2.50".into(),
    }];
    let outcome = engine
        .apply(moved, ApplyOptions::default())
        .expect("moving vm2 to net-b is valid");
    assert!(outcome.applied && outcome.generation == 2, "{outcome:?}");
    assert!(
        take_wires(&wires).is_empty(),
        "a network change must not reopen the port"
    );

    // Phase 2: vm2's MAC is unknown on net-a: flooded to net-a's other ports (the uplink,
    // tagged 100, and vm3), never to vm2 or any port of another network.
    let p2 = N..2 * N;
    send_phase(&mut vm1, &mut all, &counters, p2.clone());
    let t2 = Totals::read(&counters);
    let d2 = t2.minus(&t1);
    let per_port: BTreeMap<&String, usize> = all
        .got
        .keys()
        .map(|k| (k, all.in_range(k, &p2).len()))
        .filter(|(_, n)| *n > 0)
        .collect();
    println!(
        "phase 2 (vm2 on net-b): counters {d2:?}, drops {:?}, frames per port {per_port:?}",
        counters.drop_summary()
    );
    assert!(
        all.in_range("port:vm2", &p2).is_empty(),
        "vm2 is on net-b but still got frames sent to it on net-a"
    );
    assert_eq!(d2.rx, N, "phase 2: the worker received {} of {N}", d2.rx);
    assert!(
        d2.conserved(),
        "phase 2: rx + replicas != tx + drops: {d2:?}"
    );
    for key in per_port.keys() {
        assert!(
            *key == "uplink:uplink0" || *key == "port:vm3",
            "phase 2: frames reached {key}, which is not on net-a: {per_port:?}"
        );
    }
    assert!(
        all.in_range("uplink:uplink0", &p2)
            .iter()
            .all(|f| f.1 == Some(100)),
        "phase 2: frames on the uplink not tagged with net-a's VLAN 100"
    );
    // Every frame is explained: sent out on net-a's other ports or dropped with a reason.
    let copies =
        (all.in_range("uplink:uplink0", &p2).len() + all.in_range("port:vm3", &p2).len()) as u64;
    assert_eq!(copies, d2.tx, "phase 2: frames seen on the wires vs tx");
    assert_eq!(copies + d2.dropped, d2.rx + d2.replicas);
    for key in ["uplink:uplink0", "port:vm3"] {
        let mut seqs: Vec<u64> = all.in_range(key, &p2).iter().map(|f| f.0).collect();
        let n = seqs.len();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "phase 2: duplicates at {key}");
    }

    // Roll back to generation 1: vm2 is on net-a again and gets every frame.
    let outcome = engine
        .rollback(1, ApplyOptions::default())
        .expect("rolling back to generation 1");
    assert!(outcome.applied && outcome.generation == 3, "{outcome:?}");
    let p3 = 2 * N..3 * N;
    send_phase(&mut vm1, &mut all, &counters, p3.clone());
    let d3 = Totals::read(&counters).minus(&t2);
    let at_vm2: Vec<u64> = all.in_range("port:vm2", &p3).iter().map(|f| f.0).collect();
    assert_eq!(
        at_vm2,
        p3.clone().collect::<Vec<_>>(),
        "phase 3: vm2 got {} frames",
        at_vm2.len()
    );
    assert_eq!(
        d3,
        Totals {
            rx: N,
            tx: N,
            replicas: 0,
            dropped: 0
        },
        "phase 3 counters: {}",
        counters_line(&counters)
    );
    let elsewhere: usize = all
        .got
        .iter()
        .filter(|(k, _)| *k != "port:vm2")
        .map(|(k, _)| all.in_range(k, &p3).len())
        .sum();
    assert_eq!(elsewhere, 0, "phase 3: frames reached other ports");
    assert_eq!(
        all.foreign.values().sum::<u64>(),
        0,
        "frames that are not the stream's"
    );
    assert_eq!(vm1.drain(usize::MAX, |_| {}), 0, "frames came back to vm1");
    engine.shutdown().expect("the engine shuts down");
}
