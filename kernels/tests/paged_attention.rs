//! The paged KV-cache ops: kv_cache_write / kv_cache_copy_blocks move the right rows, and paged
//! decode attention over blocks scattered through the pool equals the last rows of packed causal
//! `attention` on the same sequences. Runs on the CPU, and on the GPU when present (against the
//! CPU reference, f32 and bf16).

use half::bf16;
use kernels::cuda::{kv_cache, launch, nvrtc, paged_attention as pa};
use kernels::ops::paged_attention::Paged;
use kernels::testing::{randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

fn rounded(v: Vec<f32>, dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect(),
        _ => v,
    }
}

fn put(v: &[f32], shape: &[usize], dev: &Device, dtype: DType) -> Tensor {
    let t = Tensor::from_f32(v.to_vec(), shape, &Device::Cpu).unwrap();
    let t = if dtype == DType::BF16 {
        ops::cast(&t, DType::BF16).unwrap()
    } else {
        t
    };
    t.to_device(dev).unwrap()
}

/// One decode-attention case: sequences of `lens`, H query heads, K kv heads, head dim D.
struct Case {
    lens: Vec<usize>,
    h: usize,
    k: usize,
    d: usize,
    block_size: usize,
}

/// Runs paged attention on `dev` in `dtype` and the packed causal reference on the CPU in f32 (on
/// the same rounded inputs); returns the relative error.
fn paged_vs_packed(
    case: &Case,
    dev: &Device,
    dtype: DType,
    seed: u64,
    split: Option<pa::PagedConfig>,
) -> f64 {
    let (got, want) = paged_and_packed(case, dev, dtype, seed, split);
    rel_err(&got, &want)
}

/// Paged attention's decode rows on `dev` with `split` (None: the chooser's) and the reference's
/// (packed causal attention on the CPU, each sequence's last row) for the same seeded inputs.
fn paged_and_packed(
    case: &Case,
    dev: &Device,
    dtype: DType,
    seed: u64,
    split: Option<pa::PagedConfig>,
) -> (Vec<f32>, Vec<f32>) {
    let Case {
        lens,
        h,
        k: kh,
        d,
        block_size: bs,
    } = case;
    let (h, kh, d, bs) = (*h, *kh, *d, *bs);
    let n: usize = lens.iter().sum();
    let s = lens.len();
    let q = rounded(randn_vec(n * h * d, seed), dtype);
    let k = rounded(randn_vec(n * kh * d, seed + 1), dtype);
    let v = rounded(randn_vec(n * kh * d, seed + 2), dtype);
    let scale = 1.0 / (d as f32).sqrt();

    // Reference: packed causal attention; the last row of each sequence is its decode output.
    let mut cu = vec![0u32];
    for &l in lens {
        cu.push(cu.last().unwrap() + l as u32);
    }
    let cpu = Device::Cpu;
    let (full, _) = ops::attention(
        &Tensor::from_f32(q.clone(), &[n, h, d], &cpu).unwrap(),
        &Tensor::from_f32(k.clone(), &[n, kh, d], &cpu).unwrap(),
        &Tensor::from_f32(v.clone(), &[n, kh, d], &cpu).unwrap(),
        &Tensor::from_u32(cu.clone(), &[s + 1], &cpu).unwrap(),
        scale,
    )
    .unwrap();
    let full = full.to_vec_f32().unwrap();
    let row = h * d;
    let mut want = Vec::new();
    let mut q_last = Vec::new();
    for w in cu.windows(2) {
        let last = w[1] as usize - 1;
        want.extend_from_slice(&full[last * row..(last + 1) * row]);
        q_last.extend_from_slice(&q[last * row..(last + 1) * row]);
    }

    // Pool with spare blocks, each sequence's blocks drawn from a shuffled order.
    let need: usize = lens.iter().map(|l| l.div_ceil(bs)).sum();
    let num_blocks = need + 5;
    let mut order: Vec<u32> = (0..num_blocks as u32).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let max_blocks = lens.iter().map(|l| l.div_ceil(bs)).max().unwrap();
    let mut tables = vec![0u32; s * max_blocks];
    let mut slots = Vec::with_capacity(n);
    let mut next = 0;
    for (si, &l) in lens.iter().enumerate() {
        for b in 0..l.div_ceil(bs) {
            tables[si * max_blocks + b] = order[next];
            next += 1;
        }
        for p in 0..l {
            slots.push(tables[si * max_blocks + p / bs] * bs as u32 + (p % bs) as u32);
        }
    }
    let p = num_blocks * bs;
    let mut kc = Tensor::zeros(&[p, kh, d], dtype, dev).unwrap();
    let mut vc = Tensor::zeros(&[p, kh, d], dtype, dev).unwrap();
    ops::kv_cache_write(
        &mut kc,
        &mut vc,
        &put(&k, &[n, kh, d], dev, dtype),
        &put(&v, &[n, kh, d], dev, dtype),
        &Tensor::from_u32(slots, &[n], dev).unwrap(),
    )
    .unwrap();
    let lens_u32: Vec<u32> = lens.iter().map(|&l| l as u32).collect();
    let q_t = put(&q_last, &[s, h, d], dev, dtype);
    let tables = Tensor::from_u32(tables, &[s, max_blocks], dev).unwrap();
    let lens_t = Tensor::from_u32(lens_u32, &[s], dev).unwrap();
    let max_len = *lens.iter().max().unwrap();
    let paged = Paged {
        k_cache: &kc,
        v_cache: &vc,
        block_tables: &tables,
        context_lens: &lens_t,
        block_size: bs,
        max_context_len: max_len,
        scale,
    };
    let out = match split {
        None => ops::paged_attention::paged_attention_in(&q_t, &paged),
        Some(cfg) => pa::paged_attention_with(&q_t, &paged, &cfg),
    }
    .unwrap();
    assert_eq!(out.shape(), &[s, h, d]);
    assert_eq!(out.dtype(), dtype);
    (out.to_vec_f32().unwrap(), want)
}

fn cases() -> Vec<Case> {
    vec![
        // GQA group 3, odd head dim (not a multiple of 32), a context spanning three partitions.
        Case {
            lens: vec![1, 7, 33, 1100, 130],
            h: 6,
            k: 2,
            d: 24,
            block_size: 16,
        },
        // Multi-head (group 1), D = 64, block size not a power of two.
        Case {
            lens: vec![5, 64, 3],
            h: 4,
            k: 4,
            d: 64,
            block_size: 6,
        },
        // Qwen2.5-0.5B-like group of 7 at D = 64, and a D = 128 single-kv-head case.
        Case {
            lens: vec![513, 17],
            h: 14,
            k: 2,
            d: 64,
            block_size: 16,
        },
        Case {
            lens: vec![40, 9],
            h: 8,
            k: 1,
            d: 128,
            block_size: 8,
        },
    ]
}

#[test]
fn paged_attention_equals_packed_causal_attention() {
    for dev in test_devices() {
        for (i, case) in cases().iter().enumerate() {
            let dtypes: &[DType] = if dev.is_cuda() {
                &[DType::F32, DType::BF16]
            } else {
                &[DType::F32]
            };
            // On the GPU the work splits of the kernel too: wide lanes and unrolled loads at
            // partitions of 16 tokens (smaller than a block) and 512, and the partition sizes the
            // chooser picks.
            let splits = if dev.is_cuda() {
                default_and_cuda_core_splits()
            } else {
                vec![None]
            };
            check_splits(case, i, &dev, dtypes, &splits);
        }
    }
}

/// The chooser's split (`None`), every wide / unroll combination of the per-token kernel at
/// partitions of 16 and 512 tokens, and its partitions of 64, 128, 256.
fn default_and_cuda_core_splits() -> Vec<Option<pa::PagedConfig>> {
    let mut v = vec![None];
    v.extend(flag_splits(false).into_iter().map(Some));
    for part in [64, 128, 256] {
        v.push(Some(pa::PagedConfig {
            part,
            ..pa::PagedConfig::DEFAULT
        }));
    }
    v
}

/// Every wide / unroll combination at partitions of 16 and 512 tokens, with `q_smem`.
fn flag_splits(q_smem: bool) -> Vec<pa::PagedConfig> {
    let mut v = Vec::new();
    for part in [16, 512] {
        for wide in [false, true] {
            for unroll in [1, 2] {
                v.push(pa::PagedConfig {
                    part,
                    wide,
                    unroll,
                    q_smem,
                    chunked: false,
                    mma_stages: 0,
                    lean: false,
                });
            }
        }
    }
    v
}

/// Paged attention with each split equals packed causal attention on `dev`.
fn check_splits(
    case: &Case,
    i: usize,
    dev: &Device,
    dtypes: &[DType],
    splits: &[Option<pa::PagedConfig>],
) {
    for &dtype in dtypes {
        for &split in splits {
            let err = paged_vs_packed(case, dev, dtype, 100 + i as u64, split);
            // bf16 output rounding is ~4e-3 relative; f32 differs only in summation order.
            let tol = if dtype == DType::BF16 { 1e-2 } else { 1e-5 };
            assert!(
                err < tol,
                "case {i} on {dev} {dtype} {split:?}: rel err {err:.2e} >= {tol:.0e}"
            );
        }
    }
}

/// The query-rows-in-shared-memory variant (`q_smem`, not yet chosen by default) on the GPU:
/// every wide / unroll combination at partitions of 16 and 512 tokens.
#[test]
fn query_rows_in_shared_memory_give_the_same_attention() {
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        let splits: Vec<_> = flag_splits(true).into_iter().map(Some).collect();
        for (i, case) in cases().iter().enumerate() {
            check_splits(case, i, &dev, &[DType::F32, DType::BF16], &splits);
        }
    }
}

#[test]
fn kv_cache_write_and_copy_blocks_move_whole_rows() {
    for dev in test_devices() {
        for dtype in [DType::F32, DType::BF16] {
            if dev.is_cpu() && dtype == DType::BF16 {
                continue; // CPU caches are f32
            }
            let (bs, kh, d, blocks) = (4, 2, 3, 6);
            let row = kh * d;
            let p = bs * blocks;
            let n = 7;
            let k = rounded(randn_vec(n * row, 1), dtype);
            let v = rounded(randn_vec(n * row, 2), dtype);
            // Distinct slots.
            let mut all: Vec<u32> = (0..p as u32).collect();
            all.shuffle(&mut StdRng::seed_from_u64(3));
            let slots = all[..n].to_vec();
            let mut kc = Tensor::zeros(&[p, kh, d], dtype, &dev).unwrap();
            let mut vc = Tensor::zeros(&[p, kh, d], dtype, &dev).unwrap();
            ops::kv_cache_write(
                &mut kc,
                &mut vc,
                &put(&k, &[n, kh, d], &dev, dtype),
                &put(&v, &[n, kh, d], &dev, dtype),
                &Tensor::from_u32(slots.clone(), &[n], &dev).unwrap(),
            )
            .unwrap();
            let mut want_k = vec![0.0f32; p * row];
            let mut want_v = vec![0.0f32; p * row];
            for (i, &s) in slots.iter().enumerate() {
                let s = s as usize;
                want_k[s * row..(s + 1) * row].copy_from_slice(&k[i * row..(i + 1) * row]);
                want_v[s * row..(s + 1) * row].copy_from_slice(&v[i * row..(i + 1) * row]);
            }
            assert_eq!(kc.to_vec_f32().unwrap(), want_k, "{dev} {dtype}");
            assert_eq!(vc.to_vec_f32().unwrap(), want_v, "{dev} {dtype}");

            // Copy blocks 1 -> 4 and 5 -> 0.
            let (src, dst) = (vec![1u32, 5], vec![4u32, 0]);
            ops::kv_cache_copy_blocks(
                &mut kc,
                &mut vc,
                &Tensor::from_u32(src.clone(), &[2], &dev).unwrap(),
                &Tensor::from_u32(dst.clone(), &[2], &dev).unwrap(),
                bs,
            )
            .unwrap();
            let be = bs * row;
            for want in [&mut want_k, &mut want_v] {
                for (&a, &b) in src.iter().zip(&dst) {
                    let (a, b) = (a as usize * be, b as usize * be);
                    want.copy_within(a..a + be, b);
                }
            }
            assert_eq!(kc.to_vec_f32().unwrap(), want_k, "{dev} {dtype}");
            assert_eq!(vc.to_vec_f32().unwrap(), want_v, "{dev} {dtype}");
        }
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let cpu = Device::Cpu;
    let mut kc = Tensor::zeros(&[8, 1, 4], DType::F32, &cpu).unwrap();
    let mut vc = Tensor::zeros(&[8, 1, 4], DType::F32, &cpu).unwrap();
    let k = Tensor::zeros(&[1, 1, 4], DType::F32, &cpu).unwrap();
    let bad_slot = Tensor::from_u32(vec![8], &[1], &cpu).unwrap();
    let e = ops::kv_cache_write(&mut kc, &mut vc, &k, &k, &bad_slot).unwrap_err();
    assert!(e.to_string().contains("outside the cache"), "{e}");
    let q = Tensor::zeros(&[1, 2, 4], DType::F32, &cpu).unwrap();
    let tables = Tensor::from_u32(vec![0, 9], &[1, 2], &cpu).unwrap();
    let lens = Tensor::from_u32(vec![6], &[1], &cpu).unwrap();
    let e = ops::paged_attention(&q, &kc, &vc, &tables, &lens, 4, 6, 1.0).unwrap_err();
    assert!(e.to_string().contains("block 9"), "{e}");
    // Three query heads over two kv heads is not GQA.
    let q3 = Tensor::zeros(&[1, 3, 4], DType::F32, &cpu).unwrap();
    let kc2 = Tensor::zeros(&[8, 2, 4], DType::F32, &cpu).unwrap();
    let e = ops::paged_attention(&q3, &kc2, &kc2, &tables, &lens, 4, 6, 1.0).unwrap_err();
    assert!(e.to_string().contains("multiple"), "{e}");
    // max_context_len beyond what the table holds.
    let e = ops::paged_attention(&q, &kc, &vc, &tables, &lens, 4, 9, 1.0).unwrap_err();
    assert!(e.to_string().contains("max_context_len"), "{e}");
}

/// Both kernel files compile with NVRTC for sm_90 at the shapes the tests and real models use
/// (needs only the NVRTC library, no GPU).
#[test]
fn nvrtc_compiles_paged_kernels() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    let src = kv_cache::source();
    nvrtc::compile_cubin(
        src.name,
        &kernels::cuda::launch::full_source(&src),
        "sm_90",
        &[],
    )
    .unwrap_or_else(|e| panic!("kv_cache.cu: {e}"));
    let src = pa::source();
    let text = kernels::cuda::launch::full_source(&src);
    for (d, g) in [(24, 3), (64, 1), (64, 7), (64, 3), (128, 16), (256, 8)] {
        nvrtc::compile_cubin(src.name, &text, "sm_90", &pa::defines(d, g))
            .unwrap_or_else(|e| panic!("paged_attention.cu D={d} G={g}: {e}"));
        for (wide, unroll, q_smem) in [
            (true, 1, false),
            (false, 2, false),
            (true, 2, true),
            (false, 1, true),
        ] {
            let cfg = pa::PagedConfig {
                part: 128,
                wide,
                unroll,
                q_smem,
                chunked: false,
                mma_stages: 0,
                lean: false,
            };
            nvrtc::compile_cubin(src.name, &text, "sm_90", &pa::defines_with(d, g, &cfg))
                .unwrap_or_else(|e| panic!("paged_attention.cu D={d} G={g} {cfg:?}: {e}"));
        }
    }
}

/// The chunked-softmax variant (`chunked`, the default where the tensor-core kernel does not
/// apply) on the GPU: partitions of 16 (inside one tile), 128, 512 and 1024 tokens (several
/// tiles), the three GQA groups of the cases (the case with group 8 at D 128 included).
#[test]
fn chunked_softmax_gives_the_same_attention() {
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        for (i, case) in cases().iter().enumerate() {
            check_splits(case, i, &dev, &[DType::F32, DType::BF16], &chunked_splits());
        }
    }
}

fn chunked_splits() -> Vec<Option<pa::PagedConfig>> {
    [16, 128, 512, 1024]
        .into_iter()
        .flat_map(|part| {
            [false, true].map(|wide| {
                Some(pa::PagedConfig {
                    part,
                    wide,
                    chunked: true,
                    ..pa::PagedConfig::DEFAULT
                })
            })
        })
        .collect()
}

/// The tensor-core splits the GPU tests run: partitions of 16 tokens (inside one 64-token tile,
/// several partitions and the combine), 128 (two tiles) and 512 and 1024 (the 513-token context
/// in one or two partitions, several tiles through the cp.async ring), with rings of 2, 3 and 4
/// tiles; each with the plain and the lean tile loader.
fn mma_splits() -> Vec<Option<pa::PagedConfig>> {
    [(16, 2), (128, 2), (128, 3), (512, 3), (512, 4), (1024, 2)]
        .into_iter()
        .flat_map(|(part, mma_stages)| {
            [false, true].map(|lean| {
                Some(pa::PagedConfig {
                    part,
                    mma_stages,
                    lean,
                    ..pa::PagedConfig::DEFAULT
                })
            })
        })
        .collect()
}

/// The cases the tensor-core kernel takes (bf16, D a multiple of 16): group 1 with a block size
/// of 6, Qwen2.5's group 7 at D 64 over 513 tokens, group 8 at D 128.
fn mma_cases() -> impl Iterator<Item = (usize, Case)> {
    cases()
        .into_iter()
        .enumerate()
        .filter(|(_, c)| c.d % 16 == 0)
}

/// The tensor-core kernel (the default for bf16 at D 64 and 128) equals packed causal attention
/// at every split, and refuses what it cannot take (f32, a head dim of 24) with an error.
#[test]
fn tensor_core_kernel_gives_the_same_attention() {
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        for (i, case) in mma_cases() {
            check_splits(&case, i, &dev, &[DType::BF16], &mma_splits());
        }
        let mma = pa::PagedConfig {
            mma_stages: 2,
            ..pa::PagedConfig::DEFAULT
        };
        let tables = Tensor::from_u32(vec![0], &[1, 1], &dev).unwrap();
        let lens = Tensor::from_u32(vec![3], &[1], &dev).unwrap();
        for (dtype, d) in [(DType::F32, 64), (DType::BF16, 24)] {
            let q = Tensor::zeros(&[1, 2, d], dtype, &dev).unwrap();
            let kc = Tensor::zeros(&[4, 1, d], dtype, &dev).unwrap();
            let paged = Paged {
                k_cache: &kc,
                v_cache: &kc,
                block_tables: &tables,
                context_lens: &lens,
                block_size: 4,
                max_context_len: 3,
                scale: 1.0,
            };
            let e = pa::paged_attention_with(&q, &paged, &mma).unwrap_err();
            assert!(e.to_string().contains("tensor-core"), "{dtype} D {d}: {e}");
        }
    }
}

/// The lean tile loader and merge (`PagedConfig::lean`) make the same copies and the same
/// arithmetic as the plain kernel: the same bits at every split and block size (16: its own
/// instantiation; 6 and 8: the runtime one).
#[test]
fn lean_tensor_core_kernel_gives_the_same_bits() {
    for dev in test_devices().into_iter().filter(|d| d.is_cuda()) {
        for (i, case) in mma_cases() {
            for split in mma_splits().into_iter().flatten().filter(|c| !c.lean) {
                let seed = 300 + i as u64;
                let (plain, _) = paged_and_packed(&case, &dev, DType::BF16, seed, Some(split));
                let lean = pa::PagedConfig {
                    lean: true,
                    ..split
                };
                let (got, _) = paged_and_packed(&case, &dev, DType::BF16, seed, Some(lean));
                let same = got
                    .iter()
                    .zip(&plain)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "case {i} {split:?}: lean output differs from the plain kernel's"
                );
            }
        }
    }
}

/// The tensor-core kernel compiles for real models' groups at D 64 and 128 and every ring depth
/// (and a head dim of 96).
#[test]
fn nvrtc_compiles_the_tensor_core_kernel() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    let src = pa::source();
    let text = kernels::cuda::launch::full_source(&src);
    for (d, g) in [(64, 7), (64, 3), (64, 1), (128, 8), (128, 16), (96, 4)] {
        for (mma_stages, lean) in [(2, false), (3, false), (4, false), (2, true), (4, true)] {
            let cfg = pa::PagedConfig {
                mma_stages,
                lean,
                ..pa::PagedConfig::DEFAULT
            };
            nvrtc::compile_cubin(src.name, &text, "sm_90", &pa::defines_with(d, g, &cfg))
                .unwrap_or_else(|e| panic!("paged_attention.cu MMA D={d} G={g} {cfg:?}: {e}"));
            if lean {
                // REALIGN_PAGED_PREWAIT=1's build of the same split, with the early tiles.
                let defs: Vec<String> = pa::defines_with(d, g, &cfg)
                    .into_iter()
                    .map(|x| match x.split('=').next() {
                        Some("-DPREWAIT") => "-DPREWAIT=1".to_string(),
                        Some("-DEARLY") => "-DEARLY=1".to_string(),
                        _ => x,
                    })
                    .collect();
                nvrtc::compile_cubin(src.name, &text, "sm_90", &defs)
                    .unwrap_or_else(|e| panic!("paged_attention.cu PREWAIT D={d} G={g}: {e}"));
            }
        }
    }
}

/// Compiles, with NVRTC for sm_90, every kernel variant the GPU tests of this file load (the
/// chooser's splits for f32 and bf16 at 132 SMs included). Slow; run it before a GPU run with
/// `REALIGN_KERNEL_CACHE` pointing at the cache the GPU run will use, so the GPU spends no time
/// compiling (the cache key includes the include path: compile with the GPU machine's
/// `/usr/local/cuda/include`).
#[test]
#[ignore = "slow: compiles ~130 kernel variants (fills the kernel cache for a GPU run)"]
fn nvrtc_compiles_every_variant_the_gpu_tests_use() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    let src = pa::source();
    let text = kernels::cuda::launch::full_source(&src);
    let mut seen = std::collections::HashSet::new();
    for (i, case) in cases().iter().enumerate() {
        let (s, g) = (case.lens.len(), case.h / case.k);
        let max_len = *case.lens.iter().max().unwrap();
        let mut splits: Vec<pa::PagedConfig> = [DType::F32, DType::BF16]
            .map(|dt| pa::choose_split(s, case.k, g, case.d, dt, max_len, 132))
            .to_vec();
        let lists = [
            default_and_cuda_core_splits(),
            flag_splits(true).into_iter().map(Some).collect(),
            chunked_splits(),
        ];
        splits.extend(lists.into_iter().flatten().flatten());
        if case.d % 16 == 0 {
            splits.extend(mma_splits().into_iter().flatten());
        }
        for cfg in splits {
            let defs = pa::defines_with(case.d, g, &cfg);
            if seen.insert(defs.clone()) {
                nvrtc::compile_cubin(src.name, &text, "sm_90", &defs)
                    .unwrap_or_else(|e| panic!("case {i} {cfg:?}: {e}"));
            }
        }
    }
    eprintln!("{} variants compiled", seen.len());
}

/// The chunked kernel compiles for the shapes above and real models' groups.
#[test]
fn nvrtc_compiles_the_chunked_kernel() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    let src = pa::source();
    let text = kernels::cuda::launch::full_source(&src);
    for (d, g) in [
        (24, 3),
        (64, 1),
        (64, 7),
        (64, 3),
        (128, 8),
        (128, 16),
        (256, 8),
    ] {
        for wide in [false, true] {
            let cfg = pa::PagedConfig {
                wide,
                chunked: true,
                ..pa::PagedConfig::DEFAULT
            };
            nvrtc::compile_cubin(src.name, &text, "sm_90", &pa::defines_with(d, g, &cfg))
                .unwrap_or_else(|e| panic!("paged_attention.cu chunked D={d} G={g} {cfg:?}: {e}"));
        }
    }
}

/// The split chooser keeps 512-token partitions when the grid fills the GPU and halves them (down
/// to 128) when it would not, and takes the chunked softmax with wide lanes where the kernel
/// allows it: the shapes measured on the H200 (132 SMs).
#[test]
fn the_split_fills_the_gpu_with_blocks() {
    // (S, K, group, D, context bound)
    let split = |s, kh, g, d, ctx| pa::choose_split(s, kh, g, d, DType::F32, ctx, 132);
    let part = |s, kh, ctx| split(s, kh, 7, 64, ctx).part;
    // Qwen2.5-0.5B (K 2) and SmolLM2-135M (K 3) at B 256 and B 64, a graph's context bound 512.
    assert_eq!(part(256, 2, 512), 512);
    assert_eq!(part(256, 3, 512), 512);
    assert_eq!(part(64, 2, 512), 128);
    assert_eq!(part(64, 3, 512), 128);
    // Long contexts already give many partitions; a single sequence stops at 128.
    assert_eq!(part(64, 2, 8192), 512);
    assert_eq!(part(1, 1, 100), 128);
    let qwen = split(256, 2, 7, 64, 512);
    assert!(qwen.chunked && qwen.wide && qwen.unroll == 1 && !qwen.q_smem);
    let smol = split(64, 3, 3, 64, 512);
    assert!(smol.chunked && smol.wide);
    // A group the chunked kernel cannot hold, or a head dim not tested on a GPU: per-token softmax.
    assert!(!split(64, 1, 32, 64, 512).chunked);
    assert!(!split(64, 2, 4, 256, 512).chunked);
    assert!([qwen, smol].iter().all(|c| c.mma_stages == 0)); // f32: no tensor cores
                                                             // bf16 at D 64 / 128 with a group of at most 16: the tensor-core kernel, same partitions.
    let bf = |s, kh, g, d, ctx| pa::choose_split(s, kh, g, d, DType::BF16, ctx, 132);
    let qwen = bf(256, 2, 7, 64, 512);
    assert_eq!((qwen.part, qwen.mma_stages), (512, pa::MMA_STAGES));
    // Its partitions stay at 512 down to a grid of half an SM's worth of blocks (Qwen B 64: 128
    // blocks), then halve.
    assert_eq!(bf(64, 2, 7, 64, 512).part, 512);
    assert_eq!(bf(64, 3, 3, 64, 512).part, 512);
    assert_eq!(bf(16, 2, 7, 64, 512).part, 128);
    assert_eq!(bf(1, 2, 7, 64, 16384).part, 256);
    assert_eq!(bf(4, 1, 16, 128, 512).mma_stages, pa::MMA_STAGES);
    // Other head dims or a larger group: the CUDA-core kernels.
    for (g, d) in [(7, 96), (7, 24), (7, 256), (32, 64)] {
        assert_eq!(bf(64, 2, g, d, 512).mma_stages, 0, "group {g} D {d}");
    }
    assert!(bf(64, 2, 7, 96, 512).chunked);
    assert_eq!(
        pa::PagedConfig::parse("512,0,1,1"),
        Some(pa::PagedConfig {
            q_smem: true,
            ..pa::PagedConfig::DEFAULT
        })
    );
    assert_eq!(
        pa::PagedConfig::parse("128,1,2").map(|c| (c.part, c.wide, c.unroll, c.q_smem)),
        Some((128, true, 2, false))
    );
    assert_eq!(pa::PagedConfig::parse("128,1,3"), None);
    assert_eq!(
        pa::PagedConfig::parse("256,0,1,0,0,3"),
        Some(pa::PagedConfig {
            part: 256,
            mma_stages: 3,
            ..pa::PagedConfig::DEFAULT
        })
    );
    assert_eq!(pa::PagedConfig::parse("256,0,1,0,0,1"), None);
    assert_eq!(pa::PagedConfig::parse("256,0,1,0,0,5"), None);
    assert_eq!(
        pa::PagedConfig::parse("256,0,1,0,0,2,1"),
        Some(pa::PagedConfig {
            part: 256,
            mma_stages: 2,
            lean: true,
            ..pa::PagedConfig::DEFAULT
        })
    );
    assert_eq!(pa::PagedConfig::parse("256,0,1,0,0,2,2"), None);
    assert_eq!(pa::PagedConfig::parse("256,0,1,0,0,2,1,0"), None);
    assert_eq!(
        pa::PagedConfig::parse("512,0,1,0,1"),
        Some(pa::PagedConfig {
            chunked: true,
            ..pa::PagedConfig::DEFAULT
        })
    );
}

/// Compiles the paged-attention modules the decode steps of the benchmarked and GPU-tested models
/// ask for (every split `choose_split` gives them at 132 SMs, batch 1..512, contexts up to 4k), so
/// that `scripts/kernel_cache.sh` can put them in the kernel cache and a GPU call does not spend
/// its device time in NVRTC. Their PDL builds (the default) or, with `REALIGN_PDL=0`, the plain
/// ones.
#[test]
#[ignore = "slow: compiles the decode shapes' variants for the kernel cache (scripts/kernel_cache.sh)"]
fn nvrtc_compiles_the_decode_shapes() {
    if !nvrtc::is_available() {
        eprintln!("skipped: no NVRTC library");
        return;
    }
    let src = pa::source();
    let text = kernels::cuda::launch::full_source(&src);
    // (D, kv heads, group): Qwen2.5-0.5B, SmolLM2-135M, actor/tests/fused_attention.rs's model,
    // the D-128 case of kernels/tests/paged_attention_qkv.rs, the actor's HF fixtures.
    let models = [(64, 2, 7), (64, 3, 3), (64, 2, 2), (128, 2, 4), (16, 2, 2)];
    let pdl = launch::pdl_requested();
    let mut seen = std::collections::HashSet::new();
    for (d, kh, g) in models {
        for dtype in [DType::BF16, DType::F32] {
            for s in (0..10).map(|e| 1usize << e) {
                for max_len in [16, 64, 128, 256, 384, 512, 1024, 2048, 4096] {
                    let cfg = pa::choose_split(s, kh, g, d, dtype, max_len, 132);
                    let mut defs = pa::defines_with(d, g, &cfg);
                    if pdl {
                        defs.push(kernels::cuda::launch::PDL_DEFINE.to_string());
                    }
                    if seen.insert(defs.clone()) {
                        nvrtc::compile_cubin(src.name, &text, "sm_90", &defs)
                            .unwrap_or_else(|e| panic!("D {d} group {g} {cfg:?}: {e}"));
                    }
                }
            }
        }
    }
    eprintln!("{} variants compiled", seen.len());
}
