// Paged decode attention on tensor cores (MMA = 1; bf16; HEAD_DIM a multiple of 16, at most 128;
// GROUP at most 16). Compiled after paged_attention.cu (same module: its work split, result store
// and combine kernel) and mma.cuh.
//
// A thread block takes kv head `kh` of sequence `s` over one partition of its context (grid
// (partitions, K, S), as the other variants) and treats the GROUP query heads that share the kv
// head as the 16 rows of an m16n8k16 A operand (rows past GROUP are zero): each K/V row is read
// from memory once for the whole group, and the scores S = Q·Kᵀ and the output P·V are MMAs
// instead of per-lane dot products.
//
// The partition streams through shared memory in tiles of TN = 64 tokens (16 per warp) with
// cp.async into a ring of STAGES buffers, STAGES - 1 tiles in flight while one is computed on. The
// token -> slot map of the partition (its block-table entries) is staged in shared memory first,
// so no copy waits on a table read. Each warp keeps its own online softmax (base 2, running max
// and sum per row) over its 16 tokens of every tile, with the probabilities passed from the score
// fragments to the P·V A operand in registers; at the end the four warps merge through shared
// memory and the block stores its GROUP output rows, or its partition's (max, sum, accumulator)
// for paged_attention_combine_*.

#if MMA

#if HEAD_DIM % 16 != 0 || HEAD_DIM > 128
#error "the MMA variant needs HEAD_DIM a multiple of 16, at most 128"
#endif
#if GROUP > 16
#error "the MMA variant needs GROUP <= 16 (one m16 tile of query heads)"
#endif
#ifndef STAGES
#define STAGES 2
#endif
#define TN (16 * NWARPS)         // tokens per tile, 16 per warp
#define LDS (HEAD_DIM + 8)       // smem row stride in bf16: ldmatrix rows hit 8 bank groups
#define NT_D (HEAD_DIM / 8)      // 8-column tiles over the head dim
#define KS_D (HEAD_DIM / 16)     // k-steps over the head dim

// Dynamic shared memory: K ring [STAGES][TN][LDS], V ring [STAGES][TN][LDS] (bf16), then the
// partition's block-table entries (u32; the host sizes this part: ceil(PART / block_size) + 1).
// Both kernels below (q read from a tensor, or made from the q/k/v product in the fused one) share
// this layout, the staging of the table and the main part (paged_mma_attend).

// The block-table entries of the partition's positions [start, start + PART) (those of tokens
// [start, end) among them) into sm_blocks, read without waiting for the context length; returns
// the first entry's index b0. The caller synchronises before they are read.
__device__ __forceinline__ u32 stage_block_table(const PagedWork& w, u32* sm_blocks, u32 max_blocks, u32 block_size) {
    const u32 b0 = w.start / block_size;
    const u32 b1 = max(b0, min(max_blocks, (w.start + PART + block_size - 1) / block_size));
    for (u32 i = threadIdx.x; i < b1 - b0; i += blockDim.x) sm_blocks[i] = w.table[b0 + i];
    return b0;
}

// This lane's A fragments of the GROUP query rows (zero rows past GROUP) from `qrow` (the first
// of them, HEAD_DIM bf16 each, global or shared memory): pairs of consecutive head-dim elements.
__device__ __forceinline__ void load_q_frags(u32 (&qa)[KS_D][4], const __nv_bfloat16* qrows, int lane) {
    const u32* qrow = reinterpret_cast<const u32*>(qrows);
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int kk = 0; kk < KS_D; ++kk) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = g + (r & 1) * 8, col = kk * 16 + (r >> 1) * 8 + 2 * t;
            qa[kk][r] = row < GROUP ? qrow[(row * HEAD_DIM + col) / 2] : 0u;
        }
    }
}

// LEAN (0 by default; 1 with REALIGN_PAGED_LEAN=1, kernels/src/cuda/paged_attention.rs): the
// tile loader below with a fixed per-thread plan instead of a loop over chunk indices, and the
// warps' merge through padded rows with 8-byte stores. Nsight on an H100 (docs/benchmarks.md,
// session 14) showed the kernel latency-bound on one block's chain of dependent instructions
// (one warp a scheduler, ~6.8 cycles an instruction), with the loader's copy loop about half of
// a tile's instructions: a runtime u32 division (pos / block_size, reciprocal included) and
// 64-bit address arithmetic per 16-byte copy, in a loop that was not unrolled. Here each thread
// copies chunk column c of rows r0 + RSTEP·k of every tile; its block-table index and offset come
// from one division per tile and advance by compile-time steps (no division at all for the
// default 16-token blocks, which get their own instantiation), and the LROWS copies are unrolled
// so their table reads issue together. The merge's f32 rows were HEAD_DIM floats apart, so the
// eight fragment rows of a store hit one bank (8-way conflicts; Nsight: 5.6-way on average over
// the kernel's shared stores); padded by 8 floats and stored as float2 they are conflict-free.
// In paged_attention_qkv_bf16 (with EARLY) LEAN also requests the first tiles before the RoPE
// row is read. Same results bit for bit (the same copies and the same arithmetic).
#ifndef LEAN
#define LEAN 0
#endif
#define LCH (HEAD_DIM / 8)          // 16-byte chunks of a K/V row
#define RSTEP (NWARPS * 32 / LCH)   // rows one pass of the block's threads covers
#define LROWS (TN / RSTEP)          // passes a tile
#if LEAN
#define MERGE_LD (HEAD_DIM + 8)     // padded merge rows: the 8 fragment rows of a store in 8 bank groups
#else
#define MERGE_LD HEAD_DIM           // the warps' merge rows in shared memory, in floats
#endif
// The per-thread plan needs the block's threads to cover whole rows and a tile whole passes
// (HEAD_DIM 16, 32, 64, 128); other head dims keep the plain loader (and the padded merge).
#define LEAN_LOADER (LEAN && (NWARPS * 32) % LCH == 0 && TN % RSTEP == 0)
#if LEAN_LOADER
// The lean loader for a block size of BS tokens (0: the runtime block_size).
template <u32 BS>
__device__ __forceinline__ void paged_mma_load_tile_lean(const PagedWork& w, const __nv_bfloat16* __restrict__ kc,
                                                         const __nv_bfloat16* __restrict__ vc, const u32* sm_blocks,
                                                         u32 b0, u32 kv_heads, u32 block_size, u32 tile, u32 stage) {
    extern __shared__ __align__(16) unsigned char smem[];
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* sv = sk + STAGES * TN * LDS;
    const u32 bs = BS ? BS : block_size;
    const u32 r0 = threadIdx.x / LCH, c = (threadIdx.x % LCH) * 8;
    u32 pos = w.start + tile * TN + r0;
    u32 blk = pos / bs - b0, off = pos % bs;                 // sm_blocks index and offset of row r0
    const u32 step_blk = RSTEP / bs, step_off = RSTEP % bs;  // loop-invariant: hoisted
    // First every row's table entry (the shared loads issue together), then the copies, with the
    // byte offset of a row one 32 × 32 -> 64-bit multiply-add: slot · (bytes a slot) + (kh, c).
    u32 slot[LROWS];
    bool ok[LROWS];
#pragma unroll
    for (int k = 0; k < LROWS; ++k) {
        ok[k] = pos < w.end;
        slot[k] = (ok[k] ? sm_blocks[blk] : 0u) * bs + off;
        pos += RSTEP;
        blk += step_blk;
        off += step_off;
        if (off >= bs) {
            off -= bs;
            ++blk;
        }
    }
    const u32 slot_bytes = kv_heads * HEAD_DIM * 2, head_bytes = (w.kh * HEAD_DIM + c) * 2;
    const u32 at = (stage * TN + r0) * LDS + c;
#pragma unroll
    for (int k = 0; k < LROWS; ++k) {
        const size_t byte = (size_t)slot[k] * slot_bytes + head_bytes;
        cp_async16(sk + at + k * RSTEP * LDS, reinterpret_cast<const char*>(kc) + byte, ok[k]);
        cp_async16(sv + at + k * RSTEP * LDS, reinterpret_cast<const char*>(vc) + byte, ok[k]);
    }
}
#endif

// Tile `tile` of the partition into ring buffer `stage` (the K ring at the start of dynamic shared
// memory, the V ring after it): TN rows of K and V, zeros past `end`. The caller commits.
__device__ __forceinline__ void paged_mma_load_tile(const PagedWork& w, const __nv_bfloat16* __restrict__ kc,
                                                    const __nv_bfloat16* __restrict__ vc, const u32* sm_blocks,
                                                    u32 b0, u32 kv_heads, u32 block_size, u32 tile, u32 stage) {
#if LEAN_LOADER
    if (block_size == 16)
        paged_mma_load_tile_lean<16>(w, kc, vc, sm_blocks, b0, kv_heads, block_size, tile, stage);
    else
        paged_mma_load_tile_lean<0>(w, kc, vc, sm_blocks, b0, kv_heads, block_size, tile, stage);
#else
    extern __shared__ __align__(16) unsigned char smem[];
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* sv = sk + STAGES * TN * LDS;
    const u32 t0 = w.start + tile * TN;
    for (u32 idx = threadIdx.x; idx < TN * (HEAD_DIM / 8); idx += blockDim.x) {
        const u32 r = idx / (HEAD_DIM / 8), c = (idx % (HEAD_DIM / 8)) * 8;
        const u32 pos = t0 + r;
        const bool ok = pos < w.end;
        const size_t slot = ok ? (size_t)sm_blocks[pos / block_size - b0] * block_size + pos % block_size : 0;
        const size_t row = (slot * kv_heads + w.kh) * HEAD_DIM + c;
        const u32 at = (stage * TN + r) * LDS + c;
        cp_async16(sk + at, kc + row, ok);
        cp_async16(sv + at, vc + row, ok);
    }
#endif
}

// The ring's first STAGES - 1 tiles, one commit group each (empty past the partition's tiles).
__device__ __forceinline__ void paged_mma_prologue(const PagedWork& w, const __nv_bfloat16* __restrict__ kc,
                                                   const __nv_bfloat16* __restrict__ vc, const u32* sm_blocks,
                                                   u32 b0, u32 kv_heads, u32 block_size) {
    const u32 ntiles = (w.end - w.start + TN - 1) / TN;
#pragma unroll
    for (u32 st = 0; st < STAGES - 1; ++st) {
        if (st < ntiles) paged_mma_load_tile(w, kc, vc, sm_blocks, b0, kv_heads, block_size, st, st);
        cp_async_commit();
    }
}

// The partition's attention for query fragments `qa`, once sm_blocks is visible to every thread:
// streams the K/V tiles through the ring (its first tiles already requested when `prefetched`),
// then merges the warps and stores the result.
__device__ __forceinline__ void paged_mma_attend(const PagedWork& w, const u32 (&qa)[KS_D][4],
                                                 const __nv_bfloat16* __restrict__ kc,
                                                 const __nv_bfloat16* __restrict__ vc, const u32* sm_blocks, u32 b0,
                                                 __nv_bfloat16* __restrict__ out, float* __restrict__ part_ml,
                                                 float* __restrict__ part_acc, u32 heads, u32 kv_heads,
                                                 u32 block_size, float scale, bool prefetched) {
    extern __shared__ __align__(16) unsigned char smem[];
    __nv_bfloat16* sk = reinterpret_cast<__nv_bfloat16*>(smem);
    __nv_bfloat16* sv = sk + STAGES * TN * LDS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane / 4, t = lane % 4;  // fragment row and column pair

    const u32 ntiles = (w.end - w.start + TN - 1) / TN;
    if (!prefetched) paged_mma_prologue(w, kc, vc, sm_blocks, b0, kv_heads, block_size);

    const float sl2 = scale * MMA_LOG2E;  // scores in base 2
    float m[2] = {-INFINITY, -INFINITY};  // running max of rows g and g + 8 (base-2 units)
    float l[2] = {0.0f, 0.0f};            // this lane's share of the running sums
    float o[NT_D][4];
#pragma unroll
    for (int n = 0; n < NT_D; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    for (u32 tile = 0; tile < ntiles; ++tile) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile's copies visible to all; the buffer refilled below is free
        if (tile + STAGES - 1 < ntiles)
            paged_mma_load_tile(w, kc, vc, sm_blocks, b0, kv_heads, block_size, tile + STAGES - 1,
                                (tile + STAGES - 1) % STAGES);
        cp_async_commit();

        const u32 stage = tile % STAGES;
        const __nv_bfloat16* kt = sk + (stage * TN + warp * 16) * LDS;  // this warp's 16 tokens
        const __nv_bfloat16* vt = sv + (stage * TN + warp * 16) * LDS;
        // S [16 heads, 16 tokens] = Q · Kᵀ: two 8-token tiles.
        float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
        for (int kk = 0; kk < KS_D; ++kk) {
            u32 b[4];
            mma_frag_b_nk(b, kt, LDS, 0, kk * 16, lane);
            mma_16816(sc[0], qa[kk], b[0], b[1]);
            mma_16816(sc[1], qa[kk], b[2], b[3]);
        }
        // Scale, mask tokens past the end, and the online softmax of rows g (i = 0) and g + 8.
        const u32 p0 = w.start + tile * TN + warp * 16 + 2 * t;  // position of sc[0][0]
        float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool ok = p0 + n * 8 + (e & 1) < w.end;
                sc[n][e] = ok ? sc[n][e] * sl2 : -INFINITY;
                mt[e >> 1] = fmaxf(mt[e >> 1], sc[n][e]);
            }
        }
        float corr[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mt[i] = fmaxf(mt[i], __shfl_xor_sync(0xffffffffu, mt[i], 1));
            mt[i] = fmaxf(mt[i], __shfl_xor_sync(0xffffffffu, mt[i], 2));
            const float m_new = fmaxf(m[i], mt[i]);
            const float base = m_new == -INFINITY ? 0.0f : m_new;  // no token yet: keep zeros
            corr[i] = mma_ex2(m[i] - base);
            m[i] = m_new;
            mt[i] = base;
        }
        float ls[2] = {0.0f, 0.0f};
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                sc[n][e] = mma_ex2(sc[n][e] - mt[e >> 1]);
                ls[e >> 1] += sc[n][e];
            }
        }
        l[0] = l[0] * corr[0] + ls[0];
        l[1] = l[1] * corr[1] + ls[1];
#pragma unroll
        for (int n = 0; n < NT_D; ++n) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
        }
        // O [16 heads, D] += P [16, 16 tokens] · V [16 tokens, D].
        u32 pa[4] = {mma_pack2(sc[0][0], sc[0][1]), mma_pack2(sc[0][2], sc[0][3]), mma_pack2(sc[1][0], sc[1][1]),
                     mma_pack2(sc[1][2], sc[1][3])};
#pragma unroll
        for (int n = 0; n < NT_D; n += 2) {
            u32 b[4];
            mma_frag_b_kn(b, vt, LDS, 0, n * 8, lane);
            mma_16816(o[n], pa, b[0], b[1]);
            mma_16816(o[n + 1], pa, b[2], b[3]);
        }
    }

    // Merge the warps in shared memory (the K ring, free once every copy has landed).
    cp_async_wait<0>();
    __syncthreads();
    float* sm_o = reinterpret_cast<float*>(smem);  // [NWARPS][16][MERGE_LD]
    __shared__ float sm_m[NWARPS][16], sm_l[NWARPS][16];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
        if (t == 0) {
            sm_m[warp][g + 8 * i] = m[i];
            sm_l[warp][g + 8 * i] = l[i];
        }
    }
#pragma unroll
    for (int n = 0; n < NT_D; ++n) {
        float* r0 = sm_o + ((size_t)warp * 16 + g) * MERGE_LD + n * 8 + 2 * t;
#if LEAN
        *reinterpret_cast<float2*>(r0) = make_float2(o[n][0], o[n][1]);
        *reinterpret_cast<float2*>(r0 + 8 * MERGE_LD) = make_float2(o[n][2], o[n][3]);
#else
        r0[0] = o[n][0];
        r0[1] = o[n][1];
        r0[8 * MERGE_LD] = o[n][2];
        r0[8 * MERGE_LD + 1] = o[n][3];
#endif
    }
    __syncthreads();
    for (u32 idx = threadIdx.x; idx < GROUP * HEAD_DIM; idx += blockDim.x) {
        const u32 r = idx / HEAD_DIM, i = idx % HEAD_DIM;
        float mm = -INFINITY;
#pragma unroll
        for (int v = 0; v < NWARPS; ++v) mm = fmaxf(mm, sm_m[v][r]);
        float ll = 0.0f, a = 0.0f;
        if (mm != -INFINITY) {
#pragma unroll
            for (int v = 0; v < NWARPS; ++v) {
                const float c = mma_ex2(sm_m[v][r] - mm);
                ll += sm_l[v][r] * c;
                a += sm_o[((size_t)v * 16 + r) * MERGE_LD + i] * c;
            }
        }
        // The combine works in natural-log units.
        store_result(out, part_ml, part_acc, w, heads, w.kh * GROUP + r, i, mm * MMA_LN2, ll, a);
    }
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
    paged_attention_bf16(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kc,
                         const __nv_bfloat16* __restrict__ vc, const u32* __restrict__ tables,
                         const u32* __restrict__ lens, __nv_bfloat16* __restrict__ out, float* __restrict__ part_ml,
                         float* __restrict__ part_acc, u32 heads, u32 kv_heads, u32 max_blocks, u32 block_size,
                         float scale) { pdl_entry();
    extern __shared__ __align__(16) unsigned char smem[];
    u32* sm_blocks = reinterpret_cast<u32*>(smem + 2 * STAGES * TN * LDS * sizeof(__nv_bfloat16));
    const PagedWork w = paged_work(tables, lens, max_blocks);
    const u32 b0 = stage_block_table(w, sm_blocks, max_blocks, block_size);
    // Straight from global memory, in flight while the table entries land.
    u32 qa[KS_D][4];
    load_q_frags(qa, q + ((size_t)w.s * heads + w.kh * GROUP) * HEAD_DIM, threadIdx.x & 31);
    __syncthreads();  // sm_blocks
    paged_mma_attend(w, qa, kc, vc, sm_blocks, b0, out, part_ml, part_acc, heads, kv_heads, block_size, scale,
                     false);
}


// ---------------------------------------------------------------------------------------------
// The decode step's q/k/v epilogue folded into the attention (paged_attention_qkv_bf16). Instead
// of reading q written by qkv_rope_cache, each block makes its GROUP query rows from the q/k/v
// product acc[S, (H+2K)·D] f32 into shared memory with qkv_rope_cache.cu's arithmetic (bias added
// in f32, rounded to bf16, rotated in f32, rounded again). The block whose partition holds the
// sequence's newest position (lens[s] - 1) first writes that token's k and v rows of kv head kh
// (k rotated, v not) into slot slots[s], skipped when the slot is >= num_slots as there. The
// barrier after the store orders it before the block's own cp.async copies of that slot, and no
// other block reads the slot in this launch (every other partition ends before it). One launch
// instead of two, and no q/k/v tensors written or read.
//
// EARLY (1 by default; 0 with REALIGN_PAGED_EARLY=0, kernels/src/cuda/paged_attention.rs): the
// ring's first tiles are requested as soon as the block-table entries are in shared memory, before
// the query rows are made, so that their load latency overlaps that work instead of following it;
// except in the block that writes the newest token when that token lies in those tiles (its copy
// must follow the write).
#ifndef EARLY
#define EARLY 0
#endif
// PREWAIT (0 by default; 1 with REALIGN_PAGED_PREWAIT=1, only with LEAN and EARLY, not yet run on
// a GPU): the block stages its table entries and requests its first tiles before
// `griddepcontrol.wait`, i.e. possibly while the q/k/v product is still being computed, since
// none of that depends on it (the comment at the wait says why it is safe). It gains only where
// the previous kernel lets this one start early (PDL).
#ifndef PREWAIT
#define PREWAIT 0
#endif
#define PREWAIT_ON (PREWAIT && LEAN && EARLY)

#define HALF_D (HEAD_DIM / 2)

// Pair (i, i + D/2) of head row hh of x = bf16(acc + bias), rotated by cos/sin `cs` when `rotate`
// (qkv_rope_cache.cu's qkv_item, one pair).
__device__ __forceinline__ void qkv_pair(const float* __restrict__ acc_row, const __nv_bfloat16* __restrict__ bias,
                                         u32 hh, u32 i, const float* cs, bool rotate, float& y1, float& y2) {
    const size_t at = (size_t)hh * HEAD_DIM + i;
    float x1 = acc_row[at], x2 = acc_row[at + HALF_D];
    if (bias != nullptr) {
        x1 += ld(bias, at);
        x2 += ld(bias, at + HALF_D);
    }
    x1 = round_to<__nv_bfloat16>(x1);
    x2 = round_to<__nv_bfloat16>(x2);
    if (rotate) {
        const float c = cs[i], s = cs[HALF_D + i];
        y1 = x1 * c - x2 * s;
        y2 = x2 * c + x1 * s;
    } else {
        y1 = x1;
        y2 = x2;
    }
}

extern "C" __global__ void __launch_bounds__(NWARPS * 32)
    paged_attention_qkv_bf16(const float* __restrict__ acc, const __nv_bfloat16* __restrict__ bias,
                             const u32* __restrict__ pos, const u32* __restrict__ slots,
                             const float* __restrict__ rope_tab, u32 rope_rows, float theta, u32 num_slots,
                             __nv_bfloat16* kc, __nv_bfloat16* vc, const u32* __restrict__ tables,
                             const u32* __restrict__ lens, __nv_bfloat16* __restrict__ out,
                             float* __restrict__ part_ml, float* __restrict__ part_acc, u32 heads, u32 kv_heads,
                             u32 max_blocks, u32 block_size, float scale) {
#if !PREWAIT_ON
    pdl_entry();
#endif
    extern __shared__ __align__(16) unsigned char smem[];
    u32* sm_blocks = reinterpret_cast<u32*>(smem + 2 * STAGES * TN * LDS * sizeof(__nv_bfloat16));
    __shared__ float cs[HEAD_DIM];                                  // cos | sin at the token's position
    __shared__ __align__(16) __nv_bfloat16 sq[GROUP * HEAD_DIM];    // the block's query rows
    const PagedWork w = paged_work(tables, lens, max_blocks);
    const u32 b0 = stage_block_table(w, sm_blocks, max_blocks, block_size);
    const u32 p = pos[w.s];
#define NEWEST_WRITE                                                                                        \
    const u32 len = lens[w.s], slot = slots[w.s];                                                           \
    const bool writes = len > 0 && len - 1 >= w.start && len - 1 < w.end && slot < num_slots;
#define EARLY_TILES                                                                                         \
    const bool early = !writes || len - 1 >= w.start + (STAGES - 1) * TN;                                   \
    if (early) paged_mma_prologue(w, kc, vc, sm_blocks, b0, kv_heads, block_size);
#if LEAN && EARLY
    // The first tiles are requested before the RoPE row is read (position -> table row: two
    // dependent loads off the path to the first copy), at the cost of one more barrier. Without
    // LEAN the order below is the one measured on the GPU (its SASS unchanged).
    __syncthreads();  // sm_blocks
    NEWEST_WRITE
    EARLY_TILES
#endif
#if PREWAIT_ON
    // Everything above reads only what was written before this decode step's first kernel (the
    // step's uploads: tables, lens, slots, pos; older tokens' K/V rows; the RoPE table), never the
    // q/k/v product: so it may run while that product's kernel finishes. Wait for it here.
    pdl_entry();
#endif
    for (u32 i = threadIdx.x; i < HALF_D; i += blockDim.x) {
        if (rope_tab != nullptr && p < rope_rows) {
            cs[i] = rope_tab[(size_t)p * HEAD_DIM + i];
            cs[HALF_D + i] = rope_tab[(size_t)p * HEAD_DIM + HALF_D + i];
        } else {
            rope_cos_sin(p, i, HEAD_DIM, theta, &cs[i], &cs[HALF_D + i]);
        }
    }
    __syncthreads();  // cs (and sm_blocks)
#if !(LEAN && EARLY)
    NEWEST_WRITE
#if EARLY
    EARLY_TILES
#else
    const bool early = false;
#endif
#endif
#undef NEWEST_WRITE
#undef EARLY_TILES

    const float* arow = acc + (size_t)w.s * (heads + 2 * kv_heads) * HEAD_DIM;
    for (u32 idx = threadIdx.x; idx < GROUP * HALF_D; idx += blockDim.x) {
        const u32 r = idx / HALF_D, i = idx % HALF_D;
        float y1, y2;
        qkv_pair(arow, bias, w.kh * GROUP + r, i, cs, true, y1, y2);
        sq[r * HEAD_DIM + i] = __float2bfloat16_rn(y1);
        sq[r * HEAD_DIM + HALF_D + i] = __float2bfloat16_rn(y2);
    }
    if (writes) {
        const size_t row = ((size_t)slot * kv_heads + w.kh) * HEAD_DIM;
        for (u32 idx = threadIdx.x; idx < 2 * HALF_D; idx += blockDim.x) {
            const bool is_v = idx >= HALF_D;
            const u32 i = idx % HALF_D;
            float y1, y2;
            qkv_pair(arow, bias, heads + (is_v ? kv_heads : 0) + w.kh, i, cs, !is_v, y1, y2);
            __nv_bfloat16* dst = (is_v ? vc : kc) + row;
            dst[i] = __float2bfloat16_rn(y1);
            dst[HALF_D + i] = __float2bfloat16_rn(y2);
        }
        __threadfence_block();
    }
    __syncthreads();  // sm_blocks, sq, and the newest k/v rows before any tile copy reads them

    u32 qa[KS_D][4];
    load_q_frags(qa, sq, threadIdx.x & 31);
    paged_mma_attend(w, qa, kc, vc, sm_blocks, b0, out, part_ml, part_acc, heads, kv_heads, block_size, scale,
                     early);
}

#endif  // MMA
