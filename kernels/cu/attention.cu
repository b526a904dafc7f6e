// Causal grouped-query attention over packed variable-length sequences, flash-attention style:
// query and key tiles of BLOCK rows are staged in shared memory (as f32), softmax is computed
// online per query row, and only the per-row log-sum-exp is saved; the backward recomputes the
// probabilities from it. No T x T matrix ever reaches global memory.
//
// Layout: q[N,H,D], k/v[N,K,D], out[N,H,D], lse[N,H] (natural log of sum exp(scale q.k)),
// cu_seqlens[S+1]. Query head h reads kv head h / (H / K).
//
// Compile-time: HEAD_DIM (D) and BLOCK (tile rows, 32 or 64). 128 threads = 8 (ty) x 16 (tx): a
// thread owns BLOCK/8 rows of a tile; score columns tx + 16 j; head-dim columns tx + 16 j.
//
// Blocks are numbered over the tiles of all sequences (tiles start at each sequence's start), so
// the host needs no copy of cu_seqlens: grid.x is an upper bound (ceil(N/BLOCK) + S) and each
// block finds its (sequence, tile) by walking cu_seqlens.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<D>"
#endif
#ifndef BLOCK
#error "compile with -DBLOCK=<32|64>"
#endif

#define D HEAD_DIM
#define RPT (BLOCK / 8)         // tile rows per thread
#define CPT (BLOCK / 16)        // score columns per thread
#define DPT ((D + 15) / 16)     // head-dim columns per thread
#define LD (D + 1)              // padded smem row stride of D-wide tiles (no bank conflicts)
#define PLD (BLOCK + 1)         // padded smem row stride of BLOCK-wide tiles
#define NTHREADS 128

// Finds the sequence and tile of this block. Returns false when the block has no tile.
__device__ __forceinline__ bool locate_tile(const u32* cu, u32 n_seqs, u32 tile, u32& start, u32& len, u32& t0) {
    for (u32 s = 0; s < n_seqs; ++s) {
        const u32 a = cu[s], b = cu[s + 1];
        const u32 l = b > a ? b - a : 0;
        const u32 nt = (l + BLOCK - 1) / BLOCK;
        if (tile < nt) {
            start = a;
            len = l;
            t0 = tile * BLOCK;
            return true;
        }
        tile -= nt;
    }
    return false;
}

// rows [row0, row0 + rows) of x (token stride `stride`, head offset `hoff`) into tile[BLOCK][LD],
// zero-padded past `rows`.
template <typename T>
__device__ __forceinline__ void load_tile(float* tile, const T* x, u32 row0, u32 rows, size_t stride, size_t hoff) {
    for (u32 idx = threadIdx.x; idx < BLOCK * D; idx += NTHREADS) {
        const u32 r = idx / D, d = idx % D;
        tile[r * LD + d] = r < rows ? ld(x, (size_t)(row0 + r) * stride + hoff + d) : 0.0f;
    }
}

template <typename T>
__device__ void attn_fwd_impl(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                              const u32* __restrict__ cu, T* __restrict__ out, float* __restrict__ lse,
                              u32 n_seqs, u32 H, u32 KH, float scale) {
    extern __shared__ float smem[];
    float* Qs = smem;                 // [BLOCK][LD]
    float* Ks = Qs + BLOCK * LD;      // [BLOCK][LD]
    float* Vs = Ks + BLOCK * LD;      // [BLOCK][LD]
    float* Ps = Vs + BLOCK * LD;      // [BLOCK][PLD]

    u32 start, len, q0;
    if (!locate_tile(cu, n_seqs, blockIdx.x, start, len, q0)) return;
    const u32 h = blockIdx.y, kvh = h / (H / KH);
    const u32 tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const u32 qn = min((u32)BLOCK, len - q0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;

    load_tile(Qs, q, start + q0, qn, qs, (size_t)h * D);

    float o[RPT][DPT], m[RPT], l[RPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int dd = 0; dd < DPT; ++dd) o[i][dd] = 0.0f;
    }

    const u32 n_kt = (q0 + qn + BLOCK - 1) / BLOCK;  // causal: keys up to the last query
    for (u32 kt = 0; kt < n_kt; ++kt) {
        const u32 k0 = kt * BLOCK, kn = min((u32)BLOCK, len - k0);
        __syncthreads();  // previous tile's Ks/Vs/Ps fully used (and Qs loaded)
        load_tile(Ks, k, start + k0, kn, ks, (size_t)kvh * D);
        load_tile(Vs, v, start + k0, kn, ks, (size_t)kvh * D);
        __syncthreads();

        float sc[RPT][CPT];
#pragma unroll
        for (int i = 0; i < RPT; ++i)
#pragma unroll
            for (int j = 0; j < CPT; ++j) sc[i][j] = 0.0f;
        for (int d = 0; d < D; ++d) {
            float kv[CPT];
#pragma unroll
            for (int j = 0; j < CPT; ++j) kv[j] = Ks[(tx + 16 * j) * LD + d];
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                const float qv = Qs[(ty * RPT + i) * LD + d];
#pragma unroll
                for (int j = 0; j < CPT; ++j) sc[i][j] += qv * kv[j];
            }
        }

#pragma unroll
        for (int i = 0; i < RPT; ++i) {
            const u32 qpos = q0 + ty * RPT + i;
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < CPT; ++j) {
                const u32 kpos = k0 + tx + 16 * j;
                const bool ok = kpos <= qpos && kpos < len && qpos < len;
                sc[i][j] = ok ? sc[i][j] * scale : -INFINITY;
                mx = fmaxf(mx, sc[i][j]);
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_new = fmaxf(m[i], mx);
            float alpha = 1.0f, rs = 0.0f;
            if (m_new != -INFINITY) {
                alpha = expf(m[i] - m_new);  // 0 when m[i] = -inf
#pragma unroll
                for (int j = 0; j < CPT; ++j) {
                    sc[i][j] = expf(sc[i][j] - m_new);
                    rs += sc[i][j];
                }
            } else {
#pragma unroll
                for (int j = 0; j < CPT; ++j) sc[i][j] = 0.0f;
            }
#pragma unroll
            for (int off = 8; off > 0; off >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, off);
            l[i] = l[i] * alpha + rs;
            m[i] = m_new;
#pragma unroll
            for (int dd = 0; dd < DPT; ++dd) o[i][dd] *= alpha;
#pragma unroll
            for (int j = 0; j < CPT; ++j) Ps[(ty * RPT + i) * PLD + tx + 16 * j] = sc[i][j];
        }
        __syncthreads();

        for (u32 c = 0; c < kn; ++c) {
            float vv[DPT];
#pragma unroll
            for (int dd = 0; dd < DPT; ++dd) {
                const u32 d = tx + 16 * dd;
                vv[dd] = d < D ? Vs[c * LD + d] : 0.0f;
            }
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                const float p = Ps[(ty * RPT + i) * PLD + c];
#pragma unroll
                for (int dd = 0; dd < DPT; ++dd) o[i][dd] += p * vv[dd];
            }
        }
    }

#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        const u32 r = ty * RPT + i;
        if (r < qn) {
            const size_t tok = start + q0 + r;
            const float inv = 1.0f / l[i];
#pragma unroll
            for (int dd = 0; dd < DPT; ++dd) {
                const u32 d = tx + 16 * dd;
                if (d < D) st(out, tok * qs + (size_t)h * D + d, o[i][dd] * inv);
            }
            if (tx == 0) lse[tok * H + h] = m[i] + logf(l[i]);
        }
    }
}

// delta[n, h] = sum_d dout[n,h,d] * out[n,h,d]: one warp per (token, head).
template <typename T>
__device__ void attn_delta_impl(const T* __restrict__ dout, const T* __restrict__ out, float* __restrict__ delta,
                                u32 rows) {
    const u32 warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (warp >= rows) return;
    const size_t base = (size_t)warp * D;
    float acc = 0.0f;
    for (u32 d = lane; d < D; d += 32) acc += ld(dout, base + d) * ld(out, base + d);
    acc = warp_sum(acc);
    if (lane == 0) delta[warp] = acc;
}

// One block per (key tile, kv head): loops over the query heads of its group and the query tiles
// at or after the key tile, accumulating dk, dv in registers (written once, no atomics) and
// adding each tile's dq contribution to the f32 dq_acc with atomics (dq_acc zeroed by the host).
//   P = exp(scale q.k - lse), dP = dout . v, dS = P (dP - delta),
//   dv += P^T dout, dk += scale dS^T q, dq += scale dS k.
template <typename T>
__device__ void attn_bwd_impl(const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
                              const T* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
                              const u32* __restrict__ cu, float* dq_acc, T* __restrict__ dk, T* __restrict__ dv,
                              u32 n_seqs, u32 H, u32 KH, float scale) {
    extern __shared__ float smem[];
    float* Ks = smem;                  // [BLOCK][LD]
    float* Vs = Ks + BLOCK * LD;       // [BLOCK][LD]
    float* Qs = Vs + BLOCK * LD;       // [BLOCK][LD]
    float* dOs = Qs + BLOCK * LD;      // [BLOCK][LD]
    float* Ps = dOs + BLOCK * LD;      // [BLOCK][PLD]  query rows x key cols
    float* dSs = Ps + BLOCK * PLD;     // [BLOCK][PLD]
    float* lse_s = dSs + BLOCK * PLD;  // [BLOCK]
    float* delta_s = lse_s + BLOCK;    // [BLOCK]

    u32 start, len, k0;
    if (!locate_tile(cu, n_seqs, blockIdx.x, start, len, k0)) return;
    const u32 kvh = blockIdx.y, group = H / KH;
    const u32 tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const u32 kn = min((u32)BLOCK, len - k0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;

    load_tile(Ks, k, start + k0, kn, ks, (size_t)kvh * D);
    load_tile(Vs, v, start + k0, kn, ks, (size_t)kvh * D);

    float dk_acc[RPT][DPT], dv_acc[RPT][DPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i)
#pragma unroll
        for (int dd = 0; dd < DPT; ++dd) dk_acc[i][dd] = dv_acc[i][dd] = 0.0f;

    const u32 n_qt = (len + BLOCK - 1) / BLOCK;
    for (u32 h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (u32 qt = k0 / BLOCK; qt < n_qt; ++qt) {
            const u32 q0 = qt * BLOCK, qn = min((u32)BLOCK, len - q0);
            __syncthreads();  // previous tile's smem fully used (and Ks/Vs loaded)
            load_tile(Qs, q, start + q0, qn, qs, (size_t)h * D);
            load_tile(dOs, dout, start + q0, qn, qs, (size_t)h * D);
            for (u32 r = threadIdx.x; r < BLOCK; r += NTHREADS) {
                const size_t row = (size_t)(start + q0 + r) * H + h;
                lse_s[r] = r < qn ? lse[row] : INFINITY;
                delta_s[r] = r < qn ? delta[row] : 0.0f;
            }
            __syncthreads();

            // Scores and dP for query rows ty*RPT+i, key columns tx+16j.
            float p[RPT][CPT], dp[RPT][CPT];
#pragma unroll
            for (int i = 0; i < RPT; ++i)
#pragma unroll
                for (int j = 0; j < CPT; ++j) p[i][j] = dp[i][j] = 0.0f;
            for (int d = 0; d < D; ++d) {
                float kv[CPT], vv[CPT];
#pragma unroll
                for (int j = 0; j < CPT; ++j) {
                    kv[j] = Ks[(tx + 16 * j) * LD + d];
                    vv[j] = Vs[(tx + 16 * j) * LD + d];
                }
#pragma unroll
                for (int i = 0; i < RPT; ++i) {
                    const float qv = Qs[(ty * RPT + i) * LD + d], gv = dOs[(ty * RPT + i) * LD + d];
#pragma unroll
                    for (int j = 0; j < CPT; ++j) {
                        p[i][j] += qv * kv[j];
                        dp[i][j] += gv * vv[j];
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                const u32 r = ty * RPT + i, qpos = q0 + r;
#pragma unroll
                for (int j = 0; j < CPT; ++j) {
                    const u32 c = tx + 16 * j, kpos = k0 + c;
                    const bool ok = kpos <= qpos && kpos < len && qpos < len;
                    const float pr = ok ? expf(p[i][j] * scale - lse_s[r]) : 0.0f;
                    Ps[r * PLD + c] = pr;
                    dSs[r * PLD + c] = pr * (dp[i][j] - delta_s[r]);
                }
            }
            __syncthreads();

            // dv, dk for key rows ty*RPT+i, head-dim columns tx+16dd.
            for (u32 r = 0; r < qn; ++r) {
                float gv[DPT], qv[DPT];
#pragma unroll
                for (int dd = 0; dd < DPT; ++dd) {
                    const u32 d = tx + 16 * dd;
                    gv[dd] = d < D ? dOs[r * LD + d] : 0.0f;
                    qv[dd] = d < D ? Qs[r * LD + d] : 0.0f;
                }
#pragma unroll
                for (int i = 0; i < RPT; ++i) {
                    const float pr = Ps[r * PLD + ty * RPT + i], ds = dSs[r * PLD + ty * RPT + i];
#pragma unroll
                    for (int dd = 0; dd < DPT; ++dd) {
                        dv_acc[i][dd] += pr * gv[dd];
                        dk_acc[i][dd] += ds * qv[dd];
                    }
                }
            }

            // dq for query rows ty*RPT+i, head-dim columns tx+16dd.
            float dq[RPT][DPT];
#pragma unroll
            for (int i = 0; i < RPT; ++i)
#pragma unroll
                for (int dd = 0; dd < DPT; ++dd) dq[i][dd] = 0.0f;
            for (u32 c = 0; c < kn; ++c) {
                float kv[DPT];
#pragma unroll
                for (int dd = 0; dd < DPT; ++dd) {
                    const u32 d = tx + 16 * dd;
                    kv[dd] = d < D ? Ks[c * LD + d] : 0.0f;
                }
#pragma unroll
                for (int i = 0; i < RPT; ++i) {
                    const float ds = dSs[(ty * RPT + i) * PLD + c];
#pragma unroll
                    for (int dd = 0; dd < DPT; ++dd) dq[i][dd] += ds * kv[dd];
                }
            }
#pragma unroll
            for (int i = 0; i < RPT; ++i) {
                const u32 r = ty * RPT + i;
                if (r < qn) {
                    const size_t base = (size_t)(start + q0 + r) * qs + (size_t)h * D;
#pragma unroll
                    for (int dd = 0; dd < DPT; ++dd) {
                        const u32 d = tx + 16 * dd;
                        if (d < D) atomicAdd(dq_acc + base + d, dq[i][dd] * scale);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < RPT; ++i) {
        const u32 r = ty * RPT + i;
        if (r < kn) {
            const size_t base = (size_t)(start + k0 + r) * ks + (size_t)kvh * D;
#pragma unroll
            for (int dd = 0; dd < DPT; ++dd) {
                const u32 d = tx + 16 * dd;
                if (d < D) {
                    st(dk, base + d, dk_acc[i][dd] * scale);
                    st(dv, base + d, dv_acc[i][dd]);
                }
            }
        }
    }
}

#define ATTENTION(S, T)                                                                                          \
    extern "C" __global__ void __launch_bounds__(NTHREADS) attention_fwd_##S(                                     \
        const T* q, const T* k, const T* v, const u32* cu, T* out, float* lse, u32 n_seqs, u32 H, u32 KH,         \
        float scale) { pdl_entry();                                                                              \
        attn_fwd_impl(q, k, v, cu, out, lse, n_seqs, H, KH, scale);                                              \
    }                                                                                                            \
    extern "C" __global__ void attention_delta_##S(const T* dout, const T* out, float* delta, u32 rows) { pdl_entry(); \
        attn_delta_impl(dout, out, delta, rows);                                                                 \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(NTHREADS) attention_bwd_##S(                                     \
        const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta, const u32* cu,   \
        float* dq_acc, T* dk, T* dv, u32 n_seqs, u32 H, u32 KH, float scale) { pdl_entry();                      \
        attn_bwd_impl(dout, q, k, v, lse, delta, cu, dq_acc, dk, dv, n_seqs, H, KH, scale);                      \
    }

ATTENTION(f32, float)
ATTENTION(bf16, __nv_bfloat16)
