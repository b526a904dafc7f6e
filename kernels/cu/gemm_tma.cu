// D[M, N] = A[M, K] · B[N, K]ᵀ on Hopper tensor cores, loads by TMA (the tensor memory
// accelerator) from a producer warp, bf16 in, f32 accumulate, bf16 or f32 out. The second of our
// own GEMMs (the first, cu/gemm_wgmma.cu, loads by cp.async from the warps that multiply and ran at
// 0.53-0.64× of cuBLAS on the training products, docs/benchmarks.md): the base for fused
// prologues and epilogues (docs/rollout.md item 8). Compiled for sm_90a with cu/mma.cuh and
// cu/wgmma.cuh in front (kernels/src/cuda/gemm_tma.rs).
//
// Block: 288 threads. Warps 0-7 are two consumer warpgroups; warpgroup g owns rows 64g..64g+63 of
// the BM 128 × BN 256 tile and issues wgmma.m64n256k16 (128 f32 accumulators a thread). Warp 8 is
// the producer: one lane issues, per 64-wide k-tile, two TMA copies (A box 64 × 128, B box
// 64 × 256) into a ring of TMA_STAGES stages. The tensor maps (built on the host with
// cuTensorMapEncodeTiled) name the 128-byte swizzle, which lays each tile out exactly as the
// wgmma descriptors read it (row r's 16-byte chunk c at chunk c ^ (r % 8) of its 128-byte row,
// 8-row atoms of 1024 B); rows and columns past the tensor are zero-filled by the TMA unit, so
// edges need no code.
//
// Pipeline, per stage s: full[s] (the producer's arrive with the stage's byte count, completed by
// the TMA unit when both copies landed) and empty[s] (an arrive from every consumer thread once its
// wgmmas on the stage are done: wgmma.wait_group speaks for the executing thread only). The producer waits for empty before refilling; the consumers wait
// for full, issue four k16 wgmmas, commit, wait until at most this group is pending, and release
// the previous stage. No block-wide barrier inside the loop.
//
// Split-K (gridDim.z > 1): block z takes k-tiles [kt0, kt0 + kts) and writes its partial product
// to slice z of d (an f32 workspace summed by gemm_wgmma.cu's gemm_splitk_reduce).

#define TMA_BM 128
#define TMA_BN 256
#define TMA_BK 64
#define TMA_STAGES 4
#define TMA_A_BYTES (TMA_BM * TMA_BK * 2)                 // 16 KiB
#define TMA_STAGE_BYTES (TMA_A_BYTES + TMA_BN * TMA_BK * 2)  // + 32 KiB
#define TMA_THREADS 288

// A cuTensorMap (128 opaque bytes), passed by value as a __grid_constant__ parameter.
struct __align__(64) TmaMap {
    unsigned long long v[16];
};

__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
// Waits until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    u32 done;
    do {
        asm volatile(
            "{\n"
            ".reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n"
            "}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}

// One 2-D TMA copy of the box at (c0 = k, c1 = row) of `map` into shared `dst`, completing on `bar`.
__device__ __forceinline__ void tma_load_2d(u32 dst, const TmaMap* map, u32 bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];\n" ::"r"(
            dst),
        "l"(reinterpret_cast<u64>(map)), "r"(bar), "r"(c0), "r"(c1)
        : "memory");
}

template <typename TOut>
__device__ __forceinline__ void tma_gemm_tn(const TmaMap* ta, const TmaMap* tb, TOut* __restrict__ d, u32 m, u32 n,
                                            u32 k, u32 ldd) {
    extern __shared__ unsigned char tma_smem_raw[];
    // 1024-byte alignment for the swizzle atoms (the launch asks for 1 KiB more than it uses).
    const u32 base = (mma_smem_addr(tma_smem_raw) + 1023) & ~1023u;
    const u32 bars = base + TMA_STAGES * TMA_STAGE_BYTES;  // full[s] at bars + 8s, empty[s] after them
    const u32 tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const u32 row0 = blockIdx.y * TMA_BM, col0 = blockIdx.x * TMA_BN;
    const u32 k_tiles = (k + TMA_BK - 1) / TMA_BK, per = (k_tiles + gridDim.z - 1) / gridDim.z;
    const u32 kt0 = min(k_tiles, blockIdx.z * per), kts = min(k_tiles, kt0 + per) - kt0;
    d += (size_t)blockIdx.z * m * ldd;

    if (tid == 0) {
        for (u32 s = 0; s < TMA_STAGES; ++s) {
            mbar_init(bars + 8 * s, 1);                 // full: the producer's arrive (+ the bytes)
            mbar_init(bars + 8 * (TMA_STAGES + s), 256);  // empty: every consumer thread arrives
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp == 8) {
        // Producer: one lane issues every copy.
        if (lane == 0) {
            for (u32 kt = 0; kt < kts; ++kt) {
                const u32 s = kt % TMA_STAGES, use = kt / TMA_STAGES;
                if (use > 0) mbar_wait(bars + 8 * (TMA_STAGES + s), (use - 1) & 1);
                const u32 full = bars + 8 * s, st = base + s * TMA_STAGE_BYTES;
                mbar_arrive_expect_tx(full, TMA_STAGE_BYTES);
                const int kc = (int)((kt0 + kt) * TMA_BK);
                tma_load_2d(st, ta, full, kc, (int)row0);
                tma_load_2d(st + TMA_A_BYTES, tb, full, kc, (int)col0);
            }
        }
        return;
    }

    const u32 wg = warp / 4;
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
    for (u32 kt = 0; kt < kts; ++kt) {
        const u32 s = kt % TMA_STAGES;
        mbar_wait(bars + 8 * s, (kt / TMA_STAGES) & 1);
        const u32 st = base + s * TMA_STAGE_BYTES;
        const u32 a_tile = st + wg * 64 * 128;  // this warpgroup's 64 rows (8 atoms)
        const u32 b_tile = st + TMA_A_BYTES;
        wg_fence();
#pragma unroll
        for (u32 ks = 0; ks < TMA_BK / 16; ++ks)  // k16 steps: 32 bytes along each 128-byte row
            wg_mma_64x256x16(acc, wg_desc(a_tile + ks * 32), wg_desc(b_tile + ks * 32));
        wg_commit();
        wg_wait<1>();  // this thread's wgmmas of the previous tile are done: release its stage
        if (kt > 0) mbar_arrive(bars + 8 * (TMA_STAGES + (kt - 1) % TMA_STAGES));
    }
    wg_wait<0>();

    wg_store_acc<TMA_BN / 8>(d, acc, row0 + wg * 64, col0, m, n, ldd);
}

extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_tn_bf16(const __grid_constant__ TmaMap ta, const __grid_constant__ TmaMap tb, __nv_bfloat16* d, u32 m,
                     u32 n, u32 k, u32 ldd) {
    pdl_entry();
    tma_gemm_tn(&ta, &tb, d, m, n, k, ldd);
}

extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_tn_f32(const __grid_constant__ TmaMap ta, const __grid_constant__ TmaMap tb, float* d, u32 m, u32 n,
                    u32 k, u32 ldd) {
    pdl_entry();
    tma_gemm_tn(&ta, &tb, d, m, n, k, ldd);
}

// ---------------------------------------------------------------------------------------------
// Persistent ping-pong variant (gemm_tma_pp_*): what the kernel above leaves exposed at short K
// (the ring's fill at a tile's start, its epilogue at the end) hidden behind another tile's math.
// gridDim.x blocks (about one per SM) walk the 128 × 128 output tiles t = blockIdx.x + i·gridDim.x,
// row tiles outer, column tiles inner. Consumer warpgroup w takes the block's tiles i ≡ w (mod 2),
// the whole 128 × 128 tile each (two m64n128k16 a k16 step, 128 accumulators a thread); the
// producer fills the PP_STAGES-stage ring with the k-tiles of tile 0, then tile 1, ... in that
// order. The two main loops alternate through two order barriers (warpgroup w starts a tile's main
// loop once the other has issued its previous one), so one warpgroup's epilogue runs while the
// other multiplies. The alternation also keeps each warpgroup's full-barrier waits within one
// phase of the producer, as parity waits need. No split-K here (the op splits with the kernel
// above).

#define PP_BM 128
#define PP_BN 128
#define PP_STAGES 6
#define PP_A_BYTES (PP_BM * TMA_BK * 2)               // 16 KiB
#define PP_STAGE_BYTES (PP_A_BYTES + PP_BN * TMA_BK * 2)  // + 16 KiB

template <typename TOut>
__device__ __forceinline__ void tma_pp_gemm_tn(const TmaMap* ta, const TmaMap* tb, TOut* __restrict__ d, u32 m,
                                               u32 n, u32 k, u32 ldd) {
    extern __shared__ unsigned char tma_smem_raw[];
    const u32 base = (mma_smem_addr(tma_smem_raw) + 1023) & ~1023u;
    // full[s] at bars + 8s, empty[s] at bars + 8(S + s), order[w] at bars + 8(2S + w).
    const u32 bars = base + PP_STAGES * PP_STAGE_BYTES;
    const u32 order = bars + 8 * 2 * PP_STAGES;
    const u32 tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const u32 n_ct = (n + PP_BN - 1) / PP_BN, tiles = ((m + PP_BM - 1) / PP_BM) * n_ct;
    const u32 kts = (k + TMA_BK - 1) / TMA_BK;

    if (tid == 0) {
        for (u32 s = 0; s < PP_STAGES; ++s) {
            mbar_init(bars + 8 * s, 1);                  // full: the producer's arrive (+ the bytes)
            mbar_init(bars + 8 * (PP_STAGES + s), 128);  // empty: the consuming warpgroup's threads
        }
        mbar_init(order, 128);      // order[0]: warpgroup 1 has issued a main loop
        mbar_init(order + 8, 128);  // order[1]: warpgroup 0 has issued a main loop
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (warp == 8) {
        if (lane == 0) {
            u32 g = 0;  // k-tiles issued so far, over all of the block's tiles
            for (u32 t = blockIdx.x; t < tiles; t += gridDim.x) {
                const int row0 = (int)((t / n_ct) * PP_BM), col0 = (int)((t % n_ct) * PP_BN);
                for (u32 kt = 0; kt < kts; ++kt, ++g) {
                    const u32 s = g % PP_STAGES, use = g / PP_STAGES;
                    if (use > 0) mbar_wait(bars + 8 * (PP_STAGES + s), (use - 1) & 1);
                    const u32 full = bars + 8 * s, st = base + s * PP_STAGE_BYTES;
                    mbar_arrive_expect_tx(full, PP_STAGE_BYTES);
                    tma_load_2d(st, ta, full, (int)(kt * TMA_BK), row0);
                    tma_load_2d(st + PP_A_BYTES, tb, full, (int)(kt * TMA_BK), col0);
                }
            }
        }
        return;
    }

    const u32 wg = warp / 4;
    float acc[128];
    u32 j = 0;  // this warpgroup's tiles so far
    for (u32 i = wg, t = blockIdx.x + wg * gridDim.x; t < tiles; i += 2, t += 2 * gridDim.x, ++j) {
        // Warpgroup 0 waits for warpgroup 1's previous main loop (none before its first tile),
        // warpgroup 1 for warpgroup 0's main loop of the tile before this one.
        if (wg == 1) mbar_wait(order + 8, j & 1);
        else if (j > 0) mbar_wait(order, (j - 1) & 1);
#pragma unroll
        for (int e = 0; e < 128; ++e) acc[e] = 0.0f;
        const u32 g0 = i * kts;
        for (u32 kt = 0; kt < kts; ++kt) {
            const u32 g = g0 + kt, s = g % PP_STAGES;
            mbar_wait(bars + 8 * s, (g / PP_STAGES) & 1);
            const u32 a_tile = base + s * PP_STAGE_BYTES, b_tile = a_tile + PP_A_BYTES;
            wg_fence();
#pragma unroll
            for (u32 ks = 0; ks < TMA_BK / 16; ++ks) {
                const u64 db = wg_desc(b_tile + ks * 32);
                wg_mma_64x128x16(acc, wg_desc(a_tile + ks * 32), db);              // rows 0..63
                wg_mma_64x128x16(acc + 64, wg_desc(a_tile + 8192 + ks * 32), db);  // rows 64..127
            }
            wg_commit();
            wg_wait<1>();  // this thread's wgmmas of the previous k-tile are done: release its stage
            if (kt > 0) mbar_arrive(bars + 8 * (PP_STAGES + (g - 1) % PP_STAGES));
        }
        mbar_arrive(order + 8 * (1 - wg));  // the other warpgroup may start its main loop
        wg_wait<0>();
        if (kts > 0) mbar_arrive(bars + 8 * (PP_STAGES + (g0 + kts - 1) % PP_STAGES));
        const u32 row0 = (t / n_ct) * PP_BM, col0 = (t % n_ct) * PP_BN;
        wg_store_acc<PP_BN / 8>(d, acc, row0, col0, m, n, ldd);
        wg_store_acc<PP_BN / 8>(d, acc + 64, row0 + 64, col0, m, n, ldd);
    }
}

extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_pp_tn_bf16(const __grid_constant__ TmaMap ta, const __grid_constant__ TmaMap tb, __nv_bfloat16* d,
                        u32 m, u32 n, u32 k, u32 ldd) {
    pdl_entry();
    tma_pp_gemm_tn(&ta, &tb, d, m, n, k, ldd);
}

extern "C" __global__ void __launch_bounds__(TMA_THREADS, 1)
    gemm_tma_pp_tn_f32(const __grid_constant__ TmaMap ta, const __grid_constant__ TmaMap tb, float* d, u32 m, u32 n,
                       u32 k, u32 ldd) {
    pdl_entry();
    tma_pp_gemm_tn(&ta, &tb, d, m, n, k, ldd);
}
