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
//! written per logit).
//!
//! Factorised ([`LmHeadGrad::LogprobOnly`], sm_90, all rows kept): the forward's GEMM writes f32
//! logits chunk by chunk into a scratch, and `logsoftmax_residual` (a cluster of blocks per row,
//! the row in their shared memory) reads them once (4 B) and writes R = onehot − p in the GEMM
//! dtype (2 B); the backward is the two GEMMs on R plus row scalings of [N,C] tensors. Per logit:
//! 4 + 4 + 2 B in the forward and 2 + 2 B in the backward, against 4 + 4 and 4 + 2 + 2 + 2 above
//! (the [N,V] pass of the backward is gone).
//!
//! Row-major [R, C] is column-major C×R, as in `linear.rs`.

use super::blas::{Gemm, GemmKey};
use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, ptr, suffix, CudaDevice};
use crate::ops::lm_head::{chunk_rows, LmHeadGrad, LmHeadRows, LmHeadSaved};
use crate::ops::GradStore;
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
    let key = GemmKey::linear(m, c, v, hidden.dtype(), DType::F32, false);
    let rows = ptr(hidden, dev, op)? + (r0 * c * es) as u64; // hidden rows [r0, r0 + m)
    Gemm::of_key(&key, [ptr(w, dev, op)?, rows, out], 0.0).run(dev)
}

/// Blocks per row of `logsoftmax_residual` (RES_CLUSTER in logsoftmax.cu).
const RES_CLUSTER: usize = 8;
/// Most shared memory a residual block may use for its segment of the row (of 227 KiB on sm_90).
const RES_MAX_SMEM: usize = 200 << 10;

/// Floats of the row each residual block holds (a multiple of 8 for the 16-byte path), or None
/// when the device has no thread-block clusters (before sm_90) or the row does not fit.
fn residual_segment(dev: &CudaDevice, v: usize) -> Option<usize> {
    let sm: u32 = dev.arch().trim_start_matches("sm_").parse().ok()?;
    let seg = v.div_ceil(RES_CLUSTER).next_multiple_of(8);
    (sm >= 90 && seg * 4 <= RES_MAX_SMEM).then_some(seg)
}

pub fn lm_head_logprobs(
    hidden: &Tensor,
    w: &Tensor,
    targets: &[u32],
    inv_temp: f32,
    max_logits: usize,
    grad: LmHeadGrad,
) -> Result<LmHeadRows> {
    const OP: &str = "lm_head_logprobs";
    let dev = device_of(hidden, OP)?;
    let (n, _c) = hidden.dims2(OP)?;
    let (v, _) = w.dims2(OP)?;
    let rows = chunk_rows(v, max_logits);
    let keep = n <= rows;
    let seg = match grad {
        LmHeadGrad::LogprobOnly if keep => residual_segment(&dev, v),
        _ => None,
    };
    let t = Tensor::from_u32(targets.to_vec(), &[n], hidden.device())?;
    let logprob = empty(&dev, &[n], DType::F32)?;
    let entropy = empty(&dev, &[n], DType::F32)?;
    let lse = empty(&dev, &[n], DType::F32)?;
    let (t_p, lp_p, ent_p, lse_p) = (
        ptr(&t, &dev, OP)?,
        ptr(&logprob, &dev, OP)?,
        ptr(&entropy, &dev, OP)?,
        ptr(&lse, &dev, OP)?,
    );
    // The residual R [N,V] (hidden's dtype) counts against `max_logits`; the f32 logits then go
    // through a scratch of at most half of it, split evenly over the rows: with bf16 R, no more
    // bytes than the f32 logits the other path keeps (2 + 4/2 B per logit), and few enough GEMM
    // chunks (four 2048-row chunks at a quarter cost ~0.5 ms against one GEMM on the H200).
    let residual = match seg {
        Some(_) => Some(empty(&dev, &[n, v], hidden.dtype())?),
        None => None,
    };
    let rows = match seg {
        Some(_) => {
            let chunks = n.div_ceil(chunk_rows(v, max_logits / 2));
            n.div_ceil(chunks.max(1)).max(1)
        }
        None => rows,
    };
    // One buffer for every chunk: all N rows when they are kept.
    let logits = empty(&dev, &[rows.min(n), v], DType::F32)?;
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
            .raw(lse_p + off);
        match (seg, &residual) {
            (Some(seg), Some(res)) => {
                let es = res.dtype().size_in_bytes();
                let args = args
                    .raw(ptr(res, &dev, OP)? + (r0 * v * es) as u64)
                    .u32(u32_dim(OP, m)?)
                    .u32(u32_dim(OP, v)?)
                    .u32(u32_dim(OP, seg)?);
                // RES_CLUSTER blocks (one cluster) per row, clusters grid-stride over rows.
                let blocks = m.min(65535) * RES_CLUSTER;
                let g = Grid::d1(blocks as u32, THREADS).with_smem((seg * 4) as u32);
                let func = format!("logsoftmax_residual_f32_{}", suffix(res.dtype(), OP)?);
                run(&dev, &SRC, &[], &func, g, args)?;
            }
            _ => {
                let args = args.u32(u32_dim(OP, m)?).u32(u32_dim(OP, v)?);
                let g = Grid::d1(m.min(65535 * 4) as u32, THREADS);
                run(&dev, &SRC, &[], "logsoftmax_gather_f32", g, args)?;
            }
        }
    }
    Ok(LmHeadRows {
        logprob,
        entropy,
        lse,
        logits: (keep && residual.is_none()).then_some(logits),
        residual,
    })
}

/// out[N,C] in `out_dtype` = diag(s) x[N,C], s_r = inv_temp · dlogprob_r (0 without a target).
#[allow(clippy::too_many_arguments)]
fn scale_rows(
    dev: &CudaDevice,
    x: &Tensor,
    dlogprob: &Tensor,
    targets: &Tensor,
    inv_temp: f32,
    out_dtype: DType,
    op: &'static str,
) -> Result<Tensor> {
    let (n, c) = x.dims2(op)?;
    let out = empty(dev, &[n, c], out_dtype)?;
    let func = format!(
        "lm_head_scale_rows_{}_{}",
        suffix(x.dtype(), op)?,
        suffix(out_dtype, op)?
    );
    let args = Args::new()
        .ptr(x, dev, op)?
        .ptr(dlogprob, dev, op)?
        .ptr(targets, dev, op)?
        .f32(inv_temp)
        .ptr(&out, dev, op)?
        .u32(u32_dim(op, n)?)
        .u32(u32_dim(op, c)?);
    let items = if c.is_multiple_of(8) {
        (n * c).div_ceil(8)
    } else {
        n * c
    };
    if items > 0 {
        run(dev, &SRC, &[], &func, Grid::cover(items, 256), args)?;
    }
    Ok(out)
}

/// The factorised backward from the kept residual R [N,V]: dW += Rᵀ · diag(s) hidden, then
/// d(hidden) = diag(s) (R · W) (f32 GEMM output, scaled and rounded once).
#[allow(clippy::too_many_arguments)]
fn backward_factorised(
    dev: &CudaDevice,
    dlogprob: &Tensor,
    hidden: &Tensor,
    w: &Tensor,
    t: &Tensor,
    residual: &Tensor,
    inv_temp: f32,
    dw: &mut Tensor,
    store: GradStore,
) -> Result<Tensor> {
    const OP: &str = "lm_head_logprobs_backward";
    let (n, c) = hidden.dims2(OP)?;
    let (v, _) = w.dims2(OP)?;
    let dtype = hidden.dtype();
    let r_p = ptr(residual, dev, OP)?;
    let hs = scale_rows(dev, hidden, dlogprob, t, inv_temp, dtype, OP)?; // diag(s) hidden [N,C]
                                                                         // dw [V,C] += Rᵀ [V,N] · diag(s) hidden [N,C]
    Gemm {
        trans_a: false,
        trans_b: true,
        m: c,
        n: v,
        k: n,
        a: ptr(&hs, dev, OP)?,
        lda: c,
        b: r_p,
        ldb: v,
        c: ptr(dw, dev, OP)?,
        ldc: c,
        alpha: 1.0,
        beta: store.beta(),
        ab: dtype,
        c_type: DType::F32,
    }
    .run(dev)?;
    // R · W [N,C] = R [N,V] · w [V,C], in f32 until the row scaling
    let rw = empty(dev, &[n, c], DType::F32)?;
    Gemm {
        trans_a: false,
        trans_b: false,
        m: c,
        n,
        k: v,
        a: ptr(w, dev, OP)?,
        lda: c,
        b: r_p,
        ldb: v,
        c: ptr(&rw, dev, OP)?,
        ldc: c,
        alpha: 1.0,
        beta: 0.0,
        ab: dtype,
        c_type: DType::F32,
    }
    .run(dev)?;
    scale_rows(dev, &rw, dlogprob, t, inv_temp, dtype, OP)
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
    store: GradStore,
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
    if let Some(res) = fwd.residual {
        return backward_factorised(&dev, dlogprob, hidden, w, &t, res, inv_temp, dw, store);
    }
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
        // dw [V,C] (+)= d(logits)ᵀ [V,m] · hidden rows [m,C]
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
            // The first chunk stores as asked; the later ones add onto it.
            beta: if r0 == 0 { store.beta() } else { 1.0 },
            ab: dtype,
            c_type: DType::F32,
        }
        .run(&dev)?;
    }
    Ok(d_hidden)
}
