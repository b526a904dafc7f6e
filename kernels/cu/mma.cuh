// Tensor-core and async-copy primitives (sm_80+): mma.sync m16n8k16 (bf16 in, f32 accumulate),
// ldmatrix fragment loads from shared memory, cp.async 16-byte copies. Prepended to the kernels
// that use them: attention_mma.cu (kernels/src/cuda/attention.rs), the paged decode kernels
// (kernels/src/cuda/paged_attention.rs) and gemm_wgmma.cu (its copies).
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4; pairs hold consecutive k, the
// lower k in the low 16 bits):
//   A 16x16: a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..)
//   B 16x8:  b0 (k 2t..2t+1, col g),  b1 (k 2t+8.., col g)
//   C 16x8:  c0,c1 (row g, cols 2t, 2t+1),  c2,c3 (row g+8, same cols)
// So the C fragments of two 8-column tiles are, pair for pair, the A fragment of the 16 columns.

#define MMA_LOG2E 1.4426950408889634f
#define MMA_LN2 0.6931471805599453f

// Two floats rounded to a bf16 pair (lo in the low half).
__device__ __forceinline__ u32 mma_pack2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<u32*>(&v);
}

// 2^x in one MUFU instruction (2^-inf = 0).
__device__ __forceinline__ float mma_ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// c += a · b for one 16x8 tile over k 16.
__device__ __forceinline__ void mma_16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ u32 mma_smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// B fragments of two 8-column tiles (n0.., n0+8..) at k-step k0 from a bf16 tile stored [n][k]
// (row = n, stride ld): b[0..1] for the first tile, b[2..3] for the second.
__device__ __forceinline__ void mma_frag_b_nk(u32* b, const __nv_bfloat16* s, u32 ld, u32 n0, u32 k0, u32 lane) {
    const u32 mi = lane / 8;
    const __nv_bfloat16* p = s + (n0 + (mi / 2) * 8 + lane % 8) * ld + k0 + (mi % 2) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                 : "r"(mma_smem_addr(p)));
}

// The same from a tile stored [k][n] (row = k), transposed on load.
__device__ __forceinline__ void mma_frag_b_kn(u32* b, const __nv_bfloat16* s, u32 ld, u32 k0, u32 n0, u32 lane) {
    const u32 mi = lane / 8;
    const __nv_bfloat16* p = s + (k0 + (mi % 2) * 8 + lane % 8) * ld + n0 + (mi / 2) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3])
                 : "r"(mma_smem_addr(p)));
}

// 16 bytes global -> shared without passing through registers; zero-fill (nothing read) when
// !valid.
// The same to a shared-window address (kernels that compute swizzled addresses as integers).
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    cp_async16(mma_smem_addr(dst), src, valid);
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
