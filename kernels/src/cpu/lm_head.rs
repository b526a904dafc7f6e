//! The LM head with its log-softmax on the CPU: per row chunk, logits = hidden · Wᵀ by the
//! `linear` GEMM, then the `logsoftmax_gather` row functions; the backward recomputes a chunk's
//! logits unless the forward kept them all. For [`LmHeadGrad::LogprobOnly`] the forward keeps the
//! residual R = onehot − p (f32 here) and the backward is the factorised one (row scalings around
//! the two GEMMs), so the CPU reference checks that algebra too.

use super::linear::{linear_backward_slices, linear_forward};
use super::logsoftmax_gather::{row_backward, row_forward};
use super::{f32s, f32s_mut};
use crate::ops::lm_head::{chunk_rows, LmHeadGrad, LmHeadRows, LmHeadSaved};
use crate::ops::{GradStore, NO_TARGET};
use crate::Result;
use crate::Tensor;

pub fn lm_head_logprobs(
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    inv_temp: f32,
    max_logits: usize,
    grad: LmHeadGrad,
) -> Result<LmHeadRows> {
    const OP: &str = "lm_head_logprobs";
    let (n, c) = hidden.dims2(OP)?;
    let (v, _) = w.dims2(OP)?;
    let (hs, ws) = (f32s(OP, hidden)?, f32s(OP, w)?);
    let rows = chunk_rows(v, max_logits);
    let keep = n <= rows;
    let residual = keep && grad == LmHeadGrad::LogprobOnly;
    let (mut logprob, mut entropy, mut lse) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    let mut logits = vec![0.0f32; rows.min(n) * v];
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        let z = &mut logits[..m * v]; // [m,V]
        linear_forward(&hs[r0 * c..(r0 + m) * c], ws, None, z, m, c, v)?;
        for (i, row) in z.chunks_exact_mut(v).enumerate() {
            let r = r0 + i;
            (logprob[r], entropy[r], lse[r]) = row_forward(row, targets[r], inv_temp);
            if residual {
                // In place: R_j = [j == t] − e^(z_j − lse), z = logits · inv_temp.
                let t = targets[r] as usize; // never a column when NO_TARGET
                for (j, x) in row.iter_mut().enumerate() {
                    let hit = if j == t { 1.0 } else { 0.0 };
                    *x = hit - (*x * inv_temp - lse[r]).exp();
                }
            }
        }
    }
    let kept = if keep {
        Some(super::tensor(logits, &[n, v])?)
    } else {
        None
    };
    let (logits, residual) = if residual { (None, kept) } else { (kept, None) };
    Ok(LmHeadRows {
        logprob: super::tensor(logprob, &[n])?,
        entropy: super::tensor(entropy, &[n])?,
        lse: super::tensor(lse, &[n])?,
        logits,
        residual,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn lm_head_logprobs_backward(
    dlogprob: &Tensor,
    dentropy: Option<&Tensor>,
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    fwd: LmHeadSaved<'_>,
    inv_temp: f32,
    max_logits: usize,
    dw: &mut Tensor,
    store: GradStore,
) -> Result<Tensor> {
    const OP: &str = "lm_head_logprobs_backward";
    let (n, c) = hidden.dims2(OP)?;
    let (v, _) = w.dims2(OP)?;
    let (hs, ws) = (f32s(OP, hidden)?, f32s(OP, w)?);
    let (dlp, ls) = (f32s(OP, dlogprob)?, f32s(OP, fwd.lse)?);
    // s_r = inv_temp · d(logprob)_r, 0 without a target: d(logits) = diag(s) R.
    let row_scale = |r: usize| {
        if targets[r] == NO_TARGET {
            0.0
        } else {
            inv_temp * dlp[r]
        }
    };
    if let Some(res) = fwd.residual {
        let res = f32s(OP, res)?; // [N,V]
        let scaled: Vec<f32> = hs
            .chunks_exact(c.max(1))
            .enumerate()
            .flat_map(|(r, row)| row.iter().map(move |&x| x * row_scale(r)))
            .collect(); // diag(s) hidden [N,C]
        let mut dh = vec![0.0f32; n * c];
        // dh = R · W (scaled below), dW += Rᵀ · diag(s) hidden.
        let dws = f32s_mut(OP, dw)?;
        linear_backward_slices(res, &scaled, ws, &mut dh, dws, store, None, n, c, v)?;
        for (r, row) in dh.chunks_exact_mut(c.max(1)).enumerate() {
            let s = row_scale(r);
            row.iter_mut().for_each(|x| *x *= s);
        }
        return super::tensor(dh, &[n, c]);
    }
    let dent = dentropy.map(|t| f32s(OP, t)).transpose()?;
    let kept = fwd.logits.map(|l| f32s(OP, l)).transpose()?;
    let dws = f32s_mut(OP, dw)?;
    let rows = if kept.is_some() {
        n.max(1)
    } else {
        chunk_rows(v, max_logits)
    };
    let mut dh = vec![0.0f32; n * c];
    let mut z = vec![0.0f32; if kept.is_some() { 0 } else { rows.min(n) * v }];
    let mut dz = vec![0.0f32; rows.min(n) * v];
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        let h = &hs[r0 * c..(r0 + m) * c]; // [m,C]
        let logits: &[f32] = match kept {
            Some(k) => &k[r0 * v..(r0 + m) * v],
            None => {
                linear_forward(h, ws, None, &mut z[..m * v], m, c, v)?;
                &z[..m * v]
            }
        };
        let dz = &mut dz[..m * v]; // [m,V]
        for i in 0..m {
            let r = r0 + i;
            let dl = if targets[r] == NO_TARGET { 0.0 } else { dlp[r] };
            let de = dent.map_or(0.0, |d| d[r]);
            let out = &mut dz[i * v..(i + 1) * v];
            row_backward(
                &logits[i * v..(i + 1) * v],
                targets[r],
                ls[r],
                dl,
                de,
                inv_temp,
                out,
            );
        }
        let dh = &mut dh[r0 * c..(r0 + m) * c];
        // The first chunk stores as asked; the later ones add onto it.
        let store = if r0 == 0 { store } else { GradStore::Add };
        linear_backward_slices(dz, h, ws, dh, dws, store, None, m, c, v)?;
    }
    super::tensor(dh, &[n, c])
}
