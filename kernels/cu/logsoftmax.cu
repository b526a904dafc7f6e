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

// One row of d(logits): dz_j = inv_temp * (dlp ([j == t] - p_j) - dent p_j (z_j - E[z])), z = zraw * inv_temp,
// p_j = e^(z_j - lse). Shared by the op-by-op backward and the LM head's fused one (which differ only
// in where E[z] comes from). 16-byte accesses with two loads in flight when V % 8 == 0.
template <typename TI, typename TO>
__device__ __forceinline__ void write_row_grad(const TI* __restrict__ z, TO* __restrict__ dz, u32 v, u32 tgt, float l,
                                               float dlp, float dent, float ez, float inv_temp) {
    auto grad = [&](u32 j, float zraw) {
        const float zj = zraw * inv_temp;
        const float p = expf(zj - l);
        float g = -dlp * p;
        if (j == tgt) g += dlp;
        if (dent != 0.0f && p > 0.0f) g -= dent * p * (zj - ez);
        return g * inv_temp;
    };
    if ((v & 7) == 0) {
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
        float ez = 0.0f;
        if (dent != 0.0f) {
            float acc = 0.0f;
            if ((v & 7) == 0) {  // 16-byte loads, 8 values each
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
        write_row_grad(z, dz, v, tgt, l, dlp, dent, ez, inv_temp);
    }
}

extern "C" __global__ void logsoftmax_gather_f32(const float* logits, const u32* targets, float inv_temp, float* logprob,
                                                 float* entropy, float* lse, u32 n, u32 v) { pdl_entry();
    lsm_fwd_impl(logits, targets, inv_temp, logprob, entropy, lse, n, v);
}
extern "C" __global__ void logsoftmax_gather_bf16(const __nv_bfloat16* logits, const u32* targets, float inv_temp,
                                                  float* logprob, float* entropy, float* lse, u32 n, u32 v) { pdl_entry();
    lsm_fwd_impl(logits, targets, inv_temp, logprob, entropy, lse, n, v);
}
extern "C" __global__ void logsoftmax_gather_backward_f32(const float* dlogprob, const float* dentropy, const float* logits,
                                                          const u32* targets, const float* lse, float inv_temp,
                                                          float* dlogits, u32 n, u32 v) { pdl_entry();
    lsm_bwd_impl(dlogprob, dentropy, logits, targets, lse, inv_temp, dlogits, n, v);
}
extern "C" __global__ void logsoftmax_gather_backward_bf16(const float* dlogprob, const float* dentropy,
                                                           const __nv_bfloat16* logits, const u32* targets, const float* lse,
                                                           float inv_temp, __nv_bfloat16* dlogits, u32 n, u32 v) { pdl_entry();
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
        write_row_grad(z, dz, v, tgt, l, dlp, dent, ez, inv_temp);
    }
}

extern "C" __global__ void logsoftmax_backward_fused_f32_f32(const float* dlogprob, const float* dentropy,
                                                             const float* entropy, const float* logits,
                                                             const u32* targets, const float* lse, float inv_temp,
                                                             float* dlogits, u32 n, u32 v) { pdl_entry();
    lsm_bwd_fused_impl(dlogprob, dentropy, entropy, logits, targets, lse, inv_temp, dlogits, n, v);
}
extern "C" __global__ void logsoftmax_backward_fused_f32_bf16(const float* dlogprob, const float* dentropy,
                                                              const float* entropy, const float* logits,
                                                              const u32* targets, const float* lse, float inv_temp,
                                                              __nv_bfloat16* dlogits, u32 n, u32 v) { pdl_entry();
    lsm_bwd_fused_impl(dlogprob, dentropy, entropy, logits, targets, lse, inv_temp, dlogits, n, v);
}

// ---------------------------------------------------------------------------------------------
// The LM head's factorised path (kernels::ops::lm_head, `LmHeadRows::residual`). When the gradient
// reaching the logits is row-scaled, d(logits)_i = s_i (onehot(t_i) - p_i) with s_i = inv_temp *
// dlogprob_i (no entropy term), the forward writes R = onehot - p once, in the GEMM dtype, instead of
// keeping the f32 logits; the backward scales [N,C] rows instead of writing an [N,V] d(logits):
// d(hidden) = diag(s) (R W) and dW += Rᵀ (diag(s) hidden).
//
// R needs lse, which needs the whole row, so a one-block-per-row kernel would read the f32 row twice
// (8 B + 2 B written per logit). Here a cluster of RES_CLUSTER blocks owns a row: each block loads
// its segment of z = logits * inv_temp into shared memory once (V = 152k: 76 KB a block), the blocks
// exchange their (m, s, t) through distributed shared memory, and each writes R for its segment
// from shared memory: 4 B read + 2 B written per logit. The segment is loaded by cp.async, all of
// it in flight at once. sm_90 (clusters) only; the host takes the
// kept-logits path elsewhere.

#define RES_CLUSTER 8

// A (m, s, t) triple in shared memory, as three floats for the cluster loads.
struct StatsSlot { float m, s, t; };

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// Every thread of every block of the cluster arrives, with release/acquire ordering of shared
// (and global) memory at cluster scope.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// The float at `p` (this block's shared memory) in block `rank` of the cluster.
__device__ __forceinline__ float cluster_ld(const float* p, u32 rank) {
    const u32 local = (u32)__cvta_generic_to_shared(p);
    u32 remote;
    float x;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(local), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(x) : "r"(remote) : "memory");
    return x;
}

// logits [n, v] f32 -> per row logprob, entropy, lse (as logsoftmax_gather) and resid [n, v] = onehot(t) - p.
// Grid: RES_CLUSTER blocks per row (clusters grid-stride over rows); dynamic smem: `seg` floats,
// seg = ceil(v / RES_CLUSTER) rounded up to a multiple of 8.
template <typename TO>
__device__ void lsm_residual_impl(const float* __restrict__ logits, const u32* __restrict__ targets, float inv_temp,
                                  float* __restrict__ logprob, float* __restrict__ entropy, float* __restrict__ lse_out,
                                  TO* __restrict__ resid, u32 n, u32 v, u32 seg) {
    extern __shared__ float4 zs4[];  // [seg / 4]: this block's segment of the row, z = logits * inv_temp
    float* zs = reinterpret_cast<float*>(zs4);
    __shared__ Stats scratch[32];
    __shared__ StatsSlot part;  // this block's (m, s, t), read by the whole cluster
    const u32 rank = cluster_rank();
    const u32 lo = min(rank * seg, v), hi = min(lo + seg, v), len = hi - lo;
    const bool vec = (v & 7) == 0;  // then lo and len are multiples of 8 too: 16-byte accesses
    for (u32 row = blockIdx.x / RES_CLUSTER; row < n; row += gridDim.x / RES_CLUSTER) {
        const float* z = logits + (size_t)row * v + lo;
        TO* out = resid + (size_t)row * v + lo;
        Stats a = {-INFINITY, 0.0f, 0.0f};
        if (vec) {
            // The whole segment in flight at once: every thread issues all its 16-byte
            // global -> shared copies (cp.async) before waiting, instead of two dependent loads
            // per thread per round trip (measured 2.1 TB/s that way). Then z = logits * inv_temp
            // in place and the statistics from shared memory.
            for (u32 c = threadIdx.x; c < len / 4; c += blockDim.x) {
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"((u32)__cvta_generic_to_shared(&zs4[c])),
                             "l"(z + (size_t)c * 4));
            }
            asm volatile("cp.async.commit_group;\n\tcp.async.wait_group 0;\n" ::: "memory");
            __syncthreads();
            float x[8];
            for (u32 c = threadIdx.x; c < len / 8; c += blockDim.x) {
                const float4 a0 = zs4[2 * c], a1 = zs4[2 * c + 1];
                x[0] = a0.x * inv_temp; x[1] = a0.y * inv_temp; x[2] = a0.z * inv_temp; x[3] = a0.w * inv_temp;
                x[4] = a1.x * inv_temp; x[5] = a1.y * inv_temp; x[6] = a1.z * inv_temp; x[7] = a1.w * inv_temp;
                // 16-byte shared accesses (scalar ones 32 B apart would conflict 8-way).
                zs4[2 * c] = make_float4(x[0], x[1], x[2], x[3]);
                zs4[2 * c + 1] = make_float4(x[4], x[5], x[6], x[7]);
                push8(a, x);
            }
        } else {
            for (u32 j = threadIdx.x; j < len; j += blockDim.x) {
                const float zj = z[j] * inv_temp;
                zs[j] = zj;
                push(a, zj);
            }
        }
        const Stats b = block_merge(a, scratch);
        if (threadIdx.x == 0) part = {b.m, b.s, b.t};
        cluster_sync();
        Stats r = {-INFINITY, 0.0f, 0.0f};
        for (u32 k = 0; k < RES_CLUSTER; ++k) {
            const Stats o = {cluster_ld(&part.m, k), cluster_ld(&part.s, k), cluster_ld(&part.t, k)};
            r = merge(r, o);
        }
        const float l = r.m + logf(r.s);
        const u32 tgt = targets[row];
        if (threadIdx.x == 0) {
            if (rank == 0) {
                lse_out[row] = l;
                entropy[row] = logf(r.s) - r.t / r.s;
                if (tgt == NO_TARGET) logprob[row] = 0.0f;
                else if (tgt >= v) logprob[row] = __int_as_float(0x7fc00000);
            }
            if (tgt >= lo && tgt < hi) logprob[row] = zs[tgt - lo] - l;
        }
        // R_j = [j == t] - e^(z_j - l), computed in f32 and rounded once.
        const u32 t_local = tgt - lo;  // wraps to a large value when the target is not in this segment
        if (vec) {
            float x[8];
            for (u32 c = threadIdx.x; c < len / 8; c += blockDim.x) {
                const float4 a0 = zs4[2 * c], a1 = zs4[2 * c + 1];
                const float zz[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#pragma unroll
                for (int k = 0; k < 8; ++k) x[k] = (c * 8 + k == t_local ? 1.0f : 0.0f) - expf(zz[k] - l);
                st8(out, (size_t)c * 8, x);
            }
        } else {
            for (u32 j = threadIdx.x; j < len; j += blockDim.x) st(out, j, (j == t_local ? 1.0f : 0.0f) - expf(zs[j] - l));
        }
        // No block reuses `part` (next row) or exits while another still reads it.
        cluster_sync();
    }
}

extern "C" __global__ void __cluster_dims__(RES_CLUSTER, 1, 1)
    logsoftmax_residual_f32_f32(const float* logits, const u32* targets, float inv_temp, float* logprob, float* entropy,
                                float* lse, float* resid, u32 n, u32 v, u32 seg) { pdl_entry();
    lsm_residual_impl(logits, targets, inv_temp, logprob, entropy, lse, resid, n, v, seg);
}
extern "C" __global__ void __cluster_dims__(RES_CLUSTER, 1, 1)
    logsoftmax_residual_f32_bf16(const float* logits, const u32* targets, float inv_temp, float* logprob,
                                 float* entropy, float* lse, __nv_bfloat16* resid, u32 n, u32 v, u32 seg) { pdl_entry();
    lsm_residual_impl(logits, targets, inv_temp, logprob, entropy, lse, resid, n, v, seg);
}
#endif

// out[r, :] = s_r * x[r, :] with s_r = inv_temp * dlogprob[r] (0 where the target is NO_TARGET): the
// row scaling of the factorised backward, applied to hidden (before dW's GEMM) and to R W (after
// d(hidden)'s GEMM, f32 in, rounded once). Grid-stride over 8-element groups when C % 8 == 0.
template <typename TI, typename TO>
__device__ void scale_rows_impl(const TI* __restrict__ x, const float* __restrict__ dlogprob,
                                const u32* __restrict__ targets, float inv_temp, TO* __restrict__ out, u32 rows,
                                u32 cols) {
    auto scale = [&](size_t i) {
        const size_t r = i / cols;
        return targets[r] == NO_TARGET ? 0.0f : dlogprob[r] * inv_temp;
    };
    const u64 n = (u64)rows * cols;
    if ((cols & 7) == 0) {
        float v[8];
        for_each_8(n, [&](size_t i) {
            ld8(x, i, v);
            const float s = scale(i);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] *= s;
            st8(out, i, v);
        }, [&](size_t i) { st(out, i, ld(x, i) * scale(i)); });
    } else {
        const u64 stride = (u64)gridDim.x * blockDim.x;
        for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += stride) st(out, i, ld(x, i) * scale(i));
    }
}

extern "C" __global__ void lm_head_scale_rows_f32_f32(const float* x, const float* dlogprob, const u32* targets,
                                                      float inv_temp, float* out, u32 rows, u32 cols) { pdl_entry();
    scale_rows_impl(x, dlogprob, targets, inv_temp, out, rows, cols);
}
extern "C" __global__ void lm_head_scale_rows_f32_bf16(const float* x, const float* dlogprob, const u32* targets,
                                                       float inv_temp, __nv_bfloat16* out, u32 rows, u32 cols) { pdl_entry();
    scale_rows_impl(x, dlogprob, targets, inv_temp, out, rows, cols);
}
extern "C" __global__ void lm_head_scale_rows_bf16_bf16(const __nv_bfloat16* x, const float* dlogprob,
                                                        const u32* targets, float inv_temp, __nv_bfloat16* out,
                                                        u32 rows, u32 cols) { pdl_entry();
    scale_rows_impl(x, dlogprob, targets, inv_temp, out, rows, cols);
}
