#!/usr/bin/env bash
# The sweeps that choose the baselines' per-model defaults (issue 13): `ftedit sweep` on
# CounterFact and zsRE dev records 200..300, which the manual's 200 + 200 rows (records
# 0..200) do not use; batch protocol, no GE. Each sweep resumes where it stopped.
#
#   bench/tune.sh MODEL METHOD [DATASET]
#
# MODEL: smollm2 | gemma3 (or any --model); METHOD: ft-l | ft-m | memit | rome | grace;
# DATASET: counterfact (default) | zsre. Environment: FTEDIT (the binary; default
# ./target/release/ftedit), THREADS (default 1), OUT_DIR (default runs/tune),
# FTEDIT_DATA (default ../shared/data), RANGE (default 200..300), GRID (the --grid flags
# to use instead of METHOD's, e.g. GRID="--grid optim.epochs=10,25").
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:?model}"
METHOD="${2:?method}"
DATASET="${3:-counterfact}"
DATA="${FTEDIT_DATA:-../shared/data}"
FTEDIT="${FTEDIT:-./target/release/ftedit}"
case "$DATASET" in
  counterfact) file="$DATA/counterfact/counterfact_rome_dev.json" ;;
  zsre) file="$DATA/zsre/zsre_eval_dev.json" ;;
  *) echo "tune.sh: unknown data set '$DATASET'" >&2; exit 2 ;;
esac
case "$METHOD" in
  # FT-L: the L-inf box ε (ROME's GPT-2 XL 5e-4, GPT-J 5e-5) and the layer.
  ft-l) grid=(--grid optim.clamp=5e-4,2e-3,1e-2 --grid train.layers=0,1/3) ;;
  # FT-M: how long and how fast its one matrix trains.
  ft-m) grid=(--grid optim.epochs=25,100 --grid optim.lr=5e-4,1e-4) ;;
  # MEMIT: δ's clamp (GPT-J 0.75, EasyEdit's Llama 4) and λ (GPT-J 15,000); λ varies
  # fastest, and each z is optimised once per clamp (cache_z).
  memit) grid=(--grid value.clamp_norm_factor=0.75,4 --grid lambda=15000,5000,1000,200) ;;
  # ROME: its layer (δ's clamp, 4 against 8, did not bind on SmolLM2; GRID to try it).
  rome) grid=(--grid layer=1/5,1/10,1/3 --grid value.clamp_norm_factor=4) ;;
  # GRACE: the radius ε₀, from the authors' 1.0 to past the median distance from an edit
  # to its paraphrases on SmolLM2 (docs/src/methods/grace.md).
  grace) grid=(--grid eps=1,8,12,18) ;;
  *) [ -n "${GRID:-}" ] || { echo "tune.sh: no grid for '$METHOD' (set GRID)" >&2; exit 2; } ;;
esac
# shellcheck disable=SC2206
[ -n "${GRID:-}" ] && grid=($GRID)
out="${OUT_DIR:-runs/tune}/$(basename "$MODEL" .gguf)-$DATASET-$METHOD"
"$FTEDIT" sweep --model "$MODEL" --data "$file" --range "${RANGE:-200..300}" --method "$METHOD" \
  "${grid[@]}" --no-generation --threads "${THREADS:-1}" --out "$out" --quiet
