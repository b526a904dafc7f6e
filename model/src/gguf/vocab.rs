//! Rebuilding Hugging Face tokenizer files from the vocabulary a GGUF file carries.
//!
//! GGUF keeps the BPE model (`tokenizer.ggml.tokens`, `.merges`, `.token_type`) but names the
//! pre-tokenizer only by a string (`tokenizer.ggml.pre`); the splitting rules themselves live in
//! llama.cpp's source. So each supported name maps to the HF pre-tokenizer that splits text the
//! same way, and an unknown name is refused rather than tokenised differently from the original.

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::reader::{GgufFile, MetaValue};

/// llama.cpp token types (`llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The special token ids a GGUF declares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
}

impl SpecialIds {
    pub fn read(g: &GgufFile) -> Result<SpecialIds> {
        let id = |k: &str| -> Result<Option<u32>> {
            g.get(k)
                .map(|v| {
                    v.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .with_context(|| format!("GGUF metadata `{k}` = {v:?} is not a token id"))
                })
                .transpose()
        };
        Ok(SpecialIds {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            add_bos: g
                .get("tokenizer.ggml.add_bos_token")
                .and_then(MetaValue::as_bool)
                .unwrap_or(false),
        })
    }
}

/// The HF pre-tokenizer that splits text as llama.cpp's pre-tokenizer `pre` does.
fn pre_tokenizer(pre: &str) -> Result<Value> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(match pre {
        // GPT-2's regex, byte-level.
        "gpt-2" | "default" => byte_level,
        // SmolLM: every digit is its own pre-token, then GPT-2's byte-level regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level,
        ]}),
        other => bail!(
            "tokenizer.ggml.pre = \"{other}\" is not supported (supported: smollm, gpt-2, default)"
        ),
    })
}

/// `tokenizer.json` for the GGUF's BPE vocabulary.
pub fn tokenizer_json(g: &GgufFile, special: &SpecialIds) -> Result<Value> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!("tokenizer.ggml.model = \"{model}\" is not supported (only gpt2, byte-level BPE)");
    }
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let merges = g.get_str_array("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| match x {
                        MetaValue::I32(t) => Some(*t as i64),
                        other => other.as_u64().map(|t| t as i64),
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .context("GGUF metadata `tokenizer.ggml.token_type` is not an array of integers")?,
    };
    if types.len() != tokens.len() {
        bail!(
            "tokenizer.ggml.token_type has {} entries but there are {} tokens",
            types.len(),
            tokens.len()
        );
    }
    let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");

    let mut vocab = Map::new();
    for (id, tok) in tokens.iter().enumerate() {
        if vocab.insert(tok.to_string(), json!(id)).is_some() {
            bail!("token {tok:?} appears twice in tokenizer.ggml.tokens");
        }
    }
    // Control tokens are HF "special" added tokens; user-defined ones are added but not special.
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
        .map(|(id, &t)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": t != TOKEN_TYPE_CONTROL,
                   "special": t == TOKEN_TYPE_CONTROL})
        })
        .collect();
    let post_processor = match (special.add_bos, special.bos) {
        (true, Some(bos)) => {
            let b = tokens
                .get(bos as usize)
                .with_context(|| format!("bos_token_id {bos} is outside the vocabulary"))?;
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {*b: {"id": b, "ids": [bos], "tokens": [b]}}})
        }
        (true, None) => bail!("tokenizer.ggml.add_bos_token is true but there is no bos_token_id"),
        (false, _) => Value::Null,
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    }))
}

/// `tokenizer_config.json`: special tokens by content, BOS policy and the chat template.
pub fn tokenizer_config_json(g: &GgufFile, special: &SpecialIds, max_len: usize) -> Result<Value> {
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let content = |id: Option<u32>, what: &str| -> Result<Value> {
        match id {
            None => Ok(Value::Null),
            Some(i) => tokens
                .get(i as usize)
                .map(|t| json!(t))
                .with_context(|| format!("{what} id {i} is outside the vocabulary")),
        }
    };
    let mut m = Map::new();
    m.insert("add_bos_token".into(), json!(special.add_bos));
    m.insert("add_eos_token".into(), json!(false));
    m.insert("bos_token".into(), content(special.bos, "bos_token")?);
    m.insert("eos_token".into(), content(special.eos, "eos_token")?);
    m.insert("unk_token".into(), content(special.unk, "unk_token")?);
    m.insert("pad_token".into(), content(special.pad, "pad_token")?);
    m.insert("clean_up_tokenization_spaces".into(), json!(false));
    m.insert("model_max_length".into(), json!(max_len));
    m.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    if let Some(t) = g.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        m.insert("chat_template".into(), json!(t));
    }
    Ok(Value::Object(m))
}

/// `generation_config.json`: the ids generation stops and pads with.
pub fn generation_config_json(special: &SpecialIds) -> Value {
    json!({
        "bos_token_id": special.bos,
        "eos_token_id": special.eos,
        "pad_token_id": special.pad,
    })
}
