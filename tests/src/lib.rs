//! Helpers shared by the Pollux integration tests and benchmarks: frame builders and an
//! in-memory switch (one worker, `mem` ports, a publisher) that a test drives by hand.

pub mod daemon;
pub mod dhcp;
pub mod frames;
pub mod harness;
pub mod netns;
pub mod ovs;
