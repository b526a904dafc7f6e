#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root: unpacks .gpu/bundle.tar.gz (made by
# scripts/gpu_bundle.sh) and runs every test executable in it with REALIGN_REQUIRE_GPU=1, writing
# all output to $OUT/tests.log and one line per executable to $OUT/summary.txt (the device tool
# returns at most 8 files, so logs are not one per executable).
# Usage: scripts/gpu_run.sh [NAME ...]   (NAME as in the bundle, e.g. kernels--ops_cuda; default:
# every test executable). Environment: GPU_BUNDLE (archive, default .gpu/bundle.tar.gz; e.g. the
# .gpu/slim.tgz of scripts/gpu_slim.sh), GPU_RUN_DIR (where it is unpacked, default .gpu/run),
# GPU_TEST_TIMEOUT (seconds per executable, default none). Summary lines are appended and name
# REALIGN_PDL as set (`unset`: the binary's default). With .gpu/kcache.tgz (scripts/kernel_cache.sh)
# the kernels load from that cache instead of being compiled here.
set -uo pipefail
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/.gpu/out}"
BUNDLE="${GPU_BUNDLE:-.gpu/bundle.tar.gz}"
RUN="${GPU_RUN_DIR:-.gpu/run}"
TIMEOUT="${GPU_TEST_TIMEOUT:-0}"  # 0: no limit (timeout's meaning)
mkdir -p "$OUT" "$RUN"
# Unpacked again only when the archive is newer than the last unpacking (calls on a warm machine).
unpack() { # archive dir
  if [ ! -f "$2/.unpacked" ] || [ "$1" -nt "$2/.unpacked" ]; then
    tar -C "$2" -xzf "$1" && touch "$2/.unpacked"
  fi
}
unpack "$BUNDLE" "$RUN"
# Test executables find fixtures through the absolute source path they were built at.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$ROOT" /work/main; fi
export REALIGN_REQUIRE_GPU=1
if [ -f .gpu/kcache.tgz ]; then
  unpack .gpu/kcache.tgz .gpu
  # The cache key includes the include path, which kernel_cache.sh built as /usr/local/cuda.
  unset CUDA_HOME CUDA_PATH
  export REALIGN_KERNEL_CACHE="$ROOT/.gpu/kcache"
fi
summary="$OUT/summary.txt"
T0=$(date +%s)
if [ $# -gt 0 ]; then tests=("${@/#/$RUN/tests/}"); else tests=("$RUN"/tests/*); fi
for t in "${tests[@]}"; do
  name=$(basename "$t")
  [ -x "$t" ] || { echo "$name missing from $BUNDLE" | tee -a "$summary"; continue; }
  crate=${name%%--*}
  # Each test binary runs from its crate folder, as cargo test would.
  log="$OUT/.one.log"
  (cd "/work/main/$crate" 2>/dev/null || cd /work/main; timeout "$TIMEOUT" "$ROOT/$t" --test-threads=1) > "$log" 2>&1
  rc=$?
  { echo "===== $name $RUN REALIGN_PDL=${REALIGN_PDL:-unset} (rc=$rc)"; cat "$log"; } >> "$OUT/tests.log"
  echo "$name $RUN REALIGN_PDL=${REALIGN_PDL:-unset} rc=$rc $(grep -E '^test result' "$log" | tail -1) t=$(( $(date +%s) - T0 ))" | tee -a "$summary"
  rm -f "$log"
done
