//! GGUF (llama.cpp's model file) support: read it, decode its tensors, and import a model into a
//! Hugging Face folder.
//!
//! - `reader.rs`: header, metadata, tensor infos (memory-mapped).
//! - `dequant.rs`: ggml types -> f32 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K).
//! - `vocab.rs`: tokenizer.json / tokenizer_config.json / generation_config.json from the GGUF
//!   vocabulary.
//! - `import.rs`: config and weights (llama.cpp's q/k row permutation undone), written as HF files.

pub mod dequant;
pub mod import;
pub mod reader;
pub mod vocab;

pub use dequant::{dequantize, GgmlType};
pub use import::{config_from_gguf, import_gguf, ImportSummary};
pub use reader::{GgufFile, MetaValue, TensorInfo};
