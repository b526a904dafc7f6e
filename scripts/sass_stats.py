#!/usr/bin/env python3
"""SASS instruction counts per kernel of one realign CUDA module, compiled here with NVRTC (no GPU).

Concatenates kernels/cu/common.cuh and the named files (as kernels/src/cuda/*.rs do), compiles
them for sm_90 with the crate's NVRTC options (kernels/src/cuda/nvrtc.rs) plus the given defines,
writes OUT.cubin and OUT.cubin.sass, and prints each kernel's instruction count and most frequent
opcodes. Static only: it says how much a change shortens a kernel, not how fast it runs.

Needs the NVRTC wheels of scripts/kernel_cache.sh (REALIGN_NVRTC_WHEELS, default /tmp/cudaw) and
nvdisasm (NVDISASM, default /tmp/nvd/x/nvidia/cu13/bin/nvdisasm: `pip download --no-deps
"nvidia-cuda-nvdisasm==13.2.*"` and unzip the wheel; 13.2 reads 13.0's cubins).
ARCH=sm_90a for the wgmma modules.
Usage: LD_LIBRARY_PATH=/tmp/cudaw/x/nvidia/cu13/lib scripts/sass_stats.py OUT.cubin \\
           mma.cuh attention_mma.cu -- -DHEAD_DIM=64 -DLEAN=1 ...
"""
import collections
import ctypes
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels", "cu")
CU = os.path.join(os.environ.get("REALIGN_NVRTC_WHEELS", "/tmp/cudaw"), "x", "nvidia", "cu13")
NVDISASM = os.environ.get("NVDISASM", "/tmp/nvd/x/nvidia/cu13/bin/nvdisasm")


def main() -> None:
    args = sys.argv[1:]
    if "--" not in args or len(args) < 3:
        sys.exit(__doc__)
    sep = args.index("--")
    out, files, defines = args[0], args[1:sep], args[sep + 1:]
    src = open(os.path.join(ROOT, "common.cuh")).read()
    for f in files:
        src += f'\n#line 1 "{f}"\n' + open(os.path.join(ROOT, f)).read()
    opts = [f"--gpu-architecture={os.environ.get('ARCH', 'sm_90')}", "--std=c++17", "--ftz=false", "--prec-div=true",
            "--prec-sqrt=true", "--fmad=true", "-default-device", "-lineinfo",
            f"--include-path={CU}/include", "-diag-suppress=1556"] + defines
    lib = ctypes.CDLL(os.path.join(CU, "lib", "libnvrtc.so.13"))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"module.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    if log.value.strip():
        print(log.value.decode())
    if rc:
        sys.exit(f"NVRTC failed ({rc})")
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetCUBIN(prog, cubin)
    with open(out, "wb") as f:
        f.write(cubin.raw)
    sass = subprocess.run([NVDISASM, "-c", out], capture_output=True, text=True, check=True).stdout
    with open(out + ".sass", "w") as f:
        f.write(sass)
    for part in re.split(r"\n\s*\.section\s+\.text\.", sass)[1:]:
        name = part.split(",")[0].split()[0]
        ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", part)
        counts = collections.Counter(op.split(".")[0] for op in ops)
        spills = counts["LDL"] + counts["STL"]
        print(f"{name}: {len(ops)} instructions, {spills} local loads/stores; "
              + ", ".join(f"{k} {v}" for k, v in counts.most_common(10)))


if __name__ == "__main__":
    main()
