// Paged decode attention (one query token per sequence), split-K ("flash decoding").
//
// Compile-time: HEAD_DIM (D), GROUP (= H / K query heads per kv head), PART (tokens per partition).
// Grid (partitions, K, S); block NWARPS warps. One thread block handles the GROUP query heads that
// share kv head `kh` of sequence `s` over one partition of its context, so each K/V row is read
// once for all of them (GQA). Warp w takes tokens part_start + w, + NWARPS, ...; lane l holds
// elements l, l + 32, ... of the head dim. Each warp keeps an online softmax (max m, sum l,
// weighted values acc) per query head; the warps are merged in shared memory.
//
// With one partition the block writes the output; otherwise it writes (m, l, acc) per
// (s, h, partition) to f32 scratch and paged_attention_combine_* merges the partitions, so one
// long sequence is spread over many SMs instead of serialising on one.
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
#define NWARPS 4
#define DPL ((HEAD_DIM + 31) / 32)  // head-dim elements per lane

template <typename T>
__device__ void paged_attention_impl(const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc,
                                     const u32* __restrict__ tables, const u32* __restrict__ lens,
                                     T* __restrict__ out, float* __restrict__ part_ml, float* __restrict__ part_acc,
                                     u32 heads, u32 kv_heads, u32 max_blocks, u32 block_size, float scale) {
    const u32 part = blockIdx.x, kh = blockIdx.y, s = blockIdx.z, nparts = gridDim.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 len = lens[s];
    const u32 start = part * PART;
    const u32 end = min(len, start + PART);
    const u32* table = tables + (size_t)s * max_blocks;

    // This lane's slice of the GROUP query rows, pre-scaled.
    float qr[GROUP][DPL];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        const size_t base = ((size_t)s * heads + kh * GROUP + g) * HEAD_DIM;
#pragma unroll
        for (int j = 0; j < DPL; ++j) {
            const int i = lane + 32 * j;
            qr[g][j] = i < HEAD_DIM ? ld(q, base + i) * scale : 0.0f;
        }
    }
    float m[GROUP], l[GROUP], acc[GROUP][DPL];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int j = 0; j < DPL; ++j) acc[g][j] = 0.0f;
    }

    for (u32 pos = start + warp; pos < end; pos += NWARPS) {
        const size_t slot = (size_t)table[pos / block_size] * block_size + pos % block_size;
        const size_t row = (slot * kv_heads + kh) * HEAD_DIM;
        float kr[DPL], vr[DPL];
#pragma unroll
        for (int j = 0; j < DPL; ++j) {
            const int i = lane + 32 * j;
            kr[j] = i < HEAD_DIM ? ld(kc, row + i) : 0.0f;
            vr[j] = i < HEAD_DIM ? ld(vc, row + i) : 0.0f;
        }
#pragma unroll
        for (int g = 0; g < GROUP; ++g) {
            float dot = 0.0f;
#pragma unroll
            for (int j = 0; j < DPL; ++j) dot += qr[g][j] * kr[j];
            const float sc = warp_sum(dot);
            const float m_new = fmaxf(m[g], sc);
            const float corr = expf(m[g] - m_new);  // 0 on the first token (m = -inf)
            const float p = expf(sc - m_new);
            l[g] = l[g] * corr + p;
#pragma unroll
            for (int j = 0; j < DPL; ++j) acc[g][j] = acc[g][j] * corr + p * vr[j];
            m[g] = m_new;
        }
    }

    // Merge the warps: each publishes (m, l, acc) per query head.
    __shared__ float sm_m[NWARPS][GROUP], sm_l[NWARPS][GROUP];
    __shared__ float sm_acc[NWARPS][GROUP][DPL * 32];
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
        if (lane == 0) {
            sm_m[warp][g] = m[g];
            sm_l[warp][g] = l[g];
        }
#pragma unroll
        for (int j = 0; j < DPL; ++j) sm_acc[warp][g][lane + 32 * j] = acc[g][j];
    }
    __syncthreads();
    for (u32 t = threadIdx.x; t < GROUP * HEAD_DIM; t += blockDim.x) {
        const u32 g = t / HEAD_DIM, i = t % HEAD_DIM;
        float mm = -INFINITY;
        for (int w = 0; w < NWARPS; ++w) mm = fmaxf(mm, sm_m[w][g]);
        float ll = 0.0f, a = 0.0f;
        if (mm != -INFINITY) {
            for (int w = 0; w < NWARPS; ++w) {
                const float c = expf(sm_m[w][g] - mm);
                ll += sm_l[w][g] * c;
                a += sm_acc[w][g][i] * c;
            }
        }
        const u32 h = kh * GROUP + g;
        if (nparts == 1) {
            st(out, ((size_t)s * heads + h) * HEAD_DIM + i, ll > 0.0f ? a / ll : 0.0f);
        } else {
            const size_t sp = ((size_t)s * heads + h) * nparts + part;
            part_acc[sp * HEAD_DIM + i] = a;
            if (i == 0) {
                part_ml[2 * sp] = mm;
                part_ml[2 * sp + 1] = ll;
            }
        }
    }
}

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

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
    paged_attention_f32(const float* q, const float* kc, const float* vc, const u32* tables, const u32* lens,
                        float* out, float* part_ml, float* part_acc, u32 heads, u32 kv_heads, u32 max_blocks,
                        u32 block_size, float scale) {
    paged_attention_impl(q, kc, vc, tables, lens, out, part_ml, part_acc, heads, kv_heads, max_blocks, block_size,
                         scale);
}
extern "C" __global__ void __launch_bounds__(NWARPS * 32)
    paged_attention_bf16(const __nv_bfloat16* q, const __nv_bfloat16* kc, const __nv_bfloat16* vc, const u32* tables,
                         const u32* lens, __nv_bfloat16* out, float* part_ml, float* part_acc, u32 heads,
                         u32 kv_heads, u32 max_blocks, u32 block_size, float scale) {
    paged_attention_impl(q, kc, vc, tables, lens, out, part_ml, part_acc, heads, kv_heads, max_blocks, block_size,
                         scale);
}
extern "C" __global__ void paged_attention_combine_f32(const float* part_ml, const float* part_acc, float* out,
                                                       u32 heads, u32 nparts) {
    paged_attention_combine_impl(part_ml, part_acc, out, heads, nparts);
}
extern "C" __global__ void paged_attention_combine_bf16(const float* part_ml, const float* part_acc,
                                                        __nv_bfloat16* out, u32 heads, u32 nparts) {
    paged_attention_combine_impl(part_ml, part_acc, out, heads, nparts);
}
