//! linear_ksplit on the CPU: one blocked GEMM per slice of the inner dimension.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, ArrayView2, ArrayViewMut2};

use super::f32s;
use crate::{Error, Result, Tensor};

pub fn linear_ksplit(x: &Tensor, w: &Tensor, splits: usize) -> Result<Tensor> {
    const OP: &str = "linear_ksplit";
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    let err = |e: ndarray::ShapeError| Error::msg(format!("{OP}: {e}"));
    let xv = ArrayView2::from_shape((n, i), f32s(OP, x)?).map_err(err)?;
    let wv = ArrayView2::from_shape((o, i), f32s(OP, w)?).map_err(err)?;
    let step = i / splits;
    let mut p = vec![0.0f32; splits * n * o];
    for (sp, part) in p.chunks_exact_mut((n * o).max(1)).enumerate().take(splits) {
        let cols = s![.., sp * step..(sp + 1) * step];
        let mut pv = ArrayViewMut2::from_shape((n, o), part).map_err(err)?;
        // part[N,O] = x[:, slice] · w[:, slice]ᵀ
        general_mat_mul(1.0, &xv.slice(cols), &wv.slice(cols).t(), 0.0, &mut pv);
    }
    super::tensor(p, &[splits, n, o])
}
