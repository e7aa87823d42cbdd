//! `polluxctl`'s command line, apart from the client so that the package build can
//! render its manual page and shell completions from it (`pollux-packaging`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

/// Controls polluxd, the Pollux virtual switch, through its control socket.
#[derive(Debug, Parser)]
#[command(name = "polluxctl", version)]
pub struct Cli {
    /// The control socket [default: $POLLUX_SOCKET, else /run/pollux/polluxd.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's result (or error object) as JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the daemon; 0 waits forever.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply a desired state (TOML, or JSON if the name ends in .json; "-" reads TOML
    /// from stdin).
    Apply {
        /// The desired state.
        file: PathBuf,
        /// Validate and show the diff, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the active generation is N.
        #[arg(long, value_name = "N")]
        expect_generation: Option<u64>,
    },
    /// Show the running state.
    #[command(subcommand)]
    Show(Show),
    /// List the retained generations, newest first.
    History,
    /// Apply the state of a retained generation again, as a new generation.
    Rollback {
        /// The generation whose state to apply.
        generation: u64,
        /// Validate and show the diff, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the active generation is N.
        #[arg(long, value_name = "N")]
        expect_generation: Option<u64>,
    },
    /// Trace the next packets of a port through every stage.
    #[command(subcommand)]
    Trace(Trace),
    /// Capture a port's frames into a pcapng file (as ovs-tcpdump or VPP's pcap trace):
    /// received (as they arrived), sent (as they left) and dropped (with the stage and
    /// reason as each packet's comment). Ends after --count frames, --duration seconds or
    /// --max-bytes, whichever comes first.
    Capture {
        /// The port (a VM port's id, or uplink:NAME).
        #[arg(long, value_name = "PORT")]
        port: String,
        /// rx, tx or drop; several comma-separated [default: rx,tx].
        #[arg(long, value_name = "DIR")]
        direction: Option<String>,
        /// Frames at most (1 to 1000000).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        count: u64,
        /// Seconds at most (1 to 600).
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        duration: u64,
        /// Bytes kept of each frame (14 to 9216).
        #[arg(long, value_name = "BYTES", default_value_t = 2048)]
        snaplen: u32,
        /// Frame bytes at most (up to 1 GiB).
        #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
        max_bytes: u64,
        /// Only frames that match, as trace's --match (comma-separated field=value:
        /// src_mac, dst_mac, vlan, ethertype, src_ip, dst_ip, proto, src_port, dst_port),
        /// looked at as each frame is where it is copied (received, sent, dropped).
        #[arg(long = "match", value_name = "EXPR")]
        filter: Option<String>,
        /// The pcapng file to write (replaced if it exists).
        #[arg(short = 'w', value_name = "FILE")]
        write: PathBuf,
    },
    /// What the data plane would do with a frame received on a port, from its live
    /// tables, changing nothing: where it would go (rewritten how) or what would drop it.
    /// Give the whole frame (--frame) or the flow's fields; the rest is filled in as the
    /// port's VM would send it (a TCP SYN from its MAC and fixed IP, to its router's MAC
    /// off its subnet).
    Explain(Explain),
    /// Create or replace one object (JSON, or TOML; "-" reads stdin), e.g.
    /// `polluxctl put port vm1.json`.
    Put {
        /// Its collection: port(s), network(s), subnet(s), router(s), floating-ip(s),
        /// security-group(s), address-group(s), qos-polic(y|ies), uplink(s).
        kind: String,
        /// The object, bare or as `{"port": {...}}`.
        file: PathBuf,
        /// Validate and show the diff, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the active generation is N.
        #[arg(long, value_name = "N")]
        expect_generation: Option<u64>,
    },
    /// Remove one object by its id (an uplink by its name).
    Delete {
        /// Its collection, as for `put`.
        kind: String,
        /// Its id.
        id: String,
        /// Validate and show the diff, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the active generation is N.
        #[arg(long, value_name = "N")]
        expect_generation: Option<u64>,
    },
    /// Assign the receive queues to the workers by their measured load (busiest first,
    /// each to the least loaded worker; pinned queues and queues that cannot move stay):
    /// applied when the variance of the workers' loads falls by at least the threshold.
    Rebalance {
        /// Show the plan, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// The threshold (percent of the variance) instead of the daemon's.
        #[arg(long, value_name = "PERCENT",
              value_parser = clap::value_parser!(u8).range(0..=100))]
        improvement: Option<u8>,
    },
    /// Pin a port's receive queue to a worker: moved there now, never moved by a
    /// rebalance (kept across restarts, until unpinned).
    Pin {
        /// The port (a VM port's id, or uplink:NAME).
        port: String,
        /// The worker (as `show workers` numbers them).
        worker: u16,
        /// The port's queue.
        #[arg(long, value_name = "N", default_value_t = 0)]
        queue: u16,
    },
    /// Unpin a port's receive queue (it stays where it is until a rebalance moves it).
    Unpin {
        /// The port (a VM port's id, or uplink:NAME).
        port: String,
        /// The port's queue.
        #[arg(long, value_name = "N", default_value_t = 0)]
        queue: u16,
    },
    /// Print the versions of polluxctl and polluxd.
    Version,
    /// List the daemon's methods.
    RpcList,
}

#[derive(Debug, Subcommand)]
pub enum Show {
    /// The desired state, as TOML.
    Config {
        /// A retained generation instead of the active one.
        #[arg(long, value_name = "N")]
        generation: Option<u64>,
    },
    /// Ports and their counters.
    Ports,
    /// Networks.
    Networks,
    /// MAC forwarding entries.
    Fdb {
        /// Only this network.
        #[arg(long, value_name = "ID")]
        network: Option<String>,
    },
    /// Routes.
    Routes {
        /// Only this router.
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
    /// The routers' neighbors (ARP entries), as `neighbors.list` returns them; the
    /// British spelling `neighbours` is an alias.
    #[command(alias = "neighbours")]
    Neighbors {
        /// Only this network.
        #[arg(long, value_name = "ID")]
        network: Option<String>,
    },
    /// NAT sessions.
    Sessions {
        /// Only this router.
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
    /// What each metering label counted at each router's external gateway.
    Metering {
        /// Only this label.
        #[arg(long, value_name = "ID")]
        label: Option<String>,
        /// Only this router.
        #[arg(long, value_name = "ID")]
        router: Option<String>,
    },
    /// DHCP leases.
    Leases {
        /// Only this network.
        #[arg(long, value_name = "ID")]
        network: Option<String>,
    },
    /// Worker counters, drop reasons and apply totals.
    Stats,
    /// Drops by the stage that decided them and reason, most first.
    Drops {
        /// Only the drops charged to this port (a VM port's id, or uplink:NAME).
        #[arg(long, value_name = "PORT")]
        port: Option<String>,
        /// One row per port, stage and reason.
        #[arg(long)]
        per_port: bool,
    },
    /// Each pipeline stage's calls, packets per call and time per packet.
    Runtime,
    /// Each worker: its CPU, the port queues it polls, its packets, handoffs to and from
    /// the other workers and how busy it is.
    Workers,
    /// The VM ports with a QoS policy: what their bandwidth limits dropped (packets and
    /// bytes, per direction) and how many packets they marked.
    Qos,
}

#[derive(Debug, clap::Args)]
pub struct Explain {
    /// The port it is received on (a VM port's id, or uplink:NAME).
    #[arg(long, value_name = "PORT")]
    pub port: String,
    /// The whole frame in hex (bytes may be separated by spaces or colons).
    #[arg(long, value_name = "HEX", conflicts_with_all = [
        "src_mac", "dst_mac", "vlan", "src_ip", "dst_ip", "proto", "src_port", "dst_port", "ttl",
    ])]
    pub frame: Option<String>,
    /// Source MAC [default: the port's].
    #[arg(long, value_name = "MAC")]
    pub src_mac: Option<String>,
    /// Destination MAC [default: the router's off the subnet, else the address's port].
    #[arg(long, value_name = "MAC")]
    pub dst_mac: Option<String>,
    /// An 802.1Q tag with this VLAN id.
    #[arg(long, value_name = "VID")]
    pub vlan: Option<u16>,
    /// Source address [default: the port's first fixed IP].
    #[arg(long, value_name = "IP")]
    pub src_ip: Option<String>,
    /// Destination address (required without --frame).
    #[arg(long, value_name = "IP")]
    pub dst_ip: Option<String>,
    /// tcp, udp, icmp or a number [default: tcp].
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,
    /// Source port, or ICMP echo identifier [default: 40000].
    #[arg(long, value_name = "N")]
    pub src_port: Option<u16>,
    /// Destination port [default: 80 for TCP, 53 for UDP].
    #[arg(long, value_name = "N")]
    pub dst_port: Option<u16>,
    /// Time to live [default: 64].
    #[arg(long, value_name = "N")]
    pub ttl: Option<u8>,
}

impl Explain {
    /// The `explain.run` parameters: only what was given.
    pub fn params(&self) -> Value {
        let mut p = Map::new();
        p.insert("port".into(), json!(self.port));
        let fields = [
            ("frame", self.frame.as_ref().map(|v| json!(v))),
            ("src_mac", self.src_mac.as_ref().map(|v| json!(v))),
            ("dst_mac", self.dst_mac.as_ref().map(|v| json!(v))),
            ("vlan", self.vlan.map(|v| json!(v))),
            ("src_ip", self.src_ip.as_ref().map(|v| json!(v))),
            ("dst_ip", self.dst_ip.as_ref().map(|v| json!(v))),
            ("proto", self.proto.as_ref().map(|v| json!(v))),
            ("src_port", self.src_port.map(|v| json!(v))),
            ("dst_port", self.dst_port.map(|v| json!(v))),
            ("ttl", self.ttl.map(|v| json!(v))),
        ];
        for (key, value) in fields {
            if let Some(v) = value {
                p.insert(key.into(), v);
            }
        }
        Value::Object(p)
    }
}

#[derive(Debug, Subcommand)]
pub enum Trace {
    /// Trace the next packets received on a port.
    Start {
        /// The port (a VM port's id, or uplink:NAME).
        #[arg(long, value_name = "PORT")]
        port: String,
        /// How many packets (1 to 256).
        #[arg(long, value_name = "N", default_value_t = 10)]
        count: u32,
        /// Only packets that match, as comma-separated field=value (src_mac, dst_mac,
        /// vlan, ethertype, src_ip, dst_ip, proto, src_port, dst_port), e.g.
        /// "proto=udp,dst_port=53,src_ip=198.18.1.0/24".
        #[arg(long = "match", value_name = "EXPR")]
        filter: Option<String>,
    },
    /// Show what the trace recorded.
    Show,
    /// Stop the trace.
    Stop,
}
