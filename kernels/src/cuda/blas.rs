//! cuBLAS matrix products for `linear`: row-major tensors expressed as column-major GEMMs.
//!
//! A row-major [R, C] buffer is the column-major C×R matrix, so every product below is written for
//! the transposes. bf16 operands accumulate in f32 (`CUBLAS_COMPUTE_32F`); f32 operands use the
//! plain IEEE f32 path (`CUBLAS_COMPUTE_32F` under the default math mode never uses TF32).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as cublas, sys, CudaBlas};
use cudarc::driver::CudaStream;

use super::{cuda_err, CudaDevice};
use crate::{DType, Error, Result};

pub(crate) fn new_handle(stream: &Arc<CudaStream>) -> Result<CudaBlas> {
    let blas = CudaBlas::new(stream.clone()).map_err(cuda_err)?;
    // SAFETY: a live handle; DEFAULT math keeps f32 products in IEEE f32 (no TF32).
    unsafe { sys::cublasSetMathMode(*blas.handle(), sys::cublasMath_t::CUBLAS_DEFAULT_MATH) }
        .result()
        .map_err(cuda_err)?;
    Ok(blas)
}

fn data_type(d: DType) -> Result<sys::cudaDataType> {
    match d {
        DType::F32 => Ok(sys::cudaDataType::CUDA_R_32F),
        DType::BF16 => Ok(sys::cudaDataType::CUDA_R_16BF),
        DType::U32 => Err(Error::DType {
            op: "gemm",
            dtype: d,
        }),
    }
}

/// One column-major GEMM: C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C.
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub lda: usize,
    pub b: u64,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
    /// dtype of A and B.
    pub ab: DType,
    /// dtype of C.
    pub c_type: DType,
}

fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::msg(format!("gemm: {what} = {v} exceeds cuBLAS's i32 range")))
}

impl Gemm {
    pub(crate) fn run(&self, dev: &CudaDevice) -> Result<()> {
        if self.m == 0 || self.n == 0 {
            return Ok(());
        }
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (self.alpha, self.beta);
        dev.context().bind_to_thread().map_err(cuda_err)?;
        // SAFETY: the caller passes device addresses of buffers sized for these dimensions and
        // leading dimensions (checked by the op's shape checks); alpha/beta are host f32 scalars,
        // matching the f32 compute type.
        unsafe {
            cublas::gemm_ex(
                *dev.blas().handle(),
                op(self.trans_a),
                op(self.trans_b),
                dim(self.m, "m")?,
                dim(self.n, "n")?,
                dim(self.k, "k")?,
                &alpha as *const f32 as *const c_void,
                self.a as *const c_void,
                data_type(self.ab)?,
                dim(self.lda.max(1), "lda")?,
                self.b as *const c_void,
                data_type(self.ab)?,
                dim(self.ldb.max(1), "ldb")?,
                &beta as *const f32 as *const c_void,
                self.c as *mut c_void,
                data_type(self.c_type)?,
                dim(self.ldc.max(1), "ldc")?,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| {
            Error::Cuda(format!(
                "cublasGemmEx (m={}, n={}, k={}, {} x {} -> {}): {e:?}",
                self.m, self.n, self.k, self.ab, self.ab, self.c_type
            ))
        })
    }
}
