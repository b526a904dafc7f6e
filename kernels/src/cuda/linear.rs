//! linear on the GPU: cuBLAS GEMMs (bf16 in, f32 accumulate; or IEEE f32) plus small kernels for
//! the bias broadcast and the bias gradient.
//!
//! Row-major [R, C] is column-major C×R, so (with A = w[O,I], B = x[N,I]):
//! - forward   y[N,O] = x wᵀ:  column-major y(O×N) = wᵀ-op(I×O → O×I) · x(I×N)
//! - backward  dx[N,I] = dy w: column-major dx(I×N) = w(I×O) · dy(O×N)
//! - backward  dw[O,I] += dyᵀ x: column-major dw(I×O) = x(I×N) · dyᵀ(N×O), f32 C, beta = 1
//!   (beta = 0 for the first write of a step, `GradStore::Overwrite`).

use super::blas::{Gemm, GemmKey};
use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, ptr, suffix};
use crate::ops::GradStore;
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("linear");

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// y[N,O] in `out_dtype` (x's dtype, or F32 from BF16 x: cuBLAS writes the f32 accumulator).
///
/// With a bias and a bf16 output the GEMM writes an f32 y seeded with the bias and the sum is
/// rounded to bf16 once, by a cast: cuBLAS with a bf16 C and beta = 1 rounds the product to bf16
/// before adding C (seen on the H200, cuBLAS 13: q/k/v of the Qwen2 fixture were exactly
/// bf16(bf16(x wᵀ) + b), up to 62 bf16 ulps from the correctly rounded sum where the two cancel).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, out_dtype: DType) -> Result<Tensor> {
    const OP: &str = "linear";
    let dev = device_of(x, OP)?;
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    let dtype = x.dtype();
    // Our own Hopper GEMMs, when asked for (REALIGN_GEMM=wgmma / tma / tma_pp), on what they
    // take. The environment is read once; the default path checks nothing else.
    let own = super::gemm_wgmma::requested() || super::gemm_tma::requested().is_some();
    if own
        && b.is_none()
        && dtype == DType::BF16
        && w.dtype() == DType::BF16
        && i.is_multiple_of(8)
        && super::gemm_wgmma::supported(&dev)
    {
        if super::gemm_wgmma::requested() {
            return super::gemm_wgmma::gemm_wgmma_tn(x, w, out_dtype);
        }
        match super::gemm_tma::requested() {
            Some(super::gemm_tma::Requested::Tiles) => {
                return super::gemm_tma::gemm_tma_tn(x, w, out_dtype)
            }
            Some(super::gemm_tma::Requested::PingPong) => {
                return super::gemm_tma::gemm_tma_auto_tn(x, w, out_dtype)
            }
            None => {}
        }
    }
    // The GEMM's C: f32 whenever a bias has to be added before the one rounding to bf16.
    let c_type = if b.is_some() { DType::F32 } else { out_dtype };
    let y = empty(&dev, &[n, o], c_type)?;
    let beta = match b {
        Some(b) => {
            // Seed y with the bias so the GEMM adds the product with beta = 1 in f32.
            let args = Args::new()
                .ptr(b, &dev, OP)?
                .ptr(&y, &dev, OP)?
                .u32(u32_dim(OP, n)?)
                .u32(u32_dim(OP, o)?);
            let func = if c_type == dtype {
                format!("bias_fill_{}", suffix(dtype, OP)?)
            } else {
                format!("bias_fill_{}_{}", suffix(dtype, OP)?, suffix(c_type, OP)?)
            };
            run(&dev, &SRC, &[], &func, Grid::cover(n * o, 256), args)?;
            1.0
        }
        None => 0.0,
    };
    let key = GemmKey::linear(n, i, o, dtype, c_type, beta != 0.0);
    let ptrs = [ptr(w, &dev, OP)?, ptr(x, &dev, OP)?, ptr(&y, &dev, OP)?];
    Gemm::of_key(&key, ptrs, beta).run(&dev)?;
    if c_type == out_dtype {
        Ok(y)
    } else {
        // [N,O] f32 -> bf16, round to nearest even: the one rounding of bias + product.
        super::cast::cast(&y, out_dtype)
    }
}

pub fn linear_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
) -> Result<Tensor> {
    const OP: &str = "linear_backward";
    let dev = device_of(x, OP)?;
    let (n, i) = x.dims2(OP)?;
    let dx = empty(&dev, &[n, i], x.dtype())?;
    backward_into(OP, dy, x, w, dw, db, store, &dx, 0.0)?;
    Ok(dx)
}

/// `linear_backward` adding dx into `dx_acc` (the GEMM's beta = 1) instead of writing a new dx.
pub fn linear_backward_acc(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
    dx_acc: &mut Tensor,
) -> Result<()> {
    backward_into("linear_backward_acc", dy, x, w, dw, db, store, dx_acc, 1.0)
}

/// The backward's two GEMMs and the bias gradient: dx = beta_dx · dx + dy w (in x's dtype),
/// dw (+)= dyᵀ x (f32; beta 0 for [`GradStore::Overwrite`]), db += column sums of dy.
#[allow(clippy::too_many_arguments)]
fn backward_into(
    op: &'static str,
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
    dx: &Tensor,
    beta_dx: f32,
) -> Result<()> {
    input_grad_into(op, dy, w, dx, beta_dx)?;
    weight_grad_into(op, dy, x, dw, db, store)
}

/// dx[N,I] = beta_dx · dx + dy[N,O] · w[O,I], in w's dtype.
fn input_grad_into(
    op: &'static str,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    beta_dx: f32,
) -> Result<()> {
    let dev = device_of(w, op)?;
    let (n, _) = dy.dims2(op)?;
    let (o, i) = w.dims2(op)?;
    let dtype = w.dtype();
    // dx(I×N) = beta_dx · dx + w(I×O) · dy(O×N), column-major.
    Gemm {
        trans_a: false,
        trans_b: false,
        m: i,
        n,
        k: o,
        a: ptr(w, &dev, op)?,
        lda: i,
        b: ptr(dy, &dev, op)?,
        ldb: o,
        c: ptr(dx, &dev, op)?,
        ldc: i,
        alpha: 1.0,
        beta: beta_dx,
        ab: dtype,
        c_type: dtype,
    }
    .run(&dev)
}

/// dw[O,I] (+)= dyᵀ · x (f32; beta 0 for [`GradStore::Overwrite`]), db[O] += column sums of dy.
fn weight_grad_into(
    op: &'static str,
    dy: &Tensor,
    x: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
) -> Result<()> {
    let dev = device_of(x, op)?;
    let (n, i) = x.dims2(op)?;
    let (_, o) = dy.dims2(op)?;
    let dtype = x.dtype();
    // dw(I×O) (+)= x(I×N) · dyᵀ(N×O), f32 C.
    Gemm {
        trans_a: false,
        trans_b: true,
        m: i,
        n: o,
        k: n,
        a: ptr(x, &dev, op)?,
        lda: i,
        b: ptr(dy, &dev, op)?,
        ldb: o,
        c: ptr(dw, &dev, op)?,
        ldc: i,
        alpha: 1.0,
        beta: store.beta(),
        ab: dtype,
        c_type: DType::F32,
    }
    .run(&dev)?;
    if let Some(db) = db {
        // Row chunks of 64: enough blocks to fill the GPU, few atomics per column.
        const CHUNK: usize = 64;
        let threads = 256u32;
        let g = Grid {
            grid: (
                o.div_ceil(threads as usize).max(1) as u32,
                n.div_ceil(CHUNK).clamp(1, 65535) as u32,
                1,
            ),
            block: (threads, 1, 1),
            smem: 0,
        };
        let chunk = n.div_ceil(g.grid.1 as usize).max(1);
        let args = Args::new()
            .ptr(dy, &dev, op)?
            .ptr(db, &dev, op)?
            .u32(u32_dim(op, n)?)
            .u32(u32_dim(op, o)?)
            .u32(u32_dim(op, chunk)?);
        let func = format!("bias_grad_{}", suffix(dtype, op)?);
        run(&dev, &SRC, &[], &func, g, args)?;
    }
    Ok(())
}

/// dx[N,I] = dy[N,O] · w[O,I] (the input half of [`linear_backward`]).
pub fn linear_backward_input(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_input";
    let dev = device_of(w, OP)?;
    let (n, _) = dy.dims2(OP)?;
    let (_, i) = w.dims2(OP)?;
    let dx = empty(&dev, &[n, i], w.dtype())?;
    input_grad_into(OP, dy, w, &dx, 0.0)?;
    Ok(dx)
}

/// dx_acc[N,I] += dy[N,O] · w[O,I] (the GEMM's beta = 1).
pub fn linear_backward_input_acc(dy: &Tensor, w: &Tensor, dx_acc: &mut Tensor) -> Result<()> {
    input_grad_into("linear_backward_input_acc", dy, w, dx_acc, 1.0)
}

/// dw (+)= dyᵀ · x as `store` says, db += column sums of dy (the weight half of
/// [`linear_backward`]).
pub fn linear_backward_weight(
    dy: &Tensor,
    x: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
) -> Result<()> {
    weight_grad_into("linear_backward_weight", dy, x, dw, db, store)
}
