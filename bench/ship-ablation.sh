#!/usr/bin/env bash
# Packs what bench/ablation.sh needs on a GPU machine (no Rust, no internet, at most
# 64 MiB carried per call) into parts .devab1/, .devab2/, ... (ignored by git): part 1
# holds the stripped binary and the data files the ladder reads, every later part a
# slice of the model of at most 56 MiB (a short last slice goes into part 1).
#
#   bench/ship-ablation.sh [model]          (default: smollm2)
#
# Then carry the parts one call each, on a warm machine (each call copies its part to
# /tmp/keep, which outlives the call), the last one with the ladder's arguments:
#   run(carry=[".devab1"], command="bash bench/device-ablation.sh")
#   ...
#   run(carry=[".devabK"], command="ONLY='ROME|MEMIT' bash bench/device-ablation.sh 200")
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:-smollm2}"
DATA="${FTEDIT_DATA:-../shared/data}"
cargo build --release --quiet
case "$MODEL" in
  smollm2) file=$(ls models/SmolLM2-*.gguf | head -1) ;;
  gemma3) file=$(ls models/gemma-3-*.gguf | head -1) ;;
  *) file="$MODEL" ;;
esac
[ -f "$file" ] || { echo "no model file for $MODEL" >&2; exit 1; }
rm -rf .devab[0-9]*
mkdir -p .devab1/data/counterfact/easyedit_mend_format .devab1/data/zsre .devab1/data/aux/wikitext-2-raw
cp target/release/ftedit .devab1/ftedit && strip .devab1/ftedit
for f in counterfact/counterfact_rome_dev.json counterfact/easyedit_mend_format/counterfact-train.json \
         zsre/zsre_eval_dev.json zsre/zsre_mend_train-1k.json aux/wikitext-2-raw/wiki.test.raw; do
  cp "$DATA/$f" ".devab1/data/$f"
done
split -b 56M -d -a 2 "$file" /tmp/devab-model.
i=2
for chunk in /tmp/devab-model.*; do
  mkdir -p ".devab$i" && mv "$chunk" ".devab$i/model.$(basename "$chunk" | cut -d. -f2)"
  i=$((i + 1))
done
# A short last slice rides with part 1.
last=".devab$((i - 1))"
if [ "$i" -gt 3 ] && [ "$(du -m "$last" | cut -f1)" -lt 40 ]; then mv "$last"/model.* .devab1/ && rmdir "$last"; fi
basename "$file" > .devab1/model-name
echo $((i - 2)) > .devab1/parts
du -sh .devab[0-9]*
