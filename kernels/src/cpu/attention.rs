//! Causal GQA attention on the CPU: per sequence, per head, per query row, with an online softmax
//! over that row's keys, so memory is O(D) per row and there is never a T×T buffer.

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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
    let mut acc = vec![0.0f64; d];
    for &(start, end) in &seqs {
        for hq in 0..h {
            let g = hq / group;
            for i in start..end {
                let qi = &qs[(i * h + hq) * d..][..d];
                // Online softmax: running max m, running denominator l, running numerator acc,
                // all relative to the current max (rescaled when the max grows).
                let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f64);
                acc.fill(0.0);
                for j in start..=i {
                    let s = scale * dot(qi, &ks[(j * kh + g) * d..][..d]);
                    if s > m {
                        let corr = ((m - s) as f64).exp();
                        l *= corr;
                        acc.iter_mut().for_each(|a| *a *= corr);
                        m = s;
                    }
                    let p = ((s - m) as f64).exp();
                    l += p;
                    let vj = &vs[(j * kh + g) * d..][..d];
                    acc.iter_mut()
                        .zip(vj)
                        .for_each(|(a, &x)| *a += p * x as f64);
                }
                let o = &mut out[(i * h + hq) * d..][..d];
                o.iter_mut()
                    .zip(&acc)
                    .for_each(|(o, &a)| *o = (a / l) as f32);
                lse[i * h + hq] = m + l.ln() as f32;
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
                    dv[kv..kv + d]
                        .iter_mut()
                        .zip(doi)
                        .for_each(|(a, &x)| *a += p * x);
                    dk[kv..kv + d]
                        .iter_mut()
                        .zip(qi)
                        .for_each(|(a, &x)| *a += scale * ds * x);
                    dqi.iter_mut()
                        .zip(kj)
                        .for_each(|(a, &x)| *a += scale * ds * x);
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
