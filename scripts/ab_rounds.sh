#!/usr/bin/env bash
# Alternating A/B rounds of one benchmark on the GPU machine, for changes smaller than the card's
# run-to-run spread (an H100's decode step moves ±3% between consecutive runs: docs/perf-notes.md).
# Each round runs every variant once, in the order given; the summary gives each variant's mean,
# min and max, and in how many rounds it beat the first variant (the baseline).
#
# Usage: ROUNDS=4 bash scripts/ab_rounds.sh "BENCH ARGS" "PATTERN" "ENV_A" "ENV_B" ...
#   BENCH ARGS  the command (run with each variant's environment), e.g.
#               ".gpu/run/bin/rollout_bench --device cuda --dtype bf16 --shapes qwen2.5-0.5b
#               --batch 256 --prompt 128 --new 256 --iters 3"
#   PATTERN     a sed -E expression that turns the command's output line into the number to
#               compare (lower is better), e.g. 's/.*decode step ([0-9.]+) ms excluding.*/\1/p'
#   ENV_*       each variant's environment assignments ("-" for none), e.g. "-"
#               "REALIGN_PAGED_LEAN=1"
# Writes the rounds and the summary to stdout (and to $OUT/ab_rounds.txt when $OUT is set).
set -u
[ $# -ge 4 ] || { sed -n '2,17p' "$0"; exit 2; }
cmd=$1 pattern=$2
shift 2
rounds=${ROUNDS:-3}
log=${OUT:+$OUT/ab_rounds.txt}
results=$(mktemp)
for r in $(seq 1 "$rounds"); do
  line="round $r:"
  for i in $(seq 1 $#); do
    envs=${!i}
    [ "$envs" = "-" ] && envs=""
    # shellcheck disable=SC2086 # the assignments and the command are word lists on purpose
    v=$(env $envs timeout 120 $cmd 2>&1 | sed -nE "$pattern" | head -1)
    line="$line  [$i] ${v:-fail}"
    echo "$r $i ${v:-nan}" >> "$results"
  done
  echo "$line" | tee -a ${log:-/dev/null}
done
python3 - "$results" "$@" <<'EOF' | tee -a ${log:-/dev/null}
import math, sys
rows = [l.split() for l in open(sys.argv[1])]
names = sys.argv[2:]
by = {}
for r, i, v in rows:
    by.setdefault(int(i), {})[int(r)] = float(v)
base = by.get(1, {})
for i, name in enumerate(names, 1):
    name = "(no env)" if name == "-" else name
    vals = [v for v in by.get(i, {}).values() if not math.isnan(v)]
    if not vals:
        print(f"[{i}] {name}: no result")
        continue
    wins = sum(1 for r, v in by[i].items() if r in base and v < base[r])
    mean = sum(vals) / len(vals)
    rel = f", {100 * (mean / (sum(base.values()) / len(base)) - 1):+.1f}% vs [1]" if i > 1 and base else ""
    beat = f", below [1] in {wins}/{len(vals)} rounds" if i > 1 else ""
    print(f"[{i}] {name}: mean {mean:.4g} (min {min(vals):.4g}, max {max(vals):.4g}, n {len(vals)}){rel}{beat}")
EOF
rm -f "$results"
