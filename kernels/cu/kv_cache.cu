// Paged KV cache writes. Caches are [P, K, D] (P slots = blocks x block size); `row` = K*D.
//
// kv_cache_write: token n's K/V rows go to slot slots[n]. Slots >= P are skipped rather than
// checked on the host (that would need a device-to-host sync in the decode step).
// kv_cache_copy_blocks: block src[i] onto block dst[i] in both caches (copy on write).
// Both are grid-stride loops over elements: memory-bound copies, coalesced along the row.

template <typename T>
__device__ void kv_cache_write_impl(const T* __restrict__ k, const T* __restrict__ v, const u32* __restrict__ slots,
                                    T* __restrict__ kc, T* __restrict__ vc, u32 n, u32 row, u32 num_slots) {
    const size_t total = (size_t)n * row;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        const size_t tok = t / row, i = t % row;
        const u32 slot = slots[tok];
        if (slot >= num_slots) continue;
        kc[(size_t)slot * row + i] = k[t];
        vc[(size_t)slot * row + i] = v[t];
    }
}

template <typename T>
__device__ void kv_cache_copy_blocks_impl(T* __restrict__ kc, T* __restrict__ vc, const u32* __restrict__ src,
                                          const u32* __restrict__ dst, u32 pairs, u32 block_elems, u32 num_blocks) {
    const size_t total = (size_t)pairs * block_elems;
    for (size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x; t < total; t += (size_t)gridDim.x * blockDim.x) {
        const size_t pair = t / block_elems, i = t % block_elems;
        const u32 a = src[pair], b = dst[pair];
        if (a >= num_blocks || b >= num_blocks) continue;
        kc[(size_t)b * block_elems + i] = kc[(size_t)a * block_elems + i];
        vc[(size_t)b * block_elems + i] = vc[(size_t)a * block_elems + i];
    }
}

extern "C" __global__ void kv_cache_write_f32(const float* k, const float* v, const u32* slots, float* kc, float* vc,
                                              u32 n, u32 row, u32 num_slots) { pdl_entry();
    kv_cache_write_impl(k, v, slots, kc, vc, n, row, num_slots);
}
extern "C" __global__ void kv_cache_write_bf16(const __nv_bfloat16* k, const __nv_bfloat16* v, const u32* slots,
                                               __nv_bfloat16* kc, __nv_bfloat16* vc, u32 n, u32 row, u32 num_slots) { pdl_entry();
    kv_cache_write_impl(k, v, slots, kc, vc, n, row, num_slots);
}
extern "C" __global__ void kv_cache_copy_blocks_f32(float* kc, float* vc, const u32* src, const u32* dst, u32 pairs,
                                                    u32 block_elems, u32 num_blocks) { pdl_entry();
    kv_cache_copy_blocks_impl(kc, vc, src, dst, pairs, block_elems, num_blocks);
}
extern "C" __global__ void kv_cache_copy_blocks_bf16(__nv_bfloat16* kc, __nv_bfloat16* vc, const u32* src,
                                                     const u32* dst, u32 pairs, u32 block_elems, u32 num_blocks) { pdl_entry();
    kv_cache_copy_blocks_impl(kc, vc, src, dst, pairs, block_elems, num_blocks);
}
