#!/usr/bin/env bash
# Where a decode step's time goes, kernel by kernel, in place (not in an isolated micro-benchmark):
# Nsight Compute's gpu__time_duration for every kernel of a short Qwen2.5-0.5B-shapes rollout at
# B 256 with contexts near the bench's mean (prompt 256, 12 new tokens: prefill runs in chunks of
# 32 sequences, so only the last ~4 decode steps run all 256 rows), op by op (graphs off: the
# same kernels; ncu serialises them either way), clocks and caches left alone. Runs on the GPU
# machine after scripts/gpu_pending.sh has unpacked the bundle; writes $OUT/ncu_decode.csv (raw) and
# $OUT/ncu_decode.txt (per-kernel sums over the decode steps of the last iteration).
# Analyse the CSV here with scripts/ncu_summary.py.
set -u
B=$PWD/.gpu/run/bin
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee -a $OUT/ncu_decode.txt; exit 0; }
export REALIGN_KERNEL_CACHE=$PWD/.gpu/kcache REALIGN_CUDA_GRAPHS=0
timeout 300 "$NCU" --clock-control none --cache-control none --metrics gpu__time_duration.sum \
  --csv --print-units base \
  "$B/rollout_bench" --device cuda --dtype bf16 --shapes qwen2.5-0.5b --batch 256 --prompt 256 \
  --new 12 --iters 1 --no-cuda-graphs > $OUT/ncu_decode.csv 2> $OUT/ncu_decode.err
echo "ncu rc $? ($(wc -l < $OUT/ncu_decode.csv) lines)" | tee -a $OUT/ncu_decode.txt
python3 scripts/ncu_summary.py $OUT/ncu_decode.csv 2>&1 | tee -a $OUT/ncu_decode.txt
