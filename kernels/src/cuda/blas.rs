//! cuBLAS matrix products for `linear`: row-major tensors expressed as column-major GEMMs.
//!
//! A row-major [R, C] buffer is the column-major C×R matrix, so every product below is written for
//! the transposes. bf16 operands accumulate in f32 (`CUBLAS_COMPUTE_32F`); f32 operands use the
//! plain IEEE f32 path (`CUBLAS_COMPUTE_32F` under the default math mode never uses TF32).
//!
//! Two ways to run one: `cublasGemmEx` (cuBLAS picks the kernel), or `cublasLtMatmul` with an
//! algorithm fixed per shape (`lt`): from a table measured on the GPU (`blas/gemm_table.txt`,
//! written by `kernels/examples/gemm_bench.rs`), else cuBLASLt's heuristic for a decode-sized
//! forward product (bf16, at most [`HEURISTIC_MAX_ROWS`] rows). Neither choice is made by timing
//! in the process, so a shape always runs the same kernel and gives the same bits run to run
//! (cuBLAS's reproducibility contract: same library, same GPU model, one stream). The table also
//! holds the training step's products (measured on an H100, 2026-12-07); everything else (other
//! training shapes, f32) runs `cublasGemmEx`. `REALIGN_GEMM=ex` forces `cublasGemmEx`
//! everywhere, `REALIGN_GEMM=heuristic` skips the table, `REALIGN_GEMM_TABLE=FILE` reads the table
//! from FILE instead of the built-in one.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{result as cublas, sys, CudaBlas};
use cudarc::driver::CudaStream;

use super::{cuda_err, CudaDevice};
use crate::{DType, Error, Result, Tensor};

mod lt;

pub use lt::{
    built_in_table, candidates, describe, parse_key, table_header, table_line, Algo, Candidate,
};

/// Forward products with at most this many rows (the decode batch buckets up to 256) take
/// cuBLASLt's heuristic algorithm when the table has no entry for them.
pub const HEURISTIC_MAX_ROWS: usize = 256;

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

/// What a GEMM's algorithm depends on: its shape, layout, dtypes and whether C is read. The key
/// of the tuned table and of the per-process plan cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmKey {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub ab: DType,
    pub c_type: DType,
    /// beta ≠ 0: C is read (a bias seeded into it, or an accumulation).
    pub reads_c: bool,
}

impl GemmKey {
    /// The GEMM of `linear`'s forward y[N,O] = x[N,I] · w[O,I]ᵀ (+ y when `reads_c`), y in
    /// `out` (column-major: y(O×N) = wᵀ-op · x).
    pub fn linear(n: usize, i: usize, o: usize, ab: DType, out: DType, reads_c: bool) -> GemmKey {
        GemmKey {
            trans_a: true,
            trans_b: false,
            m: o,
            n,
            k: i,
            lda: i,
            ldb: i,
            ldc: o,
            ab,
            c_type: out,
            reads_c,
        }
    }

    /// Elements the buffers of A, B and C must hold (column-major: stored columns times the
    /// leading dimension).
    pub fn operand_elems(&self) -> (usize, usize, usize) {
        let a_cols = if self.trans_a { self.m } else { self.k };
        let b_cols = if self.trans_b { self.k } else { self.n };
        (self.lda * a_cols, self.ldb * b_cols, self.ldc * self.n)
    }

    /// A decode-sized forward product of bf16 operands: the heuristic may choose its algorithm.
    fn heuristic_eligible(&self) -> bool {
        self.trans_a && !self.trans_b && self.ab == DType::BF16 && self.n <= HEURISTIC_MAX_ROWS
    }
}

/// How to run one product (benchmarks and tests; the ops use [`Choice::Default`]).
#[derive(Debug, Clone)]
pub enum Choice {
    /// `cublasGemmEx`.
    Ex,
    /// What the ops run: the table, else the heuristic where eligible, else `cublasGemmEx`.
    Default,
    /// cuBLASLt's first heuristic algorithm (any shape).
    Heuristic,
    /// This cuBLASLt algorithm.
    Algo(Algo),
}

fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::msg(format!("gemm: {what} = {v} exceeds cuBLAS's i32 range")))
}

impl Gemm {
    /// The GEMM of `key` on device addresses `[a, b, c]`, alpha 1 (the inverse of
    /// [`Gemm::key`]; `beta` ≠ 0 exactly when `key.reads_c`).
    pub(crate) fn of_key(key: &GemmKey, [a, b, c]: [u64; 3], beta: f32) -> Gemm {
        Gemm {
            trans_a: key.trans_a,
            trans_b: key.trans_b,
            m: key.m,
            n: key.n,
            k: key.k,
            a,
            lda: key.lda,
            b,
            ldb: key.ldb,
            c,
            ldc: key.ldc,
            alpha: 1.0,
            beta,
            ab: key.ab,
            c_type: key.c_type,
        }
    }

    pub(crate) fn key(&self) -> GemmKey {
        GemmKey {
            trans_a: self.trans_a,
            trans_b: self.trans_b,
            m: self.m,
            n: self.n,
            k: self.k,
            lda: self.lda,
            ldb: self.ldb,
            ldc: self.ldc,
            ab: self.ab,
            c_type: self.c_type,
            reads_c: self.beta != 0.0,
        }
    }

    pub(crate) fn run(&self, dev: &CudaDevice) -> Result<()> {
        key_log::record(|| self.key());
        self.run_as(dev, &Choice::Default)
    }

    pub(crate) fn run_as(&self, dev: &CudaDevice, choice: &Choice) -> Result<()> {
        if self.m == 0 || self.n == 0 {
            return Ok(());
        }
        match lt::plan(dev, self, choice)? {
            Some(plan) => lt::run(dev, self, &plan),
            None => self.run_ex(dev),
        }
    }

    /// The GEMM's cuBLAS arguments: operations, dimensions (checked against cuBLAS's i32) and
    /// data types.
    fn ex_args(&self) -> Result<ExArgs> {
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        Ok(ExArgs {
            ops: [op(self.trans_a), op(self.trans_b)],
            mnk: [dim(self.m, "m")?, dim(self.n, "n")?, dim(self.k, "k")?],
            ld: [
                dim(self.lda.max(1), "lda")?,
                dim(self.ldb.max(1), "ldb")?,
                dim(self.ldc.max(1), "ldc")?,
            ],
            ab: data_type(self.ab)?,
            c: data_type(self.c_type)?,
        })
    }

    /// A cuBLAS call's failure, naming the call and the GEMM.
    fn ex_error(&self, call: &str, e: impl std::fmt::Debug) -> Error {
        Error::Cuda(format!(
            "{call} (m={}, n={}, k={}, {} x {} -> {}): {e:?}",
            self.m, self.n, self.k, self.ab, self.ab, self.c_type
        ))
    }

    fn run_ex(&self, dev: &CudaDevice) -> Result<()> {
        let x = self.ex_args()?;
        let (alpha, beta) = (self.alpha, self.beta);
        dev.context().bind_to_thread().map_err(cuda_err)?;
        let _sms = SmTarget::apply(dev)?;
        // SAFETY: the caller passes device addresses of buffers sized for these dimensions and
        // leading dimensions (checked by the op's shape checks); alpha/beta are host f32 scalars,
        // matching the f32 compute type.
        unsafe {
            cublas::gemm_ex(
                *dev.blas().handle(),
                x.ops[0],
                x.ops[1],
                x.mnk[0],
                x.mnk[1],
                x.mnk[2],
                &alpha as *const f32 as *const c_void,
                self.a as *const c_void,
                x.ab,
                x.ld[0],
                self.b as *const c_void,
                x.ab,
                x.ld[1],
                &beta as *const f32 as *const c_void,
                self.c as *mut c_void,
                x.c,
                x.ld[2],
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| self.ex_error("cublasGemmEx", e))
    }

    /// `batch` GEMMs of this shape in one `cublasGemmStridedBatchedEx` call, GEMM i on A, B and C
    /// offset by i times the strides (in elements). cuBLAS picks the kernel.
    pub(crate) fn run_strided_batched(
        &self,
        dev: &CudaDevice,
        strides: [usize; 3],
        batch: usize,
    ) -> Result<()> {
        if self.m == 0 || self.n == 0 || batch == 0 {
            return Ok(());
        }
        let x = self.ex_args()?;
        let stride = |v: usize| {
            i64::try_from(v).map_err(|_| Error::msg(format!("gemm: stride {v} exceeds i64")))
        };
        let (alpha, beta) = (self.alpha, self.beta);
        dev.context().bind_to_thread().map_err(cuda_err)?;
        let _sms = SmTarget::apply(dev)?;
        // SAFETY: the caller passes device addresses of buffers that hold `batch` operands at
        // these strides with these dimensions and leading dimensions (checked by the op's shape
        // checks); alpha/beta are host f32 scalars, matching the f32 compute type.
        unsafe {
            cublas::gemm_strided_batched_ex(
                *dev.blas().handle(),
                x.ops[0],
                x.ops[1],
                x.mnk[0],
                x.mnk[1],
                x.mnk[2],
                &alpha as *const f32 as *const c_void,
                self.a as *const c_void,
                x.ab,
                x.ld[0],
                stride(strides[0])?,
                self.b as *const c_void,
                x.ab,
                x.ld[1],
                stride(strides[1])?,
                &beta as *const f32 as *const c_void,
                self.c as *mut c_void,
                x.c,
                x.ld[2],
                stride(strides[2])?,
                dim(batch, "batch")?,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| self.ex_error(&format!("cublasGemmStridedBatchedEx (batch {batch})"), e))
    }
}

/// The SM count target of the thread's shared lanes ([`super::Lanes::share_sms`]) set on the
/// cuBLAS handle for one call, and reset to the whole GPU (0) when dropped.
struct SmTarget(Option<sys::cublasHandle_t>);

impl SmTarget {
    fn apply(dev: &CudaDevice) -> Result<SmTarget> {
        let Some(n) = super::gemm_sm_target() else {
            return Ok(SmTarget(None));
        };
        let handle = *dev.blas().handle();
        // SAFETY: a live handle; the setting is host-side state read by the next calls.
        unsafe { sys::cublasSetSmCountTarget(handle, n as i32) }
            .result()
            .map_err(|e| Error::Cuda(format!("cublasSetSmCountTarget({n}): {e:?}")))?;
        Ok(SmTarget(Some(handle)))
    }
}

impl Drop for SmTarget {
    fn drop(&mut self) {
        if let Some(handle) = self.0 {
            // SAFETY: as in `apply`; 0 means the device's SM count.
            let _ = unsafe { sys::cublasSetSmCountTarget(handle, 0) };
        }
    }
}

/// A [`Gemm`]'s arguments as cuBLAS takes them (`Gemm::ex_args`).
struct ExArgs {
    ops: [sys::cublasOperation_t; 2],
    mnk: [i32; 3],
    /// lda, ldb, ldc.
    ld: [i32; 3],
    ab: sys::cudaDataType,
    c: sys::cudaDataType,
}

/// y[N,O] = x[N,I] · w[O,I]ᵀ + beta · y, run as `choice` says: for benchmarks and tests that
/// compare the ways of running one product (`linear` always runs [`Choice::Default`]).
pub fn linear_with(
    x: &Tensor,
    w: &Tensor,
    y: &mut Tensor,
    beta: f32,
    choice: &Choice,
) -> Result<()> {
    const OP: &str = "linear_with";
    let (n, i) = x.dims2(OP)?;
    let (o, wi) = w.dims2(OP)?;
    let (yn, yo) = y.dims2(OP)?;
    if wi != i || yn != n || yo != o || w.dtype() != x.dtype() {
        return Err(Error::shape(
            OP,
            format!(
                "x [{n},{i}] {}, w [{o},{wi}] {}, y [{yn},{yo}]: want w [O,{i}] of x's dtype, y [{n},O]",
                x.dtype(),
                w.dtype()
            ),
        ));
    }
    let key = GemmKey::linear(n, i, o, x.dtype(), y.dtype(), beta != 0.0);
    gemm_with(&key, w, x, y, 1.0, beta, choice)
}

/// C = alpha · op(A) · op(B) + beta · C for the GEMM `key` describes, on the buffers of `a`, `b`
/// and `c` (column-major, as the key's leading dimensions say), run as `choice` says: for
/// `gemm_bench --keys`, which times the shapes a run logged. `beta` must be 0 unless
/// `key.reads_c`.
pub fn gemm_with(
    key: &GemmKey,
    a: &Tensor,
    b: &Tensor,
    c: &mut Tensor,
    alpha: f32,
    beta: f32,
    choice: &Choice,
) -> Result<()> {
    const OP: &str = "gemm_with";
    let dev = super::device_of(a, OP)?;
    let (a_elems, b_elems, c_elems) = key.operand_elems();
    let need = [
        (a, key.ab, a_elems, "A"),
        (b, key.ab, b_elems, "B"),
        (&*c, key.c_type, c_elems, "C"),
    ];
    for (t, dtype, elems, name) in need {
        if t.dtype() != dtype || t.numel() < elems {
            return Err(Error::shape(
                OP,
                format!(
                    "{name} is {} with {} elements; the key wants {dtype} with at least {elems}",
                    t.dtype(),
                    t.numel()
                ),
            ));
        }
    }
    if beta != 0.0 && !key.reads_c {
        return Err(Error::msg(format!(
            "{OP}: beta {beta} on a key that does not read C"
        )));
    }
    let ptrs = [
        super::ptr(a, &dev, OP)?,
        super::ptr(b, &dev, OP)?,
        super::ptr(c, &dev, OP)?,
    ];
    Gemm {
        alpha,
        ..Gemm::of_key(key, ptrs, beta)
    }
    .run_as(&dev, choice)
}

/// `REALIGN_GEMM_LOG=FILE`: every distinct GEMM the ops run is appended to FILE once, as a table
/// line ending in `ex`, so `gemm_bench --keys FILE` can time exactly the shapes of a real run
/// (e.g. one training step) and write a table for them.
mod key_log {
    use std::collections::HashSet;
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    use super::GemmKey;

    struct Log {
        seen: HashSet<GemmKey>,
        file: std::fs::File,
    }

    fn log() -> Option<&'static Mutex<Log>> {
        static LOG: OnceLock<Option<Mutex<Log>>> = OnceLock::new();
        LOG.get_or_init(|| {
            let path = std::env::var("REALIGN_GEMM_LOG").ok()?;
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(file) => Some(Mutex::new(Log {
                    seen: HashSet::new(),
                    file,
                })),
                Err(e) => {
                    tracing::warn!("REALIGN_GEMM_LOG={path}: cannot open ({e}); not logging");
                    None
                }
            }
        })
        .as_ref()
    }

    /// Logs `key()` if logging is on (the key is only built then: this runs on every GEMM).
    pub(super) fn record(key: impl FnOnce() -> GemmKey) {
        let Some(log) = log() else { return };
        let Ok(mut log) = log.lock() else { return };
        let key = key();
        if log.seen.insert(key) {
            let line = super::table_line(&key, None);
            if let Err(e) = writeln!(log.file, "{line}") {
                tracing::warn!("REALIGN_GEMM_LOG: write failed ({e})");
            }
        }
    }
}

/// Which way [`Choice::Default`] runs `key` on `dev`: "table", "table-ex", "heuristic" or "ex".
pub fn default_route(dev: &CudaDevice, key: &GemmKey) -> Result<&'static str> {
    lt::route(dev, key)
}
