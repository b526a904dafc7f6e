#!/usr/bin/env bash
# Appends the entries a `gemm_bench --keys KEYS --table-out T` run measured to the built-in GEMM
# table (kernels/src/cuda/blas/gemm_table.txt), so that a table measured on the GPU machine lands
# in the tree instead of dying with the machine. T is the built-in table followed by a section of
# its own (a comment, the `lt ...` header, the entries); that section is appended after a line
# naming NOTE (card, date, what was measured). lt.rs merges every section under the device's
# header, so nothing else changes.
# Usage: scripts/merge_gemm_table.sh T "NOTE"   (e.g. "H200, 2026-12-08, train step 8 x 1024")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILT_IN="$ROOT/kernels/src/cuda/blas/gemm_table.txt"
[ $# -eq 2 ] || { echo "usage: $0 TABLE_OUT \"NOTE\"" >&2; exit 2; }
python3 - "$1" "$2" "$BUILT_IN" <<'EOF'
import sys
out_path, note, built_in_path = sys.argv[1:4]
built_in = open(built_in_path).read().rstrip("\n") + "\n"
text = open(out_path).read()
if not text.startswith(built_in):
    sys.exit(f"{out_path} does not start with the current built-in table: it was measured "
             "against another version of gemm_table.txt; measure again")
section = text[len(built_in):].strip("\n")

def entries(t):  # table lines that are entries (not blank, comments or headers)
    return [l for l in t.splitlines() if l.strip() and not l.startswith(("#", "lt "))]

def key(line):  # the GEMM key: the first 11 fields (trans_a .. reads_c), without the algorithm
    return " ".join(line.split("#")[0].split()[:11])

def keys_by_header(t):  # header line -> keys of the entries under it (all its sections)
    out, header = {}, None
    for l in t.splitlines():
        if l.startswith("lt "):
            header = l.strip()
        elif header and l.strip() and not l.startswith("#"):
            out.setdefault(header, set()).add(key(l))
    return out

new = entries(section)
headers = [l.strip() for l in section.splitlines() if l.startswith("lt ")]
if not headers or not new:
    sys.exit(f"{out_path} has no measured section after the built-in table")
# Only the same header's entries count: another cuBLASLt version or card keeps its own.
known = set().union(*(keys_by_header(built_in).get(h, set()) for h in headers))
dup = [l for l in new if key(l) in known]
if dup:
    sys.exit(f"{len(dup)} entries of {out_path} are in the built-in table already, e.g. {dup[0]}")
with open(built_in_path, "a") as f:
    f.write(f"# {note}\n{section}\n")
print(f"{len(new)} entries appended to {built_in_path}")
EOF
