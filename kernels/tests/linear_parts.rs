//! `linear_backward_input(_acc)` and `linear_backward_weight`, the two halves of the linear
//! backward, give the bits of `linear_backward(_acc)` on the same device (the same GEMMs and
//! kernels): f32 on the CPU, f32 and bf16 on a GPU, with and without a bias gradient, for both
//! ways of storing dw. Bad shapes are errors naming the op.

use kernels::ops::{self, GradStore};
use kernels::testing::{randn_vec, test_devices, test_dtypes};
use kernels::{DType, Device, Tensor};

fn t(seed: u64, shape: &[usize], dev: &Device, dtype: DType) -> Tensor {
    let x = Tensor::from_f32(randn_vec(shape.iter().product(), seed), shape, dev).unwrap();
    if dtype == DType::F32 {
        x
    } else {
        ops::cast(&x, dtype).unwrap()
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec_f32()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn the_halves_give_the_bits_of_the_whole_backward() {
    for dev in test_devices() {
        for dtype in test_dtypes(&dev) {
            for (n, i, o) in [(33, 40, 24), (64, 128, 96)] {
                for (store, bias) in [
                    (GradStore::Overwrite, false),
                    (GradStore::Add, true),
                    (GradStore::Overwrite, true),
                ] {
                    let what = format!("{dev} {dtype} {n}x{i}x{o} {store:?} bias {bias}");
                    let x = t(1, &[n, i], &dev, dtype);
                    let w = t(2, &[o, i], &dev, dtype);
                    let dy = t(3, &[n, o], &dev, dtype);
                    let dw0 = || t(4, &[o, i], &dev, DType::F32);
                    let db0 = || bias.then(|| t(5, &[o], &dev, DType::F32));

                    let (mut dw, mut db) = (dw0(), db0());
                    let dx =
                        ops::linear_backward(&dy, &x, &w, &mut dw, db.as_mut(), store).unwrap();
                    let (mut dw2, mut db2) = (dw0(), db0());
                    let dx2 = ops::linear_backward_input(&dy, &w).unwrap();
                    ops::linear_backward_weight(&dy, &x, &mut dw2, db2.as_mut(), store).unwrap();
                    assert_eq!(bits(&dx2), bits(&dx), "{what}: dx");
                    assert_eq!(bits(&dw2), bits(&dw), "{what}: dw");
                    // db is summed with atomics on a GPU, but at ≤ 64 rows by one block of rows:
                    // one addition a column, so the bits are reproducible.
                    if let (Some(a), Some(b)) = (&db, &db2) {
                        assert_eq!(bits(b), bits(a), "{what}: db");
                    }

                    let mut acc = t(6, &[n, i], &dev, dtype);
                    let (mut dw, mut db) = (dw0(), db0());
                    ops::linear_backward_acc(&dy, &x, &w, &mut dw, db.as_mut(), store, &mut acc)
                        .unwrap();
                    let mut acc2 = t(6, &[n, i], &dev, dtype);
                    ops::linear_backward_input_acc(&dy, &w, &mut acc2).unwrap();
                    assert_eq!(bits(&acc2), bits(&acc), "{what}: dx accumulated");
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_op() {
    for dev in test_devices() {
        let w = t(2, &[24, 40], &dev, DType::F32);
        let dy = t(3, &[33, 23], &dev, DType::F32); // O 23, not w's 24
        let e = ops::linear_backward_input(&dy, &w).unwrap_err().to_string();
        assert!(e.contains("linear_backward_input"), "{e}");
        let mut acc = t(6, &[32, 40], &dev, DType::F32); // N 32, not dy's 33
        let dy = t(3, &[33, 24], &dev, DType::F32);
        let e = ops::linear_backward_input_acc(&dy, &w, &mut acc)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linear_backward_input_acc"), "{e}");
        let x = t(1, &[33, 40], &dev, DType::F32);
        let mut dw = t(4, &[24, 41], &dev, DType::F32);
        let e = ops::linear_backward_weight(&dy, &x, &mut dw, None, GradStore::Add)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linear_backward_weight"), "{e}");
    }
}
