// Helpers shared by every realign kernel; prepended to each .cu file before NVRTC compiles it.
//
// Float tensors are f32 or bf16 in memory; kernels always compute in f32 registers: `ld` widens,
// `st` rounds to nearest even. Offsets into large tensors are size_t.
#include <cuda_bf16.h>

typedef unsigned int u32;
typedef unsigned long long u64;

// NVRTC has no <math.h>; the IEEE infinity by its bits.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Programmatic dependent launch (PDL, sm_90+). Every kernel starts with `pdl_entry()`. Compiled with
// REALIGN_PDL (launch.rs defines it when PDL is on), it holds the kernel in `griddepcontrol.wait`
// until the previous kernel in the stream has finished and its writes are visible, so nothing is
// read or overwritten early, then lets the next kernel become resident
// (`griddepcontrol.launch_dependents`), which hides that kernel's launch latency behind this one's
// tail. Without the define it is empty, so the default kernels are the ones without PDL.
__device__ __forceinline__ void pdl_entry() {
#if defined(REALIGN_PDL) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float ld(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void st(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, size_t i, float v) { p[i] = __float2bfloat16_rn(v); }

// v rounded to the precision of T and back (identity for f32).
template <typename T> __device__ __forceinline__ float round_to(float v);
template <> __device__ __forceinline__ float round_to<float>(float v) { return v; }
template <> __device__ __forceinline__ float round_to<__nv_bfloat16>(float v) {
    return __bfloat162float(__float2bfloat16_rn(v));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` holds 32 floats; the function syncs before returning, so it can be reused.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// 8 consecutive elements starting at element i (i a multiple of 8; buffers from cudaMalloc are
// 256-byte aligned): one 16-byte access for bf16, two for f32.
__device__ __forceinline__ void ld8(const float* p, size_t i, float* v) {
    const float4 a = *reinterpret_cast<const float4*>(p + i), b = *reinterpret_cast<const float4*>(p + i + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void ld8(const __nv_bfloat16* p, size_t i, float* v) {
    const uint4 u = *reinterpret_cast<const uint4*>(p + i);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(h[k]);
        v[2 * k] = f.x;
        v[2 * k + 1] = f.y;
    }
}
__device__ __forceinline__ void st8(float* p, size_t i, const float* v) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void st8(__nv_bfloat16* p, size_t i, const float* v) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4*>(p + i) = u;
}

// Grid-stride loop over n elements, 8 at a time, then the tail one at a time: `body8(i)` handles
// elements i..i+7, `body1(i)` element i.
template <typename F8, typename F1>
__device__ __forceinline__ void for_each_8(u64 n, F8 body8, F1 body1) {
    const u64 n8 = n / 8, stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = blockIdx.x * (u64)blockDim.x + threadIdx.x;
    for (u64 j = tid; j < n8; j += stride) body8((size_t)j * 8);
    for (u64 j = n8 * 8 + tid; j < n; j += stride) body1((size_t)j);
}

// cos and sin of rotary pair i's angle at position p (head dim d), the arithmetic every RoPE
// kernel shares (rope.cu, qkv_rope_cache.cu, the attention backward's fused inverse rotation), so
// their results agree bit for bit: as HF, inv_freq = 1 / theta^(f32(2i) / f32(d)) and
// a = f32(p) * inv_freq in f32; theta^e and cos / sin(a) are evaluated in f64 and rounded, giving
// the correctly rounded f32 values a good libm returns, so the angle does not drift from the CPU
// reference at large positions.
__device__ __forceinline__ void rope_cos_sin(u32 p, u32 i, u32 d, float theta, float* c, float* s) {
    const float expo = (float)(2 * i) / (float)d;
    const float inv_freq = 1.0f / (float)pow((double)theta, (double)expo);
    const float a = (float)p * inv_freq;
    double sd, cd;
    sincos((double)a, &sd, &cd);
    *c = (float)cd;
    *s = (float)sd;
}
