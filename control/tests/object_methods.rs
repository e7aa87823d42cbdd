//! The object methods (`<collection>.put`, `.delete`, `config.patch`) over the real socket
//! of the built `polluxd` on `mem` ports: every collection, the replies and errors, history
//! and rollback across both kinds of change, a restart, two clients racing with
//! `expect_generation`, and `polluxctl put`/`delete`.
//!
//! Every daemon is SIGKILLed and reaped by a guard; every wait is bounded.

use pollux_testkit::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use pollux_control::client::{CallError, Client};
use serde_json::{json, Value};

const POLLUXD: &str = env!("CARGO_BIN_EXE_polluxd");
const POLLUXCTL: &str = env!("CARGO_BIN_EXE_polluxctl");
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

const INVALID_CONFIG: i64 = -32001;
const GENERATION_MISMATCH: i64 = -32002;
const UNKNOWN_OBJECT: i64 = -32007;
const INVALID_PARAMS: i64 = -32602;

struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts polluxd in `dir` (with `config` if given) and waits for its ready line.
    fn start(dir: &TempDir, config: Option<&Path>) -> Daemon {
        let socket = dir.join("polluxd.sock");
        let mut cmd = Command::new(POLLUXD);
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--pool-frames")
            .arg("4096");
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn polluxd");
        let pipe = child.stderr.take().unwrap();
        let daemon = Daemon { child, socket };
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("polluxd: ready:") => return daemon,
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => panic!("polluxd did not get ready; stderr:\n{seen}"),
            }
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket)
            .and_then(|c| c.with_timeout(CALL_TIMEOUT))
            .unwrap()
    }
}

fn base_state() -> Value {
    json!({
        "uplinks": [
            { "name": "uplink0", "physnet": "physnet1", "binding": { "driver": "mem" } }
        ],
        "networks": [
            { "id": "net-a", "network_type": "vlan", "physical_network": "physnet1",
              "segmentation_id": 100 },
            { "id": "ext", "network_type": "flat", "physical_network": "physnet1" }
        ],
        "subnets": [
            { "id": "sub-a", "network_id": "net-a", "cidr": "198.18.10.0/24",
              "gateway_ip": "198.18.10.1" },
            { "id": "sub-ext", "network_id": "ext", "cidr": "203.0.113.0/24",
              "gateway_ip": "203.0.113.1" }
        ],
        "ports": [
            { "id": "vm1", "network_id": "net-a", "mac_address": "fa:16:3e:0a:00:11",
              "fixed_ips": [{ "subnet_id": "sub-a", "ip_address": "198.18.10.11" }],
              "binding": { "driver": "mem" } }
        ],
        "routers": [
            { "id": "r1", "interfaces": ["sub-a"],
              "external_gateway_info": { "network_id": "ext", "external_fixed_ip": "203.0.113.10" } }
        ]
    })
}

fn start_base(dir: &TempDir) -> Daemon {
    let config = dir.join("base.json");
    std::fs::write(&config, base_state().to_string()).unwrap();
    Daemon::start(dir, Some(&config))
}

fn port(id: &str, mac: &str, ip: &str) -> Value {
    json!({ "id": id, "network_id": "net-a", "mac_address": mac,
            "fixed_ips": [{ "subnet_id": "sub-a", "ip_address": ip }],
            "binding": { "driver": "mem" } })
}

fn ok(c: &mut Client, method: &str, params: Value) -> Value {
    c.call(method, params)
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

fn err(c: &mut Client, method: &str, params: Value, code: i64) -> Value {
    match c.call(method, params) {
        Err(CallError::Rpc {
            code: got, data, ..
        }) => {
            assert_eq!(got, code, "{method}: {data:?}");
            data.unwrap_or(Value::Null)
        }
        other => panic!("{method}: expected error {code}, got {other:?}"),
    }
}

fn state(c: &mut Client) -> Value {
    ok(c, "config.get", json!({}))["state"].clone()
}

fn generation(c: &mut Client) -> u64 {
    ok(c, "config.get", json!({}))["generation"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_object_method_over_the_socket() {
    let dir = TempDir::new();
    let d = start_base(&dir);
    let mut c = d.client();
    assert_eq!(generation(&mut c), 1);
    let initial = state(&mut c);

    // rpc.list names every method.
    let list = ok(&mut c, "rpc.list", json!({}));
    let names: Vec<&str> = list["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    let collections = [
        ("uplinks", "uplink"),
        ("networks", "network"),
        ("subnets", "subnet"),
        ("ports", "port"),
        ("routers", "router"),
        ("floating_ips", "floating_ip"),
        ("security_groups", "security_group"),
        ("address_groups", "address_group"),
        ("qos_policies", "qos_policy"),
    ];
    assert!(names.contains(&"config.patch"), "{list}");
    for (plural, _) in collections {
        for verb in ["put", "delete"] {
            let name = format!("{plural}.{verb}");
            assert!(names.contains(&name.as_str()), "rpc.list lacks {name}");
        }
    }

    // One new object of every collection, each its own generation.
    let objects = [
        json!({ "name": "uplink1", "physnet": "physnet2", "binding": { "driver": "mem" } }),
        json!({ "id": "net-b", "network_type": "vlan", "physical_network": "physnet1",
                "segmentation_id": 200 }),
        json!({ "id": "sub-b", "network_id": "net-b", "cidr": "198.18.20.0/24",
                "gateway_ip": "198.18.20.1" }),
        port("vm2", "fa:16:3e:0a:00:12", "198.18.10.12"),
        json!({ "id": "r2", "interfaces": ["sub-b"] }),
        json!({ "id": "fip1", "floating_ip_address": "203.0.113.20", "port_id": "vm1" }),
        json!({ "id": "sg1", "rules": [{ "direction": "ingress", "ethertype": "IPv4" }] }),
        json!({ "id": "ag1", "addresses": ["198.18.7.0/24", "2001:db8::/64"] }),
        json!({ "id": "qos1", "rules": [{ "type": "dscp_marking", "dscp_mark": 26 }] }),
    ];
    let mut g = 1;
    for ((plural, singular), object) in collections.iter().zip(&objects) {
        let method = format!("{plural}.put");
        // A dry run first: the diff, nothing applied.
        let r = ok(
            &mut c,
            &method,
            json!({ *singular: object, "dry_run": true }),
        );
        assert_eq!(
            (&r["applied"], &r["changed"], &r["dry_run"]),
            (&json!(false), &json!(true), &json!(true)),
            "{method}: {r}"
        );
        assert_eq!(r["generation"], g);
        let r = ok(
            &mut c,
            &method,
            json!({ *singular: object, "expect_generation": g }),
        );
        g += 1;
        assert_eq!(
            (&r["applied"], &r["generation"]),
            (&json!(true), &json!(g)),
            "{method}: {r}"
        );
        // The same object again: a no-op.
        let r = ok(&mut c, &method, json!({ *singular: object }));
        assert_eq!(
            (&r["changed"], &r["generation"]),
            (&json!(false), &json!(g)),
            "{r}"
        );
        let key = if *plural == "uplinks" { "name" } else { "id" };
        let listed = state(&mut c)[*plural]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o[key] == object[key]);
        assert!(listed, "{method}: the object is not in the state");
    }

    // Replacing keeps the index; a validation error names it.
    let mut bad = port("vm1", "fa:16:3e:0a:00:12", "198.18.10.11"); // vm2's MAC
    let data = err(&mut c, "ports.put", json!({ "port": bad }), INVALID_CONFIG);
    let paths: Vec<&str> = data["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.iter().any(|p| p.starts_with("ports[0].mac_address") || p.starts_with("ports[1].mac_address")),
        "{data}"
    );
    bad["mac_address"] = json!(7);
    let data = err(&mut c, "ports.put", json!({ "port": bad }), INVALID_CONFIG);
    assert_eq!(data["errors"][0]["path"], "ports[0]", "{data}");
    assert_eq!(generation(&mut c), g, "refusals change nothing");

    // Malformed params.
    err(&mut c, "ports.put", json!({}), INVALID_PARAMS);
    err(&mut c, "ports.put", json!({ "port": 5 }), INVALID_PARAMS);
    err(
        &mut c,
        "ports.put",
        json!({ "port": port("vm9", "fa:16:3e:0a:00:19", "198.18.10.19"), "bogus": 1 }),
        INVALID_PARAMS,
    );
    err(&mut c, "ports.delete", json!({ "id": 5 }), INVALID_PARAMS);
    err(
        &mut c,
        "config.patch",
        json!({ "changes": [{ "op": "put", "collection": "widgets", "object": {} }] }),
        INVALID_PARAMS,
    );
    err(
        &mut c,
        "config.patch",
        json!({ "changes": [{ "op": "move", "collection": "ports", "id": "vm1" }] }),
        INVALID_PARAMS,
    );

    // Deletes, in reverse order of the references; an unknown id is -32007.
    let data = err(
        &mut c,
        "ports.delete",
        json!({ "id": "nope" }),
        UNKNOWN_OBJECT,
    );
    assert_eq!(
        (&data["collection"], &data["id"]),
        (&json!("ports"), &json!("nope"))
    );
    // A network still referenced is refused as invalid, naming the referrer.
    err(
        &mut c,
        "networks.delete",
        json!({ "id": "net-b" }),
        INVALID_CONFIG,
    );
    let stale = err(
        &mut c,
        "ports.delete",
        json!({ "id": "vm2", "expect_generation": g - 1 }),
        GENERATION_MISMATCH,
    );
    assert_eq!(stale["current"], g);
    for ((plural, _), object) in collections.iter().zip(&objects).rev() {
        let key = if *plural == "uplinks" { "name" } else { "id" };
        let method = format!("{plural}.delete");
        let r = ok(&mut c, &method, json!({ "id": object[key] }));
        g += 1;
        assert_eq!(
            (&r["applied"], &r["generation"]),
            (&json!(true), &json!(g)),
            "{method}: {r}"
        );
    }
    // Every collection's object put and deleted again: back to the first state (which has
    // left the history of 16 generations by now).
    assert_eq!(state(&mut c), initial);

    // A batch is one generation, or none.
    let r = ok(
        &mut c,
        "config.patch",
        json!({ "changes": [
            { "op": "put", "collection": "ports", "object": port("vm3", "fa:16:3e:0a:00:13", "198.18.10.13") },
            { "op": "put", "collection": "ports", "object": port("vm4", "fa:16:3e:0a:00:14", "198.18.10.14") },
            { "op": "delete", "collection": "ports", "id": "vm1" },
        ] }),
    );
    g += 1;
    assert_eq!(r["generation"], g, "{r}");
    let ids: Vec<Value> = state(&mut c)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect();
    assert_eq!(ids, [json!("vm3"), json!("vm4")]);
    let data = err(
        &mut c,
        "config.patch",
        json!({ "changes": [
            { "op": "delete", "collection": "ports", "id": "vm3" },
            { "op": "delete", "collection": "ports", "id": "vm3" },
        ] }),
        UNKNOWN_OBJECT,
    );
    assert_eq!(data["change"], 1, "{data}");
    assert_eq!(generation(&mut c), g);

    // History holds both kinds; a rollback over an object change brings its state back.
    let r = ok(&mut c, "config.rollback", json!({ "generation": g - 1 }));
    g += 1;
    assert_eq!(r["generation"], g);
    let vm1 = state(&mut c)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "vm1");
    assert!(vm1, "the rollback restores vm1");
    let before = state(&mut c);

    // A restart comes back with the same generation and state.
    drop(c);
    drop(d);
    let d = Daemon::start(&dir, None);
    let mut c = d.client();
    assert_eq!(generation(&mut c), g);
    assert_eq!(state(&mut c), before);
}

/// Two clients put different ports, each expecting the generation it read: per generation
/// exactly one of them wins, and the loser sees the winner's generation as current.
#[test]
fn two_clients_racing_with_expect_generation() {
    let dir = TempDir::new();
    let d = start_base(&dir);
    const ROUNDS: usize = 25;
    let barrier = Arc::new(Barrier::new(2));
    let results: Vec<Vec<(u64, Result<u64, u64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u8)
            .map(|who| {
                let barrier = Arc::clone(&barrier);
                let mut c = d.client();
                s.spawn(move || {
                    let mut seen = Vec::new();
                    for round in 0..ROUNDS {
                        barrier.wait();
                        let g = generation(&mut c);
                        barrier.wait();
                        let id = format!("c{who}-{round}");
                        let mac = format!("fa:16:3e:{who:02x}:00:{round:02x}");
                        let ip = format!("198.18.10.{}", 20 + usize::from(who) * 100 + round);
                        let outcome = match c.call(
                            "ports.put",
                            json!({ "port": port(&id, &mac, &ip), "expect_generation": g }),
                        ) {
                            Ok(r) => Ok(r["generation"].as_u64().unwrap()),
                            Err(CallError::Rpc { code, data, .. }) => {
                                assert_eq!(code, GENERATION_MISMATCH, "{data:?}");
                                Err(data.unwrap()["current"].as_u64().unwrap())
                            }
                            Err(e) => panic!("{e}"),
                        };
                        seen.push((g, outcome));
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (round, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
        assert_eq!(a.0, b.0, "round {round}: both read the same generation");
        let wins = [&a.1, &b.1].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: exactly one wins: {a:?} {b:?}");
        let (won, lost) = if a.1.is_ok() {
            (&a.1, &b.1)
        } else {
            (&b.1, &a.1)
        };
        assert_eq!(won, &Ok(a.0 + 1), "round {round}");
        assert_eq!(
            lost,
            &Err(a.0 + 1),
            "round {round}: the loser sees the winner"
        );
    }
    let mut c = d.client();
    assert_eq!(generation(&mut c), 1 + ROUNDS as u64);
    let ports = state(&mut c)["ports"].as_array().unwrap().len();
    assert_eq!(ports, 1 + ROUNDS);
}

fn polluxctl(socket: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(POLLUXCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn polluxctl_put_and_delete() {
    let dir = TempDir::new();
    let d = start_base(&dir);
    let file = dir.join("vm2.json");
    std::fs::write(
        &file,
        json!({ "port": port("vm2", "fa:16:3e:0a:00:12", "198.18.10.12") }).to_string(),
    )
    .unwrap();
    let (code, out, e) = polluxctl(&d.socket, &["put", "port", file.to_str().unwrap()], None);
    assert_eq!(code, 0, "{out}{e}");
    assert!(out.contains("generation 2 applied"), "{out}");
    assert!(out.contains("+ ports vm2"), "{out}");

    let toml = "id = \"vm3\"\nnetwork_id = \"net-a\"\nmac_address = \"fa:16:3e:0a:00:13\"\n\
                binding = { driver = \"mem\" }\n";
    let (code, out, e) = polluxctl(&d.socket, &["put", "ports", "-", "--dry-run"], Some(toml));
    assert_eq!(code, 0, "{out}{e}");
    assert!(out.starts_with("dry run"), "{out}");
    let (code, out, e) = polluxctl(
        &d.socket,
        &["put", "ports", "-", "--expect-generation", "2"],
        Some(toml),
    );
    assert_eq!(code, 0, "{out}{e}");
    assert!(out.contains("generation 3 applied"), "{out}");

    let (code, out, e) = polluxctl(&d.socket, &["delete", "port", "vm2"], None);
    assert_eq!(code, 0, "{out}{e}");
    assert!(out.contains("- ports vm2"), "{out}");
    let (code, _, e) = polluxctl(&d.socket, &["delete", "port", "vm2"], None);
    assert_eq!(code, 1, "{e}");
    assert!(e.contains("unknown object"), "{e}");
    let (code, _, e) = polluxctl(&d.socket, &["delete", "widget", "x"], None);
    assert_eq!(code, 2, "{e}");
}

/// A daemon SIGKILLed at any moment of a stream of one-port changes (each appended to the
/// store's journal) restarts into a generation it had reached whole: at least the last one
/// acknowledged, at most the one in flight, holding exactly the ports the changes up to it
/// made. Each round kills at another moment of the stream.
#[test]
fn killed_mid_change_restarts_into_a_whole_generation() {
    const ROUNDS: u64 = 6;
    const MAX_PORTS: usize = 200;
    let dir = TempDir::new();
    let mut daemon = start_base(&dir);
    // Ports put in order: generation g holds vm1 and the first g - 1 of them.
    let mut added: Vec<String> = Vec::new();
    let mut acked = 1u64;
    for round in 0..ROUNDS {
        let mut c = daemon.client();
        let pid = daemon.child.id();
        let delay = Duration::from_millis(15 + 23 * round);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        });
        let in_flight = loop {
            let n = added.len();
            assert!(n < MAX_PORTS, "the daemon outlived {MAX_PORTS} changes");
            let id = format!("vm-k{n}");
            let p = port(
                &id,
                &format!("fa:16:3e:0b:{:02x}:{:02x}", n / 256, n % 256),
                &format!("198.18.10.{}", 20 + n),
            );
            added.push(id);
            match c.call("ports.put", json!({ "port": p })) {
                Ok(r) => {
                    acked = r["generation"].as_u64().unwrap();
                    assert_eq!(acked, 1 + added.len() as u64);
                }
                Err(_) => break acked + 1,
            }
        };
        killer.join().unwrap();
        drop(daemon);

        daemon = Daemon::start(&dir, None);
        let mut c = daemon.client();
        let g = generation(&mut c);
        assert!(
            (acked..=in_flight).contains(&g),
            "round {round}: restarted into generation {g}, acknowledged {acked}, in flight \
             {in_flight}"
        );
        let ids: Vec<String> = state(&mut c)["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        let reached = usize::try_from(g - 1).unwrap();
        let mut expected = vec!["vm1".to_owned()];
        expected.extend_from_slice(&added[..reached]);
        assert_eq!(ids, expected, "round {round}: generation {g}");
        // What was lost in flight is sent again by the next round's client.
        added.truncate(reached);
        acked = g;
    }
}
