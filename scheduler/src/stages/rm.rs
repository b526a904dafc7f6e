//! Reward-model training: a scalar head on the current policy's body, Bradley–Terry loss on
//! (prompt, chosen, rejected) pairs, the score read at each sequence's last token (its EOS).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use learner::objectives::bradley_terry_loss;

use super::common::{progress_bar, progress_message, step_seed};
use crate::checkpoint;
use crate::config::RmStage;
use crate::lm::{clear_grads, micro_batches, value_train_micro, zero_grads, Model};
use crate::models;
use crate::optim::AdamW;
use crate::run::{Flow, Run};

pub fn run(run: &mut Run, i: usize, s: &RmStage, resume: Option<&Path>) -> Result<Flow> {
    anyhow::ensure!(
        !run.data.preferences.is_empty(),
        "stage[{i}] (rm) has no preference pairs"
    );
    let mut rm = match resume {
        Some(ck) => run.load_model(&ck.join("reward_model"))?,
        None => {
            let policy = run.load_model(&run.policy_source(i)?)?;
            models::with_score_head(&policy, step_seed(run.state.seed, i, 0, 7))?
        }
    };
    let mut opt = AdamW::new(&s.optim, &rm.params, s.steps)?;
    if let Some(ck) = resume {
        opt.load(&ck.join("optim").join("reward_model"), &rm.cfg)?;
    }
    let mut grads = zero_grads(&rm.params)?;
    let pb = progress_bar(run.progress, "rm", s.steps, run.state.stage_step);
    let data_seed = step_seed(run.state.seed, i, 0, 1);
    while run.state.stage_step < s.steps {
        if run.should_stop() {
            save(run, &rm, &opt)?;
            pb.abandon_with_message("interrupted: checkpoint saved");
            return Ok(Flow::Interrupted);
        }
        let idx = run
            .state
            .cursor
            .take(s.batch_size, run.data.preferences.len(), data_seed);
        // Pairs laid out as [chosen_0, rejected_0, chosen_1, rejected_1, ...].
        let mut seqs = Vec::with_capacity(2 * idx.len());
        for &r in &idx {
            let row = &run.data.preferences[r];
            let prompt = run.tok.encode(&row.prompt)?;
            for response in [&row.chosen, &row.rejected] {
                let mut t = prompt.clone();
                t.extend(run.tok.encode(response)?);
                t.push(run.tok.eos());
                seqs.push(t);
            }
        }
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        clear_grads(&mut grads)?;
        let mut metrics = learner::Metrics::new();
        let total_pairs = idx.len();
        // Micro-batches over whole pairs: split the pair lengths, then map back to sequences.
        let pair_lens: Vec<usize> = lens.chunks(2).map(|c| c[0] + c[1]).collect();
        for r in micro_batches(&pair_lens, s.micro_batch_tokens) {
            let seq_range = 2 * r.start..2 * r.end;
            let micro_lens = &lens[seq_range.clone()];
            value_train_micro(&rm, &mut grads, &seqs[seq_range.clone()], |v| {
                // The score of a sequence is its value at the last token.
                let mut last = Vec::with_capacity(micro_lens.len());
                let mut off = 0;
                for &l in micro_lens {
                    off += l;
                    last.push(off - 1);
                }
                let chosen: Vec<f32> = last.iter().step_by(2).map(|&t| v[t]).collect();
                let rejected: Vec<f32> = last.iter().skip(1).step_by(2).map(|&t| v[t]).collect();
                let out = bradley_terry_loss(&chosen, &rejected, None, total_pairs)?;
                metrics.merge(&out.metrics);
                let mut d = vec![0.0f32; v.len()];
                for (p, (gc, gr)) in out.grad_chosen.iter().zip(&out.grad_rejected).enumerate() {
                    d[last[2 * p]] = *gc;
                    d[last[2 * p + 1]] = *gr;
                }
                Ok(d)
            })?;
        }
        let info = opt.step(&mut rm.params, &mut grads)?;
        run.state.stage_step += 1;
        run.state.global_step += 1;
        let mut m: BTreeMap<String, f64> = metrics.values();
        m.insert("rm/grad_norm".into(), info.grad_norm);
        m.insert("rm/lr".into(), info.lr);
        run.log.log_metrics(run.state.global_step, &m)?;
        pb.set_position(run.state.stage_step);
        pb.set_message(progress_message(&m));
        let every = run.cfg.run.checkpoint_every;
        if every > 0 && run.state.stage_step.is_multiple_of(every) && run.state.stage_step < s.steps
        {
            save(run, &rm, &opt)?;
        }
    }
    pb.finish();
    models::export(&rm, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    Ok(Flow::Finished)
}

fn save(run: &Run, rm: &Model, opt: &AdamW) -> Result<()> {
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        models::write_into(rm, &d.join("reward_model"), &run.tokenizer_dir)?;
        opt.save(&d.join("optim").join("reward_model"), &rm.cfg)
    })?;
    Ok(())
}
