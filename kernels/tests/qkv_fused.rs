//! The ops of the training step's fused q/k/v projection: `qkv_rope` (bias, RoPE and the head
//! split of the one GEMM's f32 output, no cache) against bias + `rope` per projection on the CPU,
//! `concat_cols` against a host concatenation, and `split_store` (written and added, blocks at
//! any offset) against host slices; on every device (CPU, plus CUDA when present).

use half::bf16;
use kernels::ops::{self, GradStore, RopeTable};
use kernels::testing::{randn_vec, rel_err, test_devices};
use kernels::{DType, Device, Tensor};

const CPU: Device = Device::Cpu;

fn bf16_exact(v: Vec<f32>) -> Vec<f32> {
    v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
}

fn t(data: &[f32], shape: &[usize], dev: &Device, dtype: DType) -> Tensor {
    let x = Tensor::from_f32(data.to_vec(), shape, dev).unwrap();
    if dtype == DType::F32 {
        x
    } else {
        ops::cast(&x, dtype).unwrap()
    }
}

/// Columns [c0, c0 + w) of a row-major [n, width] matrix.
fn cols(x: &[f32], width: usize, c0: usize, w: usize) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|row| row[c0..c0 + w].to_vec())
        .collect()
}

#[test]
fn qkv_rope_matches_bias_then_rope_per_projection() {
    for dev in test_devices() {
        let dtypes = if dev.is_cuda() {
            vec![DType::F32, DType::BF16]
        } else {
            vec![DType::F32]
        };
        // (N, H, K, D): Qwen-like GQA with D/2 % 8 == 0 (8 pairs per thread on the GPU), and not.
        for (n, h, k, d) in [(37, 6, 2, 64), (11, 4, 4, 24)] {
            let width = (h + 2 * k) * d;
            let seed = 900 + (n * width) as u64;
            let acc = randn_vec(n * width, seed);
            let b = bf16_exact(randn_vec(width, seed + 1));
            let pos: Vec<u32> = (0..n as u32).map(|i| (i * 389) % 3000).collect();
            // Reference: acc + b (f32), then RoPE on q and k; v as it is.
            let xb: Vec<f32> = acc
                .chunks_exact(width)
                .flat_map(|row| row.iter().zip(&b).map(|(x, b)| x + b))
                .collect();
            let p_cpu = Tensor::from_u32(pos.clone(), &[n], &CPU).unwrap();
            let rope = |c0: usize, heads: usize| {
                let part = t(
                    &cols(&xb, width, c0, heads * d),
                    &[n, heads, d],
                    &CPU,
                    DType::F32,
                );
                ops::rope(&part, &p_cpu, 1e4).unwrap().to_vec_f32().unwrap()
            };
            let want = [
                rope(0, h),
                rope(h * d, k),
                cols(&xb, width, (h + k) * d, k * d),
            ];
            for &dtype in &dtypes {
                // With a table covering some positions (the rest computed), and without.
                let table = RopeTable::new(1500, d, 1e4, &dev).unwrap();
                for tab in [Some(&table), None] {
                    let at = t(&acc, &[n, width], &dev, DType::F32);
                    let bt = t(&b, &[width], &dev, dtype);
                    let p = Tensor::from_u32(pos.clone(), &[n], &dev).unwrap();
                    let out = ops::qkv_rope(&at, Some(&bt), &p, h, k, dtype, 1e4, tab).unwrap();
                    let got = [&out.q, &out.k, &out.v];
                    let shapes = [[n, h, d], [n, k, d], [n, k, d]];
                    for ((g, w), (s, name)) in
                        got.iter().zip(&want).zip(shapes.iter().zip("qkv".chars()))
                    {
                        assert_eq!((g.shape(), g.dtype()), (&s[..], dtype));
                        let e = rel_err(&g.to_vec_f32().unwrap(), w);
                        // f32: the same f32 cos/sin (the GPU's from f64, rounded); bf16: the
                        // value rounded before the rotation and the result rounded again.
                        let tol = if dtype == DType::F32 { 1e-5 } else { 8e-3 };
                        assert!(
                            e <= tol,
                            "qkv_rope {name} {n}x{h}/{k}x{d} [{dtype}] on {dev} (table {}): {e:.3e}",
                            tab.is_some()
                        );
                    }
                }
            }
        }
    }
    // Widths that are not (H + 2K)·D, and bf16 on the CPU, are errors.
    let acc = Tensor::zeros(&[2, 40], DType::F32, &CPU).unwrap();
    let p = Tensor::from_u32(vec![0, 1], &[2], &CPU).unwrap();
    assert!(ops::qkv_rope(&acc, None, &p, 3, 2, DType::F32, 1e4, None).is_err());
    assert!(ops::qkv_rope(&acc, None, &p, 2, 1, DType::BF16, 1e4, None).is_err());
    assert!(ops::qkv_rope(&acc, None, &p, 2, 1, DType::F32, 1e4, None).is_ok());
}

#[test]
fn concat_cols_places_each_part_in_its_columns() {
    for dev in test_devices() {
        let dtypes = if dev.is_cuda() {
            vec![DType::F32, DType::BF16]
        } else {
            vec![DType::F32]
        };
        let n = 13;
        let widths = [24, 8, 3];
        let parts: Vec<Vec<f32>> = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| bf16_exact(randn_vec(n * w, 40 + i as u64)))
            .collect();
        let want: Vec<f32> = (0..n)
            .flat_map(|r| {
                parts
                    .iter()
                    .zip(&widths)
                    .flat_map(move |(p, &w)| p[r * w..(r + 1) * w].to_vec())
            })
            .collect();
        for dtype in dtypes {
            let ts: Vec<Tensor> = parts
                .iter()
                .zip(&widths)
                .map(|(p, &w)| t(p, &[n, w], &dev, dtype))
                .collect();
            let refs: Vec<&Tensor> = ts.iter().collect();
            let out = ops::concat_cols(&refs).unwrap();
            assert_eq!((out.shape(), out.dtype()), (&[n, 35][..], dtype));
            assert_eq!(
                out.to_vec_f32().unwrap(),
                want,
                "concat_cols [{dtype}] on {dev}"
            );
        }
        let short = Tensor::zeros(&[n - 1, 2], DType::F32, &dev).unwrap();
        let first = Tensor::zeros(&[n, 2], DType::F32, &dev).unwrap();
        assert!(ops::concat_cols(&[&first, &short]).is_err());
    }
}

#[test]
fn split_store_writes_or_adds_each_block() {
    for dev in test_devices() {
        // Blocks at offsets 0, 3, 8, 40: the GPU adds aligned blocks in place and copies the
        // others first (a block at offset 3 is not 16-byte aligned).
        let sizes = [3usize, 5, 32, 9];
        let total: usize = sizes.iter().sum();
        let src = randn_vec(total, 77);
        let old: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| randn_vec(s, 80 + i as u64))
            .collect();
        for store in [GradStore::Overwrite, GradStore::Add] {
            let mut parts: Vec<Tensor> = old
                .iter()
                .map(|v| Tensor::from_f32(v.clone(), &[v.len()], &dev).unwrap())
                .collect();
            let mut refs: Vec<&mut Tensor> = parts.iter_mut().collect();
            let st = Tensor::from_f32(src.clone(), &[total], &dev).unwrap();
            ops::split_store(&st, &mut refs, store).unwrap();
            let mut off = 0;
            for (p, o) in parts.iter().zip(&old) {
                let block = &src[off..off + o.len()];
                let want: Vec<f32> = match store {
                    GradStore::Overwrite => block.to_vec(),
                    GradStore::Add => o.iter().zip(block).map(|(a, b)| a + b).collect(),
                };
                assert_eq!(p.to_vec_f32().unwrap(), want, "{store:?} at {off} on {dev}");
                off += o.len();
            }
        }
        // Sizes that do not add up are an error.
        let st = Tensor::zeros(&[10], DType::F32, &dev).unwrap();
        let mut a = Tensor::zeros(&[4], DType::F32, &dev).unwrap();
        assert!(ops::split_store(&st, &mut [&mut a], GradStore::Add).is_err());
    }
}
