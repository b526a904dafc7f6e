#!/usr/bin/env bash
# The GPU calls that check every path not yet run on a GPU and A/B the opt-in ones (as of
# 2026-12-07, session 10; drop a line when its path has landed or been dropped). Runs on the GPU
# machine from the repository root and writes as it goes to $OUT (summary.txt, tests.log,
# train.txt, gemm.txt, rollout.txt), highest priority first, so a call cut short still returns
# the most important part.
# Needs, prepared here:
#   .gpu/slim.tgz    scripts/gpu_bundle.sh, then scripts/gpu_slim.sh with the test names below
#   .gpu/kcache.tgz  scripts/kernel_cache.sh (default and PDL builds)
# Carry: [".gpu/slim.tgz", ".gpu/kcache.tgz"].
# Usage (device tool): PART=1 bash scripts/gpu_pending.sh, then PART=2 on the same warm machine
# (each under ~9 minutes). PART=1: the GPU tests of the overlapped decode loop's read-back and its
# rollout A/B, the training GEMM table measured for this card, the train-step A/B (defaults vs
# table + PDL) beside the PyTorch peer, the actor's tests under PDL. PART=2: the other tests
# (default and PDL), the rollout A/B beside HF generate, the train-step A/B again. PART=short: the
# read-back tests, the actor graph test under PDL and the overlap A/B (~3 minutes of machine).
# After PART=1, here: scripts/merge_gemm_table.sh FILES_AT/train_gemms.txt "CARD, DATE, train
# step 8 x 1024" appends the measured entries to kernels/src/cuda/blas/gemm_table.txt; commit it.
set -u
ROOT="$PWD"; mkdir -p /work && [ -e /work/main ] || ln -s "$ROOT" /work/main  # never over a checkout
nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | tee -a $OUT/card.txt
tests() { GPU_BUNDLE=.gpu/slim.tgz GPU_RUN_DIR=.gpu/run GPU_TEST_TIMEOUT=90 bash scripts/gpu_run.sh "$@"; }
mkdir -p .gpu/run
[ -f .gpu/run/.unpacked ] || { tar -C .gpu/run -xzf .gpu/slim.tgz && touch .gpu/run/.unpacked; }
[ -d .gpu/kcache ] || tar -C .gpu -xzf .gpu/kcache.tgz
export REALIGN_KERNEL_CACHE=$ROOT/.gpu/kcache; unset CUDA_HOME CUDA_PATH  # as gpu_run.sh sets them
B=.gpu/run/bin; T0=$(date +%s)
TS="--device cuda --dtype bf16 --steps 6 --warmup 2"
TABLE=.gpu/train_gemms.txt  # kept on the warm machine between the two parts
step() { "$@" 2>&1 | grep -E "^step|s/step|host queue"; }  # per-step times show clock drift
train_ab() {  # defaults vs PDL + the table measured here, twice each, the PyTorch peer between
  [ -f $TABLE ] || { echo "no $TABLE (a cold machine): PART=1 measures it"; return; }
  echo "== main"; step $B/train_step_bench $TS
  echo "== table + PDL=1"; REALIGN_PDL=1 REALIGN_GEMM_TABLE=$TABLE step $B/train_step_bench $TS
  echo "== torch"; timeout 100 python3 scripts/peers/torch_train_step.py --iters 10 2>&1 | tail -1
  echo "== main"; step $B/train_step_bench $TS
  echo "== table + PDL=1"; REALIGN_PDL=1 REALIGN_GEMM_TABLE=$TABLE step $B/train_step_bench $TS
}
R="--device cuda --dtype bf16 --shapes qwen2.5-0.5b --prompt 128 --new 256 --iters 3 --cuda-graphs"
roll() { timeout 60 $B/rollout_bench "$@" 2>&1 | grep -E "tokens/s|ratio|per decode step"; }
readback_ab() {  # the read-back fix's tests, then the overlapped loop against the serial one
  tests kernels--decode_feed actor--cuda_graphs
  ( echo "== serial B256"; roll $R --batch 256 --serial
    echo "== overlap B256"; roll $R --batch 256 --overlap
    echo "== overlap B256 PDL=1 fused attn"; REALIGN_PDL=1 REALIGN_DECODE_ATTN=fused roll $R --batch 256 --overlap
  ) 2>&1 | tee $OUT/rollout.txt
}
if [ "${PART:-1}" = short ]; then  # what ~3 minutes of a machine can check
  readback_ab
  REALIGN_PDL=1 tests actor--cuda_graphs
elif [ "${PART:-1}" = 1 ]; then
  # The read-back fix and its A/B first, the actor's tests under PDL, the train step with PDL,
  # then the training table.
  readback_ab
  REALIGN_PDL=1 tests actor--cuda_graphs actor--generate_against_hf actor--fused_attention
  ( echo "== main"; step $B/train_step_bench $TS
    echo "== PDL=1"; REALIGN_PDL=1 step $B/train_step_bench $TS
    echo "== torch"; timeout 100 python3 scripts/peers/torch_train_step.py --iters 10 2>&1 | tail -1
  ) 2>&1 | tee $OUT/train.txt
  ( echo "== gemm table for the training shapes"
    REALIGN_GEMM_LOG=$OUT/keys.txt $B/train_step_bench --device cuda --dtype bf16 --steps 1 --warmup 0 2>&1 | grep s/step
    timeout 200 $B/gemm_bench --keys $OUT/keys.txt --candidates 16 --table-out $OUT/train_gemms.txt 2>&1 | grep -E "^key|^all|gemm_bench"
    cp $OUT/train_gemms.txt $TABLE
  ) 2>&1 | tee $OUT/gemm.txt
  train_ab 2>&1 | tee -a $OUT/train.txt
else
  tests actor--generate_against_hf actor--fused_attention kernels--paged_attention_qkv
  REALIGN_PDL=1 tests kernels--decode_feed kernels--fused_ops kernels--ops_cuda kernels--training_fused learner--device_parity
  ( echo "== hf"; timeout 120 python3 scripts/peers/hf_generate.py --batch 256 --prompt 128 --new 256 --iters 1 2>&1 | tail -2
    echo "== serial B256"; roll $R --batch 256 --serial
    echo "== serial B256 PDL=1"; REALIGN_PDL=1 roll $R --batch 256 --serial
    echo "== overlap B256 PDL=1"; REALIGN_PDL=1 roll $R --batch 256 --overlap
    echo "== overlap B256 PDL=1 fused attn"; REALIGN_PDL=1 REALIGN_DECODE_ATTN=fused roll $R --batch 256 --overlap
    echo "== serial B64"; roll $R --batch 64 --serial
    echo "== overlap B64 PDL=1 fused attn"; REALIGN_PDL=1 REALIGN_DECODE_ATTN=fused roll $R --batch 64 --overlap
  ) 2>&1 | tee -a $OUT/rollout.txt
  train_ab 2>&1 | tee -a $OUT/train.txt
fi
echo "part ${PART:-1}: $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt
grep -E "panicked|FAILED" -A6 $OUT/tests.log 2>/dev/null | head -60
