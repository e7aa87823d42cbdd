//! What of `pollux-agent` other crates may use: its command line (`cli`), which the
//! package build renders into a manual page and shell completions. The agent itself is
//! the binary (`main.rs`).

pub mod cli;
