//! The composition root of Pollux: it owns every thread that is not a worker, starts the
//! workers, and publishes the configuration they run.
//!
//! The desired-state model, RPC socket, store and metrics arrive with the control-plane
//! work; this crate currently provides the worker threads.

pub mod workers;
