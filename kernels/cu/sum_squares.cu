// Sum of squares of a tensor into one f64 (the global grad norm is the sqrt of the sum over
// tensors). Each thread accumulates in f64, the block reduces, one f64 atomic per block: `out`
// must be zeroed before launch.

template <typename T>
__device__ void sum_squares_impl(const T* __restrict__ x, double* out, u64 n) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        const double v = (double)ld(x, i);
        acc += v * v;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    acc = warp_sum_d(acc);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < nwarps ? scratch[lane] : 0.0;
        acc = warp_sum_d(acc);
        if (lane == 0) atomicAdd(out, acc);
    }
}

extern "C" __global__ void sum_squares_f32(const float* x, double* out, u64 n) { pdl_entry(); sum_squares_impl(x, out, n); }
extern "C" __global__ void sum_squares_bf16(const __nv_bfloat16* x, double* out, u64 n) { pdl_entry(); sum_squares_impl(x, out, n); }

// Many f32 tensors in one launch: `table` holds 4 u64 per row (address, length, first block,
// output slot); row r owns blocks [block0, next block0), SS_BLOCK_ELEMS elements each (found by
// binary search), and adds its blocks' sums into out[slot] (zeroed before launch).
#define SS_BLOCK_ELEMS 16384
extern "C" __global__ void sum_squares_many_f32(const u64* __restrict__ table, u32 n_slots, double* out) { pdl_entry();
    __shared__ double scratch[32];
    u32 lo = 0, hi = n_slots - 1;
    while (lo < hi) {
        const u32 mid = (lo + hi + 1) / 2;
        if (table[4 * mid + 2] <= blockIdx.x) lo = mid;
        else hi = mid - 1;
    }
    const float* x = reinterpret_cast<const float*>(table[4 * lo]);
    const u64 n = table[4 * lo + 1];
    const u64 start = (blockIdx.x - table[4 * lo + 2]) * (u64)SS_BLOCK_ELEMS;
    const u64 end = min(start + SS_BLOCK_ELEMS, n);
    double acc = 0.0;
    // Four elements per 16-byte load (block starts are multiples of SS_BLOCK_ELEMS, buffers
    // 256-byte aligned); the tail of a tensor one at a time.
    for (u64 i = start + 4 * (u64)threadIdx.x; i < end; i += 4 * (u64)blockDim.x) {
        if (i + 4 <= end) {
            const float4 f = *reinterpret_cast<const float4*>(x + i);
            acc += (double)f.x * f.x + (double)f.y * f.y + (double)f.z * f.z + (double)f.w * f.w;
        } else {
            for (u64 j = i; j < end; ++j) acc += (double)x[j] * x[j];
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    acc = warp_sum_d(acc);
    if (lane == 0) scratch[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < nwarps ? scratch[lane] : 0.0;
        acc = warp_sum_d(acc);
        if (lane == 0) atomicAdd(out + table[4 * lo + 3], acc);
    }
}

// The clip decision of one optimiser step, on the device so that nothing waits for the host:
// norm = sqrt(sums[0] + sums[1] + ... ) added in tensor order (as the host adds
// `sum_squares_each`), then out = {norm, scale, skip}: skip = 1 when the norm is not finite (the
// AdamW kernel then leaves everything alone), else scale = max_norm / (norm + 1e-6) when that is
// below 1 (PyTorch's `clip_grad_norm_`), else 1. max_norm < 0 means no clipping. One thread: the
// sums are a few hundred doubles.
extern "C" __global__ void grad_clip_finalize(const double* __restrict__ sums, u32 n, double max_norm,
                                              double* out) { pdl_entry();
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double total = 0.0;
    for (u32 i = 0; i < n; ++i) total += sums[i];
    const double norm = sqrt(total);
    double scale = 1.0, skip = 0.0;
    if (!isfinite(norm)) {
        scale = 0.0;
        skip = 1.0;
    } else if (max_norm >= 0.0) {
        const double c = max_norm / (norm + 1e-6);
        if (c < 1.0) scale = c;
    }
    out[0] = norm;
    out[1] = scale;
    out[2] = skip;
}
