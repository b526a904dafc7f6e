// RMSNorm (HF LlamaRMSNorm): rstd = 1 / sqrt(mean(x^2) + eps); y = w * T(x * rstd), the
// normalised value rounded to the input dtype before the weight multiplies it, as HF does.
// One block per row (grid-stride over rows), threads across C.

template <typename T>
__device__ void rmsnorm_impl(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                             float* __restrict__ rstd_out, u32 n, u32 c, float eps) {
    __shared__ float scratch[32];
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const size_t off = (size_t)row * c;
        float ss = 0.0f;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) {
            const float v = ld(x, off + j);
            ss += v * v;
        }
        ss = block_sum(ss, scratch);
        const float rstd = 1.0f / sqrtf(ss / (float)c + eps);
        if (threadIdx.x == 0) rstd_out[row] = rstd;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x)
            st(y, off + j, ld(w, j) * round_to<T>(ld(x, off + j) * rstd));
    }
}

// dx = rstd * (w*dy - xn * mean(w*dy*xn)),  dw += sum_rows dy * xn,  xn = x * rstd.
// Each block takes `rows_per_block` consecutive rows and keeps its dw partial in shared memory
// (column j always belongs to the same thread, so no races), then adds it to dw with one atomic
// per column: dw must be zeroed before launch.
// With ACC, dx already holds a gradient (the residual branch's) and receives dx + this norm's dx,
// rounded once; with FROM too, that gradient is read from `res` instead and dx is a new buffer
// (res is left as it was: a weight gradient on a side lane may still be reading it).
template <typename T, bool ACC = false, bool FROM = false>
__device__ void rmsnorm_bwd_impl(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                 const float* __restrict__ rstd, T* __restrict__ dx, float* dw,
                                 u32 n, u32 c, u32 rows_per_block, const T* __restrict__ res = nullptr) {
    const T* prev = FROM ? res : dx;  // the gradient ACC adds onto
    extern __shared__ float dw_part[];  // [c]
    __shared__ float scratch[32];
    for (u32 j = threadIdx.x; j < c; j += blockDim.x) dw_part[j] = 0.0f;
    const u32 r0 = blockIdx.x * rows_per_block;
    const u32 r1 = min(n, r0 + rows_per_block);
    for (u32 row = r0; row < r1; ++row) {
        const size_t off = (size_t)row * c;
        const float r = rstd[row];
        float dot = 0.0f;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x)
            dot += ld(w, j) * ld(dy, off + j) * (ld(x, off + j) * r);
        dot = block_sum(dot, scratch) / (float)c;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) {
            const float g = ld(dy, off + j), xn = ld(x, off + j) * r;
            const float d = r * (ld(w, j) * g - xn * dot);
            st(dx, off + j, ACC ? ld(prev, off + j) + d : d);
            dw_part[j] += g * xn;
        }
    }
    for (u32 j = threadIdx.x; j < c; j += blockDim.x)
        if (r1 > r0) atomicAdd(dw + j, dw_part[j]);
}

// Warp-per-row variants for C a multiple of 8 (16-byte accesses, 8 values each; no block-wide
// reductions, so no barriers per row). Same arithmetic per element; the sums over C are added in
// another order.
template <typename T>
__device__ void rmsnorm_warp_impl(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                  float* __restrict__ rstd_out, u32 n, u32 c, float eps) {
    const u32 lane = threadIdx.x % 32, nw = blockDim.x / 32;
    float xv[8], wv[8];
    for (u32 row = blockIdx.x * nw + threadIdx.x / 32; row < n; row += gridDim.x * nw) {
        const size_t off = (size_t)row * c;
        float ss = 0.0f;
        for (u32 j = lane * 8; j < c; j += 256) {
            ld8(x, off + j, xv);
#pragma unroll
            for (int k = 0; k < 8; ++k) ss += xv[k] * xv[k];
        }
        ss = warp_sum(ss);
        const float rstd = 1.0f / sqrtf(ss / (float)c + eps);
        if (lane == 0) rstd_out[row] = rstd;
        for (u32 j = lane * 8; j < c; j += 256) {
            ld8(x, off + j, xv);
            ld8(w, j, wv);
#pragma unroll
            for (int k = 0; k < 8; ++k) xv[k] = wv[k] * round_to<T>(xv[k] * rstd);
            st8(y, off + j, xv);
        }
    }
}

// Each warp takes rows of the block's `rows_per_block` and keeps its own dw partial in shared
// memory ([warps][8][c / 8]: element k of lane-owned chunk q at [k][q], so that a warp's 32 lanes
// touch 32 consecutive words, free of bank conflicts), summed over the warps and added to dw with
// one atomic per column at the end: dw must be zeroed before launch.
template <typename T, bool ACC = false, bool FROM = false>
__device__ void rmsnorm_bwd_warp_impl(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                      const float* __restrict__ rstd, T* __restrict__ dx, float* dw,
                                      u32 n, u32 c, u32 rows_per_block, const T* __restrict__ res = nullptr) {
    const T* prev = FROM ? res : dx;  // the gradient ACC adds onto
    extern __shared__ float dw_part[];  // [warps][8][c / 8]
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32, c8 = c / 8;
    float* part = dw_part + (size_t)warp * c;
    for (u32 j = lane; j < c; j += 32) part[j] = 0.0f;
    const u32 r0 = blockIdx.x * rows_per_block;
    const u32 r1 = min(n, r0 + rows_per_block);
    float gv[8], xv[8], wv[8];
    for (u32 row = r0 + warp; row < r1; row += nw) {
        const size_t off = (size_t)row * c;
        const float r = rstd[row];
        float dot = 0.0f;
        for (u32 q = lane; q < c8; q += 32) {
            ld8(w, (size_t)q * 8, wv);
            ld8(dy, off + q * 8, gv);
            ld8(x, off + q * 8, xv);
#pragma unroll
            for (int k = 0; k < 8; ++k) dot += wv[k] * gv[k] * (xv[k] * r);
        }
        dot = warp_sum(dot) / (float)c;
        for (u32 q = lane; q < c8; q += 32) {
            ld8(w, (size_t)q * 8, wv);
            ld8(dy, off + q * 8, gv);
            ld8(x, off + q * 8, xv);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float xn = xv[k] * r;
                part[k * c8 + q] += gv[k] * xn;
                xv[k] = r * (wv[k] * gv[k] - xn * dot);
            }
            if (ACC) {
                ld8(prev, off + q * 8, gv);
#pragma unroll
                for (int k = 0; k < 8; ++k) xv[k] += gv[k];
            }
            st8(dx, off + q * 8, xv);
        }
    }
    __syncthreads();
    if (r1 > r0)
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) {
            const u32 slot = (j % 8) * c8 + j / 8;  // column j = chunk j / 8, element j % 8
            float acc = 0.0f;
            for (u32 ww = 0; ww < nw; ++ww) acc += dw_part[(size_t)ww * c + slot];
            atomicAdd(dw + j, acc);
        }
}

extern "C" __global__ void rmsnorm_f32(const float* x, const float* w, float* y, float* rstd, u32 n, u32 c, float eps) { pdl_entry();
    rmsnorm_impl(x, w, y, rstd, n, c, eps);
}
extern "C" __global__ void rmsnorm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, float* rstd,
                                        u32 n, u32 c, float eps) { pdl_entry();
    rmsnorm_impl(x, w, y, rstd, n, c, eps);
}
extern "C" __global__ void rmsnorm_backward_f32(const float* dy, const float* x, const float* w, const float* rstd,
                                                float* dx, float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_impl(dy, x, w, rstd, dx, dw, n, c, rpb);
}
extern "C" __global__ void rmsnorm_backward_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x, const __nv_bfloat16* w,
                                                 const float* rstd, __nv_bfloat16* dx, float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_impl(dy, x, w, rstd, dx, dw, n, c, rpb);
}
extern "C" __global__ void rmsnorm_warp_f32(const float* x, const float* w, float* y, float* rstd, u32 n, u32 c,
                                             float eps) { pdl_entry();
    rmsnorm_warp_impl(x, w, y, rstd, n, c, eps);
}
extern "C" __global__ void rmsnorm_warp_bf16(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y,
                                              float* rstd, u32 n, u32 c, float eps) { pdl_entry();
    rmsnorm_warp_impl(x, w, y, rstd, n, c, eps);
}
extern "C" __global__ void rmsnorm_backward_warp_f32(const float* dy, const float* x, const float* w, const float* rstd,
                                                     float* dx, float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_warp_impl(dy, x, w, rstd, dx, dw, n, c, rpb);
}
extern "C" __global__ void rmsnorm_backward_warp_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                                      const __nv_bfloat16* w, const float* rstd, __nv_bfloat16* dx,
                                                      float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_warp_impl(dy, x, w, rstd, dx, dw, n, c, rpb);
}

// The same backward accumulating into dx (`rmsnorm_backward_acc`: the residual stream's gradient
// plus the norm's, one rounding; dw is the caller's running gradient, added to by atomics).
extern "C" __global__ void rmsnorm_backward_acc_f32(const float* dy, const float* x, const float* w, const float* rstd,
                                                    float* dx, float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_impl<float, true>(dy, x, w, rstd, dx, dw, n, c, rpb);
}
extern "C" __global__ void rmsnorm_backward_acc_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                                     const __nv_bfloat16* w, const float* rstd, __nv_bfloat16* dx,
                                                     float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_impl<__nv_bfloat16, true>(dy, x, w, rstd, dx, dw, n, c, rpb);
}
extern "C" __global__ void rmsnorm_backward_warp_acc_f32(const float* dy, const float* x, const float* w,
                                                         const float* rstd, float* dx, float* dw, u32 n, u32 c,
                                                         u32 rpb) { pdl_entry();
    rmsnorm_bwd_warp_impl<float, true>(dy, x, w, rstd, dx, dw, n, c, rpb);
}
extern "C" __global__ void rmsnorm_backward_warp_acc_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                                          const __nv_bfloat16* w, const float* rstd,
                                                          __nv_bfloat16* dx, float* dw, u32 n, u32 c, u32 rpb) { pdl_entry();
    rmsnorm_bwd_warp_impl<__nv_bfloat16, true>(dy, x, w, rstd, dx, dw, n, c, rpb);
}

// The accumulating backward out of place (`rmsnorm_backward_acc_from`): dx = res + this norm's dx,
// rounded once, into a new buffer; res is only read.
extern "C" __global__ void rmsnorm_backward_accfrom_f32(const float* dy, const float* x, const float* w,
                                                        const float* rstd, float* dx, float* dw, u32 n, u32 c,
                                                        u32 rpb, const float* res) { pdl_entry();
    rmsnorm_bwd_impl<float, true, true>(dy, x, w, rstd, dx, dw, n, c, rpb, res);
}
extern "C" __global__ void rmsnorm_backward_accfrom_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                                         const __nv_bfloat16* w, const float* rstd,
                                                         __nv_bfloat16* dx, float* dw, u32 n, u32 c, u32 rpb,
                                                         const __nv_bfloat16* res) { pdl_entry();
    rmsnorm_bwd_impl<__nv_bfloat16, true, true>(dy, x, w, rstd, dx, dw, n, c, rpb, res);
}
extern "C" __global__ void rmsnorm_backward_warp_accfrom_f32(const float* dy, const float* x, const float* w,
                                                             const float* rstd, float* dx, float* dw, u32 n, u32 c,
                                                             u32 rpb, const float* res) { pdl_entry();
    rmsnorm_bwd_warp_impl<float, true, true>(dy, x, w, rstd, dx, dw, n, c, rpb, res);
}
extern "C" __global__ void rmsnorm_backward_warp_accfrom_bf16(const __nv_bfloat16* dy, const __nv_bfloat16* x,
                                                              const __nv_bfloat16* w, const float* rstd,
                                                              __nv_bfloat16* dx, float* dw, u32 n, u32 c, u32 rpb,
                                                              const __nv_bfloat16* res) { pdl_entry();
    rmsnorm_bwd_warp_impl<__nv_bfloat16, true, true>(dy, x, w, rstd, dx, dw, n, c, rpb, res);
}
