#!/usr/bin/env bash
# Repacks .gpu/bundle.tar.gz (scripts/gpu_bundle.sh) into .gpu/slim.tgz with only the named test
# executables and the benches, so that a call's carry stays under 64 MiB next to the kernel cache
# and another branch's binaries (the full bundle is ~40 MB).
# Usage: scripts/gpu_slim.sh NAME ...   (NAME as in the bundle, e.g. kernels--ops_cuda)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -gt 0 ] || { echo "usage: $0 NAME ... (test executables of .gpu/bundle.tar.gz)" >&2; exit 2; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/all" "$TMP/slim/tests" "$TMP/slim/bin"
tar -C "$TMP/all" -xzf "$ROOT/.gpu/bundle.tar.gz"
for name in "$@"; do
  [ -f "$TMP/all/tests/$name" ] || { echo "$name is not in the bundle" >&2; exit 1; }
  cp "$TMP/all/tests/$name" "$TMP/slim/tests/"
done
cp "$TMP"/all/bin/*_bench "$TMP/slim/bin/"
tar -C "$TMP/slim" -czf "$ROOT/.gpu/slim.tgz" .
echo "$ROOT/.gpu/slim.tgz: $# tests + $(ls "$TMP/slim/bin" | wc -l) benches ($(du -h "$ROOT/.gpu/slim.tgz" | cut -f1))"
