//! Times the decode step's GEMMs per shape and writes the table `blas` runs them from.
//!
//! Shapes: per model (Qwen2.5-0.5B: C 896, 14 / 2 heads of 64, F 4864, V 151936; SmolLM2-135M:
//! C 576, 9 / 3 heads of 64, F 1536, V 49152) and decode batch bucket N (8 .. 256 rows): the fused
//! q/k/v product [N,C]·[(H+2K)·D, C]ᵀ into f32, o [N,H·D]·[C,H·D]ᵀ, gate/up [N,C]·[2F,C]ᵀ, down
//! [N,F]·[C,F]ᵀ and the LM head [N,C]·[V,C]ᵀ, all bf16 (as `actor`'s decode layer runs them).
//!
//! For each shape: `cublasGemmEx`, the default route (table / heuristic / ex) and every cuBLASLt
//! candidate (`blas::candidates`: the heuristic's list and split-k variants) are timed as a CUDA
//! graph of 20 back-to-back products (the way the decode step replays them: no launch gaps from
//! the host), median of 7 replays. A candidate counts only if its output is within 1e-2 (relative
//! L2) of `cublasGemmEx`'s and two runs give identical bits. The fastest (ex included) goes into
//! the table written to `--table-out FILE` (default: print only); `blas` reads it at run time
//! from `REALIGN_GEMM_TABLE=FILE`, or built in from `kernels/src/cuda/blas/decode_gemms.txt`.
//!
//! `cargo run -p kernels --release --example gemm_bench -- [--table-out FILE] [--rows 8,16,..]
//! [--models qwen,smol] [--candidates 24]` on a machine with a GPU.
//!
//! `--keys FILE` times instead the GEMMs a run logged with `REALIGN_GEMM_LOG=FILE` (any shape,
//! transposes and accumulation, e.g. every product of one training step: forward, dx and dW), the
//! same way, and with `--table-out` writes the built-in table followed by their entries, for
//! `REALIGN_GEMM_TABLE`.

use kernels::cuda::blas::{self, Choice, GemmKey};
use kernels::cuda::CudaDevice;
use kernels::{DType, Device, Tensor};

/// Products per timed graph.
const REPS: usize = 20;

/// Non-zero pseudo-random values in [-1, 1) (xorshift).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn bf16_tensor(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let n = shape.iter().product();
    kernels::testing::float_tensor(rand_vec(n, seed), shape, dev, DType::BF16)
}

/// Median milliseconds per product of `f` run REPS times inside one CUDA graph (7 replays after
/// one warm-up replay); None if the capture or a replay fails.
fn time_graph(cuda: &CudaDevice, mut f: impl FnMut() -> kernels::Result<()>) -> Option<f64> {
    let graph = cuda
        .capture(|| {
            for _ in 0..REPS {
                f()?;
            }
            Ok(())
        })
        .ok()?;
    graph.launch().ok()?;
    let ctx = cuda.context();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut ms = Vec::new();
    for _ in 0..7 {
        let (a, b) = (ctx.new_event(flags).ok()?, ctx.new_event(flags).ok()?);
        a.record(cuda.stream()).ok()?;
        graph.launch().ok()?;
        b.record(cuda.stream()).ok()?;
        ms.push(a.elapsed_ms(&b).ok()? as f64 / REPS as f64);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Some(ms[ms.len() / 2])
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

struct Shape {
    model: &'static str,
    name: &'static str,
    n: usize,
    i: usize,
    o: usize,
    out: DType,
}

fn shapes(models: &[String], rows: &[usize]) -> Vec<Shape> {
    // (model, C, H, K, D, F, V)
    let all = [
        (
            "qwen",
            896usize,
            14usize,
            2usize,
            64usize,
            4864usize,
            151936usize,
        ),
        ("smol", 576, 9, 3, 64, 1536, 49152),
    ];
    let mut out = Vec::new();
    for &(model, c, h, k, d, f, v) in all.iter().filter(|m| models.iter().any(|x| x == m.0)) {
        for &n in rows {
            for (name, i, o, dt) in [
                ("qkv", c, (h + 2 * k) * d, DType::F32),
                ("o", h * d, c, DType::BF16),
                ("gate_up", c, 2 * f, DType::BF16),
                ("down", f, c, DType::BF16),
                ("lm_head", c, v, DType::BF16),
            ] {
                out.push(Shape {
                    model,
                    name,
                    n,
                    i,
                    o,
                    out: dt,
                });
            }
        }
    }
    out
}

struct Row {
    model: &'static str,
    name: &'static str,
    n: usize,
    ex_ms: f64,
    default_ms: f64,
    heuristic_ms: f64,
    best_ms: f64,
}

fn main() -> kernels::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let table_out = opt("--table-out");
    let rows: Vec<usize> = opt("--rows")
        .unwrap_or_else(|| "8,16,32,64,128,256".into())
        .split(',')
        .map(|s| s.trim().parse().expect("--rows: comma-separated integers"))
        .collect();
    let models: Vec<String> = opt("--models")
        .unwrap_or_else(|| "qwen,smol".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let count: usize = opt("--candidates")
        .map(|s| s.parse().expect("--candidates: an integer"))
        .unwrap_or(24);

    let cuda = CudaDevice::new(0)?;
    let dev = Device::Cuda(cuda.clone());
    let header = blas::table_header(&cuda)?;
    if let Some(path) = opt("--keys") {
        return bench_keys(&cuda, &dev, &header, &path, count, table_out.as_deref());
    }
    println!("gemm_bench: {header}, {REPS} products per graph, median of 7 replays");
    let mut lines = Vec::new();
    let mut summary = Vec::new();
    for s in shapes(&models, &rows) {
        let key = GemmKey::linear(s.n, s.i, s.o, DType::BF16, s.out, false);
        let x = bf16_tensor(&[s.n, s.i], 1 + s.n as u64, &dev);
        let w = bf16_tensor(&[s.o, s.i], 7 + s.o as u64, &dev);
        let mut y = Tensor::zeros(&[s.n, s.o], s.out, &dev)?;
        let flops = 2.0 * (s.n * s.i * s.o) as f64;
        let bytes = (2 * (s.n * s.i + s.o * s.i) + s.out.size_in_bytes() * s.n * s.o) as f64;
        blas::linear_with(&x, &w, &mut y, 0.0, &Choice::Ex)?;
        let want = y.to_vec_f32()?;
        let time = |choice: &Choice, y: &mut Tensor| {
            time_graph(&cuda, || blas::linear_with(&x, &w, y, 0.0, choice))
        };
        let ex_ms = time(&Choice::Ex, &mut y).unwrap_or(f64::NAN);
        let route = blas::default_route(&cuda, &key)?;
        let default_ms = time(&Choice::Default, &mut y).unwrap_or(f64::NAN);
        let cands = blas::candidates(&cuda, &key, count)?;
        // Time every candidate, then check the fastest first: output within 1e-2 of
        // cublasGemmEx's and identical bits on a second run (the first that passes wins).
        let mut timed: Vec<(f64, &blas::Candidate)> = Vec::new();
        let mut heuristic_ms = f64::NAN;
        let mut failed = 0;
        for c in &cands {
            match time(&Choice::Algo(c.algo), &mut y) {
                Some(ms) => {
                    if c.origin == "heuristic #0" {
                        heuristic_ms = ms;
                    }
                    timed.push((ms, c));
                }
                None => failed += 1,
            }
        }
        timed.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut best: (f64, Option<blas::Algo>, String) = (ex_ms, None, "cublasGemmEx".into());
        let mut rejected = 0;
        for (ms, c) in timed.iter().take_while(|(ms, _)| *ms < ex_ms) {
            let choice = Choice::Algo(c.algo);
            let valid = blas::linear_with(&x, &w, &mut y, 0.0, &choice)
                .and_then(|_| y.to_vec_f32())
                .and_then(|first| {
                    blas::linear_with(&x, &w, &mut y, 0.0, &choice)?;
                    let again = y.to_vec_f32()?;
                    let same = first
                        .iter()
                        .zip(&again)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    Ok(same && rel_err(&first, &want) < 1e-2)
                })
                .unwrap_or(false);
            if valid {
                best = (
                    *ms,
                    Some(c.algo),
                    format!("{} {}", c.origin, blas::describe(&c.algo)),
                );
                break;
            }
            rejected += 1;
        }
        println!(
            "bench {:<5} {:<8} N {:>4} [{}x{}] -> {}: ex {:>7.2} us ({:>5.0} TFLOP/s {:>5.0} GB/s) | default ({route}) {:>7.2} us | heuristic#0 {:>7.2} us | best {:>7.2} us ({:>5.0} TFLOP/s {:>5.0} GB/s, {:.2}x ex) of {} candidates ({} rejected, {} failed): {}",
            s.model,
            s.name,
            s.n,
            s.o,
            s.i,
            s.out,
            ex_ms * 1e3,
            flops / ex_ms / 1e9,
            bytes / ex_ms / 1e6,
            default_ms * 1e3,
            heuristic_ms * 1e3,
            best.0 * 1e3,
            flops / best.0 / 1e9,
            bytes / best.0 / 1e6,
            ex_ms / best.0,
            cands.len(),
            rejected,
            failed,
            best.2
        );
        lines.push(format!(
            "{}  # {} {} N {}: {:.2} us (ex {:.2} us)",
            blas::table_line(&key, best.1.as_ref()),
            s.model,
            s.name,
            s.n,
            best.0 * 1e3,
            ex_ms * 1e3
        ));
        summary.push(Row {
            model: s.model,
            name: s.name,
            n: s.n,
            ex_ms,
            default_ms,
            heuristic_ms,
            best_ms: best.0,
        });
    }
    // Per model and N: the four layer GEMMs together, and the LM head.
    for model in ["qwen", "smol"] {
        for &n in &rows {
            let rs: Vec<&Row> = summary
                .iter()
                .filter(|r| r.model == model && r.n == n && r.name != "lm_head")
                .collect();
            if rs.is_empty() {
                continue;
            }
            let sum = |f: &dyn Fn(&Row) -> f64| rs.iter().map(|r| f(r)).sum::<f64>() * 1e3;
            println!(
                "layer {model:<5} N {n:>4}: four GEMMs ex {:>6.2} us, default {:>6.2} us, heuristic#0 {:>6.2} us, best {:>6.2} us ({:.2}x)",
                sum(&|r| r.ex_ms),
                sum(&|r| r.default_ms),
                sum(&|r| r.heuristic_ms),
                sum(&|r| r.best_ms),
                sum(&|r| r.ex_ms) / sum(&|r| r.best_ms)
            );
        }
    }
    let text = format!(
        "# measured by gemm_bench on this GPU (fastest per shape, ex = cublasGemmEx)\n{header}\n{}\n",
        lines.join("\n")
    );
    match table_out {
        Some(path) => {
            std::fs::write(&path, &text)
                .map_err(|e| kernels::Error::msg(format!("writing {path}: {e}")))?;
            println!("table written to {path} ({} entries)", lines.len());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A bf16 or f32 tensor of `n` pseudo-random values.
fn rand_tensor(n: usize, dtype: DType, seed: u64, dev: &Device) -> Tensor {
    kernels::testing::float_tensor(rand_vec(n, seed), &[n], dev, dtype)
}

/// `--keys FILE`: time every logged GEMM (`REALIGN_GEMM_LOG`) as `cublasGemmEx` and as each
/// cuBLASLt candidate; keep the fastest candidate whose output is within 1e-2 of `cublasGemmEx`'s
/// and bit-identical on a second run (C reset to the same start each time when it is read).
fn bench_keys(
    cuda: &CudaDevice,
    dev: &Device,
    header: &str,
    path: &str,
    count: usize,
    table_out: Option<&str>,
) -> kernels::Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| kernels::Error::msg(format!("reading --keys {path}: {e}")))?;
    let mut keys: Vec<GemmKey> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("lt ") {
            continue;
        }
        match blas::parse_key(line) {
            Some(k) if !keys.contains(&k) => keys.push(k),
            Some(_) => {}
            None => {
                return Err(kernels::Error::msg(format!(
                    "--keys {path}: bad line {line}"
                )))
            }
        }
    }
    println!("gemm_bench --keys {path}: {} shapes, {header}", keys.len());
    let (mut lines, mut total_ex, mut total_best) = (Vec::new(), 0.0, 0.0);
    for (i, key) in keys.iter().enumerate() {
        let a_cols = if key.trans_a { key.m } else { key.k };
        let b_cols = if key.trans_b { key.k } else { key.n };
        let a = rand_tensor(key.lda * a_cols, key.ab, 11 + i as u64, dev);
        let b = rand_tensor(key.ldb * b_cols, key.ab, 23 + i as u64, dev);
        let c0 = rand_vec(key.ldc * key.n, 37 + i as u64);
        let fresh_c = || kernels::testing::float_tensor(c0.clone(), &[c0.len()], dev, key.c_type);
        let beta = if key.reads_c { 1.0 } else { 0.0 };
        // C after one product run as `choice` from the same start.
        let once = |choice: &Choice| -> kernels::Result<Vec<f32>> {
            let mut c = fresh_c();
            blas::gemm_with(key, &a, &b, &mut c, 1.0, beta, choice)?;
            c.to_vec_f32()
        };
        let want = once(&Choice::Ex)?;
        let mut c = fresh_c();
        let mut time = |choice: &Choice| {
            time_graph(cuda, || {
                blas::gemm_with(key, &a, &b, &mut c, 1.0, beta, choice)
            })
        };
        let ex_ms = time(&Choice::Ex).unwrap_or(f64::NAN);
        let cands = blas::candidates(cuda, key, count)?;
        let mut timed: Vec<(f64, &blas::Candidate)> = cands
            .iter()
            .filter_map(|c| time(&Choice::Algo(c.algo)).map(|ms| (ms, c)))
            .collect();
        timed.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut best: (f64, Option<blas::Algo>, String) = (ex_ms, None, "cublasGemmEx".into());
        for (ms, cand) in timed.iter().take_while(|(ms, _)| *ms < ex_ms) {
            let choice = Choice::Algo(cand.algo);
            let valid = once(&choice)
                .and_then(|first| {
                    let again = once(&choice)?;
                    let same = first
                        .iter()
                        .zip(&again)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    Ok(same && rel_err(&first, &want) < 1e-2)
                })
                .unwrap_or(false);
            if valid {
                best = (
                    *ms,
                    Some(cand.algo),
                    format!("{} {}", cand.origin, blas::describe(&cand.algo)),
                );
                break;
            }
        }
        let flops = 2.0 * (key.m * key.n * key.k) as f64;
        println!(
            "key {i:>3} {}: ex {:>8.2} us ({:>4.0} TFLOP/s) | best {:>8.2} us ({:>4.0} TFLOP/s, {:.2}x) of {} candidates: {}",
            blas::table_line(key, None),
            ex_ms * 1e3,
            flops / ex_ms / 1e9,
            best.0 * 1e3,
            flops / best.0 / 1e9,
            ex_ms / best.0,
            cands.len(),
            best.2
        );
        total_ex += ex_ms;
        total_best += best.0;
        lines.push(format!(
            "{}  # {:.2} us (ex {:.2} us)",
            blas::table_line(key, best.1.as_ref()),
            best.0 * 1e3,
            ex_ms * 1e3
        ));
    }
    println!(
        "all {} shapes once each: ex {:.3} ms, best {:.3} ms ({:.3}x)",
        keys.len(),
        total_ex,
        total_best,
        total_ex / total_best
    );
    let text = format!(
        "{}\n# --keys {path}: measured by gemm_bench on this GPU (fastest per shape, ex = cublasGemmEx)\n{header}\n{}\n",
        blas::built_in_table().trim_end(),
        lines.join("\n")
    );
    match table_out {
        Some(out) => {
            std::fs::write(out, &text)
                .map_err(|e| kernels::Error::msg(format!("writing {out}: {e}")))?;
            println!(
                "table written to {out} (built-in + {} entries)",
                lines.len()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}
