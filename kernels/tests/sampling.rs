//! `sample_tokens`: greedy picks the argmax with the softmax log-prob, banned ids are never
//! emitted, temperature draws follow the softmax (chi-square, fixed draws), top-k / top-p never
//! emit a filtered id and follow the renormalised softmax, and the GPU kernel picks the same tokens
//! as the CPU reference for the same draws (f32 and bf16 logits, real vocabulary sizes, with and
//! without top-k / top-p). Runs on the CPU, and on the GPU when present.

use half::bf16;
use kernels::cuda::{launch, nvrtc, sampling as cs};
use kernels::ops::sampling::uniform_of_draw;
use kernels::ops::{read_samples, sample_tokens, SampleSpec};
use kernels::testing::{randn_vec, test_devices};
use kernels::{ops, DType, Device, Tensor};

/// A well-spread 32-bit draw for index `i` (splitmix64), so that draws cover (0, 1) evenly.
fn draw_of(i: u64) -> u32 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

fn logits_on(v: &[f32], rows: usize, dev: &Device, dtype: DType) -> Tensor {
    let t = Tensor::from_f32(v.to_vec(), &[rows, v.len() / rows], &Device::Cpu).unwrap();
    let t = if dtype == DType::BF16 {
        ops::cast(&t, DType::BF16).unwrap()
    } else {
        t
    };
    t.to_device(dev).unwrap()
}

fn run(logits: &Tensor, specs: &[SampleSpec]) -> Vec<(u32, f32)> {
    let spec = SampleSpec::pack(specs, logits.device()).unwrap();
    read_samples(&sample_tokens(logits, &spec).unwrap()).unwrap()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

const LOGITS: [f32; 6] = [1.0, 0.5, -0.3, 2.0, 0.0, -1.0];

#[test]
fn greedy_is_the_argmax_with_the_softmax_logprob_and_skips_banned_ids() {
    for dev in test_devices() {
        let logits = logits_on(&LOGITS, 1, &dev, DType::F32);
        let spec = |banned: Vec<u32>| SampleSpec {
            banned,
            ..SampleSpec::new(0, 0.0, 12345)
        };
        let out = run(&logits, &[spec(vec![]), spec(vec![3]), spec(vec![3, 0])]);
        let x: Vec<f64> = LOGITS.iter().map(|&v| v as f64).collect();
        let p = softmax(&x);
        assert_eq!(out[0].0, 3, "{dev}");
        assert!((out[0].1 as f64 - p[3].ln()).abs() < 1e-5, "{dev}: {out:?}");
        // Banning id 3 renormalises over the rest.
        let mut x2 = x.clone();
        x2.remove(3);
        let p2 = softmax(&x2);
        assert_eq!(out[1].0, 0, "{dev}");
        assert!(
            (out[1].1 as f64 - p2[0].ln()).abs() < 1e-5,
            "{dev}: {out:?}"
        );
        assert_eq!(out[2].0, 1, "{dev}");
    }
}

#[test]
fn temperature_draws_follow_the_softmax_and_never_emit_banned_ids() {
    // 30,000 outputs drawing from one row with evenly spread draws; chi-square against softmax(x/T)
    // over the allowed ids. Upper 0.1% point of chi-square with 4 df: 18.467.
    let t = 0.7f32;
    let n = 30_000;
    for dev in test_devices() {
        let logits = logits_on(&LOGITS, 1, &dev, DType::F32);
        let specs: Vec<SampleSpec> = (0..n)
            .map(|i| SampleSpec {
                banned: vec![2],
                ..SampleSpec::new(0, t, draw_of(i as u64))
            })
            .collect();
        let out = run(&logits, &specs);
        let mut counts = [0usize; 6];
        let mut lps = [None; 6];
        for &(tok, lp) in &out {
            counts[tok as usize] += 1;
            lps[tok as usize] = Some(lp);
        }
        assert_eq!(counts[2], 0, "{dev}: emitted the banned id");
        let allowed = [0usize, 1, 3, 4, 5];
        let z: Vec<f64> = allowed
            .iter()
            .map(|&i| LOGITS[i] as f64 / t as f64)
            .collect();
        let p = softmax(&z);
        let chi2: f64 = allowed
            .iter()
            .zip(&p)
            .map(|(&i, &p)| {
                let e = p * n as f64;
                (counts[i] as f64 - e).powi(2) / e
            })
            .sum();
        assert!(
            chi2 < 18.467,
            "{dev}: chi2 {chi2} counts {counts:?} p {p:?}"
        );
        for (&i, &p) in allowed.iter().zip(&p) {
            let lp = lps[i].expect("every allowed id drawn");
            assert!(
                (lp as f64 - p.ln()).abs() < 1e-5,
                "{dev} id {i}: {lp} vs {}",
                p.ln()
            );
        }
    }
}

#[test]
fn the_draw_picks_by_inverse_cdf_in_id_order() {
    // Two equal logits: u < 1/2 picks id 0, u > 1/2 picks id 1.
    let logits = logits_on(&[0.0, 0.0], 1, &Device::Cpu, DType::F32);
    let spec = |draw| SampleSpec::new(0, 1.0, draw);
    let out = run(
        &logits,
        &[
            spec(0),
            spec(u32::MAX / 2 - 10),
            spec(u32::MAX / 2 + 10),
            spec(u32::MAX),
        ],
    );
    let tokens: Vec<u32> = out.iter().map(|o| o.0).collect();
    assert_eq!(tokens, vec![0, 0, 1, 1]);
    assert!(uniform_of_draw(0) > 0.0 && uniform_of_draw(u32::MAX) < 1.0);
}

#[test]
fn bad_specs_are_clear_errors() {
    let logits = logits_on(&LOGITS, 1, &Device::Cpu, DType::F32);
    let bad_row = SampleSpec::new(1, 1.0, 0);
    let spec = SampleSpec::pack(&[bad_row], &Device::Cpu).unwrap();
    let e = sample_tokens(&logits, &spec).unwrap_err();
    assert!(e.to_string().contains("row 1"), "{e}");
    let neg = SampleSpec::new(0, -1.0, 0);
    let e = SampleSpec::pack(&[neg], &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("temperature"), "{e}");
    let p0 = SampleSpec {
        top_p: 0.0,
        ..SampleSpec::new(0, 1.0, 0)
    };
    let e = SampleSpec::pack(&[p0], &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("top_p"), "{e}");
}

/// Draws `n` outputs from row 0 of `x` with `spec_of(i)` and returns the counts per id and the
/// log-prob reported for each id.
fn draw_counts(
    x: &[f32],
    dev: &Device,
    n: usize,
    spec_of: impl Fn(usize) -> SampleSpec,
) -> (Vec<usize>, Vec<Option<f32>>) {
    let logits = logits_on(x, 1, dev, DType::F32);
    let specs: Vec<SampleSpec> = (0..n).map(spec_of).collect();
    let mut counts = vec![0usize; x.len()];
    let mut lps = vec![None; x.len()];
    for (tok, lp) in run(&logits, &specs) {
        counts[tok as usize] += 1;
        lps[tok as usize] = Some(lp);
    }
    (counts, lps)
}

/// Chi-square of `counts` against softmax(x / t) renormalised over `kept`; ids outside `kept`
/// must never be drawn, and each kept id's log-prob must be ln of its renormalised probability.
fn check_kept(
    dev: &Device,
    x: &[f32],
    t: f32,
    kept: &[usize],
    counts: &[usize],
    lps: &[Option<f32>],
    chi2_max: f64,
) {
    for (i, &c) in counts.iter().enumerate() {
        assert!(
            kept.contains(&i) || c == 0,
            "{dev}: emitted filtered id {i} ({c} times)"
        );
    }
    let z: Vec<f64> = kept.iter().map(|&i| x[i] as f64 / t as f64).collect();
    let p = softmax(&z);
    let n: usize = counts.iter().sum();
    let chi2: f64 = kept
        .iter()
        .zip(&p)
        .map(|(&i, &p)| (counts[i] as f64 - p * n as f64).powi(2) / (p * n as f64))
        .sum();
    assert!(
        chi2 < chi2_max,
        "{dev}: chi2 {chi2} counts {counts:?} p {p:?}"
    );
    for (&i, &p) in kept.iter().zip(&p) {
        let lp = lps[i].expect("every kept id drawn");
        assert!(
            (lp as f64 - p.ln()).abs() < 1e-5,
            "{dev} id {i}: {lp} vs {}",
            p.ln()
        );
    }
}

#[test]
fn top_k_and_top_p_never_emit_a_filtered_id_and_renormalise() {
    // LOGITS by size: id 3 (2.0), 0 (1.0), 1 (0.5), 4 (0.0), 2 (-0.3), 5 (-1.0). 20,000 draws per
    // case; upper 0.1% points of chi-square: 2 df 13.816, 1 df 10.828.
    let n = 20_000;
    for dev in test_devices() {
        // Top-k 3 at T = 1: {3, 0, 1}.
        let (c, lp) = draw_counts(&LOGITS, &dev, n, |i| SampleSpec {
            top_k: 3,
            ..SampleSpec::new(0, 1.0, draw_of(i as u64))
        });
        check_kept(&dev, &LOGITS, 1.0, &[0, 1, 3], &c, &lp, 13.816);
        // Top-p 0.6 at T = 1: softmax puts ~0.47 on id 3, ~0.17 on id 0: the nucleus is {3, 0}.
        let (c, lp) = draw_counts(&LOGITS, &dev, n, |i| SampleSpec {
            top_p: 0.6,
            ..SampleSpec::new(0, 1.0, draw_of(7 + i as u64))
        });
        check_kept(&dev, &LOGITS, 1.0, &[0, 3], &c, &lp, 10.828);
        // Top-k 4 then top-p 0.9 at T = 0.5 with id 3 banned: top-4 of the rest {0, 1, 4, 2},
        // weights at T = 0.5 ∝ e^2, e^1, 1, e^-0.6: 0.9 of their mass needs {0, 1, 4}.
        let (c, lp) = draw_counts(&LOGITS, &dev, n, |i| SampleSpec {
            top_k: 4,
            top_p: 0.9,
            banned: vec![3],
            ..SampleSpec::new(0, 0.5, draw_of(99 + i as u64))
        });
        check_kept(&dev, &LOGITS, 0.5, &[0, 1, 4], &c, &lp, 13.816);
    }
}

#[test]
fn ties_at_a_threshold_are_all_kept() {
    // Ids 1, 2, 3 tie for second place: top-k 2 keeps the max and all three tied ids.
    let x = [3.0f32, 1.0, 1.0, 1.0, -2.0];
    for dev in test_devices() {
        let (c, lp) = draw_counts(&x, &dev, 20_000, |i| SampleSpec {
            top_k: 2,
            ..SampleSpec::new(0, 1.0, draw_of(5 + i as u64))
        });
        // 3 df: 16.266.
        check_kept(&dev, &x, 1.0, &[0, 1, 2, 3], &c, &lp, 16.266);
    }
}

/// The GPU kernel against the CPU reference with the same draws: identical tokens (a draw would
/// have to land within rounding of a CDF boundary to differ; none of these fixed draws does) and
/// log-probs within 1e-4.
#[test]
fn cuda_matches_the_cpu_reference_token_for_token() {
    let devs: Vec<Device> = test_devices().into_iter().filter(|d| d.is_cuda()).collect();
    let Some(dev) = devs.first() else {
        return;
    };
    for (v, rows) in [(1000usize, 7usize), (49152, 5), (151936, 3)] {
        let x = randn_vec(rows * v, v as u64);
        // Spread the logits like a language model's (a few strong tokens).
        let x: Vec<f32> = x.iter().map(|a| a * 3.0).collect();
        for dtype in [DType::F32, DType::BF16] {
            let host: Vec<f32> = match dtype {
                DType::BF16 => x.iter().map(|&a| bf16::from_f32(a).to_f32()).collect(),
                _ => x.clone(),
            };
            let mut specs = Vec::new();
            for i in 0..96u64 {
                // Every third group of 32 filters: top-k 50, top-p 0.9, both, or a top-k larger
                // than the vocabulary (a no-op), with and without banned ids.
                let (top_k, top_p) = match (i / 32, i % 4) {
                    (0, _) => (0, 1.0),
                    (1, 0) => (50, 1.0),
                    (1, 1) => (0, 0.9),
                    (1, 2) => (40, 0.8),
                    (1, _) => (v as u32 + 5, 0.95),
                    (_, 0) => (1, 1.0),
                    (_, 1) => (0, 0.05),
                    (_, 2) => (3000, 0.99),
                    _ => (7, 0.5),
                };
                specs.push(SampleSpec {
                    row: (i % rows as u64) as u32,
                    temperature: [0.0, 1.0, 0.7, 1.3][(i % 4) as usize],
                    top_k,
                    top_p,
                    draw: draw_of(1000 + i),
                    banned: if i % 3 == 0 { vec![5, 17] } else { vec![] },
                });
            }
            let want = run(&logits_on(&host, rows, &Device::Cpu, DType::F32), &specs);
            let got = run(&logits_on(&x, rows, dev, dtype), &specs);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.0, w.0, "V {v} {dtype} spec {i} ({:?}): token", specs[i]);
                assert!(
                    (g.1 - w.1).abs() < 1e-4,
                    "V {v} {dtype} spec {i}: log-prob {} vs {}",
                    g.1,
                    w.1
                );
            }
        }
    }
}

/// The kernel compiles with NVRTC for sm_90 (needs only the NVRTC library, no GPU).
#[test]
fn nvrtc_compiles_the_sampling_kernel() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    let src = cs::source();
    nvrtc::compile_cubin(src.name, &launch::full_source(&src), "sm_90", &[])
        .unwrap_or_else(|e| panic!("sampling.cu: {e}"));
}
