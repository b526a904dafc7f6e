//! What every stage does around its steps: progress bar, metric averaging over mini-batches,
//! evaluation on held-out prompts, and the step seeds.

use std::collections::BTreeMap;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use actor::EngineConfig;

use crate::data::PromptRow;
use crate::generation::{generate, requests, sample_of};
use crate::models::Model;
use crate::run::Run;

/// Ends a training step of a stage of `steps` steps: logs its metrics, moves the bar, and runs
/// `save` every `checkpoint_every` steps before the last (the stage's end writes the last one).
pub fn end_step(
    run: &mut Run,
    pb: &ProgressBar,
    metrics: &BTreeMap<String, f64>,
    steps: u64,
    save: impl FnOnce(&mut Run) -> Result<()>,
) -> Result<()> {
    run.log.log_metrics(run.state.global_step, metrics)?;
    let k = run.state.stage_step;
    pb.set_position(k);
    pb.set_message(progress_message(metrics));
    let every = run.cfg.run.checkpoint_every;
    if every > 0 && k.is_multiple_of(every) && k < steps {
        save(run)?;
    }
    Ok(())
}

/// A progress bar with ETA and the key metrics; hidden when `show` is false.
pub fn progress_bar(show: bool, label: &str, total: u64, done: u64) -> ProgressBar {
    let pb = if show {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {bar:30} {pos}/{len} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(label.to_string());
    pb.set_position(done);
    pb
}

/// The bar's message: the metrics a user watches, when present.
pub fn progress_message(m: &BTreeMap<String, f64>) -> String {
    let keys = [
        "reward/mean",
        "kl/mean",
        "actor/pg_loss",
        "eval/accuracy",
        "sft/loss",
        "rm/loss",
        "rm/accuracy",
    ];
    keys.iter()
        .filter_map(|k| m.get(*k).map(|v| format!("{k}={v:.4}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Averages per-optimiser-step metrics over the steps of one training call (`*_max` keep the
/// maximum).
#[derive(Default)]
pub struct StepAverage {
    sums: BTreeMap<String, (f64, f64)>,
}

impl StepAverage {
    pub fn add(&mut self, m: &BTreeMap<String, f64>) {
        for (k, v) in m {
            let e = self.sums.entry(k.clone()).or_insert((0.0, 0.0));
            if k.ends_with("_max") {
                e.0 = if e.1 == 0.0 { *v } else { e.0.max(*v) };
                e.1 = 1.0;
            } else {
                e.0 += v;
                e.1 += 1.0;
            }
        }
    }

    pub fn values(&self) -> BTreeMap<String, f64> {
        self.sums
            .iter()
            .map(|(k, (s, n))| (k.clone(), if k.ends_with("_max") { *s } else { s / n }))
            .collect()
    }
}

/// A seed for draw `what` of step `step` of stage `stage`: all randomness is a function of these,
/// so a resumed run repeats the draws of an uninterrupted one.
pub fn step_seed(seed: u64, stage: usize, step: u64, what: u64) -> u64 {
    let mut z = seed
        ^ (stage as u64).wrapping_mul(0xA24B_AED4_963E_E407)
        ^ step.wrapping_mul(0x9FB2_1C65_1E98_DF25)
        ^ what.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Greedy answers to held-out prompts, scored by numeric match against the rows' answers:
/// `eval/accuracy` (share correct) and `eval/response_length`.
pub fn evaluate(
    run: &Run,
    policy: &Model,
    engine: &EngineConfig,
    max_new_tokens: usize,
) -> Result<BTreeMap<String, f64>> {
    let answer_key = &run.cfg.data.answer_key;
    let rows: Vec<&PromptRow> = run
        .data
        .eval_prompts
        .iter()
        .filter(|r| r.extra.contains_key(answer_key))
        .collect();
    if rows.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut sampling = actor::SamplingParams::greedy(max_new_tokens);
    sampling.stop_token_ids = run.tok.eos_ids.clone();
    let requests = requests(run, &rows, &sampling, 1, 0)?;
    let (completions, _) = generate(policy, engine, &requests)?;
    let samples = completions
        .iter()
        .map(|c| sample_of(&run.tok, rows[c.request], &requests[c.request], c))
        .collect::<Result<Vec<_>>>()?;
    let correct = answer_matches(answer_key, &samples)?;
    let n = samples.len() as f64;
    let mut out = BTreeMap::new();
    out.insert(
        "eval/accuracy".into(),
        correct.iter().filter(|&&c| c).count() as f64 / n,
    );
    out.insert(
        "eval/response_length".into(),
        completions
            .iter()
            .map(|c| c.tokens.len() as f64)
            .sum::<f64>()
            / n,
    );
    Ok(out)
}

/// Whether each sample's response numerically matches its row's `answer_key` field (samples
/// without the field count as wrong).
pub fn answer_matches(answer_key: &str, samples: &[reward::Sample]) -> Result<Vec<bool>> {
    let reward = reward::build_reward(&numeric_match(answer_key)?)?;
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let scores = rt.block_on(reward.score(samples))?;
    Ok(samples
        .iter()
        .zip(&scores)
        .map(|(s, sc)| s.extra.contains_key(answer_key) && sc.value > 0.5)
        .collect())
}

/// The numeric-match rule reward reading `answer_key`.
pub fn numeric_match(answer_key: &str) -> Result<reward::RewardConfig> {
    Ok(serde_json::from_value(serde_json::json!({
        "type": "numeric_match",
        "reference_key": answer_key,
    }))?)
}
