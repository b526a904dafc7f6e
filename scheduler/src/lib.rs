//! realign scheduler: the RLHF loop as a dataflow of model function calls, the config schema, and
//! everything a run leaves behind (logs, checkpoints).

pub mod atomic;
pub mod config;
pub mod logging;
pub mod synthetic;
