//! A training step (SFT, actor, critic, reward model) does not zero its gradient buffers: the
//! first micro-batch writes them (`GradStore::Overwrite`), the later ones add. Here the buffers
//! start full of NaN, so any gradient the first micro-batch failed to write (a matrix, a norm
//! weight, a bias, the score head, the embedding, tied or not) poisons the step; the gradients must equal those of zeroed buffers
//! and accumulation (`GradStore::Add`), on every device (CPU, plus CUDA when present).

use kernels::ops::fill_many;
use kernels::testing::{rel_err, test_devices};
use kernels::{DType, Device, Tensor};
use learner::batch::{Field, Sequence};
use learner::objectives::{LossAgg, PolicyLossConfig, ValueLossConfig};
use learner::optim::{AdamW, AdamWConfig};
use learner::train::{ActorStep, CriticStep, Pair, RewardModelStep, SftStep};
use model::llama::LmHead;
use model::{Arch, Head, ModelConfig, Params};

const V: usize = 16;

fn config(tied: bool) -> ModelConfig {
    // Qwen2: q/k/v biases, so the bias gradients (added with atomics) are covered too.
    let mut cfg = ModelConfig::new(Arch::Qwen2, 32, 64, 2, 4, 2, V);
    cfg.tie_word_embeddings = tied;
    cfg
}

/// A critic / reward model: the score head [1, C] instead of the LM head.
fn value_config() -> ModelConfig {
    ModelConfig::new(Arch::Qwen2, 32, 64, 2, 4, 2, V).with_head(Head::SequenceClassification, 1)
}

/// Sequences of 7..=12 tokens with 3-token prompts, with π_old and advantages for the actor.
fn sequences() -> Vec<Sequence> {
    (0..5u32)
        .map(|s| {
            let len = 7 + (s as usize * 2) % 6;
            let t: Vec<u32> = (0..len as u32)
                .map(|i| (s * 5 + i * 3) % V as u32)
                .collect();
            let n = len - 3;
            let adv: Vec<f32> = (0..n)
                .map(|j| {
                    if (j + s as usize).is_multiple_of(2) {
                        1.0
                    } else {
                        -0.5
                    }
                })
                .collect();
            Sequence::new(t, 3)
                .with(Field::OldLogprob, vec![-2.5; n])
                .with(Field::Advantages, adv)
        })
        .collect()
}

fn to_host(grads: &Params) -> Vec<(String, Vec<f32>)> {
    grads
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec_f32().unwrap()))
        .collect()
}

/// A copy of `params` to step (the original stays for the reference) and its optimiser.
fn copy_with_optimiser(params: &Params) -> (Params, AdamW) {
    let p = params.to_device(params.embed.device()).unwrap();
    let opt = AdamW::new(&p, AdamWConfig::default()).unwrap();
    (p, opt)
}

fn nan_filled(params: &Params) -> Params {
    let mut g = params.zeros_like(DType::F32).unwrap();
    let mut all: Vec<&mut Tensor> = g.tensors_mut().into_iter().map(|(_, t)| t).collect();
    fill_many(&mut all, f32::NAN).unwrap();
    g
}

/// The gradients of one step (queue_step from NaN-filled buffers) and of the reference
/// (zeroed buffers, accumulate).
type Run<'a> = dyn Fn(&Params, &ModelConfig, &mut Params, bool) + 'a;

fn check(device: &Device, tied: bool, what: &str, run: &Run<'_>) {
    check_with(device, &config(tied), what, run)
}

fn check_with(device: &Device, cfg: &ModelConfig, what: &str, run: &Run<'_>) {
    let (cfg, tied) = (cfg.clone(), cfg.tie_word_embeddings);
    // f32 everywhere: the comparison is about which buffers get written, not rounding.
    let params = Params::init(&cfg, 7, device, DType::F32).unwrap();
    let mut stepped = nan_filled(&params);
    run(&params, &cfg, &mut stepped, true);
    let mut reference = params.zeros_like(DType::F32).unwrap();
    run(&params, &cfg, &mut reference, false);
    let tol = if matches!(device, Device::Cpu) {
        0.0
    } else {
        1e-5
    };
    for ((name, got), (_, want)) in to_host(&stepped).iter().zip(to_host(&reference)) {
        assert!(
            got.iter().all(|x| x.is_finite()),
            "{what} ({device:?}, tied {tied}): gradient {name} was not written by the step"
        );
        let e = rel_err(got, &want);
        assert!(
            e <= tol,
            "{what} ({device:?}, tied {tied}): gradient {name} differs from zero + accumulate: rel {e}"
        );
    }
}

#[test]
fn sft_step_writes_every_gradient_without_zeroing() {
    let seqs = sequences();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    for device in test_devices() {
        for tied in [true, false] {
            // 64 tokens: one micro-batch; 20: three (the later ones add onto the first).
            for budget in [64, 20] {
                let step = SftStep {
                    agg: LossAgg::TokenMean,
                    micro_batch_tokens: budget,
                };
                let run = |p: &Params, cfg: &ModelConfig, g: &mut Params, as_step: bool| {
                    if as_step {
                        let (mut p, mut opt) = copy_with_optimiser(p);
                        let q = step
                            .queue_step(&mut p, cfg, g, &mut opt, &refs, 1e-3)
                            .unwrap();
                        step.finish_step(&mut p, &mut opt, q).unwrap();
                    } else {
                        step.accumulate(p, cfg, Some(g), &refs).unwrap();
                    }
                };
                check(&device, tied, &format!("SFT, budget {budget}"), &run);
            }
        }
    }
}

#[test]
fn actor_step_writes_every_gradient_without_zeroing() {
    let seqs = sequences();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    for device in test_devices() {
        for tied in [true, false] {
            let step = ActorStep {
                loss: PolicyLossConfig {
                    entropy_coef: 0.01,
                    ..Default::default()
                },
                head: LmHead::new(0.7),
                micro_batch_tokens: 20,
            };
            let run = |p: &Params, cfg: &ModelConfig, g: &mut Params, as_step: bool| {
                if as_step {
                    let (mut p, mut opt) = copy_with_optimiser(p);
                    let q = step
                        .queue_step(&mut p, cfg, g, &mut opt, &refs, 1e-3)
                        .unwrap();
                    step.finish_step(&mut p, &mut opt, q).unwrap();
                } else {
                    step.accumulate(p, cfg, g, &refs, None).unwrap();
                }
            };
            check(&device, tied, "actor", &run);
        }
    }
}

#[test]
fn critic_and_reward_model_steps_write_every_gradient_without_zeroing() {
    let seqs: Vec<Sequence> = sequences()
        .into_iter()
        .map(|s| {
            let n = s.response_len();
            let old: Vec<f32> = (0..n).map(|j| 0.1 * j as f32 - 0.2).collect();
            let ret: Vec<f32> = (0..n).map(|j| 0.5 - 0.15 * j as f32).collect();
            s.with(Field::Values, old).with(Field::Returns, ret)
        })
        .collect();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let pairs: Vec<Pair> = (0..4u32)
        .map(|i| Pair {
            chosen: (0..6 + i).map(|t| (t * 3 + i) % V as u32).collect(),
            rejected: (0..5 + i).map(|t| (t * 5 + 2 * i) % V as u32).collect(),
        })
        .collect();
    let cfg = value_config();
    for device in test_devices() {
        let critic = CriticStep {
            loss: ValueLossConfig::default(),
            micro_batch_tokens: 20,
        };
        let run = |p: &Params, cfg: &ModelConfig, g: &mut Params, as_step: bool| {
            if as_step {
                let (mut p, mut opt) = copy_with_optimiser(p);
                critic.step(&mut p, cfg, g, &mut opt, &refs, 1e-3).unwrap();
            } else {
                critic.accumulate(p, cfg, g, &refs, None).unwrap();
            }
        };
        check_with(&device, &cfg, "critic", &run);
        // 24 tokens: pairs of 11-17 tokens, so one or two pairs a micro-batch.
        let rm = RewardModelStep {
            micro_batch_tokens: 24,
        };
        let run = |p: &Params, cfg: &ModelConfig, g: &mut Params, as_step: bool| {
            if as_step {
                let (mut p, mut opt) = copy_with_optimiser(p);
                rm.step(&mut p, cfg, g, &mut opt, &pairs, 1e-3).unwrap();
            } else {
                rm.accumulate(p, cfg, g, &pairs).unwrap();
            }
        };
        check_with(&device, &cfg, "reward model", &run);
    }
}
