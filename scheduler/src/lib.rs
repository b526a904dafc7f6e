//! realign scheduler: the RLHF loop as a dataflow of model function calls, the config schema, and
//! everything a run leaves behind (logs, checkpoints).

pub mod atomic;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dataflow;
pub mod generation;
pub mod logging;
pub mod memory;
pub mod models;
pub mod run;
pub mod stages;
pub mod synthetic;
pub mod trainable;
