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
// Sampling: pass 1 finds the max of the allowed logits; pass 2 gives each thread one contiguous
// chunk of ids and sums the weights of the kept ids w_i = exp((x_i - max) / T) in double; an
// exclusive scan of the chunk sums places target = u * Z in exactly one chunk, whose thread walks
// it in id order to the first id whose running sum exceeds the target. Log-prob = ln(w / Z).
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

// The largest key v such that the candidates (allowed ids with key >= floor) with key >= v reach
// the goal: a count of k (mass = false), or top_p of their total fixed-point weight (mass = true).
// Returns `floor` when the candidates never reach the goal (top-k with k >= their number). All
// threads of the block must call it.
template <typename T>
__device__ u32 radix_select(const T* __restrict__ x, u32 vocab, const u32* banned, u32 nb, u32 floor, bool mass,
                            float inv_t, float ymax, double k_or_p, unsigned long long* hist, double* scan,
                            u32* sm_sel, double* sm_above) {
    u32 prefix = 0;
    double above = 0.0, goal = k_or_p;
    for (int shift = 24; shift >= 0; shift -= 8) {
        const u32 hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
        for (u32 t = threadIdx.x; t < 256; t += SAMPLE_THREADS) hist[t] = 0ull;
        if (threadIdx.x == 0) *sm_sel = NO_TOKEN;
        __syncthreads();
        for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
            if (!allowed(i, banned, nb)) continue;
            const float xi = ld(x, i);
            if (xi == -INFINITY) continue;
            const u32 key = order_key(xi);
            if (key < floor || (key & hi_mask) != prefix) continue;
            // Truncation as in ops::sampling::weight_fixed.
            const unsigned long long w =
                mass ? (unsigned long long)(expf(xi * inv_t - ymax) * 4294967296.0f) : 1ull;
            if (w != 0ull) atomicAdd(&hist[(key >> shift) & 255u], w);
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

template <typename T>
__device__ void sample_impl(const T* __restrict__ logits, const u32* __restrict__ spec, u32* __restrict__ out,
                            u32 vocab, u32 cols) {
    __shared__ float sm_m[SAMPLE_WARPS], sm_s[SAMPLE_WARPS];
    __shared__ u32 sm_a[SAMPLE_WARPS];
    __shared__ double sm_scan[SAMPLE_WARPS];
    __shared__ u32 sm_banned[16];
    __shared__ u32 sm_pick, sm_last;
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

    // Pass 1: online (max, sum, argmax) of y = x / T over the allowed ids.
    float m = -INFINITY, s = 0.0f;
    u32 a = NO_TOKEN;
    for (u32 i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
        if (!allowed(i, sm_banned, nb)) continue;
        const float y = ld(x, i) * inv_t;
        if (y == -INFINITY) continue;  // a masked logit: probability 0, as in the reference
        if (y > m) {
            s = s * expf(m - y) + 1.0f;  // expf(-inf) = 0 on the first id
            m = y;
            a = i;
        } else {
            s += expf(y - m);
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

    // Pass 2: contiguous chunks in id order, weight sums in double.
    const u32 chunk = (vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const u32 lo = min(vocab, threadIdx.x * chunk), hi = min(vocab, lo + chunk);
    double sum = 0.0;
    u32 last = NO_TOKEN;  // last id of the chunk with a positive weight
    for (u32 i = lo; i < hi; ++i) {
        if (!allowed(i, sm_banned, nb) || order_key(ld(x, i)) < floor) continue;
        const float w = expf(ld(x, i) * inv_t - ymax);
        sum += (double)w;
        if (w > 0.0f) last = i;
    }
    if (threadIdx.x == 0) {
        sm_pick = NO_TOKEN;
        sm_last = 0;
    }
    const double incl = block_inclusive_scan(sum, sm_scan);
    const double excl = incl - sum;
    const double total = sm_scan[SAMPLE_WARPS - 1];
    if (last != NO_TOKEN) atomicMax(&sm_last, last);
    const double target = ((double)draw + 0.5) * (1.0 / 4294967296.0) * total;
    if (sum > 0.0 && excl <= target && target < incl) {
        double acc = excl;
        u32 pick = last;  // if rounding keeps the walk below the target
        for (u32 i = lo; i < hi; ++i) {
            if (!allowed(i, sm_banned, nb) || order_key(ld(x, i)) < floor) continue;
            acc += (double)expf(ld(x, i) * inv_t - ymax);
            if (acc > target) {
                pick = i;
                break;
            }
        }
        sm_pick = pick;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        const u32 pick = sm_pick != NO_TOKEN ? sm_pick : sm_last;  // target >= Z by rounding
        const float w = expf(ld(x, pick) * inv_t - ymax);
        out[2 * j] = pick;
        out[2 * j + 1] = __float_as_uint((float)log((double)w / total));
    }
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_tokens_f32(const float* logits, const u32* spec, u32* out, u32 vocab, u32 cols) {
    sample_impl(logits, spec, out, vocab, cols);
}
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_tokens_bf16(const __nv_bfloat16* logits, const u32* spec, u32* out, u32 vocab, u32 cols) {
    sample_impl(logits, spec, out, vocab, cols);
}
