// Residual add fused with the RMSNorm that follows it (the two ops between a projection and the
// next GEMM of a Llama layer):
//   r = T(x + y)                      (f32 add, one rounding to T: the `add` op, HF's bf16 residual)
//   rstd = 1 / sqrt(mean(r²) + eps)   (over the rounded r, in f32)
//   out = w * T(r * rstd)             (the `rmsnorm` op: normalised value rounded before the weight)
// add_rmsnorm_row (C a multiple of 8, C <= 8192): a block per row, each thread one 8-wide chunk
// held in registers from the add to the store, the sum of squares by block_sum: the shortest chain
// of dependent memory accesses for the decode step's few hundred rows. add_rmsnorm (any C): a warp
// per row, 8 rows per block (grid-stride), 8-wide chunks when C allows, else one element per lane.
// The two sum the squares in different orders (f32 rounding differences in rstd).
// add_rmsnorm_partials_row: the same as add_rmsnorm_row with y given as S f32 partial products
// [S, N, C] (linear_ksplit's), summed in order s = 0..S-1 and rounded once to T, as the GEMM that
// would have written y in T: the reduce of a split-K GEMM folded into the op that reads its result.

// Where the row kernel's y comes from: a [N, C] tensor of T ...
template <typename T> struct YRows {
    const T* __restrict__ y;
    __device__ __forceinline__ void load8(size_t at, float* v) const { ld8(y, at, v); }
};
// ... or the sum of S f32 partial products [S, N, C], rounded to T.
template <typename T> struct YPartials {
    const float* __restrict__ p;
    size_t plane;  // N * C
    u32 splits;
    __device__ __forceinline__ void load8(size_t at, float* v) const {
        ld8(p, at, v);
        for (u32 s = 1; s < splits; ++s) {
            float t[8];
            ld8(p + s * plane, at, t);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] += t[k];
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = round_to<T>(v[k]);
    }
};

template <typename T, typename Y>
__device__ void add_rmsnorm_row_impl(const T* __restrict__ x, const Y y, const T* __restrict__ w,
                                     T* __restrict__ r, T* __restrict__ out, float* __restrict__ rstd_out, u32 n,
                                     u32 c, float eps) {
    __shared__ float scratch[32];
    const u32 j = threadIdx.x * 8;
    float xv[8], yv[8], wv[8];
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const size_t off = (size_t)row * c;
        float ss = 0.0f;
        if (j < c) {
            ld8(x, off + j, xv);
            y.load8(off + j, yv);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                xv[k] = round_to<T>(xv[k] + yv[k]);
                ss += xv[k] * xv[k];
            }
            st8(r, off + j, xv);
        }
        ss = block_sum(ss, scratch);
        const float rstd = 1.0f / sqrtf(ss / (float)c + eps);
        if (threadIdx.x == 0) rstd_out[row] = rstd;
        if (j < c) {
            ld8(w, j, wv);
#pragma unroll
            for (int k = 0; k < 8; ++k) xv[k] = wv[k] * round_to<T>(xv[k] * rstd);
            st8(out, off + j, xv);
        }
    }
}

template <typename T>
__device__ void add_rmsnorm_impl(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                                 T* __restrict__ r, T* __restrict__ out, float* __restrict__ rstd_out, u32 n, u32 c,
                                 float eps) {
    const u32 lane = threadIdx.x % 32, nw = blockDim.x / 32;
    const bool vec = c % 8 == 0;
    float xv[8], yv[8], wv[8];
    for (u32 row = blockIdx.x * nw + threadIdx.x / 32; row < n; row += gridDim.x * nw) {
        const size_t off = (size_t)row * c;
        float ss = 0.0f;
        if (vec) {
            for (u32 j = lane * 8; j < c; j += 256) {
                ld8(x, off + j, xv);
                ld8(y, off + j, yv);
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    xv[k] = round_to<T>(xv[k] + yv[k]);
                    ss += xv[k] * xv[k];
                }
                st8(r, off + j, xv);
            }
        } else {
            for (u32 j = lane; j < c; j += 32) {
                const float s = round_to<T>(ld(x, off + j) + ld(y, off + j));
                st(r, off + j, s);
                ss += s * s;
            }
        }
        ss = warp_sum(ss);
        const float rstd = 1.0f / sqrtf(ss / (float)c + eps);
        if (lane == 0) rstd_out[row] = rstd;
        // r is read back by the lane that wrote it.
        if (vec) {
            for (u32 j = lane * 8; j < c; j += 256) {
                ld8(r, off + j, xv);
                ld8(w, j, wv);
#pragma unroll
                for (int k = 0; k < 8; ++k) xv[k] = wv[k] * round_to<T>(xv[k] * rstd);
                st8(out, off + j, xv);
            }
        } else {
            for (u32 j = lane; j < c; j += 32) st(out, off + j, ld(w, j) * round_to<T>(ld(r, off + j) * rstd));
        }
    }
}

extern "C" __global__ void add_rmsnorm_row_f32(const float* x, const float* y, const float* w, float* r, float* out,
                                               float* rstd, u32 n, u32 c, float eps) { pdl_entry();
    add_rmsnorm_row_impl(x, YRows<float>{y}, w, r, out, rstd, n, c, eps);
}
extern "C" __global__ void add_rmsnorm_row_bf16(const __nv_bfloat16* x, const __nv_bfloat16* y,
                                                const __nv_bfloat16* w, __nv_bfloat16* r, __nv_bfloat16* out,
                                                float* rstd, u32 n, u32 c, float eps) { pdl_entry();
    add_rmsnorm_row_impl(x, YRows<__nv_bfloat16>{y}, w, r, out, rstd, n, c, eps);
}
extern "C" __global__ void add_rmsnorm_partials_row_f32(const float* x, const float* p, u32 splits, const float* w,
                                                        float* r, float* out, float* rstd, u32 n, u32 c, float eps) {
    pdl_entry();
    add_rmsnorm_row_impl(x, YPartials<float>{p, (size_t)n * c, splits}, w, r, out, rstd, n, c, eps);
}
extern "C" __global__ void add_rmsnorm_partials_row_bf16(const __nv_bfloat16* x, const float* p, u32 splits,
                                                         const __nv_bfloat16* w, __nv_bfloat16* r,
                                                         __nv_bfloat16* out, float* rstd, u32 n, u32 c, float eps) {
    pdl_entry();
    add_rmsnorm_row_impl(x, YPartials<__nv_bfloat16>{p, (size_t)n * c, splits}, w, r, out, rstd, n, c, eps);
}
extern "C" __global__ void add_rmsnorm_f32(const float* x, const float* y, const float* w, float* r, float* out,
                                           float* rstd, u32 n, u32 c, float eps) { pdl_entry();
    add_rmsnorm_impl(x, y, w, r, out, rstd, n, c, eps);
}
extern "C" __global__ void add_rmsnorm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* y, const __nv_bfloat16* w,
                                            __nv_bfloat16* r, __nv_bfloat16* out, float* rstd, u32 n, u32 c,
                                            float eps) { pdl_entry();
    add_rmsnorm_impl(x, y, w, r, out, rstd, n, c, eps);
}
