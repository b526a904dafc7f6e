//! Our Hopper GEMMs (y = x · Wᵀ: `kernels::cuda::gemm_wgmma`, cp.async loads, and
//! `kernels::cuda::gemm_tma`, TMA loads from a producer warp) against the CPU f32 product of the
//! same bf16 values: ragged shapes (rows and columns that fill no tile, K not a multiple of the
//! 64-wide stage), the decode and training shapes of Qwen2.5-0.5B, bf16 and f32 outputs, split K.
//! One test body for both kernels. GPU only (sm_90); elsewhere it prints why it skipped.

use kernels::cuda::gemm_tma::{gemm_tma_pp_tn, gemm_tma_tn, gemm_tma_tn_split};
use kernels::cuda::gemm_wgmma::{gemm_wgmma_tn, gemm_wgmma_tn_split, supported};
use kernels::ops::linear;
use kernels::testing::{randn, rel_err, test_devices};
use kernels::{DType, Device, Result, Tensor};

/// A GEMM under test: its name, the op (its own split choice) and the op with a given split.
struct Gemm {
    name: &'static str,
    run: fn(&Tensor, &Tensor, DType) -> Result<Tensor>,
    split: fn(&Tensor, &Tensor, DType, usize) -> Result<Tensor>,
}

/// The ping-pong kernel has no K split of its own: one split runs it, more the split kernel.
fn tma_pp_split(x: &Tensor, w: &Tensor, out: DType, splits: usize) -> Result<Tensor> {
    if splits == 1 {
        gemm_tma_pp_tn(x, w, out)
    } else {
        gemm_tma_tn_split(x, w, out, splits)
    }
}

const GEMMS: [Gemm; 3] = [
    Gemm {
        name: "wgmma",
        run: gemm_wgmma_tn,
        split: gemm_wgmma_tn_split,
    },
    Gemm {
        name: "tma",
        run: gemm_tma_tn,
        split: gemm_tma_tn_split,
    },
    Gemm {
        name: "tma_pp",
        run: gemm_tma_pp_tn,
        split: tma_pp_split,
    },
];

/// ‖got − cpu‖ / ‖cpu‖ for x [m, k] · w [n, k]ᵀ with output `out`, K split `splits` ways (None:
/// the op's own choice).
fn error_against_cpu(
    gemm: &Gemm,
    dev: &Device,
    (m, n, k): (usize, usize, usize),
    out: DType,
    splits: Option<usize>,
    seed: u64,
) -> f64 {
    let x = randn(&[m, k], seed, dev, DType::BF16);
    let w = randn(&[n, k], seed + 1, dev, DType::BF16);
    let got = match splits {
        None => (gemm.run)(&x, &w, out).unwrap(),
        Some(s) => (gemm.split)(&x, &w, out, s).unwrap(),
    };
    assert_eq!(got.shape(), &[m, n]);
    assert_eq!(got.dtype(), out);
    // The same bf16 values, multiplied in f32 on the CPU.
    let to_cpu = |t: &Tensor| {
        let v = t.to_vec_f32().unwrap();
        Tensor::from_f32(v, t.shape(), &Device::Cpu).unwrap()
    };
    let want = linear(&to_cpu(&x), &to_cpu(&w), None).unwrap();
    rel_err(&got.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap())
}

/// The GPUs the kernel runs on (sm_90); the others are named and skipped.
fn wgmma_devices() -> Vec<Device> {
    let mut out = vec![];
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        let Device::Cuda(cuda) = &dev else { continue };
        if supported(cuda) {
            out.push(dev);
        } else {
            eprintln!("skipped: {} is not sm_90 (wgmma)", cuda.arch());
        }
    }
    out
}

/// Tolerance on the relative error: with f32 out the summation order (and the tensor cores'
/// adder) differs from the CPU's, ~1e-6 here; bf16 out adds one rounding (~3e-3).
fn tol(out: DType) -> f64 {
    if out == DType::F32 {
        1e-4
    } else {
        8e-3
    }
}

#[test]
fn own_gemms_equal_the_cpu_product() {
    for (dev, gemm) in wgmma_devices()
        .iter()
        .flat_map(|d| GEMMS.iter().map(move |g| (d, g)))
    {
        let shapes = [
            (1, 8, 8),
            (77, 200, 72),     // nothing fills a tile; K ends mid-stage
            (128, 128, 64),    // exactly one wgmma tile, one stage
            (128, 256, 64),    // exactly one tma tile
            (130, 129, 136),   // one past a tile in each direction
            (130, 257, 136),   // one past a tma tile in each direction
            (100, 300, 1000),  // more k-tiles than the ring has stages, ragged everywhere
            (256, 1152, 896),  // decode q/k/v at B 256
            (256, 896, 4864),  // decode down
            (64, 9728, 896),   // decode gate/up at B 64
            (1024, 4864, 896), // a training product
        ];
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            for out in [DType::F32, DType::BF16] {
                let err = error_against_cpu(gemm, dev, (m, n, k), out, None, 10 * i as u64);
                let tol = tol(out);
                let name = gemm.name;
                println!("{name} [{m}, {k}] · [{n}, {k}]ᵀ → {out:?}: rel err {err:.2e}");
                assert!(
                    err < tol,
                    "{name} [{m}, {k}] · [{n}, {k}]ᵀ → {out:?}: rel err {err:e} (tol {tol:e})"
                );
            }
        }
    }
}

#[test]
fn split_k_equals_the_cpu_product() {
    for (dev, gemm) in wgmma_devices()
        .iter()
        .flat_map(|d| GEMMS.iter().map(move |g| (d, g)))
    {
        // (shape, splits): even and uneven splits, splits left with no k-tile (14 tiles in 9
        // splits of 2: the last two are empty and must add zeros), one k-tile a split.
        let cases = [
            ((256, 896, 4864), 9),
            ((256, 1152, 896), 7),
            ((256, 1152, 896), 9),
            ((77, 200, 72), 2),
            ((130, 129, 512), 8),
        ];
        for (i, &(shape, splits)) in cases.iter().enumerate() {
            for out in [DType::F32, DType::BF16] {
                let err = error_against_cpu(gemm, dev, shape, out, Some(splits), 100 + i as u64);
                let name = gemm.name;
                assert!(
                    err < tol(out),
                    "{name} {shape:?} in {splits} splits → {out:?}: rel err {err:e}"
                );
            }
        }
        let x = randn(&[4, 128], 1, dev, DType::BF16);
        let w = randn(&[4, 128], 2, dev, DType::BF16);
        assert!((gemm.split)(&x, &w, DType::F32, 0).is_err());
        assert!(
            (gemm.split)(&x, &w, DType::F32, 3).is_err(),
            "2 k-tiles, 3 splits"
        );
    }
}

#[test]
fn own_gemms_reject_what_they_cannot_multiply() {
    for (dev, gemm) in wgmma_devices()
        .iter()
        .flat_map(|d| GEMMS.iter().map(move |g| (d, g)))
    {
        let x = randn(&[4, 12], 1, dev, DType::BF16);
        let w = randn(&[4, 12], 2, dev, DType::BF16);
        assert!(
            (gemm.run)(&x, &w, DType::F32).is_err(),
            "K 12 is not a multiple of 8"
        );
        let x = randn(&[4, 16], 1, dev, DType::BF16);
        let w = randn(&[4, 24], 2, dev, DType::BF16);
        assert!(
            (gemm.run)(&x, &w, DType::F32).is_err(),
            "inner sizes differ"
        );
        let xf = randn(&[4, 16], 1, dev, DType::F32);
        let w = randn(&[4, 16], 2, dev, DType::BF16);
        assert!((gemm.run)(&xf, &w, DType::F32).is_err(), "f32 input");
    }
}
