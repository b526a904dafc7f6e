#!/usr/bin/env bash
# Compiles every CUDA kernel here (no GPU needed: NVRTC from the pip wheels) into a kernel cache
# and packs it as .gpu/kcache.tgz, so that the GPU machine loads cubins instead of spending a
# minute or more of device time in NVRTC. scripts/gpu_run.sh unpacks and uses it when present.
#
# The cache key includes the NVRTC include path, so the headers must sit where the GPU machine has
# them (/usr/local/cuda/include): this script points /usr/local/cuda at the wheels' tree for the
# build (it refuses if /usr/local/cuda is something else) and removes the link afterwards.
# Needs: pip (network, first run only), root for /usr/local/cuda. Usage: scripts/kernel_cache.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${REALIGN_NVRTC_WHEELS:-/tmp/cudaw}"
CU="$WHEELS/x/nvidia/cu13"
if [ ! -d "$CU/lib" ]; then
  mkdir -p "$WHEELS/whl" "$WHEELS/x"
  # CUDA 13.0: the GPU machine's version (../shared/gpu.md).
  python3 -m pip download -q --no-deps -d "$WHEELS/whl" \
    "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
  for w in "$WHEELS"/whl/*.whl; do python3 -m zipfile -e "$w" "$WHEELS/x"; done
fi
if [ -e /usr/local/cuda ] && [ "$(readlink /usr/local/cuda)" != "$CU" ]; then
  echo "/usr/local/cuda exists and is not the wheels' link; not touching it" >&2
  exit 1
fi
ln -sfn "$CU" /usr/local/cuda
trap 'rm -f /usr/local/cuda' EXIT
CACHE="$ROOT/.gpu/kcache"
rm -rf "$CACHE" && mkdir -p "$CACHE"
cd "$ROOT"
# Both builds of every module: the PDL one (the default on sm_90+) and the plain one (REALIGN_PDL=0).
for pdl in 0 1; do
  env -u CUDA_HOME -u CUDA_PATH REALIGN_KERNEL_CACHE="$CACHE" LD_LIBRARY_PATH="$CU/lib" REALIGN_PDL=$pdl \
    cargo test --release -p kernels --test ops_cuda nvrtc_compiles_every_kernel
  # The paged-attention variants of the decode shapes the GPU call runs (ignored by default).
  env -u CUDA_HOME -u CUDA_PATH REALIGN_KERNEL_CACHE="$CACHE" LD_LIBRARY_PATH="$CU/lib" REALIGN_PDL=$pdl \
    cargo test --release -p kernels --test paged_attention nvrtc_compiles_the_decode_shapes -- --ignored
done
tar -C "$ROOT/.gpu" -czf "$ROOT/.gpu/kcache.tgz" kcache
echo "$(ls "$CACHE" | wc -l) modules in $ROOT/.gpu/kcache.tgz ($(du -h "$ROOT/.gpu/kcache.tgz" | cut -f1))"
