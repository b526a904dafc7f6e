//! The ops a training step uses so that nothing waits for the GPU before the step is queued:
//! `grad_clip` + `adamw_step_many_clipped` (the clip / skip decision stays on the device) and the
//! embedding ops with host ids (checked on the host, bounded on the device). Each test body runs on
//! every device (CPU, plus CUDA when present; `REALIGN_REQUIRE_GPU=1` makes a missing GPU fail).

use kernels::ops::{self, AdamWItem, AdamWParams, ClipDecision};
use kernels::testing::{rand_ids_vec, randn_vec, rel_err, test_devices};
use kernels::{DType, Device, Tensor};

fn t(data: &[f32], dev: &Device) -> Tensor {
    Tensor::from_f32(data.to_vec(), &[data.len()], dev).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

/// Gradient-like vectors of odd sizes (one spans several blocks of the multi-tensor kernels).
fn grads_data(seed: u64, scale: f32) -> Vec<Vec<f32>> {
    [1usize, 1000, 40_009, 17]
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            randn_vec(n, seed + k as u64)
                .into_iter()
                .map(|x| x * scale)
                .collect()
        })
        .collect()
}

#[test]
fn grad_clip_gives_the_host_rule() {
    let data = grads_data(10, 0.3);
    let want_norm = data
        .iter()
        .map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    for dev in test_devices() {
        let mut ts: Vec<Tensor> = data.iter().map(|g| t(g, &dev)).collect();
        // An empty tensor (and on the GPU a bf16 one) take the other paths of the sum.
        ts.push(Tensor::zeros(&[0], DType::F32, &dev).unwrap());
        if dev.is_cuda() {
            // (bf16 gradients exist on the GPU only.)
            ts.push(Tensor::zeros(&[5], DType::BF16, &dev).unwrap());
        }
        let refs: Vec<&Tensor> = ts.iter().collect();
        for max in [None, Some(0.5), Some(1e9), Some(0.0)] {
            let d = ops::grad_clip(&refs, max).unwrap().read().unwrap();
            let rel = (d.norm - want_norm).abs() / want_norm;
            println!(
                "{dev} grad_clip max {max:?}: norm {} rel_err {rel:.2e}",
                d.norm
            );
            assert!(rel < 1e-9, "{dev}: norm {} vs {want_norm}", d.norm);
            // Given the norm, the decision is exactly the host rule (same f64 operations).
            assert_eq!(d, ClipDecision::from_norm(d.norm, max), "{dev} max {max:?}");
            assert!(!d.skipped);
        }
        assert!(ops::grad_clip(&refs, Some(-1.0)).is_err());
        assert!(ops::grad_clip(&refs, Some(f64::NAN)).is_err());
    }
    let d = ClipDecision::from_norm(4.0, Some(1.0));
    assert_eq!(d.scale, 1.0 / (4.0 + 1e-6));
    assert_eq!(ClipDecision::from_norm(0.5, Some(1.0)).scale, 1.0);
    assert!(ClipDecision::from_norm(f64::INFINITY, Some(1.0)).skipped);
}

struct State {
    master: Vec<Tensor>,
    grad: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    working: Vec<Tensor>,
}

fn state(grads: &[Vec<f32>], dev: &Device) -> State {
    let mk = |seed: u64, scale: f32| -> Vec<Tensor> {
        grads
            .iter()
            .enumerate()
            .map(|(k, g)| {
                let v: Vec<f32> = randn_vec(g.len(), seed + k as u64)
                    .into_iter()
                    .map(|x| (x * scale).abs())
                    .collect();
                t(&v, dev)
            })
            .collect()
    };
    State {
        master: mk(100, 1.0),
        grad: grads.iter().map(|g| t(g, dev)).collect(),
        m: mk(200, 0.1),
        v: mk(300, 0.01),
        working: grads
            .iter()
            .map(|g| Tensor::zeros(&[g.len()], DType::BF16, dev).unwrap())
            .collect(),
    }
}

fn items(s: &mut State) -> Vec<AdamWItem<'_>> {
    let State {
        master,
        grad,
        m,
        v,
        working,
    } = s;
    master
        .iter_mut()
        .zip(grad.iter_mut())
        .zip(m.iter_mut())
        .zip(v.iter_mut())
        .zip(working.iter_mut())
        .enumerate()
        .map(|(k, ((((master, grad), m), v), w))| AdamWItem {
            master,
            grad,
            m,
            v,
            // Every other parameter has a bf16 working copy, and its own weight decay.
            working: (k % 2 == 0).then_some(w),
            weight_decay: 0.1 * k as f64,
        })
        .collect()
}

fn all(s: &State) -> Vec<Vec<f32>> {
    [&s.master, &s.grad, &s.m, &s.v, &s.working]
        .iter()
        .flat_map(|ts| ts.iter().map(host))
        .collect()
}

const HP: AdamWParams = AdamWParams {
    lr: 1e-2,
    beta1: 0.9,
    beta2: 0.95,
    eps: 1e-8,
    weight_decay: 0.0,
    step: 3,
};

/// `adamw_step_many_clipped` with the device's decision = the host's factor through
/// `adamw_step_many` (CPU reference), the gradients left untouched by both included.
#[test]
fn clipped_update_equals_host_scaled_update() {
    let data = grads_data(20, 0.5);
    let mut reference = state(&data, &Device::Cpu);
    let norm = {
        let refs: Vec<&Tensor> = reference.grad.iter().collect();
        ops::grad_clip(&refs, Some(1.0)).unwrap().read().unwrap()
    };
    assert!(norm.scale < 1.0, "the test must clip (norm {})", norm.norm);
    ops::adamw_step_many(&mut items(&mut reference), &HP, norm.scale as f32).unwrap();
    let want = all(&reference);
    for dev in test_devices() {
        let mut s = state(&data, &dev);
        let clip = {
            let refs: Vec<&Tensor> = s.grad.iter().collect();
            ops::grad_clip(&refs, Some(1.0)).unwrap()
        };
        ops::adamw_step_many_clipped(&mut items(&mut s), &HP, &clip).unwrap();
        for (k, g) in s.grad.iter().enumerate() {
            assert_eq!(
                host(g),
                data[k],
                "{dev}: gradient {k} was modified by the update"
            );
        }
        let got = all(&s);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let rel = rel_err(g, w);
            assert!(rel < 1e-5, "{dev}: buffer {k}: rel_err {rel:.2e}");
        }
        println!("{dev}: clipped AdamW update matches the host-scaled one");
    }
}

/// A NaN gradient: the decision says skip and the update touches nothing.
#[test]
fn non_finite_norm_skips_the_update() {
    let mut data = grads_data(30, 0.5);
    data[2][123] = f32::NAN;
    for dev in test_devices() {
        let mut s = state(&data, &dev);
        let before = all(&s);
        let clip = {
            let refs: Vec<&Tensor> = s.grad.iter().collect();
            ops::grad_clip(&refs, Some(1.0)).unwrap()
        };
        ops::adamw_step_many_clipped(&mut items(&mut s), &HP, &clip).unwrap();
        let d = clip.read().unwrap();
        assert!(d.skipped && d.norm.is_nan(), "{dev}: {d:?}");
        let after = all(&s);
        for (k, (a, b)) in after.iter().zip(&before).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{dev}: buffer {k} changed by a skipped update");
        }
    }
}

#[test]
fn embedding_with_host_ids_matches_and_names_bad_ids() {
    let (r, c, n) = (37usize, 24usize, 300usize);
    let table = randn_vec(r * c, 40);
    let idv = rand_ids_vec(n, r as u32, 41);
    let src = randn_vec(n * c, 42);
    for dev in test_devices() {
        // bf16 tables exist on the GPU only.
        let dtypes = if dev.is_cuda() {
            vec![DType::F32, DType::BF16]
        } else {
            vec![DType::F32]
        };
        for dtype in dtypes {
            let tt = kernels::testing::float_tensor(table.clone(), &[r, c], &dev, dtype);
            let idx = Tensor::from_u32(idv.clone(), &[n], &dev).unwrap();
            let want = host(&ops::gather_rows(&tt, &idx).unwrap());
            let got = host(&ops::gather_rows_host_ids(&tt, &idx, &idv).unwrap());
            assert_eq!(got, want, "{dev} {dtype}: gather_rows_host_ids");
            let s = kernels::testing::float_tensor(src.clone(), &[n, c], &dev, dtype);
            let mut a = Tensor::zeros(&[r, c], DType::F32, &dev).unwrap();
            let mut b = Tensor::zeros(&[r, c], DType::F32, &dev).unwrap();
            ops::scatter_add_rows(&mut a, &idx, &s).unwrap();
            ops::scatter_add_rows_host_ids(&mut b, &idx, &idv, &s).unwrap();
            let rel = rel_err(&host(&b), &host(&a));
            assert!(
                rel < 1e-5,
                "{dev} {dtype}: scatter_add_rows_host_ids rel {rel:.2e}"
            );

            // A bad host id is an error naming it and its position, before any launch.
            let mut bad = idv.clone();
            bad[7] = r as u32 + 5;
            let e = ops::gather_rows_host_ids(&tt, &idx, &bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("id {} at position 7", r + 5)), "{e}");
            let e = ops::scatter_add_rows_host_ids(&mut b, &idx, &bad, &s)
                .unwrap_err()
                .to_string();
            assert!(e.contains("out of range"), "{e}");
            assert!(ops::gather_rows_host_ids(&tt, &idx, &idv[1..]).is_err());
        }
    }
}

/// A caller whose host ids disagree with the device ids (a bug) gets zero rows / skipped rows on
/// the GPU, never an out-of-bounds access.
#[test]
fn gpu_embedding_bounds_ids_the_host_did_not_see() {
    let Some(dev) = test_devices().into_iter().find(|d| d.is_cuda()) else {
        return;
    };
    let (r, c) = (5usize, 8usize);
    let table = t(&randn_vec(r * c, 50), &dev).reshape(&[r, c]).unwrap();
    let device_ids = [1u32, 1 << 30, 3];
    let idx = Tensor::from_u32(device_ids.to_vec(), &[3], &dev).unwrap();
    let out = host(&ops::gather_rows_host_ids(&table, &idx, &[1, 2, 3]).unwrap());
    assert!(
        out[c..2 * c].iter().all(|&x| x == 0.0),
        "out-of-range row must be zero"
    );
    assert_eq!(&out[..c], &host(&table)[c..2 * c]);
    let mut dst = Tensor::zeros(&[r, c], DType::F32, &dev).unwrap();
    let ones = t(&vec![1.0; 3 * c], &dev).reshape(&[3, c]).unwrap();
    ops::scatter_add_rows_host_ids(&mut dst, &idx, &[1, 2, 3], &ones).unwrap();
    let d = host(&dst);
    let row_sum = |k: usize| d[k * c..(k + 1) * c].iter().sum::<f32>();
    assert_eq!(
        (row_sum(0), row_sum(1), row_sum(2), row_sum(3), row_sum(4)),
        (0.0, c as f32, 0.0, c as f32, 0.0)
    );
}
