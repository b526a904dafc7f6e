#!/usr/bin/env bash
# Why three kernels run below their floors, from Nsight Compute's full section set (speed of light,
# memory workload, warp stall reasons, occupancy, source counters) for one launch each:
#   attn_decode  paged_attention_qkv_bf16 in place, in the last decode steps of a Qwen2.5-0.5B-shapes
#                rollout at B 256 (30% of a decode step on an H100, 1.4 TB/s: docs/benchmarks.md)
#   gemm_tma     our TMA GEMM on the training gate product 8192 × 4864 × 896 (0.62× of cuBLAS)
#   gemm_tma_pp  the persistent ping-pong TMA GEMM on the same product (not in the default list)
#   attn_bwd     the training attention's dk/dv kernel (attention_fa_bwd, 8 × 1024 tokens)
# Runs on the GPU machine after scripts/gpu_pending.sh (or gpu_run.sh) has unpacked the bundle;
# writes $OUT/ncu_<name>.txt. Usage: bash scripts/ncu_kernels.sh [NAME ...] (default: all three).
# Launch indices: rollout_bench runs a warm-up and one timed rollout (24 attention launches a
# decode step each), then a prefill-only rollout; `cuda_bench wgmma` launches each of our GEMMs 24 times a product (one
# checked, 3 warm-up, 20 timed), the training gate product being the sixth.
set -u
B=$PWD/.gpu/run/bin
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "ncu not found" | tee -a "$OUT/summary.txt"; exit 0; }
export REALIGN_KERNEL_CACHE=$PWD/.gpu/kcache
full() { timeout 240 "$NCU" --set full --clock-control none --cache-control all "$@"; }
for name in "${@:-attn_decode gemm_tma attn_bwd}"; do for n in $name; do case $n in
  attn_decode)
    # The warm-up rollout launches the kernel too (24 a decode step, ~67 steps at P 128 + N 64),
    # so 2,400 launches land ~33 steps into the timed rollout, well past its first steps, which
    # run before the last prefill chunk and have fewer rows (session 14's run at skip 480 caught a
    # 63-row step of the timed rollout's start).
    REALIGN_CUDA_GRAPHS=0 full -k regex:paged_attention_qkv --launch-skip 2400 --launch-count 2 \
      "$B/rollout_bench" --device cuda --dtype bf16 --shapes qwen2.5-0.5b --batch 256 --prompt 128 \
      --new 64 --iters 1 --no-cuda-graphs > "$OUT/ncu_attn_decode.txt" 2>&1 ;;
  gemm_tma)
    full -k regex:gemm_tma_tn --launch-skip 120 --launch-count 1 "$B/cuda_bench" wgmma \
      > "$OUT/ncu_gemm_tma.txt" 2>&1 ;;
  gemm_tma_pp)
    full -k regex:gemm_tma_pp_tn --launch-skip 120 --launch-count 1 "$B/cuda_bench" wgmma \
      > "$OUT/ncu_gemm_tma_pp.txt" 2>&1 ;;
  attn_bwd)
    full -k regex:attention_fa_bwd --launch-skip 2 --launch-count 1 "$B/cuda_bench" attention default \
      > "$OUT/ncu_attn_bwd.txt" 2>&1 ;;
  *) echo "ncu_kernels: unknown kernel $n" | tee -a "$OUT/summary.txt" ;;
esac; echo "ncu $n rc $? ($(wc -l < "$OUT/ncu_$n.txt" 2>/dev/null || echo 0) lines)" | tee -a "$OUT/summary.txt"; done; done
