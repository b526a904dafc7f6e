// Rotary embedding, HF `rotate_half` layout: for i < D/2, a = pos * theta^(-2i/D) (f32),
//   y[i] = x[i] cos a - x[i+D/2] sin a,   y[i+D/2] = x[i+D/2] cos a + x[i] sin a.
// The backward is the rotation by -a (sign = -1).
// cos / sin of the angle as `rope_cos_sin` (common.cuh) computes them for every RoPE kernel.
// One block per TPB consecutive tokens (grid-stride): their D/2 cos/sin pairs are computed into
// shared memory by all threads at once (the f64 evaluation is the slow part, so it is spread over
// the block rather than done by D/2 threads while the rest wait) and applied to every head;
// threads run over (token, head, i), coalesced; 8 consecutive i per thread when D/2 is a
// multiple of 8.
//
// rope_bias: the same rotation of (x + bias) for f32 x (the q / k GEMM's unrounded output) and a
// bias [heads * D] in the output dtype: the bias add of `bias_cast` and the rotation in one pass,
// rounded once (bias_cast then rope round twice and pass the tensor through memory twice).

#define TPB 8

// Element i of a head's row of x, plus its bias when there is one (b = null: no bias).
template <typename TI, typename TB>
__device__ __forceinline__ void ld8_biased(const TI* x, const TB* b, size_t xi, size_t bi, float* v) {
    ld8(x, xi, v);
    if (b) {
        float bv[8];
        ld8(b, bi, bv);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] += bv[k];
    }
}

template <typename TI, typename TB, typename TO>
__device__ void rope_impl(const TI* __restrict__ x, const TB* __restrict__ bias, const u32* __restrict__ pos,
                          TO* __restrict__ y, u32 n, u32 heads, u32 d, float theta, float sign) {
    extern __shared__ float tab[];  // [TPB][D]: cos in [0, D/2), signed sin in [D/2, D)
    const u32 half = d / 2;
    for (u32 tok0 = blockIdx.x * TPB; tok0 < n; tok0 += gridDim.x * TPB) {
        const u32 nt = min((u32)TPB, n - tok0);
        __syncthreads();  // the previous tokens' table is no longer read
        for (u32 idx = threadIdx.x; idx < nt * half; idx += blockDim.x) {
            const u32 tk = idx / half, i = idx % half;
            float c, s;
            rope_cos_sin(pos[tok0 + tk], i, d, theta, &c, &s);
            tab[tk * d + i] = c;
            tab[tk * d + half + i] = sign * s;
        }
        __syncthreads();
        if (half % 8 == 0) {
            // 8 consecutive pairs per thread: 16-byte accesses (bf16), same arithmetic.
            const u32 per_tok = heads * (half / 8);
            for (u32 idx = threadIdx.x; idx < nt * per_tok; idx += blockDim.x) {
                const u32 tk = idx / per_tok, rem = idx % per_tok, hh = rem / (half / 8), i = (rem % (half / 8)) * 8;
                const size_t base = ((size_t)(tok0 + tk) * heads + hh) * d;
                float x1[8], x2[8], y1[8], y2[8];
                ld8_biased(x, bias, base + i, (size_t)hh * d + i, x1);
                ld8_biased(x, bias, base + i + half, (size_t)hh * d + i + half, x2);
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const float c = tab[tk * d + i + k], s = tab[tk * d + half + i + k];
                    y1[k] = x1[k] * c - x2[k] * s;
                    y2[k] = x2[k] * c + x1[k] * s;
                }
                st8(y, base + i, y1);
                st8(y, base + i + half, y2);
            }
            continue;
        }
        const u32 per_tok = heads * half;
        for (u32 idx = threadIdx.x; idx < nt * per_tok; idx += blockDim.x) {
            const u32 tk = idx / per_tok, rem = idx % per_tok, hh = rem / half, i = rem % half;
            const size_t base = ((size_t)(tok0 + tk) * heads + hh) * d;
            const float c = tab[tk * d + i], s = tab[tk * d + half + i];
            float x1 = ld(x, base + i), x2 = ld(x, base + i + half);
            if (bias) {
                x1 += ld(bias, (size_t)hh * d + i);
                x2 += ld(bias, (size_t)hh * d + i + half);
            }
            st(y, base + i, x1 * c - x2 * s);
            st(y, base + i + half, x2 * c + x1 * s);
        }
    }
}

extern "C" __global__ void rope_f32(const float* x, const u32* pos, float* y, u32 n, u32 h, u32 d, float theta, float sign) { pdl_entry();
    rope_impl(x, (const float*)nullptr, pos, y, n, h, d, theta, sign);
}
extern "C" __global__ void rope_bf16(const __nv_bfloat16* x, const u32* pos, __nv_bfloat16* y, u32 n, u32 h, u32 d,
                                     float theta, float sign) { pdl_entry();
    rope_impl(x, (const __nv_bfloat16*)nullptr, pos, y, n, h, d, theta, sign);
}
extern "C" __global__ void rope_bias_f32_f32(const float* x, const float* b, const u32* pos, float* y, u32 n, u32 h,
                                             u32 d, float theta) { pdl_entry();
    rope_impl(x, b, pos, y, n, h, d, theta, 1.0f);
}
extern "C" __global__ void rope_bias_f32_bf16(const float* x, const __nv_bfloat16* b, const u32* pos, __nv_bfloat16* y,
                                              u32 n, u32 h, u32 d, float theta) { pdl_entry();
    rope_impl(x, b, pos, y, n, h, d, theta, 1.0f);
}
