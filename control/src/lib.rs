//! The composition root of Pollux: it owns every thread that is not a worker, starts the
//! workers, and publishes the configuration they run.
//!
//! A desired state (`model`, Neutron's field names, TOML or JSON) is validated (`validate`,
//! every problem with the path of its field), compared with the running one (`diff`) and
//! compiled into a snapshot (`compile`). The `engine` runs it: it opens the ports
//! (`binding`), persists the generation (`store`), publishes the snapshot and closes what
//! went away, without stopping the worker (`workers`). `polluxd` (`daemon`) serves the
//! engine on the control socket (`rpc` carries JSON-RPC, `service` holds the methods) and
//! the metrics endpoint (`metrics`); `client` is the other end of the socket.
//!
//! Underneath them: `identity` holds the MACs polluxd gives its own routers and DHCP
//! servers. The DHCP server itself (`dhcp`), address parsing (`addr`), private files
//! (`private_fs`) and the log (`log`) live in `pollux-services`, which this crate composes.
//! Modules import each other without cycles (the test `tests/module_graph.rs` keeps it so,
//! and prints the graph).

pub mod binding;
pub mod cli;
pub mod client;
pub mod compile;
pub mod daemon;
pub mod diff;
pub mod engine;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod patch;
pub mod pcap;
pub mod routes;
pub mod rpc;
pub mod service;
pub mod stage_counters;
pub mod store;
pub mod validate;
pub mod workers;
