// Fused log-softmax gather over a vocabulary row, without materialising probabilities.
// z = logits * inv_temp; lse = log sum exp z; logprob = z[target] - lse (0 for target == NO_TARGET);
// entropy = lse - sum p z.  One block per row (grid-stride over rows), threads across V.
//
// Each thread keeps an online triple (m, s, t): the running max m, s = sum e^(z-m) and
// t = sum e^(z-m) (z-m), so that lse = m + log s and entropy = log s - t/s without cancellation.
// On the vectorised path each thread has two 16-byte loads (16 values) in flight; the values are
// pushed in the same order as one chunk at a time would.

#define NO_TARGET 0xffffffffu

struct Stats { float m, s, t; };

__device__ __forceinline__ void push(Stats& a, float z) {
    if (z > a.m) {
        if (a.s > 0.0f) {
            const float sc = expf(a.m - z);
            a.t = sc * (a.t + a.s * (a.m - z));
            a.s = a.s * sc;
        }
        a.m = z;
        a.s += 1.0f;
    } else {
        const float e = expf(z - a.m);
        if (e > 0.0f) {  // z = -inf contributes nothing (and would make 0 * inf)
            a.s += e;
            a.t += e * (z - a.m);
        }
    }
}

// Eight values at once: one rescale to the largest of them, then eight plain adds (one exp each).
// The summation order differs from eight `push`es only in where the rescale happens.
__device__ __forceinline__ void push8(Stats& a, const float* z) {
    float mx = z[0];
#pragma unroll
    for (int k = 1; k < 8; ++k) mx = fmaxf(mx, z[k]);
    if (mx > a.m) {
        if (a.s > 0.0f) {
            const float sc = expf(a.m - mx);
            a.t = sc * (a.t + a.s * (a.m - mx));
            a.s = a.s * sc;
        }
        a.m = mx;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const float e = expf(z[k] - a.m);
        if (e > 0.0f) {  // z = -inf (or a row of -inf: NaN) contributes nothing
            a.s += e;
            a.t += e * (z[k] - a.m);
        }
    }
}

__device__ __forceinline__ Stats merge(Stats a, Stats b) {
    if (b.s == 0.0f) return a;
    if (a.s == 0.0f) return b;
    const float m = fmaxf(a.m, b.m);
    const float ea = expf(a.m - m), eb = expf(b.m - m);
    Stats r;
    r.m = m;
    r.s = a.s * ea + b.s * eb;
    r.t = ea * (a.t + a.s * (a.m - m)) + eb * (b.t + b.s * (b.m - m));
    return r;
}

__device__ Stats block_merge(Stats a, Stats* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Stats b;
        b.m = __shfl_xor_sync(0xffffffffu, a.m, o);
        b.s = __shfl_xor_sync(0xffffffffu, a.s, o);
        b.t = __shfl_xor_sync(0xffffffffu, a.t, o);
        a = merge(a, b);
    }
    __syncthreads();
    if (lane == 0) scratch[warp] = a;
    __syncthreads();
    Stats r = {-INFINITY, 0.0f, 0.0f};
    for (int w = 0; w < nwarps; ++w) r = merge(r, scratch[w]);
    return r;
}

template <typename T>
__device__ void lsm_fwd_impl(const T* __restrict__ logits, const u32* __restrict__ targets, float inv_temp,
                             float* __restrict__ logprob, float* __restrict__ entropy, float* __restrict__ lse_out,
                             u32 n, u32 v) {
    __shared__ Stats scratch[32];
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const T* z = logits + (size_t)row * v;
        Stats a = {-INFINITY, 0.0f, 0.0f};
        if ((v & 7) == 0) {
            // 16-byte loads (rows start at multiples of 8 elements), 8 values each.
            float x[8], y[8];
            const u32 v8 = v / 8;
            for (u32 c = threadIdx.x; c < v8; c += 2 * blockDim.x) {
                const u32 c2 = c + blockDim.x;
                ld8(z, (size_t)c * 8, x);
                if (c2 < v8) ld8(z, (size_t)c2 * 8, y);
#pragma unroll
                for (int k = 0; k < 8; ++k) x[k] *= inv_temp;
                push8(a, x);
                if (c2 < v8) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) y[k] *= inv_temp;
                    push8(a, y);
                }
            }
        } else {
            u32 j = threadIdx.x;
            // Four independent loads in flight per thread before the first use.
            for (; j + 3 * blockDim.x < v; j += 4 * blockDim.x) {
                const float z0 = ld(z, j) * inv_temp, z1 = ld(z, j + blockDim.x) * inv_temp;
                const float z2 = ld(z, j + 2 * blockDim.x) * inv_temp, z3 = ld(z, j + 3 * blockDim.x) * inv_temp;
                push(a, z0); push(a, z1); push(a, z2); push(a, z3);
            }
            for (; j < v; j += blockDim.x) push(a, ld(z, j) * inv_temp);
        }
        const Stats r = block_merge(a, scratch);
        if (threadIdx.x == 0) {
            const float lse = r.m + logf(r.s);
            const u32 tgt = targets[row];
            lse_out[row] = lse;
            entropy[row] = logf(r.s) - r.t / r.s;
            logprob[row] = tgt == NO_TARGET ? 0.0f : (tgt < v ? ld(z, tgt) * inv_temp - lse : __int_as_float(0x7fc00000));
        }
    }
}

// dz_j = dlogprob * ([j == t] - p_j) - dentropy * p_j (z_j - E[z]),  dlogits = inv_temp * dz.
// With dentropy present a first pass over the row finds E[z] = sum p z.
template <typename T>
__device__ void lsm_bwd_impl(const float* __restrict__ dlogprob, const float* __restrict__ dentropy,
                             const T* __restrict__ logits, const u32* __restrict__ targets,
                             const float* __restrict__ lse, float inv_temp, T* __restrict__ dlogits, u32 n, u32 v) {
    __shared__ float scratch[32];
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const T* z = logits + (size_t)row * v;
        T* dz = dlogits + (size_t)row * v;
        const float l = lse[row];
        const u32 tgt = targets[row];
        const float dlp = tgt == NO_TARGET ? 0.0f : dlogprob[row];
        const float dent = dentropy ? dentropy[row] : 0.0f;
        const bool vec = (v & 7) == 0;  // 16-byte accesses, 8 values each
        float ez = 0.0f;
        if (dent != 0.0f) {
            float acc = 0.0f;
            if (vec) {
                float x[8];
                for (u32 c = threadIdx.x; c < v / 8; c += blockDim.x) {
                    ld8(z, (size_t)c * 8, x);
#pragma unroll
                    for (int k = 0; k < 8; ++k) {
                        const float zj = x[k] * inv_temp, p = expf(zj - l);
                        if (p > 0.0f) acc += p * zj;
                    }
                }
            } else {
                for (u32 j = threadIdx.x; j < v; j += blockDim.x) {
                    const float zj = ld(z, j) * inv_temp;
                    const float p = expf(zj - l);
                    if (p > 0.0f) acc += p * zj;
                }
            }
            ez = block_sum(acc, scratch);
        }
        auto grad = [&](u32 j, float zraw) {
            const float zj = zraw * inv_temp;
            const float p = expf(zj - l);
            float g = -dlp * p;
            if (j == tgt) g += dlp;
            if (dent != 0.0f && p > 0.0f) g -= dent * p * (zj - ez);
            return g * inv_temp;
        };
        if (vec) {
            float x[8], y[8];
            const u32 v8 = v / 8;
            for (u32 c = threadIdx.x; c < v8; c += 2 * blockDim.x) {
                const u32 c2 = c + blockDim.x;
                ld8(z, (size_t)c * 8, x);
                if (c2 < v8) ld8(z, (size_t)c2 * 8, y);
#pragma unroll
                for (int k = 0; k < 8; ++k) x[k] = grad(c * 8 + k, x[k]);
                st8(dz, (size_t)c * 8, x);
                if (c2 < v8) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) y[k] = grad(c2 * 8 + k, y[k]);
                    st8(dz, (size_t)c2 * 8, y);
                }
            }
        } else {
            for (u32 j = threadIdx.x; j < v; j += blockDim.x) st(dz, j, grad(j, ld(z, j)));
        }
    }
}

extern "C" __global__ void logsoftmax_gather_f32(const float* logits, const u32* targets, float inv_temp, float* logprob,
                                                 float* entropy, float* lse, u32 n, u32 v) {
    lsm_fwd_impl(logits, targets, inv_temp, logprob, entropy, lse, n, v);
}
extern "C" __global__ void logsoftmax_gather_bf16(const __nv_bfloat16* logits, const u32* targets, float inv_temp,
                                                  float* logprob, float* entropy, float* lse, u32 n, u32 v) {
    lsm_fwd_impl(logits, targets, inv_temp, logprob, entropy, lse, n, v);
}
extern "C" __global__ void logsoftmax_gather_backward_f32(const float* dlogprob, const float* dentropy, const float* logits,
                                                          const u32* targets, const float* lse, float inv_temp,
                                                          float* dlogits, u32 n, u32 v) {
    lsm_bwd_impl(dlogprob, dentropy, logits, targets, lse, inv_temp, dlogits, n, v);
}
extern "C" __global__ void logsoftmax_gather_backward_bf16(const float* dlogprob, const float* dentropy,
                                                           const __nv_bfloat16* logits, const u32* targets, const float* lse,
                                                           float inv_temp, __nv_bfloat16* dlogits, u32 n, u32 v) {
    lsm_bwd_impl(dlogprob, dentropy, logits, targets, lse, inv_temp, dlogits, n, v);
}

// The LM head's backward (kernels::ops::lm_head): the same gradient as lsm_bwd_impl in one pass,
// with E[z] = lse - entropy taken from the forward instead of a first pass over the row, and
// d(logits) written in the dtype of the GEMMs that consume it (bf16 from f32 logits: no f32
// d(logits) buffer and no cast). Bytes per logit: 4 read + 2 written (f32 -> bf16).
template <typename TI, typename TO>
__device__ void lsm_bwd_fused_impl(const float* __restrict__ dlogprob, const float* __restrict__ dentropy,
                                   const float* __restrict__ entropy, const TI* __restrict__ logits,
                                   const u32* __restrict__ targets, const float* __restrict__ lse, float inv_temp,
                                   TO* __restrict__ dlogits, u32 n, u32 v) {
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const TI* z = logits + (size_t)row * v;
        TO* dz = dlogits + (size_t)row * v;
        const float l = lse[row];
        const u32 tgt = targets[row];
        const float dlp = tgt == NO_TARGET ? 0.0f : dlogprob[row];
        const float dent = dentropy ? dentropy[row] : 0.0f;
        const float ez = dent != 0.0f ? l - entropy[row] : 0.0f;  // E[z] = sum p z = lse - H
        auto grad = [&](u32 j, float zraw) {
            const float zj = zraw * inv_temp;
            const float p = expf(zj - l);
            float g = -dlp * p;
            if (j == tgt) g += dlp;
            if (dent != 0.0f && p > 0.0f) g -= dent * p * (zj - ez);
            return g * inv_temp;
        };
        if ((v & 7) == 0) {  // 16-byte accesses, 8 values each, two loads in flight
            float x[8], y[8];
            const u32 v8 = v / 8;
            for (u32 c = threadIdx.x; c < v8; c += 2 * blockDim.x) {
                const u32 c2 = c + blockDim.x;
                ld8(z, (size_t)c * 8, x);
                if (c2 < v8) ld8(z, (size_t)c2 * 8, y);
#pragma unroll
                for (int k = 0; k < 8; ++k) x[k] = grad(c * 8 + k, x[k]);
                st8(dz, (size_t)c * 8, x);
                if (c2 < v8) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) y[k] = grad(c2 * 8 + k, y[k]);
                    st8(dz, (size_t)c2 * 8, y);
                }
            }
        } else {
            for (u32 j = threadIdx.x; j < v; j += blockDim.x) st(dz, j, grad(j, ld(z, j)));
        }
    }
}

extern "C" __global__ void logsoftmax_backward_fused_f32_f32(const float* dlogprob, const float* dentropy,
                                                             const float* entropy, const float* logits,
                                                             const u32* targets, const float* lse, float inv_temp,
                                                             float* dlogits, u32 n, u32 v) {
    lsm_bwd_fused_impl(dlogprob, dentropy, entropy, logits, targets, lse, inv_temp, dlogits, n, v);
}
extern "C" __global__ void logsoftmax_backward_fused_f32_bf16(const float* dlogprob, const float* dentropy,
                                                              const float* entropy, const float* logits,
                                                              const u32* targets, const float* lse, float inv_temp,
                                                              __nv_bfloat16* dlogits, u32 n, u32 v) {
    lsm_bwd_fused_impl(dlogprob, dentropy, entropy, logits, targets, lse, inv_temp, dlogits, n, v);
}
