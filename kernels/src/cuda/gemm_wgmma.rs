//! y = x · Wᵀ with our own Hopper tensor-core kernel (`cu/gemm_wgmma.cu`: wgmma from swizzled
//! shared memory, a cp.async ring). The base for GEMMs with fused prologues and epilogues
//! (docs/rollout.md item 8), which cuBLAS cannot take: first it has to match cuBLAS on the bare
//! product (`cuda_bench wgmma`). Not used by any model path yet; `ops::linear` stays on cuBLAS.

use super::launch::{run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

/// The kernel with the shared cp.async primitives (`cu/mma.cuh`) in front.
pub(crate) const SRC: KernelSource = KernelSource {
    name: "gemm_wgmma",
    src: concat!(
        include_str!("../../cu/mma.cuh"),
        "#line 1 \"wgmma.cuh\"\n",
        include_str!("../../cu/wgmma.cuh"),
        "#line 1 \"gemm_wgmma.cu\"\n",
        include_str!("../../cu/gemm_wgmma.cu"),
    ),
};

const OP: &str = "gemm_wgmma_tn";

/// Tile of one thread block (rows of x × rows of W) and its shared memory: four stages of two
/// 128 × 64 bf16 tiles, plus 1 KiB so the kernel can align the ring to the 1024-byte swizzle atom.
const BM: usize = 128;
const BN: usize = 128;
const SMEM: u32 = 4 * 2 * 128 * 64 * 2 + 1024;

/// `REALIGN_GEMM=wgmma`: `ops::linear`'s bias-free bf16 forward products run this kernel instead
/// of cuBLAS (an A/B switch for benchmarks while the kernel is being brought up; everything else,
/// the backward products included, stays on cuBLAS).
pub fn requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("REALIGN_GEMM").is_ok_and(|v| v == "wgmma"))
}

/// True when this device runs the wgmma kernel (compute capability 9.0: wgmma is sm_90a only).
pub fn supported(dev: &super::CudaDevice) -> bool {
    dev.arch() == "sm_90"
}

/// x [M, K] · w [N, K]ᵀ → [M, N] in `out` (bf16 or f32), both inputs bf16 on one sm_90 GPU,
/// K a multiple of 8 (16-byte rows for the copies). Products with fewer output tiles than half the
/// SMs split K ([`splits_for`]).
pub fn gemm_wgmma_tn(x: &Tensor, w: &Tensor, out: DType) -> Result<Tensor> {
    let dev = device_of(x, OP)?;
    let (m, k) = x.dims2(OP)?;
    let (n, _) = w.dims2(OP)?;
    let splits = splits_for(m, n, k, super::sm_count(&dev));
    gemm_wgmma_tn_split(x, w, out, splits)
}

/// K-splits for an [m, k] · [n, k]ᵀ product on `sms` SMs: 1 when the output tiles fill at least
/// half the SMs, else enough to reach about one block per SM, at least two 64-wide k-tiles each.
pub fn splits_for(m: usize, n: usize, k: usize, sms: usize) -> usize {
    let tiles = m.div_ceil(BM) * n.div_ceil(BN);
    let k_tiles = k.div_ceil(64);
    if tiles == 0 || 2 * tiles >= sms {
        return 1;
    }
    (sms / tiles).min(k_tiles / 2).max(1)
}

/// [`gemm_wgmma_tn`] with `splits` K-splits: each writes an f32 partial product, and a second
/// kernel sums them in a fixed order (deterministic) into `out`.
pub fn gemm_wgmma_tn_split(x: &Tensor, w: &Tensor, out: DType, splits: usize) -> Result<Tensor> {
    let (dev, m, n, k) = check_operands(OP, x, w, splits)?;
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| Error::msg(format!("{OP}: dimension {v} exceeds u32")))
    };
    let (y, ws) = outputs(&dev, m, n, out, splits)?;
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let target = ws.as_ref().unwrap_or(&y);
    let args = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(w, &dev, OP)?
        .ptr(target, &dev, OP)?
        .u32(dim(m)?)
        .u32(dim(n)?)
        .u32(dim(k)?)
        .u32(dim(k)?) // lda
        .u32(dim(k)?) // ldb
        .u32(dim(n)?); // ldd
    let grid = Grid {
        grid: (dim(n.div_ceil(BN))?, dim(m.div_ceil(BM))?, dim(splits)?),
        block: (256, 1, 1),
        smem: SMEM,
    };
    let func = format!("gemm_wgmma_tn_{}", suffix(target.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, grid, args)?;
    if let Some(ws) = &ws {
        splitk_reduce(ws, &y, splits)?;
    }
    Ok(y)
}

/// The checks both of our GEMMs make before a launch: an sm_90 device, bf16 x [m, k] and
/// w [n, k] with the same K, a non-zero multiple of 8 (16-byte rows), and 1 to K/64 K-splits.
/// Returns the device and (m, n, k).
pub(crate) fn check_operands(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    splits: usize,
) -> Result<(super::CudaDevice, usize, usize, usize)> {
    let dev = device_of(x, op)?;
    if !supported(&dev) {
        return Err(Error::msg(format!(
            "{op}: needs a compute capability 9.0 GPU (wgmma), this one is {}",
            dev.arch()
        )));
    }
    for (name, t) in [("x", x), ("w", w)] {
        if t.dtype() != DType::BF16 {
            return Err(Error::msg(format!(
                "{op}: {name} must be bf16, got {:?}",
                t.dtype()
            )));
        }
    }
    let (m, k) = x.dims2(op)?;
    let (n, kw) = w.dims2(op)?;
    if k != kw || !k.is_multiple_of(8) || k == 0 {
        return Err(Error::msg(format!(
            "{op}: x [{m}, {k}] and w [{n}, {kw}] need the same inner size, a non-zero multiple of 8"
        )));
    }
    if splits == 0 || splits > k.div_ceil(64) {
        return Err(Error::msg(format!(
            "{op}: {splits} K-splits for K {k} (1 to {} 64-wide tiles)",
            k.div_ceil(64)
        )));
    }
    Ok((dev, m, n, k))
}

/// The product y [m, n] in `out` and, with several K-splits, the f32 workspace [splits, m, n] the
/// splits write first (one split writes y directly).
pub(crate) fn outputs(
    dev: &super::CudaDevice,
    m: usize,
    n: usize,
    out: DType,
    splits: usize,
) -> Result<(Tensor, Option<Tensor>)> {
    let y = empty(dev, &[m, n], out)?;
    let ws = if splits > 1 && m > 0 && n > 0 {
        Some(empty(dev, &[splits, m, n], DType::F32)?)
    } else {
        None
    };
    Ok((y, ws))
}

/// y [m, n] = Σ_z ws[z] over the `splits` f32 slices [splits, m, n] of a split-K product, in a
/// fixed order (deterministic), rounded once to y's dtype.
pub(crate) fn splitk_reduce(ws: &Tensor, y: &Tensor, splits: usize) -> Result<()> {
    let dev = device_of(y, OP)?;
    let count = y.numel();
    let splits = u32::try_from(splits)
        .map_err(|_| Error::msg(format!("{OP}: {splits} K-splits exceed u32")))?;
    let args = Args::new()
        .ptr(ws, &dev, OP)?
        .ptr(y, &dev, OP)?
        .u64(count as u64)
        .u32(splits);
    let func = format!("gemm_splitk_reduce_{}", suffix(y.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, Grid::cover(count, 256), args)
}

#[cfg(test)]
mod tests {
    use super::splits_for;

    #[test]
    fn only_products_with_few_output_tiles_split_k() {
        // Training products fill the GPU: no split.
        assert_eq!(splits_for(8192, 4864, 896, 132), 1);
        // Decode at B 256: q/k/v has 2 × 9 tiles over 14 k-tiles, down 2 × 7 over 76.
        assert_eq!(splits_for(256, 1152, 896, 132), 7);
        assert_eq!(splits_for(256, 896, 4864, 132), 9);
        // gate/up at B 256 has 152 tiles: no split.
        assert_eq!(splits_for(256, 9728, 896, 132), 1);
        // Short K never splits below two k-tiles a split.
        assert_eq!(splits_for(1, 8, 8, 132), 1);
        assert_eq!(splits_for(1, 8, 256, 132), 2);
    }
}
