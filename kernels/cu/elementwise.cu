// Elementwise helpers: add, add in place, scale in place, fill. f32 arithmetic, one rounding to T;
// 8 elements per access.

template <typename T>
__device__ void add_impl(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, u64 n) {
    float x[8], y[8];
    for_each_8(n, [&](size_t i) {
        ld8(a, i, x); ld8(b, i, y);
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] += y[k];
        st8(out, i, x);
    }, [&](size_t i) { st(out, i, ld(a, i) + ld(b, i)); });
}

template <typename T>
__device__ void add_inplace_impl(T* a, const T* __restrict__ b, u64 n) {
    float x[8], y[8];
    for_each_8(n, [&](size_t i) {
        ld8(a, i, x); ld8(b, i, y);
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] += y[k];
        st8(a, i, x);
    }, [&](size_t i) { st(a, i, ld(a, i) + ld(b, i)); });
}

template <typename T>
__device__ void scale_impl(T* x, float s, u64 n) {
    float v[8];
    for_each_8(n, [&](size_t i) {
        ld8(x, i, v);
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] *= s;
        st8(x, i, v);
    }, [&](size_t i) { st(x, i, ld(x, i) * s); });
}

template <typename T>
__device__ void fill_impl(T* x, float s, u64 n) {
    float v[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = s;
    for_each_8(n, [&](size_t i) { st8(x, i, v); }, [&](size_t i) { st(x, i, s); });
}

#define ELEMENTWISE(S, T)                                                                               \
    extern "C" __global__ void add_##S(const T* a, const T* b, T* out, u64 n) { pdl_entry(); add_impl(a, b, out, n); } \
    extern "C" __global__ void add_inplace_##S(T* a, const T* b, u64 n) { pdl_entry(); add_inplace_impl(a, b, n); }   \
    extern "C" __global__ void scale_inplace_##S(T* x, float s, u64 n) { pdl_entry(); scale_impl(x, s, n); }          \
    extern "C" __global__ void fill_inplace_##S(T* x, float v, u64 n) { pdl_entry(); fill_impl(x, v, n); }

ELEMENTWISE(f32, float)
ELEMENTWISE(bf16, __nv_bfloat16)

// fill_inplace of many f32 tensors in one launch. `table` holds 3 u64 per tensor: address, length,
// first block; tensor s owns blocks [block0, next block0), FILL_BLOCK_ELEMS elements each, and a
// block finds its tensor by binary search.
#define FILL_BLOCK_ELEMS 8192
extern "C" __global__ void fill_many_f32(const u64* __restrict__ table, u32 n_slots, float v) { pdl_entry();
    u32 lo = 0, hi = n_slots - 1;
    while (lo < hi) {
        const u32 mid = (lo + hi + 1) / 2;
        if (table[3 * mid + 2] <= blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    float* x = reinterpret_cast<float*>(table[3 * lo]);
    const u64 n = table[3 * lo + 1];
    const u64 start = (blockIdx.x - table[3 * lo + 2]) * (u64)FILL_BLOCK_ELEMS;
    const u64 end = min(start + FILL_BLOCK_ELEMS, n);
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) x[i] = v;
}
