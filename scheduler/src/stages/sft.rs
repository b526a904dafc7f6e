//! Supervised fine-tuning: masked NLL of `response + EOS` given the prompt.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use learner::batch::Sequence;
use learner::objectives::LossAgg;
use learner::train::SftStep;

use super::common::{end_step, evaluate, progress_bar};
use crate::checkpoint;
use crate::config::{GenerationConfig, SftStage};
use crate::generation::engine_config;
use crate::models;
use crate::run::{Flow, Run};
use crate::trainable::Trainable;

/// Generation settings for held-out evaluation after SFT: the first RL stage's, else defaults
/// with 32 new tokens.
fn eval_generation(run: &Run) -> GenerationConfig {
    run.cfg
        .stages
        .iter()
        .find_map(|s| match s {
            crate::config::StageConfig::Rl(r) => Some(r.generation.clone()),
            _ => None,
        })
        .unwrap_or(GenerationConfig {
            max_new_tokens: 32,
            ..Default::default()
        })
}

pub fn run(run: &mut Run, i: usize, s: &SftStage, resume: Option<&Path>) -> Result<Flow> {
    anyhow::ensure!(!run.data.sft.is_empty(), "stage[{i}] (sft) has no SFT data");
    let policy = match resume {
        Some(ck) => run.load_model(&ck.join("policy"))?,
        None => run.load_model(&run.policy_source(i)?)?,
    };
    let opt_file = resume.map(|ck| ck.join("optim").join("actor.safetensors"));
    let mut t = Trainable::new(policy, &s.optim, s.steps, opt_file.as_deref())?;
    let step_fn = SftStep {
        agg: LossAgg::TokenMean,
        micro_batch_tokens: s.micro_batch_tokens,
    };
    let pb = progress_bar(run.progress, "sft", s.steps, run.state.stage_step);
    let data_seed = super::common::step_seed(run.state.seed, i, 0, 1);
    while run.state.stage_step < s.steps {
        if run.should_stop() {
            save(run, &t)?;
            pb.abandon_with_message("interrupted: checkpoint saved");
            return Ok(Flow::Interrupted);
        }
        let idx = run
            .state
            .cursor
            .take(s.batch_size, run.data.sft.len(), data_seed);
        // prompt + response + EOS, the loss on the response and EOS only.
        let seqs = idx
            .iter()
            .map(|&r| {
                let row = &run.data.sft[r];
                let prompt = run.encode_prompt(&row.prompt)?;
                Ok(Sequence::new(
                    run.with_response(&prompt, &row.response)?,
                    prompt.len(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let lr = t.lr(run.state.stage_step);
        let tr = t.trainee();
        let metrics = step_fn.step(tr.params, tr.cfg, tr.grads, tr.opt, &refs, lr)?;
        run.state.stage_step += 1;
        run.state.global_step += 1;
        let mut m: BTreeMap<String, f64> = metrics.values();
        // The learner names the optimiser metrics after the step (sft/...); the policy's
        // optimiser is the actor's everywhere else.
        for k in ["grad_norm", "lr"] {
            if let Some(v) = m.remove(&format!("sft/{k}")) {
                m.insert(format!("actor/{k}"), v);
            }
        }
        if run.state.stage_step == s.steps && !run.data.eval_prompts.is_empty() {
            let g = eval_generation(run);
            m.extend(evaluate(
                run,
                &t.model,
                &engine_config(&g),
                g.max_new_tokens,
            )?);
        }
        end_step(run, &pb, &m, s.steps, |run| save(run, &t))?;
    }
    pb.finish();
    models::export(&t.model, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    Ok(Flow::Finished)
}

fn save(run: &Run, t: &Trainable) -> Result<()> {
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        t.write_checkpoint(d, "policy", "actor", &run.tokenizer_dir)
    })?;
    Ok(())
}
