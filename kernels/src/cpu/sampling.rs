//! Next-token sampling on the host in f64: the reference of `cu/sampling.cu` (same draw, same
//! id-order inverse CDF), see `ops::sampling`.

use super::{f32s, u32s};
use crate::ops::sampling::{uniform_of_draw, SPEC_HEAD};
use crate::{Error, Result, Tensor};

pub fn sample_tokens(logits: &Tensor, spec: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "sample_tokens";
    let (r, v) = (logits.shape()[0], logits.shape()[1]);
    let cols = spec.shape()[1];
    let x = f32s(OP, logits)?;
    let spec = u32s(OP, spec)?;
    let mut res = Vec::with_capacity(spec.len() / cols * 2);
    for s in spec.chunks_exact(cols) {
        let row = s[0] as usize;
        if row >= r {
            return Err(Error::msg(format!(
                "{OP}: spec names logits row {row}, but there are {r} rows"
            )));
        }
        let temperature = f32::from_bits(s[1]);
        let banned = &s[SPEC_HEAD..];
        let (token, logprob) = sample_row(&x[row * v..(row + 1) * v], temperature, s[2], banned);
        res.extend([token, logprob.to_bits()]);
    }
    match out.storage_mut() {
        crate::Storage::CpuU32(o) => {
            o.copy_from_slice(&res);
            Ok(())
        }
        _ => Err(Error::msg(format!("{OP}: out must be a CPU U32 tensor"))),
    }
}

/// One row: (token, log-prob). At least one id is allowed (the op checks NB < V).
pub fn sample_row(x: &[f32], temperature: f32, draw: u32, banned: &[u32]) -> (u32, f32) {
    let allowed = |i: usize| !banned.contains(&(i as u32)) && x[i] != f32::NEG_INFINITY;
    let inv_t = if temperature == 0.0 {
        1.0
    } else {
        1.0 / temperature as f64
    };
    // Max and argmax (lowest id on ties) over the allowed ids, of x / T.
    let mut best = usize::MAX;
    for i in 0..x.len() {
        if allowed(i) && (best == usize::MAX || x[i] > x[best]) {
            best = i;
        }
    }
    let ymax = x[best] as f64 * inv_t;
    let weight = |i: usize| (x[i] as f64 * inv_t - ymax).exp();
    let z: f64 = (0..x.len()).filter(|&i| allowed(i)).map(weight).sum();
    if temperature == 0.0 {
        return (best as u32, -(z.ln()) as f32);
    }
    let target = uniform_of_draw(draw) * z;
    let mut acc = 0.0;
    let mut pick = best;
    let mut last = best;
    let mut found = false;
    for i in (0..x.len()).filter(|&i| allowed(i)) {
        let w = weight(i);
        if w > 0.0 {
            last = i;
        }
        acc += w;
        if acc > target {
            pick = i;
            found = true;
            break;
        }
    }
    if !found {
        pick = last; // target >= Z by rounding: the last id with a positive weight
    }
    (pick as u32, (weight(pick) / z).ln() as f32)
}
