//! What a run leaves behind for people and tools: `metrics.jsonl`, TensorBoard events, sample tables
//! and the dataflow timeline, in the run-folder layout of docs/run-folder.md.

mod run_log;
pub mod tensorboard;

pub use run_log::{RunLog, SampleRow, TimelineEntry};
