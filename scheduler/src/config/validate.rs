//! Checks that need no model weights: everything a config can get wrong is reported here, before any
//! allocation, as one sentence naming the key.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::schema::{Algorithm, Config, StageConfig};

/// Validates `cfg`; relative paths are resolved against the current directory.
pub fn validate(cfg: &Config) -> Result<()> {
    if cfg.run.name.trim().is_empty() {
        bail!("`run.name` must not be empty");
    }
    if !matches!(cfg.run.dtype.as_str(), "f32" | "bf16") {
        bail!("`run.dtype` is `{}`; expected f32 or bf16", cfg.run.dtype);
    }
    let cuda_n = cfg
        .run
        .device
        .strip_prefix("cuda:")
        .is_some_and(|n| n.parse::<usize>().is_ok());
    if !(matches!(cfg.run.device.as_str(), "cpu" | "cuda" | "gpu") || cuda_n) {
        bail!(
            "`run.device` is `{}`; expected cpu, cuda or cuda:N",
            cfg.run.device
        );
    }
    if cfg.run.dtype == "bf16" && cfg.run.device == "cpu" {
        bail!("`run.dtype` is `bf16` but `run.device` is `cpu`: the CPU backend computes in f32; use dtype f32 on the CPU or a cuda device for bf16");
    }
    match (&cfg.model.path, &cfg.model.init) {
        (Some(_), Some(_)) => bail!("`model` sets both `path` and `init`; choose one"),
        (None, None) => {
            bail!("`model` needs either `path` (an HF folder) or `init` (a fresh model)")
        }
        (Some(p), None) => check_model_folder(p)?,
        (None, Some(init)) => {
            if init.hidden_size % init.num_attention_heads != 0 {
                bail!(
                    "`model.init.hidden_size` ({}) is not divisible by `num_attention_heads` ({})",
                    init.hidden_size,
                    init.num_attention_heads
                );
            }
            let kv = init.num_key_value_heads.unwrap_or(init.num_attention_heads);
            if kv == 0 || init.num_attention_heads % kv != 0 {
                bail!(
                    "`model.init.num_key_value_heads` ({kv}) must divide `num_attention_heads` ({})",
                    init.num_attention_heads
                );
            }
            if init.tokenizer != "chars" {
                bail!(
                    "`model.init.tokenizer` is `{}`; only `chars` is supported",
                    init.tokenizer
                );
            }
            if cfg.data.synthetic.is_none() {
                bail!("`model.init` builds a tokenizer for a synthetic task, so `data.synthetic` must be set");
            }
        }
    }
    let d = &cfg.data;
    for (key, path) in [
        ("data.prompts", &d.prompts),
        ("data.eval_prompts", &d.eval_prompts),
        ("data.sft", &d.sft),
        ("data.preferences", &d.preferences),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                bail!("`{key}`: file {} does not exist", p.display());
            }
        }
    }
    if let Some(s) = &d.synthetic {
        if s.task != "arithmetic" {
            bail!(
                "`data.synthetic.task` is `{}`; only `arithmetic` exists",
                s.task
            );
        }
        if s.train_size == 0 {
            bail!("`data.synthetic.train_size` must be positive");
        }
    }
    if cfg.stages.is_empty() {
        bail!("the config has no `[[stage]]`");
    }
    for (i, stage) in cfg.stages.iter().enumerate() {
        validate_stage(cfg, i, stage)?;
    }
    Ok(())
}

fn validate_stage(cfg: &Config, i: usize, stage: &StageConfig) -> Result<()> {
    let at = |key: &str| format!("stage[{i}].{key}");
    let has_synthetic = cfg.data.synthetic.is_some();
    match stage {
        StageConfig::Sft(s) => {
            if s.steps == 0 || s.batch_size == 0 {
                bail!(
                    "`{}` and `{}` must be positive",
                    at("steps"),
                    at("batch_size")
                );
            }
            if cfg.data.sft.is_none() && !has_synthetic {
                bail!("stage[{i}] is `sft` but neither `data.sft` nor `data.synthetic` is set");
            }
        }
        StageConfig::Rm(s) => {
            if s.steps == 0 || s.batch_size == 0 {
                bail!(
                    "`{}` and `{}` must be positive",
                    at("steps"),
                    at("batch_size")
                );
            }
            if cfg.data.preferences.is_none() && !has_synthetic {
                bail!(
                    "stage[{i}] is `rm` but neither `data.preferences` nor `data.synthetic` is set"
                );
            }
            if !(0.0..=1.0).contains(&s.cross_prompt_pairs) {
                bail!("`{}` must be in [0, 1]", at("cross_prompt_pairs"));
            }
            if let Some(pp) = &s.policy_pairs {
                if pp.prompts == 0 || pp.samples_per_prompt < 2 {
                    bail!(
                        "`{}` must be positive and `{}` at least 2",
                        at("policy_pairs.prompts"),
                        at("policy_pairs.samples_per_prompt")
                    );
                }
                if cfg.data.prompts.is_none() && !has_synthetic {
                    bail!("`{}` needs prompts with reference answers, but neither `data.prompts` nor `data.synthetic` is set", at("policy_pairs"));
                }
                if pp.generation.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
                {
                    bail!(
                        "`{}` must be > 0",
                        at("policy_pairs.generation.temperature")
                    );
                }
            }
        }
        StageConfig::Rl(s) => {
            if s.steps == 0 || s.prompts_per_step == 0 || s.mini_batch_size == 0 {
                bail!(
                    "`{}`, `{}` and `{}` must be positive",
                    at("steps"),
                    at("prompts_per_step"),
                    at("mini_batch_size")
                );
            }
            let batch = s.prompts_per_step * s.samples_per_prompt;
            if batch % s.mini_batch_size != 0 {
                bail!(
                    "`{}` ({}) does not divide the rollout batch (prompts_per_step {} × samples_per_prompt {} = {batch})",
                    at("mini_batch_size"),
                    s.mini_batch_size,
                    s.prompts_per_step,
                    s.samples_per_prompt
                );
            }
            if matches!(s.algorithm, Algorithm::Grpo | Algorithm::Rloo) && s.samples_per_prompt < 2
            {
                bail!(
                    "`{}` is {} but {} compares samples within a group, so it needs at least 2",
                    at("samples_per_prompt"),
                    s.samples_per_prompt,
                    s.algorithm.name()
                );
            }
            if cfg.data.prompts.is_none() && !has_synthetic {
                bail!("stage[{i}] is RL but neither `data.prompts` nor `data.synthetic` is set");
            }
            // Written so that NaN fails too.
            if s.generation.temperature.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                bail!("`{}` must be > 0", at("generation.temperature"));
            }
            if !(s.generation.top_p > 0.0 && s.generation.top_p <= 1.0) {
                bail!("`{}` must be in (0, 1]", at("generation.top_p"));
            }
            if s.generation.max_batch_tokens == Some(0) || s.generation.max_running == Some(0) {
                bail!(
                    "`{}` and `{}` must be positive when given",
                    at("generation.max_batch_tokens"),
                    at("generation.max_running")
                );
            }
            if !(s.generation.kv_cache_fraction > 0.0 && s.generation.kv_cache_fraction <= 1.0) {
                bail!("`{}` must be in (0, 1]", at("generation.kv_cache_fraction"));
            }
            if s.generation.max_new_tokens == 0 {
                bail!("`{}` must be positive", at("generation.max_new_tokens"));
            }
            if !matches!(s.critic_init.as_str(), "reward_model" | "policy") {
                bail!(
                    "`{}` is `{}`; expected reward_model or policy",
                    at("critic_init"),
                    s.critic_init
                );
            }
            if !matches!(s.kl_mode.as_str(), "reward" | "loss") {
                bail!(
                    "`{}` is `{}`; expected reward or loss",
                    at("kl_mode"),
                    s.kl_mode
                );
            }
            if !matches!(s.kl_estimator.as_str(), "k1" | "k2" | "k3") {
                bail!(
                    "`{}` is `{}`; expected k1, k2 or k3",
                    at("kl_estimator"),
                    s.kl_estimator
                );
            }
            if !matches!(
                s.loss_agg.as_str(),
                "token_mean" | "seq_mean_token_mean" | "seq_mean_token_sum" | "token_sum_norm"
            ) {
                bail!("`{}` is `{}`; expected token_mean, seq_mean_token_mean, seq_mean_token_sum or token_sum_norm", at("loss_agg"), s.loss_agg);
            }
        }
    }
    Ok(())
}

/// An HF folder must hold config.json, weights and a tokenizer whose ids fit the model's vocab.
fn check_model_folder(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!("`model.path`: folder {} does not exist", dir.display());
    }
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("`model.path`: cannot read {}", config.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("`model.path`: {} is not valid JSON", config.display()))?;
    let vocab = json["vocab_size"]
        .as_u64()
        .with_context(|| format!("`model.path`: {} has no vocab_size", config.display()))?;
    if !dir.join("model.safetensors").is_file()
        && !dir.join("model.safetensors.index.json").is_file()
    {
        bail!(
            "`model.path`: {} has no model.safetensors or model.safetensors.index.json",
            dir.display()
        );
    }
    let tok = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&tok)
        .with_context(|| format!("`model.path`: cannot read {}", tok.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("`model.path`: {} is not valid JSON", tok.display()))?;
    let max_id = max_token_id(&json);
    if let Some(max_id) = max_id {
        if max_id >= vocab {
            bail!(
                "model and tokenizer do not match: {} has token id {max_id} but the model's vocab_size is {vocab}",
                tok.display()
            );
        }
    }
    Ok(())
}

/// The largest id in a tokenizer.json (model vocab and added tokens).
fn max_token_id(json: &serde_json::Value) -> Option<u64> {
    let from_vocab = json["model"]["vocab"]
        .as_object()
        .and_then(|m| m.values().filter_map(|v| v.as_u64()).max());
    let from_added = json["added_tokens"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|t| t["id"].as_u64()).max());
    from_vocab.max(from_added)
}
