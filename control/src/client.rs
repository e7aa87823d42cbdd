//! A small blocking client for the control socket (see [`crate::rpc`]): one request line
//! out, one reply line in. Used by `polluxctl` and by integration tests.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

/// How long [`Client::call`] waits for the socket by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    path: PathBuf,
    next_id: u64,
}

/// Why a call did not return a result.
#[derive(Debug)]
pub enum CallError {
    /// The socket failed, timed out, or was closed before the reply.
    Io(io::Error),
    /// The reply is not a JSON-RPC response to this request.
    Protocol(String),
    /// The server answered with an error object.
    Rpc {
        /// JSON-RPC error code (see [`crate::rpc`] and the application codes).
        code: i64,
        /// Message for people.
        message: String,
        /// Details for programs.
        data: Option<Value>,
    },
}

impl std::os::fd::AsRawFd for Client {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.reader.get_ref().as_raw_fd()
    }
}

impl Client {
    /// Connects to the socket at `path`, with [`DEFAULT_TIMEOUT`] for reads and writes.
    ///
    /// The error names the path and, for the usual mistakes (no daemon, wrong user),
    /// says what to check.
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Client> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|e| connect_error(&path, e))?;
        let client = Client {
            reader: BufReader::new(stream),
            path,
            next_id: 1,
        };
        client.with_timeout(DEFAULT_TIMEOUT)
    }

    /// Sets the read and write timeouts; [`Duration::ZERO`] means wait forever.
    pub fn with_timeout(self, timeout: Duration) -> io::Result<Client> {
        let timeout = (!timeout.is_zero()).then_some(timeout);
        let stream = self.reader.get_ref();
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Ok(self)
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Calls `method` and returns the reply's `result`. `params` should be an object;
    /// `Value::Null` sends no params.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "jsonrpc": "2.0", "id": id, "method": method });
        if !params.is_null() {
            request["params"] = params;
        }
        let line = serde_json::to_vec(&request)
            .map_err(|e| CallError::Protocol(format!("cannot encode the request: {e}")))?;
        let reply = self.call_raw(&line).map_err(CallError::Io)?;
        parse_reply(&reply, id)
    }

    /// Calls a streaming method (see [`crate::rpc::RpcStream`]): gives each notification
    /// that arrives before the reply to `notified` (method, params), then returns the
    /// reply's `result`. An error from `notified` ends the call (and the connection should
    /// be dropped, which ends the stream).
    pub fn call_streaming(
        &mut self,
        method: &str,
        params: Value,
        mut notified: impl FnMut(&str, Value) -> Result<(), CallError>,
    ) -> Result<Value, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "jsonrpc": "2.0", "id": id, "method": method });
        if !params.is_null() {
            request["params"] = params;
        }
        let line = serde_json::to_vec(&request)
            .map_err(|e| CallError::Protocol(format!("cannot encode the request: {e}")))?;
        self.send(&line)
            .map_err(|e| CallError::Io(self.annotate(e, "send to")))?;
        loop {
            let line = self
                .receive()
                .map_err(|e| CallError::Io(self.annotate(e, "read from")))?;
            let notification = serde_json::from_slice::<Value>(&line)
                .ok()
                .filter(|v| v.get("id").is_none())
                .and_then(|mut v| {
                    let method = v.get("method")?.as_str()?.to_owned();
                    Some((method, v.get_mut("params").map(Value::take)?))
                });
            match notification {
                Some((method, params)) => notified(&method, params)?,
                None => return parse_reply(&line, id),
            }
        }
    }

    /// Sends `line` as it is, plus a newline, and returns the next reply line without its
    /// newline. For testing how the server takes malformed requests.
    pub fn call_raw(&mut self, line: &[u8]) -> io::Result<Vec<u8>> {
        self.send(line).map_err(|e| self.annotate(e, "send to"))?;
        self.receive().map_err(|e| self.annotate(e, "read from"))
    }

    fn send(&mut self, line: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(line.len() + 1);
        out.extend_from_slice(line);
        out.push(b'\n');
        let mut stream = self.reader.get_ref();
        stream.write_all(&out)?;
        stream.flush()
    }

    fn receive(&mut self) -> io::Result<Vec<u8>> {
        let mut reply = Vec::new();
        self.reader.read_until(b'\n', &mut reply)?;
        if reply.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before replying",
            ));
        }
        reply.pop();
        if reply.last() == Some(&b'\r') {
            reply.pop();
        }
        Ok(reply)
    }

    fn annotate(&self, e: io::Error, what: &str) -> io::Error {
        // A socket timeout shows up as WouldBlock, which reads like a bug to a user.
        let (kind, detail) = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => (
                io::ErrorKind::TimedOut,
                "timed out (is polluxd busy or stuck?)".to_owned(),
            ),
            kind => (kind, e.to_string()),
        };
        io::Error::new(kind, format!("{what} {}: {detail}", self.path.display()))
    }
}

fn connect_error(path: &Path, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::NotFound => {
            "; is polluxd running? (choose the socket with --socket or POLLUX_SOCKET)"
        }
        io::ErrorKind::PermissionDenied => {
            "; the socket is mode 0660: run as its owner or a member of its group"
        }
        io::ErrorKind::ConnectionRefused => "; nobody is listening (polluxd is not running)",
        _ => "",
    };
    io::Error::new(
        e.kind(),
        format!("cannot connect to {}: {e}{hint}", path.display()),
    )
}

/// Turns a reply line into the result of request `id`.
fn parse_reply(line: &[u8], id: u64) -> Result<Value, CallError> {
    let reply: Value = serde_json::from_slice(line)
        .map_err(|e| CallError::Protocol(format!("reply is not JSON: {e}")))?;
    let Value::Object(mut reply) = reply else {
        return Err(CallError::Protocol("reply is not a JSON object".into()));
    };
    let reply_id = reply.get("id").cloned().unwrap_or(Value::Null);
    let error = reply.remove("error");
    // The server answers with a null id when it could not read the request at all (or
    // refuses the connection); that error is still the answer to this call.
    let for_us = reply_id.as_u64() == Some(id) || (reply_id.is_null() && error.is_some());
    if !for_us {
        return Err(CallError::Protocol(format!(
            "reply id {reply_id} does not match request id {id}"
        )));
    }
    match (reply.remove("result"), error) {
        (Some(result), None) => Ok(result),
        (None, Some(error)) => Err(rpc_error(error)?),
        (Some(_), Some(_)) => Err(CallError::Protocol(
            "reply has both a result and an error".into(),
        )),
        (None, None) => Err(CallError::Protocol(
            "reply has neither a result nor an error".into(),
        )),
    }
}

fn rpc_error(error: Value) -> Result<CallError, CallError> {
    let code = error.get("code").and_then(Value::as_i64);
    let message = error.get("message").and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => Ok(CallError::Rpc {
            code,
            message: message.to_owned(),
            data: error.get("data").filter(|d| !d.is_null()).cloned(),
        }),
        _ => Err(CallError::Protocol(format!(
            "malformed error object: {error}"
        ))),
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "{e}"),
            CallError::Protocol(what) => write!(f, "bad reply from the server: {what}"),
            CallError::Rpc { message, data, .. } => {
                f.write_str(message)?;
                match data {
                    Some(data) => write_error_data(f, data),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The parts of `error.data` meant for people: every entry of `errors`, and `details`.
fn write_error_data(f: &mut fmt::Formatter<'_>, data: &Value) -> fmt::Result {
    if let Some(errors) = data.get("errors").and_then(Value::as_array) {
        for entry in errors {
            let place = entry
                .get("path")
                .or_else(|| entry.get("port"))
                .and_then(Value::as_str);
            let message = entry
                .get("message")
                .map_or_else(|| entry.clone(), Clone::clone);
            let message = plain(&message);
            match place {
                Some(place) => write!(f, "\n  {place}: {message}")?,
                None => write!(f, "\n  {message}")?,
            }
        }
    }
    match data.get("details") {
        None | Some(Value::Null) => Ok(()),
        Some(details) => write!(f, "\n  {}", plain(details)),
    }
}

/// A string without its quotes; anything else as compact JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        CallError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::JoinHandle;

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "pollux-client-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("s.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Serves one connection: each request line goes to `reply`, whose answer (if any) is
    /// sent back as one line. Returns the request lines once the client hangs up.
    fn fake_server(
        path: &Path,
        mut reply: impl FnMut(&str) -> Option<String> + Send + 'static,
    ) -> JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(answer) = reply(&line) {
                    if out.write_all(format!("{answer}\n").as_bytes()).is_err() {
                        break;
                    }
                }
                seen.push(line);
            }
            seen
        })
    }

    /// Answers every request with `result` under the request's own id.
    fn answer_with(result: Value) -> impl FnMut(&str) -> Option<String> + Send + 'static {
        move |line| {
            let req: Value = serde_json::from_str(line).unwrap();
            Some(json!({ "jsonrpc": "2.0", "id": req["id"], "result": result }).to_string())
        }
    }

    fn error_of(e: CallError) -> (i64, String, Option<Value>) {
        match e {
            CallError::Rpc {
                code,
                message,
                data,
            } => (code, message, data),
            other => panic!("expected an RPC error, got {other:?}"),
        }
    }

    #[test]
    fn call_returns_result_and_ids_count_up() {
        let dir = TempDir::new();
        let server = fake_server(&dir.socket(), answer_with(json!({ "generation": 4 })));
        let mut client = Client::connect(dir.socket()).unwrap();
        let params = json!({ "network_id": "net-a" });
        assert_eq!(
            client.call("fdb.list", params.clone()).unwrap(),
            json!({ "generation": 4 })
        );
        client.call("version.get", Value::Null).unwrap();
        drop(client);
        let seen: Vec<Value> = server
            .join()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            seen[0],
            json!({ "jsonrpc": "2.0", "id": 1, "method": "fdb.list", "params": params })
        );
        assert_eq!(
            seen[1],
            json!({ "jsonrpc": "2.0", "id": 2, "method": "version.get" })
        );
    }

    #[test]
    fn rpc_error_is_returned_and_displayed_with_its_problems() {
        let dir = TempDir::new();
        let server = fake_server(&dir.socket(), |line| {
            let req: Value = serde_json::from_str(line).unwrap();
            let error = json!({
                "code": -32001,
                "message": "invalid configuration",
                "data": { "errors": [
                    { "path": "ports[3].mac_address", "message": "not a MAC" },
                    { "port": "port:vm1", "message": "interface x: no such device" }
                ], "details": "2 problems", "generation": 6 }
            });
            Some(json!({ "jsonrpc": "2.0", "id": req["id"], "error": error }).to_string())
        });
        let mut client = Client::connect(dir.socket()).unwrap();
        let err = client.call("config.apply", json!({})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration\n  ports[3].mac_address: not a MAC\n  \
             port:vm1: interface x: no such device\n  2 problems"
        );
        let (code, message, data) = error_of(err);
        assert_eq!((code, message.as_str()), (-32001, "invalid configuration"));
        assert_eq!(data.unwrap()["generation"], 6);
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn null_id_error_is_the_answer() {
        let dir = TempDir::new();
        let server = fake_server(&dir.socket(), |_| {
            Some(
                r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"too many clients"}}"#
                    .into(),
            )
        });
        let mut client = Client::connect(dir.socket()).unwrap();
        let err = client.call("stats.get", json!({})).unwrap_err();
        assert_eq!(err.to_string(), "too many clients");
        assert_eq!(error_of(err).0, -32000);
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn bad_replies_are_protocol_errors() {
        let replies = [
            ("not json", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"jsonrpc":"2.0","id":7,"result":{}}"#, "does not match"),
            (
                r#"{"jsonrpc":"2.0","id":1}"#,
                "neither a result nor an error",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}"#,
                "both",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"error":{"code":"x"}}"#,
                "malformed",
            ),
        ];
        for (reply, expected) in replies {
            let dir = TempDir::new();
            let server = fake_server(&dir.socket(), move |_| Some(reply.to_owned()));
            let mut client = Client::connect(dir.socket()).unwrap();
            match client.call("version.get", json!({})) {
                Err(CallError::Protocol(what)) => {
                    assert!(what.contains(expected), "{reply}: {what}")
                }
                other => panic!("{reply}: expected a protocol error, got {other:?}"),
            }
            drop(client);
            server.join().unwrap();
        }
    }

    #[test]
    fn closed_connection_is_an_io_error() {
        let dir = TempDir::new();
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
        });
        let mut client = Client::connect(dir.socket()).unwrap();
        match client.call("version.get", json!({})) {
            Err(CallError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                assert!(e.to_string().contains("s.sock"), "{e}");
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let dir = TempDir::new();
        let server = fake_server(&dir.socket(), |_| None);
        let mut client = Client::connect(dir.socket())
            .unwrap()
            .with_timeout(Duration::from_millis(100))
            .unwrap();
        match client.call("version.get", json!({})) {
            Err(CallError::Io(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                assert!(e.to_string().contains("timed out"), "{e}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(client);
        server.join().unwrap();
    }

    #[test]
    fn call_raw_sends_bytes_as_they_are() {
        let dir = TempDir::new();
        let server = fake_server(&dir.socket(), |line| Some(format!("echo {line}")));
        let mut client = Client::connect(dir.socket()).unwrap();
        assert_eq!(client.call_raw(b"{not json").unwrap(), b"echo {not json");
        drop(client);
        assert_eq!(server.join().unwrap(), ["{not json"]);
    }

    #[test]
    fn connect_error_names_the_path_and_a_hint() {
        let dir = TempDir::new();
        let e = Client::connect(dir.socket()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let text = e.to_string();
        assert!(text.contains(&dir.socket().display().to_string()), "{text}");
        assert!(text.contains("is polluxd running?"), "{text}");
    }
}
