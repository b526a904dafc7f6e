//! The model's hyper-parameters, read from (and written back to) a Hugging Face `config.json`.
//!
//! We support the Llama family as `transformers` defines it: `llama`, `mistral` and `qwen2`
//! decoders with RMSNorm, rotary embeddings (`rotate_half`), grouped-query attention and a SwiGLU
//! MLP. Anything in a config that would change the maths in a way we do not implement (another
//! activation, rope scaling, MLP biases, ...) is refused with one error naming the field and its
//! value, instead of silently computing something else.
//!
//! Both config generations are read: transformers 4 (`rope_theta`, `rope_scaling`, `torch_dtype`)
//! and transformers 5 (`rope_parameters`, `dtype`).

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// Which decoder family a config describes (HF `model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }

    /// The HF class-name prefix (`LlamaForCausalLM`, ...).
    pub fn class_prefix(self) -> &'static str {
        match self {
            Arch::Llama => "Llama",
            Arch::Mistral => "Mistral",
            Arch::Qwen2 => "Qwen2",
        }
    }

    fn from_model_type(s: &str) -> Option<Arch> {
        match s {
            "llama" => Some(Arch::Llama),
            "mistral" => Some(Arch::Mistral),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }
}

/// Which output head the checkpoint carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `*ForCausalLM`: logits over the vocabulary (`lm_head.weight`, or the embedding when tied).
    CausalLm,
    /// `*ForSequenceClassification`: `score.weight [num_labels, C]`, used for critics and reward
    /// models.
    SequenceClassification,
}

/// Hyper-parameters of a Llama-family decoder. Dimension names follow kernels/ (C hidden, F MLP
/// width, H query heads, K key/value heads, D head dim, V vocab).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub head: Head,
    /// C
    pub hidden_size: usize,
    /// F
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// H
    pub num_attention_heads: usize,
    /// K (H % K == 0)
    pub num_key_value_heads: usize,
    /// D (not necessarily C / H: some models set it explicitly)
    pub head_dim: usize,
    /// V
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (always for Qwen2; never for Mistral; Llama has none since
    /// we refuse `attention_bias = true`, which would also put a bias on o_proj).
    pub qkv_bias: bool,
    /// The attention window when the config enables one (Mistral `sliding_window`, Qwen2 with
    /// `use_sliding_window`). Sequences no longer than this see full causal attention, which is
    /// all we implement: see [`ModelConfig::check_seq_len`].
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    /// HF allows one id or a list.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint was saved in (`torch_dtype` / `dtype`), e.g. "bfloat16".
    pub torch_dtype: Option<String>,
    /// Rows of `score.weight` for [`Head::SequenceClassification`] (1 for critics and reward models).
    pub num_labels: usize,
    /// Std of the normal initialisation (HF `initializer_range`).
    pub initializer_range: f64,
    /// The config.json this was read from, so that fields we do not interpret (`transformers_version`,
    /// `use_cache`, `id2label`, ...) survive a load/save round trip.
    pub raw: Map<String, Value>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        ModelConfig::from_json_str(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
        ModelConfig::from_json(&value)
    }

    /// Validates a parsed `config.json`.
    pub fn from_json(value: &Value) -> Result<ModelConfig> {
        let obj = value
            .as_object()
            .context("config.json must be a JSON object")?;
        let f = Fields(obj);

        let model_type = f
            .str("model_type")?
            .context("config.json has no `model_type`")?;
        let arch = Arch::from_model_type(&model_type).with_context(|| {
            format!(
                "model_type = \"{model_type}\" is not supported (expected llama, mistral or qwen2)"
            )
        })?;

        let architectures: Vec<String> = match obj.get("architectures") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .context("`architectures` must be a list of strings")?,
        };
        let head = match architectures.first().map(String::as_str) {
            None => Head::CausalLm,
            Some(a) if a.ends_with("ForCausalLM") => Head::CausalLm,
            Some(a) if a.ends_with("ForSequenceClassification") => Head::SequenceClassification,
            Some(a) => bail!(
                "architectures = [\"{a}\"] is not supported (expected *ForCausalLM or *ForSequenceClassification)"
            ),
        };

        let hidden_size = f.req_usize("hidden_size")?;
        let intermediate_size = f.req_usize("intermediate_size")?;
        let num_hidden_layers = f.req_usize("num_hidden_layers")?;
        let num_attention_heads = f.req_usize("num_attention_heads")?;
        let num_key_value_heads = f
            .usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || num_key_value_heads == 0 {
            bail!("num_attention_heads and num_key_value_heads must be positive");
        }
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            bail!(
                "num_attention_heads = {num_attention_heads} is not a multiple of num_key_value_heads = {num_key_value_heads}"
            );
        }
        let head_dim = match f.usize("head_dim")? {
            Some(d) => d,
            None => {
                if !hidden_size.is_multiple_of(num_attention_heads) {
                    bail!(
                        "hidden_size = {hidden_size} is not divisible by num_attention_heads = {num_attention_heads} and no head_dim is given"
                    );
                }
                hidden_size / num_attention_heads
            }
        };
        if !head_dim.is_multiple_of(2) {
            bail!("head_dim = {head_dim} must be even for rotary embeddings");
        }
        let vocab_size = f.req_usize("vocab_size")?;
        let rms_norm_eps = f.f64("rms_norm_eps")?.unwrap_or(1e-6);
        let max_position_embeddings = f.usize("max_position_embeddings")?.unwrap_or(2048);
        let tie_word_embeddings = f.bool("tie_word_embeddings")?.unwrap_or(match arch {
            // transformers' defaults differ by family only in principle; all three default to false.
            Arch::Llama | Arch::Mistral | Arch::Qwen2 => false,
        });
        let initializer_range = f.f64("initializer_range")?.unwrap_or(0.02);

        // The activation must be SiLU (SwiGLU MLP).
        if let Some(act) = f.str("hidden_act")? {
            if act != "silu" {
                bail!("hidden_act = \"{act}\" is not supported (only silu)");
            }
        }
        if f.bool("mlp_bias")?.unwrap_or(false) {
            bail!("mlp_bias = true is not supported (MLP projections without bias only)");
        }
        let qkv_bias = match arch {
            Arch::Qwen2 => true,
            Arch::Mistral => false,
            Arch::Llama => {
                if f.bool("attention_bias")?.unwrap_or(false) {
                    bail!("attention_bias = true is not supported for llama (it also adds a bias to o_proj)");
                }
                false
            }
        };

        let rope_theta = read_rope(obj)?;

        let sliding_window = match arch {
            Arch::Llama => None,
            Arch::Mistral => f.usize("sliding_window")?,
            Arch::Qwen2 => {
                if f.bool("use_sliding_window")?.unwrap_or(false) {
                    f.usize("sliding_window")?
                } else {
                    None
                }
            }
        };

        let bos_token_id = f.u32("bos_token_id")?;
        let pad_token_id = f.u32("pad_token_id")?;
        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| json_u32(v, "eos_token_id"))
                .collect::<Result<Vec<_>>>()?,
            Some(v) => vec![json_u32(v, "eos_token_id")?],
        };
        let torch_dtype = match f.str("torch_dtype")? {
            Some(s) => Some(s),
            None => f.str("dtype")?,
        };
        let num_labels = match (f.usize("num_labels")?, obj.get("id2label")) {
            (Some(n), _) => n,
            (None, Some(Value::Object(m))) => m.len(),
            // HF's PretrainedConfig default.
            _ => 2,
        };
        if head == Head::SequenceClassification && num_labels == 0 {
            bail!("num_labels = 0: a sequence-classification head needs at least one label");
        }

        let cfg = ModelConfig {
            arch,
            head,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings,
            qkv_bias,
            sliding_window,
            bos_token_id,
            eos_token_ids,
            pad_token_id,
            torch_dtype,
            num_labels,
            initializer_range,
            raw: obj.clone(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks sizes for consistency (also used for configs built in code).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                bail!("{name} = 0 is not a valid model size");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            bail!("rms_norm_eps = {} must be positive", self.rms_norm_eps);
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            bail!("rope_theta = {} must be positive", self.rope_theta);
        }
        Ok(())
    }

    /// A config for a freshly built model of the given family (no `raw` fields).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        arch: Arch,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        vocab_size: usize,
    ) -> ModelConfig {
        ModelConfig {
            arch,
            head: Head::CausalLm,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            vocab_size,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            qkv_bias: arch == Arch::Qwen2,
            sliding_window: None,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            torch_dtype: None,
            num_labels: 1,
            initializer_range: 0.02,
            raw: Map::new(),
        }
    }

    /// Errors when a sequence of `len` tokens would need attention we do not implement (a sliding
    /// window shorter than the sequence).
    pub fn check_seq_len(&self, len: usize) -> Result<()> {
        if let Some(w) = self.sliding_window {
            if len > w {
                bail!(
                    "sequence of {len} tokens is longer than the model's sliding_window = {w}; sliding-window attention is not supported, keep sequences within the window"
                );
            }
        }
        Ok(())
    }

    /// The HF class name for this family and head, e.g. `Qwen2ForSequenceClassification`.
    pub fn architecture(&self) -> String {
        let suffix = match self.head {
            Head::CausalLm => "ForCausalLM",
            Head::SequenceClassification => "ForSequenceClassification",
        };
        format!("{}{suffix}", self.arch.class_prefix())
    }

    /// The same model with a different output head (e.g. a reward model or critic built from a
    /// policy checkpoint: `SequenceClassification` with `num_labels = 1`).
    pub fn with_head(&self, head: Head, num_labels: usize) -> ModelConfig {
        let mut c = self.clone();
        c.head = head;
        c.num_labels = num_labels;
        // id2label in raw would contradict the new num_labels.
        c.raw.remove("id2label");
        c.raw.remove("label2id");
        c
    }

    /// A `config.json` that transformers loads: the fields read at load time are preserved and
    /// every field we interpret is written from this struct. Rope is written in both the
    /// transformers 4 (`rope_theta`) and 5 (`rope_parameters`) forms.
    pub fn to_hf_json(&self) -> Value {
        let mut m = self.raw.clone();
        for k in ["rope_scaling", "torch_dtype", "num_labels"] {
            m.remove(k);
        }
        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        set("architectures", json!([self.architecture()]));
        set("model_type", json!(self.arch.model_type()));
        set("hidden_size", json!(self.hidden_size));
        set("intermediate_size", json!(self.intermediate_size));
        set("num_hidden_layers", json!(self.num_hidden_layers));
        set("num_attention_heads", json!(self.num_attention_heads));
        set("num_key_value_heads", json!(self.num_key_value_heads));
        set("head_dim", json!(self.head_dim));
        set("vocab_size", json!(self.vocab_size));
        set("rms_norm_eps", json!(self.rms_norm_eps));
        set("rope_theta", json!(self.rope_theta));
        set(
            "rope_parameters",
            json!({"rope_type": "default", "rope_theta": self.rope_theta}),
        );
        set(
            "max_position_embeddings",
            json!(self.max_position_embeddings),
        );
        set("tie_word_embeddings", json!(self.tie_word_embeddings));
        set("hidden_act", json!("silu"));
        set("initializer_range", json!(self.initializer_range));
        match self.arch {
            Arch::Llama => {
                set("attention_bias", json!(false));
                set("mlp_bias", json!(false));
            }
            Arch::Mistral => set("sliding_window", json!(self.sliding_window)),
            Arch::Qwen2 => {
                if self.sliding_window.is_none() {
                    set("use_sliding_window", json!(false));
                }
            }
        }
        set("bos_token_id", json!(self.bos_token_id));
        set(
            "eos_token_id",
            match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        );
        set("pad_token_id", json!(self.pad_token_id));
        if let Some(d) = &self.torch_dtype {
            set("dtype", json!(d));
        }
        if self.head == Head::SequenceClassification && !m.contains_key("id2label") {
            let id2label: Map<String, Value> = (0..self.num_labels)
                .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
                .collect();
            let label2id: Map<String, Value> = (0..self.num_labels)
                .map(|i| (format!("LABEL_{i}"), json!(i)))
                .collect();
            m.insert("id2label".into(), Value::Object(id2label));
            m.insert("label2id".into(), Value::Object(label2id));
        }
        Value::Object(m)
    }

    /// Writes [`ModelConfig::to_hf_json`] to `path` (pretty-printed).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_hf_json())?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Number of parameters (including the score head or an untied lm_head).
    pub fn num_params(&self) -> usize {
        crate::params::param_specs(self)
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }
}

/// The rope base frequency, from either config generation; any rope scaling is refused.
fn read_rope(obj: &Map<String, Value>) -> Result<f64> {
    match obj.get("rope_scaling") {
        None | Some(Value::Null) => {}
        Some(v) => bail!("rope_scaling = {v} is not supported (only unscaled rotary embeddings)"),
    }
    let mut theta = match obj.get("rope_theta") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_f64().context("`rope_theta` must be a number")?),
    };
    match obj.get("rope_parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            if let Some(t) = p.get("rope_type").and_then(Value::as_str) {
                if t != "default" {
                    bail!("rope_parameters.rope_type = \"{t}\" is not supported (only default)");
                }
            }
            for k in p.keys() {
                if k != "rope_type" && k != "rope_theta" {
                    bail!(
                        "rope_parameters.{k} = {} is not supported (only rope_theta)",
                        p[k]
                    );
                }
            }
            if let Some(v) = p.get("rope_theta") {
                theta = Some(
                    v.as_f64()
                        .context("`rope_parameters.rope_theta` must be a number")?,
                );
            }
        }
        Some(v) => bail!("rope_parameters = {v} must be an object"),
    }
    Ok(theta.unwrap_or(10000.0))
}

fn json_u32(v: &Value, name: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .with_context(|| format!("{name} = {v} is not a token id"))
}

/// Typed access to optional config fields; a present field of the wrong type is an error naming it.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        match self.0.get(k) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }
    fn usize(&self, k: &str) -> Result<Option<usize>> {
        self.get(k)
            .map(|v| {
                v.as_u64()
                    .map(|x| x as usize)
                    .with_context(|| format!("{k} = {v} must be a non-negative integer"))
            })
            .transpose()
    }
    fn req_usize(&self, k: &str) -> Result<usize> {
        self.usize(k)?
            .with_context(|| format!("config.json has no `{k}`"))
    }
    fn u32(&self, k: &str) -> Result<Option<u32>> {
        self.get(k).map(|v| json_u32(v, k)).transpose()
    }
    fn f64(&self, k: &str) -> Result<Option<f64>> {
        self.get(k)
            .map(|v| {
                v.as_f64()
                    .with_context(|| format!("{k} = {v} must be a number"))
            })
            .transpose()
    }
    fn bool(&self, k: &str) -> Result<Option<bool>> {
        self.get(k)
            .map(|v| {
                v.as_bool()
                    .with_context(|| format!("{k} = {v} must be true or false"))
            })
            .transpose()
    }
    fn str(&self, k: &str) -> Result<Option<String>> {
        self.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .with_context(|| format!("{k} = {v} must be a string"))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOL: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 100000,
        "max_position_embeddings": 8192, "tie_word_embeddings": true, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "rope_scaling": null, "torch_dtype": "bfloat16"
    }"#;

    #[test]
    fn reads_a_llama_config_with_defaults() {
        let c = ModelConfig::from_json_str(SMOL).unwrap();
        assert_eq!(c.arch, Arch::Llama);
        assert_eq!(c.head, Head::CausalLm);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.rope_theta, 100000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert!(c.tie_word_embeddings && !c.qkv_bias);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn round_trips_through_hf_json() {
        let c = ModelConfig::from_json_str(SMOL).unwrap();
        let again = ModelConfig::from_json(&c.to_hf_json()).unwrap();
        assert_eq!(again.rope_theta, c.rope_theta);
        assert_eq!(again.num_key_value_heads, 3);
        assert_eq!(again.head_dim, c.head_dim);
        assert_eq!(again.eos_token_ids, c.eos_token_ids);
    }

    #[test]
    fn reads_transformers5_rope_parameters_and_eos_lists() {
        let text = r#"{"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "eos_token_id": [5, 7], "use_sliding_window": false, "sliding_window": 32,
            "architectures": ["Qwen2ForSequenceClassification"], "id2label": {"0": "LABEL_0"}}"#;
        let c = ModelConfig::from_json_str(text).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.eos_token_ids, vec![5, 7]);
        assert!(c.qkv_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.head, Head::SequenceClassification);
        assert_eq!(c.num_labels, 1);
    }

    fn err_of(patch: &str) -> String {
        let mut v: Value = serde_json::from_str(SMOL).unwrap();
        let p: Value = serde_json::from_str(patch).unwrap();
        for (k, x) in p.as_object().unwrap() {
            v[k] = x.clone();
        }
        format!("{:#}", ModelConfig::from_json(&v).unwrap_err())
    }

    #[test]
    fn unsupported_fields_are_named() {
        assert!(err_of(r#"{"hidden_act": "gelu"}"#).contains("hidden_act = \"gelu\""));
        assert!(err_of(r#"{"mlp_bias": true}"#).contains("mlp_bias"));
        assert!(
            err_of(r#"{"rope_scaling": {"type": "linear", "factor": 2.0}}"#)
                .contains("rope_scaling")
        );
        assert!(err_of(r#"{"model_type": "gpt2"}"#).contains("model_type = \"gpt2\""));
        assert!(err_of(r#"{"num_key_value_heads": 4}"#).contains("num_key_value_heads = 4"));
        assert!(err_of(r#"{"attention_bias": true}"#).contains("attention_bias"));
        assert!(err_of(r#"{"hidden_size": "big"}"#).contains("hidden_size"));
        assert!(
            err_of(r#"{"rope_parameters": {"rope_type": "yarn", "factor": 4}}"#)
                .contains("rope_type = \"yarn\"")
        );
    }

    #[test]
    fn sliding_window_limits_sequence_length() {
        let text = SMOL
            .replace("\"llama\"", "\"mistral\"")
            .replace("\"rope_scaling\": null", "\"sliding_window\": 16");
        let c = ModelConfig::from_json_str(&text).unwrap();
        assert_eq!(c.sliding_window, Some(16));
        assert!(c.check_seq_len(16).is_ok());
        assert!(format!("{:#}", c.check_seq_len(17).unwrap_err()).contains("sliding_window = 16"));
    }
}
