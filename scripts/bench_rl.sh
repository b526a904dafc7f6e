#!/usr/bin/env bash
# One full RL iteration, ours against TRL, on the GPU machine.
#
# Workload (issue 6): SmolLM2-135M shapes with random weights, 32 prompts x 8 samples = 256
# completions per step, chat prompts of ~64 tokens (data/word_problems/train.jsonl), exactly 256
# new tokens, bf16, KL to a reference model (beta 0.04), one optimiser step per iteration.
#   1. TRL 1.16 GRPOTrainer (scripts/peers/trl_grpo.py), which also writes the random model folder;
#   2. `realign train configs/bench-grpo.toml` on that folder;
#   3. `realign train configs/bench-ppo.toml` (PPO with a critic; TRL 1.16 has no PPO trainer).
# Prints one JSON line per run and a summary: median seconds per step after the first (warm-up)
# step, ours per call (gen, ref, reward, old_logprob, values, adv, update_actor, update_critic,
# reshard when present), TRL's, and the ratio TRL / ours.
#
# Usage: scripts/bench_rl.sh
# Environment: REALIGN (binary, default target/release/realign), BENCH_TOKENIZER (an HF folder with
# SmolLM2's tokenizer files, default models/smollm2-135m-instruct), BENCH_OUT (default
# runs/bench-rl), BENCH_STEPS (steps of each run, default 3), OURS_STEPS (default BENCH_STEPS),
# PYTHON (default python3), TRL_TIMEOUT / OURS_TIMEOUT (seconds per run, default 150 / 120),
# BENCH_TINY=1 (a CPU smoke run of the plumbing: tiny shapes, 2 x 2 samples, 8 new tokens).
# TRL must be importable (see docs/benchmarks.md).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REALIGN="${REALIGN:-target/release/realign}"
TOK="${BENCH_TOKENIZER:-models/smollm2-135m-instruct}"
OUT="${BENCH_OUT:-runs/bench-rl}"
STEPS="${BENCH_STEPS:-3}"
OURS_STEPS="${OURS_STEPS:-$STEPS}"
PY="${PYTHON:-python3}"
MODEL="runs/bench-model"
mkdir -p "$OUT" runs
PEER_ARGS=()
OURS_ARGS=()
SHAPES=SMOLLM2_135M
if [ "${BENCH_TINY:-0}" = 1 ]; then
  MODEL="runs/bench-model-tiny"
  SHAPES=TINY
  PEER_ARGS=(--tiny --prompts 2 --samples 2 --new 8 --micro 4)
  OURS_ARGS=(--set run.device=cpu --set run.dtype=f32 --set stage[0].prompts_per_step=2
    --set stage[0].samples_per_prompt=2 --set stage[0].mini_batch_size=4
    --set stage[0].generation.max_new_tokens=8 --set stage[0].generation.min_new_tokens=8)
fi

# The random model, written once so both sides start from the same weights.
if [ ! -f "$MODEL/config.json" ]; then
  PYTHONPATH="scripts/peers${PYTHONPATH:+:$PYTHONPATH}" "$PY" - "$TOK" "$MODEL" "$SHAPES" <<'EOF' || exit 1
import sys
from transformers import AutoTokenizer
import common
shapes = dict(common.SMOLLM2_135M)
if sys.argv[3] == "TINY":
    shapes.update(common.TINY)
common.save_random_model(shapes, AutoTokenizer.from_pretrained(sys.argv[1]), sys.argv[2])
EOF
fi

echo "== TRL GRPOTrainer" >&2
rm -f "$OUT/trl.jsonl"
timeout "${TRL_TIMEOUT:-150}" "$PY" scripts/peers/trl_grpo.py --model-dir "$TOK" --model-out "$MODEL" \
  --prompts-file data/word_problems/train.jsonl --steps "$STEPS" --out "$OUT/trl.jsonl" \
  "${PEER_ARGS[@]}" >"$OUT/trl.log" 2>&1
echo "trl exit $?" >&2
tail -n 3 "$OUT/trl.log" >&2

for algo in grpo ppo; do
  echo "== realign $algo" >&2
  rm -rf "$OUT/bench-$algo"
  timeout "${OURS_TIMEOUT:-120}" "$REALIGN" train "configs/bench-$algo.toml" --no-progress \
    --set "run.output_dir=$OUT" --set "model.path=$MODEL" --set "stage[0].steps=$OURS_STEPS" \
    "${OURS_ARGS[@]}" >"$OUT/$algo.log" 2>&1
  echo "realign $algo exit $?" >&2
  tail -n 3 "$OUT/$algo.log" >&2
done

# Summary: medians over the steps after the first.
"$PY" - "$OUT" <<'EOF'
import json, os, re, statistics, sys

out = sys.argv[1]

def median_after_first(xs):
    xs = xs[1:] or xs
    return statistics.median(xs) if xs else None

def ours(algo):
    path = os.path.join(out, f"bench-{algo}", "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = [json.loads(l) for l in open(path) if l.strip()]
    rows = [r for r in rows if "timing_s/step" in r]
    if not rows:
        return None
    keys = sorted({k for r in rows for k in r if k.startswith(("timing_s/", "perf/"))})
    res = {k: median_after_first([r[k] for r in rows if k in r]) for k in keys}
    res["steps"] = len(rows)
    res["step_seconds"] = [r["timing_s/step"] for r in rows]
    return res

trl = None
p = os.path.join(out, "trl.jsonl")
if os.path.exists(p):
    lines = [json.loads(l) for l in open(p) if l.strip()]
    trl = lines[-1] if lines else None
if trl is None and os.path.exists(os.path.join(out, "trl.log")):
    # The peer was stopped before its summary line: use the per-step lines it printed.
    # (tqdm's progress text may share the line.)
    text = open(os.path.join(out, "trl.log")).read()
    secs = [json.loads(m)["seconds"] for m in re.findall(r'\{"trl_step": \d+, "seconds": [0-9.e+-]+\}', text)]
    if secs:
        trl = {"step_seconds": secs, "median_step_s": median_after_first(secs), "partial": True}
summary = {"benchmark": "rl_iteration", "trl": trl, "ours_grpo": ours("grpo"), "ours_ppo": ours("ppo")}
if trl and summary["ours_grpo"]:
    summary["trl_s_per_step"] = trl["median_step_s"]
    summary["ours_grpo_s_per_step"] = summary["ours_grpo"]["timing_s/step"]
    summary["ratio_trl_over_ours"] = trl["median_step_s"] / summary["ours_grpo"]["timing_s/step"]
if summary["ours_ppo"]:
    summary["ours_ppo_s_per_step"] = summary["ours_ppo"]["timing_s/step"]
line = json.dumps(summary)
print(line)
with open(os.path.join(out, "summary.json"), "w") as f:
    f.write(line + "\n")
EOF

# The same figures as a table.
"$PY" - "$OUT/summary.json" <<'EOF2'
import json, sys
s = json.load(open(sys.argv[1]))
def f(x):
    return "-" if x is None else f"{x:.3f}"
calls = ["gen", "reward", "ref", "old_logprob", "values", "adv", "update_actor", "update_critic",
         "reshard", "step"]
print(f"{'s per iteration':<22}" + "".join(f"{c:>14}" for c in calls))
for name in ("ours_grpo", "ours_ppo"):
    r = s.get(name) or {}
    print(f"{name:<22}" + "".join(f"{f(r.get('timing_s/' + c)):>14}" for c in calls))
trl = s.get("trl") or {}
print(f"{'trl_grpo':<22}" + "".join(f"{'':>14}" for c in calls[:-1]) + f"{f(trl.get('median_step_s')):>14}")
if "ratio_trl_over_ours" in s:
    print(f"TRL / ours (GRPO): {s['ratio_trl_over_ours']:.2f}x")
EOF2
