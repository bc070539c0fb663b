#!/usr/bin/env bash
# Mass-editing speed: a 100-edit CounterFact edit (E + P + R, 36 examples per edit) with
# the `layers` recipe, by `ftedit edit` and by the same recipe in PyTorch + transformers
# (bench/edit_torch.py) on the same training set, one after the other, in each precision
# of $PRECISIONS (f32; bf16-mixed = ftedit's optim.precision, PyTorch's CPU autocast);
# every edited model is then scored by `ftedit eval` on the 100 edits. Needs
# ./setup.sh --bench.
#
#   [PRECISIONS="f32 bf16-mixed"] bench/edit.sh [edits] [models]
#   (results appended to bench/out/edit/results.jsonl)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-100}"
MODELS="${2:-smollm2 gemma3}"
PRECISIONS="${PRECISIONS:-f32}"
DATA=../shared/data/counterfact/counterfact_rome_dev.json
OUT=bench/out/edit
mkdir -p "$OUT"
cargo build --release --quiet
.venv/bin/python bench/flops.py peak | tee -a "$OUT/results.jsonl"
for model in $MODELS; do
  gguf="models/$(case $model in smollm2) echo SmolLM2-135M-Instruct.Q4_1.gguf ;; gemma3) echo gemma-3-270m-q4_k_m.gguf ;; esac)"
  for prec in $PRECISIONS; do
    run="$model-$prec"
    rm -rf "$OUT/$run-ftedit" "$OUT/$run-torch"
    # PyTorch trains on the examples of ftedit's first precision, so both see one set.
    dump=()
    [ "$prec" = "${PRECISIONS%% *}" ] && dump=(--dump-examples "$OUT/$model-examples.json")
    ./target/release/ftedit edit --model "$model" --edits "$DATA" --n "$N" --recipe layers --threads 2 --quiet \
      --precision "$prec" --out "$OUT/$run-ftedit" --force "${dump[@]}"
    autocast=()
    [ "$prec" = bf16-mixed ] && autocast=(--autocast-bf16)
    .venv/bin/python bench/edit_torch.py --gguf "$gguf" --examples "$OUT/$model-examples.json" \
      --out "$OUT/$run-torch" "${autocast[@]}" 2>/dev/null | tee "$OUT/$run-torch.json"
    cp "$OUT/$run-ftedit"/tokenizer*.json "$OUT/$run-ftedit/config.json" "$OUT/$run-torch/"
    for impl in ftedit torch; do
      rm -rf "$OUT/$run-$impl-eval"
      ./target/release/ftedit eval --model "$OUT/$run-$impl" --data "$DATA" --n "$N" --no-generation --quiet \
        --threads 2 --out "$OUT/$run-$impl-eval" > /dev/null
    done
    python3 - "$OUT" "$run" "$model" "$prec" <<'PY' | tee -a "$OUT/results.jsonl"
import json, sys
out, run_name, m, prec = sys.argv[1:5]
f = json.load(open(f"{out}/{run_name}-ftedit/ftedit_report.json"))
run = f["training"]["runs"][0]
t = json.load(open(f"{out}/{run_name}-torch.json"))
for impl, secs, eps, tps, steps, rss in [
    ("ftedit", run["seconds"], run["examples_per_s"], run["tokens_per_s"], run["steps"], f["peak_rss_mb"]),
    ("pytorch", t["seconds"], t["examples_per_s"], t["tokens_per_s"], t["steps"], t["peak_rss_mb"]),
]:
    s = json.load(open(f"{out}/{run_name}-{'ftedit' if impl == 'ftedit' else 'torch'}-eval/summary.json"))["metrics"]
    print(json.dumps({"model": m, "impl": impl, "precision": prec, "seconds": secs, "examples_per_s": eps,
                      "tokens_per_s": tps, "steps": steps, "peak_rss_mb": rss, "ES": s["ES"], "PS": s["PS"],
                      "NS": s["NS"], "S": s["S"], "EM_exact": s["EM_exact"], "examples": run["examples"]}))
PY
  done
done
echo "(useful FLOPs: python3 bench/flops.py bench/configs/MODEL.json $OUT/MODEL-examples.json EPOCHS)"
