//! y = x · Wᵀ with our own Hopper tensor-core kernel (`cu/gemm_wgmma.cu`: wgmma from swizzled
//! shared memory, a cp.async ring). The base for GEMMs with fused prologues and epilogues
//! (docs/rollout.md item 8), which cuBLAS cannot take: first it has to match cuBLAS on the bare
//! product (`cuda_bench wgmma`). Not used by any model path yet; `ops::linear` stays on cuBLAS.

use super::launch::{kernel_source, run, Args, Grid, KernelSource};
use super::{device_of, empty, suffix};
use crate::{DType, Error, Result, Tensor};

pub(crate) const SRC: KernelSource = kernel_source!("gemm_wgmma");

/// Tile of one thread block (rows of x × rows of W) and its shared memory: four stages of two
/// 128 × 64 bf16 tiles, plus 1 KiB so the kernel can align the ring to the 1024-byte swizzle atom.
const BM: usize = 128;
const BN: usize = 128;
const SMEM: u32 = 4 * 2 * 128 * 64 * 2 + 1024;

/// True when this device runs the wgmma kernel (compute capability 9.0: wgmma is sm_90a only).
pub fn supported(dev: &super::CudaDevice) -> bool {
    dev.arch() == "sm_90"
}

/// x [M, K] · w [N, K]ᵀ → [M, N] in `out` (bf16 or f32), both inputs bf16 on one sm_90 GPU,
/// K a multiple of 8 (16-byte rows for the copies).
pub fn gemm_wgmma_tn(x: &Tensor, w: &Tensor, out: DType) -> Result<Tensor> {
    const OP: &str = "gemm_wgmma_tn";
    let dev = device_of(x, OP)?;
    if !supported(&dev) {
        return Err(Error::msg(format!(
            "{OP}: needs a compute capability 9.0 GPU (wgmma), this one is {}",
            dev.arch()
        )));
    }
    for (name, t) in [("x", x), ("w", w)] {
        if t.dtype() != DType::BF16 {
            return Err(Error::msg(format!(
                "{OP}: {name} must be bf16, got {:?}",
                t.dtype()
            )));
        }
    }
    let (m, k) = x.dims2(OP)?;
    let (n, kw) = w.dims2(OP)?;
    if k != kw || !k.is_multiple_of(8) || k == 0 {
        return Err(Error::msg(format!(
            "{OP}: x [{m}, {k}] and w [{n}, {kw}] need the same inner size, a non-zero multiple of 8"
        )));
    }
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| Error::msg(format!("{OP}: dimension {v} exceeds u32")))
    };
    let y = empty(&dev, &[m, n], out)?;
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let args = Args::new()
        .ptr(x, &dev, OP)?
        .ptr(w, &dev, OP)?
        .ptr(&y, &dev, OP)?
        .u32(dim(m)?)
        .u32(dim(n)?)
        .u32(dim(k)?)
        .u32(dim(k)?) // lda
        .u32(dim(k)?) // ldb
        .u32(dim(n)?); // ldd
    let grid = Grid {
        grid: (dim(n.div_ceil(BN))?, dim(m.div_ceil(BM))?, 1),
        block: (256, 1, 1),
        smem: SMEM,
    };
    let func = format!("gemm_wgmma_tn_{}", suffix(out, OP)?);
    run(&dev, &SRC, &[], &func, grid, args)?;
    Ok(y)
}
