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

pub mod binding;
pub mod client;
pub mod compile;
pub mod daemon;
pub mod dhcp;
pub mod diff;
pub mod engine;
pub mod inspect_stages;
pub mod inspect_trace;
pub mod log;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod rpc;
pub mod service;
pub mod store;
pub mod validate;
pub mod workers;
