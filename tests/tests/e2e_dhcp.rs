//! End to end: polluxd's built-in DHCPv4 server (issue #7) answering real clients —
//! busybox `udhcpc`, ISC `dhclient` and `dhcpcd` — over AF_XDP on veth.
//!
//! ```text
//!   namespace udhcpc:   <P>cu (fa:16:3e:30:00:11) ──veth── <P>su ┐
//!   namespace dhclient: <P>cd (fa:16:3e:30:00:12) ──veth── <P>sd ├ polluxd (namespace sw),
//!   namespace dhcpcd:   <P>cc (fa:16:3e:30:00:13) ──veth── <P>sc ┘ DHCP at 198.18.30.254
//! ```
//!
//! One local network (MTU 1400, domain `pollux.test`) with subnet 198.18.30.0/24:
//! gateway .1, DNS .53, a host route 198.19.0.0/16 via .2, and per port a fixed IP, a
//! `dns_name` and an `ntp-server` extra option. Each test builds only the clients it needs.
//! What the clients were given is checked where it lands, in the client's namespace (`ip
//! addr`, `ip route`, `ip link`, the `resolv.conf` the client's script wrote), and on the
//! server through `leases.list`, `stats.get` and the lease file in the state directory.
//!
//! The clients never touch the host's files (see `pollux_tests::dhcp`); each test also
//! checks that `/etc/resolv.conf`, the host name and the host's lease directories are as
//! they were. Needs root and `ip`, `ethtool`, `udhcpc`, `dhclient`, `dhcpcd`, `unshare`,
//! `mount`: it fails, never skips, when any is missing. Everything it makes is removed on
//! every path. The tests run one at a time (each polluxd busy-polls a CPU).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use pollux_tests::daemon::{self, ConfigFile, Polluxd, RunDir};
use pollux_tests::dhcp::{self, DhcpClient, Event, Kind};
use pollux_tests::netns::{Netns, Topology, VethOptions};
use serde_json::{json, Value};

const TOOLS: &[&str] = &[
    "ip", "ethtool", "sh", "udhcpc", "dhclient", "dhcpcd", "unshare", "mount",
];

const NETWORK: &str = "net-dhcp";
const SUBNET: &str = "sub-dhcp";
const PREFIX_LEN: u8 = 24;
const GATEWAY: &str = "198.18.30.1";
/// The default DHCP server address: the last host address of the /24.
const SERVER: &str = "198.18.30.254";
const DNS: &str = "198.18.30.53";
const DOMAIN: &str = "pollux.test";
const ROUTE_DST: &str = "198.19.0.0/16";
const ROUTE_VIA: &str = "198.18.30.2";
const NTP: &str = "198.18.30.123";
const MTU: u32 = 1400;
const LEASE_SECS: u64 = 86_400;
/// Option 121 as the clients report it: the default route first (RFC 3442 clients ignore
/// option 3), then the host route.
const ROUTES_121: &str = "0.0.0.0/0 198.18.30.1 198.19.0.0/16 198.18.30.2";
/// How long leases take to reach the lease file (written at most 1 s after a change).
const SAVE_WAIT: Duration = Duration::from_millis(2500);

/// A VM: namespace role, interface tag (`<P>s<tag>` at the switch, `<P>c<tag>` in the
/// VM), Neutron port, the port's MAC and fixed IP, and the MAC its interface really has.
#[derive(Debug, Clone, Copy)]
struct Vm {
    role: &'static str,
    tag: &'static str,
    port: &'static str,
    mac: &'static str,
    ip: Option<&'static str>,
    interface_mac: &'static str,
}

const U: Vm = Vm {
    role: "udhcpc",
    tag: "u",
    port: "vm-u",
    mac: "fa:16:3e:30:00:11",
    ip: Some("198.18.30.11"),
    interface_mac: "fa:16:3e:30:00:11",
};
const D: Vm = Vm {
    role: "dhclient",
    tag: "d",
    port: "vm-d",
    mac: "fa:16:3e:30:00:12",
    ip: Some("198.18.30.12"),
    interface_mac: "fa:16:3e:30:00:12",
};
const C: Vm = Vm {
    role: "dhcpcd",
    tag: "c",
    port: "vm-c",
    mac: "fa:16:3e:30:00:13",
    ip: Some("198.18.30.13"),
    interface_mac: "fa:16:3e:30:00:13",
};
const B: Vm = Vm {
    role: "b",
    tag: "b",
    port: "vm-b",
    mac: "fa:16:3e:30:00:14",
    ip: Some("198.18.30.14"),
    interface_mac: "fa:16:3e:30:00:14",
};
/// A port without a fixed IP whose VM's interface has a MAC no port has.
const GUEST: Vm = Vm {
    role: "guest",
    tag: "g",
    port: "guest",
    mac: "fa:16:3e:30:00:40",
    ip: None,
    interface_mac: "fa:16:3e:30:00:99",
};

/// What of the host a DHCP client could change by mistake, to compare after a test.
#[derive(Debug, PartialEq, Eq)]
struct HostFiles {
    resolv_conf: Option<Vec<u8>>,
    hostname: String,
    dirs: Vec<(String, Option<BTreeSet<String>>)>,
}

impl HostFiles {
    const DIRS: [&'static str; 3] = ["/run/dhcpcd", "/var/lib/dhcpcd", "/var/lib/dhcp"];

    fn snapshot() -> HostFiles {
        let list = |d: &str| {
            std::fs::read_dir(d).ok().map(|it| {
                it.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
        };
        HostFiles {
            resolv_conf: std::fs::read("/etc/resolv.conf").ok(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
            dirs: Self::DIRS
                .iter()
                .map(|d| ((*d).to_owned(), list(d)))
                .collect(),
        }
    }

    fn assert_unchanged(&self) {
        let now = HostFiles::snapshot();
        assert!(
            now.resolv_conf == self.resolv_conf,
            "a DHCP client changed the host's /etc/resolv.conf"
        );
        assert_eq!(now.hostname, self.hostname, "the host name changed");
        assert_eq!(now.dirs, self.dirs, "a DHCP client left files on the host");
    }
}

/// The desired state with `vms`' ports (bound to their switch-side interfaces), `extra`
/// appended (TOML, e.g. more ports).
fn state_toml(prefix: &str, vms: &[Vm], extra: &str) -> String {
    let mut s = format!(
        r#"[[networks]]
id = "{NETWORK}"
network_type = "local"
mtu = {MTU}
dns_domain = "{DOMAIN}"

[[subnets]]
id = "{SUBNET}"
network_id = "{NETWORK}"
cidr = "198.18.30.0/{PREFIX_LEN}"
gateway_ip = "{GATEWAY}"
enable_dhcp = true
dns_nameservers = ["{DNS}"]
host_routes = [{{ destination = "{ROUTE_DST}", nexthop = "{ROUTE_VIA}" }}]
"#
    );
    for vm in vms {
        s.push_str(&format!(
            r#"
[[ports]]
id = "{port}"
network_id = "{NETWORK}"
mac_address = "{mac}"
dns_name = "{role}"
extra_dhcp_opts = [{{ opt_name = "ntp-server", opt_value = "{NTP}" }}]
binding = {{ driver = "afxdp", interface = "{prefix}s{tag}" }}
"#,
            port = vm.port,
            mac = vm.mac,
            role = vm.role,
            tag = vm.tag,
        ));
        if vm.mac != vm.interface_mac {
            // The port stands for a VM that bridges other hosts (the guest's MAC is not
            // the port's), which Neutron allows only with port security off.
            s.push_str("port_security_enabled = false\n");
        }
        if let Some(ip) = vm.ip {
            s.push_str(&format!(
                "fixed_ips = [{{ subnet_id = \"{SUBNET}\", ip_address = \"{ip}\" }}]\n"
            ));
        }
    }
    s.push_str(extra);
    s
}

/// A test's topology: namespace `sw` (polluxd) and one namespace per VM, a veth
/// `sw:<P>s<tag>` ↔ `<role>:<P>c<tag>` each; polluxd's run directory and configuration.
struct Lab {
    // Dropped in this order: the topology (clients and polluxd are dropped by the test
    // before), then the files.
    topo: Topology,
    run: RunDir,
    config: ConfigFile,
}

impl Lab {
    fn new(vms: &[Vm], extra_state: &str) -> Lab {
        let mut topo = Topology::new();
        topo.add_ns("sw").unwrap();
        topo.ns("sw").unwrap().disable_ipv6().unwrap();
        for vm in vms {
            topo.add_ns(vm.role).unwrap();
            topo.ns(vm.role).unwrap().disable_ipv6().unwrap();
            let switch_if = topo.prefix().ifname(&format!("s{}", vm.tag)).unwrap();
            let client_if = topo.prefix().ifname(&format!("c{}", vm.tag)).unwrap();
            topo.veth_with(
                "sw",
                &switch_if,
                vm.role,
                &client_if,
                &VethOptions {
                    mac_b: Some(vm.interface_mac.to_owned()),
                    ..VethOptions::default()
                },
            )
            .unwrap();
            // The client keeps the kernel's default offloads: polluxd completes the UDP
            // checksums its veth leaves partial.
        }
        let prefix = topo.prefix().as_str().to_owned();
        let run = RunDir::new(&prefix).unwrap();
        let config = ConfigFile::write(
            &format!("{prefix}-dhcp"),
            &state_toml(&prefix, vms, extra_state),
        )
        .unwrap();
        Lab { topo, run, config }
    }

    fn ns(&self, vm: &Vm) -> &Netns {
        self.topo.ns(vm.role).unwrap()
    }

    fn client_if(&self, vm: &Vm) -> String {
        self.topo.prefix().ifname(&format!("c{}", vm.tag)).unwrap()
    }

    /// polluxd with the lab's configuration (`with_config`) or only its state directory.
    fn start(&self, with_config: bool) -> Polluxd {
        let config = with_config.then(|| self.config.path());
        Polluxd::spawn_in(
            self.topo.ns("sw").unwrap(),
            config,
            &daemon::last_cpu(),
            &self.run,
            &[],
        )
        .and_then(Polluxd::ready)
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn client(&self, kind: Kind, vm: &Vm) -> DhcpClient {
        DhcpClient::start(kind, self.ns(vm), &self.client_if(vm))
            .unwrap_or_else(|e| panic!("starting {} for {}: {e}", kind.name(), vm.role))
    }

    /// The network's lease file in the state directory (its id hex-encoded).
    fn lease_file(&self) -> PathBuf {
        let hex: String = NETWORK.bytes().map(|b| format!("{b:02x}")).collect();
        self.run
            .state_dir()
            .join("leases")
            .join(format!("{hex}.json"))
    }

    /// `ip ARGS` in `vm`'s namespace.
    fn ip(&self, vm: &Vm, args: &[&str]) -> String {
        self.ns(vm).ip(args).unwrap()
    }

    fn ipv4_addrs(&self, vm: &Vm) -> String {
        self.ip(
            vm,
            &["-4", "-o", "addr", "show", "dev", &self.client_if(vm)],
        )
    }
}

/// `stats.get`'s `dhcp` object.
fn dhcp_stats(polluxd: &Polluxd) -> Value {
    polluxd.call("stats.get", json!({}))["dhcp"].clone()
}

fn counter(stats: &Value, key: &str) -> u64 {
    stats[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter `{key}` in {stats}"))
}

/// `leases.list` for the network: its leases.
fn leases(polluxd: &Polluxd) -> Vec<Value> {
    let r = polluxd.call("leases.list", json!({ "network_id": NETWORK }));
    assert!(
        r["generation"].is_u64(),
        "leases.list without generation: {r}"
    );
    r["leases"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("leases.list returned no array: {r}"))
}

fn lease_for<'a>(leases: &'a [Value], mac: &str) -> Option<&'a Value> {
    leases.iter().find(|l| l["mac_address"] == mac)
}

/// Polls `leases.list` (at most `limit`) until `done` holds; the last listing either way.
fn wait_leases(polluxd: &Polluxd, limit: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let end = Instant::now() + limit;
    loop {
        let l = leases(polluxd);
        if done(&l) || Instant::now() >= end {
            return l;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts `vm` holds a bound lease of `ip` for its port, fresh.
fn assert_bound_lease(leases: &[Value], vm: &Vm, ip: &str) {
    let l = lease_for(leases, vm.mac)
        .unwrap_or_else(|| panic!("no lease for {} ({}): {leases:?}", vm.port, vm.mac));
    assert_eq!(l["network_id"], NETWORK, "{l}");
    assert_eq!(l["port_id"], vm.port, "{l}");
    assert_eq!(l["ip_address"], ip, "{l}");
    assert_eq!(l["hostname"], vm.role, "{l}");
    assert_eq!(l["state"], "bound", "{l}");
    let expires = l["expires_in_secs"].as_u64().unwrap_or(0);
    assert!(
        (LEASE_SECS - 120..=LEASE_SECS).contains(&expires),
        "lease expiry not about {LEASE_SECS} s: {l}"
    );
}

/// The leases in the lease file, if it exists and parses.
fn lease_file_entries(lab: &Lab) -> Option<Vec<Value>> {
    let text = std::fs::read_to_string(lab.lease_file()).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["leases"].as_array().cloned()
}

/// Waits (at most [`SAVE_WAIT`]) until the lease file satisfies `done`; its leases.
fn wait_lease_file(lab: &Lab, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let end = Instant::now() + SAVE_WAIT;
    loop {
        let entries = lease_file_entries(lab).unwrap_or_default();
        if done(&entries) || Instant::now() >= end {
            return entries;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn file_has(entries: &[Value], mac: &str, ip: &str) -> bool {
    entries
        .iter()
        .any(|l| l["mac"] == mac && l["ip"] == ip && l["state"] == "bound")
}

/// What a client reported for its lease, and what it made of it in its namespace:
/// address, default route via the gateway, the host route, the MTU, `resolv.conf`.
fn assert_configured(lab: &Lab, vm: &Vm, client: &DhcpClient, ev: &Event, ip: &str) {
    let who = format!("{} on {}", client.kind().name(), vm.role);
    let ctx = || client.log();
    assert_eq!(ev.get("ip"), ip, "{who}: {ev:?}\n{}", ctx());
    assert_eq!(ev.get("server"), SERVER, "{who}: {ev:?}");
    assert_eq!(ev.get("router"), GATEWAY, "{who}: {ev:?}");
    assert_eq!(ev.get("dns"), DNS, "{who}: {ev:?}");
    assert_eq!(ev.get("domain"), DOMAIN, "{who}: {ev:?}");
    assert_eq!(ev.get("mtu"), MTU.to_string(), "{who}: {ev:?}");
    assert_eq!(ev.get("routes"), ROUTES_121, "{who}: {ev:?}");
    assert_eq!(ev.get("lease"), LEASE_SECS.to_string(), "{who}: {ev:?}");
    // A port's own: its dns_name and extra_dhcp_opts (a MAC without a port has neither).
    if vm.ip.is_some() {
        assert_eq!(ev.get("hostname"), vm.role, "{who}: dns_name: {ev:?}");
        assert_eq!(
            ev.get("ntp"),
            NTP,
            "{who}: extra_dhcp_opts ntp-server: {ev:?}"
        );
    }

    let ifname = lab.client_if(vm);
    let addrs = lab.ipv4_addrs(vm);
    assert!(
        addrs.contains(&format!("inet {ip}/{PREFIX_LEN} ")),
        "{who}: address {ip}/{PREFIX_LEN} not on {ifname}: {addrs}\n{}",
        ctx()
    );
    let routes = lab.ip(vm, &["-4", "route", "show"]);
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev {ifname}")),
        "{who}: no default route via {GATEWAY}:\n{routes}\n{}",
        ctx()
    );
    assert!(
        routes.contains(&format!("{ROUTE_DST} via {ROUTE_VIA} dev {ifname}")),
        "{who}: no route {ROUTE_DST} via {ROUTE_VIA} (option 121):\n{routes}\n{}",
        ctx()
    );
    let link = lab.ip(vm, &["-o", "link", "show", "dev", &ifname]);
    assert!(
        link.contains(&format!(" mtu {MTU} ")),
        "{who}: MTU {MTU} not set: {link}\n{}",
        ctx()
    );
    assert_eq!(
        client.resolv_conf().as_deref(),
        Some(format!("search {DOMAIN}\nnameserver {DNS}\n").as_str()),
        "{who}: resolv.conf\n{}",
        ctx()
    );
}

/// polluxd's clean exit after `sig`; its stderr.
fn stop_cleanly(polluxd: Polluxd, sig: libc::c_int) -> String {
    let (status, stderr) = polluxd.stop_with(sig).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "polluxd exited with {status} after signal {sig}; stderr:\n{stderr}"
    );
    stderr
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn udhcpc_dhclient_and_dhcpcd_bind_renew_and_release() {
    let _serial = daemon::setup(TOOLS);
    let host = HostFiles::snapshot();
    let started = Instant::now();
    let vms = [(Kind::Udhcpc, U), (Kind::Dhclient, D), (Kind::Dhcpcd, C)];
    let lab = Lab::new(&vms.map(|(_, vm)| vm), "");
    let polluxd = lab.start(true);

    // All three at once.
    let mut clients: Vec<(Vm, DhcpClient)> = vms
        .iter()
        .map(|(kind, vm)| (*vm, lab.client(*kind, vm)))
        .collect();
    for (vm, client) in &mut clients {
        let ev = client
            .wait_bound()
            .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
        assert_configured(&lab, vm, client, &ev, vm.ip.unwrap());
    }
    eprintln!("three clients bound after {:?}", started.elapsed());

    let listed = wait_leases(&polluxd, Duration::from_secs(2), |l| l.len() == 3);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (vm, _) in &clients {
        assert_bound_lease(&listed, vm, vm.ip.unwrap());
    }
    let file = wait_lease_file(&lab, |e| {
        clients
            .iter()
            .all(|(vm, _)| file_has(e, vm.mac, vm.ip.unwrap()))
    });
    assert!(
        clients
            .iter()
            .all(|(vm, _)| file_has(&file, vm.mac, vm.ip.unwrap())),
        "{} does not hold the three leases {SAVE_WAIT:?} after binding: {file:?}",
        lab.lease_file().display()
    );

    // Renew: each gets an ACK for the same address and stays bound.
    let before = dhcp_stats(&polluxd);
    for (vm, client) in &mut clients {
        let ev = client
            .renew()
            .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
        assert_configured(&lab, vm, client, &ev, vm.ip.unwrap());
    }
    let after = dhcp_stats(&polluxd);
    assert!(
        counter(&after, "acks") >= counter(&before, "acks") + 3,
        "three renewals, three ACKs: before {before}, after {after}"
    );
    assert_eq!(
        counter(&after, "naks"),
        counter(&before, "naks"),
        "a renewal was refused: {after}"
    );
    let listed = leases(&polluxd);
    assert_eq!(listed.len(), 3, "{listed:?}");
    for (vm, _) in &clients {
        assert_bound_lease(&listed, vm, vm.ip.unwrap());
    }

    // Release: each lease disappears and each client deconfigures.
    for (vm, client) in &mut clients {
        client
            .release()
            .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
        let gone = wait_leases(&polluxd, Duration::from_secs(2), |l| {
            lease_for(l, vm.mac).is_none()
        });
        assert!(
            lease_for(&gone, vm.mac).is_none(),
            "{} released, its lease is still listed: {gone:?}\n{}",
            client.kind().name(),
            client.log()
        );
    }
    let end = dhcp_stats(&polluxd);
    assert_eq!(
        counter(&end, "releases"),
        counter(&after, "releases") + 3,
        "{end}"
    );
    assert_eq!(end["drops"], json!({}), "no message was dropped: {end}");
    assert_eq!(counter(&end, "offers"), 3, "one DISCOVER per client: {end}");
    let file = wait_lease_file(&lab, <[Value]>::is_empty);
    assert!(
        file.is_empty(),
        "released leases stay in the lease file: {file:?}"
    );
    // dhcpcd removes its address itself; the scripts of the others do on release.
    let (_, dhcpcd) = &mut clients[2];
    assert!(
        dhcpcd.wait_exit(Duration::from_secs(5)).unwrap().is_some(),
        "dhcpcd -k: the daemon should exit after releasing\n{}",
        dhcpcd.log()
    );
    for (vm, _) in &clients {
        let addrs = lab.ipv4_addrs(vm);
        assert!(
            !addrs.contains("198.18.30."),
            "{}: address still configured after release: {addrs}",
            vm.role
        );
    }

    drop(clients);
    stop_cleanly(polluxd, libc::SIGINT);
    host.assert_unchanged();
    eprintln!(
        "udhcpc_dhclient_and_dhcpcd_bind_renew_and_release took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn leases_survive_a_restart_and_the_client_keeps_its_address() {
    let _serial = daemon::setup(TOOLS);
    let host = HostFiles::snapshot();
    let started = Instant::now();
    let lab = Lab::new(&[U], "");
    let polluxd = lab.start(true);
    let mut client = lab.client(Kind::Udhcpc, &U);
    let ip = U.ip.unwrap();
    let ev = client
        .wait_bound()
        .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
    assert_configured(&lab, &U, &client, &ev, ip);

    // SIGTERM right away: the lease reaches the file on the way out, if not before.
    stop_cleanly(polluxd, libc::SIGTERM);
    let file = lease_file_entries(&lab).unwrap_or_default();
    assert!(
        file_has(&file, U.mac, ip),
        "{} after SIGTERM: {file:?}",
        lab.lease_file().display()
    );

    // Restarted on the same state directory (into the persisted generation): the lease
    // is listed before the client says anything.
    let polluxd = lab.start(false);
    let listed = leases(&polluxd);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_bound_lease(&listed, &U, ip);
    let stats = dhcp_stats(&polluxd);
    assert_eq!(
        counter(&stats, "received"),
        0,
        "client traffic already: {stats}"
    );

    // The client renews (unicast to the server, which the new daemon answers ARP for)
    // and keeps its address.
    let ev = client
        .renew()
        .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
    assert_configured(&lab, &U, &client, &ev, ip);
    let stats = dhcp_stats(&polluxd);
    assert_eq!(counter(&stats, "acks"), 1, "{stats}");
    assert_eq!(counter(&stats, "naks"), 0, "{stats}");
    assert_eq!(counter(&stats, "offers"), 0, "no new DISCOVER: {stats}");
    assert_bound_lease(&leases(&polluxd), &U, ip);

    drop(client);
    stop_cleanly(polluxd, libc::SIGINT);
    host.assert_unchanged();
    eprintln!(
        "leases_survive_a_restart_and_the_client_keeps_its_address took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn a_changed_fixed_ip_naks_the_renewal_and_a_removed_port_loses_its_lease() {
    let _serial = daemon::setup(TOOLS);
    let host = HostFiles::snapshot();
    let started = Instant::now();
    let lab = Lab::new(&[U, B], "");
    let polluxd = lab.start(true);
    let mut a = lab.client(Kind::Udhcpc, &U);
    let mut b = lab.client(Kind::Udhcpc, &B);
    for (vm, client) in [(&U, &mut a), (&B, &mut b)] {
        let ev = client
            .wait_bound()
            .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
        assert_configured(&lab, vm, client, &ev, vm.ip.unwrap());
    }
    let listed = wait_leases(&polluxd, Duration::from_secs(2), |l| l.len() == 2);
    assert_bound_lease(&listed, &U, U.ip.unwrap());
    assert_bound_lease(&listed, &B, B.ip.unwrap());

    // Without a restart: vm-u's fixed IP changes, vm-b goes.
    let new_ip = "198.18.30.31";
    let mut state = polluxd.call("config.get", json!({}))["state"].clone();
    let ports = state["ports"].as_array_mut().unwrap();
    ports.retain(|p| p["id"] != B.port);
    let port_u = ports.iter_mut().find(|p| p["id"] == U.port).unwrap();
    port_u["fixed_ips"][0]["ip_address"] = json!(new_ip);
    let applied = polluxd.call("config.apply", json!({ "state": state }));
    assert_eq!(applied["applied"], true, "{applied}");

    let listed = leases(&polluxd);
    assert!(
        lease_for(&listed, B.mac).is_none(),
        "the removed port's lease is still listed: {listed:?}"
    );
    assert!(
        !listed.iter().any(|l| l["ip_address"] == U.ip.unwrap()),
        "vm-u's old address is still leased: {listed:?}"
    );
    let file = wait_lease_file(&lab, |e| !e.iter().any(|l| l["mac"] == B.mac));
    assert!(
        !file.iter().any(|l| l["mac"] == B.mac),
        "the removed port's lease stays in the lease file: {file:?}"
    );

    // vm-u's next renewal (for the old address) gets a NAK; udhcpc starts over and gets
    // the new one.
    let before = dhcp_stats(&polluxd);
    let from = a.start_renewal().unwrap();
    a.wait_event(from, &["nak"], dhcp::CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
    let ev = a
        .wait_event(from, &["bound"], dhcp::CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
    assert_configured(&lab, &U, &a, &ev, new_ip);
    let addrs = lab.ipv4_addrs(&U);
    assert!(
        !addrs.contains(&format!("inet {} ", U.ip.unwrap())),
        "the old address is still configured: {addrs}"
    );
    let after = dhcp_stats(&polluxd);
    assert_eq!(
        counter(&after, "naks"),
        counter(&before, "naks") + 1,
        "{after}"
    );
    assert!(
        counter(&after, "acks") > counter(&before, "acks"),
        "{after}"
    );
    let listed = leases(&polluxd);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_bound_lease(&listed, &U, new_ip);

    drop((a, b));
    stop_cleanly(polluxd, libc::SIGINT);
    host.assert_unchanged();
    eprintln!(
        "a_changed_fixed_ip_naks_the_renewal_and_a_removed_port_loses_its_lease took {:?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs root: network namespaces (run with --include-ignored as root)"]
fn an_unknown_mac_gets_no_offer_unless_its_subnet_serves_unknown_macs() {
    let _serial = daemon::setup(TOOLS);
    let host = HostFiles::snapshot();
    let started = Instant::now();
    // A port with a fixed IP at the start of the subnet, in memory: the dynamic pool must
    // skip its address.
    let fixed = "198.18.30.2";
    let extra = format!(
        r#"
[[ports]]
id = "vm-fixed"
network_id = "{NETWORK}"
mac_address = "fa:16:3e:30:00:41"
fixed_ips = [{{ subnet_id = "{SUBNET}", ip_address = "{fixed}" }}]
binding = {{ driver = "mem" }}
"#
    );
    let lab = Lab::new(&[GUEST], &extra);
    let polluxd = lab.start(true);
    let ns = lab.ns(&GUEST);
    let ifname = lab.client_if(&GUEST);

    // Known MACs only (the default): two DISCOVERs, no OFFER, the client gives up.
    let before = dhcp_stats(&polluxd);
    let mut client = DhcpClient::udhcpc_once(ns, &ifname, 2).unwrap();
    let status = client
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .unwrap_or_else(|| panic!("udhcpc -n -t 2 still runs after 10 s\n{}", client.log()));
    assert!(
        !status.success(),
        "an unknown MAC got a lease: {status}\n{}",
        client.log()
    );
    assert!(
        !client.events().iter().any(|e| e.reason == "bound"),
        "{}",
        client.log()
    );
    let after = dhcp_stats(&polluxd);
    assert_eq!(
        counter(&after, "offers"),
        counter(&before, "offers"),
        "an OFFER went to an unknown MAC: {after}"
    );
    assert!(
        after["drops"]["unknown_client"].as_u64().unwrap_or(0) >= 2,
        "the DISCOVERs are counted as unknown_client drops: {after}"
    );
    assert!(leases(&polluxd).is_empty());
    drop(client);

    // The subnet serves unknown MACs: the guest gets a free address of the subnet.
    let mut state = polluxd.call("config.get", json!({}))["state"].clone();
    state["subnets"][0]["dhcp_serve_unknown"] = json!(true);
    let applied = polluxd.call("config.apply", json!({ "state": state }));
    assert_eq!(applied["applied"], true, "{applied}");
    let mut client = DhcpClient::udhcpc_once(ns, &ifname, 3).unwrap();
    let ev = client
        .wait_bound()
        .unwrap_or_else(|e| panic!("{e}\npolluxd stderr:\n{}", polluxd.stderr_so_far()));
    let ip = ev.get("ip").to_owned();
    let last: u8 = ip
        .strip_prefix("198.18.30.")
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("address {ip} outside 198.18.30.0/24: {ev:?}"));
    assert!(
        ![0, 1, 254, 255].contains(&last) && ip != fixed,
        "the pool handed out a reserved address {ip}: {ev:?}"
    );
    assert_configured(&lab, &GUEST, &client, &ev, &ip);
    let status = client.wait_exit(Duration::from_secs(5)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "udhcpc -q should exit 0 after binding: {status:?}\n{}",
        client.log()
    );
    let listed = leases(&polluxd);
    let l = lease_for(&listed, GUEST.interface_mac)
        .unwrap_or_else(|| panic!("no lease for the guest: {listed:?}"));
    assert_eq!(l["ip_address"], ip.as_str(), "{l}");
    assert_eq!(l["state"], "bound", "{l}");
    assert_eq!(l["port_id"], Value::Null, "a MAC no port has: {l}");

    drop(client);
    stop_cleanly(polluxd, libc::SIGINT);
    host.assert_unchanged();
    eprintln!(
        "an_unknown_mac_gets_no_offer_unless_its_subnet_serves_unknown_macs took {:?}",
        started.elapsed()
    );
}
