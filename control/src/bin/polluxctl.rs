//! `polluxctl`, the command-line client of `polluxd`'s control socket (see
//! `pollux_control::client`).
//!
//! Exit codes: 0 success, 1 the daemon refused the request (an RPC error), 2 a usage or
//! local file problem, 3 the daemon could not be reached or answered nonsense.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use clap::Parser;
use pollux_control::cli::polluxctl::{Cli, Command, Show, Trace};
use pollux_control::client::{CallError, Client};
use pollux_control::model::{DesiredState, TOP_LEVEL_KEYS};
use pollux_control::patch::Collection;
use pollux_control::pcap::{PcapngFile, StreamedFrame};
use serde_json::{json, Map, Value};

/// Where `polluxd` listens unless told otherwise.
const DEFAULT_SOCKET: &str = "/run/pollux/polluxd.sock";
/// Overrides [`DEFAULT_SOCKET`]; `--socket` overrides both.
const SOCKET_ENV: &str = "POLLUX_SOCKET";

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
enum Failure {
    /// A local problem with the user's input (a file): exit 2.
    Local(String),
    /// The call failed: exit 1 for an RPC error, 3 otherwise.
    Call(CallError),
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure::Call(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(text) => {
            print_stdout(&text);
            ExitCode::SUCCESS
        }
        Err(failure) => report(&cli, failure),
    }
}

/// Runs the command; its output, without the final newline.
fn run(cli: &Cli) -> Result<String, Failure> {
    // Local input first: a bad file is reported even when the daemon is down.
    let (method, params) = request(&cli.command)?;
    let mut client = connect(cli).map_err(|e| Failure::Call(CallError::Io(e)))?;
    if let Command::Capture { write, .. } = &cli.command {
        // Streamed: frames are written as they arrive.
        let result = capture(cli, client, params, write)?;
        if cli.json {
            return Ok(pretty(&result));
        }
        return Ok(render(&cli.command, &result));
    }
    let result = client.call(method, params)?;
    if cli.json {
        return Ok(pretty(&result));
    }
    Ok(render(&cli.command, &result))
}

fn connect(cli: &Cli) -> io::Result<Client> {
    let path = cli
        .socket
        .clone()
        .or_else(|| {
            std::env::var_os(SOCKET_ENV)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    Client::connect(&path)?.with_timeout(Duration::from_secs(cli.timeout))
}

fn report(cli: &Cli, failure: Failure) -> ExitCode {
    let (code, message) = match &failure {
        Failure::Local(message) => (2, message.clone()),
        Failure::Call(e @ CallError::Rpc { .. }) => (1, e.to_string()),
        Failure::Call(e) => (3, e.to_string()),
    };
    if let (
        true,
        Failure::Call(CallError::Rpc {
            code,
            message,
            data,
        }),
    ) = (cli.json, &failure)
    {
        let error = json!({ "code": code, "message": message, "data": data });
        print_stdout(&pretty(&error));
    }
    eprintln!("polluxctl: {}", printable(&message, true));
    ExitCode::from(code)
}

/// `s` safe to print on a terminal: strings from the daemon carry what clients sent (a
/// DHCP client's host name, say), so control characters (escape sequences, carriage
/// returns), invisible format characters (bidirectional overrides) and backslashes are
/// written as escapes. Newlines are kept when `keep_newlines`, for multi-line messages.
fn printable(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let invisible = matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
        );
        if c == '\n' && keep_newlines {
            out.push(c);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() || invisible {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Prints `text` and a newline; a closed stdout (`| head`) is not worth a panic.
fn print_stdout(text: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The method and params a command calls.
fn request(command: &Command) -> Result<(&'static str, Value), Failure> {
    Ok(match command {
        Command::Apply {
            file,
            dry_run,
            expect_generation,
        } => {
            let state = serde_json::to_value(load_state(file)?)
                .map_err(|e| Failure::Local(format!("{}: {e}", file.display())))?;
            let params = commit_params(json!({ "state": state }), *dry_run, *expect_generation);
            ("config.apply", params)
        }
        Command::Rollback {
            generation,
            dry_run,
            expect_generation,
        } => {
            let params = json!({ "generation": generation });
            let params = commit_params(params, *dry_run, *expect_generation);
            ("config.rollback", params)
        }
        Command::Put {
            kind,
            file,
            dry_run,
            expect_generation,
        } => {
            let c = collection(kind)?;
            let mut params = Map::new();
            params.insert(c.singular().to_owned(), load_object(c, file)?);
            let params = commit_params(Value::Object(params), *dry_run, *expect_generation);
            (object_method_name(c, true), params)
        }
        Command::Delete {
            kind,
            id,
            dry_run,
            expect_generation,
        } => {
            let c = collection(kind)?;
            let params = commit_params(json!({ "id": id }), *dry_run, *expect_generation);
            (object_method_name(c, false), params)
        }
        Command::Show(show) => show_request(show),
        Command::History => ("config.history", json!({})),
        Command::Rebalance {
            dry_run,
            improvement,
        } => {
            let mut params = optional("improvement_percent", improvement);
            params["dry_run"] = json!(dry_run);
            ("workers.rebalance", params)
        }
        Command::Pin {
            port,
            worker,
            queue,
        } => (
            "workers.pin",
            json!({ "port": port, "queue": queue, "worker": worker }),
        ),
        Command::Unpin { port, queue } => (
            "workers.pin",
            json!({ "port": port, "queue": queue, "worker": null }),
        ),
        Command::Version => ("version.get", json!({})),
        Command::RpcList => ("rpc.list", json!({})),
        Command::Trace(Trace::Start {
            port,
            count,
            filter,
        }) => {
            let mut params = json!({ "port": port, "count": count });
            if let Some(f) = filter {
                params["match"] = json!(f);
            }
            ("trace.start", params)
        }
        Command::Trace(Trace::Show) => ("trace.show", json!({})),
        Command::Trace(Trace::Stop) => ("trace.stop", json!({})),
        Command::Capture {
            port,
            direction,
            count,
            duration,
            snaplen,
            max_bytes,
            filter,
            write: _,
        } => {
            let mut params = json!({
                "port": port, "count": count, "duration_secs": duration,
                "snaplen": snaplen, "max_bytes": max_bytes,
            });
            if let Some(d) = direction {
                params["direction"] = json!(d);
            }
            if let Some(f) = filter {
                params["match"] = json!(f);
            }
            ("capture.start", params)
        }
        Command::Explain(explain) => ("explain.run", explain.params()),
    })
}

/// Runs `capture.start` and writes the frames it streams to `path` as they come.
fn capture(cli: &Cli, client: Client, params: Value, path: &Path) -> Result<Value, Failure> {
    let local = |e: String| Failure::Local(format!("{}: {e}", path.display()));
    let port = params["port"].as_str().unwrap_or_default().to_owned();
    let direction = params["direction"].as_str().unwrap_or("rx,tx").to_owned();
    let snaplen = params["snaplen"].as_u64().unwrap_or(0) as u32;
    // The daemon ends the capture by its duration; wait that long plus the usual timeout.
    let wait = params["duration_secs"].as_u64().unwrap_or(0) + cli.timeout;
    let mut client = client
        .with_timeout(Duration::from_secs(if cli.timeout == 0 { 0 } else { wait }))
        .map_err(|e| Failure::Call(CallError::Io(e)))?;
    let file = std::fs::File::create(path).map_err(|e| local(e.to_string()))?;
    let mut pcap = PcapngFile::new(io::BufWriter::new(file), &port, snaplen).map_err(&local)?;
    let mut failed = None;
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let _interrupt = InterruptEndsCapture::install(&client);
    let outcome = client.call_streaming("capture.start", params, |method, params| {
        if method == "capture.started" {
            // As tcpdump's "listening on": the capture is armed from here on.
            eprintln!(
                "polluxctl: capturing {} of {} (snaplen {}) into {}",
                printable(params["direction"].as_str().unwrap_or("?"), false),
                printable(params["port"].as_str().unwrap_or("?"), false),
                params["snaplen"],
                path.display()
            );
            return Ok(());
        }
        if method != "capture.frame" {
            return Ok(());
        }
        let written = StreamedFrame::from_params(&params).and_then(|f| {
            frames += 1;
            bytes += f.data.len() as u64;
            pcap.write(&f)
        });
        written.map_err(|e| {
            failed = Some(e.clone());
            CallError::Protocol(e)
        })
    });
    if let Some(e) = failed {
        return Err(local(e));
    }
    let result = match outcome {
        // Interrupted: the file keeps what came so far, as tcpdump's does.
        Err(CallError::Io(_)) if INTERRUPTED.load(Ordering::Relaxed) => json!({
            "port": port, "direction": direction, "frames": frames, "bytes": bytes,
            "ended": "interrupt",
        }),
        other => other?,
    };
    pcap.finish().map_err(local)?;
    Ok(result)
}

/// Set by SIGINT or SIGTERM during a capture.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The capture's socket, which the signal handler shuts for reading.
static CAPTURE_SOCKET: AtomicI32 = AtomicI32::new(-1);

extern "C" fn end_capture(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    let fd = CAPTURE_SOCKET.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: shutdown(2) is async-signal-safe and only touches the descriptor, which
        // stays open for as long as the handler is installed (see InterruptEndsCapture).
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
}

/// While alive, Ctrl-C (or SIGTERM) ends the capture cleanly: the socket is shut for
/// reading, the stream's read sees the end, and the file is finished; the daemon sees
/// the hang-up when polluxctl exits and stops the capture.
struct InterruptEndsCapture;

impl InterruptEndsCapture {
    fn install(client: &Client) -> InterruptEndsCapture {
        CAPTURE_SOCKET.store(client.as_raw_fd(), Ordering::Relaxed);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to atomics and calls shutdown(2), both
            // async-signal-safe.
            unsafe { libc::signal(signal, end_capture as *const () as libc::sighandler_t) };
        }
        InterruptEndsCapture
    }
}

impl Drop for InterruptEndsCapture {
    fn drop(&mut self) {
        CAPTURE_SOCKET.store(-1, Ordering::Relaxed);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restores the default disposition.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

/// What a capture wrote and what it missed.
fn capture_report(result: &Value, path: &Path) -> String {
    let n = |k: &str| result[k].as_u64().unwrap_or(0);
    let mut out = format!(
        "{} frames ({} bytes) of {} {} written to {} (ended by {})",
        n("frames"),
        n("bytes"),
        printable(result["port"].as_str().unwrap_or("?"), false),
        result["direction"].as_str().unwrap_or("?"),
        path.display(),
        result["ended"].as_str().unwrap_or("?"),
    );
    if n("lost") > 0 || n("unsent") > 0 {
        out.push_str(&format!(
            "\n{} frames lost (the capture ring was full: the reader was too slow), {} \
             not sent (past --max-bytes)",
            n("lost"),
            n("unsent")
        ));
    }
    out
}

fn show_request(show: &Show) -> (&'static str, Value) {
    match show {
        Show::Config { generation } => ("config.get", optional("generation", generation)),
        Show::Ports => ("ports.list", json!({})),
        Show::Networks => ("networks.list", json!({})),
        Show::Fdb { network } => ("fdb.list", optional("network_id", network)),
        Show::Routes { router } => ("routes.list", optional("router_id", router)),
        Show::Neighbors { network } => ("neighbors.list", optional("network_id", network)),
        Show::Sessions { router } => ("sessions.list", optional("router_id", router)),
        Show::Leases { network } => ("leases.list", optional("network_id", network)),
        Show::Metering { label, router } => {
            let mut params = optional("label_id", label);
            if let Some(router) = router {
                params["router_id"] = json!(router);
            }
            ("metering.list", params)
        }
        Show::Stats => ("stats.get", json!({})),
        Show::Drops { port, per_port } => {
            let mut params = optional("port", port);
            if *per_port {
                params["per_port"] = json!(true);
            }
            ("drops.list", params)
        }
        Show::Runtime => ("runtime.get", json!({})),
        Show::Workers => ("workers.list", json!({})),
        Show::Qos => ("stats.get", json!({})),
    }
}

/// `{key: value}`, or `{}` when there is no value.
fn optional<T: serde::Serialize>(key: &str, value: &Option<T>) -> Value {
    let mut params = Map::new();
    if let Some(v) = value {
        params.insert(key.to_owned(), json!(v));
    }
    Value::Object(params)
}

fn commit_params(mut params: Value, dry_run: bool, expect_generation: Option<u64>) -> Value {
    params["dry_run"] = json!(dry_run);
    if let Some(n) = expect_generation {
        params["expect_generation"] = json!(n);
    }
    params
}

/// Reads and parses the desired state, so that syntax errors name the file.
fn load_state(file: &Path) -> Result<DesiredState, Failure> {
    let stdin = file == Path::new("-");
    let name = if stdin {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let text =
        read_input(file, stdin).map_err(|e| Failure::Local(format!("cannot read {name}: {e}")))?;
    DesiredState::from_file_text((!stdin).then_some(file), &text)
        .map_err(|e| Failure::Local(format!("{name}: {e}")))
}

fn collection(kind: &str) -> Result<Collection, Failure> {
    Collection::parse(kind).ok_or_else(|| {
        let kinds: Vec<_> = Collection::ALL.iter().map(|c| c.singular()).collect();
        Failure::Local(format!(
            "unknown kind {kind:?}, expected one of {}",
            kinds.join(", ")
        ))
    })
}

/// The socket method that puts (or deletes) an object of `c`.
fn object_method_name(c: Collection, put: bool) -> &'static str {
    match (c, put) {
        (Collection::Uplinks, true) => "uplinks.put",
        (Collection::Uplinks, false) => "uplinks.delete",
        (Collection::Networks, true) => "networks.put",
        (Collection::Networks, false) => "networks.delete",
        (Collection::Subnets, true) => "subnets.put",
        (Collection::Subnets, false) => "subnets.delete",
        (Collection::Ports, true) => "ports.put",
        (Collection::Ports, false) => "ports.delete",
        (Collection::Routers, true) => "routers.put",
        (Collection::Routers, false) => "routers.delete",
        (Collection::FloatingIps, true) => "floating_ips.put",
        (Collection::FloatingIps, false) => "floating_ips.delete",
        (Collection::SecurityGroups, true) => "security_groups.put",
        (Collection::SecurityGroups, false) => "security_groups.delete",
        (Collection::AddressGroups, true) => "address_groups.put",
        (Collection::AddressGroups, false) => "address_groups.delete",
        (Collection::QosPolicies, true) => "qos_policies.put",
        (Collection::QosPolicies, false) => "qos_policies.delete",
        (Collection::Trunks, true) => "trunks.put",
        (Collection::Trunks, false) => "trunks.delete",
    }
}

/// Reads one object: JSON when it starts with `{`, else TOML; `{"port": {...}}` (the
/// request body of the socket method) is accepted as well as the bare object.
fn load_object(c: Collection, file: &Path) -> Result<Value, Failure> {
    let stdin = file == Path::new("-");
    let name = if stdin {
        "<stdin>".to_owned()
    } else {
        file.display().to_string()
    };
    let text =
        read_input(file, stdin).map_err(|e| Failure::Local(format!("cannot read {name}: {e}")))?;
    let json = match file.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let value: Value = if json {
        serde_json::from_str(&text).map_err(|e| Failure::Local(format!("{name}: {e}")))?
    } else {
        toml::from_str(&text).map_err(|e| Failure::Local(format!("{name}: {e}")))?
    };
    let value = match value {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(c.singular()) => {
            map.remove(c.singular()).unwrap_or_default()
        }
        other => other,
    };
    if !value.is_object() {
        return Err(Failure::Local(format!("{name}: not an object")));
    }
    Ok(value)
}

fn read_input(file: &Path, stdin: bool) -> io::Result<String> {
    if stdin {
        let mut text = String::new();
        io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(file)
    }
}

/// A table column: its header, and where a row keeps its cell (a key, or a JSON pointer
/// when it starts with `/`).
type Column<'a> = (&'a str, &'a str);

/// The columns of `show ports`: [`PORT_COLUMNS`], with a trunk subport's parent and
/// VLAN ID after its kind when there is one (a host without trunks sees no empty columns).
fn port_columns(ports: &[Value]) -> Vec<Column<'static>> {
    let mut columns = PORT_COLUMNS.to_vec();
    if ports.iter().any(|p| p.get("parent").is_some()) {
        let at = columns
            .iter()
            .position(|c| c.1 == "kind")
            .map_or(0, |i| i + 1);
        columns.splice(at..at, [("PARENT", "parent"), ("VLAN", "vlan_id")]);
    }
    columns
}

const PORT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("KIND", "kind"),
    ("NO", "port_no"),
    ("NETWORK", "network_id"),
    ("PHYSNET", "physnet"),
    ("MAC", "mac_address"),
    ("DRIVER", "driver"),
    ("INTERFACE", "interface"),
    ("STATE", "state"),
    ("RX_PKTS", "rx_packets"),
    ("RX_BYTES", "rx_bytes"),
    ("RX_DROP", "rx_dropped"),
    ("TX_PKTS", "tx_packets"),
    ("TX_BYTES", "tx_bytes"),
    ("TX_DROP", "tx_dropped"),
];

/// The vhost-user state of the ports that have one, under the ports table.
const VHOST_USER_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("SOCKET", "interface"),
    ("MODE", "/vhost_user/mode"),
    ("CONNECTED", "/vhost_user/connected"),
    ("RUNNING", "/vhost_user/running"),
    ("FEATURES", "/vhost_user/feature_names"),
    ("PROTOCOL", "/vhost_user/protocol_features"),
    ("QUEUES", "/vhost_user/queues"),
    ("RUNNING_QUEUES", "/vhost_user/queues_running"),
    ("DISCONNECTS", "/vhost_user/disconnects"),
    ("BROKEN", "/vhost_user/broken_queues"),
    ("LAST_ERROR", "/vhost_user/last_error"),
];

const NETWORK_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("TYPE", "network_type"),
    ("PHYSNET", "physical_network"),
    ("SEG_ID", "segmentation_id"),
    ("MTU", "mtu"),
    ("UP", "admin_state_up"),
    ("PORTS", "ports"),
    ("SUBNETS", "subnets"),
];

const FDB_COLUMNS: &[Column] = &[
    ("NETWORK", "network_id"),
    ("MAC", "mac_address"),
    ("PORT", "port"),
    ("KIND", "kind"),
    ("AGE", "age_secs"),
];

const SESSION_COLUMNS: &[Column] = &[
    ("ZONE", "zone"),
    ("PROTO", "protocol"),
    ("SRC", "/original/src"),
    ("SPORT", "/original/sport"),
    ("DST", "/original/dst"),
    ("DPORT", "/original/dport"),
    ("REPLY_DST", "/reply/dst"),
    ("REPLY_DPORT", "/reply/dport"),
    ("STATE", "state"),
    ("PKTS_OUT", "packets_out"),
    ("PKTS_IN", "packets_in"),
    ("IDLE", "idle_secs"),
    ("EXPIRES", "expires_in_secs"),
];

const METERING_COLUMNS: &[Column] = &[
    ("LABEL", "label_id"),
    ("NAME", "name"),
    ("ROUTER", "router_id"),
    ("PKTS_IN", "ingress_packets"),
    ("BYTES_IN", "ingress_bytes"),
    ("PKTS_OUT", "egress_packets"),
    ("BYTES_OUT", "egress_bytes"),
];

const NEIGHBOR_COLUMNS: &[Column] = &[
    ("NETWORK", "network_id"),
    ("IP", "ip_address"),
    ("MAC", "mac_address"),
    ("STATE", "state"),
    ("AGE", "age_secs"),
];

const QOS_COLUMNS: &[Column] = &[
    ("PORT", "port_id"),
    ("POLICY", "qos_policy_id"),
    ("POLICED_EGRESS_PKTS", "policed_egress_packets"),
    ("POLICED_EGRESS_BYTES", "policed_egress_bytes"),
    ("POLICED_INGRESS_PKTS", "policed_ingress_packets"),
    ("POLICED_INGRESS_BYTES", "policed_ingress_bytes"),
    ("DSCP_MARKED", "dscp_marked"),
];

const LEASE_COLUMNS: &[Column] = &[
    ("NETWORK", "network_id"),
    ("PORT", "port_id"),
    ("MAC", "mac_address"),
    ("IP", "ip_address"),
    ("HOSTNAME", "hostname"),
    ("STATE", "state"),
    ("EXPIRES", "expires_in_secs"),
];

const ROUTE_COLUMNS: &[Column] = &[
    ("ROUTER", "router_id"),
    ("DESTINATION", "destination"),
    ("NEXTHOP", "nexthop"),
    ("KIND", "kind"),
    ("INTERFACE", "interface"),
];

const WORKER_COLUMNS: &[Column] = &[
    ("WORKER", "id"),
    ("CORE", "core"),
    ("RX_PKTS", "rx_packets"),
    ("TX_PKTS", "tx_packets"),
    ("FLOOD", "flood_copies"),
    ("DROPPED", "dropped"),
    ("LOOPS", "loops"),
    ("BUSY_LOOPS", "busy_loops"),
    ("BUSY_NS", "busy_ns"),
    ("IDLE_NS", "idle_ns"),
    ("MACS", "macs"),
    ("GEN", "generation"),
];

const DROP_COLUMNS: &[Column] = &[("DROP_REASON", "reason"), ("COUNT", "count")];

const STAGE_DROP_COLUMNS: &[Column] = &[
    ("COUNT", "count"),
    ("STAGE", "stage"),
    ("REASON", "reason"),
    ("HELP", "help"),
];

const PORT_STAGE_DROP_COLUMNS: &[Column] = &[
    ("COUNT", "count"),
    ("PORT", "port"),
    ("STAGE", "stage"),
    ("REASON", "reason"),
];

const RUNTIME_COLUMNS: &[Column] = &[
    ("STAGE", "stage"),
    ("CALLS", "calls"),
    ("PACKETS", "packets"),
    ("VECTOR", "vector_size"),
    ("CYCLES/PKT", "cycles_per_packet"),
    ("NS/PKT", "ns_per_packet"),
];

const WORKER_QUEUE_COLUMNS: &[Column] = &[
    ("WORKER", "id"),
    ("CPU", "core"),
    ("BUSY%", "busy_percent"),
    ("RX", "rx_packets"),
    ("TX", "tx_packets"),
    ("HANDOFFS", "handoffs"),
    ("HANDED_IN", "handoffs_received"),
    ("HANDOFF_DROPS", "handoff_drops"),
    ("DROPPED", "dropped"),
    ("QUEUES", "queues"),
];

const QUEUE_LOAD_COLUMNS: &[Column] = &[
    ("WORKER", "worker"),
    ("PORT", "port"),
    ("QUEUE", "queue"),
    ("PINNED", "pinned"),
    ("MOVABLE", "movable"),
    ("BUSY%", "busy_percent"),
    ("PKTS/S", "packets_per_sec"),
    ("PACKETS", "packets"),
    ("CYCLES/PKT", "cycles_per_packet"),
];

const REBALANCE_MOVE_COLUMNS: &[Column] = &[
    ("PORT", "port"),
    ("QUEUE", "queue"),
    ("FROM", "from"),
    ("TO", "to"),
    ("BUSY%", "busy_percent"),
];

const REBALANCE_LOAD_COLUMNS: &[Column] = &[
    ("WORKER", "worker"),
    ("BUSY%_BEFORE", "before"),
    ("BUSY%_AFTER", "after"),
];

/// `polluxctl rebalance`: the verdict, each worker's load before and after, the moves.
fn rebalance_report(result: &Value) -> String {
    let applied = result["applied"].as_bool().unwrap_or(false);
    let moves = rows(result, "moves");
    let verdict = if applied {
        format!("moved {} queue(s)", moves.len())
    } else if result["dry_run"].as_bool().unwrap_or(false) {
        format!("dry run: would move {} queue(s)", moves.len())
    } else if moves.is_empty() {
        "nothing to move".to_string()
    } else {
        "not applied: below the threshold".to_string()
    };
    let loads: Vec<Value> = rows(result, "before")
        .iter()
        .zip(rows(result, "after"))
        .map(|(b, a)| {
            json!({ "worker": b["worker"], "before": b["busy_percent"], "after": a["busy_percent"] })
        })
        .collect();
    let mut out = format!(
        "{verdict}; load variance {} better (threshold {}%)\n\n{}",
        match result["improvement_percent"].as_f64() {
            Some(p) => format!("{p}%"),
            None => "-".into(),
        },
        cell_text(result.get("threshold_percent")),
        table(&loads, REBALANCE_LOAD_COLUMNS)
    );
    if !moves.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(moves, REBALANCE_MOVE_COLUMNS));
    }
    out
}

const HISTORY_COLUMNS: &[Column] = &[
    ("GENERATION", "generation"),
    ("APPLIED_AT", "applied_at"),
    ("ACTIVE", "active"),
];

const METHOD_COLUMNS: &[Column] = &[("METHOD", "name"), ("USAGE", "usage")];

/// The human-readable output of a command, without the final newline.
fn render(command: &Command, result: &Value) -> String {
    match command {
        Command::Apply { .. }
        | Command::Rollback { .. }
        | Command::Put { .. }
        | Command::Delete { .. } => commit_report(result),
        Command::Show(show) => render_show(show, result),
        Command::History => table(&history_rows(result), HISTORY_COLUMNS),
        Command::Version => version_report(result),
        Command::Rebalance { .. } => rebalance_report(result),
        Command::Pin { .. } | Command::Unpin { .. } => {
            let (port, queue) = (cell_text(result.get("port")), &result["queue"]);
            match result["worker"].as_u64() {
                Some(w) if result["moved"].as_bool() == Some(true) => {
                    format!("{port} queue {queue} moved to worker {w} and pinned there")
                }
                Some(w) => format!("{port} queue {queue} pinned to worker {w}"),
                None => format!("{port} queue {queue} unpinned"),
            }
        }
        Command::RpcList => table(rows(result, "methods"), METHOD_COLUMNS),
        Command::Trace(Trace::Start { .. }) => {
            let filter = result.get("match").and_then(Value::as_str).unwrap_or("");
            format!(
                "tracing the next {} packets of {}{}",
                cell_text(result.get("count")),
                cell_text(result.get("port")),
                if filter.is_empty() {
                    String::new()
                } else {
                    format!(" matching {filter}")
                }
            )
        }
        Command::Trace(Trace::Show) => trace_report(result),
        Command::Trace(Trace::Stop) => format!(
            "trace stopped: {} packets recorded",
            cell_text(result.get("packets"))
        ),
        Command::Capture { write, .. } => capture_report(result, write),
        Command::Explain(_) => explain_report(result),
    }
}

/// A frame's fields as `explain.run` describes them, on one line.
fn frame_text(f: &Value) -> String {
    let field = |k: &str| {
        f.get(k)
            .filter(|v| !v.is_null())
            .map(|v| cell_text(Some(v)))
    };
    let mut out = format!(
        "{} > {}",
        field("src_mac").unwrap_or_default(),
        field("dst_mac").unwrap_or_default()
    );
    if let Some(v) = field("vlan") {
        out += &format!(" vlan {v}");
    }
    if let (Some(src), Some(dst)) = (field("src_ip"), field("dst_ip")) {
        let port = |k: &str| field(k).map(|p| format!(":{p}")).unwrap_or_default();
        out += &format!(
            ", {} {src}{} > {dst}{} ttl {}",
            field("proto").unwrap_or_default(),
            port("src_port"),
            port("dst_port"),
            field("ttl").unwrap_or_default()
        );
    } else if let Some(e) = field("ethertype") {
        out += &format!(", ethertype {e}");
    }
    out
}

/// The answer, the stages passed and what each decided, what would leave where, and the
/// connections the packet matched.
fn explain_report(result: &Value) -> String {
    let mut out = vec![
        format!(
            "{} on {}: {}",
            frame_text(result.get("frame").unwrap_or(&Value::Null)),
            cell_text(result.get("port")),
            cell_text(result.get("summary"))
        ),
        format!(
            "generation {}, worker {}",
            cell_text(result.get("generation")),
            cell_text(result.get("worker"))
        ),
    ];
    for step in rows(result, "steps") {
        out.push(format!(
            "  {:<16} -> {}",
            cell_text(step.get("stage")),
            cell_text(step.get("next"))
        ));
    }
    for s in rows(result, "sent") {
        out.push(format!(
            "  out {}: {}",
            cell_text(s.get("port")),
            frame_text(s.get("frame").unwrap_or(&Value::Null))
        ));
    }
    for d in rows(result, "dropped") {
        let mut line = format!(
            "  dropped by {}: {} ({})",
            cell_text(d.get("stage")),
            cell_text(d.get("reason")),
            cell_text(d.get("help"))
        );
        if let Some(groups) = d.get("security_groups").and_then(Value::as_array) {
            let names: Vec<String> = groups.iter().map(|g| cell_text(Some(g))).collect();
            line += &format!(
                "; port {} has security groups [{}]",
                cell_text(d.get("port")),
                names.join(", ")
            );
        }
        out.push(line);
    }
    for g in rows(result, "security_groups") {
        let groups: Vec<String> = g
            .get("security_groups")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|x| cell_text(Some(x))).collect())
            .unwrap_or_default();
        let verdict = match g.get("verdict").and_then(Value::as_str) {
            Some("rule") => format!(
                "allowed by rule {} of group {}",
                cell_text(g.get("rule")),
                cell_text(g.get("group"))
            ),
            Some("implicit") => "allowed without a rule (ARP, DHCP, neighbour discovery)".into(),
            _ => "no rule allows it".into(),
        };
        let established = if g.get("established") == Some(&Value::Bool(true)) {
            "; an established connection carries it"
        } else {
            ""
        };
        out.push(format!(
            "  security groups [{}] of {} ({}): {verdict}{established}",
            groups.join(", "),
            cell_text(g.get("port")),
            cell_text(g.get("direction")),
        ));
    }
    for c in rows(result, "connections") {
        let end = |k: &str| {
            let e = c.get(k).unwrap_or(&Value::Null);
            format!(
                "{}:{} > {}:{}",
                cell_text(e.get("src")),
                cell_text(e.get("sport")),
                cell_text(e.get("dst")),
                cell_text(e.get("dport"))
            )
        };
        out.push(format!(
            "  matched {} {} ({} direction{}): {} {}, reply {}",
            cell_text(c.get("kind")),
            cell_text(c.get("zone")),
            cell_text(c.get("dir")),
            c.get("state")
                .and_then(Value::as_str)
                .map(|s| format!(", {s}"))
                .unwrap_or_default(),
            cell_text(c.get("protocol")),
            end("original"),
            end("reply")
        ));
    }
    out.join("\n")
}

/// Each traced packet, then the stages it passed and what each decided.
fn trace_report(result: &Value) -> String {
    if result.get("running") != Some(&Value::Bool(true)) {
        return "no trace running".to_owned();
    }
    let filter = result.get("match").and_then(Value::as_str).unwrap_or("");
    let mut out = vec![format!(
        "trace of {}{}: {} packets recorded, {} to go",
        cell_text(result.get("port")),
        if filter.is_empty() {
            String::new()
        } else {
            format!(" matching {filter}")
        },
        rows(result, "packets").len(),
        cell_text(result.get("remaining"))
    )];
    for (i, p) in rows(result, "packets").iter().enumerate() {
        out.push(format!(
            "packet {}: {} bytes from {}, generation {}",
            i + 1,
            cell_text(p.get("len")),
            cell_text(p.get("port")),
            cell_text(p.get("generation"))
        ));
        for step in rows(p, "steps") {
            let mut line = format!(
                "  {:<10} -> {}",
                cell_text(step.get("stage")),
                cell_text(step.get("next"))
            );
            if let Some(groups) = step.get("security_groups").and_then(Value::as_array) {
                let names: Vec<String> = groups.iter().map(|g| cell_text(Some(g))).collect();
                line += &format!(
                    "; port {} has security groups [{}]",
                    cell_text(step.get("port")),
                    names.join(", ")
                );
            }
            out.push(line);
        }
    }
    out.join("\n")
}

fn render_show(show: &Show, result: &Value) -> String {
    match show {
        Show::Config { .. } => config_report(result),
        Show::Ports => {
            let ports = rows(result, "ports");
            let vhost: Vec<Value> = ports
                .iter()
                .filter(|p| p.get("vhost_user").is_some())
                .cloned()
                .collect();
            let mut out = table(ports, &port_columns(ports));
            if !vhost.is_empty() {
                out.push_str("\n\nvhost-user:\n");
                out.push_str(&table(&vhost, VHOST_USER_COLUMNS));
            }
            out
        }
        Show::Networks => table(rows(result, "networks"), NETWORK_COLUMNS),
        Show::Fdb { .. } => table(rows(result, "entries"), FDB_COLUMNS),
        Show::Routes { .. } => table(rows(result, "routes"), ROUTE_COLUMNS),
        Show::Neighbors { .. } => table(rows(result, "neighbors"), NEIGHBOR_COLUMNS),
        Show::Sessions { .. } => table(rows(result, "sessions"), SESSION_COLUMNS),
        Show::Leases { .. } => table(rows(result, "leases"), LEASE_COLUMNS),
        Show::Metering { .. } => table(rows(result, "metering"), METERING_COLUMNS),
        Show::Stats => stats_report(result),
        Show::Drops { port, per_port } if port.is_some() || *per_port => {
            table(rows(result, "drops"), PORT_STAGE_DROP_COLUMNS)
        }
        Show::Drops { .. } => table(rows(result, "drops"), STAGE_DROP_COLUMNS),
        Show::Runtime => table(rows(result, "stages"), RUNTIME_COLUMNS),
        Show::Workers => {
            let workers: Vec<Value> = rows(result, "workers")
                .iter()
                .map(|w| {
                    let mut w = w.clone();
                    let queues: Vec<String> = rows(&w, "queues")
                        .iter()
                        .map(|q| format!("{}:{}", cell_text(q.get("port")), q["queue"]))
                        .collect();
                    w["queues"] = json!(queues.join(" "));
                    w
                })
                .collect();
            let queues: Vec<Value> = rows(result, "workers")
                .iter()
                .flat_map(|w| {
                    rows(w, "queues").iter().map(|q| {
                        let mut q = q.clone();
                        q["worker"] = w["id"].clone();
                        q
                    })
                })
                .collect();
            let mut out = table(&workers, WORKER_QUEUE_COLUMNS);
            if !queues.is_empty() {
                out.push_str("\n\n");
                out.push_str(&table(&queues, QUEUE_LOAD_COLUMNS));
            }
            out
        }
        Show::Qos => table(rows(result, "qos"), QOS_COLUMNS),
    }
}

/// The list under `key`, or none.
fn rows<'a>(result: &'a Value, key: &str) -> &'a [Value] {
    result
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Renders `rows` as aligned columns under a header row: two spaces between columns,
/// numeric columns right-aligned, no trailing spaces.
fn table(rows: &[Value], columns: &[Column]) -> String {
    let cells: Vec<Vec<Option<&Value>>> = rows
        .iter()
        .map(|row| columns.iter().map(|(_, key)| lookup(row, key)).collect())
        .collect();
    let mut lines: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| h.to_string()).collect()];
    lines.extend(
        cells
            .iter()
            .map(|row| row.iter().map(|v| cell_text(*v)).collect()),
    );
    let right: Vec<bool> = (0..columns.len())
        .map(|i| is_numeric_column(cells.iter().map(|row| row[i])))
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let out: Vec<String> = lines
        .iter()
        .map(|line| layout_line(line, &widths, &right))
        .collect();
    out.join("\n")
}

fn layout_line(cells: &[String], widths: &[usize], right: &[bool]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths.iter().zip(right))
        .map(|(cell, (&w, &right))| {
            if right {
                format!("{cell:>w$}")
            } else {
                format!("{cell:<w$}")
            }
        })
        .collect();
    padded.join("  ").trim_end().to_owned()
}

fn lookup<'a>(row: &'a Value, key: &str) -> Option<&'a Value> {
    if key.starts_with('/') {
        row.pointer(key)
    } else {
        row.get(key)
    }
}

/// A column is numeric when it holds numbers and nothing else but nulls.
fn is_numeric_column<'a>(mut cells: impl Iterator<Item = Option<&'a Value>>) -> bool {
    let mut any = false;
    let all = cells.all(|v| match v {
        Some(Value::Number(_)) => {
            any = true;
            true
        }
        None | Some(Value::Null) => true,
        Some(_) => false,
    });
    all && any
}

/// A value as a table cell: strings without quotes, absent as `-`, lists joined by `,`.
fn cell_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => printable(s, false),
        Some(Value::Array(items)) if items.is_empty() => "-".to_owned(),
        Some(Value::Array(items)) => {
            let items: Vec<String> = items.iter().map(|i| cell_text(Some(i))).collect();
            items.join(",")
        }
        Some(other) => other.to_string(),
    }
}

/// The first line of `apply` and `rollback`, then the diff.
fn commit_report(result: &Value) -> String {
    let flag = |key| result.get(key).and_then(Value::as_bool).unwrap_or(false);
    let generation = cell_text(result.get("generation"));
    let mut summary = if flag("applied") {
        format!("generation {generation} applied")
    } else if !flag("changed") {
        format!("no change (generation {generation})")
    } else if flag("dry_run") {
        "would change the running configuration".to_owned()
    } else {
        format!("not applied (generation {generation})")
    };
    if flag("dry_run") {
        summary.insert_str(0, "dry run: ");
    }
    if let Some(to) = result.get("rolled_back_to").filter(|v| !v.is_null()) {
        summary.push_str(&format!(
            " (rollback to generation {})",
            cell_text(Some(to))
        ));
    }
    let mut lines = vec![summary];
    lines.extend(diff_lines(result.get("diff").unwrap_or(&Value::Null)));
    lines.join("\n")
}

/// One line per difference: `+ ports vm3`, `- networks net-x`, `~ ports vm1 (fixed_ips)`.
fn diff_lines(diff: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for (sign, section) in [('+', "added"), ('-', "removed"), ('~', "changed")] {
        let Some(collections) = diff.get(section).and_then(Value::as_object) else {
            continue;
        };
        for key in in_model_order(collections) {
            lines.extend(entry_lines(sign, key, &collections[key]));
        }
    }
    lines
}

/// The keys of `map`: the model's top-level keys in document order, then any others.
fn in_model_order(map: &Map<String, Value>) -> Vec<&str> {
    let known = TOP_LEVEL_KEYS
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k));
    let others = map
        .keys()
        .map(String::as_str)
        .filter(|k| !TOP_LEVEL_KEYS.contains(k));
    known.chain(others).collect()
}

fn entry_lines(sign: char, collection: &str, entries: &Value) -> Vec<String> {
    match entries {
        Value::Null | Value::Bool(false) => Vec::new(),
        // A section that is not a list, e.g. `"l2": true`.
        Value::Bool(true) => vec![format!("{sign} {collection}")],
        Value::Array(items) => items
            .iter()
            .map(|item| format!("{sign} {collection}{}", item_text(item)))
            .collect(),
        other => vec![format!("{sign} {collection}{}", item_text(other))],
    }
}

/// ` id (field, field)` for one diff entry; either part may be missing.
fn item_text(item: &Value) -> String {
    let Value::Object(obj) = item else {
        return format!(" {}", cell_text(Some(item)));
    };
    let mut text = String::new();
    if let Some(id) = obj.get("id").or_else(|| obj.get("name")) {
        text = format!(" {}", cell_text(Some(id)));
    }
    let fields: Vec<String> = obj
        .get("fields")
        .and_then(Value::as_array)
        .map(|f| f.iter().map(|v| cell_text(Some(v))).collect())
        .unwrap_or_default();
    if !fields.is_empty() {
        text.push_str(&format!(" ({})", fields.join(", ")));
    }
    text
}

/// The state as TOML that `polluxctl apply` takes back; JSON if it does not fit the model
/// this polluxctl knows (a newer daemon).
fn config_report(result: &Value) -> String {
    let state = result.get("state").cloned().unwrap_or(Value::Null);
    let text = serde_json::from_value::<DesiredState>(state.clone())
        .ok()
        .and_then(|s| toml::to_string_pretty(&s).ok())
        .unwrap_or_else(|| pretty(&state));
    format!(
        "# generation {}\n{}",
        cell_text(result.get("generation")),
        text.trim_end()
    )
}

fn stats_report(result: &Value) -> String {
    let drops: Vec<Value> = result
        .get("drops")
        .and_then(Value::as_object)
        .map(|d| {
            d.iter()
                .map(|(reason, count)| json!({ "reason": reason, "count": count }))
                .collect()
        })
        .unwrap_or_default();
    let apply = result.get("apply").unwrap_or(&Value::Null);
    let mut sections = vec![
        table(rows(result, "workers"), WORKER_COLUMNS),
        table(&drops, DROP_COLUMNS),
        format!(
            "applies: {} total, {} failed",
            cell_text(apply.get("total")),
            cell_text(apply.get("failures"))
        ),
    ];
    if let Some(dhcp) = result.get("dhcp") {
        sections.push(dhcp_line(dhcp));
    }
    if let Some(slow_path) = result.get("slow_path") {
        sections.push(slow_path_line(slow_path));
    }
    sections.join("\n\n")
}

/// One line of the slow path's counters per service.
fn slow_path_line(slow_path: &Value) -> String {
    let services: Vec<String> = slow_path
        .get("services")
        .and_then(Value::as_object)
        .map(|services| {
            services
                .iter()
                .map(|(name, c)| {
                    format!(
                        "{name} {} punted, {} received, {} replies, {} lost",
                        cell_text(c.get("punted")),
                        cell_text(c.get("received")),
                        cell_text(c.get("replies")),
                        cell_text(c.get("replies_lost")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "slow path: {}; unhandled {}",
        if services.is_empty() {
            "no services".to_string()
        } else {
            services.join("; ")
        },
        cell_text(slow_path.get("unhandled"))
    )
}

/// One line of the DHCP server's counters and its reasons for not answering.
fn dhcp_line(dhcp: &Value) -> String {
    let drops: Vec<String> = dhcp
        .get("drops")
        .and_then(Value::as_object)
        .map(|d| d.iter().map(|(r, n)| format!("{r} {n}")).collect())
        .unwrap_or_default();
    format!(
        "dhcp: {} punted, {} received, {} offers, {} acks, {} naks, {} releases, {} \
         replies sent; not answered: {}",
        cell_text(dhcp.get("punted")),
        cell_text(dhcp.get("received")),
        cell_text(dhcp.get("offers")),
        cell_text(dhcp.get("acks")),
        cell_text(dhcp.get("naks")),
        cell_text(dhcp.get("releases")),
        cell_text(dhcp.get("injected")),
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    )
}

/// History rows with the commit time as UTC.
fn history_rows(result: &Value) -> Vec<Value> {
    rows(result, "history")
        .iter()
        .map(|row| {
            let mut row = row.clone();
            if let Some(secs) = row.get("applied_at_unix").and_then(Value::as_i64) {
                row["applied_at"] = json!(utc_timestamp(secs));
            }
            row
        })
        .collect()
}

/// `secs` since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_timestamp(secs: i64) -> String {
    let (days, time) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3_600,
        time % 3_600 / 60,
        time % 60
    )
}

fn version_report(result: &Value) -> String {
    let name = result
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("polluxd");
    format!(
        "polluxctl {}\n{name} {}, generation {}",
        env!("CARGO_PKG_VERSION"),
        cell_text(result.get("version")),
        cell_text(result.get("generation"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_right_aligns_numbers() {
        let rows = vec![
            json!({ "id": "vm1", "n": 5, "tags": ["a", "b"], "x": null }),
            json!({ "id": "uplink:physnet1", "n": 12345, "tags": [], "x": { "y": true } }),
            json!({ "id": "vm2", "tags": [1, 2] }),
        ];
        let columns = [("ID", "id"), ("N", "n"), ("TAGS", "tags"), ("Y", "/x/y")];
        assert_eq!(
            table(&rows, &columns),
            "ID                   N  TAGS  Y\n\
             vm1                  5  a,b   -\n\
             uplink:physnet1  12345  -     true\n\
             vm2                  -  1,2   -"
        );
    }

    #[test]
    fn client_supplied_strings_are_escaped_in_tables_and_messages() {
        let rows = vec![json!({ "hostname": "evil\u{1b}[2J\r\nroot\u{202e}gpj.exe\\x" })];
        let out = table(&rows, &[("HOSTNAME", "hostname")]);
        assert_eq!(
            out,
            "HOSTNAME\nevil\\u{1b}[2J\\r\\nroot\\u{202e}gpj.exe\\\\x"
        );
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'));
        assert_eq!(out.lines().count(), 2);
        assert_eq!(printable("a\nb\u{7}", true), "a\nb\\u{7}");
        assert_eq!(printable("plain-host.example", false), "plain-host.example");
    }

    #[test]
    fn show_ports_adds_the_vhost_user_state_of_the_ports_that_have_one() {
        let result = json!({ "ports": [
            { "id": "vm1", "driver": "afxdp", "interface": "vm1-host" },
            { "id": "vm2", "driver": "vhost-user", "interface": "/run/vm2.sock",
              "vhost_user": { "mode": "server", "connected": true, "running": true,
                "feature_names": ["VERSION_1", "MRG_RXBUF"], "protocol_features": "0x8",
                "queues": [256, 256], "disconnects": 1, "broken_queues": 0,
                "last_error": null } },
        ]});
        let out = render_show(&Show::Ports, &result);
        let (ports, vhost) = out.split_once("\n\nvhost-user:\n").expect(&out);
        assert_eq!(ports.lines().count(), 3, "{out}");
        let lines: Vec<&str> = vhost.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].starts_with("ID   SOCKET         MODE    CONNECTED"),
            "{out}"
        );
        assert!(
            lines[1].contains("vm2  /run/vm2.sock  server  true")
                && lines[1].contains("VERSION_1,MRG_RXBUF  0x8       256,256"),
            "{out}"
        );
        let plain = json!({ "ports": [{ "id": "vm1", "driver": "afxdp" }] });
        assert!(!render_show(&Show::Ports, &plain).contains("vhost-user"));
    }

    #[test]
    fn show_ports_gives_a_subport_its_parent_and_vlan_id() {
        let result = json!({ "ports": [
            { "id": "vm1", "kind": "vm", "port_no": 1, "network_id": "net-a",
              "driver": "afxdp", "interface": "vm1-host", "state": "up", "rx_packets": 7 },
            { "id": "sub1", "kind": "subport", "port_no": 2, "network_id": "net-b",
              "parent": "vm1", "vlan_id": 100, "rx_packets": 3 },
        ]});
        let out = render_show(&Show::Ports, &result);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("ID    KIND     PARENT  VLAN  NO  NETWORK"),
            "{out}"
        );
        assert!(
            lines[1].starts_with("vm1   vm       -          -   1  net-a"),
            "{out}"
        );
        assert!(
            lines[2].starts_with("sub1  subport  vm1      100   2  net-b"),
            "{out}"
        );
        let plain = json!({ "ports": [{ "id": "vm1", "kind": "vm" }] });
        assert!(!render_show(&Show::Ports, &plain).contains("PARENT"));
    }

    #[test]
    fn table_with_no_rows_is_its_header() {
        assert_eq!(table(&[], &[("A", "a"), ("BB", "b")]), "A  BB");
    }

    #[test]
    fn mixed_column_is_left_aligned() {
        let rows = vec![json!({ "v": 10 }), json!({ "v": "abc" })];
        assert_eq!(table(&rows, &[("V", "v")]), "V\n10\nabc");
    }

    #[test]
    fn diff_lines_in_model_order() {
        let diff = json!({
            "added": { "ports": ["vm3", "vm4"], "networks": ["net-c"] },
            "removed": { "networks": ["net-x"] },
            "changed": {
                "l2": true,
                "ports": [{ "id": "vm1", "fields": ["fixed_ips", "binding"] }],
                "uplinks": [{ "name": "up0", "fields": [] }],
                "widgets": ["w1"]
            }
        });
        assert_eq!(
            diff_lines(&diff),
            [
                "+ networks net-c",
                "+ ports vm3",
                "+ ports vm4",
                "- networks net-x",
                "~ l2",
                "~ uplinks up0",
                "~ ports vm1 (fixed_ips, binding)",
                "~ widgets w1",
            ]
        );
        assert!(diff_lines(&json!({})).is_empty());
        assert!(diff_lines(&json!({ "changed": { "l2": false } })).is_empty());
    }

    #[test]
    fn commit_report_summaries() {
        let diff = json!({ "added": { "ports": ["vm3"] } });
        let applied = json!({ "generation": 7, "applied": true, "changed": true,
                              "dry_run": false, "diff": diff });
        assert_eq!(commit_report(&applied), "generation 7 applied\n+ ports vm3");
        let dry = json!({ "generation": 6, "applied": false, "changed": true,
                          "dry_run": true, "diff": diff });
        assert_eq!(
            commit_report(&dry),
            "dry run: would change the running configuration\n+ ports vm3"
        );
        let same = json!({ "generation": 6, "applied": false, "changed": false,
                           "dry_run": false, "diff": {} });
        assert_eq!(commit_report(&same), "no change (generation 6)");
        let rollback = json!({ "generation": 8, "applied": true, "changed": true,
                               "dry_run": false, "rolled_back_to": 5, "diff": {} });
        assert_eq!(
            commit_report(&rollback),
            "generation 8 applied (rollback to generation 5)"
        );
    }

    #[test]
    fn utc_timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn stats_sections() {
        let stats = json!({
            "workers": [{ "id": 0, "core": 3, "rx_packets": 10, "tx_packets": 9,
                          "flood_copies": 1, "dropped": 2, "loops": 100, "busy_loops": 4,
                          "busy_ns": 500, "idle_ns": 9500, "macs": 2, "generation": 6 }],
            "drops": { "vlan_unknown": 2 },
            "apply": { "total": 3, "failures": 1 },
            "dhcp": { "punted": 5, "received": 5, "offers": 2, "acks": 2, "naks": 0,
                      "releases": 0, "injected": 4, "drops": { "unknown_client": 1 } }
        });
        let text = stats_report(&stats);
        let sections: Vec<&str> = text.split("\n\n").collect();
        assert_eq!(sections.len(), 4, "{text}");
        assert!(sections[0].starts_with("WORKER  CORE  RX_PKTS"), "{text}");
        assert_eq!(sections[1], "DROP_REASON   COUNT\nvlan_unknown      2");
        assert_eq!(sections[2], "applies: 3 total, 1 failed");
        assert_eq!(
            sections[3],
            "dhcp: 5 punted, 5 received, 2 offers, 2 acks, 0 naks, 0 releases, 4 replies \
             sent; not answered: unknown_client 1"
        );
    }

    #[test]
    fn the_slow_path_line_names_each_service() {
        let stats = json!({
            "workers": [], "drops": {}, "apply": { "total": 0, "failures": 0 },
            "slow_path": { "services": { "dhcp": { "punted": 5, "received": 5, "replies": 4,
                                                   "replies_lost": 0 } },
                           "unhandled": 1 }
        });
        let text = stats_report(&stats);
        assert!(
            text.ends_with("slow path: dhcp 5 punted, 5 received, 4 replies, 0 lost; unhandled 1"),
            "{text}"
        );
    }

    #[test]
    fn config_is_toml_that_parses_back() {
        let state =
            DesiredState::from_toml_str("[[networks]]\nid = \"net-a\"\nnetwork_type = \"local\"\n")
                .unwrap();
        let result = json!({ "generation": 3, "state": state });
        let text = config_report(&result);
        assert!(text.starts_with("# generation 3\n"), "{text}");
        assert_eq!(DesiredState::from_toml_str(&text).unwrap(), state);
        let odd = json!({ "generation": 3, "state": { "future": 1 } });
        assert!(config_report(&odd).contains("\"future\": 1"));
    }

    #[test]
    fn cli_parses_the_contract() {
        let cli = Cli::try_parse_from([
            "polluxctl",
            "--json",
            "apply",
            "-",
            "--dry-run",
            "--expect-generation",
            "4",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(
            cli.command,
            Command::Apply {
                dry_run: true,
                expect_generation: Some(4),
                ..
            }
        ));
        let cli = Cli::try_parse_from(["polluxctl", "show", "fdb", "--network", "net-a"]).unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(
            (method, params),
            ("fdb.list", json!({ "network_id": "net-a" }))
        );
        for spelling in ["neighbours", "neighbors"] {
            let cli = Cli::try_parse_from(["polluxctl", "show", spelling]).unwrap();
            let (method, params) = request(&cli.command).unwrap();
            assert_eq!((method, params), ("neighbors.list", json!({})));
        }
        let cli = Cli::try_parse_from(["polluxctl", "rollback", "5"]).unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(
            (method, params),
            (
                "config.rollback",
                json!({ "generation": 5, "dry_run": false })
            )
        );
        assert!(Cli::try_parse_from(["polluxctl", "show", "nothing"]).is_err());
    }

    #[test]
    fn capture_command_and_report() {
        let cli = Cli::try_parse_from([
            "polluxctl",
            "capture",
            "--port",
            "vm1",
            "--direction",
            "rx,drop",
            "--count",
            "5",
            "-w",
            "f.pcap",
        ])
        .unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(method, "capture.start");
        assert_eq!(
            params,
            json!({ "port": "vm1", "direction": "rx,drop", "count": 5, "duration_secs": 10,
                    "snaplen": 2048, "max_bytes": 64 << 20 })
        );
        let result = json!({ "port": "vm1", "direction": "rx,drop", "frames": 5, "bytes": 490,
                             "lost": 2, "unsent": 0, "ended": "count" });
        assert_eq!(
            render(&cli.command, &result),
            "5 frames (490 bytes) of vm1 rx,drop written to f.pcap (ended by count)\n\
             2 frames lost (the capture ring was full: the reader was too slow), 0 not sent \
             (past --max-bytes)"
        );
        assert!(Cli::try_parse_from(["polluxctl", "capture", "--port", "vm1"]).is_err());
    }

    #[test]
    fn trace_commands() {
        let cli = Cli::try_parse_from([
            "polluxctl",
            "trace",
            "start",
            "--port",
            "vm1",
            "--count",
            "3",
        ])
        .unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(
            (method, params),
            ("trace.start", json!({ "port": "vm1", "count": 3 }))
        );
        let result = json!({ "running": true, "port": "vm1", "remaining": 2, "packets": [
            { "generation": 4, "port": "vm1", "len": 64, "steps": [
                { "stage": "classify", "next": "l2" },
                { "stage": "l2", "next": "drop hairpin (l2)" },
            ]},
        ]});
        assert_eq!(
            trace_report(&result),
            "trace of vm1: 1 packets recorded, 2 to go\n\
             packet 1: 64 bytes from vm1, generation 4\n\
             \x20 classify   -> l2\n\
             \x20 l2         -> drop hairpin (l2)"
        );
        assert_eq!(
            trace_report(&json!({ "running": false })),
            "no trace running"
        );
        let cli = Cli::try_parse_from([
            "polluxctl",
            "trace",
            "start",
            "--port",
            "vm1",
            "--match",
            "proto=udp,dst_port=53",
        ])
        .unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(
            (method, params),
            (
                "trace.start",
                json!({ "port": "vm1", "count": 10, "match": "proto=udp,dst_port=53" })
            )
        );
        let result = json!({ "running": true, "port": "vm1", "remaining": 10,
            "match": "proto=17,dst_port=53", "packets": [] });
        assert_eq!(
            trace_report(&result),
            "trace of vm1 matching proto=17,dst_port=53: 0 packets recorded, 10 to go"
        );
    }

    #[test]
    fn show_qos() {
        let cli = Cli::try_parse_from(["polluxctl", "show", "qos"]).unwrap();
        let Command::Show(show) = &cli.command else {
            panic!("not show: {cli:?}");
        };
        assert_eq!(show_request(show).0, "stats.get");
        let result = json!({ "qos": [{
            "port_id": "vm1", "qos_policy_id": "gold", "policed_egress_packets": 3,
            "policed_egress_bytes": 4500, "policed_ingress_packets": 0,
            "policed_ingress_bytes": 0, "dscp_marked": 12
        }]});
        assert_eq!(
            render_show(show, &result),
            [
                "PORT  POLICY  POLICED_EGRESS_PKTS  POLICED_EGRESS_BYTES  POLICED_INGRESS_PKTS  \
                 POLICED_INGRESS_BYTES  DSCP_MARKED",
                "vm1   gold                      3                  4500                     0  \
                 {}0           12",
            ]
            .join("\n")
            .replace("{}", &" ".repeat(20))
        );
    }

    #[test]
    fn show_metering() {
        let cli = Cli::try_parse_from([
            "polluxctl",
            "show",
            "metering",
            "--label",
            "m1",
            "--router",
            "r1",
        ])
        .unwrap();
        let Command::Show(show) = &cli.command else {
            panic!("not show: {cli:?}");
        };
        assert_eq!(
            show_request(show),
            (
                "metering.list",
                json!({ "label_id": "m1", "router_id": "r1" })
            )
        );
        let result = json!({ "metering": [{
            "label_id": "m1", "name": "internet", "router_id": "r1", "packets": 5,
            "bytes": 700, "ingress_packets": 2, "ingress_bytes": 100, "egress_packets": 3,
            "egress_bytes": 600
        }]});
        let out = render_show(show, &result);
        assert!(out.starts_with("LABEL  NAME      ROUTER  PKTS_IN"), "{out}");
        assert!(out.contains("m1     internet  r1"), "{out}");
        assert!(out.trim_end().ends_with("600"), "{out}");
    }

    #[test]
    fn show_workers() {
        let cli = Cli::try_parse_from(["polluxctl", "show", "workers"]).unwrap();
        let (method, _) = request(&cli.command).unwrap();
        assert_eq!(method, "workers.list");
        let Command::Show(show) = &cli.command else {
            unreachable!()
        };
        let result = json!({ "workers": [
            { "id": 0, "core": 0, "busy_percent": 50.5, "rx_packets": 10, "tx_packets": 9,
              "handoffs": 4, "handoffs_received": 3, "handoff_drops": 0, "dropped": 1,
              "queues": [{ "port": "vm1", "queue": 0 }, { "port": "uplink:phys", "queue": 1 }] },
        ]});
        let out = render_show(show, &result);
        assert!(out.contains("vm1:0 uplink:phys:1"), "{out}");
        assert!(out.starts_with("WORKER  CPU  BUSY%"), "{out}");
        // Then one row per queue, with its load.
        let result = json!({ "workers": [
            { "id": 1, "core": 1, "busy_percent": 50.5, "rx_packets": 10,
              "queues": [{ "port": "vm1", "queue": 0, "pinned": true, "movable": true,
                           "busy_percent": 42.5, "packets_per_sec": 1000.0,
                           "packets": 10, "cycles_per_packet": 310.5 }] },
        ]});
        let out = render_show(show, &result);
        assert!(
            out.contains("WORKER  PORT  QUEUE  PINNED  MOVABLE  BUSY%"),
            "{out}"
        );
        assert!(out.contains("42.5") && out.contains("310.5"), "{out}");
    }

    #[test]
    fn rebalance_and_pin() {
        let cli =
            Cli::try_parse_from(["polluxctl", "rebalance", "--dry-run", "--improvement", "10"])
                .unwrap();
        assert_eq!(
            request(&cli.command).unwrap(),
            (
                "workers.rebalance",
                json!({ "dry_run": true, "improvement_percent": 10 })
            )
        );
        assert!(Cli::try_parse_from(["polluxctl", "rebalance", "--improvement", "101"]).is_err());
        let result = json!({ "applied": true, "dry_run": false, "improvement_percent": 100.0,
            "threshold_percent": 25.0,
            "before": [{ "worker": 0, "busy_percent": 90.0 }, { "worker": 1, "busy_percent": 0.0 }],
            "after": [{ "worker": 0, "busy_percent": 45.0 }, { "worker": 1, "busy_percent": 45.0 }],
            "moves": [{ "port": "vm2", "queue": 0, "from": 0, "to": 1, "busy_percent": 45.0 }] });
        let out = render(&cli.command, &result);
        assert!(
            out.starts_with("moved 1 queue(s); load variance 100% better"),
            "{out}"
        );
        assert!(out.contains("vm2       0     0   1   45.0"), "{out}");
        let cli = Cli::try_parse_from(["polluxctl", "pin", "vm1", "1", "--queue", "0"]).unwrap();
        assert_eq!(
            request(&cli.command).unwrap(),
            (
                "workers.pin",
                json!({ "port": "vm1", "queue": 0, "worker": 1 })
            )
        );
        let cli = Cli::try_parse_from(["polluxctl", "unpin", "vm1"]).unwrap();
        assert_eq!(
            request(&cli.command).unwrap(),
            (
                "workers.pin",
                json!({ "port": "vm1", "queue": 0, "worker": null })
            )
        );
    }

    #[test]
    fn show_drops_and_runtime() {
        let cli = Cli::try_parse_from(["polluxctl", "show", "drops", "--port", "vm1"]).unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!((method, params), ("drops.list", json!({ "port": "vm1" })));
        let cli = Cli::try_parse_from(["polluxctl", "show", "drops", "--per-port"]).unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(
            (method, params),
            ("drops.list", json!({ "per_port": true }))
        );
        let Command::Show(show) = &cli.command else {
            unreachable!()
        };
        let result = json!({ "drops": [
            { "stage": "l2", "reason": "hairpin", "count": 12, "port": "vm1", "help": "h" },
        ]});
        assert_eq!(
            render_show(show, &result),
            "COUNT  PORT  STAGE  REASON\n   12  vm1   l2     hairpin"
        );
        let cli = Cli::try_parse_from(["polluxctl", "show", "runtime"]).unwrap();
        let (method, _) = request(&cli.command).unwrap();
        assert_eq!(method, "runtime.get");
        let Command::Show(show) = &cli.command else {
            unreachable!()
        };
        let result = json!({ "stages": [
            { "stage": "l2", "calls": 2, "packets": 128, "vector_size": 64.0,
              "cycles_per_packet": 40.5, "ns_per_packet": 13.5 },
            { "stage": "l3", "calls": 0, "packets": 0, "vector_size": null,
              "cycles_per_packet": null, "ns_per_packet": null },
        ]});
        let text = render_show(show, &result);
        assert!(
            text.starts_with("STAGE  CALLS  PACKETS  VECTOR  CYCLES/PKT  NS/PKT"),
            "{text}"
        );
        assert!(
            text.contains("l3         0        0       -           -       -"),
            "{text}"
        );
    }

    #[test]
    fn put_and_delete_name_their_socket_method() {
        for c in Collection::ALL {
            for kind in [c.name(), c.singular()] {
                let cli = Cli::try_parse_from(["polluxctl", "delete", kind, "x1"]).unwrap();
                let (method, params) = request(&cli.command).unwrap();
                assert_eq!(method, format!("{}.delete", c.name()));
                assert_eq!(params, json!({ "id": "x1", "dry_run": false }));
                let put = object_method_name(c, true);
                assert_eq!(put, format!("{}.put", c.name()));
            }
        }
        let cli = Cli::try_parse_from(["polluxctl", "delete", "widget", "x"]).unwrap();
        assert!(matches!(request(&cli.command), Err(Failure::Local(_))));
    }

    #[test]
    fn explain_command() {
        let cli = Cli::try_parse_from([
            "polluxctl",
            "explain",
            "--port",
            "vm1",
            "--dst-ip",
            "198.18.2.10",
            "--proto",
            "udp",
            "--dst-port",
            "53",
        ])
        .unwrap();
        let (method, params) = request(&cli.command).unwrap();
        assert_eq!(
            (method, params),
            (
                "explain.run",
                json!({ "port": "vm1", "dst_ip": "198.18.2.10", "proto": "udp", "dst_port": 53 })
            )
        );
        let cli = Cli::try_parse_from(["polluxctl", "explain", "--port", "vm1", "--frame", "ffff"])
            .unwrap();
        assert_eq!(
            request(&cli.command).unwrap().1,
            json!({ "port": "vm1", "frame": "ffff" })
        );
        // A frame is whole: no field beside it.
        assert!(Cli::try_parse_from([
            "polluxctl",
            "explain",
            "--port",
            "vm1",
            "--frame",
            "ff",
            "--ttl",
            "3"
        ])
        .is_err());
        let result = json!({
            "generation": 4, "worker": 0, "port": "vm1",
            "frame": { "src_mac": "fa:16:3e:00:00:01", "dst_mac": "fa:16:3e:00:00:02",
                       "src_ip": "198.18.1.10", "dst_ip": "198.18.1.11", "proto": "tcp",
                       "src_port": 40000, "dst_port": 22, "ttl": 64 },
            "summary": "would be dropped by sg_ingress: sg_no_rule",
            "steps": [
                { "stage": "classify", "next": "l2" },
                { "stage": "l2", "next": "output vm2" },
                { "stage": "sg_ingress", "next": "drop sg_no_rule (sg_ingress)" },
            ],
            "sent": [],
            "dropped": [{ "stage": "sg_ingress", "reason": "sg_no_rule", "help": "no rule",
                          "port": "vm2", "security_groups": ["web"] }],
            "connections": [],
        });
        assert_eq!(
            explain_report(&result),
            "fa:16:3e:00:00:01 > fa:16:3e:00:00:02, tcp 198.18.1.10:40000 > 198.18.1.11:22 ttl \
             64 on vm1: would be dropped by sg_ingress: sg_no_rule\n\
             generation 4, worker 0\n\
             \x20 classify         -> l2\n\
             \x20 l2               -> output vm2\n\
             \x20 sg_ingress       -> drop sg_no_rule (sg_ingress)\n\
             \x20 dropped by sg_ingress: sg_no_rule (no rule); port vm2 has security groups [web]"
        );
    }

    proptest::proptest! {
        /// Whatever fields are given on the command line reach the daemon as the
        /// parameters `explain.run` reads, and nothing else.
        #[test]
        fn explain_flags_become_the_parameters_the_daemon_reads(
            src_mac in proptest::option::of("[0-9a-f]{2}(:[0-9a-f]{2}){5}"),
            dst_mac in proptest::option::of("[0-9a-f]{2}(:[0-9a-f]{2}){5}"),
            vlan in proptest::option::of(proptest::prelude::any::<u16>()),
            src_ip in proptest::option::of("[0-9]{1,3}(\\.[0-9]{1,3}){3}"),
            dst_ip in proptest::option::of("[0-9]{1,3}(\\.[0-9]{1,3}){3}"),
            proto in proptest::option::of("tcp|udp|icmp|[0-9]{1,3}"),
            src_port in proptest::option::of(proptest::prelude::any::<u16>()),
            dst_port in proptest::option::of(proptest::prelude::any::<u16>()),
            ttl in proptest::option::of(proptest::prelude::any::<u8>()),
        ) {
            use pollux_control::service::explain::ExplainParams;
            let mut args = vec!["polluxctl".to_owned(), "explain".into(), "--port".into(), "vm1".into()];
            let mut flag = |name: &str, v: Option<String>| {
                if let Some(v) = v {
                    args.push(format!("--{name}"));
                    args.push(v);
                }
            };
            flag("src-mac", src_mac.clone());
            flag("dst-mac", dst_mac.clone());
            flag("vlan", vlan.map(|v| v.to_string()));
            flag("src-ip", src_ip.clone());
            flag("dst-ip", dst_ip.clone());
            flag("proto", proto.clone());
            flag("src-port", src_port.map(|v| v.to_string()));
            flag("dst-port", dst_port.map(|v| v.to_string()));
            flag("ttl", ttl.map(|v| v.to_string()));
            let cli = Cli::try_parse_from(&args).unwrap();
            let (method, params) = request(&cli.command).unwrap();
            proptest::prop_assert_eq!(method, "explain.run");
            let read: ExplainParams = serde_json::from_value(params).unwrap();
            proptest::prop_assert_eq!(read, ExplainParams {
                port: "vm1".into(),
                frame: None,
                src_mac, dst_mac, vlan, src_ip, dst_ip, proto, src_port, dst_port, ttl,
            });
        }

        /// A frame given in hex reaches the daemon as given, which reads it back.
        #[test]
        fn explain_frames_reach_the_daemon_whole(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..128),
        ) {
            use pollux_control::service::explain::{parse_hex, ExplainParams};
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let hex = hex.join(":");
            let cli = Cli::try_parse_from(["polluxctl", "explain", "--port", "vm1", "--frame", &hex]).unwrap();
            let (_, params) = request(&cli.command).unwrap();
            let read: ExplainParams = serde_json::from_value(params).unwrap();
            proptest::prop_assert_eq!(parse_hex(read.frame.as_deref().unwrap()), Ok(bytes));
        }
    }
}
