//! The composition root of Pollux: it owns every thread that is not a worker, starts the
//! workers, and publishes the configuration they run.
//!
//! Present so far: the desired-state model (`model`, Neutron's field names, read from TOML
//! or JSON), its validation into a typed view (`validate`, every problem reported with the
//! path of its field), and the worker threads (`workers`). Compiling a validated state into
//! a snapshot, the RPC socket, the store and the metrics come next.

pub mod binding;
pub mod client;
pub mod compile;
pub mod daemon;
pub mod diff;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod rpc;
pub mod service;
pub mod store;
pub mod validate;
pub mod workers;
