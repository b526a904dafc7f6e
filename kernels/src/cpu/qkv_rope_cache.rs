//! The fused q/k/v epilogue on the CPU (f32): bias add, RoPE (the `rope` reference's arithmetic)
//! and the cache write, row by row.

use super::{f32s, f32s_mut, u32s};
use crate::ops::qkv_rope_cache::Qkv;
use crate::{Error, Result, Tensor};

#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_cache(
    acc: &Tensor,
    bias: Option<&Tensor>,
    pos: &Tensor,
    slots: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    heads: usize,
    theta: f32,
) -> Result<Qkv> {
    const OP: &str = "qkv_rope_cache";
    let (p, kh, d) = k_cache.dims3(OP)?;
    let (n, width) = acc.dims2(OP)?;
    let (xs, ps, ss) = (f32s(OP, acc)?, u32s(OP, pos)?, u32s(OP, slots)?);
    let bs = bias.map(|b| f32s(OP, b)).transpose()?;
    if let Some(&bad) = ss.iter().find(|&&s| s as usize >= p) {
        return Err(Error::msg(format!(
            "{OP}: slot {bad} is outside the cache of {p} slots"
        )));
    }
    let half = d / 2;
    let freqs = super::rope::inv_freq(theta, d);
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
        // The angle in f32, then cos / sin of that f32 angle, as the `rope` reference.
        for i in 0..half {
            let a = ps[t] as f32 * freqs[i];
            cos[i] = a.cos();
            sin[i] = a.sin();
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
    let kv_row = kh * d;
    for (cache, src) in [(k_cache, &k), (v_cache, &v)] {
        let dst = f32s_mut(OP, cache)?;
        for (t, &slot) in ss.iter().enumerate() {
            let s = slot as usize;
            dst[s * kv_row..(s + 1) * kv_row].copy_from_slice(&src[t * kv_row..(t + 1) * kv_row]);
        }
    }
    Ok(Qkv {
        q: super::tensor(q, &[n, heads, d])?,
        k: super::tensor(k, &[n, kh, d])?,
        v: super::tensor(v, &[n, kh, d])?,
    })
}
