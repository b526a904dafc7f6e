//! The actor step's device-side ∂loss/∂logp (`kernels::ops::policy_logprob_grad`, fed as
//! learner/src/train/actor.rs feeds it) equals the gradient of the host's `policy_loss`: bit for
//! bit on the CPU, within f32 rounding of `exp` on the GPU. Every clip / dual-clip / TIS / KL
//! variant, log-ratios beyond the ±20 clamp included.

mod common;

use common::{randn, rng};
use kernels::ops::{policy_logprob_grad, KlGrad, PolicyGradInputs, PolicyGradSpec};
use kernels::testing::{rel_err, test_devices};
use kernels::Tensor;
use learner::objectives::{
    policy_loss, token_weights, KlEstimator, KlLoss, LossAgg, Normaliser, PolicyBatch,
    PolicyLossConfig,
};
use learner::real::Real;

fn configs() -> Vec<PolicyLossConfig> {
    let base = PolicyLossConfig::default();
    let mut v = vec![base];
    v.push(PolicyLossConfig {
        clip_high: 0.28,
        dual_clip: Some(3.0),
        agg: LossAgg::SeqMeanTokenMean,
        ..base
    });
    for (k, est) in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3]
        .into_iter()
        .enumerate()
    {
        v.push(PolicyLossConfig {
            kl_loss: Some(KlLoss {
                coef: 0.04 * (k + 1) as f64,
                estimator: est,
            }),
            tis_cap: (k != 1).then_some(2.0),
            entropy_coef: 0.01,
            agg: LossAgg::SeqMeanTokenSumNorm { constant: 9.0 },
            ..base
        });
    }
    v
}

#[test]
fn device_policy_gradient_equals_the_host_loss_gradient() {
    let n = 1037;
    let cu = [0usize, 300, 301, 800, n];
    let mut r = rng(5);
    let f = |v: Vec<f64>| -> Vec<f32> { v.into_iter().map(|x| x as f32).collect() };
    let old = f(randn(&mut r, n, 1.0).into_iter().map(|x| x - 2.0).collect());
    let mut lp: Vec<f32> = old
        .iter()
        .zip(f(randn(&mut r, n, 0.3)))
        .map(|(&o, d)| o + d)
        .collect();
    // A few log-ratios beyond the ±20 clamp (their slope is 0).
    lp[3] = old[3] + 25.0;
    lp[500] = old[500] - 30.0;
    let adv = f(randn(&mut r, n, 1.0));
    let refl = f(randn(&mut r, n, 1.0).into_iter().map(|x| x - 2.0).collect());
    let behaviour: Vec<f32> = old
        .iter()
        .zip(f(randn(&mut r, n, 0.5)))
        .map(|(&o, d)| o + d)
        .collect();
    let entropy = f(randn(&mut r, n, 1.0).into_iter().map(|x| x.abs()).collect());
    let mask: Vec<f32> = (0..n).map(|t| if t % 7 == 0 { 0.0 } else { 1.0 }).collect();
    let norm = Normaliser::count(&mask, &cu).unwrap();

    for (k, cfg) in configs().into_iter().enumerate() {
        let host = policy_loss(
            &PolicyBatch {
                logprob: &lp,
                old_logprob: &old,
                advantages: &adv,
                mask: &mask,
                cu_seqlens: &cu,
                entropy: Some(&entropy),
                ref_logprob: Some(&refl),
                behaviour_logprob: Some(&behaviour),
            },
            &cfg,
            &norm,
        )
        .unwrap();
        let w: Vec<f32> = token_weights(&mask, &cu, cfg.agg, &norm).unwrap();
        let tis: Option<Vec<f32>> = cfg.tis_cap.map(|cap| {
            old.iter()
                .zip(&behaviour)
                .map(|(&o, &b)| (o - b).clamp_to(-20.0, 20.0).exp().min_of(cap as f32))
                .collect()
        });
        let spec = PolicyGradSpec {
            clip_low: cfg.clip_low,
            clip_high: cfg.clip_high,
            dual_clip: cfg.dual_clip,
            kl: cfg.kl_loss.map(|kl| {
                let g = match kl.estimator {
                    KlEstimator::K1 => KlGrad::K1,
                    KlEstimator::K2 => KlGrad::K2,
                    KlEstimator::K3 => KlGrad::K3,
                };
                (kl.coef, g)
            }),
        };
        for dev in test_devices() {
            let t = |v: &[f32]| Tensor::from_f32(v.to_vec(), &[n], &dev).unwrap();
            let tis_t = tis.as_ref().map(|v| t(v));
            let ref_t = t(&refl);
            let got = policy_logprob_grad(
                &PolicyGradInputs {
                    logprob: &t(&lp),
                    old_logprob: &t(&old),
                    advantages: &t(&adv),
                    weight: &t(&w),
                    tis_weight: tis_t.as_ref(),
                    ref_logprob: Some(&ref_t),
                },
                &spec,
            )
            .unwrap()
            .to_vec_f32()
            .unwrap();
            assert!(host.grad_logprob.iter().any(|&g| g != 0.0));
            if dev.is_cpu() {
                assert_eq!(got, host.grad_logprob, "config {k}: CPU must be bit-equal");
            } else {
                let rel = rel_err(&got, &host.grad_logprob);
                println!("{dev} config {k}: rel_err {rel:.2e}");
                assert!(rel < 1e-5, "{dev} config {k}: rel_err {rel:.2e}");
            }
            // Clamped log-ratios carry no surrogate slope on any device (only the KL term).
            if cfg.kl_loss.is_none() {
                assert_eq!((got[3], got[500]), (0.0, 0.0), "{dev} config {k}");
            }
        }
    }
}
