// ∂loss/∂logp of the PPO clipped surrogate (+ dual clip, TIS weight, KL-to-reference term) per
// token, on the device, so that the actor step never reads its log-probs back before the backward.
// The per-element f32 arithmetic is that of learner/src/objectives/policy.rs (and of the CPU
// reference, cpu/policy_grad.rs) in the same order; products use __fmul_rn so that no FMA
// contraction changes a rounding, and expf is CUDA's accurate one (within 2 ulp of the host's).
//
//   r   = lp - old;  rc = clamp(r, -20, 20);  ratio = exp(rc)
//   pg1 = -A ratio;  pg2 = -A clamp(ratio, lo, hi)
//   pg2 > pg1: clipped, slope 0; else pg = pg1, slope -A ratio
//   dual clip (c > 0 given, A < 0, pg > -A c): slope 0
//   r outside [-20, 20]: slope 0
//   g   = w (slope tis)  [+ (w kl_coef) k'(lp - ref)]
// kl_kind: 0 none, 1 k1 (k' = 1), 2 k2 (k' = d), 3 k3 (k' = 1 - exp(-d)).

extern "C" __global__ void policy_logprob_grad(const float* __restrict__ lp, const float* __restrict__ old,
                                               const float* __restrict__ adv, const float* __restrict__ w,
                                               const float* __restrict__ tis, const float* __restrict__ ref,
                                               float* __restrict__ grad, u32 n, float lo, float hi, float dual_c,
                                               u32 kl_kind, float kl_coef) { pdl_entry();
    const float bound = 20.0f;
    for (u32 t = blockIdx.x * blockDim.x + threadIdx.x; t < n; t += gridDim.x * blockDim.x) {
        const float l = lp[t], a = adv[t];
        const float r = l - old[t];
        // clamp_to(x, lo, hi) = min(max(x, lo), hi) with the host's comparisons.
        float rc = r >= -bound ? r : -bound;
        rc = rc <= bound ? rc : bound;
        const float ratio = expf(rc);
        const float pg1 = __fmul_rn(-a, ratio);
        float cr = ratio >= lo ? ratio : lo;
        cr = cr <= hi ? cr : hi;
        const float pg2 = __fmul_rn(-a, cr);
        float pg, slope;
        if (pg2 > pg1) {
            pg = pg2;
            slope = 0.0f;
        } else {
            pg = pg1;
            slope = __fmul_rn(-a, ratio);
        }
        if (dual_c > 0.0f) {
            const float pg3 = __fmul_rn(-a, dual_c);
            if (a < 0.0f && pg > pg3) slope = 0.0f;
        }
        if (r != rc) slope = 0.0f;
        if (tis) slope = __fmul_rn(slope, tis[t]);
        float g = __fmul_rn(w[t], slope);
        if (kl_kind != 0) {
            const float d = l - ref[t];
            const float k = kl_kind == 1 ? 1.0f : kl_kind == 2 ? d : 1.0f - expf(-d);
            g = __fadd_rn(g, __fmul_rn(__fmul_rn(w[t], kl_coef), k));
        }
        grad[t] = g;
    }
}
