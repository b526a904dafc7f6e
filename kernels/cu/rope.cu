// Rotary embedding, HF `rotate_half` layout: for i < D/2, a = pos * theta^(-2i/D) (f32),
//   y[i] = x[i] cos a - x[i+D/2] sin a,   y[i+D/2] = x[i+D/2] cos a + x[i] sin a.
// The backward is the rotation by -a (sign = -1). One thread per (token, head, i < D/2).
// As HF (and the CPU reference): inv_freq = 1 / theta^(f32(2i) / f32(D)) and a = f32(pos) * inv_freq
// in f32. theta^e and cos/sin(a) are evaluated in f64 and rounded, giving the correctly rounded f32
// values a good libm returns, so the angle does not drift from the reference at large positions.

template <typename T>
__device__ void rope_impl(const T* __restrict__ x, const u32* __restrict__ pos, T* __restrict__ y,
                          u32 n, u32 heads, u32 d, float theta, float sign) {
    const u32 half = d / 2;
    const size_t total = (size_t)n * heads * half;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        const u32 i = t % half;
        const size_t nh = t / half;       // token * heads + head
        const u32 tok = nh / heads;
        const float expo = (float)(2 * i) / (float)d;
        const float inv_freq = 1.0f / (float)pow((double)theta, (double)expo);
        const float a = (float)pos[tok] * inv_freq;
        double sd, cd;
        sincos((double)a, &sd, &cd);
        const float s = sign * (float)sd, c = (float)cd;
        const size_t base = nh * d;
        const float x1 = ld(x, base + i), x2 = ld(x, base + i + half);
        st(y, base + i, x1 * c - x2 * s);
        st(y, base + i + half, x2 * c + x1 * s);
    }
}

extern "C" __global__ void rope_f32(const float* x, const u32* pos, float* y, u32 n, u32 h, u32 d, float theta, float sign) {
    rope_impl(x, pos, y, n, h, d, theta, sign);
}
extern "C" __global__ void rope_bf16(const __nv_bfloat16* x, const u32* pos, __nv_bfloat16* y, u32 n, u32 h, u32 d,
                                     float theta, float sign) {
    rope_impl(x, pos, y, n, h, d, theta, sign);
}
