//! Throughput of one rollout: B prompts of P random tokens, exactly N new tokens each (EOS
//! ignored), greedy, through `Engine::generate_with_stats` (paged KV, continuous batching).
//!
//!   cargo run --release -p actor --example rollout_bench -- --device cuda --dtype bf16
//!   cargo run --release -p actor --example rollout_bench -- --device cpu --dtype f32 \
//!       --shapes tiny --batch 4 --prompt 8 --new 8                          (CPU smoke run)
//!
//! Options: --shapes qwen2.5-0.5b|smollm2-135m|tiny (random weights, seed 0) or --model DIR (real
//! weights), --batch B, --prompt P, --new N, --iters I, --kv-fraction F, --no-cuda-graphs (decode
//! op by op; CUDA graphs, EngineConfig::cuda_graphs, are the default; --cuda-graphs is accepted),
//! --overlap / --serial (the overlapped decode loop, EngineConfig::overlap, the default, or the
//! serial one; REALIGN_OVERLAP=1 / =0 overrides both), --fused-attention / --split-attention (the
//! decode step's q/k/v epilogue inside the attention kernel, EngineConfig::fused_attention, the
//! default, or two launches; REALIGN_DECODE_ATTN=fused / =split overrides both), --lanes N
//! (1 to 4: EngineConfig::decode_lanes; REALIGN_DECODE_LANES overrides it), --out FILE
//! (appends).
//!
//! One warm-up rollout, then I timed ones (median wall time, device synchronised). Reported:
//! - tokens/s of new tokens (B·N / median seconds);
//! - decode_step_s = median seconds / N. The engine does not expose its prefill time, so this
//!   figure INCLUDES the prefill, spread over the N steps. decode_step_excl_prefill_s subtracts
//!   the median of separate prefill-only rollouts (same prompts, 1 new token) and divides by N-1;
//! - floor_step_s: the memory-bandwidth floor of one decode step at batch B: every weight read
//!   once (a tied embedding counted once, as the LM head; an untied embedding's lookup is
//!   negligible) plus the K/V of B sequences at their mean decode context P + N/2, over 4.3 TB/s
//!   (H200 copy bandwidth, docs/perf-notes.md). ratio = decode_step / floor (1 = at the floor).

use std::path::PathBuf;
use std::time::Instant;

use actor::{Engine, EngineConfig, KvBudget, Request, RolloutStats, SamplingParams};
use anyhow::{bail, ensure, Context, Result};
use kernels::{DType, Device};
use model::{Arch, ModelConfig, Params};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Copy bandwidth of an H200 in bytes/s, the denominator of the decode floor.
const HBM_BYTES_PER_S: f64 = 4.3e12;

struct Args {
    device: String,
    dtype: DType,
    shapes: String,
    model: Option<PathBuf>,
    batch: usize,
    prompt: usize,
    new: usize,
    iters: usize,
    kv_fraction: f64,
    cuda_graphs: bool,
    overlap: bool,
    fused_attention: bool,
    lanes: usize,
    out: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        device: "cpu".into(),
        dtype: DType::F32,
        shapes: "qwen2.5-0.5b".into(),
        model: None,
        batch: 256,
        prompt: 128,
        new: 256,
        iters: 2,
        kv_fraction: 0.8,
        cuda_graphs: EngineConfig::default().cuda_graphs,
        overlap: EngineConfig::default().overlap,
        fused_attention: EngineConfig::default().fused_attention,
        lanes: EngineConfig::default().decode_lanes,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--device" => a.device = val()?,
            "--dtype" => a.dtype = val()?.parse()?,
            "--shapes" => a.shapes = val()?,
            "--model" => a.model = Some(val()?.into()),
            "--batch" => a.batch = val()?.parse().context("--batch must be an integer")?,
            "--prompt" => a.prompt = val()?.parse().context("--prompt must be an integer")?,
            "--new" => a.new = val()?.parse().context("--new must be an integer")?,
            "--iters" => a.iters = val()?.parse().context("--iters must be an integer")?,
            "--kv-fraction" => {
                a.kv_fraction = val()?.parse().context("--kv-fraction must be a number")?
            }
            "--out" => a.out = Some(val()?.into()),
            "--lanes" => {
                a.lanes = val()?
                    .parse()
                    .context("--lanes must be a number of lanes, 1 to 4")?
            }
            "--cuda-graphs" => a.cuda_graphs = true,
            "--no-cuda-graphs" => a.cuda_graphs = false,
            "--serial" => a.overlap = false,
            "--overlap" => a.overlap = true,
            "--fused-attention" => a.fused_attention = true,
            "--split-attention" => a.fused_attention = false,
            other => bail!("unknown argument {other}"),
        }
    }
    ensure!(
        a.batch > 0 && a.prompt > 0 && a.new > 0,
        "--batch, --prompt and --new must be at least 1"
    );
    ensure!(a.iters > 0, "--iters must be at least 1");
    Ok(a)
}

/// Named random-weight shapes (those of the HF configs, `scripts/peers/common.py`).
fn shapes(name: &str) -> Result<ModelConfig> {
    let mut cfg = match name {
        "qwen2.5-0.5b" => {
            // C 896, F 4864, 24 layers, 14 query / 2 kv heads, D 64, V 151936.
            let mut c = ModelConfig::new(Arch::Qwen2, 896, 4864, 24, 14, 2, 151936);
            c.rope_theta = 1e6;
            c.rms_norm_eps = 1e-6;
            c.max_position_embeddings = 32768;
            c
        }
        "smollm2-135m" => {
            // C 576, F 1536, 30 layers, 9 query / 3 kv heads, D 64, V 49152.
            let mut c = ModelConfig::new(Arch::Llama, 576, 1536, 30, 9, 3, 49152);
            c.rope_theta = 1e5;
            c.rms_norm_eps = 1e-5;
            c.max_position_embeddings = 8192;
            c
        }
        "tiny" => {
            let mut c = ModelConfig::new(Arch::Qwen2, 64, 128, 2, 4, 2, 256);
            c.max_position_embeddings = 4096;
            c
        }
        other => bail!("--shapes must be qwen2.5-0.5b, smollm2-135m or tiny, got {other}"),
    };
    cfg.tie_word_embeddings = true;
    Ok(cfg)
}

/// Runs one rollout and returns its wall time (device synchronised) and stats.
fn timed_rollout(
    engine: &Engine,
    params: &Params,
    device: &Device,
    requests: &[Request],
) -> Result<(f64, RolloutStats)> {
    device.synchronize()?;
    let t0 = Instant::now();
    let (completions, stats) = engine.generate_with_stats(params, requests)?;
    device.synchronize()?;
    let secs = t0.elapsed().as_secs_f64();
    let want = requests[0].sampling.max_new_tokens;
    for c in &completions {
        ensure!(
            c.tokens.len() == want,
            "request {} ended after {} of {want} tokens ({}); raise --kv-fraction",
            c.request,
            c.tokens.len(),
            c.finish_reason.as_str()
        );
    }
    Ok((secs, stats))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> Result<()> {
    let a = parse()?;
    let device = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::cuda(0)?,
        d => match d.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::cuda(n)?,
            None => bail!("--device must be cpu, cuda or cuda:N, got {d}"),
        },
    };
    let (name, cfg, params) = match &a.model {
        Some(dir) => {
            let (cfg, params) = model::io::load_model(dir, &device, a.dtype)
                .with_context(|| format!("cannot load the model in {}", dir.display()))?;
            (dir.display().to_string(), cfg, params)
        }
        None => {
            let cfg = shapes(&a.shapes)?;
            let params = Params::init(&cfg, 0, &device, a.dtype)?;
            (a.shapes.clone(), cfg, params)
        }
    };

    let mut rng = StdRng::seed_from_u64(0);
    let make_requests = |rng: &mut StdRng, new: usize| -> Vec<Request> {
        (0..a.batch)
            .map(|i| Request {
                tokens: (0..a.prompt)
                    .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                    .collect(),
                // Greedy, no stop tokens, and min = max so every request makes exactly `new`.
                sampling: SamplingParams {
                    min_new_tokens: new,
                    stop_token_ids: Vec::new(),
                    ..SamplingParams::greedy(new)
                },
                n: 1,
                seed: i as u64,
            })
            .collect()
    };
    let requests = make_requests(&mut rng, a.new);
    // The same prompts, one new token: what the rollout spends on prefill.
    let prefill_only: Vec<Request> = requests
        .iter()
        .map(|r| Request {
            sampling: SamplingParams {
                min_new_tokens: 1,
                ..SamplingParams::greedy(1)
            },
            ..r.clone()
        })
        .collect();

    let engine = Engine::new(
        cfg.clone(),
        EngineConfig {
            kv_budget: KvBudget::FreeFraction(a.kv_fraction),
            max_running: a.batch.max(1),
            cuda_graphs: a.cuda_graphs,
            overlap: a.overlap,
            fused_attention: a.fused_attention,
            decode_lanes: a.lanes,
            ..EngineConfig::default()
        },
    )?;

    // What the engine runs (REALIGN_OVERLAP overrides the flag).
    let overlap = actor::engine::overlap_env().unwrap_or(a.overlap);
    let fused_attention = actor::engine::fused_attention_env().unwrap_or(a.fused_attention);
    let lanes = actor::engine::decode_lanes_env().unwrap_or(a.lanes);
    let (warm_s, _) = timed_rollout(&engine, &params, &device, &requests)?;
    eprintln!("warm-up: {warm_s:.3} s");
    let mut times = vec![];
    let mut last = RolloutStats::default();
    for i in 0..a.iters {
        let (s, stats) = timed_rollout(&engine, &params, &device, &requests)?;
        eprintln!(
            "run {i}: {s:.3} s, {} steps ({} graph replays), {} preemptions, peak KV {:.1} MiB",
            stats.steps,
            stats.graph_replays,
            stats.preemptions,
            stats.peak_kv_bytes as f64 / (1 << 20) as f64
        );
        times.push(s);
        last = stats;
    }
    let mut prefill_times = vec![];
    for _ in 0..a.iters {
        prefill_times.push(timed_rollout(&engine, &params, &device, &prefill_only)?.0);
    }
    let seconds = median(times);
    let prefill_s = median(prefill_times);

    let new_tokens = (a.batch * a.new) as f64;
    let tokens_per_s = new_tokens / seconds;
    let decode_step_s = seconds / a.new as f64;
    let decode_step_excl_prefill_s = if a.new > 1 {
        Some((seconds - prefill_s).max(0.0) / (a.new - 1) as f64)
    } else {
        None
    };

    // Bytes one decode step must read: all weights (an untied embedding is only looked up) and
    // the K/V of every sequence at the mean decode context P + N/2.
    let mut weight_bytes: usize = params
        .tensors()
        .iter()
        .map(|(_, t)| t.size_in_bytes())
        .sum();
    if !cfg.tie_word_embeddings {
        weight_bytes -= params.embed.size_in_bytes();
    }
    let kv_bytes_per_token = last.kv_bytes_per_block as f64 / last.block_size.max(1) as f64;
    let mean_context = a.prompt as f64 + a.new as f64 / 2.0;
    let kv_bytes = a.batch as f64 * mean_context * kv_bytes_per_token;
    let floor_step_s = (weight_bytes as f64 + kv_bytes) / HBM_BYTES_PER_S;

    eprintln!(
        "{name}, {:?} on {}, {} loop, {} decode attention, {lanes} lane(s){}: B {} × P {} + N {}: \
         {seconds:.3} s, {tokens_per_s:.0} new tokens/s",
        a.dtype,
        a.device,
        if overlap { "overlapped" } else { "serial" },
        if fused_attention { "fused" } else { "split" },
        if lanes > 1 && actor::llama::lane_sms_shared() {
            " sharing the SMs"
        } else {
            ""
        },
        a.batch,
        a.prompt,
        a.new
    );
    eprintln!(
        "decode step {:.3} ms (total / N, includes prefill) | floor {:.3} ms \
         ({:.1} MB weights + {:.1} MB KV at 4.3 TB/s) | ratio {:.2}",
        decode_step_s * 1e3,
        floor_step_s * 1e3,
        weight_bytes as f64 / 1e6,
        kv_bytes / 1e6,
        decode_step_s / floor_step_s
    );
    if let Some(d) = decode_step_excl_prefill_s {
        eprintln!(
            "decode step {:.3} ms excluding prefill (prefill-only rollout {:.3} s) | ratio {:.2}",
            d * 1e3,
            prefill_s,
            d / floor_step_s
        );
    }

    let ht = &last.host_time;
    let per_step = |x: f64| 1e3 * x / ht.decode_steps.max(1) as f64;
    eprintln!(
        "loop (last timed rollout, clock reads only): {:.3} s, {} decode steps | per decode step: \
         schedule {:.3} ms, decode call {:.3} ms (pack + upload {:.3}, graph launch {:.3}, device \
         wait {:.3}), bookkeeping {:.3} ms -> host {:.3} ms | prefill steps {:.3} s | {} drains, \
         {} discarded tokens",
        ht.total_s,
        ht.decode_steps,
        per_step(ht.schedule_s),
        per_step(ht.decode_s),
        per_step(ht.decode_pack_s),
        per_step(ht.decode_launch_s),
        per_step(ht.decode_wait_s),
        per_step(ht.bookkeeping_s),
        1e3 * ht.host_per_decode_step_s(),
        ht.prefill_s,
        last.drains,
        last.discarded_tokens
    );

    if !last.profile.is_empty() {
        // REALIGN_PROFILE=1: every phase ended with a sync, so the times above are inflated.
        let total: f64 = last.profile.iter().map(|(_, t)| t).sum();
        eprintln!("profile (last timed rollout, synced phases, {total:.3} s):");
        for (name, t) in &last.profile {
            eprintln!(
                "  {name:<20} {:>9.4} s {:>6.1}%  {:>8.3} ms/step",
                t,
                100.0 * t / total.max(1e-12),
                1e3 * t / last.steps.max(1) as f64
            );
        }
    }

    let line = serde_json::json!({
        "benchmark": "rollout_bench",
        "shapes": name,
        "device": a.device,
        "dtype": format!("{:?}", a.dtype),
        "batch": a.batch,
        "prompt": a.prompt,
        "new": a.new,
        "iters": a.iters,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "decode_step_s": decode_step_s,
        "decode_step_includes_prefill": true,
        "prefill_s": prefill_s,
        "decode_step_excl_prefill_s": decode_step_excl_prefill_s,
        "floor_step_s": floor_step_s,
        "ratio": decode_step_s / floor_step_s,
        "ratio_excl_prefill": decode_step_excl_prefill_s.map(|d| d / floor_step_s),
        "weight_bytes": weight_bytes,
        "kv_bytes_per_step": kv_bytes,
        "steps": last.steps,
        "preemptions": last.preemptions,
        "peak_kv_bytes": last.peak_kv_bytes,
        "kv_blocks": last.kv_blocks,
        "cuda_graphs": a.cuda_graphs,
        "overlap": overlap,
        "fused_attention": fused_attention,
        "decode_lanes": lanes,
        "lane_sms_shared": lanes > 1 && actor::llama::lane_sms_shared(),
        "drains": last.drains,
        "discarded_tokens": last.discarded_tokens,
        "graph_replays": last.graph_replays,
        "host_time": &last.host_time,
        "host_per_decode_step_s": last.host_time.host_per_decode_step_s(),
        "profiled": !last.profile.is_empty(),
        "profile": last.profile.iter().map(|(n, t)| (n.to_string(), *t)).collect::<std::collections::BTreeMap<_, _>>(),
    })
    .to_string();
    println!("{line}");
    if let Some(path) = &a.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
