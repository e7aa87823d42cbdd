//! `pollux-agent`'s command line, apart from the agent so that the package build can
//! render its manual page and shell completions from it (`pollux-packaging`).

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "pollux-agent",
    version,
    about = "Applies this host's share of the desired state, kept in etcd, to polluxd"
)]
pub struct Cli {
    /// etcd endpoints (gRPC), e.g. http://127.0.0.1:2379; repeat for several.
    #[arg(long = "etcd", required = true)]
    pub endpoints: Vec<String>,
    /// This host's name: Neutron's `binding:host_id` of the ports it serves.
    #[arg(long)]
    pub host: String,
    /// polluxd's control socket.
    #[arg(long, default_value = "/run/pollux/polluxd.sock")]
    pub socket: PathBuf,
    /// Key prefix shared with the mechanism driver.
    #[arg(long, default_value = "/pollux")]
    pub prefix: String,
    /// Seconds the agent's lease lives without a keep-alive (the driver's view of
    /// whether this host can take ports).
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: i64,
}
