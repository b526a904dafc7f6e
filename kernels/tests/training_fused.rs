//! The fused ops of the training step (the residual add + norm is `add_rmsnorm`, tested in
//! fused_ops.rs): `bias_cast`, `rope_bias` (bias add + rotary, rounded once), and the accumulating backwards `linear_backward_acc` and
//! `rmsnorm_backward_acc` (and its out-of-place form `rmsnorm_backward_acc_from`, which must give
//! the same bits). `rmsnorm_backward_acc` (the norm's dx added onto a residual gradient, dw onto a running
//! gradient) against `rmsnorm_backward` followed by the two adds: on the CPU exactly, and the CUDA
//! op against the CPU (f32 and bf16; C a multiple of 8, the warp-per-row kernel, and not).
//! `attention_backward_rope` (the RoPE backward fused into the attention backward's dq, dk
//! stores) against `attention_backward` followed by `rope_backward` of dq and dk.
//!
//! Without a GPU the CUDA test prints "skipped: no GPU" and passes; with `REALIGN_REQUIRE_GPU=1`
//! a missing GPU fails.

use half::bf16;
use kernels::testing::{randn_vec, rel_err, test_devices, test_dtypes};
use kernels::{ops, DType, Device, Tensor};

const CPU: Device = Device::Cpu;

fn t(data: &[f32], shape: &[usize], dev: &Device, dtype: DType) -> Tensor {
    let x = Tensor::from_f32(data.to_vec(), shape, dev).unwrap();
    if dtype == DType::F32 {
        x
    } else {
        ops::cast(&x, dtype).unwrap()
    }
}

fn bf16_exact(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
}

/// (d_res after, dw after) of the accumulating op on `dev` in `dtype`.
fn run_acc(n: usize, c: usize, seed: u64, dev: &Device, dtype: DType) -> (Vec<f32>, Vec<f32>) {
    let (x, dy, w) = (
        bf16_exact(randn_vec(n * c, seed)),
        bf16_exact(randn_vec(n * c, seed + 1)),
        bf16_exact(randn_vec(c, seed + 2)),
    );
    let res0 = bf16_exact(randn_vec(n * c, seed + 3));
    let dw0 = randn_vec(c, seed + 4);
    let (xt, wt) = (t(&x, &[n, c], dev, dtype), t(&w, &[c], dev, dtype));
    let (_, rstd) = ops::rmsnorm(&xt, &wt, 1e-6).unwrap();
    let mut d_res = t(&res0, &[n, c], dev, dtype);
    let mut dw = Tensor::from_f32(dw0, &[c], dev).unwrap();
    let dyt = t(&dy, &[n, c], dev, dtype);
    ops::rmsnorm_backward_acc(&dyt, &xt, &wt, &rstd, &mut d_res, &mut dw).unwrap();
    (d_res.to_vec_f32().unwrap(), dw.to_vec_f32().unwrap())
}

/// The same from the plain backward and two adds, on the CPU.
fn reference(n: usize, c: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (x, dy, w) = (
        bf16_exact(randn_vec(n * c, seed)),
        bf16_exact(randn_vec(n * c, seed + 1)),
        bf16_exact(randn_vec(c, seed + 2)),
    );
    let res0 = bf16_exact(randn_vec(n * c, seed + 3));
    let dw0 = randn_vec(c, seed + 4);
    let (xt, wt) = (
        t(&x, &[n, c], &CPU, DType::F32),
        t(&w, &[c], &CPU, DType::F32),
    );
    let (_, rstd) = ops::rmsnorm(&xt, &wt, 1e-6).unwrap();
    let (dx, g) =
        ops::rmsnorm_backward(&t(&dy, &[n, c], &CPU, DType::F32), &xt, &wt, &rstd).unwrap();
    let dx = dx.to_vec_f32().unwrap();
    let g = g.to_vec_f32().unwrap();
    (
        res0.iter().zip(&dx).map(|(a, b)| a + b).collect(),
        dw0.iter().zip(&g).map(|(a, b)| a + b).collect(),
    )
}

const SHAPES: [(usize, usize); 3] = [(37, 64), (5, 52), (1, 896)];

#[test]
fn cpu_acc_is_backward_plus_adds() {
    for (i, &(n, c)) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let got = run_acc(n, c, seed, &CPU, DType::F32);
        let want = reference(n, c, seed);
        assert_eq!(got, want, "rmsnorm_backward_acc {n}x{c} on the CPU");
    }
}

#[test]
fn cuda_acc_matches_cpu() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    for (i, &(n, c)) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let want = reference(n, c, seed);
        for dtype in [DType::F32, DType::BF16] {
            let got = run_acc(n, c, seed, &dev, dtype);
            let (e_res, e_dw) = (rel_err(&got.0, &want.0), rel_err(&got.1, &want.1));
            println!("rmsnorm_backward_acc {n}x{c} [{dtype}]: d_res {e_res:.3e}, dw {e_dw:.3e}");
            // bf16: one rounding of the sum; dw is f32 either way (sums in another order).
            let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
            assert!(e_res <= tol, "{n}x{c} [{dtype}] d_res rel_err {e_res:.3e}");
            assert!(e_dw <= 1e-4, "{n}x{c} [{dtype}] dw rel_err {e_dw:.3e}");
        }
    }
}

/// `linear_backward_acc` against `linear_backward` + `add_inplace` (with a bias gradient).
fn linear_acc(dev: &Device, dtype: DType, n: usize, i: usize, o: usize) -> [Vec<f32>; 3] {
    let seed = 7 + (n * i * o) as u64;
    let x = t(&bf16_exact(randn_vec(n * i, seed)), &[n, i], dev, dtype);
    let w = t(&bf16_exact(randn_vec(o * i, seed + 1)), &[o, i], dev, dtype);
    let dy = t(&bf16_exact(randn_vec(n * o, seed + 2)), &[n, o], dev, dtype);
    let mut acc = t(&bf16_exact(randn_vec(n * i, seed + 3)), &[n, i], dev, dtype);
    let mut dw = Tensor::from_f32(randn_vec(o * i, seed + 4), &[o, i], dev).unwrap();
    let mut db = Tensor::from_f32(randn_vec(o, seed + 5), &[o], dev).unwrap();
    ops::linear_backward_acc(
        &dy,
        &x,
        &w,
        &mut dw,
        Some(&mut db),
        ops::GradStore::Add,
        &mut acc,
    )
    .unwrap();
    [acc, dw, db].map(|t| t.to_vec_f32().unwrap())
}

fn linear_reference(n: usize, i: usize, o: usize) -> [Vec<f32>; 3] {
    let seed = 7 + (n * i * o) as u64;
    let f = DType::F32;
    let x = t(&bf16_exact(randn_vec(n * i, seed)), &[n, i], &CPU, f);
    let w = t(&bf16_exact(randn_vec(o * i, seed + 1)), &[o, i], &CPU, f);
    let dy = t(&bf16_exact(randn_vec(n * o, seed + 2)), &[n, o], &CPU, f);
    let mut acc = t(&bf16_exact(randn_vec(n * i, seed + 3)), &[n, i], &CPU, f);
    let mut dw = Tensor::from_f32(randn_vec(o * i, seed + 4), &[o, i], &CPU).unwrap();
    let mut db = Tensor::from_f32(randn_vec(o, seed + 5), &[o], &CPU).unwrap();
    let dx =
        ops::linear_backward(&dy, &x, &w, &mut dw, Some(&mut db), ops::GradStore::Add).unwrap();
    ops::add_inplace(&mut acc, &dx).unwrap();
    [acc, dw, db].map(|t| t.to_vec_f32().unwrap())
}

const LINEAR_SHAPES: [(usize, usize, usize); 2] = [(33, 40, 24), (8, 64, 128)];

#[test]
fn cpu_linear_acc_is_backward_plus_add() {
    for &(n, i, o) in &LINEAR_SHAPES {
        assert_eq!(
            linear_acc(&CPU, DType::F32, n, i, o),
            linear_reference(n, i, o),
            "linear_backward_acc {n}x{i}x{o} on the CPU"
        );
    }
}

#[test]
fn cuda_linear_acc_matches_cpu() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    for &(n, i, o) in &LINEAR_SHAPES {
        let want = linear_reference(n, i, o);
        for dtype in [DType::F32, DType::BF16] {
            let got = linear_acc(&dev, dtype, n, i, o);
            for (k, name) in ["dx_acc", "dw", "db"].iter().enumerate() {
                let e = rel_err(&got[k], &want[k]);
                println!("linear_backward_acc {n}x{i}x{o} [{dtype}] {name}: rel_err {e:.3e}");
                // bf16: dx is rounded to bf16 twice (product, then sum); dw and db are f32.
                let tol = match (dtype, k) {
                    (DType::F32, _) => 1e-5,
                    (_, 0) => 1e-2,
                    _ => 1e-4,
                };
                assert!(e <= tol, "{n}x{i}x{o} [{dtype}] {name}: rel_err {e:.3e}");
            }
        }
    }
}

/// `linear_out(.., F32)` + `bias_cast` against `linear` with a bias (bf16 on the GPU: one rounding
/// of the f32 sum either way; f32 on every device).
#[test]
fn linear_then_bias_cast_matches_linear_with_bias() {
    for dev in test_devices() {
        let dtypes = if dev.is_cuda() {
            vec![DType::F32, DType::BF16]
        } else {
            vec![DType::F32]
        };
        for dtype in dtypes {
            for (n, i, o) in [(33, 40, 24), (7, 64, 13)] {
                let seed = 1300 + (n * i * o) as u64;
                let x = t(&randn_vec(n * i, seed), &[n, i], &dev, dtype);
                let w = t(&randn_vec(o * i, seed + 1), &[o, i], &dev, dtype);
                let b = t(&randn_vec(o, seed + 2), &[o], &dev, dtype);
                let want = ops::linear(&x, &w, Some(&b)).unwrap().to_vec_f32().unwrap();
                let f32_out = if dtype == DType::F32 {
                    dtype
                } else {
                    DType::F32
                };
                let y = ops::linear::linear_out(&x, &w, None, f32_out).unwrap();
                let got = ops::bias_cast(&y, &b, dtype).unwrap().to_vec_f32().unwrap();
                let e = rel_err(&got, &want);
                println!("bias_cast {n}x{i}x{o} [{dtype}] on {dev}: rel_err {e:.3e}");
                // Same f32 sums; a GEMM kernel chosen for beta = 0 instead of 1 may order the
                // products differently (f32 ulps), which can move a bf16 rounding by one ulp.
                let tol = if dtype == DType::F32 { 1e-6 } else { 4e-3 };
                assert!(
                    e <= tol,
                    "bias_cast {n}x{i}x{o} [{dtype}] on {dev}: {e:.3e}"
                );
            }
        }
    }
}

/// `rope_bias` (bias add + rotation of an f32 GEMM output, rounded once) against the CPU's
/// `rope` of x + b in f32 (bf16-representable bias); D with D/2 % 8 == 0 (8 pairs per thread on
/// the GPU) and not, positions into the thousands.
#[test]
fn rope_bias_matches_bias_then_rope() {
    for dev in test_devices() {
        let dtypes = if dev.is_cuda() {
            vec![DType::F32, DType::BF16]
        } else {
            vec![DType::F32]
        };
        for (n, hx, d) in [(37, 3, 64), (11, 2, 24)] {
            let seed = 1400 + (n * hx * d) as u64;
            let x = randn_vec(n * hx * d, seed);
            let b = bf16_exact(randn_vec(hx * d, seed + 1));
            let pos: Vec<u32> = (0..n as u32).map(|i| (i * 389) % 6000).collect();
            let xb: Vec<f32> = x
                .chunks_exact(hx * d)
                .flat_map(|row| row.iter().zip(&b).map(|(x, b)| x + b))
                .collect();
            let p_cpu = Tensor::from_u32(pos.clone(), &[n], &CPU).unwrap();
            let want = ops::rope(&t(&xb, &[n, hx, d], &CPU, DType::F32), &p_cpu, 1e4)
                .unwrap()
                .to_vec_f32()
                .unwrap();
            for &dtype in &dtypes {
                let xt = t(&x, &[n, hx, d], &dev, DType::F32);
                let bt = t(&b, &[hx * d], &dev, dtype);
                let p = Tensor::from_u32(pos.clone(), &[n], &dev).unwrap();
                let y = ops::rope::rope_bias(&xt, &bt, &p, 1e4, dtype).unwrap();
                assert_eq!((y.shape(), y.dtype()), (&[n, hx, d][..], dtype));
                let e = rel_err(&y.to_vec_f32().unwrap(), &want);
                println!("rope_bias {n}x{hx}x{d} [{dtype}] on {dev}: rel_err {e:.3e}");
                // f32: cos / sin of the same f32 angles (the GPU's from f64, rounded; the
                // tolerance of ops_cuda's rope test); bf16: one rounding of each output.
                let tol = if dtype == DType::F32 { 1e-5 } else { 4e-3 };
                assert!(
                    e <= tol,
                    "rope_bias {n}x{hx}x{d} [{dtype}] on {dev}: {e:.3e}"
                );
            }
        }
    }
    // The CPU holds f32 only; a bias of another length is an error.
    let x = Tensor::zeros(&[2, 2, 4], DType::F32, &CPU).unwrap();
    let p = Tensor::from_u32(vec![0, 1], &[2], &CPU).unwrap();
    let short = Tensor::zeros(&[7], DType::F32, &CPU).unwrap();
    assert!(ops::rope::rope_bias(&x, &short, &p, 1e4, DType::F32).is_err());
}

/// One causal GQA attention backward for the fused-RoPE test, inputs bf16-representable: q, k, v,
/// dout, the CPU forward's out (rounded to bf16, what a bf16 forward would have saved) and lse,
/// sequences crossing tile edges (one of length 1, one empty), positions restarting at each
/// sequence's start plus an offset into the thousands (large angles).
struct AttnRope {
    shape: (usize, usize, usize),
    theta: f32,
    cu: Vec<u32>,
    pos: Vec<u32>,
    /// q, k, v, dout, out, lse.
    data: [Vec<f32>; 6],
}

impl AttnRope {
    fn new((h, kh, d): (usize, usize, usize), theta: f32, seed: u64) -> AttnRope {
        let cu: Vec<u32> = vec![0, 1, 71, 71, 200, 233, 300];
        let n = *cu.last().unwrap() as usize;
        let mut pos = vec![0u32; n];
        for (s, w) in cu.windows(2).enumerate() {
            for i in w[0]..w[1] {
                pos[i as usize] = i - w[0] + 1500 * s as u32;
            }
        }
        let q = bf16_exact(randn_vec(n * h * d, seed));
        let k = bf16_exact(randn_vec(n * kh * d, seed + 1));
        let v = bf16_exact(randn_vec(n * kh * d, seed + 2));
        let dout = bf16_exact(randn_vec(n * h * d, seed + 3));
        let f = DType::F32;
        let (out, lse) = ops::attention(
            &t(&q, &[n, h, d], &CPU, f),
            &t(&k, &[n, kh, d], &CPU, f),
            &t(&v, &[n, kh, d], &CPU, f),
            &Tensor::from_u32(cu.clone(), &[cu.len()], &CPU).unwrap(),
            1.0 / (d as f32).sqrt(),
        )
        .unwrap();
        let out = bf16_exact(out.to_vec_f32().unwrap());
        let lse = lse.to_vec_f32().unwrap();
        AttnRope {
            shape: (h, kh, d),
            theta,
            cu,
            pos,
            data: [q, k, v, dout, out, lse],
        }
    }

    /// (dq, dk, dv) on `dev` in `dtype`: the fused op (`fused`), or attention_backward then
    /// rope_backward of dq and dk; `cfg` picks the tensor-core kernels' build (default if None).
    fn run(
        &self,
        dev: &Device,
        dtype: DType,
        fused: bool,
        cfg: Option<&kernels::cuda::attention::FaConfig>,
    ) -> [Vec<f32>; 3] {
        let (h, kh, d) = self.shape;
        let n = self.pos.len();
        let [q, k, v, dout, out, lse] = &self.data;
        let (q, k, v) = (
            t(q, &[n, h, d], dev, dtype),
            t(k, &[n, kh, d], dev, dtype),
            t(v, &[n, kh, d], dev, dtype),
        );
        let (dout, out) = (
            t(dout, &[n, h, d], dev, dtype),
            t(out, &[n, h, d], dev, dtype),
        );
        let lse = Tensor::from_f32(lse.clone(), &[n, h], dev).unwrap();
        let cu = Tensor::from_u32(self.cu.clone(), &[self.cu.len()], dev).unwrap();
        let pos = Tensor::from_u32(self.pos.clone(), &[n], dev).unwrap();
        let (scale, theta) = (1.0 / (d as f32).sqrt(), self.theta);
        let (dq, dk, dv) = match (fused, cfg) {
            (true, None) => {
                ops::attention_backward_rope(&dout, &q, &k, &v, &out, &lse, &cu, scale, &pos, theta)
                    .unwrap()
            }
            (true, Some(cfg)) => kernels::cuda::attention::attention_backward_with(
                cfg,
                &dout,
                &q,
                &k,
                &v,
                &out,
                &lse,
                &cu,
                scale,
                Some(kernels::cuda::attention::Rope { pos: &pos, theta }),
            )
            .unwrap(),
            (false, _) => {
                let (dq, dk, dv) =
                    ops::attention_backward(&dout, &q, &k, &v, &out, &lse, &cu, scale).unwrap();
                (
                    ops::rope_backward(&dq, &pos, theta).unwrap(),
                    ops::rope_backward(&dk, &pos, theta).unwrap(),
                    dv,
                )
            }
        };
        assert_eq!(dq.shape(), &[n, h, d]);
        assert_eq!((dk.shape(), dv.shape()), (&[n, kh, d][..], &[n, kh, d][..]));
        [dq, dk, dv].map(|x| {
            assert_eq!(x.dtype(), dtype);
            x.to_vec_f32().unwrap()
        })
    }
}

/// (H, K, D, theta): Qwen2.5-0.5B's heads at D 64 (the tensor-core path with dq in its own kernel
/// on the GPU), D 128 (dq through the f32 accumulator) and D 24 (the CUDA-core path).
const ATTN_ROPE: [(usize, usize, usize, f32); 3] =
    [(14, 2, 64, 1e6), (4, 4, 128, 1e4), (3, 1, 24, 1e4)];

#[test]
fn cpu_attention_backward_rope_is_backward_then_rope() {
    for (i, &(h, kh, d, theta)) in ATTN_ROPE.iter().enumerate() {
        let c = AttnRope::new((h, kh, d), theta, 1500 + 10 * i as u64);
        let fused = c.run(&CPU, DType::F32, true, None);
        let unfused = c.run(&CPU, DType::F32, false, None);
        assert_eq!(fused, unfused, "attention_backward_rope H{h} K{kh} D{d}");
    }
    // Positions must be one per token.
    let x = Tensor::zeros(&[2, 1, 4], DType::F32, &CPU).unwrap();
    let lse = Tensor::zeros(&[2, 1], DType::F32, &CPU).unwrap();
    let cu = Tensor::from_u32(vec![0, 2], &[2], &CPU).unwrap();
    let pos = Tensor::from_u32(vec![0, 1, 2], &[3], &CPU).unwrap();
    assert!(ops::attention_backward_rope(&x, &x, &x, &x, &x, &lse, &cu, 1.0, &pos, 1e4).is_err());
}

/// The CUDA op against the CPU reference (attention_backward then rope_backward in f32) and
/// against the two CUDA ops. f32: the same values up to the order of the f32 sums; bf16: dq and
/// dk rounded once (after the rotation) instead of twice, so within a bf16 rounding or two of the
/// unfused ops and at least as close to the reference.
#[test]
fn cuda_attention_backward_rope_matches_unfused() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    use kernels::cuda::attention::FaConfig;
    for (i, &(h, kh, d, theta)) in ATTN_ROPE.iter().enumerate() {
        let c = AttnRope::new((h, kh, d), theta, 1500 + 10 * i as u64);
        let want = c.run(&CPU, DType::F32, false, None);
        for dtype in [DType::F32, DType::BF16] {
            let unfused = c.run(&dev, dtype, false, None);
            // The default build, and at D 64 also the baseline tiles (dq by f32 reductions).
            let mut runs = vec![("", c.run(&dev, dtype, true, None))];
            if d == 64 && dtype == DType::BF16 {
                let base = c.run(&dev, dtype, true, Some(&FaConfig::BASELINE));
                runs.push(("baseline tiles ", base));
            }
            for (label, fused) in &runs {
                for (j, name) in ["dq", "dk", "dv"].iter().enumerate() {
                    let e_ref = rel_err(&fused[j], &want[j]);
                    let e_ops = rel_err(&fused[j], &unfused[j]);
                    let e_unf = rel_err(&unfused[j], &want[j]);
                    println!(
                        "attention_backward_rope {label}H{h} K{kh} D{d} [{dtype}] {name}: vs cpu {e_ref:.3e} \
                         (unfused ops {e_unf:.3e}), vs unfused ops {e_ops:.3e}"
                    );
                    let (tol_ref, tol_ops) = if dtype == DType::F32 {
                        (1e-4, 1e-5)
                    } else {
                        (1e-2, 5e-3)
                    };
                    let what = format!("{label}H{h} K{kh} D{d} [{dtype}] {name}");
                    assert!(e_ref <= tol_ref, "{what}: vs cpu {e_ref:.3e}");
                    assert!(e_ops <= tol_ops, "{what}: vs unfused ops {e_ops:.3e}");
                    // One rounding fewer: not farther from the reference (with slack for the
                    // sums' order, which differs run to run where the kernels reduce atomically).
                    assert!(
                        e_ref <= e_unf * 1.05 + 1e-6,
                        "{what}: fused {e_ref:.3e} farther from cpu than unfused {e_unf:.3e}"
                    );
                }
            }
        }
    }
}

/// `rmsnorm_backward_acc_from` (out of place) gives the in-place op's d_res bits in a new tensor,
/// leaves its `res` as it was, and adds the same weight gradient (summed with atomics on a GPU,
/// so compared to f32 rounding there): on every device, f32 and (GPU) bf16, C a multiple of 8 or
/// not.
#[test]
fn acc_from_is_the_in_place_acc_out_of_place() {
    for dev in test_devices() {
        for dtype in test_dtypes(&dev) {
            for (i, &(n, c)) in SHAPES.iter().enumerate() {
                let seed = 300 + 10 * i as u64;
                let what = format!("{dev} {dtype} {n}x{c}");
                let x = t(&bf16_exact(randn_vec(n * c, seed)), &[n, c], &dev, dtype);
                let dy = t(
                    &bf16_exact(randn_vec(n * c, seed + 1)),
                    &[n, c],
                    &dev,
                    dtype,
                );
                let w = t(&bf16_exact(randn_vec(c, seed + 2)), &[c], &dev, dtype);
                let (_, rstd) = ops::rmsnorm(&x, &w, 1e-6).unwrap();
                let res0 = bf16_exact(randn_vec(n * c, seed + 3));
                let dw0 = randn_vec(c, seed + 4);

                let mut in_place = t(&res0, &[n, c], &dev, dtype);
                let mut dw = Tensor::from_f32(dw0.clone(), &[c], &dev).unwrap();
                ops::rmsnorm_backward_acc(&dy, &x, &w, &rstd, &mut in_place, &mut dw).unwrap();

                let res = t(&res0, &[n, c], &dev, dtype);
                let res_before = res.to_vec_f32().unwrap();
                let mut dw2 = Tensor::from_f32(dw0.clone(), &[c], &dev).unwrap();
                let out =
                    ops::rmsnorm_backward_acc_from(&dy, &x, &w, &rstd, &res, &mut dw2).unwrap();

                let bits = |t: &Tensor| -> Vec<u32> {
                    t.to_vec_f32()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(bits(&out), bits(&in_place), "{what}: d_res");
                assert_eq!(
                    res.to_vec_f32().unwrap(),
                    res_before,
                    "{what}: res untouched"
                );
                let e = rel_err(&dw2.to_vec_f32().unwrap(), &dw.to_vec_f32().unwrap());
                assert!(e <= 1e-6, "{what}: dw rel err {e:.2e}");
            }
        }
    }
}
