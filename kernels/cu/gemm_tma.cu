// D[M, N] = A[M, K] · B[N, K]ᵀ on Hopper tensor cores, loads by TMA (the tensor memory
// accelerator) from a producer warp, bf16 in, f32 accumulate, bf16 or f32 out. The second of our
// own GEMMs (the first, cu/gemm_wgmma.cu, loads by cp.async from the warps that multiply and ran at
// 0.53-0.64× of cuBLAS on the training products, docs/benchmarks.md): the base for fused
// prologues and epilogues (docs/rollout.md item 8). Compiled for sm_90a
// (kernels/src/cuda/gemm_tma.rs).
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

// A shared-memory matrix descriptor for a K-major tile in the 128-byte swizzle (as gemm_wgmma.cu).
__device__ __forceinline__ u64 tma_desc(u32 smem_addr) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)1 << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

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

__device__ __forceinline__ void tma_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void tma_wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void tma_wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// d[0..127] += A(64 × 16) · B(256 × 16)ᵀ, both from shared memory.
__device__ __forceinline__ void tma_mma_64x256x16(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 0;\n"
        "}\n"
        :
          "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(1));  // scale-d 1: accumulate onto d (zeroed before the first tile)
}

// Two adjacent outputs in one store (the address is a multiple of two elements).
__device__ __forceinline__ void tma_st2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void tma_st2(__nv_bfloat16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
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
        tma_wg_fence();
#pragma unroll
        for (u32 ks = 0; ks < TMA_BK / 16; ++ks)  // k16 steps: 32 bytes along each 128-byte row
            tma_mma_64x256x16(acc, tma_desc(a_tile + ks * 32), tma_desc(b_tile + ks * 32));
        tma_wg_commit();
        tma_wg_wait<1>();  // this thread's wgmmas of the previous tile are done: release its stage
        if (kt > 0) mbar_arrive(bars + 8 * (TMA_STAGES + (kt - 1) % TMA_STAGES));
    }
    tma_wg_wait<0>();

    // Accumulator layout of m64nN: warp w of the warpgroup holds rows 16w + lane/4 (+8); for each
    // 8-column block j, acc[4j], acc[4j+1] at columns 8j + 2(lane%4) + {0,1} of the first row and
    // acc[4j+2], acc[4j+3] at the same columns of the row 8 below.
    const u32 r_lo = row0 + wg * 64 + (warp % 4) * 16 + lane / 4;
#pragma unroll
    for (u32 j = 0; j < TMA_BN / 8; ++j) {
        const u32 c = col0 + j * 8 + 2 * (lane % 4);
#pragma unroll
        for (u32 h = 0; h < 2; ++h) {
            const u32 r = r_lo + 8 * h;
            if (r >= m) continue;
            const size_t i = (size_t)r * ldd + c;
            const float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
            if (c + 1 < n && i % 2 == 0) tma_st2(d + i, v0, v1);  // one 4- or 8-byte store
            else {
                if (c < n) st(d, i, v0);
                if (c + 1 < n) st(d, i + 1, v1);
            }
        }
    }
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
