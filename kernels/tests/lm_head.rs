//! `ops::lm_head` (LM-head GEMM + fused log-softmax, row-chunked) against its definition by the
//! separate ops `linear` and `logsoftmax_gather` on the CPU, and the CUDA op against the CPU op
//! (f32 and bf16; with all logits kept and in chunks that split the rows unevenly; a vocabulary
//! that takes the 16-byte path and one that does not; the factorised backward from the kept
//! R = onehot − p against the one from the logits, on the CPU and on the GPU, there also at the
//! Qwen2.5 vocabulary whose row segments need more than 48 KiB of shared memory).
//!
//! Without a GPU the CUDA test prints "skipped: no GPU" and passes; with `REALIGN_REQUIRE_GPU=1`
//! a missing GPU fails.

use half::bf16;
use kernels::ops::lm_head::{chunk_rows, lm_head_logprobs, lm_head_logprobs_backward, LmHeadGrad};
use kernels::testing::{rand_ids_vec, randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};

const CPU: Device = Device::Cpu;

/// Inputs of one case: hidden [N,C], w [V,C] (bf16-representable), targets (the last one
/// NO_TARGET), d(logprob), d(entropy).
struct Case {
    n: usize,
    c: usize,
    v: usize,
    inv_temp: f32,
    hidden: Vec<f32>,
    w: Vec<f32>,
    targets: Vec<u32>,
    dlp: Vec<f32>,
    dent: Vec<f32>,
}

fn bf16_exact(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
}

fn case(n: usize, c: usize, v: usize, inv_temp: f32, seed: u64) -> Case {
    // Weights of scale ~3/sqrt(C) give logits of scale ~3: a peaked softmax, as a model's.
    let s = 3.0 / (c as f32).sqrt();
    let mut targets = rand_ids_vec(n, v as u32, seed + 2);
    targets[n - 1] = ops::NO_TARGET;
    Case {
        n,
        c,
        v,
        inv_temp,
        hidden: bf16_exact(randn_vec(n * c, seed)),
        w: bf16_exact(
            randn_vec(v * c, seed + 1)
                .into_iter()
                .map(|x| x * s)
                .collect(),
        ),
        targets,
        dlp: randn_vec(n, seed + 3),
        dent: randn_vec(n, seed + 4),
    }
}

fn t(data: &[f32], shape: &[usize], dev: &Device, dtype: DType) -> Tensor {
    let x = Tensor::from_f32(data.to_vec(), shape, dev).unwrap();
    if dtype == DType::F32 {
        x
    } else {
        ops::cast(&x, dtype).unwrap()
    }
}

/// (logprob, entropy, lse, d_hidden, dw) of the op on `dev` in `dtype`; the forward is told
/// `grad`, the backward gets a d(entropy) when `with_entropy`.
fn run_op(
    k: &Case,
    dev: &Device,
    dtype: DType,
    max_logits: usize,
    grad: LmHeadGrad,
    with_entropy: bool,
) -> [Vec<f32>; 5] {
    let h = t(&k.hidden, &[k.n, k.c], dev, dtype);
    let w = t(&k.w, &[k.v, k.c], dev, dtype);
    let fwd = lm_head_logprobs(&h, &w, &k.targets, k.inv_temp, max_logits, grad).unwrap();
    let fits = k.n <= chunk_rows(k.v, max_logits);
    assert_eq!(
        fwd.logits.is_some() || fwd.residual.is_some(),
        fits,
        "logits or R are kept exactly when all rows fit in one chunk"
    );
    assert!(fwd.logits.is_none() || fwd.residual.is_none());
    if grad == LmHeadGrad::WithEntropy {
        assert!(fwd.residual.is_none(), "R kept although d(entropy) comes");
    } else {
        // The CPU, and GPUs with thread-block clusters (sm_90+; these vocabularies fit), keep R.
        let clusters = match dev {
            Device::Cpu => true,
            Device::Cuda(d) => d.arch().trim_start_matches("sm_").parse::<u32>().unwrap() >= 90,
        };
        if clusters {
            assert_eq!(fwd.residual.is_some(), fits, "R is kept when it fits");
        }
    }
    if let Some(r) = &fwd.residual {
        assert_eq!((r.shape(), r.dtype()), (&[k.n, k.v][..], dtype));
    }
    let mut dw = Tensor::zeros(&[k.v, k.c], DType::F32, dev).unwrap();
    let dlp = Tensor::from_f32(k.dlp.clone(), &[k.n], dev).unwrap();
    let dent = with_entropy.then(|| Tensor::from_f32(k.dent.clone(), &[k.n], dev).unwrap());
    let dh = lm_head_logprobs_backward(
        &dlp,
        dent.as_ref(),
        &h,
        &w,
        &k.targets,
        fwd.saved(),
        k.inv_temp,
        max_logits,
        &mut dw,
        ops::GradStore::Add,
    )
    .unwrap();
    let f = |x: &Tensor| x.to_vec_f32().unwrap();
    [
        f(&fwd.logprob),
        f(&fwd.entropy),
        f(&fwd.lse),
        f(&dh),
        f(&dw),
    ]
}

/// The same quantities from the separate ops on the CPU (f32).
fn reference(k: &Case, with_entropy: bool) -> [Vec<f32>; 5] {
    let h = t(&k.hidden, &[k.n, k.c], &CPU, DType::F32);
    let w = t(&k.w, &[k.v, k.c], &CPU, DType::F32);
    let logits = ops::linear(&h, &w, None).unwrap();
    let tg = Tensor::from_u32(k.targets.clone(), &[k.n], &CPU).unwrap();
    let (lp, ent, lse) = ops::logsoftmax_gather(&logits, &tg, k.inv_temp).unwrap();
    let dlp = Tensor::from_f32(k.dlp.clone(), &[k.n], &CPU).unwrap();
    let dent = with_entropy.then(|| Tensor::from_f32(k.dent.clone(), &[k.n], &CPU).unwrap());
    let dz = ops::logsoftmax_gather_backward(&dlp, dent.as_ref(), &logits, &tg, &lse, k.inv_temp)
        .unwrap();
    let mut dw = Tensor::zeros(&[k.v, k.c], DType::F32, &CPU).unwrap();
    let dh = ops::linear_backward(&dz, &h, &w, &mut dw, None, ops::GradStore::Add).unwrap();
    let f = |x: &Tensor| x.to_vec_f32().unwrap();
    [f(&lp), f(&ent), f(&lse), f(&dh), f(&dw)]
}

const NAMES: [&str; 5] = ["logprob", "entropy", "lse", "d_hidden", "dw"];

/// Max abs differences of outputs the reference computes the same way, up to the GEMM's
/// summation order.
fn check(what: &str, got: &[Vec<f32>; 5], want: &[Vec<f32>; 5], tol: [f64; 5]) {
    for i in 0..5 {
        let e = rel_err(&got[i], &want[i]);
        println!("{what} {}: rel_err {e:.3e}", NAMES[i]);
        assert!(
            e <= tol[i],
            "{what} {}: rel_err {e:.3e} above {:.1e}",
            NAMES[i],
            tol[i]
        );
    }
}

fn cases() -> Vec<Case> {
    vec![
        // V % 8 == 0 (16-byte path), V % 8 != 0 (scalar path), one row.
        case(23, 32, 1000, 1.0 / 0.7, 10),
        case(17, 24, 517, 1.0, 20),
        case(1, 16, 64, 2.0, 30),
        // Fewer vocabulary entries than 8 segments of 8: some cluster blocks own none.
        case(5, 16, 24, 1.0, 35),
    ]
}

/// Row chunk limits: everything kept, and chunks that split N unevenly (7 rows, and 1 row).
fn limits(k: &Case) -> [usize; 3] {
    [k.n * k.v, 7 * k.v + 3, 1]
}

#[test]
fn cpu_op_matches_separate_ops() {
    for k in cases() {
        for with_entropy in [false, true] {
            let want = reference(&k, with_entropy);
            for max in limits(&k) {
                let rows = chunk_rows(k.v, max);
                let grad = if with_entropy {
                    LmHeadGrad::WithEntropy
                } else {
                    LmHeadGrad::LogprobOnly
                };
                let got = run_op(&k, &CPU, DType::F32, max, grad, with_entropy);
                let what = format!(
                    "cpu {}x{}x{} rows/chunk {rows} entropy {with_entropy}",
                    k.n, k.c, k.v
                );
                // Same row arithmetic; chunked GEMMs may sum in another order.
                check(&what, &got, &want, [1e-6, 1e-6, 1e-6, 1e-5, 1e-5]);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let k = case(3, 8, 10, 1.0, 40);
    let h = t(&k.hidden, &[3, 8], &CPU, DType::F32);
    let w = t(&k.w, &[10, 8], &CPU, DType::F32);
    let g = LmHeadGrad::WithEntropy;
    let err = lm_head_logprobs(&h, &w, &[1, 10, 2], 1.0, 100, g).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = lm_head_logprobs(&h, &w, &[1, 2], 1.0, 100, g).unwrap_err();
    assert!(err.to_string().contains("2 targets for 3 rows"), "{err}");
    let w9 = t(&k.w[..72], &[8, 9], &CPU, DType::F32);
    assert!(lm_head_logprobs(&h, &w9, &[1, 2, 3], 1.0, 100, g).is_err());
    assert!(lm_head_logprobs(&h, &w, &[1, 2, 3], 0.0, 100, g).is_err());
    // A d(entropy) after a forward that kept R for a d(logprob)-only backward.
    let fwd = lm_head_logprobs(&h, &w, &[1, 2, 3], 1.0, 100, LmHeadGrad::LogprobOnly).unwrap();
    assert!(fwd.residual.is_some());
    let d = Tensor::from_f32(vec![1.0; 3], &[3], &CPU).unwrap();
    let mut dw = Tensor::zeros(&[10, 8], DType::F32, &CPU).unwrap();
    let err = lm_head_logprobs_backward(
        &d,
        Some(&d),
        &h,
        &w,
        &[1, 2, 3],
        fwd.saved(),
        1.0,
        100,
        &mut dw,
        ops::GradStore::Add,
    )
    .unwrap_err();
    assert!(err.to_string().contains("d(entropy)"), "{err}");
}

/// The factorised backward (R kept) against the one from the kept logits and the recomputing
/// one, on the CPU in f32: the same gradient up to the GEMMs' summation order.
#[test]
fn cpu_factorised_matches_logits_path() {
    for k in cases() {
        let all = k.n * k.v;
        let want = run_op(&k, &CPU, DType::F32, all, LmHeadGrad::WithEntropy, false);
        let got = run_op(&k, &CPU, DType::F32, all, LmHeadGrad::LogprobOnly, false);
        let what = format!("cpu factorised {}x{}x{}", k.n, k.c, k.v);
        check(&what, &got, &want, [0.0, 0.0, 0.0, 1e-5, 1e-5]);
        // Chunks too small to keep anything: the recomputing path either way.
        let got = run_op(&k, &CPU, DType::F32, k.v, LmHeadGrad::LogprobOnly, false);
        check(
            &format!("{what} chunked"),
            &got,
            &want,
            [0.0, 0.0, 0.0, 1e-5, 1e-5],
        );
    }
}

#[test]
fn cuda_op_matches_cpu() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    for k in cases() {
        for with_entropy in [false, true] {
            let g = LmHeadGrad::WithEntropy;
            let want = run_op(&k, &CPU, DType::F32, usize::MAX, g, with_entropy);
            // Without d(entropy) both the logits path and the factorised one.
            let grads: &[LmHeadGrad] = if with_entropy {
                &[LmHeadGrad::WithEntropy]
            } else {
                &[LmHeadGrad::WithEntropy, LmHeadGrad::LogprobOnly]
            };
            for (dtype, &grad) in [DType::F32, DType::BF16]
                .into_iter()
                .flat_map(|d| grads.iter().map(move |g| (d, g)))
            {
                for max in limits(&k) {
                    let rows = chunk_rows(k.v, max);
                    let got = run_op(&k, &dev, dtype, max, grad, with_entropy);
                    let what = format!(
                        "cuda {dtype} {}x{}x{} rows/chunk {rows} entropy {with_entropy} {grad:?}",
                        k.n, k.c, k.v
                    );
                    // Same inputs (bf16-representable): the per-row results are f32 from f32
                    // logits either way; bf16 rounds d(logits) and d(hidden) once each.
                    let tol = match dtype {
                        DType::F32 => [1e-5, 1e-5, 1e-5, 1e-4, 1e-4],
                        _ => [1e-5, 1e-5, 1e-5, 1e-2, 1e-2],
                    };
                    check(&what, &got, &want, tol);
                }
            }
        }
    }
}

/// On the GPU at the Qwen2.5 vocabulary (151936: 76 KB of shared memory per cluster block), and
/// with rows split over several residual chunks: the factorised path against the logits path
/// (same device and dtype) and against the CPU.
#[test]
fn cuda_factorised_matches_logits_path() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    let k = case(9, 64, 151_936, 1.0, 60);
    let want = run_op(
        &k,
        &CPU,
        DType::F32,
        usize::MAX,
        LmHeadGrad::WithEntropy,
        false,
    );
    for dtype in [DType::F32, DType::BF16] {
        // All rows kept; and a limit whose half holds 4 rows (the f32 scratch goes in chunks).
        for max in [k.n * k.v, 9 * k.v] {
            let logits = run_op(&k, &dev, dtype, max, LmHeadGrad::WithEntropy, false);
            let fact = run_op(&k, &dev, dtype, max, LmHeadGrad::LogprobOnly, false);
            let what = format!("cuda {dtype} Qwen vocabulary max {max}");
            let tol = match dtype {
                DType::F32 => [1e-5, 1e-5, 1e-5, 1e-4, 1e-4],
                _ => [1e-5, 1e-5, 1e-5, 1e-2, 1e-2],
            };
            check(&format!("{what} factorised vs cpu"), &fact, &want, tol);
            check(
                &format!("{what} factorised vs logits path"),
                &fact,
                &logits,
                tol,
            );
        }
    }
}
