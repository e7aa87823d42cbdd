//! Streaming methods on the control socket (`rpc::RpcStream`): notifications then the
//! final response on the same connection, requests pipelined behind a stream answered
//! after it in order, and a client that does not read makes its stream get no room,
//! never the server buffer without bound.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pollux_control::rpc::{
    Handler, MethodInfo, RpcError, RpcOptions, RpcServer, RpcStream, StreamPoll, STREAM_OUTPUT,
};
use serde_json::{json, Value};

/// A stream that offers 64 KiB of notifications per poll (as much as it is given room
/// for) and ends after `polls` polls.
struct Firehose {
    polls: usize,
    emitted: Arc<AtomicU64>,
}

impl RpcStream for Firehose {
    fn poll(&mut self, room: usize, emit: &mut dyn FnMut(&str, Value) -> usize) -> StreamPoll {
        if self.polls == 0 {
            return StreamPoll::Done(Ok(json!({ "over": true })));
        }
        self.polls -= 1;
        let mut used = 0;
        while used < room && used < 64 << 10 {
            let n = emit("test.chunk", json!({ "bytes": "x".repeat(1000) }));
            used += n;
            self.emitted.fetch_add(n as u64, Ordering::Relaxed);
        }
        StreamPoll::Pending
    }
}

struct Streamer {
    polls: usize,
    emitted: Arc<AtomicU64>,
    opened: Arc<AtomicUsize>,
}

impl Handler for Streamer {
    fn call(&mut self, method: &str, _params: Option<Value>) -> Result<Value, RpcError> {
        Ok(json!({ "method": method }))
    }
    fn methods(&self) -> Vec<MethodInfo> {
        vec![
            MethodInfo::new("test.stream", "streams"),
            MethodInfo::new("test.echo", "answers"),
        ]
    }
    fn generation(&self) -> u64 {
        7
    }
    fn streaming_methods(&self) -> &'static [&'static str] {
        &["test.stream"]
    }
    fn open_stream(
        &mut self,
        _method: &str,
        _params: Option<Value>,
    ) -> Result<Box<dyn RpcStream>, RpcError> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Firehose {
            polls: self.polls,
            emitted: Arc::clone(&self.emitted),
        }))
    }
}

fn socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "pollux-rpc-stream-{tag}-{}.sock",
        std::process::id()
    ))
}

#[test]
fn a_client_that_does_not_read_gets_no_more_than_the_stream_allowance() {
    let path = socket_path("slow");
    let mut server = RpcServer::bind(&path, RpcOptions::default()).unwrap();
    let emitted = Arc::new(AtomicU64::new(0));
    let mut handler = Streamer {
        polls: 400,
        emitted: Arc::clone(&emitted),
        opened: Arc::default(),
    };
    let mut client = UnixStream::connect(&path).unwrap();
    // The stream, then a request pipelined behind it.
    client
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"test.stream\"}\n\
              {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"test.echo\"}\n",
        )
        .unwrap();
    // 200 polls with nobody reading: 200 * 64 KiB offered, only what fits sent.
    for _ in 0..200 {
        server
            .poll_once(&mut handler, Some(Duration::from_millis(1)))
            .unwrap();
    }
    let held = emitted.load(Ordering::Relaxed);
    assert!(
        held <= (STREAM_OUTPUT + (4 << 20)) as u64,
        "{held} bytes emitted to a client that reads nothing"
    );
    assert!(held >= STREAM_OUTPUT as u64, "{held}");
    assert_eq!(server.stream_count(), 1);

    // Now it reads: the rest of the stream, the final response, then the echo.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut lines = BufReader::new(client).lines();
        let mut chunks = 0u64;
        loop {
            let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
            if v.get("id").is_some() {
                let next: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
                return (chunks, v, next);
            }
            assert_eq!(v["method"], "test.chunk");
            chunks += 1;
        }
    });
    while !reader.is_finished() {
        server
            .poll_once(&mut handler, Some(Duration::from_millis(1)))
            .unwrap();
    }
    let (chunks, done, echo) = reader.join().unwrap();
    assert_eq!(done["id"], 1);
    assert_eq!(done["result"], json!({ "over": true, "generation": 7 }));
    assert_eq!(echo["id"], 2);
    assert_eq!(echo["result"]["method"], "test.echo");
    assert!(chunks * 1000 <= emitted.load(Ordering::Relaxed));
    assert_eq!(server.stream_count(), 0);
}

#[test]
fn a_streaming_method_sent_as_a_notification_opens_no_stream() {
    let path = socket_path("notify");
    let mut server = RpcServer::bind(&path, RpcOptions::default()).unwrap();
    let opened = Arc::new(AtomicUsize::new(0));
    let mut handler = Streamer {
        polls: 1,
        emitted: Arc::default(),
        opened: Arc::clone(&opened),
    };
    let mut client = UnixStream::connect(&path).unwrap();
    client
        .write_all(
            b"{\"jsonrpc\":\"2.0\",\"method\":\"test.stream\"}\n\
              {\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"test.echo\"}\n",
        )
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(client).read_line(&mut line).unwrap();
        line
    });
    while !reader.is_finished() {
        server
            .poll_once(&mut handler, Some(Duration::from_millis(1)))
            .unwrap();
    }
    let reply: Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
    assert_eq!(reply["id"], 3, "{reply}");
    assert_eq!(opened.load(Ordering::Relaxed), 0);
}
