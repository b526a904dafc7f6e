//! Next-token sampling on the device that holds the logits: greedy, or temperature sampling with
//! optional top-k / top-p, by inverse CDF in token-id order, with banned ids, returning each chosen
//! token and its log-prob. The rollout engine calls it every step so that only [S] tokens and
//! log-probs, not [S, V] logits, travel to the host.
//!
//! Output j draws from logits row `row` with `temperature` and the 32-bit `draw` (the caller's
//! counter-based RNG): u = (draw + 0.5) / 2^32. Allowed ids: not banned and not −∞. Then:
//! - top-k (`top_k` > 0): keep the allowed ids whose logit is ≥ the k-th largest allowed logit
//!   (ties at the threshold are all kept, as in HF `generate`).
//! - top-p (`top_p` < 1): over what top-k kept, with weights w_i = exp(x_i / T − max_k x_k / T),
//!   keep id i when the weight of the kept ids with a strictly larger logit is below top_p of their
//!   total: the smallest set of most likely tokens whose mass reaches top_p, with every token tied
//!   at its boundary. The masses are compared in fixed point (each weight truncated to a multiple
//!   of 2^-32 and summed as integers) so that the GPU's parallel sums are exact and equal the CPU
//!   reference's whatever the summation order.
//! - token = the first kept id (in id order) whose running weight sum exceeds u · Σ_kept w, and
//!   log-prob = ln(w_token / Σ_kept w): the log-prob under the filtered, renormalised distribution
//!   actually sampled from.
//!
//! Temperature 0 is greedy: argmax (lowest id on ties) with the log-prob under the unfiltered
//! temperature-1 softmax; top-k / top-p do not apply. Banned ids get probability 0.
//!
//! Logits are compared through an order-preserving u32 key of their f32 bits ([`order_key`]), so
//! that the GPU can find the top-k and top-p thresholds by radix selection (a histogram per byte of
//! the key, no sort).

use super::check_float;
use crate::{DType, Device, Error, Result, Tensor};

/// Most banned ids per output (stop tokens before `min_new_tokens`).
pub const MAX_BANNED: usize = 16;
/// Columns of a spec row before the banned ids: row, temperature bits, draw, top-k, top-p bits.
pub const SPEC_HEAD: usize = 5;
/// Padding of the banned-id columns (never a token id).
pub const NO_BAN: u32 = u32::MAX;

/// How to draw one token.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSpec {
    /// Row of the logits to draw from (several outputs may share one, e.g. the n samples of one
    /// prompt after its prefill).
    pub row: u32,
    /// 0 = greedy.
    pub temperature: f32,
    /// Keep the ids with the k largest logits (ties kept); 0 = off.
    pub top_k: u32,
    /// Keep the smallest most-likely set whose mass reaches top_p (ties kept); 1 = off.
    pub top_p: f32,
    /// The uniform of the draw, u = (draw + 0.5) / 2^32 (unused by greedy).
    pub draw: u32,
    /// Ids that must not be emitted.
    pub banned: Vec<u32>,
}

impl SampleSpec {
    /// Plain temperature sampling from `row` (no top-k / top-p, nothing banned).
    pub fn new(row: u32, temperature: f32, draw: u32) -> SampleSpec {
        SampleSpec {
            row,
            temperature,
            top_k: 0,
            top_p: 1.0,
            draw,
            banned: Vec::new(),
        }
    }

    /// Greedy from `row`.
    pub fn greedy(row: u32) -> SampleSpec {
        SampleSpec::new(row, 0.0, 0)
    }

    /// Checks the parameters; errors name the bad one.
    fn validate(&self) -> Result<()> {
        const OP: &str = "sample_tokens";
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::msg(format!(
                "{OP}: temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::msg(format!(
                "{OP}: top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        if self.banned.len() > MAX_BANNED {
            return Err(Error::msg(format!(
                "{OP}: {} banned ids in one spec, at most {MAX_BANNED} are supported",
                self.banned.len()
            )));
        }
        Ok(())
    }

    /// Writes this spec as one row of the packed layout (`out.len()` columns: SPEC_HEAD + room
    /// for at least `banned.len()` ids, padded with [`NO_BAN`]).
    pub fn write_row(&self, out: &mut [u32]) -> Result<()> {
        self.validate()?;
        if out.len() < SPEC_HEAD + self.banned.len() {
            return Err(Error::msg(format!(
                "sample_tokens: a spec row of {} columns cannot hold {} banned ids",
                out.len(),
                self.banned.len()
            )));
        }
        out[..SPEC_HEAD].copy_from_slice(&[
            self.row,
            self.temperature.to_bits(),
            self.draw,
            self.top_k,
            self.top_p.to_bits(),
        ]);
        let (ban, pad) = out[SPEC_HEAD..].split_at_mut(self.banned.len());
        ban.copy_from_slice(&self.banned);
        pad.fill(NO_BAN);
        Ok(())
    }

    /// The [S, SPEC_HEAD + NB] U32 layout the op takes: (row, temperature bits, draw, top-k,
    /// top-p bits, banned ids padded with [`NO_BAN`]), NB = the most banned ids of any spec.
    pub fn pack(specs: &[SampleSpec], device: &Device) -> Result<Tensor> {
        let nb = specs.iter().map(|s| s.banned.len()).max().unwrap_or(0);
        let cols = SPEC_HEAD + nb.min(MAX_BANNED);
        let mut v = vec![0u32; specs.len() * cols];
        for (s, row) in specs.iter().zip(v.chunks_exact_mut(cols)) {
            s.write_row(row)?;
        }
        Tensor::from_u32(v, &[specs.len(), cols], device)
    }
}

/// An order-preserving u32 key of an f32 (not NaN): a < b ⇔ key(a) < key(b), with −0 just
/// below +0. The kernel uses the same map to find thresholds by radix selection.
pub fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// A sampling weight w in [0, 1] in the fixed point top-p compares masses in: ⌊w · 2^32⌋.
pub fn weight_fixed(w: f32) -> u64 {
    (w * 4_294_967_296.0f32) as u64
}

/// The uniform in (0, 1) of a 32-bit draw; the same arithmetic as the CUDA kernel.
pub fn uniform_of_draw(draw: u32) -> f64 {
    (draw as f64 + 0.5) * (1.0 / 4294967296.0)
}

/// Samples one token per spec row. logits: [R, V] F32 or BF16; spec: [S, SPEC_HEAD + NB] U32 from
/// [`SampleSpec::pack`] with every row < R and NB ≤ [`MAX_BANNED`] (fewer than V ids banned).
/// Returns [S, 2] U32: the token and the f32 bits of its log-prob.
pub fn sample_tokens(logits: &Tensor, spec: &Tensor) -> Result<Tensor> {
    check(logits, spec)?;
    let mut out = Tensor::zeros(&[spec.shape()[0], 2], DType::U32, logits.device())?;
    run(logits, spec, &mut out)?;
    Ok(out)
}

/// [`sample_tokens`] into an existing [S, 2] U32 tensor (e.g. a CUDA graph's fixed output).
pub fn sample_tokens_into(logits: &Tensor, spec: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "sample_tokens";
    check(logits, spec)?;
    let s = spec.shape()[0];
    if out.shape() != [s, 2] || out.dtype() != DType::U32 {
        return Err(Error::shape(
            OP,
            format!(
                "out must be a [{s}, 2] U32 tensor, got {:?} {}",
                out.shape(),
                out.dtype()
            ),
        ));
    }
    logits.check_same_device(out, OP)?;
    run(logits, spec, out)
}

fn run(logits: &Tensor, spec: &Tensor, out: &mut Tensor) -> Result<()> {
    match logits.device() {
        Device::Cpu => crate::cpu::sampling::sample_tokens(logits, spec, out),
        Device::Cuda(_) => crate::cuda::sampling::sample_tokens(logits, spec, out),
    }
}

fn check(logits: &Tensor, spec: &Tensor) -> Result<()> {
    const OP: &str = "sample_tokens";
    check_float(OP, logits)?;
    let (r, v) = logits.dims2(OP)?;
    if spec.dtype() != DType::U32 {
        return Err(Error::DType {
            op: OP,
            dtype: spec.dtype(),
        });
    }
    logits.check_same_device(spec, OP)?;
    let (_, cols) = spec.dims2(OP)?;
    if !(SPEC_HEAD..=SPEC_HEAD + MAX_BANNED).contains(&cols) {
        return Err(Error::shape(
            OP,
            format!(
                "spec must have {SPEC_HEAD}..={} columns, got {cols}",
                SPEC_HEAD + MAX_BANNED
            ),
        ));
    }
    if v == 0 || cols - SPEC_HEAD >= v {
        return Err(Error::shape(
            OP,
            format!(
                "a vocabulary of {v} leaves no token once {} are banned",
                cols - SPEC_HEAD
            ),
        ));
    }
    if r == 0 {
        return Err(Error::shape(OP, "logits have no rows".to_string()));
    }
    Ok(())
}

/// Host view of [`sample_tokens`]' output: (token, log-prob) per spec row.
pub fn read_samples(out: &Tensor) -> Result<Vec<(u32, f32)>> {
    let v = out.to_vec_u32()?;
    Ok(v.chunks_exact(2)
        .map(|p| (p[0], f32::from_bits(p[1])))
        .collect())
}
