#!/usr/bin/env bash
# The Python module against the command line and plain PyTorch (bench/python_bench.py
# says what is measured). Uses .venv-python, which python/test.sh builds (the wheel, its
# torch, transformers), adding the gguf and accelerate packages transformers reads GGUF with.
#
#   bench/python.sh [edits=100] [repeats=3] [--only three|mass]
#   (rows appended to bench/out/python/results.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"
R="${2:-3}"
OUT=bench/out/python
PY=.venv-python/bin/python
[ -x "$PY" ] || { echo "bench/python.sh: run python/test.sh first (it builds .venv-python)" >&2; exit 1; }
"$PY" -m pip install --quiet --disable-pip-version-check gguf==0.19.0 accelerate==1.15.0
cargo build --release --quiet
mkdir -p "$OUT"
"$PY" bench/flops.py peak | tee -a "$OUT/results.jsonl"
"$PY" bench/python_bench.py --edits "$N" --repeats "$R" --out "$OUT" "${@:3}" | tee -a "$OUT/results.jsonl"
