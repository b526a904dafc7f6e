//! Advantage estimators and reward shaping against hand-computed values (arithmetic in comments).

mod common;

use common::{assert_close, assert_close1};
use learner::advantages::{
    advantage_metrics, broadcast_to_tokens, discounted_returns, explained_variance, gae,
    grpo_advantages, kl_shaped_rewards, masked_whiten, reinforce_pp_advantages, rloo_advantages,
    subtract_group_mean, KlController,
};
use learner::objectives::KlEstimator;

#[test]
fn gae_finished_and_truncated_hand_computed() {
    // Two copies of one sequence packed back to back: a prompt token (mask 0) then 3 response
    // tokens with rewards [0, 0, 1] and values [0.5, 0.6, 0.7]; γ = 0.9, λ = 0.8 (γλ = 0.72).
    // Sequence 0 finished (EOS): V after the last token = 0.
    //  t3: δ = 1 + 0.9·0 - 0.7 = 0.3;            A = 0.3;                       R = 1.0
    //  t2: δ = 0 + 0.9·0.7 - 0.6 = 0.03;         A = 0.03 + 0.72·0.3 = 0.246;   R = 0.846
    //  t1: δ = 0 + 0.9·0.6 - 0.5 = 0.04;         A = 0.04 + 0.72·0.246 = 0.21712; R = 0.71712
    // Sequence 1 truncated at max length: bootstrap V after the last token := 0.7.
    //  t3: δ = 1 + 0.9·0.7 - 0.7 = 0.93;         A = 0.93;                      R = 1.63
    //  t2: δ = 0.03;                             A = 0.03 + 0.72·0.93 = 0.6996; R = 1.2996
    //  t1: δ = 0.04;                             A = 0.04 + 0.72·0.6996 = 0.543712; R = 1.043712
    let rewards = [9.0, 0.0, 0.0, 1.0, 9.0, 0.0, 0.0, 1.0]; // prompt rewards are ignored
    let values = [9.0, 0.5, 0.6, 0.7, 9.0, 0.5, 0.6, 0.7];
    let mask = [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
    let cu = [0, 4, 8];
    let out = gae(&rewards, &values, &mask, &cu, &[true, false], 0.9, 0.8).unwrap();
    assert_close(
        &out.advantages,
        &[0.0, 0.21712, 0.246, 0.3, 0.0, 0.543712, 0.6996, 0.93],
        1e-12,
        "advantages",
    );
    assert_close(
        &out.returns,
        &[0.0, 0.71712, 0.846, 1.0, 0.0, 1.043712, 1.2996, 1.63],
        1e-12,
        "returns",
    );
}

#[test]
fn gae_with_gamma_lambda_one_is_reward_to_go_minus_value() {
    // γ = λ = 1, finished: A_t = Σ_{u≥t} r_u - V_t (the Monte-Carlo advantage).
    // rewards [0.5, -1, 2] -> reward-to-go [1.5, 1, 2]; values [1, 2, 3] -> A = [0.5, -1, -1].
    let out = gae(
        &[0.5, -1.0, 2.0],
        &[1.0, 2.0, 3.0],
        &[1.0; 3],
        &[0, 3],
        &[true],
        1.0,
        1.0,
    )
    .unwrap();
    assert_close(&out.advantages, &[0.5, -1.0, -1.0], 1e-12, "A");
    assert_close(&out.returns, &[1.5, 1.0, 2.0], 1e-12, "R");
    // λ = 0 is the one-step TD error: δ_t = r_t + V_{t+1} - V_t = [0.5+2-1, -1+3-2, 2-3] = [1.5, 0, -1].
    let out = gae(
        &[0.5, -1.0, 2.0],
        &[1.0, 2.0, 3.0],
        &[1.0; 3],
        &[0, 3],
        &[true],
        1.0,
        0.0,
    )
    .unwrap();
    assert_close(&out.advantages, &[1.5, 0.0, -1.0], 1e-12, "TD");
    let e = gae(&[0.0], &[0.0], &[1.0], &[0, 1], &[true, false], 1.0, 1.0).unwrap_err();
    assert!(e.to_string().contains("finished"), "{e}");
}

#[test]
fn grpo_hand_computed() {
    // Group 0 = sequences {0, 2, 3, 5} with scores [1, 0, 0, 1]: mean 0.5,
    //   unbiased var = 4 · 0.25 / 3 = 1/3, std = 0.577350269190 -> A = ±0.5 / 0.577350269190 = ±0.866025403784.
    // Group 1 = sequences {1, 4} with scores [2, 4]: mean 3, std = sqrt(2) = 1.414213562373
    //   -> A = ∓1 / 1.414213562373 = ∓0.707106781187.
    // Group 2 = sequence {6} alone: mean 0, std 1 -> A = its score 0.25 (veRL's convention).
    let scores = [1.0, 2.0, 0.0, 0.0, 4.0, 1.0, 0.25];
    let groups = [0, 1, 0, 0, 1, 0, 2];
    let a = grpo_advantages(&scores, &groups, true, 0.0).unwrap();
    let (x, y) = (0.866025403784, std::f64::consts::FRAC_1_SQRT_2);
    assert_close(&a, &[x, -y, -x, -x, y, x, 0.25], 1e-11, "with std");
    // Without std (Dr.GRPO): s - mean.
    let a = grpo_advantages(&scores, &groups, false, 1e-6).unwrap();
    assert_close(
        &a,
        &[0.5, -1.0, -0.5, -0.5, 1.0, 0.5, 0.25],
        1e-12,
        "without std",
    );
    // All-equal group: std 0, A = 0 / (0 + ε) = 0 (no NaN).
    let a = grpo_advantages(&[1.0, 1.0], &[0, 0], true, 1e-6).unwrap();
    assert_eq!(a, vec![0.0, 0.0]);
}

#[test]
fn rloo_hand_computed() {
    // Group [1, 0, 0, 1] (sum 2): A_i = s_i - (2 - s_i)/3 -> 1 - 1/3 = 0.666667, 0 - 2/3 = -0.666667.
    // Group [2, 4]: 2 - 4 = -2, 4 - 2 = 2.
    let a = rloo_advantages(&[1.0, 2.0, 0.0, 0.0, 4.0, 1.0], &[0, 1, 0, 0, 1, 0]).unwrap();
    let t = 2.0 / 3.0;
    assert_close(&a, &[t, -2.0, -t, -t, 2.0, t], 1e-12, "rloo");
    let e = rloo_advantages(&[1.0, 2.0], &[0, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2"), "{e}");
}

#[test]
fn reinforce_pp_hand_computed() {
    // Sequence 0: rewards [0.1, -0.1, 1.0], γ = 0.5:
    //   G2 = 1.0, G1 = -0.1 + 0.5·1.0 = 0.4, G0 = 0.1 + 0.5·0.4 = 0.3
    // Sequence 1: prompt token (mask 0), one response token with reward 0.5 -> G = 0.5.
    // Batch: [0.3, 0.4, 1.0, 0.5]; mean 0.55; deviations [-0.25, -0.15, 0.45, -0.05];
    //   Σ dev² = 0.0625 + 0.0225 + 0.2025 + 0.0025 = 0.29; unbiased var = 0.29/3 = 0.0966667;
    //   std = 0.310912635103 -> A = dev / std = [-0.804084, -0.482451, 1.447352, -0.160817].
    let rewards = [0.1, -0.1, 1.0, 7.0, 0.5];
    let mask = [1.0, 1.0, 1.0, 0.0, 1.0];
    let cu = [0, 3, 5];
    let g = discounted_returns(&rewards, &mask, &cu, 0.5).unwrap();
    assert_close(&g, &[0.3, 0.4, 1.0, 0.0, 0.5], 1e-12, "returns");
    let (a, _) = reinforce_pp_advantages(&rewards, &mask, &cu, 0.5).unwrap();
    let s = 0.310912635103;
    assert_close(
        &a,
        &[-0.25 / s, -0.15 / s, 0.45 / s, 0.0, -0.05 / s],
        1e-7,
        "advantages",
    );
    // Baseline variant: scores minus group mean, e.g. [1, 0, 0.5, 0.5] in groups {0,1},{2,3}
    //   -> [0.5, -0.5, 0, 0].
    let b = subtract_group_mean(&[1.0, 0.0, 0.5, 0.5], &[0, 0, 1, 1]).unwrap();
    assert_close(&b, &[0.5, -0.5, 0.0, 0.0], 1e-12, "baseline");
}

#[test]
fn masked_whiten_hand_computed() {
    // Masked entries [1, 2, 3]: mean 2, unbiased var (1 + 0 + 1)/2 = 1 -> [-1, 0, 1]; masked-out -> 0.
    let w = masked_whiten(&[1.0, 2.0, 3.0, 100.0], &[1.0, 1.0, 1.0, 0.0], true, 0.0).unwrap();
    assert_close(&w, &[-1.0, 0.0, 1.0, 0.0], 1e-12, "shift");
    // shift_mean = false keeps the mean: [1, 2, 3].
    let w = masked_whiten(&[1.0, 2.0, 3.0, 100.0], &[1.0, 1.0, 1.0, 0.0], false, 0.0).unwrap();
    assert_close(&w, &[1.0, 2.0, 3.0, 0.0], 1e-12, "no shift");
}

#[test]
fn kl_reward_shaping_hand_computed() {
    // Sequence 0: prompt token, then response tokens with logp [-1, -2], ref [-1.5, -1.5]:
    //   k1 = [0.5, -0.5]; β = 0.1 -> -β·kl = [-0.05, 0.05]; score 1.0 on the last token -> 1.05.
    // Sequence 1: one response token, logp = ref -> kl 0, reward = score -2.
    let lp = [-9.0, -1.0, -2.0, -0.3];
    let rf = [-1.0, -1.5, -1.5, -0.3];
    let mask = [0.0, 1.0, 1.0, 1.0];
    let cu = [0, 3, 4];
    let (r, kl) =
        kl_shaped_rewards(&[1.0, -2.0], &lp, &rf, &mask, &cu, 0.1, KlEstimator::K1).unwrap();
    assert_close(&r, &[0.0, -0.05, 1.05, -2.0], 1e-12, "rewards");
    assert_close(&kl, &[0.0, 0.5, -0.5, 0.0], 1e-12, "kl");
    // Per-sequence scores broadcast to response tokens only.
    let b = broadcast_to_tokens(&[3.0, 4.0], &mask, &cu).unwrap();
    assert_close(&b, &[0.0, 3.0, 3.0, 4.0], 1e-12, "broadcast");
}

#[test]
fn adaptive_kl_controller_hand_computed() {
    // β = 0.1, target 6, horizon 10000, 256 samples per update.
    //  KL 9:   e = clip(9/6 - 1, ±0.2) = 0.2   -> β · (1 + 0.2·256/1e4) = 0.1 · 1.00512 = 0.100512
    //  KL 3:   e = clip(-0.5) = -0.2           -> 0.100512 · 0.99488 = 0.09999737856
    //  KL 6.3: e = 0.05                        -> 0.09999737856 · 1.00128 = 0.100125375204
    let mut c = KlController::adaptive(0.1, 6.0, 10000.0).unwrap();
    c.update(9.0, 256.0);
    assert_close1(c.value(), 0.100512, 1e-12, "up");
    c.update(3.0, 256.0);
    assert_close1(c.value(), 0.09999737856, 1e-12, "down");
    c.update(6.3, 256.0);
    assert_close1(c.value(), 0.100125375204, 1e-11, "small");
    let mut f = KlController::fixed(0.05).unwrap();
    f.update(100.0, 256.0);
    assert_eq!(f.value(), 0.05);
    assert!(KlController::adaptive(0.1, 0.0, 1.0).is_err());
}

#[test]
fn explained_variance_and_stats_hand_computed() {
    // Perfect critic: 1. Constant critic V = 2 on R = [1, 2, 3]: Var(R - V) = Var([-1, 0, 1]) = 1 = Var(R) -> 0.
    let mask = [1.0; 3];
    assert_close1(
        explained_variance(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], &mask).unwrap(),
        1.0,
        1e-12,
        "perfect",
    );
    assert_close1(
        explained_variance(&[2.0; 3], &[1.0, 2.0, 3.0], &mask).unwrap(),
        0.0,
        1e-12,
        "constant",
    );
    // V = [1, 1, 1]: R - V = [0, 1, 2], Var = 1 -> 0 as well; V = [1.5, 2, 2.5]: R - V = [-0.5, 0, 0.5],
    // Var = 0.25 -> 0.75.
    assert_close1(
        explained_variance(&[1.5, 2.0, 2.5], &[1.0, 2.0, 3.0], &mask).unwrap(),
        0.75,
        1e-12,
        "0.75",
    );
    let m = advantage_metrics(
        &[1.0, -1.0, 3.0],
        Some(&[1.0, 2.0, 3.0]),
        Some(&[1.5, 2.0, 2.5]),
        &mask,
    )
    .unwrap();
    assert_close1(
        m.get("critic/advantages/mean").unwrap(),
        1.0,
        1e-12,
        "adv mean",
    );
    assert_close1(
        m.get("critic/advantages/std").unwrap(),
        2.0,
        1e-12,
        "adv std",
    );
    assert_close1(m.get("critic/vf_explained_var").unwrap(), 0.75, 1e-12, "ev");
}
