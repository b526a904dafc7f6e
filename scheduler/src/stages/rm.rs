//! Reward-model training: a scalar head on the current policy's body, Bradley–Terry loss on
//! (prompt, chosen, rejected) pairs, the score read at each sequence's last token (its EOS).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use learner::train::{Pair, RewardModelStep};

use super::common::{progress_bar, progress_message, step_seed};
use crate::checkpoint;
use crate::config::RmStage;
use crate::models;
use crate::run::{Flow, Run};
use crate::trainable::Trainable;

pub fn run(run: &mut Run, i: usize, s: &RmStage, resume: Option<&Path>) -> Result<Flow> {
    anyhow::ensure!(
        !run.data.preferences.is_empty(),
        "stage[{i}] (rm) has no preference pairs"
    );
    let rm = match resume {
        Some(ck) => run.load_model(&ck.join("reward_model"))?,
        None => {
            let policy = run.load_model(&run.policy_source(i)?)?;
            models::with_score_head(&policy, step_seed(run.state.seed, i, 0, 7))?
        }
    };
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
        let idx = run
            .state
            .cursor
            .take(s.batch_size, run.data.preferences.len(), data_seed);
        // Each side is prompt + response + EOS; its score is the value at that EOS.
        let pairs = idx
            .iter()
            .map(|&r| {
                let row = &run.data.preferences[r];
                let prompt = run.encode_prompt(&row.prompt)?;
                let side = |response: &str| -> Result<Vec<u32>> {
                    let mut tokens = prompt.clone();
                    tokens.extend(run.encode_response(response)?);
                    tokens.push(run.eos());
                    Ok(tokens)
                };
                Ok(Pair {
                    chosen: side(&row.chosen)?,
                    rejected: side(&row.rejected)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lr = t.lr(run.state.stage_step);
        let tr = t.trainee();
        let metrics = step_fn.step(tr.params, tr.cfg, tr.grads, tr.opt, &pairs, lr)?;
        run.state.stage_step += 1;
        run.state.global_step += 1;
        let m: BTreeMap<String, f64> = metrics.values();
        run.log.log_metrics(run.state.global_step, &m)?;
        pb.set_position(run.state.stage_step);
        pb.set_message(progress_message(&m));
        let every = run.cfg.run.checkpoint_every;
        if every > 0 && run.state.stage_step.is_multiple_of(every) && run.state.stage_step < s.steps
        {
            save(run, &t)?;
        }
    }
    pb.finish();
    models::export(&t.model, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    Ok(Flow::Finished)
}

fn save(run: &Run, t: &Trainable) -> Result<()> {
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        models::write_into(&t.model, &d.join("reward_model"), &run.tokenizer_dir)?;
        t.save_optimiser(&d.join("optim").join("reward_model.safetensors"))
    })?;
    Ok(())
}
