#!/usr/bin/env bash
# One GPU call (~4 minutes of machine for everything) that checks and measures the defaults as of
# 2026-12-07 (PDL on, the overlapped decode loop, the fused decode attention, the training GEMM
# table built in) against the defaults before them, beside both peers. Runs on the GPU machine
# from the repository root and writes as it goes to $OUT (card.txt, summary.txt, tests.log,
# rollout.txt, train.txt, ncu_decode.*), so a call cut short still returns what ran.
# The next call (as of session 16, 2026-12-08; nothing below toverlap/lanes has run on a GPU yet):
#   if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then S="toverlap train lanes_min";
#   else S="toverlap lanes_min"; fi; timeout 550 bash scripts/gpu_pending.sh $S; cat $OUT/summary.txt
#   (carry .gpu/slim.tgz and .gpu/kcache.tgz; ~7 minutes on an H100, the H200's train section cut
#   short by lanes_min if needed). Then, on the warm machine: combo, or hf for #3's ratio.
# Sections run in the order given (default: tests rollout train tests2):
#   tests    the GPU tests of the decode loop (decode_feed, generate_against_hf, cuda_graphs,
#            fused_attention)
#   rollout  HF generate, then rollout_bench B 256 default / old defaults, B 64
#   train    train_step_bench default / old defaults / PyTorch / default / without lean attention loads /
#            default with --phases
#   tests2   the kernel and learner GPU tests (ops_cuda, paged_attention_qkv, fused_ops,
#            training_fused, device_parity)
#   ksplit   REALIGN_DOWN_KSPLIT=S (the down projection as S strided-batched partial products summed
#            in the next add_rmsnorm; S = 4 by default since session 14): fused_ops GPU test, HF
#            greedy parity with S = 4, then B 256 rollouts with S = 0 (off), 2, 4, 8, and B 64
#   plean    REALIGN_PAGED_LEAN=1 (the decode attention's lean tile loader and merge, session 14, not
#            yet run) and REALIGN_PAGED_PREWAIT=1 with it: the paged attention GPU tests (its
#            bit-identity test included) and the decode loop's with them on, paged_attention_bench
#            (isolated, beside the plain kernel), then B 256 and B 64 rollouts in alternating
#            rounds: default / lean / lean + prewait
#   lanes    REALIGN_DECODE_LANES=N (a wide decode step's row blocks on N streams, sessions 15-16,
#            not yet run): its GPU tests (lanes against the whole step, f32 and bf16, graphs and
#            overlap), HF greedy parity and the graph tests with 2 lanes, then B 256 rounds of
#            default / 2 / 2 sharing the SMs / 4 / 4 sharing, and B 64 rounds of default / 2 / 2
#            sharing
#   combo    lanes and plean in one call (their main tests, then B 256 rounds of default / 2 lanes /
#            2 lanes sharing the SMs (REALIGN_LANE_SMS=share) / 4 sharing / lean, and B 64 rounds of
#            default / 2 lanes sharing)
#   toverlap REALIGN_TRAIN_OVERLAP (the decoder backward's weight gradients on a side lane beside
#            the input gradients, session 16, not yet run): the split backward's op test, the
#            norm backwards (cu/rmsnorm.cu changed: the out-of-place accumulate), the model's
#            overlap test, device parity without and with it, then train step rounds of default /
#            lane / lane GEMMs planned for 100 SMs / for 66, and the phases with it on
#   lanes_min  the lanes tests (kernels' fork/join, actor's rollout), HF parity with lanes, B 256
#            rounds of default / 2 lanes / 2 sharing the SMs / 4 sharing
#   hf       HF generate at B 256 and our default rollout beside it (#3's ratio on this card)
#   ncu      scripts/ncu_decode.sh: a decode step kernel by kernel (Nsight Compute)
#   ncuk     scripts/ncu_kernels.sh: full Nsight sections (stall reasons) of the decode attention,
#            the TMA GEMM and the attention backward
#   wgmma    our GEMMs (cp.async wgmma, TMA): their GPU test, `cuda_bench wgmma` (beside cuBLAS),
#            then a B 256 rollout with each (REALIGN_GEMM=wgmma / tma) beside the default
#   attn     `cuda_bench attention`: every FaConfig candidate (lean ones included) fwd and bwd
#   early    the fused decode attention's GPU tests with REALIGN_PAGED_EARLY=0 (the fallback without
#            the early tile requests, default since session 14)
#   split    B 256 / B 64 rollouts with the decode attention's split forced (REALIGN_PAGED_SPLIT):
#            a deeper K/V ring (3, 4 tiles) and shorter partitions (256, 128 tokens + combine),
#            in place, where the isolated benchmark's L2-resident caches do not hide the latency
# Needs, prepared here:
#   .gpu/slim.tgz    scripts/gpu_bundle.sh, then scripts/gpu_slim.sh with the test names below
#                    (kernels--decode_feed actor--generate_against_hf actor--cuda_graphs
#                    actor--fused_attention kernels--ops_cuda kernels--paged_attention_qkv
#                    kernels--fused_ops kernels--training_fused learner--device_parity
#                    kernels--gemm_wgmma kernels--paged_attention actor--decode_lanes kernels--lanes
#                    kernels--linear_parts model--backward_overlap)
#   .gpu/kcache.tgz  scripts/kernel_cache.sh (default and REALIGN_PDL=0 builds)
# Carry: [".gpu/slim.tgz", ".gpu/kcache.tgz"]. Usage (device tool): bash scripts/gpu_pending.sh [SECTION ...]
set -u
ROOT=$PWD; mkdir -p /work; [ -e /work/main ] || ln -s "$ROOT" /work/main  # never over a checkout
nvidia-smi --query-gpu=name,memory.total,power.limit --format=csv,noheader | tee -a $OUT/card.txt
mkdir -p .gpu/run
[ -f .gpu/run/.unpacked ] || { tar -C .gpu/run -xzf .gpu/slim.tgz && touch .gpu/run/.unpacked; }
[ -d .gpu/kcache ] || tar -C .gpu -xzf .gpu/kcache.tgz
export REALIGN_KERNEL_CACHE=$ROOT/.gpu/kcache; unset CUDA_HOME CUDA_PATH  # as gpu_run.sh sets them
B=$ROOT/.gpu/run/bin; T0=$(date +%s)
tests() { GPU_BUNDLE=.gpu/slim.tgz GPU_RUN_DIR=.gpu/run GPU_TEST_TIMEOUT=90 bash scripts/gpu_run.sh "$@"; }
R="--device cuda --dtype bf16 --shapes qwen2.5-0.5b --prompt 128 --new 256 --iters 3"
roll() { timeout 60 $B/rollout_bench "$@" 2>&1 | grep -E "tokens/s|ratio|per decode step|[Ee]rror|panicked"; }
TS="--device cuda --dtype bf16 --steps 6 --warmup 2"
step() { "$@" 2>&1 | grep -E "s/step|step times"; }  # per-step times show clock drift
for section in "${@:-tests rollout train tests2}"; do for s in $section; do case $s in
  tests) tests kernels--decode_feed actor--generate_against_hf actor--cuda_graphs actor--fused_attention ;;
  rollout)
    { echo "== hf"; timeout 150 python3 scripts/peers/hf_generate.py --batch 256 --prompt 128 --new 256 --iters 1 2>&1 | tail -1
      echo "== default B256"; roll $R --batch 256
      echo "== before 2026-12-07 B256 (serial, split, PDL=0)"; REALIGN_PDL=0 roll $R --batch 256 --serial --split-attention
      echo "== default B64"; roll $R --batch 64
      echo "== REALIGN_PAGED_EARLY=0 REALIGN_DOWN_KSPLIT=0 B256 (the defaults before session 14)"
      REALIGN_PAGED_EARLY=0 REALIGN_DOWN_KSPLIT=0 roll $R --batch 256
      echo "== default B256 (again)"; roll $R --batch 256; } 2>&1 | tee -a $OUT/rollout.txt ;;
  train)
    { echo "== default"; step $B/train_step_bench $TS
      echo "== before 2026-12-07 (PDL=0, GEMM=ex)"; REALIGN_PDL=0 REALIGN_GEMM=ex step $B/train_step_bench $TS
      echo "== torch"; timeout 100 python3 scripts/peers/torch_train_step.py --iters 10 2>&1 | tail -1
      echo "== default"; step $B/train_step_bench $TS
      echo "== without the lean attention loads (REALIGN_ATTENTION_CFG=lean=0)"; REALIGN_ATTENTION_CFG=lean=0 step $B/train_step_bench $TS
      echo "== default, phases (synchronised; where the time goes)"; $B/train_step_bench $TS --phases 2>&1 | tail -25
    } 2>&1 | tee -a $OUT/train.txt ;;
  tests2) tests kernels--ops_cuda kernels--paged_attention_qkv kernels--fused_ops kernels--training_fused learner--device_parity ;;
  early) REALIGN_PAGED_EARLY=0 tests kernels--paged_attention_qkv actor--fused_attention actor--generate_against_hf ;;
  split)
    { echo "== default B256"; roll $R --batch 256
      for sp in 512,0,1,0,0,3 512,0,1,0,0,4 256,0,1,0,0,2 128,0,1,0,0,2; do
        echo "== REALIGN_PAGED_SPLIT=$sp B256"; REALIGN_PAGED_SPLIT=$sp roll $R --batch 256; done
      echo "== default B64"; roll $R --batch 64
      echo "== REALIGN_PAGED_SPLIT=512,0,1,0,0,4 B64"; REALIGN_PAGED_SPLIT=512,0,1,0,0,4 roll $R --batch 64
    } 2>&1 | tee -a $OUT/split.txt ;;
  ksplit) tests kernels--fused_ops
    REALIGN_DOWN_KSPLIT=4 tests actor--generate_against_hf
    { echo "== default B256"; roll $R --batch 256
      for sp in 0 2 4 8; do echo "== REALIGN_DOWN_KSPLIT=$sp B256"; REALIGN_DOWN_KSPLIT=$sp roll $R --batch 256; done
      echo "== default B64"; roll $R --batch 64
      echo "== REALIGN_DOWN_KSPLIT=0 B64"; REALIGN_DOWN_KSPLIT=0 roll $R --batch 64
      echo "== default B256 (again)"; roll $R --batch 256
    } 2>&1 | tee -a $OUT/ksplit.txt ;;
  plean) tests kernels--paged_attention
    REALIGN_PAGED_LEAN=1 tests kernels--paged_attention_qkv actor--fused_attention actor--generate_against_hf actor--cuda_graphs
    REALIGN_PAGED_LEAN=1 REALIGN_PAGED_PREWAIT=1 tests kernels--paged_attention_qkv actor--cuda_graphs
    timeout 60 $B/paged_attention_bench 2>&1 | grep -E "default|lean|stages 2" | tee -a $OUT/plean.txt
    # Alternating rounds (scripts/ab_rounds.sh): the decode step excluding prefill, ms.
    STEP='s/.*decode step ([0-9.]+) ms excluding.*/\1/p'
    ROUNDS=4 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 256" "$STEP" - REALIGN_PAGED_LEAN=1 \
      "REALIGN_PAGED_LEAN=1 REALIGN_PAGED_PREWAIT=1"
    ROUNDS=2 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 64" "$STEP" - REALIGN_PAGED_LEAN=1 \
      "REALIGN_PAGED_LEAN=1 REALIGN_PAGED_PREWAIT=1" ;;
  lanes) tests kernels--lanes
    REALIGN_DECODE_LANES= tests actor--decode_lanes
    REALIGN_DECODE_LANES=2 tests actor--generate_against_hf actor--cuda_graphs
    # Alternating rounds (scripts/ab_rounds.sh): the decode step excluding prefill, ms.
    STEP='s/.*decode step ([0-9.]+) ms excluding.*/\1/p'
    ROUNDS=3 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 256" "$STEP" - REALIGN_DECODE_LANES=2 \
      "REALIGN_DECODE_LANES=2 REALIGN_LANE_SMS=share" REALIGN_DECODE_LANES=4 \
      "REALIGN_DECODE_LANES=4 REALIGN_LANE_SMS=share"
    ROUNDS=2 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 64" "$STEP" - REALIGN_DECODE_LANES=2 \
      "REALIGN_DECODE_LANES=2 REALIGN_LANE_SMS=share" ;;
  combo) # lanes and plean in one call: their tests, then one set of alternating rounds.
    tests kernels--lanes
    REALIGN_DECODE_LANES= tests actor--decode_lanes
    REALIGN_DECODE_LANES= REALIGN_LANE_SMS=share tests actor--decode_lanes
    REALIGN_DECODE_LANES=2 tests actor--generate_against_hf actor--cuda_graphs
    tests kernels--paged_attention
    REALIGN_PAGED_LEAN=1 tests kernels--paged_attention_qkv actor--fused_attention actor--generate_against_hf
    STEP='s/.*decode step ([0-9.]+) ms excluding.*/\1/p'
    ROUNDS=3 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 256" "$STEP" - REALIGN_DECODE_LANES=2 \
      "REALIGN_DECODE_LANES=2 REALIGN_LANE_SMS=share" "REALIGN_DECODE_LANES=4 REALIGN_LANE_SMS=share" \
      REALIGN_PAGED_LEAN=1
    ROUNDS=2 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 64" "$STEP" - \
      "REALIGN_DECODE_LANES=2 REALIGN_LANE_SMS=share" ;;
  toverlap) # the backward's weight gradients on a side lane (REALIGN_TRAIN_OVERLAP, session 16)
    tests kernels--linear_parts kernels--training_fused kernels--ops_cuda model--backward_overlap \
      learner--device_parity
    REALIGN_TRAIN_OVERLAP=1 tests learner--device_parity
    SPS='s/.*median ([0-9.]+) s .*/\1/p'  # the median step, seconds
    ROUNDS=3 bash scripts/ab_rounds.sh "$B/train_step_bench $TS" "$SPS" - REALIGN_TRAIN_OVERLAP=1 \
      REALIGN_TRAIN_OVERLAP=sms=100 REALIGN_TRAIN_OVERLAP=sms=66
    echo "== REALIGN_TRAIN_OVERLAP=1, phases"
    REALIGN_TRAIN_OVERLAP=1 $B/train_step_bench $TS --phases 2>&1 | grep -E "^phase|s/step" ;;
  lanes_min) # the least that says whether lanes work and pay (a short call)
    tests kernels--lanes
    REALIGN_DECODE_LANES= tests actor--decode_lanes
    REALIGN_DECODE_LANES=2 tests actor--generate_against_hf
    STEP='s/.*decode step ([0-9.]+) ms excluding.*/\1/p'
    ROUNDS=3 bash scripts/ab_rounds.sh "$B/rollout_bench $R --batch 256" "$STEP" - REALIGN_DECODE_LANES=2 \
      "REALIGN_DECODE_LANES=2 REALIGN_LANE_SMS=share" "REALIGN_DECODE_LANES=4 REALIGN_LANE_SMS=share" ;;
  hf) { echo "== hf B256"; timeout 150 python3 scripts/peers/hf_generate.py --batch 256 --prompt 128 --new 256 --iters 1 2>&1 | tail -1
      echo "== default B256"; roll $R --batch 256; } 2>&1 | tee -a $OUT/rollout.txt ;;
  ncu) bash scripts/ncu_decode.sh ;;
  ncuk) bash scripts/ncu_kernels.sh ;;
  attn) timeout 150 $B/cuda_bench attention 2>&1 | grep -E "^bench|^check|^config|panicked" | tee -a $OUT/attn.txt ;;
  wgmma) tests kernels--gemm_wgmma
    timeout 120 $B/cuda_bench wgmma 2>&1 | grep -E "^bench|^ratio|wgmma|tma|panicked" | tee -a $OUT/wgmma.txt
    # In place: the decode step's bias-free products on it (REALIGN_GEMM=wgmma) beside cuBLAS.
    { echo "== default B256"; roll $R --batch 256
      echo "== REALIGN_GEMM=wgmma B256"; REALIGN_GEMM=wgmma roll $R --batch 256
      echo "== REALIGN_GEMM=tma B256"; REALIGN_GEMM=tma roll $R --batch 256
      echo "== REALIGN_GEMM=tma_pp B256"; REALIGN_GEMM=tma_pp roll $R --batch 256; } 2>&1 | tee -a $OUT/wgmma.txt ;;
  *) echo "unknown section $s" | tee -a $OUT/summary.txt ;;
esac; echo "after $s: $(( $(date +%s) - T0 )) s" | tee -a $OUT/summary.txt; done; done
grep -E "panicked|FAILED" -A6 $OUT/tests.log 2>/dev/null | head -40
