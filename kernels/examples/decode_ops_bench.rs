//! Times the decode step's small ops at Qwen2.5-0.5B shapes and batch B (default 256): sampling
//! over the [B, V] bf16 logits (greedy, plain temperature, top-k + top-p), `qkv_rope_cache` with
//! cos/sin computed per token vs read from a `RopeTable`, `swiglu_packed`, `add_rmsnorm`. Each op
//! runs 20 times in one CUDA graph (as the decode step replays it), median of 7 replays.
//!
//! `cargo run -p kernels --release --example decode_ops_bench -- [--batch B]` on a GPU machine.

use kernels::cuda::CudaDevice;
use kernels::ops::qkv_rope_cache::{qkv_rope_cache_table, RopeTable};
use kernels::ops::{self, SampleSpec};
use kernels::testing::randn;
use kernels::{DType, Device, Tensor};

const REPS: usize = 20;

/// Median ms per call of `f` run REPS times in one captured graph.
fn time_graph(
    cuda: &CudaDevice,
    mut f: impl FnMut() -> kernels::Result<()>,
) -> kernels::Result<f64> {
    f()?; // loads the kernels outside the capture
    let graph = cuda.capture(|| {
        for _ in 0..REPS {
            f()?;
        }
        Ok(())
    })?;
    graph.launch()?;
    let ctx = cuda.context();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut ms = Vec::new();
    for _ in 0..7 {
        let err = |e| kernels::Error::Cuda(format!("{e:?}"));
        let (a, b) = (
            ctx.new_event(flags).map_err(err)?,
            ctx.new_event(flags).map_err(err)?,
        );
        a.record(cuda.stream()).map_err(err)?;
        graph.launch()?;
        b.record(cuda.stream()).map_err(err)?;
        ms.push(a.elapsed_ms(&b).map_err(err)? as f64 / REPS as f64);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[ms.len() / 2])
}

fn report(name: &str, ms: f64, bytes: f64) {
    println!(
        "bench {name:<40} {:>8.2} us  {:>6.0} GB/s",
        ms * 1e3,
        bytes / ms / 1e6
    );
}

fn main() -> kernels::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let b: usize = args
        .iter()
        .position(|a| a == "--batch")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse().expect("--batch: an integer"))
        .unwrap_or(256);
    let cuda = CudaDevice::new(0)?;
    let dev = Device::Cuda(cuda.clone());
    let (c, h, k, d, f, v) = (896usize, 14usize, 2usize, 64usize, 4864usize, 151936usize);

    // Sampling: logits like a language model's (scaled normals), bf16 as the decode step has them.
    let mut logits = randn(&[b, v], 1, &dev, DType::F32);
    ops::scale_inplace(&mut logits, 3.0)?;
    let logits = ops::cast(&logits, DType::BF16)?; // [B,V]
    let mut out = Tensor::zeros(&[b, 2], DType::U32, &dev)?;
    let specs = |mk: &dyn Fn(u32) -> SampleSpec| -> kernels::Result<Tensor> {
        let s: Vec<SampleSpec> = (0..b as u32).map(mk).collect();
        SampleSpec::pack(&s, &dev)
    };
    let bytes = (b * v * 2) as f64;
    for (name, spec) in [
        ("sample_tokens greedy", specs(&|r| SampleSpec::greedy(r))?),
        (
            "sample_tokens T=1",
            specs(&|r| SampleSpec::new(r, 1.0, r.wrapping_mul(0x9E37_79B9)))?,
        ),
        (
            "sample_tokens T=0.7 top-k 50 top-p 0.9",
            specs(&|r| SampleSpec {
                top_k: 50,
                top_p: 0.9,
                ..SampleSpec::new(r, 0.7, r.wrapping_mul(0x85EB_CA6B))
            })?,
        ),
    ] {
        let ms = time_graph(&cuda, || ops::sample_tokens_into(&logits, &spec, &mut out))?;
        report(&format!("{name} [{b}x{v}] bf16"), ms, bytes);
    }

    // qkv_rope_cache: positions 128..384 as in the benchmark rollout; slots distinct.
    let width = (h + 2 * k) * d;
    let acc = randn(&[b, width], 2, &dev, DType::F32);
    let bias = randn(&[width], 3, &dev, DType::BF16);
    let pos: Vec<u32> = (0..b as u32).map(|i| 128 + (i * 37) % 256).collect();
    let pos = Tensor::from_u32(pos, &[b], &dev)?;
    let slots = Tensor::from_u32((0..b as u32).map(|i| i * 3).collect(), &[b], &dev)?;
    let mut kc = Tensor::zeros(&[b * 3, k, d], DType::BF16, &dev)?;
    let mut vc = Tensor::zeros(&[b * 3, k, d], DType::BF16, &dev)?;
    let table = RopeTable::new(32768, d, 1e6, &dev)?;
    let bytes = (b * width * 4 + 2 * b * width * 2) as f64;
    let ms = time_graph(&cuda, || {
        ops::qkv_rope_cache(&acc, Some(&bias), &pos, &slots, &mut kc, &mut vc, h, 1e6).map(|_| ())
    })?;
    report(&format!("qkv_rope_cache computed cos/sin [{b}]"), ms, bytes);
    let ms = time_graph(&cuda, || {
        qkv_rope_cache_table(&acc, Some(&bias), &pos, &slots, &mut kc, &mut vc, h, &table)
            .map(|_| ())
    })?;
    report(&format!("qkv_rope_cache RopeTable [{b}]"), ms, bytes);

    let gu = randn(&[b, 2 * f], 4, &dev, DType::BF16);
    let ms = time_graph(&cuda, || ops::swiglu_packed(&gu).map(|_| ()))?;
    report(
        &format!("swiglu_packed [{b}x{}]", 2 * f),
        ms,
        (b * 3 * f * 2) as f64,
    );
    let x = randn(&[b, c], 5, &dev, DType::BF16);
    let y = randn(&[b, c], 6, &dev, DType::BF16);
    let w = randn(&[c], 7, &dev, DType::BF16);
    let ms = time_graph(&cuda, || ops::add_rmsnorm(&x, &y, &w, 1e-6).map(|_| ()))?;
    report(
        &format!("add_rmsnorm [{b}x{c}]"),
        ms,
        (b * c * 2 * 4) as f64,
    );
    Ok(())
}
