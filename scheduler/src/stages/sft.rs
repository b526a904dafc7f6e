//! Supervised fine-tuning: masked NLL of `response + EOS` given the prompt.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use learner::objectives::{sft_loss, LossAgg, Normaliser};

use super::common::{evaluate, progress_bar, progress_message};
use crate::checkpoint;
use crate::config::SftStage;
use crate::lm::{clear_grads, lm_train_micro, micro_batches, zero_grads, LmGrad, Model};
use crate::models;
use crate::optim::AdamW;
use crate::packing::{response_mask, slice};
use crate::run::{Flow, Run};

/// Max new tokens for held-out evaluation after SFT: the first RL stage's, else 32.
fn eval_tokens(run: &Run) -> usize {
    run.cfg
        .stages
        .iter()
        .find_map(|s| match s {
            crate::config::StageConfig::Rl(r) => Some(r.generation.max_new_tokens),
            _ => None,
        })
        .unwrap_or(32)
}

pub fn run(run: &mut Run, i: usize, s: &SftStage, resume: Option<&Path>) -> Result<Flow> {
    anyhow::ensure!(!run.data.sft.is_empty(), "stage[{i}] (sft) has no SFT data");
    let mut policy = match resume {
        Some(ck) => run.load_model(&ck.join("policy"))?,
        None => run.load_model(&run.policy_source(i)?)?,
    };
    let mut opt = AdamW::new(&s.optim, &policy.params, s.steps)?;
    if let Some(ck) = resume {
        opt.load(&ck.join("optim").join("actor"), &policy.cfg)?;
    }
    let mut grads = zero_grads(&policy.params)?;
    let pb = progress_bar(run.progress, "sft", s.steps, run.state.stage_step);
    let data_seed = super::common::step_seed(run.state.seed, i, 0, 1);
    while run.state.stage_step < s.steps {
        if run.should_stop() {
            save(run, &policy, &opt)?;
            pb.abandon_with_message("interrupted: checkpoint saved");
            return Ok(Flow::Interrupted);
        }
        let idx = run
            .state
            .cursor
            .take(s.batch_size, run.data.sft.len(), data_seed);
        let mut seqs = Vec::with_capacity(idx.len());
        let mut prompt_lens = Vec::with_capacity(idx.len());
        for &r in &idx {
            let row = &run.data.sft[r];
            let mut t = run.tok.encode(&row.prompt)?;
            prompt_lens.push(t.len());
            t.extend(run.tok.encode(&row.response)?);
            t.push(run.tok.eos());
            seqs.push(t);
        }
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let (mask, cu) = response_mask(&lens, &prompt_lens);
        let norm = Normaliser::count(&mask, &cu)?;
        clear_grads(&mut grads)?;
        let mut metrics = learner::Metrics::new();
        for r in micro_batches(&lens, s.micro_batch_tokens) {
            let (tok_range, local_cu) = slice(&cu, r.clone());
            let m = &mask[tok_range];
            lm_train_micro(&policy, &mut grads, &seqs[r], 1.0, |lp, _ent| {
                let out = sft_loss(lp, m, &local_cu, LossAgg::TokenMean, &norm)?;
                metrics.merge(&out.metrics);
                Ok(LmGrad {
                    d_logprob: out.grad_logprob,
                    d_entropy: None,
                })
            })?;
        }
        let info = opt.step(&mut policy.params, &mut grads)?;
        run.state.stage_step += 1;
        run.state.global_step += 1;
        let mut m: BTreeMap<String, f64> = metrics.values();
        m.insert("actor/grad_norm".into(), info.grad_norm);
        m.insert("actor/lr".into(), info.lr);
        if run.state.stage_step == s.steps && !run.data.eval_prompts.is_empty() {
            let key = run.cfg.data.answer_key.clone();
            m.extend(evaluate(
                &policy,
                &run.tok,
                &run.data.eval_prompts,
                &key,
                eval_tokens(run),
            )?);
        }
        run.log.log_metrics(run.state.global_step, &m)?;
        pb.set_position(run.state.stage_step);
        pb.set_message(progress_message(&m));
        let every = run.cfg.run.checkpoint_every;
        if every > 0 && run.state.stage_step.is_multiple_of(every) && run.state.stage_step < s.steps
        {
            save(run, &policy, &opt)?;
        }
    }
    pb.finish();
    models::export(&policy, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    Ok(Flow::Finished)
}

fn save(run: &Run, policy: &Model, opt: &AdamW) -> Result<()> {
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        models::write_into(policy, &d.join("policy"), &run.tokenizer_dir)?;
        opt.save(&d.join("optim").join("actor"), &policy.cfg)
    })?;
    Ok(())
}
