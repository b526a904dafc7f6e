//! CPU reference ops against independent naive f64 implementations written here, and backward ops
//! against central finite differences of those f64 references (loss = Σ dy·y with random dy).
//!
//! Sizes are small and odd on purpose (N=7, C=13, H=6, K=2, D=8, V=37, packed sequences of
//! different lengths) so that off-by-one and layout mistakes show up. Every random draw is seeded.

use kernels::testing::{max_abs_diff, rand_ids, randn, randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Error, Tensor};

const CPU: Device = Device::Cpu;
/// Relative tolerance for f32 results against f64 references.
const TOL: f64 = 1e-4;

// ---------------------------------------------------------------------------------------------
// Helpers

fn f32_tensor(data: &[f64], shape: &[usize]) -> Tensor {
    Tensor::from_f32(data.iter().map(|&x| x as f32).collect(), shape, &CPU).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Seeded standard-normal draws as f64 (values exactly representable in f32, so the f32 op and
/// the f64 reference see the same inputs).
fn draw(n: usize, seed: u64) -> Vec<f64> {
    to64(&randn_vec(n, seed))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central finite-difference gradient of `f` at `x` (f64; step 1e-6 gives ~1e-9 accuracy here).
fn fd_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let fp = f(&xp);
            xp[i] = x0 - h;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Asserts rel_err(got, want) ≤ tol, prints the measured error (visible with --nocapture).
fn check(name: &str, got: &[f32], want: &[f64], tol: f64) {
    let want = to32(want);
    let (rel, abs) = (rel_err(got, &want), max_abs_diff(got, &want));
    eprintln!("{name}: rel_err {rel:.3e}, max_abs_diff {abs:.3e}");
    assert!(
        rel <= tol,
        "{name}: relative error {rel:.3e} exceeds {tol:.1e} (max abs diff {abs:.3e})"
    );
}

// ---------------------------------------------------------------------------------------------
// cast

/// bf16 by bit manipulation: round to nearest, ties to even (independent of `half`).
fn bf16_bits_rne(x: f32) -> u16 {
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    ((bits + 0x7fff + lsb) >> 16) as u16
}

#[test]
fn cast_f32_bf16_round_trip() {
    let mut data = randn_vec(97, 1);
    // Exact ties: 0x3f80_8000 rounds down to the even 0x3f80, 0x3f81_8000 up to the even 0x3f82.
    data.extend([
        f32::from_bits(0x3f80_8000),
        f32::from_bits(0x3f81_8000),
        -0.0,
        1e-30,
    ]);
    let x = Tensor::from_f32(data.clone(), &[101], &CPU).unwrap();
    let y = ops::cast(&x, DType::BF16).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    assert_eq!(y.shape(), &[101]);
    let got: Vec<f32> = host(&y);
    for (i, (&g, &x)) in got.iter().zip(&data).enumerate() {
        let want = f32::from_bits((bf16_bits_rne(x) as u32) << 16);
        assert_eq!(
            g.to_bits(),
            want.to_bits(),
            "element {i}: cast({x}) = {g}, want {want}"
        );
    }
    assert_eq!(got[97].to_bits(), 0x3f80_0000);
    assert_eq!(got[98].to_bits(), 0x3f82_0000);
    // bf16 -> f32 is exact.
    let back = ops::cast(&y, DType::F32).unwrap();
    assert_eq!(back.dtype(), DType::F32);
    assert_eq!(host(&back), got);
    // Same dtype is a copy.
    assert_eq!(host(&ops::cast(&x, DType::F32).unwrap()), data);
    // u32 is not a float dtype.
    assert!(matches!(
        ops::cast(&x, DType::U32),
        Err(Error::DType { .. })
    ));
    let ids = Tensor::from_u32(vec![1, 2], &[2], &CPU).unwrap();
    assert!(ops::cast(&ids, DType::F32).is_err());
}

// ---------------------------------------------------------------------------------------------
// elementwise

#[test]
fn elementwise_ops_match_reference() {
    let (a, b) = (draw(7 * 13, 2), draw(7 * 13, 3));
    let (ta, tb) = (f32_tensor(&a, &[7, 13]), f32_tensor(&b, &[7, 13]));
    let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    check("add", &host(&ops::add(&ta, &tb).unwrap()), &sum, 1e-7);

    let mut acc = ta.try_clone().unwrap();
    ops::add_inplace(&mut acc, &tb).unwrap();
    check("add_inplace", &host(&acc), &sum, 1e-7);

    ops::scale_inplace(&mut acc, -0.375).unwrap();
    let scaled: Vec<f64> = sum.iter().map(|x| x * -0.375).collect();
    check("scale_inplace", &host(&acc), &scaled, 1e-7);

    ops::fill_inplace(&mut acc, 2.5).unwrap();
    assert!(host(&acc).iter().all(|&x| x == 2.5));

    // Shape and dtype mismatches are errors, not panics.
    let tc = f32_tensor(&a[..13 * 6], &[6, 13]);
    assert!(matches!(ops::add(&ta, &tc), Err(Error::Shape { .. })));
    let bf = ops::cast(&tb, DType::BF16).unwrap();
    assert!(ops::add(&ta, &bf).is_err());
    let mut bf2 = ops::cast(&ta, DType::BF16).unwrap();
    assert!(matches!(ops::add(&bf2, &bf), Err(Error::DType { .. })));
    assert!(matches!(
        ops::scale_inplace(&mut bf2, 2.0),
        Err(Error::DType { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// linear

/// y[N,O] = x[N,I] · w[O,I]ᵀ + b[O] in f64.
fn linear_ref(x: &[f64], w: &[f64], b: Option<&[f64]>, n: usize, i: usize, o: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * o];
    for r in 0..n {
        for c in 0..o {
            let xr = &x[r * i..(r + 1) * i];
            let wc = &w[c * i..(c + 1) * i];
            y[r * o + c] = dot(xr, wc) + b.map_or(0.0, |b| b[c]);
        }
    }
    y
}

#[test]
fn linear_forward_matches_reference() {
    let (n, i, o) = (7, 13, 11);
    let (x, w, b) = (draw(n * i, 10), draw(o * i, 11), draw(o, 12));
    let (tx, tw, tb) = (
        f32_tensor(&x, &[n, i]),
        f32_tensor(&w, &[o, i]),
        f32_tensor(&b, &[o]),
    );
    let y = ops::linear(&tx, &tw, Some(&tb)).unwrap();
    assert_eq!(y.shape(), &[n, o]);
    check(
        "linear fwd (bias)",
        &host(&y),
        &linear_ref(&x, &w, Some(&b), n, i, o),
        TOL,
    );
    let y = ops::linear(&tx, &tw, None).unwrap();
    check(
        "linear fwd (no bias)",
        &host(&y),
        &linear_ref(&x, &w, None, n, i, o),
        TOL,
    );

    // Wrong inner size, wrong bias size, bf16 on CPU: errors.
    let bad_w = f32_tensor(&w[..o * 12], &[o, 12]);
    assert!(matches!(
        ops::linear(&tx, &bad_w, None),
        Err(Error::Shape { .. })
    ));
    let bad_b = f32_tensor(&b[..5], &[5]);
    assert!(matches!(
        ops::linear(&tx, &tw, Some(&bad_b)),
        Err(Error::Shape { .. })
    ));
    let (bx, bw) = (
        ops::cast(&tx, DType::BF16).unwrap(),
        ops::cast(&tw, DType::BF16).unwrap(),
    );
    assert!(matches!(
        ops::linear(&bx, &bw, None),
        Err(Error::DType { .. })
    ));
}

#[test]
fn linear_backward_matches_finite_differences() {
    let (n, i, o) = (7, 13, 11);
    let (x, w, b, dy) = (
        draw(n * i, 20),
        draw(o * i, 21),
        draw(o, 22),
        draw(n * o, 23),
    );
    let (tx, tw, tdy) = (
        f32_tensor(&x, &[n, i]),
        f32_tensor(&w, &[o, i]),
        f32_tensor(&dy, &[n, o]),
    );
    // dw and db start non-zero: the op must add into them.
    let (dw0, db0) = (draw(o * i, 24), draw(o, 25));
    let (mut tdw, mut tdb) = (f32_tensor(&dw0, &[o, i]), f32_tensor(&db0, &[o]));
    let dx = ops::linear_backward(
        &tdy,
        &tx,
        &tw,
        &mut tdw,
        Some(&mut tdb),
        ops::GradStore::Add,
    )
    .unwrap();
    assert_eq!(dx.shape(), &[n, i]);

    let want_dx = fd_grad(&x, |x| dot(&dy, &linear_ref(x, &w, Some(&b), n, i, o)));
    let want_dw = fd_grad(&w, |w| dot(&dy, &linear_ref(&x, w, Some(&b), n, i, o)));
    let want_db = fd_grad(&b, |b| dot(&dy, &linear_ref(&x, &w, Some(b), n, i, o)));
    let got_dw: Vec<f32> = host(&tdw)
        .iter()
        .zip(&dw0)
        .map(|(g, s)| g - *s as f32)
        .collect();
    let got_db: Vec<f32> = host(&tdb)
        .iter()
        .zip(&db0)
        .map(|(g, s)| g - *s as f32)
        .collect();
    check("linear bwd dx", &host(&dx), &want_dx, TOL);
    check("linear bwd dw (accumulated)", &got_dw, &want_dw, TOL);
    check("linear bwd db (accumulated)", &got_db, &want_db, TOL);

    // Without db; dw must be F32 and of shape [O,I].
    let mut bad_dw = f32_tensor(&dw0[..o * 12], &[o, 12]);
    assert!(ops::linear_backward(&tdy, &tx, &tw, &mut bad_dw, None, ops::GradStore::Add).is_err());
    let mut bf_dw = ops::cast(&tdw, DType::BF16).unwrap();
    assert!(ops::linear_backward(&tdy, &tx, &tw, &mut bf_dw, None, ops::GradStore::Add).is_err());
}

// ---------------------------------------------------------------------------------------------
// embedding

#[test]
fn gather_and_scatter_rows_match_reference() {
    let (r, c, n) = (9, 13, 11);
    let table = draw(r * c, 30);
    let tt = f32_tensor(&table, &[r, c]);
    // Random ids with guaranteed repeats (id 4 three times).
    let mut ids = rand_ids(&[n], r as u32, 31, &CPU).to_vec_u32().unwrap();
    ids[0] = 4;
    ids[5] = 4;
    ids[10] = 4;
    let tid = Tensor::from_u32(ids.clone(), &[n], &CPU).unwrap();

    let out = ops::gather_rows(&tt, &tid).unwrap();
    assert_eq!(out.shape(), &[n, c]);
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&id| table[id as usize * c..(id as usize + 1) * c].to_vec())
        .collect();
    assert_eq!(host(&out), to32(&want), "gather_rows copies rows exactly");

    let (dst0, src) = (draw(r * c, 32), draw(n * c, 33));
    let mut tdst = f32_tensor(&dst0, &[r, c]);
    ops::scatter_add_rows(&mut tdst, &tid, &f32_tensor(&src, &[n, c])).unwrap();
    let mut want = dst0.clone();
    for (k, &id) in ids.iter().enumerate() {
        for j in 0..c {
            want[id as usize * c + j] += src[k * c + j];
        }
    }
    check("scatter_add_rows", &host(&tdst), &want, 1e-6);

    // Out-of-range ids are errors and leave dst untouched; ids must be U32.
    let bad = Tensor::from_u32(vec![1, r as u32], &[2], &CPU).unwrap();
    assert!(ops::gather_rows(&tt, &bad).is_err());
    let before = host(&tdst);
    let src2 = f32_tensor(&src[..2 * c], &[2, c]);
    assert!(ops::scatter_add_rows(&mut tdst, &bad, &src2).is_err());
    assert_eq!(host(&tdst), before);
    let float_ids = f32_tensor(&[1.0, 2.0], &[2]);
    assert!(matches!(
        ops::gather_rows(&tt, &float_ids),
        Err(Error::DType { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// testing utilities

#[test]
fn testing_utilities_behave() {
    let devices = test_devices();
    assert!(
        devices[0].is_cpu(),
        "the CPU is always the first test device"
    );
    // Same seed, same draw; different seed, different draw; bf16 is the rounded f32 draw.
    let a = randn(&[3, 5], 7, &CPU, DType::F32);
    assert_eq!(host(&a), host(&randn(&[3, 5], 7, &CPU, DType::F32)));
    assert_ne!(host(&a), host(&randn(&[3, 5], 8, &CPU, DType::F32)));
    let b = randn(&[3, 5], 7, &CPU, DType::BF16);
    assert_eq!(b.dtype(), DType::BF16);
    assert_eq!(host(&b), host(&ops::cast(&a, DType::BF16).unwrap()));
    let ids = rand_ids(&[50], 4, 9, &CPU).to_vec_u32().unwrap();
    assert!(ids.iter().all(|&i| i < 4) && ids.iter().any(|&i| i != ids[0]));
    // rel_err is ‖a−b‖/‖b‖; max_abs_diff propagates NaN so tolerance checks fail on it.
    assert!((rel_err(&[1.0, 2.0], &[1.0, 1.0]) - (0.5f64).sqrt()).abs() < 1e-12);
    assert_eq!(max_abs_diff(&[1.0, -2.0], &[1.5, 1.0]), 3.0);
    assert!(max_abs_diff(&[f32::NAN, 0.0], &[0.0, 5.0]).is_nan());
    assert!(rel_err(&[f32::NAN], &[1.0]).is_nan());
}

// ---------------------------------------------------------------------------------------------
// rmsnorm

/// HF LlamaRMSNorm in f64: y = w * x / sqrt(mean(x²) + eps); also returns rstd.
fn rmsnorm_ref(x: &[f64], w: &[f64], eps: f64, n: usize, c: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; n * c];
    let mut rstd = vec![0.0; n];
    for r in 0..n {
        let xr = &x[r * c..(r + 1) * c];
        rstd[r] = 1.0 / (dot(xr, xr) / c as f64 + eps).sqrt();
        for j in 0..c {
            y[r * c + j] = w[j] * xr[j] * rstd[r];
        }
    }
    (y, rstd)
}

#[test]
fn rmsnorm_forward_and_backward_match_reference() {
    let (n, c, eps) = (7, 13, 1e-5);
    let (x, w, dy) = (draw(n * c, 40), draw(c, 41), draw(n * c, 42));
    let (tx, tw) = (f32_tensor(&x, &[n, c]), f32_tensor(&w, &[c]));
    let (y, rstd) = ops::rmsnorm(&tx, &tw, eps as f32).unwrap();
    assert_eq!(
        (y.shape(), rstd.shape(), rstd.dtype()),
        (&[n, c][..], &[n][..], DType::F32)
    );
    let (want_y, want_rstd) = rmsnorm_ref(&x, &w, eps, n, c);
    check("rmsnorm fwd y", &host(&y), &want_y, TOL);
    check("rmsnorm fwd rstd", &host(&rstd), &want_rstd, TOL);

    let (dx, dw) = ops::rmsnorm_backward(&f32_tensor(&dy, &[n, c]), &tx, &tw, &rstd).unwrap();
    assert_eq!(dw.dtype(), DType::F32);
    let want_dx = fd_grad(&x, |x| dot(&dy, &rmsnorm_ref(x, &w, eps, n, c).0));
    let want_dw = fd_grad(&w, |w| dot(&dy, &rmsnorm_ref(&x, w, eps, n, c).0));
    check("rmsnorm bwd dx", &host(&dx), &want_dx, TOL);
    check("rmsnorm bwd dw", &host(&dw), &want_dw, TOL);

    let bad_w = f32_tensor(&w[..12], &[12]);
    assert!(matches!(
        ops::rmsnorm(&tx, &bad_w, 1e-5),
        Err(Error::Shape { .. })
    ));
    let bx = ops::cast(&tx, DType::BF16).unwrap();
    let bw = ops::cast(&tw, DType::BF16).unwrap();
    assert!(matches!(
        ops::rmsnorm(&bx, &bw, 1e-5),
        Err(Error::DType { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// rope

/// HF rotate_half rope in f64, except inv_freq and the angle, which the contract (like HF) computes
/// in f32; `sign` = −1 rotates backwards.
fn rope_ref(x: &[f64], pos: &[u32], theta: f32, hx: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    let mut y = vec![0.0; x.len()];
    for (t, &p) in pos.iter().enumerate() {
        for i in 0..half {
            let inv = 1.0f32 / theta.powf((2 * i) as f32 / d as f32);
            let a = (p as f32 * inv) as f64;
            let (c, s) = (a.cos(), a.sin());
            for h in 0..hx {
                let b = (t * hx + h) * d;
                y[b + i] = x[b + i] * c - x[b + i + half] * s;
                y[b + i + half] = x[b + i + half] * c + x[b + i] * s;
            }
        }
    }
    y
}

#[test]
fn rope_forward_and_backward_match_reference() {
    let (hx, d, theta) = (6, 8, 10000.0f32);
    // Positions restart per packed sequence; include large ones where the f32 angle matters.
    let pos = vec![0u32, 1, 2, 3, 0, 1, 4093, 4094, 31];
    let n = pos.len();
    let (x, dy) = (draw(n * hx * d, 50), draw(n * hx * d, 51));
    let tx = f32_tensor(&x, &[n, hx, d]);
    let tpos = Tensor::from_u32(pos.clone(), &[n], &CPU).unwrap();
    let y = ops::rope(&tx, &tpos, theta).unwrap();
    assert_eq!(y.shape(), &[n, hx, d]);
    check(
        "rope fwd",
        &host(&y),
        &rope_ref(&x, &pos, theta, hx, d),
        TOL,
    );
    // Position 0 is the identity.
    assert_eq!(host(&y)[..hx * d], host(&tx)[..hx * d]);

    let dx = ops::rope_backward(&f32_tensor(&dy, &[n, hx, d]), &tpos, theta).unwrap();
    let want_dx = fd_grad(&x, |x| dot(&dy, &rope_ref(x, &pos, theta, hx, d)));
    check("rope bwd dx", &host(&dx), &want_dx, TOL);

    // Odd D, wrong pos length, float pos: errors.
    let odd = f32_tensor(&x[..n * 7], &[n, 1, 7]);
    assert!(matches!(
        ops::rope(&odd, &tpos, theta),
        Err(Error::Shape { .. })
    ));
    let short = Tensor::from_u32(pos[..3].to_vec(), &[3], &CPU).unwrap();
    assert!(matches!(
        ops::rope(&tx, &short, theta),
        Err(Error::Shape { .. })
    ));
    let fpos = f32_tensor(&to64(&host(&tpos)), &[n]);
    assert!(matches!(
        ops::rope(&tx, &fpos, theta),
        Err(Error::DType { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// swiglu

fn swiglu_ref(g: &[f64], u: &[f64]) -> Vec<f64> {
    g.iter()
        .zip(u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

#[test]
fn swiglu_forward_and_backward_match_reference() {
    let (n, f) = (7, 19);
    let (g, u, dh) = (draw(n * f, 60), draw(n * f, 61), draw(n * f, 62));
    let (tg, tu) = (f32_tensor(&g, &[n, f]), f32_tensor(&u, &[n, f]));
    let h = ops::swiglu(&tg, &tu).unwrap();
    check("swiglu fwd", &host(&h), &swiglu_ref(&g, &u), TOL);

    let (dg, du) = ops::swiglu_backward(&f32_tensor(&dh, &[n, f]), &tg, &tu).unwrap();
    let want_dg = fd_grad(&g, |g| dot(&dh, &swiglu_ref(g, &u)));
    let want_du = fd_grad(&u, |u| dot(&dh, &swiglu_ref(&g, u)));
    check("swiglu bwd dgate", &host(&dg), &want_dg, TOL);
    check("swiglu bwd dup", &host(&du), &want_du, TOL);

    let bad = f32_tensor(&u[..n * 18], &[n, 18]);
    assert!(matches!(ops::swiglu(&tg, &bad), Err(Error::Shape { .. })));
}

// ---------------------------------------------------------------------------------------------
// attention

/// Shapes of the attention tests: packed sequences of lengths 3, 1, 0, 6, 4 (N = 14).
const CU_SEQLENS: [u32; 6] = [0, 3, 4, 4, 10, 14];
const ATT_H: usize = 6;
const ATT_K: usize = 2;
const ATT_D: usize = 8;

/// Naive causal GQA attention in f64: full softmax over keys start..=i of each query row.
/// Returns (out[N,H,D], lse[N,H]).
fn attention_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    cu: &[u32],
    scale: f64,
    (h, kh, d): (usize, usize, usize),
) -> (Vec<f64>, Vec<f64>) {
    let n = *cu.last().unwrap() as usize;
    let mut out = vec![0.0; n * h * d];
    let mut lse = vec![0.0; n * h];
    for w in cu.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        for i in start..end {
            for hq in 0..h {
                let g = hq * kh / h;
                let qi = &q[(i * h + hq) * d..][..d];
                let scores: Vec<f64> = (start..=i)
                    .map(|j| scale * dot(qi, &k[(j * kh + g) * d..][..d]))
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[i * h + hq] = m + z.ln();
                for (jj, s) in scores.iter().enumerate() {
                    let p = (s - m).exp() / z;
                    let j = start + jj;
                    for e in 0..d {
                        out[(i * h + hq) * d + e] += p * v[(j * kh + g) * d + e];
                    }
                }
            }
        }
    }
    (out, lse)
}

#[test]
fn attention_forward_matches_reference() {
    let (h, kh, d) = (ATT_H, ATT_K, ATT_D);
    let n = *CU_SEQLENS.last().unwrap() as usize;
    let scale = 1.0 / (d as f64).sqrt();
    let (q, k, v) = (
        draw(n * h * d, 70),
        draw(n * kh * d, 71),
        draw(n * kh * d, 72),
    );
    let cu = Tensor::from_u32(CU_SEQLENS.to_vec(), &[CU_SEQLENS.len()], &CPU).unwrap();
    let (out, lse) = ops::attention(
        &f32_tensor(&q, &[n, h, d]),
        &f32_tensor(&k, &[n, kh, d]),
        &f32_tensor(&v, &[n, kh, d]),
        &cu,
        scale as f32,
    )
    .unwrap();
    assert_eq!((out.shape(), lse.shape()), (&[n, h, d][..], &[n, h][..]));
    let (want_out, want_lse) = attention_ref(&q, &k, &v, &CU_SEQLENS, scale, (h, kh, d));
    check("attention fwd out", &host(&out), &want_out, TOL);
    check("attention fwd lse", &host(&lse), &want_lse, TOL);
    // The first token of each sequence sees only itself: out = v of its kv head, lse = its score.
    let o = host(&out);
    assert_eq!(o[(3 * h + 5) * d..][..d], to32(&v[(3 * kh + 1) * d..][..d]));
}

#[test]
fn attention_backward_matches_finite_differences() {
    let (h, kh, d) = (ATT_H, ATT_K, ATT_D);
    let n = *CU_SEQLENS.last().unwrap() as usize;
    let scale = 0.3;
    let (q, k, v) = (
        draw(n * h * d, 80),
        draw(n * kh * d, 81),
        draw(n * kh * d, 82),
    );
    let dout = draw(n * h * d, 83);
    let cu = Tensor::from_u32(CU_SEQLENS.to_vec(), &[CU_SEQLENS.len()], &CPU).unwrap();
    let (tq, tk, tv) = (
        f32_tensor(&q, &[n, h, d]),
        f32_tensor(&k, &[n, kh, d]),
        f32_tensor(&v, &[n, kh, d]),
    );
    let (out, lse) = ops::attention(&tq, &tk, &tv, &cu, scale as f32).unwrap();
    let tdout = f32_tensor(&dout, &[n, h, d]);
    let (dq, dk, dv) =
        ops::attention_backward(&tdout, &tq, &tk, &tv, &out, &lse, &cu, scale as f32).unwrap();
    assert_eq!(
        (dq.shape(), dk.shape(), dv.shape()),
        (&[n, h, d][..], &[n, kh, d][..], &[n, kh, d][..])
    );
    let dims = (h, kh, d);
    let loss = |q: &[f64], k: &[f64], v: &[f64]| {
        dot(&dout, &attention_ref(q, k, v, &CU_SEQLENS, scale, dims).0)
    };
    check(
        "attention bwd dq",
        &host(&dq),
        &fd_grad(&q, |q| loss(q, &k, &v)),
        TOL,
    );
    check(
        "attention bwd dk",
        &host(&dk),
        &fd_grad(&k, |k| loss(&q, k, &v)),
        TOL,
    );
    check(
        "attention bwd dv",
        &host(&dv),
        &fd_grad(&v, |v| loss(&q, &k, v)),
        TOL,
    );
}

#[test]
fn attention_rejects_bad_inputs() {
    let n = 5;
    let q = randn(&[n, 6, 8], 1, &CPU, DType::F32);
    let k = randn(&[n, 2, 8], 2, &CPU, DType::F32);
    let v = randn(&[n, 2, 8], 3, &CPU, DType::F32);
    let cu = |c: Vec<u32>| Tensor::from_u32(c.clone(), &[c.len()], &CPU).unwrap();
    assert!(ops::attention(&q, &k, &v, &cu(vec![0, 2, 5]), 1.0).is_ok());
    // cu_seqlens must end at N, start at 0 and not decrease.
    assert!(ops::attention(&q, &k, &v, &cu(vec![0, 2, 4]), 1.0).is_err());
    assert!(ops::attention(&q, &k, &v, &cu(vec![1, 2, 5]), 1.0).is_err());
    assert!(ops::attention(&q, &k, &v, &cu(vec![0, 3, 2, 5]), 1.0).is_err());
    // H must be a multiple of K; k and v must agree.
    let k4 = randn(&[n, 4, 8], 4, &CPU, DType::F32);
    assert!(matches!(
        ops::attention(&q, &k4, &k4, &cu(vec![0, 5]), 1.0),
        Err(Error::Shape { .. })
    ));
    let v1 = randn(&[n, 1, 8], 5, &CPU, DType::F32);
    assert!(matches!(
        ops::attention(&q, &k, &v1, &cu(vec![0, 5]), 1.0),
        Err(Error::Shape { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// logsoftmax_gather

/// Per row of z = logits·inv_temp in f64: (logprob of target or 0, entropy, lse).
fn logsoftmax_ref(
    logits: &[f64],
    targets: &[u32],
    inv_temp: f64,
    v: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut lp, mut ent, mut lse) = (vec![], vec![], vec![]);
    for (r, &t) in targets.iter().enumerate() {
        let z: Vec<f64> = logits[r * v..(r + 1) * v]
            .iter()
            .map(|x| x * inv_temp)
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        lse.push(l);
        ent.push(-z.iter().map(|x| (x - l).exp() * (x - l)).sum::<f64>());
        lp.push(if t == ops::NO_TARGET {
            0.0
        } else {
            z[t as usize] - l
        });
    }
    (lp, ent, lse)
}

#[test]
fn logsoftmax_gather_forward_matches_reference() {
    let (n, v, inv_temp) = (7, 37, 1.0 / 0.7);
    let logits: Vec<f64> = draw(n * v, 90).iter().map(|x| 3.0 * x).collect();
    let mut targets = rand_ids(&[n], v as u32, 91, &CPU).to_vec_u32().unwrap();
    targets[4] = ops::NO_TARGET;
    let tt = Tensor::from_u32(targets.clone(), &[n], &CPU).unwrap();
    let (lp, ent, lse) =
        ops::logsoftmax_gather(&f32_tensor(&logits, &[n, v]), &tt, inv_temp as f32).unwrap();
    let (want_lp, want_ent, want_lse) = logsoftmax_ref(&logits, &targets, inv_temp, v);
    check("logsoftmax_gather fwd logprob", &host(&lp), &want_lp, TOL);
    check("logsoftmax_gather fwd entropy", &host(&ent), &want_ent, TOL);
    check("logsoftmax_gather fwd lse", &host(&lse), &want_lse, TOL);
    assert_eq!(host(&lp)[4], 0.0, "no target: logprob 0");

    // Max subtraction: logits shifted by +1000 give the same logprob and entropy (no overflow).
    let shifted: Vec<f64> = logits.iter().map(|x| x + 1000.0).collect();
    let (lp2, ent2, _) = ops::logsoftmax_gather(&f32_tensor(&shifted, &[n, v]), &tt, 1.0).unwrap();
    let (want_lp2, want_ent2, _) = logsoftmax_ref(&logits, &targets, 1.0, v);
    // f32 logits near 1000 carry only ~6e-5 absolute precision, hence the looser tolerance.
    check(
        "logsoftmax_gather fwd logprob (+1000)",
        &host(&lp2),
        &want_lp2,
        1e-3,
    );
    check(
        "logsoftmax_gather fwd entropy (+1000)",
        &host(&ent2),
        &want_ent2,
        1e-3,
    );

    // Out-of-range targets and non-positive inv_temp are errors.
    let bad = Tensor::from_u32(vec![v as u32; n], &[n], &CPU).unwrap();
    let tl = f32_tensor(&logits, &[n, v]);
    assert!(ops::logsoftmax_gather(&tl, &bad, 1.0).is_err());
    assert!(ops::logsoftmax_gather(&tl, &tt, 0.0).is_err());
    let short = Tensor::from_u32(targets[..3].to_vec(), &[3], &CPU).unwrap();
    assert!(matches!(
        ops::logsoftmax_gather(&tl, &short, 1.0),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn logsoftmax_gather_backward_matches_finite_differences() {
    let (n, v, inv_temp) = (7, 37, 1.0 / 0.7);
    let logits: Vec<f64> = draw(n * v, 100).iter().map(|x| 2.0 * x).collect();
    let mut targets = rand_ids(&[n], v as u32, 101, &CPU).to_vec_u32().unwrap();
    targets[2] = ops::NO_TARGET;
    let (dlp, dent) = (draw(n, 102), draw(n, 103));
    let tl = f32_tensor(&logits, &[n, v]);
    let tt = Tensor::from_u32(targets.clone(), &[n], &CPU).unwrap();
    let (_, _, lse) = ops::logsoftmax_gather(&tl, &tt, inv_temp as f32).unwrap();
    let (tdlp, tdent) = (f32_tensor(&dlp, &[n]), f32_tensor(&dent, &[n]));

    let with_ent =
        ops::logsoftmax_gather_backward(&tdlp, Some(&tdent), &tl, &tt, &lse, inv_temp as f32)
            .unwrap();
    assert_eq!(with_ent.shape(), &[n, v]);
    let want = fd_grad(&logits, |x| {
        let (lp, ent, _) = logsoftmax_ref(x, &targets, inv_temp, v);
        dot(&dlp, &lp) + dot(&dent, &ent)
    });
    check(
        "logsoftmax_gather bwd (logprob + entropy)",
        &host(&with_ent),
        &want,
        TOL,
    );

    let only_lp =
        ops::logsoftmax_gather_backward(&tdlp, None, &tl, &tt, &lse, inv_temp as f32).unwrap();
    let want = fd_grad(&logits, |x| {
        dot(&dlp, &logsoftmax_ref(x, &targets, inv_temp, v).0)
    });
    check(
        "logsoftmax_gather bwd (logprob only)",
        &host(&only_lp),
        &want,
        TOL,
    );
    // The no-target row gets no logprob gradient at all.
    assert!(host(&only_lp)[2 * v..3 * v].iter().all(|&g| g == 0.0));
}

// ---------------------------------------------------------------------------------------------
// sum_squares

#[test]
fn sum_squares_matches_reference() {
    let x = draw(7 * 13, 110);
    let got = ops::sum_squares(&f32_tensor(&x, &[7, 13])).unwrap();
    let want = dot(&x, &x);
    let rel = (got - want).abs() / want;
    eprintln!("sum_squares: rel_err {rel:.3e}");
    assert!(rel < 1e-12, "sum_squares {got} vs {want}");
    let b = ops::cast(&f32_tensor(&x, &[7, 13]), DType::BF16).unwrap();
    assert!(matches!(ops::sum_squares(&b), Err(Error::DType { .. })));
}

// ---------------------------------------------------------------------------------------------
// adamw

/// PyTorch AdamW written out in f64: decoupled decay, moments, bias-corrected update.
#[allow(clippy::too_many_arguments)]
fn adamw_ref(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    (lr, b1, b2, eps, wd): (f64, f64, f64, f64, f64),
    step: u64,
) {
    let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
    for k in 0..p.len() {
        p[k] *= 1.0 - lr * wd;
        m[k] = b1 * m[k] + (1.0 - b1) * g[k];
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k];
        p[k] -= lr / bc1 * m[k] / (v[k].sqrt() / bc2.sqrt() + eps);
    }
}

#[test]
fn adamw_matches_reference_over_several_steps() {
    let n = 7 * 13;
    // beta1 = 0.9 takes torch.lerp's first branch (weight 0.1), beta1 = 0.3 its second (0.7).
    for (case, b1) in [(0u64, 0.9), (1, 0.3)] {
        let hp = (3e-2, b1, 0.95, 1e-8, 0.1);
        let mut p = draw(n, 120 + case);
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let mut tp = f32_tensor(&p, &[7, 13]);
        let mut tm = Tensor::zeros(&[7, 13], DType::F32, &CPU).unwrap();
        let mut tv = Tensor::zeros(&[7, 13], DType::F32, &CPU).unwrap();
        let mut working = Tensor::zeros(&[7, 13], DType::BF16, &CPU).unwrap();
        for step in 1..=5u64 {
            let g = draw(n, 1000 * (case + 1) + step);
            let params = ops::AdamWParams {
                lr: hp.0,
                beta1: hp.1,
                beta2: hp.2,
                eps: hp.3,
                weight_decay: hp.4,
                step,
            };
            let tg = f32_tensor(&g, &[7, 13]);
            ops::adamw_step(&mut tp, &tg, &mut tm, &mut tv, &params, Some(&mut working)).unwrap();
            adamw_ref(&mut p, &g, &mut m, &mut v, hp, step);
        }
        check(
            &format!("adamw beta1={b1} master after 5 steps"),
            &host(&tp),
            &p,
            1e-5,
        );
        check(
            &format!("adamw beta1={b1} m after 5 steps"),
            &host(&tm),
            &m,
            1e-5,
        );
        check(
            &format!("adamw beta1={b1} v after 5 steps"),
            &host(&tv),
            &v,
            1e-5,
        );
        // The working copy is the updated master rounded to bf16.
        assert_eq!(host(&working), host(&ops::cast(&tp, DType::BF16).unwrap()));
    }

    // step 0, mismatched shapes and a non-bf16 working copy are errors.
    let mut p = Tensor::zeros(&[3], DType::F32, &CPU).unwrap();
    let (mut m, mut v) = (p.try_clone().unwrap(), p.try_clone().unwrap());
    let g = p.try_clone().unwrap();
    let mut params = ops::AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 0,
    };
    assert!(ops::adamw_step(&mut p, &g, &mut m, &mut v, &params, None).is_err());
    params.step = 1;
    let g2 = Tensor::zeros(&[4], DType::F32, &CPU).unwrap();
    assert!(matches!(
        ops::adamw_step(&mut p, &g2, &mut m, &mut v, &params, None),
        Err(Error::Shape { .. })
    ));
    let mut w32 = Tensor::zeros(&[3], DType::F32, &CPU).unwrap();
    assert!(matches!(
        ops::adamw_step(&mut p, &g, &mut m, &mut v, &params, Some(&mut w32)),
        Err(Error::DType { .. })
    ));
    assert!(ops::adamw_step(&mut p, &g, &mut m, &mut v, &params, None).is_ok());
}

// ---------------------------------------------------------------------------------------------
// empty inputs

/// N = 0 (an empty micro-batch) must work, not panic, for every op.
#[test]
fn ops_accept_zero_tokens() {
    let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &CPU).unwrap();
    let no_ids = Tensor::from_u32(vec![], &[0], &CPU).unwrap();
    let (x, w) = (z(&[0, 13]), z(&[11, 13]));
    assert_eq!(ops::linear(&x, &w, None).unwrap().shape(), &[0, 11]);
    let mut dw = z(&[11, 13]);
    let dx =
        ops::linear_backward(&z(&[0, 11]), &x, &w, &mut dw, None, ops::GradStore::Add).unwrap();
    assert_eq!(dx.shape(), &[0, 13]);
    assert!(host(&dw).iter().all(|&g| g == 0.0));
    assert_eq!(ops::gather_rows(&w, &no_ids).unwrap().shape(), &[0, 13]);
    ops::scatter_add_rows(&mut dw, &no_ids, &x).unwrap();
    let (y, rstd) = ops::rmsnorm(&x, &z(&[13]), 1e-5).unwrap();
    assert_eq!((y.shape(), rstd.shape()), (&[0, 13][..], &[0][..]));
    ops::rmsnorm_backward(&x, &x, &z(&[13]), &rstd).unwrap();
    ops::rope(&z(&[0, 2, 8]), &no_ids, 1e4).unwrap();
    ops::swiglu(&x, &x).unwrap();
    let cu = Tensor::from_u32(vec![0], &[1], &CPU).unwrap();
    let (q, kv) = (z(&[0, 6, 8]), z(&[0, 2, 8]));
    let (out, lse) = ops::attention(&q, &kv, &kv, &cu, 1.0).unwrap();
    ops::attention_backward(&out, &q, &kv, &kv, &out, &lse, &cu, 1.0).unwrap();
    let (_, _, lse) = ops::logsoftmax_gather(&z(&[0, 37]), &no_ids, 1.0).unwrap();
    ops::logsoftmax_gather_backward(&z(&[0]), None, &z(&[0, 37]), &no_ids, &lse, 1.0).unwrap();
    assert_eq!(ops::sum_squares(&x).unwrap(), 0.0);
}
