//! actor_gen: the actor crate's rollout engine (paged KV cache, continuous batching, prefix sharing
//! of a prompt's samples, sampling with log-probs) over the policy's working weights.
//!
//! The engine reads the very `Params` the learner trains (no copy), allocates its KV pool at the
//! start of each call and releases it before returning, so the memory is free again for training.

use actor::{Completion, Engine, EngineConfig, KvBudget, Request, RolloutStats};
use anyhow::Result;

use crate::config::GenerationConfig;
use crate::models::Model;

/// Engine settings of a stage's generation config: the KV budget in bytes when given, else a
/// fraction of the device's free memory.
pub fn engine_config(g: &GenerationConfig) -> EngineConfig {
    EngineConfig {
        kv_budget: match g.kv_cache_bytes {
            Some(b) => KvBudget::Bytes(b as usize),
            None => KvBudget::FreeFraction(g.kv_cache_fraction),
        },
        ..EngineConfig::default()
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
