// Next-token sampling on the GPU: greedy, or temperature sampling with optional top-k / top-p by
// inverse CDF in token-id order, with banned ids and the log-prob of the chosen token. Only [S]
// tokens and log-probs leave the device, instead of [S, V] logits.
//
// One thread block per output j (grid S, SAMPLE_THREADS threads). spec[j] = (row, temperature bits,
// draw, top-k, top-p bits, banned ids ... padded with 0xffffffff), `cols` u32 per output. The
// uniform of the draw is u = (draw + 0.5) / 2^32, computed in double exactly as the CPU reference
// (cpu/sampling.rs) does.
//
// Greedy (temperature 0): argmax over the allowed ids (lowest id on ties), log-prob under the
// unfiltered temperature-1 softmax: -ln sum_i exp(x_i - max). One pass, an online (max, sum) per
// thread over a coalesced strided range, merged across the block.
//
// Top-k / top-p (ops/sampling.rs defines them) keep the ids whose order key (the logit's f32 bits
// mapped to an order-preserving u32) is >= a threshold key. The threshold is found by radix
// selection, most significant byte first: per byte, a 256-bin histogram of the candidates that
// match the bytes chosen so far (a count for top-k, the fixed-point weight floor(w * 2^32) for
// top-p), a block scan of the bins from the top, and the bin where the running total reaches the
// goal becomes the next byte. Four passes over the row per filter; the integer sums are exact in
// any order, so the threshold equals the CPU reference's.
//
// Sampling (`draw_by_tiles`): one pass over the row in warp tiles of 512 ids, each recording its
// max and its sum of exp(x / T - tile max) (f64); the tile sums rescaled to the row max give Z and,
// by a scan, the tile that holds target = u * Z; one warp re-reads that tile and walks it in id
// order to the first id whose running sum exceeds the target. Log-prob = ln(w / Z). Rows without
// top-k / top-p need no other pass (filtered rows first find the max, then their thresholds).
// Everything is a function of the row, the parameters and the draw, so a sequence's token does not
// depend on the batch.

#ifndef SAMPLE_THREADS
#define SAMPLE_THREADS 1024
#endif
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define NO_TOKEN 0xffffffffu

__device__ __forceinline__ bool allowed(u32 i, const u32* banned, u32 nb) {
    for (u32 b = 0; b < nb; ++b)
        if (banned[b] == i) return false;
    return true;
}

// Merges online-softmax states (m, s) with argmax index a: the larger max wins (lower id on ties).
__device__ __forceinline__ void merge_state(float& m, float& s, u32& a, float m2, float s2, u32 a2) {
    if (m2 == -INFINITY) return;
    if (m == -INFINITY) {
        m = m2; s = s2; a = a2;
        return;
    }
    const float mm = fmaxf(m, m2);
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    if (m2 > m || (m2 == m && a2 < a)) a = a2;
    m = mm;
}

// Inclusive scan of one double per thread over the block; `warp_tot` holds SAMPLE_WARPS doubles.
__device__ __forceinline__ double block_inclusive_scan(double v, double* warp_tot) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const double n = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += n;
    }
    if (lane == 31) warp_tot[warp] = v;
    __syncthreads();
    if (warp == 0) {
        double t = lane < SAMPLE_WARPS ? warp_tot[lane] : 0.0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double n = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += n;
        }
        if (lane < SAMPLE_WARPS) warp_tot[lane] = t;  // inclusive totals of warps 0..lane
    }
    __syncthreads();
    return warp > 0 ? v + warp_tot[warp - 1] : v;
}

// Order-preserving key of a float (ops::sampling::order_key).
__device__ __forceinline__ u32 order_key(float x) {
    const u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Ids [t * SAMPLE_TILE, (t + 1) * SAMPLE_TILE) form tile t; a warp reads one tile as two groups
// of 8 consecutive ids per lane (16-byte loads where the row allows): lane l, group g holds ids
// t * SAMPLE_TILE + g * 256 + l * 8 + e, e < 8.
#define SAMPLE_TILE 512

// The 16 values of tile `t` this lane holds (-inf past the vocabulary).
template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ x, u32 vocab, u32 t, bool vec, float* v) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        const u32 i0 = t * SAMPLE_TILE + g * 256 + lane * 8;
        if (vec && i0 + 8 <= vocab) {
            ld8(x, i0, v + 8 * g);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[8 * g + e] = i0 + e < vocab ? ld(x, i0 + e) : -INFINITY;
        }
    }
}

// Whether id i with logit xi is kept (allowed, finite, at or above the top-k/top-p floor).
__device__ __forceinline__ bool kept(u32 i, float xi, const u32* banned, u32 nb, u32 floor) {
    return xi != -INFINITY && order_key(xi) >= floor && allowed(i, banned, nb);
}

// The largest key v such that the candidates (allowed ids with key >= floor) with key >= v reach
// the goal: a count of k (mass = false), or top_p of their total fixed-point weight (mass = true).
// Returns `floor` when the candidates never reach the goal (top-k with k >= their number). All
// threads of the block must call it.
template <typename T>
__device__ u32 radix_select(const T* __restrict__ x, u32 vocab, const u32* banned, u32 nb, u32 floor, bool mass,
                            float inv_t, float ymax, double k_or_p, unsigned long long* hist, double* scan,
                            u32* sm_sel, double* sm_above) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const u32 tiles = (vocab + SAMPLE_TILE - 1) / SAMPLE_TILE;
    const bool vec = vocab % 8 == 0 && (reinterpret_cast<size_t>(x) & 15) == 0;
    u32 prefix = 0;
    double above = 0.0, goal = k_or_p;
    for (int shift = 24; shift >= 0; shift -= 8) {
        const u32 hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (u32 t = threadIdx.x; t < 256; t += SAMPLE_THREADS) hist[t] = 0ull;
        if (threadIdx.x == 0) *sm_sel = NO_TOKEN;
        __syncthreads();
        // Warp tiles with 16-byte loads (as the max pass). A row's keys fall in a handful of bins
        // per byte (sign and exponent bits first), so one shared atomic per element serialised the
        // whole row on them (3 ms for top-k + top-p at B 256, V 151936): the lanes of a warp that
        // share a bin add their weights with __reduce_add_sync (as 16-bit halves: w <= 2^32) and one
        // of them adds the sum. The sums are integers, so the histogram is the same in any order.
        // Every lane of the warp runs the same tiles and elements, so the full mask is right.
        for (u32 t = warp; t < tiles; t += SAMPLE_WARPS) {
            float v[16];
            load_tile(x, vocab, t, vec, v);
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                const u32 i = t * SAMPLE_TILE + (e / 8) * 256 + lane * 8 + (e % 8);
                const float xi = v[e];  // -inf past the vocabulary
                u32 bin = NO_TOKEN;
                unsigned long long w = 0ull;
                if (xi != -INFINITY) {
                    const u32 key = order_key(xi);
                    if (key >= floor && (key & hi_mask) == prefix && allowed(i, banned, nb)) {
                        // Truncation as in ops::sampling::weight_fixed.
                        w = mass ? (unsigned long long)(expf(xi * inv_t - ymax) * 4294967296.0f) : 1ull;
                        if (w != 0ull) bin = (key >> shift) & 255u;
                    }
                }
                // Most elements of the later passes match no lane's prefix: skip the match then.
                if (__ballot_sync(0xffffffffu, bin != NO_TOKEN) == 0u) continue;
                const u32 peers = __match_any_sync(0xffffffffu, bin);
                if (bin != NO_TOKEN) {
                    const u32 lo = __reduce_add_sync(peers, (u32)(w & 0xffffull));
                    const u32 hi = __reduce_add_sync(peers, (u32)(w >> 16));
                    if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], ((unsigned long long)hi << 16) + lo);
                }
            }
        }
        __syncthreads();
        // Bins from the top (digit 255 first); totals are integers below 2^53, exact in double.
        const double v = threadIdx.x < 256 ? (double)hist[255 - threadIdx.x] : 0.0;
        const double incl = block_inclusive_scan(v, scan);
        if (mass && shift == 24) goal = k_or_p * scan[SAMPLE_WARPS - 1];
        if (v > 0.0 && above + (incl - v) < goal && goal <= above + incl) {
            *sm_sel = 255 - threadIdx.x;
            *sm_above = above + (incl - v);
        }
        __syncthreads();
        const u32 sel = *sm_sel;
        const double above_sel = *sm_above;
        __syncthreads();  // everyone has read them before they (or the scan's totals) are reused
        if (sel == NO_TOKEN) return floor;  // the same for every thread
        prefix |= sel << shift;
        above = above_sel;
    }
    return prefix;
}

// The draw by inverse CDF in id order over the kept ids, in one pass over the row: each warp tile
// records its max m_t of y = x / T and s_t = sum of exp(y - m_t) (f32 weights, f64 sum) in shared
// memory; then the block rescales the tile sums to the row max M (s_t * exp(m_t - M), in f64),
// scans them to place target = u * Z in one tile, and one warp re-reads that tile (SAMPLE_TILE ids)
// to walk it in id order. The weights are those of the CPU reference, exp(y - M), up to f32
// rounding (as before: the CPU sums exact f64 weights), so the tokens agree unless a draw falls
// within rounding of a CDF boundary. Writes (token, log-prob bits) to out[0..2].
template <typename T>
__device__ void draw_by_tiles(const T* __restrict__ x, u32 vocab, const u32* banned, u32 nb, u32 floor, float inv_t,
                              u32 draw, u32* __restrict__ out, float* sm_red, double* sm_scan) {
    extern __shared__ double sample_dyn[];  // [tiles] sums, then [tiles] maxima (floats)
    __shared__ u32 sm_tile, sm_last_tile, sm_owner;
    __shared__ double sm_excl;
    const u32 tiles = (vocab + SAMPLE_TILE - 1) / SAMPLE_TILE;
    double* tile_s = sample_dyn;
    float* tile_m = reinterpret_cast<float*>(sample_dyn + tiles);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool vec = vocab % 8 == 0 && (reinterpret_cast<size_t>(x) & 15) == 0;
    if (threadIdx.x == 0) {
        sm_tile = NO_TOKEN;
        sm_last_tile = 0;
        sm_owner = NO_TOKEN;
    }

    // The pass: tile maxima and sums.
    for (u32 t = warp; t < tiles; t += SAMPLE_WARPS) {
        float v[16];
        load_tile(x, vocab, t, vec, v);
        float m = -INFINITY;
#pragma unroll
        for (int e = 0; e < 16; ++e) {
            const u32 i = t * SAMPLE_TILE + (e / 8) * 256 + lane * 8 + (e % 8);
            const bool k = kept(i, v[e], banned, nb, floor);
            v[e] = k ? v[e] * inv_t : -INFINITY;
            m = fmaxf(m, v[e]);
        }
        m = warp_max(m);
        double s = 0.0;
        if (m != -INFINITY) {
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (v[e] != -INFINITY) s += (double)expf(v[e] - m);
        }
        s = warp_sum_d(s);
        if (lane == 0) {
            tile_m[t] = m;
            tile_s[t] = s;
        }
    }
    __syncthreads();

    // The row max M over the tile maxima.
    float mx = -INFINITY;
    for (u32 t = threadIdx.x; t < tiles; t += SAMPLE_THREADS) mx = fmaxf(mx, tile_m[t]);
    mx = warp_max(mx);
    if (lane == 0) sm_red[warp] = mx;
    __syncthreads();
    mx = lane < SAMPLE_WARPS ? sm_red[lane] : -INFINITY;
    const float row_max = warp_max(mx);

    // Each thread a contiguous range of tiles: rescaled sums, a block scan, the tile of the target.
    const u32 per = (tiles + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const u32 lo = min(tiles, threadIdx.x * per), hi = min(tiles, lo + per);
    double sum = 0.0;
    for (u32 t = lo; t < hi; ++t) {
        if (tile_s[t] > 0.0) {
            sum += tile_s[t] * exp((double)tile_m[t] - (double)row_max);
            atomicMax(&sm_last_tile, t);
        }
    }
    const double incl = block_inclusive_scan(sum, sm_scan);  // syncs: sm_tile is initialised
    const double excl = incl - sum;
    const double total = sm_scan[SAMPLE_WARPS - 1];
    const double target = ((double)draw + 0.5) * (1.0 / 4294967296.0) * total;
    // The lowest thread whose range holds the target owns it (rounding could let two claim it;
    // the lowest wins so that the draw stays deterministic).
    if (sum > 0.0 && excl <= target && target < incl) atomicMin(&sm_owner, threadIdx.x);
    __syncthreads();
    if (threadIdx.x == sm_owner) {
        double acc = excl;
        u32 pick = NO_TOKEN;
        double pick_excl = 0.0;
        for (u32 t = lo; t < hi; ++t) {
            if (!(tile_s[t] > 0.0)) continue;
            const double st = tile_s[t] * exp((double)tile_m[t] - (double)row_max);
            pick = t;  // the last positive tile of the range if rounding keeps acc below target
            pick_excl = acc;
            if (acc + st > target) break;
            acc += st;
        }
        sm_tile = pick;
        sm_excl = pick_excl;
    }
    __syncthreads();
    if (warp != 0) return;

    // Walk the target's tile (target >= Z by rounding: the last positive tile, to its last id).
    const bool found_tile = sm_tile != NO_TOKEN;
    const u32 t = found_tile ? sm_tile : sm_last_tile;
    double carry = found_tile ? sm_excl : target;
    const float m_t = tile_m[t];
    const double scale = exp((double)m_t - (double)row_max);
    float v[16];
    load_tile(x, vocab, t, vec, v);
    u32 pick = NO_TOKEN, last = 0;
    bool has_last = false;
#pragma unroll
    for (int g = 0; g < 2; ++g) {
        double w[8], lane_sum = 0.0;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const u32 i = t * SAMPLE_TILE + g * 256 + lane * 8 + e;
            const bool k = kept(i, v[8 * g + e], banned, nb, floor);
            const float we = k ? expf(v[8 * g + e] * inv_t - m_t) : 0.0f;
            w[e] = (double)we * scale;
            lane_sum += w[e];
            if (we > 0.0f) {
                last = i;
                has_last = true;
            }
        }
        double lane_incl = lane_sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const double n = __shfl_up_sync(0xffffffffu, lane_incl, o);
            if (lane >= o) lane_incl += n;
        }
        const double group_total = __shfl_sync(0xffffffffu, lane_incl, 31);
        const unsigned crosses = __ballot_sync(0xffffffffu, found_tile && carry + lane_incl > target);
        if (crosses != 0u) {
            const int first = __ffs(crosses) - 1;
            if (lane == first) {
                double acc = carry + lane_incl - lane_sum;
                for (int e = 0; e < 8; ++e) {
                    acc += w[e];
                    if (w[e] > 0.0 && acc > target) {
                        pick = t * SAMPLE_TILE + g * 256 + lane * 8 + e;
                        break;
                    }
                }
                if (pick == NO_TOKEN) pick = last;  // rounding inside the lane: its last positive id
            }
            pick = __shfl_sync(0xffffffffu, pick, first);
            break;
        }
        carry += group_total;
    }
    if (pick == NO_TOKEN) {
        // The walk stayed below the target by rounding: the tile's last id with a positive weight.
        u32 cand = has_last ? last : 0u;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) cand = max(cand, __shfl_xor_sync(0xffffffffu, cand, o));
        pick = cand;
    }
    if (lane == 0) {
        const float w = expf(ld(x, pick) * inv_t - m_t);
        out[0] = pick;
        out[1] = __float_as_uint((float)log((double)w * scale / total));
    }
}

template <typename T>
__device__ void sample_impl(const T* __restrict__ logits, const u32* __restrict__ spec, u32* __restrict__ out,
                            u32 vocab, u32 cols) {
    __shared__ float sm_m[SAMPLE_WARPS], sm_s[SAMPLE_WARPS];
    __shared__ u32 sm_a[SAMPLE_WARPS];
    __shared__ double sm_scan[SAMPLE_WARPS];
    __shared__ u32 sm_banned[16];
    __shared__ unsigned long long sm_hist[256];
    __shared__ u32 sm_sel;
    __shared__ double sm_above;

    const u32 j = blockIdx.x;
    const u32* sp = spec + (size_t)j * cols;
    const u32 row = sp[0];
    const float temp = __uint_as_float(sp[1]);
    const u32 draw = sp[2];
    const u32 top_k = sp[3];
    const float top_p = __uint_as_float(sp[4]);
    u32 nb = cols - 5;
    if (nb > 16) nb = 16;  // the host checks cols <= 21
    if (threadIdx.x < nb) sm_banned[threadIdx.x] = sp[5 + threadIdx.x];
    __syncthreads();
    // Padding ids are >= vocab and never match a token.
    const T* x = logits + (size_t)row * vocab;
    const bool greedy = temp == 0.0f;
    const float inv_t = greedy ? 1.0f : 1.0f / temp;
    if (!greedy && top_k == 0 && !(top_p < 1.0f)) {
        // Plain temperature sampling: no max pass first, the tiles carry their own maxima.
        draw_by_tiles(x, vocab, sm_banned, nb, 0u, inv_t, draw, out + 2 * j, sm_m, sm_scan);
        return;
    }

    // Pass 1: online (max, sum, argmax) of y = x / T over the allowed ids, read in warp tiles
    // (16-byte loads); each lane meets its ids in increasing order, so a strict > keeps the lowest
    // id of a tie, and the merges below prefer the lower id.
    float m = -INFINITY, s = 0.0f;
    u32 a = NO_TOKEN;
    {
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const u32 tiles = (vocab + SAMPLE_TILE - 1) / SAMPLE_TILE;
        const bool vec = vocab % 8 == 0 && (reinterpret_cast<size_t>(x) & 15) == 0;
        for (u32 t = warp; t < tiles; t += SAMPLE_WARPS) {
            float v[16];
            load_tile(x, vocab, t, vec, v);
            float tm = -INFINITY;
            u32 ta = NO_TOKEN;
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                const u32 i = t * SAMPLE_TILE + (e / 8) * 256 + lane * 8 + (e % 8);
                // Masked logits (-inf) and banned ids have probability 0, as in the reference.
                v[e] = (v[e] != -INFINITY && allowed(i, sm_banned, nb)) ? v[e] * inv_t : -INFINITY;
                if (v[e] > tm) {
                    tm = v[e];
                    ta = i;
                }
            }
            if (tm == -INFINITY) continue;
            if (tm > m) {
                s = m == -INFINITY ? 0.0f : s * expf(m - tm);
                m = tm;
                a = ta;
            }
#pragma unroll
            for (int e = 0; e < 16; ++e)
                if (v[e] != -INFINITY) s += expf(v[e] - m);
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
        const u32 a2 = __shfl_xor_sync(0xffffffffu, a, o);
        merge_state(m, s, a, m2, s2, a2);
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_s[warp] = s;
        sm_a[warp] = a;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < SAMPLE_WARPS ? sm_m[lane] : -INFINITY;
        s = lane < SAMPLE_WARPS ? sm_s[lane] : 0.0f;
        a = lane < SAMPLE_WARPS ? sm_a[lane] : NO_TOKEN;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
            const float s2 = __shfl_xor_sync(0xffffffffu, s, o);
            const u32 a2 = __shfl_xor_sync(0xffffffffu, a, o);
            merge_state(m, s, a, m2, s2, a2);
        }
        if (lane == 0) {
            sm_m[0] = m;
            sm_s[0] = s;
            sm_a[0] = a;
        }
    }
    __syncthreads();
    const float ymax = sm_m[0];
    if (greedy) {
        if (threadIdx.x == 0) {
            out[2 * j] = sm_a[0];
            out[2 * j + 1] = __float_as_uint(-logf(sm_s[0]));
        }
        return;
    }

    // Top-k, then top-p over what top-k kept: the smallest key a kept id has (0 keeps all). The
    // max is always kept, so ymax stays the max of the kept ids.
    u32 floor = 0;
    if (top_k > 0)
        floor = radix_select(x, vocab, sm_banned, nb, 0u, false, inv_t, ymax, (double)top_k, sm_hist, sm_scan,
                             &sm_sel, &sm_above);
    if (top_p < 1.0f)
        floor = radix_select(x, vocab, sm_banned, nb, floor, true, inv_t, ymax, (double)top_p, sm_hist, sm_scan,
                             &sm_sel, &sm_above);
    draw_by_tiles(x, vocab, sm_banned, nb, floor, inv_t, draw, out + 2 * j, sm_m, sm_scan);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_tokens_f32(const float* logits, const u32* spec, u32* out, u32 vocab, u32 cols) { pdl_entry();
    sample_impl(logits, spec, out, vocab, cols);
}
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_tokens_bf16(const __nv_bfloat16* logits, const u32* spec, u32* out, u32 vocab, u32 cols) { pdl_entry();
    sample_impl(logits, spec, out, vocab, cols);
}
