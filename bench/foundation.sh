#!/usr/bin/env bash
# Foundation benchmark on CPU: ftedit (bench/foundation.rs) and PyTorch + transformers
# (bench/foundation_torch.py) on the same machine, same model files, same batch, one
# after the other. Needs ./setup.sh --bench. Prints JSON lines and markdown tables, and
# keeps the batches in bench/out/ for bench/device.sh.
#
#   bench/foundation.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-10}"
OUT=bench/out
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
cargo build --release --bench foundation --quiet
BIN="$(ls -t target/release/deps/foundation-* | grep -v '\.d$' | head -1)"
for model in smollm2 gemma3; do
  "$BIN" --model "$model" --runs "$RUNS" --batch-out "$OUT/$model-batch.json" | tee -a "$OUT/results.jsonl"
  gguf="models/$(case $model in smollm2) echo SmolLM2-135M-Instruct.Q4_1.gguf ;; gemma3) echo gemma-3-270m-q4_k_m.gguf ;; esac)"
  prompt16="$(tail -1 "$OUT/results.jsonl" | python3 -c "import json,sys; print(','.join(map(str, json.load(sys.stdin)['prompt16'])))")"
  .venv/bin/python bench/foundation_torch.py --gguf "$gguf" --batch "$OUT/$model-batch.json" \
    --prompt16 "$prompt16" --runs "$RUNS" --name "$model" 2>/dev/null | tee -a "$OUT/results.jsonl"
done
python3 bench/table.py "$OUT/results.jsonl"
