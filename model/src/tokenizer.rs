//! A model's tokenizer as Hugging Face ships it: `tokenizer.json` (through the `tokenizers`
//! crate), the special tokens and chat template of `tokenizer_config.json` (or
//! `chat_template.jinja`), and the ids that end generation (`generation_config.json`,
//! `config.json`).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::path::Path;

use crate::chat_template::{ChatMessage, ChatTemplate, SpecialTokens};

/// Text <-> token ids for one model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialTokens,
    pub bos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Every id that ends a generation (generation_config.json first, then config.json and the
    /// tokenizer's eos_token), without duplicates.
    pub eos_ids: Vec<u32>,
    template: Option<std::result::Result<ChatTemplate, String>>,
    /// Ids the tokenizer knows, counted once: `tokenizers` rebuilds its whole vocabulary map to
    /// answer this (~49k string copies for SmolLM2), which made decoding a 256-sample rollout take
    /// seconds when it was asked on every call.
    vocab_size: usize,
}

impl Tokenizer {
    /// Loads the tokenizer files of a model folder. Only `tokenizer.json` is required.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let mut tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let cfg = read_json_if_exists(&dir.join("tokenizer_config.json"))?;
        let special = SpecialTokens {
            bos_token: token_field(&cfg, "bos_token"),
            eos_token: token_field(&cfg, "eos_token"),
            unk_token: token_field(&cfg, "unk_token"),
            pad_token: token_field(&cfg, "pad_token"),
        };
        let id_of = |t: &Option<String>| t.as_deref().and_then(|s| tok.inner.token_to_id(s));
        tok.bos_id = id_of(&special.bos_token);
        tok.pad_id = id_of(&special.pad_token);

        let mut eos = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            let v = read_json_if_exists(&dir.join(file))?;
            eos.extend(ids_field(&v, "eos_token_id").with_context(|| format!("in {file}"))?);
            if tok.bos_id.is_none() {
                tok.bos_id = ids_field(&v, "bos_token_id")?.first().copied();
            }
            if tok.pad_id.is_none() {
                tok.pad_id = ids_field(&v, "pad_token_id")?.first().copied();
            }
        }
        eos.extend(id_of(&special.eos_token));
        let mut seen = std::collections::HashSet::new();
        eos.retain(|id| seen.insert(*id));
        tok.eos_ids = eos;

        // transformers 5 writes the template to its own file; older folders keep it in the config,
        // as a string or as a list of named templates.
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            Some(
                std::fs::read_to_string(&jinja)
                    .with_context(|| format!("cannot read {}", jinja.display()))?,
            )
        } else {
            match cfg.get("chat_template") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template").and_then(Value::as_str))
                    .map(str::to_string),
                Some(other) => {
                    bail!("tokenizer_config.json chat_template = {other} is not a template")
                }
            }
        };
        // A template we cannot compile only matters to callers that render chats: keep the error
        // for them instead of refusing the whole tokenizer.
        tok.template = source.map(|s| {
            ChatTemplate::new(&s, special.clone()).map_err(|e| {
                format!(
                    "the chat template of {} cannot be used: {e:#}",
                    dir.display()
                )
            })
        });
        if let Some(Err(e)) = &tok.template {
            tracing::warn!("{e}");
        }
        tok.special = special;
        Ok(tok)
    }

    /// Loads a bare `tokenizer.json` (no special-token config, no chat template).
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            vocab_size,
            special: SpecialTokens::default(),
            bos_id: None,
            pad_id: None,
            eos_ids: Vec::new(),
            template: None,
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, the tokenizer's post-processor adds what the
    /// model expects (e.g. a BOS token); special-token text inside `text` is always recognised,
    /// as in HF.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("cannot tokenize text: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special_tokens` drops special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let vocab = self.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&id| id >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab} tokens");
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("cannot decode token ids: {e}"))
    }

    /// Number of ids the tokenizer knows (model vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// True when `id` ends a generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The compiled chat template; an error when the model has none or it does not compile.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        match &self.template {
            None => bail!(
                "this tokenizer has no chat template (tokenizer_config.json has no chat_template)"
            ),
            Some(Ok(t)) => Ok(t),
            Some(Err(e)) => bail!("{e}"),
        }
    }

    /// HF `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat_template()?
            .render(messages, add_generation_prompt)
    }

    /// HF `apply_chat_template(messages, tokenize=True, ...)`: the rendered text encoded without
    /// adding special tokens (the template writes them itself).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn read_json_if_exists(path: &Path) -> Result<Value> {
    if !path.exists() {
        return Ok(Value::Null);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

/// A special token in tokenizer_config.json: a string or an AddedToken object `{"content": ...}`.
fn token_field(cfg: &Value, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A token-id field that may be absent, null, one id or a list of ids.
fn ids_field(v: &Value, key: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .with_context(|| format!("{key} = {x} is not a token id"))
    };
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}
