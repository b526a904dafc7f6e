//! The LM head with its log-softmax on the GPU: cuBLAS GEMMs and the `logsoftmax.cu` kernels on
//! row chunks addressed by pointer offsets into the whole tensors (no gathers, scatters or
//! per-chunk uploads; the targets are uploaded once per call).
//!
//! Per logit (N·V of them), with logits kept from the forward:
//! - forward: GEMM writes f32 (4 B), log-softmax reads them (4 B);
//! - backward: one kernel reads the f32 logits (4 B) and writes d(logits) in the GEMM dtype
//!   (2 B for bf16), then dx = d(logits) · W and dW += d(logits)ᵀ · hidden read them (2 + 2 B).
//!
//! Without kept logits the backward recomputes each chunk's logits first (one more GEMM, 4 B more
//! written per logit). Row-major [R, C] is column-major C×R, as in `linear.rs`.

use super::blas::Gemm;
use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, ptr, suffix, CudaDevice};
use crate::ops::lm_head::{chunk_rows, LmHeadRows, LmHeadSaved};
use crate::{DType, Error, Result, Tensor};

const SRC: KernelSource = kernel_source!("logsoftmax");
const THREADS: u32 = 512;

fn u32_dim(op: &'static str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::msg(format!("{op}: dimension {v} exceeds u32")))
}

/// logits[m,V] f32 at `out` = hidden rows r0..r0+m · wᵀ.
#[allow(clippy::too_many_arguments)]
fn logits_gemm(
    dev: &CudaDevice,
    hidden: &Tensor,
    w: &Tensor,
    r0: usize,
    m: usize,
    out: u64,
    op: &'static str,
) -> Result<()> {
    let (_, c) = hidden.dims2(op)?;
    let (v, _) = w.dims2(op)?;
    let es = hidden.dtype().size_in_bytes();
    Gemm {
        trans_a: true,
        trans_b: false,
        m: v,
        n: m,
        k: c,
        a: ptr(w, dev, op)?,
        lda: c,
        b: ptr(hidden, dev, op)? + (r0 * c * es) as u64,
        ldb: c,
        c: out,
        ldc: v,
        alpha: 1.0,
        beta: 0.0,
        ab: hidden.dtype(),
        c_type: DType::F32,
    }
    .run(dev)
}

pub fn lm_head_logprobs(
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    inv_temp: f32,
    max_logits: usize,
) -> Result<LmHeadRows> {
    const OP: &str = "lm_head_logprobs";
    let dev = device_of(hidden, OP)?;
    let (n, _c) = hidden.dims2(OP)?;
    let (v, _) = w.dims2(OP)?;
    let rows = chunk_rows(v, max_logits);
    let keep = n <= rows;
    let t = Tensor::from_u32(targets.to_vec(), &[n], hidden.device())?;
    let logprob = empty(&dev, &[n], DType::F32)?;
    let entropy = empty(&dev, &[n], DType::F32)?;
    let lse = empty(&dev, &[n], DType::F32)?;
    // One buffer for every chunk: all N rows when they are kept.
    let logits = empty(&dev, &[rows.min(n), v], DType::F32)?;
    let (t_p, lp_p, ent_p, lse_p) = (
        ptr(&t, &dev, OP)?,
        ptr(&logprob, &dev, OP)?,
        ptr(&entropy, &dev, OP)?,
        ptr(&lse, &dev, OP)?,
    );
    let z = ptr(&logits, &dev, OP)?;
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        logits_gemm(&dev, hidden, w, r0, m, z, OP)?;
        let off = (r0 * 4) as u64; // f32 / u32 per-row arrays
        let args = Args::new()
            .raw(z)
            .raw(t_p + off)
            .f32(inv_temp)
            .raw(lp_p + off)
            .raw(ent_p + off)
            .raw(lse_p + off)
            .u32(u32_dim(OP, m)?)
            .u32(u32_dim(OP, v)?);
        let g = Grid::d1(m.min(65535 * 4) as u32, THREADS);
        run(&dev, &SRC, &[], "logsoftmax_gather_f32", g, args)?;
    }
    Ok(LmHeadRows {
        logprob,
        entropy,
        lse,
        logits: keep.then_some(logits),
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
) -> Result<Tensor> {
    const OP: &str = "lm_head_logprobs_backward";
    let dev = device_of(hidden, OP)?;
    let (n, c) = hidden.dims2(OP)?;
    let (v, _) = w.dims2(OP)?;
    let dtype = hidden.dtype();
    let es = dtype.size_in_bytes();
    let rows = if fwd.logits.is_some() {
        n.max(1)
    } else {
        chunk_rows(v, max_logits)
    };
    let t = Tensor::from_u32(targets.to_vec(), &[n], hidden.device())?;
    let d_hidden = empty(&dev, &[n, c], dtype)?;
    // Recomputed logits (when not kept) and d(logits) of one chunk, reused by every chunk.
    let scratch = match fwd.logits {
        Some(_) => None,
        None => Some(empty(&dev, &[rows.min(n), v], DType::F32)?),
    };
    let d_logits = empty(&dev, &[rows.min(n), v], dtype)?;
    let z_all = match fwd.logits.or(scratch.as_ref()) {
        Some(l) => ptr(l, &dev, OP)?,
        None => return Err(Error::msg(format!("{OP}: no logits buffer"))),
    };
    let dz = ptr(&d_logits, &dev, OP)?;
    let (h_p, w_p, dh_p, dw_p) = (
        ptr(hidden, &dev, OP)?,
        ptr(w, &dev, OP)?,
        ptr(&d_hidden, &dev, OP)?,
        ptr(dw, &dev, OP)?,
    );
    let func = format!("logsoftmax_backward_fused_f32_{}", suffix(dtype, OP)?);
    for r0 in (0..n).step_by(rows) {
        let m = rows.min(n - r0);
        let z = if fwd.logits.is_some() {
            z_all + (r0 * v * 4) as u64
        } else {
            logits_gemm(&dev, hidden, w, r0, m, z_all, OP)?;
            z_all
        };
        let off = (r0 * 4) as u64; // f32 / u32 per-row arrays
        let dent = match dentropy {
            Some(d) => ptr(d, &dev, OP)? + off,
            None => 0,
        };
        let args = Args::new()
            .raw(ptr(dlogprob, &dev, OP)? + off)
            .raw(dent)
            .raw(ptr(fwd.entropy, &dev, OP)? + off)
            .raw(z)
            .raw(ptr(&t, &dev, OP)? + off)
            .raw(ptr(fwd.lse, &dev, OP)? + off)
            .f32(inv_temp)
            .raw(dz)
            .u32(u32_dim(OP, m)?)
            .u32(u32_dim(OP, v)?);
        let g = Grid::d1(m.min(65535 * 4) as u32, THREADS);
        run(&dev, &SRC, &[], &func, g, args)?;
        // dx rows r0..r0+m [m,C] = d(logits) [m,V] · w [V,C]
        Gemm {
            trans_a: false,
            trans_b: false,
            m: c,
            n: m,
            k: v,
            a: w_p,
            lda: c,
            b: dz,
            ldb: v,
            c: dh_p + (r0 * c * es) as u64,
            ldc: c,
            alpha: 1.0,
            beta: 0.0,
            ab: dtype,
            c_type: dtype,
        }
        .run(&dev)?;
        // dw [V,C] += d(logits)ᵀ [V,m] · hidden rows [m,C]
        Gemm {
            trans_a: false,
            trans_b: true,
            m: c,
            n: v,
            k: m,
            a: h_p + (r0 * c * es) as u64,
            lda: c,
            b: dz,
            ldb: v,
            c: dw_p,
            ldc: c,
            alpha: 1.0,
            beta: 1.0,
            ab: dtype,
            c_type: DType::F32,
        }
        .run(&dev)?;
    }
    Ok(d_hidden)
}
