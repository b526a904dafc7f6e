//! linear_ksplit on the GPU: one `cublasGemmStridedBatchedEx` whose batch runs over the slices of
//! the inner dimension (bf16 or f32 in, f32 partials out).
//!
//! Row-major x[N,I] is the column-major I×N matrix; slice s of it starts s·I/S elements in, with
//! the same leading dimension I. So partial s, column-major p_s(O×N) = w_sᵀ-op · x_s, is GEMM s of
//! a strided batch with A = w (lda I, stride I/S), B = x (ldb I, stride I/S), C = p (ldc O,
//! stride N·O).

use super::blas::{Gemm, GemmKey};
use super::{device_of, empty, ptr};
use crate::{DType, Result, Tensor};

pub fn linear_ksplit(x: &Tensor, w: &Tensor, splits: usize) -> Result<Tensor> {
    const OP: &str = "linear_ksplit";
    let dev = device_of(x, OP)?;
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    let p = empty(&dev, &[splits, n, o], DType::F32)?;
    if n == 0 || o == 0 {
        return Ok(p);
    }
    let step = i / splits;
    // `linear`'s product over the first slice of I (leading dimensions still I).
    let key = GemmKey {
        k: step,
        ..GemmKey::linear(n, i, o, x.dtype(), DType::F32, false)
    };
    let ptrs = [ptr(w, &dev, OP)?, ptr(x, &dev, OP)?, ptr(&p, &dev, OP)?];
    Gemm::of_key(&key, ptrs, 0.0).run_strided_batched(&dev, [step, step, n * o], splits)?;
    Ok(p)
}
