//! Hugging Face checkpoint I/O: `config.json` + `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), read memory-mapped and written back in the same layout.
//!
//! - `load.rs`: folder -> [`crate::Params`] on a device, in a requested dtype.
//! - `save.rs`: [`crate::Params`] -> folder, written atomically (temp file + rename).

mod load;
mod save;

pub use load::{load_model, load_params};
pub use save::{save_model, write_atomically};

/// File names of the HF layout.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
