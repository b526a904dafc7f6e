// Embedding rows: gather table rows by id, and the backward scatter-add into an f32 table.
// One block per output row, threads across C (coalesced).
//
// The `_bounded` kernels take the table's row count R and never touch memory for an id >= R:
// gather writes a zero row there, scatter-add skips it. The ops check the ids before launch
// (copied back from the device, or given by the caller from the host, see ops/embedding.rs), so
// the bound only matters if a caller's host ids disagree with the device ones; it costs one compare
// per row. The plain kernels trust their ids (the rollout engine's captured decode step,
// cuda/graph_ops.rs).

template <typename T>
__device__ void gather_impl(const T* __restrict__ table, const u32* __restrict__ idx, T* __restrict__ out,
                            u32 n, u32 c, u32 rows) {
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const u32 id = idx[row];
        const size_t src = (size_t)id * c, dst = (size_t)row * c;
        if (id >= rows) {
            for (u32 j = threadIdx.x; j < c; j += blockDim.x) out[dst + j] = T(0.0f);
            continue;
        }
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) out[dst + j] = table[src + j];
    }
}

// dst[idx[n], :] += src[n, :]; repeated ids meet in f32 atomics (order-dependent rounding only).
template <typename T>
__device__ void scatter_add_impl(float* dst, const u32* __restrict__ idx, const T* __restrict__ src,
                                 u32 n, u32 c, u32 rows) {
    for (u32 row = blockIdx.x; row < n; row += gridDim.x) {
        const u32 id = idx[row];
        if (id >= rows) continue;
        const size_t d = (size_t)id * c, s = (size_t)row * c;
        for (u32 j = threadIdx.x; j < c; j += blockDim.x) atomicAdd(dst + d + j, ld(src, s + j));
    }
}

#define NO_BOUND 0xffffffffu

extern "C" __global__ void gather_rows_f32(const float* t, const u32* idx, float* out, u32 n, u32 c) { pdl_entry();
    gather_impl(t, idx, out, n, c, NO_BOUND);
}
extern "C" __global__ void gather_rows_bf16(const __nv_bfloat16* t, const u32* idx, __nv_bfloat16* out, u32 n, u32 c) { pdl_entry();
    gather_impl(t, idx, out, n, c, NO_BOUND);
}
extern "C" __global__ void gather_rows_bounded_f32(const float* t, const u32* idx, float* out, u32 n, u32 c,
                                                   u32 rows) { pdl_entry();
    gather_impl(t, idx, out, n, c, rows);
}
extern "C" __global__ void gather_rows_bounded_bf16(const __nv_bfloat16* t, const u32* idx, __nv_bfloat16* out, u32 n,
                                                    u32 c, u32 rows) { pdl_entry();
    gather_impl(t, idx, out, n, c, rows);
}
extern "C" __global__ void scatter_add_rows_bounded_f32(float* dst, const u32* idx, const float* src, u32 n, u32 c,
                                                        u32 rows) { pdl_entry();
    scatter_add_impl(dst, idx, src, n, c, rows);
}
extern "C" __global__ void scatter_add_rows_bounded_bf16(float* dst, const u32* idx, const __nv_bfloat16* src, u32 n,
                                                         u32 c, u32 rows) { pdl_entry();
    scatter_add_impl(dst, idx, src, n, c, rows);
}

// The rollout engine's overlapped decode loop (actor/src/rollout.rs): a step's input tokens taken
// from the step before it on the device, so they need not travel through the host. tokens[i] with
// the top bit set names row (tokens[i] & 0x7fffffff) of the previous step's [R, 2] sample output
// (token, log-prob bits): it becomes that row's token. Other ids are kept. A row >= R gives token
// 0 instead of reading out of bounds. CPU reference: graph_ops::resolve_tokens_host.
extern "C" __global__ void resolve_tokens(u32* tokens, const u32* __restrict__ prev, u32 n, u32 r) { pdl_entry();
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const u32 t = tokens[i];
        if (t & 0x80000000u) {
            const u32 row = t & 0x7fffffffu;
            tokens[i] = row < r ? prev[2 * (size_t)row] : 0u;
        }
    }
}
