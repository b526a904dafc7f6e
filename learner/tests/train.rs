//! Training steps on a tiny decoder on CPU: SFT learns a synthetic task, a reward model learns
//! synthetic preferences, PPO with policy == behaviour policy sees ratio exactly 1.

mod common;

use common::rng;
use kernels::{DType, Device};
use learner::batch::{Field, Sequence};
use learner::objectives::{LossAgg, PolicyLossConfig};
use learner::optim::{AdamW, AdamWConfig};
use learner::train::{
    response_logprobs, score_sequences, ActorStep, Pair, RewardModelStep, SftStep,
};
use model::llama::LmHead;
use model::{Arch, Head, ModelConfig, Params};
use rand::Rng;

const V: usize = 12;

fn tiny(head: Head) -> ModelConfig {
    ModelConfig::new(Arch::Qwen2, 32, 64, 2, 4, 2, V).with_head(head, 1)
}

/// Counting task: a prompt of 3 random tokens, then the response continues from the last prompt
/// token by +1 (mod V). Only the response is trained.
fn counting(n: usize, seed: u64) -> Vec<Sequence> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let mut t: Vec<u32> = (0..3).map(|_| r.random_range(0..V as u32)).collect();
            let len = r.random_range(4..9);
            for _ in 0..len {
                let next = (t.last().unwrap() + 1) % V as u32;
                t.push(next);
            }
            Sequence::new(t, 3)
        })
        .collect()
}

#[test]
fn sft_on_a_counting_task_drives_the_held_out_loss_down() {
    let cfg = tiny(Head::CausalLm);
    let mut params = Params::init(&cfg, 1, &Device::Cpu, DType::F32).unwrap();
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    let step = SftStep {
        agg: LossAgg::TokenMean,
        micro_batch_tokens: 64,
    };
    let train = counting(64, 2);
    let held = counting(32, 3);
    let held_refs: Vec<&Sequence> = held.iter().collect();
    let eval = |p: &Params| {
        step.accumulate(p, &cfg, None, &held_refs)
            .unwrap()
            .get("sft/loss")
            .unwrap()
    };
    let before = eval(&params);
    for s in 0..40 {
        let mb: Vec<&Sequence> = train.iter().skip((s % 4) * 16).take(16).collect();
        step.step(&mut params, &cfg, &mut grads, &mut opt, &mb, 1e-2)
            .unwrap();
    }
    let after = eval(&params);
    eprintln!("SFT held-out loss: {before:.4} -> {after:.4}");
    // ln 12 = 2.48 for a uniform guess; the task is deterministic given the previous token.
    assert!(before > 2.0, "initial held-out loss {before}");
    assert!(
        after < 0.3,
        "held-out loss went from {before} to only {after}"
    );
}

/// Preferences: the chosen sequence holds more copies of token 1 than the rejected one.
fn preference_pairs(n: usize, seed: u64) -> Vec<Pair> {
    let mut r = rng(seed);
    let mut seq = |ones: usize| {
        let len = 8;
        let mut t: Vec<u32> = (0..len).map(|_| r.random_range(2..V as u32)).collect();
        for k in 0..ones {
            t[(k * 3 + 1) % len] = 1;
        }
        t
    };
    (0..n)
        .map(|k| {
            let lo = k % 2;
            Pair {
                chosen: seq(lo + 2),
                rejected: seq(lo),
            }
        })
        .collect()
}

#[test]
fn reward_model_reaches_high_held_out_pairwise_accuracy() {
    let cfg = tiny(Head::SequenceClassification);
    let mut params = Params::init(&cfg, 4, &Device::Cpu, DType::F32).unwrap();
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    let step = RewardModelStep {
        micro_batch_tokens: 128,
    };
    let train = preference_pairs(64, 5);
    let held = preference_pairs(40, 6);
    let accuracy = |p: &Params| {
        let seqs: Vec<Vec<u32>> = held
            .iter()
            .flat_map(|x| [x.chosen.clone(), x.rejected.clone()])
            .collect();
        let s = score_sequences(p, &cfg, &seqs, 256).unwrap();
        s.chunks(2).filter(|c| c[0] > c[1]).count() as f64 / held.len() as f64
    };
    let before = accuracy(&params);
    let mut last = None;
    for s in 0..40 {
        let mb = &train[(s % 4) * 16..(s % 4) * 16 + 16];
        last = Some(
            step.step(&mut params, &cfg, &mut grads, &mut opt, mb, 3e-3)
                .unwrap(),
        );
    }
    let after = accuracy(&params);
    eprintln!("RM held-out accuracy: {before:.3} -> {after:.3}");
    let m = last.unwrap();
    assert!(m.get("rm/accuracy").is_some() && m.get("rm/loss").is_some());
    assert!(after >= 0.9, "held-out accuracy {before} -> {after}");
}

/// Rollout-like sequences with advantages, and π_old from the same policy.
fn on_policy_batch(
    params: &Params,
    cfg: &ModelConfig,
    head: &LmHead,
    budget: usize,
) -> Vec<Sequence> {
    let mut r = rng(7);
    let seqs: Vec<Sequence> = (0..10)
        .map(|_| {
            let p = r.random_range(1..5);
            let n = p + r.random_range(1..10);
            Sequence::new((0..n).map(|_| r.random_range(0..V as u32)).collect(), p)
        })
        .collect();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let old = response_logprobs(params, cfg, head, &refs, budget).unwrap();
    seqs.iter()
        .zip(old)
        .map(|(s, lp)| {
            let adv: Vec<f32> = (0..s.response_len())
                .map(|_| r.random_range(-1.0..1.0))
                .collect();
            s.clone()
                .with(Field::OldLogprob, lp)
                .with(Field::Advantages, adv)
        })
        .collect()
}

#[test]
fn on_policy_first_ppo_minibatch_has_ratio_exactly_one() {
    let cfg = tiny(Head::CausalLm);
    let params = Params::init(&cfg, 8, &Device::Cpu, DType::F32).unwrap();
    let head = LmHead::new(0.7);
    for (old_budget, train_budget) in [(40, 40), (1000, 25)] {
        let seqs = on_policy_batch(&params, &cfg, &head, old_budget);
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let mut grads = params.zeros_like(DType::F32).unwrap();
        let step = ActorStep {
            loss: PolicyLossConfig {
                dual_clip: Some(3.0),
                ..Default::default()
            },
            head,
            micro_batch_tokens: train_budget,
        };
        let m = step
            .accumulate(&params, &cfg, &mut grads, &refs, None)
            .unwrap();
        let what = format!("π_old micro-batches of {old_budget} tokens, training {train_budget}");
        assert_eq!(m.get("actor/ratio_mean").unwrap(), 1.0, "{what}");
        assert_eq!(m.get("actor/pg_clipfrac").unwrap(), 0.0, "{what}");
        assert_eq!(m.get("actor/ppo_kl").unwrap(), 0.0, "{what}");
    }
}

#[test]
fn data_parallel_thread_ranks_sum_to_the_one_rank_gradient() {
    // 3 thread-ranks, each with its own copy of the weights and its token-balanced share of the
    // mini-batch, normalised by the global counts: the sum of their gradients (the all-reduce) is
    // the one-rank gradient.
    let cfg = tiny(Head::CausalLm);
    let params = Params::init(&cfg, 9, &Device::Cpu, DType::F32).unwrap();
    let head = LmHead::new(1.0);
    // Shift π_old so that some ratios leave the clip range.
    let seqs: Vec<Sequence> = on_policy_batch(&params, &cfg, &head, 1000)
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let lp = s.fields.get_mut(&Field::OldLogprob).unwrap();
            for (j, x) in lp.iter_mut().enumerate() {
                *x += 0.4 * (((i * 5 + j * 3) % 7) as f32 / 3.0 - 1.0);
            }
            s
        })
        .collect();
    let step = ActorStep {
        loss: PolicyLossConfig::default(),
        head,
        micro_batch_tokens: 16,
    };
    let all: Vec<&Sequence> = seqs.iter().collect();
    let whole = learner::batch::pack(&all).unwrap();
    let global =
        learner::objectives::Normaliser::count(&whole.loss_mask, &whole.cu_seqlens).unwrap();
    let mut one = params.zeros_like(DType::F32).unwrap();
    let m_one = step
        .accumulate(&params, &cfg, &mut one, &all, Some(global))
        .unwrap();
    assert!(m_one.get("actor/pg_clipfrac").unwrap() > 0.0);

    let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
    let parts = learner::batch::balance_by_tokens(&lens, 3).unwrap();
    let ranks: Vec<(Vec<Vec<f32>>, learner::Metrics)> = std::thread::scope(|sc| {
        let hs: Vec<_> = parts
            .iter()
            .map(|p| {
                let (cfg, seqs) = (&cfg, &seqs);
                sc.spawn(move || {
                    let params = Params::init(cfg, 9, &Device::Cpu, DType::F32).unwrap();
                    let mine: Vec<&Sequence> = p.iter().map(|&i| &seqs[i]).collect();
                    let mut g = params.zeros_like(DType::F32).unwrap();
                    let m = step
                        .accumulate(&params, cfg, &mut g, &mine, Some(global))
                        .unwrap();
                    let host = g
                        .tensors()
                        .iter()
                        .map(|(_, t)| t.to_vec_f32().unwrap())
                        .collect();
                    (host, m)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut merged = learner::Metrics::new();
    for (_, m) in &ranks {
        merged.merge(m);
    }
    for (k, v) in m_one.values() {
        let got = merged.get(&k).unwrap();
        assert!(
            (got - v).abs() <= 1e-5 * v.abs().max(1.0),
            "{k}: ranks {got} vs one rank {v}"
        );
    }
    for (t, (name, g)) in one.tensors().iter().enumerate() {
        let want = g.to_vec_f32().unwrap();
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
        for (e, w) in want.iter().enumerate() {
            let sum: f32 = ranks.iter().map(|(h, _)| h[t][e]).sum();
            assert!(
                (sum - w).abs() <= 1e-5 * scale,
                "{name}[{e}]: ranks sum {sum} vs one rank {w}"
            );
        }
    }
}

#[test]
fn ppo_update_first_minibatch_is_on_policy_and_later_ones_move() {
    // 2 passes × 2 mini-batches over an on-policy batch: step 0 sees ratio exactly 1 and no
    // clipping; after it the weights have changed, so later mini-batches see ratio ≠ 1.
    use learner::batch::MiniBatchConfig;
    use learner::train::{update_actor, Trainee};
    let cfg = tiny(Head::CausalLm);
    let mut params = Params::init(&cfg, 10, &Device::Cpu, DType::F32).unwrap();
    let head = LmHead::new(1.0);
    let seqs = on_policy_batch(&params, &cfg, &head, 32);
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    let step = ActorStep {
        loss: PolicyLossConfig::default(),
        head,
        micro_batch_tokens: 32,
    };
    let mb = MiniBatchConfig {
        num_mini_batches: 2,
        epochs: 2,
        shuffle: true,
        seed: 1,
    };
    let trainee = Trainee {
        params: &mut params,
        cfg: &cfg,
        grads: &mut grads,
        opt: &mut opt,
    };
    let out = update_actor(&step, trainee, &seqs, &mb, 1e-2).unwrap();
    assert_eq!(out.per_step.len(), 4);
    assert_eq!(out.per_step[0].get("actor/ratio_mean").unwrap(), 1.0);
    assert_eq!(out.per_step[0].get("actor/pg_clipfrac").unwrap(), 0.0);
    for m in &out.per_step[1..] {
        assert_ne!(m.get("actor/ratio_mean").unwrap(), 1.0);
        assert!(m.get("actor/grad_norm").unwrap() > 0.0);
    }
    assert_eq!(opt.step, 4);
    assert!(out.mean.get("actor/ppo_kl").is_some());
}
