//! Times the paged decode-attention kernels at rollout shapes, bf16, block size 16: the split the
//! library chooses (`choose_split`: the tensor-core kernel where it applies), the previous defaults
//! (chunked softmax with wide lanes; per-token softmax over 512-token partitions), and the
//! tensor-core kernel at partitions of 128 / 256 / 512 tokens with cp.async rings of 2 / 3 / 4
//! tiles.
//!
//! Shapes: Qwen2.5-0.5B (H 14, K 2, D 64) and SmolLM2-135M (H 9, K 3, D 64), batch 64 and 256,
//! context lengths drawn uniformly from [lo, hi] (default 128..384: the decode contexts of a
//! P 128 + N 256 rollout; `--lo 256 --hi 256` for the equal contexts of one rollout step). The
//! block table is 32 blocks wide and the host bound on the context is 512, as in a CUDA-graph
//! decode step. Each timing replays a CUDA graph of 10 calls (so host launch costs do not count),
//! median of 20 replays after warm-up, with CUDA events. Bytes = the K/V rows the contexts hold +
//! q + out; floor = bytes / 4.3 TB/s (the H200's copy bandwidth, docs/benchmarks.md).
//!
//! `cargo run -p kernels --release --example paged_attention_bench [-- --lo 128 --hi 384]`;
//! `-- --compile-only` compiles every variant with NVRTC for sm_90 and exits (no GPU needed: fills
//! the kernel cache, `REALIGN_KERNEL_CACHE`, for a GPU run).

use kernels::cuda::paged_attention::{
    choose_split, defines_with, paged_attention_with, PagedConfig,
};
use kernels::ops::paged_attention::Paged;
use kernels::{ops, DType, Device, Tensor};

/// The H200's copy bandwidth in bytes/s (docs/benchmarks.md).
const COPY_BW: f64 = 4.3e12;
/// SMs of the H200, for the chosen split in `--compile-only` (the library asks the device).
const SMS: usize = 132;
const D: usize = 64;
const BLOCK: usize = 16;
const WIDTH: usize = 32; // table width in blocks, as a graph bucket rounds it

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

/// The variants timed for S sequences, K kv heads, GQA group g: (label, split; None = the
/// library's own choice through `ops::paged_attention`).
fn variants(s: usize, kh: usize, g: usize) -> Vec<(String, Option<PagedConfig>)> {
    let max_ctx = WIDTH * BLOCK;
    let chosen = choose_split(s, kh, g, D, DType::BF16, max_ctx, SMS);
    let mut v = vec![(format!("default {}", label(&chosen)), None)];
    // The previous default (what the chooser gives without tensor cores) and the one before it.
    let chunked = choose_split(s, kh, g, D, DType::F32, max_ctx, SMS);
    v.push((
        format!("previous default {}", label(&chunked)),
        Some(chunked),
    ));
    v.push((
        format!("first default {}", label(&PagedConfig::DEFAULT)),
        Some(PagedConfig::DEFAULT),
    ));
    for part in [128, 256, 512] {
        for mma_stages in [2, 3, 4] {
            let c = PagedConfig {
                part,
                mma_stages,
                ..PagedConfig::DEFAULT
            };
            if c != chosen {
                v.push((label(&c), Some(c)));
            }
        }
    }
    // The lean tile loader and merge at the chooser's split (REALIGN_PAGED_LEAN's).
    let lean = PagedConfig {
        lean: true,
        ..chosen
    };
    if lean != chosen {
        v.push((label(&lean), Some(lean)));
    }
    v
}

fn label(c: &PagedConfig) -> String {
    if c.mma_stages > 0 {
        let lean = if c.lean { " lean" } else { "" };
        format!("mma part {} stages {}{lean}", c.part, c.mma_stages)
    } else {
        format!(
            "part {} wide {} unroll {} q_smem {} chunked {}",
            c.part,
            u8::from(c.wide),
            c.unroll,
            u8::from(c.q_smem),
            u8::from(c.chunked)
        )
    }
}

const SHAPES: [(&str, usize, usize); 2] = [("qwen2.5-0.5b", 14, 2), ("smollm2-135m", 9, 3)];
const BATCHES: [usize; 2] = [64, 256];

/// Compiles every variant's module (no GPU).
fn compile_only() -> anyhow::Result<()> {
    let src = kernels::cuda::paged_attention::source();
    let text = kernels::cuda::launch::full_source(&src);
    let mut n = 0;
    for (_, h, kh) in SHAPES {
        for s in BATCHES {
            for (_, cfg) in variants(s, kh, h / kh) {
                let cfg = cfg.unwrap_or_else(|| {
                    choose_split(s, kh, h / kh, D, DType::BF16, WIDTH * BLOCK, SMS)
                });
                kernels::cuda::nvrtc::compile_cubin(
                    src.name,
                    &text,
                    "sm_90",
                    &defines_with(D, h / kh, &cfg),
                )?;
                n += 1;
            }
        }
    }
    println!("compiled {n} variants (cached where already compiled)");
    Ok(())
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
            "--compile-only" => return compile_only(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        1 <= lo && lo <= hi && hi <= WIDTH * BLOCK,
        "need 1 <= lo <= hi <= {}",
        WIDTH * BLOCK
    );
    let dev = Device::cuda(0)?;
    let Device::Cuda(cuda) = &dev else {
        unreachable!()
    };
    let (bs, width, d) = (BLOCK, WIDTH, D);
    let max_ctx = width * bs;
    let bf = DType::BF16;
    for (name, h, kh) in SHAPES {
        for s in BATCHES {
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
            // q [S,H,D], caches [P,K,D]
            let q = put(rand_vec(s * h * d, 1), &[s, h, d])?;
            let kc = put(rand_vec(p * kh * d, 2), &[p, kh, d])?;
            let vc = put(rand_vec(p * kh * d, 3), &[p, kh, d])?;
            let tables = Tensor::from_u32(tables, &[s, width], &dev)?;
            let total: u64 = lens.iter().map(|&l| l as u64).sum();
            let lens = Tensor::from_u32(lens, &[s], &dev)?;
            let bytes = (total * 2 * (kh * d) as u64 * 2 + 2 * (s * h * d) as u64 * 2) as f64;
            let floor_us = bytes / COPY_BW * 1e6;
            let scale = 1.0 / (d as f32).sqrt();
            let paged = Paged {
                k_cache: &kc,
                v_cache: &vc,
                block_tables: &tables,
                context_lens: &lens,
                block_size: bs,
                max_context_len: max_ctx,
                scale,
            };
            let call = |cfg: &Option<PagedConfig>| match cfg {
                None => ops::paged_attention::paged_attention_in(&q, &paged),
                Some(c) => paged_attention_with(&q, &paged, c),
            };
            // The reference: the per-token kernel (CUDA cores, f32 accumulation).
            let reference = call(&Some(PagedConfig::DEFAULT))?.to_vec_f32()?;
            println!(
                "paged_attention {name} B {s} ctx {lo}..{hi}: {:.1} MB, floor {floor_us:.2} us \
                 at {:.1} TB/s",
                bytes / 1e6,
                COPY_BW / 1e12
            );
            for (lbl, cfg) in variants(s, kh, h / kh) {
                // Same answer as the per-token kernel (loads every kernel before the capture).
                let out = call(&cfg)?.to_vec_f32()?;
                let err = kernels::testing::rel_err(&out, &reference);
                let graph = cuda.capture(|| {
                    for _ in 0..10 {
                        call(&cfg)?;
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
                    "paged_attention {name} B {s} ctx {lo}..{hi} {lbl:<52}: {med:>7.2} us/call \
                     {:>6.0} GB/s {:>5.2}x floor (rel diff vs per-token {err:.1e})",
                    bytes / med / 1e3,
                    med / floor_us,
                );
            }
        }
    }
    Ok(())
}
