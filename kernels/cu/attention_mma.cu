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
