//! Run-time compilation of the embedded `.cu` sources with NVRTC, straight to a CUBIN for the
//! device's architecture (no PTX JIT at load), cached on disk by a hash of source, options, target
//! and NVRTC version.
//!
//! Cache folder: `$REALIGN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/realign/kernels`, else
//! `~/.cache/realign/kernels`. A cache that cannot be written is only a warning (compile again next
//! time). Headers (`cuda_bf16.h`) come from `$CUDA_HOME/include`, `$CUDA_PATH/include` or
//! `/usr/local/cuda/include`, whichever exist.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// True when the NVRTC library can be opened (it needs no GPU).
pub fn is_available() -> bool {
    // SAFETY: only probes whether the shared library can be opened.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Folders searched for CUDA headers.
fn include_dirs() -> Vec<String> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(v) = std::env::var(var) {
            dirs.push(format!("{v}/include"));
        }
    }
    dirs.push("/usr/local/cuda/include".to_string());
    dirs.retain(|d| std::path::Path::new(d).join("cuda_bf16.h").exists());
    dirs.dedup();
    dirs
}

fn cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("REALIGN_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("realign").join("kernels"))
}

fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: plain out-parameters.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Cuda(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// The options every kernel is compiled with, for target `arch` (e.g. `sm_90`) plus `defines`.
pub fn options(arch: &str, defines: &[String]) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        // Accurate f32 division, square root and denormals: the CPU reference is IEEE f32.
        "--ftz=false".to_string(),
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--fmad=true".to_string(),
        "-default-device".to_string(),
        "-lineinfo".to_string(),
    ];
    for d in include_dirs() {
        opts.push(format!("--include-path={d}"));
    }
    opts.extend(defines.iter().cloned());
    opts
}

/// Compiles `src` (named `name` in messages) for `arch` with `defines` to a CUBIN, or returns the
/// cached one.
pub fn compile_cubin(name: &str, src: &str, arch: &str, defines: &[String]) -> Result<Vec<u8>> {
    if !is_available() {
        return Err(Error::Cuda(
            "the NVRTC library (libnvrtc) cannot be found; it is needed to compile kernels".into(),
        ));
    }
    let opts = options(arch, defines);
    let (vmaj, vmin) = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(src.as_bytes());
    for o in &opts {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    h.update(format!("nvrtc {vmaj}.{vmin}").as_bytes());
    let hash: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let file = cache_dir().map(|d| d.join(format!("{name}-{arch}-{}.cubin", &hash[..24])));
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            if !bytes.is_empty() {
                tracing::debug!(kernel = name, path = %f.display(), "kernel cache hit");
                return Ok(bytes);
            }
        }
    }
    let t0 = std::time::Instant::now();
    let cubin = compile_uncached(name, src, &opts)?;
    tracing::debug!(
        kernel = name,
        ms = t0.elapsed().as_millis() as u64,
        "compiled kernel with NVRTC"
    );
    if let Some(f) = &file {
        let write = || -> std::io::Result<()> {
            if let Some(parent) = f.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Write then rename, so that a concurrent reader never sees half a file.
            let tmp = f.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, &cubin)?;
            std::fs::rename(&tmp, f)
        };
        if let Err(e) = write() {
            tracing::warn!(path = %f.display(), "could not write the kernel cache: {e}");
        }
    }
    Ok(cubin)
}

fn compile_uncached(name: &str, src: &str, opts: &[String]) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let csrc =
        CString::new(src).map_err(|_| Error::Cuda(format!("{name}.cu contains a NUL byte")))?;
    let cname = CString::new(format!("{name}.cu")).expect("kernel names have no NUL");
    let prog = result::create_program(&csrc, Some(&cname))
        .map_err(|e| Error::Cuda(format!("nvrtcCreateProgram({name}): {e:?}")))?;
    // SAFETY: `prog` is a live program until destroy_program below; buffers are sized by NVRTC.
    let out = unsafe {
        let compiled = result::compile_program(prog, opts);
        let log = result::get_program_log(prog)
            .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
            .unwrap_or_default();
        match compiled {
            Err(e) => Err(Error::Cuda(format!(
                "NVRTC could not compile {name}.cu ({e:?}) with {opts:?}:\n{log}"
            ))),
            Ok(()) => {
                if !log.trim().is_empty() {
                    tracing::debug!(kernel = name, "NVRTC log: {log}");
                }
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| Error::Cuda(format!("nvrtcGetCUBINSize({name}): {e:?}")))?;
                let mut buf = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| Error::Cuda(format!("nvrtcGetCUBIN({name}): {e:?}")))?;
                if size == 0 {
                    Err(Error::Cuda(format!(
                        "NVRTC returned no CUBIN for {name}.cu (is the target a real sm_XY?)"
                    )))
                } else {
                    Ok(buf)
                }
            }
        }
    };
    // SAFETY: created above, destroyed once.
    unsafe { result::destroy_program(prog) }
        .map_err(|e| Error::Cuda(format!("nvrtcDestroyProgram({name}): {e:?}")))?;
    out
}
