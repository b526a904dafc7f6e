//! External-process rewards: any program that speaks newline-delimited JSON on stdin/stdout.
//!
//! - `protocol.rs`: the request/response lines (version 1; docs/rewards.md has the spec).
//! - `process.rs`: spawning, timeouts, restarts and error reporting.

mod process;
mod protocol;

pub use process::{ExternalConfig, ExternalReward, PluginError};
pub use protocol::PROTOCOL_VERSION;
