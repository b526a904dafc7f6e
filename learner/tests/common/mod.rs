//! Test helpers: closeness checks, seeded draws and central finite differences in f64.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// |a - b| <= tol · max(1, |b|), elementwise, with a message naming the index.
pub fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}[{i}]: got {x}, expected {y} (tol {tol})\n got: {a:?}\nwant: {b:?}"
        );
    }
}

pub fn assert_close1(a: f64, b: f64, tol: f64, what: &str) {
    assert_close(&[a], &[b], tol, what);
}

/// Central differences (f(x + h e_i) - f(x - h e_i)) / 2h for every i.
pub fn finite_diff(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + h;
            let fp = f(&xp);
            xp[i] = x[i] - h;
            let fm = f(&xp);
            xp[i] = x[i];
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Seeded normal-ish draws (sum of uniforms is enough for test inputs).
pub fn randn(rng: &mut StdRng, n: usize, scale: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let s: f64 = (0..4).map(|_| rng.random::<f64>() - 0.5).sum();
            s * scale * 1.7
        })
        .collect()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}
