//! AdamW over Params (master weights, moments, decay mask, clipping, bf16 working copy,
//! checkpoint round trip) against an f64 reference, and the LR schedules against hand values.

mod common;

use common::{assert_close, assert_close1, randn, rng};
use kernels::{DType, Device, Tensor};
use learner::optim::{AdamW, AdamWConfig, LrSchedule, ScheduleKind};
use model::{Arch, ModelConfig, Params};

#[test]
fn lr_schedules_hand_computed() {
    // peak 1e-3, min 1e-4, warmup 2, total 10 (decay over steps 2..10, 8 steps).
    //  warmup: s=0 -> 1e-3 · 1/2 = 5e-4; s=1 -> 1e-3.
    //  s=4: p = 2/8 = 0.25: linear 1e-4 + 9e-4 · 0.75 = 7.75e-4;
    //       cosine 1e-4 + 9e-4 · ½(1 + cos π/4) = 1e-4 + 9e-4 · 0.853553390593 = 8.68198051534e-4
    //  s=6: p = 0.5: both 1e-4 + 9e-4 · 0.5 = 5.5e-4
    //  s >= 10: min 1e-4
    let mk = |kind| LrSchedule {
        kind,
        peak_lr: 1e-3,
        min_lr: 1e-4,
        warmup_steps: 2,
        total_steps: 10,
    };
    let (lin, cos, con) = (
        mk(ScheduleKind::Linear),
        mk(ScheduleKind::Cosine),
        mk(ScheduleKind::Constant),
    );
    for s in [&lin, &cos, &con] {
        s.validate().unwrap();
        assert_close1(s.lr_at(0), 5e-4, 1e-12, "warmup 0");
        assert_close1(s.lr_at(1), 1e-3, 1e-12, "warmup 1");
        assert_close1(s.lr_at(2), 1e-3, 1e-12, "peak");
    }
    assert_close1(lin.lr_at(4), 7.75e-4, 1e-12, "linear 4");
    assert_close1(cos.lr_at(4), 8.68198051534e-4, 1e-12, "cosine 4");
    assert_close1(lin.lr_at(6), 5.5e-4, 1e-12, "linear 6");
    assert_close1(cos.lr_at(6), 5.5e-4, 1e-12, "cosine 6");
    for s in [10, 11, 1000] {
        assert_close1(lin.lr_at(s), 1e-4, 1e-12, "linear end");
        assert_close1(cos.lr_at(s), 1e-4, 1e-12, "cosine end");
        assert_close1(con.lr_at(s), 1e-3, 1e-12, "constant");
    }
    let bad = LrSchedule { min_lr: 1.0, ..lin };
    assert!(bad.validate().unwrap_err().to_string().contains("min_lr"));
}

fn tiny() -> ModelConfig {
    ModelConfig::new(Arch::Qwen2, 8, 12, 1, 2, 1, 11)
}

/// Gradients with seeded random values, same structure as `p`.
fn random_grads(p: &Params, seed: u64, scale: f64) -> Params {
    let mut g = p.zeros_like(DType::F32).unwrap();
    let mut r = rng(seed);
    for (_, t) in g.tensors_mut() {
        let n = t.numel();
        let vals = randn(&mut r, n, scale);
        for (d, v) in t.cpu_f32_mut().unwrap().iter_mut().zip(vals) {
            *d = v as f32;
        }
    }
    g
}

/// f64 AdamW (PyTorch semantics) of one parameter, several steps.
struct RefAdam {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl RefAdam {
    fn step(&mut self, g: &[f64], lr: f64, cfg: &AdamWConfig, wd: f64, t: u64) {
        let (b1, b2) = (cfg.beta1, cfg.beta2);
        for (i, &gi) in g.iter().enumerate() {
            self.p[i] *= 1.0 - lr * wd;
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * gi;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * gi * gi;
            let denom = self.v[i].sqrt() / (1.0 - b2.powi(t as i32)).sqrt() + cfg.eps;
            self.p[i] -= lr / (1.0 - b1.powi(t as i32)) * self.m[i] / denom;
        }
    }
}

fn f64s(t: &kernels::Tensor) -> Vec<f64> {
    t.to_vec_f32().unwrap().iter().map(|&x| x as f64).collect()
}

#[test]
fn adamw_matches_f64_reference_with_decay_mask_and_clipping() {
    let cfg = tiny();
    let mut params = Params::init(&cfg, 3, &Device::Cpu, DType::F32).unwrap();
    let ocfg = AdamWConfig {
        weight_decay: 0.1,
        max_grad_norm: Some(0.5),
        ..Default::default()
    };
    let mut opt = AdamW::new(&params, ocfg).unwrap();
    // Norms and biases are rank 1 and get no decay; matrices do.
    assert!(!opt.state("model.norm.weight").unwrap().decay);
    assert!(
        !opt.state("model.layers.0.self_attn.q_proj.bias")
            .unwrap()
            .decay
    );
    assert!(
        opt.state("model.layers.0.mlp.up_proj.weight")
            .unwrap()
            .decay
    );
    let mut refs: Vec<(String, RefAdam, f64)> = params
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let k = t.numel();
            let wd = if t.shape().len() >= 2 { 0.1 } else { 0.0 };
            (
                n,
                RefAdam {
                    p: f64s(t),
                    m: vec![0.0; k],
                    v: vec![0.0; k],
                },
                wd,
            )
        })
        .collect();
    let lrs = [1e-2, 5e-3, 2e-3];
    for (step, &lr) in lrs.iter().enumerate() {
        // Step 0 has large gradients (clipped), later ones small (not clipped).
        let scale = if step == 0 { 1.0 } else { 1e-3 };
        let mut grads = random_grads(&params, 10 + step as u64, scale);
        let raw: Vec<Vec<f64>> = grads.tensors().iter().map(|(_, t)| f64s(t)).collect();
        let norm: f64 = raw.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let stats = opt.step(&mut params, &mut grads, lr).unwrap();
        assert_close1(stats.grad_norm, norm, 1e-6, "grad norm");
        let coef = if norm > 0.5 { 0.5 / (norm + 1e-6) } else { 1.0 };
        assert_close1(stats.clip_coef, coef, 1e-6, "clip coef");
        assert_eq!(
            step == 0,
            coef < 1.0,
            "the first step must clip and the others not"
        );
        for ((_, r, wd), g) in refs.iter_mut().zip(&raw) {
            let g: Vec<f64> = g.iter().map(|x| x * coef).collect();
            r.step(&g, lr, &ocfg, *wd, step as u64 + 1);
        }
        // The clip factor is applied inside the update: `grads` keeps the raw gradients.
        for ((_, t), g) in grads.tensors().iter().zip(&raw) {
            assert_close(&f64s(t), g, 0.0, "gradients after the step");
        }
    }
    for ((name, t), (_, r, _)) in params.tensors().iter().zip(&refs) {
        assert_close(&f64s(t), &r.p, 2e-5, name);
        let st = opt.state(name).unwrap();
        assert_close(&f64s(&st.exp_avg), &r.m, 2e-5, "m");
        assert_close(&f64s(&st.exp_avg_sq), &r.v, 2e-5, "v");
    }
    assert_eq!(opt.step, 3);
}

#[test]
fn bf16_working_weights_are_the_rounded_master() {
    let cfg = tiny();
    let p32 = Params::init(&cfg, 4, &Device::Cpu, DType::F32).unwrap();
    let mut p16 = p32.cast(DType::BF16).unwrap();
    let mut opt = AdamW::new(&p16, AdamWConfig::default()).unwrap();
    let mut g = random_grads(&p32, 5, 1e-3);
    opt.step(&mut p16, &mut g, 1e-2).unwrap();
    for (name, w) in p16.tensors() {
        assert_eq!(w.dtype(), DType::BF16);
        let master = opt.state(&name).unwrap().master.to_vec_f32().unwrap();
        let rounded: Vec<f32> = master
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        assert_eq!(w.to_vec_f32().unwrap(), rounded, "{name}");
    }
}

#[test]
fn non_finite_gradients_skip_the_update() {
    let cfg = tiny();
    let mut params = Params::init(&cfg, 6, &Device::Cpu, DType::F32).unwrap();
    let before: Vec<Vec<f32>> = params
        .tensors()
        .iter()
        .map(|(_, t)| t.to_vec_f32().unwrap())
        .collect();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    let mut g = random_grads(&params, 7, 1.0);
    g.tensors_mut()[1].1.cpu_f32_mut().unwrap()[0] = f32::NAN;
    let s = opt.step(&mut params, &mut g, 1e-2).unwrap();
    assert!(s.skipped && s.grad_norm.is_nan());
    assert_eq!(opt.step, 0);
    let after: Vec<Vec<f32>> = params
        .tensors()
        .iter()
        .map(|(_, t)| t.to_vec_f32().unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn optimiser_state_round_trips_through_safetensors() {
    let cfg = tiny();
    let mut a = Params::init(&cfg, 8, &Device::Cpu, DType::F32).unwrap();
    let mut opt_a = AdamW::new(
        &a,
        AdamWConfig {
            weight_decay: 0.01,
            ..Default::default()
        },
    )
    .unwrap();
    for s in 0..2 {
        let mut g = random_grads(&a, 20 + s, 0.1);
        opt_a.step(&mut a, &mut g, 1e-2).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optim.safetensors");
    opt_a.save(&path).unwrap();
    let mut b = a.map(|_, t| t.try_clone().map_err(Into::into)).unwrap();
    let mut opt_b = AdamW::load(&path, &b).unwrap();
    assert_eq!(opt_b.step, 2);
    assert_eq!(opt_b.cfg, opt_a.cfg);
    // One more identical step on both: bit-identical results.
    let mut ga = random_grads(&a, 30, 0.1);
    let mut gb = random_grads(&a, 30, 0.1);
    opt_a.step(&mut a, &mut ga, 1e-2).unwrap();
    opt_b.step(&mut b, &mut gb, 1e-2).unwrap();
    for ((n, x), (_, y)) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.to_vec_f32().unwrap(), y.to_vec_f32().unwrap(), "{n}");
    }
    // A state for a different model is refused with the parameter named.
    let other = Params::init(
        &ModelConfig::new(Arch::Qwen2, 8, 12, 1, 2, 1, 13),
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let e = AdamW::load(&path, &other).unwrap_err().to_string();
    assert!(e.contains("embed_tokens"), "{e}");
}

#[test]
fn zero1_sharded_optimiser_equals_the_unsharded_one_bit_for_bit() {
    use learner::optim::shard_by_numel;
    let cfg = tiny();
    let world = 3;
    let ocfg = AdamWConfig {
        weight_decay: 0.1,
        max_grad_norm: Some(0.5),
        ..Default::default()
    };
    let mut full = Params::init(&cfg, 12, &Device::Cpu, DType::F32).unwrap();
    let mut opt = AdamW::new(&full, ocfg).unwrap();
    let shards = shard_by_numel(&full, world).unwrap();
    // Every parameter owned exactly once, and the shares are balanced within the largest tensor.
    let total: usize = full.tensors().iter().map(|(_, t)| t.numel()).sum();
    let mut seen = std::collections::BTreeSet::new();
    for s in &shards {
        for n in s {
            assert!(seen.insert(n.clone()), "{n} owned twice");
        }
    }
    assert_eq!(seen.len(), full.tensors().len());
    let largest = full.tensors().iter().map(|(_, t)| t.numel()).max().unwrap();
    for s in &shards {
        let n: usize = full
            .tensors()
            .iter()
            .filter(|(k, _)| s.contains(k))
            .map(|(_, t)| t.numel())
            .sum();
        assert!(
            n <= total / world + largest,
            "unbalanced share of {n} elements"
        );
    }
    // Each rank: its own replica of the weights and its share of the state.
    let mut replicas: Vec<Params> = (0..world)
        .map(|_| Params::init(&cfg, 12, &Device::Cpu, DType::F32).unwrap())
        .collect();
    let mut opts: Vec<AdamW> = shards
        .iter()
        .zip(&replicas)
        .map(|(s, p)| AdamW::new_owned(p, ocfg, |n| s.contains(n)).unwrap())
        .collect();
    for step in 0..3u64 {
        let scale = if step == 0 { 1.0 } else { 1e-3 };
        let mut g = random_grads(&full, 40 + step, scale);
        let s_full = opt.step(&mut full, &mut g, 1e-2).unwrap();
        // 1-2: local sums of squares, "all-reduced".
        let grads: Vec<Params> = (0..world)
            .map(|_| random_grads(&full, 40 + step, scale))
            .collect();
        let ss: f64 = opts
            .iter()
            .zip(&grads)
            .map(|(o, g)| o.owned_sum_squares(g).unwrap())
            .sum();
        let norm = ss.sqrt();
        assert!((norm - s_full.grad_norm).abs() <= 1e-9 * norm);
        // 3: each rank steps its share.
        for ((o, p), mut g) in opts.iter_mut().zip(replicas.iter_mut()).zip(grads) {
            o.step_with_norm(p, &mut g, 1e-2, s_full.grad_norm).unwrap();
        }
        // 4: all-gather: every rank copies each parameter from its owner.
        let owner_vals: std::collections::BTreeMap<String, Vec<f32>> = shards
            .iter()
            .enumerate()
            .flat_map(|(r, s)| {
                let rep = &replicas[r];
                s.iter()
                    .map(|n| {
                        let t = rep.tensors().into_iter().find(|(k, _)| k == n).unwrap().1;
                        (n.clone(), t.to_vec_f32().unwrap())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for rep in replicas.iter_mut() {
            for (n, t) in rep.tensors_mut() {
                t.cpu_f32_mut().unwrap().copy_from_slice(&owner_vals[&n]);
            }
        }
    }
    for rep in &replicas {
        for ((n, a), (_, b)) in rep.tensors().iter().zip(full.tensors()) {
            assert_eq!(a.to_vec_f32().unwrap(), b.to_vec_f32().unwrap(), "{n}");
        }
    }
}

/// On every device (CPU, and the GPU where the skip is decided on the device): a non-finite step
/// changes nothing, not even the step counter, so the next finite step equals a fresh optimiser's
/// first step (same bias corrections).
#[test]
fn skipped_step_leaves_the_count_for_the_next_on_every_device() {
    let cfg = tiny();
    for dev in kernels::testing::test_devices() {
        let dtype = if dev.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let mut params = Params::init(&cfg, 6, &dev, dtype).unwrap();
        let mut fresh_params = Params::init(&cfg, 6, &dev, dtype).unwrap();
        let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
        let mut fresh = AdamW::new(&fresh_params, AdamWConfig::default()).unwrap();
        let good = random_grads(
            &Params::init(&cfg, 6, &Device::Cpu, DType::F32).unwrap(),
            8,
            3.0,
        );
        let to_dev = |g: &Params| {
            let mut out = g.zeros_like(DType::F32).unwrap();
            for ((_, d), (_, s)) in out.tensors_mut().into_iter().zip(g.tensors()) {
                *d = s.to_device(&dev).unwrap();
            }
            out
        };
        let mut bad = to_dev(&good);
        let mut nan = bad.tensors()[1].1.to_vec_f32().unwrap();
        nan[0] = f32::INFINITY;
        let shape = bad.tensors()[1].1.shape().to_vec();
        *bad.tensors_mut()[1].1 = Tensor::from_f32(nan, &shape, &dev).unwrap();
        let s = opt.step(&mut params, &mut bad, 1e-2).unwrap();
        assert!(s.skipped && !s.grad_norm.is_finite(), "{dev}: {s:?}");
        assert_eq!(opt.step, 0, "{dev}");
        let s = opt.step(&mut params, &mut to_dev(&good), 1e-2).unwrap();
        let f = fresh
            .step(&mut fresh_params, &mut to_dev(&good), 1e-2)
            .unwrap();
        assert!(
            !s.skipped && s.clip_coef < 1.0,
            "{dev}: the test must clip: {s:?}"
        );
        assert_eq!(s.grad_norm, f.grad_norm, "{dev}");
        assert_eq!(opt.step, 1, "{dev}");
        for name in opt.names() {
            let (a, b) = (opt.state(name).unwrap(), fresh.state(name).unwrap());
            assert_eq!(
                a.master.to_vec_f32().unwrap(),
                b.master.to_vec_f32().unwrap(),
                "{dev}: {name}"
            );
        }
    }
}
