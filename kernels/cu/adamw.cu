// Fused AdamW step (PyTorch `AdamW` semantics, see ops/adamw.rs), f32 master weights, grads and
// moments, with the per-element arithmetic in the same order as the CPU reference:
//   p *= decay;  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2;
//   p += neg_step_size * m / (sqrt(v) / bias_correction2_sqrt + eps).
// The scalars come from the host (f64 bias corrections rounded to f32). Optionally writes the bf16
// working copy of the updated master.

extern "C" __global__ void adamw_step_f32(float* master, const float* __restrict__ grad, float* m, float* v,
                                          __nv_bfloat16* working, u64 n, float decay, float one_minus_beta1,
                                          float beta2, float one_minus_beta2, float neg_step_size,
                                          float bias_correction2_sqrt, float eps) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = grad[i];
        const float p = master[i] * decay;
        // torch.lerp: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w).
        const float w = one_minus_beta1, mo = m[i];
        const float mi = fabsf(w) < 0.5f ? mo + w * (g - mo) : g - (g - mo) * (1.0f - w);
        const float vi = v[i] * beta2 + one_minus_beta2 * g * g;
        const float denom = sqrtf(vi) / bias_correction2_sqrt + eps;
        const float pn = p + neg_step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
        master[i] = pn;
        if (working) working[i] = __float2bfloat16_rn(pn);
    }
}
