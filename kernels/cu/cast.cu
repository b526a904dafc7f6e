// cast: f32 <-> bf16, elementwise, round to nearest even. 8 elements per access (16-byte loads).

extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, __nv_bfloat16* __restrict__ y, u64 n) {
    float v[8];
    for_each_8(n, [&](size_t i) { ld8(x, i, v); st8(y, i, v); }, [&](size_t i) { y[i] = __float2bfloat16_rn(x[i]); });
}

extern "C" __global__ void cast_bf16_f32(const __nv_bfloat16* __restrict__ x, float* __restrict__ y, u64 n) {
    float v[8];
    for_each_8(n, [&](size_t i) { ld8(x, i, v); st8(y, i, v); }, [&](size_t i) { y[i] = __bfloat162float(x[i]); });
}
