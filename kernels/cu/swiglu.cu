// SwiGLU: h = silu(gate) * up, and its backward. Elementwise in f32, 8 elements per access.
//   silu(g) = g * sig(g);  d silu / dg = sig(g) * (1 + g * (1 - sig(g))).

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__device__ void swiglu_impl(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ h, u64 n) {
    float g[8], u[8];
    for_each_8(n, [&](size_t i) {
        ld8(gate, i, g); ld8(up, i, u);
#pragma unroll
        for (int k = 0; k < 8; ++k) g[k] = g[k] * sigmoid(g[k]) * u[k];
        st8(h, i, g);
    }, [&](size_t i) {
        const float gg = ld(gate, i);
        st(h, i, gg * sigmoid(gg) * ld(up, i));
    });
}

template <typename T>
__device__ void swiglu_bwd_impl(const T* __restrict__ dh, const T* __restrict__ gate, const T* __restrict__ up,
                                T* __restrict__ dgate, T* __restrict__ dup, u64 n) {
    float g[8], u[8], d[8];
    for_each_8(n, [&](size_t i) {
        ld8(gate, i, g); ld8(up, i, u); ld8(dh, i, d);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float s = sigmoid(g[k]);
            const float dg = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
            u[k] = d[k] * g[k] * s;
            g[k] = dg;
        }
        st8(dgate, i, g); st8(dup, i, u);
    }, [&](size_t i) {
        const float gg = ld(gate, i), uu = ld(up, i), dd = ld(dh, i);
        const float s = sigmoid(gg);
        st(dgate, i, dd * uu * s * (1.0f + gg * (1.0f - s)));
        st(dup, i, dd * gg * s);
    });
}

extern "C" __global__ void swiglu_f32(const float* g, const float* u, float* h, u64 n) { pdl_entry(); swiglu_impl(g, u, h, n); }
extern "C" __global__ void swiglu_bf16(const __nv_bfloat16* g, const __nv_bfloat16* u, __nv_bfloat16* h, u64 n) { pdl_entry(); swiglu_impl(g, u, h, n); }
extern "C" __global__ void swiglu_backward_f32(const float* dh, const float* g, const float* u, float* dg, float* du, u64 n) { pdl_entry();
    swiglu_bwd_impl(dh, g, u, dg, du, n);
}
extern "C" __global__ void swiglu_backward_bf16(const __nv_bfloat16* dh, const __nv_bfloat16* g, const __nv_bfloat16* u,
                                                __nv_bfloat16* dg, __nv_bfloat16* du, u64 n) { pdl_entry();
    swiglu_bwd_impl(dh, g, u, dg, du, n);
}
