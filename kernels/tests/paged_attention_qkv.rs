//! The fused decode attention (`ops::paged_attention_qkv_fused`: the q/k/v epilogue folded into the
//! tensor-core paged attention kernel) against the two ops it replaces, `qkv_rope_cache` then
//! `paged_attention`, on the GPU in bf16: the same attention output and the same caches, with and
//! without a bias and a RoPE table, over blocks scattered through the pool, idle rows (context 0,
//! slot u32::MAX) and contexts split into several partitions. Without a GPU it prints
//! "skipped: no GPU" (and fails under REALIGN_REQUIRE_GPU=1).

use half::bf16;
use kernels::cuda::paged_attention as pa;
use kernels::ops::paged_attention::Paged;
use kernels::ops::qkv_rope_cache::{qkv_rope_cache_table, RopeTable};
use kernels::testing::{randn_vec, rel_err, test_devices};
use kernels::{ops, DType, Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

struct Case {
    /// Context length of each sequence, the new token included (0: an idle row).
    lens: Vec<usize>,
    h: usize,
    k: usize,
    d: usize,
    block_size: usize,
    bias: bool,
    table: bool,
}

/// Host data of one case: the q/k/v product, bias, old cache contents, tables, slots, positions.
struct Inputs {
    acc: Vec<f32>,
    bias: Vec<f32>,
    kc: Vec<f32>,
    vc: Vec<f32>,
    tables: Vec<u32>,
    max_blocks: usize,
    slots: Vec<u32>,
    pos: Vec<u32>,
    pool: usize,
}

fn inputs(c: &Case, seed: u64) -> Inputs {
    let (s, all) = (c.lens.len(), c.h + 2 * c.k);
    let bs = c.block_size;
    let need: usize = c.lens.iter().map(|l| l.div_ceil(bs)).sum();
    let num_blocks = need + 3;
    let mut order: Vec<u32> = (0..num_blocks as u32).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let max_blocks = c.lens.iter().map(|l| l.div_ceil(bs)).max().unwrap().max(1);
    let mut tables = vec![0u32; s * max_blocks];
    let (mut slots, mut pos) = (Vec::new(), Vec::new());
    let mut next = 0;
    for (si, &l) in c.lens.iter().enumerate() {
        for b in 0..l.div_ceil(bs) {
            tables[si * max_blocks + b] = order[next];
            next += 1;
        }
        if l == 0 {
            slots.push(u32::MAX);
            pos.push(0);
        } else {
            let p = l - 1;
            slots.push(tables[si * max_blocks + p / bs] * bs as u32 + (p % bs) as u32);
            pos.push(p as u32);
        }
    }
    let pool = num_blocks * bs;
    let half_scaled = |n, seed| randn_vec(n, seed).into_iter().map(|v| 0.5 * v).collect();
    Inputs {
        acc: randn_vec(s * all * c.d, seed + 1),
        bias: half_scaled(all * c.d, seed + 2),
        kc: randn_vec(pool * c.k * c.d, seed + 3),
        vc: randn_vec(pool * c.k * c.d, seed + 4),
        tables,
        max_blocks,
        slots,
        pos,
        pool,
    }
}

fn bf16_tensor(v: &[f32], shape: &[usize], dev: &Device) -> Tensor {
    let t = Tensor::from_f32(v.to_vec(), shape, &Device::Cpu).unwrap();
    ops::cast(&t, DType::BF16).unwrap().to_device(dev).unwrap()
}

fn host(t: &Tensor) -> Vec<f32> {
    ops::cast(t, DType::F32).unwrap().to_vec_f32().unwrap()
}

/// (out, k cache, v cache) on host after one decode attention, fused or as the two ops.
fn run(c: &Case, x: &Inputs, dev: &Device, fused: bool) -> [Vec<f32>; 3] {
    let (s, all) = (c.lens.len(), c.h + 2 * c.k);
    let acc = Tensor::from_f32(x.acc.clone(), &[s, all * c.d], dev).unwrap();
    let bias = bf16_tensor(&x.bias, &[all * c.d], dev);
    let bias = c.bias.then_some(&bias);
    let mut kc = bf16_tensor(&x.kc, &[x.pool, c.k, c.d], dev);
    let mut vc = bf16_tensor(&x.vc, &[x.pool, c.k, c.d], dev);
    let tables = Tensor::from_u32(x.tables.clone(), &[s, x.max_blocks], dev).unwrap();
    let lens: Vec<u32> = c.lens.iter().map(|&l| l as u32).collect();
    let lens = Tensor::from_u32(lens, &[s], dev).unwrap();
    let pos = Tensor::from_u32(x.pos.clone(), &[s], dev).unwrap();
    let slots = Tensor::from_u32(x.slots.clone(), &[s], dev).unwrap();
    let max_len = *c.lens.iter().max().unwrap();
    let theta = 1e6;
    let table = RopeTable::new(max_len.max(1), c.d, theta, dev).unwrap();
    let table = c.table.then_some(&table);
    let scale = 1.0 / (c.d as f32).sqrt();
    let out = if fused {
        let paged = Paged {
            k_cache: &kc,
            v_cache: &vc,
            block_tables: &tables,
            context_lens: &lens,
            block_size: c.block_size,
            max_context_len: max_len,
            scale,
        };
        // The case must take the fused kernel, not the op's two-op fallback.
        assert!(
            pa::qkv_split(&acc, c.h, &paged).unwrap().is_some(),
            "the fused kernel does not apply to H {} K {} D {}",
            c.h,
            c.k,
            c.d
        );
        let qkv = ops::QkvInputs {
            acc: &acc,
            bias,
            pos: &pos,
            slots: &slots,
            heads: c.h,
            theta,
            table,
        };
        let (bt, cl) = (&tables, &lens);
        ops::paged_attention_qkv_fused(&qkv, &mut kc, &mut vc, bt, cl, c.block_size, max_len, scale)
            .unwrap()
    } else {
        let q = match table {
            Some(t) => qkv_rope_cache_table(&acc, bias, &pos, &slots, &mut kc, &mut vc, c.h, t),
            None => ops::qkv_rope_cache(&acc, bias, &pos, &slots, &mut kc, &mut vc, c.h, theta),
        }
        .unwrap()
        .q;
        ops::paged_attention(&q, &kc, &vc, &tables, &lens, c.block_size, max_len, scale).unwrap()
    };
    [host(&out), host(&kc), host(&vc)]
}

/// Every element within one bf16 rounding of the reference (a wrong head, slot or rotation is off
/// by O(1)).
fn assert_within_a_rounding(label: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ulp = (w.abs() * 2f32.powi(-7)).max(1e-6);
        assert!(
            (g - w).abs() <= ulp,
            "{label}: element {i} is {g}, the two ops give {w}"
        );
    }
}

fn cases() -> Vec<Case> {
    let qwen = |lens: Vec<usize>, bias, table| Case {
        lens,
        h: 14,
        k: 2,
        d: 64,
        block_size: 16,
        bias,
        table,
    };
    vec![
        // Qwen2.5-0.5B heads; mixed contexts, an idle row, a context over several partitions
        // (few sequences: the split halves its partitions down to 128 tokens).
        qwen(vec![1, 17, 0, 130, 700, 64], true, true),
        qwen(vec![5, 300, 33, 0], true, false),
        qwen(vec![129, 2, 16], false, true),
        // Head dim 128, group 4, blocks of 32.
        Case {
            lens: vec![40, 1, 257, 96],
            h: 8,
            k: 2,
            d: 128,
            block_size: 32,
            bias: true,
            table: true,
        },
    ]
}

#[test]
fn fused_decode_attention_equals_qkv_rope_cache_then_paged_attention() {
    let Some(dev) = test_devices().into_iter().find(Device::is_cuda) else {
        return;
    };
    for (i, c) in cases().iter().enumerate() {
        let x = inputs(c, 100 + i as u64);
        let [out, kc, vc] = run(c, &x, &dev, true);
        let [out_ref, kc_ref, vc_ref] = run(c, &x, &dev, false);
        let label = format!("case {i} (H {} K {} D {})", c.h, c.k, c.d);
        assert_within_a_rounding(&format!("{label} k cache"), &kc, &kc_ref);
        assert_within_a_rounding(&format!("{label} v cache"), &vc, &vc_ref);
        let e = rel_err(&out, &out_ref);
        assert!(e < 1e-3, "{label}: attention output rel err {e}");
        // The new rows did land: some slot differs from the old cache contents.
        let old: Vec<f32> = x.kc.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert!(kc != old, "{label}: the k cache was not written");
    }
}

#[test]
fn fused_decode_attention_rejects_bad_inputs() {
    for dev in test_devices() {
        let c = &cases()[1];
        let x = inputs(c, 7);
        let s = c.lens.len();
        let all = c.h + 2 * c.k;
        // acc one column short of (H + 2K)·D.
        let acc =
            Tensor::from_f32(vec![0.0; s * (all * c.d - 1)], &[s, all * c.d - 1], &dev).unwrap();
        let dtype = if dev.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let mut kc = Tensor::zeros(&[x.pool, c.k, c.d], dtype, &dev).unwrap();
        let mut vc = Tensor::zeros(&[x.pool, c.k, c.d], dtype, &dev).unwrap();
        let tables = Tensor::from_u32(x.tables.clone(), &[s, x.max_blocks], &dev).unwrap();
        let lens: Vec<u32> = c.lens.iter().map(|&l| l as u32).collect();
        let lens = Tensor::from_u32(lens, &[s], &dev).unwrap();
        let pos = Tensor::from_u32(x.pos.clone(), &[s], &dev).unwrap();
        let slots = Tensor::from_u32(x.slots.clone(), &[s], &dev).unwrap();
        let qkv = ops::QkvInputs {
            acc: &acc,
            bias: None,
            pos: &pos,
            slots: &slots,
            heads: c.h,
            theta: 1e4,
            table: None,
        };
        let r =
            ops::paged_attention_qkv_fused(&qkv, &mut kc, &mut vc, &tables, &lens, 16, 300, 0.1);
        let Err(e) = r else {
            panic!("{dev}: a short acc must be an error")
        };
        let e = e.to_string();
        assert!(e.contains("columns"), "{dev}: {e}");
        // A context bound beyond what the block tables hold.
        let acc = Tensor::from_f32(vec![0.0; s * all * c.d], &[s, all * c.d], &dev).unwrap();
        let qkv = ops::QkvInputs { acc: &acc, ..qkv };
        let too_long = x.max_blocks * 16 + 1;
        let r = ops::paged_attention_qkv_fused(
            &qkv, &mut kc, &mut vc, &tables, &lens, 16, too_long, 0.1,
        );
        let Err(e) = r else {
            panic!("{dev}: an unbounded context must be an error")
        };
        let e = e.to_string();
        assert!(e.contains("max_context_len"), "{dev}: {e}");
    }
}
