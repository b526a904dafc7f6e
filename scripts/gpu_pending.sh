#!/usr/bin/env bash
# The GPU call that checks every path not yet run on a GPU and A/Bs the opt-in ones (as of
# 2026-12-07; drop a line when its path has landed or been dropped). Runs on the GPU machine from
# the repository root and writes as it goes to $OUT (summary.txt, tests.log, bench.txt, gemm.txt,
# rollout.txt), highest priority first, so a call cut short still returns the most important part.
# Needs, prepared here (slim names: the tests below):
#   .gpu/slim.tgz    scripts/gpu_bundle.sh kernels model learner actor, then scripts/gpu_slim.sh
#                    with the test names below
#   .gpu/rms.tgz     branch rmsreg (its own worktree AND its own CARGO_TARGET_DIR): tests
#                    kernels--ops_cuda kernels--training_fused learner--device_parity and
#                    bin/train_step_bench, packed as tests/ and bin/
#   .gpu/kcache.tgz  scripts/kernel_cache.sh (default and PDL builds)
# Carry: [".gpu/slim.tgz", ".gpu/rms.tgz", ".gpu/kcache.tgz"] (~30 MB with the tracked tree);
# rms.tgz is optional (its steps are skipped without it).
# Usage (device tool): bash scripts/gpu_pending.sh   (SHORT=1: default-path tests, the train-step
# A/B with the PyTorch peer, and the training opt-ins' tests only, ~5 min; SHORT=2: the train-step
# A/B with the peer only, ~3 min)
set -u
ROOT="$PWD"; mkdir -p /work && for d in main rmsreg; do [ -e /work/$d ] || ln -s "$ROOT" /work/$d; done  # never over a checkout
nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | tee $OUT/card.txt
# Tests through scripts/gpu_run.sh (summary.txt, full logs in tests.log); benches from the slim
# bundle, unpacked by the first gpu_run.sh call.
tests() { GPU_BUNDLE=.gpu/slim.tgz GPU_RUN_DIR=.gpu/run GPU_TEST_TIMEOUT=60 bash scripts/gpu_run.sh "$@"; }
RMS=""; [ -f .gpu/rms.tgz ] && RMS=.gpu/rms  # optional
rms_tests() { GPU_BUNDLE=.gpu/rms.tgz GPU_RUN_DIR=$RMS GPU_TEST_TIMEOUT=60 bash scripts/gpu_run.sh "$@"; }
B=.gpu/run/bin; T0=$(date +%s)
if [ "${SHORT:-0}" = 2 ]; then  # SHORT=2: only the train-step A/B below (unpacks the bundle)
  mkdir -p .gpu/run && tar -C .gpu/run -xzf .gpu/slim.tgz && tar -C .gpu -xzf .gpu/kcache.tgz
else
  tests actor--generate_against_hf actor--cuda_graphs kernels--fused_ops kernels--training_fused kernels--ops_cuda learner--device_parity learner--grad_store model--forward_against_hf
fi
export REALIGN_KERNEL_CACHE=$ROOT/.gpu/kcache; unset CUDA_HOME CUDA_PATH  # as gpu_run.sh sets them
[ -n "$RMS" ] && mkdir -p $RMS && tar -C $RMS -xzf .gpu/rms.tgz  # its bench runs before its tests
TS="--device cuda --dtype bf16 --steps 6 --warmup 2"
( echo "== main"; $B/train_step_bench $TS | tail -1
  echo "== torch"; timeout 90 python3 scripts/peers/torch_train_step.py --iters 10 2>&1 | tail -1
  echo "== PDL=1"; REALIGN_PDL=1 $B/train_step_bench $TS | tail -1
  echo "== fused qkv"; REALIGN_QKV=fused $B/train_step_bench $TS | tail -1
  [ -n "$RMS" ] && { echo "== rms"; $RMS/bin/train_step_bench $TS | tail -1;
    echo "== rms + fused qkv + PDL=1"; REALIGN_QKV=fused REALIGN_PDL=1 $RMS/bin/train_step_bench $TS | tail -1; }
  echo "== fused qkv + PDL=1"; REALIGN_QKV=fused REALIGN_PDL=1 $B/train_step_bench $TS | tail -1
) 2>&1 | tee $OUT/bench.txt
[ "${SHORT:-0}" = 2 ] && { echo "total $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt; exit 0; }
# What flipping the training opt-ins' defaults needs: their GPU tests.
REALIGN_PDL=1 tests kernels--ops_cuda kernels--training_fused learner--device_parity
REALIGN_QKV=fused tests kernels--qkv_fused learner--device_parity model--forward_against_hf
[ -n "$RMS" ] && rms_tests kernels--ops_cuda kernels--training_fused learner--device_parity
# SHORT=1 (a call with little device time left): stop here.
if [ "${SHORT:-0}" = 1 ]; then
  echo "total $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
  grep -E "panicked|FAILED" -A6 $OUT/tests.log 2>/dev/null | head -60; exit 0
fi
( echo "== gemm table for the training shapes"
  REALIGN_GEMM_LOG=$OUT/keys.txt $B/train_step_bench --device cuda --dtype bf16 --steps 1 --warmup 0 | tail -1
  timeout 90 $B/gemm_bench --keys $OUT/keys.txt --table-out $OUT/train_gemms.txt | tail -60
  echo "== main"; $B/train_step_bench $TS | tail -1
  echo "== train table"; REALIGN_GEMM_TABLE=$OUT/train_gemms.txt $B/train_step_bench $TS | tail -1
  echo "== train table + PDL=1"; REALIGN_PDL=1 REALIGN_GEMM_TABLE=$OUT/train_gemms.txt $B/train_step_bench $TS | tail -1
  [ -n "$RMS" ] && { echo "== all: rms + fused + PDL=1 + train table"; REALIGN_QKV=fused REALIGN_PDL=1 REALIGN_GEMM_TABLE=$OUT/train_gemms.txt $RMS/bin/train_step_bench $TS | tail -1; }
) 2>&1 | tee $OUT/gemm.txt
REALIGN_PDL=1 tests actor--cuda_graphs actor--generate_against_hf kernels--fused_ops
tests kernels--paged_attention_qkv actor--fused_attention
R="--device cuda --dtype bf16 --shapes qwen2.5-0.5b --prompt 128 --new 256 --iters 3 --cuda-graphs"
( echo "== serial B256"; timeout 40 $B/rollout_bench $R --batch 256 --serial 2>&1 | tail -3
  echo "== serial B256 PDL=1"; REALIGN_PDL=1 timeout 40 $B/rollout_bench $R --batch 256 --serial 2>&1 | tail -3
  echo "== serial B256 fused attn"; REALIGN_DECODE_ATTN=fused timeout 40 $B/rollout_bench $R --batch 256 --serial 2>&1 | tail -3
  echo "== overlap B256"; timeout 40 $B/rollout_bench $R --batch 256 --overlap 2>&1 | tail -3
  echo "== overlap B256 PDL=1"; REALIGN_PDL=1 timeout 40 $B/rollout_bench $R --batch 256 --overlap 2>&1 | tail -3
  echo "== main"; $B/train_step_bench $TS | tail -1
  echo "== PDL=1"; REALIGN_PDL=1 $B/train_step_bench $TS | tail -1
  echo "== torch"; timeout 90 python3 scripts/peers/torch_train_step.py --iters 10 2>&1 | tail -1
  echo "== overlap B64"; timeout 30 $B/rollout_bench $R --batch 64 --overlap 2>&1 | tail -3
  echo "== serial B64"; timeout 30 $B/rollout_bench $R --batch 64 --serial 2>&1 | tail -3
) 2>&1 | tee $OUT/rollout.txt
tests kernels--decode_feed kernels--gemm_lt
echo "== hf" >> $OUT/rollout.txt; timeout 100 python3 scripts/peers/hf_generate.py --batch 256 --prompt 128 --new 256 --iters 1 2>&1 | tail -2 | tee -a $OUT/rollout.txt
echo "total $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
grep -E "panicked|FAILED" -A6 $OUT/tests.log 2>/dev/null | head -60
