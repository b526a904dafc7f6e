#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root: unpacks .gpu/bundle.tar.gz (made by
# scripts/gpu_bundle.sh) and runs every test executable in it with REALIGN_REQUIRE_GPU=1, writing
# all output to $OUT/tests.log and one line per executable to $OUT/summary.txt (the device tool
# returns at most 8 files, so logs are not one per executable).
# Usage: scripts/gpu_run.sh [NAME ...]   (NAME as in the bundle, e.g. kernels--ops_cuda; default:
# every test executable). With .gpu/kcache.tgz (scripts/kernel_cache.sh) the kernels load from
# that cache instead of being compiled here.
set -uo pipefail
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/.gpu/out}"
mkdir -p "$OUT" .gpu/run
tar -C .gpu/run -xzf .gpu/bundle.tar.gz
# Test executables find fixtures through the absolute source path they were built at.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$ROOT" /work/main; fi
export REALIGN_REQUIRE_GPU=1
if [ -f .gpu/kcache.tgz ]; then
  tar -C .gpu -xzf .gpu/kcache.tgz
  # The cache key includes the include path, which kernel_cache.sh built as /usr/local/cuda.
  unset CUDA_HOME CUDA_PATH
  export REALIGN_KERNEL_CACHE="$ROOT/.gpu/kcache"
fi
summary="$OUT/summary.txt"
: > "$summary"
if [ $# -gt 0 ]; then tests=("${@/#/.gpu/run/tests/}"); else tests=(.gpu/run/tests/*); fi
for t in "${tests[@]}"; do
  name=$(basename "$t")
  [ -x "$t" ] || { echo "$name missing from the bundle" | tee -a "$summary"; continue; }
  crate=${name%%--*}
  # Each test binary runs from its crate folder, as cargo test would.
  log="$OUT/.one.log"
  (cd "/work/main/$crate" 2>/dev/null || cd /work/main; "$ROOT/$t" --test-threads=1) > "$log" 2>&1
  rc=$?
  { echo "===== $name (rc=$rc)"; cat "$log"; } >> "$OUT/tests.log"
  echo "$name rc=$rc $(grep -E '^test result' "$log" | tail -1)" | tee -a "$summary"
  rm -f "$log"
done
