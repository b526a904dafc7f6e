//! The fused inference ops (concat_rows, qkv_rope_cache, add_rmsnorm, swiglu_packed) against the
//! unfused ops they replace, on every test device (CPU f32; on a GPU f32 and bf16), and the GPU
//! against the CPU reference. Seeded random inputs; without a GPU the GPU cases are skipped
//! (`REALIGN_REQUIRE_GPU=1` makes a missing GPU fail).

use kernels::testing::{float_tensor, max_abs_diff, randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

fn u32s(v: &[u32], dev: &Device) -> Tensor {
    Tensor::from_u32(v.to_vec(), &[v.len()], dev).unwrap()
}

/// The dtypes each device computes in.
fn dtypes(dev: &Device) -> Vec<DType> {
    if dev.is_cuda() {
        vec![DType::F32, DType::BF16]
    } else {
        vec![DType::F32]
    }
}

/// Tolerance on ‖fused − unfused‖ / ‖unfused‖ on one device: the same arithmetic, but a GEMM over
/// a concatenated weight may sum in another order (an ulp of a bf16 output here and there).
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 4e-3,
        _ => 1e-5,
    }
}

fn assert_close(name: &str, dev: &Device, dtype: DType, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let (rel, abs) = (rel_err(got, want), max_abs_diff(got, want));
    let exact = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() == b.to_bits())
        .count();
    println!(
        "{name} [{dev} {dtype}]: rel_err {rel:.3e} max_abs {abs:.3e}, {exact}/{} bit-equal",
        got.len()
    );
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{name} [{dev} {dtype}]: non-finite output"
    );
    assert!(
        rel <= tol,
        "{name} [{dev} {dtype}]: relative error {rel:.3e} exceeds {tol:.0e} (max abs {abs:.3e})"
    );
}

/// Shapes of one attention block: N tokens, C hidden, H query heads, K kv heads, D head dim,
/// P cache slots.
struct Dims {
    n: usize,
    c: usize,
    h: usize,
    k: usize,
    d: usize,
    p: usize,
}

struct QkvCase {
    x: Vec<f32>,
    w: [Vec<f32>; 3],
    b: [Vec<f32>; 3],
    pos: Vec<u32>,
    slots: Vec<u32>,
}

fn qkv_case(dm: &Dims, seed: u64) -> QkvCase {
    let (c, hd, kd) = (dm.c, dm.h * dm.d, dm.k * dm.d);
    let s = 1.0 / (c as f32).sqrt();
    let scaled = |n: usize, seed: u64, f: f32| -> Vec<f32> {
        randn_vec(n, seed).into_iter().map(|v| v * f).collect()
    };
    // Distinct slots, scattered over the cache; positions up to a few thousand (large angles).
    let slots: Vec<u32> = (0..dm.n).map(|i| ((i * 7 + 3) % dm.p) as u32).collect();
    let pos: Vec<u32> = (0..dm.n).map(|i| ((i * 977 + 5) % 4000) as u32).collect();
    QkvCase {
        x: randn_vec(dm.n * c, seed),
        w: [
            scaled(hd * c, seed + 1, s),
            scaled(kd * c, seed + 2, s),
            scaled(kd * c, seed + 3, s),
        ],
        b: [
            scaled(hd, seed + 4, 0.5),
            scaled(kd, seed + 5, 0.5),
            scaled(kd, seed + 6, 0.5),
        ],
        pos,
        slots,
    }
}

/// (q, k, v, k_cache, v_cache) on host, computed by the unfused ops or by the fused path.
type QkvOut = [Vec<f32>; 5];

fn run_qkv(dm: &Dims, cs: &QkvCase, dev: &Device, dtype: DType, bias: bool, fused: bool) -> QkvOut {
    let t = |v: &Vec<f32>, shape: &[usize]| float_tensor(v.clone(), shape, dev, dtype);
    let (hd, kd) = (dm.h * dm.d, dm.k * dm.d);
    let x = t(&cs.x, &[dm.n, dm.c]);
    let w = [
        t(&cs.w[0], &[hd, dm.c]),
        t(&cs.w[1], &[kd, dm.c]),
        t(&cs.w[2], &[kd, dm.c]),
    ];
    let b = [t(&cs.b[0], &[hd]), t(&cs.b[1], &[kd]), t(&cs.b[2], &[kd])];
    let (pos, slots) = (u32s(&cs.pos, dev), u32s(&cs.slots, dev));
    let mut kc = Tensor::zeros(&[dm.p, dm.k, dm.d], dtype, dev).unwrap();
    let mut vc = Tensor::zeros(&[dm.p, dm.k, dm.d], dtype, dev).unwrap();
    let theta = 10_000.0;
    let (q, k, v) = if fused {
        let wqkv = ops::concat_rows(&[&w[0], &w[1], &w[2]]).unwrap(); // [(H+2K)·D, C]
        let bqkv = ops::concat_rows(&[&b[0], &b[1], &b[2]]).unwrap(); // [(H+2K)·D]
        let acc = ops::linear::linear_out(&x, &wqkv, None, DType::F32).unwrap();
        let out = ops::qkv_rope_cache(
            &acc,
            bias.then_some(&bqkv),
            &pos,
            &slots,
            &mut kc,
            &mut vc,
            dm.h,
            theta,
        )
        .unwrap();
        (out.q, out.k, out.v)
    } else {
        let bias_of = |i: usize| bias.then_some(&b[i]);
        let q = ops::linear(&x, &w[0], bias_of(0))
            .unwrap()
            .reshape(&[dm.n, dm.h, dm.d])
            .unwrap();
        let k = ops::linear(&x, &w[1], bias_of(1))
            .unwrap()
            .reshape(&[dm.n, dm.k, dm.d])
            .unwrap();
        let v = ops::linear(&x, &w[2], bias_of(2))
            .unwrap()
            .reshape(&[dm.n, dm.k, dm.d])
            .unwrap();
        let q = ops::rope(&q, &pos, theta).unwrap();
        let k = ops::rope(&k, &pos, theta).unwrap();
        ops::kv_cache_write(&mut kc, &mut vc, &k, &v, &slots).unwrap();
        (q, k, v)
    };
    assert_eq!(q.dtype(), dtype);
    [host(&q), host(&k), host(&v), host(&kc), host(&vc)]
}

const NAMES: [&str; 5] = ["q", "k", "v", "k_cache", "v_cache"];

/// Qwen2-like head shapes (D = 64, 8-wide vector path) and an odd small D (scalar path).
fn qkv_shapes() -> Vec<Dims> {
    vec![
        Dims {
            n: 37,
            c: 96,
            h: 6,
            k: 2,
            d: 64,
            p: 64,
        },
        Dims {
            n: 11,
            c: 40,
            h: 4,
            k: 4,
            d: 6,
            p: 16,
        },
    ]
}

#[test]
fn qkv_rope_cache_equals_linear_rope_and_cache_write() {
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            for (si, dm) in qkv_shapes().iter().enumerate() {
                let cs = qkv_case(dm, 10 + si as u64);
                for bias in [true, false] {
                    let want = run_qkv(dm, &cs, &dev, dtype, bias, false);
                    let got = run_qkv(dm, &cs, &dev, dtype, bias, true);
                    for (i, name) in NAMES.iter().enumerate() {
                        let label = format!("qkv_rope_cache {name} D={} bias={bias}", dm.d);
                        assert_close(&label, &dev, dtype, &got[i], &want[i], tol(dtype));
                    }
                    // Slots not written stay zero.
                    let untouched = (0..dm.p).filter(|s| !cs.slots.contains(&(*s as u32)));
                    for s in untouched {
                        let row = &got[3][s * dm.k * dm.d..(s + 1) * dm.k * dm.d];
                        assert!(row.iter().all(|&v| v == 0.0), "slot {s} was written");
                    }
                }
            }
        }
    }
}

/// cos/sin from a `RopeTable` give the same bits as computing them per token, for positions
/// inside the table and (computed, as without one) beyond it.
#[test]
fn qkv_rope_cache_with_a_rope_table_gives_the_same_bits() {
    use kernels::ops::qkv_rope_cache::{qkv_rope_cache_table, RopeTable};
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            for (si, dm) in qkv_shapes().iter().enumerate() {
                let cs = qkv_case(dm, 30 + si as u64);
                let width = (dm.h + 2 * dm.k) * dm.d;
                let acc = float_tensor(
                    randn_vec(dm.n * width, 40 + si as u64),
                    &[dm.n, width],
                    &dev,
                    DType::F32,
                );
                let (pos, slots) = (u32s(&cs.pos, &dev), u32s(&cs.slots, &dev));
                // Positions go up to 4000: the table covers about half of them.
                let table = RopeTable::new(2000, dm.d, 1e6, &dev).unwrap();
                let mut outs = Vec::new();
                for with_table in [false, true] {
                    let mut kc = Tensor::zeros(&[dm.p, dm.k, dm.d], dtype, &dev).unwrap();
                    let mut vc = Tensor::zeros(&[dm.p, dm.k, dm.d], dtype, &dev).unwrap();
                    let o = if with_table {
                        qkv_rope_cache_table(
                            &acc, None, &pos, &slots, &mut kc, &mut vc, dm.h, &table,
                        )
                    } else {
                        ops::qkv_rope_cache(&acc, None, &pos, &slots, &mut kc, &mut vc, dm.h, 1e6)
                    }
                    .unwrap();
                    let bits = |t: &Tensor| host(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    outs.push([bits(&o.q), bits(&o.k), bits(&o.v), bits(&kc), bits(&vc)]);
                }
                assert!(cs.pos.iter().any(|&p| p >= 2000) && cs.pos.iter().any(|&p| p < 2000));
                for (i, name) in NAMES.iter().enumerate() {
                    assert_eq!(outs[0][i], outs[1][i], "{dev} {dtype} D={}: {name}", dm.d);
                }
            }
        }
    }
    let bad = RopeTable::new(8, 64, 1e4, &Device::Cpu).unwrap();
    let acc = Tensor::zeros(&[1, 3 * 6], DType::F32, &Device::Cpu).unwrap();
    let (pos, slots) = (u32s(&[0], &Device::Cpu), u32s(&[0], &Device::Cpu));
    let mut kc = Tensor::zeros(&[4, 1, 6], DType::F32, &Device::Cpu).unwrap();
    let mut vc = Tensor::zeros(&[4, 1, 6], DType::F32, &Device::Cpu).unwrap();
    let Err(e) = qkv_rope_cache_table(&acc, None, &pos, &slots, &mut kc, &mut vc, 1, &bad) else {
        panic!("a table of another head dim was accepted");
    };
    assert!(e.to_string().contains("head dim 64"), "{e}");
}

#[test]
fn qkv_rope_cache_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    for dtype in [DType::F32, DType::BF16] {
        for (si, dm) in qkv_shapes().iter().enumerate() {
            let mut cs = qkv_case(dm, 20 + si as u64);
            // Inputs representable in dtype, so both sides start from the same values.
            let round = |v: &mut Vec<f32>| {
                let t = float_tensor(v.clone(), &[v.len()], &Device::Cpu, dtype);
                *v = host(&t);
            };
            round(&mut cs.x);
            cs.w.iter_mut().chain(cs.b.iter_mut()).for_each(round);
            let want = run_qkv(dm, &cs, &Device::Cpu, DType::F32, true, true);
            let got = run_qkv(dm, &cs, &gpu, dtype, true, true);
            let t = if dtype == DType::BF16 { 1e-2 } else { 1e-5 };
            for (i, name) in NAMES.iter().enumerate() {
                let label = format!("qkv_rope_cache gpu-vs-cpu {name} D={}", dm.d);
                assert_close(&label, &gpu, dtype, &got[i], &want[i], t);
            }
        }
    }
}

#[test]
fn qkv_rope_cache_skips_idle_slots_on_the_gpu_and_rejects_them_on_the_cpu() {
    let dm = Dims {
        n: 4,
        c: 32,
        h: 2,
        k: 1,
        d: 16,
        p: 8,
    };
    for dev in test_devices() {
        let acc = float_tensor(randn_vec(4 * 64, 3), &[4, 64], &dev, DType::F32);
        let pos = u32s(&[0, 1, 2, 3], &dev);
        let slots = u32s(&[5, u32::MAX, 1, 2], &dev);
        let mut kc = Tensor::zeros(&[dm.p, dm.k, dm.d], DType::F32, &dev).unwrap();
        let mut vc = Tensor::zeros(&[dm.p, dm.k, dm.d], DType::F32, &dev).unwrap();
        let r = ops::qkv_rope_cache(&acc, None, &pos, &slots, &mut kc, &mut vc, dm.h, 1e4);
        if dev.is_cuda() {
            let out = r.unwrap();
            let (k, kc) = (host(&out.k), host(&kc));
            // Rows 0, 2, 3 went to slots 5, 1, 2; nothing else was written.
            for (tok, slot) in [(0usize, 5usize), (2, 1), (3, 2)] {
                assert_eq!(
                    &kc[slot * 16..(slot + 1) * 16],
                    &k[tok * 16..(tok + 1) * 16]
                );
            }
            for slot in [0usize, 3, 4, 6, 7] {
                assert!(kc[slot * 16..(slot + 1) * 16].iter().all(|&v| v == 0.0));
            }
        } else {
            let msg = r
                .err()
                .expect("an out-of-range slot is an error on the CPU")
                .to_string();
            assert!(msg.contains("slot"), "{msg}");
        }
    }
}

#[test]
fn qkv_rope_cache_rejects_bad_shapes() {
    let dev = Device::Cpu;
    let mut kc = Tensor::zeros(&[8, 2, 16], DType::F32, &dev).unwrap();
    let mut vc = Tensor::zeros(&[8, 2, 16], DType::F32, &dev).unwrap();
    let pos = u32s(&[0, 1], &dev);
    let slots = u32s(&[0, 1], &dev);
    // (H + 2K)·D = (4 + 4)·16 = 128 columns expected.
    let acc = Tensor::zeros(&[2, 120], DType::F32, &dev).unwrap();
    let e = ops::qkv_rope_cache(&acc, None, &pos, &slots, &mut kc, &mut vc, 4, 1e4);
    assert!(e.err().unwrap().to_string().contains("(H + 2K)"));
    let acc = Tensor::zeros(&[2, 128], DType::F32, &dev).unwrap();
    let e = ops::qkv_rope_cache(&acc, None, &pos, &slots, &mut kc, &mut vc, 3, 1e4);
    assert!(e.err().unwrap().to_string().contains("multiple"));
    let bad_bias = Tensor::zeros(&[100], DType::F32, &dev).unwrap();
    let e = ops::qkv_rope_cache(
        &acc,
        Some(&bad_bias),
        &pos,
        &slots,
        &mut kc,
        &mut vc,
        4,
        1e4,
    );
    assert!(e.err().unwrap().to_string().contains("bias"));
}

#[test]
fn add_rmsnorm_equals_add_then_rmsnorm() {
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            // GPU paths: C = 896 (Qwen2.5-0.5B; a block per row), C = 8200 (a warp per row,
            // 8-wide) and C = 100 (a warp per row, one element per lane).
            for (n, c) in [(33usize, 896usize), (3, 8200), (5, 100)] {
                let x = float_tensor(randn_vec(n * c, 1), &[n, c], &dev, dtype);
                let y = float_tensor(randn_vec(n * c, 2), &[n, c], &dev, dtype);
                let w = float_tensor(randn_vec(c, 3), &[c], &dev, dtype);
                let got = ops::add_rmsnorm(&x, &y, &w, 1e-6).unwrap();
                let r = ops::add(&x, &y).unwrap();
                let (out, rstd) = ops::rmsnorm(&r, &w, 1e-6).unwrap();
                let label = |s: &str| format!("add_rmsnorm {s} C={c}");
                assert_close(&label("r"), &dev, dtype, &host(&got.r), &host(&r), 0.0);
                let t = if dtype == DType::BF16 { 1e-2 } else { 1e-6 };
                assert_close(&label("out"), &dev, dtype, &host(&got.out), &host(&out), t);
                assert_close(
                    &label("rstd"),
                    &dev,
                    dtype,
                    &host(&got.rstd),
                    &host(&rstd),
                    1e-6,
                );
                if dev.is_cuda() {
                    // Against the CPU reference from the same (rounded) inputs.
                    let cpu =
                        |t: &Tensor| Tensor::from_f32(host(t), t.shape(), &Device::Cpu).unwrap();
                    let want = ops::add_rmsnorm(&cpu(&x), &cpu(&y), &cpu(&w), 1e-6).unwrap();
                    let tc = if dtype == DType::BF16 { 1e-2 } else { 1e-5 };
                    let l = label("gpu-vs-cpu out");
                    assert_close(&l, &dev, dtype, &host(&got.out), &host(&want.out), tc);
                }
            }
        }
    }
}

#[test]
fn swiglu_packed_equals_swiglu_of_the_halves() {
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            for (n, f) in [(9usize, 64usize), (7, 13)] {
                let gu = randn_vec(n * 2 * f, 4);
                let (mut g, mut u) = (Vec::new(), Vec::new());
                for row in gu.chunks_exact(2 * f) {
                    g.extend_from_slice(&row[..f]);
                    u.extend_from_slice(&row[f..]);
                }
                let got = ops::swiglu_packed(&float_tensor(gu, &[n, 2 * f], &dev, dtype)).unwrap();
                assert_eq!(got.shape(), &[n, f]);
                let want = ops::swiglu(
                    &float_tensor(g, &[n, f], &dev, dtype),
                    &float_tensor(u, &[n, f], &dev, dtype),
                )
                .unwrap();
                let t = if dev.is_cuda() { 1e-6 } else { 0.0 };
                let label = format!("swiglu_packed F={f}");
                assert_close(&label, &dev, dtype, &host(&got), &host(&want), t);
            }
        }
    }
    let odd = Tensor::zeros(&[2, 5], DType::F32, &Device::Cpu).unwrap();
    assert!(ops::swiglu_packed(&odd).is_err());
}

#[test]
fn concat_rows_stacks_parts() {
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            let a = float_tensor(randn_vec(6, 1), &[2, 3], &dev, dtype);
            let b = float_tensor(randn_vec(3, 2), &[1, 3], &dev, dtype);
            let e = Tensor::zeros(&[0, 3], dtype, &dev).unwrap();
            let c = ops::concat_rows(&[&a, &e, &b]).unwrap();
            assert_eq!(c.shape(), &[3, 3]);
            assert_eq!(c.dtype(), dtype);
            let mut want = host(&a);
            want.extend(host(&b));
            assert_eq!(host(&c), want);
            let bad = Tensor::zeros(&[1, 4], dtype, &dev).unwrap();
            let msg = ops::concat_rows(&[&a, &bad]).err().unwrap().to_string();
            assert!(msg.contains("tensor 1"), "{msg}");
        }
        let ids = ops::concat_rows(&[&u32s(&[1, 2], &dev), &u32s(&[3], &dev)]).unwrap();
        assert_eq!(ids.to_vec_u32().unwrap(), vec![1, 2, 3]);
    }
    assert!(ops::concat_rows(&[]).is_err());
}

#[test]
fn write_rows_fills_its_block_of_rows_only() {
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            let src = float_tensor(randn_vec(6, 3), &[2, 3], &dev, dtype);
            let mut dst = float_tensor(randn_vec(15, 4), &[5, 3], &dev, dtype);
            let before = host(&dst);
            ops::write_rows(&mut dst, 2, &src).unwrap();
            let mut want = before.clone();
            want[6..12].copy_from_slice(&host(&src));
            assert_eq!(host(&dst), want);
            // The last rows, an empty source, and what does not fit or does not match.
            ops::write_rows(&mut dst, 3, &src).unwrap();
            assert_eq!(&host(&dst)[9..15], &host(&src)[..]);
            let empty = Tensor::zeros(&[0, 3], dtype, &dev).unwrap();
            ops::write_rows(&mut dst, 5, &empty).unwrap();
            let msg = ops::write_rows(&mut dst, 4, &src)
                .err()
                .unwrap()
                .to_string();
            assert!(msg.contains("do not fit"), "{msg}");
            let wide = Tensor::zeros(&[1, 4], dtype, &dev).unwrap();
            assert!(ops::write_rows(&mut dst, 0, &wide).is_err());
        }
        let mut ids = u32s(&[0, 0, 0, 0], &dev);
        ops::write_rows(&mut ids, 1, &u32s(&[7, 8], &dev)).unwrap();
        assert_eq!(ids.to_vec_u32().unwrap(), vec![0, 7, 8, 0]);
    }
}

/// Partial products of one (rounded) x, w: the sum over the splits is the whole product, and each
/// partial is the product of its slice of the inner dimension (checked against the CPU op on the
/// same values, whose slices are checked against `linear` of the sliced matrices).
#[test]
fn linear_ksplit_partials_are_the_slices_products() {
    // (N, I, O, S): ragged small shapes, and the decode step's down projection at B 256.
    let cases = [
        (5usize, 48usize, 7usize, 3usize),
        (37, 96, 40, 4),
        (16, 64, 8, 1),
        (256, 4864, 896, 4),
    ];
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            for &(n, i, o, s) in &cases {
                if n * i * o > 1 << 22 && !dev.is_cuda() {
                    continue; // the big shape only where it is fast
                }
                let x = float_tensor(randn_vec(n * i, 11), &[n, i], &dev, dtype);
                let w = float_tensor(randn_vec(o * i, 12), &[o, i], &dev, dtype);
                let p = ops::linear_ksplit(&x, &w, s).unwrap();
                assert_eq!(p.shape(), &[s, n, o]);
                assert_eq!(p.dtype(), DType::F32);
                let ph = host(&p);
                let label = format!("linear_ksplit N={n} I={i} O={o} S={s}");
                // Σ_s p[s] against the whole product in f32 on the same device.
                let whole = ops::linear::linear_out(&x, &w, None, DType::F32).unwrap();
                let mut sum = vec![0.0f32; n * o];
                for plane in ph.chunks_exact(n * o) {
                    sum.iter_mut().zip(plane).for_each(|(a, b)| *a += b);
                }
                assert_close(
                    &format!("{label} sum"),
                    &dev,
                    dtype,
                    &sum,
                    &host(&whole),
                    1e-5,
                );
                // Each partial against its slice, computed on the CPU from the same values.
                let (xh, wh) = (host(&x), host(&w));
                let step = i / s;
                for sp in 0..s {
                    let slice = |m: &[f32], rows: usize| -> Vec<f32> {
                        (0..rows)
                            .flat_map(|r| m[r * i + sp * step..r * i + (sp + 1) * step].to_vec())
                            .collect()
                    };
                    let xs = Tensor::from_f32(slice(&xh, n), &[n, step], &Device::Cpu).unwrap();
                    let ws = Tensor::from_f32(slice(&wh, o), &[o, step], &Device::Cpu).unwrap();
                    let want = host(&ops::linear(&xs, &ws, None).unwrap());
                    let got = &ph[sp * n * o..(sp + 1) * n * o];
                    let l = format!("{label} partial {sp}");
                    assert_close(&l, &dev, dtype, got, &want, 1e-5);
                }
            }
        }
    }
}

#[test]
fn linear_ksplit_rejects_bad_splits() {
    let dev = Device::Cpu;
    let x = Tensor::from_f32(randn_vec(4 * 48, 1), &[4, 48], &dev).unwrap();
    let w = Tensor::from_f32(randn_vec(6 * 48, 2), &[6, 48], &dev).unwrap();
    let w_bad = Tensor::from_f32(randn_vec(6 * 40, 2), &[6, 40], &dev).unwrap();
    // 0 splits, 5 does not divide 48, 4 gives slices of 12 (not a multiple of 8), wrong inner size.
    for (w, s) in [(&w, 0usize), (&w, 5), (&w, 4), (&w_bad, 1)] {
        let err = ops::linear_ksplit(&x, w, s).unwrap_err().to_string();
        assert!(err.contains("linear_ksplit"), "{err}");
    }
    assert!(ops::linear_ksplit(&x, &w, 6).is_ok());
}

/// add_rmsnorm_partials(x, p) gives the bits of add_rmsnorm(x, y) with y = Σ_s p[s] summed in
/// order in f32 and rounded once to the dtype, on every device.
#[test]
fn add_rmsnorm_partials_equals_add_rmsnorm_of_the_rounded_sum() {
    for dev in test_devices() {
        for dtype in dtypes(&dev) {
            for (n, c, s) in [
                (33usize, 896usize, 1usize),
                (33, 896, 3),
                (256, 896, 4),
                (7, 576, 2),
            ] {
                let x = float_tensor(randn_vec(n * c, 21), &[n, c], &dev, dtype);
                let w = float_tensor(randn_vec(c, 22), &[c], &dev, dtype);
                let ph = randn_vec(s * n * c, 23);
                let p = Tensor::from_f32(ph.clone(), &[s, n, c], &dev).unwrap();
                let mut sum = vec![0.0f32; n * c];
                for plane in ph.chunks_exact(n * c) {
                    sum.iter_mut().zip(plane).for_each(|(a, b)| *a += b);
                }
                let y = float_tensor(sum, &[n, c], &dev, dtype); // one rounding to the dtype
                let got = ops::add_rmsnorm_partials(&x, &p, &w, 1e-6).unwrap();
                let want = ops::add_rmsnorm(&x, &y, &w, 1e-6).unwrap();
                let label = |t: &str| format!("add_rmsnorm_partials {t} N={n} C={c} S={s}");
                for (name, g, e) in [
                    ("r", &got.r, &want.r),
                    ("out", &got.out, &want.out),
                    ("rstd", &got.rstd, &want.rstd),
                ] {
                    let (g, e) = (host(g), host(e));
                    assert_close(&label(name), &dev, dtype, &g, &e, 0.0);
                    assert!(
                        g.iter().zip(&e).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} [{dev} {dtype}]: not bit-equal",
                        label(name)
                    );
                }
            }
        }
    }
}

#[test]
fn add_rmsnorm_partials_rejects_bad_partials() {
    let dev = Device::Cpu;
    let (n, c) = (3usize, 16usize);
    let x = Tensor::from_f32(randn_vec(n * c, 1), &[n, c], &dev).unwrap();
    let w = Tensor::from_f32(randn_vec(c, 2), &[c], &dev).unwrap();
    for shape in [vec![0, n, c], vec![2, n + 1, c], vec![n, c]] {
        let numel = shape.iter().product();
        let p = Tensor::from_f32(randn_vec(numel, 3), &shape, &dev).unwrap();
        let Err(err) = ops::add_rmsnorm_partials(&x, &p, &w, 1e-6) else {
            panic!("partials {shape:?} were accepted");
        };
        let err = err.to_string();
        assert!(err.contains("add_rmsnorm_partials"), "{shape:?}: {err}");
    }
}
