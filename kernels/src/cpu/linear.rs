//! linear on the CPU: blocked GEMMs through ndarray (matrixmultiply's sgemm), never naive loops.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::{f32s, f32s_mut};
use crate::ops::GradStore;
use crate::{Error, Result, Tensor};

pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "linear";
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    let bias = b.map(|b| f32s(OP, b)).transpose()?;
    let mut y = vec![0.0f32; n * o];
    linear_forward(f32s(OP, x)?, f32s(OP, w)?, bias, &mut y, n, i, o)?;
    super::tensor(y, &[n, o])
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
    let (n, i) = x.dims2(OP)?;
    let (o, _) = w.dims2(OP)?;
    let (dy, x, w) = (f32s(OP, dy)?, f32s(OP, x)?, f32s(OP, w)?);
    let mut dx = vec![0.0f32; n * i];
    let db = db.map(|db| f32s_mut(OP, db)).transpose()?;
    linear_backward_slices(dy, x, w, &mut dx, f32s_mut(OP, dw)?, store, db, n, i, o)?;
    super::tensor(dx, &[n, i])
}

/// dx[N,I] = dy[N,O] · w[O,I] (the input half of [`linear_backward`]).
pub fn linear_backward_input(dy: &Tensor, w: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_backward_input";
    let (n, o) = dy.dims2(OP)?;
    let (_, i) = w.dims2(OP)?;
    let mut dx = vec![0.0f32; n * i];
    input_grad_slices(f32s(OP, dy)?, f32s(OP, w)?, &mut dx, n, i, o)?;
    super::tensor(dx, &[n, i])
}

/// dw (+)= dyᵀ · x as `store` says, db += Σ_n dy[n] (the weight half of [`linear_backward`]),
/// with the arithmetic of [`linear_backward_slices`].
pub fn linear_backward_weight(
    dy: &Tensor,
    x: &Tensor,
    dw: &mut Tensor,
    db: Option<&mut Tensor>,
    store: GradStore,
) -> Result<()> {
    const OP: &str = "linear_backward_weight";
    let (n, i) = x.dims2(OP)?;
    let (_, o) = dy.dims2(OP)?;
    let (dy, x) = (f32s(OP, dy)?, f32s(OP, x)?);
    let db = db.map(|db| f32s_mut(OP, db)).transpose()?;
    weight_grad_slices(dy, x, f32s_mut(OP, dw)?, store, db, n, i, o)
}

fn view<'a>(data: &'a [f32], rows: usize, cols: usize) -> Result<ArrayView2<'a, f32>> {
    ArrayView2::from_shape((rows, cols), data).map_err(|e| Error::msg(format!("linear: {e}")))
}

fn view_mut<'a>(data: &'a mut [f32], rows: usize, cols: usize) -> Result<ArrayViewMut2<'a, f32>> {
    ArrayViewMut2::from_shape((rows, cols), data).map_err(|e| Error::msg(format!("linear: {e}")))
}

/// y[N,O] = x[N,I] · w[O,I]ᵀ + b[O].
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
    n: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    let (xv, wv) = (view(x, n, i)?, view(w, o, i)?);
    let mut yv = view_mut(y, n, o)?;
    general_mat_mul(1.0, &xv, &wv.t(), 0.0, &mut yv);
    if let (Some(b), true) = (b, o > 0) {
        for row in y.chunks_exact_mut(o) {
            row.iter_mut().zip(b).for_each(|(y, b)| *y += b);
        }
    }
    Ok(())
}

/// dx[N,I] = dy[N,O] · w[O,I];  dw[O,I] (+)= dy[N,O]ᵀ · x[N,I] as `store` says;
/// db[O] += Σ_n dy[n,:].
#[allow(clippy::too_many_arguments)]
pub fn linear_backward_slices(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    store: GradStore,
    db: Option<&mut [f32]>,
    n: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    input_grad_slices(dy, w, dx, n, i, o)?;
    weight_grad_slices(dy, x, dw, store, db, n, i, o)
}

/// dx[N,I] = dy[N,O] · w[O,I].
fn input_grad_slices(
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
    n: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    let (dyv, wv) = (view(dy, n, o)?, view(w, o, i)?);
    general_mat_mul(1.0, &dyv, &wv, 0.0, &mut view_mut(dx, n, i)?);
    Ok(())
}

/// dw[O,I] (+)= dyᵀ · x as `store` says; db[O] += Σ_n dy[n].
#[allow(clippy::too_many_arguments)]
fn weight_grad_slices(
    dy: &[f32],
    x: &[f32],
    dw: &mut [f32],
    store: GradStore,
    db: Option<&mut [f32]>,
    n: usize,
    i: usize,
    o: usize,
) -> Result<()> {
    let (dyv, xv) = (view(dy, n, o)?, view(x, n, i)?);
    if store == GradStore::Overwrite {
        // Cleared, then added to: exactly the sums a zeroed buffer gets, and the old contents
        // (even NaNs) never reach the product.
        dw.fill(0.0);
    }
    general_mat_mul(1.0, &dyv.t(), &xv, 1.0, &mut view_mut(dw, o, i)?);
    if let (Some(db), true) = (db, o > 0) {
        for row in dy.chunks_exact(o) {
            db.iter_mut().zip(row).for_each(|(d, g)| *d += g);
        }
    }
    Ok(())
}
