//! Peak-memory estimate per dataflow call, from the model shape, batch sizes and dtype alone:
//! what `realign check` prints and what `train` checks before allocating anything.

use std::path::Path;

use anyhow::{bail, Result};
use model::{Arch, ModelConfig};

use crate::config::{Config, RlReward, StageConfig};
use crate::synthetic::arithmetic;

/// One call's estimate.
#[derive(Clone, Debug)]
pub struct CallEstimate {
    pub stage: usize,
    pub call: &'static str,
    /// Bytes on the compute device at the call's peak.
    pub bytes: u64,
    /// What the bytes are made of.
    pub detail: String,
}

/// The model shape a config trains (the initial policy's).
pub fn model_config(cfg: &Config) -> Result<ModelConfig> {
    if let Some(p) = &cfg.model.path {
        return ModelConfig::from_file(&p.join("config.json"));
    }
    let Some(init) = &cfg.model.init else {
        bail!("`model` needs either `path` or `init`");
    };
    let vocab = 1 + arithmetic::ALPHABET.chars().count();
    let mut m = ModelConfig::new(
        Arch::Llama,
        init.hidden_size,
        init.intermediate_size,
        init.num_hidden_layers,
        init.num_attention_heads,
        init.num_key_value_heads.unwrap_or(init.num_attention_heads),
        vocab,
    );
    m.max_position_embeddings = init.max_position_embeddings;
    m.tie_word_embeddings = init.tie_word_embeddings;
    Ok(m)
}

/// An upper bound on prompt length in tokens: characters of the longest prompt (a token is at
/// least one character for the tokenizers we load).
pub fn max_prompt_chars(cfg: &Config) -> Result<usize> {
    let mut best = 0;
    if let Some(s) = &cfg.data.synthetic {
        let n = s.max_operand.to_string().len();
        best = 2 * n + 2;
    }
    if let Some(p) = &cfg.data.prompts {
        best = best.max(longest_field(p, "prompt")?);
    }
    if let Some(t) = &cfg.data.prompt_template {
        best += t.chars().count();
    }
    Ok(best)
}

fn longest_field(path: &Path, field: &str) -> Result<usize> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v[field].as_str().map(|s| s.chars().count()))
        .max()
        .unwrap_or(0))
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// Estimates every call of every stage.
pub fn estimate(cfg: &Config) -> Result<Vec<CallEstimate>> {
    let m = model_config(cfg)?;
    let bytes_per = if cfg.run.dtype == "bf16" { 2u64 } else { 4 };
    let p = m.num_params() as u64;
    let (c, f, l, v) = (
        m.hidden_size as u64,
        m.intermediate_size as u64,
        m.num_hidden_layers as u64,
        m.vocab_size as u64,
    );
    let (hd, kd) = (
        (m.num_attention_heads * m.head_dim) as u64,
        (m.num_key_value_heads * m.head_dim) as u64,
    );
    let weights = p * bytes_per;
    // Saved per token per layer for the backward: x, xn, q, k, v, att, x2, xn2, gate, up and
    // their SwiGLU product, plus f32 norm statistics and attention lse.
    let saved_per_token = l * (bytes_per * (4 * c + 2 * hd + 2 * kd + 3 * f) + 4 * 3);
    // The LM head keeps its f32 logits from the forward (4 B each, up to LOGITS_CHUNK_ELEMS) and
    // the backward writes d(logits) in the working dtype next to them.
    let logits =
        |tokens: u64| (tokens * v).min(model::llama::LOGITS_CHUNK_ELEMS as u64) * (4 + bytes_per);
    // f32 gradients, and the learner's AdamW state: f32 master weights (kept in f32 runs too)
    // and two f32 moments.
    let optim = p * 4 * 4;
    let prompt = max_prompt_chars(cfg)? as u64;
    let mut out = Vec::new();
    for (i, s) in cfg.stages.iter().enumerate() {
        let mut push = |call: &'static str, bytes: u64, detail: String| {
            out.push(CallEstimate {
                stage: i,
                call,
                bytes,
                detail,
            })
        };
        let train = |tokens: u64| {
            let act = tokens * saved_per_token + logits(tokens);
            (weights + optim + act, act)
        };
        match s {
            StageConfig::Sft(s) => {
                let (b, act) = train(s.micro_batch_tokens as u64);
                push(
                    "sft_train",
                    b,
                    format!(
                        "weights {:.3} GB + grads/AdamW {:.3} GB + activations {:.3} GB",
                        gb(weights),
                        gb(optim),
                        gb(act)
                    ),
                );
            }
            StageConfig::Rm(s) => {
                let (b, act) = train(s.micro_batch_tokens as u64);
                push(
                    "rm_train",
                    b,
                    format!(
                        "weights {:.3} GB + grads/AdamW {:.3} GB + activations {:.3} GB",
                        gb(weights),
                        gb(optim),
                        gb(act)
                    ),
                );
            }
            StageConfig::Rl(s) => {
                let seqs = (s.prompts_per_step * s.samples_per_prompt) as u64;
                let seq_len = prompt + s.generation.max_new_tokens as u64;
                if seq_len > m.max_position_embeddings as u64 {
                    bail!(
                        "stage[{i}]: prompts of up to ~{prompt} tokens plus `generation.max_new_tokens` ({}) exceed the model's context of {} positions",
                        s.generation.max_new_tokens,
                        m.max_position_embeddings
                    );
                }
                let kv = 2 * l * kd * bytes_per * seqs * seq_len;
                let frozen_on_device = if cfg.run.offload_frozen { 0 } else { 1 };
                let rm = matches!(s.reward, RlReward::Model(_)) as u64;
                let critic = s.algorithm.needs_critic() as u64;
                // Resident between calls: policy (+ optimiser), critic (+ optimiser), and the
                // frozen reference / reward model unless they wait in host memory.
                let resident = weights
                    + optim
                    + critic * (weights + optim)
                    + frozen_on_device * (1 + rm) * weights;
                push("actor_gen", resident + kv + seqs * v * 4, format!("resident {:.3} GB + KV cache {:.3} GB ({seqs} sequences × {seq_len} tokens)", gb(resident), gb(kv)));
                let mbt = s.micro_batch_tokens as u64;
                let infer = mbt * bytes_per * (3 * c + 2 * f) + logits(mbt);
                let moved_in = (1 - frozen_on_device) * weights;
                push(
                    "ref_inf",
                    resident + moved_in + infer,
                    format!(
                        "resident {:.3} GB + activations {:.3} GB",
                        gb(resident + moved_in),
                        gb(infer)
                    ),
                );
                if rm == 1 {
                    push(
                        "reward_inf",
                        resident + moved_in + infer,
                        format!(
                            "resident {:.3} GB + activations {:.3} GB",
                            gb(resident + moved_in),
                            gb(infer)
                        ),
                    );
                }
                let act = mbt * saved_per_token + logits(mbt);
                push(
                    "actor_train",
                    resident + act,
                    format!(
                        "resident {:.3} GB + activations {:.3} GB",
                        gb(resident),
                        gb(act)
                    ),
                );
                if critic == 1 {
                    push(
                        "critic_train",
                        resident + mbt * saved_per_token,
                        format!(
                            "resident {:.3} GB + activations {:.3} GB",
                            gb(resident),
                            gb(mbt * saved_per_token)
                        ),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Host memory (Linux `MemTotal`), for refusing CPU runs that cannot fit.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Errors when the largest call cannot fit in the device's memory (CPU: host memory; GPU:
/// `gpu_bytes` when known).
pub fn check_fits(cfg: &Config, est: &[CallEstimate], gpu_bytes: Option<u64>) -> Result<()> {
    let Some(worst) = est.iter().max_by_key(|e| e.bytes) else {
        return Ok(());
    };
    let limit = if cfg.run.device == "cpu" {
        host_memory_bytes()
    } else {
        gpu_bytes
    };
    if let Some(limit) = limit {
        if worst.bytes > limit {
            bail!(
                "stage[{}] call {} needs about {:.2} GB but {} has {:.2} GB; lower the batch or micro-batch sizes, or set run.offload_frozen",
                worst.stage,
                worst.call,
                gb(worst.bytes),
                cfg.run.device,
                gb(limit)
            );
        }
    }
    Ok(())
}
