//! Times the paged decode-attention kernel at rollout shapes for each work split
//! (`PagedConfig`: partition size, lanes per token, unrolled loads), bf16, block size 16.
//!
//! Shapes: Qwen2.5-0.5B (H 14, K 2, D 64) and SmolLM2-135M (H 9, K 3, D 64), batch 64 and 256,
//! context lengths drawn uniformly from [lo, hi] (default 128..384: the decode contexts of a
//! P 128 + N 256 rollout). The block table is 32 blocks wide and the host bound on the context is
//! 512, as in a CUDA-graph decode step. Each timing replays a CUDA graph of 10 calls (so host
//! launch costs do not count), median of 20 replays after warm-up, with CUDA events. Bandwidth =
//! K/V bytes the contexts hold (+ q, out) / time.
//!
//! `cargo run -p kernels --release --example paged_attention_bench [-- --lo 128 --hi 384]`

use kernels::cuda::paged_attention::{paged_attention_with, PagedConfig};
use kernels::{ops, DType, Device, Tensor};

/// Pseudo-random values in [-2, 2) (xorshift).
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

fn main() -> anyhow::Result<()> {
    let mut lo = 128usize;
    let mut hi = 384usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || -> anyhow::Result<usize> {
            Ok(args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))?
                .parse()?)
        };
        match a.as_str() {
            "--lo" => lo = val()?,
            "--hi" => hi = val()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        1 <= lo && lo <= hi && hi <= 512,
        "need 1 <= lo <= hi <= 512"
    );
    let dev = Device::cuda(0)?;
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let bs = 16usize;
    let width = 32usize; // table width in blocks, as a graph bucket rounds it
    let max_ctx = width * bs;
    let bf = DType::BF16;
    let mut splits = vec![PagedConfig::DEFAULT];
    for part in [64, 128, 256, 512] {
        for wide in [false, true] {
            for unroll in [1, 2] {
                for (q_smem, chunked) in [(false, false), (true, false), (false, true)] {
                    if chunked && unroll > 1 {
                        continue; // the chunked kernel does not unroll
                    }
                    let c = PagedConfig {
                        part,
                        wide,
                        unroll,
                        q_smem,
                        chunked,
                    };
                    if c != PagedConfig::DEFAULT {
                        splits.push(c);
                    }
                }
            }
        }
    }
    for (name, h, kh) in [("qwen2.5-0.5b", 14usize, 2usize), ("smollm2-135m", 9, 3)] {
        let d = 64usize;
        for s in [64usize, 256] {
            // Context lengths, and each sequence's blocks taken from a shuffled pool.
            let mut state = 0x1234_5678_u64 ^ s as u64;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let lens: Vec<u32> = (0..s)
                .map(|_| (lo + (next() % (hi - lo + 1) as u64) as usize) as u32)
                .collect();
            let num_blocks = s * width;
            let mut order: Vec<u32> = (0..num_blocks as u32).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (next() % (i as u64 + 1)) as usize);
            }
            let mut tables = vec![0u32; s * width];
            for (r, &l) in lens.iter().enumerate() {
                for b in 0..(l as usize).div_ceil(bs) {
                    tables[r * width + b] = order[r * width + b];
                }
            }
            let p = num_blocks * bs;
            let put = |v: Vec<f32>, shape: &[usize]| -> anyhow::Result<Tensor> {
                let t = Tensor::from_f32(v, shape, &Device::Cpu)?;
                Ok(ops::cast(&t, bf)?.to_device(&dev)?)
            };
            let q = put(rand_vec(s * h * d, 1), &[s, h, d])?;
            let kc = put(rand_vec(p * kh * d, 2), &[p, kh, d])?;
            let vc = put(rand_vec(p * kh * d, 3), &[p, kh, d])?;
            let tables = Tensor::from_u32(tables, &[s, width], &dev)?;
            let total: u64 = lens.iter().map(|&l| l as u64).sum();
            let lens = Tensor::from_u32(lens, &[s], &dev)?;
            let bytes = (total * 2 * (kh * d) as u64 * 2 + 2 * (s * h * d) as u64 * 2) as f64;
            let scale = 1.0 / (d as f32).sqrt();
            let call = |cfg: &PagedConfig| {
                paged_attention_with(&q, &kc, &vc, &tables, &lens, bs, max_ctx, scale, cfg)
            };
            let reference = call(&PagedConfig::DEFAULT)?.to_vec_f32()?;
            for cfg in &splits {
                // Same answer as the default split (loads every kernel before the capture).
                let out = call(cfg)?.to_vec_f32()?;
                let err = kernels::testing::rel_err(&out, &reference);
                let graph = cuda.capture(|| {
                    for _ in 0..10 {
                        call(cfg)?;
                    }
                    Ok(())
                })?;
                let ctx = cuda.context();
                let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
                for _ in 0..3 {
                    graph.launch()?;
                }
                let mut us: Vec<f64> = (0..20)
                    .map(|_| -> anyhow::Result<f64> {
                        let (a, b) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
                        a.record(cuda.stream())?;
                        graph.launch()?;
                        b.record(cuda.stream())?;
                        Ok(a.elapsed_ms(&b)? as f64 * 1e3 / 10.0)
                    })
                    .collect::<anyhow::Result<_>>()?;
                us.sort_by(|a, b| a.total_cmp(b));
                let med = us[us.len() / 2];
                println!(
                    "paged_attention {name} B {s} ctx {lo}..{hi} part {:>3} wide {} unroll {} \
                     q_smem {} chunked {}: {med:>7.2} us/call {:>6.0} GB/s (rel diff vs default \
                     {err:.1e})",
                    cfg.part,
                    u8::from(cfg.wide),
                    cfg.unroll,
                    u8::from(cfg.q_smem),
                    u8::from(cfg.chunked),
                    bytes / med / 1e3,
                );
            }
        }
    }
    Ok(())
}
