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

extern "C" __global__ void sum_squares_f32(const float* x, double* out, u64 n) { sum_squares_impl(x, out, n); }
extern "C" __global__ void sum_squares_bf16(const __nv_bfloat16* x, double* out, u64 n) { sum_squares_impl(x, out, n); }
