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
//! from `REALIGN_GEMM_TABLE=FILE`, or built in from `kernels/src/cuda/blas/gemm_table.txt`.
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
    for (i, s) in shapes(&models, &rows).iter().enumerate() {
        let key = GemmKey::linear(s.n, s.i, s.o, DType::BF16, s.out, false);
        let m = measure(&cuda, &dev, &key, i as u64, count)?;
        let flops = 2.0 * (s.n * s.i * s.o) as f64;
        let bytes = (2 * (s.n * s.i + s.o * s.i) + s.out.size_in_bytes() * s.n * s.o) as f64;
        println!(
            "bench {:<5} {:<8} N {:>4} [{}x{}] -> {}: ex {:>7.2} us ({:>5.0} TFLOP/s {:>5.0} GB/s) | default ({}) {:>7.2} us | heuristic#0 {:>7.2} us | best {:>7.2} us ({:>5.0} TFLOP/s {:>5.0} GB/s, {:.2}x ex) of {} candidates ({} rejected, {} failed): {}",
            s.model,
            s.name,
            s.n,
            s.o,
            s.i,
            s.out,
            m.ex_ms * 1e3,
            flops / m.ex_ms / 1e9,
            bytes / m.ex_ms / 1e6,
            m.route,
            m.default_ms * 1e3,
            m.heuristic_ms * 1e3,
            m.best_ms * 1e3,
            flops / m.best_ms / 1e9,
            bytes / m.best_ms / 1e6,
            m.ex_ms / m.best_ms,
            m.candidates,
            m.rejected,
            m.failed,
            m.best_desc
        );
        lines.push(format!(
            "{}  # {} {} N {}: {:.2} us (ex {:.2} us)",
            blas::table_line(&key, m.best_algo.as_ref()),
            s.model,
            s.name,
            s.n,
            m.best_ms * 1e3,
            m.ex_ms * 1e3
        ));
        summary.push(Row {
            model: s.model,
            name: s.name,
            n: s.n,
            ex_ms: m.ex_ms,
            default_ms: m.default_ms,
            heuristic_ms: m.heuristic_ms,
            best_ms: m.best_ms,
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
    emit_table("", "", &header, &lines, table_out.as_deref())
}

/// Writes the measured `lines` as a table section under `header`, after `prefix` (another table's
/// text, or nothing), to `table_out`, or prints it.
fn emit_table(
    prefix: &str,
    what: &str,
    header: &str,
    lines: &[String],
    table_out: Option<&str>,
) -> kernels::Result<()> {
    let text = format!(
        "{prefix}# {what}measured by gemm_bench on this GPU (fastest per shape, ex = cublasGemmEx)\n{header}\n{}\n",
        lines.join("\n")
    );
    match table_out {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| kernels::Error::msg(format!("writing {path}: {e}")))?;
            println!("table written to {path} ({} measured entries)", lines.len());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A bf16 or f32 tensor of `n` pseudo-random values.
fn rand_tensor(n: usize, dtype: DType, seed: u64, dev: &Device) -> Tensor {
    kernels::testing::float_tensor(rand_vec(n, seed), &[n], dev, dtype)
}

/// What timing one GEMM shape found.
struct Measured {
    ex_ms: f64,
    /// How the ops run it today ([`blas::default_route`]) and its time.
    route: &'static str,
    default_ms: f64,
    heuristic_ms: f64,
    best_ms: f64,
    /// The fastest valid cuBLASLt candidate; None: `cublasGemmEx` is the fastest.
    best_algo: Option<blas::Algo>,
    best_desc: String,
    candidates: usize,
    rejected: usize,
    failed: usize,
}

/// Times `key` on pseudo-random operands as `cublasGemmEx`, as the ops run it and as each
/// cuBLASLt candidate; the best is the fastest candidate faster than `cublasGemmEx` whose output is
/// within 1e-2 of `cublasGemmEx`'s and bit-identical on a second run (C reset to the same start
/// each time, since an accumulating key reads it).
fn measure(
    cuda: &CudaDevice,
    dev: &Device,
    key: &GemmKey,
    seed: u64,
    count: usize,
) -> kernels::Result<Measured> {
    let (a_elems, b_elems, c_elems) = key.operand_elems();
    let a = rand_tensor(a_elems, key.ab, 11 + 3 * seed, dev);
    let b = rand_tensor(b_elems, key.ab, 23 + 5 * seed, dev);
    let c0 = rand_vec(c_elems, 37 + 7 * seed);
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
    let route = blas::default_route(cuda, key)?;
    let default_ms = time(&Choice::Default).unwrap_or(f64::NAN);
    let cands = blas::candidates(cuda, key, count)?;
    let (mut timed, mut heuristic_ms, mut failed) = (Vec::new(), f64::NAN, 0);
    for cand in &cands {
        match time(&Choice::Algo(cand.algo)) {
            Some(ms) => {
                if cand.origin == "heuristic #0" {
                    heuristic_ms = ms;
                }
                timed.push((ms, cand));
            }
            None => failed += 1,
        }
    }
    timed.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut m = Measured {
        ex_ms,
        route,
        default_ms,
        heuristic_ms,
        best_ms: ex_ms,
        best_algo: None,
        best_desc: "cublasGemmEx".into(),
        candidates: cands.len(),
        rejected: 0,
        failed,
    };
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
            m.best_ms = *ms;
            m.best_algo = Some(cand.algo);
            m.best_desc = format!("{} {}", cand.origin, blas::describe(&cand.algo));
            break;
        }
        m.rejected += 1;
    }
    Ok(m)
}

/// `--keys FILE`: [`measure`] every GEMM a run logged (`REALIGN_GEMM_LOG`) and write the built-in
/// table followed by their entries.
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
        let m = measure(cuda, dev, key, i as u64, count)?;
        let flops = 2.0 * (key.m * key.n * key.k) as f64;
        println!(
            "key {i:>3} {}: ex {:>8.2} us ({:>4.0} TFLOP/s) | best {:>8.2} us ({:>4.0} TFLOP/s, {:.2}x) of {} candidates ({} rejected, {} failed): {}",
            blas::table_line(key, None),
            m.ex_ms * 1e3,
            flops / m.ex_ms / 1e9,
            m.best_ms * 1e3,
            flops / m.best_ms / 1e9,
            m.ex_ms / m.best_ms,
            m.candidates,
            m.rejected,
            m.failed,
            m.best_desc
        );
        total_ex += m.ex_ms;
        total_best += m.best_ms;
        lines.push(format!(
            "{}  # {:.2} us (ex {:.2} us)",
            blas::table_line(key, m.best_algo.as_ref()),
            m.best_ms * 1e3,
            m.ex_ms * 1e3
        ));
    }
    println!(
        "all {} shapes once each: ex {:.3} ms, best {:.3} ms ({:.3}x)",
        keys.len(),
        total_ex,
        total_best,
        total_ex / total_best
    );
    let built_in = format!("{}\n", blas::built_in_table().trim_end());
    emit_table(
        &built_in,
        &format!("--keys {path}: "),
        header,
        &lines,
        table_out,
    )
}
