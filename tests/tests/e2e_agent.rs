//! End to end: `pollux-agent` between a real etcd and a real `polluxd` (issue #23), with
//! the keys written as the mechanism driver writes them but without neutron-server (that
//! is `e2e_neutron`): changes applied one object at a time, a resynchronisation after an
//! agent restart, the agent's lease, polluxd's state kept while etcd is away and brought
//! back in line after, and an object polluxd refuses left out without holding the rest;
//! the status keys name the ports polluxd holds (not a refused one, not one deleted while
//! no agent ran).
//!
//! Namespace `sw` holds etcd (127.0.0.1:2379), polluxd and the agent; the ports are `mem`
//! ports (in-process rings), as forwarding is not what this test is about. Needs root,
//! `etcd-server` and `python3-etcd3gw`; it fails, never skips, when any is missing.

use std::thread;
use std::time::{Duration, Instant};

use pollux_control::client::Client;
use pollux_tests::daemon::{self, Polluxd, RunDir};
use pollux_tests::etcd::{self, Etcd};
use pollux_tests::netns::{self, Netns, Prefix, Proc, Topology};
use serde_json::{json, Value};

const TOOLS: &[&str] = &["ip", "etcd", "python3"];
const NETWORK: &str = "3d1f0c4e-0000-4000-8000-000000000001";
const SUBNET: &str = "3d1f0c4e-0000-4000-8000-000000000002";
const WAIT: Duration = Duration::from_secs(20);

fn port_id(n: u8) -> String {
    format!("3d1f0c4e-0000-4000-8000-0000000001{n:02}")
}

fn port(n: u8) -> Value {
    json!({
        "id": port_id(n),
        "network_id": NETWORK,
        "mac_address": format!("fa:16:3e:41:00:{n:02x}"),
        "fixed_ips": [{ "subnet_id": SUBNET, "ip_address": format!("198.18.41.{}", 10 + n) }],
        "security_groups": [],
        "port_security_enabled": true,
        "allowed_address_pairs": [],
        "binding": { "driver": "mem" },
    })
}

struct Lab {
    agent: Option<Proc>,
    polluxd: Polluxd,
    etcd: Etcd,
    topo: Topology,
    _run: RunDir,
    _data: RunDir,
    host: String,
}

impl Lab {
    fn sw(&self) -> &Netns {
        self.topo.ns("sw").unwrap()
    }

    fn key(&self, collection: &str, id: &str) -> String {
        format!("/pollux/hosts/{}/{collection}/{id}", self.host)
    }

    /// The ports the agent reports as held by polluxd (its status keys), waited for
    /// until they are `expected` (the agent writes them after the apply).
    fn wait_reported(&self, expected: &[String]) {
        let prefix = format!("/pollux/status/{}/ports/", self.host);
        let end = Instant::now() + WAIT;
        loop {
            let mut ids: Vec<String> = self
                .etcd
                .keys(self.sw(), &prefix)
                .unwrap()
                .iter()
                .map(|k| k[prefix.len()..].to_owned())
                .collect();
            ids.sort();
            if ids == expected {
                return;
            }
            assert!(
                Instant::now() < end,
                "status keys {ids:?}, expected {expected:?}\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn put(&self, collection: &str, object: &Value) {
        let key = self.key(collection, object["id"].as_str().unwrap());
        self.etcd.put(self.sw(), &key, object).unwrap();
    }

    fn delete(&self, collection: &str, id: &str) {
        self.etcd
            .delete(self.sw(), &self.key(collection, id))
            .unwrap();
    }

    fn start_agent(&mut self) {
        let socket = self.polluxd.socket().to_str().unwrap().to_owned();
        let agent = self
            .sw()
            .spawn(
                daemon::agent_path().to_str().unwrap(),
                &[
                    "--etcd",
                    etcd::CLIENT_URL,
                    "--host",
                    &self.host,
                    "--socket",
                    &socket,
                    "--lease-ttl",
                    "2",
                ],
            )
            .unwrap();
        self.agent = Some(agent);
        self.wait_log("in sync with etcd", 1);
    }

    fn log(&self) -> String {
        self.agent
            .as_ref()
            .map(Proc::stderr_so_far)
            .unwrap_or_default()
    }

    /// Waits until the agent's log holds `needle` at least `times` times.
    fn wait_log(&self, needle: &str, times: usize) {
        let end = Instant::now() + WAIT;
        while self.log().matches(needle).count() < times {
            assert!(
                Instant::now() < end,
                "no {needle:?} (x{times}) in the agent's log after {WAIT:?}:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn call(&self, method: &str) -> Value {
        let mut c = Client::connect(self.polluxd.socket()).unwrap();
        c.call(method, json!({}))
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn ports(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.call("config.get")["state"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    fn wait_ports(&self, expected: &[u8]) {
        let mut expected: Vec<String> = expected.iter().map(|n| port_id(*n)).collect();
        expected.sort();
        let end = Instant::now() + WAIT;
        loop {
            let ids = self.ports();
            if ids == expected {
                return;
            }
            assert!(
                Instant::now() < end,
                "polluxd's ports {ids:?}, expected {expected:?}; agent:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn generation(&self) -> u64 {
        self.call("config.get")["generation"].as_u64().unwrap()
    }
}

#[test]
#[ignore = "needs root: network namespaces and etcd-server (run with --include-ignored as root)"]
fn agent_applies_changes_resyncs_and_rides_out_etcd_outages() {
    let _guard = netns::exclusive(TOOLS);
    daemon::polluxd_path();
    daemon::agent_path();
    let mut topo = Topology::with_prefix(Prefix::next_under("nt").unwrap());
    topo.add_ns("sw").unwrap();
    let name = topo.prefix().as_str().to_owned();
    let run = RunDir::new(&name).unwrap();
    let data = RunDir::new(&format!("{name}-etcd")).unwrap();
    let sw = topo.ns("sw").unwrap();
    let etcd = Etcd::start(sw, &data.state_dir()).unwrap_or_else(|e| panic!("{e}"));
    let polluxd = Polluxd::spawn_in(sw, None, &daemon::last_cpu(), &run, &[])
        .and_then(Polluxd::ready)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab {
        agent: None,
        polluxd,
        etcd,
        topo,
        _run: run,
        _data: data,
        host: format!("{name}-host"),
    };

    // What is in etcd before the agent starts is applied as one state.
    lab.put(
        "networks",
        &json!({ "id": NETWORK, "network_type": "local" }),
    );
    lab.put(
        "subnets",
        &json!({ "id": SUBNET, "network_id": NETWORK, "cidr": "198.18.41.0/24" }),
    );
    lab.put("ports", &port(1));
    lab.start_agent();
    lab.wait_ports(&[1]);
    let agent_key = format!("/pollux/agents/{}", lab.host);
    assert!(lab.etcd.exists(lab.sw(), &agent_key).unwrap());

    // Then one object method per change.
    lab.put("ports", &port(2));
    lab.wait_ports(&[1, 2]);
    lab.wait_log(&format!("ports.put {}", port_id(2)), 1);
    lab.delete("ports", &port_id(1));
    lab.wait_ports(&[2]);
    lab.wait_log(&format!("ports.delete {}", port_id(1)), 1);

    // A port polluxd refuses (its security group is not in the desired state) is logged and kept
    // off; the others are untouched.
    let mut refused = port(5);
    refused["security_groups"] = json!(["sg-default"]);
    lab.put("ports", &refused);
    lab.wait_log(&format!("polluxd refuses ports/{}", port_id(5)), 1);
    assert!(
        lab.log().contains("security_groups"),
        "the refusal names the field:\n{}",
        lab.log()
    );
    assert_eq!(lab.ports(), vec![port_id(2)]);
    // Reported: the port polluxd holds, not the refused one.
    lab.wait_reported(&[port_id(2)]);

    // The agent dies; its lease lapses and its key goes. What changed meanwhile is applied
    // by the resynchronisation of the next agent, without the refused port.
    let _ = lab.agent.take().unwrap().stop(Duration::ZERO);
    let end = Instant::now() + WAIT;
    while lab.etcd.exists(lab.sw(), &agent_key).unwrap() {
        assert!(Instant::now() < end, "the agent's key outlived its lease");
        thread::sleep(Duration::from_millis(200));
    }
    lab.delete("ports", &port_id(2));
    lab.put("ports", &port(3));
    lab.start_agent();
    lab.wait_ports(&[3]);
    // The resynchronisation brings the status keys to polluxd's ports: port 2's, deleted
    // while no agent ran, goes.
    lab.wait_reported(&[port_id(3)]);
    assert!(
        lab.log()
            .contains(&format!("polluxd refuses ports/{}", port_id(5))),
        "the resynchronisation leaves the refused port out and says so:\n{}",
        lab.log()
    );

    // etcd goes away: polluxd keeps its state, the agent only retries.
    let before = lab.generation();
    lab.etcd.kill();
    lab.wait_log("polluxd keeps its state", 1);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.ports(), vec![port_id(3)]);
    assert_eq!(
        lab.generation(),
        before,
        "nothing applied while etcd was away"
    );
    assert!(lab.polluxd_running(), "polluxd stopped");

    // etcd is back (same data): the agent resynchronises and follows changes again.
    let ns = lab.topo.ns("sw").unwrap();
    lab.etcd.restart(ns).unwrap_or_else(|e| panic!("{e}"));
    lab.wait_log("in sync with etcd", 2);
    lab.put("ports", &port(4));
    lab.wait_ports(&[3, 4]);
    eprintln!("pollux-agent's log:\n{}", lab.log());
}

impl Lab {
    fn polluxd_running(&mut self) -> bool {
        self.polluxd.is_running()
    }
}
