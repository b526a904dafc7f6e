//! y = x · Wᵀ with our second Hopper GEMM (`cu/gemm_tma.cu`): TMA loads from a producer warp into
//! a ring guarded by mbarriers, two consumer warpgroups on wgmma.m64n256k16 (a 128 × 256 tile).
//! The first one (`gemm_wgmma`, cp.async by the warps that multiply, 128 × 128 tiles) ran at
//! 0.53–0.64× of cuBLAS on the training products; this one is the next step toward a GEMM that
//! matches cuBLAS and can then take fused prologues and epilogues (docs/rollout.md item 8).
//! Opt-in (`REALIGN_GEMM=tma`); `ops::linear` stays on cuBLAS by default.

use super::gemm_wgmma;
use super::launch::{run, Args, Grid, KernelSource, TensorMap};
use super::{device_of, suffix};
use crate::{DType, Error, Result, Tensor};
use cudarc::driver::sys;

/// The kernel with the shared primitives (`cu/mma.cuh`: shared addresses) in front.
pub(crate) const SRC: KernelSource = KernelSource {
    name: "gemm_tma",
    src: concat!(
        include_str!("../../cu/mma.cuh"),
        "#line 1 \"wgmma.cuh\"\n",
        include_str!("../../cu/wgmma.cuh"),
        "#line 1 \"gemm_tma.cu\"\n",
        include_str!("../../cu/gemm_tma.cu"),
    ),
};

const OP: &str = "gemm_tma_tn";

/// Tile of one thread block (rows of x × rows of W) and its depth along K.
const BM: usize = 128;
const BN: usize = 256;
const BK: usize = 64;
const STAGES: usize = 4;
const THREADS: u32 = 288;
/// Four stages of a 128 × 64 and a 256 × 64 bf16 tile, eight 8-byte mbarriers, and 1 KiB so the
/// kernel can align the ring to the 1024-byte swizzle atom.
const SMEM: u32 = (STAGES * (BM + BN) * BK * 2 + 2 * STAGES * 8 + 1024) as u32;

/// The persistent ping-pong kernel (`gemm_tma_pp_*`): 128 × 128 tiles a consumer warpgroup, six
/// 32 KiB stages, six full, six empty and two order mbarriers.
const PP_TILE: usize = 128;
const PP_SMEM: u32 = (6 * 2 * PP_TILE * BK * 2 + (2 * 6 + 2) * 8 + 1024) as u32;

/// Which of our TMA kernels `REALIGN_GEMM` asks `ops::linear` to use for its bias-free bf16
/// forward products (an A/B switch while they are brought up; the backward products stay on
/// cuBLAS): `tma` the one-tile-a-block kernel, `tma_pp` the persistent ping-pong one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    Tiles,
    PingPong,
}

/// See [`Requested`]; None unless `REALIGN_GEMM` is `tma` or `tma_pp`.
pub fn requested() -> Option<Requested> {
    static ON: std::sync::OnceLock<Option<Requested>> = std::sync::OnceLock::new();
    *ON.get_or_init(|| match std::env::var("REALIGN_GEMM").as_deref() {
        Ok("tma") => Some(Requested::Tiles),
        Ok("tma_pp") => Some(Requested::PingPong),
        _ => None,
    })
}

/// x [M, K] · w [N, K]ᵀ → [M, N] in `out` (bf16 or f32), both inputs bf16 on one sm_90 GPU, K a
/// multiple of 8 (16-byte row strides for the tensor maps). Products with fewer output tiles than
/// half the SMs split K ([`splits_for`]).
pub fn gemm_tma_tn(x: &Tensor, w: &Tensor, out: DType) -> Result<Tensor> {
    let dev = device_of(x, OP)?;
    let (m, k) = x.dims2(OP)?;
    let (n, _) = w.dims2(OP)?;
    let splits = splits_for(m, n, k, super::sm_count(&dev));
    gemm_tma_tn_split(x, w, out, splits)
}

/// K-splits for an [m, k] · [n, k]ᵀ product on `sms` SMs: 1 when the output tiles fill at least
/// half the SMs, else enough to reach about one block per SM, at least two k-tiles each.
pub fn splits_for(m: usize, n: usize, k: usize, sms: usize) -> usize {
    let tiles = m.div_ceil(BM) * n.div_ceil(BN);
    let k_tiles = k.div_ceil(BK);
    if tiles == 0 || 2 * tiles >= sms {
        return 1;
    }
    (sms / tiles).min(k_tiles / 2).max(1)
}

/// The tensor map of a row-major bf16 matrix [rows, k] for boxes of `box_rows` rows × 64
/// columns in the 128-byte swizzle; out-of-range elements read as zeros.
fn tensor_map(
    t: &Tensor,
    rows: usize,
    k: usize,
    box_rows: usize,
    dev: &super::CudaDevice,
) -> Result<TensorMap> {
    let addr = super::ptr(t, dev, OP)?;
    let dims: [u64; 2] = [k as u64, rows as u64];
    let strides: [u64; 1] = [(k * 2) as u64]; // bytes between rows (dimension 1)
    let boxes: [u32; 2] = [BK as u32, box_rows as u32];
    let elem: [u32; 2] = [1, 1];
    let mut map = std::mem::MaybeUninit::<TensorMap>::uninit();
    dev.context()
        .bind_to_thread()
        .map_err(|e| Error::Cuda(format!("{OP}: binding the context: {e:?}")))?;
    // SAFETY: the arrays have the rank's lengths (2, and 1 stride), `addr` is a live device
    // allocation of rows × k bf16 (16-byte aligned: the allocator's), and `map` is written by
    // the call before it is read (checked by its result).
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            2,
            addr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    r.result().map_err(|e| {
        Error::Cuda(format!(
            "{OP}: cuTensorMapEncodeTiled for a [{rows}, {k}] bf16 matrix: {e:?}"
        ))
    })?;
    // SAFETY: the call succeeded, so it wrote the map.
    Ok(unsafe { map.assume_init() })
}

/// x [M, K] · w [N, K]ᵀ → [M, N] by the persistent ping-pong kernel (no K split: about one block
/// per SM walks the 128 × 128 output tiles, its two consumer warpgroups alternating, so that one's
/// epilogue hides behind the other's main loop). Same operand rules as [`gemm_tma_tn`].
pub fn gemm_tma_pp_tn(x: &Tensor, w: &Tensor, out: DType) -> Result<Tensor> {
    let (dev, m, n, k) = gemm_wgmma::check_operands(OP, x, w, 1)?;
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| Error::msg(format!("{OP}: dimension {v} exceeds u32")))
    };
    let (y, _) = gemm_wgmma::outputs(&dev, m, n, out, 1)?;
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let tiles = m.div_ceil(PP_TILE) * n.div_ceil(PP_TILE);
    let args = Args::new()
        .tensor_map(tensor_map(x, m, k, PP_TILE, &dev)?)
        .tensor_map(tensor_map(w, n, k, PP_TILE, &dev)?)
        .ptr(&y, &dev, OP)?
        .u32(dim(m)?)
        .u32(dim(n)?)
        .u32(dim(k)?)
        .u32(dim(n)?); // ldd
    let grid = Grid {
        grid: (dim(tiles.min(super::sm_count(&dev)))?, 1, 1),
        block: (THREADS, 1, 1),
        smem: PP_SMEM,
    };
    let func = format!("gemm_tma_pp_tn_{}", suffix(out, OP)?);
    run(&dev, &SRC, &[], &func, grid, args)?;
    Ok(y)
}

/// `REALIGN_GEMM=tma_pp`'s choice: the ping-pong kernel where the output tiles fill the GPU, the
/// split-K kernel ([`gemm_tma_tn`]) where they do not (decode products).
pub fn gemm_tma_auto_tn(x: &Tensor, w: &Tensor, out: DType) -> Result<Tensor> {
    let dev = device_of(x, OP)?;
    let (m, k) = x.dims2(OP)?;
    let (n, _) = w.dims2(OP)?;
    match splits_for(m, n, k, super::sm_count(&dev)) {
        1 => gemm_tma_pp_tn(x, w, out),
        splits => gemm_tma_tn_split(x, w, out, splits),
    }
}

/// [`gemm_tma_tn`] with `splits` K-splits: each writes an f32 partial product, and
/// `gemm_wgmma`'s reduce kernel sums them in a fixed order (deterministic) into `out`.
pub fn gemm_tma_tn_split(x: &Tensor, w: &Tensor, out: DType, splits: usize) -> Result<Tensor> {
    let (dev, m, n, k) = gemm_wgmma::check_operands(OP, x, w, splits)?;
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| Error::msg(format!("{OP}: dimension {v} exceeds u32")))
    };
    let (y, ws) = gemm_wgmma::outputs(&dev, m, n, out, splits)?;
    if m == 0 || n == 0 {
        return Ok(y);
    }
    let target = ws.as_ref().unwrap_or(&y);
    let args = Args::new()
        .tensor_map(tensor_map(x, m, k, BM, &dev)?)
        .tensor_map(tensor_map(w, n, k, BN, &dev)?)
        .ptr(target, &dev, OP)?
        .u32(dim(m)?)
        .u32(dim(n)?)
        .u32(dim(k)?)
        .u32(dim(n)?); // ldd
    let grid = Grid {
        grid: (dim(n.div_ceil(BN))?, dim(m.div_ceil(BM))?, dim(splits)?),
        block: (THREADS, 1, 1),
        smem: SMEM,
    };
    let func = format!("gemm_tma_tn_{}", suffix(target.dtype(), OP)?);
    run(&dev, &SRC, &[], &func, grid, args)?;
    if let Some(ws) = &ws {
        gemm_wgmma::splitk_reduce(ws, &y, splits)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::{splits_for, PP_SMEM, SMEM};

    #[test]
    fn the_ring_fits_an_sm_and_only_few_tiles_split_k() {
        assert!(SMEM as usize <= 227 * 1024);
        assert!(PP_SMEM as usize <= 227 * 1024);
        // Training products fill the GPU: 64 × 19 tiles.
        assert_eq!(splits_for(8192, 4864, 896, 132), 1);
        // Decode at B 256: q/k/v 2 × 5 tiles over 14 k-tiles, down 2 × 4 over 76, gate/up 2 × 38.
        assert_eq!(splits_for(256, 1152, 896, 132), 7);
        assert_eq!(splits_for(256, 896, 4864, 132), 16);
        assert_eq!(splits_for(256, 9728, 896, 132), 1);
        assert_eq!(splits_for(1, 8, 256, 132), 2);
    }
}
