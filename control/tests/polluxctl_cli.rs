//! `polluxctl` end to end: the built binary against a fake control socket that answers
//! canned replies and records the requests it got.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

/// The generation every canned reply reports.
const GENERATION: u64 = 6;

/// A fake `polluxd`: a thread answering on a socket in its own temp dir, removed on drop.
struct FakeServer {
    dir: PathBuf,
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start() -> FakeServer {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pollux-ctl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("polluxd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || serve(&listener, &requests, &stop))
        };
        FakeServer {
            dir,
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// Runs polluxctl against this server.
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec!["--socket", self.socket.to_str().unwrap()];
        all.extend_from_slice(args);
        polluxctl(&all)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept call so the thread sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(listener: &UnixListener, requests: &Mutex<Vec<Value>>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let mut out = stream.try_clone().unwrap();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let request: Value = serde_json::from_str(&line).unwrap();
            requests.lock().unwrap().push(request.clone());
            let reply = respond(&request);
            if out.write_all(format!("{reply}\n").as_bytes()).is_err() {
                break;
            }
        }
    }
}

fn respond(request: &Value) -> Value {
    let method = request["method"].as_str().unwrap_or("");
    let outcome = canned(method, &request["params"]);
    let mut reply = json!({ "jsonrpc": "2.0", "id": request["id"], "generation": GENERATION });
    match outcome {
        Ok(result) => reply["result"] = result,
        Err(error) => reply["error"] = error,
    }
    reply
}

fn canned(method: &str, params: &Value) -> Result<Value, Value> {
    match method {
        "ports.list" => Ok(ports()),
        "version.get" => Ok(json!({ "generation": GENERATION, "version": "0.9.1",
                                    "name": "polluxd" })),
        "config.apply" if params["dry_run"] == true => Ok(json!({
            "generation": GENERATION, "applied": false, "changed": true, "dry_run": true,
            "diff": { "added": { "ports": ["vm3"] },
                      "changed": { "ports": [{ "id": "vm1", "fields": ["fixed_ips"] }] } }
        })),
        "config.apply" => Err(json!({
            "code": -32001, "message": "invalid configuration",
            "data": { "generation": GENERATION, "errors": [
                { "path": "ports[0].mac_address", "message": "not a unicast MAC" }
            ] }
        })),
        "config.rollback" => Err(json!({
            "code": -32005, "message": "unknown generation 99",
            "data": { "generation": 99, "retained": [5, 6] }
        })),
        other => Err(
            json!({ "code": -32601, "message": format!("method not found: {other}"),
                             "data": { "generation": GENERATION } }),
        ),
    }
}

fn ports() -> Value {
    json!({ "generation": GENERATION, "ports": [
        { "id": "vm1", "kind": "vm", "port_no": 1, "network_id": "net-a",
          "mac_address": "fa:16:3e:00:00:01", "driver": "mem", "state": "up",
          "rx_packets": 12, "rx_bytes": 1200, "rx_dropped": 2, "tx_packets": 3, "tx_bytes": 300,
          "tx_dropped": 0 },
        { "id": "uplink:uplink0", "kind": "uplink", "port_no": 10, "physnet": "physnet1",
          "driver": "afxdp", "interface": "eth1", "state": "down",
          "rx_packets": 0, "rx_bytes": 0, "rx_dropped": 0, "tx_packets": 123456, "tx_bytes": 9876543,
          "tx_dropped": 7 }
    ] })
}

fn polluxctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_polluxctl"))
        .args(args)
        .env_remove("POLLUX_SOCKET")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

const GOOD_STATE: &str = r#"
[[networks]]
id = "net-a"
network_type = "local"

[[ports]]
id = "vm1"
network_id = "net-a"
mac_address = "fa:16:3e:00:00:01"
binding = { driver = "mem" }
"#;

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn show_ports_prints_a_table() {
    let server = FakeServer::start();
    let out = server.run(&["show", "ports"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = "\
ID              KIND    NO  NETWORK  PHYSNET   MAC                DRIVER  INTERFACE  STATE  RX_PKTS  RX_BYTES  RX_DROP  TX_PKTS  TX_BYTES  TX_DROP
vm1             vm       1  net-a    -         fa:16:3e:00:00:01  mem     -          up          12      1200        2        3       300        0
uplink:uplink0  uplink  10  -        physnet1  -                  afxdp   eth1       down         0         0        0   123456   9876543        7
";
    assert_eq!(stdout(&out), expected);
    assert_eq!(server.requests()[0]["method"], "ports.list");
}

#[test]
fn json_prints_the_raw_result() {
    let server = FakeServer::start();
    let out = server.run(&["--json", "show", "ports"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(printed, ports());
}

#[test]
fn version_prints_both_sides() {
    let server = FakeServer::start();
    let out = server.run(&["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "polluxctl {}\npolluxd 0.9.1, generation 6\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn rpc_error_exits_1_with_the_servers_message() {
    let server = FakeServer::start();
    let out = server.run(&["rollback", "99"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "polluxctl: unknown generation 99\n");
    assert!(out.stdout.is_empty());

    let out = server.run(&["--json", "rollback", "99"]);
    assert_eq!(out.status.code(), Some(1));
    let error: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(error["code"], -32005);
    assert_eq!(error["data"]["retained"], json!([5, 6]));
}

#[test]
fn rpc_error_lists_every_problem() {
    let server = FakeServer::start();
    let file = write_file(&server.dir, "state.toml", GOOD_STATE);
    let out = server.run(&["apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "polluxctl: invalid configuration\n  ports[0].mac_address: not a unicast MAC\n"
    );
}

#[test]
fn missing_socket_exits_3_naming_the_path() {
    let server = FakeServer::start();
    let missing = server.dir.join("nobody-here.sock");
    let out = polluxctl(&["--socket", missing.to_str().unwrap(), "show", "ports"]);
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(err.starts_with("polluxctl: "), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
}

#[test]
fn socket_comes_from_the_environment() {
    let server = FakeServer::start();
    let out = Command::new(env!("CARGO_BIN_EXE_polluxctl"))
        .args(["show", "ports"])
        .env("POLLUX_SOCKET", &server.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn bad_toml_exits_2_naming_the_file() {
    let server = FakeServer::start();
    let file = write_file(&server.dir, "broken.toml", "[[ports]\nid = 1\n");
    let out = server.run(&["apply", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("broken.toml"), "{err}");
    assert!(err.contains("TOML line 1"), "{err}");
    assert!(server.requests().is_empty(), "nothing is sent");
}

#[test]
fn apply_dry_run_sends_dry_run_and_prints_the_diff() {
    let server = FakeServer::start();
    let file = write_file(&server.dir, "state.toml", GOOD_STATE);
    let out = server.run(&["apply", file.to_str().unwrap(), "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "dry run: would change the running configuration\n+ ports vm3\n~ ports vm1 (fixed_ips)\n"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let params = &requests[0]["params"];
    assert_eq!(requests[0]["method"], "config.apply");
    assert_eq!(params["dry_run"], true);
    assert!(params.get("expect_generation").is_none());
    assert_eq!(params["state"]["ports"][0]["id"], "vm1");
    assert_eq!(params["state"]["networks"][0]["id"], "net-a");
}

/// `polluxctl apply` and `polluxd --config` read a file by one rule: `.json` is JSON,
/// `.toml` TOML, any other name by its first character. Both sides, both formats.
#[test]
fn apply_and_the_daemon_read_json_and_toml_files_alike() {
    let server = FakeServer::start();
    let state = pollux_control::model::DesiredState::from_toml_str(GOOD_STATE).unwrap();
    let json = state.to_json_string();
    let files = [
        write_file(&server.dir, "state.toml", GOOD_STATE),
        write_file(&server.dir, "state.json", &json),
        write_file(&server.dir, "state.conf", &json),
        write_file(&server.dir, "state.cfg", GOOD_STATE),
    ];
    for file in &files {
        let out = server.run(&["apply", file.to_str().unwrap(), "--dry-run"]);
        assert!(out.status.success(), "{}: {}", file.display(), stderr(&out));
        let loaded = pollux_control::daemon::load(file)
            .unwrap_or_else(|e| panic!("polluxd --config {}: {e}", file.display()));
        assert_eq!(loaded, state, "{}", file.display());
    }
    let requests = server.requests();
    assert_eq!(requests.len(), files.len());
    for r in &requests {
        assert_eq!(r["params"]["state"]["ports"][0]["id"], "vm1");
    }
}
