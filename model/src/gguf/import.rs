//! GGUF -> Hugging Face folder: dequantised weights in HF layout, config.json, and the tokenizer
//! files, so the rest of realign (and transformers) reads the model like any HF checkpoint.

use anyhow::{bail, Context, Result};
use kernels::{DType, Device};
use std::collections::BTreeSet;
use std::path::Path;

use super::reader::{GgufFile, MetaValue, TensorInfo};
use super::vocab::{generation_config_json, tokenizer_config_json, tokenizer_json, SpecialIds};
use crate::config::{Arch, ModelConfig};
use crate::io::{save_model, write_atomically};
use crate::params::{host_tensor, Params};

/// What an import wrote.
#[derive(Debug)]
pub struct ImportSummary {
    pub config: ModelConfig,
    pub num_params: usize,
    /// (ggml type, number of tensors) found in the file.
    pub tensor_types: Vec<(String, usize)>,
}

/// Reads the model hyper-parameters from the GGUF metadata (`{arch}.*` keys).
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch_name = g.get_str("general.architecture")?;
    let arch = match arch_name {
        "llama" => Arch::Llama,
        other => bail!("general.architecture = \"{other}\" is not supported (only llama)"),
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let u = |k: &str| -> Result<usize> { Ok(g.get_u64(&key(k))? as usize) };
    if let Some(v) = g.get(&key("rope.scaling.type")) {
        if v.as_str() != Some("none") {
            bail!(
                "{} = {v:?} is not supported (only unscaled rope)",
                key("rope.scaling.type")
            );
        }
    }
    let hidden = u("embedding_length")?;
    let heads = u("attention.head_count")?;
    let kv_heads = match g.get(&key("attention.head_count_kv")) {
        Some(_) => u("attention.head_count_kv")?,
        None => heads,
    };
    let vocab = match g.get(&key("vocab_size")) {
        Some(_) => u("vocab_size")?,
        None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
    };
    let mut cfg = ModelConfig::new(
        arch,
        hidden,
        u("feed_forward_length")?,
        u("block_count")?,
        heads,
        kv_heads,
        vocab,
    );
    // head_dim: key_length when given, else the rope dimension (llama.cpp rotates whole heads),
    // else C / H.
    for k in ["attention.key_length", "rope.dimension_count"] {
        if g.get(&key(k)).is_some() {
            cfg.head_dim = u(k)?;
            break;
        }
    }
    if let Some(v) = g.get(&key("attention.value_length")) {
        if v.as_u64() != Some(cfg.head_dim as u64) {
            bail!(
                "{} = {v:?} differs from the key length {}",
                key("attention.value_length"),
                cfg.head_dim
            );
        }
    }
    cfg.rms_norm_eps = g.get_f64(&key("attention.layer_norm_rms_epsilon"))?;
    // GGUF stores eps as f32 (1e-5 reads back as 9.99999974e-6); HF configs carry the decimal
    // value, so round to the nearest short decimal f32 would print as.
    cfg.rms_norm_eps = shortest_f32_decimal(cfg.rms_norm_eps);
    cfg.rope_theta = match g.get(&key("rope.freq_base")) {
        Some(v) => shortest_f32_decimal(v.as_f64().context("rope.freq_base is not a number")?),
        None => 10000.0,
    };
    if let Some(v) = g.get(&key("context_length")) {
        cfg.max_position_embeddings =
            v.as_u64().context("context_length is not an integer")? as usize;
    }
    cfg.tie_word_embeddings = g.tensor("output.weight").is_none();
    let special = SpecialIds::read(g)?;
    cfg.bos_token_id = special.bos;
    cfg.eos_token_ids = special.eos.into_iter().collect();
    cfg.pad_token_id = special.pad;
    cfg.validate()?;
    Ok(cfg)
}

/// The f64 value of the shortest decimal that reads back as the same f32 (what Python prints for
/// `float(np.float32(x))` rounded to f32 precision).
fn shortest_f32_decimal(x: f64) -> f64 {
    format!("{}", x as f32).parse().unwrap_or(x)
}

/// Imports `gguf` into the HF-layout folder `out` with weights stored as `dtype`.
pub fn import_gguf(gguf: &Path, out: &Path, dtype: DType) -> Result<ImportSummary> {
    let g = GgufFile::open(gguf)?;
    for line in describe_metadata(&g) {
        tracing::debug!("GGUF metadata {line}");
    }
    let cfg = config_from_gguf(&g)
        .with_context(|| format!("reading the model config from {}", gguf.display()))?;
    tracing::info!(
        layers = cfg.num_hidden_layers,
        hidden = cfg.hidden_size,
        heads = cfg.num_attention_heads,
        kv_heads = cfg.num_key_value_heads,
        vocab = cfg.vocab_size,
        tied = cfg.tie_word_embeddings,
        "GGUF model"
    );

    let mut used = BTreeSet::new();
    let params = Params::build(&cfg, |spec| {
        let gguf_name = gguf_tensor_name(&spec.name)
            .with_context(|| format!("no GGUF name for {}", spec.name))?;
        let info = g
            .tensor(&gguf_name)
            .with_context(|| format!("GGUF tensor {gguf_name} (for {}) is missing", spec.name))?;
        if info.shape != spec.shape {
            bail!(
                "GGUF tensor {gguf_name} has shape {:?}, but the metadata implies {:?}",
                info.shape,
                spec.shape
            );
        }
        used.insert(gguf_name.clone());
        let mut data = g.dequantize(info)?;
        // llama.cpp stores q and k rows permuted per head (see `unpermute_rows`).
        if gguf_name.ends_with("attn_q.weight") {
            data = unpermute_rows(&data, info, cfg.num_attention_heads)?;
        } else if gguf_name.ends_with("attn_k.weight") {
            data = unpermute_rows(&data, info, cfg.num_key_value_heads)?;
        }
        Ok(host_tensor(data, &spec.shape, dtype)?.to_device(&Device::Cpu)?)
    })?;
    let unused: Vec<&str> = g
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !used.contains(*n))
        .collect();
    if !unused.is_empty() {
        bail!(
            "{} has tensors this importer does not understand: {unused:?}",
            gguf.display()
        );
    }

    let special = SpecialIds::read(&g)?;
    let tok = tokenizer_json(&g, &special)?;
    let tok_cfg = tokenizer_config_json(&g, &special, cfg.max_position_embeddings)?;
    let gen_cfg = generation_config_json(&special);

    save_model(out, &cfg, &params)?;
    for (name, value) in [
        ("tokenizer.json", tok),
        ("tokenizer_config.json", tok_cfg),
        ("generation_config.json", gen_cfg),
    ] {
        let text = serde_json::to_string_pretty(&value)? + "\n";
        write_atomically(&out.join(name), |tmp| Ok(std::fs::write(tmp, &text)?))?;
    }

    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for t in &g.tensors {
        *counts.entry(format!("{:?}", t.ggml_type)).or_default() += 1;
    }
    Ok(ImportSummary {
        num_params: params.numel(),
        config: cfg,
        tensor_types: counts.into_iter().collect(),
    })
}

/// The llama.cpp tensor name of an HF parameter name.
fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let g = match suffix {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// Undoes llama.cpp's per-head row permutation of q_proj / k_proj.
///
/// HF Llama rotates the two halves of each head (`rotate_half`: dim i pairs with i + D/2); llama.cpp
/// rotates adjacent pairs (2i, 2i+1). Its converter therefore reorders each head's D rows so that
/// HF row `half * D/2 + i` is stored at GGUF row `2 * i + half`. We read it back the other way.
pub fn unpermute_rows(data: &[f32], info: &TensorInfo, n_heads: usize) -> Result<Vec<f32>> {
    let (rows, cols) = match info.shape[..] {
        [r, c] => (r, c),
        _ => bail!("{} is not a matrix", info.name),
    };
    if n_heads == 0 || !rows.is_multiple_of(2 * n_heads) {
        bail!(
            "{}: {rows} rows do not split into {n_heads} heads of even size",
            info.name
        );
    }
    let d = rows / n_heads; // head dim D
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for half in 0..2 {
            for i in 0..d / 2 {
                let hf_row = h * d + half * (d / 2) + i;
                let gguf_row = h * d + 2 * i + half;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// A readable summary of a GGUF file's metadata (large arrays shortened), for `--verbose` output
/// and error reports.
pub fn describe_metadata(g: &GgufFile) -> Vec<String> {
    g.metadata
        .iter()
        .map(|(k, v)| match v {
            MetaValue::Array(a) => format!("{k}: array of {}", a.len()),
            MetaValue::String(s) if s.len() > 80 => {
                format!("{k}: {:?}...", &s[..s.floor_char_boundary(80)])
            }
            other => format!("{k}: {other:?}"),
        })
        .collect()
}
