//! The rollout loop: schedule a step, run the model, sample, repeat until every sample finished.
//! The KV cache exists only inside [`run_rollout`]: it is allocated at the start and released
//! completely at the end (also on error), so training can use that memory.

use anyhow::Context;

use crate::block_manager::{BlockManager, SeqId};
use crate::request::{Completion, Request, RolloutStats};
use crate::sampling::sample_rng;
use crate::scheduler::{Scheduler, SchedulerLimits};
use crate::step_model::StepModel;

/// Shape of the KV pool and of each step.
#[derive(Debug, Clone, Copy)]
pub struct RolloutConfig {
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_batch_tokens: usize,
    pub max_running: usize,
    /// Let the n samples of a prompt share its KV blocks (one prefill). Off: each sample prefills
    /// its own copy (the reference the sharing is tested against).
    pub share_prefixes: bool,
}

/// Generates every sample of every request. Completions come back ordered by request, then sample.
pub fn run_rollout(
    model: &mut dyn StepModel,
    requests: &[Request],
    cfg: &RolloutConfig,
) -> anyhow::Result<(Vec<Completion>, RolloutStats)> {
    validate(model, requests)?;
    anyhow::ensure!(
        cfg.num_blocks > 0,
        "the KV cache budget holds no block of {} tokens; raise the KV budget",
        cfg.block_size
    );
    model
        .alloc_cache(cfg.num_blocks, cfg.block_size)
        .with_context(|| {
            format!(
                "allocating the KV cache ({} blocks of {} tokens)",
                cfg.num_blocks, cfg.block_size
            )
        })?;
    let result = generate_all(model, requests, cfg);
    model.free_cache();
    result
}

fn validate(model: &dyn StepModel, requests: &[Request]) -> anyhow::Result<()> {
    let vocab = model.vocab_size();
    for (i, r) in requests.iter().enumerate() {
        r.sampling
            .validate()
            .with_context(|| format!("request {i} has bad sampling parameters"))?;
        anyhow::ensure!(r.n >= 1, "request {i} asks for n = 0 samples");
        anyhow::ensure!(!r.tokens.is_empty(), "request {i} has an empty prompt");
        anyhow::ensure!(
            r.tokens.len() < model.max_context(),
            "request {i}: prompt of {} tokens leaves no room in the model's context of {}",
            r.tokens.len(),
            model.max_context()
        );
        if let Some(&t) = r.tokens.iter().find(|&&t| t as usize >= vocab) {
            anyhow::bail!("request {i} has token id {t}, outside the vocabulary of {vocab}");
        }
    }
    Ok(())
}

fn generate_all(
    model: &mut dyn StepModel,
    requests: &[Request],
    cfg: &RolloutConfig,
) -> anyhow::Result<(Vec<Completion>, RolloutStats)> {
    let limits = SchedulerLimits {
        max_batch_tokens: cfg.max_batch_tokens,
        max_running: cfg.max_running,
        max_context: model.max_context(),
    };
    let mut sched = Scheduler::new(limits, BlockManager::new(cfg.num_blocks, cfg.block_size));
    for r in requests {
        let rngs = (0..r.n).map(|i| sample_rng(r.seed, i)).collect();
        sched.add_request(&r.tokens, r.sampling.clone(), rngs, cfg.share_prefixes)?;
    }
    let vocab = model.vocab_size();
    let mut stats = RolloutStats {
        kv_blocks: cfg.num_blocks,
        block_size: cfg.block_size,
        kv_bytes_per_block: model.kv_bytes_per_block(cfg.block_size),
        ..Default::default()
    };
    while sched.has_work() {
        let plan = sched.schedule();
        stats.preemptions += plan.preempted;
        if plan.is_empty() {
            anyhow::ensure!(
                !sched.has_work() || !plan.finished.is_empty(),
                "internal error: the scheduler made no progress"
            );
            continue;
        }
        stats.steps += 1;
        if !plan.copies.is_empty() {
            stats.block_copies += plan.copies.len();
            model.copy_blocks(&plan.copies)?;
        }
        let mut prefilled: Vec<SeqId> = Vec::new();
        if !plan.prefill_groups.is_empty() {
            stats.prefill_tokens += plan.prefill.tokens.len();
            let logits = model.prefill(&plan.prefill).context("prefill step")?;
            anyhow::ensure!(logits.len() == plan.prefill_groups.len() * vocab);
            for (row, group) in plan.prefill_groups.iter().enumerate() {
                for &id in group {
                    sched.sample_next(id, &logits[row * vocab..(row + 1) * vocab]);
                    prefilled.push(id);
                }
            }
        }
        if !plan.decode_seqs.is_empty() {
            stats.decode_tokens += plan.decode_seqs.len();
            let logits = model.decode(&plan.decode).context("decode step")?;
            anyhow::ensure!(logits.len() == plan.decode_seqs.len() * vocab);
            for (row, &id) in plan.decode_seqs.iter().enumerate() {
                sched.sample_next(id, &logits[row * vocab..(row + 1) * vocab]);
            }
        }
        sched.update_running(&prefilled);
    }
    stats.peak_kv_blocks = sched.blocks.peak_used();
    stats.peak_kv_bytes = stats.peak_kv_blocks * stats.kv_bytes_per_block;
    let mut seqs: Vec<_> = sched.seqs.into_values().collect();
    seqs.sort_by_key(|s| (s.request, s.sample));
    let completions = seqs
        .into_iter()
        .map(|s| Completion {
            request: s.request,
            sample: s.sample,
            tokens: s.tokens[s.prompt_len..].to_vec(),
            logprobs: s.logprobs,
            finish_reason: s.finish.expect("every sequence finished"),
        })
        .collect();
    Ok((completions, stats))
}
