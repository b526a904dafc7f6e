// SwiGLU over the output of the fused gate/up projection: gu[N, 2F] holds gate in columns [0, F)
// and up in [F, 2F) of each row; h[n, j] = silu(gu[n, j]) * gu[n, F + j], in f32 with one rounding
// to T, the arithmetic of swiglu.cu. 8 consecutive j per thread when F is a multiple of 8.

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__device__ void swiglu_packed_impl(const T* __restrict__ gu, T* __restrict__ h, u32 n, u32 f) {
    const u64 stride = (u64)gridDim.x * blockDim.x, tid = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    if (f % 8 == 0) {
        const u32 f8 = f / 8;
        float g[8], u[8];
        for (u64 t = tid; t < (u64)n * f8; t += stride) {
            const size_t row = t / f8, j = (t % f8) * 8;
            ld8(gu, row * 2 * f + j, g);
            ld8(gu, row * 2 * f + f + j, u);
#pragma unroll
            for (int k = 0; k < 8; ++k) g[k] = g[k] * sigmoid(g[k]) * u[k];
            st8(h, row * f + j, g);
        }
        return;
    }
    for (u64 t = tid; t < (u64)n * f; t += stride) {
        const size_t row = t / f, j = t % f;
        const float g = ld(gu, row * 2 * f + j);
        st(h, row * f + j, g * sigmoid(g) * ld(gu, row * 2 * f + f + j));
    }
}

extern "C" __global__ void swiglu_packed_f32(const float* gu, float* h, u32 n, u32 f) { pdl_entry(); swiglu_packed_impl(gu, h, n, f); }
extern "C" __global__ void swiglu_packed_bf16(const __nv_bfloat16* gu, __nv_bfloat16* h, u32 n, u32 f) { pdl_entry();
    swiglu_packed_impl(gu, h, n, f);
}
