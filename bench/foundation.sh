#!/usr/bin/env bash
# Foundation benchmark: ftedit (benches/foundation.rs) and PyTorch + transformers
# (bench/foundation_torch.py) on the same machine, same model files, same batch, one
# after the other. Needs ./setup.sh --bench. Prints JSON lines and a markdown table.
#
#   bench/foundation.sh [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-10}"
OUT="$(mktemp -d)"
cargo build --release --bench foundation --quiet
BIN="$(ls -t target/release/deps/foundation-* | grep -v '\.d$' | head -1)"
for model in smollm2 gemma3; do
  "$BIN" --model "$model" --runs "$RUNS" --batch-out "$OUT/$model-batch.json" | tee -a "$OUT/results.jsonl"
  gguf="$(ls models/*.gguf | grep -i "$( [ "$model" = smollm2 ] && echo SmolLM2 || echo gemma-3)")"
  prompt16="$(./target/release/ftedit predict --model "$model" --prompt "$(python3 -c "
import json; d=json.load(open('../shared/data/counterfact/counterfact_rome_dev.json'))
print(' '.join(p for r in d for p in r['paraphrase_prompts'])[:400])")" --json --top-k 1 |
    python3 -c "import json,sys; print(','.join(map(str, json.load(sys.stdin)['input_ids'][:16])))")"
  .venv/bin/python bench/foundation_torch.py --gguf "$gguf" --batch "$OUT/$model-batch.json" \
    --prompt16 "$prompt16" --runs "$RUNS" --name "$model" 2>/dev/null | tee -a "$OUT/results.jsonl"
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| model | impl | load s | forward 16 tok ms | train step ms | first loss |")
print("|---|---|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r['model']} | {r['impl']} | {r['load_s']:.2f} | {r['forward16_ms']:.1f} | {r['train_step_ms']:.0f} | {r['first_loss']:.4f} |")
by = {(r["model"], r["impl"]): r for r in rows}
print("\n| model | load speed-up | forward speed-up | train-step speed-up |")
print("|---|---:|---:|---:|")
for m in sorted({r["model"] for r in rows}):
    f, t = by[(m, "ftedit")], by[(m, "pytorch")]
    print(f"| {m} | {t['load_s']/f['load_s']:.1f}x | {t['forward16_ms']/f['forward16_ms']:.2f}x | {t['train_step_ms']/f['train_step_ms']:.2f}x |")
PY
