//! Next-token sampling on the device that holds the logits: greedy, or temperature sampling by
//! inverse CDF in token-id order, with banned ids, returning each chosen token and its log-prob.
//! The rollout engine calls it every step so that only [S] tokens and log-probs, not [S, V]
//! logits, travel to the host.
//!
//! Output j draws from logits row `row` with `temperature` and the 32-bit `draw` (the caller's
//! counter-based RNG): u = (draw + 0.5) / 2^32, weights w_i = exp(x_i / T − max_k x_k / T) over the
//! allowed ids, token = the first id (in id order) whose running weight sum exceeds u · Σ w, and
//! log-prob = ln(w_token / Σ w). Temperature 0 is greedy: argmax (lowest id on ties) with the
//! log-prob under the temperature-1 softmax. Banned ids get probability 0. Top-k / top-p are not
//! part of this op (the engine filters those rows on the host).

use super::check_float;
use crate::{DType, Device, Error, Result, Tensor};

/// Most banned ids per output (stop tokens before `min_new_tokens`).
pub const MAX_BANNED: usize = 16;
/// Columns of a spec row before the banned ids: row, temperature bits, draw.
pub const SPEC_HEAD: usize = 3;
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
    /// The uniform of the draw, u = (draw + 0.5) / 2^32 (unused by greedy).
    pub draw: u32,
    /// Ids that must not be emitted.
    pub banned: Vec<u32>,
}

impl SampleSpec {
    /// The [S, SPEC_HEAD + NB] U32 layout the op takes: (row, temperature bits, draw, banned ids
    /// padded with [`NO_BAN`]), NB = the most banned ids of any spec.
    pub fn pack(specs: &[SampleSpec], device: &Device) -> Result<Tensor> {
        const OP: &str = "sample_tokens";
        let nb = specs.iter().map(|s| s.banned.len()).max().unwrap_or(0);
        if nb > MAX_BANNED {
            return Err(Error::msg(format!(
                "{OP}: {nb} banned ids in one spec, at most {MAX_BANNED} are supported"
            )));
        }
        let cols = SPEC_HEAD + nb;
        let mut v = Vec::with_capacity(specs.len() * cols);
        for s in specs {
            if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
                return Err(Error::msg(format!(
                    "{OP}: temperature must be a finite number >= 0, got {}",
                    s.temperature
                )));
            }
            v.extend([s.row, s.temperature.to_bits(), s.draw]);
            v.extend(&s.banned);
            v.extend(std::iter::repeat_n(NO_BAN, nb - s.banned.len()));
        }
        Tensor::from_u32(v, &[specs.len(), cols], device)
    }
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
