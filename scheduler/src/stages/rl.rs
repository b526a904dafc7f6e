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
//! The same `Model` (one copy of the weights) serves actor_gen, actor_inf and actor_train.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use kernels::Device;
use learner::advantages::{
    advantage_metrics, broadcast_to_tokens, gae, grpo_advantages, kl_shaped_rewards, masked_whiten,
    reinforce_pp_advantages, rloo_advantages, KlController,
};
use learner::objectives::{
    policy_loss, value_loss, KlEstimator, KlLoss, LossAgg, Normaliser, PolicyBatch,
    PolicyLossConfig, ValueBatch, ValueLossConfig,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::common::{evaluate, progress_bar, progress_message, step_seed, StepAverage};
use crate::checkpoint;
use crate::config::{Algorithm, RlReward, RlStage};
use crate::dataflow::Calls;
use crate::generate::generate;
use crate::lm::{
    clear_grads, lm_train_micro, logprobs, micro_batches, sequence_scores, token_values,
    value_train_micro, zero_grads, LmGrad, Model,
};
use crate::logging::SampleRow;
use crate::models;
use crate::optim::AdamW;
use crate::packing::{gather, gather_cu, response_mask, slice};
use crate::run::{Flow, Run};

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
    policy: Model,
    reference: Model,
    critic: Option<Model>,
    scorer: Scorer,
    actor_opt: AdamW,
    critic_opt: Option<AdamW>,
    kl: KlController,
    /// Frozen models wait here between their calls (host memory when `run.offload_frozen`).
    frozen_home: Device,
}

/// One step's rollout, packed.
struct Rollout {
    seqs: Vec<Vec<u32>>,
    prompt_lens: Vec<usize>,
    resp_lens: Vec<usize>,
    /// The prompt each sample answers (its GRPO / RLOO group).
    groups: Vec<usize>,
    finished: Vec<bool>,
    mask: Vec<f32>,
    cu: Vec<usize>,
    behaviour: Vec<f32>,
    samples: Vec<reward::Sample>,
    decode_tokens: usize,
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
    if run.state.global_step == 0 && s.eval_every > 0 && !run.data.eval_prompts.is_empty() {
        // A run that starts with RL logs its starting accuracy as step 0.
        let e = evaluate(
            &m.policy,
            &run.tok,
            &run.data.eval_prompts,
            &run.cfg.data.answer_key,
            s.generation.max_new_tokens,
        )?;
        run.log.log_metrics(0, &e)?;
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
            metrics.extend(evaluate(
                &m.policy,
                &run.tok,
                &run.data.eval_prompts,
                &run.cfg.data.answer_key,
                s.generation.max_new_tokens,
            )?);
        }
        run.log.log_metrics(run.state.global_step, &metrics)?;
        pb.set_position(k);
        pb.set_message(progress_message(&metrics));
        let every = run.cfg.run.checkpoint_every;
        if every > 0 && k.is_multiple_of(every) && k < s.steps {
            save(run, &m)?;
        }
    }
    pb.finish();
    models::export(&m.policy, &run.stage_output(i, ""), &run.tokenizer_dir)?;
    if let Some(c) = &m.critic {
        models::export(c, &run.stage_output(i, "_critic"), &run.tokenizer_dir)?;
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
    let critic = if s.algorithm.needs_critic() {
        Some(match resume {
            Some(ck) => run.load_model(&ck.join("critic"))?,
            None => match &scorer {
                // The critic starts from the reward model (OpenRLHF's default): it already
                // reads the reward off the sequence.
                Scorer::Model { rm, .. } => {
                    let mut c = rm.duplicate()?;
                    c.move_to(&run.device)?;
                    c
                }
                Scorer::Rule(_) => {
                    models::with_score_head(&policy, step_seed(run.state.seed, i, 0, 7))?
                }
            },
        })
    } else {
        None
    };
    let batch = s.prompts_per_step * s.samples_per_prompt;
    let opt_steps = s.steps * s.ppo_epochs as u64 * (batch / s.mini_batch_size) as u64;
    let mut actor_opt = AdamW::new(&s.actor_optim, &policy.params, opt_steps)?;
    let mut critic_opt = critic
        .as_ref()
        .map(|c| AdamW::new(&s.critic_optim, &c.params, opt_steps))
        .transpose()?;
    if let Some(ck) = resume {
        actor_opt.load(&ck.join("optim").join("actor"), &policy.cfg)?;
        if let (Some(o), Some(c)) = (&mut critic_opt, &critic) {
            o.load(&ck.join("optim").join("critic"), &c.cfg)?;
        }
    }
    let coef = run.state.kl_coef.unwrap_or(s.kl_coef);
    let kl = match s.kl_target {
        Some(t) => KlController::adaptive(coef, t, s.kl_horizon)?,
        None => KlController::fixed(coef)?,
    };
    Ok(RlModels {
        policy,
        reference,
        critic,
        scorer,
        actor_opt,
        critic_opt,
        kl,
        frozen_home,
    })
}

fn save(run: &mut Run, m: &RlModels) -> Result<()> {
    run.state.kl_coef = Some(m.kl.value());
    run.state.shaping = Some(match &m.scorer {
        Scorer::Rule(p) => p.shaping_state(),
        Scorer::Model { shaper, .. } => shaper.state(),
    });
    checkpoint::save(&run.dir, &run.state, run.cfg.run.keep_checkpoints, |d| {
        models::write_into(&m.policy, &d.join("policy"), &run.tokenizer_dir)?;
        m.actor_opt
            .save(&d.join("optim").join("actor"), &m.policy.cfg)?;
        if let (Some(c), Some(o)) = (&m.critic, &m.critic_opt) {
            models::write_into(c, &d.join("critic"), &run.tokenizer_dir)?;
            o.save(&d.join("optim").join("critic"), &c.cfg)?;
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
    let mbt = s.micro_batch_tokens;
    let device = run.device.clone();
    let t_step = Instant::now();
    let idx = run.state.cursor.take(
        s.prompts_per_step,
        run.data.prompts.len(),
        step_seed(seed, i, 0, 1),
    );
    let rows: Vec<_> = idx.iter().map(|&r| run.data.prompts[r].clone()).collect();
    let mut calls = Calls::new(&mut run.log, run.t0, global);
    let tok = &run.tok;

    // actor_gen
    let mut stop_ids = tok.eos_ids.clone();
    stop_ids.extend(&s.generation.stop_token_ids);
    let sampling = actor::SamplingParams {
        temperature: temp,
        top_k: s.generation.top_k,
        top_p: s.generation.top_p as f32,
        min_new_tokens: s.generation.min_new_tokens,
        max_new_tokens: s.generation.max_new_tokens,
        stop_token_ids: stop_ids,
    };
    let gen_seed = step_seed(seed, i, step_no, 2);
    let requests = rows
        .iter()
        .enumerate()
        .map(|(j, r)| {
            Ok(actor::Request {
                tokens: tok.encode(&r.prompt)?,
                sampling: sampling.clone(),
                n: s.samples_per_prompt,
                seed: step_seed(gen_seed, 0, j as u64, 3),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let policy = &m.policy;
    let (completions, stats) = calls.call("actor_gen", "gen", || generate(policy, &requests))?;
    let ro = assemble(tok, &rows, &requests, &completions, stats.decode_tokens)?;

    // reward_inf
    let scored = match &mut m.scorer {
        Scorer::Rule(p) => {
            calls.call("reward_inf", "reward", || rt.block_on(p.score(&ro.samples)))?
        }
        Scorer::Model { rm, shaper } => {
            let home = m.frozen_home.clone();
            calls.call("reward_inf", "reward", || {
                let raw = with_frozen(rm, &device, &home, |rm| sequence_scores(rm, &ro.seqs, mbt))?;
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
    let (ref_lp, _) = calls.call("ref_inf", "ref", || {
        with_frozen(reference, &device, &home, |r| {
            logprobs(r, &ro.seqs, temp, mbt)
        })
    })?;
    let policy = &m.policy;
    let (old_lp, _old_ent) = calls.call("actor_inf", "old_logprob", || {
        logprobs(policy, &ro.seqs, temp, mbt)
    })?;
    let values = match &m.critic {
        Some(c) => Some(calls.call("critic_inf", "values", || token_values(c, &ro.seqs, mbt))?),
        None => None,
    };

    // advantages
    let beta = m.kl.value();
    let est = KlEstimator::from_name(&s.kl_estimator)?;
    let scores: Vec<f32> = scored.shaped.clone();
    let (adv, returns, kl_mean) = calls.call("advantages", "adv", || {
        advantages(
            s,
            &ro,
            &scores,
            &old_lp,
            &ref_lp,
            values.as_deref(),
            beta,
            est,
        )
    })?;
    m.kl.update(kl_mean, ro.seqs.len() as f64);

    let mut metrics: BTreeMap<String, f64> = scored.metrics();
    metrics.insert("kl/mean".into(), kl_mean);
    metrics.insert("kl/coef".into(), beta);
    metrics
        .extend(advantage_metrics(&adv, returns.as_deref(), values.as_deref(), &ro.mask)?.values());

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
    let train_seed = step_seed(seed, i, step_no, 4);
    let policy = &mut m.policy;
    let actor_opt = &mut m.actor_opt;
    let actor_metrics = calls.call("actor_train", "update_actor", || {
        train_actor(
            policy, actor_opt, s, &ro, &old_lp, &ref_lp, &adv, &pl_cfg, temp, train_seed,
        )
    })?;
    let train_tokens = ro.cu.last().copied().unwrap_or(0) * s.ppo_epochs;
    metrics.extend(actor_metrics);
    if let (Some(critic), Some(opt), Some(values), Some(returns)) =
        (&mut m.critic, &mut m.critic_opt, &values, &returns)
    {
        let vcfg = ValueLossConfig {
            clip: (s.value_clip > 0.0).then_some(s.value_clip),
            coef: s.vf_coef,
            agg: loss_agg(s),
        };
        let cm = calls.call("critic_train", "update_critic", || {
            train_critic(critic, opt, s, &ro, values, returns, &vcfg, train_seed)
        })?;
        metrics.extend(cm);
    }

    // Rollout statistics and performance.
    let n = ro.seqs.len() as f64;
    let max_new = s.generation.max_new_tokens;
    metrics.insert(
        "response_length/mean".into(),
        ro.resp_lens.iter().sum::<usize>() as f64 / n,
    );
    metrics.insert(
        "response_length/max".into(),
        ro.resp_lens.iter().copied().max().unwrap_or(0) as f64,
    );
    metrics.insert(
        "response_length/clip_ratio".into(),
        ro.finished.iter().filter(|f| !**f).count() as f64 / n,
    );
    metrics.insert(
        "prompt_length/mean".into(),
        ro.prompt_lens.iter().sum::<usize>() as f64 / n,
    );
    let _ = max_new;
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

/// Packs the completions of `requests` into a [`Rollout`].
fn assemble(
    tok: &crate::tokenizer::Tokenizer,
    rows: &[crate::data::PromptRow],
    requests: &[actor::Request],
    completions: &[actor::Completion],
    decode_tokens: usize,
) -> Result<Rollout> {
    let mut seqs = Vec::with_capacity(completions.len());
    let (mut prompt_lens, mut resp_lens, mut groups, mut finished) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut samples = Vec::with_capacity(completions.len());
    for c in completions {
        let prompt = &requests[c.request].tokens;
        let mut t = prompt.clone();
        t.extend(&c.tokens);
        seqs.push(t);
        prompt_lens.push(prompt.len());
        resp_lens.push(c.tokens.len());
        groups.push(c.request);
        let done = c.finish_reason == actor::FinishReason::Stop;
        finished.push(done);
        samples.push(reward::Sample {
            prompt: rows[c.request].prompt.clone(),
            prompt_tokens: prompt.clone(),
            response: tok.decode(&c.tokens)?,
            response_tokens: c.tokens.clone(),
            finish_reason: if done {
                reward::FinishReason::Stop
            } else {
                reward::FinishReason::Length
            },
            extra: rows[c.request].extra.clone(),
        });
    }
    let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
    let (mask, cu) = response_mask(&lens, &prompt_lens);
    let mut behaviour = vec![0.0f32; mask.len()];
    for (b, c) in completions.iter().enumerate() {
        let start = cu[b] + prompt_lens[b] - 1;
        behaviour[start..start + c.logprobs.len()].copy_from_slice(&c.logprobs);
    }
    Ok(Rollout {
        seqs,
        prompt_lens,
        resp_lens,
        groups,
        finished,
        mask,
        cu,
        behaviour,
        samples,
        decode_tokens,
    })
}

/// Advantages `[N]`, returns `[N]` (PPO, REINFORCE++), and the mean per-token KL to the reference.
#[allow(clippy::too_many_arguments)]
fn advantages(
    s: &RlStage,
    ro: &Rollout,
    scores: &[f32],
    old_lp: &[f32],
    ref_lp: &[f32],
    values: Option<&[f32]>,
    beta: f64,
    est: KlEstimator,
) -> Result<(Vec<f32>, Option<Vec<f32>>, f64)> {
    let (mask, cu) = (&ro.mask, &ro.cu);
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

/// The mini-batches of one epoch: a seeded shuffle of the samples, cut into `mini_batch_size`.
fn mini_batches(n: usize, size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    order.chunks(size).map(|c| c.to_vec()).collect()
}

#[allow(clippy::too_many_arguments)]
fn train_actor(
    policy: &mut Model,
    opt: &mut AdamW,
    s: &RlStage,
    ro: &Rollout,
    old_lp: &[f32],
    ref_lp: &[f32],
    adv: &[f32],
    cfg: &PolicyLossConfig,
    temp: f32,
    seed: u64,
) -> Result<BTreeMap<String, f64>> {
    let mut grads = zero_grads(&policy.params)?;
    let mut avg = StepAverage::default();
    for epoch in 0..s.ppo_epochs {
        for mb in mini_batches(ro.seqs.len(), s.mini_batch_size, seed ^ epoch as u64) {
            let seqs: Vec<Vec<u32>> = mb.iter().map(|&b| ro.seqs[b].clone()).collect();
            let cu = gather_cu(&ro.cu, &mb);
            let mask = gather(&ro.mask, &ro.cu, &mb);
            let (old, refl, a, beh) = (
                gather(old_lp, &ro.cu, &mb),
                gather(ref_lp, &ro.cu, &mb),
                gather(adv, &ro.cu, &mb),
                gather(&ro.behaviour, &ro.cu, &mb),
            );
            let norm = Normaliser::count(&mask, &cu)?;
            clear_grads(&mut grads)?;
            let mut metrics = learner::Metrics::new();
            let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
            for r in micro_batches(&lens, s.micro_batch_tokens) {
                let (t, lcu) = slice(&cu, r.clone());
                lm_train_micro(policy, &mut grads, &seqs[r], temp, |lp, ent| {
                    let out = policy_loss(
                        &PolicyBatch {
                            logprob: lp,
                            old_logprob: &old[t.clone()],
                            advantages: &a[t.clone()],
                            mask: &mask[t.clone()],
                            cu_seqlens: &lcu,
                            entropy: Some(ent),
                            ref_logprob: Some(&refl[t.clone()]),
                            behaviour_logprob: Some(&beh[t.clone()]),
                        },
                        cfg,
                        &norm,
                    )?;
                    metrics.merge(&out.metrics);
                    Ok(LmGrad {
                        d_logprob: out.grad_logprob,
                        d_entropy: out.grad_entropy,
                    })
                })?;
            }
            let info = opt.step(&mut policy.params, &mut grads)?;
            let mut v = metrics.values();
            v.insert("actor/grad_norm".into(), info.grad_norm);
            v.insert("actor/lr".into(), info.lr);
            avg.add(&v);
        }
    }
    Ok(avg.values())
}

#[allow(clippy::too_many_arguments)]
fn train_critic(
    critic: &mut Model,
    opt: &mut AdamW,
    s: &RlStage,
    ro: &Rollout,
    values: &[f32],
    returns: &[f32],
    cfg: &ValueLossConfig,
    seed: u64,
) -> Result<BTreeMap<String, f64>> {
    let mut grads = zero_grads(&critic.params)?;
    let mut avg = StepAverage::default();
    for epoch in 0..s.ppo_epochs {
        for mb in mini_batches(
            ro.seqs.len(),
            s.mini_batch_size,
            seed ^ (epoch as u64 + 1000),
        ) {
            let seqs: Vec<Vec<u32>> = mb.iter().map(|&b| ro.seqs[b].clone()).collect();
            let cu = gather_cu(&ro.cu, &mb);
            let mask = gather(&ro.mask, &ro.cu, &mb);
            let (old, ret) = (gather(values, &ro.cu, &mb), gather(returns, &ro.cu, &mb));
            let norm = Normaliser::count(&mask, &cu)?;
            clear_grads(&mut grads)?;
            let mut metrics = learner::Metrics::new();
            let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
            for r in micro_batches(&lens, s.micro_batch_tokens) {
                let (t, lcu) = slice(&cu, r.clone());
                value_train_micro(critic, &mut grads, &seqs[r], |v| {
                    let out = value_loss(
                        &ValueBatch {
                            values: v,
                            old_values: &old[t.clone()],
                            returns: &ret[t.clone()],
                            mask: &mask[t.clone()],
                            cu_seqlens: &lcu,
                        },
                        cfg,
                        &norm,
                    )?;
                    metrics.merge(&out.metrics);
                    Ok(out.grad_values)
                })?;
            }
            let info = opt.step(&mut critic.params, &mut grads)?;
            let mut v = metrics.values();
            v.insert("critic/grad_norm".into(), info.grad_norm);
            v.insert("critic/lr".into(), info.lr);
            avg.add(&v);
        }
    }
    Ok(avg.values())
}
