#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root: unpacks .gpu/bundle.tar.gz (made by
# scripts/gpu_bundle.sh) and runs every test executable in it with REALIGN_REQUIRE_GPU=1, writing
# all output to $OUT/tests.log and one line per executable to $OUT/summary.txt (the device tool
# returns at most 8 files, so logs are not one per executable).
set -uo pipefail
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/.gpu/out}"
mkdir -p "$OUT" .gpu/run
tar -C .gpu/run -xzf .gpu/bundle.tar.gz
# Test executables find fixtures through the absolute source path they were built at.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$ROOT" /work/main; fi
export REALIGN_REQUIRE_GPU=1
summary="$OUT/summary.txt"
: > "$summary"
for t in .gpu/run/tests/*; do
  name=$(basename "$t")
  crate=${name%%--*}
  # Each test binary runs from its crate folder, as cargo test would.
  log="$OUT/.one.log"
  (cd "/work/main/$crate" 2>/dev/null || cd /work/main; "$ROOT/$t" --test-threads=1) > "$log" 2>&1
  rc=$?
  { echo "===== $name (rc=$rc)"; cat "$log"; } >> "$OUT/tests.log"
  echo "$name rc=$rc $(grep -E '^test result' "$log" | tail -1)" | tee -a "$summary"
  rm -f "$log"
done
