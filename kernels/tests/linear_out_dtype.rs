//! `linear_out`: linear with the output dtype chosen by the caller (the inputs' dtype, or f32 from
//! bf16 inputs: the LM head's logits). The f32 output of bf16 inputs must be the f32 accumulator
//! itself, so it is compared with the CPU f32 product of the same (bf16-representable) values at
//! f32 tolerance: a bf16-rounded output would be off by ~2e-3 relative.

use half::bf16;
use kernels::ops::linear::linear_out;
use kernels::testing::{randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};

/// `n` normal values times `scale`, rounded to what bf16 holds (exact in f32 too).
fn bf16_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    randn_vec(n, seed)
        .into_iter()
        .map(|v| bf16::from_f32(v * scale).to_f32())
        .collect()
}

fn on(data: &[f32], shape: &[usize], device: &Device, dtype: DType) -> Tensor {
    let t = Tensor::from_f32(data.to_vec(), shape, &Device::Cpu).unwrap();
    let t = if dtype == DType::BF16 {
        ops::cast(&t, DType::BF16).unwrap()
    } else {
        t
    };
    t.to_device(device).unwrap()
}

#[test]
fn linear_out_in_the_input_dtype_is_linear() {
    let (n, i, o) = (5, 7, 3);
    let (x, w, b) = (
        bf16_values(n * i, 1, 1.0),
        bf16_values(o * i, 2, 0.3),
        bf16_values(o, 3, 1.0),
    );
    let cpu = Device::Cpu;
    let (tx, tw, tb) = (
        on(&x, &[n, i], &cpu, DType::F32),
        on(&w, &[o, i], &cpu, DType::F32),
        on(&b, &[o], &cpu, DType::F32),
    );
    let y = linear_out(&tx, &tw, Some(&tb), DType::F32).unwrap();
    let want = ops::linear(&tx, &tw, Some(&tb)).unwrap();
    assert_eq!(y.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
    // f32 inputs cannot be narrowed to bf16 by the product, nor turned into ids.
    let e = linear_out(&tx, &tw, None, DType::BF16).unwrap_err();
    assert!(e.to_string().contains("output dtype bf16"), "{e}");
    assert!(linear_out(&tx, &tw, None, DType::U32).is_err());
}

#[test]
fn cuda_bf16_inputs_give_unrounded_f32_outputs() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    for (case, &(n, i, o, bias)) in [(67, 129, 95, true), (300, 64, 1000, false), (1, 3, 1, true)]
        .iter()
        .enumerate()
    {
        let seed = 10 * case as u64;
        let (x, w, b) = (
            bf16_values(n * i, seed, 1.0),
            bf16_values(o * i, seed + 1, 0.3),
            bf16_values(o, seed + 2, 1.0),
        );
        let cpu = Device::Cpu;
        let want = ops::linear(
            &on(&x, &[n, i], &cpu, DType::F32),
            &on(&w, &[o, i], &cpu, DType::F32),
            bias.then(|| on(&b, &[o], &cpu, DType::F32)).as_ref(),
        )
        .unwrap()
        .to_vec_f32()
        .unwrap();
        let (gx, gw, gb) = (
            on(&x, &[n, i], &dev, DType::BF16),
            on(&w, &[o, i], &dev, DType::BF16),
            on(&b, &[o], &dev, DType::BF16),
        );
        let y = linear_out(&gx, &gw, bias.then_some(&gb), DType::F32).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        assert_eq!(y.shape(), &[n, o]);
        let e32 = rel_err(&y.to_vec_f32().unwrap(), &want);
        // The bf16 output of the same product, for contrast: one rounding, ~1e-3 relative.
        let y16 = linear_out(&gx, &gw, bias.then_some(&gb), DType::BF16).unwrap();
        assert_eq!(y16.dtype(), DType::BF16);
        let e16 = rel_err(&y16.to_vec_f32().unwrap(), &want);
        eprintln!("linear {n}x{i}->{o} bias {bias}: f32 out rel err {e32:.2e}, bf16 out {e16:.2e}");
        // Products of bf16 values are exact in f32; only the summation order differs.
        assert!(e32 <= 1e-5, "f32 output of bf16 inputs: rel err {e32:.3e}");
        assert!(e16 <= 1e-2, "bf16 output: rel err {e16:.3e}");
    }
}

/// A bf16 output is the exact sum (product + bias) rounded to bf16 once: each element equals the
/// CPU f32 result rounded to bf16, but for rare ties that the f32 summation order tips (then one
/// bf16 ulp). Rounding the product first and adding the bias after (what cuBLAS does with a bf16
/// C and beta = 1) misses by many ulps wherever product and bias nearly cancel.
#[test]
fn cuda_bf16_output_with_bias_is_rounded_once() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    let (n, i, o) = (96, 64, 80);
    let (x, w, b) = (
        bf16_values(n * i, 41, 1.0),
        bf16_values(o * i, 42, 0.125),
        bf16_values(o, 43, 1.0),
    );
    let cpu = Device::Cpu;
    let want: Vec<f32> = ops::linear(
        &on(&x, &[n, i], &cpu, DType::F32),
        &on(&w, &[o, i], &cpu, DType::F32),
        Some(&on(&b, &[o], &cpu, DType::F32)),
    )
    .unwrap()
    .to_vec_f32()
    .unwrap()
    .into_iter()
    .map(|v| bf16::from_f32(v).to_f32())
    .collect();
    let got = ops::linear(
        &on(&x, &[n, i], &dev, DType::BF16),
        &on(&w, &[o, i], &dev, DType::BF16),
        Some(&on(&b, &[o], &dev, DType::BF16)),
    )
    .unwrap()
    .to_vec_f32()
    .unwrap();
    let mut differ = 0;
    for (k, (&g, &r)) in got.iter().zip(&want).enumerate() {
        if g != r {
            differ += 1;
            // One bf16 ulp at the reference's magnitude: 2^(exponent - 7).
            let ulp = 2f32.powi(r.abs().max(f32::MIN_POSITIVE).log2().floor() as i32 - 7);
            assert!(
                (g - r).abs() <= ulp,
                "element {k}: {g} on the GPU vs {r} (CPU f32 sum rounded once)"
            );
        }
    }
    eprintln!(
        "biased bf16 linear: {differ} of {} elements one ulp off",
        got.len()
    );
    assert!(
        differ * 100 <= got.len(),
        "{differ} of {} elements differ",
        got.len()
    );
}
