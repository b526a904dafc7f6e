//! Every objective against hand-computed values (arithmetic in the comments) and every closed-form
//! gradient against f64 central finite differences.

mod common;

use common::{assert_close, assert_close1, finite_diff, randn, rng};
use learner::objectives::{
    bradley_terry_loss, policy_loss, sft_loss, value_loss, KlEstimator, KlLoss, LossAgg,
    Normaliser, PolicyBatch, PolicyLossConfig, ValueBatch, ValueLossConfig,
};
use rand::Rng;

const ALL_AGGS: [LossAgg; 4] = [
    LossAgg::TokenMean,
    LossAgg::SeqMeanTokenMean,
    LossAgg::SeqMeanTokenSum,
    LossAgg::SeqMeanTokenSumNorm { constant: 7.0 },
];

fn local_norm(mask: &[f64], cu: &[usize]) -> Normaliser {
    Normaliser::count(mask, cu).unwrap()
}

// ---------------------------------------------------------------- SFT and aggregation

#[test]
fn sft_token_mean_hand_computed() {
    // Two sequences [0,2) and [2,4); token 0 is a prompt token (mask 0).
    // NLL of the three response tokens: 2 + 0.5 + 3 = 5.5; token-mean: 5.5 / 3 = 1.833333.
    // ∂loss/∂logp_t = -m_t / 3.
    let lp = [-1.0, -2.0, -0.5, -3.0];
    let mask = [0.0, 1.0, 1.0, 1.0];
    let cu = [0, 2, 4];
    let out = sft_loss(&lp, &mask, &cu, LossAgg::TokenMean, &local_norm(&mask, &cu)).unwrap();
    assert_close1(out.loss, 5.5 / 3.0, 1e-12, "loss");
    assert_close(
        &out.grad_logprob,
        &[0.0, -1.0 / 3.0, -1.0 / 3.0, -1.0 / 3.0],
        1e-12,
        "grad",
    );
    assert_close1(
        out.metrics.get("sft/loss").unwrap(),
        5.5 / 3.0,
        1e-12,
        "sft/loss",
    );
}

#[test]
fn aggregation_modes_hand_computed() {
    // Per-token losses l = [1, 2, 3, 4] (as NLL with logp = -l); sequence 0 = tokens 0..3 (sum 6,
    // 3 tokens), sequence 1 = token 3 (sum 4, 1 token).
    //   token-mean:              (1+2+3+4) / 4           = 2.5
    //   seq-mean-token-mean:     (6/3 + 4/1) / 2         = 3.0
    //   seq-mean-token-sum:      (6 + 4) / 2             = 5.0
    //   Dr.GRPO, C = 4:          (6 + 4) / (4 · 2)       = 1.25
    let lp = [-1.0, -2.0, -3.0, -4.0];
    let mask = [1.0; 4];
    let cu = [0, 3, 4];
    let norm = local_norm(&mask, &cu);
    let cases = [
        (LossAgg::TokenMean, 2.5),
        (LossAgg::SeqMeanTokenMean, 3.0),
        (LossAgg::SeqMeanTokenSum, 5.0),
        (LossAgg::SeqMeanTokenSumNorm { constant: 4.0 }, 1.25),
    ];
    for (agg, want) in cases {
        let out = sft_loss(&lp, &mask, &cu, agg, &norm).unwrap();
        assert_close1(out.loss, want, 1e-12, &format!("{agg:?}"));
    }
    assert_eq!(
        LossAgg::from_name("token_sum_norm", 4.0).unwrap(),
        LossAgg::SeqMeanTokenSumNorm { constant: 4.0 }
    );
    assert_eq!(
        LossAgg::from_name("seq-mean-token-mean", 0.0).unwrap(),
        LossAgg::SeqMeanTokenMean
    );
    let err = LossAgg::from_name("token_avg", 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("token_avg"), "{err}");
}

#[test]
fn micro_batches_with_global_normaliser_add_up_to_the_full_batch() {
    // Split 5 sequences into micro-batches {0,1} and {2,3,4}: with the normaliser counted over
    // the whole mini-batch, losses and gradients of the parts concatenate to the whole's.
    let mut r = rng(7);
    let lens = [3usize, 5, 2, 4, 6];
    let n: usize = lens.iter().sum();
    let lp = randn(&mut r, n, 1.0);
    let mask: Vec<f64> = (0..n)
        .map(|_| if r.random::<f64>() < 0.8 { 1.0 } else { 0.0 })
        .collect();
    let mut cu = vec![0];
    for l in lens {
        cu.push(cu.last().unwrap() + l);
    }
    for agg in ALL_AGGS {
        let whole = sft_loss(&lp, &mask, &cu, agg, &local_norm(&mask, &cu)).unwrap();
        let split = cu[2];
        let (cu_a, cu_b): (Vec<usize>, Vec<usize>) = (
            cu[..3].to_vec(),
            cu[2..].iter().map(|c| c - split).collect(),
        );
        let na = local_norm(&mask[..split], &cu_a);
        let nb = local_norm(&mask[split..], &cu_b);
        let global = na.plus(nb);
        let a = sft_loss(&lp[..split], &mask[..split], &cu_a, agg, &global).unwrap();
        let b = sft_loss(&lp[split..], &mask[split..], &cu_b, agg, &global).unwrap();
        assert_close1(a.loss + b.loss, whole.loss, 1e-12, &format!("{agg:?} loss"));
        let grads: Vec<f64> = a
            .grad_logprob
            .iter()
            .chain(&b.grad_logprob)
            .copied()
            .collect();
        assert_close(&grads, &whole.grad_logprob, 1e-12, &format!("{agg:?} grad"));
    }
}

#[test]
fn sft_gradient_matches_finite_differences() {
    let mut r = rng(1);
    let lp = randn(&mut r, 9, 1.0);
    let mask = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0];
    let cu = [0, 3, 8, 9];
    for agg in ALL_AGGS {
        let norm = local_norm(&mask, &cu);
        let out = sft_loss(&lp, &mask, &cu, agg, &norm).unwrap();
        let fd = finite_diff(
            |x| sft_loss(x, &mask, &cu, agg, &norm).unwrap().loss,
            &lp,
            1e-5,
        );
        assert_close(&out.grad_logprob, &fd, 1e-8, &format!("{agg:?}"));
    }
}

#[test]
fn bad_inputs_are_errors_that_name_the_input() {
    let e = sft_loss(
        &[0.0; 3],
        &[1.0; 4],
        &[0, 4],
        LossAgg::TokenMean,
        &Normaliser::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("logprob"), "{e}");
    let e = sft_loss(
        &[0.0; 4],
        &[1.0; 4],
        &[0, 3],
        LossAgg::TokenMean,
        &Normaliser::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cu_seqlens"), "{e}");
    // A normaliser smaller than the micro-batch can only come from a counting bug upstream.
    let e = sft_loss(
        &[0.0; 4],
        &[1.0; 4],
        &[0, 4],
        LossAgg::TokenMean,
        &Normaliser::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("normaliser"), "{e}");
}

// ---------------------------------------------------------------- Bradley–Terry

#[test]
fn bradley_terry_hand_computed() {
    // d = s_c - s_r = [2 - 1, 0.5 - 1.5] = [1, -1].
    // -log σ(1) = ln(1 + e^-1) = 0.313261687518; -log σ(-1) = ln(1 + e) = 1.313261687518.
    // loss = (0.313261687518 + 1.313261687518) / 2 = 0.813261687518.
    // ∂/∂s_c = -σ(-d)/2: σ(-1) = 0.268941421370 -> -0.134470710685; σ(1) = 0.731058578630 -> -0.365529289315.
    // accuracy: only pair 0 has s_c > s_r -> 0.5.
    let out = bradley_terry_loss(&[2.0, 0.5], &[1.0, 1.5], None, 2).unwrap();
    assert_close1(out.loss, 0.813261687518, 1e-11, "loss");
    assert_close(
        &out.grad_chosen,
        &[-0.134470710685, -0.365529289315],
        1e-11,
        "grad chosen",
    );
    assert_close(
        &out.grad_rejected,
        &[0.134470710685, 0.365529289315],
        1e-11,
        "grad rejected",
    );
    assert_close1(
        out.metrics.get("rm/accuracy").unwrap(),
        0.5,
        1e-12,
        "accuracy",
    );
    // Margin 1 on pair 0: d0 = 0, -log σ(0) = ln 2 = 0.693147180560.
    let out = bradley_terry_loss(&[2.0, 0.5], &[1.0, 1.5], Some(&[1.0, 0.0]), 2).unwrap();
    assert_close1(
        out.loss,
        (std::f64::consts::LN_2 + 1.313261687518) / 2.0,
        1e-11,
        "loss with margin",
    );
    // Large gaps stay finite: softplus(-1000) ≈ 0, softplus(1000) = 1000.
    let out = bradley_terry_loss(&[1000.0, -500.0], &[0.0, 500.0], None, 2).unwrap();
    assert_close1(out.loss, 500.0, 1e-9, "large gaps");
}

#[test]
fn bradley_terry_gradient_matches_finite_differences() {
    let mut r = rng(2);
    let c = randn(&mut r, 6, 2.0);
    let rj = randn(&mut r, 6, 2.0);
    let margin = randn(&mut r, 6, 0.5);
    let out = bradley_terry_loss(&c, &rj, Some(&margin), 10).unwrap();
    let fd_c = finite_diff(
        |x| bradley_terry_loss(x, &rj, Some(&margin), 10).unwrap().loss,
        &c,
        1e-5,
    );
    let fd_r = finite_diff(
        |x| bradley_terry_loss(&c, x, Some(&margin), 10).unwrap().loss,
        &rj,
        1e-5,
    );
    assert_close(&out.grad_chosen, &fd_c, 1e-8, "chosen");
    assert_close(&out.grad_rejected, &fd_r, 1e-8, "rejected");
}

// ---------------------------------------------------------------- PPO policy loss

fn batch<'a>(
    lp: &'a [f64],
    old: &'a [f64],
    adv: &'a [f64],
    mask: &'a [f64],
    cu: &'a [usize],
) -> PolicyBatch<'a, f64> {
    PolicyBatch {
        logprob: lp,
        old_logprob: old,
        advantages: adv,
        mask,
        cu_seqlens: cu,
        entropy: None,
        ref_logprob: None,
        behaviour_logprob: None,
    }
}

#[test]
fn ppo_clip_hand_computed() {
    // ε = 0.2, logp_old = -1, logp = -1 + ln ρ:
    //  t0: ρ 1.1, A  1: pg1 = -1.1, pg2 = -1.1        -> -1.1, unclipped, ∂ = -Aρ = -1.1
    //  t1: ρ 1.5, A  1: pg1 = -1.5, pg2 = -1.2        -> -1.2, clipped,   ∂ = 0
    //  t2: ρ 0.5, A -1: pg1 =  0.5, pg2 =  0.8        ->  0.8, clipped,   ∂ = 0
    //  t3: ρ 0.9, A -2: pg1 =  1.8, pg2 =  1.8        ->  1.8, unclipped, ∂ = -Aρ = 1.8
    // token-mean: (-1.1 - 1.2 + 0.8 + 1.8) / 4 = 0.075; grads / 4 = [-0.275, 0, 0, 0.45].
    // clipfrac 2/4; ratio_mean (1.1+1.5+0.5+0.9)/4 = 1.0;
    // ppo_kl = mean(-ln ρ) = -(0.0953102 + 0.4054651 - 0.6931472 - 0.1053605)/4 = 0.0744331.
    let ratios: [f64; 4] = [1.1, 1.5, 0.5, 0.9];
    let old = [-1.0; 4];
    let lp: Vec<f64> = ratios.iter().map(|r| -1.0 + r.ln()).collect();
    let adv = [1.0, 1.0, -1.0, -2.0];
    let mask = [1.0; 4];
    let cu = [0, 2, 4];
    let cfg = PolicyLossConfig::default();
    let out = policy_loss(
        &batch(&lp, &old, &adv, &mask, &cu),
        &cfg,
        &local_norm(&mask, &cu),
    )
    .unwrap();
    assert_close1(out.loss, 0.075, 1e-12, "loss");
    assert_close(&out.grad_logprob, &[-0.275, 0.0, 0.0, 0.45], 1e-12, "grad");
    let m = out.metrics;
    assert_close1(m.get("actor/pg_clipfrac").unwrap(), 0.5, 1e-12, "clipfrac");
    assert_close1(m.get("actor/ratio_mean").unwrap(), 1.0, 1e-12, "ratio_mean");
    assert_close1(m.get("actor/ppo_kl").unwrap(), 0.0744331, 1e-6, "ppo_kl");
    assert_close1(m.get("actor/pg_loss").unwrap(), 0.075, 1e-12, "pg_loss");
}

#[test]
fn ppo_dual_clip_and_clip_higher_hand_computed() {
    // Dual clip c = 3, ε = 0.2:
    //  t0: ρ 5, A -1: pg1 = 5, pg2 = 1.2 -> 5; dual bound -A·c = 3 < 5 -> 3, ∂ = 0 (clipfrac_lower)
    //  t1: ρ 2, A -1: pg1 = 2, pg2 = 1.2 -> 2 < 3 -> 2, ∂ = -Aρ = 2
    //  t2: ρ 5, A  1: pg1 = -5, pg2 = -1.2 -> -1.2 (clipped; dual clip only for A < 0), ∂ = 0
    // token-mean: (3 + 2 - 1.2)/3 = 1.2666667; grads [0, 2/3, 0]; clipfrac 1/3; lower 1/3.
    let ratios: [f64; 3] = [5.0, 2.0, 5.0];
    let lp: Vec<f64> = ratios.iter().map(|r| r.ln()).collect();
    let old = [0.0; 3];
    let adv = [-1.0, -1.0, 1.0];
    let mask = [1.0; 3];
    let cu = [0, 3];
    let cfg = PolicyLossConfig {
        dual_clip: Some(3.0),
        ..Default::default()
    };
    let out = policy_loss(
        &batch(&lp, &old, &adv, &mask, &cu),
        &cfg,
        &local_norm(&mask, &cu),
    )
    .unwrap();
    assert_close1(out.loss, 3.8 / 3.0, 1e-12, "loss");
    assert_close(&out.grad_logprob, &[0.0, 2.0 / 3.0, 0.0], 1e-12, "grad");
    assert_close1(
        out.metrics.get("actor/pg_clipfrac").unwrap(),
        1.0 / 3.0,
        1e-12,
        "clipfrac",
    );
    assert_close1(
        out.metrics.get("actor/pg_clipfrac_lower").unwrap(),
        1.0 / 3.0,
        1e-12,
        "lower",
    );

    // Clip-higher (ε_low 0.2, ε_high 0.28): ρ = 1.25, A = 1 stays unclipped (1.25 < 1.28):
    // loss = -1.25, ∂ = -1.25. With the symmetric 0.2 it is clipped: loss -1.2, ∂ 0.
    let lp = [1.25f64.ln()];
    let (old, adv, mask, cu) = ([0.0], [1.0], [1.0], [0, 1]);
    let b = batch(&lp, &old, &adv, &mask, &cu);
    let hi = PolicyLossConfig {
        clip_high: 0.28,
        ..Default::default()
    };
    let out = policy_loss(&b, &hi, &local_norm(&mask, &cu)).unwrap();
    assert_close(
        &[out.loss, out.grad_logprob[0]],
        &[-1.25, -1.25],
        1e-12,
        "clip-higher",
    );
    let out = policy_loss(&b, &PolicyLossConfig::default(), &local_norm(&mask, &cu)).unwrap();
    assert_close(
        &[out.loss, out.grad_logprob[0]],
        &[-1.2, 0.0],
        1e-12,
        "symmetric",
    );
}

#[test]
fn kl_estimators_hand_computed() {
    // δ = logp - logp_ref = -1 - (-1.5) = 0.5.
    // k1 = 0.5, ∂ = 1; k2 = 0.5² / 2 = 0.125, ∂ = 0.5;
    // k3 = e^-0.5 - 1 + 0.5 = 0.606530659713 - 0.5 = 0.106530659713, ∂ = 1 - e^-0.5 = 0.393469340287.
    let (lp, rf) = (-1.0f64, -1.5f64);
    assert_close(
        &[KlEstimator::K1.value(lp, rf), KlEstimator::K1.grad(lp, rf)],
        &[0.5, 1.0],
        1e-12,
        "k1",
    );
    assert_close(
        &[KlEstimator::K2.value(lp, rf), KlEstimator::K2.grad(lp, rf)],
        &[0.125, 0.5],
        1e-12,
        "k2",
    );
    assert_close(
        &[KlEstimator::K3.value(lp, rf), KlEstimator::K3.grad(lp, rf)],
        &[0.106530659713, 0.393469340287],
        1e-11,
        "k3",
    );
    for k in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
        let fd = finite_diff(|x| k.value(x[0], rf), &[lp], 1e-6);
        assert_close1(k.grad(lp, rf), fd[0], 1e-8, &format!("{k:?} fd"));
    }
    assert_eq!(
        KlEstimator::from_name("low_var_kl").unwrap(),
        KlEstimator::K3
    );
}

#[test]
fn entropy_bonus_and_kl_loss_hand_computed() {
    // ρ = 1, A = 0 -> pg = 0 everywhere. Two tokens, token-mean (w = 1/2).
    // entropy H = [1, 2], c_ent = 0.01: entropy loss = -0.01 · (1 + 2)/2 = -0.015, ∂/∂H = -0.005.
    // k3 KL, β = 0.1, δ = 0.5 on both: 0.1 · 0.106530659713 = 0.0106530659713;
    //   ∂/∂logp = 0.1 · 0.393469340287 / 2 = 0.0196734670144.
    // total = -0.015 + 0.0106530659713 = -0.0043469340287.
    let lp = [-1.0, -1.0];
    let rf = [-1.5, -1.5];
    let ent = [1.0, 2.0];
    let (adv, mask, cu) = ([0.0, 0.0], [1.0, 1.0], [0, 2]);
    let mut b = batch(&lp, &lp, &adv, &mask, &cu);
    b.entropy = Some(&ent);
    b.ref_logprob = Some(&rf);
    let cfg = PolicyLossConfig {
        entropy_coef: 0.01,
        kl_loss: Some(KlLoss {
            coef: 0.1,
            estimator: KlEstimator::K3,
        }),
        ..Default::default()
    };
    let out = policy_loss(&b, &cfg, &local_norm(&mask, &cu)).unwrap();
    assert_close1(out.loss, -0.0043469340287, 1e-11, "loss");
    assert_close(&out.grad_logprob, &[0.0196734670144; 2], 1e-11, "grad logp");
    assert_close(
        out.grad_entropy.as_ref().unwrap(),
        &[-0.005, -0.005],
        1e-12,
        "grad H",
    );
    assert_close1(
        out.metrics.get("actor/entropy").unwrap(),
        1.5,
        1e-12,
        "entropy",
    );
    assert_close1(
        out.metrics.get("actor/kl").unwrap(),
        0.106530659713,
        1e-11,
        "kl",
    );
}

#[test]
fn truncated_importance_sampling_hand_computed() {
    // ρ = 1, A = 1 -> pg = -1 per token before the TIS weight.
    // t0: logp_old - logp_behaviour = -1 - (-1.2) = 0.2 -> w = e^0.2 = 1.221402758160 (< cap 2)
    // t1: -1 - (-3) = 2 -> e^2 = 7.389 -> capped at 2
    // loss = (-1.221402758160 - 2)/2 = -1.610701379080; ∂ = -Aρ·w/2 = [-0.610701379080, -1].
    // logprob_diff: |0.2|, |2| -> mean 1.1, max 2.
    let lp = [-1.0, -1.0];
    let beh = [-1.2, -3.0];
    let (adv, mask, cu) = ([1.0, 1.0], [1.0, 1.0], [0, 1, 2]);
    let mut b = batch(&lp, &lp, &adv, &mask, &cu);
    b.behaviour_logprob = Some(&beh);
    let cfg = PolicyLossConfig {
        tis_cap: Some(2.0),
        ..Default::default()
    };
    let out = policy_loss(&b, &cfg, &local_norm(&mask, &cu)).unwrap();
    assert_close1(out.loss, -1.610701379080, 1e-11, "loss");
    assert_close(&out.grad_logprob, &[-0.610701379080, -1.0], 1e-11, "grad");
    let m = out.metrics;
    assert_close1(
        m.get("rollout/logprob_diff_mean").unwrap(),
        1.1,
        1e-12,
        "diff mean",
    );
    assert_close1(
        m.get("rollout/logprob_diff_max").unwrap(),
        2.0,
        1e-12,
        "diff max",
    );
    assert_close1(
        m.get("actor/tis_weight_mean").unwrap(),
        (1.221402758160 + 2.0) / 2.0,
        1e-11,
        "w",
    );
}

#[test]
fn on_policy_ratio_is_exactly_one_and_nothing_is_clipped() {
    // logp == logp_old bit for bit (f32, as from the kernels): ρ = exp(0) = 1 exactly.
    let mut r = rng(3);
    let n = 50;
    let lp: Vec<f32> = randn(&mut r, n, 1.0)
        .iter()
        .map(|x| (*x as f32) - 2.0)
        .collect();
    let adv: Vec<f32> = randn(&mut r, n, 1.0).iter().map(|x| *x as f32).collect();
    let mask = vec![1.0f32; n];
    let cu = [0, 20, 50];
    let cfg = PolicyLossConfig {
        dual_clip: Some(3.0),
        ..Default::default()
    };
    let b = PolicyBatch {
        logprob: &lp,
        old_logprob: &lp,
        advantages: &adv,
        mask: &mask,
        cu_seqlens: &cu,
        entropy: None,
        ref_logprob: None,
        behaviour_logprob: None,
    };
    let out = policy_loss(&b, &cfg, &Normaliser::count(&mask, &cu).unwrap()).unwrap();
    assert_eq!(out.metrics.get("actor/ratio_mean").unwrap(), 1.0);
    assert_eq!(out.metrics.get("actor/pg_clipfrac").unwrap(), 0.0);
    assert_eq!(out.metrics.get("actor/ppo_kl").unwrap(), 0.0);
    // On-policy the gradient is the vanilla policy gradient -A/N.
    for (g, a) in out.grad_logprob.iter().zip(&adv) {
        assert!(
            (g + a / n as f32).abs() <= 1e-6 * a.abs(),
            "{g} vs {}",
            -a / n as f32
        );
    }
}

#[test]
fn policy_gradient_matches_finite_differences_for_every_option() {
    let mut r = rng(4);
    let cu = [0, 4, 11, 12, 20];
    let n = 20;
    let old = randn(&mut r, n, 1.0);
    // log-ratios ~ ±0.6 so that some tokens sit beyond the clip range on each side and beyond
    // the dual-clip bound.
    let lp: Vec<f64> = old
        .iter()
        .zip(randn(&mut r, n, 0.6))
        .map(|(o, d)| o + d)
        .collect();
    let adv = randn(&mut r, n, 1.0);
    let mask: Vec<f64> = (0..n).map(|t| if t % 5 == 0 { 0.0 } else { 1.0 }).collect();
    let ent: Vec<f64> = randn(&mut r, n, 1.0)
        .iter()
        .map(|x| x.abs() + 0.1)
        .collect();
    let rf: Vec<f64> = old
        .iter()
        .zip(randn(&mut r, n, 0.3))
        .map(|(o, d)| o + d)
        .collect();
    let beh: Vec<f64> = old
        .iter()
        .zip(randn(&mut r, n, 0.3))
        .map(|(o, d)| o + d)
        .collect();
    let norm = local_norm(&mask, &cu);
    for agg in ALL_AGGS {
        for est in [KlEstimator::K1, KlEstimator::K2, KlEstimator::K3] {
            let cfg = PolicyLossConfig {
                clip_low: 0.2,
                clip_high: 0.28,
                dual_clip: Some(1.3),
                entropy_coef: 0.01,
                kl_loss: Some(KlLoss {
                    coef: 0.05,
                    estimator: est,
                }),
                tis_cap: Some(1.1),
                agg,
            };
            let loss_at = |x: &[f64], h: &[f64]| {
                let b = PolicyBatch {
                    logprob: x,
                    old_logprob: &old,
                    advantages: &adv,
                    mask: &mask,
                    cu_seqlens: &cu,
                    entropy: Some(h),
                    ref_logprob: Some(&rf),
                    behaviour_logprob: Some(&beh),
                };
                policy_loss(&b, &cfg, &norm).unwrap()
            };
            let out = loss_at(&lp, &ent);
            // The draw must exercise both clips, or this test would not test them.
            assert!(out.metrics.get("actor/pg_clipfrac").unwrap() > 0.0);
            assert!(out.metrics.get("actor/pg_clipfrac_lower").unwrap() > 0.0);
            let fd = finite_diff(|x| loss_at(x, &ent).loss, &lp, 1e-6);
            assert_close(
                &out.grad_logprob,
                &fd,
                1e-7,
                &format!("{agg:?} {est:?} logp"),
            );
            let fd_h = finite_diff(|h| loss_at(&lp, h).loss, &ent, 1e-6);
            assert_close(out.grad_entropy.as_ref().unwrap(), &fd_h, 1e-7, "entropy");
        }
    }
}

#[test]
fn policy_config_errors_name_the_setting() {
    let cfg = PolicyLossConfig {
        dual_clip: Some(0.5),
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("clip_ratio_c"));
    let (x, cu) = ([0.0f64], [0, 1]);
    let cfg = PolicyLossConfig {
        tis_cap: Some(2.0),
        ..Default::default()
    };
    let e = policy_loss(
        &batch(&x, &x, &x, &[1.0], &cu),
        &cfg,
        &Normaliser {
            tokens: 1.0,
            seqs: 1.0,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("behaviour"), "{e}");
}

// ---------------------------------------------------------------- value loss

#[test]
fn clipped_value_loss_hand_computed() {
    // ε_v = 0.2, l = ½ max((V-R)², (V_clip-R)²):
    //  t0: V 1.0, V_old 0.9, R  1.5: V-V_old = 0.1 inside -> V_clip = V; l = ½·0.25 = 0.125, ∂ = V-R = -0.5
    //  t1: V 1.5, V_old 1.0, R  2.0: V_clip = 1.2; (−0.5)² = 0.25 < (−0.8)² = 0.64 -> l = 0.32, ∂ 0
    //  t2: V 0.0, V_old 1.0, R -1.0: V_clip = 0.8; 1² = 1 < 1.8² = 3.24 -> l = 1.62, ∂ 0
    //  t3: V 2.0, V_old 1.0, R  0.0: V_clip = 1.2; 2² = 4 > 1.2² = 1.44 -> l = 2, ∂ = 2
    // token-mean: (0.125 + 0.32 + 1.62 + 2)/4 = 1.01625; ∂ = [-0.125, 0, 0, 0.5]; clipfrac 0.5.
    let v = [1.0, 1.5, 0.0, 2.0];
    let vo = [0.9, 1.0, 1.0, 1.0];
    let ret = [1.5, 2.0, -1.0, 0.0];
    let mask = [1.0; 4];
    let cu = [0, 4];
    let b = ValueBatch {
        values: &v,
        old_values: &vo,
        returns: &ret,
        mask: &mask,
        cu_seqlens: &cu,
    };
    let out = value_loss(&b, &ValueLossConfig::default(), &local_norm(&mask, &cu)).unwrap();
    assert_close1(out.loss, 1.01625, 1e-12, "loss");
    assert_close(&out.grad_values, &[-0.125, 0.0, 0.0, 0.5], 1e-12, "grad");
    assert_close1(
        out.metrics.get("critic/vf_clipfrac").unwrap(),
        0.5,
        1e-12,
        "clipfrac",
    );
    // Unclipped: ½ mean((V-R)²) = ½ (0.25 + 0.25 + 1 + 4)/4 = 0.6875.
    let cfg = ValueLossConfig {
        clip: None,
        ..Default::default()
    };
    let out = value_loss(&b, &cfg, &local_norm(&mask, &cu)).unwrap();
    assert_close1(out.loss, 0.6875, 1e-12, "unclipped");
}

#[test]
fn value_gradient_matches_finite_differences() {
    let mut r = rng(5);
    let n = 15;
    let cu = [0, 6, 15];
    let vo = randn(&mut r, n, 1.0);
    let v: Vec<f64> = vo
        .iter()
        .zip(randn(&mut r, n, 0.4))
        .map(|(a, b)| a + b)
        .collect();
    let ret = randn(&mut r, n, 1.0);
    let mask: Vec<f64> = (0..n).map(|t| if t % 4 == 0 { 0.0 } else { 1.0 }).collect();
    let norm = local_norm(&mask, &cu);
    for agg in ALL_AGGS {
        for clip in [Some(0.2), None] {
            let cfg = ValueLossConfig {
                clip,
                coef: 0.5,
                agg,
            };
            let at = |x: &[f64]| {
                let b = ValueBatch {
                    values: x,
                    old_values: &vo,
                    returns: &ret,
                    mask: &mask,
                    cu_seqlens: &cu,
                };
                value_loss(&b, &cfg, &norm).unwrap()
            };
            let out = at(&v);
            if clip.is_some() {
                assert!(out.metrics.get("critic/vf_clipfrac").unwrap() > 0.0);
            }
            let fd = finite_diff(|x| at(x).loss, &v, 1e-6);
            assert_close(&out.grad_values, &fd, 1e-7, &format!("{agg:?} {clip:?}"));
        }
    }
}
