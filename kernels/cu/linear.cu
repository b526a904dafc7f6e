// linear's helpers around cuBLAS: the bias broadcast that seeds y before a beta=1 GEMM (an f32 y
// for bf16 inputs, so that bias and product are summed in f32 and rounded to bf16 once, by a cast
// afterwards), and the bias gradient.

// y[n, o] = b[o] for y[N, O]; y may be wider than b (bf16 bias into an f32 output).
template <typename B, typename Y>
__device__ void bias_fill_impl(const B* __restrict__ b, Y* __restrict__ y, u32 rows, u32 cols) {
    const size_t total = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        st(y, i, ld(b, i % cols));
}

// db[o] += sum_n dy[n, o]. Grid (ceil(O / blockDim), row chunks): each thread sums one column over
// its chunk of rows (coalesced across threads), then one atomic per thread.
template <typename T>
__device__ void bias_grad_impl(const T* __restrict__ dy, float* db, u32 rows, u32 cols, u32 rows_per_chunk) {
    const u32 o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= cols) return;
    const u32 r0 = blockIdx.y * rows_per_chunk;
    const u32 r1 = min(rows, r0 + rows_per_chunk);
    float acc = 0.0f;
    for (u32 r = r0; r < r1; ++r) acc += ld(dy, (size_t)r * cols + o);
    if (r1 > r0) atomicAdd(db + o, acc);
}

extern "C" __global__ void bias_fill_f32(const float* b, float* y, u32 rows, u32 cols) { pdl_entry(); bias_fill_impl(b, y, rows, cols); }
extern "C" __global__ void bias_fill_bf16_f32(const __nv_bfloat16* b, float* y, u32 rows, u32 cols) { pdl_entry(); bias_fill_impl(b, y, rows, cols); }
extern "C" __global__ void bias_grad_f32(const float* dy, float* db, u32 rows, u32 cols, u32 chunk) { pdl_entry(); bias_grad_impl(dy, db, rows, cols, chunk); }
extern "C" __global__ void bias_grad_bf16(const __nv_bfloat16* dy, float* db, u32 rows, u32 cols, u32 chunk) { pdl_entry(); bias_grad_impl(dy, db, rows, cols, chunk); }
