#!/usr/bin/env bash
# Runs the benchmarks on the GPU machine, from the repository root, with the binaries of
# .gpu/bundle.tar.gz (made here by scripts/gpu_bundle.sh; unpacked into .gpu/run if not yet):
#   (a) rollout: actor's rollout_bench, Qwen2.5-0.5B shapes, B 256, P 128, N 256, beside HF
#       `generate` on the same shapes (scripts/peers/hf_generate.py, --iters 1: ~7 s a run, ~50 s
#       with start-up), op by op (--no-cuda-graphs) and with CUDA-graph decode steps (the default), and a profiled run
#       (REALIGN_PROFILE=1, N 32), the overlapped decode loop (--overlap) beside the serial graphed
#       run; then, if time is left, SmolLM2-135M shapes at B 64 and 256 and Qwen at B 64 serial /
#       overlapped;
#   (b) training step: learner's train_step_bench (8 × 1024 tokens) beside a plain PyTorch step
#       (scripts/peers/torch_train_step.py --batch 8 --seq 1024).
# JSON result lines go to $OUT/bench.jsonl, all output to $OUT/bench.log. Every part runs under
# `timeout`, capped by what is left of an 8-minute budget, so the script ends within 8 minutes.
set -uo pipefail
ROOT="$(pwd)"
OUT="${OUT:-$ROOT/.gpu/out}"
BIN=.gpu/run/bin
BUDGET_S=470
mkdir -p "$OUT" .gpu/run
[ -x "$BIN/rollout_bench" ] || tar -C .gpu/run -xzf .gpu/bundle.tar.gz
LOG="$OUT/bench.log"
JSONL="$OUT/bench.jsonl"
touch "$JSONL"

# part NAME LIMIT_S CMD...: runs CMD with at most LIMIT_S seconds (less if the budget is nearly
# spent), output to the log; JSON lines on stdout are appended to bench.jsonl.
part() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "===== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    return
  fi
  echo "===== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/.part.out" 2>> "$LOG"
  local rc=$?
  cat "$OUT/.part.out" >> "$LOG"
  grep -E '^\{' "$OUT/.part.out" >> "$JSONL"
  rm -f "$OUT/.part.out"
  echo "===== $name: rc=$rc in $((SECONDS - t0))s" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$LOG" 2>&1

# (a) rollout (stdout carries the JSON lines, so no --out)
part rollout_qwen 60 "$BIN/rollout_bench" --device cuda --dtype bf16 --shapes qwen2.5-0.5b \
  --batch 256 --prompt 128 --new 256 --iters 3 --no-cuda-graphs
part hf_generate_qwen 90 python3 scripts/peers/hf_generate.py \
  --batch 256 --prompt 128 --new 256 --iters 1
part rollout_qwen_graphs 60 "$BIN/rollout_bench" --device cuda --dtype bf16 --shapes qwen2.5-0.5b \
  --batch 256 --prompt 128 --new 256 --iters 3 --cuda-graphs
# The defaults before 2026-12-07 (serial loop, split decode attention, no PDL) against the
# defaults just above (overlapped loop, fused decode attention, PDL).
REALIGN_PDL=0 part rollout_qwen_serial 60 "$BIN/rollout_bench" --device cuda --dtype bf16 \
  --shapes qwen2.5-0.5b --batch 256 --prompt 128 --new 256 --iters 3 --serial --split-attention
REALIGN_PROFILE=1 part rollout_qwen_profile 40 "$BIN/rollout_bench" --device cuda --dtype bf16 \
  --shapes qwen2.5-0.5b --batch 256 --prompt 128 --new 32 --iters 1

# (b) training step. train_step_bench prints text; its summary line becomes one JSON line.
part train_step 60 "$BIN/train_step_bench" --device cuda --dtype bf16 --seqs 8 --seq-len 1024
summary=$(grep -E 'tokens/s, MFU' "$LOG" | tail -1)
if [ -n "$summary" ]; then
  python3 - "$summary" >> "$JSONL" <<'PY'
import json, re, sys
m = re.search(r"([\d.]+) s/step, (\d+) tokens/s, MFU ([\d.]+)%", sys.argv[1])
if m:
    print(json.dumps(dict(benchmark="train_step_bench", batch=8, seq=1024,
                          seconds=float(m[1]), tokens_per_s=int(m[2]), mfu=float(m[3]) / 100)))
PY
fi
part torch_train_step 90 python3 scripts/peers/torch_train_step.py --batch 8 --seq 1024

# (c) if time is left: SmolLM2-135M shapes (random weights), B 64 and 256.
for b in 64 256; do
  part "rollout_smollm2_b$b" 40 "$BIN/rollout_bench" --device cuda --dtype bf16 \
    --shapes smollm2-135m --batch "$b" --prompt 128 --new 256 --iters 3
done
# (d) if time is left: Qwen shapes at B 64, serial then overlapped.
for mode in --serial --overlap; do
  part "rollout_qwen_b64$mode" 30 "$BIN/rollout_bench" --device cuda --dtype bf16 \
    --shapes qwen2.5-0.5b --batch 64 --prompt 128 --new 256 --iters 3 "$mode"
done
echo "===== done in ${SECONDS}s" | tee -a "$LOG"
