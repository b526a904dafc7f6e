//! `realign import-gguf FILE OUT_DIR [--dtype f32|bf16]`: turns a llama.cpp GGUF model into a
//! Hugging Face folder (dequantised weights, config.json, tokenizer files) that realign and
//! transformers both load.

use anyhow::{Context, Result};
use clap::Args;
use kernels::DType;
use std::path::PathBuf;

#[derive(Args)]
pub struct ImportGgufArgs {
    /// The .gguf file to import.
    pub file: PathBuf,
    /// The folder to write (created if needed; files in it are replaced).
    pub out_dir: PathBuf,
    /// Storage dtype of the written weights.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub dtype: String,
}

pub fn run(args: ImportGgufArgs) -> Result<()> {
    let dtype: DType = args.dtype.parse()?;
    let summary =
        model::gguf::import_gguf(&args.file, &args.out_dir, dtype).with_context(|| {
            format!(
                "cannot import {} into {}",
                args.file.display(),
                args.out_dir.display()
            )
        })?;
    let c = &summary.config;
    println!(
        "imported {} -> {}: {} ({} layers, hidden {}, {} heads / {} kv heads, vocab {}, {}), {} parameters stored as {}; GGUF tensor types {:?}",
        args.file.display(),
        args.out_dir.display(),
        c.architecture(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        if c.tie_word_embeddings { "tied embeddings" } else { "separate lm_head" },
        summary.num_params,
        dtype,
        summary.tensor_types,
    );
    Ok(())
}
