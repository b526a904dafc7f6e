// cast: f32 <-> bf16, elementwise, round to nearest even. 8 elements per access (16-byte loads).

extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, u64 n) { pdl_entry();
    float v[8];
    for_each_8(n, [&](size_t i) { ld8(x, i, v); st8(y, i, v); }, [&](size_t i) { y[i] = __float2bfloat16_rn(x[i]); });
}

extern "C" __global__ void cast_bf16_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, u64 n) { pdl_entry();
    float v[8];
    for_each_8(n, [&](size_t i) { ld8(x, i, v); st8(y, i, v); }, [&](size_t i) { y[i] = __bfloat162float(x[i]); });
}

// bias_cast: out[r, o] = T(y[r, o] + b[o]) for f32 y (a GEMM's unrounded output): the bias added in
// f32 and the sum rounded once. 8 elements per access when cols % 8 == 0 (then 8 consecutive
// elements share a row).
template <typename B, typename T>
__device__ void bias_cast_impl(const float* __restrict__ y, const B* __restrict__ b, T* __restrict__ out, u32 rows,
                               u32 cols) {
    const u64 n = (u64)rows * cols;
    if ((cols & 7) == 0) {
        float v[8], bv[8];
        for_each_8(n, [&](size_t i) {
            ld8(y, i, v);
            ld8(b, i % cols, bv);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] += bv[k];
            st8(out, i, v);
        }, [&](size_t i) { st(out, i, y[i] + ld(b, i % cols)); });
    } else {
        const u64 stride = (u64)gridDim.x * blockDim.x;
        for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += stride)
            st(out, i, y[i] + ld(b, i % cols));
    }
}

extern "C" __global__ void bias_cast_bf16_bf16(const float* y, const __nv_bfloat16* b, __nv_bfloat16* out, u32 rows,
                                               u32 cols) { pdl_entry();
    bias_cast_impl(y, b, out, rows, cols);
}
extern "C" __global__ void bias_cast_f32_f32(const float* y, const float* b, float* out, u32 rows, u32 cols) { pdl_entry();
    bias_cast_impl(y, b, out, rows, cols);
}
