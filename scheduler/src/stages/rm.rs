//! Reward-model training: a scalar head on the current policy's body, Bradley–Terry loss on
//! (prompt, chosen, rejected) pairs, the score read at each sequence's last token (its EOS).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use learner::train::{Pair, RewardModelStep};

use super::common::{end_step, progress_bar, step_seed};
use super::policy_pairs::policy_pairs;
use crate::checkpoint;
use crate::config::RmStage;
use crate::models;
use crate::run::{Flow, Run};
use crate::trainable::Trainable;

pub fn run(run: &mut Run, i: usize, s: &RmStage, resume: Option<&Path>) -> Result<Flow> {
    let policy = run.load_model(&run.policy_source(i)?)?;
    // The dataset's pairs, then those of the policy's own samples.
    let mut prefs = run.data.preferences.clone();
    if let Some(pp) = &s.policy_pairs {
        let (pairs, m) = policy_pairs(run, &policy, pp, step_seed(run.state.seed, i, 0, 8))?;
        prefs.extend(pairs);
        if run.state.stage_step == 0 {
            run.log.log_metrics(run.state.global_step, &m)?;
        }
    }
    anyhow::ensure!(!prefs.is_empty(), "stage[{i}] (rm) has no preference pairs");
    let rm = match resume {
        Some(ck) => run.load_model(&ck.join("reward_model"))?,
        None => models::with_score_head(&policy, step_seed(run.state.seed, i, 0, 7))?,
    };
    drop(policy);
    let opt_file = resume.map(|ck| ck.join("optim").join("reward_model.safetensors"));
    let mut t = Trainable::new(rm, &s.optim, s.steps, opt_file.as_deref())?;
    let step_fn = RewardModelStep {
        micro_batch_tokens: s.micro_batch_tokens,
    };
    let pb = progress_bar(run.progress, "rm", s.steps, run.state.stage_step);
    let data_seed = step_seed(run.state.seed, i, 0, 1);
    while run.state.stage_step < s.steps {
        if run.should_stop() {
            save(run, &t)?;
            pb.abandon_with_message("interrupted: checkpoint saved");
            return Ok(Flow::Interrupted);
        }
        let idx = run.state.cursor.take(s.batch_size, prefs.len(), data_seed);
        // Each side is prompt + response + EOS; its score is the value at that EOS.
        let pairs = idx
            .iter()
            .map(|&r| {
                let row = &prefs[r];
                let prompt = run.encode_prompt(&row.prompt)?;
                let side = |response: &str| run.with_response(&prompt, response);
                Ok(Pair {
                    chosen: side(&row.chosen)?,
                    rejected: side(&row.rejected)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let pairs = cross_prompts(pairs, s.cross_prompt_pairs);
        let lr = t.lr(run.state.stage_step);
        let tr = t.trainee();
        let metrics = step_fn.step(tr.params, tr.cfg, tr.grads, tr.opt, &pairs, lr)?;
        run.state.stage_step += 1;
        run.state.global_step += 1;
        let m: BTreeMap<String, f64> = metrics.values();
        end_step(run, &pb, &m, s.steps, |run| save(run, &t))?;
    }
    pb.finish();
    models::export(&t.model, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    Ok(Flow::Finished)
}

fn save(run: &Run, t: &Trainable) -> Result<()> {
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        t.write_checkpoint(d, "reward_model", "reward_model", &run.tokenizer_dir)
    })?;
    Ok(())
}

/// The first `share` of the pairs, each with the rejected side of the next one among them (a
/// rotation: with two or more pairs every rejected side then answers another prompt).
fn cross_prompts(mut pairs: Vec<Pair>, share: f64) -> Vec<Pair> {
    let n = ((pairs.len() as f64 * share).round() as usize).min(pairs.len());
    if n >= 2 {
        let first = pairs[0].rejected.clone();
        for k in 0..n - 1 {
            pairs[k].rejected = pairs[k + 1].rejected.clone();
        }
        pairs[n - 1].rejected = first;
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_rotates_the_rejected_sides_of_the_first_share() {
        let pair = |c: u32, r: u32| Pair {
            chosen: vec![c],
            rejected: vec![r],
        };
        let pairs = vec![pair(1, 10), pair(2, 20), pair(3, 30), pair(4, 40)];
        let out = cross_prompts(pairs.clone(), 0.75);
        let rejected: Vec<u32> = out.iter().map(|p| p.rejected[0]).collect();
        assert_eq!(rejected, [20, 30, 10, 40]);
        let chosen: Vec<u32> = out.iter().map(|p| p.chosen[0]).collect();
        assert_eq!(chosen, [1, 2, 3, 4]);
        let same: Vec<u32> = cross_prompts(pairs, 0.0)
            .iter()
            .map(|p| p.rejected[0])
            .collect();
        assert_eq!(same, [10, 20, 30, 40]);
    }
}
