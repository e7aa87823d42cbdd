//! The command lines of `polluxd` and `polluxctl` (clap definitions only). They live in the
//! library, not in the binaries, so that the package build renders the manual pages and
//! shell completions from the very definitions the binaries parse with.

pub mod polluxctl;
pub mod polluxd;
