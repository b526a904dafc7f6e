//! The realign dashboard: reads run folders (docs/run-folder.md) and shows them.
//!
//! - `server`: `realign dashboard`, an HTTP server with one embedded page and a JSON API, live while
//!   runs write;
//! - `plot`: `realign plot`, the main curves of a run as one PNG or SVG;
//! - `health`: the warnings both show (entropy collapse, KL growth, clip fraction, NaN, ...);
//! - `jsonl`, `metrics`, `samples`, `timeline`, `runs`: reading the files of a run folder that may
//!   still be written.

pub mod health;
pub mod jsonl;
pub mod metrics;
pub mod plot;
pub mod runs;
pub mod samples;
pub mod server;
pub mod timeline;
