//! Kernel sources, module loading and a checked launch helper.
//!
//! Every `.cu` file is compiled together with `cu/common.cuh` (prepended as text, so NVRTC needs no
//! header lookup for it). Arguments are packed by [`Args`] (device pointers, u32/i32/f32/u64
//! scalars) and every launch's result is checked; with `REALIGN_CUDA_SYNC=1` each launch is also
//! followed by a synchronize, so that an asynchronous fault names the kernel that caused it.

use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{CudaFunction, CudaModule};

use super::{cuda_err, ptr, CudaDevice};
use crate::{Error, Result, Tensor};

/// Helpers shared by every kernel (dtype load/store, warp and block reductions).
pub const COMMON: &str = include_str!("../../cu/common.cuh");

/// One embedded `.cu` file.
pub struct KernelSource {
    /// File stem, used in messages and cache file names.
    pub name: &'static str,
    pub src: &'static str,
}

macro_rules! kernel_source {
    ($name:literal) => {
        $crate::cuda::launch::KernelSource {
            name: $name,
            src: include_str!(concat!("../../cu/", $name, ".cu")),
        }
    };
}
pub(crate) use kernel_source;

/// Every kernel source of this crate, so a test can compile them all without a GPU.
pub fn all_sources() -> Vec<KernelSource> {
    vec![
        kernel_source!("cast"),
        kernel_source!("elementwise"),
        kernel_source!("embedding"),
        kernel_source!("linear"),
        kernel_source!("rmsnorm"),
        kernel_source!("rope"),
        kernel_source!("swiglu"),
        kernel_source!("attention"),
        super::attention::MMA,
        kernel_source!("logsoftmax"),
        kernel_source!("sum_squares"),
        kernel_source!("adamw"),
        kernel_source!("sampling"),
        kernel_source!("qkv_rope_cache"),
        kernel_source!("add_rmsnorm"),
        kernel_source!("swiglu_packed"),
        kernel_source!("policy_grad"),
        super::gemm_wgmma::SRC,
        super::gemm_tma::SRC,
    ]
}

/// Sources that use arch-specific instructions (Hopper's wgmma), which NVRTC only accepts for the
/// arch-specific target (`sm_90a`), not the portable one (`sm_90`).
const ARCH_SPECIFIC: &[&str] = &["gemm_wgmma", "gemm_tma"];

/// The target `src` compiles for on a device of `arch`: `sm_90a` for the arch-specific sources on
/// an `sm_90` device, else `arch` itself.
pub fn arch_for(src: &str, arch: &str) -> String {
    if ARCH_SPECIFIC.contains(&src) && arch == "sm_90" {
        format!("{arch}a")
    } else {
        arch.to_string()
    }
}

/// The full text NVRTC compiles for `src`.
pub fn full_source(src: &KernelSource) -> String {
    format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", src.name, src.src)
}

pub(crate) fn load_module(
    dev: &CudaDevice,
    src: &KernelSource,
    defines: &[String],
) -> Result<Arc<CudaModule>> {
    let text = full_source(src);
    let mut defines = defines.to_vec();
    if dev.pdl() {
        defines.push(PDL_DEFINE.to_string());
    }
    let arch = arch_for(src.name, dev.arch());
    let cubin = super::nvrtc::compile_cubin(src.name, &text, &arch, &defines)?;
    dev.context()
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(|e| Error::Cuda(format!("loading module {}.cu: {e:?}", src.name)))
}

/// Packed kernel arguments. Each value sits in its own 8-byte slot: the driver copies as many bytes
/// as the parameter's size from the slot's start, so 4-byte values in the low half are read right
/// (little-endian). A TMA tensor map (a 128-byte by-value struct) sits at its own alignment.
#[derive(Default)]
pub struct Args {
    slots: Vec<u64>,
    maps: Vec<TensorMap>,
    /// The parameters in order: an index into `slots` or into `maps`.
    order: Vec<Param>,
}

enum Param {
    Slot(usize),
    Map(usize),
}

/// A `CUtensorMap` (cudarc's type carries the driver's alignment).
pub type TensorMap = cudarc::driver::sys::CUtensorMap;

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    fn push(mut self, v: u64) -> Args {
        self.order.push(Param::Slot(self.slots.len()));
        self.slots.push(v);
        self
    }

    /// A TMA tensor map, passed by value (`const __grid_constant__` in the kernel).
    pub fn tensor_map(mut self, map: TensorMap) -> Args {
        self.order.push(Param::Map(self.maps.len()));
        self.maps.push(map);
        self
    }

    /// A tensor's device address (`T*` in the kernel).
    pub fn ptr(self, t: &Tensor, dev: &CudaDevice, op: &'static str) -> Result<Args> {
        let p = ptr(t, dev, op)?;
        Ok(self.push(p))
    }

    /// A raw device address.
    pub fn raw(self, p: u64) -> Args {
        self.push(p)
    }

    /// An optional tensor: its address, or a null pointer.
    pub fn opt_ptr(self, t: Option<&Tensor>, dev: &CudaDevice, op: &'static str) -> Result<Args> {
        let p = match t {
            Some(t) => ptr(t, dev, op)?,
            None => 0,
        };
        Ok(self.push(p))
    }

    pub fn u32(self, v: u32) -> Args {
        self.push(v as u64)
    }

    pub fn i32(self, v: i32) -> Args {
        self.push(v as u32 as u64)
    }

    pub fn f32(self, v: f32) -> Args {
        self.push(v.to_bits() as u64)
    }

    pub fn u64(self, v: u64) -> Args {
        self.push(v)
    }
}

/// Launch geometry.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl Grid {
    /// A 1-D grid of `blocks` × `threads`.
    pub fn d1(blocks: u32, threads: u32) -> Grid {
        Grid {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
            smem: 0,
        }
    }

    /// Enough blocks of `threads` to cover `n` items one per thread, capped (grid-stride kernels
    /// cover the rest).
    pub fn cover(n: usize, threads: u32) -> Grid {
        let blocks = n.div_ceil(threads as usize).clamp(1, 65535 * 16) as u32;
        Grid::d1(blocks, threads)
    }

    pub fn with_smem(mut self, bytes: u32) -> Grid {
        self.smem = bytes;
        self
    }
}

fn sync_each_launch() -> bool {
    static SYNC: OnceLock<bool> = OnceLock::new();
    *SYNC.get_or_init(|| std::env::var("REALIGN_CUDA_SYNC").is_ok_and(|v| v == "1"))
}

/// Raises `f`'s dynamic shared-memory limit to `bytes` (needed above 48 KiB).
pub(crate) fn allow_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    if bytes > 48 * 1024 {
        f.set_attribute(
            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| Error::Cuda(format!("raising the shared-memory limit to {bytes} B: {e:?}")))?;
    }
    Ok(())
}

/// The NVRTC define that turns `pdl_entry()` (cu/common.cuh) on in every module.
pub const PDL_DEFINE: &str = "-DREALIGN_PDL=1";

/// Whether programmatic dependent launch is wanted (read once): on unless `REALIGN_PDL=0`. Test
/// and cache builders call it to pick the same module builds as the devices will.
pub fn pdl_requested() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    *ENV.get_or_init(|| pdl_env_allows(std::env::var("REALIGN_PDL").ok().as_deref()))
}

/// What a `REALIGN_PDL` value asks for: PDL unless it is `0` (the default since its GPU tests
/// passed and it measured faster on an H100, 2026-12-07; docs/kernels.md).
fn pdl_env_allows(value: Option<&str>) -> bool {
    value != Some("0")
}

/// Whether kernels are compiled and launched for programmatic dependent launch: when asked, on a
/// device of compute capability 9.0 or newer (decided once per device: [`CudaDevice::pdl`]).
/// Every kernel of this crate begins with `pdl_entry()` (cu/common.cuh), which, compiled with
/// [`PDL_DEFINE`], waits for the previous kernel before touching memory, so the launch attribute
/// only lets a kernel's launch overlap the previous kernel's tail. Off (`REALIGN_PDL=0`, or an
/// older GPU), modules and launches are plain.
pub(crate) fn pdl_allowed(requested: bool, cc_major: i32) -> bool {
    requested && cc_major >= 9
}

/// `cuLaunchKernelEx` with the programmatic-stream-serialization attribute.
fn launch_pdl(
    dev: &CudaDevice,
    f: &CudaFunction,
    g: Grid,
    params: &mut [*mut c_void],
) -> std::result::Result<(), cudarc::driver::DriverError> {
    use cudarc::driver::sys;
    // SAFETY: a zeroed attribute is a valid C struct; id and value are set before use.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: g.grid.0,
        gridDimY: g.grid.1,
        gridDimZ: g.grid.2,
        blockDimX: g.block.0,
        blockDimY: g.block.1,
        blockDimZ: g.block.2,
        sharedMemBytes: g.smem,
        hStream: dev.stream().cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // SAFETY: as in `launch`: `params` point at live argument slots matching the kernel's
    // signature; `cfg` and `attr` outlive the call.
    unsafe {
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
    }
}

/// Launches `f` (named `name` in errors) on `dev`'s stream and checks the result.
pub fn launch(dev: &CudaDevice, f: &CudaFunction, name: &str, g: Grid, args: Args) -> Result<()> {
    if g.grid.0 == 0 || g.grid.1 == 0 || g.grid.2 == 0 {
        return Ok(()); // nothing to do (empty tensor)
    }
    let Args {
        mut slots,
        mut maps,
        order,
    } = args;
    let mut params: Vec<*mut c_void> = order
        .iter()
        .map(|p| match *p {
            Param::Slot(i) => &mut slots[i] as *mut u64 as *mut c_void,
            Param::Map(i) => &mut maps[i] as *mut TensorMap as *mut c_void,
        })
        .collect();
    dev.context().bind_to_thread().map_err(cuda_err)?;
    let launched = if dev.pdl() {
        launch_pdl(dev, f, g, &mut params)
    } else {
        // SAFETY: `params` point into `slots`, which outlive the call; each op passes the arguments
        // in the order and types its kernel declares, with buffers sized by the op's shape checks.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                g.grid,
                g.block,
                g.smem,
                dev.stream().cu_stream(),
                &mut params,
            )
        }
    };
    launched.map_err(|e| Error::Cuda(format!("launching {name} with {g:?}: {e:?}")))?;
    if sync_each_launch() {
        dev.synchronize()
            .map_err(|e| Error::Cuda(format!("kernel {name} failed: {e}")))?;
    }
    Ok(())
}

/// Looks up kernel `func` of `src` on `dev` and launches it.
pub fn run(
    dev: &CudaDevice,
    src: &KernelSource,
    defines: &[String],
    func: &str,
    g: Grid,
    args: Args,
) -> Result<()> {
    let f = dev.function(src, defines, func)?;
    if g.smem > 48 * 1024 {
        allow_smem(&f, g.smem)?;
    }
    launch(dev, &f, func, g, args)
}

#[cfg(test)]
mod tests {
    use super::{pdl_allowed, pdl_env_allows};

    #[test]
    fn only_the_wgmma_sources_compile_for_sm_90a() {
        assert_eq!(super::arch_for("gemm_wgmma", "sm_90"), "sm_90a");
        assert_eq!(super::arch_for("gemm_wgmma", "sm_80"), "sm_80");
        assert_eq!(super::arch_for("gemm_tma", "sm_90"), "sm_90a");
        assert_eq!(super::arch_for("linear", "sm_90"), "sm_90");
    }

    #[test]
    fn pdl_is_on_unless_the_environment_says_0() {
        assert!(pdl_env_allows(None));
        assert!(pdl_env_allows(Some("1")));
        assert!(!pdl_env_allows(Some("0")));
    }

    #[test]
    fn pdl_needs_the_request_and_compute_capability_9() {
        assert!(pdl_allowed(true, 9));
        assert!(pdl_allowed(true, 10));
        assert!(!pdl_allowed(true, 8));
        assert!(!pdl_allowed(false, 9));
    }
}
