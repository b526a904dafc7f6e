//! Next-token sampling on the host in f64: the reference of `cu/sampling.cu` (same draw, same
//! top-k / top-p thresholds, same id-order inverse CDF), see `ops::sampling`.

use super::{f32s, u32s};
use crate::ops::sampling::{order_key, uniform_of_draw, weight_fixed, SPEC_HEAD};
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
        let filter = Filter {
            top_k: s[3],
            top_p: f32::from_bits(s[4]),
        };
        let temperature = f32::from_bits(s[1]);
        let banned = &s[SPEC_HEAD..];
        let x = &x[row * v..(row + 1) * v];
        let (token, logprob) = sample_row(x, temperature, filter, s[2], banned);
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

/// Top-k / top-p of one row (`ops::sampling` defines them); `Filter::NONE` keeps everything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filter {
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
}

impl Filter {
    pub const NONE: Filter = Filter {
        top_k: 0,
        top_p: 1.0,
    };
}

/// The smallest order key a token needs to survive top-k then top-p (0 = every allowed id),
/// computed as the kernel does: top-k by the k-th largest key, top-p by fixed-point masses.
fn threshold_key(x: &[f32], allowed: &dyn Fn(usize) -> bool, temperature: f32, f: Filter) -> u32 {
    let mut keys: Vec<u32> = (0..x.len())
        .filter(|&i| allowed(i))
        .map(|i| order_key(x[i]))
        .collect();
    let mut floor = 0u32;
    let k = f.top_k as usize;
    if k > 0 && k < keys.len() {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        floor = keys[k - 1];
    }
    if f.top_p >= 1.0 {
        return floor;
    }
    // Weights in f32 as the kernel computes them: w = exp(x · (1/T) − max).
    let inv_t = 1.0f32 / temperature;
    let ymax = (0..x.len())
        .filter(|&i| allowed(i))
        .map(|i| x[i] * inv_t)
        .fold(f32::NEG_INFINITY, f32::max);
    let mut kept: Vec<(u32, u64)> = (0..x.len())
        .filter(|&i| allowed(i) && order_key(x[i]) >= floor)
        .map(|i| (order_key(x[i]), weight_fixed((x[i] * inv_t - ymax).exp())))
        .collect();
    let total: u64 = kept.iter().map(|k| k.1).sum();
    let goal = f.top_p as f64 * total as f64;
    kept.sort_unstable_by_key(|k| std::cmp::Reverse(k.0));
    // The largest key whose mass of keys >= it reaches the goal.
    let mut mass = 0u64;
    let mut j = 0;
    while j < kept.len() {
        let key = kept[j].0;
        while j < kept.len() && kept[j].0 == key {
            mass += kept[j].1;
            j += 1;
        }
        if mass as f64 >= goal {
            return key;
        }
    }
    floor
}

/// One row: (token, log-prob). At least one id is allowed (the op checks NB < V).
pub fn sample_row(
    x: &[f32],
    temperature: f32,
    filter: Filter,
    draw: u32,
    banned: &[u32],
) -> (u32, f32) {
    let allowed = |i: usize| !banned.contains(&(i as u32)) && x[i] != f32::NEG_INFINITY;
    let floor = if temperature == 0.0 || filter == Filter::NONE {
        0
    } else {
        threshold_key(x, &allowed, temperature, filter)
    };
    let allowed = |i: usize| allowed(i) && order_key(x[i]) >= floor;
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
