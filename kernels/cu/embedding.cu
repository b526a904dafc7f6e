// Embedding rows: gather table rows by id, and the backward scatter-add into an f32 table.
// Ids are validated on the host before launch (an id >= R is an error there), so the kernels
// trust them. One block per output row, threads across C (coalesced).

template <typename T>
__device__ void gather_impl(const T* __restrict__ table, const u32* __restrict__ idx, T* __restrict__ out,
                            u32 n, u32 c) {
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const size_t src = (size_t)idx[row] * c, dst = (size_t)row * c;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) out[dst + j] = table[src + j];
    }
}

// dst[idx[n], :] += src[n, :]; repeated ids meet in f32 atomics (order-dependent rounding only).
template <typename T>
__device__ void scatter_add_impl(float* dst, const u32* __restrict__ idx, const T* __restrict__ src,
                                 u32 n, u32 c) {
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const size_t d = (size_t)idx[row] * c, s = (size_t)row * c;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(dst + d + j, ld(src, s + j));
    }
}

extern "C" __global__ void gather_rows_f32(const float* t, const u32* idx, float* out, u32 n, u32 c) {
    gather_impl(t, idx, out, n, c);
}
extern "C" __global__ void gather_rows_bf16(const __nv_bfloat16* t, const u32* idx, __nv_bfloat16* out, u32 n, u32 c) {
    gather_impl(t, idx, out, n, c);
}
extern "C" __global__ void scatter_add_rows_f32(float* dst, const u32* idx, const float* src, u32 n, u32 c) {
    scatter_add_impl(dst, idx, src, n, c);
}
extern "C" __global__ void scatter_add_rows_bf16(float* dst, const u32* idx, const __nv_bfloat16* src, u32 n, u32 c) {
    scatter_add_impl(dst, idx, src, n, c);
}
