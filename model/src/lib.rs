//! realign model: Llama-family decoders (Llama, Mistral, Qwen2) in Hugging Face layout.
//!
//! - `config`: HF `config.json` (read, validate, write back).
//! - `params`: the parameters as tensors, HF names and shapes, shard descriptors.
//! - `io`: safetensors checkpoints (load, memory-mapped; save, atomic).
//! - `tokenizer`, `chat_template`: HF tokenizer files and chat templates.
//! - `gguf`: llama.cpp GGUF reading, dequantisation and import.
//! - `llama`: the decoder's forward and explicit backward, LM head (log-prob/entropy) and scalar head.

pub mod chat_template;
pub mod config;
pub mod gguf;
pub mod io;
pub mod llama;
pub mod params;
pub mod tokenizer;

pub use config::{Arch, Head, ModelConfig};
pub use params::{LayerParams, Params, ShardSpec};
