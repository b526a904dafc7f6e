//! The RL stage (PPO, GRPO, RLOO, REINFORCE++). One step is a dataflow of named calls, each timed
//! by [`Calls`]:
//!
//! ```text
//! prompts ─► actor_gen ─► tokens, behaviour log-probs           (policy weights, KV cache freed after)
//!              ├─► reward_inf ─► scores                          (rule reward or reward model)
//!              ├─► ref_inf ─► reference log-probs                (frozen; may wait in host memory)
//!              ├─► actor_inf ─► π_old log-probs, entropies       (the learner's recompute)
//!              └─► critic_inf ─► values                          (PPO)
//!        advantages (+ KL penalty, KL controller update)
//!        actor_train (mini-batches × ppo_epochs) ─► critic_train (PPO)
//! ```
//! One copy of the policy's working weights (bf16 on a GPU, f32 on the CPU) serves actor_gen (the
//! actor crate's engine, whose KV cache is freed before it returns), actor_inf and actor_train (the
//! learner's steps, whose AdamW keeps the f32 master copy). The frozen reference and reward models
//! wait in host memory between their calls when `run.offload_frozen` is set. The code is the same
//! on every device: only `run.device` / `run.dtype` say where the tensors live.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use actor::EngineConfig;
use anyhow::{ensure, Context, Result};
use kernels::Device;
use learner::advantages::{
    advantage_metrics, broadcast_to_tokens, gae, grpo_advantages, kl_shaped_rewards, masked_whiten,
    reinforce_pp_advantages, rloo_advantages, KlController,
};
use learner::batch::{pack, Field, MiniBatchConfig, PackedBatch, Sequence};
use learner::objectives::{KlEstimator, KlLoss, LossAgg, PolicyLossConfig, ValueLossConfig};
use learner::train::{
    response_logprobs, score_sequences, update_actor, update_critic, ActorStep, CriticStep,
};
use model::llama::LmHead;

use super::common::{answer_matches, end_step, evaluate, progress_bar, step_seed};
use crate::checkpoint;
use crate::config::{Algorithm, RlReward, RlStage};
use crate::data::PromptRow;
use crate::dataflow::Calls;
use crate::generation::{engine_config, generate, requests, sample_of, sampling_params};
use crate::logging::SampleRow;
use crate::models::{self, Model};
use crate::run::{Flow, Run};
use crate::trainable::Trainable;

/// Where scores come from.
enum Scorer {
    Rule(reward::RewardPipeline),
    Model {
        rm: Box<Model>,
        shaper: reward::Shaper,
    },
}

/// The models and optimiser states of an RL stage.
struct RlModels {
    actor: Trainable,
    reference: Model,
    critic: Option<Trainable>,
    scorer: Scorer,
    kl: KlController,
    /// Frozen models wait here between their calls (host memory when `run.offload_frozen`).
    frozen_home: Device,
    engine: EngineConfig,
}

/// One step's rollout: prompt + response token sequences and what the engine said about them.
struct Rollout {
    seqs: Vec<Sequence>,
    /// The prompt each sample answers (its GRPO / RLOO group).
    groups: Vec<usize>,
    finished: Vec<bool>,
    /// Per sequence, the log-prob of each response token under the sampling distribution.
    behaviour: Vec<Vec<f32>>,
    samples: Vec<reward::Sample>,
    decode_tokens: usize,
}

impl Rollout {
    fn tokens(&self) -> Vec<Vec<u32>> {
        self.seqs.iter().map(|s| s.tokens.clone()).collect()
    }

    fn refs(&self) -> Vec<&Sequence> {
        self.seqs.iter().collect()
    }

    /// The sequences carrying the given per-response-token fields.
    fn with_fields(&self, fields: &[(Field, &[Vec<f32>])]) -> Vec<Sequence> {
        self.seqs
            .iter()
            .enumerate()
            .map(|(b, s)| {
                let mut s = s.clone();
                for (f, v) in fields {
                    s.fields.insert(*f, v[b].clone());
                }
                s
            })
            .collect()
    }
}

fn loss_agg(s: &RlStage) -> LossAgg {
    match s.loss_agg.as_str() {
        "seq_mean_token_mean" => LossAgg::SeqMeanTokenMean,
        "seq_mean_token_sum" => LossAgg::SeqMeanTokenSum,
        "token_sum_norm" => LossAgg::SeqMeanTokenSumNorm {
            constant: s.generation.max_new_tokens as f64,
        },
        _ => LossAgg::TokenMean,
    }
}

pub fn run(run: &mut Run, i: usize, s: &RlStage, resume: Option<&Path>) -> Result<Flow> {
    ensure!(
        !run.data.prompts.is_empty(),
        "stage[{i}] ({}) has no prompts",
        s.algorithm.name()
    );
    let mut m = setup(run, i, s, resume)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pb = progress_bar(
        run.progress,
        s.algorithm.name(),
        s.steps,
        run.state.stage_step,
    );
    let max_new = s.generation.max_new_tokens;
    if run.state.stage_step == 0 && s.eval_every > 0 && !run.data.eval_prompts.is_empty() {
        // The stage's starting accuracy, logged at the step before its first.
        let e = evaluate(run, &m.actor.model, &m.engine, max_new)?;
        run.log.log_metrics(run.state.global_step, &e)?;
    }
    while run.state.stage_step < s.steps {
        if run.should_stop() {
            save(run, &m)?;
            pb.abandon_with_message("interrupted: checkpoint saved");
            return Ok(Flow::Interrupted);
        }
        let mut metrics = step(run, i, s, &mut m, &rt)?;
        run.state.stage_step += 1;
        run.state.global_step += 1;
        let k = run.state.stage_step;
        if s.eval_every > 0 && (k.is_multiple_of(s.eval_every) || k == s.steps) {
            metrics.extend(evaluate(run, &m.actor.model, &m.engine, max_new)?);
        }
        end_step(run, &pb, &metrics, s.steps, |run| save(run, &m))?;
    }
    pb.finish();
    models::export(&m.actor.model, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    if let Some(c) = &m.critic {
        models::export(
            &c.model,
            &run.stage_output(i, "_critic"),
            &run.tokenizer_dir,
        )?;
    }
    Ok(Flow::Finished)
}

fn setup(run: &mut Run, i: usize, s: &RlStage, resume: Option<&Path>) -> Result<RlModels> {
    let src = run.policy_source(i)?;
    let frozen_home = if run.cfg.run.offload_frozen {
        Device::Cpu
    } else {
        run.device.clone()
    };
    let policy = match resume {
        Some(ck) => run.load_model(&ck.join("policy"))?,
        None => run.load_model(&src)?,
    };
    let mut reference = run
        .load_model(&src)
        .context("loading the reference model")?;
    reference.move_to(&frozen_home)?;
    let scorer = match &s.reward {
        RlReward::Rule(r) => {
            let p = reward::build_pipeline(r).with_context(|| format!("stage[{i}].reward"))?;
            if let Some(st) = run.state.shaping {
                p.load_shaping_state(st);
            }
            Scorer::Rule(p)
        }
        RlReward::Model(mr) => {
            let dir = run.reward_model_source(i, mr)?;
            let mut rm = run.load_model(&dir)?;
            ensure!(
                rm.params.score.is_some(),
                "the reward model in {} has no score head",
                dir.display()
            );
            rm.move_to(&frozen_home)?;
            let mut shaper = reward::Shaper::new(mr.shaping.clone())?;
            if let Some(st) = run.state.shaping {
                shaper.load_state(st);
            }
            Scorer::Model {
                rm: Box::new(rm),
                shaper,
            }
        }
    };
    let optim_file =
        |name: &str| resume.map(|ck| ck.join("optim").join(format!("{name}.safetensors")));
    let critic = if s.algorithm.needs_critic() {
        let model = match resume {
            Some(ck) => run.load_model(&ck.join("critic"))?,
            None => match &scorer {
                // A copy of the reward model (OpenRLHF's default): it already reads the reward
                // off finished sequences.
                Scorer::Model { rm, .. } if s.critic_init == "reward_model" => {
                    let mut c = rm.duplicate()?;
                    c.move_to(&run.device)?;
                    c
                }
                _ => models::with_score_head(&policy, step_seed(run.state.seed, i, 0, 7))?,
            },
        };
        let file = optim_file("critic");
        Some(Trainable::new(
            model,
            &s.critic_optim,
            s.steps,
            file.as_deref(),
        )?)
    } else {
        None
    };
    let file = optim_file("actor");
    let actor = Trainable::new(policy, &s.actor_optim, s.steps, file.as_deref())?;
    let coef = run.state.kl_coef.unwrap_or(s.kl_coef);
    let kl = match s.kl_target {
        Some(t) => KlController::adaptive(coef, t, s.kl_horizon)?,
        None => KlController::fixed(coef)?,
    };
    Ok(RlModels {
        actor,
        reference,
        critic,
        scorer,
        kl,
        frozen_home,
        engine: engine_config(&s.generation),
    })
}

fn save(run: &mut Run, m: &RlModels) -> Result<()> {
    run.state.kl_coef = Some(m.kl.value());
    run.state.shaping = Some(match &m.scorer {
        Scorer::Rule(p) => p.shaping_state(),
        Scorer::Model { shaper, .. } => shaper.state(),
    });
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        m.actor
            .write_checkpoint(d, "policy", "actor", &run.tokenizer_dir)?;
        if let Some(c) = &m.critic {
            c.write_checkpoint(d, "critic", "critic", &run.tokenizer_dir)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Runs `f` on a frozen model moved to the compute device, then sends it back home.
fn with_frozen<T>(
    model: &mut Model,
    device: &Device,
    home: &Device,
    f: impl FnOnce(&Model) -> Result<T>,
) -> Result<T> {
    model.move_to(device)?;
    let out = f(model);
    model.move_to(home)?;
    out
}

/// The critic's value of each response token's state, V(s) at the row that predicts the token
/// (the layout GAE and the learner's value loss use). The learner only scores whole sequences
/// (`score_sequences`), so this per-token read-out lives here.
fn response_values(critic: &Model, seqs: &[&Sequence], max_tokens: usize) -> Result<Vec<Vec<f32>>> {
    use learner::batch::split_by_token_budget;
    use model::llama::{forward, values, Batch, Keep};
    let device = critic.device();
    let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
    let mut out = vec![vec![]; seqs.len()];
    for micro in split_by_token_budget(&lens, max_tokens)? {
        let part: Vec<&Sequence> = micro.iter().map(|&i| seqs[i]).collect();
        let p = pack(&part)?;
        let batch = Batch::new(
            p.tokens.clone(),
            p.cu_seqlens_u32(),
            p.positions.clone(),
            &device,
        )?;
        let acts = forward(&critic.params, &critic.cfg, &batch, Keep::OutputOnly)?;
        let v = values(&critic.params, &acts.hidden)?.to_vec_f32()?; // [N]
        for (k, &i) in micro.iter().enumerate() {
            let start = p.cu_seqlens[k] + seqs[i].prompt_len - 1;
            out[i] = v[start..start + seqs[i].response_len()].to_vec();
        }
    }
    Ok(out)
}

/// Per sequence, the response-token slice of a packed `[N]` array (the inverse of packing a field).
fn unpack_field(p: &PackedBatch, seqs: &[Sequence], rows: &[f32]) -> Vec<Vec<f32>> {
    seqs.iter()
        .enumerate()
        .map(|(k, s)| {
            let start = p.cu_seqlens[k] + s.prompt_len - 1;
            rows[start..start + s.response_len()].to_vec()
        })
        .collect()
}

fn step(
    run: &mut Run,
    i: usize,
    s: &RlStage,
    m: &mut RlModels,
    rt: &tokio::runtime::Runtime,
) -> Result<BTreeMap<String, f64>> {
    let step_no = run.state.stage_step + 1;
    let global = run.state.global_step + 1;
    let seed = run.state.seed;
    let temp = s.generation.temperature as f32;
    let head = LmHead::new(temp);
    let mbt = s.micro_batch_tokens;
    let device = run.device.clone();
    let t_step = Instant::now();
    let idx = run.state.cursor.take(
        s.prompts_per_step,
        run.data.prompts.len(),
        step_seed(seed, i, 0, 1),
    );
    let rows: Vec<_> = idx.iter().map(|&r| run.data.prompts[r].clone()).collect();

    // actor_gen
    let sampling = sampling_params(&s.generation, &run.tok.eos_ids);
    let row_refs: Vec<&PromptRow> = rows.iter().collect();
    let gen_seed = step_seed(seed, i, step_no, 2);
    let requests = requests(run, &row_refs, &sampling, s.samples_per_prompt, gen_seed)?;
    let tok = &run.tok;
    let mut calls = Calls::new(&mut run.log, device.clone(), run.t0, global);
    let policy = &m.actor.model;
    let engine = &m.engine;
    let (completions, stats) =
        calls.call("actor_gen", "gen", || generate(policy, engine, &requests))?;
    let ro = calls.call("assemble", "assemble", || {
        assemble(tok, &rows, &requests, &completions, stats.decode_tokens)
    })?;
    let seq_refs = ro.refs();

    // reward_inf
    let scored = match &mut m.scorer {
        Scorer::Rule(p) => {
            calls.call("reward_inf", "reward", || rt.block_on(p.score(&ro.samples)))?
        }
        Scorer::Model { rm, shaper } => {
            let home = m.frozen_home.clone();
            let tokens = ro.tokens();
            calls.call("reward_inf", "reward", || {
                let raw = with_frozen(rm, &device, &home, |rm| {
                    score_sequences(&rm.params, &rm.cfg, &tokens, mbt)
                })?;
                let shaped = shaper.apply(&raw);
                Ok(reward::ScoredBatch {
                    raw: raw.into_iter().map(reward::Score::new).collect(),
                    shaped,
                })
            })?
        }
    };
    // ref_inf, actor_inf, critic_inf
    let home = m.frozen_home.clone();
    let reference = &mut m.reference;
    let ref_lp = calls.call("ref_inf", "ref", || {
        with_frozen(reference, &device, &home, |r| {
            response_logprobs(&r.params, &r.cfg, &head, &seq_refs, mbt)
        })
    })?;
    let policy = &m.actor.model;
    let old_lp = calls.call("actor_inf", "old_logprob", || {
        response_logprobs(&policy.params, &policy.cfg, &head, &seq_refs, mbt)
    })?;
    let values = match &m.critic {
        Some(c) => Some(calls.call("critic_inf", "values", || {
            response_values(&c.model, &seq_refs, mbt)
        })?),
        None => None,
    };

    // advantages, on the packed layout of the whole batch
    let beta = m.kl.value();
    let est = KlEstimator::from_name(&s.kl_estimator)?;
    let scores: Vec<f32> = scored.shaped.clone();
    let mut fields = vec![
        (Field::OldLogprob, &old_lp[..]),
        (Field::RefLogprob, &ref_lp[..]),
    ];
    if let Some(v) = &values {
        fields.push((Field::Values, &v[..]));
    }
    let packed_seqs = ro.with_fields(&fields);
    let packed = pack(&packed_seqs.iter().collect::<Vec<_>>())?;
    let (adv, returns, kl_mean) = calls.call("advantages", "adv", || {
        advantages(s, &ro, &packed, &scores, beta, est)
    })?;
    m.kl.update(kl_mean, ro.seqs.len() as f64);

    let mut metrics: BTreeMap<String, f64> = scored.metrics();
    metrics.insert("kl/mean".into(), kl_mean);
    metrics.insert("kl/coef".into(), beta);
    metrics.extend(
        advantage_metrics(
            &adv,
            returns.as_deref(),
            packed.fields.get(&Field::Values).map(|v| v.as_slice()),
            &packed.loss_mask,
        )?
        .values(),
    );
    let key = &run.cfg.data.answer_key;
    if ro.samples.iter().all(|smp| smp.extra.contains_key(key)) {
        // How often the sampled answers are right, whatever the reward says: a learned reward
        // that is being exploited shows as reward up, accuracy down.
        let ok = answer_matches(key, &ro.samples)?;
        metrics.insert(
            "rollout/accuracy".into(),
            ok.iter().filter(|&&c| c).count() as f64 / ok.len() as f64,
        );
    }

    // actor_train
    let pl_cfg = PolicyLossConfig {
        clip_low: s.clip_eps,
        clip_high: s.clip_eps_high.unwrap_or(s.clip_eps),
        dual_clip: s.dual_clip,
        entropy_coef: s.entropy_coef,
        kl_loss: (s.kl_mode == "loss").then_some(KlLoss {
            coef: beta,
            estimator: est,
        }),
        tis_cap: s.tis_cap,
        agg: loss_agg(s),
    };
    let batch = ro.seqs.len();
    let mb = MiniBatchConfig {
        num_mini_batches: batch / s.mini_batch_size,
        epochs: s.ppo_epochs,
        shuffle: true,
        seed: step_seed(seed, i, step_no, 4),
    };
    let adv_seqs = unpack_field(&packed, &ro.seqs, &adv);
    let actor_seqs = ro.with_fields(&[
        (Field::OldLogprob, &old_lp),
        (Field::RefLogprob, &ref_lp),
        (Field::BehaviourLogprob, &ro.behaviour),
        (Field::Advantages, &adv_seqs),
    ]);
    let actor_step = ActorStep {
        loss: pl_cfg,
        head,
        micro_batch_tokens: mbt,
    };
    let lr = m.actor.lr(run.state.stage_step);
    let actor = &mut m.actor;
    let actor_metrics = calls.call("actor_train", "update_actor", || {
        update_actor(&actor_step, actor.trainee(), &actor_seqs, &mb, lr)
    })?;
    let train_tokens = packed.num_tokens() * s.ppo_epochs;
    metrics.extend(actor_metrics.mean.values());
    if let (Some(critic), Some(values), Some(returns)) = (&mut m.critic, &values, &returns) {
        let critic_step = CriticStep {
            loss: ValueLossConfig {
                clip: (s.value_clip > 0.0).then_some(s.value_clip),
                coef: s.vf_coef,
                agg: loss_agg(s),
            },
            micro_batch_tokens: mbt,
        };
        let ret_seqs = unpack_field(&packed, &ro.seqs, returns);
        let critic_seqs = ro.with_fields(&[(Field::Values, values), (Field::Returns, &ret_seqs)]);
        // The critic sees the mini-batches in another order than the actor.
        let cmb = MiniBatchConfig {
            seed: step_seed(seed, i, step_no, 5),
            ..mb
        };
        let lr = critic.lr(run.state.stage_step);
        let cm = calls.call("critic_train", "update_critic", || {
            update_critic(&critic_step, critic.trainee(), &critic_seqs, &cmb, lr)
        })?;
        metrics.extend(cm.mean.values());
    }

    // Rollout statistics and performance.
    let n = ro.seqs.len() as f64;
    metrics.insert(
        "response_length/mean".into(),
        ro.seqs.iter().map(Sequence::response_len).sum::<usize>() as f64 / n,
    );
    metrics.insert(
        "response_length/max".into(),
        ro.seqs
            .iter()
            .map(Sequence::response_len)
            .max()
            .unwrap_or(0) as f64,
    );
    metrics.insert(
        "response_length/clip_ratio".into(),
        ro.finished.iter().filter(|f| !**f).count() as f64 / n,
    );
    metrics.insert(
        "prompt_length/mean".into(),
        ro.seqs.iter().map(|s| s.prompt_len).sum::<usize>() as f64 / n,
    );
    let timing = calls.metrics.clone();
    let peak = calls.peak_bytes;
    drop(calls);
    if let Some(g) = timing.get("timing_s/gen") {
        metrics.insert(
            "perf/gen_tokens_per_s".into(),
            ro.decode_tokens as f64 / g.max(1e-9),
        );
    }
    if let Some(t) = timing.get("timing_s/update_actor") {
        metrics.insert(
            "perf/train_tokens_per_s".into(),
            train_tokens as f64 / t.max(1e-9),
        );
    }
    if peak > 0 {
        metrics.insert("perf/max_memory_gb".into(), peak as f64 / 1e9);
    }
    metrics.extend(timing);
    metrics.insert("timing_s/step".into(), t_step.elapsed().as_secs_f64());

    let every = run.cfg.run.sample_every;
    if every > 0 && (step_no.is_multiple_of(every) || step_no == 1) {
        let table: Vec<SampleRow> = ro
            .samples
            .iter()
            .zip(&scored.shaped)
            .zip(&scored.raw)
            .map(|((smp, r), raw)| SampleRow {
                prompt: smp.prompt.clone(),
                response: smp.response.clone(),
                reward: *r as f64,
                sub_rewards: raw
                    .sub_scores
                    .iter()
                    .map(|(k, v)| (k.clone(), *v as f64))
                    .collect(),
            })
            .collect();
        run.log.log_samples(global, &table)?;
    }
    Ok(metrics)
}

/// The completions of `requests` as sequences, with their samples for the reward.
fn assemble(
    tok: &model::tokenizer::Tokenizer,
    rows: &[PromptRow],
    requests: &[actor::Request],
    completions: &[actor::Completion],
    decode_tokens: usize,
) -> Result<Rollout> {
    let n = completions.len();
    let mut ro = Rollout {
        seqs: Vec::with_capacity(n),
        groups: Vec::with_capacity(n),
        finished: Vec::with_capacity(n),
        behaviour: Vec::with_capacity(n),
        samples: Vec::with_capacity(n),
        decode_tokens,
    };
    for c in completions {
        let prompt = &requests[c.request].tokens;
        let mut t = prompt.clone();
        t.extend(&c.tokens);
        ro.seqs.push(Sequence::new(t, prompt.len()));
        ro.groups.push(c.request);
        let done = c.finish_reason == actor::FinishReason::Stop;
        ro.finished.push(done);
        ro.behaviour.push(c.logprobs.clone());
        ro.samples
            .push(sample_of(tok, &rows[c.request], &requests[c.request], c)?);
    }
    Ok(ro)
}

/// Advantages `[N]`, returns `[N]` (PPO, REINFORCE++), and the mean per-token KL to the reference.
fn advantages(
    s: &RlStage,
    ro: &Rollout,
    packed: &PackedBatch,
    scores: &[f32],
    beta: f64,
    est: KlEstimator,
) -> Result<(Vec<f32>, Option<Vec<f32>>, f64)> {
    let (mask, cu) = (&packed.loss_mask, &packed.cu_seqlens);
    let old_lp = packed.field(Field::OldLogprob)?;
    let ref_lp = packed.field(Field::RefLogprob)?;
    let values = packed.fields.get(&Field::Values).map(|v| v.as_slice());
    let in_reward = s.kl_mode == "reward";
    let reward_beta = if in_reward { beta } else { 0.0 };
    let (token_rewards, kl) =
        kl_shaped_rewards(scores, old_lp, ref_lp, mask, cu, reward_beta, est)?;
    let masked: f64 = mask.iter().map(|&x| x as f64).sum();
    let kl_mean = kl.iter().map(|&x| x as f64).sum::<f64>() / masked.max(1.0);
    Ok(match s.algorithm {
        Algorithm::Ppo => {
            let v = values.context("PPO needs critic values")?;
            let out = gae(&token_rewards, v, mask, cu, &ro.finished, s.gamma, s.lam)?;
            let adv = if s.whiten_advantages {
                masked_whiten(&out.advantages, mask, true, 1e-8)?
            } else {
                out.advantages
            };
            (adv, Some(out.returns), kl_mean)
        }
        Algorithm::ReinforcePp => {
            let (adv, ret) = reinforce_pp_advantages(&token_rewards, mask, cu, s.gamma)?;
            (adv, Some(ret), kl_mean)
        }
        Algorithm::Grpo | Algorithm::Rloo => {
            // A sequence-level KL penalty (sum over its tokens) when the KL is in the reward.
            let penalised: Vec<f32> = scores
                .iter()
                .enumerate()
                .map(|(b, &sc)| {
                    let k: f32 = kl[cu[b]..cu[b + 1]].iter().sum();
                    sc - reward_beta as f32 * k
                })
                .collect();
            let per_seq = if s.algorithm == Algorithm::Grpo {
                grpo_advantages(&penalised, &ro.groups, s.normalize_std, 1e-6)?
            } else {
                rloo_advantages(&penalised, &ro.groups)?
            };
            let adv = broadcast_to_tokens(&per_seq, mask, cu)?;
            let adv = if s.whiten_advantages && s.algorithm == Algorithm::Rloo {
                masked_whiten(&adv, mask, true, 1e-8)?
            } else {
                adv
            };
            (adv, None, kl_mean)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels::DType;
    use model::{Arch, Head, ModelConfig, Params};

    /// The value read out for response token j is V of the state that chooses it: the critic's
    /// score of the prefix that ends just before that token (causal attention makes the two equal).
    #[test]
    fn response_values_are_the_values_of_the_prefix_before_each_token() {
        let cfg = ModelConfig::new(Arch::Llama, 16, 32, 2, 2, 2, 11)
            .with_head(Head::SequenceClassification, 1);
        let params = Params::init(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
        let critic = Model { cfg, params };
        let seqs = [
            Sequence::new(vec![1, 2, 3, 4, 5], 2),
            Sequence::new(vec![6, 7, 8], 1),
        ];
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let got = response_values(&critic, &refs, 1024).unwrap();
        for (s, v) in seqs.iter().zip(&got) {
            assert_eq!(v.len(), s.response_len());
            let prefixes: Vec<Vec<u32>> = (0..s.response_len())
                .map(|j| s.tokens[..s.prompt_len + j].to_vec())
                .collect();
            let want = score_sequences(&critic.params, &critic.cfg, &prefixes, 1024).unwrap();
            for (a, b) in v.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{v:?} vs {want:?}");
            }
        }
        // A micro-batch budget that splits the batch gives the same values.
        let split = response_values(&critic, &refs, 5).unwrap();
        for (a, b) in split.iter().flatten().zip(got.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{split:?} vs {got:?}");
        }
    }
}
