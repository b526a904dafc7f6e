//! CUDA backend: one GPU's context, stream, cuBLAS handle and kernel-module cache, device storage,
//! and (in `cuda/<op>.rs`) the ops.
//!
//! Everything CUDA is loaded at run time (`cudarc` with `dynamic-loading`), so this crate builds and
//! its CPU tests run on machines with no CUDA at all; [`CudaDevice::new`] then fails cleanly.
//!
//! All realign work on one GPU is queued on that device's single stream, so kernels see each other's
//! results in program order and device memory freed by a dropped tensor is reused only after the
//! work queued before the drop (cudarc frees stream-ordered). It is a created (non-blocking)
//! stream, not the legacy default stream, because only such a stream can be captured into a CUDA
//! graph ([`CudaDevice::capture`]). The one exception is [`CudaDevice::fork_lanes`], which lets a
//! caller queue independent pieces of work side by side on up to three more streams of the same
//! device (the decode step's row blocks, the backward's weight gradients), forked from and joined
//! back into the device's stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use crate::{DType, Error, Result, Storage, Tensor};

pub mod adamw;
pub mod add_rmsnorm;
pub mod attention;
pub mod blas;
pub mod cast;
pub mod concat;
pub mod elementwise;
pub mod embedding;
pub mod gemm_tma;
pub mod gemm_wgmma;
pub mod graph_ops;
pub mod kv_cache;
pub mod launch;
pub mod linear;
pub mod linear_ksplit;
pub mod lm_head;
pub mod logsoftmax;
pub mod nvrtc;
pub mod paged_attention;
pub mod policy_grad;
pub mod qkv_rope_cache;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod staging;
pub mod sum_squares;
pub mod swiglu;
pub mod swiglu_packed;

pub use launch::{Args, KernelSource};

/// True when the CUDA driver library can be loaded and reports at least one GPU.
pub fn is_available() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return false;
    }
    std::panic::catch_unwind(|| {
        cudarc::driver::result::init().is_ok()
            && cudarc::driver::result::device::get_count().is_ok_and(|n| n > 0)
    })
    .unwrap_or(false)
}

pub(crate) fn cuda_err(e: impl std::fmt::Debug) -> Error {
    Error::Cuda(format!("{e:?}"))
}

/// One GPU: its primary context, the stream all realign work is queued on, a cuBLAS handle bound
/// to that stream, and the kernels loaded so far. Cheap to clone; [`CudaDevice::new`] returns the
/// same shared state for the same ordinal within a process.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS's workspace, ours so that GEMMs can be captured in a CUDA graph (cuBLAS must not
    /// allocate during a capture). cuBLASLt GEMMs (`blas`) use it too: same stream, one at a time.
    blas_workspace: CudaSlice<u8>,
    /// `sm_XY` of this GPU, the NVRTC target.
    arch: String,
    /// Kernels compiled and launched for programmatic dependent launch (`launch::pdl_allowed`).
    pdl: bool,
    /// Loaded kernels by (module name, compile defines, function name).
    functions: Mutex<HashMap<(String, String), CudaFunction>>,
    /// The side streams of [`CudaDevice::fork_lanes`], each made on its first use.
    lanes: [OnceLock<Lane>; MAX_SIDE_LANES],
}

/// Most side lanes one fork can open beside the device's stream ([`CudaDevice::fork_lanes`]).
pub const MAX_SIDE_LANES: usize = 3;

/// A side stream with its own cuBLAS handle and workspace: two GEMMs in flight at once must not
/// share a workspace.
struct Lane {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    blas_workspace: CudaSlice<u8>,
}

thread_local! {
    /// The ordinal of the device whose work this thread is queuing on one of its side lanes, and
    /// which one (inside [`Lanes::on`]), if any.
    static ON_LANE: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
    /// The SM count the GEMMs this thread queues plan for while forked lanes share the GPU
    /// ([`Lanes::share_sms`]), if any.
    static GEMM_SM_TARGET: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// The SM count this thread's GEMMs should plan for now ([`Lanes::share_sms`],
/// [`with_gemm_sm_target`]), or None for the whole GPU.
pub(crate) fn gemm_sm_target() -> Option<u32> {
    GEMM_SM_TARGET.with(|c| c.get())
}

/// Runs `f` with the GEMMs this thread queues planned for `sms` SMs (cuBLASLt's
/// `SM_COUNT_TARGET`, `cublasSetSmCountTarget`) instead of the whole GPU: for GEMMs that run
/// beside other work on a side lane. The previous target is restored when `f` returns or unwinds.
pub fn with_gemm_sm_target<T>(sms: u32, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<u32>);
    impl Drop for Restore {
        fn drop(&mut self) {
            GEMM_SM_TARGET.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(GEMM_SM_TARGET.with(|c| c.replace(Some(sms.max(1)))));
    f()
}

impl CudaDevice {
    pub fn new(ordinal: usize) -> Result<CudaDevice> {
        static DEVICES: OnceLock<Mutex<HashMap<usize, CudaDevice>>> = OnceLock::new();
        let devices = DEVICES.get_or_init(|| Mutex::new(HashMap::new()));
        let mut devices = devices
            .lock()
            .map_err(|_| Error::Cuda("device registry lock poisoned".into()))?;
        if let Some(d) = devices.get(&ordinal) {
            return Ok(d.clone());
        }
        if !is_available() {
            return Err(Error::Cuda(
                "no CUDA driver or GPU found on this machine (use --device cpu)".into(),
            ));
        }
        let count = CudaContext::device_count().map_err(cuda_err)?;
        if ordinal >= count as usize {
            return Err(Error::Cuda(format!(
                "GPU {ordinal} requested but this machine has {count} GPU(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err)?;
        // One stream per device orders all work, so cudarc's per-allocation event tracking (two
        // events per buffer, waits on every launch) buys nothing here.
        // SAFETY: no buffer exists yet on this context, and realign queues everything on `stream`.
        unsafe { ctx.disable_event_tracking() };
        // A created stream: the legacy default stream cannot be captured into a CUDA graph.
        let stream = ctx.new_stream().map_err(cuda_err)?;
        keep_pool_memory(&ctx)?;
        let (major, minor) = ctx.compute_capability().map_err(cuda_err)?;
        let blas = blas::new_handle(&stream)?;
        let blas_workspace = set_blas_workspace(&blas, &stream)?;
        let dev = CudaDevice {
            inner: Arc::new(Inner {
                ctx,
                stream,
                blas,
                blas_workspace,
                arch: format!("sm_{major}{minor}"),
                pdl: launch::pdl_allowed(launch::pdl_requested(), major),
                functions: Mutex::new(HashMap::new()),
                lanes: std::array::from_fn(|_| OnceLock::new()),
            }),
        };
        tracing::debug!(ordinal, arch = %dev.inner.arch, "opened CUDA device");
        devices.insert(ordinal, dev.clone());
        Ok(dev)
    }

    pub fn ordinal(&self) -> usize {
        self.inner.ctx.ordinal()
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    /// The stream this thread queues this device's work on: the device's stream, or a side lane
    /// inside [`Lanes::on`].
    pub fn stream(&self) -> &Arc<CudaStream> {
        match self.current_lane() {
            Some(lane) => &lane.stream,
            None => &self.inner.stream,
        }
    }

    /// The lane, when this thread is queuing on it.
    fn current_lane(&self) -> Option<&Lane> {
        let on = ON_LANE.with(|c| c.get());
        match on {
            Some((ordinal, i)) if ordinal == self.ordinal() => self.inner.lanes[i].get(),
            _ => None,
        }
    }

    /// Forks `n` side streams (lanes, 1 to [`MAX_SIDE_LANES`]) from this device's stream: work
    /// queued through [`Lanes::on`] starts after everything queued so far and may run on the GPU at
    /// the same time as what is queued on the device's stream and the other lanes meanwhile;
    /// [`Lanes::join`] (or dropping the guard) makes the device's stream wait for every lane. A
    /// CUDA graph capture records them as parallel branches. The work on different streams must
    /// not touch each other's outputs, and what `on` work allocates must be dropped inside it (its
    /// memory is freed on the lane, which a capture must see joined): it writes its results into
    /// buffers made before the fork. Each lane is made on the first fork that uses it (a stream, a
    /// cuBLAS handle, a 32 MiB workspace): fork as many outside a capture before forking inside
    /// one.
    pub fn fork_lanes(&self, n: usize) -> Result<Lanes<'_>> {
        if n == 0 || n > MAX_SIDE_LANES {
            return Err(Error::msg(format!(
                "fork_lanes: {n} side lanes asked for; 1 to {MAX_SIDE_LANES} are possible"
            )));
        }
        if ON_LANE.with(|c| c.get()).is_some() {
            return Err(Error::msg("fork_lanes: already queuing on a lane"));
        }
        let mut lanes = Vec::with_capacity(n);
        for i in 0..n {
            let lane = self.lane(i)?;
            lane.stream.join(&self.inner.stream).map_err(|e| {
                Error::Cuda(format!("forking lane {i} from the device stream: {e:?}"))
            })?;
            lanes.push(lane);
        }
        Ok(Lanes {
            dev: self,
            lanes,
            joined: false,
            sm_target_before: std::cell::Cell::new(None),
        })
    }

    /// Side lane `i`, made on first use.
    fn lane(&self, i: usize) -> Result<&Lane> {
        let slot = &self.inner.lanes[i];
        if let Some(lane) = slot.get() {
            return Ok(lane);
        }
        let stream = self.inner.ctx.new_stream().map_err(cuda_err)?;
        let blas = blas::new_handle(&stream)?;
        let blas_workspace = set_blas_workspace(&blas, &stream)?;
        // The workspace's zeroing ran on the new stream: finish it before either stream uses it.
        stream.synchronize().map_err(cuda_err)?;
        let _ = slot.set(Lane {
            stream,
            blas,
            blas_workspace,
        });
        slot.get()
            .ok_or_else(|| Error::msg(format!("fork_lanes: lane {i} was not kept")))
    }

    /// The NVRTC target of this GPU, e.g. `sm_90` on an H100/H200.
    pub fn arch(&self) -> &str {
        &self.inner.arch
    }

    /// Whether this device's kernels use programmatic dependent launch (compute capability 9.0 or
    /// newer unless `REALIGN_PDL=0`; decided when the device is opened).
    pub fn pdl(&self) -> bool {
        self.inner.pdl
    }

    /// The cuBLAS handle bound to [`CudaDevice::stream`].
    pub(crate) fn blas(&self) -> &CudaBlas {
        match self.current_lane() {
            Some(lane) => &lane.blas,
            None => &self.inner.blas,
        }
    }

    /// The cuBLAS workspace of [`CudaDevice::blas`]: (device address, bytes).
    pub(crate) fn blas_workspace(&self) -> (u64, usize) {
        let ws = match self.current_lane() {
            Some(lane) => &lane.blas_workspace,
            None => &self.inner.blas_workspace,
        };
        (ws.device_ptr(self.stream()).0, BLAS_WORKSPACE)
    }

    /// Waits for the stream, then returns the default pool's unused memory to the driver, so that
    /// the driver's free-memory figure counts it (see `keep_pool_memory`).
    pub fn trim_pool(&self) -> Result<()> {
        use cudarc::driver::result;
        self.synchronize()?;
        self.inner.ctx.bind_to_thread().map_err(cuda_err)?;
        // SAFETY: the device handle comes from this live context.
        unsafe {
            let pool = result::device::get_default_mem_pool(self.inner.ctx.cu_device())
                .map_err(cuda_err)?;
            result::mem_pool::trim_to(pool, 0).map_err(cuda_err)
        }
    }

    /// Records everything `f` queues on this device's stream into a CUDA graph instead of running
    /// it, and returns the instantiated graph. `f` must not synchronise or copy to/from pageable
    /// host memory; temporaries it allocates must be freed before it returns (their memory then
    /// belongs to the graph). The capture is ended even when `f` fails. All threads share this
    /// device's one stream, so anything another thread queues on the device during a capture is
    /// recorded into the graph instead of run (and a synchronise from another thread fails): use
    /// a device from one thread while capturing (the GPU tests that capture take a lock).
    pub fn capture(&self, f: impl FnOnce() -> Result<()>) -> Result<Graph> {
        use cudarc::driver::sys;
        let s = &self.inner.stream;
        s.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| Error::Cuda(format!("starting a CUDA graph capture: {e:?}")))?;
        let body = f();
        let graph = s.end_capture(sys::CUgraphInstantiate_flags(0));
        body?;
        match graph {
            Ok(Some(g)) => Ok(Graph { graph: g }),
            Ok(None) => Err(Error::Cuda(
                "the CUDA graph capture recorded nothing".into(),
            )),
            Err(e) => Err(Error::Cuda(format!("ending a CUDA graph capture: {e:?}"))),
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        self.inner.stream.synchronize().map_err(cuda_err)
    }

    /// Kernel `func` of `src` compiled with `defines` (e.g. `-DHEAD_DIM=64`), compiled by NVRTC on
    /// first use (disk-cached) and loaded once per device.
    pub fn function(
        &self,
        src: &KernelSource,
        defines: &[String],
        func: &str,
    ) -> Result<CudaFunction> {
        let key = (
            format!("{}|{}", src.name, defines.join(" ")),
            func.to_string(),
        );
        let mut cache = self
            .inner
            .functions
            .lock()
            .map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
        if let Some(f) = cache.get(&key) {
            return Ok(f.clone());
        }
        let module = launch::load_module(self, src, defines)?;
        // Load every requested function lazily; the module stays alive through its functions.
        let f = module.load_function(func).map_err(|e| {
            Error::Cuda(format!(
                "kernel `{func}` not found in {}.cu: {e:?}",
                src.name
            ))
        })?;
        cache.insert(key, f.clone());
        Ok(f)
    }

    pub fn zeros(&self, dtype: DType, n: usize) -> Result<CudaStorage> {
        let s = self.stream();
        if n == 0 {
            return self.alloc(dtype, 0);
        }
        Ok(match dtype {
            DType::F32 => CudaStorage::F32(s.alloc_zeros::<f32>(n).map_err(cuda_err)?),
            DType::BF16 => CudaStorage::BF16(s.alloc_zeros::<bf16>(n).map_err(cuda_err)?),
            DType::U32 => CudaStorage::U32(s.alloc_zeros::<u32>(n).map_err(cuda_err)?),
        })
    }

    /// Storage for `n` elements whose content is unspecified: only for outputs a kernel fully
    /// writes.
    pub fn alloc(&self, dtype: DType, n: usize) -> Result<CudaStorage> {
        let s = self.stream();
        // SAFETY: the memory is handed only to kernels that write every element before any read.
        unsafe {
            Ok(match dtype {
                DType::F32 => CudaStorage::F32(raw_alloc(s, n)?),
                DType::BF16 => CudaStorage::BF16(raw_alloc(s, n)?),
                DType::U32 => CudaStorage::U32(raw_alloc(s, n)?),
            })
        }
    }

    /// Host storage to device storage (same dtype).
    pub fn upload(&self, host: &Storage) -> Result<CudaStorage> {
        let s = self.stream();
        Ok(match host {
            Storage::CpuF32(v) if v.is_empty() => self.alloc(DType::F32, 0)?,
            Storage::CpuBF16(v) if v.is_empty() => self.alloc(DType::BF16, 0)?,
            Storage::CpuU32(v) if v.is_empty() => self.alloc(DType::U32, 0)?,
            Storage::CpuF32(v) => CudaStorage::F32(s.clone_htod(v).map_err(cuda_err)?),
            Storage::CpuBF16(v) => CudaStorage::BF16(s.clone_htod(v).map_err(cuda_err)?),
            Storage::CpuU32(v) => CudaStorage::U32(s.clone_htod(v).map_err(cuda_err)?),
            Storage::Cuda(c) => self.copy_from(c)?,
        })
    }

    /// Device-to-device copy onto this device's stream.
    pub fn copy_from(&self, src: &CudaStorage) -> Result<CudaStorage> {
        let s = self.stream();
        if src.is_empty() {
            return self.alloc(src.dtype(), 0);
        }
        Ok(match src {
            CudaStorage::F32(x) => CudaStorage::F32(s.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::BF16(x) => CudaStorage::BF16(s.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::U32(x) => CudaStorage::U32(s.clone_dtod(x).map_err(cuda_err)?),
        })
    }
}

/// Makes the device's default memory pool (the one `cuMemAllocAsync` draws from) keep freed
/// memory instead of returning it to the driver at every synchronisation: with the default release
/// threshold of 0 each step's allocations after a sync go back to the driver, which is slow. The
/// memory stays reusable by every later allocation in this process (rollout KV, then training);
/// [`CudaDevice::trim_pool`] hands it back when another process should see it.
fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<()> {
    use cudarc::driver::{result, sys};
    ctx.bind_to_thread().map_err(cuda_err)?;
    // SAFETY: the device handle comes from a live context; the attribute takes a u64 (cuuint64_t).
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device()).map_err(cuda_err)?;
        let mut threshold: u64 = u64::MAX;
        result::mem_pool::set_attribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .map_err(|e| {
            Error::Cuda(format!(
                "setting the memory pool's release threshold: {e:?}"
            ))
        })
    }
}

/// Bytes of the cuBLAS workspace (what cuBLAS itself picks on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

fn set_blas_workspace(blas: &CudaBlas, stream: &Arc<CudaStream>) -> Result<CudaSlice<u8>> {
    let ws = stream.alloc_zeros::<u8>(BLAS_WORKSPACE).map_err(cuda_err)?;
    let p = ws.device_ptr(stream).0;
    // SAFETY: a live handle; the workspace lives as long as the handle (both in `Inner`).
    unsafe {
        cudarc::cublas::sys::cublasSetWorkspace_v2(
            *blas.handle(),
            p as *mut std::ffi::c_void,
            BLAS_WORKSPACE,
        )
    }
    .result()
    .map_err(|e| Error::Cuda(format!("setting the cuBLAS workspace: {e:?}")))?;
    Ok(ws)
}

/// Forked side lanes ([`CudaDevice::fork_lanes`]); joined into the device's stream by
/// [`Lanes::join`] or on drop.
pub struct Lanes<'d> {
    dev: &'d CudaDevice,
    lanes: Vec<&'d Lane>,
    joined: bool,
    /// The thread's GEMM SM target before [`Lanes::share_sms`], restored at the join.
    sm_target_before: std::cell::Cell<Option<Option<u32>>>,
}

impl Lanes<'_> {
    /// How many side lanes this fork opened.
    pub fn count(&self) -> usize {
        self.lanes.len()
    }

    /// Runs `f` with this thread's ops on the device queued on side lane `i` (below
    /// [`Lanes::count`]). What `f` returns must not own device memory allocated inside it (see
    /// [`CudaDevice::fork_lanes`]).
    pub fn on<T>(&self, i: usize, f: impl FnOnce() -> T) -> Result<T> {
        self.lane_at(i)?;
        /// Back on the device's stream when `f` returns or unwinds.
        struct Off;
        impl Drop for Off {
            fn drop(&mut self) {
                ON_LANE.with(|c| c.set(None));
            }
        }
        ON_LANE.with(|c| c.set(Some((self.dev.ordinal(), i))));
        let _off = Off;
        Ok(f())
    }

    /// Until the join, every GEMM this thread queues (on the device's stream and on the lanes)
    /// asks cuBLAS to plan for an equal share of the GPU's SMs (SMs / (side lanes + 1);
    /// `CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET`, `cublasSetSmCountTarget`), the way a GEMM next to a
    /// concurrent stream is meant to be told: a GEMM whose grid assumes the whole GPU leaves the
    /// other lanes' kernels waiting for SMs. cuBLAS may then pick other kernels, so the bits may
    /// differ from an unshared GEMM's.
    pub fn share_sms(&self) {
        let share = sm_count(self.dev) / (self.lanes.len() + 1);
        let before = GEMM_SM_TARGET.with(|c| c.replace(Some(share.max(1) as u32)));
        if self.sm_target_before.get().is_none() {
            self.sm_target_before.set(Some(before));
        }
    }

    /// Makes side lane `i` wait for everything queued on the device's stream so far (as at the
    /// fork), so that work queued on it next may read what the device's stream produced since.
    pub fn catch_up(&self, i: usize) -> Result<()> {
        let lane = self.lane_at(i)?;
        lane.stream.join(&self.dev.inner.stream).map_err(|e| {
            Error::Cuda(format!(
                "lane {i} catching up with the device stream: {e:?}"
            ))
        })
    }

    /// A mark of everything queued on side lane `i` so far, for [`Lanes::wait_for`].
    pub fn mark(&self, i: usize) -> Result<LaneMark> {
        let lane = self.lane_at(i)?;
        let event = lane
            .stream
            .record_event(None)
            .map_err(|e| Error::Cuda(format!("marking lane {i}: {e:?}")))?;
        Ok(LaneMark { event })
    }

    /// Makes the device's stream wait for the lane's work up to `mark` (not what was queued on the
    /// lane after it): a partial join, after which the device's stream may read or free what that
    /// work used.
    pub fn wait_for(&self, mark: &LaneMark) -> Result<()> {
        self.dev
            .inner
            .stream
            .wait(&mark.event)
            .map_err(|e| Error::Cuda(format!("waiting for a lane mark: {e:?}")))
    }

    fn lane_at(&self, i: usize) -> Result<&Lane> {
        self.lanes
            .get(i)
            .copied()
            .ok_or_else(|| Error::msg(format!("lane {i} of a fork of {} lanes", self.lanes.len())))
    }

    /// Makes the device's stream wait for everything queued on every lane.
    pub fn join(mut self) -> Result<()> {
        self.joined = true;
        self.join_all()
    }

    fn join_all(&self) -> Result<()> {
        if let Some(before) = self.sm_target_before.take() {
            GEMM_SM_TARGET.with(|c| c.set(before));
        }
        for (i, lane) in self.lanes.iter().enumerate() {
            self.dev.inner.stream.join(&lane.stream).map_err(|e| {
                Error::Cuda(format!("joining lane {i} into the device stream: {e:?}"))
            })?;
        }
        Ok(())
    }
}

impl Drop for Lanes<'_> {
    fn drop(&mut self) {
        if !self.joined {
            // An error path: join anyway so that a capture in progress can still end.
            let _ = self.join_all();
        }
    }
}

/// A point in a side lane's queue ([`Lanes::mark`]).
pub struct LaneMark {
    event: cudarc::driver::CudaEvent,
}

/// A captured CUDA graph ([`CudaDevice::capture`]): replays the recorded kernels on the device's
/// stream with the buffer addresses they were captured with.
pub struct Graph {
    graph: CudaGraph,
}

impl Graph {
    /// Queues one replay on the stream it was captured from.
    pub fn launch(&self) -> Result<()> {
        self.graph
            .launch()
            .map_err(|e| Error::Cuda(format!("launching a CUDA graph: {e:?}")))
    }
}

/// Overwrites the u32 device tensor `t` with `data` (same length), on the device's stream: how a
/// captured graph's fixed input buffers get each step's values.
pub fn write_u32(t: &mut Tensor, data: &[u32]) -> Result<()> {
    if t.numel() != data.len() {
        return Err(Error::msg(format!(
            "write_u32: {} values for a tensor of {} elements",
            data.len(),
            t.numel()
        )));
    }
    match t.storage_mut() {
        Storage::Cuda(CudaStorage::U32(x)) => {
            if data.is_empty() {
                return Ok(());
            }
            let s = x.stream().clone();
            s.memcpy_htod(data, x).map_err(cuda_err)
        }
        Storage::CpuU32(v) => {
            v.copy_from_slice(data);
            Ok(())
        }
        _ => Err(Error::msg("write_u32: the tensor is not U32")),
    }
}

/// `n` uninitialised elements on `s`. The driver rejects zero-byte allocations, so an empty
/// tensor owns a one-element allocation behind a zero-length slice (freed with it).
///
/// # Safety
/// The content is unspecified; callers write it before reading.
unsafe fn raw_alloc<T: cudarc::driver::DeviceRepr>(
    s: &Arc<CudaStream>,
    n: usize,
) -> Result<CudaSlice<T>> {
    if n > 0 {
        return s.alloc::<T>(n).map_err(cuda_err);
    }
    let one = s.alloc::<T>(1).map_err(cuda_err)?;
    let p = one.leak();
    Ok(s.upgrade_device_ptr::<T>(p, 0))
}

/// Device memory of one tensor.
pub enum CudaStorage {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    U32(CudaSlice<u32>),
}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        match self {
            CudaStorage::F32(_) => DType::F32,
            CudaStorage::BF16(_) => DType::BF16,
            CudaStorage::U32(_) => DType::U32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CudaStorage::F32(x) => x.len(),
            CudaStorage::BF16(x) => x.len(),
            CudaStorage::U32(x) => x.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The raw device address, for passing to a kernel on `stream`.
    pub fn device_ptr(&self, stream: &CudaStream) -> u64 {
        // The guard records a read event only in cudarc's multi-stream mode, which realign does
        // not use (one stream per device); dropping it at once is therefore fine.
        match self {
            CudaStorage::F32(x) => x.device_ptr(stream).0,
            CudaStorage::BF16(x) => x.device_ptr(stream).0,
            CudaStorage::U32(x) => x.device_ptr(stream).0,
        }
    }

    pub fn try_clone(&self) -> Result<CudaStorage> {
        let stream = match self {
            CudaStorage::F32(x) => x.stream().clone(),
            CudaStorage::BF16(x) => x.stream().clone(),
            CudaStorage::U32(x) => x.stream().clone(),
        };
        if self.is_empty() {
            // SAFETY: zero elements, nothing to initialise.
            return unsafe {
                Ok(match self {
                    CudaStorage::F32(_) => CudaStorage::F32(raw_alloc(&stream, 0)?),
                    CudaStorage::BF16(_) => CudaStorage::BF16(raw_alloc(&stream, 0)?),
                    CudaStorage::U32(_) => CudaStorage::U32(raw_alloc(&stream, 0)?),
                })
            };
        }
        Ok(match self {
            CudaStorage::F32(x) => CudaStorage::F32(stream.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::BF16(x) => CudaStorage::BF16(stream.clone_dtod(x).map_err(cuda_err)?),
            CudaStorage::U32(x) => CudaStorage::U32(stream.clone_dtod(x).map_err(cuda_err)?),
        })
    }

    pub fn to_host(&self) -> Result<Storage> {
        if self.is_empty() {
            return Ok(match self {
                CudaStorage::F32(_) => Storage::CpuF32(Vec::new()),
                CudaStorage::BF16(_) => Storage::CpuBF16(Vec::new()),
                CudaStorage::U32(_) => Storage::CpuU32(Vec::new()),
            });
        }
        Ok(match self {
            CudaStorage::F32(x) => Storage::CpuF32(x.stream().clone_dtoh(x).map_err(cuda_err)?),
            CudaStorage::BF16(x) => Storage::CpuBF16(x.stream().clone_dtoh(x).map_err(cuda_err)?),
            CudaStorage::U32(x) => Storage::CpuU32(x.stream().clone_dtoh(x).map_err(cuda_err)?),
        })
    }
}

/// Streaming multiprocessors of `dev` (asked once per process; 132, an H200's, if the driver
/// does not say).
pub(crate) fn sm_count(dev: &CudaDevice) -> usize {
    static SMS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SMS.get_or_init(|| {
        use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        dev.context()
            .attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .ok()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(132)
    })
}

/// The CUDA device a tensor lives on, or an error naming `op`.
pub(crate) fn device_of(t: &Tensor, op: &'static str) -> Result<CudaDevice> {
    match t.device() {
        crate::Device::Cuda(d) => Ok(d.clone()),
        other => Err(Error::msg(format!(
            "{op}: expected a CUDA tensor, got one on {other}"
        ))),
    }
}

/// A tensor's raw device address, or an error naming `op` if it is not on the GPU.
pub(crate) fn ptr(t: &Tensor, dev: &CudaDevice, op: &'static str) -> Result<u64> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s.device_ptr(dev.stream())),
        _ => Err(Error::msg(format!(
            "{op}: expected a CUDA tensor, got one on {}",
            t.device()
        ))),
    }
}

/// A fresh tensor of `shape`/`dtype` on `dev` whose content is unspecified (kernel fills it).
pub(crate) fn empty(dev: &CudaDevice, shape: &[usize], dtype: DType) -> Result<Tensor> {
    let n = shape.iter().product();
    Tensor::from_storage(
        Storage::Cuda(dev.alloc(dtype, n)?),
        shape,
        crate::Device::Cuda(dev.clone()),
    )
}

/// A zero-filled tensor of `shape`/`dtype` on `dev`.
pub(crate) fn zeros(dev: &CudaDevice, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::zeros(shape, dtype, &crate::Device::Cuda(dev.clone()))
}

/// The kernel-name suffix for a float dtype (`f32` / `bf16`).
pub(crate) fn suffix(dtype: DType, op: &'static str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        DType::U32 => Err(Error::DType { op, dtype }),
    }
}
