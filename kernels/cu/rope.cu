// Rotary embedding, HF `rotate_half` layout: for i < D/2, a = pos * theta^(-2i/D) (f32),
//   y[i] = x[i] cos a - x[i+D/2] sin a,   y[i+D/2] = x[i+D/2] cos a + x[i] sin a.
// The backward is the rotation by -a (sign = -1).
// As HF (and the CPU reference): inv_freq = 1 / theta^(f32(2i) / f32(D)) and a = f32(pos) * inv_freq
// in f32. theta^e and cos/sin(a) are evaluated in f64 and rounded, giving the correctly rounded f32
// values a good libm returns, so the angle does not drift from the reference at large positions.
// One block per token (grid-stride): the D/2 cos/sin pairs are computed once into shared memory
// and applied to every head; threads run over (head, i), coalesced.

template <typename T>
__device__ void rope_impl(const T* __restrict__ x, const u32* __restrict__ pos, T* __restrict__ y,
                          u32 n, u32 heads, u32 d, float theta, float sign) {
    extern __shared__ float tab[];  // [D]: cos in [0, D/2), signed sin in [D/2, D)
    const u32 half = d / 2;
    for (u32 tok = blockIdx.x; tok < n; tok += gridDim.x) {
        __syncthreads();  // the previous token's table is no longer read
        for (u32 i = threadIdx.x; i < half; i += blockDim.x) {
            const float expo = (float)(2 * i) / (float)d;
            const float inv_freq = 1.0f / (float)pow((double)theta, (double)expo);
            const float a = (float)pos[tok] * inv_freq;
            double sd, cd;
            sincos((double)a, &sd, &cd);
            tab[i] = (float)cd;
            tab[half + i] = sign * (float)sd;
        }
        __syncthreads();
        const size_t row = (size_t)tok * heads * d;
        for (u32 idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
            const u32 hh = idx / half, i = idx % half;
            const size_t base = row + (size_t)hh * d;
            const float c = tab[i], s = tab[half + i];
            const float x1 = ld(x, base + i), x2 = ld(x, base + i + half);
            st(y, base + i, x1 * c - x2 * s);
            st(y, base + i + half, x2 * c + x1 * s);
        }
    }
}

extern "C" __global__ void rope_f32(const float* x, const u32* pos, float* y, u32 n, u32 h, u32 d, float theta, float sign) {
    rope_impl(x, pos, y, n, h, d, theta, sign);
}
extern "C" __global__ void rope_bf16(const __nv_bfloat16* x, const u32* pos, __nv_bfloat16* y, u32 n, u32 h, u32 d,
                                     float theta, float sign) {
    rope_impl(x, pos, y, n, h, d, theta, sign);
}
