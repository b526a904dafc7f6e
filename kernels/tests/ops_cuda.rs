//! CUDA ops against the CPU reference on random inputs, forward and backward.
//!
//! Without a GPU every test prints "skipped: no GPU" and passes; with `REALIGN_REQUIRE_GPU=1` a
//! missing GPU fails. The NVRTC test needs only the NVRTC library (no GPU): it compiles every
//! kernel source for sm_90, so compile errors show up on machines without a GPU too.

use half::bf16;
use kernels::cuda::attention::{attention_backward_with, attention_with, FaConfig};
use kernels::cuda::{launch, nvrtc};
use kernels::testing::{max_abs_diff, rand_ids_vec, randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};

/// Every `.cu` file compiles with NVRTC for sm_90 (attention at several head dims and tiles).
#[test]
fn nvrtc_compiles_every_kernel() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    for src in launch::all_sources() {
        let text = launch::full_source(&src);
        let define_sets: Vec<Vec<String>> = match src.name {
            "attention" => [(64, 64), (128, 64), (128, 32), (24, 64), (256, 32)]
                .iter()
                .map(|(d, b)| vec![format!("-DHEAD_DIM={d}"), format!("-DBLOCK={b}")])
                .collect(),
            // Every tile variant the benchmark compares, at the head dims the kernels take.
            "attention_mma" => {
                let mut sets = Vec::new();
                for d in [16, 32, 64, 96, 128] {
                    for (_, cfg) in FaConfig::candidates() {
                        if cfg.supports(d) {
                            sets.push(cfg.defines_for(d));
                        }
                    }
                    sets.push(FaConfig::for_dim(d).defines_for(d));
                }
                sets
            }
            _ => vec![vec![]],
        };
        for mut defs in define_sets {
            // The PDL build of every module (the default; `REALIGN_PDL=0`: the plain one), so the
            // kernel cache can hold both.
            if launch::pdl_requested() {
                defs.push(launch::PDL_DEFINE.to_string());
            }
            let arch = launch::arch_for(src.name, "sm_90");
            let cubin = nvrtc::compile_cubin(src.name, &text, &arch, &defs)
                .unwrap_or_else(|e| panic!("{}.cu {defs:?}: {e}", src.name));
            assert!(!cubin.is_empty());
        }
    }
}

const CPU: Device = Device::Cpu;

/// The GPU to test on, or None (test_devices printed "skipped: no GPU", or panics under
/// REALIGN_REQUIRE_GPU=1).
fn gpu() -> Option<Device> {
    test_devices().into_iter().find(|d| d.is_cuda())
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// Tolerance on ‖gpu − cpu‖ / ‖cpu‖: f32 elementwise, f32 reductions (sums in another order),
/// and anything with a bf16 rounding.
fn tol(dtype: DType, reduction: bool) -> f64 {
    match (dtype, reduction) {
        (DType::BF16, _) => 1e-2,
        (_, false) => 1e-5,
        (_, true) => 1e-4,
    }
}

/// `v` rounded to what `dtype` can hold (so the CPU reference sees exactly the GPU's inputs).
fn representable(v: Vec<f32>, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect(),
        _ => v,
    }
}

/// Fresh normal draws, already representable in `dtype`, scaled by `s`.
fn draw(n: usize, seed: u64, dtype: DType, s: f32) -> Vec<f32> {
    representable(
        randn_vec(n, seed).into_iter().map(|x| x * s).collect(),
        dtype,
    )
}

fn cpu_t(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_f32(data.to_vec(), shape, &CPU).unwrap()
}

fn gpu_t(data: &[f32], shape: &[usize], dev: &Device, dtype: DType) -> Tensor {
    kernels::testing::float_tensor(data.to_vec(), shape, dev, dtype)
}

fn ids(data: &[u32], dev: &Device) -> Tensor {
    Tensor::from_u32(data.to_vec(), &[data.len()], dev).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// Asserts rel_err(gpu, cpu) ≤ tol and prints the measured error (the GPU run's log keeps them).
fn check(name: &str, dtype: DType, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    let (g, w) = (host(got), host(want));
    assert!(
        g.iter().all(|x| !x.is_nan()),
        "{name} {dtype}: NaN in GPU output"
    );
    let (rel, abs) = (rel_err(&g, &w), max_abs_diff(&g, &w));
    println!("cuda-vs-cpu {name} [{dtype}]: rel_err {rel:.3e} max_abs {abs:.3e} (tol {tol:.0e})");
    assert!(
        rel <= tol,
        "{name} [{dtype}]: relative error {rel:.3e} exceeds {tol:.0e} (max abs diff {abs:.3e})"
    );
}

#[test]
fn cuda_cast_is_exact() {
    let Some(dev) = gpu() else { return };
    let mut x = randn_vec(100_003, 1);
    // Ties, the largest finite values, infinities, tiny and subnormal numbers.
    x.extend([
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -1.0 - 1.0 / 256.0,
        f32::MAX,
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -3e-39,
        0.0,
        -0.0,
    ]);
    let n = x.len();
    let want = ops::cast(&cpu_t(&x, &[n]), DType::BF16).unwrap();
    let got = ops::cast(
        &Tensor::from_f32(x.clone(), &[n], &dev).unwrap(),
        DType::BF16,
    )
    .unwrap();
    assert_eq!(got.dtype(), DType::BF16);
    let (g, w) = (host(&got), host(&want));
    let same = g.iter().zip(&w).all(|(a, b)| a.to_bits() == b.to_bits());
    println!("cuda-vs-cpu cast f32->bf16: bit-exact {same}");
    assert!(
        same,
        "cast f32->bf16 differs from the CPU's round-to-nearest-even"
    );
    let back = ops::cast(&got, DType::F32).unwrap();
    assert_eq!(host(&back), g, "cast bf16->f32 must be exact");
    // Same dtype is a copy.
    let copy = ops::cast(&back, DType::F32).unwrap();
    assert_eq!(host(&copy), g);
}

#[test]
fn cuda_elementwise_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let n = 10_007;
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        let seed = 10 + 4 * k as u64;
        let (a, b) = (draw(n, seed, dtype, 1.0), draw(n, seed + 1, dtype, 1.0));
        let (ga, gb) = (gpu_t(&a, &[n], &dev, dtype), gpu_t(&b, &[n], &dev, dtype));
        let (ca, cb) = (cpu_t(&a, &[n]), cpu_t(&b, &[n]));
        let t = tol(dtype, false);
        check(
            "add",
            dtype,
            &ops::add(&ga, &gb).unwrap(),
            &ops::add(&ca, &cb).unwrap(),
            t,
        );
        let (mut ga2, mut ca2) = (ga.try_clone().unwrap(), ca.try_clone().unwrap());
        ops::add_inplace(&mut ga2, &gb).unwrap();
        ops::add_inplace(&mut ca2, &cb).unwrap();
        check("add_inplace", dtype, &ga2, &ca2, t);
        ops::scale_inplace(&mut ga2, -0.37).unwrap();
        ops::scale_inplace(&mut ca2, -0.37).unwrap();
        check("scale_inplace", dtype, &ga2, &ca2, t);
        ops::fill_inplace(&mut ga2, 1.5).unwrap();
        ops::fill_inplace(&mut ca2, 1.5).unwrap();
        check("fill_inplace", dtype, &ga2, &ca2, 0.0);
    }
}

#[test]
fn cuda_gather_and_scatter_rows_match_cpu() {
    let Some(dev) = gpu() else { return };
    let (r, c, n) = (1001, 257, 333);
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        let seed = 20 + 4 * k as u64;
        let table = draw(r * c, seed, dtype, 1.0);
        // Ids from a small range so that rows repeat and scatter-add must accumulate.
        let mut idx = rand_ids_vec(n, 97, seed + 1);
        idx[0] = (r - 1) as u32;
        let got = ops::gather_rows(&gpu_t(&table, &[r, c], &dev, dtype), &ids(&idx, &dev)).unwrap();
        let want = ops::gather_rows(&cpu_t(&table, &[r, c]), &ids(&idx, &CPU)).unwrap();
        check("gather_rows", dtype, &got, &want, 0.0);

        let src = draw(n * c, seed + 2, dtype, 1.0);
        let dst0 = draw(r * c, seed + 3, DType::F32, 1.0);
        let mut gd = Tensor::from_f32(dst0.clone(), &[r, c], &dev).unwrap();
        let mut cd = cpu_t(&dst0, &[r, c]);
        ops::scatter_add_rows(
            &mut gd,
            &ids(&idx, &dev),
            &gpu_t(&src, &[n, c], &dev, dtype),
        )
        .unwrap();
        ops::scatter_add_rows(&mut cd, &ids(&idx, &CPU), &cpu_t(&src, &[n, c])).unwrap();
        // f32 atomics add repeated rows in another order: a reduction's tolerance.
        check("scatter_add_rows", dtype, &gd, &cd, tol(DType::F32, true));

        let bad = ids(&[0, r as u32], &dev);
        let err = ops::gather_rows(&gpu_t(&table, &[r, c], &dev, dtype), &bad).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

#[test]
fn cuda_linear_forward_and_backward_match_cpu() {
    let Some(dev) = gpu() else { return };
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        for (case, &(n, i, o, bias)) in [
            (67, 129, 95, true),
            (517, 1031, 769, false),
            (1, 3, 5, true),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 + 10 * (k * 3 + case) as u64;
            let x = draw(n * i, seed, dtype, 1.0);
            let w = draw(o * i, seed + 1, dtype, 0.1);
            let b = draw(o, seed + 2, dtype, 1.0);
            let dy = draw(n * o, seed + 3, dtype, 1.0);
            let dw0 = draw(o * i, seed + 4, DType::F32, 1.0);
            let db0 = draw(o, seed + 5, DType::F32, 1.0);
            let (gx, gw, gb) = (
                gpu_t(&x, &[n, i], &dev, dtype),
                gpu_t(&w, &[o, i], &dev, dtype),
                gpu_t(&b, &[o], &dev, dtype),
            );
            let (cx, cw, cb) = (cpu_t(&x, &[n, i]), cpu_t(&w, &[o, i]), cpu_t(&b, &[o]));
            let name = format!("linear {n}x{i}->{o}");
            let got = ops::linear(&gx, &gw, bias.then_some(&gb)).unwrap();
            let want = ops::linear(&cx, &cw, bias.then_some(&cb)).unwrap();
            check(&format!("{name} y"), dtype, &got, &want, tol(dtype, true));

            let mut gdw = Tensor::from_f32(dw0.clone(), &[o, i], &dev).unwrap();
            let mut gdb = Tensor::from_f32(db0.clone(), &[o], &dev).unwrap();
            let (mut cdw, mut cdb) = (cpu_t(&dw0, &[o, i]), cpu_t(&db0, &[o]));
            let gdx = ops::linear_backward(
                &gpu_t(&dy, &[n, o], &dev, dtype),
                &gx,
                &gw,
                &mut gdw,
                bias.then_some(&mut gdb),
                ops::GradStore::Add,
            )
            .unwrap();
            let cdx = ops::linear_backward(
                &cpu_t(&dy, &[n, o]),
                &cx,
                &cw,
                &mut cdw,
                bias.then_some(&mut cdb),
                ops::GradStore::Add,
            )
            .unwrap();
            check(&format!("{name} dx"), dtype, &gdx, &cdx, tol(dtype, true));
            // dw and db are f32 accumulators: f32 tolerance even for bf16 operands (the products
            // of bf16 values are exact in f32; only the summation order differs).
            check(
                &format!("{name} dw (+=)"),
                dtype,
                &gdw,
                &cdw,
                tol(DType::F32, true),
            );
            if bias {
                check(
                    &format!("{name} db (+=)"),
                    dtype,
                    &gdb,
                    &cdb,
                    tol(DType::F32, true),
                );
            }
        }
    }
}

#[test]
fn cuda_rmsnorm_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        // C = 896 (and 4096) take the warp-per-row kernels, 897 and 7 the block-per-row ones.
        for (case, &(n, c)) in [(1100, 897), (5, 4096), (3, 7), (300, 896)]
            .iter()
            .enumerate()
        {
            let seed = 200 + 10 * (k * 4 + case) as u64;
            let x = draw(n * c, seed, dtype, 2.0);
            let w = draw(c, seed + 1, dtype, 1.0);
            let dy = draw(n * c, seed + 2, dtype, 1.0);
            let eps = 1e-6;
            let (gx, gw) = (
                gpu_t(&x, &[n, c], &dev, dtype),
                gpu_t(&w, &[c], &dev, dtype),
            );
            let (cx, cw) = (cpu_t(&x, &[n, c]), cpu_t(&w, &[c]));
            let (gy, grstd) = ops::rmsnorm(&gx, &gw, eps).unwrap();
            let (cy, crstd) = ops::rmsnorm(&cx, &cw, eps).unwrap();
            let name = format!("rmsnorm {n}x{c}");
            check(&format!("{name} y"), dtype, &gy, &cy, tol(dtype, true));
            check(
                &format!("{name} rstd"),
                dtype,
                &grstd,
                &crstd,
                tol(DType::F32, true),
            );
            let (gdx, gdw) =
                ops::rmsnorm_backward(&gpu_t(&dy, &[n, c], &dev, dtype), &gx, &gw, &grstd).unwrap();
            let (cdx, cdw) = ops::rmsnorm_backward(&cpu_t(&dy, &[n, c]), &cx, &cw, &crstd).unwrap();
            check(&format!("{name} dx"), dtype, &gdx, &cdx, tol(dtype, true));
            check(
                &format!("{name} dw"),
                dtype,
                &gdw,
                &cdw,
                tol(DType::F32, true),
            );
        }
    }
}

#[test]
fn cuda_rope_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        for (case, &(n, h, d, theta, max_pos)) in [
            (77, 5, 64, 10_000.0f32, 4096u32),
            (33, 2, 128, 1e6, 32_768),
            (9, 3, 6, 500.0, 50),
        ]
        .iter()
        .enumerate()
        {
            let seed = 300 + 10 * (k * 3 + case) as u64;
            let x = draw(n * h * d, seed, dtype, 1.0);
            let pos = rand_ids_vec(n, max_pos, seed + 1);
            let name = format!("rope {n}x{h}x{d} theta {theta}");
            let got =
                ops::rope(&gpu_t(&x, &[n, h, d], &dev, dtype), &ids(&pos, &dev), theta).unwrap();
            let want = ops::rope(&cpu_t(&x, &[n, h, d]), &ids(&pos, &CPU), theta).unwrap();
            check(
                &format!("{name} fwd"),
                dtype,
                &got,
                &want,
                tol(dtype, false),
            );
            let got =
                ops::rope_backward(&gpu_t(&x, &[n, h, d], &dev, dtype), &ids(&pos, &dev), theta)
                    .unwrap();
            let want = ops::rope_backward(&cpu_t(&x, &[n, h, d]), &ids(&pos, &CPU), theta).unwrap();
            check(
                &format!("{name} bwd"),
                dtype,
                &got,
                &want,
                tol(dtype, false),
            );
        }
    }
}

#[test]
fn cuda_swiglu_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let (n, f) = (301, 1111);
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        let seed = 400 + 10 * k as u64;
        let (g, u, dh) = (
            draw(n * f, seed, dtype, 3.0),
            draw(n * f, seed + 1, dtype, 1.0),
            draw(n * f, seed + 2, dtype, 1.0),
        );
        let (gg, gu) = (
            gpu_t(&g, &[n, f], &dev, dtype),
            gpu_t(&u, &[n, f], &dev, dtype),
        );
        let (cg, cu) = (cpu_t(&g, &[n, f]), cpu_t(&u, &[n, f]));
        let t = tol(dtype, false);
        check(
            "swiglu h",
            dtype,
            &ops::swiglu(&gg, &gu).unwrap(),
            &ops::swiglu(&cg, &cu).unwrap(),
            t,
        );
        let (gdg, gdu) = ops::swiglu_backward(&gpu_t(&dh, &[n, f], &dev, dtype), &gg, &gu).unwrap();
        let (cdg, cdu) = ops::swiglu_backward(&cpu_t(&dh, &[n, f]), &cg, &cu).unwrap();
        check("swiglu dgate", dtype, &gdg, &cdg, t);
        check("swiglu dup", dtype, &gdu, &cdu, t);
    }
}

/// One attention problem: random inputs representable in `dtype` on the GPU, and the CPU f32
/// reference forward and backward. The backward runs from the CPU forward's out (rounded to
/// `dtype`) and lse, so that only the backward is compared.
struct AttentionCase {
    name: String,
    dtype: DType,
    scale: f32,
    /// GPU q, k, v, dout, cu_seqlens, and the reference out and lse.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    cu: Tensor,
    out_ref: Tensor,
    lse_ref: Tensor,
    /// CPU out, lse, dq, dk, dv.
    want: [Tensor; 5],
}

impl AttentionCase {
    fn new(
        dev: &Device,
        cu_seqlens: &[u32],
        (h, kh, d): (usize, usize, usize),
        dtype: DType,
        seed: u64,
    ) -> AttentionCase {
        let n = *cu_seqlens.last().unwrap() as usize;
        let scale = 1.0 / (d as f32).sqrt();
        let q = draw(n * h * d, seed, dtype, 1.0);
        let kk = draw(n * kh * d, seed + 1, dtype, 1.0);
        let v = draw(n * kh * d, seed + 2, dtype, 1.0);
        let dout = draw(n * h * d, seed + 3, dtype, 1.0);
        let (cq, ck, cv) = (
            cpu_t(&q, &[n, h, d]),
            cpu_t(&kk, &[n, kh, d]),
            cpu_t(&v, &[n, kh, d]),
        );
        let ccu = ids(cu_seqlens, &CPU);
        let (cout, clse) = ops::attention(&cq, &ck, &cv, &ccu, scale).unwrap();
        let couts = cpu_t(&representable(host(&cout), dtype), &[n, h, d]);
        let (cdq, cdk, cdv) = ops::attention_backward(
            &cpu_t(&dout, &[n, h, d]),
            &cq,
            &ck,
            &cv,
            &couts,
            &clse,
            &ccu,
            scale,
        )
        .unwrap();
        AttentionCase {
            name: format!("H{h} K{kh} D{d}"),
            dtype,
            scale,
            q: gpu_t(&q, &[n, h, d], dev, dtype),
            k: gpu_t(&kk, &[n, kh, d], dev, dtype),
            v: gpu_t(&v, &[n, kh, d], dev, dtype),
            dout: gpu_t(&dout, &[n, h, d], dev, dtype),
            cu: ids(cu_seqlens, dev),
            out_ref: gpu_t(&host(&cout), &[n, h, d], dev, dtype),
            lse_ref: Tensor::from_f32(host(&clse), &[n, h], dev).unwrap(),
            want: [cout, clse, cdq, cdk, cdv],
        }
    }

    /// Checks a GPU forward (out, lse) and backward (dq, dk, dv) against the reference.
    fn check(
        &self,
        label: &str,
        (out, lse): (Tensor, Tensor),
        (dq, dk, dv): (Tensor, Tensor, Tensor),
    ) {
        let dtype = self.dtype;
        let name = format!("attention {label}{}", self.name);
        let [cout, clse, cdq, cdk, cdv] = &self.want;
        check(&format!("{name} out"), dtype, &out, cout, tol(dtype, true));
        check(
            &format!("{name} lse"),
            dtype,
            &lse,
            clse,
            tol(DType::F32, true),
        );
        check(&format!("{name} dq"), dtype, &dq, cdq, tol(dtype, true));
        check(&format!("{name} dk"), dtype, &dk, cdk, tol(dtype, true));
        check(&format!("{name} dv"), dtype, &dv, cdv, tol(dtype, true));
    }
}

#[test]
fn cuda_attention_matches_cpu() {
    let Some(dev) = gpu() else { return };
    // Sequences crossing tile edges (32 / 64), one of length 1, one empty.
    let cu_seqlens: Vec<u32> = vec![0, 1, 71, 71, 200, 233, 300];
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        for (case, &shape) in [
            (6, 2, 64),
            (14, 2, 64),
            (4, 4, 128),
            (3, 1, 24),
            (2, 1, 256),
        ]
        .iter()
        .enumerate()
        {
            let c = AttentionCase::new(
                &dev,
                &cu_seqlens,
                shape,
                dtype,
                500 + 10 * (k * 4 + case) as u64,
            );
            let fwd = ops::attention(&c.q, &c.k, &c.v, &c.cu, c.scale).unwrap();
            let bwd = ops::attention_backward(
                &c.dout, &c.q, &c.k, &c.v, &c.out_ref, &c.lse_ref, &c.cu, c.scale,
            )
            .unwrap();
            c.check("", fwd, bwd);
        }
    }
}

/// Every tensor-core tile variant (tile shapes, register caps, block order, split dq, pipeline
/// depth) against the CPU f32 reference, bf16, on sequences longer than the largest tiles
/// (several key and query tiles, partial last tiles, lengths 1 and 0) and GQA groups of 7 and 1.
#[test]
fn cuda_attention_variants_match_cpu() {
    let Some(dev) = gpu() else { return };
    let cu_seqlens: Vec<u32> = vec![0, 300, 301, 301, 557, 620];
    for (case, &shape) in [(14, 2, 64), (4, 4, 128), (2, 2, 32)].iter().enumerate() {
        let c = AttentionCase::new(
            &dev,
            &cu_seqlens,
            shape,
            DType::BF16,
            900 + 10 * case as u64,
        );
        for (label, cfg) in FaConfig::candidates() {
            let fwd = attention_with(&cfg, &c.q, &c.k, &c.v, &c.cu, c.scale).unwrap();
            let bwd = attention_backward_with(
                &cfg, &c.dout, &c.q, &c.k, &c.v, &c.out_ref, &c.lse_ref, &c.cu, c.scale, None,
            )
            .unwrap();
            c.check(&format!("{label} "), fwd, bwd);
        }
    }
}

/// `FaConfig::lean` changes how tiles reach shared memory, not the arithmetic: the forward (out,
/// lse) and the split dq kernel give the same bits as without it; dk and dv (and the fused dq)
/// sum GQA heads with f32 atomics in no fixed order, so they agree to rounding.
#[test]
fn cuda_attention_lean_gives_the_same_bits() {
    let Some(dev) = gpu() else { return };
    let cu_seqlens: Vec<u32> = vec![0, 300, 301, 301, 557, 620];
    for (case, &shape) in [(14, 2, 64), (4, 4, 128), (2, 2, 32)].iter().enumerate() {
        let c = AttentionCase::new(&dev, &cu_seqlens, shape, DType::BF16, 950 + case as u64);
        for cfg in [FaConfig::BASELINE, FaConfig::FASTEST_D64] {
            let plain = FaConfig { lean: false, ..cfg };
            let lean = FaConfig { lean: true, ..cfg };
            let run = |cfg: &FaConfig| {
                let (out, lse) = attention_with(cfg, &c.q, &c.k, &c.v, &c.cu, c.scale).unwrap();
                let (dq, dk, dv) = attention_backward_with(
                    cfg, &c.dout, &c.q, &c.k, &c.v, &c.out_ref, &c.lse_ref, &c.cu, c.scale, None,
                )
                .unwrap();
                [out, lse, dq, dk, dv].map(|t| host(&t))
            };
            let (a, b) = (run(&plain), run(&lean));
            let names = ["out", "lse", "dq", "dk", "dv"];
            for (i, name) in names.iter().enumerate() {
                let what = format!("{} lean vs plain {name} ({:?})", c.name, plain.split_dq);
                let exact = i < 2 || (i == 2 && plain.split_dq);
                if exact {
                    let same = a[i]
                        .iter()
                        .zip(&b[i])
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{what}: not the same bits");
                } else {
                    let rel = rel_err(&b[i], &a[i]);
                    println!("{what}: rel_err {rel:.3e}");
                    // A flipped bf16 rounding here and there (1 ulp = 0.4%) stays far below 1e-3.
                    assert!(rel <= 1e-3, "{what}: relative error {rel:.3e}");
                }
            }
        }
    }
}

#[test]
fn cuda_logsoftmax_gather_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        for (case, &(n, v, inv_temp)) in [(37, 5003, 1.0 / 0.7f32), (4, 151_936, 1.0), (3, 1, 2.0)]
            .iter()
            .enumerate()
        {
            let seed = 600 + 10 * (k * 3 + case) as u64;
            let logits = draw(n * v, seed, dtype, 3.0);
            let mut targets = rand_ids_vec(n, v as u32, seed + 1);
            targets[n - 1] = ops::NO_TARGET;
            let dlp = draw(n, seed + 2, DType::F32, 1.0);
            let dent = draw(n, seed + 3, DType::F32, 1.0);
            let gl = gpu_t(&logits, &[n, v], &dev, dtype);
            let cl = cpu_t(&logits, &[n, v]);
            let name = format!("logsoftmax_gather {n}x{v}");
            let (glp, gent, glse) =
                ops::logsoftmax_gather(&gl, &ids(&targets, &dev), inv_temp).unwrap();
            let (clp, cent, clse) =
                ops::logsoftmax_gather(&cl, &ids(&targets, &CPU), inv_temp).unwrap();
            // The outputs are f32 from identical inputs whatever the logits' dtype.
            let t = tol(DType::F32, true);
            check(&format!("{name} logprob"), dtype, &glp, &clp, t);
            check(&format!("{name} entropy"), dtype, &gent, &cent, t);
            check(&format!("{name} lse"), dtype, &glse, &clse, t);
            for with_entropy in [false, true] {
                let gd = ops::logsoftmax_gather_backward(
                    &Tensor::from_f32(dlp.clone(), &[n], &dev).unwrap(),
                    with_entropy
                        .then(|| Tensor::from_f32(dent.clone(), &[n], &dev).unwrap())
                        .as_ref(),
                    &gl,
                    &ids(&targets, &dev),
                    &glse,
                    inv_temp,
                )
                .unwrap();
                let cd = ops::logsoftmax_gather_backward(
                    &cpu_t(&dlp, &[n]),
                    with_entropy.then(|| cpu_t(&dent, &[n])).as_ref(),
                    &cl,
                    &ids(&targets, &CPU),
                    &clse,
                    inv_temp,
                )
                .unwrap();
                let what = if with_entropy {
                    "dlogits (+entropy)"
                } else {
                    "dlogits"
                };
                check(&format!("{name} {what}"), dtype, &gd, &cd, tol(dtype, true));
            }
        }
        let bad = ids(&[7, 0], &dev);
        let err = ops::logsoftmax_gather(&gpu_t(&[0.0; 10], &[2, 5], &dev, dtype), &bad, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

#[test]
fn cuda_sum_squares_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for (k, dtype) in DTYPES.into_iter().enumerate() {
        for n in [1usize, 1000, 3_000_017] {
            let x = draw(n, 700 + k as u64 + n as u64, dtype, 1.0);
            let got = ops::sum_squares(&gpu_t(&x, &[n], &dev, dtype)).unwrap();
            let want = ops::sum_squares(&cpu_t(&x, &[n])).unwrap();
            let rel = (got - want).abs() / want;
            println!("cuda-vs-cpu sum_squares n={n} [{dtype}]: rel_err {rel:.3e}");
            assert!(rel < 1e-9, "sum_squares n={n} [{dtype}]: {got} vs {want}");
        }
    }
}

#[test]
fn cuda_adamw_matches_cpu_over_several_steps() {
    let Some(dev) = gpu() else { return };
    let n = 100_003;
    for (case, b1) in [(0u64, 0.9), (1, 0.3)] {
        let p0 = draw(n, 800 + case, DType::F32, 1.0);
        let mut gp = Tensor::from_f32(p0.clone(), &[n], &dev).unwrap();
        let mut cp = cpu_t(&p0, &[n]);
        let mut gm = Tensor::zeros(&[n], DType::F32, &dev).unwrap();
        let mut gv = Tensor::zeros(&[n], DType::F32, &dev).unwrap();
        let mut cm = Tensor::zeros(&[n], DType::F32, &CPU).unwrap();
        let mut cv = Tensor::zeros(&[n], DType::F32, &CPU).unwrap();
        let mut gw = Tensor::zeros(&[n], DType::BF16, &dev).unwrap();
        let mut cw = Tensor::zeros(&[n], DType::BF16, &CPU).unwrap();
        for step in 1..=4u64 {
            let g = draw(n, 900 + 10 * case + step, DType::F32, 1.0);
            let params = ops::AdamWParams {
                lr: 3e-2,
                beta1: b1,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
            };
            let gg = Tensor::from_f32(g.clone(), &[n], &dev).unwrap();
            ops::adamw_step(&mut gp, &gg, &mut gm, &mut gv, &params, Some(&mut gw)).unwrap();
            ops::adamw_step(
                &mut cp,
                &cpu_t(&g, &[n]),
                &mut cm,
                &mut cv,
                &params,
                Some(&mut cw),
            )
            .unwrap();
        }
        let t = tol(DType::F32, false);
        check(&format!("adamw beta1={b1} master"), DType::F32, &gp, &cp, t);
        check(&format!("adamw beta1={b1} m"), DType::F32, &gm, &cm, t);
        check(&format!("adamw beta1={b1} v"), DType::F32, &gv, &cv, t);
        check(
            &format!("adamw beta1={b1} working"),
            DType::BF16,
            &gw,
            &cw,
            tol(DType::BF16, false),
        );
    }
}

/// N = 0 (an empty micro-batch) works on the GPU for every op, as on the CPU: no zero-sized
/// launch or allocation error, outputs of the right (empty) shape, accumulators untouched.
#[test]
fn cuda_ops_accept_zero_tokens() {
    let Some(dev) = gpu() else { return };
    for dtype in DTYPES {
        let z = |shape: &[usize], dt: DType| Tensor::zeros(shape, dt, &dev).unwrap();
        let no_ids = Tensor::from_u32(vec![], &[0], &dev).unwrap();
        let (x, w) = (z(&[0, 13], dtype), z(&[11, 13], dtype));
        assert_eq!(ops::linear(&x, &w, None).unwrap().shape(), &[0, 11]);
        let mut dw = Tensor::from_f32(vec![1.0; 11 * 13], &[11, 13], &dev).unwrap();
        let dx = ops::linear_backward(
            &z(&[0, 11], dtype),
            &x,
            &w,
            &mut dw,
            None,
            ops::GradStore::Add,
        )
        .unwrap();
        assert_eq!(dx.shape(), &[0, 13]);
        assert!(
            host(&dw).iter().all(|&g| g == 1.0),
            "dw must be left as it was"
        );
        assert_eq!(ops::gather_rows(&w, &no_ids).unwrap().shape(), &[0, 13]);
        ops::scatter_add_rows(&mut dw, &no_ids, &x).unwrap();
        let (y, rstd) = ops::rmsnorm(&x, &z(&[13], dtype), 1e-5).unwrap();
        assert_eq!((y.shape(), rstd.shape()), (&[0, 13][..], &[0][..]));
        let (_, dwn) = ops::rmsnorm_backward(&x, &x, &z(&[13], dtype), &rstd).unwrap();
        assert!(host(&dwn).iter().all(|&g| g == 0.0));
        ops::rope(&z(&[0, 2, 8], dtype), &no_ids, 1e4).unwrap();
        ops::swiglu(&x, &x).unwrap();
        ops::swiglu_backward(&x, &x, &x).unwrap();
        let cu = Tensor::from_u32(vec![0], &[1], &dev).unwrap();
        let (q, kv) = (z(&[0, 6, 16], dtype), z(&[0, 2, 16], dtype));
        let (out, lse) = ops::attention(&q, &kv, &kv, &cu, 1.0).unwrap();
        let (dq, dk, _) =
            ops::attention_backward(&out, &q, &kv, &kv, &out, &lse, &cu, 1.0).unwrap();
        assert_eq!((dq.shape(), dk.shape()), (&[0, 6, 16][..], &[0, 2, 16][..]));
        let logits = z(&[0, 37], dtype);
        let (_, _, lse) = ops::logsoftmax_gather(&logits, &no_ids, 1.0).unwrap();
        ops::logsoftmax_gather_backward(&z(&[0], DType::F32), None, &logits, &no_ids, &lse, 1.0)
            .unwrap();
        assert_eq!(ops::sum_squares(&x).unwrap(), 0.0);
        assert_eq!(ops::cast(&x, DType::F32).unwrap().shape(), &[0, 13]);
        let mut e = z(&[0], dtype);
        ops::add_inplace(&mut e, &z(&[0], dtype)).unwrap();
        ops::scale_inplace(&mut e, 2.0).unwrap();
    }
    // AdamW over an empty parameter.
    let z = |dt: DType| Tensor::zeros(&[0], dt, &dev).unwrap();
    let (mut p, mut m, mut v) = (z(DType::F32), z(DType::F32), z(DType::F32));
    let params = ops::AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    ops::adamw_step(&mut p, &z(DType::F32), &mut m, &mut v, &params, None).unwrap();
}

/// `adamw_step_many` (one launch, gradients scaled in place) against the CPU's per-parameter
/// path, over parameters of sizes around the kernel's 8192-element blocks, one of them empty, one
/// without a working copy.
#[test]
fn cuda_adamw_many_matches_cpu() {
    let Some(dev) = gpu() else { return };
    let sizes = [1usize, 8191, 8192, 8193, 0, 70_001, 5];
    let mk = |d: &Device, data: &[f32], n: usize| Tensor::from_f32(data.to_vec(), &[n], d).unwrap();
    // Per device: master, grad, m, v, working.
    let mut state: Vec<Vec<[Tensor; 5]>> = [dev.clone(), CPU]
        .iter()
        .map(|d| {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let p = draw(n, 1000 + i as u64, DType::F32, 1.0);
                    let z = vec![0.0; n];
                    [
                        mk(d, &p, n),
                        mk(d, &z, n),
                        mk(d, &z, n),
                        mk(d, &z, n),
                        Tensor::zeros(&[n], DType::BF16, d).unwrap(),
                    ]
                })
                .collect()
        })
        .collect();
    for step in 1..=3u64 {
        for per_dev in state.iter_mut() {
            let d = per_dev[0][0].device().clone();
            let mut items = vec![];
            for (i, t) in per_dev.iter_mut().enumerate() {
                let n = sizes[i];
                t[1] = mk(
                    &d,
                    &draw(n, 2000 + 10 * step + i as u64, DType::F32, 1.0),
                    n,
                );
                let [master, grad, m, v, w] = t;
                items.push(ops::AdamWItem {
                    master,
                    grad,
                    m,
                    v,
                    working: (i != 3).then_some(w),
                    weight_decay: if i % 2 == 0 { 0.1 } else { 0.0 },
                });
            }
            let params = ops::AdamWParams {
                lr: 3e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 123.0, // ignored: each item has its own
                step,
            };
            let clip = if step == 2 { 1.0 } else { 0.37 };
            ops::adamw_step_many(&mut items, &params, clip).unwrap();
        }
    }
    for (i, (g, c)) in state[0].iter().zip(&state[1]).enumerate() {
        if sizes[i] == 0 {
            continue;
        }
        for (k, what) in ["master", "grad (scaled)", "m", "v"].iter().enumerate() {
            let name = format!("adamw_many param {i} {what}");
            check(&name, DType::F32, &g[k], &c[k], tol(DType::F32, false));
        }
        if i != 3 {
            check(
                &format!("adamw_many param {i} working"),
                DType::BF16,
                &g[4],
                &c[4],
                tol(DType::BF16, false),
            );
        }
    }
}

/// `sum_squares_each` equals `sum_squares` per tensor.
#[test]
fn cuda_sum_squares_each_matches_one_by_one() {
    let Some(dev) = gpu() else { return };
    let xs: Vec<Tensor> = [5usize, 0, 3_000_017, 896]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            gpu_t(
                &draw(n, 3000 + i as u64, DType::F32, 1.0),
                &[n],
                &dev,
                DType::F32,
            )
        })
        .collect();
    let refs: Vec<&Tensor> = xs.iter().collect();
    let each = ops::sum_squares_each(&refs).unwrap();
    assert_eq!(each.len(), xs.len());
    for (x, got) in xs.iter().zip(each) {
        let want = ops::sum_squares(x).unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "sum_squares_each {got} vs sum_squares {want}"
        );
    }
}

/// `fill_many` over f32 tensors of sizes around its 8192-element blocks sets every element.
#[test]
fn cuda_fill_many_sets_every_element() {
    let Some(dev) = gpu() else { return };
    let sizes = [3usize, 0, 8191, 8192, 8193, 100_003];
    let mut xs: Vec<Tensor> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            gpu_t(
                &draw(n, 4000 + i as u64, DType::F32, 1.0),
                &[n],
                &dev,
                DType::F32,
            )
        })
        .collect();
    let mut refs: Vec<&mut Tensor> = xs.iter_mut().collect();
    ops::fill_many(&mut refs, 0.0).unwrap();
    for (x, n) in xs.iter().zip(sizes) {
        assert_eq!(host(x), vec![0.0; n], "fill_many of a {n}-element tensor");
    }
}
