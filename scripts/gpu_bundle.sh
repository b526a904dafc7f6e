#!/usr/bin/env bash
# Builds everything the GPU machine runs (it has no Rust): the release test executables of the
# crates with GPU tests, the realign binary and the benchmark examples, stripped and packed into
# .gpu/bundle.tar.gz (git-ignored; name `.gpu` in the device tool's `carry`).
#
# On the GPU machine: scripts/gpu_run.sh unpacks it and runs the tests with REALIGN_REQUIRE_GPU=1.
# Usage: scripts/gpu_bundle.sh [crate ...]   (default: kernels model reward learner actor)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CRATES=("${@:-kernels model reward learner actor}")
# shellcheck disable=SC2206
CRATES=(${CRATES[@]})
STAGE="$ROOT/.gpu/stage"
rm -rf "$STAGE" && mkdir -p "$STAGE/tests" "$STAGE/bin"

for c in "${CRATES[@]}"; do
  cargo test --release -p "$c" --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
      cp "$exe" "$STAGE/tests/$c--$name"
    done
done
cargo build --release --bin realign
# Examples live in their crates (a bare --example only searches the root package); each is
# optional: one that does not build is reported and the others are still bundled.
cargo build --release -p kernels --example cuda_bench || echo "warning: example cuda_bench did not build; not bundled" >&2
cargo build --release -p learner --example train_step_bench || echo "warning: example train_step_bench did not build; not bundled" >&2
cargo build --release -p actor --example rollout_bench || echo "warning: example rollout_bench did not build; not bundled" >&2
cargo build --release -p kernels --example gemm_bench || echo "warning: example gemm_bench did not build; not bundled" >&2
cargo build --release -p kernels --example paged_attention_bench || echo "warning: example paged_attention_bench did not build; not bundled" >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cp "$TARGET/release/realign" "$STAGE/bin/"
for ex in cuda_bench train_step_bench rollout_bench gemm_bench paged_attention_bench; do
  [ -f "$TARGET/release/examples/$ex" ] && cp "$TARGET/release/examples/$ex" "$STAGE/bin/"
done
strip "$STAGE"/tests/* "$STAGE"/bin/*
tar -C "$STAGE" -czf "$ROOT/.gpu/bundle.tar.gz" .
rm -rf "$STAGE"
ls -la "$ROOT/.gpu/bundle.tar.gz"
