// Tensor-core (mma.sync m16n8k16, bf16 in, f32 accumulate) flash attention for bf16 inputs:
// causal GQA over packed sequences, same contract and layout as attention.cu, whose CUDA-core
// kernels remain the f32 path and the fallback for head dims that are not a multiple of 16.
// The mma / ldmatrix / cp.async primitives and the fragment layouts are in mma.cuh (prepended).
// A C fragment of S = Q K^T over 16 keys is, pair for pair, the A fragment of P for P V: the
// probabilities never leave registers. Operands reach registers through ldmatrix (.trans for the
// B operands whose k runs along shared-memory rows); tiles stream in with cp.async through a ring
// of STAGES buffers so that the next tiles' loads overlap this tile's math. Shared-memory rows are padded
// by 8 bf16 (16 bytes), so the 8 row addresses of an ldmatrix hit 8 different bank groups.
// Softmax runs in base 2 with scale·log2 e folded in; masks only on tiles that cross the
// diagonal or a sequence end.
//
// Kernels:
//   attention_fa_fwd    one block per (query tile, query head): out, lse.
//   attention_fa_delta  delta = rowsum(dout ∘ out), the backward's preprocessing;
//                       attention_fa_delta_rope also builds the cos/sin table of the fused RoPE.
//   attention_fa_bwd    one block per (key tile, query head): dk, dv (and, unless SPLIT_DQ, dq by
//                       f32 reductions), into f32 buffers.
//   attention_fa_dq     (SPLIT_DQ) one block per (query tile, query head): dq without atomics,
//                       recomputing S and dP.
//   attention_fa_finish f32 accumulator -> bf16 output (attention_fa_finish_rope: rotated by -a).
//
// Fused RoPE backward (attention_backward_rope): q and k enter attention already rotated, so the
// gradients of the unrotated q, k are dq, dk rotated back by -a (HF rotate_half pairs d, d + D/2).
// The rotation is applied where dq and dk are stored (attention_fa_dq's epilogue, or
// attention_fa_finish_rope on the f32 accumulators; dk is the GQA group's sum, and the rotation is
// linear, so the sum is rotated) instead of by two rope_backward passes over dq and dk. cos/sin
// come from a [N][D] f32 table (cos a at i, -sin a at D/2 + i, rope.cu's layout for sign -1)
// built by attention_fa_delta_rope with the arithmetic of rope.cu (rope_cos_sin), once per token
// rather than per head.
//
// Compile-time parameters (defaults in brackets):
//   HEAD_DIM (D, a multiple of 16, at most 128)
//   FWD_WARPS [4], FWD_MT [1]: forward warps per block and 16-row m-tiles per warp
//                             (query tile BM = 16 · FWD_WARPS · FWD_MT rows)
//   FWD_MINB [1]: forward blocks per SM in launch bounds (caps the registers)
//   BWD_WARPS [4]: backward warps per block, 16 keys each (key tile BK = 16 · BWD_WARPS)
//   BQ [64]: backward query tile rows; BWD_MINB [1]: backward blocks per SM in launch bounds
//   SPLIT_DQ [0]: dq by attention_fa_dq instead of atomics from the backward
//   SCHED [0]: 1 = blocks in order of decreasing work over all sequences (see tile_of)
//   STAGES [2]: depth of the cp.async ring that streams K/V (forward, dq) or Q/dO (backward)
//               tiles: STAGES - 1 tiles are in flight while one is computed on
//   LEAN [0]: 1 = the tile loader fully unrolled over compile-time row counts (no remainder
//             loops), and the backward's per-query-tile lse / delta rows staged by 4-byte cp.async
//             in the tile's commit group instead of plain loads whose shared stores stall the
//             two warps that issue them (lse is scaled by log2 e where it is used; rows past the
//             sequence get zeros instead of +inf, which the edge mask already zeroes). Same results
//             bit for bit.

#ifndef HEAD_DIM
#error "compile with -DHEAD_DIM=<D>"
#endif
#ifndef FWD_WARPS
#define FWD_WARPS 4
#endif
#ifndef FWD_MT
#define FWD_MT 1
#endif
#ifndef FWD_MINB
#define FWD_MINB 1
#endif
#ifndef BWD_WARPS
#define BWD_WARPS 4
#endif
#ifndef BQ
#define BQ 64
#endif
#ifndef BWD_MINB
#define BWD_MINB 1
#endif
#ifndef SPLIT_DQ
#define SPLIT_DQ 0
#endif
#ifndef SCHED
#define SCHED 0
#endif
#ifndef STAGES
#define STAGES 2
#endif
#ifndef LEAN
#define LEAN 0
#endif
static_assert(STAGES >= 2 && STAGES <= 4, "2 to 4 pipeline stages");

#define D HEAD_DIM
#define FWD_THREADS (32 * FWD_WARPS)
#define BM (16 * FWD_WARPS * FWD_MT)  // query rows per forward block
#define BN 64                         // keys per forward (and dq) tile
#define BWD_THREADS (32 * BWD_WARPS)
#define BK (16 * BWD_WARPS)           // keys per backward block
#define DQ_WARPS 4
#define DQ_THREADS (32 * DQ_WARPS)
#define BMQ (16 * DQ_WARPS)           // query rows per dq block
#define LDS (D + 8)                   // smem row stride of the [rows][D] tiles, in bf16
#define LDST (BQ + 8)                 // row stride of the backward's dS^T tile [key][query]
#define NT_D (D / 8)                  // n-tiles over the head dim
#define KS_D (D / 16)                 // k-steps over the head dim

typedef __nv_bfloat16 bf16;

// ---------------------------------------------------------------------------------------------
// Register-level primitives.

// Four 8x8 b16 matrices; lane l gives the row address of matrix l / 8, row l % 8.
__device__ __forceinline__ void ldsm4(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(mma_smem_addr(p)));
}
__device__ __forceinline__ void ldsm4t(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(mma_smem_addr(p)));
}
__device__ __forceinline__ void ldsm2t(u32* r, const bf16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(mma_smem_addr(p)));
}

// A fragment (16x16, rows r0.., k c0..) of a row-major smem tile with row stride ld.
__device__ __forceinline__ void frag_a(u32* a, const bf16* s, u32 ld, u32 r0, u32 c0, u32 lane) {
    ldsm4(a, s + (r0 + lane % 16) * ld + c0 + (lane / 16) * 8);
}
// One n-tile's B fragment from a tile stored [k][n].
__device__ __forceinline__ void frag_b_kn1(u32* b, const bf16* s, u32 ld, u32 k0, u32 n0, u32 lane) {
    ldsm2t(b, s + (k0 + ((lane / 8) % 2) * 8 + lane % 8) * ld + n0);
}

// The A operand (P or dS, 16 rows x 16 columns 16·c16..) packed to bf16 from C fragments s[j]
// (8 columns each).
__device__ __forceinline__ void c_to_a(u32* a, const float (*s)[4], int c16) {
    a[0] = mma_pack2(s[2 * c16][0], s[2 * c16][1]);
    a[1] = mma_pack2(s[2 * c16][2], s[2 * c16][3]);
    a[2] = mma_pack2(s[2 * c16 + 1][0], s[2 * c16 + 1][1]);
    a[3] = mma_pack2(s[2 * c16 + 1][2], s[2 * c16 + 1][3]);
}

// ---------------------------------------------------------------------------------------------
// Global -> shared.


// `rows` rows of D bf16 (token stride `stride` elements, head offset `hoff`) from token row0 on
// into tile[rows][LDS], asynchronously, zeros past `valid` rows; the caller commits and waits.
// Every kernel stages its Q, K, V, dO tiles through this one loader.
template <int NTHREADS>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* x, u32 row0, u32 rows, u32 valid,
                                                size_t stride, size_t hoff) {
    const u32 chunks = D / 8;
    for (u32 idx = threadIdx.x; idx < rows * chunks; idx += NTHREADS) {
        const u32 r = idx / chunks, c = (idx % chunks) * 8;
        const bool ok = r < valid;
        cp_async16(tile + r * LDS + c, ok ? x + (size_t)(row0 + r) * stride + hoff + c : x, ok);
    }
}

#if LEAN
// load_tile_async with the row count a template argument: when the block's threads divide the
// tile's 16-byte chunks, every thread copies ROWS · D / 8 / NTHREADS chunks in a fully unrolled
// loop whose shared offsets are constants from the thread's first one.
template <int NTHREADS, int ROWS>
__device__ __forceinline__ void load_rows_async(bf16* tile, const bf16* x, u32 row0, u32 valid, size_t stride,
                                                size_t hoff) {
    constexpr u32 chunks = D / 8, items = ROWS * chunks;
    if constexpr (items % NTHREADS == 0 && NTHREADS % chunks == 0) {
        constexpr u32 rows_per_pass = NTHREADS / chunks;
        const u32 r0 = threadIdx.x / chunks, c = (threadIdx.x % chunks) * 8;
        const u32 dst = mma_smem_addr(tile + r0 * LDS + c);
        const bf16* src = x + (size_t)(row0 + r0) * stride + hoff + c;
#pragma unroll
        for (u32 i = 0; i < items / NTHREADS; ++i) {
            const u32 r = r0 + i * rows_per_pass;
            const bool ok = r < valid;
            cp_async16(dst + i * rows_per_pass * LDS * 2, ok ? src + (size_t)i * rows_per_pass * stride : x, ok);
        }
    } else {
        load_tile_async<NTHREADS>(tile, x, row0, ROWS, valid, stride, hoff);
    }
}
#define LOAD_ROWS(NT, ROWS, tile, x, row0, valid, stride, hoff) \
    load_rows_async<NT, ROWS>(tile, x, row0, valid, stride, hoff)
#else
#define LOAD_ROWS(NT, ROWS, tile, x, row0, valid, stride, hoff) \
    load_tile_async<NT>(tile, x, row0, ROWS, valid, stride, hoff)
#endif

// 4 bytes global -> shared, zero-filled (nothing read) when !valid.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(mma_smem_addr(dst)), "l"(src),
                 "r"(valid ? 4 : 0));
}

// p[0] += a, p[1] += b in one reduction (8-byte aligned p).
__device__ __forceinline__ void red2(float* p, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(a), "f"(b) : "memory");
}

// ---------------------------------------------------------------------------------------------
// Which (query head, sequence, tile) a block works on. Tiles start at each sequence's start, so
// the host needs no copy of cu_seqlens: the grid is (an upper bound on the tiles, H).
// The work of tile i of a sequence with nt tiles grows with i + 1 in the forward (keys 0..) and
// with nt - i in the backward (queries after the key tile): `work_grows` says which.

// Tile `tile` in sequence order.
__device__ __forceinline__ bool locate(const u32* cu, u32 n_seqs, u32 tile, u32 rows, u32& start, u32& len,
                                       u32& t0) {
    for (u32 s = 0; s < n_seqs; ++s) {
        const u32 a = cu[s], b = cu[s + 1];
        const u32 l = b > a ? b - a : 0;
        const u32 nt = (l + rows - 1) / rows;
        if (tile < nt) {
            start = a;
            len = l;
            t0 = tile * rows;
            return true;
        }
        tile -= nt;
    }
    return false;
}

// The `rank`-th tile in order of decreasing work over all sequences (up to 32 of them: lane s
// holds sequence s; ties by sequence). Every lane of the warp calls it with the same rank.
__device__ __forceinline__ bool locate_by_work(const u32* cu, u32 n_seqs, u32 rank, u32 rows, bool work_grows,
                                               u32& start, u32& len, u32& t0) {
    const u32 lane = threadIdx.x % 32;
    u32 a = 0, l = 0, nt = 0;
    if (lane < n_seqs) {
        a = cu[lane];
        const u32 b = cu[lane + 1];
        l = b > a ? b - a : 0;
        nt = (l + rows - 1) / rows;
    }
    u32 max_nt = nt;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) max_nt = max(max_nt, __shfl_xor_sync(0xffffffffu, max_nt, o));
    for (u32 w = max_nt; w >= 1; --w) {
        const u32 with_w = __ballot_sync(0xffffffffu, nt >= w);  // sequences with a tile of work w
        const u32 c = __popc(with_w);
        if (rank < c) {
            u32 m = with_w;
            for (u32 i = 0; i < rank; ++i) m &= m - 1;
            const int s = __ffs(m) - 1;
            start = __shfl_sync(0xffffffffu, a, s);
            len = __shfl_sync(0xffffffffu, l, s);
            const u32 nts = __shfl_sync(0xffffffffu, nt, s);
            t0 = (work_grows ? w - 1 : nts - w) * rows;
            return true;
        }
        rank -= c;
    }
    return false;
}

// SCHED 0: grid (tiles, heads) in sequence order (in the forward, the last, longest query tiles
// of a sequence first). SCHED 1 (up to 32 sequences): linear block id b, head b % H (the heads
// of a kv group run side by side and share K/V in L2), tiles by decreasing work over all
// sequences, so the longest blocks start first and the grid ends on short ones.
__device__ __forceinline__ bool tile_of(const u32* cu, u32 n_seqs, u32 H, u32 rows, bool work_grows, u32& h,
                                        u32& start, u32& len, u32& t0) {
#if SCHED
    if (n_seqs <= 32) {
        const u32 b = blockIdx.y * gridDim.x + blockIdx.x;
        h = b % H;
        return locate_by_work(cu, n_seqs, b / H, rows, work_grows, start, len, t0);
    }
#endif
    h = blockIdx.y;
    if (!locate(cu, n_seqs, blockIdx.x, rows, start, len, t0)) return false;
    if (work_grows) t0 = ((len + rows - 1) / rows - 1) * rows - t0;
    return true;
}

// A block over one query tile (forward, dq): query head h, kv head kvh, sequence start / len,
// first row q0 and rows qn of the tile.
struct QueryTile {
    u32 h, kvh, start, len, q0, qn;
};
__device__ __forceinline__ bool query_tile(const u32* cu, u32 n_seqs, u32 H, u32 KH, u32 rows, QueryTile& tile) {
    if (!tile_of(cu, n_seqs, H, rows, true, tile.h, tile.start, tile.len, tile.q0)) return false;
    tile.kvh = tile.h / (H / KH);
    tile.qn = min(rows, tile.len - tile.q0);
    return true;
}

// The key and value tiles (BN keys) a query tile attends to, streamed through a ring of STAGES
// shared-memory slots: the forward and the dq kernel walk them the same way.
template <int NTHREADS>
struct KvRing {
    bf16* Ks;  // [STAGES][BN][LDS]
    bf16* Vs;  // [STAGES][BN][LDS]
    const bf16* k;
    const bf16* v;
    u32 start, len, n_kt;  // sequence start and length, key tiles up to the diagonal
    size_t ks, kvoff;      // token stride of k / v, offset of the kv head

    // Key tile kt into slot kt % STAGES; one commit group per call (empty past the last tile).
    __device__ __forceinline__ void stage(u32 kt) const {
        if (kt < n_kt) {
            const u32 k0 = kt * BN, kn = min((u32)BN, len - k0);
            LOAD_ROWS(NTHREADS, BN, Ks + (kt % STAGES) * BN * LDS, k, start + k0, kn, ks, kvoff);
            LOAD_ROWS(NTHREADS, BN, Vs + (kt % STAGES) * BN * LDS, v, start + k0, kn, ks, kvoff);
        }
        cp_async_commit();
    }
    __device__ __forceinline__ const bf16* keys(u32 kt) const { return Ks + (kt % STAGES) * BN * LDS; }
    __device__ __forceinline__ const bf16* values(u32 kt) const { return Vs + (kt % STAGES) * BN * LDS; }
};

// ---------------------------------------------------------------------------------------------
// Forward: one block per (query tile of BM rows, query head); warp w owns rows
// 16·FWD_MT·w .. +16·FWD_MT (FWD_MT m-tiles that share every K and V fragment load).

extern "C" __global__ void __launch_bounds__(FWD_THREADS, FWD_MINB)
    attention_fa_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,
                     const u32* __restrict__ cu, bf16* __restrict__ out, float* __restrict__ lse, u32 n_seqs,
                     u32 H, u32 KH, float scale) { pdl_entry();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [BM][LDS]
    bf16* Ks = Qs + BM * LDS;                        // [STAGES][BN][LDS]
    bf16* Vs = Ks + STAGES * BN * LDS;               // [STAGES][BN][LDS]

    QueryTile tile;
    if (!query_tile(cu, n_seqs, H, KH, BM, tile)) return;
    const u32 h = tile.h, start = tile.start, len = tile.len, q0 = tile.q0, qn = tile.qn;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const size_t qs = (size_t)H * D;
    const float sl2 = scale * MMA_LOG2E;
    const u32 n_kt = (q0 + qn + BN - 1) / BN;
    const KvRing<FWD_THREADS> ring{Ks, Vs, k, v, start, len, n_kt, (size_t)KH * D, (size_t)tile.kvh * D};

    LOAD_ROWS(FWD_THREADS, BM, Qs, q, start + q0, qn, qs, (size_t)h * D);
#pragma unroll
    for (u32 i = 0; i < STAGES - 1; ++i) ring.stage(i);

    const u32 wr0 = warp * 16 * FWD_MT;  // the warp's first row in the tile
    // Warp-uniform: the warp has real rows, and the last of them (keys past it are all masked).
    const bool has_rows = wr0 < qn;
    const u32 last_row = q0 + min(wr0 + 16 * FWD_MT, qn) - 1;
    u32 qa[FWD_MT][KS_D][4];
    float o[FWD_MT][NT_D][4], m[FWD_MT][2], l[FWD_MT][2];
#pragma unroll
    for (int mt = 0; mt < FWD_MT; ++mt) {
#pragma unroll
        for (int n = 0; n < NT_D; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }

    for (u32 kt = 0; kt < n_kt; ++kt) {
        const u32 k0 = kt * BN;
        const bf16* Kc = ring.keys(kt);
        const bf16* Vc = ring.values(kt);
        cp_async_wait<STAGES - 2>();  // tile kt (and Q) landed
        __syncthreads();        // ... for every thread; and the slot of tile kt - 1 is free
        ring.stage(kt + STAGES - 1);
        if (kt == 0) {
#pragma unroll
            for (int mt = 0; mt < FWD_MT; ++mt)
#pragma unroll
                for (int kk = 0; kk < KS_D; ++kk) frag_a(qa[mt][kk], Qs, LDS, wr0 + 16 * mt, kk * 16, lane);
        }

        if (has_rows && k0 <= last_row) {
            float s[FWD_MT][BN / 8][4];
#pragma unroll
            for (int mt = 0; mt < FWD_MT; ++mt)
#pragma unroll
                for (int j = 0; j < BN / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS_D; ++kk)
#pragma unroll
                for (int jp = 0; jp < BN / 16; ++jp) {
                    u32 b[4];
                    mma_frag_b_nk(b, Kc, LDS, jp * 16, kk * 16, lane);
#pragma unroll
                    for (int mt = 0; mt < FWD_MT; ++mt) {
                        mma_16816(s[mt][2 * jp], qa[mt][kk], b[0], b[1]);
                        mma_16816(s[mt][2 * jp + 1], qa[mt][kk], b[2], b[3]);
                    }
                }

            // Scores in log2 units, masked where the tile crosses the diagonal or an end.
            const bool edge = k0 + BN > q0 + wr0 || k0 + BN > len || q0 + wr0 + 16 * FWD_MT > len;
#pragma unroll
            for (int mt = 0; mt < FWD_MT; ++mt) {
                float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
                for (int j = 0; j < BN / 8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = s[mt][j][e] * sl2;
                        if (edge) {
                            const u32 key = k0 + j * 8 + 2 * t + (e & 1);
                            const u32 qp = q0 + wr0 + 16 * mt + g + 8 * (e >> 1);
                            if (!(key <= qp && key < len && qp < len)) x = -INFINITY;
                        }
                        s[mt][j][e] = x;
                        mx[e >> 1] = fmaxf(mx[e >> 1], x);
                    }
                float alpha[2], rs[2] = {0.0f, 0.0f};
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                    const float mn = fmaxf(m[mt][r], mx[r]);
                    alpha[r] = mn == -INFINITY ? 1.0f : mma_ex2(m[mt][r] - mn);
                    mx[r] = mn == -INFINITY ? 0.0f : mn;  // subtrahend: 2^(-inf - 0) = 0 for dead rows
                    m[mt][r] = mn;
                }
#pragma unroll
                for (int j = 0; j < BN / 8; ++j)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const float p = mma_ex2(s[mt][j][e] - mx[e >> 1]);
                        s[mt][j][e] = p;
                        rs[e >> 1] += p;
                    }
#pragma unroll
                for (int r = 0; r < 2; ++r) l[mt][r] = l[mt][r] * alpha[r] + rs[r];  // quad sums at the end
#pragma unroll
                for (int n = 0; n < NT_D; ++n) {
                    o[mt][n][0] *= alpha[0];
                    o[mt][n][1] *= alpha[0];
                    o[mt][n][2] *= alpha[1];
                    o[mt][n][3] *= alpha[1];
                }
            }

            // O += P V, 16 keys per k-step; each V fragment serves the warp's FWD_MT m-tiles.
#pragma unroll
            for (int ks16 = 0; ks16 < BN / 16; ++ks16) {
                u32 a[FWD_MT][4];
#pragma unroll
                for (int mt = 0; mt < FWD_MT; ++mt) c_to_a(a[mt], s[mt], ks16);
#pragma unroll
                for (int np = 0; np < NT_D / 2; ++np) {
                    u32 b[4];
                    mma_frag_b_kn(b, Vc, LDS, ks16 * 16, np * 16, lane);
#pragma unroll
                    for (int mt = 0; mt < FWD_MT; ++mt) {
                        mma_16816(o[mt][2 * np], a[mt], b[0], b[1]);
                        mma_16816(o[mt][2 * np + 1], a[mt], b[2], b[3]);
                    }
                }
            }
        }
    }

#pragma unroll
    for (int mt = 0; mt < FWD_MT; ++mt)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float lr = l[mt][r];
            lr += __shfl_xor_sync(0xffffffffu, lr, 1);
            lr += __shfl_xor_sync(0xffffffffu, lr, 2);
            const u32 row = wr0 + 16 * mt + g + 8 * r;
            if (row < qn) {
                const size_t base = (size_t)(start + q0 + row) * qs + (size_t)h * D;
                const float inv = 1.0f / lr;
#pragma unroll
                for (int n = 0; n < NT_D; ++n)
                    *reinterpret_cast<u32*>(out + base + n * 8 + 2 * t) =
                        mma_pack2(o[mt][n][2 * r] * inv, o[mt][n][2 * r + 1] * inv);
                if (t == 0) lse[(size_t)(start + q0 + row) * H + h] = (m[mt][r] + log2f(lr)) * MMA_LN2;
            }
        }
}

// delta[n, h] = sum_d dout * out, one warp per (token, head) row.
__device__ __forceinline__ void fa_delta_rows(const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                              float* __restrict__ delta, u32 rows) {
    const u32 w = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (w >= rows) return;
    const size_t base = (size_t)w * D;
    float acc = 0.0f;
    for (u32 d = lane; d < D; d += 32) acc += __bfloat162float(dout[base + d]) * __bfloat162float(out[base + d]);
    acc = warp_sum(acc);
    if (lane == 0) delta[w] = acc;
}

extern "C" __global__ void attention_fa_delta(const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                              float* __restrict__ delta, u32 rows) { pdl_entry();
    fa_delta_rows(dout, out, delta, rows);
}

// The delta, and the inverse rotation's table for the fused RoPE backward: tab[t][i] = cos a,
// tab[t][D/2 + i] = -sin a for pair i at position pos[t], one (token, pair) per thread
// (grid-stride). Done in this launch, which the backward needs anyway, so the table costs no
// launch of its own; the f64 evaluation is done once per token, not once per head.
extern "C" __global__ void attention_fa_delta_rope(const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                                   float* __restrict__ delta, u32 rows, const u32* __restrict__ pos,
                                                   float* __restrict__ tab, u32 n_tok, float theta) { pdl_entry();
    const u64 pairs = (u64)n_tok * (D / 2), stride = (u64)gridDim.x * blockDim.x;
    for (u64 idx = blockIdx.x * (u64)blockDim.x + threadIdx.x; idx < pairs; idx += stride) {
        const u32 tok = (u32)(idx / (D / 2)), i = (u32)(idx % (D / 2));
        float c, s;
        rope_cos_sin(pos[tok], i, D, theta, &c, &s);
        tab[(size_t)tok * D + i] = c;
        tab[(size_t)tok * D + D / 2 + i] = -s;
    }
    fa_delta_rows(dout, out, delta, rows);
}

// ---------------------------------------------------------------------------------------------
// Backward: one block per (key tile of BK keys, query head h); warp w owns keys 16w..16w+15 and
// keeps their dk, dv (for head h) in registers over the query tiles (BQ rows) at or after the key
// tile. Per query tile:
//   S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//   dv += P^T dO, dk += dS^T Q (A operands straight from the C fragments),
//   unless SPLIT_DQ: dq += dS K via the bf16 dS^T tile in shared memory (ldmatrix.trans gives dS's
//   A fragments), reduced into the f32 dq_acc.
// At the end dk, dv are reduced into f32 [N,K,D] (the query heads of a group add up there); dq
// and dk are not yet multiplied by `scale`. A warp whose keys all come after the tile's queries
// skips the tile (its dS^T rows are zeros).

#if !SPLIT_DQ
// dq work split: BQ / 16 row groups of 16 queries, BWD_WARPS / (BQ / 16) warps per row group
// sharing the NT_D n-tiles of the head dim.
#define DQ_RG (BQ / 16)
#define DQ_WPR (BWD_WARPS / DQ_RG)
#define DQ_NTW (NT_D / DQ_WPR)
static_assert(DQ_WPR >= 1 && NT_D % DQ_WPR == 0, "BQ / 16 row groups must split the warps and head dim evenly");
static_assert(BK % BQ == 0, "query tiles must start at key tiles' starts");
#endif

__device__ __forceinline__ void fa_bwd_body(const bf16* __restrict__ dout, const bf16* __restrict__ q,
                                            const bf16* __restrict__ k, const bf16* __restrict__ v,
                                            const float* __restrict__ lse, const float* __restrict__ delta,
                                            const u32* __restrict__ cu, float* dq_acc, float* dk_out, float* dv_out,
                                            u32 n_seqs, u32 H, u32 KH, float scale) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Ks = reinterpret_cast<bf16*>(smem_raw);     // [BK][LDS]
    bf16* Vs = Ks + BK * LDS;                          // [BK][LDS]
    bf16* Qs = Vs + BK * LDS;                          // [STAGES][BQ][LDS]
    bf16* dOs = Qs + STAGES * BQ * LDS;                // [STAGES][BQ][LDS]
    float* lse_s = reinterpret_cast<float*>(dOs + STAGES * BQ * LDS);  // [STAGES][BQ] (times log2 e unless LEAN)
    float* delta_s = lse_s + STAGES * BQ;                                // [STAGES][BQ]
#if !SPLIT_DQ
    bf16* dSt = reinterpret_cast<bf16*>(delta_s + STAGES * BQ);  // [BK][LDST]  dS^T[key][query]
#endif

    u32 h, start, len, k0;
    if (!tile_of(cu, n_seqs, H, BK, false, h, start, len, k0)) return;
    const u32 kvh = h / (H / KH);
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const u32 kn = min((u32)BK, len - k0);
    const size_t qs = (size_t)H * D, ks = (size_t)KH * D;
    const float sl2 = scale * MMA_LOG2E;

    const u32 qt0 = k0 / BQ, n_qt = (len + BQ - 1) / BQ;
    // Query tile qt into ring slot (qt - qt0) % STAGES (async for Q, dO; plain for lse, delta);
    // one commit group per tile (empty past the last).
    auto stage = [&](u32 qt) {
        if (qt < n_qt) {
            const u32 b = (qt - qt0) % STAGES;
            const u32 q0 = qt * BQ, qn = min((u32)BQ, len - q0);
            LOAD_ROWS(BWD_THREADS, BQ, Qs + b * BQ * LDS, q, start + q0, qn, qs, (size_t)h * D);
            LOAD_ROWS(BWD_THREADS, BQ, dOs + b * BQ * LDS, dout, start + q0, qn, qs, (size_t)h * D);
#if LEAN
            // One 4-byte copy per thread and row (lse rows, then delta rows), in this tile's group.
            for (u32 i = threadIdx.x; i < 2 * BQ; i += BWD_THREADS) {
                const u32 r = i % BQ;
                const float* src = i < BQ ? lse : delta;
                cp_async4((i < BQ ? lse_s : delta_s) + b * BQ + r, src + (size_t)(start + q0 + r) * H + h, r < qn);
            }
#else
            for (u32 r = threadIdx.x; r < BQ; r += BWD_THREADS) {
                const size_t row = (size_t)(start + q0 + r) * H + h;
                lse_s[b * BQ + r] = r < qn ? lse[row] * MMA_LOG2E : INFINITY;
                delta_s[b * BQ + r] = r < qn ? delta[row] : 0.0f;
            }
#endif
        }
        cp_async_commit();
    };
    LOAD_ROWS(BWD_THREADS, BK, Ks, k, start + k0, kn, ks, (size_t)kvh * D);
    LOAD_ROWS(BWD_THREADS, BK, Vs, v, start + k0, kn, ks, (size_t)kvh * D);
#pragma unroll
    for (u32 i = 0; i < STAGES - 1; ++i) stage(qt0 + i);

    const u32 kw0 = k0 + warp * 16;  // the warp's first key
    const u32 kr0 = warp * 16 + g;
    const u32 kpos[2] = {k0 + kr0, k0 + kr0 + 8};
    float dk_acc[NT_D][4], dv_acc[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.0f;

#if !SPLIT_DQ
    const u32 dq_row = (warp % DQ_RG) * 16, dq_n0 = (warp / DQ_RG) * DQ_NTW;
#endif

    for (u32 qt = qt0; qt < n_qt; ++qt) {
        const u32 b = (qt - qt0) % STAGES;
        const u32 q0 = qt * BQ, qn = min((u32)BQ, len - q0);
        cp_async_wait<STAGES - 2>();  // tile qt (and K, V) landed
        __syncthreads();        // ... for every thread (lse, delta too); tile qt - 1's slot and dS^T are free
        stage(qt + STAGES - 1);
        const bf16* Qc = Qs + b * BQ * LDS;
        const bf16* dOc = dOs + b * BQ * LDS;
        const float* lse_c = lse_s + b * BQ;
        const float* delta_c = delta_s + b * BQ;

        if (kw0 < len && kw0 < q0 + qn) {  // warp-uniform: some key of the warp sees some query
            float st[BQ / 8][4], dpt[BQ / 8][4];
#pragma unroll
            for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) st[j][e] = dpt[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS_D; ++kk) {
                u32 ka[4], va[4];
                frag_a(ka, Ks, LDS, warp * 16, kk * 16, lane);
                frag_a(va, Vs, LDS, warp * 16, kk * 16, lane);
#pragma unroll
                for (int jp = 0; jp < BQ / 16; ++jp) {
                    u32 bq[4], bo[4];
                    mma_frag_b_nk(bq, Qc, LDS, jp * 16, kk * 16, lane);
                    mma_frag_b_nk(bo, dOc, LDS, jp * 16, kk * 16, lane);
                    mma_16816(st[2 * jp], ka, bq[0], bq[1]);
                    mma_16816(st[2 * jp + 1], ka, bq[2], bq[3]);
                    mma_16816(dpt[2 * jp], va, bo[0], bo[1]);
                    mma_16816(dpt[2 * jp + 1], va, bo[2], bo[3]);
                }
            }
            const bool edge = q0 < kw0 + 16 || q0 + BQ > len || kw0 + 16 > len;
#pragma unroll
            for (int j = 0; j < BQ / 8; ++j) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const u32 qi = j * 8 + 2 * t + (e & 1);
#if LEAN
                    // __fmul_rn: never contracted, so the same bits as the staged product below.
                    float p = mma_ex2(st[j][e] * sl2 - __fmul_rn(lse_c[qi], MMA_LOG2E));
#else
                    float p = mma_ex2(st[j][e] * sl2 - lse_c[qi]);
#endif
                    if (edge) {
                        const u32 qp = q0 + qi, key = kpos[e >> 1];
                        if (!(key <= qp && qp < len && key < len)) p = 0.0f;
                    }
                    st[j][e] = p;
                    dpt[j][e] = p * (dpt[j][e] - delta_c[qi]);
                }
#if !SPLIT_DQ
#pragma unroll
                for (int r = 0; r < 2; ++r)
                    *reinterpret_cast<u32*>(dSt + (kr0 + 8 * r) * LDST + j * 8 + 2 * t) =
                        mma_pack2(dpt[j][2 * r], dpt[j][2 * r + 1]);
#endif
            }

            // dv += P^T dO and dk += dS^T Q, k-steps of 16 queries.
#pragma unroll
            for (int s16 = 0; s16 < BQ / 16; ++s16) {
                u32 pa[4], sa[4];
                c_to_a(pa, st, s16);
                c_to_a(sa, dpt, s16);
#pragma unroll
                for (int np = 0; np < NT_D / 2; ++np) {
                    u32 bo[4], bq[4];
                    mma_frag_b_kn(bo, dOc, LDS, s16 * 16, np * 16, lane);
                    mma_frag_b_kn(bq, Qc, LDS, s16 * 16, np * 16, lane);
                    mma_16816(dv_acc[2 * np], pa, bo[0], bo[1]);
                    mma_16816(dv_acc[2 * np + 1], pa, bo[2], bo[3]);
                    mma_16816(dk_acc[2 * np], sa, bq[0], bq[1]);
                    mma_16816(dk_acc[2 * np + 1], sa, bq[2], bq[3]);
                }
            }
        }
#if !SPLIT_DQ
        else {
            // This warp's 16 rows of dS^T are zeros.
            for (u32 i = lane; i < 16 * (BQ / 8); i += 32) {
                const u32 r = i / (BQ / 8), c = (i % (BQ / 8)) * 8;
                *reinterpret_cast<uint4*>(dSt + (warp * 16 + r) * LDST + c) = make_uint4(0, 0, 0, 0);
            }
        }
        __syncthreads();  // dS^T complete

        // dq rows dq_row..+16, head-dim n-tiles dq_n0..+DQ_NTW: dS (queries x keys) K (keys x D).
        float dq[DQ_NTW][4];
#pragma unroll
        for (int n = 0; n < DQ_NTW; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
        // Keys past the row group's last query contribute nothing (causal; q0 >= k0 as BQ | BK).
        const u32 s16_end = min((u32)(BK / 16), (q0 + dq_row + 31 - k0) / 16);
#pragma unroll
        for (int s16 = 0; s16 < BK / 16; ++s16) {
            if ((u32)s16 >= s16_end) break;
            // A fragment of dS rows dq_row.., keys s16*16.. from the transposed tile.
            u32 a[4];
            {
                const u32 mi = lane / 8;
                ldsm4t(a, dSt + (s16 * 16 + (mi / 2) * 8 + lane % 8) * LDST + dq_row + (mi % 2) * 8);
            }
#pragma unroll
            for (int n = 0; n < DQ_NTW; n += 2) {
                const u32 d0 = (dq_n0 + n) * 8;
                if (n + 1 < DQ_NTW) {
                    u32 bk[4];
                    mma_frag_b_kn(bk, Ks, LDS, s16 * 16, d0, lane);
                    mma_16816(dq[n], a, bk[0], bk[1]);
                    mma_16816(dq[n + 1], a, bk[2], bk[3]);
                } else {
                    u32 bk[2];
                    frag_b_kn1(bk, Ks, LDS, s16 * 16, d0, lane);
                    mma_16816(dq[n], a, bk[0], bk[1]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const u32 row = dq_row + g + 8 * r;
            if (row < qn) {
                float* dst = dq_acc + (size_t)(start + q0 + row) * qs + (size_t)h * D;
#pragma unroll
                for (int n = 0; n < DQ_NTW; ++n)
                    red2(dst + (dq_n0 + n) * 8 + 2 * t, dq[n][2 * r], dq[n][2 * r + 1]);
            }
        }
#endif
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 key = kr0 + 8 * r;
        if (key < kn) {
            const size_t base = (size_t)(start + k0 + key) * ks + (size_t)kvh * D;
#pragma unroll
            for (int n = 0; n < NT_D; ++n) {
                const u32 d = n * 8 + 2 * t;
                red2(dk_out + base + d, dk_acc[n][2 * r], dk_acc[n][2 * r + 1]);
                red2(dv_out + base + d, dv_acc[n][2 * r], dv_acc[n][2 * r + 1]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(BWD_THREADS, BWD_MINB)
    attention_fa_bwd(const bf16* __restrict__ dout, const bf16* __restrict__ q, const bf16* __restrict__ k,
                     const bf16* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
                     const u32* __restrict__ cu, float* dq_acc, float* dk_out, float* dv_out, u32 n_seqs, u32 H,
                     u32 KH, float scale) { pdl_entry();
    fa_bwd_body(dout, q, k, v, lse, delta, cu, dq_acc, dk_out, dv_out, n_seqs, H, KH, scale);
}

// ---------------------------------------------------------------------------------------------
// dq without atomics (SPLIT_DQ): one block per (query tile of BMQ rows, query head), like the
// forward; warp w owns rows 16w..16w+15 and iterates over the key tiles up to the diagonal:
//   S = Q K^T, P = exp2(S scale log2e - lse log2e), dP = dO V^T, dS = P (dP - delta), dq += dS K
// with dS's A fragments straight from the C fragments. Writes bf16(dq · scale), or with a RoPE
// table (rope_tab non-null, see above) bf16 of dq · scale rotated by -a: column c < D/2 of n-tile
// n pairs with column c + D/2 of n-tile n + D/16, in the same thread and C-fragment slot.

extern "C" __global__ void __launch_bounds__(DQ_THREADS)
    attention_fa_dq(const bf16* __restrict__ dout, const bf16* __restrict__ q, const bf16* __restrict__ k,
                    const bf16* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ delta,
                    const u32* __restrict__ cu, bf16* __restrict__ dq_out, u32 n_seqs, u32 H, u32 KH,
                    float scale, const float* __restrict__ rope_tab) { pdl_entry();
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* Qs = reinterpret_cast<bf16*>(smem_raw);  // [BMQ][LDS]
    bf16* dOs = Qs + BMQ * LDS;                      // [BMQ][LDS]
    bf16* Ks = dOs + BMQ * LDS;                      // [STAGES][BN][LDS]
    bf16* Vs = Ks + STAGES * BN * LDS;               // [STAGES][BN][LDS]

    QueryTile tile;
    if (!query_tile(cu, n_seqs, H, KH, BMQ, tile)) return;
    const u32 h = tile.h, start = tile.start, len = tile.len, q0 = tile.q0, qn = tile.qn;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const size_t qs = (size_t)H * D;
    const float sl2 = scale * MMA_LOG2E;
    const u32 n_kt = (q0 + qn + BN - 1) / BN;
    const KvRing<DQ_THREADS> ring{Ks, Vs, k, v, start, len, n_kt, (size_t)KH * D, (size_t)tile.kvh * D};

    LOAD_ROWS(DQ_THREADS, BMQ, Qs, q, start + q0, qn, qs, (size_t)h * D);
    LOAD_ROWS(DQ_THREADS, BMQ, dOs, dout, start + q0, qn, qs, (size_t)h * D);
#pragma unroll
    for (u32 i = 0; i < STAGES - 1; ++i) ring.stage(i);

    const u32 wr0 = warp * 16;
    const bool has_rows = wr0 < qn;
    const u32 last_row = q0 + min(wr0 + 16, qn) - 1;
    float lse2[2], dl[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 row = wr0 + g + 8 * r;
        const size_t idx = (size_t)(start + q0 + row) * H + h;
        lse2[r] = row < qn ? lse[idx] * MMA_LOG2E : INFINITY;
        dl[r] = row < qn ? delta[idx] : 0.0f;
    }
    u32 qa[KS_D][4], ga[KS_D][4];
    float dq[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;

    for (u32 kt = 0; kt < n_kt; ++kt) {
        const u32 k0 = kt * BN;
        const bf16* Kc = ring.keys(kt);
        const bf16* Vc = ring.values(kt);
        cp_async_wait<STAGES - 2>();  // tile kt (and Q, dO) landed
        __syncthreads();        // ... for every thread; and the slot of tile kt - 1 is free
        ring.stage(kt + STAGES - 1);
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < KS_D; ++kk) {
                frag_a(qa[kk], Qs, LDS, wr0, kk * 16, lane);
                frag_a(ga[kk], dOs, LDS, wr0, kk * 16, lane);
            }
        }

        if (has_rows && k0 <= last_row) {
            float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
            for (int j = 0; j < BN / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[j][e] = dp[j][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KS_D; ++kk)
#pragma unroll
                for (int jp = 0; jp < BN / 16; ++jp) {
                    u32 bk[4], bv[4];
                    mma_frag_b_nk(bk, Kc, LDS, jp * 16, kk * 16, lane);
                    mma_frag_b_nk(bv, Vc, LDS, jp * 16, kk * 16, lane);
                    mma_16816(s[2 * jp], qa[kk], bk[0], bk[1]);
                    mma_16816(s[2 * jp + 1], qa[kk], bk[2], bk[3]);
                    mma_16816(dp[2 * jp], ga[kk], bv[0], bv[1]);
                    mma_16816(dp[2 * jp + 1], ga[kk], bv[2], bv[3]);
                }
            const bool edge = k0 + BN > q0 + wr0 || k0 + BN > len || q0 + wr0 + 16 > len;
#pragma unroll
            for (int j = 0; j < BN / 8; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int r = e >> 1;
                    float p = mma_ex2(s[j][e] * sl2 - lse2[r]);
                    if (edge) {
                        const u32 key = k0 + j * 8 + 2 * t + (e & 1), qp = q0 + wr0 + g + 8 * r;
                        if (!(key <= qp && key < len && qp < len)) p = 0.0f;
                    }
                    s[j][e] = p * (dp[j][e] - dl[r]);  // dS
                }
            // dq += dS K: K stored [key][D] is the [k][n] B operand.
#pragma unroll
            for (int ks16 = 0; ks16 < BN / 16; ++ks16) {
                u32 a[4];
                c_to_a(a, s, ks16);
#pragma unroll
                for (int np = 0; np < NT_D / 2; ++np) {
                    u32 b[4];
                    mma_frag_b_kn(b, Kc, LDS, ks16 * 16, np * 16, lane);
                    mma_16816(dq[2 * np], a, b[0], b[1]);
                    mma_16816(dq[2 * np + 1], a, b[2], b[3]);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const u32 row = wr0 + g + 8 * r;
        if (row < qn) {
            const size_t base = (size_t)(start + q0 + row) * qs + (size_t)h * D;
            if (rope_tab) {
                // rope.cu's arithmetic with s = -sin a: y1 = x1 c - x2 s, y2 = x2 c + x1 s.
                const float* tr = rope_tab + (size_t)(start + q0 + row) * D;
#pragma unroll
                for (int n = 0; n < NT_D / 2; ++n) {
                    const u32 c0 = n * 8 + 2 * t;
                    const float2 c = *reinterpret_cast<const float2*>(tr + c0);
                    const float2 s = *reinterpret_cast<const float2*>(tr + D / 2 + c0);
                    const float x1a = dq[n][2 * r] * scale, x1b = dq[n][2 * r + 1] * scale;
                    const float x2a = dq[n + NT_D / 2][2 * r] * scale, x2b = dq[n + NT_D / 2][2 * r + 1] * scale;
                    *reinterpret_cast<u32*>(dq_out + base + c0) =
                        mma_pack2(x1a * c.x - x2a * s.x, x1b * c.y - x2b * s.y);
                    *reinterpret_cast<u32*>(dq_out + base + D / 2 + c0) =
                        mma_pack2(x2a * c.x + x1a * s.x, x2b * c.y + x1b * s.y);
                }
            } else {
#pragma unroll
                for (int n = 0; n < NT_D; ++n)
                    *reinterpret_cast<u32*>(dq_out + base + n * 8 + 2 * t) =
                        mma_pack2(dq[n][2 * r] * scale, dq[n][2 * r + 1] * scale);
            }
        }
    }
}

// dst = bf16(src · mul), n a multiple of 8 (rows of D, D a multiple of 16).
extern "C" __global__ void attention_fa_finish(const float* __restrict__ src, bf16* __restrict__ dst, u64 n,
                                               float mul) { pdl_entry();
    for_each_8(
        n,
        [&](size_t i) {
            float x[8];
            ld8(src, i, x);
#pragma unroll
            for (int e = 0; e < 8; ++e) x[e] *= mul;
            st8(dst, i, x);
        },
        [&](size_t i) { dst[i] = __float2bfloat16_rn(src[i] * mul); });
}

// dst[row] = bf16 of src[row] · mul rotated by -a (the fused RoPE backward, see above) for rows
// (token, head) of D f32, heads per token `heads`, tab [N][D] from attention_fa_delta_rope. One
// thread per 8 pairs (D / 2 is a multiple of 8 as D is of 16): 16-byte loads and stores.
extern "C" __global__ void attention_fa_finish_rope(const float* __restrict__ src, bf16* __restrict__ dst,
                                                    const float* __restrict__ tab, u64 rows, u32 heads, float mul) { pdl_entry();
    constexpr u32 HALF = D / 2, PER_ROW = HALF / 8;
    const u64 items = rows * PER_ROW, stride = (u64)gridDim.x * blockDim.x;
    for (u64 idx = blockIdx.x * (u64)blockDim.x + threadIdx.x; idx < items; idx += stride) {
        const u64 row = idx / PER_ROW;
        const u32 i = (u32)(idx % PER_ROW) * 8;
        const size_t base = (size_t)row * D, tb = (size_t)(row / heads) * D;
        float x1[8], x2[8], c[8], s[8], y1[8], y2[8];
        ld8(src, base + i, x1);
        ld8(src, base + HALF + i, x2);
        ld8(tab, tb + i, c);
        ld8(tab, tb + HALF + i, s);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            x1[k] *= mul;
            x2[k] *= mul;
            y1[k] = x1[k] * c[k] - x2[k] * s[k];
            y2[k] = x2[k] * c[k] + x1[k] * s[k];
        }
        st8(dst, base + i, y1);
        st8(dst, base + HALF + i, y2);
    }
}
