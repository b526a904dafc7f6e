//! realign model: Llama-family decoders (Llama, Mistral, Qwen2) in Hugging Face layout.
//!
//! - `config`: HF `config.json` (read, validate, write back).
//! - `params`: the parameters as tensors, HF names and shapes, shard descriptors.
//! - `llama`: the decoder's forward and explicit backward, LM head (log-prob/entropy) and scalar head.

pub mod config;
pub mod gguf;
pub mod io;
pub mod llama;
pub mod params;

pub use config::{Arch, Head, ModelConfig};
pub use params::{LayerParams, Params, ShardSpec};
