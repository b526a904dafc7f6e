//! Causal GQA attention on the CPU: per sequence, per head, per query row, two passes over that
//! row's keys (scores and their max, then softmax-weighted values), so memory is O(T) per row and
//! there is never a T×T buffer. The backward recomputes each probability from the saved lse.

use super::{f32s, u32s};
use crate::{Error, Result, Tensor};

/// Checks cu_seqlens = [0, ..., N] non-decreasing and returns the (start, end) of each sequence.
pub fn sequences(op: &'static str, cu_seqlens: &[u32], n: usize) -> Result<Vec<(usize, usize)>> {
    if cu_seqlens.first() != Some(&0) || cu_seqlens.last().map(|&e| e as usize) != Some(n) {
        return Err(Error::msg(format!(
            "{op}: cu_seqlens must start at 0 and end at N = {n}, got {cu_seqlens:?}"
        )));
    }
    let mut seqs = Vec::with_capacity(cu_seqlens.len() - 1);
    for (s, w) in cu_seqlens.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(Error::msg(format!(
                "{op}: cu_seqlens must be non-decreasing, but entry {} ({}) < entry {s} ({})",
                s + 1,
                w[1],
                w[0]
            )));
        }
        seqs.push((w[0] as usize, w[1] as usize));
    }
    Ok(seqs)
}

/// a·b with eight independent partial sums, so the compiler can vectorise it (a single running sum
/// cannot be reordered). The partial sums are combined in a fixed order: deterministic.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

/// y += alpha·x.
fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += alpha * x);
}

pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention";
    let (n, h, d) = q.dims3(OP)?;
    let (_, kh, _) = k.dims3(OP)?;
    let seqs = sequences(OP, u32s(OP, cu_seqlens)?, n)?;
    let (qs, ks, vs) = (f32s(OP, q)?, f32s(OP, k)?, f32s(OP, v)?);
    let group = h / kh; // query heads per kv head
    let mut out = vec![0.0f32; n * h * d];
    let mut lse = vec![0.0f32; n * h];
    let longest = seqs.iter().map(|(s, e)| e - s).max().unwrap_or(0);
    // One query row's scores: O(T) memory, never T×T.
    let mut scores = vec![0.0f32; longest];
    let mut acc = vec![0.0f32; d];
    for &(start, end) in &seqs {
        for hq in 0..h {
            let g = hq / group;
            for i in start..end {
                let qi = &qs[(i * h + hq) * d..][..d];
                // Pass 1: scores of keys start..=i and their max.
                let row = &mut scores[..i + 1 - start];
                let mut m = f32::NEG_INFINITY;
                for (jj, s) in row.iter_mut().enumerate() {
                    *s = scale * dot(qi, &ks[((start + jj) * kh + g) * d..][..d]);
                    m = m.max(*s);
                }
                // Pass 2: softmax numerators, their sum, and the weighted sum of values.
                let mut l = 0.0f32;
                acc.fill(0.0);
                for (jj, &s) in row.iter().enumerate() {
                    let p = (s - m).exp();
                    l += p;
                    axpy(&mut acc, p, &vs[((start + jj) * kh + g) * d..][..d]);
                }
                let o = &mut out[(i * h + hq) * d..][..d];
                o.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a / l);
                lse[i * h + hq] = m + l.ln();
            }
        }
    }
    Ok((
        super::tensor(out, &[n, h, d])?,
        super::tensor(lse, &[n, h])?,
    ))
}

/// With p_ij = exp(scale·q_i·k_j − lse_i) and Δ_i = dout_i·out_i:
/// dv_j += p_ij dout_i;  ds_ij = p_ij (dout_i·v_j − Δ_i);  dq_i += scale ds_ij k_j;
/// dk_j += scale ds_ij q_i  (dk, dv summed over the query heads sharing a kv head).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    cu_seqlens: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let (n, h, d) = q.dims3(OP)?;
    let (_, kh, _) = k.dims3(OP)?;
    let seqs = sequences(OP, u32s(OP, cu_seqlens)?, n)?;
    let (qs, ks, vs) = (f32s(OP, q)?, f32s(OP, k)?, f32s(OP, v)?);
    let (dos, os, ls) = (f32s(OP, dout)?, f32s(OP, out)?, f32s(OP, lse)?);
    let group = h / kh;
    let mut dq = vec![0.0f32; n * h * d];
    let mut dk = vec![0.0f32; n * kh * d];
    let mut dv = vec![0.0f32; n * kh * d];
    for &(start, end) in &seqs {
        for hq in 0..h {
            let g = hq / group;
            for i in start..end {
                let row = (i * h + hq) * d;
                let (qi, doi) = (&qs[row..][..d], &dos[row..][..d]);
                let delta = dot(doi, &os[row..][..d]);
                let lse_i = ls[i * h + hq];
                let dqi = &mut dq[row..][..d];
                for j in start..=i {
                    let kv = (j * kh + g) * d;
                    let (kj, vj) = (&ks[kv..][..d], &vs[kv..][..d]);
                    let p = (scale * dot(qi, kj) - lse_i).exp();
                    let ds = p * (dot(doi, vj) - delta);
                    axpy(&mut dv[kv..kv + d], p, doi);
                    axpy(&mut dk[kv..kv + d], scale * ds, qi);
                    axpy(dqi, scale * ds, kj);
                }
            }
        }
    }
    Ok((
        super::tensor(dq, &[n, h, d])?,
        super::tensor(dk, &[n, kh, d])?,
        super::tensor(dv, &[n, kh, d])?,
    ))
}
