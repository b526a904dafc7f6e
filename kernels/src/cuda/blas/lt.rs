//! cuBLASLt GEMMs with a fixed algorithm per shape: the tuned table, the heuristic, and the plans
//! (descriptors + algorithm) cached per device and shape.
//!
//! A `cublasLtMatmulAlgo_t` is 8 opaque u64 that cuBLASLt documents as serialisable for the same
//! library version, so the table stores them as they are, under a header naming the cuBLASLt
//! version, GPU architecture and SM count they were measured on; other GPUs or versions ignore
//! the table. A tabled algorithm is checked with `cublasLtMatmulAlgoCheck` before first use; if
//! the check fails the shape runs `cublasGemmEx` (logged).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::sys as lt;

use super::{Choice, Gemm, GemmKey};
use crate::cuda::CudaDevice;
use crate::{DType, Error, Result};

/// The built-in table (measured on the H200 by `kernels/examples/gemm_bench.rs`).
const BUILT_IN: &str = include_str!("gemm_table.txt");

/// One cuBLASLt algorithm: the 8 words of `cublasLtMatmulAlgo_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Algo(pub [u64; 8]);

/// A candidate algorithm for a shape (from the heuristic or a split-K variant of one).
#[derive(Debug, Clone)]
pub struct Candidate {
    pub algo: Algo,
    /// Workspace bytes it needs.
    pub workspace: usize,
    /// Where it came from: "heuristic #i" or "split-k S of #i".
    pub origin: String,
}

/// Tabled shapes of one header.
type Table = HashMap<GemmKey, Entry>;

/// A table entry: run `cublasGemmEx`, or this algorithm.
#[derive(Debug, Clone, Copy)]
enum Entry {
    Ex,
    Algo(Algo),
}

/// Descriptors and algorithm of one shape, created once per process and device. The handles are
/// never destroyed (a few dozen shapes per process).
pub(crate) struct Plan {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
    algo: lt::cublasLtMatmulAlgo_t,
    /// Smallest address alignment (bytes) the algorithm needs of A, B and C.
    align: u64,
}

// SAFETY: the descriptors are immutable after creation and only read by cuBLASLt calls, which
// are thread-safe for distinct launches; the device's single stream orders the launches.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

fn lt_err(what: &str, key: &GemmKey, s: lt::cublasStatus_t) -> Error {
    Error::Cuda(format!(
        "{what} (m={}, n={}, k={}, {} -> {}): {s:?}",
        key.m, key.n, key.k, key.ab, key.c_type
    ))
}

fn lt_type(d: DType) -> Result<lt::cudaDataType> {
    match d {
        DType::F32 => Ok(lt::cudaDataType::CUDA_R_32F),
        DType::BF16 => Ok(lt::cudaDataType::CUDA_R_16BF),
        DType::U32 => Err(Error::DType {
            op: "gemm",
            dtype: d,
        }),
    }
}

/// The cuBLAS handle as a cuBLASLt handle (cuBLAS documents the cast).
fn handle(dev: &CudaDevice) -> lt::cublasLtHandle_t {
    *dev.blas().handle() as lt::cublasLtHandle_t
}

/// `REALIGN_GEMM`: "ex" (cublasGemmEx everywhere), "heuristic" (no table), else the default.
fn mode() -> &'static str {
    static MODE: OnceLock<String> = OnceLock::new();
    MODE.get_or_init(|| std::env::var("REALIGN_GEMM").unwrap_or_default())
}

/// "lt <cuBLASLt version> <arch> <SMs>": the header under which this device's entries are
/// written and looked up.
pub fn table_header(dev: &CudaDevice) -> Result<String> {
    use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
    let sms = dev
        .context()
        .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(|e| Error::Cuda(format!("reading the SM count: {e:?}")))?;
    // SAFETY: a plain query of the loaded library.
    let version = unsafe { lt::cublasLtGetVersion() };
    Ok(format!("lt {version} {} {sms}", dev.arch()))
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::U32 => "u32",
    }
}

fn parse_dtype(s: &str) -> Option<DType> {
    match s {
        "f32" => Some(DType::F32),
        "bf16" => Some(DType::BF16),
        _ => None,
    }
}

/// One table line for `key`: `algo` None means `cublasGemmEx`.
pub fn table_line(key: &GemmKey, algo: Option<&Algo>) -> String {
    let b = |v: bool| if v { "1" } else { "0" };
    let what = match algo {
        None => "ex".to_string(),
        Some(a) => a.0.map(|w| format!("{w:x}")).join(":"),
    };
    format!(
        "{} {} {} {} {} {} {} {} {} {} {} {what}",
        b(key.trans_a),
        b(key.trans_b),
        key.m,
        key.n,
        key.k,
        key.lda,
        key.ldb,
        key.ldc,
        dtype_name(key.ab),
        dtype_name(key.c_type),
        b(key.reads_c)
    )
}

fn parse_line(line: &str) -> Option<(GemmKey, Entry)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 12 {
        return None;
    }
    let u = |i: usize| f[i].parse::<usize>().ok();
    let flag = |i: usize| match f[i] {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    let key = GemmKey {
        trans_a: flag(0)?,
        trans_b: flag(1)?,
        m: u(2)?,
        n: u(3)?,
        k: u(4)?,
        lda: u(5)?,
        ldb: u(6)?,
        ldc: u(7)?,
        ab: parse_dtype(f[8])?,
        c_type: parse_dtype(f[9])?,
        reads_c: flag(10)?,
    };
    let entry = if f[11] == "ex" {
        Entry::Ex
    } else {
        let words: Vec<u64> = f[11]
            .split(':')
            .map(|w| u64::from_str_radix(w, 16).ok())
            .collect::<Option<_>>()?;
        Entry::Algo(Algo(words.try_into().ok()?))
    };
    Some((key, entry))
}

/// The key of a table line (its last field, `ex` or an algorithm, is read but not returned):
/// how `gemm_bench --keys` reads the shapes a run logged (`REALIGN_GEMM_LOG`).
pub fn parse_key(line: &str) -> Option<GemmKey> {
    parse_line(line).map(|(k, _)| k)
}

/// The built-in table's text, so a measured table for other shapes can extend it.
pub fn built_in_table() -> &'static str {
    BUILT_IN
}

/// The entries of `text` under `header` (lines after a matching `lt ...` line, up to the next
/// header); `#` starts a comment. Malformed lines are skipped with a warning.
fn parse_table(text: &str, header: &str) -> HashMap<GemmKey, Entry> {
    let mut out = HashMap::new();
    let mut active = false;
    for (no, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("lt ") {
            active = line.split_whitespace().eq(header.split_whitespace());
            continue;
        }
        if !active {
            continue;
        }
        match parse_line(line) {
            Some((k, e)) => {
                out.insert(k, e);
            }
            None => tracing::warn!(line = no + 1, "GEMM table: malformed line skipped: {raw}"),
        }
    }
    out
}

/// This device's table entries (parsed once per process: all devices of a process share the
/// header's GPU model in practice; a device with another header gets its own parse).
fn table(dev: &CudaDevice) -> Result<Arc<Table>> {
    static TABLES: OnceLock<Mutex<HashMap<String, Arc<Table>>>> = OnceLock::new();
    let header = table_header(dev)?;
    let mut tables = TABLES
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| Error::Cuda("GEMM table lock poisoned".into()))?;
    if let Some(t) = tables.get(&header) {
        return Ok(t.clone());
    }
    let text = match std::env::var("REALIGN_GEMM_TABLE") {
        Ok(path) => std::fs::read_to_string(&path).map_err(|e| {
            Error::msg(format!(
                "reading the GEMM table REALIGN_GEMM_TABLE={path}: {e}"
            ))
        })?,
        Err(_) => BUILT_IN.to_string(),
    };
    let t = Arc::new(parse_table(&text, &header));
    tracing::debug!(entries = t.len(), %header, "GEMM table loaded");
    tables.insert(header, t.clone());
    Ok(t)
}

/// Which way the default runs `key`: "table", "table-ex", "heuristic" or "ex".
pub(crate) fn route(dev: &CudaDevice, key: &GemmKey) -> Result<&'static str> {
    if mode() == "ex" {
        return Ok("ex");
    }
    if mode() != "heuristic" {
        match table(dev)?.get(key) {
            Some(Entry::Algo(_)) => return Ok("table"),
            Some(Entry::Ex) => return Ok("table-ex"),
            None => {}
        }
    }
    Ok(if key.heuristic_eligible() {
        "heuristic"
    } else {
        "ex"
    })
}

/// Descriptors for `key` (C and D share C's layout: D = C in place).
struct Descs {
    desc: lt::cublasLtMatmulDesc_t,
    a: lt::cublasLtMatrixLayout_t,
    b: lt::cublasLtMatrixLayout_t,
    c: lt::cublasLtMatrixLayout_t,
}

/// `sm_target`: the SM count to plan for ([`super::super::Lanes::share_sms`]), None for the GPU's.
fn descs(key: &GemmKey, sm_target: Option<u32>) -> Result<Descs> {
    let err = |what: &str, s| lt_err(what, key, s);
    let mut desc = std::ptr::null_mut();
    // SAFETY: out-pointers to locals; attribute buffers are i32 as the API documents for TRANSA/B.
    unsafe {
        lt::cublasLtMatmulDescCreate(
            &mut desc,
            lt::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lt::cudaDataType::CUDA_R_32F,
        )
        .result()
        .map_err(|e| err("cublasLtMatmulDescCreate", e.0))?;
        for (attr, t) in [
            (
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                key.trans_a,
            ),
            (
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                key.trans_b,
            ),
        ] {
            let op: i32 = if t { 1 } else { 0 }; // CUBLAS_OP_T / CUBLAS_OP_N
            lt::cublasLtMatmulDescSetAttribute(
                desc,
                attr,
                &op as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .result()
            .map_err(|e| err("cublasLtMatmulDescSetAttribute", e.0))?;
        }
        if let Some(n) = sm_target {
            let n = n as i32;
            lt::cublasLtMatmulDescSetAttribute(
                desc,
                lt::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET,
                &n as *const i32 as *const c_void,
                std::mem::size_of::<i32>(),
            )
            .result()
            .map_err(|e| err("cublasLtMatmulDescSetAttribute(SM_COUNT_TARGET)", e.0))?;
        }
    }
    // Column-major stored shapes: op(A) is m×k (stored k×m when transposed), op(B) k×n.
    let (ar, ac) = if key.trans_a {
        (key.k, key.m)
    } else {
        (key.m, key.k)
    };
    let (br, bc) = if key.trans_b {
        (key.n, key.k)
    } else {
        (key.k, key.n)
    };
    let layout = |t: DType, rows: usize, cols: usize, ld: usize| -> Result<_> {
        let mut l = std::ptr::null_mut();
        // SAFETY: an out-pointer to a local.
        unsafe {
            lt::cublasLtMatrixLayoutCreate(
                &mut l,
                lt_type(t)?,
                rows as u64,
                cols as u64,
                ld.max(1) as i64,
            )
        }
        .result()
        .map_err(|e| err("cublasLtMatrixLayoutCreate", e.0))?;
        Ok(l)
    };
    Ok(Descs {
        desc,
        a: layout(key.ab, ar, ac, key.lda)?,
        b: layout(key.ab, br, bc, key.ldb)?,
        c: layout(key.c_type, key.m, key.n, key.ldc)?,
    })
}

/// The heuristic's algorithms for `key`, best first (at most `count`), for a workspace of
/// `workspace` bytes and 16-byte aligned operands.
fn heuristic(
    dev: &CudaDevice,
    key: &GemmKey,
    d: &Descs,
    count: usize,
) -> Result<Vec<lt::cublasLtMatmulHeuristicResult_t>> {
    let (_, ws) = dev.blas_workspace();
    let err = |what: &str, s| lt_err(what, key, s);
    let mut pref = std::ptr::null_mut();
    // SAFETY: out-pointers to locals; attribute buffers have the documented types (u64 for the
    // workspace size, u32 for alignments); the result array has `count` slots.
    unsafe {
        lt::cublasLtMatmulPreferenceCreate(&mut pref)
            .result()
            .map_err(|e| err("cublasLtMatmulPreferenceCreate", e.0))?;
        let ws = ws as u64;
        let set = |attr, p: *const c_void, n: usize| {
            lt::cublasLtMatmulPreferenceSetAttribute(pref, attr, p, n).result()
        };
        use lt::cublasLtMatmulPreferenceAttributes_t as P;
        let mut r = set(
            P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const u64 as *const c_void,
            8,
        );
        let align: u32 = 16;
        for attr in [
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
            P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
        ] {
            r = r.and(set(attr, &align as *const u32 as *const c_void, 4));
        }
        let mut results: Vec<lt::cublasLtMatmulHeuristicResult_t> =
            vec![std::mem::zeroed(); count.max(1)];
        let mut found = 0i32;
        let r = r.and(
            lt::cublasLtMatmulAlgoGetHeuristic(
                handle(dev),
                d.desc,
                d.a,
                d.b,
                d.c,
                d.c,
                pref,
                count.max(1) as i32,
                results.as_mut_ptr(),
                &mut found,
            )
            .result(),
        );
        lt::cublasLtMatmulPreferenceDestroy(pref);
        r.map_err(|e| err("cublasLtMatmulAlgoGetHeuristic", e.0))?;
        results.truncate(found.max(0) as usize);
        results.retain(|h| h.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        Ok(results)
    }
}

/// Checks `algo` for `key` (`cublasLtMatmulAlgoCheck`): the workspace it needs, if it is valid.
fn check(
    dev: &CudaDevice,
    d: &Descs,
    algo: &lt::cublasLtMatmulAlgo_t,
) -> Option<lt::cublasLtMatmulHeuristicResult_t> {
    // SAFETY: valid descriptors; the result is an out-parameter.
    unsafe {
        let mut res: lt::cublasLtMatmulHeuristicResult_t = std::mem::zeroed();
        lt::cublasLtMatmulAlgoCheck(handle(dev), d.desc, d.a, d.b, d.c, d.c, algo, &mut res)
            .result()
            .ok()?;
        (res.state == lt::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(res)
    }
}

fn cap_u32(algo: &lt::cublasLtMatmulAlgo_t, attr: lt::cublasLtMatmulAlgoCapAttributes_t) -> u32 {
    let mut v = 0u32;
    let mut written = 0usize;
    // SAFETY: a u32 buffer for a u32 (or i32) capability.
    unsafe {
        lt::cublasLtMatmulAlgoCapGetAttribute(
            algo,
            attr,
            &mut v as *mut u32 as *mut c_void,
            4,
            &mut written,
        )
    };
    v
}

fn config(algo: &lt::cublasLtMatmulAlgo_t, attr: lt::cublasLtMatmulAlgoConfigAttributes_t) -> u32 {
    let mut v = 0u32;
    let mut written = 0usize;
    // SAFETY: every config attribute fits 4 bytes (u32/i32 values; u16 cluster ids widen).
    unsafe {
        lt::cublasLtMatmulAlgoConfigGetAttribute(
            algo,
            attr,
            &mut v as *mut u32 as *mut c_void,
            4,
            &mut written,
        )
    };
    v
}

fn set_config(
    algo: &mut lt::cublasLtMatmulAlgo_t,
    attr: lt::cublasLtMatmulAlgoConfigAttributes_t,
    v: u32,
) -> bool {
    // SAFETY: a u32 value for a u32 attribute.
    unsafe {
        lt::cublasLtMatmulAlgoConfigSetAttribute(algo, attr, &v as *const u32 as *const c_void, 4)
    }
    .result()
    .is_ok()
}

fn to_raw(a: &Algo) -> lt::cublasLtMatmulAlgo_t {
    lt::cublasLtMatmulAlgo_t { data: a.0 }
}

/// A readable summary of an algorithm's configuration (id, tile, stages, split-k, reduction,
/// swizzle, custom option, inner shape, cluster).
pub fn describe(algo: &Algo) -> String {
    use lt::cublasLtMatmulAlgoConfigAttributes_t as C;
    let a = to_raw(algo);
    format!(
        "id={} tile={} stages={} splitk={} red={} swz={} opt={} inner={} cluster={}",
        config(&a, C::CUBLASLT_ALGO_CONFIG_ID),
        config(&a, C::CUBLASLT_ALGO_CONFIG_TILE_ID),
        config(&a, C::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        config(&a, C::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        config(&a, C::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
        config(&a, C::CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
        config(&a, C::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
        config(&a, C::CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID),
        config(&a, C::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
    )
}

/// Candidates for a benchmark to time: the heuristic's first `count` algorithms, plus split-k
/// variants (2..16 parts, each reduction scheme the algorithm supports) of its first four, each
/// validated by `cublasLtMatmulAlgoCheck` and fitting the device's workspace. Deduplicated.
pub fn candidates(dev: &CudaDevice, key: &GemmKey, count: usize) -> Result<Vec<Candidate>> {
    use lt::cublasLtMatmulAlgoCapAttributes_t as Cap;
    use lt::cublasLtMatmulAlgoConfigAttributes_t as C;
    dev.context().bind_to_thread().map_err(super::cuda_err)?;
    let d = descs(key, None)?;
    let (_, ws) = dev.blas_workspace();
    let heur = heuristic(dev, key, &d, count)?;
    let mut out: Vec<Candidate> = Vec::new();
    let mut push = |algo: lt::cublasLtMatmulAlgo_t, workspace: usize, origin: String| {
        if workspace <= ws && !out.iter().any(|c| c.algo.0 == algo.data) {
            out.push(Candidate {
                algo: Algo(algo.data),
                workspace,
                origin,
            });
        }
    };
    for (i, h) in heur.iter().enumerate() {
        push(h.algo, h.workspaceSize, format!("heuristic #{i}"));
    }
    // Split-k only helps grids too small to fill the GPU (a few hundred 128×128 output tiles).
    let tiles = key.m.div_ceil(128) * key.n.div_ceil(128);
    for (i, h) in heur
        .iter()
        .enumerate()
        .take(if tiles < 512 { 4 } else { 0 })
    {
        if cap_u32(&h.algo, Cap::CUBLASLT_ALGO_CAP_SPLITK_SUPPORT) == 0 {
            continue;
        }
        let schemes = cap_u32(&h.algo, Cap::CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK);
        for split in [2u32, 3, 4, 6, 8, 12, 16] {
            if split as usize > key.k.div_ceil(64) {
                continue; // fewer than 64 of K per part
            }
            for scheme in [1u32, 2, 4] {
                if schemes & scheme == 0 {
                    continue;
                }
                let mut a = h.algo;
                if !set_config(&mut a, C::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, split)
                    || !set_config(&mut a, C::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, scheme)
                {
                    continue;
                }
                if let Some(r) = check(dev, &d, &a) {
                    push(
                        a,
                        r.workspaceSize,
                        format!("split-k {split} red {scheme} of #{i}"),
                    );
                }
            }
        }
    }
    Ok(out)
}

/// The plan for `g` as `choice` says, or None for `cublasGemmEx`.
pub(crate) fn plan(dev: &CudaDevice, g: &Gemm, choice: &Choice) -> Result<Option<Arc<Plan>>> {
    let key = g.key();
    let want: Option<Option<Algo>> = match choice {
        Choice::Ex => return Ok(None),
        Choice::Algo(a) => Some(Some(*a)),
        Choice::Heuristic => Some(None),
        Choice::Default => match route(dev, &key)? {
            "table" => match table(dev)?.get(&key) {
                Some(Entry::Algo(a)) => Some(Some(*a)),
                _ => None,
            },
            "heuristic" => Some(None),
            _ => None,
        },
    };
    let Some(algo) = want else {
        return Ok(None);
    };
    let plan = cached_plan(dev, &key, algo, super::super::gemm_sm_target())?;
    // The algorithm's alignment needs, checked per call (addresses differ call to call).
    let aligned = |p: u64| plan.as_ref().is_some_and(|pl| p.is_multiple_of(pl.align));
    let elem = |d: DType| d.size_in_bytes();
    let lds_ok = plan.as_ref().is_some_and(|pl| {
        ((key.lda * elem(key.ab)) as u64).is_multiple_of(pl.align)
            && ((key.ldb * elem(key.ab)) as u64).is_multiple_of(pl.align)
            && ((key.ldc * elem(key.c_type)) as u64).is_multiple_of(pl.align)
    });
    if aligned(g.a) && aligned(g.b) && aligned(g.c) && lds_ok {
        Ok(plan)
    } else {
        Ok(None)
    }
}

/// Plans by (device, shape, requested algorithm: None = heuristic, SM count target); a failed
/// plan is cached as None (the shape then runs `cublasGemmEx`).
fn cached_plan(
    dev: &CudaDevice,
    key: &GemmKey,
    algo: Option<Algo>,
    sm_target: Option<u32>,
) -> Result<Option<Arc<Plan>>> {
    type Cache = HashMap<(usize, GemmKey, Option<Algo>, Option<u32>), Option<Arc<Plan>>>;
    static PLANS: OnceLock<Mutex<Cache>> = OnceLock::new();
    let id = (dev.ordinal(), *key, algo, sm_target);
    let mut plans = PLANS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| Error::Cuda("GEMM plan cache lock poisoned".into()))?;
    if let Some(p) = plans.get(&id) {
        return Ok(p.clone());
    }
    let made = make_plan(dev, key, algo, sm_target);
    let p = match made {
        Ok(p) => p.map(Arc::new),
        Err(e) => {
            tracing::warn!("cuBLASLt plan failed, using cublasGemmEx: {e}");
            None
        }
    };
    plans.insert(id, p.clone());
    Ok(p)
}

fn make_plan(
    dev: &CudaDevice,
    key: &GemmKey,
    algo: Option<Algo>,
    sm_target: Option<u32>,
) -> Result<Option<Plan>> {
    use lt::cublasLtMatmulAlgoCapAttributes_t as Cap;
    dev.context().bind_to_thread().map_err(super::cuda_err)?;
    let d = descs(key, sm_target)?;
    let (_, ws) = dev.blas_workspace();
    // The workspace an algorithm needs must fit the device's (it is passed whole to each call).
    let raw = match algo {
        Some(a) => {
            let raw = to_raw(&a);
            match check(dev, &d, &raw) {
                Some(r) if r.workspaceSize <= ws => raw,
                _ => {
                    tracing::warn!(
                        "tabled cuBLASLt algorithm rejected for m={} n={} k={}: cublasGemmEx",
                        key.m,
                        key.n,
                        key.k
                    );
                    return Ok(None);
                }
            }
        }
        None => match heuristic(dev, key, &d, 1)?.first() {
            Some(h) if h.workspaceSize <= ws => h.algo,
            _ => return Ok(None),
        },
    };
    let align = [
        Cap::CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_A_BYTES,
        Cap::CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_B_BYTES,
        Cap::CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_C_BYTES,
        Cap::CUBLASLT_ALGO_CAP_MIN_ALIGNMENT_D_BYTES,
    ]
    .into_iter()
    .map(|c| cap_u32(&raw, c) as u64)
    .max()
    .unwrap_or(16)
    .max(16);
    Ok(Some(Plan {
        desc: d.desc,
        a: d.a,
        b: d.b,
        c: d.c,
        algo: raw,
        align,
    }))
}

/// Runs `g` with `plan` on the device's stream: D = C in place.
pub(crate) fn run(dev: &CudaDevice, g: &Gemm, plan: &Plan) -> Result<()> {
    let (ws_ptr, ws) = dev.blas_workspace();
    let key = g.key();
    let (alpha, beta) = (g.alpha, g.beta);
    dev.context().bind_to_thread().map_err(super::cuda_err)?;
    // SAFETY: the plan was made for this shape; the addresses are device buffers sized by the
    // op's shape checks and aligned as the algorithm needs (checked in `plan`); the workspace is
    // the device's and big enough (checked when the plan was made); alpha/beta are host f32.
    unsafe {
        lt::cublasLtMatmul(
            handle(dev),
            plan.desc,
            &alpha as *const f32 as *const c_void,
            g.a as *const c_void,
            plan.a,
            g.b as *const c_void,
            plan.b,
            &beta as *const f32 as *const c_void,
            g.c as *const c_void,
            plan.c,
            g.c as *mut c_void,
            plan.c,
            &plan.algo,
            ws_ptr as *mut c_void,
            ws,
            dev.stream().cu_stream() as lt::cudaStream_t,
        )
    }
    .result()
    .map_err(|e| lt_err("cublasLtMatmul", &key, e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lines_round_trip_and_only_the_matching_header_counts() {
        let key = GemmKey::linear(256, 896, 9728, DType::BF16, DType::BF16, false);
        let algo = Algo([1, 2, 3, 0xdead_beef, 5, 6, 7, u64::MAX]);
        let text = format!(
            "# a comment\nlt 130100 sm_90 132\n{}\n{}\nlt 1 sm_80 108\n{}\n",
            table_line(&key, Some(&algo)),
            table_line(&GemmKey { n: 128, ..key }, None),
            table_line(&GemmKey { n: 64, ..key }, Some(&algo)),
        );
        let t = parse_table(&text, "lt 130100 sm_90 132");
        assert_eq!(t.len(), 2);
        assert!(matches!(t.get(&key), Some(Entry::Algo(a)) if *a == algo));
        assert!(matches!(t.get(&GemmKey { n: 128, ..key }), Some(Entry::Ex)));
        assert!(!t.contains_key(&GemmKey { n: 64, ..key }));
        assert!(parse_table(&text, "lt 130100 sm_90 114").is_empty());
        assert!(parse_line("1 0 5 6").is_none());
        // A later section under the same header adds to it (scripts/merge_gemm_table.sh appends
        // a measured section that way).
        let more = format!(
            "{text}# measured later\nlt 130100 sm_90 132\n{}\n",
            table_line(&GemmKey { n: 8192, ..key }, None)
        );
        let t = parse_table(&more, "lt 130100 sm_90 132");
        assert_eq!(t.len(), 3);
        assert!(matches!(
            t.get(&GemmKey { n: 8192, ..key }),
            Some(Entry::Ex)
        ));
        assert!(!t.contains_key(&GemmKey { n: 64, ..key }));
    }

    /// A backward dW product at Qwen2.5-0.5B's MLP width: A as stored, B transposed, f32 C
    /// accumulated.
    fn dw_key() -> GemmKey {
        GemmKey {
            trans_a: false,
            trans_b: true,
            m: 896,
            n: 4864,
            k: 8192,
            lda: 896,
            ldb: 4864,
            ldc: 896,
            ab: DType::BF16,
            c_type: DType::F32,
            reads_c: true,
        }
    }

    #[test]
    fn a_logged_key_reads_back() {
        let key = dw_key();
        assert_eq!(parse_key(&table_line(&key, None)), Some(key));
        assert_eq!(parse_key("1 0 5 6"), None);
    }

    #[test]
    fn operand_sizes_follow_the_transposes() {
        // A [896 x 8192] stored as is, B stored transposed ([4864 x 8192]).
        let key = dw_key();
        assert_eq!(key.operand_elems(), (896 * 8192, 4864 * 8192, 896 * 4864));
        // linear's forward y[N,O] = x[N,I] · w[O,I]ᵀ: A = w, B = x, C = y.
        let lin = GemmKey::linear(8, 64, 32, DType::BF16, DType::F32, false);
        assert_eq!(lin.operand_elems(), (32 * 64, 8 * 64, 8 * 32));
    }

    #[test]
    fn the_built_in_table_parses() {
        for (no, raw) in BUILT_IN.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() || line.starts_with("lt ") {
                continue;
            }
            assert!(parse_line(line).is_some(), "line {}: {raw}", no + 1);
        }
    }
}
