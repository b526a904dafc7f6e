//! Times the CUDA ops at training shapes (Qwen2.5-0.5B: hidden 896, 14 heads, 2 KV heads, head dim
//! 64, ffn 4864, vocab 151936; 8 sequences × 1024 tokens) with CUDA events: warm-up, then the
//! median of 20 runs. Prints one line per op with the achieved TFLOP/s or GB/s.
//!
//! `cargo run -p kernels --release --example cuda_bench` on a machine with a GPU.

use kernels::cuda::attention::{attention_backward_with, attention_with, FaConfig};
use kernels::cuda::CudaDevice;
use kernels::{ops, DType, Device, Tensor};

/// Non-zero pseudo-random values in [-2, 2) (xorshift; fast enough for gigabytes).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn t(shape: &[usize], seed: u64, dev: &Device, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    kernels::testing::float_tensor(rand_vec(n, seed), shape, dev, dtype)
}

/// Median milliseconds of `f` over 20 timed runs after 3 warm-ups.
fn time(cuda: &CudaDevice, mut f: impl FnMut()) -> f64 {
    let ctx = cuda.context();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    for _ in 0..3 {
        f();
    }
    let mut ms: Vec<f64> = (0..20)
        .map(|_| {
            let (a, b) = (ctx.new_event(flags).unwrap(), ctx.new_event(flags).unwrap());
            a.record(cuda.stream()).unwrap();
            f();
            b.record(cuda.stream()).unwrap();
            a.elapsed_ms(&b).unwrap() as f64
        })
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms[ms.len() / 2]
}

fn report(name: &str, ms: f64, flops: f64, bytes: f64) {
    let tflops = flops / ms / 1e9;
    let gbs = bytes / ms / 1e6;
    println!("bench {name:<44} {ms:>9.3} ms  {tflops:>8.1} TFLOP/s  {gbs:>8.0} GB/s");
}

/// ‖a − b‖ / ‖b‖ over the host copies.
fn rel_err(a: &Tensor, b: &Tensor) -> kernels::Result<f64> {
    let (a, b) = (a.to_vec_f32()?, b.to_vec_f32()?);
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    Ok((num / den).sqrt())
}

/// Times every tensor-core attention variant (`FaConfig::candidates`), forward and backward, and
/// checks each one's outputs against the first (the baseline kernels).
#[allow(clippy::too_many_arguments)]
fn attention_variants(
    cuda: &CudaDevice,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
    cu: &Tensor,
    pos: &Tensor,
    scale: f32,
    flops: f64,
    only: Option<&str>,
) -> kernels::Result<()> {
    let mut reference: Option<Vec<Tensor>> = None;
    for (i, (label, cfg)) in FaConfig::candidates().into_iter().enumerate() {
        // The first candidate (the baseline) is always computed: the others are checked against it.
        let timed = only.is_none_or(|o| o == label);
        if !timed && i > 0 {
            continue;
        }
        println!("config {label} {}", cfg.to_text());
        let (out, lse) = attention_with(&cfg, q, k, v, cu, scale)?;
        if timed {
            let ms = time(cuda, || {
                attention_with(&cfg, q, k, v, cu, scale).unwrap();
            });
            report(
                &format!("attention fwd 8x1024 H14 K2 D64 {label}"),
                ms,
                flops,
                0.0,
            );
            let ms = time(cuda, || {
                attention_backward_with(&cfg, dout, q, k, v, &out, &lse, cu, scale, None).unwrap();
            });
            report(
                &format!("attention bwd 8x1024 H14 K2 D64 {label}"),
                ms,
                2.5 * flops,
                0.0,
            );
        }
        let (dq, dk, dv) =
            attention_backward_with(&cfg, dout, q, k, v, &out, &lse, cu, scale, None)?;
        let got = vec![out, lse, dq, dk, dv];
        match &reference {
            None => reference = Some(got),
            Some(want) => {
                let names = ["out", "lse", "dq", "dk", "dv"];
                let errs: Vec<String> = names
                    .iter()
                    .zip(got.iter().zip(want))
                    .map(|(name, (a, b))| Ok(format!("{name} {:.2e}", rel_err(a, b)?)))
                    .collect::<kernels::Result<_>>()?;
                println!("check attention {label} vs base: {}", errs.join(", "));
            }
        }
    }
    // What ops::attention uses (FaConfig::for_dim, REALIGN_ATTENTION_CFG applied).
    if only.is_none_or(|o| o == "default") {
        println!("config default {}", FaConfig::for_dim(64).to_text());
        let ms = time(cuda, || {
            ops::attention(q, k, v, cu, scale).unwrap();
        });
        report("attention fwd 8x1024 H14 K2 D64 default", ms, flops, 0.0);
        let (out, lse) = ops::attention(q, k, v, cu, scale)?;
        let ms = time(cuda, || {
            ops::attention_backward(dout, q, k, v, &out, &lse, cu, scale).unwrap();
        });
        report(
            "attention bwd 8x1024 H14 K2 D64 default",
            ms,
            2.5 * flops,
            0.0,
        );
        // The training backward's attention + RoPE backward: the two rope_backward passes after
        // the attention backward, against the inverse rotation fused into dq's and dk's stores.
        let theta = 1e6;
        let ms = time(cuda, || {
            let (dq, dk, _) =
                ops::attention_backward(dout, q, k, v, &out, &lse, cu, scale).unwrap();
            ops::rope_backward(&dq, pos, theta).unwrap();
            ops::rope_backward(&dk, pos, theta).unwrap();
        });
        report(
            "attention bwd + 2 rope_backward D64 default",
            ms,
            2.5 * flops,
            0.0,
        );
        let ms = time(cuda, || {
            ops::attention_backward_rope(dout, q, k, v, &out, &lse, cu, scale, pos, theta).unwrap();
        });
        report(
            "attention_backward_rope D64 default (fused)",
            ms,
            2.5 * flops,
            0.0,
        );
        let (dq, dk, _) = ops::attention_backward(dout, q, k, v, &out, &lse, cu, scale)?;
        let unfused = [
            ops::rope_backward(&dq, pos, theta)?,
            ops::rope_backward(&dk, pos, theta)?,
        ];
        let (fq, fk, _) =
            ops::attention_backward_rope(dout, q, k, v, &out, &lse, cu, scale, pos, theta)?;
        println!(
            "check attention_backward_rope vs unfused: dq {:.2e}, dk {:.2e}",
            rel_err(&fq, &unfused[0])?,
            rel_err(&fk, &unfused[1])?
        );
    }
    Ok(())
}

/// Our Hopper GEMMs (`kernels::cuda::gemm_wgmma`, cp.async; `kernels::cuda::gemm_tma`, TMA +
/// producer warp) against cuBLAS (`ops::linear`, the tuned table) on Qwen2.5-0.5B's decode
/// products at B 256 and two training products: time, TFLOP/s, the ratio, and
/// ‖ours − cuBLAS‖ / ‖cuBLAS‖ (all bf16 out). Single launches timed with events: the decode rows
/// include launch latency.
fn wgmma_vs_cublas(cuda: &CudaDevice, dev: &Device) -> kernels::Result<()> {
    use kernels::cuda::gemm_tma::{gemm_tma_pp_tn, gemm_tma_tn};
    use kernels::cuda::gemm_wgmma::{gemm_wgmma_tn, supported};
    if !supported(cuda) {
        println!("wgmma: skipped, {} is not sm_90", cuda.arch());
        return Ok(());
    }
    let bf = DType::BF16;
    let shapes = [
        ("decode qkv B256", 256, 1152, 896),
        ("decode o B256", 256, 896, 896),
        ("decode gate_up B256", 256, 9728, 896),
        ("decode down B256", 256, 896, 4864),
        ("decode lm_head B256", 256, 151_936, 896),
        ("train gate 8192", 8192, 4864, 896),
        ("train down 8192", 8192, 896, 4864),
    ];
    for (i, (name, m, n, k)) in shapes.into_iter().enumerate() {
        let x = t(&[m, k], 100 + i as u64, dev, bf);
        let w = t(&[n, k], 200 + i as u64, dev, bf);
        let flops = 2.0 * (m * n * k) as f64;
        let bytes = ((m * k + n * k + m * n) * 2) as f64;
        let theirs = time(cuda, || {
            ops::linear(&x, &w, None).unwrap();
        });
        report(&format!("cublas {name}"), theirs, flops, bytes);
        let cublas = ops::linear(&x, &w, None)?;
        type Op = fn(&Tensor, &Tensor, DType) -> kernels::Result<Tensor>;
        let ours: [(&str, Op); 3] = [
            ("wgmma", gemm_wgmma_tn),
            ("tma", gemm_tma_tn),
            ("tma_pp", gemm_tma_pp_tn),
        ];
        for (label, op) in ours {
            let err = match op(&x, &w, bf) {
                Ok(y) => rel_err(&y, &cublas)?,
                Err(e) => {
                    println!("{label} {name}: {e}");
                    continue;
                }
            };
            let ms = time(cuda, || {
                op(&x, &w, bf).unwrap();
            });
            report(
                &format!("{label} {name} [{m}x{k}]·[{n}x{k}]ᵀ"),
                ms,
                flops,
                bytes,
            );
            println!(
                "ratio {label} {name}: cuBLAS / ours {:.3} (rel err {err:.2e})",
                theirs / ms
            );
        }
    }
    Ok(())
}

fn main() -> kernels::Result<()> {
    let dev = Device::cuda(0)?;
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let bf = DType::BF16;
    let (s, tlen, h, kh, d, c, f, v) = (8usize, 1024usize, 14, 2, 64, 896, 4864, 151_936);
    let n = s * tlen;

    // Attention, causal: 4·H·D·Σ T(T+1)/2 FLOPs forward, 2.5× that backward.
    let q = t(&[n, h, d], 1, &dev, bf);
    let k = t(&[n, kh, d], 2, &dev, bf);
    let vv = t(&[n, kh, d], 3, &dev, bf);
    let dout = t(&[n, h, d], 4, &dev, bf);
    let cu: Vec<u32> = (0..=s).map(|i| (i * tlen) as u32).collect();
    let cu = Tensor::from_u32(cu, &[s + 1], &dev)?;
    // Positions restart at each sequence's start, as in a training batch.
    let pos: Vec<u32> = (0..n).map(|i| (i % tlen) as u32).collect();
    let pos = Tensor::from_u32(pos, &[n], &dev)?;
    let scale = 1.0 / (d as f32).sqrt();
    let att_flops = 4.0 * (h * d) as f64 * (s * tlen * (tlen + 1) / 2) as f64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cuda_bench wgmma`: our wgmma GEMM beside cuBLAS (ops::linear) on the model's products.
    if args.first().map(String::as_str) == Some("wgmma") {
        return wgmma_vs_cublas(cuda, &dev);
    }
    // `cuda_bench attention [LABEL]`: only the attention variants (only LABEL's).
    let only = args.get(1).map(String::as_str);
    attention_variants(cuda, &q, &k, &vv, &dout, &cu, &pos, scale, att_flops, only)?;
    if args.first().map(String::as_str) == Some("attention") {
        return Ok(());
    }
    // The CUDA-core kernels for comparison.
    std::env::set_var("REALIGN_ATTENTION", "simt");
    let ms = time(cuda, || {
        ops::attention(&q, &k, &vv, &cu, scale).unwrap();
    });
    report(
        "attention fwd 8x1024 H14 K2 D64 bf16 simt",
        ms,
        att_flops,
        0.0,
    );
    std::env::remove_var("REALIGN_ATTENTION");
    // Pieces of the backward that are not the main kernel: zeroing the f32 dq accumulator and
    // rounding it to bf16 (cast stands in for the finish kernel).
    let ms = time(cuda, || {
        Tensor::zeros(&[n, h, d], DType::F32, &dev).unwrap();
    });
    report(
        "attention aux: zeros f32 [N,H,D]",
        ms,
        0.0,
        (n * h * d * 4) as f64,
    );
    let acc = Tensor::zeros(&[n, h, d], DType::F32, &dev)?;
    let ms = time(cuda, || {
        ops::cast(&acc, bf).unwrap();
    });
    report(
        "attention aux: cast f32 -> bf16 [N,H,D]",
        ms,
        0.0,
        (n * h * d * 6) as f64,
    );

    // linear (the MLP up projection): 2·N·I·O FLOPs forward, twice that backward.
    let x = t(&[n, c], 5, &dev, bf);
    let w = t(&[f, c], 6, &dev, bf);
    let lin_flops = 2.0 * (n * c * f) as f64;
    let ms = time(cuda, || {
        ops::linear(&x, &w, None).unwrap();
    });
    report("linear fwd 8192x896 -> 4864 bf16", ms, lin_flops, 0.0);
    let dy = t(&[n, f], 7, &dev, bf);
    let mut dw = Tensor::zeros(&[f, c], DType::F32, &dev)?;
    let ms = time(cuda, || {
        ops::linear_backward(&dy, &x, &w, &mut dw, None, ops::GradStore::Add).unwrap();
    });
    report("linear bwd (dx + dw f32 +=) bf16", ms, 2.0 * lin_flops, 0.0);

    // Memory-bound ops: bytes = inputs read once + outputs written once.
    let wn = t(&[c], 8, &dev, bf);
    let ms = time(cuda, || {
        ops::rmsnorm(&x, &wn, 1e-6).unwrap();
    });
    report(
        "rmsnorm fwd 8192x896 bf16",
        ms,
        0.0,
        (2 * n * c * 2 + n * 4) as f64,
    );
    let (_, rstd) = ops::rmsnorm(&x, &wn, 1e-6)?;
    let dyc = t(&[n, c], 9, &dev, bf);
    let ms = time(cuda, || {
        ops::rmsnorm_backward(&dyc, &x, &wn, &rstd).unwrap();
    });
    report("rmsnorm bwd 8192x896 bf16", ms, 0.0, (3 * n * c * 2) as f64);

    let g = t(&[n, f], 10, &dev, bf);
    let u = t(&[n, f], 11, &dev, bf);
    let ms = time(cuda, || {
        ops::swiglu(&g, &u).unwrap();
    });
    report("swiglu fwd 8192x4864 bf16", ms, 0.0, (3 * n * f * 2) as f64);
    let ms = time(cuda, || {
        ops::swiglu_backward(&dy, &g, &u).unwrap();
    });
    report("swiglu bwd 8192x4864 bf16", ms, 0.0, (5 * n * f * 2) as f64);

    let qr = t(&[n, h, d], 12, &dev, bf);
    let pos: Vec<u32> = (0..n).map(|i| (i % tlen) as u32).collect();
    let pos = Tensor::from_u32(pos, &[n], &dev)?;
    let ms = time(cuda, || {
        ops::rope(&qr, &pos, 1e6).unwrap();
    });
    report(
        "rope fwd 8192x14x64 bf16",
        ms,
        0.0,
        (2 * n * h * d * 2) as f64,
    );

    // Log-softmax gather over the vocabulary (2048 rows; linear in rows).
    let rows = 2048;
    let logits = t(&[rows, v], 13, &dev, bf);
    let targets: Vec<u32> = (0..rows).map(|i| (i * 7919 % v) as u32).collect();
    let targets = Tensor::from_u32(targets, &[rows], &dev)?;
    let ms = time(cuda, || {
        ops::logsoftmax_gather(&logits, &targets, 1.0).unwrap();
    });
    report(
        "logsoftmax_gather fwd 2048x151936 bf16",
        ms,
        0.0,
        (rows * v * 2) as f64,
    );
    let (_, _, lse) = ops::logsoftmax_gather(&logits, &targets, 1.0)?;
    let dlp = Tensor::from_f32(rand_vec(rows, 14), &[rows], &dev)?;
    let dent = Tensor::from_f32(rand_vec(rows, 15), &[rows], &dev)?;
    let ms = time(cuda, || {
        ops::logsoftmax_gather_backward(&dlp, None, &logits, &targets, &lse, 1.0).unwrap();
    });
    report(
        "logsoftmax_gather bwd 2048x151936 bf16",
        ms,
        0.0,
        (2 * rows * v * 2) as f64,
    );
    let ms = time(cuda, || {
        ops::logsoftmax_gather_backward(&dlp, Some(&dent), &logits, &targets, &lse, 1.0).unwrap();
    });
    report(
        "logsoftmax_gather bwd +entropy (2 reads)",
        ms,
        0.0,
        (3 * rows * v * 2) as f64,
    );

    // Optimizer-side ops over 100M parameters.
    let np = 100_000_000;
    let mut master = t(&[np], 16, &dev, DType::F32);
    let grad = t(&[np], 17, &dev, DType::F32);
    let mut m = Tensor::zeros(&[np], DType::F32, &dev)?;
    let mut vs = Tensor::zeros(&[np], DType::F32, &dev)?;
    let mut working = Tensor::zeros(&[np], bf, &dev)?;
    let params = ops::AdamWParams {
        lr: 1e-5,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    let ms = time(cuda, || {
        ops::adamw_step(
            &mut master,
            &grad,
            &mut m,
            &mut vs,
            &params,
            Some(&mut working),
        )
        .unwrap();
    });
    report(
        "adamw_step 100M f32 + bf16 working copy",
        ms,
        0.0,
        (np * 30) as f64,
    );
    let ms = time(cuda, || {
        ops::sum_squares(&grad).unwrap();
    });
    report("sum_squares 100M f32", ms, 0.0, (np * 4) as f64);
    let ms = time(cuda, || {
        ops::cast(&grad, bf).unwrap();
    });
    report("cast f32->bf16 100M", ms, 0.0, (np * 6) as f64);
    Ok(())
}
