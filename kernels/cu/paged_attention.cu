// Paged decode attention (one query token per sequence), split-K ("flash decoding").
//
// Compile-time: HEAD_DIM (D), GROUP (= H / K query heads per kv head), PART (tokens per partition),
// WIDE (0/1: twice the lanes per token, half the registers), UNROLL (tokens per lane group per
// iteration). Grid (partitions, K, S); block NWARPS warps. One thread block handles the GROUP query
// heads that share kv head `kh` of sequence `s` over one partition of its context, so each K/V row
// is read once for all of them (GQA).
//
// A warp works on TPW × UNROLL tokens at once: LPT lanes per token (a power of two), each lane
// holding EPL consecutive head-dim elements (8 = one 16-byte bf16 load when D is a multiple of 8).
// So for D = 64 a warp reads 4 K rows and 4 V rows per iteration and unroll step with vectorised
// loads, and the q·k dot of each query head needs only log2(LPT) shuffles. UNROLL > 1 issues the
// loads of several tokens before using any, so more bytes are in flight per warp (decode attention
// is bound by memory latency at small contexts). Each lane group keeps an online softmax (max m,
// sum l, weighted values acc) per query head; groups are merged with shuffles, warps in shared
// memory. The per-lane state is GROUP × EPL values: WIDE halves EPL (8-byte loads) so that a large
// group (Qwen2.5's 7) leaves room for more resident blocks.
//
// QSMEM keeps the pre-scaled query rows in shared memory instead of GROUP × EPL registers per
// lane, and MINB asks the compiler for at least that many resident blocks per SM (a register
// cap): together they trade shared-memory reads for occupancy when a large group's registers
// limit the resident blocks (Qwen2.5's group 7 at D 64 fits 3 blocks of 4 warps per SM otherwise).
//
// CHUNKED replaces the per-token online softmax by tiles of TILE tokens: one thread per token
// computes its scores for all GROUP heads (K row read once, query rows from shared memory) into
// shared memory; one warp per head takes the tile's max, turns the scores into weights and updates
// the running max and sum, so the accumulators are rescaled once per tile instead of once per
// token; then lane groups accumulate weight × V as above. All of a tile's K loads are in flight
// together.
//
// With one partition the block writes the output; otherwise it writes (m, l, acc) per
// (s, h, partition) to f32 scratch and paged_attention_combine_* merges the partitions, so one
// long sequence is spread over many SMs instead of serialising on one, and a batch of short ones
// fills more SMs.
//
// MMA selects the tensor-core variant of paged_attention_mma.cu (bf16 only; compiled after this
// file, with the work split, result store and combine kernel below) instead of these kernels.
//
// The number of partitions comes from a host-side bound on the context length: nothing here needs
// the host to read device data, so a decode step can be captured in a CUDA graph.

#ifndef HEAD_DIM
#define HEAD_DIM 64
#endif
#ifndef GROUP
#define GROUP 1
#endif
#ifndef PART
#define PART 512
#endif
#ifndef WIDE
#define WIDE 0
#endif
#ifndef UNROLL
#define UNROLL 1
#endif
#ifndef QSMEM
#define QSMEM 0
#endif
#ifndef MINB
#define MINB 1
#endif
#ifndef CHUNKED
#define CHUNKED 0
#endif
#ifndef MMA
#define MMA 0
#endif
#define TILE 64  // tokens per tile of the chunked variant
#define NWARPS 4
#define VEC (WIDE ? 4 : 8)                                       // elements per load
#define CHUNKS ((HEAD_DIM + VEC - 1) / VEC)                      // VEC-element chunks of a row
#define LPT (CHUNKS <= 1 ? 1 : CHUNKS <= 2 ? 2 : CHUNKS <= 4 ? 4 : CHUNKS <= 8 ? 8 : CHUNKS <= 16 ? 16 : 32)
#define TPW (32 / LPT)                                           // tokens per warp per unroll step
#define EPL (((HEAD_DIM + LPT * VEC - 1) / (LPT * VEC)) * VEC)   // head-dim elements per lane
#define ROW_PAD (LPT * EPL)                                      // >= HEAD_DIM

// 4 consecutive elements starting at element i (i a multiple of 4): one 8-byte access for bf16.
__device__ __forceinline__ void pa_ld4(const float* p, size_t i, float* v) {
    const float4 a = *reinterpret_cast<const float4*>(p + i);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
}
__device__ __forceinline__ void pa_ld4(const __nv_bfloat16* p, size_t i, float* v) {
    const uint2 u = *reinterpret_cast<const uint2*>(p + i);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
    const float2 a = __bfloat1622float2(h[0]), b = __bfloat1622float2(h[1]);
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}

// EPL elements of a row starting at element `first` of the head dim (zeros past HEAD_DIM).
template <typename T>
__device__ __forceinline__ void load_slice(const T* __restrict__ p, size_t row, int first, float* v) {
#pragma unroll
    for (int c = 0; c < EPL; c += VEC) {
        const int i = first + c;
#if HEAD_DIM % VEC == 0
        if (i + VEC <= HEAD_DIM) {
#if WIDE
            pa_ld4(p, row + i, v + c);
#else
            ld8(p, row + i, v + c);
#endif
            continue;
        }
#endif
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[c + e] = i + e < HEAD_DIM ? ld(p, row + i + e) : 0.0f;
    }
}

// The work of one thread block: kv head `kh` of sequence `s`, tokens [start, end) of partition
// `part` of `nparts` (grid (partitions, K, S)).
struct PagedWork {
    u32 part, kh, s, nparts, start, end;
    const u32* table;  // the sequence's block-table row
};
__device__ __forceinline__ PagedWork paged_work(const u32* __restrict__ tables, const u32* __restrict__ lens,
                                                u32 max_blocks) {
    PagedWork w;
    w.part = blockIdx.x;
    w.kh = blockIdx.y;
    w.s = blockIdx.z;
    w.nparts = gridDim.x;
    w.start = w.part * PART;
    w.end = max(w.start, min(lens[w.s], w.start + PART));
    w.table = tables + (size_t)w.s * max_blocks;
    return w;
}

// Element offset of the K/V row of token `pos` (kv head kh) in the caches.
__device__ __forceinline__ size_t kv_row(const PagedWork& w, u32 pos, u32 block_size, u32 kv_heads) {
    const size_t slot = (size_t)w.table[pos / block_size] * block_size + pos % block_size;
    return (slot * kv_heads + w.kh) * HEAD_DIM;
}

// Element i of query head h's result from the block's max mm (natural-log units), sum ll and
// unnormalised accumulator a: the output itself with one partition; else the partition's a (and,
// at i == 0, mm and ll) for paged_attention_combine_*.
template <typename T>
__device__ __forceinline__ void store_result(T* out, float* part_ml, float* part_acc, const PagedWork& w, u32 heads,
                                             u32 h, u32 i, float mm, float ll, float a) {
    if (w.nparts == 1) {
        st(out, ((size_t)w.s * heads + h) * HEAD_DIM + i, ll > 0.0f ? a / ll : 0.0f);
    } else {
        const size_t sp = ((size_t)w.s * heads + h) * w.nparts + w.part;
        part_acc[sp * HEAD_DIM + i] = a;
        if (i == 0) {
            part_ml[2 * sp] = mm;
            part_ml[2 * sp + 1] = ll;
        }
    }
}

#if !MMA
template <typename T>
__device__ void paged_attention_online(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                     const u32* __restrict__ tables, const u32* __restrict__ lens,
                                     T* __restrict__ out, float* __restrict__ part_ml, float* __restrict__ part_acc,
                                     u32 heads, u32 kv_heads, u32 max_blocks, u32 block_size, float scale) {
    const PagedWork w = paged_work(tables, lens, max_blocks);
    const u32 kh = w.kh, s = w.s, start = w.start, end = w.end;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % LPT;  // which slice of the head dim
    const int tok = lane / LPT;  // which of the warp's TPW tokens
    const int first = sub * EPL;

#if QSMEM
    // The GROUP query rows, pre-scaled, zero past HEAD_DIM: lane slices read them in the loop.
    __shared__ __align__(16) float sm_q[GROUP][ROW_PAD];
    for (u32 t = threadIdx.x; t < GROUP * ROW_PAD; t += blockDim.x) {
        const u32 g = t / ROW_PAD, i = t % ROW_PAD;
        sm_q[g][i] = i < HEAD_DIM ? ld(q, ((size_t)s * heads + kh * GROUP + g) * HEAD_DIM + i) * scale : 0.0f;
    }
    __syncthreads();
#define QR(g, e) sm_q[g][first + (e)]
#else
    // This lane's slice of the GROUP query rows, pre-scaled.
    float qr[GROUP][EPL];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        const size_t base = ((size_t)s * heads + kh * GROUP + g) * HEAD_DIM;
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
            const int i = first + e;
            qr[g][e] = i < HEAD_DIM ? ld(q, base + i) * scale : 0.0f;
        }
    }
#define QR(g, e) qr[g][e]
#endif
    float m[GROUP], l[GROUP], acc[GROUP][EPL];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = 0.0f;
    }

    // Whole warps iterate together (the dot products shuffle across lanes).
    for (u32 base = start + warp * (TPW * UNROLL); base < end; base += NWARPS * TPW * UNROLL) {
        float kr[UNROLL][EPL], vr[UNROLL][EPL];
        bool valid[UNROLL];
        // Issue every load of the UNROLL tokens before using any.
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const u32 pos = base + u * TPW + tok;
            valid[u] = pos < end;
            if (valid[u]) {
                const size_t row = kv_row(w, pos, block_size, kv_heads);
                load_slice(kc, row, first, kr[u]);
                load_slice(vc, row, first, vr[u]);
            } else {
#pragma unroll
                for (int e = 0; e < EPL; ++e) kr[u][e] = vr[u][e] = 0.0f;
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
#pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < EPL; ++e) dot += QR(g, e) * kr[u][e];
#pragma unroll
                for (int o = LPT / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
                if (valid[u]) {
                    const float m_new = fmaxf(m[g], dot);
                    const float corr = expf(m[g] - m_new);  // 0 on the first token (m = -inf)
                    const float p = expf(dot - m_new);
                    l[g] = l[g] * corr + p;
#pragma unroll
                    for (int e = 0; e < EPL; ++e) acc[g][e] = acc[g][e] * corr + p * vr[u][e];
                    m[g] = m_new;
                }
            }
        }
    }

    // Merge the warp's TPW token groups (lanes with the same slice).
#pragma unroll
    for (int o = LPT; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m[g], o);
            const float l2 = __shfl_xor_sync(0xffffffffu, l[g], o);
            const float mm = fmaxf(m[g], m2);
            const float c1 = mm == -INFINITY ? 0.0f : expf(m[g] - mm);
            const float c2 = mm == -INFINITY ? 0.0f : expf(m2 - mm);
            l[g] = l[g] * c1 + l2 * c2;
#pragma unroll
            for (int e = 0; e < EPL; ++e) {
                const float a2 = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
                acc[g][e] = acc[g][e] * c1 + a2 * c2;
            }
            m[g] = mm;
        }
    }

    // Merge the warps: lanes of token group 0 publish (m, l, acc) per query head.
    __shared__ float sm_m[NWARPS][GROUP], sm_l[NWARPS][GROUP];
    __shared__ float sm_acc[NWARPS][GROUP][ROW_PAD];
    if (tok == 0) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            if (sub == 0) {
                sm_m[warp][g] = m[g];
                sm_l[warp][g] = l[g];
            }
#pragma unroll
            for (int e = 0; e < EPL; ++e) sm_acc[warp][g][first + e] = acc[g][e];
        }
    }
    __syncthreads();
    for (u32 t = threadIdx.x; t < GROUP * HEAD_DIM; t += blockDim.x) {
        const u32 g = t / HEAD_DIM, i = t % HEAD_DIM;
        float mm = -INFINITY;
        for (int v = 0; v < NWARPS; ++v) mm = fmaxf(mm, sm_m[v][g]);
        float ll = 0.0f, a = 0.0f;
        if (mm != -INFINITY) {
            for (int v = 0; v < NWARPS; ++v) {
                const float c = expf(sm_m[v][g] - mm);
                ll += sm_l[v][g] * c;
                a += sm_acc[v][g][i] * c;
            }
        }
        store_result(out, part_ml, part_acc, w, heads, kh * GROUP + g, i, mm, ll, a);
    }
}

// The CHUNKED variant (see the top of the file); same arguments and outputs.
template <typename T>
__device__ void paged_attention_chunked(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                        const u32* __restrict__ tables, const u32* __restrict__ lens,
                                        T* __restrict__ out, float* __restrict__ part_ml,
                                        float* __restrict__ part_acc, u32 heads, u32 kv_heads, u32 max_blocks,
                                        u32 block_size, float scale) {
    const PagedWork w = paged_work(tables, lens, max_blocks);
    const u32 kh = w.kh, s = w.s, start = w.start, end = w.end;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % LPT;  // which slice of the head dim (value phase)
    const int tok = lane / LPT;  // which of the warp's TPW tokens (value phase)
    const int first = sub * EPL;

    __shared__ __align__(16) float sm_q[GROUP][HEAD_DIM];  // pre-scaled query rows
    __shared__ float sm_p[GROUP][TILE];                     // the tile's scores, then weights
    __shared__ size_t sm_row[TILE];                         // the tile's K/V row offsets
    __shared__ float sm_mx[GROUP], sm_sum[GROUP], sm_corr[GROUP];
    for (u32 t = threadIdx.x; t < GROUP * HEAD_DIM; t += blockDim.x) {
        const u32 g = t / HEAD_DIM, i = t % HEAD_DIM;
        sm_q[g][i] = ld(q, ((size_t)s * heads + kh * GROUP + g) * HEAD_DIM + i) * scale;
    }
    if (threadIdx.x < GROUP) {
        sm_mx[threadIdx.x] = -INFINITY;
        sm_sum[threadIdx.x] = 0.0f;
    }
    float acc[GROUP][EPL];
#pragma unroll
    for (int g = 0; g < GROUP; ++g)
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = 0.0f;
    __syncthreads();

    for (u32 t0 = start; t0 < end; t0 += TILE) {
        const u32 n = min((u32)TILE, end - t0);
        // 1. One thread per token: its row offset and its scores for every head.
        if (threadIdx.x < n) {
            const size_t row = kv_row(w, t0 + threadIdx.x, block_size, kv_heads);
            sm_row[threadIdx.x] = row;
            float dot[GROUP];
#pragma unroll
            for (int g = 0; g < GROUP; ++g) dot[g] = 0.0f;
#pragma unroll
            for (int c = 0; c < HEAD_DIM; c += 8) {
                float kr[8];
#if HEAD_DIM % 8 == 0
                ld8(kc, row + c, kr);
#else
#pragma unroll
                for (int e = 0; e < 8; ++e) kr[e] = c + e < HEAD_DIM ? ld(kc, row + c + e) : 0.0f;
#endif
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    if (c + e < HEAD_DIM) {
#pragma unroll
                        for (int g = 0; g < GROUP; ++g) dot[g] += sm_q[g][c + e] * kr[e];
                    }
                }
            }
#pragma unroll
            for (int g = 0; g < GROUP; ++g) sm_p[g][threadIdx.x] = dot[g];
        }
        __syncthreads();
        // 2. One warp per head: the tile's max, weights exp(score - new max), the running sum.
        for (int g = warp; g < GROUP; g += NWARPS) {
            const bool in0 = (u32)lane < n, in1 = (u32)lane + 32 < n;
            const float x0 = in0 ? sm_p[g][lane] : -INFINITY;
            const float x1 = in1 ? sm_p[g][lane + 32] : -INFINITY;
            float mt = fmaxf(x0, x1);
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
            const float m_old = sm_mx[g];
            const float m_new = fmaxf(m_old, mt);
            const float p0 = in0 ? expf(x0 - m_new) : 0.0f;
            const float p1 = in1 ? expf(x1 - m_new) : 0.0f;
            if (in0) sm_p[g][lane] = p0;
            if (in1) sm_p[g][lane + 32] = p1;
            float lt = p0 + p1;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) lt += __shfl_xor_sync(0xffffffffu, lt, o);
            if (lane == 0) {
                const float corr = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
                sm_corr[g] = corr;
                sm_sum[g] = sm_sum[g] * corr + lt;
                sm_mx[g] = m_new;
            }
        }
        __syncthreads();
        // 3. Rescale once per tile, then lane groups add weight × V over the tile's tokens.
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            const float c = sm_corr[g];
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] *= c;
        }
        for (u32 j = warp * TPW + tok; j < n; j += NWARPS * TPW) {
            float vr[EPL];
            load_slice(vc, sm_row[j], first, vr);
#pragma unroll
            for (int g = 0; g < GROUP; ++g) {
                const float p = sm_p[g][j];
#pragma unroll
                for (int e = 0; e < EPL; ++e) acc[g][e] += p * vr[e];
            }
        }
        __syncthreads();  // the next tile overwrites sm_p, sm_row and sm_corr
    }

    // Sum the warp's TPW token groups (lanes with the same slice), then the warps.
#pragma unroll
    for (int o = LPT; o < 32; o <<= 1)
#pragma unroll
        for (int g = 0; g < GROUP; ++g)
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    __shared__ float sm_acc[NWARPS][GROUP][ROW_PAD];
    if (tok == 0) {
#pragma unroll
        for (int g = 0; g < GROUP; ++g)
#pragma unroll
            for (int e = 0; e < EPL; ++e) sm_acc[warp][g][first + e] = acc[g][e];
    }
    __syncthreads();
    for (u32 t = threadIdx.x; t < GROUP * HEAD_DIM; t += blockDim.x) {
        const u32 g = t / HEAD_DIM, i = t % HEAD_DIM;
        float a = 0.0f;
        for (int v = 0; v < NWARPS; ++v) a += sm_acc[v][g][i];
        const float mm = sm_mx[g], ll = sm_sum[g];
        store_result(out, part_ml, part_acc, w, heads, kh * GROUP + g, i, mm, ll, a);
    }
}

template <typename T>
__device__ __forceinline__ void paged_attention_impl(const T* q, const T* kc, const T* vc, const u32* tables,
                                                     const u32* lens, T* out, float* part_ml, float* part_acc,
                                                     u32 heads, u32 kv_heads, u32 max_blocks, u32 block_size,
                                                     float scale) {
#if CHUNKED
    paged_attention_chunked(q, kc, vc, tables, lens, out, part_ml, part_acc, heads, kv_heads, max_blocks,
                            block_size, scale);
#else
    paged_attention_online(q, kc, vc, tables, lens, out, part_ml, part_acc, heads, kv_heads, max_blocks,
                           block_size, scale);
#endif
}
#endif  // !MMA

// Merges the partitions of one (sequence, query head): grid (H, S), HEAD_DIM threads (rounded up
// to a warp multiple).
template <typename T>
__device__ void paged_attention_combine_impl(const float* __restrict__ part_ml, const float* __restrict__ part_acc,
                                             T* __restrict__ out, u32 heads, u32 nparts) {
    const u32 h = blockIdx.x, s = blockIdx.y, i = threadIdx.x;
    if (i >= HEAD_DIM) return;
    const size_t base = ((size_t)s * heads + h) * nparts;
    float mm = -INFINITY;
    for (u32 p = 0; p < nparts; ++p) mm = fmaxf(mm, part_ml[2 * (base + p)]);
    float ll = 0.0f, a = 0.0f;
    if (mm != -INFINITY) {
        for (u32 p = 0; p < nparts; ++p) {
            const float pm = part_ml[2 * (base + p)];
            if (pm == -INFINITY) continue;  // partition past the end of this context
            const float c = expf(pm - mm);
            ll += part_ml[2 * (base + p) + 1] * c;
            a += part_acc[(base + p) * HEAD_DIM + i] * c;
        }
    }
    st(out, ((size_t)s * heads + h) * HEAD_DIM + i, ll > 0.0f ? a / ll : 0.0f);
}

#if !MMA
extern "C" __global__ void __launch_bounds__(NWARPS * 32, MINB)
    paged_attention_f32(const float* q, const float* kc, const float* vc, const u32* tables, const u32* lens,
                        float* out, float* part_ml, float* part_acc, u32 heads, u32 kv_heads, u32 max_blocks,
                        u32 block_size, float scale) { pdl_entry();
    paged_attention_impl(q, kc, vc, tables, lens, out, part_ml, part_acc, heads, kv_heads, max_blocks, block_size,
                         scale);
}
extern "C" __global__ void __launch_bounds__(NWARPS * 32, MINB)
    paged_attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kc, const __nv_bfloat16* vc, const u32* tables,
                         const u32* lens, __nv_bfloat16* out, float* part_ml, float* part_acc, u32 heads,
                         u32 kv_heads, u32 max_blocks, u32 block_size, float scale) { pdl_entry();
    paged_attention_impl(q, kc, vc, tables, lens, out, part_ml, part_acc, heads, kv_heads, max_blocks, block_size,
                         scale);
}
#endif  // !MMA
extern "C" __global__ void paged_attention_combine_f32(const float* part_ml, const float* part_acc, float* out,
                                                       u32 heads, u32 nparts) { pdl_entry();
    paged_attention_combine_impl(part_ml, part_acc, out, heads, nparts);
}
extern "C" __global__ void paged_attention_combine_bf16(const float* part_ml, const float* part_acc,
                                                        __nv_bfloat16* out, u32 heads, u32 nparts) { pdl_entry();
    paged_attention_combine_impl(part_ml, part_acc, out, heads, nparts);
}
