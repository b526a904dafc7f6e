// Fused AdamW step (PyTorch `AdamW` semantics), f32 master weights and moments:
//   p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),   bc_i = 1 - beta_i^step (from the host).
// Optionally writes the bf16 working copy of the updated master.

template <typename G>
__device__ void adamw_impl(float* master, const G* __restrict__ grad, float* m, float* v,
                           __nv_bfloat16* working, u64 n, float lr, float beta1, float beta2, float eps,
                           float weight_decay, float step_size, float inv_sqrt_bc2) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = ld(grad, i);
        float p = master[i];
        p -= lr * weight_decay * p;
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        p -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        master[i] = p;
        if (working) working[i] = __float2bfloat16_rn(p);
    }
}

extern "C" __global__ void adamw_step_f32(float* master, const float* grad, float* m, float* v, __nv_bfloat16* working,
                                          u64 n, float lr, float b1, float b2, float eps, float wd, float step_size,
                                          float inv_sqrt_bc2) {
    adamw_impl(master, grad, m, v, working, n, lr, b1, b2, eps, wd, step_size, inv_sqrt_bc2);
}
extern "C" __global__ void adamw_step_bf16(float* master, const __nv_bfloat16* grad, float* m, float* v,
                                           __nv_bfloat16* working, u64 n, float lr, float b1, float b2, float eps,
                                           float wd, float step_size, float inv_sqrt_bc2) {
    adamw_impl(master, grad, m, v, working, n, lr, b1, b2, eps, wd, step_size, inv_sqrt_bc2);
}
