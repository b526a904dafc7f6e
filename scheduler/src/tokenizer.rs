//! The policy's tokenizer as the scheduler uses it: text ↔ ids and the end-of-sequence id.
//!
//! Reads the HF `tokenizer.json` of the model folder (the char tokenizer of the quickstart is
//! written in the same format), and the EOS token from `tokenizer_config.json` or the model's
//! `config.json`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Generation stops at these ids (kept as the last response token).
    pub eos_ids: Vec<u32>,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`; `model_eos` are the EOS ids of the model's config.json.
    pub fn load(dir: &Path, model_eos: &[u32]) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let mut eos_ids: Vec<u32> = model_eos.to_vec();
        if let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            let cfg: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not valid JSON",
                    dir.join("tokenizer_config.json").display()
                )
            })?;
            let eos = match &cfg["eos_token"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Object(o) => o
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string),
                _ => None,
            };
            if let Some(id) = eos.and_then(|e| inner.token_to_id(&e)) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        if eos_ids.is_empty() {
            bail!(
                "no end-of-sequence token: neither {}/config.json (eos_token_id) nor tokenizer_config.json (eos_token) names one",
                dir.display()
            );
        }
        Ok(Tokenizer { inner, eos_ids })
    }

    /// The largest id the tokenizer can produce (vocab and added tokens).
    pub fn max_id(&self) -> u32 {
        self.inner.get_vocab_size(true).saturating_sub(1) as u32
    }

    /// Ids of `text`, without special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, with special tokens (EOS) left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("cannot decode {ids:?}: {e}"))
    }

    /// The first EOS id (appended to SFT targets so the model learns to stop).
    pub fn eos(&self) -> u32 {
        self.eos_ids[0]
    }
}
