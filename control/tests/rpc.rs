//! The JSON-RPC control socket over a real Unix socket.

use pollux_testkit::TempDir;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pollux_control::rpc::{
    Handler, MethodInfo, RpcError, RpcOptions, RpcServer, INTERNAL_ERROR, INVALID_PARAMS,
    INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
};
use proptest::prelude::*;
use serde_json::{json, Value};

/// `echo` returns its params, `fail` an application error, `counter.add` adds `n` and
/// bumps the generation, `panic` panics.
#[derive(Debug, Default)]
struct TestHandler {
    counter: i64,
    generation: u64,
}

impl Handler for TestHandler {
    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params.unwrap_or(Value::Null)),
            "fail" => Err(RpcError::application(
                -32001,
                "it failed as asked",
                json!({ "reason": "asked", "params": params }),
            )),
            "counter.add" => {
                let n = match &params {
                    Some(Value::Object(m)) => m.get("n").and_then(Value::as_i64),
                    Some(Value::Array(a)) if a.len() == 1 => a[0].as_i64(),
                    _ => None,
                };
                let n = n.ok_or_else(|| RpcError::invalid_params("expected {\"n\": integer}"))?;
                self.counter += n;
                self.generation += 1;
                Ok(json!({ "value": self.counter }))
            }
            "panic" => panic!("asked to panic"),
            other => Err(RpcError::method_not_found(other)),
        }
    }

    fn methods(&self) -> Vec<MethodInfo> {
        vec![
            MethodInfo::new("echo", "echo PARAMS -> PARAMS"),
            MethodInfo::new("fail", "fail -> error -32001"),
            MethodInfo::new("counter.add", "counter.add {n} -> {value}"),
            MethodInfo::new("panic", "panic -> internal error"),
        ]
    }

    fn generation(&self) -> u64 {
        self.generation
    }
}

/// A server thread serving a `TestHandler` until dropped.
struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<RpcServer>>,
    _dir: TempDir,
}

impl Server {
    fn start() -> Self {
        Self::start_with(RpcOptions::default())
    }

    fn start_with(options: RpcOptions) -> Self {
        let dir = TempDir::new();
        let path = dir.join("polluxd.sock");
        let server = RpcServer::bind(&path, options).unwrap();
        Self::spawn(server, path, dir)
    }

    fn spawn(mut server: RpcServer, path: PathBuf, dir: TempDir) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut handler = TestHandler::default();
            server.serve_until(&mut handler, &flag).unwrap();
            server
        });
        Server {
            path,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.path)
    }

    /// Stops the thread and hands back the server.
    fn finish(mut self) -> RpcServer {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn send(&mut self, v: &Value) {
        let mut line = serde_json::to_vec(v).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// The next reply line, or `None` at end of stream.
    fn recv_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    fn recv(&mut self) -> Value {
        let line = self.recv_line().expect("connection closed");
        assert!(line.ends_with('\n'));
        serde_json::from_str(&line).unwrap()
    }

    fn raw(&mut self, line: &str) -> Value {
        self.send_raw(line.as_bytes());
        self.send_raw(b"\n");
        self.recv()
    }

    fn call(&mut self, method: &str, params: Value, id: u64) -> Value {
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        self.recv()
    }
}

fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

fn assert_generation(reply: &Value, generation: u64) {
    assert_eq!(reply["generation"], json!(generation), "{reply}");
    if let Some(err) = reply.get("error") {
        assert_eq!(err["data"]["generation"], json!(generation), "{reply}");
    } else if reply["result"].is_object() {
        assert_eq!(reply["result"]["generation"], json!(generation), "{reply}");
    }
}

#[test]
fn echo_and_counter_answer_with_result() {
    let server = Server::start();
    let mut c = server.client();
    let r = c.call("echo", json!({ "a": 1 }), 1);
    assert_eq!(r["jsonrpc"], "2.0");
    assert_eq!(r["id"], 1);
    assert_eq!(r["result"]["a"], 1);
    let r = c.call("counter.add", json!({ "n": 5 }), 2);
    assert_eq!(r["result"]["value"], 5);
    let r = c.call("counter.add", json!([3]), 3);
    assert_eq!(r["result"]["value"], 8);
    // String ids come back as they were sent.
    let r = c.raw(r#"{"jsonrpc":"2.0","id":"abc","method":"echo","params":[1,2]}"#);
    assert_eq!(r["id"], "abc");
    assert_eq!(r["result"], json!([1, 2]));
}

#[test]
fn parse_error_keeps_connection_usable() {
    let server = Server::start();
    let mut c = server.client();
    for garbage in [
        "{",
        "not json",
        r#"{"jsonrpc":"2.0","method":"echo""#,
        "\u{1}",
    ] {
        let r = c.raw(garbage);
        assert_eq!(error_code(&r), PARSE_ERROR, "{garbage}: {r}");
        assert_eq!(r["id"], Value::Null);
        assert!(r["error"]["message"].is_string());
        assert_generation(&r, 0);
    }
    // Invalid UTF-8 is a parse error too.
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[\"\xff\"]}\n");
    assert_eq!(error_code(&c.recv()), PARSE_ERROR);
    let r = c.call("echo", json!([7]), 9);
    assert_eq!(r["result"], json!([7]));
}

#[test]
fn invalid_requests() {
    let server = Server::start();
    let mut c = server.client();
    let cases = [
        ("1", Value::Null),
        (r#""echo""#, Value::Null),
        (r#"{"foo":"bar"}"#, Value::Null),
        (r#"{"jsonrpc":"2.0","id":3}"#, json!(3)),
        (r#"{"jsonrpc":"1.0","id":4,"method":"echo"}"#, json!(4)),
        (r#"{"id":5,"method":"echo"}"#, json!(5)),
        (r#"{"jsonrpc":"2.0","id":6,"method":1}"#, json!(6)),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"echo","params":3}"#,
            json!(7),
        ),
        (
            r#"{"jsonrpc":"2.0","id":8,"method":"echo","params":null}"#,
            json!(8),
        ),
        (
            r#"{"jsonrpc":"2.0","id":{"a":1},"method":"echo"}"#,
            Value::Null,
        ),
        (r#"{"jsonrpc":"2.0","id":[1],"method":"echo"}"#, Value::Null),
        ("[]", Value::Null),
        // Invalid requests are answered even without an id.
        (r#"{"jsonrpc":"2.0","method":7}"#, Value::Null),
    ];
    for (line, id) in cases {
        let r = c.raw(line);
        assert_eq!(error_code(&r), INVALID_REQUEST, "{line}: {r}");
        assert_eq!(r["id"], id, "{line}: {r}");
        assert_generation(&r, 0);
    }
}

#[test]
fn method_not_found() {
    let server = Server::start();
    let mut c = server.client();
    for (i, m) in ["nope", "rpc.other", "echo.extra", ""]
        .into_iter()
        .enumerate()
    {
        let r = c.call(m, json!({}), i as u64);
        assert_eq!(error_code(&r), METHOD_NOT_FOUND, "{m}: {r}");
        assert_eq!(r["id"], i as u64);
        assert_generation(&r, 0);
    }
}

#[test]
fn invalid_params_from_handler() {
    let server = Server::start();
    let mut c = server.client();
    let r = c.call("counter.add", json!({ "n": "five" }), 1);
    assert_eq!(error_code(&r), INVALID_PARAMS);
    assert!(r["error"]["data"]["details"].is_string(), "{r}");
    let r = c.raw(r#"{"jsonrpc":"2.0","id":2,"method":"counter.add"}"#);
    assert_eq!(error_code(&r), INVALID_PARAMS);
    assert_generation(&r, 0);
}

#[test]
fn application_error_has_message_and_data() {
    let server = Server::start();
    let mut c = server.client();
    let r = c.call("fail", json!({ "x": 1 }), 1);
    let code = error_code(&r);
    assert!((-32099..=-32000).contains(&code), "{r}");
    assert_eq!(code, -32001);
    assert_eq!(r["error"]["message"], "it failed as asked");
    assert_eq!(r["error"]["data"]["reason"], "asked");
    assert_eq!(r["error"]["data"]["params"]["x"], 1);
    assert_generation(&r, 0);
}

#[test]
fn handler_panic_is_internal_error() {
    let server = Server::start();
    let mut c = server.client();
    let r = c.call("panic", json!([]), 1);
    assert_eq!(error_code(&r), INTERNAL_ERROR);
    assert_generation(&r, 0);
    // The server survived.
    assert_eq!(c.call("echo", json!([1]), 2)["result"], json!([1]));
}

#[test]
fn rpc_list_lists_every_method_with_usage() {
    let server = Server::start();
    let mut c = server.client();
    let r = c.raw(r#"{"jsonrpc":"2.0","id":1,"method":"rpc.list"}"#);
    assert_generation(&r, 0);
    let methods = r["result"]["methods"].as_array().unwrap();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    for want in ["echo", "fail", "counter.add", "panic", "rpc.list"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert_eq!(names.len(), 5);
    for m in methods {
        assert!(!m["usage"].as_str().unwrap().is_empty(), "{m}");
    }
    let echo = methods.iter().find(|m| m["name"] == "echo").unwrap();
    assert_eq!(echo["usage"], "echo PARAMS -> PARAMS");
}

#[test]
fn generation_in_every_reply() {
    let server = Server::start();
    let mut c = server.client();
    let mut generation = 0;
    for i in 0..3u64 {
        let r = c.call("counter.add", json!({ "n": 1 }), i);
        generation += 1;
        assert_generation(&r, generation);
        // Object result, array result, scalar result, error.
        assert_generation(&c.call("echo", json!({ "k": i }), 100 + i), generation);
        assert_generation(&c.call("echo", json!([i]), 200 + i), generation);
        let r = c.raw(r#"{"jsonrpc":"2.0","id":1,"method":"echo"}"#);
        assert_eq!(r["result"], Value::Null);
        assert_generation(&r, generation);
        assert_generation(&c.call("fail", json!([]), 300 + i), generation);
        assert_generation(&c.raw("{oops"), generation);
        assert_generation(&c.raw("[]"), generation);
    }
    // A handler's own "generation" field in a result is not overwritten.
    let r = c.call("echo", json!({ "generation": 42 }), 9);
    assert_eq!(r["result"]["generation"], 42);
    assert_eq!(r["generation"], generation);
}

#[test]
fn batch_per_spec() {
    let server = Server::start();
    let mut c = server.client();
    let r = c.raw(
        r#"[{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]},
            {"jsonrpc":"2.0","method":"counter.add","params":{"n":10}},
            {"jsonrpc":"2.0","id":2,"method":"nope"},
            {"foo":"boo"},
            {"jsonrpc":"2.0","id":3,"method":"counter.add","params":{"n":1}},
            5]"#
        .replace('\n', " ")
        .as_str(),
    );
    let replies = r
        .as_array()
        .unwrap_or_else(|| panic!("not a batch reply: {r}"));
    assert_eq!(replies.len(), 5, "{r}");
    assert_eq!(replies[0]["id"], 1);
    assert_eq!(replies[0]["result"], json!([1]));
    assert_eq!(replies[1]["id"], 2);
    assert_eq!(error_code(&replies[1]), METHOD_NOT_FOUND);
    assert_eq!(error_code(&replies[2]), INVALID_REQUEST);
    assert_eq!(replies[3]["id"], 3);
    assert_eq!(replies[3]["result"]["value"], 11);
    assert_eq!(error_code(&replies[4]), INVALID_REQUEST);
    for reply in replies {
        assert!(reply["generation"].is_u64(), "{reply}");
    }
    // [1,2,3]: three invalid-request replies.
    let r = c.raw("[1,2,3]");
    assert_eq!(r.as_array().unwrap().len(), 3);
    // A batch of notifications gets no reply at all: the next reply is for id 7.
    c.send_raw(
        br#"[{"jsonrpc":"2.0","method":"counter.add","params":{"n":1}},{"jsonrpc":"2.0","method":"echo"}]"#,
    );
    c.send_raw(b"\n");
    let r = c.call("counter.add", json!({ "n": 0 }), 7);
    assert_eq!(r["id"], 7);
    assert_eq!(r["result"]["value"], 12);
    // A batch with a malformed element as a whole is a parse error.
    let r = c.raw(r#"[{"jsonrpc":"2.0","id":1,"method":"echo"},{"#);
    assert_eq!(error_code(&r), PARSE_ERROR);
}

#[test]
fn notifications_get_no_reply() {
    let server = Server::start();
    let mut c = server.client();
    c.send(&json!({ "jsonrpc": "2.0", "method": "counter.add", "params": { "n": 4 } }));
    c.send(&json!({ "jsonrpc": "2.0", "method": "nope" }));
    c.send(&json!({ "jsonrpc": "2.0", "method": "fail" }));
    c.send(&json!({ "jsonrpc": "2.0", "method": "counter.add", "params": { "n": "bad" } }));
    let r = c.call("counter.add", json!({ "n": 1 }), 1);
    assert_eq!(r["id"], 1);
    assert_eq!(r["result"]["value"], 5);
    // "id": null is a request, not a notification.
    let r = c.raw(r#"{"jsonrpc":"2.0","id":null,"method":"echo","params":[0]}"#);
    assert_eq!(r["id"], Value::Null);
    assert_eq!(r["result"], json!([0]));
}

#[test]
fn requests_are_answered_in_order_when_pipelined() {
    let server = Server::start();
    let mut c = server.client();
    let mut burst = Vec::new();
    for i in 0..500u64 {
        burst.extend_from_slice(
            format!("{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"echo\",\"params\":[{i}]}}\r\n")
                .as_bytes(),
        );
    }
    c.send_raw(&burst);
    for i in 0..500u64 {
        let r = c.recv();
        assert_eq!(r["id"], i);
        assert_eq!(r["result"], json!([i]));
    }
}

#[test]
fn big_pipelined_burst_is_answered_while_others_are_served() {
    // Several MiB from one client, more than one poll reads at a time from it.
    let server = Server::start();
    let mut big = server.client();
    let mut writer = big.writer.try_clone().unwrap();
    let n = 4000u64;
    let feeder = std::thread::spawn(move || {
        let pad = "p".repeat(1000);
        for i in 0..n {
            let line = format!(
                "{{\"jsonrpc\":\"2.0\",\"id\":{i},\"method\":\"echo\",\"params\":[\"{pad}\"]}}\n"
            );
            writer.write_all(line.as_bytes()).unwrap();
        }
    });
    let mut other = server.client();
    for i in 0..n {
        let r = big.recv();
        assert_eq!(r["id"], i);
        if i % 500 == 0 {
            assert_eq!(other.call("echo", json!([i]), i)["result"], json!([i]));
        }
    }
    feeder.join().unwrap();
}

#[test]
fn last_line_without_newline_is_answered_at_eof() {
    let server = Server::start();
    let mut c = server.client();
    c.send_raw(br#"{"jsonrpc":"2.0","id":1,"method":"echo","params":[1]}"#);
    c.writer.shutdown(std::net::Shutdown::Write).unwrap();
    let r = c.recv();
    assert_eq!(r["result"], json!([1]));
    assert_eq!(c.recv_line(), None);
}

#[test]
fn stale_socket_is_replaced() {
    let dir = TempDir::new();
    let path = dir.join("polluxd.sock");
    // A socket file nobody listens on, as a crashed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_socket());
    let server = RpcServer::bind(&path, RpcOptions::default()).unwrap();
    let server = Server::spawn(server, path, dir);
    let mut c = server.client();
    assert_eq!(c.call("echo", json!([1]), 1)["result"], json!([1]));
}

#[test]
fn live_socket_is_not_stolen() {
    let server = Server::start();
    let err = RpcServer::bind(&server.path, RpcOptions::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("already serving"), "{err}");
    // The first server still answers on its socket.
    let mut c = server.client();
    assert_eq!(c.call("echo", json!([2]), 1)["result"], json!([2]));
}

#[test]
fn non_socket_file_is_never_deleted() {
    let dir = TempDir::new();
    let path = dir.join("polluxd.sock");
    std::fs::write(&path, b"precious").unwrap();
    let err = RpcServer::bind(&path, RpcOptions::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert!(RpcServer::bind(&path, RpcOptions::default()).is_err());
    assert!(path.is_dir());
}

#[test]
fn socket_mode_is_0660_and_removed_on_drop() {
    let dir = TempDir::new();
    let path = dir.join("polluxd.sock");
    let server = RpcServer::bind(&path, RpcOptions::default()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    // Nothing else was left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    drop(server);
    assert!(std::fs::symlink_metadata(&path).is_err());
}

#[test]
fn socket_path_near_the_address_limit() {
    let dir = TempDir::new();
    let base = dir.as_os_str().len() + 1;
    assert!(base < 100, "temp dir too deep for this test");
    // 105 bytes in all: fits, but a staged name next to it would not.
    let path = dir.join("s".repeat(105 - base));
    let server = RpcServer::bind(&path, RpcOptions::default()).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let server = Server::spawn(server, path, dir);
    assert_eq!(
        server.client().call("echo", json!([1]), 1)["result"],
        json!([1])
    );
}

#[test]
fn over_long_line_is_refused_and_connection_closed() {
    let server = Server::start_with(RpcOptions {
        max_line: 1024,
        ..RpcOptions::default()
    });
    let mut c = server.client();
    // Exactly max_line bytes is fine.
    let pad = "x".repeat(1024 - r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":[""]}"#.len());
    let line = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"echo","params":["{pad}"]}}"#);
    assert_eq!(line.len(), 1024);
    assert_eq!(c.raw(&line)["id"], 1);

    // No newline within max_line bytes.
    let mut long = Vec::new();
    long.extend_from_slice(br#"{"jsonrpc":"2.0","id":2,"method":"echo","params":[""#);
    long.resize(5000, b'y');
    let _ = c.writer.write_all(&long);
    let r = c.recv();
    assert_eq!(error_code(&r), INVALID_REQUEST);
    assert_generation(&r, 0);
    assert_eq!(c.recv_line(), None, "connection should be closed");

    // Too long even with its newline, sent at once.
    let mut c2 = server.client();
    let mut long = vec![b' '; 3000];
    long.push(b'\n');
    long.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\"}\n");
    let _ = c2.writer.write_all(&long);
    // The blank line is too long: -32600, then closed.
    let r: Value = serde_json::from_str(&c2.recv_line().expect("a -32600 reply")).unwrap();
    assert_eq!(error_code(&r), INVALID_REQUEST, "{r}");
    assert_eq!(r["error"]["data"]["max_line"], 1024, "{r}");
    assert_eq!(c2.recv_line(), None);

    // The daemon is fine.
    let mut c3 = server.client();
    assert_eq!(c3.call("echo", json!([3]), 3)["result"], json!([3]));
}

#[test]
fn client_that_never_reads_is_dropped_while_others_are_served() {
    let server = Server::start_with(RpcOptions {
        max_pending_output: 64 << 10,
        ..RpcOptions::default()
    });
    let path = server.path.clone();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    // Floods requests, never reads a reply.
    let flooder = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let line = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\",\"params\":[\"{}\"]}}\n",
            "z".repeat(1000)
        );
        let start = Instant::now();
        let mut sent = 0usize;
        while start.elapsed() < Duration::from_secs(30) {
            match s.write_all(line.as_bytes()) {
                Ok(()) => sent += line.len(),
                Err(_) => {
                    done2.store(true, Ordering::Relaxed);
                    return sent;
                }
            }
        }
        panic!("the flooding client was never dropped ({sent} bytes sent)");
    });
    let mut c = server.client();
    let mut i = 0u64;
    while !done.load(Ordering::Relaxed) {
        i += 1;
        let r = c.call("echo", json!([i]), i);
        assert_eq!(r["result"], json!([i]));
    }
    let sent = flooder.join().unwrap();
    assert!(sent > 64 << 10);
    for j in 0..10 {
        assert_eq!(c.call("echo", json!([j]), j)["result"], json!([j]));
    }
}

#[test]
fn idle_client_is_dropped() {
    let server = Server::start_with(RpcOptions {
        client_idle_timeout: Some(Duration::from_millis(200)),
        ..RpcOptions::default()
    });
    let mut idle = server.client();
    let mut busy = server.client();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        assert_eq!(busy.call("echo", json!([1]), 1)["result"], json!([1]));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        idle.recv_line(),
        None,
        "idle client should have been dropped"
    );
}

#[test]
fn clients_beyond_max_are_refused() {
    let server = Server::start_with(RpcOptions {
        max_clients: 2,
        ..RpcOptions::default()
    });
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.call("echo", json!([1]), 1)["id"], 1);
    assert_eq!(b.call("echo", json!([1]), 1)["id"], 1);
    let mut c = server.client();
    let r = c.recv();
    assert!(r["error"]["code"].as_i64().unwrap() <= -32000, "{r}");
    assert_eq!(c.recv_line(), None);
    drop(a);
    // Once one leaves, a new client gets in.
    let start = Instant::now();
    loop {
        let mut d = server.client();
        d.send(&json!({ "jsonrpc": "2.0", "id": 5, "method": "echo" }));
        let r = d.recv();
        if r["id"] == 5 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{r}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vanished_clients_are_cleaned_up() {
    let server = Server::start();
    for i in 0..20 {
        let mut c = server.client();
        match i % 3 {
            0 => c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth"),
            1 => c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"echo\"}\n"),
            _ => {}
        }
        drop(c);
    }
    let mut c = server.client();
    assert_eq!(c.call("echo", json!([1]), 1)["result"], json!([1]));
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let server = server.finish();
    assert_eq!(server.client_count(), 0);
}

#[test]
fn many_concurrent_clients_and_one_misbehaving() {
    let server = Server::start();
    let path = server.path.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let garbage = {
        let path = path.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let junk: [&[u8]; 6] = [
                b"{{{{\n",
                b"\xff\xfe\x00garbage\n",
                b"[1,2,\n",
                b"{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":3}\n",
                b"\n\n\r\n",
                b"{\"jsonrpc\":\"2.0\",\"id\":1,\"meth",
            ];
            // One connection at a time: floods garbage, never reads, and reconnects only
            // once the server has dropped it.
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = UnixStream::connect(&path) else {
                    break;
                };
                s.set_write_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut j = 0;
                while !stop.load(Ordering::Relaxed) {
                    match s.write_all(junk[j % junk.len()]) {
                        Ok(()) => j += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
                rounds += 1;
            }
            rounds
        })
    };
    let clients: Vec<_> = (0..64u64)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path);
                for k in 0..50u64 {
                    let id = t * 1000 + k;
                    let r = c.call("echo", json!({ "t": t, "k": k }), id);
                    assert_eq!(r["id"], id, "{r}");
                    assert_eq!(r["result"]["t"], t, "{r}");
                    assert_eq!(r["result"]["k"], k, "{r}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(garbage.join().unwrap() > 0);
}

fn sentinel(k: usize) -> String {
    format!("{{\"jsonrpc\":\"2.0\",\"id\":\"sentinel-{k}\",\"method\":\"echo\"}}\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary byte lines never crash the server, and each gets at most one reply line.
    #[test]
    fn arbitrary_lines_get_at_most_one_reply(
        lines in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..200),
                "[ \\[\\]{}\":,0-9a-z.\\-]{0,80}".prop_map(String::into_bytes),
                Just(br#"{"jsonrpc":"2.0","method":"echo"}"#.to_vec()),
                Just(br#"[{"jsonrpc":"2.0","id":1,"method":"echo"},1]"#.to_vec()),
            ],
            1..20,
        )
    ) {
        let server = Server::start();
        let mut c = server.client();
        for (k, line) in lines.iter().enumerate() {
            c.send_raw(line);
            c.send_raw(b"\n");
            c.send_raw(sentinel(k).as_bytes());
            let mut replies = 0;
            loop {
                let got = c.recv_line().expect("server closed the connection");
                let v: Value = serde_json::from_str(&got).expect("reply is JSON");
                if v["id"] == format!("sentinel-{k}") {
                    break;
                }
                replies += 1;
            }
            prop_assert!(replies <= 1, "line {:?} got {} replies", line, replies);
        }
        let mut fresh = server.client();
        prop_assert_eq!(&fresh.call("echo", json!([1]), 1)["result"], &json!([1]));
        drop(fresh);
        drop(c);
        let _ = server.finish();
    }
}

/// A client trickling a request a byte at a time is dropped `request_timeout` after its
/// first byte: the bytes do not extend the deadline (its idle timeout is far away).
#[test]
fn trickling_client_is_dropped_on_a_deadline_bytes_do_not_reset() {
    let server = Server::start_with(RpcOptions {
        request_timeout: Some(Duration::from_millis(300)),
        client_idle_timeout: Some(Duration::from_secs(60)),
        ..RpcOptions::default()
    });
    let mut c = server.client();
    let start = Instant::now();
    let request = br#"{"jsonrpc":"2.0","id":1,"method":"echo","params":["slowly, slowly"]}"#;
    let mut dropped = false;
    for b in request.iter().cycle().take(200) {
        if c.writer.write_all(&[*b]).is_err() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        if start.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    if !dropped {
        assert_eq!(
            c.recv_line(),
            None,
            "the trickling client is still connected"
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let mut other = server.client();
    assert_eq!(other.call("echo", json!([1]), 1)["result"], json!([1]));
}

/// 2,000 clients that connect and close at once, followed at once by `rpc.list`: the
/// closed peers are reaped before anyone is refused.
#[test]
fn a_burst_of_short_lived_connections_does_not_lock_out_the_next_client() {
    let server = Server::start();
    for _ in 0..2000 {
        drop(UnixStream::connect(&server.path).unwrap());
    }
    let mut c = server.client();
    let r = c.call("rpc.list", json!({}), 1);
    assert!(r["result"]["methods"].is_array(), "{r}");
}

/// When every slot is taken, a connection idle for `evict_idle_after` makes room.
#[test]
fn a_long_idle_connection_gives_its_slot_to_a_new_client() {
    let server = Server::start_with(RpcOptions {
        max_clients: 2,
        evict_idle_after: Some(Duration::from_millis(100)),
        ..RpcOptions::default()
    });
    let mut a = server.client();
    let mut b = server.client();
    assert_eq!(a.call("echo", json!([1]), 1)["id"], 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.call("echo", json!([1]), 1)["id"], 1);
    std::thread::sleep(Duration::from_millis(200));
    let mut c = server.client();
    assert_eq!(c.call("echo", json!([3]), 3)["result"], json!([3]));
    assert_eq!(
        a.recv_line(),
        None,
        "the longest idle connection was closed"
    );
    assert_eq!(b.call("echo", json!([2]), 2)["result"], json!([2]));
}

/// The replies to one batch are bounded as a whole: past `max_batch_output` the rest of
/// the batch is not run, and the batch gets one error saying how many ran.
#[test]
fn batch_output_is_bounded_as_a_whole() {
    let server = Server::start_with(RpcOptions {
        max_batch_output: 1000,
        ..RpcOptions::default()
    });
    let mut c = server.client();
    let batch: Vec<Value> = (0..100)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "counter.add", "params": {"n": 1}}))
        .collect();
    c.send(&Value::Array(batch));
    let r = c.recv();
    assert_eq!(error_code(&r), INVALID_REQUEST, "{r}");
    let ran = r["error"]["data"]["ran"].as_i64().expect("how many ran");
    assert!((1..100).contains(&ran), "{r}");
    assert_eq!(r["error"]["data"]["requests"], 100, "{r}");
    // Exactly those ran.
    let v = c.call("counter.add", json!({"n": 0}), 1000);
    assert_eq!(v["result"]["value"], json!(ran), "{v}");
    // A batch within the bound is answered as usual.
    let small: Vec<Value> = (0..3)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "echo", "params": [i]}))
        .collect();
    c.send(&Value::Array(small));
    assert_eq!(c.recv().as_array().map(Vec::len), Some(3));
}

/// Memory over all clients is bounded: clients each holding a large unfinished request
/// are dropped, largest first, once the total passes `max_total_buffered`.
#[test]
fn total_buffered_bytes_are_bounded_across_clients() {
    let server = Server::start_with(RpcOptions {
        max_total_buffered: 1 << 20,
        ..RpcOptions::default()
    });
    let partial = vec![b'['; 400 << 10];
    let mut clients: Vec<Client> = (0..4).map(|_| server.client()).collect();
    for c in &mut clients {
        let _ = c.writer.write_all(&partial);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut closed = 0;
    for c in &mut clients {
        c.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut line = String::new();
        match c.reader.read_line(&mut line) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            Err(_) => {}
            Ok(_) => panic!("an unfinished request got a reply: {line}"),
        }
    }
    assert!(
        closed >= 2,
        "only {closed} of 4 clients holding 1.6 MB were dropped"
    );
    let mut other = server.client();
    assert_eq!(other.call("echo", json!([1]), 1)["result"], json!([1]));

    // A client that sent a big request and was answered holds nothing while it idles, so
    // it is not what gets dropped for another client's bytes.
    drop(clients);
    // The server reaps the dropped clients' buffers when it next looks at them; until
    // then a 600 KB request may still count against the total and be refused (on a
    // loaded machine that takes a while). Retry the set-up, bounded, until it is in.
    let pad = "p".repeat(600 << 10);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut big = loop {
        let mut c = server.client();
        let mut request = serde_json::to_vec(
            &json!({ "jsonrpc": "2.0", "id": 1, "method": "echo", "params": [pad] }),
        )
        .unwrap();
        request.push(b'\n');
        let answered = c.writer.write_all(&request).is_ok() && c.writer.flush().is_ok();
        match answered.then(|| c.recv_line()).flatten() {
            Some(line) if line.contains("\"id\":1") => break c,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => panic!("the big request never got in: {other:?}"),
        }
    };
    let mut filler = server.client();
    let _ = filler.writer.write_all(&partial);
    let _ = filler.writer.write_all(&partial);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(big.call("echo", json!([2]), 2)["result"], json!([2]));
}
