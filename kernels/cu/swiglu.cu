// SwiGLU: h = silu(gate) * up, and its backward. Elementwise in f32, grid-stride.
//   silu(g) = g * sig(g);  d silu / dg = sig(g) * (1 + g * (1 - sig(g))).

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__device__ void swiglu_impl(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ h, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = ld(gate, i);
        st(h, i, g * sigmoid(g) * ld(up, i));
    }
}

template <typename T>
__device__ void swiglu_bwd_impl(const T* __restrict__ dh, const T* __restrict__ gate, const T* __restrict__ up,
                                T* __restrict__ dgate, T* __restrict__ dup, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const float g = ld(gate, i), u = ld(up, i), d = ld(dh, i);
        const float s = sigmoid(g);
        st(dgate, i, d * u * s * (1.0f + g * (1.0f - s)));
        st(dup, i, d * g * s);
    }
}

extern "C" __global__ void swiglu_f32(const float* g, const float* u, float* h, u64 n) { swiglu_impl(g, u, h, n); }
extern "C" __global__ void swiglu_bf16(const __nv_bfloat16* g, const __nv_bfloat16* u, __nv_bfloat16* h, u64 n) { swiglu_impl(g, u, h, n); }
extern "C" __global__ void swiglu_backward_f32(const float* dh, const float* g, const float* u, float* dg, float* du, u64 n) {
    swiglu_bwd_impl(dh, g, u, dg, du, n);
}
extern "C" __global__ void swiglu_backward_bf16(const __nv_bfloat16* dh, const __nv_bfloat16* g, const __nv_bfloat16* u,
                                                __nv_bfloat16* dg, __nv_bfloat16* du, u64 n) {
    swiglu_bwd_impl(dh, g, u, dg, du, n);
}
