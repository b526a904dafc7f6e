//! The cuBLASLt route of `linear` (`cuda::blas`): decode-sized bf16 products run a fixed cuBLASLt
//! algorithm (table or heuristic) and agree with `cublasGemmEx`; the same call twice gives the
//! same bits; every benchmark candidate that cuBLASLt accepts computes the same product; training
//! shapes keep `cublasGemmEx`; a product recorded in a CUDA graph replays to the eager result;
//! `gemm_with` runs any logged key (transposes, accumulation) as the CPU computes it.
//! GPU only; on a machine without a GPU these tests have nothing to run.

use kernels::cuda::blas::{self, Choice, GemmKey, HEURISTIC_MAX_ROWS};
use kernels::ops::linear::linear_out;
use kernels::testing::{float_tensor, randn, rel_err, test_devices};
use kernels::{DType, Device, Tensor};

fn gpu() -> Option<(Device, kernels::cuda::CudaDevice)> {
    test_devices().into_iter().find_map(|d| match &d {
        Device::Cuda(c) => Some((d.clone(), c.clone())),
        Device::Cpu => None,
    })
}

/// Serialises these tests: one of them records a CUDA graph on the device's single stream, which
/// would also record (or break on) another test thread's work queued meanwhile.
fn gpu_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Decode shapes (rows, in, out) like Qwen2.5-0.5B's q/k/v, o and gate/up at small width, plus
/// rows that are not a bucket size.
const SHAPES: [(usize, usize, usize); 5] = [
    (8, 896, 1152),
    (37, 896, 896),
    (256, 896, 1152),
    (256, 512, 2048),
    (128, 1536, 576),
];

#[test]
fn decode_products_match_gemm_ex_and_repeat_bit_for_bit() {
    let _gpu = gpu_lock();
    let Some((dev, cuda)) = gpu() else {
        return;
    };
    for (i, &(n, k, o)) in SHAPES.iter().enumerate() {
        let x = randn(&[n, k], 10 + i as u64, &dev, DType::BF16);
        let w = randn(&[o, k], 20 + i as u64, &dev, DType::BF16);
        for out in [DType::BF16, DType::F32] {
            let key = GemmKey::linear(n, k, o, DType::BF16, out, false);
            let route = blas::default_route(&cuda, &key).unwrap();
            if std::env::var("REALIGN_GEMM").as_deref() != Ok("ex") {
                assert_ne!(route, "ex", "[{n}x{k}]·[{o}x{k}]ᵀ should take cuBLASLt");
            }
            let mut want = Tensor::zeros(&[n, o], out, &dev).unwrap();
            blas::linear_with(&x, &w, &mut want, 0.0, &Choice::Ex).unwrap();
            let got = linear_out(&x, &w, None, out).unwrap();
            let again = linear_out(&x, &w, None, out).unwrap();
            assert_eq!(
                bits(&got),
                bits(&again),
                "[{n},{k}]x[{o},{k}] {out}: not repeatable"
            );
            let e = rel_err(&got.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap());
            let tol = if out == DType::BF16 { 8e-3 } else { 1e-5 };
            assert!(
                e < tol,
                "[{n},{k}]x[{o},{k}] {out} ({route}): rel err {e} vs cublasGemmEx"
            );
        }
    }
}

#[test]
fn every_candidate_computes_the_same_product() {
    let _gpu = gpu_lock();
    let Some((dev, cuda)) = gpu() else {
        return;
    };
    let (n, k, o) = (64, 896, 1152);
    let x = randn(&[n, k], 3, &dev, DType::BF16);
    let w = randn(&[o, k], 4, &dev, DType::BF16);
    let mut want = Tensor::zeros(&[n, o], DType::F32, &dev).unwrap();
    blas::linear_with(&x, &w, &mut want, 0.0, &Choice::Ex).unwrap();
    let want = want.to_vec_f32().unwrap();
    let key = GemmKey::linear(n, k, o, DType::BF16, DType::F32, false);
    let cands = blas::candidates(&cuda, &key, 8).unwrap();
    assert!(!cands.is_empty(), "the heuristic offered no algorithm");
    for c in &cands {
        let mut y = Tensor::zeros(&[n, o], DType::F32, &dev).unwrap();
        blas::linear_with(&x, &w, &mut y, 0.0, &Choice::Algo(c.algo)).unwrap();
        let e = rel_err(&y.to_vec_f32().unwrap(), &want);
        assert!(
            e < 1e-5,
            "{} ({}): rel err {e}",
            c.origin,
            blas::describe(&c.algo)
        );
    }
}

#[test]
fn training_shapes_keep_gemm_ex_and_beta_accumulates() {
    let _gpu = gpu_lock();
    let Some((dev, cuda)) = gpu() else {
        return;
    };
    let big = GemmKey::linear(8192, 896, 4864, DType::BF16, DType::BF16, false);
    assert!(big.n > HEURISTIC_MAX_ROWS);
    let route = blas::default_route(&cuda, &big).unwrap();
    assert!(route == "ex" || route.starts_with("table"), "{route}");
    let f32_key = GemmKey::linear(16, 64, 64, DType::F32, DType::F32, false);
    assert_eq!(blas::default_route(&cuda, &f32_key).unwrap(), "ex");
    // beta = 1 adds to C on the cuBLASLt route as on cublasGemmEx's.
    let (n, k, o) = (32, 256, 384);
    let x = randn(&[n, k], 5, &dev, DType::BF16);
    let w = randn(&[o, k], 6, &dev, DType::BF16);
    let c0 = randn(&[n, o], 7, &dev, DType::F32);
    let mut a = c0.try_clone().unwrap();
    let mut b = c0.try_clone().unwrap();
    blas::linear_with(&x, &w, &mut a, 1.0, &Choice::Ex).unwrap();
    blas::linear_with(&x, &w, &mut b, 1.0, &Choice::Heuristic).unwrap();
    let e = rel_err(&b.to_vec_f32().unwrap(), &a.to_vec_f32().unwrap());
    assert!(e < 1e-5, "beta = 1: rel err {e}");
}

#[test]
fn a_captured_product_replays_to_the_eager_result() {
    let _gpu = gpu_lock();
    let Some((dev, cuda)) = gpu() else {
        return;
    };
    let (n, k, o) = (128, 896, 1152);
    let x = randn(&[n, k], 8, &dev, DType::BF16);
    let w = randn(&[o, k], 9, &dev, DType::BF16);
    let mut eager = Tensor::zeros(&[n, o], DType::BF16, &dev).unwrap();
    blas::linear_with(&x, &w, &mut eager, 0.0, &Choice::Default).unwrap();
    let mut y = Tensor::zeros(&[n, o], DType::BF16, &dev).unwrap();
    let graph = cuda
        .capture(|| blas::linear_with(&x, &w, &mut y, 0.0, &Choice::Default))
        .unwrap();
    assert!(
        y.to_vec_f32().unwrap().iter().all(|&v| v == 0.0),
        "capture ran the product"
    );
    graph.launch().unwrap();
    assert_eq!(bits(&y), bits(&eager));
}

/// `gemm_with` on the keys a training step logs (`REALIGN_GEMM_LOG`): a dx product (no
/// transposes) and an accumulating dW product (B transposed, f32 C read), as `cublasGemmEx` and
/// as every cuBLASLt candidate, against the product computed on the host.
#[test]
fn gemm_with_runs_transposed_and_accumulating_keys() {
    let _gpu = gpu_lock();
    let Some((dev, cuda)) = gpu() else {
        return;
    };
    // Column-major C[m,n] = op(A)[m,k] · op(B)[k,n] + beta · C.
    let (m, n, k) = (96, 80, 64);
    for (trans_a, trans_b, reads_c) in [(false, false, false), (false, true, true)] {
        let key = GemmKey {
            trans_a,
            trans_b,
            m,
            n,
            k,
            lda: if trans_a { k } else { m },
            ldb: if trans_b { n } else { k },
            ldc: m,
            ab: DType::BF16,
            c_type: DType::F32,
            reads_c,
        };
        let (a_elems, b_elems, c_elems) = key.operand_elems();
        let a = randn(&[a_elems], 1, &dev, DType::BF16);
        let b = randn(&[b_elems], 2, &dev, DType::BF16);
        let c0 = randn(&[c_elems], 3, &dev, DType::F32);
        let (av, bv, cv) = (
            a.to_vec_f32().unwrap(),
            b.to_vec_f32().unwrap(),
            c0.to_vec_f32().unwrap(),
        );
        let beta = if reads_c { 1.0 } else { 0.0 };
        let at = |r: usize, c: usize| {
            if trans_a {
                av[c + r * key.lda]
            } else {
                av[r + c * key.lda]
            }
        };
        let bt = |r: usize, c: usize| {
            if trans_b {
                bv[c + r * key.ldb]
            } else {
                bv[r + c * key.ldb]
            }
        };
        let mut want = vec![0f32; m * n];
        for j in 0..n {
            for i in 0..m {
                let dot: f64 = (0..k).map(|p| at(i, p) as f64 * bt(p, j) as f64).sum();
                want[i + j * m] = (dot + beta as f64 * cv[i + j * m] as f64) as f32;
            }
        }
        let run = |choice: &Choice| {
            let mut c = float_tensor(cv.clone(), &[m * n], &dev, DType::F32);
            blas::gemm_with(&key, &a, &b, &mut c, 1.0, beta, choice).unwrap();
            c.to_vec_f32().unwrap()
        };
        assert!(
            rel_err(&run(&Choice::Ex), &want) < 1e-5,
            "{key:?} as cublasGemmEx"
        );
        for cand in blas::candidates(&cuda, &key, 8).unwrap() {
            let err = rel_err(&run(&Choice::Algo(cand.algo)), &want);
            assert!(err < 1e-5, "{key:?} as {}: rel err {err}", cand.origin);
        }
    }
    // A beta on a key that does not read C is refused, not silently run.
    let key = GemmKey::linear(8, 64, 32, DType::BF16, DType::F32, false);
    let x = randn(&[8 * 64], 4, &dev, DType::BF16);
    let w = randn(&[32 * 64], 5, &dev, DType::BF16);
    let mut y = Tensor::zeros(&[8 * 32], DType::F32, &dev).unwrap();
    assert!(blas::gemm_with(&key, &w, &x, &mut y, 1.0, 1.0, &Choice::Ex).is_err());
}
