//! Frame capture on live traffic, as VPP's `pcap trace` and `ovs-tcpdump`: `capture.start`
//! announces the capture armed (a `capture.started` notification), streams the frames a
//! port receives, sends or drops to its client as `capture.frame` notifications on the
//! same connection, then answers with what it captured and lost.
//! The daemon writes no file: the client (`polluxctl capture -w`) does.
//!
//! Bounded in size (frames, bytes, snap length, one ring per worker) and time (a duration
//! with a maximum); one capture at a time. A client that reads too slowly for the traffic
//! loses frames (counted in the result), never makes the daemon buffer more than the
//! control socket's stream allowance.

use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use pollux_dataplane::pipeline::capture::{
    capture, CaptureReader, CaptureSpec, CapturedFrame, Capturer, Directions, MAX_SNAPLEN,
};
use pollux_dataplane::pipeline::trace::TraceMatch;
use pollux_dataplane::worker::Mailbox;
use serde::Deserialize;
use serde_json::{json, Value};

use super::trace::{match_text, parse_match};
use super::{parse, rpc_error, DAEMON_ERROR};
use crate::engine::{port_label, Engine};
use crate::rpc::{RpcError, RpcStream, StreamPoll};

/// `rpc.list` usage of `capture.start`.
pub const CAPTURE_START_USAGE: &str =
    "{port: string, direction?: string (rx, tx, drop, comma-separated; default rx,tx), \
     count?: u64 (default 1000, at most 1000000), duration_secs?: u64 (default 10, at most \
     600), snaplen?: u32 (default 2048, at most 9216), max_bytes?: u64 (default 64 MiB, at \
     most 1 GiB), match?: string (as trace.start's)} -> streams a capture.started \
     notification {port, direction, snaplen, match} \
     once armed, then a capture.frame notification {direction, timestamp_ns (Unix), \
     orig_len, data (base64, cut at snaplen), stage?, reason? (drops)} per frame, then \
     {generation, port, direction, snaplen, match, frames, bytes, lost, \
     unsent, ended: count|duration|max_bytes}; one capture at a time (-32011 while one runs)";

/// A capture runs already.
pub const CAPTURE_BUSY: i64 = -32011;

/// Frames captured when `count` is not given.
pub const DEFAULT_COUNT: u64 = 1000;
/// Most frames one capture takes.
pub const MAX_COUNT: u64 = 1_000_000;
/// Seconds a capture runs when `duration_secs` is not given.
pub const DEFAULT_DURATION_SECS: u64 = 10;
/// Longest capture.
pub const MAX_DURATION_SECS: u64 = 600;
/// Bytes kept per frame when `snaplen` is not given.
pub const DEFAULT_SNAPLEN: usize = 2048;
/// Frame bytes streamed when `max_bytes` is not given.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;
/// Most frame bytes one capture streams.
pub const MAX_BYTES: u64 = 1 << 30;
/// Frames taken from the ring per poll at most, so that one poll stays short.
const FRAMES_PER_POLL: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    port: String,
    direction: Option<String>,
    count: Option<u64>,
    duration_secs: Option<u64>,
    snaplen: Option<usize>,
    max_bytes: Option<u64>,
    #[serde(rename = "match")]
    filter: Option<String>,
}

/// A `capture.start` request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureRequest {
    /// The port's label (as `ports.list` names it).
    pub port: String,
    /// Which of its frames.
    pub directions: Directions,
    /// Frames at most.
    pub count: u64,
    /// How long at most.
    pub duration: Duration,
    /// Bytes kept per frame.
    pub snaplen: usize,
    /// Frame bytes streamed at most.
    pub max_bytes: u64,
    /// Which frames (as `trace.start`'s `match`); the empty match takes every frame.
    pub filter: TraceMatch,
}

/// Parses a direction set: `rx`, `tx`, `drop`, comma-separated, each at most once.
pub fn parse_directions(text: &str) -> Result<Directions, String> {
    let mut set = Directions::default();
    for word in text.split(',').map(str::trim) {
        let d = match word {
            "rx" => Directions::RX,
            "tx" => Directions::TX,
            "drop" => Directions::DROP,
            _ => return Err(format!("{word:?} is not a direction (rx, tx, drop)")),
        };
        if set.contains(d) {
            return Err(format!("{word} is given twice"));
        }
        set = set.with(d);
    }
    Ok(set)
}

/// The direction set as [`parse_directions`] reads it.
pub fn directions_text(set: Directions) -> String {
    [Directions::RX, Directions::TX, Directions::DROP]
        .into_iter()
        .filter(|d| set.contains(*d))
        .map(Directions::name)
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks `capture.start`'s params: every field in range (an error names the field).
pub fn parse_request(params: Option<Value>) -> Result<CaptureRequest, RpcError> {
    let p: StartParams = parse(params)?;
    let bad = |field: &str, why: String| RpcError::invalid_params(format!("{field}: {why}"));
    let directions = match p.direction.as_deref() {
        None => Directions::RX.with(Directions::TX),
        Some(text) => parse_directions(text).map_err(|e| bad("direction", e))?,
    };
    let count = p.count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(bad("count", format!("must be 1 to {MAX_COUNT}")));
    }
    let secs = p.duration_secs.unwrap_or(DEFAULT_DURATION_SECS);
    if !(1..=MAX_DURATION_SECS).contains(&secs) {
        return Err(bad(
            "duration_secs",
            format!("must be 1 to {MAX_DURATION_SECS}"),
        ));
    }
    let snaplen = p.snaplen.unwrap_or(DEFAULT_SNAPLEN);
    if !(14..=MAX_SNAPLEN).contains(&snaplen) {
        return Err(bad("snaplen", format!("must be 14 to {MAX_SNAPLEN}")));
    }
    let max_bytes = p.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    if !(1..=MAX_BYTES).contains(&max_bytes) {
        return Err(bad("max_bytes", format!("must be 1 to {MAX_BYTES}")));
    }
    let filter = match p.filter.as_deref() {
        None => TraceMatch::default(),
        Some(text) => parse_match(text).map_err(|e| bad("match", e))?,
    };
    Ok(CaptureRequest {
        port: p.port,
        directions,
        count,
        duration: Duration::from_secs(secs),
        snaplen,
        max_bytes,
        filter,
    })
}

/// `capture.start`: arms the worker's capture and returns the stream that drains it.
pub fn open(e: &mut Engine, params: Option<Value>) -> Result<Box<dyn RpcStream>, RpcError> {
    let req = parse_request(params)?;
    let port = e
        .port_names()
        .into_iter()
        .find(|(_, key)| port_label(key) == req.port)
        .map(|(id, _)| id)
        .ok_or_else(|| RpcError::invalid_params(format!("port: no port {:?}", req.port)))?;
    // The ring is allocated here, on the control thread; the worker only takes it.
    let (capturer, reader) = capture(CaptureSpec {
        port,
        directions: req.directions,
        snaplen: req.snaplen,
        count: req.count,
        filter: req.filter,
    });
    let capturer = Box::new(capturer);
    // The worker that polls the port sees its frames both ways (others hand it theirs).
    let home = e.placement().home(port);
    let started = e
        .call_on(home, move |w| {
            let now = w.now_ns();
            w.capture_start(capturer)
                .map(|()| now)
                .is_ok()
                .then_some(now)
        })
        .map_err(rpc_error)?;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let Some(worker_now) = started else {
        return Err(RpcError::application(
            CAPTURE_BUSY,
            "a capture is already running (one at a time)",
            json!({}),
        ));
    };
    Ok(Box::new(CaptureStream {
        deadline: Instant::now() + req.duration,
        req,
        reader,
        mailbox: e.mailbox_on(home),
        clock_offset: wall.wrapping_sub(worker_now),
        frames: 0,
        bytes: 0,
        state: State::Running,
        announced: false,
    }))
}

#[derive(Debug)]
enum State {
    Running,
    /// Asked the worker to stop; the receiver hears when it has (with its end).
    Stopping(Receiver<Option<Box<Capturer>>>, &'static str),
    /// The worker stopped: what is left in the ring is the last of it.
    Draining(&'static str),
}

/// The stream of one capture. Dropped early (its client gone), it stops the capture.
#[derive(Debug)]
struct CaptureStream {
    req: CaptureRequest,
    reader: CaptureReader,
    mailbox: Mailbox,
    /// Unix time minus the worker's clock, in nanoseconds.
    clock_offset: u64,
    deadline: Instant,
    frames: u64,
    bytes: u64,
    state: State,
    /// Whether `capture.started` was sent.
    announced: bool,
}

fn frame_params(f: &CapturedFrame<'_>, clock_offset: u64) -> Value {
    let mut v = json!({
        "direction": f.direction.name(),
        "timestamp_ns": f.timestamp_ns.wrapping_add(clock_offset),
        "orig_len": f.orig_len,
        "data": base64::engine::general_purpose::STANDARD.encode(f.data),
    });
    if let Some((stage, reason)) = f.drop {
        v["stage"] = json!(stage.name());
        v["reason"] = json!(reason.name());
    }
    v
}

impl CaptureStream {
    /// Streams what the ring holds, within `room` bytes and the capture's bounds.
    fn drain(&mut self, room: usize, emit: &mut dyn FnMut(&str, Value) -> usize) {
        let mut used = 0;
        let (max_frames, max_bytes, offset) =
            (self.req.count, self.req.max_bytes, self.clock_offset);
        let (frames, bytes) = (&mut self.frames, &mut self.bytes);
        self.reader.drain(FRAMES_PER_POLL, |f| {
            if used >= room || *frames >= max_frames || *bytes >= max_bytes {
                return false;
            }
            used += emit("capture.frame", frame_params(&f, offset));
            *frames += 1;
            *bytes += f.data.len() as u64;
            true
        });
    }

    /// Why the capture is over, if it is.
    fn over(&mut self) -> Option<&'static str> {
        if self.bytes >= self.req.max_bytes {
            return Some("max_bytes");
        }
        // The worker takes at most `count` frames, captured or lost.
        if self.frames + self.reader.lost() >= self.req.count {
            return Some("count");
        }
        (Instant::now() >= self.deadline).then_some("duration")
    }

    fn stop(&mut self, why: &'static str) {
        let (tx, rx) = mpsc::sync_channel(1);
        let posted = self.mailbox.post(move |w| {
            // The worker end comes back to be freed here, not on the worker's thread.
            let _ = tx.send(w.capture_stop());
        });
        self.state = match posted {
            Ok(()) => State::Stopping(rx, why),
            Err(_) => State::Draining(why),
        };
    }

    fn result(&mut self, ended: &str) -> Value {
        let mut unsent = 0;
        self.reader.drain(usize::MAX, |_| {
            unsent += 1;
            true
        });
        json!({
            "port": self.req.port,
            "direction": directions_text(self.req.directions),
            "snaplen": self.req.snaplen,
            "match": match_text(&self.req.filter),
            "frames": self.frames,
            "bytes": self.bytes,
            "lost": self.reader.lost(),
            "unsent": unsent,
            "ended": ended,
        })
    }
}

impl RpcStream for CaptureStream {
    fn poll(&mut self, room: usize, emit: &mut dyn FnMut(&str, Value) -> usize) -> StreamPoll {
        if !self.announced {
            self.announced = true;
            let started = json!({
                "port": self.req.port,
                "direction": directions_text(self.req.directions),
                "snaplen": self.req.snaplen,
                "match": match_text(&self.req.filter),
            });
            emit("capture.started", started);
        }
        self.drain(room, emit);
        match self.state {
            State::Running => {
                if let Some(why) = self.over() {
                    self.stop(why);
                }
            }
            State::Stopping(ref rx, why) => match rx.try_recv() {
                Ok(_) | Err(TryRecvError::Disconnected) => self.state = State::Draining(why),
                Err(TryRecvError::Empty) => {
                    // A worker that does not run its jobs (it is stuck) must not hold the
                    // stream open forever.
                    if Instant::now() >= self.deadline + Duration::from_secs(5) {
                        return StreamPoll::Done(Err(RpcError::application(
                            DAEMON_ERROR,
                            "the worker did not stop the capture",
                            json!({}),
                        )));
                    }
                }
            },
            State::Draining(why) => {
                let bounded = self.frames >= self.req.count || self.bytes >= self.req.max_bytes;
                let mut empty = true;
                self.reader.drain(1, |_| {
                    empty = false;
                    false
                });
                if empty || bounded {
                    return StreamPoll::Done(Ok(self.result(why)));
                }
            }
        }
        StreamPoll::Pending
    }
}

impl Drop for CaptureStream {
    fn drop(&mut self) {
        // Its client is gone: the worker stops copying at once (and frees its end in the
        // job, between passes, as it does any control work).
        if matches!(self.state, State::Running) {
            let _ = self.mailbox.post(|w| drop(w.capture_stop()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_bounds_and_errors_name_the_field() {
        let r = parse_request(Some(json!({ "port": "vm1" }))).unwrap();
        assert_eq!(
            r,
            CaptureRequest {
                port: "vm1".into(),
                directions: Directions::RX.with(Directions::TX),
                count: DEFAULT_COUNT,
                duration: Duration::from_secs(DEFAULT_DURATION_SECS),
                snaplen: DEFAULT_SNAPLEN,
                max_bytes: DEFAULT_MAX_BYTES,
                filter: TraceMatch::default(),
            }
        );
        let r = parse_request(Some(json!({
            "port": "uplink:physnet1", "direction": "drop, rx", "count": 5,
            "duration_secs": 600, "snaplen": 64, "max_bytes": 1000,
        })))
        .unwrap();
        assert_eq!(r.directions, Directions::RX.with(Directions::DROP));
        assert_eq!(directions_text(r.directions), "rx,drop");
        let r = parse_request(Some(
            json!({ "port": "vm1", "match": "proto=udp,dst_port=53" }),
        ))
        .unwrap();
        assert_eq!(match_text(&r.filter), "proto=17,dst_port=53");
        for (params, says) in [
            (json!({ "port": "a", "count": 0 }), "count"),
            (json!({ "port": "a", "count": 1_000_001 }), "count"),
            (
                json!({ "port": "a", "duration_secs": 601 }),
                "duration_secs",
            ),
            (json!({ "port": "a", "snaplen": 13 }), "snaplen"),
            (json!({ "port": "a", "match": "colour=blue" }), "match"),
            (json!({ "port": "a", "snaplen": 9217 }), "snaplen"),
            (json!({ "port": "a", "max_bytes": 0 }), "max_bytes"),
            (json!({ "port": "a", "direction": "in" }), "direction"),
            (json!({ "port": "a", "direction": "rx,rx" }), "twice"),
            (json!({ "port": "a", "filter": "x" }), "unknown field"),
            (json!({}), "port"),
        ] {
            let e = parse_request(Some(params.clone())).unwrap_err();
            assert!(e.message.contains(says), "{params}: {}", e.message);
        }
    }

    proptest! {
        #[test]
        fn params_never_panic_and_what_parses_is_in_bounds(
            direction in proptest::option::of("[a-z, ]{0,16}"),
            count in proptest::option::of(any::<u64>()),
            duration in proptest::option::of(any::<u64>()),
            snaplen in proptest::option::of(0usize..20_000),
            max_bytes in proptest::option::of(any::<u64>()),
            extra in proptest::option::of("[a-z_]{1,8}"),
        ) {
            let mut p = json!({ "port": "vm1" });
            if let Some(d) = &direction { p["direction"] = json!(d); }
            if let Some(c) = count { p["count"] = json!(c); }
            if let Some(d) = duration { p["duration_secs"] = json!(d); }
            if let Some(s) = snaplen { p["snaplen"] = json!(s); }
            if let Some(b) = max_bytes { p["max_bytes"] = json!(b); }
            if let Some(x) = &extra { p[x.as_str()] = json!(1); }
            if let Ok(r) = parse_request(Some(p)) {
                prop_assert!((1..=MAX_COUNT).contains(&r.count));
                prop_assert!(r.duration <= Duration::from_secs(MAX_DURATION_SECS));
                prop_assert!((14..=MAX_SNAPLEN).contains(&r.snaplen));
                prop_assert!((1..=MAX_BYTES).contains(&r.max_bytes));
                prop_assert!(!r.directions.is_empty());
                prop_assert_eq!(parse_directions(&directions_text(r.directions)), Ok(r.directions));
            }
        }
    }
}
