// The epilogue of the fused q/k/v projection: one pass over the GEMM's f32 accumulators
// acc[N, (H+2K)·D] (row = [q heads | k heads | v heads], each head D wide) that
//   1. adds the bias in f32 and rounds to T once: x = T(acc + b), the numerics of `linear` with a
//      bias (bias and product summed in f32, one rounding);
//   2. rotates the q and k heads as the `rope` op does (HF rotate_half; x read in f32, cos/sin of
//      the f32 angle evaluated in f64 and rounded to f32, one rounding to T of the result);
//   3. writes q[N,H,D], k[N,K,D], v[N,K,D] and k, v into their paged-cache slots (kc, vc [P,K,D];
//      a slot >= P, e.g. u32::MAX for an idle row, is skipped, as in kv_cache_write). The training
//      forward passes no cache (P = 0, null slots and caches): only q, k, v are written.
// cos/sin come from a per-position table (rope_tab[P, D], built once per rollout by `rope_table`
// with the same arithmetic) when given and the position is inside it, else are computed per token.
// Layout as rope.cu: one block per `tpb` (1 to 8) consecutive tokens (grid-stride), their cos/sin
// tables in shared memory, threads over (token, head, pair); 8 consecutive pairs per thread when
// D/2 is a multiple of 8 (16-byte accesses). The host picks tpb so that a decode batch of a few
// hundred tokens still spreads over every SM (one token per block at B 256).

// V consecutive elements at i: 8 (vector access) or 1.
template <int V, typename P>
__device__ __forceinline__ void ldv(const P* p, size_t i, float* v) {
    if (V == 8) ld8(p, i, v);
    else v[0] = ld(p, i);
}
template <int V, typename P>
__device__ __forceinline__ void stv(P* p, size_t i, const float* v) {
    if (V == 8) st8(p, i, v);
    else st(p, i, v[0]);
}

// One work item: pairs [i, i+V) of head hh (of the H+2K) of token tok.
template <int V, typename T>
__device__ __forceinline__ void qkv_item(const float* __restrict__ acc, const T* __restrict__ bias,
                                         const u32* __restrict__ slots, T* __restrict__ q, T* __restrict__ k,
                                         T* __restrict__ v, T* __restrict__ kc, T* __restrict__ vc,
                                         const float* tab, u32 tok, u32 hh, u32 i, u32 heads, u32 kv_heads,
                                         u32 d, u32 num_slots) {
    const u32 half = d / 2, all = heads + 2 * kv_heads;
    const size_t src = ((size_t)tok * all + hh) * d;
    float x1[8], x2[8], b1[8], b2[8];
    ldv<V>(acc, src + i, x1);
    ldv<V>(acc, src + i + half, x2);
    if (bias != nullptr) {
        ldv<V>(bias, (size_t)hh * d + i, b1);
        ldv<V>(bias, (size_t)hh * d + i + half, b2);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            x1[j] += b1[j];
            x2[j] += b2[j];
        }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
        x1[j] = round_to<T>(x1[j]);
        x2[j] = round_to<T>(x2[j]);
    }
    if (hh < heads + kv_heads) {
        float y1[8], y2[8];
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const float c = tab[i + j], s = tab[half + i + j];
            y1[j] = x1[j] * c - x2[j] * s;
            y2[j] = x2[j] * c + x1[j] * s;
        }
#pragma unroll
        for (int j = 0; j < V; ++j) {
            x1[j] = y1[j];
            x2[j] = y2[j];
        }
    }
    T* out;
    T* cache = nullptr;
    size_t row;  // the head's row in out (and in the cache's slot)
    if (hh < heads) {
        out = q;
        row = (size_t)tok * heads + hh;
    } else {
        const u32 kh = (hh - heads) % kv_heads;
        out = hh < heads + kv_heads ? k : v;
        cache = hh < heads + kv_heads ? kc : vc;
        row = (size_t)tok * kv_heads + kh;
        const u32 slot = num_slots > 0 ? slots[tok] : 0;  // no cache (training): 0 slots, null slots
        if (slot < num_slots) {
            const size_t dst = ((size_t)slot * kv_heads + kh) * d;
            stv<V>(cache, dst + i, x1);
            stv<V>(cache, dst + i + half, x2);
        }
    }
    stv<V>(out, row * d + i, x1);
    stv<V>(out, row * d + i + half, x2);
}

template <typename T>
__device__ void qkv_rope_cache_impl(const float* __restrict__ acc, const T* __restrict__ bias,
                                    const u32* __restrict__ pos, const u32* __restrict__ slots, T* __restrict__ q,
                                    T* __restrict__ k, T* __restrict__ v, T* __restrict__ kc, T* __restrict__ vc,
                                    u32 n, u32 heads, u32 kv_heads, u32 d, u32 num_slots, float theta, u32 tpb,
                                    const float* __restrict__ rope_tab, u32 rope_rows) {
    extern __shared__ float tab[];  // [tpb][D]: cos in [0, D/2), sin in [D/2, D)
    const u32 half = d / 2, all = heads + 2 * kv_heads;
    for (u32 tok0 = blockIdx.x * tpb; tok0 < n; tok0 += gridDim.x * tpb) {
        const u32 nt = min(tpb, n - tok0);
        __syncthreads();  // the previous tokens' table is no longer read
        for (u32 idx = threadIdx.x; idx < nt * half; idx += blockDim.x) {
            const u32 tk = idx / half, i = idx % half, p = pos[tok0 + tk];
            if (rope_tab != nullptr && p < rope_rows) {
                // The per-position table (rope_table below: the same arithmetic, done once).
                tab[tk * d + i] = rope_tab[(size_t)p * d + i];
                tab[tk * d + half + i] = rope_tab[(size_t)p * d + half + i];
            } else {
                rope_cos_sin(p, i, d, theta, &tab[tk * d + i], &tab[tk * d + half + i]);
            }
        }
        __syncthreads();
        if (half % 8 == 0) {
            const u32 per_tok = all * (half / 8);
            for (u32 idx = threadIdx.x; idx < nt * per_tok; idx += blockDim.x) {
                const u32 tk = idx / per_tok, rem = idx % per_tok, hh = rem / (half / 8), i = (rem % (half / 8)) * 8;
                qkv_item<8>(acc, bias, slots, q, k, v, kc, vc, tab + tk * d, tok0 + tk, hh, i, heads, kv_heads, d,
                            num_slots);
            }
        } else {
            const u32 per_tok = all * half;
            for (u32 idx = threadIdx.x; idx < nt * per_tok; idx += blockDim.x) {
                const u32 tk = idx / per_tok, rem = idx % per_tok, hh = rem / half, i = rem % half;
                qkv_item<1>(acc, bias, slots, q, k, v, kc, vc, tab + tk * d, tok0 + tk, hh, i, heads, kv_heads, d,
                            num_slots);
            }
        }
    }
}

#define QKV_ROPE_CACHE(S, T)                                                                                        \
    extern "C" __global__ void qkv_rope_cache_##S(const float* acc, const T* bias, const u32* pos, const u32* slots, \
                                                  T* q, T* k, T* v, T* kc, T* vc, u32 n, u32 heads, u32 kv_heads,    \
                                                  u32 d, u32 num_slots, float theta, u32 tpb, const float* rope_tab, \
                                                  u32 rope_rows) { pdl_entry();                                      \
        qkv_rope_cache_impl(acc, bias, pos, slots, q, k, v, kc, vc, n, heads, kv_heads, d, num_slots, theta, tpb,    \
                            rope_tab, rope_rows);                                                                    \
    }

QKV_ROPE_CACHE(f32, float)
QKV_ROPE_CACHE(bf16, __nv_bfloat16)

// The per-position table tab[P, D] (cos | sin of each pair's angle), one thread per (p, i).
extern "C" __global__ void rope_table(float* tab, u32 rows, u32 d, float theta) { pdl_entry();
    const u32 half = d / 2;
    const u64 total = (u64)rows * half, stride = (u64)gridDim.x * blockDim.x;
    for (u64 t = blockIdx.x * (u64)blockDim.x + threadIdx.x; t < total; t += stride) {
        const u32 p = (u32)(t / half), i = (u32)(t % half);
        rope_cos_sin(p, i, d, theta, &tab[(size_t)p * d + i], &tab[(size_t)p * d + half + i]);
    }
}
