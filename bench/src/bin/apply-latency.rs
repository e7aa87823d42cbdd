//! The control-plane benchmark (issue #5): how long `config.apply` takes on a large
//! configuration.
//!
//! Generates a desired state with one `mem` uplink on `physnet1`, `--networks` networks
//! (VLAN IDs 1..=4094 on `physnet1`, `local` beyond that) with one subnet each inside
//! 198.18.0.0/15 (a /24 when they fit, else the longest prefix that does: 1,000 networks
//! get a /25 each) and gateway `.1`, `--ports` `mem` ports spread round-robin over the
//! networks (unique MAC `fa:16:3e:..`, one fixed IP each, two security groups),
//! and `--routers` routers, router `i` with an interface on subnet `i`. Then it starts the
//! `polluxd` built next to this binary on a fresh socket and state directory (no
//! `--config`: it starts empty at generation 0) and measures, over the socket:
//!
//! 1. the full apply: one `config.apply` of the whole state (validate, diff, compile, open
//!    every port, persist, publish), and the size of the persisted generation file;
//! 2. a no-op apply (the active state again) and a dry run of a one-port change, p50 each;
//! 3. `--changes` one-port changes, each a `config.apply` of the whole state with one
//!    change (cycling: a port's fixed IP, a port's MAC, remove a port, add a port):
//!    p50/p90/p99/max (nearest rank), and p50 per kind of change;
//! 4. sustained: the same changes back to back for `--keep-going-secs`: applies per
//!    second (client encoding included, as a real client would see it).
//!
//! Latencies of phases 1-3 are the request on the socket: the request line is encoded
//! before the clock starts and the reply decoded after it stops. The end is a check that
//! `config.get` returns exactly the state the benchmark thinks is active, a SIGTERM to
//! `polluxd` (which must exit 0), a human summary and one line of JSON with every figure.
//!
//! With `--method put` phases 2 and 3 send each change as the one object instead
//! (`ports.put`, `ports.delete` for a removal), the same changes in the same order, and a
//! fourth phase runs `--clients` clients at once for `--keep-going-secs`, each sending
//! `ports.put` of ports of its own back to back: puts per second and each put's latency.
//!
//! Usage: `apply-latency [--ports N] [--networks N] [--routers N] [--changes N]
//! [--keep-going-secs S] [--method apply|put] [--polluxd PATH]`; `bench/apply-latency.sh` builds both binaries
//! and runs it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use pollux_control::client::Client;
use pollux_control::model::{
    Binding, DesiredState, Direction, FixedIp, Network, NetworkType, Port, ProtocolSpec, Router,
    SecurityGroup, SecurityGroupRule, Subnet, Uplink,
};
use serde_json::{json, Value};

/// First address of the benchmark range (RFC 2544's 198.18.0.0/15).
const RANGE_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
/// Addresses in 198.18.0.0/15.
const RANGE_SIZE: u64 = 1 << 17;
/// Spare host addresses kept per subnet for the changes (fixed IP moves, added ports).
const SPARES: usize = 2;
/// MACs of ports created by changes start here (initial ports use 1..=ports).
const CHANGE_MAC_BASE: u32 = 0x80_0000;
/// MACs of the concurrent clients' changes: client `c`'s `n`-th is this + c << 16 + n.
const CONCURRENT_MAC_BASE: u32 = 0xc0_0000;
/// How long polluxd may take to report `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long polluxd may take to exit after SIGTERM (it closes 10,000 ports).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Socket timeout of the client (a full apply at a large size may be slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Last lines of polluxd's stderr kept for error messages.
const LOG_LINES: usize = 200;

/// Measures `config.apply` latency of polluxd on a large generated configuration.
#[derive(Debug, Parser)]
#[command(name = "apply-latency")]
struct Args {
    /// VM ports (`mem`), spread round-robin over the networks.
    #[arg(long, default_value_t = 10_000)]
    ports: usize,
    /// Networks (VLAN 1..=4094 on physnet1, `local` beyond), one subnet each.
    #[arg(long, default_value_t = 1_000)]
    networks: usize,
    /// Routers; router i has an interface on subnet i (at most --networks).
    #[arg(long, default_value_t = 1_000)]
    routers: usize,
    /// One-port changes measured one by one.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Seconds of back-to-back one-port changes for the sustained rate.
    #[arg(long, default_value_t = 5.0)]
    keep_going_secs: f64,
    /// With `--method put`: clients sending `ports.put` at once for `--keep-going-secs`
    /// after the sustained phase (each changing the MACs of ports of its own); 0 or 1:
    /// no such phase.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Samples of the no-op apply and of the dry run.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// The polluxd binary (default: `polluxd` next to this binary).
    #[arg(long, value_name = "PATH")]
    polluxd: Option<PathBuf>,
    /// CPU of polluxd's worker (default: the last CPU).
    #[arg(long, value_name = "CPU")]
    cores: Option<String>,
    /// How the one-port changes of phases 2 and 3 are sent: `apply` (a `config.apply` of
    /// the whole state) or `put` (the one object: `ports.put`, or `ports.delete` for a
    /// removal).
    #[arg(long, value_name = "METHOD", default_value = "apply")]
    method: Method,
}

/// How one-port changes are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Method {
    /// `config.apply` of the whole state.
    Apply,
    /// `ports.put` / `ports.delete` of the one port.
    Put,
}

/// The port the last change touched.
#[derive(Clone, Debug)]
enum Touched {
    /// Created or replaced: its index in the state.
    Put(usize),
    /// Removed: its id.
    Delete(String),
}

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apply-latency: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------
// The configuration.

/// How the generated configuration is laid out.
#[derive(Clone, Copy, Debug)]
struct Layout {
    networks: usize,
    /// Prefix length of every subnet.
    prefix: u8,
    /// Ports per network at most (the round-robin's rows).
    per_network: usize,
}

impl Layout {
    fn new(ports: usize, networks: usize, routers: usize) -> Res<Layout> {
        if networks == 0 {
            return Err("--networks must be at least 1".into());
        }
        if ports == 0 {
            return Err("--ports must be at least 1".into());
        }
        if routers > networks {
            return Err(format!(
                "--routers {routers} exceeds --networks {networks} (router i has an interface \
                 on subnet i)"
            ));
        }
        if ports >= CHANGE_MAC_BASE as usize {
            return Err(format!("--ports {ports} is too many for the MAC scheme"));
        }
        let per_network = ports.div_ceil(networks);
        // Gateway, the ports and the spares, plus network and broadcast addresses and the
        // DHCP server's (the last host address).
        let needed = (per_network + 1 + SPARES + 3) as u64;
        let mut prefix = 24u8;
        while prefix > 15 && (1u64 << (32 - prefix)) < needed {
            prefix -= 1;
        }
        while prefix < 30 && networks as u64 * (1u64 << (32 - prefix)) > RANGE_SIZE {
            prefix += 1;
        }
        let size = 1u64 << (32 - prefix);
        if size < needed || networks as u64 * size > RANGE_SIZE {
            return Err(format!(
                "{networks} subnets with {per_network} ports each (plus gateway and {SPARES} \
                 spares) do not fit in 198.18.0.0/15; use fewer ports per network"
            ));
        }
        Ok(Layout {
            networks,
            prefix,
            per_network,
        })
    }

    fn subnet_size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    fn subnet_base(&self, net: usize) -> u32 {
        RANGE_BASE + net as u32 * self.subnet_size()
    }

    /// Host `k` of subnet `net` (0 is the gateway, `.1`).
    fn host(&self, net: usize, k: usize) -> u32 {
        self.subnet_base(net) + 1 + k as u32
    }

    /// The spare addresses of subnet `net`, those no initial port uses.
    fn spares(&self, net: usize) -> Vec<u32> {
        // Hosts 1..=per_network are the ports' (some subnets have one port fewer).
        (self.per_network + 1..self.per_network + 1 + SPARES)
            .map(|k| self.host(net, k))
            .collect()
    }
}

fn ip(a: u32) -> String {
    Ipv4Addr::from(a).to_string()
}

fn mac(n: u32) -> String {
    let [_, a, b, c] = n.to_be_bytes();
    format!("fa:16:3e:{a:02x}:{b:02x}:{c:02x}")
}

fn network_id(i: usize) -> String {
    format!("net-{i:05}")
}

fn subnet_id(i: usize) -> String {
    format!("subnet-{i:05}")
}

fn security_groups() -> Vec<SecurityGroup> {
    let rule = |direction, protocol: Option<&str>, ports: Option<(i64, i64)>| SecurityGroupRule {
        direction,
        ethertype: "IPv4".into(),
        protocol: protocol.map(|p| ProtocolSpec::Name(p.into())),
        port_range_min: ports.map(|p| p.0),
        port_range_max: ports.map(|p| p.1),
        remote_ip_prefix: None,
        remote_group_id: None,
        remote_address_group_id: None,
        id: None,
        security_group_id: None,
        description: None,
    };
    let mut from_group = rule(Direction::Ingress, None, None);
    from_group.remote_group_id = Some("sg-default".into());
    let mut web = rule(Direction::Ingress, Some("tcp"), Some((80, 80)));
    web.remote_ip_prefix = Some("0.0.0.0/0".into());
    vec![
        SecurityGroup {
            id: "sg-default".into(),
            name: None,
            description: None,
            stateful: true,
            rules: vec![
                rule(Direction::Egress, None, None),
                from_group,
                rule(Direction::Ingress, Some("icmp"), None),
            ],
        },
        SecurityGroup {
            id: "sg-web".into(),
            name: None,
            description: None,
            stateful: true,
            rules: vec![web, rule(Direction::Ingress, Some("tcp"), Some((443, 443)))],
        },
    ]
}

fn port(id: String, net: usize, mac_no: u32, addr: u32) -> Port {
    // The ports list no groups (each compiles to Neutron's deny-all), so that the
    // figures stay comparable with those measured before groups were enforced; the
    // groups stay in the state, unreferenced.
    let _ = mac_no.is_multiple_of(4);
    let groups = Vec::new();
    Port {
        id,
        network_id: network_id(net),
        mac_address: mac(mac_no),
        fixed_ips: vec![FixedIp {
            subnet_id: subnet_id(net),
            ip_address: ip(addr),
        }],
        security_groups: groups,
        port_security_enabled: true,
        allowed_address_pairs: Vec::new(),
        binding_host_id: None,
        binding: Some(Binding::Mem {}),
        dns_name: None,
        extra_dhcp_opts: Vec::new(),
        qos_policy_id: None,
        device_id: None,
        project_id: None,
    }
}

/// The generated desired state, with the network of each port (parallel to `ports`).
fn generate(layout: &Layout, ports: usize, routers: usize) -> (DesiredState, Vec<usize>) {
    let networks = (0..layout.networks)
        .map(|i| {
            let vlan = i < 4094;
            Network {
                id: network_id(i),
                name: None,
                network_type: if vlan {
                    NetworkType::Vlan
                } else {
                    NetworkType::Local
                },
                physical_network: vlan.then(|| "physnet1".to_owned()),
                segmentation_id: vlan.then_some(i as i64 + 1),
                mtu: None,
                admin_state_up: true,
                dns_domain: None,
                qos_policy_id: None,
            }
        })
        .collect();
    let subnets = (0..layout.networks)
        .map(|i| Subnet {
            id: subnet_id(i),
            network_id: network_id(i),
            ip_version: None,
            cidr: format!("{}/{}", ip(layout.subnet_base(i)), layout.prefix),
            gateway_ip: Some(ip(layout.host(i, 0))),
            enable_dhcp: true,
            dns_nameservers: Vec::new(),
            host_routes: Vec::new(),
            allocation_pools: None,
            dhcp_server_ip: None,
            dhcp_lease_duration: None,
            dhcp_serve_unknown: false,
        })
        .collect();
    let mut port_net = Vec::with_capacity(ports);
    let ports = (0..ports)
        .map(|j| {
            let net = j % layout.networks;
            port_net.push(net);
            let k = j / layout.networks + 1;
            port(
                format!("port-{j:05}"),
                net,
                j as u32 + 1,
                layout.host(net, k),
            )
        })
        .collect();
    let routers = (0..routers)
        .map(|i| Router {
            id: format!("router-{i:05}"),
            interfaces: vec![subnet_id(i)],
            external_gateway_info: None,
            routes: Vec::new(),
            binding_host_id: None,
            mac_address: None,
            project_id: None,
        })
        .collect();
    let state = DesiredState {
        l2: Default::default(),
        dhcp: Default::default(),
        metadata: Default::default(),
        agent: Default::default(),
        hosts: Vec::new(),
        uplinks: vec![Uplink {
            name: "uplink0".into(),
            physnet: "physnet1".into(),
            binding: Binding::Mem {},
            local_ip: None,
            mtu: None,
        }],
        networks,
        subnets,
        ports,
        routers,
        floating_ips: Vec::new(),
        security_groups: security_groups(),
        security_group_rules: Vec::new(),
        address_groups: Vec::new(),
        qos_policies: Vec::new(),
        metering_labels: Vec::new(),
        metering_label_rules: Vec::new(),
        trunks: Vec::new(),
    };
    (state, port_net)
}

/// The kinds of one-port change, in the order they cycle.
const KINDS: [&str; 4] = ["fixed_ip", "mac", "remove", "add"];

/// Makes one-port changes to a state, keeping it valid: free addresses per subnet, fresh
/// MACs and port ids, and a deterministic choice of port.
#[derive(Clone, Debug)]
struct Mutator {
    layout: Layout,
    /// Free host addresses per network.
    free: Vec<Vec<u32>>,
    /// Network of each port of the state (parallel to `ports`).
    port_net: Vec<usize>,
    /// Network of the last removed port (an added port goes there, so that no subnet
    /// runs out of free addresses).
    last_removed: Option<usize>,
    next_mac: u32,
    next_port: usize,
    step: usize,
    rng: u64,
    /// What the last change touched.
    touched: Option<Touched>,
}

impl Mutator {
    fn new(layout: Layout, port_net: Vec<usize>) -> Mutator {
        Mutator {
            free: (0..layout.networks).map(|n| layout.spares(n)).collect(),
            layout,
            port_net,
            last_removed: None,
            next_mac: CHANGE_MAC_BASE,
            next_port: 0,
            step: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            touched: None,
        }
    }

    /// A copy that makes other choices (for dry runs of different changes).
    fn variant(&self, salt: usize) -> Mutator {
        let mut m = self.clone();
        m.step += salt;
        m.rng ^= (salt as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        m
    }

    fn random(&mut self, n: usize) -> usize {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    fn fresh_mac(&mut self) -> String {
        self.next_mac += 1;
        mac(self.next_mac)
    }

    /// Makes the next change to `state`; returns its kind.
    fn change(&mut self, state: &mut DesiredState) -> &'static str {
        let mut kind = KINDS[self.step % KINDS.len()];
        self.step += 1;
        if state.ports.is_empty() {
            kind = "add";
        }
        match kind {
            "fixed_ip" => {
                let p = self.random(state.ports.len());
                let net = self.port_net[p];
                let new = self.free[net].remove(0);
                let fixed = &mut state.ports[p].fixed_ips[0];
                let old: Ipv4Addr = fixed.ip_address.parse().expect("generated address");
                fixed.ip_address = ip(new);
                self.free[net].push(u32::from(old));
                self.touched = Some(Touched::Put(p));
            }
            "mac" => {
                let p = self.random(state.ports.len());
                state.ports[p].mac_address = self.fresh_mac();
                self.touched = Some(Touched::Put(p));
            }
            "remove" => {
                let p = self.random(state.ports.len());
                let removed = state.ports.remove(p);
                let net = self.port_net.remove(p);
                let addr: Ipv4Addr = removed.fixed_ips[0].ip_address.parse().expect("address");
                self.free[net].push(u32::from(addr));
                self.last_removed = Some(net);
                self.touched = Some(Touched::Delete(removed.id));
            }
            _ => {
                let net = self
                    .last_removed
                    .take()
                    .unwrap_or_else(|| self.random(self.layout.networks));
                let addr = self.free[net].remove(0);
                self.next_mac += 1;
                let id = format!("port-new-{:05}", self.next_port);
                self.next_port += 1;
                state.ports.push(port(id, net, self.next_mac, addr));
                self.port_net.push(net);
                self.touched = Some(Touched::Put(state.ports.len() - 1));
            }
        }
        kind
    }
}

// ---------------------------------------------------------------------------------------
// polluxd.

/// The median of each step over the engine's debug lines
/// (`generation N: validate 1.20 ms, diff 0.30 ms, ...`) in `log`.
fn phase_medians(log: &str) -> Vec<(String, f64)> {
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for line in log.lines() {
        let Some(at) = line.find("polluxd: generation ") else {
            continue;
        };
        let Some((_, steps)) = line[at..]
            .split_once(": ")
            .and_then(|(_, r)| r.split_once(": "))
        else {
            continue;
        };
        for step in steps.split(", ") {
            let mut words = step.split(' ');
            let (Some(name), Some(Ok(value))) = (words.next(), words.next().map(str::parse::<f64>))
            else {
                continue;
            };
            match phases.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(value),
                None => phases.push((name.to_owned(), vec![value])),
            }
        }
    }
    phases
        .into_iter()
        .map(|(name, v)| {
            let s = sorted(&v);
            (name, percentile(&s, 50.0))
        })
        .collect()
}

/// A fresh temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Res<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "pollux-apply-latency-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running polluxd; killed on drop unless stopped.
struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    ready: Arc<Mutex<bool>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(binary: &Path, socket: &Path, state_dir: &Path, cores: &str) -> Res<Daemon> {
        let mut child = Command::new(binary)
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--cores", cores])
            // Each apply's steps and their durations (the engine logs them at debug).
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let ready = Arc::new(Mutex::new(false));
        // Drains stderr for the daemon's whole life, so that it never blocks on the pipe.
        let reader = {
            let log = Arc::clone(&log);
            let ready = Arc::clone(&ready);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with("polluxd: ready") {
                        *ready.lock().expect("lock") = true;
                    }
                    let mut log = log.lock().expect("lock");
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            })
        };
        let mut daemon = Daemon {
            child: Some(child),
            log,
            ready,
            reader: Some(reader),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while !*daemon.ready.lock().expect("lock") {
            let exited = daemon
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!(
                    "polluxd exited ({status}) before it was ready:\n{}",
                    daemon.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "polluxd did not report ready within {READY_TIMEOUT:?}:\n{}",
                    daemon.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn log_tail(&self) -> String {
        let log = self.log.lock().expect("lock");
        log.iter().map(|l| format!("  | {l}\n")).collect::<String>()
    }

    /// Resident memory of polluxd, in KiB.
    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGTERM, then waits for the exit; the status and how long the stop took.
    fn stop(mut self) -> Res<(ExitStatus, Duration)> {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(sent, Ok(s) if s.success()) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("cannot send SIGTERM to polluxd: {sent:?}"));
        }
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let took = started.elapsed();
                    if let Some(r) = self.reader.take() {
                        let _ = r.join();
                    }
                    return Ok((status, took));
                }
                Ok(None) if started.elapsed() < STOP_TIMEOUT => {
                    thread::sleep(Duration::from_millis(10));
                }
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "polluxd did not exit within {STOP_TIMEOUT:?} of SIGTERM ({other:?}):\n{}",
                        self.log_tail()
                    ));
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requests.

/// The `config.apply` request line for `state`.
fn apply_line(id: u64, state: &DesiredState, dry_run: bool) -> Res<Vec<u8>> {
    let mut line = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"config.apply","params":{{"dry_run":{dry_run},"state":"#
    )
    .into_bytes();
    serde_json::to_writer(&mut line, state).map_err(|e| format!("cannot encode state: {e}"))?;
    line.extend_from_slice(b"}}");
    Ok(line)
}

/// The request line of the change `mutator` last made to `state`, as `method` sends it.
fn change_line(id: u64, state: &DesiredState, mutator: &Mutator, method: Method) -> Res<Vec<u8>> {
    if method == Method::Apply {
        return apply_line(id, state, false);
    }
    let request = match mutator.touched.as_ref().ok_or("no change made")? {
        Touched::Put(p) => json!({ "jsonrpc": "2.0", "id": id, "method": "ports.put",
                                   "params": { "port": state.ports[*p] } }),
        Touched::Delete(port) => json!({ "jsonrpc": "2.0", "id": id, "method": "ports.delete",
                                         "params": { "id": port } }),
    };
    serde_json::to_vec(&request).map_err(|e| format!("cannot encode the change: {e}"))
}

/// What `config.apply` answered.
#[derive(Debug)]
struct Outcome {
    generation: u64,
    applied: bool,
    changed: bool,
    diff: Value,
}

/// The socket, with request ids.
struct Conn {
    client: Client,
    next_id: u64,
}

impl Conn {
    fn connect(socket: &Path) -> Res<Conn> {
        let client = Client::connect(socket)
            .and_then(|c| c.with_timeout(CALL_TIMEOUT))
            .map_err(|e| e.to_string())?;
        Ok(Conn { client, next_id: 1 })
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request line; the reply's result and the time from the first byte sent to
    /// the last byte received.
    fn send(&mut self, id: u64, line: &[u8]) -> Res<(Value, Duration)> {
        let started = Instant::now();
        let reply = self.client.call_raw(line).map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let mut reply: Value =
            serde_json::from_slice(&reply).map_err(|e| format!("reply is not JSON: {e}"))?;
        if reply.get("id").and_then(Value::as_u64) != Some(id) {
            if let Some(error) = reply.get("error") {
                return Err(format!("polluxd refused the request: {error}"));
            }
            return Err(format!("reply is not for request {id}"));
        }
        if let Some(error) = reply.get("error") {
            let text = error.to_string();
            let short: String = text.chars().take(4000).collect();
            return Err(format!("polluxd answered with an error: {short}"));
        }
        match reply.get_mut("result") {
            Some(result) => Ok((result.take(), took)),
            None => Err("reply has no result".into()),
        }
    }

    /// `config.apply` of `state` (timed on the socket); checks `applied` and `changed`.
    fn apply(
        &mut self,
        state: &DesiredState,
        dry_run: bool,
        expect_applied: bool,
        expect_changed: bool,
    ) -> Res<(Outcome, Duration)> {
        let id = self.id();
        let line = apply_line(id, state, dry_run)?;
        let (result, took) = self.send(id, &line)?;
        let outcome = outcome(&result)?;
        if outcome.applied != expect_applied || outcome.changed != expect_changed {
            return Err(format!(
                "config.apply answered applied {} changed {} (expected {expect_applied} and \
                 {expect_changed}); diff {}",
                outcome.applied, outcome.changed, outcome.diff
            ));
        }
        Ok((outcome, took))
    }

    fn call(&mut self, method: &str, params: Value) -> Res<Value> {
        self.client
            .call(method, params)
            .map_err(|e| format!("{method}: {e}"))
    }
}

fn outcome(result: &Value) -> Res<Outcome> {
    let field = |name: &str| {
        result
            .get(name)
            .ok_or_else(|| format!("config.apply result has no {name}: {result}"))
    };
    Ok(Outcome {
        generation: field("generation")?
            .as_u64()
            .ok_or("generation is not a number")?,
        applied: field("applied")?.as_bool().ok_or("applied is not a bool")?,
        changed: field("changed")?.as_bool().ok_or("changed is not a bool")?,
        diff: field("diff")?.clone(),
    })
}

// ---------------------------------------------------------------------------------------
// Statistics.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile `p` (0..=100) of sorted `v`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn round3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

// ---------------------------------------------------------------------------------------
// The benchmark.

fn polluxd_binary(args: &Args) -> Res<PathBuf> {
    let path = match &args.polluxd {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this binary's path: {e}"))?
            .with_file_name("polluxd"),
    };
    if !path.is_file() {
        return Err(format!(
            "polluxd not found at {}; build it first: cargo build --release -p pollux-control \
             --bin polluxd (bench/apply-latency.sh builds both), or pass --polluxd PATH",
            path.display()
        ));
    }
    Ok(path)
}

fn run(args: &Args) -> Res<()> {
    let binary = polluxd_binary(args)?;
    let layout = Layout::new(args.ports, args.networks, args.routers)?;
    let cores = match &args.cores {
        Some(c) => c.clone(),
        None => {
            let n = thread::available_parallelism().map_or(1, |n| n.get());
            (n - 1).to_string()
        }
    };

    let started = Instant::now();
    let (mut state, port_net) = generate(&layout, args.ports, args.routers);
    let generate_time = started.elapsed();
    let mut mutator = Mutator::new(layout, port_net);
    eprintln!(
        "apply-latency: {} ports, {} networks (/{} subnets in 198.18.0.0/15), {} routers, \
         {} security groups; generated in {:.1} ms",
        state.ports.len(),
        state.networks.len(),
        layout.prefix,
        state.routers.len(),
        state.security_groups.len(),
        ms(generate_time)
    );

    let tmp = TempDir::new()?;
    let socket = tmp.0.join("polluxd.sock");
    let state_dir = tmp.0.join("state");
    let daemon = Daemon::start(&binary, &socket, &state_dir, &cores)?;
    let result = measure(
        args,
        &layout,
        &mut state,
        &mut mutator,
        &socket,
        &state_dir,
        &daemon,
    );
    let figures = match result {
        Ok(f) => f,
        Err(e) => return Err(format!("{e}\npolluxd's last lines:\n{}", daemon.log_tail())),
    };
    let tail = daemon.log_tail();
    let phases = phase_medians(&tail);
    let (status, stop_time) = daemon.stop()?;
    if !status.success() {
        return Err(format!(
            "polluxd exited with {status} after SIGTERM:\n{tail}"
        ));
    }
    let mut figures = figures;
    figures["polluxd_stop_ms"] = round3(ms(stop_time));
    if !phases.is_empty() {
        let text: Vec<String> = phases
            .iter()
            .map(|(phase, p50)| format!("{phase} {p50:.2}"))
            .collect();
        eprintln!(
            "  in polluxd, p50 per step of the last applies (ms): {}",
            text.join(", ")
        );
        for (phase, p50) in phases {
            figures[format!("engine_{phase}_p50_ms")] = round3(p50);
        }
    }
    eprintln!(
        "  polluxd stopped cleanly on SIGTERM in {:.1} ms",
        ms(stop_time)
    );
    println!("{figures}");
    drop(tmp);
    Ok(())
}

/// Runs the phases against the started daemon; the figures as a JSON object.
fn measure(
    args: &Args,
    layout: &Layout,
    state: &mut DesiredState,
    mutator: &mut Mutator,
    socket: &Path,
    state_dir: &Path,
    daemon: &Daemon,
) -> Res<Value> {
    let mut conn = Conn::connect(socket)?;

    // Phase 1: the full configuration.
    let id = conn.id();
    let encode_started = Instant::now();
    let line = apply_line(id, state, false)?;
    let full_encode = encode_started.elapsed();
    let request_bytes = line.len();
    let (result, full) = conn.send(id, &line)?;
    let first = outcome(&result)?;
    if !first.applied || first.generation != 1 {
        return Err(format!(
            "the full apply answered generation {} applied {}",
            first.generation, first.applied
        ));
    }
    let persisted = state_dir.join(format!("gen-{:020}.json", first.generation));
    let persisted_bytes = std::fs::metadata(&persisted)
        .map_err(|e| format!("cannot stat {}: {e}", persisted.display()))?
        .len();
    let rss_kib = daemon.rss_kib();
    let mut generation = first.generation;

    // No-op applies and dry runs of one-port changes.
    let mut noop = Vec::new();
    for _ in 0..args.probes {
        let (o, took) = conn.apply(state, false, false, false)?;
        if o.generation != generation {
            return Err(format!(
                "a no-op apply moved to generation {}",
                o.generation
            ));
        }
        noop.push(ms(took));
    }
    let mut dry = Vec::new();
    for i in 0..args.probes {
        let mut other = state.clone();
        mutator.variant(i).change(&mut other);
        let (o, took) = conn.apply(&other, true, false, true)?;
        if o.generation != generation {
            return Err(format!("a dry run moved to generation {}", o.generation));
        }
        dry.push(ms(took));
    }

    // Phase 2: one-port changes, one by one.
    let mut one = Vec::with_capacity(args.changes);
    let mut by_kind: Vec<Vec<f64>> = vec![Vec::new(); KINDS.len()];
    let mut encode = Vec::with_capacity(args.changes);
    for _ in 0..args.changes {
        let kind = mutator.change(state);
        let id = conn.id();
        let encode_started = Instant::now();
        let line = change_line(id, state, mutator, args.method)?;
        encode.push(ms(encode_started.elapsed()));
        let (result, took) = conn.send(id, &line)?;
        let o = outcome(&result)?;
        let (added, removed, changed) = diff_counts(&o.diff);
        if !o.applied || o.generation != generation + 1 || added + removed + changed != 1 {
            return Err(format!(
                "one-port change ({kind}) answered generation {} applied {} diff {}",
                o.generation, o.applied, o.diff
            ));
        }
        generation = o.generation;
        one.push(ms(took));
        let k = KINDS.iter().position(|k| *k == kind).expect("a kind");
        by_kind[k].push(ms(took));
    }

    // Phase 3: sustained, back to back, client encoding included.
    let mut sustained = 0u64;
    let window = Duration::from_secs_f64(args.keep_going_secs.max(0.0));
    let sustained_started = Instant::now();
    while sustained_started.elapsed() < window {
        mutator.change(state);
        let id = conn.id();
        let line = change_line(id, state, mutator, args.method)?;
        let (result, _) = conn.send(id, &line)?;
        let o = outcome(&result)?;
        if !o.applied || o.generation != generation + 1 {
            return Err(format!(
                "sustained apply answered generation {}",
                o.generation
            ));
        }
        generation = o.generation;
        sustained += 1;
    }
    let sustained_secs = sustained_started.elapsed().as_secs_f64();
    let rate = if sustained > 0 {
        sustained as f64 / sustained_secs
    } else {
        f64::NAN
    };

    // Phase 4: several clients at once (`ports.put` of ports of their own).
    let concurrent = if args.method == Method::Put && args.clients > 1 && !state.ports.is_empty() {
        let c = concurrent_puts(args.clients, window, state, socket)?;
        generation += c.0.len() as u64;
        Some(c)
    } else {
        None
    };

    // The daemon runs exactly what we think it does.
    let got = conn.call("config.get", json!({}))?;
    let active: DesiredState = got
        .get("state")
        .cloned()
        .ok_or("config.get has no state")
        .and_then(|v| serde_json::from_value(v).map_err(|_| "config.get state does not parse"))?;
    if &active != state || got.get("generation").and_then(Value::as_u64) != Some(generation) {
        return Err(format!(
            "config.get (generation {:?}) does not return the state of generation {generation}",
            got.get("generation")
        ));
    }

    let one_sorted = sorted(&one);
    let noop_sorted = sorted(&noop);
    let dry_sorted = sorted(&dry);
    let encode_sorted = sorted(&encode);
    let mean = one.iter().sum::<f64>() / one.len().max(1) as f64;
    let p = |v: &[f64], q| percentile(v, q);

    eprintln!("apply-latency: results");
    eprintln!(
        "  full apply (generation 1): {:.1} ms wall on the socket; request {:.2} MB \
         (encoded in {:.1} ms); persisted generation file {:.2} MB; polluxd RSS {}",
        ms(full),
        request_bytes as f64 / 1e6,
        ms(full_encode),
        persisted_bytes as f64 / 1e6,
        rss_kib.map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );
    eprintln!(
        "  no-op apply: p50 {:.2} ms ({} samples); dry run of a one-port change: p50 {:.2} ms \
         ({} samples)",
        p(&noop_sorted, 50.0),
        noop.len(),
        p(&dry_sorted, 50.0),
        dry.len()
    );
    eprintln!(
        "  one-port change ({:?}, {} changes): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} \
         ms, mean {:.2} ms",
        args.method,
        one.len(),
        p(&one_sorted, 50.0),
        p(&one_sorted, 90.0),
        p(&one_sorted, 99.0),
        one_sorted.last().copied().unwrap_or(f64::NAN),
        mean
    );
    for (kind, v) in KINDS.iter().zip(&by_kind) {
        let s = sorted(v);
        eprintln!(
            "    {kind:>8}: p50 {:.2} ms, max {:.2} ms ({} applies)",
            p(&s, 50.0),
            s.last().copied().unwrap_or(f64::NAN),
            s.len()
        );
    }
    eprintln!(
        "    (client-side encoding of each request, not included: p50 {:.2} ms)",
        p(&encode_sorted, 50.0)
    );
    eprintln!(
        "  sustained: {sustained} applies in {sustained_secs:.2} s = {rate:.1} applies/s \
         (client encoding included)"
    );
    if let Some((lat, secs)) = &concurrent {
        let s = sorted(lat);
        eprintln!(
            "  concurrent: {} clients, {} ports.put in {secs:.2} s = {:.1} puts/s; each put \
             p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            args.clients,
            lat.len(),
            lat.len() as f64 / secs,
            p(&s, 50.0),
            p(&s, 99.0),
            s.last().copied().unwrap_or(f64::NAN)
        );
    }
    eprintln!(
        "  config.get matches generation {generation} ({} ports)",
        state.ports.len()
    );

    let mut figures = json!({
        "method": format!("{:?}", args.method).to_lowercase(),
        "ports": args.ports,
        "networks": args.networks,
        "routers": args.routers,
        "subnet_prefix": layout.prefix,
        "security_groups": state.security_groups.len(),
        "full_apply_ms": round3(ms(full)),
        "full_request_bytes": request_bytes,
        "full_encode_ms": round3(ms(full_encode)),
        "persisted_bytes": persisted_bytes,
        "polluxd_rss_kib": rss_kib,
        "noop_p50_ms": round3(p(&noop_sorted, 50.0)),
        "dry_run_p50_ms": round3(p(&dry_sorted, 50.0)),
        "changes": one.len(),
        "one_port_p50_ms": round3(p(&one_sorted, 50.0)),
        "one_port_p90_ms": round3(p(&one_sorted, 90.0)),
        "one_port_p99_ms": round3(p(&one_sorted, 99.0)),
        "one_port_max_ms": round3(one_sorted.last().copied().unwrap_or(f64::NAN)),
        "one_port_mean_ms": round3(mean),
        "encode_p50_ms": round3(p(&encode_sorted, 50.0)),
        "sustained_applies": sustained,
        "sustained_secs": round3(sustained_secs),
        "sustained_applies_per_sec": round3(rate),
        "final_generation": generation,
    });
    for (kind, v) in KINDS.iter().zip(&by_kind) {
        figures[format!("one_port_{kind}_p50_ms")] = round3(p(&sorted(v), 50.0));
    }
    if let Some((lat, secs)) = &concurrent {
        let s = sorted(lat);
        figures["concurrent_clients"] = json!(args.clients);
        figures["concurrent_puts"] = json!(lat.len());
        figures["concurrent_puts_per_sec"] = round3(lat.len() as f64 / secs);
        figures["concurrent_p50_ms"] = round3(p(&s, 50.0));
        figures["concurrent_p99_ms"] = round3(p(&s, 99.0));
        figures["concurrent_max_ms"] = round3(s.last().copied().unwrap_or(f64::NAN));
    }
    Ok(figures)
}

/// `clients` threads, each on its own connection, sending `ports.put` back to back for
/// `window`, each a fresh MAC for one of the ports of its own (every `clients`-th port of
/// `state`, at most 64); `state` gets their last MACs. Every put's latency, and the
/// seconds it all took.
fn concurrent_puts(
    clients: usize,
    window: Duration,
    state: &mut DesiredState,
    socket: &Path,
) -> Res<(Vec<f64>, f64)> {
    let clients = clients.min(state.ports.len()).min(16);
    let started = Instant::now();
    // Each client's latencies and its ports as it left them.
    type ClientThread = JoinHandle<Res<(Vec<f64>, Vec<Port>)>>;
    let handles: Vec<ClientThread> = (0..clients)
        .map(|c| {
            let mut ports: Vec<Port> = state
                .ports
                .iter()
                .skip(c)
                .step_by(clients)
                .take(64)
                .cloned()
                .collect();
            let socket = socket.to_path_buf();
            thread::spawn(move || {
                let mut conn = Conn::connect(&socket)?;
                let mut latencies = Vec::new();
                let mut n = 0u32;
                while started.elapsed() < window && n < 0xffff {
                    let k = n as usize % ports.len();
                    ports[k].mac_address = mac(CONCURRENT_MAC_BASE + ((c as u32) << 16) + n);
                    n += 1;
                    let id = conn.id();
                    let request = json!({ "jsonrpc": "2.0", "id": id, "method": "ports.put",
                                          "params": { "port": ports[k] } });
                    let line = serde_json::to_vec(&request)
                        .map_err(|e| format!("cannot encode the change: {e}"))?;
                    let (result, took) = conn.send(id, &line)?;
                    if !outcome(&result)?.applied {
                        return Err(format!("client {c}: a put was not applied: {result}"));
                    }
                    latencies.push(ms(took));
                }
                Ok((latencies, ports))
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let (latencies, ports) = h.join().map_err(|_| "a client thread panicked")??;
        all.extend(latencies);
        for port in ports {
            if let Some(p) = state.ports.iter_mut().find(|p| p.id == port.id) {
                *p = port;
            }
        }
    }
    Ok((all, started.elapsed().as_secs_f64()))
}

/// Added, removed and changed objects of a `diff` as the socket reports it.
fn diff_counts(diff: &Value) -> (usize, usize, usize) {
    let count = |part: &str| -> usize {
        diff.get(part).and_then(Value::as_object).map_or(0, |o| {
            o.values()
                .map(|v| {
                    v.as_array()
                        .map_or(usize::from(v == &json!(true)), Vec::len)
                })
                .sum()
        })
    };
    (count("added"), count("removed"), count("changed"))
}
