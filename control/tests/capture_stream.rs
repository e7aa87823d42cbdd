//! `capture.start` through the control socket, on an in-process engine with `mem` ports:
//! the frames a port received, sent and dropped (with the stage and reason) stream to the
//! client as `capture.frame` notifications, byte for byte, then the final result says how
//! the capture ended; one capture runs at a time, a client that hangs up ends its capture,
//! and a capture with no traffic ends by its duration.

use pollux_testkit::TempDir;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pollux_control::binding::MemWires;
use pollux_control::client::{CallError, Client};
use pollux_control::engine::{Engine, EngineConfig, Initial};
use pollux_control::model::DesiredState;
use pollux_control::rpc::{RpcOptions, RpcServer};
use pollux_control::service::Service;
use pollux_drivers::mem::MemWire;
use serde_json::{json, Value};

const CONFIG: &str = r#"
[[networks]]
id = "net-a"
network_type = "local"

[[subnets]]
id = "sub-a"
network_id = "net-a"
cidr = "198.18.1.0/24"
gateway_ip = "198.18.1.1"
enable_dhcp = false

[[ports]]
id = "vm1"
network_id = "net-a"
security_groups = ["allow-all"]
mac_address = "fa:16:3e:00:00:01"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.11" }]
binding = { driver = "mem" }

[[ports]]
id = "vm2"
network_id = "net-a"
security_groups = ["allow-all"]
mac_address = "fa:16:3e:00:00:02"
fixed_ips = [{ subnet_id = "sub-a", ip_address = "198.18.1.12" }]
binding = { driver = "mem" }

[[security_groups]]
id = "allow-all"
rules = [{ direction = "egress" }, { direction = "ingress" }]
"#;

const VM1_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 1];
const VM2_MAC: [u8; 6] = [0xfa, 0x16, 0x3e, 0, 0, 2];
const VM1_IP: [u8; 4] = [198, 18, 1, 11];
const VM2_IP: [u8; 4] = [198, 18, 1, 12];
const CAPTURE_BUSY: i64 = -32011;

/// A UDP datagram in IPv4 in Ethernet, checksummed.
fn udp(dst: [u8; 6], src: [u8; 6], sip: [u8; 4], dip: [u8; 4], tag: u8) -> Vec<u8> {
    let payload = [tag; 18];
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip.extend_from_slice(&sip);
    ip.extend_from_slice(&dip);
    let total = (20 + 8 + payload.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x9c, 0x40, 0x00, 0x35]);
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

struct Lab {
    server: RpcServer,
    service: Service,
    wires: BTreeMap<String, MemWire>,
    socket: PathBuf,
    _tmp: TempDir,
}

impl Lab {
    fn start() -> Lab {
        let tmp = TempDir::new();
        let wires = MemWires::default();
        let engine = Engine::start(
            &EngineConfig {
                cores: vec![None],
                pool_frames: 4096,
                ..Default::default()
            },
            Initial {
                state: DesiredState::from_toml_str(CONFIG).expect("config parses"),
                generation: 1,
                persist: false,
            },
            None,
            Arc::clone(&wires),
        )
        .expect("engine starts");
        let wires = std::mem::take(&mut *wires.lock().unwrap());
        let socket = tmp.join("sock");
        let server = RpcServer::bind(&socket, RpcOptions::default()).expect("bind");
        Lab {
            server,
            service: Service::new(engine),
            wires: wires.into_iter().collect(),
            socket,
            _tmp: tmp,
        }
    }

    fn poll(&mut self) {
        self.server
            .poll_once(&mut self.service, Some(Duration::from_millis(5)))
            .expect("poll");
    }

    /// Serves until `done` says so (at most 20 s).
    fn serve_until(&mut self, mut done: impl FnMut(&mut Lab) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out");
            self.poll();
        }
    }

    fn wire(&mut self, port: &str) -> &mut MemWire {
        self.wires.get_mut(&format!("port:{port}")).expect("wire")
    }
}

type Streamed = (Vec<Value>, Result<Value, CallError>);

/// Starts `capture.start` with `params` on a client thread that collects the stream.
fn capture(lab: &Lab, params: Value) -> thread::JoinHandle<Streamed> {
    let socket = lab.socket.clone();
    thread::spawn(move || {
        let mut client = Client::connect(&socket).expect("connect");
        let mut frames = Vec::new();
        let mut announced = 0;
        let result = client.call_streaming("capture.start", params, |method, params| {
            match method {
                "capture.started" => announced += 1,
                "capture.frame" => {
                    assert_eq!(announced, 1, "announced first");
                    frames.push(params)
                }
                other => panic!("notification {other}"),
            }
            Ok(())
        });
        (frames, result)
    })
}

fn bytes(frame: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(frame["data"].as_str().unwrap())
        .unwrap()
}

#[test]
fn received_sent_and_dropped_frames_stream_with_their_reason() {
    let mut lab = Lab::start();
    let client = capture(
        &lab,
        json!({ "port": "vm1", "direction": "rx,tx,drop", "count": 4, "duration_secs": 15 }),
    );
    lab.serve_until(|lab| lab.server.stream_count() == 1);
    // Only one at a time.
    let second = capture(&lab, json!({ "port": "vm2" }));
    lab.serve_until(|_| second.is_finished());
    match second.join().unwrap().1 {
        Err(CallError::Rpc { code, .. }) => assert_eq!(code, CAPTURE_BUSY),
        other => panic!("second capture: {other:?}"),
    }

    let honest = udp(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 1);
    let spoofed = udp(VM2_MAC, VM1_MAC, [198, 18, 1, 99], VM2_IP, 2);
    let reply = udp(VM1_MAC, VM2_MAC, VM2_IP, VM1_IP, 3);
    assert!(lab.wire("vm1").send(&honest) && lab.wire("vm1").send(&spoofed));
    lab.serve_until(|lab| !lab.wire("vm2").recv_all().is_empty());
    assert!(lab.wire("vm2").send(&reply));
    lab.serve_until(|_| client.is_finished());
    let (frames, result) = client.join().unwrap();
    let result = result.expect("capture result");
    assert_eq!(result["frames"], 4, "{result}");
    assert_eq!(result["lost"], 0, "{result}");
    assert_eq!(result["ended"], "count", "{result}");
    assert_eq!(result["direction"], "rx,tx,drop", "{result}");
    let seen: Vec<(String, Vec<u8>, Option<String>)> = frames
        .iter()
        .map(|f| {
            let drop = f
                .get("reason")
                .map(|r| format!("{}/{}", f["stage"].as_str().unwrap(), r.as_str().unwrap()));
            (f["direction"].as_str().unwrap().to_owned(), bytes(f), drop)
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("rx".to_owned(), honest.clone(), None),
            ("rx".to_owned(), spoofed.clone(), None),
            (
                "drop".to_owned(),
                spoofed,
                Some("port_security/spoofed_ip".to_owned())
            ),
            ("tx".to_owned(), reply, None),
        ]
    );
    for f in &frames {
        assert_eq!(f["orig_len"].as_u64().unwrap() as usize, honest.len());
        // Unix time, within the test's lifetime.
        let ts = f["timestamp_ns"].as_u64().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(ts <= now && now - ts < 60_000_000_000, "{ts} vs {now}");
    }
}

#[test]
fn a_client_that_hangs_up_ends_its_capture_and_an_idle_capture_ends_by_its_duration() {
    let mut lab = Lab::start();
    let socket = lab.socket.clone();
    let quitter = thread::spawn(move || {
        let mut client = Client::connect(&socket).expect("connect");
        // Gives up at its first frame.
        client.call_streaming("capture.start", json!({ "port": "vm1" }), |method, _| {
            if method == "capture.frame" {
                return Err(CallError::Protocol("enough".into()));
            }
            Ok(())
        })
    });
    lab.serve_until(|lab| lab.server.stream_count() == 1);
    assert!(lab
        .wire("vm1")
        .send(&udp(VM2_MAC, VM1_MAC, VM1_IP, VM2_IP, 1)));
    lab.serve_until(|_| quitter.is_finished());
    assert!(quitter.join().unwrap().is_err());
    // Its connection is dropped with the capture, so the next one starts.
    lab.serve_until(|lab| lab.server.stream_count() == 0);
    let started = Instant::now();
    let idle = capture(&lab, json!({ "port": "vm2", "duration_secs": 1 }));
    lab.serve_until(|_| idle.is_finished());
    let (frames, result) = idle.join().unwrap();
    let result = result.expect("capture result");
    assert!(frames.is_empty());
    assert_eq!(result["ended"], "duration", "{result}");
    assert_eq!(result["frames"], 0, "{result}");
    assert!(started.elapsed() >= Duration::from_secs(1));
}
