//! Preference pairs made from the policy's own samples: the policy answers RL prompts several
//! times, each answer is checked against the prompt's reference answer (numeric match), and a
//! right answer is paired with each distinct wrong one. This is how InstructGPT collected its
//! comparisons (outputs of the SFT model, ranked), with the answer check as the labeller.
//!
//! Why: a reward model trained only on hand-made rejections (near misses, garbage) has never seen
//! the particular mistakes the policy makes, and RL finds the ones it scores too high (reward
//! up, accuracy down). Pairs from the policy's own distribution cover exactly those mistakes.
//!
//! The samples are a function of the policy's weights and the run's seed, so a resumed stage
//! rebuilds the same pairs.

use std::collections::BTreeMap;

use anyhow::Result;

use super::common::answer_matches;
use crate::config::PolicyPairs;
use crate::data::PrefRow;
use crate::generation::{engine_config, generate, requests, sample_of, sampling_params};
use crate::models::Model;
use crate::run::Run;

/// The pairs, and `rm/policy_pairs` (how many), `rm/policy_sample_accuracy` (share of right
/// samples).
pub fn policy_pairs(
    run: &Run,
    policy: &Model,
    cfg: &PolicyPairs,
    seed: u64,
) -> Result<(Vec<PrefRow>, BTreeMap<String, f64>)> {
    let key = &run.cfg.data.answer_key;
    let rows: Vec<_> = run
        .data
        .prompts
        .iter()
        .filter(|r| r.extra.contains_key(key))
        .take(cfg.prompts)
        .collect();
    anyhow::ensure!(
        !rows.is_empty(),
        "`policy_pairs` needs RL prompts with a `{key}` field (the reference answer); none has one"
    );
    let g = &cfg.generation;
    let sampling = sampling_params(g, &run.tok.eos_ids);
    let requests = requests(run, &rows, &sampling, cfg.samples_per_prompt, seed)?;
    let (completions, _) = generate(policy, &engine_config(g), &requests)?;
    let samples = completions
        .iter()
        .map(|c| sample_of(&run.tok, rows[c.request], &requests[c.request], c))
        .collect::<Result<Vec<_>>>()?;
    let right = answer_matches(key, &samples)?;

    // Completions come ordered by request, then sample.
    let mut pairs = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let group: Vec<usize> = (0..samples.len())
            .filter(|&k| completions[k].request == r)
            .collect();
        let Some(&chosen) = group.iter().find(|&&k| right[k]) else {
            continue;
        };
        let mut seen = std::collections::BTreeSet::new();
        for &k in group.iter().filter(|&&k| !right[k]) {
            if seen.insert(samples[k].response.clone()) {
                pairs.push(PrefRow {
                    prompt: row.prompt.clone(),
                    chosen: samples[chosen].response.clone(),
                    rejected: samples[k].response.clone(),
                });
            }
        }
    }
    let mut metrics = BTreeMap::new();
    metrics.insert("rm/policy_pairs".into(), pairs.len() as f64);
    metrics.insert(
        "rm/policy_sample_accuracy".into(),
        right.iter().filter(|&&x| x).count() as f64 / right.len().max(1) as f64,
    );
    tracing::info!(
        pairs = pairs.len(),
        prompts = rows.len(),
        "preference pairs from the policy's own samples"
    );
    Ok((pairs, metrics))
}
