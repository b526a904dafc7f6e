// Fused AdamW step (PyTorch `AdamW` semantics, see ops/adamw.rs), f32 master weights, grads and
// moments, with the per-element arithmetic in the same order as the CPU reference:
//   p *= decay;  m = lerp(m, g, 1 - beta1);  v = beta2 v + (1 - beta2) g^2;
//   p += neg_step_size * m / (sqrt(v) / bias_correction2_sqrt + eps).
// The scalars come from the host (f64 bias corrections rounded to f32). Optionally writes the bf16
// working copy of the updated master.

__device__ __forceinline__ void adamw_elem(float* master, float g, float* m, float* v, __nv_bfloat16* working,
                                           size_t i, float decay, float one_minus_beta1, float beta2,
                                           float one_minus_beta2, float neg_step_size, float bias_correction2_sqrt,
                                           float eps) {
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

extern "C" __global__ void adamw_step_f32(float* master, const float* __restrict__ grad, float* m, float* v,
                                          __nv_bfloat16* working, u64 n, float decay, float one_minus_beta1,
                                          float beta2, float one_minus_beta2, float neg_step_size,
                                          float bias_correction2_sqrt, float eps) { pdl_entry();
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        adamw_elem(master, grad[i], m, v, working, i, decay, one_minus_beta1, beta2, one_minus_beta2, neg_step_size,
                   bias_correction2_sqrt, eps);
}

// Many parameters in one launch. `slots` describes each parameter (64 bytes, laid out by
// cuda/adamw.rs); parameter s owns blocks [block0, next block0), ADAMW_BLOCK_ELEMS elements each,
// and a block finds its parameter by binary search. With grad_scale != 1 (gradient clipping) the
// gradient is multiplied by it in registers; the gradient buffers are only read. When `clip` is
// given ({norm, scale, skip} from `grad_clip_finalize`, cu/sum_squares.cu) the scale comes from
// there instead, and skip != 0 (a non-finite norm) leaves every buffer untouched: the clip decision
// never has to travel to the host before the update.
#define ADAMW_BLOCK_ELEMS 8192
struct AdamWSlot {
    float* master;
    float* grad;
    float* m;
    float* v;
    __nv_bfloat16* working;
    u64 n;
    u64 block0;
    float decay;
    u32 pad;
};

extern "C" __global__ void adamw_step_many(const AdamWSlot* __restrict__ slots, u32 n_slots, float grad_scale,
                                           const double* __restrict__ clip, float one_minus_beta1, float beta2,
                                           float one_minus_beta2, float neg_step_size, float bias_correction2_sqrt,
                                           float eps) { pdl_entry();
    if (clip) {
        if (clip[2] != 0.0) return;
        grad_scale = (float)clip[1];
    }
    u32 lo = 0, hi = n_slots - 1;
    while (lo < hi) {
        const u32 mid = (lo + hi + 1) / 2;
        if (slots[mid].block0 <= blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    const AdamWSlot s = slots[lo];
    const u64 start = (blockIdx.x - s.block0) * (u64)ADAMW_BLOCK_ELEMS;
    const u64 end = min(start + ADAMW_BLOCK_ELEMS, s.n);
    // Four consecutive elements per thread and iteration, through 16-byte loads and stores when
    // the four are in range (blocks start at multiples of ADAMW_BLOCK_ELEMS and every buffer at
    // a 256-byte boundary, so i % 4 == 0 is 16-byte aligned for f32 and 8-byte for bf16): four
    // times the bytes in flight per thread of the one-element loop. Same per-element arithmetic.
    for (u64 i = start + 4 * (u64)threadIdx.x; i < end; i += 4 * (u64)blockDim.x) {
        if (i + 4 <= end) {
            float4 g4 = *reinterpret_cast<const float4*>(s.grad + i);
            if (grad_scale != 1.0f) {
                g4.x *= grad_scale; g4.y *= grad_scale; g4.z *= grad_scale; g4.w *= grad_scale;
            }
            float4 p4 = *reinterpret_cast<const float4*>(s.master + i);
            float4 m4 = *reinterpret_cast<const float4*>(s.m + i);
            float4 v4 = *reinterpret_cast<const float4*>(s.v + i);
            float p[4] = {p4.x, p4.y, p4.z, p4.w}, m[4] = {m4.x, m4.y, m4.z, m4.w};
            float v[4] = {v4.x, v4.y, v4.z, v4.w};
            const float g[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
            for (int k = 0; k < 4; ++k)
                adamw_elem(p, g[k], m, v, nullptr, k, s.decay, one_minus_beta1, beta2, one_minus_beta2,
                           neg_step_size, bias_correction2_sqrt, eps);
            *reinterpret_cast<float4*>(s.master + i) = make_float4(p[0], p[1], p[2], p[3]);
            *reinterpret_cast<float4*>(s.m + i) = make_float4(m[0], m[1], m[2], m[3]);
            *reinterpret_cast<float4*>(s.v + i) = make_float4(v[0], v[1], v[2], v[3]);
            if (s.working) {
                uint2 u;
                __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
                h[0] = __floats2bfloat162_rn(p[0], p[1]);
                h[1] = __floats2bfloat162_rn(p[2], p[3]);
                *reinterpret_cast<uint2*>(s.working + i) = u;
            }
        } else {
            for (u64 j = i; j < end; ++j) {
                float g = s.grad[j];
                if (grad_scale != 1.0f) g *= grad_scale;
                adamw_elem(s.master, g, s.m, s.v, s.working, j, s.decay, one_minus_beta1, beta2, one_minus_beta2,
                           neg_step_size, bias_correction2_sqrt, eps);
            }
        }
    }
}
