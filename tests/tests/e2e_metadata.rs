//! End to end: the metadata proxy (issue #21) inside the real `polluxd` (release build):
//! `curl http://169.254.169.254/...` from VM namespaces over AF_XDP on veth, answered by a
//! test metadata server in a namespace of its own.
//!
//! ```text
//!   namespace r1: eth0 198.18.40.11/24 via .1 ──veth── <P>r1 ┐ polluxd (namespace host):
//!   namespace r2: eth0 198.18.40.12/24 via .1 ──veth── <P>r2 ┤ router r1 on net-r, DHCP on
//!   namespace i1: eth0 198.18.41.11/24 (DHCP) ──veth── <P>i1 ┘ net-i (no router)
//!   namespace md: eth0 198.19.250.2/30 ──veth── <P>md 198.19.250.1/30 (host)
//! ```
//!
//! (`configs/e2e-metadata.toml`.) The metadata server (`/usr/bin/python3`'s http.server)
//! refuses (403) any request without exactly one of each of Neutron's headers, with a
//! signature that is not HMAC-SHA256 of the instance id under the shared secret, or
//! without exactly one of `X-Neutron-Router-ID` and `X-Neutron-Network-ID`; it answers
//! `/latest/meta-data/instance-id` with the instance id it was told, `/headers` with the
//! headers it saw (JSON), and `/slow` after 5 s. Needs root and `ip`, `curl`, `udhcpc`,
//! `/usr/bin/python3`: it fails, never skips, when any is missing. Everything it makes is
//! removed on every path.

use std::time::{Duration, Instant};

use pollux_services::metadata::sign::sign_instance_id;
use pollux_tests::daemon::{self, ConfigFile, Polluxd};
use pollux_tests::dhcp::DhcpClient;
use pollux_tests::netns::{Netns, Proc, Topology};
use pollux_tests::vm_lab::{Vm, VmNet};
use serde_json::{json, Value};

const TOOLS: &[&str] = &["ip", "curl", "udhcpc", "/usr/bin/python3"];
const CONFIG: &str = "e2e-metadata.toml";
const SECRET: &str = "pollux-e2e-secret";
const SERVER_IP: &str = "198.19.250.2";
const SERVER_PORT: &str = "8775";
const ROUTED_GW: &str = "198.18.40.1";
/// net-i's DHCP server: the default address, the last host of the /24.
const ISOLATED_DHCP: &str = "198.18.41.254";

const R1: Vm = Vm {
    role: "r1",
    mac: "fa:16:3e:40:00:11",
    ip: "198.18.40.11",
};
const R2: Vm = Vm {
    role: "r2",
    mac: "fa:16:3e:40:00:12",
    ip: "198.18.40.12",
};
const I1: Vm = Vm {
    role: "i1",
    mac: "fa:16:3e:41:00:11",
    ip: "198.18.41.11",
};

/// The test metadata server: argv is the secret, the address and the port.
const SERVER: &str = r#"
import hashlib, hmac, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

secret = sys.argv[1].encode()
IDENTITY = ("X-Forwarded-For", "X-Instance-ID", "X-Tenant-ID", "X-Instance-ID-Signature")

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self):
        h = self.headers
        problems = [f"want one {n}" for n in IDENTITY if len(h.get_all(n) or []) != 1]
        iid = h.get("X-Instance-ID", "")
        want = hmac.new(secret, iid.encode(), hashlib.sha256).hexdigest()
        if h.get("X-Instance-ID-Signature") != want:
            problems.append("bad signature")
        via = [n for n in ("X-Neutron-Router-ID", "X-Neutron-Network-ID") if h.get_all(n)]
        if len(via) != 1 or len(h.get_all(via[0])) != 1:
            problems.append("want one of X-Neutron-Router-ID, X-Neutron-Network-ID")
        if problems:
            return self.answer(403, "; ".join(problems))
        if self.path == "/latest/meta-data/instance-id":
            return self.answer(200, iid)
        if self.path == "/headers":
            return self.answer(200, json.dumps(dict(h.items())))
        if self.path == "/slow":
            time.sleep(5)
            return self.answer(200, "late")
        return self.answer(404, "no such thing")

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), Handler)
server.daemon_threads = True
print("ready", file=sys.stderr, flush=True)
server.serve_forever()
"#;

/// The lab: the VMs, the metadata server's namespace and server, polluxd.
struct Lab {
    net: VmNet,
    server: Option<Proc>,
    polluxd: Polluxd,
    _config: ConfigFile,
}

impl Lab {
    fn start() -> Lab {
        let net = VmNet::with_roles(Topology::new(), &["md"], &[&R1, &R2, &I1]);
        let host_if = net.topo.prefix().ifname("md").unwrap();
        net.topo.veth("host", &host_if, "md", "eth0").unwrap();
        net.topo.addr("host", &host_if, "198.19.250.1/30").unwrap();
        net.topo
            .addr("md", "eth0", &format!("{SERVER_IP}/30"))
            .unwrap();
        for vm in [&R1, &R2] {
            net.topo.route(vm.role, "default", ROUTED_GW).unwrap();
        }
        let mut server = net
            .ns("md")
            .spawn(
                "/usr/bin/python3",
                &["-c", SERVER, SECRET, SERVER_IP, SERVER_PORT],
            )
            .unwrap();
        assert!(
            server.wait_stderr_contains("ready", Duration::from_secs(10)),
            "the metadata server did not start: {}",
            server.stderr_so_far()
        );
        let config = net.config(CONFIG);
        let polluxd = net.start(&config);
        Lab {
            net,
            server: Some(server),
            polluxd,
            _config: config,
        }
    }

    fn vm(&self, vm: &Vm) -> &Netns {
        self.net.vm(vm)
    }

    fn metadata_stat(&self, name: &str) -> u64 {
        self.polluxd.call("stats.get", json!({}))["metadata"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no metadata.{name} in stats.get"))
    }
}

/// `curl` of `path` on the metadata address from `ns` (with `extra` arguments): the
/// status and the body.
fn curl(ns: &Netns, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://169.254.169.254{path}");
    let mut args = vec!["-sS", "-m", "8", "-o", "-", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = ns
        .exec_timeout("curl", &args, Duration::from_secs(10))
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {url} in {}: no status ({}): {text:?} {}",
                ns.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        }),
        body.to_owned(),
    )
}

/// The headers the metadata server saw for a request from `ns`.
fn headers_seen(ns: &Netns, extra: &[&str]) -> Value {
    let (code, body) = curl(ns, "/headers", extra);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
#[ignore = "needs root: network namespaces, AF_XDP"]
fn the_router_case_carries_every_header_and_the_signature() {
    let _guard = daemon::setup(TOOLS);
    let lab = Lab::start();
    let (code, body) = curl(lab.vm(&R1), "/latest/meta-data/instance-id", &[]);
    assert_eq!(
        (code, body.as_str()),
        (200, "instance-r1"),
        "stats: {}\npolluxd stderr:\n{}",
        lab.polluxd.call("stats.get", json!({})),
        lab.polluxd.stderr_so_far()
    );
    let h = headers_seen(lab.vm(&R1), &[]);
    assert_eq!(h["X-Forwarded-For"], R1.ip);
    assert_eq!(h["X-Instance-ID"], "instance-r1");
    assert_eq!(h["X-Tenant-ID"], "project-a");
    assert_eq!(
        h["X-Instance-ID-Signature"],
        sign_instance_id(SECRET.as_bytes(), "instance-r1")
    );
    assert_eq!(h["X-Neutron-Router-ID"], "r1");
    assert!(h.get("X-Neutron-Network-ID").is_none(), "{h}");
    let stats = lab.polluxd.call("stats.get", json!({}));
    assert!(lab.metadata_stat("answered") >= 2, "{stats}");
    // Every segment the worker punted reached the proxy: at least the SYN, the request
    // and the FIN of each of the two requests.
    let punted = stats["slow_path"]["services"]["metadata"]["punted"]
        .as_u64()
        .unwrap_or(0);
    assert!(punted >= 6, "{stats}");
    assert_eq!(
        punted,
        stats["metadata"]["frames_in"].as_u64().unwrap(),
        "{stats}"
    );
    assert_eq!(stats["metadata"]["frames_ignored"], 0, "{stats}");
}

#[test]
#[ignore = "needs root: network namespaces, AF_XDP"]
fn a_vm_is_named_by_its_port_whatever_it_writes() {
    let _guard = daemon::setup(TOOLS);
    let lab = Lab::start();
    let (code, body) = curl(lab.vm(&R2), "/latest/meta-data/instance-id", &[]);
    assert_eq!((code, body.as_str()), (200, "instance-r2"));
    // r1 claims to be r2 in every header it can write: the proxy drops them all.
    let forged = [
        "-H",
        "X-Instance-ID: instance-r2",
        "-H",
        "X-Forwarded-For: 198.18.40.12",
        "-H",
        "X-Tenant-ID: project-b",
        "-H",
        "X-Neutron-Network-ID: net-i",
    ];
    let (code, body) = curl(lab.vm(&R1), "/latest/meta-data/instance-id", &forged);
    assert_eq!((code, body.as_str()), (200, "instance-r1"));
    let h = headers_seen(lab.vm(&R1), &forged);
    assert_eq!(h["X-Instance-ID"], "instance-r1");
    assert_eq!(h["X-Forwarded-For"], R1.ip);
    assert_eq!(h["X-Tenant-ID"], "project-a");
    assert!(h.get("X-Neutron-Network-ID").is_none(), "{h}");
}

#[test]
#[ignore = "needs root: network namespaces, AF_XDP"]
fn the_isolated_case_is_reached_by_dhcp_option_121() {
    let _guard = daemon::setup(TOOLS);
    let lab = Lab::start();
    let ns = lab.vm(&I1);
    let mut client = DhcpClient::udhcpc_once(ns, "eth0", 3).unwrap();
    let bound = client.wait_bound().unwrap();
    assert_eq!(
        bound.get("routes"),
        format!("0.0.0.0/0 198.18.41.1 169.254.169.254/32 {ISOLATED_DHCP}"),
        "{bound:?}"
    );
    let routes = ns.ip(&["-4", "route", "show"]).unwrap();
    assert!(
        routes.contains(&format!("169.254.169.254 via {ISOLATED_DHCP} dev eth0")),
        "{routes}"
    );
    let (code, body) = curl(ns, "/latest/meta-data/instance-id", &[]);
    assert_eq!(
        (code, body.as_str()),
        (200, "instance-i1"),
        "polluxd stderr:\n{}",
        lab.polluxd.stderr_so_far()
    );
    let h = headers_seen(ns, &[]);
    assert_eq!(h["X-Forwarded-For"], I1.ip);
    assert_eq!(h["X-Neutron-Network-ID"], "net-i");
    assert!(h.get("X-Neutron-Router-ID").is_none(), "{h}");
}

#[test]
#[ignore = "needs root: network namespaces, AF_XDP"]
fn a_slow_or_absent_metadata_server_is_a_gateway_error() {
    let _guard = daemon::setup(TOOLS);
    let mut lab = Lab::start();
    let started = Instant::now();
    let (code, _) = curl(lab.vm(&R1), "/slow", &[]);
    let took = started.elapsed();
    assert_eq!(code, 504);
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "answered after {took:?}, response_timeout_ms is 2000"
    );
    assert_eq!(lab.metadata_stat("upstream_timeout"), 1);
    // The proxy still serves the next one while nothing is left behind.
    let (code, body) = curl(lab.vm(&R2), "/latest/meta-data/instance-id", &[]);
    assert_eq!((code, body.as_str()), (200, "instance-r2"));
    lab.server
        .take()
        .unwrap()
        .stop(Duration::from_secs(2))
        .unwrap();
    let (code, _) = curl(lab.vm(&R1), "/latest/meta-data/instance-id", &[]);
    assert_eq!(code, 502);
    assert!(lab.metadata_stat("upstream_error") >= 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.metadata_stat("open_connections") != 0 {
        assert!(Instant::now() < deadline, "connections left open");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The benchmark client: argv is the count and the parallelism; prints requests per
/// second, then p50 and p99 latency in milliseconds.
const CLIENT: &str = r#"
import socket, sys, threading, time
count, parallel = int(sys.argv[1]), int(sys.argv[2])
lat, bad, lock = [], [], threading.Lock()
req = b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n"
def run(n):
    for _ in range(n):
        t = time.perf_counter()
        s = socket.create_connection(("169.254.169.254", 80), timeout=5)
        s.sendall(req)
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        with lock:
            lat.append(time.perf_counter() - t)
            if not data.startswith(b"HTTP/1.0 200"):
                bad.append(data[:40])
start = time.perf_counter()
threads = [threading.Thread(target=run, args=(count // parallel,)) for _ in range(parallel)]
[t.start() for t in threads]
[t.join() for t in threads]
wall = time.perf_counter() - start
lat.sort()
print(f"{len(lat) / wall:.0f} {lat[len(lat) // 2] * 1000:.2f} {lat[len(lat) * 99 // 100] * 1000:.2f} {len(bad)}")
"#;

#[test]
#[ignore = "needs root: network namespaces, AF_XDP"]
fn metadata_requests_per_second() {
    let _guard = daemon::setup(TOOLS);
    let lab = Lab::start();
    // Warm up (the first request waits for ARP on both sides).
    assert_eq!(
        curl(lab.vm(&R1), "/latest/meta-data/instance-id", &[]).0,
        200
    );
    for (count, parallel) in [(400, 1), (400, 4)] {
        let out = lab
            .vm(&R1)
            .exec_timeout(
                "/usr/bin/python3",
                &["-c", CLIENT, &count.to_string(), &parallel.to_string()],
                Duration::from_secs(120),
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            fields.len(),
            4,
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(fields[3], "0", "requests without a 200: {text}");
        println!(
            "metadata proxy, {count} requests, {parallel} in parallel: {} requests/s, \
             p50 {} ms, p99 {} ms",
            fields[0], fields[1], fields[2]
        );
    }
}
