#!/usr/bin/env bash
# Unedited CounterFact evaluation speed: `ftedit eval` against MEMIT's formulas in
# PyTorch + transformers (bench/eval_torch.py) on the same records and machine, one
# after the other. Needs ./setup.sh --bench.
#
#   bench/eval.sh [records]
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"
DATA=../shared/data/counterfact/counterfact_rome_dev.json
OUT=bench/out/eval
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
cargo build --release --quiet
for model in smollm2 gemma3; do
  gguf="models/$(case $model in smollm2) echo SmolLM2-135M-Instruct.Q4_1.gguf ;; gemma3) echo gemma-3-270m-q4_k_m.gguf ;; esac)"
  # probabilities: what MEMIT computes with skip_generation_tests; +exact: with exact match.
  for mode in probabilities +exact; do
    flags="--no-generation --no-exact-match"
    [ "$mode" = +exact ] && flags="--no-generation"
    rm -rf "$OUT/$model-$mode"
    ./target/release/ftedit eval --model "$model" --data "$DATA" --n "$N" --threads 2 --quiet $flags \
      --out "$OUT/$model-$mode" > /dev/null
    python3 - "$OUT/$model-$mode/summary.json" "$model" "$mode" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys
s = json.load(open(sys.argv[1])); m = s["metrics"]
print(json.dumps({"impl": "ftedit", "model": sys.argv[2], "metrics": sys.argv[3], "n": s["n"], "seconds": s["seconds"],
                  "records_per_s": s["n"] / s["seconds"], "ES": m["ES"], "PS": m["PS"], "NS": m["NS"], "GE": m.get("GE")}))
PY
  done
  .venv/bin/python bench/eval_torch.py --gguf "$gguf" --data "$DATA" --n "$N" --name "$model" 2>/dev/null | tee -a "$OUT/results.jsonl"
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| model | implementation | metrics | records/s | ES | PS | NS |")
print("|---|---|---|---:|---:|---:|---:|")
for r in rows:
    what = r.get("metrics", "probabilities")
    print(f"| {r['model']} | {r['impl']} | {what} | {r['records_per_s']:.2f} | {r['ES']:.1f} | {r['PS']:.1f} | {r['NS']:.1f} |")
PY
