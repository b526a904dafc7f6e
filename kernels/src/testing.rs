//! Test utilities, public so that other crates' tests use the same ones: the devices to test on,
//! seeded random tensors, and error measures.

use std::sync::Once;

use half::bf16;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use crate::{DType, Device, Tensor};

/// The devices a test should run on: the CPU always, plus GPU 0 when CUDA is available.
///
/// With `REALIGN_REQUIRE_GPU=1` a missing GPU panics (so a GPU CI job cannot silently pass on CPU);
/// otherwise it prints "skipped: no GPU" to stderr once per process.
pub fn test_devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    let required = std::env::var("REALIGN_REQUIRE_GPU").is_ok_and(|v| v == "1");
    if crate::cuda::is_available() {
        match Device::cuda(0) {
            Ok(d) => devices.push(d),
            Err(e) => panic!("a CUDA GPU is present but could not be opened: {e}"),
        }
    } else if required {
        panic!(
            "REALIGN_REQUIRE_GPU=1 but no CUDA driver or GPU is available on this machine; \
             unset it to run CPU tests only"
        );
    } else {
        static SKIP_NOTICE: Once = Once::new();
        SKIP_NOTICE.call_once(|| eprintln!("skipped: no GPU"));
    }
    devices
}

/// The float dtypes a test body runs in on `device`: f32 everywhere, bf16 too on a GPU (the CPU
/// backend computes in f32).
pub fn test_dtypes(device: &Device) -> Vec<DType> {
    if device.is_cuda() {
        vec![DType::F32, DType::BF16]
    } else {
        vec![DType::F32]
    }
}

/// `n` standard-normal f32 values from `seed`.
pub fn randn_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// `n` f32 values uniform in `[lo, hi)` from `seed`.
pub fn rand_uniform_vec(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f32>())
        .collect()
}

/// `n` u32 values uniform in `[0, hi)` from `seed`.
pub fn rand_ids_vec(n: usize, hi: u32, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..hi)).collect()
}

/// A standard-normal tensor of `shape` and float `dtype` on `device` (bf16 is rounded from f32).
pub fn randn(shape: &[usize], seed: u64, device: &Device, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    float_tensor(randn_vec(n, seed), shape, device, dtype)
}

/// A tensor uniform in `[lo, hi)` of `shape` and float `dtype` on `device`.
pub fn rand_uniform(
    shape: &[usize],
    lo: f32,
    hi: f32,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Tensor {
    let n = shape.iter().product();
    float_tensor(rand_uniform_vec(n, lo, hi, seed), shape, device, dtype)
}

/// A u32 tensor of ids uniform in `[0, hi)` on `device`.
pub fn rand_ids(shape: &[usize], hi: u32, seed: u64, device: &Device) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_u32(rand_ids_vec(n, hi, seed), shape, device)
        .unwrap_or_else(|e| panic!("rand_ids: could not place tensor on {device}: {e}"))
}

/// Host f32 data as a tensor of float `dtype` on `device`.
pub fn float_tensor(data: Vec<f32>, shape: &[usize], device: &Device, dtype: DType) -> Tensor {
    let t = match dtype {
        DType::F32 => Tensor::from_f32(data, shape, device),
        DType::BF16 => Tensor::from_bf16(
            data.into_iter().map(bf16::from_f32).collect(),
            shape,
            device,
        ),
        DType::U32 => panic!("float_tensor: dtype must be f32 or bf16, got u32"),
    };
    t.unwrap_or_else(|e| panic!("float_tensor: could not place tensor on {device}: {e}"))
}

/// Relative error ‖a − b‖ / ‖b‖ (2-norms, in f64); `b` is the reference. When ‖b‖ = 0 this is ‖a‖.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: lengths differ");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Largest |a[i] − b[i]| (in f64). NaN anywhere gives NaN, so a tolerance check fails.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "max_abs_diff: lengths differ");
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, |m, d| if d.is_nan() || d > m { d } else { m })
}
