//! The fused q/k/v epilogue on the CPU (f32): bias add, RoPE (the `rope` reference's arithmetic)
//! and (for inference) the cache write, row by row.

use super::{f32s, f32s_mut, u32s};
use crate::ops::qkv_rope_cache::{Cache, Qkv, Shape};
use crate::{Error, Result, Tensor};

pub(crate) fn qkv_rope_cache(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    cache: Option<&mut Cache<'_>>,
    shape: Shape,
    theta: f32,
    table: Option<&Tensor>,
) -> Result<Qkv> {
    const OP: &str = "qkv_rope_cache";
    let (heads, kh, d) = (shape.heads, shape.kv_heads, shape.d);
    let (n, width) = acc.dims2(OP)?;
    let (xs, ps) = (f32s(OP, acc)?, u32s(OP, pos)?);
    let bs = bias.map(|b| f32s(OP, b)).transpose()?;
    if let Some(c) = &cache {
        let p = c.k.shape()[0];
        if let Some(&bad) = u32s(OP, c.slots)?.iter().find(|&&s| s as usize >= p) {
            return Err(Error::msg(format!(
                "{OP}: slot {bad} is outside the cache of {p} slots"
            )));
        }
    }
    let half = d / 2;
    let freqs = super::rope::inv_freq(theta, d);
    let tab = table.map(|t| f32s(OP, t)).transpose()?; // [P_tab, D]
    let tab_rows = table.map_or(0, |t| t.shape()[0]);
    let (mut q, mut k, mut v) = (
        vec![0.0f32; n * heads * d],
        vec![0.0f32; n * kh * d],
        vec![0.0f32; n * kh * d],
    );
    let (mut cos, mut sin) = (vec![0.0f32; half], vec![0.0f32; half]);
    let mut row = vec![0.0f32; width];
    for t in 0..n {
        // [(H+2K)·D] = acc + bias.
        row.copy_from_slice(&xs[t * width..(t + 1) * width]);
        if let Some(b) = bs {
            row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        // The angle in f32, then cos / sin of that f32 angle, as the `rope` reference (or the
        // same values from the table).
        match tab {
            Some(tab) if (ps[t] as usize) < tab_rows => {
                let r = &tab[ps[t] as usize * d..(ps[t] as usize + 1) * d];
                cos.copy_from_slice(&r[..half]);
                sin.copy_from_slice(&r[half..]);
            }
            _ => angles(ps[t], &freqs, &mut cos, &mut sin),
        }
        // q and k heads (the first H + K of the row) rotate in place; v heads stay.
        for head in row.chunks_exact_mut(d).take(heads + kh) {
            for i in 0..half {
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * cos[i] - x2 * sin[i];
                head[i + half] = x2 * cos[i] + x1 * sin[i];
            }
        }
        let (hq, rest) = row.split_at(heads * d);
        let (hk, hv) = rest.split_at(kh * d);
        q[t * heads * d..(t + 1) * heads * d].copy_from_slice(hq);
        k[t * kh * d..(t + 1) * kh * d].copy_from_slice(hk);
        v[t * kh * d..(t + 1) * kh * d].copy_from_slice(hv);
    }
    if let Some(c) = cache {
        let kv_row = kh * d;
        let ss = u32s(OP, c.slots)?;
        for (dst, src) in [(&mut *c.k, &k), (&mut *c.v, &v)] {
            let dst = f32s_mut(OP, dst)?;
            for (t, &slot) in ss.iter().enumerate() {
                let s = slot as usize;
                dst[s * kv_row..(s + 1) * kv_row]
                    .copy_from_slice(&src[t * kv_row..(t + 1) * kv_row]);
            }
        }
    }
    Ok(Qkv {
        q: super::tensor(q, &[n, heads, d])?,
        k: super::tensor(k, &[n, kh, d])?,
        v: super::tensor(v, &[n, kh, d])?,
    })
}

/// cos / sin of position `p`'s angles: a = p · inv_freq (f32), then cos a, sin a in f32.
fn angles(p: u32, freqs: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    for (i, f) in freqs.iter().enumerate() {
        let a = p as f32 * f;
        cos[i] = a.cos();
        sin[i] = a.sin();
    }
}

/// `ops::qkv_rope_cache::RopeTable` on the CPU: [P, D] rows of cos | sin.
pub fn rope_table(positions: usize, d: usize, theta: f32) -> Result<Tensor> {
    let half = d / 2;
    let freqs = super::rope::inv_freq(theta, d);
    let mut out = vec![0.0f32; positions * d];
    for (p, row) in out.chunks_exact_mut(d).enumerate() {
        let (c, s) = row.split_at_mut(half);
        angles(p as u32, &freqs, c, s);
    }
    super::tensor(out, &[positions, d])
}
