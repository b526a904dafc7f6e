//! Paged decode attention on the host: per sequence and query head, two passes over the context
//! (scores and their max, then the softmax-weighted sum of values), reading each position's K/V
//! row through the block table.

use super::{f32s, tensor, u32s};
use crate::ops::paged_attention::Paged;
use crate::{Error, Result, Tensor};

pub fn paged_attention(q: &Tensor, paged: &Paged<'_>) -> Result<Tensor> {
    const OP: &str = "paged_attention";
    let (k_cache, v_cache) = (paged.k_cache, paged.v_cache);
    let (block_size, max_context_len) = (paged.block_size, paged.max_context_len);
    let (block_tables, context_lens, scale) = (paged.block_tables, paged.context_lens, paged.scale);
    let (s, h, d) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let (p, kh) = (k_cache.shape()[0], k_cache.shape()[1]);
    let m = block_tables.shape()[1];
    let group = h / kh;
    let blocks = p / block_size;
    let (qd, kd, vd) = (f32s(OP, q)?, f32s(OP, k_cache)?, f32s(OP, v_cache)?);
    let (tables, lens) = (u32s(OP, block_tables)?, u32s(OP, context_lens)?);
    let mut out = vec![0.0f32; s * h * d];
    let mut scores = Vec::new();
    for seq in 0..s {
        let len = lens[seq] as usize;
        if len > max_context_len {
            return Err(Error::msg(format!(
                "{OP}: context length {len} of sequence {seq} exceeds max_context_len {max_context_len}"
            )));
        }
        let table = &tables[seq * m..(seq + 1) * m];
        if let Some(&bad) = table[..len.div_ceil(block_size)]
            .iter()
            .find(|&&b| b as usize >= blocks)
        {
            return Err(Error::msg(format!(
                "{OP}: sequence {seq} names block {bad}, outside the cache of {blocks} blocks"
            )));
        }
        // Row offset of position `pos`'s kv head `g` in the caches.
        let row = |pos: usize, g: usize| {
            let slot = table[pos / block_size] as usize * block_size + pos % block_size;
            (slot * kh + g) * d
        };
        for head in 0..h {
            let g = head / group;
            let qr = &qd[(seq * h + head) * d..(seq * h + head + 1) * d];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for pos in 0..len {
                let r = row(pos, g);
                let sc = super::attention::dot(qr, &kd[r..r + d]) * scale;
                max = max.max(sc);
                scores.push(sc);
            }
            let o = &mut out[(seq * h + head) * d..(seq * h + head + 1) * d];
            let mut denom = 0.0f32;
            for (pos, sc) in scores.iter().enumerate() {
                let w = (sc - max).exp();
                denom += w;
                let r = row(pos, g);
                for (oi, vi) in o.iter_mut().zip(&vd[r..r + d]) {
                    *oi += w * vi;
                }
            }
            if denom > 0.0 {
                o.iter_mut().for_each(|x| *x /= denom);
            }
        }
    }
    tensor(out, &[s, h, d])
}
