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
// hardware reads conflict-free and no ldmatrix is needed. The cp.async helpers are mma.cuh's
// (prepended, kernels/src/cuda/gemm_wgmma.rs).
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

// A shared-memory matrix descriptor for a K-major tile in the 128-byte swizzle: start address,
// leading offset 1 (unused by this layout), stride 1024 B between 8-row atoms, swizzle mode 1.
__device__ __forceinline__ u64 wg_desc(u32 smem_addr) {
    u64 d = 0;
    d |= (u64)((smem_addr & 0x3FFFF) >> 4);
    d |= (u64)1 << 16;
    d |= (u64)(1024 >> 4) << 32;
    d |= (u64)1 << 62;
    return d;
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// d[0..63] += A(64 × 16) · B(128 × 16)ᵀ, both from shared memory.
__device__ __forceinline__ void wg_mma_64x128x16(float* d, u64 da, u64 db) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "%64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(1));  // scale-d 1: accumulate onto d (zeroed before the first tile)
}

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

// Two adjacent outputs in one store (the address is a multiple of two elements).
__device__ __forceinline__ void wg_st2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
__device__ __forceinline__ void wg_st2(__nv_bfloat16* p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
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

    // Accumulator layout of m64nN: warp w of the warpgroup holds rows 16w + lane/4 (+8); for each
    // 8-column block j, acc[4j], acc[4j+1] at columns 8j + 2(lane%4) + {0,1} of the first row and
    // acc[4j+2], acc[4j+3] at the same columns of the row 8 below.
    const u32 r_lo = row0 + wg * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (u32 j = 0; j < WG_BN / 8; ++j) {
        const u32 c = col0 + j * 8 + 2 * (lane % 4);
#pragma unroll
        for (u32 h = 0; h < 2; ++h) {
            const u32 r = r_lo + 8 * h;
            if (r >= m) continue;
            const size_t i = (size_t)r * ldd + c;
            const float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
            if (c + 1 < n && i % 2 == 0) wg_st2(d + i, v0, v1);  // one 4- or 8-byte store
            else {
                if (c < n) st(d, i, v0);
                if (c + 1 < n) st(d, i + 1, v1);
            }
        }
    }
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
