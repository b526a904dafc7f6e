//! The same training step on every device (CPU, plus CUDA when present; `REALIGN_REQUIRE_GPU=1`
//! makes a missing GPU a failure): bf16 weights and activations on the GPU must agree with the
//! CPU f32 step within bf16 tolerance, and an on-policy PPO mini-batch must see ratio exactly 1
//! and clip fraction 0 on each device.

use std::path::{Path, PathBuf};

use kernels::testing::test_devices;
use kernels::{DType, Device};
use learner::batch::{Field, Sequence};
use learner::objectives::PolicyLossConfig;
use learner::optim::{AdamW, AdamWConfig};
use learner::train::{response_logprobs, ActorStep};
use model::io::load_model;
use model::llama::LmHead;
use model::{ModelConfig, Params};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppo/actor")
}

/// Three sequences from a fixed pattern with π_old from `params` itself and fixed advantages.
fn on_policy(params: &Params, cfg: &ModelConfig, head: &LmHead, budget: usize) -> Vec<Sequence> {
    let raw: [(Vec<u32>, usize); 3] = [
        (vec![3, 7, 1, 4, 9, 2, 2, 11, 5], 3),
        (vec![8, 8, 0, 13, 6, 1, 12], 2),
        (vec![5, 14, 2, 7, 3, 10, 4, 4, 1, 15, 6], 4),
    ];
    let seqs: Vec<Sequence> = raw
        .iter()
        .map(|(t, p)| Sequence::new(t.clone(), *p))
        .collect();
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let old = response_logprobs(params, cfg, head, &refs, budget).unwrap();
    seqs.into_iter()
        .zip(old)
        .map(|(s, lp)| {
            let n = s.response_len();
            let adv: Vec<f32> = (0..n).map(|j| ((j * 7 % 5) as f32 - 2.0) * 0.5).collect();
            s.with(Field::OldLogprob, lp).with(Field::Advantages, adv)
        })
        .collect()
}

fn step() -> ActorStep {
    ActorStep {
        loss: PolicyLossConfig {
            entropy_coef: 0.01,
            ..Default::default()
        },
        head: LmHead::new(0.7),
        micro_batch_tokens: 17,
    }
}

fn grads_of(params: &Params, cfg: &ModelConfig, seqs: &[Sequence]) -> (Params, learner::Metrics) {
    let refs: Vec<&Sequence> = seqs.iter().collect();
    let mut grads = params.zeros_like(DType::F32).unwrap();
    let m = step()
        .accumulate(params, cfg, &mut grads, &refs, None)
        .unwrap();
    (grads, m)
}

#[test]
fn on_policy_ratio_is_exactly_one_on_every_device() {
    for device in test_devices() {
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let (cfg, params) = load_model(&fixture(), &device, dtype).unwrap();
        let seqs = on_policy(&params, &cfg, &step().head, 17);
        let (_, m) = grads_of(&params, &cfg, &seqs);
        assert_eq!(m.get("actor/ratio_mean").unwrap(), 1.0, "{device}");
        assert_eq!(m.get("actor/pg_clipfrac").unwrap(), 0.0, "{device}");
    }
}

#[test]
fn bf16_gpu_step_agrees_with_cpu_f32_step() {
    let (cfg, cpu) = load_model(&fixture(), &Device::Cpu, DType::F32).unwrap();
    // π_old and advantages fixed from the CPU f32 model, so both devices see the same inputs.
    let seqs = on_policy(&cpu, &cfg, &step().head, 17);
    let (g_cpu, m_cpu) = grads_of(&cpu, &cfg, &seqs);
    // bf16 runs on CUDA only (the CPU backend is the f32 reference).
    for device in test_devices().into_iter().filter(|d| d.is_cuda()) {
        let (_, gpu) = load_model(&fixture(), &device, DType::BF16).unwrap();
        let (mut g_gpu, m_gpu) = grads_of(&gpu, &cfg, &seqs);
        let loss = |m: &learner::Metrics| {
            m.get("actor/pg_loss").unwrap() + m.get("actor/entropy_loss").unwrap()
        };
        let (a, b) = (loss(&m_gpu), loss(&m_cpu));
        eprintln!("{device}: bf16 loss {a:.6} vs f32 CPU {b:.6}");
        // The loss is a weighted mean (weights summing to 1) of -A_t·ratio_t and -c·entropy_t, and
        // on policy ratio_t = exp(δ_t) with δ_t the bf16 log-prob error. So
        // |Δloss| ≤ max|A|·mean|δ| + c·mean|Δentropy|, with max|A| = 1 here (advantages in
        // {0, ±0.5, ±1}) and c = 0.01. The per-token errors of a correct bf16 forward at T = 0.7 are
        // ~2e-2 (issue 2's bound; scripts/emulate_bf16_path.py measures 1.9e-2 to 3.5e-2 expected,
        // bf16 weights alone 1.2e-2 to 2.2e-2, the same as transformers' own bf16 forward).
        // Measured on the H200 (2026-11-29): |Δloss| = 2.35e-3 (0.093700 vs 0.096052).
        let bound = 1.0 * 2e-2 + 0.01 * 2e-2;
        assert!(
            (a - b).abs() <= bound,
            "loss {a} (bf16 GPU) vs {b} (f32 CPU): |Δ| {:.3e} > {bound:.3e}",
            (a - b).abs()
        );
        let mut worst = 0.0f32;
        for ((name, x), (_, y)) in g_gpu.tensors().iter().zip(g_cpu.tensors()) {
            let (x, y) = (x.to_vec_f32().unwrap(), y.to_vec_f32().unwrap());
            let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12);
            let err = x
                .iter()
                .zip(&y)
                .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()))
                / scale;
            worst = worst.max(err);
            // bf16 has 8 bits of mantissa (~4e-3); two layers and the head compound it.
            assert!(
                err < 5e-2,
                "{name}: bf16 GPU gradient differs from CPU f32 by {err:.3e} of its scale"
            );
        }
        eprintln!("{device}: worst bf16 gradient error {worst:.3e} of the tensor's scale");
        // One AdamW step on the device: master weights f32, the bf16 working copy written by the kernel.
        let mut params = gpu;
        let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
        let stats = opt.step(&mut params, &mut g_gpu, 1e-3).unwrap();
        assert!(stats.grad_norm.is_finite() && !stats.skipped);
        for (name, w) in params.tensors() {
            let master = opt.state(&name).unwrap().master.to_vec_f32().unwrap();
            let rounded: Vec<f32> = master
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect();
            assert_eq!(
                w.to_vec_f32().unwrap(),
                rounded,
                "{name}: working copy is not bf16(master)"
            );
        }
    }
}
