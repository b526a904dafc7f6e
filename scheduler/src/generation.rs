//! actor_gen: the actor crate's rollout engine (paged KV cache, continuous batching, prefix sharing
//! of a prompt's samples, sampling with log-probs) over the policy's working weights.
//!
//! The engine reads the very `Params` the learner trains (no copy), allocates its KV pool at the
//! start of each call and releases it before returning, so the memory is free again for training.

use actor::{Completion, Engine, EngineConfig, KvBudget, Request, RolloutStats, SamplingParams};
use anyhow::Result;

use crate::config::GenerationConfig;
use crate::data::PromptRow;
use crate::models::Model;
use crate::run::Run;
use crate::stages::common::step_seed;

/// Engine settings of a stage's generation config: the KV budget in bytes when given, else a
/// fraction of the device's free memory.
pub fn engine_config(g: &GenerationConfig) -> EngineConfig {
    let d = EngineConfig::default();
    EngineConfig {
        kv_budget: match g.kv_cache_bytes {
            Some(b) => KvBudget::Bytes(b as usize),
            None => KvBudget::FreeFraction(g.kv_cache_fraction),
        },
        max_batch_tokens: g.max_batch_tokens.unwrap_or(d.max_batch_tokens),
        max_running: g.max_running.unwrap_or(d.max_running),
        ..d
    }
}

/// Generates every request's samples with `model`; completions come back ordered by request, then
/// sample.
pub fn generate(
    model: &Model,
    cfg: &EngineConfig,
    requests: &[Request],
) -> Result<(Vec<Completion>, RolloutStats)> {
    let engine = Engine::new(model.cfg.clone(), cfg.clone())?;
    engine.generate_with_stats(&model.params, requests)
}

/// How a stage samples: its generation config, stopping at the tokenizer's EOS ids and the
/// config's extra stop ids.
pub fn sampling_params(g: &GenerationConfig, eos_ids: &[u32]) -> SamplingParams {
    let mut stop_token_ids = eos_ids.to_vec();
    stop_token_ids.extend(&g.stop_token_ids);
    SamplingParams {
        temperature: g.temperature as f32,
        top_k: g.top_k,
        top_p: g.top_p as f32,
        min_new_tokens: g.min_new_tokens,
        max_new_tokens: g.max_new_tokens,
        stop_token_ids,
    }
}

/// One request of `n` samples per row; request j draws from a seed derived from `seed` and j.
pub fn requests(
    run: &Run,
    rows: &[&PromptRow],
    sampling: &SamplingParams,
    n: usize,
    seed: u64,
) -> Result<Vec<Request>> {
    rows.iter()
        .enumerate()
        .map(|(j, r)| {
            Ok(Request {
                tokens: run.encode_prompt(&r.prompt)?,
                sampling: sampling.clone(),
                n,
                seed: step_seed(seed, 0, j as u64, 3),
            })
        })
        .collect()
}

/// The completion `c` of `request` (for `row`) as the reward crate's sample.
pub fn sample_of(
    tok: &model::tokenizer::Tokenizer,
    row: &PromptRow,
    request: &Request,
    c: &Completion,
) -> Result<reward::Sample> {
    Ok(reward::Sample {
        prompt: row.prompt.clone(),
        prompt_tokens: request.tokens.clone(),
        response: tok.decode(&c.tokens, true)?,
        response_tokens: c.tokens.clone(),
        finish_reason: match c.finish_reason {
            actor::FinishReason::Stop => reward::FinishReason::Stop,
            _ => reward::FinishReason::Length,
        },
        extra: row.extra.clone(),
    })
}
