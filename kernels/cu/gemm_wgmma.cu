// D[M, N] = A[M, K] · B[N, K]ᵀ on Hopper tensor cores (wgmma), bf16 in, f32 accumulate, bf16 or
// f32 out. Both operands K-contiguous: A is the activations [tokens, in], B an nn.Linear weight
// [out, in], so this is y = x Wᵀ. The first step toward our own GEMMs with fused prologues and
// epilogues (docs/rollout.md item 8): it must match cuBLAS on the bare product before any fusion
// can pay. Compiled for sm_90a (wgmma is arch-specific; kernels/src/cuda/gemm_wgmma.rs).
//
// Block: two consumer warpgroups (256 threads), tile BM 128 × BN 128, BK 64 per stage. Warpgroup g
// owns rows 64g..64g+63 of the tile and issues wgmma.m64n128k16 (64 f32 accumulators a thread).
// Every thread also copies: each stage is 2 × 128 rows × 128 B, 2048 16-byte cp.async chunks, 8 a
// thread. Shared layout: the 128-byte swizzle wgmma's descriptors name (row r's 16-byte chunk c
// sits at chunk c ^ (r % 8) of its 128-byte row; 8-row atoms of 1024 B, 1024-aligned), so the
// hardware reads conflict-free and no ldmatrix is needed. The cp.async helpers are mma.cuh's and
// the wgmma ones wgmma.cuh's (both prepended, kernels/src/cuda/gemm_wgmma.rs).
//
// Pipeline: STAGES buffers, PREFETCH = STAGES - 2 tiles in flight ahead of the one being
// multiplied. At tile kt: wait for its copy, fence it into the async proxy, barrier; issue four
// k16 wgmmas; wait until at most the group just issued is pending (so tile kt-1's wgmmas are done
// in this warpgroup); then copy tile kt + PREFETCH into the buffer tile kt-2 used, which every
// warpgroup finished with before this iteration's barrier. The distance of two is what lets one
// wgmma group stay in flight while the copies are issued.
//
// Bounds: rows past M or N and 16-byte chunks past K are zero-filled (nothing read). Needs K, lda
// and ldb multiples of 8 and 16-byte-aligned A and B.

#define WG_BM 128
#define WG_BN 128
#define WG_BK 64
#define WG_STAGES 4
#define WG_PREFETCH (WG_STAGES - 2)
#define WG_TILE_BYTES (WG_BM * WG_BK * 2)  // A and B tiles are both 128 × 64 bf16 = 16 KiB
#define WG_STAGE_BYTES (2 * WG_TILE_BYTES)

// Copies k-tile kt of rows [row0, row0 + 128) of X [rows, K] (stride ld) into a swizzled tile.
__device__ __forceinline__ void wg_load_tile(u32 tile, const __nv_bfloat16* x, u32 rows, u32 k, u32 ld, u32 row0,
                                             u32 kt, u32 tid) {
#pragma unroll
    for (u32 i = 0; i < (WG_BM * WG_BK / 8) / 256; ++i) {
        const u32 chunk = tid + i * 256;  // 0..1023: row chunk / 8, 16-byte chunk chunk % 8
        const u32 r = chunk / 8, c = chunk % 8;
        const u32 gr = row0 + r, gk = kt * WG_BK + c * 8;
        const bool valid = gr < rows && gk < k;
        const __nv_bfloat16* src = valid ? x + (size_t)gr * ld + gk : x;
        cp_async16(tile + r * 128 + ((c ^ (r % 8)) << 4), src, valid);
    }
}

template <typename TOut>
__device__ __forceinline__ void wg_gemm_tn(const __nv_bfloat16* __restrict__ a, const __nv_bfloat16* __restrict__ b,
                                           TOut* __restrict__ d, u32 m, u32 n, u32 k, u32 lda, u32 ldb, u32 ldd) {
    extern __shared__ unsigned char wg_smem_raw[];
    // 1024-byte alignment for the swizzle atoms (the launch asks for 1 KiB more than the stages).
    const u32 base = (mma_smem_addr(wg_smem_raw) + 1023) & ~1023u;
    const u32 tid = threadIdx.x, wg = tid / 128, lane = tid % 32, warp = (tid % 128) / 32;
    const u32 row0 = blockIdx.y * WG_BM, col0 = blockIdx.x * WG_BN;
    // Split-K (gridDim.z > 1): block z takes k-tiles [kt0, kt0 + kts) and writes its partial
    // product to slice z of d (an f32 workspace of gridDim.z slices, summed by gemm_splitk_reduce).
    const u32 k_tiles = (k + WG_BK - 1) / WG_BK, per = (k_tiles + gridDim.z - 1) / gridDim.z;
    const u32 kt0 = min(k_tiles, blockIdx.z * per), kts = min(k_tiles, kt0 + per) - kt0;
    d += (size_t)blockIdx.z * m * ldd;

    float acc[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

#pragma unroll
    for (u32 s = 0; s < WG_PREFETCH; ++s) {
        if (s < kts) {
            const u32 st = base + s * WG_STAGE_BYTES;
            wg_load_tile(st, a, m, k, lda, row0, kt0 + s, tid);
            wg_load_tile(st + WG_TILE_BYTES, b, n, k, ldb, col0, kt0 + s, tid);
        }
        cp_async_commit();
    }

    for (u32 kt = 0; kt < kts; ++kt) {
        cp_async_wait<WG_PREFETCH - 1>();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        const u32 st = base + (kt % WG_STAGES) * WG_STAGE_BYTES;
        const u32 a_tile = st + wg * 64 * 128;  // this warpgroup's 64 rows (8 atoms)
        const u32 b_tile = st + WG_TILE_BYTES;
        wg_fence();
#pragma unroll
        for (u32 ks = 0; ks < WG_BK / 16; ++ks)  // k16 steps: 32 bytes along each 128-byte row
            wg_mma_64x128x16(acc, wg_desc(a_tile + ks * 32), wg_desc(b_tile + ks * 32));
        wg_commit();
        wg_wait<1>();
        const u32 next = kt + WG_PREFETCH;
        if (next < kts) {
            const u32 sn = base + (next % WG_STAGES) * WG_STAGE_BYTES;
            wg_load_tile(sn, a, m, k, lda, row0, kt0 + next, tid);
            wg_load_tile(sn + WG_TILE_BYTES, b, n, k, ldb, col0, kt0 + next, tid);
        }
        cp_async_commit();
    }
    wg_wait<0>();

    wg_store_acc<WG_BN / 8>(d, acc, row0 + wg * 64, col0, m, n, ldd);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    gemm_wgmma_tn_bf16(const __nv_bfloat16* a, const __nv_bfloat16* b, __nv_bfloat16* d, u32 m, u32 n, u32 k,
                       u32 lda, u32 ldb, u32 ldd) {
    pdl_entry();
    wg_gemm_tn(a, b, d, m, n, k, lda, ldb, ldd);
}

extern "C" __global__ void __launch_bounds__(256, 1)
    gemm_wgmma_tn_f32(const __nv_bfloat16* a, const __nv_bfloat16* b, float* d, u32 m, u32 n, u32 k, u32 lda,
                      u32 ldb, u32 ldd) {
    pdl_entry();
    wg_gemm_tn(a, b, d, m, n, k, lda, ldb, ldd);
}

// out[i] = Σ_z ws[z][i] over `splits` f32 slices of `count` elements (split-K's second pass; fixed
// order, so the result does not depend on which block finished first).
template <typename TOut>
__device__ __forceinline__ void wg_splitk_reduce(const float* __restrict__ ws, TOut* __restrict__ out, u64 count,
                                                 u32 splits) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < count; i += (u64)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (u32 z = 0; z < splits; ++z) acc += ws[z * count + i];
        st(out, i, acc);
    }
}

extern "C" __global__ void gemm_splitk_reduce_bf16(const float* ws, __nv_bfloat16* out, u64 count, u32 splits) {
    pdl_entry();
    wg_splitk_reduce(ws, out, count, splits);
}

extern "C" __global__ void gemm_splitk_reduce_f32(const float* ws, float* out, u64 count, u32 splits) {
    pdl_entry();
    wg_splitk_reduce(ws, out, count, splits);
}
