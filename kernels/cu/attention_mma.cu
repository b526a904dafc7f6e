// Tensor-core (mma.sync m16n8k16, bf16 in, f32 accumulate) flash attention for bf16 inputs:
// causal GQA over packed sequences, same contract and layout as attention.cu, whose CUDA-core
// kernels remain the f32 path and the fallback for head dims that are not a multiple of 16.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4; pairs hold consecutive k, the
// lower k in the low 16 bits):
//   A 16x16: a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B 16x8:  b0 (k 2t..2t+1, col g),  b1 (k 2t+8.., col g)
//   C 16x8:  c0,c1 (row g, cols 2t, 2t+1),  c2,c3 (row g+8, same cols)
// A C fragment of S = Q K^T over 16 keys is, pair for pair, the A fragment of P for P V: the
// probabilities never leave registers.
//
// Compile-time: HEAD_DIM (D, a multiple of 16, at most 128) and, for the backward, BQ (query tile
// rows: 64 or 32). 128 threads = 4 warps.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<D>"
#endif
#ifndef BQ
#define BQ 64
#endif

#define D HEAD_DIM
#define BM 64              // query rows per forward block (16 per warp)
#define BN 64              // keys per tile (16 per warp in the backward)
#define LDS (D + 8)        // smem row stride in bf16 (16-byte rows, no bank conflicts on pair loads)
#define LDSS (BN + 8)      // stride of the dS tile
#define NT_D (D / 8)       // n-tiles over the head dim
#define KS_D (D / 16)      // k-steps over the head dim
#define NTHREADS 128

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ u32 pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32*>(&v);
}

// Two consecutive bf16 at p (4-byte aligned) as one register.
__device__ __forceinline__ u32 ld_pair(const bf16* p) { return *reinterpret_cast<const u32*>(p); }

// The bf16 at p and at p + stride (two rows, same column) as one register.
__device__ __forceinline__ u32 ld_col_pair(const bf16* p, int stride) {
    const unsigned short lo = *reinterpret_cast<const unsigned short*>(p);
    const unsigned short hi = *reinterpret_cast<const unsigned short*>(p + stride);
    return (u32)lo | ((u32)hi << 16);
}

__device__ __forceinline__ void mma(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ bool locate(const u32* cu, u32 n_seqs, u32 tile, u32 rows, u32& start, u32& len,
                                       u32& t0) {
    for (u32 s = 0; s < n_seqs; ++s) {
        const u32 a = cu[s], b = cu[s + 1];
        const u32 l = b > a ? b - a : 0;
        const u32 nt = (l + rows - 1) / rows;
        if (tile < nt) {
            start = a;
            len = l;
            t0 = tile * rows;
            return true;
        }
        tile -= nt;
    }
    return false;
}

// `rows` rows of D bf16 (token stride `stride` elements, head offset `hoff`) into tile[.][LDS],
// 16 bytes per access, zeros past `valid`.
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* x, u32 row0, u32 rows, u32 valid, size_t stride,
                                          size_t hoff) {
    const u32 chunks = D / 8;
    for (u32 idx = threadIdx.x; idx < rows * chunks; idx += NTHREADS) {
        const u32 r = idx / chunks, c = (idx % chunks) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < valid) v = *reinterpret_cast<const uint4*>(x + (size_t)(row0 + r) * stride + hoff + c);
        *reinterpret_cast<uint4*>(tile + r * LDS + c) = v;
    }
}

extern "C" __global__ void __launch_bounds__(NTHREADS)
    attention_mma_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                      const u32* __restrict__ cu, bf16* __restrict__ out, float* __restrict__ lse, u32 n_seqs,
                      u32 H, u32 KH, float scale) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [BM][LDS]
    bf16* Ks = Qs + BM * LDS;                        // [BN][LDS]
    bf16* Vs = Ks + BN * LDS;                        // [BN][LDS]

    u32 start, len, q0;
    if (!locate(cu, n_seqs, blockIdx.x, BM, start, len, q0)) return;
    const u32 h = blockIdx.y, kvh = h / (H / KH);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const u32 qn = min((u32)BM, len - q0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;

    load_tile(Qs, q, start + q0, BM, qn, qs, (size_t)h * D);
    __syncthreads();
    u32 qa[KS_D][4];
    const u32 r0 = warp * 16 + g;
#pragma unroll
    for (int kk = 0; kk < KS_D; ++kk) {
        const u32 c = kk * 16 + 2 * t;
        qa[kk][0] = ld_pair(Qs + r0 * LDS + c);
        qa[kk][1] = ld_pair(Qs + (r0 + 8) * LDS + c);
        qa[kk][2] = ld_pair(Qs + r0 * LDS + c + 8);
        qa[kk][3] = ld_pair(Qs + (r0 + 8) * LDS + c + 8);
    }

    float o[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const u32 qpos[2] = {q0 + r0, q0 + r0 + 8};

    const u32 n_kt = (q0 + qn + BN - 1) / BN;
    for (u32 kt = 0; kt < n_kt; ++kt) {
        const u32 k0 = kt * BN, kn = min((u32)BN, len - k0);
        __syncthreads();  // previous tile fully used
        load_tile(Ks, k, start + k0, BN, kn, ks, (size_t)kvh * D);
        load_tile(Vs, v, start + k0, BN, kn, ks, (size_t)kvh * D);
        __syncthreads();

        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const bf16* kr = Ks + (j * 8 + g) * LDS + 2 * t;
#pragma unroll
            for (int kk = 0; kk < KS_D; ++kk) mma(s[j], qa[kk], ld_pair(kr + kk * 16), ld_pair(kr + kk * 16 + 8));
        }

        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const u32 key = k0 + j * 8 + 2 * t + (e & 1), qp = qpos[e >> 1];
                const bool ok = key <= qp && key < len && qp < len;
                s[j][e] = ok ? s[j][e] * scale : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            }
        float alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]);
            alpha[r] = mn == -INFINITY ? 1.0f : expf(m[r] - mn);
            mx[r] = mn;  // the new running max
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const float p = mx[r] == -INFINITY ? 0.0f : expf(s[j][e] - mx[r]);
                s[j][e] = p;
                rs[r] += p;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
            l[r] = l[r] * alpha[r] + rs[r];
            m[r] = mx[r];
        }
#pragma unroll
        for (int n = 0; n < NT_D; ++n) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }

        // O += P V over 16 keys per k-step.
#pragma unroll
        for (int ks16 = 0; ks16 < BN / 16; ++ks16) {
            const u32 a[4] = {pack2(s[2 * ks16][0], s[2 * ks16][1]), pack2(s[2 * ks16][2], s[2 * ks16][3]),
                              pack2(s[2 * ks16 + 1][0], s[2 * ks16 + 1][1]),
                              pack2(s[2 * ks16 + 1][2], s[2 * ks16 + 1][3])};
            const bf16* vr = Vs + (ks16 * 16 + 2 * t) * LDS + g;
#pragma unroll
            for (int n = 0; n < NT_D; ++n)
                mma(o[n], a, ld_col_pair(vr + n * 8, LDS), ld_col_pair(vr + 8 * LDS + n * 8, LDS));
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 row = r0 + 8 * r;
        if (row < qn) {
            const size_t base = (size_t)(start + q0 + row) * qs + (size_t)h * D;
            const float inv = 1.0f / l[r];
#pragma unroll
            for (int n = 0; n < NT_D; ++n)
                *reinterpret_cast<u32*>(out + base + n * 8 + 2 * t) = pack2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            if (t == 0) lse[(size_t)(start + q0 + row) * H + h] = m[r] + logf(l[r]);
        }
    }
}

// delta[n, h] = sum_d dout * out, one warp per (token, head).
extern "C" __global__ void attention_mma_delta(const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                               float* __restrict__ delta, u32 rows) {
    const u32 w = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (w >= rows) return;
    const size_t base = (size_t)w * D;
    float acc = 0.0f;
    for (u32 d = lane; d < D; d += 32) acc += __bfloat162float(dout[base + d]) * __bfloat162float(out[base + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[w] = acc;
}

// Backward: one block per (key tile of BN keys, kv head); warp w owns keys 16w..16w+15 and keeps
// their dk, dv in registers over the group's query heads and the query tiles (BQ rows) at or after
// the key tile. Per query tile:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//   dv += P^T dO, dk += dS^T Q (A operands straight from the C fragments),
//   dq += dS K via a bf16 dS tile in shared memory, added to the f32 dq_acc with atomics.
extern "C" __global__ void __launch_bounds__(NTHREADS)
    attention_mma_bwd(const bf16* __restrict__ dout, const bf16* __restrict__ q, const bf16* __restrict__ k,
                      const bf16* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
                      const u32* __restrict__ cu, float* dq_acc, bf16* __restrict__ dk, bf16* __restrict__ dv,
                      u32 n_seqs, u32 H, u32 KH, float scale) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Ks = reinterpret_cast<bf16*>(smem_raw);     // [BN][LDS]
    bf16* Vs = Ks + BN * LDS;                          // [BN][LDS]
    bf16* Qs = Vs + BN * LDS;                          // [BQ][LDS]
    bf16* dOs = Qs + BQ * LDS;                         // [BQ][LDS]
    bf16* dSs = dOs + BQ * LDS;                        // [BQ][LDSS]  dS[query][key]
    float* lse_s = reinterpret_cast<float*>(dSs + BQ * LDSS);  // [BQ]
    float* delta_s = lse_s + BQ;                                 // [BQ]

    u32 start, len, k0;
    if (!locate(cu, n_seqs, blockIdx.x, BN, start, len, k0)) return;
    const u32 kvh = blockIdx.y, group = H / KH;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const u32 kn = min((u32)BN, len - k0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;

    load_tile(Ks, k, start + k0, BN, kn, ks, (size_t)kvh * D);
    load_tile(Vs, v, start + k0, BN, kn, ks, (size_t)kvh * D);
    __syncthreads();
    // This warp's 16 keys of K and V as A fragments (rows = keys, k = head dim).
    const u32 kr0 = warp * 16 + g;
    u32 ka[KS_D][4], va[KS_D][4];
#pragma unroll
    for (int kk = 0; kk < KS_D; ++kk) {
        const u32 c = kk * 16 + 2 * t;
        ka[kk][0] = ld_pair(Ks + kr0 * LDS + c);
        ka[kk][1] = ld_pair(Ks + (kr0 + 8) * LDS + c);
        ka[kk][2] = ld_pair(Ks + kr0 * LDS + c + 8);
        ka[kk][3] = ld_pair(Ks + (kr0 + 8) * LDS + c + 8);
        va[kk][0] = ld_pair(Vs + kr0 * LDS + c);
        va[kk][1] = ld_pair(Vs + (kr0 + 8) * LDS + c);
        va[kk][2] = ld_pair(Vs + kr0 * LDS + c + 8);
        va[kk][3] = ld_pair(Vs + (kr0 + 8) * LDS + c + 8);
    }
    const u32 kpos[2] = {k0 + kr0, k0 + kr0 + 8};

    float dk_acc[NT_D][4], dv_acc[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.0f;

    // dq work split: BQ / 16 row groups of 16 queries, 4 / (BQ / 16) warps per row group sharing NT_D.
    constexpr int RG = BQ / 16, WPR = 4 / RG, NT_W = NT_D / WPR;
    const u32 dq_row = (warp % RG) * 16, dq_n0 = (warp / RG) * NT_W;

    const u32 n_qt = (len + BQ - 1) / BQ;
    for (u32 h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (u32 qt = k0 / BQ; qt < n_qt; ++qt) {
            const u32 q0 = qt * BQ, qn = min((u32)BQ, len - q0);
            __syncthreads();  // previous tile's smem fully used
            load_tile(Qs, q, start + q0, BQ, qn, qs, (size_t)h * D);
            load_tile(dOs, dout, start + q0, BQ, qn, qs, (size_t)h * D);
            for (u32 r = threadIdx.x; r < BQ; r += NTHREADS) {
                const size_t row = (size_t)(start + q0 + r) * H + h;
                lse_s[r] = r < qn ? lse[row] : INFINITY;
                delta_s[r] = r < qn ? delta[row] : 0.0f;
            }
            __syncthreads();

            float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
            for (int j = 0; j < BQ / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.0f;
                const bf16* qr = Qs + (j * 8 + g) * LDS + 2 * t;
                const bf16* gr = dOs + (j * 8 + g) * LDS + 2 * t;
#pragma unroll
                for (int kk = 0; kk < KS_D; ++kk) {
                    mma(st[j], ka[kk], ld_pair(qr + kk * 16), ld_pair(qr + kk * 16 + 8));
                    mma(dpt[j], va[kk], ld_pair(gr + kk * 16), ld_pair(gr + kk * 16 + 8));
                }
            }
#pragma unroll
            for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const u32 qi = j * 8 + 2 * t + (e & 1), qp = q0 + qi, key = kpos[e >> 1];
                    const bool ok = key <= qp && qp < len && key < len;
                    const float p = ok ? expf(st[j][e] * scale - lse_s[qi]) : 0.0f;
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - delta_s[qi]);
                    dSs[qi * LDSS + kr0 + 8 * (e >> 1)] = __float2bfloat16_rn(dpt[j][e]);
                }

            // dv += P^T dO and dk += dS^T Q, k-steps of 16 queries.
#pragma unroll
            for (int s16 = 0; s16 < BQ / 16; ++s16) {
                const u32 pa[4] = {pack2(st[2 * s16][0], st[2 * s16][1]), pack2(st[2 * s16][2], st[2 * s16][3]),
                                   pack2(st[2 * s16 + 1][0], st[2 * s16 + 1][1]),
                                   pack2(st[2 * s16 + 1][2], st[2 * s16 + 1][3])};
                const u32 sa[4] = {pack2(dpt[2 * s16][0], dpt[2 * s16][1]), pack2(dpt[2 * s16][2], dpt[2 * s16][3]),
                                   pack2(dpt[2 * s16 + 1][0], dpt[2 * s16 + 1][1]),
                                   pack2(dpt[2 * s16 + 1][2], dpt[2 * s16 + 1][3])};
                const bf16* gr = dOs + (s16 * 16 + 2 * t) * LDS + g;
                const bf16* qr = Qs + (s16 * 16 + 2 * t) * LDS + g;
#pragma unroll
                for (int n = 0; n < NT_D; ++n) {
                    mma(dv_acc[n], pa, ld_col_pair(gr + n * 8, LDS), ld_col_pair(gr + 8 * LDS + n * 8, LDS));
                    mma(dk_acc[n], sa, ld_col_pair(qr + n * 8, LDS), ld_col_pair(qr + 8 * LDS + n * 8, LDS));
                }
            }
            __syncthreads();  // dSs complete

            // dq rows dq_row..+16, head-dim n-tiles dq_n0..+NT_W: dS (queries x keys) K (keys x D).
            float dq[NT_W][4];
#pragma unroll
            for (int n = 0; n < NT_W; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
#pragma unroll
            for (int s16 = 0; s16 < BN / 16; ++s16) {
                const u32 c = s16 * 16 + 2 * t;
                const u32 a[4] = {ld_pair(dSs + (dq_row + g) * LDSS + c), ld_pair(dSs + (dq_row + g + 8) * LDSS + c),
                                  ld_pair(dSs + (dq_row + g) * LDSS + c + 8),
                                  ld_pair(dSs + (dq_row + g + 8) * LDSS + c + 8)};
                const bf16* kr = Ks + (s16 * 16 + 2 * t) * LDS + g;
#pragma unroll
                for (int n = 0; n < NT_W; ++n) {
                    const u32 d0 = (dq_n0 + n) * 8;
                    mma(dq[n], a, ld_col_pair(kr + d0, LDS), ld_col_pair(kr + 8 * LDS + d0, LDS));
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const u32 row = dq_row + g + 8 * r;
                if (row < qn) {
                    float* dst = dq_acc + (size_t)(start + q0 + row) * qs + (size_t)h * D;
#pragma unroll
                    for (int n = 0; n < NT_W; ++n) {
                        const u32 d = (dq_n0 + n) * 8 + 2 * t;
                        atomicAdd(dst + d, dq[n][2 * r] * scale);
                        atomicAdd(dst + d + 1, dq[n][2 * r + 1] * scale);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 key = kr0 + 8 * r;
        if (key < kn) {
            const size_t base = (size_t)(start + k0 + key) * ks + (size_t)kvh * D;
#pragma unroll
            for (int n = 0; n < NT_D; ++n) {
                const u32 d = n * 8 + 2 * t;
                *reinterpret_cast<u32*>(dk + base + d) = pack2(dk_acc[n][2 * r] * scale, dk_acc[n][2 * r + 1] * scale);
                *reinterpret_cast<u32*>(dv + base + d) = pack2(dv_acc[n][2 * r], dv_acc[n][2 * r + 1]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Second generation ("fa" kernels, the default): same contract and layouts, faster.
//   - operands reach registers through ldmatrix (x4, .trans for the B operands whose k runs
//     along smem rows) instead of 16-bit loads;
//   - K/V tiles (forward) and Q/dO tiles (backward) are double-buffered with cp.async so that the
//     next tile's global loads overlap this tile's math;
//   - softmax in base 2 (scale·log2 e folded in), causal/padding masks only on the tiles that
//     cross the diagonal or the sequence end;
//   - the backward runs one block per (key tile, query head) rather than per kv head (7× more
//     blocks for Qwen2.5-0.5B's GQA, so the GPU is full), accumulating dk, dv into f32 [N,K,D]
//     (dk_out, dv_out) with vector reductions (red.v2), like dq; `attention_fa_finish` rounds them to bf16.
// ---------------------------------------------------------------------------------------------

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define LDST (BQ + 8)  // row stride of the backward's dS^T tile [key][query]

__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Four 8x8 b16 matrices; lane l gives the row address of matrix l / 8, row l % 8.
__device__ __forceinline__ void ldsm4(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm4t(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm2t(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p)));
}

// 16 bytes global -> shared without passing through registers; zero-fill when !valid.
__device__ __forceinline__ void cp16(bf16* dst, const bf16* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// p[0] += a, p[1] += b in one reduction (8-byte aligned p).
__device__ __forceinline__ void red2(float* p, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
}

// Like load_tile, asynchronously (cp.async); the caller commits and waits.
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* x, u32 row0, u32 rows, u32 valid,
                                                size_t stride, size_t hoff) {
    const u32 chunks = D / 8;
    for (u32 idx = threadIdx.x; idx < rows * chunks; idx += NTHREADS) {
        const u32 r = idx / chunks, c = (idx % chunks) * 8;
        const bool ok = r < valid;
        cp16(tile + r * LDS + c, ok ? x + (size_t)(row0 + r) * stride + hoff + c : x, ok);
    }
}

// A fragment (16x16, rows r0.., k c0..) of a row-major smem tile with row stride ld.
__device__ __forceinline__ void frag_a(u32* a, const bf16* s, u32 ld, u32 r0, u32 c0, u32 lane) {
    ldsm4(a, s + (r0 + lane % 16) * ld + c0 + (lane / 16) * 8);
}
// B fragments of two n-tiles (n0.., n0+8..) at k-step k0 from a tile stored [n][k] (row = n):
// b[0..1] for n-tile n0, b[2..3] for n0 + 8.
__device__ __forceinline__ void frag_b_nk(u32* b, const bf16* s, u32 ld, u32 n0, u32 k0, u32 lane) {
    const u32 mi = lane / 8;
    ldsm4(b, s + (n0 + (mi / 2) * 8 + lane % 8) * ld + k0 + (mi % 2) * 8);
}
// B fragments of two n-tiles from a tile stored [k][n] (row = k), transposed on load.
__device__ __forceinline__ void frag_b_kn(u32* b, const bf16* s, u32 ld, u32 k0, u32 n0, u32 lane) {
    const u32 mi = lane / 8;
    ldsm4t(b, s + (k0 + (mi % 2) * 8 + lane % 8) * ld + n0 + (mi / 2) * 8);
}
// One n-tile's B fragment from a tile stored [k][n].
__device__ __forceinline__ void frag_b_kn1(u32* b, const bf16* s, u32 ld, u32 k0, u32 n0, u32 lane) {
    ldsm2t(b, s + (k0 + ((lane / 8) % 2) * 8 + lane % 8) * ld + n0);
}

// Forward: one block per (query tile of BM rows, query head), warp w owns rows 16w..16w+15.
extern "C" __global__ void __launch_bounds__(NTHREADS)
    attention_fa_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                     const u32* __restrict__ cu, bf16* __restrict__ out, float* __restrict__ lse, u32 n_seqs,
                     u32 H, u32 KH, float scale) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [BM][LDS]
    bf16* Ks = Qs + BM * LDS;                        // [2][BN][LDS]
    bf16* Vs = Ks + 2 * BN * LDS;                    // [2][BN][LDS]

    u32 start, len, q0;
    if (!locate(cu, n_seqs, blockIdx.x, BM, start, len, q0)) return;
    // Within a sequence, the last (longest) query tiles go first: less tail at the end of the grid.
    q0 = ((len + BM - 1) / BM - 1) * BM - q0;
    const u32 h = blockIdx.y, kvh = h / (H / KH);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const u32 qn = min((u32)BM, len - q0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;
    const float sl2 = scale * LOG2E;

    load_tile_async(Qs, q, start + q0, BM, qn, qs, (size_t)h * D);
    load_tile_async(Ks, k, start, BN, min((u32)BN, len), ks, (size_t)kvh * D);
    load_tile_async(Vs, v, start, BN, min((u32)BN, len), ks, (size_t)kvh * D);
    cp_commit();

    u32 qa[KS_D][4];
    float o[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const u32 r0 = warp * 16 + g;
    const u32 qpos[2] = {q0 + r0, q0 + r0 + 8};

    const u32 n_kt = (q0 + qn + BN - 1) / BN;
    for (u32 kt = 0; kt < n_kt; ++kt) {
        const u32 k0 = kt * BN;
        const bf16* Kc = Ks + (kt % 2) * BN * LDS;
        const bf16* Vc = Vs + (kt % 2) * BN * LDS;
        if (kt + 1 < n_kt) {
            const u32 k1 = k0 + BN, kn1 = min((u32)BN, len - k1);
            load_tile_async(Ks + ((kt + 1) % 2) * BN * LDS, k, start + k1, BN, kn1, ks, (size_t)kvh * D);
            load_tile_async(Vs + ((kt + 1) % 2) * BN * LDS, v, start + k1, BN, kn1, ks, (size_t)kvh * D);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < KS_D; ++kk) frag_a(qa[kk], Qs, LDS, warp * 16, kk * 16, lane);
        }

        float s[BN / 8][4];
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS_D; ++kk)
#pragma unroll
            for (int jp = 0; jp < BN / 16; ++jp) {
                u32 b[4];
                frag_b_nk(b, Kc, LDS, jp * 16, kk * 16, lane);
                mma(s[2 * jp], qa[kk], b[0], b[1]);
                mma(s[2 * jp + 1], qa[kk], b[2], b[3]);
            }

        // Scores in log2 units; masks only where the tile crosses the diagonal or an end.
        const bool edge = k0 + BN > q0 || k0 + BN > len || q0 + BM > len;
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float x = s[j][e] * sl2;
                if (edge) {
                    const u32 key = k0 + j * 8 + 2 * t + (e & 1), qp = qpos[e >> 1];
                    if (!(key <= qp && key < len && qp < len)) x = -INFINITY;
                }
                s[j][e] = x;
                mx[e >> 1] = fmaxf(mx[e >> 1], x);
            }
        float alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]);
            alpha[r] = mn == -INFINITY ? 1.0f : exp2f(m[r] - mn);
            mx[r] = mn == -INFINITY ? 0.0f : mn;  // subtrahend: exp2(-inf - 0) = 0 for dead rows
            m[r] = mn;
        }
#pragma unroll
        for (int j = 0; j < BN / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(s[j][e] - mx[e >> 1]);
                s[j][e] = p;
                rs[e >> 1] += p;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + rs[r];  // row sums reduced at the end
#pragma unroll
        for (int n = 0; n < NT_D; ++n) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }

        // O += P V, 16 keys per k-step.
#pragma unroll
        for (int ks16 = 0; ks16 < BN / 16; ++ks16) {
            const u32 a[4] = {pack2(s[2 * ks16][0], s[2 * ks16][1]), pack2(s[2 * ks16][2], s[2 * ks16][3]),
                              pack2(s[2 * ks16 + 1][0], s[2 * ks16 + 1][1]),
                              pack2(s[2 * ks16 + 1][2], s[2 * ks16 + 1][3])};
#pragma unroll
            for (int np = 0; np < NT_D / 2; ++np) {
                u32 b[4];
                frag_b_kn(b, Vc, LDS, ks16 * 16, np * 16, lane);
                mma(o[2 * np], a, b[0], b[1]);
                mma(o[2 * np + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();  // this buffer is refilled by the next iteration's prefetch
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        const u32 row = r0 + 8 * r;
        if (row < qn) {
            const size_t base = (size_t)(start + q0 + row) * qs + (size_t)h * D;
            const float inv = 1.0f / l[r];
#pragma unroll
            for (int n = 0; n < NT_D; ++n)
                *reinterpret_cast<u32*>(out + base + n * 8 + 2 * t) = pack2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
            if (t == 0) lse[(size_t)(start + q0 + row) * H + h] = (m[r] + log2f(l[r])) * LN2;
        }
    }
}

// Backward: one block per (key tile of BN keys, query head h); warp w owns keys 16w..16w+15 and
// keeps their dk, dv (for head h) in registers over the query tiles (BQ rows) at or after the key
// tile. Per query tile:
//   S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//   dv += P^T dO, dk += dS^T Q (A operands straight from the C fragments),
//   dq += dS K via the bf16 dS^T tile in shared memory (ldmatrix.trans gives dS's A fragments),
//   reduced into the f32 dq_acc. At the end dk, dv are reduced into f32 [N,K,D] (the query
//   heads of a group add up there); dq and dk are not yet multiplied by `scale`.
__device__ __forceinline__ void fa_bwd_body(const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                            const bf16* __restrict__ k, const bf16* __restrict__ v,
                                            const float* __restrict__ lse, const float* __restrict__ delta,
                                            const u32* __restrict__ cu, float* dq_acc, float* dk_out, float* dv_out,
                                            u32 n_seqs, u32 H, u32 KH, float scale) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Ks = reinterpret_cast<bf16*>(smem_raw);     // [BN][LDS]
    bf16* Vs = Ks + BN * LDS;                          // [BN][LDS]
    bf16* Qs = Vs + BN * LDS;                          // [2][BQ][LDS]
    bf16* dOs = Qs + 2 * BQ * LDS;                     // [2][BQ][LDS]
    bf16* dSt = dOs + 2 * BQ * LDS;                    // [BN][LDST]  dS^T[key][query]
    float* lse_s = reinterpret_cast<float*>(dSt + BN * LDST);  // [2][BQ], times log2 e
    float* delta_s = lse_s + 2 * BQ;                             // [2][BQ]

    u32 start, len, k0;
    if (!locate(cu, n_seqs, blockIdx.x, BN, start, len, k0)) return;
    const u32 h = blockIdx.y, kvh = h / (H / KH);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const u32 kn = min((u32)BN, len - k0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;
    const float sl2 = scale * LOG2E;

    const u32 qt0 = k0 / BQ, n_qt = (len + BQ - 1) / BQ;
    // Stage `qt` of the query tiles into buffer `b` (async for Q, dO; plain for lse, delta).
    auto stage = [&](u32 qt, u32 b) {
        const u32 q0 = qt * BQ, qn = min((u32)BQ, len - q0);
        load_tile_async(Qs + b * BQ * LDS, q, start + q0, BQ, qn, qs, (size_t)h * D);
        load_tile_async(dOs + b * BQ * LDS, dout, start + q0, BQ, qn, qs, (size_t)h * D);
        cp_commit();
        for (u32 r = threadIdx.x; r < BQ; r += NTHREADS) {
            const size_t row = (size_t)(start + q0 + r) * H + h;
            lse_s[b * BQ + r] = r < qn ? lse[row] * LOG2E : INFINITY;
            delta_s[b * BQ + r] = r < qn ? delta[row] : 0.0f;
        }
    };
    load_tile_async(Ks, k, start + k0, BN, kn, ks, (size_t)kvh * D);
    load_tile_async(Vs, v, start + k0, BN, kn, ks, (size_t)kvh * D);
    stage(qt0, 0);

    const u32 kr0 = warp * 16 + g;
    const u32 kpos[2] = {k0 + kr0, k0 + kr0 + 8};
    float dk_acc[NT_D][4], dv_acc[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.0f;

    // dq work split: BQ / 16 row groups of 16 queries, 4 / (BQ / 16) warps per row group sharing NT_D.
    constexpr int RG = BQ / 16, WPR = 4 / RG, NT_W = NT_D / WPR;
    const u32 dq_row = (warp % RG) * 16, dq_n0 = (warp / RG) * NT_W;

    for (u32 qt = qt0; qt < n_qt; ++qt) {
        const u32 b = (qt - qt0) % 2;
        const u32 q0 = qt * BQ, qn = min((u32)BQ, len - q0);
        if (qt + 1 < n_qt) {
            stage(qt + 1, 1 - b);
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        const bf16* Qc = Qs + b * BQ * LDS;
        const bf16* dOc = dOs + b * BQ * LDS;
        const float* lse_c = lse_s + b * BQ;
        const float* delta_c = delta_s + b * BQ;

        float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
        for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS_D; ++kk) {
            u32 ka[4], va[4];
            frag_a(ka, Ks, LDS, warp * 16, kk * 16, lane);
            frag_a(va, Vs, LDS, warp * 16, kk * 16, lane);
#pragma unroll
            for (int jp = 0; jp < BQ / 16; ++jp) {
                u32 bq[4], bo[4];
                frag_b_nk(bq, Qc, LDS, jp * 16, kk * 16, lane);
                frag_b_nk(bo, dOc, LDS, jp * 16, kk * 16, lane);
                mma(st[2 * jp], ka, bq[0], bq[1]);
                mma(st[2 * jp + 1], ka, bq[2], bq[3]);
                mma(dpt[2 * jp], va, bo[0], bo[1]);
                mma(dpt[2 * jp + 1], va, bo[2], bo[3]);
            }
        }
        const bool edge = q0 < k0 + BN || q0 + BQ > len || k0 + BN > len;
#pragma unroll
        for (int j = 0; j < BQ / 8; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const u32 qi = j * 8 + 2 * t + (e & 1);
                float p = exp2f(st[j][e] * sl2 - lse_c[qi]);
                if (edge) {
                    const u32 qp = q0 + qi, key = kpos[e >> 1];
                    if (!(key <= qp && qp < len && key < len)) p = 0.0f;
                }
                st[j][e] = p;
                dpt[j][e] = p * (dpt[j][e] - delta_c[qi]);
            }
#pragma unroll
            for (int r = 0; r < 2; ++r)
                *reinterpret_cast<u32*>(dSt + (kr0 + 8 * r) * LDST + j * 8 + 2 * t) =
                    pack2(dpt[j][2 * r], dpt[j][2 * r + 1]);
        }

        // dv += P^T dO and dk += dS^T Q, k-steps of 16 queries.
#pragma unroll
        for (int s16 = 0; s16 < BQ / 16; ++s16) {
            const u32 pa[4] = {pack2(st[2 * s16][0], st[2 * s16][1]), pack2(st[2 * s16][2], st[2 * s16][3]),
                               pack2(st[2 * s16 + 1][0], st[2 * s16 + 1][1]),
                               pack2(st[2 * s16 + 1][2], st[2 * s16 + 1][3])};
            const u32 sa[4] = {pack2(dpt[2 * s16][0], dpt[2 * s16][1]), pack2(dpt[2 * s16][2], dpt[2 * s16][3]),
                               pack2(dpt[2 * s16 + 1][0], dpt[2 * s16 + 1][1]),
                               pack2(dpt[2 * s16 + 1][2], dpt[2 * s16 + 1][3])};
#pragma unroll
            for (int np = 0; np < NT_D / 2; ++np) {
                u32 bo[4], bq[4];
                frag_b_kn(bo, dOc, LDS, s16 * 16, np * 16, lane);
                frag_b_kn(bq, Qc, LDS, s16 * 16, np * 16, lane);
                mma(dv_acc[2 * np], pa, bo[0], bo[1]);
                mma(dv_acc[2 * np + 1], pa, bo[2], bo[3]);
                mma(dk_acc[2 * np], sa, bq[0], bq[1]);
                mma(dk_acc[2 * np + 1], sa, bq[2], bq[3]);
            }
        }
        __syncthreads();  // dS^T complete

        // dq rows dq_row..+16, head-dim n-tiles dq_n0..+NT_W: dS (queries x keys) K (keys x D).
        float dq[NT_W][4];
#pragma unroll
        for (int n = 0; n < NT_W; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
#pragma unroll
        for (int s16 = 0; s16 < BN / 16; ++s16) {
            // A fragment of dS rows dq_row.., keys s16*16.. from the transposed tile.
            u32 a[4];
            {
                const u32 mi = lane / 8;
                ldsm4t(a, dSt + (s16 * 16 + (mi / 2) * 8 + lane % 8) * LDST + dq_row + (mi % 2) * 8);
            }
#pragma unroll
            for (int n = 0; n < NT_W; n += 2) {
                const u32 d0 = (dq_n0 + n) * 8;
                if (n + 1 < NT_W) {
                    u32 bk[4];
                    frag_b_kn(bk, Ks, LDS, s16 * 16, d0, lane);
                    mma(dq[n], a, bk[0], bk[1]);
                    mma(dq[n + 1], a, bk[2], bk[3]);
                } else {
                    u32 bk[2];
                    frag_b_kn1(bk, Ks, LDS, s16 * 16, d0, lane);
                    mma(dq[n], a, bk[0], bk[1]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const u32 row = dq_row + g + 8 * r;
            if (row < qn) {
                float* dst = dq_acc + (size_t)(start + q0 + row) * qs + (size_t)h * D;
#pragma unroll
                for (int n = 0; n < NT_W; ++n) red2(dst + (dq_n0 + n) * 8 + 2 * t, dq[n][2 * r], dq[n][2 * r + 1]);
            }
        }
        __syncthreads();  // dS^T and this buffer are reused by the next tile
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 key = kr0 + 8 * r;
        if (key < kn) {
            const size_t base = (size_t)(start + k0 + key) * ks + (size_t)kvh * D;
#pragma unroll
            for (int n = 0; n < NT_D; ++n) {
                const u32 d = n * 8 + 2 * t;
                red2(dk_out + base + d, dk_acc[n][2 * r], dk_acc[n][2 * r + 1]);
                red2(dv_out + base + d, dv_acc[n][2 * r], dv_acc[n][2 * r + 1]);
            }
        }
    }
}

// The backward as launched: registers for 2 blocks of 4 warps per SM (no spills at D = 64; used
// above D = 64), or, `attention_fa_bwd_occ3`, capped for 3 blocks per SM (88 bytes of spills at
// D = 64, yet 4% faster there on the H200: more warps hide the latencies; used up to D = 64).
#define FA_BWD_ARGS                                                                                          \
    const bf16 *__restrict__ dout, const bf16 *__restrict__ q, const bf16 *__restrict__ k,                  \
        const bf16 *__restrict__ v, const float *__restrict__ lse, const float *__restrict__ delta,          \
        const u32 *__restrict__ cu, float *dq_acc, float *dk_out, float *dv_out, u32 n_seqs, u32 H, u32 KH, \
        float scale
extern "C" __global__ void __launch_bounds__(NTHREADS) attention_fa_bwd(FA_BWD_ARGS) {
    fa_bwd_body(dout, q, k, v, lse, delta, cu, dq_acc, dk_out, dv_out, n_seqs, H, KH, scale);
}
extern "C" __global__ void __launch_bounds__(NTHREADS, 3) attention_fa_bwd_occ3(FA_BWD_ARGS) {
    fa_bwd_body(dout, q, k, v, lse, delta, cu, dq_acc, dk_out, dv_out, n_seqs, H, KH, scale);
}

// dst = bf16(src · mul), n a multiple of 8 (rows of D, D a multiple of 16).
extern "C" __global__ void attention_fa_finish(const float* __restrict__ src, bf16* __restrict__ dst, u64 n,
                                               float mul) {
    for_each_8(
        n,
        [&](size_t i) {
            float x[8];
            ld8(src, i, x);
#pragma unroll
            for (int e = 0; e < 8; ++e) x[e] *= mul;
            st8(dst, i, x);
        },
        [&](size_t i) { dst[i] = __float2bfloat16_rn(src[i] * mul); });
}
