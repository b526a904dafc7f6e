//! linear: y[N,O] = x[N,I] · w[O,I]ᵀ + b[O] (HF weight layout), and its backward.
//!
//! The backward accumulates into dw and db (+=) so that micro-batches add up without extra copies;
//! the first micro-batch of a step may instead write dw over the buffer ([`GradStore::Overwrite`]),
//! so that the matrix gradients need no zeroing pass before it.

use super::{check_dtype, check_float, check_same, check_shape};
use crate::{DType, Device, Error, Result, Tensor};

/// y[N,O] = x[N,I] · w[O,I]ᵀ (+ b[O]). x, w, b share dtype and device; y has their dtype.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_out(x, w, b, x.dtype())
}

/// [`linear`] with y in `out_dtype`: the inputs' dtype, or F32 from BF16 inputs. The F32 case
/// hands out the f32 accumulator unrounded (cuBLAS bf16 in, f32 out), for outputs whose bf16
/// rounding would cost precision downstream: the LM head's logits, whose rounding error (up to
/// 2⁻⁹ of a logit of size ~10) goes straight into every log-prob.
pub fn linear_out(x: &Tensor, w: &Tensor, b: Option<&Tensor>, out_dtype: DType) -> Result<Tensor> {
    const OP: &str = "linear";
    let (_n, _i, o) = check_operands(OP, x, w)?;
    if let Some(b) = b {
        check_same(OP, x, &[b])?;
        check_shape(OP, "bias b", b, &[o])?;
    }
    if out_dtype != x.dtype() && !(x.dtype() == DType::BF16 && out_dtype == DType::F32) {
        return Err(Error::msg(format!(
            "linear: output dtype {out_dtype} from {} inputs is not supported (the inputs' dtype, \
             or f32 from bf16)",
            x.dtype()
        )));
    }
    match x.device() {
        Device::Cpu => crate::cpu::linear::linear(x, w, b),
        Device::Cuda(_) => crate::cuda::linear::linear(x, w, b, out_dtype),
    }
}

/// The checks of a product x[N,I] · w[O,I]ᵀ: x a float tensor, w of its dtype and device with I
/// columns. Returns (N, I, O).
pub(crate) fn check_operands(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
) -> Result<(usize, usize, usize)> {
    check_float(op, x)?;
    let (n, i) = x.dims2(op)?;
    let (o, wi) = w.dims2(op)?;
    check_same(op, x, &[w])?;
    if wi != i {
        return Err(Error::shape(
            op,
            format!(
                "x has {i} input features but w has shape {:?} (expected [O, {i}])",
                w.shape()
            ),
        ));
    }
    Ok((n, i, o))
}

/// How a backward stores the weight gradient that its GEMM produces.
///
/// Zeroing every f32 gradient before a step writes 4 bytes per parameter (2 GB at 0.5 B
/// parameters), and each accumulating GEMM then reads its old dw back (the GEMM's beta = 1).
/// The first micro-batch of a step writes instead (beta = 0: the buffer's old contents are never
/// read, not even NaNs). Bias and norm-weight gradients are summed over rows with atomics and are
/// always added, so the caller zeroes those (they are small).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradStore {
    /// dw += the product: later micro-batches of a step, or a buffer the caller zeroed.
    Add,
    /// dw = the product: the first write of a step into a matrix gradient.
    Overwrite,
}

impl GradStore {
    /// The GEMM's beta for dw.
    pub fn beta(self) -> f32 {
        match self {
            GradStore::Add => 1.0,
            GradStore::Overwrite => 0.0,
        }
    }
}

/// The checks of a weight gradient dw[O,I] and bias gradient db[O]: f32, on x's device.
pub(crate) fn check_weight_grads(
    op: &'static str,
    x: &Tensor,
    dw: &Tensor,
    db: Option<&Tensor>,
    o: usize,
    i: usize,
) -> Result<()> {
    check_shape(op, "dw", dw, &[o, i])?;
    check_dtype(op, dw, DType::F32)?;
    x.check_same_device(dw, op)?;
    if let Some(db) = db {
        check_shape(op, "db", db, &[o])?;
        check_dtype(op, db, DType::F32)?;
        x.check_same_device(db, op)?;
    }
    Ok(())
}

/// Backward of [`linear`]: returns dx[N,I] = dy[N,O] · w[O,I] (dtype of x), stores
/// dw[O,I] (+)= dyᵀ · x as `store` says, and accumulates db[O] += Σ_n dy[n] (both F32).
pub fn linear_backward(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
) -> Result<Tensor> {
    const OP: &str = "linear_backward";
    check_float(OP, x)?;
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    check_same(OP, x, &[w, dy])?;
    check_shape(OP, "w", w, &[o, i])?;
    check_shape(OP, "dy", dy, &[n, o])?;
    check_weight_grads(OP, x, dw, db.as_deref(), o, i)?;
    match x.device() {
        Device::Cpu => crate::cpu::linear::linear_backward(dy, x, w, dw, db, store),
        Device::Cuda(_) => crate::cuda::linear::linear_backward(dy, x, w, dw, db, store),
    }
}
