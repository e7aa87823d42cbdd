//! The control socket: JSON-RPC 2.0 over a Unix stream socket, one JSON value per line, on
//! a `mio` event loop.
//!
//! The server owns the socket and the connections; what the methods do is a [`Handler`]'s
//! business. The server itself answers `rpc.list` (every method with its usage string) and
//! adds the handler's active generation to every reply: inside a `result` that is an object
//! (`"generation"`), inside the error's `data` object, and as a top-level `"generation"`
//! member of every response object.
//!
//! Nothing here blocks: accept, read and write are non-blocking, every connection has its
//! own input and output buffers, requests on a connection are answered in order, and a
//! client that floods, stops reading, idles or vanishes costs the others nothing: it is
//! dropped.
//!
//! Memory is bounded per connection (a request line, the unsent replies, the reply to one
//! batch) and over all of them (the largest holders are dropped past the total). Time is
//! bounded too: a request must arrive whole, and replies must be taken, within
//! `request_timeout` of their first byte, however the client paces its bytes; a client
//! with nothing in flight is dropped after `client_idle_timeout`. When every slot is
//! taken, peers that have closed are reaped and a long-idle connection gives its slot up
//! before a new client is refused.
//!
//! A streaming method ([`Handler::open_stream`]) answers with notifications on the same
//! connection, then its final response. The connection reads no further request until
//! then. The stream is polled on every pass of the loop and offered only the room left
//! under [`STREAM_OUTPUT`] unsent bytes, so a client that reads slowly makes the stream
//! fall behind (it drops and counts, its own business), never the server buffer more. A
//! client that hangs up ends its stream (dropping it is its cancellation).

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Map, Value};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error (including a handler that panicked).
pub const INTERNAL_ERROR: i64 = -32603;
/// The highest code of the application range (handler errors).
pub const APPLICATION_MAX: i64 = -32000;
/// The lowest code of the application range (handler errors).
pub const APPLICATION_MIN: i64 = -32099;
/// Sent (best effort) to a client refused because `max_clients` are connected.
pub const TOO_MANY_CLIENTS: i64 = -32000;

/// The mode of the socket file: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// A method the handler serves, as `rpc.list` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// Namespaced name, e.g. `config.apply`.
    pub name: String,
    /// One-line usage: parameters and what the method returns.
    pub usage: String,
}

impl MethodInfo {
    /// A method and its usage string.
    pub fn new(name: impl Into<String>, usage: impl Into<String>) -> Self {
        MethodInfo {
            name: name.into(),
            usage: usage.into(),
        }
    }
}

/// A JSON-RPC error object; the server adds the generation to `data`.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// One of the standard codes or a code in `APPLICATION_MIN..=APPLICATION_MAX`.
    pub code: i64,
    /// Human-readable message.
    pub message: String,
    /// Machine-readable details. An object gets `generation` added; anything else is
    /// wrapped as `{"generation": g, "details": data}`.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with any code.
    pub fn new(code: i64, message: impl Into<String>, data: Option<Value>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data,
        }
    }

    /// -32700: the line is not JSON.
    pub fn parse_error(details: impl Into<String>) -> Self {
        Self::new(
            PARSE_ERROR,
            "parse error",
            Some(json!({ "details": details.into() })),
        )
    }

    /// -32600: the value is not a valid request.
    pub fn invalid_request(details: impl Into<String>) -> Self {
        Self::new(
            INVALID_REQUEST,
            "invalid request",
            Some(json!({ "details": details.into() })),
        )
    }

    /// -32601: no such method.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            METHOD_NOT_FOUND,
            format!("method not found: {method}"),
            Some(json!({ "method": method })),
        )
    }

    /// -32602: the parameters are wrong; `details` says how.
    pub fn invalid_params(details: impl Into<String>) -> Self {
        let details = details.into();
        Self::new(
            INVALID_PARAMS,
            format!("invalid params: {details}"),
            Some(json!({ "details": details })),
        )
    }

    /// -32603: something went wrong inside the server.
    pub fn internal(details: impl Into<String>) -> Self {
        let details = details.into();
        Self::new(
            INTERNAL_ERROR,
            format!("internal error: {details}"),
            Some(json!({ "details": details })),
        )
    }

    /// An application error (`code` in -32099..=-32000) with machine-readable `data`.
    ///
    /// # Panics
    /// If `code` is outside the application range.
    pub fn application(code: i64, message: impl Into<String>, data: Value) -> Self {
        assert!(
            (APPLICATION_MIN..=APPLICATION_MAX).contains(&code),
            "application error code {code} outside {APPLICATION_MIN}..={APPLICATION_MAX}"
        );
        Self::new(code, message, Some(data))
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// What the methods do. The server calls it on its own thread, one request at a time.
pub trait Handler {
    /// Runs `method` (never `rpc.*`; those are the server's). Unknown methods are refused
    /// by the server before this is called, using [`Handler::methods`].
    fn call(&mut self, method: &str, params: Option<Value>) -> Result<Value, RpcError>;
    /// Every method this handler serves.
    fn methods(&self) -> Vec<MethodInfo>;
    /// The active generation, reported in every reply.
    fn generation(&self) -> u64;
    /// The streaming methods among [`Handler::methods`]: requests for them are given to
    /// [`Handler::open_stream`] instead of [`Handler::call`].
    fn streaming_methods(&self) -> &'static [&'static str] {
        &[]
    }
    /// Starts a streaming method (one of [`Handler::streaming_methods`]).
    fn open_stream(
        &mut self,
        method: &str,
        _params: Option<Value>,
    ) -> Result<Box<dyn RpcStream>, RpcError> {
        Err(RpcError::method_not_found(method))
    }
}

/// What [`RpcStream::poll`] says.
#[derive(Debug)]
pub enum StreamPoll {
    /// More to come.
    Pending,
    /// Over: the final response's result or error.
    Done(Result<Value, RpcError>),
}

/// The server's side of a streaming method: polled on every pass of the server's loop
/// until it is done, and dropped (which must end whatever feeds it) when it is done or
/// its client goes away.
pub trait RpcStream: Send {
    /// Gives `emit` each notification (method, params) to send now, stopping once the
    /// bytes `emit` reports (each notification's encoded length) reach `room`; or says the
    /// stream is over.
    fn poll(&mut self, room: usize, emit: &mut dyn FnMut(&str, Value) -> usize) -> StreamPoll;
}

/// Unsent bytes a connection with an open stream may hold before its stream is offered
/// no more room.
pub const STREAM_OUTPUT: usize = 1 << 20;
/// How often a server with an open stream polls it, at least.
pub const STREAM_TICK: Duration = Duration::from_millis(5);

/// Limits of an [`RpcServer`].
#[derive(Clone, Debug)]
pub struct RpcOptions {
    /// Longest request line in bytes, newline excluded; a longer one gets a -32600 reply
    /// and its connection is closed.
    pub max_line: usize,
    /// A client that neither sends nor takes any bytes for this long is dropped.
    pub client_idle_timeout: Option<Duration>,
    /// Connections beyond this many are refused (with a best-effort error line).
    pub max_clients: usize,
    /// A client whose unsent replies exceed this many bytes when it sends another request
    /// is dropped (it is not reading). One reply of any size is always allowed.
    pub max_pending_output: usize,
    /// The replies to one batch together: once they exceed this many bytes, the rest of
    /// the batch is not run and the batch is answered with one -32600 error saying how
    /// many of its requests ran.
    pub max_batch_output: usize,
    /// Bytes buffered (input and output) over all connections; past it, the connections
    /// holding the most are dropped.
    pub max_total_buffered: usize,
    /// A request line must be complete, and pending replies taken, within this long of
    /// their first byte; bytes trickled in or out do not extend it.
    pub request_timeout: Option<Duration>,
    /// When `max_clients` are connected, a connection with nothing in flight for this long
    /// is closed to let a new client in.
    pub evict_idle_after: Option<Duration>,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            max_line: 16 << 20,
            client_idle_timeout: Some(Duration::from_secs(300)),
            max_clients: 256,
            max_pending_output: 16 << 20,
            max_batch_output: 16 << 20,
            max_total_buffered: 256 << 20,
            request_timeout: Some(Duration::from_secs(30)),
            evict_idle_after: Some(Duration::from_secs(5)),
        }
    }
}

const LISTENER: Token = Token(0);
/// `sun_path` holds 108 bytes, the terminating NUL included.
const MAX_SOCKET_PATH: usize = 108;
const READ_CHUNK: usize = 64 << 10;
/// Bytes read from one connection per poll before the others get their turn.
const READ_BUDGET: usize = 256 << 10;
/// How often `serve_until` looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The JSON-RPC server: a listening Unix socket, its connections and their buffers.
#[derive(Debug)]
pub struct RpcServer {
    poll: Poll,
    events: Events,
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file we created, to remove only ours on drop.
    file_id: (u64, u64),
    options: RpcOptions,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// Connections that may have more input than their read budget allowed.
    backlog: Vec<Token>,
    ready: Vec<(Token, bool, bool)>,
    /// Read buffer shared by all connections.
    chunk: Vec<u8>,
}

impl RpcServer {
    /// Creates the socket at `path` with mode 0660.
    ///
    /// An existing socket file nobody accepts on (connect gets `ECONNREFUSED`) is left over
    /// from a crashed daemon and is replaced. A socket a live daemon answers on is an
    /// `AddrInUse` error, and any other file at `path` an `AlreadyExists` error; neither is
    /// touched.
    pub fn bind(path: impl AsRef<Path>, options: RpcOptions) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        check_existing(&path)?;

        // Bind under a temporary name, set the mode, then rename into place: the socket is
        // never reachable with a wider mode than 0660. A path too long for that (the
        // address limit is 107 bytes) is bound in place and its mode set right after.
        let file_name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a file path", path.display()),
            )
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let staged = if tmp.as_os_str().len() < MAX_SOCKET_PATH {
            tmp
        } else {
            path.clone()
        };
        if staged != path {
            let _ = std::fs::remove_file(&staged);
        }
        let mut listener = UnixListener::bind(&staged).map_err(|e| annotate(e, &staged, "bind"))?;
        let mut placed =
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(SOCKET_MODE));
        if staged != path {
            placed = placed.and_then(|()| std::fs::rename(&staged, &path));
        }
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&staged);
            return Err(annotate(e, &path, "place socket"));
        }
        let meta = std::fs::symlink_metadata(&path)?;

        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(RpcServer {
            poll,
            events: Events::with_capacity(256),
            listener,
            path,
            file_id: (meta.dev(), meta.ino()),
            options,
            conns: HashMap::new(),
            next_token: 1,
            backlog: Vec::new(),
            ready: Vec::new(),
            chunk: vec![0; READ_CHUNK],
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The limits in force.
    pub fn options(&self) -> &RpcOptions {
        &self.options
    }

    /// Connections currently open.
    pub fn client_count(&self) -> usize {
        self.conns.len()
    }

    /// Streams currently open.
    pub fn stream_count(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.streaming.is_some())
            .count()
    }

    /// Serves until `stop` is set (checked at least every 50 ms).
    pub fn serve_until<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.poll_once(handler, Some(STOP_CHECK))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None`: forever) for socket events, then handles them all:
    /// accepts, reads, answers complete lines, writes what the sockets take, and drops idle
    /// connections. Returns at once if a connection still has unread input.
    pub fn poll_once<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let timeout = if !self.backlog.is_empty() {
            Some(Duration::ZERO)
        } else if self.conns.values().any(|c| c.streaming.is_some()) {
            Some(timeout.map_or(STREAM_TICK, |t| t.min(STREAM_TICK)))
        } else {
            timeout
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        for ev in self.events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_write_closed();
            ready.push((ev.token(), readable, writable));
        }
        for token in std::mem::take(&mut self.backlog) {
            match ready.iter_mut().find(|r| r.0 == token) {
                Some(r) => r.1 = true,
                None => ready.push((token, true, false)),
            }
        }
        // Connections first, so clients that left free their slots before new ones are
        // counted against `max_clients`.
        let mut accept = false;
        for &(token, readable, writable) in &ready {
            if token == LISTENER {
                accept = true;
            } else {
                self.service(handler, token, readable, writable);
            }
        }
        if accept {
            self.accept_all(handler);
        }
        self.ready = ready;
        self.poll_streams(handler);
        self.drop_idle();
        Ok(())
    }

    /// Lets every open stream send what its connection has room for; a finished stream's
    /// final response goes out, and then the requests that waited behind it are answered.
    fn poll_streams<H: Handler + ?Sized>(&mut self, handler: &mut H) {
        let streaming: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.streaming.is_some())
            .map(|(t, _)| *t)
            .collect();
        for token in streaming {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            let mut keep = conn.poll_stream(handler, &self.options);
            if keep {
                keep = conn.flush();
            }
            if keep && conn.closing && conn.pending() == 0 && conn.streaming.is_none() {
                keep = false;
            }
            if !keep {
                self.drop_conn(token);
            }
        }
    }

    fn accept_all<H: Handler + ?Sized>(&mut self, handler: &mut H) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= self.options.max_clients {
                        self.make_room();
                    }
                    if self.conns.len() >= self.options.max_clients {
                        let err = RpcError::new(
                            TOO_MANY_CLIENTS,
                            "too many clients",
                            Some(json!({ "max_clients": self.options.max_clients })),
                        );
                        let line = encode(&error_response(Value::Null, err, handler.generation()));
                        let _ = send_nosignal(&stream, &line);
                        continue;
                    }
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(token, Conn::new(stream));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all taken. Anything else (EMFILE, ...): try again on the next
                // connection attempt.
                Err(_) => break,
            }
        }
    }

    fn service<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        token: Token,
        readable: bool,
        writable: bool,
    ) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut keep = true;
        if writable {
            keep = conn.flush();
        }
        if keep && readable && !conn.closing {
            match conn.read_and_answer(handler, &self.options, &mut self.chunk) {
                ReadOutcome::Drop => keep = false,
                ReadOutcome::Done => {}
                ReadOutcome::More => self.backlog.push(token),
            }
        }
        if keep {
            keep = conn.flush();
        }
        if keep && conn.closing && conn.pending() == 0 {
            keep = false;
        }
        if !keep {
            self.drop_conn(token);
        }
    }

    /// Frees slots for new clients: closes connections whose peer is gone (their hang-up
    /// may not have been polled yet), then, if every slot is still taken, the connection
    /// idle the longest, when it has been idle for `evict_idle_after`.
    fn make_room(&mut self) {
        let gone: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer_gone())
            .map(|(t, _)| *t)
            .collect();
        for token in gone {
            self.drop_conn(token);
        }
        if self.conns.len() < self.options.max_clients {
            return;
        }
        let Some(after) = self.options.evict_idle_after else {
            return;
        };
        let now = Instant::now();
        let oldest = self
            .conns
            .iter()
            // A stream with no output for a while is not idle: its client waits on it.
            .filter(|(_, c)| c.in_flight_since.is_none() && c.streaming.is_none())
            .filter(|(_, c)| now.saturating_duration_since(c.last_activity) >= after)
            .min_by_key(|(_, c)| c.last_activity)
            .map(|(t, _)| *t);
        if let Some(token) = oldest {
            self.drop_conn(token);
        }
    }

    /// Drops the connections that are idle too long, or whose request or replies are in
    /// flight too long, and the largest holders of buffers while the total is too large.
    fn drop_idle(&mut self) {
        let now = Instant::now();
        let (idle, slow) = (
            self.options.client_idle_timeout,
            self.options.request_timeout,
        );
        let late: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| match c.in_flight_since {
                Some(since) => slow.is_some_and(|l| now.saturating_duration_since(since) > l),
                // An open stream bounds its own time.
                None if c.streaming.is_some() => false,
                None => idle.is_some_and(|l| now.saturating_duration_since(c.last_activity) > l),
            })
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            self.drop_conn(token);
        }
        let mut total: usize = self.conns.values().map(Conn::buffered).sum();
        while total > self.options.max_total_buffered {
            let Some((&token, conn)) = self.conns.iter().max_by_key(|(_, c)| c.buffered()) else {
                break;
            };
            total -= conn.buffered();
            self.drop_conn(token);
        }
    }

    fn drop_conn(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            let _ = conn.stream.shutdown(std::net::Shutdown::Both);
        }
        self.backlog.retain(|t| *t != token);
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        // Remove the socket file only if it is still the one we created.
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn annotate(e: io::Error, path: &Path, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Refuses a live socket or a non-socket at `path`; removes a stale socket.
fn check_existing(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(annotate(e, path, "inspect")),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{}: another daemon is already serving on this socket",
                path.display()
            ),
        )),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            // Stale: left by a daemon that is gone.
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(annotate(e, path, "remove stale socket")),
            }
        }
        Err(e) => Err(annotate(e, path, "probe existing socket")),
    }
}

fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    rustix::net::send(stream, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
}

enum ReadOutcome {
    /// Drop the connection now.
    Drop,
    /// Read until the socket had nothing more (or it is closing).
    Done,
    /// The read budget ran out; there may be more.
    More,
}

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    /// How much of `input` is known to hold no newline.
    scanned: usize,
    output: Vec<u8>,
    /// How much of `output` has been sent.
    sent: usize,
    /// When the connection last had nothing in flight: connected, a request answered, or
    /// the replies all taken.
    last_activity: Instant,
    /// Since when a request line has been arriving or replies waiting to be taken,
    /// without a request completing or the replies draining: bytes trickled do not reset
    /// it.
    in_flight_since: Option<Instant>,
    /// No more requests: close once the output is sent.
    closing: bool,
    /// The streaming request being answered: its id and stream.
    streaming: Option<(Value, Box<dyn RpcStream>)>,
}

impl std::fmt::Debug for dyn RpcStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcStream")
    }
}

impl Conn {
    fn new(stream: UnixStream) -> Self {
        Conn {
            stream,
            input: Vec::new(),
            scanned: 0,
            output: Vec::new(),
            sent: 0,
            last_activity: Instant::now(),
            in_flight_since: None,
            closing: false,
            streaming: None,
        }
    }

    /// Polls the open stream; on its end, queues its final response and answers the
    /// requests that arrived meanwhile. False if the connection must be dropped.
    fn poll_stream<H: Handler + ?Sized>(&mut self, handler: &mut H, options: &RpcOptions) -> bool {
        let Some((id, mut stream)) = self.streaming.take() else {
            return true;
        };
        let room = STREAM_OUTPUT.saturating_sub(self.pending());
        let output = &mut self.output;
        let outcome = stream.poll(room, &mut |method, params| {
            let line = encode(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
            output.extend_from_slice(&line);
            line.len()
        });
        self.in_flight();
        match outcome {
            StreamPoll::Pending => {
                self.streaming = Some((id, stream));
                true
            }
            StreamPoll::Done(result) => {
                // Whatever feeds the stream ends before its final response is sent.
                drop(stream);
                let generation = handler.generation();
                let reply = match result {
                    Ok(result) => ok_response(id, result, generation),
                    Err(err) => error_response(id, err, generation),
                };
                self.output.extend_from_slice(&encode(&reply));
                self.progressed();
                self.closing || self.answer_lines(handler, options)
            }
        }
    }

    /// Opens a stream if `line` is a request for a streaming method (with an id); true if
    /// it was (answered with an error, or now streaming).
    fn open_stream<H: Handler + ?Sized>(&mut self, handler: &mut H, line: &[u8]) -> bool {
        let streaming = handler.streaming_methods();
        if !streaming
            .iter()
            .any(|m| line.windows(m.len()).any(|w| w == m.as_bytes()))
        {
            return false;
        }
        let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(line) else {
            return false;
        };
        let method = match request.get("method") {
            Some(Value::String(m)) if streaming.contains(&m.as_str()) => m.clone(),
            _ => return false,
        };
        let id = match request.remove("id") {
            Some(id @ (Value::String(_) | Value::Number(_))) => id,
            // Notifications and malformed ids get the usual answers.
            _ => return false,
        };
        let params = match request.remove("params") {
            None => None,
            Some(p @ (Value::Array(_) | Value::Object(_))) => Some(p),
            Some(_) => return false,
        };
        if request.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return false;
        }
        match catch_unwind(AssertUnwindSafe(|| handler.open_stream(&method, params))) {
            Ok(Ok(stream)) => self.streaming = Some((id, stream)),
            Ok(Err(err)) => {
                let reply = error_response(id, err, handler.generation());
                self.output.extend_from_slice(&encode(&reply));
            }
            Err(_) => {
                let err = RpcError::internal(format!("{method}: handler panicked"));
                let reply = error_response(id, err, handler.generation());
                self.output.extend_from_slice(&encode(&reply));
            }
        }
        true
    }

    fn pending(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Bytes the connection holds in its buffers.
    fn buffered(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// Notes progress: a request completed or the replies drained. The clock of what is
    /// still in flight restarts (or stops, when nothing is).
    fn progressed(&mut self) {
        let now = Instant::now();
        self.last_activity = now;
        let busy = !self.input.is_empty() || self.pending() > 0;
        self.in_flight_since = busy.then_some(now);
    }

    /// Notes bytes that arrived or replies queued: starts the in-flight clock if it was
    /// stopped, never restarts it.
    fn in_flight(&mut self) {
        if self.in_flight_since.is_none() && (!self.input.is_empty() || self.pending() > 0) {
            self.in_flight_since = Some(Instant::now());
        }
    }

    /// Whether the peer has closed with nothing left to answer or send: its slot can go
    /// before its hang-up is polled.
    fn peer_gone(&self) -> bool {
        if self.pending() > 0 || !self.input.iter().all(u8::is_ascii_whitespace) {
            return false;
        }
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.stream,
            &mut byte,
            rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
        }
    }

    /// Writes what the socket takes; false if the connection is dead.
    fn flush(&mut self) -> bool {
        let before = self.sent;
        while self.sent < self.output.len() {
            match send_nosignal(&self.stream, &self.output[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if self.streaming.is_some() && self.sent > before {
            // A stream's output may never drain to nothing while it runs: a client that
            // takes it makes progress (the stream's own duration bounds the rest).
            self.in_flight_since = Some(Instant::now());
        }
        if self.sent == self.output.len() {
            let drained = !self.output.is_empty();
            self.output.clear();
            if self.output.capacity() > READ_CHUNK {
                self.output = Vec::new();
            }
            self.sent = 0;
            if drained {
                self.progressed();
            }
        } else if self.sent > self.output.len() / 2 {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
        true
    }

    fn read_and_answer<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        options: &RpcOptions,
        chunk: &mut [u8],
    ) -> ReadOutcome {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                return ReadOutcome::More;
            }
            match self.stream.read(chunk) {
                // A client that hangs up during its stream is gone: nobody takes the rest.
                Ok(0) if self.streaming.is_some() => return ReadOutcome::Drop,
                Ok(0) => {
                    // The client is done sending: answer a last unterminated line, then
                    // close once the replies are out.
                    let rest = std::mem::take(&mut self.input);
                    self.scanned = 0;
                    if !rest.iter().all(u8::is_ascii_whitespace) {
                        if rest.len() > options.max_line {
                            self.too_long(handler, options);
                        } else if !self.answer(handler, options, &rest) {
                            return ReadOutcome::Drop;
                        }
                    }
                    self.closing = true;
                    return ReadOutcome::Done;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    self.input.extend_from_slice(&chunk[..n]);
                    self.in_flight();
                    if self.streaming.is_some() {
                        // Answered after the stream, in order; held within one line.
                        if self.input.len() > options.max_line {
                            return ReadOutcome::Drop;
                        }
                        continue;
                    }
                    if !self.answer_lines(handler, options) {
                        return ReadOutcome::Drop;
                    }
                    self.in_flight();
                    if self.closing {
                        return ReadOutcome::Done;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Done,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return ReadOutcome::Drop,
            }
        }
    }

    /// Answers every complete line in `input`; false if the connection must be dropped.
    fn answer_lines<H: Handler + ?Sized>(&mut self, handler: &mut H, options: &RpcOptions) -> bool {
        let input = std::mem::take(&mut self.input);
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(off) = input[from..].iter().position(|&b| b == b'\n') {
            let end = from + off;
            let line = &input[start..end];
            if line.len() > options.max_line {
                self.too_long(handler, options);
                return true;
            }
            if !self.answer(handler, options, line) {
                return false;
            }
            start = end + 1;
            from = start;
            // A whole request arrived and was answered (a slow handler does not make its
            // client look idle).
            self.progressed();
            if self.streaming.is_some() {
                // The requests after a streaming one wait for its end.
                break;
            }
        }
        if input.len() - start > options.max_line {
            self.too_long(handler, options);
            return true;
        }
        self.input = input;
        self.input.drain(..start);
        // Behind an open stream, the rest is not scanned yet.
        self.scanned = if self.streaming.is_some() {
            0
        } else {
            self.input.len()
        };
        // A big request's buffer is not kept: it would count against the total held for
        // all clients while this one idles.
        if self.input.is_empty() && self.input.capacity() > READ_CHUNK {
            self.input = Vec::new();
        }
        true
    }

    /// Answers one line; false if the client is not reading its replies.
    fn answer<H: Handler + ?Sized>(
        &mut self,
        handler: &mut H,
        options: &RpcOptions,
        line: &[u8],
    ) -> bool {
        if self.pending() > options.max_pending_output {
            return false;
        }
        if self.open_stream(handler, line) {
            return true;
        }
        if let Some(reply) = dispatch_line_limited(handler, line, options.max_batch_output) {
            self.output.extend_from_slice(&reply);
        }
        true
    }

    fn too_long<H: Handler + ?Sized>(&mut self, handler: &mut H, options: &RpcOptions) {
        let err = RpcError::new(
            INVALID_REQUEST,
            format!("request line longer than {} bytes", options.max_line),
            Some(json!({ "max_line": options.max_line })),
        );
        let line = encode(&error_response(Value::Null, err, handler.generation()));
        self.output.extend_from_slice(&line);
        self.input = Vec::new();
        self.scanned = 0;
        self.closing = true;
    }
}

/// Answers one request line (without its newline): the reply line, newline included, or
/// `None` when nothing is to be sent (notifications, blank lines).
pub fn dispatch_line<H: Handler + ?Sized>(handler: &mut H, line: &[u8]) -> Option<Vec<u8>> {
    dispatch_line_limited(handler, line, usize::MAX)
}

/// [`dispatch_line`] with the replies to a batch bounded to `max_batch_output` bytes in
/// all (see [`RpcOptions::max_batch_output`]).
pub fn dispatch_line_limited<H: Handler + ?Sized>(
    handler: &mut H,
    line: &[u8],
    max_batch_output: usize,
) -> Option<Vec<u8>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            let err = RpcError::parse_error(e.to_string());
            return Some(encode(&error_response(
                Value::Null,
                err,
                handler.generation(),
            )));
        }
    };
    dispatch_value_limited(handler, value, max_batch_output).map(|v| encode(&v))
}

/// Answers one parsed request or batch: the response value, or `None` for a notification
/// or a batch of notifications.
pub fn dispatch_value<H: Handler + ?Sized>(handler: &mut H, value: Value) -> Option<Value> {
    dispatch_value_limited(handler, value, usize::MAX)
}

/// [`dispatch_value`] with the replies to a batch bounded to `max_batch_output` bytes.
pub fn dispatch_value_limited<H: Handler + ?Sized>(
    handler: &mut H,
    value: Value,
    max_batch_output: usize,
) -> Option<Value> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                let err = RpcError::invalid_request("empty batch");
                return Some(error_response(Value::Null, err, handler.generation()));
            }
            let total = items.len();
            let mut replies: Vec<Value> = Vec::new();
            let mut bytes = 0usize;
            for (ran, item) in items.into_iter().enumerate() {
                let Some(reply) = dispatch_request(handler, item) else {
                    continue;
                };
                bytes = bytes.saturating_add(encoded_len(&reply));
                if bytes > max_batch_output {
                    let err = RpcError::invalid_request(format!(
                        "the replies to this batch exceed {max_batch_output} bytes: its first \
                         {} of {total} requests ran, the rest did not; send fewer per batch",
                        ran + 1
                    ));
                    let mut err = err;
                    err.data = Some(json!({
                        "max_batch_output": max_batch_output,
                        "ran": ran + 1,
                        "requests": total,
                    }));
                    return Some(error_response(Value::Null, err, handler.generation()));
                }
                replies.push(reply);
            }
            if replies.is_empty() {
                None
            } else {
                Some(Value::Array(replies))
            }
        }
        other => dispatch_request(handler, other),
    }
}

fn dispatch_request<H: Handler + ?Sized>(handler: &mut H, value: Value) -> Option<Value> {
    let Value::Object(mut obj) = value else {
        let err = RpcError::invalid_request("a request must be an object");
        return Some(error_response(Value::Null, err, handler.generation()));
    };
    let id = obj.remove("id");
    let id_valid = matches!(
        id,
        None | Some(Value::Null | Value::String(_) | Value::Number(_))
    );
    if !id_valid {
        let err = RpcError::invalid_request("id must be a string, a number or null");
        return Some(error_response(Value::Null, err, handler.generation()));
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    let invalid = |handler: &mut H, why: &str| {
        Some(error_response(
            reply_id.clone(),
            RpcError::invalid_request(why),
            handler.generation(),
        ))
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(handler, "jsonrpc must be \"2.0\"");
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return invalid(handler, "method must be a string"),
        None => return invalid(handler, "method is missing"),
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Array(_) | Value::Object(_))) => Some(p),
        Some(_) => return invalid(handler, "params must be an array or an object"),
    };

    let outcome = call(handler, &method, params);
    // A notification is run but not answered.
    id.as_ref()?;
    let generation = handler.generation();
    Some(match outcome {
        Ok(result) => ok_response(reply_id, result, generation),
        Err(err) => error_response(reply_id, err, generation),
    })
}

fn call<H: Handler + ?Sized>(
    handler: &mut H,
    method: &str,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    if method == "rpc.list" {
        let mut methods = handler.methods();
        methods.push(MethodInfo::new(
            "rpc.list",
            "rpc.list -> {methods: [{name, usage}]}: every method with its usage",
        ));
        methods.sort_by(|a, b| a.name.cmp(&b.name));
        let list: Vec<Value> = methods
            .into_iter()
            .map(|m| json!({ "name": m.name, "usage": m.usage }))
            .collect();
        return Ok(json!({ "methods": list }));
    }
    if method.starts_with("rpc.") || !handler.methods().iter().any(|m| m.name == method) {
        return Err(RpcError::method_not_found(method));
    }
    match catch_unwind(AssertUnwindSafe(|| handler.call(method, params))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_string());
            Err(RpcError::internal(format!("{method}: {what}")))
        }
    }
}

fn ok_response(id: Value, mut result: Value, generation: u64) -> Value {
    if let Value::Object(map) = &mut result {
        map.entry("generation").or_insert(json!(generation));
    }
    json!({ "jsonrpc": "2.0", "id": id, "result": result, "generation": generation })
}

fn error_response(id: Value, err: RpcError, generation: u64) -> Value {
    let data = match err.data {
        Some(Value::Object(mut map)) => {
            map.entry("generation").or_insert(json!(generation));
            Value::Object(map)
        }
        None => json!({ "generation": generation }),
        Some(other) => json!({ "generation": generation, "details": other }),
    };
    let mut error = Map::new();
    error.insert("code".into(), json!(err.code));
    error.insert("message".into(), json!(err.message));
    error.insert("data".into(), data);
    json!({ "jsonrpc": "2.0", "id": id, "error": error, "generation": generation })
}

/// The length of `v` encoded, without building the bytes.
fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, v);
    count.0 + 1
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec());
    out.push(b'\n');
    out
}
